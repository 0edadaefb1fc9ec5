//! Training loaders over the memory-mapped token shards of one split: random windows for training,
//! consecutive windows for validation. A window of `seq + 1` tokens gives `seq` inputs and their
//! `seq` next-token targets; windows may cross shard boundaries (the split is one token stream).

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use super::DataError;
pub use super::manifest::Manifest;

/// The tokens of one split as one stream over its shards.
struct Stream {
    shards: Vec<Mmap>,
    /// Global index of each shard's first token.
    starts: Vec<u64>,
    total: u64,
    bytes_per_token: usize,
}

impl Stream {
    fn open(dir: &Path, split: &str) -> Result<Self, DataError> {
        let manifest = Manifest::load(dir)?;
        let manifest_path = dir.join(super::manifest::MANIFEST);
        let Some(info) = manifest.split(split) else {
            let what = format!("no split \"{split}\"; the splits are \"train\" and \"val\"");
            return Err(DataError::Manifest { path: manifest_path, what });
        };
        let bytes_per_token = manifest.bytes_per_token().unwrap_or(2);
        let (mut shards, mut starts, mut total) = (Vec::new(), Vec::new(), 0u64);
        for shard in info.shards.iter().filter(|s| s.tokens > 0) {
            let path = dir.join(&shard.file);
            let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
            let len = file.metadata().map_err(|e| DataError::io(&path, e))?.len();
            if len != shard.tokens * bytes_per_token as u64 {
                let what = format!(
                    "{len} bytes, but the manifest says {} tokens of {}; prepare the data again",
                    shard.tokens, manifest.dtype
                );
                return Err(DataError::Shard { path, what });
            }
            // SAFETY: shards are written once by `data prepare` and never modified in place.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&path, e))?;
            starts.push(total);
            total += shard.tokens;
            shards.push(map);
        }
        Ok(Stream { shards, starts, total, bytes_per_token })
    }

    fn require(&self, split: &str, seq: usize) -> Result<(), DataError> {
        let need = seq as u64 + 1;
        if seq == 0 || self.total < need {
            return Err(DataError::TooShort { split: split.to_string(), tokens: self.total, need });
        }
        Ok(())
    }

    /// Copies `out.len()` tokens starting at global position `pos` (which must fit).
    fn copy(&self, mut pos: u64, out: &mut [u32]) {
        let mut done = 0;
        while done < out.len() {
            let s = self.starts.partition_point(|&st| st <= pos) - 1;
            let map = &self.shards[s];
            let offset = (pos - self.starts[s]) as usize;
            let avail = map.len() / self.bytes_per_token - offset;
            let n = avail.min(out.len() - done);
            let bytes = &map[offset * self.bytes_per_token..(offset + n) * self.bytes_per_token];
            let dst = &mut out[done..done + n];
            if self.bytes_per_token == 2 {
                for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                    *d = u16::from_le_bytes([b[0], b[1]]) as u32;
                }
            } else {
                for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                    *d = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            done += n;
            pos += n as u64;
        }
    }
}

/// Where a [`RandomWindows`] loader is in its sequence; restoring it continues exactly.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoaderState {
    pub split: String,
    pub seq: usize,
    pub total_tokens: u64,
    pub rng: ChaCha8Rng,
}

/// Windows of `seq + 1` tokens at uniformly random positions of a split, from a seeded RNG.
pub struct RandomWindows {
    stream: Stream,
    split: String,
    seq: usize,
    rng: ChaCha8Rng,
}

impl RandomWindows {
    pub fn open(data_dir: &Path, split: &str, seq: usize, seed: u64) -> Result<Self, DataError> {
        let stream = Stream::open(data_dir, split)?;
        stream.require(split, seq)?;
        Ok(RandomWindows { stream, split: split.to_string(), seq, rng: ChaCha8Rng::seed_from_u64(seed) })
    }

    /// Tokens in the split.
    pub fn total_tokens(&self) -> u64 {
        self.stream.total
    }

    /// Fills tokens[b*seq..] = window[0..seq], targets = window[1..seq+1], for b in 0..batch.
    /// tokens, targets: [batch, seq] (at least batch*seq long).
    pub fn next_batch(&mut self, batch: usize, tokens: &mut [u32], targets: &mut [u32]) {
        let seq = self.seq;
        assert!(tokens.len() >= batch * seq && targets.len() >= batch * seq, "buffers shorter than batch*seq");
        let last_start = self.stream.total - (seq as u64 + 1);
        for b in 0..batch {
            let pos = self.rng.random_range(0..=last_start);
            self.stream.copy(pos, &mut tokens[b * seq..(b + 1) * seq]);
            self.stream.copy(pos + 1, &mut targets[b * seq..(b + 1) * seq]);
        }
    }

    pub fn state(&self) -> LoaderState {
        LoaderState { split: self.split.clone(), seq: self.seq, total_tokens: self.stream.total, rng: self.rng.clone() }
    }

    /// Continues from `s`, which must come from a loader over the same split, seq and data.
    pub fn restore(&mut self, s: &LoaderState) -> Result<(), DataError> {
        if s.split != self.split || s.seq != self.seq || s.total_tokens != self.stream.total {
            return Err(DataError::State(format!(
                "saved for split {} seq {} over {} tokens, but this loader reads split {} seq {} over {} tokens",
                s.split, s.seq, s.total_tokens, self.split, self.seq, self.stream.total
            )));
        }
        self.rng = s.rng.clone();
        Ok(())
    }
}

/// Consecutive non-overlapping windows from the start of a split (for validation).
pub struct SequentialWindows {
    stream: Stream,
    seq: usize,
    next: u64,
}

impl SequentialWindows {
    pub fn open(data_dir: &Path, split: &str, seq: usize) -> Result<Self, DataError> {
        let stream = Stream::open(data_dir, split)?;
        stream.require(split, seq)?;
        Ok(SequentialWindows { stream, seq, next: 0 })
    }

    /// Tokens in the split.
    pub fn total_tokens(&self) -> u64 {
        self.stream.total
    }

    /// Number of windows in one pass over the split.
    pub fn windows(&self) -> u64 {
        (self.stream.total - 1) / self.seq as u64
    }

    /// Fills up to `batch` windows; returns how many rows were filled (0 at the end); `reset()` rewinds.
    /// tokens, targets: [batch, seq] (at least batch*seq long).
    pub fn next_batch(&mut self, batch: usize, tokens: &mut [u32], targets: &mut [u32]) -> usize {
        let seq = self.seq;
        assert!(tokens.len() >= batch * seq && targets.len() >= batch * seq, "buffers shorter than batch*seq");
        let mut rows = 0;
        while rows < batch && self.next + (seq as u64) < self.stream.total {
            self.stream.copy(self.next, &mut tokens[rows * seq..(rows + 1) * seq]);
            self.stream.copy(self.next + 1, &mut targets[rows * seq..(rows + 1) * seq]);
            self.next += seq as u64;
            rows += 1;
        }
        rows
    }

    pub fn reset(&mut self) {
        self.next = 0;
    }
}
