//! A clean HF Llama directory (no optimizer or trainer state), written atomically.

use crate::export::portability::{Target, portability};
use crate::model::weights::{ModelDir, load_model_dir};
use crate::train::checkpoint::{CheckpointError, commit_dir, stage_model_dir};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    ModelDir(#[from] crate::model::weights::ModelDirError),
    #[error(transparent)]
    Write(#[from] CheckpointError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
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
    move |source| ExportError::Io { path: path.display().to_string(), source }
}

/// Writes `model` (with its `bos`/`eos`) as a HF directory at `out`, copying the tokenizer files found
/// in `tokenizer_dir`. Everything goes to `OUT.tmp` first, is fsynced, then renamed; `out` must not exist.
/// Returns the tokenizer files copied.
pub fn write_hf_dir(model: &ModelDir, tokenizer_dir: &Path, out: &Path) -> Result<Vec<&'static str>, ExportError> {
    if out.exists() {
        return Err(ExportError::Exists(out.display().to_string()));
    }
    let tmp = tmp_path(out);
    let copied = stage_model_dir(&tmp, &model.cfg, &model.params, model.bos, model.eos, Some(tokenizer_dir))?;
    commit_dir(&tmp, out)?;
    Ok(copied)
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
