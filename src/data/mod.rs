//! Corpus readers (txt, jsonl), cleaning and dedup, token shards + manifest, and training loaders.
//!
//! Data flow: [`reader`] streams documents → [`prepare`] filters ([`dedup`]), tokenizes and writes
//! shards described by a [`Manifest`] → [`loader`] memory-maps the shards for training.

pub mod dedup;
pub mod loader;
pub mod manifest;
pub mod prepare;
pub mod reader;
pub mod stats;

use std::path::{Path, PathBuf};

pub use loader::{LoaderState, RandomWindows, SequentialWindows};
pub use manifest::Manifest;
pub use prepare::{PrepareOptions, Prepared, prepare};
pub use reader::{DocReader, Format, expand_inputs};

/// Everything a user can get wrong about corpora, shards and manifests.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{0}")]
    NoInput(String),
    #[error("{}:{line}: {what}; fix the line or pass --skip-bad", path.display())]
    BadLine { path: PathBuf, line: usize, what: String },
    #[error("{}: {what}", path.display())]
    Manifest { path: PathBuf, what: String },
    #[error("{}: {what}", path.display())]
    Shard { path: PathBuf, what: String },
    #[error(
        "split \"{split}\" has {tokens} tokens but a window needs {need} (seq + 1); use a shorter --seq or more data"
    )]
    TooShort { split: String, tokens: u64, need: u64 },
    #[error("loader state does not fit this loader: {0}")]
    State(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{}: already exists; choose another --out or pass --force", .0.display())]
    OutputExists(PathBuf),
    #[error("no document is left after filtering ({0}); check --input, --field and --min-chars")]
    Empty(String),
}

impl DataError {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        DataError::Io { path: path.to_path_buf(), error }
    }
}
