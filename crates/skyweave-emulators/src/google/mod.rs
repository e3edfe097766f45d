//! An emulator of the Google Cloud side of Vertex AI, written from Google's
//! published references: an OAuth 2.0 token endpoint for the service-account
//! JWT bearer grant (the assertion's RS256 signature is verified against a
//! configured public key), the Compute Engine metadata server's token
//! endpoint, Gemini `generateContent` / `streamGenerateContent` and the
//! OpenAI-compatible `endpoints/openapi/chat/completions`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use skyweave_emulators::{spawn_google, test_key_pems, GoogleBehaviour, GoogleConfig};
//! let (_private, public) = test_key_pems();
//! let emu = spawn_google(GoogleConfig::new(
//!     "gcp-central",
//!     "my-project",
//!     "us-central1",
//!     "skyweave@my-project.iam.gserviceaccount.com",
//!     public,
//! ))
//! .await?;
//! emu.control.push_script(vec![GoogleBehaviour::google_status("RESOURCE_EXHAUSTED")]);
//! // POST {emu.base_url()}/token with a JWT signed by the private key gets an
//! // access token; the first Gemini request with it gets a 429
//! // RESOURCE_EXHAUSTED, the following ones "Hello from gcp-central ...".
//! # Ok(()) }
//! ```
//!
//! Routes:
//!
//! - `POST /token`: `application/x-www-form-urlencoded` with
//!   `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion={JWT}`.
//!   The JWT must be signed with RS256 by the private half of
//!   [`GoogleConfig::public_key_pem`]; its claims must have `iss` equal to
//!   [`GoogleConfig::client_email`], `aud` equal to the URL of this endpoint
//!   (`{base_url}/token`, also accepted with the request's `Host`), a `scope`
//!   including `https://www.googleapis.com/auth/cloud-platform`, and `iat` /
//!   `exp` at most one hour apart and valid now (60 s of clock skew).
//!   Answers `{"access_token":"ya29.emulator-...","expires_in":3599,"token_type":"Bearer"}`;
//!   refusals are `400 {"error": "invalid_grant" | "invalid_scope" |
//!   "invalid_request" | "unsupported_grant_type", "error_description": ...}`.
//! - `GET /computeMetadata/v1/instance/service-accounts/{default|email}/token`:
//!   the same token JSON, only with the header `Metadata-Flavor: Google`
//!   (403 otherwise, and for requests with `X-Forwarded-For`); also
//!   `.../service-accounts/{account}/email` and `/computeMetadata/v1/project/project-id`.
//!   Every metadata response carries `Metadata-Flavor: Google`.
//! - `POST /v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`
//!   and `...:streamGenerateContent` (`?alt=sse`: server-sent events framed
//!   `data: {GenerateContentResponse}\r\n\r\n`, no end marker; without it, one
//!   JSON array streamed element by element). `v1beta1` works the same.
//! - `POST /v1/projects/{project}/locations/{location}/endpoints/openapi/chat/completions`:
//!   OpenAI chat completions (`model` like `google/gemini-2.0-flash`),
//!   streaming as `chat.completion.chunk` events ending in `data: [DONE]`.
//! - unauthenticated control routes under `/_emulator/` (`behaviour`,
//!   `script`, `stats`, `recorded`, `tokens`), as in the other emulators.
//!
//! The model routes require `Authorization: Bearer {token}` with a token this
//! emulator issued and that has not expired (else `401 UNAUTHENTICATED`), and
//! the configured project and location in the path (else `403
//! PERMISSION_DENIED`). Errors have Google's shape,
//! `{"error": {"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED"}}`
//! (wrapped in a one-element array for a JSON-array `streamGenerateContent`).
//!
//! Order of checks for a model request: count it, read the body, check the
//! bearer token (a refusal is counted in [`GoogleControl::unauthenticated`]),
//! the project and location, validate the body like Vertex
//! (`400 INVALID_ARGUMENT`), and only then take the next [`GoogleBehaviour`]:
//! refused requests never consume a scripted behaviour.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use http::HeaderValue;
use serde::{Deserialize, Serialize};

mod gemini;
mod oauth;
mod openai;
mod server;

#[cfg(test)]
mod tests;

pub use server::GoogleEmulator;

use crate::tracking::Counters;
pub(crate) use crate::tracking::Tracker;
use crate::Stats;

/// The OAuth scope every token request must include.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The RSA key pair in `testdata/` as (private key PKCS#8 PEM, public key
/// SubjectPublicKeyInfo PEM). It stands in for a service-account key in
/// tests and grants access to nothing.
pub fn test_key_pems() -> (&'static str, &'static str) {
    (
        include_str!("../../testdata/google-test-sa.key.pem"),
        include_str!("../../testdata/google-test-sa.pub.pem"),
    )
}

/// How to start a Google emulator.
#[derive(Clone, Debug)]
pub struct GoogleConfig {
    /// Appears in replies (`"Hello from {name}"`) and in the
    /// `x-emulator-name` header of every response.
    pub name: String,
    /// The one project the model routes serve.
    pub project: String,
    /// The one location (region) the model routes serve, e.g. `us-central1`.
    pub location: String,
    /// The service account's email: the required `iss` of JWT assertions.
    pub client_email: String,
    /// PEM public key that verifies JWT assertions: `BEGIN PUBLIC KEY`
    /// (SubjectPublicKeyInfo) or `BEGIN RSA PUBLIC KEY` (PKCS#1).
    pub public_key_pem: String,
    /// Address to bind; `127.0.0.1:0` picks a free port.
    pub bind: SocketAddr,
    /// Lifetime of issued access tokens, in seconds (`expires_in`, default
    /// 3599 like Google). Expired tokens are refused with 401.
    pub token_lifetime_secs: u64,
    /// Keep every request for [`GoogleControl::recorded`]. On by default.
    pub record: bool,
}

impl GoogleConfig {
    /// On `127.0.0.1:0`, tokens valid 3599 s, recording on.
    pub fn new(
        name: impl Into<String>,
        project: impl Into<String>,
        location: impl Into<String>,
        client_email: impl Into<String>,
        public_key_pem: impl Into<String>,
    ) -> Self {
        GoogleConfig {
            name: name.into(),
            project: project.into(),
            location: location.into(),
            client_email: client_email.into(),
            public_key_pem: public_key_pem.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            token_lifetime_secs: 3599,
            record: true,
        }
    }

    /// Bind this address instead of `127.0.0.1:0`.
    pub fn with_bind(mut self, bind: SocketAddr) -> Self {
        self.bind = bind;
        self
    }

    /// See [`GoogleConfig::token_lifetime_secs`].
    pub fn with_token_lifetime_secs(mut self, secs: u64) -> Self {
        self.token_lifetime_secs = secs;
        self
    }

    /// Turn request recording on or off.
    pub fn with_record(mut self, record: bool) -> Self {
        self.record = record;
        self
    }
}

/// Start a Google emulator: binds `config.bind` and serves it on the current
/// tokio runtime until the returned [`GoogleEmulator`] is dropped. Fails with
/// `InvalidInput` when the public key PEM cannot be parsed.
pub async fn spawn_google(config: GoogleConfig) -> std::io::Result<GoogleEmulator> {
    server::spawn(config).await
}

/// What the emulator does with a valid, authenticated model request.
///
/// "Chunks" are content pieces: streamed events (one text piece each) and
/// output tokens. A function call is one piece of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GoogleBehaviour {
    /// A normal answer. `ttft_ms` is waited before the first event (the
    /// response head goes out at once) or before a non-streaming response;
    /// `inter_chunk_ms` separates consecutive events; `chunks` is the number
    /// of text pieces. `generationConfig.maxOutputTokens` (or `max_tokens`)
    /// below `chunks` cuts the reply with finish reason `MAX_TOKENS`
    /// (`length`).
    Ok {
        #[serde(default)]
        ttft_ms: u64,
        #[serde(default)]
        inter_chunk_ms: u64,
        #[serde(default = "default_chunks")]
        chunks: u32,
    },
    /// An HTTP error in Google's shape before any body. `status` is the HTTP
    /// status; `google_status` the canonical code name (default: the one
    /// Google maps to `status`, e.g. 429 `RESOURCE_EXHAUSTED`, 503
    /// `UNAVAILABLE`); `message` defaults to a Vertex-like text.
    Status {
        status: u16,
        #[serde(default)]
        google_status: Option<String>,
        #[serde(default)]
        message: Option<String>,
    },
    /// Streaming: after `after_chunks` content events, one event whose data
    /// is a Google error object (`{"error": {...}}`), then the body ends.
    /// Non-streaming: the same error as an HTTP error.
    ErrorMidStream {
        after_chunks: u32,
        status: u16,
        #[serde(default)]
        google_status: Option<String>,
        #[serde(default)]
        message: Option<String>,
    },
    /// Read the request and never answer; counted as cancelled once the
    /// client goes away.
    Hang,
    /// Abort the TCP connection (RST) without any response.
    Reset,
    /// Streaming: `chunks` content events, then the connection is closed
    /// mid-body (no final event, no terminating chunk). Non-streaming: the
    /// head with the full `Content-Length` and half of the body, then close.
    CutAfterChunks { chunks: u32 },
    /// `200` with a body that is not JSON; streaming: one event whose data is
    /// not JSON (followed by `data: [DONE]` in the OpenAI-compatible mode).
    Malformed,
}

fn default_chunks() -> u32 {
    4
}

impl Default for GoogleBehaviour {
    fn default() -> Self {
        GoogleBehaviour::Ok { ttft_ms: 0, inter_chunk_ms: 0, chunks: 4 }
    }
}

impl GoogleBehaviour {
    /// `Ok` with the given timings.
    pub fn ok(ttft_ms: u64, inter_chunk_ms: u64, chunks: u32) -> Self {
        GoogleBehaviour::Ok { ttft_ms, inter_chunk_ms, chunks }
    }

    /// `Status` with the canonical code and message for `status`.
    pub fn status(status: u16) -> Self {
        GoogleBehaviour::Status { status, google_status: None, message: None }
    }

    /// `Status` for a canonical code name (`RESOURCE_EXHAUSTED`, ...) with
    /// its HTTP status and default message.
    pub fn google_status(google_status: &str) -> Self {
        GoogleBehaviour::Status {
            status: http_status_for(google_status),
            google_status: Some(google_status.to_owned()),
            message: None,
        }
    }
}

/// The canonical `google.rpc.Code` name Google's HTTP front end sends with
/// an HTTP status.
pub fn google_status_for(http_status: u16) -> &'static str {
    match http_status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// The HTTP status of a canonical `google.rpc.Code` name (unknown: 500).
pub fn http_status_for(google_status: &str) -> u16 {
    match google_status {
        "OK" => 200,
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => 400,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" => 404,
        "ABORTED" | "ALREADY_EXISTS" => 409,
        "RESOURCE_EXHAUSTED" => 429,
        "CANCELLED" => 499,
        "UNIMPLEMENTED" => 501,
        "UNAVAILABLE" => 503,
        "DEADLINE_EXCEEDED" => 504,
        _ => 500,
    }
}

/// A default message for a canonical code, as Vertex words it.
pub(crate) fn default_message(google_status: &str) -> &'static str {
    match google_status {
        "RESOURCE_EXHAUSTED" => {
            "Resource exhausted. Please try again later. Please refer to \
             https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details."
        }
        "UNAVAILABLE" => "The service is currently unavailable.",
        "INVALID_ARGUMENT" => "Request contains an invalid argument.",
        "PERMISSION_DENIED" => "The caller does not have permission",
        "UNAUTHENTICATED" => INVALID_CREDENTIALS,
        "NOT_FOUND" => "Requested entity was not found.",
        "DEADLINE_EXCEEDED" => "Deadline expired before operation could complete.",
        "CANCELLED" => "The operation was cancelled.",
        "UNIMPLEMENTED" => "Operation is not implemented, or supported, or enabled.",
        _ => "Internal error encountered.",
    }
}

pub(crate) const MISSING_CREDENTIALS: &str = "Request is missing required authentication \
     credential. Expected OAuth 2 access token, login cookie or other valid authentication \
     credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";

pub(crate) const INVALID_CREDENTIALS: &str = "Request had invalid authentication credentials. \
     Expected OAuth 2 access token, login cookie or other valid authentication credential. See \
     https://developers.google.com/identity/sign-in/web/devconsole-project.";

/// One request as the Google emulator received it (model, token and
/// metadata routes; not `/_emulator/`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoogleRecordedRequest {
    pub method: String,
    /// Path without the query string, as sent.
    pub path: String,
    /// Raw query string (without `?`), if any.
    pub query: Option<String>,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON; a form body as an object of its
    /// (percent-decoded) fields; `Null` when empty or neither.
    pub body: serde_json::Value,
    /// `token`, `metadata`, `generateContent`, `streamGenerateContent` or
    /// `chat.completions`; `None` for unknown routes.
    pub operation: Option<String>,
    /// The model: the path's `{model}` (`gemini-2.0-flash`) or the body's
    /// `model` in the OpenAI-compatible mode.
    pub model: Option<String>,
    /// Why the request was refused before its behaviour (bad bearer token,
    /// bad JWT, missing `Metadata-Flavor`, wrong project), if it was.
    pub auth_error: Option<String>,
}

impl GoogleRecordedRequest {
    /// First value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Handle to steer and observe a running Google emulator. Cheap to clone.
#[derive(Clone)]
pub struct GoogleControl {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for GoogleControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoogleControl")
            .field("name", &self.shared.name)
            .field("stats", &self.stats())
            .field("issued_tokens", &self.issued_tokens())
            .field("rejected_tokens", &self.rejected_tokens())
            .field("unauthenticated", &self.unauthenticated())
            .finish()
    }
}

impl GoogleControl {
    /// Default behaviour for every following model request.
    pub fn set_behaviour(&self, b: GoogleBehaviour) {
        *self.shared.behaviour.write().unwrap_or_else(|e| e.into_inner()) = b;
    }

    /// The current default behaviour.
    pub fn behaviour(&self) -> GoogleBehaviour {
        self.shared.behaviour.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One-shot behaviours, consumed one per valid model request in order
    /// (after any still queued) before falling back to the default.
    pub fn push_script(&self, bs: Vec<GoogleBehaviour>) {
        let mut q = self.shared.script();
        q.extend(bs);
        self.shared.script_len.store(q.len(), Ordering::Release);
    }

    /// Drop the behaviours still queued by [`GoogleControl::push_script`].
    pub fn clear_script(&self) {
        let mut q = self.shared.script();
        q.clear();
        self.shared.script_len.store(0, Ordering::Release);
    }

    /// Model requests (Gemini and OpenAI-compatible) received, refused ones
    /// included. Token and metadata requests are not counted here.
    pub fn requests(&self) -> u64 {
        self.shared.counters.requests()
    }

    /// Model requests refused with 401 (no bearer token, or one this
    /// emulator did not issue or that expired).
    pub fn unauthenticated(&self) -> u64 {
        self.shared.unauthenticated.load(Ordering::Acquire)
    }

    /// Requests to the token endpoint and the metadata token endpoint.
    pub fn token_requests(&self) -> u64 {
        self.shared.token_requests.load(Ordering::Acquire)
    }

    /// Access tokens issued (token endpoint, metadata server and
    /// [`GoogleControl::mint_token`]).
    pub fn issued_tokens(&self) -> u64 {
        self.shared.issued.load(Ordering::Acquire)
    }

    /// Token requests refused: a JWT grant with a bad signature, algorithm,
    /// issuer, audience, scope, times or shape (400), or a metadata token
    /// request without `Metadata-Flavor: Google` (403).
    pub fn rejected_tokens(&self) -> u64 {
        self.shared.rejected.load(Ordering::Acquire)
    }

    /// Model requests whose client went away before the response (or
    /// stream) completed.
    pub fn cancelled(&self) -> u64 {
        self.shared.counters.cancelled()
    }

    /// Model requests the emulator finished (any behaviour, error answers
    /// included).
    pub fn completed(&self) -> u64 {
        self.shared.counters.completed()
    }

    /// Model requests being answered right now.
    pub fn in_flight(&self) -> u64 {
        self.shared.counters.in_flight()
    }

    /// `requests == completed + cancelled + in_flight` at rest.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Issue an access token without the OAuth exchange (counted in
    /// [`GoogleControl::issued_tokens`]).
    pub fn mint_token(&self) -> String {
        self.shared.issue_token()
    }

    /// Invalidate every access token issued so far: the next model request
    /// with one of them gets 401, as with an expired token.
    pub fn revoke_tokens(&self) {
        self.shared.tokens().clear();
    }

    /// Every request received on the model, token and metadata routes (and
    /// unknown paths), oldest first.
    pub fn recorded(&self) -> Vec<GoogleRecordedRequest> {
        self.shared.recorded().clone()
    }

    /// Forget the recorded requests.
    pub fn clear_recorded(&self) {
        self.shared.recorded().clear();
    }

    /// The emulator's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

/// State shared by the server and every [`GoogleControl`].
pub(crate) struct Shared {
    pub(crate) name: String,
    /// `"Hello from {name}"`.
    pub(crate) hello: String,
    pub(crate) name_header: HeaderValue,
    pub(crate) project: String,
    pub(crate) location: String,
    pub(crate) client_email: String,
    /// The verifying key as a PKCS#1 `RSAPublicKey` DER.
    pub(crate) public_key: Vec<u8>,
    pub(crate) token_lifetime_secs: u64,
    pub(crate) record: bool,
    behaviour: RwLock<GoogleBehaviour>,
    script: Mutex<VecDeque<GoogleBehaviour>>,
    script_len: AtomicUsize,
    counters: Arc<Counters>,
    unauthenticated: AtomicU64,
    token_requests: AtomicU64,
    issued: AtomicU64,
    rejected: AtomicU64,
    ids: AtomicU64,
    /// Access token -> expiry (unix seconds).
    tokens: Mutex<HashMap<String, u64>>,
    recorded: Mutex<Vec<GoogleRecordedRequest>>,
}

impl Shared {
    pub(crate) fn new(config: &GoogleConfig) -> std::io::Result<Self> {
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        let name_header = HeaderValue::from_str(&config.name)
            .map_err(|_| invalid("emulator name must be a valid HTTP header value"))?;
        let public_key = oauth::rsa_public_key_der(&config.public_key_pem)
            .map_err(|e| invalid(&format!("public_key_pem: {e}")))?;
        Ok(Shared {
            name: config.name.clone(),
            hello: format!("Hello from {}", config.name),
            name_header,
            project: config.project.clone(),
            location: config.location.clone(),
            client_email: config.client_email.clone(),
            public_key,
            token_lifetime_secs: config.token_lifetime_secs,
            record: config.record,
            behaviour: RwLock::new(GoogleBehaviour::default()),
            script: Mutex::new(VecDeque::new()),
            script_len: AtomicUsize::new(0),
            counters: Arc::default(),
            unauthenticated: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            ids: AtomicU64::new(0),
            tokens: Mutex::new(HashMap::new()),
            recorded: Mutex::new(Vec::new()),
        })
    }

    fn script(&self) -> MutexGuard<'_, VecDeque<GoogleBehaviour>> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn recorded(&self) -> MutexGuard<'_, Vec<GoogleRecordedRequest>> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tokens(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.stats()
    }

    pub(crate) fn count_token_request(&self) {
        self.token_requests.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn reject_token(&self) {
        self.rejected.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn count_unauthenticated(&self) {
        self.unauthenticated.fetch_add(1, Ordering::AcqRel);
    }

    /// A new random access token, remembered until it expires.
    pub(crate) fn issue_token(&self) -> String {
        let token = format!("ya29.emulator-{}", oauth::random_token_suffix());
        let now = server::unix_now();
        let mut tokens = self.tokens();
        tokens.retain(|_, exp| *exp > now);
        tokens.insert(token.clone(), now + self.token_lifetime_secs);
        drop(tokens);
        self.issued.fetch_add(1, Ordering::AcqRel);
        token
    }

    /// `Ok` for a token issued here and not expired; `Err(true)` for an
    /// expired (or revoked) one that looks like ours, `Err(false)` for any
    /// other.
    pub(crate) fn check_token(&self, token: &str) -> Result<(), bool> {
        match self.tokens().get(token) {
            Some(exp) if *exp > server::unix_now() => Ok(()),
            Some(_) => Err(true),
            None => Err(token.starts_with("ya29.emulator-")),
        }
    }

    /// The behaviour for the next request: the head of the script, else the
    /// default.
    pub(crate) fn next_behaviour(&self) -> GoogleBehaviour {
        if self.script_len.load(Ordering::Acquire) > 0 {
            let mut q = self.script();
            if let Some(b) = q.pop_front() {
                self.script_len.store(q.len(), Ordering::Release);
                return b;
            }
        }
        self.behaviour.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Count a new model request and track it until it ends.
    pub(crate) fn track(self: &Arc<Self>) -> Tracker {
        self.counters.track()
    }
}
