//! `headroom induction-ablate`: task accuracy with the top-k induction heads removed vs k random
//! heads (several seeded sets), the experiment the paper never ran (spec 7.5).

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use headroom::eval::{evaluate_prepared, prepare, selected_docs, EvalConfig, ScoreOptions};
use headroom::induction::ablation::{rank_induction_heads, run_ablation, AblationPlan, Target};
use headroom::io::{write_atomic, write_json};
use headroom::tokenizer::Tokenizer;

use super::eval::TaskSource;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Rank {
    Prefix,
    Copying,
    Both,
}

#[derive(Args)]
pub struct InductionAblateArgs {
    /// A Hugging Face folder, a .gguf file, a hub id `org/name[@revision][:FILE.gguf]` already in
    /// the local Hugging Face cache (see docs/models.md), or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    /// The `induction.json` written by `headroom induction` for this model.
    #[arg(long)]
    induction: PathBuf,
    /// Tasks, comma-separated (`--task` is an alias).
    #[arg(long = "tasks", alias = "task", value_delimiter = ',', required = true)]
    task: Vec<String>,
    /// Shot count.
    #[arg(long, default_value_t = 0)]
    shots: usize,
    /// Which induction score ranks the heads.
    #[arg(long, value_enum, default_value = "prefix")]
    target: Rank,
    /// Numbers of heads to remove.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    ks: Vec<usize>,
    /// Random head sets per k (mean and spread).
    #[arg(long, default_value_t = 5)]
    random_sets: usize,
    /// Seeds the random head sets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate on the first N documents of the seeded evaluation order.
    #[arg(long)]
    limit: Option<usize>,
    /// Seeds the evaluation order and demonstrations.
    #[arg(long, default_value_t = 1234)]
    eval_seed: u64,
    #[command(flatten)]
    source: TaskSource,
    /// Output folder: ablation.json and ablation.csv.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: InductionAblateArgs, dev: &super::Runtime) -> Result<()> {
    let text = std::fs::read_to_string(&args.induction).with_context(|| format!("cannot read {}", args.induction.display()))?;
    let ind: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", args.induction.display()))?;
    let matrix = |key: &str| -> Result<Vec<Vec<f64>>> {
        serde_json::from_value(ind[key]["mean"].clone()).map_err(|e| anyhow!("{}: `{key}.mean` should be [[score]...]: {e}", args.induction.display()))
    };
    let (prefix, copying) = (matrix("prefix")?, matrix("copying")?);
    let target = match args.target {
        Rank::Prefix => Target::Prefix,
        Rank::Copying => Target::Copying,
        Rank::Both => Target::Both,
    };
    args.source.check(&args.task)?;
    let (path, model) = super::load_model(&args.model, dev)?;
    let tok = Tokenizer::for_model(&path)?;
    let (l_n, h_n) = (model.n_layers(), model.n_heads());
    let ranking = rank_induction_heads(&prefix, &copying, target)?;
    let plan = AblationPlan { ks: args.ks.clone(), random_sets: args.random_sets, seed: args.seed };
    let mut results = Vec::new();
    let mut csv: Vec<Vec<String>> = Vec::new();
    for i in 0..args.task.len() {
        let task = args.source.load(&args.task, i, args.shots > 0)?;
        let cfg = EvalConfig {
            shots: args.shots,
            limit: args.limit,
            seed: args.eval_seed,
            score: ScoreOptions::default(),
            ..EvalConfig::default()
        };
        let docs = selected_docs(&task, &cfg);
        let (prompts, encoded) = prepare(&task, &docs, &cfg, &tok, &model)?;
        let total = 1 + args.ks.len() * (1 + args.random_sets);
        let bar = headroom::progress::bar(total, &format!("{} {}-shot", task.name, args.shots));
        let mut metric = String::new();
        let res = run_ablation(l_n, h_n, &ranking, &plan, |mask| {
            let out = evaluate_prepared(&model, &task, &cfg, &prompts, &encoded, Some(mask), &mut |_| {})?;
            bar.inc(1);
            metric = out.summary.metric.clone();
            Ok(out.summary.value)
        })?;
        bar.finish_and_clear();
        let tname = format!("{target:?}").to_lowercase();
        let row = |k: usize, kind: &str, set: usize, v: f64| vec![task.name.clone(), args.shots.to_string(), tname.clone(), k.to_string(), kind.to_string(), set.to_string(), format!("{v:.6}")];
        csv.push(row(0, "baseline", 0, res.baseline));
        println!("{} {}-shot ({metric}): baseline {:.3}", task.name, args.shots, res.baseline);
        for p in &res.points {
            csv.push(row(p.k, "top", 0, p.top_accuracy));
            for (i, v) in p.random_accuracies.iter().enumerate() {
                csv.push(row(p.k, "random", i, *v));
            }
            println!(
                "  k={:>3}: top-k {:.3}   random {:.3} +- {:.3} (min {:.3}, max {:.3})",
                p.k, p.top_accuracy, p.random.mean, p.random.std, p.random.min, p.random.max
            );
        }
        results.push(serde_json::json!({"task": task.name, "split": task.split, "shots": args.shots, "metric": metric, "n": docs.len(), "result": res}));
    }
    write_json(&args.out.join("ablation.json"), &serde_json::json!({"induction": args.induction, "target": format!("{target:?}"), "compute_dtype": model.info.compute_dtype, "weights": model.info.weights, "results": results}))?;
    write_atomic(&args.out.join("ablation.csv"), &headroom::io::csv_bytes(&["task", "shots", "target", "k", "kind", "set", "value"], csv)?)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
