//! RoPE settings read from a Hugging Face `config.json`, in every schema transformers has written:
//!
//! - transformers 5: `"rope_parameters": {"rope_theta": …, "rope_type": …, "factor": …,
//!   "partial_rotary_factor": …}` and no top-level `rope_theta` (SmolLM2, Llama, Qwen2, Mistral,
//!   GPT-NeoX folders saved by `save_pretrained` today);
//! - transformers 4: top-level `rope_theta` plus `"rope_scaling": {"type" | "rope_type": …, …}`;
//!   GPT-NeoX additionally `rotary_emb_base` / `rotary_pct` (older) or `partial_rotary_factor`.
//!
//! Every place a value can be given is read; two places that give different values are an error
//! (transformers would silently prefer one of them), a missing θ is a loud note, and rope types
//! other than default / linear / llama3 (dynamic, yarn, longrope, …) are refused by name.

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};

use super::blocks::Rope;
use crate::formats::hf::ConfigJson;

/// transformers' `RotaryEmbeddingConfigMixin.default_theta`, used when no θ is given anywhere.
pub const DEFAULT_THETA: f64 = 10_000.0;

/// Keys a rope dict may carry for the types headroom implements.
const KNOWN_KEYS: &[&str] = &[
    "rope_type",
    "type",
    "rope_theta",
    "partial_rotary_factor",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
];

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `rope_type` "default" (or no rope dict at all).
    None,
    /// Every inverse frequency divided by `factor` (positions interpolated).
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent interpolation (transformers' `_compute_llama3_parameters`).
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// Fraction of each head that rotates, when the config gives one anywhere.
    pub partial_rotary_factor: Option<f64>,
}

impl RopeConfig {
    /// Inverse frequencies `[rotary_dim / 2]` after scaling, as transformers computes them.
    pub fn inv_freq(&self, rotary_dim: usize) -> Vec<f32> {
        let mut inv = Rope::default_inv_freq(self.theta, rotary_dim);
        match self.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => inv.iter_mut().for_each(|f| *f /= factor as f32),
            RopeScaling::Llama3 { factor, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: old } => {
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                for f in inv.iter_mut() {
                    let freq = *f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    *f = if wavelen < high_wavelen {
                        freq
                    } else if wavelen > low_wavelen {
                        freq / factor
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    } as f32;
                }
            }
        }
        inv
    }

    /// One line for notes and `inspect`.
    pub fn describe(&self) -> String {
        match &self.scaling {
            RopeScaling::None => format!("theta {}", self.theta),
            RopeScaling::Linear { factor } => format!("theta {}, linear scaling x{factor}", self.theta),
            RopeScaling::Llama3 { factor, .. } => format!("theta {}, llama3 scaling x{factor}", self.theta),
        }
    }
}

/// One value and where it came from (`rope_parameters.rope_theta`, `rotary_emb_base`, ...).
struct Sourced<T> {
    from: String,
    value: T,
}

/// The single value all sources agree on; sources that disagree are an error naming both.
fn agree<T: PartialEq + std::fmt::Display>(cfg: &ConfigJson, what: &str, vals: Vec<Sourced<T>>) -> Result<Option<Sourced<T>>> {
    let mut it = vals.into_iter();
    let Some(first) = it.next() else { return Ok(None) };
    for other in it {
        if other.value != first.value {
            bail!(
                "{}: the config gives two different {what}: `{}` = {} and `{}` = {} (the two config schemas \
                 disagree; fix the file so that they match or remove one)",
                cfg.path.display(),
                first.from,
                first.value,
                other.from,
                other.value
            );
        }
    }
    Ok(Some(first))
}

fn num(cfg: &ConfigJson, from: &str, v: &Value) -> Result<f64> {
    v.as_f64().ok_or_else(|| anyhow!("{}: `{from}` should be a number, found {v}", cfg.path.display()))
}

/// Reads the rope settings. `legacy_theta` / `legacy_pct`: family-specific top-level names for θ
/// and the rotary fraction (GPT-NeoX: `rotary_emb_base`, `rotary_pct`).
pub fn read(cfg: &ConfigJson, legacy_theta: &[&str], legacy_pct: &[&str]) -> Result<RopeConfig> {
    let dicts: Vec<(&str, &Map<String, Value>)> = [("rope_parameters", cfg.opt_object("rope_parameters")?), ("rope_scaling", cfg.opt_object("rope_scaling")?)]
        .into_iter()
        .filter_map(|(n, d)| d.map(|d| (n, d)))
        .collect();
    for (name, d) in &dicts {
        if let Some((k, _)) = d.iter().find(|(_, v)| v.is_object()) {
            bail!(
                "{}: `{name}.{k}` is an object: rope parameters per layer type are not supported",
                cfg.path.display()
            );
        }
    }
    // Every number given for `key`, in the dicts and at the top level (`top`).
    let numbers = |key: &str, top: &[&str]| -> Result<Vec<Sourced<f64>>> {
        let mut out = Vec::new();
        for (name, d) in &dicts {
            if let Some(v) = d.get(key).filter(|v| !v.is_null()) {
                let from = format!("{name}.{key}");
                out.push(Sourced { value: num(cfg, &from, v)?, from });
            }
        }
        for k in top {
            if let Some(x) = cfg.opt_f64(k)? {
                out.push(Sourced { from: k.to_string(), value: x });
            }
        }
        Ok(out)
    };

    let mut theta_keys = vec!["rope_theta"];
    theta_keys.extend_from_slice(legacy_theta);
    let theta = match agree(cfg, "rope thetas", numbers("rope_theta", &theta_keys)?)? {
        Some(s) => s.value,
        None => {
            cfg.note(format!(
                "no rope theta (looked for `rope_parameters.rope_theta`, {}); using transformers' default {DEFAULT_THETA}",
                theta_keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            ));
            DEFAULT_THETA
        }
    };
    if !(theta.is_finite() && theta > 1.0) {
        bail!("{}: rope theta {theta} should be a number above 1", cfg.path.display());
    }

    let mut pct_keys = vec!["partial_rotary_factor"];
    pct_keys.extend_from_slice(legacy_pct);
    let partial_rotary_factor = agree(cfg, "rotary fractions", numbers("partial_rotary_factor", &pct_keys)?)?.map(|s| s.value);
    if let Some(p) = partial_rotary_factor {
        if !(p > 0.0 && p <= 1.0) {
            bail!("{}: partial rotary factor {p} should be in (0, 1]", cfg.path.display());
        }
    }

    let mut types = Vec::new();
    for (name, d) in &dicts {
        for key in ["rope_type", "type"] {
            if let Some(v) = d.get(key).filter(|v| !v.is_null()) {
                let t = v
                    .as_str()
                    .ok_or_else(|| anyhow!("{}: `{name}.{key}` should be a string, found {v}", cfg.path.display()))?;
                types.push(Sourced { from: format!("{name}.{key}"), value: t.to_string() });
            }
        }
    }
    let kind = agree(cfg, "rope types", types)?;
    let (kind, kind_from) = match &kind {
        Some(s) => (s.value.as_str(), s.from.as_str()),
        None => ("default", ""),
    };
    let one = |key: &str, top: &[&str]| -> Result<Option<f64>> { Ok(agree(cfg, key, numbers(key, top)?)?.map(|s| s.value)) };
    let need = |key: &str| -> Result<f64> {
        let x = one(key, &[])?.ok_or_else(|| {
            anyhow!("{}: rope type `{kind}` needs `{}.{key}`, which is missing", cfg.path.display(), dicts[0].0)
        })?;
        if !(x.is_finite() && x > 0.0) {
            bail!("{}: rope `{key}` = {x} should be a positive number", cfg.path.display());
        }
        Ok(x)
    };
    let (scaling, used): (RopeScaling, &[&str]) = match kind {
        "default" => (RopeScaling::None, &["rope_type", "type", "rope_theta", "partial_rotary_factor"]),
        "linear" => (RopeScaling::Linear { factor: need("factor")? }, &["rope_type", "type", "rope_theta", "partial_rotary_factor", "factor"]),
        "llama3" => {
            let factor = need("factor")?;
            let low = need("low_freq_factor")?;
            let high = need("high_freq_factor")?;
            if high <= low {
                bail!("{}: llama3 rope high_freq_factor {high} should exceed low_freq_factor {low}", cfg.path.display());
            }
            // transformers gives a top-level `original_max_position_embeddings` priority and
            // falls back to `max_position_embeddings`.
            let old = match one("original_max_position_embeddings", &["original_max_position_embeddings"])? {
                Some(x) => x,
                None => {
                    let m = cfg.usize("max_position_embeddings")? as f64;
                    cfg.note(format!(
                        "llama3 rope scaling without `original_max_position_embeddings`; using max_position_embeddings {m} \
                         as transformers does"
                    ));
                    m
                }
            };
            (
                RopeScaling::Llama3 { factor, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: old },
                KNOWN_KEYS,
            )
        }
        other => bail!(
            "{}: rope type `{other}` (from `{kind_from}`) is not supported (supported: default, linear, llama3); \
             headroom would compute different numbers from transformers",
            cfg.path.display()
        ),
    };
    for (name, d) in &dicts {
        for (k, v) in d.iter() {
            if v.is_null() || used.contains(&k.as_str()) {
                continue;
            }
            if KNOWN_KEYS.contains(&k.as_str()) {
                cfg.note(format!("`{name}.{k}` = {v} is ignored for rope type `{kind}` (as transformers ignores it)"));
            } else {
                cfg.note(format!(
                    "`{name}.{k}` = {v} is not a rope parameter headroom knows; ignored (if it changes the model, \
                     headroom's numbers will differ from transformers')"
                ));
            }
        }
    }
    Ok(RopeConfig { theta, scaling, partial_rotary_factor })
}
