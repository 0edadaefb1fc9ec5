//! Duplicate detection: exact (content hash) and near-duplicate (MinHash over character n-gram
//! shingles, with LSH banding). Character shingles need no word segmentation, which suits Chinese.

use std::collections::HashSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// The most hash functions a signature uses (bands × rows ≤ this).
const MAX_PERMS: usize = 128;

/// 128-bit content hash of a document (first half of its SHA-256).
pub fn content_hash(text: &str) -> u128 {
    let digest = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

/// splitmix64 finaliser: a fast, well-mixed 64-bit hash step.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// MinHash signatures cut into LSH bands. Two documents whose shingle sets have Jaccard
/// similarity s share at least one band with probability 1 - (1 - s^rows)^bands; `bands` and
/// `rows` are chosen so this S-curve switches at the threshold.
pub struct MinHasher {
    /// One seed per hash function; `rows` consecutive functions form a band.
    seeds: Vec<u64>,
    rows: usize,
    ngram: usize,
}

impl MinHasher {
    /// `threshold` in (0, 1); `ngram` ≥ 1 characters per shingle; `seed` picks the hash functions.
    pub fn new(threshold: f64, ngram: usize, seed: u64) -> Self {
        let (bands, rows) = lsh_params(threshold);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1);
        let seeds = (0..bands * rows).map(|_| rng.random()).collect();
        MinHasher { seeds, rows, ngram: ngram.max(1) }
    }

    /// One key per band: the band's slice of the MinHash signature hashed with the band index.
    pub fn band_keys(&self, text: &str) -> Vec<u64> {
        let chars: Vec<u32> = text.chars().map(u32::from).collect();
        let mut sig = vec![u64::MAX; self.seeds.len()];
        let n = self.ngram.min(chars.len()).max(1);
        for shingle in chars.windows(n) {
            let h = shingle.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| mix(h ^ u64::from(c)));
            for (s, &seed) in sig.iter_mut().zip(&self.seeds) {
                *s = (*s).min(mix(h ^ seed));
            }
        }
        sig.chunks(self.rows)
            .enumerate()
            .map(|(band, rows)| rows.iter().fold(mix(band as u64), |h, &v| mix(h ^ v)))
            .collect()
    }
}

/// (bands, rows) with bands × rows ≤ 128 minimising the false-positive plus false-negative area
/// of the LSH S-curve around `threshold`.
fn lsh_params(threshold: f64) -> (usize, usize) {
    let steps = 200;
    let area = |f: &dyn Fn(f64) -> f64, lo: f64, hi: f64| {
        let w = (hi - lo) / steps as f64;
        (0..steps).map(|i| f(lo + (i as f64 + 0.5) * w) * w).sum::<f64>()
    };
    let mut best = (1, 1, f64::INFINITY);
    for bands in 1..=MAX_PERMS {
        for rows in 1..=MAX_PERMS / bands {
            let p = |s: f64| 1.0 - (1.0 - s.powi(rows as i32)).powi(bands as i32);
            let err = area(&p, 0.0, threshold) + area(&|s| 1.0 - p(s), threshold, 1.0);
            if err < best.2 {
                best = (bands, rows, err);
            }
        }
    }
    (best.0, best.1)
}

/// Band keys of the documents kept so far.
#[derive(Default)]
pub struct NearDupIndex {
    seen: HashSet<u64>,
}

impl NearDupIndex {
    /// True when a band of `keys` matches an earlier kept document; otherwise records `keys`.
    pub fn is_duplicate(&mut self, keys: &[u64]) -> bool {
        if keys.iter().any(|k| self.seen.contains(k)) {
            return true;
        }
        self.seen.extend(keys.iter().copied());
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jaccard_detects(a: &str, b: &str, threshold: f64) -> bool {
        let h = MinHasher::new(threshold, 5, 1);
        let mut idx = NearDupIndex::default();
        assert!(!idx.is_duplicate(&h.band_keys(a)));
        idx.is_duplicate(&h.band_keys(b))
    }

    #[test]
    fn lsh_curve_switches_near_threshold() {
        for t in [0.5, 0.7, 0.8, 0.9] {
            let (b, r) = lsh_params(t);
            assert!(b * r <= MAX_PERMS);
            let p = |s: f64| 1.0 - (1.0 - s.powi(r as i32)).powi(b as i32);
            assert!(p(t - 0.2) < 0.2 && p((t + 0.1).min(1.0)) > 0.8, "t={t} b={b} r={r}");
        }
    }

    #[test]
    fn near_duplicates_are_found_and_different_texts_are_not() {
        let base = "从前有一个小女孩，她叫莉莉。她非常喜欢在花园里玩耍，每天都会给花浇水，还会和小鸟说话。有一天，她在花园里发现了一只受伤的小猫。";
        let edited = base.replacen("小猫", "小狗", 1);
        let other =
            "小明和他的爸爸一起去海边钓鱼。他们坐在船上等了很久，终于钓到了一条大鱼，小明高兴得跳了起来，爸爸也笑了。";
        assert!(jaccard_detects(base, &edited, 0.8));
        assert!(!jaccard_detects(base, other, 0.8));
    }
}
