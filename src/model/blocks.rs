//! The one shared set of components every family is assembled from, one file per component
//! (layout, linear, norm, activation, mlp, rope, attention, block, embeddings, head), each with
//! its forward, its activation-keeping forward and its backward side by side. This module
//! re-exports them under their historical path `model::blocks`.
//!
//! They compute in the model's compute dtype (f32 by default on the CPU, where candle's bf16 is
//! slower: it converts per matmul); in bf16/f16 the precision-sensitive ops run in f32 as
//! transformers does (docs/precision.md, [`super::wide_dtype`]).

use anyhow::Result;
use candle_core::{Device, Tensor};

pub use super::activation::Activation;
pub use super::attention::{softmax_last_dim, Attention, AttnActs};
pub use super::block::{Block, BlockActs, BlockGrads, Keep, LayerCapture, Residual};
pub use super::embeddings::Embeddings;
pub use super::head::LmHead;
pub use super::layout::{causal_mask, Layout, TreeRow};
pub use super::linear::Linear;
pub use super::mlp::{Mlp, MlpActs};
pub use super::norm::{Norm, NormKind};
pub use super::rope::{Rope, RopeStyle};

/// A tensor of gates on `device`.
pub fn gate_tensor(values: &[f32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(values, values.len(), device)?)
}
