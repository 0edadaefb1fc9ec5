//! Import of existing Llama checkpoints: HF safetensors directories and llama2.c `model.bin` files.

use crate::export::gguf::deinterleave_rows;
use crate::export::hf::{ExportError, io_err, write_hf_dir};
use crate::model::weights::{ModelDir, load_model_dir};
use crate::model::{ModelConfig, ParamLayout};
use std::path::Path;

/// Imports a HF Llama directory (safetensors, possibly sharded, f32/f16/bf16) as an f32 model
/// directory `out` with its tokenizer files.
pub fn import_hf(src: &Path, out: &Path) -> Result<ModelDir, ExportError> {
    check_architecture(src)?;
    let model = load_model_dir(src)?;
    let tok_path = src.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(ExportError::Tokenizer(format!(
            "{}: missing; `generate` and training need the model's tokenizer next to the weights",
            tok_path.display()
        )));
    }
    crate::tokenizer::Tok::load(src)
        .map_err(|e| ExportError::Tokenizer(format!("{e}; the tokenizer is unreadable")))?;
    write_hf_dir(&model, src, out)?;
    Ok(model)
}

fn check_architecture(src: &Path) -> Result<(), ExportError> {
    let path = src.join("config.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) }; // load_model_dir names the problem
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let archs = v["architectures"].as_array().into_iter().flatten();
    if let Some(a) = archs.filter_map(|a| a.as_str()).find(|a| *a != "LlamaForCausalLM") {
        return Err(ExportError::Unsupported(format!(
            "{}: architecture \"{a}\" is not supported; only LlamaForCausalLM can be imported",
            path.display()
        )));
    }
    Ok(())
}

/// A llama2.c checkpoint read into our layout.
pub struct Llama2c {
    pub cfg: ModelConfig,
    pub params: Vec<f32>,
}

/// Reads a llama2.c `model.bin`: a header of 7 int32 (dim, hidden_dim, n_layers, n_heads,
/// n_kv_heads, vocab_size (negative: untied classifier), seq_len), then f32 weights in the order
/// token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, [freq_cis_real,
/// freq_cis_imag] (legacy files), [wcls]. Its RoPE rotates interleaved pairs, so q/k rows are
/// permuted to HF rotate-half order.
pub fn read_llama2c(path: &Path) -> Result<Llama2c, ExportError> {
    let bad = |m: String| ExportError::BadFile(format!("{}: {m}", path.display()));
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    if bytes.len() < 28 {
        return Err(bad("too short for a llama2.c header (7 int32)".into()));
    }
    let h: Vec<i32> = bytes[..28].chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let (dim, hidden, n_layers, n_heads, n_kv, vocab, seq) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6]);
    if [dim, hidden, n_layers, n_heads, n_kv, seq].iter().any(|&x| x <= 0) || vocab == 0 {
        return Err(bad(format!("header {h:?} has a zero or negative size; not a llama2.c model.bin")));
    }
    let u = |x: i32| x.unsigned_abs() as usize;
    if !u(dim).is_multiple_of(u(n_heads)) {
        return Err(bad(format!("dim {dim} is not a multiple of n_heads {n_heads}")));
    }
    let cfg = ModelConfig {
        vocab_size: u(vocab),
        dim: u(dim),
        n_layers: u(n_layers),
        n_heads: u(n_heads),
        n_kv_heads: u(n_kv),
        head_dim: u(dim) / u(n_heads),
        ffn_hidden: u(hidden),
        max_seq_len: u(seq),
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tie_embeddings: vocab > 0,
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    let floats = (bytes.len() - 28) / 4;
    let weights = cfg.num_params();
    let freq = cfg.max_seq_len * cfg.head_dim; // freq_cis_real + freq_cis_imag
    let legacy = match floats {
        _ if !(bytes.len() - 28).is_multiple_of(4) => None,
        n if n == weights => Some(false),
        n if n == weights + freq => Some(true),
        _ => None,
    };
    let Some(legacy) = legacy else {
        return Err(bad(format!(
            "holds {floats} floats after the header, but header {h:?} implies {weights} (or {} with freq_cis tables)",
            weights + freq
        )));
    };
    let data: Vec<f32> = bytes[28..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let lay = ParamLayout::new(&cfg);
    let mut params = vec![0.0f32; lay.total()];
    let mut pos = 0usize;
    let mut next = |n: usize| {
        let s = &data[pos..pos + n];
        pos += n;
        s
    };
    let (d, f, qd, kvd) = (cfg.dim, cfg.ffn_hidden, cfg.q_dim(), cfg.kv_dim());
    params[lay.embed.clone()].copy_from_slice(next(cfg.vocab_size * d));
    // Each llama2.c array holds one field for all layers: [n_layers, ...].
    let mut per_layer =
        |n: usize, pick: &dyn Fn(&crate::model::params::LayerRanges) -> std::ops::Range<usize>, rope_heads: usize| {
            for w in &lay.layers {
                let src = next(n);
                let dst = &mut params[pick(w)];
                if rope_heads > 0 {
                    dst.copy_from_slice(&deinterleave_rows(src, rope_heads, cfg.head_dim, d));
                } else {
                    dst.copy_from_slice(src);
                }
            }
        };
    per_layer(d, &|w| w.attn_norm.clone(), 0);
    per_layer(qd * d, &|w| w.wq.clone(), cfg.n_heads);
    per_layer(kvd * d, &|w| w.wk.clone(), cfg.n_kv_heads);
    per_layer(kvd * d, &|w| w.wv.clone(), 0);
    per_layer(d * qd, &|w| w.wo.clone(), 0);
    per_layer(d, &|w| w.ffn_norm.clone(), 0);
    per_layer(f * d, &|w| w.w_gate.clone(), 0);
    per_layer(d * f, &|w| w.w_down.clone(), 0);
    per_layer(f * d, &|w| w.w_up.clone(), 0);
    params[lay.final_norm.clone()].copy_from_slice(next(d));
    if legacy {
        next(freq);
    }
    if !cfg.tie_embeddings {
        params[lay.lm_head.clone()].copy_from_slice(next(cfg.vocab_size * d));
    }
    Ok(Llama2c { cfg, params })
}

/// Converts a llama2.c `tokenizer.bin` (int32 max_token_length, then per token: f32 score,
/// int32 length, bytes) into a HF `tokenizer.json`: a BPE model with byte fallback whose merges
/// are every split of a token into two tokens, ranked by the merged token's score (highest
/// first) — the rule llama2.c's encoder applies — with SentencePiece's `▁` for spaces and a
/// prepended space, as llama2.c adds.
pub fn llama2c_tokenizer_json(path: &Path, vocab_size: usize) -> Result<String, ExportError> {
    let bad = |m: String| ExportError::Tokenizer(format!("{}: {m}", path.display()));
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let mut pos = 4usize;
    let mut tokens: Vec<(String, f32)> = Vec::with_capacity(vocab_size);
    for i in 0..vocab_size {
        let head = bytes.get(pos..pos + 8).ok_or_else(|| bad(format!("truncated at token {i} of {vocab_size}")))?;
        let score = f32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let len = i32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let len = usize::try_from(len).map_err(|_| bad(format!("token {i} has negative length {len}")))?;
        let text = bytes.get(pos + 8..pos + 8 + len).ok_or_else(|| bad(format!("truncated in token {i}")))?;
        let text = String::from_utf8(text.to_vec()).map_err(|_| bad(format!("token {i} is not valid UTF-8")))?;
        tokens.push((text.replace(' ', "▁"), score));
        pos += 8 + len;
    }
    let ids: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, (t, _))| (t.as_str(), i)).collect();
    let special = |t: &str| matches!(t, "<unk>" | "<s>" | "</s>");
    let byte_token = |t: &str| t.len() == 6 && t.starts_with("<0x") && t.ends_with('>');
    let mut merges: Vec<(f32, usize, String, String)> = Vec::new();
    for (id, (t, score)) in tokens.iter().enumerate() {
        if special(t) || byte_token(t) {
            continue;
        }
        for (k, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(k);
            if ids.contains_key(a) && ids.contains_key(b) {
                merges.push((*score, id, a.to_string(), b.to_string()));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, (t, _))| (t.clone(), i.into())).collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(_, (t, _))| special(t))
        .map(|(i, (t, _))| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let unk = ids.contains_key("<unk>").then_some("<unk>");
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        ]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab,
            "merges": merges.iter().map(|(_, _, a, b)| vec![a.clone(), b.clone()]).collect::<Vec<_>>()
        }
    });
    let text = serde_json::to_string(&json).expect("json values serialise");
    <tokenizers::Tokenizer as std::str::FromStr>::from_str(&text)
        .map_err(|e| bad(format!("converted tokenizer does not load ({e})")))?;
    Ok(text)
}

/// Imports a llama2.c model (and its tokenizer.bin, if given) as a model directory `out`.
/// bos = 1 and eos = 2, llama2.c's `<s>` and `</s>`.
pub fn import_llama2c(model: &Path, tokenizer: Option<&Path>, out: &Path) -> Result<ModelConfig, ExportError> {
    let m = read_llama2c(model)?;
    let staging = tempdir_near(out)?;
    let write = || -> Result<(), ExportError> {
        if let Some(t) = tokenizer {
            let json = llama2c_tokenizer_json(t, m.cfg.vocab_size)?;
            std::fs::write(staging.join("tokenizer.json"), json).map_err(io_err(&staging))?;
            let cfg = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                "add_bos_token": true, "tokenizer_class": "PreTrainedTokenizerFast"});
            std::fs::write(staging.join("tokenizer_config.json"), cfg.to_string()).map_err(io_err(&staging))?;
        }
        let layout = ParamLayout::new(&m.cfg);
        let dir = ModelDir { cfg: m.cfg.clone(), layout, params: m.params, bos: Some(1), eos: Some(2) };
        write_hf_dir(&dir, &staging, out).map(drop)
    };
    let res = write();
    // The staging directory only carries the tokenizer files into `out`; it goes, success or not.
    let _ = std::fs::remove_dir_all(&staging);
    res?;
    Ok(m.cfg)
}

fn tempdir_near(out: &Path) -> Result<std::path::PathBuf, ExportError> {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tok.tmp");
    let p = out.with_file_name(name);
    if p.exists() {
        std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
    }
    std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    Ok(p)
}
