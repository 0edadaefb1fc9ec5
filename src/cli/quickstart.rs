use crate::data::stats::unigram_entropy;
use crate::data::{Format, PrepareOptions, prepare};
use crate::generate::{SamplingParams, generate};
use crate::model::infer::{InferModel, Quant};
use crate::tokenizer::{Tok, TrainOptions, train as train_tokenizer};
use crate::train::pretrain::pretrain;
use crate::train::recipe::Recipe;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Instant;

const RECIPE: &str = include_str!("../../recipes/poetry-tiny.toml");
const CORPUS: &str = "data/tang-poems.jsonl.gz";

/// From nothing to a poetry model: train a tokenizer on the bundled Tang poems, prepare shards,
/// pretrain `recipes/poetry-tiny.toml` and print samples. Starts afresh in --out each time.
#[derive(clap::Args)]
pub struct Args {
    /// Where the tokenizer, the shards and the run go.
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    /// The corpus (jsonl, `text` field) [default: the bundled data/tang-poems.jsonl.gz].
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Tokenizer vocabulary size.
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
    /// Override a key of the poetry-tiny recipe, e.g. --set train.max_steps=200 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let corpus = a.corpus.clone().unwrap_or_else(bundled_corpus);
    if !corpus.is_file() {
        anyhow::bail!("{}: corpus not found; run from the repository root or pass --corpus", corpus.display());
    }
    if a.out.exists() {
        std::fs::remove_dir_all(&a.out).with_context(|| format!("{}: cannot clear the old run", a.out.display()))?;
    }
    let (tok_dir, data_dir, run_dir) = (a.out.join("tokenizer"), a.out.join("data"), a.out.join("model"));

    eprintln!("[1/4] tokenizer: byte-level BPE, {} tokens, on {}", a.vocab_size, corpus.display());
    let opts = TrainOptions {
        inputs: vec![corpus.clone()],
        format: Format::Jsonl,
        field: "text".into(),
        vocab_size: a.vocab_size,
        skip_bad: false,
        show_progress: true,
    };
    train_tokenizer(&opts, &tok_dir)?;

    eprintln!("[2/4] data: dedup (exact + MinHash), tokenize, shard → {}", data_dir.display());
    let prepared = prepare(&PrepareOptions {
        inputs: vec![corpus],
        format: Format::Jsonl,
        field: "text".into(),
        tokenizer: tok_dir.clone(),
        out: data_dir.clone(),
        val_fraction: 0.02,
        exact_dedup: true,
        minhash_threshold: Some(0.8),
        minhash_ngram: 5,
        min_chars: 10,
        seed: 1234,
        skip_bad: false,
        shard_tokens: 100_000_000,
        force: false,
        progress: true,
    })?;
    let m = &prepared.manifest;
    eprintln!("      {} train tokens, {} val tokens", m.splits.train.tokens, m.splits.val.tokens);

    let mut overrides = vec![
        format!("data.dir={}", toml_str(&data_dir)),
        format!("data.tokenizer={}", toml_str(&tok_dir)),
        format!("train.out_dir={}", toml_str(&run_dir)),
    ];
    overrides.extend(a.overrides.iter().cloned());
    let recipe = Recipe::parse(RECIPE, "recipes/poetry-tiny.toml", &overrides)?;
    let cfg = recipe.model_config(m.vocab_size);
    eprintln!(
        "[3/4] pretrain: {:.2}M parameters, {} steps of {} tokens → {}",
        cfg.num_params() as f64 / 1e6,
        recipe.max_steps(),
        recipe.tokens_per_step(),
        run_dir.display()
    );
    let summary = pretrain(&recipe, false)?;

    let baseline = unigram_entropy(&data_dir, "train")?;
    let val = summary.val_loss.unwrap_or(f32::NAN);
    let ckpt = summary.checkpoint.context("the run wrote no checkpoint")?;
    eprintln!("[4/4] samples from {}", ckpt.display());
    print_samples(&ckpt)?;
    println!(
        "val loss {val:.3} nats/token vs unigram baseline {baseline:.3} nats/token ({:.1}% lower)",
        100.0 * (1.0 - val as f64 / baseline)
    );
    eprintln!("done in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Completes a few poem titles with the trained model (seeded, so reruns print the same poems).
fn print_samples(ckpt: &Path) -> anyhow::Result<()> {
    let tok = Tok::load(ckpt)?;
    let model = InferModel::from_dir(ckpt, Quant::F32)?;
    let titles = ["《春望》", "《秋夜》", "《送友人》", "《江上》"];
    let prompts: Vec<Vec<u32>> = titles.iter().map(|t| tok.encode(t)).collect();
    let params = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        max_new_tokens: 80,
        stop_tokens: tok.eos_id().into_iter().collect(),
        seed: 1,
        ..SamplingParams::default()
    };
    let out = generate(&model, &tok, &prompts, &params, prompts.len(), &mut |_, _| {})?;
    for (title, g) in titles.iter().zip(out) {
        println!("{title}{}\n", g.text);
    }
    Ok(())
}

fn bundled_corpus() -> PathBuf {
    let local = PathBuf::from(CORPUS);
    if local.is_file() { local } else { Path::new(env!("CARGO_MANIFEST_DIR")).join(CORPUS) }
}

/// A path as a TOML string literal for `--set`.
fn toml_str(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}
