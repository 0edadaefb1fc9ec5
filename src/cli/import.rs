//! `shoucuo import`: bring an existing Llama checkpoint into a shoucuo model directory.

use crate::export::import::{import_hf, import_llama2c};
use anyhow::bail;
use std::path::PathBuf;

/// Import a Llama checkpoint (HF safetensors directory or llama2.c model.bin) as an f32 model directory.
///
/// Examples:
///   shoucuo import --from hf path/to/llama-dir --out my-model
///   shoucuo import --from llama2c stories15M.bin --tokenizer tokenizer.bin --out stories15M
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum)]
    pub from: Source,
    /// HF model directory, or llama2.c model.bin.
    pub path: PathBuf,
    /// llama2.c tokenizer.bin (with --from llama2c).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Output model directory (must not exist).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Source {
    Hf,
    Llama2c,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.from {
        Source::Hf => {
            if a.tokenizer.is_some() {
                bail!("--tokenizer is for --from llama2c; a HF directory carries its own tokenizer.json");
            }
            let m = import_hf(&a.path, &a.out)?;
            eprintln!("imported {} ({} parameters) into {}", a.path.display(), m.cfg.num_params(), a.out.display());
        }
        Source::Llama2c => {
            let cfg = import_llama2c(&a.path, a.tokenizer.as_deref(), &a.out)?;
            eprintln!("imported {} ({} parameters) into {}", a.path.display(), cfg.num_params(), a.out.display());
            if a.tokenizer.is_none() {
                eprintln!("note: no --tokenizer given; generate needs a tokenizer.json in {}", a.out.display());
            }
        }
    }
    Ok(())
}
