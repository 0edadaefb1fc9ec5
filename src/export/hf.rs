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

/// The `bos_token_id` and `eos_token_id` of a model directory's config.json (first id when a list).
pub fn special_ids(dir: &Path) -> (Option<u32>, Option<u32>) {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else { return (None, None) };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return (None, None) };
    let id = |v: &serde_json::Value| match v {
        serde_json::Value::Array(a) => a.first().and_then(|x| x.as_u64()),
        x => x.as_u64(),
    };
    let get = |k: &str| v.get(k).and_then(id).and_then(|x| u32::try_from(x).ok());
    (get("bos_token_id"), get("eos_token_id"))
}

/// Writes `model` (with `bos`/`eos`) as a HF directory at `out`, copying the tokenizer files found
/// in `tokenizer_dir`. Everything goes to `OUT.tmp` first, is fsynced, then renamed; `out` must not exist.
/// Returns the tokenizer files copied.
pub fn write_hf_dir(
    model: &ModelDir,
    bos: Option<u32>,
    eos: Option<u32>,
    tokenizer_dir: &Path,
    out: &Path,
) -> Result<Vec<&'static str>, ExportError> {
    if out.exists() {
        return Err(ExportError::Exists(out.display().to_string()));
    }
    let tmp = tmp_path(out);
    let copied = stage_model_dir(&tmp, &model.cfg, &model.params, bos, eos, Some(tokenizer_dir))?;
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
    let (bos, eos) = special_ids(src);
    write_hf_dir(&model, bos, eos, src, out)
}
