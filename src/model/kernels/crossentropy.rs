//! Softmax cross-entropy over the vocabulary. The backward pass reuses the forward's log-sum-exp,
//! so each logit is exponentiated once per pass.

use super::{exp, reduce_lanes};
use rayon::prelude::*;

/// Marks a target that does not count towards the loss.
pub const IGNORE_INDEX: u32 = u32::MAX;

/// logits: [N, V], targets: [N] -> losses: [N] (0 where ignored), lse: [N] (log-sum-exp of each
/// row, for the backward pass). Returns the number of counted rows.
pub fn crossentropy_forward(losses: &mut [f32], lse: &mut [f32], logits: &[f32], targets: &[u32], v: usize) -> usize {
    (losses, lse, logits.par_chunks(v), targets).into_par_iter().for_each(|(l, lse, row, &t)| {
        *lse = logsumexp(row);
        *l = if t == IGNORE_INDEX { 0.0 } else { *lse - row[t as usize] };
    });
    targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
}

/// Overwrites logits: [N, V] with d(Σ losses)/d logits = softmax − onehot, given the forward's
/// lse: [N]; ignored rows get zero gradient. (The loss scale is applied later, once, to the
/// products of this gradient.)
pub fn crossentropy_backward(logits: &mut [f32], lse: &[f32], targets: &[u32], v: usize) {
    (logits.par_chunks_mut(v), lse, targets).into_par_iter().for_each(|(row, &lse, &t)| {
        if t == IGNORE_INDEX {
            row.fill(0.0);
            return;
        }
        row.iter_mut().for_each(|x| *x = exp(*x - lse));
        row[t as usize] -= 1.0;
    });
}

fn logsumexp(row: &[f32]) -> f32 {
    let max = reduce_lanes(row, f32::NEG_INFINITY, f32::max);
    let mut acc = [0.0f32; 16]; // 16 lanes, so that the sum vectorises
    let chunks = row.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&x| exp(x - max)).sum();
    for c in chunks {
        acc.iter_mut().zip(c).for_each(|(a, &x)| *a += exp(x - max));
    }
    max + (acc.iter().sum::<f32>() + tail).ln()
}
