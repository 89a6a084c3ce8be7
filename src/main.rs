//! `headroom`: a thin CLI over the library. Each subcommand lives in `src/cli/<name>.rs`.
//! Errors print as a chain and exit with code 2.

mod cli;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "headroom", version, about = "Which attention heads and FFN blocks does in-context learning need?")]
struct Cli {
    /// Where to compute: `cpu`, or `cuda` / `cuda:N` when built with `--features cuda`; a
    /// comma-separated list (`cuda:0,cuda:1`, `cuda:all`, `cpu,cpu`) splits the layers into
    /// contiguous ranges, one per device.
    #[arg(long, global = true, default_value = "cpu", env = "HEADROOM_DEVICE")]
    device: String,
    /// Compute dtype of the blocks: `auto` (bf16 on CUDA, f16 for f16-only checkpoints there;
    /// f32 on CPU), `f32`, `bf16` or `f16`. It changes the numbers: run folders record it.
    #[arg(long, global = true, default_value = "auto")]
    dtype: String,
    /// `resident` (every block materialised once), `stream` (each block materialised from the
    /// checkpoint just before it runs; for models larger than memory) or `auto` (resident when
    /// it fits in 70% of free memory, `$HEADROOM_RESIDENT_FRACTION`). Same numbers either way.
    #[arg(long, global = true, default_value = "auto")]
    weights: String,
    /// More detail on stderr (the data files each task read, with their sha256).
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    verbose: bool,
    /// Errors and warnings only: no progress bars or lines.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rank correlations, top-k overlaps and (with TASK@K labels) the cross-shot table between
    /// importance files, with optional bootstrap intervals and heatmaps.
    Compare(cli::compare::CompareArgs),
    /// The paper's whole pipeline on the default model (fetch, importance, pruning sweeps,
    /// induction heads, rank statistics, HTML report) in under 30 minutes on a laptop CPU;
    /// resumable. `--tiny` is the CI-sized variant.
    Demo(cli::demo::DemoArgs),
    /// Few-shot evaluation of tasks (accuracy, per-example log-likelihoods) under an optional mask.
    Eval(cli::eval::EvalArgs),
    /// Download the pinned default assets (model; with --data, task data) into the cache.
    Fetch(cli::fetch::FetchArgs),
    /// Score every attention head and FFN block by gradient importance on a prompt file.
    Importance(cli::importance::ImportanceArgs),
    /// Per-head prefix-matching and copying scores on random token sequences (induction heads).
    Induction(cli::induction::InductionArgs),
    /// Print a model's architecture: family, layers, heads, sizes, parameters, dtypes.
    Inspect(cli::inspect::InspectArgs),
    /// Write a seeded random checkpoint of a named model shape (HF folder or GGUF), streaming.
    MakeCheckpoint(cli::make_checkpoint::MakeCheckpointArgs),
    /// Join shard run folders (from `--shard i/N` or a Slurm job array) into one.
    Merge(cli::merge::MergeArgs),
    /// The paper's pruning experiments as one resumable, shardable run: importance, rankings,
    /// head/FFN/combined sweeps, FFN oracle, tidy CSVs and inflection points.
    Prune(cli::prune::PruneArgs),
    /// Task accuracy with the top-k induction heads removed vs k random heads (seeded sets).
    InductionAblate(cli::induction_ablate::InductionAblateArgs),
    /// Show the top-K next tokens after a prompt, with log-probabilities.
    Next(cli::next::NextArgs),
    /// Export a task's importance prompts as `{"context", "continuation"}` JSONL.
    Prompts(cli::prompts::PromptsArgs),
    /// One self-contained HTML page (figures inlined, tables, manifest, deviations) from a run folder.
    Report(cli::report::ReportArgs),
    /// List the built-in tasks, their splits and whether their data is present.
    Tasks(cli::tasks::TasksArgs),
}

fn main() -> ExitCode {
    headroom::tune_allocator();
    headroom::tune_thread_pools();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    headroom::progress::set_verbosity(match (cli.quiet, cli.verbose) {
        (true, _) => headroom::progress::Verbosity::Quiet,
        (false, true) => headroom::progress::Verbosity::Verbose,
        (false, false) => headroom::progress::Verbosity::Normal,
    });
    let runs_model = !matches!(
        cli.command,
        Command::Compare(_)
            | Command::Fetch(_)
            | Command::MakeCheckpoint(_)
            | Command::Merge(_)
            | Command::Prompts(_)
            | Command::Report(_)
            | Command::Tasks(_)
    );
    if !runs_model && (cli.dtype != "auto" || cli.weights != "auto") {
        anyhow::bail!("--dtype and --weights apply to commands that run a model; this command runs none");
    }
    let rt = cli::Runtime::new(&cli.device, &cli.dtype, &cli.weights)?;
    let dev = &rt;
    match cli.command {
        Command::Compare(a) => cli::compare::run(a),
        Command::Demo(a) => cli::demo::run(a, dev),
        Command::Fetch(a) => cli::fetch::run(a),
        Command::Importance(a) => cli::importance::run(a, dev),
        Command::Induction(a) => cli::induction::run(a, dev),
        Command::Inspect(a) => cli::inspect::run(a, dev),
        Command::MakeCheckpoint(a) => cli::make_checkpoint::run(a),
        Command::Merge(a) => cli::merge::run(a),
        Command::Prune(a) => cli::prune::run(a, dev),
        Command::InductionAblate(a) => cli::induction_ablate::run(a, dev),
        Command::Next(a) => cli::next::run(a, dev),
        Command::Eval(a) => cli::eval::run(a, dev),
        Command::Prompts(a) => cli::prompts::run(a),
        Command::Report(a) => cli::report::run(a),
        Command::Tasks(a) => cli::tasks::run(a),
    }
}
