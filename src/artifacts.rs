//! The typed contract of the files the stages hand each other: one serde type per file kind,
//! each carrying a `schema_version`, and the one place each is written and read.
//!
//! Version 1 is the untyped files written before this module (built with `json!`, no
//! `schema_version` field). A reader meets three cases:
//! - the current version: read as is;
//! - version 1 (no field): read when every field the current type needs can be recovered
//!   unambiguously (e.g. `normalize`, which `headroom importance` nested under `options` and
//!   `prune` wrote at the top level), and refused otherwise with a message that names the file
//!   and what to re-run; never guessed (no silent default for a field that changes numbers);
//! - a newer version: refused (written by a newer headroom).
//!
//! CSVs go through the csv crate ([`crate::io::csv_bytes`], [`crate::io::read_csv`]) with the
//! typed rows here.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::importance::{AbsMode, ImportanceSums, Normalize};

/// The version every type of this module writes now.
pub const SCHEMA_VERSION: u32 = 2;

/// The `schema_version` of a JSON file: 1 when the field is absent (files written before
/// versioning); an error for a newer version or a malformed field.
fn schema_of(v: &Value, file: &Path) -> Result<u32> {
    match v.get("schema_version") {
        None => Ok(1),
        Some(n) => {
            let n = n.as_u64().ok_or_else(|| anyhow!("{}: `schema_version` should be a whole number, found {n}", file.display()))?;
            if n > SCHEMA_VERSION as u64 {
                bail!("{}: schema version {n} is newer than this headroom reads ({SCHEMA_VERSION}); use a newer headroom", file.display());
            }
            Ok(n as u32)
        }
    }
}

fn read_value(file: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))
}

/// serde for an f64 that may be NaN: serde_json writes NaN as `null`, so `null` reads back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_none()
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// An importance file: prune's `importance/<task>.<k>shot.json` and `headroom importance`'s
/// `importance.json`. `heads` / `ffns` are the scores under `normalize`; `sums` are the raw sums
/// any other normalisation can be computed from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportanceFile {
    pub schema_version: u32,
    /// The task and shot count (prune's per-task files); absent for a prompt file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shots: Option<usize>,
    /// How `heads` and `ffns` were normalised from `sums`.
    pub normalize: Normalize,
    pub abs_mode: AbsMode,
    /// `[layers][heads]`.
    pub heads: Vec<Vec<f64>>,
    /// `[layers]`.
    pub ffns: Vec<f64>,
    pub sums: ImportanceSums,
    pub examples: u64,
    #[serde(with = "nan_as_null")]
    pub mean_loss: f64,
    /// The model as loaded (`ModelInfo`, as JSON).
    pub model: Value,
    /// Where prune's examples came from (the task's pool source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Value>,
    /// `headroom importance`: the prompt file and the run's other options and timing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Value>,
}

impl ImportanceFile {
    /// Reads an importance file of the current or an older schema. A version-1 file without a
    /// recorded normalisation is refused: its scores could be under any of them.
    pub fn read(file: &Path) -> Result<Self> {
        let mut v = read_value(file)?;
        if schema_of(&v, file)? == 1 {
            // `headroom importance` nested `normalize` / `abs_mode` under `options`; prune wrote
            // them at the top level. Lift them to where version 2 keeps them.
            let obj = v.as_object_mut().ok_or_else(|| anyhow!("{}: not a JSON object", file.display()))?;
            let options = obj.get("options").cloned().unwrap_or(Value::Null);
            for key in ["normalize", "abs_mode"] {
                if !obj.contains_key(key) {
                    match options.get(key) {
                        Some(x) => {
                            obj.insert(key.into(), x.clone());
                        }
                        None if key == "abs_mode" => {
                            // The sums record the mode they were accumulated under.
                            let m = obj.get("sums").and_then(|s| s.get("abs_mode")).cloned().unwrap_or(Value::Null);
                            obj.insert(key.into(), m);
                        }
                        None => bail!(
                            "{}: written by an older headroom without its normalisation recorded, so its scores cannot be read safely; re-run the stage that wrote it (`headroom importance` or `headroom prune`)",
                            file.display()
                        ),
                    }
                }
            }
            if let Some(Value::Object(o)) = obj.get_mut("options") {
                o.remove("normalize");
                o.remove("abs_mode");
            }
            obj.insert("schema_version".into(), SCHEMA_VERSION.into());
        }
        let f: Self = serde_json::from_value(v).with_context(|| format!("{}: not an importance file", file.display()))?;
        f.check(file)?;
        Ok(f)
    }

    fn check(&self, file: &Path) -> Result<()> {
        let h = self.heads.first().map_or(0, Vec::len);
        if self.heads.is_empty() || h == 0 || self.heads.iter().any(|r| r.len() != h) {
            bail!("{}: `heads` should be a non-empty [layers][heads] matrix with rows of equal length", file.display());
        }
        if self.ffns.len() != self.heads.len() {
            bail!("{}: {} FFN scores for {} layers", file.display(), self.ffns.len(), self.heads.len());
        }
        Ok(())
    }

    pub fn write(&self, file: &Path) -> Result<()> {
        crate::io::write_json(file, self)
    }
}

/// `rankings/aggregate.<k>shot.json`: the element-wise mean of the in-distribution tasks'
/// importance matrices (OOD tasks left out), the matrix the `aggregate` ranking sorts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AggregateFile {
    pub schema_version: u32,
    pub shots: usize,
    /// The tasks averaged.
    pub tasks: Vec<String>,
    pub heads: Vec<Vec<f64>>,
    pub ffns: Vec<f64>,
    pub normalize: Normalize,
    pub note: String,
}

impl AggregateFile {
    /// Reads the current or the version-1 layout (identical but for the version field).
    pub fn read(file: &Path) -> Result<Self> {
        let mut v = read_value(file)?;
        if schema_of(&v, file)? == 1 {
            if let Some(o) = v.as_object_mut() {
                o.insert("schema_version".into(), SCHEMA_VERSION.into());
            }
        }
        serde_json::from_value(v).with_context(|| format!("{}: not an aggregate importance file", file.display()))
    }

    pub fn write(&self, file: &Path) -> Result<()> {
        crate::io::write_json(file, self)
    }
}

/// `ffn_oracle/<task>.<k>shot.json`: accuracy without each FFN in turn, and how the drops rank
/// against the gradient FFN importance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FfnOracleFile {
    pub schema_version: u32,
    pub task: String,
    pub shots: usize,
    /// The unpruned accuracy.
    pub base: f64,
    /// Accuracy with FFN `l` removed, per layer.
    pub without: Vec<f64>,
    /// `100 * (base - without[l])`: percentage points lost.
    pub diffs: Vec<f64>,
    /// Layers by ascending drop (the oracle's pruning order).
    pub order: Vec<usize>,
    /// Spearman between the gradient FFN scores and `diffs` (absent when undefined).
    pub gradient_srcc: Option<f64>,
    pub gradient_srcc_p: Option<f64>,
    pub note: String,
}

impl FfnOracleFile {
    /// Reads the current or the version-1 layout (identical but for the version field).
    pub fn read(file: &Path) -> Result<Self> {
        let mut v = read_value(file)?;
        if schema_of(&v, file)? == 1 {
            if let Some(o) = v.as_object_mut() {
                o.insert("schema_version".into(), SCHEMA_VERSION.into());
            }
        }
        let f: Self = serde_json::from_value(v).with_context(|| format!("{}: not an FFN oracle file", file.display()))?;
        if f.without.len() != f.diffs.len() || f.order.len() != f.diffs.len() {
            bail!("{}: `without`, `diffs` and `order` differ in length", file.display());
        }
        Ok(f)
    }

    pub fn write(&self, file: &Path) -> Result<()> {
        crate::io::write_json(file, self)
    }
}

/// One row of `sweeps/inflection.csv`. `task` is "average" for the mean over tasks of each
/// (shots, ranking). `base_stderr` / `base_n` are empty in files of runs before they were added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InflectionRow {
    pub task: String,
    pub shots: usize,
    pub ranking: String,
    /// "heads" or "ffns".
    pub kind: String,
    pub inflection_pct: u32,
    pub tolerance: f64,
    pub base_value: f64,
    #[serde(default)]
    pub base_stderr: Option<f64>,
    #[serde(default)]
    pub base_n: Option<usize>,
}

impl InflectionRow {
    pub const HEADER: [&'static str; 9] =
        ["task", "shots", "ranking", "kind", "inflection_pct", "tolerance", "base_value", "base_stderr", "base_n"];

    fn fields(&self) -> Vec<String> {
        vec![
            self.task.clone(),
            self.shots.to_string(),
            self.ranking.clone(),
            self.kind.clone(),
            self.inflection_pct.to_string(),
            self.tolerance.to_string(),
            format!("{:.6}", self.base_value),
            self.base_stderr.map_or(String::new(), |x| format!("{x:.6}")),
            self.base_n.map_or(String::new(), |n| n.to_string()),
        ]
    }

    /// The CSV (values to 6 decimals, as the sweeps' CSVs).
    pub fn csv(rows: &[Self]) -> Result<Vec<u8>> {
        crate::io::csv_bytes(&Self::HEADER, rows.iter().map(Self::fields))
    }

    pub fn read(file: &Path) -> Result<Vec<Self>> {
        crate::io::read_csv(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums() -> ImportanceSums {
        ImportanceSums {
            n_layers: 2,
            n_heads: 2,
            abs_mode: AbsMode::PerToken,
            head_abs: vec![1.0, 2.0, 3.0, 4.0],
            ffn_abs: vec![5.0, 6.0],
            examples: 3,
            tokens_minus_one: 10,
            label_tokens: 3,
            tokens: 13,
            loss_sum: 2.5,
        }
    }

    fn importance() -> ImportanceFile {
        let s = sums();
        let scores = s.scores(Normalize::Tokens);
        ImportanceFile {
            schema_version: SCHEMA_VERSION,
            task: Some("copa".into()),
            shots: Some(1),
            normalize: Normalize::Tokens,
            abs_mode: AbsMode::PerToken,
            heads: scores.heads,
            ffns: scores.ffns,
            examples: s.examples,
            mean_loss: f64::NAN,
            sums: s,
            model: serde_json::json!({"source": "tiny"}),
            pool: None,
            prompts: None,
            options: None,
            run: None,
        }
    }

    #[test]
    fn importance_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i.json");
        let f = importance();
        f.write(&p).unwrap();
        let back = ImportanceFile::read(&p).unwrap();
        // NaN != NaN: compare the loss apart.
        assert!(back.mean_loss.is_nan());
        assert_eq!(ImportanceFile { mean_loss: 0.0, ..back }, ImportanceFile { mean_loss: 0.0, ..f });
    }

    #[test]
    fn importance_v1_files_read_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = importance();
        let mut v = serde_json::to_value(&f).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("schema_version");
        // prune's v1 layout: `normalize` at the top level.
        let p = dir.path().join("prune.json");
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(ImportanceFile::read(&p).unwrap().normalize, Normalize::Tokens);
        // `headroom importance`'s v1 layout: under `options`.
        let o = v.as_object_mut().unwrap();
        o.remove("normalize");
        o.remove("abs_mode");
        o.insert("options".into(), serde_json::json!({"normalize": "michel", "abs_mode": "per_token", "batch_size": 4}));
        let p = dir.path().join("cli.json");
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
        let back = ImportanceFile::read(&p).unwrap();
        assert_eq!(back.normalize, Normalize::Michel);
        assert_eq!(back.options, Some(serde_json::json!({"batch_size": 4})));
        // Neither: refused, naming the file.
        v.as_object_mut().unwrap().remove("options");
        let p = dir.path().join("none.json");
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
        let e = ImportanceFile::read(&p).unwrap_err().to_string();
        assert!(e.contains("none.json") && e.contains("normalisation"), "{e}");
        // A newer schema: refused.
        let mut newer = serde_json::to_value(importance()).unwrap();
        newer["schema_version"] = 99.into();
        let p = dir.path().join("newer.json");
        std::fs::write(&p, serde_json::to_string(&newer).unwrap()).unwrap();
        assert!(ImportanceFile::read(&p).unwrap_err().to_string().contains("newer"));
    }

    #[test]
    fn aggregate_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        let a = AggregateFile {
            schema_version: SCHEMA_VERSION,
            shots: 0,
            tasks: vec!["copa".into(), "piqa".into()],
            heads: vec![vec![0.5, 1.5]],
            ffns: vec![2.0],
            normalize: Normalize::Authors,
            note: "n".into(),
        };
        a.write(&p).unwrap();
        assert_eq!(AggregateFile::read(&p).unwrap(), a);
    }

    #[test]
    fn ffn_oracle_round_trip_and_v1() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("copa.0shot.json");
        let f = FfnOracleFile {
            schema_version: SCHEMA_VERSION,
            task: "copa".into(),
            shots: 0,
            base: 0.75,
            without: vec![0.5, 0.75],
            diffs: vec![25.0, 0.0],
            order: vec![1, 0],
            gradient_srcc: None,
            gradient_srcc_p: Some(0.5),
            note: "n".into(),
        };
        f.write(&p).unwrap();
        assert_eq!(FfnOracleFile::read(&p).unwrap(), f);
        let mut v = serde_json::to_value(&f).unwrap();
        v.as_object_mut().unwrap().remove("schema_version");
        std::fs::write(&p, v.to_string()).unwrap();
        assert_eq!(FfnOracleFile::read(&p).unwrap(), f);
        v["order"] = serde_json::json!([0]);
        std::fs::write(&p, v.to_string()).unwrap();
        assert!(FfnOracleFile::read(&p).unwrap_err().to_string().contains("copa.0shot.json"));
    }

    #[test]
    fn inflection_round_trip_with_quoted_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inflection.csv");
        let rows = vec![
            InflectionRow { task: "average".into(), shots: 0, ranking: "file:a,b.json".into(), kind: "heads".into(), inflection_pct: 30, tolerance: 0.01, base_value: 0.5, base_stderr: Some(0.125), base_n: Some(8) },
            InflectionRow { task: "copa".into(), shots: 1, ranking: "own".into(), kind: "ffns".into(), inflection_pct: 0, tolerance: 0.01, base_value: 0.25, base_stderr: None, base_n: None },
        ];
        std::fs::write(&p, InflectionRow::csv(&rows).unwrap()).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("\"file:a,b.json\""));
        assert_eq!(InflectionRow::read(&p).unwrap(), rows);
    }
}
