//! The fused CPU kernels (src/model/kernels.rs) against the composed candle ops they replace,
//! forward and backward, through the components that call them: each case runs once with the
//! kernels and once inside `kernels::composed` (same inputs, same process) and compares.
//! Shapes are odd on purpose (rows not a multiple of 16 lanes, T not a power of two), and every
//! case first checks that the kernel path is really taken, so a fallback cannot pass silently.

use candle_core::{DType, Device, Tensor, D};
use headroom::model::blocks::{Attention, Linear, Mlp, Norm};
use headroom::model::rope::Rope;
use headroom::model::{kernels, Activation, Layout, NormKind, RopeStyle, TreeRow};

const TOL: f32 = 2e-5;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // Deterministic normal-ish values without an RNG crate: sums of hashed uniforms.
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let v: Vec<f32> = (0..n).map(|_| (0..4).map(|_| next()).sum::<f32>() - 2.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// max |a - b| / max(1, max |b|).
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let m = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    d / m.max(1.0)
}

fn close(what: &str, fused: &Tensor, composed: &Tensor) {
    let r = rel_diff(fused, composed);
    assert!(r <= TOL, "{what}: fused vs composed differ by {r:e} (relative)");
}

fn norm(kind: NormKind, d: usize, bias: bool) -> Norm {
    let weight = randn(&[d], 1).affine(0.3, 1.0).unwrap();
    Norm { kind, weight, bias: bias.then(|| randn(&[d], 2)), eps: 1e-5 }
}

#[test]
fn norms_forward_and_backward() {
    for (kind, bias) in [(NormKind::RmsNorm, false), (NormKind::LayerNorm, true), (NormKind::LayerNorm, false)] {
        let n = norm(kind, 67, bias);
        let x = randn(&[3, 5, 67], 3).affine(2.0, 0.7).unwrap();
        let dy = randn(&[3, 5, 67], 4);
        assert!(kernels::norm_forward(kind, &x, &n.weight, n.bias.as_ref(), n.eps).is_some(), "kernel path taken");
        let (f, c) = (n.forward(&x).unwrap(), kernels::composed(|| n.forward(&x).unwrap()));
        close(&format!("{kind:?} forward"), &f, &c);
        let (f, c) = (n.backward(&x, &dy).unwrap(), kernels::composed(|| n.backward(&x, &dy).unwrap()));
        close(&format!("{kind:?} backward"), &f, &c);
    }
}

#[test]
fn non_contiguous_and_non_f32_inputs_take_the_composed_path() {
    let n = norm(NormKind::RmsNorm, 8, false);
    let x = randn(&[8, 3], 5).t().unwrap();
    assert!(kernels::norm_forward(NormKind::RmsNorm, &x, &n.weight, None, 1e-5).is_none());
    let x64 = randn(&[3, 8], 5).to_dtype(DType::F64).unwrap();
    assert!(kernels::norm_forward(NormKind::RmsNorm, &x64, &n.weight, None, 1e-5).is_none());
    // and the component still computes (composed)
    close("strided forward", &n.forward(&x).unwrap(), &kernels::composed(|| n.forward(&x.contiguous().unwrap()).unwrap()));
    assert!(kernels::composed(|| kernels::norm_forward(NormKind::RmsNorm, &x.contiguous().unwrap(), &n.weight, None, 1e-5)).is_none(), "composed() turns the kernels off");
}

fn linear(out: usize, inp: usize, bias: bool, seed: u64) -> Linear {
    Linear::new((randn(&[out, inp], seed) * (1.0 / (inp as f64).sqrt())).unwrap(), bias.then(|| (randn(&[out], seed + 1) * 0.1).unwrap()))
}

fn attention(h: usize, kv: usize, hd: usize, d: usize, rope: Option<(RopeStyle, usize)>, window: Option<usize>) -> Attention {
    let rope = rope.map(|(style, r)| Rope::new(style, r, 10000.0, &Rope::default_inv_freq(10000.0, r), 512, &Device::Cpu).unwrap());
    Attention {
        q: linear(h * hd, d, true, 10),
        k: linear(kv * hd, d, true, 20),
        v: linear(kv * hd, d, false, 30),
        o: linear(d, h * hd, true, 40),
        n_heads: h,
        n_kv_heads: kv,
        head_dim: hd,
        scale: 1.0 / (hd as f64).sqrt(),
        scale_queries: true,
        rope,
        sliding_window: window,
    }
}

/// Forward output, every kept activation, and the backward's dx and head dots, fused vs composed.
fn check_attention(name: &str, a: &Attention, layout: &Layout, gate: Option<&Tensor>, b: usize, t: usize, d: usize) {
    let x = randn(&[b, t, d], 7);
    let dy = randn(&[b, t, d], 8);
    let run = || {
        let (y, acts) = a.forward_acts(&x, layout, gate).unwrap();
        let (dx, dots) = a.backward(&acts, layout, gate, &dy).unwrap();
        (y, acts, dx, dots)
    };
    let (y, acts, dx, dots) = run();
    let (cy, cacts, cdx, cdots) = kernels::composed(run);
    close(&format!("{name}: output"), &y, &cy);
    close(&format!("{name}: q"), &acts.q, &cacts.q);
    close(&format!("{name}: k"), &acts.k, &cacts.k);
    close(&format!("{name}: v"), &acts.v, &cacts.v);
    close(&format!("{name}: pattern"), acts.pattern().unwrap(), cacts.pattern().unwrap());
    close(&format!("{name}: z"), &acts.z, &cacts.z);
    close(&format!("{name}: dx"), &dx, &cdx);
    close(&format!("{name}: head dots"), &dots, &cdots);
    // Masked entries are exactly 0 in both.
    let zeros_f = acts.pattern().unwrap().eq(0f32).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    let zeros_c = cacts.pattern().unwrap().eq(0f32).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(zeros_f, zeros_c, "{name}: masked entries");
}

#[test]
fn attention_mha_without_rope_causal() {
    let a = attention(3, 3, 8, 20, None, None);
    assert!(kernels::masked_softmax(&randn(&[1, 1, 5, 5], 1), kernels::RowMask::Causal { window: None }).is_some());
    check_attention("mha", &a, &Layout::Causal, None, 2, 19, 20);
}

#[test]
fn attention_gqa_rotate_half_partial_rotary_window_and_gates() {
    let a = attention(6, 2, 10, 24, Some((RopeStyle::RotateHalf, 6)), Some(5));
    let gate = Tensor::new(&[1f32, 0.0, 0.5, 1.0, 2.0, 1.0], &Device::Cpu).unwrap();
    check_attention("gqa rotate-half partial window", &a, &Layout::Causal, Some(&gate), 2, 23, 24);
}

#[test]
fn attention_adjacent_pairs_on_a_tree_layout() {
    let a = attention(4, 2, 8, 16, Some((RopeStyle::AdjacentPairs, 8)), None);
    let rows = [TreeRow { prefix: 5, branches: vec![3, 4] }, TreeRow { prefix: 2, branches: vec![6] }];
    let layout = Layout::tree(&rows, 12, None, &Device::Cpu).unwrap();
    check_attention("adjacent pairs, tree", &a, &layout, None, 2, 12, 16);
}

/// Tree layouts through the tiled kernel across row blocks (a prefix longer than a block, a
/// window, padding rows); a bias that shows a query a later key is refused (composed path).
#[test]
fn attention_tiled_tree_layouts() {
    let bias_of = |l: &Layout| match l {
        Layout::Custom { bias, .. } => bias.clone(),
        Layout::Causal => unreachable!(),
    };
    let rows = [TreeRow { prefix: 70, branches: vec![30, 41] }, TreeRow { prefix: 3, branches: vec![60, 2, 9] }];
    let t = 150;
    for window in [None, Some(50)] {
        let layout = Layout::tree(&rows, t, window, &Device::Cpu).unwrap();
        let probe = randn(&[2, 2, t, 8], 3);
        assert!(kernels::causal_attention(&probe, &probe, &probe, kernels::RowMask::Bias(&bias_of(&layout)), false).is_some(), "tiled kernel path taken");
        let a = attention(6, 3, 8, 24, Some((RopeStyle::RotateHalf, 8)), window);
        let gate = Tensor::new(&[1f32, 0.0, 0.5, 1.0, 2.0, 1.0], &Device::Cpu).unwrap();
        check_attention(&format!("tiled tree window {window:?}"), &a, &layout, Some(&gate), 2, t, 24);
    }
    // Row 3 of batch row 1 sees key 5: not a causal-bounded bias.
    let mut v = bias_of(&Layout::tree(&rows, t, None, &Device::Cpu).unwrap()).flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[(t + 3) * t + 5] = 0.0;
    let leaky = Tensor::from_vec(v, (2, 1, t, t), &Device::Cpu).unwrap();
    let probe = randn(&[2, 2, t, 8], 3);
    assert!(kernels::causal_attention(&probe, &probe, &probe, kernels::RowMask::Bias(&leaky), false).is_none());
}

/// The tiled causal kernel across several row blocks (T > BLOCK_ROWS, a last block cut short),
/// with GQA, a sliding window shorter than a block and one longer, gates and RoPE.
#[test]
fn attention_tiled_causal_across_row_blocks() {
    let t = 2 * kernels::BLOCK_ROWS + 23;
    let probe = randn(&[1, 2, t, 8], 3);
    let kv = randn(&[1, 1, t, 8], 4);
    assert!(kernels::causal_attention(&probe, &kv, &kv, kernels::RowMask::Causal { window: None }, false).is_some(), "tiled kernel path taken");
    assert!(kernels::composed(|| kernels::causal_attention(&probe, &kv, &kv, kernels::RowMask::Causal { window: None }, false)).is_none());
    // Without the pattern, z is the same.
    let (p, z) = kernels::causal_attention(&probe, &kv, &kv, kernels::RowMask::Causal { window: Some(40) }, true).unwrap().unwrap();
    let (none, z2) = kernels::causal_attention(&probe, &kv, &kv, kernels::RowMask::Causal { window: Some(40) }, false).unwrap().unwrap();
    assert!(p.is_some() && none.is_none());
    assert_eq!(rel_diff(&z, &z2), 0.0);
    let gate = Tensor::new(&[1f32, 0.0, 0.5, 1.0, 2.0, 1.0], &Device::Cpu).unwrap();
    for window in [None, Some(9), Some(100)] {
        let a = attention(6, 2, 16, 24, Some((RopeStyle::RotateHalf, 16)), window);
        check_attention(&format!("tiled gqa window {window:?}"), &a, &Layout::Causal, Some(&gate), 2, t, 24);
    }
    let a = attention(4, 4, 8, 16, None, None);
    check_attention("tiled mha", &a, &Layout::Causal, None, 1, kernels::BLOCK_ROWS, 16);
}

/// Products summed in the gemm (forward with bias: `b + x W^T`; input gradients `dy1 W1 + dy2 W2`)
/// against the composed matmuls and adds.
#[test]
fn linear_sums_match_matmuls_and_adds() {
    let (w1, w2, bias) = (randn(&[11, 7], 1), randn(&[11, 5], 2), randn(&[11], 3));
    let x = randn(&[2, 3, 7], 4);
    let f = kernels::linear_sum(&[kernels::Product { a: &x, w: &w1, transpose_w: true }], Some(&bias)).unwrap().unwrap();
    let c = x.reshape((6, 7)).unwrap().matmul(&w1.t().unwrap()).unwrap().broadcast_add(&bias).unwrap().reshape((2, 3, 11)).unwrap();
    close("b + x W^T", &f, &c);
    let (dy1, dy2) = (randn(&[2, 3, 11], 5), randn(&[2, 3, 11], 6));
    let (a1, a2) = (randn(&[6, 11], 7), randn(&[6, 11], 8));
    let (v1, v2) = (randn(&[11, 9], 9), randn(&[11, 9], 10));
    let f = kernels::linear_sum(&[kernels::Product { a: &a1, w: &v1, transpose_w: false }, kernels::Product { a: &a2, w: &v2, transpose_w: false }], None).unwrap().unwrap();
    let c = (a1.matmul(&v1).unwrap() + a2.matmul(&v2).unwrap()).unwrap();
    close("dy1 W1 + dy2 W2", &f, &c);
    // mismatched inner sizes are refused (the caller composes), never read out of bounds
    assert!(kernels::linear_sum(&[kernels::Product { a: &dy1, w: &v1, transpose_w: true }], None).is_none());
    assert!(kernels::linear_sum(&[kernels::Product { a: &a1, w: &v1, transpose_w: false }, kernels::Product { a: &dy2, w: &w2, transpose_w: false }], None).is_none());
}

#[test]
fn softmax_backward_kernel_matches() {
    let s = randn(&[2, 3, 9, 9], 11);
    let p = kernels::masked_softmax(&s, kernels::RowMask::Causal { window: Some(4) }).unwrap().unwrap();
    let da = randn(&[2, 3, 9, 9], 12);
    let f = kernels::softmax_backward(&p, &da).unwrap().unwrap();
    let row = (&da * &p).unwrap().sum_keepdim(D::Minus1).unwrap();
    let c = (&p * da.broadcast_sub(&row).unwrap()).unwrap();
    close("softmax backward", &f, &c);
}

#[test]
fn ffn_forward_and_backward_every_fused_activation() {
    let (d, f) = (13, 37);
    for act in [Activation::Silu, Activation::GeluTanh, Activation::Relu] {
        for gated in [true, false] {
            let mlp = if gated {
                Mlp::Gated { gate: linear(f, d, false, 50), up: linear(f, d, false, 51), down: linear(d, f, false, 52), act }
            } else {
                Mlp::Plain { fc1: linear(f, d, true, 53), fc2: linear(d, f, true, 54), act }
            };
            let x = (randn(&[2, 7, d], 9) * 1.5).unwrap();
            let dy = randn(&[2, 7, d], 10);
            let run = || {
                let (y, acts) = mlp.forward_acts(&x).unwrap();
                (y, mlp.backward(&acts, &dy).unwrap())
            };
            let (y, dx) = run();
            let (cy, cdx) = kernels::composed(run);
            close(&format!("{act:?} gated={gated} forward"), &y, &cy);
            close(&format!("{act:?} gated={gated} backward"), &dx, &cdx);
        }
    }
    let g = randn(&[4, 5], 1);
    assert!(kernels::glu_forward(Activation::Silu, &g, &g).is_some());
    assert!(kernels::glu_forward(Activation::GeluErf, &g, &g).is_none(), "no fused erf: composed");
}

#[test]
fn log_softmax_and_loss_rows() {
    let logits = (randn(&[5, 301], 21) * 4.0).unwrap();
    let f = kernels::log_softmax(&logits).unwrap().unwrap();
    let c = kernels::composed(|| headroom::model::log_softmax_last_dim(&logits).unwrap());
    close("log-softmax", &f, &c);
    let labels = [0u32, 300, 17, 17, 150];
    let weights = [1.0f32, 0.5, 0.25, 0.25, 1.0 / 3.0];
    let (picked, dl) = kernels::nll_and_grad(&logits, &labels, &weights).unwrap().unwrap();
    for (k, &l) in labels.iter().enumerate() {
        let want = c.get(k).unwrap().get(l as usize).unwrap().to_scalar::<f32>().unwrap();
        assert!((picked[k] - want).abs() <= 1e-5, "log p row {k}: {} vs {want}", picked[k]);
    }
    // dl = w (softmax - onehot): rows sum to 0, and match the composed expression.
    let onehot: Vec<f32> = (0..5 * 301).map(|i| if (i % 301) as u32 == labels[i / 301] { 1.0 } else { 0.0 }).collect();
    let onehot = Tensor::from_vec(onehot, (5, 301), &Device::Cpu).unwrap();
    let w = Tensor::from_vec(weights.to_vec(), (5, 1), &Device::Cpu).unwrap();
    let want = (c.exp().unwrap() - onehot).unwrap().broadcast_mul(&w).unwrap();
    close("loss gradient", &dl, &want);
}

#[test]
fn row_dots_match_the_product_sum() {
    let (a, b) = (randn(&[3, 4, 33], 31), randn(&[3, 4, 33], 32));
    let f = kernels::row_dots(&a, &b).unwrap().unwrap();
    close("row dots", &f, &(&a * &b).unwrap().sum(D::Minus1).unwrap());
}
