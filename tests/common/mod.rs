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

/// headroom's cache folder, by the tool's own rule: `$HEADROOM_CACHE`, else `<user cache>/headroom`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("HEADROOM_CACHE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => dirs::cache_dir().unwrap_or_else(|| PathBuf::from(".cache")).join("headroom"),
    }
}

/// The command that puts every test asset in place (`tools/test.sh` runs it before the tests).
pub const FETCH_ASSETS: &str = "tools/test.sh (or: cargo run --release -- fetch --data && bash tools/fetch-test-assets.sh)";

/// An asset a test needs (fetched model or data, a test-only download, a system program).
/// Present: `Some(path)`. Missing: the test FAILS, naming the path and the command that provides
/// it, so a machine without the assets can never pass silently. A user who knowingly runs without
/// them sets `HEADROOM_SKIP_ASSET_TESTS=1`: the test then prints SKIPPED and returns `None`.
pub fn require_asset(path: PathBuf, provide: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    if skip_asset_tests() {
        eprintln!("SKIPPED (HEADROOM_SKIP_ASSET_TESTS=1): {} is missing; `{provide}` provides it", path.display());
        return None;
    }
    panic!(
        "{} is missing; run `{provide}` first, or set HEADROOM_SKIP_ASSET_TESTS=1 to skip the tests that need it",
        path.display()
    );
}

/// `HEADROOM_SKIP_ASSET_TESTS=1`: tests whose assets are missing are skipped instead of failing.
pub fn skip_asset_tests() -> bool {
    std::env::var("HEADROOM_SKIP_ASSET_TESTS").as_deref() == Ok("1")
}

/// A file under the cache folder (see `require_asset`).
pub fn cached_asset(rel: &str) -> Option<PathBuf> {
    require_asset(cache_dir().join(rel), FETCH_ASSETS)
}

/// The default model, fetched by `headroom fetch` (see `require_asset`).
pub fn default_model() -> Option<PathBuf> {
    cached_asset("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// `<cache>/data`, when the fetched task data is there (see `require_asset`).
pub fn task_data() -> Option<PathBuf> {
    cached_asset("data/olmo/hf_datasets/super_glue/copa/validation/data-00000-of-00001.arrow")?;
    Some(cache_dir().join("data"))
}

/// Headless Chromium for the report's page checks (see `require_asset`).
pub fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().map(PathBuf::from).find(|p| p.exists());
    found.or_else(|| require_asset(PathBuf::from("/usr/bin/chromium"), "apt-get install -y chromium (tools/test.sh does it)"))
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
