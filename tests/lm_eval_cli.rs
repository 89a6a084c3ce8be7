//! `headroom eval` writes lm-evaluation-harness 0.4's files next to its own (issue 14), with
//! headroom's numbers; and the flags every long command shares: `--tasks` (`--task` an alias),
//! `-q/--quiet`, and plain progress lines when stderr is not a terminal (Slurm logs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn headroom() -> Command {
    Command::new(env!("CARGO_BIN_EXE_headroom"))
}

fn tiny() -> String {
    common::golden_dir().join("gguf/tiny_llama.gguf").display().to_string()
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// The one file in `dir` whose name starts with `prefix`.
fn one_file(dir: &Path, prefix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    assert_eq!(found.len(), 1, "{prefix}* in {}: {found:?}", dir.display());
    found[0].clone()
}

#[test]
fn lm_eval_results_and_samples_match_headroom_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let st = headroom()
        .args(["eval", "--model", &tiny(), "--shots", "0,1", "-q", "--tasks"])
        .arg(format!("{},wic", fixture("user/sentiment.toml").display()))
        .arg("--data")
        .arg(format!("wic={}", fixture("hf/wic").display()))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    for k in [0usize, 1] {
        let lm = out.join("lm-eval").join(format!("{k}shot"));
        let results_file = one_file(&lm, "results_");
        let name = results_file.file_name().unwrap().to_str().unwrap().to_string();
        // results_<date_id>.json, date_id = isoformat with ':' -> '-'.
        let date_id = name.strip_prefix("results_").unwrap().strip_suffix(".json").unwrap().to_string();
        assert_eq!(date_id.len(), "2026-12-02T03-04-05.123456".len(), "{date_id}");
        assert!(!date_id.contains(':'));
        let r = read_json(&results_file);
        for key in ["results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config", "date"] {
            assert!(r.get(key).is_some(), "results lacks {key}: {r:#}");
        }
        assert!(r["config"]["model_args"].as_str().unwrap().starts_with("pretrained="));
        assert_eq!(r["config"]["random_seed"], 1234);
        for task in ["sentiment", "wic"] {
            let own = read_json(&out.join(format!("{task}.{k}shot.json")));
            let res = &r["results"][task];
            assert_eq!(res["alias"], task);
            // The numbers are headroom's own, every metric it computed.
            for m in own["metrics"].as_array().unwrap() {
                let n = m["name"].as_str().unwrap();
                assert_eq!(res[format!("{n},none")], m["value"], "{task} {k}-shot {n}");
                assert_eq!(res[format!("{n}_stderr,none")], m["stderr"], "{task} {k}-shot {n} stderr");
            }
            assert!(res["acc,none"].is_number() && res["acc_norm,none"].is_number() && res["acc_stderr,none"].is_number());
            assert_eq!(r["n-shot"][task], k);
            assert_eq!(r["n-samples"][task]["effective"], own["n"]);
            assert_eq!(r["configs"][task]["num_fewshot"], k);
            assert_eq!(r["configs"][task]["output_type"], "multiple_choice");
            assert!(r["versions"][task].is_number());
            assert_eq!(r["higher_is_better"][task]["acc"], true);

            // Per-sample lines: one per document, same date id, metrics equal headroom's records.
            let samples = lm.join(format!("samples_{task}_{date_id}.jsonl"));
            let text = std::fs::read_to_string(&samples).unwrap_or_else(|e| panic!("{}: {e}", samples.display()));
            let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            let examples: Vec<Value> = std::fs::read_to_string(out.join(format!("{task}.{k}shot.examples.jsonl")))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len(), examples.len());
            assert_eq!(lines.len() as u64, own["n"].as_u64().unwrap());
            let mut acc_sum = 0.0;
            for (s, e) in lines.iter().zip(&examples) {
                for key in ["doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics", "doc_hash", "prompt_hash", "target_hash", "acc", "acc_norm"] {
                    assert!(s.get(key).is_some(), "sample lacks {key}: {s}");
                }
                assert_eq!(s["doc_id"], e["doc"]);
                assert_eq!(s["acc"], e["acc"]);
                assert_eq!(s["acc_norm"], e["acc_norm"]);
                assert_eq!(s["target"], e["gold"].to_string(), "target is stringified, as lm-eval writes it");
                let n_opts = e["ll"].as_array().unwrap().len();
                let args = s["arguments"].as_object().unwrap();
                assert_eq!(args.len(), n_opts);
                assert!(args["gen_args_0"]["arg_0"].is_string() && args["gen_args_0"]["arg_1"].is_string());
                assert_eq!(s["filtered_resps"].as_array().unwrap().len(), n_opts);
                // (ll, is_greedy) stringified by sanitize_list.
                let first = &s["filtered_resps"][0];
                let ll: f64 = first[0].as_str().unwrap().parse().unwrap();
                assert_eq!(ll, e["ll"][0].as_f64().unwrap());
                assert!(first[1] == "True" || first[1] == "False");
                assert_eq!(s["resps"][0][0], *first);
                if k == 1 {
                    assert!(args["gen_args_0"]["arg_0"].as_str().unwrap().contains("\n\n"), "1-shot context holds a demonstration");
                }
                acc_sum += s["acc"].as_f64().unwrap();
            }
            assert!((acc_sum / lines.len() as f64 - res["acc,none"].as_f64().unwrap()).abs() < 1e-12);
        }
    }
}

fn eval_sentiment(extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = headroom();
    c.args(["eval", "--model", &tiny(), "--shots", "0"]).args(extra).arg(fixture("user/sentiment.toml")).arg("--out").arg(dir.path().join("o"));
    for (k, v) in env {
        c.env(k, v);
    }
    // Output captured: stderr is a pipe, not a terminal.
    let o = c.output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn task_and_tasks_both_parse() {
    for flag in ["--tasks", "--task"] {
        let (ok, err) = eval_sentiment(&[flag], &[]);
        assert!(ok, "{flag}: {err}");
    }
    // The other commands that take tasks accept both spellings too.
    for cmd in ["prune", "induction-ablate", "prompts", "demo"] {
        for flag in ["--tasks", "--task"] {
            let o = headroom().args([cmd, flag, "copa", "--help"]).output().unwrap();
            assert!(o.status.success(), "{cmd} {flag}: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

#[test]
fn progress_lines_off_a_terminal_and_quiet_silences_them() {
    let (ok, err) = eval_sentiment(&["--tasks"], &[("HEADROOM_PROGRESS_SECS", "0.001")]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("eval sentiment 0-shot: ")).collect();
    assert!(!lines.is_empty(), "no progress lines in\n{err}");
    // `eval copa 0-shot: 120/500 (24%) 3.1 it/s eta 2m`
    let re = regex::Regex::new(r"^eval sentiment 0-shot: \d+/\d+ \(\d+%\) [0-9.]+ it/s eta \S+").unwrap();
    assert!(lines.iter().all(|l| re.is_match(l)), "{lines:?}");
    let (ok, err) = eval_sentiment(&["-q", "--tasks"], &[("HEADROOM_PROGRESS_SECS", "0.001")]);
    assert!(ok, "{err}");
    assert!(!err.contains("eval sentiment 0-shot:"), "-q printed progress:\n{err}");
    assert!(!err.contains("eval docs from"), "-q printed task loading:\n{err}");
    let (ok, err) = eval_sentiment(&["--quiet", "--tasks"], &[]);
    assert!(ok && !err.contains("0-shot:"), "{err}");
    // -v adds each data file with its sha256.
    let (ok, err) = eval_sentiment(&["-v", "--tasks"], &[]);
    assert!(ok, "{err}");
    assert!(err.contains("sentiment eval (file, task file)") && err.contains("sha256"), "{err}");
}
