//! End-to-end behaviour of the runtime on the real default model (SmolLM2-135M-Instruct, GGUF
//! Q4_1), after `headroom fetch`. Reference behaviour comes from an independent NumPy forward
//! pass of the dequantized weights (docs/assets.md, "Reference behaviour").

mod common;

use candle_core::Device;
use headroom::model::{repeated_sequence_nll, Capture, Mask, Model};
use headroom::tokenizer::Tokenizer;

fn load() -> Option<(Model, Tokenizer)> {
    let path = common::default_model()?;
    let model = Model::load(&path, &Device::Cpu).unwrap();
    let tok = Tokenizer::for_model(&path).unwrap();
    Some((model, tok))
}

const CAPITALS: &str = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is";

#[test]
fn architecture_is_read_from_gguf_metadata() {
    let Some((m, _)) = load() else { return };
    let i = &m.info;
    assert_eq!((i.n_layers, i.n_heads, i.n_kv_heads, i.head_dim, i.hidden, i.ffn_dim, i.vocab_size), (30, 9, 3, 64, 576, 1536, 49152));
    assert_eq!(i.n_params, 134_515_008);
    assert!(i.tied_embeddings);
    assert_eq!(i.rope.as_ref().unwrap().theta, 100000.0);
}

#[test]
fn capital_of_italy_is_rome() {
    let Some((m, tok)) = load() else { return };
    let ids = tok.encode(CAPITALS).unwrap();
    let lp = m.next_token_log_probs(&ids, None).unwrap();
    let mut order: Vec<usize> = (0..lp.len()).collect();
    order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]));
    let top5: Vec<String> = order[..5].iter().map(|&i| tok.decode(&[i as u32]).unwrap()).collect();
    eprintln!("top 5: {top5:?}");
    assert_eq!(top5[0], " Rome");
    // The independent NumPy reference's top 5, in order.
    assert_eq!(top5, [" Rome", " Italy", " Florence", " Roma", " Milan"]);
    // Probabilities sum to one.
    let total: f64 = lp.iter().map(|&x| (x as f64).exp()).sum();
    assert!((total - 1.0).abs() < 1e-4, "{total}");
}

#[test]
fn mean_prompt_nll_matches_numpy_reference() {
    let Some((m, tok)) = load() else { return };
    let ids = tok.encode(CAPITALS).unwrap();
    let nll = m.token_nll(&ids, None).unwrap();
    let mean = nll.iter().map(|&x| x as f64).sum::<f64>() / nll.len() as f64;
    eprintln!("mean NLL over the prompt: {mean:.4} (NumPy reference 1.445)");
    assert!((mean - 1.445).abs() < 0.01, "{mean}");
}

#[test]
fn repeated_random_sequence_is_copied_in_context() {
    let Some((m, _)) = load() else { return };
    for seed in [0, 1] {
        let r = repeated_sequence_nll(&m, 40, seed).unwrap();
        eprintln!("seed {seed}: first copy {:.2}, second copy {:.2}", r.first, r.second);
        assert!(r.second < r.first / 3.0, "{r:?}");
    }
}

#[test]
fn masks_change_the_model_only_where_they_should() {
    let Some((m, tok)) = load() else { return };
    let ids = tok.encode(CAPITALS).unwrap();
    let full = m.next_token_log_probs(&ids, None).unwrap();
    // An all-ones mask is the unmasked model.
    let ones = m.next_token_log_probs(&ids, Some(&m.full_mask())).unwrap();
    assert_eq!(full, ones);
    // Removing half the heads and a third of the FFNs changes the prediction.
    let mut mask = Mask::ones(m.n_layers(), m.n_heads());
    for l in 0..m.n_layers() {
        for h in 0..m.n_heads() {
            if (l + h) % 2 == 0 {
                mask.heads[l][h] = 0.0;
            }
        }
        if l % 3 == 0 {
            mask.ffns[l] = 0.0;
        }
    }
    let pruned = m.next_token_log_probs(&ids, Some(&mask)).unwrap();
    let diff = full.iter().zip(&pruned).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff > 0.5, "pruning barely changed the output: {diff}");
    // A removed head's output is exactly zero, and removing one query head of a GQA group
    // leaves its siblings (sharing the same kv head) untouched.
    let mut one = Mask::ones(m.n_layers(), m.n_heads());
    one.heads[5][4] = 0.0;
    let batch = m.batch_ids(std::slice::from_ref(&ids)).unwrap();
    let mut cap_full = Capture::new(m.n_layers(), false, true);
    let mut cap_one = Capture::new(m.n_layers(), false, true);
    m.forward_hidden(&batch, None, Some(&mut cap_full)).unwrap();
    m.forward_hidden(&batch, Some(&one), Some(&mut cap_one)).unwrap();
    let hd = m.info.head_dim;
    let full5: Vec<Vec<f32>> = cap_full.layers[5].head_outputs.as_ref().unwrap().get(0).unwrap().to_vec2().unwrap();
    let one5: Vec<Vec<f32>> = cap_one.layers[5].head_outputs.as_ref().unwrap().get(0).unwrap().to_vec2().unwrap();
    for (rf, ro) in full5.iter().zip(&one5) {
        assert!(ro[4 * hd..5 * hd].iter().all(|&x| x == 0.0));
        assert_eq!(rf[3 * hd..4 * hd], ro[3 * hd..4 * hd]); // head 3 shares kv head 1 with head 4
        assert_eq!(rf[5 * hd..6 * hd], ro[5 * hd..6 * hd]);
    }
}
