//! `headroom prune`: the paper's pruning experiments (spec 3 and 5) as one resumable,
//! shardable run: importance per (task, shots), rankings, head / FFN / combined sweeps, the
//! FFN oracle, tidy CSVs and inflection points, all in one run folder.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use clap::Args;
use headroom::compare::spearman;
use headroom::eval::{evaluate_prepared, prepare, selected_docs, EvalConfig, ScoreOptions};
use headroom::importance::{self, AbsMode, ImportanceOptions, ImportanceSums, Normalize};
use headroom::io::write_json;
use headroom::model::Mask;
use headroom::prune::{self, EvalPoint, RankingSource, SweepRow, SweepUnit};
use headroom::runs::{Manifest, ModelId, RunFolder, Shard, UnitKey};
use headroom::tasks::{self, prompt::ImportanceOptions as PromptOptions, Task};
use headroom::tokenizer::Tokenizer;
use indicatif::{ProgressBar, ProgressStyle};

use super::eval::TaskSource;

#[derive(Args)]
pub struct PruneArgs {
    /// A Hugging Face folder, a .gguf file, or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    /// Tasks (see `headroom tasks`), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
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

/// Importance of one (task, shots), as stored in the run folder.
fn importance_key(task: &str, k: usize, a: &PruneArgs) -> UnitKey {
    UnitKey::new("importance", serde_json::json!({"task": task, "shots": k, "docs": a.importance_docs, "seed": a.seed, "abs_mode": "per_token"}))
}

pub fn run(args: PruneArgs, dev: &Device) -> Result<()> {
    if args.shots.is_empty() || args.heads.is_empty() {
        bail!("--shots and --heads need at least one value");
    }
    let shard = Shard::from_flag_or_env(args.shard.as_deref())?;
    let (path, model) = super::load_model(&args.model, dev)?;
    let tok = Tokenizer::for_model(&path)?;
    let cache = headroom::assets::cache_dir()?;
    let rankings: Vec<RankingSource> = args.ranking.iter().map(|r| RankingSource::parse(r)).collect::<Result<_>>()?;
    let manifest = Manifest {
        tool: concat!("headroom ", env!("CARGO_PKG_VERSION")).into(),
        model: ModelId::of(&path, Some(&cache))?,
        data: headroom::assets::Asset::ALL.iter().map(|a| a.spec().requirement()).collect(),
        options: serde_json::json!({
            "tasks": args.tasks, "shots": args.shots, "limit": args.limit, "importance_docs": args.importance_docs,
            "seed": args.seed, "max_length": args.max_length, "split": format!("{:?}", args.source.split),
            "pool_fraction": args.source.pool_fraction, "split_seed": args.source.split_seed,
            "data": args.source.data, "train": args.source.train,
        }),
    };
    let folder = RunFolder::open(&args.out, manifest)?;
    eprintln!("run folder {} (shard {}/{})", args.out.display(), shard.index, shard.count);
    let need_pool = true; // importance always needs the pool
    let mut task_list: Vec<Task> = Vec::new();
    for name in &args.tasks {
        task_list.push(tasks::load(name, &args.source.options(need_pool)?)?);
    }
    let (l_n, h_n) = (model.n_layers(), model.n_heads());

    // ---- 1. importance per (task, shots): sharded units ----
    let pairs: Vec<(usize, usize)> = (0..task_list.len()).flat_map(|t| args.shots.iter().map(move |&k| (t, k))).collect();
    let max_len = args.max_length.map_or(model.info.context_length, |m| m.min(model.info.context_length));
    let mut computed = 0;
    for (i, &(t, k)) in pairs.iter().enumerate() {
        if !shard.takes(i) {
            continue;
        }
        let task = &task_list[t];
        let key = importance_key(&task.name, k, &args);
        let sums: ImportanceSums = folder.get_or_compute(&key, &mut computed, || {
            let prompts = tasks::prompt::importance_prompts(
                task,
                &PromptOptions { shots: k, max_docs: args.importance_docs, seed: args.seed, leading_space: false, exclude_query: false },
            )?;
            let (tp, truncated) = importance::tokenize_prompts(&tok, &prompts, max_len)?;
            if truncated > 0 {
                eprintln!("  {} {k}-shot: {truncated} importance prompts truncated on the left", task.name);
            }
            let bar = bar(tp.len(), &format!("importance {} {k}-shot", task.name));
            let opts = ImportanceOptions { abs_mode: AbsMode::PerToken, batch_size: args.importance_batch, mask: None, keep_per_example: false };
            let (sums, _) = importance::accumulate(&model, &tp, &opts, &mut |d, _| bar.set_position(d as u64))?;
            bar.finish_and_clear();
            Ok(sums)
        })?;
        let scores = sums.scores(Normalize::Authors);
        write_json(
            &args.out.join("importance").join(format!("{}.{k}shot.json", task.name)),
            &serde_json::json!({"task": task.name, "shots": k, "heads": scores.heads, "ffns": scores.ffns, "sums": sums,
                "mean_loss": sums.mean_loss(), "examples": sums.examples, "normalize": "authors", "abs_mode": "per_token",
                "pool": task.split.pool_source, "model": model.info}),
        )?;
    }
    let mut imp: HashMap<(String, usize), ImportanceSums> = HashMap::new();
    for &(t, k) in &pairs {
        if let Some(s) = folder.load::<ImportanceSums>(&importance_key(&task_list[t].name, k, &args))? {
            imp.insert((task_list[t].name.clone(), k), s);
        }
    }
    if imp.len() < pairs.len() {
        println!(
            "importance: {computed} computed now, {}/{} present; the sweeps need all of them: merge the shards (`headroom merge`) and run again",
            imp.len(),
            pairs.len()
        );
        return Ok(());
    }

    // ---- rankings ----
    let head_scores = |task: &str, k: usize| -> Result<Vec<f64>> {
        let s = imp.get(&(task.to_string(), k)).ok_or_else(|| anyhow!("task {task} is not part of this run (add it to --tasks)"))?;
        Ok(prune::flatten(&s.scores(Normalize::Authors).heads))
    };
    let aggregate = |k: usize| -> Result<Vec<f64>> {
        // The authors' aggregate: the element-wise mean of the per-task matrices.
        let mut acc = vec![0.0; l_n * h_n];
        for t in &task_list {
            head_scores(&t.name, k)?.iter().zip(acc.iter_mut()).for_each(|(x, a)| *a += x / task_list.len() as f64);
        }
        Ok(acc)
    };
    let head_ranking = |label: &str, task: &str, k: usize| -> Result<Vec<usize>> {
        Ok(match RankingSource::parse(label)? {
            RankingSource::Own => prune::ascending_ranking(&head_scores(task, k)?),
            RankingSource::Aggregate => prune::ascending_ranking(&aggregate(k)?),
            RankingSource::Task(t) => prune::ascending_ranking(&head_scores(&t, k)?),
            RankingSource::Random(seed) => prune::random_ranking(l_n * h_n, seed),
            RankingSource::File(p) => {
                let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).with_context(|| format!("cannot read {p}"))?)
                    .map_err(|e| anyhow!("{p}: {e}"))?;
                let heads: Vec<Vec<f64>> = serde_json::from_value(v["heads"].clone()).map_err(|e| anyhow!("{p}: `heads` should be [[score]...]: {e}"))?;
                prune::ascending_ranking(&prune::flatten(&heads))
            }
        })
    };
    let grad_ffn_order = |task: &str, k: usize| -> Result<Vec<usize>> {
        let s = imp.get(&(task.to_string(), k)).ok_or_else(|| anyhow!("no importance for {task}"))?;
        Ok(prune::ascending_ranking(&s.scores(Normalize::Authors).ffns))
    };

    // ---- evaluation, prepared once per (task, shots) on demand ----
    let mut prepared: HashMap<(usize, usize), (EvalConfig, Vec<tasks::prompt::Prompt>, Vec<headroom::eval::Encoded>)> = HashMap::new();
    let task_index: HashMap<String, usize> = task_list.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let mut eval_point = |u: &SweepUnit, mask: &Mask| -> Result<EvalPoint> {
        let t = *task_index.get(&u.task).ok_or_else(|| anyhow!("unknown task {}", u.task))?;
        let task = &task_list[t];
        if !prepared.contains_key(&(t, u.shots)) {
            let cfg = EvalConfig {
                shots: u.shots,
                limit: args.limit,
                seed: args.seed,
                score: ScoreOptions { batch_size: args.batch_size, ..ScoreOptions::default() },
                max_length: args.max_length,
                ..EvalConfig::default()
            };
            let docs = selected_docs(task, &cfg);
            let (p, e) = prepare(task, &docs, &cfg, &tok, &model)?;
            prepared.insert((t, u.shots), (cfg, p, e));
        }
        let (cfg, p, e) = &prepared[&(t, u.shots)];
        let bar = bar(p.len(), &format!("{} {}-shot {} h{}% f{}%", u.task, u.shots, u.ranking, u.heads_pct, u.ffns_pct));
        let out = evaluate_prepared(&model, task, cfg, p, e, Some(mask), &mut |d| bar.inc(d as u64))?;
        bar.finish_and_clear();
        Ok(out.summary.point())
    };

    // ---- 2. FFN oracle (optional): base + one evaluation per FFN removed ----
    let mut oracle_orders: HashMap<(String, usize), Vec<usize>> = HashMap::new();
    if args.ffn_oracle {
        let mut units = Vec::new();
        for t in &task_list {
            for &k in &args.shots {
                units.push(SweepUnit { task: t.name.clone(), shots: k, ranking: "none".into(), heads_pct: 0, ffns_pct: 0 });
                for l in 0..l_n {
                    units.push(SweepUnit { task: t.name.clone(), shots: k, ranking: format!("ffn_oracle:{l}"), heads_pct: 0, ffns_pct: 0 });
                }
            }
        }
        let mut mask_for = |u: &SweepUnit| -> Result<Mask> {
            let mut m = Mask::ones(l_n, h_n);
            if let Some(l) = u.ranking.strip_prefix("ffn_oracle:") {
                m.ffns[l.parse::<usize>()?] = 0.0;
            }
            Ok(m)
        };
        let out = prune::run_sweep(&folder, &units, shard, &mut mask_for, &mut eval_point, &mut |_, _| {})?;
        let Some(rows) = out.rows else {
            println!("FFN oracle: this shard's units are done; merge the shards and run again for the sweeps");
            return Ok(());
        };
        for chunk in rows.chunks(l_n + 1) {
            let base = chunk[0].point.value;
            let without: Vec<f64> = chunk[1..].iter().map(|r| r.point.value).collect();
            let (diffs, order) = prune::ffn_oracle(base, &without);
            let (task, k) = (chunk[0].unit.task.clone(), chunk[0].unit.shots);
            let grad = imp[&(task.clone(), k)].scores(Normalize::Authors).ffns;
            let rho = spearman(&grad, &diffs).ok();
            write_json(
                &args.out.join("ffn_oracle").join(format!("{task}.{k}shot.json")),
                &serde_json::json!({"task": task, "shots": k, "base": base, "without": without, "diffs": diffs, "order": order,
                    "gradient_srcc": rho.as_ref().map(|r| r.rho), "gradient_srcc_p": rho.as_ref().map(|r| r.p_value),
                    "note": "diffs are percentage points on the evaluation split: this oracle sees the data that pruned accuracy is reported on, as the authors' did"}),
            )?;
            oracle_orders.insert((task, k), order);
        }
    }

    // ---- 3. sweeps ----
    let mut units: Vec<SweepUnit> = Vec::new();
    let mut push = |u: SweepUnit| {
        let u = if u.heads_pct == 0 && u.ffns_pct == 0 { SweepUnit { ranking: "none".into(), ..u } } else { u };
        if !units.contains(&u) {
            units.push(u);
        }
    };
    let ffn_sources: Vec<&str> = if args.ffn_oracle { vec!["gradient", "oracle"] } else { vec!["gradient"] };
    for t in &task_list {
        for &k in &args.shots {
            for r in &rankings {
                for &p in &args.heads {
                    push(SweepUnit { task: t.name.clone(), shots: k, ranking: r.label(), heads_pct: p, ffns_pct: 0 });
                }
            }
            for src in &ffn_sources {
                for &p in &args.ffns {
                    push(SweepUnit { task: t.name.clone(), shots: k, ranking: src.to_string(), heads_pct: 0, ffns_pct: p });
                }
                if args.combined {
                    for hp in prune::levels(70, 10) {
                        for fp in prune::levels(50, 10) {
                            push(SweepUnit { task: t.name.clone(), shots: k, ranking: format!("own+{src}"), heads_pct: hp, ffns_pct: fp });
                        }
                    }
                }
            }
        }
    }
    // A unit's mask: heads by the head ranking (the label before '+', or the whole label when
    // only heads are pruned), FFNs by the gradient or oracle order.
    let mut mask_for = |u: &SweepUnit| -> Result<Mask> {
        let (head_label, ffn_label) = match u.ranking.split_once('+') {
            Some((h, f)) => (h.to_string(), f.to_string()),
            None if u.ffns_pct > 0 => ("own".into(), u.ranking.clone()),
            None => (u.ranking.clone(), "gradient".into()),
        };
        let mut m = Mask::ones(l_n, h_n);
        if u.heads_pct > 0 {
            m = prune::head_mask(&head_ranking(&head_label, &u.task, u.shots)?, l_n, h_n, u.heads_pct)?;
        }
        if u.ffns_pct > 0 {
            let order = match ffn_label.as_str() {
                "gradient" => grad_ffn_order(&u.task, u.shots)?,
                "oracle" => oracle_orders.get(&(u.task.clone(), u.shots)).cloned().ok_or_else(|| anyhow!("no FFN oracle for {}", u.task))?,
                other => bail!("unknown FFN ranking {other}"),
            };
            m = prune::union(&m, &prune::ffn_mask(&order, l_n, h_n, u.ffns_pct)?);
        }
        Ok(m)
    };
    let total = units.iter().enumerate().filter(|(i, _)| shard.takes(*i)).count();
    let overall = bar(total, "sweep units");
    let out = prune::run_sweep(&folder, &units, shard, &mut mask_for, &mut eval_point, &mut |d, _| overall.set_position(d as u64))?;
    overall.finish_and_clear();
    println!("sweeps: {} units evaluated now, {} reused", out.computed, out.reused);
    let Some(rows) = out.rows else {
        println!("this shard is done; merge the shard folders (`headroom merge`) and run again to write the tables");
        return Ok(());
    };
    write_outputs(&folder, &rows, &args)?;
    Ok(())
}

fn bar(n: usize, what: &str) -> ProgressBar {
    let b = ProgressBar::new(n as u64);
    b.set_style(
        ProgressStyle::with_template("  {prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(what.to_string());
    b
}

/// The tidy CSVs, inflection points (per task and for the average over tasks), and the list of
/// deviations from the paper's setup.
fn write_outputs(folder: &RunFolder, rows: &[SweepRow], args: &PruneArgs) -> Result<()> {
    // The 0% point belongs to every curve of its task and shot count.
    let base = |task: &str, k: usize| rows.iter().find(|r| r.unit.task == task && r.unit.shots == k && r.unit.heads_pct == 0 && r.unit.ffns_pct == 0);
    let mut heads = Vec::new();
    let mut ffns = Vec::new();
    let mut combined = Vec::new();
    for r in rows {
        let u = &r.unit;
        if u.ranking.contains('+') {
            combined.push(r.clone());
        } else if u.ffns_pct > 0 || ["gradient", "oracle"].contains(&u.ranking.as_str()) {
            ffns.push(r.clone());
        } else if u.heads_pct > 0 {
            heads.push(r.clone());
        }
    }
    // Give each curve its own copy of the 0% point, labelled with the curve's ranking.
    let with_base = |set: &mut Vec<SweepRow>| {
        let mut labels: Vec<(String, usize, String)> = set.iter().map(|r| (r.unit.task.clone(), r.unit.shots, r.unit.ranking.clone())).collect();
        labels.dedup();
        labels.sort();
        labels.dedup();
        for (task, k, ranking) in labels {
            if let Some(b) = base(&task, k) {
                if !set.iter().any(|r| r.unit.task == task && r.unit.shots == k && r.unit.ranking == ranking && r.unit.heads_pct == 0 && r.unit.ffns_pct == 0) {
                    set.push(SweepRow { unit: SweepUnit { ranking: ranking.clone(), ..b.unit.clone() }, point: b.point.clone() });
                }
            }
        }
        set.sort_by(|a, b| {
            (&a.unit.task, a.unit.shots, &a.unit.ranking, a.unit.heads_pct, a.unit.ffns_pct)
                .cmp(&(&b.unit.task, b.unit.shots, &b.unit.ranking, b.unit.heads_pct, b.unit.ffns_pct))
        });
    };
    with_base(&mut heads);
    with_base(&mut ffns);
    with_base(&mut combined);
    folder.write("sweeps/heads.csv", prune::tidy_csv(&heads).as_bytes())?;
    folder.write("sweeps/ffns.csv", prune::tidy_csv(&ffns).as_bytes())?;
    if !combined.is_empty() {
        folder.write("sweeps/combined.csv", prune::tidy_csv(&combined).as_bytes())?;
    }
    // Inflection points: per curve, and for the average over tasks of each (shots, ranking).
    let mut infl = String::from("task,shots,ranking,kind,inflection_pct,tolerance,base_value\n");
    let mut summary = Vec::new();
    for (kind, set) in [("heads", &heads), ("ffns", &ffns)] {
        let mut curves: Vec<(String, usize, String)> = set.iter().map(|r| (r.unit.task.clone(), r.unit.shots, r.unit.ranking.clone())).collect();
        curves.sort();
        curves.dedup();
        let pct = |r: &SweepRow| if kind == "heads" { r.unit.heads_pct } else { r.unit.ffns_pct };
        let mut by_avg: HashMap<(usize, String), Vec<(u32, f64)>> = HashMap::new();
        for (task, k, ranking) in &curves {
            let pts: Vec<(u32, f64)> = set.iter().filter(|r| &r.unit.task == task && r.unit.shots == *k && &r.unit.ranking == ranking).map(|r| (pct(r), r.point.value)).collect();
            for p in &pts {
                by_avg.entry((*k, ranking.clone())).or_default().push(*p);
            }
            if let Some(ip) = prune::inflection(&pts, args.tolerance) {
                let b = pts.iter().find(|p| p.0 == 0).map_or(f64::NAN, |p| p.1);
                infl.push_str(&format!("{task},{k},{ranking},{kind},{ip},{},{b:.6}\n", args.tolerance));
            }
        }
        let mut avg_keys: Vec<&(usize, String)> = by_avg.keys().collect();
        avg_keys.sort();
        for key in avg_keys {
            let pts = &by_avg[key];
            let mut levels: Vec<u32> = pts.iter().map(|p| p.0).collect();
            levels.sort();
            levels.dedup();
            let avg: Vec<(u32, f64)> = levels
                .iter()
                .map(|&l| {
                    let v: Vec<f64> = pts.iter().filter(|p| p.0 == l).map(|p| p.1).collect();
                    (l, v.iter().sum::<f64>() / v.len() as f64)
                })
                .collect();
            if let Some(ip) = prune::inflection(&avg, args.tolerance) {
                let b = avg.iter().find(|p| p.0 == 0).map_or(f64::NAN, |p| p.1);
                infl.push_str(&format!("average,{},{},{kind},{ip},{},{b:.6}\n", key.0, key.1, args.tolerance));
                summary.push(format!("{kind} ({} ranking, {}-shot): average inflection at {ip}% (base {b:.3})", key.1, key.0));
            }
        }
    }
    folder.write("sweeps/inflection.csv", infl.as_bytes())?;
    let mut deviations = vec![
        "Demonstrations are sampled with headroom's seeded generator, not Python's random module seeded 1234: the specific demos differ from the authors'.".to_string(),
    ];
    if args.limit.is_some() {
        deviations.push(format!("Evaluation uses the first {} documents of a seeded shuffle of the evaluation split, not all of it.", args.limit.unwrap_or(0)));
    }
    if args.importance_docs != 2500 {
        deviations.push(format!("Importance uses the first {} pool documents (the authors: 2500).", args.importance_docs));
    }
    write_json(&folder.root.join("deviations.json"), &deviations)?;
    for s in &summary {
        println!("{s}");
    }
    println!("wrote {}/sweeps/{{heads,ffns{}}}.csv and inflection.csv", folder.root.display(), if args.combined { ",combined" } else { "" });
    Ok(())
}
