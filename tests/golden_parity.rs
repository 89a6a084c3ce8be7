//! Forward parity with transformers on tiny random checkpoints of every family/variant
//! (made by tools/make_golden.py): logits unmasked, masked and with fractional gates, attention
//! probabilities and per-head outputs. Tolerance: max abs diff <= 1e-4 in f32.

mod common;

use candle_core::Device;
use common::{golden_dir, max_abs_diff, Golden};
use headroom::model::{Capture, Mask, Model};

const TOL: f32 = 1e-4;
const CASES: [&str; 3] = ["unmasked", "masked", "fractional"];

fn mask_from(g: &Golden, case: &str) -> Mask {
    let (hs, heads) = g.f32(&format!("head_mask.{case}"));
    let (_, ffns) = g.f32(&format!("ffn_mask.{case}"));
    Mask { heads: heads.chunks(hs[1]).map(|r| r.to_vec()).collect(), ffns: ffns.clone() }
}

fn check_variant(variant: &str) {
    let dir = golden_dir().join(variant);
    let model = Model::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{variant}: {e:#}"));
    let g = Golden::open(&dir.join("golden.safetensors"));
    let n_seqs = (0..).take_while(|i| g.i64s.contains_key(&format!("seq{i}"))).count();
    assert!(n_seqs >= 3, "{variant}: expected >= 3 sequences");
    for case in CASES {
        let mask = mask_from(&g, case);
        // The golden set keeps every sequence unmasked and at least one per mask case.
        let seqs: Vec<usize> = (0..n_seqs).filter(|i| g.f32s.contains_key(&format!("logits.{case}.seq{i}"))).collect();
        assert!(!seqs.is_empty(), "{variant}: no golden logits for case {case}");
        for i in seqs {
            let ids = g.ids(&format!("seq{i}"));
            let batch = model.batch_ids(&[ids]).unwrap();
            let logits = model.forward(&batch, Some(&mask)).unwrap();
            let got: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
            let (shape, want) = g.f32(&format!("logits.{case}.seq{i}"));
            assert_eq!(logits.dims()[1..], shape[..], "{variant} {case} seq{i}: shape");
            let d = max_abs_diff(&got, want);
            eprintln!("{variant:12} {case:10} seq{i}: max |diff| = {d:.2e}");
            assert!(d <= TOL, "{variant} {case} seq{i}: max abs diff {d} > {TOL}");
        }
    }
    // The masked case must actually differ from the unmasked one (the test can fail).
    let (_, a) = g.f32("logits.unmasked.seq1");
    let (_, b) = g.f32("logits.masked.seq1");
    assert!(max_abs_diff(a, b) > 1e-2, "{variant}: masking changed nothing in the golden data");

    // Captures: attention probabilities and per-head outputs, unmasked, seq1 (T = 11, longer
    // than mistral_swa's window of 6).
    let ids = g.ids("seq1");
    let batch = model.batch_ids(&[ids]).unwrap();
    let mut cap = Capture::new(model.n_layers(), true, true);
    model.forward_hidden(&batch, None, Some(&mut cap)).unwrap();
    for (l, c) in cap.layers.iter().enumerate() {
        let probs: Vec<f32> = c.attn_probs.as_ref().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let (_, want) = g.f32(&format!("attn_probs.layer{l}"));
        let d = max_abs_diff(&probs, want);
        assert!(d <= TOL, "{variant} layer {l} attention probs: {d}");
        let outs: Vec<f32> = c.head_outputs.as_ref().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let (_, want) = g.f32(&format!("head_out.layer{l}"));
        let d = max_abs_diff(&outs, want);
        assert!(d <= TOL, "{variant} layer {l} head outputs: {d}");
    }
}

/// Right-padded batches give the same logits at real positions as one sequence at a time.
fn check_batching(variant: &str) {
    let dir = golden_dir().join(variant);
    let model = Model::load(&dir, &Device::Cpu).unwrap();
    let g = Golden::open(&dir.join("golden.safetensors"));
    let seqs: Vec<Vec<u32>> = (0..3).map(|i| g.ids(&format!("seq{i}"))).collect();
    let batch = model.batch_ids(&seqs).unwrap();
    let logits = model.forward(&batch, None).unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let got: Vec<f32> = logits.get(i).unwrap().narrow(0, 0, s.len()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let (_, want) = g.f32(&format!("logits.unmasked.seq{i}"));
        let d = max_abs_diff(&got, want);
        assert!(d <= TOL, "{variant} batched seq{i}: {d}");
    }
}

macro_rules! variant_tests {
    ($($name:ident => $variant:literal),* $(,)?) => {$(
        mod $name {
            #[test]
            fn logits_masks_and_captures_match_transformers() { super::check_variant($variant); }
            #[test]
            fn padded_batch_matches_single_sequences() { super::check_batching($variant); }
        }
    )*};
}

variant_tests! {
    opt_preln => "opt_preln",
    opt_postln => "opt_postln",
    gpt2 => "gpt2",
    neox => "neox",
    neox_seq => "neox_seq",
    llama_gqa => "llama_gqa",
    qwen2 => "qwen2",
    mistral_swa => "mistral_swa",
}

/// The llama_gqa model converted to GGUF as llama.cpp does (Q/K rows permuted, so RoPE must
/// rotate adjacent pairs; embedding stored F16) gives transformers' logits for the same weights.
#[test]
fn gguf_llama_with_permuted_qk_matches_transformers() {
    let dir = golden_dir().join("gguf");
    let model = Model::load(&dir.join("tiny_llama.gguf"), &Device::Cpu).unwrap();
    assert_eq!(model.info.rope.as_ref().unwrap().style, headroom::model::RopeStyle::AdjacentPairs);
    let g = Golden::open(&dir.join("tiny_llama_ref.safetensors"));
    for i in 0..3 {
        let ids = g.ids(&format!("seq{i}"));
        let logits = model.forward(&model.batch_ids(&[ids]).unwrap(), None).unwrap();
        let got: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        let d = max_abs_diff(&got, &g.f32(&format!("logits.seq{i}")).1);
        eprintln!("tiny_llama.gguf seq{i}: max |diff| = {d:.2e}");
        assert!(d <= TOL, "gguf seq{i}: {d}");
    }
    // The same weights with the wrong RoPE pairing do not match: the check can fail.
    let mut wrong = Model::load(&dir.join("tiny_llama.gguf"), &Device::Cpu).unwrap();
    for b in wrong.blocks.as_resident_mut().unwrap().iter_mut() {
        b.attn.rope.as_mut().unwrap().style = headroom::model::RopeStyle::RotateHalf;
    }
    let ids = g.ids("seq2");
    let got: Vec<f32> = wrong.forward(&wrong.batch_ids(&[ids]).unwrap(), None).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(max_abs_diff(&got, &g.f32("logits.seq2").1) > 1e-2);
}
