//! Importance throughput (forward + activation-only backward to every head and FFN gate):
//! headroom beside PyTorch doing the same computation with frozen weights
//! (tools/bench_torch.py --mode importance: gates on every head and FFN output, weights
//! frozen), batch 4 x 256, f32, LM loss over every position (as that baseline), plus the peak
//! memory of the pass on the default model.
//! Env: HEADROOM_BENCH_ITERS (2), HEADROOM_BENCH_BATCH (4), HEADROOM_BENCH_SEQ (256).

mod common;

use std::time::Instant;

use candle_core::Device;
use common::*;
use headroom::model::{kernels, Layout, Model, Target};

fn time_importance(m: &Model, b: usize, t: usize, iters: usize) -> f64 {
    let ids = m.batch_ids(&batch(m, b, t)).expect("batch");
    let targets: Vec<Target> = (0..b).map(|row| Target { row, start: 1, len: t - 1 }).collect();
    m.gate_gradients(&ids, &Layout::Causal, None, &targets).expect("warmup");
    let start = Instant::now();
    for _ in 0..iters {
        let g = m.gate_gradients(&ids, &Layout::Causal, None, &targets).expect("importance");
        assert!(g.losses.iter().all(|x| x.is_finite()));
    }
    start.elapsed().as_secs_f64() / iters as f64
}

fn main() {
    headroom::tune_allocator(); // as the binary does
    headroom::tune_thread_pools();
    let iters = env_usize("HEADROOM_BENCH_ITERS", 2);
    let (b, t) = (env_usize("HEADROOM_BENCH_BATCH", 4), env_usize("HEADROOM_BENCH_SEQ", 256));
    let py = python();
    println!("importance (forward + input-gradient backward), f32, batch {b} x {t}, {iters} iterations, {} threads", threads());
    println!("{:<28} {:>14} {:>9} {:>14} {:>14} {:>9} {:>8}", "model", "headroom tok/s", "GFLOP/s", "composed tok/s", "pytorch tok/s", "GFLOP/s", "ratio");
    // The default model first, so the process's peak RSS is its pass alone.
    let mut rows: Vec<(String, Option<std::path::PathBuf>)> = vec![];
    if let Some(p) = default_model_path() {
        rows.push(("smollm2-135m (gguf q4_1)".into(), Some(p)));
    }
    rows.push(("opt-125m (random)".into(), None));
    let mut memory_line = None;
    for (name, gguf) in rows {
        let m = match &gguf {
            Some(p) => Model::load(p, &Device::Cpu).expect("default model"),
            None => opt_125m(),
        };
        let secs = time_importance(&m, b, t, iters);
        if gguf.is_some() {
            let weights = m.info.n_params as f64 * 4.0;
            let peak = peak_rss().unwrap_or(0) as f64;
            // The activations the pass keeps (when they fit the keep budget, which now follows
            // free memory) on top of the weights and one copy of them in flight.
            let kept = (m.block_activation_bytes(b, t) * m.n_layers()) as f64;
            let budget = 2.0 * weights + kept.max((1u64 << 30) as f64);
            memory_line = Some(format!(
                "peak memory (default model pass): {:.2} GiB; budget 2 x f32 weights ({:.2} GiB) + kept activations ({:.2} GiB, at least 1 GiB) = {:.2} GiB: {}",
                peak / 1073741824.0,
                weights / 1073741824.0,
                kept / 1073741824.0,
                budget / 1073741824.0,
                if peak <= budget { "within" } else { "OVER" }
            ));
        }
        // The fused kernels off (candle ops composed, src/model/kernels.rs): what they bought
        // (after the memory line: its peak is the kernels' pass alone).
        let composed = kernels::composed(|| time_importance(&m, b, t, iters));
        // Work: forward + input-gradient backward (~ one more forward), plus a recomputed forward
        // when the activations exceed the keep budget (Model::activation_policy).
        let keep = match m.activation_policy() {
            headroom::model::Activations::Auto { budget_bytes } => m.block_activation_bytes(b, t) * m.n_layers() <= budget_bytes,
            a => a == headroom::model::Activations::Keep,
        };
        let passes = if keep { 2.0 } else { 3.0 };
        let flops = passes * forward_flops(&m, b, t, b * (t - 1));
        let which = if gguf.is_some() { "gguf" } else { "opt-125m" };
        let torch = py.as_deref().and_then(|p| torch_run(p, "importance", which, b, t, iters, gguf.as_deref())).and_then(|v| v["seconds_per_iter"].as_f64());
        // PyTorch keeps activations (no recompute): 2 forwards' worth of FLOPs.
        let (tt, tg, ratio) = match torch {
            Some(ts) => (format!("{:.0}", (b * t) as f64 / ts), format!("{:.1}", flops * 2.0 / passes / ts / 1e9), format!("{:.2}x", ts / secs)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{name:<28} {:>14.0} {:>9.1} {:>14.0} {tt:>14} {tg:>9} {ratio:>8}  ({})",
            (b * t) as f64 / secs,
            flops / secs / 1e9,
            (b * t) as f64 / composed,
            if keep { "activations kept" } else { "activations recomputed" }
        );
    }
    if let Some(l) = memory_line {
        println!("{l}");
    }
    println!("ratio = PyTorch time / headroom time (> 1: headroom is faster); target >= 1.5x");
}
