//! A clean HF Llama directory (no optimizer or trainer state), written atomically.

use crate::export::portability::{Target, portability};
use crate::model::weights::{ModelDir, load_model_dir};
use crate::train::checkpoint::{CheckpointError, commit_dir, is_pretraining_checkpoint, stage_model_dir};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    ModelDir(#[from] crate::model::weights::ModelDirError),
    #[error(transparent)]
    Write(#[from] CheckpointError),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{0} already exists; remove it or choose another --out")]
    Exists(String),
    #[error("{0}")]
    Unportable(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    BadFile(String),
    #[error("{0}")]
    Tokenizer(String),
}

pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |error| ExportError::Io { path: path.display().to_string(), error }
}

/// Writes `model` (with its `bos`/`eos`) as a HF directory at `out`, copying the tokenizer files found
/// in `tokenizer_dir` (without the chat template if that is a pretraining checkpoint). Everything
/// goes to `OUT.tmp` first, is fsynced, then renamed; `out` must not exist. Returns the tokenizer
/// files copied.
pub fn write_hf_dir(model: &ModelDir, tokenizer_dir: &Path, out: &Path) -> Result<Vec<&'static str>, ExportError> {
    if out.exists() {
        return Err(ExportError::Exists(out.display().to_string()));
    }
    let tmp = tmp_path(out);
    let copied = stage_model_dir(&tmp, &model.cfg, &model.params, model.bos, model.eos, Some(tokenizer_dir))?;
    if is_pretraining_checkpoint(tokenizer_dir) {
        let name = "tokenizer_config.json";
        if let Err(e) = drop_chat_template(&tokenizer_dir.join(name), &tmp.join(name)) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    }
    commit_dir(&tmp, out)?;
    Ok(copied)
}

/// Writes tokenizer_config.json `src` to `dst` without its `chat_template` (if `src` exists): a
/// base model never saw the template, so neither transformers nor `shoucuo chat` should render
/// conversations with it.
fn drop_chat_template(src: &Path, dst: &Path) -> Result<(), ExportError> {
    if !src.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(src).map_err(io_err(src))?;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ExportError::Tokenizer(format!("{}: {e}", src.display())))?;
    if let Some(fields) = cfg.as_object_mut() {
        fields.remove("chat_template");
    }
    let text = serde_json::to_string_pretty(&cfg).expect("a JSON value serializes");
    std::fs::write(dst, text).map_err(io_err(dst))
}

/// `OUT.tmp` next to `out`.
pub(crate) fn tmp_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    out.with_file_name(name)
}

/// Exports the model directory or checkpoint `src` as a clean HF directory `out`. A model that
/// transformers cannot load is refused (with the reason and nearest loadable shapes) unless `force`.
pub fn export_hf(src: &Path, out: &Path, force: bool) -> Result<Vec<&'static str>, ExportError> {
    let model = load_model_dir(src)?;
    let report = portability(&model.cfg).into_iter().find(|r| r.target == Target::Transformers);
    if let Some(r) = report.filter(|r| !r.loads() && !force) {
        return Err(ExportError::Unportable(format!(
            "{}: refusing to export for transformers:\n{r}pass --force to export anyway (llama.cpp still loads it; see `shoucuo model check`)",
            src.display()
        )));
    }
    write_hf_dir(&model, src, out)
}
