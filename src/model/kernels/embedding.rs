//! Token embedding lookup.

use rayon::prelude::*;

/// out[N, C] = table[tokens[n], :]; table: [V, C].
pub fn embedding_forward(out: &mut [f32], tokens: &[u32], table: &[f32], c: usize) {
    out.par_chunks_mut(c).zip(tokens.par_iter()).for_each(|(row, &t)| {
        let t = t as usize;
        row.copy_from_slice(&table[t * c..(t + 1) * c]);
    });
}

/// dtable[tokens[n], :] += dout[n, :]. Serial: a token may repeat, and the work is tiny.
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], tokens: &[u32], c: usize) {
    for (row, &t) in dout.chunks_exact(c).zip(tokens) {
        let t = t as usize;
        dtable[t * c..(t + 1) * c].iter_mut().zip(row).for_each(|(d, g)| *d += g);
    }
}
