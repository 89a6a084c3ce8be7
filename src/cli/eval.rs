use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use headroom::io::write_atomic;
use headroom::eval::{evaluate, EvalConfig, ScoreOptions, Tokenization};
use headroom::tasks::{self, LoadOptions, SplitChoice};
use headroom::tokenizer::Tokenizer;

/// Where task data comes from and how it is split (shared by `eval` and `prompts`).
#[derive(Args, Clone)]
pub struct TaskSource {
    /// Data for tasks without fetched data (wic, wsc, multirc, record, mathqa) or to replace a
    /// task's evaluation data: a .jsonl/.jsonl.gz/.arrow file (the evaluation split) or a folder
    /// with `{train,validation,test}.jsonl[.gz]` / `.arrow` files or `save_to_disk` split folders.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A training split file (demonstration / importance pool), overriding the task's.
    #[arg(long)]
    pub train: Option<PathBuf>,
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

impl TaskSource {
    pub fn options(&self, need_pool: bool) -> Result<LoadOptions> {
        let cache = headroom::assets::cache_dir()?;
        let mut o = LoadOptions::new(headroom::assets::data_dir(&cache));
        o.data = self.data.clone();
        o.train = self.train.clone();
        o.split = self.split;
        o.pool_fraction = self.pool_fraction;
        o.split_seed = self.split_seed;
        o.need_pool = need_pool;
        Ok(o)
    }
}

#[derive(Args)]
pub struct EvalArgs {
    /// A Hugging Face folder, a .gguf file, a hub id `org/name[@revision][:FILE.gguf]` already in
    /// the local Hugging Face cache (see docs/models.md), or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    /// Task names (see `headroom tasks`) or .toml task files, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
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
    /// Output folder: `<task>.<k>shot.json` (summary) and `<task>.<k>shot.examples.jsonl`.
    #[arg(long)]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: EvalArgs, dev: &Device) -> Result<()> {
    if args.shots.is_empty() {
        bail!("--shots is empty");
    }
    let (path, model) = super::load_model(&args.model, dev)?;
    let tok = Tokenizer::for_model(&path)?;
    let mask = super::load_mask(args.mask.as_ref(), &model)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let need_pool = args.shots.iter().any(|&k| k > 0);
    for name in &args.task {
        let t0 = std::time::Instant::now();
        let task = tasks::load(name, &args.source.options(need_pool)?)?;
        eprintln!(
            "{}: {} eval docs ({}), pool {} ({}) [{:.1}s]",
            task.name,
            task.split.eval_docs,
            task.split.eval_source,
            task.split.pool_docs,
            task.split.pool_source,
            t0.elapsed().as_secs_f64()
        );
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
            let bar = if args.quiet { indicatif::ProgressBar::hidden() } else { headroom::progress::bar(n, &format!("{} {k}-shot", task.name)) };
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
            }
            let stem = format!("{}.{k}shot", task.name);
            write_atomic(&args.out.join(format!("{stem}.json")), serde_json::to_string_pretty(&summary)?.as_bytes())?;
            let mut lines = Vec::new();
            for r in &out.records {
                serde_json::to_writer(&mut lines, r)?;
                lines.write_all(b"\n")?;
            }
            write_atomic(&args.out.join(format!("{stem}.examples.jsonl")), &lines)?;
            println!(
                "{} {k}-shot: {} = {:.4} ± {:.4} (n={}) | {:.1} ex/s | FLOPs {:.3}x naive, tokens {:.3}x | truncated {} options",
                task.name, s.metric, s.value, s.stderr, s.n, s.examples_per_s, s.flop_ratio, s.token_ratio, s.truncated_options
            );
        }
    }
    Ok(())
}
