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
pub mod kernels;
pub mod layout;
pub mod linear;
pub mod load;
pub mod mlp;
pub mod norm;
pub mod rope;
pub mod gpt2;
pub mod llama;
pub mod mask;
pub mod neox;
pub mod opt;
pub mod rope_config;
pub mod stack;
pub mod weights;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

pub use blocks::{Activation, AttnActs, Block, Embeddings, Keep, LayerCapture, Layout, LmHead, MlpActs, NormKind, Residual, RopeStyle, TreeRow};
pub use backward::{Activations, GateGrads, GradInput, Target};
pub use blocks::BlockActs;
pub use mask::Mask;
pub use load::{ComputeDtype, LoadOptions, Placement, WeightsMode};
pub use stack::{BlockRef, Stack, StreamStats};

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
    /// "resident" or "stream" (`--weights`, resolved).
    pub weights: String,
    /// The devices the layers are placed on (`--device`), e.g. "cpu" or "cuda:0,cuda:1".
    pub placement: String,
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

/// What [`Model::forward_layers`] calls after each block: (layer, the block, its activation
/// record, its head gate `[H]` or None when all heads are kept).
pub type OnLayer<'a> = dyn FnMut(usize, &Block, BlockActs, Option<&Tensor>) -> Result<()> + 'a;

/// [`Model::forward_layers_group`]'s callback: (input index, layer, block, record, head gate).
pub type OnGroupLayer<'a> = dyn FnMut(usize, usize, &Block, BlockActs, Option<&Tensor>) -> Result<()> + 'a;

/// One input of a group pass: ids `[B, T]`, its layout, its mask.
#[derive(Clone, Copy)]
pub struct PassInput<'a> {
    pub ids: &'a Tensor,
    pub layout: &'a Layout,
    pub mask: Option<&'a Mask>,
}

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
    /// On the first device of the placement.
    pub embed: Embeddings,
    pub blocks: Stack,
    /// On the last layer's device.
    pub head: LmHead,
    /// The input device (the first of the placement): where ids and embeddings live.
    pub device: Device,
}

impl Model {
    /// Loads a Hugging Face folder (config.json + safetensors, or a PyTorch `pytorch_model.bin`
    /// checkpoint when there are no safetensors; safetensors win when both are present, as in
    /// transformers) or a GGUF file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with(path, &LoadOptions::resident_f32(device))
    }

    /// [`Model::load`] with a compute dtype, resident or streamed weights, and a placement
    /// over devices (load.rs).
    pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Self> {
        if path.is_dir() {
            let cfg = ConfigJson::open(&path.join("config.json"))?;
            let has_st = path.join("model.safetensors").exists() || path.join("model.safetensors.index.json").exists();
            let pth = !has_st && crate::formats::pth::present(path);
            let (ws, dtypes): (Arc<dyn WeightSource>, _) = if pth {
                let pt = crate::formats::pth::PthWeights::open(path)?;
                let d = pt.dtype_summary();
                (Arc::new(pt), d)
            } else {
                let st = SafetensorsWeights::open(path)?;
                let d = st.dtype_summary();
                (Arc::new(st), d)
            };
            let mut model = Self::from_config(&cfg, ws, &dtypes, opts).with_context(|| format!("loading {}", path.display()))?;
            model.info.weight_dtypes = dtypes;
            if pth {
                model.info.format = "hf-pytorch-bin".to_string();
            }
            Ok(model)
        } else if path.is_file() {
            let gguf = Arc::new(GgufFile::open(path)?);
            let ctx = LoadCtx::new(opts, &gguf.dtype_summary());
            llama::from_gguf(gguf, &ctx).with_context(|| format!("loading {}", path.display()))
        } else {
            bail!("{}: no such file or folder (expected a Hugging Face model folder or a .gguf file)", path.display())
        }
    }

    /// A model from a parsed config.json and any weight source (benches build random models of
    /// real shapes this way). `stored` lists the source's storage dtypes (for `--dtype auto`).
    pub fn from_config(cfg: &ConfigJson, ws: Arc<dyn WeightSource>, stored: &BTreeMap<String, usize>, opts: &LoadOptions) -> Result<Self> {
        let ctx = LoadCtx::new(opts, stored);
        let model_type = cfg.str("model_type")?.to_string();
        match model_type.as_str() {
            "opt" => opt::from_hf(cfg, ws, &ctx),
            "gpt2" => gpt2::from_hf(cfg, ws, &ctx),
            "gpt_neox" => neox::from_hf(cfg, ws, &ctx),
            "llama" | "mistral" | "qwen2" => llama::from_hf(cfg, ws, &ctx),
            other => bail!(
                "{}: unsupported model_type `{other}` (supported: opt, gpt2, gpt_neox, llama, mistral, qwen2)",
                cfg.path.display()
            ),
        }
    }

    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    /// A copy computing in another dtype (f64 for finite-difference checks).
    pub fn to_dtype(&self, dt: candle_core::DType) -> Result<Self> {
        Ok(Self {
            info: ModelInfo { compute_dtype: dtype_name(dt), ..self.info.clone() },
            embed: self.embed.to_dtype(dt)?,
            blocks: self.blocks.to_dtype(dt)?,
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
        let pattern = capture.as_ref().is_some_and(|c| c.layers.iter().any(|l| l.record_attn_probs));
        self.forward_layers(ids, layout, mask, Keep { removed_ffn: false, pattern }, &mut |l, block, acts, head_gate| match capture.as_deref_mut().and_then(|c| c.layers.get_mut(l)) {
            Some(c) => c.record(block, &acts, head_gate),
            None => Ok(()),
        })
    }

    /// The one layer loop for one input (forward, capture, the gradient pass and induction all
    /// use it): ids `[B, T]` -> residual stream after the last block `[B, T, D]`, each block run
    /// by [`Block::run`]. `on_layer(l, block, acts, head_gate)` receives block l's activation
    /// record as soon as it is made and decides what to keep; dropping it keeps one layer's
    /// activations alive at a time. `keep` says what the records hold beyond the output
    /// ([`Keep`]: FFNs whose gate is 0, for their gradient; the attention pattern).
    pub fn forward_layers(
        &self,
        ids: &Tensor,
        layout: &Layout,
        mask: Option<&Mask>,
        keep: Keep,
        on_layer: &mut OnLayer<'_>,
    ) -> Result<Tensor> {
        let input = PassInput { ids, layout, mask };
        let mut out = self.forward_layers_group(std::slice::from_ref(&input), keep, &mut |_, l, block, acts, g| on_layer(l, block, acts, g))?;
        out.pop().context("internal: a group of one input gave no output")
    }

    /// [`Model::forward_layers`] over several inputs, layer-major: every input goes through
    /// block l before block l + 1 runs. Resident, this is the same work in another order (the
    /// numbers are identical); streamed, each block is materialised once for the whole group
    /// instead of once per input, which is what makes streaming affordable. Memory: every
    /// input's residual stream `[B, T, D]` is alive at once. `on_layer(input, l, ...)`.
    pub fn forward_layers_group(&self, inputs: &[PassInput<'_>], keep: Keep, on_layer: &mut OnGroupLayer<'_>) -> Result<Vec<Tensor>> {
        let gates: Vec<Vec<Option<Tensor>>> = inputs.iter().map(|i| self.head_gates(i.mask)).collect::<Result<_>>()?;
        let layouts: Vec<PerDevice<Layout>> = inputs.iter().map(|i| self.layouts_per_device(i.layout)).collect::<Result<_>>()?;
        let mut xs: Vec<Tensor> = inputs.iter().map(|i| self.embed.forward(i.ids, i.layout)).collect::<Result<_>>()?;
        let order: Vec<usize> = (0..self.n_layers()).collect();
        self.blocks.for_each(&order, &mut |l, block| {
            let dev = self.blocks.device(l);
            for (k, input) in inputs.iter().enumerate() {
                // Hidden states cross to the next device at a placement boundary (no-op otherwise).
                let x_in = xs[k].to_device(dev)?;
                let g = gates[k][l].as_ref();
                let (y, acts) = block.run(&x_in, layouts[k].get(dev), g, self.ffn_gate(input.mask, l), keep)?;
                on_layer(k, l, block, acts, g)?;
                xs[k] = y;
            }
            Ok(())
        })?;
        Ok(xs)
    }

    /// Per layer, the head gate tensor `[H]`, or None when the mask keeps every head of that
    /// layer (the gate multiply is skipped, not done with ones). Validates the mask's shape.
    pub fn head_gates(&self, mask: Option<&Mask>) -> Result<Vec<Option<Tensor>>> {
        if let Some(m) = mask {
            m.validate(self.n_layers(), self.n_heads())?;
        }
        (0..self.n_layers())
            .map(|l| match mask {
                Some(m) if !m.layer_heads_all_kept(l) => blocks::gate_tensor(&m.heads[l], self.blocks.device(l)).map(Some),
                _ => Ok(None),
            })
            .collect()
    }

    /// Layer l's FFN gate (1 without a mask).
    pub fn ffn_gate(&self, mask: Option<&Mask>, l: usize) -> f32 {
        mask.map_or(1.0, |m| m.ffns[l])
    }

    /// hidden `[..., D]` -> logits `[..., V]` (final norm, projection, unembedding), on the
    /// head's device (the last layer's). The unembedding runs in the compute dtype; the logits
    /// leave in [`wide_dtype`] (f32 for bf16/f16), since everything downstream (log-softmax,
    /// log-likelihood sums, argmax, top-k) is wide.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(widen(&self.head.forward(&hidden.to_device(self.head_device())?)?)?)
    }

    /// The device of the LM head: the last layer's.
    pub fn head_device(&self) -> &Device {
        self.blocks.devices().last().unwrap_or(&self.device)
    }

    /// The layout moved to every device of the placement that is not the input device (its
    /// tensors, e.g. tree visibility masks, must live where the attention runs).
    fn layouts_per_device(&self, layout: &Layout) -> Result<PerDevice<Layout>> {
        PerDevice::build(&self.device, layout.clone(), self.blocks.devices(), |d| layout.to_device(d))
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
        let targets = Tensor::from_slice(&ids[1..], ids.len() - 1, logits.device())?;
        let picked = lp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?; // [T-1]
        Ok(picked.neg()?.to_vec1()?)
    }
}

/// One value per distinct device of a placement (e.g. a layout's tensors), found by device.
struct PerDevice<T> {
    items: Vec<(Device, T)>,
}

impl<T> PerDevice<T> {
    /// `first_value` lives on `first`; every other distinct device in `devices` gets `f(device)`.
    fn build(first: &Device, first_value: T, devices: &[Device], f: impl Fn(&Device) -> Result<T>) -> Result<Self> {
        let mut items = vec![(first.clone(), first_value)];
        for d in devices {
            if !items.iter().any(|(x, _)| x.same_device(d)) {
                items.push((d.clone(), f(d)?));
            }
        }
        Ok(Self { items })
    }
    fn get(&self, d: &Device) -> &T {
        // `build` put every device of the placement in; the first entry is the fallback.
        self.items.iter().find(|(x, _)| x.same_device(d)).map_or(&self.items[0].1, |(_, v)| v)
    }
}

/// `x - logsumexp(x)` over the last dim, `[..., V]`, in [`wide_dtype`] (f32 for bf16/f16
/// logits: the loss and log-likelihoods never run in half precision, as transformers upcasts
/// logits with `.float()` before its loss).
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if let Some(y) = kernels::log_softmax(x) {
        return y;
    }
    let x = &widen(x)?;
    let max = x.max_keepdim(candle_core::D::Minus1)?;
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(candle_core::D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

// ---- dtype conversion (f64 copies of a model make exact finite-difference checks possible) ----

/// The dtype the precision-sensitive ops run in for a compute dtype `dt` (docs/precision.md):
/// norm statistics, the attention softmax and its backward, activation functions, log-softmax
/// and the loss, and the per-token gate dots. f32 for the half types (what transformers does in
/// bf16/f16: `softmax(dtype=float32)`, RMSNorm's upcast, LayerNorm's f32 accumulation);
/// `dt` itself otherwise, so f32 runs the very same ops as before and f64 copies stay f64.
pub fn wide_dtype(dt: DType) -> DType {
    match dt {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// `t` in [`wide_dtype`] of its dtype (a cheap clone when it already is).
pub fn widen(t: &Tensor) -> candle_core::Result<Tensor> {
    t.to_dtype(wide_dtype(t.dtype()))
}

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
    pub embed: Embeddings,
    /// How to build block l; `n_layers` of them.
    pub build_block: Arc<stack::BuildBlock>,
    pub n_layers: usize,
    /// Each layer's sliding window (None: full causal attention), known without its weights.
    pub layer_windows: Vec<Option<usize>>,
    pub head: LmHead,
    pub context_length: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

/// The load options resolved against one checkpoint: the concrete dtype, the layer devices.
pub(crate) struct LoadCtx {
    pub opts: LoadOptions,
    pub dtype: DType,
}

impl LoadCtx {
    fn new(opts: &LoadOptions, stored: &BTreeMap<String, usize>) -> Self {
        let dtype = opts.dtype.resolve(opts.placement.first(), stored);
        Self { opts: opts.clone(), dtype }
    }
    /// A loader for resident tensors on `device` (embeddings on the first device, the head on
    /// the last).
    pub fn loader<'a>(&'a self, ws: &'a dyn WeightSource, device: &'a Device) -> Loader<'a> {
        Loader { ws, device, dtype: self.dtype, transient: false, read: std::cell::Cell::new(0) }
    }
    pub fn first_device(&self) -> &Device {
        self.opts.placement.first()
    }
    /// The device the LM head lives on for a model of `n_layers`: the last layer's.
    pub fn last_device(&self, n_layers: usize) -> Device {
        self.opts.placement.layer_devices(n_layers).last().cloned().unwrap_or_else(|| self.first_device().clone())
    }
}

pub(crate) fn dtype_name(dt: DType) -> String {
    format!("{dt:?}").to_lowercase()
}

impl Model {
    /// Builds a model: resolves resident vs streamed, builds (resident) or samples (streamed:
    /// layer 0 only, then dropped) the blocks, and derives [`ModelInfo`] from layer 0.
    pub(crate) fn assemble(p: Parts, ws: Arc<dyn WeightSource>, ctx: &LoadCtx) -> Result<Self> {
        if p.n_layers == 0 {
            bail!("{}: a model needs at least one layer", ws.origin());
        }
        let devices = ctx.opts.placement.layer_devices(p.n_layers);
        let dsize = ctx.dtype.size_in_bytes() as u64;
        let embed_head_params = count_params(&p.embed, &[], &p.head);
        // Layer 0 tells the architecture and the per-block size; in streamed mode it is the
        // only block built at load.
        let first = {
            let ld = ctx.loader(ws.as_ref(), &devices[0]);
            (p.build_block)(&ld, 0)?.to_dtype(ctx.dtype)?
        };
        let block_params = first.n_params();
        let resident_bytes = (embed_head_params + block_params * p.n_layers) as u64 * dsize;
        let streamed_bytes = (embed_head_params + 2 * block_params) as u64 * dsize;
        let stream = decide_streaming(ctx, &ws.origin(), resident_bytes, streamed_bytes)?;
        let attn = &first.attn;
        let info = ModelInfo {
            family: p.family,
            architecture: p.architecture,
            source: ws.origin(),
            format: p.format.to_string(),
            n_layers: p.n_layers,
            n_heads: attn.n_heads,
            n_kv_heads: attn.n_kv_heads,
            head_dim: attn.head_dim,
            hidden: attn.o.out_features(),
            ffn_dim: first.mlp.width(),
            vocab_size: p.head.unembed.dims()[0],
            n_params: embed_head_params + block_params * p.n_layers,
            context_length: p.context_length,
            weight_dtypes: BTreeMap::new(),
            compute_dtype: dtype_name(ctx.dtype),
            weights: if stream { "stream" } else { "resident" }.into(),
            placement: ctx.opts.placement.spec.clone(),
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
        let blocks = if stream {
            drop(first);
            if p.layer_windows.len() != p.n_layers {
                bail!("internal: {} sliding windows for {} layers", p.layer_windows.len(), p.n_layers);
            }
            let meta = p.layer_windows.iter().copied().map(|w| stack::LayerMeta { sliding_window: w, n_params: block_params }).collect();
            Stack::streamed(meta, devices, ws, p.build_block, ctx.dtype)
        } else {
            let mut blocks = Vec::with_capacity(p.n_layers.min(4096));
            blocks.push(first);
            for (l, dev) in devices.iter().enumerate().skip(1) {
                let ld = ctx.loader(ws.as_ref(), dev);
                blocks.push((p.build_block)(&ld, l)?.to_dtype(ctx.dtype)?);
            }
            Stack::resident(blocks, devices)
        };
        let head_device = blocks.devices().last().cloned().unwrap_or_else(|| ctx.first_device().clone());
        let head = p.head.to_device(&head_device)?;
        Ok(Self { info, embed: p.embed, blocks, head, device: ctx.first_device().clone() })
    }
}

/// Resident or streamed, from `--weights` and the memory the devices have free. Errors when
/// even streaming does not fit, saying what was needed and what was free.
fn decide_streaming(ctx: &LoadCtx, origin: &str, resident_bytes: u64, streamed_bytes: u64) -> Result<bool> {
    use load::{fmt_bytes, host_available_bytes, resident_fraction};
    let on_cpu = ctx.opts.placement.devices.iter().all(|d| d.is_cpu());
    // Free memory is known for the host; on CUDA devices the driver reports it at allocation
    // time (an out-of-memory error names the device), so `auto` stays resident there unless the
    // user asks for streaming.
    let free = if on_cpu { host_available_bytes() } else { None };
    // Even streaming needs the embeddings, the LM head and two blocks at once.
    let check_streamed_fits = |free: u64, also: &str| -> Result<()> {
        if streamed_bytes > free {
            bail!(
                "{origin}: does not fit even streamed: {} needed (embeddings, LM head and two blocks in {}), {} free{also}",
                fmt_bytes(streamed_bytes),
                dtype_name(ctx.dtype),
                fmt_bytes(free)
            );
        }
        Ok(())
    };
    match ctx.opts.weights {
        WeightsMode::Resident => Ok(false),
        WeightsMode::Stream => {
            if let Some(free) = free {
                check_streamed_fits(free, "")?;
            }
            Ok(true)
        }
        WeightsMode::Auto => {
            let Some(free) = free else { return Ok(false) };
            let frac = resident_fraction()?;
            if resident_bytes as f64 <= frac * free as f64 {
                return Ok(false);
            }
            check_streamed_fits(free, &format!(" (resident would need {})", fmt_bytes(resident_bytes)))?;
            eprintln!(
                "note: {origin}: the model needs {} resident in {}, more than {:.0}% of the {} free; streaming its blocks \
                 (--weights stream; --weights resident to override)",
                fmt_bytes(resident_bytes),
                dtype_name(ctx.dtype),
                frac * 100.0,
                fmt_bytes(free)
            );
            Ok(true)
        }
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

/// Loaders shared by the family files: tensors by name from a source, in the compute dtype,
/// on one device. A transient loader (streaming) releases each tensor's mapped pages once read.
pub struct Loader<'a> {
    pub ws: &'a dyn WeightSource,
    pub device: &'a Device,
    pub dtype: DType,
    pub transient: bool,
    /// Stored bytes read so far (streaming statistics).
    pub read: std::cell::Cell<u64>,
}

impl Loader<'_> {
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.ws.load(name, shape, self.dtype, self.device)?;
        self.read.set(self.read.get() + self.ws.stored_bytes(name));
        if self.transient {
            self.ws.release(name);
        }
        Ok(t)
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
