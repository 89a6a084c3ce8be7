//! Hugging Face model folders: `config.json` + `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), memory-mapped. f32/f16/bf16 weights are converted to f32
//! on load. Headers are validated by the safetensors crate (offsets contiguous, sizes matching
//! the file) before any tensor is read.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;
use serde_json::Value;

use crate::model::weights::WeightSource;

/// A parsed `config.json` with typed accessors whose errors name the file and the field.
///
/// Every top-level field a loader looks at is recorded, so that [`ConfigJson::finish`] can name
/// the fields nobody read (a field headroom does not know may change the model's numbers), and
/// defaults assumed for missing number-changing fields are collected as notes (also printed to
/// stderr) instead of being applied silently.
#[derive(Clone, Debug)]
pub struct ConfigJson {
    pub path: PathBuf,
    pub value: Value,
    read: RefCell<BTreeSet<String>>,
    notes: RefCell<Vec<String>>,
}

/// Top-level fields that never change a causal LM's forward pass in eval mode: bookkeeping,
/// training-only settings (dropout, init), generation defaults, heads other than the LM head.
const NEVER_NUMBER_CHANGING: &[&str] = &[
    "_name_or_path", "architectures", "dtype", "torch_dtype", "transformers_version", "model_type",
    "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id",
    "initializer_range", "init_std", "attention_dropout", "hidden_dropout", "classifier_dropout", "dropout",
    "activation_dropout", "layerdrop", "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_activation",
    "summary_first_dropout", "summary_proj_to_labels", "summary_type", "summary_use_proj", "is_decoder",
    "is_encoder_decoder", "add_cross_attention", "task_specific_params", "id2label", "label2id", "num_labels",
    "problem_type", "finetuning_task", "tokenizer_class", "prefix", "output_attentions", "output_hidden_states",
    "return_dict", "use_return_dict", "torchscript", "use_bfloat16", "pruned_heads", "chunk_size_feed_forward",
    "tie_encoder_decoder", "gradient_checkpointing", "keys_to_ignore_at_inference", "tf_legacy_loss",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "cross_attention_hidden_size",
    // Splits matmuls into slices during pretraining (Llama v4): the same function, other rounding.
    "pretraining_tp",
    // GPT-2: upcasts attention to f32 (headroom computes in f32 anyway).
    "reorder_and_upcast_attn",
    // Old GPT-2 configs: the context length, always equal to n_positions.
    "n_ctx",
    // SmolLM2's hub config (nanotron export): markers transformers ignores. `rope_interleaved`
    // describes nanotron's layout before conversion; transformers' Llama never reads it.
    "is_llama_config",
    "rope_interleaved",
    "transformers.js_config",
];

/// Fields that change the numbers in ways headroom does not implement: refused outright.
const REFUSED: &[(&str, &str)] = &[
    ("quantization_config", "quantized checkpoints (bitsandbytes, GPTQ, AWQ ...) are not supported; use the unquantized weights or a GGUF file"),
    ("attn_logit_softcapping", "attention logit soft-capping is not implemented"),
    ("final_logit_softcapping", "final logit soft-capping is not implemented"),
    ("logits_scaling", "logit scaling is not implemented"),
    ("embedding_multiplier", "embedding multipliers are not implemented"),
    ("residual_multiplier", "residual multipliers are not implemented"),
    ("attention_multiplier", "attention multipliers are not implemented"),
    ("use_qk_norm", "q/k normalisation is not implemented"),
    ("use_mrope", "multimodal rotary embeddings (Qwen2-VL) are not implemented"),
    ("qk_layernorm", "q/k normalisation is not implemented"),
];

impl ConfigJson {
    pub fn open(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            anyhow!("{}: invalid JSON at line {}, column {}: {e}", path.display(), e.line(), e.column())
        })?;
        if !value.is_object() {
            bail!("{}: expected a JSON object at the top level", path.display());
        }
        Ok(Self::from_value(value, &path.display().to_string()))
    }

    /// A config given in memory (benchmarks, tests); `label` stands in for the path in errors.
    pub fn from_value(value: Value, label: &str) -> Self {
        Self { path: PathBuf::from(label), value, read: RefCell::default(), notes: RefCell::default() }
    }

    /// The field's value (null counts as absent), recorded as read.
    fn get(&self, key: &str) -> Option<&Value> {
        self.read.borrow_mut().insert(key.to_string());
        self.value.get(key).filter(|v| !v.is_null())
    }

    /// Whether the field is in the file at all (also when null), recorded as read.
    pub fn present(&self, key: &str) -> bool {
        self.read.borrow_mut().insert(key.to_string());
        self.value.get(key).is_some()
    }

    /// Marks fields as read without using them (their meaning is covered elsewhere).
    pub fn mark_read(&self, keys: &[&str]) {
        let mut r = self.read.borrow_mut();
        for k in keys {
            r.insert((*k).to_string());
        }
    }

    /// A loud note: printed to stderr now, and kept for `ModelInfo::config_notes`.
    pub fn note(&self, msg: impl std::fmt::Display) {
        let line = format!("{}: {msg}", self.path.display());
        eprintln!("note: {line}");
        self.notes.borrow_mut().push(line);
    }

    /// Notes so far.
    pub fn notes(&self) -> Vec<String> {
        self.notes.borrow().clone()
    }

    /// A number-changing field that is missing: the default `value` is used, with a note.
    pub fn f64_or_noted(&self, key: &str, default: f64, whose: &str) -> Result<f64> {
        match self.opt_f64(key)? {
            Some(x) => Ok(x),
            None => {
                self.note(format!("field `{key}` is missing; using {whose} default {default:e}"));
                Ok(default)
            }
        }
    }

    /// A string field that changes the numbers: missing means `default`, with a note.
    pub fn str_or_noted<'a>(&'a self, key: &str, default: &'a str, whose: &str) -> Result<&'a str> {
        match self.opt_str(key)? {
            Some(x) => Ok(x),
            None => {
                self.note(format!("field `{key}` is missing; using {whose} default `{default}`"));
                Ok(default)
            }
        }
    }

    /// After a loader is done: refuses fields known to change the numbers in ways headroom does
    /// not implement, and notes every other field that no loader read and that is not known to be
    /// harmless (`also_harmless`: the family's own such fields). Returns the notes of this load.
    pub fn finish(&self, family: &str, also_harmless: &[&str]) -> Result<Vec<String>> {
        for (key, why) in REFUSED {
            if let Some(v) = self.value.get(*key).filter(|v| !v.is_null() && **v != Value::Bool(false)) {
                bail!("{}: field `{key}` = {v}: {why}", self.path.display());
            }
        }
        let read = self.read.borrow().clone();
        // `open` checks this; a config built in memory (`from_value`) may not be an object.
        let Some(obj) = self.value.as_object() else {
            bail!("{}: expected a JSON object at the top level", self.path.display());
        };
        let unknown: Vec<String> = obj
            .iter()
            .filter(|(k, v)| {
                !v.is_null()
                    && !read.contains(*k)
                    && !NEVER_NUMBER_CHANGING.contains(&k.as_str())
                    && !also_harmless.contains(&k.as_str())
                    // Checked above: off (false) means the plain architecture.
                    && !REFUSED.iter().any(|(r, _)| r == k)
            })
            .map(|(k, v)| format!("`{k}` = {v}"))
            .collect();
        if !unknown.is_empty() {
            self.note(format!(
                "{} not read by headroom's {family} loader; if {} the model's numbers, headroom's results will differ \
                 from transformers'",
                unknown.join(", "),
                if unknown.len() == 1 { "it changes" } else { "one changes" }
            ));
        }
        Ok(self.notes())
    }

    fn wrong(&self, key: &str, expected: &str) -> anyhow::Error {
        anyhow!("{}: field `{key}` should be {expected}, found {}", self.path.display(), self.value[key])
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A non-null value of any type (for fields with several allowed shapes).
    pub fn raw(&self, key: &str) -> Option<&Value> {
        self.get(key)
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
    /// An optional object; any other non-null value is an error naming the field.
    pub fn opt_object(&self, key: &str) -> Result<Option<&serde_json::Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_object().map(Some).ok_or_else(|| self.wrong(key, "an object")),
        }
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
        self.load(name, shape, DType::F32, device)
    }
    /// Stored f32/f16/bf16 bytes become a tensor of that dtype (a copy out of the map, no
    /// arithmetic), then `to_dtype` converts when the compute dtype differs.
    fn load(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let (shard, info, bytes) = self.bytes_of(name, shape)?;
        // Ask the kernel to read the whole tensor ahead (streaming reads each tensor once, front
        // to back; without the hint a cold map is read a few pages per fault).
        let _ = shard.mmap.advise_range(memmap2::Advice::WillNeed, shard.data_start + info.data_offsets.0, bytes.len());
        // Half-precision storage into f32 compute in one pass (no half-precision intermediate):
        // what streaming a bf16 checkpoint into an f32 model does for every block.
        match (info.dtype, dtype) {
            (Dtype::BF16, DType::F32) => {
                let v: Vec<f32> = bytes.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect();
                return Ok(Tensor::from_vec(v, shape, device)?);
            }
            (Dtype::F16, DType::F32) => {
                let v: Vec<f32> = bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
                return Ok(Tensor::from_vec(v, shape, device)?);
            }
            _ => {}
        }
        let t = match info.dtype {
            Dtype::F32 => Tensor::from_vec(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>(), shape, device)?,
            Dtype::F16 => Tensor::from_vec(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>(), shape, device)?,
            Dtype::BF16 => Tensor::from_vec(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>(), shape, device)?,
            other => bail!(
                "{}: tensor `{name}` has dtype {other:?}; supported weight dtypes are F32, F16, BF16",
                shard.path.display()
            ),
        };
        Ok(t.to_dtype(dtype)?)
    }
    fn stored_bytes(&self, name: &str) -> u64 {
        self.tensors.get(name).map_or(0, |(_, i)| (i.data_offsets.1 - i.data_offsets.0) as u64)
    }
    fn release(&self, name: &str) {
        if let Some((shard, info)) = self.tensors.get(name) {
            let shard = &self.shards[*shard];
            crate::formats::release_pages(&shard.mmap, shard.data_start + info.data_offsets.0, info.data_offsets.1 - info.data_offsets.0);
        }
    }
}

impl SafetensorsWeights {
    /// `name`'s shard, header entry and bytes, after checking its shape against `shape`.
    fn bytes_of(&self, name: &str, shape: &[usize]) -> Result<(&Shard, &TensorInfo, &[u8])> {
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
        Ok((shard, info, bytes))
    }
}
