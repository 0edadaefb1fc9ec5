//! Model shape: the LLaMA hyper-parameters, read from and written to a HF `config.json`.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: invalid config.json ({error}); it must be a HF Llama config")]
    Json { path: String, error: serde_json::Error },
    #[error("invalid model config: {0}")]
    Invalid(String),
}

/// The shape of a LLaMA model. `head_dim` is free: `n_heads * head_dim` need not equal `dim`.
/// In a recipe, `vocab_size` and `max_seq_len` may be left out (0): the data and the training
/// sequence length then decide them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default)]
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_hidden: usize,
    #[serde(default)]
    pub max_seq_len: usize,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f32,
    #[serde(default = "default_true")]
    pub tie_embeddings: bool,
}

fn default_max_seq_len() -> usize {
    512
}
fn default_rope_theta() -> f32 {
    10000.0
}
fn default_norm_eps() -> f32 {
    1e-5
}
fn default_true() -> bool {
    true
}

/// The subset of a HF `LlamaConfig` that shapes the model, plus the keys we write for transformers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfLlamaConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default = "llama")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_max_seq_len")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_norm_eps_f64")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta_f64")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "float32")]
    pub torch_dtype: String,
}

impl HfLlamaConfig {
    /// Reads a HF `config.json`, and the model shape it describes.
    pub fn load(path: &Path) -> Result<(Self, ModelConfig), ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io { path: p.clone(), error })?;
        let hf: HfLlamaConfig =
            serde_json::from_str(&text).map_err(|error| ConfigError::Json { path: p.clone(), error })?;
        let cfg = ModelConfig::from_hf(&hf).map_err(|e| ConfigError::Invalid(format!("{p}: {e}")))?;
        Ok((hf, cfg))
    }

    /// `bos_token_id` and `eos_token_id` (the first id where a list is given).
    pub fn special_ids(&self) -> (Option<u32>, Option<u32>) {
        let eos = match &self.eos_token_id {
            Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()),
            Some(x) => x.as_u64(),
            None => None,
        };
        (self.bos_token_id, eos.and_then(|x| u32::try_from(x).ok()))
    }
}

fn llama() -> String {
    "llama".into()
}
fn silu() -> String {
    "silu".into()
}
fn float32() -> String {
    "float32".into()
}
fn default_norm_eps_f64() -> f64 {
    1e-5
}
fn default_rope_theta_f64() -> f64 {
    10000.0
}
fn default_init_range() -> f64 {
    0.02
}

impl ModelConfig {
    /// Checks that the shape is one the engine can build.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("dim", self.dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("ffn_hidden", self.ffn_hidden),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v == 0 {
                return bad(format!("{name} must be > 0"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "n_heads ({}) must be a multiple of n_kv_heads ({}) for grouped-query attention",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim ({}) must be even for RoPE", self.head_dim));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 || self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return bad("norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }

    /// Width of the concatenated query heads, `n_heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads, `n_kv_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        crate::model::params::ParamLayout::new(self).total()
    }

    pub fn to_hf(&self, bos: Option<u32>, eos: Option<u32>) -> HfLlamaConfig {
        HfLlamaConfig {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: llama(),
            vocab_size: self.vocab_size,
            hidden_size: self.dim,
            intermediate_size: self.ffn_hidden,
            num_hidden_layers: self.n_layers,
            num_attention_heads: self.n_heads,
            num_key_value_heads: Some(self.n_kv_heads),
            head_dim: Some(self.head_dim),
            max_position_embeddings: self.max_seq_len,
            rms_norm_eps: self.norm_eps as f64,
            rope_theta: self.rope_theta as f64,
            tie_word_embeddings: self.tie_embeddings,
            hidden_act: silu(),
            attention_bias: false,
            mlp_bias: false,
            rope_scaling: None,
            bos_token_id: bos,
            eos_token_id: eos.map(|e| e.into()),
            pad_token_id: None,
            initializer_range: 0.02,
            torch_dtype: float32(),
        }
    }

    pub fn from_hf(hf: &HfLlamaConfig) -> Result<Self, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if hf.model_type != "llama" && hf.model_type != "mistral" {
            return bad(format!(
                "model_type \"{}\" is not supported; only Llama-architecture models are",
                hf.model_type
            ));
        }
        if hf.hidden_act != "silu" {
            return bad(format!("hidden_act \"{}\" is not supported (only silu)", hf.hidden_act));
        }
        if hf.attention_bias || hf.mlp_bias {
            return bad("attention or MLP biases are not supported".into());
        }
        if let Some(rs) = hf.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return bad(format!("rope_scaling {rs} is not supported"));
        }
        if hf.head_dim.is_none() && !hf.hidden_size.is_multiple_of(hf.num_attention_heads.max(1)) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {} and head_dim is missing",
                hf.hidden_size, hf.num_attention_heads
            ));
        }
        let cfg = ModelConfig {
            vocab_size: hf.vocab_size,
            dim: hf.hidden_size,
            n_layers: hf.num_hidden_layers,
            n_heads: hf.num_attention_heads,
            n_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            ffn_hidden: hf.intermediate_size,
            max_seq_len: hf.max_position_embeddings,
            rope_theta: hf.rope_theta as f32,
            norm_eps: hf.rms_norm_eps as f32,
            tie_embeddings: hf.tie_word_embeddings,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a HF `config.json`.
    pub fn load_hf(path: &Path) -> Result<Self, ConfigError> {
        Ok(HfLlamaConfig::load(path)?.1)
    }

    /// A benchmark preset shared with the peer yardsticks: (config, seq_len, batch).
    pub fn preset(name: &str) -> Option<(Self, usize, usize)> {
        let mk = |vocab_size, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_hidden, seq: usize| ModelConfig {
            vocab_size,
            dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_hidden,
            max_seq_len: seq,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
        };
        match name {
            "tiny" => Some((mk(8192, 256, 6, 8, 4, 32, 688, 256), 256, 16)),
            "microstories" => Some((mk(65024, 512, 6, 6, 6, 48, 768, 512), 512, 8)),
            "small-zh" => Some((mk(6400, 512, 8, 8, 2, 64, 1408, 512), 512, 8)),
            _ => None,
        }
    }

    pub const PRESETS: [&'static str; 3] = ["tiny", "microstories", "small-zh"];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_round_trip_keeps_free_head_dim() {
        let (cfg, _, _) = ModelConfig::preset("microstories").unwrap();
        let json = serde_json::to_string(&cfg.to_hf(Some(1), Some(2))).unwrap();
        let hf: HfLlamaConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(hf.head_dim, Some(48));
        assert_eq!(ModelConfig::from_hf(&hf).unwrap(), cfg);
        assert_eq!(hf.special_ids(), (Some(1), Some(2)));
        // Llama 3 style: several end-of-sequence ids; the first one is kept
        let mut v = serde_json::to_value(cfg.to_hf(None, None)).unwrap();
        v["eos_token_id"] = serde_json::json!([128001, 128009]);
        let hf: HfLlamaConfig = serde_json::from_value(v).unwrap();
        assert_eq!(hf.special_ids(), (None, Some(128001)));
    }

    #[test]
    fn rejects_heads_not_multiple_of_kv_heads() {
        let (mut cfg, _, _) = ModelConfig::preset("tiny").unwrap();
        cfg.n_kv_heads = 3;
        assert!(cfg.validate().unwrap_err().to_string().contains("multiple of n_kv_heads"));
    }

    #[test]
    fn rejects_rope_scaling() {
        let (cfg, _, _) = ModelConfig::preset("tiny").unwrap();
        let mut hf = cfg.to_hf(None, None);
        hf.rope_scaling = Some(serde_json::json!({"type": "linear", "factor": 2.0}));
        assert!(ModelConfig::from_hf(&hf).unwrap_err().to_string().contains("rope_scaling"));
    }
}
