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
        for i in 0..n_seqs {
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
    let (_, a) = g.f32("logits.unmasked.seq2");
    let (_, b) = g.f32("logits.masked.seq2");
    assert!(max_abs_diff(a, b) > 1e-2, "{variant}: masking changed nothing in the golden data");

    // Captures: attention probabilities and per-head outputs, unmasked, longest sequence.
    let ids = g.ids("seq2");
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
