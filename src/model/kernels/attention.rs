//! Causal attention on f32 CPU tensors, tiled by query rows, forward and input-gradient backward.
//!
//! Why: composed, the scores `q k^T` and the value product `A v` are full `[T, T]` batched
//! matmuls of which the causal mask then throws half away, the softmax makes one more pass over
//! a second `[B, H, T, T]` buffer, and at our shapes (hd = 64) each of the B·KV batched gemm calls
//! is small. Here each task takes one (batch row, query head, block of [`BLOCK_ROWS`] query
//! rows): the block's rows can only see keys `lo..r1` (`r1` the block's end, `lo` the window's
//! start), so its scores are one `[m, r1 - lo]` gemm on slices, softmaxed in place where they
//! were written (the pattern's own rows when it is kept), then one `[m, hd]` gemm with the
//! values. Blocks above the diagonal are never computed. The tasks run on rayon's pool with each
//! gemm single-threaded (`Parallelism::None`): at batch 1 a `[B, H, T]` problem still yields
//! H·T/64 independent tasks for the two cores.
//!
//! The backward takes one task per (batch row, query head), walking its row blocks: dA = do vᵀ
//! on the visible keys, dS = A (dA - rowsum(dA A)) in place, dq = dS k, and the head's share of
//! dk = dSᵀ q and dv = Aᵀ do accumulated over its blocks; under GQA the shares of the query
//! heads of a kv head are then summed (the composed path's grouped matmul sums the same terms).
//!
//! Layouts: the plain causal one (with or without a sliding window), and an explicit bias
//! `[B, 1, T, T]` (a tree layout: a shared prefix with one branch per answer option) provided no
//! row sees a key after itself, which is checked on every call (a bias that breaks it takes the
//! composed path). Tree layouts are what evaluation runs on, as many short rows per batch, where
//! the composed path made one small gemm call per (row, kv head) and matmul.
//!
//! Numerics: the same products as the composed path, summed by the same gemm microkernels over
//! k; masked scores are never computed, or (bias) get exp(-inf) = 0, and their probabilities are
//! written as exactly 0, as the composed softmax writes them.

use anyhow::Result;
use candle_core::Tensor;
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::{dot, exp, max, output, simd_level, tensor, view, RowMask, View};

/// Query rows per task. 64 keeps the skipped upper-triangle share high (T = 256: 10 of 16
/// blocks computed) while each gemm still fills the AVX-512 microkernel's rows.
pub const BLOCK_ROWS: usize = 64;

/// The keys row `i` attends: `lo..=i`, `lo` the sliding window's first key (0 without one).
#[inline(always)]
fn first_key(i: usize, window: usize) -> usize {
    if window > 0 {
        (i + 1).saturating_sub(window)
    } else {
        0
    }
}

/// `dst[m, n] (row stride dst_rs) = lhs[m, k] · rhs[k, n]` (+ dst when `accumulate`), each
/// operand given by its pointer and (row, column) strides, single-threaded.
///
/// # Safety
/// Every pointer must address an f32 allocation holding all the elements its strides reach
/// for the given m, n, k; `dst` must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn mm(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: usize, accumulate: bool, lhs: *const f32, lhs_rs: usize, lhs_cs: usize, rhs: *const f32, rhs_rs: usize, rhs_cs: usize) {
    if m == 0 || n == 0 {
        return;
    }
    // gemm computes dst := alpha dst + beta lhs rhs (alpha read only when read_dst).
    gemm(m, n, k, dst, 1, dst_rs as isize, accumulate, lhs, lhs_cs as isize, lhs_rs as isize, rhs, rhs_cs as isize, rhs_rs as isize, 1.0f32, 1.0f32, false, false, false, Parallelism::None);
}

multiversion! {
    /// Softmax of each score row `ii` of a block (query `r0 + ii`) over its visible keys, in place
    /// in rows of stride t; every other entry of the row set to exactly 0. `bias` empty: keys
    /// `first_key..=i`; else the block's bias rows `[m, t]` added to keys `0..=i` (0 or -inf).
    fn softmax_block(p: &mut [f32], t: usize, r0: usize, window: usize, bias: &[f32]) {
        for (ii, row) in p.chunks_exact_mut(t).enumerate() {
            let i = r0 + ii;
            let lo = if bias.is_empty() { first_key(i, window) } else { 0 };
            if !bias.is_empty() {
                for (e, b) in row[..=i].iter_mut().zip(&bias[ii * t..]) {
                    *e += b;
                }
            }
            let m = max(&row[lo..=i]);
            let mut z = 0.0;
            for e in &mut row[lo..=i] {
                *e = exp(*e - m);
                z += *e;
            }
            let inv = 1.0 / z;
            for e in &mut row[lo..=i] {
                *e *= inv;
            }
            row[..lo].fill(0.0);
            row[i + 1..].fill(0.0);
        }
    }
}

multiversion! {
    /// dS = A (dA - rowsum(dA A)) for the block's rows over keys `lo..lo + n`: `ds` holds dA on
    /// entry (row stride t, the same columns as `a`) and dS on return.
    fn softmax_backward_block(a: &[f32], ds: &mut [f32], t: usize, lo: usize, n: usize) {
        for (ar, dr) in a.chunks(t).zip(ds.chunks_mut(t)) {
            let (ar, dr) = (&ar[lo..lo + n], &mut dr[lo..lo + n]);
            let row = dot(dr, ar);
            for j in 0..n {
                dr[j] = ar[j] * (dr[j] - row);
            }
        }
    }
}

/// The visible keys of a call: a sliding window (0 = none), or the bias `[B, 1, T, T]` (then
/// checked to hide every key after its query, else None).
fn visibility<'a>(mask: RowMask<'a>, b: usize, t: usize) -> Option<(usize, Option<View<'a>>)> {
    match mask {
        RowMask::Causal { window } => Some((window.unwrap_or(0), None)),
        RowMask::Bias(bias) => {
            let bv = (bias.dims() == [b, 1, t, t]).then(|| view(bias))??;
            let hides_later_keys = bv.slice().par_chunks(t).enumerate().all(|(r, row)| row[r % t + 1..].iter().all(|&x| x == f32::NEG_INFINITY));
            hides_later_keys.then_some((0, Some(bv)))
        }
    }
}

/// Shapes of a causal attention call: q `[B, H, T, hd]`, k and v `[B, KV, T, hd]`.
struct Dims {
    b: usize,
    h: usize,
    kv: usize,
    t: usize,
    hd: usize,
}

fn dims(q: &Tensor, k: &Tensor, v: &Tensor) -> Option<Dims> {
    let (b, h, t, hd) = q.dims4().ok()?;
    let (bk, kv, tk, hdk) = k.dims4().ok()?;
    let ok = bk == b && tk == t && hdk == hd && v.dims() == k.dims() && kv > 0 && h.is_multiple_of(kv) && t > 0 && hd > 0;
    ok.then_some(Dims { b, h, kv, t, hd })
}

/// One forward task: (batch row * H + head, first row, its z rows `[m, hd]`, its pattern rows
/// `[m, T]` when kept).
type BlockTask<'a> = (usize, usize, &'a mut [f32], Option<&'a mut [f32]>);

/// The forward: q `[B, H, T, hd]` (already scaled), k and v `[B, KV, T, hd]` (query head i reads
/// kv head i / (H/KV)) -> (the pattern `[B, H, T, T]` when `keep_pattern`, z = A v `[B, H, T, hd]`).
/// Row i attends keys `j <= i` (and `i - j < window` with a window), or those its bias row
/// leaves at 0.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: RowMask<'_>, keep_pattern: bool) -> Option<Result<(Option<Tensor>, Tensor)>> {
    let Dims { b, h, kv, t, hd } = dims(q, k, v)?;
    let (qv, kview, vview) = (view(q)?, view(k)?, view(v)?);
    let (qs, ks, vs) = (qv.slice(), kview.slice(), vview.slice());
    let (window, bias) = visibility(mask, b, t)?;
    let bias = bias.as_ref().map_or(&[][..], |v| v.slice());
    let rep = h / kv;
    let mut z = output(b * h * t * hd);
    let mut pattern = keep_pattern.then(|| output(b * h * t * t));
    // One task per (batch row and head = bh, block of rows): its z rows and its pattern rows.
    let mut tasks: Vec<BlockTask<'_>> = Vec::with_capacity(b * h * t.div_ceil(BLOCK_ROWS));
    let mut pattern_heads = pattern.as_mut().map(|p| p.chunks_mut(t * t));
    for (bh, zh) in z.chunks_mut(t * hd).enumerate() {
        let mut ph = pattern_heads.as_mut().and_then(|it| it.next()).map(|p| p.chunks_mut(BLOCK_ROWS * t));
        for (blk, zb) in zh.chunks_mut(BLOCK_ROWS * hd).enumerate() {
            tasks.push((bh, blk * BLOCK_ROWS, zb, ph.as_mut().and_then(|it| it.next())));
        }
    }
    tasks.into_par_iter().for_each(|(bh, r0, zb, pb)| {
        let m = zb.len() / hd;
        let r1 = r0 + m;
        let lo = first_key(r0, window);
        let n = r1 - lo;
        let kvh = (bh / h) * kv + (bh % h) / rep;
        let qb = &qs[(bh * t + r0) * hd..][..m * hd];
        let (kh, vh) = (&ks[kvh * t * hd..][..t * hd], &vs[kvh * t * hd..][..t * hd]);
        let mut scratch: Vec<f32>;
        let p: &mut [f32] = match pb {
            Some(p) => p,
            None => {
                scratch = output(m * t);
                &mut scratch
            }
        };
        // SAFETY (both calls): p is [m, t], qb [m, hd], kh and vh [t, hd], zb [m, hd]; the
        // column ranges lo..r1 lie inside t, and the buffers are distinct.
        unsafe {
            // S[:, lo..r1] = q_blk k[lo..r1]^T  (rhs element (c, j) = k[lo + j, c])
            mm(m, n, hd, p.as_mut_ptr().add(lo), t, false, qb.as_ptr(), hd, 1, kh.as_ptr().add(lo * hd), 1, hd);
        }
        let bias_rows = if bias.is_empty() { &[][..] } else { &bias[((bh / h) * t + r0) * t..][..m * t] };
        softmax_block(p, t, r0, window, bias_rows);
        unsafe {
            // z_blk = A[:, lo..r1] v[lo..r1]
            mm(m, hd, n, zb.as_mut_ptr(), hd, false, p.as_ptr().add(lo), t, 1, vh.as_ptr().add(lo * hd), hd, 1);
        }
    });
    Some((|| {
        let pattern = pattern.map(|p| tensor(p, &[b, h, t, t])).transpose()?;
        Ok((pattern, tensor(z, &[b, h, t, hd])?))
    })())
}

/// The backward of [`causal_attention`] from its pattern and the gradient d_o of z `[B, H, T, hd]`:
/// (dq `[B, H, T, hd]` for the scaled q, dk and dv `[B, KV, T, hd]`).
/// The pattern is zero at every hidden key, so the mask only bounds which keys are read.
pub fn causal_attention_backward(pattern: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor, d_o: &Tensor, mask: RowMask<'_>) -> Option<Result<(Tensor, Tensor, Tensor)>> {
    let Dims { b, h, kv, t, hd } = dims(q, k, v)?;
    if pattern.dims() != [b, h, t, t] || d_o.dims() != q.dims() {
        return None;
    }
    let (pv, qv, kview, vview, dv) = (view(pattern)?, view(q)?, view(k)?, view(v)?, view(d_o)?);
    let (ps, qs, ks, vs, dos) = (pv.slice(), qv.slice(), kview.slice(), vview.slice(), dv.slice());
    let (window, _) = visibility(mask, b, t)?;
    let rep = h / kv;
    let size = b * h * t * hd;
    let mut dq = output(size);
    // Each query head's share of dk and dv `[B, H, T, hd]`, accumulated over its blocks.
    let (mut dk_h, mut dv_h) = (vec![0f32; size], vec![0f32; size]);
    dq.par_chunks_mut(t * hd)
        .zip(dk_h.par_chunks_mut(t * hd).zip(dv_h.par_chunks_mut(t * hd)))
        .enumerate()
        .for_each(|(bh, (dqh, (dkh, dvh)))| {
            let kvh = (bh / h) * kv + (bh % h) / rep;
            let (ph, qh, doh) = (&ps[bh * t * t..][..t * t], &qs[bh * t * hd..][..t * hd], &dos[bh * t * hd..][..t * hd]);
            let (kh, vh) = (&ks[kvh * t * hd..][..t * hd], &vs[kvh * t * hd..][..t * hd]);
            let mut ds = output(BLOCK_ROWS.min(t) * t);
            for r0 in (0..t).step_by(BLOCK_ROWS) {
                let r1 = (r0 + BLOCK_ROWS).min(t);
                let (m, lo) = (r1 - r0, first_key(r0, window));
                let n = r1 - lo;
                let (pb, qb, dob) = (&ph[r0 * t..r1 * t], &qh[r0 * hd..r1 * hd], &doh[r0 * hd..r1 * hd]);
                // SAFETY: ds holds >= m rows of t; pb [m, t]; qb, dob, the dq rows [m, hd];
                // kh, vh, dkh, dvh [t, hd]; columns lo..r1 lie inside t; no buffer is both read
                // and written by one call.
                unsafe {
                    // dA[:, lo..r1] = do_blk v[lo..r1]^T
                    mm(m, n, hd, ds.as_mut_ptr().add(lo), t, false, dob.as_ptr(), hd, 1, vh.as_ptr().add(lo * hd), 1, hd);
                }
                softmax_backward_block(pb, &mut ds[..m * t], t, lo, n);
                unsafe {
                    // dq_blk = dS k[lo..r1]
                    mm(m, hd, n, dqh.as_mut_ptr().add(r0 * hd), hd, false, ds.as_ptr().add(lo), t, 1, kh.as_ptr().add(lo * hd), hd, 1);
                    // dk[lo..r1] += dS^T q_blk   (lhs element (j, i) = dS[i, lo + j])
                    mm(n, hd, m, dkh.as_mut_ptr().add(lo * hd), hd, true, ds.as_ptr().add(lo), 1, t, qb.as_ptr(), hd, 1);
                    // dv[lo..r1] += A^T do_blk
                    mm(n, hd, m, dvh.as_mut_ptr().add(lo * hd), hd, true, pb.as_ptr().add(lo), 1, t, dob.as_ptr(), hd, 1);
                }
            }
        });
    let (dk, dv) = (sum_groups(dk_h, b, kv, rep, t * hd), sum_groups(dv_h, b, kv, rep, t * hd));
    Some((|| Ok((tensor(dq, &[b, h, t, hd])?, tensor(dk, &[b, kv, t, hd])?, tensor(dv, &[b, kv, t, hd])?)))())
}

/// `[B, KV * rep, n]` -> `[B, KV, n]`: the sum over the query heads of each kv head.
fn sum_groups(per_head: Vec<f32>, b: usize, kv: usize, rep: usize, n: usize) -> Vec<f32> {
    if rep == 1 {
        return per_head;
    }
    let mut out = output(b * kv * n);
    out.par_chunks_mut(n).enumerate().for_each(|(g, o)| {
        let heads = &per_head[g * rep * n..(g + 1) * rep * n];
        o.copy_from_slice(&heads[..n]);
        for r in 1..rep {
            for (x, y) in o.iter_mut().zip(&heads[r * n..(r + 1) * n]) {
                *x += y;
            }
        }
    });
    out
}
