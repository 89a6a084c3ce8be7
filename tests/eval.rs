//! The scoring engine: shared-prefix tree scoring equals naive per-option scoring (1e-4), batch
//! size and order change nothing (1e-5), metrics, masks, truncation, user tasks end to end; on
//! the default model COPA 0-shot accuracy and several tasks end to end.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use headroom::eval::{
    encode_example, evaluate, evaluate_prepared, prepare, score, score_naive, selected_docs, summarize, Encoded, EvalConfig, ExampleRecord,
    ScoreOptions, Tokenization,
};
use headroom::model::{Mask, Model};
use headroom::tasks::{self, LoadOptions, Metric, SplitChoice};
use headroom::tokenizer::Tokenizer;

fn tiny() -> (Model, Tokenizer) {
    let p = common::golden_dir().join("gguf/tiny_llama.gguf");
    (Model::load(&p, &Device::Cpu).unwrap(), Tokenizer::for_model(&p).unwrap())
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// Examples that exercise every tree shape: shared contexts with multi-token and single-token
/// continuations (empty branches), differing contexts (Winogrande), options sharing leading
/// continuation tokens, an empty context, and (on the tiny model) left truncation.
fn requests() -> Vec<Vec<(String, String)>> {
    let long = "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(3);
    vec![
        vec![("Question: What melts ice?\nAnswer:".into(), " heat".into()), ("Question: What melts ice?\nAnswer:".into(), " cold air".into())],
        vec![("Is it true?\nAnswer:".into(), " yes".into()), ("Is it true?\nAnswer:".into(), " no".into())],
        vec![
            ("Sarah was a better surgeon than Maria so Sarah".into(), " got the easy cases.".into()),
            ("Sarah was a better surgeon than Maria so Maria".into(), " got the easy cases.".into()),
        ],
        vec![("Pick:".into(), " the red one".into()), ("Pick:".into(), " the red two".into()), ("Pick:".into(), " blue".into())],
        vec![("".into(), "Hello there".into())],
        vec![(format!("{long}So"), " it ran.".into()), (format!("{long}So"), " it slept all day long.".into())],
    ]
}

fn encode_all(tok: &Tokenizer, max_len: usize, eos: u32) -> Vec<Encoded> {
    requests().iter().map(|r| encode_example(tok, r, Tokenization::Authors, max_len, eos, "test").unwrap()).collect()
}

fn max_diff(a: &[Vec<headroom::eval::OptionScore>], b: &[Vec<headroom::eval::OptionScore>]) -> f64 {
    let mut d = 0f64;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            d = d.max((p.ll - q.ll).abs());
            assert_eq!(p.tokens, q.tokens);
        }
    }
    d
}

fn shared_equals_naive(model: &Model, tok: &Tokenizer, max_len: usize) {
    let eos = model.info.eos_token_id.unwrap_or(0);
    let ex = encode_all(tok, max_len, eos);
    let (tree, cost) = score(model, &ex, None, &ScoreOptions { batch_size: 4, max_batch_tokens: 8192, max_padding: 1.0 }, &mut |_| {}).unwrap();
    let naive = score_naive(model, &ex, None).unwrap();
    let d = max_diff(&tree, &naive);
    eprintln!("{}: shared vs naive max |dll| = {d:.2e}; token ratio {:.3}", model.info.source, cost.token_ratio());
    assert!(d <= 1e-4, "shared-context scoring differs from naive by {d}");
    for (a, b) in tree.iter().flatten().zip(naive.iter().flatten()) {
        assert_eq!(a.greedy, b.greedy);
    }
    assert!(cost.real_tokens < cost.naive_tokens, "shared prefixes are computed once");
}

#[test]
fn shared_context_equals_naive_on_the_golden_model() {
    let (m, tok) = tiny();
    let ex = encode_all(&tok, m.info.context_length, 2);
    assert!(ex.iter().map(|e| e.truncated).sum::<usize>() > 0, "the long example is left-truncated to 64 tokens");
    assert!(ex[5].options.iter().all(|o| o.ids.len() == m.info.context_length + 1));
    shared_equals_naive(&m, &tok, m.info.context_length);
}

#[test]
fn shared_context_equals_naive_on_the_default_model() {
    let Some(p) = common::default_model() else { return };
    let m = Model::load(&p, &Device::Cpu).unwrap();
    let tok = Tokenizer::for_model(&p).unwrap();
    shared_equals_naive(&m, &tok, m.info.context_length);
}

#[test]
fn batch_size_and_order_do_not_change_log_likelihoods() {
    let (m, tok) = tiny();
    let ex = encode_all(&tok, m.info.context_length, 2);
    let run = |ex: &[Encoded], b: usize, t: usize| score(&m, ex, None, &ScoreOptions { batch_size: b, max_batch_tokens: t, max_padding: 1.0 }, &mut |_| {}).unwrap().0;
    let base = run(&ex, 1, 100_000);
    for (b, t) in [(2, 100_000), (3, 100_000), (16, 100_000), (16, 200)] {
        let d = max_diff(&base, &run(&ex, b, t));
        assert!(d <= 1e-5, "batch size {b} / {t} tokens changes a log-likelihood by {d}");
    }
    let mut rev = ex.clone();
    rev.reverse();
    let mut r = run(&rev, 3, 100_000);
    r.reverse();
    let d = max_diff(&base, &r);
    assert!(d <= 1e-5, "order changes a log-likelihood by {d}");
}

#[test]
fn progress_counts_every_example() {
    let (m, tok) = tiny();
    let ex = encode_all(&tok, m.info.context_length, 2);
    let mut seen = 0;
    score(&m, &ex, None, &ScoreOptions { batch_size: 4, max_batch_tokens: 8192, max_padding: 1.0 }, &mut |n| seen += n).unwrap();
    assert_eq!(seen, ex.len());
}

#[test]
fn empty_continuation_is_an_error_naming_the_document() {
    let (_, tok) = tiny();
    let e = encode_example(&tok, &[("ctx".into(), "".into())], Tokenization::Authors, 64, 2, "data.jsonl:7").unwrap_err();
    assert!(e.to_string().contains("data.jsonl:7") && e.to_string().contains("tokenizes to no tokens"), "{e}");
}

#[test]
fn lm_eval_04_mode_moves_trailing_spaces_and_doubles_copas_space() {
    let (m, tok) = tiny();
    let a = encode_example(&tok, &[("Answer: ".into(), "x".into())], Tokenization::LmEval04, 64, 2, "t").unwrap();
    // The context's trailing space moves to the continuation: "Answer:" + " x".
    assert_eq!(a.options[0].n_cont, 2);
    assert_eq!(a.options[0].ids.len(), "Answer: x".len());
    // COPA through `prepare`: lm-eval 0.4 scores "  the sun..." (two spaces).
    let copa = fake_copa();
    let cfg = EvalConfig { tokenization: Tokenization::LmEval04, ..Default::default() };
    let (_, enc) = prepare(&copa, &[0], &cfg, &tok, &m).unwrap();
    let (_, enc_a) = prepare(&copa, &[0], &EvalConfig::default(), &tok, &m).unwrap();
    assert_eq!(enc[0].options[0].n_cont, enc_a[0].options[0].n_cont + 1);
}

fn fake_copa() -> tasks::Task {
    use headroom::tasks::builtin::render_copa;
    use std::sync::Arc;
    let r = |v: serde_json::Value| tasks::Record {
        value: v,
        origin: tasks::Origin { file: Arc::new(PathBuf::from("copa.jsonl")), index: 1, is_row: false },
    };
    let items: Vec<_> = (0..4)
        .map(|i| {
            render_copa(&r(serde_json::json!({"premise": format!("Case {i}."), "choice1": "The sun was rising.", "choice2": "The grass was cut.", "question": "cause", "label": i % 2})), i)
                .unwrap()
        })
        .collect();
    tasks::Task {
        name: "copa".into(),
        metric: Metric::Acc,
        ties: tasks::TieBreak::First,
        eval: items.clone(),
        pool: items,
        split: tasks::SplitInfo {
            mode: tasks::SplitMode::LeaveOneOut,
            eval_source: "t".into(),
            pool_source: "t".into(),
            eval_docs: 4,
            pool_docs: 4,
            holdout_seed: None,
            pool_fraction: None,
            pool_indices: vec![],
            notes: vec![],
            files: vec![],
        },
        lm_eval04_double_space: true,
    }
}

#[test]
fn metrics_acc_all_em_and_stderr() {
    let rec = |acc: f64, group: &str, em: Option<f64>| ExampleRecord {
        doc: 0,
        id: String::new(),
        origin: String::new(),
        demos: vec![],
        gold: 0,
        pred: 0,
        ll: vec![-1.0],
        greedy: vec![acc == 1.0],
        tokens: vec![1],
        acc,
        acc_norm: acc,
        em,
        f1: em,
        group: Some(group.into()),
        truncated: 0,
    };
    let rs = vec![rec(1.0, "a", None), rec(0.0, "a", None), rec(1.0, "b", None), rec(1.0, "c", None)];
    let m = summarize(&rs, Metric::AccAll);
    assert_eq!((m[0].name.as_str(), m[0].n), ("acc_all", 3));
    assert!((m[0].value - 2.0 / 3.0).abs() < 1e-12);
    // stderr = sample std / sqrt(n): values 0,1,1 -> std 0.57735, / sqrt 3
    assert!((m[0].stderr - (1.0f64 / 3.0).sqrt() / 3f64.sqrt()).abs() < 1e-12);
    assert_eq!(m[1].name, "acc");
    let em = summarize(&[rec(0.0, "x", Some(1.0)), rec(0.0, "y", Some(0.0))], Metric::Em);
    assert_eq!((em[0].name.as_str(), em[0].value), ("em", 0.5));
    assert_eq!(headroom::eval::squad_normalize("The  London, "), "london");
    assert!((headroom::eval::squad_f1("the big city", "big city hall") - 0.8).abs() < 1e-12);
    assert_eq!(headroom::eval::predict(&[1.0, 1.0], tasks::TieBreak::First), 0);
    assert_eq!(headroom::eval::predict(&[1.0, 1.0], tasks::TieBreak::Last), 1);
}

fn load_user(task: &str) -> tasks::Task {
    let mut o = LoadOptions::new(PathBuf::from("/nonexistent"));
    o.data = Some(fixture(&format!("hf/{task}")));
    tasks::load(task, &o).unwrap()
}

#[test]
fn user_supplied_tasks_run_end_to_end() {
    let (m, tok) = tiny();
    for (task, metric, n) in [("wic", "acc", 3), ("wsc", "acc", 2), ("multirc", "acc_all", 2), ("record", "em", 1), ("mathqa", "acc", 2)] {
        let t = load_user(task);
        for shots in [0, 1] {
            let cfg = EvalConfig { shots, max_length: Some(48), ..Default::default() };
            let out = evaluate(&m, &tok, &t, &cfg, None, &mut |_| {}).unwrap();
            let s = &out.summary;
            assert_eq!((s.metric.as_str(), s.n), (metric, n), "{task} {shots}-shot");
            assert!((0.0..=1.0).contains(&s.value));
            assert!(out.records.iter().all(|r| r.ll.len() == t.eval[r.doc].choices.len() && r.ll.iter().all(|l| l.is_finite() && *l < 0.0)));
            if shots == 1 {
                assert!(s.truncated_options > 0 || task == "wic" || task == "mathqa" || task == "wsc", "{task}: long 1-shot prompts are truncated to 48 tokens");
            }
        }
    }
}

#[test]
fn arrow_files_read_like_jsonl() {
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, StructArray};
    use arrow_schema::{DataType, Field};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let jsonl = headroom::tasks::data::read_records(&fixture("hf/multirc/validation.jsonl")).unwrap();
    let col = |f: &str| -> ArrayRef { Arc::new(StringArray::from(jsonl.iter().map(|r| r.str(f).unwrap().to_string()).collect::<Vec<_>>())) };
    let int = |f: &str| -> ArrayRef { Arc::new(Int64Array::from(jsonl.iter().map(|r| r.int(f).unwrap()).collect::<Vec<_>>())) };
    let idx = StructArray::from(vec![
        (Arc::new(Field::new("paragraph", DataType::Int64, false)), int("idx.paragraph")),
        (Arc::new(Field::new("question", DataType::Int64, false)), int("idx.question")),
        (Arc::new(Field::new("answer", DataType::Int64, false)), int("idx.answer")),
    ]);
    let batch = RecordBatch::try_from_iter(vec![
        ("paragraph", col("paragraph")),
        ("question", col("question")),
        ("answer", col("answer")),
        ("idx", Arc::new(idx) as ArrayRef),
        ("label", int("label")),
    ])
    .unwrap();
    let split = dir.path().join("validation");
    std::fs::create_dir_all(&split).unwrap();
    let f = std::fs::File::create(split.join("data-00000-of-00001.arrow")).unwrap();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(f, &batch.schema()).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let mut o = LoadOptions::new(PathBuf::from("/nonexistent"));
    o.data = Some(dir.path().to_path_buf());
    let from_arrow = tasks::load("multirc", &o).unwrap();
    let from_jsonl = load_user("multirc");
    assert_eq!(from_arrow.split.mode, tasks::SplitMode::Holdout, "no train split in the folder");
    let all: Vec<_> = from_arrow.pool.iter().chain(&from_arrow.eval).map(|i| (i.query.clone(), i.group.clone(), i.gold)).collect();
    for it in &from_jsonl.eval {
        assert!(all.contains(&(it.query.clone(), it.group.clone(), it.gold)));
    }
    assert!(from_arrow.eval[0].origin.contains("row"));
}

#[test]
fn toml_task_runs_and_masks_keep_the_prompts() {
    let (m, tok) = tiny();
    let mut o = LoadOptions::new(PathBuf::from("/nonexistent"));
    o.pool_fraction = 0.5;
    let t = tasks::load(fixture("user/sentiment.toml").to_str().unwrap(), &o).unwrap();
    assert_eq!((t.eval.len(), t.pool.len()), (3, 3));
    assert_eq!(t.eval[0].choices[1].continuation, " positive");
    assert!(t.eval[0].query.starts_with("Review: ") && t.eval[0].query.ends_with("\nSentiment:"));
    let cfg = EvalConfig { shots: 2, ..Default::default() };
    let full = evaluate(&m, &tok, &t, &cfg, None, &mut |_| {}).unwrap();
    let mut mask = Mask::ones(m.n_layers(), m.n_heads());
    mask.heads[1][2] = 0.0;
    mask.ffns[0] = 0.0;
    let pruned = evaluate(&m, &tok, &t, &cfg, Some(&mask), &mut |_| {}).unwrap();
    // Prepared once, scored under several masks (the pruning sweep's path): same numbers.
    let (prompts, enc) = prepare(&t, &selected_docs(&t, &cfg), &cfg, &tok, &m).unwrap();
    let again = evaluate_prepared(&m, &t, &cfg, &prompts, &enc, Some(&mask), &mut |_| {}).unwrap();
    assert_eq!(again.records.iter().map(|r| r.ll.clone()).collect::<Vec<_>>(), pruned.records.iter().map(|r| r.ll.clone()).collect::<Vec<_>>());
    assert_eq!(again.summary.point().value, pruned.summary.value);
    for (a, b) in full.records.iter().zip(&pruned.records) {
        assert_eq!(a.demos, b.demos, "same demonstrations under every mask");
        assert_ne!(a.ll, b.ll, "the mask changes the model");
    }
    assert_eq!(full.summary.split.mode, tasks::SplitMode::Holdout);
}

#[test]
fn docs_example_task_loads() {
    let Some(data) = common::task_data() else { return };
    let t = tasks::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/sst2.toml").to_str().unwrap(), &LoadOptions::new(data)).unwrap();
    assert_eq!(t.eval.len() + t.pool.len(), 872);
    assert!(t.eval.iter().chain(&t.pool).any(|i| i.query == "it 's a charming and often affecting journey . \nQuestion: Is this sentence positive or negative?\nAnswer:"));
}

// ---------------------------------------------------------------------------------------------
// Default model + fetched data
// ---------------------------------------------------------------------------------------------

fn real() -> Option<(Model, Tokenizer, PathBuf)> {
    let p = common::default_model()?;
    let data = common::task_data()?;
    Some((Model::load(&p, &Device::Cpu).unwrap(), Tokenizer::for_model(&p).unwrap(), data))
}

#[test]
fn copa_zero_shot_accuracy_on_the_default_model() {
    let Some((m, tok, data)) = real() else { return };
    let mut o = LoadOptions::new(data);
    o.split = SplitChoice::LeaveOneOut; // all 100 documents (0-shot needs no pool)
    let t = tasks::load("copa", &o).unwrap();
    let out = evaluate(&m, &tok, &t, &EvalConfig::default(), None, &mut |_| {}).unwrap();
    let s = &out.summary;
    println!("COPA 0-shot acc on the default model: {:.3} ± {:.3} (n={}); independent NumPy: 0.62", s.value, s.stderr, s.n);
    assert_eq!(s.n, 100);
    assert!((0.55..=0.75).contains(&s.value), "COPA 0-shot acc {} outside [0.55, 0.75]", s.value);
}

#[test]
fn tasks_run_end_to_end_on_the_default_model() {
    let Some((m, tok, data)) = real() else { return };
    let runs: &[(&str, usize)] = &[
        ("cb", 0),
        ("rte", 0),
        ("arc_easy", 1),
        ("openbookqa", 0),
        ("piqa", 0),
        ("winogrande", 0),
        ("lambada", 0),
    ];
    for &(name, shots) in runs {
        let mut o = LoadOptions::new(data.clone());
        o.need_pool = shots > 0;
        let t = tasks::load(name, &o).unwrap();
        let cfg = EvalConfig { shots, limit: Some(50), ..Default::default() };
        let docs = selected_docs(&t, &cfg);
        assert_eq!(docs.len(), 50.min(t.eval.len()));
        let out = evaluate(&m, &tok, &t, &cfg, None, &mut |_| {}).unwrap();
        let s = &out.summary;
        println!(
            "{name} {shots}-shot --limit 50: {} = {:.3} ± {:.3} (n={}), {:.1} ex/s, FLOPs {:.3}x naive",
            s.metric, s.value, s.stderr, s.n, s.examples_per_s, s.flop_ratio
        );
        assert!(s.n == 50 || (name == "cb" && s.n == t.eval.len().min(50)));
        assert!((0.0..=1.0).contains(&s.value));
        assert!(s.cost.real_tokens <= s.cost.naive_tokens && s.flop_ratio < 1.0, "shared prefixes and continuation-only logits save work");
        assert!(out.records.iter().all(|r| r.ll.iter().all(|l| l.is_finite())));
    }
}
