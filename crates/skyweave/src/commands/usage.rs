//! `skyweave usage`: spend and tokens from the ledger, per group, for a
//! period of whole UTC days.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use skyweave_core::calendar::days_from_civil;
use skyweave_gateway::ledger::{usage, GroupBy, UsageRow};

use crate::cli::UsageArgs;

pub fn run(args: &UsageArgs) -> anyhow::Result<ExitCode> {
    let estate = match super::load_estate(&args.config)? {
        Ok(loaded) => loaded.estate,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let path = super::database_path(&args.config, &estate);
    if !path.exists() {
        eprintln!(
            "error: no ledger at {}\n    fix: serve the estate first, or set server.database",
            path.display()
        );
        return Ok(ExitCode::from(2));
    }
    let today = super::plan::today_utc();
    let since = args.since.clone().unwrap_or_else(|| format!("{}-01", &today[..7]));
    let until = args.until.clone().unwrap_or(today);
    let (Some(from_day), Some(to_day)) = (days_from_civil(&since), days_from_civil(&until)) else {
        eprintln!("error: --since and --until take dates as YYYY-MM-DD");
        return Ok(ExitCode::from(2));
    };
    let by = match args.by.as_str() {
        "tenant" => GroupBy::Tenant,
        "model" => GroupBy::Model,
        "deployment" => GroupBy::Deployment,
        _ => GroupBy::Cloud,
    };
    let day_ms = 86_400_000;
    let rows = usage(&path, by, from_day * day_ms, (to_day + 1) * day_ms)
        .context("cannot read the usage ledger")?;
    if args.json {
        let report = serde_json::json!({
            "since": since, "until": until, "by": args.by, "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.csv {
        print!("{}", csv(&args.by, &rows));
    } else {
        print!("{}", table(&args.by, &since, &until, &rows));
    }
    Ok(ExitCode::SUCCESS)
}

fn csv(by: &str, rows: &[UsageRow]) -> String {
    let mut out = format!("{by},requests,errors,prompt_tokens,completion_tokens,cost_usd\n");
    for r in rows {
        let group = if r.group.contains([',', '"']) {
            format!("\"{}\"", r.group.replace('"', "\"\""))
        } else {
            r.group.clone()
        };
        let _ = writeln!(
            out,
            "{group},{},{},{},{},{:.6}",
            r.requests, r.errors, r.prompt_tokens, r.completion_tokens, r.cost_usd
        );
    }
    out
}

fn table(by: &str, since: &str, until: &str, rows: &[UsageRow]) -> String {
    let mut out = format!("usage {since} to {until} (UTC) by {by}\n");
    let _ = writeln!(
        out,
        "{:<32} {:>10} {:>8} {:>14} {:>14} {:>14}",
        by, "requests", "errors", "prompt tok", "completion tok", "cost USD"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<32} {:>10} {:>8} {:>14} {:>14} {:>14.6}",
            r.group, r.requests, r.errors, r.prompt_tokens, r.completion_tokens, r.cost_usd
        );
    }
    let total: f64 = rows.iter().map(|r| r.cost_usd).sum();
    let requests: u64 = rows.iter().map(|r| r.requests).sum();
    let _ = writeln!(
        out,
        "{:<32} {:>10} {:>8} {:>14} {:>14} {:>14.6}",
        "total", requests, "", "", "", total
    );
    out
}
