//! `y = x W^T + b` and its input gradient.
//!
//! Shapes: B = batch, T = sequence length, D = hidden size (d_e), H = query heads,
//! KV = key/value heads (GQA: H % KV == 0), hd = head dim, F = FFN width, V = vocab.
//! Forward, the forward that keeps activations, and the backward sit side by side (llm.c
//! style); backwards compute activation gradients only, never weight gradients (backward.rs).

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::kernels::{self, Product};
use super::{conv, conv_opt, widen};

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
        let x2 = x.reshape((rows, n_in))?;
        let y = match &self.bias {
            // Half precision on the CPU: x W^T + b in f32, rounded once (PyTorch's addmm adds
            // the bias before its one rounding; rounding the product first and again after the
            // bias moves a bf16 model's logits by as much as the whole bf16-vs-f32 spread).
            Some(b) if widened_gemm(x) => (widen(&x2)?.matmul(&widen(&self.weight)?.t()?)?.broadcast_add(&widen(b)?)?).to_dtype(x.dtype())?,
            // f32 CPU: the bias rows written first and the product accumulated onto them by gemm.
            Some(b) => match kernels::linear_sum(&[Product { a: &x2, w: &self.weight, transpose_w: true }], Some(b)) {
                Some(y) => y?,
                None => matmul(&x2, &self.weight.t()?)?.broadcast_add(b)?,
            },
            None => matmul(&x2, &self.weight.t()?)?,
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
        let dx = matmul(&dy.reshape((rows, self.out_features()))?, &self.weight)?;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = self.in_features();
        }
        Ok(dx.reshape(out)?)
    }
}

/// `sum_i dy_i W_i`: the input gradient of several Linears that read the same input (q, k, v;
/// gate and up), `[..., in]`. On f32 CPU tensors one output accumulated by gemm
/// ([`kernels::linear_sum`]); else each backward and the adds.
pub fn backward_sum(terms: &[(&Linear, &Tensor)]) -> Result<Tensor> {
    let products: Vec<Product<'_>> = terms.iter().map(|(l, dy)| Product { a: dy, w: &l.weight, transpose_w: false }).collect();
    if let Some(dx) = kernels::linear_sum(&products, None) {
        return dx;
    }
    let mut sum: Option<Tensor> = None;
    for (l, dy) in terms {
        let dx = l.backward(dy)?;
        sum = Some(match sum {
            Some(s) => (s + dx)?,
            None => dx,
        });
    }
    sum.ok_or_else(|| anyhow::anyhow!("internal: backward_sum of no terms"))
}

/// Whether a matmul on `x` runs as an f32 gemm over widened operands: half-precision tensors on
/// the CPU. candle's CPU backend has no bf16 gemm kernel and widens both operands to f32
/// internally anyway (so this costs nothing extra there); for f16 this makes the accumulation
/// f32 whatever candle's f16 kernel does. On CUDA the native half gemm (cuBLAS, f32
/// accumulation, one rounding) is used as is, and a bias is added after its rounding.
fn widened_gemm(x: &Tensor) -> bool {
    matches!(x.dtype(), DType::BF16 | DType::F16) && x.device().is_cpu()
}

/// `a b` (batched like [`Tensor::matmul`]) in the operands' dtype, accumulated in f32 and
/// rounded once for bf16/f16 (PyTorch's CPU and CUDA gemms do the same). f32 and f64 run
/// candle's matmul unchanged.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if widened_gemm(a) {
        Ok(widen(a)?.matmul(&widen(b)?)?.to_dtype(a.dtype())?)
    } else {
        Ok(a.matmul(b)?)
    }
}

impl Linear {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(Self { weight: conv(&self.weight, dt)?, bias: conv_opt(&self.bias, dt)? })
    }
}
