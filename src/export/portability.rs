//! Which tools will load a model of a given shape, and for those that will not, why and the
//! nearest shapes that would.
//!
//! The rules (measured, see docs/share.md):
//! - transformers: `hidden_size` must be a multiple of `num_attention_heads` (its config
//!   validation); `head_dim` itself is free.
//! - llama.cpp (GGUF, llama architecture): any shape the engine builds; a free `head_dim` is
//!   carried by `attention.key_length`/`value_length`.
//! - llama2.c: `dim` must be a multiple of `n_heads` and `head_dim` must equal `dim / n_heads`
//!   (its header has no head_dim field).
//!
//! Nearest shapes change one thing at a time: the number of heads (nearest counts that divide
//! `dim`, below and above), or `dim` (nearest multiples of the head count), or — for llama2.c —
//! `dim = n_heads * head_dim`. Grouped-query attention is kept where possible: `n_kv_heads`
//! becomes the largest divisor of the new head count not above the old `n_kv_heads` (equal to the
//! head count for multi-head models).

use crate::model::ModelConfig;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Transformers,
    LlamaCpp,
    Llama2c,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Transformers => "transformers",
            Target::LlamaCpp => "llama.cpp (GGUF)",
            Target::Llama2c => "llama2.c",
        })
    }
}

/// Whether one target loads the model; if not, why and the nearest shapes it would load.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetReport {
    pub target: Target,
    /// Reasons the target will not load the model (empty: it loads).
    pub problems: Vec<String>,
    /// Remarks that do not stop loading (e.g. how a free head_dim is carried).
    pub notes: Vec<String>,
    /// Nearest shapes the target loads, closest first.
    pub nearest: Vec<ModelConfig>,
}

impl TargetReport {
    pub fn loads(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for TargetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.loads() { "loads" } else { "will NOT load" };
        writeln!(f, "{}: {verdict}", self.target)?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        if !self.nearest.is_empty() {
            writeln!(f, "  nearest shapes it loads:")?;
            for c in &self.nearest {
                writeln!(f, "    {}", shape_line(c))?;
            }
        }
        Ok(())
    }
}

/// `dim 512, n_heads 8, n_kv_heads 8, head_dim 48 (12.3M params)`.
pub fn shape_line(c: &ModelConfig) -> String {
    format!(
        "dim {}, n_heads {}, n_kv_heads {}, head_dim {} ({:.2}M params)",
        c.dim,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.num_params() as f64 / 1e6
    )
}

/// The report for every target, in the order transformers, llama.cpp, llama2.c.
pub fn portability(cfg: &ModelConfig) -> Vec<TargetReport> {
    vec![transformers(cfg), llama_cpp(cfg), llama2c(cfg)]
}

fn transformers(c: &ModelConfig) -> TargetReport {
    let mut r = report(Target::Transformers);
    if c.n_heads == 0 || !c.dim.is_multiple_of(c.n_heads) {
        r.problems.push(format!(
            "hidden_size (dim {}) is not a multiple of num_attention_heads ({}); transformers rejects the config",
            c.dim, c.n_heads
        ));
        r.nearest.extend(nearest_head_counts(c).into_iter().map(|h| with_heads(c, h, c.head_dim)));
        r.nearest.extend(nearest_dims(c).into_iter().map(|d| ModelConfig { dim: d, ..c.clone() }));
    } else if c.head_dim * c.n_heads != c.dim {
        r.notes.push(format!("head_dim {} ≠ dim / n_heads; carried by config.json \"head_dim\"", c.head_dim));
    }
    r
}

fn llama_cpp(c: &ModelConfig) -> TargetReport {
    let mut r = report(Target::LlamaCpp);
    if c.head_dim * c.n_heads != c.dim {
        r.notes.push(format!(
            "head_dim {} ≠ dim / n_heads; carried by llama.attention.key_length/value_length",
            c.head_dim
        ));
    }
    if !c.dim.is_multiple_of(32) || !c.q_dim().is_multiple_of(32) || !c.ffn_hidden.is_multiple_of(32) {
        r.notes.push("some rows are not a multiple of 32 values: q8_0 export keeps those tensors in f32".into());
    }
    r
}

fn llama2c(c: &ModelConfig) -> TargetReport {
    let mut r = report(Target::Llama2c);
    if c.n_heads == 0 || !c.dim.is_multiple_of(c.n_heads) || c.dim / c.n_heads != c.head_dim {
        r.problems.push(format!(
            "head_dim must equal dim / n_heads (llama2.c has no head_dim field); here {} heads of {} make {} ≠ dim {}",
            c.n_heads,
            c.head_dim,
            c.q_dim(),
            c.dim
        ));
        r.nearest.push(ModelConfig { dim: c.q_dim(), ..c.clone() });
        for h in nearest_head_counts(c) {
            let hd = c.dim / h;
            if hd.is_multiple_of(2) {
                r.nearest.push(with_heads(c, h, hd));
            }
        }
    }
    r.notes.push(
        "llama2.c's tokenizer.bin is score-ordered SentencePiece-style; our byte-level BPE tokenizer has no exact equivalent"
            .into(),
    );
    r
}

fn report(target: Target) -> TargetReport {
    TargetReport { target, problems: Vec::new(), notes: Vec::new(), nearest: Vec::new() }
}

/// The head counts nearest to `n_heads` (one below, one above) that divide `dim`.
fn nearest_head_counts(c: &ModelConfig) -> Vec<usize> {
    let divides = |h: usize| h > 0 && c.dim.is_multiple_of(h);
    let below = (1..c.n_heads).rev().find(|&h| divides(h));
    let above = (c.n_heads + 1..=c.dim).find(|&h| divides(h));
    let mut out: Vec<usize> = below.into_iter().chain(above).collect();
    out.sort_by_key(|&h| h.abs_diff(c.n_heads));
    out
}

/// The multiples of `n_heads` nearest to `dim` (one below, one above).
fn nearest_dims(c: &ModelConfig) -> Vec<usize> {
    let h = c.n_heads.max(1);
    let below = c.dim / h * h;
    let above = below + h;
    let mut out: Vec<usize> = [below, above].into_iter().filter(|&d| d > 0 && d != c.dim).collect();
    out.sort_by_key(|&d| d.abs_diff(c.dim));
    out
}

/// `c` with `heads` heads of `head_dim`, keeping grouped-query attention where possible.
fn with_heads(c: &ModelConfig, heads: usize, head_dim: usize) -> ModelConfig {
    let kv = if c.n_kv_heads == c.n_heads {
        heads
    } else {
        (1..=c.n_kv_heads.min(heads)).rev().find(|&k| heads.is_multiple_of(k)).unwrap_or(1)
    };
    ModelConfig { n_heads: heads, n_kv_heads: kv, head_dim, ..c.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micro() -> ModelConfig {
        ModelConfig::preset("microstories").unwrap().0
    }

    #[test]
    fn microstories_shape_fails_transformers_and_llama2c_but_not_llama_cpp() {
        let r = portability(&micro());
        assert!(!r[0].loads() && r[0].problems[0].contains("not a multiple of num_attention_heads"));
        assert!(r[1].loads());
        assert!(!r[2].loads() && r[2].problems[0].contains("head_dim must equal dim / n_heads"));
        let heads: Vec<_> = r[0].nearest.iter().map(|c| (c.dim, c.n_heads, c.n_kv_heads, c.head_dim)).collect();
        assert_eq!(heads, [(512, 4, 4, 48), (512, 8, 8, 48), (510, 6, 6, 48), (516, 6, 6, 48)]);
        let l2c: Vec<_> = r[2].nearest.iter().map(|c| (c.dim, c.n_heads, c.head_dim)).collect();
        assert_eq!(l2c, [(288, 6, 48), (512, 4, 128), (512, 8, 64)]);
    }

    #[test]
    fn every_suggestion_loads_on_its_target_and_is_valid() {
        let mut gqa = micro();
        gqa.n_kv_heads = 2;
        for cfg in [micro(), gqa] {
            for r in portability(&cfg) {
                for s in &r.nearest {
                    s.validate().unwrap();
                    let again = portability(s).into_iter().find(|x| x.target == r.target).unwrap();
                    assert!(again.loads(), "{} suggested {s:?} but it does not load", r.target);
                }
            }
        }
    }

    #[test]
    fn standard_shape_loads_everywhere() {
        let (c, _, _) = ModelConfig::preset("tiny").unwrap();
        assert!(portability(&c).iter().all(|r| r.loads()));
        let text = portability(&micro())[0].to_string();
        assert!(text.contains("will NOT load") && text.contains("dim 512, n_heads 8"), "{text}");
    }
}
