//! Protocol emulators of the OpenAI, Azure OpenAI, AWS Bedrock Runtime and
//! Google Vertex AI HTTP APIs (for Bedrock see [`spawn_bedrock`], for Google
//! [`spawn_google`]), and of Google Cloud Storage's resumable uploads
//! ([`spawn_gcs_uploads`]: resuming, which fake-gcs-server cannot show).
//!
//! An [`Emulator`] is a real HTTP server bound to a real socket. It speaks
//! either the OpenAI dialect (`/v1/chat/completions`, `/v1/embeddings`,
//! `/v1/models`) or the Azure OpenAI dialect
//! (`/openai/deployments/{deployment}/chat/completions?api-version=...`, ...),
//! and can be told through [`Control`] (or over HTTP, under `/_emulator/`) how
//! to misbehave: answer slowly, answer with an error status, hang, reset the
//! connection, cut a stream short, trip Azure's content filter or send bytes
//! that are not JSON.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use skyweave_emulators::{spawn, Behaviour, EmulatorConfig};
//! let emu = spawn(EmulatorConfig::openai("east")).await?;
//! emu.control.push_script(vec![Behaviour::Status {
//!     status: 429,
//!     retry_after_secs: Some(1),
//!     message: None,
//! }]);
//! // First request to emu.base_url() gets a 429, the following ones "Hello from east".
//! # Ok(()) }
//! ```
//!
//! Accounting invariant: every chat or embeddings request increments
//! [`Control::requests`] once and ends up in exactly one of
//! [`Control::completed`] (the emulator finished what its behaviour told it
//! to do, including error answers, resets and cut streams),
//! [`Control::cancelled`] (the client went away first) or is still
//! [`Control::in_flight`].

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use http::HeaderValue;
use serde::{Deserialize, Serialize};

mod aws_credentials;
mod base64;
mod bedrock;
mod chat;
mod embeddings;
mod errors;
mod gcs;
mod google;
mod net;
mod server;
mod tokens;
mod tracking;

#[cfg(test)]
mod tests;

pub use aws_credentials::{spawn_aws_credentials, AwsCredentialsConfig, AwsCredentialsServer};
pub use bedrock::{
    eventstream, exception_defaults, spawn_bedrock, BedrockBehaviour, BedrockConfig,
    BedrockControl, BedrockEmulator, BedrockRecordedRequest,
};
pub use embeddings::DEFAULT_DIMENSIONS;
pub use gcs::{spawn_gcs_uploads, GcsUploadsEmulator};
pub use google::{
    google_status_for, http_status_for, spawn_google, test_key_pems, GoogleBehaviour, GoogleConfig,
    GoogleControl, GoogleEmulator, GoogleRecordedRequest, CLOUD_PLATFORM_SCOPE,
};
pub use server::Emulator;
use tracking::Counters;
pub(crate) use tracking::Tracker;

/// Which provider's wire protocol an emulator speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dialect {
    /// api.openai.com: `/v1/...`, `Authorization: Bearer`.
    #[serde(rename = "openai")]
    OpenAi,
    /// Azure OpenAI: `/openai/deployments/{deployment}/...?api-version=`,
    /// `api-key` header (or `Authorization: Bearer`).
    #[serde(rename = "azure")]
    Azure,
}

impl Dialect {
    /// `"openai"` or `"azure"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Azure => "azure",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dialect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "openai" | "open_ai" | "open-ai" => Ok(Dialect::OpenAi),
            "azure" | "azure_openai" | "azure-openai" => Ok(Dialect::Azure),
            other => Err(format!("unknown dialect {other:?} (expected \"openai\" or \"azure\")")),
        }
    }
}

/// How to start an emulator.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Appears in the reply content (`"Hello from {name}"`) and in the
    /// `x-emulator-name` header of every response.
    pub name: String,
    pub dialect: Dialect,
    /// When set, the OpenAI dialect requires `Authorization: Bearer {key}`;
    /// the Azure dialect requires `api-key: {key}` or
    /// `Authorization: Bearer {key}`. Anything else is answered with 401 in
    /// the dialect's error shape.
    pub api_key: Option<String>,
    /// Address to bind; `127.0.0.1:0` picks a free port.
    pub bind: SocketAddr,
    /// Keep every request for [`Control::recorded`]. On by default; the
    /// benchmark binary turns it off to keep the request path lean.
    pub record: bool,
}

impl EmulatorConfig {
    /// OpenAI dialect on `127.0.0.1:0`, no API key, recording on.
    pub fn openai(name: &str) -> Self {
        Self::new(name, Dialect::OpenAi)
    }

    /// Azure dialect on `127.0.0.1:0`, no API key, recording on.
    pub fn azure(name: &str) -> Self {
        Self::new(name, Dialect::Azure)
    }

    /// Given dialect on `127.0.0.1:0`, no API key, recording on.
    pub fn new(name: &str, dialect: Dialect) -> Self {
        EmulatorConfig {
            name: name.to_owned(),
            dialect,
            api_key: None,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            record: true,
        }
    }

    /// Require this API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Bind this address instead of `127.0.0.1:0`.
    pub fn with_bind(mut self, bind: SocketAddr) -> Self {
        self.bind = bind;
        self
    }

    /// Turn request recording on or off.
    pub fn with_record(mut self, record: bool) -> Self {
        self.record = record;
        self
    }
}

/// Start an emulator: binds `config.bind` and serves it on the current tokio
/// runtime until the returned [`Emulator`] is dropped.
pub async fn spawn(config: EmulatorConfig) -> std::io::Result<Emulator> {
    server::spawn(config).await
}

/// What the emulator does with a chat or embeddings request (after the
/// api-version, authentication and body checks passed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Behaviour {
    /// A normal answer. `ttft_ms` is waited before the first streamed chunk
    /// (the response head is sent at once) or before a non-streaming
    /// response; `inter_chunk_ms` separates consecutive content chunks;
    /// `chunks` is the number of content pieces (= completion tokens).
    Ok {
        #[serde(default)]
        ttft_ms: u64,
        #[serde(default)]
        inter_chunk_ms: u64,
        #[serde(default = "default_chunks")]
        chunks: u32,
    },
    /// An error status in the dialect's error shape; `Retry-After` and
    /// `retry-after-ms` headers when `retry_after_secs` is given.
    Status {
        status: u16,
        #[serde(default)]
        retry_after_secs: Option<u64>,
        #[serde(default)]
        message: Option<String>,
    },
    /// Read the request and never answer; counted as cancelled once the
    /// client goes away.
    Hang,
    /// Send `200` and the response head (SSE headers when streaming), then
    /// never send a byte of body.
    HangAfterHeaders,
    /// Abort the TCP connection (RST, `SO_LINGER` 0) without any response.
    Reset,
    /// Streaming: send the role chunk and `chunks` content chunks, then
    /// close the connection mid-body (no finish chunk, no `[DONE]`, no
    /// terminating zero-length chunk). Non-streaming: send the head with the
    /// full `Content-Length` and half of the body, then close.
    CutAfterChunks { chunks: u32 },
    /// Azure's content-filter 400 (`content_filter` /
    /// `ResponsibleAIPolicyViolation`); an OpenAI-shaped 400 in the OpenAI
    /// dialect.
    ContentFilter,
    /// `200` with a body that is not JSON; streaming: an SSE `data:` line
    /// that is not JSON (followed by `data: [DONE]`).
    Malformed,
}

fn default_chunks() -> u32 {
    4
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour::Ok { ttft_ms: 0, inter_chunk_ms: 0, chunks: 4 }
    }
}

impl Behaviour {
    /// `Ok` with the given timings.
    pub fn ok(ttft_ms: u64, inter_chunk_ms: u64, chunks: u32) -> Self {
        Behaviour::Ok { ttft_ms, inter_chunk_ms, chunks }
    }

    /// `Status` without Retry-After or custom message.
    pub fn status(status: u16) -> Self {
        Behaviour::Status { status, retry_after_secs: None, message: None }
    }
}

/// One request as the emulator received it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Raw query string (without `?`), if any.
    pub query: Option<String>,
    /// Header names lowercased, in arrival order; repeated headers appear
    /// repeatedly.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, or `Null` when empty or not JSON.
    pub body: serde_json::Value,
    /// The body as sent (lossily decoded as UTF-8).
    pub raw_body: String,
    /// Azure dialect: the `{deployment}` path segment.
    pub deployment: Option<String>,
}

impl RecordedRequest {
    /// First value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// First value of a query parameter (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        query_param(self.query.as_deref()?, name)
    }
}

pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Counters as served by `GET /_emulator/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub completed: u64,
    pub cancelled: u64,
    pub in_flight: u64,
}

/// Handle to steer and observe a running emulator. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("name", &self.shared.name)
            .field("dialect", &self.shared.dialect)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Control {
    /// Default behaviour for every following request.
    pub fn set_behaviour(&self, b: Behaviour) {
        *self.shared.behaviour.write().unwrap_or_else(|e| e.into_inner()) = b;
    }

    /// The current default behaviour.
    pub fn behaviour(&self) -> Behaviour {
        self.shared.behaviour.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One-shot behaviours, consumed one per request in order (after any
    /// still queued) before falling back to the default.
    pub fn push_script(&self, bs: Vec<Behaviour>) {
        let mut q = self.shared.script();
        q.extend(bs);
        self.shared.script_len.store(q.len(), Ordering::Release);
    }

    /// Drop the behaviours still queued by [`Control::push_script`].
    pub fn clear_script(&self) {
        let mut q = self.shared.script();
        q.clear();
        self.shared.script_len.store(0, Ordering::Release);
    }

    /// Chat + embeddings requests received, including rejected ones.
    pub fn requests(&self) -> u64 {
        self.shared.counters.requests()
    }

    /// Requests whose client went away before the response (or stream)
    /// completed.
    pub fn cancelled(&self) -> u64 {
        self.shared.counters.cancelled()
    }

    /// Requests the emulator finished (any behaviour, error answers included).
    pub fn completed(&self) -> u64 {
        self.shared.counters.completed()
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> u64 {
        self.shared.counters.in_flight()
    }

    /// All four counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Every request received on the API routes (chat, embeddings, models,
    /// unknown paths; not `/_emulator/`), oldest first. Empty when recording
    /// is off.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
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

    /// The emulator's dialect.
    pub fn dialect(&self) -> Dialect {
        self.shared.dialect
    }
}

/// State shared by the server and every [`Control`].
pub(crate) struct Shared {
    pub(crate) name: String,
    /// `"Hello from {name}"`.
    pub(crate) hello: String,
    /// `"Hello from {name}"`, JSON-escaped, without the quotes.
    pub(crate) hello_json: String,
    pub(crate) name_header: HeaderValue,
    pub(crate) dialect: Dialect,
    pub(crate) api_key: Option<String>,
    pub(crate) record: bool,
    behaviour: RwLock<Behaviour>,
    script: Mutex<VecDeque<Behaviour>>,
    script_len: AtomicUsize,
    counters: Arc<Counters>,
    ids: AtomicU64,
    recorded: Mutex<Vec<RecordedRequest>>,
}

impl Shared {
    pub(crate) fn new(config: &EmulatorConfig) -> std::io::Result<Self> {
        let hello = format!("Hello from {}", config.name);
        let quoted = serde_json::to_string(&hello).map_err(std::io::Error::other)?;
        let hello_json = quoted[1..quoted.len() - 1].to_owned();
        let name_header = HeaderValue::from_str(&config.name).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "emulator name must be a valid HTTP header value",
            )
        })?;
        Ok(Shared {
            name: config.name.clone(),
            hello,
            hello_json,
            name_header,
            dialect: config.dialect,
            api_key: config.api_key.clone(),
            record: config.record,
            behaviour: RwLock::new(Behaviour::default()),
            script: Mutex::new(VecDeque::new()),
            script_len: AtomicUsize::new(0),
            counters: Arc::default(),
            ids: AtomicU64::new(0),
            recorded: Mutex::new(Vec::new()),
        })
    }

    fn script(&self) -> MutexGuard<'_, VecDeque<Behaviour>> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn recorded(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.stats()
    }

    /// The behaviour for the next request: the head of the script, else the
    /// default.
    pub(crate) fn next_behaviour(&self) -> Behaviour {
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

    /// Count a new chat/embeddings request and track it until it ends.
    pub(crate) fn track(self: &Arc<Self>) -> Tracker {
        self.counters.track()
    }
}
