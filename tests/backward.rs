//! The activation-only backward against (1) central finite differences in f64, block by block
//! and through the whole model, and (2) PyTorch's autograd on the golden models.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{golden_dir, Golden};
use headroom::model::{Activations, Layout, Mask, Model, Target, TreeRow};

const VARIANTS: [&str; 8] = ["opt_preln", "opt_postln", "gpt2", "neox", "neox_seq", "llama_gqa", "qwen2", "mistral_swa"];

fn f64_model(variant: &str) -> Model {
    Model::load(&golden_dir().join(variant), &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            // Box-Muller over a xorshift stream: deterministic, no extra crate.
            let mut u = || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
            };
            let (a, b) = (u(), u());
            (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    (a * b).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
}

/// ||a - n|| / ||n|| over paired values.
fn rel_err(a: &[f64], n: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(n).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let den: f64 = n.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(1e-300)
}

/// Finite differences of phi(x, gates) = <block(x), R> against the block's backward, for input
/// entries, every head gate and the FFN gate, with non-trivial gates and both layouts.
fn check_block(variant: &str) {
    let m = f64_model(variant);
    let (b, t, d) = (2, 7, m.info.hidden);
    let h = m.info.n_heads;
    let block = &m.blocks.as_resident().unwrap()[1];
    let x = randn(&[b, t, d], 1);
    let r = randn(&[b, t, d], 2);
    let gate_vals: Vec<f32> = (0..h).map(|i| 0.5 + 0.25 * i as f32).collect();
    let ffn_gate = 0.75f32;
    let tree = Layout::tree(
        &[TreeRow { prefix: 3, branches: vec![2, 2] }, TreeRow { prefix: 4, branches: vec![3] }],
        t,
        m.info.sliding_window,
        &Device::Cpu,
    )
    .unwrap();
    for (lname, layout) in [("causal", Layout::Causal), ("tree", tree)] {
        let gates = |g: &[f32]| Tensor::from_slice(g, h, &Device::Cpu).unwrap();
        let phi = |x: &Tensor, g: &[f32], fg: f32| dot(&block.forward(x, &layout, Some(&gates(g)), fg, None).unwrap(), &r);
        let grads = block.backward_recompute(&x, &layout, Some(&gates(&gate_vals)), ffn_gate, &r).unwrap();
        let eps = 1e-5;
        // Input entries: a deterministic sample of 60.
        let xv: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
        let dxv: Vec<f64> = grads.dx.flatten_all().unwrap().to_vec1().unwrap();
        let (mut ana, mut num) = (vec![], vec![]);
        for k in 0..60 {
            let i = (k * 7919) % xv.len();
            let mut plus = xv.clone();
            plus[i] += eps;
            let mut minus = xv.clone();
            minus[i] -= eps;
            let fp = phi(&Tensor::from_vec(plus, x.dims(), &Device::Cpu).unwrap(), &gate_vals, ffn_gate);
            let fm = phi(&Tensor::from_vec(minus, x.dims(), &Device::Cpu).unwrap(), &gate_vals, ffn_gate);
            num.push((fp - fm) / (2.0 * eps));
            ana.push(dxv[i]);
        }
        let e = rel_err(&ana, &num);
        eprintln!("{variant:12} {lname:6} dx: rel err {e:.2e}");
        assert!(e <= 1e-6, "{variant} {lname} dx rel err {e}");
        // Head gates: dphi/dg_h = sum over batch and tokens of head_dot / ... but head_dot is
        // <o, d(g o)>, i.e. the gradient w.r.t. the gate at g; equal to dphi/dg_h.
        let hd: Vec<Vec<f64>> = grads.head_dot.sum(0).unwrap().to_vec2().unwrap(); // [H, T]
        let (mut ana, mut num) = (vec![], vec![]);
        for hh in 0..h {
            let mut gp = gate_vals.clone();
            gp[hh] += eps as f32;
            let mut gm = gate_vals.clone();
            gm[hh] -= eps as f32;
            let step = (gp[hh] - gm[hh]) as f64; // f32 gates: use the representable step
            num.push((phi(&x, &gp, ffn_gate) - phi(&x, &gm, ffn_gate)) / step);
            ana.push(hd[hh].iter().sum());
        }
        let e = rel_err(&ana, &num);
        eprintln!("{variant:12} {lname:6} head gates: rel err {e:.2e}");
        assert!(e <= 1e-6, "{variant} {lname} head gate rel err {e}");
        // FFN gate.
        let step = ((ffn_gate + eps as f32) - (ffn_gate - eps as f32)) as f64;
        let num = (phi(&x, &gate_vals, ffn_gate + eps as f32) - phi(&x, &gate_vals, ffn_gate - eps as f32)) / step;
        let ana = grads.ffn_dot.sum_all().unwrap().to_scalar::<f64>().unwrap();
        let e = rel_err(&[ana], &[num]);
        eprintln!("{variant:12} {lname:6} ffn gate: rel err {e:.2e}");
        assert!(e <= 1e-6, "{variant} {lname} ffn gate rel err {e}");
    }
}

#[test]
fn every_block_backward_matches_finite_differences_in_f64() {
    for v in VARIANTS {
        check_block(v);
    }
}

/// Whole model, f64: the loss's derivative w.r.t. each gate (via Mask forwards) equals the
/// summed dots, also through the head (final norm, project_out, unembedding).
#[test]
fn whole_model_gate_gradients_match_finite_differences() {
    for v in VARIANTS {
        let m = f64_model(v);
        let g = Golden::open(&golden_dir().join(v).join("grads.safetensors"));
        let ids = g.ids("ids");
        let ctx = g.i64s["ctx_len"][0] as usize;
        let batch = m.batch_ids(std::slice::from_ref(&ids)).unwrap();
        let target = [Target { row: 0, start: ctx, len: ids.len() - ctx }];
        let loss = |mask: &Mask| m.gate_gradients(&batch, &Layout::Causal, Some(mask), &target).unwrap().losses[0];
        let base = m.full_mask();
        let gr = m.gate_gradients(&batch, &Layout::Causal, Some(&base), &target).unwrap();
        // Mask gates are f32, so the step must be exact there: 1 +- 2^-16 is. It must also be
        // small: OPT's ReLU FFNs are piecewise linear, and a step of 2^-7 flips units (the FD
        // then crosses kinks; seen as 4e-3 error on opt_postln). In f64 the loss difference
        // keeps ~10 significant digits at this step.
        let central = |set: &dyn Fn(&mut Mask, f32), h: f32| {
            let (mut p, mut q) = (base.clone(), base.clone());
            set(&mut p, 1.0 + h);
            set(&mut q, 1.0 - h);
            (loss(&p) - loss(&q)) / (2.0 * h as f64)
        };
        let fd = |set: &dyn Fn(&mut Mask, f32)| central(set, 1.0 / 65536.0);
        let (mut ana, mut num) = (vec![], vec![]);
        for l in 0..m.n_layers() {
            let dots: Vec<Vec<f64>> = gr.head_dot[l].get(0).unwrap().to_vec2().unwrap();
            for (h, dot) in dots.iter().enumerate().take(m.n_heads()) {
                num.push(fd(&|mk: &mut Mask, g: f32| mk.heads[l][h] = g));
                ana.push(dot.iter().sum());
            }
            num.push(fd(&|mk: &mut Mask, g: f32| mk.ffns[l] = g));
            ana.push(gr.ffn_dot[l].sum_all().unwrap().to_scalar::<f64>().unwrap());
        }
        let e = rel_err(&ana, &num);
        eprintln!("{v:12} whole-model gates: rel err {e:.2e}");
        assert!(e <= 1e-6, "{v}: {e}");
    }
}

/// f32 per-token dots and losses against PyTorch autograd with per-token gates.
#[test]
fn per_token_gate_gradients_match_pytorch() {
    for v in VARIANTS {
        let m = Model::load(&golden_dir().join(v), &Device::Cpu).unwrap();
        let g = Golden::open(&golden_dir().join(v).join("grads.safetensors"));
        let ids = g.ids("ids");
        let ctx = g.i64s["ctx_len"][0] as usize;
        let batch = m.batch_ids(std::slice::from_ref(&ids)).unwrap();
        let gr = m.gate_gradients(&batch, &Layout::Causal, None, &[Target { row: 0, start: ctx, len: ids.len() - ctx }]).unwrap();
        let (_, want_loss) = g.f32("loss");
        assert!((gr.losses[0] - want_loss[0] as f64).abs() < 1e-5, "{v} loss {} vs {}", gr.losses[0], want_loss[0]);
        let (hs, want_h) = g.f32("head_dot"); // [L, T, H]
        let (_, want_f) = g.f32("ffn_dot"); // [L, T]
        let (l_n, t_n, h_n) = (hs[0], hs[1], hs[2]);
        let mut got_h = vec![0f32; want_h.len()];
        let mut got_f = vec![0f32; want_f.len()];
        for l in 0..l_n {
            let hd: Vec<Vec<f32>> = gr.head_dot[l].get(0).unwrap().to_vec2().unwrap(); // [H, T]
            let fd: Vec<f32> = gr.ffn_dot[l].get(0).unwrap().to_vec1().unwrap();
            for t in 0..t_n {
                for h in 0..h_n {
                    got_h[(l * t_n + t) * h_n + h] = hd[h][t];
                }
                got_f[l * t_n + t] = fd[t];
            }
        }
        let scale_h = want_h.iter().fold(0f32, |a, &x| a.max(x.abs()));
        let scale_f = want_f.iter().fold(0f32, |a, &x| a.max(x.abs()));
        let eh = common::max_abs_diff(&got_h, want_h) / scale_h;
        let ef = common::max_abs_diff(&got_f, want_f) / scale_f;
        eprintln!("{v:12} per-token dots vs pytorch: heads {eh:.2e}, ffns {ef:.2e} (relative to max)");
        assert!(eh <= 1e-4 && ef <= 1e-4, "{v}: heads {eh}, ffns {ef}");
    }
}

/// Each example is its own loss: batching (with padding) changes nothing.
#[test]
fn batched_examples_give_the_same_dots_as_single_ones() {
    let m = Model::load(&golden_dir().join("llama_gqa"), &Device::Cpu).unwrap();
    let g = Golden::open(&golden_dir().join("llama_gqa/golden.safetensors"));
    let (a, b) = (g.ids("seq2"), g.ids("seq1"));
    let ta = Target { row: 0, start: 12, len: 7 };
    let tb = Target { row: 1, start: 9, len: 2 };
    let both = m.gate_gradients(&m.batch_ids(&[a.clone(), b.clone()]).unwrap(), &Layout::Causal, None, &[ta, tb]).unwrap();
    let one_a = m.gate_gradients(&m.batch_ids(&[a]).unwrap(), &Layout::Causal, None, &[Target { row: 0, ..ta }]).unwrap();
    let one_b = m.gate_gradients(&m.batch_ids(std::slice::from_ref(&b)).unwrap(), &Layout::Causal, None, &[Target { row: 0, ..tb }]).unwrap();
    for l in 0..m.n_layers() {
        let full: Vec<Vec<Vec<f32>>> = both.head_dot[l].to_vec3().unwrap();
        let sa: Vec<Vec<f32>> = one_a.head_dot[l].get(0).unwrap().to_vec2().unwrap();
        let sb: Vec<Vec<f32>> = one_b.head_dot[l].get(0).unwrap().to_vec2().unwrap();
        for h in 0..m.n_heads() {
            assert!(common::max_abs_diff(&full[0][h], &sa[h]) < 1e-5);
            // f32: a batch runs other gemm blockings, so allow rounding (values are O(0.5)).
            assert!(common::max_abs_diff(&full[1][h][..b.len()], &sb[h]) < 1e-5);
            // Padding positions get no gradient.
            assert!(full[1][h][b.len()..].iter().all(|&x| x == 0.0));
        }
    }
    assert!((both.losses[0] - one_a.losses[0]).abs() < 1e-6 && (both.losses[1] - one_b.losses[0]).abs() < 1e-6);
}

/// Keeping activations from the forward and recomputing them give identical gradients.
#[test]
fn kept_and_recomputed_activations_agree() {
    for v in ["opt_postln", "neox", "qwen2"] {
        let m = Model::load(&golden_dir().join(v), &Device::Cpu).unwrap();
        let g = Golden::open(&golden_dir().join(v).join("golden.safetensors"));
        let (a, b) = (g.ids("seq2"), g.ids("seq1"));
        let ids = m.batch_ids(&[a, b]).unwrap();
        let targets = [Target { row: 0, start: 10, len: 9 }, Target { row: 1, start: 5, len: 6 }];
        let mut mask = m.full_mask();
        mask.heads[1][2] = 0.0;
        mask.ffns[0] = 0.0;
        let keep = m.gate_gradients_with(&ids, &Layout::Causal, Some(&mask), &targets, Activations::Keep).unwrap();
        let re = m.gate_gradients_with(&ids, &Layout::Causal, Some(&mask), &targets, Activations::Recompute).unwrap();
        assert_eq!(keep.losses, re.losses);
        for l in 0..m.n_layers() {
            let (x, y): (Vec<f32>, Vec<f32>) = (keep.head_dot[l].flatten_all().unwrap().to_vec1().unwrap(), re.head_dot[l].flatten_all().unwrap().to_vec1().unwrap());
            assert_eq!(x, y, "{v} layer {l}");
            let (x, y): (Vec<f32>, Vec<f32>) = (keep.ffn_dot[l].flatten_all().unwrap().to_vec1().unwrap(), re.ffn_dot[l].flatten_all().unwrap().to_vec1().unwrap());
            assert_eq!(x, y, "{v} layer {l}");
        }
        // A removed FFN still has a (nonzero) gate gradient.
        assert!(keep.ffn_dot[0].abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }
}

/// The bottom block's shortcut (only the gate dots, no input gradient) gives exactly the dots of
/// the full backward, for every residual wiring of the golden variants, in f32 (the kernels'
/// dtype) and f64.
#[test]
fn gate_dots_equal_the_full_backwards_dots() {
    for v in VARIANTS {
        for dt in [DType::F32, DType::F64] {
            let m = f64_model(v).to_dtype(dt).unwrap();
            let block = &m.blocks.as_resident().unwrap()[0];
            let (b, t, d) = (2, 7, m.info.hidden);
            let (x, dy) = (randn(&[b, t, d], 3).to_dtype(dt).unwrap(), randn(&[b, t, d], 4).to_dtype(dt).unwrap());
            let gates = Tensor::from_slice(&(0..m.info.n_heads).map(|i| 0.5 + 0.25 * i as f32).collect::<Vec<_>>(), m.info.n_heads, &Device::Cpu).unwrap();
            let (_, acts) = block.forward_acts(&x, &Layout::Causal, Some(&gates), 0.75).unwrap();
            let full = block.backward(&acts, &Layout::Causal, Some(&gates), 0.75, &dy).unwrap();
            let (h, f) = block.gate_dots(&acts, 0.75, &dy).unwrap();
            let bits = |a: &Tensor| a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            assert_eq!(bits(&h), bits(&full.head_dot), "{v} {dt:?}: head dots");
            assert_eq!(bits(&f), bits(&full.ffn_dot), "{v} {dt:?}: ffn dots");
        }
    }
}
