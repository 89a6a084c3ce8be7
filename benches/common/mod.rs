//! Shared by the bench binaries: the OPT-125m-shaped random model, the default model, and the
//! PyTorch side (tools/bench_torch.py) run in the same process tree for side-by-side ratios.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use candle_core::Device;
use headroom::formats::hf::ConfigJson;
use headroom::model::weights::RandomWeights;
use headroom::model::{Activation, LoadOptions, Model};

pub fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

pub fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

pub fn opt_125m() -> Model {
    let cfg = ConfigJson::from_value(
        serde_json::json!({
            "model_type": "opt", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "ffn_dim": 3072, "vocab_size": 50272, "max_position_embeddings": 2048,
            "do_layer_norm_before": true, "word_embed_proj_dim": 768
        }),
        "<opt-125m shape>",
    );
    let opts = LoadOptions::resident_f32(&Device::Cpu);
    Model::from_config(&cfg, Arc::new(RandomWeights { std: 0.02 }), &Default::default(), &opts).expect("random OPT-125m")
}

pub fn default_model_path() -> Option<PathBuf> {
    let p = headroom::assets::default_model_path(&headroom::assets::cache_dir().ok()?);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("(default model not fetched: run `headroom fetch` for its row)");
        None
    }
}

/// Seconds per forward pass (logits at every position) over deterministic ids, after one
/// untimed pass: the allocator's first touch of activation-sized buffers costs page faults that
/// later passes do not pay.
pub fn time_forward(m: &Model, b: usize, t: usize, iters: usize) -> f64 {
    let ids = m.batch_ids(&batch(m, b, t)).expect("batch");
    m.forward(&ids, None).expect("warmup");
    let start = std::time::Instant::now();
    for _ in 0..iters {
        m.forward(&ids, None).expect("forward");
    }
    start.elapsed().as_secs_f64() / iters as f64
}

/// Deterministic token ids `[B][T]`.
pub fn batch(m: &Model, b: usize, t: usize) -> Vec<Vec<u32>> {
    (0..b).map(|s| (0..t).map(|j| ((s * 7919 + j * 104729) % (m.info.vocab_size - 1)) as u32).collect()).collect()
}

/// Forward FLOPs for B x T tokens: 2 per multiply-add in every matmul (projections, FFN,
/// unembedding at `logit_rows` positions) plus QK^T and AV over the full T x T.
pub fn forward_flops(m: &Model, b: usize, t: usize, logit_rows: usize) -> f64 {
    let i = &m.info;
    let (d, h, hd, kv, l) = (i.hidden as f64, i.n_heads as f64, i.head_dim as f64, i.n_kv_heads as f64, i.n_layers as f64);
    let ffn_mats = if matches!(i.activation, Activation::Silu) { 3.0 } else { 2.0 };
    let per_token = l * (d * h * hd * 2.0 + d * kv * hd * 2.0 + ffn_mats * d * i.ffn_dim as f64);
    2.0 * per_token * (b * t) as f64 + 2.0 * d * i.vocab_size as f64 * logit_rows as f64 + l * b as f64 * 4.0 * (t * t) as f64 * h * hd
}

/// A Python with torch + transformers: $HEADROOM_BENCH_PYTHON, else tools/.venv/bin/python.
pub fn python() -> Option<PathBuf> {
    let p = std::env::var_os("HEADROOM_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/.venv/bin/python"));
    let ok = Command::new(&p).args(["-c", "import torch, transformers"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        eprintln!("(no Python with torch + transformers: PyTorch columns left empty; run tools/setup-golden-env.sh)");
    }
    ok.then_some(p)
}

/// Runs tools/bench_torch.py; returns its JSON line.
pub fn torch_run(py: &Path, mode: &str, which: &str, b: usize, t: usize, iters: usize, gguf: Option<&Path>) -> Option<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bench_torch.py");
    let mut cmd = Command::new(py);
    cmd.arg(script).args(["--model", which, "--mode", mode, "--batch", &b.to_string(), "--seq", &t.to_string(), "--iters", &iters.to_string()]);
    if let Some(g) = gguf {
        cmd.args(["--gguf", &g.display().to_string()]);
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        eprintln!("pytorch baseline failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        return None;
    }
    serde_json::from_slice(out.stdout.trim_ascii()).ok()
}

/// Peak resident memory of this process so far (VmHWM), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}
