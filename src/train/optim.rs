//! AdamW (decoupled weight decay on 2-D weights only, as PyTorch's `AdamW` with a no-decay group
//! for norms) and global gradient-norm clipping, over the flat buffers.

use crate::model::ParamLayout;
use crate::model::aligned::Aligned;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// AdamW state: first and second moments in the parameter layout, and the step counter.
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub m: Aligned<f32>,
    pub v: Aligned<f32>,
    /// Steps taken (for bias correction).
    pub t: u64,
    /// Per-element weight-decay switch, by tensor: true for matrices.
    decay: Vec<(std::ops::Range<usize>, bool)>,
}

impl AdamW {
    pub fn new(layout: &ParamLayout, cfg: AdamWConfig) -> Self {
        let n = layout.total();
        let decay = layout.tensors.iter().map(|t| (t.range(), t.is_matrix())).collect();
        AdamW { cfg, m: Aligned::zeroed(n), v: Aligned::zeroed(n), t: 0, decay }
    }

    /// One update of `params` from `grads` at learning rate `lr`.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.t as i32)).sqrt();
        let step_size = lr / bc1;
        for (range, is_matrix) in &self.decay {
            let shrink = if *is_matrix { 1.0 - lr * c.weight_decay } else { 1.0 };
            let p = &mut params[range.clone()];
            let (m, v, g) = (&mut self.m[range.clone()], &mut self.v[range.clone()], &grads[range.clone()]);
            p.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| {
                    for i in 0..p.len() {
                        m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
                        v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
                        let denom = v[i].sqrt() / bc2_sqrt + c.eps;
                        p[i] = p[i] * shrink - step_size * m[i] / denom;
                    }
                });
        }
    }
}

/// The global L2 norm of `grads`, summed in fixed chunks (the same on any thread count).
pub fn grad_norm(grads: &[f32]) -> f32 {
    let partial: Vec<f64> = grads.par_chunks(CHUNK).map(|c| c.iter().map(|&g| g as f64 * g as f64).sum()).collect();
    partial.iter().sum::<f64>().sqrt() as f32
}

/// Scales `grads` so that their global norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f32 {
    let norm = grad_norm(grads);
    if norm.is_finite() && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        grads.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|g| *g *= s));
    }
    norm
}
