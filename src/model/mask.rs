//! Head and FFN gates, the paper's masks (spec 2.3): `heads[l][h]` multiplies head h's output in
//! layer l before the output projection; `ffns[l]` multiplies layer l's FFN branch, and 0 skips
//! that branch entirely (its norm included). 1.0 = keep, 0.0 = remove; other values are allowed
//! (gates are what importance scores differentiate).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mask {
    /// `[n_layers][n_heads]` (query heads under GQA).
    pub heads: Vec<Vec<f32>>,
    /// `[n_layers]`.
    pub ffns: Vec<f32>,
}

impl Mask {
    /// Everything kept.
    pub fn ones(n_layers: usize, n_heads: usize) -> Self {
        Self { heads: vec![vec![1.0; n_heads]; n_layers], ffns: vec![1.0; n_layers] }
    }
    pub fn n_layers(&self) -> usize {
        self.ffns.len()
    }
    pub fn n_heads(&self) -> usize {
        self.heads.first().map_or(0, |r| r.len())
    }
    /// Checks the shape against a model's `[n_layers, n_heads]` and that every gate is finite.
    pub fn validate(&self, n_layers: usize, n_heads: usize) -> Result<()> {
        if self.heads.len() != n_layers || self.ffns.len() != n_layers {
            bail!(
                "mask has {} head rows and {} FFN gates; the model has {n_layers} layers",
                self.heads.len(),
                self.ffns.len()
            );
        }
        for (l, row) in self.heads.iter().enumerate() {
            if row.len() != n_heads {
                bail!("mask row for layer {l} has {} head gates; the model has {n_heads} heads", row.len());
            }
        }
        if let Some(x) = self.heads.iter().flatten().chain(self.ffns.iter()).find(|x| !x.is_finite()) {
            bail!("mask contains a non-finite gate ({x})");
        }
        Ok(())
    }
    /// Reads a mask JSON file `{"heads": [[..]..], "ffns": [..]}`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read mask file {}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: line {}, column {}: {e} (expected {{\"heads\": [[gate per head] per layer], \"ffns\": [gate per layer]}})",
                path.display(),
                e.line(),
                e.column()
            )
        })
    }
    /// Whether layer l's heads are all exactly 1 (lets the forward skip the multiply).
    pub fn layer_heads_all_kept(&self, l: usize) -> bool {
        self.heads[l].iter().all(|&g| g == 1.0)
    }
    pub fn heads_removed(&self) -> usize {
        self.heads.iter().flatten().filter(|&&g| g == 0.0).count()
    }
    pub fn ffns_removed(&self) -> usize {
        self.ffns.iter().filter(|&&g| g == 0.0).count()
    }
}
