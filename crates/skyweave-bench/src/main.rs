//! `skyweave-load`: a small, low-overhead HTTP/1.1 load generator for the
//! side-by-side benchmark in `bench/run.sh`.
//!
//! * `rps`    keep-alive POSTs; requests/s and latency percentiles.
//! * `stream` streaming POSTs; time to first SSE data line and total time.
//! * `hold`   many concurrent open streams; resident memory of the process under test.
//!
//! `rps` and `stream` run closed loop (each connection sends its next request
//! when the previous response has been read) unless `--rate` is given, which
//! makes them open loop at that fixed arrival rate.

mod closed_loop;
mod common;
mod hold;
mod open_loop;
mod procfs;
mod report;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use common::{load_body, parse_duration, Target};
use report::Mode;

const DEFAULT_BODY: &str = r#"{"model":"bench-model","messages":[{"role":"user","content":"hi"}]}"#;
const DEFAULT_STREAM_BODY: &str =
    r#"{"model":"bench-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

#[derive(Parser, Debug)]
#[command(
    name = "skyweave-load",
    version,
    about = "HTTP/1.1 load generator for the skyweave benchmark"
)]
struct Cli {
    /// Runtime worker threads for the load generator itself.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Common {
    /// Full URL to POST to, e.g. http://127.0.0.1:18080/v1/chat/completions
    #[arg(long)]
    url: String,
    /// Request body: a JSON literal, or a file holding it (optionally prefixed with @).
    #[arg(long)]
    body: Option<String>,
    /// Extra request header, NAME:VALUE (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Print a JSON report instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct LoopArgs {
    /// Concurrent keep-alive connections, one request in flight on each.
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// Open loop: send this many requests (or streams) per second in all,
    /// each at its scheduled time on the first free connection, and measure
    /// latency from that scheduled time. Without it: closed loop.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Open loop: after the measured window, how long to wait for requests
    /// still queued or in flight before counting them as unfinished.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain: Duration,
    /// Measured time, after the warm-up (e.g. 10s, 500ms).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load applied before measuring starts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Also report the CPU time this process used in the measured window
    /// (repeatable; values are summed).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Also count the direct children of each --pid (e.g. nginx workers).
    #[arg(long)]
    include_children: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Non-streaming load (closed loop, or open loop with --rate): requests/s
    /// and latency percentiles.
    Rps {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: LoopArgs,
    },
    /// Streaming load (closed loop, or open loop with --rate): time to first
    /// SSE data line and total time.
    Stream {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: LoopArgs,
    },
    /// Hold many streams open and read the resident memory of a process.
    Hold {
        #[command(flatten)]
        common: Common,
        /// Concurrent streams to open and keep open.
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// Process whose VmRSS is read (repeatable; values are summed).
        #[arg(long = "pid", required = true)]
        pids: Vec<u32>,
        /// Also count the direct children of each --pid (e.g. nginx workers).
        #[arg(long)]
        include_children: bool,
        /// Give up waiting for first data lines after this long.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Pause after the last stream opened, before reading memory.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        settle: Duration,
        /// Streams being opened at the same time.
        #[arg(long, default_value_t = 128)]
        open_concurrency: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads).enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skyweave-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skyweave-load: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Rps { common, load } => load_run(common, load, Mode::Rps, DEFAULT_BODY).await,
        Command::Stream { common, load } => {
            load_run(common, load, Mode::Stream, DEFAULT_STREAM_BODY).await
        }
        Command::Hold {
            common,
            streams,
            pids,
            include_children,
            timeout,
            settle,
            open_concurrency,
        } => {
            let target = target(&common, DEFAULT_STREAM_BODY).await?;
            let report = hold::run(
                target,
                hold::Options {
                    streams,
                    pids,
                    include_children,
                    timeout,
                    settle,
                    open_concurrency,
                },
            )
            .await?;
            print(common.json, report.to_json(), report.to_text());
            Ok(if report.complete() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "skyweave-load: only {} of {} streams were open when memory was read",
                    report.open.saturating_sub(report.ended_early),
                    report.requested
                );
                ExitCode::from(2)
            })
        }
    }
}

async fn target(common: &Common, default_body: &str) -> Result<Arc<Target>> {
    let body = load_body(common.body.as_deref(), default_body)?;
    let target =
        Target::new(&common.url, &common.headers, body).await.context("bad --url or --header")?;
    Ok(Arc::new(target))
}

async fn load_run(
    common: Common,
    load: LoopArgs,
    mode: Mode,
    default_body: &str,
) -> Result<ExitCode> {
    let target = target(&common, default_body).await?;
    let report = match load.rate {
        None => {
            closed_loop::run(
                target,
                closed_loop::Options {
                    connections: load.connections,
                    warmup: load.warmup,
                    duration: load.duration,
                    mode,
                    pids: load.pids,
                    include_children: load.include_children,
                },
            )
            .await?
        }
        Some(rate) => {
            open_loop::run(
                target,
                open_loop::Options {
                    connections: load.connections,
                    rate,
                    warmup: load.warmup,
                    duration: load.duration,
                    drain: load.drain,
                    mode,
                    pids: load.pids,
                    include_children: load.include_children,
                },
            )
            .await?
        }
    };
    print(common.json, report.to_json(), report.to_text());
    Ok(if report.stats.ok == 0 {
        eprintln!("skyweave-load: no request succeeded");
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// A positive, finite number of requests per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("invalid rate {s:?}: give requests per second, e.g. 5000")),
    }
}

fn print(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        print!("{text}");
    }
}
