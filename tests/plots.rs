//! Every figure kind renders to a valid PNG (signature, IHDR size = the plot's size, non-trivial
//! content) and a well-formed SVG that contains its title. Set HEADROOM_PLOT_DIR to keep the files.

use std::path::{Path, PathBuf};

use headroom::plots::{self, BarPlot, Heatmap, LinePlot, Plot, Series};

fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("HEADROOM_PLOT_DIR") {
        Some(d) => (None, PathBuf::from(d)),
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

/// PNG signature, IHDR width/height, and a file big enough to hold more than a blank canvas.
fn check_png(path: &Path, size: (u32, u32)) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}: not a PNG", path.display());
    assert_eq!(&b[12..16], b"IHDR");
    let w = u32::from_be_bytes(b[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(b[20..24].try_into().unwrap());
    assert_eq!((w, h), size, "{}", path.display());
    assert!(b.len() > 8_000, "{}: only {} bytes", path.display(), b.len());
    assert_eq!(&b[b.len() - 8..b.len() - 4], b"IEND");
}

/// XML-ish well-formedness: every tag closes in order; the title text is there (XML-escaped).
fn check_svg(path: &Path, title: &str) {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(s.contains("<svg"), "{}: no <svg>", path.display());
    let escaped = title.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    assert!(s.contains(&escaped), "{}: title {title:?} missing", path.display());
    let mut stack: Vec<String> = Vec::new();
    let mut rest = s.as_str();
    while let Some(i) = rest.find('<') {
        let j = rest[i..].find('>').unwrap_or_else(|| panic!("{}: unterminated tag", path.display())) + i;
        let tag = &rest[i + 1..j];
        if tag.starts_with('?') || tag.starts_with('!') {
            // declaration or comment
        } else if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.trim()), "{}: mismatched </{name}>", path.display());
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap().to_string());
        }
        rest = &rest[j + 1..];
    }
    assert!(stack.is_empty(), "{}: unclosed {stack:?}", path.display());
    assert!(s.len() > 2_000);
}

fn check(plot: &impl Plot, dir: &Path, name: &str, title: &str) {
    let r = plots::render(plot, &dir.join(name)).unwrap();
    assert_eq!(r.png, dir.join(format!("{name}.png")));
    check_png(&r.png, plot.size());
    check_svg(&r.svg, title);
}

fn heads(l: usize, h: usize) -> Vec<Vec<f64>> {
    (0..l).map(|i| (0..h).map(|j| ((i * 7 + j * 3) % 11) as f64 * 1e-4 + i as f64 * 2e-5).collect()).collect()
}

#[test]
fn heatmaps_render() {
    let (_keep, dir) = out_dir();
    let t = plots::title("Head importance", "opt-125m", "copa", Some(1));
    assert_eq!(t, "Head importance — opt-125m, copa, 1-shot");
    check(&Heatmap::heads(&t, &heads(12, 12), "importance"), &dir, "heads", &t);
    // Many layers: labels are thinned, cells small.
    let t2 = plots::title("Prefix matching", "opt-66b", "", None);
    let mut big = Heatmap::heads(&t2, &heads(64, 72), "prefix-matching score");
    big.log = true;
    check(&big, &dir, "prefix_big", &t2);
    let labels: Vec<String> = ["copa", "winogrande", "hellaswag", "record", "aggregate", "random"].iter().map(|s| s.to_string()).collect();
    let rho: Vec<Vec<f64>> = (0..6).map(|i| (0..6).map(|j| if i == j { 1.0 } else { 0.9 - 0.25 * (i as f64 - j as f64).abs() }).collect()).collect();
    let t3 = "Spearman rank correlation across tasks (0-shot) & <aggregate>";
    check(&Heatmap::correlation(t3, &labels, &rho, "Spearman"), &dir, "srcc", t3);
    let acc: Vec<Vec<f64>> = (0..8).map(|i| (0..6).map(|j| 0.7 - 0.03 * i as f64 - 0.05 * j as f64).collect()).collect();
    let pct = |n: usize| (0..n).map(|i| (i * 10) as f64).collect::<Vec<_>>();
    check(&Heatmap::grid("Combined pruning", &pct(8), &pct(6), &acc, "accuracy"), &dir, "grid", "Combined pruning");
}

#[test]
fn lines_and_bars_render() {
    let (_keep, dir) = out_dir();
    let x: Vec<f64> = (0..10).map(|i| (i * 10) as f64).collect();
    let tasks: Vec<Series> = (0..14)
        .map(|t| {
            let y: Vec<f64> = x.iter().map(|p| 0.75 - 0.002 * t as f64 * p / 10.0 - (p / 100.0).powi(3) * 0.4).collect();
            Series::new(format!("task{t}"), x.clone(), y).with_band(vec![0.01; 10])
        })
        .collect();
    let avg = Series::new("average", x.clone(), x.iter().map(|p| 0.7 - (p / 100.0).powi(3) * 0.4).collect());
    let t = "Accuracy vs heads pruned — opt-125m, 0-shot";
    check(&LinePlot::pruning(t, "heads", tasks, Some(avg)), &dir, "pruning", t);
    let curve = |k: f64| Series::new(format!("k={k}"), (0..=100).map(|i| i as f64).collect(), (0..=100).map(|i| 100.0 * (1.0 - (i as f64 / 100.0).powf(k))).collect());
    check(&LinePlot::capacity("Capacity retained", vec![curve(0.5), curve(2.0)]), &dir, "capacity", "Capacity retained");
    let t = "FFN importance — opt-125m, copa, 0-shot";
    check(&BarPlot::ffns(t, &(0..12).map(|l| 0.01 * (l as f64 - 3.0)).collect::<Vec<_>>(), "accuracy drop"), &dir, "ffns", t);
    let groups: Vec<String> = ["copa", "winogrande", "hellaswag", "piqa"].iter().map(|s| s.to_string()).collect();
    let t = "Induction ablation";
    let p = BarPlot::induction_ablation(t, groups, Some(vec![0.7, 0.6, 0.5, 0.72]), vec![0.55, 0.52, 0.4, 0.6], vec![0.68, 0.58, 0.49, 0.7], vec![0.02, 0.03, 0.01, 0.02]);
    check(&p, &dir, "induction", t);
    // Many long group names: labels are written downwards.
    let names = ["arc_challenge", "arc_easy", "boolq", "copa", "hellaswag", "lambada", "mathqa", "multirc", "openbookqa", "piqa", "record", "rte", "winogrande", "wsc"];
    let groups: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let n = groups.len();
    let v = |a: f64| (0..n).map(|i| a + 0.01 * i as f64).collect::<Vec<_>>();
    let p = BarPlot::induction_ablation("Induction ablation, 14 tasks", groups, None, v(0.4), v(0.5), vec![0.02; n]);
    check(&p, &dir, "induction14", "Induction ablation, 14 tasks");
}

/// Head heatmaps put layer 0 at the top (TransformerLens's convention): a matrix whose row 0 alone
/// is high draws its brightest cells above every other cell.
#[test]
fn head_heatmaps_put_layer_0_at_the_top() {
    let (_keep, dir) = out_dir();
    let mut m = vec![vec![0.0; 3]; 5];
    m[0] = vec![1.0; 3];
    let r = plots::render(&Heatmap::heads("layer 0 high", &m, "score"), &dir.join("layer0")).unwrap();
    let svg = std::fs::read_to_string(r.svg).unwrap();
    let ys = |fill: &str| -> Vec<i64> {
        svg.split("<rect ")
            .filter(|r| r.contains(&format!("fill=\"{fill}\"")))
            .filter_map(|r| r.split_once(" y=\"").and_then(|(_, v)| v.split_once('"')).and_then(|(v, _)| v.parse().ok()))
            .collect()
    };
    let (top, rest) = (ys("#FDE725"), ys("#440154"));
    assert_eq!((top.len(), rest.len()), (3, 12), "cells by colour");
    assert!(top.iter().max() < rest.iter().min(), "layer 0 at y {top:?}, the others at {rest:?}");
}

/// The sequential scale is readable in greyscale: its luma rises monotonically from low to high.
#[test]
fn sequential_scale_is_monotonic_in_lightness() {
    let luma = |t: f64| {
        let c = plots::ColorScale::Sequential.color(t);
        0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64
    };
    let l: Vec<f64> = (0..=100).map(|i| luma(i as f64 / 100.0)).collect();
    assert!(l.windows(2).all(|w| w[1] > w[0]), "{l:?}");
}

#[test]
fn bad_inputs_are_errors() {
    let (_keep, dir) = out_dir();
    let ragged = Heatmap::heads("ragged", &[vec![1.0, 2.0], vec![1.0]], "x");
    assert!(plots::render(&ragged, &dir.join("ragged")).is_err());
    let empty = LinePlot::pruning("empty", "heads", vec![], None);
    assert!(plots::render(&empty, &dir.join("empty")).is_err());
    let mismatched = LinePlot::pruning("m", "heads", vec![Series::new("a", vec![1.0, 2.0], vec![1.0])], None);
    assert!(plots::render(&mismatched, &dir.join("m")).is_err());
}
