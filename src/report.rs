//! One self-contained HTML page from a run folder (`headroom report RUN_DIR`).
//!
//! Every part of the run folder is optional: a section is rendered for what exists and says which
//! files it looked for when they are missing. Figures are drawn with [`crate::plots`] into
//! `RUN/figures/*.svg|png` and the SVGs are inlined, so the page needs no network and no other
//! file to render (no external CSS, JS or fonts). The tidy CSVs are linked relatively.
//!
//! Layout read (see issue 7):
//! ```text
//! manifest.json, deviations.json
//! importance/<task>.<k>shot.json         {heads [L][H], ffns [L], ...}
//! sweeps/{heads,ffns,combined}.csv       task,shots,ranking,heads_pct,ffns_pct,metric,value,n,stderr
//! sweeps/inflection.csv                  task,shots,ranking,kind,inflection_pct,tolerance,base_value,base_stderr,base_n
//! ffn_oracle/<task>.<k>shot.json         {base, without, diffs, order, gradient_srcc, note}
//! eval/<task>.<k>shot.json               EvalSummary (+ model, mask)
//! induction/induction.json               {prefix {mean}, copying {mean}, top_prefix, top_copying, capacity}
//! induction/ablation.json                {target, results [{task, shots, metric, n, result {baseline, points}}]}
//! compare/compare.json                   {correlation {labels, rho}, cross_shot {...}, overlap}
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::compare::{self, Method};
use crate::findings::{self, CurvePoint, HeadScores};
use crate::plots::{self, BarPlot, Heatmap, LinePlot, Plot, Series};

/// What [`build`] wrote.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The HTML file.
    pub html: PathBuf,
    /// Section titles, in page order.
    pub sections: Vec<String>,
    /// SVG files inlined in the page (their PNG twins sit beside them).
    pub figures: Vec<PathBuf>,
    /// Parts of the run folder that were absent (relative paths), for the caller to print.
    pub missing: Vec<String>,
}

/// The section titles a full run folder produces, in page order (tests check these).
pub const SECTIONS: &[&str] = &[
    "Run",
    "Paper vs this run",
    "Manifest and options",
    "Deviations from the paper",
    "Baseline accuracy",
    "Head importance",
    "FFN importance",
    "Accuracy vs pruning",
    "Combined pruning grid",
    "Inflection points",
    "FFN oracle vs gradient",
    "Rank correlations",
    "Induction heads",
    "Capacity retained",
    "Induction ablation",
    "Data files",
];

/// Reads `run`, renders the figures into `run/figures`, writes the page to `out`.
pub fn build(run: &Path, out: &Path) -> Result<Report> {
    anyhow::ensure!(run.is_dir(), "{} is not a folder", run.display());
    let mut b = Builder { run: run.to_path_buf(), figdir: run.join("figures"), out: out.to_path_buf(), ..Default::default() };
    b.collect()?;
    let html = b.page();
    crate::io::write_atomic(out, html.as_bytes())?;
    Ok(Report { html: out.to_path_buf(), sections: b.sections.iter().map(|s| s.0.clone()).collect(), figures: b.figures, missing: b.missing })
}

// ------------------------------------------------------------------------------------------------
// Text helpers.
// ------------------------------------------------------------------------------------------------

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v == v.trunc() && v.abs() < 1e9 {
        format!("{v:.0}")
    } else if v.abs() >= 0.001 || v == 0.0 {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

fn vnum(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => num(n.as_f64().unwrap_or(f64::NAN)),
        Some(Value::String(s)) => escape(s),
        Some(Value::Null) | None => "–".into(),
        Some(other) => escape(&other.to_string()),
    }
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><thead><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr></thead><tbody>\n");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody></table>\n");
    s
}

fn matrix(v: Option<&Value>) -> Option<Vec<Vec<f64>>> {
    let rows = v?.as_array()?;
    let m: Option<Vec<Vec<f64>>> = rows
        .iter()
        .map(|r| r.as_array().map(|r| r.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect()))
        .collect();
    m.filter(|m| !m.is_empty() && m.iter().all(|r| r.len() == m[0].len() && !r.is_empty()))
}

fn vector(v: Option<&Value>) -> Option<Vec<f64>> {
    let v: Vec<f64> = v?.as_array()?.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect();
    (!v.is_empty()).then_some(v)
}

fn read_json(path: &Path) -> Result<Value> {
    let t = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&t).with_context(|| format!("{}: not JSON", path.display()))
}

/// `<task>.<k>shot.json` files of a folder, sorted by (task, k).
fn unit_files(dir: &Path) -> Vec<(String, usize, PathBuf)> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return v };
    for e in rd.flatten() {
        let p = e.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(stem) = name.strip_suffix("shot.json") else { continue };
        let Some((task, k)) = stem.rsplit_once('.') else { continue };
        if let Ok(k) = k.parse::<usize>() {
            v.push((task.to_string(), k, p));
        }
    }
    v.sort();
    v
}

/// The aggregate importance the report draws for shot count `k`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportanceAggregate {
    pub tasks: Vec<String>,
    /// `[layers][heads]`; empty when the tasks' matrices disagree in shape.
    pub heads: Vec<Vec<f64>>,
    pub ffns: Vec<f64>,
}

/// The aggregate importance at `k` shots: the sweeps' `rankings/aggregate.<k>shot.json` when the
/// run has one (so the report shows exactly what the `aggregate` ranking sorted); otherwise the
/// element-wise mean over the importance files at `k` shots of the tasks the manifest does not
/// mark OOD (the same rule). `imps` are the run's importance files as (task, shots, JSON).
pub fn aggregate_importance(run: &Path, k: usize, imps: &[(String, usize, Value)]) -> Result<Option<ImportanceAggregate>> {
    let p = crate::prune::experiment::aggregate_path(run, k);
    if p.exists() {
        let a = crate::artifacts::AggregateFile::read(&p)?;
        return Ok(Some(ImportanceAggregate { tasks: a.tasks, heads: a.heads, ffns: a.ffns }));
    }
    let ood: Vec<String> = std::fs::read_to_string(run.join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|m| serde_json::from_value(m.pointer("/options/ood_tasks")?.clone()).ok())
        .unwrap_or_default();
    let members: Vec<&(String, usize, Value)> = imps.iter().filter(|(t, kk, _)| *kk == k && !ood.contains(t)).collect();
    if members.is_empty() {
        return Ok(None);
    }
    let n = members.len() as f64;
    let hs: Vec<Vec<Vec<f64>>> = members.iter().filter_map(|(_, _, v)| matrix(v.get("heads"))).collect();
    let fs: Vec<Vec<f64>> = members.iter().filter_map(|(_, _, v)| vector(v.get("ffns"))).collect();
    let heads = if hs.len() == members.len() && !hs[0].is_empty() && hs.iter().all(|m| m.len() == hs[0].len() && m.iter().all(|r| r.len() == hs[0][0].len())) {
        // Each term divided, then added in task order: prune's arithmetic, to the last bit.
        (0..hs[0].len()).map(|l| (0..hs[0][0].len()).map(|h| hs.iter().fold(0.0, |a, m| a + m[l][h] / n)).collect()).collect()
    } else {
        vec![]
    };
    let ffns = if fs.len() == members.len() && fs.iter().all(|v| v.len() == fs[0].len()) {
        (0..fs[0].len()).map(|l| fs.iter().fold(0.0, |a, v| a + v[l] / n)).collect()
    } else {
        vec![]
    };
    Ok(Some(ImportanceAggregate { tasks: members.iter().map(|(t, _, _)| t.clone()).collect(), heads, ffns }))
}

/// A CSV (header + rows) as one column -> cell map per row, through the csv crate.
fn read_csv(path: &Path) -> Result<Vec<BTreeMap<String, String>>> {
    crate::io::read_csv(path)
}

fn f(row: &BTreeMap<String, String>, k: &str) -> f64 {
    row.get(k).and_then(|s| s.trim().parse().ok()).unwrap_or(f64::NAN)
}

fn s<'a>(row: &'a BTreeMap<String, String>, k: &str) -> &'a str {
    row.get(k).map(String::as_str).unwrap_or("")
}

/// Days since 1970-01-01 -> (y, m, d) (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn now_utc() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (y, m, d) = civil(t.div_euclid(86_400));
    let r = t.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", r / 3600, r / 60 % 60)
}

// ------------------------------------------------------------------------------------------------
// The page.
// ------------------------------------------------------------------------------------------------

#[derive(Default)]
struct Builder {
    run: PathBuf,
    figdir: PathBuf,
    out: PathBuf,
    model: String,
    title: String,
    /// (title, id, body html).
    sections: Vec<(String, String, String)>,
    figures: Vec<PathBuf>,
    missing: Vec<String>,
    /// Split / pool facts found in eval and importance files (deviations).
    split_notes: Vec<String>,
}

impl Builder {
    fn section(&mut self, title: &str, body: String) {
        let id = title.to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "-");
        self.sections.push((title.to_string(), id, body));
    }

    fn absent(&mut self, what: &[&str]) -> String {
        for w in what {
            self.missing.push(w.to_string());
        }
        let list: Vec<String> = what.iter().map(|w| format!("<code>{}</code>", escape(w))).collect();
        format!("<p class=\"missing\">Not in this run: {}.</p>\n", list.join(", "))
    }

    /// Renders a figure and returns its inlined SVG in a `<figure>`.
    fn figure(&mut self, plot: &impl Plot, name: &str, caption: &str) -> String {
        let stem = self.figdir.join(name);
        match plots::render(plot, &stem).and_then(|r| {
            let svg = std::fs::read_to_string(&r.svg)?;
            Ok((r, svg))
        }) {
            Ok((r, svg)) => {
                self.figures.push(r.svg.clone());
                let svg = inline_svg(&svg);
                let png = rel(&self.out, &r.png);
                format!(
                    "<figure>{svg}<figcaption>{} · <a href=\"{}\">PNG</a></figcaption></figure>\n",
                    escape(caption),
                    escape(&png)
                )
            }
            Err(e) => format!("<p class=\"missing\">Could not draw {}: {}</p>\n", escape(name), escape(&format!("{e:#}"))),
        }
    }

    fn collect(&mut self) -> Result<()> {
        let manifest = {
            let p = self.run.join("manifest.json");
            if p.exists() { Some(read_json(&p)?) } else { None }
        };
        self.model = manifest
            .as_ref()
            .and_then(|m| m.pointer("/model/path"))
            .and_then(Value::as_str)
            .map(|p| Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.to_string()))
            .unwrap_or_default();
        self.title = if self.model.is_empty() { "headroom report".into() } else { format!("headroom report — {}", self.model) };

        // Run.
        let mut rows = vec![];
        if let Some(m) = &manifest {
            rows.push(vec!["model".into(), format!("<code>{}</code>", vnum(m.pointer("/model/path")))]);
            rows.push(vec!["sha256".into(), format!("<code>{}</code>", vnum(m.pointer("/model/sha256")))]);
            rows.push(vec!["tool".into(), vnum(m.get("tool"))]);
        }
        rows.push(vec!["run folder".into(), format!("<code>{}</code>", escape(&self.run.display().to_string()))]);
        rows.push(vec!["report generated".into(), escape(&now_utc())]);
        rows.push(vec!["report tool".into(), escape(concat!("headroom ", env!("CARGO_PKG_VERSION")))]);
        let mut body = String::from("<table class=\"kv\"><tbody>\n");
        for r in &rows {
            let _ = writeln!(body, "<tr><th>{}</th><td>{}</td></tr>", r[0], r[1]);
        }
        body.push_str("</tbody></table>\n");
        if manifest.is_none() {
            body.push_str(&self.absent(&["manifest.json"]));
        }
        self.section("Run", body);

        // Manifest.
        let body = match &manifest {
            Some(m) => {
                let mut b = String::new();
                if let Some(d) = m.get("data").and_then(Value::as_array) {
                    let items: Vec<String> = d.iter().map(|x| format!("<li><code>{}</code></li>", vnum(Some(x)))).collect();
                    let _ = writeln!(b, "<h3>Data</h3><ul>{}</ul>", items.join(""));
                }
                if let Some(o) = m.get("options") {
                    let _ = writeln!(b, "<h3>Options</h3><pre>{}</pre>", escape(&serde_json::to_string_pretty(o)?));
                }
                let _ = writeln!(b, "<details><summary>manifest.json</summary><pre>{}</pre></details>", escape(&serde_json::to_string_pretty(m)?));
                b
            }
            None => self.absent(&["manifest.json"]),
        };
        self.section("Manifest and options", body);

        // Load the unit files first: the deviations section gathers split info from them.
        let evals: Vec<(String, usize, Value)> = unit_files(&self.run.join("eval"))
            .into_iter()
            .filter_map(|(t, k, p)| read_json(&p).ok().map(|v| (t, k, v)))
            .collect();
        let imps: Vec<(String, usize, Value)> = unit_files(&self.run.join("importance"))
            .into_iter()
            .filter_map(|(t, k, p)| read_json(&p).ok().map(|v| (t, k, v)))
            .collect();
        for (t, k, v) in evals.iter().chain(imps.iter()) {
            if let Some(sp) = v.get("split") {
                let mode = sp.get("mode").and_then(Value::as_str).unwrap_or("");
                let pool = sp.get("pool_source").and_then(Value::as_str).unwrap_or("");
                let eval = sp.get("eval_source").and_then(Value::as_str).unwrap_or("");
                let notes: Vec<&str> = sp.get("notes").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                if !mode.eq_ignore_ascii_case("train") || !notes.is_empty() {
                    let mut n = format!("{t} {k}-shot: split mode {mode}; evaluation on {eval}, demonstration/importance pool from {pool}");
                    if let Some(fr) = sp.get("pool_fraction").and_then(Value::as_f64) {
                        let _ = write!(n, " (pool fraction {fr}, seed {})", vnum(sp.get("holdout_seed")));
                    }
                    for x in notes {
                        let _ = write!(n, "; {x}");
                    }
                    if !self.split_notes.contains(&n) {
                        self.split_notes.push(n);
                    }
                }
            }
        }

        // Deviations.
        let dev_path = self.run.join("deviations.json");
        let mut devs: Vec<String> = vec![];
        if dev_path.exists() {
            match read_json(&dev_path)? {
                Value::Array(a) => devs.extend(a.iter().map(|x| x.as_str().map(String::from).unwrap_or_else(|| x.to_string()))),
                other => devs.push(other.to_string()),
            }
        }
        let mut body = String::new();
        if devs.is_empty() && self.split_notes.is_empty() {
            body.push_str("<p>No deviations recorded.</p>\n");
        }
        if !devs.is_empty() {
            body.push_str("<ul>");
            for d in &devs {
                let _ = write!(body, "<li>{}</li>", escape(d));
            }
            body.push_str("</ul>\n");
        }
        if !self.split_notes.is_empty() {
            body.push_str("<h3>Splits that differ from the paper's (train pool, validation evaluation)</h3><ul>");
            for d in self.split_notes.clone() {
                let _ = write!(body, "<li>{}</li>", escape(&d));
            }
            body.push_str("</ul>\n");
        }
        if !dev_path.exists() {
            body.push_str(&self.absent(&["deviations.json"]));
        }
        self.section("Deviations from the paper", body);

        self.baseline(&evals);
        self.importance(&imps);
        self.sweeps()?;
        self.oracle();
        self.compare()?;
        self.induction()?;
        self.induction_ablation()?;
        self.data_files();
        // The page a reader sees first: the paper's findings beside this run's, right after the
        // run's identity.
        let body = self.paper_vs_run(&imps)?;
        self.section("Paper vs this run", body);
        if let Some(last) = self.sections.pop() {
            let at = self.sections.iter().position(|s| s.0 == "Run").map_or(0, |i| i + 1);
            self.sections.insert(at, last);
        }
        Ok(())
    }

    /// Each finding of the paper with the paper's OPT-66B value (where the docs state one) and
    /// this run's, and a warning line wherever this run's number is within its noise.
    fn paper_vs_run(&mut self, imps: &[(String, usize, Value)]) -> Result<String> {
        let mut rows: Vec<Vec<String>> = vec![];
        let mut warnings: Vec<String> = vec![];
        let paper = |p: findings::PaperValue| format!("<b>{}</b> <small>({})</small>", escape(p.value), escape(p.source));
        let dash = || "—".to_string();
        let pairs = |n: usize| if n == 1 { "1 task pair".to_string() } else { format!("{n} task pairs") };
        let missing = |what: &str| format!("<span class=\"na\">not in this run ({})</span>", escape(what));

        // Shares removable within tolerance.
        let infl_path = self.run.join("sweeps/inflection.csv");
        let infl: Vec<findings::Inflection> = if infl_path.exists() {
            read_csv(&infl_path)?
                .iter()
                .map(|r| findings::Inflection {
                    task: s(r, "task").into(),
                    shots: s(r, "shots").parse().unwrap_or(0),
                    ranking: s(r, "ranking").into(),
                    kind: s(r, "kind").into(),
                    pct: f(r, "inflection_pct"),
                    tolerance: f(r, "tolerance"),
                    base_stderr: f(r, "base_stderr"),
                })
                .collect()
        } else {
            vec![]
        };
        for (kind, what, pv) in [("heads", "Share of heads removable within tolerance (mean over tasks)", findings::PAPER_HEADS_REMOVABLE), ("ffns", "Share of FFNs removable within tolerance (mean over tasks)", findings::PAPER_FFNS_REMOVABLE)] {
            let sel = findings::removable_share(&infl, kind);
            let ours = if sel.is_empty() {
                missing("sweeps/inflection.csv")
            } else {
                sel.iter().map(|r| format!("{} ranking, {}-shot: <b>{}%</b>", escape(&r.ranking), r.shots, plots::fmt_num(r.pct))).collect::<Vec<_>>().join("<br>")
            };
            if let Some(r) = sel.iter().find(|r| r.noise_limited()) {
                warnings.push(format!(
                    "{what}: the unpruned mean's stderr ({:.3}) is larger than the tolerance ({}), so these shares are within the evaluation's noise; use a larger --limit.",
                    r.base_stderr, r.tolerance
                ));
            }
            let tol = sel.first().map_or(String::new(), |r| format!("tolerance {} of the unpruned value", r.tolerance));
            rows.push(vec![escape(what), ours, paper(pv), escape(&tol)]);
        }

        // Rank statistics over the head importance files.
        let sets: Vec<HeadScores> = imps
            .iter()
            .filter_map(|(t, k, v)| matrix(v.get("heads")).map(|m| HeadScores { task: t.clone(), shots: *k, scores: compare::flatten(&m) }))
            .collect();
        let same_shape = sets.windows(2).all(|w| w[0].scores.len() == w[1].scores.len());
        if sets.is_empty() || !same_shape {
            let why = if sets.is_empty() { "importance/<task>.<k>shot.json" } else { "importance files of different shapes" };
            for what in ["Cross-task rank correlation of head importance", "Cross-shot rank correlation (Table 1)", "Top-30% head overlap across tasks"] {
                rows.push(vec![escape(what), missing(why), dash(), String::new()]);
            }
        } else {
            let sp = findings::cross_task_correlation(&sets, Method::Spearman)?;
            let ar = findings::cross_task_correlation(&sets, Method::Argsort)?;
            let ours = if sp.is_empty() {
                missing("one task per shot count")
            } else {
                sp.iter()
                    .zip(&ar)
                    .map(|(a, b)| format!("{}-shot: Spearman <b>{:.3}</b> · argsort {:.3} ({})", a.shots, a.mean, b.mean, pairs(a.pairs)))
                    .collect::<Vec<_>>()
                    .join("<br>")
            };
            rows.push(vec![escape("Cross-task rank correlation of head importance (mean over task pairs)"), ours, dash(), escape("Spearman is the standard statistic; argsort is the authors' (docs/method.md §5.1)")]);

            let cs = findings::cross_shot_means(&sets, Method::Spearman)?;
            let ca = findings::cross_shot_means(&sets, Method::Argsort)?;
            let ours = if cs.is_empty() {
                missing("a second shot count")
            } else {
                cs.iter()
                    .zip(&ca)
                    .map(|(a, b)| format!("{}- vs {}-shot: Spearman <b>{:.3}</b> · argsort {:.3} ({} tasks)", a.0, a.1, a.2, b.2, a.3))
                    .collect::<Vec<_>>()
                    .join("<br>")
            };
            rows.push(vec![escape("Cross-shot rank correlation (Table 1, mean over tasks)"), ours, dash(), escape("both statistics on the same importance files")]);

            let ov = findings::cross_task_overlap(&sets, 0.3)?;
            let n = sets[0].scores.len();
            let expected = compare::top_k(n, 0.3) as f64 / n as f64;
            let ours = if ov.is_empty() {
                missing("one task per shot count")
            } else {
                ov.iter().map(|o| format!("{}-shot: <b>{:.0}%</b> ({})", o.shots, 100.0 * o.mean, pairs(o.pairs))).collect::<Vec<_>>().join("<br>")
            };
            rows.push(vec![
                escape("Top-30% head overlap across tasks (mean over task pairs)"),
                ours,
                paper(findings::PAPER_TOP30_OVERLAP),
                escape(&format!("random rankings overlap by {:.0}% on average", 100.0 * expected)),
            ]);
        }

        // Where the induction heads rank in the aggregate importance.
        let ind = self.run.join("induction/induction.json");
        let ours = match (ind.exists(), sets.first()) {
            (false, _) => missing("induction/induction.json"),
            (true, None) => missing("importance files"),
            (true, Some(_)) => {
                let v = read_json(&ind)?;
                let k0 = sets.iter().map(|s| s.shots).min().unwrap_or(0);
                // The sweeps' own aggregate ranking when the run has it, else the mean of the
                // importance files at the lowest shot count.
                let agg_file = self.run.join(format!("rankings/aggregate.{k0}shot.json"));
                let aggregate = if agg_file.exists() { matrix(read_json(&agg_file)?.get("heads")).map(|m| compare::flatten(&m)) } else { None };
                let aggregate = aggregate.or_else(|| {
                    let at: Vec<&HeadScores> = sets.iter().filter(|s| s.shots == k0).collect();
                    (!at.is_empty()).then(|| (0..at[0].scores.len()).map(|i| at.iter().map(|s| s.scores[i]).sum::<f64>() / at.len() as f64).collect())
                });
                match (matrix(v.pointer("/prefix/mean")).map(|m| compare::flatten(&m)), aggregate) {
                    (Some(prefix), Some(agg)) if prefix.len() == agg.len() => {
                        let r = findings::induction_rank(&prefix, &agg, 10, 0.3)?;
                        format!(
                            "top {} prefix-matching heads: median percentile <b>{:.0}</b> in the {k0}-shot aggregate importance; {} of {} in its top 30%",
                            r.heads.len(),
                            findings::median(&r.percentiles),
                            r.in_top,
                            r.heads.len()
                        )
                    }
                    _ => missing("prefix-matching scores and an aggregate ranking of the same heads"),
                }
            }
        };
        rows.push(vec![escape("Where the strongest induction heads rank in importance"), ours, dash(), escape("percentile 100 = the most important head; random heads would sit at 50 on average")]);

        // The random-ranking control, on the mean-over-tasks head curves.
        let heads_csv = self.run.join("sweeps/heads.csv");
        if heads_csv.exists() {
            let rows_csv = read_csv(&heads_csv)?;
            for ((k, metric), tasks) in sweep_panels(&rows_csv, "heads_pct") {
                let rankings: std::collections::BTreeSet<String> = tasks.values().flat_map(|c| c.keys().cloned()).collect();
                let mut mean = Curves::new();
                for r in rankings {
                    let curves: Option<Vec<Vec<CurvePoint>>> = tasks.values().map(|c| c.get(&r).cloned()).collect();
                    if let Some(c) = curves {
                        mean.insert(r, findings::mean_curve(&c));
                    }
                }
                let Some(random) = mean.keys().find(|r| is_random(r)).cloned() else { continue };
                let level = 50.0;
                let cells: Vec<String> = ordered_rankings(&mean)
                    .into_iter()
                    .filter_map(|(r, c)| findings::at_level(c, level).map(|p| format!("{} <b>{:.3}</b> ± {:.3}", escape(r), p.value, p.stderr)))
                    .collect();
                if cells.is_empty() {
                    continue;
                }
                rows.push(vec![
                    escape(&format!("Mean {metric} with 50% of heads removed vs the random control ({k}-shot)")),
                    cells.join("<br>"),
                    dash(),
                    escape("a ranking that carries information should stay above random"),
                ]);
                for r in ["own", "aggregate"] {
                    if let (Some(a), Some(b)) = (mean.get(r), mean.get(&random)) {
                        if let (Some(pa), Some(pb)) = (findings::at_level(a, level), findings::at_level(b, level)) {
                            if findings::within_noise(&[pa], &[pb]).len() == 1 {
                                warnings.push(format!(
                                    "{k}-shot, 50% of heads removed: {r} − {random} = {:+.3} is smaller than its stderr {:.3}; this run cannot tell the {r} ranking from random there.",
                                    pa.value - pb.value,
                                    (pa.stderr * pa.stderr + pb.stderr * pb.stderr).sqrt()
                                ));
                            }
                        }
                    }
                }
            }
        }

        let mut b = String::from(
            "<p>The findings of Bansal et al. (2023) on OPT-66B beside this run. The paper's value is given where the docs state it \
             (docs/method.md, “The paper's headline numbers”); “—” where they do not.</p>\n",
        );
        b.push_str(&table(&["finding", "this run", "paper (OPT-66B)", "note"], &rows));
        for w in warnings {
            let _ = writeln!(b, "<p class=\"warn\">⚠ {}</p>", escape(&w));
        }
        Ok(b)
    }

    fn baseline(&mut self, evals: &[(String, usize, Value)]) {
        if evals.is_empty() {
            let b = self.absent(&["eval/<task>.<k>shot.json"]);
            self.section("Baseline accuracy", b);
            return;
        }
        let rows: Vec<Vec<String>> = evals
            .iter()
            .map(|(t, k, v)| {
                let value = v.get("value").or_else(|| v.get("acc"));
                let mask = match v.get("mask") {
                    Some(Value::Object(m)) => format!("{} heads, {} FFNs removed", vnum(m.get("heads_removed")), vnum(m.get("ffns_removed"))),
                    _ => "none".into(),
                };
                vec![
                    escape(t),
                    k.to_string(),
                    vnum(v.get("metric")),
                    format!("<b>{}</b>", vnum(value)),
                    vnum(v.get("stderr")),
                    vnum(v.get("n")),
                    vnum(v.pointer("/split/mode")),
                    vnum(v.pointer("/split/eval_source")),
                    vnum(v.pointer("/split/pool_source")),
                    mask,
                ]
            })
            .collect();
        let b = table(&["task", "shots", "metric", "value", "stderr", "n", "split", "evaluated on", "pool", "mask"], &rows);
        self.section("Baseline accuracy", b);
    }

    fn importance(&mut self, imps: &[(String, usize, Value)]) {
        if imps.is_empty() {
            let b = self.absent(&["importance/<task>.<k>shot.json"]);
            self.section("Head importance", b.clone());
            self.section("FFN importance", b);
            return;
        }
        let model = self.model.clone();
        let mut heads_html = String::from("<p>Gradient importance of each attention head (spec 3.1); higher = more important. The aggregate is the mean of the in-distribution tasks' matrices at each shot count (OOD tasks left out), the matrix the aggregate ranking sorts.</p>\n<div class=\"grid\">");
        let mut ffn_html = String::from("<div class=\"grid\">");
        let mut by_shot: BTreeMap<usize, Vec<Vec<Vec<f64>>>> = BTreeMap::new();
        let mut ffn_by_shot: BTreeMap<usize, Vec<Vec<f64>>> = BTreeMap::new();
        for (t, k, v) in imps {
            if let Some(h) = matrix(v.get("heads")) {
                let title = plots::title("Head importance", &model, t, Some(*k));
                heads_html.push_str(&self.figure(&Heatmap::heads(&title, &h, "importance"), &format!("heads-{t}-{k}shot"), &title));
                by_shot.entry(*k).or_default().push(h);
            }
            if let Some(ff) = vector(v.get("ffns")) {
                let title = plots::title("FFN importance", &model, t, Some(*k));
                ffn_html.push_str(&self.figure(&BarPlot::ffns(&title, &ff, "importance"), &format!("ffns-{t}-{k}shot"), &title));
                ffn_by_shot.entry(*k).or_default().push(ff);
            }
        }
        let shots: Vec<usize> = by_shot.keys().chain(ffn_by_shot.keys()).copied().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        for k in shots {
            // The sweeps' own aggregate (in-distribution tasks only), so the figure shows the
            // matrix the `aggregate` ranking sorted; a single task's aggregate is its own figure.
            let agg = match aggregate_importance(&self.run, k, imps) {
                Ok(Some(a)) if a.tasks.len() >= 2 => a,
                Ok(_) => continue,
                Err(e) => {
                    let _ = write!(heads_html, "<p class=\"warn\">{}</p>", escape(&format!("{e:#}")));
                    continue;
                }
            };
            let n = agg.tasks.len();
            if !agg.heads.is_empty() {
                let title = plots::title(&format!("Head importance, mean of {n} tasks"), &model, "", Some(k));
                heads_html.push_str(&self.figure(&Heatmap::heads(&title, &agg.heads, "mean importance"), &format!("heads-aggregate-{k}shot"), &title));
            }
            if !agg.ffns.is_empty() {
                let title = plots::title(&format!("FFN importance, mean of {n} tasks"), &model, "", Some(k));
                ffn_html.push_str(&self.figure(&BarPlot::ffns(&title, &agg.ffns, "mean importance"), &format!("ffns-aggregate-{k}shot"), &title));
            }
        }
        heads_html.push_str("</div>\n");
        ffn_html.push_str("</div>\n");
        // `headroom importance` nests its options; `headroom prune` writes them at the top level.
        let opt = |v: &Value, key: &str| v.pointer(&format!("/options/{key}")).or_else(|| v.get(key)).cloned();
        let rows: Vec<Vec<String>> = imps
            .iter()
            .map(|(t, k, v)| vec![escape(t), k.to_string(), vnum(v.get("examples")), vnum(v.get("mean_loss")), vnum(opt(v, "abs_mode").as_ref()), vnum(opt(v, "normalize").as_ref())])
            .collect();
        heads_html.push_str(&table(&["task", "shots", "examples", "mean loss", "abs mode", "normalize"], &rows));
        self.section("Head importance", heads_html);
        self.section("FFN importance", ffn_html);
    }

    fn sweeps(&mut self) -> Result<()> {
        let model = self.model.clone();
        let dir = self.run.join("sweeps");
        // Accuracy vs pruning: one panel per task (and one for the mean over tasks) with every
        // ranking overlaid on the same axes, stderr bands, and the task's chance level.
        let mut body = String::from(
            "<p>Each panel overlays the rankings on the same axes: the task's <b>own</b>, the task <b>aggregate</b>, and the \
             <b>random</b> control (dashed grey) when the run has one. Shaded bands are ± one standard error; the dashed \
             line is the chance level (1 / number of answer options). The mean panel's band is sqrt(Σ se²) / T.</p>\n",
        );
        let mut miss = vec![];
        for (file, what, col) in [("heads.csv", "heads", "heads_pct"), ("ffns.csv", "FFNs", "ffns_pct")] {
            let p = dir.join(file);
            if !p.exists() {
                miss.push(format!("sweeps/{file}"));
                continue;
            }
            let rows = read_csv(&p)?;
            let panels = sweep_panels(&rows, col);
            for ((k, metric), tasks) in panels {
                body.push_str("<div class=\"grid\">");
                let mut warnings = vec![];
                let names: Vec<&str> = tasks.keys().map(String::as_str).collect();
                let chance_of = |t: &str| if metric_has_chance(&metric) { findings::chance_level(t) } else { None };
                let mut panels: Vec<Panel> =
                    tasks.iter().map(|(t, c)| (t.clone(), c.clone(), chance_of(t))).collect();
                if tasks.len() > 1 {
                    let rankings: std::collections::BTreeSet<&String> = tasks.values().flat_map(|c| c.keys()).collect();
                    let mut mean = Curves::new();
                    for r in rankings {
                        let curves: Option<Vec<Vec<CurvePoint>>> = tasks.values().map(|c| c.get(r).cloned()).collect();
                        if let Some(curves) = curves {
                            let m = findings::mean_curve(&curves);
                            if !m.is_empty() {
                                mean.insert(r.clone(), m);
                            }
                        }
                    }
                    let chance = if metric_has_chance(&metric) { findings::mean_chance(&names).map(|c| (c, "mean over tasks".to_string())) } else { None };
                    if !mean.is_empty() {
                        panels.push((format!("mean over {} tasks", tasks.len()), mean, chance));
                    }
                }
                for (task, curves, chance) in panels {
                    let series: Vec<Series> = ordered_rankings(&curves)
                        .into_iter()
                        .enumerate()
                        .map(|(i, (r, pts))| {
                            let (rgb, dashed) = ranking_style(r, i);
                            let s = Series::new(r.clone(), pts.iter().map(|p| p.pct).collect(), pts.iter().map(|p| p.value).collect())
                                .with_band(pts.iter().map(|p| if p.stderr.is_finite() { p.stderr } else { 0.0 }).collect())
                                .with_color(rgb);
                            if dashed { s.dashed() } else { s }
                        })
                        .collect();
                    let title = plots::title(&format!("{metric} vs % {what} pruned"), &model, &task, Some(k));
                    let mut lp = LinePlot::pruning(&title, what, series, None);
                    lp.y_label = metric.clone();
                    if let Some((c, how)) = &chance {
                        lp = lp.with_reference(format!("chance ({how}: {c:.2})"), *c);
                    }
                    let name = format!("prune-{}-{k}shot-{}", what.to_lowercase(), slug(&task));
                    body.push_str(&self.figure(&lp, &name, &title));
                    warnings.extend(noise_warnings(&task, k, &curves));
                }
                body.push_str("</div>\n");
                for w in warnings {
                    let _ = writeln!(body, "<p class=\"warn\">⚠ {}</p>", escape(&w));
                }
            }
        }
        if !miss.is_empty() {
            let m: Vec<&str> = miss.iter().map(String::as_str).collect();
            body.push_str(&self.absent(&m));
        }
        self.section("Accuracy vs pruning", body);

        // Combined grid.
        let p = dir.join("combined.csv");
        let body = if p.exists() {
            let rows = read_csv(&p)?;
            let mut g: BTreeMap<Key, BTreeMap<(i64, i64), Vec<f64>>> = BTreeMap::new();
            let mut tasks: BTreeMap<(usize, String, String), std::collections::BTreeSet<String>> = BTreeMap::new();
            for r in &rows {
                let key = (s(r, "shots").parse::<usize>().unwrap_or(0), s(r, "ranking").to_string(), s(r, "metric").to_string());
                let cell = ((f(r, "heads_pct") * 1000.0).round() as i64, (f(r, "ffns_pct") * 1000.0).round() as i64);
                g.entry(key.clone()).or_default().entry(cell).or_default().push(f(r, "value"));
                tasks.entry(key).or_default().insert(s(r, "task").to_string());
            }
            let mut b = String::from("<p>Accuracy with the least important heads and FFNs removed together, averaged over tasks.</p><div class=\"grid\">");
            for (key, cells) in g {
                let mut hs: Vec<i64> = cells.keys().map(|c| c.0).collect();
                let mut fs: Vec<i64> = cells.keys().map(|c| c.1).collect();
                hs.sort_unstable();
                hs.dedup();
                fs.sort_unstable();
                fs.dedup();
                let vals: Vec<Vec<f64>> = hs
                    .iter()
                    .map(|h| fs.iter().map(|fp| cells.get(&(*h, *fp)).map_or(f64::NAN, |v| v.iter().sum::<f64>() / v.len() as f64)).collect())
                    .collect();
                let n = tasks[&key].len();
                let (k, ranking, metric) = key;
                let title = plots::title(&format!("Combined pruning, mean {metric} over {n} tasks ({ranking})"), &model, "", Some(k));
                let hp: Vec<f64> = hs.iter().map(|x| *x as f64 / 1000.0).collect();
                let fp: Vec<f64> = fs.iter().map(|x| *x as f64 / 1000.0).collect();
                b.push_str(&self.figure(&Heatmap::grid(&title, &hp, &fp, &vals, metric.clone()), &format!("combined-{k}shot-{}", slug(&ranking)), &title));
            }
            b.push_str("</div>\n");
            b
        } else {
            self.absent(&["sweeps/combined.csv"])
        };
        self.section("Combined pruning grid", body);

        // Inflection.
        let p = dir.join("inflection.csv");
        let body = if p.exists() {
            let rows = read_csv(&p)?;
            // base_stderr / base_n are absent from runs before they were added: empty cells.
            let cols = ["task", "shots", "ranking", "kind", "inflection_pct", "tolerance", "base_value", "base_stderr", "base_n"];
            let t: Vec<Vec<String>> = rows.iter().map(|r| cols.iter().map(|c| escape(s(r, c))).collect()).collect();
            format!(
                "<p>The largest % pruned up to which accuracy stays within the tolerance of the unpruned value.</p>{}",
                table(&["task", "shots", "ranking", "kind", "inflection %", "tolerance", "unpruned value", "stderr", "n"], &t)
            )
        } else {
            self.absent(&["sweeps/inflection.csv"])
        };
        self.section("Inflection points", body);
        Ok(())
    }

    fn oracle(&mut self) {
        let files = unit_files(&self.run.join("ffn_oracle"));
        if files.is_empty() {
            let b = self.absent(&["ffn_oracle/<task>.<k>shot.json"]);
            self.section("FFN oracle vs gradient", b);
            return;
        }
        let model = self.model.clone();
        let mut rows = vec![];
        let mut figs = String::from("<div class=\"grid\">");
        for (t, k, p) in files {
            let f = match crate::artifacts::FfnOracleFile::read(&p) {
                Ok(f) => f,
                Err(e) => {
                    // A file that cannot be read is shown, not skipped.
                    rows.push(vec![escape(&t), k.to_string(), String::new(), String::new(), String::new(), escape(&format!("{e:#}"))]);
                    continue;
                }
            };
            let order = f.order.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ");
            let num = |x: Option<f64>| vnum(x.map(Value::from).as_ref());
            rows.push(vec![escape(&t), k.to_string(), num(Some(f.base)), format!("<b>{}</b>", num(f.gradient_srcc)), escape(&order), escape(&f.note)]);
            {
                let d = f.diffs;
                let title = plots::title("FFN oracle: drop without each FFN", &model, &t, Some(k));
                let mut bp = BarPlot::ffns(&title, &d, "base − accuracy without FFN");
                bp.series[0].label = "oracle".into();
                figs.push_str(&self.figure(&bp, &format!("oracle-{t}-{k}shot"), &title));
            }
        }
        figs.push_str("</div>\n");
        let b = format!(
            "<p>The oracle removes one FFN at a time and measures the accuracy drop; SRCC is its rank correlation with the gradient FFN importance.</p>{}{}",
            table(&["task", "shots", "base", "SRCC (oracle vs gradient)", "oracle order", "note"], &rows),
            figs
        );
        self.section("FFN oracle vs gradient", b);
    }

    fn compare(&mut self) -> Result<()> {
        let p = self.run.join("compare/compare.json");
        if !p.exists() {
            let b = self.absent(&["compare/compare.json"]);
            self.section("Rank correlations", b);
            return Ok(());
        }
        let v = read_json(&p)?;
        let model = self.model.clone();
        let statistic = v.get("statistic").and_then(Value::as_str).unwrap_or("rank correlation").to_string();
        let mut b = format!("<p>Statistic: <b>{}</b>.</p>\n", escape(&statistic));
        if let (Some(labels), Some(rho)) = (v.pointer("/correlation/labels").and_then(Value::as_array), matrix(v.pointer("/correlation/rho"))) {
            let labels: Vec<String> = labels.iter().map(|l| l.as_str().map(String::from).unwrap_or_else(|| l.to_string())).collect();
            let title = plots::title(&statistic, &model, "", None);
            b.push_str(&self.figure(&Heatmap::correlation(&title, &labels, &rho, "rho"), "srcc", &title));
        }
        if let Some(cs) = v.get("cross_shot").filter(|c| !c.is_null()) {
            let shots: Vec<String> = cs.get("shots").and_then(Value::as_array).map(|a| a.iter().map(|x| x.to_string()).collect()).unwrap_or_default();
            let mut rows = vec![];
            for a in 0..shots.len() {
                for bb in a + 1..shots.len() {
                    rows.push(vec![
                        format!("{}-shot", escape(&shots[a])),
                        format!("{}-shot", escape(&shots[bb])),
                        format!("<b>{}</b>", vnum(cs.pointer(&format!("/mean/{a}/{bb}")))),
                        vnum(cs.pointer(&format!("/variance/{a}/{bb}"))),
                        vnum(cs.pointer(&format!("/n_tasks/{a}/{bb}"))),
                        vnum(cs.pointer(&format!("/max_p_value/{a}/{bb}"))),
                    ]);
                }
            }
            b.push_str("<h3>Cross-shot correlation (spec Table 1)</h3>");
            b.push_str(&table(&["shots A", "shots B", "mean over tasks", "variance", "tasks", "max p-value"], &rows));
        } else {
            b.push_str("<p class=\"missing\">No cross-shot table in compare.json (inputs not labelled TASK@K).</p>\n");
        }
        if let Some(o) = v.get("overlap").filter(|o| !o.is_null()) {
            let _ = writeln!(b, "<p>Top-k overlap |Top(A) ∩ Top(B)| / k: k = {} of {} heads; expected overlap of random rankings {}.</p>", vnum(o.get("k")), vnum(o.get("n")), vnum(o.get("expected")));
            let labels = o.get("labels").and_then(Value::as_array);
            if let (Some(labels), Some(m)) = (labels, matrix(o.get("overlap"))) {
                let labels: Vec<String> = labels.iter().map(|l| l.as_str().map(String::from).unwrap_or_else(|| l.to_string())).collect();
                let pct = o.get("frac").and_then(Value::as_f64).map_or(String::new(), |f| format!("-{:.0}%", f * 100.0));
                let title = plots::title(&format!("Top{pct} head overlap"), &model, "", None);
                let mut h = Heatmap::correlation(&title, &labels, &m, "overlap");
                h.scale = plots::ColorScale::Sequential;
                h.range = Some((0.0, 1.0));
                b.push_str(&self.figure(&h, "overlap", &title));
            }
        }
        self.section("Rank correlations", b);
        Ok(())
    }

    fn induction(&mut self) -> Result<()> {
        let p = self.run.join("induction/induction.json");
        if !p.exists() {
            let b = self.absent(&["induction/induction.json"]);
            self.section("Induction heads", b.clone());
            self.section("Capacity retained", b);
            return Ok(());
        }
        let v = read_json(&p)?;
        let model = self.model.clone();
        let mut b = String::from("<div class=\"grid\">");
        for (key, what, name) in [("prefix", "Prefix-matching score", "prefix"), ("copying", "Copying score", "copying")] {
            let m = matrix(v.pointer(&format!("/{key}/mean"))).or_else(|| matrix(v.get(key)));
            if let Some(m) = m {
                let title = plots::title(what, &model, "", None);
                b.push_str(&self.figure(&Heatmap::heads(&title, &m, what.to_lowercase()), &format!("induction-{name}"), &title));
            }
        }
        b.push_str("</div>\n");
        let top = |k: &str| -> Vec<(String, String)> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|h| (format!("L{} H{}", vnum(h.get("layer")), vnum(h.get("head"))), vnum(h.get("score")))).collect())
                .unwrap_or_default()
        };
        let (tp, tc) = (top("top_prefix"), top("top_copying"));
        let n = tp.len().max(tc.len()).min(10);
        if n > 0 {
            let rows: Vec<Vec<String>> = (0..n)
                .map(|i| {
                    let g = |t: &[(String, String)]| t.get(i).cloned().unwrap_or(("".into(), "".into()));
                    let (a, b2) = (g(&tp), g(&tc));
                    vec![(i + 1).to_string(), a.0, a.1, b2.0, b2.1]
                })
                .collect();
            b.push_str("<h3>Top-10 heads</h3>");
            b.push_str(&table(&["rank", "prefix matching", "score", "copying", "score"], &rows));
        }
        if let Some(o) = v.get("options") {
            let _ = writeln!(b, "<details><summary>induction options</summary><pre>{}</pre></details>", escape(&serde_json::to_string_pretty(o)?));
        }
        self.section("Induction heads", b);

        let cap = v.get("capacity").filter(|c| !c.is_null());
        let body = match cap {
            Some(c) => {
                let mut curves = vec![];
                for (k, label) in [("prefix_retained", "prefix matching"), ("copy_retained", "copying")] {
                    if let Some(y) = vector(c.get(k)) {
                        let n = (y.len().max(2) - 1) as f64;
                        let x: Vec<f64> = (0..y.len()).map(|i| 100.0 * i as f64 / n).collect();
                        let y: Vec<f64> = if y.iter().cloned().fold(f64::NEG_INFINITY, f64::max) <= 1.0 + 1e-9 { y.iter().map(|v| v * 100.0).collect() } else { y };
                        curves.push(Series::new(label, x, y));
                    }
                }
                if curves.is_empty() {
                    "<p class=\"missing\">capacity in induction.json has no curves.</p>".into()
                } else {
                    let title = plots::title("Induction capacity retained as heads are pruned", &model, "", None);
                    let mut b = format!("<p>Ranking from <code>{}</code>.</p>", vnum(c.get("importance_file")));
                    b.push_str(&self.figure(&LinePlot::capacity(&title, curves), "capacity", &title));
                    b
                }
            }
            None => "<p class=\"missing\">induction.json has no capacity curves (run <code>headroom induction --importance FILE</code>).</p>\n".into(),
        };
        self.section("Capacity retained", body);
        Ok(())
    }

    /// `headroom induction-ablate --out RUN/induction`: task accuracy with the top-k induction
    /// heads removed vs k random heads (an experiment the authors did not run, spec 7.5).
    fn induction_ablation(&mut self) -> Result<()> {
        let p = self.run.join("induction/ablation.json");
        if !p.exists() {
            let b = self.absent(&["induction/ablation.json"]);
            self.section("Induction ablation", b);
            return Ok(());
        }
        let v = read_json(&p)?;
        let results = v.get("results").and_then(Value::as_array).cloned().unwrap_or_default();
        let (mut groups, mut full, mut top, mut rand_mean, mut rand_sd) = (vec![], vec![], vec![], vec![], vec![]);
        let mut rows = vec![];
        for r in &results {
            let task = r.get("task").and_then(Value::as_str).unwrap_or("?");
            let shots = vnum(r.get("shots"));
            let baseline = r.pointer("/result/baseline").and_then(Value::as_f64).unwrap_or(f64::NAN);
            for pt in r.pointer("/result/points").and_then(Value::as_array).into_iter().flatten() {
                let k = vnum(pt.get("k"));
                let t = pt.get("top_accuracy").and_then(Value::as_f64).unwrap_or(f64::NAN);
                let m = pt.pointer("/random/mean").and_then(Value::as_f64).unwrap_or(f64::NAN);
                let sd = pt.pointer("/random/std").and_then(Value::as_f64).unwrap_or(0.0);
                let sets = pt.pointer("/random/n").map_or(String::new(), |n| vnum(Some(n)));
                groups.push(format!("{task} {shots}-shot k={k}"));
                full.push(baseline);
                top.push(t);
                rand_mean.push(m);
                rand_sd.push(sd);
                rows.push(vec![escape(task), shots.clone(), k, format!("{baseline:.3}"), format!("{t:.3}"), format!("{m:.3} ± {sd:.3}"), sets, vnum(r.get("n"))]);
            }
        }
        if groups.is_empty() {
            self.section("Induction ablation", "<p class=\"missing\">induction/ablation.json has no results.</p>\n".into());
            return Ok(());
        }
        let target = v.get("target").and_then(Value::as_str).unwrap_or("?").to_lowercase();
        let mut b = format!(
            "<p>Accuracy with the top-k heads by {} score removed, against k random heads (mean ± sd over seeded sets). \
             The authors measured induction heads only by capacity retained, never by accuracy.</p>",
            escape(&target)
        );
        let title = plots::title("Accuracy with induction heads removed vs random heads", &self.model, "", None);
        let plot = BarPlot::induction_ablation(&title, groups, Some(full), top, rand_mean, rand_sd);
        b.push_str(&self.figure(&plot, "induction-ablation", &title));
        b.push_str(&table(&["task", "shots", "k", "full model", "top-k removed", "random k removed", "random sets", "n"], &rows));
        self.section("Induction ablation", b);
        Ok(())
    }

    fn data_files(&mut self) {
        let cands = [
            "sweeps/heads.csv",
            "sweeps/ffns.csv",
            "sweeps/combined.csv",
            "sweeps/inflection.csv",
            "compare/correlations.csv",
            "compare/cross_shot.csv",
            "induction/capacity.csv",
            "induction/induction.csv",
            "induction/ablation.csv",
            "manifest.json",
        ];
        let mut items = String::new();
        for c in cands {
            let p = self.run.join(c);
            if p.exists() {
                let _ = write!(items, "<li><a href=\"{}\">{}</a></li>", escape(&rel(&self.out, &p)), escape(c));
            }
        }
        let body = if items.is_empty() { "<p class=\"missing\">No tidy CSVs in this run.</p>".into() } else { format!("<ul>{items}</ul>\n") };
        self.section("Data files", body);
    }

    fn page(&self) -> String {
        let mut h = String::new();
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
        let _ = writeln!(h, "<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>", escape(&self.title));
        let _ = write!(h, "<h1>{}</h1>\n<nav><ul>", escape(&self.title));
        for (t, id, _) in &self.sections {
            let _ = write!(h, "<li><a href=\"#{id}\">{}</a></li>", escape(t));
        }
        h.push_str("</ul></nav>\n");
        if !self.missing.is_empty() {
            let _ = writeln!(h, "<p class=\"missing\">{} part(s) of a full run are missing; each section says which.</p>", self.missing.len());
        }
        for (t, id, body) in &self.sections {
            let _ = writeln!(h, "<section id=\"{id}\">\n<h2>{}</h2>\n{body}</section>", escape(t));
        }
        h.push_str("<footer>Written by headroom; figures are also in <code>figures/</code> as SVG and PNG.</footer>\n</body>\n</html>\n");
        h
    }
}

/// (shots, ranking, metric) of a sweep curve.
type Key = (usize, String, String);

/// A task's sweep curves by ranking label.
type Curves = BTreeMap<String, Vec<CurvePoint>>;

/// One pruning panel: its name (a task or the mean), the curves, the chance level and how it was
/// derived.
type Panel = (String, Curves, Option<(f64, String)>);

/// Rows of `sweeps/{heads,ffns}.csv` grouped as (shots, metric) -> task -> ranking -> points
/// sorted by % pruned; `col` is the % column of the file.
fn sweep_panels(rows: &[BTreeMap<String, String>], col: &str) -> BTreeMap<(usize, String), BTreeMap<String, Curves>> {
    let mut g: BTreeMap<(usize, String), BTreeMap<String, Curves>> = BTreeMap::new();
    for r in rows {
        let k = s(r, "shots").parse::<usize>().unwrap_or(0);
        let point = CurvePoint { pct: f(r, col), value: f(r, "value"), stderr: f(r, "stderr") };
        g.entry((k, s(r, "metric").into())).or_default().entry(s(r, "task").into()).or_default().entry(s(r, "ranking").into()).or_default().push(point);
    }
    for tasks in g.values_mut() {
        for curves in tasks.values_mut() {
            for pts in curves.values_mut() {
                pts.sort_by(|a, b| a.pct.total_cmp(&b.pct));
            }
        }
    }
    g
}

/// Metrics that pick one of the answer options, so a uniform guess scores 1 / options.
fn metric_has_chance(metric: &str) -> bool {
    matches!(metric, "acc" | "acc_norm")
}

fn is_random(ranking: &str) -> bool {
    ranking.starts_with("random")
}

/// Rankings in legend order: own, aggregate, the others by name, the random controls last.
fn ordered_rankings(curves: &Curves) -> Vec<(&String, &Vec<CurvePoint>)> {
    let rank = |r: &str| match r {
        "own" => 0,
        "aggregate" => 1,
        r if is_random(r) => 3,
        _ => 2,
    };
    let mut v: Vec<(&String, &Vec<CurvePoint>)> = curves.iter().collect();
    v.sort_by(|a, b| rank(a.0).cmp(&rank(b.0)).then(a.0.cmp(b.0)));
    v
}

/// One colour per ranking across every panel (own blue, aggregate orange, random grey and
/// dashed, so the control reads as a control in greyscale too); others take the palette by
/// position.
fn ranking_style(ranking: &str, position: usize) -> ((u8, u8, u8), bool) {
    let rgb = |c: plotters::style::RGBColor| (c.0, c.1, c.2);
    match ranking {
        "own" => (rgb(plots::palette(0)), false),
        "aggregate" => (rgb(plots::palette(1)), false),
        r if is_random(r) => ((110, 110, 110), true),
        _ => (rgb(plots::palette(2 + position)), false),
    }
}

/// One line per pair of rankings (own or aggregate against each random control, and own against
/// aggregate) that differ by less than the stderr of the difference at some pruned level.
fn noise_warnings(task: &str, shots: usize, curves: &Curves) -> Vec<String> {
    let named: Vec<&String> = ordered_rankings(curves).into_iter().map(|(r, _)| r).collect();
    let mut pairs: Vec<(&String, &String)> = vec![];
    for a in named.iter().filter(|r| !is_random(r)) {
        for b in named.iter().filter(|r| is_random(r)) {
            pairs.push((a, b));
        }
    }
    if let (Some(own), Some(agg)) = (curves.get_key_value("own"), curves.get_key_value("aggregate")) {
        pairs.push((own.0, agg.0));
    }
    let mut out = vec![];
    for (a, b) in pairs {
        let w = findings::within_noise(&curves[a], &curves[b]);
        if w.is_empty() {
            continue;
        }
        let levels: Vec<String> = w.iter().map(|x| format!("{}% ({:+.3} ± {:.3})", plots::fmt_num(x.pct), x.difference, x.stderr)).collect();
        out.push(format!("{task}, {shots}-shot: {a} − {b} is smaller than its stderr at {}", levels.join(", ")));
    }
    out
}

fn slug(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    if s.is_empty() { "none".into() } else { s }
}

/// `p` relative to the folder of `from` when it is under it, else absolute (forward slashes).
fn rel(from: &Path, p: &Path) -> String {
    let base = from.parent().unwrap_or(Path::new(""));
    let abs = |x: &Path| std::fs::canonicalize(x).unwrap_or_else(|_| x.to_path_buf());
    let (b, q) = (abs(base), abs(p));
    match q.strip_prefix(&b) {
        Ok(r) => r.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/"),
        Err(_) => q.display().to_string(),
    }
}

/// An SVG file's markup for inlining in HTML5: no XML prolog, no namespace URLs (HTML5 parses
/// `<svg>` without them), scaled to the page width.
fn inline_svg(svg: &str) -> String {
    let mut s = svg.trim().to_string();
    if s.starts_with("<?xml") {
        if let Some(i) = s.find("?>") {
            s = s[i + 2..].trim_start().to_string();
        }
    }
    s = s.replace(" xmlns=\"http://www.w3.org/2000/svg\"", "").replace(" xmlns:xlink=\"http://www.w3.org/1999/xlink\"", "");
    // Never wider than drawn (text stays legible), narrower on small screens.
    let width = s
        .split_once(" width=\"")
        .and_then(|(_, r)| r.split_once('"'))
        .and_then(|(w, _)| w.parse::<u32>().ok())
        .map_or(String::new(), |w| format!(" style=\"max-width:{w}px\""));
    s.replacen("<svg ", &format!("<svg class=\"plot\" role=\"img\"{width} "), 1)
}

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222;background:#fff}
h1{font-size:1.6em;border-bottom:2px solid #333;padding-bottom:.3em}
h2{font-size:1.3em;margin-top:2em;border-bottom:1px solid #ccc}
h3{font-size:1.05em}
nav ul{columns:3;list-style:none;padding:0}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
tbody tr:nth-child(even){background:#fafafa}
code,pre{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:.85em}
pre{background:#f6f6f6;padding:.6em;overflow:auto;max-height:30em}
code{word-break:break-all}
.missing{color:#8a5a00;background:#fff6e0;padding:.3em .6em;border-left:3px solid #e0a000}
.warn{color:#7a2e00;background:#fff1e6;padding:.25em .6em;border-left:3px solid #d9534f;margin:.3em 0;font-size:.9em}
.na{color:#8a5a00}
.grid{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;flex:1 1 540px;max-width:100%}
svg.plot{display:block;width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.8em;color:#555}
footer{margin-top:3em;font-size:.8em;color:#777}
";
