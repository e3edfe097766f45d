//! Closed-loop load: each connection sends a request, waits for the whole
//! response, and sends the next one, over one keep-alive HTTP/1.1 connection.
//! Used by both `rps` (plain responses) and `stream` (SSE responses, where
//! the time to the first `data:` line is measured as well).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use tokio::time::{sleep, timeout_at};

use crate::common::{
    keep_first, latency_json, latency_line, new_histogram, record, SseScanner, Target,
};
use crate::procfs::total_cpu_seconds;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Measure the whole request/response time.
    Rps,
    /// Also measure the time to the first SSE `data:` line.
    Stream,
}

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

/// What one connection saw inside the measurement window.
struct Worker {
    total: Histogram<u64>,
    ttft: Histogram<u64>,
    ok: u64,
    /// Non-2xx responses.
    http_errors: u64,
    /// Connect, send or body errors, and streams without any `data:` line.
    transport_errors: u64,
    reconnects: u64,
    events: u64,
    first_error: Option<String>,
}

impl Worker {
    fn new() -> Self {
        Self {
            total: new_histogram(),
            ttft: new_histogram(),
            ok: 0,
            http_errors: 0,
            transport_errors: 0,
            reconnects: 0,
            events: 0,
            first_error: None,
        }
    }
}

pub struct Report {
    pub mode: Mode,
    pub url: String,
    pub connections: usize,
    pub seconds: f64,
    pub ok: u64,
    pub http_errors: u64,
    pub transport_errors: u64,
    pub reconnects: u64,
    pub events: u64,
    pub total: Histogram<u64>,
    pub ttft: Histogram<u64>,
    pub first_error: Option<String>,
    /// CPU seconds used by the `--pid` processes during the window.
    pub cpu_seconds: Option<f64>,
}

impl Report {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    pub fn errors(&self) -> u64 {
        self.http_errors + self.transport_errors
    }

    /// CPU time of the measured processes per successful request.
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        (self.ok > 0).then(|| cpu * 1e6 / self.ok as f64)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "mode": match self.mode { Mode::Rps => "rps", Mode::Stream => "stream" },
            "url": self.url,
            "connections": self.connections,
            "seconds": self.seconds,
            "requests": self.ok,
            "rps": self.rps(),
            "errors": self.errors(),
            "http_errors": self.http_errors,
            "transport_errors": self.transport_errors,
            "reconnects": self.reconnects,
            "latency": latency_json(&self.total),
            "first_error": self.first_error,
        });
        if let Some(cpu) = self.cpu_seconds {
            v["cpu"] = serde_json::json!({
                "seconds": cpu,
                "utilisation": cpu / self.seconds,
                "us_per_request": self.cpu_us_per_request(),
            });
        }
        if self.mode == Mode::Stream {
            v["ttft"] = latency_json(&self.ttft);
            v["events_per_stream"] = serde_json::json!(if self.ok > 0 {
                self.events as f64 / self.ok as f64
            } else {
                0.0
            });
        }
        v
    }

    pub fn to_text(&self) -> String {
        let what = match self.mode {
            Mode::Rps => "requests",
            Mode::Stream => "streams",
        };
        let mut out = format!(
            "{} over {} connections for {:.1}s\n{what}: {}   {what}/s: {:.1}   errors: {} (http {}, transport {})   reconnects: {}\n",
            self.url,
            self.connections,
            self.seconds,
            self.ok,
            self.rps(),
            self.errors(),
            self.http_errors,
            self.transport_errors,
            self.reconnects,
        );
        if self.mode == Mode::Stream {
            out.push_str(&latency_line("ttft", &self.ttft));
            out.push('\n');
            out.push_str(&latency_line("total", &self.total));
            out.push('\n');
            if self.ok > 0 {
                out.push_str(&format!(
                    "data lines per stream: {:.1}\n",
                    self.events as f64 / self.ok as f64
                ));
            }
        } else {
            out.push_str(&latency_line("latency", &self.total));
            out.push('\n');
        }
        if let (Some(cpu), Some(per)) = (self.cpu_seconds, self.cpu_us_per_request()) {
            out.push_str(&format!(
                "CPU of measured processes: {:.2}s ({:.0}% of one CPU), {per:.1} µs per {}\n",
                cpu,
                100.0 * cpu / self.seconds,
                match self.mode {
                    Mode::Rps => "request",
                    Mode::Stream => "stream",
                }
            ));
        }
        if let Some(e) = &self.first_error {
            out.push_str(&format!("first error: {e}\n"));
        }
        out
    }
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

    // Fail early, too, if a --pid cannot be read.
    if !opts.pids.is_empty() {
        total_cpu_seconds(&opts.pids, opts.include_children)?;
    }
    let sampler = (!opts.pids.is_empty()).then(|| {
        let pids = opts.pids.clone();
        let children = opts.include_children;
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_start.into()).await;
            let before = total_cpu_seconds(&pids, children)?;
            tokio::time::sleep_until(end.into()).await;
            let after = total_cpu_seconds(&pids, children)?;
            anyhow::Ok(after - before)
        })
    });

    let mut tasks = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        let target = Arc::clone(&target);
        let mode = opts.mode;
        tasks.push(tokio::spawn(
            async move { worker(target, mode, measure_start, end.into()).await },
        ));
    }
    let mut workers = Vec::with_capacity(tasks.len());
    for t in tasks {
        workers.push(t.await.context("load task failed")?);
    }
    let mut report = Report {
        mode: opts.mode,
        url: target.url.clone(),
        connections: opts.connections,
        seconds: opts.duration.as_secs_f64(),
        ok: 0,
        http_errors: 0,
        transport_errors: 0,
        reconnects: 0,
        events: 0,
        total: new_histogram(),
        ttft: new_histogram(),
        first_error: None,
        cpu_seconds: None,
    };
    if let Some(sampler) = sampler {
        let cpu = sampler
            .await
            .context("CPU sampler failed")?
            .context("reading the CPU time of --pid")?;
        report.cpu_seconds = Some(cpu);
    }
    for w in workers {
        report.ok += w.ok;
        report.http_errors += w.http_errors;
        report.transport_errors += w.transport_errors;
        report.reconnects += w.reconnects;
        report.events += w.events;
        report.total.add(&w.total).context("merging histograms")?;
        report.ttft.add(&w.ttft).context("merging histograms")?;
        if report.first_error.is_none() {
            report.first_error = w.first_error;
        }
    }
    Ok(report)
}

async fn worker(
    target: Arc<Target>,
    mode: Mode,
    measure_start: Instant,
    end: tokio::time::Instant,
) -> Worker {
    let mut w = Worker::new();
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
        let outcome = timeout_at(end, one_request(s, &target, mode, t0)).await;
        let done = Instant::now();
        let Ok(outcome) = outcome else {
            break; // still in flight when the run ended: not counted
        };
        let in_window = done >= measure_start;
        match outcome {
            Ok(Outcome { status, ttft, events }) => {
                if !status.is_success() {
                    if in_window {
                        w.http_errors += 1;
                        keep_first(&mut w.first_error, format_args!("HTTP status {status}"));
                    }
                } else if mode == Mode::Stream && ttft.is_none() {
                    if in_window {
                        w.transport_errors += 1;
                        keep_first(&mut w.first_error, "stream ended without any SSE data line");
                    }
                } else if in_window {
                    w.ok += 1;
                    w.events += events;
                    record(&mut w.total, done - t0);
                    if let Some(t) = ttft {
                        record(&mut w.ttft, t);
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

struct Outcome {
    status: http::StatusCode,
    ttft: Option<Duration>,
    events: u64,
}

async fn one_request(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    target: &Target,
    mode: Mode,
    t0: Instant,
) -> Result<Outcome> {
    let resp = sender.send_request(target.request()).await.context("request failed")?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut scanner = SseScanner::default();
    let mut ttft = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading response body")?;
        if mode == Mode::Stream {
            if let Some(data) = frame.data_ref() {
                if scanner.feed(data) > 0 && ttft.is_none() {
                    ttft = Some(t0.elapsed());
                }
            }
        }
    }
    Ok(Outcome { status, ttft, events: scanner.events })
}
