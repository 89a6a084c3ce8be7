//! Comparing importance rankings (spec 6): rank correlations with p-values, top-k% overlap with
//! its expectation under random rankings, cross-task matrices, the cross-shot table (Table 1),
//! and bootstrap intervals over examples.
//!
//! Conventions (used everywhere in this module):
//! - Head scores are flattened **layer-major**: flat index = `layer * n_heads + head`.
//! - A **ranking** is the global ascending, stable argsort of the flat scores: `ranking[r]` is the
//!   flat index of the r-th *least* important head (the pruning order, spec 10.3). Ties keep
//!   index order, so among equal scores the higher flat index counts as more important.
//!   NaN ranks as the most important ([`crate::ranking`] documents why).
//! - **Spearman** (the default statistic) is the Pearson correlation of the rank vectors, with
//!   average ranks for ties, and a two-sided p-value from the t approximation with n-2 degrees of
//!   freedom (as `scipy.stats.spearmanr`).
//! - **Argsort correlation** ([`Method::Argsort`]) is the authors' "SRCC" (spec 6.1, 9.8): the
//!   Pearson correlation between the argsort permutations (head index as a function of rank), as
//!   `scipy.stats.spearmanr(torch.sort(x)[1], ...)` computes it. It is a *different statistic*:
//!   because head indices are layer-major it mostly measures whether equal rank positions hold
//!   heads from nearby layers. Use it only to reproduce Figures 8/15 and Table 1.
//! - **Top-k% overlap** = |Top(A) ∩ Top(B)| / k with `k = floor(frac * N)` (Python's
//!   `int(0.3 * 4608) = 1382` convention), Top = the k most important heads (the last k of the
//!   ranking).
//!
//! The capacity-retained curve lives in `induction::capacity_retained`; it is not repeated here.

use anyhow::{bail, ensure, Result};
use crate::tasks::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::importance::{AbsMode, ExampleContribution, ImportanceSums, Normalize, Scores};

// ------------------------------------------------------------------------------------------------
// Special functions: log-gamma, regularized incomplete beta, Student-t tail.
//
// Written here rather than taken from `statrs`: statrs 0.19 needs rustc 1.89 (this crate supports
// 1.85) and its default features pull nalgebra; these three functions are ~60 lines, and their
// values are tested against scipy literals.
// ------------------------------------------------------------------------------------------------

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; relative error ~1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b), by the continued fraction (modified
/// Lentz), using the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly.
pub fn reg_inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x.is_nan() || a <= 0.0 || b <= 0.0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// Two-sided tail probability of Student's t: P(|T| >= |t|) with `dof` degrees of freedom,
/// = I_{dof / (dof + t²)}(dof / 2, 1 / 2).
pub fn student_t_two_sided(t: f64, dof: f64) -> f64 {
    if t.is_nan() || dof <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return 0.0;
    }
    reg_inc_beta(dof / 2.0, 0.5, dof / (dof + t * t)).clamp(0.0, 1.0)
}

fn ln_choose(n: usize, k: usize) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// Upper tail P(X >= x) of the hypergeometric distribution: `draws` items drawn without
/// replacement from `population` items of which `successes` are marked.
pub fn hypergeometric_sf(x: usize, population: usize, successes: usize, draws: usize) -> f64 {
    let lo = (draws + successes).saturating_sub(population);
    let hi = draws.min(successes);
    if x <= lo {
        return 1.0;
    }
    if x > hi {
        return 0.0;
    }
    let denom = ln_choose(population, draws);
    let p: f64 = (x..=hi)
        .map(|i| (ln_choose(successes, i) + ln_choose(population - successes, draws - i) - denom).exp())
        .sum();
    p.clamp(0.0, 1.0)
}

// ------------------------------------------------------------------------------------------------
// Rankings and correlations.
// ------------------------------------------------------------------------------------------------

/// `[L][H]` -> layer-major flat vector (flat index = layer * n_heads + head).
pub fn flatten(heads: &[Vec<f64>]) -> Vec<f64> {
    heads.iter().flatten().copied().collect()
}

/// The global ascending, stable ranking: `ranking[r]` = flat index of the r-th least important
/// (the crate's one ranking, [`crate::ranking::ascending_ranking`]; NaN ranks most important).
pub fn ranking(scores: &[f64]) -> Vec<usize> {
    crate::ranking::ascending_ranking(scores)
}

/// Ranks 1..=n with the average rank for ties (scipy's `rankdata(method="average")`).
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let order = ranking(x);
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && crate::ranking::importance_cmp(x[order[j]], x[order[i]]).is_eq() {
            j += 1;
        }
        // Positions i..j (0-based) share ranks i+1..=j: their mean is (i + 1 + j) / 2.
        let r = (i + 1 + j) as f64 / 2.0;
        for &k in &order[i..j] {
            ranks[k] = r;
        }
        i = j;
    }
    ranks
}

/// Pearson correlation; NaN when either vector is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)
}

/// Which rank statistic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Standard Spearman: Pearson of the rank vectors, average ranks for ties (default).
    Spearman,
    /// The authors' "SRCC": Pearson of the argsort permutations (spec 6.1). A different statistic.
    Argsort,
}

impl Method {
    /// A label for tables and plot titles that never lets the two statistics be confused.
    pub fn label(self) -> &'static str {
        match self {
            Method::Spearman => "Spearman rank correlation",
            Method::Argsort => "argsort correlation (authors' SRCC)",
        }
    }
}

/// A correlation, its two-sided p-value and the number of pairs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Correlation {
    pub rho: f64,
    pub p_value: f64,
    pub n: usize,
}

/// The t-approximation p-value of a correlation coefficient (scipy's): t = r √((n-2)/(1-r²)).
pub fn correlation_p_value(r: f64, n: usize) -> f64 {
    if n < 3 || r.is_nan() {
        return f64::NAN;
    }
    if r.abs() >= 1.0 {
        return 0.0;
    }
    let dof = (n - 2) as f64;
    student_t_two_sided(r * (dof / ((1.0 + r) * (1.0 - r))).sqrt(), dof)
}

fn check_pair(a: &[f64], b: &[f64]) -> Result<()> {
    ensure!(a.len() == b.len(), "cannot correlate score vectors of different lengths ({} and {})", a.len(), b.len());
    ensure!(a.len() >= 2, "need at least 2 scores to correlate, got {}", a.len());
    Ok(())
}

/// Standard Spearman rank correlation with average ranks for ties.
pub fn spearman(a: &[f64], b: &[f64]) -> Result<Correlation> {
    check_pair(a, b)?;
    let rho = pearson(&average_ranks(a), &average_ranks(b));
    Ok(Correlation { rho, p_value: correlation_p_value(rho, a.len()), n: a.len() })
}

/// The authors' statistic: Pearson correlation between the (stable) argsort permutations, with
/// scipy's p-value on those arrays (spec 6.1, 9.8). Not a rank correlation of the scores.
pub fn argsort_correlation(a: &[f64], b: &[f64]) -> Result<Correlation> {
    check_pair(a, b)?;
    let pa: Vec<f64> = ranking(a).into_iter().map(|i| i as f64).collect();
    let pb: Vec<f64> = ranking(b).into_iter().map(|i| i as f64).collect();
    let rho = pearson(&pa, &pb);
    Ok(Correlation { rho, p_value: correlation_p_value(rho, a.len()), n: a.len() })
}

pub fn correlate(method: Method, a: &[f64], b: &[f64]) -> Result<Correlation> {
    match method {
        Method::Spearman => spearman(a, b),
        Method::Argsort => argsort_correlation(a, b),
    }
}

// ------------------------------------------------------------------------------------------------
// Top-k% overlap.
// ------------------------------------------------------------------------------------------------

/// `k = floor(frac * n)`, exactly Python's `int(frac * n)` (1382 of 4608 for 30%).
pub fn top_k(n: usize, frac: f64) -> usize {
    ((frac * n as f64).floor().max(0.0) as usize).min(n)
}

/// The k most important flat indices (the last k of the ranking), most important first.
pub fn top_set(scores: &[f64], k: usize) -> Vec<usize> {
    ranking(scores).into_iter().rev().take(k).collect()
}

/// Overlap of two top-k sets, with what independent uniformly random rankings would give.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overlap {
    /// Heads ranked.
    pub n: usize,
    /// Size of each top set, floor(frac * n).
    pub k: usize,
    /// |Top(A) ∩ Top(B)|.
    pub shared: usize,
    /// shared / k.
    pub overlap: f64,
    /// E[shared / k] under independent random rankings. |Top(A) ∩ Top(B)| is then
    /// hypergeometric (population n, k marked, k drawn) with mean k²/n, so this is exactly k / n.
    pub expected: f64,
    /// P(shared >= observed) under independent random rankings (hypergeometric upper tail).
    pub p_value: f64,
}

pub fn top_overlap(a: &[f64], b: &[f64], frac: f64) -> Result<Overlap> {
    ensure!(a.len() == b.len(), "cannot overlap score vectors of different lengths ({} and {})", a.len(), b.len());
    ensure!(frac > 0.0 && frac <= 1.0, "top fraction must be in (0, 1], got {frac}");
    let n = a.len();
    let k = top_k(n, frac);
    ensure!(k > 0, "top {:.1}% of {n} heads is empty (k = floor({frac} * {n}) = 0)", frac * 100.0);
    let mut in_a = vec![false; n];
    top_set(a, k).into_iter().for_each(|i| in_a[i] = true);
    let shared = top_set(b, k).into_iter().filter(|&i| in_a[i]).count();
    Ok(Overlap {
        n,
        k,
        shared,
        overlap: shared as f64 / k as f64,
        expected: k as f64 / n as f64,
        p_value: hypergeometric_sf(shared, n, k, k),
    })
}

// ------------------------------------------------------------------------------------------------
// Matrices across tasks and shots.
// ------------------------------------------------------------------------------------------------

/// A labelled flat score vector (e.g. one task at one shot count).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreSet {
    pub label: String,
    pub scores: Vec<f64>,
}

/// Elementwise mean of the raw score vectors: the paper's "aggregate" (spec 10.3).
pub fn aggregate(sets: &[ScoreSet]) -> Result<Vec<f64>> {
    ensure!(!sets.is_empty(), "nothing to aggregate");
    let n = sets[0].scores.len();
    let mut out = vec![0.0; n];
    for s in sets {
        ensure!(s.scores.len() == n, "`{}` has {} scores, `{}` has {n}", s.label, s.scores.len(), sets[0].label);
        out.iter_mut().zip(&s.scores).for_each(|(o, x)| *o += x);
    }
    out.iter_mut().for_each(|o| *o /= sets.len() as f64);
    Ok(out)
}

/// Scores whose ranking is a uniformly random permutation (seeded): the paper's "Random" row.
/// Their ranking is `prune`'s `random:SEED` ranking for the same seed.
pub use crate::ranking::random_scores;

/// `sets` plus an "aggregate" set (mean of the others) and/or a "random" set, appended.
pub fn with_reference_rows(sets: &[ScoreSet], aggregate_row: bool, random_seed: Option<u64>) -> Result<Vec<ScoreSet>> {
    let mut out = sets.to_vec();
    if aggregate_row {
        out.push(ScoreSet { label: "aggregate".into(), scores: aggregate(sets)? });
    }
    if let Some(seed) = random_seed {
        let n = sets.first().map_or(0, |s| s.scores.len());
        out.push(ScoreSet { label: "random".into(), scores: random_scores(n, seed) });
    }
    Ok(out)
}

/// N x N correlations with p-values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorrelationMatrix {
    pub method: Method,
    pub statistic: String,
    pub labels: Vec<String>,
    pub rho: Vec<Vec<f64>>,
    pub p_value: Vec<Vec<f64>>,
    /// Heads per vector.
    pub n: usize,
}

pub fn correlation_matrix(sets: &[ScoreSet], method: Method) -> Result<CorrelationMatrix> {
    let m = sets.len();
    let mut rho = vec![vec![f64::NAN; m]; m];
    let mut p = vec![vec![f64::NAN; m]; m];
    for i in 0..m {
        for j in i..m {
            let c = correlate(method, &sets[i].scores, &sets[j].scores)
                .map_err(|e| anyhow::anyhow!("{} vs {}: {e}", sets[i].label, sets[j].label))?;
            (rho[i][j], rho[j][i], p[i][j], p[j][i]) = (c.rho, c.rho, c.p_value, c.p_value);
        }
    }
    Ok(CorrelationMatrix {
        method,
        statistic: method.label().into(),
        labels: sets.iter().map(|s| s.label.clone()).collect(),
        rho,
        p_value: p,
        n: sets.first().map_or(0, |s| s.scores.len()),
    })
}

/// N x N top-k overlaps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverlapMatrix {
    pub labels: Vec<String>,
    pub frac: f64,
    pub n: usize,
    pub k: usize,
    /// k / n: the expected overlap under independent random rankings.
    pub expected: f64,
    pub overlap: Vec<Vec<f64>>,
    pub shared: Vec<Vec<usize>>,
    pub p_value: Vec<Vec<f64>>,
}

pub fn overlap_matrix(sets: &[ScoreSet], frac: f64) -> Result<OverlapMatrix> {
    let m = sets.len();
    ensure!(m > 0, "no score sets");
    let mut overlap = vec![vec![f64::NAN; m]; m];
    let mut shared = vec![vec![0; m]; m];
    let mut p = vec![vec![f64::NAN; m]; m];
    let mut first = None;
    for i in 0..m {
        for j in i..m {
            let o = top_overlap(&sets[i].scores, &sets[j].scores, frac)
                .map_err(|e| anyhow::anyhow!("{} vs {}: {e}", sets[i].label, sets[j].label))?;
            (overlap[i][j], overlap[j][i]) = (o.overlap, o.overlap);
            (shared[i][j], shared[j][i]) = (o.shared, o.shared);
            (p[i][j], p[j][i]) = (o.p_value, o.p_value);
            first.get_or_insert(o);
        }
    }
    let o = first.expect("m > 0");
    Ok(OverlapMatrix {
        labels: sets.iter().map(|s| s.label.clone()).collect(),
        frac,
        n: o.n,
        k: o.k,
        expected: o.expected,
        overlap,
        shared,
        p_value: p,
    })
}

/// One task's scores at one shot count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShotScores {
    pub task: String,
    pub shots: usize,
    pub scores: Vec<f64>,
}

/// One task's correlation between two of its shot counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskShotCorrelation {
    pub task: String,
    pub shots_a: usize,
    pub shots_b: usize,
    pub rho: f64,
    pub p_value: f64,
}

/// Table 1: for each task, the correlation between its rankings at each pair of shot counts;
/// then over tasks the mean, the unbiased variance (n-1 denominator; NaN with fewer than 2 tasks),
/// the number of tasks and the largest p-value. Tasks missing a shot count skip that cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrossShot {
    pub method: Method,
    pub statistic: String,
    pub shots: Vec<usize>,
    pub mean: Vec<Vec<f64>>,
    pub variance: Vec<Vec<f64>>,
    pub n_tasks: Vec<Vec<usize>>,
    pub max_p_value: Vec<Vec<f64>>,
    pub per_task: Vec<TaskShotCorrelation>,
}

pub fn cross_shot(items: &[ShotScores], method: Method) -> Result<CrossShot> {
    let mut shots: Vec<usize> = items.iter().map(|s| s.shots).collect();
    shots.sort_unstable();
    shots.dedup();
    let mut tasks: Vec<&str> = Vec::new();
    for it in items {
        if !tasks.contains(&it.task.as_str()) {
            tasks.push(&it.task);
        }
    }
    let find = |task: &str, k: usize| -> Result<Option<&ShotScores>> {
        let hits: Vec<&ShotScores> = items.iter().filter(|s| s.task == task && s.shots == k).collect();
        if hits.len() > 1 {
            bail!("task `{task}` has {} score sets for {k} shots", hits.len());
        }
        Ok(hits.first().copied())
    };
    let s = shots.len();
    let mut per_task = Vec::new();
    let mut cells: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); s]; s];
    let mut max_p = vec![vec![f64::NAN; s]; s];
    for task in &tasks {
        for i in 0..s {
            for j in 0..s {
                let (Some(a), Some(b)) = (find(task, shots[i])?, find(task, shots[j])?) else { continue };
                let c = correlate(method, &a.scores, &b.scores).map_err(|e| anyhow::anyhow!("task {task}: {e}"))?;
                cells[i][j].push(c.rho);
                if i != j {
                    max_p[i][j] = if max_p[i][j].is_nan() { c.p_value } else { max_p[i][j].max(c.p_value) };
                }
                if i < j {
                    per_task.push(TaskShotCorrelation {
                        task: task.to_string(),
                        shots_a: shots[i],
                        shots_b: shots[j],
                        rho: c.rho,
                        p_value: c.p_value,
                    });
                }
            }
        }
    }
    let mean = cells.iter().map(|row| row.iter().map(|v| mean_of(v)).collect()).collect();
    let variance = cells.iter().map(|row| row.iter().map(|v| unbiased_variance(v)).collect()).collect();
    let n_tasks = cells.iter().map(|row| row.iter().map(Vec::len).collect()).collect();
    Ok(CrossShot { method, statistic: method.label().into(), shots, mean, variance, n_tasks, max_p_value: max_p, per_task })
}

fn mean_of(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Sample variance with the n-1 denominator (NaN below 2 values).
pub fn unbiased_variance(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return f64::NAN;
    }
    let m = mean_of(v);
    v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64
}

// ------------------------------------------------------------------------------------------------
// Bootstrap over examples.
// ------------------------------------------------------------------------------------------------

/// Bootstrap settings: `resamples` draws of the examples with replacement, seeded; percentile
/// intervals at `level` (e.g. 0.95); scores normalized as `normalize` (the authors' default:
/// layers / resampled Σ(N_i - 1), the last layer / resampled Σ T_y).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootstrapOptions {
    pub resamples: usize,
    pub seed: u64,
    pub level: f64,
    pub normalize: Normalize,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        Self { resamples: 1000, seed: 0, level: 0.95, normalize: Normalize::Authors }
    }
}

/// A point estimate (on all examples) and its percentile interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub point: f64,
    pub lo: f64,
    pub hi: f64,
}

/// (n_layers, n_heads) of a set of per-example contributions, checking they all agree.
pub fn contribution_shape(examples: &[ExampleContribution]) -> Result<(usize, usize)> {
    ensure!(!examples.is_empty(), "no per-example contributions to resample");
    let l = examples[0].ffn_abs.len();
    ensure!(l > 0 && examples[0].head_abs.len().is_multiple_of(l), "per-example contribution has {} head and {l} FFN values", examples[0].head_abs.len());
    let h = examples[0].head_abs.len() / l;
    for (i, e) in examples.iter().enumerate() {
        ensure!(
            e.ffn_abs.len() == l && e.head_abs.len() == l * h,
            "example {i}: {} head / {} FFN values, expected {} / {l}",
            e.head_abs.len(),
            e.ffn_abs.len(),
            l * h
        );
    }
    Ok((l, h))
}

/// Sums over a resample, where example i was drawn `counts[i]` times.
pub fn resampled_sums(examples: &[ExampleContribution], counts: &[u32], n_layers: usize, n_heads: usize) -> ImportanceSums {
    // The abs mode is not recorded per example; it does not affect normalization.
    let mut s = ImportanceSums::new(n_layers, n_heads, AbsMode::PerToken);
    for (e, &c) in examples.iter().zip(counts) {
        if c == 0 {
            continue;
        }
        let w = c as f64;
        s.head_abs.iter_mut().zip(&e.head_abs).for_each(|(a, &x)| *a += w * x as f64);
        s.ffn_abs.iter_mut().zip(&e.ffn_abs).for_each(|(a, &x)| *a += w * x as f64);
        let c = c as u64;
        s.examples += c;
        s.tokens += c * e.tokens as u64;
        s.tokens_minus_one += c * (e.tokens as u64).saturating_sub(1);
        s.label_tokens += c * e.label_tokens as u64;
    }
    s
}

/// Scores from all examples (each drawn once): the bootstrap's point estimate.
pub fn scores_from_examples(examples: &[ExampleContribution], normalize: Normalize) -> Result<Scores> {
    let (l, h) = contribution_shape(examples)?;
    Ok(resampled_sums(examples, &vec![1; examples.len()], l, h).scores(normalize))
}

fn draw_counts(n: usize, rng: &mut SplitMix64) -> Vec<u32> {
    let mut counts = vec![0u32; n];
    for _ in 0..n {
        counts[rng.below(n)] += 1;
    }
    counts
}

/// The generator of replicate `b` of stream `stream` (one stream per score set): a pure function
/// of (seed, stream, b), so results do not depend on how many threads drew them.
fn replicate_rng(seed: u64, stream: u64, b: u64) -> SplitMix64 {
    // The crate's own generator (not rand's StdRng, which rand documents as not portable across
    // versions), so a bootstrap interval is the same on every dependency version.
    SplitMix64::for_key(seed, stream, b)
}

/// Linear-interpolated quantile of sorted values (numpy's default).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Percentile interval at `level` of replicate values (NaNs dropped) around `point`.
pub fn percentile_interval(mut reps: Vec<f64>, level: f64, point: f64) -> Interval {
    reps.retain(|x| !x.is_nan());
    reps.sort_by(f64::total_cmp);
    let a = (1.0 - level) / 2.0;
    Interval { point, lo: quantile_sorted(&reps, a), hi: quantile_sorted(&reps, 1.0 - a) }
}

/// One score set's bootstrap: the scores on all examples and on each resample.
#[derive(Clone, Debug, PartialEq)]
pub struct Replicates {
    pub point: Scores,
    pub reps: Vec<Scores>,
}

fn check_opts(opts: &BootstrapOptions) -> Result<()> {
    ensure!(opts.resamples > 0, "bootstrap needs at least one resample");
    ensure!(opts.level > 0.0 && opts.level < 1.0, "confidence level must be in (0, 1), got {}", opts.level);
    Ok(())
}

/// Resamples one set's examples with replacement `opts.resamples` times (stream `stream`, so
/// several sets resampled with one seed are independent) and normalizes each resample. Runs on
/// all cores. Memory: resamples x (L*H + L) f64.
pub fn replicates(examples: &[ExampleContribution], opts: &BootstrapOptions, stream: u64) -> Result<Replicates> {
    check_opts(opts)?;
    let (l, h) = contribution_shape(examples)?;
    let point = resampled_sums(examples, &vec![1; examples.len()], l, h).scores(opts.normalize);
    let one = |b: usize| {
        let mut rng = replicate_rng(opts.seed, stream, b as u64);
        resampled_sums(examples, &draw_counts(examples.len(), &mut rng), l, h).scores(opts.normalize)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(opts.resamples);
    let mut reps: Vec<Option<Scores>> = vec![None; opts.resamples];
    std::thread::scope(|s| {
        let chunk = opts.resamples.div_ceil(threads);
        for (t, slot) in reps.chunks_mut(chunk).enumerate() {
            let one = &one;
            s.spawn(move || {
                for (i, r) in slot.iter_mut().enumerate() {
                    *r = Some(one(t * chunk + i));
                }
            });
        }
    });
    Ok(Replicates { point, reps: reps.into_iter().map(|r| r.expect("every replicate is filled")).collect() })
}

/// Percentile interval of a statistic of several sets' replicates, replicate b of each set
/// taken together (the sets were resampled independently).
pub fn interval_of<F>(sets: &[&Replicates], level: f64, stat: F) -> Result<Interval>
where
    F: Fn(&[&Scores]) -> f64,
{
    ensure!(!sets.is_empty(), "no score sets");
    let b = sets[0].reps.len();
    ensure!(sets.iter().all(|s| s.reps.len() == b), "score sets have different numbers of resamples");
    let point = stat(&sets.iter().map(|s| &s.point).collect::<Vec<_>>());
    let reps = (0..b).map(|i| stat(&sets.iter().map(|s| &s.reps[i]).collect::<Vec<_>>())).collect();
    Ok(percentile_interval(reps, level, point))
}

/// Percentile interval of any statistic of one or more score sets, each set's examples
/// resampled independently (set i is stream i).
pub fn bootstrap_interval<F>(sets: &[&[ExampleContribution]], opts: &BootstrapOptions, stat: F) -> Result<Interval>
where
    F: Fn(&[&Scores]) -> f64,
{
    let reps: Vec<Replicates> = sets.iter().enumerate().map(|(i, s)| replicates(s, opts, i as u64)).collect::<Result<_>>()?;
    interval_of(&reps.iter().collect::<Vec<_>>(), opts.level, stat)
}

fn same_shape(a: &Replicates, b: &Replicates) -> Result<()> {
    let shape = |s: &Scores| (s.heads.len(), s.heads.first().map_or(0, Vec::len));
    ensure!(shape(&a.point) == shape(&b.point), "the two score sets come from models of different shapes");
    Ok(())
}

/// Interval of the correlation between two sets' head rankings (from their replicates).
pub fn correlation_interval(a: &Replicates, b: &Replicates, method: Method, level: f64) -> Result<Interval> {
    same_shape(a, b)?;
    interval_of(&[a, b], level, |s| correlate(method, &flatten(&s[0].heads), &flatten(&s[1].heads)).map_or(f64::NAN, |c| c.rho))
}

/// Interval of the top-k overlap between two sets' heads (from their replicates).
pub fn overlap_interval(a: &Replicates, b: &Replicates, frac: f64, level: f64) -> Result<Interval> {
    same_shape(a, b)?;
    let n = flatten(&a.point.heads).len();
    top_overlap(&vec![0.0; n], &vec![0.0; n], frac)?; // validates frac and n once
    interval_of(&[a, b], level, |s| top_overlap(&flatten(&s[0].heads), &flatten(&s[1].heads), frac).map_or(f64::NAN, |o| o.overlap))
}

/// Interval of the correlation between two score sets' head rankings, each set resampled
/// independently.
pub fn bootstrap_correlation(
    a: &[ExampleContribution],
    b: &[ExampleContribution],
    method: Method,
    opts: &BootstrapOptions,
) -> Result<Interval> {
    correlation_interval(&replicates(a, opts, 0)?, &replicates(b, opts, 1)?, method, opts.level)
}

/// Interval of the top-k overlap between two score sets' heads.
pub fn bootstrap_overlap(a: &[ExampleContribution], b: &[ExampleContribution], frac: f64, opts: &BootstrapOptions) -> Result<Interval> {
    overlap_interval(&replicates(a, opts, 0)?, &replicates(b, opts, 1)?, frac, opts.level)
}

/// Per-head importance-rank intervals: rank 1 = most important, N = least (position in the
/// descending order; the stable ascending ranking reversed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankIntervals {
    pub n_layers: usize,
    pub n_heads: usize,
    /// Flat (layer-major) vectors of length L*H.
    pub point: Vec<f64>,
    pub lo: Vec<f64>,
    pub hi: Vec<f64>,
    pub level: f64,
    pub resamples: usize,
}

/// Importance rank of each flat index (1 = most important).
pub fn importance_ranks(scores: &[f64]) -> Vec<f64> {
    let n = scores.len();
    let mut r = vec![0.0; n];
    for (pos, i) in ranking(scores).into_iter().enumerate() {
        r[i] = (n - pos) as f64;
    }
    r
}

/// Per-head rank intervals from one set's replicates.
pub fn rank_intervals(r: &Replicates, level: f64) -> RankIntervals {
    let (l, h) = (r.point.heads.len(), r.point.heads.first().map_or(0, Vec::len));
    let point = importance_ranks(&flatten(&r.point.heads));
    let mut per_head: Vec<Vec<f64>> = vec![Vec::with_capacity(r.reps.len()); l * h];
    for s in &r.reps {
        for (i, rank) in importance_ranks(&flatten(&s.heads)).into_iter().enumerate() {
            per_head[i].push(rank);
        }
    }
    let (mut lo, mut hi) = (Vec::with_capacity(l * h), Vec::with_capacity(l * h));
    for (reps, &p) in per_head.into_iter().zip(&point) {
        let iv = percentile_interval(reps, level, p);
        lo.push(iv.lo);
        hi.push(iv.hi);
    }
    RankIntervals { n_layers: l, n_heads: h, point, lo, hi, level, resamples: r.reps.len() }
}

pub fn bootstrap_head_ranks(examples: &[ExampleContribution], opts: &BootstrapOptions) -> Result<RankIntervals> {
    Ok(rank_intervals(&replicates(examples, opts, 0)?, opts.level))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_factorials() {
        for n in 1..20u64 {
            let f: f64 = (1..n).map(|k| k as f64).product();
            assert!((ln_gamma(n as f64) - f.ln()).abs() < 1e-12, "n={n}");
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
    }

    #[test]
    fn incomplete_beta_edges_and_symmetry() {
        assert_eq!(reg_inc_beta(2.0, 3.0, 0.0), 0.0);
        assert_eq!(reg_inc_beta(2.0, 3.0, 1.0), 1.0);
        // I_x(1, 1) = x; I_x(a, b) = 1 - I_{1-x}(b, a).
        assert!((reg_inc_beta(1.0, 1.0, 0.3) - 0.3).abs() < 1e-14);
        let (a, b, x) = (2.5, 7.0, 0.2);
        assert!((reg_inc_beta(a, b, x) + reg_inc_beta(b, a, 1.0 - x) - 1.0).abs() < 1e-13);
    }

    #[test]
    fn ranking_is_stable_ascending() {
        assert_eq!(ranking(&[3.0, 1.0, 3.0, 0.0, f64::NAN]), vec![3, 1, 0, 2, 4]);
        assert_eq!(average_ranks(&[10.0, 20.0, 10.0, 5.0]), vec![2.5, 4.0, 2.5, 1.0]);
    }

    #[test]
    fn top_k_follows_python_int() {
        assert_eq!(top_k(4608, 0.3), 1382);
        assert_eq!(top_k(10, 0.3), 3);
        assert_eq!(top_k(100, 0.29), 28); // int(0.29 * 100) = int(28.999999999999996) = 28
    }
}
