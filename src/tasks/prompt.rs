//! k-shot prompts the authors' way (spec 4.1, `base.py:636-704`):
//! `"\n\n".join(doc_to_text(d) + doc_to_target(d) for d in demos) + "\n\n" + doc_to_text(query)`,
//! or just `doc_to_text(query)` at 0 shots.
//!
//! Demonstrations are drawn per query from the pool with a generator keyed by (seed, k, query
//! index), so they do not depend on `--limit`, batch order or the mask: every pruning level sees
//! the same prompts.

use serde::Serialize;

use super::{Item, SplitMix64, Task};

/// The few-shot prefix: every demonstration followed by `"\n\n"` (empty at 0 shots).
pub fn fewshot_prefix(demos: &[&Item]) -> String {
    let mut s = String::new();
    for d in demos {
        s.push_str(&d.query);
        s.push_str(&d.demo_target);
        s.push_str("\n\n");
    }
    s
}

/// Pool indices of the demonstrations for query `index` (its index in the evaluation list, or
/// in the pool for importance prompts). `exclude` (a pool index) is never drawn.
pub fn sample_demos(pool_len: usize, k: usize, seed: u64, index: usize, exclude: Option<usize>) -> Vec<usize> {
    let mut rng = SplitMix64::for_key(seed, k as u64, index as u64);
    match exclude {
        Some(x) if x < pool_len => {
            // Draw from the pool without x: map draws >= x one up.
            rng.sample(pool_len - 1, k).into_iter().map(|j| if j >= x { j + 1 } else { j }).collect()
        }
        _ => rng.sample(pool_len, k),
    }
}

/// One evaluation document as scoring requests: a (context, continuation) pair per option.
#[derive(Clone, Debug, Serialize)]
pub struct Prompt {
    /// Index into `task.eval`.
    pub doc: usize,
    /// Indices into `task.pool`.
    pub demos: Vec<usize>,
    pub requests: Vec<(String, String)>,
}

/// Builds the k-shot prompts of evaluation documents `docs` (indices into `task.eval`).
/// Fails if k demonstrations cannot be drawn.
pub fn build_prompts(task: &Task, docs: &[usize], k: usize, seed: u64) -> anyhow::Result<Vec<Prompt>> {
    let available = if task.pool_is_eval() { task.pool.len().saturating_sub(1) } else { task.pool.len() };
    if k > available {
        anyhow::bail!(
            "{}: {k}-shot prompts need {k} demonstrations but the pool has {available} ({})",
            task.name,
            task.split.pool_source
        );
    }
    Ok(docs
        .iter()
        .map(|&d| {
            let item = &task.eval[d];
            let exclude = task.pool_is_eval().then_some(d);
            let demos = if k == 0 { vec![] } else { sample_demos(task.pool.len(), k, seed, d, exclude) };
            let refs: Vec<&Item> = demos.iter().map(|&j| &task.pool[j]).collect();
            let prefix = fewshot_prefix(&refs);
            let requests = item.choices.iter().map(|c| (format!("{prefix}{}", c.query), c.continuation.clone())).collect();
            Prompt { doc: d, demos, requests }
        })
        .collect())
}

/// A prompt for the importance stage: the gold continuation after a k-shot context (the
/// importance command's own prompt type, so the two stages share one format).
pub type PromptPair = crate::importance::Prompt;

/// How importance prompts are made (spec 3.1 steps 1-2, 9.3).
#[derive(Clone, Debug)]
pub struct ImportanceOptions {
    pub shots: usize,
    /// The first this-many pool documents, in order (the authors: 2500).
    pub max_docs: usize,
    pub seed: u64,
    /// Use the gold option's scored continuation (with its leading space) instead of the
    /// authors' target, which for most MC tasks has none (their quirk, the default).
    pub leading_space: bool,
    /// Never draw the query itself as its own demonstration (the authors do not exclude it;
    /// leave-one-out pools always exclude it).
    pub exclude_query: bool,
}

impl Default for ImportanceOptions {
    fn default() -> Self {
        Self { shots: 0, max_docs: 2500, seed: 1234, leading_space: false, exclude_query: false }
    }
}

/// `{context, continuation}` pairs from the task's pool for the importance stage.
pub fn importance_prompts(task: &Task, opts: &ImportanceOptions) -> anyhow::Result<Vec<PromptPair>> {
    let n = task.pool.len().min(opts.max_docs);
    if n == 0 {
        anyhow::bail!("{}: the pool is empty ({})", task.name, task.split.pool_source);
    }
    let exclude_query = opts.exclude_query || task.pool_is_eval();
    let available = if exclude_query { task.pool.len() - 1 } else { task.pool.len() };
    if opts.shots > available {
        anyhow::bail!("{}: {}-shot prompts need more demonstrations than the pool's {available}", task.name, opts.shots);
    }
    Ok((0..n)
        .map(|i| {
            let item = &task.pool[i];
            let demos = if opts.shots == 0 {
                vec![]
            } else {
                sample_demos(task.pool.len(), opts.shots, opts.seed, i, exclude_query.then_some(i))
            };
            let refs: Vec<&Item> = demos.iter().map(|&j| &task.pool[j]).collect();
            let continuation = if opts.leading_space {
                item.choices[item.gold].continuation.clone()
            } else {
                item.importance_target.clone()
            };
            PromptPair { context: format!("{}{}", fewshot_prefix(&refs), item.gold_query()), continuation }
        })
        .collect())
}

/// Writes prompt pairs as JSON Lines.
pub fn write_jsonl(pairs: &[PromptPair], out: &mut impl std::io::Write) -> anyhow::Result<()> {
    for p in pairs {
        serde_json::to_writer(&mut *out, p)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
