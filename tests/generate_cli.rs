//! `shoucuo generate` and `shoucuo chat` on a tiny random model directory.

use shoucuo::model::config::ModelConfig;
use shoucuo::model::params::{ParamLayout, init_params};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const V: usize = 40;

/// A model directory with a word-level tokenizer ("w0".."w36" plus ChatML and end-of-text tokens).
fn model_dir(dir: &Path, chat: bool) {
    let c = ModelConfig {
        vocab_size: V,
        dim: 32,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 16,
        ffn_hidden: 48,
        max_seq_len: 32,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tie_embeddings: true,
    };
    let p: Vec<f32> = init_params(&c, &ParamLayout::new(&c), 2).into_iter().map(|v| v * 6.0).collect();
    shoucuo::model::weights::save_model_dir(dir, &c, &p, None, Some(0)).unwrap();
    let mut vocab: serde_json::Map<String, serde_json::Value> =
        (3..V).map(|i| (format!("w{i}"), (i as u32).into())).collect();
    let special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut added = vec![];
    for (i, s) in special.iter().enumerate() {
        vocab.insert(s.to_string(), i.into());
        added.push(serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}));
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w3"}
    });
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let mut tc = serde_json::json!({"eos_token": "<|endoftext|>"});
    if chat {
        tc["chat_template"] = "{% for m in messages %}...{% endfor %}".into();
    }
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
}

fn shoucuo(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoucuo"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // a run that fails before reading its input closes the pipe: that is for the caller to check
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn generate_prompt_stream_and_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    model_dir(dir.path(), false);
    let m = dir.path().to_str().unwrap();
    let base = ["generate", "--model", m, "--prompt", "w5 w6", "--max-new-tokens", "6", "--seed", "3"];
    let plain = shoucuo(&base, "");
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let streamed = shoucuo(&[&base[..], &["--stream"]].concat(), "");
    assert!(streamed.status.success(), "{}", text(&streamed.stderr));
    assert!(text(&plain.stdout).starts_with("w5 w6"));
    // the word-level decoder joins words with spaces, the stream concatenates pieces: compare words
    let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>().concat();
    assert_eq!(words(&text(&plain.stdout)), words(&text(&streamed.stdout)));
    // The load line reports the cache the run allocates: q8 (1 byte + scales) < f16 < f32.
    let kib = |stderr: &str, kv: &str| -> f64 {
        let at = stderr.find(&format!("KV cache {kv} at ")).unwrap_or_else(|| panic!("{kv}: {stderr}"));
        let words: Vec<&str> = stderr[at..].split_whitespace().collect();
        assert_eq!(words[5], "KiB", "{stderr}");
        words[4].parse().unwrap()
    };
    let sizes: Vec<f64> = ["f32", "f16", "q8"]
        .iter()
        .map(|kv| {
            let r = shoucuo(&[&base[..], &["--kv-cache", kv]].concat(), "");
            assert!(r.status.success() && text(&r.stdout).starts_with("w5 w6"), "{kv}: {}", text(&r.stderr));
            kib(&text(&r.stderr), kv)
        })
        .collect();
    assert!(sizes[0] == 2.0 * sizes[1] && sizes[1] > sizes[2] && sizes[2] > 0.0, "{sizes:?}");
    let r = shoucuo(&[&base[..], &["--kv-cache", "q4"]].concat(), "");
    assert!(!r.status.success() && text(&r.stderr).contains("use f16, f32 or q8"), "{}", text(&r.stderr));
    // Out-of-range settings are refused with what the range is (negative numbers reach that check
    // instead of being taken for flags); a negative frequency penalty is allowed.
    for (flag, value, want) in [
        ("--temperature", "-1", "temperature must be >= 0"),
        ("--top-p", "0", "top-p must be in (0, 1]"),
        ("--repetition-penalty", "-1", "repetition-penalty must be > 0"),
    ] {
        let r = shoucuo(&[&base[..], &[flag, value]].concat(), "");
        assert!(!r.status.success() && text(&r.stderr).contains(want), "{flag} {value}: {}", text(&r.stderr));
    }
    let r = shoucuo(&["generate", "--model", m, "--prompt", "w5", "--max-new-tokens", "0"], "");
    assert!(
        !r.status.success() && text(&r.stderr).contains("max-new-tokens must be at least 1"),
        "{}",
        text(&r.stderr)
    );
    let r = shoucuo(&[&base[..], &["--frequency-penalty", "-0.5"]].concat(), "");
    assert!(r.status.success() && text(&r.stdout).starts_with("w5 w6"), "{}", text(&r.stderr));

    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt\": \"w7\", \"id\": 7}\n\n{\"id\": 8, \"prompt\": \"w8 w9 w10\"}\n").unwrap();
    let output = dir.path().join("out.jsonl");
    let (i, o) = (input.to_str().unwrap(), output.to_str().unwrap());
    let r = shoucuo(
        &[
            "generate",
            "--model",
            m,
            "--input",
            i,
            "--output",
            o,
            "--batch-size",
            "2",
            "--temperature",
            "0",
            "--max-new-tokens",
            "4",
        ],
        "",
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!((lines[0]["id"].as_i64(), lines[1]["prompt"].as_str()), (Some(7), Some("w8 w9 w10")));
    assert!(lines.iter().all(|l| l["completion"].is_string()));
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    model_dir(dir.path(), false);
    let m = dir.path().to_str().unwrap();
    let r = shoucuo(&["generate", "--model", "/nonexistent/dir", "--prompt", "w5"], "");
    assert!(!r.status.success() && text(&r.stderr).contains("not a model directory"), "{}", text(&r.stderr));
    // a folder without config.json: the file is named, its cause said once
    let empty = tempfile::tempdir().unwrap();
    let r = shoucuo(&["generate", "--model", empty.path().to_str().unwrap(), "--prompt", "w5"], "");
    let err = text(&r.stderr);
    assert!(!r.status.success() && err.contains("config.json") && err.matches("os error").count() == 1, "{err}");
    // a training run's directory points at its latest checkpoint
    std::fs::write(empty.path().join("latest"), "step-000010\n").unwrap();
    let ck = empty.path().join("step-000010");
    std::fs::create_dir(&ck).unwrap();
    std::fs::copy(dir.path().join("config.json"), ck.join("config.json")).unwrap();
    std::fs::write(ck.join("trainer_state.json"), "{}").unwrap();
    let r = shoucuo(&["generate", "--model", empty.path().to_str().unwrap(), "--prompt", "w5"], "");
    let err = text(&r.stderr);
    assert!(!r.status.success() && err.contains("is a training run") && err.contains("step-000010"), "{err}");
    let long = vec!["w5"; 40].join(" ");
    let r = shoucuo(&["generate", "--model", m, "--prompt", &long], "");
    assert!(!r.status.success() && text(&r.stderr).contains("context window"), "{}", text(&r.stderr));
    let r = shoucuo(&["generate", "--model", m, "--prompt", "w5", "--stop", ""], "");
    assert!(!r.status.success() && text(&r.stderr).contains("stop string is empty"), "{}", text(&r.stderr));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"w5\"}\n{\"text\": 1}\n").unwrap();
    let out = dir.path().join("o.jsonl");
    let r =
        shoucuo(&["generate", "--model", m, "--input", bad.to_str().unwrap(), "--output", out.to_str().unwrap()], "");
    assert!(!r.status.success() && text(&r.stderr).contains("bad.jsonl:2"), "{}", text(&r.stderr));
    // weights that do not match config.json
    let cfg_path = dir.path().join("config.json");
    let cfg =
        std::fs::read_to_string(&cfg_path).unwrap().replace("\"intermediate_size\": 48", "\"intermediate_size\": 64");
    std::fs::write(&cfg_path, cfg).unwrap();
    let r = shoucuo(&["generate", "--model", m, "--prompt", "w5"], "");
    let err = text(&r.stderr);
    assert!(!r.status.success() && err.contains("shape") && !err.contains("panicked"), "{err}");
}

#[test]
fn chat_and_completion_modes() {
    let dir = tempfile::tempdir().unwrap();
    model_dir(dir.path(), true);
    let m = dir.path().to_str().unwrap();
    let r = shoucuo(&["chat", "--model", m, "--max-new-tokens", "3"], "w5 w6\n/reset\nw7\n/exit\nw8\n");
    let err = text(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("chat mode") && err.contains("conversation cleared"), "{err}");
    // two answers (w8 comes after /exit and is never read)
    assert_eq!(err.matches("> ").count(), 4, "{err}");
    // history longer than the window is trimmed, not an error
    let many = "w5 w6 w7 w8 w9\n".repeat(12);
    let r = shoucuo(&["chat", "--model", m, "--max-new-tokens", "3"], &many);
    assert!(r.status.success() && !text(&r.stderr).contains("too long"), "{}", text(&r.stderr));

    let base = tempfile::tempdir().unwrap();
    model_dir(base.path(), false);
    let r = shoucuo(&["chat", "--model", base.path().to_str().unwrap(), "--max-new-tokens", "3"], "w9 w10\n");
    assert!(r.status.success() && text(&r.stderr).contains("completion mode"), "{}", text(&r.stderr));
    assert!(text(&r.stdout).starts_with("w9 w10"));

    // --mode overrides; a checkpoint of shoucuo's pretraining is a base model: completion by default
    let chat_mode = |m: &str, mode: &[&str]| {
        let r = shoucuo(&[&["chat", "--model", m, "--max-new-tokens", "3"], mode].concat(), "w9 w10\n");
        assert!(r.status.success(), "{}", text(&r.stderr));
        let err = text(&r.stderr);
        assert_eq!(err.contains("chat mode"), !text(&r.stdout).starts_with("w9 w10"), "{err}");
        err.contains("chat mode")
    };
    assert!(!chat_mode(m, &["--mode", "complete"]));
    std::fs::write(dir.path().join("trainer_state.json"), "{}").unwrap();
    assert!(chat_mode(m, &[]), "another trainer's checkpoint");
    std::fs::write(dir.path().join("recipe.toml"), "").unwrap();
    assert!(!chat_mode(m, &[]));
    let r = shoucuo(&["chat", "--model", m, "--system", "w5", "--max-new-tokens", "2"], "w9\n");
    assert!(r.status.success() && text(&r.stderr).contains("--system applies to chat mode only"));
    assert!(chat_mode(m, &["--mode", "chat"]));
    let tj = dir.path().join("tokenizer.json");
    std::fs::write(&tj, std::fs::read_to_string(&tj).unwrap().replace("im_start", "im_begin")).unwrap();
    let r = shoucuo(&["chat", "--model", m, "--mode", "chat"], "w9\n");
    assert!(!r.status.success() && text(&r.stderr).contains("needs the tokens <|im_start|>"), "{}", text(&r.stderr));
}
