//! Streamed vs resident weights, and how fast blocks are materialised from the checkpoint.
//!
//! `cargo bench --bench streaming` prints, per model, the forward tokens/s with every block
//! resident and with blocks streamed from the checkpoint (built just before they run, one block
//! of prefetch; target: streamed >= 0.8x resident at batch 8 x 512), and the materialisation
//! throughput (stored bytes per second of building blocks one after another, page cache
//! dropped first) against the disk's cold sequential read rate of the same files (target >= 50%).
//! Models: the default model (GGUF Q4_1, if fetched) and an OPT-1.3B-shaped random bf16 HF
//! folder written once by `headroom make-checkpoint` under target/bench-checkpoints/.
//! Env: HEADROOM_BENCH_BATCH (8), HEADROOM_BENCH_SEQ (512), HEADROOM_BENCH_STREAM_SHAPE
//! (opt-1.3b), HEADROOM_BENCH_ITERS (1).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use headroom::model::{ComputeDtype, LoadOptions, Model, Placement, WeightsMode};

fn load(path: &Path, weights: WeightsMode) -> Model {
    let opts = LoadOptions { dtype: ComputeDtype::F32, weights, placement: Placement::cpu() };
    Model::load_with(path, &opts).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

/// The checkpoint's files (a GGUF file, or a folder's safetensors).
fn weight_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(path)
        .expect("model folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    v.sort();
    v
}

/// Evicts the files' pages from the page cache (POSIX_FADV_DONTNEED drops clean pages), so the
/// next read comes from the disk.
fn drop_cache(files: &[PathBuf]) {
    use std::os::fd::AsRawFd;
    for f in files {
        let file = std::fs::File::open(f).expect("open");
        // SAFETY: a plain syscall on an open descriptor.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// Cold sequential read of the files, bytes/s.
fn cold_read_rate(files: &[PathBuf]) -> f64 {
    drop_cache(files);
    let mut buf = vec![0u8; 16 << 20];
    let mut total = 0u64;
    let t = Instant::now();
    for f in files {
        let mut file = std::fs::File::open(f).expect("open");
        loop {
            let n = file.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    total as f64 / t.elapsed().as_secs_f64()
}

/// Builds every block once from a cold cache, one after another: stored bytes/s.
fn materialise_rate(path: &Path, files: &[PathBuf]) -> f64 {
    let m = load(path, WeightsMode::Stream);
    drop_cache(files);
    for l in 0..m.n_layers() {
        drop(m.blocks.get(l).expect("block"));
    }
    let s = m.blocks.stream_stats().expect("streamed");
    s.bytes_read as f64 / s.materialise.as_secs_f64()
}

fn forward_rate(m: &Model, b: usize, t: usize, iters: usize) -> f64 {
    (b * t) as f64 / time_forward(m, b, t, iters)
}

fn random_checkpoint(shape: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-checkpoints").join(format!("{shape}-bf16"));
    if !dir.join("config.json").exists() {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_headroom"))
            .args(["make-checkpoint", "--shape", shape, "--format", "hf", "--weight-dtype", "bf16", "--force", "--out"])
            .arg(&dir)
            .status()
            .expect("headroom make-checkpoint");
        assert!(status.success(), "make-checkpoint {shape} failed");
    }
    dir
}

fn main() {
    headroom::tune_allocator(); // as the binary does
    headroom::tune_thread_pools();
    let (b, t) = (env_usize("HEADROOM_BENCH_BATCH", 8), env_usize("HEADROOM_BENCH_SEQ", 512));
    let iters = env_usize("HEADROOM_BENCH_ITERS", 1);
    let shape = std::env::var("HEADROOM_BENCH_STREAM_SHAPE").unwrap_or_else(|_| "opt-1.3b".into());
    println!("streamed vs resident weights, f32 compute, forward at batch {b} x {t}, {} threads", threads());
    println!(
        "{:<28} {:>12} {:>12} {:>7} {:>14} {:>14} {:>7}",
        "model", "resident t/s", "streamed t/s", "ratio", "materialise", "cold disk", "ratio"
    );
    let mut models: Vec<(String, PathBuf)> = Vec::new();
    if let Some(p) = default_model_path() {
        models.push(("smollm2-135m (gguf q4_1)".into(), p));
    }
    models.push((format!("{shape} (random, bf16 hf)"), random_checkpoint(&shape)));
    for (name, path) in models {
        let files = weight_files(&path);
        let resident = load(&path, WeightsMode::Resident);
        let r = forward_rate(&resident, b, t, iters);
        drop(resident);
        let streamed = load(&path, WeightsMode::Stream);
        let s = forward_rate(&streamed, b, t, iters);
        let waited = streamed.blocks.stream_stats().map_or(0.0, |x| x.waited.as_secs_f64());
        drop(streamed);
        let mat = materialise_rate(&path, &files);
        let disk = cold_read_rate(&files);
        println!(
            "{name:<28} {r:>12.0} {s:>12.0} {:>6.2}x {:>9.2} GB/s {:>9.2} GB/s {:>6.0}%   (compute waited {waited:.1}s for blocks)",
            s / r,
            mat / 1e9,
            disk / 1e9,
            100.0 * mat / disk
        );
    }
    println!("ratio = streamed / resident tokens/s; materialise = stored bytes built into f32 blocks per second, cold cache");
}
