//! Models named the way the Hugging Face hub names them: `org/name`, `org/name@revision`,
//! `org/name:FILE.gguf`, resolved from the local hub cache only. Nothing is downloaded.
//!
//! The cache folder is chosen as `huggingface_hub` chooses it: the first of `HF_HUB_CACHE`,
//! `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`,
//! `~/.cache/huggingface/hub` that is set. Inside it, a model repository is
//!
//! ```text
//! models--org--name/
//!   refs/main                  text file holding a commit hash (also refs/pr/1, tags, branches)
//!   snapshots/<commit>/        one folder per downloaded commit; files are symlinks into blobs/
//!   blobs/<sha256 or git sha>  the file contents
//! ```
//!
//! A revision is a ref name (`main`, a branch, a tag, `refs/pr/1`) or a commit hash or a unique
//! prefix of one (at least 7 characters) among the downloaded snapshots.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// A parsed hub model id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRef {
    /// `org/name`.
    pub repo: String,
    /// `None` means `main`.
    pub revision: Option<String>,
    /// A file inside the snapshot (`:FILE`), for repositories of GGUF files.
    pub file: Option<String>,
}

impl HubRef {
    /// Parses `org/name[@revision][:FILE]`. `None` when `spec` does not look like a hub id
    /// (anything starting with `/`, `.` or `~`, more than one `/` before `@`/`:`, empty parts,
    /// or characters the hub does not allow in repository names).
    pub fn parse(spec: &str) -> Option<HubRef> {
        if spec.starts_with(['/', '.', '~']) || spec.contains('\\') {
            return None;
        }
        let (rest, file) = match spec.split_once(':') {
            Some((r, f)) => (r, Some(f)),
            None => (spec, None),
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((r, v)) => (r, Some(v)),
            None => (rest, None),
        };
        let (org, name) = repo.split_once('/')?;
        let ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with(['.', '-'])
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !ok(org) || !ok(name) {
            return None;
        }
        if let Some(v) = revision {
            // Ref names may contain `/` (refs/pr/1) but never `..` or a leading `/`.
            if v.is_empty() || v.starts_with('/') || v.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
                return None;
            }
        }
        if let Some(f) = file {
            if f.is_empty() || f.starts_with('/') || f.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
                return None;
            }
        }
        Some(HubRef {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
            file: file.map(str::to_string),
        })
    }

    /// The cache folder name: `models--org--name`.
    pub fn folder_name(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

/// The environment variables that choose the cache (captured so tests need not touch the
/// process environment).
#[derive(Clone, Debug, Default)]
pub struct HubEnv {
    pub hf_hub_cache: Option<String>,
    pub huggingface_hub_cache: Option<String>,
    pub hf_home: Option<String>,
    pub xdg_cache_home: Option<String>,
    pub home: Option<PathBuf>,
}

impl HubEnv {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            hf_hub_cache: var("HF_HUB_CACHE"),
            huggingface_hub_cache: var("HUGGINGFACE_HUB_CACHE"),
            hf_home: var("HF_HOME"),
            xdg_cache_home: var("XDG_CACHE_HOME"),
            home: dirs::home_dir(),
        }
    }

    /// The hub cache folder and how it was chosen (for error messages).
    pub fn cache_dir(&self) -> Option<(PathBuf, String)> {
        if let Some(v) = &self.hf_hub_cache {
            return Some((PathBuf::from(v), format!("HF_HUB_CACHE={v}")));
        }
        if let Some(v) = &self.huggingface_hub_cache {
            return Some((PathBuf::from(v), format!("HUGGINGFACE_HUB_CACHE={v}")));
        }
        if let Some(v) = &self.hf_home {
            return Some((Path::new(v).join("hub"), format!("HF_HOME={v}")));
        }
        if let Some(v) = &self.xdg_cache_home {
            return Some((Path::new(v).join("huggingface/hub"), format!("XDG_CACHE_HOME={v}")));
        }
        self.home.as_ref().map(|h| (h.join(".cache/huggingface/hub"), "the default, ~/.cache/huggingface/hub".to_string()))
    }
}

/// Sorted names of the entries of `dir` (empty when it cannot be listed).
fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Every ref under `refs/` as (name, commit), e.g. ("main", "abc…"), ("refs/pr/1", "def…").
fn refs(repo_dir: &Path) -> Vec<(String, String)> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
        for name in list(dir) {
            let p = dir.join(&name);
            let full = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            if p.is_dir() {
                walk(&p, &full, out);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                out.push((full, text.trim().to_string()));
            }
        }
    }
    let mut out = Vec::new();
    // huggingface_hub writes revision `R` to `refs/R`, so `refs/pr/1` lives in refs/refs/pr/1
    // and is listed here under its revision string.
    walk(&repo_dir.join("refs"), "", &mut out);
    out
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// What `resolve` found missing, with everything needed to say where it looked.
fn describe_repo(repo_dir: &Path) -> String {
    let rs = refs(repo_dir);
    let snaps = list(&repo_dir.join("snapshots"));
    let refs_s = if rs.is_empty() {
        "none".to_string()
    } else {
        rs.iter().map(|(n, c)| format!("{n} -> {c}")).collect::<Vec<_>>().join(", ")
    };
    let snaps_s = if snaps.is_empty() { "none".to_string() } else { snaps.join(", ") };
    format!("refs present: {refs_s}; snapshots present: {snaps_s}")
}

/// The snapshot folder for `r.revision` inside `repo_dir`.
fn resolve_revision(r: &HubRef, repo_dir: &Path) -> Result<PathBuf> {
    let rev = r.revision.as_deref().unwrap_or("main");
    let snapshots = repo_dir.join("snapshots");
    // 1. A ref name: refs/<rev> holds the commit.
    let ref_file = repo_dir.join("refs").join(rev);
    let commit = if ref_file.is_file() {
        let text = std::fs::read_to_string(&ref_file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ref_file.display()))?;
        let c = text.trim().to_string();
        if !is_hex(&c) {
            bail!("{}: expected a commit hash, found {:?}", ref_file.display(), c);
        }
        c
    } else if is_hex(rev) && rev.len() >= 7 {
        // 2. A commit hash or a unique prefix of one among the downloaded snapshots.
        let lower = rev.to_ascii_lowercase();
        let hits: Vec<String> = list(&snapshots).into_iter().filter(|s| s.starts_with(&lower)).collect();
        match hits.len() {
            1 => hits.into_iter().next().unwrap_or_default(),
            0 => bail!(
                "model `{}`: revision `{rev}` is neither a ref nor a prefix of a downloaded snapshot in {} ({})",
                r.repo,
                repo_dir.display(),
                describe_repo(repo_dir)
            ),
            _ => bail!(
                "model `{}`: revision `{rev}` is ambiguous: it is a prefix of snapshots {} in {}",
                r.repo,
                hits.join(", "),
                repo_dir.display()
            ),
        }
    } else {
        bail!(
            "model `{}`: no ref `{rev}` in {} ({}); give an existing ref or a commit hash (at least 7 hex digits)",
            r.repo,
            repo_dir.join("refs").display(),
            describe_repo(repo_dir)
        );
    };
    let snap = snapshots.join(&commit);
    if !snap.is_dir() {
        bail!(
            "model `{}`: revision `{rev}` points to commit {commit}, but {} is missing (the download is incomplete; {})",
            r.repo,
            snap.display(),
            describe_repo(repo_dir)
        );
    }
    Ok(snap)
}

/// Resolves a hub id to a local path: the snapshot folder (a Hugging Face model folder with
/// `config.json`) or, for `:FILE` or a snapshot holding exactly one `.gguf` and no
/// `config.json`, that file. Errors say where it looked and what is there.
pub fn resolve(r: &HubRef, env: &HubEnv) -> Result<PathBuf> {
    let Some((cache, how)) = env.cache_dir() else {
        bail!(
            "model `{}`: no Hugging Face cache folder (none of HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME, XDG_CACHE_HOME, HOME is set)",
            r.repo
        );
    };
    let repo_dir = cache.join(r.folder_name());
    if !repo_dir.is_dir() {
        let present: Vec<String> = list(&cache)
            .into_iter()
            .filter_map(|n| n.strip_prefix("models--").map(|m| m.replacen("--", "/", 1)))
            .collect();
        let present_s = if !cache.is_dir() {
            "the folder does not exist".to_string()
        } else if present.is_empty() {
            "no models in it".to_string()
        } else {
            format!("models in it: {}", present.join(", "))
        };
        bail!(
            "model `{}` is not a path here and not in the Hugging Face cache: looked for {} \
             (cache chosen by {how}; {present_s}). headroom never downloads: run \
             `hf download {}` (or `huggingface-cli download {}`) first, or give a folder or .gguf path",
            r.repo,
            repo_dir.display(),
            r.repo,
            r.repo
        );
    }
    let snap = resolve_revision(r, &repo_dir)?;
    let files = list(&snap);
    let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
    if let Some(f) = &r.file {
        let p = snap.join(f);
        if p.is_file() {
            return Ok(p);
        }
        let why = if p.symlink_metadata().is_ok() { "a dangling link (its blob was not downloaded)" } else { "missing" };
        bail!(
            "model `{}`: file `{f}` is {why} in snapshot {} (files there: {})",
            r.repo,
            snap.display(),
            if files.is_empty() { "none".to_string() } else { files.join(", ") }
        );
    }
    let config = snap.join("config.json");
    if config.is_file() {
        return Ok(snap);
    }
    if config.symlink_metadata().is_ok() {
        bail!(
            "model `{}`: {} is a dangling link (its blob was not downloaded; the download is incomplete)",
            r.repo,
            config.display()
        );
    }
    match ggufs.as_slice() {
        [one] => Ok(snap.join(one)),
        [] => bail!(
            "model `{}`: snapshot {} has neither config.json nor a .gguf file (files there: {})",
            r.repo,
            snap.display(),
            if files.is_empty() { "none".to_string() } else { files.join(", ") }
        ),
        many => bail!(
            "model `{}`: snapshot {} holds several GGUF files; name one as `{}:FILE`: {}",
            r.repo,
            snap.display(),
            r.repo,
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}
