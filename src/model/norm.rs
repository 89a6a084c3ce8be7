//! LayerNorm / RMSNorm over the last dim and their input gradients (statistics recomputed).
//!
//! Shapes: B = batch, T = sequence length, D = hidden size (d_e), H = query heads,
//! KV = key/value heads (GQA: H % KV == 0), hd = head dim, F = FFN width, V = vocab.
//! Forward, the forward that keeps activations, and the backward sit side by side (llm.c
//! style); backwards compute activation gradients only, never weight gradients (backward.rs).

use anyhow::Result;
use candle_core::{DType, Tensor, D};

use super::{conv, conv_opt, kernels, widen};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) * w + b` (OPT, GPT-2, NeoX).
    LayerNorm,
    /// `x / sqrt(mean(x^2) + eps) * w` (Llama family).
    RmsNorm,
}

/// LayerNorm or RMSNorm over the last dim. weight/bias `[D]`.
#[derive(Clone, Debug)]
pub struct Norm {
    pub kind: NormKind,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl Norm {
    /// x `[..., D]` -> `[..., D]`, in x's dtype.
    ///
    /// Precision (docs/precision.md): the statistics always run in [`wide_dtype`] (f32 for
    /// bf16/f16 inputs). LayerNorm then scales and shifts in f32 too and rounds once (PyTorch's
    /// LayerNorm kernel accumulates and applies weight and bias in f32 for half inputs); RMSNorm
    /// rounds the normalized x back to the compute dtype and multiplies by the weight there
    /// (transformers' LlamaRMSNorm: `weight * hidden.to(input_dtype)`). For f32 and f64 every
    /// conversion below is a no-op.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = kernels::norm_forward(self.kind, x, &self.weight, self.bias.as_ref(), self.eps) {
            return y;
        }
        let dt = x.dtype();
        let x = &widen(x)?; // [..., D] in the wide dtype
        let d = x.dim(D::Minus1)? as f64;
        let normed = match self.kind {
            NormKind::LayerNorm => {
                let mean = (x.sum_keepdim(D::Minus1)? / d)?;
                let xc = x.broadcast_sub(&mean)?;
                let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / d)?;
                xc.broadcast_div(&(var + self.eps)?.sqrt()?)?
            }
            NormKind::RmsNorm => {
                let ms = (x.sqr()?.sum_keepdim(D::Minus1)? / d)?;
                x.broadcast_div(&(ms + self.eps)?.sqrt()?)?
            }
        };
        Ok(match self.kind {
            NormKind::LayerNorm => {
                let y = normed.broadcast_mul(&widen(&self.weight)?)?;
                match &self.bias {
                    Some(b) => y.broadcast_add(&widen(b)?)?,
                    None => y,
                }
                .to_dtype(dt)?
            }
            NormKind::RmsNorm => {
                let y = normed.to_dtype(dt)?.broadcast_mul(&self.weight)?;
                match &self.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
        })
    }
    pub fn n_params(&self) -> usize {
        self.weight.elem_count() + self.bias.as_ref().map_or(0, |b| b.elem_count())
    }
}

impl Norm {
    /// Backward of y = norm(x) * w (+ b), statistics recomputed from x. `[..., D]` both.
    ///   LayerNorm: xh = (x - mean) / s;  dx = (dxh - mean(dxh) - xh * mean(dxh * xh)) / s
    ///   RMSNorm:   xh = x / r;           dx = (dxh - xh * mean(dxh * xh)) / r
    /// with dxh = dy * w. Precision mirrors the forward (what autograd does to it in PyTorch):
    /// dxh is formed in f32 for LayerNorm and in the compute dtype for RMSNorm (then widened);
    /// everything after it runs in the wide dtype and dx is rounded once to dy's dtype.
    pub fn backward(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        if let Some(dx) = kernels::norm_backward(self.kind, x, &self.weight, dy, self.eps) {
            return dx;
        }
        let dt = dy.dtype();
        let x = &widen(x)?;
        let d = x.dim(D::Minus1)? as f64;
        let dxh = match self.kind {
            NormKind::LayerNorm => widen(dy)?.broadcast_mul(&widen(&self.weight)?)?,
            NormKind::RmsNorm => widen(&dy.broadcast_mul(&self.weight)?)?,
        };
        let dx = match self.kind {
            NormKind::LayerNorm => {
                let mean = (x.sum_keepdim(D::Minus1)? / d)?;
                let xc = x.broadcast_sub(&mean)?;
                let s = ((xc.sqr()?.sum_keepdim(D::Minus1)? / d)? + self.eps)?.sqrt()?;
                let xh = xc.broadcast_div(&s)?;
                let m1 = (dxh.sum_keepdim(D::Minus1)? / d)?;
                let m2 = ((&dxh * &xh)?.sum_keepdim(D::Minus1)? / d)?;
                dxh.broadcast_sub(&m1)?.sub(&xh.broadcast_mul(&m2)?)?.broadcast_div(&s)?
            }
            NormKind::RmsNorm => {
                let r = ((x.sqr()?.sum_keepdim(D::Minus1)? / d)? + self.eps)?.sqrt()?;
                let xh = x.broadcast_div(&r)?;
                let m2 = ((&dxh * &xh)?.sum_keepdim(D::Minus1)? / d)?;
                dxh.sub(&xh.broadcast_mul(&m2)?)?.broadcast_div(&r)?
            }
        };
        Ok(dx.to_dtype(dt)?)
    }
}

impl Norm {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(Self { kind: self.kind, weight: conv(&self.weight, dt)?, bias: conv_opt(&self.bias, dt)?, eps: self.eps })
    }
}
