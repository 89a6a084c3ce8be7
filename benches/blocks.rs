//! Each component of one decoder layer, forward and input-gradient backward, headroom beside
//! PyTorch (tools/bench_torch.py --mode blocks: the same layer of the same model, weights
//! frozen, the attention as transformers runs it by default, i.e. SDPA). Layer 0 of each model,
//! input `[B, T, D]` random, f32. This is where to look first when a whole-model bench moves:
//! it says which component is behind and by how much. The `composed` columns run the same
//! components with the fused kernels off (src/model/kernels.rs), in the same process.
//! Env: HEADROOM_BENCH_ITERS (5), HEADROOM_BENCH_BATCH (4), HEADROOM_BENCH_SEQ (256).

mod common;

use std::time::Instant;

use candle_core::{Device, Tensor};
use common::*;
use headroom::model::{kernels, Block, Layout, Model};

/// Seconds per call of `f`, after one untimed call (first-touch page faults).
fn time_it(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_secs_f64() / iters as f64
}

/// (name, forward s, backward s) for norm, attention, FFN and the whole block.
fn components(block: &Block, b: usize, t: usize, d: usize, iters: usize) -> Vec<(&'static str, f64, f64)> {
    let dev = Device::Cpu;
    let x = (Tensor::randn(0f32, 1.0, (b, t, d), &dev).unwrap() * 0.5).unwrap();
    let dy = Tensor::randn(0f32, 1.0, (b, t, d), &dev).unwrap();
    let lay = Layout::Causal;
    let mut rows = vec![];
    // The backward alone: each component's backward reads the activations its forward kept.
    let norm_f = time_it(iters, || drop(block.attn_norm.forward(&x).unwrap()));
    let norm_b = time_it(iters, || drop(block.attn_norm.backward(&x, &dy).unwrap()));
    rows.push(("norm", norm_f, norm_b));
    let (_, acts) = block.attn.forward_acts(&x, &lay, None).unwrap();
    let attn_f = time_it(iters, || drop(block.attn.forward_acts(&x, &lay, None).unwrap()));
    let attn_b = time_it(iters, || drop(block.attn.backward(&acts, &lay, None, &dy).unwrap()));
    rows.push(("attention", attn_f, attn_b));
    drop(acts);
    let (_, acts) = block.mlp.forward_acts(&x).unwrap();
    let ffn_f = time_it(iters, || drop(block.mlp.forward_acts(&x).unwrap()));
    let ffn_b = time_it(iters, || drop(block.mlp.backward(&acts, &dy).unwrap()));
    rows.push(("ffn", ffn_f, ffn_b));
    drop(acts);
    let (_, acts) = block.forward_acts(&x, &lay, None, 1.0).unwrap();
    let blk_f = time_it(iters, || drop(block.forward_acts(&x, &lay, None, 1.0).unwrap()));
    let blk_b = time_it(iters, || drop(block.backward(&acts, &lay, None, 1.0, &dy).unwrap()));
    rows.push(("block", blk_f, blk_b));
    rows
}

fn main() {
    headroom::tune_allocator(); // as the binary does
    headroom::tune_thread_pools();
    let iters = env_usize("HEADROOM_BENCH_ITERS", 5);
    let (b, t) = (env_usize("HEADROOM_BENCH_BATCH", 4), env_usize("HEADROOM_BENCH_SEQ", 256));
    let py = python();
    println!("one decoder layer, each component alone, f32, batch {b} x {t}, {iters} iterations, {} threads", threads());
    println!("ratio = PyTorch time / headroom time (> 1: headroom is faster)");
    let mut models: Vec<(String, Option<std::path::PathBuf>)> = vec![];
    if let Some(p) = default_model_path() {
        models.push(("smollm2-135m (gguf q4_1)".into(), Some(p)));
    }
    models.push(("opt-125m (random)".into(), None));
    for (name, gguf) in models {
        let m: Model = match &gguf {
            Some(p) => Model::load(p, &Device::Cpu).expect("default model"),
            None => opt_125m(),
        };
        let block = &m.blocks.as_resident().expect("resident")[0];
        let rows = components(block, b, t, m.info.hidden, iters);
        // The same components with the fused kernels off (candle ops composed): what the
        // kernels bought, in the same run.
        let before = kernels::composed(|| components(block, b, t, m.info.hidden, iters));
        let torch = py.as_ref().and_then(|py| torch_run(py, "blocks", if gguf.is_some() { "gguf" } else { "opt-125m" }, b, t, iters, gguf.as_deref()));
        let torch_s = |comp: &str, dir: &str| torch.as_ref().and_then(|j| j["blocks"][comp][dir].as_f64());
        println!("\n{name}  (PyTorch attention: {})", torch.as_ref().and_then(|j| j["blocks"]["attn_implementation"].as_str()).unwrap_or("-"));
        println!("{:<10} {:>10} {:>10} {:>10} {:>7} {:>10} {:>10} {:>10} {:>7}", "component", "fwd ms", "composed", "torch ms", "ratio", "bwd ms", "composed", "torch ms", "ratio");
        for ((comp, f, bw), (_, cf, cb)) in rows.into_iter().zip(before) {
            let cell = |ours: f64, theirs: Option<f64>| match theirs {
                Some(p) => (format!("{:.2}", p * 1e3), format!("{:.2}x", p / ours)),
                None => ("-".into(), "-".into()),
            };
            let (tf, rf) = cell(f, torch_s(comp, "forward"));
            let (tb, rb) = cell(bw, torch_s(comp, "backward"));
            println!("{:<10} {:>10.2} {:>10.2} {:>10} {:>7} {:>10.2} {:>10.2} {:>10} {:>7}", comp, f * 1e3, cf * 1e3, tf, rf, bw * 1e3, cb * 1e3, tb, rb);
        }
    }
}
