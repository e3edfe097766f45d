//! `hold`: open many concurrent streams, wait until every one has delivered
//! its first SSE data line, then read the resident memory of the process(es)
//! under test while they are all still open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use http_body_util::BodyExt;
use tokio::sync::{Notify, Semaphore};

use crate::common::{keep_first, SseScanner, Target};
use crate::procfs::{read_all, Memory};

#[derive(Debug, Clone)]
pub struct Options {
    pub streams: usize,
    pub pids: Vec<u32>,
    pub include_children: bool,
    /// How long to wait for all streams to deliver their first data line.
    pub timeout: Duration,
    /// Pause between the last first-chunk and the memory reading.
    pub settle: Duration,
    /// At most this many streams are being opened at once.
    pub open_concurrency: usize,
}

#[derive(Default)]
struct Shared {
    open: AtomicU64,
    failed: AtomicU64,
    ended: AtomicU64,
    first_error: Mutex<Option<String>>,
    progress: Notify,
}

impl Shared {
    fn fail(&self, e: impl std::fmt::Display) {
        if let Ok(mut slot) = self.first_error.lock() {
            keep_first(&mut slot, e);
        }
        self.failed.fetch_add(1, Ordering::SeqCst);
        self.progress.notify_one();
    }
}

pub struct Report {
    pub url: String,
    pub requested: usize,
    pub open: u64,
    pub failed: u64,
    pub ended_early: u64,
    pub seconds_to_open: f64,
    pub idle: Vec<Memory>,
    pub loaded: Vec<Memory>,
    pub first_error: Option<String>,
}

fn sum_rss(m: &[Memory]) -> u64 {
    m.iter().map(|m| m.rss_kib).sum()
}

impl Report {
    pub fn complete(&self) -> bool {
        self.open as usize == self.requested && self.failed == 0 && self.ended_early == 0
    }

    pub fn to_json(&self) -> serde_json::Value {
        let procs = |ms: &[Memory]| -> Vec<serde_json::Value> {
            ms.iter()
                .map(|m| {
                    serde_json::json!({
                        "pid": m.pid, "name": m.name, "rss_kib": m.rss_kib, "hwm_kib": m.hwm_kib
                    })
                })
                .collect()
        };
        serde_json::json!({
            "mode": "hold",
            "url": self.url,
            "streams_requested": self.requested,
            "streams_open": self.open,
            "streams_failed": self.failed,
            "streams_ended_early": self.ended_early,
            "seconds_to_open": self.seconds_to_open,
            "idle_rss_kib": sum_rss(&self.idle),
            "rss_kib": sum_rss(&self.loaded),
            "rss_mib": sum_rss(&self.loaded) as f64 / 1024.0,
            "processes": procs(&self.loaded),
            "first_error": self.first_error,
        })
    }

    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{}: {} of {} streams open ({} failed, {} ended early) after {:.2}s\n",
            self.url,
            self.open,
            self.requested,
            self.failed,
            self.ended_early,
            self.seconds_to_open
        );
        out.push_str(&format!(
            "resident memory: idle {:.1} MiB, with streams open {:.1} MiB\n",
            sum_rss(&self.idle) as f64 / 1024.0,
            sum_rss(&self.loaded) as f64 / 1024.0
        ));
        for m in &self.loaded {
            out.push_str(&format!(
                "  pid {} ({}): VmRSS {:.1} MiB, VmHWM {:.1} MiB\n",
                m.pid,
                m.name,
                m.rss_kib as f64 / 1024.0,
                m.hwm_kib as f64 / 1024.0
            ));
        }
        if let Some(e) = &self.first_error {
            out.push_str(&format!("first error: {e}\n"));
        }
        out
    }
}

pub async fn run(target: Arc<Target>, opts: Options) -> Result<Report> {
    if opts.streams == 0 {
        bail!("--streams must be at least 1");
    }
    if opts.pids.is_empty() {
        bail!("--pid is required");
    }
    let idle = read_all(&opts.pids, opts.include_children)?;
    // Fail fast, with a clear message, if nothing listens there.
    drop(target.connect().await?);

    let shared = Arc::new(Shared::default());
    let gate = Arc::new(Semaphore::new(opts.open_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..opts.streams {
        let target = Arc::clone(&target);
        let shared = Arc::clone(&shared);
        let gate = Arc::clone(&gate);
        tasks.spawn(async move { hold_one(target, shared, gate).await });
    }

    let deadline = tokio::time::Instant::now() + opts.timeout;
    loop {
        let notified = shared.progress.notified();
        let settled = shared.open.load(Ordering::SeqCst) + shared.failed.load(Ordering::SeqCst);
        if settled as usize >= opts.streams {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    let seconds_to_open = started.elapsed().as_secs_f64();
    tokio::time::sleep(opts.settle).await;
    let loaded = read_all(&opts.pids, opts.include_children);
    let report = Report {
        url: target.url.clone(),
        requested: opts.streams,
        open: shared.open.load(Ordering::SeqCst),
        failed: shared.failed.load(Ordering::SeqCst),
        ended_early: shared.ended.load(Ordering::SeqCst),
        seconds_to_open,
        idle,
        loaded: loaded?,
        first_error: shared.first_error.lock().ok().and_then(|e| e.clone()),
    };
    // Dropping the tasks closes every connection.
    tasks.shutdown().await;
    Ok(report)
}

async fn hold_one(target: Arc<Target>, shared: Arc<Shared>, gate: Arc<Semaphore>) {
    let Ok(permit) = gate.acquire_owned().await else {
        return;
    };
    let mut sender = match target.connect().await {
        Ok(s) => s,
        Err(e) => return shared.fail(format_args!("{e:#}")),
    };
    let resp = match sender.send_request(target.request()).await {
        Ok(r) => r,
        Err(e) => return shared.fail(format_args!("request failed: {e}")),
    };
    if !resp.status().is_success() {
        return shared.fail(format_args!("HTTP status {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut scanner = SseScanner::default();
    let mut permit = Some(permit);
    let mut counted = false;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                if counted {
                    shared.ended.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                return shared.fail(format_args!("reading stream: {e}"));
            }
        };
        if let Some(data) = frame.data_ref() {
            if scanner.feed(data) > 0 && !counted {
                counted = true;
                drop(permit.take());
                shared.open.fetch_add(1, Ordering::SeqCst);
                shared.progress.notify_one();
            }
        }
    }
    if counted {
        shared.ended.fetch_add(1, Ordering::SeqCst);
    } else {
        shared.fail("stream ended without any SSE data line");
    }
}
