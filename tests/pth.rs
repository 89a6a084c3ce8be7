//! PyTorch pickle checkpoints (`pytorch_model.bin`, sharded `pytorch_model-0000x-of-0000y.bin` +
//! index): logits against transformers on the same files (tests/golden/pth, made by
//! tools/make_golden.py with torch.save), parity with a safetensors copy, safetensors preferred
//! when both exist, and clear errors for broken files.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::Device;
use common::{golden_dir, max_abs_diff, Golden};
use headroom::formats::pth::PthWeights;
use headroom::model::weights::WeightSource;
use headroom::model::Model;

const TOL: f32 = 2e-5;

fn pth_dir(sub: &str) -> PathBuf {
    golden_dir().join("pth").join(sub)
}

fn golden() -> Golden {
    Golden::open(&golden_dir().join("pth/golden.safetensors"))
}

fn logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let batch = model.batch_ids(&[ids.to_vec()]).unwrap();
    model.forward(&batch, None).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    match Model::load(dir, &Device::Cpu) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn every_dtype_matches_transformers() {
    let g = golden();
    let ids = g.ids("ids");
    for (sub, dtype) in [("f32", "f32"), ("f16_sharded", "f16"), ("bf16", "bf16")] {
        let model = Model::load(&pth_dir(sub), &Device::Cpu).unwrap_or_else(|e| panic!("{sub}: {e:#}"));
        assert_eq!(model.info.format, "hf-pytorch-bin", "{sub}");
        assert_eq!(model.info.weight_dtypes.keys().collect::<Vec<_>>(), vec![dtype], "{sub}");
        let got = logits(&model, &ids);
        let (_, want) = g.f32(&format!("logits.{sub}"));
        let d = max_abs_diff(&got, want);
        eprintln!("{sub:12} max |diff| vs transformers = {d:.2e}");
        assert!(d <= TOL, "{sub}: max abs diff {d} > {TOL}");
    }
    // The references differ by more than the tolerance, so reading the wrong dtype would fail.
    assert!(max_abs_diff(&g.f32("logits.f32").1, &g.f32("logits.bf16").1) > 100.0 * TOL);
    assert!(max_abs_diff(&g.f32("logits.f32").1, &g.f32("logits.f16_sharded").1) > TOL);
}

/// Writes every tensor of `ws` as f32 into `dir/model.safetensors`.
fn to_safetensors(ws: &PthWeights, dir: &Path) {
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in ws.names() {
        let shape = ws.shape_of(&name).unwrap();
        let t = ws.load_f32(&name, &shape, &Device::Cpu).unwrap();
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        data.push((name, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

#[test]
fn safetensors_copy_gives_identical_logits_and_wins_when_both_exist() {
    let g = golden();
    let ids = g.ids("ids");
    let tmp = tempfile::tempdir().unwrap();
    // f32 weights as safetensors (converted from the .bin) next to the bf16 .bin.
    let both = tmp.path().join("both");
    copy_dir(&pth_dir("bf16"), &both);
    to_safetensors(&PthWeights::open(&pth_dir("f32")).unwrap(), &both);
    let m = Model::load(&both, &Device::Cpu).unwrap();
    assert_eq!(m.info.format, "hf", "safetensors must be preferred over pytorch_model.bin");
    let from_st = logits(&m, &ids);
    let from_bin = logits(&Model::load(&pth_dir("f32"), &Device::Cpu).unwrap(), &ids);
    assert_eq!(from_st, from_bin, "safetensors and .bin of the same f32 weights must give identical logits");
    assert!(max_abs_diff(&from_st, &g.f32("logits.bf16").1) > 100.0 * TOL, "the bf16 .bin was loaded instead");
}

#[test]
fn model_id_hashes_the_bin_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&pth_dir("f32"), &dir);
    let a = headroom::runs::ModelId::of(&dir, None).unwrap();
    // Same config, other weights: the id must change (it would not if only config.json were hashed).
    std::fs::copy(pth_dir("bf16").join("pytorch_model.bin"), dir.join("pytorch_model.bin")).unwrap();
    let b = headroom::runs::ModelId::of(&dir, None).unwrap();
    assert_ne!(a.sha256, b.sha256);
}

/// Copies the zip `src` to `dst`, passing each entry through `edit` (None drops it).
fn rewrite_zip(src: &Path, dst: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        if let Some(b) = edit(&name, buf) {
            zout.start_file(name, opts).unwrap();
            zout.write_all(&b).unwrap();
        }
    }
    zout.finish().unwrap();
}

fn broken_copy(edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(pth_dir("f32").join("config.json"), dir.join("config.json")).unwrap();
    rewrite_zip(&pth_dir("f32").join("pytorch_model.bin"), &dir.join("pytorch_model.bin"), edit);
    (tmp, dir)
}

#[test]
fn rewritten_zip_still_loads() {
    // The rewrite itself (stored entries, no torch alignment padding) keeps the file readable,
    // so the failures below come from the edits.
    let (_t, dir) = broken_copy(|_, b| Some(b));
    let g = golden();
    let got = logits(&Model::load(&dir, &Device::Cpu).unwrap(), &g.ids("ids"));
    assert!(max_abs_diff(&got, &g.f32("logits.f32").1) <= TOL);
}

#[test]
fn short_storage_is_an_error_naming_the_tensor() {
    let (_t, dir) = broken_copy(|n, mut b| {
        if n.ends_with("/data/0") {
            b.truncate(b.len() / 2);
        }
        Some(b)
    });
    let e = load_err(&dir);
    assert!(e.contains("pytorch_model.bin") && e.contains("which holds only"), "{e}");
}

#[test]
fn missing_storage_and_wrong_dtype_are_errors() {
    let (_t, dir) = broken_copy(|n, b| if n.ends_with("/data/3") { None } else { Some(b) });
    let e = load_err(&dir);
    assert!(e.contains("missing from the archive") && e.contains("data/3"), "{e}");
    // Every storage declared int64 (LongStorage): the pickle's GLOBAL names are newline-ended
    // text, so the class name can be swapped in place.
    let (_t2, dir) = broken_copy(|n, b| {
        if n.ends_with("data.pkl") {
            let s = b.windows(12).position(|w| w == b"FloatStorage");
            assert!(s.is_some(), "data.pkl should name FloatStorage");
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i..].starts_with(b"FloatStorage") {
                    out.extend_from_slice(b"LongStorage");
                    i += 12;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            Some(out)
        } else {
            Some(b)
        }
    });
    let e = load_err(&dir);
    assert!(e.contains("has dtype i64") && e.contains("f32, f16, bf16"), "{e}");
}

#[test]
fn garbage_truncated_and_old_format_files_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = pth_dir("f32").join("config.json");
    let bytes = std::fs::read(pth_dir("f32").join("pytorch_model.bin")).unwrap();
    let cases: HashMap<&str, Vec<u8>> = HashMap::from([
        // Legacy torch.save (before zip): starts with a pickle protocol byte, not "PK".
        ("legacy", [&[0x80u8, 0x02, 0x8a, 0x0a][..], &[0u8; 64][..]].concat()),
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("empty", Vec::new()),
    ]);
    for (name, b) in cases {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&cfg, dir.join("config.json")).unwrap();
        std::fs::write(dir.join("pytorch_model.bin"), b).unwrap();
        let e = load_err(&dir);
        assert!(e.contains("pytorch_model.bin"), "{name}: {e}");
        if name == "legacy" {
            assert!(e.contains("not a zip archive") && e.contains("torch >= 1.6"), "{e}");
        }
    }
    // Corrupt pickle: never a panic.
    let (_t, dir) = broken_copy(|n, b| if n.ends_with("data.pkl") { Some(b[..b.len() / 3].to_vec()) } else { Some(b) });
    let e = load_err(&dir);
    assert!(e.contains("pytorch_model.bin"), "{e}");
}

#[test]
fn index_errors_name_the_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&pth_dir("f16_sharded"), &dir);
    std::fs::remove_file(dir.join("pytorch_model-00002-of-00002.bin")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("pytorch_model-00002-of-00002.bin") && e.contains("missing"), "{e}");
    std::fs::write(dir.join("pytorch_model.bin.index.json"), r#"{"weight_map": {"a": "../x.bin"}}"#).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("not a plain file name"), "{e}");
    std::fs::write(dir.join("pytorch_model.bin.index.json"), "{").unwrap();
    let e = load_err(&dir);
    assert!(e.contains("invalid JSON"), "{e}");
    // Neither safetensors nor .bin: the error lists what is there.
    std::fs::remove_file(dir.join("pytorch_model.bin.index.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("pytorch_model.bin") && e.contains("pytorch_model-00001-of-00002.bin"), "{e}");
}
