//! The statistics the report shows beside its figures, from plain data (no files, no HTML): the
//! mean-over-tasks curve with its stderr, where two pruning curves differ by less than the noise,
//! chance levels, and the "paper vs this run" findings (share of heads and FFNs removable within
//! tolerance, cross-task and cross-shot rank correlations under both statistics, top-30% overlap,
//! where the strongest induction heads rank).
//!
//! The report reads the run folder and calls these; keeping them apart from the reading lets the
//! file formats change without touching the arithmetic, and lets tests check the numbers directly.

use anyhow::Result;

use crate::compare::{self, Method, ShotScores};

/// One point of an accuracy-vs-pruning curve (a row of `sweeps/{heads,ffns}.csv`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CurvePoint {
    /// % of heads (or FFNs) removed.
    pub pct: f64,
    pub value: f64,
    pub stderr: f64,
}

/// Levels compared as integers in thousandths of a percent, so 33.333 and 33.3330001 meet.
fn level_key(pct: f64) -> i64 {
    (pct * 1000.0).round() as i64
}

/// The mean over tasks at the levels every task has, with the stderr of that mean,
/// `sqrt(Σ se_t²) / T` (the tasks are evaluated on different documents, so their errors are
/// independent; the same formula as `sweeps/inflection.csv`'s `average` rows). Levels some task
/// lacks are left out rather than averaged over fewer tasks, which would mix task difficulties.
pub fn mean_curve(curves: &[Vec<CurvePoint>]) -> Vec<CurvePoint> {
    let Some(first) = curves.first() else { return vec![] };
    let t = curves.len() as f64;
    let mut out = Vec::new();
    for p in first {
        let at: Vec<CurvePoint> = curves.iter().filter_map(|c| c.iter().find(|q| level_key(q.pct) == level_key(p.pct)).copied()).collect();
        if at.len() == curves.len() {
            let value = at.iter().map(|q| q.value).sum::<f64>() / t;
            let stderr = at.iter().map(|q| q.stderr * q.stderr).sum::<f64>().sqrt() / t;
            out.push(CurvePoint { pct: p.pct, value, stderr });
        }
    }
    out.sort_by(|a, b| a.pct.total_cmp(&b.pct));
    out
}

/// A level where two curves differ by less than the stderr of their difference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WithinNoise {
    pub pct: f64,
    /// `a − b`.
    pub difference: f64,
    /// `sqrt(se_a² + se_b²)`: the two evaluations are treated as independent, which overstates
    /// the error when both score the same documents (a paired test would be tighter), so a
    /// difference flagged here may still be real, and one not flagged is not noise.
    pub stderr: f64,
}

/// The pruned levels (pct > 0: at 0% every ranking is the same unpruned model) at which
/// `|a − b| < sqrt(se_a² + se_b²)`.
pub fn within_noise(a: &[CurvePoint], b: &[CurvePoint]) -> Vec<WithinNoise> {
    let mut out = Vec::new();
    for p in a.iter().filter(|p| p.pct > 0.0) {
        let Some(q) = b.iter().find(|q| level_key(q.pct) == level_key(p.pct)) else { continue };
        let stderr = (p.stderr * p.stderr + q.stderr * q.stderr).sqrt();
        let difference = p.value - q.value;
        if difference.is_finite() && stderr.is_finite() && difference.abs() < stderr {
            out.push(WithinNoise { pct: p.pct, difference, stderr });
        }
    }
    out
}

/// The chance level of a task by name (built-in tasks only: user tasks do not declare their
/// option count) and how it was derived, e.g. `(0.25, "1/4")`.
pub fn chance_level(task: &str) -> Option<(f64, String)> {
    crate::tasks::builtin::find(task).and_then(|b| b.options.chance())
}

/// The mean chance level over tasks, when every task has one.
pub fn mean_chance(tasks: &[&str]) -> Option<f64> {
    let levels: Option<Vec<f64>> = tasks.iter().map(|t| chance_level(t).map(|c| c.0)).collect();
    levels.filter(|l| !l.is_empty()).map(|l| l.iter().sum::<f64>() / l.len() as f64)
}

/// One task's head importance at one shot count, flattened layer-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadScores {
    pub task: String,
    pub shots: usize,
    pub scores: Vec<f64>,
}

/// Mean of a statistic over the task pairs at one shot count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairMean {
    pub shots: usize,
    pub mean: f64,
    /// Task pairs averaged.
    pub pairs: usize,
}

fn per_shot_pairs(sets: &[HeadScores], stat: impl Fn(&[f64], &[f64]) -> Result<f64>) -> Result<Vec<PairMean>> {
    let mut shots: Vec<usize> = sets.iter().map(|s| s.shots).collect();
    shots.sort_unstable();
    shots.dedup();
    let mut out = Vec::new();
    for k in shots {
        let at: Vec<&HeadScores> = sets.iter().filter(|s| s.shots == k).collect();
        let mut vals = Vec::new();
        for i in 0..at.len() {
            for j in i + 1..at.len() {
                vals.push(stat(&at[i].scores, &at[j].scores)?);
            }
        }
        if !vals.is_empty() {
            out.push(PairMean { shots: k, mean: vals.iter().sum::<f64>() / vals.len() as f64, pairs: vals.len() });
        }
    }
    Ok(out)
}

/// Mean rank correlation between every pair of tasks at the same shot count (the off-diagonal
/// of the paper's Figures 8 and 15).
pub fn cross_task_correlation(sets: &[HeadScores], method: Method) -> Result<Vec<PairMean>> {
    per_shot_pairs(sets, |a, b| Ok(compare::correlate(method, a, b)?.rho))
}

/// Mean top-`frac` overlap `|Top(A) ∩ Top(B)| / k` between every pair of tasks at the same shot
/// count.
pub fn cross_task_overlap(sets: &[HeadScores], frac: f64) -> Result<Vec<PairMean>> {
    per_shot_pairs(sets, |a, b| Ok(compare::top_overlap(a, b, frac)?.overlap))
}

/// The cross-shot table (the paper's Table 1) under `method`: per pair of shot counts, the mean
/// over tasks and the number of tasks. Empty with fewer than two shot counts.
pub fn cross_shot_means(sets: &[HeadScores], method: Method) -> Result<Vec<(usize, usize, f64, usize)>> {
    let items: Vec<ShotScores> = sets.iter().map(|s| ShotScores { task: s.task.clone(), shots: s.shots, scores: s.scores.clone() }).collect();
    let shots: std::collections::BTreeSet<usize> = sets.iter().map(|s| s.shots).collect();
    if shots.len() < 2 {
        return Ok(vec![]);
    }
    let cs = compare::cross_shot(&items, method)?;
    let mut out = Vec::new();
    for a in 0..cs.shots.len() {
        for b in a + 1..cs.shots.len() {
            if cs.n_tasks[a][b] > 0 {
                out.push((cs.shots[a], cs.shots[b], cs.mean[a][b], cs.n_tasks[a][b]));
            }
        }
    }
    Ok(out)
}

/// Where the strongest induction heads sit in an importance ranking.
#[derive(Clone, Debug, PartialEq)]
pub struct InductionRank {
    /// Flat indices of the `top` heads by prefix-matching score, strongest first.
    pub heads: Vec<usize>,
    /// Each one's percentile in the importance ranking (100 = the most important head).
    pub percentiles: Vec<f64>,
    /// How many of them are in the top `frac` of heads by importance.
    pub in_top: usize,
    pub frac: f64,
}

/// The `top` heads by `prefix` score (flat, layer-major, like `importance`) and their percentile
/// ranks in `importance` (ascending ranking: percentile = 100 · (r + 1) / N for rank position r).
pub fn induction_rank(prefix: &[f64], importance: &[f64], top: usize, frac: f64) -> Result<InductionRank> {
    anyhow::ensure!(
        prefix.len() == importance.len(),
        "prefix-matching scores cover {} heads, the importance ranking {}",
        prefix.len(),
        importance.len()
    );
    let n = importance.len();
    let heads = compare::top_set(prefix, top.min(n));
    let mut position = vec![0usize; n];
    for (r, i) in compare::ranking(importance).into_iter().enumerate() {
        position[i] = r;
    }
    let percentiles: Vec<f64> = heads.iter().map(|&h| 100.0 * (position[h] + 1) as f64 / n as f64).collect();
    let top_set = compare::top_set(importance, compare::top_k(n, frac));
    let in_top = heads.iter().filter(|h| top_set.contains(h)).count();
    Ok(InductionRank { heads, percentiles, in_top, frac })
}

/// The median of a non-empty slice (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 { s[m] } else { (s[m - 1] + s[m]) / 2.0 }
}

/// One row of `sweeps/inflection.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct Inflection {
    /// A task, or `average` for the mean over the run's tasks.
    pub task: String,
    pub shots: usize,
    pub ranking: String,
    /// `heads` or `ffns`.
    pub kind: String,
    /// The largest % removed that stays within `tolerance` of the unpruned value.
    pub pct: f64,
    pub tolerance: f64,
    pub base_stderr: f64,
}

impl Inflection {
    /// The unpruned value's stderr exceeds the tolerance: the inflection point measures the noise
    /// of the evaluation as much as the model.
    pub fn noise_limited(&self) -> bool {
        self.base_stderr > self.tolerance
    }
}

/// The mean-over-tasks inflection points of one kind (`heads`, `ffns`), by (shots, ranking).
pub fn removable_share<'a>(rows: &'a [Inflection], kind: &str) -> Vec<&'a Inflection> {
    let mut v: Vec<&Inflection> = rows.iter().filter(|r| r.task == "average" && r.kind == kind).collect();
    v.sort_by(|a, b| (a.shots, &a.ranking).cmp(&(b.shots, &b.ranking)));
    v
}

/// The point of a curve at `pct` % pruned.
pub fn at_level(curve: &[CurvePoint], pct: f64) -> Option<CurvePoint> {
    curve.iter().find(|p| level_key(p.pct) == level_key(pct)).copied()
}

/// A value of the paper (Bansal et al. 2023, OPT-66B) with where it is stated. Only values
/// written in the repository's docs (docs/method.md, "The paper's headline numbers") are here; a
/// finding without one shows "—".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PaperValue {
    pub value: &'static str,
    pub source: &'static str,
}

/// The paper's share of heads removable with minimal decline (abstract: "~70% of attention heads").
pub const PAPER_HEADS_REMOVABLE: PaperValue = PaperValue { value: "≈70%", source: "abstract" };
/// The paper's share of FFNs removable with minimal decline (abstract: "~20% of feed forward networks").
pub const PAPER_FFNS_REMOVABLE: PaperValue = PaperValue { value: "≈20%", source: "abstract" };
/// "71 % overlap between the top 30 % heads" (docs/method.md §5.2).
pub const PAPER_TOP30_OVERLAP: PaperValue = PaperValue { value: "71%", source: "\"71 % overlap between the top 30 % heads\"" };

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[(f64, f64, f64)]) -> Vec<CurvePoint> {
        v.iter().map(|&(pct, value, stderr)| CurvePoint { pct, value, stderr }).collect()
    }

    #[test]
    fn mean_curve_keeps_shared_levels_and_combines_stderrs() {
        let a = pts(&[(0.0, 0.8, 0.03), (50.0, 0.6, 0.04), (90.0, 0.5, 0.05)]);
        let b = pts(&[(0.0, 0.6, 0.04), (50.0, 0.4, 0.03)]);
        let m = mean_curve(&[a, b]);
        assert_eq!(m.len(), 2, "90% is only in one task");
        assert!((m[0].value - 0.7).abs() < 1e-12);
        assert!((m[0].stderr - 0.025).abs() < 1e-12, "sqrt(0.03²+0.04²)/2 = 0.025, got {}", m[0].stderr);
        assert!((m[1].value - 0.5).abs() < 1e-12);
    }

    #[test]
    fn within_noise_flags_only_small_differences_at_pruned_levels() {
        let own = pts(&[(0.0, 0.7, 0.05), (50.0, 0.65, 0.03), (90.0, 0.6, 0.03)]);
        let random = pts(&[(0.0, 0.7, 0.05), (50.0, 0.62, 0.04), (90.0, 0.3, 0.04)]);
        let w = within_noise(&own, &random);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].pct, 50.0);
        assert!((w[0].difference - 0.03).abs() < 1e-12 && (w[0].stderr - 0.05).abs() < 1e-12);
    }

    #[test]
    fn chance_levels_come_from_the_option_counts() {
        assert_eq!(chance_level("copa").map(|c| c.0), Some(0.5));
        assert_eq!(chance_level("hellaswag").map(|c| c.0), Some(0.25));
        assert_eq!(chance_level("cb").map(|c| c.1), Some("1/3".to_string()));
        assert_eq!(chance_level("arc_easy").map(|c| c.1), Some("≈1/4".to_string()));
        assert_eq!(chance_level("lambada"), None);
        assert_eq!(chance_level("my_task.toml"), None);
        assert_eq!(mean_chance(&["copa", "hellaswag"]), Some(0.375));
        assert_eq!(mean_chance(&["copa", "record"]), None);
    }

    #[test]
    fn induction_rank_places_heads_in_the_importance_order() {
        // 5 heads; importance ascending order 3,1,4,0,2 (head 2 the most important).
        let importance = [0.4, 0.2, 0.9, 0.1, 0.3];
        let prefix = [0.0, 0.0, 0.8, 0.0, 0.9];
        let r = induction_rank(&prefix, &importance, 2, 0.4).unwrap();
        assert_eq!(r.heads, vec![4, 2]);
        assert_eq!(r.percentiles, vec![60.0, 100.0]);
        assert_eq!(r.in_top, 1, "top 40% = heads 2 and 0");
        assert!(induction_rank(&prefix, &importance[..4], 2, 0.3).is_err());
    }

    #[test]
    fn cross_task_statistics_average_pairs_per_shot() {
        let s = |task: &str, shots, scores: Vec<f64>| HeadScores { task: task.into(), shots, scores };
        let sets = vec![
            s("a", 0, vec![1.0, 2.0, 3.0, 4.0]),
            s("b", 0, vec![1.0, 2.0, 3.0, 4.0]),
            s("c", 0, vec![4.0, 3.0, 2.0, 1.0]),
            s("a", 1, vec![1.0, 2.0, 4.0, 3.0]),
        ];
        let rho = cross_task_correlation(&sets, Method::Spearman).unwrap();
        assert_eq!(rho.len(), 1, "1-shot has one task, no pair");
        assert_eq!(rho[0].pairs, 3);
        assert!((rho[0].mean - (1.0 - 1.0 - 1.0) / 3.0).abs() < 1e-12);
        let ov = cross_task_overlap(&sets, 0.5).unwrap();
        assert!((ov[0].mean - (1.0 + 0.0 + 0.0) / 3.0).abs() < 1e-12);
        let cs = cross_shot_means(&sets, Method::Spearman).unwrap();
        assert_eq!(cs.len(), 1);
        assert_eq!((cs[0].0, cs[0].1, cs[0].3), (0, 1, 1));
        assert!((cs[0].2 - 0.8).abs() < 1e-12, "spearman(1234, 1243) = 0.8, got {}", cs[0].2);
        assert!(median(&[3.0, 1.0, 2.0]) == 2.0 && median(&[1.0, 2.0, 3.0, 4.0]) == 2.5);
    }
}
