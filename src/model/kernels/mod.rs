//! The training kernels: one module per op, forward and backward side by side, plain functions
//! over slices with explicit sizes. Backward functions accumulate (`+=`) into gradients.
//! This module is the boundary behind which another backend (e.g. CUDA) would slot in.

pub mod attention;
pub mod crossentropy;
pub mod embedding;
pub mod gemm;
pub mod linear;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

/// Rows per task in row-parallel kernels and in reductions. Fixed (not derived from the thread
/// count) so that sums happen in the same order on any machine: results are reproducible.
pub const ROWS_PER_TASK: usize = 64;

/// Sums per-chunk partial vectors in chunk order: the deterministic reduction behind weight
/// gradients of row-parallel kernels. `partials`: [chunks, c] -> `out[c] += Σ`.
pub fn reduce_partials(out: &mut [f32], partials: &[f32]) {
    let c = out.len();
    for part in partials.chunks_exact(c) {
        out.iter_mut().zip(part).for_each(|(o, p)| *o += p);
    }
}
