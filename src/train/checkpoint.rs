//! Checkpoints: `RUN/step-NNNNNN/` is a HF Llama directory plus training state, and `RUN/latest`
//! names the newest complete one. A save writes into `RUN/.tmp-step-NNNNNN/`, fsyncs every file,
//! then renames, so a crash at any moment leaves the previous checkpoint intact.

use crate::data::LoaderState;
use crate::model::ModelConfig;
use crate::model::weights::{ModelDirError, load_model_dir, save_model_dir};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Tokenizer files copied into each checkpoint when present.
pub const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: {msg}")]
    Corrupt { path: String, msg: String },
    #[error(transparent)]
    Model(#[from] ModelDirError),
    #[error("refusing to save: parameters contain NaN or infinity")]
    NonFinite,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |error| CheckpointError::Io { path: path.display().to_string(), error }
}

/// Everything besides weights and moments that a run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// AdamW's bias-correction step counter.
    pub adam_t: u64,
    pub tokens_seen: u64,
    /// Consecutive skipped (non-finite) steps so far.
    pub bad_steps: usize,
    /// The training data loader's position and RNG state.
    pub loader: LoaderState,
}

/// What a save writes.
pub struct CheckpointData<'a> {
    pub cfg: &'a ModelConfig,
    pub params: &'a [f32],
    pub adam_m: &'a [f32],
    pub adam_v: &'a [f32],
    pub state: &'a TrainerState,
    pub recipe_toml: &'a str,
    pub tokenizer_dir: Option<&'a Path>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

/// A checkpoint read back.
pub struct LoadedCheckpoint {
    pub dir: PathBuf,
    pub cfg: ModelConfig,
    pub params: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
    pub state: TrainerState,
}

pub fn step_dir_name(step: usize) -> String {
    format!("step-{step:06}")
}

/// Atomically writes `RUN/step-NNNNNN/`, points `RUN/latest` at it and prunes to `keep_last`.
pub fn save(run_dir: &Path, ck: &CheckpointData, keep_last: usize) -> Result<PathBuf, CheckpointError> {
    if !ck.params.iter().all(|x| x.is_finite()) {
        return Err(CheckpointError::NonFinite);
    }
    let name = step_dir_name(ck.state.step);
    let tmp = run_dir.join(format!(".tmp-{name}"));
    let dst = run_dir.join(&name);
    stage_model_dir(&tmp, ck.cfg, ck.params, ck.bos, ck.eos, ck.tokenizer_dir)?;
    write_moments(&tmp.join("optimizer.safetensors"), ck.adam_m, ck.adam_v)?;
    let state = serde_json::to_string_pretty(ck.state).expect("trainer state serialises");
    std::fs::write(tmp.join("trainer_state.json"), state).map_err(io_err(&tmp))?;
    std::fs::write(tmp.join("recipe.toml"), ck.recipe_toml).map_err(io_err(&tmp))?;
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(io_err(&dst))?;
    }
    commit_dir(&tmp, &dst)?;
    write_atomic(&run_dir.join("latest"), name.as_bytes())?;
    prune(run_dir, keep_last, &name)?;
    Ok(dst)
}

/// Loads the checkpoint [`latest_dir`] finds. Returns `None` for a run with no checkpoint yet.
pub fn load_latest(run_dir: &Path) -> Result<Option<LoadedCheckpoint>, CheckpointError> {
    latest_dir(run_dir)?.map(|dir| load(&dir)).transpose()
}

/// The checkpoint `RUN/latest` names, or if that is missing or incomplete, the newest complete
/// one; `None` for a run with no checkpoint yet (or a folder that is no run).
pub fn latest_dir(run_dir: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    let named = std::fs::read_to_string(run_dir.join("latest")).ok().map(|s| run_dir.join(s.trim()));
    match named.filter(|d| d.join("trainer_state.json").is_file()) {
        Some(d) => Ok(Some(d)),
        None => Ok(step_dirs(run_dir)?.pop()),
    }
}

/// Loads one checkpoint directory.
pub fn load(dir: &Path) -> Result<LoadedCheckpoint, CheckpointError> {
    let model = load_model_dir(dir)?;
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::Corrupt { path: state_path.display().to_string(), msg: e.to_string() })?;
    let (adam_m, adam_v) = read_moments(&dir.join("optimizer.safetensors"), model.layout.total())?;
    Ok(LoadedCheckpoint { dir: dir.to_path_buf(), cfg: model.cfg, params: model.params, adam_m, adam_v, state })
}

/// Complete `step-*` checkpoints of a run, oldest first.
pub fn step_dirs(run_dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let Ok(entries) = std::fs::read_dir(run_dir) else { return Ok(Vec::new()) };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-")))
        .filter(|p| p.join("trainer_state.json").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Removes half-written `.tmp-*` directories left by a crash during a save.
pub fn remove_partial_saves(run_dir: &Path) -> Result<(), CheckpointError> {
    let Ok(entries) = std::fs::read_dir(run_dir) else { return Ok(()) };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".tmp-")) {
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

fn prune(run_dir: &Path, keep_last: usize, keep: &str) -> Result<(), CheckpointError> {
    let dirs = step_dirs(run_dir)?;
    let excess = dirs.len().saturating_sub(keep_last.max(1));
    for d in dirs.into_iter().take(excess).filter(|d| !d.ends_with(keep)) {
        std::fs::remove_dir_all(&d).map_err(io_err(&d))?;
    }
    Ok(())
}

/// Whether `dir` is one of pretraining's checkpoints, so a base model that never saw a chat
/// template. (Other trainers' checkpoints may hold a trainer_state.json too, but not a recipe.)
pub fn is_pretraining_checkpoint(dir: &Path) -> bool {
    ["trainer_state.json", "recipe.toml"].iter().all(|f| dir.join(f).is_file())
}

/// Starts a model directory at `tmp` (removing a stale one): config, weights and the tokenizer
/// files found in `tokenizer_dir`. Returns the tokenizer files copied. Finish with [`commit_dir`].
pub fn stage_model_dir(
    tmp: &Path,
    cfg: &ModelConfig,
    params: &[f32],
    bos: Option<u32>,
    eos: Option<u32>,
    tokenizer_dir: Option<&Path>,
) -> Result<Vec<&'static str>, CheckpointError> {
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).map_err(io_err(tmp))?;
    }
    save_model_dir(tmp, cfg, params, bos, eos)?;
    let mut copied = Vec::new();
    for (dir, f) in tokenizer_dir.iter().flat_map(|d| TOKENIZER_FILES.map(|f| (d, f))) {
        let src = dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, tmp.join(f)).map_err(io_err(&src))?;
            copied.push(f);
        }
    }
    Ok(copied)
}

/// Fsyncs every file of the directory `tmp` and the directory, renames it to `dst` (which must not
/// exist) and fsyncs the parent: `dst` appears whole or not at all.
pub fn commit_dir(tmp: &Path, dst: &Path) -> Result<(), CheckpointError> {
    for entry in std::fs::read_dir(tmp).map_err(io_err(tmp))? {
        let path = entry.map_err(io_err(tmp))?.path();
        File::open(&path).and_then(|f| f.sync_all()).map_err(io_err(&path))?;
    }
    sync_dir(tmp)?;
    std::fs::rename(tmp, dst).map_err(io_err(dst))?;
    sync_dir(parent(dst))
}

/// Writes `path` via a temporary file in the same directory, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// [`write_atomic`] of what `write` streams out (no copy of the whole file in memory).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), CheckpointError> {
    let tmp = path.with_extension("tmp");
    let mut w = std::io::BufWriter::new(File::create(&tmp).map_err(io_err(&tmp))?);
    let written = write(&mut w).and_then(|_| w.into_inner().map_err(|e| e.into_error())).and_then(|f| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp); // a partial file (a streamed GGUF can be gigabytes)
        return Err(io_err(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(parent(path))
}

/// The directory holding `path` (`.` for a bare file name, whose parent is the empty path).
fn parent(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io_err(dir))
}

fn write_moments(path: &Path, m: &[f32], v: &[f32]) -> Result<(), CheckpointError> {
    let bytes = |x: &[f32]| x.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (mb, vb) = (bytes(m), bytes(v));
    let views = [
        ("adam.m", TensorView::new(Dtype::F32, vec![m.len()], &mb).expect("1-D view")),
        ("adam.v", TensorView::new(Dtype::F32, vec![v.len()], &vb).expect("1-D view")),
    ];
    safetensors::serialize_to_file(views, &None, path)
        .map_err(|e| CheckpointError::Corrupt { path: path.display().to_string(), msg: e.to_string() })
}

fn read_moments(path: &Path, n: usize) -> Result<(Vec<f32>, Vec<f32>), CheckpointError> {
    let corrupt = |msg: String| CheckpointError::Corrupt { path: path.display().to_string(), msg };
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let read = |name: &str| -> Result<Vec<f32>, CheckpointError> {
        let t = st.tensor(name).map_err(|e| corrupt(format!("{name}: {e}")))?;
        if t.dtype() != Dtype::F32 || t.shape() != [n] {
            return Err(corrupt(format!("{name} should be F32 [{n}], found {:?} {:?}", t.dtype(), t.shape())));
        }
        Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    };
    Ok((read("adam.m")?, read("adam.v")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ParamLayout;
    use crate::model::params::init_params;

    fn data(step: usize) -> (ModelConfig, Vec<f32>, TrainerState) {
        let cfg = ModelConfig {
            vocab_size: 16,
            dim: 8,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            ffn_hidden: 12,
            max_seq_len: 8,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
        };
        let p = init_params(&cfg, &ParamLayout::new(&cfg), step as u64);
        let state = TrainerState {
            step,
            adam_t: step as u64,
            tokens_seen: 10,
            bad_steps: 0,
            loader: LoaderState {
                split: "train".into(),
                seq: 8,
                total_tokens: 100,
                rng: rand::SeedableRng::seed_from_u64(step as u64),
            },
        };
        (cfg, p, state)
    }

    fn save_step(run: &Path, step: usize, keep: usize) -> Vec<f32> {
        let (cfg, p, state) = data(step);
        let m: Vec<f32> = p.iter().map(|x| x * 2.0).collect();
        let ck = CheckpointData {
            cfg: &cfg,
            params: &p,
            adam_m: &m,
            adam_v: &p,
            state: &state,
            recipe_toml: "",
            tokenizer_dir: None,
            bos: None,
            eos: None,
        };
        save(run, &ck, keep).unwrap();
        p
    }

    #[test]
    fn a_failed_streamed_write_keeps_the_old_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.gguf");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |w| {
            w.write_all(&[7; 100_000])?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(err.unwrap_err().to_string().contains("disk full"));
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(!path.with_extension("tmp").exists(), "partial temp file left behind");
    }

    #[test]
    fn save_load_round_trip_and_prune() {
        let run = tempfile::tempdir().unwrap();
        for step in [10, 20, 30] {
            save_step(run.path(), step, 2);
        }
        let names: Vec<_> = step_dirs(run.path()).unwrap().iter().map(|d| d.file_name().unwrap().to_owned()).collect();
        assert_eq!(names, ["step-000020", "step-000030"]);
        let ck = load_latest(run.path()).unwrap().unwrap();
        let (_, p, state) = data(30);
        assert_eq!(ck.state, state);
        assert_eq!(ck.params, p);
        assert_eq!(ck.adam_m, p.iter().map(|x| x * 2.0).collect::<Vec<_>>());
    }

    #[test]
    fn half_written_save_leaves_previous_checkpoint() {
        let run = tempfile::tempdir().unwrap();
        let p10 = save_step(run.path(), 10, 3);
        // A crash during the save of step 20: a partial temporary directory, `latest` untouched.
        std::fs::create_dir(run.path().join(".tmp-step-000020")).unwrap();
        std::fs::write(run.path().join(".tmp-step-000020/model.safetensors"), b"trunc").unwrap();
        assert_eq!(load_latest(run.path()).unwrap().unwrap().params, p10);
        remove_partial_saves(run.path()).unwrap();
        assert!(!run.path().join(".tmp-step-000020").exists());
    }

    #[test]
    fn latest_pointing_nowhere_falls_back_to_newest_complete() {
        let run = tempfile::tempdir().unwrap();
        save_step(run.path(), 10, 3);
        let p20 = save_step(run.path(), 20, 3);
        std::fs::write(run.path().join("latest"), "step-000099").unwrap();
        assert_eq!(load_latest(run.path()).unwrap().unwrap().params, p20);
    }

    #[test]
    fn refuses_non_finite_parameters() {
        let run = tempfile::tempdir().unwrap();
        let (cfg, mut p, state) = data(1);
        p[3] = f32::NAN;
        let ck = CheckpointData {
            cfg: &cfg,
            params: &p,
            adam_m: &p,
            adam_v: &p,
            state: &state,
            recipe_toml: "",
            tokenizer_dir: None,
            bos: None,
            eos: None,
        };
        assert!(matches!(save(run.path(), &ck, 1), Err(CheckpointError::NonFinite)));
        assert!(load_latest(run.path()).unwrap().is_none());
    }
}
