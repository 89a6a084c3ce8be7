//! OPT (Zhang et al. 2022), the paper's family (spec 2.1-2.2).
//!
//! - Learned positions looked up at row `pos + 2` (OPTLearnedPositionalEmbedding's offset).
//! - Pre-LN for 125m, 1.3b ... 66b; post-LN for 350m (`do_layer_norm_before = false`), which
//!   also has `project_in` (E -> D) / `project_out` (D -> E) around a smaller embedding
//!   (`word_embed_proj_dim` E = 512) and no final LayerNorm.
//! - q is scaled by hd^-0.5 after its bias; ReLU FFN; biases everywhere except project_in/out and
//!   the unembedding, which is tied to `embed_tokens`.
//! - vocab_size is 50272 in the matrices while the tokenizer has 50265 entries: logits keep all
//!   50272 (the authors' eval slices to 50265 before log-softmax; that is the evaluator's job).

use std::sync::Arc;

use anyhow::Result;

use super::blocks::{Activation, Attention, Block, Embeddings, LmHead, Mlp, NormKind, Residual};
use super::{check_heads, find_prefix, Family, LoadCtx, Loader, Model, Parts};
use crate::formats::hf::ConfigJson;
use crate::model::weights::WeightSource;

/// OPT looks up learned position `pos` at row `pos + 2`.
const POSITION_OFFSET: usize = 2;

pub(crate) fn from_hf(cfg: &ConfigJson, ws: Arc<dyn WeightSource>, ctx: &LoadCtx) -> Result<Model> {
    let d = cfg.usize("hidden_size")?;
    let n_layers = cfg.usize("num_hidden_layers")?;
    let n_heads = cfg.usize("num_attention_heads")?;
    let ffn = cfg.usize("ffn_dim")?;
    let vocab = cfg.usize("vocab_size")?;
    let max_pos = cfg.usize("max_position_embeddings")?;
    let proj = cfg.usize_or("word_embed_proj_dim", d)?;
    let pre_ln = cfg.bool_or("do_layer_norm_before", true)?;
    let remove_final_ln = cfg.bool_or("_remove_final_layer_norm", false)?;
    let bias = cfg.bool_or("enable_bias", true)?;
    let ln_affine = cfg.bool_or("layer_norm_elementwise_affine", true)?;
    let act = Activation::from_hf(cfg.str_or_noted("activation_function", "relu", "OPTConfig's")?)?;
    check_heads(&cfg.path.display().to_string(), d, n_heads, n_heads)?;
    let hd = d / n_heads;
    let eps = 1e-5; // OPT's LayerNorms use torch's default eps.

    let p = find_prefix(ws.as_ref(), &["model.decoder.", "decoder."], "embed_tokens.weight")?;
    // A LayerNorm without affine parameters is a weight of ones and no bias.
    let ln = move |ld: &Loader<'_>, name: &str| -> Result<super::blocks::Norm> {
        if ln_affine {
            ld.norm(name, NormKind::LayerNorm, d, eps, true)
        } else {
            Ok(super::blocks::Norm {
                kind: NormKind::LayerNorm,
                weight: candle_core::Tensor::ones(d, ld.dtype, ld.device)?,
                bias: None,
                eps,
            })
        }
    };
    let first = ctx.first_device().clone();
    let ld = ctx.loader(ws.as_ref(), &first);
    let last = ctx.last_device(n_layers);
    let hl = ctx.loader(ws.as_ref(), &last);

    let tokens = ld.tensor(&format!("{p}embed_tokens.weight"), &[vocab, proj])?;
    let positions = ld.tensor(&format!("{p}embed_positions.weight"), &[max_pos + POSITION_OFFSET, d])?;
    let (project_in, project_out) = if proj != d {
        (
            Some(ld.linear(&format!("{p}project_in"), d, proj, false)?),
            Some(hl.linear(&format!("{p}project_out"), proj, d, false)?),
        )
    } else {
        (None, None)
    };
    let prefix = p.clone();
    let build_block = move |ld: &Loader<'_>, l: usize| -> Result<Block> {
        let lp = format!("{prefix}layers.{l}");
        let attn = Attention {
            q: ld.linear(&format!("{lp}.self_attn.q_proj"), d, d, bias)?,
            k: ld.linear(&format!("{lp}.self_attn.k_proj"), d, d, bias)?,
            v: ld.linear(&format!("{lp}.self_attn.v_proj"), d, d, bias)?,
            o: ld.linear(&format!("{lp}.self_attn.out_proj"), d, d, bias)?,
            n_heads,
            n_kv_heads: n_heads,
            head_dim: hd,
            scale: (hd as f64).powf(-0.5),
            scale_queries: true,
            rope: None,
            sliding_window: None,
        };
        Ok(Block {
            attn_norm: ln(ld, &format!("{lp}.self_attn_layer_norm"))?,
            attn,
            ffn_norm: ln(ld, &format!("{lp}.final_layer_norm"))?,
            mlp: Mlp::Plain {
                fc1: ld.linear(&format!("{lp}.fc1"), ffn, d, bias)?,
                fc2: ld.linear(&format!("{lp}.fc2"), d, ffn, bias)?,
                act,
            },
            residual: if pre_ln { Residual::PreNorm } else { Residual::PostNorm },
        })
    };
    let final_norm = if pre_ln && !remove_final_ln { Some(ln(&hl, &format!("{p}final_layer_norm"))?) } else { None };
    // OPTForCausalLM's lm_head [vocab, E] shares embed_tokens unless tie_word_embeddings is
    // false, in which case the checkpoint's own `lm_head.weight` is the unembedding.
    let tied = super::llama::tie_word_embeddings(cfg, ws.as_ref(), "lm_head.weight", true)?;
    let unembed = if tied { tokens.clone() } else { hl.tensor("lm_head.weight", &[vocab, proj])? };
    let head = LmHead { final_norm, project_out, unembed, tied };
    let embed = Embeddings { tokens, positions: Some((positions, POSITION_OFFSET)), project_in };
    let mut model = Model::assemble(
        Parts {
            family: Family::Opt,
            architecture: "opt".into(),
            format: "hf",
            embed,
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
    model.info.config_notes = cfg.finish("opt", &[])?;
    Ok(model)
}
