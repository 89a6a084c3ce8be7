//! bf16 against f32 on the real default model (SmolLM2-135M-Instruct, GGUF Q4_1, after
//! `headroom fetch --data`): what a user of `--dtype bf16` gets in importance rankings and
//! task accuracy. Kept small for CI (a few COPA prompts and documents); the full COPA
//! validation set was run by hand for docs/precision.md.

mod common;

use std::path::Path;

use headroom::compare::spearman;
use headroom::eval::{evaluate, EvalConfig};
use headroom::importance::{accumulate, tokenize_prompts, ImportanceOptions, Normalize};
use headroom::model::{ComputeDtype, LoadOptions, Model, Placement, WeightsMode};
use headroom::tasks::{self, prompt, SplitChoice};
use headroom::tokenizer::Tokenizer;

fn load(path: &Path, dtype: ComputeDtype) -> Model {
    let opts = LoadOptions { dtype, weights: WeightsMode::Resident, placement: Placement::cpu() };
    Model::load_with(path, &opts).unwrap()
}

/// Importance of every head on 8 COPA 0-shot prompts (the authors' per-token |dot| sums), in
/// f32 and in bf16: the two head rankings must agree (Spearman >= 0.99).
#[test]
fn importance_rankings_agree_between_bf16_and_f32() {
    let (Some(path), Some(data)) = (common::default_model(), common::task_data()) else { return };
    let tok = Tokenizer::for_model(&path).unwrap();
    let task = tasks::load("copa", &tasks::LoadOptions::new(data)).unwrap();
    let opts = prompt::ImportanceOptions { shots: 0, max_docs: 8, seed: 1234, leading_space: false, exclude_query: false };
    let prompts = prompt::importance_prompts(&task, &opts).unwrap();
    let (tp, _) = tokenize_prompts(&tok, &prompts, 2048).unwrap();
    let scores = |dtype| {
        let m = load(&path, dtype);
        let o = ImportanceOptions { batch_size: 4, ..Default::default() };
        let (sums, _) = accumulate(&m, &tp, &o, &mut |_, _| {}).unwrap();
        sums.scores(Normalize::Authors)
    };
    let (a, b) = (scores(ComputeDtype::F32), scores(ComputeDtype::Bf16));
    let heads = |s: &headroom::importance::Scores| s.heads.concat();
    let rho = spearman(&heads(&a), &heads(&b)).unwrap().rho;
    let rho_ffn = spearman(&a.ffns, &b.ffns).unwrap().rho;
    eprintln!("{} COPA prompts: Spearman bf16 vs f32 over {} heads {rho:.4}, over {} FFNs {rho_ffn:.4}", tp.len(), heads(&a).len(), a.ffns.len());
    assert!(rho >= 0.99, "head rankings in bf16 and f32 disagree: Spearman {rho}");
}

/// COPA 0-shot on the first 24 documents of the seeded order: bf16 accuracy equals f32's or
/// differs by one example; the largest per-option log-likelihood difference is printed.
#[test]
fn copa_zero_shot_accuracy_agrees_between_bf16_and_f32() {
    let (Some(path), Some(data)) = (common::default_model(), common::task_data()) else { return };
    let tok = Tokenizer::for_model(&path).unwrap();
    let mut o = tasks::LoadOptions::new(data);
    o.split = SplitChoice::LeaveOneOut; // all 100 validation documents (0-shot needs no pool)
    let task = tasks::load("copa", &o).unwrap();
    let cfg = EvalConfig { limit: Some(24), ..Default::default() };
    let run = |dtype| evaluate(&load(&path, dtype), &tok, &task, &cfg, None, &mut |_| {}).unwrap();
    let (a, b) = (run(ComputeDtype::F32), run(ComputeDtype::Bf16));
    let n = a.summary.n;
    let correct = |o: &headroom::eval::EvalOutput| o.records.iter().map(|r| r.acc).sum::<f64>().round() as i64;
    let (ca, cb) = (correct(&a), correct(&b));
    let mut largest = (0.0f64, 0usize);
    for (ra, rb) in a.records.iter().zip(&b.records) {
        assert_eq!(ra.doc, rb.doc);
        for (x, y) in ra.ll.iter().zip(&rb.ll) {
            if (x - y).abs() > largest.0 {
                largest = ((x - y).abs(), ra.doc);
            }
        }
    }
    eprintln!(
        "COPA 0-shot, {n} documents: f32 {ca}/{n} correct, bf16 {cb}/{n}; largest per-option log-likelihood difference {:.4} (document {})",
        largest.0, largest.1
    );
    assert!((ca - cb).abs() <= 1, "bf16 accuracy {cb}/{n} vs f32 {ca}/{n}");
    assert!(largest.0.is_finite());
}
