use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use headroom::tasks::prompt;

#[derive(Args)]
pub struct PromptsArgs {
    /// A task name (see `headroom tasks`) or a .toml task file (`--task` is an alias).
    #[arg(long = "tasks", alias = "task")]
    task: String,
    /// Demonstrations per prompt.
    #[arg(long, default_value_t = 0)]
    shots: usize,
    /// The first N pool documents, in order (the authors: 2500).
    #[arg(long, default_value_t = 2500)]
    max_docs: usize,
    /// Seeds the demonstrations (the authors' importance runs: 1234).
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Give the gold continuation its leading space (the authors' targets have none for most
    /// multiple-choice tasks, spec 9.3).
    #[arg(long)]
    leading_space: bool,
    /// Never draw a document as its own demonstration.
    #[arg(long)]
    exclude_query: bool,
    #[command(flatten)]
    source: super::eval::TaskSource,
    /// Output JSONL file of `{"context", "continuation"}` lines.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: PromptsArgs) -> Result<()> {
    let names = std::slice::from_ref(&args.task);
    args.source.check(names)?;
    let task = args.source.load(names, 0, true)?;
    let pairs = prompt::importance_prompts(
        &task,
        &prompt::ImportanceOptions {
            shots: args.shots,
            max_docs: args.max_docs,
            seed: args.seed,
            leading_space: args.leading_space,
            exclude_query: args.exclude_query,
        },
    )?;
    let mut buf = Vec::new();
    prompt::write_jsonl(&pairs, &mut buf)?;
    headroom::io::write_atomic(&args.out, &buf)?;
    println!("{}: {} prompts ({}-shot, pool {}) -> {}", task.name, pairs.len(), args.shots, task.split.pool_source, args.out.display());
    Ok(())
}
