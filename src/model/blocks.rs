//! The one shared set of transformer blocks every family is assembled from.
//!
//! Shapes: B = batch, T = sequence length, D = hidden size (d_e), H = query heads,
//! KV = key/value heads (GQA: H % KV == 0), hd = head dim, F = FFN width, V = vocab.
//! Sequences in a batch are right-padded; attention is causal, so padding never reaches a real
//! token and needs no attention mask (the authors' eval path does the same, spec 2.2).
//!
//! Everything here computes in f32: on CPU candle's bf16 is slower than f32 (it converts per
//! matmul), and golden parity with transformers is checked in f32.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, D};

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

/// `y = x W^T + b`, HF `nn.Linear` layout. weight `[out, in]`, bias `[out]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    /// x `[..., in]` -> `[..., out]`. Flattened to one 2-D matmul (one gemm call).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let n_in = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / n_in.max(1);
        let y = x.reshape((rows, n_in))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap_or(&mut 0) = self.out_features();
        Ok(y.reshape(out_dims)?)
    }
    pub fn n_params(&self) -> usize {
        self.weight.elem_count() + self.bias.as_ref().map_or(0, |b| b.elem_count())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) * w + b` (OPT, GPT-2, NeoX).
    LayerNorm,
    /// `x / sqrt(mean(x^2) + eps) * w` (Llama family).
    RmsNorm,
}

/// LayerNorm or RMSNorm over the last dim. weight/bias `[D]`.
#[derive(Clone, Debug)]
pub struct Norm {
    pub kind: NormKind,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl Norm {
    /// x `[..., D]` -> `[..., D]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)? as f64;
        let normed = match self.kind {
            NormKind::LayerNorm => {
                let mean = (x.sum_keepdim(D::Minus1)? / d)?;
                let xc = x.broadcast_sub(&mean)?;
                let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / d)?;
                xc.broadcast_div(&(var + self.eps)?.sqrt()?)?
            }
            NormKind::RmsNorm => {
                let ms = (x.sqr()?.sum_keepdim(D::Minus1)? / d)?;
                x.broadcast_div(&(ms + self.eps)?.sqrt()?)?
            }
        };
        let y = normed.broadcast_mul(&self.weight)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
    pub fn n_params(&self) -> usize {
        self.weight.elem_count() + self.bias.as_ref().map_or(0, |b| b.elem_count())
    }
}

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
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Relu => x.relu()?,
            Self::GeluTanh => x.gelu()?,
            Self::GeluErf => x.gelu_erf()?,
            Self::Silu => x.silu()?,
        })
    }
}

/// What the FFN backward reads: the first projection's output (the gate projection for
/// SwiGLU) and, for SwiGLU, the up projection `[B, T, F]`.
#[derive(Clone, Debug)]
pub struct MlpActs {
    pub h: Tensor,
    pub u: Option<Tensor>,
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
                Ok((y, MlpActs { h, u: None }))
            }
            // y = down(act(gate x) * up x)
            Self::Gated { gate, up, down, act } => {
                let g = gate.forward(x)?;
                let u = up.forward(x)?;
                let y = down.forward(&(act.forward(&g)? * &u)?)?;
                Ok((y, MlpActs { h: g, u: Some(u) }))
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

/// Numerically stable softmax over the last dim (rows fully masked never occur: the diagonal is
/// always attendable).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
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

/// What a forward pass can record per layer (for induction scores and checks).
#[derive(Clone, Debug, Default)]
pub struct LayerCapture {
    pub record_attn_probs: bool,
    pub record_head_outputs: bool,
    /// Post-softmax attention probabilities `[B, H, T, T]` (before the head gate).
    pub attn_probs: Option<Tensor>,
    /// Per-head outputs after the head gate, concatenated: the input of the output projection,
    /// `[B, T, H*hd]` (head h occupies columns `h*hd..(h+1)*hd`).
    pub head_outputs: Option<Tensor>,
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
    pub rope: Option<Rope>,
    pub sliding_window: Option<usize>,
}

/// What the attention backward reads from its forward (kept or recomputed).
#[derive(Clone, Debug)]
pub struct AttnActs {
    /// The attention input `[B, T, D]`.
    pub x: Tensor,
    /// Rotated, scaled queries `[B, H, T, hd]`.
    pub qs: Tensor,
    /// Rotated keys and values, repeated to H heads under GQA `[B, H, T, hd]`.
    pub ke: Tensor,
    pub ve: Tensor,
    /// Softmax probabilities `[B, H, T, T]`.
    pub probs: Tensor,
    /// Head outputs before the gate `[B, H, T, hd]`.
    pub o: Tensor,
}

impl Attention {
    /// x `[B, T, D]` -> `[B, T, D]`.
    /// `head_gate` `[H]` multiplies each head's output o_h = A_h v_h before the output projection:
    /// 0 removes the head entirely (value bias included), the output bias stays (spec 2.3).
    /// With GQA the gate is per query head.
    pub fn forward(&self, x: &Tensor, layout: &Layout, head_gate: Option<&Tensor>, capture: Option<&mut LayerCapture>) -> Result<Tensor> {
        Ok(self.forward_acts(x, layout, head_gate, capture)?.0)
    }

    /// The forward, also returning the activations its backward needs.
    pub fn forward_acts(&self, x: &Tensor, layout: &Layout, head_gate: Option<&Tensor>, capture: Option<&mut LayerCapture>) -> Result<(Tensor, AttnActs)> {
        let (b, t, _) = x.dims3()?;
        let (h, kv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        // [B, T, heads*hd] -> [B, heads, T, hd]
        let split = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let mut q = split(self.q.forward(x)?, h)?; // q = x Wq + bq
        let mut k = split(self.k.forward(x)?, kv)?; // k = x Wk + bk
        let v = split(self.v.forward(x)?, kv)?; // v = x Wv + bv
        if let Some(rope) = &self.rope {
            q = rope.forward(&q, layout)?;
            k = rope.forward(&k, layout)?;
        }
        // GQA: query head i reads kv head i / (H/KV) (transformers' repeat_kv).
        let (ke, ve) = if kv == h { (k, v) } else { (repeat_kv(&k, h / kv)?, repeat_kv(&v, h / kv)?) };
        let qs = (q * self.scale)?;
        let scores = qs.matmul(&ke.t()?)?; // S = q k^T * scale + bias   [B, H, T, T]
        let scores = match layout {
            Layout::Causal => scores.broadcast_add(&causal_mask(t, self.sliding_window, x.device())?.to_dtype(x.dtype())?)?,
            Layout::Custom { bias, .. } => scores.broadcast_add(&bias.to_dtype(x.dtype())?)?,
        };
        let probs = softmax_last_dim(&scores)?; // A = softmax(S)
        let o = probs.matmul(&ve)?; // o = A v   [B, H, T, hd]
        let og = match head_gate {
            Some(g) => o.broadcast_mul(&g.to_dtype(o.dtype())?.reshape((1, h, 1, 1))?)?,
            None => o.clone(),
        };
        let og = og.transpose(1, 2)?.reshape((b, t, h * hd))?; // [B, T, H*hd]
        if let Some(c) = capture {
            if c.record_attn_probs {
                c.attn_probs = Some(probs.clone());
            }
            if c.record_head_outputs {
                c.head_outputs = Some(og.clone());
            }
        }
        let y = self.o.forward(&og)?; // out = concat_h(g_h o_h) Wo + bo
        Ok((y, AttnActs { x: x.clone(), qs, ke, ve, probs, o }))
    }
    pub fn n_params(&self) -> usize {
        self.q.n_params() + self.k.n_params() + self.v.n_params() + self.o.n_params()
    }
}

/// `[B, KV, T, hd]` -> `[B, KV*n_rep, T, hd]`, each kv head repeated n_rep times consecutively.
fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    let (b, kv, t, hd) = x.dims4()?;
    Ok(x.unsqueeze(2)?.expand((b, kv, n_rep, t, hd))?.reshape((b, kv * n_rep, t, hd))?)
}

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

/// Token (+ learned position) embeddings, optionally projected up (OPT-350m `project_in`).
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// `[V, E]` (E = D unless projected).
    pub tokens: Tensor,
    /// `[P + offset, D]`; OPT looks up row `pos + 2` (spec 2.2), GPT-2 row `pos`.
    pub positions: Option<(Tensor, usize)>,
    /// `[D, E]`, no bias.
    pub project_in: Option<Linear>,
}

impl Embeddings {
    /// ids `[B, T]` u32 -> `[B, T, D]`, learned positions taken from `layout`.
    pub fn forward(&self, ids: &Tensor, layout: &Layout) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let e = self.tokens.embedding(&ids.flatten_all()?)?; // [B*T, E]
        let e = match &self.project_in {
            Some(p) => p.forward(&e)?,
            None => e,
        };
        let d = e.dim(1)?;
        let e = e.reshape((b, t, d))?;
        let Some((table, offset)) = &self.positions else { return Ok(e) };
        let available = table.dims()[0] - offset;
        match layout {
            Layout::Causal => {
                if t > available {
                    bail!("sequence of {t} tokens exceeds the model's {available} learned positions");
                }
                Ok(e.broadcast_add(&table.narrow(0, *offset, t)?)?)
            }
            Layout::Custom { positions, max_position, .. } => {
                if *max_position > available {
                    bail!("position {max_position} exceeds the model's {available} learned positions");
                }
                let rows = (positions.flatten_all()? + *offset as f64)?.to_dtype(DType::U32)?;
                Ok((e + table.index_select(&rows, 0)?.reshape((b, t, d))?)?)
            }
        }
    }
    pub fn vocab_size(&self) -> usize {
        self.tokens.dims()[0]
    }
}

/// Final norm, optional down projection (OPT-350m `project_out`), unembedding (no bias).
#[derive(Clone, Debug)]
pub struct LmHead {
    pub final_norm: Option<Norm>,
    /// `[E, D]`, no bias.
    pub project_out: Option<Linear>,
    /// `[V, E]`; the same tensor as the token embedding when tied.
    pub unembed: Tensor,
    pub tied: bool,
}

impl LmHead {
    /// h `[..., D]` -> logits `[..., V]`.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let h = match &self.final_norm {
            Some(n) => n.forward(h)?,
            None => h.clone(),
        };
        let h = match &self.project_out {
            Some(p) => p.forward(&h)?,
            None => h,
        };
        Linear::new(self.unembed.clone(), None).forward(&h)
    }
}

/// A tensor of gates on `device`.
pub fn gate_tensor(values: &[f32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(values, values.len(), device)?)
}

// ---- dtype conversion (f64 copies of a model make exact finite-difference checks possible) ----

fn conv(t: &Tensor, dt: DType) -> Result<Tensor> {
    Ok(t.to_dtype(dt)?)
}
fn conv_opt(t: &Option<Tensor>, dt: DType) -> Result<Option<Tensor>> {
    t.as_ref().map(|t| conv(t, dt)).transpose()
}

impl Linear {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(Self { weight: conv(&self.weight, dt)?, bias: conv_opt(&self.bias, dt)? })
    }
}
impl Norm {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(Self { kind: self.kind, weight: conv(&self.weight, dt)?, bias: conv_opt(&self.bias, dt)?, eps: self.eps })
    }
}
impl Rope {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(Self { style: self.style, rotary_dim: self.rotary_dim, theta: self.theta, cos: conv(&self.cos, dt)?, sin: conv(&self.sin, dt)? })
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
impl Attention {
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
impl Embeddings {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(Self {
            tokens: conv(&self.tokens, dt)?,
            positions: self.positions.as_ref().map(|(t, o)| conv(t, dt).map(|t| (t, *o))).transpose()?,
            project_in: self.project_in.as_ref().map(|p| p.to_dtype(dt)).transpose()?,
        })
    }
}
impl LmHead {
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        Ok(Self {
            final_norm: self.final_norm.as_ref().map(|n| n.to_dtype(dt)).transpose()?,
            project_out: self.project_out.as_ref().map(|p| p.to_dtype(dt)).transpose()?,
            unembed: conv(&self.unembed, dt)?,
            tied: self.tied,
        })
    }
}
