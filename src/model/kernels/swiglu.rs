//! SwiGLU gate: out = silu(gate) * up, silu(g) = g * sigmoid(g).

use super::{sigmoid, silu};
use rayon::prelude::*;

const CHUNK: usize = 4096;

/// gate, up: [N, F] -> out: [N, F].
pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK)).zip(up.par_chunks(CHUNK)).for_each(|((o, g), u)| {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = silu(g) * u;
        }
    });
}

/// dgate = dout * up * silu'(gate), dup = dout * silu(gate) (overwrite: gate and up feed only this
/// op). `dout_dup` holds dout on entry and dup on return, which saves a [N, F] buffer.
pub fn swiglu_backward(dgate: &mut [f32], dout_dup: &mut [f32], gate: &[f32], up: &[f32]) {
    dgate.par_chunks_mut(CHUNK).zip(dout_dup.par_chunks_mut(CHUNK)).enumerate().for_each(|(i, (dg, dd))| {
        let s = i * CHUNK;
        for j in 0..dg.len() {
            let (g, u, d) = (gate[s + j], up[s + j], dd[j]);
            let sig = sigmoid(g);
            dg[j] = d * u * sig * (1.0 + g * (1.0 - sig));
            dd[j] = d * g * sig;
        }
    });
}
