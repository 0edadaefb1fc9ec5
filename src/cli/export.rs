//! `shoucuo export`: a clean HF directory, or a GGUF file for llama.cpp / ollama.

use crate::export::gguf::{DEFAULT_PRE, Dtype, export_gguf};
use crate::export::hf::export_hf;
use anyhow::bail;
use std::path::PathBuf;

/// Export a model directory or checkpoint.
///
/// Examples:
///   shoucuo export --model runs/tiny/step-002000 --format hf --out my-model
///   shoucuo export --model my-model --format gguf --dtype q8_0 --out my-model-q8_0.gguf
#[derive(clap::Args)]
pub struct Args {
    /// Model directory or checkpoint (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum)]
    pub format: Format,
    /// Output directory (hf) or file (gguf); must not exist for hf.
    #[arg(long)]
    pub out: PathBuf,
    /// GGUF weight precision (norms stay f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
    /// llama.cpp pre-tokenizer name written to tokenizer.ggml.pre (see docs/share.md).
    #[arg(long, default_value = DEFAULT_PRE)]
    pub tokenizer_pre: String,
    /// Export for transformers even if it will not load the shape.
    #[arg(long)]
    pub force: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Hf,
    Gguf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.format {
        Format::Hf => {
            if a.dtype != Dtype::F32 {
                bail!("--dtype applies to --format gguf only; HF exports are f32");
            }
            let files = export_hf(&a.model, &a.out, a.force)?;
            eprintln!(
                "wrote {} (config.json, generation_config.json, model.safetensors, {})",
                a.out.display(),
                files.join(", ")
            );
        }
        Format::Gguf => {
            export_gguf(&a.model, &a.out, a.dtype, &a.tokenizer_pre)?;
            eprintln!("wrote {}", a.out.display());
        }
    }
    Ok(())
}
