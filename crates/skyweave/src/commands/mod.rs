//! One file per subcommand.

mod check;
mod data;
mod demo;
mod keys;
mod offerings;
mod plan;
mod serve;
mod usage;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use skyweave_core::config::{parse_estate, Loaded};

use crate::cli::Command;

pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { config, listen } => serve::run(&config, listen).await,
        Command::Check(args) if !args.locations.is_empty() => data::check(&args).await,
        Command::Check(args) => match &args.config {
            Some(config) => check::run(config),
            None => {
                eprintln!(
                    "error: `skyweave check` needs --config ESTATE.toml, or two locations \
                     (SOURCE DESTINATION) to verify"
                );
                Ok(ExitCode::from(2))
            }
        },
        Command::Sync(args) => data::transfer(&args, true).await,
        Command::Copy(args) => data::transfer(&args, false).await,
        Command::Ls { location, config, json } => {
            data::ls(&location, config.as_deref(), json).await
        }
        Command::Demo { listen, tour_only } => demo::run(listen, tour_only).await,
        Command::Plan(args) => plan::run(&args),
        Command::Keys(args) => keys::run(&args).await,
        Command::Usage(args) => usage::run(&args).await,
        Command::Commitments { config, json } => usage::commitments(&config, json).await,
        Command::Offerings(args) => offerings::run(&args),
    }
}

/// Reads and validates an estate file; a validation failure is printed in
/// full and reported as `Err(None)`.
pub fn load_estate(path: &Path) -> anyhow::Result<Result<Loaded, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the estate file {}", path.display()))?;
    Ok(parse_estate(&text, &path.display().to_string()).map_err(|errors| errors.to_string()))
}

/// The estate's database: PostgreSQL at the URL in the variable
/// `server.database_url_env` names, or the SQLite file `server.database`
/// (relative to the estate file; default `skyweave.db` beside it).
pub fn database(
    config: &Path,
    estate: &skyweave_core::estate::Estate,
) -> anyhow::Result<skyweave_gateway::store::Database> {
    use skyweave_gateway::store::{Database, PostgresTarget};
    if let Some(name) = &estate.server.database_url_env {
        let url = std::env::var(name).map_err(|_| {
            anyhow::anyhow!(
                "{}: server.database_url_env names {name}, which is not set\n    fix: export \
                 {name}=postgres://user:password@host:5432/dbname",
                config.display()
            )
        })?;
        let target = PostgresTarget::parse(&url, name)
            .map_err(|problem| anyhow::anyhow!("{}: {problem}", config.display()))?;
        return Ok(Database::Postgres(Box::new(target)));
    }
    let base = config.parent().unwrap_or_else(|| Path::new("."));
    Ok(Database::Sqlite(match &estate.server.database {
        Some(path) if path.is_absolute() => path.clone(),
        Some(path) => base.join(path),
        None => base.join("skyweave.db"),
    }))
}

/// Whether the database has ever been written: a PostgreSQL server is
/// assumed to be; a SQLite file must exist.
pub fn database_exists(database: &skyweave_gateway::store::Database) -> bool {
    match database {
        skyweave_gateway::store::Database::Sqlite(path) => path.exists(),
        skyweave_gateway::store::Database::Postgres(_) => true,
    }
}

/// Today's date in UTC, YYYY-MM-DD (`SKYWEAVE_TODAY` overrides it, for
/// planning ahead and for tests).
pub fn today_utc() -> String {
    if let Ok(date) = std::env::var("SKYWEAVE_TODAY") {
        let iso = date.len() == 10
            && date.bytes().enumerate().all(|(i, b)| matches!(i, 4 | 7) == (b == b'-'))
            && date.bytes().enumerate().all(|(i, b)| matches!(i, 4 | 7) || b.is_ascii_digit());
        if iso {
            return date;
        }
        eprintln!("warning: SKYWEAVE_TODAY=`{date}` is not YYYY-MM-DD; using today's date");
    }
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    skyweave_core::calendar::date((seconds / 86_400) as i64)
}

/// JSON logs on stderr, `RUST_LOG` to filter (else `default_filter`).
/// Lines are written by a background thread so that a slow stderr never
/// blocks a request; keep the returned guard alive until exit, it flushes.
pub fn init_logging(default_filter: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // The writer's queue is preallocated: 128,000 lines by default, about 4 MiB
    // of resident memory for nothing. 4,096 lines absorb any burst a healthy
    // stderr cannot drain at once; beyond that lines are dropped, not waited for.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(4096)
        .lossy(true)
        .finish(std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_current_span(false)
        .try_init();
    guard
}
