//! Shared-prefix ("tree") layouts give, for every branch, exactly the logits of running
//! prefix + branch as its own sequence: the basis of shared-context option scoring.

mod common;

use candle_core::{Device, Tensor};
use common::{golden_dir, max_abs_diff};
use headroom::model::{Layout, Model, TreeRow};

fn naive(m: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
    m.forward(&m.batch_ids(&[ids.to_vec()]).unwrap(), None).unwrap().get(0).unwrap().to_vec2().unwrap()
}

fn check(model_path: &std::path::Path, prefix_len: usize, branch_lens: &[usize]) {
    let m = Model::load(model_path, &Device::Cpu).unwrap();
    let v = m.info.vocab_size as u32;
    let tok = |i: usize| ((i * 7919 + 13) as u32) % v;
    let prefix: Vec<u32> = (0..prefix_len).map(tok).collect();
    let branches: Vec<Vec<u32>> =
        branch_lens.iter().enumerate().map(|(k, &n)| (0..n).map(|j| tok(1000 + 100 * k + j)).collect()).collect();
    // Two rows in one batch: the full tree, and a smaller tree (first branch only), padded.
    let rows = vec![
        TreeRow { prefix: prefix_len, branches: branch_lens.to_vec() },
        TreeRow { prefix: prefix_len, branches: vec![branch_lens[0]] },
    ];
    let t = rows[0].len();
    let mut flat0 = prefix.clone();
    branches.iter().for_each(|b| flat0.extend(b));
    let mut flat1 = prefix.clone();
    flat1.extend(&branches[0]);
    flat1.resize(t, 0);
    let ids = Tensor::from_vec([flat0, flat1].concat(), (2, t), &Device::Cpu).unwrap();
    let layout = Layout::tree(&rows, t, m.info.sliding_window, &Device::Cpu).unwrap();
    let hidden = m.forward_hidden_with(&ids, &layout, None, None).unwrap();
    let logits = m.logits(&hidden).unwrap();
    let row0: Vec<Vec<f32>> = logits.get(0).unwrap().to_vec2().unwrap();
    let row1: Vec<Vec<f32>> = logits.get(1).unwrap().to_vec2().unwrap();
    let mut start = prefix_len;
    for (k, b) in branches.iter().enumerate() {
        let mut seq = prefix.clone();
        seq.extend(b);
        let want = naive(&m, &seq);
        // prefix positions
        for p in 0..prefix_len {
            assert!(max_abs_diff(&row0[p], &want[p]) <= 1e-4);
        }
        for j in 0..b.len() {
            let d = max_abs_diff(&row0[start + j], &want[prefix_len + j]);
            assert!(d <= 1e-4, "{} branch {k} token {j}: {d}", model_path.display());
            if k == 0 {
                assert!(max_abs_diff(&row1[start + j], &want[prefix_len + j]) <= 1e-4);
            }
        }
        start += b.len();
    }
}

#[test]
fn tree_equals_naive_on_every_family() {
    for v in ["opt_preln", "opt_postln", "gpt2", "neox", "llama_gqa", "qwen2"] {
        check(&golden_dir().join(v), 7, &[3, 5, 1]);
    }
    check(&golden_dir().join("gguf/tiny_llama.gguf"), 6, &[4, 2]);
}

#[test]
fn tree_respects_the_sliding_window() {
    // mistral_swa has a window of 6; a prefix of 9 and long branches cross it.
    check(&golden_dir().join("mistral_swa"), 9, &[5, 8]);
}

#[test]
fn tree_on_the_real_model() {
    let Some(p) = common::default_model() else { return };
    check(&p, 40, &[6, 9, 3, 12]);
}
