use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use headroom::runs;

#[derive(Args)]
pub struct MergeArgs {
    /// Shard run folders to join (their manifests must agree).
    #[arg(required = true)]
    sources: Vec<PathBuf>,
    /// The merged run folder (created if missing; may be one of the sources).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: MergeArgs) -> Result<()> {
    let rep = runs::merge(&args.out, &args.sources)?;
    println!(
        "merged {} folders into {}: {} units copied, {} already present",
        args.sources.len(),
        args.out.display(),
        rep.copied,
        rep.already_present
    );
    println!("re-run the same command with --out {} to finish the tables and plots (finished units are reused)", args.out.display());
    Ok(())
}
