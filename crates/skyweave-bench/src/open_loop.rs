//! Open-loop load at a fixed arrival rate (`--rate`), for `rps` and `stream`.
//!
//! Request `i` is meant to be sent at `start + i / rate`, whatever happened
//! to the requests before it. A pacer thread releases each request at that
//! intended time into one FIFO queue; the first free keep-alive connection
//! (one request in flight each) takes it. If every connection is busy the
//! request waits in the queue, and since every latency is measured from the
//! *intended* send time, that wait is counted: a slow server cannot hide its
//! queueing by slowing the load generator down (coordinated omission), as it
//! can in the closed loop.
//!
//! The pacer sleeps on a dedicated thread with `std::thread::sleep` (a
//! high-resolution kernel timer, with the thread's timer slack lowered when
//! the kernel allows), because the async runtime's timers tick in whole
//! milliseconds, which would add up to 1 ms of jitter to every figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::{mpsc, Mutex};
use tokio::time::timeout_at;

use crate::common::{keep_first, new_histogram, record, Target};
use crate::report::{
    finish_cpu_sampler, one_request, spawn_cpu_sampler, Mode, OpenStats, Outcome, Report, Stats,
};

#[derive(Debug, Clone)]
pub struct Options {
    pub connections: usize,
    /// Requests (or streams) per second, over all connections.
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    /// How long after the window to wait for requests still queued or in
    /// flight; those without an outcome by then count as unfinished.
    pub drain: Duration,
    pub mode: Mode,
    /// Processes whose CPU time is measured over the window (may be empty).
    pub pids: Vec<u32>,
    pub include_children: bool,
}

/// When each request is meant to be sent: request `i` at `start + i / rate`.
/// Computed from `i` each time, so rounding never accumulates into drift.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    rate: f64,
}

impl Schedule {
    pub fn new(start: Instant, rate: f64) -> Self {
        assert!(rate.is_finite() && rate > 0.0, "rate must be positive");
        Self { start, rate }
    }

    /// Intended send time of request `i`.
    pub fn at(&self, i: u64) -> Instant {
        self.start + Duration::from_nanos((i as f64 * 1e9 / self.rate).round() as u64)
    }

    /// The first request intended at or after `t`.
    fn first_from(&self, t: Instant) -> u64 {
        if t <= self.start {
            return 0;
        }
        let guess = ((t - self.start).as_secs_f64() * self.rate).floor() as u64;
        let mut i = guess.saturating_sub(1);
        while i > 0 && self.at(i - 1) >= t {
            i -= 1;
        }
        while self.at(i) < t {
            i += 1;
        }
        i
    }

    /// How many requests are intended inside `window`.
    pub fn count_in(&self, window: Window) -> u64 {
        self.first_from(window.end).saturating_sub(self.first_from(window.start))
    }
}

/// The measured window, `[start, end)`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn contains(&self, t: Instant) -> bool {
        self.start <= t && t < self.end
    }
}

/// One request to send, released by the pacer at its intended time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub intended: Instant,
    /// When the pacer actually released it.
    pub released: Instant,
}

/// Time as the pacer sees it; a fake one in tests.
pub trait Clock {
    fn now(&self) -> Instant;
    fn sleep_until(&mut self, t: Instant);
}

struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&mut self, t: Instant) {
        std::thread::sleep(t.saturating_duration_since(Instant::now()));
    }
}

/// Releases every request of `schedule` intended before `end`, each as soon
/// as its intended time has come. A pacer that has fallen behind (the thread
/// was not scheduled in time, or `send` was slow) releases the overdue
/// requests at once, back to back: it never skips a request nor moves its
/// intended time. Stops early if `send` returns false. Returns how many
/// requests were released.
pub fn pace(
    schedule: &Schedule,
    end: Instant,
    clock: &mut impl Clock,
    mut send: impl FnMut(Ticket) -> bool,
) -> u64 {
    let mut i = 0;
    loop {
        let intended = schedule.at(i);
        if intended >= end {
            return i;
        }
        if clock.now() < intended {
            clock.sleep_until(intended);
        }
        if !send(Ticket { intended, released: clock.now() }) {
            return i;
        }
        i += 1;
    }
}

/// Lowers the calling thread's timer slack (Linux default 50 µs) to 1 ns so
/// that its sleeps end on time. Best effort: `/proc/TID/timerslack_ns` needs
/// Linux ≥ 4.6 and may be refused; the sleeps are then up to 50 µs later.
fn reduce_timer_slack() -> bool {
    let Ok(link) = std::fs::read_link("/proc/thread-self") else { return false };
    // "PID/task/TID"; /proc/TID/timerslack_ns is that thread's own setting.
    let Some(tid) = link.file_name().and_then(|t| t.to_str()) else { return false };
    std::fs::write(format!("/proc/{tid}/timerslack_ns"), "1").is_ok()
}

/// What one connection saw.
#[derive(Debug)]
struct Tally {
    stats: Stats,
    completed_in_window: u64,
    /// Requests intended in the window that got an outcome.
    settled: u64,
    pacer_lag: Histogram<u64>,
    send_delay: Histogram<u64>,
}

/// How one request went, with the times that matter.
struct Exchange {
    /// When a free connection took the request from the queue.
    picked: Instant,
    done: Instant,
    result: Result<Outcome, String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            stats: Stats::default(),
            completed_in_window: 0,
            settled: 0,
            pacer_lag: new_histogram(),
            send_delay: new_histogram(),
        }
    }

    /// Accounts for one request intended at `intended`. Latencies are from
    /// `intended`; only requests intended inside `window` are counted, except
    /// that the achieved rate counts successes *completed* inside it.
    fn settle(&mut self, window: Window, mode: Mode, ticket: Ticket, x: Exchange) {
        let intended = ticket.intended;
        let s = &mut self.stats;
        let ok = match &x.result {
            Ok(o) => o.status.is_success() && (mode == Mode::Rps || o.first_data.is_some()),
            Err(_) => false,
        };
        if ok && window.contains(x.done) {
            self.completed_in_window += 1;
        }
        if !window.contains(intended) {
            return;
        }
        self.settled += 1;
        record(&mut self.pacer_lag, ticket.released.saturating_duration_since(intended));
        record(&mut self.send_delay, x.picked.saturating_duration_since(intended));
        match x.result {
            Err(e) => {
                s.transport_errors += 1;
                keep_first(&mut s.first_error, e);
            }
            Ok(o) if !o.status.is_success() => {
                s.http_errors += 1;
                keep_first(&mut s.first_error, format_args!("HTTP status {}", o.status));
            }
            Ok(Outcome { first_data: None, .. }) if mode == Mode::Stream => {
                s.transport_errors += 1;
                keep_first(&mut s.first_error, "stream ended without any SSE data line");
            }
            Ok(o) => {
                s.ok += 1;
                s.events += o.events;
                record(&mut s.total, x.done.saturating_duration_since(intended));
                if let Some(t) = o.first_data {
                    record(&mut s.ttft, t.saturating_duration_since(intended));
                }
            }
        }
    }

    fn merge(&mut self, other: Tally) -> Result<()> {
        self.stats.merge(other.stats)?;
        self.completed_in_window += other.completed_in_window;
        self.settled += other.settled;
        self.pacer_lag.add(&other.pacer_lag).context("merging histograms")?;
        self.send_delay.add(&other.send_delay).context("merging histograms")?;
        Ok(())
    }
}

type Queue = Arc<Mutex<mpsc::UnboundedReceiver<Ticket>>>;

pub async fn run(target: Arc<Target>, opts: Options) -> Result<Report> {
    if opts.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if opts.duration.is_zero() {
        bail!("--duration must be greater than zero");
    }
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        bail!("--rate must be a positive number of requests per second");
    }
    // Open every connection up front (failing fast if nothing listens), so
    // that the first requests do not pay for the handshakes.
    let mut senders = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        senders.push(target.connect().await?);
    }

    let start = Instant::now();
    let schedule = Schedule::new(start, opts.rate);
    let window = Window { start: start + opts.warmup, end: start + opts.warmup + opts.duration };
    let hard_end = window.end + opts.drain;
    let sampler = spawn_cpu_sampler(&opts.pids, opts.include_children, window.start, window.end)?;

    let (tx, rx) = mpsc::unbounded_channel();
    let queue: Queue = Arc::new(Mutex::new(rx));
    let mut tasks = Vec::with_capacity(opts.connections);
    for sender in senders {
        let target = Arc::clone(&target);
        let queue = Arc::clone(&queue);
        let mode = opts.mode;
        tasks.push(tokio::spawn(async move {
            worker(target, mode, sender, queue, window, hard_end).await
        }));
    }
    let pacer = tokio::task::spawn_blocking(move || {
        let _ = reduce_timer_slack();
        pace(&schedule, window.end, &mut SystemClock, |t| tx.send(t).is_ok())
    });
    pacer.await.context("pacer thread failed")?;

    let mut tally = Tally::new();
    for t in tasks {
        tally.merge(t.await.context("load task failed")?)?;
    }
    let scheduled = schedule.count_in(window);
    Ok(Report {
        mode: opts.mode,
        url: target.url.clone(),
        connections: opts.connections,
        seconds: opts.duration.as_secs_f64(),
        cpu_seconds: finish_cpu_sampler(sampler).await?,
        open: Some(OpenStats {
            rate: opts.rate,
            scheduled,
            completed_in_window: tally.completed_in_window,
            unfinished: scheduled.saturating_sub(tally.settled),
            pacer_lag: tally.pacer_lag,
            send_delay: tally.send_delay,
        }),
        stats: tally.stats,
    })
}

/// One keep-alive connection: takes the next queued request whenever it is
/// free, until the pacer is done and the queue is empty.
async fn worker(
    target: Arc<Target>,
    mode: Mode,
    sender: SendRequest<Full<Bytes>>,
    queue: Queue,
    window: Window,
    hard_end: Instant,
) -> Tally {
    let mut tally = Tally::new();
    let mut sender = Some(sender);
    let deadline = tokio::time::Instant::from_std(hard_end);
    loop {
        // The lock is held while waiting, so idle connections queue up for
        // requests in turn.
        let ticket = queue.lock().await.recv().await;
        let Some(ticket) = ticket else { break };
        if Instant::now() >= hard_end {
            continue; // past the drain time: left unfinished
        }
        let picked = Instant::now();
        let exchange = exchange(&target, mode, &mut sender, &mut tally.stats.reconnects);
        match timeout_at(deadline, exchange).await {
            Ok((done, result)) => {
                tally.settle(window, mode, ticket, Exchange { picked, done, result });
            }
            Err(_) => sender = None, // unfinished; the connection is in an unknown state
        }
    }
    tally
}

/// Sends one request on the connection, reconnecting first if it was closed.
async fn exchange(
    target: &Target,
    mode: Mode,
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    reconnects: &mut u64,
) -> (Instant, Result<Outcome, String>) {
    if let Some(s) = sender {
        // The server may have closed an idle or `Connection: close` connection.
        if s.ready().await.is_err() {
            *sender = None;
            *reconnects += 1;
        }
    }
    let s = match sender {
        Some(s) => s,
        None => match target.connect().await {
            Ok(s) => sender.insert(s),
            Err(e) => return (Instant::now(), Err(format!("{e:#}"))),
        },
    };
    let result = one_request(s, target, mode).await.map_err(|e| format!("{e:#}"));
    if result.is_err() {
        *sender = None;
    }
    (Instant::now(), result)
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn us(d: Duration) -> u64 {
        d.as_micros() as u64
    }

    #[test]
    fn schedule_is_exact_and_does_not_drift() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 2000.0);
        assert_eq!(s.at(0), t0);
        assert_eq!(s.at(1) - t0, Duration::from_micros(500));
        assert_eq!(s.at(2000) - t0, Duration::from_secs(1));
        assert_eq!(s.at(1_000_000) - t0, Duration::from_secs(500));
        // A rate whose interval is not a whole number of nanoseconds.
        let s = Schedule::new(t0, 3.0);
        assert_eq!(s.at(1) - t0, Duration::from_nanos(333_333_333));
        assert_eq!(s.at(2) - t0, Duration::from_nanos(666_666_667));
        assert_eq!(s.at(3) - t0, Duration::from_secs(1));
        assert_eq!(s.at(3_000_000) - t0, Duration::from_secs(1_000_000));
    }

    #[test]
    fn requests_in_window() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 5000.0);
        let w = Window { start: t0 + Duration::from_secs(2), end: t0 + Duration::from_secs(12) };
        assert_eq!(s.count_in(w), 50_000);
        // The start is inside the window, the end is not.
        assert!(!w.contains(s.at(9_999)));
        assert!(w.contains(s.at(10_000)));
        assert!(w.contains(s.at(59_999)));
        assert!(!w.contains(s.at(60_000)));

        let s = Schedule::new(t0, 3.0);
        let w = Window { start: t0 + 500 * MS, end: t0 + 1500 * MS };
        assert_eq!(s.count_in(w), 3); // at 0.667 s, 1 s and 1.333 s
        assert_eq!(s.count_in(Window { start: t0, end: t0 }), 0);
        assert_eq!(s.count_in(Window { start: t0, end: t0 + Duration::from_secs(1) }), 3);
    }

    /// A clock that only moves when the test moves it or the pacer sleeps.
    #[derive(Clone)]
    struct FakeClock {
        now: Rc<Cell<Instant>>,
        sleeps: Rc<RefCell<Vec<Instant>>>,
    }

    impl FakeClock {
        fn new(t0: Instant) -> Self {
            Self { now: Rc::new(Cell::new(t0)), sleeps: Rc::default() }
        }
        fn advance(&self, d: Duration) {
            self.now.set(self.now.get() + d);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.now.get()
        }
        fn sleep_until(&mut self, t: Instant) {
            assert!(t > self.now.get(), "asked to sleep until a time already past");
            self.sleeps.borrow_mut().push(t);
            self.now.set(t);
        }
    }

    #[test]
    fn pacer_releases_each_request_at_its_intended_time() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 1000.0);
        let clock = FakeClock::new(t0);
        let mut released = Vec::new();
        let n = pace(&s, t0 + 10 * MS, &mut clock.clone(), |t| {
            assert_eq!(t.released, clock.now());
            released.push((t.intended, t.released));
            true
        });
        assert_eq!(n, 10);
        let want: Vec<(Instant, Instant)> = (0..10).map(|i| (s.at(i), s.at(i))).collect();
        assert_eq!(released, want);
        // Slept until each one after the first, which was due at once.
        assert_eq!(*clock.sleeps.borrow(), (1..10).map(|i| s.at(i)).collect::<Vec<_>>());
    }

    #[test]
    fn late_pacer_catches_up_without_skipping_or_shifting() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 1000.0);
        let clock = FakeClock::new(t0);
        let mut released = Vec::new();
        let n = pace(&s, t0 + 10 * MS, &mut clock.clone(), |t| {
            assert_eq!(t.released, clock.now());
            released.push((t.intended, t.released));
            if t.intended == s.at(2) {
                // Releasing request 2 took 3.5 ms (the thread was preempted, say).
                clock.advance(Duration::from_micros(3500));
            }
            true
        });
        assert_eq!(n, 10);
        let intended: Vec<Instant> = released.iter().map(|r| r.0).collect();
        assert_eq!(intended, (0..10).map(|i| s.at(i)).collect::<Vec<_>>());
        // Requests 3, 4 and 5 (due at 3, 4 and 5 ms) went out at once at
        // 5.5 ms, keeping their intended times; 6 onwards on time again.
        let lag: Vec<u64> = released.iter().map(|&(i, at)| us(at - i)).collect();
        assert_eq!(lag, [0, 0, 0, 2500, 1500, 500, 0, 0, 0, 0]);
        assert_eq!(
            *clock.sleeps.borrow(),
            [1, 2, 6, 7, 8, 9].iter().map(|&i| s.at(i)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn pacer_stops_when_the_queue_is_gone() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 1000.0);
        let mut left = 3;
        let n = pace(&s, t0 + Duration::from_secs(1), &mut FakeClock::new(t0), |_| {
            left -= 1;
            left > 0
        });
        assert_eq!(n, 2);
    }

    fn response(status: u16, first_data: Option<Instant>) -> Result<Outcome, String> {
        Ok(Outcome {
            status: http::StatusCode::from_u16(status).unwrap(),
            first_data,
            events: u64::from(first_data.is_some()) * 5,
        })
    }

    #[test]
    fn latency_is_measured_from_the_intended_time() {
        let t0 = Instant::now();
        let w = Window { start: t0 + 1000 * MS, end: t0 + 2000 * MS };
        let mut t = Tally::new();
        // Intended at 1.5 s, released by the pacer 1 ms late, taken by a
        // connection 3 ms late, first data line 1 ms later, done 1 ms after.
        let i = t0 + 1500 * MS;
        let ticket = Ticket { intended: i, released: i + MS };
        let x = Exchange {
            picked: i + 3 * MS,
            done: i + 5 * MS,
            result: response(200, Some(i + 4 * MS)),
        };
        t.settle(w, Mode::Stream, ticket, x);
        assert_eq!((t.stats.ok, t.settled, t.completed_in_window, t.stats.events), (1, 1, 1, 5));
        // One value each; min() is exact where max() is rounded up to the
        // histogram's resolution.
        assert_eq!(t.stats.total.min(), 5000);
        assert_eq!(t.stats.ttft.min(), 4000);
        assert_eq!(t.pacer_lag.min(), 1000);
        assert_eq!(t.send_delay.min(), 3000);
    }

    #[test]
    fn window_accounting() {
        let t0 = Instant::now();
        let w = Window { start: t0 + 1000 * MS, end: t0 + 2000 * MS };
        let mut t = Tally::new();
        let x = |picked: Instant, done: Instant, r| Exchange { picked, done, result: r };
        let tk = |i: Instant| Ticket { intended: i, released: i };
        // Warm-up request completing inside the window: counts towards the
        // achieved rate only.
        let i = t0 + 999 * MS;
        t.settle(w, Mode::Rps, tk(i), x(i, i + 2 * MS, response(200, None)));
        assert_eq!((t.stats.ok, t.settled, t.completed_in_window), (0, 0, 1));
        assert!(t.stats.total.is_empty());
        // Window request completing after it: latency counted, rate not.
        let i = t0 + 1999 * MS;
        t.settle(w, Mode::Rps, tk(i), x(i, i + 2 * MS, response(200, None)));
        assert_eq!((t.stats.ok, t.settled, t.completed_in_window), (1, 1, 1));
        assert_eq!(t.stats.total.min(), 2000);
        // Failures inside the window.
        let i = t0 + 1200 * MS;
        t.settle(w, Mode::Rps, tk(i), x(i, i + MS, response(503, None)));
        t.settle(w, Mode::Stream, tk(i), x(i, i + MS, response(200, None)));
        t.settle(w, Mode::Rps, tk(i), x(i, i + MS, Err("connection reset".into())));
        assert_eq!((t.stats.http_errors, t.stats.transport_errors), (1, 2));
        assert_eq!((t.stats.ok, t.settled, t.completed_in_window), (1, 4, 1));
        assert_eq!(t.stats.first_error.as_deref(), Some("HTTP status 503 Service Unavailable"));
    }

    /// A minimal keep-alive HTTP/1.1 server answering every request with an
    /// SSE-looking body of two `data:` lines.
    async fn serve(listener: tokio::net::TcpListener) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const BODY: &str = "data: {\"x\":1}\n\ndata: [DONE]\n\n";
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let headers = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
                    let len: usize = headers
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() < head + 4 + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    }
                    buf.drain(..head + 4 + len);
                    let resp =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{BODY}", BODY.len());
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    #[tokio::test]
    async fn every_scheduled_request_is_sent_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/chat/completions", listener.local_addr().unwrap());
        tokio::spawn(serve(listener));
        let target = Arc::new(Target::new(&url, &[], Bytes::from_static(b"{}")).await.unwrap());
        for mode in [Mode::Rps, Mode::Stream] {
            let opts = Options {
                connections: 4,
                rate: 500.0,
                warmup: 100 * MS,
                duration: 200 * MS,
                // Long enough for any machine: only counts are checked.
                drain: Duration::from_secs(60),
                mode,
                pids: vec![std::process::id()],
                include_children: false,
            };
            let r = run(Arc::clone(&target), opts).await.unwrap();
            let o = r.open.as_ref().unwrap();
            assert_eq!(o.scheduled, 100, "{mode:?}");
            assert_eq!(r.stats.ok, 100, "{mode:?}: {:?}", r.stats.first_error);
            assert_eq!((r.errors(), o.unfinished), (0, 0), "{mode:?}");
            assert_eq!(r.stats.total.len(), 100);
            assert_eq!(o.send_delay.len(), 100);
            assert!(r.cpu_seconds.is_some());
            let json = r.to_json();
            assert_eq!(json["loop"], "open");
            assert_eq!(json["scheduled"], 100);
            if mode == Mode::Stream {
                assert_eq!(r.stats.ttft.len(), 100);
                assert_eq!(json["events_per_stream"], 2.0);
            }
        }
    }

    #[tokio::test]
    async fn bad_rate_is_refused() {
        let target = Arc::new(Target::new("http://127.0.0.1:9/", &[], Bytes::new()).await.unwrap());
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let opts = Options {
                connections: 1,
                rate,
                warmup: MS,
                duration: MS,
                drain: MS,
                mode: Mode::Rps,
                pids: vec![],
                include_children: false,
            };
            let err = run(Arc::clone(&target), opts).await.unwrap_err();
            assert!(err.to_string().contains("--rate"), "{err}");
        }
    }
}
