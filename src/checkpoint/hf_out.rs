//! The Hugging Face folder writer: config.json (transformers 5 schema), safetensors shards filled
//! in module order as `save_pretrained` does (`model.safetensors`, or `model-0000i-of-0000N` +
//! `model.safetensors.index.json`), tokenizer files copied from another folder.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::{for_each_chunk, partial, prepare_out, Arch, Shape, TensorSpec, Written};
use crate::tokenizer::Tokenizer;

/// Tokenizer files of a Hugging Face folder that `--tokenizer-from` copies (when present).
pub(super) const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
];

/// On-disk dtype of an HF checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfDtype {
    F32,
    F16,
    Bf16,
}

impl HfDtype {
    fn size(self) -> usize {
        match self {
            HfDtype::F32 => 4,
            HfDtype::F16 | HfDtype::Bf16 => 2,
        }
    }
    /// The safetensors header's name.
    fn safetensors(self) -> &'static str {
        match self {
            HfDtype::F32 => "F32",
            HfDtype::F16 => "F16",
            HfDtype::Bf16 => "BF16",
        }
    }
    /// config.json's `dtype`.
    fn torch(self) -> &'static str {
        match self {
            HfDtype::F32 => "float32",
            HfDtype::F16 => "float16",
            HfDtype::Bf16 => "bfloat16",
        }
    }
    /// Appends the little-endian encoding of `x` to `out` (f16/bf16 round to nearest even).
    fn encode(self, x: &[f32], out: &mut Vec<u8>) {
        match self {
            HfDtype::F32 => x.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            HfDtype::F16 => x.iter().for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
            HfDtype::Bf16 => x.iter().for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        }
    }
}

/// Options of [`write_hf`].
#[derive(Clone, Debug)]
pub struct HfOptions {
    pub dtype: HfDtype,
    /// Largest shard in bytes of tensor data (the hub's `max_shard_size`; a larger tensor gets a
    /// shard of its own).
    pub shard_size: u64,
    pub seed: u64,
    pub std: f32,
    /// An HF folder whose tokenizer files are copied.
    pub tokenizer_from: Option<PathBuf>,
    /// Overwrite a non-empty `out`.
    pub force: bool,
}

/// `5GB`, `500MB`, `2GiB`, `1000` (bytes): decimal units as `huggingface_hub` parses
/// `max_shard_size` (KB = 10^3 ... TB = 10^12), binary with `i` (KiB = 2^10 ...).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        other => bail!("size `{s}`: unknown unit `{other}` (expected B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"),
    };
    let x: f64 = num.parse().map_err(|_| anyhow!("size `{s}`: expected a number with an optional unit, e.g. 5GB"))?;
    let bytes = x * mult as f64;
    if !(1.0..1e18).contains(&bytes) {
        bail!("size `{s}` should be at least 1 byte and below an exabyte");
    }
    Ok(bytes as u64)
}

/// Tensors grouped into shards as `huggingface_hub.split_torch_state_dict_into_shards` does: in
/// order, a new shard whenever the next tensor would push the current one past `max` bytes.
fn plan_shards(sizes: &[u64], max: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut cur = 0u64;
    for (i, &b) in sizes.iter().enumerate() {
        match shards.last_mut() {
            Some(last) if last.is_empty() || cur + b <= max => {
                last.push(i);
                cur += b;
            }
            _ => {
                shards.push(vec![i]);
                cur = b;
            }
        }
    }
    if shards.is_empty() {
        shards.push(Vec::new()); // no tensors: still one (empty) shard file
    }
    shards
}

/// The JSON header of one safetensors file, padded with spaces to a multiple of 8 bytes (as the
/// safetensors library writes it). Entries in writing order, offsets consecutive from 0.
fn safetensors_header(specs: &[&TensorSpec], dtype: HfDtype) -> Result<Vec<u8>> {
    let mut h = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut off = 0u64;
    for s in specs {
        let end = off + (s.numel() * dtype.size()) as u64;
        h += &format!(
            ",{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{off},{end}]}}",
            serde_json::to_string(&s.name)?,
            dtype.safetensors(),
            serde_json::to_string(&s.shape)?
        );
        off = end;
    }
    h.push('}');
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    Ok(h.into_bytes())
}

/// Sorts every object's keys (transformers writes config.json with `sort_keys=True`), whichever
/// map serde_json was built with.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let b: BTreeMap<String, Value> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(b.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        x => x,
    }
}

/// config.json as transformers 5.x `save_pretrained` writes it for this family, every field that
/// changes the numbers given explicitly with the real model's value.
pub fn config_json(shape: &Shape, dtype: HfDtype) -> Value {
    let id = |x: Option<u32>| x.map_or(Value::Null, Value::from);
    let mut c = match shape.arch {
        Arch::Opt => json!({
            "_remove_final_layer_norm": false,
            "activation_function": "relu",
            "architectures": ["OPTForCausalLM"],
            "attention_dropout": 0.0,
            "do_layer_norm_before": shape.pre_ln,
            "dropout": 0.1,
            "enable_bias": true,
            "ffn_dim": shape.ffn,
            "hidden_size": shape.hidden,
            "init_std": 0.02,
            "layer_norm_elementwise_affine": true,
            "layerdrop": 0.0,
            "max_position_embeddings": shape.context,
            "model_type": "opt",
            "num_attention_heads": shape.heads,
            "num_hidden_layers": shape.layers,
            "pad_token_id": id(shape.pad),
            "word_embed_proj_dim": shape.word_embed_proj_dim,
        }),
        Arch::Llama | Arch::Qwen2 => {
            let mut c = json!({
                "attention_dropout": 0.0,
                "head_dim": shape.head_dim(),
                "hidden_act": "silu",
                "hidden_size": shape.hidden,
                "initializer_range": 0.02,
                "intermediate_size": shape.ffn,
                "max_position_embeddings": shape.context,
                "model_type": shape.arch.model_type(),
                "num_attention_heads": shape.heads,
                "num_hidden_layers": shape.layers,
                "num_key_value_heads": shape.kv_heads,
                "pad_token_id": null,
                "rms_norm_eps": shape.rms_norm_eps,
                "rope_parameters": {"rope_theta": shape.rope_theta, "rope_type": "default"},
                "rope_theta": shape.rope_theta,
            });
            let extra = if shape.arch == Arch::Llama {
                json!({
                    "architectures": ["LlamaForCausalLM"],
                    "attention_bias": false,
                    "mlp_bias": false,
                    "pretraining_tp": 1,
                })
            } else {
                // Qwen2: q/k/v biases are implied by the architecture; no sliding window (as
                // Qwen2-7B: use_sliding_window false, which transformers 5 saves as a null window).
                json!({
                    "architectures": ["Qwen2ForCausalLM"],
                    "layer_types": vec!["full_attention"; shape.layers],
                    "max_window_layers": shape.layers,
                    "sliding_window": null,
                    "use_sliding_window": false,
                })
            };
            if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
                c.extend(e);
            }
            c
        }
    };
    if let Some(m) = c.as_object_mut() {
        m.insert("bos_token_id".into(), id(shape.bos));
        m.insert("eos_token_id".into(), id(shape.eos));
        m.insert("dtype".into(), dtype.torch().into());
        m.insert("tie_word_embeddings".into(), shape.tied.into());
        m.insert("transformers_version".into(), "5.24.0".into());
        m.insert("use_cache".into(), true.into());
        m.insert("vocab_size".into(), shape.vocab.into());
    }
    sorted(c)
}

/// The tokenizer source `dir`, checked: a folder or a GGUF holding a tokenizer headroom can
/// build, with no more tokens than `vocab`. Returns the tokenizer files to copy (none for a GGUF,
/// whose tokenizer is written out as tokenizer.json instead) and the tokenizer's bos / eos ids.
fn check_tokenizer_dir(dir: &Path, vocab: usize) -> Result<(Vec<&'static str>, Option<u32>, Option<u32>)> {
    if !dir.exists() {
        bail!("--tokenizer-from {}: no such folder or GGUF file", dir.display());
    }
    let tok = Tokenizer::for_model(dir).with_context(|| format!("--tokenizer-from {}", dir.display()))?;
    if tok.vocab_size() > vocab {
        bail!(
            "--tokenizer-from {}: the tokenizer has {} tokens but the shape's vocabulary is {vocab}; token ids past \
             {vocab} would have no embedding row (raise --vocab or choose another tokenizer)",
            dir.display(),
            tok.vocab_size()
        );
    }
    let files = TOKENIZER_FILES.iter().copied().filter(|f| dir.join(f).is_file()).collect();
    Ok((files, tok.bos_id(), tok.eos_id()))
}

/// Writes a random checkpoint of `shape` as a Hugging Face folder `out`. `progress(done, total)`
/// is called after each chunk with bytes of tensor data.
pub fn write_hf(shape: &Shape, o: &HfOptions, out: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Written> {
    shape.check()?;
    if !(o.std.is_finite() && o.std >= 0.0) {
        bail!("--std {} should be a finite number >= 0", o.std);
    }
    // With a tokenizer, config.json's bos / eos are the tokenizer's (the shape's own when it has none).
    let mut config_shape = shape.clone();
    let tok_files = match &o.tokenizer_from {
        Some(dir) => {
            let (files, bos, eos) = check_tokenizer_dir(dir, shape.vocab)?;
            config_shape.bos = bos.or(shape.bos);
            config_shape.eos = eos.or(shape.eos);
            files
        }
        None => Vec::new(),
    };
    prepare_out(out, true, o.force)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;

    let specs = shape.tensors();
    // Bytes of each tensor's data: the offsets in every header follow from these alone.
    let sizes: Vec<u64> = specs
        .iter()
        .map(|s| (s.numel() as u64).checked_mul(o.dtype.size() as u64))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("shape {}: tensor sizes overflow", shape.name))?;
    let total: u64 = sizes.iter().sum();
    let shards = plan_shards(&sizes, o.shard_size);
    let n = shards.len();
    let file_name = |i: usize| {
        if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", i + 1) }
    };

    let mut files = Vec::new();
    let mut weight_map = BTreeMap::new();
    let mut bytes = Vec::new();
    let mut done = 0u64;
    progress(0, total);
    for (i, idx) in shards.iter().enumerate() {
        let path = out.join(file_name(i));
        let tmp = partial(&path);
        let members: Vec<&TensorSpec> = idx.iter().map(|&j| &specs[j]).collect();
        let header = safetensors_header(&members, o.dtype)?;
        let mut w = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        w.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|_| w.write_all(&header))
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        for s in &members {
            for_each_chunk(s, o.seed, o.std, &|r| r, &mut |vals| {
                bytes.clear();
                o.dtype.encode(vals, &mut bytes);
                w.write_all(&bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
                done += bytes.len() as u64;
                progress(done, total);
                Ok(())
            })?;
            weight_map.insert(s.name.clone(), file_name(i));
        }
        w.sync_all().with_context(|| format!("{}: cannot flush", tmp.display()))?;
        drop(w);
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot rename {} into place", tmp.display()))?;
        let len = 8 + header.len() as u64 + idx.iter().map(|&j| sizes[j]).sum::<u64>();
        files.push((path, len));
    }
    let mut write_json = |name: &str, v: &Value| -> Result<()> {
        let path = out.join(name);
        let text = serde_json::to_string_pretty(v)? + "\n";
        crate::io::write_atomic(&path, text.as_bytes())?;
        files.push((path, text.len() as u64));
        Ok(())
    };
    if n > 1 {
        let index = json!({
            "metadata": {"total_parameters": shape.n_params(), "total_size": total},
            "weight_map": weight_map,
        });
        write_json("model.safetensors.index.json", &sorted(index))?;
    }
    write_json("config.json", &config_json(&config_shape, o.dtype))?;
    if let Some(src) = o.tokenizer_from.as_ref().filter(|p| p.is_file()) {
        // A GGUF's tokenizer (SentencePiece or BPE) as tokenizer.json + tokenizer_config.json.
        let tok = Tokenizer::for_model(src).with_context(|| format!("--tokenizer-from {}", src.display()))?;
        for f in tok.save_hf(out)? {
            let p = out.join(f);
            let len = std::fs::metadata(&p).with_context(|| format!("cannot read {}", p.display()))?.len();
            files.push((p, len));
        }
    }
    if let Some(dir) = &o.tokenizer_from {
        for f in &tok_files {
            let dst = out.join(f);
            let len = std::fs::copy(dir.join(f), &dst)
                .with_context(|| format!("cannot copy {} to {}", dir.join(f).display(), dst.display()))?;
            files.push((dst, len));
        }
    }
    Ok(Written::new(files, shape, o.tokenizer_from.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_shards() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("5 parsecs").is_err() && parse_size("GB").is_err() && parse_size("0").is_err());
        assert_eq!(plan_shards(&[3, 3, 3, 10, 1], 6), vec![vec![0, 1], vec![2], vec![3], vec![4]]);
    }
}
