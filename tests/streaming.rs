//! Streamed weights and placements over several devices give the same numbers as one resident
//! model: logits, captures, gate gradients and losses, on every golden variant (HF and GGUF).
//!
//! Bit-identical is the expectation, not a tolerance: a streamed block is built by the same
//! code from the same bytes as a resident one, and `cpu,cpu` only adds `to_device` calls that
//! are no-ops between ranges on one CPU. A difference here is a bug (a tensor built twice in
//! another order, a gate on the wrong layer), so the comparisons are `== 0.0`.

mod common;

use candle_core::{Device, Tensor};
use common::golden_dir;
use headroom::model::{Activations, Capture, ComputeDtype, Layout, LoadOptions, Mask, Model, Placement, Target, TreeRow, WeightsMode};

const VARIANTS: [&str; 9] = ["opt_preln", "opt_postln", "gpt2", "neox", "neox_seq", "llama_gqa", "qwen2", "mistral_swa", "gguf/tiny_llama.gguf"];

fn load(variant: &str, weights: WeightsMode, placement: &str) -> Model {
    let opts = LoadOptions { dtype: ComputeDtype::F32, weights, placement: Placement::parse(placement).unwrap() };
    Model::load_with(&golden_dir().join(variant), &opts).unwrap_or_else(|e| panic!("{variant} ({weights:?}, {placement}): {e:#}"))
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1().unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| if x == y { 0.0 } else { (x - y).abs().max(f32::MIN_POSITIVE) }).fold(0.0, f32::max)
}

/// A mask with a removed head in the first and last layer, a fractional gate, and a removed FFN.
fn test_mask(m: &Model) -> Mask {
    let mut mask = m.full_mask();
    let last = m.n_layers() - 1;
    mask.heads[0][0] = 0.0;
    mask.heads[last][m.n_heads() - 1] = 0.0;
    mask.heads[last][0] = 0.5;
    mask.ffns[last] = 0.0;
    mask
}

/// Everything the stages read from a model, for one configuration.
struct Outputs {
    logits: Vec<f32>,
    masked_logits: Vec<f32>,
    probs: Vec<Vec<f32>>,
    head_dot: Vec<Vec<f32>>,
    ffn_dot: Vec<Vec<f32>>,
    losses: Vec<f64>,
}

fn outputs(m: &Model, ids: &[u32], policy: Activations) -> Outputs {
    let batch = m.batch_ids(&[ids.to_vec(), ids[..ids.len() - 2].to_vec()]).unwrap();
    let mask = test_mask(m);
    let logits = flat(&m.forward(&batch, None).unwrap());
    let masked_logits = flat(&m.forward(&batch, Some(&mask)).unwrap());
    let mut cap = Capture::new(m.n_layers(), true, false);
    m.forward_hidden(&batch, None, Some(&mut cap)).unwrap();
    let probs = cap.layers.iter().map(|c| flat(c.attn_probs.as_ref().unwrap())).collect();
    // Gate gradients on a tree layout (shared prefix, two branches) under the mask.
    let t = ids.len();
    let tree = Layout::tree(&[TreeRow { prefix: 3, branches: vec![2, 2] }, TreeRow { prefix: 4, branches: vec![3] }], t, m.info.sliding_window, &m.device).unwrap();
    let targets = [Target { row: 0, start: 3, len: 2 }, Target { row: 0, start: 5, len: 2 }, Target { row: 1, start: 4, len: 3 }];
    let g = m.gate_gradients_with(&batch, &tree, Some(&mask), &targets, policy).unwrap();
    Outputs {
        logits,
        masked_logits,
        probs,
        head_dot: g.head_dot.iter().map(flat).collect(),
        ffn_dot: g.ffn_dot.iter().map(flat).collect(),
        losses: g.losses,
    }
}

fn assert_same(variant: &str, what: &str, a: &Outputs, b: &Outputs) {
    assert_eq!(max_abs(&a.logits, &b.logits), 0.0, "{variant} {what}: logits");
    assert_eq!(max_abs(&a.masked_logits, &b.masked_logits), 0.0, "{variant} {what}: masked logits");
    for l in 0..a.probs.len() {
        assert_eq!(max_abs(&a.probs[l], &b.probs[l]), 0.0, "{variant} {what}: attention probs, layer {l}");
        assert_eq!(max_abs(&a.head_dot[l], &b.head_dot[l]), 0.0, "{variant} {what}: head gate dots, layer {l}");
        assert_eq!(max_abs(&a.ffn_dot[l], &b.ffn_dot[l]), 0.0, "{variant} {what}: FFN gate dots, layer {l}");
    }
    assert_eq!(a.losses, b.losses, "{variant} {what}: losses");
}

#[test]
fn streamed_and_placed_models_match_resident_bit_for_bit() {
    for variant in VARIANTS {
        let resident = load(variant, WeightsMode::Resident, "cpu");
        // 11 tokens: longer than mistral_swa's window of 6.
        let v = resident.info.vocab_size;
        let ids: Vec<u32> = (0..11).map(|i| ((i * 37 + 5) % v) as u32).collect();
        assert!(!resident.blocks.is_streamed());
        let want = outputs(&resident, &ids, Activations::Keep);
        // The reference itself must react to the mask and the gradient must be non-trivial,
        // or equality would prove nothing.
        assert!(max_abs(&want.logits, &want.masked_logits) > 1e-3, "{variant}: the mask changed nothing");
        assert!(want.head_dot.iter().flatten().any(|x| x.abs() > 1e-6), "{variant}: all head gate dots are zero");
        for (weights, placement, policy) in [
            (WeightsMode::Stream, "cpu", Activations::Keep),
            (WeightsMode::Stream, "cpu", Activations::Recompute),
            (WeightsMode::Resident, "cpu,cpu", Activations::Keep),
            (WeightsMode::Stream, "cpu,cpu,cpu", Activations::Recompute),
        ] {
            let m = load(variant, weights, placement);
            assert_eq!(m.blocks.is_streamed(), weights == WeightsMode::Stream);
            assert_eq!(m.info.n_params, resident.info.n_params, "{variant}: parameter count");
            let got = outputs(&m, &ids, policy);
            assert_same(variant, &format!("{weights:?} on {placement} ({policy:?})"), &want, &got);
            if let Some(s) = m.blocks.stream_stats() {
                // forward, masked forward, capture, gradient forward + backward: 5 passes.
                assert_eq!(s.blocks, 5 * m.n_layers(), "{variant}: blocks materialised");
                assert!(s.bytes_read > 0, "{variant}: streaming read no bytes");
            }
        }
    }
}

#[test]
fn placement_splits_layers_into_contiguous_ranges() {
    let p = Placement::parse("cpu,cpu,cpu").unwrap();
    assert_eq!(p.devices.len(), 3);
    let m = load("llama_gqa", WeightsMode::Resident, "cpu,cpu");
    assert_eq!(m.blocks.devices().len(), m.n_layers());
    assert_eq!(m.info.placement, "cpu,cpu");
    for spec in ["gpu", "cpu,", "cuda:x", "cpu;cpu"] {
        let e = Placement::parse(spec).err().unwrap_or_else(|| panic!("`{spec}` was accepted"));
        assert!(format!("{e:#}").contains("device") || format!("{e:#}").contains("CUDA"), "{spec}: {e:#}");
    }
    // No CUDA in this build (or no such device): a clear error naming the device.
    let e = Placement::parse("cuda:7").err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(e.contains("CUDA device 7"), "{e}");
}

#[test]
fn auto_streams_only_when_the_model_does_not_fit() {
    // Everything fits: resident.
    let m = load("llama_gqa", WeightsMode::Auto, "cpu");
    assert!(!m.blocks.is_streamed());
    assert_eq!(m.info.weights, "resident");
    let _ = Device::Cpu;
}

/// The real default model (a Q4_1 GGUF: quantized tensors dequantized per block when
/// streamed): importance sums and next-token log-probabilities streamed, on `cpu,cpu`, and
/// resident are identical.
#[test]
fn default_model_streamed_matches_resident() {
    use headroom::importance::{accumulate, ImportanceOptions, Prompt};
    let Some(path) = common::default_model() else { return };
    let tok = headroom::tokenizer::Tokenizer::for_model(&path).unwrap();
    let prompts: Vec<Prompt> = [
        ("The man broke his toe because", " he dropped a hammer on his foot."),
        ("I tipped the bottle, therefore", " the liquid in the bottle poured out."),
        ("The woman repaired her faucet because", " the faucet was leaky."),
    ]
    .iter()
    .map(|(c, x)| Prompt { context: (*c).into(), continuation: (*x).into() })
    .collect();
    let opts = |weights, placement: &str| LoadOptions { dtype: ComputeDtype::F32, weights, placement: Placement::parse(placement).unwrap() };
    let run = |o: LoadOptions| {
        let m = Model::load_with(&path, &o).unwrap();
        let (tp, _) = headroom::importance::tokenize_prompts(&tok, &prompts, m.info.context_length).unwrap();
        let (sums, _) = accumulate(&m, &tp, &ImportanceOptions { batch_size: 2, ..Default::default() }, &mut |_, _| {}).unwrap();
        let lp = m.next_token_log_probs(&tp[0].context, None).unwrap();
        (m.blocks.is_streamed(), sums, lp)
    };
    let (s0, want, lp0) = run(opts(WeightsMode::Resident, "cpu"));
    assert!(!s0);
    assert!(want.head_abs.iter().any(|&x| x > 0.0));
    for (w, p) in [(WeightsMode::Stream, "cpu"), (WeightsMode::Stream, "cpu,cpu")] {
        let (streamed, got, lp) = run(opts(w, p));
        assert!(streamed);
        assert_eq!(got, want, "importance sums, {w:?} on {p}");
        assert_eq!(max_abs(&lp, &lp0), 0.0, "log-probs, {w:?} on {p}");
    }
}

fn headroom(args: &[&str], free_mb: Option<u64>) -> (Option<i32>, String) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_headroom"));
    c.args(args);
    if let Some(mb) = free_mb {
        c.env("HEADROOM_FREE_MEMORY_MB", mb.to_string());
    }
    let out = c.output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `--weights auto` streams when the model does not fit the free memory and refuses, naming
/// what was needed and what was free, when even streaming does not fit; bad flags exit 2.
#[test]
fn cli_weights_and_placement_decisions() {
    let model = golden_dir().join("llama_gqa");
    let model = model.to_str().unwrap();
    // Plenty free: resident.
    let (code, err) = headroom(&["inspect", "--model", model], None);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("resident weights"), "{err}");
    // The tiny model's ~100 KB does not fit in "0 MB" free, not even streamed.
    let (code, err) = headroom(&["--weights", "stream", "inspect", "--model", model], Some(0));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("does not fit even streamed") && err.contains("needed") && err.contains("free"), "{err}");
    let (code, err) = headroom(&["inspect", "--model", model], Some(0));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("does not fit even streamed") && err.contains("resident would need"), "{err}");
    // Streaming asked for: streamed, on two CPU ranges.
    let (code, err) = headroom(&["--weights", "stream", "--device", "cpu,cpu", "inspect", "--model", model], None);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("stream weights, on cpu,cpu"), "{err}");
    for (args, needle) in [
        (vec!["--device", "cuda:3", "inspect", "--model", model], "CUDA device 3"),
        (vec!["--device", "tpu", "inspect", "--model", model], "unknown device `tpu`"),
        (vec!["--weights", "mmap", "inspect", "--model", model], "unknown weights mode `mmap`"),
        (vec!["--dtype", "f8", "inspect", "--model", model], "unknown dtype `f8`"),
        (vec!["--dtype", "bf16", "tasks"], "run a model"),
    ] {
        let (code, err) = headroom(&args, None);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(needle) && !err.contains("panicked"), "{args:?}: {err}");
    }
}

/// `headroom eval` on the default model: resident, streamed one batch per group (a 0 MB group
/// budget), streamed with every batch in one group (the default budget), and streamed over
/// `cpu,cpu` write the same per-example log-likelihoods.
#[test]
fn cli_eval_streamed_in_groups_matches_resident() {
    let Some(_) = common::default_model() else { return };
    let Some(_) = common::task_data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str], group_mb: Option<&str>| {
        let out = tmp.path().join(name);
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_headroom"));
        c.args(extra).args(["eval", "--task", "copa", "--shots", "0", "--limit", "12", "--batch-size", "2", "--out"]).arg(&out);
        if let Some(mb) = group_mb {
            c.env("HEADROOM_STREAM_GROUP_MB", mb);
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{name}: {err}");
        (std::fs::read_to_string(out.join("copa.0shot.examples.jsonl")).unwrap(), err)
    };
    let (want, _) = run("resident", &["--weights", "resident"], None);
    assert!(want.lines().count() == 12, "{want}");
    let (got, err) = run("stream", &["--weights", "stream"], Some("0"));
    assert_eq!(got, want, "streamed, one batch per group");
    // 6 batches of 2 examples, each its own group: six passes over the 30 blocks.
    let blocks: usize = err.split("streamed ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert_eq!(blocks, 6 * 30, "expected one group per batch: {err}");
    let (got, err) = run("grouped", &["--weights", "stream"], None);
    assert_eq!(got, want, "streamed, all batches in one group");
    assert!(err.contains("streamed 30 blocks"), "expected one group: {err}");
    let (got, _) = run("placed", &["--weights", "stream", "--device", "cpu,cpu"], None);
    assert_eq!(got, want, "streamed on cpu,cpu");
}

/// Induction scores (prefix matching over the layer loop, copying over the direct path)
/// streamed in groups of sequences equal the resident ones.
#[test]
fn induction_scores_streamed_match_resident() {
    use headroom::induction::{copying, prefix_matching, CopyMode, InductionSeq, PrefixMode};
    for variant in ["opt_postln", "llama_gqa", "gguf/tiny_llama.gguf"] {
        let resident = load(variant, WeightsMode::Resident, "cpu");
        let streamed = load(variant, WeightsMode::Stream, "cpu,cpu");
        let v = resident.info.vocab_size as u32;
        let seqs: Vec<InductionSeq> = (0..3u32).map(|s| InductionSeq::new(Some(1), &[(5 + s) % v, (9 + 2 * s) % v, (13 + s) % v], 4)).collect();
        let p0 = prefix_matching(&resident, &seqs, PrefixMode::default(), &mut |_| {}).unwrap();
        let p1 = prefix_matching(&streamed, &seqs, PrefixMode::default(), &mut |_| {}).unwrap();
        assert_eq!(p0.prefix.per_sequence, p1.prefix.per_sequence, "{variant}: prefix matching");
        assert_eq!(p0.tl_induction.per_sequence, p1.tl_induction.per_sequence, "{variant}: TL induction");
        assert!(p0.prefix.per_sequence.iter().flatten().any(|&x| x != 0.0));
        let c0 = copying(&resident, &seqs, CopyMode::default(), &mut |_| {}).unwrap();
        let c1 = copying(&streamed, &seqs, CopyMode::default(), &mut |_| {}).unwrap();
        assert_eq!(c0.per_sequence, c1.per_sequence, "{variant}: copying");
        // All three sequences fit one group: each block materialised once per stage.
        assert_eq!(streamed.blocks.stream_stats().unwrap().blocks, 2 * streamed.n_layers(), "{variant}");
    }
}

/// In bf16 too, streaming changes nothing: the streamed block is materialised straight into
/// bf16 (safetensors f32 -> bf16 at load) exactly as the resident one.
#[test]
fn bf16_streamed_matches_resident() {
    for variant in ["opt_preln", "llama_gqa", "gguf/tiny_llama.gguf"] {
        let opts = |weights| LoadOptions { dtype: ComputeDtype::Bf16, weights, placement: Placement::parse("cpu,cpu").unwrap() };
        let r = Model::load_with(&golden_dir().join(variant), &opts(WeightsMode::Resident)).unwrap();
        let s = Model::load_with(&golden_dir().join(variant), &opts(WeightsMode::Stream)).unwrap();
        assert_eq!(r.info.compute_dtype, "bf16");
        let v = r.info.vocab_size;
        let ids: Vec<u32> = (0..9).map(|i| ((i * 37 + 5) % v) as u32).collect();
        let want = outputs(&r, &ids, Activations::Keep);
        let got = outputs(&s, &ids, Activations::Recompute);
        assert_same(variant, "bf16 streamed", &want, &got);
    }
}
