//! Induction scoring throughput on the default model (`headroom induction`'s two phases), with the
//! plain forward pass over the same prefix sequences as the floor prefix matching cannot go under
//! (it is that forward plus reading every layer's pattern).
//!
//! `cargo bench --bench induction` prints, per phase: sequences, tokens, seconds, tokens/s and
//! GFLOP/s of the work (prefix and forward: the forward's matmuls incl. QK^T and AV over T x T;
//! copying: per layer the q/k/v/o projections on the embeddings, QK^T, AV, the `[H, hd, T]`
//! out_proj x unembedding product and the `[H, T, T]` direct-path logits).
//! Env: HEADROOM_BENCH_SEQUENCES (10), HEADROOM_BENCH_MIN_LEN (25; sequence s has
//! L = min_len + 2s, as the CLI), HEADROOM_BENCH_ITERS (1). The attention-only row counts the
//! copying FLOPs too, so its GFLOP/s compares with the copying row's.

mod common;

use std::time::Instant;

use candle_core::Device;
use common::*;
use headroom::induction::{self, CopyMode, InductionSeq, Lengths, PrefixMode, TokenPool};
use headroom::model::{Layout, Model};
use headroom::tokenizer::Tokenizer;

/// FLOPs of the copying direct path on one sequence of T tokens, all layers.
fn copy_flops(m: &Model, t: usize) -> f64 {
    let i = &m.info;
    let (d, h, hd, kv, l, t) = (i.hidden as f64, i.n_heads as f64, i.head_dim as f64, i.n_kv_heads as f64, i.n_layers as f64, t as f64);
    let proj = 2.0 * t * (2.0 * d * h * hd + 2.0 * d * kv * hd); // q, o and k, v
    let attn = 2.0 * 2.0 * h * t * t * hd; // QK^T and AV
    let direct = 2.0 * h * hd * d * t + 2.0 * h * t * hd * t; // Wo_h M^T, then per_head x that
    l * (proj + attn + direct)
}

fn row(name: &str, seqs: &[InductionSeq], secs: f64, flops: f64) {
    let tokens: usize = seqs.iter().map(|s| s.ids.len()).sum();
    println!("{name:<22} {:>9} {:>8} {:>9.2} {:>9.0} {:>9.1}", seqs.len(), tokens, secs, tokens as f64 / secs, flops / secs / 1e9);
}

fn main() {
    headroom::tune_allocator(); // as the binary does
    headroom::tune_thread_pools();
    let n = env_usize("HEADROOM_BENCH_SEQUENCES", 10);
    let min_len = env_usize("HEADROOM_BENCH_MIN_LEN", 25);
    let iters = env_usize("HEADROOM_BENCH_ITERS", 1).max(1);
    let Some(path) = default_model_path() else {
        eprintln!("the induction bench needs the default model: run `headroom fetch`");
        return;
    };
    let m = Model::load(&path, &Device::Cpu).expect("default model");
    let tok = Tokenizer::for_model(&path).expect("tokenizer");
    let bos = induction::default_bos(&m, Some(&tok));
    let pool = TokenPool::from_tokenizer(&tok, 0.04, m.info.vocab_size, bos).expect("token pool");
    let lengths = Lengths { base_len: min_len, ..Lengths::default() };
    let prefix = induction::prefix_sequences(&pool, bos, n, &lengths, 0).expect("prefix sequences");
    let copy = induction::copy_sequences(&pool, bos, n, &lengths, 0).expect("copy sequences");
    let lens = |s: &[InductionSeq]| format!("{}..{}", s[0].ids.len(), s[s.len() - 1].ids.len());
    println!(
        "induction, default model, f32, {n} sequences (prefix {} tokens, copying {} tokens each), {iters} iteration(s), {} threads",
        lens(&prefix),
        lens(&copy),
        threads()
    );
    println!("{:<22} {:>9} {:>8} {:>9} {:>9} {:>9}", "phase", "sequences", "tokens", "seconds", "tokens/s", "GFLOP/s");
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        start.elapsed().as_secs_f64() / iters as f64
    };
    let fwd_flops: f64 = prefix.iter().map(|s| forward_flops(&m, 1, s.ids.len(), 0)).sum();
    let secs = time(&mut || {
        for s in &prefix {
            m.forward_hidden(&m.batch_ids(std::slice::from_ref(&s.ids)).unwrap(), None, None).expect("forward");
        }
    });
    row("forward only (floor)", &prefix, secs, fwd_flops);
    let secs = time(&mut || {
        induction::prefix_matching(&m, &prefix, PrefixMode::Definition, &mut |_| {}).expect("prefix matching");
    });
    row("prefix matching", &prefix, secs, fwd_flops);
    // The copying floor: each layer's own attention on the embeddings (what the direct path
    // must run through the runtime's attention), without the logits or the scoring.
    let secs = time(&mut || {
        for s in &copy {
            let ids = m.batch_ids(std::slice::from_ref(&s.ids)).unwrap();
            let e = m.embed.forward(&ids, &Layout::Causal).unwrap();
            for l in 0..m.n_layers() {
                m.blocks.get(l).unwrap().attention_half(&e, &Layout::Causal, None, true).expect("attention");
            }
        }
    });
    row("copying: attention only", &copy, secs, copy.iter().map(|s| copy_flops(&m, s.ids.len())).sum());
    let secs = time(&mut || {
        induction::copying(&m, &copy, CopyMode::Authors, &mut |_| {}).expect("copying");
    });
    row("copying (authors)", &copy, secs, copy.iter().map(|s| copy_flops(&m, s.ids.len())).sum());
}
