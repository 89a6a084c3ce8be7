use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use headroom::io::write_atomic;
use headroom::induction::{self, CopyMode, HeadStats, Lengths, PrefixMode, RankedHead, TokenPool};
use headroom::tokenizer::Tokenizer;
use headroom::progress::bar;

#[derive(Clone, Copy, ValueEnum)]
enum PrefixModeArg {
    /// The paper's definition (Algorithm 1): attention to tokens after earlier occurrences only.
    Definition,
    /// The authors' code: also adds A[j][1] when j is a multiple of L (their stray term).
    Authors,
}

#[derive(Clone, Copy, ValueEnum)]
enum CopyModeArg {
    /// The authors' code: OV image of the query token itself, softmax probabilities, no rescale.
    Authors,
    /// Olsson et al.: attention-weighted head output, raw logits, rescaled to [-1, 1].
    Olsson,
}

#[derive(Args)]
pub struct InductionArgs {
    /// A Hugging Face folder, a .gguf file, a hub id `org/name[@revision][:FILE.gguf]` already in
    /// the local Hugging Face cache (see docs/models.md), or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    /// Prefix-matching definition.
    #[arg(long, value_enum, default_value = "definition")]
    prefix_mode: PrefixModeArg,
    /// Copying-score definition.
    #[arg(long, value_enum, default_value = "authors")]
    copy_mode: CopyModeArg,
    /// Random sequences per score; sequence s has L = min_len + len_step * s (prefix, X shown 4
    /// times) and 4L tokens (copying, X shown once), as the authors (25 + 2s).
    #[arg(long, default_value_t = 100)]
    sequences: usize,
    /// L of the first sequence (the authors: 25).
    #[arg(long, default_value_t = 25)]
    min_len: usize,
    /// How much L grows per sequence (the authors: 2).
    #[arg(long, default_value_t = 2)]
    len_step: usize,
    /// Fraction of BPE merge ranks cut from each end of the token pool (most and least frequent).
    #[arg(long, default_value_t = 0.04)]
    exclude: f64,
    /// Seed: sequence s is drawn from SplitMix64(seed * 2^32 + s).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start token: `auto` (the model's own BOS), `none`, or a token id.
    #[arg(long, default_value = "auto")]
    bos: String,
    /// An importance matrix (JSON `[[score per head] per layer]` or `{"heads": [[..]..]}`):
    /// also write capacity.csv, the share of total prefix/copying score retained as heads are
    /// pruned least important first (spec 7.5).
    #[arg(long)]
    importance: Option<PathBuf>,
    /// Output folder (created): induction.json, induction.csv (and capacity.csv).
    #[arg(long)]
    out: PathBuf,
}

fn parse_bos(spec: &str, auto: Option<u32>, vocab: usize) -> Result<Option<u32>> {
    match spec {
        "auto" => Ok(auto),
        "none" => Ok(None),
        s => {
            let id: u32 = s.parse().with_context(|| format!("--bos {s:?}: expected auto, none or a token id"))?;
            if id as usize >= vocab {
                bail!("--bos {id} is outside the model's vocabulary of {vocab}");
            }
            Ok(Some(id))
        }
    }
}

fn read_importance(path: &Path, nl: usize, nh: usize) -> Result<Vec<Vec<f64>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let m = v.get("heads").unwrap_or(&v);
    let m: Vec<Vec<f64>> = serde_json::from_value(m.clone())
        .with_context(|| format!("{}: expected [[score per head] per layer] or {{\"heads\": ...}}", path.display()))?;
    if m.len() != nl || m.iter().any(|r| r.len() != nh) {
        bail!("{}: importance must be {nl} layers x {nh} heads", path.display());
    }
    Ok(m)
}

fn print_top(title: &str, top: &[RankedHead], var: &[Vec<f64>]) {
    println!("{title}");
    println!("  {:>4}  {:>5}  {:>4}  {:>8}  {:>8}", "rank", "layer", "head", "mean", "var");
    for (i, r) in top.iter().enumerate() {
        println!("  {:>4}  {:>5}  {:>4}  {:>8.4}  {:>8.4}", i + 1, r.layer, r.head, r.score, var[r.layer][r.head]);
    }
}

pub fn run(args: InductionArgs, dev: &super::Runtime) -> Result<()> {
    if args.sequences == 0 {
        bail!("--sequences must be at least 1");
    }
    let (path, model) = super::load_model(&args.model, dev)?;
    let tok = Tokenizer::for_model(&path)?;
    let (nl, nh) = (model.n_layers(), model.n_heads());
    let importance = args.importance.as_deref().map(|p| read_importance(p, nl, nh)).transpose()?;
    let bos = parse_bos(&args.bos, induction::default_bos(&model, Some(&tok)), model.info.vocab_size)?;
    let pool = TokenPool::from_tokenizer(&tok, args.exclude, model.info.vocab_size, bos)?;
    if args.min_len == 0 {
        bail!("--min-len must be at least 1");
    }
    let lengths = Lengths { base_len: args.min_len, step: args.len_step, copy_factor: 4 };
    let longest = bos.is_some() as usize + 4 * lengths.prefix_len(args.sequences - 1);
    if longest > model.info.context_length {
        bail!(
            "--sequences {}: the longest sequence has {longest} tokens, over the model's context of {} \
             (use fewer --sequences or a smaller --min-len / --len-step)",
            args.sequences,
            model.info.context_length
        );
    }
    if lengths.copy_len(args.sequences - 1) > pool.len() {
        bail!(
            "the longest copying sequence needs {} distinct tokens but the pool has {}",
            lengths.copy_len(args.sequences - 1),
            pool.len()
        );
    }
    let prefix_mode = match args.prefix_mode {
        PrefixModeArg::Definition => PrefixMode::Definition,
        PrefixModeArg::Authors => PrefixMode::Authors,
    };
    let copy_mode = match args.copy_mode {
        CopyModeArg::Authors => CopyMode::Authors,
        CopyModeArg::Olsson => CopyMode::Olsson,
    };
    eprintln!(
        "token pool: {} ids (merge ranks [{}, {}) of {}); BOS {}",
        pool.len(),
        pool.rank_lo,
        pool.rank_hi,
        pool.n_merges,
        bos.map_or("none".into(), |b| format!("{b} {:?}", tok.id_to_token(b).unwrap_or_default()))
    );
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;

    let n = args.sequences;
    let prefix_seqs = induction::prefix_sequences(&pool, bos, n, &lengths, args.seed)?;
    let copy_seqs = induction::copy_sequences(&pool, bos, n, &lengths, args.seed)?;

    let t0 = Instant::now();
    let pb = bar(n, "prefix sequences");
    let ps = induction::prefix_matching(&model, &prefix_seqs, prefix_mode, &mut |d| pb.set_position(d as u64))?;
    pb.finish();
    let prefix_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let pb = bar(n, "copying sequences");
    let cs = induction::copying(&model, &copy_seqs, copy_mode, &mut |d| pb.set_position(d as u64))?;
    pb.finish();
    let copy_s = t1.elapsed().as_secs_f64();

    let prefix: HeadStats = ps.prefix.stats();
    let tl: HeadStats = ps.tl_induction.stats();
    let copying: HeadStats = cs.stats();
    let top_prefix = induction::top_heads(&prefix.mean, 10);
    let top_copy = induction::top_heads(&copying.mean, 10);
    let top_tl = induction::top_heads(&tl.mean, 10);

    let capacity = match &importance {
        Some(imp) => {
            let ranking = headroom::prune::ascending_ranking(&induction::flatten(imp));
            let p = induction::capacity_retained(&induction::flatten(&prefix.mean), &ranking)?;
            let c = induction::capacity_retained(&induction::flatten(&copying.mean), &ranking);
            let c = match c {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("note: no copying capacity curve: {e}");
                    None
                }
            };
            let rows = (0..p.len()).map(|i| {
                let cr = c.as_ref().map_or(String::new(), |c| format!("{:.6}", c[i]));
                vec![i.to_string(), format!("{:.6}", 100.0 * i as f64 / (nl * nh) as f64), format!("{:.6}", p[i]), cr]
            });
            let csv = headroom::io::csv_bytes(&["heads_pruned", "pct_pruned", "prefix_retained", "copy_retained"], rows)?;
            write_atomic(&args.out.join("capacity.csv"), &csv)?;
            Some(serde_json::json!({"importance_file": args.importance, "prefix_retained": p, "copy_retained": c}))
        }
        None => None,
    };

    let json = serde_json::json!({
        "model": path,
        "family": model.info.family,
        "architecture": model.info.architecture,
        "compute_dtype": model.info.compute_dtype,
        "weights": model.info.weights,
        "n_layers": nl,
        "n_heads": nh,
        "options": {
            "prefix_mode": prefix_mode,
            "copy_mode": copy_mode,
            "sequences": n,
            "exclude": args.exclude,
            "seed": args.seed,
            "min_len": args.min_len,
            "len_step": args.len_step,
            "rng": "sequence s: SplitMix64(seed * 2^32 + s), partial Fisher-Yates over the pool (src/induction/mod.rs)",
            "bos": bos,
            "bos_token": bos.and_then(|b| tok.id_to_token(b)),
            "bos_rule": args.bos,
            "prefix_lengths": (0..n).map(|s| lengths.prefix_len(s)).collect::<Vec<_>>(),
            "copy_lengths": (0..n).map(|s| lengths.copy_len(s)).collect::<Vec<_>>(),
            "pool": {"size": pool.len(), "n_merges": pool.n_merges, "rank_lo": pool.rank_lo, "rank_hi": pool.rank_hi},
        },
        "prefix": prefix,
        "copying": copying,
        "tl_induction": tl,
        "top_prefix": top_prefix,
        "top_copying": top_copy,
        "top_tl_induction": top_tl,
        "median": {"prefix": induction::median(&prefix.mean), "copying": induction::median(&copying.mean)},
        "capacity": capacity,
        "timing_s": {"prefix": prefix_s, "copying": copy_s},
        "version": env!("CARGO_PKG_VERSION"),
    });
    write_atomic(&args.out.join("induction.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    let rows = (0..nl).flat_map(|l| (0..nh).map(move |h| (l, h))).map(|(l, h)| {
        let mut r = vec![l.to_string(), h.to_string()];
        r.extend([prefix.mean[l][h], prefix.var[l][h], copying.mean[l][h], copying.var[l][h], tl.mean[l][h], tl.var[l][h]].map(|x| format!("{x:.8}")));
        r
    });
    let csv = headroom::io::csv_bytes(&["layer", "head", "prefix_mean", "prefix_var", "copy_mean", "copy_var", "tl_induction_mean", "tl_induction_var"], rows)?;
    write_atomic(&args.out.join("induction.csv"), &csv)?;

    print_top(&format!("top 10 heads by prefix matching ({} mode, {n} sequences):", args_mode_name(prefix_mode)), &top_prefix, &prefix.var);
    print_top(&format!("top 10 heads by copying ({} mode):", copy_name(copy_mode)), &top_copy, &copying.var);
    println!(
        "median head: prefix {:.4}, copying {:.4}; time: prefix {prefix_s:.1}s, copying {copy_s:.1}s",
        induction::median(&prefix.mean),
        induction::median(&copying.mean)
    );
    println!("wrote {}", args.out.display());
    super::report_streaming(&model);
    Ok(())
}

fn args_mode_name(m: PrefixMode) -> &'static str {
    match m {
        PrefixMode::Definition => "definition",
        PrefixMode::Authors => "authors",
    }
}

fn copy_name(m: CopyMode) -> &'static str {
    match m {
        CopyMode::Authors => "authors",
        CopyMode::Olsson => "olsson",
    }
}
