//! Forward throughput: headroom (candle, f32) beside PyTorch (transformers, f32) in one run.
//!
//! `cargo bench --bench forward` prints tokens/s and achieved GFLOP/s for an OPT-125m-shaped
//! model with random weights and the default model (if fetched), batch 4 x 256, and the same
//! through transformers when a Python with torch is found, with the ratio.
//! Env: HEADROOM_BENCH_ITERS (3), HEADROOM_BENCH_BATCH (4), HEADROOM_BENCH_SEQ (256),
//! HEADROOM_BENCH_PYTHON.

mod common;


use candle_core::Device;
use common::*;
use headroom::model::{kernels, Model};

fn main() {
    headroom::tune_allocator(); // as the binary does
    headroom::tune_thread_pools();
    let iters = env_usize("HEADROOM_BENCH_ITERS", 3);
    let (b, t) = (env_usize("HEADROOM_BENCH_BATCH", 4), env_usize("HEADROOM_BENCH_SEQ", 256));
    let py = python();
    println!("forward, f32, batch {b} x {t}, {iters} iterations, {} threads", threads());
    println!("{:<28} {:>14} {:>9} {:>14} {:>14} {:>9} {:>8}", "model", "headroom tok/s", "GFLOP/s", "composed tok/s", "pytorch tok/s", "GFLOP/s", "ratio");
    let mut rows: Vec<(String, Model, Option<std::path::PathBuf>)> = vec![("opt-125m (random)".into(), opt_125m(), None)];
    if let Some(p) = default_model_path() {
        rows.push(("smollm2-135m (gguf q4_1)".into(), Model::load(&p, &Device::Cpu).expect("default model"), Some(p)));
    }
    for (name, m, gguf) in rows {
        let secs = time_forward(&m, b, t, iters);
        // The fused kernels off (candle ops composed, src/model/kernels.rs): what they bought.
        let composed = kernels::composed(|| time_forward(&m, b, t, iters));
        let flops = forward_flops(&m, b, t, b * t);
        let which = if gguf.is_some() { "gguf" } else { "opt-125m" };
        let torch = py.as_deref().and_then(|p| torch_run(p, "forward", which, b, t, iters, gguf.as_deref())).and_then(|v| v["seconds_per_iter"].as_f64());
        let (tt, tg, ratio) = match torch {
            Some(ts) => (format!("{:.0}", (b * t) as f64 / ts), format!("{:.1}", flops / ts / 1e9), format!("{:.2}x", ts / secs)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!("{name:<28} {:>14.0} {:>9.1} {:>14.0} {tt:>14} {tg:>9} {ratio:>8}", (b * t) as f64 / secs, flops / secs / 1e9, (b * t) as f64 / composed);
    }
    println!("ratio = PyTorch time / headroom time (> 1: headroom is faster)");
}
