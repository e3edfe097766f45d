//! `skyweave sync`, `copy`, `check SRC DST` and `ls`: the data plane.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skyweave_core::estate::StoreSpec;
use skyweave_data::engine::{self, Endpoint, Options, Progress};
use skyweave_data::location;
use skyweave_data::plan::{Action, Plan};

use crate::cli::{CheckArgs, TransferArgs};

/// The estate's named stores, if an estate is given.
fn stores(config: Option<&Path>) -> anyhow::Result<Result<Vec<StoreSpec>, String>> {
    let Some(config) = config else { return Ok(Ok(Vec::new())) };
    Ok(super::load_estate(config)?.map(|loaded| loaded.estate.stores))
}

/// Parses locations; `Err` is the message for a bad one.
fn parse(texts: &[String], stores: &[StoreSpec]) -> Result<Vec<location::Location>, String> {
    texts
        .iter()
        .map(|text| location::parse(text, stores).map_err(|e| format!("error: {e}")))
        .collect()
}

/// Opens parsed locations; `Err` is the message for one that cannot be.
fn opened_all(locations: &[location::Location]) -> Result<Vec<Endpoint>, String> {
    locations.iter().map(|l| l.open().map_err(|e| format!("error: {e}"))).collect()
}

/// Parses and opens locations; `Err` is the message for a bad one.
fn open(texts: &[String], stores: &[StoreSpec]) -> Result<Vec<Endpoint>, String> {
    opened_all(&parse(texts, stores)?)
}

/// Sources must exist (a missing directory is no empty source: with
/// `--delete` it would empty the destination) and must not overlap the
/// destination.
fn check_sources(sources: &[location::Location], dest: &location::Location) -> Result<(), String> {
    for source in sources {
        if let location::Kind::Local(dir) = &source.kind {
            if !dir.is_dir() {
                return Err(format!(
                    "error: the source directory {} does not exist\n    fix: check the path",
                    dir.display()
                ));
            }
        }
        if source.overlaps(dest) {
            return Err(format!(
                "error: {} and {} overlap: the copy would land in its own source (and --delete \
                 would remove source files)\n    fix: choose a destination outside the source",
                source.describe(),
                dest.describe()
            ));
        }
    }
    Ok(())
}

fn state_dir(args: &TransferArgs) -> PathBuf {
    if let Some(dir) = &args.state_dir {
        return dir.clone();
    }
    if let Ok(dir) = std::env::var("SKYWEAVE_STATE_DIR") {
        return dir.into();
    }
    let base = std::env::var("XDG_STATE_HOME").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".local/state")
    });
    base.join("skyweave/uploads")
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly.
fn emit(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Shows progress until dropped: a redrawn line on a terminal, a plain
/// line every 5 s otherwise (on stderr, so that `--json` output stays
/// clean).
struct Ticker {
    task: tokio::task::JoinHandle<()>,
}

impl Ticker {
    fn start(progress: Arc<Progress>, verb: &'static str) -> Ticker {
        let terminal = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let every = if terminal { Duration::from_millis(250) } else { Duration::from_secs(5) };
            let mut interval = tokio::time::interval(every);
            interval.tick().await;
            loop {
                interval.tick().await;
                let files = progress.files_done.load(Ordering::Relaxed);
                let files_total = progress.files_total.load(Ordering::Relaxed);
                let bytes = progress.bytes_done.load(Ordering::Relaxed);
                let total = progress.bytes_total.load(Ordering::Relaxed).max(1);
                let seconds = started.elapsed().as_secs_f64().max(1e-3);
                let rate = bytes as f64 / seconds;
                let eta =
                    if rate > 0.0 { (total.saturating_sub(bytes)) as f64 / rate } else { 0.0 };
                let line = format!(
                    "{verb}: {files}/{files_total} files, {:.1}/{:.1} MB ({:.0}%), {:.1} MB/s, ETA {:.0} s",
                    mb(bytes),
                    mb(total),
                    100.0 * bytes as f64 / total as f64,
                    rate / 1e6,
                    eta
                );
                if terminal {
                    let bar_width = 24;
                    let filled = (bar_width as f64 * bytes as f64 / total as f64)
                        .min(bar_width as f64) as usize;
                    eprint!(
                        "\r[{}{}] {line}\x1b[K",
                        "#".repeat(filled),
                        "-".repeat(bar_width - filled)
                    );
                } else {
                    eprintln!("{line}");
                }
            }
        });
        Ticker { task }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.task.abort();
        if std::io::stderr().is_terminal() {
            eprint!("\r\x1b[K");
        }
    }
}

fn describe_plan(plan: &Plan, sources: &[Endpoint], dest: &Endpoint, dry_run: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan for {}: copy {} files ({:.1} MB), skip {} ({:.1} MB), delete {} ({:.1} MB); estimated egress {:.4} USD",
        dest.place.location,
        plan.copy.files,
        mb(plan.copy.bytes),
        plan.skip.files,
        mb(plan.skip.bytes),
        plan.delete.files,
        mb(plan.delete.bytes),
        plan.egress_usd
    );
    for replica in &plan.replicas {
        let _ = writeln!(
            out,
            "  from {}: {} files, {:.1} MB at {:.3} USD/GB ({}) = {:.4} USD",
            replica.location,
            replica.files,
            mb(replica.bytes),
            replica.usd_per_gb,
            replica.scope,
            replica.usd
        );
    }
    if dry_run {
        for action in &plan.actions {
            let _ = match action {
                Action::Copy { path, size, from, reason, usd } => writeln!(
                    out,
                    "  copy   {path} ({size} bytes) from {} [{}] {usd:.6} USD",
                    sources[*from].place.location,
                    serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ),
                Action::Skip { path, .. } => {
                    writeln!(out, "  skip   {path} (the manifest vouches for it)")
                }
                Action::Delete { path, size } => writeln!(out, "  delete {path} ({size} bytes)"),
            };
        }
    }
    out
}

pub async fn transfer(args: &TransferArgs, sync: bool) -> anyhow::Result<ExitCode> {
    if args.delete && !sync {
        eprintln!("error: `copy` never deletes; use `skyweave sync --delete`");
        return Ok(ExitCode::from(2));
    }
    if !(1..=1024).contains(&args.parallel) || !(5..=5 * 1024).contains(&args.part_size_mib) {
        eprintln!(
            "error: --parallel must be within 1..=1024 and --part-size-mib within 5..=5120 (S3 \
             refuses parts under 5 MiB)"
        );
        return Ok(ExitCode::from(2));
    }
    let mut texts = args.locations.clone();
    let destination = texts.pop().expect("clap requires one location");
    texts.extend(args.from.iter().cloned());
    if texts.is_empty() {
        eprintln!("error: name a source and a destination (or the destination and --from SOURCE)");
        return Ok(ExitCode::from(2));
    }
    let stores = match stores(args.config.as_deref())? {
        Ok(stores) => stores,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    // Parsed once: checked, then opened.
    let opened = parse(&texts, &stores)
        .and_then(|sources| Ok((sources, parse(std::slice::from_ref(&destination), &stores)?)))
        .and_then(|(sources, dest)| {
            check_sources(&sources, &dest[0])?;
            Ok((opened_all(&sources)?, opened_all(&dest)?.remove(0)))
        });
    let (sources, dest) = match opened {
        Ok(opened) => opened,
        Err(message) => {
            eprintln!("{message}");
            return Ok(ExitCode::from(2));
        }
    };
    let prepared = match engine::prepare(&sources, &dest, args.delete).await {
        Ok(prepared) => prepared,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    let plan = prepared.plan.clone();
    let options = Options {
        part_size: args.part_size_mib * 1024 * 1024,
        parallelism: args.parallel,
        verify_remote: args.verify_remote,
        state_dir: state_dir(args),
    };
    if args.dry_run {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "plan": plan }))?);
        } else {
            emit(&describe_plan(&plan, &sources, &dest, true));
            emit("(dry run: nothing was copied or deleted)\n");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        print!("{}", describe_plan(&plan, &sources, &dest, false));
        println!(
            "memory bound: {} MiB ({} MiB parts x {} in flight)",
            options.memory_bound() / (1024 * 1024),
            args.part_size_mib,
            args.parallel
        );
    }
    let progress = Arc::new(Progress::default());
    let ticker = Ticker::start(progress.clone(), if sync { "sync" } else { "copy" });
    let report = engine::execute(prepared, &sources, &dest, &options, &progress).await;
    drop(ticker);
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    // Uploads remembered for files this sync no longer copies are dropped.
    let copying = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Copy { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    let aborted =
        engine::abandon_stale_uploads(dest.store.as_ref(), &options.state_dir, &copying).await;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "plan": plan, "report": report, "aborted_uploads": aborted })
            )?
        );
    } else {
        let seconds = report.seconds.max(1e-6);
        println!(
            "copied {} files, {:.1} MB in {:.2} s ({:.1} MB/s, {:.0} files/s); {} skipped, {} deleted{}{}",
            report.copied_files,
            mb(report.copied_bytes),
            report.seconds,
            mb(report.copied_bytes) / seconds,
            report.copied_files as f64 / seconds,
            report.skipped_files,
            report.deleted_files,
            if report.resumed_bytes > 0 {
                format!("; resumed uploads saved sending {:.1} MB", mb(report.resumed_bytes))
            } else {
                String::new()
            },
            if args.verify_remote {
                format!("; {} re-read from the destination and verified", report.verified_files)
            } else {
                String::new()
            },
        );
        if aborted > 0 {
            println!("aborted {aborted} unfinished uploads of files no longer copied");
        }
        for failure in &report.failures {
            eprintln!("failed: {}: {}", failure.path, failure.error);
        }
    }
    Ok(if report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    if args.locations.len() != 2 {
        eprintln!("error: `skyweave check` verifies a DESTINATION against a SOURCE: give both");
        return Ok(ExitCode::from(2));
    }
    let stores = match stores(args.config.as_deref())? {
        Ok(stores) => stores,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let endpoints = match open(&args.locations, &stores) {
        Ok(endpoints) => endpoints,
        Err(message) => {
            eprintln!("{message}");
            return Ok(ExitCode::from(2));
        }
    };
    let progress = Arc::new(Progress::default());
    let ticker = Ticker::start(progress.clone(), "check");
    let report = engine::check(&endpoints[0], &endpoints[1], args.parallel.max(1), &progress).await;
    drop(ticker);
    let report = match report {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mut out = String::new();
        for (path, difference) in &report.differences {
            let _ = writeln!(out, "{path}: {}", serde_json::to_string(difference)?);
        }
        emit(&out);
        println!(
            "{} files ({:.1} MB) match, {} differ; read and hashed in {:.2} s",
            report.matched,
            mb(report.matched_bytes),
            report.differences.len(),
            report.seconds
        );
    }
    Ok(if report.differences.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub async fn ls(location: &str, config: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let stores = match stores(config)? {
        Ok(stores) => stores,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let endpoint = match open(&[location.to_string()], &stores) {
        Ok(mut endpoints) => endpoints.remove(0),
        Err(message) => {
            eprintln!("{message}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut listing = match engine::with_retries(|| endpoint.store.list()).await {
        Ok(listing) => listing,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    listing.retain(|m| !m.key.starts_with(skyweave_data::manifest::RESERVED_PREFIX));
    listing.sort_by(|a, b| a.key.cmp(&b.key));
    if json {
        let rows: Vec<_> = listing
            .iter()
            .map(|m| serde_json::json!({ "path": m.key, "size": m.size, "version": m.version }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let mut out = String::new();
        for meta in &listing {
            let _ = writeln!(out, "{:>14} {}", meta.size, meta.key);
        }
        let _ = writeln!(
            out,
            "{} files, {:.1} MB",
            listing.len(),
            mb(listing.iter().map(|m| m.size).sum())
        );
        emit(&out);
    }
    Ok(ExitCode::SUCCESS)
}
