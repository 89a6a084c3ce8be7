//! Multi-head attention: RoPE, grouped-query heads, causal/sliding/tree masks, head gates.
//!
//! Shapes: B = batch, T = sequence length, D = hidden size (d_e), H = query heads,
//! KV = key/value heads (GQA: H % KV == 0), hd = head dim, F = FFN width, V = vocab.
//! Forward, the forward that keeps activations, and the backward sit side by side (llm.c
//! style); backwards compute activation gradients only, never weight gradients (backward.rs).

use anyhow::Result;
use candle_core::{DType, Tensor, D};

use super::layout::{causal_mask, Layout};
use super::kernels;
use super::linear::{backward_sum, matmul, Linear};
use super::rope::Rope;
use super::widen;

/// Numerically stable softmax over the last dim (rows fully masked never occur: the diagonal is
/// always attendable).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// Multi-head attention with optional RoPE, grouped-query heads and a sliding window.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q k^T (1/sqrt(hd), or GPT-2's extra 1/(layer+1)).
    pub scale: f64,
    /// Where the scale is applied in bf16/f16, as the family does in transformers: true scales
    /// q before the score matmul (OPT: `q_proj(x) * scaling`), false scales the scores after
    /// it (GPT-2, NeoX, Llama family: `matmul(q, k^T) * scaling`). In half precision this
    /// decides where the extra rounding falls; f32 and f64 always scale q first (as before).
    pub scale_queries: bool,
    pub rope: Option<Rope>,
    pub sliding_window: Option<usize>,
}

/// The attention's part of a block's activation record ([`BlockActs`](super::block::BlockActs)
/// `.attn`), named as TransformerLens's `attn.hook_q`, `hook_k`, `hook_v`, `hook_pattern`,
/// `hook_z`. Everything the attention backward reads, nothing more.
#[derive(Clone, Debug)]
pub struct AttnActs {
    /// Rotated queries `[B, H, T, hd]` as the score matmul read them: multiplied by the score
    /// scale, unless [`Attention::scales_scores`] (then unscaled, like TL's `q`).
    pub q: Tensor,
    /// Rotated keys and values `[B, KV, T, hd]`, never repeated to H heads: query head i reads
    /// kv head i / (H/KV) (transformers' repeat_kv) through the grouped matmuls (see
    /// [`grouped`]), which is the same arithmetic without the copies.
    pub k: Tensor,
    pub v: Tensor,
    /// Post-softmax attention probabilities `[B, H, T, T]` (row = query), before the head gate,
    /// in the wide dtype (f32 for bf16/f16 compute): the softmax's own output, which its
    /// backward, capture and the induction scores read ([`AttnActs::pattern`]). None when the
    /// forward was asked not to keep it (a plain forward: the tiled kernel then never writes
    /// the `[T, T]` rows out).
    pub pattern: Option<Tensor>,
    /// Per-head outputs `A_h v_h` before the head gate `[B, H, T, hd]`.
    pub z: Tensor,
}

impl AttnActs {
    /// The kept pattern `[B, H, T, T]`; an error when the forward did not keep it.
    pub fn pattern(&self) -> Result<&Tensor> {
        self.pattern.as_ref().ok_or_else(|| anyhow::anyhow!("internal: this forward did not keep the attention pattern (Keep::pattern)"))
    }

    /// The values as each query head reads them, `[B, H, T, hd]` (kv head h / (H/KV) repeated
    /// for its query heads, transformers' repeat_kv): a copy under GQA, for readers that index
    /// by query head (induction's copying scores), never in the forward or backward.
    pub fn values_per_query_head(&self, n_heads: usize) -> Result<Tensor> {
        let (b, kv, t, hd) = self.v.dims4()?;
        if kv == n_heads {
            return Ok(self.v.clone());
        }
        Ok(self.v.unsqueeze(2)?.expand((b, kv, n_heads / kv, t, hd))?.reshape((b, n_heads, t, hd))?)
    }
}

impl Attention {
    /// x `[B, T, D]` -> `[B, T, D]`.
    /// `head_gate` `[H]` multiplies each head's output o_h = A_h v_h before the output projection:
    /// 0 removes the head entirely (value bias included), the output bias stays (spec 2.3).
    /// With GQA the gate is per query head.
    pub fn forward(&self, x: &Tensor, layout: &Layout, head_gate: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.forward_keeping(x, layout, head_gate, false)?.0)
    }

    /// The forward, also returning the activations its backward (and capture) read. Holding
    /// them costs nothing extra: they are the forward's own intermediates (reference-counted).
    pub fn forward_acts(&self, x: &Tensor, layout: &Layout, head_gate: Option<&Tensor>) -> Result<(Tensor, AttnActs)> {
        self.forward_keeping(x, layout, head_gate, true)
    }

    /// [`Attention::forward_acts`], keeping the pattern only when `keep_pattern` (the tiled
    /// kernel then never writes it out; the composed path computes it and drops it).
    pub fn forward_keeping(&self, x: &Tensor, layout: &Layout, head_gate: Option<&Tensor>, keep_pattern: bool) -> Result<(Tensor, AttnActs)> {
        let (b, t, _) = x.dims3()?;
        let (h, kv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let rep = h / kv;
        let after = self.scales_scores(x.dtype());
        let rot = self.rope.as_ref().map(|r| r.rotation(layout)).transpose()?;
        // q = rope(x Wq + bq) * scale, k = rope(x Wk + bk), v = x Wv + bv, each split into heads
        // [B, heads, T, hd]: one fused pass each on f32 CPU tensors, else composed.
        let (q_lin, k_lin, v_lin) = (self.q.forward(x)?, self.k.forward(x)?, self.v.forward(x)?);
        let fused = match (after, &rot) {
            (false, rot) => match (
                kernels::split_heads(&q_lin, h, hd, rot.as_ref(), Some(self.scale)),
                kernels::split_heads(&k_lin, kv, hd, rot.as_ref(), None),
                kernels::split_heads(&v_lin, kv, hd, None, None),
            ) {
                (Some(q), Some(k), Some(v)) => Some((q?, k?, v?)),
                _ => None,
            },
            _ => None,
        };
        let (qs, k, v) = match fused {
            Some(qkv) => qkv,
            None => {
                // [B, T, heads*hd] -> [B, heads, T, hd]
                let split = |y: Tensor, n: usize| -> Result<Tensor> { Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?) };
                let (mut q, mut k, v) = (split(q_lin, h)?, split(k_lin, kv)?, split(v_lin, kv)?);
                if let Some(rope) = &self.rope {
                    q = rope.forward(&q, layout)?;
                    k = rope.forward(&k, layout)?;
                }
                (if after { q } else { scale_by(&q, self.scale)? }, k, v) // q * scale   [B, H, T, hd]
            }
        };
        let mask = self.row_mask(layout);
        // f32 CPU: the tiled kernel computes the scores, softmax and A v block by block, never
        // the keys above the diagonal (kernels/attention.rs).
        if let Some(r) = (!after).then(|| kernels::causal_attention(&qs, &k, &v, mask, keep_pattern)).flatten() {
            let (pattern, o) = r?;
            let y = self.o.forward(&self.gated_heads(&o, head_gate)?)?;
            return Ok((y, AttnActs { q: qs, k, v, pattern, z: o }));
        }
        // The score matmul runs in the compute dtype; the scores are then widened (f32 for
        // bf16/f16) before the bias and the softmax, as transformers' eager attention does
        // (`softmax(..., dtype=float32)`): a half-precision softmax over long rows loses the
        // small probabilities. The 0 / -inf bias is f32 and exact in any dtype.
        let raw = ungroup(&matmul(&grouped(&qs, rep)?, &k.t()?)?, rep)?; // q k^T   [B, H, T, T]
        let probs = match (!after).then(|| kernels::masked_softmax(&raw, mask)).flatten() {
            Some(p) => p?, // A = softmax(S + bias), one pass per row
            None => {
                let scores = widen(&if after { scale_by(&raw, self.scale)? } else { raw })?; // S = q k^T * scale + bias
                let scores = match layout {
                    Layout::Causal => scores.broadcast_add(&causal_mask(t, self.sliding_window, x.device())?.to_dtype(scores.dtype())?)?,
                    Layout::Custom { bias, .. } => scores.broadcast_add(&bias.to_dtype(scores.dtype())?)?,
                };
                softmax_last_dim(&scores)? // A = softmax(S), wide   [B, H, T, T]
            }
        };
        // A is rounded to the compute dtype for the value matmul (transformers: `.to(query.dtype)`).
        let o = ungroup(&matmul(&grouped(&probs.to_dtype(x.dtype())?, rep)?, &v)?, rep)?; // o = A v   [B, H, T, hd]
        let og = self.gated_heads(&o, head_gate)?; // [B, T, H*hd]
        let y = self.o.forward(&og)?; // out = concat_h(g_h o_h) Wo + bo
        Ok((y, AttnActs { q: qs, k, v, pattern: keep_pattern.then_some(probs), z: o }))
    }

    /// Which keys each query row sees, as the fused kernels take it.
    fn row_mask<'a>(&self, layout: &'a Layout) -> kernels::RowMask<'a> {
        match layout {
            Layout::Causal => kernels::RowMask::Causal { window: self.sliding_window },
            Layout::Custom { bias, .. } => kernels::RowMask::Bias(bias),
        }
    }

    /// Per-head outputs z `[B, H, T, hd]` times the head gate, concatenated: the input of the
    /// output projection `[B, T, H*hd]` (head h occupies columns `h*hd..(h+1)*hd`).
    pub fn gated_heads(&self, z: &Tensor, head_gate: Option<&Tensor>) -> Result<Tensor> {
        let (b, h, t, hd) = z.dims4()?;
        let og = match head_gate {
            Some(g) => z.broadcast_mul(&g.to_dtype(z.dtype())?.reshape((1, h, 1, 1))?)?,
            None => z.clone(),
        };
        if let Some(m) = kernels::merge_heads(&og, None, None) {
            return m;
        }
        Ok(og.transpose(1, 2)?.reshape((b, t, h * hd))?)
    }

    pub fn n_params(&self) -> usize {
        self.q.n_params() + self.k.n_params() + self.v.n_params() + self.o.n_params()
    }

    /// Whether, in `dt`, the scale multiplies the scores rather than q: only in bf16/f16 and
    /// only for families that do so ([`Attention::scale_queries`] false).
    pub fn scales_scores(&self, dt: DType) -> bool {
        !self.scale_queries && super::wide_dtype(dt) != dt
    }
}

/// `x * s` for a scalar s, rounded once to x's dtype. For bf16/f16 the product is formed in f32:
/// candle's affine would first round s itself to the half type (1/sqrt(8) is off by 1e-4 in
/// f16), where PyTorch multiplies by the f32 scalar. f32 and f64 multiply as before.
fn scale_by(x: &Tensor, s: f64) -> Result<Tensor> {
    if super::wide_dtype(x.dtype()) == x.dtype() {
        Ok((x * s)?)
    } else {
        Ok((widen(x)? * s)?.to_dtype(x.dtype())?)
    }
}

/// `[B, H, T, n]` -> `[B, KV, rep*T, n]` (H = KV * rep): the query heads that share a kv head
/// stacked along the rows, so one matmul per kv head serves its whole group and K/V are never
/// repeated. A free reshape: the heads of a group are adjacent in a contiguous tensor.
fn grouped(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, t, n) = x.dims4()?;
    Ok(x.contiguous()?.reshape((b, h / rep, rep * t, n))?)
}

/// `[B, KV, rep*T, n]` -> `[B, H, T, n]`: the inverse of [`grouped`].
fn ungroup(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, rt, n) = x.dims4()?;
    Ok(x.reshape((b, kv * rep, rt / rep, n))?)
}

impl Attention {
    /// From the forward's activations and the upstream gradient dy `[B, T, D]` of the attention
    /// output: (dx `[B, T, D]`, head dots `[B, H, T]`).
    pub fn backward(&self, a: &AttnActs, layout: &Layout, head_gate: Option<&Tensor>, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = dy.dims3()?;
        let (h, kv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let dt = dy.dtype();
        let (d_go, head_dot) = self.gated_heads_grad(a, dy)?;
        let d_o = match head_gate {
            Some(g) => d_go.broadcast_mul(&g.to_dtype(dt)?.reshape((1, h, 1, 1))?)?,
            None => d_go,
        };
        let after = self.scales_scores(dt);
        let pattern = a.pattern()?;
        let tiled = (!after).then(|| kernels::causal_attention_backward(pattern, &a.q, &a.k, &a.v, &d_o, self.row_mask(layout))).flatten();
        let (d_q, d_k, d_v) = match tiled {
            Some(g) => g?, // the tiled kernel: the same products on the visible keys only
            None => self.scores_backward(a, &d_o, after)?,
        };
        // q = rope(x Wq + bq) scale, k = rope(x Wk + bk): scale, rotate back by -theta and merge
        // the heads to [B, T, heads*hd], fused on f32 CPU tensors.
        let rot = self.rope.as_ref().map(|r| r.rotation(layout)).transpose()?;
        let fused = match (
            kernels::merge_heads(&d_q, rot.as_ref(), (!after).then_some(self.scale)),
            kernels::merge_heads(&d_k, rot.as_ref(), None),
            kernels::merge_heads(&d_v, None, None),
        ) {
            (Some(q), Some(k), Some(v)) => Some((q?, k?, v?)),
            _ => None,
        };
        let (d_q, d_k, d_v) = match fused {
            Some(g) => g,
            None => {
                let merge = |y: Tensor, n: usize| -> Result<Tensor> { Ok(y.transpose(1, 2)?.reshape((b, t, n * hd))?) };
                let mut d_q = if after { d_q } else { scale_by(&d_q, self.scale)? };
                let mut d_k = d_k;
                if let Some(rope) = &self.rope {
                    d_q = rope.backward(&d_q, layout)?; // q = rope(q)
                    d_k = rope.backward(&d_k, layout)?;
                }
                (merge(d_q, h)?, merge(d_k, kv)?, merge(d_v, kv)?)
            }
        };
        // q, k, v = x W + b  =>  dx = dq Wq + dk Wk + dv Wv
        let dx = backward_sum(&[(&self.q, &d_q), (&self.k, &d_k), (&self.v, &d_v)])?;
        Ok((dx, head_dot))
    }
}

impl Attention {
    /// The head dots alone `[B, H, T]` (what importance reads from the bottom layer, whose input
    /// gradient nothing needs): the backward up to the head gates, no further.
    pub fn head_dots(&self, a: &AttnActs, dy: &Tensor) -> Result<Tensor> {
        Ok(self.gated_heads_grad(a, dy)?.1)
    }

    /// dy `[B, T, D]` -> (d(g o) `[B, H, T, hd]`, the head dots `[B, H, T]`).
    fn gated_heads_grad(&self, a: &AttnActs, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = dy.dims3()?;
        let (h, hd) = (self.n_heads, self.head_dim);
        // out = concat_h(g_h o_h) Wo + bo  =>  d(g o) = dy Wo
        let d_go = self.o.backward(dy)?;
        let d_go = match kernels::split_heads(&d_go, h, hd, None, None) {
            Some(s) => s?,
            None => d_go.reshape((b, t, h, hd))?.transpose(1, 2)?.contiguous()?,
        }; // [B, H, T, hd]
        // <o_t, d(g o)_t> = dL/dg_t   [B, H, T]: the importance dot, products and the sum over
        // hd in the wide dtype (f32 for bf16/f16), never rounded to half precision.
        let head_dot = match kernels::row_dots(&a.z, &d_go) {
            Some(d) => d?,
            None => (widen(&a.z)? * widen(&d_go)?)?.sum(D::Minus1)?,
        };
        Ok((d_go, head_dot))
    }

    /// The composed backward from d_o `[B, H, T, hd]` (the gated heads' gradient) to
    /// (dq `[B, H, T, hd]`, dk and dv `[B, KV, T, hd]`), dq and dk before the scale and RoPE.
    fn scores_backward(&self, a: &AttnActs, d_o: &Tensor, after: bool) -> Result<(Tensor, Tensor, Tensor)> {
        let dt = d_o.dtype();
        let rep = self.n_heads / self.n_kv_heads;
        // o = A v  =>  dA = do v^T,  dv = A^T do   (matmuls in the compute dtype, A rounded to
        // it as in the forward; grouped, so dv sums over the query heads of its kv head)
        let d_o_g = grouped(d_o, rep)?; // [B, KV, rep*T, hd]
        let d_probs = ungroup(&matmul(&d_o_g, &a.v.t()?)?, rep)?; // [B, H, T, T]
        let pattern = a.pattern()?;
        let d_v = matmul(&grouped(&pattern.to_dtype(dt)?, rep)?.t()?, &d_o_g)?; // [B, KV, T, hd]
        // A = softmax(S)  =>  dS = A * (dA - rowsum(dA * A))   (masked entries have A = 0);
        // in the softmax's wide dtype, rounded to the compute dtype once (PyTorch's autograd
        // through `softmax(dtype=float32)` does the same).
        let d_scores = match kernels::softmax_backward(pattern, &d_probs) {
            Some(d) => d?,
            None => {
                let d_probs = widen(&d_probs)?;
                let row = (&d_probs * pattern)?.sum_keepdim(D::Minus1)?;
                (pattern * d_probs.broadcast_sub(&row)?)?.to_dtype(dt)?
            }
        };
        // S = (q scale) k^T  =>  dq = dS k scale,  dk = dS^T (q scale)
        // S = (q k^T) scale  =>  d(q k^T) = dS scale,  dq = d(q k^T) k,  dk = d(q k^T)^T q
        let d_raw = grouped(&if after { scale_by(&d_scores, self.scale)? } else { d_scores }, rep)?; // [B, KV, rep*T, T]
        let d_q = ungroup(&matmul(&d_raw, &a.k)?, rep)?; // [B, H, T, hd]
        let d_k = matmul(&d_raw.t()?, &grouped(&a.q, rep)?)?; // [B, KV, T, hd], summed over the group
        Ok((d_q, d_k, d_v))
    }

    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(Self {
            q: self.q.to_dtype(dt)?,
            k: self.k.to_dtype(dt)?,
            v: self.v.to_dtype(dt)?,
            o: self.o.to_dtype(dt)?,
            rope: self.rope.as_ref().map(|r| r.to_dtype(dt)).transpose()?,
            ..self.clone()
        })
    }
}
