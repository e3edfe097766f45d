//! An emulator of the AWS Bedrock Runtime HTTP API, written from the AWS API
//! reference: `Converse`, `ConverseStream` (a binary
//! `application/vnd.amazon.eventstream` response) and `InvokeModel` for the
//! Titan and Cohere embedding models, every request checked for a valid
//! AWS Signature Version 4.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use skyweave_emulators::{spawn_bedrock, BedrockBehaviour, BedrockConfig};
//! let emu = spawn_bedrock(BedrockConfig::new("aws-east", "us-east-1", "AKIDEXAMPLE", "secret")).await?;
//! emu.control.push_script(vec![BedrockBehaviour::exception("ThrottlingException")]);
//! // Signed requests to {emu.base_url()}/model/{modelId}/converse now get one
//! // 429 ThrottlingException, then "Hello from aws-east ...".
//! # Ok(()) }
//! ```
//!
//! Routes (the model id is one path segment, percent-encoded by the client,
//! e.g. `anthropic.claude-3-haiku-20240307-v1%3A0`):
//!
//! - `POST /model/{modelId}/converse`
//! - `POST /model/{modelId}/converse-stream`
//! - `POST /model/{modelId}/invoke` (embeddings: `amazon.titan-embed-text-v2:0`,
//!   `amazon.titan-embed-text-v1`, `cohere.embed-english-v3`,
//!   `cohere.embed-multilingual-v3`)
//! - unsigned control routes under `/_emulator/` (`behaviour`, `script`,
//!   `stats`, `recorded`), as in the OpenAI emulator.
//!
//! Order of checks for an API request: count it, read the body, verify the
//! signature (a refusal is counted in [`BedrockControl::rejected_signatures`]),
//! validate the body like Bedrock (`ValidationException`), and only then
//! take the next [`BedrockBehaviour`]: refused requests never consume a
//! scripted behaviour.
//!
//! Error answers have Bedrock's shape: the exception name in the
//! `x-amzn-ErrorType` header and `{"message": ...}` as the body. The
//! authentication front end appends its namespace to the name
//! (`InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/`),
//! as AWS does; modeled exceptions carry the bare name. Clients must cut the
//! header value at the first `:`.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use http::HeaderValue;
use serde::{Deserialize, Serialize};

mod converse;
pub mod eventstream;
mod invoke;
mod server;
mod sigv4;

#[cfg(test)]
mod tests;

pub use server::BedrockEmulator;

use crate::tracking::Counters;
pub(crate) use crate::tracking::Tracker;
use crate::Stats;

/// How to start a Bedrock emulator.
#[derive(Clone)]
pub struct BedrockConfig {
    /// Appears in replies (`"Hello from {name}"`) and in the
    /// `x-emulator-name` header of every response.
    pub name: String,
    /// The region requests must be signed for (credential scope).
    pub region: String,
    /// The one access key id the emulator knows.
    pub access_key_id: String,
    pub secret_access_key: String,
    /// When set, requests must carry (and sign) `x-amz-security-token` with
    /// this value; when unset, a request carrying one is refused.
    pub session_token: Option<String>,
    /// Address to bind; `127.0.0.1:0` picks a free port.
    pub bind: SocketAddr,
    /// SigV4 canonical URI rule: `true` (the default, every AWS service but
    /// S3, Bedrock included) URI-encodes the already-encoded wire path once
    /// more, so `%3A` is signed as `%253A`; `false` signs the wire path as
    /// it is (S3 style).
    pub double_encode_path: bool,
    /// Largest accepted distance between `x-amz-date` and the emulator's
    /// clock, in seconds (AWS: 5 minutes).
    pub max_clock_skew_secs: u64,
    /// Keep every request for [`BedrockControl::recorded`]. On by default.
    pub record: bool,
}

impl fmt::Debug for BedrockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BedrockConfig")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .field("bind", &self.bind)
            .field("double_encode_path", &self.double_encode_path)
            .field("max_clock_skew_secs", &self.max_clock_skew_secs)
            .field("record", &self.record)
            .finish()
    }
}

impl BedrockConfig {
    /// On `127.0.0.1:0`, no session token, double-encoded canonical URIs,
    /// 5 minutes of clock skew, recording on.
    pub fn new(
        name: impl Into<String>,
        region: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        BedrockConfig {
            name: name.into(),
            region: region.into(),
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            double_encode_path: true,
            max_clock_skew_secs: 300,
            record: true,
        }
    }

    /// Require this session token (temporary credentials).
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(token.into());
        self
    }

    /// Bind this address instead of `127.0.0.1:0`.
    pub fn with_bind(mut self, bind: SocketAddr) -> Self {
        self.bind = bind;
        self
    }

    /// See [`BedrockConfig::double_encode_path`].
    pub fn with_double_encode_path(mut self, double: bool) -> Self {
        self.double_encode_path = double;
        self
    }

    /// Turn request recording on or off.
    pub fn with_record(mut self, record: bool) -> Self {
        self.record = record;
        self
    }
}

/// Start a Bedrock emulator: binds `config.bind` and serves it on the
/// current tokio runtime until the returned [`BedrockEmulator`] is dropped.
pub async fn spawn_bedrock(config: BedrockConfig) -> std::io::Result<BedrockEmulator> {
    server::spawn(config).await
}

/// What the emulator does with a valid, correctly signed request.
///
/// "Chunks" are content pieces: streamed `contentBlockDelta` events (one
/// text piece or one piece of tool-input JSON each), and output tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BedrockBehaviour {
    /// A normal answer. `ttft_ms` is waited before the first event (the
    /// response head goes out at once) or before a non-streaming response;
    /// `inter_chunk_ms` separates consecutive deltas; `chunks` is the number
    /// of content pieces. `inferenceConfig.maxTokens` below `chunks` cuts
    /// the reply to `maxTokens` pieces with stop reason `max_tokens`.
    Ok {
        #[serde(default)]
        ttft_ms: u64,
        #[serde(default)]
        inter_chunk_ms: u64,
        #[serde(default = "default_chunks")]
        chunks: u32,
    },
    /// An HTTP error before any body: `x-amzn-ErrorType: {error_type}` and
    /// `{"message": ...}`. `status` defaults to the documented status of
    /// `error_type` (ThrottlingException 429, ServiceQuotaExceededException
    /// 400, ModelNotReadyException 429, ServiceUnavailableException 503,
    /// InternalServerException 500, ValidationException 400,
    /// AccessDeniedException 403, ...); `message` to a Bedrock-like text.
    Exception {
        #[serde(default)]
        status: Option<u16>,
        error_type: String,
        #[serde(default)]
        message: Option<String>,
    },
    /// Streaming: after `messageStart` and `after_chunks` deltas, an
    /// event-stream message with `:message-type: exception` and
    /// `:exception-type` set to the union member name (`error_type` with a
    /// lower-case first letter, e.g. `throttlingException`), payload
    /// `{"message": ...}`; then the body ends. Non-streaming: the same
    /// exception as an HTTP error.
    ExceptionMidStream {
        after_chunks: u32,
        error_type: String,
        #[serde(default)]
        message: Option<String>,
    },
    /// Streaming: after `after_chunks` deltas, the next delta with a wrong
    /// message CRC (prelude and data intact); then the body ends.
    /// Non-streaming: `200` with half of the JSON body.
    CorruptFrame { after_chunks: u32 },
    /// Streaming: after `after_chunks` deltas, the next delta with a wrong
    /// prelude CRC (the message CRC matches the altered bytes); then the
    /// body ends. Non-streaming: `200` with half of the JSON body.
    CorruptPrelude { after_chunks: u32 },
    /// Read the request and never answer; counted as cancelled once the
    /// client goes away.
    Hang,
    /// Abort the TCP connection (RST) without any response.
    Reset,
    /// Streaming: `messageStart` and `chunks` deltas, then the connection
    /// is closed mid-body (no `messageStop`, no terminating chunk).
    /// Non-streaming: the head with the full `Content-Length` and half of
    /// the body, then close.
    CutAfterChunks { chunks: u32 },
}

fn default_chunks() -> u32 {
    4
}

impl Default for BedrockBehaviour {
    fn default() -> Self {
        BedrockBehaviour::Ok { ttft_ms: 0, inter_chunk_ms: 0, chunks: 4 }
    }
}

impl BedrockBehaviour {
    /// `Ok` with the given timings.
    pub fn ok(ttft_ms: u64, inter_chunk_ms: u64, chunks: u32) -> Self {
        BedrockBehaviour::Ok { ttft_ms, inter_chunk_ms, chunks }
    }

    /// `Exception` with the documented status and default message.
    pub fn exception(error_type: &str) -> Self {
        BedrockBehaviour::Exception {
            status: None,
            error_type: error_type.to_owned(),
            message: None,
        }
    }

    /// `ExceptionMidStream` with the default message.
    pub fn exception_mid_stream(after_chunks: u32, error_type: &str) -> Self {
        BedrockBehaviour::ExceptionMidStream {
            after_chunks,
            error_type: error_type.to_owned(),
            message: None,
        }
    }
}

/// The documented HTTP status and a default message of a Bedrock Runtime
/// exception (unknown names: 500).
pub fn exception_defaults(error_type: &str) -> (u16, &'static str) {
    match error_type {
        "AccessDeniedException" => {
            (403, "You don't have access to the model with the specified model ID.")
        }
        "InternalServerException" => (
            500,
            "The system encountered an unexpected error during processing. Try your request again.",
        ),
        "ModelErrorException" => (424, "The model returned an error while processing the request."),
        "ModelNotReadyException" => (
            429,
            "Model is not ready to serve inference requests. The AWS SDK will automatically \
             retry the operation up to 5 times.",
        ),
        "ModelStreamErrorException" => {
            (424, "An error occurred while streaming the response. Retry your request.")
        }
        "ModelTimeoutException" => {
            (408, "Model has timed out in processing the request. Try your request again.")
        }
        "ResourceNotFoundException" => {
            (404, "Could not resolve the foundation model from the provided model identifier.")
        }
        "ServiceQuotaExceededException" => (
            400,
            "Your request exceeds the service quota for your account. You can view your quotas \
             at Viewing service quotas. You can resubmit your request later.",
        ),
        "ServiceUnavailableException" => (503, "Bedrock is unable to process your request."),
        "ThrottlingException" => (429, "Too many requests, please wait before trying again."),
        "ValidationException" => {
            (400, "Input validation failed. Check your request parameters and retry the request.")
        }
        _ => (500, "An internal server error occurred. Retry your request."),
    }
}

/// One request as the Bedrock emulator received it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BedrockRecordedRequest {
    pub method: String,
    /// Path without the query string, as sent (not percent-decoded).
    pub path: String,
    /// Raw query string (without `?`), if any.
    pub query: Option<String>,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, or `Null` when empty or not JSON.
    pub body: serde_json::Value,
    /// The `{modelId}` path segment, percent-decoded
    /// (`anthropic.claude-3-haiku-20240307-v1:0`).
    pub model_id: Option<String>,
    /// `converse`, `converse-stream` or `invoke`.
    pub operation: Option<String>,
    /// The exception name when the signature check refused the request.
    pub auth_error: Option<String>,
}

impl BedrockRecordedRequest {
    /// First value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Handle to steer and observe a running Bedrock emulator. Cheap to clone.
#[derive(Clone)]
pub struct BedrockControl {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for BedrockControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BedrockControl")
            .field("name", &self.shared.name)
            .field("stats", &self.stats())
            .field("rejected_signatures", &self.rejected_signatures())
            .finish()
    }
}

impl BedrockControl {
    /// Default behaviour for every following request.
    pub fn set_behaviour(&self, b: BedrockBehaviour) {
        *self.shared.behaviour.write().unwrap_or_else(|e| e.into_inner()) = b;
    }

    /// The current default behaviour.
    pub fn behaviour(&self) -> BedrockBehaviour {
        self.shared.behaviour.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One-shot behaviours, consumed one per valid request in order (after
    /// any still queued) before falling back to the default.
    pub fn push_script(&self, bs: Vec<BedrockBehaviour>) {
        let mut q = self.shared.script();
        q.extend(bs);
        self.shared.script_len.store(q.len(), Ordering::Release);
    }

    /// Drop the behaviours still queued by [`BedrockControl::push_script`].
    pub fn clear_script(&self) {
        let mut q = self.shared.script();
        q.clear();
        self.shared.script_len.store(0, Ordering::Release);
    }

    /// Converse, ConverseStream and InvokeModel requests received, refused
    /// ones included.
    pub fn requests(&self) -> u64 {
        self.shared.counters.requests()
    }

    /// Requests refused by the SigV4 check (missing, malformed, wrong
    /// signature, stale date, unknown key or token).
    pub fn rejected_signatures(&self) -> u64 {
        self.shared.rejected.load(Ordering::Acquire)
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

    /// `requests == completed + cancelled + in_flight` at rest.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Every request received on the API routes, oldest first.
    pub fn recorded(&self) -> Vec<BedrockRecordedRequest> {
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

/// State shared by the server and every [`BedrockControl`].
pub(crate) struct Shared {
    pub(crate) name: String,
    /// `"Hello from {name}"`.
    pub(crate) hello: String,
    pub(crate) name_header: HeaderValue,
    pub(crate) verifier: sigv4::Verifier,
    pub(crate) record: bool,
    behaviour: RwLock<BedrockBehaviour>,
    script: Mutex<VecDeque<BedrockBehaviour>>,
    script_len: AtomicUsize,
    counters: Arc<Counters>,
    rejected: AtomicU64,
    ids: AtomicU64,
    recorded: Mutex<Vec<BedrockRecordedRequest>>,
}

impl Shared {
    pub(crate) fn new(config: &BedrockConfig) -> std::io::Result<Self> {
        let name_header = HeaderValue::from_str(&config.name).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "emulator name must be a valid HTTP header value",
            )
        })?;
        Ok(Shared {
            name: config.name.clone(),
            hello: format!("Hello from {}", config.name),
            name_header,
            verifier: sigv4::Verifier {
                access_key_id: config.access_key_id.clone(),
                secret_access_key: config.secret_access_key.clone(),
                session_token: config.session_token.clone(),
                region: config.region.clone(),
                service: "bedrock".to_owned(),
                double_encode_path: config.double_encode_path,
                max_skew_secs: config.max_clock_skew_secs,
            },
            record: config.record,
            behaviour: RwLock::new(BedrockBehaviour::default()),
            script: Mutex::new(VecDeque::new()),
            script_len: AtomicUsize::new(0),
            counters: Arc::default(),
            rejected: AtomicU64::new(0),
            ids: AtomicU64::new(0),
            recorded: Mutex::new(Vec::new()),
        })
    }

    fn script(&self) -> MutexGuard<'_, VecDeque<BedrockBehaviour>> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn recorded(&self) -> MutexGuard<'_, Vec<BedrockRecordedRequest>> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.stats()
    }

    pub(crate) fn reject(&self) {
        self.rejected.fetch_add(1, Ordering::AcqRel);
    }

    /// The behaviour for the next request: the head of the script, else the
    /// default.
    pub(crate) fn next_behaviour(&self) -> BedrockBehaviour {
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

    /// Count a new API request and track it until it ends.
    pub(crate) fn track(self: &Arc<Self>) -> Tracker {
        self.counters.track()
    }
}
