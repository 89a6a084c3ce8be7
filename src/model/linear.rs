//! `y = x W^T + b` and its input gradient.
//!
//! Shapes: B = batch, T = sequence length, D = hidden size (d_e), H = query heads,
//! KV = key/value heads (GQA: H % KV == 0), hd = head dim, F = FFN width, V = vocab.
//! Forward, the forward that keeps activations, and the backward sit side by side (llm.c
//! style); backwards compute activation gradients only, never weight gradients (backward.rs).

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::{conv, conv_opt};

/// `y = x W^T + b`, HF `nn.Linear` layout. weight `[out, in]`, bias `[out]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    /// x `[..., in]` -> `[..., out]`. Flattened to one 2-D matmul (one gemm call).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let n_in = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / n_in.max(1);
        let y = x.reshape((rows, n_in))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap_or(&mut 0) = self.out_features();
        Ok(y.reshape(out_dims)?)
    }
    pub fn n_params(&self) -> usize {
        self.weight.elem_count() + self.bias.as_ref().map_or(0, |b| b.elem_count())
    }
}

impl Linear {
    /// forward: y = x W^T + b.  backward: dx = dy W.  dy `[..., out]` -> `[..., in]`.
    pub fn backward(&self, dy: &Tensor) -> Result<Tensor> {
        let dims = dy.dims().to_vec();
        let rows = dy.elem_count() / self.out_features();
        let dx = dy.reshape((rows, self.out_features()))?.matmul(&self.weight)?;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = self.in_features();
        }
        Ok(dx.reshape(out)?)
    }
}

impl Linear {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(Self { weight: conv(&self.weight, dt)?, bias: conv_opt(&self.bias, dt)? })
    }
}
