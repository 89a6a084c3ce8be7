//! Importance as the tool runs it, beside PyTorch doing the same the authors' way.
//!
//! headroom: the default model (SmolLM2-135M GGUF, f32), the authors' importance prompts of
//! each task at each shot count built by the library functions `headroom prompts` and
//! `headroom importance` call (tasks::load, prompt::importance_prompts,
//! importance::tokenize_prompts), scored by importance::accumulate with the tool's options
//! (per-token abs; batch 1, the default, and batch 8, `--batch-size 8`).
//! PyTorch (tools/bench_torch.py --mode importance-prompts): the same token ids in the same
//! batches, a transformers forward with `labels` on the continuation, per-token gates on every
//! head and FFN output, one backward per batch, frozen weights, f32.
//! Before any speed is printed the two must agree: per-example losses within 1e-4 and every
//! head's and FFN's importance sum within a relative 1e-3 (the same work, not just the same shapes).
//! Env: HEADROOM_BENCH_EXAMPLES (8 per task and shot count), HEADROOM_BENCH_TASKS
//! (copa,arc_easy,hellaswag), HEADROOM_BENCH_SHOTS (1,5), HEADROOM_BENCH_BATCHES (1,8),
//! HEADROOM_BENCH_PYTHON.

mod common;

use std::io::Write;
use std::time::Instant;

use candle_core::{Device, Tensor};
use common::*;
use headroom::importance::{self, ImportanceOptions, ImportanceSums, TokenizedPrompt};
use headroom::model::{Activation, Activations, Model};
use headroom::tasks::{self, prompt};

fn env_list(k: &str, d: &str) -> Vec<String> {
    std::env::var(k).unwrap_or_else(|_| d.to_string()).split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// candle's f32 matmul at 1024^3 (what every Linear runs through), best of 10, in GFLOP/s:
/// the peak the GFLOP/s columns are read against.
fn candle_peak() -> f64 {
    let a = Tensor::randn(0f32, 1.0, (1024, 1024), &Device::Cpu).expect("randn");
    let b = Tensor::randn(0f32, 1.0, (1024, 1024), &Device::Cpu).expect("randn");
    a.matmul(&b).expect("matmul");
    let mut best = f64::INFINITY;
    for _ in 0..10 {
        let t = Instant::now();
        a.matmul(&b).expect("matmul");
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * 1024f64.powi(3) / best / 1e9
}

/// Who does which work (FLOPs per batch differ by who runs it).
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Headroom,
    Torch,
}

/// FLOPs of one importance batch of `b` rows padded to `t` tokens with `scored` target tokens,
/// 2 per multiply-add, matmuls only (norms, softmax, RoPE, the loss are not counted):
/// - blocks forward: every projection and the FFN at all b·t padded positions; attention scores
///   and A·V. headroom computes the full T x T (masked after); PyTorch's SDPA CPU kernel with
///   is_causal skips the blocks above the diagonal, counted as T(T+1)/2.
/// - blocks backward, input gradients only (both freeze the weights): one product per
///   projection (dx = dy·W, as much as its forward) and four attention products (dA, dV, dQ,
///   dK: twice the forward's two). autograd stops below layer 0's gate (nothing beneath needs a
///   gradient), so PyTorch skips layer 0's QKV input gradients and attention backward;
///   headroom runs them (its backward always yields dx).
/// - unembedding: headroom only at the scored positions (forward and dh = dlogits·W);
///   PyTorch's `labels` path makes logits at every position and, its dlogits being dense, the
///   backward product at every position too.
/// - recompute (headroom, when the kept activations would exceed the budget): one more forward
///   of the blocks.
fn batch_flops(m: &Model, side: Side, b: usize, t: usize, scored: usize, recompute: bool) -> f64 {
    let i = &m.info;
    let (d, h, hd, kv, l, v) = (i.hidden as f64, i.n_heads as f64, i.head_dim as f64, i.n_kv_heads as f64, i.n_layers as f64, i.vocab_size as f64);
    let (bf, tf) = (b as f64, t as f64);
    let ffn_mats = if matches!(i.activation, Activation::Silu) { 3.0 } else { 2.0 };
    let qkv = 2.0 * d * (h + 2.0 * kv) * hd; // per token
    let proj = qkv + 2.0 * h * hd * d + 2.0 * ffn_mats * d * i.ffn_dim as f64; // per token per layer
    let pairs = match side {
        Side::Headroom => tf * tf,
        Side::Torch => tf * (tf + 1.0) / 2.0,
    };
    let attn = 4.0 * pairs * h * hd; // QK^T and AV, per row per layer
    let fwd = l * (proj * bf * tf + attn * bf);
    let bwd = match side {
        Side::Headroom => l * (proj * bf * tf + 2.0 * attn * bf),
        Side::Torch => l * (proj * bf * tf + 2.0 * attn * bf) - (qkv * bf * tf + 2.0 * attn * bf),
    };
    let logit_rows = match side {
        Side::Headroom => scored as f64,
        Side::Torch => bf * tf,
    };
    fwd * if recompute { 2.0 } else { 1.0 } + bwd + 2.0 * 2.0 * d * v * logit_rows
}

/// The FLOPs of a whole pass: headroom's batches as `importance::batches` makes them.
fn pass_flops(m: &Model, side: Side, prompts: &[TokenizedPrompt], batches: &[Vec<usize>]) -> f64 {
    let policy = m.activation_policy();
    batches
        .iter()
        .map(|c| {
            let t = c.iter().map(|&i| prompts[i].len()).max().unwrap_or(0);
            let scored = c.iter().map(|&i| prompts[i].continuation.len()).sum();
            let recompute = side == Side::Headroom
                && match policy {
                    Activations::Auto { budget_bytes } => m.block_activation_bytes(c.len(), t) * m.n_layers() > budget_bytes,
                    a => a == Activations::Recompute,
                };
            batch_flops(m, side, c.len(), t, scored, recompute)
        })
        .sum()
}

/// Largest |a - b| / |b| over the entries (the check's relative error).
fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1e-30)).fold(0.0, |m: f64, r| if r.is_nan() || m.is_nan() { f64::NAN } else { m.max(r) })
}

fn read_json_line(r: &mut impl std::io::BufRead) -> Option<serde_json::Value> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    serde_json::from_str(line.trim()).ok()
}

struct Run {
    batch: usize,
    secs: f64,
    sums: ImportanceSums,
    batches: Vec<Vec<usize>>,
    /// PyTorch's answer for the same run: seconds, losses in batch order, sums.
    torch: Option<serde_json::Value>,
    /// 1-minute load average after both sides ran (2 cores: above 2, others were running too).
    load: String,
}

struct Workload {
    task: String,
    shots: usize,
    prompts: Vec<TokenizedPrompt>,
    /// headroom's per-example losses (its first run), in prompt order.
    losses: Vec<f64>,
    runs: Vec<Run>,
}

fn main() {
    headroom::tune_allocator(); // as the binary does
    let n_ex = env_usize("HEADROOM_BENCH_EXAMPLES", 8);
    let task_names = env_list("HEADROOM_BENCH_TASKS", "copa,arc_easy,hellaswag");
    let shots: Vec<usize> = env_list("HEADROOM_BENCH_SHOTS", "1,5").iter().map(|s| s.parse().expect("HEADROOM_BENCH_SHOTS")).collect();
    let batch_sizes: Vec<usize> = env_list("HEADROOM_BENCH_BATCHES", "1,8").iter().map(|s| s.parse().expect("HEADROOM_BENCH_BATCHES")).collect();
    let Some(path) = default_model_path() else { return };
    let cache = headroom::assets::cache_dir().expect("cache dir");
    let model = Model::load(&path, &Device::Cpu).expect("default model");
    let tok = headroom::tokenizer::Tokenizer::for_model(&path).expect("tokenizer");
    let dir = std::env::temp_dir().join(format!("headroom-importance-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");

    // The prompts exactly as `headroom prompts --tasks T --shots K --max-docs N` writes them and
    // `headroom importance` tokenizes them.
    let mut work: Vec<Workload> = vec![];
    for name in &task_names {
        let task = tasks::load(name, &tasks::LoadOptions::new(headroom::assets::data_dir(&cache))).expect("task (run `headroom fetch --data`)");
        for &k in &shots {
            let pairs = prompt::importance_prompts(&task, &prompt::ImportanceOptions { shots: k, max_docs: n_ex, ..Default::default() }).expect("prompts");
            let (prompts, _) = importance::tokenize_prompts(&tok, &pairs, model.info.context_length).expect("tokenize");
            work.push(Workload { task: name.clone(), shots: k, prompts, losses: vec![], runs: vec![] });
        }
    }

    // One untimed pass over a few prompts: the allocator's first touch of activation-sized
    // buffers costs page faults that later passes do not pay (PyTorch gets one untimed batch).
    let warm: Vec<TokenizedPrompt> = work.iter().flat_map(|w| w.prompts.iter().take(1).cloned()).collect();
    importance::accumulate(&model, &warm, &ImportanceOptions::default(), &mut |_, _| {}).expect("warm-up");

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let peak = candle_peak();
    // PyTorch in one process for every run (the GGUF dequantized once), answering one run per
    // line, so each of its runs follows headroom's on the same prompts: a shared machine's load
    // drifts over minutes, and back to back both sides see about the same.
    let mut torch = python().and_then(|py| {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bench_torch.py");
        let mut child = std::process::Command::new(py)
            .arg(script)
            .args(["--model", "gguf", "--gguf", &path.display().to_string(), "--mode", "importance-prompts", "--prompts", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let stdin = child.stdin.take()?;
        let mut stdout = std::io::BufReader::new(child.stdout.take()?);
        let info = read_json_line(&mut stdout)?;
        Some((child, stdin, stdout, info))
    });
    for w in work.iter_mut() {
        for &b in &batch_sizes {
            // The tool's options with `--batch-size b`; on the workload's first run also each
            // example's contribution, for its loss (the only extra work: copying L·H + L floats
            // per example; losses do not depend on the batching).
            let opts = ImportanceOptions { batch_size: b, keep_per_example: w.losses.is_empty(), ..Default::default() };
            let start = Instant::now();
            let (sums, per) = importance::accumulate(&model, &w.prompts, &opts, &mut |_, _| {}).expect("importance");
            let secs = start.elapsed().as_secs_f64();
            if let Some(per) = per {
                w.losses = per.iter().map(|e| e.loss).collect();
            }
            // The same ids in the same batches for PyTorch: one line per example in batch order.
            let batches = importance::batches(&w.prompts, &opts);
            let file = dir.join(format!("{}.{}shot.b{b}.jsonl", w.task, w.shots));
            let mut f = std::io::BufWriter::new(std::fs::File::create(&file).expect("prompts file"));
            for &i in batches.iter().flatten() {
                let p = &w.prompts[i];
                let ids = [p.context.clone(), p.continuation.clone()].concat();
                writeln!(f, "{}", serde_json::json!({"ids": ids, "start": p.context.len(), "index": i})).expect("write");
            }
            drop(f);
            let t = torch.as_mut().and_then(|(_, stdin, stdout, _)| {
                writeln!(stdin, "{}@{b}", file.display()).ok()?;
                stdin.flush().ok()?;
                read_json_line(stdout)
            });
            if torch.is_some() && t.is_none() {
                eprintln!("pytorch baseline failed on {}", file.display());
            }
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("-").to_string();
            w.runs.push(Run { batch: b, secs, sums, batches, torch: t, load });
        }
    }
    let torch_peak = torch.as_ref().and_then(|(_, _, _, info)| info["matmul_gflops"].as_f64());
    if let Some((mut child, stdin, _, _)) = torch.take() {
        drop(stdin); // EOF: the script exits
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "importance on real prompts, default model (f32), {n_ex} examples per task and shot count, {} threads; load average at start: {}",
        threads(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "measured f32 matmul peak, 1024^3: candle {peak:.0} GFLOP/s, torch.matmul {}",
        torch_peak.map_or("-".into(), |p| format!("{p:.0} GFLOP/s"))
    );
    let mut all_ok = true;
    for w in &work {
        let tokens: usize = w.prompts.iter().map(TokenizedPrompt::len).sum();
        let scored: usize = w.prompts.iter().map(|p| p.continuation.len()).sum();
        println!();
        println!("{} {}-shot: {} examples, {tokens} tokens ({scored} scored)", w.task, w.shots, w.prompts.len());
        println!(
            "{:>5} {:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  check (loss |Δ| max, head/ffn rel max)",
            "batch", "load", "padded", "hr tok/s", "hr GF/s", "pt tok/s", "pt GF/s", "ratio", "≥1.5x"
        );
        for r in &w.runs {
            let padded: usize = r.batches.iter().map(|c| c.iter().map(|&i| w.prompts[i].len()).max().unwrap_or(0) * c.len()).sum();
            let hf = pass_flops(&model, Side::Headroom, &w.prompts, &r.batches);
            let hr_tps = tokens as f64 / r.secs;
            let hr_gf = hf / r.secs / 1e9;
            let (pt_tps, pt_gf, ratio, meets, check) = match &r.torch {
                Some(t) => {
                    let ts = t["seconds"].as_f64().unwrap_or(f64::NAN);
                    let tf = pass_flops(&model, Side::Torch, &w.prompts, &r.batches);
                    // Per-example losses come back in file (= batch) order.
                    let order: Vec<usize> = r.batches.iter().flatten().copied().collect();
                    let tl: Vec<f64> = t["losses"].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default();
                    // NaN (a missing loss) must fail the check, so no f64::max, which drops NaNs.
                    let dl = order.iter().zip(&tl).map(|(&i, l)| (w.losses.get(i).copied().unwrap_or(f64::NAN) - l).abs()).fold(0.0, |a: f64, d| if d.is_nan() || a.is_nan() { f64::NAN } else { a.max(d) });
                    let th: Vec<f64> = t["head_abs"].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default();
                    let tfn: Vec<f64> = t["ffn_abs"].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default();
                    let (rh, rf) = (max_rel(&r.sums.head_abs, &th), max_rel(&r.sums.ffn_abs, &tfn));
                    let ok = tl.len() == order.len() && th.len() == r.sums.head_abs.len() && tfn.len() == r.sums.ffn_abs.len() && dl <= 1e-4 && rh <= 1e-3 && rf <= 1e-3;
                    all_ok &= ok;
                    let ratio = ts / r.secs;
                    (
                        format!("{:.0}", tokens as f64 / ts),
                        format!("{:.1}", tf / ts / 1e9),
                        format!("{ratio:.2}x"),
                        if ratio >= 1.5 { "yes" } else { "NO" },
                        format!("{} ({dl:.1e}, {rh:.1e}/{rf:.1e})", if ok { "same work" } else { "DISAGREE" }),
                    )
                }
                None => ("-".into(), "-".into(), "-".into(), "-", "no PyTorch".into()),
            };
            println!("{:>5} {:>5} {padded:>8} {hr_tps:>9.0} {hr_gf:>9.1} {pt_tps:>9} {pt_gf:>9} {ratio:>9} {meets:>7}  {check}", r.batch, r.load);
        }
    }
    println!();
    println!("ratio = PyTorch seconds / headroom seconds over the same prompts and batches (target >= 1.5x);");
    println!("GF/s = the FLOPs each side actually runs (benches/importance_real.rs, batch_flops) per second, against the peaks above");
    if !all_ok {
        println!("DISAGREE: headroom and PyTorch did not compute the same importance; the speeds above do not compare");
        std::process::exit(1);
    }
}
