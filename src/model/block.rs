//! One decoder layer: the residual wiring of attention and FFN (pre-norm, post-norm, parallel).
//!
//! Shapes: B = batch, T = sequence length, D = hidden size (d_e), H = query heads,
//! KV = key/value heads (GQA: H % KV == 0), hd = head dim, F = FFN width, V = vocab.
//! Forward, the forward that keeps activations, and the backward sit side by side (llm.c
//! style); backwards compute activation gradients only, never weight gradients (backward.rs).

use anyhow::Result;
use candle_core::{DType, Tensor, D};

use super::attention::{Attention, AttnActs, LayerCapture};
use super::layout::Layout;
use super::mlp::{Mlp, MlpActs};
use super::norm::Norm;

/// How a block wires its two branches to the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Residual {
    /// `x += attn(ln1 x); x += ffn(ln2 x)` (OPT pre-LN, GPT-2, Llama, NeoX sequential).
    PreNorm,
    /// `x = ln1(x + attn x); x = ln2(x + ffn x)` (OPT-350m). ln2 runs even when the FFN is
    /// removed: the authors' code applies `final_layer_norm` unconditionally (spec 2.2).
    PostNorm,
    /// `x = x + attn(ln1 x) + ffn(ln2 x)` (GPT-NeoX/Pythia `use_parallel_residual`).
    Parallel,
}

/// One decoder layer.
#[derive(Clone, Debug)]
pub struct Block {
    pub attn_norm: Norm,
    pub attn: Attention,
    pub ffn_norm: Norm,
    pub mlp: Mlp,
    pub residual: Residual,
}

impl Block {
    /// x `[B, T, D]` -> `[B, T, D]`. `head_gate` `[H]` (None = all heads kept);
    /// `ffn_gate` scales the FFN branch output; exactly 0 skips the branch (norm included).
    pub fn forward(&self, x: &Tensor, layout: &Layout, head_gate: Option<&Tensor>, ffn_gate: f32, capture: Option<&mut LayerCapture>) -> Result<Tensor> {
        let ffn = |inp: &Tensor| -> Result<Option<Tensor>> {
            if ffn_gate == 0.0 {
                return Ok(None);
            }
            let y = self.mlp.forward(inp)?;
            Ok(Some(if ffn_gate == 1.0 { y } else { (y * ffn_gate as f64)? }))
        };
        match self.residual {
            Residual::PreNorm => {
                let x = (x + self.attn.forward(&self.attn_norm.forward(x)?, layout, head_gate, capture)?)?;
                match ffn(&self.ffn_norm.forward(&x)?)? {
                    Some(f) => Ok((x + f)?),
                    None => Ok(x),
                }
            }
            Residual::PostNorm => {
                let x = self.attn_norm.forward(&(x + self.attn.forward(x, layout, head_gate, capture)?)?)?;
                let x = match ffn(&x)? {
                    Some(f) => (x + f)?,
                    None => x,
                };
                self.ffn_norm.forward(&x)
            }
            Residual::Parallel => {
                // Both branches read the block input x.
                let a = self.attn.forward(&self.attn_norm.forward(x)?, layout, head_gate, capture)?;
                let out = (x + a)?;
                match ffn(&self.ffn_norm.forward(x)?)? {
                    Some(f) => Ok((out + f)?),
                    None => Ok(out),
                }
            }
        }
    }
    pub fn n_params(&self) -> usize {
        self.attn_norm.n_params() + self.attn.n_params() + self.ffn_norm.n_params() + self.mlp.n_params()
    }
}

/// A block's input gradient and its gate dots.
pub struct BlockGrads {
    /// dL/dx of the block input `[B, T, D]`.
    pub dx: Tensor,
    /// Per head and token `[B, H, T]`.
    pub head_dot: Tensor,
    /// Per token `[B, T]`: <f_t, dL/d(g f)_t> for the FFN branch output f.
    pub ffn_dot: Tensor,
}

/// What a block's backward reads from its forward.
pub struct BlockActs {
    /// The block input `[B, T, D]`.
    pub x: Tensor,
    pub attn: AttnActs,
    pub mlp: MlpActs,
    /// The FFN branch output before its gate `[B, T, D]`.
    pub f: Tensor,
    /// PreNorm: x1 = x + attn (the FFN norm's input). PostNorm: z1 = x + attn (the attention
    /// norm's input). Parallel: unused (the block input).
    pub mid: Tensor,
    /// PostNorm only: z2 = y1 + g f (the FFN norm's input).
    pub z2: Option<Tensor>,
}

impl Block {
    /// The block forward keeping what its backward reads. Unlike [`Block::forward`], a removed
    /// FFN (gate 0) is still computed: its gate gradient is defined and wanted.
    pub fn forward_acts(&self, x: &Tensor, layout: &Layout, head_gate: Option<&Tensor>, ffn_gate: f32) -> Result<(Tensor, BlockActs)> {
        let g = ffn_gate as f64;
        Ok(match self.residual {
            Residual::PreNorm => {
                // x1 = x + attn(n1 x);  y = x1 + g mlp(n2 x1)
                let (a, attn) = self.attn.forward_acts(&self.attn_norm.forward(x)?, layout, head_gate, None)?;
                let x1 = (x + a)?;
                let (f, mlp) = self.mlp.forward_acts(&self.ffn_norm.forward(&x1)?)?;
                let y = (&x1 + (&f * g)?)?;
                (y, BlockActs { x: x.clone(), attn, mlp, f, mid: x1, z2: None })
            }
            Residual::PostNorm => {
                // z1 = x + attn(x); y1 = n1(z1); z2 = y1 + g mlp(y1); y = n2(z2)
                let (a, attn) = self.attn.forward_acts(x, layout, head_gate, None)?;
                let z1 = (x + a)?;
                let y1 = self.attn_norm.forward(&z1)?;
                let (f, mlp) = self.mlp.forward_acts(&y1)?;
                let z2 = (&y1 + (&f * g)?)?;
                let y = self.ffn_norm.forward(&z2)?;
                (y, BlockActs { x: x.clone(), attn, mlp, f, mid: z1, z2: Some(z2) })
            }
            Residual::Parallel => {
                // y = x + attn(n1 x) + g mlp(n2 x)
                let (a, attn) = self.attn.forward_acts(&self.attn_norm.forward(x)?, layout, head_gate, None)?;
                let (f, mlp) = self.mlp.forward_acts(&self.ffn_norm.forward(x)?)?;
                let y = ((x + a)? + (&f * g)?)?;
                (y, BlockActs { x: x.clone(), attn, mlp, f, mid: x.clone(), z2: None })
            }
        })
    }

    /// Back-propagates dy (gradient of the block output) through the block, from its forward's
    /// activations.
    pub fn backward(&self, acts: &BlockActs, layout: &Layout, head_gate: Option<&Tensor>, ffn_gate: f32, dy: &Tensor) -> Result<BlockGrads> {
        let g = ffn_gate as f64;
        let BlockActs { x, attn, mlp, f, mid, z2 } = acts;
        match self.residual {
            Residual::PreNorm => {
                let ffn_dot = (f * dy)?.sum(D::Minus1)?;
                let dn2 = self.mlp.backward(mlp, &(dy * g)?)?;
                let dx1 = (dy + self.ffn_norm.backward(mid, &dn2)?)?;
                let (dn1, head_dot) = self.attn.backward(attn, layout, head_gate, &dx1)?;
                let dx = (&dx1 + self.attn_norm.backward(x, &dn1)?)?;
                Ok(BlockGrads { dx, head_dot, ffn_dot })
            }
            Residual::PostNorm => {
                let z2 = z2.as_ref().ok_or_else(|| anyhow::anyhow!("post-norm activations lack z2"))?;
                let dz2 = self.ffn_norm.backward(z2, dy)?;
                let ffn_dot = (f * &dz2)?.sum(D::Minus1)?;
                let dy1 = (&dz2 + self.mlp.backward(mlp, &(&dz2 * g)?)?)?;
                let dz1 = self.attn_norm.backward(mid, &dy1)?;
                let (dxa, head_dot) = self.attn.backward(attn, layout, head_gate, &dz1)?;
                Ok(BlockGrads { dx: (dz1 + dxa)?, head_dot, ffn_dot })
            }
            Residual::Parallel => {
                let ffn_dot = (f * dy)?.sum(D::Minus1)?;
                let (dn1, head_dot) = self.attn.backward(attn, layout, head_gate, dy)?;
                let dn2 = self.mlp.backward(mlp, &(dy * g)?)?;
                let dx = ((dy + self.attn_norm.backward(x, &dn1)?)? + self.ffn_norm.backward(x, &dn2)?)?;
                Ok(BlockGrads { dx, head_dot, ffn_dot })
            }
        }
    }

    /// Recomputes the forward from the block input and back-propagates (the memory-lean path).
    pub fn backward_recompute(&self, x: &Tensor, layout: &Layout, head_gate: Option<&Tensor>, ffn_gate: f32, dy: &Tensor) -> Result<BlockGrads> {
        let (_, acts) = self.forward_acts(x, layout, head_gate, ffn_gate)?;
        self.backward(&acts, layout, head_gate, ffn_gate, dy)
    }
}

impl Block {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(Self {
            attn_norm: self.attn_norm.to_dtype(dt)?,
            attn: self.attn.to_dtype(dt)?,
            ffn_norm: self.ffn_norm.to_dtype(dt)?,
            mlp: self.mlp.to_dtype(dt)?,
            residual: self.residual,
        })
    }
}
