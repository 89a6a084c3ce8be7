//! Activation-only backward: gradients of the loss with respect to activations and gates, never
//! with respect to a weight (docs/design.md, "The activation-only backward").
//!
//! Why by hand: candle's fused ops record no backward (gradients silently dropped) and its matmul
//! backward always builds weight gradients: a third more FLOPs and a second copy of the model.
//! Here each block's backward sits beside the forward line it differentiates (llm.c style), and
//! the model is walked block by block in reverse, each block's forward recomputed from its saved
//! input, so memory is one saved input per block plus one block's activations.
//!
//! Shapes as in blocks.rs: B batch, T tokens, D hidden, H query heads, KV kv heads, hd head dim.
//! Gate semantics match the forward: a head gate g multiplies o_h (pre output projection), an
//! FFN gate multiplies the branch output. The "dot" of a gate at token t is
//! <o_t, dL/d(g o)_t> (= dL/dg_t for a per-token gate), what importance scores sum.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};

use super::blocks::{Activation, Attention, AttnActs, Block, Layout, Linear, LmHead, Mlp, MlpActs, Norm, NormKind, Residual, Rope};
use super::{Mask, Model};

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

impl Norm {
    /// Backward of y = norm(x) * w (+ b), statistics recomputed from x. `[..., D]` both.
    ///   LayerNorm: xh = (x - mean) / s;  dx = (dxh - mean(dxh) - xh * mean(dxh * xh)) / s
    ///   RMSNorm:   xh = x / r;           dx = (dxh - xh * mean(dxh * xh)) / r
    /// with dxh = dy * w.
    pub fn backward(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)? as f64;
        let dxh = dy.broadcast_mul(&self.weight)?;
        Ok(match self.kind {
            NormKind::LayerNorm => {
                let mean = (x.sum_keepdim(D::Minus1)? / d)?;
                let xc = x.broadcast_sub(&mean)?;
                let s = ((xc.sqr()?.sum_keepdim(D::Minus1)? / d)? + self.eps)?.sqrt()?;
                let xh = xc.broadcast_div(&s)?;
                let m1 = (dxh.sum_keepdim(D::Minus1)? / d)?;
                let m2 = ((&dxh * &xh)?.sum_keepdim(D::Minus1)? / d)?;
                dxh.broadcast_sub(&m1)?.sub(&xh.broadcast_mul(&m2)?)?.broadcast_div(&s)?
            }
            NormKind::RmsNorm => {
                let r = ((x.sqr()?.sum_keepdim(D::Minus1)? / d)? + self.eps)?.sqrt()?;
                let xh = x.broadcast_div(&r)?;
                let m2 = ((&dxh * &xh)?.sum_keepdim(D::Minus1)? / d)?;
                dxh.sub(&xh.broadcast_mul(&m2)?)?.broadcast_div(&r)?
            }
        })
    }
}

impl Activation {
    /// dx = act'(x) * dy, x the pre-activation.
    pub fn backward(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
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
        Ok((deriv * dy)?)
    }
}

impl Mlp {
    /// Backward of the FFN branch (no norm) from its forward's activations: dy -> dx `[B, T, D]`.
    pub fn backward(&self, acts: &MlpActs, dy: &Tensor) -> Result<Tensor> {
        match self {
            // y = fc2(act(h)), h = fc1 x
            Self::Plain { fc1, fc2, act } => {
                let da = fc2.backward(dy)?;
                fc1.backward(&act.backward(&acts.h, &da)?)
            }
            // y = down(act(g) * u), g = gate x, u = up x
            Self::Gated { gate, up, down, act } => {
                let u = acts.u.as_ref().ok_or_else(|| anyhow::anyhow!("SwiGLU activations lack the up projection"))?;
                let da = down.backward(dy)?;
                let dg = act.backward(&acts.h, &(&da * u)?)?;
                let du = (act.forward(&acts.h)? * &da)?;
                Ok((gate.backward(&dg)? + up.backward(&du)?)?)
            }
        }
    }
}

impl Rope {
    /// The rotation is orthogonal: its backward is the rotation by -theta (sin negated).
    pub fn backward(&self, dy: &Tensor, layout: &Layout) -> Result<Tensor> {
        let inverse = Rope { sin: self.sin.neg()?, ..self.clone() };
        inverse.forward(dy, layout)
    }
}

/// `[B, KV*n_rep, T, hd]` -> `[B, KV, T, hd]`, summing each group (backward of repeat_kv).
fn sum_groups(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, t, hd) = x.dims4()?;
    Ok(x.reshape((b, h / n_rep, n_rep, t, hd))?.sum(2)?)
}

impl Attention {
    /// From the forward's activations and the upstream gradient dy `[B, T, D]` of the attention
    /// output: (dx `[B, T, D]`, head dots `[B, H, T]`).
    pub fn backward(&self, a: &AttnActs, layout: &Layout, head_gate: Option<&Tensor>, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = a.x.dims3()?;
        let (h, kv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let rep = h / kv;
        let split = |y: Tensor, n: usize| -> Result<Tensor> { Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?) };
        let merge = |y: Tensor, n: usize| -> Result<Tensor> { Ok(y.transpose(1, 2)?.reshape((b, t, n * hd))?) };
        // out = concat_h(g_h o_h) Wo + bo  =>  d(g o) = dy Wo
        let d_go = split(self.o.backward(dy)?, h)?; //   [B, H, T, hd]
        let head_dot = (&a.o * &d_go)?.sum(D::Minus1)?; // <o_t, d(g o)_t> = dL/dg_t   [B, H, T]
        let d_o = match head_gate {
            Some(g) => d_go.broadcast_mul(&g.to_dtype(d_go.dtype())?.reshape((1, h, 1, 1))?)?,
            None => d_go,
        };
        // o = A v  =>  dA = do v^T,  dv = A^T do
        let d_probs = d_o.matmul(&a.ve.t()?)?;
        let d_ve = a.probs.t()?.matmul(&d_o)?;
        // A = softmax(S)  =>  dS = A * (dA - rowsum(dA * A))   (masked entries have A = 0)
        let row = (&d_probs * &a.probs)?.sum_keepdim(D::Minus1)?;
        let d_scores = (&a.probs * d_probs.broadcast_sub(&row)?)?;
        // S = (q scale) k^T  =>  dq = dS k scale,  dk = dS^T (q scale)
        let mut d_q = (d_scores.matmul(&a.ke)? * self.scale)?;
        let d_ke = d_scores.t()?.matmul(&a.qs)?;
        // GQA: a kv head's gradient sums over the query heads that read it.
        let mut d_k = sum_groups(&d_ke, rep)?;
        let d_v = sum_groups(&d_ve, rep)?;
        if let Some(rope) = &self.rope {
            d_q = rope.backward(&d_q, layout)?; // q = rope(q)
            d_k = rope.backward(&d_k, layout)?;
        }
        // q, k, v = x W + b  =>  dx = dq Wq + dk Wk + dv Wv
        let dx = ((self.q.backward(&merge(d_q, h)?)? + self.k.backward(&merge(d_k, kv)?)?)? + self.v.backward(&merge(d_v, kv)?)?)?;
        Ok((dx, head_dot))
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

impl LmHead {
    /// h `[N, D]` (residual stream rows) and dlogits `[N, V]` -> dh `[N, D]`.
    pub fn backward(&self, h: &Tensor, dlogits: &Tensor) -> Result<Tensor> {
        // logits = z W_U^T  =>  dz = dlogits W_U
        let dz = dlogits.matmul(&self.unembed)?;
        // z = project_out(n(h))  =>  d n(h) = dz P
        let dz1 = match &self.project_out {
            Some(p) => p.backward(&dz)?,
            None => dz,
        };
        match &self.final_norm {
            Some(n) => n.backward(h, &dz1),
            None => Ok(dz1),
        }
    }
}

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
    /// Bytes of activations one block keeps for a B x T batch (f32 estimate).
    pub fn block_activation_bytes(&self, b: usize, t: usize) -> usize {
        let i = &self.info;
        let bt = b * t;
        let floats = bt * i.hidden * 4 // x, mid, f, attention input
            + bt * i.n_heads * i.head_dim * 4 // qs, ke, ve, o
            + b * i.n_heads * t * t // probs
            + bt * i.ffn_dim * 2; // pre-activations (gate + up for SwiGLU)
        floats * 4
    }

    /// One forward + activation-only backward. The loss is the sum over targets of each
    /// target's mean NLL (so every example is its own loss, whatever the batch holds).
    /// Logits are computed only at the positions that predict target tokens.
    pub fn gate_gradients(&self, ids: &Tensor, layout: &Layout, mask: Option<&Mask>, targets: &[Target]) -> Result<GateGrads> {
        self.gate_gradients_with(ids, layout, mask, targets, Activations::default())
    }

    pub fn gate_gradients_with(&self, ids: &Tensor, layout: &Layout, mask: Option<&Mask>, targets: &[Target], policy: Activations) -> Result<GateGrads> {
        let (b, t) = ids.dims2()?;
        if let Some(m) = mask {
            m.validate(self.n_layers(), self.n_heads())?;
        }
        let keep = match policy {
            Activations::Keep => true,
            Activations::Recompute => false,
            Activations::Auto { budget_bytes } => self.block_activation_bytes(b, t) * self.n_layers() <= budget_bytes,
        };
        let gates: Vec<Option<Tensor>> = (0..self.n_layers())
            .map(|l| match mask {
                Some(m) if !m.layer_heads_all_kept(l) => super::blocks::gate_tensor(&m.heads[l], &self.device).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        let ffn_gate = |l: usize| mask.map_or(1.0, |m| m.ffns[l]);
        // Forward, keeping each block's activations or only its input.
        let mut saved: Vec<Result<BlockActs, Tensor>> = Vec::with_capacity(self.n_layers());
        let mut x = self.embed.forward(ids, layout)?;
        for (l, block) in self.blocks.iter().enumerate() {
            if keep {
                let (next, acts) = block.forward_acts(&x, layout, gates[l].as_ref(), ffn_gate(l))?;
                saved.push(Ok(acts));
                x = next;
            } else {
                let next = block.forward(&x, layout, gates[l].as_ref(), ffn_gate(l), None)?;
                saved.push(Err(x));
                x = next;
            }
        }
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
        let rows_t = Tensor::from_vec(rows, n, &self.device)?;
        let h = x.reshape((b * t, d))?.index_select(&rows_t, 0)?; // [N, D]
        let logits = self.head.forward(&h)?; // [N, V]
        let logp = super::log_softmax_last_dim(&logits)?;
        let labels_t = Tensor::from_vec(labels, n, &self.device)?;
        let picked: Vec<f64> = logp.gather(&labels_t.unsqueeze(1)?, 1)?.squeeze(1)?.to_dtype(DType::F64)?.to_vec1()?;
        let mut losses = Vec::with_capacity(targets.len());
        let mut k = 0;
        for tg in targets {
            losses.push(-picked[k..k + tg.len].iter().sum::<f64>() / tg.len as f64);
            k += tg.len;
        }
        // loss = -sum_i w_i log softmax(logits_i)[y_i]  =>  dlogits = w (softmax - onehot)
        let w = Tensor::from_vec(weights, (n, 1), &self.device)?.to_dtype(logits.dtype())?;
        let onehot = Tensor::zeros((n, logits.dim(1)?), logits.dtype(), &self.device)?.scatter_add(
            &labels_t.unsqueeze(1)?,
            &Tensor::ones((n, 1), logits.dtype(), &self.device)?,
            1,
        )?;
        let dlogits = (logp.exp()? - onehot)?.broadcast_mul(&w)?;
        let dh = self.head.backward(&h, &dlogits)?; // [N, D]
        let mut dx = Tensor::zeros((b * t, d), x.dtype(), &self.device)?.index_add(&rows_t, &dh, 0)?.reshape((b, t, d))?;
        // Blocks in reverse, dropping each block's activations once used.
        let mut head_dot = vec![None; self.n_layers()];
        let mut ffn_dot = vec![None; self.n_layers()];
        for l in (0..self.n_layers()).rev() {
            let gr = match saved.pop() {
                Some(Ok(acts)) => self.blocks[l].backward(&acts, layout, gates[l].as_ref(), ffn_gate(l), &dx)?,
                Some(Err(input)) => self.blocks[l].backward_recompute(&input, layout, gates[l].as_ref(), ffn_gate(l), &dx)?,
                None => bail!("internal: missing saved activations for layer {l}"),
            };
            dx = gr.dx;
            head_dot[l] = Some(gr.head_dot);
            ffn_dot[l] = Some(gr.ffn_dot);
        }
        Ok(GateGrads {
            head_dot: head_dot.into_iter().flatten().collect(),
            ffn_dot: ffn_dot.into_iter().flatten().collect(),
            losses,
        })
    }
}
