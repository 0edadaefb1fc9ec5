//! `manifest.json`: what a prepared data directory holds, and crash-safe file writing.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::DataError;

/// Writes `bytes` to `path` through a temporary file in the same directory, fsynced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| DataError::io(&tmp, e))?;
    drop(f);
    sync_and_rename(&tmp, path)
}

/// Fsyncs `tmp`, renames it to `path` and fsyncs the directory.
pub fn sync_and_rename(tmp: &Path, path: &Path) -> Result<(), DataError> {
    File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| DataError::io(tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| DataError::io(path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Fsyncs a directory so a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), DataError> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    File::open(dir).and_then(|f| f.sync_all()).map_err(|e| DataError::io(dir, e))
}

/// The file name of the manifest inside a prepared data directory.
pub const MANIFEST: &str = "manifest.json";

/// `manifest.json` of a prepared data directory (see docs/data.md).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// numpy dtype name of every shard: `uint16` (vocab ≤ 65536) or `uint32`.
    pub dtype: String,
    pub vocab_size: usize,
    pub eos_id: u32,
    pub tokenizer: String,
    pub seed: u64,
    pub val_fraction: f64,
    pub sources: Vec<Source>,
    pub filters: Filters,
    pub splits: Splits,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Source {
    pub path: String,
    pub bytes: u64,
}

/// How many documents were read and how many each filter removed, in the order they apply.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Filters {
    pub docs_read: u64,
    pub bad_lines: u64,
    pub min_chars: usize,
    pub too_short: u64,
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    /// MinHash Jaccard threshold; `null` when near-duplicate removal was off.
    pub minhash_threshold: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Splits {
    pub train: Split,
    pub val: Split,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Split {
    pub docs: u64,
    pub tokens: u64,
    pub shards: Vec<Shard>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    /// File name inside the data directory, e.g. `train_000.bin`.
    pub file: String,
    pub tokens: u64,
    pub sha256: String,
}

impl Manifest {
    /// Reads `DIR/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| DataError::Manifest { path: path.clone(), what: format!("invalid manifest ({e})") })?;
        if m.bytes_per_token().is_none() {
            let what = format!("dtype \"{}\" is not uint16 or uint32", m.dtype);
            return Err(DataError::Manifest { path, what });
        }
        Ok(m)
    }

    /// 2 for `uint16`, 4 for `uint32`.
    pub fn bytes_per_token(&self) -> Option<usize> {
        match self.dtype.as_str() {
            "uint16" => Some(2),
            "uint32" => Some(4),
            _ => None,
        }
    }

    /// The split named `name` (`train` or `val`).
    pub fn split(&self, name: &str) -> Option<&Split> {
        match name {
            "train" => Some(&self.splits.train),
            "val" => Some(&self.splits.val),
            _ => None,
        }
    }
}
