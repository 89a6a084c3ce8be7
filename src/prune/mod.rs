//! Pruning experiments (spec section 5): rankings, cumulative masks, sweeps over pruning levels,
//! the FFN oracle, inflection points. Evaluation is abstract here (a closure from a mask to an
//! [`EvalPoint`]) so the logic is tested on its own and the CLI plugs in the evaluator.
//!
//! Conventions, as the authors' code:
//! - rankings are ascending (least important first), global across layers over the flattened
//!   layer-major matrix (flat index = layer * n_heads + head), stable on ties;
//! - level p% masks the first k = floor(p * N / 100) entries of a ranking fixed once on the full
//!   model (not recomputed after each step, spec 9.6); every level is an independent evaluation
//!   (Michel et al.'s recompute-after-removal variant is [`extend_head_mask`], run by
//!   [`experiment`] under `recompute`);
//! - combined masks are the union of the head and FFN masks.
//!
//! [`experiment`] runs the whole experiment (importance, rankings, sweeps, tables) into a run
//! folder on a real model and tasks.

pub mod experiment;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::Mask;
use crate::runs::{RunFolder, Shard, UnitKey};

/// `[L][H]` -> flat layer-major.
pub fn flatten(m: &[Vec<f64>]) -> Vec<f64> {
    m.iter().flatten().copied().collect()
}

pub use crate::ranking::{ascending_ranking, random_ranking};

/// How many of n entries level p% removes: floor(p * n / 100) (the authors' `int(p)*len//100`).
pub fn n_pruned(percent: u32, n: usize) -> usize {
    percent as usize * n / 100
}

/// Mask with the first floor(p% * L*H) heads of `ranking` removed.
pub fn head_mask(ranking: &[usize], n_layers: usize, n_heads: usize, percent: u32) -> Result<Mask> {
    check_ranking(ranking, n_layers * n_heads, "head")?;
    check_percent(percent)?;
    let mut m = Mask::ones(n_layers, n_heads);
    for &i in &ranking[..n_pruned(percent, ranking.len())] {
        m.heads[i / n_heads][i % n_heads] = 0.0;
    }
    Ok(m)
}

/// Mask with the first floor(p% * L) FFNs of `order` removed.
pub fn ffn_mask(order: &[usize], n_layers: usize, n_heads: usize, percent: u32) -> Result<Mask> {
    check_ranking(order, n_layers, "FFN")?;
    check_percent(percent)?;
    let mut m = Mask::ones(n_layers, n_heads);
    for &l in &order[..n_pruned(percent, order.len())] {
        m.ffns[l] = 0.0;
    }
    Ok(m)
}

/// Michel et al.'s iterative step: `mask` with more heads removed, the lowest `scores` (flat
/// layer-major `[L * H]`) among the heads it still keeps, until `k` heads are removed in all.
/// Ties go to the lower flat index, as in [`ascending_ranking`]. From the full mask this is
/// [`head_mask`] of the ascending ranking at the level whose floor(p * N / 100) is k.
pub fn extend_head_mask(mask: &Mask, scores: &[f64], k: usize) -> Result<Mask> {
    let (l_n, h_n) = (mask.n_layers(), mask.n_heads());
    if scores.len() != l_n * h_n {
        bail!("{} head scores for a mask of {l_n} x {h_n} heads", scores.len());
    }
    if k > l_n * h_n {
        bail!("cannot remove {k} of {} heads", l_n * h_n);
    }
    let mut m = mask.clone();
    let mut removed = m.heads_removed();
    for i in ascending_ranking(scores) {
        if removed >= k {
            break;
        }
        let gate = &mut m.heads[i / h_n][i % h_n];
        if *gate != 0.0 {
            *gate = 0.0;
            removed += 1;
        }
    }
    Ok(m)
}

/// The union of what two masks remove (elementwise minimum of the gates).
pub fn union(a: &Mask, b: &Mask) -> Mask {
    Mask {
        heads: a.heads.iter().zip(&b.heads).map(|(x, y)| x.iter().zip(y).map(|(p, q)| p.min(*q)).collect()).collect(),
        ffns: a.ffns.iter().zip(&b.ffns).map(|(p, q)| p.min(*q)).collect(),
    }
}

fn check_percent(percent: u32) -> Result<()> {
    if percent > 100 {
        bail!("pruning level {percent}% is above 100%");
    }
    Ok(())
}

fn check_ranking(r: &[usize], n: usize, what: &str) -> Result<()> {
    let mut seen = vec![false; n];
    if r.len() != n {
        bail!("{what} ranking has {} entries; the model has {n}", r.len());
    }
    for &i in r {
        if i >= n || std::mem::replace(&mut seen[i], true) {
            bail!("{what} ranking is not a permutation of 0..{n} (entry {i})");
        }
    }
    Ok(())
}

/// FFN oracle (spec 3.2): diff_l = base - value without FFN l (percentage points when the
/// values are accuracies in [0, 1]); the order sorts layers by ascending diff, stably (ties keep
/// the lower layer first). Negative diff: removing that FFN helped.
pub fn ffn_oracle(base: f64, without: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let diffs: Vec<f64> = without.iter().map(|w| 100.0 * (base - w)).collect();
    let order = ascending_ranking(&diffs);
    (diffs, order)
}

/// Where a ranking comes from (`--ranking`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankingSource {
    /// The target task's own importance for that shot count.
    Own,
    /// The mean of the importance matrices over the run's tasks less the OOD ones (the authors'
    /// aggregate).
    Aggregate,
    /// Another task's importance.
    Task(String),
    /// A seeded random permutation.
    Random(u64),
    /// A file: JSON with "heads" ([L][H] scores) and optionally "ffns" ([L]).
    File(String),
}

impl RankingSource {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "own" => Self::Own,
            "aggregate" => Self::Aggregate,
            _ => match s.split_once(':') {
                Some(("task", t)) if !t.is_empty() => Self::Task(t.into()),
                Some(("random", seed)) => Self::Random(seed.parse().map_err(|_| anyhow!("--ranking `{s}`: seed must be a number"))?),
                Some(("file", p)) if !p.is_empty() => Self::File(p.into()),
                _ => bail!("--ranking `{s}`: expected own, aggregate, task:NAME, random:SEED or file:PATH"),
            },
        })
    }
    pub fn label(&self) -> String {
        match self {
            Self::Own => "own".into(),
            Self::Aggregate => "aggregate".into(),
            Self::Task(t) => format!("task:{t}"),
            Self::Random(s) => format!("random:{s}"),
            Self::File(p) => format!("file:{p}"),
        }
    }
}

/// One evaluation's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub metric: String,
    pub value: f64,
    pub n: usize,
    pub stderr: f64,
}

/// One pruning level of one sweep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepUnit {
    pub task: String,
    pub shots: usize,
    /// Ranking label (see [`RankingSource::label`]).
    pub ranking: String,
    pub heads_pct: u32,
    pub ffns_pct: u32,
}

/// A finished level, one row of the tidy CSV.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    pub unit: SweepUnit,
    pub point: EvalPoint,
}

/// sha256 of a mask's gates (part of a unit's key: a changed ranking changes the result).
pub fn mask_hash(m: &Mask) -> String {
    let bytes: Vec<u8> = m.heads.iter().flatten().chain(m.ffns.iter()).flat_map(|g| g.to_le_bytes()).collect();
    // The first 8 bytes (16 hex digits) of the digest: enough to tell masks apart.
    crate::io::sha256_hex(&bytes)[..16].to_string()
}

/// The key of an evaluation: what determines its result, i.e. the task, the shot count, the
/// mask's content and the evaluation options (`options`: limit, seed, max length, tokenization,
/// split...), and not the label of the ranking that produced the mask. So an identical mask
/// reached under two labels (own and aggregate with one in-distribution task, the first
/// recompute level and the fixed ranking...) is evaluated once, and evaluations under other
/// options are never reused. The compute dtype is added by [`RunFolder::full_key`]; the model and
/// the data files are the manifest's.
pub fn eval_key(task: &str, shots: usize, mask: &Mask, options: &serde_json::Value) -> UnitKey {
    UnitKey::new("eval", serde_json::json!({"task": task, "shots": shots, "mask": mask_hash(mask), "options": options}))
}

/// Refuses a folder whose evaluation units were keyed the old way (by the sweep unit, i.e. the
/// ranking label, without the evaluation options): their results cannot be told apart safely,
/// and silently recomputing every one of them would be a surprise on a large run.
pub fn check_eval_unit_layout(folder: &RunFolder) -> Result<()> {
    let dir = folder.root.join("units").join("eval");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e} (delete it to recompute)", p.display()))?;
        if v.pointer("/key/inputs/unit").is_some() {
            bail!(
                "{} holds evaluation units of an older headroom (keyed by ranking label, without the evaluation options), which this version cannot reuse safely; use a new --out folder, or delete {} to evaluate them again there",
                folder.root.display(),
                dir.display()
            );
        }
        // One file tells the layout: a folder is written by one version (the manifest's tool).
        break;
    }
    Ok(())
}

/// What [`run_sweep`] did.
#[derive(Debug, Default)]
pub struct SweepOutcome {
    /// Units evaluated now (not found in the folder).
    pub computed: usize,
    /// Units of this shard found finished.
    pub reused: usize,
    /// All rows, in unit order, when every unit (all shards) is finished; else None.
    pub rows: Option<Vec<SweepRow>>,
}

/// Runs this shard's units (skipping finished ones), then collects every unit's row if the whole
/// sweep is complete. `mask_for` builds a unit's mask; `eval` evaluates a task under a mask.
pub fn run_sweep(
    folder: &RunFolder,
    units: &[SweepUnit],
    shard: Shard,
    eval_options: &dyn Fn(&SweepUnit) -> serde_json::Value,
    mask_for: &mut dyn FnMut(&SweepUnit) -> Result<Mask>,
    eval: &mut dyn FnMut(&SweepUnit, &Mask) -> Result<EvalPoint>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SweepOutcome> {
    let mut out = SweepOutcome::default();
    let mine: Vec<usize> = (0..units.len()).filter(|&i| shard.takes(i)).collect();
    let mut keys = Vec::with_capacity(units.len());
    for u in units {
        let mask = mask_for(u)?;
        keys.push((eval_key(&u.task, u.shots, &mask, &eval_options(u)), mask));
    }
    for (done, &i) in mine.iter().enumerate() {
        let (key, mask) = &keys[i];
        let mut computed = 0;
        folder
            .get_or_compute(key, &mut computed, || eval(&units[i], mask))
            .with_context(|| format!("evaluating {} {}-shot, ranking {}, heads {}%, FFNs {}%", units[i].task, units[i].shots, units[i].ranking, units[i].heads_pct, units[i].ffns_pct))?;
        out.computed += computed;
        out.reused += 1 - computed;
        progress(done + 1, mine.len());
    }
    let mut rows = Vec::with_capacity(units.len());
    for (u, (key, _)) in units.iter().zip(&keys) {
        match folder.load::<EvalPoint>(key)? {
            Some(point) => rows.push(SweepRow { unit: u.clone(), point }),
            None => return Ok(out),
        }
    }
    out.rows = Some(rows);
    Ok(out)
}

/// The columns of the tidy sweep CSVs (`sweeps/{heads,ffns,combined}.csv`).
pub const TIDY_CSV_HEADER: [&str; 9] = ["task", "shots", "ranking", "heads_pct", "ffns_pct", "metric", "value", "n", "stderr"];

/// Tidy CSV: task, shots, ranking, heads_pct, ffns_pct, metric, value, n, stderr (values and
/// stderrs to 6 decimals), through the csv crate.
pub fn tidy_csv(rows: &[SweepRow]) -> Result<Vec<u8>> {
    crate::io::csv_bytes(
        &TIDY_CSV_HEADER,
        rows.iter().map(|r| {
            let u = &r.unit;
            vec![
                u.task.clone(),
                u.shots.to_string(),
                u.ranking.clone(),
                u.heads_pct.to_string(),
                u.ffns_pct.to_string(),
                r.point.metric.to_string(),
                format!("{:.6}", r.point.value),
                r.point.n.to_string(),
                format!("{:.6}", r.point.stderr),
            ]
        }),
    )
}

/// The inflection point of a curve: the largest pruned fraction up to which every level stays
/// within `tolerance` (absolute, same unit as the values) of the unpruned value (the level at 0).
/// Points are (percent, value); returns None without a 0% point.
pub fn inflection(points: &[(u32, f64)], tolerance: f64) -> Option<u32> {
    let mut pts = points.to_vec();
    pts.sort_by_key(|p| p.0);
    let base = pts.iter().find(|p| p.0 == 0)?.1;
    let mut last = 0;
    for (pct, v) in pts {
        if v < base - tolerance {
            break;
        }
        last = pct;
    }
    Some(last)
}

/// The authors' levels: 0, 10, ..., 90.
pub fn levels(max: u32, step: u32) -> Vec<u32> {
    (0..=max).step_by(step.max(1) as usize).collect()
}
