//! Bad model input of every kind is a clear error naming the file and what was wrong: never a
//! panic, never an allocation sized by an untrusted header. The CLI exits with code 2.

mod common;

use std::path::Path;
use std::process::Command;

use candle_core::Device;
use headroom::model::{Mask, Model};

fn load_err(path: &Path) -> String {
    match std::panic::catch_unwind(|| Model::load(path, &Device::Cpu)) {
        Ok(Ok(_)) => panic!("{} loaded, but should have failed", path.display()),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => panic!("loading {} panicked", path.display()),
    }
}

fn tiny(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_llama(dir.path(), edit);
    dir
}

#[test]
fn the_fixture_itself_loads_and_runs() {
    let dir = tiny(|_| {});
    let m = Model::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!((m.info.n_layers, m.info.n_heads, m.info.n_kv_heads, m.info.vocab_size), (2, 4, 2, 64));
    let nll = m.token_nll(&[1, 2, 3, 4, 5], None).unwrap();
    assert_eq!(nll.len(), 4);
    assert!(nll.iter().all(|x| x.is_finite() && *x > 0.0));
}

#[test]
fn missing_path() {
    let e = load_err(Path::new("/nonexistent/model-folder"));
    assert!(e.contains("/nonexistent/model-folder") && e.contains("no such file or folder"), "{e}");
}

#[test]
fn folder_without_config() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn config_not_json_reports_line_and_column() {
    let dir = tiny(|_| {});
    std::fs::write(dir.path().join("config.json"), "{\n  \"model_type\": \"llama\",\n  oops\n}").unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json") && e.contains("line 3"), "{e}");
}

#[test]
fn config_field_missing() {
    let dir = tiny(|c| {
        c.as_object_mut().unwrap().remove("hidden_size");
    });
    let e = load_err(dir.path());
    assert!(e.contains("config.json") && e.contains("missing field `hidden_size`"), "{e}");
}

#[test]
fn config_field_wrong_type() {
    let dir = tiny(|c| c["num_hidden_layers"] = serde_json::json!("two"));
    let e = load_err(dir.path());
    assert!(e.contains("`num_hidden_layers`") && e.contains("integer"), "{e}");
}

#[test]
fn unknown_architecture() {
    let dir = tiny(|c| c["model_type"] = serde_json::json!("mamba"));
    let e = load_err(dir.path());
    assert!(e.contains("unsupported model_type `mamba`") && e.contains("gpt_neox"), "{e}");
}

#[test]
fn shape_mismatch_names_tensor_and_shapes() {
    let dir = tiny(|c| c["intermediate_size"] = serde_json::json!(48));
    let e = load_err(dir.path());
    assert!(e.contains("mlp.gate_proj.weight") && e.contains("[32, 16]") && e.contains("[48, 16]"), "{e}");
}

#[test]
fn heads_not_dividing_hidden() {
    let dir = tiny(|c| c["num_attention_heads"] = serde_json::json!(5));
    let e = load_err(dir.path());
    assert!(e.contains("not a multiple"), "{e}");
}

#[test]
fn missing_weights_file() {
    let dir = tiny(|_| {});
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("no model.safetensors"), "{e}");
}

#[test]
fn truncated_safetensors() {
    let dir = tiny(|_| {});
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    for cut in [0usize, 4, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = load_err(dir.path());
        assert!(e.contains("model.safetensors") && e.contains("invalid safetensors"), "cut {cut}: {e}");
    }
}

#[test]
fn header_length_beyond_file() {
    let dir = tiny(|_| {});
    let p = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("invalid safetensors"), "{e}");
}

#[test]
fn missing_tensor() {
    let dir = tiny(|c| c["num_hidden_layers"] = serde_json::json!(3));
    let e = load_err(dir.path());
    assert!(e.contains("missing tensor `model.layers.2.input_layernorm.weight`"), "{e}");
}

#[test]
fn mask_of_wrong_shape_is_rejected() {
    let dir = tiny(|_| {});
    let m = Model::load(dir.path(), &Device::Cpu).unwrap();
    let ids = m.batch_ids(&[vec![1, 2, 3]]).unwrap();
    let e = m.forward(&ids, Some(&Mask::ones(3, 4))).unwrap_err().to_string();
    assert!(e.contains("3 head rows") && e.contains("2 layers"), "{e}");
    let e = m.batch_ids(&[vec![1, 64]]).unwrap_err().to_string();
    assert!(e.contains("token id 64") && e.contains("vocabulary of 64"), "{e}");
}

#[test]
fn cli_exits_2_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["inspect", "--model", "/nonexistent/x.gguf"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:") && err.contains("/nonexistent/x.gguf"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
