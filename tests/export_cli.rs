//! The `model check`, `export` and `import` commands as a user runs them.

use shoucuo::model::params::init_params;
use shoucuo::model::weights::save_model_dir;
use shoucuo::model::{ModelConfig, ParamLayout};
use std::path::Path;
use std::process::Command;

fn shoucuo(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoucuo")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn model(dir: &Path, n_heads: usize, head_dim: usize) {
    let c = ModelConfig {
        vocab_size: 800,
        dim: 32,
        n_layers: 1,
        n_heads,
        n_kv_heads: n_heads,
        head_dim,
        ffn_hidden: 64,
        max_seq_len: 16,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tie_embeddings: true,
    };
    save_model_dir(dir, &c, &init_params(&c, &ParamLayout::new(&c), 1), None, Some(0)).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(Path::new("tests/fixtures/tok_small").join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn check_export_and_import_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s).display().to_string();
    model(&tmp.path().join("odd"), 6, 4); // 32 is not a multiple of 6 heads
    let (ok, out, _) = shoucuo(&["model", "check", "--config", &p("odd")]);
    assert!(ok);
    assert!(out.contains("parameters: ") && out.contains("transformers: will NOT load"), "{out}");
    assert!(out.contains("llama.cpp (GGUF): loads") && out.contains("llama2.c: will NOT load"), "{out}");

    let (ok, _, err) = shoucuo(&["export", "--model", &p("odd"), "--format", "hf", "--out", &p("odd-hf")]);
    assert!(!ok && err.contains("not a multiple of num_attention_heads") && err.contains("--force"), "{err}");
    let (ok, _, err) = shoucuo(&["export", "--model", &p("odd"), "--format", "hf", "--out", &p("odd-hf"), "--force"]);
    assert!(ok, "{err}");

    model(&tmp.path().join("m"), 4, 8);
    let (ok, _, err) =
        shoucuo(&["export", "--model", &p("m"), "--format", "gguf", "--dtype", "q8_0", "--out", &p("m.gguf")]);
    assert!(ok, "{err}");
    let g = shoucuo::export::gguf::Gguf::read(&tmp.path().join("m.gguf")).unwrap();
    assert_eq!(g.tensor("blk.0.attn_q.weight").unwrap().ty, shoucuo::export::gguf::GgmlType::Q8_0);

    let (ok, _, err) = shoucuo(&["import", "--from", "hf", &p("m"), "--out", &p("m2")]);
    assert!(ok, "{err}");
    let (ok, out, err) =
        shoucuo(&["generate", "--model", &p("m2"), "--prompt", "春", "--temperature", "0", "--max-new-tokens", "4"]);
    assert!(ok && out.starts_with("春"), "{err}");
    let (ok, _, err) = shoucuo(&["import", "--from", "hf", &p("nowhere"), "--out", &p("m3")]);
    assert!(!ok && err.contains("nowhere") && err.contains("not a model directory"), "{err}");
}
