use crate::bench;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Data pipeline throughput: tokenizer training, encoding MB/s, `data prepare` MB/s.
    Data(bench::data::Args),
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Data(a) => bench::data::run(a),
    }
}
