//! Pruning logic and run folders: mask construction, resume after a crash, shards that merge to
//! the unsharded run byte for byte, manifests that refuse to mix runs, inflection points.

use headroom::model::Mask;
use headroom::prune::*;
use headroom::runs::*;

#[test]
fn level_p_masks_exactly_the_k_lowest_ranked_heads() {
    let (l, h) = (4, 6); // N = 24
    let scores: Vec<f64> = (0..l * h).map(|i| ((i * 7) % 24) as f64).collect();
    let r = ascending_ranking(&scores);
    for p in [0, 10, 30, 50, 70, 90] {
        let m = head_mask(&r, l, h, p).unwrap();
        let k = p as usize * 24 / 100;
        assert_eq!(m.heads_removed(), k, "p={p}");
        // exactly the k lowest scores are removed
        for (i, &s) in scores.iter().enumerate() {
            let removed = m.heads[i / h][i % h] == 0.0;
            assert_eq!(removed, s < k as f64, "p={p} head {i}");
        }
        assert_eq!(m.ffns_removed(), 0);
    }
    // k = floor(p N / 100), the authors' int(p)*len//100: 4608 heads at 70% -> 3225.
    assert_eq!(n_pruned(70, 4608), 3225);
    assert_eq!(n_pruned(30, 64), 19);
}

#[test]
fn ties_are_stable_and_masks_union() {
    let r = ascending_ranking(&[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
    assert_eq!(r, vec![1, 3, 5, 0, 2, 4]);
    let heads = head_mask(&r, 2, 3, 50).unwrap(); // removes flat 1, 3, 5
    let ffns = ffn_mask(&[1, 0], 2, 3, 50).unwrap(); // removes FFN 1
    let both = union(&heads, &ffns);
    assert_eq!(both.heads, vec![vec![1.0, 0.0, 1.0], vec![0.0, 1.0, 0.0]]);
    assert_eq!(both.ffns, vec![1.0, 0.0]);
    assert!(head_mask(&[0, 0, 1, 2, 3, 4], 2, 3, 10).is_err(), "not a permutation");
}

#[test]
fn ffn_oracle_orders_by_ascending_diff_stably() {
    let (d, order) = ffn_oracle(0.70, &[0.70, 0.60, 0.72, 0.70]);
    assert!((d[1] - 10.0).abs() < 1e-9 && (d[2] + 2.0).abs() < 1e-9);
    assert_eq!(order, vec![2, 0, 3, 1]);
}

#[test]
fn inflection_is_the_last_level_before_the_first_drop() {
    let pts = [(0, 0.70), (10, 0.71), (20, 0.695), (30, 0.68), (40, 0.69)];
    assert_eq!(inflection(&pts, 0.01), Some(20));
    assert_eq!(inflection(&pts, 0.05), Some(40));
    assert_eq!(inflection(&pts[1..], 0.01), None);
}

#[test]
fn ranking_sources_parse() {
    assert_eq!(RankingSource::parse("own").unwrap(), RankingSource::Own);
    assert_eq!(RankingSource::parse("task:copa").unwrap(), RankingSource::Task("copa".into()));
    assert_eq!(RankingSource::parse("random:7").unwrap(), RankingSource::Random(7));
    assert!(RankingSource::parse("random:x").is_err());
    assert!(RankingSource::parse("bogus").is_err());
    assert_ne!(random_ranking(100, 1), random_ranking(100, 2));
    assert_eq!(random_ranking(100, 1), random_ranking(100, 1));
}

#[test]
fn shard_flags_and_slurm_environment() {
    assert_eq!(Shard::parse("2/5").unwrap(), Shard { index: 2, count: 5 });
    assert!(Shard::parse("5/5").is_err() && Shard::parse("x").is_err());
    // (env vars are process-global: only this test touches them)
    std::env::set_var("SLURM_ARRAY_TASK_ID", "3");
    std::env::set_var("SLURM_ARRAY_TASK_COUNT", "4");
    std::env::set_var("SLURM_ARRAY_TASK_MIN", "1");
    assert_eq!(Shard::from_flag_or_env(None).unwrap(), Shard { index: 2, count: 4 });
    assert_eq!(Shard::from_flag_or_env(Some("0/2")).unwrap(), Shard { index: 0, count: 2 });
    for k in ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"] {
        std::env::remove_var(k);
    }
    assert_eq!(Shard::from_flag_or_env(None).unwrap(), Shard::ALL);
}

// ---- sweeps over a fake evaluator ----

const L: usize = 3;
const H: usize = 4;

fn manifest() -> Manifest {
    Manifest {
        tool: "headroom test".into(),
        model: ModelId { path: "fake".into(), sha256: "00".into() },
        data: vec!["fake-data==1".into()],
        options: serde_json::json!({"tasks": ["a", "b"]}),
        compute_dtype: "f32".into(),
        weights: None,
    }
}

fn units() -> Vec<SweepUnit> {
    let mut v = vec![];
    for task in ["a", "b"] {
        for shots in [0, 1] {
            for p in [0, 30, 60, 90] {
                v.push(SweepUnit { task: task.into(), shots, ranking: "own".into(), heads_pct: p, ffns_pct: 0 });
            }
        }
    }
    v
}

fn mask_for(u: &SweepUnit) -> anyhow::Result<Mask> {
    let scores: Vec<f64> = (0..L * H).map(|i| ((i * 5 + u.shots) % 12) as f64).collect();
    head_mask(&ascending_ranking(&scores), L, H, u.heads_pct)
}

/// A deterministic "accuracy" that falls with the heads removed.
fn fake_eval(u: &SweepUnit, m: &Mask) -> EvalPoint {
    let base = if u.task == "a" { 0.7 } else { 0.6 };
    EvalPoint { metric: "acc".into(), value: base - 0.01 * m.heads_removed() as f64 - 0.001 * u.shots as f64, n: 100, stderr: 0.04 }
}

fn run(dir: &std::path::Path, shard: Shard, calls: &mut usize, fail_after: Option<usize>) -> anyhow::Result<SweepOutcome> {
    let folder = RunFolder::open(dir, manifest())?;
    let us = units();
    let mut n = 0;
    run_sweep(
        &folder,
        &us,
        shard,
        &|_| serde_json::json!({"limit": null}),
        &mut mask_for,
        &mut |u, m| {
            if fail_after == Some(n) {
                anyhow::bail!("simulated crash");
            }
            n += 1;
            *calls += 1;
            Ok(fake_eval(u, m))
        },
        &mut |_, _| {},
    )
}

#[test]
fn resume_after_a_crash_recomputes_only_missing_units() {
    let whole = tempfile::tempdir().unwrap();
    let mut calls = 0;
    let reference = run(whole.path(), Shard::ALL, &mut calls, None).unwrap();
    assert_eq!((calls, reference.computed), (16, 16));
    let reference_csv = tidy_csv(&reference.rows.unwrap()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut calls = 0;
    assert!(run(dir.path(), Shard::ALL, &mut calls, Some(5)).is_err(), "crash after 5 units");
    assert_eq!(calls, 5);
    let mut calls = 0;
    let out = run(dir.path(), Shard::ALL, &mut calls, None).unwrap();
    assert_eq!((calls, out.computed, out.reused), (11, 11, 5));
    assert_eq!(tidy_csv(&out.rows.unwrap()).unwrap(), reference_csv);
    // A third run does nothing.
    let mut calls = 0;
    assert_eq!(run(dir.path(), Shard::ALL, &mut calls, None).unwrap().computed, 0);
    assert_eq!(calls, 0);
}

#[test]
fn three_shards_merged_equal_the_unsharded_run_byte_for_byte() {
    let whole = tempfile::tempdir().unwrap();
    let mut calls = 0;
    let reference_csv = tidy_csv(&run(whole.path(), Shard::ALL, &mut calls, None).unwrap().rows.unwrap()).unwrap();
    let shards: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut total = 0;
    for (i, d) in shards.iter().enumerate() {
        let mut calls = 0;
        let out = run(d.path(), Shard { index: i, count: 3 }, &mut calls, None).unwrap();
        assert!(out.rows.is_none(), "a shard alone is incomplete");
        total += calls;
    }
    assert_eq!(total, 16, "the shards split the work without overlap");
    let merged = tempfile::tempdir().unwrap();
    let paths: Vec<std::path::PathBuf> = shards.iter().map(|d| d.path().to_path_buf()).collect();
    let rep = merge(merged.path(), &paths).unwrap();
    assert_eq!(rep.copied, 16);
    let mut calls = 0;
    let out = run(merged.path(), Shard::ALL, &mut calls, None).unwrap();
    assert_eq!(calls, 0);
    assert_eq!(tidy_csv(&out.rows.unwrap()).unwrap(), reference_csv);
}

#[test]
fn folders_of_different_runs_do_not_mix() {
    let a = tempfile::tempdir().unwrap();
    RunFolder::open(a.path(), manifest()).unwrap();
    let mut other = manifest();
    other.model.sha256 = "ff".into();
    let e = RunFolder::open(a.path(), other.clone()).err().unwrap().to_string();
    assert!(e.contains("manifest differs") && e.contains("model"), "{e}");
    let b = tempfile::tempdir().unwrap();
    RunFolder::open(b.path(), other).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let e = merge(&dest.path().join("m"), &[a.path().to_path_buf(), b.path().to_path_buf()]).unwrap_err().to_string();
    assert!(e.contains("cannot merge"), "{e}");
}

#[test]
fn model_ids_hash_files_and_cache_the_hash() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("m.gguf");
    std::fs::write(&f, b"abc").unwrap();
    let id = ModelId::of(&f, Some(d.path())).unwrap();
    assert_eq!(id.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"); // sha256("abc")
    assert!(d.path().join("hashes.json").exists());
    assert_eq!(ModelId::of(&f, Some(d.path())).unwrap(), id);
}

/// The compute dtype changes the numbers: a folder refuses a run in another dtype (saying so),
/// and a bf16 run's unit keys carry the dtype while f32 keys stay as before the dtype existed.
/// The weights mode does not change them: a folder made streamed reopens resident.
#[test]
fn compute_dtype_is_part_of_the_run_and_its_units() {
    let a = tempfile::tempdir().unwrap();
    let f32_folder = RunFolder::open(a.path(), Manifest { weights: Some("stream".into()), ..manifest() }).unwrap();
    RunFolder::open(a.path(), Manifest { weights: Some("resident".into()), ..manifest() }).unwrap();
    let bf16 = Manifest { compute_dtype: "bf16".into(), ..manifest() };
    let e = RunFolder::open(a.path(), bf16.clone()).err().unwrap().to_string();
    assert!(e.contains("manifest differs") && e.contains("compute dtype f32 vs bf16"), "{e}");
    let b = tempfile::tempdir().unwrap();
    let bf16_folder = RunFolder::open(b.path(), bf16).unwrap();
    let key = UnitKey::new("eval", serde_json::json!({"task": "a", "shots": 0}));
    let name = |f: &RunFolder| f.unit_path(&key).file_name().unwrap().to_owned();
    assert_eq!(name(&f32_folder), std::ffi::OsString::from(format!("{}.json", key.hash())), "f32 keys are unchanged");
    assert_ne!(name(&bf16_folder), name(&f32_folder));
    assert_eq!(bf16_folder.full_key(&key).inputs["dtype"], "bf16");
    // A manifest written before the dtype was recorded reads as f32.
    let old = r#"{"tool": "t", "model": {"path": "p", "sha256": "00"}, "data": [], "options": {}}"#;
    assert_eq!(serde_json::from_str::<Manifest>(old).unwrap().compute_dtype, "f32");
}
