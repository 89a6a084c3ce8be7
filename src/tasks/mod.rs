//! Tasks: documents rendered into the paper's prompt formats (spec 4.1), splits, k-shot prompts.
//!
//! A [`Task`] is plain data: the evaluation documents and the demonstration / importance pool,
//! each rendered once into an [`Item`] (query text, one [`Choice`] per answer option, gold index,
//! the target used when the document serves as a demonstration, and the importance target).
//! Built-in tasks ([`builtin`]) read the fetched data or user-supplied Hugging Face files; user
//! tasks come from a small TOML file ([`user`]). [`prompt`] builds k-shot prompts from a task.

pub mod builtin;
pub mod data;
pub mod prompt;
pub mod user;

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Serialize;

pub use data::{Origin, Record};

/// The metric a task reports as its headline number (all applicable ones are computed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Argmax of the summed continuation log-probabilities equals the gold option.
    Acc,
    /// Argmax of log-probability / character length of the option text (lm-eval `acc_norm`).
    AccNorm,
    /// MultiRC: a question counts only if all its answer rows are classified correctly.
    AccAll,
    /// ReCoRD: exact match (SQuAD normalization) of the predicted entity, max over gold answers.
    Em,
    /// LAMBADA: every continuation token is the model's greedy (argmax) choice.
    Greedy,
}

impl Metric {
    pub fn key(self) -> &'static str {
        match self {
            Metric::Acc => "acc",
            Metric::AccNorm => "acc_norm",
            Metric::AccAll => "acc_all",
            Metric::Em => "em",
            Metric::Greedy => "acc",
        }
    }
}

/// How a prediction is chosen when two options have exactly the same log-likelihood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TieBreak {
    /// `np.argmax`: the first option (MC tasks, COPA, CB, RTE, Winogrande).
    First,
    /// `ll_yes > ll_no` style comparisons: a tie picks the second option (BoolQ, WiC, WSC,
    /// MultiRC).
    Last,
}

/// One answer option of a rendered document.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Choice {
    /// The query text this option is scored after (`doc_to_text`; differs per option only for
    /// Winogrande's partial evaluation).
    pub query: String,
    /// The scored continuation (e.g. `" " + choice`).
    pub continuation: String,
    /// The option's own text: its character length normalizes `acc_norm`, and for ReCoRD it is
    /// the entity compared with the gold answers.
    pub text: String,
}

/// One document rendered in the task's format.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Item {
    /// `file:line` or `file: row N` of the source document.
    pub origin: String,
    /// Native id where the data has one, else the index in its split.
    pub id: String,
    /// `doc_to_text(doc)`: the query, as it appears in prompts.
    pub query: String,
    /// `doc_to_target(doc)`: what follows the query when this document is a demonstration.
    pub demo_target: String,
    pub choices: Vec<Choice>,
    /// Index of the gold option.
    pub gold: usize,
    /// The authors' importance target (spec 3.1 step 2): for most MC tasks the gold choice with
    /// no leading space.
    pub importance_target: String,
    /// Groups rows for `acc_all` (MultiRC: paragraph and question ids).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Gold answer strings for `em` (ReCoRD).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<String>,
}

impl Item {
    /// The query the gold option is scored after (Winogrande: its partial context).
    pub fn gold_query(&self) -> &str {
        self.choices.get(self.gold).map_or(&self.query, |c| &c.query)
    }
    pub(crate) fn check(&self) -> Result<()> {
        if self.choices.is_empty() {
            bail!("{}: the document has no answer options (empty choices)", self.origin);
        }
        if self.gold >= self.choices.len() {
            bail!(
                "{}: gold label {} is out of range for {} answer options",
                self.origin,
                self.gold,
                self.choices.len()
            );
        }
        Ok(())
    }
}

/// How the demonstration / importance pool relates to the evaluation documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitMode {
    /// The pool is the task's training split; evaluation on test if present, else validation.
    Train,
    /// No training split: the validation set is split (seeded) into a pool and a disjoint
    /// evaluation set.
    Holdout,
    /// Evaluation on every document; demonstrations come from the same set, never the query
    /// itself (the harness's rule for tasks without training docs, e.g. LAMBADA).
    LeaveOneOut,
}

/// Asked-for split handling (`--split`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitChoice {
    /// The training split where there is one, else a seeded holdout split of validation.
    #[default]
    Auto,
    /// Always split the evaluation set into pool and evaluation documents.
    Holdout,
    /// Evaluate on every document; demonstrations come from the others.
    LeaveOneOut,
}

impl std::str::FromStr for SplitChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "holdout" => Self::Holdout,
            "leave-one-out" | "loo" => Self::LeaveOneOut,
            other => bail!("unknown split mode `{other}` (expected auto, holdout or leave-one-out)"),
        })
    }
}

/// What was used for evaluation and for demonstrations; written into every output.
#[derive(Clone, Debug, Serialize)]
pub struct SplitInfo {
    pub mode: SplitMode,
    pub eval_source: String,
    pub pool_source: String,
    pub eval_docs: usize,
    pub pool_docs: usize,
    /// Seed and pool fraction of a holdout split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holdout_seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_fraction: Option<f64>,
    /// For a holdout split: which source documents (indices in the source split) form the pool.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pool_indices: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Every data file read for this task (evaluation and pool), with its sha256, so a result
    /// names exactly the data it was computed on.
    pub files: Vec<DataFile>,
}

/// One data file a task read.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct DataFile {
    /// `eval` (evaluation documents) or `pool` (demonstrations / importance).
    pub role: String,
    /// The split it holds (`train`, `validation`, `test`), or `file` for a file given as is.
    pub split: String,
    /// Where the path came from: `fetched`, `--data`, `--train`, or `task file`.
    pub given_by: String,
    pub path: String,
    pub sha256: String,
}

impl DataFile {
    pub fn new(role: &str, split: &str, given_by: &str, path: &std::path::Path) -> Result<Self> {
        Ok(Self {
            role: role.into(),
            split: split.into(),
            given_by: given_by.into(),
            path: path.display().to_string(),
            sha256: crate::assets::sha256_file(path)?,
        })
    }
}

/// A task ready to build prompts from.
#[derive(Clone, Debug)]
pub struct Task {
    pub name: String,
    pub metric: Metric,
    pub ties: TieBreak,
    pub eval: Vec<Item>,
    /// Demonstration / importance pool (the same documents as `eval` in leave-one-out mode).
    pub pool: Vec<Item>,
    pub split: SplitInfo,
    /// lm-eval 0.4 compatibility: it joins context and choice with `" "` although this task's
    /// choices already start with one, scoring a double space (COPA).
    pub lm_eval04_double_space: bool,
}

impl Task {
    /// Whether the pool is the evaluation set itself (demonstrations then exclude the query).
    pub fn pool_is_eval(&self) -> bool {
        self.split.mode == SplitMode::LeaveOneOut
    }
}

/// Where to find data and how to split it.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// `<cache>/data` (fetched task data).
    pub data_dir: PathBuf,
    /// User-supplied data: a file (the evaluation split) or a folder with split files or
    /// `save_to_disk` split folders (`train`, `validation`, `test`). It replaces the task's
    /// evaluation split, fetched or not; a `train` split in the folder becomes the pool.
    pub data: Option<PathBuf>,
    /// User-supplied training split (pool): a file, or a folder with a `train` split; it
    /// overrides both a train split in `data` and the fetched pool.
    pub train: Option<PathBuf>,
    pub split: SplitChoice,
    /// Fraction of the documents that go to the pool in a holdout split.
    pub pool_fraction: f64,
    pub split_seed: u64,
    /// Skip loading the training pool (0-shot evaluation needs none); the pool is then empty.
    pub need_pool: bool,
}

impl LoadOptions {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            data: None,
            train: None,
            split: SplitChoice::Auto,
            pool_fraction: 0.3,
            split_seed: 1234,
            need_pool: true,
        }
    }
}

/// Loads a built-in task by name, or a user task from a `.toml` file.
pub fn load(name_or_path: &str, opts: &LoadOptions) -> Result<Task> {
    if name_or_path.ends_with(".toml") || std::path::Path::new(name_or_path).is_file() {
        return user::load(std::path::Path::new(name_or_path), opts);
    }
    builtin::load(name_or_path, opts)
}

/// Deterministic 64-bit generator (SplitMix64): the same seed gives the same demonstrations and
/// splits on every platform and crate version.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The generator of induction sequence `s` in a run with seed `seed`: state `seed * 2^32 + s`.
    pub fn for_sequence(seed: u64, s: usize) -> Self {
        Self(seed.wrapping_shl(32).wrapping_add(s as u64))
    }
    /// A generator for one (seed, stream, index) triple, independent of every other triple.
    pub fn for_key(seed: u64, stream: u64, index: u64) -> Self {
        let mut g = Self(seed ^ 0x9E37_79B9_7F4A_7C15);
        let a = g.next_u64() ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut g = Self(a);
        let b = g.next_u64() ^ index.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
        Self(b)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0), by rejection (no modulo bias).
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }
    /// A seeded permutation of `0..n` (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
        v
    }
    /// `k` distinct values from `0..n`, in draw order (partial Fisher-Yates).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        let mut swapped: std::collections::HashMap<usize, usize> = Default::default();
        let mut out = Vec::with_capacity(k);
        for i in 0..k {
            let j = i + self.below(n - i);
            let vj = *swapped.get(&j).unwrap_or(&j);
            let vi = *swapped.get(&i).unwrap_or(&i);
            swapped.insert(j, vi);
            out.push(vj);
        }
        out
    }
}

/// Splits `items` into (pool, eval) with a seeded permutation: the first `round(n * fraction)`
/// permuted documents form the pool. Both keep source order. Returns the pool's source indices.
pub fn holdout_split(items: Vec<Item>, fraction: f64, seed: u64) -> Result<(Vec<Item>, Vec<Item>, Vec<usize>)> {
    if !(0.0..1.0).contains(&fraction) || fraction <= 0.0 {
        bail!("pool fraction must be in (0, 1), got {fraction}");
    }
    let n = items.len();
    let n_pool = ((n as f64) * fraction).round() as usize;
    if n_pool == 0 || n_pool >= n {
        bail!("cannot split {n} documents into a pool of {n_pool} and a disjoint evaluation set");
    }
    let perm = SplitMix64::for_key(seed, 0x5eed_5b11, 0).permutation(n);
    let mut in_pool = vec![false; n];
    for &i in &perm[..n_pool] {
        in_pool[i] = true;
    }
    let pool_indices: Vec<usize> = (0..n).filter(|&i| in_pool[i]).collect();
    let (mut pool, mut eval) = (Vec::new(), Vec::new());
    for (i, it) in items.into_iter().enumerate() {
        if in_pool[i] {
            pool.push(it)
        } else {
            eval.push(it)
        }
    }
    Ok((pool, eval, pool_indices))
}
