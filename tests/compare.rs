//! Rank statistics (spec 6): Spearman with ties against a hand computation and scipy, the
//! authors' argsort variant, top-k overlap, cross-task/shot tables, bootstrap intervals.
//!
//! Reference values marked "scipy" were computed once with scipy 1.17.1 (numpy arrays of the
//! literals shown) and pasted here; no Python runs in the tests.

use headroom::compare::{self, BootstrapOptions, Method, ScoreSet, ShotScores};
use headroom::importance::{ExampleContribution, Normalize};
use rand::{Rng, SeedableRng};

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-300)
}

#[test]
fn spearman_with_ties_equals_hand_computation_and_scipy() {
    // a = [1, 2, 2, 3, 5]: the two 2s share ranks 2 and 3 -> ranks [1, 2.5, 2.5, 4, 5].
    // b = [2, 1, 4, 4, 3]: sorted 1, 2, 3, 4, 4   -> ranks [2, 1, 4.5, 4.5, 3].
    // Both rank vectors have mean 3; deviations
    //   da = [-2, -0.5, -0.5, 1, 2], db = [-1, -2, 1.5, 1.5, 0]
    //   Σ da·db = 2 + 1 - 0.75 + 1.5 + 0 = 3.75
    //   Σ da² = 4 + 0.25 + 0.25 + 1 + 4 = 9.5,  Σ db² = 1 + 4 + 2.25 + 2.25 + 0 = 9.5
    //   rho = 3.75 / sqrt(9.5 · 9.5) = 15/38 = 0.394736842...
    let a = [1.0, 2.0, 2.0, 3.0, 5.0];
    let b = [2.0, 1.0, 4.0, 4.0, 3.0];
    assert_eq!(compare::average_ranks(&a), vec![1.0, 2.5, 2.5, 4.0, 5.0]);
    assert_eq!(compare::average_ranks(&b), vec![2.0, 1.0, 4.5, 4.5, 3.0]);
    let c = compare::spearman(&a, &b).unwrap();
    assert!((c.rho - 15.0 / 38.0).abs() < 1e-15, "rho = {}", c.rho);
    assert_eq!(c.n, 5);
    // scipy: spearmanr([1,2,2,3,5], [2,1,4,4,3]) -> (0.3947368421052632, 0.5107810387958469)
    assert!(close(c.p_value, 0.5107810387958469, 1e-12), "p = {}", c.p_value);
    // Symmetric, and a vector with itself is 1 with p = 0.
    assert_eq!(compare::spearman(&b, &a).unwrap().rho, c.rho);
    let s = compare::spearman(&a, &a).unwrap();
    assert_eq!((s.rho, s.p_value), (1.0, 0.0));
}

#[test]
fn spearman_p_value_matches_scipy_on_a_longer_case() {
    let x = [3.1, 0.2, 5.5, 1.0, 2.2, 9.9, 4.4, 0.7, 6.1, 8.0, 2.2, 7.3];
    let y = [2.0, 1.1, 4.0, 0.5, 3.5, 9.0, 2.2, 1.5, 7.7, 6.6, 3.0, 5.0];
    let c = compare::spearman(&x, &y).unwrap();
    // scipy: spearmanr(x, y) -> (0.9001765118147749, 6.588021000587251e-05)
    assert!(close(c.rho, 0.9001765118147749, 1e-13), "rho = {}", c.rho);
    assert!(close(c.p_value, 6.588021000587251e-05, 1e-9), "p = {}", c.p_value);
}

#[test]
fn student_t_and_hypergeometric_tails_match_scipy() {
    // scipy: 2 * t.sf(2.5, 7), 2 * t.sf(0.3, 1), 2 * t.sf(10.0, 100)
    assert!(close(compare::student_t_two_sided(2.5, 7.0), 0.04099221858575289, 1e-11));
    assert!(close(compare::student_t_two_sided(-0.3, 1.0), 0.8144528418445154, 1e-12));
    assert!(close(compare::student_t_two_sided(10.0, 100.0), 9.90168898459413e-17, 1e-8));
    // scipy: hypergeom(20, 6, 6).sf(1) = P(X >= 2); hypergeom(4608, 1382, 1382).sf(449) = P(X >= 450)
    assert!(close(compare::hypergeometric_sf(2, 20, 6, 6), 0.6126160990712075, 1e-11));
    assert!(close(compare::hypergeometric_sf(450, 4608, 1382, 1382), 0.007177232997792298, 1e-8));
    assert_eq!(compare::hypergeometric_sf(0, 20, 6, 6), 1.0);
    assert_eq!(compare::hypergeometric_sf(7, 20, 6, 6), 0.0);
}

#[test]
fn argsort_variant_differs_from_spearman_where_it_should() {
    // b ranks the heads in exactly the reverse order of a: Spearman = -1.
    let a = [0.5, 0.1, 0.4, 0.2, 0.3]; // ascending argsort [1, 3, 4, 2, 0]
    let b = [0.0, 4.0, 1.0, 3.0, 2.0]; // ascending argsort [0, 2, 4, 3, 1]
    assert_eq!(compare::ranking(&a), vec![1, 3, 4, 2, 0]);
    assert_eq!(compare::ranking(&b), vec![0, 2, 4, 3, 1]);
    let s = compare::spearman(&a, &b).unwrap();
    assert!((s.rho + 1.0).abs() < 1e-15);
    // The argsort permutations, both with mean 2: deviations [-1, 1, 2, 0, -2] and
    // [-2, 0, 2, 1, -1]; Σ products = 2 + 0 + 4 + 0 + 2 = 8, Σ squares = 10 each -> 0.8.
    let g = compare::argsort_correlation(&a, &b).unwrap();
    assert!((g.rho - 0.8).abs() < 1e-15, "argsort rho = {}", g.rho);
    // scipy: spearmanr([1,3,4,2,0], [0,2,4,3,1]) -> (0.8, 0.10408803866182788)
    assert!(close(g.p_value, 0.10408803866182788, 1e-10));
    assert_eq!(compare::correlate(Method::Argsort, &a, &b).unwrap(), g);

    // Spec 6.1: on long layer-major vectors with a clearly positive Spearman the argsort
    // correlation is near 0 (it measures whether equal rank positions hold nearby indices).
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let x: Vec<f64> = (0..4608).map(|_| rng.random::<f64>()).collect();
    let y: Vec<f64> = x.iter().map(|v| v + 0.4 * rng.random::<f64>()).collect();
    let s = compare::spearman(&x, &y).unwrap().rho;
    let g = compare::argsort_correlation(&x, &y).unwrap().rho;
    assert!(s > 0.8, "spearman {s}");
    assert!(g.abs() < 0.1, "argsort {g}");
}

#[test]
fn top_k_overlap_self_reverse_and_expectation() {
    let n = 4608;
    let a: Vec<f64> = (0..n).map(|i| ((i * 7919) % n) as f64).collect();
    let rev: Vec<f64> = a.iter().map(|v| -v).collect();
    let o = compare::top_overlap(&a, &a, 0.3).unwrap();
    assert_eq!((o.k, o.shared, o.overlap), (1382, 1382, 1.0)); // int(0.3 * 4608) = 1382
    assert!((o.expected - 1382.0 / 4608.0).abs() < 1e-15);
    for frac in [0.1, 0.3, 0.49] {
        let o = compare::top_overlap(&a, &rev, frac).unwrap();
        assert_eq!(o.shared, 0, "frac {frac}");
        assert_eq!(o.overlap, 0.0);
        assert_eq!(o.p_value, 1.0);
    }
    // Past half, the two ends must meet: 2k - n shared.
    let o = compare::top_overlap(&a, &rev, 0.6).unwrap();
    assert_eq!(o.shared, 2 * o.k - n);
    // Ties: stable ascending order, so among equal scores the higher index is "more important".
    assert_eq!(compare::top_set(&[1.0, 1.0, 1.0, 0.0], 2), vec![2, 1]);
    // Random rankings overlap about k/n on average.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mean: f64 = (0..50)
        .map(|_| {
            let x: Vec<f64> = (0..n).map(|_| rng.random()).collect();
            let y: Vec<f64> = (0..n).map(|_| rng.random()).collect();
            compare::top_overlap(&x, &y, 0.3).unwrap().overlap
        })
        .sum::<f64>()
        / 50.0;
    assert!((mean - 1382.0 / 4608.0).abs() < 0.01, "mean random overlap {mean}");
    assert!(compare::top_overlap(&a, &a[..10], 0.3).is_err());
    assert!(compare::top_overlap(&a[..3], &a[..3], 0.3).is_err()); // k = 0
}

#[test]
fn cross_task_matrix_with_aggregate_and_random_rows() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let base: Vec<f64> = (0..144).map(|_| rng.random()).collect();
    let sets: Vec<ScoreSet> = (0..3)
        .map(|t| ScoreSet { label: format!("task{t}"), scores: base.iter().map(|b| b + 0.3 * rng.random::<f64>()).collect() })
        .collect();
    let all = compare::with_reference_rows(&sets, true, Some(5)).unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[3].label, "aggregate");
    let agg = compare::aggregate(&sets).unwrap();
    assert!((agg[10] - (sets[0].scores[10] + sets[1].scores[10] + sets[2].scores[10]) / 3.0).abs() < 1e-12);
    let m = compare::correlation_matrix(&all, Method::Spearman).unwrap();
    for i in 0..5 {
        assert!((m.rho[i][i] - 1.0).abs() < 1e-12);
        for j in 0..5 {
            assert_eq!(m.rho[i][j], m.rho[j][i]);
        }
    }
    assert!(m.rho[0][1] > 0.7 && m.p_value[0][1] < 1e-10);
    assert!(m.rho[0][3] > m.rho[0][1], "a task agrees more with the aggregate than with another task");
    assert!(m.rho[0][4].abs() < 0.3 && m.p_value[0][4] > 0.001, "random row rho {}", m.rho[0][4]);
    let o = compare::overlap_matrix(&all, 0.3).unwrap();
    assert_eq!(o.k, 43);
    assert_eq!(o.overlap[2][2], 1.0);
    assert!(o.overlap[0][1] > o.expected);
}

#[test]
fn cross_shot_table_mean_and_unbiased_variance() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut items = Vec::new();
    let mut direct: Vec<f64> = Vec::new();
    for t in 0..4 {
        let zero: Vec<f64> = (0..100).map(|_| rng.random()).collect();
        let noise = 0.2 + 0.3 * t as f64;
        let one: Vec<f64> = zero.iter().map(|v| v + noise * rng.random::<f64>()).collect();
        direct.push(compare::spearman(&zero, &one).unwrap().rho);
        items.push(ShotScores { task: format!("t{t}"), shots: 0, scores: zero });
        items.push(ShotScores { task: format!("t{t}"), shots: 1, scores: one });
    }
    // A task with only 0-shot scores counts nowhere off the diagonal.
    items.push(ShotScores { task: "lonely".into(), shots: 0, scores: (0..100).map(|i| i as f64).collect() });
    let cs = compare::cross_shot(&items, Method::Spearman).unwrap();
    assert_eq!(cs.shots, vec![0, 1]);
    assert_eq!(cs.n_tasks, vec![vec![5, 4], vec![4, 4]]);
    let mean = direct.iter().sum::<f64>() / 4.0;
    let var = direct.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / 3.0;
    assert!((cs.mean[0][1] - mean).abs() < 1e-12 && (cs.mean[1][0] - mean).abs() < 1e-12);
    assert!((cs.variance[0][1] - var).abs() < 1e-12);
    assert!((cs.mean[0][0] - 1.0).abs() < 1e-12);
    assert_eq!(cs.per_task.len(), 4);
    assert!(cs.max_p_value[0][1] < 0.01);
    // Duplicate (task, shots) is an error, not a silent pick.
    let mut dup = items.clone();
    dup.push(items[0].clone());
    assert!(compare::cross_shot(&dup, Method::Spearman).is_err());
}

/// Synthetic per-example contributions: head (l, h) has true importance `base[l*H+h]`, each
/// example sees it times a noise factor; token counts vary.
fn synthetic(n: usize, base: &[f64], n_layers: usize, seed: u64) -> Vec<ExampleContribution> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let tokens = rng.random_range(8..40u32);
            let scale = (tokens - 1) as f64;
            ExampleContribution {
                head_abs: base.iter().map(|b| (b * scale * (0.2 + 1.6 * rng.random::<f64>())) as f32).collect(),
                ffn_abs: (0..n_layers).map(|l| (scale * (1.0 + l as f64) * rng.random::<f64>()) as f32).collect(),
                tokens,
                label_tokens: rng.random_range(1..4),
                loss: 0.0,
            }
        })
        .collect()
}

#[test]
fn bootstrap_intervals_contain_the_point_and_shrink_with_examples() {
    let (l, h) = (3, 4);
    let base: Vec<f64> = (0..l * h).map(|i| 1.0 + (i as f64 * 0.37).sin().abs()).collect();
    let other: Vec<f64> = base.iter().enumerate().map(|(i, b)| b + 0.3 * ((i * 5 % 7) as f64 / 7.0)).collect();
    let opts = BootstrapOptions { resamples: 300, seed: 9, level: 0.95, normalize: Normalize::Authors };
    let mut widths = Vec::new();
    let mut rank_widths = Vec::new();
    let mut mean_widths = Vec::new();
    for n in [30, 480] {
        let a = synthetic(n, &base, l, 1);
        let b = synthetic(n, &other, l, 2);
        // Correlation between two score sets, each resampled independently.
        let c = compare::bootstrap_correlation(&a, &b, Method::Spearman, &opts).unwrap();
        let point = compare::spearman(
            &compare::flatten(&compare::scores_from_examples(&a, Normalize::Authors).unwrap().heads),
            &compare::flatten(&compare::scores_from_examples(&b, Normalize::Authors).unwrap().heads),
        )
        .unwrap()
        .rho;
        assert_eq!(c.point, point);
        assert!(c.lo <= c.point && c.point <= c.hi, "n={n}: {c:?}");
        widths.push(c.hi - c.lo);
        // A plain statistic: one head's normalized score.
        let m = compare::bootstrap_interval(&[&a], &opts, |s| s[0].heads[1][2]).unwrap();
        assert!(m.lo <= m.point && m.point <= m.hi, "n={n}: {m:?}");
        mean_widths.push(m.hi - m.lo);
        // Per-head rank intervals.
        let r = compare::bootstrap_head_ranks(&a, &opts).unwrap();
        assert_eq!(r.point.len(), l * h);
        for i in 0..l * h {
            assert!(r.lo[i] <= r.point[i] && r.point[i] <= r.hi[i], "n={n} head {i}: {} not in [{}, {}]", r.point[i], r.lo[i], r.hi[i]);
            assert!(r.lo[i] >= 1.0 && r.hi[i] <= (l * h) as f64);
        }
        rank_widths.push((0..l * h).map(|i| r.hi[i] - r.lo[i]).sum::<f64>() / (l * h) as f64);
        // Same seed, same interval.
        assert_eq!(compare::bootstrap_correlation(&a, &b, Method::Spearman, &opts).unwrap(), c);
    }
    // 16x the examples: sampling noise shrinks ~4x; demand at least 2x.
    assert!(mean_widths[1] < 0.5 * mean_widths[0], "score widths {mean_widths:?}");
    assert!(widths[1] < 0.5 * widths[0], "correlation widths {widths:?}");
    assert!(rank_widths[1] < 0.7 * rank_widths[0], "rank widths {rank_widths:?}");
}

#[test]
fn resampled_sums_use_the_authors_normalization() {
    // Two examples with known numbers: layer 0 divides by Σ(N-1), the last layer by Σ T_y.
    let e = |v: f32, tokens: u32, label: u32| ExampleContribution {
        head_abs: vec![v, 2.0 * v, 3.0 * v, 4.0 * v],
        ffn_abs: vec![v, v],
        tokens,
        label_tokens: label,
        loss: 0.0,
    };
    let ex = vec![e(1.0, 5, 1), e(10.0, 11, 3)];
    let s = compare::resampled_sums(&ex, &[2, 1], 2, 2).scores(Normalize::Authors);
    // heads layer 0, head 0: (2·1 + 10) / (2·4 + 10) = 12/18; last layer head 1: (2·4 + 40) / (2·1 + 3)
    assert!((s.heads[0][0] - 12.0 / 18.0).abs() < 1e-12);
    assert!((s.heads[1][1] - 48.0 / 5.0).abs() < 1e-12);
    assert!(compare::contribution_shape(&[ex[0].clone(), ExampleContribution::default()]).is_err());
}
