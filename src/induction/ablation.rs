//! Accuracy ablation of induction heads: the experiment the paper never ran (spec 7.5: "No
//! accuracy ablation of induction heads was done"). For each k in a small grid, remove the top-k
//! heads by prefix-matching score (or copying, or both) and compare task accuracy with removing
//! k random heads (several random sets: mean and spread).
//!
//! The evaluation is not here: [`run_ablation`] takes a closure "accuracy under a [`Mask`]",
//! so any evaluator plugs in. **Wiring still to do** (the evaluation engine, `crate::eval`,
//! landed on main while this was written; nothing here calls it yet):
//! ```text
//! let ind: induction.json from `headroom induction` (prefix.mean, copying.mean)
//! let ranking = rank_induction_heads(&ind.prefix.mean, &ind.copying.mean, Target::Prefix)?;
//! let docs = eval::selected_docs(&task, &cfg);
//! let (prompts, encoded) = eval::prepare(&task, &docs, &cfg, &tok, &model)?;   // once
//! let result = run_ablation(n_layers, n_heads, &ranking, &plan, |mask| {
//!     Ok(eval::evaluate_prepared(&model, &task, &cfg, &prompts, &encoded, Some(mask), &mut |_| {})?
//!         .summary.value)
//! })?;
//! ```
//! plus a `headroom induction-ablate --task T --shots K --induction DIR [--target
//! prefix|copying|both] [--ks 1,2,4,8,16] [--random-sets 5] [--seed 0] --out DIR` subcommand
//! writing `result` as JSON + a long CSV (k, kind top|random, set, accuracy), ideally one run
//! unit per mask (crate::runs) so a long ablation resumes.
//!
//! Semantics:
//! - removal is the paper's head mask (gate 0, spec 2.3); FFNs are always kept;
//! - the baseline (nothing removed) is evaluated once and reported;
//! - random set `i` is a seeded permutation of all `L * H` heads (SplitMix64 of
//!   `seed * 2^32 + i`, Fisher-Yates); at size k its first k heads are removed, so random sets
//!   are nested across k like the top-k sets are. Random heads are drawn from **all** heads (the
//!   induction heads included), the plain null model;
//! - spread over random sets: mean, unbiased standard deviation, min and max.

use anyhow::{bail, Result};
use serde::Serialize;

use super::SplitMix64;
use crate::model::Mask;

/// Which induction score ranks the heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Prefix,
    Copying,
    /// High on both ("plausible induction heads", spec 7.5): heads ranked by the smaller of their
    /// two percentile ranks (ties: higher prefix score first).
    Both,
}

/// `(layer, head)` pairs, best first. For `Target::Prefix` / `Copying` only that matrix is read
/// (the other may be empty).
pub fn rank_induction_heads(prefix: &[Vec<f64>], copying: &[Vec<f64>], target: Target) -> Result<Vec<(usize, usize)>> {
    let flat = |m: &[Vec<f64>]| -> Vec<f64> { m.iter().flatten().copied().collect() };
    let n_heads = match target {
        Target::Copying => copying.first().map_or(0, |r| r.len()),
        _ => prefix.first().map_or(0, |r| r.len()),
    };
    if n_heads == 0 {
        bail!("empty score matrix");
    }
    let key = |x: f64| if x.is_nan() { f64::NEG_INFINITY } else { x };
    let descending = |v: &[f64]| -> Vec<usize> {
        let mut o: Vec<usize> = (0..v.len()).collect();
        o.sort_by(|&a, &b| key(v[b]).total_cmp(&key(v[a])).then(a.cmp(&b)));
        o
    };
    let order = match target {
        Target::Prefix => descending(&flat(prefix)),
        Target::Copying => descending(&flat(copying)),
        Target::Both => {
            let (p, c) = (flat(prefix), flat(copying));
            if p.len() != c.len() {
                bail!("prefix scores have {} heads, copying scores {}", p.len(), c.len());
            }
            // percentile rank: 1 for the best head, 0 for the worst
            let pct = |v: &[f64]| -> Vec<f64> {
                let mut r = vec![0.0; v.len()];
                let n = (v.len().max(2) - 1) as f64;
                for (pos, &i) in descending(v).iter().enumerate() {
                    r[i] = 1.0 - pos as f64 / n;
                }
                r
            };
            let (pp, pc) = (pct(&p), pct(&c));
            let both: Vec<f64> = pp.iter().zip(&pc).map(|(a, b)| a.min(*b)).collect();
            let mut o: Vec<usize> = (0..p.len()).collect();
            o.sort_by(|&a, &b| both[b].total_cmp(&both[a]).then(key(p[b]).total_cmp(&key(p[a]))).then(a.cmp(&b)));
            o
        }
    };
    Ok(order.into_iter().map(|i| (i / n_heads, i % n_heads)).collect())
}

/// A mask keeping everything except `heads` (gate 0).
pub fn mask_removing(n_layers: usize, n_heads: usize, heads: &[(usize, usize)]) -> Result<Mask> {
    let mut m = Mask::ones(n_layers, n_heads);
    for &(l, h) in heads {
        if l >= n_layers || h >= n_heads {
            bail!("head ({l}, {h}) outside a model of {n_layers} layers x {n_heads} heads");
        }
        m.heads[l][h] = 0.0;
    }
    Ok(m)
}

/// Random set `i`: a seeded permutation of all heads (module docs).
pub fn random_permutation(n_layers: usize, n_heads: usize, seed: u64, i: usize) -> Vec<(usize, usize)> {
    let n = n_layers * n_heads;
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::for_sequence(seed, i);
    for a in 0..n.saturating_sub(1) {
        let b = a + rng.below(n - a);
        v.swap(a, b);
    }
    v.into_iter().map(|x| (x / n_heads, x % n_heads)).collect()
}

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct AblationPlan {
    /// Numbers of heads to remove, e.g. [1, 2, 4, 8, 16].
    pub ks: Vec<usize>,
    /// Random sets per k.
    pub random_sets: usize,
    pub seed: u64,
}

/// Mean, unbiased standard deviation, min, max of a sample.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Spread {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(xs: &[f64]) -> Spread {
        let n = xs.len();
        if n == 0 {
            return Spread { n, mean: f64::NAN, std: f64::NAN, min: f64::NAN, max: f64::NAN };
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let std = if n < 2 { f64::NAN } else { (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() };
        let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Spread { n, mean, std, min, max }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct AblationPoint {
    pub k: usize,
    /// The removed top-k heads, best first.
    pub top_heads: Vec<(usize, usize)>,
    pub top_accuracy: f64,
    /// Accuracy with each random set of k heads removed.
    pub random_accuracies: Vec<f64>,
    pub random: Spread,
}

#[derive(Clone, Debug, Serialize)]
pub struct AblationResult {
    pub plan: AblationPlan,
    /// Accuracy with nothing removed.
    pub baseline: f64,
    pub points: Vec<AblationPoint>,
}

/// Evaluates the baseline, then for each k the top-k mask of `ranking` and `plan.random_sets`
/// random masks of k heads. `accuracy(mask)` is called `1 + |ks| * (1 + random_sets)` times, in
/// that order; its first error stops the run.
pub fn run_ablation(
    n_layers: usize,
    n_heads: usize,
    ranking: &[(usize, usize)],
    plan: &AblationPlan,
    mut accuracy: impl FnMut(&Mask) -> Result<f64>,
) -> Result<AblationResult> {
    let n = n_layers * n_heads;
    if ranking.len() != n {
        bail!("ranking lists {} heads; the model has {n}", ranking.len());
    }
    if let Some(&k) = plan.ks.iter().find(|&&k| k > n) {
        bail!("cannot remove {k} heads from a model with {n}");
    }
    let baseline = accuracy(&Mask::ones(n_layers, n_heads))?;
    let perms: Vec<Vec<(usize, usize)>> = (0..plan.random_sets).map(|i| random_permutation(n_layers, n_heads, plan.seed, i)).collect();
    let mut points = Vec::with_capacity(plan.ks.len());
    for &k in &plan.ks {
        let top_heads = ranking[..k].to_vec();
        let top_accuracy = accuracy(&mask_removing(n_layers, n_heads, &top_heads)?)?;
        let random_accuracies = perms
            .iter()
            .map(|p| accuracy(&mask_removing(n_layers, n_heads, &p[..k])?))
            .collect::<Result<Vec<f64>>>()?;
        let random = Spread::of(&random_accuracies);
        points.push(AblationPoint { k, top_heads, top_accuracy, random_accuracies, random });
    }
    Ok(AblationResult { plan: plan.clone(), baseline, points })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(m: &Mask) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for (l, row) in m.heads.iter().enumerate() {
            for (h, &g) in row.iter().enumerate() {
                if g == 0.0 {
                    v.push((l, h));
                }
            }
        }
        v
    }

    #[test]
    fn fake_evaluator_sees_top_k_and_random_masks() {
        let (nl, nh) = (4, 5);
        // Induction scores: heads (3, 1), (2, 4), (3, 0) are the top three.
        let mut prefix = vec![vec![0.01; nh]; nl];
        prefix[3][1] = 0.9;
        prefix[2][4] = 0.8;
        prefix[3][0] = 0.7;
        let ranking = rank_induction_heads(&prefix, &[], Target::Prefix).unwrap();
        assert_eq!(&ranking[..3], &[(3, 1), (2, 4), (3, 0)]);
        // Fake task: accuracy 0.8, minus 0.2 per removed "true" induction head, minus 0.001 per
        // other removed head.
        let critical = [(3usize, 1usize), (2, 4), (3, 0)];
        let mut calls = 0;
        let mut seen = Vec::new();
        let plan = AblationPlan { ks: vec![1, 3, 6], random_sets: 8, seed: 11 };
        let res = run_ablation(nl, nh, &ranking, &plan, |m: &Mask| {
            calls += 1;
            m.validate(nl, nh)?;
            let r = removed(m);
            seen.push(r.len());
            let hits = r.iter().filter(|x| critical.contains(x)).count();
            Ok(0.8 - 0.2 * hits as f64 - 0.001 * (r.len() - hits) as f64)
        })
        .unwrap();
        assert_eq!(calls, 1 + 3 * (1 + 8));
        assert_eq!(seen[0], 0);
        assert_eq!(res.baseline, 0.8);
        let p3 = &res.points[1];
        assert_eq!(p3.k, 3);
        assert!((p3.top_accuracy - 0.2).abs() < 1e-12);
        assert_eq!(p3.random_accuracies.len(), 8);
        // Random sets hurt less than the top-k on average, and spread is reported.
        assert!(p3.random.mean > p3.top_accuracy + 0.1, "{:?}", p3.random);
        assert!(p3.random.min <= p3.random.mean && p3.random.mean <= p3.random.max);
        assert!(p3.random.std.is_finite());
        // Every mask removed exactly k heads.
        assert_eq!(seen.iter().filter(|&&n| n == 6).count(), 9);
        // Same seed, same result; different seed, different random sets.
        let again = run_ablation(nl, nh, &ranking, &plan, |m: &Mask| Ok(removed(m).iter().map(|(l, h)| (l * 7 + h) as f64).sum())).unwrap();
        let again2 = run_ablation(nl, nh, &ranking, &plan, |m: &Mask| Ok(removed(m).iter().map(|(l, h)| (l * 7 + h) as f64).sum())).unwrap();
        assert_eq!(again.points[2].random_accuracies, again2.points[2].random_accuracies);
        let other = AblationPlan { seed: 12, ..plan.clone() };
        let again3 = run_ablation(nl, nh, &ranking, &other, |m: &Mask| Ok(removed(m).iter().map(|(l, h)| (l * 7 + h) as f64).sum())).unwrap();
        assert_ne!(again.points[2].random_accuracies, again3.points[2].random_accuracies);
    }

    #[test]
    fn random_sets_are_nested_permutations() {
        let p = random_permutation(3, 4, 5, 0);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..3).flat_map(|l| (0..4).map(move |h| (l, h))).collect::<Vec<_>>());
        assert_ne!(p, random_permutation(3, 4, 5, 1));
    }

    #[test]
    fn errors_propagate_and_bad_plans_are_refused() {
        let ranking: Vec<(usize, usize)> = (0..6).map(|i| (i / 3, i % 3)).collect();
        let plan = AblationPlan { ks: vec![2], random_sets: 2, seed: 0 };
        let mut n = 0;
        let err = run_ablation(2, 3, &ranking, &plan, |_| {
            n += 1;
            if n == 2 {
                bail!("evaluator failed")
            }
            Ok(1.0)
        });
        assert!(err.unwrap_err().to_string().contains("evaluator failed"));
        let too_many = AblationPlan { ks: vec![7], random_sets: 1, seed: 0 };
        assert!(run_ablation(2, 3, &ranking, &too_many, |_| Ok(1.0)).is_err());
        assert!(run_ablation(2, 3, &ranking[..5], &plan, |_| Ok(1.0)).is_err());
        assert!(mask_removing(2, 3, &[(2, 0)]).is_err());
    }

    #[test]
    fn both_ranks_heads_high_on_both_scores_first() {
        let prefix = vec![vec![0.9, 0.8, 0.1, 0.0]];
        let copying = vec![vec![0.0, 0.7, 0.9, 0.1]];
        let r = rank_induction_heads(&prefix, &copying, Target::Both).unwrap();
        assert_eq!(r[0], (0, 1));
        assert_eq!(rank_induction_heads(&prefix, &copying, Target::Copying).unwrap()[0], (0, 2));
    }
}
