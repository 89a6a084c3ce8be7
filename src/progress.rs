//! The one progress-bar style of the CLI and of the long-running library stages (a pruning
//! run): `  <what> [=====>    ] pos/len rate eta`. indicatif hides bars when stderr is not a
//! terminal, so tests and logs stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `n` steps, prefixed with `what`.
pub fn bar(n: usize, what: &str) -> ProgressBar {
    let b = ProgressBar::new(n as u64);
    b.set_style(
        ProgressStyle::with_template("  {prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(what.to_string());
    b
}
