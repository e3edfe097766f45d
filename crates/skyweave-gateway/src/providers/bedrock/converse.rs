//! OpenAI chat completions ⇄ Bedrock Converse, as pure functions: no IO, no
//! HTTP, no signing.
//!
//! - [`to_converse`]: an OpenAI chat request → a Converse / ConverseStream
//!   request body (the model id goes in the URL, not the body).
//! - [`from_converse`]: a Converse response → a `chat.completion` and its usage.
//! - [`StreamTranslator`]: ConverseStream events → `chat.completion.chunk`s.
//! - [`classify_error`] / [`stream_error`]: Bedrock errors → [`UpstreamError`].
//!
//! A [`TranslateError`] from [`to_converse`] is the caller's 400
//! ([`TranslateError::into_invalid_request`]); one from [`from_converse`] or
//! [`StreamTranslator::on_event`] means Bedrock answered something that is not
//! its protocol ([`TranslateError::into_protocol_error`]).
//!
//! # The fate of each OpenAI request field
//!
//! A `null` field is treated as absent. Anything that cannot be carried over
//! is refused with a 400 naming the parameter, never dropped silently.
//!
//! | field | fate |
//! | --- | --- |
//! | `messages` | `system` / `developer` → top-level `system` text blocks (wherever they appear: Converse has no mid-conversation system turn); `user` → user turn (text; images as `data:` URLs only); `assistant` → assistant turn (text, `refusal` parts as text, `tool_calls` → `toolUse`); `tool` → `toolResult` in a user turn. Consecutive turns of one role are merged: Converse wants user and assistant to alternate. A message's `name` is ignored (Converse has no participant names); the `function` role, `function_call`, `audio`, `input_audio` and `file` parts are refused |
//! | `model` | ignored: the deployment's model id is in the URL |
//! | `stream`, `stream_options` | the provider's: streaming picks ConverseStream, and usage always arrives (as `metadata`) |
//! | `max_completion_tokens`, `max_tokens` | `inferenceConfig.maxTokens` (the first wins when both are given) |
//! | `temperature` | `inferenceConfig.temperature`; Converse takes 0 to 1, so above 1 is refused |
//! | `top_p` | `inferenceConfig.topP` |
//! | `stop` (string or array) | `inferenceConfig.stopSequences` |
//! | `tools` (type `function`) | `toolConfig.tools[].toolSpec {name, description, inputSchema.json, strict}`; other tool types are refused |
//! | `tool_choice` | `auto` → `{auto}`, `required` → `{any}`, a named function → `{tool: {name}}`; `none` omits `toolConfig` altogether (Converse cannot forbid tools it is given), which Bedrock refuses when the conversation already holds tool calls, so that combination is refused here |
//! | `response_format` | `text`: nothing; `json_schema` → `outputConfig.textFormat` (Converse structured output, model-dependent); `json_object` is refused: Converse has no schema-free JSON mode |
//! | `n` | 1 only: Converse returns one choice |
//! | `logprobs`, `top_logprobs` | `false` / 0 only: Converse returns no log probabilities |
//! | `frequency_penalty`, `presence_penalty` | 0 only: Converse has no penalties |
//! | `logit_bias` | empty only |
//! | `parallel_tool_calls` | `true` only: Converse cannot forbid parallel calls |
//! | `modalities` | `["text"]` only |
//! | `audio`, `prediction`, `reasoning_effort`, `verbosity`, `web_search_options`, `functions`, `function_call` | refused: no Converse counterpart (reasoning is a per-model `additionalModelRequestFields` setting, not a common parameter) |
//! | `user`, `safety_identifier`, `metadata`, `store`, `seed`, `service_tier`, `prompt_cache_key`, `prompt_cache_retention` | ignored: bookkeeping, abuse-monitoring, best-effort or OpenAI-billing hints that change nothing in the answer's meaning |
//! | anything else | refused as an unknown parameter |
//!
//! Responses: text blocks are joined into `message.content`, `toolUse` blocks
//! become `message.tool_calls`; reasoning and citation blocks have no place in
//! a chat completion and are left out. `stopReason` → `finish_reason`:
//! `end_turn` / `stop_sequence` → `stop`, `max_tokens` /
//! `model_context_window_exceeded` → `length`, `tool_use` → `tool_calls`,
//! `guardrail_intervened` / `content_filtered` → `content_filter`;
//! `malformed_model_output` / `malformed_tool_use` are errors (the answer is
//! unusable, another deployment may do better); reasons added to the API
//! later read as `stop`. Usage: `prompt_tokens` = `inputTokens` plus cache
//! reads and writes (Bedrock counts those apart), `completion_tokens` =
//! `outputTokens`.

// Wired by the bedrock provider (issue 3); until then only the tests use it.

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use skyweave_core::failure::FailureKind;

use super::eventstream;
use crate::providers::openai_compat::redact;
use crate::providers::{StreamChunk, UpstreamError, Usage};

/// A request or response that cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct TranslateError {
    pub message: String,
    /// The OpenAI request parameter at fault, for request errors.
    pub param: Option<String>,
}

impl TranslateError {
    fn param(param: impl Into<String>, message: impl Into<String>) -> TranslateError {
        TranslateError { message: message.into(), param: Some(param.into()) }
    }

    fn upstream(message: impl Into<String>) -> TranslateError {
        TranslateError { message: message.into(), param: None }
    }

    /// The caller's request cannot be sent to Bedrock: a 400 with an
    /// OpenAI-shaped error. Not retryable: every Bedrock deployment would
    /// refuse it alike.
    /// A request this deployment cannot express: tried elsewhere, and returned
    /// to the caller as a 400 when no deployment can.
    pub(crate) fn into_invalid_request(self) -> UpstreamError {
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
                "the request cannot be translated to Bedrock Converse: {}",
                self.message
            ),
            retry_after: None,
            client_error: Some(client_error),
        }
    }

    /// Bedrock answered something that is not its protocol.
    pub(crate) fn into_protocol_error(self) -> UpstreamError {
        UpstreamError::new(
            FailureKind::Protocol,
            format!("Bedrock answered something that cannot be translated: {}", self.message),
        )
    }
}

type Result<T, E = TranslateError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// Translates an OpenAI chat completions request body into a Converse (or,
/// identically, ConverseStream) request body.
pub(crate) fn to_converse(body: &Map<String, Value>) -> Result<Value> {
    for (key, value) in body {
        if !value.is_null() {
            check_field(key, value)?;
        }
    }
    let tools = translate_tools(present(body, "tools"))?;
    let choice = translate_tool_choice(present(body, "tool_choice"), &tools)?;
    let conversation = translate_messages(body.get("messages"))?;

    let mut out = Map::new();
    if !conversation.system.is_empty() {
        out.insert("system".into(), Value::Array(conversation.system));
    }
    let messages = conversation
        .turns
        .into_iter()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect();
    out.insert("messages".into(), Value::Array(messages));
    if let Some(config) = inference_config(body)? {
        out.insert("inferenceConfig".into(), config);
    }
    match choice {
        ToolChoice::None if conversation.has_tool_blocks => {
            return Err(TranslateError::param(
                "tool_choice",
                "`tool_choice: \"none\"` cannot be translated for a conversation that holds tool \
                 calls: Bedrock requires the tool definitions then, and cannot forbid calling them",
            ));
        }
        ToolChoice::None => {}
        _ if tools.is_empty() && conversation.has_tool_blocks => {
            return Err(TranslateError::param(
                "tools",
                "the conversation holds tool calls or results: Bedrock requires their tool \
                 definitions in `tools`",
            ));
        }
        ToolChoice::Unset if tools.is_empty() => {}
        ToolChoice::Unset => {
            out.insert("toolConfig".into(), json!({ "tools": tools }));
        }
        ToolChoice::Set(choice) => {
            out.insert("toolConfig".into(), json!({ "tools": tools, "toolChoice": choice }));
        }
    }
    if let Some(config) = output_config(present(body, "response_format"))? {
        out.insert("outputConfig".into(), config);
    }
    Ok(Value::Object(out))
}

/// A field's value, `null` counting as absent.
fn present<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|value| !value.is_null())
}

/// Decides each top-level field's fate (see the table in the module doc).
fn check_field(key: &str, value: &Value) -> Result<()> {
    let refuse = |why: &str| -> Result<()> {
        Err(TranslateError::param(
            key,
            format!("`{key}` is not supported by Bedrock Converse: {why}"),
        ))
    };
    let neutral = |is_neutral: bool, why: &str| if is_neutral { Ok(()) } else { refuse(why) };
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
        | "seed"
        | "service_tier"
        | "prompt_cache_key"
        | "prompt_cache_retention" => Ok(()),
        "n" => neutral(value.as_u64() == Some(1), "it returns a single choice"),
        "logprobs" => neutral(value == &Value::Bool(false), "it returns no log probabilities"),
        "top_logprobs" => neutral(value.as_u64() == Some(0), "it returns no log probabilities"),
        "frequency_penalty" | "presence_penalty" => {
            neutral(value.as_f64() == Some(0.0), "it has no frequency or presence penalty")
        }
        "logit_bias" => {
            neutral(value.as_object().is_some_and(Map::is_empty), "it has no logit bias")
        }
        "parallel_tool_calls" => {
            neutral(value == &Value::Bool(true), "it cannot forbid parallel tool calls")
        }
        "modalities" => neutral(value == &json!(["text"]), "it answers in text only"),
        "audio" => refuse("it answers in text only"),
        "prediction" => refuse("it has no predicted outputs"),
        "reasoning_effort" => {
            refuse("reasoning is configured per model on Bedrock, not by a common parameter")
        }
        "verbosity" => refuse("it has no verbosity setting"),
        "web_search_options" => refuse("it has no built-in web search"),
        "functions" | "function_call" => refuse("use `tools` and `tool_choice`"),
        _ => Err(TranslateError::param(
            key,
            format!("unknown parameter `{key}`: it cannot be translated to Bedrock Converse"),
        )),
    }
}

fn inference_config(body: &Map<String, Value>) -> Result<Option<Value>> {
    let mut config = Map::new();
    let max = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|key| present(body, key).map(|value| (key, value)));
    if let Some((key, value)) = max {
        let max_tokens =
            value.as_u64().filter(|n| (1..=i32::MAX as u64).contains(n)).ok_or_else(|| {
                TranslateError::param(key, format!("`{key}` must be a positive integer"))
            })?;
        config.insert("maxTokens".into(), max_tokens.into());
    }
    for (key, converse_key, what) in [
        ("temperature", "temperature", "a temperature between 0 and 1 (OpenAI allows up to 2)"),
        ("top_p", "topP", "a `top_p` between 0 and 1"),
    ] {
        if let Some(value) = present(body, key) {
            if !value.as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)) {
                return Err(TranslateError::param(key, format!("Bedrock Converse takes {what}")));
            }
            config.insert(converse_key.into(), value.clone());
        }
    }
    if let Some(stop) = present(body, "stop") {
        let sequences: Vec<&Value> = match stop {
            Value::String(_) => vec![stop],
            Value::Array(items) => items.iter().collect(),
            _ => return Err(TranslateError::param("stop", "`stop` must be a string or an array")),
        };
        if sequences.iter().any(|s| s.as_str().is_none_or(str::is_empty)) {
            return Err(TranslateError::param(
                "stop",
                "stop sequences must be non-empty strings (Bedrock refuses empty ones)",
            ));
        }
        if !sequences.is_empty() {
            config.insert("stopSequences".into(), sequences.into_iter().cloned().collect());
        }
    }
    Ok((!config.is_empty()).then_some(Value::Object(config)))
}

fn translate_tools(tools: Option<&Value>) -> Result<Vec<Value>> {
    let Some(tools) = tools else { return Ok(Vec::new()) };
    let Value::Array(tools) = tools else {
        return Err(TranslateError::param("tools", "`tools` must be an array"));
    };
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let at = format!("tools[{i}]");
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Err(TranslateError::param(
                    format!("{at}.type"),
                    "only `function` tools can be translated to Bedrock Converse",
                ));
            }
            let function = tool.get("function").and_then(Value::as_object).ok_or_else(|| {
                TranslateError::param(format!("{at}.function"), "a function tool needs `function`")
            })?;
            let name = function.get("name").and_then(Value::as_str).ok_or_else(|| {
                TranslateError::param(format!("{at}.function.name"), "a function needs a `name`")
            })?;
            let mut spec = Map::new();
            spec.insert("name".into(), name.into());
            if let Some(description) =
                function.get("description").and_then(Value::as_str).filter(|d| !d.is_empty())
            {
                spec.insert("description".into(), description.into());
            }
            // No `parameters` declares a function that takes none.
            let schema = match function.get("parameters") {
                None | Some(Value::Null) => json!({ "type": "object", "properties": {} }),
                Some(schema @ Value::Object(_)) => schema.clone(),
                Some(_) => {
                    return Err(TranslateError::param(
                        format!("{at}.function.parameters"),
                        "`parameters` must be a JSON schema object",
                    ))
                }
            };
            spec.insert("inputSchema".into(), json!({ "json": schema }));
            if function.get("strict") == Some(&Value::Bool(true)) {
                spec.insert("strict".into(), true.into());
            }
            Ok(json!({ "toolSpec": spec }))
        })
        .collect()
}

enum ToolChoice {
    /// Not given: Bedrock's default (the model decides).
    Unset,
    /// `"none"`: the tools are not sent at all.
    None,
    Set(Value),
}

fn translate_tool_choice(choice: Option<&Value>, tools: &[Value]) -> Result<ToolChoice> {
    let Some(choice) = choice else { return Ok(ToolChoice::Unset) };
    let needs_tools =
        || TranslateError::param("tool_choice", "`tool_choice` requires `tools` to choose from");
    match choice {
        Value::String(mode) => match mode.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" if tools.is_empty() => Ok(ToolChoice::Unset),
            "auto" => Ok(ToolChoice::Set(json!({ "auto": {} }))),
            "required" if tools.is_empty() => Err(needs_tools()),
            "required" => Ok(ToolChoice::Set(json!({ "any": {} }))),
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
            if !tools.iter().any(|tool| tool["toolSpec"]["name"] == name) {
                return Err(TranslateError::param(
                    "tool_choice",
                    format!("`tool_choice` names `{name}`, which is not in `tools`"),
                ));
            }
            Ok(ToolChoice::Set(json!({ "tool": { "name": name } })))
        }
        _ => Err(TranslateError::param(
            "tool_choice",
            "`tool_choice` must be \"none\", \"auto\", \"required\" or a function: other forms \
             cannot be translated to Bedrock Converse",
        )),
    }
}

fn output_config(format: Option<&Value>) -> Result<Option<Value>> {
    let Some(format) = format else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_schema") => {
            let spec = format.get("json_schema").and_then(Value::as_object);
            let schema =
                spec.and_then(|s| s.get("schema")).filter(|s| s.is_object()).ok_or_else(|| {
                    TranslateError::param(
                        "response_format",
                        "a `json_schema` response format needs `json_schema.schema`",
                    )
                })?;
            let mut definition = Map::new();
            // Converse takes the schema as a JSON string.
            definition.insert("schema".into(), schema.to_string().into());
            for key in ["name", "description"] {
                if let Some(value) = spec.and_then(|s| s.get(key)).filter(|v| v.is_string()) {
                    definition.insert(key.into(), value.clone());
                }
            }
            Ok(Some(json!({
                "textFormat": {
                    "type": "json_schema",
                    "structure": { "jsonSchema": definition },
                }
            })))
        }
        Some("json_object") => Err(TranslateError::param(
            "response_format",
            "Bedrock Converse has no schema-free JSON mode: use a `json_schema` response format",
        )),
        _ => Err(TranslateError::param(
            "response_format",
            "`response_format` must be of type `text` or `json_schema`",
        )),
    }
}

#[derive(Default)]
struct Conversation {
    system: Vec<Value>,
    /// Role and content blocks; consecutive same-role messages merged.
    turns: Vec<(&'static str, Vec<Value>)>,
    has_tool_blocks: bool,
}

impl Conversation {
    fn push(&mut self, role: &'static str, blocks: Vec<Value>) {
        match self.turns.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => self.turns.push((role, blocks)),
        }
    }
}

fn translate_messages(messages: Option<&Value>) -> Result<Conversation> {
    let Some(Value::Array(messages)) = messages else {
        return Err(TranslateError::param("messages", "`messages` must be an array"));
    };
    let mut conversation = Conversation::default();
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(message) = message else {
            return Err(TranslateError::param(at, "a message must be an object"));
        };
        let role = message.get("role").and_then(Value::as_str).ok_or_else(|| {
            TranslateError::param(format!("{at}.role"), "a message needs a `role`")
        })?;
        match role {
            "system" | "developer" => {
                for text in text_parts(message.get("content"), &at, false)? {
                    conversation.system.push(json!({ "text": text }));
                }
            }
            "user" => {
                let blocks = user_blocks(message.get("content"), &at)?;
                if blocks.is_empty() {
                    return Err(TranslateError::param(
                        format!("{at}.content"),
                        "a user message needs non-empty content",
                    ));
                }
                conversation.push("user", blocks);
            }
            "assistant" => {
                let blocks = assistant_blocks(message, &at)?;
                if blocks.iter().any(|block| block.get("toolUse").is_some()) {
                    conversation.has_tool_blocks = true;
                }
                conversation.push("assistant", blocks);
            }
            "tool" => {
                conversation.push("user", vec![tool_result(message, &at)?]);
                conversation.has_tool_blocks = true;
            }
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
        }
    }
    Ok(conversation)
}

/// The non-empty texts of a content that may hold only text: a string, or an
/// array of `text` parts (and `refusal` parts, for an assistant).
fn text_parts<'a>(
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

fn user_blocks(content: Option<&Value>, at: &str) -> Result<Vec<Value>> {
    let Some(Value::Array(parts)) = content else {
        return Ok(text_parts(content, at, false)?
            .into_iter()
            .map(|text| json!({ "text": text }))
            .collect());
    };
    let mut blocks = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let part_at = format!("{at}.content[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::param(format!("{part_at}.text"), "a `text` part needs `text`")
                })?;
                if !text.is_empty() {
                    blocks.push(json!({ "text": text }));
                }
            }
            Some("image_url") => blocks.push(image_block(part, &part_at)?),
            Some("input_audio") => {
                return Err(TranslateError::param(
                    part_at,
                    "audio input cannot be translated to Bedrock Converse",
                ))
            }
            Some("file") => {
                return Err(TranslateError::param(
                    part_at,
                    "file parts cannot be translated to Bedrock Converse",
                ))
            }
            other => {
                return Err(TranslateError::param(
                    format!("{part_at}.type"),
                    format!("unknown content part type {other:?}"),
                ))
            }
        }
    }
    Ok(blocks)
}

/// An `image_url` part: Converse takes image bytes, so only a base64 `data:`
/// URL of a PNG, JPEG, GIF or WebP image can be translated. (`detail` has no
/// Converse counterpart and is ignored.)
fn image_block(part: &Value, at: &str) -> Result<Value> {
    let param = format!("{at}.image_url.url");
    let url = part
        .get("image_url")
        .and_then(|image| image.get("url"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            TranslateError::param(&param, "an `image_url` part needs `image_url.url`")
        })?;
    let scheme = url.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("http" | "https")) {
        return Err(TranslateError::param(
            param,
            "Bedrock takes images as bytes, not URLs: send the image inline as a \
             `data:image/...;base64,` URL",
        ));
    }
    let invalid =
        || TranslateError::param(&param, "an image must be a `data:image/...;base64,` URL");
    if scheme.as_deref() != Some("data") {
        return Err(invalid());
    }
    let (meta, data) = url[5..].split_once(',').ok_or_else(invalid)?;
    let mut meta = meta.split(';');
    let mime = meta.next().unwrap_or_default().trim().to_ascii_lowercase();
    if !meta.any(|attribute| attribute.trim().eq_ignore_ascii_case("base64")) {
        return Err(invalid());
    }
    let format = match mime.as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => {
            return Err(TranslateError::param(
                param,
                format!(
                    "image type `{mime}` cannot be sent to Bedrock: PNG, JPEG, GIF or WebP only"
                ),
            ))
        }
    };
    if base64::engine::general_purpose::STANDARD.decode(data).is_err() {
        return Err(TranslateError::param(param, "the image data is not valid base64"));
    }
    // Converse's JSON carries blob bytes as base64: the data passes as is.
    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
}

fn assistant_blocks(message: &Map<String, Value>, at: &str) -> Result<Vec<Value>> {
    for key in ["function_call", "audio"] {
        if present(message, key).is_some() {
            return Err(TranslateError::param(
                format!("{at}.{key}"),
                format!("an assistant message's `{key}` cannot be translated to Bedrock Converse"),
            ));
        }
    }
    let mut blocks: Vec<Value> = text_parts(message.get("content"), at, true)?
        .into_iter()
        .map(|text| json!({ "text": text }))
        .collect();
    match present(message, "tool_calls") {
        None => {}
        Some(Value::Array(calls)) => {
            for (j, call) in calls.iter().enumerate() {
                blocks.push(tool_use_block(call, &format!("{at}.tool_calls[{j}]"))?);
            }
        }
        Some(_) => {
            return Err(TranslateError::param(
                format!("{at}.tool_calls"),
                "`tool_calls` must be an array",
            ))
        }
    }
    if blocks.is_empty() {
        return Err(TranslateError::param(
            format!("{at}.content"),
            "an assistant message needs non-empty content or tool calls",
        ));
    }
    Ok(blocks)
}

fn tool_use_block(call: &Value, at: &str) -> Result<Value> {
    if call.get("type").and_then(Value::as_str).is_some_and(|kind| kind != "function") {
        return Err(TranslateError::param(
            format!("{at}.type"),
            "only `function` tool calls can be translated to Bedrock Converse",
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
    let arguments_at = format!("{at}.function.arguments");
    let input = match function.and_then(|f| f.get("arguments")) {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(text)) if text.trim().is_empty() => json!({}),
        Some(Value::String(text)) => serde_json::from_str(text).map_err(|error| {
            TranslateError::param(
                &arguments_at,
                format!(
                    "the arguments of tool call `{id}` are not JSON ({error}): Bedrock needs \
                     them as a JSON value"
                ),
            )
        })?,
        Some(object @ Value::Object(_)) => object.clone(),
        Some(_) => {
            return Err(TranslateError::param(arguments_at, "`arguments` must be a JSON string"))
        }
    };
    Ok(json!({ "toolUse": { "toolUseId": id, "name": name, "input": input } }))
}

/// A `tool` message: a `toolResult` block. A result that is a JSON object
/// goes as a `json` block, anything else as text.
fn tool_result(message: &Map<String, Value>, at: &str) -> Result<Value> {
    let id = message.get("tool_call_id").and_then(Value::as_str).ok_or_else(|| {
        TranslateError::param(format!("{at}.tool_call_id"), "a tool message needs `tool_call_id`")
    })?;
    let content: Vec<Value> = match message.get("content") {
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(object @ Value::Object(_)) => vec![json!({ "json": object })],
            _ => vec![json!({ "text": text })],
        },
        Some(Value::Array(_)) => text_parts(message.get("content"), at, false)?
            .into_iter()
            .map(|text| json!({ "text": text }))
            .collect(),
        _ => {
            return Err(TranslateError::param(
                format!("{at}.content"),
                "a tool message needs `content`: a string or text parts",
            ))
        }
    };
    Ok(json!({ "toolResult": { "toolUseId": id, "content": content } }))
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// Translates a Converse response body into an OpenAI `chat.completion`.
pub(crate) fn from_converse(
    response: &[u8],
    model: &str,
    id: &str,
    created: u64,
) -> Result<(Value, Usage)> {
    let response: Value = serde_json::from_slice(response).map_err(|error| {
        TranslateError::upstream(format!("the Converse response is not JSON: {error}"))
    })?;
    let content =
        response.pointer("/output/message/content").and_then(Value::as_array).ok_or_else(|| {
            TranslateError::upstream("the Converse response has no `output.message.content`")
        })?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in content {
        if let Some(fragment) = block.get("text").and_then(Value::as_str) {
            text.push_str(fragment);
        } else if let Some(tool_use) = block.get("toolUse") {
            let id = tool_use.get("toolUseId").and_then(Value::as_str);
            let name = tool_use.get("name").and_then(Value::as_str);
            let (Some(id), Some(name)) = (id, name) else {
                return Err(TranslateError::upstream(
                    "a `toolUse` block lacks `toolUseId` or `name`",
                ));
            };
            let input = tool_use.get("input").cloned().unwrap_or_else(|| json!({}));
            tool_calls.push(json!({
                "id": id,
                "type": "function",
                "function": { "name": name, "arguments": input.to_string() },
            }));
        }
        // Reasoning, citations and block kinds added later have no place in
        // a chat completion.
    }
    let stop_reason = response
        .get("stopReason")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::upstream("the Converse response has no `stopReason`"))?;
    let finish_reason = finish_reason(stop_reason)?;
    let (usage, usage_json) = usage_of(
        response
            .get("usage")
            .ok_or_else(|| TranslateError::upstream("the Converse response has no `usage`"))?,
    )?;

    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    let content =
        if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text) };
    message.insert("content".into(), content);
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage_json,
    });
    Ok((body, usage))
}

fn finish_reason(stop_reason: &str) -> Result<&'static str> {
    Ok(match stop_reason {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        "malformed_model_output" | "malformed_tool_use" => {
            return Err(TranslateError::upstream(format!(
                "the model's output was unusable (stopReason `{stop_reason}`)"
            )))
        }
        // The API documents that stop reasons may be added.
        _ => "stop",
    })
}

/// Bedrock's `TokenUsage` as [`Usage`] and as an OpenAI `usage` object.
fn usage_of(usage: &Value) -> Result<(Usage, Value)> {
    let count = |key: &str| usage.get(key).and_then(Value::as_u64);
    let (Some(input), Some(output)) = (count("inputTokens"), count("outputTokens")) else {
        return Err(TranslateError::upstream("usage lacks `inputTokens` or `outputTokens`"));
    };
    let cache_read = count("cacheReadInputTokens").unwrap_or(0);
    let cache_write = count("cacheWriteInputTokens").unwrap_or(0);
    let prompt = input.saturating_add(cache_read).saturating_add(cache_write);
    let usage = Usage { prompt_tokens: prompt, completion_tokens: output };
    let mut object = json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": usage.total(),
    });
    if cache_read > 0 {
        object["prompt_tokens_details"] = json!({ "cached_tokens": cache_read });
    }
    Ok((usage, object))
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// Turns ConverseStream events, in order, into `chat.completion.chunk`s.
///
/// `messageStart` → the first chunk (`delta.role`); text deltas →
/// `delta.content`; a tool use's `contentBlockStart` → a `delta.tool_calls`
/// entry with its id and name, its input deltas → `arguments` fragments under
/// the same `index` (tool calls are numbered from 0 in order of appearance);
/// `messageStop` → a chunk with `finish_reason`; `metadata` → the usage-only
/// chunk. Event types this does not know are skipped: Converse's stream is a
/// Smithy union, to which AWS adds members (its SDKs keep an "unknown"
/// variant for them). Exceptions never reach here: see [`stream_error`].
#[derive(Debug)]
pub(crate) struct StreamTranslator {
    model: String,
    id: String,
    created: u64,
    role_sent: bool,
    /// The `contentBlockIndex` of each tool use, by OpenAI tool call index.
    tool_blocks: Vec<u64>,
    stopped: bool,
}

impl StreamTranslator {
    pub(crate) fn new(model: impl Into<String>, id: impl Into<String>, created: u64) -> Self {
        StreamTranslator {
            model: model.into(),
            id: id.into(),
            created,
            role_sent: false,
            tool_blocks: Vec::new(),
            stopped: false,
        }
    }

    /// True once `messageStop` was seen: a stream that ends before it was cut.
    pub(crate) fn is_finished(&self) -> bool {
        self.stopped
    }

    pub(crate) fn on_event(
        &mut self,
        event_type: &str,
        payload: &[u8],
    ) -> Result<Vec<StreamChunk>, TranslateError> {
        let known = matches!(
            event_type,
            "messageStart"
                | "contentBlockStart"
                | "contentBlockDelta"
                | "contentBlockStop"
                | "messageStop"
                | "metadata"
        );
        if !known {
            return Ok(Vec::new());
        }
        let event: Value = serde_json::from_slice(payload).map_err(|error| {
            TranslateError::upstream(format!("a `{event_type}` event is not JSON: {error}"))
        })?;
        if !event.is_object() {
            return Err(TranslateError::upstream(format!(
                "a `{event_type}` event is not an object"
            )));
        }
        let block_index = || {
            event.get("contentBlockIndex").and_then(Value::as_u64).ok_or_else(|| {
                TranslateError::upstream(format!(
                    "a `{event_type}` event has no `contentBlockIndex`"
                ))
            })
        };
        let chunks = match event_type {
            "messageStart" if self.role_sent => Vec::new(),
            "messageStart" => vec![self.delta_chunk(json!({ "content": "" }), None)],
            "contentBlockStart" => {
                let index = block_index()?;
                match event.pointer("/start/toolUse") {
                    Some(tool_use) => {
                        let id = tool_use.get("toolUseId").and_then(Value::as_str);
                        let name = tool_use.get("name").and_then(Value::as_str);
                        let (Some(id), Some(name)) = (id, name) else {
                            return Err(TranslateError::upstream(
                                "a tool use starts without `toolUseId` or `name`",
                            ));
                        };
                        let tool_index = self.tool_blocks.len();
                        self.tool_blocks.push(index);
                        let call = json!({
                            "index": tool_index,
                            "id": id,
                            "type": "function",
                            "function": { "name": name, "arguments": "" },
                        });
                        vec![self.delta_chunk(json!({ "tool_calls": [call] }), None)]
                    }
                    None => Vec::new(),
                }
            }
            "contentBlockDelta" => {
                let index = block_index()?;
                let delta = event.get("delta").ok_or_else(|| {
                    TranslateError::upstream("a `contentBlockDelta` event has no `delta`")
                })?;
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    if text.is_empty() {
                        Vec::new()
                    } else {
                        vec![self.delta_chunk(json!({ "content": text }), None)]
                    }
                } else if let Some(tool_use) = delta.get("toolUse") {
                    let fragment =
                        tool_use.get("input").and_then(Value::as_str).ok_or_else(|| {
                            TranslateError::upstream("a tool use delta has no `input` string")
                        })?;
                    let tool_index =
                        self.tool_blocks.iter().position(|b| *b == index).ok_or_else(|| {
                            TranslateError::upstream(format!(
                                "a tool use delta for content block {index}, which did not start \
                                 as a tool use"
                            ))
                        })?;
                    if fragment.is_empty() {
                        Vec::new()
                    } else {
                        let call =
                            json!({ "index": tool_index, "function": { "arguments": fragment } });
                        vec![self.delta_chunk(json!({ "tool_calls": [call] }), None)]
                    }
                } else {
                    // Reasoning, citations and delta kinds added later.
                    Vec::new()
                }
            }
            "contentBlockStop" => Vec::new(),
            "messageStop" => {
                let stop_reason =
                    event.get("stopReason").and_then(Value::as_str).ok_or_else(|| {
                        TranslateError::upstream("a `messageStop` event has no `stopReason`")
                    })?;
                let finish_reason = finish_reason(stop_reason)?;
                self.stopped = true;
                vec![self.delta_chunk(json!({}), Some(finish_reason))]
            }
            _ => {
                let usage = event
                    .get("usage")
                    .ok_or_else(|| TranslateError::upstream("a `metadata` event has no `usage`"))?;
                let (usage, usage_json) = usage_of(usage)?;
                let body = json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage_json,
                });
                vec![StreamChunk { data: to_bytes(&body), usage: Some(usage), usage_only: true }]
            }
        };
        Ok(chunks)
    }

    /// A chunk with one choice; the first one also carries the role.
    fn delta_chunk(&mut self, mut delta: Value, finish_reason: Option<&str>) -> StreamChunk {
        if !self.role_sent {
            self.role_sent = true;
            delta["role"] = "assistant".into();
        }
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
}

fn to_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("a JSON value serializes"))
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Classifies a non-2xx Bedrock answer. `error_type` is the
/// `x-amzn-ErrorType` header (any `:...` suffix is stripped); without it the
/// body's `__type` is read. The caller sets `retry_after`.
pub(crate) fn classify_error(status: u16, error_type: Option<&str>, body: &[u8]) -> UpstreamError {
    classify(Some(status), error_type, body)
}

/// The error an event-stream message carries, if it is not an `event`: an
/// `exception` (a modeled error such as `throttlingException`, classified
/// like the HTTP errors) or an `error` (`:error-code`, `:error-message`).
pub(crate) fn stream_error(message: &eventstream::Message) -> Option<UpstreamError> {
    let mut error = match message.message_type() {
        Some("event") => return None,
        Some("exception") => classify(None, message.exception_type(), &message.payload),
        Some("error") => {
            let body = json!({ "message": message.header_str(":error-message") });
            classify(None, message.header_str(":error-code"), body.to_string().as_bytes())
        }
        other => {
            return Some(UpstreamError::new(
                FailureKind::Protocol,
                format!("Bedrock sent an event-stream message of type {other:?}"),
            ))
        }
    };
    error.message = format!("mid-stream: {}", error.message);
    Some(error)
}

/// Bedrock's error names and what they mean for the router.
fn kind_of(error_type: &str) -> Option<FailureKind> {
    const KINDS: &[(&str, FailureKind)] = &[
        ("ThrottlingException", FailureKind::RateLimited),
        ("ServiceQuotaExceededException", FailureKind::RateLimited),
        ("ServiceUnavailableException", FailureKind::Overloaded),
        ("ModelNotReadyException", FailureKind::Overloaded),
        ("InternalServerException", FailureKind::ServerError),
        ("ModelStreamErrorException", FailureKind::ServerError),
        // The model failed while processing (HTTP 424): another deployment
        // may well succeed.
        ("ModelErrorException", FailureKind::ServerError),
        ("ModelTimeoutException", FailureKind::UpstreamTimeout),
        ("ValidationException", FailureKind::InvalidRequest),
        ("AccessDeniedException", FailureKind::DeploymentConfig),
        ("UnrecognizedClientException", FailureKind::DeploymentConfig),
        ("InvalidSignatureException", FailureKind::DeploymentConfig),
        ("IncompleteSignatureException", FailureKind::DeploymentConfig),
        ("MissingAuthenticationTokenException", FailureKind::DeploymentConfig),
        ("ExpiredTokenException", FailureKind::DeploymentConfig),
        ("ResourceNotFoundException", FailureKind::DeploymentConfig),
    ];
    // Event streams name exceptions in lowerCamelCase (`throttlingException`).
    KINDS.iter().find(|(name, _)| name.eq_ignore_ascii_case(error_type)).map(|(_, kind)| *kind)
}

fn classify(status: Option<u16>, error_type: Option<&str>, body: &[u8]) -> UpstreamError {
    let parsed = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    };
    let field = |name: &str| parsed.as_ref()?.get(name)?.as_str();
    let error_type = error_type
        .filter(|t| !t.trim().is_empty())
        .or_else(|| field("__type"))
        .map(normalize_error_type)
        .filter(|t| !t.is_empty());
    let upstream_message = clean(&match field("message").or_else(|| field("Message")) {
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
    });

    let kind = error_type
        .as_deref()
        .and_then(kind_of)
        .or_else(|| status.and_then(FailureKind::from_status))
        .unwrap_or(FailureKind::ServerError);
    let named = match &error_type {
        Some(error_type) => format!("{error_type}: {upstream_message}"),
        None => upstream_message.clone(),
    };
    let answered =
        status.map_or_else(|| "Bedrock".to_string(), |s| format!("Bedrock answered {s}"));
    let message = if kind == FailureKind::DeploymentConfig {
        format!(
            "{answered}: this deployment's AWS credentials, permissions or model id were refused \
             ({named}); check the deployment's configuration"
        )
    } else {
        format!("{answered}: {named}")
    };
    let client_error = matches!(kind, FailureKind::InvalidRequest | FailureKind::ContentFiltered)
        .then(|| {
            json!({
                "message": upstream_message,
                "type": "invalid_request_error",
                "param": null,
                "code": error_type.as_deref().map(snake_case),
            })
        });
    UpstreamError { kind, status, message, retry_after: None, client_error }
}

/// `ValidationException:http://internal.amazon.com/...` or
/// `com.amazon.coral.validate#ValidationException` → `ValidationException`.
fn normalize_error_type(error_type: &str) -> String {
    let error_type = error_type.trim();
    let error_type = error_type.split(':').next().unwrap_or(error_type);
    error_type.rsplit('#').next().unwrap_or(error_type).to_string()
}

/// `ValidationException` → `validation_exception`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// An upstream message made fit for logs and callers: its first line only
/// (AWS appends canonical requests to signature errors), at most 300
/// characters, with anything resembling key material masked.
fn clean(message: &str) -> String {
    let first_line = message.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("");
    let short: String = first_line.chars().take(300).collect();
    redact(&short)
        .split(' ')
        .map(|word| {
            let core =
                word.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || "/+=".contains(c)));
            let access_key_id = (core.starts_with("AKIA") || core.starts_with("ASIA"))
                && core.len() >= 16
                && core.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
            // Secret access keys and session tokens: long base64 runs.
            let secret = core.len() >= 30
                && core.chars().all(|c| c.is_ascii_alphanumeric() || "/+=".contains(c))
                && core.chars().any(|c| c.is_ascii_digit())
                && core.chars().any(|c| c.is_ascii_alphabetic());
            if (access_key_id || secret) && !core.is_empty() {
                word.replace(core, "[redacted]")
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
