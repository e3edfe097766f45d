//! What the `openai` and `azure_openai` providers share: both speak the
//! OpenAI chat completions wire format over HTTP. They differ in URL, auth
//! header and error dialect, which each provider's own file supplies.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::de::IgnoredAny;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use skyweave_core::failure::{parse_retry_after_seconds, FailureKind};

use super::{ChatResponse, ChunkStream, EmbeddingsResponse, StreamChunk, UpstreamError, Usage};
use crate::body::RequestBody;
use crate::sse::{SseEvent, SseParser};
use crate::upstream::{
    BodyError, BodyStream, TransportError, UpstreamRequest, UpstreamResponse, MAX_BODY_BYTES,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    OpenAi,
    Azure,
}

/// The request body sent upstream: the client's body with the model replaced
/// by the deployment's upstream name (Azure: removed, the URL names the
/// deployment) and, when streaming, usage requested so that token accounting
/// is exact (the usage chunk is withheld from clients that did not ask for
/// it). Spliced from the client's text: every other member goes upstream
/// byte for byte, in the client's order.
pub(crate) fn chat_body(
    body: &RequestBody,
    upstream_model: Option<&str>,
    stream: bool,
    ask_for_usage: bool,
) -> Bytes {
    splice(body, upstream_model, stream && ask_for_usage)
}

pub(crate) fn embeddings_body(body: &RequestBody, upstream_model: Option<&str>) -> Bytes {
    splice(body, upstream_model, false)
}

fn splice(body: &RequestBody, model: Option<&str>, stream_usage: bool) -> Bytes {
    let mut out = Vec::with_capacity(body.text().len() + 64);
    out.push(b'{');
    let member = |out: &mut Vec<u8>, key: &str| {
        if out.len() > 1 {
            out.push(b',');
        }
        // Keys as JSON strings (escaped again if the client escaped them).
        serde_json::to_writer(&mut *out, key).expect("writing to a Vec cannot fail");
        out.push(b':');
    };
    for (key, value) in body.members() {
        if key == "model" || (stream_usage && key == "stream_options") {
            continue;
        }
        member(&mut out, key);
        out.extend_from_slice(value.as_bytes());
    }
    if let Some(model) = model {
        member(&mut out, "model");
        serde_json::to_writer(&mut out, model).expect("writing to a Vec cannot fail");
    }
    if stream_usage {
        // The client's own stream options (rare) are kept beside ours.
        let client_options = body
            .raw("stream_options")
            .and_then(|raw| serde_json::from_str::<Map<String, Value>>(raw).ok());
        member(&mut out, "stream_options");
        serde_json::to_writer(&mut out, &StreamOptions(client_options.as_ref()))
            .expect("writing to a Vec cannot fail");
    }
    out.push(b'}');
    Bytes::from(out)
}

/// The client's `stream_options` (if any) with `include_usage: true`.
struct StreamOptions<'a>(Option<&'a Map<String, Value>>);

impl Serialize for StreamOptions<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.0.into_iter().flatten() {
            if key != "include_usage" {
                map.serialize_entry(key, value)?;
            }
        }
        map.serialize_entry("include_usage", &true)?;
        map.end()
    }
}

pub(crate) async fn send_chat(
    request: UpstreamRequest,
    stream: bool,
    dialect: Dialect,
) -> Result<ChatResponse, UpstreamError> {
    let response = send(request, dialect).await?;
    if stream {
        let content_type = response.header("content-type").unwrap_or("");
        if !content_type.starts_with("text/event-stream") {
            return Err(UpstreamError::new(
                FailureKind::Protocol,
                format!("a streaming request was answered with content type `{content_type}`, not text/event-stream"),
            ));
        }
        return Ok(ChatResponse::Stream(chunk_stream(response)));
    }
    let body = read_body(response).await?;
    let usage = peek_json(&body)?;
    Ok(ChatResponse::Complete { body, usage })
}

pub(crate) async fn send_embeddings(
    request: UpstreamRequest,
    dialect: Dialect,
) -> Result<EmbeddingsResponse, UpstreamError> {
    let response = send(request, dialect).await?;
    let body = read_body(response).await?;
    let usage = peek_json(&body)?;
    Ok(EmbeddingsResponse { body, usage })
}

/// Sends and classifies a non-2xx answer as an error.
pub(crate) async fn send(
    request: UpstreamRequest,
    dialect: Dialect,
) -> Result<UpstreamResponse, UpstreamError> {
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = retry_after(&response.headers());
    let body = read_body(response).await.unwrap_or_default();
    Err(classify(status.as_u16(), retry_after, &body, dialect))
}

/// Nothing answered, or the answer broke before its head: fail over.
pub(crate) fn transport_error(error: TransportError) -> UpstreamError {
    UpstreamError::new(FailureKind::Connect, error.to_string())
}

/// The whole answer: too large is the upstream's protocol error, a broken
/// read a cut stream.
pub(crate) async fn read_body(response: UpstreamResponse) -> Result<Bytes, UpstreamError> {
    response.bytes().await.map_err(|error| match error {
        BodyError::TooLarge(_) => {
            UpstreamError::new(FailureKind::Protocol, "the upstream response is larger than 64 MiB")
        }
        BodyError::Cut(error) => UpstreamError::new(FailureKind::StreamCut, error.to_string()),
    })
}

pub(crate) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    // Azure sends the precise `retry-after-ms` beside `retry-after`.
    // Both are bounded by a day, so a confused upstream cannot park its
    // deployment for longer.
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms < 86_400_000)
    {
        return Some(Duration::from_millis(ms));
    }
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after_seconds(value).or_else(|| {
        // The HTTP-date form (RFC 9110 section 10.2.3).
        let when = httpdate::parse_http_date(value.trim()).ok()?;
        let wait = when.duration_since(std::time::SystemTime::now()).unwrap_or_default();
        (wait < Duration::from_secs(86_400)).then_some(wait)
    })
}

/// The parts of a response body or stream event the gateway reads; the rest
/// is only checked to be JSON, without building a tree of it.
#[derive(Deserialize)]
struct Peek {
    usage: Option<UsagePeek>,
    error: Option<Value>,
    choices: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize)]
struct UsagePeek {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl UsagePeek {
    fn usage(&self) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: self.prompt_tokens?,
            completion_tokens: self.completion_tokens.unwrap_or(0),
        })
    }
}

/// Checks that a body is JSON and reads its usage.
fn peek_json(body: &[u8]) -> Result<Option<Usage>, UpstreamError> {
    let peek: Peek = serde_json::from_slice(body).map_err(|error| {
        UpstreamError::new(
            FailureKind::Protocol,
            format!("the upstream answered 200 with a body that is not JSON: {error}"),
        )
    })?;
    Ok(peek.usage.as_ref().and_then(UsagePeek::usage))
}

/// Turns an upstream error answer into an [`UpstreamError`].
pub(crate) fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    dialect: Dialect,
) -> UpstreamError {
    let error_object = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|value| value.get("error").cloned())
        .filter(Value::is_object);
    let field = |name: &str| -> Option<String> {
        let value = error_object.as_ref()?.get(name)?;
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    };
    let code = field("code").unwrap_or_default();
    let upstream_message = redact(&field("message").unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            "(empty body)".to_string()
        } else {
            text.chars().take(300).collect()
        }
    }));

    let mut kind = FailureKind::from_status(status).unwrap_or(FailureKind::ServerError);
    let mut message = format!("upstream answered {status}: {upstream_message}");
    if code == "content_filter" || code == "content_policy_violation" {
        kind = FailureKind::ContentFiltered;
        message = content_filter_message(error_object.as_ref(), &upstream_message, dialect);
    } else if status == 429 && code == "insufficient_quota" {
        // Not a momentary rate limit: the account is out of credit.
        kind = FailureKind::DeploymentConfig;
        message = format!(
            "the upstream account has no quota left (insufficient_quota): {upstream_message}"
        );
    }

    let client_error = match kind {
        FailureKind::InvalidRequest | FailureKind::ContentFiltered => {
            // The caller gets the upstream's own words (our fuller wording
            // for a content filter, which names the categories).
            let client_message = if kind == FailureKind::ContentFiltered {
                message.clone()
            } else {
                upstream_message.clone()
            };
            let mut object = Map::new();
            object.insert("message".into(), Value::String(client_message));
            object.insert(
                "type".into(),
                Value::String(field("type").unwrap_or_else(|| "invalid_request_error".into())),
            );
            object.insert("param".into(), field("param").map_or(Value::Null, Value::String));
            object.insert(
                "code".into(),
                if code.is_empty() { Value::Null } else { Value::String(code) },
            );
            if let Some(inner) = error_object.as_ref().and_then(|e| e.get("innererror")) {
                object.insert("innererror".into(), inner.clone());
            }
            Some(Value::Object(object))
        }
        _ => None,
    };
    UpstreamError { kind, status: Some(status), message, retry_after, client_error }
}

/// Masks what looks like key material in an upstream's message: OpenAI, for
/// one, echoes a refused key with only its middle starred out.
pub(crate) fn redact(message: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            let core = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '*');
            let keyish = core.starts_with("sk-")
                || core.contains("***")
                || (core.len() >= 24
                    && core.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    && core.chars().any(|c| c.is_ascii_digit())
                    && core.chars().any(|c| c.is_ascii_alphabetic()));
            if keyish && !core.is_empty() {
                word.replace(core, "[redacted]")
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn content_filter_message(
    error: Option<&Value>,
    upstream_message: &str,
    dialect: Dialect,
) -> String {
    let results = error
        .and_then(|e| e.get("innererror"))
        .and_then(|inner| inner.get("content_filter_result"))
        .and_then(Value::as_object);
    let mut categories: Vec<String> = results
        .map(|results| {
            results
                .iter()
                .filter(|(_, result)| result.get("filtered").and_then(Value::as_bool) == Some(true))
                .map(|(category, result)| match result.get("severity").and_then(Value::as_str) {
                    Some(severity) => format!("{category} ({severity})"),
                    None => category.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    categories.sort();
    let who = match dialect {
        Dialect::Azure => "Azure OpenAI's content filter",
        Dialect::OpenAi => "the provider's content policy",
    };
    if categories.is_empty() {
        format!("the prompt was refused by {who}: {upstream_message}")
    } else {
        format!("the prompt was refused by {who}: {}", categories.join(", "))
    }
}

struct StreamState {
    body: BodyStream,
    parser: SseParser,
    pending: VecDeque<SseEvent>,
    finished: bool,
}

/// Relays the upstream's SSE events as chunks. Ends cleanly only after
/// `data: [DONE]`; any other end is a [`FailureKind::StreamCut`].
fn chunk_stream(response: UpstreamResponse) -> ChunkStream {
    let state = StreamState {
        body: response.bytes_stream(),
        parser: SseParser::new(MAX_BODY_BYTES),
        pending: VecDeque::new(),
        finished: false,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        if state.finished {
            return None;
        }
        loop {
            if let Some(event) = state.pending.pop_front() {
                if event.data.as_ref() == b"[DONE]" {
                    state.body.finish();
                    return None;
                }
                let item = chunk_from_event(event);
                if item.is_err() {
                    state.finished = true;
                }
                return Some((item, state));
            }
            match state.body.next().await {
                Some(Ok(bytes)) => {
                    let mut events = Vec::new();
                    if let Err(error) = state.parser.push(&bytes, &mut events) {
                        state.finished = true;
                        return Some((
                            Err(UpstreamError::new(FailureKind::Protocol, error.to_string())),
                            state,
                        ));
                    }
                    state.pending.extend(events);
                }
                Some(Err(error)) => {
                    state.finished = true;
                    let error = UpstreamError::new(
                        FailureKind::StreamCut,
                        format!("the upstream stream was cut: {error}"),
                    );
                    return Some((Err(error), state));
                }
                None => {
                    state.finished = true;
                    let error = UpstreamError::new(
                        FailureKind::StreamCut,
                        "the upstream stream ended without `data: [DONE]`",
                    );
                    return Some((Err(error), state));
                }
            }
        }
    }))
}

fn chunk_from_event(event: SseEvent) -> Result<StreamChunk, UpstreamError> {
    let peek: Peek = serde_json::from_slice(&event.data).map_err(|error| {
        UpstreamError::new(FailureKind::Protocol, format!("a streamed event is not JSON: {error}"))
    })?;
    if let Some(error) = peek.error {
        let body = serde_json::json!({ "error": error });
        let status = error.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok());
        let mut upstream_error =
            classify(status.unwrap_or(500), None, body.to_string().as_bytes(), Dialect::OpenAi);
        upstream_error.message =
            format!("the upstream sent an error mid-stream: {}", upstream_error.message);
        return Err(upstream_error);
    }
    let usage = peek.usage.as_ref().and_then(UsagePeek::usage);
    let usage_only = usage.is_some() && peek.choices.as_ref().is_some_and(Vec::is_empty);
    Ok(StreamChunk { data: event.data, usage, usage_only })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> RequestBody {
        RequestBody::parse(Bytes::copy_from_slice(text.as_bytes())).unwrap()
    }

    #[test]
    fn body_rewrites_model_and_asks_for_usage() {
        let body =
            request(r#"{"model":"gpt-4o","messages":[],"tools":[{"type":"function"}],"seed":7}"#);
        let sent: Value =
            serde_json::from_slice(&chat_body(&body, Some("gpt-4o-2024"), true, true)).unwrap();
        let with_options = request(
            r#"{"model":"m","messages":[],"stream_options":{"include_usage":false,"x":1}}"#,
        );
        let merged: Value =
            serde_json::from_slice(&chat_body(&with_options, Some("m"), true, true)).unwrap();
        assert_eq!(merged["stream_options"], serde_json::json!({"x": 1, "include_usage": true}));
        assert_eq!(sent["model"], "gpt-4o-2024");
        assert_eq!(sent["stream_options"]["include_usage"], true);
        assert_eq!(sent["tools"][0]["type"], "function");
        assert_eq!(sent["seed"], 7);
        let azure: Value = serde_json::from_slice(&chat_body(&body, None, false, true)).unwrap();
        assert!(azure.get("model").is_none() && azure.get("stream_options").is_none());
        // Without streaming, the client's stream options pass as they are.
        let plain = chat_body(&with_options, None, false, true);
        assert_eq!(
            std::str::from_utf8(&plain).unwrap(),
            r#"{"messages":[],"stream_options":{"include_usage":false,"x":1}}"#
        );
    }

    #[test]
    fn other_members_go_upstream_byte_for_byte_in_the_clients_order() {
        // Numbers a JSON tree would change (beyond 64 bits, exponents,
        // trailing zeros), escapes and spacing inside values all survive.
        let body = request(
            "{ \"seed\": 18446744073709551617, \"temperature\": 1.50, \"top_p\": 1e0,\n\
             \"model\": \"m\", \"messages\": [ {\"role\":\"user\",\"content\":\"a\\u00e9\\n\"} ],\n\
             \"we\\u0069rd\": true }",
        );
        let sent = chat_body(&body, Some("up/\"q\""), false, true);
        assert_eq!(
            std::str::from_utf8(&sent).unwrap(),
            "{\"seed\":18446744073709551617,\"temperature\":1.50,\"top_p\":1e0,\
             \"messages\":[ {\"role\":\"user\",\"content\":\"a\\u00e9\\n\"} ],\
             \"weird\":true,\"model\":\"up/\\\"q\\\"\"}"
        );
        let embeddings = embeddings_body(&request(r#"{"input":"x","model":"a"}"#), Some("b"));
        assert_eq!(std::str::from_utf8(&embeddings).unwrap(), r#"{"input":"x","model":"b"}"#);
    }

    #[test]
    fn key_material_is_redacted_from_upstream_messages() {
        let body = r#"{"error":{"message":"Incorrect API key provided: sk-VKMIs***************wjh3. You can find your API key at https://platform.openai.com.","code":"invalid_api_key"}}"#;
        let error = classify(401, None, body.as_bytes(), Dialect::OpenAi);
        assert_eq!(error.kind, FailureKind::DeploymentConfig);
        assert!(
            !error.message.contains("VKMI") && !error.message.contains("wjh3"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("Incorrect API key provided: [redacted]."),
            "{}",
            error.message
        );
        assert_eq!(redact("token abcdef0123456789abcdef0123 refused"), "token [redacted] refused");
        assert_eq!(
            redact("model gpt-4o-2024-08-06 not found"),
            "model gpt-4o-2024-08-06 not found"
        );
    }

    #[test]
    fn retry_after_forms() {
        let mut headers = http::HeaderMap::new();
        headers.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
        headers.insert("retry-after-ms", "999999999999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)), "absurd ms ignored");
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(5));
        let mut dated = http::HeaderMap::new();
        dated.insert("retry-after", soon.parse().unwrap());
        let wait = retry_after(&dated).unwrap();
        assert!(wait > Duration::from_secs(3) && wait <= Duration::from_secs(5), "{wait:?}");
    }

    #[test]
    fn error_classification() {
        let check = |status: u16, body: &str, kind: FailureKind| {
            let error = classify(status, None, body.as_bytes(), Dialect::Azure);
            assert_eq!(error.kind, kind, "{status} {body}: {error}");
            error
        };
        check(429, r#"{"error":{"code":"429","message":"slow down"}}"#, FailureKind::RateLimited);
        check(
            429,
            r#"{"error":{"code":"insufficient_quota","message":"pay"}}"#,
            FailureKind::DeploymentConfig,
        );
        check(503, "<html>busy</html>", FailureKind::Overloaded);
        let invalid = check(
            400,
            r#"{"error":{"message":"bad tools","type":"invalid_request_error","param":"tools","code":null}}"#,
            FailureKind::InvalidRequest,
        );
        let client = invalid.client_error.unwrap();
        assert_eq!(client["param"], "tools");
        assert!(client["message"].as_str().unwrap().contains("bad tools"));
        let filtered = check(
            400,
            r#"{"error":{"code":"content_filter","message":"filtered","param":"prompt","status":400,
               "innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{
               "hate":{"filtered":true,"severity":"high"},"sexual":{"filtered":false,"severity":"safe"}}}}}"#,
            FailureKind::ContentFiltered,
        );
        assert_eq!(
            filtered.message,
            "the prompt was refused by Azure OpenAI's content filter: hate (high)"
        );
        assert_eq!(filtered.client_error.unwrap()["code"], "content_filter");
    }
}

/// Property tests: whatever an upstream sends as an error body or a stream
/// event, classification neither panics nor lets it through as data.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn error_bodies_are_classified_without_panicking(
            status in 100u16..600,
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let error = classify(status, None, &body, Dialect::Azure);
            prop_assert!(!error.message.is_empty());
        }

        #[test]
        fn stream_events_are_json_or_errors(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let event = SseEvent { event: None, data: Bytes::from(data.clone()) };
            match chunk_from_event(event) {
                Ok(chunk) => prop_assert!(serde_json::from_slice::<Value>(&chunk.data).is_ok()),
                Err(error) => prop_assert!(!error.message.is_empty()),
            }
        }

        #[test]
        fn json_shaped_error_bodies_keep_the_upstream_message(message in "[a-z ]{1,60}", status in 400u16..600) {
            let body = serde_json::json!({ "error": { "message": message, "code": null } }).to_string();
            let error = classify(status, None, body.as_bytes(), Dialect::OpenAi);
            prop_assert!(error.message.contains(message.trim()) || error.kind == FailureKind::ContentFiltered);
        }
    }
}
