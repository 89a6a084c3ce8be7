//! `headroom eval` / `tasks` / `prompts` as a user runs them: outputs on disk, and bad task
//! files (missing field, wrong type, label out of range, empty choices, a continuation that
//! tokenizes to nothing, a broken TOML) fail with the file and line and exit code 2.

mod common;

use std::path::Path;
use std::process::Command;

fn headroom() -> Command {
    Command::new(env!("CARGO_BIN_EXE_headroom"))
}

fn tiny() -> String {
    common::golden_dir().join("gguf/tiny_llama.gguf").display().to_string()
}

/// Writes `task.toml` and `data.jsonl` into a fresh folder and runs `eval` on the tiny model.
fn run_task(toml: &str, jsonl: &str) -> (i32, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("task.toml"), toml).unwrap();
    std::fs::write(dir.path().join("data.jsonl"), jsonl).unwrap();
    let out = headroom()
        .args(["eval", "--model", &tiny(), "--shots", "0", "--quiet", "--task"])
        .arg(dir.path().join("task.toml"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), dir)
}

const TOML: &str = r#"name = "t"
metric = "acc"
[data]
eval = "data.jsonl"
[prompt]
query = "{text}\nAnswer:"
choices = [" {a}", " {b}"]
gold = "label"
"#;

const GOOD: &str = r#"{"text": "one", "a": "x", "b": "y", "label": 0}
{"text": "two", "a": "x", "b": "y", "label": 1}
{"text": "three", "a": "x", "b": "y", "label": 1}
{"text": "four", "a": "x", "b": "y", "label": 0}
"#;

fn expect_error(toml: &str, jsonl: &str, wants: &[&str]) {
    let (code, err, _dir) = run_task(toml, jsonl);
    assert_eq!(code, 2, "exit code; stderr:\n{err}");
    for w in wants {
        assert!(err.contains(w), "stderr lacks {w:?}:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn good_task_file_writes_summary_and_examples() {
    let (code, err, dir) = run_task(TOML, GOOD);
    assert_eq!(code, 0, "{err}");
    let out = dir.path().join("out");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("t.0shot.json")).unwrap()).unwrap();
    assert_eq!(summary["metric"], "acc");
    assert_eq!(summary["split"]["mode"], "holdout");
    assert!(summary["stderr"].is_number() && summary["cost"]["naive_flops"].is_number());
    let lines = std::fs::read_to_string(out.join("t.0shot.examples.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), summary["n"].as_u64().unwrap() as usize);
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["ll"].as_array().unwrap().len(), 2);
}

#[test]
fn missing_field() {
    let data = GOOD.replace(r#"{"text": "two", "a": "x", "#, r#"{"a": "x", "#);
    expect_error(TOML, &data, &["data.jsonl:2", "missing field `text`"]);
}

#[test]
fn wrong_type() {
    let data = GOOD.replace(r#""label": 1}"#, r#""label": [1]}"#);
    expect_error(TOML, &data, &["data.jsonl:2", "`label`", "should be an integer, found a list"]);
}

#[test]
fn label_out_of_range() {
    let data = GOOD.replace(r#""three", "a": "x", "b": "y", "label": 1"#, r#""three", "a": "x", "b": "y", "label": 2"#);
    expect_error(TOML, &data, &["data.jsonl:3", "out of range for 2 answer options"]);
}

#[test]
fn empty_choices() {
    let toml = TOML.replace(r#"choices = [" {a}", " {b}"]"#, r#"choices_field = "opts""#);
    let data = r#"{"text": "one", "opts": ["x", "y"], "label": 0}
{"text": "two", "opts": [], "label": 0}
"#;
    expect_error(&toml, data, &["data.jsonl:2", "no answer options"]);
    let toml = TOML.replace(r#"choices = [" {a}", " {b}"]"#, "choices = []");
    expect_error(&toml, GOOD, &["task.toml:7", "`choices` is empty"]);
}

#[test]
fn continuation_that_tokenizes_to_nothing() {
    let toml = TOML.replace(r#"choices = [" {a}", " {b}"]"#, r#"choices = ["{a}", "{b}"]"#);
    let data = GOOD.replace(r#""four", "a": "x", "b": "y""#, r#""four", "a": "x", "b": """#);
    // An empty option is now caught when the record is read, before tokenization.
    expect_error(&toml, &data, &["data.jsonl:4", "answer option 1", "is empty"]);
}

#[test]
fn broken_toml() {
    let toml = TOML.replace("gold = \"label\"\n", "");
    expect_error(&toml, GOOD, &["task.toml:", "missing field `gold`"]);
    let toml = TOML.replace(r#"choices = [" {a}", " {b}"]"#, "choices = 3");
    expect_error(&toml, GOOD, &["task.toml:7"]);
    let toml = TOML.replace(r#"query = "{text}\nAnswer:""#, r#"query = "{text\nAnswer:""#);
    expect_error(&toml, GOOD, &["task.toml:6", "unclosed"]);
    let toml = TOML.replace("metric = \"acc\"", "metric = \"accuracy\"");
    expect_error(&toml, GOOD, &["task.toml:2"]);
}

#[test]
fn builtin_task_with_a_bad_user_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("wic.jsonl");
    std::fs::write(
        &f,
        r#"{"word": "a", "sentence1": "a b", "sentence2": "b a", "start1": 0, "end1": 1, "start2": 2, "end2": 3, "idx": 0, "label": 0}
{"word": "a", "sentence1": "a b", "sentence2": "b a", "start1": 0, "end1": 1, "start2": 2, "end2": 3, "idx": 1, "label": 5}
"#,
    )
    .unwrap();
    let out = headroom()
        .args(["eval", "--model", &tiny(), "--task", "wic", "--shots", "0", "--quiet", "--data"])
        .arg(&f)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("wic.jsonl:2") && err.contains("out of range"), "{err}");
    // A task that needs user data says so.
    let out = headroom().args(["eval", "--model", &tiny(), "--task", "record", "--out"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data"));
}

#[test]
fn prompts_export_and_tasks_listing() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/mathqa");
    let out = dir.path().join("p.jsonl");
    let st = headroom().args(["prompts", "--task", "mathqa", "--shots", "0", "--data"]).arg(&fixtures).arg("--out").arg(&out).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let line: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(line, serde_json::json!({"context": "Question: what is 1 + 1 ?\nAnswer:", "continuation": "2"}));
    let st = headroom().args(["prompts", "--task", "mathqa", "--leading-space", "--data"]).arg(&fixtures).arg("--out").arg(&out).output().unwrap();
    assert!(st.status.success());
    assert!(std::fs::read_to_string(&out).unwrap().contains(r#""continuation":" 2""#));
    let st = headroom().args(["tasks", "--json"]).output().unwrap();
    assert!(st.status.success());
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|r| r["task"].as_str().unwrap()).collect();
    for t in ["copa", "cb", "rte", "boolq", "arc_easy", "arc_challenge", "openbookqa", "hellaswag", "piqa", "winogrande", "lambada", "wic", "wsc", "multirc", "record", "mathqa"] {
        assert!(names.contains(&t), "{t} listed");
    }
}

// ---- issue 14, defect 3: every user-task field is validated, with file, record and field ----

const LABELED: &str = r#"name = "t"
metric = "acc"
[data]
eval = "data.jsonl"
[prompt]
query = "{text}\nAnswer:"
choices = [" no", " yes"]
gold = "label"
gold_labels = ["neg", "pos"]
"#;

const LABELED_DATA: &str = r#"{"text": "one", "label": "pos", "opts": ["x", "y"]}
{"text": "two", "label": "neg", "opts": ["x", "y"]}
{"text": "three", "label": "neg", "opts": ["x", "y"]}
{"text": "four", "label": "pos", "opts": ["x", "y"]}
"#;

#[test]
fn gold_label_not_among_the_options_is_an_error_not_a_panic() {
    // The issue's case: gold_labels names a third label, the record's options are two. The old
    // code indexed the options with it and panicked (index out of bounds).
    let toml = LABELED
        .replace(r#"choices = [" no", " yes"]"#, r#"choices_field = "opts""#)
        .replace(r#"gold_labels = ["neg", "pos"]"#, r#"gold_labels = ["neg", "pos", "unsure"]"#);
    let data = LABELED_DATA.replace(r#""three", "label": "neg""#, r#""three", "label": "unsure""#);
    expect_error(&toml, &data, &["data.jsonl:3", "`label`", "\"unsure\"", "only 2 answer options", "task.toml"]);
    // A label listed nowhere.
    let data = LABELED_DATA.replace(r#""two", "label": "neg""#, r#""two", "label": "meh""#);
    expect_error(LABELED, &data, &["data.jsonl:2", "`label`", "not one of gold_labels"]);
}

#[test]
fn gold_labels_and_choices_counts_must_agree() {
    let toml = LABELED.replace(r#"gold_labels = ["neg", "pos"]"#, r#"gold_labels = ["neg", "pos", "unsure"]"#);
    expect_error(&toml, LABELED_DATA, &["task.toml:9", "`gold_labels` has 3 entries but `choices` has 2"]);
    let toml = LABELED.replace(r#"gold_labels = ["neg", "pos"]"#, r#"gold_labels = ["neg", "neg"]"#);
    expect_error(&toml, LABELED_DATA, &["task.toml:9", "gold_labels[0]", "gold_labels[1]"]);
}

#[test]
fn empty_or_duplicate_options() {
    let toml = TOML.replace(r#"choices = [" {a}", " {b}"]"#, r#"choices = [" {a}", " "]"#);
    expect_error(&toml, GOOD, &["task.toml:7", "`choices[1]` is empty"]);
    let toml = TOML.replace(r#"choices = [" {a}", " {b}"]"#, r#"choices = [" {a}", " {a}"]"#);
    expect_error(&toml, GOOD, &["task.toml:7", "`choices[0]` and `choices[1]`"]);
    // Rendered options that coincide in one record.
    let data = GOOD.replace(r#""three", "a": "x", "b": "y""#, r#""three", "a": "x", "b": "x""#);
    expect_error(TOML, &data, &["data.jsonl:3", "answer options 0 and 1", "both \" x\""]);
    let toml = TOML.replace(r#"choices = [" {a}", " {b}"]"#, r#"choices_field = "opts""#);
    let data = r#"{"text": "one", "opts": ["x", "y"], "label": 0}
{"text": "two", "opts": ["x", ""], "label": 0}
"#;
    expect_error(&toml, data, &["data.jsonl:2", "answer option 1", "`opts`", "empty"]);
}

#[test]
fn templates_and_types() {
    let toml = TOML.replace(r#"choices = [" {a}", " {b}"]"#, r#"choices = [" {a", " {b}"]"#);
    expect_error(&toml, GOOD, &["task.toml:7", "template `choices[0]`", "unclosed"]);
    let toml = TOML.replace("gold = \"label\"\n", "gold = \"label\"\nimportance_target = \"{a}}\"\n");
    expect_error(&toml, GOOD, &["task.toml:9", "template `importance_target`", "unmatched"]);
    // A placeholder naming a field the record lacks.
    let toml = TOML.replace(r#"choices = [" {a}", " {b}"]"#, r#"choices = [" {a}", " {c}"]"#);
    expect_error(&toml, GOOD, &["data.jsonl:1", "missing field `c`"]);
    // A boolean gold label is not an index (true would silently pick option 1).
    let data = GOOD.replace(r#""four", "a": "x", "b": "y", "label": 0"#, r#""four", "a": "x", "b": "y", "label": true"#);
    expect_error(TOML, &data, &["data.jsonl:4", "`label`", "boolean"]);
    let data = GOOD.replace(r#""four", "a": "x", "b": "y", "label": 0"#, r#""four", "a": "x", "b": "y", "label": 0.5"#);
    expect_error(TOML, &data, &["data.jsonl:4", "`label`", "integer"]);
    let data = GOOD.replace(r#""four", "a": "x", "b": "y", "label": 0"#, r#""four", "a": "x", "b": "y", "label": -1"#);
    expect_error(TOML, &data, &["data.jsonl:4", "out of range"]);
}

#[test]
fn fields_that_would_be_ignored_are_refused() {
    let toml = TOML.replace("gold = \"label\"\n", "gold = \"label\"\nchoice_prefix = \"\"\n");
    expect_error(&toml, GOOD, &["task.toml:9", "`choice_prefix` applies to `choices_field` only"]);
    let toml = TOML.replace("gold = \"label\"\n", "gold = \"label\"\ngroup = \"{text}\"\n");
    expect_error(&toml, GOOD, &["task.toml:9", "`group` is used by metric acc_all only"]);
    let toml = TOML.replace("gold = \"label\"\n", "gold = \"label\"\nanswers_field = \"a\"\n");
    expect_error(&toml, GOOD, &["task.toml:9", "`answers_field` is used by metric em only"]);
    let toml = TOML.replace("gold = \"label\"\n", "gold = \"\"\n");
    expect_error(&toml, GOOD, &["task.toml:8", "`gold` is empty"]);
    let toml = TOML.replace("name = \"t\"", "name = \"\"");
    expect_error(&toml, GOOD, &["task.toml:1", "`name` is empty"]);
}
