//! Element-wise activations (ReLU, GELU tanh/erf, SiLU) and their derivatives.
//!
//! Shapes: B = batch, T = sequence length, D = hidden size (d_e), H = query heads,
//! KV = key/value heads (GQA: H % KV == 0), hd = head dim, F = FFN width, V = vocab.
//! Forward, the forward that keeps activations, and the backward sit side by side (llm.c
//! style); backwards compute activation gradients only, never weight gradients (backward.rs).

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::widen;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    /// tanh approximation (HF `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    /// exact erf GELU (HF `gelu`).
    GeluErf,
    /// x * sigmoid(x) (HF `silu`, `swish`); used gated (SwiGLU) in the Llama family.
    Silu,
}

impl Activation {
    pub fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "relu" => Self::Relu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "gelu" => Self::GeluErf,
            "silu" | "swish" => Self::Silu,
            other => bail!(
                "unsupported activation `{other}` (supported: relu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, silu)"
            ),
        })
    }
    /// x `[...]` -> `[...]`, in x's dtype. Computed in the wide dtype (f32 for bf16/f16) and
    /// rounded once, as PyTorch's CPU and CUDA kernels do for half inputs (candle's own bf16
    /// SiLU would round after each of its three operations).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dt = x.dtype();
        let x = &widen(x)?;
        Ok(match self {
            Self::Relu => x.relu()?,
            Self::GeluTanh => x.gelu()?,
            Self::GeluErf => x.gelu_erf()?,
            Self::Silu => x.silu()?,
        }
        .to_dtype(dt)?)
    }
}

impl Activation {
    /// dx = act'(x) * dy, x the pre-activation. The derivative and the product run in the wide
    /// dtype and dx is rounded once to dy's dtype (PyTorch's activation backward kernels; in
    /// bf16, `1 - sigmoid(x)` alone would lose most of its bits).
    pub fn backward(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let dt = dy.dtype();
        let (x, dy) = (&widen(x)?, &widen(dy)?);
        let deriv = match self {
            // relu(x) = max(x, 0)
            Self::Relu => x.gt(0.0)?.to_dtype(x.dtype())?,
            // silu(x) = x s(x), s = sigmoid:  s (1 + x (1 - s))
            Self::Silu => {
                let s = (x.neg()?.exp()? + 1.0)?.recip()?;
                (&s * ((x * (1.0 - &s)?)? + 1.0)?)?
            }
            // gelu_tanh(x) = x/2 (1 + tanh u), u = c (x + 0.044715 x^3), c = sqrt(2/pi):
            //   (1 + tanh u)/2 + x/2 (1 - tanh^2 u) c (1 + 3 * 0.044715 x^2)
            Self::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let x2 = x.sqr()?;
                let u = ((x * (x2.affine(0.044715, 1.0))?)? * c)?;
                let th = u.tanh()?;
                let left = ((&th + 1.0)? * 0.5)?;
                let right = ((x * 0.5)? * ((1.0 - th.sqr()?)? * (x2.affine(3.0 * 0.044715 * c, c))?)?)?;
                (left + right)?
            }
            // gelu_erf(x) = x Phi(x):  Phi(x) + x phi(x)
            Self::GeluErf => {
                let phi_cdf = (((x / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5)?;
                let pdf = ((x.sqr()? * -0.5)?.exp()? / (2.0 * std::f64::consts::PI).sqrt())?;
                (phi_cdf + (x * pdf)?)?
            }
        };
        Ok((deriv * dy)?.to_dtype(dt)?)
    }
}
