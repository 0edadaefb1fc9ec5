//! `shoucuo bench decode`: prefill and decode speed of the inference path on random weights of a
//! preset's shape (no files needed).

use crate::generate::sampling::argmax;
use crate::model::config::ModelConfig;
use crate::model::infer::{InferModel, KvCache, KvType, Quant, Scratch};
use crate::model::params::{ParamLayout, init_params};
use anyhow::Context;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Model shape: tiny, microstories or small-zh.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Weight format: f32 or q8 (int8, one scale per 32 weights).
    #[arg(long, default_value = "f32")]
    pub quant: Quant,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub prompt: usize,
    /// New tokens per sequence.
    #[arg(long = "gen", default_value_t = 256)]
    pub new_tokens: usize,
    /// KV cache storage: f16, q8 or f32.
    #[arg(long, default_value = "f16")]
    pub kv_cache: KvType,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (mut cfg, _, _) = ModelConfig::preset(&a.preset)
        .with_context(|| format!("unknown preset `{}`; use one of {}", a.preset, ModelConfig::PRESETS.join(", ")))?;
    anyhow::ensure!(a.batch >= 1 && a.prompt >= 1, "--batch and --prompt must be at least 1");
    cfg.max_seq_len = cfg.max_seq_len.max(a.prompt + a.new_tokens);
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global().context("setting --threads")?;
    }
    let params = init_params(&cfg, &ParamLayout::new(&cfg), 1);
    let model = InferModel::new(&cfg, &params, a.quant)?;
    drop(params);
    let b = a.batch;
    let mut s = Scratch::new(&model, a.prompt.min(64).max(b));
    let mut caches: Vec<KvCache> = (0..b).map(|_| KvCache::new(&cfg, a.prompt + a.new_tokens, a.kv_cache)).collect();
    let prompt: Vec<u32> = (0..a.prompt).map(|i| (i * 7919 % cfg.vocab_size) as u32).collect();
    eprintln!(
        "bench decode: preset {} ({} params), {:?}, KV cache {:?}, batch {b}, prompt {}, gen {}, {} threads",
        a.preset,
        cfg.num_params(),
        a.quant,
        a.kv_cache,
        a.prompt,
        a.new_tokens,
        rayon::current_num_threads()
    );

    let t0 = Instant::now();
    let mut rows: Vec<(usize, u32)> = Vec::with_capacity(b);
    for (i, cache) in caches.iter_mut().enumerate() {
        let logits = model.prefill(&mut s, cache, &prompt)?;
        rows.push((i, argmax(logits)));
    }
    let prefill_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    for _ in 0..a.new_tokens {
        let logits = model.decode(&mut s, &mut caches, &rows)?;
        for (r, l) in rows.iter_mut().zip(logits.chunks_exact(cfg.vocab_size)) {
            r.1 = argmax(l);
        }
    }
    let decode_s = t1.elapsed().as_secs_f64();

    let prefill_tps = (b * a.prompt) as f64 / prefill_s;
    let decode_tps = a.new_tokens as f64 / decode_s;
    let aggregate = decode_tps * b as f64;
    let gb_per_s = model.weight_bytes() as f64 * a.new_tokens as f64 / decode_s / 1e9;
    eprintln!("prefill: {prefill_tps:.0} tokens/s ({:.3} s)", prefill_s);
    eprintln!("decode:  {decode_tps:.1} tokens/s per sequence, {aggregate:.1} tokens/s for the batch");
    eprintln!("weights: {:.1} MB, read at {gb_per_s:.1} GB/s", model.weight_bytes() as f64 / 1e6);
    let json = serde_json::json!({
        "bench": "decode",
        "preset": a.preset,
        "quant": format!("{:?}", a.quant).to_lowercase(),
        "kv_cache": format!("{:?}", a.kv_cache).to_lowercase(),
        "batch": b,
        "prompt": a.prompt,
        "gen": a.new_tokens,
        "threads": rayon::current_num_threads(),
        "prefill_tokens_per_s": prefill_tps,
        "decode_tokens_per_s": decode_tps,
        "aggregate_tokens_per_s": aggregate,
        "decode_gb_per_s": gb_per_s,
        "weight_mb": model.weight_bytes() as f64 / 1e6,
        "peak_rss_mib": crate::bench::peak_rss_mib(),
    });
    println!("{json}");
    Ok(())
}
