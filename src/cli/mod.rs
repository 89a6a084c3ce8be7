//! One file per subcommand: an `Args` struct (each flag documented where it is defined) and a
//! `run` that calls one library stage and prints or writes its result.

pub mod compare;
pub mod demo;
pub mod eval;
pub mod fetch;
pub mod importance;
pub mod induction;
pub mod induction_ablate;
pub mod inspect;
pub mod make_checkpoint;
pub mod merge;
pub mod next;
pub mod prune;
pub mod prompts;
pub mod report;
pub mod tasks;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use headroom::assets;
use headroom::model::{ComputeDtype, LoadOptions, Mask, Model, Placement, WeightsMode};

/// The global `--device`, `--dtype` and `--weights`: how every command that runs a model loads it.
pub struct Runtime {
    pub load: LoadOptions,
}

impl Runtime {
    pub fn new(device: &str, dtype: &str, weights: &str) -> Result<Self> {
        let load = LoadOptions {
            dtype: ComputeDtype::parse(dtype).context("--dtype")?,
            weights: WeightsMode::parse(weights).context("--weights")?,
            placement: Placement::parse(device)?,
        };
        // A dtype a device cannot compute in (bf16 on a GPU older than Ampere, say) is refused
        // here by a tiny matmul probe, rather than failing an hour into a run.
        if let Some(dt) = match load.dtype {
            ComputeDtype::Auto | ComputeDtype::F32 => None,
            ComputeDtype::Bf16 => Some(candle_core::DType::BF16),
            ComputeDtype::F16 => Some(candle_core::DType::F16),
        } {
            for d in &load.placement.devices {
                let probe = || -> candle_core::Result<candle_core::Tensor> {
                    let a = candle_core::Tensor::ones((2, 2), dt, d)?;
                    a.matmul(&a)?.to_dtype(candle_core::DType::F32)
                };
                if let Err(e) = probe() {
                    bail!("--dtype {dtype}: device {d:?} cannot compute in {dt:?} ({e})");
                }
            }
        }
        Ok(Self { load })
    }
    /// The input device (the first of the placement).
    pub fn device(&self) -> &Device {
        self.load.placement.first()
    }
}

/// Resolves `--model` (a path or `default`) and loads it, saying what it loaded and how.
pub fn load_model(spec: &str, rt: &Runtime) -> Result<(PathBuf, Model)> {
    let path = assets::resolve_model(Some(spec), &assets::cache_dir()?)?;
    let t = std::time::Instant::now();
    let model = Model::load_with(&path, &rt.load)?;
    eprintln!(
        "loaded {} in {:.1}s ({}, {} weights, on {})",
        path.display(),
        t.elapsed().as_secs_f64(),
        model.info.compute_dtype,
        model.info.weights,
        model.info.placement
    );
    Ok((path, model))
}

/// After a stage: how much of the time went to materialising streamed blocks.
pub fn report_streaming(model: &Model) {
    if let Some(s) = model.blocks.stream_stats() {
        eprintln!("{}", s.summary());
    }
}

/// Reads `--mask FILE` and checks it against the model.
pub fn load_mask(path: Option<&PathBuf>, model: &Model) -> Result<Option<Mask>> {
    let Some(p) = path else { return Ok(None) };
    let mask = Mask::from_json_file(p)?;
    mask.validate(model.n_layers(), model.n_heads()).with_context(|| format!("mask {}", p.display()))?;
    Ok(Some(mask))
}

/// Token ids sorted by descending log-probability.
pub fn ranked(log_probs: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..log_probs.len()).collect();
    order.sort_by(|&a, &b| log_probs[b].total_cmp(&log_probs[a]));
    order
}
