//! Few-shot evaluation: prompts -> token sequences -> log-likelihoods -> metrics.
//!
//! Scoring follows the authors' harness (spec 4.2): context and continuation tokenized
//! separately and concatenated (an empty context becomes `[eos]`), input
//! `(ctx + cont)[-(L+1):][:-1]` (left truncation to the model's context length L), score = summed
//! log-probabilities of the continuation tokens, `is_greedy` = every continuation token is the
//! argmax. [`Tokenization::LmEval04`] instead tokenizes context + continuation jointly the way
//! lm-eval 0.4 does (`_encode_pair`), and adds its COPA double space.
//!
//! Speed: each example is one row of a tree layout ([`Layout::tree`]): the longest common token
//! prefix of its options' inputs (capped at the shortest context) is computed once and each
//! option's remaining tokens form a branch that sees the prefix and itself. Logits are computed
//! only at the positions that predict continuation tokens. Rows are sorted by length and batched;
//! results do not depend on batch size or order (tests/eval.rs checks this to 1e-5).

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, D};
use serde::Serialize;

use crate::model::{log_softmax_last_dim, Keep, Layout, Mask, Model, PassInput, TreeRow};
use crate::tasks::prompt::{build_prompts, Prompt};
use crate::tasks::{Item, Metric, SplitInfo, SplitMix64, Task, TieBreak};
use crate::tokenizer::Tokenizer;

/// How a (context, continuation) pair becomes tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tokenization {
    /// The authors' harness: `encode(ctx) + encode(cont)`.
    #[default]
    Authors,
    /// lm-eval 0.4: trailing context spaces move to the continuation, `encode(ctx + cont)` is
    /// split at `len(encode(ctx))`; COPA's continuation gets lm-eval 0.4's extra leading space.
    /// A pair whose continuation comes out empty falls back to separate tokenization (counted).
    LmEval04,
}

impl std::str::FromStr for Tokenization {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "authors" => Self::Authors,
            "lm-eval-0.4" | "lm-eval" | "joint" => Self::LmEval04,
            o => bail!("unknown scoring `{o}` (expected authors or lm-eval-0.4)"),
        })
    }
}

/// One option as tokens: the whole (truncated) sequence `ctx + cont`, the last `n_cont` of
/// which are scored.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedOption {
    pub ids: Vec<u32>,
    pub n_cont: usize,
}

/// One example's options as tokens.
#[derive(Clone, Debug, Default)]
pub struct Encoded {
    pub options: Vec<EncodedOption>,
    /// Options whose sequence was cut on the left to fit the context.
    pub truncated: usize,
    /// Options where joint tokenization left no continuation token (lm-eval 0.4 mode only).
    pub joint_fallbacks: usize,
}

/// Tokenizes one example's (context, continuation) pairs and truncates them to `max_len`
/// input tokens. `origin` names the document in errors.
pub fn encode_example(
    tok: &Tokenizer,
    requests: &[(String, String)],
    mode: Tokenization,
    max_len: usize,
    empty_context: u32,
    origin: &str,
) -> Result<Encoded> {
    let mut out = Encoded::default();
    let mut ctx_cache: HashMap<&str, Vec<u32>> = HashMap::new();
    for (i, (ctx, cont)) in requests.iter().enumerate() {
        let (mut ctx_ids, cont_ids) = match mode {
            Tokenization::Authors => {
                let c = match ctx_cache.get(ctx.as_str()) {
                    Some(v) => v.clone(),
                    None => {
                        let v = tok.encode(ctx)?;
                        ctx_cache.insert(ctx.as_str(), v.clone());
                        v
                    }
                };
                (c, tok.encode(cont)?)
            }
            Tokenization::LmEval04 => {
                let n_spaces = ctx.len() - ctx.trim_end().len();
                let (c, k) = (&ctx[..ctx.len() - n_spaces], format!("{}{cont}", &ctx[ctx.len() - n_spaces..]));
                let whole = tok.encode(&format!("{c}{k}"))?;
                let c_ids = tok.encode(c)?;
                let k_ids = whole.get(c_ids.len()..).unwrap_or_default().to_vec();
                if k_ids.is_empty() && !k.is_empty() {
                    out.joint_fallbacks += 1;
                    (c_ids, tok.encode(&k)?)
                } else {
                    (c_ids, k_ids)
                }
            }
        };
        if cont_ids.is_empty() {
            bail!("{origin}: option {i}'s continuation {cont:?} tokenizes to no tokens; there is nothing to score");
        }
        if ctx_ids.is_empty() {
            ctx_ids.push(empty_context);
        }
        if cont_ids.len() > max_len {
            bail!(
                "{origin}: option {i}'s continuation has {} tokens, more than the model's context of {max_len}",
                cont_ids.len()
            );
        }
        let mut ids = ctx_ids;
        let n_cont = cont_ids.len();
        ids.extend(cont_ids);
        if ids.len() > max_len + 1 {
            ids.drain(..ids.len() - (max_len + 1));
            out.truncated += 1;
        }
        out.options.push(EncodedOption { ids, n_cont });
    }
    Ok(out)
}

/// Log-likelihood of one option's continuation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct OptionScore {
    /// Summed log-probability of the continuation tokens.
    pub ll: f64,
    /// Every continuation token is the argmax of its predicting logits.
    pub greedy: bool,
    /// Continuation tokens.
    pub tokens: usize,
}

/// Work done, counted against a naive evaluation that runs every option as its own sequence and
/// computes logits at every position (what the harness does).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Cost {
    pub batches: usize,
    pub rows: usize,
    /// Tokens through the transformer, padding included.
    pub tokens: usize,
    /// The same without padding.
    pub real_tokens: usize,
    /// Tokens a naive per-option evaluation puts through the transformer.
    pub naive_tokens: usize,
    /// Positions where logits were computed.
    pub logit_rows: usize,
    pub naive_logit_rows: usize,
    /// Estimated forward FLOPs: 2 x block parameters per token, dense attention
    /// (4 x T^2 x heads x head_dim per layer and row), 2 x D x V per logit row.
    pub flops: f64,
    pub naive_flops: f64,
}

impl Cost {
    pub fn add(&mut self, o: &Cost) {
        self.batches += o.batches;
        self.rows += o.rows;
        self.tokens += o.tokens;
        self.real_tokens += o.real_tokens;
        self.naive_tokens += o.naive_tokens;
        self.logit_rows += o.logit_rows;
        self.naive_logit_rows += o.naive_logit_rows;
        self.flops += o.flops;
        self.naive_flops += o.naive_flops;
    }
    pub fn flop_ratio(&self) -> f64 {
        if self.naive_flops > 0.0 {
            self.flops / self.naive_flops
        } else {
            0.0
        }
    }
    pub fn token_ratio(&self) -> f64 {
        if self.naive_tokens > 0 {
            self.tokens as f64 / self.naive_tokens as f64
        } else {
            0.0
        }
    }
}

/// FLOP constants of a model.
#[derive(Clone, Copy, Debug)]
struct FlopModel {
    per_token: f64,
    per_pair: f64,
    per_logit: f64,
}

impl FlopModel {
    fn of(model: &Model) -> Self {
        let block_params: usize = model.blocks.n_params();
        let i = &model.info;
        Self {
            per_token: 2.0 * block_params as f64,
            per_pair: (4 * i.n_layers * i.n_heads * i.head_dim) as f64,
            per_logit: 2.0 * (i.hidden * i.vocab_size) as f64,
        }
    }
    fn naive(&self, lens: impl Iterator<Item = usize>) -> f64 {
        lens.map(|n| {
            let n = n as f64;
            self.per_token * n + self.per_pair * n * n + self.per_logit * n
        })
        .sum()
    }
}

/// Batching knobs.
#[derive(Clone, Copy, Debug)]
pub struct ScoreOptions {
    /// Examples (tree rows) per forward pass at most.
    pub batch_size: usize,
    /// Padded tokens per forward pass at most (bounds the T x T attention memory); a single
    /// longer row still runs alone.
    pub max_batch_tokens: usize,
    /// A row joins a batch only while padding stays within this fraction of the batch's tokens
    /// (rows are sorted by length, so this closes a batch where lengths drop).
    pub max_padding: f64,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self { batch_size: 16, max_batch_tokens: 8192, max_padding: 0.1 }
    }
}

/// An example laid out as one tree row.
struct Plan {
    row: TreeRow,
    ids: Vec<u32>,
    /// Per option: (index in the row predicting the token, target id).
    targets: Vec<Vec<(usize, u32)>>,
}

fn plan(e: &Encoded) -> Plan {
    let inputs: Vec<&[u32]> = e.options.iter().map(|o| &o.ids[..o.ids.len() - 1]).collect();
    let min_ctx = e.options.iter().map(|o| o.ids.len() - o.n_cont).min().unwrap_or(0);
    let first = inputs.first().copied().unwrap_or_default();
    let mut p = 0;
    while p < min_ctx && p < first.len() && inputs.iter().all(|u| u.len() > p && u[p] == first[p]) {
        p += 1;
    }
    let mut ids: Vec<u32> = first[..p].to_vec();
    let mut branches = Vec::new();
    let mut targets = Vec::new();
    for (o, u) in e.options.iter().zip(&inputs) {
        let start = ids.len();
        ids.extend_from_slice(&u[p..]);
        branches.push(u.len() - p);
        let n = o.ids.len();
        let t: Vec<(usize, u32)> = (n - o.n_cont..n)
            .map(|t| {
                let q = t - 1; // input position predicting token t
                let at = if q < p { q } else { start + q - p };
                (at, o.ids[t])
            })
            .collect();
        targets.push(t);
    }
    Plan { row: TreeRow { prefix: p, branches }, ids, targets }
}

/// Scores every option of every example with shared-prefix tree batches. `progress` is told
/// how many examples each finished batch held.
pub fn score(
    model: &Model,
    examples: &[Encoded],
    mask: Option<&Mask>,
    opts: &ScoreOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<Vec<OptionScore>>, Cost)> {
    let fm = FlopModel::of(model);
    let plans: Vec<Plan> = examples.iter().map(plan).collect();
    let mut order: Vec<usize> = (0..plans.len()).collect();
    // Longest first (the harness's order): padding stays small and memory peaks early.
    order.sort_by_key(|&i| (std::cmp::Reverse(plans[i].ids.len()), i));
    let mut out: Vec<Vec<OptionScore>> = vec![vec![]; plans.len()];
    let mut cost = Cost::default();
    // Batches first (ranges of `order`), then groups of batches: with streamed weights a group
    // goes through each block together (one materialisation per block per group); resident,
    // a group is one batch. The batches, and so the numbers, are the same either way.
    let mut batches: Vec<(usize, usize)> = Vec::new();
    let mut s = 0;
    while s < order.len() {
        let t = plans[order[s]].ids.len().max(1);
        let mut e = s + 1;
        let mut real = t;
        while e < order.len() && e - s < opts.batch_size.max(1) && (e - s + 1) * t <= opts.max_batch_tokens {
            let n = plans[order[e]].ids.len();
            let padded = (e - s + 1) * t;
            if (padded - real - n) as f64 > opts.max_padding * padded as f64 {
                break;
            }
            real += n;
            e += 1;
        }
        batches.push((s, e));
        s = e;
    }
    // Each token keeps its residual stream `[D]` alive across the group.
    let group_tokens = crate::model::stack::group_tokens(model, model.info.hidden * model.blocks.dtype().size_in_bytes());
    let padded: Vec<usize> = batches.iter().map(|&(s, e)| plans[order[s]].ids.len().max(1) * (e - s)).collect();
    for range in crate::model::stack::group_ranges(&padded, group_tokens) {
        let batches_here = &batches[range];
        let group: Vec<Vec<&Plan>> = batches_here.iter().map(|&(s, e)| order[s..e].iter().map(|&i| &plans[i]).collect()).collect();
        let inputs: Vec<(Tensor, Layout)> = group.iter().map(|b| batch_input(model, b)).collect::<Result<_>>()?;
        let passes: Vec<PassInput<'_>> = inputs.iter().map(|(ids, layout)| PassInput { ids, layout, mask }).collect();
        let hiddens = model.forward_layers_group(&passes, Keep::OUTPUT, &mut |_, _, _, _, _| Ok(()))?;
        for ((batch, &(s, e)), hidden) in group.iter().zip(batches_here).zip(hiddens) {
            let (scores, c) = score_hidden(model, batch, hidden, &fm)?;
            for (k, sc) in order[s..e].iter().zip(scores) {
                out[*k] = sc;
            }
            cost.add(&c);
            progress(e - s);
        }
    }
    for e in examples {
        cost.naive_tokens += e.options.iter().map(|o| o.ids.len() - 1).sum::<usize>();
        cost.naive_logit_rows += e.options.iter().map(|o| o.ids.len() - 1).sum::<usize>();
        cost.naive_flops += fm.naive(e.options.iter().map(|o| o.ids.len() - 1));
    }
    Ok((out, cost))
}

/// One batch of tree rows as model input: ids `[B, T]` (right-padded) and its tree layout.
fn batch_input(model: &Model, batch: &[&Plan]) -> Result<(Tensor, Layout)> {
    let dev = &model.device;
    let b = batch.len();
    let t = batch.iter().map(|p| p.ids.len()).max().unwrap_or(0).max(1);
    let mut flat = Vec::with_capacity(b * t);
    for p in batch {
        flat.extend_from_slice(&p.ids);
        flat.resize(flat.len() + t - p.ids.len(), 0);
    }
    let rows: Vec<TreeRow> = batch.iter().map(|p| p.row.clone()).collect();
    let ids = Tensor::from_vec(flat, (b, t), dev)?;
    let layout = Layout::tree(&rows, t, model.info.sliding_window, dev)?;
    Ok((ids, layout))
}

/// Scores one batch from the residual stream after its last block, hidden `[B, T, D]`:
/// logits only at the rows that predict an option token.
fn score_hidden(model: &Model, batch: &[&Plan], hidden: Tensor, fm: &FlopModel) -> Result<(Vec<Vec<OptionScore>>, Cost)> {
    let b = batch.len();
    let t = batch.iter().map(|p| p.ids.len()).max().unwrap_or(0).max(1);
    let dev = &hidden.device().clone(); // the last layer's device (placement)
    let d = hidden.dim(D::Minus1)?;
    let hidden = hidden.reshape((b * t, d))?;
    let mut index = Vec::new();
    let mut target = Vec::new();
    for (r, p) in batch.iter().enumerate() {
        for opt in &p.targets {
            for &(at, id) in opt {
                index.push((r * t + at) as u32);
                target.push(id);
            }
        }
    }
    let n = index.len();
    let picked = hidden.index_select(&Tensor::from_vec(index, n, dev)?, 0)?; // [N, D]
    let lp = log_softmax_last_dim(&model.logits(&picked)?)?; // [N, V]
    let tgt = Tensor::from_vec(target.clone(), (n, 1), lp.device())?;
    let ll: Vec<f32> = lp.gather(&tgt, 1)?.squeeze(1)?.to_dtype(DType::F32)?.to_vec1()?;
    let am: Vec<u32> = lp.argmax(D::Minus1)?.to_vec1()?;
    let mut out = Vec::with_capacity(b);
    let mut k = 0;
    for p in batch {
        let mut ex = Vec::with_capacity(p.targets.len());
        for opt in &p.targets {
            let mut s = 0f64;
            let mut greedy = true;
            for _ in opt {
                s += ll[k] as f64;
                greedy &= am[k] == target[k];
                k += 1;
            }
            ex.push(OptionScore { ll: s, greedy, tokens: opt.len() });
        }
        out.push(ex);
    }
    let cost = Cost {
        batches: 1,
        rows: b,
        tokens: b * t,
        real_tokens: batch.iter().map(|p| p.ids.len()).sum(),
        logit_rows: n,
        flops: fm.per_token * (b * t) as f64 + fm.per_pair * (b * t * t) as f64 + fm.per_logit * n as f64,
        ..Default::default()
    };
    Ok((out, cost))
}

/// Reference scoring: each option as its own full sequence through [`Model::forward`], logits at
/// every position (what the harness does). For tests and the FLOP comparison.
pub fn score_naive(model: &Model, examples: &[Encoded], mask: Option<&Mask>) -> Result<Vec<Vec<OptionScore>>> {
    let mut out = Vec::new();
    for e in examples {
        let mut ex = Vec::new();
        for o in &e.options {
            let input = &o.ids[..o.ids.len() - 1];
            let ids = model.batch_ids(&[input.to_vec()])?;
            let hidden = model.forward_hidden(&ids, mask, None)?.get(0)?; // [T, D]
            let lp = log_softmax_last_dim(&model.logits(&hidden)?)?; // [T, V]
            let lp: Vec<Vec<f32>> = lp.to_vec2()?;
            let n = o.ids.len();
            let mut s = 0f64;
            let mut greedy = true;
            for t in n - o.n_cont..n {
                let row = &lp[t - 1];
                s += row[o.ids[t] as usize] as f64;
                let best = row.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |a, (j, &v)| if v > a.1 { (j, v) } else { a });
                greedy &= best.0 as u32 == o.ids[t];
            }
            ex.push(OptionScore { ll: s, greedy, tokens: o.n_cont });
        }
        out.push(ex);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// The argmax with the task's tie rule.
pub fn predict(values: &[f64], ties: TieBreak) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        let better = match ties {
            TieBreak::First => v > values[best],
            TieBreak::Last => v >= values[best],
        };
        if better {
            best = i;
        }
    }
    best
}

/// SQuAD answer normalization: lower case, drop punctuation and articles, squeeze whitespace.
pub fn squad_normalize(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    no_punct.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).collect::<Vec<_>>().join(" ")
}

/// SQuAD token F1.
pub fn squad_f1(pred: &str, gold: &str) -> f64 {
    let p = squad_normalize(pred);
    let g = squad_normalize(gold);
    let pt: Vec<&str> = p.split_whitespace().collect();
    let gt: Vec<&str> = g.split_whitespace().collect();
    if pt.is_empty() || gt.is_empty() {
        return (pt == gt) as u8 as f64;
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for w in &gt {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0;
    for w in &pt {
        if let Some(c) = counts.get_mut(w) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let prec = common as f64 / pt.len() as f64;
    let rec = common as f64 / gt.len() as f64;
    2.0 * prec * rec / (prec + rec)
}

/// One evaluated example, with every option's log-likelihood.
#[derive(Clone, Debug, Serialize)]
pub struct ExampleRecord {
    /// Index in the task's evaluation list.
    pub doc: usize,
    pub id: String,
    pub origin: String,
    /// Ids of the demonstrations (pool documents), in prompt order.
    pub demos: Vec<String>,
    pub gold: usize,
    pub pred: usize,
    pub ll: Vec<f64>,
    pub greedy: Vec<bool>,
    pub tokens: Vec<usize>,
    pub acc: f64,
    pub acc_norm: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub em: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Options cut on the left to fit the context.
    pub truncated: usize,
}

/// A metric's mean over examples (or questions for acc_all) and the standard error of the mean
/// (sample standard deviation / sqrt(n), as the harness).
#[derive(Clone, Debug, Serialize)]
pub struct MetricValue {
    pub name: String,
    pub value: f64,
    pub stderr: f64,
    pub n: usize,
}

pub fn mean_stderr(name: &str, xs: &[f64]) -> MetricValue {
    let n = xs.len();
    let mean = if n > 0 { xs.iter().sum::<f64>() / n as f64 } else { f64::NAN };
    let stderr = if n > 1 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() / (n as f64).sqrt()
    } else {
        f64::NAN
    };
    MetricValue { name: name.into(), value: mean, stderr, n }
}

fn record(item: &Item, doc: usize, demos: Vec<String>, scores: &[OptionScore], ties: TieBreak, truncated: usize) -> ExampleRecord {
    let ll: Vec<f64> = scores.iter().map(|s| s.ll).collect();
    let pred = predict(&ll, ties);
    let normed: Vec<f64> =
        ll.iter().zip(&item.choices).map(|(l, c)| l / (c.text.chars().count().max(1) as f64)).collect();
    let pred_norm = predict(&normed, ties);
    let (em, f1) = if item.answers.is_empty() {
        (None, None)
    } else {
        let p = &item.choices[pred].text;
        let em = item.answers.iter().any(|a| squad_normalize(a) == squad_normalize(p)) as u8 as f64;
        let f1 = item.answers.iter().map(|a| squad_f1(p, a)).fold(0.0, f64::max);
        (Some(em), Some(f1))
    };
    ExampleRecord {
        doc,
        id: item.id.clone(),
        origin: item.origin.clone(),
        demos,
        gold: item.gold,
        pred,
        greedy: scores.iter().map(|s| s.greedy).collect(),
        tokens: scores.iter().map(|s| s.tokens).collect(),
        ll,
        acc: (pred == item.gold) as u8 as f64,
        acc_norm: (pred_norm == item.gold) as u8 as f64,
        em,
        f1,
        group: item.group.clone(),
        truncated,
    }
}

/// Every metric that applies to `metric`'s task, the headline one first.
pub fn summarize(records: &[ExampleRecord], metric: Metric) -> Vec<MetricValue> {
    let col = |f: &dyn Fn(&ExampleRecord) -> f64| records.iter().map(f).collect::<Vec<f64>>();
    match metric {
        Metric::Acc | Metric::AccNorm => {
            let acc = mean_stderr("acc", &col(&|r| r.acc));
            let norm = mean_stderr("acc_norm", &col(&|r| r.acc_norm));
            if metric == Metric::Acc {
                vec![acc, norm]
            } else {
                vec![norm, acc]
            }
        }
        Metric::AccAll => {
            let mut groups: std::collections::BTreeMap<String, bool> = Default::default();
            for r in records {
                let g = r.group.clone().unwrap_or_else(|| r.id.clone());
                let e = groups.entry(g).or_insert(true);
                *e &= r.acc == 1.0;
            }
            let per_q: Vec<f64> = groups.values().map(|&b| b as u8 as f64).collect();
            vec![mean_stderr("acc_all", &per_q), mean_stderr("acc", &col(&|r| r.acc))]
        }
        Metric::Em => vec![
            mean_stderr("em", &col(&|r| r.em.unwrap_or(0.0))),
            mean_stderr("f1", &col(&|r| r.f1.unwrap_or(0.0))),
        ],
        Metric::Greedy => {
            let acc = mean_stderr("acc", &col(&|r| r.greedy.first().copied().unwrap_or(false) as u8 as f64));
            let lls = col(&|r| r.ll.first().copied().unwrap_or(f64::NAN));
            let mean_ll = lls.iter().sum::<f64>() / lls.len().max(1) as f64;
            vec![acc, MetricValue { name: "ppl".into(), value: (-mean_ll).exp(), stderr: f64::NAN, n: lls.len() }]
        }
    }
}

/// What to evaluate.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    pub shots: usize,
    /// The first N documents of the seeded evaluation order.
    pub limit: Option<usize>,
    /// Seeds the evaluation order and the demonstrations.
    pub seed: u64,
    pub tokenization: Tokenization,
    pub score: ScoreOptions,
    /// Truncate inputs to this many tokens instead of the model's context length (the
    /// authors: 2048, OPT's).
    pub max_length: Option<usize>,
}

impl EvalConfig {
    /// The input length inputs are left-truncated to.
    pub fn max_len(&self, model: &Model) -> usize {
        self.max_length.map_or(model.info.context_length, |m| m.min(model.info.context_length))
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            shots: 0,
            limit: None,
            seed: 1234,
            tokenization: Tokenization::Authors,
            score: ScoreOptions::default(),
            max_length: None,
        }
    }
}

/// A run's summary (the JSON written next to the per-example records).
#[derive(Clone, Debug, Serialize)]
pub struct EvalSummary {
    pub task: String,
    pub shots: usize,
    pub metric: String,
    pub value: f64,
    pub stderr: f64,
    pub n: usize,
    pub metrics: Vec<MetricValue>,
    pub seed: u64,
    pub limit: Option<usize>,
    pub tokenization: Tokenization,
    pub split: SplitInfo,
    pub context_length: usize,
    pub truncated_options: usize,
    pub truncated_examples: usize,
    pub joint_fallbacks: usize,
    pub cost: Cost,
    pub flop_ratio: f64,
    pub token_ratio: f64,
    pub seconds: f64,
    pub examples_per_s: f64,
}

pub struct EvalOutput {
    pub summary: EvalSummary,
    /// In evaluation-list order.
    pub records: Vec<ExampleRecord>,
}

/// The evaluation documents a config selects: a seeded shuffle of the evaluation list (so
/// `--limit` is a random subsample, as the harness's seed-42 shuffle), first `limit`.
pub fn selected_docs(task: &Task, cfg: &EvalConfig) -> Vec<usize> {
    let mut order = SplitMix64::for_key(cfg.seed, 0x0_4d_e2, 0).permutation(task.eval.len());
    if let Some(l) = cfg.limit {
        order.truncate(l);
    }
    order
}

/// Token id used for an empty context: eos (the authors), else bos.
pub fn empty_context_token(model: &Model, tok: &Tokenizer) -> Result<u32> {
    model
        .info
        .eos_token_id
        .or(tok.eos_id())
        .or(model.info.bos_token_id)
        .or(tok.bos_id())
        .context("the model has no eos or bos token to stand for an empty context")
}

/// Builds the prompts of `docs` and tokenizes them.
pub fn prepare(task: &Task, docs: &[usize], cfg: &EvalConfig, tok: &Tokenizer, model: &Model) -> Result<(Vec<Prompt>, Vec<Encoded>)> {
    let prompts = build_prompts(task, docs, cfg.shots, cfg.seed)?;
    let empty = empty_context_token(model, tok)?;
    let encoded = prompts
        .iter()
        .map(|p| {
            let item = &task.eval[p.doc];
            let reqs: Vec<(String, String)> = if cfg.tokenization == Tokenization::LmEval04 && task.lm_eval04_double_space {
                p.requests.iter().map(|(c, k)| (c.clone(), format!(" {k}"))).collect()
            } else {
                p.requests.clone()
            };
            encode_example(tok, &reqs, cfg.tokenization, cfg.max_len(model), empty, &item.origin)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((prompts, encoded))
}

/// Evaluates a task at one shot count under an optional mask.
pub fn evaluate(
    model: &Model,
    tok: &Tokenizer,
    task: &Task,
    cfg: &EvalConfig,
    mask: Option<&Mask>,
    progress: &mut dyn FnMut(usize),
) -> Result<EvalOutput> {
    let start = std::time::Instant::now();
    let docs = selected_docs(task, cfg);
    let (prompts, encoded) = prepare(task, &docs, cfg, tok, model)?;
    let mut out = evaluate_prepared(model, task, cfg, &prompts, &encoded, mask, progress)?;
    // Count prompt building and tokenization too.
    out.summary.seconds = start.elapsed().as_secs_f64();
    out.summary.examples_per_s = out.records.len() as f64 / out.summary.seconds.max(1e-9);
    Ok(out)
}

/// [`evaluate`] on prompts already built and tokenized by [`prepare`]: a pruning sweep prepares
/// once and scores under every mask (the prompts do not depend on the mask).
pub fn evaluate_prepared(
    model: &Model,
    task: &Task,
    cfg: &EvalConfig,
    prompts: &[Prompt],
    encoded: &[Encoded],
    mask: Option<&Mask>,
    progress: &mut dyn FnMut(usize),
) -> Result<EvalOutput> {
    let start = std::time::Instant::now();
    let (scores, cost) = score(model, encoded, mask, &cfg.score, progress)?;
    let mut records: Vec<ExampleRecord> = prompts
        .iter()
        .zip(&scores)
        .zip(encoded)
        .map(|((p, s), e)| {
            let demos = p.demos.iter().map(|&j| task.pool[j].id.clone()).collect();
            record(&task.eval[p.doc], p.doc, demos, s, task.ties, e.truncated)
        })
        .collect();
    records.sort_by_key(|r| r.doc);
    let metrics = summarize(&records, task.metric);
    let seconds = start.elapsed().as_secs_f64();
    let head = metrics[0].clone();
    let summary = EvalSummary {
        task: task.name.clone(),
        shots: cfg.shots,
        metric: head.name.clone(),
        value: head.value,
        stderr: head.stderr,
        n: head.n,
        metrics,
        seed: cfg.seed,
        limit: cfg.limit,
        tokenization: cfg.tokenization,
        split: task.split.clone(),
        context_length: cfg.max_len(model),
        truncated_options: encoded.iter().map(|e| e.truncated).sum(),
        truncated_examples: encoded.iter().filter(|e| e.truncated > 0).count(),
        joint_fallbacks: encoded.iter().map(|e| e.joint_fallbacks).sum(),
        flop_ratio: cost.flop_ratio(),
        token_ratio: cost.token_ratio(),
        cost,
        seconds,
        examples_per_s: records.len() as f64 / seconds.max(1e-9),
    };
    Ok(EvalOutput { summary, records })
}

impl EvalSummary {
    /// The headline number as the pruning sweep records it.
    pub fn point(&self) -> crate::prune::EvalPoint {
        crate::prune::EvalPoint { metric: self.metric.clone(), value: self.value, n: self.n, stderr: self.stderr }
    }
}
