//! Inference kernels: weight matrices in f32 or q8_0 stored in panels of 16 rows, batched
//! matrix–vector products threaded over panels (also used for prefill), RMSNorm, RoPE and attention
//! over a KV cache.
//!
//! The batched product sums every output element in the same order (over the input dimension, one
//! fused multiply–add per term) whatever the number of rows in the batch, so a sequence decoded
//! alone or inside a batch gets bit-identical logits.

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

/// Weight rows per panel: one AVX-512 register of outputs.
const LANES: usize = 16;

/// Weights stored in panels of 16 rows, column by column: element (n, j) of W lives at
/// `((n / 16) * k + j) * 16 + n % 16` (rows padded with zeros to a multiple of 16). One pass over
/// a panel broadcasts each input value against 16 weights and accumulates 16 outputs in one
/// register, so no horizontal sums are needed and the same loads serve every input row.
enum Data {
    F32(Vec<f32>),
    /// `q`: panels of i8 over `k` padded to whole blocks; `scales`: one f32 per (row, block), laid
    /// out as `[panel, block, 16]`.
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
        let panels = rows.div_ceil(LANES);
        let data = match quant {
            Quant::F32 => {
                let mut p = vec![0f32; panels * cols * LANES];
                for (n, row) in w.chunks_exact(cols).enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        p[((n / LANES) * cols + j) * LANES + n % LANES] = v;
                    }
                }
                Data::F32(p)
            }
            Quant::Q8 => {
                let nbk = cols.div_ceil(Q8_BLOCK);
                let kp = nbk * Q8_BLOCK;
                let mut q = vec![0i8; panels * kp * LANES];
                let mut scales = vec![0f32; panels * nbk * LANES];
                for (n, row) in w.chunks_exact(cols).enumerate() {
                    let (pn, lane) = (n / LANES, n % LANES);
                    for (b, blk) in row.chunks(Q8_BLOCK).enumerate() {
                        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let d = amax / 127.0;
                        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                        scales[(pn * nbk + b) * LANES + lane] = d;
                        for (i, v) in blk.iter().enumerate() {
                            let j = b * Q8_BLOCK + i;
                            q[(pn * kp + j) * LANES + lane] = (v * inv).round().clamp(-127.0, 127.0) as i8;
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
        let (pn, lane, k) = (r / LANES, r % LANES, self.cols);
        match &self.data {
            Data::F32(w) => out.iter_mut().enumerate().for_each(|(j, o)| *o = w[(pn * k + j) * LANES + lane]),
            Data::Q8 { q, scales } => {
                let nbk = k.div_ceil(Q8_BLOCK);
                for (j, o) in out.iter_mut().enumerate() {
                    let s = scales[(pn * nbk + j / Q8_BLOCK) * LANES + lane];
                    *o = q[(pn * nbk * Q8_BLOCK + j) * LANES + lane] as f32 * s;
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

/// Batched matrix–vector product, threaded over panels of W's rows.
/// x: [nb, w.cols], out: [nb, w.rows]; out[b, n] = Σ_j W[n, j] · x[b, j], summed in order of j
/// with one fused multiply–add per term, whatever nb.
pub fn matmul(out: &mut [f32], x: &[f32], w: &Matrix, nb: usize) {
    assert!(x.len() >= nb * w.cols && out.len() >= nb * w.rows);
    let ptr = OutPtr(out.as_mut_ptr());
    let panels = w.rows.div_ceil(LANES);
    let macs = nb * w.rows * w.cols;
    let pool = super::pool::pool();
    let nt = pool.threads();
    if nt == 1 || macs < PAR_MIN_MACS {
        // SAFETY: sizes checked above; this call owns all panels.
        unsafe { matmul_panels(ptr, x, w, nb, 0, panels) };
        return;
    }
    // A few chunks per thread so a preempted thread (shared machine) does not stall the rest.
    let chunk = panels.div_ceil(nt * 4).max(1);
    pool.run(panels.div_ceil(chunk), |c| {
        let p0 = c * chunk;
        // SAFETY: task `c` alone writes the columns of panels p0..p1 of `out`; sizes checked above.
        unsafe { matmul_panels(ptr, x, w, nb, p0, (p0 + chunk).min(panels)) };
    });
}

/// Computes out[b, n] for the rows n of panels p0..p1, all b < nb.
/// SAFETY: `out` points to at least nb * w.rows floats; no other thread writes these columns.
unsafe fn matmul_panels(out: OutPtr, x: &[f32], w: &Matrix, nb: usize, p0: usize, p1: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; bounds as documented on the caller.
        unsafe { avx512::matmul_panels(out.0, x, w, nb, p0, p1) };
        return;
    }
    let k = w.cols;
    let mut wv = vec![0f32; k * LANES];
    for pn in p0..p1 {
        panel_f32(w, pn, &mut wv);
        let lanes = LANES.min(w.rows - pn * LANES);
        for b in 0..nb {
            let mut acc = [0f32; LANES];
            for (xj, wj) in x[b * k..(b + 1) * k].iter().zip(wv.chunks_exact(LANES)) {
                acc.iter_mut().zip(wj).for_each(|(a, &w)| *a = w.mul_add(*xj, *a));
            }
            // SAFETY: b < nb and the panel's rows < w.rows; this caller owns these columns.
            unsafe { out.slice(b * w.rows + pn * LANES, lanes).copy_from_slice(&acc[..lanes]) };
        }
    }
}

/// Panel `pn` of W as f32, [k, 16] (dequantized for q8).
fn panel_f32(w: &Matrix, pn: usize, out: &mut [f32]) {
    let k = w.cols;
    match &w.data {
        Data::F32(p) => out.copy_from_slice(&p[pn * k * LANES..(pn + 1) * k * LANES]),
        Data::Q8 { q, scales } => {
            let nbk = k.div_ceil(Q8_BLOCK);
            for (j, o) in out.chunks_exact_mut(LANES).enumerate() {
                let s = &scales[(pn * nbk + j / Q8_BLOCK) * LANES..][..LANES];
                let qj = &q[(pn * nbk * Q8_BLOCK + j) * LANES..][..LANES];
                o.iter_mut().zip(qj).zip(s).for_each(|((o, &q), &s)| *o = q as f32 * s);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Data, LANES, Matrix, Q8_BLOCK};
    use std::arch::x86_64::*;

    /// Output tiles of P panels (16·P weight rows) × R input rows: each weight vector loaded once
    /// per tile serves R rows; 4×4 tiles keep 16 accumulators in registers.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn matmul_panels(out: *mut f32, x: &[f32], w: &Matrix, nb: usize, p0: usize, p1: usize) {
        let mut pn = p0;
        while pn < p1 {
            let p = if pn + 4 <= p1 { 4 } else { 1 };
            let mut b = 0;
            while b < nb {
                let r = if b + 4 <= nb { 4 } else { 1 };
                // SAFETY: panels pn..pn+p < p1, rows b..b+r < nb; the caller guarantees the buffers.
                unsafe {
                    match (p, r) {
                        (4, 4) => tile::<4, 4>(out, x, w, b, pn),
                        (4, _) => tile::<4, 1>(out, x, w, b, pn),
                        (_, 4) => tile::<1, 4>(out, x, w, b, pn),
                        _ => tile::<1, 1>(out, x, w, b, pn),
                    }
                }
                b += r;
            }
            pn += p;
        }
    }

    /// out[b + r, (pn + i) * 16 + l] for i < P, r < R, l < 16 (lanes past w.rows are not stored).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn tile<const P: usize, const R: usize>(out: *mut f32, x: &[f32], w: &Matrix, b: usize, pn: usize) {
        let k = w.cols;
        let x = x[b * k..].as_ptr();
        let mut acc = [[_mm512_setzero_ps(); R]; P];
        // SAFETY (both arms): panel pn + i holds k (or whole blocks of) columns of 16 lanes;
        // x holds R rows of k.
        match &w.data {
            Data::F32(wf) => unsafe {
                let wp = wf.as_ptr().add(pn * k * LANES);
                for j in 0..k {
                    let xs: [__m512; R] = std::array::from_fn(|r| _mm512_set1_ps(*x.add(r * k + j)));
                    for i in 0..P {
                        let wv = _mm512_loadu_ps(wp.add((i * k + j) * LANES));
                        for r in 0..R {
                            acc[i][r] = _mm512_fmadd_ps(wv, xs[r], acc[i][r]);
                        }
                    }
                }
            },
            Data::Q8 { q, scales } => unsafe {
                let nbk = k.div_ceil(Q8_BLOCK);
                let kp = nbk * Q8_BLOCK;
                let (qp, sp) = (q.as_ptr().add(pn * kp * LANES), scales.as_ptr().add(pn * nbk * LANES));
                // Per block of 32 columns: Σ q·x in `part`, then acc += part · scale.
                for blk in 0..nbk {
                    let mut part = [[_mm512_setzero_ps(); R]; P];
                    for j in blk * Q8_BLOCK..k.min((blk + 1) * Q8_BLOCK) {
                        let xs: [__m512; R] = std::array::from_fn(|r| _mm512_set1_ps(*x.add(r * k + j)));
                        for i in 0..P {
                            let qv = _mm_loadu_si128(qp.add((i * kp + j) * LANES) as *const __m128i);
                            let wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(qv));
                            for r in 0..R {
                                part[i][r] = _mm512_fmadd_ps(wv, xs[r], part[i][r]);
                            }
                        }
                    }
                    for i in 0..P {
                        let sc = _mm512_loadu_ps(sp.add((i * nbk + blk) * LANES));
                        for r in 0..R {
                            acc[i][r] = _mm512_fmadd_ps(part[i][r], sc, acc[i][r]);
                        }
                    }
                }
            },
        }
        for i in 0..P {
            let lanes = LANES.min(w.rows.saturating_sub((pn + i) * LANES));
            let m = ((1u32 << lanes) - 1) as __mmask16;
            for r in 0..R {
                // SAFETY: the caller sized `out` for rows b..b+R of w.rows columns; masked to w.rows.
                unsafe { _mm512_mask_storeu_ps(out.add((b + r) * w.rows + (pn + i) * LANES), m, acc[i][r]) };
            }
        }
    }
}

/// RMSNorm of each row. x: [N, C], w: [C] -> out: [N, C].
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], c: usize, eps: f32) {
    for (o, xr) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let ms = sum_of_squares(xr) / c as f32;
        let rstd = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in o.iter_mut().zip(xr).zip(w) {
            *o = v * rstd * g;
        }
    }
}

/// Σ x², in 16 independent lanes so that it vectorises.
fn sum_of_squares(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        acc.iter_mut().zip(c).for_each(|(a, v)| *a = v.mul_add(*v, *a));
    }
    acc.iter().sum::<f32>() + tail
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

/// Positions per block of scores: transposed keys are stored with a row stride that is a multiple
/// of this, so every block is whole (scores past `n` are computed and ignored).
pub const KEY_BLOCK: usize = 32;

/// The `g` query heads that share one KV head (grouped-query attention) attend over its first
/// `n` positions; each key is loaded once for all of them.
/// q: [g, hd]; kb: the head's keys in blocks, [blocks, hd, KEY_BLOCK] (key t, dim d at
/// `((t / KEY_BLOCK) * hd + d) * KEY_BLOCK + t % KEY_BLOCK`), at least n keys; v: its values,
/// [>= n, hd]; scores: [g, ss] scratch (ss >= n rounded up to KEY_BLOCK); out: [g, hd].
#[allow(clippy::too_many_arguments)]
pub fn attend(out: &mut [f32], scores: &mut [f32], ss: usize, q: &[f32], kb: &[f32], v: &[f32], hd: usize, n: usize) {
    let g = q.len() / hd;
    let scale = 1.0 / (hd as f32).sqrt();
    for (blk, keys) in kb.chunks_exact(hd * KEY_BLOCK).take(n.div_ceil(KEY_BLOCK)).enumerate() {
        for h0 in (0..g).step_by(4) {
            let (sc, q) = (&mut scores[h0 * ss + blk * KEY_BLOCK..], &q[h0 * hd..]);
            match (g - h0).min(4) {
                4 => key_scores::<4>(sc, ss, q, keys, scale),
                3 => key_scores::<3>(sc, ss, q, keys, scale),
                2 => key_scores::<2>(sc, ss, q, keys, scale),
                _ => key_scores::<1>(sc, ss, q, keys, scale),
            }
        }
    }
    for sc in scores.chunks_mut(ss).take(g) {
        let sc = &mut sc[..n];
        let max = lanes16(sc, f32::NEG_INFINITY, f32::max);
        for s in sc.iter_mut() {
            *s = exp(*s - max);
        }
        let inv = 1.0 / lanes16(sc, 0.0, |a, b| a + b);
        sc.iter_mut().for_each(|s| *s *= inv);
    }
    let tiles = if hd > 64 { 2 } else { 4 };
    let mut h0 = 0;
    while h0 < g {
        let step = if g - h0 >= tiles { tiles } else { 1 };
        let (o, sc) = (&mut out[h0 * hd..], &scores[h0 * ss..]);
        h0 += step;
        match (step, hd) {
            (4, 32) => weighted_sum::<4, 32>(o, sc, ss, v, n),
            (4, 48) => weighted_sum::<4, 48>(o, sc, ss, v, n),
            (4, 64) => weighted_sum::<4, 64>(o, sc, ss, v, n),
            (2, 128) => weighted_sum::<2, 128>(o, sc, ss, v, n),
            (_, 32) => weighted_sum::<1, 32>(o, sc, ss, v, n),
            (_, 48) => weighted_sum::<1, 48>(o, sc, ss, v, n),
            (_, 64) => weighted_sum::<1, 64>(o, sc, ss, v, n),
            (_, 128) => weighted_sum::<1, 128>(o, sc, ss, v, n),
            _ => {
                for (h, o) in o.chunks_exact_mut(hd).take(step).enumerate() {
                    o.fill(0.0);
                    for (s, vt) in sc[h * ss..][..n].iter().zip(v.chunks_exact(hd)) {
                        for (o, x) in o.iter_mut().zip(vt) {
                            *o = s.mul_add(*x, *o);
                        }
                    }
                }
            }
        }
    }
}

/// scores[h * ss + j] = scale · q[h] · k[j] for H heads and one block of keys ([hd, KEY_BLOCK]),
/// the H × KEY_BLOCK sums kept in registers across the head dimension.
#[allow(clippy::needless_range_loop)]
fn key_scores<const H: usize>(scores: &mut [f32], ss: usize, q: &[f32], keys: &[f32], scale: f32) {
    let hd = keys.len() / KEY_BLOCK;
    let qs: [&[f32]; H] = std::array::from_fn(|h| &q[h * hd..(h + 1) * hd]);
    let mut acc = [[0f32; KEY_BLOCK]; H];
    for (d, k) in keys.chunks_exact(KEY_BLOCK).enumerate() {
        for h in 0..H {
            let qd = qs[h][d];
            for j in 0..KEY_BLOCK {
                acc[h][j] = qd.mul_add(k[j], acc[h][j]);
            }
        }
    }
    for h in 0..H {
        for (s, a) in scores[h * ss..][..KEY_BLOCK].iter_mut().zip(acc[h]) {
            *s = a * scale;
        }
    }
}

/// out[h] = Σ_t p[h, t] · v[t] for H heads (p: [H, ss], first n used), the H × HD
/// outputs kept in registers and each value row loaded once for all heads. v: [>= n, HD].
#[allow(clippy::needless_range_loop)]
fn weighted_sum<const H: usize, const HD: usize>(out: &mut [f32], p: &[f32], ss: usize, v: &[f32], n: usize) {
    let ps: [&[f32]; H] = std::array::from_fn(|h| &p[h * ss..h * ss + n]);
    let mut acc = [[0f32; HD]; H];
    for (t, vt) in v.chunks_exact(HD).take(n).enumerate() {
        let vt: &[f32; HD] = vt.try_into().expect("HD values");
        for h in 0..H {
            let s = ps[h][t];
            for i in 0..HD {
                acc[h][i] = s.mul_add(vt[i], acc[h][i]);
            }
        }
    }
    for h in 0..H {
        out[h * HD..(h + 1) * HD].copy_from_slice(&acc[h]);
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
        // (head_dim, query heads sharing the KV head, positions)
        for (hd, g, n) in [(32usize, 4usize, 150usize), (64, 2, 70), (48, 1, 129), (10, 5, 5), (64, 8, 33)] {
            let cap = (n + 3).next_multiple_of(KEY_BLOCK);
            let ss = cap + KEY_BLOCK;
            // 4x larger q makes the softmax peaky
            let q: Vec<f32> = rand_vec(g * hd, 7).iter().map(|x| x * 4.0).collect();
            let (kb, v) = (rand_vec(hd * cap, 8), rand_vec(cap * hd, 9));
            let key = |t: usize, d: usize| kb[((t / KEY_BLOCK) * hd + d) * KEY_BLOCK + t % KEY_BLOCK] as f64;
            let mut out = vec![0.0; g * hd];
            attend(&mut out, &mut vec![0.0; g * ss], ss, &q, &kb, &v, hd, n);
            for h in 0..g {
                let s: Vec<f64> = (0..n)
                    .map(|t| {
                        let dot: f64 = (0..hd).map(|d| q[h * hd + d] as f64 * key(t, d)).sum();
                        dot / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..hd {
                    let want: f64 = (0..n).map(|t| (s[t] - m).exp() / z * v[t * hd + d] as f64).sum();
                    let o = out[h * hd + d] as f64;
                    assert!((o - want).abs() < 1e-5, "hd {hd} g {g} n {n} head {h} d {d}: {o} vs {want}");
                }
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
