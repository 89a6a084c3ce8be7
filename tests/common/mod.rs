//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Every tensor of a golden safetensors file, as f32 (or i64 widened to f64 for ids).
pub struct Golden {
    pub f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub i64s: HashMap<String, Vec<i64>>,
}

impl Golden {
    pub fn open(path: &Path) -> Golden {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut f32s = HashMap::new();
        let mut i64s = HashMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            match view.dtype() {
                Dtype::F32 => {
                    let v = data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                    f32s.insert(name, (view.shape().to_vec(), v));
                }
                Dtype::I64 => {
                    let v = data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
                    i64s.insert(name, v);
                }
                other => panic!("{}: unexpected dtype {other:?} for {name}", path.display()),
            }
        }
        Golden { f32s, i64s }
    }
    pub fn f32(&self, name: &str) -> &(Vec<usize>, Vec<f32>) {
        self.f32s.get(name).unwrap_or_else(|| panic!("golden tensor {name} missing"))
    }
    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.i64s.get(name).unwrap_or_else(|| panic!("golden tensor {name} missing")).iter().map(|&x| x as u32).collect()
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The default model, if `headroom fetch` has put it in the cache.
pub fn default_model() -> Option<PathBuf> {
    let cache = std::env::var_os("HEADROOM_CACHE")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("headroom")))?;
    let p = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        if std::env::var("HEADROOM_REQUIRE_ASSETS").as_deref() == Ok("1") {
            panic!("{} missing and HEADROOM_REQUIRE_ASSETS=1: run `headroom fetch`", p.display());
        }
        eprintln!("SKIPPED: default model not fetched ({}); run `headroom fetch`", p.display());
        None
    }
}

/// Writes a tiny random Llama-family HF folder (config.json + model.safetensors) into `dir`
/// and returns the config it wrote. `edit` may change the config before tensors are sized.
pub fn write_tiny_llama(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    use safetensors::tensor::TensorView;
    let mut cfg = serde_json::json!({
        "model_type": "llama", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 32, "vocab_size": 64,
        "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "tie_word_embeddings": true
    });
    edit(&mut cfg);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let (d, f, v) = (16usize, 32usize, 64usize);
    let (h, kv, hd) = (4usize, 2usize, 4usize);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![v, d]), ("model.norm.weight".into(), vec![d])];
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![d]));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        shapes.push((format!("{p}.self_attn.q_proj.weight"), vec![h * hd, d]));
        shapes.push((format!("{p}.self_attn.k_proj.weight"), vec![kv * hd, d]));
        shapes.push((format!("{p}.self_attn.v_proj.weight"), vec![kv * hd, d]));
        shapes.push((format!("{p}.self_attn.o_proj.weight"), vec![d, h * hd]));
        shapes.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
        shapes.push((format!("{p}.mlp.up_proj.weight"), vec![f, d]));
        shapes.push((format!("{p}.mlp.down_proj.weight"), vec![d, f]));
    }
    let mut seed = 12345u64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(n, s)| {
            let count: usize = s.iter().product();
            let bytes = (0..count)
                .flat_map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5).to_le_bytes()
                })
                .collect();
            (n, s, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    cfg
}
