//! Token (+ learned position) embeddings.
//!
//! Shapes: B = batch, T = sequence length, D = hidden size (d_e), H = query heads,
//! KV = key/value heads (GQA: H % KV == 0), hd = head dim, F = FFN width, V = vocab.
//! Forward, the forward that keeps activations, and the backward sit side by side (llm.c
//! style); backwards compute activation gradients only, never weight gradients (backward.rs).

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

use super::layout::Layout;
use super::linear::Linear;
use super::conv;

/// Token (+ learned position) embeddings, optionally projected up (OPT-350m `project_in`).
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// `[V, E]` (E = D unless projected).
    pub tokens: Tensor,
    /// `[P + offset, D]`; OPT looks up row `pos + 2` (spec 2.2), GPT-2 row `pos`.
    pub positions: Option<(Tensor, usize)>,
    /// `[D, E]`, no bias.
    pub project_in: Option<Linear>,
}

impl Embeddings {
    /// ids `[B, T]` u32 -> `[B, T, D]`, learned positions taken from `layout`.
    pub fn forward(&self, ids: &Tensor, layout: &Layout) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let e = self.tokens.embedding(&ids.flatten_all()?)?; // [B*T, E]
        let e = match &self.project_in {
            Some(p) => p.forward(&e)?,
            None => e,
        };
        let d = e.dim(1)?;
        let e = e.reshape((b, t, d))?;
        let Some((table, offset)) = &self.positions else { return Ok(e) };
        let available = table.dims()[0] - offset;
        match layout {
            Layout::Causal => {
                if t > available {
                    bail!("sequence of {t} tokens exceeds the model's {available} learned positions");
                }
                Ok(e.broadcast_add(&table.narrow(0, *offset, t)?)?)
            }
            Layout::Custom { positions, max_position, .. } => {
                if *max_position > available {
                    bail!("position {max_position} exceeds the model's {available} learned positions");
                }
                let rows = (positions.flatten_all()? + *offset as f64)?.to_dtype(DType::U32)?;
                Ok((e + table.index_select(&rows, 0)?.reshape((b, t, d))?)?)
            }
        }
    }
    pub fn vocab_size(&self) -> usize {
        self.tokens.dims()[0]
    }
}

impl Embeddings {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(Self {
            tokens: conv(&self.tokens, dt)?,
            positions: self.positions.as_ref().map(|(t, o)| conv(t, dt).map(|t| (t, *o))).transpose()?,
            project_in: self.project_in.as_ref().map(|p| p.to_dtype(dt)).transpose()?,
        })
    }
}
