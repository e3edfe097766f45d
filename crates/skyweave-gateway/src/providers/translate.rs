//! What the pure OpenAI ⇄ native-protocol translations (Bedrock Converse,
//! Vertex AI Gemini) share: the [`TranslateError`] they report and its
//! conversions to [`UpstreamError`], the request fields every protocol
//! treats alike ([`check_field`]), reading text-only contents
//! ([`text_parts`]) and `data:` URLs ([`data_url`]), and making upstream
//! messages fit for logs ([`clean`]).
//!
//! Wording that names the protocol comes from its [`Protocol`].

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use skyweave_core::failure::FailureKind;

use crate::body::RequestBody;
use crate::providers::openai_compat::redact;
use crate::providers::{StreamChunk, UpstreamError, Usage};

/// How a translation names its protocol in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Protocol {
    /// The protocol requests are translated to: "Bedrock Converse".
    pub(crate) name: &'static str,
    /// The service that answers: "Bedrock".
    pub(crate) service: &'static str,
}

/// A request or response that cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct TranslateError {
    pub message: String,
    /// The OpenAI request parameter at fault, for request errors.
    pub param: Option<String>,
}

impl TranslateError {
    pub(crate) fn param(param: impl Into<String>, message: impl Into<String>) -> TranslateError {
        TranslateError { message: message.into(), param: Some(param.into()) }
    }

    pub(crate) fn upstream(message: impl Into<String>) -> TranslateError {
        TranslateError { message: message.into(), param: None }
    }

    /// A request this deployment cannot express: tried elsewhere (another
    /// deployment of the model may speak a protocol that can), and returned
    /// to the caller as this 400, OpenAI-shaped, when no deployment can.
    pub(crate) fn into_invalid_request(self, protocol: Protocol) -> UpstreamError {
        let client_error = json!({
            "message": self.message,
            "type": "invalid_request_error",
            "param": self.param,
            "code": null,
        });
        UpstreamError {
            kind: FailureKind::Unsupported,
            status: Some(400),
            message: format!(
                "the request cannot be translated to {}: {}",
                protocol.name, self.message
            ),
            retry_after: None,
            client_error: Some(client_error),
        }
    }

    /// The service answered something that is not its protocol.
    pub(crate) fn into_protocol_error(self, protocol: Protocol) -> UpstreamError {
        UpstreamError::new(
            FailureKind::Protocol,
            format!(
                "{} answered something that cannot be translated: {}",
                protocol.service, self.message
            ),
        )
    }

    /// The stream ended cleanly at the HTTP level but before the model
    /// finished.
    pub(crate) fn into_stream_cut(self, protocol: Protocol) -> UpstreamError {
        UpstreamError::new(
            FailureKind::StreamCut,
            format!("{}: {}", protocol.service, self.message),
        )
    }
}

pub(crate) type Result<T, E = TranslateError> = std::result::Result<T, E>;

/// The client's request as a tree, for translation. The gateway checked it
/// is a JSON object, so this fails only on nesting deeper than serde_json
/// builds.
pub(crate) fn tree(body: &RequestBody) -> Result<&Map<String, Value>> {
    body.tree().map_err(|error| {
        TranslateError::upstream(format!("the request body cannot be read as a tree: {error}"))
    })
}

/// A field's value, `null` counting as absent.
pub(crate) fn present<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|value| !value.is_null())
}

/// Refuses the top-level field `key`, saying why the protocol cannot take it.
pub(crate) fn refuse(protocol: Protocol, key: &str, why: &str) -> Result<()> {
    Err(TranslateError::param(key, format!("`{key}` is not supported by {}: {why}", protocol.name)))
}

/// Accepts the top-level field `key` only with its neutral value.
pub(crate) fn neutral(protocol: Protocol, key: &str, is_neutral: bool, why: &str) -> Result<()> {
    if is_neutral {
        Ok(())
    } else {
        refuse(protocol, key, why)
    }
}

/// Decides the fate of the top-level fields every protocol treats alike,
/// and refuses any other as unknown: a protocol's own rules go first.
pub(crate) fn check_field(protocol: Protocol, key: &str, value: &Value) -> Result<()> {
    let refuse = |why: &str| refuse(protocol, key, why);
    let neutral = |is_neutral: bool, why: &str| neutral(protocol, key, is_neutral, why);
    match key {
        "messages"
        | "max_tokens"
        | "max_completion_tokens"
        | "temperature"
        | "top_p"
        | "stop"
        | "tools"
        | "tool_choice"
        | "response_format" => Ok(()),
        "model" | "stream" | "stream_options" => Ok(()),
        "user"
        | "safety_identifier"
        | "metadata"
        | "store"
        | "service_tier"
        | "prompt_cache_key"
        | "prompt_cache_retention" => Ok(()),
        "logit_bias" => {
            neutral(value.as_object().is_some_and(Map::is_empty), "it has no logit bias")
        }
        "parallel_tool_calls" => {
            neutral(value == &Value::Bool(true), "it cannot forbid parallel tool calls")
        }
        "prediction" => refuse("it has no predicted outputs"),
        "verbosity" => refuse("it has no verbosity setting"),
        "functions" | "function_call" => refuse("use `tools` and `tool_choice`"),
        _ => Err(TranslateError::param(
            key,
            format!("unknown parameter `{key}`: it cannot be translated to {}", protocol.name),
        )),
    }
}

/// The non-empty texts of a content that may hold only text: a string, or an
/// array of `text` parts (and `refusal` parts, for an assistant).
pub(crate) fn text_parts<'a>(
    content: Option<&'a Value>,
    at: &str,
    allow_refusal: bool,
) -> Result<Vec<&'a str>> {
    let texts = match content {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => vec![text.as_str()],
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| {
                let kind = part.get("type").and_then(Value::as_str);
                let field = match kind {
                    Some("text") => "text",
                    Some("refusal") if allow_refusal => "refusal",
                    _ => {
                        return Err(TranslateError::param(
                            format!("{at}.content[{j}]"),
                            format!(
                                "a content part of type {} cannot be translated here: only text",
                                kind.map_or("(none)".to_string(), |k| format!("`{k}`"))
                            ),
                        ))
                    }
                };
                part.get(field).and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::param(
                        format!("{at}.content[{j}].{field}"),
                        format!("a `{field}` part needs `{field}`"),
                    )
                })
            })
            .collect::<Result<_>>()?,
        Some(_) => {
            return Err(TranslateError::param(
                format!("{at}.content"),
                "`content` must be a string or an array of parts",
            ))
        }
    };
    Ok(texts.into_iter().filter(|text| !text.is_empty()).collect())
}

/// `max_completion_tokens`, else `max_tokens`: a positive 32-bit integer.
pub(crate) fn max_tokens(body: &Map<String, Value>) -> Result<Option<u64>> {
    let max = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|key| present(body, key).map(|value| (key, value)));
    let Some((key, value)) = max else { return Ok(None) };
    let max_tokens = value
        .as_u64()
        .filter(|n| (1..=i32::MAX as u64).contains(n))
        .ok_or_else(|| TranslateError::param(key, format!("`{key}` must be a positive integer")))?;
    Ok(Some(max_tokens))
}

/// The `stop` sequences, none when absent; `empty` refuses an empty one.
pub(crate) fn stop_sequences<'a>(
    body: &'a Map<String, Value>,
    empty: &str,
) -> Result<Vec<&'a Value>> {
    let Some(stop) = present(body, "stop") else { return Ok(Vec::new()) };
    let sequences: Vec<&Value> = match stop {
        Value::String(_) => vec![stop],
        Value::Array(items) => items.iter().collect(),
        _ => return Err(TranslateError::param("stop", "`stop` must be a string or an array")),
    };
    if sequences.iter().any(|s| s.as_str().is_none_or(str::is_empty)) {
        return Err(TranslateError::param("stop", empty));
    }
    Ok(sequences)
}

/// The `tools` array, empty when absent.
pub(crate) fn tools(tools: Option<&Value>) -> Result<&[Value]> {
    match tools {
        None => Ok(&[]),
        Some(Value::Array(tools)) => Ok(tools),
        Some(_) => Err(TranslateError::param("tools", "`tools` must be an array")),
    }
}

/// The `function` of the tool at `at` (`tools[i]`) and its name, refusing
/// tools of other types.
pub(crate) fn function_tool<'a>(
    tool: &'a Value,
    at: &str,
    protocol: Protocol,
) -> Result<(&'a Map<String, Value>, &'a str)> {
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(TranslateError::param(
            format!("{at}.type"),
            format!("only `function` tools can be translated to {}", protocol.name),
        ));
    }
    let function = tool.get("function").and_then(Value::as_object).ok_or_else(|| {
        TranslateError::param(format!("{at}.function"), "a function tool needs `function`")
    })?;
    let name = function.get("name").and_then(Value::as_str).ok_or_else(|| {
        TranslateError::param(format!("{at}.function.name"), "a function needs a `name`")
    })?;
    Ok((function, name))
}

/// A function's non-empty `description`.
pub(crate) fn description(function: &Map<String, Value>) -> Option<&str> {
    function.get("description").and_then(Value::as_str).filter(|d| !d.is_empty())
}

/// A `tool_choice`, checked against the names of the tools it may choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToolChoiceMode<'a> {
    None,
    Auto,
    /// `required`, with tools to choose from.
    Required,
    /// A function named in `tools`.
    Function(&'a str),
}

pub(crate) fn tool_choice<'a>(
    choice: &'a Value,
    tool_names: &[&str],
    protocol: Protocol,
) -> Result<ToolChoiceMode<'a>> {
    match choice {
        Value::String(mode) => match mode.as_str() {
            "none" => Ok(ToolChoiceMode::None),
            "auto" => Ok(ToolChoiceMode::Auto),
            "required" if tool_names.is_empty() => Err(TranslateError::param(
                "tool_choice",
                "`tool_choice` requires `tools` to choose from",
            )),
            "required" => Ok(ToolChoiceMode::Required),
            other => Err(TranslateError::param(
                "tool_choice",
                format!("unknown `tool_choice` `{other}`"),
            )),
        },
        Value::Object(object) if object.get("type").and_then(Value::as_str) == Some("function") => {
            let name = object
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                TranslateError::param(
                    "tool_choice",
                    "a function `tool_choice` needs `function.name`",
                )
            })?;
            if !tool_names.contains(&name) {
                return Err(TranslateError::param(
                    "tool_choice",
                    format!("`tool_choice` names `{name}`, which is not in `tools`"),
                ));
            }
            Ok(ToolChoiceMode::Function(name))
        }
        _ => Err(TranslateError::param(
            "tool_choice",
            format!(
                "`tool_choice` must be \"none\", \"auto\", \"required\" or a function: other \
                 forms cannot be translated to {}",
                protocol.name
            ),
        )),
    }
}

/// A message's role, as far as every translation is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `system` or `developer`.
    System,
    User,
    Assistant,
    Tool,
}

/// Walks `messages` in order: each must be an object with a known role;
/// `visit` gets its role, the message and where it is (`messages[i]`).
pub(crate) fn for_each_message<'a>(
    messages: Option<&'a Value>,
    mut visit: impl FnMut(Role, &'a Map<String, Value>, &str) -> Result<()>,
) -> Result<()> {
    let Some(Value::Array(messages)) = messages else {
        return Err(TranslateError::param("messages", "`messages` must be an array"));
    };
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(message) = message else {
            return Err(TranslateError::param(at, "a message must be an object"));
        };
        let role = message.get("role").and_then(Value::as_str).ok_or_else(|| {
            TranslateError::param(format!("{at}.role"), "a message needs a `role`")
        })?;
        let role = match role {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "function" => {
                return Err(TranslateError::param(
                    format!("{at}.role"),
                    "the deprecated `function` role is not supported: use `tool` messages",
                ))
            }
            other => {
                return Err(TranslateError::param(
                    format!("{at}.role"),
                    format!("unknown role `{other}`"),
                ))
            }
        };
        visit(role, message, &at)?;
    }
    Ok(())
}

/// A conversation's turns, each a role and its parts, in order: consecutive
/// parts of one role are merged into one turn.
#[derive(Debug, Default)]
pub(crate) struct Turns(Vec<(&'static str, Vec<Value>)>);

impl Turns {
    pub(crate) fn push(&mut self, role: &'static str, parts: Vec<Value>) {
        match self.0.last_mut() {
            Some((last, content)) if *last == role => content.extend(parts),
            _ => self.0.push((role, parts)),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for Turns {
    type Item = (&'static str, Vec<Value>);
    type IntoIter = std::vec::IntoIter<(&'static str, Vec<Value>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// `{"text": ...}` parts for the non-empty texts of a text-only content.
pub(crate) fn text_blocks(
    content: Option<&Value>,
    at: &str,
    allow_refusal: bool,
) -> Result<Vec<Value>> {
    Ok(text_parts(content, at, allow_refusal)?
        .into_iter()
        .map(|text| json!({ "text": text }))
        .collect())
}

/// The text of a user message's `text` part (`at` is the part's place).
pub(crate) fn text_of_part<'a>(part: &'a Value, at: &str) -> Result<&'a str> {
    part.get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::param(format!("{at}.text"), "a `text` part needs `text`"))
}

/// An assistant message's parts: its texts (and refusals) as `{"text": ...}`,
/// then each tool call as `tool_call` makes it. Refuses what no protocol
/// carries, and a message with neither.
pub(crate) fn assistant_parts(
    message: &Map<String, Value>,
    at: &str,
    protocol: Protocol,
    mut tool_call: impl FnMut(&Value, &str) -> Result<Value>,
) -> Result<Vec<Value>> {
    for key in ["function_call", "audio"] {
        if present(message, key).is_some() {
            return Err(TranslateError::param(
                format!("{at}.{key}"),
                format!("an assistant message's `{key}` cannot be translated to {}", protocol.name),
            ));
        }
    }
    let mut parts = text_blocks(message.get("content"), at, true)?;
    match present(message, "tool_calls") {
        None => {}
        Some(Value::Array(calls)) => {
            for (j, call) in calls.iter().enumerate() {
                parts.push(tool_call(call, &format!("{at}.tool_calls[{j}]"))?);
            }
        }
        Some(_) => {
            return Err(TranslateError::param(
                format!("{at}.tool_calls"),
                "`tool_calls` must be an array",
            ))
        }
    }
    if parts.is_empty() {
        return Err(TranslateError::param(
            format!("{at}.content"),
            "an assistant message needs non-empty content or tool calls",
        ));
    }
    Ok(parts)
}

/// A tool call's id, function name and `arguments` (as given, if given),
/// refusing calls of other types.
pub(crate) fn tool_call_parts<'a>(
    call: &'a Value,
    at: &str,
    protocol: Protocol,
) -> Result<(&'a str, &'a str, Option<&'a Value>)> {
    if call.get("type").and_then(Value::as_str).is_some_and(|kind| kind != "function") {
        return Err(TranslateError::param(
            format!("{at}.type"),
            format!("only `function` tool calls can be translated to {}", protocol.name),
        ));
    }
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::param(format!("{at}.id"), "a tool call needs an `id`"))?;
    let function = call.get("function");
    let name = function.and_then(|f| f.get("name")).and_then(Value::as_str).ok_or_else(|| {
        TranslateError::param(format!("{at}.function.name"), "a tool call needs `function.name`")
    })?;
    Ok((id, name, function.and_then(|f| f.get("arguments"))))
}

/// A `tool` message's `tool_call_id`.
pub(crate) fn tool_call_id<'a>(message: &'a Map<String, Value>, at: &str) -> Result<&'a str> {
    message.get("tool_call_id").and_then(Value::as_str).ok_or_else(|| {
        TranslateError::param(format!("{at}.tool_call_id"), "a tool message needs `tool_call_id`")
    })
}

/// A `tool` message's output.
pub(crate) enum ToolOutput<'a> {
    /// `content` as a string.
    Text(&'a str),
    /// The non-empty texts of `content` as text parts.
    Parts(Vec<&'a str>),
}

pub(crate) fn tool_output<'a>(message: &'a Map<String, Value>, at: &str) -> Result<ToolOutput<'a>> {
    match message.get("content") {
        Some(Value::String(text)) => Ok(ToolOutput::Text(text)),
        content @ Some(Value::Array(_)) => Ok(ToolOutput::Parts(text_parts(content, at, false)?)),
        _ => Err(TranslateError::param(
            format!("{at}.content"),
            "a tool message needs `content`: a string or text parts",
        )),
    }
}

/// The MIME type (lower-cased, possibly empty) and payload of a
/// `data:<type>;base64,<data>` URL. The payload is not checked: see
/// [`is_base64`].
pub(crate) fn data_url(url: &str) -> Option<(String, &str)> {
    let rest = strip_prefix_ignore_case(url, "data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mut meta = meta.split(';');
    let mime = meta.next().unwrap_or_default().trim().to_ascii_lowercase();
    if !meta.any(|attribute| attribute.trim().eq_ignore_ascii_case("base64")) {
        return None;
    }
    Some((mime, data))
}

/// The text is standard, padded base64.
pub(crate) fn is_base64(data: &str) -> bool {
    base64::engine::general_purpose::STANDARD.decode(data).is_ok()
}

pub(crate) fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// A `chat.completion` with one choice: `text` as the content (`null` when
/// empty and there are tool calls) and the `tool_calls`, if any.
pub(crate) fn completion(
    header: &ChunkHeader<'_>,
    text: String,
    tool_calls: Vec<Value>,
    finish_reason: &str,
    usage: Value,
) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    let content =
        if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text) };
    message.insert("content".into(), content);
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    json!({
        "id": header.id,
        "object": "chat.completion",
        "created": header.created,
        "model": header.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage,
    })
}

/// What every chunk (and the completion) of one answer carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkHeader<'a> {
    pub(crate) model: &'a str,
    pub(crate) id: &'a str,
    pub(crate) created: u64,
}

impl ChunkHeader<'_> {
    /// A `chat.completion.chunk` with one choice.
    pub(crate) fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> StreamChunk {
        let body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        StreamChunk { data: to_bytes(&body), usage: None, usage_only: false }
    }

    /// The usage-only `chat.completion.chunk` (`choices: []`).
    pub(crate) fn usage_chunk(&self, usage: Usage, usage_json: Value) -> StreamChunk {
        let body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_json,
        });
        StreamChunk { data: to_bytes(&body), usage: Some(usage), usage_only: true }
    }
}

/// An error body's message, else its text, else `(empty body)`.
pub(crate) fn message_or_body(message: Option<&str>, body: &[u8]) -> String {
    match message {
        Some(message) => message.to_string(),
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "(empty body)".to_string()
            } else {
                text.to_string()
            }
        }
    }
}

pub(crate) fn to_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("a JSON value serializes"))
}

/// An upstream message made fit for logs and callers: its first line only,
/// at most 300 characters, with API keys masked by [`redact`] and each word
/// in which `secret` finds key material (the part it returns) masked.
pub(crate) fn clean(message: &str, secret: impl Fn(&str) -> Option<&str>) -> String {
    let first_line = message.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("");
    let short: String = first_line.chars().take(300).collect();
    redact(&short)
        .split(' ')
        .map(|word| match secret(word).filter(|core| !core.is_empty()) {
            Some(core) => word.replace(core, "[redacted]"),
            None => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTOCOL: Protocol = Protocol { name: "Some Protocol", service: "Some" };

    #[test]
    fn conversions_name_the_protocol() {
        let invalid = TranslateError::param("n", "no").into_invalid_request(PROTOCOL);
        assert_eq!(invalid.message, "the request cannot be translated to Some Protocol: no");
        let protocol = TranslateError::upstream("odd").into_protocol_error(PROTOCOL);
        assert_eq!(protocol.message, "Some answered something that cannot be translated: odd");
        let cut = TranslateError::upstream("early").into_stream_cut(PROTOCOL);
        assert_eq!(cut.message, "Some: early");
    }

    #[test]
    fn common_fields() {
        assert_eq!(check_field(PROTOCOL, "user", &json!("x")), Ok(()));
        assert_eq!(
            check_field(PROTOCOL, "verbosity", &json!("low")).unwrap_err().message,
            "`verbosity` is not supported by Some Protocol: it has no verbosity setting"
        );
        assert_eq!(
            check_field(PROTOCOL, "frobnicate", &json!(1)).unwrap_err().message,
            "unknown parameter `frobnicate`: it cannot be translated to Some Protocol"
        );
    }

    #[test]
    fn data_urls() {
        assert_eq!(data_url("DATA:Image/PNG;base64,AAAA"), Some(("image/png".into(), "AAAA")));
        assert_eq!(data_url("data:;base64,AAAA"), Some((String::new(), "AAAA")));
        assert_eq!(data_url("data:image/png,AAAA"), None);
        assert_eq!(data_url("https://example.com/a.png"), None);
        assert!(is_base64("AAAA") && !is_base64("not base64!"));
    }
}
