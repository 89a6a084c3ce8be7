//! `headroom report` on a synthetic run folder: every section, the figures inlined, no network
//! references, and (when Debian's `chromium` is installed) a headless load with a screenshot and
//! no console errors. Set HEADROOM_REPORT_DIR to keep the run folder and screenshot.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

fn mat(l: usize, h: usize, seed: f64) -> Vec<Vec<f64>> {
    (0..l).map(|i| (0..h).map(|j| ((i * h + j) as f64 * 0.37 + seed).sin().abs()).collect()).collect()
}

/// A run folder with every part: 2 tasks x 2 shots, 4 layers x 4 heads.
fn synthetic_run(dir: &Path) {
    let (nl, nh) = (4, 4);
    write(
        &dir.join("manifest.json"),
        &json!({"tool": "headroom 0.1.0", "model": {"path": "/cache/tiny-model.gguf", "sha256": "abc123<def>"},
                "data": ["copa==1.0"], "options": {"tasks": ["copa", "piqa"], "shots": [0, 1], "limit": 20}})
        .to_string(),
    );
    write(&dir.join("deviations.json"), &json!(["Importance pool drawn from the validation split (no train split) & <script>alert(1)</script>"]).to_string());
    let mut heads = String::from("task,shots,ranking,heads_pct,ffns_pct,metric,value,n,stderr\n");
    let mut ffns = heads.clone();
    let mut comb = heads.clone();
    let mut infl = String::from("task,shots,ranking,kind,inflection_pct,tolerance,base_value\n");
    for (ti, task) in ["copa", "piqa"].iter().enumerate() {
        for k in [0usize, 1] {
            let seed = ti as f64 + k as f64 * 0.5;
            let split = json!({"mode": "holdout", "eval_source": "validation", "pool_source": "validation (holdout)", "eval_docs": 80, "pool_docs": 20, "holdout_seed": 1, "pool_fraction": 0.2});
            write(
                &dir.join(format!("importance/{task}.{k}shot.json")),
                &json!({"heads": mat(nl, nh, seed), "ffns": (0..nl).map(|l| 1.0 + l as f64 * 0.1 + seed).collect::<Vec<_>>(),
                        "sums": {}, "options": {"abs_mode": "sum", "normalize": true}, "model": {}, "examples": 50, "mean_loss": 2.5, "split": split})
                .to_string(),
            );
            write(
                &dir.join(format!("eval/{task}.{k}shot.json")),
                &json!({"task": task, "shots": k, "metric": "acc", "value": 0.6 + 0.05 * seed, "stderr": 0.02, "n": 80, "split": split, "mask": null})
                    .to_string(),
            );
            write(
                &dir.join(format!("ffn_oracle/{task}.{k}shot.json")),
                &json!({"task": task, "shots": k, "base": 0.6, "without": [0.5, 0.55, 0.58, 0.6], "diffs": [0.1, 0.05, 0.02, 0.0], "order": [3, 2, 1, 0], "gradient_srcc": 0.8, "note": "absolute drop"})
                    .to_string(),
            );
            for p in (0..=100).step_by(10) {
                let v = 0.6 + 0.05 * seed - 0.004 * p as f64;
                // The aggregate ranking trails own by 0.01 (within the noise everywhere); the
                // random control matches own up to 10% (within the noise) and then falls away.
                let random = if p <= 10 { v } else { v - 0.008 * p as f64 };
                heads.push_str(&format!("{task},{k},own,{p},0,acc,{v:.6},80,0.02\n"));
                heads.push_str(&format!("{task},{k},aggregate,{p},0,acc,{:.6},80,0.02\n", v - 0.01));
                heads.push_str(&format!("{task},{k},random:1,{p},0,acc,{random:.6},80,0.02\n"));
                ffns.push_str(&format!("{task},{k},gradient,0,{p},acc,{:.6},80,0.02\n", v + 0.001 * p as f64));
            }
            for hp in [0, 30, 60] {
                for fp in [0, 30, 60] {
                    comb.push_str(&format!("{task},{k},importance,{hp},{fp},acc,{:.6},80,0.02\n", 0.7 - 0.002 * (hp + fp) as f64));
                }
            }
            infl.push_str(&format!("{task},{k},own,heads,40,0.01,0.6,,\n{task},{k},gradient,ffns,20,0.01,0.6,,\n"));
        }
    }
    // The mean-over-tasks rows (the paper-vs-run table reads these), with the stderr columns: at
    // 0-shot the stderr is below the tolerance, at 1-shot above it (a warning).
    infl = infl.replace("task,shots,ranking,kind,inflection_pct,tolerance,base_value\n", "task,shots,ranking,kind,inflection_pct,tolerance,base_value,base_stderr,base_n\n");
    infl.push_str("average,0,own,heads,30,0.01,0.6,0.005,160\naverage,0,gradient,ffns,20,0.01,0.6,0.005,160\n");
    infl.push_str("average,1,own,heads,60,0.01,0.6,0.02,160\naverage,1,gradient,ffns,10,0.01,0.6,0.02,160\n");
    write(&dir.join("sweeps/heads.csv"), &heads);
    write(&dir.join("sweeps/ffns.csv"), &ffns);
    write(&dir.join("sweeps/combined.csv"), &comb);
    write(&dir.join("sweeps/inflection.csv"), &infl);
    let labels = ["copa@0", "copa@1", "piqa@0", "piqa@1"];
    let rho: Vec<Vec<f64>> = (0..4).map(|i| (0..4).map(|j| if i == j { 1.0 } else { 0.5 - 0.1 * (i + j) as f64 }).collect()).collect();
    write(
        &dir.join("compare/compare.json"),
        &json!({"method": "spearman", "statistic": "Spearman rho", "correlation": {"labels": labels, "rho": rho, "p_value": rho, "n": 16},
                "overlap": {"labels": labels, "frac": 0.3, "k": 4, "n": 16, "expected": 0.25, "overlap": rho, "shared": [], "p_value": rho},
                "cross_shot": {"shots": [0, 1], "mean": [[1.0, 0.42], [0.42, 1.0]], "variance": [[0.0, 0.01], [0.01, 0.0]], "n_tasks": [[2, 2], [2, 2]], "max_p_value": [[0.0, 0.03], [0.03, 0.0]], "per_task": []}})
        .to_string(),
    );
    write(&dir.join("compare/correlations.csv"), "a,b,rho\ncopa@0,copa@1,0.4\n");
    let top = |m: &Vec<Vec<f64>>| {
        let mut v: Vec<_> = m.iter().enumerate().flat_map(|(l, r)| r.iter().enumerate().map(move |(h, s)| json!({"layer": l, "head": h, "score": s}))).collect();
        v.truncate(10);
        v
    };
    let (pm, cm) = (mat(nl, nh, 3.0), mat(nl, nh, 4.0));
    let cap: Vec<f64> = (0..=nl * nh).map(|i| 1.0 - i as f64 / (nl * nh) as f64).collect();
    write(
        &dir.join("induction/induction.json"),
        &json!({"model": "tiny", "n_layers": nl, "n_heads": nh, "options": {"sequences": 8},
                "prefix": {"mean": pm, "var": pm}, "copying": {"mean": cm, "var": cm},
                "top_prefix": top(&pm), "top_copying": top(&cm),
                "capacity": {"importance_file": "importance/copa.1shot.json", "prefix_retained": cap, "copy_retained": cap}})
        .to_string(),
    );
    let point = |k: usize, top: f64| json!({"k": k, "top_heads": [], "top_accuracy": top, "random_accuracies": [0.6, 0.64],
                                           "random": {"n": 2, "mean": 0.62, "std": 0.02, "min": 0.6, "max": 0.64}});
    write(
        &dir.join("induction/ablation.json"),
        &json!({"induction": "induction/induction.json", "target": "Prefix", "results": [
            {"task": "copa", "shots": 0, "metric": "acc", "n": 20, "result": {"plan": {"ks": [2, 4], "random_sets": 2, "seed": 0},
             "baseline": 0.65, "points": [point(2, 0.55), point(4, 0.515)]}}]})
        .to_string(),
    );
}

fn keep_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("HEADROOM_REPORT_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            (None, d)
        }
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

/// Expected figures: 4 head heatmaps + 2 aggregates, 4 FFN bars + 2 aggregates, pruning panels
/// (per shot count: 2 tasks + the mean, for heads and for FFNs), 2 combined grids, 4 oracle bars,
/// SRCC + overlap, 2 induction heatmaps, 1 capacity, 1 induction ablation.
const FIGURES: usize = 6 + 6 + 2 * 2 * 3 + 2 + 4 + 2 + 2 + 1 + 1;

fn check_html(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"), "no doctype");
    assert!(html.trim_end().ends_with("</html>"));
    for tag in ["html", "head", "body", "style", "table", "section", "figure", "svg"] {
        let open = html.matches(&format!("<{tag}")).count() - html.matches(&format!("<{tag}l")).count() * usize::from(tag == "html") ;
        let close = html.matches(&format!("</{tag}>")).count();
        if tag != "html" {
            assert_eq!(html.matches(&format!("<{tag}>")).count() + html.matches(&format!("<{tag} ")).count(), close, "unbalanced <{tag}>");
        } else {
            assert!(open >= 1 && close == 1);
        }
    }
    for section in headroom::report::SECTIONS {
        assert!(html.contains(&format!("<h2>{}</h2>", headroom::report::escape(section))), "missing section {section}");
    }
    assert!(!html.contains("http://") && !html.contains("https://"), "network reference in the page");
    for bad in ["<script", "<link", "<img src=\"/", "@import", "url("] {
        assert!(!html.contains(bad), "external resource or script: {bad}");
    }
    // Text is escaped: the deviation's markup shows as text.
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && html.contains("&amp;"));
    assert!(html.contains("abc123&lt;def&gt;"));
    // Tables and values.
    assert!(html.contains("holdout") && html.contains("validation (holdout)"), "split deviations");
    assert!(html.contains("0.42"), "cross-shot mean");
    assert!(html.contains("L0 H0"), "top-10 induction table");
    assert!(html.contains("0.515") && html.contains("0.620 ± 0.020"), "induction ablation table");
    assert!(html.contains("href=\"sweeps/heads.csv\""), "tidy CSV link");
}

#[test]
fn full_run_folder_renders_every_section_inlined() {
    let (_t, dir) = keep_dir();
    synthetic_run(&dir);
    let out = dir.join("report.html");
    let r = headroom::report::build(&dir, &out).unwrap();
    assert!(r.missing.is_empty(), "missing: {:?}", r.missing);
    let html = std::fs::read_to_string(&out).unwrap();
    check_html(&html);
    assert_eq!(r.figures.len(), FIGURES, "{:?}", r.figures);
    assert_eq!(html.matches("<figure>").count(), FIGURES);
    assert_eq!(html.matches("<svg ").count(), FIGURES);
    for f in &r.figures {
        assert!(f.starts_with(dir.join("figures")));
        let png = std::fs::read(f.with_extension("png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 5_000, "{}: {} bytes", f.display(), png.len());
        assert!(std::fs::metadata(f).unwrap().len() > 2_000);
    }
    assert_eq!(r.sections, headroom::report::SECTIONS.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    chromium(&out, &dir);
}

/// The text of every `<text>` element of an SVG, trimmed (plotters puts it on its own line).
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text").skip(1).filter_map(|t| t.split_once('>').and_then(|(_, r)| r.split_once("</text>")).map(|(c, _)| c.trim().to_string())).collect()
}

/// The HTML of one section (by its id).
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let i = html.find(&format!("<section id=\"{id}\">")).unwrap_or_else(|| panic!("no section {id}"));
    &html[i..i + html[i..].find("</section>").unwrap()]
}

/// Each task's pruning panel overlays own, aggregate and the random control with one stderr band
/// each and the chance level; differences within the noise get a warning line, larger ones none.
#[test]
fn pruning_panels_overlay_rankings_with_bands_chance_and_noise_warnings() {
    let t = tempfile::tempdir().unwrap();
    synthetic_run(t.path());
    let out = t.path().join("report.html");
    headroom::report::build(t.path(), &out).unwrap();
    let figs = t.path().join("figures");
    let copa = std::fs::read_to_string(figs.join("prune-heads-0shot-copa.svg")).unwrap();
    let texts = svg_texts(&copa);
    for label in ["own", "aggregate", "random:1", "chance (1/2: 0.50)"] {
        assert!(texts.iter().any(|t| t == label), "legend has no {label:?}: {texts:?}");
    }
    assert_eq!(copa.matches("<polygon opacity=\"0.18\"").count(), 3, "one stderr band per ranking");
    let mean = std::fs::read_to_string(figs.join("prune-heads-0shot-mean_over_2_tasks.svg")).unwrap();
    let texts = svg_texts(&mean);
    assert!(texts.iter().any(|t| t == "chance (mean over tasks: 0.50)"), "{texts:?}");
    assert!(texts.iter().any(|t| t == "random:1"), "{texts:?}");
    assert_eq!(mean.matches("<polygon opacity=\"0.18\"").count(), 3);
    let html = std::fs::read_to_string(&out).unwrap();
    let sweeps = section(&html, "accuracy-vs-pruning");
    // own and random:1 coincide up to 10% (stderr of the difference 0.02·√2 = 0.028), then part.
    assert!(sweeps.contains("copa, 0-shot: own − random:1 is smaller than its stderr at 10% (+0.000 ± 0.028)</p>"), "{sweeps}");
    // The aggregate trails own by 0.01 at every level: within the noise at all ten.
    assert!(sweeps.contains("piqa, 1-shot: own − aggregate is smaller than its stderr at 10% (+0.010 ± 0.028), 20%"));
    assert!(!sweeps.contains("own − random:1 is smaller than its stderr at 10% (+0.000 ± 0.028), 20%"), "a 0.08 gap is not noise");
}

/// The "Paper vs this run" table shows what the run's files give, computed independently here.
#[test]
fn paper_vs_run_table_matches_the_files() {
    use headroom::compare::{argsort_correlation, flatten, spearman, top_overlap};
    let t = tempfile::tempdir().unwrap();
    synthetic_run(t.path());
    let out = t.path().join("report.html");
    headroom::report::build(t.path(), &out).unwrap();
    let html = std::fs::read_to_string(&out).unwrap();
    let table = section(&html, "paper-vs-this-run");
    // The section comes right after "Run": the first thing a reader sees.
    assert!(html.find("id=\"run\"").unwrap() < html.find("id=\"paper-vs-this-run\"").unwrap());
    assert!(html.find("id=\"paper-vs-this-run\"").unwrap() < html.find("id=\"manifest-and-options\"").unwrap());
    // Importance of (task, k) in synthetic_run: mat(4, 4, task index + 0.5 k).
    let m = |seed: f64| flatten(&mat(4, 4, seed));
    let (c0, c1, p0, p1) = (m(0.0), m(0.5), m(1.0), m(1.5));
    let sp = spearman(&c0, &p0).unwrap().rho;
    let ar = argsort_correlation(&c0, &p0).unwrap().rho;
    assert!(table.contains(&format!("0-shot: Spearman <b>{sp:.3}</b> · argsort {ar:.3} (1 task pair)")), "{table}");
    let cs = (spearman(&c0, &c1).unwrap().rho + spearman(&p0, &p1).unwrap().rho) / 2.0;
    let ca = (argsort_correlation(&c0, &c1).unwrap().rho + argsort_correlation(&p0, &p1).unwrap().rho) / 2.0;
    assert!(table.contains(&format!("0- vs 1-shot: Spearman <b>{cs:.3}</b> · argsort {ca:.3} (2 tasks)")), "{table}");
    let ov = top_overlap(&c1, &p1, 0.3).unwrap().overlap;
    assert!(table.contains(&format!("1-shot: <b>{:.0}%</b> (1 task pair)", 100.0 * ov)), "{table}");
    // Shares removable: the `average` rows of inflection.csv.
    for cell in ["own ranking, 0-shot: <b>30%</b>", "own ranking, 1-shot: <b>60%</b>", "gradient ranking, 0-shot: <b>20%</b>", "gradient ranking, 1-shot: <b>10%</b>"] {
        assert!(table.contains(cell), "no {cell}: {table}");
    }
    // The paper's values, only those the docs state.
    for v in ["≈70%", "≈20%", "71%"] {
        assert!(table.contains(&format!("<b>{v}</b>")), "no paper value {v}");
    }
    assert!(table.matches("<td>—</td>").count() >= 3, "findings without a paper value say —");
    // Induction heads: the 10 strongest prefix-matching heads placed in the mean 0-shot importance.
    let agg: Vec<f64> = c0.iter().zip(&p0).map(|(a, b)| (a + b) / 2.0).collect();
    let r = headroom::findings::induction_rank(&flatten(&mat(4, 4, 3.0)), &agg, 10, 0.3).unwrap();
    let cell = format!("median percentile <b>{:.0}</b> in the 0-shot aggregate importance; {} of 10 in its top 30%", headroom::findings::median(&r.percentiles), r.in_top);
    assert!(table.contains(&cell), "no {cell}: {table}");
    // The 1-shot mean's stderr (0.02) exceeds the tolerance (0.01): one warning per kind.
    assert_eq!(table.matches("stderr (0.020) is larger than the tolerance (0.01)").count(), 2, "{table}");
    assert!(!table.contains("stderr (0.005)"), "0-shot is not noise-limited");
    // The random control at 50%: own 0.4 above random, far outside the noise.
    assert!(table.contains("random:1 <b>"), "{table}");
    assert!(!table.contains("cannot tell the own ranking from random"));
}

#[test]
fn empty_run_folder_says_what_is_missing() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("r.html");
    let r = headroom::report::build(t.path(), &out).unwrap();
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(r.figures.is_empty());
    for m in ["manifest.json", "eval/&lt;task&gt;.&lt;k&gt;shot.json", "sweeps/heads.csv", "compare/compare.json", "induction/induction.json"] {
        assert!(html.contains(m), "no note that {m} is missing");
    }
    assert!(r.missing.iter().any(|m| m == "sweeps/combined.csv"));
    assert!(html.contains("Not in this run"));
}

#[test]
fn cli_prints_the_path() {
    let t = tempfile::tempdir().unwrap();
    synthetic_run(t.path());
    let o = Command::new(env!("CARGO_BIN_EXE_headroom")).arg("report").arg(t.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = String::from_utf8(o.stdout).unwrap();
    assert_eq!(PathBuf::from(printed.trim()), t.path().join("report.html"));
    assert!(t.path().join("report.html").exists());
    let o = Command::new(env!("CARGO_BIN_EXE_headroom")).arg("report").arg(t.path().join("nope")).output().unwrap();
    assert!(!o.status.success());
}

fn chromium_bin() -> Option<PathBuf> {
    common::chromium()
}

/// Loads `page` in headless Chromium with a screenshot to `shot`; returns the console-error
/// lines about the page and the screenshot bytes.
fn load(bin: &Path, page: &Path, shot: &Path) -> (Vec<String>, Vec<u8>) {
    let profile = tempfile::tempdir().unwrap();
    let _ = std::fs::remove_file(shot);
    let url = format!("file://{}", std::fs::canonicalize(page).unwrap().display());
    let o = Command::new(bin)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--enable-logging=stderr", "--v=0"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1200,3000")
        .arg(&url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium failed: {err}");
    let console: Vec<String> = err
        .lines()
        // The page has no scripts, so any console message from it is an error (Chromium logs
        // console.error at INFO level: `INFO:CONSOLE:1] "boom", source: file:///...`).
        .filter(|l| l.contains("Uncaught") || (l.contains(":CONSOLE") && l.contains(&url)) || l.contains("Failed to load resource") || l.contains("net::ERR"))
        .map(String::from)
        .collect();
    let png = std::fs::read(shot).unwrap_or_else(|e| panic!("no screenshot {}: {e}\n{err}", shot.display()));
    (console, png)
}

/// The report loads in headless Chromium: a non-trivial screenshot and no console errors.
fn chromium(page: &Path, dir: &Path) {
    let Some(bin) = chromium_bin() else { return };
    let shot = dir.join("report-screenshot.png");
    let (console, png) = load(&bin, page, &shot);
    assert!(console.is_empty(), "console errors:\n{}", console.join("\n"));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(w >= 1000 && h >= 2000, "screenshot {w}x{h}");
    assert!(png.len() > 50_000, "screenshot only {} bytes: blank page?", png.len());
    eprintln!("screenshot: {} ({} bytes)", shot.display(), png.len());
}

/// The console check can fail: a page with a script error and a console.error is caught.
#[test]
fn chromium_check_catches_console_errors() {
    let Some(bin) = chromium_bin() else { return };
    let t = tempfile::tempdir().unwrap();
    let page = t.path().join("bad.html");
    std::fs::write(&page, "<!DOCTYPE html><html><body><p>x</p><script>console.error('boom'); throw new Error('bad')</script></body></html>").unwrap();
    let (console, _) = load(&bin, &page, &t.path().join("bad.png"));
    assert!(console.iter().any(|l| l.contains("Uncaught")), "{console:?}");
    assert!(console.iter().any(|l| l.contains("boom")), "{console:?}");
}
