//! Model configs read right: every config schema transformers has written (v5 `rope_parameters`,
//! v4 `rope_theta` / `rope_scaling`, GPT-NeoX's `rotary_pct` / `rotary_emb_base`) and every
//! number-changing field at a NON-default value (tests/golden/config, made by
//! tools/make_golden.py with transformers 5.24's save_pretrained). Logits must match transformers
//! to 1e-4; conflicting schemas, unsupported rope types and refused fields are errors; defaults for
//! missing fields and fields nobody reads are loud notes.

mod common;

use std::path::Path;

use candle_core::Device;
use common::{golden_dir, max_abs_diff};
use headroom::model::Model;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::{json, Value};

const TOL: f32 = 1e-4;

fn meta() -> Value {
    let p = golden_dir().join("config/golden.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// The stored config.json of a variant.
fn config_of(variant: &str) -> Value {
    let m = meta();
    m["variants"][variant]["config"].clone()
}

/// Writes `dir/config.json` (the variant's config after `edit`) and `dir/model.safetensors` (the
/// variant's weight group from golden.safetensors, tensor names as transformers saved them).
fn materialize(dir: &Path, variant: &str, edit: impl FnOnce(&mut Value)) {
    let m = meta();
    let v = &m["variants"][variant];
    assert!(v.is_object(), "no variant {variant} in golden.json");
    let mut cfg = v["config"].clone();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let group = v["weights"].as_str().unwrap();
    let bytes = std::fs::read(golden_dir().join("config/golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let prefix = format!("weights.{group}.");
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix(&prefix).map(|s| (s.to_string(), t)))
        .collect();
    assert!(!tensors.is_empty(), "no weights for group {group}");
    safetensors::serialize_to_file(tensors, None, &dir.join("model.safetensors")).unwrap();
}

fn load(variant: &str, edit: impl FnOnce(&mut Value)) -> anyhow::Result<Model> {
    let dir = tempfile::tempdir().unwrap();
    materialize(dir.path(), variant, edit);
    Model::load(dir.path(), &Device::Cpu)
}

/// The raw bytes of one tensor of golden.safetensors (its weights are f16, so common::Golden,
/// which reads f32/i64 files, does not apply).
fn golden_tensor(name: &str, dtype: Dtype) -> Vec<u8> {
    let bytes = std::fs::read(golden_dir().join("config/golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
    assert_eq!(t.dtype(), dtype, "{name}");
    t.data().to_vec()
}

fn logits(model: &Model) -> Vec<f32> {
    let ids: Vec<u32> = golden_tensor("seq", Dtype::I64)
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let batch = model.batch_ids(&[ids]).unwrap();
    model.forward(&batch, None).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Max |diff| between headroom's logits and transformers' for a variant.
fn parity(variant: &str, model: &Model) -> f32 {
    let want: Vec<f32> = golden_tensor(&format!("logits.{variant}"), Dtype::F32)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    max_abs_diff(&logits(model), &want)
}

fn check_variant(variant: &str) {
    let model = load(variant, |_| {}).unwrap_or_else(|e| panic!("{variant}: {e:#}"));
    let d = parity(variant, &model);
    eprintln!("config/{variant:24} max |diff| = {d:.2e}");
    assert!(d <= TOL, "{variant}: max abs diff {d} > {TOL}");
    // Configs written by transformers carry every field headroom needs: no defaults assumed,
    // no unread fields.
    assert!(model.info.config_notes.is_empty(), "{variant}: unexpected notes {:?}", model.info.config_notes);
}

macro_rules! variant_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() { check_variant(stringify!($name)); }
    )*};
}

mod logits_match_transformers {
    use super::check_variant;
    variant_tests! {
        llama_rope_parameters,
        llama_v4_linear,
        llama3_biases_untied,
        qwen2_layer_window,
        qwen2_v4_window,
        neox_rope_parameters,
        neox_v4_sequential,
        opt_untied,
        gpt2_untied,
    }
}

/// Every variant in golden.json has a test above (a new variant cannot go untested).
#[test]
fn every_golden_variant_is_tested() {
    let tested = [
        "llama_rope_parameters",
        "llama_v4_linear",
        "llama3_biases_untied",
        "qwen2_layer_window",
        "qwen2_v4_window",
        "neox_rope_parameters",
        "neox_v4_sequential",
        "opt_untied",
        "gpt2_untied",
    ];
    let m = meta();
    let names: Vec<&String> = m["variants"].as_object().unwrap().keys().collect();
    for n in &names {
        assert!(tested.contains(&n.as_str()), "variant {n} has no test");
    }
    assert_eq!(names.len(), tested.len());
}

/// The case: a SmolLM2 folder saved by transformers 5 has θ = 100000 only inside
/// `rope_parameters`; headroom used to fall back to 10000 without a word.
#[test]
fn smollm2_shaped_rope_parameters_only_config_reads_theta() {
    let cfg = config_of("llama_rope_parameters");
    assert!(cfg.get("rope_theta").is_none(), "the golden config must not carry a top-level rope_theta");
    assert_eq!(cfg["rope_parameters"]["rope_theta"], json!(100000.0));
    let model = load("llama_rope_parameters", |_| {}).unwrap();
    assert_eq!(model.info.rope.as_ref().unwrap().theta, 100000.0);
    // θ = 10000 (the old fallback) gives other logits: the parity check can fail.
    let old = load("llama_rope_parameters", |c| c["rope_parameters"]["rope_theta"] = json!(10000.0)).unwrap();
    assert!(parity("llama_rope_parameters", &old) > 1e-2);
}

fn err_of(variant: &str, edit: impl FnOnce(&mut Value)) -> String {
    match load(variant, edit) {
        Ok(_) => panic!("{variant}: expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn conflicting_schemas_are_an_error() {
    // v5 θ and a different v4 θ.
    let e = err_of("llama_rope_parameters", |c| c["rope_theta"] = json!(10000.0));
    assert!(e.contains("rope_parameters.rope_theta") && e.contains("`rope_theta`") && e.contains("config.json"), "{e}");
    // NeoX: rotary_pct against rope_parameters.partial_rotary_factor.
    let e = err_of("neox_rope_parameters", |c| c["rotary_pct"] = json!(0.5));
    assert!(e.contains("rotary_pct") && e.contains("partial_rotary_factor"), "{e}");
    // NeoX: rotary_emb_base against rope_parameters.rope_theta.
    let e = err_of("neox_rope_parameters", |c| c["rotary_emb_base"] = json!(10000));
    assert!(e.contains("rotary_emb_base"), "{e}");
    // rope_scaling (v4) type against rope_parameters (v5) type.
    let e = err_of("llama_rope_parameters", |c| c["rope_scaling"] = json!({"type": "linear", "factor": 2.0}));
    assert!(e.contains("rope_scaling.type") && e.contains("rope_parameters.rope_type"), "{e}");
    // Qwen2: layer_types against max_window_layers.
    let e = err_of("qwen2_layer_window", |c| c["max_window_layers"] = json!(0));
    assert!(e.contains("layer_types") && e.contains("max_window_layers"), "{e}");
    // The same values in both schemas are fine.
    let m = load("llama_rope_parameters", |c| c["rope_theta"] = json!(100000.0)).unwrap();
    assert!(parity("llama_rope_parameters", &m) <= TOL);
}

#[test]
fn unsupported_rope_types_are_refused_by_name() {
    for kind in ["yarn", "dynamic", "longrope", "proportional"] {
        let e = err_of("llama_rope_parameters", |c| {
            c["rope_parameters"]["rope_type"] = json!(kind);
            c["rope_parameters"]["factor"] = json!(2.0);
        });
        assert!(e.contains(&format!("`{kind}`")) && e.contains("not supported"), "{kind}: {e}");
    }
    // v4 spelling.
    let e = err_of("llama_v4_linear", |c| c["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0}));
    assert!(e.contains("`dynamic`") && e.contains("rope_scaling.type"), "{e}");
    // NeoX too.
    let e = err_of("neox_v4_sequential", |c| c["rope_scaling"] = json!({"type": "yarn", "factor": 2.0}));
    assert!(e.contains("`yarn`"), "{e}");
    // Linear without its factor.
    let e = err_of("llama_v4_linear", |c| c["rope_scaling"] = json!({"type": "linear"}));
    assert!(e.contains("factor"), "{e}");
}

#[test]
fn unread_fields_are_noted_and_known_unsupported_ones_refused() {
    let m = load("llama_rope_parameters", |c| c["attn_temperature"] = json!(0.5)).unwrap();
    assert!(
        m.info.config_notes.iter().any(|n| n.contains("`attn_temperature` = 0.5") && n.contains("config.json")),
        "{:?}",
        m.info.config_notes
    );
    let e = err_of("gpt2_untied", |c| c["quantization_config"] = json!({"quant_method": "gptq"}));
    assert!(e.contains("quantization_config"), "{e}");
    let e = err_of("llama_v4_linear", |c| c["final_logit_softcapping"] = json!(30.0));
    assert!(e.contains("final_logit_softcapping"), "{e}");
    // An unknown key inside the rope dict is noted too.
    let m = load("llama_rope_parameters", |c| c["rope_parameters"]["mscale"] = json!(1.5)).unwrap();
    assert!(m.info.config_notes.iter().any(|n| n.contains("rope_parameters.mscale")), "{:?}", m.info.config_notes);
}

#[test]
fn missing_number_changing_fields_are_loud_defaults() {
    // No θ anywhere: transformers' default 10000, with a note naming the file and field.
    let m = load("llama_rope_parameters", |c| {
        c.as_object_mut().unwrap().remove("rope_parameters");
    })
    .unwrap();
    assert_eq!(m.info.rope.as_ref().unwrap().theta, 10000.0);
    assert!(
        m.info.config_notes.iter().any(|n| n.contains("config.json") && n.contains("rope theta") && n.contains("10000")),
        "{:?}",
        m.info.config_notes
    );
    // No eps.
    let m = load("gpt2_untied", |c| {
        c.as_object_mut().unwrap().remove("layer_norm_epsilon");
    })
    .unwrap();
    assert!(m.info.config_notes.iter().any(|n| n.contains("layer_norm_epsilon")), "{:?}", m.info.config_notes);
    // NeoX without any rotary fraction: 0.25, noted.
    let m = load("neox_v4_sequential", |c| {
        c.as_object_mut().unwrap().remove("rotary_pct");
    })
    .unwrap();
    assert_eq!(m.info.rope.as_ref().unwrap().rotary_dim, 4);
    assert!(m.info.config_notes.iter().any(|n| n.contains("0.25")), "{:?}", m.info.config_notes);
}

/// transformers 5 keeps a checkpoint's own `lm_head.weight` even when the config says tied; so does
/// headroom (with a note), and without `lm_head.weight` an untied config is an error.
#[test]
fn untied_heads_are_used() {
    for v in ["opt_untied", "gpt2_untied", "llama3_biases_untied"] {
        let m = load(v, |_| {}).unwrap();
        assert!(!m.info.tied_embeddings, "{v}");
        let m = load(v, |c| c["tie_word_embeddings"] = json!(true)).unwrap();
        assert!(!m.info.tied_embeddings, "{v}");
        assert!(parity(v, &m) <= TOL, "{v}");
        assert!(m.info.config_notes.iter().any(|n| n.contains("lm_head.weight")), "{v}: {:?}", m.info.config_notes);
        // Missing tie_word_embeddings on OPT/GPT-2 (default tied) with an lm_head: the head is used, noted.
        let m = load(v, |c| {
            c.as_object_mut().unwrap().remove("tie_word_embeddings");
        })
        .unwrap();
        assert!(parity(v, &m) <= TOL, "{v}");
    }
}

#[test]
fn qwen2_window_only_where_layer_types_say() {
    let m = load("qwen2_layer_window", |_| {}).unwrap();
    assert_eq!(m.blocks.meta(0).sliding_window, None);
    assert_eq!(m.blocks.meta(1).sliding_window, Some(4));
    // A layer marked sliding without a window (use_sliding_window false) is what transformers
    // cannot run either.
    let e = err_of("qwen2_layer_window", |c| c["use_sliding_window"] = json!(false));
    assert!(e.contains("layer_types") && e.contains("sliding"), "{e}");
    let e = err_of("qwen2_layer_window", |c| c["layer_types"] = json!(["full_attention", "chunked"]));
    assert!(e.contains("layer_types[1]"), "{e}");
}

// ------------------------------------------------------------------------------------------
// GGUF: the same rope settings as llama.cpp writes them (`llama.rope.freq_base`,
// `llama.rope.scaling.type` / `.factor`, a `rope_freqs.weight` tensor of per-frequency divisors).

use headroom::formats::gguf::{GgmlType, GgufWriter};

/// llama.cpp's convert_hf_to_gguf `permute` of Q/K rows: within each head, row (j, i) (j < 2,
/// i < hd/2) moves to (i, j), so that adjacent-pair RoPE equals HF's rotate-half.
fn permute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..hd / 2 {
                let old = h * hd + j * hd / 2 + i;
                let new = h * hd + 2 * i + j;
                out[new * cols..(new + 1) * cols].copy_from_slice(&w[old * cols..(old + 1) * cols]);
            }
        }
    }
    out
}

/// The `llama_v4_linear` weights (theta 20000, eps 1e-3, 2 heads, 1 KV head, head_dim 8) as a
/// llama-architecture GGUF, F32, with `extra` metadata / tensors.
fn llama_gguf(extra: impl FnOnce(&mut GgufWriter)) -> tempfile::NamedTempFile {
    let cfg = config_of("llama_v4_linear");
    let (d, n_head, n_kv) = (16usize, 2usize, 1usize);
    assert_eq!(cfg["hidden_size"], json!(d));
    assert_eq!(cfg["num_attention_heads"], json!(n_head));
    assert_eq!(cfg["num_key_value_heads"], json!(n_kv));
    let bytes = std::fs::read(golden_dir().join("config/golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut w = GgufWriter::new();
    w.add_string("general.architecture", "llama")
        .add_u32("llama.embedding_length", d as u32)
        .add_u32("llama.block_count", 2)
        .add_u32("llama.feed_forward_length", 16)
        .add_u32("llama.attention.head_count", n_head as u32)
        .add_u32("llama.attention.head_count_kv", n_kv as u32)
        .add_u32("llama.context_length", 32)
        .add_u32("llama.rope.dimension_count", 8)
        .add_f32("llama.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"].as_f64().unwrap() as f32);
    for (name, t) in st.tensors() {
        let Some(hf) = name.strip_prefix("weights.llama_tied.") else { continue };
        let x: Vec<f32> = t.data().chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
        let shape = t.shape().to_vec();
        let (gname, x) = match hf {
            "model.embed_tokens.weight" => ("token_embd.weight".to_string(), x),
            "model.norm.weight" => ("output_norm.weight".to_string(), x),
            _ => {
                let rest = hf.strip_prefix("model.layers.").unwrap();
                let (l, part) = rest.split_once('.').unwrap();
                let (g, x) = match part {
                    "input_layernorm.weight" => ("attn_norm", x),
                    "post_attention_layernorm.weight" => ("ffn_norm", x),
                    "self_attn.q_proj.weight" => ("attn_q", permute_rows(&x, shape[0], shape[1], n_head)),
                    "self_attn.k_proj.weight" => ("attn_k", permute_rows(&x, shape[0], shape[1], n_kv)),
                    "self_attn.v_proj.weight" => ("attn_v", x),
                    "self_attn.o_proj.weight" => ("attn_output", x),
                    "mlp.gate_proj.weight" => ("ffn_gate", x),
                    "mlp.up_proj.weight" => ("ffn_up", x),
                    "mlp.down_proj.weight" => ("ffn_down", x),
                    other => panic!("unexpected tensor {other}"),
                };
                (format!("blk.{l}.{g}.weight"), x)
            }
        };
        w.add_tensor(&gname, &shape, &x, GgmlType::F32).unwrap();
    }
    extra(&mut w);
    let f = tempfile::Builder::new().suffix(".gguf").tempfile().unwrap();
    std::fs::write(f.path(), w.to_bytes().unwrap()).unwrap();
    f
}

#[test]
fn gguf_rope_scaling_and_rope_freqs_match_transformers() {
    let load = |f: &tempfile::NamedTempFile| Model::load(f.path(), &Device::Cpu);
    // Linear x4 in metadata: transformers' logits for llama_v4_linear.
    let f = llama_gguf(|w| {
        w.add_f32("llama.rope.freq_base", 20000.0)
            .add_string("llama.rope.scaling.type", "linear")
            .add_f32("llama.rope.scaling.factor", 4.0);
    });
    let m = load(&f).unwrap();
    let d = parity("llama_v4_linear", &m);
    eprintln!("gguf linear x4: max |diff| = {d:.2e}");
    assert!(d <= TOL, "gguf linear: {d}");
    assert!(m.info.config_notes.is_empty(), "{:?}", m.info.config_notes);
    // The same scaling as rope_freqs.weight divisors (how llama.cpp stores llama3 scaling).
    let f = llama_gguf(|w| {
        w.add_f32("llama.rope.freq_base", 20000.0);
        w.add_tensor("rope_freqs.weight", &[4], &[4.0; 4], GgmlType::F32).unwrap();
    });
    let d = parity("llama_v4_linear", &load(&f).unwrap());
    assert!(d <= TOL, "gguf rope_freqs: {d}");
    // Without the scaling the logits differ: the check can fail.
    let f = llama_gguf(|w| {
        w.add_f32("llama.rope.freq_base", 20000.0);
    });
    assert!(parity("llama_v4_linear", &load(&f).unwrap()) > 1e-2);
    // Unsupported scaling type: refused by name.
    let f = llama_gguf(|w| {
        w.add_f32("llama.rope.freq_base", 20000.0)
            .add_string("llama.rope.scaling.type", "yarn")
            .add_f32("llama.rope.scaling.factor", 4.0);
    });
    let e = format!("{:#}", load(&f).err().expect("yarn must be refused"));
    assert!(e.contains("`yarn`") && e.contains("llama.rope.scaling.type"), "{e}");
    // No freq_base: llama.cpp's default 10000, loudly.
    let f = llama_gguf(|_| {});
    let m = load(&f).unwrap();
    assert!(m.info.config_notes.iter().any(|n| n.contains("llama.rope.freq_base") && n.contains("10000")), "{:?}", m.info.config_notes);
}

/// Fields real hub configs carry (SmolLM2's nanotron export, Qwen2.5) load without notes, and the
/// ones that would change the numbers are refused.
#[test]
fn hub_shaped_configs_load_without_spurious_notes() {
    // SmolLM2-135M's config.json (transformers 4 schema) has these extras besides the usual fields.
    let m = load("llama_v4_linear", |c| {
        let o = c.as_object_mut().unwrap();
        o.insert("is_llama_config".into(), json!(true));
        o.insert("rope_interleaved".into(), json!(false));
        o.insert("transformers.js_config".into(), json!({"kv_cache_dtype": {"q4f16": "float16"}}));
        o.insert("torch_dtype".into(), json!("bfloat16"));
        o.insert("pretraining_tp".into(), json!(1));
    })
    .unwrap();
    assert!(m.info.config_notes.is_empty(), "{:?}", m.info.config_notes);
    assert!(parity("llama_v4_linear", &m) <= TOL);
    // Qwen2.5: use_mrope false is harmless, true is refused.
    let m = load("qwen2_v4_window", |c| c["use_mrope"] = json!(false)).unwrap();
    assert!(m.info.config_notes.is_empty(), "{:?}", m.info.config_notes);
    let e = err_of("qwen2_v4_window", |c| c["use_mrope"] = json!(true));
    assert!(e.contains("use_mrope"), "{e}");
}
