//! `shoucuo model check`: parameter count and which tools will load a model shape.

use crate::export::portability;
use crate::model::ModelConfig;
use crate::train::recipe::Recipe;
use anyhow::Context;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the parameter count and, per tool (transformers, llama.cpp, llama2.c), whether it
    /// loads the model and, if not, why and the nearest shapes that would.
    ///
    /// Example: shoucuo model check --config recipes/poetry-tiny.toml
    Check {
        /// A recipe (.toml), a HF config.json, or a model directory.
        #[arg(long)]
        config: PathBuf,
    },
}

pub fn run(c: Command) -> anyhow::Result<()> {
    let Command::Check { config } = c;
    let cfg = load_config(&config)?;
    let params = cfg.num_params();
    if cfg.vocab_size == 0 {
        println!(
            "parameters: {params} ({:.2}M) without embeddings (vocab_size comes from the data)",
            params as f64 / 1e6
        );
    } else {
        println!("parameters: {params} ({:.2}M)", params as f64 / 1e6);
    }
    println!(
        "shape: dim {}, n_layers {}, n_heads {}, n_kv_heads {}, head_dim {}, ffn_hidden {}, tied {}",
        cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_hidden, cfg.tie_embeddings
    );
    for r in portability(&cfg) {
        print!("{r}");
    }
    Ok(())
}

/// Reads a model shape from a recipe, a config.json or a model directory.
pub fn load_config(path: &Path) -> anyhow::Result<ModelConfig> {
    if path.is_dir() {
        return Ok(ModelConfig::load_hf(&path.join("config.json"))?);
    }
    if path.extension().is_some_and(|e| e == "toml") {
        let r = Recipe::load(path, &[]).with_context(|| format!("reading recipe {}", path.display()))?;
        return Ok(r.model);
    }
    Ok(ModelConfig::load_hf(path)?)
}
