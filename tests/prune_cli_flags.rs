//! `headroom prune --ood-tasks --recompute` end to end on the default model: the OOD task is
//! pruned by its own and the aggregate ranking, the aggregate leaves it out, recompute rows and
//! masks appear, baselines and inflection stderr are written, and a rerun reuses everything.
//! (The logic is tested on the tiny model in tests/prune_experiment.rs; this checks the flags.)

mod common;

use std::process::Command;

fn headroom(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_headroom")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = headroom(args);
    assert!(out.status.success(), "headroom {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_task_in_both_lists_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = headroom(&["prune", "--tasks", "copa", "--ood-tasks", "copa", "--out", dir.path().join("run").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("both --tasks and --ood-tasks") && !err.contains("panicked"), "{err}");
    let out = headroom(&["prune", "--tasks", "copa", "--heads", "0,120", "--out", dir.path().join("run").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("120% is above 100%"));
}

#[test]
fn ood_and_recompute_on_the_default_model() {
    if common::default_model().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args = [
        "prune", "--tasks", "copa", "--ood-tasks", "arc_easy", "--shots", "0", "--limit", "20", "--importance-docs", "4", "--ranking", "own,aggregate",
        "--heads", "0,30,60", "--ffns", "0", "--recompute", "--out", run.to_str().unwrap(),
    ];
    let first = ok(&args);
    // Units are keyed by mask content (issue 15): copa is the only in-distribution task, so its
    // own and aggregate masks coincide at 30 and 60% (2 reused), and each recompute chain's 30%
    // level is the fixed ranking's mask, already evaluated by the sweep (2 reused).
    assert!(first.contains("sweeps: 8 units evaluated now, 2 reused"), "{first}");
    assert!(first.contains("recompute: 2 re-scorings computed now, 0 reused; 2 units evaluated now, 2 reused"), "{first}");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["options"]["ood_tasks"], serde_json::json!(["arc_easy"]));
    assert_eq!(manifest["options"]["tasks"], serde_json::json!(["copa"]));
    let agg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("rankings/aggregate.0shot.json")).unwrap()).unwrap();
    assert_eq!(agg["tasks"], serde_json::json!(["copa"]));
    // Issue 15: the report's aggregate is the sweeps' aggregate (OOD tasks left out), read from
    // the run's file, and the same when the file is absent (computed under the manifest's rule).
    let imps: Vec<(String, usize, serde_json::Value)> = ["copa", "arc_easy"]
        .iter()
        .map(|t| (t.to_string(), 0, serde_json::from_str(&std::fs::read_to_string(run.join(format!("importance/{t}.0shot.json"))).unwrap()).unwrap()))
        .collect();
    let sweeps_heads: Vec<Vec<f64>> = serde_json::from_value(agg["heads"].clone()).unwrap();
    let sweeps_ffns: Vec<f64> = serde_json::from_value(agg["ffns"].clone()).unwrap();
    let from_file = headroom::report::aggregate_importance(&run, 0, &imps).unwrap().unwrap();
    assert_eq!((from_file.tasks.clone(), &from_file.heads, &from_file.ffns), (vec!["copa".to_string()], &sweeps_heads, &sweeps_ffns));
    let copy = dir.path().join("no-aggregate");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(run.join("manifest.json"), copy.join("manifest.json")).unwrap();
    let computed = headroom::report::aggregate_importance(&copy, 0, &imps).unwrap().unwrap();
    assert_eq!(computed, from_file);
    let csv = std::fs::read_to_string(run.join("sweeps/heads.csv")).unwrap();
    for label in ["arc_easy,0,aggregate,60", "arc_easy,0,own,60", "arc_easy,0,recompute,60", "copa,0,recompute,30"] {
        assert!(csv.contains(label), "{label} missing:\n{csv}");
    }
    for f in ["recompute/copa.0shot.30.mask.json", "recompute/arc_easy.0shot.60.mask.json", "eval/copa.0shot.json", "eval/arc_easy.0shot.json"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    // The recompute mask is a valid --mask file for `headroom eval`.
    let ev = dir.path().join("ev");
    ok(&["eval", "--task", "copa", "--shots", "0", "--limit", "20", "--mask", run.join("recompute/copa.0shot.60.mask.json").to_str().unwrap(), "--out", ev.to_str().unwrap(), "--quiet"]);
    assert!(std::fs::read_to_string(run.join("sweeps/inflection.csv")).unwrap().starts_with("task,shots,ranking,kind,inflection_pct,tolerance,base_value,base_stderr,base_n\n"));
    let second = ok(&args);
    assert!(second.contains("sweeps: 0 units evaluated now") && second.contains("recompute: 0 re-scorings computed now, 2 reused; 0 units evaluated now, 4 reused"), "{second}");
}
