//! Causal multi-head attention with grouped-query heads: query head h reads kv head
//! h / (heads / kv_heads). Per (batch, head) and block of query rows it is two GEMMs around a
//! softmax: S = Q·Kᵀ, P = softmax(S·scale) under the causal mask, O = P·V.

use super::gemm::{Mat, gemm_serial};
use super::{SharedMut, exp, softmax};
use rayon::prelude::*;
use std::cell::RefCell;

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub hd: usize,
}

impl AttnShape {
    fn q_width(&self) -> usize {
        self.heads * self.hd
    }
    fn kv_width(&self) -> usize {
        self.kv_heads * self.hd
    }
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Copies a [T, hd] block into rows of width `stride` of `dst`, starting at element `at`.
/// # Safety
/// The destination block must lie in `dst` and be written by no other thread.
unsafe fn scatter(dst: SharedMut<f32>, at: usize, src: &[f32], stride: usize, hd: usize) {
    for (r, row) in src.chunks_exact(hd).enumerate() {
        unsafe { dst.slice(at + r * stride, hd) }.copy_from_slice(row);
    }
}

/// Query rows per block: a block of rows only attends to the keys up to its last row, so the
/// causal upper triangle is (mostly) never computed, and the probabilities exist one block at a
/// time — the backward pass recomputes them from the saved log-sum-exp instead of storing [T, T].
const BLOCK_ROWS: usize = 64;

/// The causal key range of the query block starting at `r0`: (rows, keys).
fn block(r0: usize, t: usize) -> (usize, usize) {
    let rows = BLOCK_ROWS.min(t - r0);
    (rows, r0 + rows)
}

/// q: [B*T, H*hd], k, v: [B*T, KV*hd] -> out: [B*T, H*hd]; saves lse: [B, H, T], the log-sum-exp
/// of each row's scaled scores, from which the backward pass recomputes the probabilities.
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: AttnShape) {
    let (t, hd, qw, kw) = (s.t, s.hd, s.q_width(), s.kv_width());
    let scale = 1.0 / (hd as f32).sqrt();
    let outp = SharedMut::new(out);
    lse.par_chunks_mut(t).enumerate().for_each(|(bh, lse)| {
        let (b, h) = (bh / s.heads, bh % s.heads);
        let g = h / s.group();
        let km = Mat { data: &k[b * t * kw + g * hd..], rs: 1, cs: kw };
        let vm = Mat { data: &v[b * t * kw + g * hd..], rs: kw, cs: 1 };
        SCRATCH.with(|sc| {
            let buf = &mut *sc.borrow_mut();
            buf.resize(BLOCK_ROWS * t + t * hd, 0.0);
            let (p, o) = buf.split_at_mut(BLOCK_ROWS * t);
            for r0 in (0..t).step_by(BLOCK_ROWS) {
                let (rows, keys) = block(r0, t);
                let p = &mut p[..rows * keys];
                let qm = Mat { data: &q[(b * t + r0) * qw + h * hd..], rs: qw, cs: 1 };
                gemm_serial(rows, keys, hd, qm, km, p, keys, false);
                for (i, row) in p.chunks_exact_mut(keys).enumerate() {
                    lse[r0 + i] = softmax_causal(row, r0 + i, scale);
                }
                gemm_serial(rows, hd, keys, Mat::rows(p, keys), vm, &mut o[r0 * hd..], hd, false);
            }
            // SAFETY: rows b*T.. of head h's columns belong to this task only.
            unsafe { scatter(outp, b * t * qw + h * hd, o, qw, hd) };
        });
    });
}

/// row[..=i] = softmax(row[..=i] * scale); row[i+1..] = 0. Returns the log-sum-exp of the scaled row.
fn softmax_causal(row: &mut [f32], i: usize, scale: f32) -> f32 {
    let (live, masked) = row.split_at_mut(i + 1);
    masked.fill(0.0);
    softmax(live, scale)
}

/// Given dout: [B*T, H*hd], the forward's q, k, v and lse, writes (overwrites) dq: [B*T, H*hd]
/// and dk, dv: [B*T, KV*hd]. Parallel over (batch, kv head), so the query heads sharing a kv head
/// add into its gradient in a fixed order.
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lse: &[f32],
    s: AttnShape,
) {
    let (t, hd, qw, kw) = (s.t, s.hd, s.q_width(), s.kv_width());
    let scale = 1.0 / (hd as f32).sqrt();
    let (dqp, dkp, dvp) = (SharedMut::new(dq), SharedMut::new(dk), SharedMut::new(dv));
    (0..s.b * s.kv_heads).into_par_iter().for_each(|bg| {
        let (b, g) = (bg / s.kv_heads, bg % s.kv_heads);
        let kt = Mat { data: &k[b * t * kw + g * hd..], rs: 1, cs: kw };
        let km = Mat { data: &k[b * t * kw + g * hd..], rs: kw, cs: 1 };
        let vt = Mat { data: &v[b * t * kw + g * hd..], rs: 1, cs: kw };
        SCRATCH.with(|sc| {
            let buf = &mut *sc.borrow_mut();
            buf.resize(2 * BLOCK_ROWS * t + 3 * t * hd, 0.0);
            let (p, rest) = buf.split_at_mut(BLOCK_ROWS * t);
            let (dp, rest) = rest.split_at_mut(BLOCK_ROWS * t);
            let (dqh, rest) = rest.split_at_mut(t * hd);
            let (dkg, dvg) = rest.split_at_mut(t * hd);
            dkg.fill(0.0);
            dvg.fill(0.0);
            for h in g * s.group()..(g + 1) * s.group() {
                let lse = &lse[(b * s.heads + h) * t..][..t];
                for r0 in (0..t).step_by(BLOCK_ROWS) {
                    let (rows, keys) = block(r0, t);
                    let (p, dp) = (&mut p[..rows * keys], &mut dp[..rows * keys]);
                    let qm = Mat { data: &q[(b * t + r0) * qw + h * hd..], rs: qw, cs: 1 };
                    let dom = Mat { data: &dout[(b * t + r0) * qw + h * hd..], rs: qw, cs: 1 };
                    // P = exp(Q·Kᵀ · scale − lse) under the causal mask, as in the forward pass
                    gemm_serial(rows, keys, hd, qm, kt, p, keys, false);
                    for (i, row) in p.chunks_exact_mut(keys).enumerate() {
                        let (live, masked) = row.split_at_mut(r0 + i + 1);
                        live.iter_mut().for_each(|x| *x = exp(*x * scale - lse[r0 + i]));
                        masked.fill(0.0);
                    }
                    // dV += Pᵀ · dO
                    gemm_serial(keys, hd, rows, Mat::t(p, keys), dom, dvg, hd, true);
                    // dP = dO · Vᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale
                    gemm_serial(rows, keys, hd, dom, vt, dp, keys, false);
                    for (prow, drow) in p.chunks_exact(keys).zip(dp.chunks_exact_mut(keys)) {
                        let dot: f32 = prow.iter().zip(drow.iter()).map(|(a, b)| a * b).sum();
                        drow.iter_mut().zip(prow).for_each(|(d, &pv)| *d = pv * (*d - dot) * scale);
                    }
                    // dQ = dS · K, dK += dSᵀ · Q
                    gemm_serial(rows, hd, keys, Mat::rows(dp, keys), km, &mut dqh[r0 * hd..], hd, false);
                    gemm_serial(keys, hd, rows, Mat::t(dp, keys), qm, dkg, hd, true);
                }
                // SAFETY: head h's columns of rows b*T.. are written by this task only.
                unsafe { scatter(dqp, b * t * qw + h * hd, dqh, qw, hd) };
            }
            // SAFETY: kv head g's columns of rows b*T.. are written by this task only.
            unsafe {
                scatter(dkp, b * t * kw + g * hd, dkg, kw, hd);
                scatter(dvp, b * t * kw + g * hd, dvg, kw, hd);
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    // T = 150 spans three query blocks, the last one ragged; 4 query heads share 2 kv heads.
    const S: AttnShape = AttnShape { b: 2, t: 150, heads: 4, kv_heads: 2, hd: 8 };

    fn random(len: usize, rng: &mut impl Rng) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Σ out ⊙ w of a plain causal attention in f64: the reference for forward and backward.
    fn reference_loss(q: &[f64], k: &[f64], v: &[f64], w: &[f64], s: AttnShape) -> f64 {
        let (t, hd, qw, kw) = (s.t, s.hd, s.q_width(), s.kv_width());
        let mut loss = 0.0;
        for b in 0..s.b {
            for h in 0..s.heads {
                let g = h / s.group();
                for i in 0..t {
                    let qi = &q[(b * t + i) * qw + h * hd..][..hd];
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| {
                            let kj = &k[(b * t + j) * kw + g * hd..][..hd];
                            qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..hd {
                        let o: f64 = (0..=i).map(|j| e[j] / sum * v[(b * t + j) * kw + g * hd + c]).sum();
                        loss += o * w[(b * t + i) * qw + h * hd + c];
                    }
                }
            }
        }
        loss
    }

    #[test]
    fn blocked_attention_matches_plain_causal_attention_and_its_gradient() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let n = S.b * S.t;
        let (q, k, v) =
            (random(n * S.q_width(), &mut rng), random(n * S.kv_width(), &mut rng), random(n * S.kv_width(), &mut rng));
        let w = random(n * S.q_width(), &mut rng);
        let mut out = vec![0.0; n * S.q_width()];
        let mut lse = vec![0.0; S.b * S.heads * S.t];
        attention_forward(&mut out, &mut lse, &q, &k, &v, S);
        let f64s = |x: &[f32]| x.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let (q64, k64, v64, w64) = (f64s(&q), f64s(&k), f64s(&v), f64s(&w));
        let ours: f64 = out.iter().zip(&w).map(|(&o, &w)| o as f64 * w as f64).sum();
        let reference = reference_loss(&q64, &k64, &v64, &w64, S);
        assert!((ours - reference).abs() < 2e-6 * reference.abs().max(1.0), "{ours} vs {reference}");

        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        attention_backward(&mut dq, &mut dk, &mut dv, &w, &q, &k, &v, &lse, S);
        let eps = 1e-5;
        for (which, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
            for _ in 0..32 {
                let idx = rng.random_range(0..grad.len());
                let mut inputs = [q64.clone(), k64.clone(), v64.clone()];
                inputs[which][idx] += eps;
                let up = reference_loss(&inputs[0], &inputs[1], &inputs[2], &w64, S);
                inputs[which][idx] -= 2.0 * eps;
                let down = reference_loss(&inputs[0], &inputs[1], &inputs[2], &w64, S);
                let fd = (up - down) / (2.0 * eps);
                assert!(
                    (grad[idx] as f64 - fd).abs() < 1e-4 * fd.abs() + 1e-6,
                    "input {which}[{idx}]: {} vs {fd}",
                    grad[idx]
                );
            }
        }
    }
}
