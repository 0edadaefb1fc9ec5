//! Inference: weights packed for fast products (f32 or q8_0), a preallocated per-sequence KV cache,
//! and one batched kernel (weights streamed once per step for all rows, threaded over weight rows)
//! for both prefill (up to `max_rows` prompt tokens per pass) and decode (one row per sequence).
//!
//! One step runs a list of rows `(cache, token)` through the model. Each row sits at the next free
//! position of its cache; several rows of one cache (a prompt) take consecutive positions.
//! All buffers live in [`Scratch`] and [`KvCache`], sized once: a decode step allocates nothing.
//! Products are threaded over weight rows; the row-wise parts around them (norms, SwiGLU, the
//! quantization of a product's input) over rows.

pub mod kernels;
pub mod pool;

use crate::model::aligned::Aligned;
use crate::model::config::ModelConfig;
use crate::model::kernels::{SharedMut, silu};
use crate::model::params::ParamLayout;
use crate::model::weights::{ModelDirError, load_model_dir};
use half::f16;
pub use kernels::Quant;
use kernels::{KEY_BLOCK, Matrix, QuantRows, QuantRowsMut, attend, matmul, matmul_quantized, rmsnorm, rope};
use std::borrow::Cow;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    ModelDir(#[from] ModelDirError),
    #[error(transparent)]
    Config(#[from] crate::model::config::ConfigError),
    #[error("parameter buffer holds {got} values but the config needs {want}; the weights do not match the config")]
    ParamCount { got: usize, want: usize },
    #[error("{need} tokens do not fit the context window of {cap}; shorten the prompt or lower max_new_tokens")]
    ContextFull { need: usize, cap: usize },
    #[error("token id {id} is outside the model's vocabulary of {vocab}; the tokenizer does not match the model")]
    BadToken { id: u32, vocab: usize },
    #[error("{rows} rows in one step but the scratch holds {max}; make the Scratch with more rows")]
    TooManyRows { rows: usize, max: usize },
    #[error("row names KV cache {index} but only {len} were passed")]
    NoSuchCache { index: usize, len: usize },
}

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v projections stacked: [q_dim + 2*kv_dim, dim].
    wqkv: Matrix,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    /// gate and up projections stacked: [2*ffn, dim].
    w13: Matrix,
    w_down: Matrix,
}

/// A model ready for inference.
pub struct InferModel {
    pub cfg: ModelConfig,
    pub quant: Quant,
    /// How caches made by `generate` store keys and values (f16 unless set otherwise).
    pub kv: KvType,
    /// Whether decode steps may be split over the threads by rows ([`InferModel::decode`]).
    split: bool,
    embed: Vec<f32>,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    lm_head: Matrix,
    /// [max_seq_len, head_dim/2] each.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// How a KV cache stores keys and values: f32, f16 (half the memory traffic of attention,
/// which dominates a batched decode step at long contexts; llama.cpp's default), or q8 (int8 with
/// one f32 scale per key or value vector of a head: a quarter of f32's bytes, plus the scales).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
    Q8,
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            "q8" => Ok(KvType::Q8),
            _ => Err(format!("unknown KV cache type `{s}`; use f16, f32 or q8")),
        }
    }
}

/// Keys and values of a cache as stored (layout on [`KvCache`]).
enum KvData {
    F32 {
        k: Aligned<f32>,
        v: Aligned<f32>,
    },
    F16 {
        k: Aligned<half::f16>,
        v: Aligned<half::f16>,
    },
    /// Scales: [n_layers, n_kv_heads, stride], one per position of a head, for keys and values.
    Q8 {
        k: Aligned<i8>,
        v: Aligned<i8>,
        ks: Aligned<f32>,
        vs: Aligned<f32>,
    },
}

/// Keys and values of one sequence: k: [n_layers, n_kv_heads, stride / KEY_BLOCK, head_dim,
/// KEY_BLOCK] (blocks of keys transposed, so a query scores a block of positions in one vector
/// loop), v: [n_layers, n_kv_heads, stride, head_dim]; `stride` is `cap` rounded up to whole blocks.
pub struct KvCache {
    data: KvData,
    cap: usize,
    len: usize,
}

impl KvCache {
    /// A cache for `cap` positions (at most the model's `max_seq_len`).
    pub fn new(cfg: &ModelConfig, cap: usize, kv: KvType) -> Self {
        let cap = cap.min(cfg.max_seq_len);
        let n = Self::elems(cfg, cap);
        let data = match kv {
            KvType::F32 => KvData::F32 { k: Aligned::zeroed(n), v: Aligned::zeroed(n) },
            KvType::F16 => KvData::F16 { k: Aligned::zeroed(n), v: Aligned::zeroed(n) },
            KvType::Q8 => {
                let ns = n / cfg.head_dim;
                KvData::Q8 {
                    k: Aligned::zeroed(n),
                    v: Aligned::zeroed(n),
                    ks: Aligned::zeroed(ns),
                    vs: Aligned::zeroed(ns),
                }
            }
        };
        KvCache { data, cap, len: 0 }
    }
    /// Keys (and as many values) a cache of `cap` positions stores.
    fn elems(cfg: &ModelConfig, cap: usize) -> usize {
        cfg.n_layers * cap.min(cfg.max_seq_len).next_multiple_of(KEY_BLOCK) * cfg.kv_dim()
    }
    /// Bytes that [`KvCache::new`] allocates for `cap` positions (keys and values, and their
    /// scales in q8), without allocating them.
    pub fn bytes(cfg: &ModelConfig, cap: usize, kv: KvType) -> usize {
        let n = Self::elems(cfg, cap);
        match kv {
            KvType::F32 => 2 * n * 4,
            KvType::F16 => 2 * n * 2,
            KvType::Q8 => 2 * n + 2 * (n / cfg.head_dim) * 4,
        }
    }
    /// Positions per head in `k` and `v`: the capacity rounded up to whole key blocks.
    fn stride(&self) -> usize {
        self.cap.next_multiple_of(KEY_BLOCK)
    }
    /// Where KV head `h` of layer `l` starts in `k` and in `v`.
    fn head_at(&self, cfg: &ModelConfig, l: usize, h: usize) -> usize {
        (l * cfg.n_kv_heads + h) * cfg.head_dim * self.stride()
    }
    /// Stores the key and value of KV head `h` of layer `l` at position `p`; k, v: [head_dim].
    fn write(&mut self, cfg: &ModelConfig, l: usize, h: usize, p: usize, k: &[f32], v: &[f32]) {
        let hd = cfg.head_dim;
        let head = self.head_at(cfg, l, h);
        let block = head + (p / KEY_BLOCK) * hd * KEY_BLOCK + p % KEY_BLOCK;
        fn put<T>(
            ks: &mut [T],
            vs: &mut [T],
            block: usize,
            at: usize,
            k: impl Iterator<Item = T>,
            v: impl Iterator<Item = T>,
        ) {
            for (d, x) in k.enumerate() {
                ks[block + d * KEY_BLOCK] = x;
            }
            vs[at..].iter_mut().zip(v).for_each(|(o, x)| *o = x);
        }
        let at = head + p * hd;
        match &mut self.data {
            KvData::F32 { k: ks, v: vs } => put(ks, vs, block, at, k.iter().copied(), v.iter().copied()),
            KvData::F16 { k: ks, v: vs } => {
                put(ks, vs, block, at, k.iter().map(|&x| f16::from_f32(x)), v.iter().map(|&x| f16::from_f32(x)))
            }
            KvData::Q8 { k: kq, v: vq, ks, vs } => {
                let ((dk, ik), (dv, iv)) = (kernels::q8_scale(k), kernels::q8_scale(v));
                (ks[head / hd + p], vs[head / hd + p]) = (dk, dv);
                let q = |inv: f32| move |&x: &f32| (x * inv).round() as i8;
                put(kq, vq, block, at, k.iter().map(q(ik)), v.iter().map(q(iv)));
            }
        }
    }
    /// Positions filled so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// Forgets the sequence; the memory is kept.
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Forgets all but the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// Bytes of the last-level CPU cache (Linux sysfs), or 32 MiB where that is unknown.
fn last_level_cache() -> usize {
    (0..8)
        .map_while(|i| {
            let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
            let level = std::fs::read_to_string(format!("{dir}/level")).ok()?.trim().parse::<u32>().ok()?;
            Some((level, std::fs::read_to_string(format!("{dir}/size")).ok().and_then(|s| cache_size(&s))))
        })
        .max_by_key(|&(level, _)| level)
        .and_then(|(_, size)| size)
        .unwrap_or(32 << 20)
}

/// A sysfs cache size ("32768K", "1M", "512") in bytes.
fn cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        _ => return None,
    };
    n.parse::<usize>().ok().map(|n| n << shift)
}

/// Rows per thread from which a decode step is split over the threads ([`InferModel::decode`]).
pub const SPLIT_ROWS: usize = 2;

/// Rows per thread from which the row-wise parts of a step (norms, SwiGLU, quantization) are
/// threaded: a pool round trip (0.6–0.9 µs here) costs about what a few rows' work does.
const PAR_ROWS: usize = 4;

/// Runs `f` over contiguous ranges of `nr` rows: one per pool thread, each of at least
/// [`PAR_ROWS`] rows (with fewer rows, all on the calling thread).
fn for_rows(nr: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let nt = pool::pool().threads().min(nr / PAR_ROWS).max(1);
    pool::pool().run(nt, |t| f(t * nr / nt..(t + 1) * nr / nt));
}

/// Activation buffers of one model for up to `max_rows` rows per step.
pub struct Scratch {
    max_rows: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    scores: Vec<f32>,
    h13: Vec<f32>,
    h: Vec<f32>,
    /// The input rows of the next q8 product, quantized.
    xq: QuantRows,
    pos: Vec<usize>,
    last: Vec<usize>,
    logits: Vec<f32>,
    /// One scratch and row list per pool thread for split decode steps (see [`InferModel::decode`]);
    /// empty on a part itself, or with one thread.
    parts: Vec<Mutex<Part>>,
}

/// One thread's share of a split decode step: its scratch and its rows (cache indices counted
/// from its first cache).
struct Part {
    scratch: Scratch,
    rows: Vec<(usize, u32)>,
}

impl Scratch {
    pub fn new(m: &InferModel, max_rows: usize) -> Self {
        let nt = pool::pool().threads();
        let mut s = Self::part(m, max_rows, true);
        if nt > 1 && m.split {
            let rows = max_rows.div_ceil(nt);
            s.parts = (0..nt)
                .map(|_| Mutex::new(Part { scratch: Self::part(m, rows, false), rows: Vec::with_capacity(rows) }))
                .collect();
        }
        s
    }

    /// Without `logits`, only for parts (which write into the whole step's logits).
    fn part(m: &InferModel, max_rows: usize, logits: bool) -> Self {
        let c = &m.cfg;
        let r = max_rows.max(1);
        Scratch {
            max_rows: r,
            x: vec![0.0; r * c.dim],
            xn: vec![0.0; r * c.dim],
            qkv: vec![0.0; r * (c.q_dim() + 2 * c.kv_dim())],
            att: vec![0.0; r * c.q_dim()],
            scores: vec![0.0; r * c.n_heads * c.max_seq_len.next_multiple_of(KEY_BLOCK)],
            h13: vec![0.0; r * 2 * c.ffn_hidden],
            h: vec![0.0; r * c.ffn_hidden],
            xq: match m.quant {
                Quant::Q8 => QuantRows::new(r, c.dim.max(c.q_dim()).max(c.ffn_hidden)),
                Quant::F32 => QuantRows::default(),
            },
            pos: vec![0; r],
            last: Vec::with_capacity(r),
            logits: if logits { vec![0.0; r * c.vocab_size] } else { vec![] },
            parts: vec![],
        }
    }
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }
}

/// Which rows of a step get logits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every row (tests, scoring).
    All,
    /// The last row of each cache in the step, in order of appearance (prefill, decode).
    Last,
}

impl InferModel {
    /// Loads a HF Llama directory (config.json + safetensors).
    pub fn from_dir(dir: &Path, quant: Quant) -> Result<Self, InferError> {
        let m = load_model_dir(dir)?;
        Self::new(&m.cfg, &m.params, quant)
    }

    /// Packs a flat parameter buffer (layout of [`ParamLayout`]) for inference.
    pub fn new(cfg: &ModelConfig, params: &[f32], quant: Quant) -> Result<Self, InferError> {
        cfg.validate()?;
        let lay = ParamLayout::new(cfg);
        if params.len() != lay.total() {
            return Err(InferError::ParamCount { got: params.len(), want: lay.total() });
        }
        let (d, f, qd, kvd) = (cfg.dim, cfg.ffn_hidden, cfg.q_dim(), cfg.kv_dim());
        let stack = |parts: &[&std::ops::Range<usize>]| -> Cow<[f32]> {
            Cow::Owned(parts.iter().flat_map(|r| params[(*r).clone()].iter().copied()).collect())
        };
        // Per layer q, k, v stacked; the output projection; gate and up stacked; down. Then the head.
        let shapes = [(qd + 2 * kvd, d), (d, qd), (2 * f, d), (d, f)];
        let mut all: Vec<_> = std::iter::repeat_n(shapes, cfg.n_layers).flatten().collect();
        all.push((cfg.vocab_size, d));
        let mut matrices = Matrix::pack_all(quant, &all, |i| match lay.layers.get(i / 4) {
            None => Cow::Borrowed(&params[lay.lm_head.clone()]),
            Some(l) => match i % 4 {
                0 => stack(&[&l.wq, &l.wk, &l.wv]),
                1 => Cow::Borrowed(&params[l.wo.clone()]),
                2 => stack(&[&l.w_gate, &l.w_up]),
                _ => Cow::Borrowed(&params[l.w_down.clone()]),
            },
        })
        .into_iter();
        let mut next = || matrices.next().expect("a matrix per shape");
        let layers = lay
            .layers
            .iter()
            .map(|l| Layer {
                attn_norm: params[l.attn_norm.clone()].to_vec(),
                wqkv: next(),
                wo: next(),
                ffn_norm: params[l.ffn_norm.clone()].to_vec(),
                w13: next(),
                w_down: next(),
            })
            .collect();
        let half = cfg.head_dim / 2;
        let mut cos = vec![0.0; cfg.max_seq_len * half];
        let mut sin = vec![0.0; cfg.max_seq_len * half];
        for p in 0..cfg.max_seq_len {
            for i in 0..half {
                let inv_freq = 1.0 / (cfg.rope_theta as f64).powf(2.0 * i as f64 / cfg.head_dim as f64);
                let a = p as f64 * inv_freq;
                cos[p * half + i] = a.cos() as f32;
                sin[p * half + i] = a.sin() as f32;
            }
        }
        let mut m = InferModel {
            cfg: cfg.clone(),
            quant,
            kv: KvType::F16,
            split: false,
            embed: params[lay.embed.clone()].to_vec(),
            layers,
            final_norm: params[lay.final_norm.clone()].to_vec(),
            lm_head: next(),
            cos,
            sin,
        };
        m.split = m.weight_bytes() <= last_level_cache() / 2;
        Ok(m)
    }

    /// Bytes of weights read by one decode step (all matrices; norms and the one embedding row aside).
    pub fn weight_bytes(&self) -> usize {
        self.lm_head.bytes()
            + self
                .layers
                .iter()
                .map(|l| l.wqkv.bytes() + l.wo.bytes() + l.w13.bytes() + l.w_down.bytes())
                .sum::<usize>()
    }

    /// Appends `tokens` to one sequence (`s.max_rows()` tokens per pass) and returns the
    /// logits of its last token: [vocab].
    pub fn prefill<'s>(
        &self,
        s: &'s mut Scratch,
        cache: &mut KvCache,
        tokens: &[u32],
    ) -> Result<&'s [f32], InferError> {
        let need = cache.len + tokens.len();
        if need > cache.cap {
            return Err(InferError::ContextFull { need, cap: cache.cap });
        }
        let chunk = s.max_rows;
        let caches = std::slice::from_mut(cache);
        let mut rows = Vec::with_capacity(chunk.min(tokens.len()));
        for part in tokens.chunks(chunk) {
            rows.clear();
            rows.extend(part.iter().map(|&t| (0, t)));
            self.step(s, caches, &rows, Logits::Last)?;
        }
        Ok(&s.logits[..self.cfg.vocab_size])
    }

    /// One decode step: row i appends `rows[i].1` to cache `rows[i].0` (distinct caches).
    /// Returns logits [rows, vocab].
    ///
    /// With several threads, at least [`SPLIT_ROWS`] rows per thread in cache order (as
    /// `generate` makes them) and weights that take at most half the last-level cache, the rows
    /// are split into one contiguous part per thread and each thread runs whole steps for its
    /// part alone. Threading every product over weight rows instead makes the cores exchange
    /// every activation twice per product (each writes part of the output, then each reads all
    /// of it), which for a small model costs more than the second core gives (tiny q8_0, 16 rows:
    /// one thread 530 µs per step, two 550). But each part reads all the weights: where they do
    /// not stay in the cache for both, splitting loses (tiny f32, 26 MB: ×0.9 at 16 rows, ×0.65
    /// at 4; tiny q8_0, 7 MB: ×1.1–1.8 at 16, ×1.4 at 4; 32 MB last-level cache).
    pub fn decode<'s>(
        &self,
        s: &'s mut Scratch,
        caches: &mut [KvCache],
        rows: &[(usize, u32)],
    ) -> Result<&'s [f32], InferError> {
        let nt = s.parts.len();
        if nt < 2 || rows.len() < nt * SPLIT_ROWS || !rows.windows(2).all(|w| w[0].0 < w[1].0) {
            return self.step(s, caches, rows, Logits::Last);
        }
        if rows.len() > s.max_rows {
            return Err(InferError::TooManyRows { rows: rows.len(), max: s.max_rows });
        }
        self.check(caches, rows)?;
        let (nr, v) = (rows.len(), self.cfg.vocab_size);
        let logits = SharedMut::new(&mut s.logits);
        let all = SharedMut::new(caches);
        let parts = &s.parts;
        pool::pool().run(nt, |t| {
            let part = &rows[t * nr / nt..(t + 1) * nr / nt];
            let lo = part[0].0;
            let mut guard = parts[t].lock().unwrap_or_else(|e| e.into_inner());
            let Part { scratch, rows: local } = &mut *guard;
            local.clear();
            local.extend(part.iter().map(|&(c, tok)| (c - lo, tok)));
            // SAFETY: the rows are in increasing cache order, so the parts' cache ranges
            // lo..=last are disjoint and within `caches` (checked above); likewise their rows of
            // logits ([nr, vocab] fit in s.logits: nr <= max_rows).
            let (cs, out) = unsafe {
                (all.slice(lo, part[part.len() - 1].0 + 1 - lo), logits.slice(t * nr / nt * v, part.len() * v))
            };
            // Cannot fail: the rows were checked above, and a part's scratch holds its share
            // (ceil(nr / nt) <= ceil(max_rows / nt) rows).
            self.step_into(scratch, cs, local, Logits::Last, out).expect("a checked split step");
        });
        Ok(&s.logits[..nr * v])
    }

    /// Every row's token is in the vocabulary and its cache exists (the step's first checks).
    fn check_rows(&self, caches: &[KvCache], rows: &[(usize, u32)]) -> Result<(), InferError> {
        for &(ci, tok) in rows {
            if tok as usize >= self.cfg.vocab_size {
                return Err(InferError::BadToken { id: tok, vocab: self.cfg.vocab_size });
            }
            if ci >= caches.len() {
                return Err(InferError::NoSuchCache { index: ci, len: caches.len() });
            }
        }
        Ok(())
    }

    /// The errors a step of distinct-cache rows would give (in the order `step` finds them),
    /// before anything changes.
    fn check(&self, caches: &[KvCache], rows: &[(usize, u32)]) -> Result<(), InferError> {
        self.check_rows(caches, rows)?;
        match rows.iter().map(|r| &caches[r.0]).find(|c| c.len >= c.cap) {
            Some(c) => Err(InferError::ContextFull { need: c.len + 1, cap: c.cap }),
            None => Ok(()),
        }
    }

    /// Runs `rows` through the model and returns the logits of the rows picked by `which`:
    /// [picked, vocab].
    pub fn step<'s>(
        &self,
        s: &'s mut Scratch,
        caches: &mut [KvCache],
        rows: &[(usize, u32)],
        which: Logits,
    ) -> Result<&'s [f32], InferError> {
        let mut logits = std::mem::take(&mut s.logits);
        let done = self.step_into(s, caches, rows, which, &mut logits);
        s.logits = logits;
        let n = done?;
        Ok(&s.logits[..n * self.cfg.vocab_size])
    }

    /// [`step`](Self::step) with the logits written to `logits` ([picked, vocab] at the front);
    /// returns how many rows were picked.
    fn step_into(
        &self,
        s: &mut Scratch,
        caches: &mut [KvCache],
        rows: &[(usize, u32)],
        which: Logits,
        logits: &mut [f32],
    ) -> Result<usize, InferError> {
        let c = &self.cfg;
        let nr = rows.len();
        if nr == 0 {
            return Ok(0);
        }
        if nr > s.max_rows {
            return Err(InferError::TooManyRows { rows: nr, max: s.max_rows });
        }
        let (d, hd, qd, kvd, f) = (c.dim, c.head_dim, c.q_dim(), c.kv_dim(), c.ffn_hidden);
        let qkvd = qd + 2 * kvd;
        self.check_rows(caches, rows)?;
        for (i, &(ci, _)) in rows.iter().enumerate() {
            s.pos[i] = caches[ci].len;
            caches[ci].len += 1;
        }
        if let Some(&(ci, _)) = rows.iter().find(|r| caches[r.0].len > caches[r.0].cap) {
            let (need, cap) = (caches[ci].len, caches[ci].cap);
            rows.iter().for_each(|r| caches[r.0].len -= 1);
            return Err(InferError::ContextFull { need, cap });
        }
        for (i, &(_, tok)) in rows.iter().enumerate() {
            let t = tok as usize;
            s.x[i * d..(i + 1) * d].copy_from_slice(&self.embed[t * d..(t + 1) * d]);
        }
        let half = hd / 2;
        for (l, layer) in self.layers.iter().enumerate() {
            // x += the previous layer's output (in xn), then the attention norm
            self.norm_rows(s, nr, &layer.attn_norm, l > 0);
            self.product(&mut s.qkv[..nr * qkvd], &s.xn, &s.xq, &layer.wqkv, nr);
            for (i, &(ci, _)) in rows.iter().enumerate() {
                let p = s.pos[i];
                let (cs, sn) = (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half]);
                let row = &mut s.qkv[i * qkvd..(i + 1) * qkvd];
                let (q, kv) = row.split_at_mut(qd);
                rope(q, hd, cs, sn);
                rope(&mut kv[..kvd], hd, cs, sn);
                for (h, (k, v)) in kv[..kvd].chunks_exact(hd).zip(kv[kvd..].chunks_exact(hd)).enumerate() {
                    caches[ci].write(c, l, h, p, k, v);
                }
            }
            self.attention(s, caches, rows, l);
            self.quantize_rows(&mut s.xq, &s.att, nr, qd);
            self.product(&mut s.xn[..nr * d], &s.att, &s.xq, &layer.wo, nr);
            self.norm_rows(s, nr, &layer.ffn_norm, true);
            self.product(&mut s.h13[..nr * 2 * f], &s.xn, &s.xq, &layer.w13, nr);
            self.swiglu_rows(s, nr);
            self.product(&mut s.xn[..nr * d], &s.h, &s.xq, &layer.w_down, nr);
        }
        // The last layer's residual, then the final norm (and for q8 the quantized rows) of the
        // rows that need logits.
        let nl = match which {
            Logits::All => {
                self.norm_rows(s, nr, &self.final_norm, true);
                nr
            }
            Logits::Last => {
                s.last.clear();
                for i in 0..nr {
                    if !rows[i + 1..].iter().any(|r| r.0 == rows[i].0) {
                        s.last.push(i);
                    }
                }
                // Packed to the front of xn: row j is written after row i = last[j] >= j has been
                // read, and before any later (larger) i.
                for (j, &i) in s.last.iter().enumerate() {
                    let x = &mut s.x[i * d..(i + 1) * d];
                    x.iter_mut().zip(&s.xn[i * d..(i + 1) * d]).for_each(|(x, y)| *x += y);
                    rmsnorm(&mut s.xn[j * d..(j + 1) * d], x, &self.final_norm, d, c.norm_eps);
                }
                self.quantize_rows(&mut s.xq, &s.xn, s.last.len(), d);
                s.last.len()
            }
        };
        self.product(&mut logits[..nl * c.vocab_size], &s.xn, &s.xq, &self.lm_head, nl);
        Ok(nl)
    }

    /// out = x @ W^T for the first `nr` rows: f32 rows from `x`, or for q8 weights the rows
    /// quantized into `xq` from them beforehand.
    fn product(&self, out: &mut [f32], x: &[f32], xq: &QuantRows, w: &Matrix, nr: usize) {
        match self.quant {
            Quant::F32 => matmul(out, x, w, nr),
            Quant::Q8 => matmul_quantized(out, xq, w, nr),
        }
    }

    /// For q8 weights, a handle to quantize `nr` rows of `k` values into `xq`.
    fn quantized<'a>(&self, xq: &'a mut QuantRows, nr: usize, k: usize) -> Option<QuantRowsMut<'a>> {
        (self.quant == Quant::Q8).then(|| xq.rows(nr, k))
    }

    /// For q8 weights, the first `nr` rows of x ([_, k]) quantized into `xq`, threaded over rows.
    fn quantize_rows(&self, xq: &mut QuantRows, x: &[f32], nr: usize, k: usize) {
        let Some(xq) = self.quantized(xq, nr, k) else { return };
        for_rows(nr, |r| {
            for b in r {
                // SAFETY: the ranges of rows are disjoint.
                unsafe { xq.quantize(b, &x[b * k..(b + 1) * k]) };
            }
        });
    }

    /// xn = rmsnorm(x) · w for the first `nr` rows, after x += xn where `residual`; quantized into
    /// `s.xq` for q8 weights. Threaded over rows.
    fn norm_rows(&self, s: &mut Scratch, nr: usize, w: &[f32], residual: bool) {
        let (d, eps) = (self.cfg.dim, self.cfg.norm_eps);
        let (x, xn) = (SharedMut::new(&mut s.x), SharedMut::new(&mut s.xn));
        let xq = self.quantized(&mut s.xq, nr, d);
        for_rows(nr, |r| {
            // SAFETY: the ranges of rows are disjoint and within the first nr rows.
            let (x, xn) = unsafe { (x.slice(r.start * d, r.len() * d), xn.slice(r.start * d, r.len() * d)) };
            if residual {
                x.iter_mut().zip(&*xn).for_each(|(x, y)| *x += y);
            }
            rmsnorm(xn, x, w, d, eps);
            if let Some(xq) = xq {
                for (b, row) in r.zip(xn.chunks_exact(d)) {
                    // SAFETY: as above.
                    unsafe { xq.quantize(b, row) };
                }
            }
        });
    }

    /// h = silu(gate) · up for the first `nr` rows of h13 = [gate | up]; quantized into `s.xq`
    /// for q8 weights. Threaded over rows.
    fn swiglu_rows(&self, s: &mut Scratch, nr: usize) {
        let f = self.cfg.ffn_hidden;
        let (h, h13) = (SharedMut::new(&mut s.h), &s.h13);
        let xq = self.quantized(&mut s.xq, nr, f);
        for_rows(nr, |r| {
            for b in r {
                // SAFETY: the ranges of rows are disjoint and within the first nr rows.
                let h = unsafe { h.slice(b * f, f) };
                let (gate, up) = h13[b * 2 * f..(b + 1) * 2 * f].split_at(f);
                for ((h, g), u) in h.iter_mut().zip(gate).zip(up) {
                    *h = silu(*g) * u;
                }
                if let Some(xq) = xq {
                    // SAFETY: as above.
                    unsafe { xq.quantize(b, h) };
                }
            }
        });
    }

    /// Causal attention of every row over its cache (keys/values already written), into `s.att`;
    /// one task per (row, KV head) covers the query heads that share that KV head.
    fn attention(&self, s: &mut Scratch, caches: &[KvCache], rows: &[(usize, u32)], l: usize) {
        let c = &self.cfg;
        let (hd, nkv, qd, kvd) = (c.head_dim, c.n_kv_heads, c.q_dim(), c.kv_dim());
        let qkvd = qd + 2 * kvd;
        let group = c.n_heads / nkv;
        let nr = rows.len();
        let (qkv, pos) = (&s.qkv, &s.pos);
        let ss = c.max_seq_len.next_multiple_of(KEY_BLOCK);
        let (att, scores) = (SharedMut::new(&mut s.att), SharedMut::new(&mut s.scores));
        let pairs = nr * nkv;
        let work: usize = (0..nr).map(|i| pos[i] + 1).sum::<usize>() * c.n_heads * hd;
        let tasks = if work < 1 << 14 { 1 } else { pairs.min(pool::pool().threads() * 4) };
        let per = pairs.div_ceil(tasks);
        pool::pool().run(pairs.div_ceil(per), |task| {
            for j in task * per..((task + 1) * per).min(pairs) {
                let (i, h) = (j / nkv, j % nkv);
                let cache = &caches[rows[i].0];
                let n = pos[i] + 1;
                let at = cache.head_at(c, l, h);
                let q = &qkv[i * qkvd + h * group * hd..][..group * hd];
                // SAFETY: pair j alone uses att[j*group*hd..][..group*hd] and
                // scores[j*group*ss..][..group*ss] (att holds nr*nh*hd, scores max_rows*nh*ss floats).
                let (out, sc) =
                    unsafe { (att.slice(j * group * hd, group * hd), scores.slice(j * group * ss, group * ss)) };
                let (nk, nv) = (n.next_multiple_of(KEY_BLOCK) * hd, n * hd);
                match &cache.data {
                    KvData::F32 { k, v } => attend(out, sc, ss, q, &k[at..at + nk], &v[at..at + nv], hd, n, None),
                    KvData::F16 { k, v } => attend(out, sc, ss, q, &k[at..at + nk], &v[at..at + nv], hd, n, None),
                    KvData::Q8 { k, v, ks, vs } => {
                        let sat = at / hd;
                        let scales = Some((&ks[sat..sat + n], &vs[sat..sat + n]));
                        attend(out, sc, ss, q, &k[at..at + nk], &v[at..at + nv], hd, n, scales)
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_bytes_are_what_a_cache_allocates() {
        let (cfg, _, _) = ModelConfig::preset("tiny").unwrap();
        for kv in [KvType::F32, KvType::F16, KvType::Q8] {
            for cap in [1, 33, 100, cfg.max_seq_len + 5] {
                let held = match KvCache::new(&cfg, cap, kv).data {
                    KvData::F32 { k, v } => (k.len() + v.len()) * 4,
                    KvData::F16 { k, v } => (k.len() + v.len()) * 2,
                    KvData::Q8 { k, v, ks, vs } => k.len() + v.len() + (ks.len() + vs.len()) * 4,
                };
                assert_eq!(KvCache::bytes(&cfg, cap, kv), held, "{kv:?} cap {cap}");
            }
        }
    }

    #[test]
    fn reads_sysfs_cache_sizes() {
        assert_eq!(cache_size("32768K\n"), Some(32 << 20));
        assert_eq!(cache_size("1M"), Some(1 << 20));
        assert_eq!(cache_size("512"), Some(512));
        assert_eq!(cache_size("big"), None);
        assert_eq!(cache_size("2G"), None);
    }
}
