//! Recipes: TOML files with `[model]`, `[data]` and `[train]` tables. Every key can be
//! overridden from the command line with `--set section.key=value`.

use crate::model::ModelConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("--set {arg}: {msg}")]
    Override { arg: String, msg: String },
}

/// Where the prepared shards and the tokenizer live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A directory written by `shoucuo data prepare` (manifest.json + shards).
    pub dir: PathBuf,
    /// A tokenizer directory, copied into every checkpoint (optional for pre-tokenized data).
    pub tokenizer: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Run directory: checkpoints, metrics.jsonl, loss.png.
    pub out_dir: PathBuf,
    pub micro_batch: usize,
    pub seq_len: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    pub lr: f32,
    pub min_lr: f32,
    pub warmup_steps: usize,
    /// Training length in optimizer steps; or give `max_tokens` instead.
    pub max_steps: Option<usize>,
    pub max_tokens: Option<u64>,
    #[serde(default = "weight_decay")]
    pub weight_decay: f32,
    #[serde(default = "beta1")]
    pub beta1: f32,
    #[serde(default = "beta2")]
    pub beta2: f32,
    #[serde(default = "adam_eps")]
    pub eps: f32,
    /// Global gradient-norm clip (0 disables).
    #[serde(default = "one_f")]
    pub grad_clip: f32,
    pub eval_interval: usize,
    pub eval_iters: usize,
    pub save_interval: usize,
    #[serde(default = "keep_last")]
    pub keep_last: usize,
    #[serde(default = "log_interval")]
    pub log_interval: usize,
    #[serde(default)]
    pub seed: u64,
    /// Stop after this many consecutive steps with a non-finite loss or gradient.
    #[serde(default = "max_bad_steps")]
    pub max_bad_steps: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The model shape; `vocab_size` (0 or absent) comes from the data manifest and
    /// `max_seq_len` (0 or absent) from `train.seq_len`.
    pub model: ModelConfig,
    pub data: DataSection,
    pub train: TrainSection,
}

fn one() -> usize {
    1
}
fn one_f() -> f32 {
    1.0
}
fn weight_decay() -> f32 {
    0.1
}
fn beta1() -> f32 {
    0.9
}
fn beta2() -> f32 {
    0.95
}
fn adam_eps() -> f32 {
    1e-8
}
fn keep_last() -> usize {
    3
}
fn log_interval() -> usize {
    10
}
fn max_bad_steps() -> usize {
    5
}

impl Recipe {
    /// Reads a recipe file and applies `section.key=value` overrides (values are TOML literals;
    /// anything that does not parse as one is taken as a string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, RecipeError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| RecipeError::Io { path: p.clone(), error })?;
        Self::parse(&text, &p, overrides)
    }

    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Self, RecipeError> {
        let parse_err = |msg: String| RecipeError::Parse { path: origin.to_string(), msg };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        for arg in overrides {
            apply_override(&mut table, arg)?;
        }
        let recipe: Recipe = table.try_into().map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        recipe.validate().map_err(parse_err)?;
        Ok(recipe)
    }

    fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        for (k, v) in [("micro_batch", t.micro_batch), ("seq_len", t.seq_len), ("grad_accum", t.grad_accum)] {
            if v == 0 {
                return Err(format!("train.{k} must be > 0"));
            }
        }
        if t.max_steps.is_none() == t.max_tokens.is_none() {
            return Err("set exactly one of train.max_steps and train.max_tokens".into());
        }
        if t.min_lr > t.lr {
            return Err(format!("train.min_lr ({}) is above train.lr ({})", t.min_lr, t.lr));
        }
        if self.model.max_seq_len != 0 && self.model.max_seq_len < t.seq_len {
            return Err(format!("model.max_seq_len is smaller than train.seq_len ({})", t.seq_len));
        }
        Ok(())
    }

    /// Tokens consumed by one optimizer step.
    pub fn tokens_per_step(&self) -> u64 {
        (self.train.micro_batch * self.train.seq_len * self.train.grad_accum) as u64
    }

    /// Number of optimizer steps, from `max_steps` or `max_tokens`.
    pub fn max_steps(&self) -> usize {
        self.train.max_steps.unwrap_or_else(|| {
            let tokens = self.train.max_tokens.unwrap_or(0);
            tokens.div_ceil(self.tokens_per_step()) as usize
        })
    }

    /// The model config, with the vocabulary size from the data when the recipe leaves it out.
    pub fn model_config(&self, data_vocab: usize) -> ModelConfig {
        let mut cfg = self.model.clone();
        if cfg.vocab_size == 0 {
            cfg.vocab_size = data_vocab;
        }
        if cfg.max_seq_len == 0 {
            cfg.max_seq_len = self.train.seq_len;
        }
        cfg
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("recipes serialise")
    }
}

fn apply_override(table: &mut toml::Table, arg: &str) -> Result<(), RecipeError> {
    let err = |msg: &str| RecipeError::Override { arg: arg.to_string(), msg: msg.to_string() };
    let (key, value) = arg.split_once('=').ok_or_else(|| err("expected section.key=value"))?;
    let (section, field) = key.trim().split_once('.').ok_or_else(|| err("the key needs a section, e.g. train.lr"))?;
    if !["model", "data", "train"].contains(&section) {
        return Err(err("unknown section; use model, data or train"));
    }
    let value = parse_value(value.trim());
    let sec = table.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let sec = sec.as_table_mut().ok_or_else(|| err("the section is not a table in the recipe"))?;
    sec.insert(field.to_string(), value);
    Ok(())
}

fn parse_value(s: &str) -> toml::Value {
    format!("v = {s}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = r#"
[model]
dim = 64
n_layers = 2
n_heads = 4
n_kv_heads = 2
head_dim = 16
ffn_hidden = 172

[data]
dir = "runs/x/data"

[train]
out_dir = "runs/x"
micro_batch = 4
seq_len = 32
lr = 1e-3
min_lr = 1e-4
warmup_steps = 10
max_steps = 100
eval_interval = 50
eval_iters = 2
save_interval = 50
"#;

    #[test]
    fn overrides_replace_keys_with_typed_values() {
        let r = Recipe::parse(RECIPE, "r.toml", &["train.lr=3e-4".into(), "data.dir=other".into()]).unwrap();
        assert_eq!(r.train.lr, 3e-4);
        assert_eq!(r.data.dir, PathBuf::from("other"));
        assert_eq!(r.model_config(100).vocab_size, 100);
        assert_eq!(r.model_config(100).max_seq_len, 32);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Recipe::parse(RECIPE, "r.toml", &["train.learning_rate=1".into()]).unwrap_err().to_string();
        assert!(err.contains("r.toml") && err.contains("learning_rate"), "{err}");
    }

    #[test]
    fn max_tokens_sets_steps() {
        let r = Recipe::parse(RECIPE.replace("max_steps = 100", "max_tokens = 1000").as_str(), "r", &[]).unwrap();
        assert_eq!(r.max_steps(), 8); // 1000 / (4 * 32) rounded up
    }

    #[test]
    fn resolved_recipe_round_trips() {
        let r = Recipe::parse(RECIPE, "r", &[]).unwrap();
        assert_eq!(Recipe::parse(&r.to_toml(), "r", &[]).unwrap(), r);
    }

    #[test]
    fn shipped_recipes_parse() {
        for f in ["poetry-tiny", "tinystories-zh-microstories", "small-zh"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("recipes/{f}.toml"));
            let r = Recipe::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
            r.model_config(6400).validate().unwrap();
        }
    }
}
