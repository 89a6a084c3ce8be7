//! User-defined tasks: a small TOML file with templates, so a task needs no Rust.
//! The format is documented with a worked example in `docs/tasks.md`.
//!
//! ```toml
//! name = "sst2"
//! metric = "acc"                       # acc | acc_norm | acc_all | em | greedy
//! [data]
//! eval = "sst2_validation.jsonl"       # .jsonl, .jsonl.gz or .arrow; relative to this file,
//!                                      # or under `${data}/` (the fetched data folder)
//! pool = "sst2_train.jsonl"            # optional; else a seeded holdout split of `eval`
//! [prompt]
//! query = "{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:"
//! choices = [" negative", " positive"] # templates; or choices_field = "endings"
//! gold = "label"                       # field holding the gold index
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::Value;

use super::data::{self, kind, Record};
use super::{holdout_split, Choice, DataFile, Item, LoadOptions, Metric, SplitChoice, SplitInfo, SplitMode, Task, TieBreak};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_metric")]
    pub metric: Metric,
    /// `first` (argmax, default) or `last` (a tie picks the later option).
    #[serde(default)]
    pub ties: Option<String>,
    pub data: DataSection,
    pub prompt: PromptSection,
}

fn default_metric() -> Metric {
    Metric::Acc
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub eval: PathBuf,
    #[serde(default)]
    pub pool: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSection {
    /// Template of `doc_to_text`.
    pub query: String,
    /// Option continuations as templates (fixed options such as `[" yes", " no"]`).
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    /// Or: a field holding a list of option strings (dotted path), each prefixed with
    /// `choice_prefix` (default `" "`).
    #[serde(default)]
    pub choices_field: Option<String>,
    #[serde(default)]
    pub choice_prefix: Option<String>,
    /// Field holding the gold option: an integer index (or a string of one), or a string found
    /// in `gold_labels`.
    pub gold: String,
    #[serde(default)]
    pub gold_labels: Option<Vec<String>>,
    /// Template of what follows the query in a demonstration (default: the gold continuation).
    #[serde(default)]
    pub demo_target: Option<String>,
    /// Template of the importance target (default: the gold continuation without its leading
    /// space, the authors' convention).
    #[serde(default)]
    pub importance_target: Option<String>,
    /// Template of the `acc_all` group key.
    #[serde(default)]
    pub group: Option<String>,
    /// Field with the gold answer strings for `em` (default: the gold option's text).
    #[serde(default)]
    pub answers_field: Option<String>,
}

/// `file:line:column` for a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |p| before.len() - p - 1) + 1;
    (line, col)
}

/// Parses a task file; errors name the file and line.
pub fn parse(path: &Path) -> Result<TaskFile> {
    let text = data::read_to_string(path)?;
    let tf: TaskFile = toml::from_str(&text).map_err(|e| {
        let (line, col) = e.span().map_or((1, 1), |s| line_col(&text, s.start));
        anyhow::anyhow!("{}:{line}:{col}: {}", path.display(), e.message())
    })?;
    let find_line = |key: &str| -> usize {
        text.lines().position(|l| l.trim_start().starts_with(key)).map_or(1, |i| i + 1)
    };
    let p = &tf.prompt;
    let at = |key: &str| format!("{}:{}", path.display(), find_line(key));
    if tf.name.trim().is_empty() {
        bail!("{}: `name` is empty", at("name"));
    }
    if tf.data.eval.as_os_str().is_empty() {
        bail!("{}: [data] `eval` is empty (expected a .jsonl, .jsonl.gz or .arrow path)", at("eval"));
    }
    match (&p.choices, &p.choices_field) {
        (None, None) => bail!("{}: [prompt] needs `choices` or `choices_field`", at("[prompt]")),
        (Some(_), Some(_)) => bail!("{}: give either `choices` or `choices_field`, not both", at("choices")),
        (Some(c), None) => {
            if c.is_empty() {
                bail!("{}: `choices` is empty", at("choices"));
            }
            if let Some(i) = c.iter().position(|t| t.trim().is_empty()) {
                bail!("{}: `choices[{i}]` is empty (every answer option needs text)", at("choices"));
            }
            if let Some((i, j)) = first_duplicate(c) {
                bail!("{}: `choices[{i}]` and `choices[{j}]` are the same template {:?} (the options could not be told apart)", at("choices"), c[i]);
            }
            if p.choice_prefix.is_some() {
                bail!("{}: `choice_prefix` applies to `choices_field` only; with `choices`, write the prefix into each template", at("choice_prefix"));
            }
        }
        (None, Some(f)) if f.trim().is_empty() => bail!("{}: `choices_field` is empty (expected a field name)", at("choices_field")),
        (None, Some(_)) => {}
    }
    if p.gold.trim().is_empty() {
        bail!("{}: `gold` is empty (expected the name of the field holding the gold label)", at("gold"));
    }
    if let Some(labels) = &p.gold_labels {
        if labels.is_empty() {
            bail!("{}: `gold_labels` is empty", at("gold_labels"));
        }
        if let Some((i, j)) = first_duplicate(labels) {
            bail!("{}: `gold_labels[{i}]` and `gold_labels[{j}]` are both {:?}", at("gold_labels"), labels[i]);
        }
        if let Some(c) = &p.choices {
            if labels.len() != c.len() {
                bail!(
                    "{}: `gold_labels` has {} entries but `choices` has {} (gold_labels[i] names choices[i])",
                    at("gold_labels"),
                    labels.len(),
                    c.len()
                );
            }
        }
    }
    if tf.metric == Metric::AccAll && p.group.is_none() {
        bail!("{}: metric acc_all needs a `group` template in [prompt]", at("metric"));
    }
    if tf.metric != Metric::AccAll && p.group.is_some() {
        bail!("{}: `group` is used by metric acc_all only (this task's metric is {})", at("group"), tf.metric.key());
    }
    if tf.metric != Metric::Em && p.answers_field.is_some() {
        bail!("{}: `answers_field` is used by metric em only (this task's metric is {})", at("answers_field"), tf.metric.key());
    }
    if tf.metric == Metric::Greedy && p.choices.as_ref().is_some_and(|c| c.len() != 1) {
        bail!("{}: metric greedy scores one continuation per document; `choices` has {}", at("choices"), p.choices.as_ref().map_or(0, |c| c.len()));
    }
    let mut templates: Vec<(String, &String)> = vec![("query".into(), &p.query)];
    templates.extend(p.choices.iter().flatten().enumerate().map(|(i, t)| (format!("choices[{i}]"), t)));
    for (key, t) in [("demo_target", &p.demo_target), ("importance_target", &p.importance_target), ("group", &p.group)] {
        if let Some(t) = t {
            templates.push((key.into(), t));
        }
    }
    for (key, tpl) in templates {
        if let Err(e) = placeholders(tpl) {
            let line_key = key.split('[').next().unwrap_or(&key).to_string();
            bail!("{}: template `{key}`: {e}", at(&line_key));
        }
    }
    match tf.ties.as_deref() {
        None | Some("first") | Some("last") => {}
        Some(o) => bail!("{}: ties = {o:?} (expected \"first\" or \"last\")", at("ties")),
    }
    Ok(tf)
}

/// The first pair of equal entries, as indices.
fn first_duplicate(xs: &[String]) -> Option<(usize, usize)> {
    for j in 1..xs.len() {
        if let Some(i) = xs[..j].iter().position(|x| *x == xs[j]) {
            return Some((i, j));
        }
    }
    None
}

/// The `{field}` names of a template (`{{` and `}}` are literal braces).
pub fn placeholders(tpl: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = tpl.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(x) => name.push(x),
                        None => bail!("unclosed `{{` in {tpl:?}"),
                    }
                }
                if name.trim().is_empty() {
                    bail!("empty `{{}}` in {tpl:?}");
                }
                out.push(name.trim().to_string());
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
            }
            '}' => bail!("unmatched `}}` in {tpl:?} (write `}}}}` for a literal brace)"),
            _ => {}
        }
    }
    Ok(out)
}

/// Fills a template from a record's fields.
pub fn render(tpl: &str, rec: &Record) -> Result<String> {
    let mut out = String::new();
    let mut chars = tpl.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '{' => {
                let mut name = String::new();
                for x in chars.by_ref() {
                    if x == '}' {
                        break;
                    }
                    name.push(x);
                }
                let name = name.trim();
                match rec.get(name) {
                    None | Some(Value::Null) => bail!("{}: missing field `{name}` (used in the template {tpl:?})", rec.origin),
                    Some(Value::String(s)) => out.push_str(s),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => out.push_str(&v.to_string()),
                    Some(v) => bail!("{}: field `{name}` is {}, which a template cannot print", rec.origin, kind(v)),
                }
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn render_item(tf: &TaskFile, rec: &Record, i: usize) -> Result<Item> {
    let p = &tf.prompt;
    let query = render(&p.query, rec)?;
    let (continuations, texts): (Vec<String>, Vec<String>) = match (&p.choices, &p.choices_field) {
        (Some(tpls), _) => {
            let conts = tpls.iter().map(|t| render(t, rec)).collect::<Result<Vec<_>>>()?;
            let texts = conts.iter().map(|c| c.trim_start().to_string()).collect();
            (conts, texts)
        }
        (None, Some(field)) => {
            let prefix = p.choice_prefix.as_deref().unwrap_or(" ");
            let opts = rec.strs(field)?;
            (opts.iter().map(|o| format!("{prefix}{o}")).collect(), opts)
        }
        (None, None) => bail!("no choices"),
    };
    let field = p.choices_field.as_deref().unwrap_or("choices");
    if continuations.is_empty() {
        bail!("{}: the document has no answer options (empty `{field}`)", rec.origin);
    }
    if let Some(k) = texts.iter().position(|t| t.trim().is_empty()) {
        bail!("{}: answer option {k} (`{field}`) is empty", rec.origin);
    }
    if let Some((a, b)) = first_duplicate(&continuations) {
        bail!("{}: answer options {a} and {b} (`{field}`) are both {:?}; the options could not be told apart", rec.origin, continuations[a]);
    }
    let n = continuations.len();
    if tf.metric == Metric::Greedy && n != 1 {
        bail!("{}: metric greedy scores one continuation per document; `{field}` has {n}", rec.origin);
    }
    let gold = match rec.get(&p.gold) {
        None | Some(Value::Null) => bail!("{}: missing field `{}` (the gold label)", rec.origin, p.gold),
        Some(Value::String(s)) if p.gold_labels.is_some() => {
            let labels = p.gold_labels.as_deref().unwrap_or_default();
            let g = labels
                .iter()
                .position(|l| l == s)
                .ok_or_else(|| anyhow::anyhow!("{}: gold label `{}` = {s:?} is not one of gold_labels {labels:?}", rec.origin, p.gold))?;
            if g >= n {
                bail!(
                    "{}: gold label `{}` = {s:?} is gold_labels[{g}], but the document has only {n} answer options (`{field}`)",
                    rec.origin,
                    p.gold
                );
            }
            g
        }
        // A boolean is not an index: `true` would silently pick option 1.
        Some(Value::Bool(b)) => bail!(
            "{}: field `{}` (the gold label) is the boolean {b}; expected an integer index, or a string listed in gold_labels",
            rec.origin,
            p.gold
        ),
        Some(Value::String(_)) | Some(Value::Number(_)) => {
            let g = rec.int_like(&p.gold)?;
            if g < 0 || g as usize >= n {
                bail!("{}: gold label `{}` = {g} is out of range for {n} answer options", rec.origin, p.gold);
            }
            g as usize
        }
        Some(v) => bail!("{}: field `{}` (the gold label) should be an integer, found {}", rec.origin, p.gold, kind(v)),
    };
    let demo_target = match &p.demo_target {
        Some(t) => render(t, rec)?,
        None => continuations[gold].clone(),
    };
    let importance_target = match &p.importance_target {
        Some(t) => render(t, rec)?,
        None => continuations[gold].trim_start().to_string(),
    };
    let answers = match &p.answers_field {
        Some(f) => rec.strs(f)?,
        None if tf.metric == Metric::Em => vec![texts[gold].clone()],
        None => vec![],
    };
    Ok(Item {
        origin: rec.origin.to_string(),
        id: i.to_string(),
        choices: continuations
            .into_iter()
            .zip(texts)
            .map(|(continuation, text)| Choice { query: query.clone(), continuation, text })
            .collect(),
        query,
        demo_target,
        gold,
        importance_target,
        group: p.group.as_ref().map(|g| render(g, rec)).transpose()?,
        answers,
    })
}

/// Renders every record; an error names the record (`file:line` / `file: row N`), the field,
/// and the task file whose template or rule it broke.
fn render_records(tf: &TaskFile, task_file: &Path, records: &[Record]) -> Result<Vec<Item>> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let it = render_item(tf, r, i)?;
            it.check()?;
            Ok(it)
        })
        .collect::<Result<_>>()
        .map_err(|e| anyhow::anyhow!("{e:#} (task file {})", task_file.display()))
}

/// Loads a TOML task. `--data` / `--train` override the file's data paths.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Task> {
    let tf = parse(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    // `${data}` stands for the fetched data folder (`<cache>/data`).
    let resolve = |p: &Path| {
        let s = p.to_string_lossy();
        let p = match s.strip_prefix("${data}") {
            Some(rest) => opts.data_dir.join(rest.trim_start_matches('/')),
            None => p.to_path_buf(),
        };
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };
    // `--data` / `--train` replace the file's paths; a folder gives its split files.
    let (eval_split, eval_files, eval_by) = match &opts.data {
        Some(d) => {
            let (split, fs) = super::builtin::user_split_files(d, &["validation", "val", "dev", "test"])?.ok_or_else(|| {
                anyhow::anyhow!("{}: no evaluation split found (looked for {{validation,val,dev,test}}.jsonl[.gz], .json, .arrow, or a save_to_disk folder)", d.display())
            })?;
            (split, fs, "--data")
        }
        None => ("file".to_string(), vec![resolve(&tf.data.eval)], "task file"),
    };
    let pool_given: Option<(String, Vec<PathBuf>, &str)> = match (&opts.train, &opts.data) {
        (Some(t), _) => {
            let (split, fs) = super::builtin::user_split_files(t, &["train"])?
                .ok_or_else(|| anyhow::anyhow!("{}: no train split found (looked for train.jsonl[.gz], train.json, train.arrow, or a train/ folder)", t.display()))?;
            Some((split, fs, "--train"))
        }
        // Else the `--data` folder's train split, else the task file's own pool.
        (None, d) => match d {
            Some(d) if d.is_dir() => super::builtin::user_split_files(d, &["train"])?.map(|(s, fs)| (s, fs, "--data")),
            _ => None,
        }
        .or_else(|| tf.data.pool.as_deref().map(|p| ("file".to_string(), vec![resolve(p)], "task file"))),
    };
    let mut files: Vec<DataFile> =
        eval_files.iter().map(|f| DataFile::new("eval", &eval_split, eval_by, f)).collect::<Result<_>>()?;
    let mut eval_records = Vec::new();
    for f in &eval_files {
        eval_records.extend(data::read_records(f)?);
    }
    let all_eval = render_records(&tf, path, &eval_records)?;
    let mode = match (opts.split, &pool_given) {
        (SplitChoice::Holdout, _) | (SplitChoice::Auto, None) => SplitMode::Holdout,
        (SplitChoice::LeaveOneOut, _) => SplitMode::LeaveOneOut,
        (SplitChoice::Auto, Some(_)) => SplitMode::Train,
    };
    if mode != SplitMode::Train && opts.train.is_some() {
        bail!("--train was given but --split {:?} takes the pool from the evaluation documents; drop one of them", opts.split);
    }
    let describe = |fs: &[PathBuf]| fs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    let eval_source = format!("{eval_by} {} ({eval_split})", describe(&eval_files));
    let (eval, pool, pool_source, pool_indices) = match mode {
        SplitMode::Holdout => {
            let (pool, eval, idx) = holdout_split(all_eval, opts.pool_fraction, opts.split_seed)?;
            (eval, pool, format!("holdout of {eval_source}"), idx)
        }
        SplitMode::LeaveOneOut => (all_eval.clone(), all_eval, format!("{eval_source} (leave-one-out)"), vec![]),
        SplitMode::Train => {
            let (split, fs, by) = pool_given.unwrap_or_default();
            let pool = if opts.need_pool {
                files.extend(fs.iter().map(|f| DataFile::new("pool", &split, by, f)).collect::<Result<Vec<_>>>()?);
                let mut recs = Vec::new();
                for f in &fs {
                    recs.extend(data::read_records(f)?);
                }
                render_records(&tf, path, &recs)?
            } else {
                vec![]
            };
            let src = if opts.need_pool { format!("{by} {} ({split})", describe(&fs)) } else { "not loaded (0-shot)".into() };
            (all_eval, pool, src, vec![])
        }
    };
    let split = SplitInfo {
        mode,
        eval_source,
        pool_source,
        eval_docs: eval.len(),
        pool_docs: pool.len(),
        holdout_seed: (mode == SplitMode::Holdout).then_some(opts.split_seed),
        pool_fraction: (mode == SplitMode::Holdout).then_some(opts.pool_fraction),
        pool_indices,
        notes: if tf.description.is_empty() { vec![] } else { vec![tf.description.clone()] },
        files,
    };
    Ok(Task {
        name: tf.name.clone(),
        metric: tf.metric,
        ties: if tf.ties.as_deref() == Some("last") { TieBreak::Last } else { TieBreak::First },
        eval,
        pool,
        split,
        lm_eval04_double_space: false,
    })
}
