//! Reading task data: Hugging Face `save_to_disk` Arrow IPC stream files, JSON Lines (optionally
//! gzipped), and OLMo's rendered request files (`requests.jsonl.gz`, docs recovered from `doc`).
//!
//! Every row becomes a [`Record`]: a JSON value plus where it came from (file and line, or file
//! and row), so a bad field is reported as `file:line: ...`.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use serde_json::{Map, Value};

/// Where a record came from.
#[derive(Clone, Debug)]
pub struct Origin {
    pub file: Arc<PathBuf>,
    /// 1-based line (JSONL) or 0-based row (Arrow).
    pub index: usize,
    pub is_row: bool,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_row {
            write!(f, "{}: row {}", self.file.display(), self.index)
        } else {
            write!(f, "{}:{}", self.file.display(), self.index)
        }
    }
}

/// One document: raw fields and origin.
#[derive(Clone, Debug)]
pub struct Record {
    pub value: Value,
    pub origin: Origin,
}

impl Record {
    /// A field by dotted path (`choices.text`).
    pub fn get(&self, path: &str) -> Option<&Value> {
        let mut v = &self.value;
        for part in path.split('.') {
            v = v.get(part)?;
        }
        Some(v)
    }
    fn need(&self, path: &str) -> Result<&Value> {
        match self.get(path) {
            Some(Value::Null) | None => bail!("{}: missing field `{path}`", self.origin),
            Some(v) => Ok(v),
        }
    }
    pub fn str(&self, path: &str) -> Result<&str> {
        match self.need(path)? {
            Value::String(s) => Ok(s),
            other => bail!("{}: field `{path}` should be a string, found {}", self.origin, kind(other)),
        }
    }
    pub fn int(&self, path: &str) -> Result<i64> {
        match self.need(path)? {
            Value::Number(n) if n.is_i64() => Ok(n.as_i64().unwrap_or_default()),
            Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() < 9e15) => {
                Ok(n.as_f64().unwrap_or_default() as i64)
            }
            Value::Bool(b) => Ok(*b as i64),
            other => bail!("{}: field `{path}` should be an integer, found {}", self.origin, kind(other)),
        }
    }
    pub fn bool(&self, path: &str) -> Result<bool> {
        match self.need(path)? {
            Value::Bool(b) => Ok(*b),
            Value::Number(n) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => Ok(n.as_i64() == Some(1)),
            other => bail!("{}: field `{path}` should be a boolean, found {}", self.origin, kind(other)),
        }
    }
    pub fn strs(&self, path: &str) -> Result<Vec<String>> {
        match self.need(path)? {
            Value::Array(xs) => xs
                .iter()
                .enumerate()
                .map(|(i, x)| match x {
                    Value::String(s) => Ok(s.clone()),
                    other => bail!("{}: `{path}[{i}]` should be a string, found {}", self.origin, kind(other)),
                })
                .collect(),
            other => bail!("{}: field `{path}` should be a list of strings, found {}", self.origin, kind(other)),
        }
    }
    /// A label that is an integer or a string holding one (`"2"`).
    pub fn int_like(&self, path: &str) -> Result<i64> {
        match self.need(path)? {
            Value::String(s) => s
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("{}: field `{path}` = {s:?} is not an integer", self.origin)),
            _ => self.int(path),
        }
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Reads any supported file by its name: `.arrow` (Arrow IPC stream), `.jsonl` / `.json`
/// (one JSON object per line), `.jsonl.gz` / `.json.gz`.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.ends_with(".arrow") {
        read_arrow(path)
    } else if name.ends_with(".gz") {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        read_jsonl_from(path, BufReader::new(flate2::read::MultiGzDecoder::new(f)))
    } else if name.ends_with(".jsonl") || name.ends_with(".json") || name.ends_with(".ndjson") {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        read_jsonl_from(path, BufReader::new(f))
    } else {
        bail!("{}: unknown data file type (expected .arrow, .jsonl, .jsonl.gz)", path.display())
    }
}

fn read_jsonl_from(path: &Path, reader: impl BufRead) -> Result<Vec<Record>> {
    let file = Arc::new(path.to_path_buf());
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: cannot read line", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: invalid JSON: {e}", path.display(), i + 1))?;
        if !value.is_object() {
            bail!("{}:{}: expected a JSON object per line, found {}", path.display(), i + 1, kind(&value));
        }
        out.push(Record { value, origin: Origin { file: file.clone(), index: i + 1, is_row: false } });
    }
    Ok(out)
}

/// A Hugging Face `save_to_disk` file: Arrow IPC *stream* format, one struct row per document.
pub fn read_arrow(path: &Path) -> Result<Vec<Record>> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = arrow_ipc::reader::StreamReader::try_new(BufReader::new(f), None)
        .with_context(|| format!("{}: not an Arrow IPC stream", path.display()))?;
    let file = Arc::new(path.to_path_buf());
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| format!("{}: bad Arrow record batch", path.display()))?;
        let rows = batch_to_json(&batch).with_context(|| format!("{}", path.display()))?;
        for value in rows {
            let index = out.len();
            out.push(Record { value, origin: Origin { file: file.clone(), index, is_row: true } });
        }
    }
    Ok(out)
}

fn batch_to_json(batch: &RecordBatch) -> Result<Vec<Value>> {
    let schema = batch.schema();
    let cols: Vec<Vec<Value>> = batch.columns().iter().map(|c| array_to_json(c.as_ref())).collect::<Result<_>>()?;
    Ok((0..batch.num_rows())
        .map(|r| {
            let mut m = Map::new();
            for (f, col) in schema.fields().iter().zip(&cols) {
                m.insert(f.name().clone(), col[r].clone());
            }
            Value::Object(m)
        })
        .collect())
}

fn array_to_json(a: &dyn Array) -> Result<Vec<Value>> {
    macro_rules! prim {
        ($t:ty) => {{
            let p = a.as_primitive::<$t>();
            (0..a.len()).map(|i| if p.is_null(i) { Value::Null } else { serde_json::json!(p.value(i)) }).collect()
        }};
    }
    let vals: Vec<Value> = match a.data_type() {
        DataType::Null => vec![Value::Null; a.len()],
        DataType::Boolean => {
            let b = a.as_boolean();
            (0..a.len()).map(|i| if b.is_null(i) { Value::Null } else { Value::Bool(b.value(i)) }).collect()
        }
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float32 => prim!(Float32Type),
        DataType::Float64 => prim!(Float64Type),
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            (0..a.len()).map(|i| if s.is_null(i) { Value::Null } else { Value::String(s.value(i).to_string()) }).collect()
        }
        DataType::LargeUtf8 => {
            let s = a.as_string::<i64>();
            (0..a.len()).map(|i| if s.is_null(i) { Value::Null } else { Value::String(s.value(i).to_string()) }).collect()
        }
        DataType::List(_) => list_to_json(a.as_list::<i32>())?,
        DataType::LargeList(_) => list_to_json(a.as_list::<i64>())?,
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let cols: Vec<Vec<Value>> = s.columns().iter().map(|c| array_to_json(c.as_ref())).collect::<Result<_>>()?;
            (0..a.len())
                .map(|i| {
                    if s.is_null(i) {
                        return Value::Null;
                    }
                    let mut m = Map::new();
                    for (f, col) in fields.iter().zip(&cols) {
                        m.insert(f.name().clone(), col[i].clone());
                    }
                    Value::Object(m)
                })
                .collect()
        }
        other => bail!("unsupported Arrow column type {other}"),
    };
    Ok(vals)
}

/// OLMo's rendered request files: one line per (doc, option); `doc_id >= 1000000` lines are
/// "unconditional" duplicates and are dropped. Returns one record per doc, in doc_id order,
/// with `doc` as the value and the line of its first request as origin.
pub fn read_oe_eval_docs(path: &Path) -> Result<Vec<Record>> {
    #[derive(serde::Deserialize)]
    struct Line {
        doc_id: i64,
        doc: Option<Box<serde_json::value::RawValue>>,
    }
    let f = File::open(path).with_context(|| format!("cannot open {} (run `headroom fetch --data`)", path.display()))?;
    let reader = BufReader::new(flate2::read::MultiGzDecoder::new(f));
    let file = Arc::new(path.to_path_buf());
    let mut docs: std::collections::BTreeMap<i64, Record> = Default::default();
    let mut buf = String::new();
    let mut reader = reader;
    let mut lineno = 0;
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf).with_context(|| format!("{}:{}: cannot read", path.display(), lineno + 1))?;
        if n == 0 {
            break;
        }
        lineno += 1;
        if buf.trim().is_empty() {
            continue;
        }
        // Each doc has several request lines (one per option, plus unconditional copies): read
        // the top-level `doc_id` (it follows `doc`; a quote inside a JSON string is escaped, so
        // this key cannot occur inside a value) and parse the whole line only for a new doc.
        if let Some(p) = buf.rfind("\"doc_id\": ") {
            let digits: String = buf[p + 10..].chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(id) = digits.parse::<i64>() {
                if id >= 1_000_000 || docs.contains_key(&id) {
                    continue;
                }
            }
        }
        let line: Line = serde_json::from_str(&buf)
            .map_err(|e| anyhow::anyhow!("{}:{lineno}: invalid request line: {e}", path.display()))?;
        if line.doc_id >= 1_000_000 || docs.contains_key(&line.doc_id) {
            continue;
        }
        let raw = line.doc.ok_or_else(|| anyhow::anyhow!("{}:{lineno}: request line has no `doc`", path.display()))?;
        let value: Value = serde_json::from_str(raw.get())?;
        docs.insert(line.doc_id, Record { value, origin: Origin { file: file.clone(), index: lineno, is_row: false } });
    }
    Ok(docs.into_values().collect())
}

/// Reads a whole (small) file to a string with a path in the error.
pub fn read_to_string(path: &Path) -> Result<String> {
    let mut s = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(s)
}

/// List and LargeList columns differ only in their offset width: each row becomes a JSON array
/// of its slice of the converted child values.
fn list_to_json<O: arrow_array::OffsetSizeTrait>(l: &arrow_array::GenericListArray<O>) -> Result<Vec<Value>> {
    let inner = array_to_json(l.values().as_ref())?;
    let offs = l.value_offsets();
    Ok((0..l.len())
        .map(|i| {
            if l.is_null(i) {
                Value::Null
            } else {
                Value::Array(inner[offs[i].as_usize()..offs[i + 1].as_usize()].to_vec())
            }
        })
        .collect())
}
