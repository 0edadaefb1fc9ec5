//! The `shoucuo` command line: one file per subcommand. Each parses its flags, calls the
//! library and prints; no logic that a test would want lives here.

mod bench;
mod chat;
mod data;
mod export;
mod generate;
mod import;
mod model;
mod plot;
mod pretrain;
mod quickstart;
mod tokenizer;

use clap::{Parser, Subcommand};

/// Build small language models from scratch — Chinese first — on one machine, and run them fast.
#[derive(Parser)]
#[command(name = "shoucuo", version, about, long_about = None, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the tokenizer, prepare the bundled poetry corpus, pretrain a tiny model and sample from it.
    Quickstart(quickstart::Args),
    /// Train, inspect and use a byte-level BPE tokenizer.
    #[command(subcommand)]
    Tokenizer(tokenizer::Command),
    /// Turn a text corpus into cleaned token shards.
    #[command(subcommand)]
    Data(data::Command),
    /// Pretrain a LLaMA model on prepared shards, from a recipe.
    Pretrain(pretrain::Args),
    /// Redraw the loss-curve PNG of a run directory.
    Plot(plot::Args),
    /// Generate text from a model (one prompt, or a jsonl file of prompts in batches).
    Generate(generate::Args),
    /// Chat with a model in the terminal.
    Chat(chat::Args),
    /// Export a checkpoint as a clean HF directory or as GGUF.
    Export(export::Args),
    /// Import an existing Llama checkpoint (HF safetensors or llama2.c).
    Import(import::Args),
    /// Inspect a model config: parameter count and which tools can load it.
    #[command(subcommand)]
    Model(model::Command),
    /// Speed benchmarks; the last stdout line is one JSON object.
    #[command(subcommand)]
    Bench(bench::Command),
}

/// Parses the command line and runs it.
pub fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Quickstart(a) => quickstart::run(a),
        Command::Tokenizer(c) => tokenizer::run(c),
        Command::Data(c) => data::run(c),
        Command::Pretrain(a) => pretrain::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Export(a) => export::run(a),
        Command::Import(a) => import::run(a),
        Command::Model(c) => model::run(c),
        Command::Bench(c) => bench::run(c),
    }
}
