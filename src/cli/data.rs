use std::path::PathBuf;

use crate::data::{Format, PrepareOptions, expand_inputs, prepare};

/// The input flags shared by `tokenizer` and `data` subcommands.
#[derive(clap::Args, Clone, Debug)]
pub struct InputArgs {
    /// Input files; `*` and `?` in the file name match several (quote them). `.gz` is read transparently.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<String>,
    /// txt: one document per non-empty line; jsonl: one JSON object per line, text in --field.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: Format,
    /// JSON field that holds the document (jsonl only), e.g. `story_zh` for TinyStoriesChinese.
    #[arg(long, default_value = "text")]
    pub field: String,
    /// Count and skip malformed lines (bad JSON, invalid UTF-8, missing field) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
}

/// Which duplicate filters `data prepare` applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dedup {
    /// Drop documents identical to an earlier one.
    Exact,
    /// Drop near-duplicates (MinHash/LSH over character n-grams, see --minhash-threshold).
    Minhash,
    /// No dedup.
    None,
}

#[derive(clap::Args, Debug)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Tokenizer directory (from `shoucuo tokenizer train`).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Output directory: train_NNN.bin, val_NNN.bin and manifest.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Share of documents that go to the validation split.
    #[arg(long, default_value_t = 0.01)]
    pub val_fraction: f64,
    /// Duplicate filters, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "exact,minhash")]
    pub dedup: Vec<Dedup>,
    /// Jaccard similarity above which a document counts as a near-duplicate of an earlier one.
    #[arg(long, default_value_t = 0.8)]
    pub minhash_threshold: f64,
    /// Characters per MinHash shingle.
    #[arg(long, default_value_t = 5)]
    pub minhash_ngram: usize,
    /// Drop documents shorter than this many characters.
    #[arg(long, default_value_t = 1)]
    pub min_chars: usize,
    /// Seed for the train/val split and the MinHash functions.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Tokens per shard file at most.
    #[arg(long, default_value_t = 100_000_000)]
    pub shard_tokens: u64,
    /// Replace --out if it exists (the old directory stays until the new one is complete).
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Clean, dedup and tokenize a corpus into token shards (numpy.memmap-readable) + manifest.json.
    Prepare(PrepareArgs),
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Prepare(a) => {
            let opts = prepare_options(a)?;
            let start = std::time::Instant::now();
            let p = prepare(&opts)?;
            let secs = start.elapsed().as_secs_f64();
            let (m, f) = (&p.manifest, &p.manifest.filters);
            eprintln!(
                "read {} documents ({:.1} MB, {:.1} MB/s); dropped {} bad lines, {} shorter than {} chars, {} exact and {} near duplicates",
                f.docs_read,
                p.input_bytes as f64 / 1e6,
                p.input_bytes as f64 / 1e6 / secs.max(1e-9),
                f.bad_lines,
                f.too_short,
                f.min_chars,
                f.exact_duplicates,
                f.near_duplicates
            );
            for (name, s) in [("train", &m.splits.train), ("val", &m.splits.val)] {
                eprintln!("{name:5} {:>9} docs {:>12} tokens in {} shard(s)", s.docs, s.tokens, s.shards.len());
            }
            if m.splits.val.docs == 0 && opts.val_fraction > 0.0 {
                eprintln!("warning: the val split is empty; raise --val-fraction or add data");
            }
            eprintln!("wrote {} ({}, vocab {}, eos {})", opts.out.display(), m.dtype, m.vocab_size, m.eos_id);
        }
    }
    Ok(())
}

/// Turns flags into library options (shared with `bench data`).
pub fn prepare_options(a: PrepareArgs) -> anyhow::Result<PrepareOptions> {
    Ok(PrepareOptions {
        inputs: expand_inputs(&a.input.input)?,
        format: a.input.format,
        field: a.input.field,
        tokenizer: a.tokenizer,
        out: a.out,
        val_fraction: a.val_fraction,
        exact_dedup: a.dedup.contains(&Dedup::Exact),
        minhash_threshold: a.dedup.contains(&Dedup::Minhash).then_some(a.minhash_threshold),
        minhash_ngram: a.minhash_ngram,
        min_chars: a.min_chars,
        seed: a.seed,
        skip_bad: a.input.skip_bad,
        shard_tokens: a.shard_tokens,
        force: a.force,
        progress: true,
    })
}
