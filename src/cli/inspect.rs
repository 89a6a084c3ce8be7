use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct InspectArgs {
    /// A Hugging Face folder, a .gguf file, a hub id `org/name[@revision][:FILE.gguf]` already in
    /// the local Hugging Face cache (see docs/models.md), or `default` (the fetched SmolLM2-135M-Instruct).
    #[arg(long, default_value = "default")]
    model: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs, dev: &super::Runtime) -> Result<()> {
    let (_, m) = super::load_model(&args.model, dev)?;
    let info = &m.info;
    if args.json {
        println!("{}", serde_json::to_string_pretty(info)?);
        return Ok(());
    }
    let rope = info.rope.as_ref().map_or("none (learned positions)".into(), |r| {
        format!("{:?}, {} dims, theta {}", r.style, r.rotary_dim, r.theta)
    });
    let dtypes = info.weight_dtypes.iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", ");
    // Per layer when the layers differ (Qwen2's max_window_layers / layer_types).
    let per_layer: Vec<Option<usize>> = (0..m.n_layers()).map(|l| m.blocks.meta(l).sliding_window).collect();
    let show = |w: &Option<usize>| w.map_or("none".to_string(), |w| w.to_string());
    let windows = if per_layer.windows(2).all(|p| p[0] == p[1]) {
        per_layer.first().map_or("none".into(), show)
    } else {
        format!("per layer [{}]", per_layer.iter().map(show).collect::<Vec<_>>().join(", "))
    };
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
        ("rope", rope),
        ("tied embeddings", info.tied_embeddings.to_string()),
        ("sliding window", windows),
        ("weight dtypes", dtypes),
        ("compute dtype", info.compute_dtype.clone()),
        ("weights", info.weights.clone()),
        ("placement", info.placement.clone()),
    ];
    for (k, v) in rows {
        println!("{k:>16}  {v}");
    }
    // Defaults assumed for missing fields and fields nobody read (see docs/model-config.md).
    for n in &info.config_notes {
        println!("{:>16}  {n}", "config note");
    }
    Ok(())
}
