//! `manifest.json`: what a prepared data directory holds, and crash-safe file writing.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::DataError;

/// Writes `bytes` to `path` through a temporary file in the same directory, fsynced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| DataError::io(&tmp, e))?;
    drop(f);
    sync_and_rename(&tmp, path)
}

/// Fsyncs `tmp`, renames it to `path` and fsyncs the directory.
pub fn sync_and_rename(tmp: &Path, path: &Path) -> Result<(), DataError> {
    File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| DataError::io(tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| DataError::io(path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Fsyncs a directory so a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), DataError> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    File::open(dir).and_then(|f| f.sync_all()).map_err(|e| DataError::io(dir, e))
}
