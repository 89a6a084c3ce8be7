//! GPT-NeoX / Pythia (Black et al. 2022; Biderman et al. 2023).
//!
//! - `query_key_value` fuses q, k, v *per head*: its output viewed as `[H, 3, hd]`, i.e. rows
//!   `h*3*hd + [0, hd)` are head h's q, `+ [hd, 2hd)` its k, `+ [2hd, 3hd)` its v.
//! - Partial rotary: only the first `rotary_pct * hd` dims of each head rotate (rotate-half).
//! - Parallel residual by default: `x + attn(ln1 x) + mlp(ln2 x)`; sequential when
//!   `use_parallel_residual = false`.
//! - Untied `embed_out` unless `tie_word_embeddings`.

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use super::blocks::{Activation, Attention, Block, Embeddings, Linear, LmHead, Mlp, NormKind, Residual, Rope, RopeStyle};
use super::{check_heads, find_prefix, rope_config, Family, LoadCtx, Loader, Model, Parts};
use crate::formats::hf::ConfigJson;
use crate::model::weights::WeightSource;

pub(crate) fn from_hf(cfg: &ConfigJson, ws: Arc<dyn WeightSource>, ctx: &LoadCtx) -> Result<Model> {
    let d = cfg.usize("hidden_size")?;
    let n_layers = cfg.usize("num_hidden_layers")?;
    let n_heads = cfg.usize("num_attention_heads")?;
    let ffn = cfg.usize("intermediate_size")?;
    let vocab = cfg.usize("vocab_size")?;
    let max_pos = cfg.usize("max_position_embeddings")?;
    let eps = cfg.f64_or_noted("layer_norm_eps", 1e-5, "GPTNeoXConfig's")?;
    let act = Activation::from_hf(cfg.str_or_noted("hidden_act", "gelu", "GPTNeoXConfig's")?)?;
    // Absent flags mean the original (Pythia) architecture, as in GPTNeoXConfig.
    let parallel = cfg.bool_or("use_parallel_residual", true)?;
    let bias = cfg.bool_or("attention_bias", true)?;
    let tied = super::llama::tie_word_embeddings(cfg, ws.as_ref(), "embed_out.weight", false)?;
    // transformers 5 writes `rope_parameters` {rope_theta, partial_rotary_factor}; 4.x wrote
    // `rope_theta` / `partial_rotary_factor` or (older) `rotary_emb_base` / `rotary_pct`.
    // Disagreeing spellings are an error (rope_config::read).
    let rope_cfg = rope_config::read(cfg, &["rotary_emb_base"], &["rotary_pct"])?;
    let pct = match rope_cfg.partial_rotary_factor {
        Some(p) => p,
        None => {
            cfg.note("no rotary fraction (`rope_parameters.partial_rotary_factor`, `partial_rotary_factor`, `rotary_pct`); using GPTNeoXConfig's default 0.25");
            0.25
        }
    };
    check_heads(&cfg.path.display().to_string(), d, n_heads, n_heads)?;
    let hd = d / n_heads;
    let rotary_dim = (hd as f64 * pct) as usize; // transformers: int(head_size * partial_rotary_factor)
    if rotary_dim < 2 || !rotary_dim.is_multiple_of(2) {
        bail!(
            "{}: partial rotary factor {pct} of head dim {hd} gives {rotary_dim} rotary dims; expected an even number >= 2",
            cfg.path.display()
        );
    }
    let rope = Rope::new(
        RopeStyle::RotateHalf,
        rotary_dim,
        rope_cfg.theta,
        &rope_cfg.inv_freq(rotary_dim),
        max_pos.min(super::llama::MAX_ROPE_TABLE),
        &Device::Cpu, // each block takes its copy onto its device
    )?;

    let p = find_prefix(ws.as_ref(), &["gpt_neox.", ""], "embed_in.weight")?;
    let first = ctx.first_device().clone();
    let ld = ctx.loader(ws.as_ref(), &first);
    let last = ctx.last_device(n_layers);
    let hl = ctx.loader(ws.as_ref(), &last);
    let tokens = ld.tensor(&format!("{p}embed_in.weight"), &[vocab, d])?;
    let prefix = p.clone();
    let build_block = move |ld: &Loader<'_>, l: usize| -> Result<Block> {
        let lp = format!("{prefix}layers.{l}");
        let qkv = ld.linear(&format!("{lp}.attention.query_key_value"), 3 * d, d, bias)?;
        // Rows viewed as [H, 3, hd, D]: pick q (0), k (1) or v (2) of every head.
        let part = |i: usize| -> Result<Linear> {
            let w = qkv.weight.reshape((n_heads, 3, hd, d))?.narrow(1, i, 1)?.reshape((d, d))?.contiguous()?;
            let b = match &qkv.bias {
                Some(b) => Some(b.reshape((n_heads, 3, hd))?.narrow(1, i, 1)?.reshape(d)?.contiguous()?),
                None => None,
            };
            Ok(Linear::new(w, b))
        };
        Ok(Block {
            attn_norm: ld.norm(&format!("{lp}.input_layernorm"), NormKind::LayerNorm, d, eps, true)?,
            attn: Attention {
                q: part(0)?,
                k: part(1)?,
                v: part(2)?,
                o: ld.linear(&format!("{lp}.attention.dense"), d, d, bias)?,
                n_heads,
                n_kv_heads: n_heads,
                head_dim: hd,
                scale: (hd as f64).powf(-0.5),
                scale_queries: false,
                rope: Some(rope.to_device(ld.device)?),
                sliding_window: None,
            },
            ffn_norm: ld.norm(&format!("{lp}.post_attention_layernorm"), NormKind::LayerNorm, d, eps, true)?,
            mlp: Mlp::Plain {
                fc1: ld.linear(&format!("{lp}.mlp.dense_h_to_4h"), ffn, d, true)?,
                fc2: ld.linear(&format!("{lp}.mlp.dense_4h_to_h"), d, ffn, true)?,
                act,
            },
            residual: if parallel { Residual::Parallel } else { Residual::PreNorm },
        })
    };
    let unembed: Tensor = if tied { tokens.clone() } else { hl.tensor("embed_out.weight", &[vocab, d])? };
    let head = LmHead {
        final_norm: Some(hl.norm(&format!("{p}final_layer_norm"), NormKind::LayerNorm, d, eps, true)?),
        project_out: None,
        unembed,
        tied,
    };
    let mut model = Model::assemble(
        Parts {
            family: Family::NeoX,
            architecture: "gpt_neox".into(),
            format: "hf",
            embed: Embeddings { tokens, positions: None, project_in: None },
            build_block: Arc::new(build_block),
            n_layers,
            layer_windows: vec![None; n_layers],
            head,
            context_length: max_pos,
            bos_token_id: cfg.opt_usize("bos_token_id")?.map(|x| x as u32),
            eos_token_id: cfg.opt_usize("eos_token_id")?.map(|x| x as u32),
        },
        ws,
        ctx,
    )?;
    model.info.config_notes = cfg.finish("gpt_neox", &[])?;
    Ok(model)
}
