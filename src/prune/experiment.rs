//! The paper's pruning experiment (spec 3 and 5) as one resumable, shardable run into a
//! [`RunFolder`]: importance per (task, shots), rankings, head / FFN / combined sweeps, the FFN
//! oracle, tidy CSVs and inflection points.
//!
//! Plain data in ([`PruneConfig`], loaded tasks, a model), plain data out ([`PruneOutcome`]);
//! the CLI (`headroom prune`) only parses flags, opens the folder and prints the outcome.
//!
//! Stages, each a list of hashed units (so a rerun skips finished work and `--shard` splits it):
//! 1. importance of every (task, shots) on the full model;
//! 2. the FFN oracle (optional): the unpruned evaluation and one evaluation per FFN removed;
//! 3. the sweeps: every (task, shots, ranking, level) evaluated under its mask;
//! 4. recompute (optional): per (task, shots), a chain of re-scorings on the pruned model, each
//!    extending the previous level's mask; a chain is sequential, so a shard takes whole chains.
//!
//! Files beside `units/` (all derived from units, so rewritten on every complete run):
//! `importance/<task>.<k>shot.json`, `rankings/aggregate.<k>shot.json` (`{shots, tasks, heads
//! [L][H], ffns [L]}`), `ffn_oracle/<task>.<k>shot.json`, `eval/<task>.<k>shot.json` (the
//! unpruned model's summary, as `headroom eval` writes it), `sweeps/{heads,ffns,combined}.csv`,
//! `sweeps/inflection.csv`, `recompute/<task>.<k>shot.<p>.mask.json` (a `--mask` file for
//! `headroom eval`), `deviations.json`.
//!
//! A stage needs every unit of the previous one (rankings need all importance, the oracle's FFN
//! order needs all its evaluations), so a shard stops after its share of a stage that other
//! shards have not finished; `headroom merge` then joins the folders and a rerun continues.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::{EvalPoint, RankingSource, SweepRow, SweepUnit};
use crate::compare::spearman;
use crate::eval::{evaluate_prepared, prepare, selected_docs, Encoded, EvalConfig, EvalOutput, ScoreOptions};
use crate::importance::{self, AbsMode, ImportanceOptions, ImportanceSums, Normalize};
use crate::artifacts::InflectionRow;
use crate::io::write_json;
use crate::model::{Mask, Model};
use crate::progress::bar;
use crate::runs::{RunFolder, Shard, UnitKey};
use crate::tasks::prompt::{ImportanceOptions as PromptOptions, Prompt};
use crate::tasks::{self, Task};
use crate::tokenizer::Tokenizer;

/// Everything a pruning run depends on besides the model, the tasks and the run folder.
/// (`headroom prune` flags of the same names; defaults are the CLI's.)
#[derive(Clone, Debug, Serialize)]
pub struct PruneConfig {
    /// Shot counts.
    pub shots: Vec<usize>,
    /// Evaluate on the first N documents of the seeded evaluation order (None: all).
    pub limit: Option<usize>,
    /// Pool documents scored for importance (the authors: the first 2500).
    pub importance_docs: usize,
    /// Head rankings to prune with.
    pub rankings: Vec<RankingSource>,
    /// Head pruning levels in percent.
    pub heads: Vec<u32>,
    /// FFN pruning levels in percent (empty: no FFN sweep).
    pub ffns: Vec<u32>,
    /// Also the combined grid heads {0..70} x FFNs {0..50} (step 10).
    pub combined: bool,
    /// Compute the FFN oracle (1 + L evaluations per task and shot count) and prune FFNs by it.
    pub ffn_oracle: bool,
    /// Inflection tolerance: largest level within this much (absolute) of the unpruned value.
    pub tolerance: f64,
    /// Importance: examples per forward/backward.
    pub importance_batch: usize,
    /// Evaluation: examples per batch.
    pub batch_size: usize,
    /// Seeds the evaluation order, demonstrations and importance prompts.
    pub seed: u64,
    /// Truncate inputs to this many tokens (None: the model's context).
    pub max_length: Option<usize>,
    /// Out-of-distribution tasks (spec 5.5, e.g. LAMBADA): scored and pruned like the others
    /// (own ranking included) but left out of the `aggregate` ranking, so that pruning them
    /// with the aggregate tests how the in-distribution tasks' ranking transfers. Names of tasks
    /// passed to [`run`].
    pub ood_tasks: Vec<String>,
    /// Also prune heads the iterative way (Michel et al.; the paper did not, spec 5.1): after
    /// each head level, re-score importance on the pruned model and extend the mask by the
    /// lowest-scored remaining heads. Sweep rows get ranking `recompute`; masks are written to
    /// `recompute/<task>.<k>shot.<p>.mask.json`.
    pub recompute: bool,
}

impl Default for PruneConfig {
    fn default() -> Self {
        Self {
            shots: vec![0, 1],
            limit: None,
            importance_docs: 2500,
            rankings: vec![RankingSource::Own],
            heads: super::levels(90, 10),
            ffns: super::levels(90, 10),
            combined: false,
            ffn_oracle: false,
            tolerance: 0.01,
            importance_batch: 8,
            batch_size: 16,
            seed: 1234,
            max_length: None,
            ood_tasks: vec![],
            recompute: false,
        }
    }
}

impl PruneConfig {
    /// Refuses configurations that cannot run (before any work is done).
    pub fn validate(&self) -> Result<()> {
        if self.shots.is_empty() || self.heads.is_empty() {
            bail!("--shots and --heads need at least one value");
        }
        if let Some(p) = self.heads.iter().chain(&self.ffns).find(|&&p| p > 100) {
            bail!("pruning level {p}% is above 100%");
        }
        if self.importance_batch == 0 || self.batch_size == 0 {
            bail!("batch sizes must be at least 1");
        }
        Ok(())
    }

    /// The options recorded in the manifest: those that change what a unit means without being
    /// part of its key. (Rankings and levels are in every eval unit's key through its mask, so a
    /// rerun may add levels or rankings to an existing folder.) `tasks` are the in-distribution
    /// task names; `ood_tasks` is recorded only when set, so folders of earlier runs still open.
    pub fn manifest_options(&self, tasks: &[String]) -> serde_json::Value {
        let mut o = serde_json::json!({
            "tasks": tasks, "shots": self.shots, "limit": self.limit, "importance_docs": self.importance_docs,
            "seed": self.seed, "max_length": self.max_length,
        });
        if !self.ood_tasks.is_empty() {
            o["ood_tasks"] = serde_json::json!(self.ood_tasks);
        }
        o
    }
}

/// Where a run stopped before writing its tables: the stage whose units other shards still owe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Importance,
    FfnOracle,
    Sweeps,
}

/// Units of one stage: evaluated or scored now, and found finished in the folder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub computed: usize,
    pub reused: usize,
}

/// What [`run`] did.
#[derive(Clone, Debug, Default)]
pub struct PruneOutcome {
    /// Importance units (one per task and shot count) of this shard.
    pub importance: Counts,
    /// Importance units present in the folder (all shards) and needed.
    pub importance_present: usize,
    pub importance_needed: usize,
    /// FFN oracle evaluations of this shard (None: no oracle, or not reached).
    pub oracle: Option<Counts>,
    /// Sweep evaluations of this shard (None: not reached).
    pub sweeps: Option<Counts>,
    /// Recompute re-scorings (importance under a level's mask) and evaluations of this shard's
    /// chains (None: no recompute, or not reached).
    pub recompute_scoring: Option<Counts>,
    pub recompute_evals: Option<Counts>,
    /// Baseline summaries (`eval/<task>.<k>shot.json`) found as units, or evaluated again
    /// because the folder had none (None: tables not reached).
    pub baselines: Option<Counts>,
    /// The stage other shards still owe units of (None: complete, tables written).
    pub stopped_at: Option<Stage>,
    /// Whether the CSVs and inflection points were written.
    pub tables_written: bool,
    /// One line per average inflection point, e.g. "heads (own ranking, 0-shot): average
    /// inflection at 60% (base 0.712)".
    pub inflection_summary: Vec<String>,
}

/// Importance of one (task, shots), as stored in the run folder.
pub fn importance_key(task: &str, k: usize, cfg: &PruneConfig) -> UnitKey {
    UnitKey::new("importance", serde_json::json!({"task": task, "shots": k, "docs": cfg.importance_docs, "seed": cfg.seed, "abs_mode": "per_token"}))
}

/// Runs this shard's share of the experiment into `folder` (whose manifest the caller wrote),
/// resuming from finished units, and writes the tables when every unit of every shard is done.
pub fn run(model: &Model, tok: &Tokenizer, tasks: &[Task], cfg: &PruneConfig, folder: &RunFolder, shard: Shard) -> Result<PruneOutcome> {
    cfg.validate()?;
    if tasks.is_empty() {
        bail!("a pruning run needs at least one task");
    }
    for (i, t) in tasks.iter().enumerate() {
        if tasks[..i].iter().any(|o| o.name == t.name) {
            bail!("task {} is listed twice", t.name);
        }
    }
    if let Some(o) = cfg.ood_tasks.iter().find(|o| !tasks.iter().any(|t| &t.name == *o)) {
        bail!("OOD task {o} is not one of the run's tasks");
    }
    super::check_eval_unit_layout(folder)?;
    let mut outcome = PruneOutcome::default();
    let (l_n, h_n) = (model.n_layers(), model.n_heads());
    let eval_options = |u: &SweepUnit| unit_eval_options(cfg, tasks.iter().find(|t| t.name == u.task));

    // ---- 1. importance per (task, shots): sharded units ----
    let pairs: Vec<(usize, usize)> = (0..tasks.len()).flat_map(|t| cfg.shots.iter().map(move |&k| (t, k))).collect();
    for (i, &(t, k)) in pairs.iter().enumerate() {
        if !shard.takes(i) {
            continue;
        }
        let task = &tasks[t];
        let mut computed = 0;
        let sums: ImportanceSums =
            folder.get_or_compute(&importance_key(&task.name, k, cfg), &mut computed, || importance_sums(model, tok, task, k, cfg, None))?;
        outcome.importance.computed += computed;
        outcome.importance.reused += 1 - computed;
        let scores = sums.scores(Normalize::Authors);
        crate::artifacts::ImportanceFile {
            schema_version: crate::artifacts::SCHEMA_VERSION,
            task: Some(task.name.clone()),
            shots: Some(k),
            normalize: scores.normalize,
            abs_mode: sums.abs_mode,
            heads: scores.heads,
            ffns: scores.ffns,
            examples: sums.examples,
            mean_loss: sums.mean_loss(),
            pool: Some(serde_json::to_value(&task.split.pool_source)?),
            model: serde_json::to_value(&model.info)?,
            sums,
            prompts: None,
            options: None,
            run: None,
        }
        .write(&folder.root.join("importance").join(format!("{}.{k}shot.json", task.name)))?;
    }
    let mut imp: HashMap<(String, usize), ImportanceSums> = HashMap::new();
    for &(t, k) in &pairs {
        if let Some(s) = folder.load::<ImportanceSums>(&importance_key(&tasks[t].name, k, cfg))? {
            imp.insert((tasks[t].name.clone(), k), s);
        }
    }
    outcome.importance_present = imp.len();
    outcome.importance_needed = pairs.len();
    if imp.len() < pairs.len() {
        outcome.stopped_at = Some(Stage::Importance);
        return Ok(outcome);
    }
    let in_dist: Vec<&Task> = tasks.iter().filter(|t| !cfg.ood_tasks.contains(&t.name)).collect();
    let ranks = Rankings { imp: &imp, in_dist: &in_dist, l_n, h_n };
    // The aggregate matrices, for the report and `headroom induction --importance`.
    if !in_dist.is_empty() {
        for &k in &cfg.shots {
            let (heads, ffns) = ranks.aggregate(k)?;
            crate::artifacts::AggregateFile {
                schema_version: crate::artifacts::SCHEMA_VERSION,
                shots: k,
                tasks: in_dist.iter().map(|t| t.name.clone()).collect(),
                heads: heads.chunks(h_n).map(<[f64]>::to_vec).collect(),
                ffns,
                normalize: Normalize::Authors,
                note: "element-wise mean of the in-distribution tasks' importance matrices (OOD tasks left out)".into(),
            }
            .write(&aggregate_path(&folder.root, k))?;
        }
    }
    let mut evaluator = Evaluator { model, tok, tasks, cfg, folder, prepared: HashMap::new() };

    // ---- 2. FFN oracle (optional): base + one evaluation per FFN removed ----
    let mut oracle_orders: HashMap<(String, usize), Vec<usize>> = HashMap::new();
    if cfg.ffn_oracle {
        let mut units = Vec::new();
        for t in tasks {
            for &k in &cfg.shots {
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
        let out = super::run_sweep(folder, &units, shard, &eval_options, &mut mask_for, &mut |u, m| evaluator.point(u, m), &mut |_, _| {})?;
        outcome.oracle = Some(Counts { computed: out.computed, reused: out.reused });
        let Some(rows) = out.rows else {
            outcome.stopped_at = Some(Stage::FfnOracle);
            return Ok(outcome);
        };
        for chunk in rows.chunks(l_n + 1) {
            let base = chunk[0].point.value;
            let without: Vec<f64> = chunk[1..].iter().map(|r| r.point.value).collect();
            let (diffs, order) = super::ffn_oracle(base, &without);
            let (task, k) = (chunk[0].unit.task.clone(), chunk[0].unit.shots);
            let grad = imp[&(task.clone(), k)].scores(Normalize::Authors).ffns;
            let rho = spearman(&grad, &diffs).ok();
            crate::artifacts::FfnOracleFile {
                schema_version: crate::artifacts::SCHEMA_VERSION,
                task: task.clone(),
                shots: k,
                base,
                without,
                diffs,
                order: order.clone(),
                gradient_srcc: rho.as_ref().map(|r| r.rho),
                gradient_srcc_p: rho.as_ref().map(|r| r.p_value),
                note: "diffs are percentage points on the evaluation split: this oracle sees the data that pruned accuracy is reported on, as the authors' did".into(),
            }
            .write(&folder.root.join("ffn_oracle").join(format!("{task}.{k}shot.json")))?;
            oracle_orders.insert((task, k), order);
        }
    }

    // ---- 3. sweeps ----
    let units = sweep_units(tasks, cfg);
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
            m = super::head_mask(&ranks.head_ranking(&head_label, &u.task, u.shots)?, l_n, h_n, u.heads_pct)?;
        }
        if u.ffns_pct > 0 {
            let order = match ffn_label.as_str() {
                "gradient" => ranks.grad_ffn_order(&u.task, u.shots)?,
                "oracle" => oracle_orders.get(&(u.task.clone(), u.shots)).cloned().ok_or_else(|| anyhow!("no FFN oracle for {}", u.task))?,
                other => bail!("unknown FFN ranking {other}"),
            };
            m = super::union(&m, &super::ffn_mask(&order, l_n, h_n, u.ffns_pct)?);
        }
        Ok(m)
    };
    let total = units.iter().enumerate().filter(|(i, _)| shard.takes(*i)).count();
    let overall = bar(total, "sweep units");
    let out = super::run_sweep(folder, &units, shard, &eval_options, &mut mask_for, &mut |u, m| evaluator.point(u, m), &mut |d, _| overall.set_position(d as u64))?;
    overall.finish_and_clear();
    outcome.sweeps = Some(Counts { computed: out.computed, reused: out.reused });

    // ---- 4. recompute (optional): one sequential chain per (task, shots), whole to one shard ----
    let mut recompute_rows = Some(Vec::new());
    if cfg.recompute {
        let mut levels: Vec<u32> = cfg.heads.iter().copied().filter(|&p| p > 0).collect();
        levels.sort_unstable();
        levels.dedup();
        let (mut scoring, mut evals) = (Counts::default(), Counts::default());
        for (c, &(t, k)) in pairs.iter().enumerate() {
            let task = &tasks[t];
            let owned = shard.takes(c);
            let mut rescore = |m: &Mask| importance_sums(model, tok, task, k, cfg, Some(m.clone()));
            let rescore: Option<Rescore> = if owned { Some(&mut rescore) } else { None };
            let Some(chain) = recompute_masks(folder, (&task.name, k), &levels, &imp[&(task.name.clone(), k)], cfg, rescore, &mut scoring)? else {
                recompute_rows = None; // another shard's chain, not merged in yet
                continue;
            };
            for (p, m) in &chain {
                write_json(
                    &folder.root.join("recompute").join(format!("{}.{k}shot.{p}.mask.json", task.name)),
                    &serde_json::json!({"heads": m.heads, "ffns": m.ffns, "task": task.name, "shots": k, "heads_pct": p,
                        "heads_removed": m.heads_removed(), "note": "recompute: importance re-scored on the model pruned to the previous level"}),
                )?;
            }
            let units: Vec<SweepUnit> =
                chain.iter().map(|(p, _)| SweepUnit { task: task.name.clone(), shots: k, ranking: "recompute".into(), heads_pct: *p, ffns_pct: 0 }).collect();
            let mut mask_for = |u: &SweepUnit| -> Result<Mask> {
                chain.iter().find(|(p, _)| *p == u.heads_pct).map(|(_, m)| m.clone()).ok_or_else(|| anyhow!("no recompute mask at {}%", u.heads_pct))
            };
            let rows = if owned {
                let out = super::run_sweep(folder, &units, Shard::ALL, &eval_options, &mut mask_for, &mut |u, m| evaluator.point(u, m), &mut |_, _| {})?;
                evals.computed += out.computed;
                evals.reused += out.reused;
                out.rows
            } else {
                load_rows(folder, &units, &eval_options, &mut mask_for)?
            };
            match (rows, recompute_rows.as_mut()) {
                (Some(r), Some(all)) => all.extend(r),
                _ => recompute_rows = None,
            }
        }
        outcome.recompute_scoring = Some(scoring);
        outcome.recompute_evals = Some(evals);
    }
    let (Some(mut rows), Some(recompute_rows)) = (out.rows, recompute_rows) else {
        outcome.stopped_at = Some(Stage::Sweeps);
        return Ok(outcome);
    };
    rows.extend(recompute_rows);
    outcome.inflection_summary = write_outputs(folder, &rows, cfg)?;
    outcome.tables_written = true;
    // Every baseline file, also on a resumed or merged run: from its unit, or evaluated once
    // more when the folder predates baseline units (the base eval unit holds only the point).
    let mut baselines = Counts::default();
    for t in tasks {
        for &k in &cfg.shots {
            let summary: serde_json::Value = match folder.load(&baseline_key(&t.name, k, &unit_eval_options(cfg, Some(t))))? {
                Some(v) => {
                    baselines.reused += 1;
                    v
                }
                None => {
                    let u = SweepUnit { task: t.name.clone(), shots: k, ranking: "none".into(), heads_pct: 0, ffns_pct: 0 };
                    baselines.computed += 1;
                    evaluator.baseline(&u, &Mask::ones(l_n, h_n))?.1
                }
            };
            write_json(&folder.root.join("eval").join(format!("{}.{k}shot.json", t.name)), &summary)?;
        }
    }
    outcome.baselines = Some(baselines);
    Ok(outcome)
}

/// The full evaluation summary of a task's unpruned model (what `headroom eval` writes), stored
/// beside the sweep's eval unit of the 0% level, which keeps only the headline point.
/// Keyed like the evaluation units ([`super::eval_key`]), by the evaluation options too.
pub fn baseline_key(task: &str, k: usize, options: &serde_json::Value) -> UnitKey {
    UnitKey::new("eval_summary", serde_json::json!({"task": task, "shots": k, "options": options}))
}

/// What an evaluation's result depends on besides the task, shots and mask (part of every
/// evaluation unit's key): the evaluation options [`Evaluator::evaluate`] passes, and the task's
/// split (which documents are evaluated and where demonstrations come from). Batch sizes are
/// left out: they change the speed, not the result.
fn unit_eval_options(cfg: &PruneConfig, task: Option<&Task>) -> serde_json::Value {
    let defaults = EvalConfig::default();
    serde_json::json!({
        "limit": cfg.limit,
        "seed": cfg.seed,
        "max_length": cfg.max_length,
        "tokenization": format!("{:?}", defaults.tokenization),
        "split": task.map(|t| serde_json::json!({
            "mode": t.split.mode, "eval_source": t.split.eval_source, "pool_source": t.split.pool_source,
            "eval_docs": t.split.eval_docs, "pool_docs": t.split.pool_docs,
            "holdout_seed": t.split.holdout_seed, "pool_fraction": t.split.pool_fraction,
        })),
    })
}

/// The key of a recompute re-scoring: importance of (task, shots) on the model under the mask
/// of the level before `level` (whose hash is `prev_mask`).
pub fn recompute_key(task: &str, k: usize, level: u32, prev_mask: &Mask, cfg: &PruneConfig) -> UnitKey {
    UnitKey::new(
        "recompute_importance",
        serde_json::json!({"task": task, "shots": k, "level": level, "prev_mask": super::mask_hash(prev_mask),
            "docs": cfg.importance_docs, "seed": cfg.seed, "abs_mode": "per_token"}),
    )
}

/// Michel et al.'s iterative head pruning for one (task, shots): for each level p above 0
/// (ascending), score head importance on the model under the previous level's mask and extend that
/// mask by the lowest-scored kept heads to floor(p * N / 100) removed. The first re-scoring
/// with nothing removed is the full model's importance (`base`), so the first mask equals the
/// fixed ranking's. Re-scorings are units: loaded when present, else computed by `rescore` when
/// this process owns the chain; None when a score is missing and `rescore` is None.
/// Returns (level, mask) per level.
fn recompute_masks(
    folder: &RunFolder,
    (task, k): (&str, usize),
    levels: &[u32],
    base: &ImportanceSums,
    cfg: &PruneConfig,
    mut rescore: Option<Rescore>,
    counts: &mut Counts,
) -> Result<Option<Vec<(u32, Mask)>>> {
    let n = base.n_layers * base.n_heads;
    let mut mask = Mask::ones(base.n_layers, base.n_heads);
    let mut chain = Vec::with_capacity(levels.len());
    for &p in levels {
        let sums = if mask.heads_removed() == 0 {
            base.clone()
        } else {
            let key = recompute_key(task, k, p, &mask, cfg);
            match (folder.load::<ImportanceSums>(&key)?, rescore.as_mut()) {
                (Some(s), _) => {
                    counts.reused += 1;
                    s
                }
                (None, Some(f)) => {
                    let s = f(&mask).with_context(|| format!("re-scoring {task} {k}-shot importance for the {p}% level"))?;
                    folder.store(&key, &s)?;
                    counts.computed += 1;
                    s
                }
                (None, None) => return Ok(None),
            }
        };
        mask = super::extend_head_mask(&mask, &super::flatten(&sums.scores(Normalize::Authors).heads), super::n_pruned(p, n))?;
        chain.push((p, mask.clone()));
    }
    Ok(Some(chain))
}

/// Importance of a task at some shot count on the model under a mask.
type Rescore<'a> = &'a mut dyn FnMut(&Mask) -> Result<ImportanceSums>;

/// The rows of finished units (None if any is missing), without evaluating anything.
fn load_rows(
    folder: &RunFolder,
    units: &[SweepUnit],
    eval_options: &dyn Fn(&SweepUnit) -> serde_json::Value,
    mask_for: &mut dyn FnMut(&SweepUnit) -> Result<Mask>,
) -> Result<Option<Vec<SweepRow>>> {
    let mut rows = Vec::with_capacity(units.len());
    for u in units {
        match folder.load::<EvalPoint>(&super::eval_key(&u.task, u.shots, &mask_for(u)?, &eval_options(u)))? {
            Some(point) => rows.push(SweepRow { unit: u.clone(), point }),
            None => return Ok(None),
        }
    }
    Ok(Some(rows))
}

/// The sweep's units in a fixed order (a pure function of the config, so shards agree): per
/// task and shot count, every head ranking's levels, then the FFN levels per FFN order, then
/// the combined grid. Every 0% level is one shared unit labelled `none`.
pub fn sweep_units(tasks: &[Task], cfg: &PruneConfig) -> Vec<SweepUnit> {
    let mut units: Vec<SweepUnit> = Vec::new();
    let mut push = |u: SweepUnit| {
        let u = if u.heads_pct == 0 && u.ffns_pct == 0 { SweepUnit { ranking: "none".into(), ..u } } else { u };
        if !units.contains(&u) {
            units.push(u);
        }
    };
    let ffn_sources: Vec<&str> = if cfg.ffn_oracle { vec!["gradient", "oracle"] } else { vec!["gradient"] };
    for t in tasks {
        for &k in &cfg.shots {
            for r in &cfg.rankings {
                for &p in &cfg.heads {
                    push(SweepUnit { task: t.name.clone(), shots: k, ranking: r.label(), heads_pct: p, ffns_pct: 0 });
                }
            }
            for src in &ffn_sources {
                for &p in &cfg.ffns {
                    push(SweepUnit { task: t.name.clone(), shots: k, ranking: src.to_string(), heads_pct: 0, ffns_pct: p });
                }
                if cfg.combined {
                    for hp in super::levels(70, 10) {
                        for fp in super::levels(50, 10) {
                            push(SweepUnit { task: t.name.clone(), shots: k, ranking: format!("own+{src}"), heads_pct: hp, ffns_pct: fp });
                        }
                    }
                }
            }
        }
    }
    units
}

/// Importance sums of one task at k shots on the model under `mask` (None: the full model).
fn importance_sums(model: &Model, tok: &Tokenizer, task: &Task, k: usize, cfg: &PruneConfig, mask: Option<Mask>) -> Result<ImportanceSums> {
    let max_len = cfg.max_length.map_or(model.info.context_length, |m| m.min(model.info.context_length));
    let prompts = tasks::prompt::importance_prompts(
        task,
        &PromptOptions { shots: k, max_docs: cfg.importance_docs, seed: cfg.seed, leading_space: false, exclude_query: false },
    )?;
    let (tp, truncated) = importance::tokenize_prompts(tok, &prompts, max_len)?;
    if truncated > 0 {
        eprintln!("  {} {k}-shot: {truncated} importance prompts truncated on the left", task.name);
    }
    let b = bar(tp.len(), &format!("importance {} {k}-shot", task.name));
    let opts = ImportanceOptions { abs_mode: AbsMode::PerToken, batch_size: cfg.importance_batch, mask, keep_per_example: false };
    let (sums, _) = importance::accumulate(model, &tp, &opts, &mut |d, _| b.set_position(d as u64))?;
    b.finish_and_clear();
    Ok(sums)
}

/// Head and FFN rankings from the importance of every (task, shots) of the run.
struct Rankings<'a> {
    imp: &'a HashMap<(String, usize), ImportanceSums>,
    /// The tasks the aggregate averages: the run's tasks less the OOD ones.
    in_dist: &'a [&'a Task],
    l_n: usize,
    h_n: usize,
}

impl Rankings<'_> {
    /// A task's head scores at k shots, flat layer-major `[L * H]`.
    fn head_scores(&self, task: &str, k: usize) -> Result<Vec<f64>> {
        let s = self.imp.get(&(task.to_string(), k)).ok_or_else(|| anyhow!("task {task} is not part of this run (add it to --tasks)"))?;
        Ok(super::flatten(&s.scores(Normalize::Authors).heads))
    }

    /// The authors' aggregate: the element-wise mean of the in-distribution tasks' matrices,
    /// heads flat `[L * H]` and FFNs `[L]`.
    fn aggregate(&self, k: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        if self.in_dist.is_empty() {
            bail!("the aggregate ranking needs at least one task that is not OOD");
        }
        let n = self.in_dist.len() as f64;
        let mut heads = vec![0.0; self.l_n * self.h_n];
        let mut ffns = vec![0.0; self.l_n];
        for t in self.in_dist {
            self.head_scores(&t.name, k)?.iter().zip(heads.iter_mut()).for_each(|(x, a)| *a += x / n);
            let s = self.imp.get(&(t.name.clone(), k)).ok_or_else(|| anyhow!("no importance for {}", t.name))?;
            s.scores(Normalize::Authors).ffns.iter().zip(ffns.iter_mut()).for_each(|(x, a)| *a += x / n);
        }
        Ok((heads, ffns))
    }

    fn head_ranking(&self, label: &str, task: &str, k: usize) -> Result<Vec<usize>> {
        Ok(match RankingSource::parse(label)? {
            RankingSource::Own => super::ascending_ranking(&self.head_scores(task, k)?),
            RankingSource::Aggregate => super::ascending_ranking(&self.aggregate(k)?.0),
            RankingSource::Task(t) => super::ascending_ranking(&self.head_scores(&t, k)?),
            RankingSource::Random(seed) => super::random_ranking(self.l_n * self.h_n, seed),
            RankingSource::File(p) => {
                let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).with_context(|| format!("cannot read {p}"))?)
                    .map_err(|e| anyhow!("{p}: {e}"))?;
                let heads: Vec<Vec<f64>> = serde_json::from_value(v["heads"].clone()).map_err(|e| anyhow!("{p}: `heads` should be [[score]...]: {e}"))?;
                super::ascending_ranking(&super::flatten(&heads))
            }
        })
    }

    fn grad_ffn_order(&self, task: &str, k: usize) -> Result<Vec<usize>> {
        let s = self.imp.get(&(task.to_string(), k)).ok_or_else(|| anyhow!("no importance for {task}"))?;
        Ok(super::ascending_ranking(&s.scores(Normalize::Authors).ffns))
    }
}

/// Evaluates tasks under masks; prompts are built and tokenized once per (task, shots), on
/// first use (they do not depend on the mask).
struct Evaluator<'a> {
    model: &'a Model,
    tok: &'a Tokenizer,
    tasks: &'a [Task],
    cfg: &'a PruneConfig,
    folder: &'a RunFolder,
    /// Per (task index, shots): the evaluation config, prompts and their tokens.
    prepared: HashMap<(usize, usize), Prepared>,
}

type Prepared = (EvalConfig, Vec<Prompt>, Vec<Encoded>);

impl Evaluator<'_> {
    /// The headline point of `u` under `mask`. The unpruned model's full summary is also kept
    /// (unit + `eval/<task>.<k>shot.json`), so the report has baselines without a separate run.
    fn point(&mut self, u: &SweepUnit, mask: &Mask) -> Result<EvalPoint> {
        if u.heads_pct == 0 && u.ffns_pct == 0 && mask.heads_removed() == 0 && mask.ffns_removed() == 0 {
            let (point, summary) = self.baseline(u, mask)?;
            write_json(&self.folder.root.join("eval").join(format!("{}.{}shot.json", u.task, u.shots)), &summary)?;
            return Ok(point);
        }
        Ok(self.evaluate(u, mask)?.summary.point())
    }

    /// Evaluates the unpruned model, stores its summary as a unit, and returns the point and the
    /// summary as `headroom eval` writes it (plus the model path, no mask, the tool version).
    fn baseline(&mut self, u: &SweepUnit, mask: &Mask) -> Result<(EvalPoint, serde_json::Value)> {
        let out = self.evaluate(u, mask)?;
        let mut summary = serde_json::to_value(&out.summary)?;
        if let Some(obj) = summary.as_object_mut() {
            obj.insert("model".into(), serde_json::json!(self.folder.manifest.model.path));
            obj.insert("mask".into(), serde_json::Value::Null);
            obj.insert("headroom_version".into(), serde_json::json!(env!("CARGO_PKG_VERSION")));
            obj.insert("compute_dtype".into(), serde_json::json!(self.folder.manifest.compute_dtype));
        }
        let options = unit_eval_options(self.cfg, self.tasks.iter().find(|t| t.name == u.task));
        self.folder.store(&baseline_key(&u.task, u.shots, &options), &summary)?;
        Ok((out.summary.point(), summary))
    }

    fn evaluate(&mut self, u: &SweepUnit, mask: &Mask) -> Result<EvalOutput> {
        let t = self.tasks.iter().position(|t| t.name == u.task).ok_or_else(|| anyhow!("unknown task {}", u.task))?;
        let task = &self.tasks[t];
        if !self.prepared.contains_key(&(t, u.shots)) {
            let ecfg = EvalConfig {
                shots: u.shots,
                limit: self.cfg.limit,
                seed: self.cfg.seed,
                score: ScoreOptions { batch_size: self.cfg.batch_size, ..ScoreOptions::default() },
                max_length: self.cfg.max_length,
                ..EvalConfig::default()
            };
            let docs = selected_docs(task, &ecfg);
            let (p, e) = prepare(task, &docs, &ecfg, self.tok, self.model)?;
            self.prepared.insert((t, u.shots), (ecfg, p, e));
        }
        let (ecfg, p, e) = &self.prepared[&(t, u.shots)];
        let b = bar(p.len(), &format!("{} {}-shot {} h{}% f{}%", u.task, u.shots, u.ranking, u.heads_pct, u.ffns_pct));
        let out = evaluate_prepared(self.model, task, ecfg, p, e, Some(mask), &mut |d| b.inc(d as u64))?;
        b.finish_and_clear();
        Ok(out)
    }
}

/// Where a run folder keeps the aggregate importance of shot count `k` (the matrix the
/// `aggregate` ranking sorts; the report reads it rather than averaging on its own).
pub fn aggregate_path(run: &std::path::Path, k: usize) -> std::path::PathBuf {
    run.join("rankings").join(format!("aggregate.{k}shot.json"))
}

/// The tidy CSVs, inflection points (per task and for the average over tasks), and the list of
/// deviations from the paper's setup. Returns the average inflection points, one line each.
fn write_outputs(folder: &RunFolder, rows: &[SweepRow], cfg: &PruneConfig) -> Result<Vec<String>> {
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
    folder.write("sweeps/heads.csv", &super::tidy_csv(&heads)?)?;
    folder.write("sweeps/ffns.csv", &super::tidy_csv(&ffns)?)?;
    if !combined.is_empty() {
        folder.write("sweeps/combined.csv", &super::tidy_csv(&combined)?)?;
    }
    // Inflection points: per curve, and for the average over tasks of each (shots, ranking).
    // base_stderr and base_n: the unpruned point's standard error and size, so a reader can
    // tell whether the drop that ends a curve is larger than the noise.
    let mut infl: Vec<InflectionRow> = Vec::new();
    let mut summary = Vec::new();
    for (kind, set) in [("heads", &heads), ("ffns", &ffns)] {
        let mut curves: Vec<(String, usize, String)> = set.iter().map(|r| (r.unit.task.clone(), r.unit.shots, r.unit.ranking.clone())).collect();
        curves.sort();
        curves.dedup();
        let pct = |r: &SweepRow| if kind == "heads" { r.unit.heads_pct } else { r.unit.ffns_pct };
        let mut by_avg: HashMap<(usize, String), Vec<(u32, f64)>> = HashMap::new();
        // The 0% points averaged, per (shots, ranking).
        let mut avg_bases: HashMap<(usize, String), Vec<EvalPoint>> = HashMap::new();
        for (task, k, ranking) in &curves {
            let curve: Vec<&SweepRow> = set.iter().filter(|r| &r.unit.task == task && r.unit.shots == *k && &r.unit.ranking == ranking).collect();
            let pts: Vec<(u32, f64)> = curve.iter().map(|r| (pct(r), r.point.value)).collect();
            for p in &pts {
                by_avg.entry((*k, ranking.clone())).or_default().push(*p);
            }
            let base_point = curve.iter().find(|r| pct(r) == 0).map(|r| &r.point);
            if let Some(b) = base_point {
                avg_bases.entry((*k, ranking.clone())).or_default().push(b.clone());
            }
            if let Some(ip) = super::inflection(&pts, cfg.tolerance) {
                let (b, se, n) = base_point.map_or((f64::NAN, f64::NAN, 0), |p| (p.value, p.stderr, p.n));
                infl.push(InflectionRow { task: task.clone(), shots: *k, ranking: ranking.clone(), kind: kind.into(), inflection_pct: ip, tolerance: cfg.tolerance, base_value: b, base_stderr: Some(se), base_n: Some(n) });
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
            if let Some(ip) = super::inflection(&avg, cfg.tolerance) {
                let b = avg.iter().find(|p| p.0 == 0).map_or(f64::NAN, |p| p.1);
                // The mean of T independent task means: stderr sqrt(sum se_t^2) / T, n the
                // documents of all T.
                let bases = avg_bases.get(key).map_or(&[][..], |v| v.as_slice());
                let se = bases.iter().map(|p| p.stderr * p.stderr).sum::<f64>().sqrt() / bases.len().max(1) as f64;
                let n: usize = bases.iter().map(|p| p.n).sum();
                infl.push(InflectionRow { task: "average".into(), shots: key.0, ranking: key.1.clone(), kind: kind.into(), inflection_pct: ip, tolerance: cfg.tolerance, base_value: b, base_stderr: Some(se), base_n: Some(n) });
                summary.push(format!("{kind} ({} ranking, {}-shot): average inflection at {ip}% (base {b:.3})", key.1, key.0));
            }
        }
    }
    folder.write("sweeps/inflection.csv", &InflectionRow::csv(&infl)?)?;
    let mut deviations = vec![
        "Demonstrations are sampled with headroom's seeded generator, not Python's random module seeded 1234: the specific demos differ from the authors'.".to_string(),
    ];
    if let Some(limit) = cfg.limit {
        deviations.push(format!("Evaluation uses the first {limit} documents of a seeded shuffle of the evaluation split, not all of it."));
    }
    if cfg.importance_docs != 2500 {
        deviations.push(format!("Importance uses the first {} pool documents (the authors: 2500).", cfg.importance_docs));
    }
    write_json(&folder.root.join("deviations.json"), &deviations)?;
    Ok(summary)
}
