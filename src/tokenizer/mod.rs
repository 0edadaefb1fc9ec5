//! Byte-level BPE tokenizer (HF `tokenizers`): training, loading, chat template.
//!
//! A tokenizer directory holds `tokenizer.json` and `tokenizer_config.json`, the pair that
//! `transformers.AutoTokenizer.from_pretrained(dir)` loads; it encodes exactly as [`Tok::encode`].

mod chat;
mod train;

use std::path::Path;

pub use chat::{CHATML_TEMPLATE, render_chatml};
pub use train::{EOS, IM_END, IM_START, PAD, SPECIAL_TOKENS, TrainOptions, TrainSummary, train};

/// A loaded tokenizer directory (`tokenizer.json`, `tokenizer_config.json`).
pub struct Tok {
    pub inner: tokenizers::Tokenizer,
    eos_id: Option<u32>,
    chat_template: Option<String>,
}

impl Tok {
    /// Loads `DIR/tokenizer.json` and, when present, the chat template and end-of-text token from
    /// `DIR/tokenizer_config.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer ({e})", path.display()))?;
        let config_path = dir.join("tokenizer_config.json");
        let config = match std::fs::read_to_string(&config_path) {
            Ok(s) => serde_json::from_str(&s)
                .map_err(|e| anyhow::anyhow!("{}: invalid JSON ({e})", config_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", config_path.display())),
        };
        let chat_template = config.get("chat_template").and_then(|t| t.as_str()).map(str::to_string);
        let eos_name = match config.get("eos_token") {
            Some(serde_json::Value::String(s)) => Some(s.as_str()),
            Some(v) => v.get("content").and_then(|c| c.as_str()),
            None => None,
        };
        let eos_id = eos_name.and_then(|n| inner.token_to_id(n)).or_else(|| inner.token_to_id(EOS));
        Ok(Tok { inner, eos_id, chat_template })
    }

    /// Token ids of `text`; special-token strings in the text (e.g. `<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.inner.encode_fast(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }

    /// Text of `ids`, special tokens included; byte sequences that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The end-of-text token (`eos_token` of tokenizer_config.json, else `<|endoftext|>`), which
    /// ends every training document; `None` for a tokenizer that has neither.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The jinja chat template stored in `tokenizer_config.json`, if any.
    pub fn chat_template(&self) -> Option<String> {
        self.chat_template.clone()
    }
}

/// Size of a text measured in bytes, characters and tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TextStats {
    pub docs: u64,
    pub bytes: u64,
    pub chars: u64,
    pub tokens: u64,
}

impl TextStats {
    pub fn add(&mut self, tok: &Tok, text: &str) {
        self.docs += 1;
        self.bytes += text.len() as u64;
        self.chars += text.chars().count() as u64;
        self.tokens += tok.encode(text).len() as u64;
    }

    pub fn bytes_per_token(&self) -> f64 {
        self.bytes as f64 / self.tokens.max(1) as f64
    }

    pub fn chars_per_token(&self) -> f64 {
        self.chars as f64 / self.tokens.max(1) as f64
    }
}
