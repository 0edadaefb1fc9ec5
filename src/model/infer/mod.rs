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
use kernels::{
    KEY_BLOCK, Matrix, QuantRows, QuantRowsMut, attend, matmul, matmul_quantized, product_share, rmsnorm, rope,
};
use std::borrow::Cow;
use std::path::Path;

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

/// Rows per thread from which a decode step runs as a team ([`InferModel::decode`]).
pub const TEAM_ROWS: usize = 2;

/// Whether no two rows append to the same cache.
fn distinct_caches(rows: &[(usize, u32)]) -> bool {
    rows.iter().enumerate().all(|(i, r)| rows[i + 1..].iter().all(|o| o.0 != r.0))
}

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
}

impl Scratch {
    pub fn new(m: &InferModel, max_rows: usize) -> Self {
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
            logits: vec![0.0; r * c.vocab_size],
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
        let m = InferModel {
            cfg: cfg.clone(),
            quant,
            kv: KvType::F16,
            embed: params[lay.embed.clone()].to_vec(),
            layers,
            final_norm: params[lay.final_norm.clone()].to_vec(),
            lm_head: next(),
            cos,
            sin,
        };
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
    /// With several threads and at least [`TEAM_ROWS`] rows per thread, called from outside any
    /// pool task, the threads run the step together ([`step_team`](Self::step_team)).
    pub fn decode<'s>(
        &self,
        s: &'s mut Scratch,
        caches: &mut [KvCache],
        rows: &[(usize, u32)],
    ) -> Result<&'s [f32], InferError> {
        let pool = pool::pool();
        let nt = pool.threads();
        if pool.serial() || nt < 2 || rows.len() < nt * TEAM_ROWS || !distinct_caches(rows) {
            return self.step(s, caches, rows, Logits::Last);
        }
        self.step_team(s, caches, rows)
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
        self.begin(s, caches, rows)?;
        let (d, qd, kvd, f) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_hidden);
        let qkvd = qd + 2 * kvd;
        for (l, layer) in self.layers.iter().enumerate() {
            // x += the previous layer's output (in xn), then the attention norm
            self.norm_rows(s, nr, &layer.attn_norm, l > 0);
            self.product(&mut s.qkv[..nr * qkvd], &s.xn, &s.xq, &layer.wqkv, nr);
            for (i, &(ci, _)) in rows.iter().enumerate() {
                self.rope_and_store(&mut s.qkv[i * qkvd..(i + 1) * qkvd], &mut caches[ci], l, s.pos[i]);
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
        s.last.clear();
        if matches!(which, Logits::Last) {
            for i in 0..nr {
                if !rows[i + 1..].iter().any(|r| r.0 == rows[i].0) {
                    s.last.push(i);
                }
            }
        }
        // Every row (Logits::All, or each row its sequence's last): normalized in place, threaded.
        let nl = if s.last.is_empty() || s.last.len() == nr {
            self.norm_rows(s, nr, &self.final_norm, true);
            nr
        } else {
            // Packed to the front of xn: row j is written after row i = last[j] >= j has been
            // read, and before any later (larger) i.
            for (j, &i) in s.last.iter().enumerate() {
                let x = &mut s.x[i * d..(i + 1) * d];
                x.iter_mut().zip(&s.xn[i * d..(i + 1) * d]).for_each(|(x, y)| *x += y);
                rmsnorm(&mut s.xn[j * d..(j + 1) * d], x, &self.final_norm, d, c.norm_eps);
            }
            self.quantize_rows(&mut s.xq, &s.xn, s.last.len(), d);
            s.last.len()
        };
        self.product(&mut logits[..nl * c.vocab_size], &s.xn, &s.xq, &self.lm_head, nl);
        Ok(nl)
    }

    /// The start of a step: checks the rows, takes the next position of each row's cache (into
    /// s.pos) and the rows' embeddings (into s.x).
    fn begin(&self, s: &mut Scratch, caches: &mut [KvCache], rows: &[(usize, u32)]) -> Result<(), InferError> {
        let d = self.cfg.dim;
        if rows.len() > s.max_rows {
            return Err(InferError::TooManyRows { rows: rows.len(), max: s.max_rows });
        }
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
        Ok(())
    }

    /// A decode step run by all the pool's threads together, meeting at a barrier between
    /// phases: each thread normalizes, attends and gates its own rows, and computes its share of
    /// each matrix's panels for all rows. The weights are read once per step (where each thread
    /// ran whole steps for its own rows, both read all of them), and q8 products of 16 rows run
    /// on 16-row AMX tiles. Rows of distinct caches; called from outside any pool task.
    fn step_team<'s>(
        &self,
        s: &'s mut Scratch,
        caches: &mut [KvCache],
        rows: &[(usize, u32)],
    ) -> Result<&'s [f32], InferError> {
        self.begin(s, caches, rows)?;
        let c = &self.cfg;
        let (nr, d, qd, f) = (rows.len(), c.dim, c.q_dim(), c.ffn_hidden);
        let nt = pool::pool().threads();
        let team = pool::Barrier::new(nt);
        let (x, xn, qkv, att) = (
            SharedMut::new(&mut s.x),
            SharedMut::new(&mut s.xn),
            SharedMut::new(&mut s.qkv),
            SharedMut::new(&mut s.att),
        );
        let (scores, h13, h) = (SharedMut::new(&mut s.scores), SharedMut::new(&mut s.h13), SharedMut::new(&mut s.h));
        let logits = SharedMut::new(&mut s.logits);
        let xq = (self.quant == Quant::Q8).then(|| s.xq.shared(nr, d.max(qd).max(f)));
        let (all, pos) = (SharedMut::new(caches), &s.pos);
        pool::pool().run(nt, |t| {
            let _abort = pool::AbortOnPanic;
            let own = t * nr / nt..(t + 1) * nr / nt;
            let quantized = |k| xq.map(|q| q.rows(k));
            // out = input @ W^T for all rows, this thread's panels; the input rows are complete
            // after the first barrier, out after the second.
            let product = |out: SharedMut<f32>, input: SharedMut<f32>, w: &Matrix| {
                team.wait();
                // SAFETY: between the barriers the threads only read the input rows (and their
                // quantized values), and each writes its own panels of out.
                unsafe { product_share(out, input.read(0, nr * w.cols), xq.map(|q| q.view(w.cols)), w, nr, (t, nt)) };
                team.wait();
            };
            // SAFETY (the row phases): each thread uses its own rows, and their distinct caches.
            for (l, layer) in self.layers.iter().enumerate() {
                unsafe { self.norm_range(x, xn, quantized(d), &layer.attn_norm, own.clone(), l > 0) };
                product(qkv, xn, &layer.wqkv);
                for i in own.clone() {
                    let cache = unsafe { &mut all.slice(rows[i].0, 1)[0] };
                    unsafe { self.attend_row(qkv, att, scores, quantized(qd), cache, l, i, pos[i]) };
                }
                product(xn, att, &layer.wo);
                unsafe { self.norm_range(x, xn, quantized(d), &layer.ffn_norm, own.clone(), true) };
                product(h13, xn, &layer.w13);
                unsafe { self.swiglu_range(h, h13.read(0, own.end * 2 * f), quantized(f), own.clone()) };
                product(xn, h, &layer.w_down);
            }
            unsafe { self.norm_range(x, xn, quantized(d), &self.final_norm, own.clone(), true) };
            product(logits, xn, &self.lm_head);
        });
        Ok(&s.logits[..nr * c.vocab_size])
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
        let (x, xn) = (SharedMut::new(&mut s.x), SharedMut::new(&mut s.xn));
        let xq = self.quantized(&mut s.xq, nr, self.cfg.dim);
        // SAFETY: the ranges of rows are disjoint and within the first nr rows.
        for_rows(nr, |r| unsafe { self.norm_range(x, xn, xq, w, r, residual) });
    }

    /// [`norm_rows`](Self::norm_rows) of rows r.
    /// # Safety
    /// No other thread uses rows r of x, xn or xq meanwhile.
    unsafe fn norm_range(
        &self,
        x: SharedMut<f32>,
        xn: SharedMut<f32>,
        xq: Option<QuantRowsMut>,
        w: &[f32],
        r: std::ops::Range<usize>,
        residual: bool,
    ) {
        let (d, eps) = (self.cfg.dim, self.cfg.norm_eps);
        // SAFETY: as documented.
        let (x, xn) = unsafe { (x.slice(r.start * d, r.len() * d), xn.slice(r.start * d, r.len() * d)) };
        if residual {
            x.iter_mut().zip(&*xn).for_each(|(x, y)| *x += y);
        }
        rmsnorm(xn, x, w, d, eps);
        if let Some(xq) = xq {
            for (b, row) in r.zip(xn.chunks_exact(d)) {
                // SAFETY: as documented.
                unsafe { xq.quantize(b, row) };
            }
        }
    }

    /// h = silu(gate) · up for the first `nr` rows of h13 = [gate | up]; quantized into `s.xq`
    /// for q8 weights. Threaded over rows.
    fn swiglu_rows(&self, s: &mut Scratch, nr: usize) {
        let (h, h13) = (SharedMut::new(&mut s.h), &s.h13);
        let xq = self.quantized(&mut s.xq, nr, self.cfg.ffn_hidden);
        // SAFETY: the ranges of rows are disjoint and within the first nr rows.
        for_rows(nr, |r| unsafe { self.swiglu_range(h, h13, xq, r) });
    }

    /// [`swiglu_rows`](Self::swiglu_rows) of rows r (h13: [_, 2 · ffn_hidden]).
    /// # Safety
    /// No other thread uses rows r of h or xq meanwhile.
    unsafe fn swiglu_range(&self, h: SharedMut<f32>, h13: &[f32], xq: Option<QuantRowsMut>, r: std::ops::Range<usize>) {
        let f = self.cfg.ffn_hidden;
        for b in r {
            // SAFETY: as documented.
            let h = unsafe { h.slice(b * f, f) };
            let (gate, up) = h13[b * 2 * f..(b + 1) * 2 * f].split_at(f);
            for ((h, g), u) in h.iter_mut().zip(gate).zip(up) {
                *h = silu(*g) * u;
            }
            if let Some(xq) = xq {
                // SAFETY: as documented.
                unsafe { xq.quantize(b, h) };
            }
        }
    }

    /// Causal attention of every row over its cache (keys/values already written), into `s.att`;
    /// one task per (row, KV head) covers the query heads that share that KV head.
    fn attention(&self, s: &mut Scratch, caches: &[KvCache], rows: &[(usize, u32)], l: usize) {
        let c = &self.cfg;
        let (nkv, qkvd) = (c.n_kv_heads, c.q_dim() + 2 * c.kv_dim());
        let nr = rows.len();
        let (qkv, pos) = (&s.qkv, &s.pos);
        let (att, scores) = (SharedMut::new(&mut s.att), SharedMut::new(&mut s.scores));
        let pairs = nr * nkv;
        let work: usize = (0..nr).map(|i| pos[i] + 1).sum::<usize>() * c.n_heads * c.head_dim;
        let tasks = if work < 1 << 14 { 1 } else { pairs.min(pool::pool().threads() * 4) };
        let per = pairs.div_ceil(tasks);
        pool::pool().run(pairs.div_ceil(per), |task| {
            for j in task * per..((task + 1) * per).min(pairs) {
                let i = j / nkv;
                let q = &qkv[i * qkvd..][..c.q_dim()];
                // SAFETY: pair j is this task's alone.
                unsafe { self.attend_pair(att, scores, q, &caches[rows[i].0], l, j, pos[i] + 1) };
            }
        });
    }

    /// Row i at position p of its cache: rope of its queries and keys, the keys and values into
    /// layer l of the cache, its attention, and (for q8 weights) the attention output quantized.
    /// # Safety
    /// No other thread uses row i of qkv, att, scores or xq, or the cache, meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn attend_row(
        &self,
        qkv: SharedMut<f32>,
        att: SharedMut<f32>,
        scores: SharedMut<f32>,
        xq: Option<QuantRowsMut>,
        cache: &mut KvCache,
        l: usize,
        i: usize,
        p: usize,
    ) {
        let c = &self.cfg;
        let (nkv, qd, qkvd) = (c.n_kv_heads, c.q_dim(), c.q_dim() + 2 * c.kv_dim());
        // SAFETY: as documented.
        unsafe {
            let row = qkv.slice(i * qkvd, qkvd);
            self.rope_and_store(row, cache, l, p);
            for j in i * nkv..(i + 1) * nkv {
                self.attend_pair(att, scores, &row[..qd], cache, l, j, p + 1);
            }
            if let Some(xq) = xq {
                xq.quantize(i, att.slice(i * qd, qd));
            }
        }
    }

    /// Rope of a qkv row's queries and keys at position p, then its keys and values into layer
    /// l of the cache.
    fn rope_and_store(&self, row: &mut [f32], cache: &mut KvCache, l: usize, p: usize) {
        let c = &self.cfg;
        let (hd, qd, kvd) = (c.head_dim, c.q_dim(), c.kv_dim());
        let half = hd / 2;
        let (cs, sn) = (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half]);
        let (q, kv) = row.split_at_mut(qd);
        rope(q, hd, cs, sn);
        rope(&mut kv[..kvd], hd, cs, sn);
        for (h, (k, v)) in kv[..kvd].chunks_exact(hd).zip(kv[kvd..].chunks_exact(hd)).enumerate() {
            cache.write(c, l, h, p, k, v);
        }
    }

    /// Attention of pair j = (row i, KV head h) = (j / nkv, j % nkv): the query heads sharing KV
    /// head h (of the row's queries q: [q_dim]) over the first n positions of layer l of the row's
    /// cache, into att.
    /// # Safety
    /// No other thread uses pair j's att[j*group*hd..][..group*hd] or scores[j*group*ss..][..group*ss]
    /// (att holds nr*nh*hd, scores max_rows*nh*ss floats) meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn attend_pair(
        &self,
        att: SharedMut<f32>,
        scores: SharedMut<f32>,
        q: &[f32],
        cache: &KvCache,
        l: usize,
        j: usize,
        n: usize,
    ) {
        let c = &self.cfg;
        let (hd, nkv) = (c.head_dim, c.n_kv_heads);
        let group = c.n_heads / nkv;
        let ss = c.max_seq_len.next_multiple_of(KEY_BLOCK);
        let h = j % nkv;
        let at = cache.head_at(c, l, h);
        let q = &q[h * group * hd..][..group * hd];
        // SAFETY: as documented.
        let (out, sc) = unsafe { (att.slice(j * group * hd, group * hd), scores.slice(j * group * ss, group * ss)) };
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
}
