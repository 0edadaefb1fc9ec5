//! Single-precision GEMM: `c[m, n] (+)= a[m, k] @ b[k, n]` over strided views, so the three
//! products of a linear layer (x·Wᵀ, dy·W, dyᵀ·x) need no transposed copies.
//!
//! On CPUs with AVX-512 it runs our own 12×32 micro-kernel over Goto-style packed panels (measured
//! here on the model's shapes: on par with or ahead of `matrixmultiply`, see README); elsewhere it
//! falls back to `matrixmultiply`. Threads split the rows (or columns) of `c`, each with its own
//! packing buffers, so results do not depend on scheduling.

use super::SharedMut;
use crate::model::aligned::Aligned;
use std::cell::RefCell;

/// A read-only strided matrix: element (i, j) at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major `[rows, cols]`.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Mat { data, rs: cols, cs: 1 }
    }
    /// The transpose of row-major `[rows, cols]`, i.e. a `[cols, rows]` view.
    pub fn t(data: &'a [f32], cols: usize) -> Self {
        Mat { data, rs: 1, cs: cols }
    }
    fn offset(self, i: usize, j: usize) -> Self {
        Mat { data: &self.data[i * self.rs + j * self.cs..], ..self }
    }
}

/// `c[m, n] = a @ b` (or `+=` when `accumulate`), row stride of c `ldc`, threaded over c's rows
/// or columns.
pub fn gemm(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], ldc: usize, accumulate: bool) {
    assert!(m == 0 || n == 0 || c.len() >= (m - 1) * ldc + n, "c is too short for [m, n]");
    let threads = rayon::current_num_threads();
    let cp = SharedMut::new(c);
    if threads == 1 || m * n * k < 1 << 18 {
        // SAFETY: c covers [m, n] with stride ldc (asserted above).
        return unsafe { gemm_serial_ptr(m, n, k, a, b, cp.at(0), ldc, accumulate) };
    }
    let split_rows = m >= n;
    let (len, unit) = if split_rows { (m, MR) } else { (n, NR) };
    let chunk = len.div_ceil(threads).next_multiple_of(unit);
    rayon::scope(|s| {
        for start in (0..len).step_by(chunk) {
            let size = chunk.min(len - start);
            s.spawn(move |_| {
                let cp = cp;
                // SAFETY: each task writes its own block of rows (or columns) of c.
                unsafe {
                    if split_rows {
                        gemm_serial_ptr(size, n, k, a.offset(start, 0), b, cp.at(start * ldc), ldc, accumulate)
                    } else {
                        gemm_serial_ptr(m, size, k, a, b.offset(0, start), cp.at(start), ldc, accumulate)
                    }
                }
            });
        }
    });
}

/// Single-threaded `gemm`, for callers that already parallelise (e.g. attention over heads).
pub fn gemm_serial(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], ldc: usize, accumulate: bool) {
    assert!(m == 0 || n == 0 || c.len() >= (m - 1) * ldc + n, "c is too short for [m, n]");
    // SAFETY: c covers [m, n] with stride ldc.
    unsafe { gemm_serial_ptr(m, n, k, a, b, c.as_mut_ptr(), ldc, accumulate) }
}

/// # Safety
/// `c` must be valid for writes of `[m, n]` with row stride `ldc`.
unsafe fn gemm_serial_ptr(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: *mut f32, ldc: usize, acc: bool) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            (0..m).for_each(|i| unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), n).fill(0.0) });
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return unsafe { avx512::gemm(m, n, k, a, b, c, ldc, acc) };
    }
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            if acc { 1.0 } else { 0.0 },
            c,
            ldc as isize,
            1,
        )
    }
}

const MR: usize = 12;
const NR: usize = 32;
const KC: usize = 256;
const MC: usize = 120;
const NC: usize = 2048;

thread_local! {
    /// Packed panels of a and b, allocated once per thread and reused (b's 2 MiB on a huge page
    /// where the OS grants one: see `Aligned`).
    static PACK: RefCell<Option<(Aligned<f32>, Aligned<f32>)>> = const { RefCell::new(None) };
}

/// Packs a[ic.., pc..] (mc x kc) into MR-row panels, k-major: panel[p * MR + r]; pads with zeros.
fn pack_a(dst: &mut [f32], a: Mat, ic: usize, pc: usize, mc: usize, kc: usize) {
    for (pi, i0) in (0..mc).step_by(MR).enumerate() {
        let panel = &mut dst[pi * MR * kc..(pi + 1) * MR * kc];
        let rows = MR.min(mc - i0);
        if rows < MR {
            panel.fill(0.0);
        }
        if a.cs == 1 {
            // rows of a are contiguous: read each along k, write with stride MR
            for r in 0..rows {
                let src = &a.data[(ic + i0 + r) * a.rs + pc..][..kc];
                for (p, &v) in src.iter().enumerate() {
                    panel[p * MR + r] = v;
                }
            }
        } else {
            for (p, out) in panel.chunks_exact_mut(MR).enumerate() {
                let col = (pc + p) * a.cs;
                for (r, o) in out[..rows].iter_mut().enumerate() {
                    *o = a.data[(ic + i0 + r) * a.rs + col];
                }
            }
        }
    }
}

/// Packs b[pc.., jc..] (kc x nc) into NR-column panels: panel[p * NR + j]; pads with zeros.
fn pack_b(dst: &mut [f32], b: Mat, pc: usize, jc: usize, kc: usize, nc: usize) {
    for (pj, j0) in (0..nc).step_by(NR).enumerate() {
        let panel = &mut dst[pj * NR * kc..(pj + 1) * NR * kc];
        let cols = NR.min(nc - j0);
        if cols < NR {
            panel.fill(0.0);
        }
        if b.rs == 1 {
            // columns of b are contiguous (a transposed view): read each along k, write with stride NR
            for j in 0..cols {
                let src = &b.data[pc + (jc + j0 + j) * b.cs..][..kc];
                for (p, &v) in src.iter().enumerate() {
                    panel[p * NR + j] = v;
                }
            }
        } else {
            for (p, out) in panel.chunks_exact_mut(NR).enumerate() {
                let row = (pc + p) * b.rs + (jc + j0) * b.cs;
                if b.cs == 1 {
                    out[..cols].copy_from_slice(&b.data[row..row + cols]);
                } else {
                    for (j, o) in out[..cols].iter_mut().enumerate() {
                        *o = b.data[row + j * b.cs];
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F must be available; `c` valid for `[m, n]` with row stride `ldc`.
    pub unsafe fn gemm(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: *mut f32, ldc: usize, accumulate: bool) {
        PACK.with(|bufs| {
            let mut bufs = bufs.borrow_mut();
            let (ap, bp) = bufs.get_or_insert_with(|| {
                (Aligned::zeroed(MC.next_multiple_of(MR) * KC), Aligned::zeroed(NC.next_multiple_of(NR) * KC))
            });
            for jc in (0..n).step_by(NC) {
                let nc = NC.min(n - jc);
                for pc in (0..k).step_by(KC) {
                    let kc = KC.min(k - pc);
                    pack_b(bp, b, pc, jc, kc, nc);
                    let overwrite = pc == 0 && !accumulate;
                    for ic in (0..m).step_by(MC) {
                        let mc = MC.min(m - ic);
                        pack_a(ap, a, ic, pc, mc, kc);
                        for jr in (0..nc).step_by(NR) {
                            for ir in (0..mc).step_by(MR) {
                                let (mr, nr) = (MR.min(mc - ir), NR.min(nc - jr));
                                unsafe {
                                    let cptr = c.add((ic + ir) * ldc + jc + jr);
                                    kernel(
                                        kc,
                                        ap[ir * kc..].as_ptr(),
                                        bp[jr * kc..].as_ptr(),
                                        cptr,
                                        ldc,
                                        mr,
                                        nr,
                                        overwrite,
                                    )
                                };
                            }
                        }
                    }
                }
            }
        });
    }

    /// c[mr, nr] (+)= a_panel[kc, MR]ᵀ · b_panel[kc, NR], 24 zmm accumulators.
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        mr: usize,
        nr: usize,
        overwrite: bool,
    ) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            for p in 0..kc {
                let b0 = _mm512_loadu_ps(b.add(p * NR));
                let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
                let ap = a.add(p * MR);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(r));
                    acc_r[0] = _mm512_fmadd_ps(av, b0, acc_r[0]);
                    acc_r[1] = _mm512_fmadd_ps(av, b1, acc_r[1]);
                }
            }
            let mask = |cols: usize| -> __mmask16 { if cols >= 16 { 0xffff } else { ((1u32 << cols) - 1) as u16 } };
            let (m0, m1) = (mask(nr), mask(nr.saturating_sub(16)));
            for (r, acc_r) in acc.iter().enumerate().take(mr) {
                let row = c.add(r * ldc);
                let (mut v0, mut v1) = (acc_r[0], acc_r[1]);
                if !overwrite {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row.add(16)));
                }
                _mm512_mask_storeu_ps(row, m0, v0);
                _mm512_mask_storeu_ps(row.add(16), m1, v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: Mat, b: Mat) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 =
                    (0..k).map(|p| a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.rs + j * b.cs] as f64).sum();
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn matches_naive_for_all_transposes_and_ragged_sizes() {
        let mut seed = 1u32;
        let mut rnd = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        for (m, n, k) in [(13, 37, 29), (100, 70, 300), (1, 33, 5), (130, 2, 260), (64, 64, 1)] {
            let (a, b) = (rnd(m * k), rnd(k * n));
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let am = if ta { Mat::t(&a, m) } else { Mat::rows(&a, k) };
                let bm = if tb { Mat::t(&b, k) } else { Mat::rows(&b, n) };
                let want = naive(m, n, k, am, bm);
                let mut c = vec![7.0f32; m * n];
                gemm(m, n, k, am, bm, &mut c, n, false);
                let err = c.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                assert!(err < 1e-4, "({m},{n},{k}) ta={ta} tb={tb}: max error {err}");
                gemm(m, n, k, am, bm, &mut c, n, true);
                let err = c.iter().zip(&want).map(|(x, y)| (x - 2.0 * y).abs()).fold(0.0, f32::max);
                assert!(err < 1e-4, "accumulate: max error {err}");
            }
        }
    }
}
