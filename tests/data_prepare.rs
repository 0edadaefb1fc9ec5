//! `data prepare`: filters and their counts, shard contents, split determinism, input formats,
//! error messages with file:line, and the all-or-nothing output directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use shoucuo::data::{DataError, Format, Manifest, PrepareOptions, prepare};
use shoucuo::tokenizer::Tok;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tok_dir() -> PathBuf {
    root().join("tests/fixtures/tok_small")
}

fn opts(inputs: Vec<PathBuf>, out: &Path) -> PrepareOptions {
    PrepareOptions {
        inputs,
        format: Format::Jsonl,
        field: "text".into(),
        tokenizer: tok_dir(),
        out: out.to_path_buf(),
        val_fraction: 0.0,
        exact_dedup: true,
        minhash_threshold: Some(0.8),
        minhash_ngram: 5,
        min_chars: 1,
        seed: 1,
        skip_bad: false,
        shard_tokens: 100_000_000,
        force: false,
        progress: false,
    }
}

/// All documents of a split, decoded, in order (split at `<|endoftext|>`).
fn docs_of(dir: &Path, split: &str) -> Vec<String> {
    let m = Manifest::load(dir).unwrap();
    assert_eq!(m.dtype, "uint16");
    let tok = Tok::load(&tok_dir()).unwrap();
    let mut ids = Vec::new();
    for shard in &m.split(split).unwrap().shards {
        let bytes = std::fs::read(dir.join(&shard.file)).unwrap();
        assert_eq!(bytes.len() as u64, shard.tokens * 2, "{}: flat u16 array", shard.file);
        ids.extend(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32));
    }
    assert_eq!(ids.last(), if ids.is_empty() { None } else { Some(&m.eos_id) }, "documents end with eos");
    ids.split(|&i| i == m.eos_id).filter(|d| !d.is_empty()).map(|d| tok.decode(d)).collect()
}

#[test]
fn tinystories_zh_shape_with_filters_counted() {
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("data");
    let input = root().join("tests/fixtures/data_tinystories_zh.jsonl");
    let mut o = opts(vec![input.clone()], &data);
    o.field = "story_zh".into();
    o.min_chars = 10;
    let m = prepare(&o).unwrap().manifest;
    let f = &m.filters;
    assert_eq!((f.docs_read, f.too_short, f.exact_duplicates, f.near_duplicates), (12, 1, 1, 1));
    assert_eq!(m.splits.train.docs, 9);
    assert_eq!(m.vocab_size, 800);
    let expected: Vec<String> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["story_zh"].as_str().unwrap().to_string())
        .enumerate()
        .filter(|(i, _)| ![5, 6, 7].contains(i)) // exact dup, near dup, too short
        .map(|(_, s)| s)
        .collect();
    assert_eq!(docs_of(&data, "train"), expected);
    assert_eq!(m.splits.train.tokens, m.splits.train.shards.iter().map(|s| s.tokens).sum::<u64>());
    // Without dedup every long-enough document stays.
    let mut o2 = opts(vec![input], &out.path().join("nodedup"));
    o2.field = "story_zh".into();
    o2.exact_dedup = false;
    o2.minhash_threshold = None;
    assert_eq!(prepare(&o2).unwrap().manifest.splits.train.docs, 12);
}

#[test]
fn split_is_deterministic_from_the_seed_and_shards_roll_over() {
    let dir = tempfile::tempdir().unwrap();
    let sample = root().join("data/tang-poems-sample.jsonl");
    let run = |name: &str, seed: u64| {
        let mut o = opts(vec![sample.clone()], &dir.path().join(name));
        o.val_fraction = 0.2;
        o.seed = seed;
        o.shard_tokens = 5000;
        prepare(&o).unwrap().manifest
    };
    let (a, b, c) = (run("a", 5), run("b", 5), run("c", 6));
    assert_eq!(a.splits, b.splits, "same seed, same shards (sha256 included)");
    assert_ne!(a.splits.val, c.splits.val, "another seed, another split");
    let total = a.splits.train.docs + a.splits.val.docs;
    assert_eq!(total, a.filters.docs_read - a.filters.exact_duplicates - a.filters.near_duplicates);
    let val_share = a.splits.val.docs as f64 / total as f64;
    assert!((0.12..0.28).contains(&val_share), "val share {val_share}");
    assert!(a.splits.train.shards.len() > 2);
    assert!(a.splits.train.shards.iter().rev().skip(1).all(|s| s.tokens == 5000));
    assert_eq!(a.splits.train.shards[1].file, "train_001.bin");
    // Every poem lands in exactly one split.
    let mut all = docs_of(&dir.path().join("a"), "train");
    all.extend(docs_of(&dir.path().join("a"), "val"));
    assert_eq!(all.len() as u64, total);
    assert!(all.iter().all(|d| d.starts_with('《')));
    // The loaders read what prepare wrote.
    let mut l = shoucuo::data::RandomWindows::open(&dir.path().join("a"), "train", 32, 0).unwrap();
    assert_eq!(l.total_tokens(), a.splits.train.tokens);
    let (mut x, mut y) = (vec![0; 64], vec![0; 64]);
    l.next_batch(2, &mut x, &mut y);
    assert!(x.iter().chain(&y).all(|&t| (t as usize) < a.vocab_size));
    assert_eq!(x[1..32], y[..31]);
}

#[test]
fn txt_and_gzip_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("a.txt");
    std::fs::write(&txt, "第一行文字。\n\n   \n第二行 <|endoftext|> 文字。\r\n").unwrap();
    let mut o = opts(vec![txt], &dir.path().join("t"));
    o.format = Format::Txt;
    prepare(&o).unwrap();
    // A literal special-token string inside a document is text, not a document boundary.
    assert_eq!(docs_of(&dir.path().join("t"), "train"), ["第一行文字。", "第二行 <|endoftext|> 文字。"]);

    let gz = dir.path().join("b.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    enc.write_all("{\"text\": \"春眠不觉晓\"}\n{\"text\": \"处处闻啼鸟\"}\n".as_bytes()).unwrap();
    enc.finish().unwrap();
    prepare(&opts(vec![gz], &dir.path().join("g"))).unwrap();
    assert_eq!(docs_of(&dir.path().join("g"), "train"), ["春眠不觉晓", "处处闻啼鸟"]);
}

#[test]
fn bad_lines_name_file_and_line_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[u8], &str); 4] = [
        (b"{\"text\": \"ok\"}\n{\"text\": \"ok2\"}\n{\"text\": oops}\n", ":3: invalid JSON"),
        (b"{\"text\": \"ok\"}\n{\"text\": \"\xff\xfe\"}\n", ":2: invalid UTF-8"),
        (b"{\"story\": \"no text field\"}\n", ":1: missing field \"text\""),
        (b"\n[1, 2]\n", ":2: the line is JSON but not an object"),
    ];
    for (i, (content, what)) in cases.iter().enumerate() {
        let input = dir.path().join(format!("bad{i}.jsonl"));
        std::fs::write(&input, content).unwrap();
        let out = dir.path().join(format!("out{i}"));
        let err = prepare(&opts(vec![input.clone()], &out)).err().unwrap();
        assert!(matches!(err, DataError::BadLine { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{}{what}", input.display())), "{msg}");
        assert!(msg.ends_with("; fix the line or pass --skip-bad"), "{msg}");
        assert!(!out.exists(), "no partial output directory");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary directories must be removed");

    let mut o = opts((0..4).map(|i| dir.path().join(format!("bad{i}.jsonl"))).collect(), &dir.path().join("skip"));
    o.skip_bad = true;
    let m = prepare(&o).unwrap().manifest;
    assert_eq!(m.filters.bad_lines, 4);
    assert_eq!(docs_of(&dir.path().join("skip"), "train"), ["ok", "ok2"]);
}

#[test]
fn existing_output_is_kept_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let input = root().join("tests/fixtures/data_tinystories_zh.jsonl");
    let mut o = opts(vec![input], &out);
    o.field = "story_zh".into();
    let err = prepare(&o).err().unwrap().to_string();
    assert!(err.contains("already exists") && err.contains("--force"), "{err}");
    assert!(out.join("keep.txt").exists());
    o.force = true;
    prepare(&o).unwrap();
    assert!(!out.join("keep.txt").exists() && out.join("manifest.json").exists());
}
