//! Corpus readers: one document per non-empty line (`txt`) or one JSON object per line with the
//! text in a chosen field (`jsonl`). Inputs ending in `.gz` are decompressed on the fly.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::DataError;

/// How documents are laid out in an input file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One document per non-empty line.
    Txt,
    /// One JSON object per line; the document is the string in `--field`.
    Jsonl,
}

/// Expands each pattern into the files it names, in order: a plain path stays as is; `*` and `?` in
/// the last path component match file names in that directory (sorted).
pub fn expand_inputs(patterns: &[String]) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for pat in patterns {
        let path = Path::new(pat);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.contains(['*', '?']) {
            if path.is_dir() {
                return Err(DataError::NoInput(format!(
                    "{pat}: is a directory; pass files or a pattern like '{pat}/*.jsonl'"
                )));
            }
            if !path.is_file() {
                return Err(DataError::NoInput(format!("{pat}: no such file")));
            }
            out.push(path.to_path_buf());
            continue;
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
        let mut matched: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .filter(|e| e.file_name().to_str().is_some_and(|n| wildcard_match(name, n)))
            .map(|e| e.path())
            .collect();
        if matched.is_empty() {
            return Err(DataError::NoInput(format!("{pat}: the pattern matches no file")));
        }
        matched.sort();
        out.extend(matched);
    }
    if out.is_empty() {
        return Err(DataError::NoInput("no input given; pass --input FILE".into()));
    }
    Ok(out)
}

/// `*` matches any run of characters, `?` exactly one.
fn wildcard_match(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A document and where it came from.
pub struct Doc {
    pub text: String,
    /// Index into the reader's file list.
    pub file: usize,
    /// 1-based line number.
    pub line: usize,
}

/// Streams documents from a list of files. With `skip_bad`, malformed lines are counted in
/// [`DocReader::bad_lines`] instead of ending the stream with an error.
pub struct DocReader {
    files: Vec<PathBuf>,
    format: Format,
    field: String,
    skip_bad: bool,
    next_file: usize,
    current: Option<Box<dyn BufRead + Send>>,
    line: usize,
    buf: Vec<u8>,
    bytes_read: u64,
    bad_lines: u64,
    failed: bool,
}

impl DocReader {
    pub fn new(files: Vec<PathBuf>, format: Format, field: &str, skip_bad: bool) -> Self {
        DocReader {
            files,
            format,
            field: field.to_string(),
            skip_bad,
            next_file: 0,
            current: None,
            line: 0,
            buf: Vec::new(),
            bytes_read: 0,
            bad_lines: 0,
            failed: false,
        }
    }

    /// Decompressed bytes consumed so far (for throughput reports).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Lines skipped as malformed (only with `skip_bad`).
    pub fn bad_lines(&self) -> u64 {
        self.bad_lines
    }

    fn open(path: &Path) -> Result<Box<dyn BufRead + Send>, DataError> {
        let f = File::open(path).map_err(|e| DataError::io(path, e))?;
        let reader: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(f)))
        } else {
            Box::new(f)
        };
        Ok(Box::new(BufReader::with_capacity(1 << 20, reader)))
    }

    fn looks_like_txt(&self) -> bool {
        let name = self.files.get(self.next_file.wrapping_sub(1)).and_then(|p| p.file_name()).and_then(|n| n.to_str());
        name.is_some_and(|n| n.ends_with(".txt") || n.ends_with(".txt.gz"))
    }

    /// Parses the line in `self.buf`: `Ok(None)` for a line that holds no document.
    fn parse_line(&self) -> Result<Option<String>, String> {
        let mut bytes = self.buf.as_slice();
        while let [rest @ .., b'\n' | b'\r'] = bytes {
            bytes = rest;
        }
        let text =
            std::str::from_utf8(bytes).map_err(|e| format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()))?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        match self.format {
            Format::Txt => Ok(Some(text.to_string())),
            Format::Jsonl => {
                let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                    let hint = if self.looks_like_txt() { " (a .txt file? pass --format txt)" } else { "" };
                    format!("invalid JSON ({e}){hint}")
                })?;
                let obj = value.as_object().ok_or("the line is JSON but not an object")?;
                match obj.get(&self.field) {
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(format!("field \"{}\" is not a string", self.field)),
                    None => Err(format!("missing field \"{}\" (use --field to choose another)", self.field)),
                }
            }
        }
    }
}

impl Iterator for DocReader {
    type Item = Result<Doc, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let Some(reader) = self.current.as_mut() else {
                let path = self.files.get(self.next_file)?;
                match Self::open(path) {
                    Ok(r) => self.current = Some(r),
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
                self.next_file += 1;
                self.line = 0;
                continue;
            };
            self.buf.clear();
            let file = self.next_file - 1;
            let n = match reader.read_until(b'\n', &mut self.buf) {
                Ok(n) => n,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(DataError::io(&self.files[file], e)));
                }
            };
            if n == 0 {
                self.current = None;
                continue;
            }
            self.line += 1;
            self.bytes_read += n as u64;
            match self.parse_line() {
                Ok(Some(text)) => return Some(Ok(Doc { text, file, line: self.line })),
                Ok(None) => {}
                Err(_) if self.skip_bad => self.bad_lines += 1,
                Err(what) => {
                    self.failed = true;
                    return Some(Err(DataError::BadLine { path: self.files[file].clone(), line: self.line, what }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.jsonl", "a.jsonl"));
        assert!(wildcard_match("part-??.txt", "part-07.txt"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("*.jsonl", "a.jsonl.gz"));
        assert!(!wildcard_match("part-?.txt", "part-07.txt"));
        assert!(wildcard_match("a*b*c", "axxbyyc"));
    }
}
