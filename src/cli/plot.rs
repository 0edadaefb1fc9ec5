use crate::train::metrics;
use std::path::PathBuf;

/// Redraw RUN_DIR/loss.png from RUN_DIR/metrics.jsonl.
#[derive(clap::Args)]
pub struct Args {
    /// A run directory written by `shoucuo pretrain`.
    run_dir: PathBuf,
    /// Where to write the PNG [default: RUN_DIR/loss.png].
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let records = metrics::read(&a.run_dir.join("metrics.jsonl"))?;
    let out = a.out.unwrap_or_else(|| a.run_dir.join("loss.png"));
    metrics::plot(&records, &out)?;
    println!("{}", out.display());
    Ok(())
}
