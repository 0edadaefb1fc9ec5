//! Rotary position embedding, HF "rotate-half" convention: within each head, element i pairs with
//! i + hd/2 and the pair rotates by angle pos * theta^(-2i/hd).

use rayon::prelude::*;

/// cos, sin: [T, hd/2] tables for positions 0..T.
pub fn rope_tables(t: usize, hd: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    let half = hd / 2;
    let mut cos = vec![0.0; t * half];
    let mut sin = vec![0.0; t * half];
    for pos in 0..t {
        for i in 0..half {
            let inv_freq = 1.0 / (theta as f64).powf(2.0 * i as f64 / hd as f64);
            let a = pos as f64 * inv_freq;
            cos[pos * half + i] = a.cos() as f32;
            sin[pos * half + i] = a.sin() as f32;
        }
    }
    (cos, sin)
}

/// Rotates x: [B*T, heads*hd] in place; row n is at position n % T. `sign` = 1 rotates forward,
/// -1 applies the inverse rotation (which is the backward pass: the rotation is orthogonal).
fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32], t: usize, heads: usize, hd: usize, sign: f32) {
    let half = hd / 2;
    x.par_chunks_mut(heads * hd).enumerate().for_each(|(n, row)| {
        let pos = n % t;
        let (c, s) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
        for head in row.chunks_exact_mut(hd) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2, si) = (a[i], b[i], sign * s[i]);
                a[i] = x1 * c[i] - x2 * si;
                b[i] = x2 * c[i] + x1 * si;
            }
        }
    });
}

/// x: [B*T, heads*hd], rotated in place.
pub fn rope_forward(x: &mut [f32], cos: &[f32], sin: &[f32], t: usize, heads: usize, hd: usize) {
    rotate(x, cos, sin, t, heads, hd, 1.0);
}

/// dx: [B*T, heads*hd], the gradient w.r.t. the rotated x, turned in place into the gradient
/// w.r.t. the unrotated x.
pub fn rope_backward(dx: &mut [f32], cos: &[f32], sin: &[f32], t: usize, heads: usize, hd: usize) {
    rotate(dx, cos, sin, t, heads, hd, -1.0);
}
