//! `headroom prune` end to end on the default model (CI fetches it): a small sweep runs, writes
//! its tables, its 0% point equals a plain `headroom eval`, and a second run reuses every unit.

mod common;

use std::process::Command;

fn headroom(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_headroom")).args(args).output().unwrap();
    assert!(out.status.success(), "headroom {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn small_sweep_on_the_default_model() {
    if common::default_model().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let sweep = ["prune", "--tasks", "copa,arc_easy", "--shots", "0,1", "--limit", "50", "--importance-docs", "8", "--heads", "0,30,60,90", "--ffns", "0", "--out", run_s];
    let first = headroom(&sweep);
    let csv = std::fs::read_to_string(run.join("sweeps/heads.csv")).unwrap();
    eprintln!("{csv}");
    let rows: Vec<Vec<String>> = csv.lines().skip(1).map(|l| l.split(',').map(String::from).collect()).collect();
    assert_eq!(rows.len(), 2 * 2 * 4, "2 tasks x 2 shot counts x 4 levels");
    for r in &rows {
        let v: f64 = r[6].parse().unwrap();
        assert!((0.0..=1.0).contains(&v) && r[7] == "50", "{r:?}");
    }
    for f in ["manifest.json", "sweeps/inflection.csv", "importance/copa.0shot.json", "importance/arc_easy.1shot.json", "deviations.json"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    // The 0% point is the plain evaluation.
    let ev = dir.path().join("eval");
    headroom(&["eval", "--task", "copa", "--shots", "0", "--limit", "50", "--out", ev.to_str().unwrap(), "--quiet"]);
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ev.join("copa.0shot.json")).unwrap()).unwrap();
    let plain = summary["value"].as_f64().unwrap();
    let zero = rows.iter().find(|r| r[0] == "copa" && r[1] == "0" && r[3] == "0").unwrap();
    assert!((zero[6].parse::<f64>().unwrap() - plain).abs() < 1e-9, "0% point {} vs eval {plain}", zero[6]);
    // Resume: nothing is recomputed, and the table is byte-identical.
    let second = headroom(&sweep);
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(text.contains("0 units evaluated now, 16 reused"), "{text}");
    assert_eq!(std::fs::read_to_string(run.join("sweeps/heads.csv")).unwrap(), csv);
    drop(first);
}
