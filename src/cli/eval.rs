use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use headroom::io::write_atomic;
use headroom::eval::{evaluate, EvalConfig, ScoreOptions, Tokenization};
use headroom::tasks::{self, LoadOptions, SplitChoice, Task};
use headroom::tokenizer::Tokenizer;

/// Where task data comes from and how it is split (shared by every command that takes tasks).
#[derive(Args, Clone)]
pub struct TaskSource {
    /// A task's data, `TASK=PATH` (repeat the flag for several tasks; a bare PATH when the run has
    /// exactly one task). Needed by tasks without fetched data (wic, wsc, multirc, record,
    /// mathqa); for any other task it replaces the fetched evaluation split. PATH is a
    /// .jsonl/.jsonl.gz/.arrow file (the evaluation split) or a folder with
    /// `{train,validation,test}.jsonl[.gz]` / `.arrow` files or `save_to_disk` split folders (its
    /// `train` split, if any, becomes the pool).
    #[arg(long = "data", value_name = "[TASK=]PATH")]
    pub data: Vec<String>,
    /// A task's training split (demonstration / importance pool), `TASK=PATH` or a bare PATH
    /// with one task: a file, or a folder with a `train` split. Overrides the `--data` folder's
    /// train split and the fetched pool.
    #[arg(long = "train", value_name = "[TASK=]PATH")]
    pub train: Vec<String>,
    /// `auto` (train split if any, else a seeded holdout split of validation), `holdout`, or
    /// `leave-one-out` (evaluate every document; demonstrations from the others).
    #[arg(long, default_value = "auto")]
    pub split: SplitChoice,
    /// Fraction of the documents that form the pool in a holdout split.
    #[arg(long, default_value_t = 0.3)]
    pub pool_fraction: f64,
    /// Seed of the holdout split.
    #[arg(long, default_value_t = 1234)]
    pub split_seed: u64,
}

/// The names a `TASK=` key may use for a task given as `spec`: the spec itself (`wic`,
/// `tasks/sst2.toml`) and, for a task file, its file stem (`sst2`).
fn task_keys(spec: &str) -> Vec<String> {
    let mut keys = vec![spec.to_string()];
    if spec.ends_with(".toml") {
        if let Some(stem) = std::path::Path::new(spec).file_stem().and_then(|s| s.to_str()) {
            keys.push(stem.to_string());
        }
    }
    keys
}

/// Assigns each `--data` / `--train` value to one task of the run. `TASK=PATH` names its task;
/// a value that exists as a path, or has no `=`, is a bare PATH (allowed with one task only).
pub fn per_task_paths(flag: &str, values: &[String], tasks: &[String]) -> Result<Vec<Option<PathBuf>>> {
    let mut out: Vec<Option<PathBuf>> = vec![None; tasks.len()];
    for v in values {
        let keyed = match v.split_once('=') {
            Some((k, p)) if !k.is_empty() && !std::path::Path::new(v).exists() => Some((k, p)),
            _ => None,
        };
        let (i, path) = match keyed {
            Some((k, p)) => {
                let i = tasks.iter().position(|t| task_keys(t).iter().any(|key| key == k)).ok_or_else(|| {
                    anyhow::anyhow!("{flag} {v}: task `{k}` is not in this run (tasks: {})", tasks.join(", "))
                })?;
                if p.is_empty() {
                    bail!("{flag} {v}: empty path after `{k}=`");
                }
                (i, PathBuf::from(p))
            }
            None => {
                if tasks.len() != 1 {
                    bail!(
                        "{flag} {v}: a bare path needs exactly one task, this run has {} ({}); write {flag} TASK=PATH for each task",
                        tasks.len(),
                        tasks.join(", ")
                    );
                }
                (0, PathBuf::from(v))
            }
        };
        if let Some(prev) = &out[i] {
            bail!("{flag} is given twice for task `{}` ({} and {})", tasks[i], prev.display(), path.display());
        }
        out[i] = Some(path);
    }
    Ok(out)
}

impl TaskSource {
    /// Checks every `--data` / `--train` value against the run's tasks (call before loading a
    /// model, so a typo fails fast).
    pub fn check(&self, tasks: &[String]) -> Result<()> {
        per_task_paths("--data", &self.data, tasks)?;
        per_task_paths("--train", &self.train, tasks)?;
        Ok(())
    }

    /// Load options for task `i` of `tasks`.
    pub fn options(&self, tasks: &[String], i: usize, need_pool: bool) -> Result<LoadOptions> {
        let cache = headroom::assets::cache_dir()?;
        let mut o = LoadOptions::new(headroom::assets::data_dir(&cache));
        o.data = per_task_paths("--data", &self.data, tasks)?.swap_remove(i);
        o.train = per_task_paths("--train", &self.train, tasks)?.swap_remove(i);
        o.split = self.split;
        o.pool_fraction = self.pool_fraction;
        o.split_seed = self.split_seed;
        o.need_pool = need_pool;
        Ok(o)
    }

    /// Loads task `i` of `tasks` and says on stderr where its documents and pool come from.
    pub fn load(&self, tasks: &[String], i: usize, need_pool: bool) -> Result<Task> {
        let t0 = std::time::Instant::now();
        let task = tasks::load(&tasks[i], &self.options(tasks, i, need_pool)?)?;
        if headroom::progress::verbosity() == headroom::progress::Verbosity::Quiet {
            return Ok(task);
        }
        let pool = if need_pool || task.pool_is_eval() || task.split.mode == tasks::SplitMode::Holdout {
            format!("pool {} from {}", task.split.pool_docs, task.split.pool_source)
        } else {
            "no pool read (0-shot only)".to_string()
        };
        eprintln!(
            "{}: {} eval docs from {}; {pool} [{:.1}s]",
            task.name,
            task.split.eval_docs,
            task.split.eval_source,
            t0.elapsed().as_secs_f64()
        );
        if headroom::progress::verbosity() == headroom::progress::Verbosity::Verbose {
            for f in &task.split.files {
                eprintln!("  {} {} ({}, {}): {} sha256 {}", task.name, f.role, f.split, f.given_by, f.path, f.sha256);
            }
        }
        Ok(task)
    }

    /// `{task: path}` of the `--data` and `--train` values, for manifests.
    pub fn manifest(&self, tasks: &[String]) -> Result<serde_json::Value> {
        let d = per_task_paths("--data", &self.data, tasks)?;
        let t = per_task_paths("--train", &self.train, tasks)?;
        let mut data = serde_json::Map::new();
        let mut train = serde_json::Map::new();
        for (i, name) in tasks.iter().enumerate() {
            if let Some(p) = &d[i] {
                data.insert(name.clone(), serde_json::json!(p));
            }
            if let Some(p) = &t[i] {
                train.insert(name.clone(), serde_json::json!(p));
            }
        }
        Ok(serde_json::json!({"data": data, "train": train}))
    }
}

#[derive(Args)]
pub struct EvalArgs {
    /// A Hugging Face folder, a .gguf file, a hub id `org/name[@revision][:FILE.gguf]` already in
    /// the local Hugging Face cache (see docs/models.md), or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    /// Task names (see `headroom tasks`) or .toml task files, comma-separated (`--task` is an
    /// alias).
    #[arg(long = "tasks", alias = "task", value_delimiter = ',', required = true)]
    task: Vec<String>,
    /// Shot counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,5")]
    shots: Vec<usize>,
    /// A mask JSON file `{"heads": [[..]..], "ffns": [..]}` (1 keep, 0 remove).
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Evaluate only the first N documents of the seeded evaluation order.
    #[arg(long)]
    limit: Option<usize>,
    /// Seeds the evaluation order and the demonstrations (identical across masks).
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Examples per forward pass at most.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Padded tokens per forward pass at most.
    #[arg(long, default_value_t = 8192)]
    max_batch_tokens: usize,
    /// Largest padding fraction of a batch (rows are sorted by length).
    #[arg(long, default_value_t = 0.1)]
    max_padding: f64,
    /// `authors` (context and continuation tokenized separately) or `lm-eval-0.4` (joint
    /// tokenization and its COPA double space).
    #[arg(long, default_value = "authors")]
    scoring: Tokenization,
    /// Left-truncate inputs to this many tokens (default: the model's context length; the
    /// authors used 2048).
    #[arg(long)]
    max_length: Option<usize>,
    #[command(flatten)]
    source: TaskSource,
    /// Output folder: `<task>.<k>shot.json` (summary), `<task>.<k>shot.examples.jsonl`, and
    /// lm-evaluation-harness 0.4's files under `lm-eval/<k>shot/` (`results_<date>.json`,
    /// `samples_<task>_<date>.jsonl`).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: EvalArgs, dev: &super::Runtime) -> Result<()> {
    if args.shots.is_empty() {
        bail!("--shots is empty");
    }
    args.source.check(&args.task)?;
    let (path, model) = super::load_model(&args.model, dev)?;
    let tok = Tokenizer::for_model(&path)?;
    let mask = super::load_mask(args.mask.as_ref(), &model)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let need_pool = args.shots.iter().any(|&k| k > 0);
    // lm-eval 0.4 files: one `results_<date_id>.json` per shot count (an lm-eval invocation has
    // one num_fewshot) under <out>/lm-eval/<k>shot/, rewritten after each task.
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let start_time = now();
    let date_id = headroom::lmeval::date_id(start_time);
    let torch_dtype = headroom::lmeval::torch_dtype_name(&model.info.compute_dtype).to_string();
    let mut model_args = format!("pretrained={},dtype={torch_dtype}", path.display());
    if let Some(m) = &args.mask {
        model_args.push_str(&format!(",mask={}", m.display()));
    }
    let mut done: Vec<(Task, Vec<headroom::eval::EvalSummary>)> = Vec::new();
    for i in 0..args.task.len() {
        let task = args.source.load(&args.task, i, need_pool)?;
        let mut summaries = Vec::new();
        for &k in &args.shots {
            let cfg = EvalConfig {
                shots: k,
                limit: args.limit,
                seed: args.seed,
                tokenization: args.scoring,
                score: ScoreOptions { batch_size: args.batch_size, max_batch_tokens: args.max_batch_tokens, max_padding: args.max_padding },
                max_length: args.max_length,
            };
            let n = args.limit.map_or(task.eval.len(), |l| l.min(task.eval.len()));
            let bar = headroom::progress::bar(n, &format!("eval {} {k}-shot", task.name));
            let out = evaluate(&model, &tok, &task, &cfg, mask.as_ref(), &mut |d| bar.inc(d as u64))?;
            bar.finish_and_clear();
            let s = &out.summary;
            let mut summary = serde_json::to_value(s)?;
            if let Some(obj) = summary.as_object_mut() {
                obj.insert("model".into(), serde_json::json!(path.display().to_string()));
                obj.insert(
                    "mask".into(),
                    match (&args.mask, &mask) {
                        (Some(p), Some(m)) => serde_json::json!({"file": p.display().to_string(), "heads_removed": m.heads_removed(), "ffns_removed": m.ffns_removed()}),
                        _ => serde_json::Value::Null,
                    },
                );
                obj.insert("headroom_version".into(), serde_json::json!(env!("CARGO_PKG_VERSION")));
                // The compute dtype changes the numbers; the weights mode does not (recorded).
                obj.insert("compute_dtype".into(), serde_json::json!(model.info.compute_dtype));
                obj.insert("weights".into(), serde_json::json!(model.info.weights));
            }
            let stem = format!("{}.{k}shot", task.name);
            write_atomic(&args.out.join(format!("{stem}.json")), serde_json::to_string_pretty(&summary)?.as_bytes())?;
            let mut lines = Vec::new();
            for r in &out.records {
                serde_json::to_writer(&mut lines, r)?;
                lines.write_all(b"\n")?;
            }
            write_atomic(&args.out.join(format!("{stem}.examples.jsonl")), &lines)?;
            // The prompts as scored (same documents, demonstrations and COPA double space).
            let docs = headroom::eval::selected_docs(&task, &cfg);
            let mut prompts = headroom::tasks::prompt::build_prompts(&task, &docs, k, cfg.seed)?;
            if cfg.tokenization == Tokenization::LmEval04 && task.lm_eval04_double_space {
                for p in &mut prompts {
                    for r in &mut p.requests {
                        r.1 = format!(" {}", r.1);
                    }
                }
            }
            let lm_dir = args.out.join("lm-eval").join(format!("{k}shot"));
            std::fs::create_dir_all(&lm_dir).with_context(|| format!("cannot create {}", lm_dir.display()))?;
            let samples = headroom::lmeval::samples_jsonl(&task, &out, &prompts)?;
            write_atomic(&lm_dir.join(format!("samples_{}_{date_id}.jsonl", task.name)), samples.as_bytes())?;
            println!(
                "{} {k}-shot: {} = {:.4} ± {:.4} (n={}) | {:.1} ex/s | FLOPs {:.3}x naive, tokens {:.3}x | truncated {} options",
                task.name, s.metric, s.value, s.stderr, s.n, s.examples_per_s, s.flop_ratio, s.token_ratio, s.truncated_options
            );
            summaries.push(out.summary);
        }
        // Keep what results.json needs (name, metric, split, document count), not the pool.
        let mut kept = task;
        kept.pool = Vec::new();
        done.push((kept, summaries));
        for (j, &k) in args.shots.iter().enumerate() {
            let entries: Vec<(&Task, &headroom::eval::EvalSummary)> = done.iter().map(|(t, s)| (t, &s[j])).collect();
            let run = headroom::lmeval::RunConfig {
                model_path: path.display().to_string(),
                model_args: model_args.clone(),
                model_dtype: format!("torch.{torch_dtype}"),
                batch_size: args.batch_size,
                device: if dev.device().is_cpu() { "cpu".into() } else { "cuda".into() },
                limit: args.limit,
                seed: args.seed,
                start_time,
                end_time: now(),
            };
            let results = headroom::lmeval::results_json(&entries, &run);
            let lm_dir = args.out.join("lm-eval").join(format!("{k}shot"));
            write_atomic(&lm_dir.join(format!("results_{date_id}.json")), serde_json::to_string_pretty(&results)?.as_bytes())?;
        }
    }
    super::report_streaming(&model);
    Ok(())
}
