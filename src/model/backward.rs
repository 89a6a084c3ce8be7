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

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, D};

use super::blocks::{BlockActs, Keep, Layout};
use super::{Mask, Model, PassInput};

/// The tokens of one example whose log-likelihood is the loss: positions `start..start+len` of
/// batch row `row` (each predicted from the position before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub row: usize,
    pub start: usize,
    pub len: usize,
}

/// One input of [`Model::gate_gradients_group`]: the pass and its loss targets.
#[derive(Clone, Copy)]
pub struct GradInput<'a> {
    pub pass: PassInput<'a>,
    pub targets: &'a [Target],
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
    /// `$HEADROOM_ACTIVATION_BUDGET_MB`, else a quarter of the free host memory (at least
    /// 1 GiB), else 1 GiB. For a model on the host; [`Model::activation_policy`] picks by device.
    fn default() -> Self {
        Self::Auto { budget_bytes: activation_budget(true) }
    }
}

/// The keep budget: `$HEADROOM_ACTIVATION_BUDGET_MB`, else on the host a quarter of the free
/// memory (at least 1 GiB: what the fixed budget was), else 1 GiB (a GPU's free memory is not
/// read here). Keeping is faster than recomputing (no second forward of each block), so the
/// budget should be as large as memory allows: the default model at 4 x 256 needs ~1.2 GB, just
/// over the old fixed 1 GiB.
fn activation_budget(on_host: bool) -> usize {
    if let Some(mb) = std::env::var("HEADROOM_ACTIVATION_BUDGET_MB").ok().and_then(|v| v.parse::<usize>().ok()) {
        return mb << 20;
    }
    let free = if on_host { super::load::host_available_bytes() } else { None };
    free.map_or(1 << 30, |f| ((f / 4) as usize).max(1 << 30))
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
        self.gate_gradients_with(ids, layout, mask, targets, self.activation_policy())
    }

    /// Keep activations when they fit the budget for this model's devices, else recompute.
    /// Streamed models cap it at 2 GiB: their memory is also holding two blocks in flight.
    pub fn activation_policy(&self) -> Activations {
        let budget = activation_budget(self.blocks.devices().iter().all(|d| d.is_cpu()));
        Activations::Auto { budget_bytes: if self.blocks.is_streamed() { budget.min(2 << 30) } else { budget } }
    }

    pub fn gate_gradients_with(&self, ids: &Tensor, layout: &Layout, mask: Option<&Mask>, targets: &[Target], policy: Activations) -> Result<GateGrads> {
        let input = GradInput { pass: PassInput { ids, layout, mask }, targets };
        let mut out = self.gate_gradients_group(std::slice::from_ref(&input), policy)?;
        out.pop().context("internal: a group of one input gave no gradients")
    }

    /// [`Model::gate_gradients_with`] for several inputs at once, layer-major in both
    /// directions (the forward and the backward each visit every block once for the whole
    /// group): identical numbers to one call per input, and what makes importance affordable
    /// with streamed weights. The activation policy applies to the group as a whole.
    pub fn gate_gradients_group(&self, inputs: &[GradInput<'_>], policy: Activations) -> Result<Vec<GateGrads>> {
        let dims: Vec<(usize, usize)> = inputs.iter().map(|i| i.pass.ids.dims2()).collect::<candle_core::Result<_>>()?;
        let keep = match policy {
            Activations::Keep => true,
            Activations::Recompute => false,
            Activations::Auto { budget_bytes } => {
                dims.iter().map(|&(b, t)| self.block_activation_bytes(b, t)).sum::<usize>() * self.n_layers() <= budget_bytes
            }
        };
        let gates: Vec<Vec<Option<Tensor>>> = inputs.iter().map(|i| self.head_gates(i.pass.mask)).collect::<Result<_>>()?;
        // Forward through the model's one layer loop, keeping each block's activation record
        // or only its input (resid_pre), per input.
        let mut saved: Vec<Vec<Result<BlockActs, Tensor>>> = inputs.iter().map(|_| Vec::with_capacity(self.n_layers())).collect();
        let passes: Vec<PassInput<'_>> = inputs.iter().map(|i| i.pass).collect();
        // Recomputing blocks keep only resid_pre, so their forward need not keep the rest.
        let xs = self.forward_layers_group(&passes, if keep { Keep::FOR_BACKWARD } else { Keep::OUTPUT }, &mut |k, _, _, acts, _| {
            saved[k].push(if keep { Ok(acts) } else { Err(acts.resid_pre) });
            Ok(())
        })?;
        let mut dxs = Vec::with_capacity(inputs.len());
        let mut losses = Vec::with_capacity(inputs.len());
        for (input, x) in inputs.iter().zip(xs) {
            let (l, dx) = self.loss_and_input_grad(&x, input.pass.ids, input.targets)?;
            losses.push(l);
            dxs.push(dx);
        }
        // Blocks in reverse (streamed: materialised again, in reverse), dropping each block's
        // activations once used; the gradient crosses devices at placement boundaries.
        let n_in = inputs.len();
        let mut head_dot: Vec<Vec<Option<Tensor>>> = vec![vec![None; self.n_layers()]; n_in];
        let mut ffn_dot: Vec<Vec<Option<Tensor>>> = vec![vec![None; self.n_layers()]; n_in];
        let order: Vec<usize> = (0..self.n_layers()).rev().collect();
        let layouts: Vec<_> = inputs.iter().map(|i| self.layouts_per_device(i.pass.layout)).collect::<Result<_>>()?;
        self.blocks.for_each(&order, &mut |l, block| {
            let dev = self.blocks.device(l);
            for k in 0..n_in {
                let dy = dxs[k].to_device(dev)?;
                let (g, fg, lay) = (gates[k][l].as_ref(), self.ffn_gate(inputs[k].pass.mask, l), layouts[k].get(dev));
                let acts = match saved[k].pop() {
                    Some(Ok(acts)) => acts,
                    Some(Err(input)) => block.forward_acts(&input, lay, g, fg)?.1, // recompute
                    None => bail!("internal: missing saved activations for layer {l}"),
                };
                // The bottom block's input gradient is read by nothing (no gates below it).
                let (h, f) = if l == 0 {
                    block.gate_dots(&acts, fg, &dy)?
                } else {
                    let gr = block.backward(&acts, lay, g, fg, &dy)?;
                    dxs[k] = gr.dx;
                    (gr.head_dot, gr.ffn_dot)
                };
                head_dot[k][l] = Some(h);
                ffn_dot[k][l] = Some(f);
            }
            Ok(())
        })?;
        Ok(head_dot
            .into_iter()
            .zip(ffn_dot)
            .zip(losses)
            .map(|((h, f), losses)| GateGrads { head_dot: h.into_iter().flatten().collect(), ffn_dot: f.into_iter().flatten().collect(), losses })
            .collect())
    }

    /// The loss at the target tokens and its gradient with respect to the residual stream
    /// after the last block: x `[B, T, D]` -> (per-target losses, dx `[B, T, D]`).
    /// Logits are computed only at the positions that predict target tokens.
    fn loss_and_input_grad(&self, x: &Tensor, ids: &Tensor, targets: &[Target]) -> Result<(Vec<f64>, Tensor)> {
        let (b, t) = ids.dims2()?;
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
        let (losses, dlogits) = match super::kernels::nll_and_grad(&logits, &labels, &weights.iter().map(|&w| w as f32).collect::<Vec<_>>()) {
            // One pass per row: log p(label) and w (softmax - onehot), f32 logits only.
            Some(r) => {
                let (picked, dlogits) = r?;
                let mut k = 0;
                let mut losses = Vec::with_capacity(targets.len());
                for tg in targets {
                    losses.push(-picked[k..k + tg.len].iter().map(|&p| p as f64).sum::<f64>() / tg.len as f64);
                    k += tg.len;
                }
                (losses, dlogits)
            }
            None => self.nll_and_grad_composed(&logits, &Tensor::from_vec(labels, n, &hdev)?, &weights, targets)?,
        };
        // Back into the compute dtype at the unembedding (the backward of `.float()`).
        let dh = self.head.backward(&h, &dlogits.to_dtype(logits.dtype())?)?; // [N, D]
        let dx = Tensor::zeros((b * t, d), x.dtype(), &hdev)?.index_add(&rows_t, &dh, 0)?.reshape((b, t, d))?;
        Ok((losses, dx))
    }

    /// The loss rows composed from candle ops (any dtype or device): logits `[N, V]` ->
    /// (per-target losses, dlogits `[N, V]` in the wide dtype).
    fn nll_and_grad_composed(&self, logits: &Tensor, labels_t: &Tensor, weights: &[f64], targets: &[Target]) -> Result<(Vec<f64>, Tensor)> {
        let (n, hdev) = (labels_t.dim(0)?, logits.device());
        // log-softmax, the loss and its gradient in the wide dtype (f32 for bf16/f16), as
        // transformers computes its loss on `logits.float()`.
        let logp = super::log_softmax_last_dim(logits)?; // [N, V] wide
        let picked: Vec<f64> = logp.gather(&labels_t.unsqueeze(1)?, 1)?.squeeze(1)?.to_dtype(DType::F64)?.to_vec1()?;
        let mut losses = Vec::with_capacity(targets.len());
        let mut k = 0;
        for tg in targets {
            losses.push(-picked[k..k + tg.len].iter().sum::<f64>() / tg.len as f64);
            k += tg.len;
        }
        // loss = -sum_i w_i log softmax(logits_i)[y_i]  =>  dlogits = w (softmax - onehot)
        let w = Tensor::from_vec(weights.to_vec(), (n, 1), hdev)?.to_dtype(logp.dtype())?;
        let onehot = Tensor::zeros((n, logp.dim(1)?), logp.dtype(), hdev)?.scatter_add(
            &labels_t.unsqueeze(1)?,
            &Tensor::ones((n, 1), logp.dtype(), hdev)?,
            1,
        )?;
        let dlogits = (logp.exp()? - onehot)?.broadcast_mul(&w)?; // [N, V] wide
        Ok((losses, dlogits))
    }
}
