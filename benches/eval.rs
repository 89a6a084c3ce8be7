//! Few-shot evaluation throughput: ARC-Easy 5-shot, `--limit 100`, on the default model.
//!
//! `cargo bench --bench eval` prints examples/s of the shared-prefix tree scoring and the
//! token-FLOP ratio against naive per-option scoring (every option its own sequence, logits at
//! every position, as the harness does); target <= 1/3 on this 4-option 5-shot task. The naive
//! path is also timed on the first HEADROOM_BENCH_NAIVE (default 10) examples.
//! Env: HEADROOM_BENCH_LIMIT (100), HEADROOM_BENCH_SHOTS (5), HEADROOM_BENCH_TASK (arc_easy),
//! HEADROOM_BENCH_BATCH (16).

use std::time::Instant;

use candle_core::Device;
use headroom::eval::{prepare, score, score_naive, selected_docs, EvalConfig, ScoreOptions};
use headroom::model::Model;
use headroom::tasks::{self, LoadOptions};
use headroom::tokenizer::Tokenizer;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn main() {
    headroom::tune_allocator(); // as the binary does
    headroom::tune_thread_pools();
    let cache = headroom::assets::cache_dir().expect("cache dir");
    let path = headroom::assets::default_model_path(&cache);
    let data = headroom::assets::data_dir(&cache);
    if !path.exists() || !data.join("olmo/oe_eval_tasks").exists() {
        eprintln!("SKIPPED: default model or task data not fetched (headroom fetch --data)");
        return;
    }
    let task_name = std::env::var("HEADROOM_BENCH_TASK").unwrap_or_else(|_| "arc_easy".into());
    let limit = env_usize("HEADROOM_BENCH_LIMIT", 100);
    let shots = env_usize("HEADROOM_BENCH_SHOTS", 5);
    let naive_n = env_usize("HEADROOM_BENCH_NAIVE", 10);
    let batch = env_usize("HEADROOM_BENCH_BATCH", 16);

    let model = Model::load(&path, &Device::Cpu).expect("model");
    let tok = Tokenizer::for_model(&path).expect("tokenizer");
    let t0 = Instant::now();
    let task = tasks::load(&task_name, &LoadOptions::new(data)).expect("task");
    let load_s = t0.elapsed().as_secs_f64();
    let cfg = EvalConfig { shots, limit: Some(limit), score: ScoreOptions { batch_size: batch, ..Default::default() }, ..Default::default() };
    let docs = selected_docs(&task, &cfg);
    let t0 = Instant::now();
    let (_, enc) = prepare(&task, &docs, &cfg, &tok, &model).expect("prompts");
    let prep_s = t0.elapsed().as_secs_f64();
    let options: usize = enc.iter().map(|e| e.options.len()).sum();

    let t0 = Instant::now();
    let (_, cost) = score(&model, &enc, None, &cfg.score, &mut |_| {}).expect("score");
    let tree_s = t0.elapsed().as_secs_f64();

    let n_naive = naive_n.min(enc.len());
    let t0 = Instant::now();
    if n_naive > 0 {
        score_naive(&model, &enc[..n_naive], None).expect("naive");
    }
    let naive_s = t0.elapsed().as_secs_f64();

    println!("{task_name} {shots}-shot, {} examples, {options} options, default model (SmolLM2-135M Q4_1 -> f32, CPU)", enc.len());
    println!("task load {load_s:.1}s, prompts + tokenization {prep_s:.2}s");
    println!("| scoring | examples | seconds | examples/s | tokens through the model | est. FLOPs |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| shared-prefix tree (batch {batch}) | {} | {tree_s:.1} | {:.2} | {} ({} real) | {:.3e} |",
        enc.len(),
        enc.len() as f64 / tree_s,
        cost.tokens,
        cost.real_tokens,
        cost.flops
    );
    if n_naive > 0 {
        println!(
            "| naive per option (batch 1, timed on {n_naive}) | {n_naive} | {naive_s:.1} | {:.2} | {} (all {}) | {:.3e} (all) |",
            n_naive as f64 / naive_s,
            enc[..n_naive].iter().flat_map(|e| &e.options).map(|o| o.ids.len() - 1).sum::<usize>(),
            cost.naive_tokens,
            cost.naive_flops
        );
    }
    println!(
        "token-FLOP ratio (tree / naive): {:.3}  (tokens {:.3}, logit rows {} vs {}); target <= 0.333",
        cost.flop_ratio(),
        cost.token_ratio(),
        cost.logit_rows,
        cost.naive_logit_rows
    );
}
