//! lm-evaluation-harness 0.4 output files, so tools that read lm-eval results (leaderboards,
//! plotting scripts) take headroom's numbers as they are.
//!
//! lm-eval 0.4 writes, per invocation (one shot count), `results_<date_id>.json` and one
//! `samples_<task>_<date_id>.jsonl` per task, where `date_id` is
//! `datetime.now().isoformat().replace(":", "-")`. The shapes follow
//! `lm_eval/evaluator.py` (the results dict, the per-sample `example` dict) and
//! `lm_eval/loggers/evaluation_tracker.py` (file names, `arguments` as
//! `gen_args_i.arg_j`, responses stringified by `sanitize_list`, `target` stringified).
//!
//! The numbers are headroom's own ([`EvalSummary`]): metric `m` becomes `"m,none"` and
//! `"m_stderr,none"` (filter `none`), a stderr that is undefined (n = 1, perplexity) is
//! `"N/A"`, as lm-eval writes it. Headroom's `ppl` is lm-eval's `perplexity`.

use serde_json::{json, Map, Value};

use crate::eval::{EvalOutput, EvalSummary};
use crate::tasks::prompt::Prompt;
use crate::tasks::{Metric, Task};

/// What lm-eval records about the run in `config` (its `--model_args`, batch size, seeds...).
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The model as given (a folder, a .gguf file, `default` resolved to its path).
    pub model_path: String,
    /// lm-eval's `model_args` string: `pretrained=PATH,dtype=DTYPE` (lm-eval's HF `dtype`
    /// spelling: float32, bfloat16, float16), plus `mask=FILE` under a mask.
    pub model_args: String,
    /// The compute dtype as lm-eval records `model_dtype` (`torch.bfloat16`, ...).
    pub model_dtype: String,
    pub batch_size: usize,
    pub device: String,
    pub limit: Option<usize>,
    pub seed: u64,
    /// Seconds since the Unix epoch at the start and end of the evaluation.
    pub start_time: f64,
    pub end_time: f64,
}

/// PyTorch's name for a headroom compute dtype (`bf16` -> `bfloat16`), as lm-eval's `dtype=`
/// model argument spells it; `torch.` + it is lm-eval's `model_dtype`.
pub fn torch_dtype_name(compute_dtype: &str) -> &str {
    match compute_dtype {
        "f32" => "float32",
        "bf16" => "bfloat16",
        "f16" => "float16",
        "f64" => "float64",
        other => other,
    }
}

/// lm-eval's name for a headroom metric.
fn lm_eval_metric(name: &str) -> &str {
    match name {
        "ppl" => "perplexity",
        other => other,
    }
}

fn num_or_na(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        json!("N/A")
    }
}

/// `hash_string`: sha256 of the UTF-8 text, lowercase hex.
fn hash_string(s: &str) -> String {
    crate::io::sha256_hex(s.as_bytes())
}

/// lm-eval's `date_id`: local ISO time with `:` replaced by `-` (here UTC, microseconds),
/// e.g. `2026-12-02T03-04-05.123456`.
pub fn date_id(unix_seconds: f64) -> String {
    let secs = unix_seconds.floor() as i64;
    let micros = ((unix_seconds - secs as f64) * 1e6).round().min(999_999.0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}.{micros:06}", rem / 3600, rem / 60 % 60, rem % 60)
}

/// One task's entry under `results`: `alias`, then `"<metric>,none"` and
/// `"<metric>_stderr,none"` for every metric headroom computed.
pub fn task_results(s: &EvalSummary) -> Value {
    let mut m = Map::new();
    m.insert("alias".into(), json!(s.task));
    for v in &s.metrics {
        let name = lm_eval_metric(&v.name);
        m.insert(format!("{name},none"), num_or_na(v.value));
        m.insert(format!("{name}_stderr,none"), num_or_na(v.stderr));
    }
    Value::Object(m)
}

/// The task's `configs` entry: lm-eval's task config keys, filled with what headroom did.
fn task_config(task: &Task, s: &EvalSummary) -> Value {
    let dataset = crate::tasks::builtin::find(&task.name).map(|b| b.dataset).unwrap_or("user task file");
    let output_type = if task.metric == Metric::Greedy { "loglikelihood" } else { "multiple_choice" };
    let metric_list: Vec<Value> = s
        .metrics
        .iter()
        .map(|v| json!({"metric": lm_eval_metric(&v.name), "aggregation": "mean", "higher_is_better": v.name != "ppl"}))
        .collect();
    json!({
        "task": task.name,
        "dataset_path": dataset,
        "test_split": task.split.eval_source,
        "fewshot_split": task.split.pool_source,
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "num_fewshot": s.shots,
        "metric_list": metric_list,
        "output_type": output_type,
        "repeats": 1,
        "should_decontaminate": false,
        "metadata": {
            "version": 1.0,
            "producer": concat!("headroom ", env!("CARGO_PKG_VERSION")),
            "tokenization": s.tokenization,
            "split": task.split,
        },
    })
}

/// The whole `results_<date_id>.json` of one shot count over several tasks.
pub fn results_json(entries: &[(&Task, &EvalSummary)], run: &RunConfig) -> Value {
    let mut results = Map::new();
    let mut configs = Map::new();
    let mut versions = Map::new();
    let mut n_shot = Map::new();
    let mut higher = Map::new();
    let mut n_samples = Map::new();
    let mut subtasks = Map::new();
    for (task, s) in entries {
        results.insert(task.name.clone(), task_results(s));
        configs.insert(task.name.clone(), task_config(task, s));
        versions.insert(task.name.clone(), json!(1.0));
        n_shot.insert(task.name.clone(), json!(s.shots));
        let hib: Map<String, Value> = s.metrics.iter().map(|v| (lm_eval_metric(&v.name).to_string(), json!(v.name != "ppl"))).collect();
        higher.insert(task.name.clone(), Value::Object(hib));
        n_samples.insert(task.name.clone(), json!({"original": task.eval.len(), "effective": s.n}));
        subtasks.insert(task.name.clone(), json!([]));
    }
    let sanitized = run.model_path.replace(['/', '\\'], "__");
    json!({
        "results": results,
        "group_subtasks": subtasks,
        "configs": configs,
        "versions": versions,
        "n-shot": n_shot,
        "higher_is_better": higher,
        "n-samples": n_samples,
        "config": {
            "model": "headroom",
            "model_args": run.model_args,
            "model_dtype": run.model_dtype,
            "batch_size": run.batch_size,
            "batch_sizes": [],
            "device": run.device,
            "use_cache": Value::Null,
            "limit": run.limit,
            "bootstrap_iters": 0,
            "gen_kwargs": Value::Null,
            "random_seed": run.seed,
            "numpy_seed": run.seed,
            "torch_seed": run.seed,
            "fewshot_seed": run.seed,
        },
        "git_hash": Value::Null,
        "date": run.start_time,
        "task_hashes": {},
        "model_source": "headroom",
        "model_name": run.model_path,
        "model_name_sanitized": sanitized,
        "start_time": run.start_time,
        "end_time": run.end_time,
        "total_evaluation_time_seconds": format!("{}", run.end_time - run.start_time),
    })
}

/// The per-sample lines of one task (`samples_<task>_<date_id>.jsonl`), in document order.
/// `prompts` are the prompts that were scored (the same documents as `out.records`), with the
/// continuations exactly as scored.
pub fn samples_jsonl(task: &Task, out: &EvalOutput, prompts: &[Prompt]) -> anyhow::Result<String> {
    let by_doc: std::collections::HashMap<usize, &Prompt> = prompts.iter().map(|p| (p.doc, p)).collect();
    let mut text = String::new();
    for r in &out.records {
        let p = by_doc
            .get(&r.doc)
            .ok_or_else(|| anyhow::anyhow!("internal: no prompt for document {} of {}", r.doc, task.name))?;
        let item = &task.eval[r.doc];
        let doc = json!({
            "id": item.id,
            "origin": item.origin,
            "query": item.query,
            "choices": item.choices.iter().map(|c| c.text.clone()).collect::<Vec<_>>(),
            "gold": item.gold,
        });
        let mut arguments = Map::new();
        for (i, (ctx, cont)) in p.requests.iter().enumerate() {
            arguments.insert(format!("gen_args_{i}"), json!({"arg_0": ctx, "arg_1": cont}));
        }
        // lm-eval's loglikelihood response per request is (ll, is_greedy); `sanitize_list`
        // turns each into strings (Python `str`: "True"/"False").
        let py_bool = |b: bool| if b { "True" } else { "False" };
        let pairs: Vec<Value> = r.ll.iter().zip(&r.greedy).map(|(l, g)| json!([format!("{l}"), py_bool(*g)])).collect();
        let resps: Vec<Value> = pairs.iter().map(|p| json!([p])).collect();
        let target = if task.metric == Metric::Greedy {
            item.choices.first().map(|c| c.continuation.clone()).unwrap_or_default()
        } else {
            r.gold.to_string()
        };
        let doc_text = serde_json::to_string_pretty(&doc)?;
        let mut line = Map::new();
        line.insert("doc_id".into(), json!(r.doc));
        line.insert("doc".into(), doc);
        line.insert("target".into(), json!(target));
        line.insert("arguments".into(), Value::Object(arguments));
        line.insert("resps".into(), json!(resps));
        line.insert("filtered_resps".into(), json!(pairs));
        line.insert("filter".into(), json!("none"));
        let mut metrics: Vec<&str> = vec![];
        match task.metric {
            Metric::Acc | Metric::AccNorm => {
                line.insert("acc".into(), json!(r.acc));
                line.insert("acc_norm".into(), json!(r.acc_norm));
                metrics.extend(["acc", "acc_norm"]);
            }
            Metric::AccAll => {
                line.insert("acc".into(), json!(r.acc));
                metrics.push("acc");
            }
            Metric::Em => {
                line.insert("em".into(), json!(r.em.unwrap_or(0.0)));
                line.insert("f1".into(), json!(r.f1.unwrap_or(0.0)));
                metrics.extend(["em", "f1"]);
            }
            Metric::Greedy => {
                line.insert("acc".into(), json!(r.greedy.first().copied().unwrap_or(false) as u8 as f64));
                line.insert("perplexity".into(), json!(r.ll.first().copied().unwrap_or(f64::NAN)));
                metrics.extend(["perplexity", "acc"]);
            }
        }
        line.insert("metrics".into(), json!(metrics));
        line.insert("doc_hash".into(), json!(hash_string(&doc_text)));
        line.insert("prompt_hash".into(), json!(hash_string(p.requests.first().map_or("", |r| r.0.as_str()))));
        line.insert("target_hash".into(), json!(hash_string(&target)));
        text.push_str(&serde_json::to_string(&Value::Object(line))?);
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_id_is_lm_evals_isoformat() {
        // 2024-02-29T23:59:58.5 UTC
        assert_eq!(super::date_id(1_709_251_198.5), "2024-02-29T23-59-58.500000");
        assert_eq!(super::date_id(0.0), "1970-01-01T00-00-00.000000");
    }
}
