//! PyTorch pickle checkpoints: `pytorch_model.bin`, or the shards listed in
//! `pytorch_model.bin.index.json` (`pytorch_model-0000x-of-0000y.bin`), as written by
//! `torch.save(state_dict)` (zip format, torch >= 1.6) and by transformers 4's `save_pretrained`.
//!
//! The pickle (`<archive>/data.pkl`) is parsed by `candle_core::pickle`, which only interprets
//! the opcodes a state dict uses and never runs code. The tensor bytes are read here from the zip
//! entry `<archive>/data/<key>`, after checking that the entry holds every byte the tensor's
//! offset, shape and dtype need, so a corrupt or hostile file is an error, never a huge
//! allocation or a read past the entry. Only C-contiguous tensors are read (what `torch.save`
//! of a state dict writes); f32, f16 and bf16 are converted to f32.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::{read_pth_tensor_info, TensorInfo};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::model::weights::WeightSource;

/// File names of a PyTorch checkpoint in a folder, in the order transformers looks for them.
pub const SINGLE: &str = "pytorch_model.bin";
pub const INDEX: &str = "pytorch_model.bin.index.json";

/// Whether `dir` holds a PyTorch checkpoint (single file or index).
pub fn present(dir: &Path) -> bool {
    dir.join(SINGLE).is_file() || dir.join(INDEX).is_file()
}

/// The shard file names listed by a `*.index.json` (`weight_map` values), sorted, each checked
/// to be a plain file name inside the folder.
pub fn index_files(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("cannot read {}", index.display()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: invalid JSON at line {}, column {}: {e}", index.display(), e.line(), e.column()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("{}: missing object `weight_map`", index.display()))?;
    let mut names: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let f = file
            .as_str()
            .ok_or_else(|| anyhow!("{}: weight_map[{tensor}] should be a file name, found {file}", index.display()))?;
        if f.is_empty() || f.contains('/') || f.contains('\\') || f.starts_with('.') {
            bail!("{}: weight_map[{tensor}] names `{f}`, which is not a plain file name", index.display());
        }
        if !names.iter().any(|n| n == f) {
            names.push(f.to_string());
        }
    }
    if names.is_empty() {
        bail!("{}: `weight_map` is empty", index.display());
    }
    names.sort();
    Ok(names)
}

struct Entry {
    shard: usize,
    info: TensorInfo,
}

/// The weights of a folder holding a PyTorch checkpoint.
pub struct PthWeights {
    dir: PathBuf,
    shards: Vec<PathBuf>,
    tensors: HashMap<String, Entry>,
}

fn dtype_name(d: DType) -> String {
    format!("{d:?}").to_lowercase()
}

/// Parses the pickle of one file. candle's parser indexes into tuples it expects (a malformed
/// pickle could make it panic), so a panic is caught and reported as a corrupt file.
fn read_infos(path: &Path) -> Result<Vec<TensorInfo>> {
    let p = path.to_path_buf();
    let r = std::panic::catch_unwind(move || read_pth_tensor_info(&p, false, None));
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let head = std::fs::File::open(path)
                .and_then(|mut f| {
                    let mut b = [0u8; 2];
                    f.read_exact(&mut b).map(|_| b)
                })
                .unwrap_or([0, 0]);
            if &head != b"PK" {
                bail!(
                    "{}: not a zip archive, so not a torch.save file of torch >= 1.6 (files from older \
                     torch, saved with _use_new_zipfile_serialization=False, are not supported: re-save \
                     with a current torch or convert to safetensors)",
                    path.display()
                );
            }
            bail!("{}: cannot read the PyTorch checkpoint: {e}", path.display())
        }
        Err(_) => bail!("{}: corrupt PyTorch pickle (the state dict does not have the expected structure)", path.display()),
    }
}

/// Refuses a file whose `<archive>/byteorder` says `big` (torch writes the host's byte order; the
/// reader decodes little-endian). Files without the entry are older torch, always little-endian.
fn check_byteorder(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|err| anyhow!("{}: not a readable zip archive: {err}", path.display()))?;
    let name = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("/byteorder"))
        .map(|n| n.into_owned());
    let Some(name) = name else {
        return Ok(());
    };
    let mut entry = zip.by_name(&name).map_err(|err| anyhow!("{}: {name}: {err}", path.display()))?;
    let mut text = String::new();
    entry.by_ref().take(16).read_to_string(&mut text).with_context(|| format!("{}: reading {name}", path.display()))?;
    if text.trim() != "little" {
        bail!("{}: {name} says the tensors are `{}`-endian; only little-endian checkpoints are read", path.display(), text.trim());
    }
    Ok(())
}

impl PthWeights {
    /// Opens `dir/pytorch_model.bin`, or the shards named by `dir/pytorch_model.bin.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX);
        let names = if index.is_file() {
            index_files(&index)?
        } else if dir.join(SINGLE).is_file() {
            vec![SINGLE.to_string()]
        } else {
            bail!("{}: no {SINGLE} or {INDEX}", dir.display());
        };
        let mut shards = Vec::new();
        let mut tensors = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name);
            if !path.is_file() {
                bail!("{}: shard `{name}` listed in {INDEX} is missing", dir.display());
            }
            let infos = read_infos(&path)?;
            check_byteorder(&path)?;
            if infos.is_empty() {
                bail!("{}: no tensors found (expected a state dict saved with torch.save)", path.display());
            }
            for info in infos {
                let name = info.name.clone();
                if tensors.insert(name.clone(), Entry { shard: i, info }).is_some() {
                    bail!("{}: tensor `{name}` appears in more than one shard", path.display());
                }
            }
            shards.push(path);
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
        for e in self.tensors.values() {
            *m.entry(dtype_name(e.info.dtype)).or_insert(0) += 1;
        }
        m
    }

    /// The raw little-endian bytes of a tensor, bounds-checked against its zip entry.
    fn read_bytes(&self, name: &str, e: &Entry) -> Result<Vec<u8>> {
        let path = &self.shards[e.shard];
        let layout = &e.info.layout;
        if !layout.is_contiguous() {
            bail!(
                "{}: tensor `{name}` is stored strided ({:?}, strides {:?}); only contiguous tensors are \
                 read (re-save the state dict with .contiguous() tensors, or convert to safetensors)",
                path.display(),
                layout.dims(),
                layout.stride()
            );
        }
        let elem = e.info.dtype.size_in_bytes();
        let numel = layout.dims().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let nbytes = numel.and_then(|n| n.checked_mul(elem));
        // candle gives the storage offset already in bytes.
        let start = layout.start_offset();
        let end = nbytes.and_then(|n| n.checked_add(start)).ok_or_else(|| {
            anyhow!("{}: tensor `{name}`: size of shape {:?} overflows", path.display(), layout.dims())
        })?;
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file))
            .map_err(|err| anyhow!("{}: not a readable zip archive: {err}", path.display()))?;
        let mut entry = zip.by_name(&e.info.path).map_err(|err| {
            anyhow!("{}: tensor `{name}`: storage `{}` missing from the archive: {err}", path.display(), e.info.path)
        })?;
        let have = entry.size();
        if (end as u64) > have {
            bail!(
                "{}: tensor `{name}` needs bytes {start}..{end} of storage `{}`, which holds only {have} bytes",
                path.display(),
                e.info.path
            );
        }
        let mut skip = vec![0u8; start.min(1 << 16)];
        let mut left = start;
        while left > 0 {
            let k = left.min(skip.len());
            entry.read_exact(&mut skip[..k]).with_context(|| format!("{}: reading `{}`", path.display(), e.info.path))?;
            left -= k;
        }
        let mut buf = vec![0u8; end - start];
        entry
            .read_exact(&mut buf)
            .with_context(|| format!("{}: tensor `{name}`: reading storage `{}`", path.display(), e.info.path))?;
        Ok(buf)
    }
}

impl WeightSource for PthWeights {
    fn origin(&self) -> String {
        self.dir.display().to_string()
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|e| e.info.layout.dims().to_vec())
    }
    fn load_f32(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let e = self.tensors.get(name).ok_or_else(|| anyhow!("{}: missing tensor `{name}`", self.dir.display()))?;
        let path = &self.shards[e.shard];
        if e.info.layout.dims() != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected {:?} from config.json",
                path.display(),
                e.info.layout.dims(),
                shape
            );
        }
        if !matches!(e.info.dtype, DType::F32 | DType::F16 | DType::BF16) {
            bail!(
                "{}: tensor `{name}` has dtype {}; supported weight dtypes are f32, f16, bf16",
                path.display(),
                dtype_name(e.info.dtype)
            );
        }
        // Little-endian: `check_byteorder` refused anything else when the file was opened.
        let bytes = self.read_bytes(name, e)?;
        let values: Vec<f32> = match e.info.dtype {
            DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => bail!(
                "{}: tensor `{name}` has dtype {}; supported weight dtypes are f32, f16, bf16",
                path.display(),
                dtype_name(other)
            ),
        };
        Ok(Tensor::from_vec(values, shape, device)?)
    }
}
