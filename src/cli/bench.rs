use crate::bench;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Data pipeline throughput: tokenizer training, encoding MB/s, `data prepare` MB/s.
    Data(bench::data::Args),
    /// Prefill and decode tokens/s (batch 1 and batched) on a preset's shape with random weights.
    Decode(bench::decode::Args),
    /// Read bandwidth (GB/s) on buffers of several sizes: what decode's GB/s is measured against.
    Memory(bench::memory::Args),
    /// Training tokens/s (forward + backward + clip + AdamW) on a preset's shape, random tokens.
    Train(bench::train::Args),
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Data(a) => bench::data::run(a),
        Command::Decode(a) => bench::decode::run(a),
        Command::Memory(a) => bench::memory::run(a),
        Command::Train(a) => bench::train::run(a),
    }
}
