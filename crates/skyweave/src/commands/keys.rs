//! `skyweave keys`: tenants' API keys in the estate's key database.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use skyweave_gateway::keystore::{now_unix, KeyRecord, KeyStore, Narrowing};

use crate::cli::{KeysArgs, KeysCommand};

pub async fn run(args: &KeysArgs) -> anyhow::Result<ExitCode> {
    let Some(config) = &args.config else {
        eprintln!("error: `skyweave keys` needs --config ESTATE.toml (its tenants and database)");
        return Ok(ExitCode::from(2));
    };
    let estate = match super::load_estate(config)? {
        Ok(loaded) => loaded.estate,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let database = super::database(config, &estate)?;
    let store = KeyStore::open(&database)
        .await
        .with_context(|| format!("cannot open the key database {}", database.describe()))?;
    match &args.command {
        KeysCommand::Create {
            tenant,
            name,
            models,
            clouds,
            regions,
            expires_in_secs,
            rpm,
            tpm,
            budget_usd,
        } => {
            let narrowing = Narrowing {
                models: models.clone(),
                clouds: clouds.clone(),
                regions: regions.clone(),
                expires_unix: expires_in_secs.map(|s| now_unix() + s as i64),
                rpm: *rpm,
                tpm: *tpm,
                budget_usd: *budget_usd,
            };
            if budget_usd.is_some_and(|b| !(b.is_finite() && b > 0.0)) {
                eprintln!("error: --budget-usd must be more than 0");
                return Ok(ExitCode::from(2));
            }
            if rpm == &Some(0) || tpm == &Some(0) {
                eprintln!("error: --rpm and --tpm must be at least 1 (omit them for no key limit)");
                return Ok(ExitCode::from(2));
            }
            if let Err(problem) = skyweave_core::tenant::check_narrowing(
                &estate,
                tenant,
                &narrowing.models,
                &narrowing.clouds,
                &narrowing.regions,
            ) {
                eprintln!("error: {problem}");
                return Ok(ExitCode::from(2));
            }
            let new = store.create(tenant, name, &narrowing, now_unix()).await?;
            eprintln!(
                "created key `{}` for tenant `{tenant}`; it is shown only now and stored hashed:",
                new.id
            );
            println!("{}", new.key);
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::List { json } => {
            let keys = store.list().await?;
            if *json {
                let rows: Vec<serde_json::Value> = keys.iter().map(KeyRecord::to_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", table(&keys));
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke { id } => {
            if store.revoke(id, now_unix()).await? {
                println!("revoked key `{id}`");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "error: no key `{id}` in {}\n    fix: `skyweave keys list`",
                    database.describe()
                );
                Ok(ExitCode::from(2))
            }
        }
    }
}

fn table(keys: &[KeyRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<14} {:<16} {:<16} {:<8} rights", "id", "tenant", "name", "state");
    for key in keys {
        let list = |v: &Option<Vec<String>>| v.as_ref().map_or("tenant's".into(), |v| v.join(","));
        let _ = writeln!(
            out,
            "{:<14} {:<16} {:<16} {:<8} models {}; clouds {}; regions {}",
            key.id,
            key.tenant,
            key.name,
            key.state(),
            list(&key.models),
            list(&key.clouds),
            list(&key.regions)
        );
    }
    let _ = writeln!(out, "\n{} keys", keys.len());
    out
}
