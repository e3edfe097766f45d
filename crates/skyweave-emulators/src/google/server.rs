//! The Google emulator's HTTP server: accept loop, per-connection control
//! (cut / reset), router, Google's error shape, what every model handler
//! does first (count, read, check the bearer token, record), and the
//! streaming body shared by both response formats.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use http_body::Frame;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::{
    default_message, gemini, google_status_for, http_status_for, oauth, openai, GoogleBehaviour,
    GoogleConfig, GoogleControl, GoogleRecordedRequest, Shared, Tracker, INVALID_CREDENTIALS,
    MISSING_CREDENTIALS,
};
use crate::net;
use crate::server::Delay;

/// Request bodies larger than this are refused.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// What Google's front end sends with JSON bodies.
pub(crate) const APPLICATION_JSON: HeaderValue =
    HeaderValue::from_static("application/json; charset=UTF-8");

/// A running Google emulator. Dropping it stops accepting and closes every
/// connection.
pub struct GoogleEmulator {
    /// The bound address (with the real port when `bind` had port 0).
    pub addr: SocketAddr,
    pub control: GoogleControl,
    _server: net::Server,
}

impl fmt::Debug for GoogleEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoogleEmulator")
            .field("addr", &self.addr)
            .field("control", &self.control)
            .finish()
    }
}

impl GoogleEmulator {
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        net::base_url(self.addr)
    }

    /// `{base_url}/token`: the token endpoint, and the `aud` JWT assertions
    /// must carry.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url())
    }
}

pub(crate) async fn spawn(config: GoogleConfig) -> std::io::Result<GoogleEmulator> {
    let shared = Arc::new(Shared::new(&config)?);
    let listener = TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    let router = router(Arc::clone(&shared), addr);
    let name_header = shared.name_header.clone();
    let decorate = move |h: &mut HeaderMap| {
        h.insert("x-emulator-name", name_header.clone());
    };
    let _server = net::serve(listener, router, decorate);
    Ok(GoogleEmulator { addr, control: GoogleControl { shared }, _server })
}

pub(crate) use crate::net::ConnHandle;

/// The address the emulator is bound to, for the token endpoint's audience.
#[derive(Clone, Copy)]
pub(crate) struct BoundAddr(pub(crate) SocketAddr);

fn router(shared: Arc<Shared>, addr: SocketAddr) -> Router {
    const MODELS: &str =
        "/{version}/projects/{project}/locations/{location}/publishers/{publisher}/models/{model_action}";
    const OPENAI: &str =
        "/{version}/projects/{project}/locations/{location}/endpoints/openapi/chat/completions";
    const SA: &str = "/computeMetadata/v1/instance/service-accounts/{account}";
    Router::new()
        .route("/token", post(oauth::token))
        .route(&format!("{SA}/token"), get(oauth::metadata_token))
        .route(&format!("{SA}/email"), get(oauth::metadata_email))
        .route("/computeMetadata/v1/project/project-id", get(oauth::metadata_project_id))
        .route(MODELS, post(gemini::handle))
        .route(OPENAI, post(openai::chat))
        .route("/_emulator/behaviour", put(put_behaviour).get(get_behaviour))
        .route("/_emulator/script", put(put_script).post(put_script).delete(delete_script))
        .route("/_emulator/stats", get(get_stats))
        .route("/_emulator/recorded", get(get_recorded).delete(delete_recorded))
        .route("/_emulator/tokens", post(post_token).delete(delete_tokens))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(axum::Extension(BoundAddr(addr)))
        .with_state(shared)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ---- responses -------------------------------------------------------------

/// A response with a JSON body.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON);
    resp
}

/// The error object of Google's JSON error shape:
/// `{"error": {"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED"}}`.
pub(crate) fn error_value(code: u16, status: &str, message: &str, details: Option<Value>) -> Value {
    let mut error = json!({ "code": code, "message": message, "status": status });
    if let Some(details) = details {
        error["details"] = details;
    }
    json!({ "error": error })
}

/// How error bodies are framed: a plain object, or wrapped in a one-element
/// array (a JSON-array `streamGenerateContent`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorFraming {
    Object,
    Array,
}

/// An error answer in Google's shape.
pub(crate) fn google_error(
    framing: ErrorFraming,
    code: u16,
    status: &str,
    message: &str,
    details: Option<Value>,
) -> Response {
    let value = error_value(code, status, message, details);
    let value = match framing {
        ErrorFraming::Object => value,
        ErrorFraming::Array => Value::Array(vec![value]),
    };
    let http = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(http, serde_json::to_vec(&value).unwrap_or_default())
}

/// `400 INVALID_ARGUMENT`.
pub(crate) fn invalid_argument(framing: ErrorFraming, message: &str) -> Response {
    google_error(framing, 400, "INVALID_ARGUMENT", message, None)
}

/// The (HTTP status, canonical code, message) a `Status` or
/// `ErrorMidStream` behaviour answers with.
pub(crate) fn status_parts(
    status: u16,
    google_status: Option<&str>,
    message: Option<&str>,
) -> (u16, String, String) {
    let code = google_status.unwrap_or_else(|| google_status_for(status)).to_owned();
    let http = if StatusCode::from_u16(status).is_ok() { status } else { http_status_for(&code) };
    let message = message.unwrap_or_else(|| default_message(&code)).to_owned();
    (http, code, message)
}

async fn not_found(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    unknown_route(&shared, req)
}

/// Google's front end answers unknown URLs with an HTML page. Recorded, not
/// counted as a model request.
pub(crate) fn unknown_route(shared: &Shared, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    if shared.record {
        record(shared, &parts, &[], None, None, None);
    }
    let path = parts.uri.path();
    if path.starts_with("/computeMetadata/") {
        let mut resp = oauth::metadata_text(StatusCode::NOT_FOUND, "text/html; charset=UTF-8", "");
        *resp.body_mut() = Body::from(not_found_page(path));
        return resp;
    }
    let mut resp = Response::new(Body::from(not_found_page(path)));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=UTF-8"));
    resp
}

fn not_found_page(path: &str) -> String {
    let path: String = path.chars().filter(|c| !matches!(c, '<' | '>' | '&' | '"')).collect();
    format!(
        "<!DOCTYPE html>\n<html lang=en>\n<title>Error 404 (Not Found)!!1</title>\n\
         <p><b>404.</b> <ins>That's an error.</ins>\n\
         <p>The requested URL <code>{path}</code> was not found on this server.  \
         <ins>That's all we know.</ins>\n"
    )
}

// ---- the common start of every model request --------------------------------

/// What the model handlers have once the request was read and authenticated.
pub(crate) struct Prepared {
    pub(crate) tracker: Tracker,
    pub(crate) conn: Option<ConnHandle>,
    pub(crate) body: Bytes,
}

impl Prepared {
    /// Finish with `resp` (counted as completed).
    pub(crate) fn answer(mut self, resp: Response) -> Response {
        self.tracker.done();
        resp
    }
}

/// Where a model request is addressed.
pub(crate) struct Target<'a> {
    pub(crate) project: &'a str,
    pub(crate) location: &'a str,
    /// For the permission error: the resource name after `locations/{l}/`.
    pub(crate) resource: String,
    pub(crate) operation: &'static str,
    /// The path's model, when the route has one.
    pub(crate) model: Option<String>,
    /// `service.method` for the `ErrorInfo` of a 401.
    pub(crate) method: &'static str,
    pub(crate) framing: ErrorFraming,
}

/// Count and track the request, read its body, check its bearer token and
/// project, and record it. On `Err` the request is already accounted for.
pub(crate) async fn prepare(
    shared: &Arc<Shared>,
    req: Request,
    target: Target<'_>,
) -> Result<Prepared, Response> {
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
        Err(false) => {
            return Err(invalid_argument(target.framing, "Could not read the request body."))
        }
        Err(true) => {
            tracker.done();
            if shared.record {
                record(shared, &parts, &[], Some(target.operation), target.model, None);
            }
            return Err(google_error(
                target.framing,
                413,
                "INVALID_ARGUMENT",
                &format!("Request payload size exceeds the limit: {MAX_BODY} bytes."),
                None,
            ));
        }
    };
    let auth = check_bearer(shared, &parts, &target);
    let model = target.model.clone().or_else(|| {
        // The OpenAI-compatible mode names the model in the body.
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_owned))
    });
    if shared.record {
        let auth_error = auth.as_ref().err().map(|d| d.reason.clone());
        record(shared, &parts, &body, Some(target.operation), model, auth_error);
    }
    if let Err(denied) = auth {
        tracker.done();
        return Err(denied.response);
    }
    Ok(Prepared { tracker, conn, body })
}

/// Why a request may not proceed, and the answer to it.
pub(crate) struct Denied {
    pub(crate) reason: String,
    pub(crate) response: Response,
}

impl Denied {
    pub(crate) fn new(reason: impl Into<String>, response: Response) -> Box<Self> {
        Box::new(Denied { reason: reason.into(), response })
    }
}

/// `Err` when the request may not proceed.
fn check_bearer(shared: &Shared, parts: &Parts, target: &Target<'_>) -> Result<(), Box<Denied>> {
    let header = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = header.and_then(|h| {
        let (scheme, rest) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    let unauthenticated = |reason: &'static str, message: &str| {
        shared.count_unauthenticated();
        let details = json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": "googleapis.com",
            "metadata": {
                "service": "aiplatform.googleapis.com",
                "method": target.method,
            },
        }]);
        let mut resp = google_error(target.framing, 401, "UNAUTHENTICATED", message, Some(details));
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
        );
        Err(Denied::new(reason, resp))
    };
    match token {
        None | Some("") => return unauthenticated("CREDENTIALS_MISSING", MISSING_CREDENTIALS),
        Some(token) => match shared.check_token(token) {
            Ok(()) => {}
            Err(true) => return unauthenticated("ACCESS_TOKEN_EXPIRED", INVALID_CREDENTIALS),
            Err(false) => {
                return unauthenticated("ACCESS_TOKEN_TYPE_UNSUPPORTED", INVALID_CREDENTIALS)
            }
        },
    }
    if target.project != shared.project || target.location != shared.location {
        let message = format!(
            "Permission 'aiplatform.endpoints.predict' denied on resource \
             '//aiplatform.googleapis.com/projects/{}/locations/{}/{}' (or it may not exist).",
            target.project, target.location, target.resource
        );
        let details = json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "IAM_PERMISSION_DENIED",
            "domain": "aiplatform.googleapis.com",
            "metadata": {"permission": "aiplatform.endpoints.predict"},
        }]);
        let resp = google_error(target.framing, 403, "PERMISSION_DENIED", &message, Some(details));
        return Err(Denied::new("IAM_PERMISSION_DENIED", resp));
    }
    Ok(())
}

/// Record a request (model, token, metadata or unknown route).
pub(crate) fn record(
    shared: &Shared,
    parts: &Parts,
    body: &[u8],
    operation: Option<&str>,
    model: Option<String>,
    auth_error: Option<String>,
) {
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let is_form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = if is_form {
        let fields = oauth::parse_form(body)
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect::<serde_json::Map<_, _>>();
        Value::Object(fields)
    } else {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    };
    shared.recorded().push(GoogleRecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers,
        body,
        operation: operation.map(str::to_owned),
        model,
        auth_error,
    });
}

// ---- behaviours that look the same for every operation ---------------------

/// Answers `Status`, `Hang` and `Reset`; hands the others back.
pub(crate) async fn common_behaviour(
    p: &mut Prepared,
    b: GoogleBehaviour,
    framing: ErrorFraming,
) -> Result<Response, GoogleBehaviour> {
    match b {
        GoogleBehaviour::Status { status, google_status, message } => {
            p.tracker.done();
            let (http, code, message) =
                status_parts(status, google_status.as_deref(), message.as_deref());
            Ok(google_error(framing, http, &code, &message, None))
        }
        GoogleBehaviour::Hang => match std::future::pending::<Infallible>().await {},
        GoogleBehaviour::Reset => {
            p.tracker.done();
            match &p.conn {
                Some(conn) => {
                    conn.reset();
                    match std::future::pending::<Infallible>().await {}
                }
                None => Ok(google_error(
                    framing,
                    500,
                    "INTERNAL",
                    "connection reset requested but not possible",
                    None,
                )),
            }
        }
        other => Err(other),
    }
}

/// Answer a non-streaming request; `ok(chunks)` builds the successful JSON
/// body.
pub(crate) async fn non_streaming(
    mut p: Prepared,
    b: GoogleBehaviour,
    ok: impl FnOnce(u32) -> Vec<u8>,
) -> Response {
    let b = match common_behaviour(&mut p, b, ErrorFraming::Object).await {
        Ok(resp) => return resp,
        Err(b) => b,
    };
    match b {
        GoogleBehaviour::Ok { ttft_ms, chunks, .. } => {
            if ttft_ms > 0 {
                tokio::time::sleep(Duration::from_millis(ttft_ms)).await;
            }
            p.answer(json_response(StatusCode::OK, ok(chunks)))
        }
        GoogleBehaviour::ErrorMidStream { status, google_status, message, .. } => {
            let (http, code, message) =
                status_parts(status, google_status.as_deref(), message.as_deref());
            p.answer(google_error(ErrorFraming::Object, http, &code, &message, None))
        }
        GoogleBehaviour::Malformed => {
            let mut body = ok(4);
            body.truncate(body.len() / 2);
            p.answer(json_response(StatusCode::OK, body))
        }
        GoogleBehaviour::CutAfterChunks { chunks } => {
            let full = ok(chunks);
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
        GoogleBehaviour::Status { .. } | GoogleBehaviour::Hang | GoogleBehaviour::Reset => {
            p.answer(google_error(ErrorFraming::Object, 500, "INTERNAL", "unreachable", None))
        }
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
                None => return Poll::Ready(None),
            }
        }
        Poll::Pending
    }
}

// ---- streaming -------------------------------------------------------------

/// One step of a streamed body.
pub(crate) enum Step {
    Data(Bytes),
    /// Close the connection mid-body.
    Cut,
}

/// A planned stream: steps, each sent once its delay has passed.
#[derive(Default)]
pub(crate) struct Plan(pub(crate) VecDeque<(Duration, Step)>);

impl Plan {
    pub(crate) fn data(&mut self, delay: Duration, bytes: impl Into<Bytes>) {
        self.0.push_back((delay, Step::Data(bytes.into())));
    }

    pub(crate) fn cut(&mut self) {
        self.0.push_back((Duration::ZERO, Step::Cut));
    }

    /// The response: `content_type` and the planned body.
    pub(crate) fn into_response(self, p: Prepared, content_type: &'static str) -> Response {
        let mut resp = Response::new(Body::new(StepBody {
            steps: self.0,
            delay: None,
            tracker: Some(p.tracker),
            conn: p.conn,
            state: BodyState::Running,
        }));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Running,
    End,
    /// The connection is being closed; never yields again.
    Dead,
}

/// A streamed body: each step handed to hyper (and written) when its delay
/// has passed.
struct StepBody {
    steps: VecDeque<(Duration, Step)>,
    delay: Option<Delay>,
    tracker: Option<Tracker>,
    conn: Option<ConnHandle>,
    state: BodyState,
}

impl StepBody {
    fn finish_tracker(&mut self) {
        if let Some(mut t) = self.tracker.take() {
            t.done();
        }
    }
}

impl http_body::Body for StepBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                BodyState::End => return Poll::Ready(None),
                BodyState::Dead => return Poll::Pending,
                BodyState::Running => {}
            }
            if let Some(delay) = &mut this.delay {
                ready!(delay.poll(cx));
                this.delay = None;
                if let Some((d, _)) = this.steps.front_mut() {
                    *d = Duration::ZERO;
                }
            }
            let Some((delay, _)) = this.steps.front() else {
                this.finish_tracker();
                this.state = BodyState::End;
                return Poll::Ready(None);
            };
            if !delay.is_zero() {
                this.delay = Some(Delay::new(*delay));
                continue;
            }
            match this.steps.pop_front().map(|(_, s)| s) {
                Some(Step::Data(bytes)) => {
                    if this.steps.is_empty() {
                        this.finish_tracker();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Some(Step::Cut) => {
                    this.finish_tracker();
                    this.state = BodyState::Dead;
                    match this.conn.take() {
                        Some(conn) => conn.cut(),
                        None => {
                            this.state = BodyState::End;
                            return Poll::Ready(None);
                        }
                    }
                }
                None => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::End
    }
}

// ---- control endpoints (/_emulator/...) -------------------------------------

fn control_error(message: String) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        serde_json::to_vec(&json!({ "error": message })).unwrap_or_default(),
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
    match serde_json::from_slice::<GoogleBehaviour>(&body) {
        Ok(b) => {
            GoogleControl { shared }.set_behaviour(b);
            no_content()
        }
        Err(e) => control_error(format!("invalid behaviour: {e}")),
    }
}

async fn get_behaviour(State(shared): State<Arc<Shared>>) -> Response {
    json_ok(&GoogleControl { shared }.behaviour())
}

async fn put_script(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<GoogleBehaviour>>(&body) {
        Ok(bs) => {
            GoogleControl { shared }.push_script(bs);
            no_content()
        }
        Err(e) => control_error(format!("invalid script (expected an array of behaviours): {e}")),
    }
}

async fn delete_script(State(shared): State<Arc<Shared>>) -> Response {
    GoogleControl { shared }.clear_script();
    no_content()
}

async fn get_stats(State(shared): State<Arc<Shared>>) -> Response {
    let c = GoogleControl { shared };
    let s = c.stats();
    json_ok(&json!({
        "requests": s.requests,
        "completed": s.completed,
        "cancelled": s.cancelled,
        "in_flight": s.in_flight,
        "unauthenticated": c.unauthenticated(),
        "token_requests": c.token_requests(),
        "issued_tokens": c.issued_tokens(),
        "rejected_tokens": c.rejected_tokens(),
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

async fn post_token(State(shared): State<Arc<Shared>>) -> Response {
    let token = shared.issue_token();
    json_ok(&json!({
        "access_token": token,
        "expires_in": shared.token_lifetime_secs,
        "token_type": "Bearer",
    }))
}

async fn delete_tokens(State(shared): State<Arc<Shared>>) -> Response {
    GoogleControl { shared }.revoke_tokens();
    no_content()
}
