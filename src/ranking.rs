//! The crate's one ranking of scores and its one seeded random ranking.
//!
//! A ranking is the global **ascending**, stable argsort of flat scores: `ranking[r]` is the
//! index of the r-th *least* important entry (the pruning order: level p% removes a prefix).
//! Ties keep index order.
//!
//! **NaN rule: a NaN score ranks as the most important** (after `+inf`, regardless of the NaN's
//! sign bit; NaNs tie with each other). Importance is a sum of `|gradient * activation|`, so a
//! NaN comes from an overflowing gradient, i.e. from a large contribution, not a small one; and
//! pruning must not remove first a component it could not measure. It is also where numpy's
//! `argsort` and `torch.sort` (the authors' code) put NaN. Before this module, `compare` sorted
//! NaN as least important and `prune` used `f64::total_cmp` (positive NaN last, negative NaN
//! first); both now follow this rule.

use std::cmp::Ordering;

use crate::tasks::SplitMix64;

/// Total order on scores for ranking: numbers by value, every NaN above every number.
pub fn importance_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        // total_cmp orders -0.0 before 0.0; equal scores must tie, so compare by value.
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Indices sorted by ascending score (least important first), stable on ties, NaN last.
pub fn ascending_ranking(values: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| importance_cmp(values[a], values[b]));
    idx
}

/// The stream of [`SplitMix64::for_key`] random rankings draw from (any fixed constant: it keeps
/// them independent of the other seeded streams that share a seed).
const RANDOM_RANKING_STREAM: u64 = 0x7a4d_0e4a;

/// A seeded random permutation of `0..n` (the control ranking, `random:SEED`), from the crate's
/// SplitMix64 so it is the same on every platform and dependency version.
pub fn random_ranking(n: usize, seed: u64) -> Vec<usize> {
    SplitMix64::for_key(seed, RANDOM_RANKING_STREAM, 0).permutation(n)
}

/// Scores whose [`ascending_ranking`] is [`random_ranking`]`(n, seed)`: entry `ranking[r]` gets
/// score `r`. `compare`'s "random" row, so it is the same control `prune` sweeps.
pub fn random_scores(n: usize, seed: u64) -> Vec<f64> {
    let mut scores = vec![0.0; n];
    for (r, i) in random_ranking(n, seed).into_iter().enumerate() {
        scores[i] = r as f64;
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascending_stable_and_nan_most_important() {
        let neg_nan = -f64::NAN;
        assert!(neg_nan.is_sign_negative());
        // Both NaNs go last whatever their sign; the tie at 3.0 keeps index order.
        assert_eq!(ascending_ranking(&[3.0, neg_nan, 1.0, 3.0, f64::NAN, f64::INFINITY, 0.0]), vec![6, 2, 0, 3, 5, 1, 4]);
        assert_eq!(importance_cmp(-0.0, 0.0), Ordering::Equal);
    }

    #[test]
    fn random_ranking_is_a_seeded_permutation() {
        let a = random_ranking(50, 7);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, random_ranking(50, 7));
        assert_ne!(a, random_ranking(50, 8));
        assert_eq!(ascending_ranking(&random_scores(50, 7)), a);
        // Pinned (computed independently from the published SplitMix64 and this module's
        // seeding): the crate's own code, so it never moves with a dependency version.
        assert_eq!(random_ranking(6, 1), vec![1, 3, 5, 0, 2, 4]);
    }
}
