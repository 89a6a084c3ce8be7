//! `headroom induction-ablate` wiring on the default model: baseline equals a plain evaluation,
//! and every (k, top/random set) is evaluated and written.

mod common;

use std::process::Command;

fn headroom(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_headroom")).args(args).output().unwrap();
    assert!(out.status.success(), "headroom {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ablation_runs_and_its_baseline_is_the_plain_eval() {
    if common::default_model().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Synthetic induction scores for SmolLM2's 30 x 9 heads (the wiring is under test here;
    // tests/induction.rs checks the scores themselves).
    let m: Vec<Vec<f64>> = (0..30).map(|l| (0..9).map(|h| ((l * 9 + h) * 37 % 270) as f64 / 270.0).collect()).collect();
    let ind = dir.path().join("induction.json");
    std::fs::write(&ind, serde_json::json!({"prefix": {"mean": m}, "copying": {"mean": m}}).to_string()).unwrap();
    let out = dir.path().join("ablate");
    let stdout = headroom(&["induction-ablate", "--induction", ind.to_str().unwrap(), "--task", "copa", "--shots", "0", "--limit", "20", "--ks", "1,4", "--random-sets", "2", "--out", out.to_str().unwrap()]);
    eprintln!("{stdout}");
    let csv = std::fs::read_to_string(out.join("ablation.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 1 + 2 * (1 + 2), "{csv}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("ablation.json")).unwrap()).unwrap();
    let baseline = v["results"][0]["result"]["baseline"].as_f64().unwrap();
    // The top-1 head by these scores is flat index 146 / 37... whatever it is, it is the argmax.
    let top = &v["results"][0]["result"]["points"][0]["top_heads"][0];
    let (l, h) = (top[0].as_u64().unwrap() as usize, top[1].as_u64().unwrap() as usize);
    assert_eq!(m[l][h], m.iter().flatten().cloned().fold(f64::MIN, f64::max));
    let ev = dir.path().join("eval");
    headroom(&["eval", "--task", "copa", "--shots", "0", "--limit", "20", "--out", ev.to_str().unwrap(), "--quiet"]);
    let plain: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ev.join("copa.0shot.json")).unwrap()).unwrap();
    assert!((plain["value"].as_f64().unwrap() - baseline).abs() < 1e-9);
}
