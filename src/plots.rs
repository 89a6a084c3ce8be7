//! Figures as SVG + PNG, from plain data (no run folders, no CLI types).
//!
//! Every figure is a value of one of four kinds, drawn by [`render`] into `STEM.svg` and
//! `STEM.png`:
//! - [`Heatmap`]: head importance (layer x head, layer 0 at the top as in TransformerLens and
//!   the paper's figures), prefix-matching and copying scores (the same), correlation matrices
//!   (values in the cells, diverging scale), the combined heads% x FFNs% pruning grid;
//! - [`LinePlot`]: accuracy vs % pruned (one line per ranking or task, a bold average, optional
//!   ± stderr bands, dashed reference lines such as the chance level), capacity-retained curves;
//! - [`BarPlot`]: FFN importance per layer, grouped bars with error bars (induction ablation).
//!
//! Text: PNGs are rasterized with ab_glyph from DejaVu Sans compiled into the binary (the
//! `dejavu` crate), so no system fonts, fontconfig or font files are needed at run time. SVGs keep
//! text as `<text>` elements (font-family sans-serif), so titles are searchable in the file.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, ensure, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

/// Registers the embedded fonts with plotters (idempotent).
pub fn init_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Both are valid TrueType files shipped by the dejavu crate; a failure would be a bug there.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// A title that names what is shown, the model, the task and the shots, e.g.
/// "Head importance — opt-125m, copa, 1-shot".
pub fn title(what: &str, model: &str, task: &str, shots: Option<usize>) -> String {
    let mut parts: Vec<String> = [model, task].iter().filter(|s| !s.is_empty()).map(|s| s.to_string()).collect();
    if let Some(k) = shots {
        parts.push(format!("{k}-shot"));
    }
    if parts.is_empty() {
        what.to_string()
    } else {
        format!("{what} — {}", parts.join(", "))
    }
}

/// Paths written by [`render`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub svg: PathBuf,
    pub png: PathBuf,
}

/// A figure that can draw itself on any plotters backend.
pub trait Plot {
    /// Pixel size (the SVG's user units, the PNG's pixels).
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// Writes `STEM.svg` and `STEM.png` (creating the folder).
pub fn render(plot: &impl Plot, stem: &Path) -> Result<Rendered> {
    init_fonts();
    if let Some(dir) = stem.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let size = plot.size();
    {
        let mut text = String::new();
        {
            let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
            plot.draw(&root)?;
            root.present()?;
        }
        crate::io::write_atomic(&svg, text.as_bytes())?;
    }
    {
        // The bitmap backend encodes to a file on present(): draw into a temp file beside the
        // target and rename it, so a crash never leaves a half-written PNG.
        let name = png.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = png.with_file_name(format!(".{name}.tmp-{}.png", std::process::id()));
        {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            plot.draw(&root)?;
            root.present()?;
        }
        std::fs::rename(&tmp, &png).map_err(|e| anyhow!("cannot rename {} to {}: {e}", tmp.display(), png.display()))?;
    }
    Ok(Rendered { svg, png })
}

// ------------------------------------------------------------------------------------------------
// Colours and text.
// ------------------------------------------------------------------------------------------------

/// How values map to colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorScale {
    /// Viridis, low = dark purple, high = yellow: perceptually uniform and monotonic in lightness,
    /// so it stays readable printed in greyscale.
    Sequential,
    /// Blue - white - red, centred on 0 (for correlations). Not greyscale-safe (both ends are
    /// dark), so it is only used with the value printed in each cell.
    Diverging,
}

const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
];
const RDBU: [(u8, u8, u8); 5] = [(5, 48, 97), (67, 147, 195), (247, 247, 247), (214, 96, 77), (103, 0, 31)];

fn interpolate(stops: &[(u8, u8, u8)], t: f64) -> RGBColor {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let pos = t * (stops.len() - 1) as f64;
    let i = (pos.floor() as usize).min(stops.len() - 2);
    let f = pos - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (stops[i], stops[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

impl ColorScale {
    /// Colour of `t` in [0, 1] along the scale.
    pub fn color(self, t: f64) -> RGBColor {
        match self {
            ColorScale::Sequential => interpolate(&VIRIDIS, t),
            ColorScale::Diverging => interpolate(&RDBU, t),
        }
    }
}

/// Categorical colours (Tableau 20 order: ten strong, then ten light).
const PALETTE: [(u8, u8, u8); 20] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
];

pub fn palette(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

fn font(size: f64) -> TextStyle<'static> {
    ("sans-serif", size).into_font().into()
}

fn bold(size: f64) -> TextStyle<'static> {
    ("sans-serif", size).into_font().style(FontStyle::Bold).into()
}

/// A short, readable number: 3 significant digits, scientific outside [0.01, 10000).
pub fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        return "–".into();
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-2..1e4).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Tick labels for an axis spanning [lo, hi]: one number of decimals for all ticks (enough to
/// tell ticks ~1/10 of the span apart), scientific when the values are tiny or huge.
pub fn axis_fmt(lo: f64, hi: f64) -> impl Fn(&f64) -> String {
    let big = lo.abs().max(hi.abs());
    let scientific = big >= 1e4 || (big < 1e-2 && big > 0.0);
    let span = (hi - lo).abs();
    let decimals = if span > 0.0 { (-(span / 10.0).log10()).ceil().clamp(0.0, 4.0) as usize } else { 2 };
    move |v: &f64| {
        if scientific {
            if *v == 0.0 { "0".into() } else { format!("{v:.1e}") }
        } else {
            format!("{v:.decimals$}")
        }
    }
}

/// A cell annotation: two decimals for values like correlations and accuracies.
fn fmt_cell(v: f64) -> String {
    if v.is_finite() && v.abs() < 10.0 && (v == 0.0 || v.abs() >= 1e-2) {
        format!("{v:.2}")
    } else {
        fmt_num(v)
    }
}

/// Tick positions at cell centres, thinned to at most `max` labels.
fn centre_ticks(n: usize, max: usize) -> Vec<f64> {
    let step = n.div_ceil(max.max(1)).max(1);
    (0..n).step_by(step).map(|i| i as f64 + 0.5).collect()
}

/// An f64 axis whose ticks are exactly the given positions (e.g. cell centres).
struct Ticks {
    inner: plotters::coord::types::RangedCoordf64,
    ticks: Vec<f64>,
}

fn ticked(lo: f64, hi: f64, ticks: Vec<f64>) -> Ticks {
    Ticks { inner: (lo..hi).into(), ticks }
}

impl plotters::coord::ranged1d::Ranged for Ticks {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(v, limit)
    }
    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }
    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

/// Column labels written downwards below the axis, starting just under each tick. (plotters
/// centres rotated mesh labels on the tick, so half of each would sit above the axis.)
fn rotated_x_labels<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, labels: impl Iterator<Item = ((i32, i32), String)>) -> Result<()>
where
    DB::ErrorType: 'static,
{
    for ((x, y), label) in labels {
        let style = font(14.0).transform(FontTransform::Rotate90).pos(Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new(label, (x, y + 8), style))?;
    }
    Ok(())
}

fn text_width(s: &str, size: f64) -> u32 {
    // DejaVu Sans averages ~0.6 em per character.
    (s.chars().count() as f64 * size * 0.6).ceil() as u32
}

// ------------------------------------------------------------------------------------------------
// Heatmap.
// ------------------------------------------------------------------------------------------------

/// A matrix of values as coloured cells, with a colour bar.
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// `values[row][col]`.
    pub values: Vec<Vec<f64>>,
    /// Row / column tick labels; empty = the indices 0, 1, ...
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    /// Row 0 at the top (matrices) instead of the bottom (layers, "upper layers" up).
    pub rows_from_top: bool,
    pub scale: ColorScale,
    /// Colour range; None = the data's (symmetric around 0 for a diverging scale).
    pub range: Option<(f64, f64)>,
    /// Colour by log10 (values <= 0 get the lowest colour).
    pub log: bool,
    /// Print each value in its cell.
    pub annotate: bool,
    pub colorbar_label: String,
}

impl Heatmap {
    /// Head scores `[L][H]`: x = head, y = layer, layer 0 at the top (TransformerLens's and the
    /// paper's convention: the page reads from the input down). Also for prefix-matching and
    /// copying scores.
    pub fn heads(title: impl Into<String>, heads: &[Vec<f64>], colorbar_label: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: "head".into(),
            y_label: "layer".into(),
            values: heads.to_vec(),
            row_labels: vec![],
            col_labels: vec![],
            rows_from_top: true,
            scale: ColorScale::Sequential,
            range: None,
            log: false,
            annotate: false,
            colorbar_label: colorbar_label.into(),
        }
    }

    /// A square correlation matrix, values in the cells, blue (-1) to red (+1).
    pub fn correlation(title: impl Into<String>, labels: &[String], rho: &[Vec<f64>], statistic: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: String::new(),
            y_label: String::new(),
            values: rho.to_vec(),
            row_labels: labels.to_vec(),
            col_labels: labels.to_vec(),
            rows_from_top: true,
            scale: ColorScale::Diverging,
            range: Some((-1.0, 1.0)),
            log: false,
            annotate: true,
            colorbar_label: statistic.into(),
        }
    }

    /// The combined pruning grid: `acc[i][j]` at `heads_pct[i]`% heads and `ffn_pct[j]`% FFNs
    /// pruned (rows = heads %, from the top).
    pub fn grid(title: impl Into<String>, heads_pct: &[f64], ffn_pct: &[f64], acc: &[Vec<f64>], value_label: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: "% FFNs pruned".into(),
            y_label: "% heads pruned".into(),
            values: acc.to_vec(),
            row_labels: heads_pct.iter().map(|p| format!("{p}")).collect(),
            col_labels: ffn_pct.iter().map(|p| format!("{p}")).collect(),
            rows_from_top: true,
            scale: ColorScale::Sequential,
            range: None,
            log: false,
            annotate: true,
            colorbar_label: value_label.into(),
        }
    }

    fn shape(&self) -> (usize, usize) {
        (self.values.len(), self.values.first().map_or(0, Vec::len))
    }

    fn label_of(labels: &[String], i: usize) -> String {
        labels.get(i).cloned().unwrap_or_else(|| i.to_string())
    }

    fn max_col_label(&self) -> u32 {
        let (_, nx) = self.shape();
        (0..nx).map(|i| text_width(&Self::label_of(&self.col_labels, i), 14.0)).max().unwrap_or(0)
    }

    fn rotate_x(&self) -> bool {
        self.max_col_label() > 28
    }

    /// (lo, hi) in colour space (log10 when `log`).
    fn color_range(&self) -> (f64, f64) {
        let tr = |v: f64| if self.log { if v > 0.0 { v.log10() } else { f64::NAN } } else { v };
        let (lo, hi) = match self.range {
            Some((a, b)) => (tr(a), tr(b)),
            None => {
                let vals = self.values.iter().flatten().map(|&v| tr(v)).filter(|v| v.is_finite());
                let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
                if self.scale == ColorScale::Diverging {
                    let m = lo.abs().max(hi.abs());
                    (-m, m)
                } else {
                    (lo, hi)
                }
            }
        };
        if !(lo.is_finite() && hi.is_finite()) {
            (0.0, 1.0)
        } else if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, lo + 0.5)
        }
    }

    fn t_of(&self, v: f64, (lo, hi): (f64, f64)) -> f64 {
        let v = if self.log { if v > 0.0 { v.log10() } else { lo } } else { v };
        (v - lo) / (hi - lo)
    }
}

impl Plot for Heatmap {
    fn size(&self) -> (u32, u32) {
        let (ny, nx) = self.shape();
        let cell = if self.annotate { 56 } else if nx.max(ny) <= 16 { 40 } else if nx.max(ny) <= 40 { 20 } else { 12 };
        let row_label_w = (0..ny).map(|i| text_width(&Self::label_of(&self.row_labels, i), 14.0)).max().unwrap_or(0);
        let x_area = if self.rotate_x() { self.max_col_label() + 30 } else { 60 };
        let w = (nx as u32 * cell + row_label_w + 60 + 190).max(520).max(text_width(&self.title, 22.0) + 40);
        let h = (ny as u32 * cell + x_area + 80).max(420);
        (w, h)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (ny, nx) = self.shape();
        ensure!(ny > 0 && nx > 0, "heatmap `{}` has no values", self.title);
        ensure!(self.values.iter().all(|r| r.len() == nx), "heatmap `{}` has rows of different lengths", self.title);
        root.fill(&WHITE)?;
        let area = root.titled(&self.title, bold(22.0))?;
        let (w, _) = area.dim_in_pixel();
        let (main, bar) = area.split_horizontally(w.saturating_sub(170));
        let range = self.color_range();
        let rotate = self.rotate_x();
        let x_area = if rotate { self.max_col_label() + 20 } else { 50 };
        let row_label_w = (0..ny).map(|i| text_width(&Self::label_of(&self.row_labels, i), 14.0)).max().unwrap_or(0);
        let row_of = |y: f64| -> Option<usize> {
            let i = y.floor();
            if i < 0.0 || i >= ny as f64 {
                return None;
            }
            Some(if self.rows_from_top { ny - 1 - i as usize } else { i as usize })
        };
        let mut chart = ChartBuilder::on(&main)
            .margin(10)
            .x_label_area_size(x_area)
            .y_label_area_size(row_label_w + 40)
            .build_cartesian_2d(
                ticked(0.0, nx as f64, centre_ticks(nx, 32)),
                ticked(0.0, ny as f64, centre_ticks(ny, 32)),
            )?;
        let x_fmt = |x: &f64| {
            if !rotate && *x >= 0.0 && (*x as usize) < nx {
                Self::label_of(&self.col_labels, *x as usize)
            } else {
                String::new()
            }
        };
        let y_fmt = |y: &f64| row_of(*y).map(|i| Self::label_of(&self.row_labels, i)).unwrap_or_default();
        let x_style = font(14.0);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .x_label_style(x_style)
            .y_label_style(font(14.0))
            .axis_desc_style(font(16.0))
            .draw()?;
        if rotate {
            let labels = centre_ticks(nx, 32).into_iter().map(|x| (x, Self::label_of(&self.col_labels, x as usize)));
            rotated_x_labels(root, labels.map(|(x, l)| (chart.backend_coord(&(x, 0.0)), l)))?;
        }
        let cells = (0..ny).flat_map(|r| (0..nx).map(move |c| (r, c)));
        let y_of = |r: usize| if self.rows_from_top { (ny - 1 - r) as f64 } else { r as f64 };
        chart.draw_series(cells.clone().map(|(r, c)| {
            let v = self.values[r][c];
            let color = if v.is_nan() { RGBColor(220, 220, 220) } else { self.scale.color(self.t_of(v, range)) };
            Rectangle::new([(c as f64, y_of(r)), (c as f64 + 1.0, y_of(r) + 1.0)], color.filled())
        }))?;
        if self.annotate {
            let (cw, ch) = chart.plotting_area().dim_in_pixel();
            let cell_px = (cw as f64 / nx as f64).min(ch as f64 / ny as f64);
            let size = (cell_px * 0.28).clamp(8.0, 16.0);
            chart.draw_series(cells.map(|(r, c)| {
                let v = self.values[r][c];
                let color = if v.is_nan() { RGBColor(220, 220, 220) } else { self.scale.color(self.t_of(v, range)) };
                let luminance = 0.299 * color.0 as f64 + 0.587 * color.1 as f64 + 0.114 * color.2 as f64;
                let ink: &'static RGBColor = if luminance < 128.0 { &WHITE } else { &BLACK };
                let style = font(size).color(ink).pos(Pos::new(HPos::Center, VPos::Center));
                Text::new(fmt_cell(v), (c as f64 + 0.5, y_of(r) + 0.5), style)
            }))?;
        }
        // Colour bar: a column of thin cells over the colour range, labels on the right.
        let mut cb = ChartBuilder::on(&bar)
            .margin_top(10)
            .margin_bottom(10 + x_area)
            .margin_left(10)
            .margin_right(4)
            .right_y_label_area_size(90)
            .build_cartesian_2d(0f64..1f64, range.0..range.1)?;
        let log = self.log;
        let lin = axis_fmt(range.0, range.1);
        let cb_fmt = |v: &f64| if log { fmt_num(10f64.powf(*v)) } else { lin(v) };
        cb.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(10)
            .y_label_formatter(&cb_fmt)
            .y_label_style(font(13.0))
            .y_desc(self.colorbar_label.as_str())
            .axis_desc_style(font(14.0))
            .draw()?;
        let steps = 128;
        cb.draw_series((0..steps).map(|i| {
            let a = range.0 + (range.1 - range.0) * i as f64 / steps as f64;
            let b = range.0 + (range.1 - range.0) * (i + 1) as f64 / steps as f64;
            Rectangle::new([(0.0, a), (1.0, b)], self.scale.color((i as f64 + 0.5) / steps as f64).filled())
        }))?;
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Line plot.
// ------------------------------------------------------------------------------------------------

/// One line; `band` = ± half-widths drawn as a shaded band (e.g. standard errors).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub band: Option<Vec<f64>>,
    /// A fixed colour (so one ranking has one colour in every panel); None = the palette by
    /// position.
    pub color: Option<(u8, u8, u8)>,
    /// Drawn dashed (a control, e.g. the random ranking, told apart from the others in print).
    pub dashed: bool,
}

impl Series {
    pub fn new(label: impl Into<String>, x: Vec<f64>, y: Vec<f64>) -> Self {
        Self { label: label.into(), x, y, band: None, color: None, dashed: false }
    }
    pub fn with_band(mut self, band: Vec<f64>) -> Self {
        self.band = Some(band);
        self
    }
    pub fn with_color(mut self, rgb: (u8, u8, u8)) -> Self {
        self.color = Some(rgb);
        self
    }
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// A horizontal reference line across the plot (e.g. the chance level), dashed grey, named in
/// the legend.
#[derive(Clone, Debug, PartialEq)]
pub struct RefLine {
    pub label: String,
    pub y: f64,
}

/// Lines with markers, an optional bold black "average" line, and a legend to the right.
#[derive(Clone, Debug, PartialEq)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub average: Option<Series>,
    /// Horizontal reference lines (chance level); they widen the y range to stay visible.
    pub reference: Vec<RefLine>,
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
}

impl LinePlot {
    /// Accuracy vs % of `what` ("heads", "FFNs") pruned: one line per task and the average.
    pub fn pruning(title: impl Into<String>, what: &str, tasks: Vec<Series>, average: Option<Series>) -> Self {
        Self {
            title: title.into(),
            x_label: format!("% {what} pruned"),
            y_label: "accuracy".into(),
            series: tasks,
            average,
            reference: vec![],
            x_range: None,
            y_range: None,
        }
    }

    /// Capacity retained (%, 100 -> 0) vs % heads pruned, one curve per ranking or score.
    pub fn capacity(title: impl Into<String>, curves: Vec<Series>) -> Self {
        Self {
            title: title.into(),
            x_label: "% heads pruned (least important first)".into(),
            y_label: "% capacity retained".into(),
            series: curves,
            average: None,
            reference: vec![],
            x_range: Some((0.0, 100.0)),
            y_range: Some((0.0, 100.0)),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Series> {
        self.series.iter().chain(self.average.iter())
    }

    /// A dashed horizontal line at `y` named `label` in the legend.
    pub fn with_reference(mut self, label: impl Into<String>, y: f64) -> Self {
        self.reference.push(RefLine { label: label.into(), y });
        self
    }

    fn legend_width(&self) -> u32 {
        let refs = self.reference.iter().map(|r| text_width(&r.label, 14.0));
        self.all().map(|s| text_width(&s.label, 14.0)).chain(refs).max().unwrap_or(0) + 60
    }
}

fn bounds<'a>(vals: impl Iterator<Item = &'a f64>) -> (f64, f64) {
    vals.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)))
}

fn padded((lo, hi): (f64, f64)) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    if hi > lo {
        let p = (hi - lo) * 0.05;
        (lo - p, hi + p)
    } else {
        (lo - 0.5, hi + 0.5)
    }
}

impl Plot for LinePlot {
    fn size(&self) -> (u32, u32) {
        (900 + self.legend_width(), 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        ensure!(self.all().next().is_some(), "line plot `{}` has no series", self.title);
        for s in self.all() {
            ensure!(s.x.len() == s.y.len(), "series `{}`: {} x values, {} y values", s.label, s.x.len(), s.y.len());
            if let Some(b) = &s.band {
                ensure!(b.len() == s.y.len(), "series `{}`: band has {} values, y has {}", s.label, b.len(), s.y.len());
            }
        }
        root.fill(&WHITE)?;
        let area = root.titled(&self.title, bold(22.0))?;
        let (w, _) = area.dim_in_pixel();
        let (main, legend) = area.split_horizontally(w.saturating_sub(self.legend_width()));
        let xr = self.x_range.unwrap_or_else(|| bounds(self.all().flat_map(|s| s.x.iter())));
        let yr = self.y_range.map(padded).unwrap_or_else(|| {
            let lo = self.all().flat_map(|s| s.y.iter().enumerate().map(move |(i, y)| y - s.band.as_ref().map_or(0.0, |b| b[i])));
            let hi = self.all().flat_map(|s| s.y.iter().enumerate().map(move |(i, y)| y + s.band.as_ref().map_or(0.0, |b| b[i])));
            let refs: Vec<f64> = self.reference.iter().map(|r| r.y).collect();
            let (a, _) = bounds(lo.chain(refs.iter().copied()).collect::<Vec<_>>().iter());
            let (_, b) = bounds(hi.chain(refs.iter().copied()).collect::<Vec<_>>().iter());
            padded((a, b))
        });
        let xr = if xr.1 > xr.0 { xr } else { (xr.0 - 0.5, xr.0 + 0.5) };
        let mut chart = ChartBuilder::on(&main)
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(225, 225, 225))
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&axis_fmt(xr.0, xr.1))
            .y_label_formatter(&axis_fmt(yr.0, yr.1))
            .label_style(font(14.0))
            .axis_desc_style(font(16.0))
            .draw()?;
        let styled: Vec<(&Series, RGBColor, u32)> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| (s, s.color.map_or_else(|| palette(i), |(r, g, b)| RGBColor(r, g, b)), 2))
            .chain(self.average.iter().map(|s| (s, BLACK, 4)))
            .collect();
        for (s, color, _) in &styled {
            if let Some(b) = &s.band {
                let upper = s.x.iter().zip(&s.y).zip(b).map(|((x, y), e)| (*x, y + e));
                let lower = s.x.iter().zip(&s.y).zip(b).rev().map(|((x, y), e)| (*x, y - e));
                chart.draw_series(std::iter::once(Polygon::new(upper.chain(lower).collect::<Vec<_>>(), color.mix(0.18).filled())))?;
            }
        }
        // Reference lines are thin, black and finely dashed, unlike any data series (a random
        // control is drawn with long grey dashes).
        let ink = RGBColor(0, 0, 0);
        for r in &self.reference {
            let line = DashedLineSeries::new(vec![(xr.0, r.y), (xr.1, r.y)], 3, 4, ink.stroke_width(1));
            chart.draw_series(line)?;
        }
        for (s, color, width) in &styled {
            let pts: Vec<(f64, f64)> = s.x.iter().copied().zip(s.y.iter().copied()).filter(|(_, y)| y.is_finite()).collect();
            if s.dashed {
                chart.draw_series(DashedLineSeries::new(pts.clone(), 10, 5, color.stroke_width(*width)))?;
            } else {
                chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(*width)))?;
            }
            if pts.len() <= 40 {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, *width + 1, color.filled())))?;
            }
        }
        // Legend: a coloured line and the label per series.
        let (_, lh) = legend.dim_in_pixel();
        let entries = styled.len() + self.reference.len();
        let row = 22i32.min((lh as i32 - 40) / entries.max(1) as i32).max(12);
        for (i, (s, color, width)) in styled.iter().enumerate() {
            let y = 40 + i as i32 * row;
            if s.dashed {
                legend.draw(&PathElement::new(vec![(8, y), (18, y)], color.stroke_width(*width)))?;
                legend.draw(&PathElement::new(vec![(24, y), (36, y)], color.stroke_width(*width)))?;
            } else {
                legend.draw(&PathElement::new(vec![(8, y), (36, y)], color.stroke_width(*width)))?;
            }
            let style = if *width > 2 { bold(14.0) } else { font(14.0) };
            legend.draw(&Text::new(s.label.clone(), (44, y), style.pos(Pos::new(HPos::Left, VPos::Center))))?;
        }
        for (i, r) in self.reference.iter().enumerate() {
            let y = 40 + (styled.len() + i) as i32 * row;
            for x in [8, 15, 22, 29] {
                legend.draw(&PathElement::new(vec![(x, y), (x + 3, y)], ink.stroke_width(1)))?;
            }
            legend.draw(&Text::new(r.label.clone(), (44, y), font(14.0).pos(Pos::new(HPos::Left, VPos::Center))))?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Bars.
// ------------------------------------------------------------------------------------------------

/// One bar per group; `err` = ± half-widths drawn as error bars (e.g. spread over random draws).
#[derive(Clone, Debug, PartialEq)]
pub struct BarSeries {
    pub label: String,
    pub values: Vec<f64>,
    pub err: Option<Vec<f64>>,
}

/// Grouped vertical bars (one series = plain bars).
#[derive(Clone, Debug, PartialEq)]
pub struct BarPlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub groups: Vec<String>,
    pub series: Vec<BarSeries>,
    pub y_range: Option<(f64, f64)>,
}

impl BarPlot {
    /// FFN importance per layer.
    pub fn ffns(title: impl Into<String>, ffns: &[f64], y_label: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: "layer".into(),
            y_label: y_label.into(),
            groups: (0..ffns.len()).map(|l| l.to_string()).collect(),
            series: vec![BarSeries { label: "FFN".into(), values: ffns.to_vec(), err: None }],
            y_range: None,
        }
    }

    /// Induction ablation: per group (task), accuracy with the top-k induction heads removed vs
    /// the mean ± spread over random head sets of the same size (and optionally the full model).
    pub fn induction_ablation(
        title: impl Into<String>,
        groups: Vec<String>,
        full_model: Option<Vec<f64>>,
        induction: Vec<f64>,
        random_mean: Vec<f64>,
        random_spread: Vec<f64>,
    ) -> Self {
        let mut series = Vec::new();
        if let Some(f) = full_model {
            series.push(BarSeries { label: "full model".into(), values: f, err: None });
        }
        series.push(BarSeries { label: "top-k induction heads removed".into(), values: induction, err: None });
        series.push(BarSeries { label: "random k heads removed (mean ± sd)".into(), values: random_mean, err: Some(random_spread) });
        Self { title: title.into(), x_label: String::new(), y_label: "accuracy".into(), groups, series, y_range: None }
    }

    fn legend_height(&self) -> u32 {
        if self.series.len() > 1 {
            10 + 22 * self.series.len() as u32
        } else {
            0
        }
    }

    fn rotate_x(&self) -> bool {
        let n = self.groups.len().max(1) as u32;
        let slot = (900 / n).max(1);
        self.groups.iter().any(|g| text_width(g, 14.0) + 6 > slot)
    }
}

impl Plot for BarPlot {
    fn size(&self) -> (u32, u32) {
        let n = self.groups.len() as u32;
        let per = 18 * self.series.len().max(1) as u32 + 16;
        let x_area = if self.rotate_x() { self.groups.iter().map(|g| text_width(g, 14.0)).max().unwrap_or(0) + 40 } else { 60 };
        ((n * per + 140).clamp(640, 1800).max(text_width(&self.title, 22.0) + 40), 460 + x_area + self.legend_height())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let n = self.groups.len();
        let m = self.series.len();
        ensure!(n > 0 && m > 0, "bar plot `{}` has no bars", self.title);
        for s in &self.series {
            ensure!(s.values.len() == n, "bar series `{}` has {} values for {n} groups", s.label, s.values.len());
            if let Some(e) = &s.err {
                ensure!(e.len() == n, "bar series `{}` has {} error values for {n} groups", s.label, e.len());
            }
        }
        root.fill(&WHITE)?;
        let area = root.titled(&self.title, bold(22.0))?;
        let (_, h) = area.dim_in_pixel();
        let (legend, main) = area.split_vertically(self.legend_height().min(h / 2));
        let lo_hi = self.series.iter().flat_map(|s| {
            s.values.iter().enumerate().flat_map(move |(i, v)| {
                let e = s.err.as_ref().map_or(0.0, |e| e[i]);
                [v - e, v + e]
            })
        });
        let (lo, hi) = bounds(lo_hi.collect::<Vec<_>>().iter());
        let (lo, hi) = self.y_range.unwrap_or_else(|| {
            let lo = lo.min(0.0);
            let hi = hi.max(0.0);
            let p = (hi - lo).max(1e-300) * 0.08;
            (if lo < 0.0 { lo - p } else { 0.0 }, hi + p)
        });
        let rotate = self.rotate_x();
        let x_area = if rotate { self.groups.iter().map(|g| text_width(g, 14.0)).max().unwrap_or(0) + 30 } else { 50 };
        let mut chart = ChartBuilder::on(&main)
            .margin(12)
            .x_label_area_size(x_area)
            .y_label_area_size(80)
            .build_cartesian_2d(ticked(0.0, n as f64, centre_ticks(n, 64)), lo..hi)?;
        let x_fmt = |x: &f64| if rotate { String::new() } else { self.groups.get(*x as usize).cloned().unwrap_or_default() };
        let x_style = font(14.0);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(225, 225, 225))
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&axis_fmt(lo, hi))
            .x_label_style(x_style)
            .y_label_style(font(14.0))
            .axis_desc_style(font(16.0))
            .draw()?;
        if rotate {
            let labels = centre_ticks(n, 64).into_iter().map(|x| (chart.backend_coord(&(x, lo)), self.groups[x as usize].clone()));
            rotated_x_labels(root, labels)?;
        }
        let width = 0.8 / m as f64;
        for (j, s) in self.series.iter().enumerate() {
            let color = if m == 1 { palette(0) } else { palette(j) };
            let x0 = |i: usize| i as f64 + 0.1 + j as f64 * width;
            chart.draw_series(s.values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| {
                Rectangle::new([(x0(i), 0f64.max(lo)), (x0(i) + width * 0.92, v)], color.filled())
            }))?;
            if let Some(err) = &s.err {
                for (i, (&v, &e)) in s.values.iter().zip(err).enumerate() {
                    if !(v.is_finite() && e.is_finite()) {
                        continue;
                    }
                    let xc = x0(i) + width * 0.46;
                    let cap = width * 0.2;
                    let style = BLACK.stroke_width(2);
                    chart.draw_series([
                        PathElement::new(vec![(xc, v - e), (xc, v + e)], style),
                        PathElement::new(vec![(xc - cap, v - e), (xc + cap, v - e)], style),
                        PathElement::new(vec![(xc - cap, v + e), (xc + cap, v + e)], style),
                    ])?;
                }
            }
        }
        if m > 1 {
            for (j, s) in self.series.iter().enumerate() {
                let y = 14 + j as i32 * 22;
                legend.draw(&Rectangle::new([(90, y - 7), (118, y + 7)], palette(j).filled()))?;
                legend.draw(&Text::new(s.label.clone(), (126, y), font(14.0).pos(Pos::new(HPos::Left, VPos::Center))))?;
            }
        }
        Ok(())
    }
}
