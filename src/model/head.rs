//! The LM head: final norm, optional projection, unembedding; and its input gradient.
//!
//! Shapes: B = batch, T = sequence length, D = hidden size (d_e), H = query heads,
//! KV = key/value heads (GQA: H % KV == 0), hd = head dim, F = FFN width, V = vocab.
//! Forward, the forward that keeps activations, and the backward sit side by side (llm.c
//! style); backwards compute activation gradients only, never weight gradients (backward.rs).

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::linear::Linear;
use super::norm::Norm;
use super::conv;

/// Final norm, optional down projection (OPT-350m `project_out`), unembedding (no bias).
#[derive(Clone, Debug)]
pub struct LmHead {
    pub final_norm: Option<Norm>,
    /// `[E, D]`, no bias.
    pub project_out: Option<Linear>,
    /// `[V, E]`; the same tensor as the token embedding when tied.
    pub unembed: Tensor,
    pub tied: bool,
}

impl LmHead {
    /// h `[..., D]` -> logits `[..., V]`.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let h = match &self.final_norm {
            Some(n) => n.forward(h)?,
            None => h.clone(),
        };
        let h = match &self.project_out {
            Some(p) => p.forward(&h)?,
            None => h,
        };
        Linear::new(self.unembed.clone(), None).forward(&h)
    }
}

impl LmHead {
    /// h `[N, D]` (residual stream rows) and dlogits `[N, V]` -> dh `[N, D]`.
    pub fn backward(&self, h: &Tensor, dlogits: &Tensor) -> Result<Tensor> {
        // logits = z W_U^T  =>  dz = dlogits W_U
        let dz = Linear::new(self.unembed.clone(), None).backward(dlogits)?;
        // z = project_out(n(h))  =>  d n(h) = dz P
        let dz1 = match &self.project_out {
            Some(p) => p.backward(&dz)?,
            None => dz,
        };
        match &self.final_norm {
            Some(n) => n.backward(h, &dz1),
            None => Ok(dz1),
        }
    }
}

impl LmHead {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(Self {
            final_norm: self.final_norm.as_ref().map(|n| n.to_dtype(dt)).transpose()?,
            project_out: self.project_out.as_ref().map(|p| p.to_dtype(dt)).transpose()?,
            unembed: conv(&self.unembed, dt)?,
            tied: self.tied,
        })
    }
    /// The head on `device` (placement: it runs where the last layer runs).
    pub fn to_device(&self, device: &candle_core::Device) -> Result<Self> {
        let mv = |t: &Tensor| t.to_device(device);
        Ok(Self {
            final_norm: self
                .final_norm
                .as_ref()
                .map(|n| -> Result<Norm> { Ok(Norm { weight: mv(&n.weight)?, bias: n.bias.as_ref().map(mv).transpose()?, ..n.clone() }) })
                .transpose()?,
            project_out: self
                .project_out
                .as_ref()
                .map(|p| -> Result<Linear> { Ok(Linear::new(mv(&p.weight)?, p.bias.as_ref().map(mv).transpose()?)) })
                .transpose()?,
            unembed: mv(&self.unembed)?,
            tied: self.tied,
        })
    }
}
