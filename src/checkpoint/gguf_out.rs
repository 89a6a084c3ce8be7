//! The GGUF writer: llama.cpp's tensor names and `llama.*` / `qwen2.*` metadata, the header
//! (shared with [`GgufWriter`](crate::formats::gguf::GgufWriter) through
//! [`encode_header`]) written first, then each tensor's quantized rows streamed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{for_each_chunk, partial, prepare_out, Arch, Shape, Written};
use crate::formats::gguf::{alignment_of, encode_header, quantize_bytes, GgmlType, GgufFile, GgufValue, TensorHeader};

/// Options of [`write_gguf`].
#[derive(Clone, Debug)]
pub struct GgufOptions {
    /// The type of every matrix (F32, F16, BF16, Q8_0, Q4_0, Q4_1); vectors (norms, biases) are
    /// F32 as llama.cpp stores them.
    pub quant: GgmlType,
    pub seed: u64,
    pub std: f32,
    /// A GGUF whose `tokenizer.*` metadata is copied.
    pub tokenizer_from: Option<PathBuf>,
    pub force: bool,
}

/// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`) for a file whose matrices are all `t`.
fn file_type(t: GgmlType) -> Result<u32> {
    Ok(match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::BF16 => 32,
        other => bail!("GGUF tensor type {other} cannot be written (supported: f32, f16, bf16, q8_0, q4_0, q4_1)"),
    })
}

/// llama.cpp's name for an HF Llama/Qwen2 tensor name.
fn gguf_name(hf: &str) -> Result<String> {
    match hf {
        "model.embed_tokens.weight" => return Ok("token_embd.weight".into()),
        "model.norm.weight" => return Ok("output_norm.weight".into()),
        "lm_head.weight" => return Ok("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").ok_or_else(|| anyhow!("internal: no GGUF name for `{hf}`"))?;
    let (layer, part) = rest.split_once('.').ok_or_else(|| anyhow!("internal: no GGUF name for `{hf}`"))?;
    let (module, kind) = part.rsplit_once('.').ok_or_else(|| anyhow!("internal: no GGUF name for `{hf}`"))?;
    let g = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => bail!("internal: no GGUF name for `{hf}`"),
    };
    Ok(format!("blk.{layer}.{g}.{kind}"))
}

/// The source row of GGUF row `r` of a Q or K matrix under llama.cpp's `permute` (convert script):
/// each head's HF rows `[2][hd/2]` (rotate-half pairs i, i + hd/2) are stored as `[hd/2][2]`
/// (adjacent pairs), so GGUF row h*hd + 2i + j holds HF row h*hd + j*hd/2 + i.
fn permuted_row(r: usize, hd: usize) -> usize {
    let (h, p) = (r / hd, r % hd);
    h * hd + (p % 2) * (hd / 2) + p / 2
}

/// The `tokenizer.*` metadata of the GGUF `path`, checked against the shape's vocabulary.
fn tokenizer_metadata(path: &Path, vocab: usize) -> Result<Vec<(String, GgufValue)>> {
    if !path.is_file() {
        bail!(
            "--tokenizer-from {}: a GGUF output copies its tokenizer from a .gguf file (its `tokenizer.*` metadata); \
             converting a Hugging Face tokenizer folder is not supported",
            path.display()
        );
    }
    let g = GgufFile::open(path).with_context(|| format!("--tokenizer-from {}", path.display()))?;
    let n = g.get_str_array("tokenizer.ggml.tokens").with_context(|| format!("--tokenizer-from {}", path.display()))?.len();
    if n > vocab {
        bail!(
            "--tokenizer-from {}: the tokenizer has {n} tokens but the shape's vocabulary is {vocab}; token ids past \
             {vocab} would have no embedding row (raise --vocab or choose another tokenizer)",
            path.display()
        );
    }
    Ok(g.metadata().iter().filter(|(k, _)| k.starts_with("tokenizer.")).cloned().collect())
}

/// Writes a random checkpoint of `shape` (Llama or Qwen2) as the GGUF file `out`.
/// `progress(done, total)` is called after each chunk with bytes of tensor data.
pub fn write_gguf(shape: &Shape, o: &GgufOptions, out: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Written> {
    shape.check()?;
    if shape.arch == Arch::Opt {
        bail!(
            "shape {}: GGUF output is for Llama-family shapes (llama, qwen2); headroom reads OPT only from Hugging Face \
             folders (use --format hf)",
            shape.name
        );
    }
    if !(o.std.is_finite() && o.std >= 0.0) {
        bail!("--std {} should be a finite number >= 0", o.std);
    }
    let ftype = file_type(o.quant)?;
    let tok_meta = match &o.tokenizer_from {
        Some(p) => tokenizer_metadata(p, shape.vocab)?,
        None => Vec::new(),
    };

    let arch = shape.arch.model_type();
    let k = |s: &str| format!("{arch}.{s}");
    let mut meta: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), arch.into()),
        ("general.name".into(), format!("random {}", shape.name).as_str().into()),
        ("general.file_type".into(), ftype.into()),
        (k("context_length"), (shape.context as u32).into()),
        (k("embedding_length"), (shape.hidden as u32).into()),
        (k("block_count"), (shape.layers as u32).into()),
        (k("feed_forward_length"), (shape.ffn as u32).into()),
        (k("attention.head_count"), (shape.heads as u32).into()),
        (k("attention.head_count_kv"), (shape.kv_heads as u32).into()),
        (k("rope.dimension_count"), (shape.head_dim() as u32).into()),
        (k("rope.freq_base"), (shape.rope_theta as f32).into()),
        (k("attention.layer_norm_rms_epsilon"), (shape.rms_norm_eps as f32).into()),
        (k("vocab_size"), (shape.vocab as u32).into()),
    ];
    meta.extend(tok_meta);

    // Tensors with their GGUF names and types; the Q/K rows of `llama` files are permuted.
    let specs = shape.tensors();
    let mut headers = Vec::with_capacity(specs.len());
    for s in &specs {
        let dtype = if s.shape.len() == 1 { GgmlType::F32 } else { o.quant };
        let bs = dtype.block_size() as usize;
        if !s.row_len().is_multiple_of(bs) {
            bail!(
                "tensor `{}` (shape {:?}): row length {} is not a multiple of the {dtype} block size {bs}; choose dims \
                 that are multiples of {bs} or --quant f16/bf16/f32",
                s.name,
                s.shape,
                s.row_len()
            );
        }
        let n_bytes = dtype
            .bytes_for(s.numel() as u64)
            .ok_or_else(|| anyhow!("tensor `{}`: {} values of {dtype} do not fit", s.name, s.numel()))?;
        let dims = s.shape.iter().rev().map(|&d| d as u64).collect();
        headers.push(TensorHeader { name: gguf_name(&s.name)?, dims, dtype, n_bytes });
    }
    let align = alignment_of(&meta)?;
    let (header, offsets, data_len) = encode_header(&meta, &headers)?;
    let total: u64 = headers.iter().map(|h| h.n_bytes).sum();

    prepare_out(out, false, o.force)?;
    let tmp = partial(out);
    let mut w = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let werr = |e: std::io::Error| anyhow!("{}: cannot write: {e}", tmp.display());
    w.write_all(&header).map_err(werr)?;
    let (mut pos, mut done) = (0u64, 0u64);
    progress(0, total);
    for ((s, h), off) in specs.iter().zip(&headers).zip(&offsets) {
        // Zero padding up to this tensor's aligned offset (less than `align` bytes).
        w.write_all(&vec![0u8; (off - pos) as usize]).map_err(werr)?;
        pos = *off;
        let hd = shape.head_dim();
        let permute = shape.arch == Arch::Llama && (s.name.ends_with("q_proj.weight") || s.name.ends_with("k_proj.weight"));
        let source_row = |r: usize| if permute { permuted_row(r, hd) } else { r };
        for_each_chunk(s, o.seed, o.std, &source_row, &mut |vals| {
            let bytes = quantize_bytes(h.dtype, vals).with_context(|| format!("tensor `{}`", h.name))?;
            w.write_all(&bytes).map_err(werr)?;
            pos += bytes.len() as u64;
            done += bytes.len() as u64;
            progress(done, total);
            Ok(())
        })?;
    }
    // The file ends on the alignment, as GgufWriter::to_bytes pads it.
    w.write_all(&vec![0u8; (data_len.div_ceil(align) * align - pos) as usize]).map_err(werr)?;
    w.sync_all().map_err(werr)?;
    drop(w);
    std::fs::rename(&tmp, out).with_context(|| format!("cannot rename {} into place", tmp.display()))?;
    let len = std::fs::metadata(out).with_context(|| format!("cannot stat {}", out.display()))?.len();
    Ok(Written::new(vec![(out.to_path_buf(), len)], shape, o.tokenizer_from.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_permutation() {
        assert_eq!(gguf_name("model.layers.3.self_attn.q_proj.bias").unwrap(), "blk.3.attn_q.bias");
        assert_eq!(gguf_name("model.layers.0.post_attention_layernorm.weight").unwrap(), "blk.0.ffn_norm.weight");
        // hd 4: GGUF rows 0..4 hold HF rows 0, 2, 1, 3 (pairs (0,2), (1,3) made adjacent).
        assert_eq!((0..8).map(|r| permuted_row(r, 4)).collect::<Vec<_>>(), vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }
}
