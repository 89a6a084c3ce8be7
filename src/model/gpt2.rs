//! GPT-2 (Radford et al. 2019).
//!
//! - `Conv1D` layers store weights as `[in, out]` (the transpose of nn.Linear): transposed here.
//! - `c_attn` fuses q, k, v along its output: columns `[0, D)` q, `[D, 2D)` k, `[2D, 3D)` v.
//! - Learned positions (no offset), GELU tanh (`gelu_new`), pre-LN, tied unembedding.
//! - Scores scaled by hd^-0.5 when `scale_attn_weights` (default) and additionally by
//!   1/(layer+1) when `scale_attn_by_inverse_layer_idx`.

use std::sync::Arc;

use anyhow::Result;
use candle_core::Tensor;

use super::blocks::{Activation, Attention, Block, Embeddings, Linear, LmHead, Mlp, NormKind, Residual};
use super::{check_heads, find_prefix, Family, LoadCtx, Loader, Model, Parts};
use crate::formats::hf::ConfigJson;
use crate::model::weights::WeightSource;

pub(crate) fn from_hf(cfg: &ConfigJson, ws: Arc<dyn WeightSource>, ctx: &LoadCtx) -> Result<Model> {
    let d = cfg.usize("n_embd")?;
    let n_layers = cfg.usize("n_layer")?;
    let n_heads = cfg.usize("n_head")?;
    let vocab = cfg.usize("vocab_size")?;
    let max_pos = cfg.usize("n_positions")?;
    let inner = cfg.opt_usize("n_inner")?.unwrap_or(4 * d);
    let eps = cfg.f64_or_noted("layer_norm_epsilon", 1e-5, "GPT2Config's")?;
    let act = Activation::from_hf(cfg.str_or_noted("activation_function", "gelu_new", "GPT2Config's")?)?;
    let scale_weights = cfg.bool_or("scale_attn_weights", true)?;
    let scale_by_layer = cfg.bool_or("scale_attn_by_inverse_layer_idx", false)?;
    check_heads(&cfg.path.display().to_string(), d, n_heads, n_heads)?;
    let hd = d / n_heads;

    // GPT2LMHeadModel saves under `transformer.`; the original hub checkpoints have no prefix.
    let p = find_prefix(ws.as_ref(), &["transformer.", ""], "wte.weight")?;
    let first = ctx.first_device().clone();
    let ld = ctx.loader(ws.as_ref(), &first);
    let last = ctx.last_device(n_layers);
    let hl = ctx.loader(ws.as_ref(), &last);
    // Conv1D: weight [in, out] -> nn.Linear layout [out, in].
    let conv1d = |ld: &Loader<'_>, name: &str, inp: usize, out: usize| -> Result<(Tensor, Tensor)> {
        let w = ld.tensor(&format!("{name}.weight"), &[inp, out])?.t()?.contiguous()?;
        let b = ld.tensor(&format!("{name}.bias"), &[out])?;
        Ok((w, b))
    };
    let tokens = ld.tensor(&format!("{p}wte.weight"), &[vocab, d])?;
    let positions = ld.tensor(&format!("{p}wpe.weight"), &[max_pos, d])?;
    let prefix = p.clone();
    let build_block = move |ld: &Loader<'_>, l: usize| -> Result<Block> {
        let lp = format!("{prefix}h.{l}");
        let (w_qkv, b_qkv) = conv1d(ld, &format!("{lp}.attn.c_attn"), d, 3 * d)?; // [3D, D], [3D]
        let part = |i: usize| -> Result<Linear> {
            Ok(Linear::new(w_qkv.narrow(0, i * d, d)?.contiguous()?, Some(b_qkv.narrow(0, i * d, d)?.contiguous()?)))
        };
        let (wo, bo) = conv1d(ld, &format!("{lp}.attn.c_proj"), d, d)?;
        let (w1, b1) = conv1d(ld, &format!("{lp}.mlp.c_fc"), d, inner)?;
        let (w2, b2) = conv1d(ld, &format!("{lp}.mlp.c_proj"), inner, d)?;
        let mut scale = if scale_weights { (hd as f64).powf(-0.5) } else { 1.0 };
        if scale_by_layer {
            scale /= (l + 1) as f64;
        }
        Ok(Block {
            attn_norm: ld.norm(&format!("{lp}.ln_1"), NormKind::LayerNorm, d, eps, true)?,
            attn: Attention {
                q: part(0)?,
                k: part(1)?,
                v: part(2)?,
                o: Linear::new(wo, Some(bo)),
                n_heads,
                n_kv_heads: n_heads,
                head_dim: hd,
                scale,
                scale_queries: false,
                rope: None,
                sliding_window: None,
            },
            ffn_norm: ld.norm(&format!("{lp}.ln_2"), NormKind::LayerNorm, d, eps, true)?,
            mlp: Mlp::Plain { fc1: Linear::new(w1, Some(b1)), fc2: Linear::new(w2, Some(b2)), act },
            residual: Residual::PreNorm,
        })
    };
    // GPT2LMHeadModel's lm_head [vocab, D] shares wte unless tie_word_embeddings is false, in
    // which case the checkpoint's own `lm_head.weight` is the unembedding.
    let tied = super::llama::tie_word_embeddings(cfg, ws.as_ref(), "lm_head.weight", true)?;
    let unembed = if tied { tokens.clone() } else { hl.tensor("lm_head.weight", &[vocab, d])? };
    let head = LmHead {
        final_norm: Some(hl.norm(&format!("{p}ln_f"), NormKind::LayerNorm, d, eps, true)?),
        project_out: None,
        unembed,
        tied,
    };
    let mut model = Model::assemble(
        Parts {
            family: Family::Gpt2,
            architecture: "gpt2".into(),
            format: "hf",
            embed: Embeddings { tokens, positions: Some((positions, 0)), project_in: None },
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
    model.info.config_notes = cfg.finish("gpt2", &[])?;
    Ok(model)
}
