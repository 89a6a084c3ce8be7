//! Random-initialised checkpoints of real model shapes (`headroom make-checkpoint`): benches,
//! scale tests and GPU runs at the paper's sizes without downloading the weights.
//!
//! - [`Shape`]: a named shape from a table of published configs (OPT-125m … OPT-66b, Llama-3-8B,
//!   Llama-2-13B dims, Qwen2-7B, SmolLM2-135M), optionally with fields overridden.
//! - [`write_hf`]: a Hugging Face folder (config.json in the transformers 5 schema, safetensors
//!   sharded as the hub does, optional tokenizer files copied from another folder).
//! - [`write_gguf`]: a llama.cpp GGUF (Llama-family shapes only), chosen quant type.
//!
//! Both writers **stream**: every tensor's byte size follows from its shape and dtype, so the
//! headers (with all offsets) are written first and each tensor is then generated and written a
//! chunk of whole rows at a time. Peak memory is a few chunk buffers (tens of MB) whatever the
//! model size.
//!
//! **Values.** Weight matrices and embeddings are N(0, std²)-like; norm weights are 1 and biases
//! 0 (as a freshly initialised transformers model). Row `r` of tensor `name` is drawn from its own
//! [`SplitMix64`] stream keyed by (seed, FNV-1a(name), r), so a tensor's values depend on neither
//! the shard size nor the writing order, and GGUF can emit rows in llama.cpp's permuted Q/K order
//! (the GGUF and the HF folder of one seed are then the same model). Each value is an Irwin–Hall
//! sum of four 16-bit uniforms from one `u64`, centred and scaled to unit variance, times `std`:
//! integer arithmetic and one f32 multiply, so the bytes are identical on every platform (no libm
//! `ln`/`cos` as in Box–Muller) and generation is cheap (values lie within ±3.46 std).

mod gguf_out;
mod hf_out;
mod shapes;

pub use gguf_out::{write_gguf, GgufOptions};
pub use hf_out::{config_json, parse_size, write_hf, HfDtype, HfOptions};
pub use shapes::{Arch, Overrides, Shape, SHAPE_NAMES};

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::tasks::SplitMix64;

/// Values generated per chunk (16 MiB of f32): the unit of streaming.
const CHUNK_VALUES: usize = 4 << 20;

/// What a tensor is initialised to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// N(0, std²)-like random values (weight matrices, embeddings).
    Normal,
    /// All ones (norm weights).
    Ones,
    /// All zeros (biases).
    Zeros,
}

/// One tensor of a checkpoint: its Hugging Face name, row-major shape and initialisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    /// Row-major (`nn.Linear` layout `[out, in]`); 1 or 2 dims.
    pub shape: Vec<usize>,
    pub init: Init,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Values per row (the last dim).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
    /// Number of rows (1 for a vector).
    pub fn n_rows(&self) -> usize {
        self.numel() / self.row_len().max(1)
    }
}

/// What a writer wrote.
#[derive(Clone, Debug)]
pub struct Written {
    /// Every file written, with its size in bytes, in writing order.
    pub files: Vec<(PathBuf, u64)>,
    /// Sum of the file sizes.
    pub total_bytes: u64,
    pub n_tensors: usize,
    pub n_params: u64,
    /// Where the tokenizer came from, when one was written.
    pub tokenizer: Option<PathBuf>,
}

impl Written {
    fn new(files: Vec<(PathBuf, u64)>, shape: &Shape, tokenizer: Option<PathBuf>) -> Self {
        Written {
            total_bytes: files.iter().map(|(_, b)| b).sum(),
            files,
            n_tensors: shape.tensors().len(),
            n_params: shape.n_params(),
            tokenizer,
        }
    }
}

/// Generates `spec` a chunk of whole rows (about `CHUNK_VALUES` values) at a time and hands each
/// chunk to `sink`; output row `r` holds source row `source_row(r)` (see [`fill_rows`]). The one
/// buffer is reused, so memory stays at one chunk whatever the tensor's size.
fn for_each_chunk(
    spec: &TensorSpec,
    seed: u64,
    std: f32,
    source_row: &dyn Fn(usize) -> usize,
    sink: &mut dyn FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    let rows_per_chunk = (CHUNK_VALUES / spec.row_len().max(1)).max(1);
    let n_rows = spec.n_rows();
    let mut vals = Vec::new();
    let mut r = 0;
    while r < n_rows {
        let end = (r + rows_per_chunk).min(n_rows);
        fill_rows(spec, seed, std, (r..end).map(source_row), &mut vals);
        sink(&vals)?;
        r = end;
    }
    Ok(())
}

/// FNV-1a of a tensor name: the per-tensor stream key (stable across platforms and versions).
fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Generates rows of one tensor into `out` (cleared first): `rows` lists the *source* row of each
/// output row (a permutation for llama.cpp's Q/K order, else consecutive), each `row_len` values.
fn fill_rows(spec: &TensorSpec, seed: u64, std: f32, rows: impl Iterator<Item = usize>, out: &mut Vec<f32>) {
    out.clear();
    let row_len = spec.row_len();
    match spec.init {
        Init::Ones | Init::Zeros => {
            let v = if spec.init == Init::Ones { 1.0 } else { 0.0 };
            for _ in rows {
                out.resize(out.len() + row_len, v);
            }
        }
        Init::Normal => {
            // Sum of four uniforms (k + 1/2) / 65536 has mean 2 and variance 4/12: z = (K - 131070)
            // * sqrt(3) / 65536 has unit variance; K - 131070 is an exact integer (|.| < 2^18).
            let scale = (3f64.sqrt() / 65536.0 * std as f64) as f32;
            let key = name_key(&spec.name);
            for r in rows {
                let mut g = SplitMix64::for_key(seed, key, r as u64);
                let start = out.len();
                while out.len() - start < row_len {
                    let x = g.next_u64();
                    let k = (x & 0xffff) + (x >> 16 & 0xffff) + (x >> 32 & 0xffff) + (x >> 48);
                    out.push((k as i64 - 131_070) as f32 * scale);
                }
            }
        }
    }
}

/// Refuses an existing non-empty `path` unless `force`. With `force`, an existing file is removed
/// (for a folder output) and, for a folder, the files a previous checkpoint would have left that
/// the new one might not overwrite (other shard counts, tokenizer files); `want_dir` says which
/// kind the output is. Never removes a folder tree.
fn prepare_out(path: &Path, want_dir: bool, force: bool) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(m) => m,
    };
    let non_empty = if meta.is_dir() {
        std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))?.next().is_some()
    } else {
        meta.len() > 0
    };
    if non_empty && !force {
        bail!(
            "{} already exists and is not empty; pass --force to overwrite it (or choose another --out)",
            path.display()
        );
    }
    match (meta.is_dir(), want_dir) {
        (true, false) => bail!("{} is a folder, but a GGUF output is a file; choose another --out", path.display()),
        (false, true) => std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?,
        (false, false) => {}
        (true, true) => {
            for entry in std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let ours = name.starts_with("model") && (name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json"))
                    || hf_out::TOKENIZER_FILES.contains(&name.as_str())
                    || name == "config.json";
                if ours && entry.file_type()?.is_file() {
                    std::fs::remove_file(entry.path()).with_context(|| format!("cannot remove {}", entry.path().display()))?;
                }
            }
        }
    }
    Ok(())
}

/// `path` with `.partial` appended: files are written there and renamed into place when complete.
fn partial(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_unit_variance_and_depend_on_row_only() {
        let spec = TensorSpec { name: "w".into(), shape: vec![64, 1024], init: Init::Normal };
        let mut all = Vec::new();
        fill_rows(&spec, 7, 1.0, 0..64, &mut all);
        let n = all.len() as f64;
        let mean = all.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = all.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
        let mut one = Vec::new();
        fill_rows(&spec, 7, 1.0, [5usize].into_iter(), &mut one);
        assert_eq!(&all[5 * 1024..6 * 1024], &one[..]);
    }
}
