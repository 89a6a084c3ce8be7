//! Half-precision compute (`--dtype bf16|f16`) against PyTorch run in the same dtype, on every
//! golden variant (tests/golden/<variant>/dtype.safetensors, made by
//! `tools/make_golden.py --only dtype`): forward logits under fractional gates, and the
//! per-token head / FFN gate gradients (the importance dots) and the loss of one example.
//!
//! Tolerance: for each quantity, 2x PyTorch's own spread (max |PyTorch in bf16/f16 - PyTorch in
//! f32| over the same tensor, stored with the golden data). Why: headroom does the same
//! roundings as PyTorch at the same places (matmuls and residual adds in the compute dtype;
//! norm statistics, softmax, activations, log-softmax and the loss in f32; docs/precision.md),
//! (bias added before the matmul's one rounding, the score scale where the family applies it,
//! NeoX's parallel-residual sum order), so its half-precision logits are mostly bit-identical
//! to PyTorch's; where they are not (the order of gradient accumulation, GPT-2's
//! `gelu_new` built from rounded half-precision ops, f32 `exp` implementations) the drift is
//! rounding noise of the same kind as PyTorch's own half-vs-f32 drift, and a discrete event
//! such as a ReLU input flipping sign moves a gate dot by about that much. The loss is a
//! single number whose own spread can be ~0 by luck, so its tolerance comes from the spread
//! of the next-token log-probs it averages (|mean a - mean b| <= max |a_i - b_i|).
//!
//! And so that a pass means something: headroom's half-precision logits must sit clearly closer
//! to PyTorch's half run than its own f32 logits do (`half_is_closer_to_pytorch_half_than_f32_is`;
//! on most variants they are bit-identical), so computing in f32 by mistake (a dtype that never
//! reached the blocks) fails; and bf16 numbers must fail the f16 tolerance
//! (`a_wrong_precision_is_caught`).

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{golden_dir, max_abs_diff, Golden};
use headroom::model::{ComputeDtype, Layout, LoadOptions, Mask, Model, Placement, Target, WeightsMode};

const VARIANTS: [&str; 8] = ["opt_preln", "opt_postln", "gpt2", "neox", "neox_seq", "llama_gqa", "qwen2", "mistral_swa"];
/// Multiple of PyTorch's own half-vs-f32 spread that headroom's half run may differ by.
const SPREAD_FACTOR: f32 = 2.0;

/// Every tensor of a dtype.safetensors file as f32 (the bf16/f16 ones widened exactly).
struct Reference {
    t: HashMap<String, Tensor>,
}

impl Reference {
    fn open(path: &Path) -> Self {
        let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { t }
    }
    fn get(&self, name: &str) -> &Tensor {
        self.t.get(name).unwrap_or_else(|| panic!("reference tensor {name} missing"))
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        self.get(name).to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }
    fn scalar(&self, name: &str) -> f32 {
        self.f32s(name)[0]
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        self.get(name).to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap().iter().map(|&x| x as u32).collect()
    }
}

fn load(variant: &str, dtype: ComputeDtype) -> Model {
    let opts = LoadOptions { dtype, weights: WeightsMode::Resident, placement: Placement::cpu() };
    Model::load_with(&golden_dir().join(variant), &opts).unwrap_or_else(|e| panic!("{variant}: {e:#}"))
}

fn tag(dtype: ComputeDtype) -> &'static str {
    match dtype {
        ComputeDtype::Bf16 => "bf16",
        ComputeDtype::F16 => "f16",
        _ => "f32",
    }
}

/// What one model computes on the reference inputs.
struct Run {
    /// Logits under the fractional gates `[T * V]`, f32.
    logits: Vec<f32>,
    /// Head dots in PyTorch's layout `[L, T, H]`, FFN dots `[L, T]`, f32.
    head_dot: Vec<f32>,
    ffn_dot: Vec<f32>,
    loss: f32,
}

fn run(model: &Model, variant: &str, r: &Reference) -> Run {
    let g = Golden::open(&golden_dir().join(variant).join("golden.safetensors"));
    let (hs, heads) = g.f32("head_mask.fractional");
    let (_, ffns) = g.f32("ffn_mask.fractional");
    let mask = Mask { heads: heads.chunks(hs[1]).map(|r| r.to_vec()).collect(), ffns: ffns.clone() };
    let logits = model.forward(&model.batch_ids(&[r.ids("seq")]).unwrap(), Some(&mask)).unwrap();
    assert_eq!(logits.dtype(), DType::F32, "logits leave the model in f32");
    let logits: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();

    let ids = r.ids("grad_ids");
    let ctx = r.ids("ctx_len")[0] as usize;
    let t = ids.len();
    let batch = model.batch_ids(&[ids]).unwrap();
    let target = Target { row: 0, start: ctx, len: t - ctx };
    let gr = model.gate_gradients(&batch, &Layout::Causal, None, &[target]).unwrap();
    let mut head_dot = Vec::new();
    let mut ffn_dot = Vec::new();
    for (hd, fd) in gr.head_dot.iter().zip(&gr.ffn_dot) {
        // The dots are produced wide whatever the compute dtype.
        assert_eq!(hd.dtype(), DType::F32, "head dots are wide");
        // [1, H, T] -> [T, H]
        let hd = hd.to_dtype(DType::F32).unwrap().squeeze(0).unwrap().t().unwrap().contiguous().unwrap();
        head_dot.extend(hd.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        ffn_dot.extend(fd.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    Run { logits, head_dot, ffn_dot, loss: gr.losses[0] as f32 }
}

/// Root-mean-square difference.
fn rms_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    (a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt() as f32
}

/// (quantity, headroom's max |diff| to PyTorch in the same dtype, tolerance).
fn diffs(got: &Run, r: &Reference, tag: &str) -> Vec<(&'static str, f32, f32)> {
    let tol = |q: &str| SPREAD_FACTOR * r.scalar(&format!("spread.{q}.{tag}"));
    vec![
        ("logits", max_abs_diff(&got.logits, &r.f32s(&format!("logits.{tag}"))), tol("logits")),
        ("head_dot", max_abs_diff(&got.head_dot, &r.f32s(&format!("head_dot.{tag}"))), tol("head_dot")),
        ("ffn_dot", max_abs_diff(&got.ffn_dot, &r.f32s(&format!("ffn_dot.{tag}"))), tol("ffn_dot")),
        // The loss is one number whose own spread can be ~0 by luck; it is the mean of
        // next-token log-probs, so the largest spread among those bounds it.
        ("loss", (got.loss - r.scalar(&format!("loss.{tag}"))).abs(), tol("token_logprob")),
    ]
}

fn check(dtype: ComputeDtype) {
    let tag = tag(dtype);
    let mut failures = Vec::new();
    for v in VARIANTS {
        let r = Reference::open(&golden_dir().join(v).join("dtype.safetensors"));
        let model = load(v, dtype);
        assert_eq!(model.info.compute_dtype, tag, "{v}: the blocks compute in the asked dtype");
        let got = run(&model, v, &r);
        for (q, d, tol) in diffs(&got, &r, tag) {
            eprintln!("{v:12} {tag:4} {q:9} max |headroom - PyTorch {tag}| = {d:.3e}  (tolerance {tol:.3e} = {SPREAD_FACTOR} x PyTorch's own {tag}-vs-f32 spread)");
            if d.is_nan() || d > tol {
                failures.push(format!("{v} {q}: {d:.3e} > {tol:.3e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{tag} vs PyTorch {tag}: {failures:?}");
}

#[test]
fn bf16_matches_pytorch_bf16_on_every_variant() {
    check(ComputeDtype::Bf16);
}

#[test]
fn f16_matches_pytorch_f16_on_every_variant() {
    check(ComputeDtype::F16);
}

/// headroom does PyTorch's roundings, not merely "some half-precision rounding": its bf16/f16
/// logits are nearer PyTorch's bf16/f16 logits (RMS over every logit) than its f32 logits are,
/// by a margin, on every variant but GPT-2. So a dtype that silently stayed f32 (or a
/// precision path that rounds elsewhere than PyTorch) fails here although f32 is the more
/// accurate. On OPT, NeoX (sequential), Llama, Qwen2 and Mistral the bf16 logits come out bit
/// for bit equal to PyTorch's. GPT-2 is left out: transformers' `gelu_new` is a chain of
/// half-precision ops each rounded, where headroom (like PyTorch's own GELU kernels) rounds once,
/// and its scores are divided by sqrt(hd) rounded to the half type.
#[test]
fn half_is_closer_to_pytorch_half_than_f32_is() {
    let mut failures = Vec::new();
    for v in VARIANTS.into_iter().filter(|v| *v != "gpt2") {
        let r = Reference::open(&golden_dir().join(v).join("dtype.safetensors"));
        let f32_logits = run(&load(v, ComputeDtype::F32), v, &r).logits;
        for dtype in [ComputeDtype::Bf16, ComputeDtype::F16] {
            let tag = tag(dtype);
            let want = r.f32s(&format!("logits.{tag}"));
            let half = rms_diff(&run(&load(v, dtype), v, &r).logits, &want);
            let wide = rms_diff(&f32_logits, &want);
            eprintln!("{v:12} {tag:4} RMS |logits - PyTorch {tag}|: {tag} run {half:.3e}, f32 run {wide:.3e} ({:.2})", half / wide);
            if half > 0.9 * wide {
                failures.push(format!("{v} {tag}: the {tag} run ({half:.3e}) is not clearly closer to PyTorch {tag} than the f32 run ({wide:.3e})"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// The tolerance is tight enough to tell precisions apart: headroom's bf16 logits (7 mantissa
/// bits where f16 has 10) break the f16 tolerance on every variant. A precision path wrong by
/// that much (a softmax, a norm or the loss left in bf16 where f32 belongs costs at least as
/// much) cannot pass.
#[test]
fn a_wrong_precision_is_caught() {
    for v in VARIANTS {
        let r = Reference::open(&golden_dir().join(v).join("dtype.safetensors"));
        let bf16 = run(&load(v, ComputeDtype::Bf16), v, &r);
        let (q, d, tol) = diffs(&bf16, &r, "f16").swap_remove(0);
        assert_eq!(q, "logits");
        eprintln!("{v:12} bf16 logits vs PyTorch f16: {d:.3e} (f16 tolerance {tol:.3e})");
        assert!(d > tol, "{v}: bf16 logits ({d:.3e}) pass the f16 tolerance ({tol:.3e}); it cannot tell precisions apart");
    }
}

/// `--dtype` reaches the model and is shown and recorded: `headroom inspect` prints the compute
/// dtype and the weights mode.
#[test]
fn inspect_shows_compute_dtype_and_weights_mode() {
    let model = golden_dir().join("llama_gqa");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["--dtype", "bf16", "--weights", "stream", "inspect", "--model", model.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let row = |k: &str| text.lines().find(|l| l.trim_start().starts_with(k)).map(|l| l.split_whitespace().last().unwrap_or("").to_string());
    assert_eq!(row("compute dtype").as_deref(), Some("bf16"), "{text}");
    assert_eq!(row("weights ").as_deref(), Some("stream"), "{text}");
}
