//! Google Cloud Storage, over the JSON API.
//!
//! Objects are named `PREFIX/KEY` in one bucket. In a URL path an object's
//! name is one segment: every byte but `A-Z a-z 0-9 - . _ ~` is
//! percent-encoded, `/` included (`%2F`). Requests carry an OAuth 2.0 bearer
//! token from [`GoogleTokens`] (a service-account key, the metadata server,
//! a token command), or none for an emulator; tokens never appear in an
//! error or a log line, and are never sent over plain HTTP.
//!
//! The endpoint is `https://storage.googleapis.com` unless the config names
//! one; without one, `STORAGE_EMULATOR_HOST` (`host:port` or a URL) points
//! at an emulator and, as in Google's client libraries, turns credentials
//! off.
//!
//! - A whole object is one multipart `objects.insert` whose metadata
//!   carries its MD5 (`md5Hash`), which GCS checks. The answer's `md5Hash`
//!   and size are compared as well: a store that kept other bytes (an
//!   emulator that does not check) loses that object again.
//! - A multipart upload is a resumable upload. Its id is ours:
//!   `{part_size}:{size}:{session URI}`: the part size turns the bytes a
//!   session holds into whole parts, the size is every chunk's total. The
//!   session URI is a capability (whoever holds it may upload without a
//!   token): it is sent no token, never put in an error or a log line, and
//!   sits in the caller's upload state like any upload id. Parts go in
//!   order (`Content-Range: bytes a-b/size`, all but the last a multiple of
//!   256 KiB), so [`ObjectStore::parallel_parts`] is false.
//! - The parts of an upload go in one streamed request when they can: a
//!   part that starts exactly where the store's bytes end (this process
//!   knows it from the store's last answer), with more parts after it,
//!   opens a request for the rest of the object (`Content-Range: bytes
//!   a-(size-1)/size`), and each later part is fed into that request's
//!   body as it comes. A part is done once the body took it; the last one
//!   once the store answered for the finished object. One request per
//!   object rather than one per part saves a round trip per part, as
//!   Google's guidance on resumable uploads advises, and it spares a
//!   store that re-reads what it holds at every chunk. The request is
//!   HTTP/1.1 (see [`streaming_client`]), so memory stays at a part or two
//!   per upload. A request that breaks, or stalls (no part taken, no part
//!   given, or no answer, for [`STREAM_STALL`] or the time a part takes at
//!   1 MiB/s, whichever is longer), fails the part then in hand, or the
//!   next one; the next try asks the session what it kept. The cost of a
//!   break is larger than with a request per part: parts the client had
//!   handed on but the store did not keep make the engine try the file
//!   again ([`StoreError::Behind`]), re-reading its source (held parts only
//!   to hash them).
//! - Otherwise, as after an interruption or a retry, the session is asked
//!   first (`Content-Range: bytes */size`, as Google's clients do) and only
//!   the bytes it lacks are sent, in a request of their own. A store
//!   holding less than was streamed ([`StoreError::Behind`]) makes the
//!   caller try the whole file again, resuming from what it holds.
//!   [`ObjectStore::uploaded_parts`] asks the same question and turns the
//!   bytes held into whole parts.
//!
//! Integrity of a resumable upload: GCS checks no hash per chunk, and the
//! MD5 of the whole object cannot be had from the parts' MD5s. So each part
//! is checked against its MD5 here, before it goes, and the CRC32C of a
//! part sent whole goes into its tag; [`ObjectStore::finish_upload`]
//! combines the parts' CRC32Cs into that of everything sent (CRC32C, unlike
//! MD5, composes) and compares it with the object's `crc32c`, and compares
//! the object's size with the upload's. A part the store already held (one
//! [`ObjectStore::uploaded_parts`] reported, or one found held when sent
//! again) came from an earlier attempt and has no CRC32C: such an upload
//! is checked by size only. A finished object that fails a check is
//! deleted (that generation only) and the error is `Integrity`.
//!
//! Emulators: fake-gcs-server (1.54) diverges from GCS in ways this
//! backend stays safe under, with no code that would be wrong on GCS:
//! - a status query finishes the session with the bytes it holds (GCS
//!   answers 308 and keeps it open). A session started with
//!   `X-Upload-Content-Length` whose chunks all name the same total never
//!   finishes at another size on GCS; such a short object is deleted and
//!   the upload taken as gone. Resuming is therefore impossible there.
//! - cancelling answers 499 but leaves the session open; the next status
//!   query finishes it, and the short object is deleted as above.
//! - a chunk sent twice is appended twice; a chunk is sent again only
//!   after asking the session, and the size and CRC32C checks of the
//!   finished object would catch such an object.
//! - `md5Hash` in an upload's metadata is not checked: the answer's
//!   `md5Hash` is, and the object deleted.
//! - `ifGenerationMatch` on a delete is ignored (the deletes above would
//!   then remove a newer generation written meanwhile; on GCS they never
//!   do).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use base64::prelude::{Engine as _, BASE64_STANDARD};
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use md5::Digest as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{
    HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE,
};
use reqwest::StatusCode;
use serde::Deserialize;
use skyweave_cloud::google_credentials::GoogleTokens;
use skyweave_core::estate::GoogleCredentials;

use super::{ByteStream, ObjectMeta, ObjectStore, Part, PartDone, StoreError};

/// Google Cloud Storage itself.
pub const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";

/// The variable Google's client libraries read for an emulator's address.
pub const EMULATOR_HOST_VARIABLE: &str = "STORAGE_EMULATOR_HOST";

/// Every chunk of a resumable upload but the last is a multiple of this.
pub const CHUNK_GRANULE: u64 = 256 * 1024;

/// Objects per listing page (the JSON API's largest).
const LIST_PAGE: u32 = 1000;

/// What stays unescaped in an object name in a path, or in a query value.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

const OCTET_STREAM: &str = "application/octet-stream";

pub struct GcsConfig {
    pub bucket: String,
    /// Keys are relative to it; empty for the whole bucket.
    pub prefix: String,
    /// `None`: `STORAGE_EMULATOR_HOST` when set (and then no credentials),
    /// else [`DEFAULT_ENDPOINT`].
    pub endpoint: Option<String>,
    /// Where access tokens come from; `None` sends none (an emulator).
    pub credentials: Option<GoogleCredentials>,
}

pub struct Gcs {
    bucket: String,
    /// Empty, or ending with `/`.
    prefix: String,
    /// Without a trailing slash.
    endpoint: String,
    tokens: Option<GoogleTokens>,
    http: reqwest::Client,
    /// Streamed requests only (see [`Streamed`]): no read timeout, which
    /// reqwest counts from the request's start to the answer's headers.
    streaming: reqwest::Client,
    /// Per resumable session (by URI): the bytes the store said it holds in
    /// its last answer to this process. Absent: unknown, ask first.
    persisted: Mutex<HashMap<String, u64>>,
    /// Per resumable session (by URI): its open streamed request, if any.
    streams: Mutex<HashMap<String, Streamed>>,
}

/// The open request of a resumable session whose body is the rest of the
/// object: parts are fed into it as they come, so the whole object goes in
/// one request (as Google advises: a chunk per request costs a round trip
/// per chunk) while memory stays at a part or two per upload.
struct Streamed {
    /// Where the next part must start.
    next: u64,
    /// Into the body: a part, and who waits until the body took it.
    parts: tokio::sync::mpsc::Sender<(Bytes, tokio::sync::oneshot::Sender<()>)>,
    /// The store's answer once the body ended (or the request failed).
    answer: tokio::task::JoinHandle<Result<Session, StoreError>>,
}

/// How long a streamed request may go without taking the next part, or
/// without answering once its body is complete, before it is given up.
const STREAM_STALL: Duration = Duration::from_secs(120);

impl Gcs {
    pub fn new(config: GcsConfig) -> Result<Gcs, StoreError> {
        let emulator_host = std::env::var(EMULATOR_HOST_VARIABLE).ok();
        let (endpoint, emulator) =
            resolve_endpoint(config.endpoint.as_deref(), emulator_host.as_deref());
        let at = format!("gs://{}", config.bucket);
        if config.bucket.is_empty() {
            return Err(StoreError::Protocol { at, message: "no bucket given".into() });
        }
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(StoreError::Protocol {
                at,
                message: format!("the endpoint `{endpoint}` is not an http:// or https:// URL"),
            });
        }
        let credentials = if emulator { None } else { config.credentials };
        if credentials.is_some() && !endpoint.starts_with("https://") {
            return Err(StoreError::Credentials {
                at,
                message: format!(
                    "Google access tokens are never sent over plain HTTP ({endpoint}); use an \
                     https:// endpoint, or no credentials for an emulator"
                ),
            });
        }
        let mut prefix = config.prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Ok(Gcs {
            bucket: config.bucket,
            prefix,
            endpoint,
            tokens: credentials.map(GoogleTokens::new),
            http: http_client(),
            streaming: streaming_client(),
            persisted: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
        })
    }

    /// Google's standard sources: an emulator when `STORAGE_EMULATOR_HOST`
    /// is set, else GCS with Application Default Credentials
    /// (`GOOGLE_APPLICATION_CREDENTIALS`, else the metadata server).
    pub fn from_env(
        bucket: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Result<Gcs, StoreError> {
        Gcs::new(GcsConfig {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: None,
            credentials: Some(GoogleCredentials::Default),
        })
    }

    /// Creates the bucket (in `GOOGLE_CLOUD_PROJECT`'s project, which GCS
    /// needs and emulators ignore). 409, a bucket of that name exists, is
    /// success: whether it is ours shows at the first request.
    pub async fn create_bucket(&self) -> Result<(), StoreError> {
        let mut url = format!("{}/storage/v1/b", self.endpoint);
        if let Some(project) = std::env::var("GOOGLE_CLOUD_PROJECT")
            .ok()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
        {
            url.push_str(&format!("?project={}", encode(&project)));
        }
        let at = format!("gs://{}", self.bucket);
        let body = serde_json::json!({ "name": self.bucket }).to_string();
        let request = self.http.post(url).header(CONTENT_TYPE, "application/json").body(body);
        let response = self.call(request, &at, true).await?;
        if response.status() == StatusCode::CONFLICT {
            return Ok(());
        }
        accept(response, &at).await.map(drop)
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn at(&self, key: &str) -> String {
        format!("gs://{}/{}{key}", self.bucket, self.prefix)
    }

    fn upload_at(&self, key: &str) -> String {
        format!("{} (resumable upload)", self.at(key))
    }

    fn object_url(&self, key: &str) -> Result<String, StoreError> {
        if key.is_empty() {
            return Err(StoreError::Protocol {
                at: self.at(key),
                message: "an empty key names no object".into(),
            });
        }
        Ok(format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            encode(&self.bucket),
            encode(&self.name(key))
        ))
    }

    fn upload_id(&self, at: &str, upload: &str) -> Result<UploadId, StoreError> {
        UploadId::parse(upload).ok_or_else(|| StoreError::Protocol {
            at: at.to_string(),
            message: "not an upload id of this store (PART_SIZE:SIZE:SESSION_URI)".into(),
        })
    }

    fn remember(&self, session: &str, persisted: u64) {
        self.persisted.lock().expect("persisted lock").insert(session.to_string(), persisted);
    }

    fn forget(&self, session: &str) {
        self.persisted.lock().expect("persisted lock").remove(session);
    }

    fn known(&self, session: &str) -> Option<u64> {
        self.persisted.lock().expect("persisted lock").get(session).copied()
    }

    /// Sends one request, with a token when `authorized` and the store has
    /// credentials, and returns the answer whatever its status.
    async fn call(
        &self,
        mut request: reqwest::RequestBuilder,
        at: &str,
        authorized: bool,
    ) -> Result<reqwest::Response, StoreError> {
        if let (true, Some(tokens)) = (authorized, &self.tokens) {
            let token = tokens.token().await.map_err(|e| StoreError::Credentials {
                at: at.to_string(),
                message: e.to_string(),
            })?;
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", token.value())).map_err(|_| {
                    StoreError::Credentials {
                        at: at.to_string(),
                        message: "the access token is not a valid HTTP header value".into(),
                    }
                })?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        request.send().await.map_err(|e| StoreError::transport(at, e))
    }

    /// An object's metadata; `None` if it does not exist.
    async fn metadata(
        &self,
        key: &str,
        generation: Option<&str>,
    ) -> Result<Option<ObjectResource>, StoreError> {
        let at = self.at(key);
        let mut url = self.object_url(key)?;
        if let Some(generation) = generation {
            url.push_str(&format!("?generation={}", encode(generation)));
        }
        let response = self.call(self.http.get(url), &at, true).await?;
        match accept(response, &at).await {
            Ok(response) => Ok(Some(json(response, &at).await?)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Deletes one generation of an object the store should not have kept;
    /// a failure is logged, the caller's error matters more.
    async fn discard(&self, key: &str, object: &ObjectResource) {
        let at = self.at(key);
        let Ok(mut url) = self.object_url(key) else { return };
        url.push_str(&format!("?ifGenerationMatch={}", encode(&object.generation)));
        let outcome = match self.call(self.http.delete(url), &at, true).await {
            Ok(response) => accept(response, &at).await.map(drop),
            Err(error) => Err(error),
        };
        match outcome {
            Ok(()) | Err(StoreError::NotFound { .. }) => {
                tracing::warn!(at = %at, generation = %object.generation, "deleted an object the store should not have kept");
            }
            Err(error) => {
                tracing::warn!(at = %at, error = %error, "could not delete an object the store should not have kept; delete it by hand");
            }
        }
    }

    /// Checks what a write made against what was sent; an object that
    /// differs is deleted.
    async fn verify(
        &self,
        key: &str,
        object: &ObjectResource,
        size: u64,
        md5: Option<[u8; 16]>,
        crc32c: Option<u32>,
    ) -> Result<(), StoreError> {
        let at = self.at(key);
        if object.name != self.name(key) {
            return Err(StoreError::Protocol {
                at,
                message: format!("the store answered for another object, `{}`", object.name),
            });
        }
        match mismatch(object, object.size(&at)?, size, md5, crc32c) {
            None => Ok(()),
            Some(message) => {
                self.discard(key, object).await;
                Err(StoreError::Integrity { at, message })
            }
        }
    }

    /// Asks a resumable session how far it got (`Content-Range: bytes
    /// */SIZE` with no body).
    async fn session_state(&self, at: &str, id: &UploadId) -> Result<Session, StoreError> {
        let request = self
            .http
            .put(&id.session)
            .header(CONTENT_RANGE, format!("bytes */{}", id.size))
            .header(CONTENT_LENGTH, "0");
        let response = self.call(request, at, false).await?;
        session_answer(at, response).await
    }

    fn take_stream(&self, session: &str) -> Option<Streamed> {
        self.streams.lock().expect("streams lock").remove(session)
    }

    /// Gives up a session's streamed request, if one is open: the store
    /// keeps what it received, and this process no longer knows how much.
    fn close_stream(&self, session: &str) {
        if let Some(stream) = self.take_stream(session) {
            stream.answer.abort();
            self.forget(session);
        }
    }

    /// Starts the request that sends the rest of the object, from
    /// `offset`, as its parts come.
    fn open_stream(&self, at: &str, id: &UploadId, offset: u64) -> Streamed {
        use tokio::sync::oneshot;
        let (parts, queue) = tokio::sync::mpsc::channel::<(Bytes, oneshot::Sender<()>)>(1);
        // The next part comes once the caller has read it from its source:
        // allow it 1 MiB/s, and never less than STREAM_STALL.
        let wait = STREAM_STALL.max(Duration::from_secs(id.part_size >> 20));
        let body = futures::stream::unfold(
            (queue, None::<oneshot::Sender<()>>),
            move |(mut queue, taken)| async move {
                // Asked for more: the part before is handed on.
                if let Some(taken) = taken {
                    let _ = taken.send(());
                }
                match tokio::time::timeout(wait, queue.recv()).await {
                    Ok(Some((part, taken))) => Some((Ok(part), (queue, Some(taken)))),
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no part of the upload came in time",
                        )),
                        (queue, None),
                    )),
                }
            },
        );
        // Until it answers, what the store holds is unknown.
        self.forget(&id.session);
        let request = self
            .streaming
            .put(&id.session)
            .header(CONTENT_RANGE, content_range(offset, id.size, id.size))
            .header(CONTENT_TYPE, OCTET_STREAM)
            .header(CONTENT_LENGTH, (id.size - offset).to_string())
            .body(reqwest::Body::wrap_stream(body));
        let at = at.to_string();
        let answer = tokio::spawn(async move {
            let response = request.send().await.map_err(|e| StoreError::transport(&at, e))?;
            session_answer(&at, response).await
        });
        Streamed { next: offset, parts, answer }
    }

    /// Feeds a part into a streamed request: returns once the body took it
    /// (and, for the last part, once the store answered), with the
    /// generation the last part made. A request that ended early or took
    /// nothing for [`STREAM_STALL`] is an error; what the store kept is
    /// asked on the next try.
    async fn stream_part(
        &self,
        key: &str,
        at: &str,
        id: &UploadId,
        stream: Streamed,
        data: Bytes,
        last: bool,
    ) -> Result<Option<String>, StoreError> {
        let Streamed { next, parts, mut answer } = stream;
        let end = next + data.len() as u64;
        // At least 1 MiB/s, and never less than STREAM_STALL.
        let patience = STREAM_STALL.max(Duration::from_secs(data.len() as u64 >> 20));
        let (taken, was_taken) = tokio::sync::oneshot::channel();
        // A closed body hands the part back, and `was_taken` fails at once.
        let _ = parts.send((data, taken)).await;
        if !last {
            match tokio::time::timeout(patience, was_taken).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.ended_early(at, id, answer).await),
                Err(_) => {
                    answer.abort();
                    self.forget(&id.session);
                    return Err(StoreError::Transport {
                        at: at.to_string(),
                        message: format!(
                            "the store took no part of the upload for {} s",
                            patience.as_secs()
                        ),
                    });
                }
            }
            let stream = Streamed { next: end, parts, answer };
            self.streams.lock().expect("streams lock").insert(id.session.clone(), stream);
            return Ok(None);
        }
        // The body ends after the last part (the request's length is
        // reached): the store's answer is what counts now.
        drop(parts);
        let answer = match tokio::time::timeout(patience + STREAM_STALL, &mut answer).await {
            Ok(Ok(answer)) => answer.map_err(broke),
            Ok(Err(failed)) => Err(StoreError::Transport {
                at: at.to_string(),
                message: format!("the upload request failed: {failed}"),
            }),
            Err(_) => {
                answer.abort();
                Err(StoreError::Transport {
                    at: at.to_string(),
                    message: format!(
                        "the store did not answer within {} s of the upload's last part",
                        (patience + STREAM_STALL).as_secs()
                    ),
                })
            }
        };
        self.forget(&id.session);
        match answer? {
            Session::Finished(object) => {
                let size = object.size(at)?;
                if size != id.size {
                    self.discard(key, &object).await;
                    return Err(StoreError::Integrity {
                        at: at.to_string(),
                        message: format!(
                            "the store finished the upload with {size} of {} bytes",
                            id.size
                        ),
                    });
                }
                Ok(Some(object.generation))
            }
            Session::Active { persisted } => {
                self.remember(&id.session, persisted);
                Err(StoreError::Behind { at: at.to_string(), held: persisted, offset: id.size })
            }
            Session::Gone => Err(StoreError::NotFound { at: at.to_string() }),
        }
    }

    /// Why a streamed request stopped taking parts: its answer, if it came
    /// within a few seconds.
    async fn ended_early(
        &self,
        at: &str,
        id: &UploadId,
        mut answer: tokio::task::JoinHandle<Result<Session, StoreError>>,
    ) -> StoreError {
        self.forget(&id.session);
        let failed = |message: String| StoreError::Transport { at: at.to_string(), message };
        let waited = tokio::time::timeout(Duration::from_secs(10), &mut answer).await;
        if waited.is_err() {
            answer.abort();
        }
        match waited {
            Ok(Ok(Ok(Session::Active { persisted }))) => {
                self.remember(&id.session, persisted);
                failed(format!(
                    "the store ended the upload request early, holding {persisted} of {} bytes",
                    id.size
                ))
            }
            Ok(Ok(Ok(Session::Finished(_)))) => StoreError::Protocol {
                at: at.to_string(),
                message: "the store finished the upload before all of it was sent".into(),
            },
            Ok(Ok(Ok(Session::Gone))) => StoreError::NotFound { at: at.to_string() },
            Ok(Ok(Err(error))) => broke(error),
            Ok(Err(join)) => failed(format!("the upload request failed: {join}")),
            Err(_) => failed("the upload request stopped taking bytes and gave no answer".into()),
        }
    }

    /// Whether the object a finished session made holds the whole upload;
    /// one that does not (only an emulator makes those) is deleted.
    async fn holds_whole_upload(&self, key: &str, id: &UploadId, object: &ObjectResource) -> bool {
        match object.size(&self.at(key)) {
            Ok(size) if size == id.size => true,
            _ => {
                self.discard(key, object).await;
                false
            }
        }
    }
}

impl Gcs {
    /// GET, optionally ranged, optionally only at a version (an If-Match
    /// or a generation precondition).
    async fn fetch(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        if_match: Option<&str>,
    ) -> Result<ByteStream, StoreError> {
        let at = self.at(key);
        let mut url = format!("{}?alt=media", self.object_url(key)?);
        if let Some(generation) = if_match {
            url.push_str(&format!("&ifGenerationMatch={generation}"));
        }
        let mut request = self.http.get(url);
        if let Some(range) = &range {
            if range.is_empty() {
                return Ok(Box::pin(futures::stream::empty()));
            }
            request = request.header(RANGE, format!("bytes={}-{}", range.start, range.end - 1));
        }
        let response = accept(self.call(request, &at, true).await?, &at).await?;
        if let Some(range) = &range {
            // A whole object for a range that is all of it is fine; any
            // other unranged answer would hand out the wrong bytes.
            let whole = response.status() != StatusCode::PARTIAL_CONTENT
                && !(range.start == 0 && response.content_length() == Some(range.end));
            if whole {
                return Err(StoreError::Protocol {
                    at,
                    message: format!("the store ignored the range {range:?}"),
                });
            }
        }
        Ok(Box::pin(response.bytes_stream().map_err(move |e| StoreError::transport(&at, e))))
    }
}

#[async_trait::async_trait]
impl ObjectStore for Gcs {
    async fn create_container(&self) -> Result<(), StoreError> {
        Gcs::create_bucket(self).await
    }

    fn describe(&self) -> String {
        format!("gs://{}/{}", self.bucket, self.prefix)
    }

    fn parallel_parts(&self) -> bool {
        false
    }

    async fn list(&self) -> Result<Vec<ObjectMeta>, StoreError> {
        let at = self.describe();
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/storage/v1/b/{}/o?prefix={}&maxResults={LIST_PAGE}&fields={}",
                self.endpoint,
                encode(&self.bucket),
                encode(&self.prefix),
                encode("items(name,size,generation),nextPageToken"),
            );
            if let Some(token) = &token {
                url.push_str(&format!("&pageToken={}", encode(token)));
            }
            let response = accept(self.call(self.http.get(url), &at, true).await?, &at).await?;
            let page: ObjectList = json(response, &at).await?;
            for object in page.items {
                let Some(key) = object.name.strip_prefix(&self.prefix) else { continue };
                let size = object.size(&at)?;
                if key.is_empty() || key.ends_with('/') && size == 0 {
                    continue; // a "folder" marker, not data
                }
                found.push(ObjectMeta { key: key.to_string(), size, version: object.generation });
            }
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) if token.as_ref() == Some(&next) => {
                    return Err(StoreError::Protocol {
                        at,
                        message: "the listing gave the same page token twice".into(),
                    })
                }
                Some(next) => token = Some(next),
                None => return Ok(found),
            }
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let at = self.at(key);
        let Some(object) = self.metadata(key, None).await? else { return Ok(None) };
        Ok(Some(ObjectMeta {
            key: key.to_string(),
            size: object.size(&at)?,
            version: object.generation,
        }))
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        self.fetch(key, range, None).await
    }

    async fn get_if(&self, key: &str, version: &str) -> Result<ByteStream, StoreError> {
        self.fetch(key, None, Some(version)).await.map_err(super::changed_on_412)
    }

    async fn put(&self, key: &str, data: Bytes, md5: [u8; 16]) -> Result<String, StoreError> {
        let at = self.at(key);
        self.object_url(key)?;
        let metadata = serde_json::json!({
            "name": self.name(key),
            "contentType": OCTET_STREAM,
            "md5Hash": BASE64_STANDARD.encode(md5),
        });
        let boundary = boundary();
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=multipart",
            self.endpoint,
            encode(&self.bucket)
        );
        let request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, format!("multipart/related; boundary={boundary}"))
            .body(multipart_body(&boundary, &metadata.to_string(), &data));
        let response = accept(self.call(request, &at, true).await?, &at).await?;
        let object: ObjectResource = json(response, &at).await?;
        self.verify(key, &object, data.len() as u64, Some(md5), None).await?;
        Ok(object.generation)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let at = self.at(key);
        let response = self.call(self.http.delete(self.object_url(key)?), &at, true).await?;
        match accept(response, &at).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn start_upload(
        &self,
        key: &str,
        size: u64,
        part_size: u64,
    ) -> Result<String, StoreError> {
        let at = self.upload_at(key);
        self.object_url(key)?;
        if part_size == 0 || size > part_size && part_size % CHUNK_GRANULE != 0 {
            return Err(StoreError::Protocol {
                at,
                message: format!(
                    "a resumable upload's parts are multiples of 256 KiB; {part_size} bytes is not"
                ),
            });
        }
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=resumable",
            self.endpoint,
            encode(&self.bucket)
        );
        let metadata = serde_json::json!({ "name": self.name(key), "contentType": OCTET_STREAM });
        let request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json; charset=UTF-8")
            .header("x-upload-content-type", OCTET_STREAM)
            .header("x-upload-content-length", size.to_string())
            .body(metadata.to_string());
        let response = accept(self.call(request, &at, true).await?, &at).await?;
        let session = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.starts_with("https://") || v.starts_with("http://"))
            .ok_or_else(|| StoreError::Protocol {
                at: at.clone(),
                message: "the store gave no session URI (Location) for the upload".into(),
            })?
            .to_string();
        self.remember(&session, 0);
        Ok(UploadId { part_size, size, session }.encode())
    }

    async fn put_part(&self, key: &str, upload: &str, part: Part) -> Result<PartDone, StoreError> {
        let at = self.upload_at(key);
        let id = self.upload_id(&at, upload)?;
        let Part { index, offset, data, md5, last } = part;
        let len = data.len() as u64;
        let count = id.parts();
        let fits = u64::from(index) < count
            && offset == u64::from(index) * id.part_size
            && len == id.part_len(index)
            && last == (u64::from(index) + 1 == count);
        if !fits {
            return Err(StoreError::Protocol {
                at,
                message: format!(
                    "part {index} ({len} bytes at {offset}, last: {last}) is not part of an \
                     upload of {} bytes in parts of {}",
                    id.size, id.part_size
                ),
            });
        }
        // GCS checks no hash per chunk: check here what is about to go.
        let actual: [u8; 16] = md5::Md5::digest(&data).into();
        if actual != md5 {
            return Err(StoreError::Integrity {
                at,
                message: format!("part {index} does not match its MD5"),
            });
        }
        let end = offset + len;
        // The tag vouches for a CRC32C only when this call sent the whole
        // part: bytes the store held already came from an earlier attempt.
        let done = |crc32c: Option<u32>, generation: Option<String>| PartDone {
            index,
            size: len,
            tag: PartTag { crc32c, generation }.encode(),
        };
        // A streamed request waiting for this part takes it; one expecting
        // another part is given up (what the store kept is asked below).
        if let Some(stream) = self.take_stream(&id.session) {
            if stream.next == offset {
                let crc32c = crc32c::crc32c(&data);
                let generation = self.stream_part(key, &at, &id, stream, data, last).await?;
                return Ok(done(Some(crc32c), generation));
            }
            stream.answer.abort();
            self.forget(&id.session);
        }
        // The store holds exactly the bytes before this part, and more
        // parts follow: open a request for the rest of the object.
        if !last && self.known(&id.session) == Some(offset) {
            let crc32c = crc32c::crc32c(&data);
            let stream = self.open_stream(&at, &id, offset);
            let generation = self.stream_part(key, &at, &id, stream, data, last).await?;
            return Ok(done(Some(crc32c), generation));
        }
        let mut from = offset;
        if self.known(&id.session) != Some(offset) {
            // After an interruption or in another process: ask first, so
            // that no byte the store holds is sent again.
            match self.session_state(&at, &id).await? {
                Session::Active { persisted } => {
                    self.remember(&id.session, persisted);
                    if persisted < offset {
                        return Err(StoreError::Behind { at, held: persisted, offset });
                    }
                    if persisted >= end && !last {
                        return Ok(done(None, None));
                    }
                    from = persisted.min(end);
                }
                Session::Finished(object) => {
                    self.forget(&id.session);
                    if !self.holds_whole_upload(key, &id, &object).await {
                        return Err(StoreError::Integrity {
                            at,
                            message: "the store finished the upload before all of it was sent \
                                      (an emulator's status query?); start it again"
                                .into(),
                        });
                    }
                    if last {
                        return Ok(done(None, Some(object.generation)));
                    }
                    return Err(StoreError::Protocol {
                        at,
                        message: format!("the upload is already finished; part {index} is late"),
                    });
                }
                Session::Gone => {
                    self.forget(&id.session);
                    return Err(StoreError::NotFound { at });
                }
            }
        }
        let crc32c = (from == offset).then(|| crc32c::crc32c(&data));
        loop {
            let chunk = data.slice((from - offset) as usize..);
            let request = self
                .http
                .put(&id.session)
                .header(CONTENT_RANGE, content_range(from, end, id.size))
                .header(CONTENT_TYPE, OCTET_STREAM)
                // Explicit: reqwest sends none for an empty body, and GCS
                // wants `Content-Length: 0` on a final request with no bytes.
                .header(CONTENT_LENGTH, chunk.len().to_string())
                .body(chunk);
            let answer = match self.call(request, &at, false).await {
                Ok(response) => session_answer(&at, response).await,
                Err(error) => Err(error),
            };
            match answer {
                Ok(Session::Active { persisted }) => {
                    self.remember(&id.session, persisted);
                    if persisted >= end && !last {
                        return Ok(done(crc32c, None));
                    }
                    if persisted <= from || persisted >= end {
                        self.forget(&id.session);
                        return Err(StoreError::Protocol {
                            at,
                            message: format!(
                                "after part {index} (bytes {from}-{end}) the store holds {persisted} \
                                 bytes of {}",
                                id.size
                            ),
                        });
                    }
                    // It kept only the start of the chunk: send the rest.
                    from = persisted;
                }
                Ok(Session::Finished(object)) => {
                    self.forget(&id.session);
                    let size = object.size(&at)?;
                    if !last || size != id.size {
                        self.discard(key, &object).await;
                        return Err(StoreError::Integrity {
                            at,
                            message: format!(
                                "the store finished the upload at part {index} with {size} of {} \
                                 bytes",
                                id.size
                            ),
                        });
                    }
                    return Ok(done(crc32c, Some(object.generation)));
                }
                Ok(Session::Gone) => {
                    self.forget(&id.session);
                    return Err(StoreError::NotFound { at });
                }
                Err(error) => {
                    // Whatever the store kept of the chunk is unknown now.
                    self.forget(&id.session);
                    return Err(error);
                }
            }
        }
    }

    async fn uploaded_parts(
        &self,
        key: &str,
        upload: &str,
    ) -> Result<Option<Vec<PartDone>>, StoreError> {
        let at = self.upload_at(key);
        let id = self.upload_id(&at, upload)?;
        self.close_stream(&id.session);
        match self.session_state(&at, &id).await? {
            Session::Active { persisted } if persisted < id.size => {
                self.remember(&id.session, persisted);
                Ok(Some(held_parts(persisted, id.part_size)))
            }
            Session::Active { persisted } => Err(StoreError::Protocol {
                at,
                message: format!(
                    "the store holds {persisted} bytes of an unfinished upload of {}",
                    id.size
                ),
            }),
            Session::Finished(object) => {
                self.forget(&id.session);
                self.holds_whole_upload(key, &id, &object).await;
                Ok(None)
            }
            Session::Gone => {
                self.forget(&id.session);
                Ok(None)
            }
        }
    }

    async fn finish_upload(
        &self,
        key: &str,
        upload: &str,
        parts: &[PartDone],
        size: u64,
    ) -> Result<String, StoreError> {
        let at = self.upload_at(key);
        let id = self.upload_id(&at, upload)?;
        if size != id.size {
            return Err(StoreError::Protocol {
                at,
                message: format!("the upload was started for {} bytes, not {size}", id.size),
            });
        }
        self.close_stream(&id.session);
        check_parts(&id, parts)
            .map_err(|message| StoreError::Protocol { at: at.clone(), message })?;
        let tags: Vec<PartTag> = parts.iter().map(|p| PartTag::parse(&p.tag)).collect();
        let generation = tags.last().and_then(|t| t.generation.clone());
        let object = match generation {
            // The final part's answer named the object it made.
            Some(generation) => self.metadata(key, Some(&generation)).await?.ok_or_else(|| {
                StoreError::NotFound {
                    at: format!(
                        "{} generation {generation} (deleted or replaced since?)",
                        self.at(key)
                    ),
                }
            })?,
            None => match self.session_state(&at, &id).await? {
                Session::Finished(object) => object,
                Session::Active { persisted } => {
                    self.remember(&id.session, persisted);
                    return Err(StoreError::Protocol {
                        at,
                        message: format!(
                            "the final part was never sent: the store holds {persisted} of {size} \
                             bytes"
                        ),
                    });
                }
                Session::Gone => {
                    self.forget(&id.session);
                    return Err(StoreError::NotFound { at });
                }
            },
        };
        self.forget(&id.session);
        let sent_crc32c = combined_crc32c(parts.iter().zip(&tags).map(|(p, t)| (t.crc32c, p.size)));
        self.verify(key, &object, size, None, sent_crc32c).await?;
        Ok(object.generation)
    }

    async fn abort_upload(&self, key: &str, upload: &str) -> Result<(), StoreError> {
        let at = self.upload_at(key);
        let id = self.upload_id(&at, upload)?;
        self.close_stream(&id.session);
        self.forget(&id.session);
        let request = self.http.delete(&id.session).header(CONTENT_LENGTH, "0");
        let response = self.call(request, &at, false).await?;
        match response.status().as_u16() {
            // 499: cancelled; 404 and 410: gone already.
            200..=299 | 404 | 410 | 499 => Ok(()),
            status => {
                let text = response.text().await.unwrap_or_default();
                Err(refusal(&at, status, &text))
            }
        }
    }
}

/// Where an unfinished resumable upload stands.
enum Session {
    /// Unfinished; the store holds the first `persisted` bytes.
    Active { persisted: u64 },
    /// Finished: the object it made.
    Finished(ObjectResource),
    /// Cancelled, expired, or never existed.
    Gone,
}

/// A session's answer to a chunk or a status query.
async fn session_answer(at: &str, response: reqwest::Response) -> Result<Session, StoreError> {
    match response.status().as_u16() {
        308 => {
            let range = response.headers().get(RANGE).map(|v| v.to_str().unwrap_or("?"));
            let persisted = persisted_bytes(range)
                .map_err(|message| StoreError::Protocol { at: at.to_string(), message })?;
            Ok(Session::Active { persisted })
        }
        200 | 201 => Ok(Session::Finished(json(response, at).await?)),
        404 | 410 | 499 => Ok(Session::Gone),
        status => {
            let text = response.text().await.unwrap_or_default();
            Err(refusal(at, status, &text))
        }
    }
}

/// A resumable upload's id: `{part_size}:{size}:{session URI}`. The part
/// size turns the bytes a session holds into whole parts; the size is the
/// `Content-Range` total of every chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UploadId {
    part_size: u64,
    size: u64,
    session: String,
}

impl UploadId {
    fn encode(&self) -> String {
        format!("{}:{}:{}", self.part_size, self.size, self.session)
    }

    fn parse(text: &str) -> Option<UploadId> {
        let (part_size, rest) = text.split_once(':')?;
        let (size, session) = rest.split_once(':')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(part_size) || !digits(size) {
            return None;
        }
        let part_size: u64 = part_size.parse().ok().filter(|p| *p > 0)?;
        let size: u64 = size.parse().ok()?;
        let url = session.starts_with("https://") || session.starts_with("http://");
        url.then(|| UploadId { part_size, size, session: session.to_string() })
    }

    /// An empty object is one empty part.
    fn parts(&self) -> u64 {
        self.size.div_ceil(self.part_size).max(1)
    }

    fn part_len(&self, index: u32) -> u64 {
        let start = u64::from(index) * self.part_size;
        self.part_size.min(self.size.saturating_sub(start))
    }
}

/// What a part's tag holds: the CRC32C of the bytes sent, and for the
/// final part the generation of the object it made:
/// `crc32c=0a1b2c3d;generation=1700000000000000`. A part the store reports
/// holding ([`ObjectStore::uploaded_parts`]) has neither: `persisted`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PartTag {
    crc32c: Option<u32>,
    generation: Option<String>,
}

impl PartTag {
    fn encode(&self) -> String {
        let mut fields = Vec::new();
        if let Some(crc32c) = self.crc32c {
            fields.push(format!("crc32c={crc32c:08x}"));
        }
        if let Some(generation) = &self.generation {
            fields.push(format!("generation={generation}"));
        }
        if fields.is_empty() {
            "persisted".into()
        } else {
            fields.join(";")
        }
    }

    fn parse(text: &str) -> PartTag {
        let mut tag = PartTag::default();
        for field in text.split(';') {
            match field.split_once('=') {
                Some(("crc32c", hex)) if hex.len() == 8 => {
                    tag.crc32c = u32::from_str_radix(hex, 16).ok();
                }
                Some(("generation", generation))
                    if !generation.is_empty() && generation.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    tag.generation = Some(generation.to_string());
                }
                _ => {}
            }
        }
        tag
    }
}

/// How a written object differs from what was sent (its size, and the MD5
/// or CRC32C of the bytes when known), if it does.
fn mismatch(
    object: &ObjectResource,
    stored: u64,
    size: u64,
    md5: Option<[u8; 16]>,
    crc32c: Option<u32>,
) -> Option<String> {
    if stored != size {
        return Some(format!("the store holds {stored} bytes, not the {size} sent"));
    }
    if let Some(md5) = md5 {
        let sent = BASE64_STANDARD.encode(md5);
        match &object.md5_hash {
            Some(held) if *held == sent => {}
            Some(held) => {
                return Some(format!(
                    "the store received bytes whose MD5 is {held}, not the {sent} sent"
                ))
            }
            None => return Some("the store gave no MD5 to check the object by".into()),
        }
    }
    if let Some(crc32c) = crc32c {
        match object.crc32c.as_deref().and_then(crc32c_from_base64) {
            Some(held) if held == crc32c => {}
            Some(held) => {
                return Some(format!(
                    "the store assembled bytes whose CRC32C is {held:08x}, not the {crc32c:08x} \
                     of the parts sent"
                ))
            }
            None => return Some("the store gave no CRC32C to check the object by".into()),
        }
    }
    None
}

/// The parts of a finished upload: all there, in order, of the right sizes.
fn check_parts(id: &UploadId, parts: &[PartDone]) -> Result<(), String> {
    if parts.len() as u64 != id.parts() {
        return Err(format!("{} parts given; the upload has {}", parts.len(), id.parts()));
    }
    for (expected, part) in parts.iter().enumerate() {
        if part.index as usize != expected {
            return Err(format!("part {expected} is missing"));
        }
        if part.size != id.part_len(part.index) {
            return Err(format!(
                "part {} holds {} bytes, not {}",
                part.index,
                part.size,
                id.part_len(part.index)
            ));
        }
    }
    Ok(())
}

/// The CRC32C of the parts' bytes one after the other, from each part's
/// CRC32C and size; `None` when a part's CRC32C is unknown.
fn combined_crc32c(parts: impl IntoIterator<Item = (Option<u32>, u64)>) -> Option<u32> {
    let mut combined: Option<u32> = None;
    for (crc32c, size) in parts {
        let crc32c = crc32c?;
        combined = Some(match combined {
            None => crc32c,
            Some(before) => crc32c::crc32c_combine(before, crc32c, size as usize),
        });
    }
    combined
}

/// GCS gives CRC32Cs as the base64 of their four big-endian bytes.
fn crc32c_from_base64(text: &str) -> Option<u32> {
    let bytes: [u8; 4] = BASE64_STANDARD.decode(text).ok()?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// The whole parts in the first `persisted` bytes of an upload.
fn held_parts(persisted: u64, part_size: u64) -> Vec<PartDone> {
    let whole = persisted / part_size;
    (0..whole as u32)
        .map(|index| PartDone { index, size: part_size, tag: PartTag::default().encode() })
        .collect()
}

/// The `Content-Range` of a chunk holding bytes `from..end` of `total`;
/// with no bytes it finishes the upload (or, as a query, asks how far it
/// got).
fn content_range(from: u64, end: u64, total: u64) -> String {
    if from < end {
        format!("bytes {from}-{}/{total}", end - 1)
    } else {
        format!("bytes */{total}")
    }
}

/// The bytes a session holds, from its 308 answer's `Range: bytes=0-N`; no
/// `Range` means none.
fn persisted_bytes(range: Option<&str>) -> Result<u64, String> {
    let Some(range) = range else { return Ok(0) };
    range
        .trim()
        .strip_prefix("bytes=0-")
        .and_then(|last| last.parse::<u64>().ok())
        .map(|last| last + 1)
        .ok_or_else(|| format!("a resumable upload's answer has the Range `{range}`"))
}

/// The endpoint, and whether it is an emulator named by
/// `STORAGE_EMULATOR_HOST` (which then gets no credentials).
fn resolve_endpoint(explicit: Option<&str>, emulator_host: Option<&str>) -> (String, bool) {
    if let Some(endpoint) = explicit.map(str::trim).filter(|e| !e.is_empty()) {
        return (endpoint.trim_end_matches('/').to_string(), false);
    }
    match emulator_host.map(str::trim).filter(|h| !h.is_empty()) {
        Some(host) if host.contains("://") => (host.trim_end_matches('/').to_string(), true),
        Some(host) => (format!("http://{}", host.trim_end_matches('/')), true),
        None => (DEFAULT_ENDPOINT.to_string(), false),
    }
}

/// A name or query value, percent-encoded (`/` too).
fn encode(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

/// A multipart boundary: 192 random bits, which no data contains but by a
/// chance too small to matter.
fn boundary() -> String {
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("skyweave-{hex}")
}

/// A `multipart/related` body: the JSON metadata, then the data.
fn multipart_body(boundary: &str, metadata: &str, data: &[u8]) -> Bytes {
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n\
         --{boundary}\r\nContent-Type: {OCTET_STREAM}\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let mut body = BytesMut::with_capacity(head.len() + data.len() + tail.len());
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(data);
    body.extend_from_slice(tail.as_bytes());
    body.freeze()
}

/// Like [`http_client`] without the read timeout: a streamed request's
/// answer comes only after the whole object, which may take longer.
///
/// HTTP/1.1 only: there, the body is polled for the next part once the last
/// one is written out (hyper buffers a few hundred KiB), so a part counts as
/// taken only when it is on its way. HTTP/2 would move a whole part into its
/// send buffer at once, outside the engine's memory bound.
fn streaming_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client configuration is valid")
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(64)
        // A resumable upload's 308 is "resume incomplete", not a redirect.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client configuration is valid")
}

/// A streamed request's transport failure, said as such.
fn broke(error: StoreError) -> StoreError {
    match error {
        StoreError::Transport { at, message } => StoreError::Transport {
            at,
            message: format!("the upload request broke midway ({message})"),
        },
        other => other,
    }
}

/// The answer if it is a success, else its error.
async fn accept(response: reqwest::Response, at: &str) -> Result<reqwest::Response, StoreError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Err(refusal(at, status, &text))
}

async fn json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    at: &str,
) -> Result<T, StoreError> {
    let body = response.bytes().await.map_err(|e| StoreError::transport(at, e))?;
    serde_json::from_slice(&body).map_err(|e| StoreError::Protocol {
        at: at.to_string(),
        message: format!("the answer is not the JSON expected ({e})"),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorAnswer {
    error: ErrorDetail,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorDetail {
    message: String,
    status: String,
    errors: Vec<ErrorItem>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorItem {
    reason: String,
}

/// An error answer as a `StoreError`: the JSON API's reason (`notFound`,
/// `invalid`, ...) and message, or the body's start when it is not JSON.
fn refusal(at: &str, status: u16, text: &str) -> StoreError {
    let (code, message) = match serde_json::from_str::<ErrorAnswer>(text) {
        Ok(answer) if !answer.error.message.is_empty() => {
            let reason = answer.error.errors.into_iter().map(|e| e.reason).find(|r| !r.is_empty());
            let status_name = Some(answer.error.status).filter(|s| !s.is_empty());
            let code = reason.or(status_name).unwrap_or_else(|| format!("HTTP{status}"));
            (code, answer.error.message)
        }
        _ => (format!("HTTP{status}"), text.trim().chars().take(300).collect()),
    };
    match status {
        404 => StoreError::NotFound { at: at.to_string() },
        401 => StoreError::Credentials {
            at: at.to_string(),
            message: format!("the store refused the credentials: {status} {code}: {message}"),
        },
        _ => StoreError::Refused { at: at.to_string(), status, code, message },
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectList {
    #[serde(default)]
    items: Vec<ObjectResource>,
    next_page_token: Option<String>,
}

/// The fields of an object resource this backend reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectResource {
    name: String,
    #[serde(deserialize_with = "string_or_number")]
    size: String,
    #[serde(deserialize_with = "string_or_number")]
    generation: String,
    md5_hash: Option<String>,
    crc32c: Option<String>,
}

impl ObjectResource {
    fn size(&self, at: &str) -> Result<u64, StoreError> {
        self.size.parse().map_err(|_| StoreError::Protocol {
            at: at.to_string(),
            message: format!("`{}` has the size `{}`", self.name, self.size),
        })
    }
}

/// The JSON API writes 64-bit numbers as strings; accept numbers too.
fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(u64),
    }
    Ok(match Either::deserialize(deserializer)? {
        Either::Text(text) => text,
        Either::Number(number) => number.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(prefix: &str) -> Gcs {
        Gcs::new(GcsConfig {
            bucket: "b".into(),
            prefix: prefix.into(),
            endpoint: Some("http://127.0.0.1:9/".into()),
            credentials: None,
        })
        .unwrap()
    }

    #[test]
    fn object_names_are_one_path_segment() {
        let check = |name: &str, expected: &str| assert_eq!(encode(name), expected, "{name}");
        check("a.txt", "a.txt");
        check("a~b-c_d.e", "a~b-c_d.e");
        check("dir/with space/b c.txt", "dir%2Fwith%20space%2Fb%20c.txt");
        check("odd+chars&=%?#.bin", "odd%2Bchars%26%3D%25%3F%23.bin");
        check("ünïcödé/日本語", "%C3%BCn%C3%AFc%C3%B6d%C3%A9%2F%E6%97%A5%E6%9C%AC%E8%AA%9E");
        assert_eq!(
            store("/models/").object_url("dir/x y.bin").unwrap(),
            "http://127.0.0.1:9/storage/v1/b/b/o/models%2Fdir%2Fx%20y.bin"
        );
        assert_eq!(store("").object_url("x").unwrap(), "http://127.0.0.1:9/storage/v1/b/b/o/x");
        assert!(store("p").object_url("").is_err(), "an empty key names no object");
        assert_eq!(store("a/b/").describe(), "gs://b/a/b/");
    }

    #[test]
    fn upload_ids_carry_part_size_size_and_session() {
        let id = UploadId {
            part_size: 262_144,
            size: 536_633,
            session: "https://storage.googleapis.com/upload/storage/v1/b/b/o?uploadType=\
                      resumable&name=a%3Ab&upload_id=ADPycdu:x"
                .into(),
        };
        let text = id.encode();
        assert!(text.starts_with("262144:536633:https://"));
        assert_eq!(UploadId::parse(&text), Some(id.clone()));
        assert_eq!((id.parts(), id.part_len(0), id.part_len(2)), (3, 262_144, 12_345));
        let empty = UploadId { size: 0, ..id };
        assert_eq!((empty.parts(), empty.part_len(0)), (1, 0));
        for bad in [
            "",
            "abc",
            "262144:https://x",
            "0:10:https://x",
            "+1:10:https://x",
            "1:-1:https://x",
            "1:10:ftp://x",
            "1:10:",
        ] {
            assert_eq!(UploadId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_ranges_name_the_chunk_and_the_total() {
        let check = |(from, end, total), expected: &str| {
            assert_eq!(content_range(from, end, total), expected);
        };
        check((0, 262_144, 536_633), "bytes 0-262143/536633");
        check((262_144, 524_288, 536_633), "bytes 262144-524287/536633");
        check((524_288, 536_633, 536_633), "bytes 524288-536632/536633");
        check((0, 0, 0), "bytes */0");
        check((10, 10, 10), "bytes */10");
    }

    #[test]
    fn persisted_bytes_become_whole_parts() {
        assert_eq!(persisted_bytes(None), Ok(0));
        assert_eq!(persisted_bytes(Some("bytes=0-262143")), Ok(262_144));
        assert_eq!(persisted_bytes(Some("bytes=0-0")), Ok(1));
        for bad in ["bytes=5-10", "0-10", "bytes=0-", "bytes=0-x", "?"] {
            assert!(persisted_bytes(Some(bad)).is_err(), "{bad}");
        }
        let check = |persisted: u64, expected: &[u32]| {
            let parts = held_parts(persisted, 262_144);
            assert_eq!(parts.iter().map(|p| p.index).collect::<Vec<_>>(), expected, "{persisted}");
            assert!(parts.iter().all(|p| p.size == 262_144 && p.tag == "persisted"));
        };
        check(0, &[]);
        check(262_143, &[]);
        check(262_144, &[0]);
        check(300_000, &[0]);
        check(524_288, &[0, 1]);
    }

    #[test]
    fn part_tags_round_trip() {
        let check = |tag: PartTag, text: &str| {
            assert_eq!(tag.encode(), text);
            assert_eq!(PartTag::parse(text), tag);
        };
        check(PartTag { crc32c: Some(0x0a1b_2c3d), generation: None }, "crc32c=0a1b2c3d");
        check(
            PartTag { crc32c: Some(1), generation: Some("1700000000000000".into()) },
            "crc32c=00000001;generation=1700000000000000",
        );
        check(PartTag::default(), "persisted");
        assert_eq!(PartTag::parse("crc32c=xyz;generation=1a"), PartTag::default());
    }

    #[test]
    fn the_crc32c_of_the_parts_is_that_of_the_whole() {
        // The standard check value, and GCS's base64 form of it.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c_from_base64("ksgKMQ=="), Some(crc32c::crc32c(b"abcd")));
        assert_eq!(crc32c_from_base64("not base64"), None);
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let parts: Vec<(Option<u32>, u64)> =
            data.chunks(262_144).map(|c| (Some(crc32c::crc32c(c)), c.len() as u64)).collect();
        assert_eq!(combined_crc32c(parts.clone()), Some(crc32c::crc32c(&data)));
        let mut unknown = parts;
        unknown[1].0 = None;
        assert_eq!(combined_crc32c(unknown), None);
    }

    #[test]
    fn written_objects_are_checked_by_size_md5_and_crc32c() {
        let data = b"abcd";
        let md5: [u8; 16] = md5::Md5::digest(data).into();
        let object = |md5_hash: Option<&str>, crc32c: Option<&str>| ObjectResource {
            name: "k".into(),
            size: "4".into(),
            generation: "1".into(),
            md5_hash: md5_hash.map(str::to_string),
            crc32c: crc32c.map(str::to_string),
        };
        let good = object(Some("4vxxTEcn7pOV8yTNLn8zHw=="), Some("ksgKMQ=="));
        let crc = crc32c::crc32c(data);
        assert_eq!(mismatch(&good, 4, 4, Some(md5), Some(crc)), None);
        assert_eq!(mismatch(&good, 4, 4, None, None), None);
        let check = |object: &ObjectResource, stored, md5, crc, expected: &str| {
            let problem = mismatch(object, stored, 4, md5, crc).expect("a mismatch");
            assert!(problem.contains(expected), "{problem}");
        };
        check(&good, 5, None, None, "holds 5 bytes, not the 4");
        check(&good, 4, Some([0; 16]), None, "not the AAAAAAAAAAAAAAAAAAAAAA== sent");
        check(&good, 4, None, Some(crc ^ 1), "of the parts sent");
        check(&object(None, None), 4, Some(md5), None, "no MD5");
        check(&object(None, None), 4, None, Some(crc), "no CRC32C");
    }

    #[test]
    fn finished_uploads_need_every_part_in_order() {
        let id = UploadId { part_size: 10, size: 25, session: "https://x".into() };
        let part = |index: u32, size: u64| PartDone { index, size, tag: String::new() };
        assert_eq!(check_parts(&id, &[part(0, 10), part(1, 10), part(2, 5)]), Ok(()));
        assert!(check_parts(&id, &[part(0, 10), part(2, 5)]).is_err());
        assert!(check_parts(&id, &[part(0, 10), part(2, 10), part(1, 5)]).is_err());
        assert!(check_parts(&id, &[part(0, 10), part(1, 10), part(2, 4)]).is_err());
    }

    #[test]
    fn the_emulator_variable_sets_the_endpoint_and_drops_credentials() {
        let check = |explicit, variable, expected: (&str, bool)| {
            let (endpoint, emulator) = resolve_endpoint(explicit, variable);
            assert_eq!((endpoint.as_str(), emulator), expected, "{explicit:?} {variable:?}");
        };
        check(None, None, (DEFAULT_ENDPOINT, false));
        check(None, Some(" "), (DEFAULT_ENDPOINT, false));
        check(None, Some("localhost:4443"), ("http://localhost:4443", true));
        check(None, Some("https://gcs.test:4443/"), ("https://gcs.test:4443", true));
        check(
            Some("https://private.googleapis.com/"),
            Some("localhost:1"),
            ("https://private.googleapis.com", false),
        );
        let refused = Gcs::new(GcsConfig {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: Some("http://proxy.test".into()),
            credentials: Some(GoogleCredentials::Default),
        });
        assert!(matches!(refused, Err(StoreError::Credentials { .. })), "no tokens over HTTP");
    }

    #[test]
    fn errors_keep_the_reason_and_message() {
        let text = r#"{"error":{"code":400,"message":"Provided MD5 hash does not match",
            "errors":[{"message":"Provided MD5 hash does not match","domain":"global",
            "reason":"invalid"}]}}"#;
        match refusal("gs://b/k", 400, text) {
            StoreError::Refused { status, code, message, .. } => {
                assert_eq!((status, code.as_str()), (400, "invalid"));
                assert_eq!(message, "Provided MD5 hash does not match");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(refusal("gs://b/k", 404, "{}"), StoreError::NotFound { .. }));
        assert!(matches!(refusal("gs://b/k", 401, ""), StoreError::Credentials { .. }));
        match refusal("gs://b/k", 503, "Service Unavailable") {
            error @ StoreError::Refused { .. } => {
                assert!(error.is_transient());
                assert!(error.to_string().contains("HTTP503: Service Unavailable"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn multipart_bodies_frame_metadata_and_data() {
        let body = multipart_body("B", "{\"name\":\"x\"}", b"\x00data\r\n");
        assert_eq!(
            &body[..],
            &b"--B\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{\"name\":\"x\"}\r\n\
               --B\r\nContent-Type: application/octet-stream\r\n\r\n\x00data\r\n\r\n--B--\r\n"[..]
        );
        assert_ne!(boundary(), boundary());
    }
}
