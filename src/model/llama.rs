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

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::Device;

use super::blocks::{Activation, Attention, Block, Embeddings, Linear, LmHead, Mlp, Norm, NormKind, Residual, Rope, RopeStyle};
use super::{check_heads, rope_config, Family, LoadCtx, Loader, Model, Parts};
use crate::formats::gguf::GgufFile;
use crate::formats::hf::ConfigJson;
use crate::model::weights::WeightSource;

/// Rotary tables are precomputed up to this many positions (2 x 32k x hd/2 floats); longer
/// inputs are an error rather than a silent wrap.
pub const MAX_ROPE_TABLE: usize = 32768;

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
#[derive(Clone)]
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
    /// Sliding window of each layer (`[n_layers]`; None = full causal attention).
    windows: Vec<Option<usize>>,
    tied: bool,
    /// From config.json (GGUF: read off the embedding's shape).
    vocab: Option<usize>,
    bos: Option<u32>,
    eos: Option<u32>,
}

fn build(a: Arch, ws: Arc<dyn WeightSource>, names: Names, ctx: &LoadCtx) -> Result<Model> {
    let first = ctx.first_device().clone();
    let ld = ctx.loader(ws.as_ref(), &first);
    // Built once on the host in f32; each block takes its copy onto its device and dtype.
    let rope = Rope::new(a.rope_style, a.inv_freq.len() * 2, a.theta, &a.inv_freq, a.max_pos.min(MAX_ROPE_TABLE), &Device::Cpu)?;
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
    let layer = names.layer;
    let arch = a.clone();
    let build_block = move |ld: &Loader<'_>, l: usize| -> Result<Block> {
        let a = &arch;
        let rms = |part: &str| -> Result<Norm> { ld.norm(&layer(l, part), NormKind::RmsNorm, a.d, a.eps, false) };
        let lin = |part: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> { ld.linear(&layer(l, part), out, inp, bias) };
        Ok(Block {
            attn_norm: rms("attn_norm")?,
            attn: Attention {
                q: lin("q", a.n_heads * a.hd, a.d, a.qkv_bias)?,
                k: lin("k", a.n_kv * a.hd, a.d, a.qkv_bias)?,
                v: lin("v", a.n_kv * a.hd, a.d, a.qkv_bias)?,
                o: lin("o", a.d, a.n_heads * a.hd, a.o_bias)?,
                n_heads: a.n_heads,
                n_kv_heads: a.n_kv,
                head_dim: a.hd,
                scale: (a.hd as f64).powf(-0.5),
                scale_queries: false,
                rope: Some(rope.to_device(ld.device)?),
                sliding_window: a.windows[l],
            },
            ffn_norm: rms("ffn_norm")?,
            mlp: Mlp::Gated {
                gate: lin("gate", a.ffn, a.d, a.mlp_bias)?,
                up: lin("up", a.ffn, a.d, a.mlp_bias)?,
                down: lin("down", a.d, a.ffn, a.mlp_bias)?,
                act: a.act,
            },
            residual: Residual::PreNorm,
        })
    };
    let last = ctx.last_device(a.n_layers);
    let hl = ctx.loader(ws.as_ref(), &last);
    let lm_head_present = ws.contains(&names.lm_head);
    let (unembed, tied) = if lm_head_present && !a.tied {
        (hl.tensor(&names.lm_head, &[vocab, a.d])?, false)
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
    let final_norm = hl.norm(&names.final_norm, NormKind::RmsNorm, a.d, a.eps, false)?;
    let head = LmHead { final_norm: Some(final_norm), project_out: None, unembed, tied };
    Model::assemble(
        Parts {
            family: Family::Llama,
            architecture: a.architecture,
            format: a.format,
            embed: Embeddings { tokens, positions: None, project_in: None },
            build_block: Arc::new(build_block),
            n_layers: a.n_layers,
            layer_windows: a.windows,
            head,
            context_length: a.max_pos,
            bos_token_id: a.bos,
            eos_token_id: a.eos,
        },
        ws,
        ctx,
    )
}

/// Fields of Llama / Mistral / Qwen2 configs that do not change the forward pass and that no
/// code below reads (on top of `hf::NEVER_NUMBER_CHANGING`).
const LLAMA_HARMLESS: &[&str] = &["max_position_embeddings"];

pub(crate) fn from_hf(cfg: &ConfigJson, ws: Arc<dyn WeightSource>, ctx: &LoadCtx) -> Result<Model> {
    let path = cfg.path.display().to_string();
    let model_type = cfg.str("model_type")?.to_string();
    let d = cfg.usize("hidden_size")?;
    let n_layers = cfg.usize("num_hidden_layers")?;
    let n_heads = cfg.usize("num_attention_heads")?;
    let n_kv = cfg.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
    let hd = match cfg.opt_usize("head_dim")? {
        Some(hd) => hd,
        None => {
            check_heads(&path, d, n_heads, n_kv)?;
            d / n_heads
        }
    };
    if n_kv == 0 || !n_heads.is_multiple_of(n_kv) {
        bail!("{path}: num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv}");
    }
    let rope = rope_config::read(cfg, &[], &[])?;
    // transformers' Llama/Mistral/Qwen2 rotate the whole head for rope_type default (they ignore
    // partial_rotary_factor there) but shorten the table for linear/llama3, which then fails to
    // broadcast: no consistent meaning to copy, so anything but 1 is refused.
    if let Some(p) = rope.partial_rotary_factor.filter(|p| *p != 1.0) {
        bail!("{path}: partial_rotary_factor {p} is not supported for {model_type} (transformers rotates the whole head)");
    }
    let max_pos = cfg.usize_or("max_position_embeddings", 2048)?;
    let windows = sliding_windows(cfg, &model_type, n_layers)?;
    // Biases as transformers builds them: Llama q/k/v/o from `attention_bias` and the MLP from
    // `mlp_bias`; Qwen2 always q/k/v (never o, never MLP); Mistral none. Absent flags mean the
    // original architecture (no bias), as in the config classes.
    let (qkv_bias, o_bias, mlp_bias) = match model_type.as_str() {
        "llama" => {
            let attn = cfg.bool_or("attention_bias", false)?;
            (attn, attn, cfg.bool_or("mlp_bias", false)?)
        }
        "qwen2" => (true, false, false),
        _ => (false, false, false),
    };
    let act = cfg.str_or_noted("hidden_act", "silu", "transformers'")?.to_string();
    // LlamaConfig, MistralConfig and Qwen2Config all default to 1e-6.
    let eps = cfg.f64_or_noted("rms_norm_eps", 1e-6, &format!("{model_type}'s"))?;
    let tied = tie_word_embeddings(cfg, ws.as_ref(), "lm_head.weight", false)?;
    let arch = Arch {
        d,
        n_layers,
        n_heads,
        n_kv,
        hd,
        ffn: cfg.usize("intermediate_size")?,
        eps,
        qkv_bias,
        o_bias,
        mlp_bias,
        act: Activation::from_hf(&act)?,
        rope_style: RopeStyle::RotateHalf,
        theta: rope.theta,
        inv_freq: rope.inv_freq(hd),
        max_pos,
        windows,
        tied,
        vocab: cfg.opt_usize("vocab_size")?,
        bos: cfg.opt_usize("bos_token_id")?.map(|x| x as u32),
        eos: cfg.opt_usize("eos_token_id")?.map(|x| x as u32),
        architecture: model_type.clone(),
        format: "hf",
    };
    let names = Names {
        embed: "model.embed_tokens.weight".into(),
        final_norm: "model.norm".into(),
        lm_head: "lm_head.weight".into(),
        layer: hf_layer,
    };
    let mut model = build(arch, ws, names, ctx)?;
    model.info.config_notes = cfg.finish(&model_type, LLAMA_HARMLESS)?;
    Ok(model)
}

/// Whether the unembedding is the token embedding, as transformers 5 loads it: a checkpoint that
/// carries its own unembedding tensor (`lm_head`) uses it, whatever `tie_word_embeddings` says
/// (transformers 5 ties only when the tensor is missing; a note says so when the config claims
/// tied); without it, `tie_word_embeddings` (absent: the family default `default`) decides, and
/// untied without the tensor is an error (raised where the head is loaded).
pub(crate) fn tie_word_embeddings(cfg: &ConfigJson, ws: &dyn WeightSource, lm_head: &str, default: bool) -> Result<bool> {
    let given = cfg.has("tie_word_embeddings");
    let tie = cfg.bool_or("tie_word_embeddings", default)?;
    if !ws.contains(lm_head) {
        return Ok(tie);
    }
    if tie {
        cfg.note(format!(
            "tie_word_embeddings is {} but the checkpoint has its own `{lm_head}`; using that tensor as the \
             unembedding, as transformers 5 does",
            if given { "true".to_string() } else { format!("missing (default {default})") }
        ));
    }
    Ok(false)
}

/// `sliding_window`: null means none; absent means the config class default 4096 (noted).
fn window_or_default(cfg: &ConfigJson, class: &str) -> Result<Option<usize>> {
    if cfg.present("sliding_window") {
        return cfg.opt_usize("sliding_window");
    }
    cfg.note(format!("field `sliding_window` is missing; using {class}'s default 4096"));
    Ok(Some(4096))
}

/// The sliding window of each layer, as transformers applies it:
/// - Mistral: `sliding_window` (null = none) in every layer (its config ignores `layer_types`);
/// - Qwen2: only when `use_sliding_window`, and only in the layers `layer_types` marks
///   `sliding_attention` (v5), or from `max_window_layers` on (v4: layers i >= max_window_layers);
///   both given and disagreeing is an error;
/// - Llama: none.
fn sliding_windows(cfg: &ConfigJson, model_type: &str, n_layers: usize) -> Result<Vec<Option<usize>>> {
    let path = cfg.path.display();
    match model_type {
        "mistral" => {
            if cfg.has("layer_types") {
                cfg.note("field `layer_types` is ignored for mistral, as transformers' MistralConfig ignores it");
            }
            Ok(vec![window_or_default(cfg, "MistralConfig")?; n_layers])
        }
        "qwen2" => {
            let use_window = cfg.bool_or("use_sliding_window", false)?;
            let window = if use_window { window_or_default(cfg, "Qwen2Config")? } else { None };
            let max_window_layers = cfg.opt_usize("max_window_layers")?;
            let layer_types: Option<Vec<String>> = match cfg.raw("layer_types") {
                None => None,
                Some(v) => {
                    let list = v.as_array().filter(|a| a.len() == n_layers).ok_or_else(|| {
                        anyhow::anyhow!("{path}: field `layer_types` should be a list of {n_layers} strings, found {v}")
                    })?;
                    let mut out = Vec::with_capacity(n_layers);
                    for (i, t) in list.iter().enumerate() {
                        match t.as_str() {
                            Some(s @ ("full_attention" | "sliding_attention")) => out.push(s.to_string()),
                            _ => bail!(
                                "{path}: layer_types[{i}] is {t}; expected \"full_attention\" or \"sliding_attention\""
                            ),
                        }
                    }
                    Some(out)
                }
            };
            let Some(w) = window else {
                // transformers sets sliding_window = None unless use_sliding_window: no window;
                // a layer still marked sliding then has no window to use (transformers raises).
                cfg.mark_read(&["sliding_window"]);
                if let Some(i) = layer_types.iter().flatten().position(|t| t == "sliding_attention") {
                    bail!(
                        "{path}: layer_types[{i}] is \"sliding_attention\" but there is no sliding window \
                         (use_sliding_window is {use_window}, sliding_window {})",
                        cfg.raw("sliding_window").map(|v| v.to_string()).unwrap_or_else(|| "null".into())
                    );
                }
                return Ok(vec![None; n_layers]);
            };
            let from_max = max_window_layers.map(|m| {
                (0..n_layers)
                    .map(|i| if i >= m { "sliding_attention" } else { "full_attention" }.to_string())
                    .collect::<Vec<_>>()
            });
            let types = match (layer_types, from_max) {
                (Some(t), Some(m)) if t != m => bail!(
                    "{path}: `layer_types` {t:?} disagrees with `max_window_layers` {} (which means {m:?})",
                    max_window_layers.unwrap_or_default()
                ),
                (Some(t), _) => t,
                (None, Some(m)) => m,
                (None, None) => {
                    cfg.note(
                        "use_sliding_window is true but neither `layer_types` nor `max_window_layers` is given; using \
                         Qwen2Config's default max_window_layers 28",
                    );
                    (0..n_layers).map(|i| if i >= 28 { "sliding_attention" } else { "full_attention" }.to_string()).collect()
                }
            };
            Ok(types.iter().map(|t| (t == "sliding_attention").then_some(w)).collect())
        }
        _ => Ok(vec![None; n_layers]),
    }
}

pub(crate) fn from_gguf(g: Arc<GgufFile>, ctx: &LoadCtx) -> Result<Model> {
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
    if n_kv == 0 || !n_heads.is_multiple_of(n_kv) {
        bail!("{origin}: head_count {n_heads} is not a multiple of head_count_kv {n_kv}");
    }
    let rotary_dim = opt_u("rope.dimension_count")?.unwrap_or(hd);
    if rotary_dim > hd {
        bail!("{origin}: rope.dimension_count {rotary_dim} exceeds the head dim {hd}");
    }
    let mut notes = Vec::new();
    let mut note = |msg: String| {
        eprintln!("note: {origin}: {msg}");
        notes.push(format!("{origin}: {msg}"));
    };
    let theta = if g.get(&key("rope.freq_base")).is_some() {
        g.get_f32(&key("rope.freq_base"))? as f64
    } else {
        note(format!("no `{}`; using llama.cpp's default rope theta 10000", key("rope.freq_base")));
        10000.0
    };
    let inv_freq = gguf_inv_freq(&g, &key, theta, rotary_dim)?;
    let eps = g.get_f32(&key("attention.layer_norm_rms_epsilon"))? as f64;
    let tok_id = |k: &str| -> Result<Option<u32>> {
        if g.get(k).is_some() { Ok(Some(g.get_u64(k)? as u32)) } else { Ok(None) }
    };
    let qwen = arch_name == "qwen2";
    let n_layers = g.get_u64(&key("block_count"))? as usize;
    let arch = Arch {
        d,
        n_layers,
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
        inv_freq,
        max_pos: opt_u("context_length")?.unwrap_or(2048),
        windows: vec![opt_u("attention.sliding_window")?; n_layers],
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
    let dtypes = g.dtype_summary();
    let mut model = build(arch, g, names, ctx)?;
    model.info.weight_dtypes = dtypes;
    model.info.config_notes = notes;
    Ok(model)
}

/// GGUF rope frequencies `[rotary_dim / 2]`: θ from `{arch}.rope.freq_base`, then
/// `{arch}.rope.scaling.type` ("none" or "linear" with `rope.scaling.factor`; anything else is
/// refused), then the per-frequency divisors of a `rope_freqs.weight` tensor if present (llama.cpp
/// stores Llama 3.1's llama3 scaling this way: frequency i is divided by rope_freqs[i]).
fn gguf_inv_freq(g: &GgufFile, key: &dyn Fn(&str) -> String, theta: f64, rotary_dim: usize) -> Result<Vec<f32>> {
    let origin = g.origin();
    let mut inv = Rope::default_inv_freq(theta, rotary_dim);
    let kind = if g.get(&key("rope.scaling.type")).is_some() { g.get_str(&key("rope.scaling.type"))?.to_string() } else { "none".into() };
    let factor = if g.get(&key("rope.scaling.factor")).is_some() { Some(g.get_f32(&key("rope.scaling.factor"))? as f64) } else { None };
    match kind.as_str() {
        "none" => {
            if let Some(f) = factor.filter(|f| *f != 0.0 && *f != 1.0) {
                bail!("{origin}: `{}` is {f} but `{}` is none: unclear scaling, refused", key("rope.scaling.factor"), key("rope.scaling.type"));
            }
        }
        "linear" => {
            let f = factor.ok_or_else(|| anyhow::anyhow!("{origin}: linear rope scaling without `{}`", key("rope.scaling.factor")))?;
            if !(f.is_finite() && f > 0.0) {
                bail!("{origin}: `{}` = {f} should be a positive number", key("rope.scaling.factor"));
            }
            inv.iter_mut().for_each(|x| *x /= f as f32);
        }
        other => bail!(
            "{origin}: rope scaling type `{other}` (`{}`) is not supported (supported: none, linear, and llama3 via rope_freqs.weight)",
            key("rope.scaling.type")
        ),
    }
    let attn_factor = key("rope.scaling.attn_factor");
    if g.get(&attn_factor).is_some() && g.get_f32(&attn_factor)? != 1.0 {
        bail!("{origin}: `{attn_factor}` = {} (a YaRN-style rescaling of the rotary tables) is not supported", g.get_f32(&attn_factor)?);
    }
    if g.contains("rope_freqs.weight") {
        let n = inv.len();
        let ff: Vec<f32> = g.load_f32("rope_freqs.weight", &[n], &Device::Cpu)?.to_vec1()?;
        for (i, (x, f)) in inv.iter_mut().zip(&ff).enumerate() {
            if !(f.is_finite() && *f > 0.0) {
                bail!("{origin}: rope_freqs.weight[{i}] = {f} should be a positive number");
            }
            *x /= *f;
        }
    }
    Ok(inv)
}
