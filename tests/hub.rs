//! `--model org/name[@revision][:FILE]` resolved from a local Hugging Face cache. Each test builds
//! the cache layout the hub client writes (blobs/, refs/, snapshots/<commit>/ of symlinks into
//! ../../blobs) in a temporary folder around a golden checkpoint, and checks the model loads to
//! the same logits as the golden folder, or that the error names where it looked.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use common::{golden_dir, max_abs_diff, Golden};
use headroom::assets::resolve_model_with;
use headroom::formats::hub::{HubEnv, HubRef};
use headroom::model::Model;

const COMMIT_A: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9001122334";
const COMMIT_B: &str = "a1b2ffff00000000000000000000000000000000";

/// Puts every file of `src` into `<hub>/models--org--name/` as the hub does: contents in
/// blobs/<name-of-blob>, snapshots/<commit>/<file> a relative symlink to ../../blobs/<blob>.
fn add_snapshot(hub: &Path, repo: &str, commit: &str, files: &[(&str, &Path)]) -> PathBuf {
    let repo_dir = hub.join(format!("models--{}", repo.replace('/', "--")));
    let blobs = repo_dir.join("blobs");
    let snap = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    for (name, src) in files {
        // Blob names are content hashes in the real cache; a per-commit name is enough here.
        let blob = format!("{commit}-{}", name.replace('/', "_"));
        std::fs::copy(src, blobs.join(&blob)).unwrap();
        let link = snap.join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let depth = name.matches('/').count();
        let target = format!("{}../../blobs/{blob}", "../".repeat(depth));
        std::os::unix::fs::symlink(target, &link).unwrap();
    }
    repo_dir
}

fn set_ref(repo_dir: &Path, name: &str, commit: &str) {
    let p = repo_dir.join("refs").join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, commit).unwrap();
}

/// Every file of a golden variant folder that a model load reads.
fn variant_files(variant: &str) -> Vec<(String, PathBuf)> {
    let dir = golden_dir().join(variant);
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n == "config.json" || n.starts_with("model")
        })
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    v.sort();
    v
}

fn env_with(hub_cache: Option<&Path>, hf_home: Option<&Path>, xdg: Option<&Path>, home: Option<&Path>) -> HubEnv {
    HubEnv {
        hf_hub_cache: hub_cache.map(|p| p.display().to_string()),
        huggingface_hub_cache: None,
        hf_home: hf_home.map(|p| p.display().to_string()),
        xdg_cache_home: xdg.map(|p| p.display().to_string()),
        home: home.map(Path::to_path_buf),
    }
}

fn logits_seq1(model: &Model, g: &Golden) -> Vec<f32> {
    let batch = model.batch_ids(&[g.ids("seq1")]).unwrap();
    model.forward(&batch, None).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// A fake cache with the sharded llama_gqa golden at COMMIT_A (refs/main) and a config-only
/// snapshot at COMMIT_B (refs/dev), as an interrupted download leaves it.
fn fake_cache(hub: &Path) -> PathBuf {
    let files = variant_files("llama_gqa");
    assert!(files.len() >= 5, "llama_gqa golden should have config, 3 shards and an index");
    let refs: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
    let repo_dir = add_snapshot(hub, "tiny-org/tiny-llama", COMMIT_A, &refs);
    set_ref(&repo_dir, "main", COMMIT_A);
    let cfg = golden_dir().join("llama_gqa/config.json");
    add_snapshot(hub, "tiny-org/tiny-llama", COMMIT_B, &[("config.json", cfg.as_path())]);
    set_ref(&repo_dir, "dev", COMMIT_B);
    repo_dir
}

#[test]
fn parse_hub_ids() {
    let r = HubRef::parse("org/name").unwrap();
    assert_eq!((r.repo.as_str(), r.revision, r.file), ("org/name", None, None));
    let r = HubRef::parse("TheBloke/TinyLlama-1.1B-GGUF@main:tinyllama.Q4_K_M.gguf").unwrap();
    assert_eq!(r.repo, "TheBloke/TinyLlama-1.1B-GGUF");
    assert_eq!(r.revision.as_deref(), Some("main"));
    assert_eq!(r.file.as_deref(), Some("tinyllama.Q4_K_M.gguf"));
    assert_eq!(HubRef::parse("o/n@refs/pr/1").unwrap().revision.as_deref(), Some("refs/pr/1"));
    for bad in ["./org/name", "/abs/path", "org", "org/name/extra", "org/", "/name", "o/n@", "o/n:", "o/n@../x", "o/n:../../x", "~/m"] {
        assert!(HubRef::parse(bad).is_none(), "{bad} should not parse as a hub id");
    }
}

#[test]
fn resolves_main_and_loads_same_logits_as_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    fake_cache(&hub);
    let env = env_with(Some(&hub), None, None, None);
    let path = resolve_model_with(Some("tiny-org/tiny-llama"), tmp.path(), &env).unwrap();
    assert_eq!(path, hub.join("models--tiny-org--tiny-llama/snapshots").join(COMMIT_A));
    let via_hub = Model::load(&path, &Device::Cpu).unwrap();
    let direct = Model::load(&golden_dir().join("llama_gqa"), &Device::Cpu).unwrap();
    let g = Golden::open(&golden_dir().join("llama_gqa/golden.safetensors"));
    let a = logits_seq1(&via_hub, &g);
    let b = logits_seq1(&direct, &g);
    assert_eq!(a, b, "loading through the hub cache changed the logits");
    let (_, want) = g.f32("logits.unmasked.seq1");
    assert!(max_abs_diff(&a, want) <= 1e-4);
}

#[test]
fn revision_by_ref_by_hash_and_by_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    let repo_dir = fake_cache(&hub);
    set_ref(&repo_dir, "refs/pr/1", COMMIT_A);
    let env = env_with(Some(&hub), None, None, None);
    let snap_a = repo_dir.join("snapshots").join(COMMIT_A);
    let snap_b = repo_dir.join("snapshots").join(COMMIT_B);
    let r = |s: &str| resolve_model_with(Some(s), tmp.path(), &env);
    assert_eq!(r("tiny-org/tiny-llama@main").unwrap(), snap_a);
    assert_eq!(r("tiny-org/tiny-llama@dev").unwrap(), snap_b);
    assert_eq!(r("tiny-org/tiny-llama@refs/pr/1").unwrap(), snap_a);
    assert_eq!(r(&format!("tiny-org/tiny-llama@{COMMIT_A}")).unwrap(), snap_a);
    assert_eq!(r("tiny-org/tiny-llama@a1b2c3d").unwrap(), snap_a);
    // A prefix shared by both snapshots is refused, naming both.
    let e = format!("{:#}", r("tiny-org/tiny-llama@a1b2").unwrap_err());
    assert!(e.contains("ref `a1b2`") || e.contains("ambiguous"), "{e}");
    let e = format!("{:#}", r("tiny-org/tiny-llama@a1b2c3d4e5f6ffff").unwrap_err());
    assert!(e.contains("neither a ref nor a prefix"), "{e}");
    let e = format!("{:#}", r("tiny-org/tiny-llama@a1b2f").unwrap_err());
    assert!(e.contains("no ref `a1b2f`"), "{e}");
    // 7+ hex digits shared by two snapshots: ambiguous.
    let b2 = COMMIT_A.replacen("a1b2c3d4", "a1b2c3d9", 1);
    add_snapshot(&hub, "tiny-org/tiny-llama", &b2, &[("config.json", golden_dir().join("llama_gqa/config.json").as_path())]);
    let e = format!("{:#}", r("tiny-org/tiny-llama@a1b2c3d").unwrap_err());
    assert!(e.contains("ambiguous") && e.contains(COMMIT_A) && e.contains(&b2), "{e}");
    // Unknown ref: the error lists the refs and snapshots that are there.
    let e = format!("{:#}", r("tiny-org/tiny-llama@v2").unwrap_err());
    assert!(e.contains("no ref `v2`") && e.contains("main ->") && e.contains("dev ->") && e.contains(COMMIT_B), "{e}");
}

#[test]
fn missing_model_error_says_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let hub = home.join(".cache/huggingface/hub");
    fake_cache(&hub);
    // Only HOME set: the default location is searched and named.
    let env = env_with(None, None, None, Some(&home));
    assert!(resolve_model_with(Some("tiny-org/tiny-llama"), tmp.path(), &env).is_ok());
    let e = format!("{:#}", resolve_model_with(Some("other/model"), tmp.path(), &env).unwrap_err());
    assert!(e.contains(&hub.join("models--other--model").display().to_string()), "{e}");
    assert!(e.contains("tiny-org/tiny-llama"), "error should list the models present: {e}");
    assert!(e.contains("never downloads"), "{e}");
    // Precedence: HF_HUB_CACHE over HF_HOME over XDG_CACHE_HOME over HOME.
    let other = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    for env in [
        env_with(Some(&other), Some(&home), Some(&home), Some(&home)),
        env_with(None, Some(&other.join("hfhome")), Some(&home), Some(&home)),
        env_with(None, None, Some(&other.join("xdg")), Some(&home)),
    ] {
        let e = format!("{:#}", resolve_model_with(Some("tiny-org/tiny-llama"), tmp.path(), &env).unwrap_err());
        assert!(e.contains(&other.display().to_string()), "{e}");
    }
    let env = env_with(None, Some(&tmp.path().join("hfhome")), None, None);
    let hub2 = tmp.path().join("hfhome/hub");
    fake_cache(&hub2);
    assert!(resolve_model_with(Some("tiny-org/tiny-llama"), tmp.path(), &env).is_ok());
    let env = env_with(None, None, Some(&tmp.path().join("xdg")), None);
    fake_cache(&tmp.path().join("xdg/huggingface/hub"));
    assert!(resolve_model_with(Some("tiny-org/tiny-llama"), tmp.path(), &env).is_ok());
}

#[test]
fn dangling_links_and_config_only_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    let repo_dir = fake_cache(&hub);
    let env = env_with(Some(&hub), None, None, None);
    // The config-only snapshot resolves, and loading says what is missing.
    let p = resolve_model_with(Some("tiny-org/tiny-llama@dev"), tmp.path(), &env).unwrap();
    let e = format!("{:#}", Model::load(&p, &Device::Cpu).err().unwrap());
    assert!(e.contains("model.safetensors"), "{e}");
    // A ref pointing at a snapshot that is not there.
    set_ref(&repo_dir, "gone", "0123456789abcdef0123456789abcdef01234567");
    let e = format!("{:#}", resolve_model_with(Some("tiny-org/tiny-llama@gone"), tmp.path(), &env).unwrap_err());
    assert!(e.contains("incomplete") && e.contains("0123456789abcdef"), "{e}");
    // config.json whose blob is missing.
    std::fs::remove_file(repo_dir.join("blobs").join(format!("{COMMIT_A}-config.json"))).unwrap();
    let e = format!("{:#}", resolve_model_with(Some("tiny-org/tiny-llama"), tmp.path(), &env).unwrap_err());
    assert!(e.contains("dangling link"), "{e}");
}

#[test]
fn gguf_repositories_take_a_file_name() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    let gguf = golden_dir().join("gguf/tiny_llama.gguf");
    let readme = golden_dir().join("gguf/README.md");
    let repo_dir = add_snapshot(
        &hub,
        "tiny-org/tiny-GGUF",
        COMMIT_A,
        &[("tiny.Q8_0.gguf", gguf.as_path()), ("sub/tiny.F16.gguf", gguf.as_path()), ("README.md", readme.as_path())],
    );
    set_ref(&repo_dir, "main", COMMIT_A);
    let env = env_with(Some(&hub), None, None, None);
    let snap = repo_dir.join("snapshots").join(COMMIT_A);
    let p = resolve_model_with(Some("tiny-org/tiny-GGUF:tiny.Q8_0.gguf"), tmp.path(), &env).unwrap();
    assert_eq!(p, snap.join("tiny.Q8_0.gguf"));
    let p = resolve_model_with(Some("tiny-org/tiny-GGUF@a1b2c3d:sub/tiny.F16.gguf"), tmp.path(), &env).unwrap();
    assert_eq!(p, snap.join("sub/tiny.F16.gguf"));
    let m = Model::load(&p, &Device::Cpu).unwrap();
    let direct = Model::load(&gguf, &Device::Cpu).unwrap();
    let ids = vec![1u32, 5, 9, 3];
    assert_eq!(m.next_token_log_probs(&ids, None).unwrap(), direct.next_token_log_probs(&ids, None).unwrap());
    // Only one .gguf at the top level and no config.json: it is taken.
    assert_eq!(resolve_model_with(Some("tiny-org/tiny-GGUF"), tmp.path(), &env).unwrap(), snap.join("tiny.Q8_0.gguf"));
    // Two: the error lists them.
    add_snapshot(&hub, "tiny-org/tiny-GGUF", COMMIT_A, &[("tiny.Q4_0.gguf", gguf.as_path())]);
    let e = format!("{:#}", resolve_model_with(Some("tiny-org/tiny-GGUF"), tmp.path(), &env).unwrap_err());
    assert!(e.contains("tiny.Q4_0.gguf") && e.contains("tiny.Q8_0.gguf") && e.contains(":FILE"), "{e}");
    let e = format!("{:#}", resolve_model_with(Some("tiny-org/tiny-GGUF:nope.gguf"), tmp.path(), &env).unwrap_err());
    assert!(e.contains("`nope.gguf` is missing") && e.contains("tiny.Q8_0.gguf"), "{e}");
}

/// The CLI reads the cache location from the environment (HF_HOME here).
#[test]
fn cli_inspect_by_hub_id() {
    let tmp = tempfile::tempdir().unwrap();
    fake_cache(&tmp.path().join("hf/hub"));
    let run = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_headroom"))
            .args(["inspect", "--json", "--model", model])
            .env_remove("HF_HUB_CACHE")
            .env_remove("HUGGINGFACE_HUB_CACHE")
            .env("HF_HOME", tmp.path().join("hf"))
            .env("HEADROOM_CACHE", tmp.path().join("headroom"))
            .output()
            .unwrap()
    };
    let out = run("tiny-org/tiny-llama@main");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n_layers"], 3, "{v}");
    let out = run("tiny-org/missing");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HF_HOME=") && err.contains("models--tiny-org--missing"), "{err}");
}
