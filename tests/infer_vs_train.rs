//! The KV-cache inference path reproduces, position by position, the logits of the training
//! engine's forward pass (GQA, heads × head_dim ≠ dim, tied and untied heads).

use shoucuo::model::infer::{InferModel, KvCache, KvType, Quant, Scratch};
use shoucuo::model::params::init_params;
use shoucuo::model::{ModelConfig, ParamLayout, TrainModel};

fn check(tie: bool) {
    let cfg = ModelConfig {
        vocab_size: 50,
        dim: 32,
        n_layers: 2,
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 8,
        ffn_hidden: 72,
        max_seq_len: 16,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tie_embeddings: tie,
    };
    let params: Vec<f32> = init_params(&cfg, &ParamLayout::new(&cfg), 4).iter().map(|p| p * 5.0).collect();
    let tokens: Vec<u32> = (0..16).map(|i| (i * 17 + 3) % 50).collect();
    let mut train = TrainModel::new(cfg.clone(), params.clone(), 1, 16);
    let want = train.logits(&tokens);

    let model = InferModel::new(&cfg, &params, Quant::F32).unwrap();
    let mut s = Scratch::new(&model, 1);
    let mut cache = KvCache::new(&cfg, 16, KvType::F32);
    let v = cfg.vocab_size;
    for (pos, &t) in tokens.iter().enumerate() {
        let got = model.decode(&mut s, std::slice::from_mut(&mut cache), &[(0, t)]).unwrap();
        let row = &want[pos * v..(pos + 1) * v];
        // error relative to the row's largest logit
        let scale = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let err = got.iter().zip(row).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale;
        assert!(err < 1e-5, "position {pos}: KV-cache logits differ from the training forward by {err}");
    }
}

#[test]
fn kv_cache_decode_matches_training_forward_tied() {
    check(true);
}

#[test]
fn kv_cache_decode_matches_training_forward_untied() {
    check(false);
}
