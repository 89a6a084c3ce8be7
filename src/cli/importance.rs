use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use headroom::importance::{self, AbsMode, ImportanceOptions, Normalize, Prompt};
use headroom::io::{read_jsonl, write_atomic};
use headroom::tokenizer::Tokenizer;

#[derive(Args)]
pub struct ImportanceArgs {
    /// A Hugging Face folder, a .gguf file, a hub id `org/name[@revision][:FILE.gguf]` already in
    /// the local Hugging Face cache (see docs/models.md), or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    /// JSONL, one `{"context": ..., "continuation": ...}` per line; the loss is the mean NLL of
    /// the continuation (tokenized separately from the context, as the authors did).
    #[arg(long)]
    prompts: PathBuf,
    /// Where the absolute value is taken: per token (the authors' code), per example
    /// (eq. 8 / Michel), or per batch.
    #[arg(long, value_enum, default_value_t = AbsMode::PerToken)]
    abs_mode: AbsMode,
    /// Normalization: authors (token counts, last layer by label tokens), tokens, none, michel.
    #[arg(long, value_enum, default_value_t = Normalize::Authors)]
    normalize: Normalize,
    /// Examples per forward/backward pass (the authors used 1; per-token and per-example scores
    /// do not depend on it).
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Use at most the first N prompts (the authors used the first 2500 training documents).
    #[arg(long)]
    max_examples: Option<usize>,
    /// Score the model under this mask (JSON `{"heads": .., "ffns": ..}`); default: full model.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Also write contributions.jsonl: each example's raw head/FFN sums and token counts, which
    /// `headroom compare --bootstrap` resamples (per_token / per_example abs modes only).
    #[arg(long)]
    per_example: bool,
    /// Output folder: importance.json, heads.csv, ffns.csv (and contributions.jsonl).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: ImportanceArgs, dev: &super::Runtime) -> Result<()> {
    let mut prompts: Vec<Prompt> = read_jsonl(&args.prompts)?;
    if let Some(n) = args.max_examples {
        prompts.truncate(n);
    }
    if prompts.is_empty() {
        bail!("{}: no prompts", args.prompts.display());
    }
    let (path, model) = super::load_model(&args.model, dev)?;
    let tok = Tokenizer::for_model(&path)?;
    let (tokenized, truncated) = importance::tokenize_prompts(&tok, &prompts, model.info.context_length)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.prompts.display()))?;
    if truncated > 0 {
        eprintln!("warning: {truncated} prompts were longer than the context ({}) and lost tokens from the left", model.info.context_length);
    }
    let mask = super::load_mask(args.mask.as_ref(), &model)?;
    let total_tokens: u64 = tokenized.iter().map(|p| p.len() as u64).sum();
    let bar = headroom::progress::bar(tokenized.len(), "importance");
    let start = Instant::now();
    if args.per_example && args.abs_mode == AbsMode::PerBatch {
        bail!("--per-example needs --abs-mode per-token or per-example (per-batch sums are not per example)");
    }
    let opts = ImportanceOptions { abs_mode: args.abs_mode, batch_size: args.batch_size, mask, keep_per_example: args.per_example };
    let (sums, per_example) = importance::accumulate(&model, &tokenized, &opts, &mut |done, toks| {
        bar.set_position(done as u64);
        bar.set_message(format!("{:.0} tok/s", toks as f64 / start.elapsed().as_secs_f64()));
    })?;
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    let scores = sums.scores(args.normalize);
    headroom::artifacts::ImportanceFile {
        schema_version: headroom::artifacts::SCHEMA_VERSION,
        task: None,
        shots: None,
        normalize: args.normalize,
        abs_mode: args.abs_mode,
        heads: scores.heads.clone(),
        ffns: scores.ffns.clone(),
        examples: sums.examples,
        mean_loss: sums.mean_loss(),
        model: serde_json::to_value(&model.info)?,
        pool: None,
        prompts: Some(args.prompts.display().to_string()),
        options: Some(serde_json::json!({"batch_size": args.batch_size, "max_examples": args.max_examples, "mask": args.mask})),
        run: Some(serde_json::json!({
            "truncated_prompts": truncated,
            "seconds": secs,
            "tokens_per_second": total_tokens as f64 / secs,
            "tool": concat!("headroom ", env!("CARGO_PKG_VERSION")),
        })),
        sums: sums.clone(),
    }
    .write(&args.out.join("importance.json"))?;
    write_atomic(&args.out.join("heads.csv"), importance::heads_csv(&scores, &sums).as_bytes())?;
    write_atomic(&args.out.join("ffns.csv"), importance::ffns_csv(&scores, &sums).as_bytes())?;
    if let Some(ex) = per_example {
        let mut lines = String::new();
        for e in &ex {
            lines.push_str(&serde_json::to_string(e)?);
            lines.push('\n');
        }
        write_atomic(&args.out.join(super::compare::CONTRIBUTIONS_FILE), lines.as_bytes())?;
    }
    // The five most and least important heads, as a glance.
    let mut flat: Vec<(usize, usize, f64)> =
        scores.heads.iter().enumerate().flat_map(|(l, r)| r.iter().enumerate().map(move |(h, &v)| (l, h, v))).collect();
    flat.sort_by(|a, b| b.2.total_cmp(&a.2));
    println!("{} examples, {} tokens in {secs:.1}s ({:.0} tok/s); mean loss {:.4}", sums.examples, total_tokens, total_tokens as f64 / secs, sums.mean_loss());
    println!("most important heads: {}", flat.iter().take(5).map(|(l, h, v)| format!("L{l}H{h} {v:.3e}")).collect::<Vec<_>>().join(", "));
    println!("least important heads: {}", flat.iter().rev().take(5).map(|(l, h, v)| format!("L{l}H{h} {v:.3e}")).collect::<Vec<_>>().join(", "));
    println!("wrote {}", args.out.display());
    super::report_streaming(&model);
    Ok(())
}
