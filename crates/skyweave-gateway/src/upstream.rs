//! The HTTP client every provider calls its upstream with: HTTP/1.1 over
//! TCP, or over TLS (rustls, the webpki roots, ALPN `http/1.1`), with
//! kept-alive connections pooled per origin.
//!
//! Why not hyper's pooled client (which this module used before) or
//! reqwest (which the data plane uses): on the gateway's hot path their
//! machinery cost more than the proxying itself. hyper's client runs every
//! connection as its own task and hands each request and answer across
//! channels to it, and builds a header map of every answer; measured with
//! `bench/instructions.sh`, that was about a third of the user-space
//! instructions of a proxied completion. Here the request's own task writes
//! the request and reads the answer, the head is parsed in place
//! ([`wire`]), and only the headers a caller asks for are looked up. The
//! wire format is small and fixed (a request with a known length; answers
//! with a length, chunked or until close), and [`wire`] is tested and
//! fuzzed without sockets.
//!
//! A pooled connection idle for a second or more is read once without
//! waiting before reuse: one the upstream closed, or that received anything
//! since its last answer, is dropped. A request is sent again (once, on a
//! new connection) only when its pooled connection turned out closed while
//! the request was being written; an answer that never comes is the
//! gateway's to fail over, as with hyper's client before. Connecting tries
//! each of the host's addresses with an equal share of the connect timeout.
//!
//! While a request's write waits (a large body, an upstream slow to read),
//! the connection is read too: an upstream that answers before taking the
//! whole body (413, 401) and stops reading is heard, its answer returned and
//! the connection then closed.
//!
//! The client follows no redirects and sets no timeout but the connect
//! timeout (TCP and TLS): first-token and total timeouts belong to the
//! gateway, which fails over when they pass and drops the request, which
//! closes its connection.

mod wire;

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, Method, StatusCode, Uri};
use skyweave_core::estate::Timeouts;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_util::either::Either;
use wire::{Chunked, Framing};

const USER_AGENT_VALUE: &str = concat!("skyweave/", env!("CARGO_PKG_VERSION"));

/// Largest response body, or single streamed event, taken from an upstream.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How long a connection may sit idle in the pool before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most idle connections kept, over all origins of one client.
const MAX_IDLE: usize = 1024;
/// A body up to this size is written with its head in one write.
const JOIN_BODY_BYTES: usize = 64 * 1024;
/// Free space kept in a connection's read buffer before each read.
const READ_SPACE: usize = 8 * 1024;
/// A pooled connection idle this long is checked before reuse. Under load
/// connections idle for microseconds and the check (a read that finds
/// nothing) is skipped; an upstream closing kept-alive connections (uvicorn
/// after 5 s, most load balancers after a minute) is noticed before a
/// request is sent.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);
/// How long [`BodyStream::finish`] waits for the end of a body's framing.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// An upstream URL, parsed once when its provider is built: what each
/// request needs of it (origin, request target, `host` line) is ready.
#[derive(Clone)]
pub(crate) struct Endpoint(Arc<EndpointParts>);

struct EndpointParts {
    uri: Uri,
    /// Why no request can be sent to it (not http(s), no host), if so.
    origin: Result<Arc<Origin>, &'static str>,
    /// Path and query.
    target: Box<str>,
    /// `host: ...\r\n`, as the URL wrote the host and port.
    host_line: Box<[u8]>,
}

/// Parses an upstream URL built from a validated endpoint.
pub(crate) fn parse_endpoint(text: String) -> Endpoint {
    let uri = Uri::try_from(text).expect("endpoints are validated as URLs when the estate loads");
    let written = uri.host().unwrap_or_default();
    let origin = match uri.scheme_str() {
        Some("https") => Ok(true),
        Some("http") => Ok(false),
        _ => Err("the upstream URL is not http(s)"),
    }
    .and_then(|tls| {
        let host = written.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(written);
        if host.is_empty() {
            return Err("the upstream URL has no host");
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Arc::new(Origin { tls, host: host.into(), port }))
    });
    let mut host_line = format!("host: {written}");
    if let Some(port) = uri.port_u16() {
        host_line.push_str(&format!(":{port}"));
    }
    host_line.push_str("\r\n");
    let parts = EndpointParts {
        origin,
        target: uri.path_and_query().map_or("/", |p| p.as_str()).into(),
        host_line: host_line.into_bytes().into(),
        uri,
    };
    Endpoint(Arc::new(parts))
}

impl Endpoint {
    pub(crate) fn uri(&self) -> &Uri {
        &self.0.uri
    }

    fn origin(&self) -> Result<&Arc<Origin>, TransportError> {
        self.0.origin.as_ref().map_err(|why| TransportError::connect((*why).into()))
    }
}

/// A failure to get an answer (connect, TLS, a connection that broke, an
/// answer that is not HTTP), or to read its body. The message names no URL
/// and no header, so no key.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct TransportError {
    /// No connection could be made: nothing reached the upstream.
    pub(crate) connect: bool,
    message: String,
}

impl TransportError {
    fn connect(message: String) -> TransportError {
        TransportError { connect: true, message }
    }

    fn failed(message: impl std::fmt::Display) -> TransportError {
        TransportError {
            connect: false,
            message: format!("the upstream request failed: {message}"),
        }
    }

    fn cut(message: impl std::fmt::Display) -> TransportError {
        TransportError {
            connect: false,
            message: format!("the upstream response was cut: {message}"),
        }
    }
}

/// A pooled client; clones share the pool.
#[derive(Clone)]
pub(crate) struct HttpClient {
    shared: Arc<Shared>,
}

struct Shared {
    connect_timeout: Duration,
    /// Pooled connections idle this long are checked before reuse.
    check_after: Duration,
    tls: Arc<rustls::ClientConfig>,
    pool: Mutex<Pool>,
}

struct Pool {
    idle: Vec<Idle>,
    swept: Instant,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl HttpClient {
    pub(crate) fn new(timeouts: &Timeouts) -> HttpClient {
        HttpClient::with_tls(timeouts, tls_config())
    }

    fn with_tls(timeouts: &Timeouts, tls: Arc<rustls::ClientConfig>) -> HttpClient {
        let pool = Pool { idle: Vec::new(), swept: Instant::now() };
        let shared = Shared {
            connect_timeout: timeouts.connect,
            check_after: CHECK_IDLE_AFTER,
            tls,
            pool: Mutex::new(pool),
        };
        HttpClient { shared: Arc::new(shared) }
    }

    pub(crate) fn post(&self, endpoint: &Endpoint) -> UpstreamRequest {
        self.request(Method::POST, endpoint)
    }

    pub(crate) fn get(&self, endpoint: &Endpoint) -> UpstreamRequest {
        self.request(Method::GET, endpoint)
    }

    fn request(&self, method: Method, endpoint: &Endpoint) -> UpstreamRequest {
        UpstreamRequest {
            shared: self.shared.clone(),
            method,
            endpoint: endpoint.clone(),
            headers: Vec::with_capacity(256),
            body: Bytes::new(),
        }
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
    }
}

impl Shared {
    /// The most recently idled live connection to `origin`, if any. One
    /// idle for [`Shared::check_after`] or longer is first read without
    /// waiting: if the upstream closed it or sent anything since its last
    /// answer (an idle-timeout 408, stray bytes), it is dropped, so no
    /// request is sent on it and no stale bytes are read as an answer.
    fn checkout(&self, origin: &Arc<Origin>) -> Option<Conn> {
        loop {
            let now = Instant::now();
            let mut idle = {
                let mut pool = self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let at =
                    pool.idle.iter().rposition(|idle| Origin::same(&idle.conn.origin, origin))?;
                pool.idle.swap_remove(at)
            };
            let idled = now.duration_since(idle.since);
            if idled >= IDLE_TIMEOUT {
                continue;
            }
            if idled < self.check_after || idle.conn.is_quiet() {
                return Some(idle.conn);
            }
        }
    }

    fn checkin(&self, conn: Conn) {
        let now = Instant::now();
        let mut pool = self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if now.duration_since(pool.swept) > IDLE_TIMEOUT / 8 {
            pool.idle.retain(|idle| now.duration_since(idle.since) < IDLE_TIMEOUT);
            pool.swept = now;
        }
        if pool.idle.len() < MAX_IDLE {
            pool.idle.push(Idle { conn, since: now });
        }
    }

    async fn connect(&self, origin: &Arc<Origin>) -> Result<Conn, TransportError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let attempt = async {
            let tcp = connect_tcp(origin, deadline).await.map_err(|error| {
                TransportError::connect(format!("could not connect to the upstream: {error}"))
            })?;
            // Small requests and answers go out at once, not after Nagle's wait.
            let _ = tcp.set_nodelay(true);
            let io = if origin.tls {
                let name = rustls::pki_types::ServerName::try_from(origin.host.to_string())
                    .map_err(|error| {
                        TransportError::connect(format!(
                            "could not connect to the upstream: not a TLS server name: {error}"
                        ))
                    })?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|error| {
                        TransportError::connect(format!(
                            "could not connect to the upstream: the TLS handshake failed: {error}"
                        ))
                    })?;
                Io::Right(Box::new(tls))
            } else {
                Io::Left(tcp)
            };
            Ok(Conn { io, buf: BytesMut::with_capacity(READ_SPACE), origin: origin.clone() })
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::connect(format!(
                "could not connect to the upstream within {} ms",
                self.connect_timeout.as_millis()
            ))),
        }
    }
}

/// A TCP connection to the first of the host's addresses that answers.
/// Each address gets an equal share of the time left, so one that drops
/// packets (a broken IPv6 route, say) does not use up the whole connect
/// timeout before the next is tried.
async fn connect_tcp(origin: &Origin, deadline: tokio::time::Instant) -> io::Result<TcpStream> {
    let addresses: Vec<std::net::SocketAddr> =
        tokio::net::lookup_host((&*origin.host, origin.port)).await?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    for (i, address) in addresses.iter().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let share = left / u32::try_from(addresses.len() - i).unwrap_or(u32::MAX);
        match tokio::time::timeout(share, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => last = error,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "no answer in time"),
        }
    }
    Err(last)
}

/// The TLS settings of every upstream connection: the webpki roots, TLS 1.2
/// and 1.3, ALPN `http/1.1`.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            tls_config_with(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        })
        .clone()
}

fn tls_config_with(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Where a connection goes: scheme, host (without the brackets of an IPv6
/// literal) and port. Made once per endpoint.
#[derive(PartialEq, Eq)]
struct Origin {
    tls: bool,
    host: Box<str>,
    port: u16,
}

impl Origin {
    /// Endpoints of one provider share no `Origin` value but often the
    /// origin itself (chat and embeddings URLs of one server).
    fn same(a: &Arc<Origin>, b: &Arc<Origin>) -> bool {
        Arc::ptr_eq(a, b) || a == b
    }
}

/// One connection: its stream, the bytes read from it and not yet used,
/// and where it goes.
struct Conn {
    io: Io,
    buf: BytesMut,
    origin: Arc<Origin>,
}

impl Conn {
    /// Reads more into the buffer; 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SPACE / 2 {
            self.buf.reserve(READ_SPACE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Nothing to read and not closed: one read attempt that does not wait.
    fn is_quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        self.poll_fill(&mut cx).is_pending()
    }

    /// Reads what has arrived (up to a head's worth), without waiting.
    fn drain_ready(&mut self) {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        while self.buf.len() <= wire::MAX_HEAD_BYTES
            && matches!(self.poll_fill(&mut cx), Poll::Ready(Ok(n)) if n > 0)
        {}
    }
}

/// A connection's stream: TCP, or TLS over TCP.
type Io = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// One request being built. The head is written as headers are added, so
/// sending only adds the length.
pub(crate) struct UpstreamRequest {
    shared: Arc<Shared>,
    method: Method,
    endpoint: Endpoint,
    /// Header lines, each `name: value\r\n`.
    headers: Vec<u8>,
    body: Bytes,
}

impl UpstreamRequest {
    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> UpstreamRequest {
        // Header names and values cannot hold CR or LF: the line is whole.
        self.headers.extend_from_slice(name.as_str().as_bytes());
        self.headers.extend_from_slice(b": ");
        self.headers.extend_from_slice(value.as_bytes());
        self.headers.extend_from_slice(b"\r\n");
        self
    }

    /// A JSON body.
    pub(crate) fn json(self, body: Bytes) -> UpstreamRequest {
        let mut request = self.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        request.body = body;
        request
    }

    /// A credential header. A value that is not a valid header (a key with a
    /// newline, say) is left out: the upstream then refuses the request as
    /// unauthenticated, which names the problem without the key.
    pub(crate) fn secret_header(self, name: HeaderName, value: &str) -> UpstreamRequest {
        match HeaderValue::from_str(value) {
            Ok(value) => self.header(name, value),
            Err(_) => self,
        }
    }

    pub(crate) fn bearer_auth(self, token: &str) -> UpstreamRequest {
        self.secret_header(AUTHORIZATION, &format!("Bearer {token}"))
    }

    /// Sends the request and reads the answer's head.
    pub(crate) async fn send(self) -> Result<UpstreamResponse, TransportError> {
        let origin = self.endpoint.origin()?;
        let parts = &*self.endpoint.0;
        let length =
            (self.method == Method::POST || !self.body.is_empty()).then(|| self.body.len());
        let join = self.body.len() <= JOIN_BODY_BYTES;
        let mut wire = Vec::with_capacity(
            64 + parts.target.len()
                + parts.host_line.len()
                + self.headers.len()
                + if join { self.body.len() } else { 0 },
        );
        wire::request_head(
            &mut wire,
            self.method.as_str(),
            &parts.target,
            &parts.host_line,
            &self.headers,
            length,
        );
        let rest: &[u8] = if join {
            wire.extend_from_slice(&self.body);
            &[]
        } else {
            &self.body
        };

        let mut pooled = self.shared.checkout(origin);
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(conn) => conn,
                None => self.shared.connect(origin).await?,
            };
            match exchange(&mut conn, &wire, rest).await {
                Ok(head) => {
                    let status = StatusCode::from_u16(head.status).map_err(|_| {
                        TransportError::failed(format!("invalid status code {}", head.status))
                    })?;
                    return Ok(UpstreamResponse {
                        status,
                        head: head.bytes,
                        body: Body::new(conn, head.framing, head.keep_alive, self.shared.clone()),
                    });
                }
                // The pooled connection was closed before the request went
                // out: once more, on a new one. (Nothing reached the
                // upstream whole; a request it may have read is not sent
                // again here, the gateway's failover decides.)
                Err(Failure::Unsent(_)) if reused => continue,
                Err(Failure::Unsent(message)) => return Err(TransportError::failed(message)),
                Err(Failure::Broken(error)) => return Err(error),
            }
        }
    }
}

/// Why an exchange failed.
enum Failure {
    /// The connection was found closed while the request was written.
    Unsent(String),
    Broken(TransportError),
}

struct ReadHead {
    status: u16,
    framing: Framing,
    keep_alive: bool,
    bytes: Box<[u8]>,
}

/// Writes the request and reads the answer's head, skipping informational
/// (1xx) answers.
async fn exchange(conn: &mut Conn, wire: &[u8], rest: &[u8]) -> Result<ReadHead, Failure> {
    let mut keep_alive = true;
    match send_reading(conn, wire, rest).await {
        Sent::All => {}
        // The upstream answered before taking the whole body (a 413, a
        // 401): its answer is read, and the connection, with part of a
        // request in it, closed afterwards.
        Sent::Answered => keep_alive = false,
        Sent::Failed(error) => {
            // It may have answered, then closed: read what has arrived.
            conn.drain_ready();
            if !has_final_head(&conn.buf) {
                return Err(match error.kind() {
                    io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted => Failure::Unsent(format!(
                        "the connection closed while sending the request: {error}"
                    )),
                    _ => Failure::Broken(TransportError::failed(format!(
                        "the connection broke while sending the request: {error}"
                    ))),
                });
            }
            keep_alive = false;
        }
    }
    loop {
        match wire::parse_head(&conn.buf) {
            Ok(Some(head)) if (100..200).contains(&head.status) => {
                conn.buf.advance(head.len);
                continue;
            }
            Ok(Some(head)) => {
                let bytes = Box::from(&conn.buf[..head.len]);
                conn.buf.advance(head.len);
                return Ok(ReadHead {
                    status: head.status,
                    framing: head.framing,
                    keep_alive: head.keep_alive && keep_alive,
                    bytes,
                });
            }
            Ok(None) => {}
            Err(error) => return Err(Failure::Broken(TransportError::failed(error))),
        }
        match conn.fill().await {
            Ok(0) if conn.buf.is_empty() => {
                return Err(Failure::Broken(TransportError::failed(
                    "the connection closed before an answer",
                )))
            }
            Ok(0) => {
                return Err(Failure::Broken(TransportError::failed(
                    "the connection closed inside the answer's head",
                )))
            }
            Ok(_) => {}
            Err(error) => {
                return Err(Failure::Broken(TransportError::failed(format!(
                    "reading the answer failed: {error}"
                ))))
            }
        }
    }
}

/// How writing a request ended.
enum Sent {
    /// Written and flushed.
    All,
    /// A final answer's head arrived before the request was all written.
    Answered,
    Failed(io::Error),
}

/// Writes the request, reading the connection meanwhile whenever the write
/// has to wait, so that an upstream that answers early and stops reading
/// is heard rather than seen as a broken connection.
async fn send_reading(conn: &mut Conn, wire: &[u8], rest: &[u8]) -> Sent {
    let total = wire.len() + rest.len();
    let mut sent = 0;
    let mut reading = true;
    std::future::poll_fn(|cx| loop {
        if sent == total {
            return match Pin::new(&mut conn.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Sent::All),
                Poll::Ready(Err(error)) => Poll::Ready(Sent::Failed(error)),
                Poll::Pending => Poll::Pending,
            };
        }
        let next = if sent < wire.len() { &wire[sent..] } else { &rest[sent - wire.len()..] };
        match Pin::new(&mut conn.io).poll_write(cx, next) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Sent::Failed(io::ErrorKind::WriteZero.into()))
            }
            Poll::Ready(Ok(n)) => {
                sent += n;
                continue;
            }
            Poll::Ready(Err(error)) => return Poll::Ready(Sent::Failed(error)),
            Poll::Pending => {}
        }
        if !reading {
            return Poll::Pending;
        }
        match conn.poll_fill(cx) {
            Poll::Ready(Ok(n)) if n > 0 => {
                if has_final_head(&conn.buf) {
                    return Poll::Ready(Sent::Answered);
                }
                // An interim answer, or part of a head: write on.
            }
            // The end of the stream, or an error: the write will tell.
            Poll::Ready(_) => reading = false,
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// The buffer starts with a complete final (not 1xx) answer head, after
/// any complete interim ones, or with bytes that are no answer at all (the
/// head reader reports those).
fn has_final_head(buf: &[u8]) -> bool {
    let mut at = 0;
    loop {
        match wire::parse_head(&buf[at..]) {
            Ok(Some(head)) if (100..200).contains(&head.status) => at += head.len,
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) => return false,
        }
    }
}

/// An answer whose head has arrived.
pub(crate) struct UpstreamResponse {
    status: StatusCode,
    head: Box<[u8]>,
    body: Body,
}

impl UpstreamResponse {
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The first header called `name` (any case), if its value is text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.head, name)
    }

    /// All headers.
    pub(crate) fn headers(&self) -> HeaderMap {
        wire::headers(&self.head)
    }

    /// The whole body, refused past [`MAX_BODY_BYTES`]: an upstream that
    /// sends without end cannot make the gateway buffer without bound.
    pub(crate) async fn bytes(self) -> Result<Bytes, BodyError> {
        let mut body = self.body;
        let mut out = match body.framing {
            Framing::Length(n) if n > MAX_BODY_BYTES as u64 => {
                return Err(BodyError::TooLarge(MAX_BODY_BYTES))
            }
            // A claimed length is believed only as far as a megabyte before
            // the bytes arrive.
            Framing::Length(n) => Vec::with_capacity((n as usize).min(1 << 20)),
            _ => Vec::new(),
        };
        loop {
            body.take(&mut out, false).map_err(BodyError::Cut)?;
            if out.len() > MAX_BODY_BYTES {
                return Err(BodyError::TooLarge(MAX_BODY_BYTES));
            }
            if body.done {
                body.release();
                return Ok(Bytes::from(out));
            }
            body.fill().await.map_err(BodyError::Cut)?;
        }
    }

    /// The body as it arrives: a chunked body chunk by chunk, as the
    /// upstream framed it, any other as it is read.
    pub(crate) fn bytes_stream(self) -> BodyStream {
        BodyStream { body: Some(self.body) }
    }
}

/// An answer's body as it arrives. Dropped before its end, it closes the
/// connection, which cancels the request upstream.
pub(crate) struct BodyStream {
    body: Option<Body>,
}

impl BodyStream {
    /// The caller has all it wants (an SSE stream's `data: [DONE]`): what
    /// is left is expected to be only the end of the framing. Reading it
    /// lets the connection serve another request; it is read at once if it
    /// has arrived, else by a task that gives up after [`DRAIN_WAIT`] or on
    /// any more data.
    pub(crate) fn finish(&mut self) {
        let Some(mut body) = self.body.take() else { return };
        if !body.keep_alive {
            return;
        }
        let mut rest = Vec::new();
        if body.take(&mut rest, false).is_err() || !rest.is_empty() {
            return;
        }
        if body.done {
            body.release();
            return;
        }
        tokio::spawn(async move {
            let drained = async {
                loop {
                    body.fill().await?;
                    body.take(&mut rest, false)?;
                    if !rest.is_empty() {
                        return Err(TransportError::cut("data after the end of the stream"));
                    }
                    if body.done {
                        body.release();
                        return Ok(());
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_WAIT, drained).await;
        });
    }
}

impl futures::Stream for BodyStream {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else { return Poll::Ready(None) };
        loop {
            let mut out = Vec::new();
            if let Err(error) = body.take(&mut out, true) {
                this.body = None;
                return Poll::Ready(Some(Err(error)));
            }
            if body.done {
                body.release();
                this.body = None;
                return Poll::Ready((!out.is_empty()).then(|| Ok(Bytes::from(out))));
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Bytes::from(out))));
            }
            if let Err(error) = std::task::ready!(body.poll_fill(cx)) {
                this.body = None;
                return Poll::Ready(Some(Err(error)));
            }
        }
    }
}

/// The body of an answer, read from its connection, which goes back to the
/// pool once the body has been read to its end.
struct Body {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    shared: Arc<Shared>,
    /// Left to read of a [`Framing::Length`] body.
    left: u64,
    chunked: Chunked,
    done: bool,
}

impl Body {
    fn new(conn: Conn, framing: Framing, keep_alive: bool, shared: Arc<Shared>) -> Body {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Body {
            conn: Some(conn),
            framing,
            keep_alive,
            shared,
            left,
            chunked: Chunked::default(),
            done: matches!(framing, Framing::Empty | Framing::Length(0)),
        }
    }

    /// Moves what the buffer holds of the body to `out` (with `one_chunk`,
    /// no more than one chunk of a chunked body).
    fn take(&mut self, out: &mut Vec<u8>, one_chunk: bool) -> Result<(), TransportError> {
        let Some(conn) = self.conn.as_mut() else { return Ok(()) };
        let buf = &mut conn.buf;
        match self.framing {
            Framing::Empty => {}
            Framing::Length(_) => {
                let take = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
                out.extend_from_slice(&buf[..take]);
                buf.advance(take);
                self.left -= take as u64;
                self.done = self.left == 0;
            }
            Framing::Chunked => {
                let used = self.chunked.decode(buf, out, one_chunk).map_err(TransportError::cut)?;
                buf.advance(used);
                self.done = self.chunked.is_done();
            }
            Framing::UntilClose => {
                out.extend_from_slice(buf);
                buf.clear();
            }
        }
        Ok(())
    }

    /// Reads more of the body; the end of the stream ends only a body
    /// framed by it.
    async fn fill(&mut self) -> Result<(), TransportError> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Err(TransportError::cut("the body was read already")));
        };
        Poll::Ready(match std::task::ready!(conn.poll_fill(cx)) {
            Ok(0) if self.framing == Framing::UntilClose => {
                self.done = true;
                self.keep_alive = false;
                Ok(())
            }
            Ok(0) => Err(TransportError::cut("the connection closed before the end of the body")),
            Ok(_) => Ok(()),
            Err(error) => Err(TransportError::cut(error)),
        })
    }

    /// The body was read to its end: the connection serves the next request
    /// if the answer allows and nothing follows the body.
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                self.shared.checkin(conn);
            }
        }
    }
}

/// Why a whole body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the upstream response is larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Cut(TransportError),
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::*;

    /// A client that checks every pooled connection before reuse, however
    /// briefly it was idle.
    fn client() -> HttpClient {
        let second = Duration::from_secs(2);
        checking(HttpClient::new(&Timeouts { connect: second, first_token: second, total: second }))
    }

    fn checking(mut client: HttpClient) -> HttpClient {
        Arc::get_mut(&mut client.shared).unwrap().check_after = Duration::ZERO;
        client
    }

    /// What a scripted upstream does on one connection, in order.
    enum Step {
        /// Reads one request (head and content-length body) and records it.
        Read,
        /// Reads once, whatever has arrived, and records nothing.
        Skim,
        Write(&'static [u8]),
        /// Writes one byte at a time.
        Trickle(&'static [u8]),
        /// Waits for the test's signal.
        Wait(oneshot::Receiver<()>),
        Close,
    }

    /// An upstream on a real socket that follows one script per connection
    /// it accepts (in order) and records the requests it reads.
    struct Scripted {
        uri: Endpoint,
        accepted: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
    }

    async fn scripted(path: &str, scripts: Vec<Vec<Step>>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            for script in scripts {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    for step in script {
                        match step {
                            Step::Read => {
                                let request = read_request(&mut stream, &mut pending).await;
                                seen.lock().unwrap().push(request);
                            }
                            Step::Skim => {
                                let mut some = [0u8; 4096];
                                let _ = stream.read(&mut some).await;
                            }
                            Step::Write(bytes) => stream.write_all(bytes).await.unwrap(),
                            Step::Trickle(bytes) => {
                                for byte in bytes {
                                    stream.write_all(&[*byte]).await.unwrap();
                                    stream.flush().await.unwrap();
                                }
                            }
                            Step::Wait(signal) => {
                                let _ = signal.await;
                            }
                            Step::Close => return,
                        }
                    }
                    // Keep the connection until the client closes it.
                    let mut rest = [0u8; 1024];
                    while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
                });
            }
        });
        Scripted {
            uri: parse_endpoint(format!("http://127.0.0.1:{port}{path}")),
            accepted,
            requests,
        }
    }

    async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> String {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(pending[..end + 4].to_vec()).unwrap();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |n| n.trim().parse().unwrap());
                if pending.len() >= end + 4 + length {
                    let request: Vec<u8> = pending.drain(..end + 4 + length).collect();
                    return String::from_utf8(request).unwrap();
                }
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed inside a request");
            pending.extend_from_slice(&chunk[..n]);
        }
    }

    const OK_HELLO: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

    #[tokio::test]
    async fn one_connection_carries_requests_with_every_framing() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                        3;x=1\r\nabc\r\n4\r\ndefg\r\n0\r\ntrailer: t\r\n\r\n";
        let upstream = scripted(
            "/v1/chat?api-version=1",
            vec![vec![
                Step::Read,
                Step::Write(OK_HELLO),
                Step::Read,
                Step::Trickle(chunked),
                Step::Read,
                Step::Write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"),
                Step::Read,
                Step::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            ]],
        )
        .await;
        let client = client();
        let send = |body: &'static str| {
            client.post(&upstream.uri).bearer_auth("sk-test").json(Bytes::from(body)).send()
        };
        let answer = send(r#"{"a":1}"#).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.header("Content-Length"), Some("5"));
        assert_eq!(answer.bytes().await.unwrap(), "hello");
        let answer = send("{}").await.unwrap();
        assert_eq!(answer.bytes().await.unwrap(), "abcdefg");
        let answer = send("{}").await.unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT, "the 100 is skipped");
        assert_eq!(answer.bytes().await.unwrap(), "");
        let answer = client.get(&upstream.uri).send().await.unwrap();
        assert_eq!(answer.bytes().await.unwrap(), "");
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1, "one kept-alive connection");

        let requests = upstream.requests.lock().unwrap();
        let port = upstream.uri.uri().port_u16().unwrap();
        assert_eq!(
            requests[0],
            format!(
                "POST /v1/chat?api-version=1 HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\
                 user-agent: {USER_AGENT_VALUE}\r\nauthorization: Bearer sk-test\r\n\
                 content-type: application/json\r\ncontent-length: 7\r\n\r\n{{\"a\":1}}"
            )
        );
        assert!(requests[3].starts_with("GET /v1/chat?api-version=1 HTTP/1.1\r\n"));
        assert!(!requests[3].contains("content-length"), "{}", requests[3]);
    }

    #[tokio::test]
    async fn a_large_body_arrives_whole() {
        let upstream = scripted("/", vec![vec![Step::Read, Step::Write(OK_HELLO)]]).await;
        let body = "x".repeat(3 * JOIN_BODY_BYTES + 7);
        let answer = client().post(&upstream.uri).json(Bytes::from(body.clone())).send().await;
        assert_eq!(answer.unwrap().bytes().await.unwrap(), "hello");
        let requests = upstream.requests.lock().unwrap();
        assert!(requests[0].ends_with(&format!("\r\n\r\n{body}")));
    }

    #[tokio::test]
    async fn an_answer_before_the_whole_body_is_heard_not_taken_for_a_broken_connection() {
        const TOO_LARGE: &[u8] =
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 5\r\n\r\nlarge";
        // The second upstream answers and then neither reads nor closes.
        let (_hold, held) = oneshot::channel::<()>();
        let upstream = scripted(
            "/",
            vec![
                vec![Step::Skim, Step::Write(TOO_LARGE), Step::Close],
                vec![Step::Skim, Step::Write(TOO_LARGE), Step::Wait(held)],
                vec![Step::Read, Step::Write(OK_HELLO)],
            ],
        )
        .await;
        let client = client();
        for _ in 0..2 {
            // Far more than the sockets buffer: the write has to wait for a
            // reader that never comes.
            let body = Bytes::from(vec![b' '; 64 * 1024 * 1024]);
            let send = client.post(&upstream.uri).json(body).send();
            let answer = tokio::time::timeout(Duration::from_secs(5), send).await;
            let answer = answer.expect("the answer is read while the write waits").unwrap();
            assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(answer.bytes().await.unwrap(), "large");
        }
        // Half a request is in those connections: neither is reused.
        let answer = client.post(&upstream.uri).json(Bytes::from("{}")).send().await.unwrap();
        assert_eq!(answer.bytes().await.unwrap(), "hello");
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_replaced() {
        let upstream = scripted(
            "/",
            vec![
                vec![Step::Read, Step::Write(OK_HELLO), Step::Close],
                vec![Step::Read, Step::Write(OK_HELLO)],
            ],
        )
        .await;
        let client = client();
        for _ in 0..2 {
            let answer = client.post(&upstream.uri).json(Bytes::from("{}")).send().await;
            assert_eq!(answer.unwrap().bytes().await.unwrap(), "hello");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(upstream.requests.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn bytes_an_idle_connection_received_are_never_read_as_an_answer() {
        let (stray, send_stray) = oneshot::channel();
        let upstream = scripted(
            "/",
            vec![
                vec![
                    Step::Read,
                    Step::Write(OK_HELLO),
                    Step::Wait(send_stray),
                    Step::Write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n"),
                ],
                vec![Step::Read, Step::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew")],
            ],
        )
        .await;
        let client = client();
        let send = || client.post(&upstream.uri).json(Bytes::from("{}")).send();
        assert_eq!(send().await.unwrap().bytes().await.unwrap(), "hello");
        stray.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "not the stray 408");
        assert_eq!(answer.bytes().await.unwrap(), "new");
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(upstream.requests.lock().unwrap().len(), 2, "each request sent once");
    }

    #[tokio::test]
    async fn answers_that_close_or_say_close_are_not_pooled() {
        let upstream = scripted(
            "/",
            vec![
                vec![Step::Read, Step::Write(b"HTTP/1.1 200 OK\r\n\r\nuntil close"), Step::Close],
                vec![
                    Step::Read,
                    Step::Write(
                        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                    ),
                ],
                vec![Step::Read, Step::Write(OK_HELLO)],
            ],
        )
        .await;
        let client = client();
        let send = || client.post(&upstream.uri).json(Bytes::from("{}")).send();
        assert_eq!(send().await.unwrap().bytes().await.unwrap(), "until close");
        assert_eq!(send().await.unwrap().bytes().await.unwrap(), "ok");
        assert_eq!(send().await.unwrap().bytes().await.unwrap(), "hello");
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_body_cut_short_is_a_cut_not_an_answer() {
        let upstream = scripted(
            "/",
            vec![
                vec![
                    Step::Read,
                    Step::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"),
                    Step::Close,
                ],
                vec![
                    Step::Read,
                    Step::Write(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nsome\r\n",
                    ),
                    Step::Close,
                ],
            ],
        )
        .await;
        let client = client();
        let answer = client.post(&upstream.uri).json(Bytes::from("{}")).send().await.unwrap();
        match answer.bytes().await {
            Err(BodyError::Cut(error)) => {
                assert!(error.to_string().contains("closed before the end of the body"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        let answer = client.post(&upstream.uri).json(Bytes::from("{}")).send().await.unwrap();
        let mut stream = answer.bytes_stream();
        assert_eq!(stream.next().await.unwrap().unwrap(), "some");
        let error = stream.next().await.unwrap().unwrap_err().to_string();
        assert!(error.starts_with("the upstream response was cut"), "{error}");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn streamed_pieces_arrive_before_the_rest_is_sent() {
        let (go, wait) = oneshot::channel();
        let upstream = scripted(
            "/",
            vec![vec![
                Step::Read,
                Step::Write(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n",
                ),
                Step::Wait(wait),
                Step::Write(b"7\r\nsecond\n\r\n0\r\n\r\n"),
            ]],
        )
        .await;
        let client = client();
        let answer = client.post(&upstream.uri).json(Bytes::from("{}")).send().await.unwrap();
        let mut stream = answer.bytes_stream();
        assert_eq!(stream.next().await.unwrap().unwrap(), "first\n", "before the rest is sent");
        go.send(()).unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), "second\n");
        assert!(stream.next().await.is_none());
        // Read to its end, the connection is back in the pool.
        let answer = client.post(&upstream.uri).json(Bytes::from("{}")).send();
        let upstream_read = tokio::time::timeout(Duration::from_millis(300), answer).await;
        assert!(upstream_read.is_err(), "the script reads no second request: the send waits");
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_finished_stream_gives_its_connection_back_when_the_framing_ends() {
        let (go, wait) = oneshot::channel();
        let sse = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        let upstream = scripted(
            "/",
            vec![vec![
                // The end of the framing is already there: given back at once.
                Step::Read,
                Step::Write(sse),
                Step::Write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"),
                // It comes later: given back by the drain.
                Step::Read,
                Step::Write(sse),
                Step::Write(b"e\r\ndata: [DONE]\n\n\r\n"),
                Step::Wait(wait),
                Step::Write(b"0\r\n\r\n"),
                Step::Read,
                Step::Write(OK_HELLO),
            ]],
        )
        .await;
        let client = client();
        let send = || client.post(&upstream.uri).json(Bytes::from("{}")).send();
        let mut stream = send().await.unwrap().bytes_stream();
        assert_eq!(stream.next().await.unwrap().unwrap(), "data: [DONE]\n\n");
        stream.finish();
        let mut stream = send().await.unwrap().bytes_stream();
        assert_eq!(stream.next().await.unwrap().unwrap(), "data: [DONE]\n\n");
        stream.finish();
        go.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = tokio::time::timeout(Duration::from_secs(5), send()).await;
        assert_eq!(answer.expect("the same connection").unwrap().bytes().await.unwrap(), "hello");
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn lying_answers_are_clear_errors() {
        let upstream = scripted(
            "/",
            vec![
                vec![Step::Read, Step::Write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")],
                vec![
                    Step::Read,
                    Step::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\n\r\n"),
                ],
                vec![
                    Step::Read,
                    Step::Write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                    ),
                ],
                vec![
                    Step::Read,
                    Step::Write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
                ],
            ],
        )
        .await;
        let client = client();
        let send = || client.post(&upstream.uri).json(Bytes::from("{}")).send();
        let error = send().await.err().unwrap().to_string();
        assert!(error.contains("not HTTP/1.x"), "{error}");
        assert!(matches!(send().await.unwrap().bytes().await, Err(BodyError::TooLarge(_))));
        let error = send().await.err().unwrap().to_string();
        assert!(error.contains("invalid content-length"), "{error}");
        let error = send().await.unwrap().bytes().await.unwrap_err().to_string();
        assert!(error.contains("invalid chunk size"), "{error}");
        assert!(!error.contains(&upstream.uri.uri().port_u16().unwrap().to_string()), "{error}");
    }

    #[tokio::test]
    async fn an_upstream_that_never_answers_is_not_reused_after_the_caller_gives_up() {
        let upstream =
            scripted("/", vec![vec![Step::Read], vec![Step::Read, Step::Write(OK_HELLO)]]).await;
        let client = client();
        let hung = client.post(&upstream.uri).json(Bytes::from("{}")).send();
        assert!(tokio::time::timeout(Duration::from_millis(200), hung).await.is_err());
        let answer = client.post(&upstream.uri).json(Bytes::from("{}")).send().await.unwrap();
        assert_eq!(answer.bytes().await.unwrap(), "hello");
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    }

    /// Answers `per_connection` requests on each TLS connection, then drops
    /// it without a close_notify (test CA; `localhost` and
    /// 127.0.0.1) and reports the protocol ALPN chose.
    async fn tls_upstream(per_connection: usize) -> (u16, oneshot::Receiver<Option<Vec<u8>>>) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let testdata = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/");
        let cert =
            CertificateDer::from_pem_file(format!("{testdata}upstream-test-server.pem")).unwrap();
        let key = PrivateKeyDer::from_pem_file(format!("{testdata}upstream-test-server.key.pem"))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (alpn_tx, alpn_rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut alpn_tx = Some(alpn_tx);
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                // A handshake the client refuses fails here: wait for the next.
                let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
                if let Some(tx) = alpn_tx.take() {
                    let _ = tx.send(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
                }
                let mut buf = vec![0u8; 4096];
                for _ in 0..per_connection {
                    let mut got = Vec::new();
                    while !got.ends_with(b"{}") {
                        let n = tls.read(&mut buf).await.unwrap();
                        assert!(n > 0, "the client closed inside a request");
                        got.extend_from_slice(&buf[..n]);
                    }
                    tls.write_all(OK_HELLO).await.unwrap();
                    tls.flush().await.unwrap();
                }
            }
        });
        (port, alpn_rx)
    }

    #[tokio::test]
    async fn tls_upstreams_are_verified_and_kept_alive() {
        use rustls::pki_types::pem::PemObject;
        let (port, alpn) = tls_upstream(2).await;
        let ca = rustls::pki_types::CertificateDer::from_pem_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/upstream-test-ca.pem"
        ))
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let second = Duration::from_secs(2);
        let timeouts = Timeouts { connect: second, first_token: second, total: second };

        // The public roots do not know the test CA: refused before anything is sent.
        let target = parse_endpoint(format!("https://localhost:{port}/v1/chat/completions"));
        let error = HttpClient::new(&timeouts).post(&target).send().await.err().unwrap();
        assert!(error.connect, "{error}");
        assert!(error.to_string().contains("TLS handshake failed"), "{error}");

        let client = HttpClient::with_tls(&timeouts, tls_config_with(roots.clone()));
        // The upstream serves one connection at a time, two requests each:
        // the second request is answered only on the kept-alive connection.
        let both = async {
            for _ in 0..2 {
                let answer = client.post(&target).json(Bytes::from("{}")).send().await.unwrap();
                assert_eq!(answer.bytes().await.unwrap(), "hello");
            }
        };
        tokio::time::timeout(Duration::from_secs(5), both).await.expect("one connection, kept");
        assert_eq!(alpn.await.unwrap().as_deref(), Some(&b"http/1.1"[..]));

        // An upstream that drops each connection after one answer, without
        // a close_notify: the pooled connection is found closed and the
        // next request goes out on a new one.
        let (port, _) = tls_upstream(1).await;
        let target = parse_endpoint(format!("https://127.0.0.1:{port}/v1/chat/completions"));
        let client = checking(HttpClient::with_tls(&timeouts, tls_config_with(roots)));
        for _ in 0..3 {
            let answer = client.post(&target).json(Bytes::from("{}")).send().await.unwrap();
            assert_eq!(answer.bytes().await.unwrap(), "hello");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_without_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let target = parse_endpoint(format!("http://127.0.0.1:{port}/v1/chat/completions"));
        let error = client().post(&target).bearer_auth("sk-secret").send().await.err().unwrap();
        assert!(error.connect, "{error}");
        let text = error.to_string();
        assert!(text.starts_with("could not connect to the upstream"), "{text}");
        assert!(!text.contains(&port.to_string()) && !text.contains("sk-secret"), "{text}");
    }

    #[test]
    fn endpoints_keep_path_query_and_host() {
        let azure = parse_endpoint(
            "http://127.0.0.1:9/openai/deployments/d/chat/completions?api-version=2024-10-21"
                .into(),
        );
        assert_eq!(
            &*azure.0.target,
            "/openai/deployments/d/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(&*azure.0.host_line, b"host: 127.0.0.1:9\r\n");
        let v6 = parse_endpoint("https://[::1]/x".into());
        let origin = v6.origin().unwrap();
        assert_eq!((origin.tls, &*origin.host, origin.port), (true, "::1", 443));
        assert_eq!(&*v6.0.host_line, b"host: [::1]\r\n");
        let error = parse_endpoint("ftp://h/x".into()).origin().err().unwrap();
        assert!(error.to_string().contains("not http(s)"), "{error}");
    }
}
