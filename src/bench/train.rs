//! `shoucuo bench train`: one full training step (forward, backward, grad clip, AdamW) on random
//! tokens for a preset's shape, timed step by step like the PyTorch yardstick
//! (`peers/bench_train.py`): median ms/step after warm-up.

use crate::bench::peak_rss_mib;
use crate::model::kernels::gemm::{Mat, gemm};
use crate::model::params::{ParamLayout, init_params};
use crate::model::{ModelConfig, TrainModel};
use crate::train::optim::{AdamW, AdamWConfig, clip_grad_norm};
use anyhow::Context;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Model shape and batch: tiny, microstories or small-zh (the peers' configs.toml).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (cfg, seq, batch) = ModelConfig::preset(&a.preset)
        .with_context(|| format!("unknown preset `{}`; use one of {}", a.preset, ModelConfig::PRESETS.join(", ")))?;
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global().context("setting --threads")?;
    }
    let layout = ParamLayout::new(&cfg);
    let params = cfg.num_params();
    eprintln!(
        "bench train: preset {} ({params} params), batch {batch} x seq {seq}, {} threads",
        a.preset,
        rayon::current_num_threads()
    );
    let mut model = TrainModel::new(cfg.clone(), init_params(&cfg, &layout, 1), batch, seq);
    let mut opt = AdamW::new(&layout, AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 });
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let n = batch * seq;
    let mut times = Vec::with_capacity(a.steps);
    let mut loss = 0.0;
    for i in 0..a.warmup + a.steps {
        let window: Vec<u32> = (0..n + 1).map(|_| rng.random_range(0..cfg.vocab_size as u32)).collect();
        let t0 = Instant::now();
        model.zero_grad();
        loss = model.forward(&window[..n], &window[1..]);
        model.backward(1.0);
        clip_grad_norm(&mut model.grads, 1.0);
        opt.step(&mut model.params, &model.grads, 5e-4);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if i >= a.warmup {
            times.push(ms);
        }
        eprintln!("step {i}: {ms:.0} ms, loss {loss:.4}");
    }
    let peak_rss = peak_rss_mib(); // before the GEMM timing below allocates its own buffers
    times.sort_by(f64::total_cmp);
    let ms = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let tokens_per_s = n as f64 / (ms / 1e3);
    let flops_per_token = model_flops_per_token(&cfg, seq);
    let model_gflops = flops_per_token * tokens_per_s / 1e9;
    let gemm_gflops = gemm_gflops_on_model_shapes(&cfg, n);
    eprintln!(
        "{tokens_per_s:.0} tokens/s, {ms:.0} ms/step, {model_gflops:.0} model GFLOP/s, GEMM {gemm_gflops:.0} GFLOP/s on the model's shapes"
    );
    let out = serde_json::json!({
        "bench": "train",
        "preset": a.preset,
        "params": params,
        "batch": batch,
        "seq_len": seq,
        "threads": rayon::current_num_threads(),
        "tokens_per_s": tokens_per_s,
        "ms_per_step": ms,
        "ms_per_step_min": times.first(),
        "ms_per_step_max": times.last(),
        "loss": loss,
        "model_gflops_per_s": model_gflops,
        "gemm_gflops": gemm_gflops,
        "mfu_vs_gemm": model_gflops / gemm_gflops,
        "peak_rss_mib": peak_rss,
    });
    println!("{out}");
    Ok(())
}

/// Training FLOPs per token: 6 per weight of every matmul (forward 2, backward 4) plus attention's
/// two T×T products per head, times 3 for the backward. Attention is counted in full, the usual
/// convention, although the causal kernel skips most of the masked half.
pub fn model_flops_per_token(c: &ModelConfig, seq: usize) -> f64 {
    let per_layer = c.dim * (c.q_dim() + 2 * c.kv_dim()) + c.q_dim() * c.dim + 3 * c.dim * c.ffn_hidden;
    let matmul = (c.n_layers * per_layer + c.vocab_size * c.dim) as f64;
    let attention = (c.n_layers * c.n_heads * 2 * 2 * seq * c.head_dim) as f64;
    6.0 * matmul + 3.0 * attention
}

/// GFLOP/s of our GEMM over the forward and backward products of the model's largest layers
/// (the MLP and the output head), each timed a few times.
fn gemm_gflops_on_model_shapes(c: &ModelConfig, n: usize) -> f64 {
    let (d, f, v) = (c.dim, c.ffn_hidden, c.vocab_size);
    // (m, n, k, a transposed, b transposed): x·Wᵀ, dy·W, dyᵀ·x
    let shapes = [(n, f, d, false, true), (n, d, f, false, false), (f, d, n, true, false), (n, v, d, false, true)];
    let (mut flops, mut secs) = (0.0, 0.0);
    for (m, nn, k, ta, tb) in shapes {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * nn];
        let mut out = vec![0.0f32; m * nn];
        let am = if ta { Mat::t(&a, m) } else { Mat::rows(&a, k) };
        let bm = if tb { Mat::t(&b, k) } else { Mat::rows(&b, nn) };
        gemm(m, nn, k, am, bm, &mut out, nn, false);
        let t0 = Instant::now();
        for _ in 0..3 {
            gemm(m, nn, k, am, bm, &mut out, nn, false);
        }
        secs += t0.elapsed().as_secs_f64();
        flops += 3.0 * 2.0 * (m * nn * k) as f64;
    }
    flops / secs / 1e9
}
