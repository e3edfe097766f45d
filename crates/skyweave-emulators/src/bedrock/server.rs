//! The Bedrock emulator's HTTP server: accept loop, per-connection control
//! (cut / reset), router, and what every API handler does first (count,
//! read, verify the signature, record).

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use http_body::Frame;
use tokio::net::TcpListener;

use super::{
    converse, exception_defaults, invoke, BedrockBehaviour, BedrockConfig, BedrockControl,
    BedrockRecordedRequest, Shared, Tracker,
};
use crate::net;

/// Request bodies larger than this are refused.
const MAX_BODY: usize = 32 * 1024 * 1024;

pub(crate) const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A running Bedrock emulator. Dropping it stops accepting and closes every
/// connection.
pub struct BedrockEmulator {
    /// The bound address (with the real port when `bind` had port 0).
    pub addr: SocketAddr,
    pub control: BedrockControl,
    _server: net::Server,
}

impl fmt::Debug for BedrockEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BedrockEmulator")
            .field("addr", &self.addr)
            .field("control", &self.control)
            .finish()
    }
}

impl BedrockEmulator {
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        net::base_url(self.addr)
    }
}

pub(crate) async fn spawn(config: BedrockConfig) -> std::io::Result<BedrockEmulator> {
    let shared = Arc::new(Shared::new(&config)?);
    let listener = TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    let router = router(Arc::clone(&shared));
    let decorate = {
        let shared = Arc::clone(&shared);
        move |h: &mut HeaderMap| {
            h.insert("x-emulator-name", shared.name_header.clone());
            let id = format!("00000000-0000-4000-8000-{:012x}", shared.next_id());
            if let Ok(v) = HeaderValue::from_str(&id) {
                h.insert("x-amzn-requestid", v);
            }
        }
    };
    let _server = net::serve(listener, router, decorate);
    Ok(BedrockEmulator { addr, control: BedrockControl { shared }, _server })
}

pub(crate) use crate::net::ConnHandle;

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/model/{model_id}/converse", post(converse::converse))
        .route("/model/{model_id}/converse-stream", post(converse::converse_stream))
        .route("/model/{model_id}/invoke", post(invoke::invoke))
        .route("/_emulator/behaviour", put(put_behaviour).get(get_behaviour))
        .route("/_emulator/script", put(put_script).post(put_script).delete(delete_script))
        .route("/_emulator/stats", get(get_stats))
        .route("/_emulator/recorded", get(get_recorded).delete(delete_recorded))
        .fallback(unknown_operation)
        .method_not_allowed_fallback(unknown_operation)
        .with_state(shared)
}

// ---- responses -------------------------------------------------------------

/// A response with a JSON body.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON);
    resp
}

/// Bedrock's error shape: `x-amzn-ErrorType` and `{"message": ...}`.
pub(crate) fn exception(status: u16, error_type_header: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&serde_json::json!({ "message": message })).unwrap_or_default();
    let mut resp = json_response(status, body);
    if let Ok(v) = HeaderValue::from_str(error_type_header) {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

/// A modeled exception with its documented status.
pub(crate) fn modeled(error_type: &str, message: Option<&str>) -> Response {
    let (status, default) = exception_defaults(error_type);
    exception(status, error_type, message.unwrap_or(default))
}

/// `400 ValidationException`.
pub(crate) fn validation(message: &str) -> Response {
    exception(400, "ValidationException", message)
}

async fn unknown_operation(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    if shared.record {
        record(&shared, &parts, &[], None, None, None);
    }
    exception(404, "UnknownOperationException", "The requested operation is not supported.")
}

// ---- the common start of every API request -----------------------------------

/// What the API handlers have once the request was read and its signature
/// accepted.
pub(crate) struct Prepared {
    pub(crate) tracker: Tracker,
    pub(crate) conn: Option<ConnHandle>,
    pub(crate) body: Bytes,
    pub(crate) model_id: String,
    pub(crate) started: Instant,
}

impl Prepared {
    /// Finish with `resp` (counted as completed).
    pub(crate) fn answer(mut self, resp: Response) -> Response {
        self.tracker.done();
        resp
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Count and track the request, read its body, verify its signature and
/// record it. On `Err` the request is already accounted for.
pub(crate) async fn prepare(
    shared: &Arc<Shared>,
    req: Request,
    model_id: String,
    operation: &str,
) -> Result<Prepared, Response> {
    let started = Instant::now();
    let mut tracker = shared.track();
    let (mut parts, body) = req.into_parts();
    let conn = parts.extensions.remove::<ConnHandle>();
    let too_large = http_body::Body::size_hint(&body).lower() > MAX_BODY as u64;
    let read = if too_large {
        Err(true)
    } else {
        axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
            e.into_inner().downcast_ref::<http_body_util::LengthLimitError>().is_some()
        })
    };
    let body = match read {
        Ok(b) => b,
        // The client went away mid-body: counted as cancelled.
        Err(false) => return Err(validation("Could not read the request body.")),
        Err(true) => {
            tracker.done();
            if shared.record {
                record(shared, &parts, &[], Some(model_id), Some(operation), None);
            }
            return Err(validation(&format!("The request body is larger than {MAX_BODY} bytes.")));
        }
    };
    let verdict =
        shared.verifier.verify(&parts.method, &parts.uri, &parts.headers, &body, unix_now());
    if shared.record {
        let auth_error = verdict.as_ref().err().map(|r| r.error_type().to_owned());
        record(shared, &parts, &body, Some(model_id.clone()), Some(operation), auth_error);
    }
    if let Err(rejection) = verdict {
        shared.reject();
        tracker.done();
        return Err(exception(
            rejection.status(),
            &rejection.error_type_header(),
            &rejection.message(),
        ));
    }
    Ok(Prepared { tracker, conn, body, model_id, started })
}

fn record(
    shared: &Shared,
    parts: &Parts,
    body: &[u8],
    model_id: Option<String>,
    operation: Option<&str>,
    auth_error: Option<String>,
) {
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    shared.recorded().push(BedrockRecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers,
        body,
        model_id,
        operation: operation.map(str::to_owned),
        auth_error,
    });
}

// ---- behaviours that look the same for every operation ---------------------

/// A successful non-streaming answer: JSON body and extra headers.
pub(crate) struct OkBody {
    pub(crate) body: Vec<u8>,
    pub(crate) headers: Vec<(&'static str, String)>,
}

/// Answers `Exception`, `Hang` and `Reset`; hands the others back.
pub(crate) async fn common_behaviour(
    p: &mut Prepared,
    b: BedrockBehaviour,
) -> Result<Response, BedrockBehaviour> {
    match b {
        BedrockBehaviour::Exception { status, error_type, message } => {
            p.tracker.done();
            let (default_status, default_message) = exception_defaults(&error_type);
            Ok(exception(
                status.unwrap_or(default_status),
                &error_type,
                message.as_deref().unwrap_or(default_message),
            ))
        }
        BedrockBehaviour::Hang => match std::future::pending::<Infallible>().await {},
        BedrockBehaviour::Reset => {
            p.tracker.done();
            match &p.conn {
                Some(conn) => {
                    conn.reset();
                    match std::future::pending::<Infallible>().await {}
                }
                None => Ok(modeled(
                    "InternalServerException",
                    Some("connection reset requested but not possible"),
                )),
            }
        }
        other => Err(other),
    }
}

/// Answer a non-streaming request; `ok(chunks, latency_ms)` builds the
/// successful body.
pub(crate) async fn non_streaming(
    mut p: Prepared,
    b: BedrockBehaviour,
    ok: impl FnOnce(u32, u64) -> OkBody,
) -> Response {
    let b = match common_behaviour(&mut p, b).await {
        Ok(resp) => return resp,
        Err(b) => b,
    };
    match b {
        BedrockBehaviour::Ok { ttft_ms, chunks, .. } => {
            if ttft_ms > 0 {
                tokio::time::sleep(Duration::from_millis(ttft_ms)).await;
            }
            let latency = p.started.elapsed().as_millis() as u64;
            let ok = ok(chunks, latency);
            let mut resp = json_response(StatusCode::OK, ok.body);
            for (k, v) in ok.headers {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    resp.headers_mut().insert(k, v);
                }
            }
            p.answer(resp)
        }
        BedrockBehaviour::ExceptionMidStream { error_type, message, .. } => {
            p.answer(modeled(&error_type, message.as_deref()))
        }
        BedrockBehaviour::CorruptFrame { .. } | BedrockBehaviour::CorruptPrelude { .. } => {
            let mut body = ok(4, 0).body;
            body.truncate(body.len() / 2);
            p.answer(json_response(StatusCode::OK, body))
        }
        BedrockBehaviour::CutAfterChunks { chunks } => {
            let full = ok(chunks, 0).body;
            let len = full.len();
            let mut resp = Response::new(Body::new(CutBody {
                first: Some(Bytes::from(full).slice(..len / 2)),
                tracker: Some(p.tracker),
                conn: p.conn,
            }));
            let h = resp.headers_mut();
            h.insert(CONTENT_TYPE, APPLICATION_JSON);
            h.insert(CONTENT_LENGTH, HeaderValue::from(len));
            resp
        }
        // Answered by common_behaviour.
        BedrockBehaviour::Exception { .. } | BedrockBehaviour::Hang | BedrockBehaviour::Reset => {
            p.answer(modeled("InternalServerException", None))
        }
    }
}

/// Sends `first`, then closes the connection before the rest.
pub(crate) struct CutBody {
    pub(crate) first: Option<Bytes>,
    pub(crate) tracker: Option<Tracker>,
    pub(crate) conn: Option<ConnHandle>,
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
                None => return Poll::Ready(None),
            }
        }
        Poll::Pending
    }
}

// ---- control endpoints (/_emulator/...) -------------------------------------

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
    match serde_json::from_slice::<BedrockBehaviour>(&body) {
        Ok(b) => {
            BedrockControl { shared }.set_behaviour(b);
            no_content()
        }
        Err(e) => control_error(format!("invalid behaviour: {e}")),
    }
}

async fn get_behaviour(State(shared): State<Arc<Shared>>) -> Response {
    json_ok(&BedrockControl { shared }.behaviour())
}

async fn put_script(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<BedrockBehaviour>>(&body) {
        Ok(bs) => {
            BedrockControl { shared }.push_script(bs);
            no_content()
        }
        Err(e) => control_error(format!("invalid script (expected an array of behaviours): {e}")),
    }
}

async fn delete_script(State(shared): State<Arc<Shared>>) -> Response {
    BedrockControl { shared }.clear_script();
    no_content()
}

async fn get_stats(State(shared): State<Arc<Shared>>) -> Response {
    let c = BedrockControl { shared };
    let s = c.stats();
    json_ok(&serde_json::json!({
        "requests": s.requests,
        "completed": s.completed,
        "cancelled": s.cancelled,
        "in_flight": s.in_flight,
        "rejected_signatures": c.rejected_signatures(),
    }))
}

async fn get_recorded(State(shared): State<Arc<Shared>>) -> Response {
    let recorded = shared.recorded().clone();
    json_ok(&recorded)
}

async fn delete_recorded(State(shared): State<Arc<Shared>>) -> Response {
    shared.recorded().clear();
    no_content()
}
