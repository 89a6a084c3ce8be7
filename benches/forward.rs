//! Forward throughput: headroom (candle, f32) beside PyTorch (transformers, f32) in one run.
//!
//! `cargo bench --bench forward` prints one table: tokens/s and achieved GFLOP/s for
//!   - an OPT-125m-shaped model with random weights, batch 4 x 256;
//!   - the default model (SmolLM2-135M-Instruct GGUF, if fetched), batch 4 x 256;
//! and, when a Python with torch + transformers is found (`$HEADROOM_BENCH_PYTHON`, else
//! tools/.venv/bin/python), the same shapes through transformers and the ratio.
//! Env: HEADROOM_BENCH_ITERS (default 3), HEADROOM_BENCH_BATCH (4), HEADROOM_BENCH_SEQ (256).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::Device;
use headroom::formats::hf::ConfigJson;
use headroom::model::weights::RandomWeights;
use headroom::model::{opt, Model};

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

/// Forward FLOPs for B x T tokens: 2 per multiply-add in every matmul (projections, FFN,
/// unembedding at every position) plus QK^T and AV over the full T x T (as computed).
fn forward_flops(m: &Model, b: usize, t: usize) -> f64 {
    let i = &m.info;
    let (d, h, hd, kv, l) = (i.hidden as f64, i.n_heads as f64, i.head_dim as f64, i.n_kv_heads as f64, i.n_layers as f64);
    let ffn_mats = if matches!(i.activation, headroom::model::Activation::Silu) { 3.0 } else { 2.0 };
    let per_token_params = l * (d * h * hd * 2.0 + d * kv * hd * 2.0 + ffn_mats * d * i.ffn_dim as f64) + d * i.vocab_size as f64;
    let tokens = (b * t) as f64;
    2.0 * per_token_params * tokens + l * b as f64 * 4.0 * (t * t) as f64 * h * hd
}

fn time_forward(m: &Model, b: usize, t: usize, iters: usize) -> f64 {
    let seqs: Vec<Vec<u32>> = (0..b)
        .map(|s| (0..t).map(|j| ((s * 7919 + j * 104729) % (m.info.vocab_size - 1)) as u32).collect())
        .collect();
    let ids = m.batch_ids(&seqs).expect("batch");
    m.forward(&ids, None).expect("warmup");
    let start = Instant::now();
    for _ in 0..iters {
        m.forward(&ids, None).expect("forward");
    }
    start.elapsed().as_secs_f64() / iters as f64
}

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("HEADROOM_BENCH_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/.venv/bin/python")
    });
    let ok = Command::new(&p).args(["-c", "import torch, transformers"]).output().map(|o| o.status.success()).unwrap_or(false);
    ok.then_some(p)
}

/// Runs tools/bench_torch.py; returns seconds per forward, if it worked.
fn torch_forward(py: &Path, which: &str, b: usize, t: usize, iters: usize, gguf: Option<&Path>) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bench_torch.py");
    let mut cmd = Command::new(py);
    cmd.arg(script).args(["--model", which, "--mode", "forward", "--batch", &b.to_string(), "--seq", &t.to_string(), "--iters", &iters.to_string()]);
    if let Some(g) = gguf {
        cmd.args(["--gguf", &g.display().to_string()]);
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        eprintln!("pytorch baseline failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).ok()?;
    v["seconds_per_iter"].as_f64()
}

fn opt_125m() -> Model {
    let cfg = ConfigJson::from_value(
        serde_json::json!({
            "model_type": "opt", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "ffn_dim": 3072, "vocab_size": 50272, "max_position_embeddings": 2048,
            "do_layer_norm_before": true, "word_embed_proj_dim": 768
        }),
        "<opt-125m shape>",
    );
    opt::from_hf(&cfg, &RandomWeights { std: 0.02 }, &Device::Cpu).expect("random OPT-125m")
}

fn main() {
    let iters = env_usize("HEADROOM_BENCH_ITERS", 3);
    let (b, t) = (env_usize("HEADROOM_BENCH_BATCH", 4), env_usize("HEADROOM_BENCH_SEQ", 256));
    let py = python();
    if py.is_none() {
        eprintln!("(no Python with torch + transformers: PyTorch columns left empty; run tools/setup-golden-env.sh)");
    }
    println!("forward, f32, batch {b} x {t}, {iters} iterations, {} threads", rayon_threads());
    println!("{:<28} {:>12} {:>10} {:>14} {:>10} {:>8}", "model", "headroom tok/s", "GFLOP/s", "pytorch tok/s", "GFLOP/s", "ratio");
    let mut rows: Vec<(String, Model, Option<PathBuf>)> = vec![("opt-125m (random)".into(), opt_125m(), None)];
    let cache = headroom::assets::cache_dir().ok();
    if let Some(p) = cache.map(|c| headroom::assets::default_model_path(&c)).filter(|p| p.exists()) {
        rows.push(("smollm2-135m (gguf q4_1)".into(), Model::load(&p, &Device::Cpu).expect("default model"), Some(p)));
    } else {
        eprintln!("(default model not fetched: run `headroom fetch` for its row)");
    }
    for (name, m, gguf) in rows {
        let secs = time_forward(&m, b, t, iters);
        let flops = forward_flops(&m, b, t);
        let tok_s = (b * t) as f64 / secs;
        let which = if gguf.is_some() { "gguf" } else { "opt-125m" };
        let torch = py.as_deref().and_then(|p| torch_forward(p, which, b, t, iters, gguf.as_deref()));
        let (tt, tg, ratio) = match torch {
            Some(ts) => (format!("{:.0}", (b * t) as f64 / ts), format!("{:.1}", flops / ts / 1e9), format!("{:.2}x", ts / secs)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!("{name:<28} {tok_s:>12.0} {:>10.1} {tt:>14} {tg:>10} {ratio:>8}", flops / secs / 1e9);
    }
    println!("ratio = PyTorch time / headroom time (> 1 means headroom is faster)");
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
