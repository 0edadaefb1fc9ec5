//! `data prepare`: read → filter (short, exact and near duplicates) → tokenize (in parallel) →
//! split train/val → write token shards and `manifest.json` into a temporary directory that is
//! renamed into place only when complete.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::DataError;
use super::dedup::{MinHasher, NearDupIndex, content_hash};
use super::manifest::{Filters, MANIFEST, Manifest, Shard, Source, Split, Splits, sync_dir, write_atomic};
use super::reader::{Doc, DocReader, Format};
use crate::tokenizer::Tok;

/// Documents read, filtered and tokenized together.
const CHUNK_DOCS: usize = 4096;
const CHUNK_BYTES: usize = 16 << 20;

/// Everything `data prepare` needs.
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    pub inputs: Vec<PathBuf>,
    pub format: Format,
    pub field: String,
    pub tokenizer: PathBuf,
    pub out: PathBuf,
    /// Share of documents in the validation split, in [0, 1).
    pub val_fraction: f64,
    pub exact_dedup: bool,
    /// MinHash Jaccard threshold for near-duplicate removal; `None` turns it off.
    pub minhash_threshold: Option<f64>,
    /// Characters per shingle for MinHash.
    pub minhash_ngram: usize,
    /// Documents with fewer characters are dropped.
    pub min_chars: usize,
    pub seed: u64,
    pub skip_bad: bool,
    /// Tokens per shard file at most.
    pub shard_tokens: u64,
    /// Replace an existing output directory.
    pub force: bool,
    pub progress: bool,
}

/// The manifest written, and how many (decompressed) input bytes were read.
pub struct Prepared {
    pub manifest: Manifest,
    pub input_bytes: u64,
}

/// Runs the whole pipeline; the output directory appears complete or not at all.
pub fn prepare(opts: &PrepareOptions) -> Result<Prepared, DataError> {
    if !(0.0..1.0).contains(&opts.val_fraction) {
        return Err(DataError::NoInput(format!("--val-fraction {} must be in [0, 1)", opts.val_fraction)));
    }
    if let Some(t) = opts.minhash_threshold.filter(|t| !(*t > 0.0 && *t < 1.0)) {
        return Err(DataError::NoInput(format!("--minhash-threshold {t} must be between 0 and 1")));
    }
    let mut tok = Tok::load(&opts.tokenizer).map_err(|e| DataError::Tokenizer(format!("{e:#}")))?;
    let eos = tok.eos_id().ok_or_else(|| {
        DataError::Tokenizer(format!(
            "{}: no end-of-text token (<|endoftext|> or eos_token in tokenizer_config.json) to end documents with",
            opts.tokenizer.display()
        ))
    })?;
    // Text that merely spells a special token ("<|endoftext|>") is data, not a document boundary.
    tok.inner.set_encode_special_tokens(true);
    let bytes_per_token = if tok.vocab_size() <= 1 << 16 { 2 } else { 4 };

    let staging = Staging::create(&opts.out, opts.force)?;
    let mut writers = [
        ShardWriter::new(staging.dir.clone(), "train", bytes_per_token, opts.shard_tokens),
        ShardWriter::new(staging.dir.clone(), "val", bytes_per_token, opts.shard_tokens),
    ];
    let minhash = opts.minhash_threshold.map(|t| MinHasher::new(t, opts.minhash_ngram, opts.seed));
    let mut exact_seen = HashSet::new();
    let mut near_index = NearDupIndex::default();
    let mut split_rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut filters =
        Filters { min_chars: opts.min_chars, minhash_threshold: opts.minhash_threshold, ..Filters::default() };
    let progress = progress_bar(opts);

    let mut reader = DocReader::new(opts.inputs.clone(), opts.format, &opts.field, opts.skip_bad);
    loop {
        let chunk = read_chunk(&mut reader)?;
        if chunk.is_empty() {
            break;
        }
        filters.docs_read += chunk.len() as u64;
        // Per-document work in parallel; the keep/drop decisions below run in document order.
        let facts: Vec<(usize, u128, Vec<u64>)> = chunk
            .par_iter()
            .map(|d| {
                let chars = d.text.chars().count();
                let hash = if opts.exact_dedup { content_hash(&d.text) } else { 0 };
                let keys = match (&minhash, chars >= opts.min_chars) {
                    (Some(m), true) => m.band_keys(&d.text),
                    _ => Vec::new(),
                };
                (chars, hash, keys)
            })
            .collect();
        let mut kept = Vec::with_capacity(chunk.len());
        for (doc, (chars, hash, keys)) in chunk.iter().zip(&facts) {
            if *chars < opts.min_chars {
                filters.too_short += 1;
            } else if opts.exact_dedup && !exact_seen.insert(*hash) {
                filters.exact_duplicates += 1;
            } else if minhash.is_some() && near_index.is_duplicate(keys) {
                filters.near_duplicates += 1;
            } else {
                kept.push(doc.text.as_str());
            }
        }
        let encoded: Vec<Vec<u32>> = kept
            .par_iter()
            .map(|text| {
                let mut ids = tok.encode(text);
                ids.push(eos);
                ids
            })
            .collect();
        for ids in &encoded {
            let split = usize::from(split_rng.random_bool(opts.val_fraction));
            writers[split].write_doc(ids)?;
        }
        if let Some(p) = &progress {
            p.set_position(reader.bytes_read());
        }
    }
    filters.bad_lines = reader.bad_lines();
    if let Some(p) = &progress {
        p.finish_and_clear();
    }
    let [train, val] = writers;
    let splits = Splits { train: train.finish()?, val: val.finish()? };
    if splits.train.docs + splits.val.docs == 0 {
        return Err(DataError::Empty(format!(
            "{} read, {} too short, {} exact and {} near duplicates",
            filters.docs_read, filters.too_short, filters.exact_duplicates, filters.near_duplicates
        )));
    }
    let sources = opts
        .inputs
        .iter()
        .map(|p| {
            let bytes = std::fs::metadata(p).map_err(|e| DataError::io(p, e))?.len();
            Ok(Source { path: p.display().to_string(), bytes })
        })
        .collect::<Result<Vec<_>, DataError>>()?;
    let manifest = Manifest {
        format_version: 1,
        dtype: if bytes_per_token == 2 { "uint16" } else { "uint32" }.to_string(),
        vocab_size: tok.vocab_size(),
        eos_id: eos,
        tokenizer: opts.tokenizer.display().to_string(),
        seed: opts.seed,
        val_fraction: opts.val_fraction,
        sources,
        filters,
        splits,
    };
    let mut json = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    json.push('\n');
    write_atomic(&staging.dir.join(MANIFEST), json.as_bytes())?;
    staging.commit()?;
    Ok(Prepared { manifest, input_bytes: reader.bytes_read() })
}

/// Reads up to CHUNK_DOCS documents or CHUNK_BYTES of text.
fn read_chunk(reader: &mut DocReader) -> Result<Vec<Doc>, DataError> {
    let (mut docs, mut bytes) = (Vec::new(), 0);
    while docs.len() < CHUNK_DOCS && bytes < CHUNK_BYTES {
        match reader.next() {
            Some(doc) => {
                let doc = doc?;
                bytes += doc.text.len();
                docs.push(doc);
            }
            None => break,
        }
    }
    Ok(docs)
}

fn progress_bar(opts: &PrepareOptions) -> Option<indicatif::ProgressBar> {
    if !opts.progress {
        return None;
    }
    let any_gz = opts.inputs.iter().any(|p| p.extension().is_some_and(|e| e == "gz"));
    let total: u64 = opts.inputs.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let bar = if any_gz { indicatif::ProgressBar::new_spinner() } else { indicatif::ProgressBar::new(total) };
    let template = if any_gz {
        "{spinner} [{elapsed_precise}] {bytes} read ({bytes_per_sec})"
    } else {
        "[{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    Some(bar)
}

/// Appends documents' tokens to `{split}_NNN.bin` files of at most `max_tokens` tokens each.
struct ShardWriter {
    dir: PathBuf,
    split: &'static str,
    bytes_per_token: usize,
    max_tokens: u64,
    current: Option<(BufWriter<File>, Sha256, Shard)>,
    done: Split,
}

impl ShardWriter {
    fn new(dir: PathBuf, split: &'static str, bytes_per_token: usize, max_tokens: u64) -> Self {
        ShardWriter {
            dir,
            split,
            bytes_per_token,
            max_tokens: max_tokens.max(1),
            current: None,
            done: Split::default(),
        }
    }

    fn write_doc(&mut self, ids: &[u32]) -> Result<(), DataError> {
        self.done.docs += 1;
        let mut rest = ids;
        let mut bytes = Vec::with_capacity(ids.len() * self.bytes_per_token);
        while !rest.is_empty() {
            if self.current.as_ref().is_some_and(|(_, _, s)| s.tokens >= self.max_tokens) {
                self.close_shard()?;
            }
            if self.current.is_none() {
                let name = format!("{}_{:03}.bin", self.split, self.done.shards.len());
                let path = self.dir.join(&name);
                let f = File::create(&path).map_err(|e| DataError::io(&path, e))?;
                let shard = Shard { file: name, tokens: 0, sha256: String::new() };
                self.current = Some((BufWriter::with_capacity(1 << 20, f), Sha256::new(), shard));
            }
            let Some((w, hasher, shard)) = self.current.as_mut() else { break };
            let n = rest.len().min((self.max_tokens - shard.tokens) as usize);
            bytes.clear();
            for &id in &rest[..n] {
                if self.bytes_per_token == 2 {
                    bytes.extend_from_slice(&(id as u16).to_le_bytes());
                } else {
                    bytes.extend_from_slice(&id.to_le_bytes());
                }
            }
            w.write_all(&bytes).map_err(|e| DataError::io(&self.dir.join(&shard.file), e))?;
            hasher.update(&bytes);
            shard.tokens += n as u64;
            self.done.tokens += n as u64;
            rest = &rest[n..];
        }
        Ok(())
    }

    fn close_shard(&mut self) -> Result<(), DataError> {
        if let Some((w, hasher, mut shard)) = self.current.take() {
            let path = self.dir.join(&shard.file);
            let f = w.into_inner().map_err(|e| DataError::io(&path, e.into_error()))?;
            f.sync_all().map_err(|e| DataError::io(&path, e))?;
            shard.sha256 = format!("{:x}", hasher.finalize());
            self.done.shards.push(shard);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Split, DataError> {
        self.close_shard()?;
        Ok(self.done)
    }
}

/// A temporary directory beside the output, removed on drop unless committed.
struct Staging {
    dir: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl Staging {
    fn create(out: &Path, force: bool) -> Result<Self, DataError> {
        if out.exists() && !force {
            let empty = std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
            if !empty {
                return Err(DataError::OutputExists(out.to_path_buf()));
            }
        }
        let parent = parent_of(out);
        std::fs::create_dir_all(&parent).map_err(|e| DataError::io(&parent, e))?;
        let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("data");
        let dir = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| DataError::io(&dir, e))?;
        Ok(Staging { dir, out: out.to_path_buf(), committed: false })
    }

    /// Moves the finished directory into place (replacing an old one only after the new one is whole).
    fn commit(mut self) -> Result<(), DataError> {
        sync_dir(&self.dir)?;
        let parent = parent_of(&self.out);
        let old = self.dir.with_extension("old");
        if self.out.exists() {
            std::fs::rename(&self.out, &old).map_err(|e| DataError::io(&self.out, e))?;
        }
        std::fs::rename(&self.dir, &self.out).map_err(|e| DataError::io(&self.out, e))?;
        self.committed = true;
        sync_dir(&parent)?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| DataError::io(&old, e))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_writer_stores_u32_little_endian_and_rolls_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::new(dir.path().to_path_buf(), "train", 4, 3);
        w.write_doc(&[70_000, 70_001]).unwrap();
        w.write_doc(&[70_002, 65_537, 0]).unwrap();
        let split = w.finish().unwrap();
        assert_eq!((split.docs, split.tokens), (2, 5));
        let files: Vec<(&str, u64)> = split.shards.iter().map(|s| (s.file.as_str(), s.tokens)).collect();
        assert_eq!(files, [("train_000.bin", 3), ("train_001.bin", 2)]);
        let read = |f: &str| -> Vec<u32> {
            let b = std::fs::read(dir.path().join(f)).unwrap();
            b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        assert_eq!(read("train_000.bin"), [70_000, 70_001, 70_002]);
        assert_eq!(read("train_001.bin"), [65_537, 0]);
        let sha = format!("{:x}", Sha256::digest(std::fs::read(dir.path().join("train_001.bin")).unwrap()));
        assert_eq!(split.shards[1].sha256, sha);
    }
}
