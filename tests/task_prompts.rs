//! Every built-in task renders the paper's prompts (spec 4.1): the 0-shot and 1-shot prompt of a
//! fixed document equal hand-written strings, for every option. Tasks read from the fetched data
//! are checked on hand-made documents in both the raw Hugging Face form and (for pools) OLMo's
//! processed form; the user-supplied tasks are read through the loader from fixture files.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use headroom::tasks::builtin::{self, find};
use headroom::tasks::prompt::{build_prompts, importance_prompts, ImportanceOptions};
use headroom::tasks::{self, Item, LoadOptions, Origin, Record, SplitInfo, SplitMode, Task};
use serde_json::{json, Value};

fn rec(v: Value) -> Record {
    Record { value: v, origin: Origin { file: Arc::new(PathBuf::from("doc.jsonl")), index: 1, is_row: false } }
}

/// A task with one evaluation document and one pool document, so the 1-shot demo is fixed.
fn one_one(name: &str, query: Item, demo: Item) -> Task {
    let b = find(name).unwrap();
    Task {
        name: name.into(),
        metric: b.metric,
        ties: b.ties,
        eval: vec![query],
        pool: vec![demo],
        split: SplitInfo {
            mode: SplitMode::Train,
            eval_source: "test".into(),
            pool_source: "test".into(),
            eval_docs: 1,
            pool_docs: 1,
            holdout_seed: None,
            pool_fraction: None,
            pool_indices: vec![],
            notes: vec![],
            files: vec![],
        },
        lm_eval04_double_space: false,
    }
}

/// Checks the 0-shot and 1-shot requests: `ctx0[i]` is option i's 0-shot context, `demo` the
/// 1-shot prefix (demonstration + "\n\n"), `conts` the continuations.
fn check(task: &Task, ctx0: &[&str], demo: &str, conts: &[&str]) {
    let p0 = &build_prompts(task, &[0], 0, 7).unwrap()[0];
    let p1 = &build_prompts(task, &[0], 1, 7).unwrap()[0];
    assert_eq!(p0.requests.len(), conts.len(), "{}: option count", task.name);
    for (i, cont) in conts.iter().enumerate() {
        let c0 = ctx0.get(i).unwrap_or(&ctx0[0]);
        assert_eq!(p0.requests[i].0, *c0, "{} 0-shot context of option {i}", task.name);
        assert_eq!(p0.requests[i].1, *cont, "{} continuation {i}", task.name);
        assert_eq!(p1.requests[i].0, format!("{demo}{c0}"), "{} 1-shot context of option {i}", task.name);
        assert_eq!(p1.requests[i].1, *cont, "{} 1-shot continuation {i}", task.name);
    }
}

#[test]
fn copa() {
    let q = builtin::render_copa(&rec(json!({"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.", "choice2": "The grass was cut.", "question": "cause", "idx": 0, "label": 0})), 0).unwrap();
    let d = builtin::render_copa(&rec(json!({"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.", "choice2": "Water flowed from the spout.", "question": "effect", "idx": 1, "label": 1})), 1).unwrap();
    assert_eq!(q.importance_target, " the sun was rising.");
    check(
        &one_one("copa", q, d),
        &["My body cast a shadow over the grass because"],
        "The man turned on the faucet therefore water flowed from the spout.\n\n",
        &[" the sun was rising.", " the grass was cut."],
    );
}

#[test]
fn cb() {
    let q = builtin::render_cb(&rec(json!({"premise": "Valence was helping.", "hypothesis": "Valence was helping", "idx": 0, "label": 0})), 0).unwrap();
    let d = builtin::render_cb(&rec(json!({"premise": "It was a complex language.", "hypothesis": "the language was peculiar", "idx": 1, "label": 1})), 1).unwrap();
    check(
        &one_one("cb", q, d),
        &["Valence was helping.\nQuestion: Valence was helping. True, False or Neither?\nAnswer:"],
        "It was a complex language.\nQuestion: the language was peculiar. True, False or Neither?\nAnswer: False\n\n",
        &[" True", " False", " Neither"],
    );
}

#[test]
fn rte() {
    let q = builtin::render_rte(&rec(json!({"sentence1": "Dana Reeve died.", "sentence2": "Reeve is dead.", "label": 0, "idx": 0})), 0).unwrap();
    let d = builtin::render_rte(&rec(json!({"sentence1": "No weapons were found.", "sentence2": "Weapons were found.", "label": 1, "idx": 1})), 1).unwrap();
    assert_eq!(q.importance_target, " True");
    check(
        &one_one("rte", q, d),
        &["Dana Reeve died.\nQuestion: Reeve is dead. True or False?\nAnswer:"],
        "No weapons were found.\nQuestion: Weapons were found. True or False?\nAnswer: False\n\n",
        &[" True", " False"],
    );
}

#[test]
fn boolq() {
    let q = builtin::render_boolq(&rec(json!({"passage": "Ethanol fuel -- Ethanol is made from corn.", "question": "is ethanol made from corn", "idx": 0, "label": 1})), 0).unwrap();
    // OLMo's processed form (the fetched train split).
    let d = builtin::render_boolq(&rec(json!({"idx": 0, "query": "Persian -- Persian is spoken in Iran.\nQuestion: do iran and afghanistan speak the same language?\nAnswer:", "choices": ["yes", "no"], "gold": 0})), 0).unwrap();
    assert_eq!((q.gold, q.importance_target.as_str()), (0, " yes"));
    check(
        &one_one("boolq", q, d),
        &["Ethanol fuel -- Ethanol is made from corn.\nQuestion: is ethanol made from corn?\nAnswer:"],
        "Persian -- Persian is spoken in Iran.\nQuestion: do iran and afghanistan speak the same language?\nAnswer: yes\n\n",
        &[" yes", " no"],
    );
    // google/boolq rows (`answer` bool) work too.
    let g = builtin::render_boolq(&rec(json!({"passage": "P", "question": "q", "answer": false})), 0).unwrap();
    assert_eq!(g.gold, 1);
}

#[test]
fn arc() {
    let q = builtin::render_arc(&rec(json!({"id": "Q1", "question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], "label": ["1", "2", "3"]}, "answerKey": "2"})), 0).unwrap();
    let d = builtin::render_arc(&rec(json!({"id": "D1", "query": "Question: What melts ice?\nAnswer:", "choices": ["heat", "cold"], "gold": 0})), 0).unwrap();
    assert_eq!((q.gold, q.importance_target.as_str()), (1, "steam"));
    for name in ["arc_easy", "arc_challenge"] {
        check(
            &one_one(name, q.clone(), d.clone()),
            &["Question: Which is a gas?\nAnswer:"],
            "Question: What melts ice?\nAnswer: heat\n\n",
            &[" ice", " steam", " rock"],
        );
    }
}

#[test]
fn openbookqa() {
    let q = builtin::render_openbookqa(&rec(json!({"id": "8-376", "question_stem": "Frilled sharks live far beneath the surface, so they are known as", "choices": {"text": ["Deep sea animals", "fish"], "label": ["A", "B"]}, "answerKey": "A"})), 0).unwrap();
    let d = builtin::render_openbookqa(&rec(json!({"id": "7-980", "query": "Question: The sun is responsible for\nAnswer:", "choices": ["puppies learning new tricks", "plants sprouting, blooming and wilting"], "gold": 1})), 0).unwrap();
    check(
        &one_one("openbookqa", q, d),
        &["Frilled sharks live far beneath the surface, so they are known as"],
        "The sun is responsible for plants sprouting, blooming and wilting\n\n",
        &[" Deep sea animals", " fish"],
    );
}

#[test]
fn hellaswag() {
    let q = builtin::render_hellaswag(&rec(json!({"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he", "ctx": "", "endings": ["is using wrap to wrap a pair of skis.", "starts pulling up roofing [title] on a roof."], "source_id": "x", "split": "val", "split_type": "indomain", "label": "1"})), 0).unwrap();
    let d = builtin::render_hellaswag(&rec(json!({"ind": 4, "query": "Removing ice from car: Then, the man writes over the snow. Then", "choices": [", the man adds wax.", ", the man continues removing the snow."], "gold": 1})), 0).unwrap();
    assert_eq!(q.importance_target, "starts pulling up roofing. on a roof.");
    check(
        &one_one("hellaswag", q, d),
        &["Roof shingle removal: A man is sitting on a roof. He"],
        "Removing ice from car: Then, the man writes over the snow. Then , the man continues removing the snow.\n\n",
        &[" is using wrap to wrap a pair of skis.", " starts pulling up roofing. on a roof."],
    );
}

#[test]
fn piqa() {
    let q = builtin::render_piqa(&rec(json!({"goal": "How do I ready a guinea pig cage?", "sol1": "Use paper strips.", "sol2": "Use jeans.", "label": 0})), 0).unwrap();
    let d = builtin::render_piqa(&rec(json!({"goal": "When boiling butter, you can", "sol1": "Pour it onto a plate", "sol2": "Pour it into a jar", "label": 1, "index": 0, "query": "Goal: ...", "choices": [], "gold": 1})), 0).unwrap();
    assert_eq!(q.importance_target, "Use paper strips.");
    check(
        &one_one("piqa", q, d),
        &["Question: How do I ready a guinea pig cage?\nAnswer:"],
        "Question: When boiling butter, you can\nAnswer: Pour it into a jar\n\n",
        &[" Use paper strips.", " Use jeans."],
    );
}

#[test]
fn winogrande() {
    let q = builtin::render_winogrande(&rec(json!({"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.", "option1": "Sarah", "option2": "Maria", "answer": "2"})), 0).unwrap();
    let d = builtin::render_winogrande(&rec(json!({"sentence": "Ian volunteered to eat Dennis's menudo because _ despised eating intestine.", "option1": "Ian", "option2": "Dennis", "answer": "2", "index": 0})), 0).unwrap();
    assert_eq!(q.gold_query(), "Sarah was a much better surgeon than Maria so Maria");
    check(
        &one_one("winogrande", q, d),
        &["Sarah was a much better surgeon than Maria so Sarah", "Sarah was a much better surgeon than Maria so Maria"],
        "Ian volunteered to eat Dennis's menudo because Dennis despised eating intestine.\n\n",
        &[" always got the easier cases.", " always got the easier cases."],
    );
}

#[test]
fn lambada() {
    let q = builtin::render_lambada(&rec(json!({"id": 0, "query": "In my palm is a clear stone. I don't care about", "answers_text": ["signs"], "choices": ["signs"]})), 0).unwrap();
    let d = builtin::render_lambada(&rec(json!({"text": "Shane gripped her arm. \"I can make it there on my own, Shane"})), 1).unwrap();
    check(
        &one_one("lambada", q, d),
        &["In my palm is a clear stone. I don't care about"],
        "Shane gripped her arm. \"I can make it there on my own, Shane\n\n",
        &[" signs"],
    );
}

fn fixture(task: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf").join(task)
}

/// Loads a user-supplied task from its fixture folder (train split of one usable document).
fn load_fixture(task: &str) -> Task {
    let mut o = LoadOptions::new(PathBuf::from("/nonexistent"));
    o.data = Some(fixture(task));
    let t = tasks::load(task, &o).unwrap();
    assert_eq!(t.split.mode, SplitMode::Train);
    assert_eq!(t.pool.len(), 1, "{task}: the fixture pool has one usable document");
    t
}

#[test]
fn wic() {
    let t = load_fixture("wic");
    assert_eq!(t.eval[0].gold, 1);
    check(
        &t,
        &["Sentence 1: Do you want to come over to my place later?\nSentence 2: A political system with no place for the less prominent groups.\nQuestion: Is the word 'place' used in the same way in the two sentences above?\nAnswer:"],
        "Sentence 1: I run fast.\nSentence 2: They run home.\nQuestion: Is the word 'run' used in the same way in the two sentences above?\nAnswer: yes\n\n",
        &[" yes", " no"],
    );
}

#[test]
fn wsc() {
    let t = load_fixture("wsc"); // the negative train document is filtered out
    check(
        &t,
        &["Passage: Mark told Pete many lies about himself, which Pete included in his book. *He* should have been more truthful.\nQuestion: In the passage above, does the pronoun \"*He*\" refer to \"*Mark*\"?\nAnswer:"],
        "Passage: The city councilmen refused the demonstrators a permit because *they* feared violence.\nQuestion: In the passage above, does the pronoun \"*they*\" refer to \"*The city councilmen*\"?\nAnswer: yes\n\n",
        &[" yes", " no"],
    );
    assert_eq!(
        t.eval[1].query,
        "Passage: The trophy doesn't fit into the suitcase because *it* is too large.\nQuestion: In the passage above, does the pronoun \"*it*\" refer to \"*The trophy*\"?\nAnswer:"
    );
}

#[test]
fn multirc() {
    let t = load_fixture("multirc");
    assert_eq!(t.eval[0].group.as_deref(), Some("0-0"));
    check(
        &t,
        &["Tom has a red car.\nQuestion: What color is Tom's car?\nAnswer:"],
        "Ann is ten.\nQuestion: How old is Ann?\nAnswer: Ten\nIs the answer correct? yes\n\n",
        &[" Blue\nIs the answer correct? yes", " Blue\nIs the answer correct? no"],
    );
    assert_eq!(t.eval[0].gold, 1);
}

#[test]
fn record() {
    let t = load_fixture("record");
    assert_eq!(t.eval[0].answers, vec!["London"]);
    check(
        &t,
        &["The cat sat on the mat in London.\n\n  - Cats like mats.\n  - London is big.\n"],
        "Paris is in France.\n\n  - France is nice.\n  - France is in Europe.\n\n",
        &["  - London is a city.", "  - cat is a city."],
    );
}

#[test]
fn mathqa() {
    let t = load_fixture("mathqa");
    assert_eq!(t.eval[0].gold, 1);
    assert_eq!(t.eval[1].choices.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(), ["2", "2.5", "3", "4", "none of these"]);
    check(
        &t,
        &["Question: what is 2 + 3 ?\nAnswer:"],
        // The authors override doc_to_target: no space after "Answer:" in demonstrations.
        "Question: what is 1 + 1 ?\nAnswer:2\n\n",
        &[" 4", " 5", " 6", " 7", " 8"],
    );
}

#[test]
fn demos_are_seeded_per_query_and_independent_of_the_subset() {
    let items: Vec<Item> = (0..50)
        .map(|i| builtin::render_piqa(&rec(json!({"goal": format!("g{i}"), "sol1": "a", "sol2": "b", "label": 0})), i).unwrap())
        .collect();
    let mut t = one_one("piqa", items[0].clone(), items[0].clone());
    t.eval = items[..20].to_vec();
    t.pool = items[20..].to_vec();
    let all = build_prompts(&t, &(0..20).collect::<Vec<_>>(), 5, 42).unwrap();
    let some = build_prompts(&t, &[7, 3], 5, 42).unwrap();
    assert_eq!(some[0].demos, all[7].demos);
    assert_eq!(some[1].demos, all[3].demos);
    for p in &all {
        let mut d = p.demos.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 5, "distinct demonstrations");
    }
    let other_seed = build_prompts(&t, &[7], 5, 43).unwrap();
    assert_ne!(other_seed[0].demos, all[7].demos);
    // Leave-one-out never draws the query.
    t.pool = t.eval.clone();
    t.split.mode = SplitMode::LeaveOneOut;
    for p in build_prompts(&t, &(0..20).collect::<Vec<_>>(), 19, 1).unwrap() {
        assert!(!p.demos.contains(&p.doc));
    }
    assert!(build_prompts(&t, &[0], 20, 1).is_err(), "20 demonstrations from 19 others");
}

#[test]
fn importance_prompts_use_the_authors_targets() {
    let items: Vec<Item> = (0..4)
        .map(|i| {
            builtin::render_arc(
                &rec(json!({"id": format!("q{i}"), "question": format!("Q{i}?"), "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"})),
                i,
            )
            .unwrap()
        })
        .collect();
    let mut t = one_one("arc_easy", items[0].clone(), items[0].clone());
    t.pool = items;
    let quirk = importance_prompts(&t, &ImportanceOptions { shots: 0, max_docs: 3, ..Default::default() }).unwrap();
    assert_eq!(quirk.len(), 3);
    assert_eq!((quirk[1].context.as_str(), quirk[1].continuation.as_str()), ("Question: Q1?\nAnswer:", "y"));
    let spaced = importance_prompts(&t, &ImportanceOptions { shots: 0, leading_space: true, ..Default::default() }).unwrap();
    assert_eq!(spaced[1].continuation, " y");
    let k1 = importance_prompts(&t, &ImportanceOptions { shots: 1, exclude_query: true, ..Default::default() }).unwrap();
    for (i, p) in k1.iter().enumerate() {
        assert!(p.context.ends_with(&format!("Question: Q{i}?\nAnswer:")));
        assert!(p.context.contains(" y\n\nQuestion: "), "demonstrations keep their space: {:?}", p.context);
        assert!(!p.context.starts_with(&format!("Question: Q{i}?")), "query excluded from its own demos");
    }
    let mut buf = Vec::new();
    headroom::tasks::prompt::write_jsonl(&quirk, &mut buf).unwrap();
    let first: Value = serde_json::from_str(std::str::from_utf8(&buf).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first, json!({"context": "Question: Q0?\nAnswer:", "continuation": "y"}));
}

/// The fetched data, when present: the first documents render as the templates say.
#[test]
fn fetched_documents_render() {
    let Some(data) = common_data() else { return };
    let mut o = LoadOptions::new(data);
    o.need_pool = false;
    let copa = tasks::load("copa", &{
        let mut o = o.clone();
        o.split = headroom::tasks::SplitChoice::LeaveOneOut;
        o
    })
    .unwrap();
    assert_eq!(copa.eval.len(), 100);
    assert_eq!(copa.eval[0].query, "The man turned on the faucet therefore");
    assert_eq!(copa.eval[0].choices[1].continuation, " water flowed from the spout.");
    let arc = tasks::load("arc_easy", &o).unwrap();
    assert_eq!(arc.eval.len(), 2376, "ARC-Easy test split");
    assert_eq!(arc.eval[0].query, "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:");
    let wg = tasks::load("winogrande", &o).unwrap();
    assert_eq!(wg.eval[0].choices[0].query, "Sarah was a much better surgeon than Maria so Sarah");
    assert_eq!(wg.eval[0].choices[0].continuation, " always got the easier cases.");
    let hs = tasks::load("hellaswag", &o).unwrap();
    assert_eq!(hs.eval[0].query, "Roof shingle removal: A man is sitting on a roof. He");
    let cb = tasks::load("cb", &LoadOptions { need_pool: true, ..o.clone() }).unwrap();
    assert_eq!(cb.split.mode, SplitMode::Holdout);
    assert_eq!(cb.eval.len() + cb.pool.len(), 56);
    assert_eq!(cb.split.pool_indices.len(), cb.pool.len());
}

fn common_data() -> Option<PathBuf> {
    common::task_data()
}
