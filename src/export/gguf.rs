//! GGUF v3 (llama.cpp, ollama): a writer for llama-architecture models and a reader for tests.
//!
//! Layout: magic `GGUF`, version 3, tensor count, metadata count; metadata key/values; tensor
//! infos (name, dims innermost first, type, offset into the data section); padding to the
//! alignment (32); tensor data, each tensor aligned to 32. All little-endian.
//!
//! llama.cpp's llama architecture applies RoPE to interleaved pairs (2i, 2i+1) of each head,
//! while HF checkpoints rotate halves (i, i + head_dim/2). The q and k rows are therefore
//! permuted on export: within each head, row `j*half + i` moves to `2i + j` (see [`interleave_rows`]).

use crate::export::hf::{ExportError, io_err};
use crate::model::weights::load_model_dir;
use crate::model::{ModelConfig, ParamLayout};
use crate::train::checkpoint::{is_pretraining_checkpoint, write_atomic_with};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

const ALIGN: usize = 32;
pub const QK8_0: usize = 32;

/// GGML tensor types we write and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q8_0 = 8,
}

impl GgmlType {
    fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::F32),
            1 => Some(Self::F16),
            8 => Some(Self::Q8_0),
            _ => None,
        }
    }
    /// Bytes of `n` values (n a multiple of 32 for q8_0).
    pub fn bytes(self, n: usize) -> usize {
        match self {
            Self::F32 => 4 * n,
            Self::F16 => 2 * n,
            Self::Q8_0 => n / QK8_0 * (2 + QK8_0),
        }
    }
}

/// Weight precision of an export: f32, f16 or q8_0 for matrices; norms always stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl Dtype {
    /// `general.file_type` (llama_ftype): ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_Q8_0 = 7.
    fn file_type(self) -> u32 {
        match self {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
            Dtype::Q8_0 => 7,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Arrays of one element type.
    ArrStr(Vec<String>),
    ArrI32(Vec<i32>),
}

/// GGUF value type ids (the ones we write).
mod vt {
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STR: u32 = 8;
    pub const ARR: u32 = 9;
}

/// One tensor to write: dims innermost first (GGML order), values row-major.
pub struct TensorOut {
    pub name: String,
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    pub data: Vec<u8>,
}

// ---------------------------------------------------------------- encoding

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn put_value(b: &mut Vec<u8>, v: &Value) {
    let ty = |b: &mut Vec<u8>, t: u32| b.extend(t.to_le_bytes());
    match v {
        Value::U32(x) => {
            ty(b, vt::U32);
            b.extend(x.to_le_bytes())
        }
        Value::F32(x) => {
            ty(b, vt::F32);
            b.extend(x.to_le_bytes())
        }
        Value::Bool(x) => {
            ty(b, vt::BOOL);
            b.push(*x as u8)
        }
        Value::Str(s) => {
            ty(b, vt::STR);
            put_str(b, s)
        }
        Value::ArrStr(a) => {
            ty(b, vt::ARR);
            ty(b, vt::STR);
            b.extend((a.len() as u64).to_le_bytes());
            a.iter().for_each(|s| put_str(b, s));
        }
        Value::ArrI32(a) => {
            ty(b, vt::ARR);
            ty(b, vt::I32);
            b.extend((a.len() as u64).to_le_bytes());
            a.iter().for_each(|x| b.extend(x.to_le_bytes()));
        }
    }
}

/// Writes a whole GGUF file: the header (metadata and tensor infos) is built in memory, the
/// tensors' data is streamed after it.
pub fn write_gguf(w: &mut impl Write, meta: &[(String, Value)], tensors: &[TensorOut]) -> std::io::Result<()> {
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut b, k);
        put_value(&mut b, v);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut b, &t.name);
        b.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| b.extend((*d as u64).to_le_bytes()));
        b.extend((t.ty as u32).to_le_bytes());
        b.extend((offset as u64).to_le_bytes());
        offset += t.data.len().next_multiple_of(ALIGN);
    }
    b.resize(b.len().next_multiple_of(ALIGN), 0);
    w.write_all(&b)?;
    for t in tensors {
        w.write_all(&t.data)?;
        w.write_all(&[0; ALIGN][..t.data.len().next_multiple_of(ALIGN) - t.data.len()])?;
    }
    Ok(())
}

/// Encodes `x` (a multiple of 32 values) as q8_0 blocks: f16 scale `amax/127`, 32 int8.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK8_0 * (2 + QK8_0));
    for block in x.chunks_exact(QK8_0) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8));
    }
    out
}

/// Row permutation from HF rotate-half to llama.cpp interleaved RoPE: w is [n_head*head_dim, cols];
/// within each head, row `j*half + i` (j ∈ {0,1}) moves to row `2i + j`.
pub fn interleave_rows(w: &[f32], n_head: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    permute_rows(w, n_head, head_dim, cols, true)
}

/// The inverse of [`interleave_rows`]: row `2i + j` moves to row `j*half + i`.
pub fn deinterleave_rows(w: &[f32], n_head: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    permute_rows(w, n_head, head_dim, cols, false)
}

fn permute_rows(w: &[f32], n_head: usize, head_dim: usize, cols: usize, to_interleaved: bool) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0f32; w.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let (halves, pairs) = (h * head_dim + j * half + i, h * head_dim + 2 * i + j);
                let (src, dst) = if to_interleaved { (halves, pairs) } else { (pairs, halves) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn tensor(name: String, shape: &[usize], values: &[f32], dtype: Dtype) -> TensorOut {
    // GGML dims are innermost first: HF [out, in] becomes [in, out].
    let dims: Vec<usize> = shape.iter().rev().copied().collect();
    let row = dims[0];
    let ty = match dtype {
        _ if shape.len() == 1 => GgmlType::F32,
        Dtype::F16 => GgmlType::F16,
        Dtype::Q8_0 if row.is_multiple_of(QK8_0) => GgmlType::Q8_0,
        _ => GgmlType::F32,
    };
    let data = match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        GgmlType::Q8_0 => quantize_q8_0(values),
    };
    TensorOut { name, dims, ty, data }
}

/// The llama-architecture tensors of a model, named as llama.cpp expects, q/k rows interleaved.
pub fn model_tensors(cfg: &ModelConfig, params: &[f32], dtype: Dtype) -> Vec<TensorOut> {
    let lay = ParamLayout::new(cfg);
    let (d, f, qd, kvd, v) = (cfg.dim, cfg.ffn_hidden, cfg.q_dim(), cfg.kv_dim(), cfg.vocab_size);
    let p = |r: &std::ops::Range<usize>| &params[r.clone()];
    let mut out = vec![tensor("token_embd.weight".into(), &[v, d], p(&lay.embed), dtype)];
    for (l, w) in lay.layers.iter().enumerate() {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        let wq = interleave_rows(p(&w.wq), cfg.n_heads, cfg.head_dim, d);
        let wk = interleave_rows(p(&w.wk), cfg.n_kv_heads, cfg.head_dim, d);
        out.push(tensor(n("attn_norm"), &[d], p(&w.attn_norm), dtype));
        out.push(tensor(n("attn_q"), &[qd, d], &wq, dtype));
        out.push(tensor(n("attn_k"), &[kvd, d], &wk, dtype));
        out.push(tensor(n("attn_v"), &[kvd, d], p(&w.wv), dtype));
        out.push(tensor(n("attn_output"), &[d, qd], p(&w.wo), dtype));
        out.push(tensor(n("ffn_norm"), &[d], p(&w.ffn_norm), dtype));
        out.push(tensor(n("ffn_gate"), &[f, d], p(&w.w_gate), dtype));
        out.push(tensor(n("ffn_up"), &[f, d], p(&w.w_up), dtype));
        out.push(tensor(n("ffn_down"), &[d, f], p(&w.w_down), dtype));
    }
    out.push(tensor("output_norm.weight".into(), &[d], p(&lay.final_norm), dtype));
    if !cfg.tie_embeddings {
        out.push(tensor("output.weight".into(), &[v, d], p(&lay.lm_head), dtype));
    }
    out
}

/// Model hyper-parameters as `llama.*` metadata.
pub fn model_metadata(cfg: &ModelConfig, name: &str, dtype: Dtype) -> Vec<(String, Value)> {
    let u = |x: usize| Value::U32(x as u32);
    [
        ("general.architecture", Value::Str("llama".into())),
        ("general.name", Value::Str(name.into())),
        ("general.file_type", Value::U32(dtype.file_type())),
        ("general.alignment", u(ALIGN)),
        ("llama.vocab_size", u(cfg.vocab_size)),
        ("llama.context_length", u(cfg.max_seq_len)),
        ("llama.embedding_length", u(cfg.dim)),
        ("llama.block_count", u(cfg.n_layers)),
        ("llama.feed_forward_length", u(cfg.ffn_hidden)),
        ("llama.attention.head_count", u(cfg.n_heads)),
        ("llama.attention.head_count_kv", u(cfg.n_kv_heads)),
        ("llama.attention.key_length", u(cfg.head_dim)),
        ("llama.attention.value_length", u(cfg.head_dim)),
        ("llama.rope.dimension_count", u(cfg.head_dim)),
        ("llama.rope.freq_base", Value::F32(cfg.rope_theta)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(cfg.norm_eps)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// llama.cpp token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// `tokenizer.ggml.*` metadata from a byte-level BPE `tokenizer.json` (the GPT-2 scheme), padded
/// with unused tokens up to the model's `vocab_size`.
pub fn tokenizer_metadata(
    tokenizer_json: &Path,
    vocab_size: usize,
    pre: &str,
    bos: Option<u32>,
    eos: Option<u32>,
    chat_template: Option<String>,
) -> Result<Vec<(String, Value)>, ExportError> {
    let bad = |m: String| ExportError::Tokenizer(format!("{}: {m}", tokenizer_json.display()));
    let text = std::fs::read_to_string(tokenizer_json).map_err(io_err(tokenizer_json))?;
    let t: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON ({e})")))?;
    let model = &t["model"];
    if model["type"] != "BPE" {
        return Err(bad(format!(
            "model type {} is not BPE; only byte-level BPE tokenizers export to GGUF",
            model["type"]
        )));
    }
    let vocab = model["vocab"].as_object().ok_or_else(|| bad("no model.vocab object".into()))?;
    let mut tokens: BTreeMap<usize, (String, i32)> = BTreeMap::new();
    for (tok, id) in vocab {
        let id = id.as_u64().ok_or_else(|| bad(format!("token {tok:?} has a non-integer id")))?;
        tokens.insert(id as usize, (tok.clone(), TOKEN_NORMAL));
    }
    for a in t["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(bad("an added_tokens entry lacks id or content".into()));
        };
        let ty = if a["special"].as_bool().unwrap_or(false) { TOKEN_CONTROL } else { TOKEN_USER_DEFINED };
        tokens.insert(id as usize, (content.to_string(), ty));
    }
    let n = tokens.keys().next_back().map_or(0, |k| k + 1);
    if n > vocab_size {
        return Err(bad(format!("the tokenizer has {n} tokens but the model only {vocab_size}")));
    }
    let (mut names, mut types) = (Vec::with_capacity(vocab_size), Vec::with_capacity(vocab_size));
    for id in 0..vocab_size {
        let (name, ty) = tokens.remove(&id).unwrap_or_else(|| (format!("[PAD{id}]"), TOKEN_UNUSED));
        names.push(name);
        types.push(ty);
    }
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| bad("no model.merges array".into()))?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(p) => Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?)),
            _ => None,
        })
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| bad("a merge is neither \"a b\" nor [\"a\", \"b\"]".into()))?;
    let mut meta = vec![
        ("tokenizer.ggml.model".to_string(), Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::Str(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), Value::ArrStr(names)),
        ("tokenizer.ggml.token_type".to_string(), Value::ArrI32(types)),
        ("tokenizer.ggml.merges".to_string(), Value::ArrStr(merges)),
        ("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(false)),
    ];
    // llama.cpp defaults a missing BPE bos to token 11; with add_bos off the end-of-text token is harmless.
    if let Some(b) = bos.or(eos) {
        meta.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(e) = eos {
        meta.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    let pad = vocab.get(crate::tokenizer::PAD).or_else(|| find_added(&t, crate::tokenizer::PAD));
    if let Some(p) = pad.and_then(|p| p.as_u64()) {
        meta.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(p as u32)));
    }
    if let Some(ct) = chat_template {
        meta.push(("tokenizer.chat_template".into(), Value::Str(ct)));
    }
    Ok(meta)
}

fn find_added<'a>(t: &'a serde_json::Value, content: &str) -> Option<&'a serde_json::Value> {
    t["added_tokens"].as_array()?.iter().find(|a| a["content"] == content).map(|a| &a["id"])
}

/// The llama.cpp pre-tokenizer name written by default. Its regex (Qwen2's) equals ours except
/// that it keeps Han characters in the general letter class (see docs/share.md for the risk).
pub const DEFAULT_PRE: &str = "qwen2";

/// Exports the model directory `src` (with its tokenizer) as a GGUF file `out`, atomically.
pub fn export_gguf(src: &Path, out: &Path, dtype: Dtype, pre: &str) -> Result<(), ExportError> {
    let model = load_model_dir(src)?;
    let (bos, eos) = (model.bos, model.eos);
    let tok = crate::tokenizer::Tok::load(src).map_err(|e| ExportError::Tokenizer(e.to_string()))?;
    let eos = eos.or(tok.eos_id());
    let name = src.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let mut meta = model_metadata(&model.cfg, name.as_deref().unwrap_or("shoucuo"), dtype);
    meta.extend(tokenizer_metadata(
        &src.join("tokenizer.json"),
        model.cfg.vocab_size,
        pre,
        bos,
        eos,
        // a base model never saw the template: llama.cpp and ollama should not apply it
        tok.chat_template().filter(|_| !is_pretraining_checkpoint(src)),
    )?);
    let tensors = model_tensors(&model.cfg, &model.params, dtype);
    Ok(write_atomic_with(out, |w| write_gguf(w, &meta, &tensors))?)
}

// ---------------------------------------------------------------- reading

#[derive(Debug, thiserror::Error)]
#[error("GGUF: {0}")]
pub struct GgufError(pub String);

/// A tensor's description in a parsed GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Innermost first.
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute position of the data in the file.
    pub start: usize,
}

/// A parsed GGUF file held in memory.
pub struct Gguf {
    pub version: u32,
    pub meta: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| GgufError(format!("truncated at byte {}", self.pos)))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn len(&mut self) -> Result<usize, GgufError> {
        usize::try_from(self.u64()?).map_err(|_| GgufError("length overflows".into()))
    }
    fn str(&mut self) -> Result<String, GgufError> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| GgufError(format!("invalid UTF-8 before byte {}", self.pos)))
    }
    fn value(&mut self, ty: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            vt::U32 => Value::U32(self.u32()?),
            vt::F32 => Value::F32(f32::from_le_bytes(self.arr()?)),
            vt::BOOL => Value::Bool(self.take(1)?[0] != 0),
            vt::STR => Value::Str(self.str()?),
            vt::ARR => {
                let et = self.u32()?;
                let n = self.len()?;
                match et {
                    vt::STR => Value::ArrStr((0..n).map(|_| self.str()).collect::<Result<_, _>>()?),
                    vt::I32 => {
                        Value::ArrI32(
                            (0..n).map(|_| Ok(i32::from_le_bytes(self.arr()?))).collect::<Result<_, GgufError>>()?,
                        )
                    }
                    other => return Err(GgufError(format!("unsupported array element type {other}"))),
                }
            }
            other => return Err(GgufError(format!("unsupported value type {other}"))),
        })
    }
}

impl Gguf {
    pub fn read(path: &Path) -> Result<Self, GgufError> {
        let bytes = std::fs::read(path).map_err(|e| GgufError(format!("{}: {e}", path.display())))?;
        Self::parse(bytes)
    }

    pub fn parse(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let mut c = Cursor { b: &bytes, pos: 0 };
        if c.take(4)? != b"GGUF" {
            return Err(GgufError("bad magic; not a GGUF file".into()));
        }
        let version = c.u32()?;
        let n_tensors = c.len()?;
        let n_meta = c.len()?;
        let mut meta = Vec::new();
        for _ in 0..n_meta {
            let k = c.str()?;
            let ty = c.u32()?;
            meta.push((k, c.value(ty)?));
        }
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let name = c.str()?;
            let nd = c.u32()? as usize;
            let dims = (0..nd).map(|_| c.len()).collect::<Result<Vec<_>, _>>()?;
            let t = c.u32()?;
            let ty = GgmlType::from_u32(t).ok_or_else(|| GgufError(format!("{name}: unsupported tensor type {t}")))?;
            infos.push((name, dims, ty, c.len()?));
        }
        let align = match meta.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, Value::U32(a))) => *a as usize,
            _ => ALIGN,
        };
        let data_start = c.pos.next_multiple_of(align.max(1));
        let mut tensors = Vec::new();
        for (name, dims, ty, off) in infos {
            let start = data_start + off;
            let n: usize = dims.iter().product();
            if start + ty.bytes(n) > bytes.len() {
                return Err(GgufError(format!("{name}: data runs past the end of the file")));
            }
            tensors.push(TensorInfo { name, dims, ty, start });
        }
        Ok(Gguf { version, meta, tensors, bytes })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's values as f32 (dequantised from f16 or q8_0), row-major.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let t = self.tensor(name).ok_or_else(|| GgufError(format!("no tensor {name}")))?;
        let n: usize = t.dims.iter().product();
        let data = &self.bytes[t.start..t.start + t.ty.bytes(n)];
        Ok(match t.ty {
            GgmlType::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            GgmlType::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            GgmlType::Q8_0 => dequantize_q8_0(data),
        })
    }
}

/// Decodes q8_0 blocks back to f32.
pub fn dequantize_q8_0(data: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len() / (2 + QK8_0) * QK8_0);
    for block in data.chunks_exact(2 + QK8_0) {
        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        out.extend(block[2..].iter().map(|&q| q as i8 as f32 * d));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleave_moves_second_half_to_odd_rows_and_back() {
        // 1 head of dim 4, 1 column: rows [a0 a1 b0 b1] -> [a0 b0 a1 b1].
        let w = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(interleave_rows(&w, 1, 4, 1), [0.0, 2.0, 1.0, 3.0]);
        let w: Vec<f32> = (0..2 * 6 * 3).map(|x| x as f32).collect();
        assert_eq!(deinterleave_rows(&interleave_rows(&w, 2, 6, 3), 2, 6, 3), w);
    }

    #[test]
    fn q8_0_round_trip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        let q = quantize_q8_0(&x);
        assert_eq!(q.len(), 2 * 34);
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (a, b) in x.iter().zip(dequantize_q8_0(&q)) {
            assert!((a - b).abs() <= amax / 127.0, "{a} vs {b}");
        }
    }

    #[test]
    fn truncated_file_is_an_error() {
        let mut b = Vec::new();
        write_gguf(&mut b, &[("a".into(), Value::U32(1))], &[]).unwrap();
        assert!(Gguf::parse(b[..30].to_vec()).is_err());
        assert!(Gguf::parse(b"GGML".to_vec()).err().unwrap().to_string().contains("magic"));
    }
}
