//! Where weights come from. Families ask a [`WeightSource`] for tensors by name with the shape
//! they expect; the source converts (f16/bf16) or dequantizes (GGUF quants) to f32.
//!
//! Shape convention everywhere: row-major, HF `nn.Linear` layout `[out_features, in_features]`.
//! (GGUF lists `ne0` first with `ne0` contiguous, so GGUF `[ne0, ne1]` is row-major `[ne1, ne0]`:
//! the same layout, which is why one trait serves both.)

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

pub trait WeightSource: Send + Sync {
    /// Where the weights live (a path), for error messages.
    fn origin(&self) -> String;
    /// Whether a tensor of this name exists.
    fn contains(&self, name: &str) -> bool;
    /// The stored shape (row-major) of a tensor, if it exists.
    fn shape_of(&self, name: &str) -> Option<Vec<usize>>;
    /// Load `name` as an f32 tensor of exactly `shape` on `device`. Errors (with the file and the
    /// tensor name) when it is missing, has another shape, or has an unsupported dtype.
    fn load_f32(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor>;
    /// Load `name` in `dtype`. Sources whose stored dtype can be taken as it is (safetensors
    /// bf16 into bf16) override this to skip the f32 intermediate.
    fn load(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Ok(self.load_f32(name, shape, device)?.to_dtype(dtype)?)
    }
    /// Bytes `name` takes in storage (0 when unknown): what streaming a block reads.
    fn stored_bytes(&self, _name: &str) -> u64 {
        0
    }
    /// Drop `name`'s mapped pages from this process (the file stays; a later load reads it
    /// again). Streaming calls this after materialising a tensor so that a model larger than
    /// memory does not accumulate in the resident set. Default: nothing to drop.
    fn release(&self, _name: &str) {}
}

/// Random N(0, std^2) weights of whatever shape a family asks for: benchmarks at real model
/// shapes without any checkpoint (the numbers are meaningless, the FLOPs are not).
/// Every name exists; `shape_of` is unknown, so only families whose shapes come entirely from
/// their config can be built from it (OPT, GPT-2, NeoX, Llama HF configs).
pub struct RandomWeights {
    pub std: f32,
}

impl WeightSource for RandomWeights {
    fn origin(&self) -> String {
        "<random weights>".into()
    }
    fn contains(&self, _name: &str) -> bool {
        true
    }
    fn shape_of(&self, _name: &str) -> Option<Vec<usize>> {
        None
    }
    fn load_f32(&self, _name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        Ok(Tensor::randn(0f32, self.std, shape, device)?)
    }
}
