//! Rotary position embedding (both pairings, partial rotary) and its backward (the inverse rotation).
//!
//! Shapes: B = batch, T = sequence length, D = hidden size (d_e), H = query heads,
//! KV = key/value heads (GQA: H % KV == 0), hd = head dim, F = FFN width, V = vocab.
//! Forward, the forward that keeps activations, and the backward sit side by side (llm.c
//! style); backwards compute activation gradients only, never weight gradients (backward.rs).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, D};

use super::layout::Layout;
use super::conv;

/// Which dimensions RoPE pairs up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeStyle {
    /// Pairs (i, i + r/2): HF Llama/NeoX/Qwen2 weights (`rotate_half`).
    RotateHalf,
    /// Pairs (2i, 2i+1): GGUF llama weights, whose Q/K rows llama.cpp's converter permuted.
    AdjacentPairs,
}

/// Rotary position embedding on the first `rotary_dim` dims of each head; the rest pass through
/// (NeoX's partial rotary, `rotary_pct`). Tables `[max_pos, rotary_dim/2]`.
#[derive(Clone, Debug)]
pub struct Rope {
    pub style: RopeStyle,
    pub rotary_dim: usize,
    /// The base, for reporting (the frequencies may also carry a scaling).
    pub theta: f64,
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
}

impl Rope {
    /// `inv_freq[i]` for i < rotary_dim/2; angles are `pos * inv_freq` computed in f32 as
    /// transformers does, so long-context angles round the same way.
    pub fn new(style: RopeStyle, rotary_dim: usize, theta: f64, inv_freq: &[f32], max_pos: usize, device: &Device) -> Result<Self> {
        if !rotary_dim.is_multiple_of(2) || inv_freq.len() != rotary_dim / 2 {
            bail!("rotary dim {rotary_dim} must be even and match {} frequencies", inv_freq.len());
        }
        let half = rotary_dim / 2;
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for &f in inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            style,
            rotary_dim,
            theta,
            cos: Tensor::from_vec(cos, (max_pos, half), device)?,
            sin: Tensor::from_vec(sin, (max_pos, half), device)?,
        })
    }

    /// Standard frequencies `base^(-2i/rotary_dim)`, computed in f32 like transformers.
    pub fn default_inv_freq(base: f64, rotary_dim: usize) -> Vec<f32> {
        (0..rotary_dim / 2)
            .map(|i| 1.0f32 / (base as f32).powf((2 * i) as f32 / rotary_dim as f32))
            .collect()
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// x `[B, heads, T, hd]` -> same shape, rotated by each token's position in `layout`.
    pub fn forward(&self, x: &Tensor, layout: &Layout) -> Result<Tensor> {
        let (b, _h, t, hd) = x.dims4()?;
        let r = self.rotary_dim;
        let half = r / 2;
        // cos/sin: [T, r/2] (causal) or [B, 1, T, r/2] (custom); both broadcast over x's rows.
        let (cos, sin) = match layout {
            Layout::Causal => {
                if t > self.max_positions() {
                    bail!("sequence of {t} positions exceeds the model's rotary table of {}", self.max_positions());
                }
                (self.cos.narrow(0, 0, t)?, self.sin.narrow(0, 0, t)?)
            }
            Layout::Custom { positions, max_position, .. } => {
                if *max_position > self.max_positions() {
                    bail!("position {max_position} exceeds the model's rotary table of {}", self.max_positions());
                }
                let idx = positions.flatten_all()?;
                (
                    self.cos.index_select(&idx, 0)?.reshape((b, 1, t, half))?,
                    self.sin.index_select(&idx, 0)?.reshape((b, 1, t, half))?,
                )
            }
        };
        let x_rot = x.narrow(D::Minus1, 0, r)?;
        let rotated = match self.style {
            RopeStyle::RotateHalf => {
                let x1 = x_rot.narrow(D::Minus1, 0, half)?;
                let x2 = x_rot.narrow(D::Minus1, half, half)?;
                let o1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
                let o2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
                Tensor::cat(&[o1, o2], D::Minus1)?
            }
            RopeStyle::AdjacentPairs => {
                let dims = x_rot.dims().to_vec();
                let pairs = x_rot.reshape((dims[0], dims[1], dims[2], half, 2))?;
                let x0 = pairs.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
                let x1 = pairs.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
                let o0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
                let o1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
                Tensor::stack(&[o0, o1], D::Minus1)?.reshape(dims)?
            }
        };
        if r == hd {
            Ok(rotated)
        } else {
            Ok(Tensor::cat(&[rotated, x.narrow(D::Minus1, r, hd - r)?], D::Minus1)?)
        }
    }
}

impl Rope {
    /// The rotation as the fused head split/merge kernels take it (positions of a custom layout
    /// copied to the host: `[B * T]` u32, a few KB).
    pub(crate) fn rotation(&self, layout: &Layout) -> Result<super::kernels::Rotation<'_>> {
        let positions = match layout {
            Layout::Causal => None,
            Layout::Custom { positions, .. } => Some(positions.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?),
        };
        Ok(super::kernels::Rotation { cos: &self.cos, sin: &self.sin, rotary_dim: self.rotary_dim, rotate_half: self.style == RopeStyle::RotateHalf, positions })
    }
}

impl Rope {
    /// The rotation is orthogonal: its backward is the rotation by -theta (sin negated).
    pub fn backward(&self, dy: &Tensor, layout: &Layout) -> Result<Tensor> {
        let inverse = Rope { sin: self.sin.neg()?, ..self.clone() };
        inverse.forward(dy, layout)
    }
}

impl Rope {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(Self { style: self.style, rotary_dim: self.rotary_dim, theta: self.theta, cos: conv(&self.cos, dt)?, sin: conv(&self.sin, dt)? })
    }
    /// The tables on `device` (a block placed there; a clone when already there).
    pub fn to_device(&self, device: &candle_core::Device) -> Result<Self> {
        Ok(Self { cos: self.cos.to_device(device)?, sin: self.sin.to_device(device)?, ..self.clone() })
    }
}
