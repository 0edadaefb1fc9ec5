//! End-to-end pretraining through the binary: exact resume after SIGKILL (also during saves),
//! and non-finite steps that never reach the weights.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoucuo"))
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Tokenizer + shards of the bundled test slice, shared by the tests of this file.
fn prepared(root: &Path) -> (PathBuf, PathBuf) {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tang-poems-sample.jsonl");
    let (tok, data) = (root.join("tok"), root.join("data"));
    run_ok(
        bin()
            .args(["tokenizer", "train", "--format", "jsonl", "--field", "text", "--vocab-size", "400"])
            .arg("--input")
            .arg(&sample)
            .arg("--out")
            .arg(&tok),
    );
    run_ok(
        bin()
            .args(["data", "prepare", "--format", "jsonl", "--field", "text", "--val-fraction", "0.1"])
            .arg("--input")
            .arg(&sample)
            .arg("--tokenizer")
            .arg(&tok)
            .arg("--out")
            .arg(&data),
    );
    (tok, data)
}

fn write_recipe(root: &Path, data: &Path, tok: &Path, out: &Path, extra: &str) -> PathBuf {
    let recipe = format!(
        r#"
[model]
dim = 32
n_layers = 2
n_heads = 4
n_kv_heads = 2
head_dim = 12
ffn_hidden = 64

[data]
dir = "{}"
tokenizer = "{}"

[train]
out_dir = "{}"
micro_batch = 4
seq_len = 32
grad_accum = 2
lr = 3e-3
min_lr = 3e-4
warmup_steps = 5
max_steps = 160
eval_interval = 40
eval_iters = 2
save_interval = 1
keep_last = 2
log_interval = 1
seed = 7
{extra}
"#,
        data.display(),
        tok.display(),
        out.display()
    );
    let path = root.join(format!("{}.toml", out.file_name().unwrap().to_string_lossy()));
    std::fs::write(&path, recipe).unwrap();
    path
}

fn losses(run: &Path) -> Vec<(usize, String, Option<String>)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap() as usize, v["loss"].to_string(), v.get("val_loss").map(|x| x.to_string()))
        })
        .collect()
}

fn latest_step(run: &Path) -> usize {
    std::fs::read_to_string(run.join("latest"))
        .ok()
        .and_then(|s| s.trim().trim_start_matches("step-").parse().ok())
        .unwrap_or(0)
}

#[test]
fn sigkill_at_any_moment_then_resume_matches_uninterrupted_run() {
    let root = tempfile::tempdir().unwrap();
    let (tok, data) = prepared(root.path());
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let ra = write_recipe(root.path(), &data, &tok, &a, "");
    let rb = write_recipe(root.path(), &data, &tok, &b, "");
    run_ok(bin().args(["pretrain", "--config"]).arg(&ra));

    // Kill the run after each of these steps; every other time only once a checkpoint save is
    // under way (its temporary directory exists), so that kills land inside saves too.
    let tmp_dirs = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".tmp-"))
            .count()
    };
    let mut partial_saves = 0;
    for (i, target) in [15usize, 45, 75, 105, 135].into_iter().enumerate() {
        let mut child =
            bin().args(["pretrain", "--resume", "--config"]).arg(&rb).stderr(Stdio::null()).spawn().unwrap();
        while (latest_step(&b) < target || (i % 2 == 1 && tmp_dirs(&b) == 0)) && child.try_wait().unwrap().is_none() {
            std::hint::spin_loop();
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before step {target}; make it longer");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        partial_saves += tmp_dirs(&b);
        assert!(latest_step(&b) < 160);
    }
    assert!(partial_saves >= 1, "no kill landed inside a checkpoint save");
    run_ok(bin().args(["pretrain", "--resume", "--config"]).arg(&rb));

    let final_a = std::fs::read(a.join("step-000160/model.safetensors")).unwrap();
    let final_b = std::fs::read(b.join("step-000160/model.safetensors")).unwrap();
    assert!(final_a == final_b, "resumed run ended with different parameters");
    assert_eq!(losses(&a), losses(&b), "resumed run has a different loss curve");
    assert_eq!(losses(&a).len(), 160);
    assert!(a.join("loss.png").is_file());
    let kept: Vec<_> = std::fs::read_dir(&a)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .collect();
    assert_eq!(kept.len(), 2, "keep_last = 2");
}

#[test]
fn non_finite_steps_are_skipped_and_stop_the_run() {
    let root = tempfile::tempdir().unwrap();
    let (tok, data) = prepared(root.path());
    let run = root.path().join("nan");
    let recipe = write_recipe(root.path(), &data, &tok, &run, "max_bad_steps = 3");
    let out = bin()
        .args(["pretrain", "--config"])
        .arg(&recipe)
        .args([
            "--set",
            "train.lr=1e30",
            "--set",
            "train.min_lr=0",
            "--set",
            "train.warmup_steps=0",
            "--set",
            "train.save_interval=100",
            "--set",
            "train.grad_clip=0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("non-finite") && err.contains("3 steps in a row"), "{err}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.matches("update skipped").count(), 3);
    assert!(!run.join("latest").exists(), "no checkpoint may be written");
}

#[test]
fn run_states_portability_and_refuses_to_overwrite_without_resume() {
    let root = tempfile::tempdir().unwrap();
    let (tok, data) = prepared(root.path());
    let run = root.path().join("r");
    let recipe = write_recipe(root.path(), &data, &tok, &run, "");
    let first =
        bin().args(["pretrain", "--config"]).arg(&recipe).args(["--set", "train.max_steps=3"]).output().unwrap();
    assert!(first.status.success());
    // The run starts by stating which tools will load its shape (4 heads of 12 on dim 32).
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(err.contains("loads in: transformers, llama.cpp (GGUF)"), "{err}");
    assert!(err.contains("llama2.c: will NOT load"), "{err}");
    let out = bin().args(["pretrain", "--config"]).arg(&recipe).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --resume"));
}
