//! `headroom compare`: rank correlations and top-k overlaps between head-importance files, the
//! cross-shot table when labels carry shot counts, optional bootstrap intervals, and heatmaps.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use headroom::artifacts::ImportanceFile;
use headroom::compare::{self, BootstrapOptions, Method, ScoreSet, ShotScores};
use headroom::importance::{ExampleContribution, Normalize};
use headroom::io::{read_jsonl, write_atomic, write_json};
use headroom::plots::{self, Heatmap};
use serde_json::{json, Value};

/// Per-example contributions beside an importance.json, one `ExampleContribution` per line
/// (written by `headroom importance --per-example`); needed by `--bootstrap`.
pub const CONTRIBUTIONS_FILE: &str = "contributions.jsonl";

#[derive(Args)]
pub struct CompareArgs {
    /// importance.json files (or folders holding one), two or more.
    #[arg(long, num_args = 1.., required = true)]
    scores: Vec<PathBuf>,
    /// One label per score file, comma-separated (default: `TASK@K` from the file's `task` and
    /// `shots` fields or its `T.Kshot.json` name, else its folder's or file's name). Write
    /// `TASK@K` (e.g. `copa@0,copa@1,piqa@0,piqa@1`) to also get the cross-shot table (Table 1).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Top fraction for the overlap |Top(A) ∩ Top(B)| / k, with k = floor(top * heads).
    #[arg(long, default_value_t = 0.3)]
    top: f64,
    /// spearman: standard rank correlation (average ranks for ties). argsort: the authors'
    /// statistic (correlation of the argsort permutations; reproduces their figures, spec 6.1).
    #[arg(long, value_enum, default_value_t = Method::Spearman)]
    method: Method,
    /// Add an "aggregate" row/column: the mean of the inputs' raw scores.
    #[arg(long)]
    aggregate: bool,
    /// Add a "random" row/column: a uniformly random ranking drawn with this seed.
    #[arg(long)]
    random: Option<u64>,
    /// Bootstrap resamples over examples for intervals on every pair's correlation and overlap
    /// and on each input's per-head ranks (needs contributions.jsonl beside each input).
    #[arg(long)]
    bootstrap: Option<usize>,
    /// Seed for the bootstrap resampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Confidence level of the bootstrap percentile intervals.
    #[arg(long, default_value_t = 0.95)]
    level: f64,
    /// Output folder: compare.json, correlations.csv, srcc.{svg,png}, overlap.{svg,png}, and
    /// cross_shot.csv / rank_intervals_LABEL.csv when they apply.
    #[arg(long)]
    out: PathBuf,
}

struct Input {
    label: String,
    path: PathBuf,
    scores: Vec<f64>,
    n_layers: usize,
    n_heads: usize,
    model: String,
    normalize: Normalize,
}

fn load(path: &Path, label: Option<&String>) -> Result<Input> {
    let file = if path.is_dir() { path.join("importance.json") } else { path.to_path_buf() };
    // Through the typed file: its `normalize` is where prune and `headroom importance` both keep
    // it, and an old file without one is refused rather than read as the authors' normalisation.
    let imp = ImportanceFile::read(&file)?;
    let heads = &imp.heads;
    let n_heads = heads[0].len();
    let scores = compare::flatten(heads);
    ensure!(scores.iter().all(|x| x.is_finite()), "{}: `heads` has non-finite values", file.display());
    let model = imp
        .model
        .get("source")
        .and_then(Value::as_str)
        .map(|s| Path::new(s.trim_end_matches('/')).file_name().map_or(s.to_string(), |n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let normalize = imp.normalize;
    let label = match label {
        Some(l) => l.clone(),
        None => default_label(&imp, &file),
    };
    Ok(Input { label, path: file, scores, n_layers: heads.len(), n_heads, model, normalize })
}

/// A score file's label when `--labels` is not given: `TASK@K` from the file's own `task` and
/// `shots` fields (prune's `importance/T.Kshot.json`), else from a `T.Kshot.json` file name, else the
/// folder of an `importance.json` (`headroom importance --out DIR`), else the file name.
fn default_label(imp: &ImportanceFile, file: &Path) -> String {
    if let (Some(t), Some(k)) = (&imp.task, imp.shots) {
        return format!("{t}@{k}");
    }
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some((t, k)) = stem.rsplit_once('.').and_then(|(t, k)| Some((t, k.strip_suffix("shot")?.parse::<usize>().ok()?))) {
        return format!("{t}@{k}");
    }
    if stem == "importance" {
        if let Some(dir) = file.parent().and_then(|p| p.file_name()) {
            return dir.to_string_lossy().into_owned();
        }
    }
    stem
}

/// `TASK@K` -> (TASK, K).
fn task_shots(label: &str) -> Option<(String, usize)> {
    let (t, k) = label.rsplit_once('@')?;
    Some((t.to_string(), k.parse().ok()?))
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Spearman => "spearman",
        Method::Argsort => "argsort",
    }
}

fn load_contributions(input: &Input) -> Result<Vec<ExampleContribution>> {
    let p = input.path.with_file_name(CONTRIBUTIONS_FILE);
    if !p.exists() {
        bail!(
            "--bootstrap needs per-example contributions, and {} has none ({} is missing); rerun `headroom importance --per-example`",
            input.label,
            p.display()
        );
    }
    let ex: Vec<ExampleContribution> = read_jsonl(&p)?;
    let (l, h) = compare::contribution_shape(&ex).with_context(|| p.display().to_string())?;
    ensure!((l, h) == (input.n_layers, input.n_heads), "{}: contributions are {l}x{h}, the scores {}x{}", p.display(), input.n_layers, input.n_heads);
    Ok(ex)
}

/// A CSV number: shortest round-trip decimal, or scientific notation for tiny/huge values (Rust's
/// `{}` would spell a p-value of 1e-57 with 57 zeros); empty for NaN.
fn num(v: f64) -> String {
    if v.is_nan() {
        String::new()
    } else if v != 0.0 && (v.abs() < 1e-4 || v.abs() >= 1e15) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

pub fn run(args: CompareArgs) -> Result<()> {
    ensure!(args.scores.len() >= 2, "give at least two --scores files to compare");
    ensure!(
        args.labels.is_empty() || args.labels.len() == args.scores.len(),
        "{} labels for {} score files",
        args.labels.len(),
        args.scores.len()
    );
    let inputs: Vec<Input> = args.scores.iter().enumerate().map(|(i, p)| load(p, args.labels.get(i))).collect::<Result<_>>()?;
    for w in inputs.windows(2) {
        ensure!(
            (w[0].n_layers, w[0].n_heads) == (w[1].n_layers, w[1].n_heads),
            "{} has {}x{} heads but {} has {}x{}: compare scores of one model",
            w[0].label,
            w[0].n_layers,
            w[0].n_heads,
            w[1].label,
            w[1].n_layers,
            w[1].n_heads
        );
    }
    let mut seen = std::collections::HashSet::new();
    for i in &inputs {
        ensure!(seen.insert(i.label.as_str()), "label `{}` is used twice (pass --labels)", i.label);
    }
    let sets: Vec<ScoreSet> = inputs.iter().map(|i| ScoreSet { label: i.label.clone(), scores: i.scores.clone() }).collect();
    let rows = compare::with_reference_rows(&sets, args.aggregate, args.random)?;
    let corr = compare::correlation_matrix(&rows, args.method)?;
    let over = compare::overlap_matrix(&rows, args.top)?;

    // Cross-shot table when every label is TASK@K and there are at least two shot counts.
    let parsed: Option<Vec<(String, usize)>> = inputs.iter().map(|i| task_shots(&i.label)).collect();
    let cross = match parsed {
        Some(ts) if ts.iter().map(|t| t.1).collect::<std::collections::BTreeSet<_>>().len() >= 2 => {
            let items: Vec<ShotScores> =
                ts.into_iter().zip(&inputs).map(|((task, shots), i)| ShotScores { task, shots, scores: i.scores.clone() }).collect();
            Some(compare::cross_shot(&items, args.method)?)
        }
        _ => None,
    };

    // Bootstrap over examples.
    let mut boot_pairs: Vec<(compare::Interval, compare::Interval)> = Vec::new();
    let mut boot_json = Value::Null;
    if let Some(resamples) = args.bootstrap {
        let contribs: Vec<Vec<ExampleContribution>> = inputs.iter().map(load_contributions).collect::<Result<_>>()?;
        // The resampled scores are recomputed from the contributions under one normalisation:
        // inputs under different ones would compare unlike scores.
        let normalize = inputs[0].normalize;
        if let Some(other) = inputs.iter().find(|i| i.normalize != normalize) {
            bail!("--bootstrap needs inputs under one normalisation: {} is {normalize:?}, {} is {:?}", inputs[0].label, other.label, other.normalize);
        }
        let opts = BootstrapOptions { resamples, seed: args.seed, level: args.level, normalize };
        // Each input is resampled once (its own stream); every pair uses replicate b of both.
        let reps: Vec<compare::Replicates> =
            contribs.iter().enumerate().map(|(i, ex)| compare::replicates(ex, &opts, i as u64)).collect::<Result<_>>()?;
        let mut pairs = Vec::new();
        for i in 0..inputs.len() {
            for j in i + 1..inputs.len() {
                let r = compare::correlation_interval(&reps[i], &reps[j], args.method, args.level)?;
                let o = compare::overlap_interval(&reps[i], &reps[j], args.top, args.level)?;
                pairs.push(json!({"a": inputs[i].label, "b": inputs[j].label, "rho": r, "overlap": o}));
                boot_pairs.push((r, o));
            }
        }
        let mut rank_files = Vec::new();
        for ((input, ex), rep) in inputs.iter().zip(&contribs).zip(&reps) {
            let r = compare::rank_intervals(rep, args.level);
            let csv = headroom::io::csv_bytes(
                &["layer", "head", "rank", "rank_lo", "rank_hi"],
                (0..r.point.len()).map(|f| vec![(f / r.n_heads).to_string(), (f % r.n_heads).to_string(), r.point[f].to_string(), num(r.lo[f]), num(r.hi[f])]),
            )?;
            let name = format!("rank_intervals_{}.csv", input.label.replace(['/', '\\', '@', ' '], "_"));
            write_atomic(&args.out.join(&name), &csv)?;
            rank_files.push(json!({"label": input.label, "file": name, "examples": ex.len()}));
        }
        boot_json = json!({
            "resamples": resamples, "seed": args.seed, "level": args.level, "normalize": normalize,
            "note": "percentile intervals; each input's examples resampled independently; rank 1 = most important",
            "pairs": pairs, "ranks": rank_files,
        });
    }

    // Tables.
    let mut header = vec!["a", "b", "statistic", "rho", "p_value", "top_fraction", "k", "n", "shared", "overlap", "expected_overlap", "overlap_p_value"];
    if args.bootstrap.is_some() {
        header.extend(["rho_lo", "rho_hi", "overlap_lo", "overlap_hi"]);
    }
    let n_in = inputs.len();
    let mut pair_index = 0;
    let mut records: Vec<Vec<String>> = Vec::new();
    for i in 0..rows.len() {
        for j in i + 1..rows.len() {
            let mut rec = vec![
                rows[i].label.clone(),
                rows[j].label.clone(),
                method_name(args.method).to_string(),
                num(corr.rho[i][j]),
                num(corr.p_value[i][j]),
                args.top.to_string(),
                over.k.to_string(),
                over.n.to_string(),
                over.shared[i][j].to_string(),
                num(over.overlap[i][j]),
                num(over.expected),
                num(over.p_value[i][j]),
            ];
            if args.bootstrap.is_some() {
                if i < n_in && j < n_in {
                    let (r, o) = boot_pairs[pair_index];
                    pair_index += 1;
                    rec.extend([num(r.lo), num(r.hi), num(o.lo), num(o.hi)]);
                } else {
                    // Reference rows (aggregate, random) have no examples to resample.
                    rec.extend([String::new(), String::new(), String::new(), String::new()]);
                }
            }
            records.push(rec);
        }
    }
    write_atomic(&args.out.join("correlations.csv"), &headroom::io::csv_bytes(&header, records)?)?;
    if let Some(cs) = &cross {
        let mut t: Vec<Vec<String>> = Vec::new();
        for a in 0..cs.shots.len() {
            for b in 0..cs.shots.len() {
                t.push(vec![
                    cs.shots[a].to_string(),
                    cs.shots[b].to_string(),
                    num(cs.mean[a][b]),
                    num(cs.variance[a][b]),
                    cs.n_tasks[a][b].to_string(),
                    num(cs.max_p_value[a][b]),
                ]);
            }
        }
        write_atomic(&args.out.join("cross_shot.csv"), &headroom::io::csv_bytes(&["shots_a", "shots_b", "mean", "variance", "n_tasks", "max_p_value"], t)?)?;
    }
    let summary = json!({
        "method": args.method,
        "statistic": args.method.label(),
        "inputs": inputs.iter().map(|i| json!({"label": i.label, "path": i.path, "model": i.model, "n_layers": i.n_layers, "n_heads": i.n_heads})).collect::<Vec<_>>(),
        "ranking": "global ascending over the flattened layer-major matrix (flat = layer * n_heads + head), stable on ties",
        "top_k": "k = floor(top * n) (Python int()); overlap = |Top(A) ∩ Top(B)| / k; expected = k / n (hypergeometric mean k²/n over k); p = P(shared >= observed) under independent random rankings",
        "correlation": corr,
        "overlap": over,
        "cross_shot": cross,
        "bootstrap": boot_json,
        "tool": concat!("headroom ", env!("CARGO_PKG_VERSION")),
    });
    write_json(&args.out.join("compare.json"), &summary)?;

    // Figures.
    let model = inputs[0].model.clone();
    let what = match args.method {
        Method::Spearman => "Spearman rank correlation",
        Method::Argsort => "Argsort correlation (authors' SRCC)",
    };
    let labels = corr.labels.clone();
    let title = plots::title(what, &model, "", None);
    let short = match args.method {
        Method::Spearman => "Spearman rho",
        Method::Argsort => "argsort correlation",
    };
    plots::render(&Heatmap::correlation(&title, &labels, &corr.rho, short), &args.out.join("srcc"))?;
    let mut oh = Heatmap::correlation(
        plots::title(&format!("Top-{:.0}% head overlap (random: {:.2})", args.top * 100.0, over.expected), &model, "", None),
        &labels,
        &over.overlap,
        "overlap",
    );
    oh.scale = plots::ColorScale::Sequential;
    oh.range = Some((0.0, 1.0));
    plots::render(&oh, &args.out.join("overlap"))?;

    // A glance.
    println!("{} ({} heads per input; top {:.0}% = {} heads, random overlap {:.3})", args.method.label(), over.n, args.top * 100.0, over.k, over.expected);
    let w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(4).max(6);
    print!("{:w$}", "");
    for l in &labels {
        print!(" {l:>w$}");
    }
    println!();
    for (i, l) in labels.iter().enumerate() {
        print!("{l:w$}");
        for v in &corr.rho[i] {
            print!(" {v:>w$.3}");
        }
        println!();
    }
    if let Some(cs) = &cross {
        println!("cross-shot (mean over tasks, variance):");
        for a in 0..cs.shots.len() {
            for b in a + 1..cs.shots.len() {
                println!("  {}-shot vs {}-shot: {:.3} (var {:.4}, {} tasks)", cs.shots[a], cs.shots[b], cs.mean[a][b], cs.variance[a][b], cs.n_tasks[a][b]);
            }
        }
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
