//! Importance scores: the authors' normalization on a hand-checkable case, the whole chain
//! against PyTorch, invariance to batching, exact shard merging, and the real model.

mod common;

use candle_core::Device;
use common::{golden_dir, Golden};
use headroom::importance::{accumulate, AbsMode, ImportanceOptions, ImportanceSums, Normalize, TokenizedPrompt};
use headroom::model::Model;

#[test]
fn authors_normalization_by_hand() {
    // 2 layers x 2 heads; two examples of N = 5 and 9 tokens with T_y = 1 and 3 label tokens.
    let mut s = ImportanceSums::new(2, 2, AbsMode::PerToken);
    s.head_abs = vec![12.0, 6.0, 8.0, 2.0];
    s.ffn_abs = vec![24.0, 4.0];
    s.examples = 2;
    s.tokens = 14;
    s.tokens_minus_one = 12; // (5 - 1) + (9 - 1)
    s.label_tokens = 4; // 1 + 3
    let a = s.scores(Normalize::Authors);
    // Layer 0 (not last): / sum(N - 1) = 12.  Layer 1 (last): / sum(T_y) = 4.
    assert_eq!(a.heads, vec![vec![1.0, 0.5], vec![2.0, 0.5]]);
    assert_eq!(a.ffns, vec![2.0, 1.0]);
    let t = s.scores(Normalize::Tokens);
    assert_eq!(t.heads, vec![vec![1.0, 0.5], vec![8.0 / 12.0, 2.0 / 12.0]]);
    assert_eq!(s.scores(Normalize::None).heads, vec![vec![12.0, 6.0], vec![8.0, 2.0]]);
    // Michel: / sum(N) = 14, per-layer L2, then global min-max.
    let m = s.scores(Normalize::Michel);
    let l0: [f64; 2] = [12.0 / 14.0, 6.0 / 14.0];
    let l1: [f64; 2] = [8.0 / 14.0, 2.0 / 14.0];
    let n0 = (l0[0] * l0[0] + l0[1] * l0[1]).sqrt();
    let n1 = (l1[0] * l1[0] + l1[1] * l1[1]).sqrt();
    let v = [l0[0] / n0, l0[1] / n0, l1[0] / n1, l1[1] / n1];
    let (lo, hi) = (v.iter().cloned().fold(f64::INFINITY, f64::min), v.iter().cloned().fold(0.0, f64::max));
    let want: Vec<f64> = v.iter().map(|x| (x - lo) / (hi - lo)).collect();
    let got: Vec<f64> = m.heads.concat();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
    }
    assert_eq!(m.ffns, vec![1.0, 0.0]);
}

fn golden_prompt(variant: &str) -> (Model, TokenizedPrompt, Golden) {
    let m = Model::load(&golden_dir().join(variant), &Device::Cpu).unwrap();
    let g = Golden::open(&golden_dir().join(variant).join("grads.safetensors"));
    let ids = g.ids("ids");
    let ctx = g.i64s["ctx_len"][0] as usize;
    (m, TokenizedPrompt { context: ids[..ctx].to_vec(), continuation: ids[ctx..].to_vec() }, g)
}

/// One example: the authors' score is sum_t |PyTorch per-token dot| / Z_l, exactly as spec 3.1.
#[test]
fn authors_scores_from_pytorch_gradients() {
    for v in ["opt_preln", "gpt2", "llama_gqa", "neox"] {
        let (m, p, g) = golden_prompt(v);
        let (sums, _) = accumulate(&m, std::slice::from_ref(&p), &ImportanceOptions::default(), &mut |_, _| {}).unwrap();
        let scores = sums.scores(Normalize::Authors);
        let (hs, dots) = g.f32("head_dot"); // [L, T, H]
        let (l_n, t_n, h_n) = (hs[0], hs[1], hs[2]);
        let (n, ty) = (p.len() as f64, p.continuation.len() as f64);
        assert_eq!(t_n, p.len());
        for l in 0..l_n {
            let z = if l + 1 == l_n { ty } else { n - 1.0 };
            for h in 0..h_n {
                let want: f64 = (0..t_n).map(|t| (dots[(l * t_n + t) * h_n + h] as f64).abs()).sum::<f64>() / z;
                let got = scores.heads[l][h];
                assert!((got - want).abs() <= 1e-4 * want.abs().max(1e-3), "{v} L{l}H{h}: {got} vs {want}");
            }
        }
        // per_example (Michel's placement) = |sum_t dot|, never above per_token.
        let opts = ImportanceOptions { abs_mode: AbsMode::PerExample, ..Default::default() };
        let (pe, _) = accumulate(&m, &[p], &opts, &mut |_, _| {}).unwrap();
        let (_, gate) = g.f32("gate_grad_heads"); // [L, H] = sum_t dot
        for (i, (a, b)) in pe.head_abs.iter().zip(&sums.head_abs).enumerate() {
            assert!(a <= &(b + 1e-9));
            assert!((a - (gate[i] as f64).abs()).abs() <= 1e-4 * a.max(1e-3), "{v} head {i}");
        }
    }
}

fn many_prompts(m: &Model, n: usize) -> Vec<TokenizedPrompt> {
    let v = m.info.vocab_size as u32;
    (0..n)
        .map(|i| {
            let c = 3 + (i * 5) % 11;
            let y = 1 + (i * 3) % 4;
            let tok = |j: usize| ((i * 131 + j * 71 + 7) as u32) % v;
            TokenizedPrompt { context: (0..c).map(tok).collect(), continuation: (c..c + y).map(tok).collect() }
        })
        .collect()
}

#[test]
fn batch_size_does_not_change_per_token_or_per_example_scores() {
    let m = Model::load(&golden_dir().join("qwen2"), &Device::Cpu).unwrap();
    let prompts = many_prompts(&m, 9);
    for mode in [AbsMode::PerToken, AbsMode::PerExample] {
        let run = |bs: usize| {
            let opts = ImportanceOptions { abs_mode: mode, batch_size: bs, ..Default::default() };
            accumulate(&m, &prompts, &opts, &mut |_, _| {}).unwrap().0
        };
        let (a, b) = (run(1), run(4));
        for (x, y) in a.head_abs.iter().chain(&a.ffn_abs).zip(b.head_abs.iter().chain(&b.ffn_abs)) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-6), "{mode:?}: {x} vs {y}");
        }
        assert_eq!((a.tokens, a.tokens_minus_one, a.label_tokens, a.examples), (b.tokens, b.tokens_minus_one, b.label_tokens, b.examples));
    }
}

#[test]
fn shards_merge_to_the_whole() {
    let m = Model::load(&golden_dir().join("gpt2"), &Device::Cpu).unwrap();
    let prompts = many_prompts(&m, 10);
    let opts = ImportanceOptions { keep_per_example: true, ..Default::default() };
    let (whole, per) = accumulate(&m, &prompts, &opts, &mut |_, _| {}).unwrap();
    let (mut a, _) = accumulate(&m, &prompts[..4], &opts, &mut |_, _| {}).unwrap();
    let (b, _) = accumulate(&m, &prompts[4..], &opts, &mut |_, _| {}).unwrap();
    a.merge(&b).unwrap();
    for (x, y) in a.head_abs.iter().chain(&a.ffn_abs).zip(whole.head_abs.iter().chain(&whole.ffn_abs)) {
        assert!((x - y).abs() <= 1e-9 * y.abs(), "{x} vs {y}");
    }
    assert_eq!((a.examples, a.tokens, a.tokens_minus_one, a.label_tokens), (whole.examples, whole.tokens, whole.tokens_minus_one, whole.label_tokens));
    assert!((a.loss_sum - whole.loss_sum).abs() < 1e-9 * whole.loss_sum);
    // Per-example contributions add up to the sums too.
    let per = per.unwrap();
    let total: f64 = per.iter().map(|e| e.head_abs[3] as f64).sum();
    assert!((total - whole.head_abs[3]).abs() <= 1e-5 * whole.head_abs[3]);
    // Mismatched shards refuse to merge.
    let other = ImportanceSums::new(whole.n_layers, whole.n_heads, AbsMode::PerExample);
    assert!(a.merge(&other).is_err());
}

#[test]
fn real_model_importance_on_copa_style_prompts() {
    let Some(path) = common::default_model() else { return };
    let m = Model::load(&path, &Device::Cpu).unwrap();
    let tok = headroom::tokenizer::Tokenizer::for_model(&path).unwrap();
    let pairs = [
        ("The man broke his toe because", " he dropped a hammer on his foot."),
        ("I tipped the bottle, therefore", " the liquid in the bottle poured out."),
        ("The woman repaired her faucet because", " the faucet was leaky."),
        ("The elderly woman suffered a stroke, therefore", " her daughter came over to take care of her."),
        ("The girl found the missing puzzle piece, therefore", " she completed the puzzle."),
    ];
    let prompts: Vec<headroom::importance::Prompt> = (0..20)
        .map(|i| {
            let (c, x) = pairs[i % pairs.len()];
            headroom::importance::Prompt { context: c.into(), continuation: x.into() }
        })
        .collect();
    let (tp, truncated) = headroom::importance::tokenize_prompts(&tok, &prompts, m.info.context_length).unwrap();
    assert_eq!(truncated, 0);
    let opts = ImportanceOptions { batch_size: 5, ..Default::default() };
    let (sums, _) = accumulate(&m, &tp, &opts, &mut |_, _| {}).unwrap();
    let s = sums.scores(Normalize::Authors);
    assert!(s.heads.iter().flatten().chain(&s.ffns).all(|x| x.is_finite() && *x >= 0.0));
    assert!(s.heads.last().unwrap().iter().any(|&x| x > 0.0), "last layer all zero");
    assert!(sums.mean_loss().is_finite() && sums.mean_loss() > 0.0);
    eprintln!("mean loss {:.3}; last-layer scores {:?}", sums.mean_loss(), s.heads.last().unwrap());
}
