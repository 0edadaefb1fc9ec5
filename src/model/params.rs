//! Parameters (and, with the same layout, gradients and AdamW moments) as one contiguous f32
//! buffer with named views. Names and `[out, in]` shapes are those of HF `LlamaForCausalLM`.

use crate::model::config::ModelConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

/// Where one tensor lives in the flat buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl TensorSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
    /// 2-D weights get weight decay; norms (1-D) do not.
    pub fn is_matrix(&self) -> bool {
        self.shape.len() == 2
    }
}

/// Ranges of one transformer block's tensors inside the flat buffer.
#[derive(Debug, Clone)]
pub struct LayerRanges {
    pub attn_norm: Range<usize>, // [D]
    pub wq: Range<usize>,        // [H*hd, D]
    pub wk: Range<usize>,        // [KV*hd, D]
    pub wv: Range<usize>,        // [KV*hd, D]
    pub wo: Range<usize>,        // [D, H*hd]
    pub ffn_norm: Range<usize>,  // [D]
    pub w_gate: Range<usize>,    // [F, D]
    pub w_up: Range<usize>,      // [F, D]
    pub w_down: Range<usize>,    // [D, F]
}

/// The layout of every tensor, in HF order. Tied models have no `lm_head.weight`.
#[derive(Debug, Clone)]
pub struct ParamLayout {
    pub tensors: Vec<TensorSpec>,
    pub embed: Range<usize>, // [V, D]
    pub layers: Vec<LayerRanges>,
    pub final_norm: Range<usize>, // [D]
    /// `lm_head.weight` [V, D]; equal to `embed` when embeddings are tied.
    pub lm_head: Range<usize>,
}

impl ParamLayout {
    pub fn new(c: &ModelConfig) -> Self {
        let mut tensors = Vec::new();
        let mut offset = 0;
        let mut push = |name: String, shape: Vec<usize>| {
            let t = TensorSpec { name, shape, offset };
            offset += t.len();
            let r = t.range();
            tensors.push(t);
            r
        };
        let (d, f) = (c.dim, c.ffn_hidden);
        let embed = push("model.embed_tokens.weight".into(), vec![c.vocab_size, d]);
        let layers = (0..c.n_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                LayerRanges {
                    attn_norm: push(format!("{p}.input_layernorm.weight"), vec![d]),
                    wq: push(format!("{p}.self_attn.q_proj.weight"), vec![c.q_dim(), d]),
                    wk: push(format!("{p}.self_attn.k_proj.weight"), vec![c.kv_dim(), d]),
                    wv: push(format!("{p}.self_attn.v_proj.weight"), vec![c.kv_dim(), d]),
                    wo: push(format!("{p}.self_attn.o_proj.weight"), vec![d, c.q_dim()]),
                    ffn_norm: push(format!("{p}.post_attention_layernorm.weight"), vec![d]),
                    w_gate: push(format!("{p}.mlp.gate_proj.weight"), vec![f, d]),
                    w_up: push(format!("{p}.mlp.up_proj.weight"), vec![f, d]),
                    w_down: push(format!("{p}.mlp.down_proj.weight"), vec![d, f]),
                }
            })
            .collect();
        let final_norm = push("model.norm.weight".into(), vec![d]);
        let lm_head =
            if c.tie_embeddings { embed.clone() } else { push("lm_head.weight".into(), vec![c.vocab_size, d]) };
        ParamLayout { tensors, embed, layers, final_norm, lm_head }
    }

    /// Total number of f32 values in the buffer.
    pub fn total(&self) -> usize {
        self.tensors.last().map_or(0, |t| t.offset + t.len())
    }

    pub fn get(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Seeded LLaMA-style initialisation: N(0, 0.02) for weights, with the residual output
/// projections (`o_proj`, `down_proj`) scaled by 1/sqrt(2 * n_layers); norms start at 1.
pub fn init_params(c: &ModelConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = vec![0.0f32; layout.total()];
    let resid_std = 0.02 / (2.0 * c.n_layers as f32).sqrt();
    for t in &layout.tensors {
        let buf = &mut p[t.range()];
        if !t.is_matrix() {
            buf.fill(1.0);
            continue;
        }
        let std =
            if t.name.ends_with("o_proj.weight") || t.name.ends_with("down_proj.weight") { resid_std } else { 0.02 };
        fill_normal(buf, std, &mut rng);
    }
    p
}

/// Fills `buf` with N(0, std^2) samples (Box–Muller).
pub fn fill_normal(buf: &mut [f32], std: f32, rng: &mut ChaCha8Rng) {
    for pair in buf.chunks_mut(2) {
        let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
        let u2: f32 = rng.random::<f32>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let th = 2.0 * std::f32::consts::PI * u2;
        pair[0] = r * th.cos();
        if let Some(x) = pair.get_mut(1) {
            *x = r * th.sin();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_counts_tiny_preset_params() {
        let (c, _, _) = ModelConfig::preset("tiny").unwrap();
        // embed + 6 * (2 norms + q,k,v,o + 3 mlp) + final norm (tied head)
        let per_layer = 2 * 256 + 256 * 256 + 2 * 128 * 256 + 256 * 256 + 3 * 688 * 256;
        assert_eq!(c.num_params(), 8192 * 256 + 6 * per_layer + 256);
    }

    #[test]
    fn untied_layout_has_lm_head_after_norm() {
        let (mut c, _, _) = ModelConfig::preset("tiny").unwrap();
        c.tie_embeddings = false;
        let l = ParamLayout::new(&c);
        assert_eq!(l.tensors.last().unwrap().name, "lm_head.weight");
        assert_eq!(l.lm_head.start, l.final_norm.end);
    }

    #[test]
    fn init_is_seeded() {
        let (c, _, _) = ModelConfig::preset("tiny").unwrap();
        let l = ParamLayout::new(&c);
        assert_eq!(init_params(&c, &l, 7), init_params(&c, &l, 7));
        assert_ne!(init_params(&c, &l, 7)[..100], init_params(&c, &l, 8)[..100]);
    }
}
