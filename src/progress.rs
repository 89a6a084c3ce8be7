//! The one progress style of the CLI and of the long-running library stages (a pruning run).
//!
//! On a terminal: a bar, `  <what> [=====>    ] pos/len rate eta`. Off a terminal (a Slurm log,
//! a file, a pipe), where a bar would draw nothing: a plain line every few seconds,
//! `<what>: 120/500 (24%) 3.1 it/s eta 2m`, the first one interval after the work starts, and a
//! `done in` line at the end of work that printed any (work that ends within one interval prints
//! nothing). `-q/--quiet` (verbosity [`Verbosity::Quiet`]) silences them. The interval is
//! `HEADROOM_PROGRESS_SECS` seconds (default 10; fractions allowed).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How much the CLI says on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: errors and warnings only; no progress.
    Quiet = 0,
    Normal = 1,
    /// `-v`: also the data files each task read (with sha256) and other detail.
    Verbose = 2,
}

static VERBOSITY: AtomicU8 = AtomicU8::new(Verbosity::Normal as u8);

/// Sets the process-wide verbosity (the CLI's global `-q` / `-v`).
pub fn set_verbosity(v: Verbosity) {
    VERBOSITY.store(v as u8, Ordering::Relaxed);
}

pub fn verbosity() -> Verbosity {
    match VERBOSITY.load(Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        1 => Verbosity::Normal,
        _ => Verbosity::Verbose,
    }
}

/// Seconds between plain progress lines off a terminal.
fn interval() -> Duration {
    std::env::var("HEADROOM_PROGRESS_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(Duration::from_secs(10), Duration::from_secs_f64)
}

/// `2m`, `1h05m`, `42s`.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// One plain progress line.
pub fn line(what: &str, pos: u64, len: u64, elapsed: Duration) -> String {
    let pct = if len > 0 { 100.0 * pos as f64 / len as f64 } else { 100.0 };
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { pos as f64 / secs } else { 0.0 };
    let eta = if rate > 0.0 && len >= pos { short_duration(Duration::from_secs_f64((len - pos) as f64 / rate)) } else { "?".into() };
    format!("{what}: {pos}/{len} ({pct:.0}%) {rate:.1} it/s eta {eta}")
}

/// A progress bar over `n` steps, prefixed with `what`: drawn on a terminal, plain lines
/// elsewhere, nothing under `-q`.
pub fn bar(n: usize, what: &str) -> ProgressBar {
    if verbosity() == Verbosity::Quiet {
        return ProgressBar::hidden();
    }
    if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(n as u64);
        b.set_style(
            ProgressStyle::with_template("  {prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_prefix(what.to_string());
        return b;
    }
    // Off a terminal: the bar draws nothing but keeps count; a thread reads the count every
    // interval and prints a line. It holds a weak handle, so it ends when the bar is finished
    // or dropped. Work that ends within one interval prints nothing (a sweep runs hundreds of
    // short units under one outer bar, and a `0/40 … eta ?` line for each only lengthens Slurm
    // logs); work that printed a line also prints its `done in` line.
    let b = ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::hidden());
    let weak = b.downgrade();
    let label = what.to_string();
    let every = interval();
    let start = Instant::now();
    let spawned = std::thread::Builder::new().name("progress".into()).spawn(move || {
        let tick = every.min(Duration::from_millis(100));
        let mut next = start + every;
        let mut printed = false;
        loop {
            std::thread::sleep(tick);
            let Some(b) = weak.upgrade() else { return };
            let (pos, len) = (b.position(), b.length().unwrap_or(0));
            if b.is_finished() {
                if printed {
                    let _ = writeln!(std::io::stderr(), "{} done in {}", line(&label, pos, len, start.elapsed()), short_duration(start.elapsed()));
                }
                return;
            }
            if Instant::now() >= next {
                let _ = writeln!(std::io::stderr(), "{}", line(&label, pos, len, start.elapsed()));
                printed = true;
                next += every;
            }
        }
    });
    if spawned.is_err() {
        eprintln!("note: cannot start the progress thread; no progress lines for {what}");
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_line() {
        assert_eq!(line("eval copa 0-shot", 120, 500, Duration::from_secs(40)), "eval copa 0-shot: 120/500 (24%) 3.0 it/s eta 2m06s");
    }
}
