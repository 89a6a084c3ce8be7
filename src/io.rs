//! Small file helpers shared by the stages: line-numbered JSONL reading, atomic writes (temp
//! file + rename, so a crash never leaves a half-written result) and sha256 hashing. These are the
//! crate's only copies: `assets`, `runs`, `prune`, `lmeval` and the CLI all call them.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;

/// Reads one JSON value per non-empty line; errors name the file and the line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line)
            .map_err(|e| anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        out.push(v);
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temp file in the same folder (so the rename never
/// crosses file systems), synced, then renamed over `path`. On failure the temp file is removed,
/// so an interrupted write leaves neither a half-written `path` nor litter.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = temp_sibling(path);
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}

/// The temp file [`write_atomic`] (and the streaming downloads of `assets`) write before the
/// rename: hidden, in the same folder, named by the process so two writers never share one.
pub fn temp_sibling(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.part-{}", std::process::id()))
}

/// Lowercase hex of a byte string (digests).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// sha256 of `bytes`, lowercase hex (64 digits).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Streaming sha256 of a file, lowercase hex; errors name the file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Pretty JSON, written atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}

/// CSV text, through the csv crate (it quotes and escapes every field that needs it): a header
/// row, then one record per row. Each row is a list of already formatted fields, so a writer
/// keeps control of how its numbers are spelled.
pub fn csv_bytes<R, F>(header: &[&str], rows: R) -> Result<Vec<u8>>
where
    R: IntoIterator<Item = Vec<F>>,
    F: AsRef<[u8]>,
{
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    w.write_record(header)?;
    for row in rows {
        anyhow::ensure!(row.len() == header.len(), "CSV row has {} fields, the header {}", row.len(), header.len());
        w.write_record(&row)?;
    }
    w.into_inner().map_err(|e| anyhow!("CSV: {e}"))
}

/// Reads a CSV with a header row into typed rows (serde, by column name), through the csv crate;
/// errors name the file and the line.
pub fn read_csv<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for row in r.deserialize() {
        out.push(row.map_err(|e| {
            let line = e.position().map_or(String::new(), |p| format!(":{}", p.line()));
            anyhow!("{}{line}: {e}", path.display())
        })?);
    }
    Ok(out)
}
