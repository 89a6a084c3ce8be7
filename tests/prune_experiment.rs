//! The whole pruning experiment (`prune::experiment::run`) on the tiny GGUF model (3 layers x 4
//! heads, random weights) and the user sentiment task: recompute chains (masks grow by exactly
//! k, start at the fixed ranking, nest, resume without work, split whole across shards), OOD
//! tasks outside the aggregate, baseline summaries (also on a resumed folder), and the
//! inflection table's stderr columns.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use headroom::importance::{ImportanceSums, Normalize};
use headroom::model::{Mask, Model};
use headroom::prune::experiment::{self, Counts, PruneConfig, PruneOutcome};
use headroom::prune::{ascending_ranking, extend_head_mask, flatten, head_mask, RankingSource};
use headroom::runs::{merge, Manifest, ModelId, RunFolder, Shard};
use headroom::tasks::{self, LoadOptions, Task};
use headroom::tokenizer::Tokenizer;

const L: usize = 3;
const H: usize = 4;

fn tiny() -> (Model, Tokenizer) {
    let p = common::golden_dir().join("gguf/tiny_llama.gguf");
    (Model::load(&p, &Device::Cpu).unwrap(), Tokenizer::for_model(&p).unwrap())
}

/// The sentiment task (3 evaluation, 3 pool documents) and an "OOD" twin with the two halves
/// swapped, so its importance differs.
fn tasks() -> Vec<Task> {
    let mut o = LoadOptions::new(PathBuf::from("/nonexistent"));
    o.pool_fraction = 0.5;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/user/sentiment.toml");
    let t = tasks::load(path.to_str().unwrap(), &o).unwrap();
    let mut ood = t.clone();
    ood.name = "sentiment_ood".into();
    std::mem::swap(&mut ood.eval, &mut ood.pool);
    vec![t, ood]
}

fn config() -> PruneConfig {
    PruneConfig {
        shots: vec![0, 1],
        importance_docs: 3,
        rankings: vec![RankingSource::Own, RankingSource::Aggregate],
        heads: vec![0, 25, 50, 75],
        ffns: vec![0],
        importance_batch: 2,
        batch_size: 4,
        ood_tasks: vec!["sentiment_ood".into()],
        recompute: true,
        ..PruneConfig::default()
    }
}

fn open(dir: &Path, cfg: &PruneConfig) -> RunFolder {
    let manifest = Manifest {
        tool: "headroom test".into(),
        model: ModelId { path: "tiny_llama.gguf".into(), sha256: "00".into() },
        data: vec![],
        options: cfg.manifest_options(&["sentiment".to_string()]),
        compute_dtype: "f32".into(),
        weights: None,
    };
    RunFolder::open(dir, manifest).unwrap()
}

fn run(dir: &Path, cfg: &PruneConfig, shard: Shard) -> PruneOutcome {
    let (m, tok) = tiny();
    experiment::run(&m, &tok, &tasks(), cfg, &open(dir, cfg), shard).unwrap()
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn csv(p: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(p).unwrap();
    let mut lines = text.lines();
    let head: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines.map(|l| head.iter().cloned().zip(l.split(',').map(String::from)).collect()).collect()
}

fn mask_file(dir: &Path, task: &str, k: usize, p: u32) -> Mask {
    Mask::from_json_file(&dir.join(format!("recompute/{task}.{k}shot.{p}.mask.json"))).unwrap()
}

/// A JSON matrix or vector of numbers, flattened.
fn flat(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(flat).collect(),
        x => vec![x.as_f64().unwrap()],
    }
}

fn removed(m: &Mask) -> Vec<usize> {
    m.heads.iter().flatten().enumerate().filter(|(_, &g)| g == 0.0).map(|(i, _)| i).collect()
}

#[test]
fn recompute_masks_start_at_the_fixed_ranking_nest_and_remove_exactly_k() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config();
    let first = run(d.path(), &cfg, Shard::ALL);
    assert!(first.tables_written, "{first:?}");
    // 2 tasks x 2 shot counts chains; levels 50 and 75 are re-scorings (25 is the full model's).
    assert_eq!(first.recompute_scoring, Some(Counts { computed: 8, reused: 0 }));
    let heads_csv = csv(&d.path().join("sweeps/heads.csv"));
    let folder = open(d.path(), &cfg);
    // Re-scoring changes some later mask (else this test could not tell recompute from fixed).
    let mut differs_from_fixed = false;
    // Recompute levels whose mask a fixed ranking (own or aggregate) already reached: their
    // evaluation units are keyed by the mask, not the label, so the sweep's result is reused.
    let mut same_as_a_sweep_mask = 0;
    for task in ["sentiment", "sentiment_ood"] {
        for k in [0, 1] {
            let imp = read_json(&d.path().join(format!("importance/{task}.{k}shot.json")));
            let scores: Vec<Vec<f64>> = serde_json::from_value(imp["heads"].clone()).unwrap();
            let fixed = head_mask(&ascending_ranking(&flatten(&scores)), L, H, 25).unwrap();
            let agg = read_json(&d.path().join(format!("rankings/aggregate.{k}shot.json")));
            let agg_scores: Vec<Vec<f64>> = serde_json::from_value(agg["heads"].clone()).unwrap();
            let mut prev: Vec<usize> = vec![];
            for p in [25u32, 50, 75] {
                let m = mask_file(d.path(), task, k, p);
                m.validate(L, H).unwrap();
                let now = removed(&m);
                assert_eq!(now.len(), p as usize * L * H / 100, "{task} {k}-shot {p}%: exactly k heads");
                assert!(prev.iter().all(|i| now.contains(i)), "{task} {k}-shot {p}%: {now:?} keeps a head removed before ({prev:?})");
                assert_eq!(m.ffns_removed(), 0);
                let sweep_masks = [&scores, &agg_scores].map(|sc| head_mask(&ascending_ranking(&flatten(sc)), L, H, p).unwrap());
                same_as_a_sweep_mask += usize::from(sweep_masks.contains(&m));
                if p == 25 {
                    assert_eq!(m, fixed, "{task} {k}-shot: the first level is the fixed ranking's mask");
                } else {
                    // The previous mask extended by the importance re-scored under it.
                    let before = mask_file(d.path(), task, k, p - 25);
                    let sums: ImportanceSums = folder.load(&experiment::recompute_key(task, k, p, &before, &cfg)).unwrap().expect("re-scoring unit");
                    let want = extend_head_mask(&before, &flatten(&sums.scores(Normalize::Authors).heads), p as usize * L * H / 100).unwrap();
                    assert_eq!(m, want, "{task} {k}-shot {p}%");
                    let fixed_p = head_mask(&ascending_ranking(&flatten(&scores)), L, H, p).unwrap();
                    differs_from_fixed |= m != fixed_p;
                }
                prev = now;
            }
            // A row per level (0% included), the 25% one equal to the fixed ranking's.
            let row = |ranking: &str, p: &str| {
                heads_csv.iter().find(|r| r["task"] == task && r["shots"] == k.to_string() && r["ranking"] == ranking && r["heads_pct"] == p).cloned()
            };
            for p in ["0", "25", "50", "75"] {
                assert!(row("recompute", p).is_some(), "{task} {k}-shot recompute {p}% row missing");
            }
            assert_eq!(row("recompute", "25").unwrap()["value"], row("own", "25").unwrap()["value"]);
        }
    }
    assert!(differs_from_fixed, "no recompute mask differs from the fixed ranking's");
    // Every 25% level at least (4 chains) is a sweep mask.
    assert!(same_as_a_sweep_mask >= 4, "{same_as_a_sweep_mask}");
    assert_eq!(first.recompute_evals, Some(Counts { computed: 12 - same_as_a_sweep_mask, reused: same_as_a_sweep_mask }));
    // A rerun reuses everything.
    let again = run(d.path(), &cfg, Shard::ALL);
    assert_eq!(again.importance.computed, 0);
    assert_eq!(again.recompute_scoring, Some(Counts { computed: 0, reused: 8 }));
    assert_eq!(again.recompute_evals, Some(Counts { computed: 0, reused: 12 }));
    assert_eq!(again.sweeps.unwrap().computed, 0);
    assert_eq!(again.baselines, Some(Counts { computed: 0, reused: 4 }));
}

#[test]
fn extend_head_mask_takes_the_lowest_kept_heads() {
    let scores = [5.0, 1.0, 3.0, 0.0, 2.0, 4.0];
    let mut m = Mask::ones(2, 3);
    m.heads[1][0] = 0.0; // flat 3, the lowest score, already removed
    let e = extend_head_mask(&m, &scores, 3).unwrap();
    assert_eq!(removed(&e), vec![1, 3, 4]);
    assert_eq!(extend_head_mask(&Mask::ones(2, 3), &scores, 2).unwrap(), head_mask(&ascending_ranking(&scores), 2, 3, 40).unwrap());
    assert!(extend_head_mask(&m, &scores, 7).is_err());
    assert!(extend_head_mask(&m, &scores[..5], 2).is_err());
}

#[test]
fn recompute_chains_go_whole_to_one_shard_and_merge_to_the_unsharded_tables() {
    let cfg = PruneConfig { rankings: vec![RankingSource::Own], ..config() };
    let whole = tempfile::tempdir().unwrap();
    run(whole.path(), &cfg, Shard::ALL);
    let shards: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut scored = 0;
    for (i, s) in shards.iter().enumerate() {
        // Importance first (each shard has half), merged, then each shard runs its chains.
        run(s.path(), &cfg, Shard { index: i, count: 2 });
    }
    let merged = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = shards.iter().map(|s| s.path().to_path_buf()).collect();
    merge(merged.path(), &paths).unwrap();
    for (i, s) in shards.iter().enumerate() {
        merge(s.path(), &[merged.path().to_path_buf()]).unwrap();
        let out = run(s.path(), &cfg, Shard { index: i, count: 2 });
        assert!(!out.tables_written, "a shard alone is incomplete");
        scored += out.recompute_scoring.unwrap().computed;
    }
    assert_eq!(scored, 8, "each chain's re-scorings are done once, by one shard");
    merge(merged.path(), &paths).unwrap();
    let out = run(merged.path(), &cfg, Shard::ALL);
    assert!(out.tables_written);
    assert_eq!(out.recompute_scoring, Some(Counts { computed: 0, reused: 8 }));
    assert_eq!(out.recompute_evals.unwrap().computed, 0);
    let read = |d: &Path| std::fs::read_to_string(d.join("sweeps/heads.csv")).unwrap();
    assert_eq!(read(merged.path()), read(whole.path()));
}

#[test]
fn ood_tasks_stay_out_of_the_aggregate() {
    let d = tempfile::tempdir().unwrap();
    let cfg = PruneConfig { recompute: false, ..config() };
    run(d.path(), &cfg, Shard::ALL);
    for k in [0, 1] {
        let agg = read_json(&d.path().join(format!("rankings/aggregate.{k}shot.json")));
        assert_eq!(agg["shots"], k);
        assert_eq!(agg["tasks"], serde_json::json!(["sentiment"]));
        let heads: Vec<Vec<f64>> = serde_json::from_value(agg["heads"].clone()).unwrap();
        assert_eq!((heads.len(), heads[0].len()), (L, H), "heads is [layers][heads]");
        let own = read_json(&d.path().join(format!("importance/sentiment.{k}shot.json")));
        let ood = read_json(&d.path().join(format!("importance/sentiment_ood.{k}shot.json")));
        // The aggregate of one in-distribution task is its matrix. (Up to the last bit: the
        // importance file is written from the sums just computed, the aggregate from the sums
        // read back, and serde_json's float parsing is not exactly round-trip.)
        let close = |a: &serde_json::Value, b: &serde_json::Value| {
            let (a, b): (Vec<f64>, Vec<f64>) = (flat(a), flat(b));
            a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-12 * x.abs().max(y.abs()))
        };
        assert!(close(&agg["heads"], &own["heads"]), "{} vs {}", agg["heads"], own["heads"]);
        assert!(close(&agg["ffns"], &own["ffns"]));
        assert!(!close(&agg["heads"], &ood["heads"]), "the OOD task's matrix must not enter the aggregate");
        assert_ne!(own["heads"], ood["heads"], "the OOD twin must differ for this test to mean anything");
    }
    // The OOD task is pruned with the aggregate too (and with its own ranking).
    let rows = csv(&d.path().join("sweeps/heads.csv"));
    for ranking in ["own", "aggregate"] {
        assert_eq!(rows.iter().filter(|r| r["task"] == "sentiment_ood" && r["ranking"] == ranking).count(), 2 * 4, "{ranking}");
    }
    // Recorded in the manifest; absent when unset (older folders keep opening).
    assert_eq!(cfg.manifest_options(&[])["ood_tasks"], serde_json::json!(["sentiment_ood"]));
    assert!(PruneConfig::default().manifest_options(&[]).get("ood_tasks").is_none());
    // Bad input: a clear error, no panic.
    let (m, tok) = tiny();
    let bad = PruneConfig { ood_tasks: vec!["lambada".into()], ..cfg.clone() };
    let e = experiment::run(&m, &tok, &tasks(), &bad, &open(tempfile::tempdir().unwrap().path(), &bad), Shard::ALL).unwrap_err().to_string();
    assert!(e.contains("lambada") && e.contains("not one of the run's tasks"), "{e}");
    let only_ood = PruneConfig { ood_tasks: vec!["sentiment".into(), "sentiment_ood".into()], rankings: vec![RankingSource::Aggregate], ..cfg.clone() };
    let e = format!("{:#}", experiment::run(&m, &tok, &tasks(), &only_ood, &open(tempfile::tempdir().unwrap().path(), &only_ood), Shard::ALL).unwrap_err());
    assert!(e.contains("at least one task that is not OOD"), "{e}");
    let over = PruneConfig { heads: vec![0, 150], ..cfg };
    let e = experiment::run(&m, &tok, &tasks(), &over, &open(tempfile::tempdir().unwrap().path(), &over), Shard::ALL).unwrap_err().to_string();
    assert!(e.contains("150%"), "{e}");
}

#[test]
fn baselines_and_inflection_stderr_are_written_and_survive_a_resume() {
    let d = tempfile::tempdir().unwrap();
    let cfg = PruneConfig { recompute: false, ood_tasks: vec![], ..config() };
    let first = run(d.path(), &cfg, Shard::ALL);
    assert_eq!(first.baselines, Some(Counts { computed: 0, reused: 4 }), "stored when the 0% unit was evaluated");
    let rows = csv(&d.path().join("sweeps/heads.csv"));
    let base_row = |task: &str, k: usize| rows.iter().find(|r| r["task"] == task && r["shots"] == k.to_string() && r["heads_pct"] == "0").unwrap().clone();
    let check = |dir: &Path| {
        for task in ["sentiment", "sentiment_ood"] {
            for k in [0, 1] {
                let s = read_json(&dir.join(format!("eval/{task}.{k}shot.json")));
                let b = base_row(task, k);
                assert_eq!(format!("{:.6}", s["value"].as_f64().unwrap()), b["value"], "{task} {k}-shot");
                assert_eq!(s["n"].as_u64().unwrap().to_string(), b["n"]);
                assert_eq!((s["task"].as_str(), s["shots"].as_u64()), (Some(task), Some(k as u64)));
                assert!(s["metrics"].is_array() && s["split"].is_object() && s["mask"].is_null(), "{s}");
                assert_eq!(s["model"], "tiny_llama.gguf");
            }
        }
    };
    check(d.path());
    // inflection.csv: the base point's stderr and n, per task and for the average.
    let infl = csv(&d.path().join("sweeps/inflection.csv"));
    let own0: Vec<&BTreeMap<String, String>> = infl.iter().filter(|r| r["kind"] == "heads" && r["ranking"] == "own" && r["shots"] == "0").collect();
    for r in &own0 {
        if r["task"] == "average" {
            let (a, b) = (base_row("sentiment", 0), base_row("sentiment_ood", 0));
            let se = |r: &BTreeMap<String, String>| r["stderr"].parse::<f64>().unwrap();
            let want = (se(&a).powi(2) + se(&b).powi(2)).sqrt() / 2.0;
            assert!((r["base_stderr"].parse::<f64>().unwrap() - want).abs() < 2e-6, "{r:?} vs {want}");
            assert_eq!(r["base_n"].parse::<usize>().unwrap(), a["n"].parse::<usize>().unwrap() + b["n"].parse::<usize>().unwrap());
        } else {
            let b = base_row(&r["task"], 0);
            assert_eq!((&r["base_stderr"], &r["base_n"]), (&b["stderr"], &b["n"]));
        }
    }
    assert_eq!(own0.len(), 3, "two tasks and their average: {infl:?}");
    // A folder without baseline units (an older run) gets them back with one evaluation each.
    std::fs::remove_dir_all(d.path().join("eval")).unwrap();
    std::fs::remove_dir_all(d.path().join("units/eval_summary")).unwrap();
    let resumed = run(d.path(), &cfg, Shard::ALL);
    assert_eq!(resumed.sweeps.unwrap().computed, 0);
    assert_eq!(resumed.baselines, Some(Counts { computed: 4, reused: 0 }));
    check(d.path());
    assert_eq!(run(d.path(), &cfg, Shard::ALL).baselines, Some(Counts { computed: 0, reused: 4 }));
}

/// Issue 15: evaluation units are keyed by what determines the result. With one
/// in-distribution task, `own` and `aggregate` give that task the same masks: each distinct mask
/// is evaluated once (the units are counted), and the OOD task's differ.
#[test]
fn a_mask_reached_under_two_rankings_is_evaluated_once() {
    let d = tempfile::tempdir().unwrap();
    let cfg = PruneConfig { recompute: false, ..config() };
    let first = run(d.path(), &cfg, Shard::ALL);
    assert!(first.tables_written, "{first:?}");
    let units = experiment::sweep_units(&tasks(), &cfg);
    // The distinct (task, shots, mask) triples, built from the run's own score files.
    let mut distinct: Vec<(String, usize, Mask)> = Vec::new();
    for task in ["sentiment", "sentiment_ood"] {
        for k in [0usize, 1] {
            let own: Vec<Vec<f64>> = serde_json::from_value(read_json(&d.path().join(format!("importance/{task}.{k}shot.json")))["heads"].clone()).unwrap();
            let agg: Vec<Vec<f64>> = serde_json::from_value(read_json(&d.path().join(format!("rankings/aggregate.{k}shot.json")))["heads"].clone()).unwrap();
            for sc in [&own, &agg] {
                for &p in &cfg.heads {
                    let m = head_mask(&ascending_ranking(&flatten(sc)), L, H, p).unwrap();
                    if !distinct.contains(&(task.to_string(), k, m.clone())) {
                        distinct.push((task.to_string(), k, m));
                    }
                }
            }
        }
    }
    let sweeps = first.sweeps.unwrap();
    assert_eq!(sweeps.computed, distinct.len(), "{sweeps:?}");
    assert_eq!(sweeps.computed + sweeps.reused, units.len());
    // At least sentiment's own and aggregate coincide (25/50/75%, both shot counts).
    assert!(sweeps.reused >= 6, "{sweeps:?}");
    let stored = std::fs::read_dir(d.path().join("units/eval")).unwrap().count();
    assert_eq!(stored, distinct.len());
    // Both labels still get their rows, with the same value.
    let rows = csv(&d.path().join("sweeps/heads.csv"));
    let value = |r: &str| rows.iter().find(|x| x["task"] == "sentiment" && x["shots"] == "1" && x["ranking"] == r && x["heads_pct"] == "50").unwrap()["value"].clone();
    assert_eq!(value("own"), value("aggregate"));
}

/// Issue 15: a folder's evaluation units are never reused under other evaluation options.
/// `--limit` is in the manifest, so `headroom prune` refuses the folder outright; and even a
/// folder whose manifest does not say (copied or merged by hand) keys its units by the limit.
#[test]
fn another_limit_never_reuses_units() {
    let d = tempfile::tempdir().unwrap();
    let cfg = PruneConfig { recompute: false, limit: Some(2), ..config() };
    let first = run(d.path(), &cfg, Shard::ALL);
    assert!(first.sweeps.unwrap().computed > 0);
    let other = PruneConfig { limit: Some(3), ..cfg.clone() };
    let manifest = Manifest {
        tool: "headroom test".into(),
        model: ModelId { path: "tiny_llama.gguf".into(), sha256: "00".into() },
        data: vec![],
        options: other.manifest_options(&["sentiment".to_string()]),
        compute_dtype: "f32".into(),
        weights: None,
    };
    let refused = RunFolder::open(d.path(), manifest).err().expect("a folder of another --limit is refused");
    assert!(refused.to_string().contains("limit"), "{refused}");
    // The first run's manifest, the other limit: nothing is reused.
    let (m, tok) = tiny();
    let second = experiment::run(&m, &tok, &tasks(), &other, &open(d.path(), &cfg), Shard::ALL).unwrap();
    let s = second.sweeps.unwrap();
    assert_eq!((s.computed, s.reused), (first.sweeps.unwrap().computed, first.sweeps.unwrap().reused), "{s:?}");
    // The same limit again: everything is.
    let third = experiment::run(&m, &tok, &tasks(), &other, &open(d.path(), &cfg), Shard::ALL).unwrap();
    assert_eq!(third.sweeps.unwrap().computed, 0);
}

/// Evaluation units of the layout before issue 15 (keyed by the ranking label) are refused
/// with a message that says what to do, not silently recomputed or misread.
#[test]
fn old_eval_units_are_refused_with_a_message() {
    let d = tempfile::tempdir().unwrap();
    let cfg = PruneConfig { recompute: false, ..config() };
    let dir = d.path().join("units/eval");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("0123456789abcdef.json"),
        r#"{"key": {"kind": "eval", "inputs": {"unit": {"task": "sentiment", "shots": 0, "ranking": "own", "heads_pct": 25, "ffns_pct": 0}, "mask": "00"}}, "result": {"metric": "acc", "value": 0.5, "n": 3, "stderr": 0.1}}"#,
    )
    .unwrap();
    let (m, tok) = tiny();
    let e = experiment::run(&m, &tok, &tasks(), &cfg, &open(d.path(), &cfg), Shard::ALL).unwrap_err().to_string();
    assert!(e.contains("older headroom") && e.contains("new --out folder"), "{e}");
}
