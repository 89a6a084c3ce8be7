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
use headroom::model::{Mask, Model};

/// `cpu`, `cuda` or `cuda:N`.
pub fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s.strip_prefix("cuda:").map_or(Ok(0), |n| n.parse::<usize>()).context("bad CUDA ordinal")?;
            Device::new_cuda(ordinal)
                .with_context(|| format!("cannot open CUDA device {ordinal} (was headroom built with --features cuda?)"))
        }
        other => bail!("unknown device `{other}` (expected cpu, cuda or cuda:N)"),
    }
}

/// Resolves `--model` (a path or `default`) and loads it, saying what it loaded.
pub fn load_model(spec: &str, device: &Device) -> Result<(PathBuf, Model)> {
    let path = assets::resolve_model(Some(spec), &assets::cache_dir()?)?;
    let t = std::time::Instant::now();
    let model = Model::load(&path, device)?;
    eprintln!("loaded {} in {:.1}s", path.display(), t.elapsed().as_secs_f64());
    Ok((path, model))
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
