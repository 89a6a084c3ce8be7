use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use headroom::checkpoint::{self, GgufOptions, HfDtype, HfOptions, Overrides, Shape};
use headroom::formats::gguf::GgmlType;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// A Hugging Face folder: config.json + safetensors.
    Hf,
    /// A llama.cpp GGUF file (Llama-family shapes only).
    Gguf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Quant {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
}

#[derive(Args)]
pub struct MakeCheckpointArgs {
    /// The shape: opt-125m, opt-350m, opt-1.3b, opt-2.7b, opt-6.7b, opt-13b, opt-30b, opt-66b,
    /// llama-3-8b, llama-13b-shape (Llama-2-13B dims), qwen2-7b, smollm2-135m. The flags below
    /// override its fields for a custom shape.
    #[arg(long)]
    shape: String,
    /// Override: number of layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Override: hidden size (OPT's embedding width follows it unless it differs, as in opt-350m).
    #[arg(long)]
    hidden: Option<usize>,
    /// Override: attention heads (kv heads follow unless the shape uses GQA or --kv-heads is given).
    #[arg(long)]
    heads: Option<usize>,
    /// Override: key/value heads (grouped-query attention; Llama-family shapes only).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Override: FFN (intermediate) size.
    #[arg(long)]
    ffn: Option<usize>,
    /// Override: vocabulary size (rows of the embedding).
    #[arg(long)]
    vocab: Option<usize>,
    /// Override: context length (max_position_embeddings).
    #[arg(long)]
    context: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value = "hf")]
    format: Format,
    /// On-disk dtype of a Hugging Face folder's weights (default bf16). (`--dtype`, the global
    /// flag, is the compute dtype of commands that run a model.)
    #[arg(long, value_enum)]
    weight_dtype: Option<Dtype>,
    /// Tensor type of a GGUF's matrices (default q8_0; norms and biases stay f32).
    #[arg(long, value_enum)]
    quant: Option<Quant>,
    /// Seed: the same seed writes byte-identical files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Standard deviation of the random weights (norm weights are 1, biases 0).
    #[arg(long, default_value_t = 0.02)]
    std: f32,
    /// Largest safetensors shard (hub style: 5GB = 5e9 bytes, the default; MiB/GiB for binary units).
    #[arg(long)]
    shard_size: Option<String>,
    /// Copy the tokenizer of this model: an HF folder's tokenizer files (HF output) or a GGUF's
    /// `tokenizer.*` metadata (GGUF output). Without it only `inspect` and library use work.
    #[arg(long)]
    tokenizer_from: Option<PathBuf>,
    /// The folder (HF) or .gguf file to write.
    #[arg(long)]
    out: PathBuf,
    /// Overwrite an existing non-empty --out.
    #[arg(long)]
    force: bool,
}

/// The writer chosen by `--format`, with its options.
enum Job {
    Hf(HfOptions),
    Gguf(GgufOptions),
}

pub fn run(a: MakeCheckpointArgs) -> Result<()> {
    let overrides = Overrides {
        layers: a.layers,
        hidden: a.hidden,
        heads: a.heads,
        kv_heads: a.kv_heads,
        ffn: a.ffn,
        vocab: a.vocab,
        context: a.context,
    };
    let shape = Shape::named(&a.shape)?.with(&overrides)?;
    let t = Instant::now();
    let mut bar = None;
    let mut progress = |done: u64, total: u64| {
        // Progress in MiB (the bar's counts are steps).
        let b = bar.get_or_insert_with(|| headroom::progress::bar(total.div_ceil(1 << 20) as usize, "writing MiB"));
        b.set_position(done >> 20);
    };
    let (kind, job) = match a.format {
        Format::Hf => {
            if a.quant.is_some() {
                bail!("--quant is for --format gguf; a Hugging Face folder takes --weight-dtype f32|f16|bf16");
            }
            let dtype = match a.weight_dtype.unwrap_or(Dtype::Bf16) {
                Dtype::F32 => HfDtype::F32,
                Dtype::F16 => HfDtype::F16,
                Dtype::Bf16 => HfDtype::Bf16,
            };
            let o = HfOptions {
                dtype,
                shard_size: checkpoint::parse_size(a.shard_size.as_deref().unwrap_or("5GB"))?,
                seed: a.seed,
                std: a.std,
                tokenizer_from: a.tokenizer_from.clone(),
                force: a.force,
            };
            (format!("Hugging Face folder, {}", format!("{dtype:?}").to_lowercase()), Job::Hf(o))
        }
        Format::Gguf => {
            if a.weight_dtype.is_some() {
                bail!("--weight-dtype is for --format hf; a GGUF takes --quant f32|f16|bf16|q8_0|q4_0|q4_1");
            }
            if a.shard_size.is_some() {
                bail!("--shard-size is for --format hf; a GGUF is written as one file");
            }
            let quant = match a.quant.unwrap_or(Quant::Q8_0) {
                Quant::F32 => GgmlType::F32,
                Quant::F16 => GgmlType::F16,
                Quant::Bf16 => GgmlType::BF16,
                Quant::Q8_0 => GgmlType::Q8_0,
                Quant::Q4_0 => GgmlType::Q4_0,
                Quant::Q4_1 => GgmlType::Q4_1,
            };
            let o = GgufOptions { quant, seed: a.seed, std: a.std, tokenizer_from: a.tokenizer_from.clone(), force: a.force };
            (format!("GGUF, {}", quant.name()), Job::Gguf(o))
        }
    };
    eprintln!("writing {} ({} parameters) as a {kind} to {}", shape.describe(), shape.n_params(), a.out.display());
    let written = match job {
        Job::Hf(o) => checkpoint::write_hf(&shape, &o, &a.out, &mut progress)?,
        Job::Gguf(o) => checkpoint::write_gguf(&shape, &o, &a.out, &mut progress)?,
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for (path, bytes) in &written.files {
        println!("{:>14}  {}", bytes, path.display());
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "wrote {} tensors, {} parameters, {} bytes ({:.2} GB) in {:.1}s ({:.0} MB/s), seed {}",
        written.n_tensors,
        written.n_params,
        written.total_bytes,
        written.total_bytes as f64 / 1e9,
        secs,
        written.total_bytes as f64 / 1e6 / secs.max(1e-9),
        a.seed
    );
    match &written.tokenizer {
        Some(p) => println!("tokenizer copied from {}", p.display()),
        None => eprintln!(
            "WARNING: no tokenizer written (no --tokenizer-from): only stages that need no text work on {} \
             (inspect, the library's forward passes); eval, importance, prune, induction and next need a tokenizer",
            a.out.display()
        ),
    }
    Ok(())
}
