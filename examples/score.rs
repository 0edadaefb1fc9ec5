//! Scores a model directory on a token shard through the inference path: mean negative
//! log-likelihood per token and greedy agreement with the f32 reference, for f32, f16 and q8 KV caches
//! and f32 and q8 weights (the accuracy figures in docs/inference.md).
//!
//!   cargo run --release --example score -- runs/quickstart/model/step-001200 runs/quickstart/data/val_000.bin

use shoucuo::generate::sampling::argmax;
use shoucuo::model::infer::{InferModel, KvCache, KvType, Logits, Quant, Scratch};
use std::path::Path;

/// Windows of the model's context length scored (each predicts its own next tokens).
const WINDOWS: usize = 300;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() == 2, "usage: score MODEL_DIR SHARD.bin (u16 tokens)");
    let bytes = std::fs::read(&args[1])?;
    let toks: Vec<u32> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect();
    let mut reference: Option<Vec<u32>> = None;
    let runs =
        [(Quant::F32, KvType::F32), (Quant::F32, KvType::F16), (Quant::F32, KvType::Q8), (Quant::Q8, KvType::F32)];
    for (quant, kv) in runs {
        let m = InferModel::from_dir(Path::new(&args[0]), quant)?;
        let (t, v) = (m.cfg.max_seq_len, m.cfg.vocab_size);
        let mut s = Scratch::new(&m, t);
        let (mut nll, mut picks) = (0f64, vec![]);
        for w in toks.chunks_exact(t + 1).take(WINDOWS) {
            let mut cache = KvCache::new(&m.cfg, t, kv);
            let rows: Vec<(usize, u32)> = w[..t].iter().map(|&x| (0, x)).collect();
            let logits = m.step(&mut s, std::slice::from_mut(&mut cache), &rows, Logits::All)?;
            for (i, l) in logits.chunks_exact(v).enumerate() {
                let max = l.iter().copied().fold(f32::MIN, f32::max) as f64;
                let z: f64 = l.iter().map(|&x| (x as f64 - max).exp()).sum();
                nll += z.ln() + max - l[w[i + 1] as usize] as f64;
                picks.push(argmax(l));
            }
        }
        let same = reference.as_ref().map(|r| r.iter().zip(&picks).filter(|(a, b)| a == b).count());
        let agree = same.map_or("reference".into(), |n| format!("{:.2}%", 100.0 * n as f64 / picks.len() as f64));
        println!(
            "{quant:?} weights, {kv:?} KV: NLL {:.5} over {} tokens, greedy agreement {agree}",
            nll / picks.len() as f64,
            picks.len()
        );
        reference.get_or_insert(picks);
    }
    Ok(())
}
