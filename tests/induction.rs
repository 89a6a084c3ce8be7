//! Induction scores (spec section 7): a hand-built model with a perfect induction head, golden
//! parity with an independent PyTorch reference (tools/make_golden_induction.py), the authors'
//! quirk, and the real default model.

mod common;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use headroom::induction::{self, CopyMode, InductionSeq, Lengths, PrefixMode, TokenPool};
use headroom::model::blocks::{Attention, Linear, Mlp, Norm};
use headroom::model::{Activation, Block, Embeddings, Family, LmHead, Model, ModelInfo, NormKind, Residual, Stack};
use headroom::tokenizer::Tokenizer;

// ------------------------------------------------------------------------------------------------
// A hand-built attention-only model.
//
// Residual stream D = V + P + V: token one-hot [0, V), position one-hot [V, V+P) (learned
// positions), and a "previous token" subspace [V+P, D) that layer 0 writes. Two layers of two
// heads (head_dim 64), RMSNorm (weight 1, so it only rescales), zero FFNs, scale 1.
// - L0H0 previous-token head: q = position i, k = position j + 1 -> attends from i to i - 1; its
//   OV copies the attended token into the previous-token subspace.
// - L0H1 uniform head: q = k = 0 (attends uniformly), v = o = 0.
// - L1H0 induction head: q = current token, k = previous-token subspace -> attends to every
//   position whose predecessor is the current token (the successors of earlier occurrences).
// - L1H1 copying head: q = k = current token (attends to itself in a sequence of unique tokens),
//   OV = identity into the token subspace, which is what the unembedding reads.

const V: usize = 20;
const P: usize = 64;
const D: usize = V + P + V;
const HD: usize = 64;
const H: usize = 2;
const BOS: u32 = 0;

fn mat(rows: usize, cols: usize, entries: &[(usize, usize, f32)]) -> Tensor {
    let mut m = vec![0f32; rows * cols];
    for &(r, c, x) in entries {
        m[r * cols + c] = x;
    }
    Tensor::from_vec(m, (rows, cols), &Device::Cpu).unwrap()
}

fn rms() -> Norm {
    Norm { kind: NormKind::RmsNorm, weight: Tensor::ones(D, candle_core::DType::F32, &Device::Cpu).unwrap(), bias: None, eps: 1e-6 }
}

fn block(q: Vec<(usize, usize, f32)>, k: Vec<(usize, usize, f32)>, v: Vec<(usize, usize, f32)>, o: Vec<(usize, usize, f32)>) -> Block {
    let lin = |rows, cols, e: &[(usize, usize, f32)]| Linear::new(mat(rows, cols, e), None);
    Block {
        attn_norm: rms(),
        attn: Attention {
            q: lin(H * HD, D, &q),
            k: lin(H * HD, D, &k),
            v: lin(H * HD, D, &v),
            o: lin(D, H * HD, &o),
            n_heads: H,
            n_kv_heads: H,
            head_dim: HD,
            scale: 1.0,
            scale_queries: false,
            rope: None,
            sliding_window: None,
        },
        ffn_norm: rms(),
        mlp: Mlp::Plain { fc1: lin(1, D, &[]), fc2: lin(D, 1, &[]), act: Activation::Relu },
        residual: Residual::PreNorm,
    }
}

fn constructed_model() -> Model {
    let tok = V; // offset of the position subspace
    let prev = V + P; // offset of the previous-token subspace
    // After layer 0's RMSNorm a one-hot token + one-hot position has entries sqrt(D / 2); scale the
    // previous-token write back to 1.
    let c = 1.0 / (D as f32 / 2.0).sqrt();
    let l0 = block(
        (0..P).map(|p| (p, tok + p, 1.0)).collect(),          // L0H0 q: position i
        (0..P - 1).map(|p| (p + 1, tok + p, 1.0)).collect(),  // L0H0 k: position j + 1
        (0..V).map(|t| (t, t, 1.0)).collect(),                // L0H0 v: token
        (0..V).map(|t| (prev + t, t, c)).collect(),           // L0H0 o: -> previous-token subspace
    );
    let l1 = block(
        (0..V).flat_map(|t| [(t, t, 1.0), (HD + t, t, 1.0)]).collect(), // H0, H1 q: current token
        (0..V).flat_map(|t| [(t, prev + t, 1.0), (HD + t, t, 1.0)]).collect(), // H0 k: previous token; H1 k: token
        (0..V).map(|t| (HD + t, t, 1.0)).collect(),           // H1 v: token
        (0..V).map(|t| (t, HD + t, 1.0)).collect(),           // H1 o: -> token subspace
    );
    let embed = Embeddings {
        tokens: mat(V, D, &(0..V).map(|t| (t, t, 1.0)).collect::<Vec<_>>()),
        positions: Some((mat(P, D, &(0..P).map(|p| (p, tok + p, 1.0)).collect::<Vec<_>>()), 0)),
        project_in: None,
    };
    let head = LmHead { final_norm: None, project_out: None, unembed: mat(V, D, &(0..V).map(|t| (t, t, 1.0)).collect::<Vec<_>>()), tied: false };
    let info = ModelInfo {
        family: Family::Gpt2,
        architecture: "hand-built induction".into(),
        source: "tests/induction.rs".into(),
        format: "none".into(),
        n_layers: 2,
        n_heads: H,
        n_kv_heads: H,
        head_dim: HD,
        hidden: D,
        ffn_dim: 1,
        vocab_size: V,
        n_params: 0,
        context_length: P,
        weight_dtypes: BTreeMap::new(),
        compute_dtype: "f32".into(),
        weights: "resident".into(),
        placement: "cpu".into(),
        norm: NormKind::RmsNorm,
        activation: Activation::Relu,
        residual: Residual::PreNorm,
        rope: None,
        tied_embeddings: false,
        sliding_window: None,
        bos_token_id: Some(BOS),
        eos_token_id: None,
        config_notes: Vec::new(),
    };
    Model { info, embed, blocks: Stack::resident(vec![l0, l1], vec![Device::Cpu; 2]), head, device: Device::Cpu }
}

fn pool() -> TokenPool {
    TokenPool::from_ids((1..V as u32).collect())
}

/// The uniform head's expected prefix score: each query j in repeats 2-4 has (j - b) / L
/// targets out of j + 1 visible positions.
fn uniform_expectation(offset: usize, l: usize) -> f64 {
    let t = offset + 4 * l;
    (offset + l..t).map(|j| ((j - offset) / l) as f64 / (j + 1) as f64).sum::<f64>() / (3 * l) as f64
}

#[test]
fn constructed_induction_head_scores_one_and_uniform_head_near_zero() {
    let m = constructed_model();
    let lengths = Lengths { base_len: 5, step: 5, copy_factor: 1 }; // L = 5, 10, 15
    let seqs = induction::prefix_sequences(&pool(), Some(BOS), 3, &lengths, 0).unwrap();
    for mode in [PrefixMode::Definition, PrefixMode::Authors] {
        let r = induction::prefix_matching(&m, &seqs, mode, &mut |_| {}).unwrap();
        for (s, seq) in seqs.iter().enumerate() {
            let row = &r.prefix.per_sequence[s];
            let (prev, uniform, ind, copy) = (row[0], row[1], row[2], row[3]);
            eprintln!("{mode:?} L={}: prev-token {prev:.4}, uniform {uniform:.4}, induction {ind:.4}, copying {copy:.4}", seq.len);
            assert!(ind > 0.99, "induction head scores {ind}");
            assert!(prev < 1e-3 && copy < 1e-3, "prev {prev} copy {copy}");
            // The uniform head: exactly its analytic value (well below 0.1 for L >= 10).
            let want = uniform_expectation(seq.offset, seq.len);
            let extra = if mode == PrefixMode::Authors {
                // A[j][1] = 1 / (j + 1) for j = 2L, 3L, 4L.
                (2..=4).map(|k| 1.0 / (k * seq.len + 1) as f64).sum::<f64>() / (3 * seq.len) as f64
            } else {
                0.0
            };
            assert!((uniform - want - extra).abs() < 1e-5, "uniform {uniform} want {}", want + extra);
            if seq.len >= 10 {
                assert!(uniform < 0.1, "{uniform}");
            }
        }
        // TransformerLens score agrees that L1H0 is the induction head.
        let tl = r.tl_induction.stats().mean;
        assert!(tl[1][0] > 0.7 && tl[1][0] > 5.0 * tl[0][1], "{tl:?}");
    }
}

#[test]
fn constructed_identity_ov_head_has_high_copying_score() {
    let m = constructed_model();
    // Tokens must be unique: the pool has 19 ids, so L <= 19.
    let seqs: Vec<InductionSeq> = [10usize, 15, 19]
        .iter()
        .enumerate()
        .map(|(s, &l)| InductionSeq::new(Some(BOS), &pool().sample(l, &mut induction::SplitMix64::for_sequence(3, s)).unwrap(), 1))
        .collect();
    let a = induction::copying(&m, &seqs, CopyMode::Authors, &mut |_| {}).unwrap().stats().mean;
    let o = induction::copying(&m, &seqs, CopyMode::Olsson, &mut |_| {}).unwrap().stats().mean;
    eprintln!("copying authors {a:?}\ncopying olsson {o:?}");
    assert!(a[1][1] > 0.99, "identity-OV head, authors: {}", a[1][1]);
    assert!(o[1][1] > 0.98, "identity-OV head, olsson: {}", o[1][1]);
    // Heads whose OV writes nothing the unembedding reads score 0 (authors) / -1 (Olsson).
    for (l, h) in [(0, 0), (0, 1), (1, 0)] {
        assert!(a[l][h].abs() < 1e-6, "({l},{h}) authors {}", a[l][h]);
        assert!((o[l][h] + 1.0).abs() < 1e-6, "({l},{h}) olsson {}", o[l][h]);
    }
}

// ------------------------------------------------------------------------------------------------
// Golden parity with tools/make_golden_induction.py

fn golden_seqs(g: &common::Golden, kind: &str) -> Vec<InductionSeq> {
    let meta = g.ids(&format!("{kind}_meta"));
    meta.chunks(2)
        .enumerate()
        .map(|(i, m)| InductionSeq { ids: g.ids(&format!("{kind}_ids.{i}")), offset: m[0] as usize, len: m[1] as usize })
        .collect()
}

fn check(name: &str, got: &[Vec<f64>], want: &(Vec<usize>, Vec<f32>)) -> f64 {
    let flat: Vec<f32> = got.iter().flatten().map(|&x| x as f32).collect();
    assert_eq!(flat.len(), want.1.len(), "{name}: shape");
    let d = common::max_abs_diff(&flat, &want.1) as f64;
    eprintln!("{name}: max |rust - reference| = {d:.2e}");
    assert!(d < 1e-5, "{name}: {d}");
    d
}

#[test]
fn golden_parity_with_pytorch_reference() {
    for variant in ["opt_preln", "opt_postln", "llama_gqa"] {
        let dir = common::golden_dir();
        let m = Model::load(&dir.join(variant), &Device::Cpu).unwrap();
        let g = common::Golden::open(&dir.join(format!("induction/{variant}.safetensors")));
        let pseqs = golden_seqs(&g, "prefix");
        let cseqs = golden_seqs(&g, "copy");
        assert!(pseqs.iter().any(|s| s.offset == 0) && pseqs.iter().any(|s| s.offset == 1));
        let def = induction::prefix_matching(&m, &pseqs, PrefixMode::Definition, &mut |_| {}).unwrap();
        let auth = induction::prefix_matching(&m, &pseqs, PrefixMode::Authors, &mut |_| {}).unwrap();
        check(&format!("{variant} prefix definition"), &def.prefix.per_sequence, g.f32("prefix_definition"));
        check(&format!("{variant} prefix authors"), &auth.prefix.per_sequence, g.f32("prefix_authors"));
        check(&format!("{variant} tl induction"), &def.tl_induction.per_sequence, g.f32("tl_induction"));
        // The modes are told apart: definition output is far from the authors' reference.
        let flat: Vec<f32> = def.prefix.per_sequence.iter().flatten().map(|&x| x as f32).collect();
        assert!(common::max_abs_diff(&flat, &g.f32("prefix_authors").1) > 1e-3, "{variant}: modes indistinguishable");
        let ca = induction::copying(&m, &cseqs, CopyMode::Authors, &mut |_| {}).unwrap();
        let co = induction::copying(&m, &cseqs, CopyMode::Olsson, &mut |_| {}).unwrap();
        check(&format!("{variant} copy authors"), &ca.per_sequence, g.f32("copy_authors"));
        check(&format!("{variant} copy olsson"), &co.per_sequence, g.f32("copy_olsson"));
    }
}

// ------------------------------------------------------------------------------------------------
// The real default model

#[test]
fn default_model_has_induction_heads() {
    let Some(path) = common::default_model() else { return };
    let m = Model::load(&path, &Device::Cpu).unwrap();
    let tok = Tokenizer::for_model(&path).unwrap();
    let bos = induction::default_bos(&m, Some(&tok));
    assert_eq!(bos, Some(1), "SmolLM2's declared BOS is <|im_start|> = 1");
    let pool = TokenPool::from_tokenizer(&tok, 0.04, m.info.vocab_size, bos).unwrap();
    assert!(pool.len() > 40_000, "{}", pool.len());
    // CI: 6 sequences with L = 25..35 (the CLI default is 100 with L = 25..223).
    let n = 6;
    let lengths = Lengths::default();
    let seqs = induction::prefix_sequences(&pool, bos, n, &lengths, 0).unwrap();
    let t = std::time::Instant::now();
    let r = induction::prefix_matching(&m, &seqs, PrefixMode::Definition, &mut |_| {}).unwrap();
    let st = r.prefix.stats();
    let top = induction::top_heads(&st.mean, 10);
    eprintln!("prefix matching on {n} sequences in {:.1}s; top 10 heads:", t.elapsed().as_secs_f64());
    for (i, h) in top.iter().enumerate() {
        eprintln!("  {:>2}. layer {:>2} head {} : {:.4} (var {:.4})", i + 1, h.layer, h.head, h.score, st.var[h.layer][h.head]);
    }
    let med = induction::median(&st.mean);
    eprintln!("median head {med:.4}");
    assert!(top[0].score > 0.5, "no head above 0.5: {:?}", top[0]);
    assert!(med < 0.1, "median {med}");
    assert!(st.mean.iter().flatten().all(|&x| (0.0..=1.0).contains(&x)));
    // TL score (spec 10.9): on [BOS] + X*4 its targets are exactly the definition's, so per
    // sequence it is the prefix score diluted by all T rows: TL = prefix * 3L / T.
    for (s, seq) in seqs.iter().enumerate() {
        let k = (3 * seq.len) as f64 / seq.ids.len() as f64;
        for (p, t) in r.prefix.per_sequence[s].iter().zip(&r.tl_induction.per_sequence[s]) {
            assert!((p * k - t).abs() < 1e-6, "prefix {p} tl {t}");
        }
    }
    // Copying on two short sequences: in [0, 1], and some head copies.
    let cseqs = induction::copy_sequences(&pool, bos, 2, &lengths, 0).unwrap();
    let c = induction::copying(&m, &cseqs, CopyMode::Authors, &mut |_| {}).unwrap().stats().mean;
    let ctop = induction::top_heads(&c, 5);
    eprintln!("copying (2 sequences) top 5: {:?}", ctop.iter().map(|h| (h.layer, h.head, (h.score * 1e4).round() / 1e4)).collect::<Vec<_>>());
    assert!(c.iter().flatten().all(|&x| (0.0..=1.0).contains(&x)));
    assert!(ctop[0].score > 0.1);
}

// ------------------------------------------------------------------------------------------------
// The CLI on a tiny OPT folder with a hand-made BPE tokenizer

/// tests/golden/opt_preln's weights + a vocab.json/merges.txt whose merge results are ids < 256:
/// letters a..z are ids 0..25, and merge r ("x y" over letters) makes id 26 + r.
fn tiny_opt_with_tokenizer() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = common::golden_dir().join("opt_preln");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let letters: Vec<char> = ('a'..='z').collect();
    let mut vocab = serde_json::Map::new();
    for (i, c) in letters.iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
    }
    let mut merges = String::from("#version: 0.2\n");
    let mut id = 26;
    'outer: for a in &letters {
        for b in &letters {
            if id == 226 {
                break 'outer;
            }
            vocab.insert(format!("{a}{b}"), id.into());
            merges.push_str(&format!("{a} {b}\n"));
            id += 1;
        }
    }
    std::fs::write(dir.path().join("vocab.json"), serde_json::Value::Object(vocab).to_string()).unwrap();
    std::fs::write(dir.path().join("merges.txt"), merges).unwrap();
    dir
}

fn headroom(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_headroom")).args(args).output().unwrap()
}

#[test]
fn cli_writes_json_csv_and_capacity() {
    let model = tiny_opt_with_tokenizer();
    let out = tempfile::tempdir().unwrap();
    let imp = out.path().join("importance.json");
    // Importance = layer index + head / 10: ranking least important first is layer-major.
    let m: Vec<Vec<f64>> = (0..3).map(|l| (0..4).map(|h| l as f64 + h as f64 / 10.0).collect()).collect();
    std::fs::write(&imp, serde_json::json!({ "heads": m }).to_string()).unwrap();
    let dir = out.path().join("run");
    let (mp, dp, ip) = (model.path().to_str().unwrap(), dir.to_str().unwrap(), imp.to_str().unwrap());
    let o = headroom(&["induction", "--model", mp, "--sequences", "3", "--min-len", "5", "--prefix-mode", "authors", "--importance", ip, "--out", dp]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("top 10 heads by prefix matching") && stdout.contains("top 10 heads by copying"), "{stdout}");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("induction.json")).unwrap()).unwrap();
    assert_eq!(j["options"]["prefix_mode"], "authors");
    assert_eq!(j["options"]["bos"], 2);
    assert_eq!(j["options"]["prefix_lengths"], serde_json::json!([5, 7, 9]));
    assert_eq!(j["options"]["copy_lengths"], serde_json::json!([20, 28, 36]));
    // 200 merges: floor(0.04 * 200) = 8 cut at each end, ranks [8, 192): 184 ids (BOS id 2 is a
    // letter, never a merge result).
    assert_eq!(j["options"]["pool"]["size"], 184);
    for key in ["prefix", "copying", "tl_induction"] {
        let mean = j[key]["mean"].as_array().unwrap();
        assert_eq!(mean.len(), 3);
        assert!(mean.iter().all(|r| r.as_array().unwrap().len() == 4));
    }
    assert_eq!(j["top_prefix"].as_array().unwrap().len(), 10);
    let csv = std::fs::read_to_string(dir.join("induction.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13);
    assert!(csv.starts_with("layer,head,prefix_mean,prefix_var,copy_mean,copy_var"));
    let cap = std::fs::read_to_string(dir.join("capacity.csv")).unwrap();
    assert_eq!(cap.lines().count(), 14);
    let first: Vec<&str> = cap.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(first[2], "100.000000");
}

#[test]
fn cli_refuses_sequences_beyond_the_context_and_bad_bos() {
    let model = tiny_opt_with_tokenizer();
    let out = tempfile::tempdir().unwrap();
    let (mp, dp) = (model.path().to_str().unwrap(), out.path().to_str().unwrap());
    let o = headroom(&["induction", "--model", mp, "--sequences", "3", "--out", dp]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("over the model's context of 64"), "{err}");
    let o = headroom(&["induction", "--model", mp, "--bos", "999", "--out", dp]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--bos 999"));
}
