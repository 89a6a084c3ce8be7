//! The FFN branch (plain or SwiGLU), without its norm.
//!
//! Shapes: B = batch, T = sequence length, D = hidden size (d_e), H = query heads,
//! KV = key/value heads (GQA: H % KV == 0), hd = head dim, F = FFN width, V = vocab.
//! Forward, the forward that keeps activations, and the backward sit side by side (llm.c
//! style); backwards compute activation gradients only, never weight gradients (backward.rs).

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::activation::Activation;
use super::kernels;
use super::linear::{backward_sum, Linear};

/// What the FFN backward reads (the `mlp` part of a block's [`BlockActs`](super::block::BlockActs),
/// TransformerLens's `mlp.hook_pre` / `mlp.hook_pre_linear`).
#[derive(Clone, Debug)]
pub struct MlpActs {
    /// The first projection's output `[B, T, F]`: `fc1 x`, or the gate projection `gate x` for
    /// SwiGLU (the activation's input).
    pub pre: Tensor,
    /// SwiGLU only: the up projection `up x` `[B, T, F]`.
    pub pre_linear: Option<Tensor>,
}

/// The FFN branch without its norm: `fc2(act(fc1 x))` or SwiGLU `down(act(gate x) * up x)`.
#[derive(Clone, Debug)]
pub enum Mlp {
    Plain { fc1: Linear, fc2: Linear, act: Activation },
    Gated { gate: Linear, up: Linear, down: Linear, act: Activation },
}

impl Mlp {
    /// x `[B, T, D]` -> `[B, T, D]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_acts(x)?.0)
    }

    /// The forward, also returning the pre-activations its backward needs.
    pub fn forward_acts(&self, x: &Tensor) -> Result<(Tensor, MlpActs)> {
        match self {
            // y = fc2(act(fc1 x))
            Self::Plain { fc1, fc2, act } => {
                let h = fc1.forward(x)?;
                let y = fc2.forward(&act.forward(&h)?)?;
                Ok((y, MlpActs { pre: h, pre_linear: None }))
            }
            // y = down(act(gate x) * up x)
            Self::Gated { gate, up, down, act } => {
                let g = gate.forward(x)?;
                let u = up.forward(x)?;
                let h = match kernels::glu_forward(*act, &g, &u) {
                    Some(h) => h?,
                    None => (act.forward(&g)? * &u)?,
                };
                let y = down.forward(&h)?;
                Ok((y, MlpActs { pre: g, pre_linear: Some(u) }))
            }
        }
    }
    pub fn activation(&self) -> Activation {
        match self {
            Self::Plain { act, .. } | Self::Gated { act, .. } => *act,
        }
    }
    pub fn width(&self) -> usize {
        match self {
            Self::Plain { fc1, .. } => fc1.out_features(),
            Self::Gated { up, .. } => up.out_features(),
        }
    }
    pub fn n_params(&self) -> usize {
        match self {
            Self::Plain { fc1, fc2, .. } => fc1.n_params() + fc2.n_params(),
            Self::Gated { gate, up, down, .. } => gate.n_params() + up.n_params() + down.n_params(),
        }
    }
}

impl Mlp {
    /// Backward of the FFN branch (no norm) from its forward's activations: dy -> dx `[B, T, D]`.
    pub fn backward(&self, acts: &MlpActs, dy: &Tensor) -> Result<Tensor> {
        match self {
            // y = fc2(act(h)), h = fc1 x
            Self::Plain { fc1, fc2, act } => {
                let da = fc2.backward(dy)?;
                let dh = match kernels::act_backward(*act, &acts.pre, &da) {
                    Some(dh) => dh?,
                    None => act.backward(&acts.pre, &da)?,
                };
                fc1.backward(&dh)
            }
            // y = down(act(g) * u), g = gate x, u = up x
            Self::Gated { gate, up, down, act } => {
                let u = acts.pre_linear.as_ref().ok_or_else(|| anyhow::anyhow!("SwiGLU activations lack the up projection"))?;
                let da = down.backward(dy)?;
                let (dg, du) = match kernels::glu_backward(*act, &acts.pre, u, &da) {
                    Some(r) => r?,
                    None => (act.backward(&acts.pre, &(&da * u)?)?, (act.forward(&acts.pre)? * &da)?),
                };
                backward_sum(&[(gate, &dg), (up, &du)]) // dx = dg W_gate + du W_up
            }
        }
    }
}

impl Mlp {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(match self {
            Self::Plain { fc1, fc2, act } => Self::Plain { fc1: fc1.to_dtype(dt)?, fc2: fc2.to_dtype(dt)?, act: *act },
            Self::Gated { gate, up, down, act } => {
                Self::Gated { gate: gate.to_dtype(dt)?, up: up.to_dtype(dt)?, down: down.to_dtype(dt)?, act: *act }
            }
        })
    }
}
