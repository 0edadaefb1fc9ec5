//! Causal multi-head attention with grouped-query heads: query head h reads kv head
//! h / (heads / kv_heads). Per (batch, head) it is three GEMMs: S = Q·Kᵀ, P = softmax(S·scale)
//! under the causal mask, O = P·V.

use super::gemm::{Mat, gemm_serial};
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

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint (row, head) blocks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer `off` elements further (a method, so closures capture the whole Send wrapper).
    /// # Safety
    /// The offset must stay inside the allocation.
    unsafe fn at(self, off: usize) -> SendPtr {
        SendPtr(unsafe { self.0.add(off) })
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Copies a [T, hd] block into `dst` rows of width `stride`, starting at `dst`.
/// # Safety
/// The destination block must be valid and written by no other thread.
unsafe fn scatter(dst: SendPtr, src: &[f32], stride: usize, hd: usize) {
    for (r, row) in src.chunks_exact(hd).enumerate() {
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst.0.add(r * stride), hd) };
    }
}

/// q: [B*T, H*hd], k, v: [B*T, KV*hd] -> out: [B*T, H*hd]; saves att: [B, H, T, T] (the
/// probabilities, zero above the diagonal) for the backward pass.
pub fn attention_forward(out: &mut [f32], att: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: AttnShape) {
    let (t, hd, qw, kw) = (s.t, s.hd, s.q_width(), s.kv_width());
    let scale = 1.0 / (hd as f32).sqrt();
    let outp = SendPtr(out.as_mut_ptr());
    att.par_chunks_mut(t * t).enumerate().for_each(|(bh, p)| {
        let (b, h) = (bh / s.heads, bh % s.heads);
        let g = h / s.group();
        let qm = Mat { data: &q[b * t * qw + h * hd..], rs: qw, cs: 1 };
        let km = Mat { data: &k[b * t * kw + g * hd..], rs: 1, cs: kw };
        gemm_serial(t, t, hd, qm, km, p, t, false);
        for (i, row) in p.chunks_exact_mut(t).enumerate() {
            softmax_causal(row, i, scale);
        }
        SCRATCH.with(|sc| {
            let o = &mut *sc.borrow_mut();
            o.resize(t * hd, 0.0);
            let vm = Mat { data: &v[b * t * kw + g * hd..], rs: kw, cs: 1 };
            gemm_serial(t, hd, t, Mat::rows(p, t), vm, o, hd, false);
            let dst = unsafe { outp.at(b * t * qw + h * hd) };
            // SAFETY: rows b*T.. of head h's columns belong to this task only.
            unsafe { scatter(dst, o, qw, hd) };
        });
    });
}

/// row[..=i] = softmax(row[..=i] * scale); row[i+1..] = 0.
fn softmax_causal(row: &mut [f32], i: usize, scale: f32) {
    let (live, masked) = row.split_at_mut(i + 1);
    let max = live.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * scale;
    let mut sum = 0.0;
    for x in live.iter_mut() {
        *x = (*x * scale - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|x| *x *= inv);
    masked.fill(0.0);
}

/// Given dout: [B*T, H*hd] and the forward's q, k, v, att, writes (overwrites) dq: [B*T, H*hd]
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
    att: &[f32],
    s: AttnShape,
) {
    let (t, hd, qw, kw) = (s.t, s.hd, s.q_width(), s.kv_width());
    let scale = 1.0 / (hd as f32).sqrt();
    let (dqp, dkp, dvp) = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
    (0..s.b * s.kv_heads).into_par_iter().for_each(|bg| {
        let (b, g) = (bg / s.kv_heads, bg % s.kv_heads);
        SCRATCH.with(|sc| {
            let buf = &mut *sc.borrow_mut();
            buf.resize(t * t + 3 * t * hd, 0.0);
            let (dp, rest) = buf.split_at_mut(t * t);
            let (dqh, rest) = rest.split_at_mut(t * hd);
            let (dkg, dvg) = rest.split_at_mut(t * hd);
            dkg.fill(0.0);
            dvg.fill(0.0);
            let km = Mat { data: &k[b * t * kw + g * hd..], rs: kw, cs: 1 };
            let vt = Mat { data: &v[b * t * kw + g * hd..], rs: 1, cs: kw };
            for h in g * s.group()..(g + 1) * s.group() {
                let p = &att[(b * s.heads + h) * t * t..][..t * t];
                let dom = Mat { data: &dout[b * t * qw + h * hd..], rs: qw, cs: 1 };
                let qm = Mat { data: &q[b * t * qw + h * hd..], rs: qw, cs: 1 };
                // dV += Pᵀ · dO
                gemm_serial(t, hd, t, Mat::t(p, t), dom, dvg, hd, true);
                // dP = dO · Vᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale
                gemm_serial(t, t, hd, dom, vt, dp, t, false);
                for (prow, drow) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)) {
                    let dot: f32 = prow.iter().zip(drow.iter()).map(|(a, b)| a * b).sum();
                    drow.iter_mut().zip(prow).for_each(|(d, &pv)| *d = pv * (*d - dot) * scale);
                }
                // dQ = dS · K, dK += dSᵀ · Q
                gemm_serial(t, hd, t, Mat::rows(dp, t), km, dqh, hd, false);
                gemm_serial(t, hd, t, Mat::t(dp, t), qm, dkg, hd, true);
                // SAFETY: head h's columns of rows b*T.. are written by this task only.
                unsafe { scatter(dqp.at(b * t * qw + h * hd), dqh, qw, hd) };
            }
            // SAFETY: kv head g's columns of rows b*T.. are written by this task only.
            unsafe {
                scatter(dkp.at(b * t * kw + g * hd), dkg, kw, hd);
                scatter(dvp.at(b * t * kw + g * hd), dvg, kw, hd);
            }
        });
    });
}
