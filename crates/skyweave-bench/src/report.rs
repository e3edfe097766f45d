//! What `rps` and `stream` report, closed loop or open loop, and the pieces
//! both loops share: one request/response exchange and the CPU sampler.

use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use tokio::task::JoinHandle;

use crate::common::{latency_json, latency_line, new_histogram, SseScanner, Target};
use crate::procfs::total_cpu_seconds;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Measure the whole request/response time.
    Rps,
    /// Also measure the time to the first SSE `data:` line.
    Stream,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Rps => "rps",
            Mode::Stream => "stream",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Mode::Rps => "request",
            Mode::Stream => "stream",
        }
    }
}

/// What the connections saw inside the measurement window.
#[derive(Debug)]
pub struct Stats {
    /// Request to end of response (open loop: from the intended send time).
    pub total: Histogram<u64>,
    /// Request to first SSE `data:` line (streams only).
    pub ttft: Histogram<u64>,
    pub ok: u64,
    /// Non-2xx responses.
    pub http_errors: u64,
    /// Connect, send or body errors, and streams without any `data:` line.
    pub transport_errors: u64,
    pub reconnects: u64,
    pub events: u64,
    pub first_error: Option<String>,
}

impl Default for Stats {
    fn default() -> Self {
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

impl Stats {
    pub fn merge(&mut self, other: Stats) -> Result<()> {
        self.ok += other.ok;
        self.http_errors += other.http_errors;
        self.transport_errors += other.transport_errors;
        self.reconnects += other.reconnects;
        self.events += other.events;
        self.total.add(&other.total).context("merging histograms")?;
        self.ttft.add(&other.ttft).context("merging histograms")?;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// Figures only an open-loop (fixed arrival rate) run has.
#[derive(Debug)]
pub struct OpenStats {
    /// Requested arrival rate, requests (or streams) per second.
    pub rate: f64,
    /// Requests whose intended send time fell in the measurement window.
    pub scheduled: u64,
    /// Successful responses that completed inside the window, whatever their
    /// intended time: the achieved rate is this divided by the window.
    pub completed_in_window: u64,
    /// Scheduled requests with no outcome by the end of the drain time.
    pub unfinished: u64,
    /// When the pacer released each request minus its intended time: the
    /// load generator's own timer lateness.
    pub pacer_lag: Histogram<u64>,
    /// When a connection took each request minus its intended time: the
    /// pacer's lateness plus any wait for a free connection.
    pub send_delay: Histogram<u64>,
}

#[derive(Debug)]
pub struct Report {
    pub mode: Mode,
    pub url: String,
    pub connections: usize,
    pub seconds: f64,
    pub stats: Stats,
    /// CPU seconds used by the `--pid` processes during the window.
    pub cpu_seconds: Option<f64>,
    /// Set for open-loop runs.
    pub open: Option<OpenStats>,
}

impl Report {
    /// Successful responses completed inside the measured window.
    fn completed(&self) -> u64 {
        match &self.open {
            Some(o) => o.completed_in_window,
            None => self.stats.ok,
        }
    }

    /// Achieved rate: successful responses completed per second of the window.
    pub fn rps(&self) -> f64 {
        self.completed() as f64 / self.seconds
    }

    pub fn errors(&self) -> u64 {
        self.stats.http_errors
            + self.stats.transport_errors
            + self.open.as_ref().map_or(0, |o| o.unfinished)
    }

    /// CPU time of the measured processes per response completed in the window.
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        let n = self.completed();
        (n > 0).then(|| cpu * 1e6 / n as f64)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.stats;
        let mut v = serde_json::json!({
            "mode": self.mode.name(),
            "loop": if self.open.is_some() { "open" } else { "closed" },
            "url": self.url,
            "connections": self.connections,
            "seconds": self.seconds,
            "requests": s.ok,
            "rps": self.rps(),
            "errors": self.errors(),
            "http_errors": s.http_errors,
            "transport_errors": s.transport_errors,
            "reconnects": s.reconnects,
            "latency": latency_json(&s.total),
            "first_error": s.first_error,
        });
        if let Some(cpu) = self.cpu_seconds {
            v["cpu"] = serde_json::json!({
                "seconds": cpu,
                "utilisation": cpu / self.seconds,
                "us_per_request": self.cpu_us_per_request(),
            });
        }
        if self.mode == Mode::Stream {
            v["ttft"] = latency_json(&s.ttft);
            v["events_per_stream"] =
                serde_json::json!(if s.ok > 0 { s.events as f64 / s.ok as f64 } else { 0.0 });
        }
        if let Some(o) = &self.open {
            v["target_rate"] = serde_json::json!(o.rate);
            v["scheduled"] = serde_json::json!(o.scheduled);
            v["unfinished"] = serde_json::json!(o.unfinished);
            v["pacer_lag"] = latency_json(&o.pacer_lag);
            v["send_delay"] = latency_json(&o.send_delay);
        }
        v
    }

    pub fn to_text(&self) -> String {
        let s = &self.stats;
        let what = format!("{}s", self.mode.noun());
        let mut out = match &self.open {
            None => format!(
                "{} closed loop over {} connections for {:.1}s\n{what}: {}   {what}/s: {:.1}   errors: {} (http {}, transport {})   reconnects: {}\n",
                self.url,
                self.connections,
                self.seconds,
                s.ok,
                self.rps(),
                self.errors(),
                s.http_errors,
                s.transport_errors,
                s.reconnects,
            ),
            Some(o) => format!(
                "{} open loop at {:.0} {what}/s over {} connections for {:.1}s\nscheduled: {}   ok: {}   achieved {what}/s: {:.1}   errors: {} (http {}, transport {}, unfinished {})   reconnects: {}\nlatencies are from the intended send time\n",
                self.url,
                o.rate,
                self.connections,
                self.seconds,
                o.scheduled,
                s.ok,
                self.rps(),
                self.errors(),
                s.http_errors,
                s.transport_errors,
                o.unfinished,
                s.reconnects,
            ),
        };
        if self.mode == Mode::Stream {
            out.push_str(&latency_line("ttft", &s.ttft));
            out.push('\n');
            out.push_str(&latency_line("total", &s.total));
            out.push('\n');
            if s.ok > 0 {
                out.push_str(&format!(
                    "data lines per stream: {:.1}\n",
                    s.events as f64 / s.ok as f64
                ));
            }
        } else {
            out.push_str(&latency_line("latency", &s.total));
            out.push('\n');
        }
        if let Some(o) = &self.open {
            out.push_str(&latency_line("pacer", &o.pacer_lag));
            out.push('\n');
            out.push_str(&latency_line("send", &o.send_delay));
            out.push('\n');
        }
        if let (Some(cpu), Some(per)) = (self.cpu_seconds, self.cpu_us_per_request()) {
            out.push_str(&format!(
                "CPU of measured processes: {:.2}s ({:.0}% of one CPU), {per:.1} µs per {}\n",
                cpu,
                100.0 * cpu / self.seconds,
                self.mode.noun()
            ));
        }
        if let Some(e) = &s.first_error {
            out.push_str(&format!("first error: {e}\n"));
        }
        out
    }
}

/// Starts measuring the CPU time of `pids` between `from` and `to`, if any
/// were given. Fails at once if a pid cannot be read.
pub fn spawn_cpu_sampler(
    pids: &[u32],
    include_children: bool,
    from: Instant,
    to: Instant,
) -> Result<Option<JoinHandle<Result<f64>>>> {
    if pids.is_empty() {
        return Ok(None);
    }
    total_cpu_seconds(pids, include_children)?;
    let pids = pids.to_vec();
    Ok(Some(tokio::spawn(async move {
        tokio::time::sleep_until(from.into()).await;
        let before = total_cpu_seconds(&pids, include_children)?;
        tokio::time::sleep_until(to.into()).await;
        let after = total_cpu_seconds(&pids, include_children)?;
        anyhow::Ok(after - before)
    })))
}

pub async fn finish_cpu_sampler(sampler: Option<JoinHandle<Result<f64>>>) -> Result<Option<f64>> {
    match sampler {
        None => Ok(None),
        Some(s) => Ok(Some(
            s.await.context("CPU sampler failed")?.context("reading the CPU time of --pid")?,
        )),
    }
}

/// How one exchange ended.
pub struct Outcome {
    pub status: http::StatusCode,
    /// When the first SSE `data:` line arrived (streams only).
    pub first_data: Option<Instant>,
    pub events: u64,
}

/// Sends one request on `sender` and reads the whole response.
pub async fn one_request(
    sender: &mut SendRequest<Full<Bytes>>,
    target: &Target,
    mode: Mode,
) -> Result<Outcome> {
    let resp = sender.send_request(target.request()).await.context("request failed")?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut scanner = SseScanner::default();
    let mut first_data = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading response body")?;
        if mode == Mode::Stream {
            if let Some(data) = frame.data_ref() {
                if scanner.feed(data) > 0 && first_data.is_none() {
                    first_data = Some(Instant::now());
                }
            }
        }
    }
    Ok(Outcome { status, first_data, events: scanner.events })
}
