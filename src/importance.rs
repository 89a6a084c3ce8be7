//! Gradient importance of every attention head `[L, H]` and FFN block `[L]` (spec 3.1).
//!
//! Default = the authors' code: for each example (its own loss, eq. 9: mean NLL of the gold
//! continuation), per layer l, head h and token t, dot = <o_{l,h,t}, dL/do_{l,h,t}>;
//! S[l,h] += sum_t |dot| (abs per token, before summing), over all positions; then
//! I[l,h] = S[l,h] / Z_l with Z_l = sum_i (N_i - 1) for l < L-1 and Z_{L-1} = sum_i T_{y,i}
//! (the last layer only receives gradient at the scored positions). FFNs the same way, with a
//! gate on each FFN branch's output.
//!
//! Sums are kept raw in f64 with their counts ([`ImportanceSums`]), so shards add up exactly
//! and any normalization can be applied afterwards.

use anyhow::{bail, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::model::{GradInput, Layout, Mask, Model, PassInput, Target};
use crate::tokenizer::Tokenizer;

/// Where the absolute value is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AbsMode {
    /// sum_t |dot_t| per example: the authors' code (default).
    PerToken,
    /// |sum_t dot_t| per example: eq. 8 literally, Michel et al.
    PerExample,
    /// |sum over the batch and tokens|: Michel's code with batches (depends on batching).
    PerBatch,
}

/// How raw sums become scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// S / sum(N_i - 1), last layer S / sum(T_y): the authors' code (default).
    Authors,
    /// S / sum(N_i - 1) for every layer.
    Tokens,
    /// Raw sums.
    None,
    /// Michel et al.: S / sum(N_i), then per-layer L2 (heads), then global min-max to [0, 1].
    Michel,
}

/// One prompt: the context and the gold continuation whose likelihood is the loss.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    pub context: String,
    pub continuation: String,
}

/// A prompt as token ids, context and continuation tokenized separately (the authors' way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedPrompt {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

impl TokenizedPrompt {
    pub fn len(&self) -> usize {
        self.context.len() + self.continuation.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tokenizes prompts: an empty context becomes `[eos]` (the authors' harness, spec 2.4); an
/// empty continuation is an error; prompts longer than `max_len` lose context tokens from the
/// left. Returns the prompts and how many were truncated.
pub fn tokenize_prompts(tok: &Tokenizer, prompts: &[Prompt], max_len: usize) -> Result<(Vec<TokenizedPrompt>, usize)> {
    let mut out = Vec::with_capacity(prompts.len());
    let mut truncated = 0;
    for (i, p) in prompts.iter().enumerate() {
        let mut context = tok.encode(&p.context)?;
        let continuation = tok.encode(&p.continuation)?;
        if continuation.is_empty() {
            bail!("prompt {}: the continuation {:?} tokenizes to nothing", i + 1, p.continuation);
        }
        if context.is_empty() {
            match tok.eos_id().or(tok.bos_id()) {
                Some(e) => context.push(e),
                None => bail!("prompt {}: empty context and the tokenizer has no eos/bos token to stand in", i + 1),
            }
        }
        if continuation.len() >= max_len {
            bail!("prompt {}: the continuation alone has {} tokens, the model takes {max_len}", i + 1, continuation.len());
        }
        if context.len() + continuation.len() > max_len {
            let keep = max_len - continuation.len();
            context.drain(..context.len() - keep);
            truncated += 1;
        }
        out.push(TokenizedPrompt { context, continuation });
    }
    Ok((out, truncated))
}

/// Raw importance sums and the counts every normalization needs. Additive: two shards'
/// sums merged equal the whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportanceSums {
    pub n_layers: usize,
    pub n_heads: usize,
    pub abs_mode: AbsMode,
    /// `[L * H]`, layer-major.
    pub head_abs: Vec<f64>,
    /// `[L]`.
    pub ffn_abs: Vec<f64>,
    pub examples: u64,
    /// sum_i (N_i - 1): positions that receive gradient (the authors' Z for layers < L-1).
    pub tokens_minus_one: u64,
    /// sum_i T_{y,i}: scored tokens (the authors' Z for the last layer).
    pub label_tokens: u64,
    /// sum_i N_i (Michel's denominator).
    pub tokens: u64,
    /// sum_i L_i, the per-example losses.
    pub loss_sum: f64,
}

impl ImportanceSums {
    pub fn new(n_layers: usize, n_heads: usize, abs_mode: AbsMode) -> Self {
        Self {
            n_layers,
            n_heads,
            abs_mode,
            head_abs: vec![0.0; n_layers * n_heads],
            ffn_abs: vec![0.0; n_layers],
            examples: 0,
            tokens_minus_one: 0,
            label_tokens: 0,
            tokens: 0,
            loss_sum: 0.0,
        }
    }

    /// Adds another shard's sums (same shape and abs mode).
    pub fn merge(&mut self, other: &ImportanceSums) -> Result<()> {
        if (self.n_layers, self.n_heads, self.abs_mode) != (other.n_layers, other.n_heads, other.abs_mode) {
            bail!(
                "cannot merge importance sums of shape {}x{} ({:?}) with {}x{} ({:?})",
                self.n_layers,
                self.n_heads,
                self.abs_mode,
                other.n_layers,
                other.n_heads,
                other.abs_mode
            );
        }
        self.head_abs.iter_mut().zip(&other.head_abs).for_each(|(a, b)| *a += b);
        self.ffn_abs.iter_mut().zip(&other.ffn_abs).for_each(|(a, b)| *a += b);
        self.examples += other.examples;
        self.tokens_minus_one += other.tokens_minus_one;
        self.label_tokens += other.label_tokens;
        self.tokens += other.tokens;
        self.loss_sum += other.loss_sum;
        Ok(())
    }

    /// Normalized scores.
    pub fn scores(&self, normalize: Normalize) -> Scores {
        let (l_n, h_n) = (self.n_layers, self.n_heads);
        let per = |x: u64| if x == 0 { 0.0 } else { 1.0 / x as f64 };
        let layer_scale = |l: usize| match normalize {
            Normalize::Authors if l + 1 == l_n => per(self.label_tokens),
            Normalize::Authors | Normalize::Tokens => per(self.tokens_minus_one),
            Normalize::None => 1.0,
            Normalize::Michel => per(self.tokens),
        };
        let mut heads: Vec<Vec<f64>> =
            (0..l_n).map(|l| self.head_abs[l * h_n..(l + 1) * h_n].iter().map(|x| x * layer_scale(l)).collect()).collect();
        let mut ffns: Vec<f64> = (0..l_n).map(|l| self.ffn_abs[l] * layer_scale(l)).collect();
        if normalize == Normalize::Michel {
            for row in heads.iter_mut() {
                let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt() + 1e-20;
                row.iter_mut().for_each(|x| *x /= norm);
            }
            min_max(heads.iter_mut().flatten());
            // One FFN per layer: a per-layer L2 would make every score 1, so FFNs get min-max only.
            min_max(ffns.iter_mut());
        }
        Scores { heads, ffns, normalize }
    }

    pub fn mean_loss(&self) -> f64 {
        if self.examples == 0 { f64::NAN } else { self.loss_sum / self.examples as f64 }
    }
}

fn min_max<'a>(xs: impl Iterator<Item = &'a mut f64>) {
    let v: Vec<&mut f64> = xs.collect();
    let lo = v.iter().map(|x| **x).fold(f64::INFINITY, f64::min);
    let hi = v.iter().map(|x| **x).fold(f64::NEG_INFINITY, f64::max);
    let span = hi - lo;
    for x in v {
        *x = if span > 0.0 { (*x - lo) / span } else { 0.0 };
    }
}

/// Normalized importance: `heads[l][h]`, `ffns[l]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub heads: Vec<Vec<f64>>,
    pub ffns: Vec<f64>,
    pub normalize: Normalize,
}

/// Per-example contributions (per_token / per_example modes), for bootstrap intervals later.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExampleContribution {
    pub head_abs: Vec<f32>,
    pub ffn_abs: Vec<f32>,
    pub tokens: u32,
    pub label_tokens: u32,
    /// The example's loss (eq. 9), so a baseline can be checked example by example; files
    /// written before it existed read as 0.
    #[serde(default)]
    pub loss: f64,
}

#[derive(Clone, Debug)]
pub struct ImportanceOptions {
    pub abs_mode: AbsMode,
    /// Examples per forward/backward (1 = the authors'). per_token and per_example scores do not
    /// depend on it; per_batch scores do.
    pub batch_size: usize,
    /// Score the masked model (e.g. re-scoring after pruning); None = the full model (authors).
    pub mask: Option<Mask>,
    /// Also return each example's contribution.
    pub keep_per_example: bool,
}

impl Default for ImportanceOptions {
    fn default() -> Self {
        Self { abs_mode: AbsMode::PerToken, batch_size: 1, mask: None, keep_per_example: false }
    }
}

/// Progress after each batch: examples done and tokens processed so far.
pub type Progress<'a> = &'a mut dyn FnMut(usize, u64);

/// The batches [`accumulate`] runs, as prompt indices: longest first (so a batch pads little)
/// unless the mode is per_batch, where the given order defines the batches. Public so a
/// baseline can run the very same batches.
pub fn batches(prompts: &[TokenizedPrompt], opts: &ImportanceOptions) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    if opts.abs_mode != AbsMode::PerBatch {
        order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    }
    order.chunks(opts.batch_size.max(1)).map(<[usize]>::to_vec).collect()
}

/// Runs forward + activation-only backward over every prompt and accumulates the sums.
/// Batches hold examples of similar length (sorted) unless the mode is per_batch, where the
/// given order defines the batches.
pub fn accumulate(
    model: &Model,
    prompts: &[TokenizedPrompt],
    opts: &ImportanceOptions,
    progress: Progress,
) -> Result<(ImportanceSums, Option<Vec<ExampleContribution>>)> {
    let (l_n, h_n) = (model.n_layers(), model.n_heads());
    if opts.batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    let mut sums = ImportanceSums::new(l_n, h_n, opts.abs_mode);
    let chunks = batches(prompts, opts);
    let keep = opts.keep_per_example && opts.abs_mode != AbsMode::PerBatch;
    let mut per_example: Vec<ExampleContribution> = if keep { vec![Default::default(); prompts.len()] } else { vec![] };
    let mut done = 0;
    let mut tokens_done = 0u64;
    // Streamed weights: a group of batches goes through each block together (one
    // materialisation per block per group); resident: one batch at a time, as before. The
    // batches and their numbers are the same either way.
    // Each token keeps its residual stream and (recomputing) one saved input per block.
    let dsize = model.blocks.dtype().size_in_bytes();
    let group_tokens = crate::model::stack::group_tokens(model, (model.n_layers() + 2) * model.info.hidden * dsize);
    // Padded tokens of each batch: its longest prompt times its size.
    let padded: Vec<usize> = chunks.iter().map(|c| c.iter().map(|&i| prompts[i].len()).max().unwrap_or(0) * c.len()).collect();
    for range in crate::model::stack::group_ranges(&padded, group_tokens) {
        let group = &chunks[range];
        let mut batches = Vec::with_capacity(group.len());
        for chunk in group {
            let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| [prompts[i].context.clone(), prompts[i].continuation.clone()].concat()).collect();
            let targets: Vec<Target> = chunk
                .iter()
                .enumerate()
                .map(|(row, &i)| Target { row, start: prompts[i].context.len(), len: prompts[i].continuation.len() })
                .collect();
            batches.push((model.batch_ids(&seqs)?, targets));
        }
        let inputs: Vec<GradInput<'_>> = batches
            .iter()
            .map(|(ids, targets)| GradInput { pass: PassInput { ids, layout: &Layout::Causal, mask: opts.mask.as_ref() }, targets })
            .collect();
        let all = model.gate_gradients_group(&inputs, model.activation_policy())?;
        for (chunk, grads) in group.iter().zip(all) {
            let mut batch_heads = vec![0f64; l_n * h_n];
            let mut batch_ffns = vec![0f64; l_n];
            for l in 0..l_n {
                let hd: Vec<Vec<Vec<f32>>> = to_f32(&grads.head_dot[l])?.to_vec3()?; // [B, H, T]
                let fd: Vec<Vec<f32>> = to_f32(&grads.ffn_dot[l])?.to_vec2()?; // [B, T]
                for (row, &i) in chunk.iter().enumerate() {
                    let n = prompts[i].len();
                    for h in 0..h_n {
                        let toks = &hd[row][h][..n];
                        let v = reduce(toks, opts.abs_mode);
                        batch_heads[l * h_n + h] += v;
                        if keep {
                            per_example[i].head_abs.resize(l_n * h_n, 0.0);
                            per_example[i].head_abs[l * h_n + h] = v as f32;
                        }
                    }
                    let v = reduce(&fd[row][..n], opts.abs_mode);
                    batch_ffns[l] += v;
                    if keep {
                        per_example[i].ffn_abs.resize(l_n, 0.0);
                        per_example[i].ffn_abs[l] = v as f32;
                    }
                }
            }
            if opts.abs_mode == AbsMode::PerBatch {
                // reduce() returned signed sums: the abs is of the whole batch's sum.
                batch_heads.iter_mut().chain(batch_ffns.iter_mut()).for_each(|x| *x = x.abs());
            }
            sums.head_abs.iter_mut().zip(&batch_heads).for_each(|(a, b)| *a += b);
            sums.ffn_abs.iter_mut().zip(&batch_ffns).for_each(|(a, b)| *a += b);
            for (&i, loss) in chunk.iter().zip(&grads.losses) {
                let (n, ty) = (prompts[i].len() as u64, prompts[i].continuation.len() as u64);
                sums.examples += 1;
                sums.tokens += n;
                sums.tokens_minus_one += n - 1;
                sums.label_tokens += ty;
                sums.loss_sum += loss;
                tokens_done += n;
                if keep {
                    per_example[i].tokens = n as u32;
                    per_example[i].label_tokens = ty as u32;
                    per_example[i].loss = *loss;
                }
            }
            done += chunk.len();
            progress(done, tokens_done);
        }
    }
    Ok((sums, keep.then_some(per_example)))
}


fn to_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(candle_core::DType::F32)?)
}

/// Per example: sum of |dot| (per_token), |sum of dot| (per_example), or the signed sum
/// (per_batch, whose abs is taken over the batch).
fn reduce(dots: &[f32], mode: AbsMode) -> f64 {
    match mode {
        AbsMode::PerToken => dots.iter().map(|&x| (x as f64).abs()).sum(),
        AbsMode::PerExample => dots.iter().map(|&x| x as f64).sum::<f64>().abs(),
        AbsMode::PerBatch => dots.iter().map(|&x| x as f64).sum(),
    }
}

/// Long-form CSV rows `layer,head,score,raw_sum` (and `layer,score,raw_sum` for FFNs).
pub fn heads_csv(scores: &Scores, sums: &ImportanceSums) -> String {
    let mut s = String::from("layer,head,score,raw_sum\n");
    for (l, row) in scores.heads.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            s.push_str(&format!("{l},{h},{v:e},{:e}\n", sums.head_abs[l * sums.n_heads + h]));
        }
    }
    s
}

pub fn ffns_csv(scores: &Scores, sums: &ImportanceSums) -> String {
    let mut s = String::from("layer,score,raw_sum\n");
    for (l, v) in scores.ffns.iter().enumerate() {
        s.push_str(&format!("{l},{v:e},{:e}\n", sums.ffn_abs[l]));
    }
    s
}
