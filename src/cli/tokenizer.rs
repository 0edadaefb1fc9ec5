use std::io::Read;
use std::path::PathBuf;

use super::data::InputArgs;
use anyhow::Context;

use crate::data::{DocReader, expand_inputs};
use crate::tokenizer::{TextStats, Tok, TrainOptions};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train a byte-level BPE tokenizer; writes tokenizer.json + tokenizer_config.json (transformers-loadable).
    Train {
        #[command(flatten)]
        input: InputArgs,
        /// Vocabulary size, including 256 byte tokens and 4 special tokens.
        #[arg(long, default_value_t = 6400)]
        vocab_size: usize,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the token ids of a text (from --text or stdin).
    Encode {
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        text: Option<String>,
        /// Also print each token's text.
        #[arg(long)]
        pieces: bool,
    },
    /// Print the text of token ids (arguments, or whitespace-separated on stdin).
    Decode {
        #[arg(long)]
        tokenizer: PathBuf,
        ids: Vec<u32>,
    },
    /// Vocabulary size, bytes per token and characters per token on a corpus.
    Stats {
        #[arg(long)]
        tokenizer: PathBuf,
        #[command(flatten)]
        input: InputArgs,
    },
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Train { input, vocab_size, out } => {
            let opts = TrainOptions {
                inputs: expand_inputs(&input.input)?,
                format: input.format,
                field: input.field,
                vocab_size,
                skip_bad: input.skip_bad,
                show_progress: true,
            };
            let s = crate::tokenizer::train(&opts, &out)?;
            eprintln!(
                "trained on {} documents ({:.1} MB, {} bad lines skipped); vocab {} → {}",
                s.docs,
                s.bytes as f64 / 1e6,
                s.bad_lines,
                s.vocab_size,
                out.display()
            );
        }
        Command::Encode { tokenizer, text, pieces } => {
            let tok = Tok::load(&tokenizer)?;
            let text = match text {
                Some(t) => t,
                None => read_stdin()?,
            };
            let ids = tok.encode(&text);
            let line: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
            println!("{}", line.join(" "));
            if pieces {
                for id in ids {
                    println!("{id}\t{:?}", tok.decode(&[id]));
                }
            }
        }
        Command::Decode { tokenizer, ids } => {
            let tok = Tok::load(&tokenizer)?;
            let ids = if ids.is_empty() {
                read_stdin()?
                    .split_whitespace()
                    .map(|s| s.parse::<u32>().with_context(|| format!("stdin: \"{s}\" is not a token id")))
                    .collect::<anyhow::Result<Vec<u32>>>()?
            } else {
                ids
            };
            if let Some(bad) = ids.iter().find(|&&i| i as usize >= tok.vocab_size()) {
                anyhow::bail!("token id {bad} is out of range (vocab size {})", tok.vocab_size());
            }
            println!("{}", tok.decode(&ids));
        }
        Command::Stats { tokenizer, input } => {
            let tok = Tok::load(&tokenizer)?;
            let files = expand_inputs(&input.input)?;
            let mut stats = TextStats::default();
            for doc in DocReader::new(files, input.format, &input.field, input.skip_bad) {
                stats.add(&tok, &doc?.text);
            }
            println!("vocab size        {}", tok.vocab_size());
            println!("documents         {}", stats.docs);
            println!("bytes             {}", stats.bytes);
            println!("characters        {}", stats.chars);
            println!("tokens            {}", stats.tokens);
            println!("bytes per token   {:.3}", stats.bytes_per_token());
            println!("chars per token   {:.3}", stats.chars_per_token());
        }
    }
    Ok(())
}

fn read_stdin() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).context("stdin: cannot read text (is it UTF-8?)")?;
    Ok(s)
}
