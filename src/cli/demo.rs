use anyhow::Result;
use candle_core::Device;
use clap::Args;
use headroom::assets;
use headroom::tokenizer::Tokenizer;

#[derive(Args)]
pub struct DemoArgs {
    /// Random tokens in the sequence that is shown twice.
    #[arg(long, default_value_t = 40)]
    tokens: usize,
    /// Seed for the random sequence.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: DemoArgs, dev: &Device) -> Result<()> {
    let cache = assets::cache_dir()?;
    if !assets::default_model_path(&cache).exists() {
        eprintln!("default model not in {}: fetching it", cache.display());
        assets::fetch(&[assets::Asset::Model], &cache, assets::FetchOptions::default(), &mut |l: &str| eprintln!("{l}"))?;
    }
    let (path, m) = super::load_model("default", dev)?;
    let i = &m.info;
    println!(
        "model: {} ({} {}, {} layers x {} heads ({} kv), hidden {}, {:.1}M parameters)",
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
    println!("\n{prompt:?} ->");
    for &id in super::ranked(&lp).iter().take(5) {
        println!("  {:>7.4}  {:?}", (lp[id] as f64).exp(), tok.decode(&[id as u32])?);
    }
    let r = headroom::model::repeated_sequence_nll(&m, args.tokens, args.seed)?;
    println!(
        "\nrandom sequence of {} tokens shown twice (seed {}): mean NLL {:.2} on the first copy, {:.2} on the second",
        args.tokens, args.seed, r.first, r.second
    );
    println!("(a drop means heads that copy from context -- induction heads -- are at work)");
    Ok(())
}
