//! `headroom prune`: the paper's pruning experiments (spec 3 and 5) as one resumable,
//! shardable run: importance per (task, shots), rankings, head / FFN / combined sweeps, the
//! FFN oracle, tidy CSVs and inflection points, all in one run folder. The experiment itself is
//! [`headroom::prune::experiment`]; this file parses flags, loads, and prints.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use headroom::prune::experiment::{self, PruneConfig, Stage};
use headroom::prune::RankingSource;
use headroom::runs::{Manifest, ModelId, RunFolder, Shard};
use headroom::tasks::Task;
use headroom::tokenizer::Tokenizer;
use serde_json::json;

use super::eval::TaskSource;

#[derive(Args)]
pub struct PruneArgs {
    /// A Hugging Face folder, a .gguf file, a hub id `org/name[@revision][:FILE.gguf]` already in
    /// the local Hugging Face cache (see docs/models.md), or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    /// Tasks (see `headroom tasks`), comma-separated (`--task` is an alias).
    #[arg(long, alias = "task", value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// Shot counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    shots: Vec<usize>,
    /// Evaluate on the first N documents of the seeded evaluation order (default: all).
    #[arg(long)]
    limit: Option<usize>,
    /// Pool documents scored for importance (the authors: the first 2500).
    #[arg(long, default_value_t = 2500)]
    importance_docs: usize,
    /// Out-of-distribution tasks (e.g. `lambada`), comma-separated: importance-scored and pruned
    /// like --tasks (own ranking included) but left out of the `aggregate` ranking (spec 5.5).
    #[arg(long, value_delimiter = ',')]
    ood_tasks: Vec<String>,
    /// Head rankings to prune with: own, aggregate, task:NAME, random:SEED, file:PATH.
    #[arg(long, value_delimiter = ',', default_value = "own")]
    ranking: Vec<String>,
    /// Head pruning levels in percent.
    #[arg(long, value_delimiter = ',', default_value = "0,10,20,30,40,50,60,70,80,90")]
    heads: Vec<u32>,
    /// FFN pruning levels in percent (empty: no FFN sweep).
    #[arg(long, value_delimiter = ',', default_value = "0,10,20,30,40,50,60,70,80,90")]
    ffns: Vec<u32>,
    /// Also run the combined grid heads {0..70} x FFNs {0..50} (step 10).
    #[arg(long)]
    combined: bool,
    /// Compute the paper's FFN oracle (1 + L evaluations per task and shot count, on the
    /// evaluation split, as the authors did) and prune FFNs by it too.
    #[arg(long)]
    ffn_oracle: bool,
    /// Also prune heads iteratively (Michel et al.): after each --heads level, re-score importance
    /// on the pruned model and extend the mask by the lowest-scored remaining heads. Rows get
    /// ranking `recompute`; each level's mask goes to RUN/recompute/<task>.<k>shot.<p>.mask.json.
    #[arg(long)]
    recompute: bool,
    /// Inflection tolerance: largest level within this much (absolute) of the unpruned value.
    #[arg(long, default_value_t = 0.01)]
    tolerance: f64,
    /// Importance: examples per forward/backward.
    #[arg(long, default_value_t = 8)]
    importance_batch: usize,
    /// Evaluation: examples per batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Seeds the evaluation order, demonstrations and importance prompts.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Truncate inputs to this many tokens (the authors: 2048); default the model's context.
    #[arg(long)]
    max_length: Option<usize>,
    /// This process's share of the work, i/N (default: from SLURM_ARRAY_TASK_ID/COUNT).
    #[arg(long)]
    shard: Option<String>,
    #[command(flatten)]
    source: TaskSource,
    /// The run folder.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: PruneArgs, dev: &super::Runtime) -> Result<()> {
    let cfg = PruneConfig {
        shots: args.shots.clone(),
        limit: args.limit,
        importance_docs: args.importance_docs,
        rankings: args.ranking.iter().map(|r| RankingSource::parse(r)).collect::<Result<_>>()?,
        heads: args.heads.clone(),
        ffns: args.ffns.clone(),
        combined: args.combined,
        ffn_oracle: args.ffn_oracle,
        tolerance: args.tolerance,
        importance_batch: args.importance_batch,
        batch_size: args.batch_size,
        seed: args.seed,
        max_length: args.max_length,
        ood_tasks: args.ood_tasks.clone(),
        recompute: args.recompute,
    };
    if let Some(t) = args.ood_tasks.iter().find(|t| args.tasks.contains(t)) {
        bail!("task {t} is in both --tasks and --ood-tasks; list it once (--ood-tasks adds tasks to the run)");
    }
    cfg.validate()?;
    let all_tasks: Vec<String> = args.tasks.iter().chain(&args.ood_tasks).cloned().collect();
    args.source.check(&all_tasks)?;
    let shard = Shard::from_flag_or_env(args.shard.as_deref())?;
    let (path, model) = super::load_model(&args.model, dev)?;
    let tok = Tokenizer::for_model(&path)?;
    // Importance always needs the demonstration pool.
    let task_list: Vec<Task> = (0..all_tasks.len()).map(|i| args.source.load(&all_tasks, i, true)).collect::<Result<_>>()?;
    let cache = headroom::assets::cache_dir()?;
    let mut options = cfg.manifest_options(&args.tasks);
    if let Some(o) = options.as_object_mut() {
        // How the tasks were loaded (CLI-only options, but they change every result).
        o.insert("split".into(), json!(format!("{:?}", args.source.split)));
        o.insert("pool_fraction".into(), json!(args.source.pool_fraction));
        o.insert("split_seed".into(), json!(args.source.split_seed));
        let given = args.source.manifest(&all_tasks)?;
        o.insert("data".into(), given["data"].clone());
        o.insert("train".into(), given["train"].clone());
        // Every data file each task read, with its sha256: a resumed or merged run whose data
        // changed is refused like one whose options changed.
        let files: serde_json::Map<String, serde_json::Value> =
            task_list.iter().map(|t| (t.name.clone(), json!(t.split.files))).collect();
        o.insert("task_files".into(), json!(files));
    }
    let manifest = Manifest {
        // The dtype changes the numbers (compared on reopening, in the unit keys); the weights
        // mode does not (recorded only).
        compute_dtype: model.info.compute_dtype.clone(),
        weights: Some(model.info.weights.clone()),
        ..Manifest::new(
            concat!("headroom ", env!("CARGO_PKG_VERSION")).into(),
            ModelId::of(&path, Some(&cache))?,
            headroom::assets::Asset::ALL.iter().map(|a| a.spec().requirement()).collect(),
            options,
        )
    };
    let folder = RunFolder::open(&args.out, manifest)?;
    eprintln!("run folder {} (shard {}/{})", args.out.display(), shard.index, shard.count);

    let out = experiment::run(&model, &tok, &task_list, &cfg, &folder, shard)?;
    super::report_streaming(&model);
    match out.stopped_at {
        Some(Stage::Importance) => {
            println!(
                "importance: {} computed now, {}/{} present; the sweeps need all of them: merge the shards (`headroom merge`) and run again",
                out.importance.computed, out.importance_present, out.importance_needed
            );
            return Ok(());
        }
        Some(Stage::FfnOracle) => {
            println!("FFN oracle: this shard's units are done; merge the shards and run again for the sweeps");
            return Ok(());
        }
        _ => {}
    }
    if let Some(s) = out.sweeps {
        println!("sweeps: {} units evaluated now, {} reused", s.computed, s.reused);
    }
    if let (Some(s), Some(e)) = (out.recompute_scoring, out.recompute_evals) {
        println!("recompute: {} re-scorings computed now, {} reused; {} units evaluated now, {} reused", s.computed, s.reused, e.computed, e.reused);
    }
    if !out.tables_written {
        println!("this shard is done; merge the shard folders (`headroom merge`) and run again to write the tables");
        return Ok(());
    }
    if let Some(b) = out.baselines.filter(|b| b.computed > 0) {
        println!("baselines: {} unpruned summaries were missing and were evaluated again", b.computed);
    }
    for s in &out.inflection_summary {
        println!("{s}");
    }
    println!("wrote {}/sweeps/{{heads,ffns{}}}.csv and inflection.csv", folder.root.display(), if cfg.combined { ",combined" } else { "" });
    Ok(())
}
