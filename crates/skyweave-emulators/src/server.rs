//! The HTTP server: accept loop, per-connection control (cut / reset), the
//! router, and what every API handler does first (count, record, check
//! api-version and key).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use http_body::Frame;
use tokio::net::TcpListener;

use crate::errors::{self, json_response, Operation};
use crate::net;
use crate::{chat, embeddings, Behaviour, Control, Dialect, EmulatorConfig, RecordedRequest};
use crate::{Shared, Tracker};

/// Request bodies larger than this are refused with 413.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A running emulator. Dropping it stops accepting and closes every
/// connection.
pub struct Emulator {
    /// The bound address (with the real port when `bind` had port 0).
    pub addr: SocketAddr,
    pub control: Control,
    server: net::Server,
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .field("control", &self.control)
            .finish()
    }
}

impl Emulator {
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        net::base_url(self.addr)
    }

    /// TCP connections accepted so far: how many a client kept alive.
    pub fn connections(&self) -> u64 {
        self.server.connections()
    }
}

pub(crate) async fn spawn(config: EmulatorConfig) -> std::io::Result<Emulator> {
    let shared = Arc::new(Shared::new(&config)?);
    let listener = TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    let router = router(Arc::clone(&shared));
    let name_header = shared.name_header.clone();
    let decorate = move |h: &mut HeaderMap| {
        h.insert("x-emulator-name", name_header.clone());
    };
    let server = net::serve(listener, router, decorate);
    Ok(Emulator { addr, control: Control { shared }, server })
}

pub(crate) use crate::net::ConnHandle;

fn router(shared: Arc<Shared>) -> Router {
    let api = match shared.dialect {
        Dialect::OpenAi => Router::new()
            .route("/v1/chat/completions", post(chat::chat_openai))
            .route("/v1/embeddings", post(embeddings::embeddings_openai))
            .route("/v1/models", get(models))
            .route("/v1/models/{model}", get(models)),
        Dialect::Azure => Router::new()
            .route("/openai/deployments/{deployment}/chat/completions", post(chat::chat_azure))
            .route(
                "/openai/deployments/{deployment}/embeddings",
                post(embeddings::embeddings_azure),
            )
            .route("/openai/models", get(models)),
    };
    api.route("/_emulator/behaviour", put(put_behaviour).get(get_behaviour))
        .route("/_emulator/script", put(put_script).post(put_script).delete(delete_script))
        .route("/_emulator/stats", get(get_stats))
        .route("/_emulator/recorded", get(get_recorded).delete(delete_recorded))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

/// What the API handlers have once the common checks passed.
pub(crate) struct Prepared {
    pub(crate) tracker: Tracker,
    pub(crate) conn: Option<ConnHandle>,
    pub(crate) body: Bytes,
    pub(crate) deployment: Option<String>,
    /// Azure: the `api-version` query parameter.
    pub(crate) api_version: Option<String>,
}

/// Count and track the request, read its body, record it, then check
/// api-version (Azure) and the API key. On `Err` the request is already
/// accounted as completed.
pub(crate) async fn prepare(
    shared: &Arc<Shared>,
    req: Request,
    deployment: Option<String>,
) -> Result<Prepared, Response> {
    let mut tracker = shared.track();
    let (mut parts, body) = req.into_parts();
    let conn = parts.extensions.remove::<ConnHandle>();
    let declared_too_large = http_body::Body::size_hint(&body).lower() > MAX_BODY as u64;
    let read = if declared_too_large {
        Err(None)
    } else {
        axum::body::to_bytes(body, MAX_BODY).await.map_err(Some)
    };
    let body = match read {
        Ok(b) => b,
        Err(e) => {
            let too_large = e.is_none_or(|e| {
                e.into_inner().downcast_ref::<http_body_util::LengthLimitError>().is_some()
            });
            if !too_large {
                // The client went away (or broke the framing) mid-body: the
                // tracker drops undone and counts the request as cancelled.
                return Err(errors::unparseable_body());
            }
            tracker.done();
            if shared.record {
                record(shared, &parts, &[], deployment);
            }
            return Err(errors::openai_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("The request body is larger than {MAX_BODY} bytes."),
                Some("invalid_request_error"),
                None,
                None,
            ));
        }
    };
    if shared.record {
        record(shared, &parts, &body, deployment.clone());
    }
    let api_version = match check_access(shared, &parts) {
        Ok(v) => v,
        Err(denied) => {
            tracker.done();
            return Err(denied.into_response(shared.dialect));
        }
    };
    Ok(Prepared { tracker, conn, body, deployment, api_version })
}

/// Why a request was turned away before its body was looked at.
enum Denied {
    /// Azure: no (or an empty) `api-version` query parameter.
    NoApiVersion,
    /// Missing or wrong key; for OpenAI, the bearer token that was sent.
    Key(Option<String>),
}

impl Denied {
    fn into_response(self, dialect: Dialect) -> Response {
        match self {
            Denied::NoApiVersion => errors::azure_resource_not_found(),
            Denied::Key(provided) => errors::unauthorized(dialect, provided.as_deref()),
        }
    }
}

/// Azure's api-version check, then the key check. Returns the api-version.
fn check_access(shared: &Shared, parts: &Parts) -> Result<Option<String>, Denied> {
    let api_version = match shared.dialect {
        Dialect::OpenAi => None,
        Dialect::Azure => {
            let v = parts
                .uri
                .query()
                .and_then(|q| crate::query_param(q, "api-version"))
                .filter(|v| !v.is_empty());
            match v {
                Some(v) => Some(v.to_owned()),
                None => return Err(Denied::NoApiVersion),
            }
        }
    };
    check_key(shared, &parts.headers)?;
    Ok(api_version)
}

fn check_key(shared: &Shared, headers: &HeaderMap) -> Result<(), Denied> {
    let Some(key) = shared.api_key.as_deref() else {
        return Ok(());
    };
    let bearer = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(strip_bearer);
    let ok = match shared.dialect {
        Dialect::OpenAi => bearer == Some(key),
        Dialect::Azure => {
            headers.get("api-key").and_then(|v| v.to_str().ok()) == Some(key) || bearer == Some(key)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Denied::Key(bearer.map(str::to_owned)))
    }
}

fn strip_bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn record(shared: &Shared, parts: &Parts, body: &[u8], deployment: Option<String>) {
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let raw_body = String::from_utf8_lossy(body).into_owned();
    let body = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    shared.recorded().push(RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers,
        body,
        raw_body,
        deployment,
    });
}

/// Record a request that is not chat or embeddings (models, unknown paths).
fn record_other(shared: &Shared, parts: &Parts) {
    if shared.record {
        record(shared, parts, &[], None);
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

const MODELS: [&str; 4] =
    ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "text-embedding-3-large"];

async fn models(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    record_other(&shared, &parts);
    if let Err(denied) = check_access(&shared, &parts) {
        return denied.into_response(shared.dialect);
    }
    let created = 1_700_000_000u64;
    let model = |id: &str| serde_json::json!({"id": id, "object": "model", "created": created, "owned_by": "system"});
    let body = match parts.uri.path().strip_prefix("/v1/models/") {
        Some(id) => model(id),
        None => serde_json::json!({
            "object": "list",
            "data": MODELS.iter().map(|id| model(id)).collect::<Vec<_>>(),
        }),
    };
    json_response(StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default())
}

async fn not_found(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    record_other(&shared, &parts);
    errors::not_found(shared.dialect, parts.method.as_str(), parts.uri.path())
}

async fn method_not_allowed(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    record_other(&shared, &parts);
    match shared.dialect {
        Dialect::OpenAi => errors::openai_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Invalid method for URL ({} {})", parts.method, parts.uri.path()),
            Some("invalid_request_error"),
            None,
            None,
        ),
        Dialect::Azure => errors::azure_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "405",
            "The requested method is not allowed for this resource.",
        ),
    }
}

// ---- control endpoints (/_emulator/...) -------------------------------

fn control_error(message: String) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default(),
    )
}

fn json_ok<T: serde::Serialize>(value: &T) -> Response {
    json_response(StatusCode::OK, serde_json::to_vec(value).unwrap_or_default())
}

fn no_content() -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

async fn put_behaviour(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Behaviour>(&body) {
        Ok(b) => {
            Control { shared }.set_behaviour(b);
            no_content()
        }
        Err(e) => control_error(format!("invalid behaviour: {e}")),
    }
}

async fn get_behaviour(State(shared): State<Arc<Shared>>) -> Response {
    json_ok(&Control { shared }.behaviour())
}

async fn put_script(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<Behaviour>>(&body) {
        Ok(bs) => {
            Control { shared }.push_script(bs);
            no_content()
        }
        Err(e) => control_error(format!("invalid script (expected an array of behaviours): {e}")),
    }
}

async fn delete_script(State(shared): State<Arc<Shared>>) -> Response {
    Control { shared }.clear_script();
    no_content()
}

async fn get_stats(State(shared): State<Arc<Shared>>) -> Response {
    json_ok(&shared.stats())
}

async fn get_recorded(State(shared): State<Arc<Shared>>) -> Response {
    let recorded = shared.recorded().clone();
    json_ok(&recorded)
}

async fn delete_recorded(State(shared): State<Arc<Shared>>) -> Response {
    shared.recorded().clear();
    no_content()
}

// ---- behaviours shared by every API --------------------------------------

/// Answers the behaviours that look the same whether or not the request
/// streams (Status, ContentFilter, Hang, Reset); hands the others back.
pub(crate) async fn common_behaviour(
    shared: &Shared,
    p: &mut Prepared,
    b: Behaviour,
    op: Operation,
) -> Result<Response, Behaviour> {
    match b {
        Behaviour::Status { status, retry_after_secs, message } => {
            p.tracker.done();
            Ok(errors::status_behaviour(
                shared.dialect,
                op,
                p.api_version.as_deref(),
                status,
                retry_after_secs,
                message.as_deref(),
            ))
        }
        Behaviour::ContentFilter => {
            p.tracker.done();
            Ok(errors::content_filter(shared.dialect))
        }
        Behaviour::Hang => {
            // Dropped (and counted as cancelled) when the client goes away.
            match std::future::pending::<Infallible>().await {}
        }
        Behaviour::Reset => match &p.conn {
            Some(conn) => {
                p.tracker.done();
                conn.reset();
                // Dropped with the connection.
                match std::future::pending::<Infallible>().await {}
            }
            None => {
                p.tracker.done();
                Ok(errors::status_behaviour(
                    shared.dialect,
                    op,
                    None,
                    500,
                    None,
                    Some("connection reset requested but not possible"),
                ))
            }
        },
        other => Err(other),
    }
}

/// Answer a non-streaming request: `ok_body(chunks)` builds the successful
/// JSON body.
pub(crate) async fn non_streaming(
    shared: &Shared,
    mut p: Prepared,
    b: Behaviour,
    op: Operation,
    ok_body: impl FnOnce(u32) -> Vec<u8>,
) -> Response {
    let b = match common_behaviour(shared, &mut p, b, op).await {
        Ok(resp) => return resp,
        Err(b) => b,
    };
    match b {
        Behaviour::Ok { ttft_ms, chunks, .. } => {
            if ttft_ms > 0 {
                tokio::time::sleep(Duration::from_millis(ttft_ms)).await;
            }
            let body = ok_body(chunks);
            p.tracker.done();
            json_response(StatusCode::OK, body)
        }
        Behaviour::HangAfterHeaders => {
            let mut resp = Response::new(Body::new(PendingBody { _tracker: p.tracker }));
            resp.headers_mut().insert(CONTENT_TYPE, errors::APPLICATION_JSON);
            resp
        }
        Behaviour::CutAfterChunks { chunks } => {
            let full = ok_body(chunks);
            let len = full.len();
            let mut resp = Response::new(Body::new(CutBody {
                first: Some(Bytes::from(full).slice(..len / 2)),
                tracker: Some(p.tracker),
                conn: p.conn,
            }));
            let h = resp.headers_mut();
            h.insert(CONTENT_TYPE, errors::APPLICATION_JSON);
            h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
            resp
        }
        Behaviour::Malformed => {
            // A JSON document cut in half: looks like JSON, does not parse.
            let mut body = ok_body(4);
            body.truncate(body.len() / 2);
            p.tracker.done();
            json_response(StatusCode::OK, body)
        }
        // Handled by common_behaviour.
        Behaviour::Status { .. }
        | Behaviour::ContentFilter
        | Behaviour::Hang
        | Behaviour::Reset => {
            p.tracker.done();
            errors::status_behaviour(shared.dialect, op, None, 500, None, None)
        }
    }
}

/// A body that never yields: the head goes out, then nothing. Its tracker
/// counts the request as cancelled when the client gives up.
pub(crate) struct PendingBody {
    pub(crate) _tracker: Tracker,
}

impl http_body::Body for PendingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

/// Sends `first`, then closes the connection before the rest.
struct CutBody {
    first: Option<Bytes>,
    tracker: Option<Tracker>,
    conn: Option<ConnHandle>,
}

impl http_body::Body for CutBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if let Some(mut tracker) = this.tracker.take() {
            tracker.done();
            match this.conn.take() {
                Some(conn) => conn.cut(),
                // Cannot cut: end early; hyper then fails the response for
                // its short body, which also ends the connection.
                None => return Poll::Ready(None),
            }
        }
        Poll::Pending
    }
}

/// A sleep that can be polled from a `poll_*` method.
pub(crate) struct Delay(Pin<Box<tokio::time::Sleep>>);

impl Delay {
    pub(crate) fn new(d: Duration) -> Self {
        Delay(Box::pin(tokio::time::sleep(d)))
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}
