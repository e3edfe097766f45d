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

use serde_json::{json, Map, Value};
use skyweave_core::failure::FailureKind;

use super::eventstream;
pub(crate) use crate::providers::translate::TranslateError;
use crate::providers::translate::{
    self, data_url, is_base64, present, ChunkHeader, Protocol, Result, Role, ToolChoiceMode,
    ToolOutput, Turns,
};
use crate::providers::{StreamChunk, UpstreamError, Usage};

/// How Bedrock's messages are named.
pub(crate) const PROTOCOL: Protocol = Protocol { name: "Bedrock Converse", service: "Bedrock" };

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

/// Decides each top-level field's fate (see the table in the module doc):
/// Bedrock's own rules, then those every protocol shares.
fn check_field(key: &str, value: &Value) -> Result<()> {
    let refuse = |why: &str| translate::refuse(PROTOCOL, key, why);
    let neutral = |is_neutral: bool, why: &str| translate::neutral(PROTOCOL, key, is_neutral, why);
    match key {
        "seed" => Ok(()),
        "n" => neutral(value.as_u64() == Some(1), "it returns a single choice"),
        "logprobs" => neutral(value == &Value::Bool(false), "it returns no log probabilities"),
        "top_logprobs" => neutral(value.as_u64() == Some(0), "it returns no log probabilities"),
        "frequency_penalty" | "presence_penalty" => {
            neutral(value.as_f64() == Some(0.0), "it has no frequency or presence penalty")
        }
        "modalities" => neutral(value == &json!(["text"]), "it answers in text only"),
        "audio" => refuse("it answers in text only"),
        "reasoning_effort" => {
            refuse("reasoning is configured per model on Bedrock, not by a common parameter")
        }
        "web_search_options" => refuse("it has no built-in web search"),
        _ => translate::check_field(PROTOCOL, key, value),
    }
}

fn inference_config(body: &Map<String, Value>) -> Result<Option<Value>> {
    let mut config = Map::new();
    if let Some(max_tokens) = translate::max_tokens(body)? {
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
    let sequences = translate::stop_sequences(
        body,
        "stop sequences must be non-empty strings (Bedrock refuses empty ones)",
    )?;
    if !sequences.is_empty() {
        config.insert("stopSequences".into(), sequences.into_iter().cloned().collect());
    }
    Ok((!config.is_empty()).then_some(Value::Object(config)))
}

fn translate_tools(tools: Option<&Value>) -> Result<Vec<Value>> {
    translate::tools(tools)?
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let at = format!("tools[{i}]");
            let (function, name) = translate::function_tool(tool, &at, PROTOCOL)?;
            let mut spec = Map::new();
            spec.insert("name".into(), name.into());
            if let Some(description) = translate::description(function) {
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
    let names: Vec<&str> =
        tools.iter().filter_map(|tool| tool["toolSpec"]["name"].as_str()).collect();
    Ok(match translate::tool_choice(choice, &names, PROTOCOL)? {
        ToolChoiceMode::None => ToolChoice::None,
        ToolChoiceMode::Auto if tools.is_empty() => ToolChoice::Unset,
        ToolChoiceMode::Auto => ToolChoice::Set(json!({ "auto": {} })),
        ToolChoiceMode::Required => ToolChoice::Set(json!({ "any": {} })),
        ToolChoiceMode::Function(name) => ToolChoice::Set(json!({ "tool": { "name": name } })),
    })
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
    turns: Turns,
    has_tool_blocks: bool,
}

fn translate_messages(messages: Option<&Value>) -> Result<Conversation> {
    let mut conversation = Conversation::default();
    translate::for_each_message(messages, |role, message, at| {
        match role {
            Role::System => {
                let texts = translate::text_blocks(message.get("content"), at, false)?;
                conversation.system.extend(texts);
            }
            Role::User => {
                let blocks = user_blocks(message.get("content"), at)?;
                if blocks.is_empty() {
                    return Err(TranslateError::param(
                        format!("{at}.content"),
                        "a user message needs non-empty content",
                    ));
                }
                conversation.turns.push("user", blocks);
            }
            Role::Assistant => {
                let blocks = translate::assistant_parts(message, at, PROTOCOL, tool_use_block)?;
                if blocks.iter().any(|block| block.get("toolUse").is_some()) {
                    conversation.has_tool_blocks = true;
                }
                conversation.turns.push("assistant", blocks);
            }
            Role::Tool => {
                conversation.turns.push("user", vec![tool_result(message, at)?]);
                conversation.has_tool_blocks = true;
            }
        }
        Ok(())
    })?;
    Ok(conversation)
}

fn user_blocks(content: Option<&Value>, at: &str) -> Result<Vec<Value>> {
    let Some(Value::Array(parts)) = content else {
        return translate::text_blocks(content, at, false);
    };
    let mut blocks = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let part_at = format!("{at}.content[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = translate::text_of_part(part, &part_at)?;
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
    let (mime, data) = data_url(url).ok_or_else(invalid)?;
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
    if !is_base64(data) {
        return Err(TranslateError::param(param, "the image data is not valid base64"));
    }
    // Converse's JSON carries blob bytes as base64: the data passes as is.
    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
}

/// An assistant's tool call: a `toolUse` block.
fn tool_use_block(call: &Value, at: &str) -> Result<Value> {
    let (id, name, arguments) = translate::tool_call_parts(call, at, PROTOCOL)?;
    let arguments_at = format!("{at}.function.arguments");
    let input = match arguments {
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
    let id = translate::tool_call_id(message, at)?;
    let content: Vec<Value> = match translate::tool_output(message, at)? {
        ToolOutput::Text(text) => match serde_json::from_str::<Value>(text) {
            Ok(object @ Value::Object(_)) => vec![json!({ "json": object })],
            _ => vec![json!({ "text": text })],
        },
        ToolOutput::Parts(texts) => texts.into_iter().map(|text| json!({ "text": text })).collect(),
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

    let header = ChunkHeader { model, id, created };
    let body = translate::completion(&header, text, tool_calls, finish_reason, usage_json);
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
                vec![self.header().usage_chunk(usage, usage_json)]
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
        self.header().chunk(delta, finish_reason)
    }

    fn header(&self) -> ChunkHeader<'_> {
        ChunkHeader { model: &self.model, id: &self.id, created: self.created }
    }
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
    let upstream_message =
        clean(&translate::message_or_body(field("message").or_else(|| field("Message")), body));

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
    translate::clean(message, aws_secret)
}

/// The part of a word that looks like an AWS access key id, secret access
/// key or session token, if any.
fn aws_secret(word: &str) -> Option<&str> {
    let core = word.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || "/+=".contains(c)));
    let access_key_id = (core.starts_with("AKIA") || core.starts_with("ASIA"))
        && core.len() >= 16
        && core.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    // Secret access keys and session tokens: long base64 runs.
    let secret = core.len() >= 30
        && core.chars().all(|c| c.is_ascii_alphanumeric() || "/+=".contains(c))
        && core.chars().any(|c| c.is_ascii_digit())
        && core.chars().any(|c| c.is_ascii_alphabetic());
    (access_key_id || secret).then_some(core)
}

#[cfg(test)]
mod tests;
