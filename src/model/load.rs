//! How a model is loaded: the compute dtype, whether weights are resident or streamed block by
//! block from their stored format, and which device runs which layers (docs/design.md,
//! "Models larger than memory").
//!
//! - **Resident**: every block is materialised in the compute dtype once, at load (fastest when
//!   it fits).
//! - **Streamed**: only the embeddings and the LM head are resident; each block is materialised
//!   from the mapped checkpoint (safetensors as stored, GGUF quantized) just before it runs and
//!   dropped after it, the next block being prepared on a second thread meanwhile
//!   ([`super::blocks_store`]). On a GPU this is also the host-memory offload: the weights stay
//!   in the mapped file and only one or two blocks are on the card at a time.
//! - **Placement**: `cpu`, `cuda:0`, a list `cuda:0,cuda:1` (or `cuda:all`) splits the layers
//!   into contiguous ranges, one per device; hidden states move at the boundaries. `cpu,cpu`
//!   runs the same boundary code on one machine (what CI tests).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use serde::Serialize;

/// `--dtype`: the dtype blocks compute in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ComputeDtype {
    /// bf16 on CUDA (f16 when the checkpoint is f16-only), f32 on CPU.
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl ComputeDtype {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "f32" => Self::F32,
            "bf16" => Self::Bf16,
            "f16" => Self::F16,
            other => bail!("unknown dtype `{other}` (expected auto, f32, bf16 or f16)"),
        })
    }

    /// The concrete dtype on `device` for a checkpoint whose tensors are stored as
    /// `stored` (lower-case names with counts, as [`super::ModelInfo::weight_dtypes`]).
    pub fn resolve(self, device: &Device, stored: &std::collections::BTreeMap<String, usize>) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto => {
                let f16_only = stored.keys().any(|k| k == "f16") && !stored.keys().any(|k| k == "bf16" || k == "f32");
                if f16_only {
                    DType::F16
                } else {
                    DType::BF16
                }
            }
        }
    }
}

/// `--weights`: resident, streamed, or chosen by size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WeightsMode {
    /// Resident when the materialised model fits in [`resident_fraction`] of the free memory of
    /// the devices it is placed on, else streamed.
    #[default]
    Auto,
    Resident,
    Stream,
}

impl WeightsMode {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "resident" => Self::Resident,
            "stream" => Self::Stream,
            other => bail!("unknown weights mode `{other}` (expected auto, resident or stream)"),
        })
    }
}

/// The fraction of free memory a resident model may take under `--weights auto`: 0.7, or
/// `$HEADROOM_RESIDENT_FRACTION` (0 < f <= 1). The rest is for activations.
pub fn resident_fraction() -> Result<f64> {
    match std::env::var("HEADROOM_RESIDENT_FRACTION") {
        Err(_) => Ok(0.7),
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
            _ => bail!("HEADROOM_RESIDENT_FRACTION is `{v}`; expected a number in (0, 1]"),
        },
    }
}

/// Which devices run the model, in layer order.
#[derive(Clone, Debug)]
pub struct Placement {
    /// As given (`cpu`, `cuda:0,cuda:1`, ...), for messages and the manifest.
    pub spec: String,
    pub devices: Vec<Device>,
}

impl Placement {
    pub fn cpu() -> Self {
        Self { spec: "cpu".into(), devices: vec![Device::Cpu] }
    }

    pub fn single(device: &Device) -> Self {
        let spec = if device.is_cpu() { "cpu".to_string() } else { "cuda".to_string() };
        Self { spec, devices: vec![device.clone()] }
    }

    /// `cpu`, `cuda`, `cuda:N`, `cuda:all`, or a comma-separated list of these (`cpu,cpu`
    /// places two layer ranges on the same CPU).
    pub fn parse(spec: &str) -> Result<Self> {
        let mut devices = Vec::new();
        for part in spec.split(',').map(str::trim) {
            match part {
                "cpu" => devices.push(Device::Cpu),
                "cuda:all" => {
                    let n = cuda_device_count();
                    if n == 0 {
                        bail!("--device cuda:all: no CUDA device could be opened (was headroom built with --features cuda?)");
                    }
                    for i in 0..n {
                        devices.push(open_cuda(i)?);
                    }
                }
                s if s == "cuda" || s.starts_with("cuda:") => {
                    let ordinal = match s.strip_prefix("cuda:") {
                        None => 0,
                        Some(n) => n.parse::<usize>().with_context(|| format!("--device `{s}`: `{n}` is not a CUDA ordinal"))?,
                    };
                    devices.push(open_cuda(ordinal)?);
                }
                "" => bail!("--device `{spec}`: empty entry in the device list"),
                other => bail!("unknown device `{other}` (expected cpu, cuda, cuda:N, cuda:all, or a comma-separated list)"),
            }
        }
        Ok(Self { spec: spec.to_string(), devices })
    }

    /// The device the input ids and embeddings live on.
    pub fn first(&self) -> &Device {
        &self.devices[0]
    }

    /// The device of each of `n_layers` layers: contiguous ranges, as even as possible, in the
    /// order the devices were given (`n_layers` < devices: the trailing devices get none).
    pub fn layer_devices(&self, n_layers: usize) -> Vec<Device> {
        let k = self.devices.len().max(1);
        (0..n_layers).map(|l| self.devices[l * k / n_layers.max(1)].clone()).collect()
    }
}

fn open_cuda(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).with_context(|| {
        format!("cannot open CUDA device {ordinal} (is there such a device, and was headroom built with --features cuda?)")
    })
}

/// How many CUDA devices open, probing ordinals from 0 (0 without the `cuda` feature).
fn cuda_device_count() -> usize {
    (0..64).take_while(|&i| Device::new_cuda(i).is_ok()).count()
}

/// Everything [`super::Model::load_with`] needs besides the path.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub dtype: ComputeDtype,
    pub weights: WeightsMode,
    pub placement: Placement,
}

impl LoadOptions {
    /// f32, resident, on one device: what `Model::load` does.
    pub fn resident_f32(device: &Device) -> Self {
        Self { dtype: ComputeDtype::F32, weights: WeightsMode::Resident, placement: Placement::single(device) }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: ComputeDtype::Auto, weights: WeightsMode::Auto, placement: Placement::cpu() }
    }
}

/// Bytes of memory available for new allocations on the host: `$HEADROOM_FREE_MEMORY_MB` when
/// set (to plan for a smaller node, or to test the decision), else `MemAvailable` from
/// /proc/meminfo; None where neither can be read.
pub fn host_available_bytes() -> Option<u64> {
    if let Some(mb) = std::env::var("HEADROOM_FREE_MEMORY_MB").ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(mb << 20);
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Human-readable bytes (GiB with two decimals, MiB below 1 GiB).
pub fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}
