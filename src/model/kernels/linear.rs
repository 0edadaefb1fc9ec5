//! A bias-free linear layer y = x · Wᵀ with W stored `[out, in]` (HF layout), through GEMM.

use super::gemm::{Mat, gemm};

/// y[N, out] = x[N, in] · w[out, in]ᵀ (overwrite), or += when `accumulate`.
pub fn linear_forward(y: &mut [f32], x: &[f32], w: &[f32], n: usize, din: usize, dout: usize, accumulate: bool) {
    gemm(n, dout, din, Mat::rows(x, din), Mat::t(w, din), y, dout, accumulate);
}

/// dx[N, in] += dy[N, out] · w[out, in];  dw[out, in] += dy[N, out]ᵀ · x[N, in].
pub fn linear_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    din: usize,
    dout: usize,
) {
    gemm(n, din, dout, Mat::rows(dy, dout), Mat::rows(w, din), dx, din, true);
    gemm(dout, din, n, Mat::t(dy, dout), Mat::rows(x, din), dw, din, true);
}
