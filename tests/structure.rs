//! The one activation record (issue 13, structure): the plain forward, capture, the
//! activation-keeping forward and the model's layer loop all read the same `BlockActs`, on every
//! residual wiring (pre-norm OPT, post-norm OPT-350m style, parallel NeoX, sequential NeoX,
//! Llama GQA), with fractional head gates and a removed FFN.

mod common;

use candle_core::{Device, Tensor};
use headroom::model::{Capture, Keep, Layout, Mask, Model};

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn capture_forward_acts_and_layer_loop_agree_on_every_wiring() {
    for variant in ["opt_preln", "opt_postln", "neox", "neox_seq", "llama_gqa"] {
        let m = Model::load(&common::golden_dir().join(variant), &Device::Cpu).unwrap();
        let (nl, nh) = (m.n_layers(), m.n_heads());
        let mut mask = Mask::ones(nl, nh);
        mask.heads[0][0] = 0.0;
        mask.heads[nl - 1][nh - 1] = 0.5;
        mask.ffns[0] = 0.0;
        let ids = m.batch_ids(&[vec![3, 9, 4, 7, 1, 5, 2], vec![8, 6, 2]]).unwrap();
        let mut cap = Capture::new(nl, true, true);
        let hidden = m.forward_hidden(&ids, Some(&mask), Some(&mut cap)).unwrap();
        // The layer loop's records are what capture recorded, and each block's plain forward
        // equals its activation-keeping forward (which still computes the removed FFN).
        let gates = m.head_gates(Some(&mask)).unwrap();
        let mut x = m.embed.forward(&ids, &Layout::Causal).unwrap();
        let looped = m
            .forward_layers(&ids, &Layout::Causal, Some(&mask), Keep { removed_ffn: false, pattern: true }, &mut |l, block, acts, g| {
                let c = &cap.layers[l];
                assert_eq!(max_abs(acts.attn.pattern().unwrap(), c.attn_probs.as_ref().unwrap()), 0.0, "{variant} layer {l} pattern");
                let heads = block.attn.gated_heads(&acts.attn.z, g).unwrap();
                assert_eq!(max_abs(&heads, c.head_outputs.as_ref().unwrap()), 0.0, "{variant} layer {l} head outputs");
                assert_eq!(acts.mlp_out.is_none(), l == 0, "{variant} layer {l}: a removed FFN is skipped in a plain forward");
                Ok(())
            })
            .unwrap();
        assert_eq!(max_abs(&looped, &hidden), 0.0, "{variant} layer loop vs forward_hidden");
        // A plain forward keeps no pattern and gives the same output.
        let bare = m
            .forward_layers(&ids, &Layout::Causal, Some(&mask), Keep::OUTPUT, &mut |l, _, acts, _| {
                assert!(acts.attn.pattern.is_none(), "{variant} layer {l}: Keep::OUTPUT keeps no pattern");
                Ok(())
            })
            .unwrap();
        assert_eq!(max_abs(&bare, &hidden), 0.0, "{variant}: the forward without patterns");
        for (l, block) in m.blocks.as_resident().unwrap().iter().enumerate() {
            let ffn_gate = m.ffn_gate(Some(&mask), l);
            let plain = block.forward(&x, &Layout::Causal, gates[l].as_ref(), ffn_gate, None).unwrap();
            let (kept, acts) = block.forward_acts(&x, &Layout::Causal, gates[l].as_ref(), ffn_gate).unwrap();
            assert!(acts.mlp_out.is_some() && acts.mlp.is_some(), "{variant} layer {l}: forward_acts keeps the FFN");
            assert_eq!(max_abs(&plain, &kept), 0.0, "{variant} layer {l} forward vs forward_acts");
            assert_eq!(max_abs(&acts.resid_pre, &x), 0.0);
            x = plain;
        }
        assert_eq!(max_abs(&x, &hidden), 0.0, "{variant} block-by-block vs forward_hidden");
    }
}
