//! Export and import: HF round trip, GGUF contents, llama2.c import (RoPE permutation checked
//! against an independent interleaved-RoPE forward), sharded bf16 import, and error messages.

use safetensors::{Dtype as StDtype, tensor::TensorView};
use shoucuo::export::gguf::{Dtype, GgmlType, Gguf, Value, deinterleave_rows, export_gguf, interleave_rows};
use shoucuo::export::hf::export_hf;
use shoucuo::export::import::{import_hf, import_llama2c};
use shoucuo::model::infer::{InferModel, KvCache, KvType, Logits, Quant, Scratch};
use shoucuo::model::params::init_params;
use shoucuo::model::weights::{load_model_dir, save_model_dir};
use shoucuo::model::{ModelConfig, ParamLayout};
use std::path::Path;

const TOK: &str = "tests/fixtures/tok_small";

/// GQA, untied, head_dim 8 with 4 heads on dim 32 (equal here; see `free_head_dim`).
fn cfg() -> ModelConfig {
    ModelConfig {
        vocab_size: 800,
        dim: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        ffn_hidden: 64,
        max_seq_len: 16,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tie_embeddings: false,
    }
}

fn free_head_dim() -> ModelConfig {
    ModelConfig { head_dim: 12, tie_embeddings: true, ..cfg() }
}

fn model_dir(dir: &Path, c: &ModelConfig, seed: u64) -> Vec<f32> {
    let p = init_params(c, &ParamLayout::new(c), seed);
    save_model_dir(dir, c, &p, None, Some(0)).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(Path::new(TOK).join(f), dir.join(f)).unwrap();
    }
    p
}

/// Logits of every position of `toks`, from our inference engine.
fn logits(c: &ModelConfig, p: &[f32], toks: &[u32]) -> Vec<f32> {
    let m = InferModel::new(c, p, Quant::F32).unwrap();
    let mut s = Scratch::new(&m, toks.len());
    let mut cache = KvCache::new(c, c.max_seq_len, KvType::F32);
    let rows: Vec<(usize, u32)> = toks.iter().map(|&t| (0, t)).collect();
    m.step(&mut s, std::slice::from_mut(&mut cache), &rows, Logits::All).unwrap().to_vec()
}

/// A plain f64 forward in which RoPE rotates interleaved pairs (2i, 2i+1) — the convention of
/// llama.cpp and llama2.c — over parameters in our layout (q/k rows as such a runtime holds them).
fn interleaved_reference(c: &ModelConfig, p: &[f32], toks: &[u32]) -> Vec<f64> {
    let lay = ParamLayout::new(c);
    let (d, hd, f) = (c.dim, c.head_dim, c.ffn_hidden);
    let mv = |w: &[f32], x: &[f64], rows: usize| -> Vec<f64> {
        (0..rows).map(|r| (0..x.len()).map(|i| w[r * x.len() + i] as f64 * x[i]).sum()).collect()
    };
    let norm = |x: &[f64], w: &[f32]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ms + c.norm_eps as f64).sqrt();
        x.iter().zip(w).map(|(v, w)| v * r * *w as f64).collect()
    };
    let rope = |x: &mut [f64], pos: usize| {
        for h in x.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let a = pos as f64 / (c.rope_theta as f64).powf(2.0 * i as f64 / hd as f64);
                let (x0, x1) = (h[2 * i], h[2 * i + 1]);
                h[2 * i] = x0 * a.cos() - x1 * a.sin();
                h[2 * i + 1] = x0 * a.sin() + x1 * a.cos();
            }
        }
    };
    let mut xs: Vec<Vec<f64>> =
        toks.iter().map(|&t| p[lay.embed.start + t as usize * d..][..d].iter().map(|&v| v as f64).collect()).collect();
    for w in &lay.layers {
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        for (pos, x) in xs.iter_mut().enumerate() {
            let h = norm(x, &p[w.attn_norm.clone()]);
            let mut q = mv(&p[w.wq.clone()], &h, c.q_dim());
            let mut k = mv(&p[w.wk.clone()], &h, c.kv_dim());
            rope(&mut q, pos);
            rope(&mut k, pos);
            ks.push(k);
            vs.push(mv(&p[w.wv.clone()], &h, c.kv_dim()));
            let mut att = vec![0.0; c.q_dim()];
            for head in 0..c.n_heads {
                let kvh = head / (c.n_heads / c.n_kv_heads);
                let qh = &q[head * hd..][..hd];
                let sc: Vec<f64> = (0..=pos)
                    .map(|t| (0..hd).map(|i| qh[i] * ks[t][kvh * hd + i]).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for t in 0..=pos {
                    for i in 0..hd {
                        att[head * hd + i] += e[t] / z * vs[t][kvh * hd + i];
                    }
                }
            }
            let o = mv(&p[w.wo.clone()], &att, d);
            x.iter_mut().zip(o).for_each(|(a, b)| *a += b);
            let h2 = norm(x, &p[w.ffn_norm.clone()]);
            let g = mv(&p[w.w_gate.clone()], &h2, f);
            let u = mv(&p[w.w_up.clone()], &h2, f);
            let hh: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let down = mv(&p[w.w_down.clone()], &hh, d);
            x.iter_mut().zip(down).for_each(|(a, b)| *a += b);
        }
    }
    xs.iter().flat_map(|x| mv(&p[lay.lm_head.clone()], &norm(x, &p[lay.final_norm.clone()]), c.vocab_size)).collect()
}

/// Our parameters with q/k rows in interleaved order (what GGUF stores and llama2.c holds).
fn interleaved(c: &ModelConfig, p: &[f32]) -> Vec<f32> {
    let lay = ParamLayout::new(c);
    let mut out = p.to_vec();
    for w in &lay.layers {
        out[w.wq.clone()].copy_from_slice(&interleave_rows(&p[w.wq.clone()], c.n_heads, c.head_dim, c.dim));
        out[w.wk.clone()].copy_from_slice(&interleave_rows(&p[w.wk.clone()], c.n_kv_heads, c.head_dim, c.dim));
    }
    out
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max)
}

const TOKS: [u32; 6] = [5, 300, 17, 799, 2, 42];

#[test]
fn hf_export_then_import_gives_identical_weights_and_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, c) in [cfg(), free_head_dim()].iter().enumerate() {
        let src = tmp.path().join(format!("src{i}"));
        let p = model_dir(&src, c, 1);
        std::fs::write(src.join("optimizer.safetensors"), b"training state").unwrap();
        let out = tmp.path().join(format!("hf{i}"));
        let copied = export_hf(&src, &out, false).unwrap();
        assert_eq!(copied, ["tokenizer.json", "tokenizer_config.json"]);
        assert!(!out.join("optimizer.safetensors").exists() && !tmp.path().join(format!("hf{i}.tmp")).exists());
        let hf: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(hf["head_dim"], c.head_dim);
        let back = tmp.path().join(format!("imported{i}"));
        let m = import_hf(&out, &back).unwrap();
        let again = load_model_dir(&back).unwrap();
        assert_eq!((&m.cfg, &again.cfg), (c, c));
        assert_eq!(again.params, p);
        assert_eq!(logits(c, &again.params, &TOKS), logits(c, &p, &TOKS));
        // The imported directory trains: a forward/backward pass gives a finite loss and gradients.
        let mut t = shoucuo::model::TrainModel::new(again.cfg.clone(), again.params.clone(), 1, TOKS.len());
        assert!(max_diff(&t.logits(&TOKS), &logits(c, &p, &TOKS).iter().map(|&x| x as f64).collect::<Vec<_>>()) < 1e-4);
        let loss = t.forward(&TOKS, &[300, 17, 799, 2, 42, 7]);
        assert!(loss.is_finite() && loss > 0.0);
        t.backward(1.0);
        assert!(t.grads.iter().all(|g| g.is_finite()) && t.grads.iter().any(|&g| g != 0.0));
        let err = export_hf(&src, &out, false).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
    }
}

#[test]
fn hf_export_refuses_shape_transformers_rejects_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let c = ModelConfig { n_heads: 6, n_kv_heads: 6, head_dim: 4, ..cfg() }; // 32 % 6 != 0
    let src = tmp.path().join("src");
    model_dir(&src, &c, 2);
    let err = export_hf(&src, &tmp.path().join("out"), false).unwrap_err().to_string();
    assert!(err.contains("not a multiple of num_attention_heads") && err.contains("--force"), "{err}");
    assert!(err.contains("dim 32, n_heads 4"), "nearest shapes missing: {err}");
    assert!(!tmp.path().join("out").exists());
    export_hf(&src, &tmp.path().join("out"), true).unwrap();
    assert_eq!(load_model_dir(&tmp.path().join("out")).unwrap().cfg, c);
}

#[test]
fn gguf_holds_llama_names_shapes_metadata_and_permuted_qk() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg();
    let src = tmp.path().join("m");
    let p = model_dir(&src, &c, 3);
    let lay = ParamLayout::new(&c);
    let out = tmp.path().join("m.gguf");
    export_gguf(&src, &out, Dtype::F32, "qwen2").unwrap();
    let g = Gguf::read(&out).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.tensors.len(), 2 + 9 * c.n_layers + 1);
    let u = |k: &str| match g.get(k) {
        Some(Value::U32(v)) => *v as usize,
        v => panic!("{k}: {v:?}"),
    };
    assert_eq!(g.get("general.architecture"), Some(&Value::Str("llama".into())));
    assert_eq!([u("llama.embedding_length"), u("llama.block_count"), u("llama.feed_forward_length")], [32, 2, 64]);
    assert_eq!([u("llama.attention.head_count"), u("llama.attention.head_count_kv")], [4, 2]);
    assert_eq!(
        [u("llama.attention.key_length"), u("llama.rope.dimension_count"), u("llama.context_length")],
        [8, 8, 16]
    );
    assert_eq!(g.get("llama.rope.freq_base"), Some(&Value::F32(10000.0)));
    assert_eq!(g.get("tokenizer.ggml.model"), Some(&Value::Str("gpt2".into())));
    assert_eq!(g.get("tokenizer.ggml.pre"), Some(&Value::Str("qwen2".into())));
    assert_eq!(u("tokenizer.ggml.eos_token_id"), 0);
    assert_eq!(u("tokenizer.ggml.padding_token_id"), 3);
    let Some(Value::ArrStr(tokens)) = g.get("tokenizer.ggml.tokens") else { panic!("no tokens") };
    let Some(Value::ArrI32(types)) = g.get("tokenizer.ggml.token_type") else { panic!("no token types") };
    assert_eq!(
        (tokens.len(), &tokens[..3]),
        (800, &["<|endoftext|>".to_string(), "<|im_start|>".into(), "<|im_end|>".into()][..])
    );
    assert_eq!(&types[..5], [3, 3, 3, 3, 1]);
    let Some(Value::ArrStr(merges)) = g.get("tokenizer.ggml.merges") else { panic!("no merges") };
    assert_eq!(merges.len(), 540);
    assert!(matches!(g.get("tokenizer.chat_template"), Some(Value::Str(t)) if t.contains("<|im_start|>")));

    let t = g.tensor("blk.1.attn_k.weight").unwrap();
    assert_eq!((&t.dims[..], t.ty), (&[32, 16][..], GgmlType::F32));
    assert_eq!(g.tensor("token_embd.weight").unwrap().dims, [32, 800]);
    assert_eq!(g.tensor("output.weight").unwrap().dims, [32, 800]);
    assert_eq!(g.tensor("blk.0.ffn_down.weight").unwrap().dims, [64, 32]);
    let w = &lay.layers[1];
    let q = g.tensor_f32("blk.1.attn_q.weight").unwrap();
    assert_ne!(q, p[w.wq.clone()], "q rows must be permuted for llama.cpp");
    assert_eq!(deinterleave_rows(&q, 4, 8, 32), p[w.wq.clone()]);
    let k = g.tensor_f32("blk.1.attn_k.weight").unwrap();
    assert_eq!(deinterleave_rows(&k, 2, 8, 32), p[w.wk.clone()]);
    assert_eq!(g.tensor_f32("blk.1.attn_v.weight").unwrap(), p[w.wv.clone()]);
    assert_eq!(g.tensor_f32("output.weight").unwrap(), p[lay.lm_head.clone()]);
    assert!(g.tensors.iter().all(|t| t.start % 32 == 0));

    // The permuted weights under interleaved RoPE give our logits: what llama.cpp computes.
    let want = interleaved_reference(&c, &interleaved(&c, &p), &TOKS);
    assert!(max_diff(&logits(&c, &p, &TOKS), &want) < 1e-4);
}

/// A pretraining checkpoint is a base model: its exports carry no chat template (so `chat`,
/// transformers and ollama do not render ChatML it never saw); any other model directory keeps it.
#[test]
fn exports_of_a_pretraining_checkpoint_leave_out_the_chat_template() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg();
    let (plain, ckpt) = (tmp.path().join("m"), tmp.path().join("step-000010"));
    model_dir(&plain, &c, 3);
    model_dir(&ckpt, &c, 3);
    std::fs::write(ckpt.join("trainer_state.json"), "{}").unwrap();
    std::fs::write(ckpt.join("recipe.toml"), "").unwrap();
    let config = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap()
    };
    let template = |g: &Gguf| g.get("tokenizer.chat_template").is_some();
    for (src, kept) in [(&plain, true), (&ckpt, false)] {
        let name = src.file_name().unwrap().to_str().unwrap();
        let (hf, gguf) = (tmp.path().join(format!("{name}-hf")), tmp.path().join(format!("{name}.gguf")));
        export_hf(src, &hf, false).unwrap();
        export_gguf(src, &gguf, Dtype::F32, "qwen2").unwrap();
        let (mut want, got) = (config(src), config(&hf));
        assert!(want["chat_template"].is_string());
        if !kept {
            want.as_object_mut().unwrap().remove("chat_template");
        }
        assert_eq!(got, want, "{name}: tokenizer_config.json otherwise unchanged");
        assert_eq!(template(&Gguf::read(&gguf).unwrap()), kept, "{name}.gguf");
    }
}

#[test]
fn gguf_q8_0_and_f16_dequantise_within_tolerance_and_tied_has_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let c = ModelConfig { tie_embeddings: true, ..cfg() };
    let src = tmp.path().join("m");
    let p = model_dir(&src, &c, 4);
    let lay = ParamLayout::new(&c);
    for (dtype, ty, ftype) in [(Dtype::Q8_0, GgmlType::Q8_0, 7), (Dtype::F16, GgmlType::F16, 1)] {
        let out = tmp.path().join(format!("m-{ftype}.gguf"));
        export_gguf(&src, &out, dtype, "qwen2").unwrap();
        let g = Gguf::read(&out).unwrap();
        assert_eq!(g.get("general.file_type"), Some(&Value::U32(ftype)));
        assert!(g.tensor("output.weight").is_none());
        assert_eq!(g.tensor("blk.0.attn_norm.weight").unwrap().ty, GgmlType::F32);
        assert_eq!(g.tensor_f32("output_norm.weight").unwrap(), p[lay.final_norm.clone()]);
        for (name, range) in [("blk.0.ffn_down.weight", &lay.layers[0].w_down), ("token_embd.weight", &lay.embed)] {
            assert_eq!(g.tensor(name).unwrap().ty, ty);
            let got = g.tensor_f32(name).unwrap();
            let want = &p[range.clone()];
            let amax = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let tol = if ty == GgmlType::Q8_0 { amax / 127.0 } else { amax / 1000.0 };
            assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() <= tol), "{name} off by more than {tol}");
            if ty == GgmlType::Q8_0 {
                // rounded (not truncated) per block: within half a step of the block's own scale,
                // plus the f16 rounding of that scale (127 · 2^-11 of a step)
                for (g, w) in got.chunks(32).zip(want.chunks(32)) {
                    let step = w.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                    assert!(g.iter().zip(w).all(|(a, b)| (a - b).abs() <= step * 0.57), "{name}: not rounded");
                }
            }
        }
    }
}

#[test]
fn gguf_and_hf_export_carry_free_head_dim_special_ids_and_f32_fallback_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let c = free_head_dim();
    let src = tmp.path().join("m");
    let p = init_params(&c, &ParamLayout::new(&c), 6);
    save_model_dir(&src, &c, &p, Some(1), Some(2)).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(Path::new(TOK).join(f), src.join(f)).unwrap();
    }
    let out = tmp.path().join("m.gguf");
    export_gguf(&src, &out, Dtype::Q8_0, "qwen2").unwrap();
    let g = Gguf::read(&out).unwrap();
    let u = |k: &str| match g.get(k) {
        Some(Value::U32(v)) => *v as usize,
        v => panic!("{k}: {v:?}"),
    };
    let keys = ["llama.attention.key_length", "llama.attention.value_length", "llama.rope.dimension_count"];
    assert_eq!(keys.map(u), [12, 12, 12]);
    assert_eq!([u("tokenizer.ggml.bos_token_id"), u("tokenizer.ggml.eos_token_id")], [1, 2]);
    // o_proj rows hold n_heads · head_dim = 48 values: q8_0 needs whole blocks of 32, so f32
    assert_eq!(g.tensor("blk.0.attn_output.weight").unwrap().ty, GgmlType::F32);
    assert_eq!(g.tensor("blk.0.ffn_down.weight").unwrap().ty, GgmlType::Q8_0);
    let hf = tmp.path().join("hf");
    export_hf(&src, &hf, false).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!((&cfg["bos_token_id"], &cfg["eos_token_id"], &cfg["head_dim"]), (&1.into(), &2.into(), &12.into()));
}

/// Writes `p` (our layout, HF rotate-half q/k) as a llama2.c model.bin.
fn write_llama2c(path: &Path, c: &ModelConfig, p: &[f32], legacy_freqs: bool) {
    let lay = ParamLayout::new(c);
    let il = interleaved(c, p);
    let vocab = if c.tie_embeddings { c.vocab_size as i32 } else { -(c.vocab_size as i32) };
    let header = [
        c.dim as i32,
        c.ffn_hidden as i32,
        c.n_layers as i32,
        c.n_heads as i32,
        c.n_kv_heads as i32,
        vocab,
        c.max_seq_len as i32,
    ];
    let mut b: Vec<u8> = header.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut put = |s: &[f32]| b.extend(s.iter().flat_map(|x| x.to_le_bytes()));
    put(&il[lay.embed.clone()]);
    type Pick = fn(&shoucuo::model::params::LayerRanges) -> std::ops::Range<usize>;
    let fields: [Pick; 9] = [
        |w| w.attn_norm.clone(),
        |w| w.wq.clone(),
        |w| w.wk.clone(),
        |w| w.wv.clone(),
        |w| w.wo.clone(),
        |w| w.ffn_norm.clone(),
        |w| w.w_gate.clone(),
        |w| w.w_down.clone(),
        |w| w.w_up.clone(),
    ];
    for pick in fields {
        for w in &lay.layers {
            put(&il[pick(w)]);
        }
    }
    put(&il[lay.final_norm.clone()]);
    if legacy_freqs {
        put(&vec![0.5; c.max_seq_len * c.head_dim]);
    }
    if !c.tie_embeddings {
        put(&il[lay.lm_head.clone()]);
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn llama2c_import_matches_interleaved_rope_forward() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (c, legacy)) in
        [(cfg(), true), (ModelConfig { tie_embeddings: true, ..cfg() }, false)].into_iter().enumerate()
    {
        let p = init_params(&c, &ParamLayout::new(&c), 5);
        let bin = tmp.path().join(format!("model{i}.bin"));
        write_llama2c(&bin, &c, &p, legacy);
        let out = tmp.path().join(format!("imp{i}"));
        assert_eq!(import_llama2c(&bin, None, &out).unwrap(), c);
        let m = load_model_dir(&out).unwrap();
        assert_eq!(m.params, p);
        // llama2.c's own maths on its own (interleaved) weights gives the imported model's logits.
        let want = interleaved_reference(&c, &interleaved(&c, &p), &TOKS);
        assert!(max_diff(&logits(&c, &m.params, &TOKS), &want) < 1e-4);
    }
    let bin = tmp.path().join("model0.bin");
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes.truncate(bytes.len() - 8);
    std::fs::write(&bin, bytes).unwrap();
    let err = import_llama2c(&bin, None, &tmp.path().join("bad")).unwrap_err().to_string();
    assert!(err.contains("model0.bin") && err.contains("floats after the header"), "{err}");
}

#[test]
fn llama2c_tokenizer_converts_with_byte_fallback_and_score_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let mut toks: Vec<(String, f32)> = vec![("<unk>".into(), 0.0), ("<s>".into(), 0.0), ("</s>".into(), 0.0)];
    toks.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0)));
    toks.extend([
        (" ".into(), -1.0),
        ("a".into(), -2.0),
        ("b".into(), -3.0),
        (" a".into(), -4.0),
        ("ab".into(), -5.0),
        (" ab".into(), -6.0),
    ]);
    let mut b = 16i32.to_le_bytes().to_vec();
    for (t, s) in &toks {
        b.extend(s.to_le_bytes());
        b.extend((t.len() as i32).to_le_bytes());
        b.extend(t.as_bytes());
    }
    let tb = tmp.path().join("tokenizer.bin");
    std::fs::write(&tb, b).unwrap();
    let c = ModelConfig { vocab_size: toks.len(), tie_embeddings: true, ..cfg() };
    let bin = tmp.path().join("model.bin");
    write_llama2c(&bin, &c, &init_params(&c, &ParamLayout::new(&c), 6), false);
    let out = tmp.path().join("imp");
    import_llama2c(&bin, Some(&tb), &out).unwrap();
    let tok = shoucuo::tokenizer::Tok::load(&out).unwrap();
    let id = |s: &str| toks.iter().position(|(t, _)| t == s).unwrap() as u32;
    // llama2.c: prepend " ", merge best-scored pairs: " a"(-4) before "ab"(-5), then " ab"(-6);
    // "é" has no token and falls back to its two UTF-8 bytes.
    assert_eq!(tok.encode("ab é"), [id(" ab"), id(" "), id("<0xC3>"), id("<0xA9>")]);
    assert_eq!(tok.decode(&tok.encode("ab ab")), "ab ab");
    assert_eq!(tok.eos_id(), Some(2));

    // a truncated tokenizer.bin is an error that leaves neither the output nor the staging dir
    let cut = tmp.path().join("cut.bin");
    std::fs::write(&cut, &std::fs::read(&tb).unwrap()[..40]).unwrap();
    let out2 = tmp.path().join("imp2");
    assert!(import_llama2c(&bin, Some(&cut), &out2).is_err());
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().starts_with("imp2")), "left behind: {left:?}");
}

fn write_bf16_shards(dir: &Path, c: &ModelConfig, p: &[f32]) -> Vec<f32> {
    let lay = ParamLayout::new(c);
    let (first, second) = lay.tensors.split_at(lay.tensors.len() / 2);
    let mut map = serde_json::Map::new();
    let mut rounded = p.to_vec();
    for (i, part) in [first, second].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let bytes: Vec<Vec<u8>> = part
            .iter()
            .map(|t| p[t.range()].iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, TensorView)> = part
            .iter()
            .zip(&bytes)
            .map(|(t, b)| (t.name.clone(), TensorView::new(StDtype::BF16, t.shape.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, &None, &dir.join(&file)).unwrap();
        for t in part.iter() {
            map.insert(t.name.clone(), file.clone().into());
            rounded[t.range()].iter_mut().for_each(|x| *x = half::bf16::from_f32(*x).to_f32());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    rounded
}

fn hf_source(dir: &Path, c: &ModelConfig, edit: impl Fn(&mut serde_json::Value)) -> Vec<f32> {
    std::fs::create_dir_all(dir).unwrap();
    let mut hf = serde_json::to_value(c.to_hf(Some(0), Some(0))).unwrap();
    hf["rope_theta"] = 500000.0.into();
    edit(&mut hf);
    std::fs::write(dir.join("config.json"), hf.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(Path::new(TOK).join(f), dir.join(f)).unwrap();
    }
    write_bf16_shards(dir, c, &init_params(c, &ParamLayout::new(c), 7))
}

#[test]
fn imports_sharded_bf16_with_other_rope_theta_and_names_problems() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg();
    let src = tmp.path().join("src");
    let want = hf_source(&src, &c, |_| {});
    let out = tmp.path().join("out");
    let m = import_hf(&src, &out).unwrap();
    assert_eq!(m.cfg.rope_theta, 500000.0);
    let back = load_model_dir(&out).unwrap();
    assert_eq!(back.params, want);
    assert!(out.join("tokenizer.json").is_file());

    let case = |name: &str, edit: &dyn Fn(&mut serde_json::Value), after: &dyn Fn(&Path)| -> String {
        let d = tmp.path().join(name);
        hf_source(&d, &c, edit);
        after(&d);
        import_hf(&d, &tmp.path().join(format!("{name}-out"))).err().unwrap().to_string()
    };
    let e = case("arch", &|h| h["architectures"] = serde_json::json!(["GPT2LMHeadModel"]), &|_| {});
    assert!(e.contains("GPT2LMHeadModel") && e.contains("not supported"), "{e}");
    let e = case("rope", &|h| h["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0}), &|_| {});
    assert!(e.contains("rope_scaling"), "{e}");
    let e = case("shape", &|h| h["intermediate_size"] = 48.into(), &|_| {});
    assert!(e.contains("gate_proj.weight") && e.contains("shape"), "{e}");
    let e = case("missing", &|h| h["num_hidden_layers"] = 3.into(), &|_| {});
    assert!(e.contains("model.layers.2.") && e.contains("missing"), "{e}");
    let e = case("tok", &|_| {}, &|d| std::fs::write(d.join("tokenizer.json"), "{not json").unwrap());
    assert!(e.contains("tokenizer.json") && e.contains("unreadable"), "{e}");
    let e = case("notok", &|_| {}, &|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    assert!(e.contains("tokenizer.json") && e.contains("missing"), "{e}");
}
