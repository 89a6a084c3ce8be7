//! headroom: which attention heads and FFN blocks does in-context learning need?
//!
//! Library layout (see docs/design.md):
//! - [`formats`]: file formats (GGUF reader/writer, HF safetensors folders).
//! - [`tokenizer`]: tokenizers from tokenizer.json, vocab.json + merges.txt, or GGUF metadata.
//! - [`model`]: one shared set of transformer blocks, one file per model family, masks.
//! - [`importance`]: gradient importance of heads and FFNs (spec 3.1).
//! - [`compare`]: rank correlations, top-k overlap, cross-task/shot tables, bootstrap (spec 6).
//! - [`plots`]: SVG + PNG figures (heatmaps, bars, curves) from plain data.
//! - [`induction`]: prefix-matching and copying scores, capacity curves, induction-head ablation.
//! - [`artifacts`]: the typed, versioned files of a run folder (importance, aggregate, inflection).
//! - [`assets`]: the pinned default assets (`headroom fetch`).
//! - [`checkpoint`]: seeded random checkpoints of real model shapes (HF folders, GGUF), streamed.
//! - [`io`]: JSONL reading with line numbers, atomic writes, sha256.
//! - [`runs`]: run folders (manifest, hashed units, resume, shards, merge).
//! - [`prune`]: rankings, cumulative masks, sweeps, FFN oracle, inflection points;
//!   [`prune::experiment`] runs the paper's whole pruning experiment into a run folder.
//! - [`ranking`]: the one ascending ranking (NaN rule documented there) and seeded random ranking.
//! - [`progress`]: the progress-bar style shared by the CLI and long library stages.
//! - [`tasks`]: the paper's tasks and user TOML tasks, splits, k-shot prompts, importance prompts.
//! - [`report`]: one self-contained HTML page from a run folder.
//! - [`eval`]: few-shot scoring (shared-prefix tree batches) and metrics.
//! - [`lmeval`]: lm-evaluation-harness 0.4 `results_*.json` / `samples_*.jsonl` from eval output.
//!
//! Every stage is a function over plain data; the binary in `src/main.rs` is a thin CLI.

pub mod artifacts;
pub mod assets;
pub mod checkpoint;
pub mod compare;
pub mod eval;
pub mod findings;
pub mod formats;
pub mod importance;
pub mod io;
pub mod lmeval;
pub mod induction;
pub mod model;
pub mod plots;
pub mod progress;
pub mod prune;
pub mod ranking;
pub mod report;
pub mod runs;
pub mod tasks;
pub mod tokenizer;

pub use anyhow::{Error, Result};

/// Keeps candle's element-wise thread pool from spinning on the cores gemm and the fused
/// kernels need. candle 0.11 runs its element-wise ops on its own pool, whose workers spin up to
/// 25,000 times after each op before they park; gemm and src/model/kernels.rs run on rayon's
/// pool. On a machine with as many busy threads as cores, the spinning workers took cycles from
/// the next matmul (barrier waits were 4% of an importance pass). A short spin keeps the pool
/// responsive for back-to-back ops and lets it park quickly otherwise. Call before any candle
/// op (the pool reads the setting when it starts); a user's own setting wins.
pub fn tune_thread_pools() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
}

/// Sets glibc's allocator so that activation-sized buffers are reused from the heap instead of
/// being mapped and unmapped on every op. glibc maps allocations over its mmap threshold
/// (128 KiB at first, raised dynamically) straight from the kernel and unmaps them on free, so
/// a forward pass paid a page fault per 4 KiB of every fresh activation (the benches showed a
/// third of their time in the kernel). A fixed 32 MiB threshold (glibc's largest) keeps such
/// buffers in the heap; blocks of weights (hundreds of MB) are still mapped and returned to the
/// system when dropped, which streaming relies on. The trim threshold keeps up to 256 MiB of freed heap
/// for reuse. Numbers are unchanged; a user's own `GLIBC_TUNABLES` for malloc wins.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc")) {
            return;
        }
        // SAFETY: mallopt only changes allocator parameters; called before other threads start.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        }
    }
}
