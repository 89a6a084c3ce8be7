//! `headroom compare` end to end on importance.json files shaped like `headroom importance`
//! writes them (plus contributions.jsonl for --bootstrap).

mod common;

use std::path::Path;
use std::process::Command;

use headroom::artifacts::ImportanceFile;
use headroom::importance::{AbsMode, ExampleContribution, ImportanceSums, Normalize};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const L: usize = 3;
const H: usize = 4;

/// An importance folder whose head scores are `base` + task noise, with per-example
/// contributions that add up to them (authors' normalization).
fn write_run(dir: &Path, base: &[f64], seed: u64, with_contributions: bool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ex: Vec<ExampleContribution> = (0..40)
        .map(|_| {
            let tokens = rng.random_range(5..30u32);
            ExampleContribution {
                head_abs: base.iter().map(|b| (b * (tokens - 1) as f64 * (0.5 + rng.random::<f64>())) as f32).collect(),
                ffn_abs: vec![1.0; L],
                tokens,
                label_tokens: 2,
                loss: 0.0,
            }
        })
        .collect();
    let scores = headroom::compare::scores_from_examples(&ex, headroom::importance::Normalize::Authors).unwrap();
    let doc = importance_file(&ex, scores.heads, scores.ffns, Normalize::Authors);
    std::fs::create_dir_all(dir).unwrap();
    doc.write(&dir.join("importance.json")).unwrap();
    if with_contributions {
        let lines: Vec<String> = ex.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
        std::fs::write(dir.join("contributions.jsonl"), lines.join("\n")).unwrap();
    }
}

/// `headroom importance`'s file for these contributions: sums that add them up, `heads` / `ffns`
/// the scores under `normalize`.
fn importance_file(ex: &[ExampleContribution], heads: Vec<Vec<f64>>, ffns: Vec<f64>, normalize: Normalize) -> ImportanceFile {
    let mut sums = ImportanceSums::new(L, H, AbsMode::PerToken);
    for e in ex {
        sums.head_abs.iter_mut().zip(&e.head_abs).for_each(|(s, x)| *s += *x as f64);
        sums.ffn_abs.iter_mut().zip(&e.ffn_abs).for_each(|(s, x)| *s += *x as f64);
        sums.examples += 1;
        sums.tokens_minus_one += e.tokens as u64 - 1;
        sums.label_tokens += e.label_tokens as u64;
        sums.tokens += e.tokens as u64;
    }
    ImportanceFile {
        schema_version: headroom::artifacts::SCHEMA_VERSION,
        task: None,
        shots: None,
        normalize,
        abs_mode: AbsMode::PerToken,
        heads,
        ffns,
        examples: sums.examples,
        mean_loss: 0.0,
        sums,
        model: json!({"source": "/root/.cache/headroom/opt-125m", "n_layers": L, "n_heads": H}),
        pool: None,
        prompts: Some("prompts.jsonl".into()),
        options: None,
        run: None,
    }
}

fn headroom(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_headroom")).args(args).output().unwrap()
}

#[test]
fn compare_writes_tables_cross_shot_bootstrap_and_plots() {
    let t = tempfile::tempdir().unwrap();
    let base: Vec<f64> = (0..L * H).map(|i| 1.0 + ((i * 5) % 7) as f64).collect();
    let names = ["copa0", "copa1", "piqa0", "piqa1"];
    for (k, n) in names.iter().enumerate() {
        let b: Vec<f64> = base.iter().enumerate().map(|(i, v)| v + ((i * (k + 2)) % 3) as f64).collect();
        write_run(&t.path().join(n), &b, k as u64, true);
    }
    let out = t.path().join("cmp");
    let dirs: Vec<String> = names.iter().map(|n| t.path().join(n).display().to_string()).collect();
    let mut args = vec!["compare", "--scores"];
    args.extend(dirs.iter().map(String::as_str));
    args.extend(["--labels", "copa@0,copa@1,piqa@0,piqa@1", "--aggregate", "--random", "3", "--bootstrap", "40", "--out"]);
    let out_s = out.display().to_string();
    args.push(&out_s);
    let o = headroom(&args);
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("Spearman rank correlation"), "{stdout}");
    assert!(stdout.contains("0-shot vs 1-shot"), "{stdout}");

    let v: Value = serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(v["method"], "spearman");
    let labels = v["correlation"]["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 6);
    assert_eq!(labels[4], "aggregate");
    assert_eq!(labels[5], "random");
    assert_eq!(v["correlation"]["rho"][1][1], 1.0);
    assert_eq!(v["overlap"]["k"], 3); // floor(0.3 * 12)
    assert_eq!(v["overlap"]["expected"], 0.25);
    assert_eq!(v["cross_shot"]["shots"], json!([0, 1]));
    assert_eq!(v["cross_shot"]["n_tasks"][0][1], 2);
    let pairs = v["bootstrap"]["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 6);
    for p in pairs {
        let r = &p["rho"];
        assert!(r["lo"].as_f64().unwrap() <= r["hi"].as_f64().unwrap());
    }
    let csv = std::fs::read_to_string(out.join("correlations.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 15); // header + 6 choose 2
    assert!(csv.lines().next().unwrap().ends_with("rho_lo,rho_hi,overlap_lo,overlap_hi"));
    let ranks = std::fs::read_to_string(out.join("rank_intervals_copa_0.csv")).unwrap();
    assert_eq!(ranks.lines().count(), 1 + L * H);
    assert!(std::fs::read_to_string(out.join("cross_shot.csv")).unwrap().starts_with("shots_a,shots_b,mean,variance"));
    for f in ["srcc.png", "overlap.png"] {
        let b = std::fs::read(out.join(f)).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
    }
    let svg = std::fs::read_to_string(out.join("srcc.svg")).unwrap();
    assert!(svg.contains("Spearman rank correlation — opt-125m"));

    // The authors' statistic is labelled as such.
    let out2 = t.path().join("cmp2").display().to_string();
    let o = headroom(&["compare", "--scores", &dirs[0], &dirs[2], "--method", "argsort", "--out", &out2]);
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(Path::new(&out2).join("compare.json")).unwrap()).unwrap();
    assert_eq!(v["statistic"], "argsort correlation (authors' SRCC)");
    assert_eq!(v["correlation"]["labels"], json!(["copa0", "piqa0"]));
    assert!(v["cross_shot"].is_null());
}

#[test]
fn compare_errors_name_the_problem() {
    let t = tempfile::tempdir().unwrap();
    let base: Vec<f64> = (0..L * H).map(|i| i as f64).collect();
    write_run(&t.path().join("a"), &base, 1, false);
    write_run(&t.path().join("b"), &base, 2, false);
    let (a, b) = (t.path().join("a").display().to_string(), t.path().join("b").display().to_string());
    let out = t.path().join("o").display().to_string();
    let o = headroom(&["compare", "--scores", &a, &b, "--bootstrap", "10", "--out", &out]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--per-example"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = headroom(&["compare", "--scores", &a, "--out", &out]);
    assert_eq!(o.status.code(), Some(2));
    let o = headroom(&["compare", "--scores", &a, &b, "--labels", "x", "--out", &out]);
    assert_eq!(o.status.code(), Some(2));
    // A file of another shape.
    std::fs::create_dir_all(t.path().join("c")).unwrap();
    importance_file(&[], vec![vec![1.0, 2.0]], vec![0.0], Normalize::Authors).write(&t.path().join("c/importance.json")).unwrap();
    let c = t.path().join("c").display().to_string();
    let o = headroom(&["compare", "--scores", &a, &c, "--out", &out]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("one model"));
}

/// The real path: `headroom importance --per-example` on the default model writes contributions
/// that add up to its exact sums, and `compare --bootstrap` reads them.
#[test]
fn importance_per_example_feeds_compare_bootstrap() {
    let Some(model) = common::default_model() else { return };
    let t = tempfile::tempdir().unwrap();
    let model = model.display().to_string();
    let mut dirs = Vec::new();
    for (name, lines) in [
        ("sum", (0..6).map(|i| format!(r#"{{"context": "Q: what is {i} plus {i}? A:", "continuation": " {}"}}"#, 2 * i)).collect::<Vec<_>>()),
        ("mat", ["cat", "dog", "man", "bird", "fox", "cow"].iter().map(|w| format!(r#"{{"context": "The {w} sat on the mat because it was", "continuation": " tired."}}"#)).collect()),
    ] {
        let prompts = t.path().join(format!("{name}.jsonl"));
        std::fs::write(&prompts, lines.join("\n")).unwrap();
        let out = t.path().join(name);
        let o = headroom(&["importance", "--model", &model, "--prompts", &prompts.display().to_string(), "--batch-size", "3", "--per-example", "--out", &out.display().to_string()]);
        assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
        // The per-example rows add up to the exact sums (up to their f32 storage).
        let v: Value = serde_json::from_str(&std::fs::read_to_string(out.join("importance.json")).unwrap()).unwrap();
        let ex: Vec<ExampleContribution> = headroom::io::read_jsonl(&out.join("contributions.jsonl")).unwrap();
        assert_eq!(ex.len(), 6);
        let sums: Vec<f64> = serde_json::from_value(v["sums"]["head_abs"].clone()).unwrap();
        for (i, s) in sums.iter().enumerate() {
            let total: f64 = ex.iter().map(|e| e.head_abs[i] as f64).sum();
            assert!((total - s).abs() <= 1e-5 * s.abs().max(1e-12), "head {i}: {total} vs {s}");
        }
        assert_eq!(ex.iter().map(|e| e.tokens as u64).sum::<u64>(), v["sums"]["tokens"].as_u64().unwrap());
        dirs.push(out.display().to_string());
    }
    let out = t.path().join("cmp").display().to_string();
    let o = headroom(&["compare", "--scores", &dirs[0], &dirs[1], "--bootstrap", "30", "--out", &out]);
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(Path::new(&out).join("compare.json")).unwrap()).unwrap();
    let rho = &v["bootstrap"]["pairs"][0]["rho"];
    let point = v["correlation"]["rho"][0][1].as_f64().unwrap();
    // The bootstrap's point (recomputed from the per-example rows) is the importance.json one.
    assert!((rho["point"].as_f64().unwrap() - point).abs() < 1e-3, "{rho} vs {point}");
    assert!(rho["lo"].as_f64().unwrap() <= rho["hi"].as_f64().unwrap());
}

/// Issue 15: prune's importance files keep `normalize` at the top level (version 1) while
/// `headroom importance` nested it under `options`; compare read only the latter and fell back to
/// the authors' normalisation on prune's files. Both layouts now give the file's own value, and
/// inputs under different normalisations are refused for the bootstrap.
#[test]
fn compare_honours_the_normalisation_of_prune_files() {
    let t = tempfile::tempdir().unwrap();
    let base: Vec<f64> = (0..L * H).map(|i| 1.0 + ((i * 3) % 5) as f64).collect();
    let mut paths = Vec::new();
    for (i, task) in ["copa", "piqa"].iter().enumerate() {
        let dir = t.path().join(task).join("importance");
        write_run(&dir, &base, 20 + i as u64, true);
        // Rewrite as prune's version-1 file: task/shots, `normalize` at the top level, no version.
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("importance.json")).unwrap()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("schema_version");
        o.insert("normalize".into(), json!("tokens"));
        o.insert("task".into(), json!(task));
        o.insert("shots".into(), json!(0));
        let file = dir.join(format!("{task}.0shot.json"));
        std::fs::write(&file, serde_json::to_string(&v).unwrap()).unwrap();
        std::fs::remove_file(dir.join("importance.json")).unwrap();
        paths.push(file.display().to_string());
    }
    let out = t.path().join("out").display().to_string();
    let o = headroom(&["compare", "--scores", &paths[0], &paths[1], "--bootstrap", "4", "--out", &out]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(t.path().join("out/compare.json")).unwrap()).unwrap();
    assert_eq!(v["bootstrap"]["normalize"], "tokens", "{v}");
    assert_eq!(v["correlation"]["labels"], json!(["copa@0", "piqa@0"]));
    // One input under another normalisation: refused, not silently mixed.
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&paths[1]).unwrap()).unwrap();
    v["normalize"] = json!("authors");
    std::fs::write(&paths[1], serde_json::to_string(&v).unwrap()).unwrap();
    let o = headroom(&["compare", "--scores", &paths[0], &paths[1], "--bootstrap", "4", "--out", &out]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("one normalisation"), "{}", String::from_utf8_lossy(&o.stderr));
}
