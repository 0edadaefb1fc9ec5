use crate::train::pretrain::pretrain;
use crate::train::recipe::Recipe;
use std::path::PathBuf;

/// Pretrain a LLaMA model from a recipe on shards made by `shoucuo data prepare`.
///
/// Example: shoucuo pretrain --config recipes/poetry-tiny.toml --set train.max_steps=2000
#[derive(clap::Args)]
pub struct Args {
    /// Recipe file (TOML with [model], [data] and [train] tables).
    #[arg(long)]
    config: PathBuf,
    /// Override a recipe key, e.g. --set train.lr=3e-4 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue the run in train.out_dir from its newest checkpoint.
    #[arg(long)]
    resume: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let recipe = Recipe::load(&a.config, &a.overrides)?;
    let s = pretrain(&recipe, a.resume)?;
    if let Some(ck) = &s.checkpoint {
        eprintln!("checkpoint: {}", ck.display());
    }
    if let Some(v) = s.val_loss {
        eprintln!("val loss: {v:.4}");
    }
    Ok(())
}
