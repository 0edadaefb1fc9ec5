//! `shoucuo bench data`: tokenizer encode throughput and `data prepare` throughput on a corpus
//! (by default the bundled Tang poems).

use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;

use crate::data::{DocReader, Format, PrepareOptions, expand_inputs, prepare};
use crate::tokenizer::{Tok, TrainOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Corpus files (`*`/`?` globs in the file name allowed).
    #[arg(long, default_value = "data/tang-poems.jsonl.gz", num_args = 1..)]
    pub input: Vec<String>,
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: Format,
    #[arg(long, default_value = "text")]
    pub field: String,
    /// Tokenizer directory; without it one is trained on the corpus first (and timed).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size of the tokenizer trained when --tokenizer is not given.
    #[arg(long, default_value_t = 6400)]
    pub vocab_size: usize,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let inputs = expand_inputs(&a.input)?;
    let scratch = std::env::temp_dir().join(format!("shoucuo-bench-data-{}", std::process::id()));
    let result = measure(&a, &inputs, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    println!("{report}");
    Ok(())
}

fn measure(a: &Args, inputs: &[PathBuf], scratch: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let threads = rayon::current_num_threads();
    let (tok_dir, train_s) = match &a.tokenizer {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = scratch.join("tokenizer");
            let opts = TrainOptions {
                inputs: inputs.to_vec(),
                format: a.format,
                field: a.field.clone(),
                vocab_size: a.vocab_size,
                skip_bad: false,
                show_progress: false,
            };
            let t = Instant::now();
            crate::tokenizer::train(&opts, &dir)?;
            let s = t.elapsed().as_secs_f64();
            eprintln!("tokenizer train: vocab {} in {s:.2} s", a.vocab_size);
            (dir, Some(s))
        }
    };
    let tok = Tok::load(&tok_dir)?;
    let docs: Vec<String> = DocReader::new(inputs.to_vec(), a.format, &a.field, false)
        .map(|d| d.map(|d| d.text))
        .collect::<Result<_, _>>()?;
    let text_mb = docs.iter().map(|d| d.len()).sum::<usize>() as f64 / 1e6;
    let chars: usize = docs.iter().map(|d| d.chars().count()).sum();

    let t = Instant::now();
    let tokens: usize = docs.iter().map(|d| tok.encode(d).len()).sum();
    let encode_1t = text_mb / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let tokens_par: usize = docs.par_iter().map(|d| tok.encode(d).len()).sum();
    let encode_par = text_mb / t.elapsed().as_secs_f64();
    anyhow::ensure!(tokens == tokens_par, "parallel encoding gave {tokens_par} tokens, sequential {tokens}");
    eprintln!(
        "encode: {text_mb:.1} MB of text, {tokens} tokens; {encode_1t:.2} MB/s on 1 thread, {encode_par:.2} MB/s on {threads}"
    );

    let opts = PrepareOptions {
        inputs: inputs.to_vec(),
        format: a.format,
        field: a.field.clone(),
        tokenizer: tok_dir,
        out: scratch.join("data"),
        val_fraction: 0.01,
        exact_dedup: true,
        minhash_threshold: Some(0.8),
        minhash_ngram: 5,
        min_chars: 1,
        seed: 1234,
        skip_bad: false,
        shard_tokens: 100_000_000,
        force: true,
        progress: false,
    };
    let t = Instant::now();
    let prepared = prepare(&opts)?;
    let prepare_s = t.elapsed().as_secs_f64();
    let input_mb = prepared.input_bytes as f64 / 1e6;
    eprintln!("prepare: {input_mb:.1} MB of input in {prepare_s:.2} s = {:.2} MB/s", input_mb / prepare_s);

    Ok(serde_json::json!({
        "bench": "data",
        "input": a.input,
        "docs": docs.len(),
        "input_mb": input_mb,
        "text_mb": text_mb,
        "tokens": tokens,
        "chars_per_token": chars as f64 / tokens.max(1) as f64,
        "threads": threads,
        "tokenizer_train_s": train_s,
        "encode_mb_s_1thread": encode_1t,
        "encode_mb_s": encode_par,
        "prepare_s": prepare_s,
        "prepare_mb_s": input_mb / prepare_s,
        "peak_rss_mib": super::peak_rss_mib(),
    }))
}
