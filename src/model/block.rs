//! One decoder layer: the residual wiring of attention and FFN (pre-norm, post-norm, parallel),
//! written once per direction: [`Block::run`] is the only forward (the plain forward, capture,
//! the activation-keeping forward of the gradient pass and induction's layer loop all go
//! through it), and [`Block::backward`] mirrors it line by line right below.
//!
//! Shapes: B = batch, T = sequence length, D = hidden size (d_e), H = query heads,
//! KV = key/value heads (GQA: H % KV == 0), hd = head dim, F = FFN width, V = vocab.
//! Backwards compute activation gradients only, never weight gradients (backward.rs).
//!
//! # The activation record
//! A block's forward yields one [`BlockActs`], its fields named by place after TransformerLens's
//! hook points (`resid_pre`, `ln1`, `attn.{q,k,v,pattern,z}`, `resid_mid`, `mlp.{pre,pre_linear}`,
//! `mlp_out`), holding what the backward, [`LayerCapture`] and the induction scores read and
//! nothing more (activation memory is what limits the gradient pass's batch).

use anyhow::{anyhow, Result};
use candle_core::{DType, Tensor, D};

use super::attention::{Attention, AttnActs};
use super::layout::Layout;
use super::mlp::{Mlp, MlpActs};
use super::norm::Norm;
use super::widen;

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

impl Residual {
    /// Whether the attention reads `ln1(x)` (pre-norm, parallel) or the raw block input x
    /// (post-norm: ln1 comes after the residual add, spec 9.16).
    pub fn norms_attention_input(self) -> bool {
        !matches!(self, Residual::PostNorm)
    }
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

/// One block's activations, named by place (TransformerLens's hook names). Every tensor is one
/// the forward computed anyway (reference-counted, so keeping one costs memory, not time).
#[derive(Clone, Debug)]
pub struct BlockActs {
    /// The block input `[B, T, D]`.
    pub resid_pre: Tensor,
    /// The attention's input `[B, T, D]`: `ln1(resid_pre)` (pre-norm, parallel), or
    /// `resid_pre` itself (post-norm, which has no norm before attention).
    pub ln1: Tensor,
    /// q, k, v, pattern, z: what the attention backward reads.
    pub attn: AttnActs,
    /// `resid_pre + attn_out` `[B, T, D]`: the FFN norm's input (pre-norm), ln1's input
    /// (post-norm), the partial sum before the FFN branch is added (parallel).
    pub resid_mid: Tensor,
    /// The FFN's pre-activations; None when a plain forward skipped a removed FFN (gate 0).
    pub mlp: Option<MlpActs>,
    /// The FFN branch output before its gate `[B, T, D]`; None when skipped.
    pub mlp_out: Option<Tensor>,
    /// Post-norm only: `ln1(resid_mid) + g mlp_out`, ln2's input `[B, T, D]` (the block output
    /// is `ln2` of it).
    pub resid_post_unnormed: Option<Tensor>,
}

/// What a block forward keeps in its record beyond what the next block reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keep {
    /// Compute an FFN whose gate is 0 (its gate gradient is defined and wanted) rather than skip it.
    pub removed_ffn: bool,
    /// The attention pattern `[B, H, T, T]`, which the backward, captures and induction read.
    pub pattern: bool,
}

impl Keep {
    /// A plain forward: only the output matters.
    pub const OUTPUT: Keep = Keep { removed_ffn: false, pattern: false };
    /// Everything the backward reads.
    pub const FOR_BACKWARD: Keep = Keep { removed_ffn: true, pattern: true };
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

/// What a forward pass can record per layer (for induction scores and checks); filled from the
/// block's [`BlockActs`].
#[derive(Clone, Debug, Default)]
pub struct LayerCapture {
    pub record_attn_probs: bool,
    pub record_head_outputs: bool,
    /// Post-softmax attention probabilities `[B, H, T, T]` (before the head gate): `attn.pattern`.
    pub attn_probs: Option<Tensor>,
    /// Per-head outputs after the head gate, concatenated: the input of the output projection,
    /// `[B, T, H*hd]` (head h occupies columns `h*hd..(h+1)*hd`): the gated `attn.z`.
    pub head_outputs: Option<Tensor>,
}

impl LayerCapture {
    /// Takes what was asked for from a block's record.
    pub fn record(&mut self, block: &Block, acts: &BlockActs, head_gate: Option<&Tensor>) -> Result<()> {
        if self.record_attn_probs {
            self.attn_probs = Some(acts.attn.pattern()?.clone());
        }
        if self.record_head_outputs {
            self.head_outputs = Some(block.attn.gated_heads(&acts.attn.z, head_gate)?);
        }
        Ok(())
    }
}

impl Block {
    /// x `[B, T, D]` -> `[B, T, D]`. `head_gate` `[H]` (None = all heads kept);
    /// `ffn_gate` scales the FFN branch output; exactly 0 skips the branch (norm included).
    pub fn forward(&self, x: &Tensor, layout: &Layout, head_gate: Option<&Tensor>, ffn_gate: f32, capture: Option<&mut LayerCapture>) -> Result<Tensor> {
        let keep = Keep { removed_ffn: false, pattern: capture.as_ref().is_some_and(|c| c.record_attn_probs) };
        let (y, acts) = self.run(x, layout, head_gate, ffn_gate, keep)?;
        if let Some(c) = capture {
            c.record(self, &acts, head_gate)?;
        }
        Ok(y)
    }

    /// The block forward keeping what its backward reads. Unlike [`Block::forward`], a removed
    /// FFN (gate 0) is still computed: its gate gradient is defined and wanted.
    pub fn forward_acts(&self, x: &Tensor, layout: &Layout, head_gate: Option<&Tensor>, ffn_gate: f32) -> Result<(Tensor, BlockActs)> {
        self.run(x, layout, head_gate, ffn_gate, Keep::FOR_BACKWARD)
    }

    /// The attention half every wiring shares: (ln1 = the attention input, attn_out `[B, T, D]`,
    /// the attention's record). Also induction's direct path, run on the embeddings alone.
    pub fn attention_half(&self, x: &Tensor, layout: &Layout, head_gate: Option<&Tensor>, keep_pattern: bool) -> Result<(Tensor, Tensor, AttnActs)> {
        let ln1 = if self.residual.norms_attention_input() { self.attn_norm.forward(x)? } else { x.clone() };
        let (attn_out, attn) = self.attn.forward_keeping(&ln1, layout, head_gate, keep_pattern)?;
        Ok((ln1, attn_out, attn))
    }

    /// The one forward: x -> (block output, activation record). `keep.removed_ffn` computes an
    /// FFN whose gate is 0 (the gradient pass wants its gate gradient); otherwise it is skipped.
    /// `keep.pattern` keeps the attention pattern in the record.
    /// A gate of 1 adds the branch output unscaled (bit-identical either way: f * 1 = f).
    pub fn run(&self, x: &Tensor, layout: &Layout, head_gate: Option<&Tensor>, ffn_gate: f32, keep: Keep) -> Result<(Tensor, BlockActs)> {
        // f = mlp(inp): (f, its pre-activations, g f), or None when the branch is skipped.
        let ffn = |inp: &Tensor| -> Result<Option<(Tensor, MlpActs, Tensor)>> {
            if ffn_gate == 0.0 && !keep.removed_ffn {
                return Ok(None);
            }
            let (f, acts) = self.mlp.forward_acts(inp)?;
            let gf = if ffn_gate == 1.0 { f.clone() } else { (&f * ffn_gate as f64)? };
            Ok(Some((f, acts, gf)))
        };
        let plus_ffn = |r: &Tensor, branch: &Option<(Tensor, MlpActs, Tensor)>| -> Result<Tensor> {
            Ok(match branch {
                Some((_, _, gf)) => (r + gf)?,
                None => r.clone(),
            })
        };
        // resid_mid = x + attn(ln1)   (ln1 = n1(x), or x for post-norm)
        let (ln1, attn_out, attn) = self.attention_half(x, layout, head_gate, keep.pattern)?;
        let resid_mid = (x + &attn_out)?;
        let (y, branch, resid_post_unnormed) = match self.residual {
            Residual::PreNorm => {
                // y = resid_mid + g mlp(n2 resid_mid)
                let branch = ffn(&self.ffn_norm.forward(&resid_mid)?)?;
                (plus_ffn(&resid_mid, &branch)?, branch, None)
            }
            Residual::PostNorm => {
                // y1 = n1(resid_mid);  z2 = y1 + g mlp(y1);  y = n2(z2)   (n2 runs even when the
                // FFN is removed: the authors' code applies final_layer_norm unconditionally)
                let y1 = self.attn_norm.forward(&resid_mid)?;
                let branch = ffn(&y1)?;
                let z2 = plus_ffn(&y1, &branch)?;
                (self.ffn_norm.forward(&z2)?, branch, Some(z2))
            }
            Residual::Parallel => {
                // y = (x + attn(n1 x)) + g mlp(n2 x): both branches read the block input. In
                // bf16/f16 the sum is taken in transformers' GPT-NeoX order, (g mlp + attn) + x,
                // since there the order decides the rounding; f32 keeps the order it always had.
                let branch = ffn(&self.ffn_norm.forward(x)?)?;
                let y = match &branch {
                    Some((_, _, gf)) if super::wide_dtype(x.dtype()) != x.dtype() => ((gf + &attn_out)? + x)?,
                    _ => plus_ffn(&resid_mid, &branch)?,
                };
                (y, branch, None)
            }
        };
        let (mlp_out, mlp) = match branch {
            Some((f, acts, _)) => (Some(f), Some(acts)),
            None => (None, None),
        };
        Ok((y, BlockActs { resid_pre: x.clone(), ln1, attn, resid_mid, mlp, mlp_out, resid_post_unnormed }))
    }

    /// Back-propagates dy (gradient of the block output) through [`Block::run`], from its
    /// activation record; each line differentiates the forward line of the same wiring above.
    pub fn backward(&self, acts: &BlockActs, layout: &Layout, head_gate: Option<&Tensor>, ffn_gate: f32, dy: &Tensor) -> Result<BlockGrads> {
        let (dx, head_dot, ffn_dot) = self.backward_to(acts, layout, head_gate, ffn_gate, dy, true)?;
        let dx = dx.ok_or_else(|| anyhow!("internal: the block backward gave no input gradient"))?;
        Ok(BlockGrads { dx, head_dot, ffn_dot })
    }

    /// The gate dots alone, (head dots `[B, H, T]`, FFN dots `[B, T]`), for a block whose input
    /// gradient nothing reads (the bottom block: the embeddings have no gates). The same lines
    /// as [`Block::backward`] (so the same numbers), stopping where the dots are known: the
    /// attention's backward below its head gates, the bottom norm and, for parallel blocks, the
    /// whole FFN backward are skipped. The head gates do not enter: each dot is taken before its
    /// gate multiplies (spec 2.3).
    pub fn gate_dots(&self, acts: &BlockActs, ffn_gate: f32, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, head_dot, ffn_dot) = self.backward_to(acts, &Layout::Causal, None, ffn_gate, dy, false)?;
        Ok((head_dot, ffn_dot))
    }

    /// The backward: (dx when `input_grad`, head dots, FFN dots). Without `input_grad` the
    /// attention stops at its head dots (so neither the layout nor the head gates are read) and
    /// nothing below it runs.
    fn backward_to(&self, acts: &BlockActs, layout: &Layout, head_gate: Option<&Tensor>, ffn_gate: f32, dy: &Tensor, input_grad: bool) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let g = ffn_gate as f64;
        let skipped = || anyhow!("internal: the block's FFN was skipped in this forward; the backward needs Block::forward_acts");
        let f = acts.mlp_out.as_ref().ok_or_else(skipped)?;
        let mlp = acts.mlp.as_ref().ok_or_else(skipped)?;
        let x = &acts.resid_pre;
        // The attention's backward from the gradient at its output: (its input gradient when
        // wanted, the head dots).
        let attn = |d: &Tensor| -> Result<(Option<Tensor>, Tensor)> {
            if input_grad {
                let (dx, dots) = self.attn.backward(&acts.attn, layout, head_gate, d)?;
                Ok((Some(dx), dots))
            } else {
                Ok((None, self.attn.head_dots(&acts.attn, d)?))
            }
        };
        match self.residual {
            Residual::PreNorm => {
                let ffn_dot = ffn_dot(f, dy)?;
                let dn2 = self.mlp.backward(mlp, &(dy * g)?)?;
                let dx1 = (dy + self.ffn_norm.backward(&acts.resid_mid, &dn2)?)?;
                let (dn1, head_dot) = attn(&dx1)?;
                let dx = dn1.map(|dn1| -> Result<Tensor> { Ok((&dx1 + self.attn_norm.backward(x, &dn1)?)?) }).transpose()?;
                Ok((dx, head_dot, ffn_dot))
            }
            Residual::PostNorm => {
                let z2 = acts.resid_post_unnormed.as_ref().ok_or_else(|| anyhow!("internal: post-norm activations lack ln2's input"))?;
                let dz2 = self.ffn_norm.backward(z2, dy)?;
                let ffn_dot = ffn_dot(f, &dz2)?;
                let dy1 = (&dz2 + self.mlp.backward(mlp, &(&dz2 * g)?)?)?;
                let dz1 = self.attn_norm.backward(&acts.resid_mid, &dy1)?;
                let (dxa, head_dot) = attn(&dz1)?;
                let dx = dxa.map(|dxa| -> Result<Tensor> { Ok((&dz1 + dxa)?) }).transpose()?;
                Ok((dx, head_dot, ffn_dot))
            }
            Residual::Parallel => {
                let ffn_dot = ffn_dot(f, dy)?;
                let (dn1, head_dot) = attn(dy)?;
                let dx = match dn1 {
                    Some(dn1) => {
                        let dn2 = self.mlp.backward(mlp, &(dy * g)?)?;
                        Some(((dy + self.attn_norm.backward(x, &dn1)?)? + self.ffn_norm.backward(x, &dn2)?)?)
                    }
                    None => None,
                };
                Ok((dx, head_dot, ffn_dot))
            }
        }
    }

    /// Recomputes the forward from the block input and back-propagates (the memory-lean path).
    pub fn backward_recompute(&self, x: &Tensor, layout: &Layout, head_gate: Option<&Tensor>, ffn_gate: f32, dy: &Tensor) -> Result<BlockGrads> {
        let (_, acts) = self.forward_acts(x, layout, head_gate, ffn_gate)?;
        self.backward(&acts, layout, head_gate, ffn_gate, dy)
    }

    pub fn n_params(&self) -> usize {
        self.attn_norm.n_params() + self.attn.n_params() + self.ffn_norm.n_params() + self.mlp.n_params()
    }
}

/// <f_t, dL/d(g f)_t> per token `[B, T]` from f and the gradient at the branch output
/// `[B, T, D]`: the FFN importance dot, formed in the wide dtype (f32 for bf16/f16) like the
/// head dots, never rounded to half precision.
fn ffn_dot(f: &Tensor, dy: &Tensor) -> Result<Tensor> {
    if let Some(d) = super::kernels::row_dots(f, dy) {
        return d;
    }
    Ok((widen(f)? * widen(dy)?)?.sum(D::Minus1)?)
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
