//! Task-agnostic induction analysis (spec section 7): per-head **prefix-matching** and
//! **copying** scores on random token sequences, their mean and variance over sequences, and the
//! "capacity retained" curve of a score under any head ranking. The accuracy ablation of
//! induction heads (which the paper never ran) is in [`ablation`].
//!
//! Everything here is plain data in, plain data out: a [`Model`], token sequences, options.
//!
//! # Token pool (spec 7.1)
//! [`TokenPool::from_tokenizer`] takes the BPE merges in rank order (rank = frequency proxy),
//! drops the `exclude` fraction at both ends (`n_ex = floor(exclude * n_merges)`, allowed ranks
//! `[n_ex, n_merges - n_ex)`, the authors' 0.04 gives [2000, 48000) for GPT-2/OPT), and maps each
//! merge's result string to its id through the vocabulary. Byte-level base tokens and special
//! tokens are never merge results, so they are never sampled. Ids are deduplicated (first rank
//! wins) and ids outside the model's embedding or equal to its BOS are dropped.
//!
//! # Sampling (seeded, unlike the authors')
//! The authors drew tokens with `np.random.choice(..., replace=False)` while seeding only torch,
//! so their NumPy RNG was unseeded and their sequences are not reproducible (spec 7.1, 9.10).
//! Here sequence `s` of a run with seed `S` is drawn from its own RNG, SplitMix64 started at
//! `S * 2^32 + s`, by a partial Fisher-Yates shuffle of the pool (unbiased bounded draws by
//! rejection). This is fully specified here (no dependence on a `rand` version), so any
//! sequence can be regenerated from `(S, s, pool)` alone. Prefix and copying sequences of the same
//! `s` use the same stream, so the shorter X is a prefix of the longer one.
//!
//! # Lengths (spec 7.2, 7.3)
//! Sequence `s` (0-based) has `L = 25 + 2s` for prefix matching (`[BOS] + X X X X`) and
//! `L = 4 (25 + 2s)` for copying (`[BOS] + X`), as the authors: 100 sequences give prefix lengths
//! 101..893 and copying lengths 101..893 tokens. A sequence longer than the model's context is
//! an error, never truncated.
//!
//! # BOS ("use the model's own", spec 7.2)
//! [`default_bos`] picks, in order: the model's declared `bos_token_id` (config.json or GGUF
//! `tokenizer.ggml.bos_token_id`), else the tokenizer's BOS. Per family that is:
//! - OPT: `</s>` = 2 (exactly what the authors prepend);
//! - GPT-2: `<|endoftext|>` = 50256;
//! - GPT-NeoX/Pythia: `<|endoftext|>` = 0;
//! - Llama family: the declared BOS (Llama-2 `<s>` = 1, Llama-3 `<|begin_of_text|>`); for the
//!   default model SmolLM2-135M-Instruct (GGUF) that is id 1 `<|im_start|>`. SmolLM2 sets
//!   `add_bos_token = false` and never sees a BOS in normal use; `<|im_start|>` opens every chat
//!   turn, so it is the start token this model actually knows. `--bos none` or `--bos ID`
//!   overrides.
//!
//! Without a BOS the sequences are `X X X X` / `X` and every position index below shifts by one.
//!
//! # Prefix matching (spec 7.2)
//! With `b` = 1 if a BOS is present else 0, X at positions `b..b+4L`: for each query `j` in
//! repeats 2-4 (`p = j - b`, `m = p / L`, `r = p % L`) the score adds the attention from `j` to
//! the token after each earlier occurrence of its token, `b + nL + r + 1` for `n < m`, and divides
//! by `3L`. [`PrefixMode::Authors`] adds the authors' stray term: when `r = L - 1` (j a multiple
//! of L with a BOS) it also adds `A[j][b]` (`A[j][1]`), the attention to the token that follows
//! BOS, not an earlier copy of X[L-1]. [`PrefixMode::Definition`] (default) does not.
//!
//! # Copying (spec 7.3, 9.11, 9.16): the direct path
//! Both modes use, per layer `l`, the **embedding-only** input (token embedding, plus learned
//! positions where the family has them, plus `project_in` where present (OPT-350m)), never the
//! residual stream of earlier layers:
//! - `hs = attn_norm_l(e)` for pre-norm and parallel-residual blocks (LayerNorm or RMSNorm, the
//!   layer's own pre-attention norm); `hs = e` for post-LN blocks (OPT-350m), which have no norm
//!   before attention (spec 9.16's recommendation);
//! - `A_l` = layer l's attention pattern on `hs`, computed by the runtime's own attention: RoPE is
//!   applied to q and k at the sequence positions 0..T, GPT-2's optional `1/(layer+1)` scale and
//!   sliding windows as in the forward pass;
//! - a head's output goes through its `hd` columns of `out_proj`, then `project_out` where present
//!   (OPT-350m), then straight into the unembedding: **no final norm**. Under GQA a query head
//!   uses the value of its kv head (`h / (H / KV)`, as `repeat_kv`).
//!
//! [`CopyMode::Authors`] (exactly the authors' code otherwise): the row for query `j` is the value
//! of **token j itself** (not attention-weighted) through its out_proj slice **plus the full
//! out_proj bias**, softmax probabilities over the vocabulary, `r = ReLU(s - mean(s))` over the
//! attendable tokens `tokens[0..=j]` (within a sliding window if any), score `r[m] / sum(r)` at the
//! most-attended position `m` (first index on ties), 0 when `sum(r) = 0`; mean over queries
//! `j = 1..T` (BOS is never a query). Softmax probabilities of the attendable tokens are
//! `exp(z_k) / Z_j` with one normaliser per row, and the ratio `r[m] / sum(r)` is invariant to a
//! positive per-row scale, so only the logits of the sequence's own tokens are computed
//! (`exp(z_k - max_k z_k)`); this equals the full-vocabulary softmax in exact arithmetic (the
//! golden test compares against the full softmax) and saves a `[T, V]` matmul per head and layer.
//!
//! [`CopyMode::Olsson`]: the head's attention-weighted output `sum_k A[j,k] v_k` through its
//! out_proj slice (no bias: it is not the head's), raw direct-path logits, `ReLU(z - mean z)`
//! over the attendable tokens, ratio at the most-attended position, averaged over queries, then
//! rescaled from [0, 1] to [-1, 1] (`2x - 1`).
//!
//! # Statistics
//! Mean and unbiased variance (n - 1, `torch.var`'s default) over sequences, per head
//! `[n_layers][n_heads]` (query heads). With one sequence the variance is NaN (JSON `null`).
//!
//! # TransformerLens cross-check
//! [`tl_induction_score`]: TransformerLens `detect_head(..., "induction_head", "mul")` on the
//! prefix sequences, `sum(A * P) / sum(A)` with `P[q][k] = 1` iff `tokens[k-1] == tokens[q]`,
//! `1 <= k <= q` (spec 7.4). On `[BOS] + X*4` its targets are exactly the definition's, so per
//! sequence it equals the definition-mode prefix score times `3L / T` (diluted by the BOS and
//! repeat-1 rows that have no target): a consistency check on the attention capture rather than
//! independent information (the real-model test asserts the identity).

pub mod ablation;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::Serialize;

use crate::model::{Block, Capture, Keep, Layout, Model, PassInput};
use crate::tokenizer::Tokenizer;

// ------------------------------------------------------------------------------------------------
// Options

/// Which prefix-matching definition (spec 7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PrefixMode {
    /// The paper's Algorithm 1 / Olsson's definition: only tokens after earlier occurrences.
    #[default]
    Definition,
    /// The authors' code: also adds `A[j][1]` when j is a multiple of L (spec 9.10).
    Authors,
}

/// Which copying score (spec 7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CopyMode {
    /// The authors' code: OV image of the query token itself, softmax probabilities, no rescale.
    #[default]
    Authors,
    /// Olsson et al.: attention-weighted head output, raw logits, rescaled to [-1, 1].
    Olsson,
}

/// Sequence lengths: sequence `s` has `L = base_len + step * s` for prefix matching and
/// `copy_factor` times that for copying (authors: 25, 2, 4).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Lengths {
    pub base_len: usize,
    pub step: usize,
    pub copy_factor: usize,
}

impl Default for Lengths {
    fn default() -> Self {
        Self { base_len: 25, step: 2, copy_factor: 4 }
    }
}

impl Lengths {
    pub fn prefix_len(&self, s: usize) -> usize {
        self.base_len + self.step * s
    }
    pub fn copy_len(&self, s: usize) -> usize {
        self.copy_factor * self.prefix_len(s)
    }
}

// ------------------------------------------------------------------------------------------------
// RNG and token pool

/// The crate's one seeded generator (SplitMix64, Steele, Lea, Flood 2014), shared with the
/// task sampler: sequences are reproducible from the seed alone.
pub use crate::tasks::SplitMix64;

/// The ids random sequences are drawn from (spec 7.1).
#[derive(Clone, Debug, Serialize)]
pub struct TokenPool {
    /// Allowed ids, in merge-rank order.
    pub ids: Vec<u32>,
    /// Merges in the tokenizer (0 when built from explicit ids).
    pub n_merges: usize,
    /// Allowed merge ranks `[rank_lo, rank_hi)`.
    pub rank_lo: usize,
    pub rank_hi: usize,
    pub exclude: f64,
}

impl TokenPool {
    /// Merge ranks `[floor(exclude n), n - floor(exclude n))` mapped to ids, deduplicated, minus
    /// ids `>= vocab_size` (the model's embedding rows) and minus `bos`.
    pub fn from_tokenizer(tok: &Tokenizer, exclude: f64, vocab_size: usize, bos: Option<u32>) -> Result<Self> {
        if !(0.0..0.5).contains(&exclude) {
            bail!("--exclude {exclude} must be in [0, 0.5): it is cut from both ends of the merge ranks");
        }
        let merge_ids = tok.merge_token_ids();
        let n = merge_ids.len();
        if n == 0 {
            bail!("{}: the tokenizer has no BPE merges, so there is no frequency-ranked token pool (spec 7.1)", tok.origin());
        }
        let n_ex = (exclude * n as f64).floor() as usize;
        let (lo, hi) = (n_ex, n - n_ex);
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<u32> = merge_ids[lo..hi]
            .iter()
            .copied()
            .filter(|&id| (id as usize) < vocab_size && Some(id) != bos && seen.insert(id))
            .collect();
        Ok(Self { ids, n_merges: n, rank_lo: lo, rank_hi: hi, exclude })
    }

    /// A pool of explicit ids (tests, models without merges).
    pub fn from_ids(ids: Vec<u32>) -> Self {
        let n = ids.len();
        Self { ids, n_merges: 0, rank_lo: 0, rank_hi: n, exclude: 0.0 }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// `n` distinct ids (without replacement), by a partial Fisher-Yates shuffle driven by `rng`.
    pub fn sample(&self, n: usize, rng: &mut SplitMix64) -> Result<Vec<u32>> {
        if n > self.ids.len() {
            bail!("cannot draw {n} distinct tokens from a pool of {}", self.ids.len());
        }
        let mut v = self.ids.clone();
        for i in 0..n {
            let j = i + rng.below(v.len() - i);
            v.swap(i, j);
        }
        v.truncate(n);
        Ok(v)
    }
}

/// The model's own BOS: its declared `bos_token_id`, else the tokenizer's (module docs).
pub fn default_bos(model: &Model, tok: Option<&Tokenizer>) -> Option<u32> {
    model.info.bos_token_id.or_else(|| tok.and_then(|t| t.bos_id()))
}

// ------------------------------------------------------------------------------------------------
// Sequences

/// One random sequence: `ids` = optional BOS then X repeated `repeats` times (4 for prefix
/// matching, 1 for copying).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InductionSeq {
    pub ids: Vec<u32>,
    /// Position of X's first token: 1 with a BOS, 0 without.
    pub offset: usize,
    /// L, the length of X.
    pub len: usize,
}

impl InductionSeq {
    /// `[bos] + x * repeats`.
    pub fn new(bos: Option<u32>, x: &[u32], repeats: usize) -> Self {
        let mut ids = Vec::with_capacity(1 + x.len() * repeats);
        ids.extend(bos);
        for _ in 0..repeats {
            ids.extend_from_slice(x);
        }
        Self { ids, offset: bos.is_some() as usize, len: x.len() }
    }
}

/// The prefix-matching sequences `[BOS] + X X X X`, sequence s with `L = lengths.prefix_len(s)`.
pub fn prefix_sequences(pool: &TokenPool, bos: Option<u32>, n: usize, lengths: &Lengths, seed: u64) -> Result<Vec<InductionSeq>> {
    (0..n)
        .map(|s| Ok(InductionSeq::new(bos, &pool.sample(lengths.prefix_len(s), &mut SplitMix64::for_sequence(seed, s))?, 4)))
        .collect()
}

/// The copying sequences `[BOS] + X`, sequence s with `L = lengths.copy_len(s)`.
pub fn copy_sequences(pool: &TokenPool, bos: Option<u32>, n: usize, lengths: &Lengths, seed: u64) -> Result<Vec<InductionSeq>> {
    (0..n)
        .map(|s| Ok(InductionSeq::new(bos, &pool.sample(lengths.copy_len(s), &mut SplitMix64::for_sequence(seed, s))?, 1)))
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Per-head scores from one head's attention (pure functions)

/// Prefix-matching score of one head on one `[BOS] + X*4` sequence (spec 7.2; module docs).
/// `attn` is the head's `[T, T]` post-softmax attention, row-major (row = query).
pub fn prefix_score(attn: &[f32], t: usize, offset: usize, len: usize, mode: PrefixMode) -> f64 {
    assert_eq!(attn.len(), t * t, "attention is not T x T");
    assert_eq!(t, offset + 4 * len, "not a [BOS] + X*4 sequence");
    let l = len;
    let mut score = 0.0f64;
    for j in offset + l..t {
        let p = j - offset;
        let (m, r) = (p / l, p % l);
        let row = &attn[j * t..(j + 1) * t];
        for n in 0..m {
            score += row[offset + n * l + r + 1] as f64;
        }
        if mode == PrefixMode::Authors && r == l - 1 {
            score += row[offset] as f64;
        }
    }
    score / (3 * l) as f64
}

/// TransformerLens' induction score (`detect_head`, "mul"): `sum(A * P) / sum(A)` with
/// `P[q][k] = 1` iff `1 <= k <= q` and `tokens[k-1] == tokens[q]`.
pub fn tl_induction_score(attn: &[f32], tokens: &[u32]) -> f64 {
    let t = tokens.len();
    assert_eq!(attn.len(), t * t, "attention is not T x T");
    let (mut hit, mut total) = (0.0f64, 0.0f64);
    for q in 0..t {
        let row = &attn[q * t..(q + 1) * t];
        for k in 0..=q {
            total += row[k] as f64;
            if k >= 1 && tokens[k - 1] == tokens[q] {
                hit += row[k] as f64;
            }
        }
    }
    if total == 0.0 {
        0.0
    } else {
        hit / total
    }
}

/// Copying score of one head on one `[BOS] + X` sequence (spec 7.3; module docs).
/// `attn` `[T, T]` is the head's pattern on the direct-path input; `logits` `[T, T]` holds, for
/// each query row j, the direct-path logit of the token at each position k (`z[j][k]` = logit of
/// `tokens[k]` from row j's head output). Queries are `j = 1..T`; the attendable set is
/// `k = lo..=j` with `lo = 0`, or `j + 1 - w` under a sliding window w.
pub fn copy_score(attn: &[f32], logits: &[f32], t: usize, window: Option<usize>, mode: CopyMode) -> f64 {
    copy_score_biased(attn, logits, None, t, window, mode)
}

/// [`copy_score`] with a per-column bias added to the logits as they are read: `bias[k]` is the
/// authors' out_proj bias term `b . m_k` `[T]`, added here in f32 exactly as a tensor
/// broadcast-add would (same operands, same rounding), which saves a `[H, T, T]` pass.
fn copy_score_biased(attn: &[f32], logits: &[f32], bias: Option<&[f32]>, t: usize, window: Option<usize>, mode: CopyMode) -> f64 {
    assert_eq!(attn.len(), t * t, "attention is not T x T");
    assert_eq!(logits.len(), t * t, "logits are not T x T");
    if let Some(b) = bias {
        assert_eq!(b.len(), t, "bias is not [T]");
    }
    if t < 2 {
        return match mode {
            CopyMode::Authors => 0.0,
            CopyMode::Olsson => -1.0,
        };
    }
    let mut total = 0.0f64;
    let mut s = Vec::with_capacity(t);
    let mut zs: Vec<f32> = Vec::with_capacity(t);
    for j in 1..t {
        let lo = window.map_or(0, |w| (j + 1).saturating_sub(w));
        let arow = &attn[j * t + lo..=j * t + j];
        let zrow = &logits[j * t + lo..=j * t + j];
        // Most-attended position (relative to lo), first index on ties.
        let mut m = 0;
        for k in 1..arow.len() {
            if arow[k] > arow[m] {
                m = k;
            }
        }
        zs.clear();
        match bias {
            Some(b) => zs.extend(zrow.iter().zip(&b[lo..=j]).map(|(&z, &c)| z + c)),
            None => zs.extend_from_slice(zrow),
        }
        s.clear();
        match mode {
            CopyMode::Authors => {
                // softmax probabilities up to the row's normaliser, which the ratio ignores
                let zmax = zs.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                s.extend(zs.iter().map(|&z| (z as f64 - zmax).exp()));
            }
            CopyMode::Olsson => s.extend(zs.iter().map(|&z| z as f64)),
        }
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        // r[m] = 0 adds exactly 0 to the total whatever sum(r) is, so sum(r) is only formed when
        // the attended token is raised (NaN rows: r[m] = max(NaN, 0) = 0, skipped as before).
        let rm = (s[m] - mean).max(0.0);
        if rm > 0.0 {
            let sum_r: f64 = s.iter().map(|&x| (x - mean).max(0.0)).sum();
            total += rm / sum_r;
        }
    }
    let ratio = total / (t - 1) as f64;
    match mode {
        CopyMode::Authors => ratio,
        CopyMode::Olsson => 2.0 * ratio - 1.0,
    }
}

/// For each query q of `tokens`, the keys `k` (ascending, `1 <= k <= q`) with
/// `tokens[k-1] == tokens[q]`: TransformerLens' induction targets, the same for every head and
/// layer, so found once per sequence instead of compared `T^2 / 2` times per head.
fn tl_targets(tokens: &[u32]) -> Vec<Vec<u32>> {
    let mut at: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(tokens.len());
    for (q, &tok) in tokens.iter().enumerate() {
        // successors of earlier (and this) occurrences: k - 1 <= q - 1, i.e. k <= q
        out.push(at.get(&tok).cloned().unwrap_or_default());
        at.entry(tok).or_default().push(q as u32 + 1);
    }
    out
}

/// [`tl_induction_score`] from precomputed [`tl_targets`]; the same sums in the same order.
fn tl_induction_score_at(attn: &[f32], t: usize, targets: &[Vec<u32>]) -> f64 {
    let (mut hit, mut total) = (0.0f64, 0.0f64);
    for q in 0..t {
        let row = &attn[q * t..(q + 1) * t];
        for &a in &row[..=q] {
            total += a as f64;
        }
        for &k in &targets[q] {
            hit += row[k as usize] as f64;
        }
    }
    if total == 0.0 {
        0.0
    } else {
        hit / total
    }
}

/// `f(h)` for `h in 0..n` on rayon's pool (the one gemm and the kernels use), results in order.
/// Each head's score is computed exactly as serially, so the scores do not depend on the thread
/// count.
fn per_head<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    use rayon::prelude::*;
    (0..n).into_par_iter().map(f).collect()
}

/// Runs `f` on a tensor's elements as f32 in row-major order, borrowing the storage of a
/// contiguous CPU f32 tensor (the `[H, T, T]` patterns are up to 29 MB per layer: copying them
/// out was a full extra pass), else on a converted copy.
fn with_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if x.dtype() == candle_core::DType::F32 {
        let (storage, layout) = x.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((lo, hi))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(f(&cpu.as_slice::<f32>()?[lo..hi]));
        }
    }
    let v: Vec<f32> = x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    Ok(f(&v))
}

// ------------------------------------------------------------------------------------------------
// Model-driven scoring

/// Per-sequence scores of every head: `per_sequence[s][l * n_heads + h]`.
#[derive(Clone, Debug, Serialize)]
pub struct HeadScores {
    pub n_layers: usize,
    pub n_heads: usize,
    pub per_sequence: Vec<Vec<f64>>,
}

/// Mean and unbiased variance over sequences, `[n_layers][n_heads]`.
#[derive(Clone, Debug, Serialize)]
pub struct HeadStats {
    pub mean: Vec<Vec<f64>>,
    pub var: Vec<Vec<f64>>,
}

impl HeadScores {
    pub fn stats(&self) -> HeadStats {
        let n = self.per_sequence.len() as f64;
        let (nl, nh) = (self.n_layers, self.n_heads);
        let mut mean = vec![vec![0.0; nh]; nl];
        let mut var = vec![vec![0.0; nh]; nl];
        for l in 0..nl {
            for h in 0..nh {
                let xs = self.per_sequence.iter().map(|s| s[l * nh + h]);
                let m = xs.clone().sum::<f64>() / n;
                mean[l][h] = m;
                var[l][h] = if n < 2.0 { f64::NAN } else { xs.map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0) };
            }
        }
        HeadStats { mean, var }
    }
}

/// Prefix-matching (and TransformerLens) scores from a forward pass per sequence.
#[derive(Clone, Debug, Serialize)]
pub struct PrefixScores {
    pub prefix: HeadScores,
    pub tl_induction: HeadScores,
}

fn check_fits(model: &Model, seq: &InductionSeq) -> Result<()> {
    let t = seq.ids.len();
    if t > model.info.context_length {
        bail!(
            "a sequence of {t} tokens (L = {}) exceeds the model's context of {}: use fewer --sequences",
            seq.len,
            model.info.context_length
        );
    }
    if seq.len == 0 {
        bail!("empty random sequence (L = 0)");
    }
    Ok(())
}

/// One head's `[T, T]` attention rows out of a layer's `[H*T*T]` buffer.
fn head_slice(buf: &[f32], h: usize, t: usize) -> &[f32] {
    &buf[h * t * t..(h + 1) * t * t]
}

/// Runs each `[BOS] + X*4` sequence through the full, unmasked model, one layer at a time
/// (only one layer's attention is held at once), and scores every head. `on_sequence(done)` is
/// called after each sequence (progress).
pub fn prefix_matching(model: &Model, seqs: &[InductionSeq], mode: PrefixMode, on_sequence: &mut dyn FnMut(usize)) -> Result<PrefixScores> {
    let (nl, nh) = (model.n_layers(), model.n_heads());
    let mut prefix = vec![vec![0.0; nl * nh]; seqs.len()];
    let mut tl = vec![vec![0.0; nl * nh]; seqs.len()];
    for (s, seq) in seqs.iter().enumerate() {
        check_fits(model, seq)?;
        if seq.ids.len() != seq.offset + 4 * seq.len {
            bail!("prefix-matching sequence {s} is not [BOS] + X repeated 4 times");
        }
    }
    // Resident: one sequence at a time. Streamed: groups of sequences go through each block
    // together (each keeps its residual stream `[T, D]`), one materialisation per block.
    let per_token = model.info.hidden * model.blocks.dtype().size_in_bytes();
    let mut done = 0;
    for group in sequence_groups(seqs, crate::model::stack::group_tokens(model, per_token)) {
        let ids: Vec<Tensor> = group.clone().map(|s| model.batch_ids(std::slice::from_ref(&seqs[s].ids))).collect::<Result<_>>()?;
        let passes: Vec<PassInput<'_>> = ids.iter().map(|ids| PassInput { ids, layout: &Layout::Causal, mask: None }).collect();
        let targets: Vec<Vec<Vec<u32>>> = group.clone().map(|s| tl_targets(&seqs[s].ids)).collect();
        // The model's own layer loop; each layer's record is dropped after scoring, so only one
        // layer's attention `[1, H, T, T]` per sequence is held at once.
        model.forward_layers_group(&passes, Keep { removed_ffn: false, pattern: true }, &mut |k, l, _, acts, _| {
            let s = group.start + k;
            let seq = &seqs[s];
            let t = seq.ids.len();
            // [1, H, T, T] read in place; heads scored in parallel (the kernels are idle meanwhile).
            let scores = with_f32(acts.attn.pattern()?, |buf| {
                per_head(nh, |h| {
                    let a = head_slice(buf, h, t);
                    (prefix_score(a, t, seq.offset, seq.len, mode), tl_induction_score_at(a, t, &targets[k]))
                })
            })?;
            for (h, (p, q)) in scores.into_iter().enumerate() {
                prefix[s][l * nh + h] = p;
                tl[s][l * nh + h] = q;
            }
            Ok(())
        })?;
        done += group.len();
        on_sequence(done);
    }
    Ok(PrefixScores {
        prefix: HeadScores { n_layers: nl, n_heads: nh, per_sequence: prefix },
        tl_induction: HeadScores { n_layers: nl, n_heads: nh, per_sequence: tl },
    })
}

/// Consecutive ranges of sequences holding at most `max_tokens` tokens (at least one sequence
/// each; `max_tokens` 0 = one sequence per range).
fn sequence_groups(seqs: &[InductionSeq], max_tokens: usize) -> Vec<std::ops::Range<usize>> {
    let lens: Vec<usize> = seqs.iter().map(|s| s.ids.len()).collect();
    crate::model::stack::group_ranges(&lens, max_tokens)
}

/// The direct path of layer `l` on one sequence (module docs): the attention pattern `[H, T, T]`
/// and the direct-path logits `[H, T, T]` (`z[h][j][k]` = logit of `ids[k]` from head h's output
/// at row j), for the given copying mode.
pub fn direct_path(model: &Model, l: usize, ids: &[u32], mode: CopyMode) -> Result<(Tensor, Tensor)> {
    let block = model.blocks.get(l).with_context(|| format!("layer {l} out of range"))?;
    let inputs = DirectInputs::new(model, ids)?;
    let dp = direct_path_of(model, &block, l, &inputs, mode)?;
    let z = match &dp.bias {
        Some(bz) => dp.z.broadcast_add(&bz.unsqueeze(0)?)?,
        None => dp.z,
    };
    Ok((dp.probs, z))
}

/// What the direct path of every layer reads from one sequence: the token ids `[1, T]`, the
/// embedding-only input `e` `[1, T, D]` and `M^T` `[D, T]` (M = U_seq P: the unembedding rows of
/// the sequence's tokens through project_out). None of it depends on the layer, so it is built
/// once per sequence rather than once per layer.
struct DirectInputs {
    e: Tensor,
    mt: Tensor,
}

impl DirectInputs {
    fn new(model: &Model, ids: &[u32]) -> Result<Self> {
        let idt = model.batch_ids(&[ids.to_vec()])?; // [1, T]
        let e = model.embed.forward(&idt, &Layout::Causal)?; // [1, T, D]
        let u = model.head.unembed.index_select(&idt.squeeze(0)?.to_device(model.head_device())?, 0)?; // [T, E]: rows of the sequence's tokens
        let m = match &model.head.project_out {
            Some(p) => u.matmul(&p.weight.to_device(u.device())?)?, // [T, E] x [E, D]
            None => u,
        }; // [T, D]
        Ok(Self { e, mt: m.t()?.contiguous()? }) // mt [D, T]
    }
}

/// One layer's direct path on one sequence: the pattern `[H, T, T]`, the logits `[H, T, T]`
/// without the authors' bias term, and that term `b . m_k` `[T]` (authors mode with an out_proj
/// bias), which the scorer adds per column as it reads z.
struct DirectPath {
    probs: Tensor,
    z: Tensor,
    bias: Option<Tensor>,
}

/// [`direct_path`] with layer `l`'s block already at hand (streamed models materialise it once
/// for many sequences) and the per-sequence inputs built once.
fn direct_path_of(model: &Model, block: &Block, l: usize, inputs: &DirectInputs, mode: CopyMode) -> Result<DirectPath> {
    let attn = &block.attn;
    let (h, hd) = (attn.n_heads, attn.head_dim);
    let dev = model.blocks.device(l);
    let e = inputs.e.to_device(dev)?; // [1, T, D] on the layer's device
    // The block's own attention half on the embeddings alone: ln1(e) for pre-norm and parallel
    // blocks, e itself for post-norm (OPT-350m: no norm before attention, spec 9.16).
    let (_, _, acts) = block.attention_half(&e, &Layout::Causal, None, true)?;
    let probs = acts.pattern()?.squeeze(0)?; // [H, T, T]
    // Per query head, the vector its out_proj slice reads: [H, T, hd].
    let per_head = match mode {
        // The value of the token at each position (not attention-weighted); under GQA query
        // head h reads kv head h / (H/KV) (repeat_kv).
        CopyMode::Authors => acts.values_per_query_head(h)?.squeeze(0)?.contiguous()?,
        // The head output A_h v_h (no gate: the model is unmasked).
        CopyMode::Olsson => acts.z.squeeze(0)?.contiguous()?,
    };
    // z[h][j][k] = (per_head[h][j] Wo_h^T (+ bo)) P^T u_k with P = project_out (identity if
    // absent) and u_k the unembedding row of ids[k]. Associated as per_head (Wo_h^T M^T) with
    // M = U_seq P [T, D], which costs H*T*hd*(D + T) instead of H*T*D*(hd + T) multiply-adds.
    let mt = inputs.mt.to_device(dev)?; // [D, T]
    // out_proj weight [D, H*hd] -> per head [H, hd, D].
    let w = &attn.o.weight;
    let d = w.dims()[0];
    let wo = w.reshape((d, h, hd))?.permute((1, 2, 0))?.contiguous()?; // [H, hd, D]
    let g = wo.broadcast_matmul(&mt)?; // [H, hd, T]
    let mut z = per_head.matmul(&g)?; // [H, T, T]
    let mut bias = match (mode, &attn.o.bias) {
        // the full output bias, for every head (spec 9.11): adds b . m_k to every row
        (CopyMode::Authors, Some(b)) => Some(b.unsqueeze(0)?.matmul(&mt)?.squeeze(0)?), // [T]
        _ => None,
    };
    if z.dtype() != candle_core::DType::F32 {
        // In bf16/f16 the sum is rounded to the compute dtype before it is widened: keep it a
        // tensor op so the scorer reads the same numbers.
        if let Some(bz) = bias.take() {
            z = z.broadcast_add(&bz.unsqueeze(0)?)?;
        }
    }
    Ok(DirectPath { probs, z, bias })
}

/// Copying scores of every head on each `[BOS] + X` sequence (module docs). `on_sequence(done)`
/// is called after each sequence.
pub fn copying(model: &Model, seqs: &[InductionSeq], mode: CopyMode, on_sequence: &mut dyn FnMut(usize)) -> Result<HeadScores> {
    let (nl, nh) = (model.n_layers(), model.n_heads());
    for seq in seqs {
        check_fits(model, seq)?;
    }
    let mut per_sequence = vec![vec![0.0; nl * nh]; seqs.len()];
    // Layer-major over groups of sequences: resident, a group is one sequence; streamed, each
    // block is materialised once per group rather than once per sequence. A sequence holds e
    // and M^T (2 x [T, D]) for the whole group, hence twice the residual stream's budget.
    let per_token = 2 * model.info.hidden * model.blocks.dtype().size_in_bytes();
    let order: Vec<usize> = (0..nl).collect();
    let mut done = 0;
    for group in sequence_groups(seqs, crate::model::stack::group_tokens(model, per_token)) {
        let inputs: Vec<DirectInputs> = group.clone().map(|s| DirectInputs::new(model, &seqs[s].ids)).collect::<Result<_>>()?;
        model.blocks.for_each(&order, &mut |l, block| {
            let window = model.blocks.meta(l).sliding_window;
            for s in group.clone() {
                let t = seqs[s].ids.len();
                let dp = direct_path_of(model, block, l, &inputs[s - group.start], mode)?;
                // Scores are read in f32 whatever the compute dtype (the pattern is already wide;
                // the direct-path logits come out of compute-dtype matmuls), in place, heads in
                // parallel. The bias term, when there is one, is rounded to f32 like z.
                let bias: Option<Vec<f32>> = dp.bias.as_ref().map(|b| b.to_dtype(candle_core::DType::F32)?.to_vec1()).transpose()?;
                let scores = with_f32(&dp.probs, |a| {
                    with_f32(&dp.z, |z| per_head(nh, |h| copy_score_biased(head_slice(a, h, t), head_slice(z, h, t), bias.as_deref(), t, window, mode)))
                })??;
                per_sequence[s][l * nh..(l + 1) * nh].copy_from_slice(&scores);
            }
            Ok(())
        })?;
        done += group.len();
        on_sequence(done);
    }
    Ok(HeadScores { n_layers: nl, n_heads: nh, per_sequence })
}

/// All layers' attention of one full forward pass, `[H, T, T]` per layer (tests, small inputs).
pub fn attention_patterns(model: &Model, ids: &[u32]) -> Result<Vec<Tensor>> {
    let mut cap = Capture::new(model.n_layers(), true, false);
    model.forward_hidden(&model.batch_ids(&[ids.to_vec()])?, None, Some(&mut cap))?;
    cap.layers
        .into_iter()
        .map(|c| Ok(c.attn_probs.context("no attention recorded")?.squeeze(0)?))
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Rankings and capacity

/// A head's place in a ranking.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RankedHead {
    pub layer: usize,
    pub head: usize,
    pub score: f64,
}

/// The `k` highest-scoring heads of a `[L][H]` matrix, best first (ties: lower layer, then
/// lower head first). NaN scores sort last.
pub fn top_heads(scores: &[Vec<f64>], k: usize) -> Vec<RankedHead> {
    let mut all: Vec<RankedHead> = scores
        .iter()
        .enumerate()
        .flat_map(|(l, row)| row.iter().enumerate().map(move |(h, &s)| RankedHead { layer: l, head: h, score: s }))
        .collect();
    all.sort_by(|a, b| {
        let key = |x: f64| if x.is_nan() { f64::NEG_INFINITY } else { x };
        key(b.score).total_cmp(&key(a.score)).then((a.layer, a.head).cmp(&(b.layer, b.head)))
    });
    all.truncate(k);
    all
}

/// Capacity retained (spec 7.5): with `C = sum(score)` and `ranking` = head indices least
/// important first ([`ascending_ranking`], the pruning convention: stable, layer-major), entry
/// `i` (i = 0..=N heads pruned) is `100 * sum_{r >= i} score[ranking[r]] / C`, so entry 0 is 100 and entry N is 0. `scores` is flattened layer-major like `ranking`.
pub fn capacity_retained(scores: &[f64], ranking: &[usize]) -> Result<Vec<f64>> {
    let n = scores.len();
    if ranking.len() != n {
        bail!("ranking has {} heads but the scores have {n}", ranking.len());
    }
    let mut seen = vec![false; n];
    for &r in ranking {
        if r >= n || std::mem::replace(&mut seen[r], true) {
            bail!("ranking is not a permutation of the {n} heads (index {r} repeated or out of range)");
        }
    }
    let total: f64 = scores.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        bail!("total capacity (sum of scores) is {total}; capacity retained needs a positive finite total");
    }
    let mut out = vec![0.0; n + 1];
    let mut tail = 0.0;
    for i in (0..n).rev() {
        tail += scores[ranking[i]];
        out[i] = 100.0 * tail / total;
    }
    Ok(out)
}

pub use crate::prune::{ascending_ranking, flatten};

/// Median of a matrix's finite entries (NaN when there are none).
pub fn median(m: &[Vec<f64>]) -> f64 {
    let mut v: Vec<f64> = m.iter().flatten().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A [T, T] attention where every query puts all its weight on `target(j)`.
    fn onehot_attn(t: usize, target: impl Fn(usize) -> usize) -> Vec<f32> {
        let mut a = vec![0.0f32; t * t];
        for j in 0..t {
            a[j * t + target(j)] = 1.0;
        }
        a
    }

    #[test]
    fn perfect_induction_attention_scores_one_in_both_modes() {
        for (offset, l) in [(1usize, 5usize), (0, 7), (1, 1)] {
            let t = offset + 4 * l;
            // Attend to the token after the previous occurrence: j - L + 1 (one target only).
            let a = onehot_attn(t, |j| if j >= offset + l { j - l + 1 } else { 0 });
            let s = prefix_score(&a, t, offset, l, PrefixMode::Definition);
            // Only the latest occurrence gets weight; each query has m targets but only one has
            // mass 1, so the score is exactly 1 (one unit of attention per query, 3L queries).
            assert!((s - 1.0).abs() < 1e-12, "offset {offset} L {l}: {s}");
        }
    }

    #[test]
    fn authors_quirk_adds_attention_to_position_one_only_in_authors_mode() {
        // A head that puts all attention on position 1 (the token after BOS).
        let (offset, l) = (1, 6);
        let t = offset + 4 * l;
        let a = onehot_attn(t, |j| if j >= 1 { 1 } else { 0 });
        let def = prefix_score(&a, t, offset, l, PrefixMode::Definition);
        let auth = prefix_score(&a, t, offset, l, PrefixMode::Authors);
        // Position 1 holds X[0]; it is a correct target only for queries whose token is X[L-1]
        // in no repeat (the token after X[L-1] in repeat 1 is at position L + 1), so the
        // definition gives 0 and the authors' code adds 1 for j = 2L, 3L, 4L: 3 / 3L.
        assert_eq!(def, 0.0);
        assert!((auth - 1.0 / l as f64).abs() < 1e-12, "{auth}");
        // A head that attends to the correct targets for j = mL scores the same in both modes
        // except for the quirk term.
        let b = onehot_attn(t, |j| if j >= offset + l { j - l + 1 } else { 0 });
        assert_eq!(prefix_score(&b, t, offset, l, PrefixMode::Definition), prefix_score(&b, t, offset, l, PrefixMode::Authors));
    }

    #[test]
    fn definition_targets_are_the_successors_of_every_earlier_occurrence() {
        let (offset, l) = (1usize, 4usize);
        let t = offset + 4 * l;
        // Query j = 4L (token X[L-1] in repeat 4): correct targets L+1, 2L+1, 3L+1.
        let j = 4 * l;
        let mut a = vec![0.0f32; t * t];
        for tgt in [l + 1, 2 * l + 1, 3 * l + 1] {
            a[j * t + tgt] = 1.0 / 3.0;
        }
        let s = prefix_score(&a, t, offset, l, PrefixMode::Definition);
        assert!((s - 1.0 / (3 * l) as f64).abs() < 1e-7, "{s}");
        // Query j = 2L + 2 (token X[1] in repeat 3): targets 3 and L + 3.
        let j = 2 * l + 2;
        let mut a = vec![0.0f32; t * t];
        a[j * t + 3] = 0.5;
        a[j * t + l + 3] = 0.5;
        let s = prefix_score(&a, t, offset, l, PrefixMode::Definition);
        assert!((s - 1.0 / (3 * l) as f64).abs() < 1e-7, "{s}");
    }

    #[test]
    fn tl_score_counts_previous_token_successors() {
        let tokens = [9u32, 1, 2, 3, 1, 2, 3];
        let t = tokens.len();
        // Perfect induction on the second copy, BOS-sink elsewhere.
        let a = onehot_attn(t, |j| if j >= 4 { j - 3 + 1 } else { 0 });
        let s = tl_induction_score(&a, &tokens);
        assert!((s - 3.0 / 7.0).abs() < 1e-12, "{s}");
    }

    #[test]
    fn copy_score_authors_and_olsson_on_hand_made_rows() {
        let t = 4;
        // Self-attention, and logits raising only the token at the query's own position.
        let a = onehot_attn(t, |j| j);
        let mut z = vec![0.0f32; t * t];
        for j in 0..t {
            z[j * t + j] = 5.0;
        }
        assert!((copy_score(&a, &z, t, None, CopyMode::Authors) - 1.0).abs() < 1e-12);
        assert!((copy_score(&a, &z, t, None, CopyMode::Olsson) - 1.0).abs() < 1e-12);
        // Flat logits: nothing is raised: 0 (authors) and -1 (Olsson, rescaled).
        let flat = vec![0.0f32; t * t];
        assert_eq!(copy_score(&a, &flat, t, None, CopyMode::Authors), 0.0);
        assert_eq!(copy_score(&a, &flat, t, None, CopyMode::Olsson), -1.0);
        // Raising a different token than the attended one scores 0.
        let b = onehot_attn(t, |_| 0);
        assert_eq!(copy_score(&b, &z, t, None, CopyMode::Authors), 0.0);
        // Row j = 2 over tokens 0..=2 with probabilities proportional to (1, 1, 4): mean 2,
        // r = (0, 0, 2); attended 2 -> 1.
        let mut z2 = vec![0.0f32; t * t];
        z2[2 * t + 2] = 4f32.ln();
        let s = copy_score(&a, &z2, t, None, CopyMode::Authors);
        assert!((s - 1.0 / 3.0).abs() < 1e-7, "{s}");
    }

    #[test]
    fn sampling_is_seeded_distinct_and_prefix_consistent() {
        let pool = TokenPool::from_ids((100..1100).collect());
        let a = pool.sample(50, &mut SplitMix64::for_sequence(7, 3)).unwrap();
        let b = pool.sample(50, &mut SplitMix64::for_sequence(7, 3)).unwrap();
        let c = pool.sample(50, &mut SplitMix64::for_sequence(7, 4)).unwrap();
        let long = pool.sample(200, &mut SplitMix64::for_sequence(7, 3)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(&long[..50], &a[..]);
        let mut u = long.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), 200, "sampled with replacement");
        assert!(long.iter().all(|x| (100..1100).contains(x)));
        assert!(pool.sample(1001, &mut SplitMix64::new(0)).is_err());
        // SplitMix64 reference value (seed 0, first output) from the published algorithm.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn capacity_curve_runs_from_100_to_0_in_ranking_order() {
        let scores = [0.5, 0.0, 0.25, 0.25];
        let importance = [3.0, 1.0, 2.0, 0.0];
        let r = ascending_ranking(&importance);
        assert_eq!(r, vec![3, 1, 2, 0]);
        let c = capacity_retained(&scores, &r).unwrap();
        assert_eq!(c, vec![100.0, 75.0, 75.0, 50.0, 0.0]);
        assert!(capacity_retained(&scores, &[0, 0, 1, 2]).is_err());
        assert!(capacity_retained(&[0.0; 4], &r).is_err());
    }

    #[test]
    fn stats_are_mean_and_unbiased_variance() {
        let hs = HeadScores { n_layers: 1, n_heads: 2, per_sequence: vec![vec![1.0, 0.0], vec![3.0, 0.0], vec![2.0, 0.0]] };
        let st = hs.stats();
        assert_eq!(st.mean, vec![vec![2.0, 0.0]]);
        assert_eq!(st.var, vec![vec![1.0, 0.0]]);
        let top = top_heads(&st.mean, 1);
        assert_eq!((top[0].layer, top[0].head), (0, 0));
    }
}
