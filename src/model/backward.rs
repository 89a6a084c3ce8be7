//! Activation-only backward: gradients of the loss with respect to activations and gates, never
//! with respect to a weight (docs/design.md, "The activation-only backward").
//!
//! Why by hand: candle's fused ops record no backward (gradients silently dropped) and its matmul
//! backward always builds weight gradients: a third more FLOPs and a second copy of the model.
//! Here each block's backward sits beside the forward line it differentiates (llm.c style), and
//! the model is walked block by block in reverse, each block's forward recomputed from its saved
//! input, so memory is one saved input per block plus one block's activations.
//!
//! The per-component backwards live next to their forwards (linear.rs, norm.rs, activation.rs,
//! mlp.rs, rope.rs, attention.rs, block.rs, head.rs); this file holds the model-level pass.
//! Shapes: B batch, T tokens, D hidden, H query heads, KV kv heads, hd head dim.
//! Gate semantics match the forward: a head gate g multiplies o_h (pre output projection), an
//! FFN gate multiplies the branch output. The "dot" of a gate at token t is
//! <o_t, dL/d(g o)_t> (= dL/dg_t for a per-token gate), what importance scores sum.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};

use super::blocks::{BlockActs, Layout};
use super::{Mask, Model};

/// The tokens of one example whose log-likelihood is the loss: positions `start..start+len` of
/// batch row `row` (each predicted from the position before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub row: usize,
    pub start: usize,
    pub len: usize,
}

/// Everything one backward pass yields.
pub struct GateGrads {
    /// Per layer `[B, H, T]`.
    pub head_dot: Vec<Tensor>,
    /// Per layer `[B, T]`.
    pub ffn_dot: Vec<Tensor>,
    /// Per target: its loss -(1/len) sum log p (spec eq. 9).
    pub losses: Vec<f64>,
}

/// Whether the gradient pass keeps every block's activations from the forward (fastest) or
/// keeps only each block's input and recomputes its forward during the backward (memory: one
/// block's activations; what lets models larger than memory be streamed later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    Keep,
    Recompute,
    /// Keep when the estimate fits `budget_bytes`, else recompute.
    Auto { budget_bytes: usize },
}

impl Default for Activations {
    /// 1 GiB, or $HEADROOM_ACTIVATION_BUDGET_MB.
    fn default() -> Self {
        let mb = std::env::var("HEADROOM_ACTIVATION_BUDGET_MB").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(1024);
        Self::Auto { budget_bytes: mb << 20 }
    }
}

impl Model {
    /// Bytes of activations one block keeps for a B x T batch: everything in the compute dtype
    /// but the attention pattern, which is kept wide (f32 for bf16/f16; attention.rs).
    pub fn block_activation_bytes(&self, b: usize, t: usize) -> usize {
        let i = &self.info;
        let bt = b * t;
        let (size, wide) = match i.compute_dtype.as_str() {
            "bf16" | "f16" => (2, 4),
            "f64" => (8, 8),
            _ => (4, 4),
        };
        let values = bt * i.hidden * 4 // resid_pre, ln1, resid_mid, mlp_out
            + bt * i.n_heads * i.head_dim * 4 // attn.q, k, v, z
            + bt * i.ffn_dim * 2; // pre-activations (gate + up for SwiGLU)
        values * size + b * i.n_heads * t * t * wide // + attn.pattern
    }

    /// One forward + activation-only backward. The loss is the sum over targets of each
    /// target's mean NLL (so every example is its own loss, whatever the batch holds).
    /// Logits are computed only at the positions that predict target tokens.
    pub fn gate_gradients(&self, ids: &Tensor, layout: &Layout, mask: Option<&Mask>, targets: &[Target]) -> Result<GateGrads> {
        self.gate_gradients_with(ids, layout, mask, targets, Activations::default())
    }

    pub fn gate_gradients_with(&self, ids: &Tensor, layout: &Layout, mask: Option<&Mask>, targets: &[Target], policy: Activations) -> Result<GateGrads> {
        let (b, t) = ids.dims2()?;
        let keep = match policy {
            Activations::Keep => true,
            Activations::Recompute => false,
            Activations::Auto { budget_bytes } => self.block_activation_bytes(b, t) * self.n_layers() <= budget_bytes,
        };
        let gates = self.head_gates(mask)?;
        let ffn_gate = |l: usize| self.ffn_gate(mask, l);
        // Forward through the model's one layer loop, keeping each block's activation record
        // or only its input (resid_pre).
        let mut saved: Vec<Result<BlockActs, Tensor>> = Vec::with_capacity(self.n_layers());
        let x = self.forward_layers(ids, layout, mask, keep, &mut |_, _, acts, _| {
            saved.push(if keep { Ok(acts) } else { Err(acts.resid_pre) });
            Ok(())
        })?;
        // Loss rows: position p predicts token p + 1.
        let ids_host: Vec<Vec<u32>> = ids.to_vec2()?;
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        let mut weights = Vec::new();
        for tg in targets {
            if tg.len == 0 || tg.start == 0 || tg.start + tg.len > t || tg.row >= b {
                bail!("target {tg:?} does not fit a batch of {b} x {t} (a target needs a token before it)");
            }
            for p in tg.start - 1..tg.start + tg.len - 1 {
                rows.push((tg.row * t + p) as u32);
                labels.push(ids_host[tg.row][p + 1]);
                weights.push(1.0 / tg.len as f64);
            }
        }
        let n = rows.len();
        let d = x.dim(D::Minus1)?;
        // The loss runs where the head is (the last layer's device).
        let hdev = self.head_device().clone();
        let x = x.to_device(&hdev)?;
        let rows_t = Tensor::from_vec(rows, n, &hdev)?;
        let h = x.reshape((b * t, d))?.index_select(&rows_t, 0)?; // [N, D]
        let logits = self.head.forward(&h)?; // [N, V] in the compute dtype
        // log-softmax, the loss and its gradient in the wide dtype (f32 for bf16/f16), as
        // transformers computes its loss on `logits.float()`.
        let logp = super::log_softmax_last_dim(&logits)?; // [N, V] wide
        let labels_t = Tensor::from_vec(labels, n, &hdev)?;
        let picked: Vec<f64> = logp.gather(&labels_t.unsqueeze(1)?, 1)?.squeeze(1)?.to_dtype(DType::F64)?.to_vec1()?;
        let mut losses = Vec::with_capacity(targets.len());
        let mut k = 0;
        for tg in targets {
            losses.push(-picked[k..k + tg.len].iter().sum::<f64>() / tg.len as f64);
            k += tg.len;
        }
        // loss = -sum_i w_i log softmax(logits_i)[y_i]  =>  dlogits = w (softmax - onehot)
        let w = Tensor::from_vec(weights, (n, 1), &hdev)?.to_dtype(logp.dtype())?;
        let onehot = Tensor::zeros((n, logp.dim(1)?), logp.dtype(), &hdev)?.scatter_add(
            &labels_t.unsqueeze(1)?,
            &Tensor::ones((n, 1), logp.dtype(), &hdev)?,
            1,
        )?;
        let dlogits = (logp.exp()? - onehot)?.broadcast_mul(&w)?; // [N, V] wide
        // Back into the compute dtype at the unembedding (the backward of `.float()`).
        let dh = self.head.backward(&h, &dlogits.to_dtype(logits.dtype())?)?; // [N, D]
        let mut dx = Tensor::zeros((b * t, d), x.dtype(), &hdev)?.index_add(&rows_t, &dh, 0)?.reshape((b, t, d))?;
        // Blocks in reverse (streamed: materialised again, in reverse), dropping each block's
        // activations once used; the gradient crosses devices at placement boundaries.
        let mut head_dot = vec![None; self.n_layers()];
        let mut ffn_dot = vec![None; self.n_layers()];
        let order: Vec<usize> = (0..self.n_layers()).rev().collect();
        let layouts = self.layouts_per_device(layout)?;
        self.blocks.for_each(&order, &mut |l, block| {
            let dev = self.blocks.device(l);
            let dy = dx.to_device(dev)?;
            let gr = match saved.pop() {
                Some(Ok(acts)) => block.backward(&acts, layouts.get(dev), gates[l].as_ref(), ffn_gate(l), &dy)?,
                Some(Err(input)) => block.backward_recompute(&input, layouts.get(dev), gates[l].as_ref(), ffn_gate(l), &dy)?,
                None => bail!("internal: missing saved activations for layer {l}"),
            };
            dx = gr.dx;
            head_dot[l] = Some(gr.head_dot);
            ffn_dot[l] = Some(gr.ffn_dot);
            Ok(())
        })?;
        Ok(GateGrads {
            head_dot: head_dot.into_iter().flatten().collect(),
            ffn_dot: ffn_dot.into_iter().flatten().collect(),
            losses,
        })
    }
}
