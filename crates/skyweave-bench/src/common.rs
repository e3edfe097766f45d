//! Pieces shared by the load modes: target parsing, connections, histograms
//! and report formatting.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Highest latency the histograms can hold, in microseconds (10 minutes).
const MAX_MICROS: u64 = 600_000_000;

/// Everything a worker needs to send one request.
#[derive(Debug)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    path: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Target {
    /// Parses `url` (plain `http://` only), resolves its host once and
    /// prepares the headers and body sent with every request.
    pub async fn new(url: &str, extra_headers: &[String], body: Bytes) -> Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("invalid URL {url:?}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                bail!("unsupported scheme {other:?} in {url:?}: only http:// is supported")
            }
            None => bail!("URL {url:?} has no scheme: use http://HOST:PORT/PATH"),
        }
        let authority =
            uri.authority().with_context(|| format!("URL {url:?} has no host"))?.clone();
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("cannot resolve {host:?}"))?
            .next()
            .with_context(|| format!("{host:?} resolved to no address"))?;
        let path: Uri = uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/")
            .parse()
            .context("invalid path")?;

        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_str(authority.as_str())?);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for raw in extra_headers {
            let (name, value) = raw
                .split_once(':')
                .with_context(|| format!("header {raw:?} is not in the form NAME:VALUE"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("invalid header name in {raw:?}"))?;
            let value = HeaderValue::from_str(value.trim())
                .with_context(|| format!("invalid header value in {raw:?}"))?;
            headers.insert(name, value);
        }
        Ok(Self { url: url.to_owned(), addr, path, headers, body })
    }

    /// A fresh POST request for this target.
    pub fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.path.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }

    /// Opens a keep-alive HTTP/1.1 connection to the target.
    pub async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {} ({})", self.addr, self.url))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake failed")?;
        tokio::spawn(async move {
            // Errors surface on the request side; nothing to do here.
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// The request body: a JSON literal, or the path of a file holding it.
pub fn load_body(arg: Option<&str>, default: &str) -> Result<Bytes> {
    let Some(arg) = arg else {
        return Ok(Bytes::copy_from_slice(default.as_bytes()));
    };
    let trimmed = arg.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return Ok(Bytes::copy_from_slice(arg.as_bytes()));
    }
    let path = arg.strip_prefix('@').unwrap_or(arg);
    if Path::new(path).is_file() {
        let data =
            std::fs::read(path).with_context(|| format!("cannot read body file {path:?}"))?;
        return Ok(Bytes::from(data));
    }
    bail!("--body {arg:?} is neither a JSON literal nor a readable file")
}

/// Parses durations such as `10s`, `500ms`, `2m`, `1.5s` or a bare number of
/// seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| format!("invalid duration {s:?} (examples: 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A latency histogram in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

pub fn record(hist: &mut Histogram<u64>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    hist.saturating_record(micros);
}

/// Percentiles of a histogram, in milliseconds.
pub fn latency_json(hist: &Histogram<u64>) -> serde_json::Value {
    let ms = |v: u64| v as f64 / 1000.0;
    if hist.is_empty() {
        return serde_json::json!(null);
    }
    serde_json::json!({
        "p50_ms": ms(hist.value_at_quantile(0.50)),
        "p90_ms": ms(hist.value_at_quantile(0.90)),
        "p99_ms": ms(hist.value_at_quantile(0.99)),
        "p999_ms": ms(hist.value_at_quantile(0.999)),
        "max_ms": ms(hist.max()),
        "mean_ms": hist.mean() / 1000.0,
    })
}

/// One human-readable line of percentiles.
pub fn latency_line(label: &str, hist: &Histogram<u64>) -> String {
    if hist.is_empty() {
        return format!("{label:<8} no samples");
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "{label:<8} p50 {:>8.3} ms   p90 {:>8.3} ms   p99 {:>8.3} ms   p99.9 {:>8.3} ms   max {:>8.3} ms",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0
    )
}

/// Counts SSE `data:` lines across arbitrarily split chunks.
#[derive(Debug)]
pub struct SseScanner {
    at_line_start: bool,
    matched: usize,
    pub events: u64,
}

impl Default for SseScanner {
    fn default() -> Self {
        Self { at_line_start: true, matched: 0, events: 0 }
    }
}

impl SseScanner {
    /// Feeds bytes; returns how many new `data:` lines started in them.
    pub fn feed(&mut self, buf: &[u8]) -> u64 {
        const PREFIX: &[u8] = b"data:";
        let before = self.events;
        for &b in buf {
            if b == b'\n' || b == b'\r' {
                self.at_line_start = true;
                self.matched = 0;
            } else if self.at_line_start {
                if b == PREFIX[self.matched] {
                    self.matched += 1;
                    if self.matched == PREFIX.len() {
                        self.events += 1;
                        self.at_line_start = false;
                        self.matched = 0;
                    }
                } else {
                    self.at_line_start = false;
                    self.matched = 0;
                }
            }
        }
        self.events - before
    }
}

/// Keeps the first error message seen, for the report.
pub fn keep_first(slot: &mut Option<String>, err: impl std::fmt::Display) {
    if slot.is_none() {
        *slot = Some(err.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn sse_counts_across_splits() {
        let text = b"data: {\"a\":1}\n\n: comment\ndata: {\"b\":2}\n\nevent: x\ndata: [DONE]\n\n";
        for split in 0..text.len() {
            let mut s = SseScanner::default();
            let n = s.feed(&text[..split]) + s.feed(&text[split..]);
            assert_eq!(n, 3, "split at {split}");
        }
        let mut s = SseScanner::default();
        assert_eq!(s.feed(b"not data: here\n"), 0);
    }

    #[test]
    fn body_literal_and_default() {
        assert_eq!(&load_body(None, "{}").unwrap()[..], b"{}");
        assert_eq!(&load_body(Some(" {\"x\":1}"), "{}").unwrap()[..], b" {\"x\":1}");
        assert!(load_body(Some("/no/such/file"), "{}").is_err());
    }

    #[tokio::test]
    async fn target_parsing() {
        let t = Target::new(
            "http://127.0.0.1:9/v1/chat/completions",
            &["X-Test: yes".to_owned()],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(t.addr.port(), 9);
        let req = t.request();
        assert_eq!(req.uri().path(), "/v1/chat/completions");
        assert_eq!(req.headers()["host"], "127.0.0.1:9");
        assert_eq!(req.headers()["x-test"], "yes");
        assert!(Target::new("https://x/", &[], Bytes::new()).await.is_err());
        assert!(Target::new("http://127.0.0.1/", &["bad".to_owned()], Bytes::new()).await.is_err());
    }

    #[tokio::test]
    async fn refused_connection_is_an_error_not_a_panic() {
        // Bind then drop a listener so the port is very likely closed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = Target::new(&format!("http://127.0.0.1:{port}/"), &[], Bytes::new()).await.unwrap();
        let err = t.connect().await.unwrap_err();
        assert!(format!("{err:#}").contains("cannot connect"));
    }
}
