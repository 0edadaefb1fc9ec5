//! Inference kernels: weight matrices in f32 or q8_0, batched matrix–vector products threaded
//! over weight rows (also used for prefill: measured faster here than `matrixmultiply`'s packed
//! GEMM at these sizes), RMSNorm, RoPE and attention over a KV cache.
//!
//! The batched product computes every output element with the same instruction sequence whatever
//! the number of rows in the batch, so a sequence decoded alone or inside a batch gets bit-identical
//! logits.

use crate::model::kernels::{exp, lanes16};

/// q8_0 block length: each run of 32 weights of a row shares one f32 scale.
pub const Q8_BLOCK: usize = 32;

/// How weight matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    F32,
    /// Weight-only int8 with one f32 scale per block of 32 (like llama.cpp's q8_0).
    Q8,
}

impl std::str::FromStr for Quant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Quant::F32),
            "q8" | "q8_0" => Ok(Quant::Q8),
            _ => Err(format!("unknown weight format `{s}`; use f32 or q8")),
        }
    }
}

enum Data {
    F32(Vec<f32>),
    /// `q`: [rows, blocks*32] (the last block of a row zero-padded), `scales`: [rows, blocks].
    Q8 {
        q: Vec<i8>,
        scales: Vec<f32>,
    },
}

/// A weight matrix W: [rows, cols] (PyTorch `[out, in]`), applied as y = x @ W^T.
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    data: Data,
}

impl Matrix {
    /// w: [rows, cols] row-major.
    pub fn new(w: &[f32], rows: usize, cols: usize, quant: Quant) -> Self {
        debug_assert_eq!(w.len(), rows * cols);
        let data = match quant {
            Quant::F32 => Data::F32(w.to_vec()),
            Quant::Q8 => {
                let nb = cols.div_ceil(Q8_BLOCK);
                let mut q = vec![0i8; rows * nb * Q8_BLOCK];
                let mut scales = vec![0f32; rows * nb];
                for r in 0..rows {
                    for (b, blk) in w[r * cols..(r + 1) * cols].chunks(Q8_BLOCK).enumerate() {
                        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let d = amax / 127.0;
                        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                        scales[r * nb + b] = d;
                        let dst = &mut q[(r * nb + b) * Q8_BLOCK..];
                        for (o, v) in dst.iter_mut().zip(blk) {
                            *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
                        }
                    }
                }
                Data::Q8 { q, scales }
            }
        };
        Matrix { rows, cols, data }
    }

    /// Bytes read from memory by one pass over the weights.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(w) => w.len() * 4,
            Data::Q8 { q, scales } => q.len() + scales.len() * 4,
        }
    }

    /// Row `r` as f32 (dequantized for q8).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        match &self.data {
            Data::F32(w) => out.copy_from_slice(&w[r * self.cols..(r + 1) * self.cols]),
            Data::Q8 { q, scales } => {
                let nb = self.cols.div_ceil(Q8_BLOCK);
                for (c, o) in out.iter_mut().enumerate() {
                    *o = q[r * nb * Q8_BLOCK + c] as f32 * scales[r * nb + c / Q8_BLOCK];
                }
            }
        }
    }
}

/// Raw output pointer shared by threads that write disjoint elements.
#[derive(Clone, Copy)]
pub struct OutPtr(pub *mut f32);

impl OutPtr {
    /// `len` elements from `at`.
    ///
    /// # Safety
    /// In bounds of the buffer, and no other thread uses these elements meanwhile.
    pub unsafe fn slice(self, at: usize, len: usize) -> &'static mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}
// SAFETY: every thread writes a disjoint set of elements (its own weight rows' columns).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Below this many multiply–adds a product runs on the calling thread (a rayon round trip costs more).
const PAR_MIN_MACS: usize = 1 << 16;

/// Batched matrix–vector product, threaded over the rows of W.
/// x: [nb, w.cols], out: [nb, w.rows]; out[b, n] = dot(x[b], W[n]).
pub fn matmul(out: &mut [f32], x: &[f32], w: &Matrix, nb: usize) {
    assert!(x.len() >= nb * w.cols && out.len() >= nb * w.rows);
    let ptr = OutPtr(out.as_mut_ptr());
    let macs = nb * w.rows * w.cols;
    let pool = super::pool::pool();
    let nt = pool.threads();
    if nt == 1 || macs < PAR_MIN_MACS {
        // SAFETY: sizes checked above; this call owns all rows.
        unsafe { matmul_rows(ptr, x, w, nb, 0, w.rows) };
        return;
    }
    // A few chunks per thread so a preempted thread (shared machine) does not stall the rest.
    let chunk = w.rows.div_ceil(nt * 4).next_multiple_of(4).max(16);
    pool.run(w.rows.div_ceil(chunk), |c| {
        let n0 = c * chunk;
        let n1 = (n0 + chunk).min(w.rows);
        // SAFETY: task `c` alone writes columns n0..n1 of `out`; sizes checked above.
        unsafe { matmul_rows(ptr, x, w, nb, n0, n1) };
    });
}

/// Computes out[b, n] for n in n0..n1, all b < nb.
/// SAFETY: `out` points to at least nb * w.rows floats; no other thread writes columns n0..n1.
unsafe fn matmul_rows(out: OutPtr, x: &[f32], w: &Matrix, nb: usize, n0: usize, n1: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; bounds as documented on the caller.
        unsafe { avx512::matmul_rows(out.0, x, w, nb, n0, n1) };
        return;
    }
    let k = w.cols;
    for n in n0..n1 {
        for b in 0..nb {
            let xb = &x[b * k..(b + 1) * k];
            let y = match &w.data {
                Data::F32(wf) => dot_f32(&wf[n * k..(n + 1) * k], xb),
                Data::Q8 { q, scales } => {
                    let nbk = k.div_ceil(Q8_BLOCK);
                    dot_q8(&q[n * nbk * Q8_BLOCK..], &scales[n * nbk..(n + 1) * nbk], xb)
                }
            };
            // SAFETY: b < nb and n < w.rows; this caller owns column n.
            unsafe { *out.0.add(b * w.rows + n) = y };
        }
    }
}

/// Portable dot product with 16 independent lanes (autovectorises).
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (xa, xb) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] = xa[i].mul_add(xb[i], acc[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Portable q8_0 row · f32 vector. q: the row's blocks (zero padded), scales: [blocks].
fn dot_q8(q: &[i8], scales: &[f32], x: &[f32]) -> f32 {
    x.chunks(Q8_BLOCK)
        .zip(q.chunks_exact(Q8_BLOCK))
        .zip(scales)
        .map(|((xb, qb), s)| xb.iter().zip(qb).map(|(x, &q)| x * q as f32).sum::<f32>() * s)
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Data, Matrix, Q8_BLOCK};
    use std::arch::x86_64::*;

    /// Output tile: NR weight rows × R input rows; weights are loaded once per tile for all R rows.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn matmul_rows(out: *mut f32, x: &[f32], w: &Matrix, nb: usize, n0: usize, n1: usize) {
        let k = w.cols;
        let ldo = w.rows;
        let xp = x.as_ptr();
        let mut n = n0;
        while n < n1 {
            let step = if n + 4 <= n1 { 4 } else { 1 };
            let mut b = 0;
            while b < nb {
                let rows = if b + 4 <= nb { 4 } else { 1 };
                // SAFETY: n + step <= n1 <= w.rows, b + rows <= nb; caller guarantees the buffers.
                unsafe {
                    let o = out.add(b * ldo + n);
                    let xb = xp.add(b * k);
                    match (&w.data, step, rows) {
                        (Data::F32(wf), 4, 4) => tile_f32::<4, 4>(o, ldo, wf.as_ptr().add(n * k), xb, k),
                        (Data::F32(wf), 4, _) => tile_f32::<4, 1>(o, ldo, wf.as_ptr().add(n * k), xb, k),
                        (Data::F32(wf), _, 4) => tile_f32::<1, 4>(o, ldo, wf.as_ptr().add(n * k), xb, k),
                        (Data::F32(wf), _, _) => tile_f32::<1, 1>(o, ldo, wf.as_ptr().add(n * k), xb, k),
                        (Data::Q8 { q, scales }, s, r) => {
                            let nbk = k.div_ceil(Q8_BLOCK);
                            let qp = q.as_ptr().add(n * nbk * Q8_BLOCK);
                            let sp = scales.as_ptr().add(n * nbk);
                            match (s, r) {
                                (4, 4) => tile_q8::<4, 4>(o, ldo, qp, sp, xb, k),
                                (4, _) => tile_q8::<4, 1>(o, ldo, qp, sp, xb, k),
                                (_, 4) => tile_q8::<1, 4>(o, ldo, qp, sp, xb, k),
                                _ => tile_q8::<1, 1>(o, ldo, qp, sp, xb, k),
                            }
                        }
                    }
                }
                b += rows;
            }
            n += step;
        }
    }

    #[inline(always)]
    fn mask(j: usize, k: usize) -> __mmask16 {
        if j + 16 <= k {
            0xFFFF
        } else if j >= k {
            0
        } else {
            ((1u32 << (k - j)) - 1) as __mmask16
        }
    }

    /// out[r*ldo + i] = dot(w[i*k..], x[r*k..]) for i < NR, r < R.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn tile_f32<const NR: usize, const R: usize>(
        out: *mut f32,
        ldo: usize,
        w: *const f32,
        x: *const f32,
        k: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); R]; NR];
        let mut xs = [_mm512_setzero_ps(); R];
        let mut j = 0;
        while j < k {
            let m = mask(j, k);
            // SAFETY: masked loads touch only j..k of each row.
            unsafe {
                for r in 0..R {
                    xs[r] = _mm512_maskz_loadu_ps(m, x.add(r * k + j));
                }
                for i in 0..NR {
                    let wv = _mm512_maskz_loadu_ps(m, w.add(i * k + j));
                    for r in 0..R {
                        acc[i][r] = _mm512_fmadd_ps(wv, xs[r], acc[i][r]);
                    }
                }
            }
            j += 16;
        }
        for i in 0..NR {
            for r in 0..R {
                // SAFETY: the caller sized `out` for R rows of ldo and NR columns.
                unsafe { *out.add(r * ldo + i) = _mm512_reduce_add_ps(acc[i][r]) };
            }
        }
    }

    /// Like `tile_f32` for q8_0 weights: q rows of `blocks*32` i8, scales rows of `blocks`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn tile_q8<const NR: usize, const R: usize>(
        out: *mut f32,
        ldo: usize,
        q: *const i8,
        s: *const f32,
        x: *const f32,
        k: usize,
    ) {
        let nbk = k.div_ceil(Q8_BLOCK);
        let mut acc = [[_mm512_setzero_ps(); R]; NR];
        let mut x0 = [_mm512_setzero_ps(); R];
        let mut x1 = [_mm512_setzero_ps(); R];
        for blk in 0..nbk {
            let j = blk * Q8_BLOCK;
            let (m0, m1) = (mask(j, k), mask(j + 16, k));
            // SAFETY: masked x loads stay inside rows; q blocks are padded to 32.
            unsafe {
                for r in 0..R {
                    x0[r] = _mm512_maskz_loadu_ps(m0, x.add(r * k + j));
                    x1[r] = _mm512_maskz_loadu_ps(m1, x.add(r * k + j + 16));
                }
                for i in 0..NR {
                    let qp = q.add(i * nbk * Q8_BLOCK + j);
                    let sc = _mm512_set1_ps(*s.add(i * nbk + blk));
                    let q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128(qp as *const __m128i));
                    let q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128(qp.add(16) as *const __m128i));
                    let w0 = _mm512_mul_ps(_mm512_cvtepi32_ps(q0), sc);
                    let w1 = _mm512_mul_ps(_mm512_cvtepi32_ps(q1), sc);
                    for r in 0..R {
                        acc[i][r] = _mm512_fmadd_ps(w0, x0[r], acc[i][r]);
                        acc[i][r] = _mm512_fmadd_ps(w1, x1[r], acc[i][r]);
                    }
                }
            }
        }
        for i in 0..NR {
            for r in 0..R {
                // SAFETY: the caller sized `out` for R rows of ldo and NR columns.
                unsafe { *out.add(r * ldo + i) = _mm512_reduce_add_ps(acc[i][r]) };
            }
        }
    }
}

/// RMSNorm of each row. x: [N, C], w: [C] -> out: [N, C].
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], c: usize, eps: f32) {
    for (o, xr) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / c as f32;
        let rstd = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in o.iter_mut().zip(xr).zip(w) {
            *o = v * rstd * g;
        }
    }
}

/// Rotate-half RoPE (HF convention) of every head in `x`: [n_heads * hd], pairs (i, i + hd/2).
/// cos, sin: [hd/2] for this position.
pub fn rope(x: &mut [f32], hd: usize, cos: &[f32], sin: &[f32]) {
    let half = hd / 2;
    for h in x.chunks_exact_mut(hd) {
        let (a, b) = h.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

/// One query head attending over the first `n` positions of one KV head.
/// q: [hd]; kt: the head's keys transposed, [hd, cap]; v: its values, [cap, hd];
/// scores: [>= n] scratch; out: [hd]. The transposed keys make every loop a plain vector loop.
pub fn attend(out: &mut [f32], scores: &mut [f32], q: &[f32], kt: &[f32], v: &[f32], cap: usize, n: usize) {
    let hd = q.len();
    let scale = 1.0 / (hd as f32).sqrt();
    let scores = &mut scores[..n];
    // 64 scores at a time stay in registers across the head dimension.
    let mut t0 = 0;
    while t0 + 64 <= n {
        let mut acc = [0f32; 64];
        for (d, &qd) in q.iter().enumerate() {
            let k: &[f32; 64] = kt[d * cap + t0..d * cap + t0 + 64].try_into().expect("64 keys");
            for j in 0..64 {
                acc[j] = qd.mul_add(k[j], acc[j]);
            }
        }
        for (s, a) in scores[t0..t0 + 64].iter_mut().zip(acc) {
            *s = a * scale;
        }
        t0 += 64;
    }
    for (t, s) in scores.iter_mut().enumerate().skip(t0) {
        *s = q.iter().enumerate().map(|(d, qd)| qd * kt[d * cap + t]).sum::<f32>() * scale;
    }
    let max = lanes16(scores, f32::NEG_INFINITY, f32::max);
    for s in scores.iter_mut() {
        *s = exp(*s - max);
    }
    let inv = 1.0 / lanes16(scores, 0.0, |a, b| a + b);
    match hd {
        32 => weighted_sum::<32>(out, scores, v, inv),
        64 => weighted_sum::<64>(out, scores, v, inv),
        _ => {
            out.fill(0.0);
            for (s, vt) in scores.iter().zip(v.chunks_exact(hd)) {
                let p = s * inv;
                for (o, x) in out.iter_mut().zip(vt) {
                    *o = p.mul_add(*x, *o);
                }
            }
        }
    }
}

/// out = inv * sum_t p[t] * v[t], with the HD outputs kept in registers. v: [>= p.len(), HD].
#[allow(clippy::needless_range_loop)]
fn weighted_sum<const HD: usize>(out: &mut [f32], p: &[f32], v: &[f32], inv: f32) {
    let mut acc = [0f32; HD];
    for (s, vt) in p.iter().zip(v.chunks_exact(HD)) {
        let vt: &[f32; HD] = vt.try_into().expect("HD values");
        for i in 0..HD {
            acc[i] = s.mul_add(vt[i], acc[i]);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = a * inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random::<f32>() - 0.5).collect()
    }

    fn naive(x: &[f32], w: &[f32], nb: usize, n: usize, k: usize) -> Vec<f32> {
        let mut o = vec![0.0; nb * n];
        for b in 0..nb {
            for j in 0..n {
                o[b * n + j] = (0..k).map(|i| x[b * k + i] as f64 * w[j * k + i] as f64).sum::<f64>() as f32;
            }
        }
        o
    }

    #[test]
    fn matmul_matches_naive_for_odd_shapes() {
        for (nb, n, k) in [(1, 7, 5), (5, 9, 37), (4, 300, 688), (9, 130, 256)] {
            let (x, w) = (rand_vec(nb * k, 1), rand_vec(n * k, 2));
            let want = naive(&x, &w, nb, n, k);
            for q in [Quant::F32, Quant::Q8] {
                let m = Matrix::new(&w, n, k, q);
                let mut got = vec![0.0; nb * n];
                matmul(&mut got, &x, &m, nb);
                let tol = if q == Quant::F32 { 1e-4 } else { 0.02 * (k as f32).sqrt() / 8.0 };
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < tol, "{q:?} {nb}x{n}x{k}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn q8_kernel_equals_f32_on_dequantized_weights() {
        let (nb, n, k) = (5, 33, 688);
        let (x, w) = (rand_vec(nb * k, 5), rand_vec(n * k, 6));
        let q = Matrix::new(&w, n, k, Quant::Q8);
        let mut deq = vec![0.0; n * k];
        for (r, row) in deq.chunks_mut(k).enumerate() {
            q.row(r, row);
        }
        let want = naive(&x, &deq, nb, n, k);
        let mut got = vec![0.0; nb * n];
        matmul(&mut got, &x, &q, nb);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn attend_matches_naive_softmax_attention() {
        for (hd, n) in [(32, 150), (64, 70), (48, 129), (10, 5)] {
            let cap = n + 3;
            let (q, kt, v) = (rand_vec(hd, 7), rand_vec(hd * cap, 8), rand_vec(cap * hd, 9));
            let mut out = vec![0.0; hd];
            attend(&mut out, &mut vec![0.0; cap], &q, &kt, &v, cap, n);
            let s: Vec<f64> = (0..n)
                .map(|t| (0..hd).map(|d| q[d] as f64 * kt[d * cap + t] as f64).sum::<f64>() * 4.0 / (hd as f64).sqrt())
                .collect();
            // 4x larger q to make the softmax peaky: rerun ours with it
            let q4: Vec<f32> = q.iter().map(|x| x * 4.0).collect();
            attend(&mut out, &mut vec![0.0; cap], &q4, &kt, &v, cap, n);
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for (d, o) in out.iter().enumerate() {
                let want: f64 = (0..n).map(|t| (s[t] - m).exp() / z * v[t * hd + d] as f64).sum();
                assert!((*o as f64 - want).abs() < 1e-5, "hd {hd} n {n} d {d}: {o} vs {want}");
            }
        }
    }

    #[test]
    fn batched_rows_are_bit_identical_to_single_rows() {
        let (nb, n, k) = (7, 70, 100);
        let (x, w) = (rand_vec(nb * k, 3), rand_vec(n * k, 4));
        for q in [Quant::F32, Quant::Q8] {
            let m = Matrix::new(&w, n, k, q);
            let mut all = vec![0.0; nb * n];
            matmul(&mut all, &x, &m, nb);
            for b in 0..nb {
                let mut one = vec![0.0; n];
                matmul(&mut one, &x[b * k..(b + 1) * k], &m, 1);
                assert_eq!(one, all[b * n..(b + 1) * n]);
            }
        }
    }
}
