//! Hugging Face model folders: `config.json` + `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), memory-mapped. f32/f16/bf16 weights are converted to f32
//! on load. Headers are validated by the safetensors crate (offsets contiguous, sizes matching
//! the file) before any tensor is read.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;
use serde_json::Value;

use crate::model::weights::WeightSource;

/// A parsed `config.json` with typed accessors whose errors name the file and the field.
#[derive(Clone, Debug)]
pub struct ConfigJson {
    pub path: PathBuf,
    pub value: Value,
}

impl ConfigJson {
    pub fn open(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            anyhow!("{}: invalid JSON at line {}, column {}: {e}", path.display(), e.line(), e.column())
        })?;
        if !value.is_object() {
            bail!("{}: expected a JSON object at the top level", path.display());
        }
        Ok(Self { path: path.to_path_buf(), value })
    }

    /// A config given in memory (benchmarks, tests); `label` stands in for the path in errors.
    pub fn from_value(value: Value, label: &str) -> Self {
        Self { path: PathBuf::from(label), value }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, expected: &str) -> anyhow::Error {
        anyhow!("{}: field `{key}` should be {expected}, found {}", self.path.display(), self.value[key])
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A required non-negative integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            None => bail!("{}: missing field `{key}` (expected an integer)", self.path.display()),
            Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| self.wrong(key, "a non-negative integer")),
        }
    }
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        if self.has(key) { self.usize(key).map(Some) } else { Ok(None) }
    }
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(key)?.unwrap_or(default))
    }
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong(key, "a number")),
        }
    }
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.wrong(key, "true or false")),
        }
    }
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.wrong(key, "a string")),
        }
    }
    pub fn str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)?
            .ok_or_else(|| anyhow!("{}: missing field `{key}` (expected a string)", self.path.display()))
    }
    pub fn object(&self, key: &str) -> Option<&serde_json::Map<String, Value>> {
        self.get(key).and_then(|v| v.as_object())
    }
}

/// The file names in `dir`, sorted and comma-separated, for errors ("none" if empty/unreadable).
fn list_dir(dir: &Path) -> String {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    if v.is_empty() { "none".to_string() } else { v.join(", ") }
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
}

/// The weights of an HF folder: every tensor name mapped to its shard and header entry.
pub struct SafetensorsWeights {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: HashMap<String, (usize, TensorInfo)>,
}

impl SafetensorsWeights {
    /// Opens `dir/model.safetensors`, or the shards named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                anyhow!("{}: invalid JSON at line {}, column {}: {e}", index.display(), e.line(), e.column())
            })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| anyhow!("{}: missing object `weight_map`", index.display()))?;
            let mut names: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let f = file
                    .as_str()
                    .ok_or_else(|| anyhow!("{}: weight_map[{tensor}] should be a file name", index.display()))?;
                if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                    bail!("{}: weight_map[{tensor}] names `{f}`, which is not a plain file name", index.display());
                }
                if !names.iter().any(|n| n == f) {
                    names.push(f.to_string());
                }
            }
            names.sort();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            bail!(
                "{}: no model.safetensors, model.safetensors.index.json, pytorch_model.bin or \
                 pytorch_model.bin.index.json (files there: {})",
                dir.display(),
                list_dir(dir)
            );
        };
        let mut shards = Vec::new();
        let mut tensors = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: read-only map; the file is not modified while we hold it (as every
            // safetensors loader assumes).
            let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
            let (header_len, meta) = SafeTensors::read_metadata(&mmap)
                .map_err(|e| anyhow!("{}: invalid safetensors file: {e}", path.display()))?;
            for (name, info) in meta.tensors() {
                if tensors.insert(name.clone(), (i, info.clone())).is_some() {
                    bail!("{}: tensor `{name}` appears in more than one shard", path.display());
                }
            }
            shards.push(Shard { path: path.clone(), mmap, data_start: 8 + header_len });
        }
        Ok(Self { dir: dir.to_path_buf(), shards, tensors })
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tensors.keys().cloned().collect();
        v.sort();
        v
    }

    /// Storage dtypes and how many tensors use each (for `inspect`).
    pub fn dtype_summary(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (_, info) in self.tensors.values() {
            *m.entry(format!("{:?}", info.dtype).to_lowercase()).or_insert(0) += 1;
        }
        m
    }
}

impl WeightSource for SafetensorsWeights {
    fn origin(&self) -> String {
        self.dir.display().to_string()
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|(_, i)| i.shape.clone())
    }
    fn load_f32(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let (shard, info) = self
            .tensors
            .get(name)
            .ok_or_else(|| anyhow!("{}: missing tensor `{name}`", self.dir.display()))?;
        let shard = &self.shards[*shard];
        if info.shape != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected {:?} from config.json",
                shard.path.display(),
                info.shape,
                shape
            );
        }
        // Offsets were validated against the file length by read_metadata.
        let bytes = &shard.mmap[shard.data_start + info.data_offsets.0..shard.data_start + info.data_offsets.1];
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => bail!(
                "{}: tensor `{name}` has dtype {other:?}; supported weight dtypes are F32, F16, BF16",
                shard.path.display()
            ),
        };
        Ok(Tensor::from_vec(values, shape, device)?)
    }
}
