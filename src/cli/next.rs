use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use headroom::tokenizer::Tokenizer;

#[derive(Args)]
pub struct NextArgs {
    /// A Hugging Face folder, a .gguf file, a hub id `org/name[@revision][:FILE.gguf]` already in
    /// the local Hugging Face cache (see docs/models.md), or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    /// The prompt (no special tokens are added, as in the paper's evaluation).
    #[arg(long)]
    prompt: String,
    /// How many tokens to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// A mask JSON file `{"heads": [[..]..], "ffns": [..]}` (1 keep, 0 remove).
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: NextArgs, dev: &super::Runtime) -> Result<()> {
    let (path, m) = super::load_model(&args.model, dev)?;
    let tok = Tokenizer::for_model(&path)?;
    let ids = tok.encode(&args.prompt)?;
    if ids.is_empty() {
        bail!("the prompt tokenizes to nothing");
    }
    let mask = super::load_mask(args.mask.as_ref(), &m)?;
    let lp = m.next_token_log_probs(&ids, mask.as_ref())?;
    let mut rows = Vec::new();
    for &id in super::ranked(&lp).iter().take(args.top) {
        let text = tok.decode(&[id as u32])?;
        rows.push(serde_json::json!({"id": id, "token": text, "log_prob": lp[id], "prob": (lp[id] as f64).exp()}));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"prompt_tokens": ids.len(), "top": rows}))?);
        return Ok(());
    }
    println!("prompt: {} tokens; top {} next tokens:", ids.len(), args.top);
    println!("{:>4}  {:>7}  {:>9}  {:>7}  token", "rank", "id", "log_prob", "prob");
    for (r, row) in rows.iter().enumerate() {
        println!(
            "{:>4}  {:>7}  {:>9.4}  {:>7.4}  {:?}",
            r + 1,
            row["id"],
            row["log_prob"].as_f64().unwrap_or(f64::NAN),
            row["prob"].as_f64().unwrap_or(f64::NAN),
            row["token"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
