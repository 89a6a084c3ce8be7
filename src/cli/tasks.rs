use anyhow::Result;
use clap::Args;
use headroom::tasks::builtin::{Source, BUILTINS};

#[derive(Args)]
pub struct TasksArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TasksArgs) -> Result<()> {
    let cache = headroom::assets::cache_dir()?;
    let data = headroom::assets::data_dir(&cache);
    let describe = |src: Source| -> (String, Option<bool>) {
        match src {
            Source::Arrow(rel) | Source::Requests(rel) => {
                let p = data.join(rel);
                let present = p.exists();
                (p.display().to_string(), Some(present))
            }
            Source::User(names) => (format!("--data ({})", names.join("/")), None),
            Source::Holdout => ("seeded holdout part of the eval split".into(), None),
            Source::SameAsEval => ("the eval split (leave-one-out)".into(), None),
        }
    };
    let mut rows = Vec::new();
    for b in BUILTINS {
        let (eval, eval_present) = describe(b.eval);
        let (pool, pool_present) = describe(b.pool);
        rows.push(serde_json::json!({
            "task": b.name, "dataset": b.dataset, "metric": b.metric,
            "eval": eval, "eval_present": eval_present, "pool": pool, "pool_present": pool_present,
            "notes": b.notes,
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mark = |p: &serde_json::Value| match p.as_bool() {
        Some(true) => "present",
        Some(false) => "MISSING (headroom fetch --data)",
        None => "",
    };
    println!("data folder: {}", data.display());
    for r in &rows {
        println!("{:<14} {:<24} metric {}", r["task"].as_str().unwrap_or(""), r["dataset"].as_str().unwrap_or(""), r["metric"]);
        println!("    eval: {} {}", r["eval"].as_str().unwrap_or(""), mark(&r["eval_present"]));
        println!("    pool: {} {}", r["pool"].as_str().unwrap_or(""), mark(&r["pool_present"]));
    }
    println!("User tasks: pass a .toml file to --task (docs/tasks.md).");
    Ok(())
}
