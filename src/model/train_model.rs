//! The training forward and backward pass of the whole model, llm.c-style: parameters and
//! gradients are flat buffers laid out by [`ParamLayout`], activations are sized once for
//! (batch, seq) and reused, and one step reads top to bottom.

use crate::model::aligned::Aligned;
use crate::model::kernels::ROWS_PER_TASK;
use crate::model::kernels::attention::{AttnShape, attention_backward, attention_forward};
use crate::model::kernels::crossentropy::{crossentropy_backward, crossentropy_forward};
use crate::model::kernels::embedding::{embedding_backward, embedding_forward};
use crate::model::kernels::linear::{linear_backward, linear_forward};
use crate::model::kernels::rmsnorm::{rmsnorm_apply, rmsnorm_backward, rmsnorm_forward};
use crate::model::kernels::rope::{rope_backward, rope_forward, rope_tables};
use crate::model::kernels::swiglu::{swiglu_backward, swiglu_forward};
use crate::model::{IGNORE_INDEX, ModelConfig, ParamLayout};

/// What the backward pass needs from one transformer block's forward pass. Cheap activations
/// (the norms' outputs, silu(gate)·up) are recomputed in the backward pass instead of kept.
struct LayerActs {
    x: Aligned<f32>,        // [N, D] block input (residual stream)
    rstd1: Aligned<f32>,    // [N]
    q: Aligned<f32>,        // [N, H*hd] after RoPE
    k: Aligned<f32>,        // [N, KV*hd] after RoPE
    v: Aligned<f32>,        // [N, KV*hd]
    lse: Aligned<f32>,      // [B, H, T] attention log-sum-exp (probabilities are recomputed)
    attn_out: Aligned<f32>, // [N, H*hd]
    x_mid: Aligned<f32>,    // [N, D] residual after attention
    rstd2: Aligned<f32>,    // [N]
    gate: Aligned<f32>,     // [N, F]
    up: Aligned<f32>,       // [N, F]
}

/// Scratch reused by every layer: the current norm output and silu(gate)·up (forward, and
/// recomputed in backward), and the gradients of the backward pass.
struct Scratch {
    ln: Aligned<f32>,       // [N, D] a norm's output (after the forward pass: lnf)
    h: Aligned<f32>,        // [N, F] silu(gate) * up, then d gate
    dres: Aligned<f32>,     // [N, D] gradient of the residual stream
    dln: Aligned<f32>,      // [N, D] gradient of a norm's output (first: d lnf, unscaled, from forward)
    dq: Aligned<f32>,       // [N, H*hd]
    dk: Aligned<f32>,       // [N, KV*hd]
    dv: Aligned<f32>,       // [N, KV*hd]
    dattn: Aligned<f32>,    // [N, H*hd]
    dh: Aligned<f32>,       // [N, F] d h, then d up
    partials: Aligned<f32>, // [N / ROWS_PER_TASK, D] for norm-weight reductions
}

/// Rows of the output head computed at a time: the [N, V] logits never exist in full, which keeps
/// memory low for large vocabularies.
const HEAD_ROWS: usize = 256;

/// A model with its parameters, gradients and activations for batches of (batch, seq) tokens.
pub struct TrainModel {
    pub cfg: ModelConfig,
    pub layout: ParamLayout,
    pub params: Aligned<f32>,
    pub grads: Aligned<f32>,
    batch: usize,
    seq: usize,
    layers: Vec<LayerActs>,
    x_final: Aligned<f32>, // [N, D] output of the last block
    rstdf: Aligned<f32>,   // [N]
    logits: Aligned<f32>,  // [HEAD_ROWS, V] one chunk of logits, then its gradient
    dhead: Aligned<f32>,   // [V, D] d loss / d lm_head, unscaled (filled by forward)
    losses: Aligned<f32>,  // [N]
    lse: Aligned<f32>,     // [HEAD_ROWS] log-sum-exp of each row of the logits chunk
    tokens: Vec<u32>,
    targets: Vec<u32>,
    counted: usize,
    /// Set by `forward`, taken by `backward`: the gradient state (dhead, dln, activations) belongs
    /// to the last forward, and `backward` scales dln in place, so it may run once per forward.
    grad_ready: bool,
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    g: Scratch,
}

impl TrainModel {
    /// Sizes every buffer for batches of `batch` sequences of `seq` tokens.
    pub fn new(cfg: ModelConfig, params: Vec<f32>, batch: usize, seq: usize) -> Self {
        let layout = ParamLayout::new(&cfg);
        assert_eq!(params.len(), layout.total(), "parameter buffer does not match the config");
        assert!(seq <= cfg.max_seq_len, "seq {seq} exceeds max_seq_len {}", cfg.max_seq_len);
        let n = batch * seq;
        let (d, f, qd, kvd) = (cfg.dim, cfg.ffn_hidden, cfg.q_dim(), cfg.kv_dim());
        let z = |len: usize| Aligned::<f32>::zeroed(len);
        let layers = (0..cfg.n_layers)
            .map(|_| LayerActs {
                x: z(n * d),
                rstd1: z(n),
                q: z(n * qd),
                k: z(n * kvd),
                v: z(n * kvd),
                lse: z(batch * cfg.n_heads * seq),
                attn_out: z(n * qd),
                x_mid: z(n * d),
                rstd2: z(n),
                gate: z(n * f),
                up: z(n * f),
            })
            .collect();
        let (rope_cos, rope_sin) = rope_tables(seq, cfg.head_dim, cfg.rope_theta);
        let g = Scratch {
            ln: z(n * d),
            h: z(n * f),
            dres: z(n * d),
            dln: z(n * d),
            dq: z(n * qd),
            dk: z(n * kvd),
            dv: z(n * kvd),
            dattn: z(n * qd),
            dh: z(n * f),
            partials: z(n.div_ceil(ROWS_PER_TASK) * d),
        };
        let mut p = z(params.len());
        p.copy_from_slice(&params);
        TrainModel {
            grads: z(params.len()),
            params: p,
            layout,
            batch,
            seq,
            layers,
            x_final: z(n * d),
            rstdf: z(n),
            logits: z(HEAD_ROWS.min(n) * cfg.vocab_size),
            dhead: z(cfg.vocab_size * d),
            losses: z(n),
            lse: z(HEAD_ROWS.min(n)),
            tokens: vec![0; n],
            targets: vec![0; n],
            counted: 0,
            grad_ready: false,
            rope_cos,
            rope_sin,
            g,
            cfg,
        }
    }

    fn attn_shape(&self) -> AttnShape {
        let c = &self.cfg;
        AttnShape { b: self.batch, t: self.seq, heads: c.n_heads, kv_heads: c.n_kv_heads, hd: c.head_dim }
    }

    /// tokens, targets: [batch*seq]; targets equal to `IGNORE_INDEX` do not count. Returns the mean
    /// cross-entropy over the counted targets (0 when none count) and keeps what `backward` needs
    /// (the output head's gradient is formed here, chunk by chunk, as the logits are).
    pub fn forward(&mut self, tokens: &[u32], targets: &[u32]) -> f32 {
        self.grad_ready = false;
        self.body_forward(tokens);
        let loss = self.head(targets, true);
        self.grad_ready = true;
        loss
    }

    /// The mean loss only, for evaluation: no gradient work.
    pub fn loss(&mut self, tokens: &[u32], targets: &[u32]) -> f32 {
        self.grad_ready = false;
        self.body_forward(tokens);
        self.head(targets, false)
    }

    /// All logits [batch*seq, vocab] of `tokens` (allocates; for tests and scoring).
    pub fn logits(&mut self, tokens: &[u32]) -> Vec<f32> {
        self.grad_ready = false;
        self.body_forward(tokens);
        let (n, d, v) = (tokens.len(), self.cfg.dim, self.cfg.vocab_size);
        let mut out = vec![0.0; n * v];
        linear_forward(&mut out, &self.g.ln, &self.params[self.layout.lm_head.clone()], n, d, v, false);
        out
    }

    /// Embedding, the blocks and the final norm: fills the activations, and lnf into `g.ln`.
    fn body_forward(&mut self, tokens: &[u32]) {
        let n = self.batch * self.seq;
        assert!(tokens.len() == n, "expected {n} tokens");
        let c = self.cfg.clone();
        let (d, f, qd, kvd) = (c.dim, c.ffn_hidden, c.q_dim(), c.kv_dim());
        assert!(tokens.iter().all(|&t| (t as usize) < c.vocab_size), "token id outside the vocabulary");
        self.tokens.copy_from_slice(tokens);
        let shape = self.attn_shape();
        let p = &self.params;

        embedding_forward(&mut self.layers[0].x, tokens, &p[self.layout.embed.clone()], d);
        for l in 0..c.n_layers {
            let w = &self.layout.layers[l];
            let (done, rest) = self.layers.split_at_mut(l + 1);
            let a = &mut done[l];
            let (ln, h) = (&mut self.g.ln, &mut self.g.h);
            rmsnorm_forward(ln, &mut a.rstd1, &a.x, &p[w.attn_norm.clone()], d, c.norm_eps);
            linear_forward(&mut a.q, ln, &p[w.wq.clone()], n, d, qd, false);
            linear_forward(&mut a.k, ln, &p[w.wk.clone()], n, d, kvd, false);
            linear_forward(&mut a.v, ln, &p[w.wv.clone()], n, d, kvd, false);
            rope_forward(&mut a.q, &self.rope_cos, &self.rope_sin, self.seq, c.n_heads, c.head_dim);
            rope_forward(&mut a.k, &self.rope_cos, &self.rope_sin, self.seq, c.n_kv_heads, c.head_dim);
            attention_forward(&mut a.attn_out, &mut a.lse, &a.q, &a.k, &a.v, shape);
            a.x_mid.copy_from_slice(&a.x);
            linear_forward(&mut a.x_mid, &a.attn_out, &p[w.wo.clone()], n, qd, d, true);
            rmsnorm_forward(ln, &mut a.rstd2, &a.x_mid, &p[w.ffn_norm.clone()], d, c.norm_eps);
            linear_forward(&mut a.gate, ln, &p[w.w_gate.clone()], n, d, f, false);
            linear_forward(&mut a.up, ln, &p[w.w_up.clone()], n, d, f, false);
            swiglu_forward(h, &a.gate, &a.up);
            let x_next = match rest.first_mut() {
                Some(next) => &mut next.x,
                None => &mut self.x_final,
            };
            x_next.copy_from_slice(&a.x_mid);
            linear_forward(x_next, h, &p[w.w_down.clone()], n, f, d, true);
        }
        rmsnorm_forward(
            &mut self.g.ln,
            &mut self.rstdf,
            &self.x_final,
            &p[self.layout.final_norm.clone()],
            d,
            c.norm_eps,
        );
    }

    /// Output head and cross-entropy, HEAD_ROWS rows at a time. With `with_grad`, also turns each
    /// chunk of logits into its gradient and forms the unscaled d lnf and d lm_head.
    fn head(&mut self, targets: &[u32], with_grad: bool) -> f32 {
        let (n, d, v) = (self.batch * self.seq, self.cfg.dim, self.cfg.vocab_size);
        assert!(targets.len() == n, "expected {n} targets");
        assert!(targets.iter().all(|&t| t == IGNORE_INDEX || (t as usize) < v), "target outside the vocabulary");
        self.targets.copy_from_slice(targets);
        let w = &self.params[self.layout.lm_head.clone()];
        if with_grad {
            self.dhead.fill(0.0);
            self.g.dln.fill(0.0);
        }
        self.counted = 0;
        for r0 in (0..n).step_by(HEAD_ROWS) {
            let rows = HEAD_ROWS.min(n - r0);
            let (x, t) = (&self.g.ln[r0 * d..(r0 + rows) * d], &targets[r0..r0 + rows]);
            let logits = &mut self.logits[..rows * v];
            linear_forward(logits, x, w, rows, d, v, false);
            let lse = &mut self.lse[..rows];
            self.counted += crossentropy_forward(&mut self.losses[r0..r0 + rows], lse, logits, t, v);
            if with_grad {
                crossentropy_backward(logits, lse, t, v);
                let dx = &mut self.g.dln[r0 * d..(r0 + rows) * d];
                linear_backward(dx, &mut self.dhead, logits, x, w, rows, d, v);
            }
        }
        if self.counted == 0 {
            return 0.0;
        }
        (self.losses.iter().map(|&l| l as f64).sum::<f64>() / self.counted as f64) as f32
    }

    /// Adds d(loss · loss_scale)/dθ to `grads`, for the batch of the last `forward`
    /// (loss_scale = 1/accum_steps for gradient accumulation).
    ///
    /// # Panics
    /// Unless the last call was `forward` (each forward allows one backward; `loss` and `logits`
    /// overwrite the activations).
    pub fn backward(&mut self, loss_scale: f32) {
        assert!(
            std::mem::take(&mut self.grad_ready),
            "backward() needs a forward() of the batch first (one backward per forward)"
        );
        if self.counted == 0 {
            return;
        }
        let n = self.batch * self.seq;
        let c = self.cfg.clone();
        let (d, f, qd, kvd) = (c.dim, c.ffn_hidden, c.q_dim(), c.kv_dim());
        let shape = self.attn_shape();
        let (p, gr, lay, g) = (&self.params, &mut self.grads, &self.layout, &mut self.g);

        let scale = loss_scale / self.counted as f32;
        scaled_add(&mut gr[lay.lm_head.clone()], &self.dhead, scale);
        g.dln.iter_mut().for_each(|x| *x *= scale);
        g.dres.fill(0.0);
        let fnorm = lay.final_norm.clone();
        rmsnorm_backward(
            &mut g.dres,
            &mut gr[fnorm.clone()],
            &mut g.partials,
            &g.dln,
            &self.x_final,
            &p[fnorm],
            &self.rstdf,
            d,
        );
        for l in (0..c.n_layers).rev() {
            let (w, a) = (&lay.layers[l], &self.layers[l]);
            // x_next = x_mid + h · Wdᵀ, h = silu(gate) · up (recomputed)
            swiglu_forward(&mut g.h, &a.gate, &a.up);
            g.dh.fill(0.0);
            linear_backward(&mut g.dh, &mut gr[w.w_down.clone()], &g.dres, &g.h, &p[w.w_down.clone()], n, f, d);
            let (dgate, dup) = (&mut g.h, &mut g.dh);
            swiglu_backward(dgate, dup, &a.gate, &a.up);
            // gate, up = ln2 · Wgᵀ, ln2 · Wuᵀ, ln2 = rmsnorm(x_mid) (recomputed)
            rmsnorm_apply(&mut g.ln, &a.x_mid, &p[w.ffn_norm.clone()], &a.rstd2, d);
            g.dln.fill(0.0);
            linear_backward(&mut g.dln, &mut gr[w.w_gate.clone()], dgate, &g.ln, &p[w.w_gate.clone()], n, d, f);
            linear_backward(&mut g.dln, &mut gr[w.w_up.clone()], dup, &g.ln, &p[w.w_up.clone()], n, d, f);
            let wn = w.ffn_norm.clone();
            rmsnorm_backward(&mut g.dres, &mut gr[wn.clone()], &mut g.partials, &g.dln, &a.x_mid, &p[wn], &a.rstd2, d);
            // x_mid = x + attn_out · Woᵀ
            g.dattn.fill(0.0);
            linear_backward(&mut g.dattn, &mut gr[w.wo.clone()], &g.dres, &a.attn_out, &p[w.wo.clone()], n, qd, d);
            attention_backward(&mut g.dq, &mut g.dk, &mut g.dv, &g.dattn, &a.q, &a.k, &a.v, &a.lse, shape);
            rope_backward(&mut g.dq, &self.rope_cos, &self.rope_sin, self.seq, c.n_heads, c.head_dim);
            rope_backward(&mut g.dk, &self.rope_cos, &self.rope_sin, self.seq, c.n_kv_heads, c.head_dim);
            // q, k, v = ln1 · W{q,k,v}ᵀ, ln1 = rmsnorm(x) (recomputed)
            rmsnorm_apply(&mut g.ln, &a.x, &p[w.attn_norm.clone()], &a.rstd1, d);
            g.dln.fill(0.0);
            linear_backward(&mut g.dln, &mut gr[w.wq.clone()], &g.dq, &g.ln, &p[w.wq.clone()], n, d, qd);
            linear_backward(&mut g.dln, &mut gr[w.wk.clone()], &g.dk, &g.ln, &p[w.wk.clone()], n, d, kvd);
            linear_backward(&mut g.dln, &mut gr[w.wv.clone()], &g.dv, &g.ln, &p[w.wv.clone()], n, d, kvd);
            let an = w.attn_norm.clone();
            rmsnorm_backward(&mut g.dres, &mut gr[an.clone()], &mut g.partials, &g.dln, &a.x, &p[an], &a.rstd1, d);
        }
        embedding_backward(&mut gr[lay.embed.clone()], &g.dres, &self.tokens, d);
    }

    /// Sets all gradients to zero (once per optimizer step).
    pub fn zero_grad(&mut self) {
        self.grads.fill(0.0);
    }
}

/// out += x * scale, threaded.
fn scaled_add(out: &mut [f32], x: &[f32], scale: f32) {
    use rayon::prelude::*;
    out.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(o, x)| {
        o.iter_mut().zip(x).for_each(|(o, x)| *o += x * scale);
    });
}
