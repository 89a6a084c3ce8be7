//! Per-task data (issue 14, defect 2): `--data` replaces a built-in task's fetched evaluation
//! split (it used to be ignored silently), the pool comes from `--train`, else the `--data`
//! folder's train split, else the fetched pool; every file read is recorded with its sha256;
//! multi-task runs take `--data TASK=PATH` per task.
//!
//! Fixtures: `tests/fixtures/fetched/data` stands in for the fetched data folder (ARC-Easy
//! requests files with 4 test and 3 train documents, OLMo's rendered form), and
//! `tests/fixtures/hf/arc_easy` holds user files in the Hugging Face form (3 validation, 2 train).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use headroom::tasks::{self, LoadOptions, SplitMode};
use sha2::{Digest, Sha256};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn fetched() -> LoadOptions {
    LoadOptions::new(fixture("fetched/data"))
}

fn sha256(p: &Path) -> String {
    Sha256::digest(std::fs::read(p).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

fn ids(items: &[tasks::Item]) -> Vec<String> {
    items.iter().map(|i| i.id.clone()).collect()
}

#[test]
fn without_data_the_fetched_splits_are_used() {
    let t = tasks::load("arc_easy", &fetched()).unwrap();
    assert_eq!(ids(&t.eval), ["fetched-test-0", "fetched-test-1", "fetched-test-2", "fetched-test-3"]);
    assert_eq!(ids(&t.pool), ["fetched-train-0", "fetched-train-1", "fetched-train-2"]);
    let f = &t.split.files;
    assert_eq!(f.len(), 2);
    assert_eq!((f[0].role.as_str(), f[0].split.as_str(), f[0].given_by.as_str()), ("eval", "test", "fetched"));
    assert_eq!((f[1].role.as_str(), f[1].split.as_str(), f[1].given_by.as_str()), ("pool", "train", "fetched"));
    let test = fixture("fetched/data/olmo/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz");
    assert_eq!(f[0].path, test.display().to_string());
    assert_eq!(f[0].sha256, sha256(&test));
}

#[test]
fn data_file_replaces_the_fetched_evaluation_split() {
    // The command: `--task arc_easy --data <ARC-Easy validation file>`; the old code
    // evaluated the fetched test split and said nothing.
    let mut o = fetched();
    let user = fixture("hf/arc_easy/validation.jsonl");
    o.data = Some(user.clone());
    let t = tasks::load("arc_easy", &o).unwrap();
    assert_eq!(ids(&t.eval), ["user-validation-0", "user-validation-1", "user-validation-2"]);
    assert_eq!(t.eval[1].query, "Question: Which user-validation question 1?\nAnswer:");
    assert_eq!(t.eval[1].gold, 1);
    // A file has no train split: the pool is the fetched one, and the split says so.
    assert_eq!(t.split.mode, SplitMode::Train);
    assert_eq!(ids(&t.pool), ["fetched-train-0", "fetched-train-1", "fetched-train-2"]);
    assert!(t.split.pool_source.starts_with("fetched "), "{}", t.split.pool_source);
    assert!(t.split.eval_source.starts_with("--data "), "{}", t.split.eval_source);
    let f = &t.split.files;
    assert_eq!((f[0].role.as_str(), f[0].split.as_str(), f[0].given_by.as_str()), ("eval", "file", "--data"));
    assert_eq!((f[0].path.clone(), f[0].sha256.clone()), (user.display().to_string(), sha256(&user)));
    assert_eq!((f[1].role.as_str(), f[1].given_by.as_str()), ("pool", "fetched"));
    assert!(t.split.notes.iter().any(|n| n.contains("--data replaces the fetched evaluation split")));
}

#[test]
fn data_folder_gives_eval_and_train_splits() {
    let mut o = fetched();
    o.data = Some(fixture("hf/arc_easy"));
    let t = tasks::load("arc_easy", &o).unwrap();
    // arc_easy is evaluated on test; the folder has none, so validation stands in, and says so.
    assert_eq!(ids(&t.eval), ["user-validation-0", "user-validation-1", "user-validation-2"]);
    assert_eq!(ids(&t.pool), ["user-train-0", "user-train-1"]);
    let f = &t.split.files;
    assert_eq!((f[0].split.as_str(), f[0].given_by.as_str()), ("validation", "--data"));
    assert_eq!((f[1].role.as_str(), f[1].split.as_str(), f[1].given_by.as_str()), ("pool", "train", "--data"));
    assert_eq!(f[1].sha256, sha256(&fixture("hf/arc_easy/train.jsonl")));
}

#[test]
fn train_overrides_the_pool_and_zero_shot_reads_no_pool() {
    let mut o = fetched();
    o.train = Some(fixture("hf/arc_easy/train.jsonl"));
    let t = tasks::load("arc_easy", &o).unwrap();
    assert_eq!(ids(&t.eval).len(), 4, "evaluation stays the fetched test split");
    assert_eq!(ids(&t.pool), ["user-train-0", "user-train-1"]);
    assert_eq!(t.split.files[1].given_by, "--train");
    o.need_pool = false;
    let t = tasks::load("arc_easy", &o).unwrap();
    assert_eq!(t.split.files.len(), 1, "0-shot reads no pool file: {:?}", t.split.files);
    // --train with a split mode that takes the pool from the evaluation documents is refused,
    // not ignored.
    let mut o = fetched();
    o.train = Some(fixture("hf/arc_easy/train.jsonl"));
    o.split = tasks::SplitChoice::Holdout;
    let e = tasks::load("arc_easy", &o).unwrap_err().to_string();
    assert!(e.contains("--train"), "{e}");
}

#[test]
fn user_task_records_its_files() {
    let t = tasks::load(fixture("user/sentiment.toml").to_str().unwrap(), &fetched()).unwrap();
    let f = &t.split.files;
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].role.as_str(), f[0].given_by.as_str()), ("eval", "task file"));
    assert_eq!(f[0].sha256, sha256(&fixture("user/sentiment.jsonl")));
}

// ---- the CLI ----------------------------------------------------------------------------------

fn headroom() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_headroom"));
    c.env("HEADROOM_CACHE", fixture("fetched"));
    c
}

fn tiny() -> String {
    common::golden_dir().join("gguf/tiny_llama.gguf").display().to_string()
}

fn run(args: &[&str]) -> (i32, String) {
    let out = headroom().args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn summary(dir: &Path, stem: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap()).unwrap()
}

#[test]
fn eval_honours_data_for_a_fetched_task() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let user = fixture("hf/arc_easy/validation.jsonl");
    let (code, err) = run(&["eval", "--model", &tiny(), "--tasks", "arc_easy", "--shots", "0,1", "--data", user.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // stderr says where the documents and the pool came from.
    assert!(err.contains("arc_easy: 3 eval docs from --data"), "{err}");
    assert!(err.contains("pool 3 from fetched"), "{err}");
    let s = summary(&out, "arc_easy.1shot");
    assert_eq!(s["n"], 3, "the user's 3 documents, not the fetched 4");
    let files = s["split"]["files"].as_array().unwrap();
    assert_eq!(files[0]["path"], user.display().to_string());
    assert_eq!(files[0]["sha256"], sha256(&user));
    assert_eq!(files[0]["given_by"], "--data");
    assert_eq!(files[1]["role"], "pool");
}

#[test]
fn each_task_gets_its_own_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let wic = fixture("hf/wic");
    let mathqa = fixture("hf/mathqa");
    let (code, err) = run(&[
        "eval", "--model", &tiny(), "--tasks", "wic,mathqa", "--shots", "0", "-q",
        "--data", &format!("wic={}", wic.display()),
        "--data", &format!("mathqa={}", mathqa.display()),
        "--out", out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let w = summary(&out, "wic.0shot");
    let m = summary(&out, "mathqa.0shot");
    assert_eq!(w["split"]["files"][0]["path"], wic.join("validation.jsonl").display().to_string());
    assert_eq!(m["split"]["files"][0]["path"], mathqa.join("test.jsonl").display().to_string());
}

#[test]
fn per_task_flags_are_checked_before_anything_runs() {
    let wic = format!("wic={}", fixture("hf/wic").display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        // A key naming a task not in the run.
        (vec!["--tasks".into(), "mathqa".into(), "--data".into(), wic.clone()], "task `wic` is not in this run"),
        // A bare path with two tasks.
        (vec!["--tasks".into(), "wic,mathqa".into(), "--data".into(), fixture("hf/wic").display().to_string()], "a bare path needs exactly one task"),
        // The same task twice.
        (vec!["--tasks".into(), "wic".into(), "--data".into(), wic.clone(), "--data".into(), wic.clone()], "given twice for task `wic`"),
        (vec!["--tasks".into(), "wic".into(), "--train".into(), "record=x.jsonl".into()], "--train record=x.jsonl: task `record` is not in this run"),
    ];
    for (extra, want) in cases {
        let mut args: Vec<String> = ["eval", "--model", "/nonexistent/model", "--shots", "0", "--out", "/nonexistent/out"].map(String::from).to_vec();
        args.extend(extra);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = run(&a);
        assert_eq!(code, 2, "{a:?}: {err}");
        assert!(err.contains(want), "{a:?}: wanted {want:?} in\n{err}");
    }
    // prune checks --ood-tasks keys too (before loading the model).
    let (code, err) = run(&["prune", "--model", "/nonexistent/model", "--tasks", "wic", "--data", "lambada=/x", "--out", "/nonexistent/run"]);
    assert_eq!(code, 2);
    assert!(err.contains("task `lambada` is not in this run"), "{err}");
    // demo passes --data on to its prune and induction-ablate steps, checked before any stage.
    let (code, err) = run(&["demo", "--tasks", "wic", "--data", "record=/x", "--out", "/nonexistent/demo"]);
    assert_eq!(code, 2);
    assert!(err.contains("task `record` is not in this run") && !err.contains("==="), "{err}");
}

/// Every built-in task's declared answer-option count (the chance level the report draws) holds
/// for its fetched evaluation documents: `Fixed(n)` for all of them, `Mostly(n)` for the majority.
#[test]
fn declared_answer_options_match_the_fetched_data() {
    use headroom::tasks::builtin::{AnswerOptions, Source, BUILTINS};
    let Some(data) = common::task_data() else { return };
    let mut checked = 0;
    for b in BUILTINS {
        // Tasks without fetched data (user-supplied folders) cannot be checked here.
        if matches!(b.eval, Source::User(_)) {
            continue;
        }
        let task = tasks::load(b.name, &LoadOptions::new(data.clone())).unwrap_or_else(|e| panic!("{}: {e:#}", b.name));
        let counts: Vec<usize> = task.eval.iter().map(|i| i.choices.len()).collect();
        match b.options {
            AnswerOptions::Fixed(n) => assert!(counts.iter().all(|&c| c == n), "{}: declared {n} options, found {:?}", b.name, counts.iter().filter(|&&c| c != n).take(5).collect::<Vec<_>>()),
            AnswerOptions::Mostly(n) => {
                let share = counts.iter().filter(|&&c| c == n).count() as f64 / counts.len() as f64;
                assert!(share > 0.9, "{}: only {:.1}% of documents have {n} options", b.name, 100.0 * share);
            }
            // LAMBADA has one continuation per document: no choice, no chance level.
            AnswerOptions::NoChanceLevel => assert!(b.name == "lambada", "{}: no chance level declared", b.name),
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} tasks have fetched data");
}
