//! `skyweave usage`: spend and tokens from the ledger, per group, for a
//! period of whole UTC days.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use std::path::Path;

use skyweave_core::calendar::days_from_civil;
use skyweave_gateway::ledger::{usage_csv, GroupBy, UsageRow};
use skyweave_gateway::store::Store;

use crate::cli::UsageArgs;

pub async fn run(args: &UsageArgs) -> anyhow::Result<ExitCode> {
    let estate = match super::load_estate(&args.config)? {
        Ok(loaded) => loaded.estate,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let database = super::database(&args.config, &estate)?;
    if !super::database_exists(&database) {
        eprintln!(
            "error: no ledger at {}\n    fix: serve the estate first, or set server.database",
            database.describe()
        );
        return Ok(ExitCode::from(2));
    }
    let today = super::today_utc();
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
    let store = Store::open(&database)
        .await
        .with_context(|| format!("cannot open the usage ledger {}", database.describe()))?;
    let rows = store
        .usage(by, from_day * day_ms, (to_day + 1) * day_ms)
        .await
        .context("cannot read the usage ledger")?;
    if args.json {
        let report = serde_json::json!({
            "since": since, "until": until, "by": args.by, "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.csv {
        print!("{}", usage_csv(&args.by, &rows));
    } else {
        print!("{}", table(&args.by, &since, &until, &rows));
    }
    Ok(ExitCode::SUCCESS)
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

/// `skyweave commitments`: spend to date against each commitment's plan.
pub async fn commitments(config: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let estate = match super::load_estate(config)? {
        Ok(loaded) => loaded.estate,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    if estate.commitments.is_empty() {
        eprintln!("error: the estate has no [[commitment]]\n    fix: add one (see README.md)");
        return Ok(ExitCode::from(2));
    }
    let database = super::database(config, &estate)?;
    let store = if super::database_exists(&database) {
        Some(
            Store::open(&database)
                .await
                .with_context(|| format!("cannot open the usage ledger {}", database.describe()))?,
        )
    } else {
        None
    };
    let today_text = super::today_utc();
    let today = days_from_civil(&today_text).unwrap_or(0);
    let day_ms = 86_400_000;
    let mut statuses = Vec::new();
    for commitment in &estate.commitments {
        let Some((start, end)) = commitment.period_days() else { continue };
        let recorded = match &store {
            Some(store) => store
                .cloud_spend(&commitment.cloud, start * day_ms, (end + 1) * day_ms)
                .await
                .context("cannot read the usage ledger")?,
            None => 0.0,
        };
        statuses.extend(commitment.status(today, recorded));
    }
    if json {
        let report = serde_json::json!({ "today": today_text, "commitments": statuses });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!("commitments on {today_text} (UTC)\n");
    for s in &statuses {
        let _ = writeln!(
            out,
            "{}: {:.2} of {:.2} USD spent ({} to {}); plan to date {:.2} USD, {} by {:.2} USD; \
             projected {:.2} USD at the end; discount {:.1}% (list prices x {:.3}){}",
            s.cloud,
            s.spent_usd,
            s.total_usd,
            s.start,
            s.end,
            s.plan_usd,
            if s.ahead_usd >= 0.0 { "ahead" } else { "behind" },
            s.ahead_usd.abs(),
            s.projected_usd,
            s.discount * 100.0,
            s.effective_price_factor,
            s.next_tier_at_usd.map_or(String::new(), |at| format!("; next tier at {at:.2} USD")),
        );
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
