//! Closed-loop load: each connection sends a request, waits for the whole
//! response, and sends the next one, over one keep-alive HTTP/1.1 connection.
//! Used by both `rps` (plain responses) and `stream` (SSE responses, where
//! the time to the first `data:` line is measured as well).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::time::{sleep, timeout_at};

use crate::common::{keep_first, record, Target};
use crate::report::{
    finish_cpu_sampler, one_request, spawn_cpu_sampler, Mode, Outcome, Report, Stats,
};

#[derive(Debug, Clone)]
pub struct Options {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub mode: Mode,
    /// Processes whose CPU time is measured over the window (may be empty).
    pub pids: Vec<u32>,
    pub include_children: bool,
}

pub async fn run(target: Arc<Target>, opts: Options) -> Result<Report> {
    if opts.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if opts.duration.is_zero() {
        bail!("--duration must be greater than zero");
    }
    // Fail fast, with a clear message, if nothing listens there.
    drop(target.connect().await?);

    let start = Instant::now();
    let measure_start = start + opts.warmup;
    let end = measure_start + opts.duration;
    let sampler = spawn_cpu_sampler(&opts.pids, opts.include_children, measure_start, end)?;

    let mut tasks = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        let target = Arc::clone(&target);
        let mode = opts.mode;
        tasks.push(tokio::spawn(
            async move { worker(target, mode, measure_start, end.into()).await },
        ));
    }
    let mut stats = Stats::default();
    for t in tasks {
        stats.merge(t.await.context("load task failed")?)?;
    }
    Ok(Report {
        mode: opts.mode,
        url: target.url.clone(),
        connections: opts.connections,
        seconds: opts.duration.as_secs_f64(),
        stats,
        cpu_seconds: finish_cpu_sampler(sampler).await?,
        open: None,
    })
}

async fn worker(
    target: Arc<Target>,
    mode: Mode,
    measure_start: Instant,
    end: tokio::time::Instant,
) -> Stats {
    let mut w = Stats::default();
    let mut sender = None;
    loop {
        if tokio::time::Instant::now() >= end {
            break;
        }
        let s = match &mut sender {
            Some(s) => s,
            None => match timeout_at(end, target.connect()).await {
                Err(_) => break,
                Ok(Ok(s)) => sender.insert(s),
                Ok(Err(e)) => {
                    if Instant::now() >= measure_start {
                        w.transport_errors += 1;
                        keep_first(&mut w.first_error, format_args!("{e:#}"));
                    }
                    // Do not spin on a refused port.
                    let _ = timeout_at(end, sleep(Duration::from_millis(20))).await;
                    continue;
                }
            },
        };
        // The server may have closed an idle or `Connection: close` connection.
        match timeout_at(end, s.ready()).await {
            Err(_) => break,
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                sender = None;
                w.reconnects += 1;
                continue;
            }
        }

        let t0 = Instant::now();
        let outcome = timeout_at(end, one_request(s, &target, mode)).await;
        let done = Instant::now();
        let Ok(outcome) = outcome else {
            break; // still in flight when the run ended: not counted
        };
        let in_window = done >= measure_start;
        match outcome {
            Ok(Outcome { status, first_data, events }) => {
                if !status.is_success() {
                    if in_window {
                        w.http_errors += 1;
                        keep_first(&mut w.first_error, format_args!("HTTP status {status}"));
                    }
                } else if mode == Mode::Stream && first_data.is_none() {
                    if in_window {
                        w.transport_errors += 1;
                        keep_first(&mut w.first_error, "stream ended without any SSE data line");
                    }
                } else if in_window {
                    w.ok += 1;
                    w.events += events;
                    record(&mut w.total, done - t0);
                    if let Some(t) = first_data {
                        record(&mut w.ttft, t - t0);
                    }
                }
            }
            Err(e) => {
                sender = None;
                if in_window {
                    w.transport_errors += 1;
                    keep_first(&mut w.first_error, format_args!("{e:#}"));
                }
            }
        }
    }
    w
}
