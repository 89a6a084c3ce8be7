//! How the tokens of a batch sit in positions and which keys each query may see: causal rows
//! or explicit positions + an additive bias (a shared prefix with one branch per option).
//!
//! Shapes: B = batch, T = sequence length, D = hidden size (d_e), H = query heads,
//! KV = key/value heads (GQA: H % KV == 0), hd = head dim, F = FFN width, V = vocab.
//! Forward, the forward that keeps activations, and the backward sit side by side (llm.c
//! style); backwards compute activation gradients only, never weight gradients (backward.rs).
//! Sequences in a batch are right-padded; attention is causal, so padding never reaches a real
//! token and needs no attention mask (the authors' eval path does the same, spec 2.2).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

/// How the tokens of a batch sit in positions, and which keys each query may see.
#[derive(Clone, Debug)]
pub enum Layout {
    /// Every row is one sequence at positions 0..T, causal (plus the model's sliding window).
    Causal,
    /// Explicit positions `[B, T]` (u32) and an additive attention bias `[B, 1, T, T]`
    /// (0 = visible, -inf = hidden), e.g. one shared prefix with a branch per answer option
    /// ([`Layout::tree`]). The bias already includes any sliding window.
    Custom { positions: Tensor, bias: Tensor, max_position: usize },
}

/// One row of a tree layout: a shared prefix followed by branches that each see the prefix and
/// themselves, never each other. Branch k's tokens sit at positions `prefix..prefix + len_k`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeRow {
    pub prefix: usize,
    pub branches: Vec<usize>,
}

impl TreeRow {
    pub fn len(&self) -> usize {
        self.prefix + self.branches.iter().sum::<usize>()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Per token: (position, branch index or None for the prefix).
    fn tokens(&self) -> Vec<(usize, Option<usize>)> {
        let mut v: Vec<(usize, Option<usize>)> = (0..self.prefix).map(|p| (p, None)).collect();
        for (k, &n) in self.branches.iter().enumerate() {
            v.extend((0..n).map(|j| (self.prefix + j, Some(k))));
        }
        v
    }
}

impl Layout {
    /// The same layout with its tensors on `device` (layers placed on another device).
    pub fn to_device(&self, device: &candle_core::Device) -> anyhow::Result<Self> {
        Ok(match self {
            Layout::Causal => Layout::Causal,
            Layout::Custom { positions, bias, max_position } => Layout::Custom {
                positions: positions.to_device(device)?,
                bias: bias.to_device(device)?,
                max_position: *max_position,
            },
        })
    }
}

impl Layout {
    /// A batch of tree rows padded to `t` tokens. Query i sees key j when j <= i (in row order),
    /// j is in the prefix or in i's own branch, and (with a window w) pos_i - pos_j < w.
    /// Padding tokens sit at position 0 and see only themselves (so no softmax row is empty).
    pub fn tree(rows: &[TreeRow], t: usize, window: Option<usize>, device: &Device) -> Result<Self> {
        let b = rows.len();
        let mut pos = vec![0u32; b * t];
        let mut bias = vec![f32::NEG_INFINITY; b * t * t];
        let mut max_position = 0;
        for (r, row) in rows.iter().enumerate() {
            let toks = row.tokens();
            if toks.len() > t {
                bail!("tree row of {} tokens does not fit in {t}", toks.len());
            }
            for (i, &(pi, bi)) in toks.iter().enumerate() {
                pos[r * t + i] = pi as u32;
                max_position = max_position.max(pi + 1);
                for (j, &(pj, bj)) in toks.iter().enumerate().take(i + 1) {
                    let same_tree = bj.is_none() || bj == bi;
                    let in_window = window.is_none_or(|w| pi - pj < w);
                    if same_tree && in_window {
                        bias[(r * t + i) * t + j] = 0.0;
                    }
                }
            }
            for i in toks.len()..t {
                bias[(r * t + i) * t + i] = 0.0;
            }
        }
        Ok(Layout::Custom {
            positions: Tensor::from_vec(pos, (b, t), device)?,
            bias: Tensor::from_vec(bias, (b, 1, t, t), device)?,
            max_position,
        })
    }
}

/// Additive causal mask `[T, T]`: 0 where key j is visible from query i, -inf elsewhere.
/// Visible: `j <= i` and, with a sliding window w, `i - j < w` (transformers' convention).
pub fn causal_mask(t: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; t * t];
    for i in 0..t {
        for j in 0..t {
            let visible = j <= i && window.is_none_or(|w| i - j < w);
            if !visible {
                m[i * t + j] = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Tensor::from_vec(m, (t, t), device)?)
}
