//! Byte-level BPE tokenizer (HF `tokenizers`): training, loading, chat template.

use std::path::Path;

/// A loaded tokenizer directory (`tokenizer.json`, `tokenizer_config.json`).
pub struct Tok {
    pub inner: tokenizers::Tokenizer,
}

impl Tok {
    /// Loads `DIR/tokenizer.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer ({e})", path.display()))?;
        Ok(Tok { inner })
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.inner.encode_fast(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
