//! Llama family: Llama, Mistral, Qwen2, SmolLM2 (HF folders and GGUF files).
//!
//! - RMSNorm, SwiGLU `down(silu(gate x) * up x)`, no biases except Qwen2's q/k/v (and Llama's
//!   optional `attention_bias` / `mlp_bias`).
//! - RoPE over the whole head. HF weights pair dims (i, i + hd/2) ("rotate_half"). llama.cpp's
//!   converter permutes the Q/K rows of `llama`-architecture GGUFs so that ggml's "normal" RoPE
//!   applies, which pairs adjacent dims (2i, 2i+1): the same model, another row order. Qwen2 GGUFs
//!   are not permuted (ggml's "neox" RoPE), so they keep rotate-half.
//! - Grouped-query attention: H query heads share KV = num_key_value_heads key/value heads.
//! - Mistral's sliding window (and Qwen2's when `use_sliding_window`) limits keys to i - j < w.

use anyhow::{bail, Context, Result};
use candle_core::Device;

use super::blocks::{Activation, Attention, Block, Embeddings, Linear, LmHead, Mlp, Norm, NormKind, Residual, Rope, RopeStyle};
use super::{check_heads, Family, Loader, Model, Parts};
use crate::formats::gguf::GgufFile;
use crate::formats::hf::ConfigJson;
use crate::model::weights::WeightSource;

/// Rotary tables are precomputed up to this many positions (2 x 32k x hd/2 floats); longer
/// inputs are an error rather than a silent wrap.
pub const MAX_ROPE_TABLE: usize = 32768;

/// The inverse frequencies after `rope_scaling` (none, "default", "linear", "llama3").
fn scaled_inv_freq(cfg: &ConfigJson, theta: f64, rotary_dim: usize) -> Result<Vec<f32>> {
    let mut inv = Rope::default_inv_freq(theta, rotary_dim);
    let Some(scaling) = cfg.object("rope_scaling") else { return Ok(inv) };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let num = |k: &str| -> Result<f64> {
        scaling
            .get(k)
            .and_then(|v| v.as_f64())
            .with_context(|| format!("{}: rope_scaling.{k} should be a number", cfg.path.display()))
    };
    match kind {
        "default" => {}
        "linear" => {
            let factor = num("factor")? as f32;
            inv.iter_mut().for_each(|f| *f /= factor);
        }
        "llama3" => {
            // transformers' _compute_llama3_parameters.
            let factor = num("factor")?;
            let low = num("low_freq_factor")?;
            let high = num("high_freq_factor")?;
            let old_ctx = num("original_max_position_embeddings")?;
            let low_wavelen = old_ctx / low;
            let high_wavelen = old_ctx / high;
            for f in inv.iter_mut() {
                let freq = *f as f64;
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let new = if wavelen < high_wavelen {
                    freq
                } else if wavelen > low_wavelen {
                    freq / factor
                } else {
                    let smooth = (old_ctx / wavelen - low) / (high - low);
                    (1.0 - smooth) * freq / factor + smooth * freq
                };
                *f = new as f32;
            }
        }
        other => bail!(
            "{}: rope_scaling type `{other}` is not supported (supported: default, linear, llama3)",
            cfg.path.display()
        ),
    }
    Ok(inv)
}

/// Per-layer tensor names, which differ between HF and GGUF.
struct Names {
    embed: String,
    final_norm: String,
    lm_head: String,
    layer: fn(usize, &str) -> String,
}

fn hf_layer(l: usize, part: &str) -> String {
    let name = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "q" => "self_attn.q_proj",
        "k" => "self_attn.k_proj",
        "v" => "self_attn.v_proj",
        "o" => "self_attn.o_proj",
        "gate" => "mlp.gate_proj",
        "up" => "mlp.up_proj",
        "down" => "mlp.down_proj",
        other => other,
    };
    format!("model.layers.{l}.{name}")
}

fn gguf_layer(l: usize, part: &str) -> String {
    let name = match part {
        "attn_norm" => "attn_norm",
        "ffn_norm" => "ffn_norm",
        "q" => "attn_q",
        "k" => "attn_k",
        "v" => "attn_v",
        "o" => "attn_output",
        "gate" => "ffn_gate",
        "up" => "ffn_up",
        "down" => "ffn_down",
        other => other,
    };
    format!("blk.{l}.{name}")
}

/// Architecture numbers common to both formats.
struct Arch {
    architecture: String,
    format: &'static str,
    d: usize,
    n_layers: usize,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    ffn: usize,
    eps: f64,
    qkv_bias: bool,
    o_bias: bool,
    mlp_bias: bool,
    act: Activation,
    rope_style: RopeStyle,
    theta: f64,
    inv_freq: Vec<f32>,
    max_pos: usize,
    window: Option<usize>,
    tied: bool,
    /// From config.json (GGUF: read off the embedding's shape).
    vocab: Option<usize>,
    bos: Option<u32>,
    eos: Option<u32>,
}

fn build(a: Arch, ws: &dyn WeightSource, names: &Names, device: &Device) -> Result<Model> {
    let ld = Loader { ws, device };
    let rope = Rope::new(a.rope_style, a.inv_freq.len() * 2, a.theta, &a.inv_freq, a.max_pos.min(MAX_ROPE_TABLE), device)?;
    let vocab = match (ws.shape_of(&names.embed), a.vocab) {
        (Some(s), Some(v)) if s.len() == 2 && s[0] != v => bail!(
            "{}: `{}` has {} rows but config.json says vocab_size {v}",
            ws.origin(),
            names.embed,
            s[0]
        ),
        (Some(s), _) if s.len() == 2 => s[0],
        (Some(s), _) => bail!("{}: `{}` should be a matrix, found shape {s:?}", ws.origin(), names.embed),
        (None, Some(v)) if ws.contains(&names.embed) => v,
        (None, _) => bail!("{}: missing tensor `{}`", ws.origin(), names.embed),
    };
    let tokens = ld.tensor(&names.embed, &[vocab, a.d])?;
    let rms = |name: String| -> Result<Norm> { ld.norm(&name, NormKind::RmsNorm, a.d, a.eps, false) };
    let lin = |l: usize, part: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
        ld.linear(&(names.layer)(l, part), out, inp, bias)
    };
    let mut blocks = Vec::with_capacity(a.n_layers);
    for l in 0..a.n_layers {
        blocks.push(Block {
            attn_norm: rms((names.layer)(l, "attn_norm"))?,
            attn: Attention {
                q: lin(l, "q", a.n_heads * a.hd, a.d, a.qkv_bias)?,
                k: lin(l, "k", a.n_kv * a.hd, a.d, a.qkv_bias)?,
                v: lin(l, "v", a.n_kv * a.hd, a.d, a.qkv_bias)?,
                o: lin(l, "o", a.d, a.n_heads * a.hd, a.o_bias)?,
                n_heads: a.n_heads,
                n_kv_heads: a.n_kv,
                head_dim: a.hd,
                scale: (a.hd as f64).powf(-0.5),
                rope: Some(rope.clone()),
                sliding_window: a.window,
            },
            ffn_norm: rms((names.layer)(l, "ffn_norm"))?,
            mlp: Mlp::Gated {
                gate: lin(l, "gate", a.ffn, a.d, a.mlp_bias)?,
                up: lin(l, "up", a.ffn, a.d, a.mlp_bias)?,
                down: lin(l, "down", a.d, a.ffn, a.mlp_bias)?,
                act: a.act,
            },
            residual: Residual::PreNorm,
        });
    }
    let lm_head_present = ws.contains(&names.lm_head);
    let (unembed, tied) = if lm_head_present && !a.tied {
        (ld.tensor(&names.lm_head, &[vocab, a.d])?, false)
    } else if a.tied || a.format == "gguf" {
        // GGUF files omit `output.weight` exactly when the model ties it to the embedding.
        (tokens.clone(), true)
    } else {
        bail!(
            "{}: no `{}` and tie_word_embeddings is false: the unembedding is missing",
            ws.origin(),
            names.lm_head
        );
    };
    let head = LmHead { final_norm: Some(rms(names.final_norm.clone())?), project_out: None, unembed, tied };
    Model::assemble(
        Parts {
            family: Family::Llama,
            architecture: a.architecture,
            format: a.format,
            source: ws.origin(),
            embed: Embeddings { tokens, positions: None, project_in: None },
            blocks,
            head,
            context_length: a.max_pos,
            bos_token_id: a.bos,
            eos_token_id: a.eos,
        },
        device,
    )
}

pub fn from_hf(cfg: &ConfigJson, ws: &dyn WeightSource, device: &Device) -> Result<Model> {
    let model_type = cfg.str("model_type")?.to_string();
    let d = cfg.usize("hidden_size")?;
    let n_heads = cfg.usize("num_attention_heads")?;
    let n_kv = cfg.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
    let hd = match cfg.opt_usize("head_dim")? {
        Some(hd) => hd,
        None => {
            check_heads(&cfg.path.display().to_string(), d, n_heads, n_kv)?;
            d / n_heads
        }
    };
    if n_kv == 0 || n_heads % n_kv != 0 {
        bail!("{}: num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv}", cfg.path.display());
    }
    let theta = cfg.f64_or("rope_theta", 10000.0)?;
    let rotary_dim = match cfg.opt_f64("partial_rotary_factor")? {
        Some(f) => (hd as f64 * f) as usize,
        None => hd,
    };
    let window = match model_type.as_str() {
        "mistral" => cfg.opt_usize("sliding_window")?,
        "qwen2" if cfg.bool_or("use_sliding_window", false)? => cfg.opt_usize("sliding_window")?,
        _ => None,
    };
    let qwen = model_type == "qwen2";
    let attention_bias = cfg.bool_or("attention_bias", false)?;
    let arch = Arch {
        d,
        n_layers: cfg.usize("num_hidden_layers")?,
        n_heads,
        n_kv,
        hd,
        ffn: cfg.usize("intermediate_size")?,
        eps: cfg.f64_or("rms_norm_eps", 1e-6)?,
        qkv_bias: qwen || attention_bias,
        o_bias: attention_bias && !qwen,
        mlp_bias: cfg.bool_or("mlp_bias", false)?,
        act: Activation::from_hf(cfg.opt_str("hidden_act")?.unwrap_or("silu"))?,
        rope_style: RopeStyle::RotateHalf,
        theta,
        inv_freq: scaled_inv_freq(cfg, theta, rotary_dim)?,
        max_pos: cfg.usize_or("max_position_embeddings", 2048)?,
        window,
        tied: cfg.bool_or("tie_word_embeddings", false)?,
        vocab: cfg.opt_usize("vocab_size")?,
        bos: cfg.opt_usize("bos_token_id")?.map(|x| x as u32),
        eos: cfg.opt_usize("eos_token_id")?.map(|x| x as u32),
        architecture: model_type,
        format: "hf",
    };
    let names = Names {
        embed: "model.embed_tokens.weight".into(),
        final_norm: "model.norm".into(),
        lm_head: "lm_head.weight".into(),
        layer: hf_layer,
    };
    build(arch, ws, &names, device)
}

pub fn from_gguf(g: &GgufFile, device: &Device) -> Result<Model> {
    let origin = g.origin();
    let arch_name = g.get_str("general.architecture")?.to_string();
    let rope_style = match arch_name.as_str() {
        "llama" | "mistral" => RopeStyle::AdjacentPairs,
        "qwen2" => RopeStyle::RotateHalf,
        other => bail!("{origin}: GGUF architecture `{other}` is not supported (supported: llama, mistral, qwen2)"),
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let opt_u = |k: &str| -> Result<Option<usize>> {
        if g.get(&key(k)).is_some() { Ok(Some(g.get_u64(&key(k))? as usize)) } else { Ok(None) }
    };
    let d = g.get_u64(&key("embedding_length"))? as usize;
    let n_heads = g.get_u64(&key("attention.head_count"))? as usize;
    let n_kv = opt_u("attention.head_count_kv")?.unwrap_or(n_heads);
    let hd = match opt_u("attention.key_length")? {
        Some(hd) => hd,
        None => {
            check_heads(&origin, d, n_heads, n_kv)?;
            d / n_heads
        }
    };
    if n_kv == 0 || n_heads % n_kv != 0 {
        bail!("{origin}: head_count {n_heads} is not a multiple of head_count_kv {n_kv}");
    }
    let rotary_dim = opt_u("rope.dimension_count")?.unwrap_or(hd);
    if rotary_dim > hd {
        bail!("{origin}: rope.dimension_count {rotary_dim} exceeds the head dim {hd}");
    }
    let theta = if g.get(&key("rope.freq_base")).is_some() { g.get_f32(&key("rope.freq_base"))? as f64 } else { 10000.0 };
    let eps = g.get_f32(&key("attention.layer_norm_rms_epsilon"))? as f64;
    let tok_id = |k: &str| -> Result<Option<u32>> {
        if g.get(k).is_some() { Ok(Some(g.get_u64(k)? as u32)) } else { Ok(None) }
    };
    let qwen = arch_name == "qwen2";
    let arch = Arch {
        d,
        n_layers: g.get_u64(&key("block_count"))? as usize,
        n_heads,
        n_kv,
        hd,
        ffn: g.get_u64(&key("feed_forward_length"))? as usize,
        eps,
        qkv_bias: qwen,
        o_bias: false,
        mlp_bias: false,
        act: Activation::Silu,
        rope_style,
        theta,
        inv_freq: Rope::default_inv_freq(theta, rotary_dim),
        max_pos: opt_u("context_length")?.unwrap_or(2048),
        window: opt_u("attention.sliding_window")?,
        tied: false,
        vocab: None,
        bos: tok_id("tokenizer.ggml.bos_token_id")?,
        eos: tok_id("tokenizer.ggml.eos_token_id")?,
        architecture: arch_name,
        format: "gguf",
    };
    let names = Names {
        embed: "token_embd.weight".into(),
        final_norm: "output_norm".into(),
        lm_head: "output.weight".into(),
        layer: gguf_layer,
    };
    let mut model = build(arch, g, &names, device)?;
    model.info.weight_dtypes = g.dtype_summary();
    Ok(model)
}
