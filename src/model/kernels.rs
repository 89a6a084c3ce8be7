//! Fused CPU kernels (f32) for the row operations between the matmuls, forward and backward.
//!
//! Why: every composed candle op reads and writes a whole tensor and allocates a new one, so
//! RMSNorm's backward was 12 passes over `[B, T, D]`, SiLU's derivative 9 over `[B, T, F]`, the
//! attention softmax 8 over `[B, H, T, T]` and the loss 10 over `[N, V]`; between them they
//! took about half of a pass whose matmuls run near the machine's peak. Each kernel here makes
//! one pass per row (a row stays in L1/L2 between its reads), in parallel over rows on rayon's
//! pool (the one gemm uses, so the whole pass runs on one pool), and is compiled three times
//! (AVX-512, AVX2+FMA, plain) with the copy the CPU supports chosen at run time, so the compiler
//! vectorises the row loops and the binary still runs anywhere.
//!
//! Each entry returns `Option<Result<Tensor>>`: None when an input is not a contiguous f32 CPU
//! tensor (bf16/f16 compute, f64 copies, CUDA, a strided view) or kernels are switched off; the
//! caller then runs the composed ops, which stay the reference: tests/kernels.rs compares every
//! kernel with them, forward and backward, and the golden parity tests run both paths.
//!
//! Numerics: the same formulas as the composed ops, in f32; sums use 16 partial accumulators
//! (a different order from candle's reductions, so results agree to a few ulp, not bit for
//! bit), and `exp` is a Cephes-style polynomial (max error ~2 ulp over the f32 range, exact 0
//! below -87.3, so fully masked entries stay exactly 0).
//!
//! Switches: `HEADROOM_KERNELS=composed` turns the kernels off for the process (benchmarks
//! print both); [`composed`] turns them off for the calling thread (tests).

use std::cell::Cell;
use std::sync::OnceLock;

use anyhow::Result;
use candle_core::{CpuStorage, DType, Device, Storage, StorageRef, Tensor};
use rayon::prelude::*;

use super::activation::Activation;
use super::norm::NormKind;

thread_local! {
    static OFF_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the kernels run: not when `HEADROOM_KERNELS=composed`, nor inside [`composed`].
pub fn enabled() -> bool {
    static ENV_OFF: OnceLock<bool> = OnceLock::new();
    !*ENV_OFF.get_or_init(|| std::env::var("HEADROOM_KERNELS").is_ok_and(|v| v == "composed")) && !OFF_HERE.with(|c| c.get())
}

/// Runs `f` with the fused kernels off on this thread: every op takes its composed path.
pub fn composed<R>(f: impl FnOnce() -> R) -> R {
    let was = OFF_HERE.with(|c| c.replace(true));
    let r = f();
    OFF_HERE.with(|c| c.set(was));
    r
}

// ---- tensor access ------------------------------------------------------------------------

/// A contiguous f32 CPU tensor's elements, borrowed (the storage's read lock is held).
struct View<'a> {
    guard: StorageRef<'a>,
    range: (usize, usize),
}

impl View<'_> {
    fn slice(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.0..self.range.1],
            _ => &[], // unreachable: `view` checked the storage
        }
    }
}

fn view(t: &Tensor) -> Option<View<'_>> {
    if t.dtype() != DType::F32 || !enabled() {
        return None;
    }
    let (guard, layout) = t.storage_and_layout();
    let range = layout.contiguous_offsets()?;
    matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))).then_some(View { guard, range })
}

/// An output buffer of n elements that the kernel then writes in full. Not zeroed: a memset
/// of every output was 4% of an importance pass, and every kernel below writes each element
/// exactly once before anything reads it.
fn output(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns and the caller writes all n elements before
    // any is read (each kernel's row loop covers its whole output chunk).
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(n)
    };
    v
}

fn tensor(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// Rows per parallel task: about 32K elements each, at least one row.
fn rows_per_task(row_len: usize) -> usize {
    (32768 / row_len.max(1)).max(1)
}

// ---- SIMD dispatch ----------------------------------------------------------------------------

/// 4: AVX-512F, 3: AVX2 + FMA, 0: neither (or not x86-64).
fn simd_level() -> u8 {
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return 4;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return 3;
            }
        }
        0
    })
}

/// Defines `fn name(args)` whose body is compiled for AVX-512, AVX2+FMA and plain x86-64, the
/// best one the CPU has picked at run time. The body must only call `#[inline(always)]` code
/// (the helpers below), so that it is vectorised inside each copy.
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) { body($($arg),*) }
                match simd_level() {
                    // SAFETY: the CPU has the features these copies were compiled for.
                    4 => return unsafe { v4($($arg),*) },
                    3 => return unsafe { v3($($arg),*) },
                    _ => {}
                }
            }
            body($($arg),*)
        }
    };
}

// Declared after the macro, which it uses.
mod attention;
pub use attention::{causal_attention, causal_attention_backward, BLOCK_ROWS};

// ---- vectorisable row helpers (16 partial sums: the compiler keeps them in one register) ----

const LANES: usize = 16;

#[inline(always)]
fn fold16(a: &[f32], init: f32, f: impl Fn(f32, f32) -> f32, g: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = a.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            acc[k] = f(acc[k], c[k]);
        }
    }
    let mut r = init;
    for &v in rest {
        r = f(r, v);
    }
    acc.iter().fold(r, |x, &y| g(x, y))
}

#[inline(always)]
fn sum(a: &[f32]) -> f32 {
    fold16(a, 0.0, |s, v| s + v, |x, y| x + y)
}

#[inline(always)]
fn max(a: &[f32]) -> f32 {
    fold16(a, f32::NEG_INFINITY, |s, v| s.max(v), |x, y| x.max(y))
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    let mut r = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        r += x * y;
    }
    acc.iter().fold(r, |s, &v| s + v)
}

/// `sum((a - c)^2)`.
#[inline(always)]
fn sum_sq_dev(a: &[f32], c: f32) -> f32 {
    fold16(a, 0.0, |s, v| s + (v - c) * (v - c), |x, y| x + y)
}

/// e^x in f32, branch-free (Cephes expf): x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6
/// polynomial, 2^n through the exponent bits. Max error ~2 ulp; exactly 0 for x < -87.3
/// (masked scores are -inf), +inf above 88.7.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const HI: f32 = 88.72283;
    const LO: f32 = -87.33654;
    let xc = x.clamp(LO, HI);
    let n = (xc * std::f32::consts::LOG2_E + 0.5).floor();
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n for n in [-126, 128]: n = 128 only when x > 88.38, where the scale is split in two.
    let n = n as i32;
    let half = n / 2;
    let s1 = f32::from_bits(((half + 127) as u32) << 23);
    let s2 = f32::from_bits(((n - half + 127) as u32) << 23);
    let y = e * s1 * s2;
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// tanh through exp: `1 - 2 / (e^{2x} + 1)` (saturates to +-1 without overflow trouble).
#[inline(always)]
fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

const GELU_C: f32 = 0.797_884_6; // sqrt(2 / pi)

/// act(x) for the activations with a fused path (GELU erf has none: no vectorisable erf here).
#[inline(always)]
fn act_f(act: u8, x: f32) -> f32 {
    match act {
        ACT_SILU => x / (1.0 + exp(-x)),
        ACT_GELU_TANH => 0.5 * x * (1.0 + tanh(GELU_C * (x + 0.044715 * x * x * x))),
        _ => x.max(0.0),
    }
}

/// act'(x), as Activation::backward composes it.
#[inline(always)]
fn act_d(act: u8, x: f32) -> f32 {
    match act {
        // silu(x) = x s(x):  s (1 + x (1 - s))
        ACT_SILU => {
            let s = 1.0 / (exp(-x) + 1.0);
            s * (x * (1.0 - s) + 1.0)
        }
        // (1 + tanh u)/2 + x/2 (1 - tanh^2 u) c (1 + 3 * 0.044715 x^2)
        ACT_GELU_TANH => {
            let x2 = x * x;
            let th = tanh(x * (0.044715 * x2 + 1.0) * GELU_C);
            (th + 1.0) * 0.5 + (x * 0.5) * ((1.0 - th * th) * (x2 * (3.0 * 0.044715 * GELU_C) + GELU_C))
        }
        _ => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

const ACT_RELU: u8 = 0;
const ACT_SILU: u8 = 1;
const ACT_GELU_TANH: u8 = 2;

fn act_code(a: Activation) -> Option<u8> {
    match a {
        Activation::Relu => Some(ACT_RELU),
        Activation::Silu => Some(ACT_SILU),
        Activation::GeluTanh => Some(ACT_GELU_TANH),
        Activation::GeluErf => None,
    }
}

// ---- norms ------------------------------------------------------------------------------------

multiversion! {
    /// Rows of `x` `[n, d]` -> `out`: LayerNorm `(x - mean) inv w + b` or RMSNorm `x inv w`.
    fn norm_rows(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32, layer: bool) {
        let d = w.len();
        for (xr, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let df = d as f32;
            let mean = if layer { sum(xr) / df } else { 0.0 };
            let inv = 1.0 / (sum_sq_dev(xr, mean) / df + eps).sqrt();
            if b.is_empty() {
                for j in 0..d {
                    o[j] = (xr[j] - mean) * inv * w[j];
                }
            } else {
                for j in 0..d {
                    o[j] = (xr[j] - mean) * inv * w[j] + b[j];
                }
            }
        }
    }
}

multiversion! {
    /// Input gradient of the norm, statistics recomputed from x; dxh = dy w, xh the normalized x:
    ///   LayerNorm: dx = (dxh - mean(dxh) - xh mean(dxh xh)) inv
    ///   RMSNorm:   dx = (dxh - xh mean(dxh xh)) inv
    fn norm_backward_rows(x: &[f32], dy: &[f32], out: &mut [f32], w: &[f32], eps: f32, layer: bool) {
        let d = w.len();
        let df = d as f32;
        for ((xr, dyr), o) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(out.chunks_exact_mut(d)) {
            let mean = if layer { sum(xr) / df } else { 0.0 };
            let inv = 1.0 / (sum_sq_dev(xr, mean) / df + eps).sqrt();
            // out temporarily holds dxh; m1 = mean(dxh), m2 = mean(dxh xh)
            let mut s1 = [0f32; LANES];
            let mut s2 = [0f32; LANES];
            for j in 0..d {
                let dxh = dyr[j] * w[j];
                o[j] = dxh;
                s1[j % LANES] += dxh;
                s2[j % LANES] += dxh * ((xr[j] - mean) * inv);
            }
            let m1 = if layer { s1.iter().sum::<f32>() / df } else { 0.0 };
            let m2 = s2.iter().sum::<f32>() / df;
            for j in 0..d {
                o[j] = (o[j] - m1 - (xr[j] - mean) * inv * m2) * inv;
            }
        }
    }
}

/// Norm forward over the last dim: x `[..., D]`, weight/bias `[D]`.
pub fn norm_forward(kind: NormKind, x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f64) -> Option<Result<Tensor>> {
    let (xv, wv) = (view(x)?, view(w)?);
    let bv = match b {
        Some(b) => Some(view(b)?),
        None => None,
    };
    let (xs, ws, bs) = (xv.slice(), wv.slice(), bv.as_ref().map_or(&[][..], |v| v.slice()));
    let d = ws.len();
    if d == 0 || x.dims().last() != Some(&d) || !(bs.is_empty() || bs.len() == d) {
        return None;
    }
    let layer = kind == NormKind::LayerNorm;
    let mut out = output(xs.len());
    let step = rows_per_task(d) * d;
    out.par_chunks_mut(step).zip(xs.par_chunks(step)).for_each(|(o, xr)| norm_rows(xr, o, ws, bs, eps as f32, layer));
    Some(tensor(out, x.dims()))
}

/// Norm input gradient: x, dy `[..., D]`, weight `[D]`.
pub fn norm_backward(kind: NormKind, x: &Tensor, w: &Tensor, dy: &Tensor, eps: f64) -> Option<Result<Tensor>> {
    let (xv, wv, dv) = (view(x)?, view(w)?, view(dy)?);
    let (xs, ws, ds) = (xv.slice(), wv.slice(), dv.slice());
    let d = ws.len();
    if d == 0 || x.dims().last() != Some(&d) || xs.len() != ds.len() {
        return None;
    }
    let layer = kind == NormKind::LayerNorm;
    let mut out = output(xs.len());
    let step = rows_per_task(d) * d;
    out.par_chunks_mut(step)
        .zip(xs.par_chunks(step).zip(ds.par_chunks(step)))
        .for_each(|(o, (xr, dr))| norm_backward_rows(xr, dr, o, ws, eps as f32, layer));
    Some(tensor(out, x.dims()))
}

// ---- attention softmax --------------------------------------------------------------------------

/// Which keys a score row may attend.
#[derive(Clone, Copy)]
pub enum RowMask<'a> {
    /// Row i of each `[T, T]` block attends keys `j <= i` (and `i - j < w` with a window w).
    Causal { window: Option<usize> },
    /// An additive bias `[B, 1, T, T]` (0 or -inf), shared by the heads of a batch row.
    Bias(&'a Tensor),
}

multiversion! {
    /// Softmax of the rows `first_row..` of `[.., T, T]` scores, `s` and `out` holding whole rows.
    /// `bias` empty: causal (with `window`, 0 = none); else `bias` holds the `[T, T]` bias rows
    /// of the batch row each score row belongs to, `heads` score blocks per batch row.
    fn softmax_rows(s: &[f32], out: &mut [f32], t: usize, first_row: usize, window: usize, bias: &[f32], heads: usize) {
        for (r, (sr, o)) in s.chunks_exact(t).zip(out.chunks_exact_mut(t)).enumerate() {
            let row = first_row + r;
            let i = row % t;
            if bias.is_empty() {
                let lo = if window > 0 { (i + 1).saturating_sub(window) } else { 0 };
                let live = &sr[lo..=i];
                let m = max(live);
                let mut z = 0.0;
                for j in lo..=i {
                    let e = exp(sr[j] - m);
                    o[j] = e;
                    z += e;
                }
                let inv = 1.0 / z;
                for v in &mut o[lo..=i] {
                    *v *= inv;
                }
                // masked keys: exactly 0
                o[..lo].fill(0.0);
                o[i + 1..].fill(0.0);
            } else {
                let b = row / (heads * t);
                let br = &bias[(b * t + i) * t..(b * t + i + 1) * t];
                let mut m = f32::NEG_INFINITY;
                for j in 0..t {
                    let v = sr[j] + br[j];
                    o[j] = v;
                    m = m.max(v);
                }
                let mut z = 0.0;
                for v in o.iter_mut() {
                    *v = exp(*v - m);
                    z += *v;
                }
                let inv = 1.0 / z;
                for v in o.iter_mut() {
                    *v *= inv;
                }
            }
        }
    }
}

/// Attention probabilities from scores `[B, H, T, T]` (row = query): masked, then softmax over
/// the last dim; masked entries are exactly 0.
pub fn masked_softmax(scores: &Tensor, mask: RowMask<'_>) -> Option<Result<Tensor>> {
    let (b, h, t, tk) = scores.dims4().ok()?;
    if t != tk {
        return None;
    }
    let sv = view(scores)?;
    let (window, bv) = match mask {
        RowMask::Causal { window } => (window.unwrap_or(0), None),
        RowMask::Bias(bias) => {
            if bias.dims() != [b, 1, t, t] {
                return None;
            }
            (0, Some(view(bias)?))
        }
    };
    let bs = bv.as_ref().map_or(&[][..], |v| v.slice());
    let s = sv.slice();
    let mut out = output(s.len());
    let rows = rows_per_task(t);
    out.par_chunks_mut(rows * t)
        .zip(s.par_chunks(rows * t))
        .enumerate()
        .for_each(|(k, (o, sr))| softmax_rows(sr, o, t, k * rows, window, bs, h));
    Some(tensor(out, scores.dims()))
}

multiversion! {
    /// dS = A (dA - rowsum(dA A)) row by row.
    fn softmax_backward_rows(a: &[f32], da: &[f32], out: &mut [f32], t: usize) {
        for ((ar, dr), o) in a.chunks_exact(t).zip(da.chunks_exact(t)).zip(out.chunks_exact_mut(t)) {
            let row = dot(dr, ar);
            for j in 0..t {
                o[j] = ar[j] * (dr[j] - row);
            }
        }
    }
}

/// Softmax backward over the last dim: pattern A and dA `[..., T]` -> dS.
pub fn softmax_backward(pattern: &Tensor, d_probs: &Tensor) -> Option<Result<Tensor>> {
    let (av, dv) = (view(pattern)?, view(d_probs)?);
    let (a, da) = (av.slice(), dv.slice());
    let t = *pattern.dims().last()?;
    if a.len() != da.len() || t == 0 {
        return None;
    }
    let mut out = output(a.len());
    let step = rows_per_task(t) * t;
    out.par_chunks_mut(step).zip(a.par_chunks(step).zip(da.par_chunks(step))).for_each(|(o, (ar, dr))| softmax_backward_rows(ar, dr, o, t));
    Some(tensor(out, pattern.dims()))
}

// ---- RoPE with the head split / merge --------------------------------------------------------

/// A rotation to apply while splitting or merging heads: tables `[max_pos, r/2]`, the rotated
/// dims r, the pairing, the position of each token.
pub struct Rotation<'a> {
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    pub rotary_dim: usize,
    /// RotateHalf pairs (i, i + r/2); otherwise adjacent pairs (2i, 2i + 1).
    pub rotate_half: bool,
    /// Position of token t of batch row b at `b * T + t`; None: position t.
    pub positions: Option<Vec<u32>>,
}

multiversion! {
    /// One head vector: `o = rot(x) * scale` (rotate by +theta; `sign` -1 rotates by -theta).
    fn rotate_one(x: &[f32], o: &mut [f32], cos: &[f32], sin: &[f32], r: usize, rotate_half: bool, sign: f32, scale: f32) {
        let half = r / 2;
        if r > 0 {
            if rotate_half {
                for i in 0..half {
                    let (c, s) = (cos[i], sign * sin[i]);
                    let (x1, x2) = (x[i], x[i + half]);
                    o[i] = (x1 * c - x2 * s) * scale;
                    o[i + half] = (x2 * c + x1 * s) * scale;
                }
            } else {
                for i in 0..half {
                    let (c, s) = (cos[i], sign * sin[i]);
                    let (x0, x1) = (x[2 * i], x[2 * i + 1]);
                    o[2 * i] = (x0 * c - x1 * s) * scale;
                    o[2 * i + 1] = (x0 * s + x1 * c) * scale;
                }
            }
        }
        for j in r..x.len() {
            o[j] = x[j] * scale;
        }
    }
}

/// `[B, T, n*hd]` -> `[B, n, T, hd]` (a projection's output split into heads), rotated and
/// scaled on the way when asked: the split, RoPE and the score scale in one pass.
pub fn split_heads(y: &Tensor, n: usize, hd: usize, rot: Option<&Rotation<'_>>, scale: Option<f64>) -> Option<Result<Tensor>> {
    let (b, t, w) = y.dims3().ok()?;
    if w != n * hd {
        return None;
    }
    heads_pass(y, b, t, n, hd, rot, scale, 1.0, true)
}

/// `[B, n, T, hd]` -> `[B, T, n*hd]` (per-head gradients merged for the projection's backward),
/// scaled and rotated back by -theta first: the backward of [`split_heads`].
pub fn merge_heads(d: &Tensor, rot: Option<&Rotation<'_>>, scale: Option<f64>) -> Option<Result<Tensor>> {
    let (b, n, t, hd) = d.dims4().ok()?;
    heads_pass(d, b, t, n, hd, rot, scale, -1.0, false)
}

#[allow(clippy::too_many_arguments)]
fn heads_pass(x: &Tensor, b: usize, t: usize, n: usize, hd: usize, rot: Option<&Rotation<'_>>, scale: Option<f64>, sign: f32, split: bool) -> Option<Result<Tensor>> {
    let xv = view(x)?;
    let xs = xv.slice();
    let (cv, sv) = match rot {
        Some(r) => (Some(view(r.cos)?), Some(view(r.sin)?)),
        None => (None, None),
    };
    let (cos, sin) = (cv.as_ref().map_or(&[][..], |v| v.slice()), sv.as_ref().map_or(&[][..], |v| v.slice()));
    let r = rot.map_or(0, |r| r.rotary_dim);
    let half = r / 2;
    if r > hd || !r.is_multiple_of(2) || (r > 0 && (cos.len() % half.max(1) != 0 || cos.len() != sin.len())) {
        return None;
    }
    let max_pos = cos.len().checked_div(half).unwrap_or(usize::MAX);
    let positions = rot.and_then(|r| r.positions.as_deref());
    if positions.is_some_and(|p| p.len() != b * t || p.iter().any(|&q| q as usize >= max_pos)) || (positions.is_none() && rot.is_some() && t > max_pos) {
        return None;
    }
    let rotate_half = rot.is_some_and(|r| r.rotate_half);
    let scale = scale.unwrap_or(1.0) as f32;
    let table = |bi: usize, ti: usize| -> (&[f32], &[f32]) {
        if half == 0 {
            return (&[], &[]);
        }
        let p = positions.map_or(ti, |p| p[bi * t + ti] as usize);
        (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half])
    };
    let mut out = output(xs.len());
    if split {
        // Output `[B, n, T, hd]`: one task per (batch row, head), gathering its T vectors.
        out.par_chunks_mut(t * hd).enumerate().for_each(|(k, o)| {
            let (bi, h) = (k / n, k % n);
            for ti in 0..t {
                let (c, s) = table(bi, ti);
                rotate_one(&xs[(bi * t + ti) * n * hd + h * hd..][..hd], &mut o[ti * hd..(ti + 1) * hd], c, s, r, rotate_half, sign, scale);
            }
        });
        Some(tensor(out, &[b, n, t, hd]))
    } else {
        // Output `[B, T, n*hd]`: one task per token, gathering its n heads.
        out.par_chunks_mut(n * hd).enumerate().for_each(|(k, o)| {
            let (bi, ti) = (k / t, k % t);
            let (c, s) = table(bi, ti);
            for h in 0..n {
                rotate_one(&xs[((bi * n + h) * t + ti) * hd..][..hd], &mut o[h * hd..(h + 1) * hd], c, s, r, rotate_half, sign, scale);
            }
        });
        Some(tensor(out, &[b, t, n * hd]))
    }
}

// ---- FFN activations ----------------------------------------------------------------------------

multiversion! {
    fn glu_rows(g: &[f32], u: &[f32], out: &mut [f32], act: u8) {
        for j in 0..out.len() {
            out[j] = act_f(act, g[j]) * u[j];
        }
    }
}

multiversion! {
    /// dg = act'(g) (da u), du = act(g) da.
    fn glu_backward_rows(g: &[f32], u: &[f32], da: &[f32], dg: &mut [f32], du: &mut [f32], act: u8) {
        if act == ACT_SILU {
            // One exp for both: s = sigmoid(g), silu = g s, silu' = s (1 + g (1 - s)).
            for j in 0..dg.len() {
                let x = g[j];
                let s = 1.0 / (exp(-x) + 1.0);
                dg[j] = s * (x * (1.0 - s) + 1.0) * (da[j] * u[j]);
                du[j] = x * s * da[j];
            }
            return;
        }
        for j in 0..dg.len() {
            dg[j] = act_d(act, g[j]) * (da[j] * u[j]);
            du[j] = act_f(act, g[j]) * da[j];
        }
    }
}

multiversion! {
    fn act_backward_rows(x: &[f32], dy: &[f32], out: &mut [f32], act: u8) {
        for j in 0..out.len() {
            out[j] = act_d(act, x[j]) * dy[j];
        }
    }
}

const CHUNK: usize = 32768;

/// Two same-sized f32 tensors -> one output of their shape, `rows(a, b, out)` on matching
/// chunks in parallel.
fn zip2(a: &Tensor, b: &Tensor, rows: impl Fn(&[f32], &[f32], &mut [f32]) + Sync) -> Option<Result<Tensor>> {
    let (av, bv) = (view(a)?, view(b)?);
    let (xs, ys) = (av.slice(), bv.slice());
    if xs.len() != ys.len() {
        return None;
    }
    let mut out = output(xs.len());
    out.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK).zip(ys.par_chunks(CHUNK))).for_each(|(o, (x, y))| rows(x, y, o));
    Some(tensor(out, a.dims()))
}

/// SwiGLU-style `act(g) * u`, g and u `[..., F]`.
pub fn glu_forward(act: Activation, g: &Tensor, u: &Tensor) -> Option<Result<Tensor>> {
    let code = act_code(act)?;
    zip2(g, u, |x, y, o| glu_rows(x, y, o, code))
}

/// Backward of `act(g) * u` for the upstream gradient da: (dg, du).
pub fn glu_backward(act: Activation, g: &Tensor, u: &Tensor, da: &Tensor) -> Option<Result<(Tensor, Tensor)>> {
    let code = act_code(act)?;
    let (gv, uv, dv) = (view(g)?, view(u)?, view(da)?);
    let (gs, us, ds) = (gv.slice(), uv.slice(), dv.slice());
    if gs.len() != us.len() || gs.len() != ds.len() {
        return None;
    }
    let mut dg = output(gs.len());
    let mut du = output(gs.len());
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(gs.par_chunks(CHUNK).zip(us.par_chunks(CHUNK)).zip(ds.par_chunks(CHUNK)))
        .for_each(|((a, b), ((x, y), z))| glu_backward_rows(x, y, z, a, b, code));
    Some((|| Ok((tensor(dg, g.dims())?, tensor(du, g.dims())?)))())
}

/// act'(x) * dy.
pub fn act_backward(act: Activation, x: &Tensor, dy: &Tensor) -> Option<Result<Tensor>> {
    let code = act_code(act)?;
    zip2(x, dy, |a, b, o| act_backward_rows(a, b, o, code))
}

// ---- linear layers: products summed in the gemm ------------------------------------------------

/// One product term of [`linear_sum`]: `a [M, K] · W^T` for an `nn.Linear` weight W `[N, K]`
/// (the forward), or `a [M, K] · W` for W `[K, N]` (the input gradient, `dy W`).
pub struct Product<'a> {
    pub a: &'a Tensor,
    pub w: &'a Tensor,
    pub transpose_w: bool,
}

/// `out [M, N] = bias + sum_i a_i op(W_i)`: every product accumulated by gemm into one output
/// (the first writes it, or adds to the broadcast bias, the rest add), instead of one matmul per
/// term and an element-wise add (and a bias add) between them, each a pass over `[M, N]` and a
/// new buffer. Why: the FFN's `dg W_gate + du W_up` and the attention's `dq W_q + dk W_k + dv W_v`
/// were three and five passes; a Linear's bias was one more. The a_i are `[.., K_i]`, flattened.
pub fn linear_sum(terms: &[Product<'_>], bias: Option<&Tensor>) -> Option<Result<Tensor>> {
    let first = terms.first()?;
    let n = if first.transpose_w { first.w.dims2().ok()?.0 } else { first.w.dims2().ok()?.1 };
    let m = first.a.elem_count() / first.a.dims().last().copied().filter(|&k| k > 0)?;
    if m == 0 || n == 0 {
        return None;
    }
    let views: Vec<(View<'_>, View<'_>, usize)> = terms
        .iter()
        .map(|p| {
            let (r, c) = p.w.dims2().ok()?;
            let (k, out) = if p.transpose_w { (c, r) } else { (r, c) };
            (out == n && p.a.dims().last() == Some(&k) && p.a.elem_count() == m * k).then_some(())?;
            Some((view(p.a)?, view(p.w)?, k))
        })
        .collect::<Option<_>>()?;
    let bv = match bias {
        Some(b) if b.dims() == [n] => Some(view(b)?),
        Some(_) => return None,
        None => None,
    };
    let mut out = match &bv {
        // rows of the bias, then every product added onto them
        Some(b) => {
            let row = b.slice();
            let mut o = output(m * n);
            o.par_chunks_mut(rows_per_task(n) * n).for_each(|c| c.chunks_exact_mut(n).for_each(|r| r.copy_from_slice(row)));
            o
        }
        None => output(m * n),
    };
    let threads = gemm::Parallelism::Rayon(rayon::current_num_threads());
    for (i, ((av, wv, k), p)) in views.iter().zip(terms).enumerate() {
        let (a, w) = (av.slice(), wv.slice());
        // W^T: element (c, j) of the [K, N] operand is W[j, c]; W itself: row-major [K, N].
        let (w_rs, w_cs) = if p.transpose_w { (1, *k as isize) } else { (n as isize, 1) };
        let accumulate = i > 0 || bv.is_some();
        // SAFETY: out is [m, n]; a is [m, k] row-major; w holds k * n elements addressed by
        // (w_rs, w_cs) within bounds; out does not overlap the inputs (a fresh buffer).
        unsafe {
            gemm::gemm(m, n, *k, out.as_mut_ptr(), 1, n as isize, accumulate, a.as_ptr(), 1, *k as isize, w.as_ptr(), w_cs, w_rs, 1.0f32, 1.0f32, false, false, false, threads);
        }
    }
    let mut dims = first.a.dims().to_vec();
    *dims.last_mut()? = n;
    Some(tensor(out, &dims))
}

// ---- row dots (the importance dots) ---------------------------------------------------------

multiversion! {
    fn dot_rows(a: &[f32], b: &[f32], out: &mut [f32], d: usize) {
        for ((x, y), o) in a.chunks_exact(d).zip(b.chunks_exact(d)).zip(out.iter_mut()) {
            *o = dot(x, y);
        }
    }
}

/// `sum(a * b, -1)`: `[..., d]` x2 -> `[...]`.
pub fn row_dots(a: &Tensor, b: &Tensor) -> Option<Result<Tensor>> {
    let (av, bv) = (view(a)?, view(b)?);
    let (xs, ys) = (av.slice(), bv.slice());
    let d = *a.dims().last()?;
    if xs.len() != ys.len() || a.dims() != b.dims() || d == 0 {
        return None;
    }
    let mut out = output(xs.len() / d);
    let rows = rows_per_task(d);
    out.par_chunks_mut(rows)
        .zip(xs.par_chunks(rows * d).zip(ys.par_chunks(rows * d)))
        .for_each(|(o, (x, y))| dot_rows(x, y, o, d));
    let dims = &a.dims()[..a.rank() - 1];
    Some(tensor(out, dims))
}

// ---- log-softmax and the loss -----------------------------------------------------------------

multiversion! {
    /// Rows `x - max - ln(sum(exp(x - max)))`.
    fn log_softmax_rows(x: &[f32], out: &mut [f32], v: usize) {
        for (xr, o) in x.chunks_exact(v).zip(out.chunks_exact_mut(v)) {
            let m = max(xr);
            let mut z = [0f32; LANES];
            for j in 0..v {
                z[j % LANES] += exp(xr[j] - m);
            }
            let lse = z.iter().sum::<f32>().ln();
            for j in 0..v {
                o[j] = (xr[j] - m) - lse;
            }
        }
    }
}

/// `x - logsumexp(x)` over the last dim.
pub fn log_softmax(x: &Tensor) -> Option<Result<Tensor>> {
    let xv = view(x)?;
    let xs = xv.slice();
    let v = *x.dims().last()?;
    if v == 0 {
        return None;
    }
    let mut out = output(xs.len());
    let step = rows_per_task(v) * v;
    out.par_chunks_mut(step).zip(xs.par_chunks(step)).for_each(|(o, r)| log_softmax_rows(r, o, v));
    Some(tensor(out, x.dims()))
}

multiversion! {
    /// Per row: logp[label] into `picked`, and `dl = w (softmax(x) - onehot(label))`.
    fn nll_rows(x: &[f32], dl: &mut [f32], labels: &[u32], weights: &[f32], picked: &mut [f32], v: usize) {
        for (k, (xr, o)) in x.chunks_exact(v).zip(dl.chunks_exact_mut(v)).enumerate() {
            let m = max(xr);
            let mut z = [0f32; LANES];
            for j in 0..v {
                let e = exp(xr[j] - m);
                o[j] = e;
                z[j % LANES] += e;
            }
            let zs = z.iter().sum::<f32>();
            let y = labels[k] as usize;
            picked[k] = (xr[y] - m) - zs.ln();
            let (w, inv) = (weights[k], 1.0 / zs);
            for e in o.iter_mut() {
                *e *= inv * w;
            }
            o[y] -= w;
        }
    }
}

/// The loss rows: logits `[N, V]`, one label and one weight per row -> (log p(label) `[N]`,
/// d loss / d logits `[N, V]` for loss = -sum_i w_i log p_i).
pub fn nll_and_grad(logits: &Tensor, labels: &[u32], weights: &[f32]) -> Option<Result<(Vec<f32>, Tensor)>> {
    let xv = view(logits)?;
    let xs = xv.slice();
    let (n, v) = logits.dims2().ok()?;
    if labels.len() != n || weights.len() != n || labels.iter().any(|&l| l as usize >= v) {
        return None;
    }
    let mut dl = output(xs.len());
    let mut picked = vec![0f32; n];
    let rows = rows_per_task(v);
    dl.par_chunks_mut(rows * v)
        .zip(picked.par_chunks_mut(rows))
        .zip(xs.par_chunks(rows * v).zip(labels.par_chunks(rows).zip(weights.par_chunks(rows))))
        .for_each(|((o, p), (x, (l, w)))| nll_rows(x, o, l, w, p, v));
    Some(tensor(dl, &[n, v]).map(|t| (picked, t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_to_a_few_ulp_over_the_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "relative error {worst:e}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
    }
}
