//! `POST /v1/chat/completions` and
//! `POST /openai/deployments/{deployment}/chat/completions`.

use std::convert::Infallible;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http_body::Frame;
use serde::{Deserialize, Serialize};

use crate::errors::{self, Operation};
use crate::server::{
    common_behaviour, non_streaming, prepare, unix_now, ConnHandle, Delay, PendingBody,
};
use crate::tokens::{estimate_tokens, CharCount, CowStr};
use crate::{Behaviour, Dialect, Shared, Tracker};

/// Words appended after "Hello from {name}", one per further content piece.
const WORDS: [&str; 8] =
    ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"];

const SYSTEM_FINGERPRINT: &str = "fp_skyweave";

/// Content piece `i`, JSON-escaped: piece 0 is "Hello from {name}", the
/// others " word".
fn push_piece(out: &mut Vec<u8>, hello_json: &str, i: u32) {
    if i == 0 {
        out.extend_from_slice(hello_json.as_bytes());
    } else {
        out.push(b' ');
        out.extend_from_slice(WORDS[(i as usize - 1) % WORDS.len()].as_bytes());
    }
}

/// The whole reply text for `chunks` pieces.
pub(crate) fn reply_text(hello: &str, chunks: u32) -> String {
    let mut s = String::new();
    for i in 0..chunks {
        if i == 0 {
            s.push_str(hello);
        } else {
            s.push(' ');
            s.push_str(WORDS[(i as usize - 1) % WORDS.len()]);
        }
    }
    s
}

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow)]
    model: Option<CowStr<'a>>,
    messages: Option<Vec<Message>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: CharCount,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

pub(crate) async fn chat_openai(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    chat(shared, None, req).await
}

pub(crate) async fn chat_azure(
    State(shared): State<Arc<Shared>>,
    Path(deployment): Path<String>,
    req: Request,
) -> Response {
    chat(shared, Some(deployment), req).await
}

/// Map a body that serde refused to the API's 400.
pub(crate) fn body_error(e: &serde_json::Error) -> Response {
    match e.classify() {
        serde_json::error::Category::Data => {
            errors::invalid_request(&format!("Invalid request body: {e}"), None, None)
        }
        _ => errors::unparseable_body(),
    }
}

async fn chat(shared: Arc<Shared>, deployment: Option<String>, req: Request) -> Response {
    let mut p = match prepare(&shared, req, deployment).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let body = p.body.clone();
    let parsed: ChatRequest<'_> = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            p.tracker.done();
            return body_error(&e);
        }
    };
    let Some(messages) = parsed.messages else {
        p.tracker.done();
        return errors::missing_param("messages");
    };
    if messages.is_empty() {
        p.tracker.done();
        return errors::invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, \
             but got an empty array instead.",
            Some("messages"),
            Some("empty_array"),
        );
    }
    let model: &str = match (&parsed.model, &p.deployment) {
        (Some(m), _) => m.0.as_ref(),
        (None, Some(d)) => d.as_str(),
        (None, None) => {
            p.tracker.done();
            return errors::invalid_request("you must provide a model parameter", None, None);
        }
    };
    let model = model.to_owned();
    let chars: usize = messages.iter().map(|m| m.content.0).sum();
    let prompt_tokens = estimate_tokens(chars);
    let stream = parsed.stream.unwrap_or(false);
    let include_usage =
        stream && parsed.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    let id = format!("chatcmpl-skyweave{}", shared.next_id());
    let created = unix_now();
    let behaviour = shared.next_behaviour();

    if !stream {
        let s = Arc::clone(&shared);
        return non_streaming(&shared, p, behaviour, Operation::Chat, move |chunks| {
            completion_body(&s, &id, created, &model, prompt_tokens, chunks)
        })
        .await;
    }

    let behaviour = match common_behaviour(&shared, &mut p, behaviour, Operation::Chat).await {
        Ok(resp) => return resp,
        Err(b) => b,
    };
    let model_json = serde_json::to_string(&model).unwrap_or_else(|_| "\"\"".into());
    let mut head = String::with_capacity(128 + id.len() + model_json.len());
    head.push_str("data: {\"id\":\"");
    head.push_str(&id);
    head.push_str("\",\"object\":\"chat.completion.chunk\",\"created\":");
    head.push_str(&created.to_string());
    head.push_str(",\"model\":");
    head.push_str(&model_json);
    head.push_str(",\"system_fingerprint\":\"");
    head.push_str(SYSTEM_FINGERPRINT);
    head.push_str("\",\"choices\":[");

    let (state, pieces, cut, ttft, inter) = match behaviour {
        Behaviour::Ok { ttft_ms, inter_chunk_ms, chunks } => (
            SseState::Start,
            chunks,
            false,
            Duration::from_millis(ttft_ms),
            Duration::from_millis(inter_chunk_ms),
        ),
        Behaviour::CutAfterChunks { chunks } => {
            (SseState::Start, chunks, true, Duration::ZERO, Duration::ZERO)
        }
        Behaviour::Malformed => (SseState::Malformed, 0, false, Duration::ZERO, Duration::ZERO),
        Behaviour::HangAfterHeaders => {
            return sse_response(Body::new(PendingBody { _tracker: p.tracker }));
        }
        // Answered by common_behaviour above.
        Behaviour::Status { .. }
        | Behaviour::ContentFilter
        | Behaviour::Hang
        | Behaviour::Reset => {
            p.tracker.done();
            return errors::status_behaviour(
                shared.dialect,
                Operation::Chat,
                None,
                500,
                None,
                None,
            );
        }
    };
    sse_response(Body::new(SseBody {
        shared: Arc::clone(&shared),
        tracker: Some(p.tracker),
        conn: p.conn,
        head,
        include_usage,
        prompt_tokens,
        pieces,
        cut,
        sent: 0,
        ttft,
        inter,
        delay: None,
        waited: false,
        state,
    }))
}

fn sse_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

// ---- non-streaming -------------------------------------------------------

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
    system_fingerprint: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_filter_results: Option<[PromptFilterResult; 1]>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_filter_results: Option<FilterResults>,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

/// Azure annotates prompts and choices with the content filter's verdict.
#[derive(Serialize)]
struct PromptFilterResult {
    prompt_index: u32,
    content_filter_results: FilterResults,
}

#[derive(Serialize)]
struct FilterResults {
    hate: Severity,
    self_harm: Severity,
    sexual: Severity,
    violence: Severity,
}

#[derive(Serialize)]
struct Severity {
    filtered: bool,
    severity: &'static str,
}

const SAFE: Severity = Severity { filtered: false, severity: "safe" };

fn all_safe() -> FilterResults {
    FilterResults { hate: SAFE, self_harm: SAFE, sexual: SAFE, violence: SAFE }
}

fn completion_body(
    shared: &Shared,
    id: &str,
    created: u64,
    model: &str,
    prompt_tokens: u64,
    chunks: u32,
) -> Vec<u8> {
    let content = reply_text(&shared.hello, chunks);
    let azure = shared.dialect == Dialect::Azure;
    let completion = Completion {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [Choice {
            index: 0,
            message: AssistantMessage { role: "assistant", content: &content, refusal: None },
            logprobs: None,
            finish_reason: "stop",
            content_filter_results: azure.then(all_safe),
        }],
        usage: Usage {
            prompt_tokens,
            completion_tokens: u64::from(chunks),
            total_tokens: prompt_tokens + u64::from(chunks),
        },
        system_fingerprint: SYSTEM_FINGERPRINT,
        prompt_filter_results: azure
            .then(|| [PromptFilterResult { prompt_index: 0, content_filter_results: all_safe() }]),
    };
    serde_json::to_vec(&completion).unwrap_or_default()
}

// ---- streaming -----------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SseState {
    /// Waiting for ttft; then the role chunk and the first content chunk.
    Start,
    /// Next content chunk after inter_chunk.
    Content,
    /// The finish chunk, the usage chunk (if asked for) and `[DONE]`.
    Finish,
    /// Close the connection mid-body.
    Cut,
    /// A `data:` line that is not JSON, then `[DONE]`.
    Malformed,
    End,
    /// Connection is being closed; never yields again.
    Dead,
}

/// The SSE body of a streamed chat completion; each frame is handed to
/// hyper (and written) as soon as it is due.
struct SseBody {
    shared: Arc<Shared>,
    tracker: Option<Tracker>,
    conn: Option<ConnHandle>,
    /// `data: {"id":..,"object":..,"created":..,"model":..,"system_fingerprint":..,"choices":[`
    head: String,
    include_usage: bool,
    prompt_tokens: u64,
    /// Content pieces to send before finishing (or cutting).
    pieces: u32,
    cut: bool,
    sent: u32,
    ttft: Duration,
    inter: Duration,
    delay: Option<Delay>,
    /// The delay before the current step has elapsed.
    waited: bool,
    state: SseState,
}

impl SseBody {
    fn tail(&self, out: &mut Vec<u8>) {
        if self.include_usage {
            out.extend_from_slice(b",\"usage\":null}\n\n");
        } else {
            out.extend_from_slice(b"}\n\n");
        }
    }

    fn push_role(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(
            b"{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\
              \"logprobs\":null,\"finish_reason\":null}]",
        );
        self.tail(out);
    }

    fn push_content(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(b"{\"index\":0,\"delta\":{\"content\":\"");
        push_piece(out, &self.shared.hello_json, self.sent);
        out.extend_from_slice(b"\"},\"logprobs\":null,\"finish_reason\":null}]");
        self.tail(out);
        self.sent += 1;
    }

    fn push_finish(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(
            b"{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]",
        );
        self.tail(out);
        if self.include_usage {
            let completion = u64::from(self.sent);
            out.extend_from_slice(self.head.as_bytes());
            let _ = write!(
                out,
                "],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
                self.prompt_tokens,
                completion,
                self.prompt_tokens + completion
            );
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    fn after_content(&self) -> SseState {
        if self.sent < self.pieces {
            SseState::Content
        } else if self.cut {
            SseState::Cut
        } else {
            SseState::Finish
        }
    }

    /// Start `d` unless the current step already waited; `true` when the
    /// caller must poll the delay first.
    fn needs_delay(&mut self, d: Duration) -> bool {
        if self.waited || d.is_zero() {
            self.waited = false;
            false
        } else {
            self.delay = Some(Delay::new(d));
            true
        }
    }

    fn buffer(&self, chunks: usize) -> Vec<u8> {
        Vec::with_capacity(chunks * (self.head.len() + 128) + 16)
    }

    fn finish_tracker(&mut self) {
        if let Some(mut t) = self.tracker.take() {
            t.done();
        }
    }
}

fn data(buf: Vec<u8>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
    Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            if let Some(delay) = &mut this.delay {
                ready!(delay.poll(cx));
                this.delay = None;
                this.waited = true;
            }
            match this.state {
                SseState::Start => {
                    if this.needs_delay(this.ttft) {
                        continue;
                    }
                    let mut buf = this.buffer(2);
                    this.push_role(&mut buf);
                    if this.pieces > 0 {
                        this.push_content(&mut buf);
                    }
                    this.state = this.after_content();
                    return data(buf);
                }
                SseState::Content => {
                    if this.needs_delay(this.inter) {
                        continue;
                    }
                    let mut buf = this.buffer(1);
                    this.push_content(&mut buf);
                    this.state = this.after_content();
                    return data(buf);
                }
                SseState::Finish => {
                    let mut buf = this.buffer(3);
                    this.push_finish(&mut buf);
                    this.finish_tracker();
                    this.state = SseState::End;
                    return data(buf);
                }
                SseState::Cut => {
                    if this.needs_delay(this.inter) {
                        continue;
                    }
                    this.finish_tracker();
                    this.state = SseState::Dead;
                    match this.conn.take() {
                        Some(conn) => conn.cut(),
                        None => return Poll::Ready(None),
                    }
                    return Poll::Pending;
                }
                SseState::Malformed => {
                    let mut buf = Vec::with_capacity(this.head.len() + 64);
                    buf.extend_from_slice(this.head.as_bytes());
                    buf.extend_from_slice(b"{\"index\":0,\"delta\":{\"content\":\"Hel\n\n");
                    buf.extend_from_slice(b"data: [DONE]\n\n");
                    this.finish_tracker();
                    this.state = SseState::End;
                    return data(buf);
                }
                SseState::End => return Poll::Ready(None),
                SseState::Dead => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == SseState::End
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_text_has_one_piece_per_chunk() {
        assert_eq!(reply_text("Hello from x", 0), "");
        assert_eq!(reply_text("Hello from x", 1), "Hello from x");
        assert_eq!(reply_text("Hello from x", 3), "Hello from x lorem ipsum");
        let mut joined = Vec::new();
        for i in 0..12 {
            push_piece(&mut joined, "Hello from x", i);
        }
        assert_eq!(String::from_utf8(joined).unwrap(), reply_text("Hello from x", 12));
    }
}
