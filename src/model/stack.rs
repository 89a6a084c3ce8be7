//! The stack of decoder blocks, resident or streamed (see load.rs for the two modes).
//!
//! Every layer loop goes through [`Stack::for_each`] (forward, gradient pass, capture,
//! induction): resident blocks are visited in place; streamed blocks are materialised by a
//! second thread one step ahead of the computation, through a rendezvous channel, so at most two
//! blocks exist at a time (the one computing and the one just prepared), and the materialiser
//! never races further ahead than that.

use std::ops::Deref;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device};

use super::block::Block;
use super::weights::WeightSource;
use super::Loader;

/// Builds block `l` from a loader (which knows the source, device and dtype). Family files
/// provide one; it captures the architecture numbers and tensor names it needs.
pub type BuildBlock = dyn Fn(&Loader<'_>, usize) -> Result<Block> + Send + Sync;

/// What a layer is, known without its weights.
#[derive(Clone, Debug)]
pub struct LayerMeta {
    pub sliding_window: Option<usize>,
    pub n_params: usize,
}

/// Time and bytes spent materialising streamed blocks, against the time spent computing with
/// them (what `--weights stream` costs; printed after a run and in the benches).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StreamStats {
    pub blocks: usize,
    /// Bytes read from the checkpoint (stored format: quantized bytes for GGUF).
    pub bytes_read: u64,
    /// Wall time the materialising thread spent building blocks.
    pub materialise: Duration,
    /// Wall time the computing thread waited for a block (materialising not hidden by compute).
    pub waited: Duration,
    /// Wall time the computing thread spent running blocks.
    pub compute: Duration,
}

impl StreamStats {
    pub fn summary(&self) -> String {
        let gb = self.bytes_read as f64 / 1e9;
        let secs = self.materialise.as_secs_f64();
        let per = |d: Duration| d.as_secs_f64() / self.blocks.max(1) as f64;
        format!(
            "streamed {} blocks: {:.2} GB read and materialised in {:.1}s ({:.2} GB/s); per block {:.2}s materialising, \
             {:.2}s computing; {:.1}s of materialising not hidden behind compute",
            self.blocks,
            gb,
            secs,
            if secs > 0.0 { gb / secs } else { 0.0 },
            per(self.materialise),
            per(self.compute),
            self.waited.as_secs_f64()
        )
    }
}

enum Store {
    Resident(Vec<Block>),
    Streamed { source: Arc<dyn WeightSource>, build: Arc<BuildBlock>, dtype: DType, stats: Mutex<StreamStats> },
}

pub struct Stack {
    /// Per layer.
    meta: Vec<LayerMeta>,
    /// The device of each layer (contiguous ranges, load.rs `Placement`).
    devices: Vec<Device>,
    store: Store,
}

/// A block borrowed from a resident stack or owned after materialising.
pub enum BlockRef<'a> {
    Borrowed(&'a Block),
    Owned(Box<Block>),
}

impl Deref for BlockRef<'_> {
    type Target = Block;
    fn deref(&self) -> &Block {
        match self {
            BlockRef::Borrowed(b) => b,
            BlockRef::Owned(b) => b,
        }
    }
}

impl Stack {
    pub fn resident(blocks: Vec<Block>, devices: Vec<Device>) -> Self {
        let meta = blocks.iter().map(|b| LayerMeta { sliding_window: b.attn.sliding_window, n_params: b.n_params() }).collect();
        Self { meta, devices, store: Store::Resident(blocks) }
    }

    pub fn streamed(meta: Vec<LayerMeta>, devices: Vec<Device>, source: Arc<dyn WeightSource>, build: Arc<BuildBlock>, dtype: DType) -> Self {
        Self { meta, devices, store: Store::Streamed { source, build, dtype, stats: Mutex::new(StreamStats::default()) } }
    }

    pub fn len(&self) -> usize {
        self.meta.len()
    }
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }
    /// The dtype blocks compute in (streamed: what they are materialised in; resident: layer
    /// 0's weights).
    pub fn dtype(&self) -> DType {
        match &self.store {
            Store::Resident(b) => b.first().map_or(DType::F32, |b| b.attn.o.weight.dtype()),
            Store::Streamed { dtype, .. } => *dtype,
        }
    }
    pub fn is_streamed(&self) -> bool {
        matches!(self.store, Store::Streamed { .. })
    }
    pub fn meta(&self, l: usize) -> &LayerMeta {
        &self.meta[l]
    }
    /// The device layer `l` runs on.
    pub fn device(&self, l: usize) -> &Device {
        &self.devices[l]
    }
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }
    pub fn n_params(&self) -> usize {
        self.meta.iter().map(|m| m.n_params).sum()
    }

    /// The resident blocks (None when streamed).
    pub fn as_resident(&self) -> Option<&[Block]> {
        match &self.store {
            Store::Resident(b) => Some(b),
            Store::Streamed { .. } => None,
        }
    }
    /// Mutable resident blocks (tests that alter a weight); None when streamed.
    pub fn as_resident_mut(&mut self) -> Option<&mut Vec<Block>> {
        match &mut self.store {
            Store::Resident(b) => Some(b),
            Store::Streamed { .. } => None,
        }
    }

    /// Materialising statistics so far (None when resident).
    pub fn stream_stats(&self) -> Option<StreamStats> {
        match &self.store {
            Store::Resident(_) => None,
            Store::Streamed { stats, .. } => Some(*stats.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }

    /// Block `l` (materialised now when streamed).
    pub fn get(&self, l: usize) -> Result<BlockRef<'_>> {
        if l >= self.len() {
            bail!("layer {l} out of range (the model has {} layers)", self.len());
        }
        match &self.store {
            Store::Resident(b) => Ok(BlockRef::Borrowed(&b[l])),
            Store::Streamed { source, build, dtype, stats } => {
                let t = Instant::now();
                let (block, bytes) = materialise(source.as_ref(), build.as_ref(), *dtype, &self.devices[l], &self.meta[l], l)?;
                let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                s.blocks += 1;
                s.bytes_read += bytes;
                s.materialise += t.elapsed();
                s.waited += t.elapsed();
                Ok(BlockRef::Owned(Box::new(block)))
            }
        }
    }

    /// Calls `f(l, block)` for each layer of `order` in turn. Streamed: a second thread
    /// materialises the next block of `order` while `f` runs on the current one; an error on
    /// either side stops both and is returned.
    pub fn for_each(&self, order: &[usize], f: &mut dyn FnMut(usize, &Block) -> Result<()>) -> Result<()> {
        if let Some(&bad) = order.iter().find(|&&l| l >= self.len()) {
            bail!("layer {bad} out of range (the model has {} layers)", self.len());
        }
        let (source, build, dtype, stats) = match &self.store {
            Store::Resident(blocks) => {
                for &l in order {
                    f(l, &blocks[l])?;
                }
                return Ok(());
            }
            Store::Streamed { source, build, dtype, stats } => (source.as_ref(), build.as_ref(), *dtype, stats),
        };
        std::thread::scope(|s| -> Result<()> {
            // Rendezvous: the producer hands over block l+1 only when the consumer asks for it,
            // so at most two blocks are alive (computing, and prepared).
            let (tx, rx) = mpsc::sync_channel::<Result<(usize, Block, u64, Duration)>>(0);
            let producer = s.spawn(move || {
                for &l in order {
                    let t = Instant::now();
                    let item = materialise(source, build, dtype, &self.devices[l], &self.meta[l], l).map(|(b, n)| (l, b, n, t.elapsed()));
                    let failed = item.is_err();
                    if tx.send(item).is_err() || failed {
                        break;
                    }
                }
            });
            let mut result = Ok(());
            for _ in order {
                let t = Instant::now();
                let item = match rx.recv() {
                    Ok(item) => item,
                    Err(_) => {
                        result = Err(anyhow!("internal: the block materialising thread stopped early"));
                        break;
                    }
                };
                let waited = t.elapsed();
                let (l, block, bytes, took) = match item {
                    Ok(x) => x,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                };
                {
                    let mut st = stats.lock().unwrap_or_else(|e| e.into_inner());
                    st.blocks += 1;
                    st.bytes_read += bytes;
                    st.materialise += took;
                    st.waited += waited;
                }
                let t = Instant::now();
                let r = f(l, &block);
                stats.lock().unwrap_or_else(|e| e.into_inner()).compute += t.elapsed();
                if let Err(e) = r {
                    result = Err(e);
                    break;
                }
            }
            drop(rx); // unblocks a producer waiting to hand over a block nobody will take
            if producer.join().is_err() {
                bail!("internal: the block materialising thread panicked");
            }
            result
        })
    }

    /// The same stack computing in `dt` (resident blocks converted; streamed blocks are
    /// materialised in `dt` from now on).
    pub fn to_dtype(&self, dt: DType) -> Result<Self> {
        let store = match &self.store {
            Store::Resident(b) => Store::Resident(b.iter().map(|b| b.to_dtype(dt)).collect::<Result<_>>()?),
            Store::Streamed { source, build, .. } => {
                Store::Streamed { source: source.clone(), build: build.clone(), dtype: dt, stats: Mutex::new(StreamStats::default()) }
            }
        };
        Ok(Self { meta: self.meta.clone(), devices: self.devices.clone(), store })
    }
}

/// Builds block `l` in `dtype` on `device`, releasing the mapped pages it read; checks it
/// against the layer's metadata (a checkpoint whose layers differ in shape is an error here,
/// not a silent surprise later). Returns the block and the stored bytes read.
fn materialise(source: &dyn WeightSource, build: &BuildBlock, dtype: DType, device: &Device, meta: &LayerMeta, l: usize) -> Result<(Block, u64)> {
    let ld = Loader { ws: source, device, dtype, transient: true, read: std::cell::Cell::new(0) };
    let block = build(&ld, l)?.to_dtype(dtype)?;
    if block.n_params() != meta.n_params {
        bail!(
            "{}: layer {l} has {} parameters but layer 0 has {}; streaming needs layers of one shape (use --weights resident)",
            source.origin(),
            block.n_params(),
            meta.n_params
        );
    }
    Ok((block, ld.read.get()))
}

/// Consecutive ranges of items whose `tokens` add up to at most `max_tokens` (every range holds
/// at least one item; `max_tokens` 0 = one item per range): the groups of batches or sequences
/// that go through each streamed block together.
pub fn group_ranges(tokens: &[usize], max_tokens: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < tokens.len() {
        let mut end = start + 1;
        let mut sum = tokens[start];
        while end < tokens.len() && sum + tokens[end] <= max_tokens {
            sum += tokens[end];
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// How many tokens a group of batches may hold when streaming, given what each token keeps
/// alive across the whole pass (`bytes_per_token`: its residual stream, plus its saved block
/// inputs for a gradient pass). 0 when the blocks are resident (no grouping: one batch at a
/// time, as before). The budget is `$HEADROOM_STREAM_GROUP_MB`, else a quarter of the free host
/// memory capped at 2 GiB: more tokens per group means fewer passes over the checkpoint.
pub fn group_tokens(model: &super::Model, bytes_per_token: usize) -> usize {
    if !model.blocks.is_streamed() {
        return 0;
    }
    let budget = match std::env::var("HEADROOM_STREAM_GROUP_MB").ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(mb) => mb << 20,
        None => (super::load::host_available_bytes().unwrap_or(8 << 30) / 4).min(2 << 30),
    };
    (budget / bytes_per_token.max(1) as u64) as usize
}
