//! Training loaders: window contents across shards, u16 and u32 shards, determinism, exact resume
//! from a saved state, sequential validation windows, and clear errors.

use std::path::Path;

use shoucuo::data::manifest::{Filters, Manifest, Shard, Split, Splits};
use shoucuo::data::{LoaderState, RandomWindows, SequentialWindows};

/// Writes a data dir whose train split is the stream base, base+1, … cut into shards of the given
/// sizes, stored as `dtype`.
fn make_dir(dir: &Path, dtype: &str, base: u32, shard_sizes: &[u64]) {
    let mut next = base;
    let mut shards = Vec::new();
    for (i, &n) in shard_sizes.iter().enumerate() {
        let mut bytes = Vec::new();
        for _ in 0..n {
            match dtype {
                "uint16" => bytes.extend_from_slice(&(next as u16).to_le_bytes()),
                _ => bytes.extend_from_slice(&next.to_le_bytes()),
            }
            next += 1;
        }
        let file = format!("train_{i:03}.bin");
        std::fs::write(dir.join(&file), bytes).unwrap();
        shards.push(Shard { file, tokens: n, sha256: String::new() });
    }
    let tokens = shard_sizes.iter().sum();
    let m = Manifest {
        format_version: 1,
        dtype: dtype.into(),
        vocab_size: 100_000,
        eos_id: 0,
        tokenizer: "tok".into(),
        seed: 0,
        val_fraction: 0.0,
        sources: vec![],
        filters: Filters::default(),
        splits: Splits { train: Split { docs: 1, tokens, shards }, val: Split::default() },
    };
    std::fs::write(dir.join("manifest.json"), serde_json::to_string(&m).unwrap()).unwrap();
}

fn batch(l: &mut RandomWindows, b: usize, seq: usize) -> (Vec<u32>, Vec<u32>) {
    let (mut x, mut y) = (vec![0; b * seq], vec![0; b * seq]);
    l.next_batch(b, &mut x, &mut y);
    (x, y)
}

#[test]
fn random_windows_are_contiguous_across_shards_for_u16_and_u32() {
    for (dtype, base) in [("uint16", 5u32), ("uint32", 70_000)] {
        let dir = tempfile::tempdir().unwrap();
        make_dir(dir.path(), dtype, base, &[7, 3, 20, 1, 9]);
        let seq = 6;
        let mut l = RandomWindows::open(dir.path(), "train", seq, 42).unwrap();
        assert_eq!(l.total_tokens(), 40);
        let mut starts = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let (x, y) = batch(&mut l, 4, seq);
            for row in 0..4 {
                let (xr, yr) = (&x[row * seq..][..seq], &y[row * seq..][..seq]);
                assert!(xr[0] >= base && xr[0] + seq as u32 <= base + 39, "{dtype}: window out of range {xr:?}");
                for j in 0..seq {
                    assert_eq!(xr[j], xr[0] + j as u32, "{dtype}: tokens not contiguous {xr:?}");
                    assert_eq!(yr[j], xr[j] + 1, "{dtype}: targets are not the next tokens");
                }
                starts.insert(xr[0]);
            }
        }
        // Every start position 0..=33 is reachable, including the last one.
        assert_eq!(starts.len(), 34, "{dtype}: {starts:?}");
    }
}

#[test]
fn same_seed_same_batches_and_resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    make_dir(dir.path(), "uint16", 0, &[500, 300]);
    let seq = 16;
    let mut a = RandomWindows::open(dir.path(), "train", seq, 7).unwrap();
    let mut b = RandomWindows::open(dir.path(), "train", seq, 7).unwrap();
    let mut c = RandomWindows::open(dir.path(), "train", seq, 8).unwrap();
    assert_eq!(batch(&mut a, 8, seq), batch(&mut b, 8, seq));
    let (xa, _) = batch(&mut a, 8, seq);
    let (xc, _) = batch(&mut c, 8, seq);
    assert_ne!(xa, xc, "a different seed must give different windows");

    // Save, serialize, continue; a fresh loader restored from the saved state yields the same batches.
    let saved: LoaderState = serde_json::from_str(&serde_json::to_string(&a.state()).unwrap()).unwrap();
    assert_eq!(saved, a.state());
    let expected: Vec<_> = (0..5).map(|_| batch(&mut a, 3, seq)).collect();
    let mut fresh = RandomWindows::open(dir.path(), "train", seq, 999).unwrap();
    fresh.restore(&saved).unwrap();
    let resumed: Vec<_> = (0..5).map(|_| batch(&mut fresh, 3, seq)).collect();
    assert_eq!(expected, resumed);
    assert_eq!(fresh.state(), a.state());

    let mut other_seq = RandomWindows::open(dir.path(), "train", seq + 1, 7).unwrap();
    let err = other_seq.restore(&saved).unwrap_err().to_string();
    assert!(err.contains("seq 16") && err.contains("seq 17"), "{err}");
}

#[test]
fn sequential_windows_cover_the_split_in_order_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    make_dir(dir.path(), "uint32", 100, &[10, 15]);
    let seq = 4;
    let mut l = SequentialWindows::open(dir.path(), "train", seq).unwrap();
    assert_eq!(l.windows(), 6); // 25 tokens: windows of 5 start at 0, 4, …, 20
    let (mut x, mut y) = (vec![0; 4 * seq], vec![0; 4 * seq]);
    assert_eq!(l.next_batch(4, &mut x, &mut y), 4);
    assert_eq!(&x[..8], &[100, 101, 102, 103, 104, 105, 106, 107]);
    assert_eq!(&y[12..16], &[113, 114, 115, 116]);
    assert_eq!(l.next_batch(4, &mut x, &mut y), 2);
    assert_eq!(&x[4..8], &[120, 121, 122, 123]);
    assert_eq!(&y[4..8], &[121, 122, 123, 124]);
    assert_eq!(l.next_batch(4, &mut x, &mut y), 0);
    l.reset();
    assert_eq!(l.next_batch(1, &mut x, &mut y), 1);
    assert_eq!(&x[..4], &[100, 101, 102, 103]);
}

#[test]
fn clear_errors_for_short_splits_missing_splits_and_damaged_shards() {
    let dir = tempfile::tempdir().unwrap();
    make_dir(dir.path(), "uint16", 0, &[5, 3]);
    let err = RandomWindows::open(dir.path(), "train", 8, 0).err().unwrap().to_string();
    assert!(err.contains("has 8 tokens but a window needs 9"), "{err}");
    let err = SequentialWindows::open(dir.path(), "val", 4).err().unwrap().to_string();
    assert!(err.contains("\"val\" has 0 tokens"), "{err}");
    let err = SequentialWindows::open(dir.path(), "test", 4).err().unwrap().to_string();
    assert!(err.contains("no split \"test\""), "{err}");
    std::fs::write(dir.path().join("train_001.bin"), [0u8; 5]).unwrap();
    let err = RandomWindows::open(dir.path(), "train", 2, 0).err().unwrap().to_string();
    assert!(err.contains("train_001.bin") && err.contains("prepare the data again"), "{err}");
    let err = RandomWindows::open(&dir.path().join("nope"), "train", 2, 0).err().unwrap().to_string();
    assert!(err.contains("manifest.json"), "{err}");
}
