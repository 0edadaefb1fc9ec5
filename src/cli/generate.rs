//! `shoucuo generate`: one prompt (optionally streamed), or a jsonl file of prompts decoded in batches.

use crate::generate::{SamplingParams, TextStream, generate};
use crate::model::infer::{InferModel, KvCache, KvType, Quant};
use crate::tokenizer::Tok;
use anyhow::{Context, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Text to continue.
    #[arg(long, conflicts_with = "input", required_unless_present = "input")]
    pub prompt: Option<String>,
    /// Print tokens as they are generated.
    #[arg(long)]
    pub stream: bool,
    /// jsonl file, one object with a "prompt" field per line.
    #[arg(long, requires = "output")]
    pub input: Option<PathBuf>,
    /// jsonl file to write: each input line with a "completion" field added.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Sequences decoded together (with --input).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Model loading flags shared with `chat`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Weight format: f32, or q8 (int8 with one scale per 32 weights; ~4x less memory traffic).
    #[arg(long, default_value = "f32")]
    pub quant: Quant,
    /// KV cache storage: f16 (half the memory traffic of attention), q8 (int8 with one scale per
    /// key or value vector: about half of f16's) or f32 (exact).
    #[arg(long, default_value = "f16")]
    pub kv_cache: KvType,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Sampling flags shared with `chat`.
#[derive(clap::Args)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass (1 = off).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens below min_p times the top token's probability (0 = off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalise tokens already in the prompt or output (1 = off; 1.1 is mild).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    /// Subtract this from a token's logit per earlier occurrence in the output (0 = off; negative
    /// values favour repeats).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Stop when the text contains this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampling settings, stopping on the tokenizer's end-of-text and end-of-turn tokens.
    pub fn params(&self, tok: &Tok) -> anyhow::Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            frequency_penalty: self.frequency_penalty,
            max_new_tokens: self.max_new_tokens,
            stop_tokens: tok.eos_id().into_iter().chain(tok.token_id("<|im_end|>")).collect(),
            stop_strings: self.stop.clone(),
            seed: self.seed,
        };
        p.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(p)
    }
}

impl RunArgs {
    /// Sets the thread count and loads the model and tokenizer of `dir`.
    pub fn load(&self, dir: &Path) -> anyhow::Result<(InferModel, Tok)> {
        if let Some(t) = self.threads {
            rayon::ThreadPoolBuilder::new().num_threads(t).build_global().context("setting --threads")?;
        }
        let t0 = Instant::now();
        let mut model =
            InferModel::from_dir(dir, self.quant).with_context(|| format!("loading model {}", dir.display()))?;
        model.kv = self.kv_cache;
        let tok = Tok::load(dir)?;
        if tok.vocab_size() > model.cfg.vocab_size {
            bail!(
                "{}: tokenizer has {} tokens but the model only {}; the tokenizer does not belong to this model",
                dir.display(),
                tok.vocab_size(),
                model.cfg.vocab_size
            );
        }
        eprintln!(
            "loaded {} ({:.1}M params, weights {}, context {}, KV cache {} at {} per sequence) in {:.2}s",
            dir.display(),
            model.cfg.num_params() as f64 / 1e6,
            format!("{:?}", self.quant).to_lowercase(),
            model.cfg.max_seq_len,
            format!("{:?}", model.kv).to_lowercase(),
            size(KvCache::bytes(&model.cfg, model.cfg.max_seq_len, model.kv)),
            t0.elapsed().as_secs_f64()
        );
        Ok((model, tok))
    }
}

/// Bytes as KiB below one MiB, else as MiB: "72.0 KiB", "3.5 MiB".
fn size(bytes: usize) -> String {
    match bytes as f64 / 1024.0 {
        k if k < 1024.0 => format!("{k:.1} KiB"),
        k => format!("{:.1} MiB", k / 1024.0),
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (model, tok) = a.run.load(&a.model)?;
    let p = a.sampling.params(&tok)?;
    match (&a.prompt, &a.input, &a.output) {
        (Some(prompt), _, _) => one(&model, &tok, prompt, &p, a.stream),
        (None, Some(input), Some(output)) => many(&model, &tok, input, output, &p, a.batch_size),
        _ => bail!("give --prompt TEXT, or --input prompts.jsonl --output out.jsonl"),
    }
}

fn one(model: &InferModel, tok: &Tok, prompt: &str, p: &SamplingParams, stream: bool) -> anyhow::Result<()> {
    let ids = tok.encode(prompt);
    let t0 = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut ts = TextStream::new(tok, &p.stop_strings);
    if stream {
        write!(out, "{prompt}")?;
        out.flush()?;
    }
    let mut on_token = |_: usize, t: u32| {
        if stream {
            let piece = ts.push(t);
            // a closed stdout (e.g. `| head`) must not stop generation with a panic
            let _ = write!(out, "{piece}").and_then(|_| out.flush());
        }
    };
    let g = generate(model, tok, &[ids], p, 1, &mut on_token).context("generating")?;
    let g = g.into_iter().next().context("no output")?;
    if stream {
        writeln!(out, "{}", ts.finish())?;
    } else {
        writeln!(out, "{prompt}{}", g.text)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "[{} tokens in {secs:.2}s, {:.1} tokens/s, finish: {:?}]",
        g.tokens.len(),
        g.tokens.len() as f64 / secs,
        g.finish
    );
    Ok(())
}

fn many(
    model: &InferModel,
    tok: &Tok,
    input: &Path,
    output: &Path,
    p: &SamplingParams,
    batch: usize,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let mut rows = vec![];
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", input.display(), n + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: invalid JSON", at()))?;
        let Some(prompt) = v.get("prompt").and_then(|p| p.as_str()) else {
            bail!("{}: no string \"prompt\" field; each line must look like {{\"prompt\": \"...\"}}", at());
        };
        let ids = tok.encode(prompt);
        if ids.len() >= model.cfg.max_seq_len {
            bail!(
                "{}: the prompt has {} tokens but the context window is {}; shorten it",
                at(),
                ids.len(),
                model.cfg.max_seq_len
            );
        }
        rows.push((line.trim_end().to_string(), ids));
    }
    let prompts: Vec<Vec<u32>> = rows.iter().map(|r| r.1.clone()).collect();
    let t0 = Instant::now();
    let gens = generate(model, tok, &prompts, p, batch, &mut |_, _| {}).context("generating")?;
    let secs = t0.elapsed().as_secs_f64();
    let n_tok: usize = gens.iter().map(|g| g.tokens.len()).sum();
    let mut body = String::new();
    for ((line, _), g) in rows.iter().zip(gens) {
        // the input line as written (field order kept), with the completion added before its `}`
        let head = line.strip_suffix('}').context("a JSON object ends with }")?;
        body.push_str(&format!("{head},\"completion\":{}}}\n", serde_json::to_string(&g.text)?));
    }
    write_atomic(output, body.as_bytes())?;
    eprintln!(
        "{} prompts, {n_tok} tokens in {secs:.2}s ({:.1} tokens/s, batch {batch}) -> {}",
        prompts.len(),
        n_tok as f64 / secs,
        output.display()
    );
    Ok(())
}

/// Writes to a temporary name in the same directory, fsyncs, then renames.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
