//! Corpus statistics over prepared shards.

use crate::data::{DataError, Manifest};
use std::path::Path;

/// Entropy of the split's unigram token distribution, in nats per token: the loss of a model
/// that ignores context, and so the baseline a trained model must beat.
pub fn unigram_entropy(data_dir: &Path, split: &str) -> Result<f64, DataError> {
    let manifest = Manifest::load(data_dir)?;
    let width = manifest.bytes_per_token().unwrap_or(2);
    let mut counts = vec![0u64; manifest.vocab_size.max(1)];
    let shards = manifest.split(split).map(|s| s.shards.clone()).unwrap_or_default();
    for shard in &shards {
        let path = data_dir.join(&shard.file);
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        for t in bytes.chunks_exact(width) {
            let id = if width == 2 {
                u16::from_le_bytes([t[0], t[1]]) as usize
            } else {
                u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize
            };
            let Some(c) = counts.get_mut(id) else {
                let what = format!("token id {id} is outside the vocabulary ({})", manifest.vocab_size);
                return Err(DataError::Shard { path, what });
            };
            *c += 1;
        }
    }
    let total: u64 = counts.iter().sum();
    Ok(counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.ln()
        })
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_equally_likely_tokens_give_ln2() {
        let dir = tempfile::tempdir().unwrap();
        let tokens: Vec<u8> = [3u16, 5, 3, 5, 5, 3].iter().flat_map(|t| t.to_le_bytes()).collect();
        std::fs::write(dir.path().join("train_000.bin"), tokens).unwrap();
        let manifest = serde_json::json!({
            "format_version": 1, "dtype": "uint16", "vocab_size": 8, "eos_id": 0, "tokenizer": "t", "seed": 0,
            "val_fraction": 0.0, "sources": [], "filters": {"docs_read": 0, "bad_lines": 0, "min_chars": 0,
            "too_short": 0, "exact_duplicates": 0, "near_duplicates": 0, "minhash_threshold": null},
            "splits": {"train": {"docs": 1, "tokens": 6, "shards": [{"file": "train_000.bin", "tokens": 6, "sha256": ""}]},
                       "val": {"docs": 0, "tokens": 0, "shards": []}}
        });
        std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
        let h = unigram_entropy(dir.path(), "train").unwrap();
        assert!((h - std::f64::consts::LN_2).abs() < 1e-12, "{h}");
    }
}
