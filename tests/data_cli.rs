//! The `tokenizer` and `data` commands end to end through the binary: training, stats, encode/decode,
//! prepare, and a bad input line reported with file:line and a non-zero exit.

use std::path::Path;
use std::process::Command;

fn shoucuo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shoucuo")).args(args).output().unwrap()
}

#[test]
fn train_inspect_prepare_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tang-poems-sample.jsonl").display().to_string();

    let out = shoucuo(&["tokenizer", "train", "--input", &sample, "--vocab-size", "300", "--out", &d("tok")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("tok/tokenizer_config.json").exists());

    let out = shoucuo(&["tokenizer", "stats", "--tokenizer", &d("tok"), "--input", &sample]);
    let stats = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stats.contains("vocab size        300") && stats.contains("chars per token"), "{stats}");

    let out = shoucuo(&["tokenizer", "encode", "--tokenizer", &d("tok"), "--text", "明月光"]);
    let ids = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let tok = d("tok");
    let mut args = vec!["tokenizer", "decode", "--tokenizer", &tok];
    let ids: Vec<&str> = ids.split(' ').collect();
    args.extend(ids.iter().copied());
    let out = shoucuo(&args);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "明月光\n");

    let out = shoucuo(&["data", "prepare", "--input", &sample, "--tokenizer", &d("tok"), "--out", &d("data")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = shoucuo::data::Manifest::load(&dir.path().join("data")).unwrap();
    assert!(m.splits.train.tokens > 10_000 && m.vocab_size == 300);

    std::fs::write(dir.path().join("bad.txt"), "ok\nbad\n").unwrap();
    let out = shoucuo(&["data", "prepare", "--input", &d("bad.txt"), "--tokenizer", &d("tok"), "--out", &d("bad")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:1: invalid JSON", d("bad.txt"))) && err.contains("--format txt"), "{err}");
    assert!(!dir.path().join("bad").exists());
}
