//! The engine against PyTorch golden fixtures (tools/make_fixtures.py): logits, loss, every
//! gradient after one backward, and every parameter after three AdamW steps with warm-up +
//! cosine lr and gradient clipping.

use safetensors::SafeTensors;
use shoucuo::model::weights::load_safetensors;
use shoucuo::model::{IGNORE_INDEX, ModelConfig, ParamLayout, TrainModel};
use shoucuo::train::optim::{AdamW, AdamWConfig, clip_grad_norm};
use shoucuo::train::schedule::lr_at;
use std::path::PathBuf;

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture lacks {name}"));
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn ids(st: &SafeTensors, name: &str) -> Vec<u32> {
    let t = st.tensor(name).unwrap();
    t.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .map(|v| if v < 0 { IGNORE_INDEX } else { v as u32 })
        .collect()
}

/// max |a - b| / (atol + |b|) over the elements.
fn rel_err(a: &[f32], b: &[f32], atol: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / (atol + y.abs())).fold(0.0, f32::max)
}

fn check(name: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/engine_{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let c: serde_json::Value = serde_json::from_str(&meta["config"]).unwrap();
    let t: serde_json::Value = serde_json::from_str(&meta["train"]).unwrap();
    let (batch, seq): (usize, usize) = (meta["batch"].parse().unwrap(), meta["seq"].parse().unwrap());
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    let cfg = ModelConfig {
        vocab_size: u("vocab_size"),
        dim: u("dim"),
        n_layers: u("n_layers"),
        n_heads: u("n_heads"),
        n_kv_heads: u("n_kv_heads"),
        head_dim: u("head_dim"),
        ffn_hidden: u("ffn_hidden"),
        max_seq_len: seq,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tie_embeddings: c["tie_embeddings"].as_bool().unwrap(),
    };
    let layout = ParamLayout::new(&cfg);
    let params = load_safetensors(&[path.as_path()], &layout).unwrap();
    let (tokens, targets) = (ids(&st, "tokens"), ids(&st, "targets"));
    assert!(targets.contains(&IGNORE_INDEX), "the fixture has masked targets");

    let mut m = TrainModel::new(cfg, params, batch, seq);
    let e = rel_err(&m.logits(&tokens), &f32s(&st, "logits"), 1e-3);
    assert!(e < 5e-4, "{name}: logits differ from PyTorch by {e}");
    let loss = m.forward(&tokens, &targets);
    let want_loss = f32s(&st, "loss")[0];
    assert!((loss - want_loss).abs() < 1e-5 * want_loss, "{name}: loss {loss} vs PyTorch {want_loss}");
    m.zero_grad();
    m.backward(1.0);
    for tensor in &layout.tensors {
        let e = rel_err(&m.grads[tensor.range()], &f32s(&st, &format!("grad.{}", tensor.name)), 1e-3);
        assert!(e < 1e-3, "{name}: gradient of {} differs from PyTorch by {e}", tensor.name);
    }

    let g = |k: &str| t[k].as_f64().unwrap() as f32;
    let mut opt = AdamW::new(
        &layout,
        AdamWConfig { beta1: g("beta1"), beta2: g("beta2"), eps: g("eps"), weight_decay: g("weight_decay") },
    );
    let (warmup, max_steps) = (t["warmup_steps"].as_u64().unwrap() as usize, t["max_steps"].as_u64().unwrap() as usize);
    for step in 0..3 {
        m.zero_grad();
        m.forward(&tokens, &targets);
        m.backward(1.0);
        clip_grad_norm(&mut m.grads, g("grad_clip"));
        opt.step(&mut m.params, &m.grads, lr_at(step, warmup, max_steps, g("lr"), g("min_lr")));
    }
    for tensor in &layout.tensors {
        let e = rel_err(&m.params[tensor.range()], &f32s(&st, &format!("step3.{}", tensor.name)), 1e-3);
        // AdamW divides each update by the gradient's own scale, so last-ulp differences in near-zero
        // gradients (here mlp.gate_proj of the tied GQA model, whose error after 3 steps was already
        // 9.6e-5 with libm's exp) reach the parameters at ~lr × 1e-4; a wrong update errs by ~lr.
        // Gradients themselves are checked at 1e-3 above.
        assert!(e < 5e-4, "{name}: {} after 3 AdamW steps differs from PyTorch by {e}", tensor.name);
    }
}

#[test]
fn gqa_free_head_dim_tied_matches_pytorch() {
    check("gqa_tied");
}

#[test]
fn mha_untied_matches_pytorch() {
    check("mha_untied");
}
