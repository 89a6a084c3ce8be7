use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct ReportArgs {
    /// A run folder (manifest.json, importance/, sweeps/, eval/, induction/, compare/, ...).
    run: PathBuf,
    /// Where to write the page [default: RUN/report.html]. Figures go to RUN/figures/.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let out = args.out.unwrap_or_else(|| args.run.join("report.html"));
    let r = headroom::report::build(&args.run, &out)?;
    for m in &r.missing {
        eprintln!("not in this run: {m}");
    }
    eprintln!("{} sections, {} figures", r.sections.len(), r.figures.len());
    println!("{}", r.html.display());
    Ok(())
}
