//! `headroom make-checkpoint` and `headroom::checkpoint`: tiny custom shapes of each family,
//! written as HF folders (f32, bf16, sharded) and GGUF files (q8_0, q4_0), load in headroom with the
//! expected architecture, no config notes and finite logits; seeds are reproducible; a tensor's
//! values do not depend on the shard size; bad input is a clear error (exit 2 from the CLI).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use headroom::checkpoint::{write_gguf, write_hf, GgufOptions, HfDtype, HfOptions, Overrides, Shape};
use headroom::formats::gguf::GgmlType;
use headroom::formats::hf::SafetensorsWeights;
use headroom::model::weights::WeightSource;
use headroom::model::Model;
use headroom::tokenizer::Tokenizer;

/// A tiny custom shape of a named one: 2 layers, hidden 64, 4 heads (2 kv heads for the Llama
/// family), ffn 128, vocab 256, context 64. opt-350m keeps its 512-wide embedding (post-LN with
/// project_in / project_out).
fn tiny(name: &str) -> Shape {
    let gqa = !name.starts_with("opt");
    let o = Overrides {
        layers: Some(2),
        hidden: Some(64),
        heads: Some(4),
        kv_heads: gqa.then_some(2),
        ffn: Some(128),
        vocab: Some(256),
        context: Some(64),
    };
    Shape::named(name).unwrap().with(&o).unwrap()
}

fn hf(shape: &Shape, dtype: HfDtype, shard_size: u64, seed: u64, out: &Path) {
    let o = HfOptions { dtype, shard_size, seed, std: 0.02, tokenizer_from: None, force: false };
    write_hf(shape, &o, out, &mut |_, _| {}).unwrap();
}

fn gguf(shape: &Shape, quant: GgmlType, seed: u64, out: &Path) {
    let o = GgufOptions { quant, seed, std: 0.02, tokenizer_from: None, force: false };
    write_gguf(shape, &o, out, &mut |_, _| {}).unwrap();
}

fn shards(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    v
}

/// Loads `path` and checks the architecture against `shape`; returns the logits of a short input.
fn load_and_check(path: &Path, shape: &Shape) -> Vec<f32> {
    let m = Model::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let i = &m.info;
    let what = path.display();
    assert_eq!(
        (i.n_layers, i.n_heads, i.n_kv_heads, i.hidden, i.ffn_dim, i.vocab_size),
        (shape.layers, shape.heads, shape.kv_heads, shape.hidden, shape.ffn, shape.vocab),
        "{what}"
    );
    assert_eq!(i.n_params as u64, shape.n_params(), "{what}");
    assert!(i.config_notes.is_empty(), "{what}: config notes {:?}", i.config_notes);
    assert_eq!(i.tied_embeddings, shape.tied, "{what}");
    let logits = m.forward(&m.batch_ids(&[vec![1, 5, 9, 200, 3, 7]]).unwrap(), None).unwrap();
    let v: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(v.len(), 6 * shape.vocab);
    assert!(v.iter().all(|x| x.is_finite()), "{what}: non-finite logits");
    assert!(v.iter().any(|x| *x != 0.0), "{what}: all-zero logits");
    v
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn every_family_loads_from_hf_with_the_expected_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["opt-125m", "opt-350m", "llama-3-8b", "qwen2-7b"] {
        let shape = tiny(name);
        // f32 in one file; bf16 in shards of 20 kB (at least 2).
        let one = tmp.path().join(format!("{name}-f32"));
        hf(&shape, HfDtype::F32, 5_000_000_000, 0, &one);
        assert_eq!(shards(&one), vec![one.join("model.safetensors")]);
        assert!(!one.join("model.safetensors.index.json").exists());
        let f32_logits = load_and_check(&one, &shape);

        let sharded = tmp.path().join(format!("{name}-bf16"));
        hf(&shape, HfDtype::Bf16, 20_000, 0, &sharded);
        let files = shards(&sharded);
        assert!(files.len() >= 2, "{name}: {files:?}");
        let n = files.len();
        assert_eq!(files[0].file_name().unwrap().to_str().unwrap(), format!("model-00001-of-{n:05}.safetensors"));
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(sharded.join("model.safetensors.index.json")).unwrap()).unwrap();
        assert_eq!(index["weight_map"].as_object().unwrap().len(), shape.tensors().len());
        assert_eq!(index["metadata"]["total_parameters"], shape.n_params());
        let bf16_logits = load_and_check(&sharded, &shape);
        // Same seed: the bf16 folder is the f32 one rounded.
        let d = max_abs_diff(&f32_logits, &bf16_logits);
        assert!(d < 5e-3, "{name}: bf16 vs f32 logits differ by {d}");

        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(one.join("config.json")).unwrap()).unwrap();
        let arch = if name.starts_with("opt") { "OPTForCausalLM" } else if name.starts_with("qwen") { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" };
        assert_eq!(cfg["architectures"][0], arch);
    }
}

#[test]
fn post_ln_opt_has_projections_and_no_final_norm() {
    let shape = tiny("opt-350m");
    assert_eq!(shape.word_embed_proj_dim, 512);
    let names: Vec<String> = shape.tensors().into_iter().map(|t| t.name).collect();
    assert!(names.contains(&"model.decoder.project_in.weight".to_string()));
    assert!(names.contains(&"model.decoder.project_out.weight".to_string()));
    assert!(!names.iter().any(|n| n == "model.decoder.final_layer_norm.weight"));
    assert!(!names.iter().any(|n| n == "lm_head.weight"), "OPT ties its unembedding");
    let pre = tiny("opt-125m").tensors();
    assert!(pre.iter().any(|t| t.name == "model.decoder.final_layer_norm.weight"));
    let llama: Vec<String> = tiny("llama-3-8b").tensors().into_iter().map(|t| t.name).collect();
    assert!(llama.contains(&"lm_head.weight".to_string()) && llama.contains(&"model.layers.1.mlp.down_proj.weight".to_string()));
    let qwen = tiny("qwen2-7b").tensors();
    let kb = qwen.iter().find(|t| t.name == "model.layers.0.self_attn.k_proj.bias").unwrap();
    assert_eq!(kb.shape, vec![32]);
    let smol: Vec<String> = Shape::named("smollm2-135m").unwrap().tensors().into_iter().map(|t| t.name).collect();
    assert!(!smol.contains(&"lm_head.weight".to_string()), "SmolLM2 ties its unembedding");
}

#[test]
fn gguf_loads_and_matches_the_hf_folder_of_the_same_seed() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["llama-3-8b", "qwen2-7b", "smollm2-135m"] {
        let shape = tiny(name);
        let folder = tmp.path().join(format!("{name}-hf"));
        hf(&shape, HfDtype::F32, 5_000_000_000, 3, &folder);
        let hf_logits = load_and_check(&folder, &shape);
        // f32 GGUF: llama.cpp's Q/K row permutation (llama) or none (qwen2) makes the same model.
        let f = tmp.path().join(format!("{name}-f32.gguf"));
        gguf(&shape, GgmlType::F32, 3, &f);
        let d = max_abs_diff(&hf_logits, &load_and_check(&f, &shape));
        assert!(d < 1e-4, "{name}: f32 GGUF vs HF logits differ by {d}");
        // Quantized: the error relative to the largest logit (Q8_0 ~ 0.5% per weight, Q4_0 ~ 8%).
        let scale = hf_logits.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (quant, tol) in [(GgmlType::Q8_0, 0.03), (GgmlType::Q4_0, 0.3)] {
            let f = tmp.path().join(format!("{name}-{quant}.gguf"));
            gguf(&shape, quant, 3, &f);
            let g = headroom::formats::gguf::GgufFile::open(&f).unwrap();
            assert_eq!(g.tensor_info("blk.0.attn_q.weight").unwrap().dtype, quant);
            assert_eq!(g.tensor_info("blk.0.attn_norm.weight").unwrap().dtype, GgmlType::F32);
            assert!(!g.contains_key("tokenizer.ggml.tokens"), "no tokenizer was asked for");
            let d = max_abs_diff(&hf_logits, &load_and_check(&f, &shape)) / scale;
            eprintln!("{name}: {quant} GGUF vs HF logits: max diff / max |logit| = {d}");
            assert!(d < tol, "{name}: {quant} GGUF vs HF logits differ by {d} of the largest logit");
        }
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let shape = tiny("qwen2-7b");
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    hf(&shape, HfDtype::Bf16, 20_000, 11, &a);
    hf(&shape, HfDtype::Bf16, 20_000, 11, &b);
    hf(&shape, HfDtype::Bf16, 20_000, 12, &c);
    let names: Vec<_> = std::fs::read_dir(&a).unwrap().map(|e| e.unwrap().file_name()).collect();
    let mut differ = 0;
    for n in &names {
        let (x, y, z) = (std::fs::read(a.join(n)).unwrap(), std::fs::read(b.join(n)).unwrap(), std::fs::read(c.join(n)).unwrap());
        assert_eq!(x, y, "{n:?} differs between two runs with seed 11");
        differ += (x != z) as usize;
    }
    assert!(differ >= shards(&a).len(), "every shard should differ under another seed");
    let (g1, g2, g3) = (tmp.path().join("1.gguf"), tmp.path().join("2.gguf"), tmp.path().join("3.gguf"));
    gguf(&shape, GgmlType::Q4_0, 11, &g1);
    gguf(&shape, GgmlType::Q4_0, 11, &g2);
    gguf(&shape, GgmlType::Q4_0, 12, &g3);
    assert_eq!(std::fs::read(&g1).unwrap(), std::fs::read(&g2).unwrap());
    assert_ne!(std::fs::read(&g1).unwrap(), std::fs::read(&g3).unwrap());
}

#[test]
fn tensor_values_do_not_depend_on_the_shard_size() {
    let tmp = tempfile::tempdir().unwrap();
    let shape = tiny("opt-125m");
    let (one, many) = (tmp.path().join("one"), tmp.path().join("many"));
    hf(&shape, HfDtype::F32, 5_000_000_000, 5, &one);
    hf(&shape, HfDtype::F32, 10_000, 5, &many);
    assert!(shards(&many).len() > 3);
    let (a, b) = (SafetensorsWeights::open(&one).unwrap(), SafetensorsWeights::open(&many).unwrap());
    assert_eq!(a.names(), b.names());
    for spec in shape.tensors() {
        let x: Vec<f32> = a.load_f32(&spec.name, &spec.shape, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = b.load_f32(&spec.name, &spec.shape, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(x, y, "{}", spec.name);
        if spec.name.ends_with("fc1.weight") {
            let sd = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
            assert!((sd - 0.02).abs() < 0.001, "{}: std {sd}", spec.name);
        }
        if spec.name.ends_with("layer_norm.weight") {
            assert!(x.iter().all(|v| *v == 1.0));
        }
        if spec.name.ends_with(".bias") {
            assert!(x.iter().all(|v| *v == 0.0));
        }
    }
}

/// A tokenizer folder with `n` tokens (vocab.json + an empty merges.txt), `</s>` at id 7.
fn tokenizer_dir(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..n).map(|i| (if i == 7 { "</s>".to_string() } else { format!("t{i}") }, i.into())).collect();
    std::fs::write(dir.join("vocab.json"), serde_json::to_string(&vocab).unwrap()).unwrap();
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\n").unwrap();
}

#[test]
fn tokenizers_are_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let shape = tiny("opt-125m");
    let tok = tmp.path().join("tok");
    tokenizer_dir(&tok, 200);
    let out = tmp.path().join("out");
    let o = HfOptions { dtype: HfDtype::F16, shard_size: 1 << 30, seed: 0, std: 0.02, tokenizer_from: Some(tok), force: false };
    let w = write_hf(&shape, &o, &out, &mut |_, _| {}).unwrap();
    assert!(w.tokenizer.is_some());
    assert_eq!(Tokenizer::for_model(&out).unwrap().vocab_size(), 200);
    // The config's special ids are the copied tokenizer's (OPT-style: bos = eos = `</s>`).
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!((&cfg["bos_token_id"], &cfg["eos_token_id"]), (&7.into(), &7.into()));
    assert_eq!(Model::load(&out, &Device::Cpu).unwrap().info.eos_token_id, Some(7));
    load_and_check(&out, &shape);

    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/gguf/tiny_llama.gguf");
    let g = tmp.path().join("t.gguf");
    let o = GgufOptions { quant: GgmlType::Q8_0, seed: 0, std: 0.02, tokenizer_from: Some(src), force: false };
    write_gguf(&tiny("llama-3-8b"), &o, &g, &mut |_, _| {}).unwrap();
    assert_eq!(Tokenizer::for_model(&g).unwrap().vocab_size(), 256);
    load_and_check(&g, &tiny("llama-3-8b"));

    // A GGUF's tokenizer into an HF folder: written as tokenizer.json + tokenizer_config.json,
    // read back as the same tokenizer (same ids for the same text, same bos / eos).
    let hf = tmp.path().join("hf-from-gguf");
    let o = HfOptions { dtype: HfDtype::F16, shard_size: 1 << 30, seed: 0, std: 0.02, tokenizer_from: Some(g.clone()), force: false };
    write_hf(&tiny("llama-3-8b"), &o, &hf, &mut |_, _| {}).unwrap();
    let (a, b) = (Tokenizer::for_model(&g).unwrap(), Tokenizer::for_model(&hf).unwrap());
    let text = "Hello world, the quick brown fox.";
    assert_eq!(a.encode(text).unwrap(), b.encode(text).unwrap());
    assert!(!a.encode(text).unwrap().is_empty());
    assert_eq!((a.bos_id(), a.eos_id(), a.vocab_size()), (b.bos_id(), b.eos_id(), b.vocab_size()));
    load_and_check(&hf, &tiny("llama-3-8b"));
}

/// The 32000-token Llama SentencePiece vocabulary (a GGUF) becomes an HF folder's tokenizer
/// that encodes like the GGUF one (what tools/scale-check.sh's 13B-shaped folder uses).
#[test]
fn sentencepiece_gguf_tokenizer_into_hf_folder() {
    let Some(spm) = common::cached_asset("test-assets/llama-spm/ggml-vocab-llama-spm.gguf") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut shape = tiny("llama-3-8b");
    shape.vocab = 32000;
    let hf = tmp.path().join("hf");
    let o = HfOptions { dtype: HfDtype::Bf16, shard_size: 1 << 30, seed: 0, std: 0.02, tokenizer_from: Some(spm.clone()), force: false };
    write_hf(&shape, &o, &hf, &mut |_, _| {}).unwrap();
    let (a, b) = (Tokenizer::for_model(&spm).unwrap(), Tokenizer::for_model(&hf).unwrap());
    for text in ["Hello world", " The capital of France is Paris.", "naïve café, 東京 123\n  indented"] {
        assert_eq!(a.encode(text).unwrap(), b.encode(text).unwrap(), "{text:?}");
    }
    assert_eq!((a.bos_id(), a.eos_id(), a.vocab_size()), (b.bos_id(), b.eos_id(), b.vocab_size()));
}

/// Runs the CLI; returns (exit code, stderr).
fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_headroom")).arg("make-checkpoint").args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

const TINY: &[&str] = &["--layers", "1", "--ffn", "64", "--vocab", "128", "--context", "32"];
const DIMS: &[&str] = &["--hidden", "64", "--heads", "4", "--kv-heads", "4"];

#[test]
fn cli_writes_and_refuses_bad_input_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s).display().to_string();
    let run = |extra: &[&str]| cli(&[TINY, DIMS, extra].concat());

    let (code, err) = run(&["--shape", "llama-3-8b", "--out", &p("ok"), "--weight-dtype", "f16"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no tokenizer"), "the missing tokenizer should be said loudly: {err}");

    let (code, err) = run(&["--shape", "opt-9000b", "--out", &p("x")]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown shape `opt-9000b`") && err.contains("opt-125m"), "{err}");

    let (code, err) = run(&["--shape", "opt-125m", "--format", "gguf", "--out", &p("x.gguf")]);
    assert_eq!(code, 2);
    assert!(err.contains("GGUF") && err.contains("--format hf"), "{err}");

    let (code, err) = run(&["--shape", "llama-3-8b", "--out", &p("ok")]);
    assert_eq!(code, 2);
    assert!(err.contains("already exists") && err.contains("--force"), "{err}");
    let (code, err) = run(&["--shape", "llama-3-8b", "--out", &p("ok"), "--force", "--shard-size", "20kB"]);
    assert_eq!(code, 0, "{err}");
    // The old single file is gone: only the new shards remain.
    assert!(!tmp.path().join("ok/model.safetensors").exists());
    assert!(tmp.path().join("ok/model.safetensors.index.json").exists());

    let tok = tmp.path().join("bigtok");
    tokenizer_dir(&tok, 300);
    let (code, err) = run(&["--shape", "opt-125m", "--out", &p("t"), "--tokenizer-from", &tok.display().to_string()]);
    assert_eq!(code, 2);
    assert!(err.contains("300 tokens") && err.contains("128"), "{err}");
    let gguf_tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/gguf/tiny_llama.gguf").display().to_string();
    let (code, err) = run(&["--shape", "qwen2-7b", "--format", "gguf", "--out", &p("t.gguf"), "--tokenizer-from", &gguf_tok]);
    assert_eq!(code, 2);
    assert!(err.contains("256 tokens") && err.contains("128"), "{err}");
    assert!(!tmp.path().join("t.gguf").exists() && !tmp.path().join("t").exists(), "nothing written on refusal");

    let (code, err) =
        cli(&[TINY, &["--shape", "qwen2-7b", "--format", "gguf", "--quant", "q4_0", "--hidden", "48", "--heads", "4", "--out", &p("r.gguf")]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("block size 32"), "{err}");
    let (code, err) = cli(&[TINY, &["--shape", "llama-3-8b", "--heads", "5", "--out", &p("h")]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("not a multiple of heads 5"), "{err}");
    let (code, err) = run(&["--shape", "llama-3-8b", "--format", "gguf", "--weight-dtype", "f16", "--out", &p("d.gguf")]);
    assert_eq!(code, 2);
    assert!(err.contains("--quant"), "{err}");
    let (code, err) = run(&["--shape", "llama-3-8b", "--format", "gguf", "--shard-size", "1GB", "--out", &p("d.gguf")]);
    assert_eq!(code, 2);
    assert!(err.contains("--shard-size is for --format hf"), "{err}");
    let (code, err) = run(&["--shape", "llama-3-8b", "--shard-size", "5 parsecs", "--out", &p("d")]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown unit"), "{err}");
}
