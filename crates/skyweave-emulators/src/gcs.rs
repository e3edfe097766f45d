//! A protocol emulator of Google Cloud Storage's resumable uploads (JSON
//! API), written from Google's published description of them, for what
//! fake-gcs-server cannot show: an upload interrupted midway and resumed.
//!
//! - `POST /upload/storage/v1/b/{bucket}/o?uploadType=resumable` with the
//!   object's metadata (`{"name": ...}`) and `X-Upload-Content-Length`
//!   starts a session; `Location` is its URI (built from the request's
//!   `Host`, so that a proxy in front stays in the path).
//! - `PUT {session}` with `Content-Range: bytes A-B/SIZE` sends bytes
//!   `A..=B`. `A` must be where the session's bytes end, and every chunk
//!   but the last must be a multiple of 256 KiB. The answer is `308` with
//!   `Range: bytes=0-N` (what it holds) until the last byte arrives, then
//!   `200` with the object's resource.
//! - `PUT {session}` with `Content-Range: bytes */SIZE` and no body asks
//!   how far the session got: `308` as above (no `Range` when it holds
//!   nothing), or `200` with the object once finished. Unlike
//!   fake-gcs-server, asking never finishes a session.
//! - A request whose body breaks off keeps what arrived, rounded down to
//!   256 KiB (GCS persists in such units).
//! - `DELETE {session}` cancels it (`499`); later requests get `404`.
//! - `GET /storage/v1/b/{bucket}/o/{object}` gives an object's resource
//!   (`size`, `generation`, `crc32c`), `DELETE` removes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use tokio::net::TcpListener;

use crate::net;

/// Every chunk of a resumable upload but the last is a multiple of this.
const GRANULE: u64 = 256 * 1024;

/// A running emulator.
pub struct GcsUploadsEmulator {
    pub addr: SocketAddr,
    state: Arc<Mutex<Store>>,
    _server: net::Server,
}

impl GcsUploadsEmulator {
    /// `http://ADDR`, the endpoint to give a GCS client.
    pub fn base_url(&self) -> String {
        net::base_url(self.addr)
    }

    /// The bytes of a finished object, if it exists.
    pub fn object(&self, bucket: &str, name: &str) -> Option<Vec<u8>> {
        let store = self.state.lock().expect("store lock");
        store.objects.get(&(bucket.to_string(), name.to_string())).map(|o| o.data.clone())
    }

    /// Chunk requests (not status queries) that sessions have received.
    pub fn chunk_requests(&self) -> u64 {
        self.state.lock().expect("store lock").chunk_requests
    }
}

#[derive(Default)]
struct Store {
    next_id: u64,
    next_generation: u64,
    sessions: HashMap<String, Session>,
    objects: HashMap<(String, String), Object>,
    chunk_requests: u64,
}

struct Session {
    bucket: String,
    name: String,
    size: u64,
    data: Vec<u8>,
    /// The generation the finished upload made.
    finished: Option<u64>,
}

struct Object {
    data: Vec<u8>,
    generation: u64,
}

/// Starts the emulator on a free loopback port.
pub async fn spawn_gcs_uploads() -> std::io::Result<GcsUploadsEmulator> {
    let state = Arc::new(Mutex::new(Store { next_generation: 1, ..Store::default() }));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = Router::new()
        .route("/upload/storage/v1/b/{bucket}/o", post(start).put(chunk).delete(cancel))
        .route("/storage/v1/b/{bucket}/o/{object}", get(metadata).delete(delete_object))
        .with_state(Arc::clone(&state));
    let _server = net::serve(listener, router, |_: &mut HeaderMap| {});
    Ok(GcsUploadsEmulator { addr, state, _server })
}

type Shared = Arc<Mutex<Store>>;

fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": status.as_u16(), "message": message } });
    (status, axum::Json(body)).into_response()
}

fn resource(bucket: &str, name: &str, object: &Object) -> Response {
    let crc = crc32c::crc32c(&object.data).to_be_bytes();
    axum::Json(serde_json::json!({
        "kind": "storage#object",
        "bucket": bucket,
        "name": name,
        "size": object.data.len().to_string(),
        "generation": object.generation.to_string(),
        "crc32c": base64(&crc),
    }))
    .into_response()
}

fn base64(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    crate::base64::encode_into(bytes, &mut out);
    String::from_utf8(out).expect("base64 is ASCII")
}

fn resume_incomplete(held: u64) -> Response {
    let mut response = StatusCode::PERMANENT_REDIRECT.into_response();
    if held > 0 {
        let range = format!("bytes=0-{}", held - 1);
        response.headers_mut().insert("range", range.parse().expect("a valid header value"));
    }
    response
}

async fn start(
    State(state): State<Shared>,
    Path(bucket): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if query.get("uploadType").map(String::as_str) != Some("resumable") {
        return error(StatusCode::BAD_REQUEST, "only uploadType=resumable is emulated");
    }
    let Some(name) = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string))
    else {
        return error(StatusCode::BAD_REQUEST, "the metadata names no object");
    };
    let Some(size) = headers
        .get("x-upload-content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return error(StatusCode::BAD_REQUEST, "X-Upload-Content-Length is required here");
    };
    let Some(host) = headers.get("host").and_then(|v| v.to_str().ok()) else {
        return error(StatusCode::BAD_REQUEST, "no Host header");
    };
    let id = {
        let mut store = state.lock().expect("store lock");
        store.next_id += 1;
        let id = format!("session-{}", store.next_id);
        let session =
            Session { bucket: bucket.clone(), name, size, data: Vec::new(), finished: None };
        store.sessions.insert(id.clone(), session);
        id
    };
    let location =
        format!("http://{host}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&upload_id={id}");
    let mut response = StatusCode::OK.into_response();
    response.headers_mut().insert("location", location.parse().expect("a valid header value"));
    response
}

/// `Content-Range`: `bytes */SIZE` (a status query) or `bytes A-B/SIZE`.
fn content_range(headers: &HeaderMap) -> Option<(Option<(u64, u64)>, u64)> {
    let text = headers.get("content-range")?.to_str().ok()?.strip_prefix("bytes ")?;
    let (range, total) = text.split_once('/')?;
    let total = total.parse().ok()?;
    if range == "*" {
        return Some((None, total));
    }
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last).then_some((Some((first, last)), total))
}

async fn chunk(
    State(state): State<Shared>,
    Path(_bucket): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(id) = query.get("upload_id").cloned() else {
        return error(StatusCode::BAD_REQUEST, "no upload_id");
    };
    let Some((range, total)) = content_range(&headers) else {
        return error(StatusCode::BAD_REQUEST, "a missing or malformed Content-Range");
    };
    // Where the session stands before this request.
    let (held, finished) = {
        let store = state.lock().expect("store lock");
        let Some(session) = store.sessions.get(&id) else {
            return error(StatusCode::NOT_FOUND, "no such upload session");
        };
        if total != session.size {
            return error(StatusCode::BAD_REQUEST, "the total differs from the session's size");
        }
        (session.data.len() as u64, session.finished)
    };
    if let Some(generation) = finished {
        return finished_resource(&state, &id, generation);
    }
    let Some((first, last)) = range else {
        return resume_incomplete(held);
    };
    if first != held {
        return error(
            StatusCode::BAD_REQUEST,
            "the chunk does not start where the session's bytes end",
        );
    }
    let len = last + 1 - first;
    if last + 1 > total || (last + 1 < total && len % GRANULE != 0) {
        return error(
            StatusCode::BAD_REQUEST,
            "a chunk other than the last is not a multiple of 256 KiB",
        );
    }
    state.lock().expect("store lock").chunk_requests += 1;
    // Read the body as it comes; if it breaks off, keep what arrived in
    // whole 256 KiB units.
    let mut received = Vec::new();
    let mut body = body;
    let broke = loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    received.extend_from_slice(&data);
                }
            }
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    let mut store = state.lock().expect("store lock");
    let Some(session) = store.sessions.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "the session was cancelled meanwhile");
    };
    if broke || received.len() as u64 != len {
        let keep = (held + received.len() as u64).min(last + 1) / GRANULE * GRANULE;
        let keep = keep.max(held) - held;
        session.data.extend_from_slice(&received[..keep as usize]);
        let held = session.data.len() as u64;
        drop(store);
        return if broke {
            error(StatusCode::BAD_REQUEST, "the request body broke off")
        } else {
            resume_incomplete(held)
        };
    }
    session.data.extend_from_slice(&received);
    if session.data.len() as u64 == session.size {
        let generation = store.next_generation;
        store.next_generation += 1;
        let session = store.sessions.get_mut(&id).expect("present above");
        session.finished = Some(generation);
        let key = (session.bucket.clone(), session.name.clone());
        let data = session.data.clone();
        store.objects.insert(key, Object { data, generation });
        drop(store);
        return finished_resource(&state, &id, generation);
    }
    resume_incomplete(session.data.len() as u64)
}

fn finished_resource(state: &Shared, id: &str, generation: u64) -> Response {
    let store = state.lock().expect("store lock");
    let session = &store.sessions[id];
    match store.objects.get(&(session.bucket.clone(), session.name.clone())) {
        Some(object) if object.generation == generation => {
            resource(&session.bucket, &session.name, object)
        }
        _ => error(StatusCode::NOT_FOUND, "the object the upload made is gone"),
    }
}

async fn cancel(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let id = query.get("upload_id").cloned().unwrap_or_default();
    match state.lock().expect("store lock").sessions.remove(&id) {
        Some(_) => StatusCode::from_u16(499).expect("a valid status").into_response(),
        None => error(StatusCode::NOT_FOUND, "no such upload session"),
    }
}

async fn metadata(
    State(state): State<Shared>,
    Path((bucket, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let store = state.lock().expect("store lock");
    match store.objects.get(&(bucket.clone(), name.clone())) {
        Some(object)
            if query.get("generation").is_none_or(|g| *g == object.generation.to_string()) =>
        {
            resource(&bucket, &name, object)
        }
        _ => error(StatusCode::NOT_FOUND, "no such object"),
    }
}

async fn delete_object(
    State(state): State<Shared>,
    Path((bucket, name)): Path<(String, String)>,
) -> Response {
    match state.lock().expect("store lock").objects.remove(&(bucket, name)) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(StatusCode::NOT_FOUND, "no such object"),
    }
}
