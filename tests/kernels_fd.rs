//! Finite-difference checks of each training op's backward pass on its own: for a random upstream
//! gradient g, the backward of L = Σ forward(inputs) ⊙ g must match central differences of L in
//! every input element. (The whole model and the attention kernel have their own checks.)

use rand::{Rng, SeedableRng};
use shoucuo::model::IGNORE_INDEX;
use shoucuo::model::kernels::crossentropy::{crossentropy_backward, crossentropy_forward};
use shoucuo::model::kernels::embedding::{embedding_backward, embedding_forward};
use shoucuo::model::kernels::linear::{linear_backward, linear_forward};
use shoucuo::model::kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use shoucuo::model::kernels::rope::{rope_backward, rope_forward, rope_tables};
use shoucuo::model::kernels::swiglu::{swiglu_backward, swiglu_forward};

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Asserts that `grad` is the gradient of `loss` at `x`, element by element (central differences).
fn check(name: &str, x: &[f32], grad: &[f32], loss: impl Fn(&[f32]) -> f64) {
    assert_eq!(x.len(), grad.len());
    let eps = 1e-2f32;
    for i in 0..x.len() {
        let mut p = x.to_vec();
        p[i] = x[i] + eps;
        let up = loss(&p);
        p[i] = x[i] - eps;
        let down = loss(&p);
        let fd = (up - down) / (2.0 * eps as f64);
        let err = (grad[i] as f64 - fd).abs() / fd.abs().max(1.0);
        assert!(err < 2e-3, "{name}[{i}]: backward {} vs finite difference {fd}", grad[i]);
    }
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    // 70 rows: more than one chunk of ROWS_PER_TASK in the weight-gradient reduction
    let (n, c) = (70, 12);
    let (x, w, g) = (random(n * c, 1), random(c, 2), random(n * c, 3));
    let forward = |x: &[f32], w: &[f32]| {
        let (mut out, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
        rmsnorm_forward(&mut out, &mut rstd, x, w, c, 1e-5);
        (out, rstd)
    };
    let (_, rstd) = forward(&x, &w);
    let (mut dx, mut dw, mut partials) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; n * c]);
    rmsnorm_backward(&mut dx, &mut dw, &mut partials, &g, &x, &w, &rstd, c);
    check("rmsnorm dx", &x, &dx, |x| dot(&forward(x, &w).0, &g));
    check("rmsnorm dw", &w, &dw, |w| dot(&forward(&x, w).0, &g));
}

#[test]
fn rope_backward_matches_finite_differences() {
    let (t, heads, hd) = (6, 2, 8);
    let (cos, sin) = rope_tables(t, hd, 10000.0);
    let (x, g) = (random(t * heads * hd, 4), random(t * heads * hd, 5));
    let mut dx = g.clone();
    rope_backward(&mut dx, &cos, &sin, t, heads, hd);
    check("rope dx", &x, &dx, |x| {
        let mut y = x.to_vec();
        rope_forward(&mut y, &cos, &sin, t, heads, hd);
        dot(&y, &g)
    });
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let len = 40;
    let (gate, up, g) = (random(len, 6).iter().map(|x| x * 4.0).collect::<Vec<_>>(), random(len, 7), random(len, 8));
    let forward = |gate: &[f32], up: &[f32]| {
        let mut out = vec![0.0; len];
        swiglu_forward(&mut out, gate, up);
        dot(&out, &g)
    };
    let (mut dgate, mut dup) = (vec![0.0; len], g.clone());
    swiglu_backward(&mut dgate, &mut dup, &gate, &up);
    check("swiglu dgate", &gate, &dgate, |gate| forward(gate, &up));
    check("swiglu dup", &up, &dup, |up| forward(&gate, up));
}

#[test]
fn crossentropy_backward_matches_finite_differences() {
    // 40 classes: the 16-lane log-sum-exp loop and its tail
    let (n, v) = (4, 40);
    let logits: Vec<f32> = random(n * v, 9).iter().map(|x| x * 3.0).collect();
    let targets = [3, IGNORE_INDEX, 0, 9];
    let loss = |logits: &[f32]| {
        let (mut losses, mut lse) = (vec![0.0; n], vec![0.0; n]);
        crossentropy_forward(&mut losses, &mut lse, logits, &targets, v);
        losses.iter().map(|&l| l as f64).sum::<f64>()
    };
    let (mut losses, mut lse) = (vec![0.0; n], vec![0.0; n]);
    crossentropy_forward(&mut losses, &mut lse, &logits, &targets, v);
    let mut dlogits = logits.clone();
    crossentropy_backward(&mut dlogits, &lse, &targets, v);
    assert!(dlogits[v..2 * v].iter().all(|&d| d == 0.0), "an ignored target gets no gradient");
    check("crossentropy dlogits", &logits, &dlogits, loss);
}

#[test]
fn embedding_backward_matches_finite_differences() {
    let (vocab, c) = (7, 5);
    let tokens = [3, 0, 3, 6, 1, 3];
    let (table, g) = (random(vocab * c, 10), random(tokens.len() * c, 11));
    let mut dtable = vec![0.0; vocab * c];
    embedding_backward(&mut dtable, &g, &tokens, c);
    check("embedding dtable", &table, &dtable, |table| {
        let mut out = vec![0.0; tokens.len() * c];
        embedding_forward(&mut out, &tokens, table, c);
        dot(&out, &g)
    });
}

#[test]
fn linear_backward_matches_finite_differences() {
    let (n, din, dout) = (3, 5, 4);
    let (x, w, g) = (random(n * din, 12), random(dout * din, 13), random(n * dout, 14));
    let forward = |x: &[f32], w: &[f32]| {
        let mut y = vec![0.0; n * dout];
        linear_forward(&mut y, x, w, n, din, dout, false);
        dot(&y, &g)
    };
    let (mut dx, mut dw) = (vec![0.0; n * din], vec![0.0; dout * din]);
    linear_backward(&mut dx, &mut dw, &g, &x, &w, n, din, dout);
    check("linear dx", &x, &dx, |x| forward(x, &w));
    check("linear dw", &w, &dw, |w| forward(&x, w));
}
