use crate::data::Format;

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

#[derive(clap::Subcommand)]
pub enum Command {}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {}
}
