//! Finite-difference checks of the whole model's backward pass at tiny sizes: GQA, a head_dim
//! with heads × head_dim ≠ dim, tied and untied embeddings, masked targets.

use shoucuo::model::params::init_params;
use shoucuo::model::{IGNORE_INDEX, ModelConfig, ParamLayout, TrainModel};

fn cfg(tie: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 13,
        dim: 8,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 6, // 4 * 6 = 24 != 8
        ffn_hidden: 12,
        max_seq_len: 8,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tie_embeddings: tie,
    }
}

fn batch() -> (Vec<u32>, Vec<u32>) {
    let tokens = vec![1, 5, 7, 2, 12, 0, 3, 3, 9, 11, 4, 6];
    let mut targets = vec![5, 7, 2, 12, 0, 3, 3, 9, 11, 4, 6, 8];
    targets[2] = IGNORE_INDEX;
    targets[7] = IGNORE_INDEX;
    (tokens, targets)
}

fn check(tie: bool) {
    let c = cfg(tie);
    let layout = ParamLayout::new(&c);
    // Larger weights than the default init give gradients well above f32 rounding noise.
    let params: Vec<f32> = init_params(&c, &layout, 3).iter().map(|p| p * 10.0).collect();
    let norms_jittered: Vec<f32> = params
        .iter()
        .enumerate()
        .map(|(i, &p)| if (p - 10.0).abs() < 1e-6 { 1.0 + 0.1 * ((i % 7) as f32 - 3.0) } else { p })
        .collect();
    let (tokens, targets) = batch();
    let mut m = TrainModel::new(c.clone(), norms_jittered, 2, 6);
    m.zero_grad();
    m.forward(&tokens, &targets);
    m.backward(1.0);
    let analytic = m.grads.to_vec();

    let eps = 1e-2f32;
    let mut worst = (0.0f32, String::new());
    for t in &layout.tensors {
        let r = t.range();
        let step = (r.len() / 9).max(1);
        for i in r.clone().step_by(step) {
            let orig = m.params[i];
            m.params[i] = orig + eps;
            let up = m.forward(&tokens, &targets) as f64;
            m.params[i] = orig - eps;
            let down = m.forward(&tokens, &targets) as f64;
            m.params[i] = orig;
            let numeric = ((up - down) / (2.0 * eps as f64)) as f32;
            let a = analytic[i];
            let err = (numeric - a).abs() / (1e-2 + a.abs().max(numeric.abs()));
            if err > worst.0 {
                worst = (err, format!("{}[{}]: analytic {a}, numeric {numeric}", t.name, i - r.start));
            }
        }
    }
    assert!(worst.0 < 0.02, "worst relative error {} at {}", worst.0, worst.1);
}

#[test]
fn whole_model_gradients_match_finite_differences_tied() {
    check(true);
}

#[test]
fn whole_model_gradients_match_finite_differences_untied() {
    check(false);
}

#[test]
fn masked_targets_do_not_count() {
    let c = cfg(true);
    let layout = ParamLayout::new(&c);
    let mut m = TrainModel::new(c.clone(), init_params(&c, &layout, 1), 2, 6);
    let (tokens, targets) = batch();
    let masked = m.forward(&tokens, &targets);
    let mut changed = targets.clone();
    changed[2] = 4; // was ignored: now counted
    let counted = m.forward(&tokens, &changed);
    assert_ne!(masked, counted);
    let all_ignored = vec![IGNORE_INDEX; 12];
    assert_eq!(m.forward(&tokens, &all_ignored), 0.0);
    m.zero_grad();
    m.backward(1.0);
    assert!(m.grads.iter().all(|&g| g == 0.0));
}

#[test]
fn overfits_a_fixed_batch() {
    use shoucuo::train::optim::{AdamW, AdamWConfig};
    let c = cfg(true);
    let layout = ParamLayout::new(&c);
    let mut m = TrainModel::new(c.clone(), init_params(&c, &layout, 5), 2, 6);
    let mut opt = AdamW::new(&layout, AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 });
    let (tokens, targets) = batch();
    let first = m.forward(&tokens, &targets);
    let mut last = first;
    for _ in 0..150 {
        m.zero_grad();
        last = m.forward(&tokens, &targets);
        m.backward(1.0);
        opt.step(&mut m.params, &m.grads, 1e-2);
    }
    assert!(first > 2.0, "initial loss {first} should be near ln(13)");
    assert!(last < 0.1, "loss after 150 steps on one batch: {last}");
}

#[test]
#[should_panic(expected = "one backward per forward")]
fn a_second_backward_without_a_forward_is_refused() {
    let c = cfg(true);
    let mut m = TrainModel::new(c.clone(), init_params(&c, &ParamLayout::new(&c), 3), 2, 6);
    let (tokens, targets) = batch();
    m.forward(&tokens, &targets);
    m.backward(1.0);
    m.backward(1.0);
}
