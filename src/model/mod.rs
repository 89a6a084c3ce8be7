//! Model runtime: one shared set of components (one file each, re-exported by [`blocks`]), one
//! file per family, masks.
//!
//! A [`Model`] is the same structure for every family: embeddings, a stack of [`Block`]s, an
//! [`LmHead`]. Family files only read their config and map their weight names onto it.

pub mod activation;
pub mod attention;
pub mod backward;
pub mod block;
pub mod blocks;
pub mod embeddings;
pub mod head;
pub mod layout;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod rope;
pub mod gpt2;
pub mod llama;
pub mod mask;
pub mod neox;
pub mod opt;
pub mod rope_config;
pub mod weights;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;

pub use blocks::{Activation, AttnActs, Block, Embeddings, LayerCapture, Layout, LmHead, MlpActs, NormKind, Residual, RopeStyle, TreeRow};
pub use backward::{Activations, GateGrads, Target};
pub use blocks::BlockActs;
pub use mask::Mask;

use crate::formats::gguf::GgufFile;
use crate::formats::hf::{ConfigJson, SafetensorsWeights};
use weights::WeightSource;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Opt,
    Gpt2,
    NeoX,
    /// Llama, Mistral, Qwen2, SmolLM2.
    Llama,
}

/// What `headroom inspect` prints: the architecture as loaded.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub family: Family,
    /// `model_type` from config.json or `general.architecture` from GGUF.
    pub architecture: String,
    pub source: String,
    /// "hf" or "gguf".
    pub format: String,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub n_params: usize,
    pub context_length: usize,
    /// Storage dtypes on disk and how many tensors have each.
    pub weight_dtypes: BTreeMap<String, usize>,
    pub compute_dtype: String,
    pub norm: NormKind,
    pub activation: Activation,
    pub residual: Residual,
    pub rope: Option<RopeInfo>,
    pub tied_embeddings: bool,
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Loud notes from reading the config: defaults assumed for missing number-changing fields,
    /// fields headroom did not read (also printed to stderr when loading).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config_notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RopeInfo {
    pub style: RopeStyle,
    pub rotary_dim: usize,
    pub theta: f64,
}

/// What [`Model::forward_layers`] calls after each block: (layer, its activation record, its
/// head gate `[H]` or None when all heads are kept).
pub type OnLayer<'a> = dyn FnMut(usize, BlockActs, Option<&Tensor>) -> Result<()> + 'a;

/// Which captures a forward pass records, and what it recorded (one entry per layer).
#[derive(Clone, Debug, Default)]
pub struct Capture {
    pub layers: Vec<LayerCapture>,
}

impl Capture {
    /// Record attention probabilities and/or per-head outputs in every layer.
    pub fn new(n_layers: usize, attn_probs: bool, head_outputs: bool) -> Self {
        let layer = LayerCapture { record_attn_probs: attn_probs, record_head_outputs: head_outputs, ..Default::default() };
        Self { layers: vec![layer; n_layers] }
    }
}

pub struct Model {
    pub info: ModelInfo,
    pub embed: Embeddings,
    pub blocks: Vec<Block>,
    pub head: LmHead,
    pub device: Device,
}

impl Model {
    /// Loads a Hugging Face folder (config.json + safetensors, or a PyTorch `pytorch_model.bin`
    /// checkpoint when there are no safetensors; safetensors win when both are present, as in
    /// transformers) or a GGUF file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if path.is_dir() {
            let cfg = ConfigJson::open(&path.join("config.json"))?;
            let has_st = path.join("model.safetensors").exists() || path.join("model.safetensors.index.json").exists();
            let (st, pt);
            let (ws, dtypes): (&dyn WeightSource, _) = if !has_st && crate::formats::pth::present(path) {
                pt = crate::formats::pth::PthWeights::open(path)?;
                (&pt, pt.dtype_summary())
            } else {
                st = SafetensorsWeights::open(path)?;
                (&st, st.dtype_summary())
            };
            let model_type = cfg.str("model_type")?.to_string();
            let mut model = match model_type.as_str() {
                "opt" => opt::from_hf(&cfg, ws, device),
                "gpt2" => gpt2::from_hf(&cfg, ws, device),
                "gpt_neox" => neox::from_hf(&cfg, ws, device),
                "llama" | "mistral" | "qwen2" => llama::from_hf(&cfg, ws, device),
                other => bail!(
                    "{}: unsupported model_type `{other}` (supported: opt, gpt2, gpt_neox, llama, mistral, qwen2)",
                    cfg.path.display()
                ),
            }
            .with_context(|| format!("loading {}", path.display()))?;
            model.info.weight_dtypes = dtypes;
            if !has_st && crate::formats::pth::present(path) {
                model.info.format = "hf-pytorch-bin".to_string();
            }
            Ok(model)
        } else if path.is_file() {
            let gguf = GgufFile::open(path)?;
            llama::from_gguf(&gguf, device).with_context(|| format!("loading {}", path.display()))
        } else {
            bail!("{}: no such file or folder (expected a Hugging Face model folder or a .gguf file)", path.display())
        }
    }

    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    /// A copy computing in another dtype (f64 for finite-difference checks).
    pub fn to_dtype(&self, dt: candle_core::DType) -> Result<Self> {
        Ok(Self {
            info: ModelInfo { compute_dtype: format!("{dt:?}").to_lowercase(), ..self.info.clone() },
            embed: self.embed.to_dtype(dt)?,
            blocks: self.blocks.iter().map(|b| b.to_dtype(dt)).collect::<Result<_>>()?,
            head: self.head.to_dtype(dt)?,
            device: self.device.clone(),
        })
    }
    pub fn n_heads(&self) -> usize {
        self.info.n_heads
    }
    /// A mask that keeps everything.
    pub fn full_mask(&self) -> Mask {
        Mask::ones(self.n_layers(), self.n_heads())
    }

    /// Right-pads sequences with id 0 into `[B, T]` u32 (padding is harmless: attention is causal).
    pub fn batch_ids(&self, seqs: &[Vec<u32>]) -> Result<Tensor> {
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if t == 0 {
            bail!("empty batch: every sequence has no tokens");
        }
        let vocab = self.info.vocab_size as u32;
        let mut flat = Vec::with_capacity(seqs.len() * t);
        for s in seqs {
            if let Some(bad) = s.iter().find(|&&id| id >= vocab) {
                bail!("token id {bad} is outside the model's vocabulary of {vocab}");
            }
            flat.extend_from_slice(s);
            flat.resize(flat.len() + t - s.len(), 0);
        }
        Ok(Tensor::from_vec(flat, (seqs.len(), t), &self.device)?)
    }

    /// ids `[B, T]` -> residual stream after the last block `[B, T, D]` (before the final norm).
    pub fn forward_hidden(&self, ids: &Tensor, mask: Option<&Mask>, capture: Option<&mut Capture>) -> Result<Tensor> {
        self.forward_hidden_with(ids, &Layout::Causal, mask, capture)
    }

    /// [`Model::forward_hidden`] with explicit positions and visibility (e.g. a shared context
    /// with one branch per answer option, [`Layout::tree`]).
    pub fn forward_hidden_with(&self, ids: &Tensor, layout: &Layout, mask: Option<&Mask>, mut capture: Option<&mut Capture>) -> Result<Tensor> {
        self.forward_layers(ids, layout, mask, false, &mut |l, acts, head_gate| match capture.as_deref_mut().and_then(|c| c.layers.get_mut(l)) {
            Some(c) => c.record(&self.blocks[l], &acts, head_gate),
            None => Ok(()),
        })
    }

    /// The one layer loop (forward, capture, the gradient pass and induction all use it):
    /// ids `[B, T]` -> residual stream after the last block `[B, T, D]`, each block run by
    /// [`Block::run`]. `on_layer(l, acts, head_gate)` receives block l's activation record as
    /// soon as it is made and decides what to keep; dropping it keeps one layer's activations
    /// alive at a time. `keep_removed_ffn` computes FFNs whose gate is 0 (for their gradient).
    pub fn forward_layers(
        &self,
        ids: &Tensor,
        layout: &Layout,
        mask: Option<&Mask>,
        keep_removed_ffn: bool,
        on_layer: &mut OnLayer<'_>,
    ) -> Result<Tensor> {
        let gates = self.head_gates(mask)?;
        let mut x = self.embed.forward(ids, layout)?;
        for (l, block) in self.blocks.iter().enumerate() {
            let (y, acts) = block.run(&x, layout, gates[l].as_ref(), self.ffn_gate(mask, l), keep_removed_ffn)?;
            on_layer(l, acts, gates[l].as_ref())?;
            x = y;
        }
        Ok(x)
    }

    /// Per layer, the head gate tensor `[H]`, or None when the mask keeps every head of that
    /// layer (the gate multiply is skipped, not done with ones). Validates the mask's shape.
    pub fn head_gates(&self, mask: Option<&Mask>) -> Result<Vec<Option<Tensor>>> {
        if let Some(m) = mask {
            m.validate(self.n_layers(), self.n_heads())?;
        }
        (0..self.n_layers())
            .map(|l| match mask {
                Some(m) if !m.layer_heads_all_kept(l) => blocks::gate_tensor(&m.heads[l], &self.device).map(Some),
                _ => Ok(None),
            })
            .collect()
    }

    /// Layer l's FFN gate (1 without a mask).
    pub fn ffn_gate(&self, mask: Option<&Mask>, l: usize) -> f32 {
        mask.map_or(1.0, |m| m.ffns[l])
    }

    /// hidden `[..., D]` -> logits `[..., V]` (final norm, projection, unembedding).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.head.forward(hidden)
    }

    /// ids `[B, T]` -> logits `[B, T, V]`.
    pub fn forward(&self, ids: &Tensor, mask: Option<&Mask>) -> Result<Tensor> {
        self.logits(&self.forward_hidden(ids, mask, None)?)
    }

    /// Log-probabilities of the next token after `ids` (length V), from the last position only.
    pub fn next_token_log_probs(&self, ids: &[u32], mask: Option<&Mask>) -> Result<Vec<f32>> {
        let hidden = self.forward_hidden(&self.batch_ids(&[ids.to_vec()])?, mask, None)?; // [1, T, D]
        let last = hidden.get(0)?.get(ids.len() - 1)?; // [D]
        let logits = self.logits(&last.unsqueeze(0)?)?; // [1, V]
        Ok(log_softmax_last_dim(&logits)?.flatten_all()?.to_vec1()?)
    }

    /// Negative log-likelihood of each token given the ones before it: entry t is
    /// `-log p(ids[t+1] | ids[..=t])`, so the result has T - 1 entries.
    pub fn token_nll(&self, ids: &[u32], mask: Option<&Mask>) -> Result<Vec<f32>> {
        if ids.len() < 2 {
            bail!("need at least 2 tokens to score a continuation, got {}", ids.len());
        }
        let logits = self.forward(&self.batch_ids(&[ids.to_vec()])?, mask)?.get(0)?; // [T, V]
        let lp = log_softmax_last_dim(&logits.narrow(0, 0, ids.len() - 1)?)?; // [T-1, V]
        let targets = Tensor::from_slice(&ids[1..], ids.len() - 1, &self.device)?;
        let picked = lp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?; // [T-1]
        Ok(picked.neg()?.to_vec1()?)
    }
}

/// `x - logsumexp(x)` over the last dim, `[..., V]`.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(candle_core::D::Minus1)?;
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(candle_core::D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

// ---- dtype conversion (f64 copies of a model make exact finite-difference checks possible) ----

pub(crate) fn conv(t: &Tensor, dt: candle_core::DType) -> Result<Tensor> {
    Ok(t.to_dtype(dt)?)
}
pub(crate) fn conv_opt(t: &Option<Tensor>, dt: candle_core::DType) -> Result<Option<Tensor>> {
    t.as_ref().map(|t| conv(t, dt)).transpose()
}

/// Everything a family file provides beyond the weights themselves.
pub(crate) struct Parts {
    pub family: Family,
    pub architecture: String,
    pub format: &'static str,
    pub source: String,
    pub embed: Embeddings,
    pub blocks: Vec<Block>,
    pub head: LmHead,
    pub context_length: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl Model {
    /// Builds a model and derives its [`ModelInfo`] from the assembled blocks.
    pub(crate) fn assemble(p: Parts, device: &Device) -> Result<Self> {
        let first = p.blocks.first().context("a model needs at least one layer")?;
        let attn = &first.attn;
        let info = ModelInfo {
            family: p.family,
            architecture: p.architecture,
            source: p.source,
            format: p.format.to_string(),
            n_layers: p.blocks.len(),
            n_heads: attn.n_heads,
            n_kv_heads: attn.n_kv_heads,
            head_dim: attn.head_dim,
            hidden: attn.o.out_features(),
            ffn_dim: first.mlp.width(),
            vocab_size: p.head.unembed.dims()[0],
            n_params: count_params(&p.embed, &p.blocks, &p.head),
            context_length: p.context_length,
            weight_dtypes: BTreeMap::new(),
            compute_dtype: "f32".into(),
            norm: first.attn_norm.kind,
            activation: first.mlp.activation(),
            residual: first.residual,
            rope: attn.rope.as_ref().map(|r| RopeInfo { style: r.style, rotary_dim: r.rotary_dim, theta: r.theta }),
            tied_embeddings: p.head.tied,
            sliding_window: attn.sliding_window,
            bos_token_id: p.bos_token_id,
            eos_token_id: p.eos_token_id,
            config_notes: Vec::new(),
        };
        if p.embed.vocab_size() != info.vocab_size {
            bail!(
                "{}: token embedding has {} rows but the unembedding has {}",
                info.source,
                p.embed.vocab_size(),
                info.vocab_size
            );
        }
        Ok(Self { info, embed: p.embed, blocks: p.blocks, head: p.head, device: device.clone() })
    }
}

/// Head counts must divide the hidden size (when no explicit head_dim is given) and KV heads
/// must divide query heads.
pub(crate) fn check_heads(origin: &str, d: usize, n_heads: usize, n_kv: usize) -> Result<()> {
    if n_heads == 0 || !d.is_multiple_of(n_heads) {
        bail!("{origin}: hidden size {d} is not a multiple of the {n_heads} attention heads");
    }
    if n_kv == 0 || !n_heads.is_multiple_of(n_kv) {
        bail!("{origin}: {n_heads} attention heads are not a multiple of {n_kv} key/value heads");
    }
    Ok(())
}

/// Finds which of several HF name prefixes a checkpoint uses (e.g. `model.decoder.` for
/// OPTForCausalLM, `decoder.` for OPTModel), by probing for one tensor.
pub(crate) fn find_prefix(ws: &dyn WeightSource, candidates: &[&str], probe: &str) -> Result<String> {
    for c in candidates {
        if ws.contains(&format!("{c}{probe}")) {
            return Ok(c.to_string());
        }
    }
    bail!(
        "{}: no tensor `{probe}` under any expected prefix ({}); is this the right model family?",
        ws.origin(),
        candidates.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
    )
}

/// Loaders shared by the family files.
pub(crate) struct Loader<'a> {
    pub ws: &'a dyn WeightSource,
    pub device: &'a Device,
}

impl Loader<'_> {
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.ws.load_f32(name, shape, self.device)
    }
    /// `{prefix}.weight` `[out, in]` and, if `bias`, `{prefix}.bias` `[out]`.
    pub fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<blocks::Linear> {
        let w = self.tensor(&format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias { Some(self.tensor(&format!("{prefix}.bias"), &[out])?) } else { None };
        Ok(blocks::Linear::new(w, b))
    }
    /// `{prefix}.weight` `[d]` (+ `{prefix}.bias` for LayerNorm with bias).
    pub fn norm(&self, prefix: &str, kind: NormKind, d: usize, eps: f64, bias: bool) -> Result<blocks::Norm> {
        let weight = self.tensor(&format!("{prefix}.weight"), &[d])?;
        let bias = if bias { Some(self.tensor(&format!("{prefix}.bias"), &[d])?) } else { None };
        Ok(blocks::Norm { kind, weight, bias, eps })
    }
}

/// Total parameters, counting a tied unembedding once.
pub(crate) fn count_params(embed: &Embeddings, blocks: &[Block], head: &LmHead) -> usize {
    let mut n = embed.tokens.elem_count();
    if let Some((p, _)) = &embed.positions {
        n += p.elem_count();
    }
    n += embed.project_in.as_ref().map_or(0, |p| p.n_params());
    n += blocks.iter().map(|b| b.n_params()).sum::<usize>();
    n += head.final_norm.as_ref().map_or(0, |x| x.n_params());
    n += head.project_out.as_ref().map_or(0, |p| p.n_params());
    if !head.tied {
        n += head.unembed.elem_count();
    }
    n
}

/// Mean NLL over the first and the second copy of a random token sequence shown twice.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RepeatNll {
    pub first: f64,
    pub second: f64,
}

/// In-context copying check: `n` random tokens (ids from the middle of the vocabulary, seeded)
/// repeated twice; the NLL of the second copy collapses when the model has induction heads.
/// The first token of the first copy has no prediction, so the first mean covers n - 1 tokens.
pub fn repeated_sequence_nll(model: &Model, n: usize, seed: u64) -> Result<RepeatNll> {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    if n < 2 || 2 * n > model.info.context_length {
        bail!("sequence length {n} must be at least 2 and fit twice in the context of {}", model.info.context_length);
    }
    let v = model.info.vocab_size as u32;
    let (lo, hi) = (v / 10, v - v / 10); // skip special/byte tokens at the start and rare ones at the end
    let mut rng = StdRng::seed_from_u64(seed);
    let seq: Vec<u32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    let ids: Vec<u32> = seq.iter().chain(seq.iter()).copied().collect();
    let nll = model.token_nll(&ids, None)?; // entry t scores ids[t + 1]
    let mean = |xs: &[f32]| xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
    Ok(RepeatNll { first: mean(&nll[..n - 1]), second: mean(&nll[n - 1..]) })
}
