//! `headroom demo --tiny` end to end on the default model (CI fetches it): every stage runs, the
//! run folder holds each stage's output, the report has every section with real figures, and a
//! second run reuses all the finished work.

mod common;

use std::process::Command;

fn demo(run: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_headroom")).args(["demo", "--tiny", "--out", run.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "headroom demo --tiny failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn tiny_demo_runs_the_pipeline_and_resumes() {
    if common::default_model().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("demo");
    let first = demo(&run);
    eprintln!("{first}");
    // Each stage printed the subcommand it ran, so users can rerun any of them by hand.
    for cmd in ["$ headroom prune --tasks copa,winogrande --shots 0", "$ headroom induction --sequences", "$ headroom induction-ablate", "$ headroom compare", "$ headroom report"] {
        assert!(first.contains(cmd), "stage `{cmd}` not shown");
    }
    for f in [
        "manifest.json",
        "deviations.json",
        "importance/copa.0shot.json",
        "importance/winogrande.0shot.json",
        "sweeps/heads.csv",
        "sweeps/ffns.csv",
        "sweeps/inflection.csv",
        "induction/induction.json",
        "induction/ablation.json",
        "compare/compare.json",
        "demo-timing.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // 2 tasks x 2 rankings (own and the random:1 control) x heads {0,50,90}, the 0% point shared
    // by the FFN curve {0,50}.
    let heads = std::fs::read_to_string(run.join("sweeps/heads.csv")).unwrap();
    assert_eq!(heads.lines().count(), 1 + 2 * 2 * 3, "{heads}");
    assert_eq!(heads.lines().filter(|l| l.contains(",random:1,")).count(), 2 * 3, "{heads}");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    for s in headroom::report::SECTIONS {
        assert!(html.contains(s), "report lacks section {s:?}");
    }
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "the report must not load anything from the network");
    let svgs: Vec<_> = std::fs::read_dir(run.join("figures")).unwrap().filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "svg")).collect();
    assert!(svgs.len() >= 6, "only {} figures", svgs.len());
    for e in &svgs {
        let svg = std::fs::read_to_string(e.path()).unwrap();
        assert!(svg.starts_with("<svg") && svg.len() > 2000, "{} is not a real plot", e.path().display());
        assert!(e.path().with_extension("png").is_file(), "no PNG twin for {}", e.path().display());
    }
    assert!(first.contains("report: ") && first.contains("headline"), "no summary printed");

    // Resume: nothing is recomputed.
    let second = demo(&run);
    assert!(second.contains("sweeps: 0 units evaluated now, 12 reused"), "{second}");
    assert_eq!(second.matches("already done (same command)").count(), 2, "induction or its ablation was recomputed:\n{second}");
}
