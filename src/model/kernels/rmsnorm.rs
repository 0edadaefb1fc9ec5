//! RMSNorm over the last dimension: out = x / sqrt(mean(x²) + eps) * w.

use super::{ROWS_PER_TASK, reduce_partials};
use rayon::prelude::*;

/// x: [N, C], w: [C] -> out: [N, C]; saves rstd: [N] for the backward pass.
pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], c: usize, eps: f32) {
    out.par_chunks_mut(c).zip(rstd.par_iter_mut()).zip(x.par_chunks(c)).for_each(|((o, r), xr)| {
        *r = row_rstd(xr, eps);
        scale_row(o, xr, w, *r);
    });
}

/// out = x * rstd * w with the rstd saved by `rmsnorm_forward`: recomputes its output bit for bit
/// (the backward pass does this instead of keeping every norm's output).
pub fn rmsnorm_apply(out: &mut [f32], x: &[f32], w: &[f32], rstd: &[f32], c: usize) {
    out.par_chunks_mut(c).zip(rstd.par_iter()).zip(x.par_chunks(c)).for_each(|((o, &r), xr)| scale_row(o, xr, w, r));
}

/// 1 / sqrt(mean(x²) + eps) of one row, the squares summed in 16 lanes so that it vectorises.
pub fn row_rstd(x: &[f32], eps: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        acc.iter_mut().zip(c).for_each(|(a, v)| *a = v.mul_add(*v, *a));
    }
    let ms = (acc.iter().sum::<f32>() + tail) / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// out = x * rstd * w for one row.
pub fn scale_row(out: &mut [f32], x: &[f32], w: &[f32], rstd: f32) {
    out.iter_mut().zip(x).zip(w).for_each(|((o, xv), wv)| *o = xv * rstd * wv);
}

/// dx[N, C] += ∂/∂x, dw[C] += ∂/∂w, given dout: [N, C] and the forward's x, w, rstd.
/// `partials`: scratch of at least ceil(N / ROWS_PER_TASK) * C floats.
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    partials: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    c: usize,
) {
    let rows = ROWS_PER_TASK * c;
    let chunks = x.len().div_ceil(rows);
    let partials = &mut partials[..chunks * c];
    partials.par_chunks_mut(c).zip(dx.par_chunks_mut(rows)).enumerate().for_each(|(i, (dwp, dxc))| {
        dwp.fill(0.0);
        let base = i * ROWS_PER_TASK;
        for (r, dxr) in dxc.chunks_mut(c).enumerate() {
            let n = base + r;
            let (xr, dr, s) = (&x[n * c..(n + 1) * c], &dout[n * c..(n + 1) * c], rstd[n]);
            // out = x * s * w, s = (mean(x²) + eps)^-1/2  =>  dx = s * (w·d) - x * s³ * mean(x · w·d)
            let dot = xr.iter().zip(dr).zip(w).map(|((xv, dv), wv)| xv * dv * wv).sum::<f32>() / c as f32;
            for j in 0..c {
                dxr[j] += s * w[j] * dr[j] - xr[j] * s * s * s * dot;
                dwp[j] += dr[j] * xr[j] * s;
            }
        }
    });
    reduce_partials(dw, partials);
}
