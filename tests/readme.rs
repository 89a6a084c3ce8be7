//! The README cannot drift from the binary:
//! - every `headroom …` command anywhere in the README names a real subcommand, and every `--flag`
//!   it shows is a flag of that subcommand (checked against `headroom <sub> --help`);
//! - every command of the "Reproducing the paper" table runs, in the table's order, on the default
//!   model at a tiny size (two tasks, `--limit 2`, two importance documents), through `bash` so the
//!   globs expand as they do for a user, and `headroom report` then renders the folder;
//! - the README's example output of `headroom next` is what the default model prints.

mod common;

use std::path::Path;
use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_headroom")
}

/// Backticked spans of `line` that start with `headroom `.
fn inline_commands(line: &str) -> Vec<String> {
    line.split('`').skip(1).step_by(2).filter(|s| s.starts_with("headroom ")).map(str::to_string).collect()
}

/// Every `headroom …` command in the README: lines of fenced blocks (with `$ ` prompts removed and
/// indented continuation lines joined) and backticked spans elsewhere.
fn all_commands(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut in_block = false;
    let mut continuing = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continuing = false;
            continue;
        }
        if in_block {
            let t = line.trim_start().trim_start_matches("$ ");
            if t.starts_with("headroom ") || t == "headroom" {
                out.push(t.to_string());
                continuing = true;
            } else if continuing && line.starts_with(' ') && line.trim_start().starts_with(['[', '-']) {
                let last = out.last_mut().unwrap();
                last.push(' ');
                last.push_str(line.trim());
            } else {
                continuing = false;
            }
        } else {
            out.extend(inline_commands(line));
        }
    }
    out
}

/// `--flag` tokens of a command, without values or brackets.
fn flags(cmd: &str) -> Vec<String> {
    cmd.split(|c: char| c.is_whitespace() || "[]|()".contains(c))
        .filter(|t| t.starts_with("--") && t.len() > 2)
        .map(|t| t.split('=').next().unwrap().trim_end_matches([',', '.']).to_string())
        .collect()
}

#[test]
fn every_readme_command_names_real_flags() {
    let text = readme();
    let cmds = all_commands(&text);
    assert!(cmds.len() > 30, "found only {} commands in the README", cmds.len());
    let mut help_of = std::collections::HashMap::new();
    let mut bad = Vec::new();
    for cmd in &cmds {
        // The subcommand: the first word after `headroom` that is not a global flag or its
        // value (`headroom --weights stream eval ...`); global flags show in every --help.
        let words: Vec<&str> = cmd.split_whitespace().skip(1).collect();
        let mut i = 0;
        while i < words.len() && words[i].starts_with("--") {
            i += if words[i].contains('=') { 1 } else { 2 };
        }
        let Some(&sub) = words.get(i) else { continue };
        if sub.starts_with('-') || sub == "<command>" {
            continue;
        }
        let help = help_of.entry(sub.to_string()).or_insert_with(|| {
            let o = Command::new(bin()).args([sub, "--help"]).output().unwrap();
            o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
        });
        let Some(help) = help else {
            bad.push(format!("`{cmd}`: `headroom {sub}` is not a subcommand"));
            continue;
        };
        for f in flags(cmd) {
            let known = help.lines().any(|l| {
                l.split(|c: char| c.is_whitespace() || c == ',').any(|w| w == f || w.starts_with(&format!("{f}=")) || w.starts_with(&format!("{f}<")))
            });
            if !known {
                bad.push(format!("`{cmd}`: `{f}` is not a flag of `headroom {sub}`"));
            }
        }
    }
    assert!(bad.is_empty(), "README commands that do not match the binary:\n{}", bad.join("\n"));
}

/// The command column of the "Reproducing the paper" table, row by row.
fn paper_table(text: &str) -> Vec<String> {
    let start = text.find("## Reproducing the paper").expect("README has a `Reproducing the paper` section");
    let section = &text[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    section[..end]
        .lines()
        .filter(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(3).map(inline_commands))
        .flatten()
        .collect()
}

/// A table command at the test's size: two tasks and two shot counts, two evaluation documents,
/// two importance documents, two head and FFN levels where the row does not set them, two random
/// sequences for induction, one random set for the ablation.
fn tiny(cmd: &str) -> String {
    let mut c = cmd.replace("T1,..,T14", "copa,arc_easy").replace("--shots 0,1,5", "--shots 0,1").replace("--sequences 100", "--sequences 2");
    let sub = c.split_whitespace().nth(1).unwrap_or("").to_string();
    let has = |c: &str, f: &str| c.split_whitespace().any(|w| w == f);
    match sub.as_str() {
        "prune" => {
            c.push_str(" --limit 2 --importance-docs 2");
            for (f, v) in [("--heads", "0,50"), ("--ffns", "0,50")] {
                if !has(&c, f) {
                    c.push_str(&format!(" {f} {v}"));
                }
            }
        }
        "induction-ablate" => c.push_str(" --limit 2 --ks 1 --random-sets 1"),
        "prompts" => c.push_str(" --max-docs 2"),
        _ => {}
    }
    c.replace("RUN-ood", "run-ood").replace("RUN", "run")
}

#[test]
fn paper_table_commands_run_in_order() {
    // `--model` defaults to the fetched default model.
    let Some(_) = common::default_model() else { return };
    let Some(_) = common::task_data() else { return };
    let cmds = paper_table(&readme());
    assert!(cmds.len() >= 14, "the paper table has only {} commands", cmds.len());
    assert!(cmds.last().unwrap().starts_with("headroom report "), "the table ends with the report: {cmds:?}");
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(bin()).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    for cmd in &cmds {
        let run = tiny(cmd);
        let t = std::time::Instant::now();
        let out = Command::new("bash")
            .args(["-c", &format!("set -euo pipefail; {run}")])
            .current_dir(dir.path())
            .env("PATH", &path)
            .output()
            .unwrap();
        eprintln!("{:6.1}s  {run}", t.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "README command `{cmd}` (run as `{run}`) failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // What the rows promise to write.
    for f in [
        "run/sweeps/heads.csv",
        "run/sweeps/ffns.csv",
        "run/sweeps/combined.csv",
        "run/sweeps/inflection.csv",
        "run/compare/compare.json",
        "run/compare-argsort/compare.json",
        "run/induction/induction.json",
        "run/report.html",
        "run-ood/sweeps/heads.csv",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing after the README's commands");
    }
    // Labels came from the files, so the cross-shot table (Table 1) was made.
    let cmp: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("run/compare/compare.json")).unwrap()).unwrap();
    let labels: Vec<&str> = cmp["inputs"].as_array().unwrap().iter().filter_map(|i| i["label"].as_str()).collect();
    assert!(labels.contains(&"copa@0") && labels.contains(&"arc_easy@1"), "{labels:?}");
}

#[test]
fn next_example_output_is_what_the_model_prints() {
    let Some(model) = common::default_model() else { return };
    let text = readme();
    let start = text.find("$ headroom next ").expect("README shows a `headroom next` example");
    let block = &text[start..text[start..].find("```").map(|e| start + e).unwrap()];
    let mut lines = block.lines();
    let cmd = lines.next().unwrap().trim_start_matches("$ headroom ");
    // The prompt is quoted in the README; split it as a shell would.
    let (before, rest) = cmd.split_once('"').unwrap();
    let (prompt, after) = rest.split_once('"').unwrap();
    let mut args: Vec<String> = before.split_whitespace().map(String::from).collect();
    args.push(prompt.to_string());
    args.extend(after.split_whitespace().map(String::from));
    args.extend(["--model".to_string(), model.display().to_string()]);
    let out = Command::new(bin()).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows = |s: &str| -> Vec<Vec<String>> {
        s.lines().skip_while(|l| !l.trim_start().starts_with("rank")).skip(1).map(|l| l.split_whitespace().map(String::from).collect()).collect()
    };
    let (want, got_rows) = (rows(block), rows(&got));
    assert!(!want.is_empty() && want.len() == got_rows.len(), "README:\n{block}\nbinary:\n{got}");
    for (w, g) in want.iter().zip(&got_rows) {
        // rank, id and token exactly; log-prob and prob to the printed precision (± 5e-4).
        assert_eq!((&w[0], &w[1], &w[4..]), (&g[0], &g[1], &g[4..]), "README:\n{block}\nbinary:\n{got}");
        for i in [2, 3] {
            let (a, b): (f64, f64) = (w[i].parse().unwrap(), g[i].parse().unwrap());
            assert!((a - b).abs() <= 5e-4, "README {a} vs binary {b}:\n{got}");
        }
    }
}

#[test]
fn readme_links_point_inside_the_repository() {
    // A clone is all a user has: every relative link must resolve in it, none may leave it.
    let text = readme();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut bad = Vec::new();
    for (i, _) in text.match_indices("](") {
        let target = text[i + 2..].split(')').next().unwrap();
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        let file = target.split('#').next().unwrap();
        if file.starts_with("..") || !root.join(file).exists() {
            bad.push(target.to_string());
        }
    }
    assert!(!text.contains("../shared"), "the README mentions ../shared, which a clone does not have");
    assert!(bad.is_empty(), "README links that do not resolve inside the repository: {bad:?}");
}
