//! Softmax cross-entropy over the vocabulary, fused with its backward pass (as llm.c does).

use rayon::prelude::*;

/// Marks a target that does not count towards the loss.
pub const IGNORE_INDEX: u32 = u32::MAX;

/// logits: [N, V], targets: [N] -> losses: [N] (0 where ignored). Returns the number of counted rows.
pub fn crossentropy_forward(losses: &mut [f32], logits: &[f32], targets: &[u32], v: usize) -> usize {
    losses.par_iter_mut().zip(logits.par_chunks(v)).zip(targets.par_iter()).for_each(|((l, row), &t)| {
        *l = if t == IGNORE_INDEX { 0.0 } else { logsumexp(row) - row[t as usize] };
    });
    targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
}

/// Overwrites logits: [N, V] with d(scale · Σ losses)/d logits = scale · (softmax − onehot);
/// ignored rows get zero gradient.
pub fn crossentropy_backward(logits: &mut [f32], targets: &[u32], v: usize, scale: f32) {
    logits.par_chunks_mut(v).zip(targets.par_iter()).for_each(|(row, &t)| {
        if t == IGNORE_INDEX {
            row.fill(0.0);
            return;
        }
        let lse = logsumexp(row);
        row.iter_mut().for_each(|x| *x = (*x - lse).exp() * scale);
        row[t as usize] -= scale;
    });
}

fn logsumexp(row: &[f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln()
}
