//! `model.safetensors` with HF Llama tensor names, read into and written from the flat buffer.

use crate::model::config::{HfLlamaConfig, ModelConfig};
use crate::model::params::ParamLayout;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: not a valid safetensors file ({msg})")]
    Format { path: String, msg: String },
    #[error("{path}: tensor `{name}` is missing; the checkpoint does not match its config.json")]
    Missing { path: String, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?} but config.json implies {want:?}")]
    Shape { path: String, name: String, got: Vec<usize>, want: Vec<usize> },
    #[error("{path}: tensor `{name}` has dtype {dtype}; only F32, F16 and BF16 can be read")]
    Dtype { path: String, name: String, dtype: String },
}

/// Writes every tensor of `layout` from `params` as F32 to `path` (not atomic: callers
/// write into a temporary directory and rename it).
pub fn save_safetensors(path: &Path, layout: &ParamLayout, params: &[f32]) -> Result<(), WeightsError> {
    let bytes: Vec<Vec<u8>> =
        layout.tensors.iter().map(|t| params[t.range()].iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(String, TensorView)> = layout
        .tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| (t.name.clone(), TensorView::new(Dtype::F32, t.shape.clone(), b).expect("shape matches")))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let p = path.display().to_string();
    safetensors::serialize_to_file(views, &Some(meta), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(error) => WeightsError::Io { path: p, error },
        e => WeightsError::Format { path: p, msg: e.to_string() },
    })
}

/// Reads the tensors of `layout` from one or more safetensors files into a new buffer.
/// Tensors not in the layout (e.g. `lm_head.weight` of a tied model) are ignored.
pub fn load_safetensors(paths: &[&Path], layout: &ParamLayout) -> Result<Vec<f32>, WeightsError> {
    let mut params = vec![0.0f32; layout.total()];
    let mut found = vec![false; layout.tensors.len()];
    for path in paths {
        let p = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|error| WeightsError::Io { path: p.clone(), error })?;
        // SAFETY: the file is opened read-only and not modified while mapped.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|error| WeightsError::Io { path: p.clone(), error })?;
        let st = SafeTensors::deserialize(&mmap)
            .map_err(|e| WeightsError::Format { path: p.clone(), msg: e.to_string() })?;
        for (i, t) in layout.tensors.iter().enumerate() {
            let Ok(view) = st.tensor(&t.name) else { continue };
            if view.shape() != t.shape.as_slice() {
                return Err(WeightsError::Shape {
                    path: p,
                    name: t.name.clone(),
                    got: view.shape().to_vec(),
                    want: t.shape.clone(),
                });
            }
            let dst = &mut params[t.range()];
            let src = view.data();
            match view.dtype() {
                Dtype::F32 => dst
                    .iter_mut()
                    .zip(src.chunks_exact(4))
                    .for_each(|(d, b)| *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                Dtype::F16 => dst
                    .iter_mut()
                    .zip(src.chunks_exact(2))
                    .for_each(|(d, b)| *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                Dtype::BF16 => dst
                    .iter_mut()
                    .zip(src.chunks_exact(2))
                    .for_each(|(d, b)| *d = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                other => {
                    return Err(WeightsError::Dtype { path: p, name: t.name.clone(), dtype: format!("{other:?}") });
                }
            }
            found[i] = true;
        }
    }
    if let Some(i) = found.iter().position(|f| !f) {
        let path = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(WeightsError::Missing { path, name: layout.tensors[i].name.clone() });
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::init_params;

    fn tiny() -> ModelConfig {
        ModelConfig {
            vocab_size: 32,
            dim: 16,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 6,
            ffn_hidden: 24,
            max_seq_len: 8,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            tie_embeddings: false,
        }
    }

    #[test]
    fn save_then_load_is_identical() {
        let c = tiny();
        let l = ParamLayout::new(&c);
        let p = init_params(&c, &l, 1);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("model.safetensors");
        save_safetensors(&f, &l, &p).unwrap();
        assert_eq!(load_safetensors(&[&f], &l).unwrap(), p);
    }

    #[test]
    fn wrong_shape_is_named() {
        let c = tiny();
        let l = ParamLayout::new(&c);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("model.safetensors");
        save_safetensors(&f, &l, &init_params(&c, &l, 1)).unwrap();
        let mut c2 = c.clone();
        c2.ffn_hidden = 20;
        let err = load_safetensors(&[&f], &ParamLayout::new(&c2)).unwrap_err().to_string();
        assert!(err.contains("model.layers.0.mlp.gate_proj.weight") && err.contains("shape"), "{err}");
    }

    #[test]
    fn model_dir_round_trip() {
        let c = tiny();
        let p = init_params(&c, &ParamLayout::new(&c), 3);
        let dir = tempfile::tempdir().unwrap();
        save_model_dir(dir.path(), &c, &p, Some(0), Some(0)).unwrap();
        let m = load_model_dir(dir.path()).unwrap();
        assert_eq!((m.cfg, m.params), (c, p));
        let err = load_model_dir(&dir.path().join("nope")).err().unwrap().to_string();
        assert!(err.contains("not a model directory"), "{err}");
    }
}

/// A model read from a HF Llama directory.
pub struct ModelDir {
    pub cfg: ModelConfig,
    pub layout: ParamLayout,
    pub params: Vec<f32>,
    /// `bos_token_id` / `eos_token_id` of config.json.
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

/// Reads `config.json` and `model.safetensors` (or the shards named by `model.safetensors.index.json`).
pub fn load_model_dir(dir: &Path) -> Result<ModelDir, ModelDirError> {
    if !dir.is_dir() {
        return Err(ModelDirError::NotADir(dir.display().to_string()));
    }
    if !dir.join("config.json").exists()
        && let Ok(Some(ck)) = crate::train::checkpoint::latest_dir(dir)
    {
        return Err(ModelDirError::RunDir { run: dir.display().to_string(), latest: ck.display().to_string() });
    }
    let (hf, cfg) = HfLlamaConfig::load(&dir.join("config.json"))?;
    let (bos, eos) = hf.special_ids();
    let layout = ParamLayout::new(&cfg);
    let files = safetensors_files(dir)?;
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let params = load_safetensors(&refs, &layout)?;
    Ok(ModelDir { cfg, layout, params, bos, eos })
}

/// Writes `config.json`, `generation_config.json` and `model.safetensors` into `dir` (not atomic).
pub fn save_model_dir(
    dir: &Path,
    cfg: &ModelConfig,
    params: &[f32],
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<(), ModelDirError> {
    let io = |error| ModelDirError::Io { path: dir.display().to_string(), error };
    std::fs::create_dir_all(dir).map_err(io)?;
    let json = |v: serde_json::Value| serde_json::to_string_pretty(&v).expect("json values serialise");
    let hf = serde_json::to_value(cfg.to_hf(bos, eos)).expect("config serialises");
    std::fs::write(dir.join("config.json"), json(hf)).map_err(io)?;
    let gen_cfg = serde_json::json!({ "bos_token_id": bos, "eos_token_id": eos, "do_sample": true, "temperature": 0.8, "top_p": 0.95 });
    std::fs::write(dir.join("generation_config.json"), json(gen_cfg)).map_err(io)?;
    save_safetensors(&dir.join("model.safetensors"), &ParamLayout::new(cfg), params)?;
    Ok(())
}

fn safetensors_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, ModelDirError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|_| {
        ModelDirError::NoWeights(format!(
            "{}: neither model.safetensors nor model.safetensors.index.json",
            dir.display()
        ))
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelDirError::NoWeights(format!("{}: invalid JSON ({e})", index.display())))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| ModelDirError::NoWeights(format!("{}: no \"weight_map\" object", index.display())))?;
    let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
    files.sort();
    files.dedup();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    #[error("{0}: not a model directory (expected a folder with config.json and model.safetensors)")]
    NotADir(String),
    #[error(
        "{run} is a training run, not a model; its latest checkpoint is {latest}: pass that (or another step-* directory of the run)"
    )]
    RunDir { run: String, latest: String },
    #[error("{0}")]
    NoWeights(String),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(transparent)]
    Config(#[from] crate::model::config::ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
}
