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
use super::{holdout_split, Choice, Item, LoadOptions, Metric, SplitChoice, SplitInfo, SplitMode, Task, TieBreak};

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
    match (&tf.prompt.choices, &tf.prompt.choices_field) {
        (None, None) => bail!("{}:{}: [prompt] needs `choices` or `choices_field`", path.display(), find_line("[prompt]")),
        (Some(_), Some(_)) => bail!("{}:{}: give either `choices` or `choices_field`, not both", path.display(), find_line("choices")),
        (Some(c), None) if c.is_empty() => bail!("{}:{}: `choices` is empty", path.display(), find_line("choices")),
        _ => {}
    }
    if tf.metric == Metric::AccAll && tf.prompt.group.is_none() {
        bail!("{}:{}: metric acc_all needs a `group` template in [prompt]", path.display(), find_line("metric"));
    }
    for (key, tpl) in [("query", Some(&tf.prompt.query)), ("demo_target", tf.prompt.demo_target.as_ref()), ("group", tf.prompt.group.as_ref())] {
        if let Some(t) = tpl {
            if let Err(e) = placeholders(t) {
                bail!("{}:{}: template `{key}`: {e}", path.display(), find_line(key));
            }
        }
    }
    match tf.ties.as_deref() {
        None | Some("first") | Some("last") => {}
        Some(o) => bail!("{}:{}: ties = {o:?} (expected \"first\" or \"last\")", path.display(), find_line("ties")),
    }
    Ok(tf)
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
    if continuations.is_empty() {
        bail!("{}: the document has no answer options (empty `{}`)", rec.origin, p.choices_field.as_deref().unwrap_or("choices"));
    }
    let n = continuations.len();
    let gold = match rec.get(&p.gold) {
        None | Some(Value::Null) => bail!("{}: missing field `{}` (the gold label)", rec.origin, p.gold),
        Some(Value::String(s)) if p.gold_labels.is_some() => {
            let labels = p.gold_labels.as_deref().unwrap_or_default();
            labels
                .iter()
                .position(|l| l == s)
                .ok_or_else(|| anyhow::anyhow!("{}: gold label {s:?} is not one of gold_labels {labels:?}", rec.origin))?
        }
        Some(Value::String(_)) | Some(Value::Number(_)) | Some(Value::Bool(_)) => {
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

fn render_records(tf: &TaskFile, records: &[Record]) -> Result<Vec<Item>> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let it = render_item(tf, r, i)?;
            it.check()?;
            Ok(it)
        })
        .collect()
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
    let eval_path = opts.data.clone().unwrap_or_else(|| resolve(&tf.data.eval));
    let pool_path = opts.train.clone().or_else(|| tf.data.pool.as_deref().map(resolve));
    let all_eval = render_records(&tf, &data::read_records(&eval_path)?)?;
    let mode = match (opts.split, &pool_path) {
        (SplitChoice::Holdout, _) | (SplitChoice::Auto, None) => SplitMode::Holdout,
        (SplitChoice::LeaveOneOut, _) => SplitMode::LeaveOneOut,
        (SplitChoice::Auto, Some(_)) => SplitMode::Train,
    };
    let eval_source = eval_path.display().to_string();
    let (eval, pool, pool_source, pool_indices) = match mode {
        SplitMode::Holdout => {
            let (pool, eval, idx) = holdout_split(all_eval, opts.pool_fraction, opts.split_seed)?;
            (eval, pool, format!("holdout of {eval_source}"), idx)
        }
        SplitMode::LeaveOneOut => (all_eval.clone(), all_eval, format!("{eval_source} (leave-one-out)"), vec![]),
        SplitMode::Train => {
            let p = pool_path.unwrap_or_default();
            let pool = if opts.need_pool { render_records(&tf, &data::read_records(&p)?)? } else { vec![] };
            (all_eval, pool, p.display().to_string(), vec![])
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
