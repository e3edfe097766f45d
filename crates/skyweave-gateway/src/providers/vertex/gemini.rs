//! OpenAI chat completions ⇄ Vertex AI Gemini (`generateContent` and
//! `streamGenerateContent?alt=sse`), as pure functions: no IO, no HTTP, no
//! auth.
//!
//! - [`to_gemini`]: an OpenAI chat request → a `GenerateContentRequest` body
//!   (the model is in the URL, not the body; the same body serves both
//!   methods).
//! - [`blocked`]: a response whose prompt was blocked → a content-filter
//!   refusal. Call it before [`from_gemini`].
//! - [`from_gemini`]: a `GenerateContentResponse` → a `chat.completion` and
//!   its usage.
//! - [`StreamTranslator`]: the SSE `data:` payloads of `streamGenerateContent`
//!   → `chat.completion.chunk`s. [`stream_error`] tells which payloads are
//!   errors (a mid-stream `error` or a blocked prompt) instead.
//! - [`classify_error`]: a non-2xx Vertex answer → [`UpstreamError`].
//!
//! A [`TranslateError`] from [`to_gemini`] is a request this deployment
//! cannot express ([`TranslateError::into_invalid_request`]); one from
//! [`from_gemini`] or [`StreamTranslator::on_event`] means Vertex answered
//! something that is not its protocol ([`TranslateError::into_protocol_error`]);
//! one from [`StreamTranslator::finish`] means the stream was cut
//! ([`TranslateError::into_stream_cut`]).
//!
//! # The fate of each OpenAI request field
//!
//! A `null` field is treated as absent. Anything that cannot be carried over
//! is refused with a 400 naming the parameter, never dropped silently.
//!
//! | field | fate |
//! | --- | --- |
//! | `messages` | `system` / `developer` → `systemInstruction.parts` (text only, wherever they appear: Gemini has no mid-conversation system turn); `user` → a `user` content: text, `image_url` as a base64 `data:` URL (PNG, JPEG, WebP, HEIC, HEIF) → `inlineData`, or a `gs://` URI → `fileData` (type from the extension); `input_audio` (wav, mp3) → `inlineData`; `file` parts with a `data:` URL `file_data` → `inlineData`. `assistant` → a `model` content: text, `refusal` parts as text, `tool_calls` → `functionCall {name, args}` parts (arguments must be a JSON object), a call's `extra_content.google.thought_signature` → the part's `thoughtSignature` (Gemini 3 refuses function calls in the history without theirs). `tool` → a `functionResponse {name, response: {content}}` part in a `user` content, named after the earlier assistant tool call it answers (unknown ids are refused); the content is the tool's output parsed when it is a JSON object or array, else its text. Consecutive contents of one role are merged (so parallel tool results form one content). A message's `name` is ignored; the `function` role, `function_call`, `audio`, `file_id` files and `http(s)` image URLs (Vertex does not fetch them) are refused, and so is a conversation with no user or assistant message |
//! | `model` | ignored: the deployment's model is in the URL |
//! | `stream`, `stream_options` | the provider's: streaming picks `streamGenerateContent`, and usage always arrives (`usageMetadata`) |
//! | `max_completion_tokens`, `max_tokens` | `generationConfig.maxOutputTokens` (the first wins when both are given) |
//! | `temperature` | `generationConfig.temperature` (0 to 2, as OpenAI) |
//! | `top_p` | `generationConfig.topP` (0 to 1) |
//! | `stop` (string or array) | `generationConfig.stopSequences` (non-empty strings) |
//! | `seed` | `generationConfig.seed` (a 32-bit integer on Vertex: larger seeds are refused) |
//! | `presence_penalty`, `frequency_penalty` | `generationConfig.presencePenalty` / `frequencyPenalty`, from -2 up to but excluding 2 (Vertex's range); 0, OpenAI's default, sends nothing, since some Gemini models refuse penalties altogether |
//! | `response_format` | `text`: nothing; `json_object` → `responseMimeType: application/json`; `json_schema` → that plus `responseSchema`, converted to Gemini's schema subset (below); its `name`, `description` and `strict` have no counterpart (Gemini always constrains output to a response schema) |
//! | `tools` (type `function`) | `tools: [{functionDeclarations: [{name, description, parameters}]}]`; `parameters` converted to Gemini's schema subset (below) and left out when they declare no property (Gemini refuses an `OBJECT` without properties there); names must suit Gemini (a letter or `_` first, then letters, digits, `_ . : -`, at most 64); `strict` is ignored (Gemini has no per-function switch); other tool types are refused |
//! | `tool_choice` | `auto` → `toolConfig.functionCallingConfig.mode: AUTO`, `none` → `NONE`, `required` → `ANY`, a named function → `ANY` with `allowedFunctionNames: [name]`; without tools `auto` and `none` send nothing and the others are refused; `allowed_tools` and custom choices are refused |
//! | `n` | 1 only (nothing is sent: one candidate is the default) |
//! | `logprobs`, `top_logprobs` | `false` / 0 only: Vertex's `logprobsResult` is not translated |
//! | `logit_bias` | empty only |
//! | `parallel_tool_calls` | `true` only: Gemini cannot forbid parallel calls |
//! | `modalities` | `["text"]` only |
//! | `audio`, `prediction`, `reasoning_effort`, `verbosity`, `web_search_options`, `functions`, `function_call` | refused: no Gemini counterpart this translation supports (thinking is configured per model family, `thinkingBudget` or `thinkingLevel`, not by a common parameter; Google Search grounding answers with metadata a chat completion cannot carry) |
//! | `user`, `safety_identifier`, `metadata`, `store`, `service_tier`, `prompt_cache_key`, `prompt_cache_retention` | ignored: bookkeeping, abuse-monitoring or OpenAI-billing hints that change nothing in the answer's meaning |
//! | anything else | refused as an unknown parameter |
//!
//! ## Schemas
//!
//! Gemini's `Schema` is a subset of OpenAPI 3.0, not JSON Schema. Tool
//! `parameters` and `json_schema` response schemas are converted:
//!
//! - kept: `type` (upper-cased; `["T", "null"]` → `T` with `nullable`),
//!   `format`, `title`, `description`, `enum` (strings only; a `null` member
//!   becomes `nullable`), `properties`, `required`, `items` (one schema),
//!   `anyOf` (a `{"type": "null"}` member becomes `nullable`), `minimum`,
//!   `maximum`, `minLength`, `maxLength`, `pattern`, `minItems`, `maxItems`,
//!   `minProperties`, `maxProperties`, `default`, `example`, `nullable`,
//!   `propertyOrdering`; a string `const` becomes a one-value `enum`;
//! - inlined: `$ref`s to `#/$defs/...` or `#/definitions/...` (recursive
//!   ones are refused: Gemini schemas are finite trees);
//! - dropped: `additionalProperties: false` (OpenAI strict schemas carry it
//!   on every object; Gemini cannot say it, and generates declared
//!   properties), and the annotations `$schema`, `$id`, `$comment`, `$defs`,
//!   `definitions`, `examples`, `deprecated`, `readOnly`, `writeOnly`;
//! - refused, naming the keyword and where it is: everything else (`oneOf`,
//!   `allOf`, `not`, other `additionalProperties`, `patternProperties`, tuple
//!   `items` / `prefixItems`, `uniqueItems`, `multipleOf`, exclusive bounds,
//!   non-string enums, several non-null types, ...).
//!
//! # Responses
//!
//! The first candidate is read. Its text parts are joined into
//! `message.content` (thought summaries, `thought: true`, are left out, as
//! are parts a chat completion has no place for: inline output data,
//! executable code, ...). `functionCall` parts become `message.tool_calls`:
//! Gemini gives calls no ids, so they are numbered `call_0`, `call_1`, ... in
//! order of appearance (unique within one answer; [`to_gemini`] resolves a
//! tool result by the latest call with its id), with `arguments` the JSON
//! text of `args` and the part's `thoughtSignature` carried in
//! `extra_content.google.thought_signature`, as Vertex's own
//! OpenAI-compatible endpoint does.
//!
//! `finishReason` → `finish_reason`: `STOP` → `stop` (`tool_calls` when the
//! answer holds function calls), `MAX_TOKENS` → `length`, `SAFETY`,
//! `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`, `IMAGE_SAFETY`,
//! `IMAGE_PROHIBITED_CONTENT` and `MODEL_ARMOR` → `content_filter`;
//! `MALFORMED_FUNCTION_CALL` and `UNEXPECTED_TOOL_CALL` are errors (the
//! answer is unusable, another deployment may do better); `OTHER`,
//! `FINISH_REASON_UNSPECIFIED` and reasons added later read as `stop`.
//!
//! Usage: `prompt_tokens` = `promptTokenCount` (which includes cached
//! content) + `toolUsePromptTokenCount`, `completion_tokens` =
//! `candidatesTokenCount` + `thoughtsTokenCount` (thinking is billed as
//! output, as OpenAI's reasoning tokens are); `cachedContentTokenCount` and
//! `thoughtsTokenCount` also appear as `prompt_tokens_details.cached_tokens`
//! and `completion_tokens_details.reasoning_tokens`. Counts Vertex leaves out
//! (proto3 omits zeros) are 0.
//!
//! A prompt Vertex blocks is answered with HTTP 200, no candidates and
//! `promptFeedback.blockReason`. That is neither a completion nor a
//! protocol error: [`blocked`] turns it into a
//! [`FailureKind::ContentFiltered`] refusal, OpenAI-shaped with code
//! `content_filter`, which goes back to the caller (another deployment of the
//! same model would refuse it alike). [`from_gemini`] and the stream
//! translator treat such a response as an error, so a caller that forgot
//! [`blocked`] fails loudly instead of answering nothing. A candidate that
//! *was* generated and then filtered is not a refusal but a completion with
//! `finish_reason: content_filter`, as OpenAI reports it.
//!
//! # Errors
//!
//! Google errors are `{"error": {"code", "message", "status", "details"}}`,
//! sometimes wrapped in a one-element array. By `status`:
//! `RESOURCE_EXHAUSTED` → rate limited; `UNAVAILABLE` → overloaded;
//! `INTERNAL`, `UNKNOWN`, `ABORTED` → server error; `DEADLINE_EXCEEDED` →
//! upstream timeout (all four tried on another deployment);
//! `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `OUT_OF_RANGE` → the caller's
//! 400, OpenAI-shaped; `PERMISSION_DENIED`, `UNAUTHENTICATED`, `NOT_FOUND`
//! → a configuration problem of the deployment (credentials, project,
//! region or model). Any other status goes by the HTTP status. A
//! `google.rpc.RetryInfo` detail sets `retry_after`. Messages keep their
//! first line, at most 300 characters, with anything resembling key
//! material (API keys, OAuth tokens, JWTs) masked.

// Wired by the vertex provider (issue 3); until then only the tests use it.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Map, Value};
use skyweave_core::failure::FailureKind;

pub(crate) use crate::providers::translate::TranslateError;
use crate::providers::translate::{
    self, is_base64, present, strip_prefix_ignore_case, ChunkHeader, Protocol, Result, Role,
    ToolChoiceMode, ToolOutput, Turns,
};
use crate::providers::{StreamChunk, UpstreamError, Usage};

/// How Vertex's messages are named.
pub(crate) const PROTOCOL: Protocol = Protocol { name: "Vertex AI Gemini", service: "Vertex AI" };

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// Translates an OpenAI chat completions request body into a Gemini
/// `GenerateContentRequest` body (for `generateContent` and
/// `streamGenerateContent` alike).
pub(crate) fn to_gemini(body: &Map<String, Value>) -> Result<Value> {
    for (key, value) in body {
        if !value.is_null() {
            check_field(key, value)?;
        }
    }
    let declarations = translate_tools(present(body, "tools"))?;
    let tool_config = translate_tool_choice(present(body, "tool_choice"), &declarations)?;
    let conversation = translate_messages(body.get("messages"))?;
    if conversation.contents.is_empty() {
        return Err(TranslateError::param(
            "messages",
            "Gemini needs at least one user or assistant message besides the system prompt",
        ));
    }

    let mut out = Map::new();
    if !conversation.system.is_empty() {
        out.insert("systemInstruction".into(), json!({ "parts": conversation.system }));
    }
    let contents = conversation
        .contents
        .into_iter()
        .map(|(role, parts)| json!({ "role": role, "parts": parts }))
        .collect();
    out.insert("contents".into(), Value::Array(contents));
    if let Some(config) = generation_config(body)? {
        out.insert("generationConfig".into(), config);
    }
    if !declarations.is_empty() {
        out.insert("tools".into(), json!([{ "functionDeclarations": declarations }]));
        if let Some(config) = tool_config {
            out.insert("toolConfig".into(), json!({ "functionCallingConfig": config }));
        }
    }
    Ok(Value::Object(out))
}

/// Decides each top-level field's fate (see the table in the module doc):
/// Vertex's own rules, then those every protocol shares.
fn check_field(key: &str, value: &Value) -> Result<()> {
    let refuse = |why: &str| translate::refuse(PROTOCOL, key, why);
    let neutral = |is_neutral: bool, why: &str| translate::neutral(PROTOCOL, key, is_neutral, why);
    match key {
        "seed" | "presence_penalty" | "frequency_penalty" => Ok(()),
        "n" => neutral(value.as_u64() == Some(1), "this gateway translates a single candidate"),
        "logprobs" => {
            neutral(value == &Value::Bool(false), "its log probabilities are not translated")
        }
        "top_logprobs" => {
            neutral(value.as_u64() == Some(0), "its log probabilities are not translated")
        }
        "modalities" => neutral(value == &json!(["text"]), "only text answers are translated"),
        "audio" => refuse("only text answers are translated"),
        "reasoning_effort" => {
            refuse("thinking is configured per Gemini model family, not by a common parameter")
        }
        "web_search_options" => {
            refuse("Google Search grounding answers with metadata a chat completion cannot carry")
        }
        _ => translate::check_field(PROTOCOL, key, value),
    }
}

fn generation_config(body: &Map<String, Value>) -> Result<Option<Value>> {
    let mut config = Map::new();
    if let Some(max_tokens) = translate::max_tokens(body)? {
        config.insert("maxOutputTokens".into(), max_tokens.into());
    }
    for (key, gemini_key, range, what) in [
        ("temperature", "temperature", 0.0..=2.0, "a `temperature` between 0 and 2"),
        ("top_p", "topP", 0.0..=1.0, "a `top_p` between 0 and 1"),
    ] {
        if let Some(value) = present(body, key) {
            if !value.as_f64().is_some_and(|v| range.contains(&v)) {
                return Err(TranslateError::param(key, format!("Vertex AI Gemini takes {what}")));
            }
            config.insert(gemini_key.into(), value.clone());
        }
    }
    let sequences = translate::stop_sequences(body, "stop sequences must be non-empty strings")?;
    if !sequences.is_empty() {
        config.insert("stopSequences".into(), sequences.into_iter().cloned().collect());
    }
    if let Some(seed) = present(body, "seed") {
        let seed = seed.as_i64().and_then(|s| i32::try_from(s).ok()).ok_or_else(|| {
            TranslateError::param(
                "seed",
                "Vertex AI Gemini takes a `seed` that is a 32-bit integer (-2147483648 to \
                 2147483647)",
            )
        })?;
        config.insert("seed".into(), seed.into());
    }
    for (key, gemini_key) in
        [("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")]
    {
        if let Some(value) = present(body, key) {
            let penalty = value.as_f64().filter(|v| (-2.0..2.0).contains(v)).ok_or_else(|| {
                TranslateError::param(
                    key,
                    format!("Vertex AI Gemini takes a `{key}` from -2 up to but excluding 2"),
                )
            })?;
            if penalty != 0.0 {
                config.insert(gemini_key.into(), value.clone());
            }
        }
    }
    if let Some(format) = present(body, "response_format") {
        response_format(format, &mut config)?;
    }
    Ok((!config.is_empty()).then_some(Value::Object(config)))
}

fn response_format(format: &Value, config: &mut Map<String, Value>) -> Result<()> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            config.insert("responseMimeType".into(), "application/json".into());
        }
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|spec| spec.get("schema"))
                .filter(|schema| schema.is_object())
                .ok_or_else(|| {
                    TranslateError::param(
                        "response_format",
                        "a `json_schema` response format needs `json_schema.schema`",
                    )
                })?;
            let schema = gemini_schema(schema).map_err(|why| {
                TranslateError::param(
                    "response_format",
                    format!("the response schema cannot be translated for Gemini: {why}"),
                )
            })?;
            config.insert("responseMimeType".into(), "application/json".into());
            config.insert("responseSchema".into(), schema);
        }
        _ => {
            return Err(TranslateError::param(
                "response_format",
                "`response_format` must be of type `text`, `json_object` or `json_schema`",
            ))
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Schemas: JSON Schema → Gemini's OpenAPI 3.0 subset
// ---------------------------------------------------------------------------

/// How many schema nodes one conversion may produce: `$ref`s shared along
/// many paths are inlined on each, which must not grow without bound.
const MAX_SCHEMA_NODES: usize = 5_000;

/// Converts a JSON Schema into Gemini's `Schema` (see the module doc). The
/// error says what cannot be converted and where (a JSON pointer).
fn gemini_schema(schema: &Value) -> Result<Value, String> {
    let definitions = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    SchemaConverter { definitions, inlining: Vec::new(), nodes: 0 }.convert(schema, "")
}

struct SchemaConverter {
    definitions: Map<String, Value>,
    /// The definitions being inlined, outermost first: one that refers to
    /// itself, directly or not, is recursive.
    inlining: Vec<String>,
    nodes: usize,
}

impl SchemaConverter {
    fn convert(&mut self, schema: &Value, at: &str) -> Result<Value, String> {
        let here = if at.is_empty() { "/" } else { at };
        let Value::Object(schema) = schema else {
            return Err(format!("{here}: a schema must be an object"));
        };
        self.nodes += 1;
        if self.nodes > MAX_SCHEMA_NODES {
            return Err(format!(
                "the schema expands to more than {MAX_SCHEMA_NODES} nodes once its `$ref`s are \
                 inlined"
            ));
        }
        if let Some(reference) = schema.get("$ref") {
            return self.inline(reference, schema, at);
        }
        let mut out = Map::new();
        let mut nullable = false;
        for (key, value) in schema {
            let key_at = format!("{at}/{key}");
            match key.as_str() {
                "type" => {
                    let (kind, is_nullable) =
                        schema_type(value).map_err(|why| format!("{key_at}: {why}"))?;
                    nullable |= is_nullable;
                    out.insert("type".into(), kind.into());
                }
                "format" | "title" | "description" | "pattern" | "default" | "example"
                | "minimum" | "maximum" | "minLength" | "maxLength" | "minItems" | "maxItems"
                | "minProperties" | "maxProperties" | "required" | "propertyOrdering" => {
                    out.insert(key.clone(), value.clone());
                }
                "nullable" => nullable |= value == &Value::Bool(true),
                "enum" => {
                    let Value::Array(members) = value else {
                        return Err(format!("{key_at}: `enum` must be an array"));
                    };
                    let mut strings = Vec::new();
                    for member in members {
                        match member {
                            Value::Null => nullable = true,
                            Value::String(_) => strings.push(member.clone()),
                            _ => {
                                return Err(format!(
                                    "{key_at}: Gemini enums hold strings only, not {member}"
                                ))
                            }
                        }
                    }
                    out.insert("enum".into(), Value::Array(strings));
                }
                "const" => match value {
                    Value::String(_) => {
                        out.insert("enum".into(), json!([value]));
                    }
                    _ => return Err(format!("{key_at}: Gemini can hold a string `const` only")),
                },
                "properties" => {
                    let Value::Object(properties) = value else {
                        return Err(format!("{key_at}: `properties` must be an object"));
                    };
                    let mut converted = Map::new();
                    for (name, property) in properties {
                        let property = self.convert(property, &format!("{key_at}/{name}"))?;
                        converted.insert(name.clone(), property);
                    }
                    out.insert("properties".into(), Value::Object(converted));
                }
                "items" => {
                    if !value.is_object() {
                        return Err(format!(
                            "{key_at}: Gemini takes one schema for all `items`, not a tuple"
                        ));
                    }
                    let items = self.convert(value, &key_at)?;
                    out.insert("items".into(), items);
                }
                "anyOf" => {
                    let Value::Array(options) = value else {
                        return Err(format!("{key_at}: `anyOf` must be an array"));
                    };
                    let mut converted = Vec::new();
                    for (i, option) in options.iter().enumerate() {
                        if option == &json!({ "type": "null" }) {
                            nullable = true;
                        } else {
                            converted.push(self.convert(option, &format!("{key_at}/{i}"))?);
                        }
                    }
                    if converted.is_empty() {
                        return Err(format!("{key_at}: `anyOf` allows only `null`"));
                    }
                    out.insert("anyOf".into(), Value::Array(converted));
                }
                "additionalProperties" if value == &Value::Bool(false) => {}
                "$schema" | "$id" | "$comment" | "$defs" | "definitions" | "examples"
                | "deprecated" | "readOnly" | "writeOnly" => {}
                other => {
                    return Err(format!(
                        "{key_at}: the JSON Schema keyword `{other}` has no counterpart in \
                         Gemini's schema subset"
                    ))
                }
            }
        }
        if nullable {
            out.insert("nullable".into(), true.into());
        }
        Ok(Value::Object(out))
    }

    /// Replaces a local `$ref` by the schema it points to; the `$ref`'s
    /// siblings (a `description`, say) override the target's members.
    fn inline(
        &mut self,
        reference: &Value,
        schema: &Map<String, Value>,
        at: &str,
    ) -> Result<Value, String> {
        let here = if at.is_empty() { "/" } else { at };
        let name = reference
            .as_str()
            .and_then(|r| r.strip_prefix("#/$defs/").or_else(|| r.strip_prefix("#/definitions/")))
            .ok_or_else(|| {
                format!("{here}/$ref: only `#/$defs/...` and `#/definitions/...` can be inlined")
            })?;
        if self.inlining.iter().any(|outer| outer == name) {
            return Err(format!(
                "{here}/$ref: `{name}` refers to itself: Gemini schemas cannot be recursive"
            ));
        }
        let Some(Value::Object(target)) = self.definitions.get(name) else {
            return Err(format!("{here}/$ref: no definition named `{name}`"));
        };
        let mut merged = target.clone();
        for (key, value) in schema {
            if key != "$ref" {
                merged.insert(key.clone(), value.clone());
            }
        }
        self.inlining.push(name.to_string());
        // The merged schema is counted again: not a node of its own.
        self.nodes -= 1;
        let converted = self.convert(&Value::Object(merged), at);
        self.inlining.pop();
        converted
    }
}

/// A JSON Schema `type` as Gemini's upper-case type and whether `null` is
/// allowed.
fn schema_type(value: &Value) -> Result<(&'static str, bool), String> {
    let one = |name: &str| -> Result<&'static str, String> {
        Ok(match name {
            "string" => "STRING",
            "number" => "NUMBER",
            "integer" => "INTEGER",
            "boolean" => "BOOLEAN",
            "array" => "ARRAY",
            "object" => "OBJECT",
            other => return Err(format!("unknown type `{other}`")),
        })
    };
    match value {
        Value::String(name) if name == "null" => {
            Err("a schema that allows only `null` cannot be expressed in Gemini".into())
        }
        Value::String(name) => Ok((one(name)?, false)),
        Value::Array(names) => {
            let nullable = names.iter().any(|n| n == "null");
            let others: Vec<&Value> = names.iter().filter(|n| *n != "null").collect();
            match others.as_slice() {
                [] if nullable => {
                    Err("a schema that allows only `null` cannot be expressed in Gemini".into())
                }
                [] => Err("`type` is an empty array".into()),
                [Value::String(name)] => Ok((one(name)?, nullable)),
                _ => Err("Gemini takes one type (and `null`), not several: use `anyOf`".into()),
            }
        }
        _ => Err("`type` must be a string or an array of strings".into()),
    }
}

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

fn translate_tools(tools: Option<&Value>) -> Result<Vec<Value>> {
    translate::tools(tools)?
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let at = format!("tools[{i}]");
            let (function, name) = translate::function_tool(tool, &at, PROTOCOL)?;
            if !is_gemini_function_name(name) {
                return Err(TranslateError::param(
                    format!("{at}.function.name"),
                    format!(
                        "Gemini function names start with a letter or `_` and hold at most 64 \
                         letters, digits, `_`, `.`, `:` or `-`: `{name}` does not"
                    ),
                ));
            }
            let mut declaration = Map::new();
            declaration.insert("name".into(), name.into());
            if let Some(description) = translate::description(function) {
                declaration.insert("description".into(), description.into());
            }
            match function.get("parameters") {
                None | Some(Value::Null) => {}
                Some(schema @ Value::Object(_)) => {
                    let parameters = gemini_schema(schema).map_err(|why| {
                        TranslateError::param(
                            format!("{at}.function.parameters"),
                            format!("the parameters cannot be translated for Gemini: {why}"),
                        )
                    })?;
                    // No properties: a function that takes none, which Gemini
                    // declares without `parameters`.
                    let has_properties = parameters
                        .get("properties")
                        .and_then(Value::as_object)
                        .is_some_and(|p| !p.is_empty());
                    if has_properties || parameters.get("anyOf").is_some() {
                        declaration.insert("parameters".into(), parameters);
                    }
                }
                Some(_) => {
                    return Err(TranslateError::param(
                        format!("{at}.function.parameters"),
                        "`parameters` must be a JSON schema object",
                    ))
                }
            }
            Ok(Value::Object(declaration))
        })
        .collect()
}

/// Gemini's rule for function names.
fn is_gemini_function_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// `toolConfig.functionCallingConfig`, if the request sets one.
fn translate_tool_choice(choice: Option<&Value>, declarations: &[Value]) -> Result<Option<Value>> {
    let Some(choice) = choice else { return Ok(None) };
    let names: Vec<&str> =
        declarations.iter().filter_map(|declaration| declaration["name"].as_str()).collect();
    Ok(Some(match translate::tool_choice(choice, &names, PROTOCOL)? {
        ToolChoiceMode::None => json!({ "mode": "NONE" }),
        ToolChoiceMode::Auto => json!({ "mode": "AUTO" }),
        ToolChoiceMode::Required => json!({ "mode": "ANY" }),
        ToolChoiceMode::Function(name) => {
            json!({ "mode": "ANY", "allowedFunctionNames": [name] })
        }
    }))
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Conversation {
    /// `systemInstruction` parts.
    system: Vec<Value>,
    /// Role and parts; consecutive same-role contents merged.
    contents: Turns,
    /// The function name of each tool call id seen so far (the latest call
    /// wins: ids Gemini answers get are only unique within one answer).
    calls: HashMap<String, String>,
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
                let parts = user_parts(message.get("content"), at)?;
                if parts.is_empty() {
                    return Err(TranslateError::param(
                        format!("{at}.content"),
                        "a user message needs non-empty content",
                    ));
                }
                conversation.contents.push("user", parts);
            }
            Role::Assistant => {
                let calls = &mut conversation.calls;
                let parts = translate::assistant_parts(message, at, PROTOCOL, |call, at| {
                    let (id, name, part) = function_call(call, at)?;
                    calls.insert(id, name);
                    Ok(part)
                })?;
                conversation.contents.push("model", parts);
            }
            Role::Tool => {
                let part = function_response(message, at, &conversation.calls)?;
                conversation.contents.push("user", vec![part]);
            }
        }
        Ok(())
    })?;
    Ok(conversation)
}

fn user_parts(content: Option<&Value>, at: &str) -> Result<Vec<Value>> {
    let Some(Value::Array(parts)) = content else {
        return translate::text_blocks(content, at, false);
    };
    let mut out = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let part_at = format!("{at}.content[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = translate::text_of_part(part, &part_at)?;
                if !text.is_empty() {
                    out.push(json!({ "text": text }));
                }
            }
            Some("image_url") => out.push(image_part(part, &part_at)?),
            Some("input_audio") => out.push(audio_part(part, &part_at)?),
            Some("file") => out.push(file_part(part, &part_at)?),
            other => {
                return Err(TranslateError::param(
                    format!("{part_at}.type"),
                    format!("unknown content part type {other:?}"),
                ))
            }
        }
    }
    Ok(out)
}

/// The MIME type and base64 payload of a `data:<type>;base64,<data>` URL,
/// checked to be base64.
fn data_url(url: &str) -> Option<(String, &str)> {
    translate::data_url(url).filter(|(mime, data)| !mime.is_empty() && is_base64(data))
}

/// The image types Gemini reads, by MIME type or file extension.
fn image_type(name: &str) -> Option<&'static str> {
    Some(match name {
        "image/png" | "png" => "image/png",
        "image/jpeg" | "image/jpg" | "jpeg" | "jpg" => "image/jpeg",
        "image/webp" | "webp" => "image/webp",
        "image/heic" | "heic" => "image/heic",
        "image/heif" | "heif" => "image/heif",
        _ => return None,
    })
}

/// An `image_url` part: a base64 `data:` URL → `inlineData`, a Cloud Storage
/// `gs://` URI → `fileData`. (`detail` has no Gemini counterpart and is
/// ignored.)
fn image_part(part: &Value, at: &str) -> Result<Value> {
    let param = format!("{at}.image_url.url");
    let url = part
        .get("image_url")
        .and_then(|image| image.get("url"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            TranslateError::param(&param, "an `image_url` part needs `image_url.url`")
        })?;
    let scheme = url.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase());
    let types = "PNG, JPEG, WebP, HEIC or HEIF only";
    match scheme.as_deref() {
        Some("http" | "https") => Err(TranslateError::param(
            param,
            "Vertex AI does not fetch images from web URLs: send the image inline as a \
             `data:image/...;base64,` URL, or as a `gs://` Cloud Storage URI",
        )),
        Some("gs") => {
            let object = strip_prefix_ignore_case(url, "gs://")
                .and_then(|path| path.split_once('/'))
                .map_or("", |(_, object)| object);
            let extension = object
                .rsplit_once('.')
                .map(|(_, extension)| extension.to_ascii_lowercase())
                .unwrap_or_default();
            let mime = image_type(&extension).ok_or_else(|| {
                TranslateError::param(
                    &param,
                    format!(
                        "the image type of `{url}` cannot be told from its name: Gemini takes \
                         {types}, named .png, .jpg, .jpeg, .webp, .heic or .heif"
                    ),
                )
            })?;
            Ok(json!({ "fileData": { "mimeType": mime, "fileUri": url } }))
        }
        Some("data") => {
            let (mime, data) = data_url(url).ok_or_else(|| {
                TranslateError::param(
                    &param,
                    "an image `data:` URL must be `data:image/...;base64,` with valid base64",
                )
            })?;
            let mime = image_type(&mime).ok_or_else(|| {
                TranslateError::param(
                    &param,
                    format!("image type `{mime}` cannot be sent to Gemini: {types}"),
                )
            })?;
            Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }))
        }
        _ => Err(TranslateError::param(
            param,
            "an image must be a `data:image/...;base64,` URL or a `gs://` URI",
        )),
    }
}

/// An `input_audio` part → `inlineData`.
fn audio_part(part: &Value, at: &str) -> Result<Value> {
    let audio = part.get("input_audio");
    let data = audio.and_then(|a| a.get("data")).and_then(Value::as_str);
    let format = audio.and_then(|a| a.get("format")).and_then(Value::as_str);
    let (Some(data), Some(format)) = (data, format) else {
        return Err(TranslateError::param(
            format!("{at}.input_audio"),
            "an `input_audio` part needs `input_audio.data` and `input_audio.format`",
        ));
    };
    let mime = match format {
        "wav" => "audio/wav",
        "mp3" => "audio/mp3",
        other => {
            return Err(TranslateError::param(
                format!("{at}.input_audio.format"),
                format!("audio format `{other}` cannot be translated: wav or mp3 only"),
            ))
        }
    };
    if !is_base64(data) {
        return Err(TranslateError::param(
            format!("{at}.input_audio.data"),
            "the audio data is not valid base64",
        ));
    }
    Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }))
}

/// A `file` part: only inline `file_data` (a base64 `data:` URL) can be
/// sent; Vertex cannot read files uploaded to OpenAI.
fn file_part(part: &Value, at: &str) -> Result<Value> {
    let file = part.get("file");
    if let Some(data) = file.and_then(|f| f.get("file_data")).and_then(Value::as_str) {
        let (mime, data) = data_url(data).ok_or_else(|| {
            TranslateError::param(
                format!("{at}.file.file_data"),
                "`file_data` must be a `data:<type>;base64,` URL for Gemini (it needs the type)",
            )
        })?;
        return Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }));
    }
    Err(TranslateError::param(
        at,
        "file parts can be translated to Vertex AI Gemini only with inline `file_data`: files \
         uploaded to OpenAI (`file_id`) cannot be read",
    ))
}

/// A tool call → its id, its function name and a `functionCall` part.
fn function_call(call: &Value, at: &str) -> Result<(String, String, Value)> {
    let (id, name, arguments) = translate::tool_call_parts(call, at, PROTOCOL)?;
    let arguments_at = format!("{at}.function.arguments");
    let not_an_object = || {
        TranslateError::param(
            &arguments_at,
            format!(
                "the arguments of tool call `{id}` must be a JSON object: Gemini takes them as \
                 one"
            ),
        )
    };
    let args = match arguments {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(text)) if text.trim().is_empty() => json!({}),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(object @ Value::Object(_)) => object,
            Ok(_) => return Err(not_an_object()),
            Err(error) => {
                return Err(TranslateError::param(
                    &arguments_at,
                    format!(
                        "the arguments of tool call `{id}` are not JSON ({error}): Gemini needs \
                         them as a JSON object"
                    ),
                ))
            }
        },
        Some(object @ Value::Object(_)) => object.clone(),
        Some(_) => return Err(not_an_object()),
    };
    let mut part = json!({ "functionCall": { "name": name, "args": args } });
    if let Some(signature) =
        call.pointer("/extra_content/google/thought_signature").and_then(Value::as_str)
    {
        part["thoughtSignature"] = signature.into();
    }
    Ok((id.to_string(), name.to_string(), part))
}

/// A `tool` message → a `functionResponse` part, named after the call it
/// answers.
fn function_response(
    message: &Map<String, Value>,
    at: &str,
    calls: &HashMap<String, String>,
) -> Result<Value> {
    let id = translate::tool_call_id(message, at)?;
    let name = calls.get(id).ok_or_else(|| {
        TranslateError::param(
            format!("{at}.tool_call_id"),
            format!(
                "`{id}` answers no earlier assistant tool call: Gemini needs the function's name \
                 for its result"
            ),
        )
    })?;
    let text = match translate::tool_output(message, at)? {
        ToolOutput::Text(text) => text.to_string(),
        ToolOutput::Parts(texts) => texts.concat(),
    };
    let content = match serde_json::from_str::<Value>(&text) {
        Ok(value @ (Value::Object(_) | Value::Array(_))) => value,
        _ => Value::String(text),
    };
    Ok(json!({ "functionResponse": { "name": name, "response": { "content": content } } }))
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// A response (or stream payload) whose prompt Vertex blocked: no candidates
/// and a `promptFeedback.blockReason`. The refusal goes back to the caller
/// as an OpenAI-shaped 400 with code `content_filter`, and is not retried
/// elsewhere: the same model would refuse it alike. `None` for anything
/// else, including responses that are not JSON (for [`from_gemini`] to
/// report).
pub(crate) fn blocked(response: &[u8]) -> Option<UpstreamError> {
    let response: Value = serde_json::from_slice(response).ok()?;
    let has_candidates =
        response.get("candidates").and_then(Value::as_array).is_some_and(|c| !c.is_empty());
    let feedback = response.get("promptFeedback")?;
    let reason = feedback.get("blockReason").and_then(Value::as_str)?;
    if has_candidates {
        return None;
    }
    let mut categories: Vec<String> = feedback
        .get("safetyRatings")
        .and_then(Value::as_array)
        .map(|ratings| {
            ratings
                .iter()
                .filter(|rating| rating.get("blocked") == Some(&Value::Bool(true)))
                .filter_map(|rating| {
                    let category = rating.get("category")?.as_str()?;
                    Some(match rating.get("probability").and_then(Value::as_str) {
                        Some(probability) => format!("{category} ({probability})"),
                        None => category.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    categories.sort();
    let mut message =
        format!("the prompt was refused by Vertex AI's safety filters (blockReason {reason})");
    if !categories.is_empty() {
        message.push_str(&format!(": {}", categories.join(", ")));
    }
    if let Some(detail) = feedback.get("blockReasonMessage").and_then(Value::as_str) {
        message.push_str(&format!(". {}", clean(detail)));
    }
    let client_error = json!({
        "message": message,
        "type": "invalid_request_error",
        "param": "messages",
        "code": "content_filter",
    });
    Some(UpstreamError {
        kind: FailureKind::ContentFiltered,
        // Vertex answered 200; the gateway answers the caller 400.
        status: None,
        message,
        retry_after: None,
        client_error: Some(client_error),
    })
}

/// Translates a `GenerateContentResponse` body into an OpenAI
/// `chat.completion`. Call [`blocked`] first: a blocked prompt is an error
/// here.
pub(crate) fn from_gemini(
    response: &[u8],
    model: &str,
    id: &str,
    created: u64,
) -> Result<(Value, Usage)> {
    let response: Value = serde_json::from_slice(response).map_err(|error| {
        TranslateError::upstream(format!("the Gemini response is not JSON: {error}"))
    })?;
    if !response.is_object() {
        return Err(TranslateError::upstream("the Gemini response is not an object"));
    }
    let candidate = first_candidate(&response)?.ok_or_else(|| no_candidates(&response))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for part in parts_of(candidate)? {
        match part_kind(part)? {
            PartKind::Text(fragment) => text.push_str(fragment),
            PartKind::Call { name, args, signature } => {
                tool_calls.push(tool_call(tool_calls.len(), name, args, signature));
            }
            PartKind::Skipped => {}
        }
    }
    let reason = candidate.get("finishReason").and_then(Value::as_str).ok_or_else(|| {
        TranslateError::upstream("the Gemini response's candidate has no `finishReason`")
    })?;
    let finish_reason = finish_reason(reason, !tool_calls.is_empty())?;
    let (usage, usage_json) =
        usage_of(response.get("usageMetadata").ok_or_else(|| {
            TranslateError::upstream("the Gemini response has no `usageMetadata`")
        })?)?;

    let header = ChunkHeader { model, id, created };
    let body = translate::completion(&header, text, tool_calls, finish_reason, usage_json);
    Ok((body, usage))
}

/// The first candidate, if the response has any.
fn first_candidate(response: &Value) -> Result<Option<&Value>> {
    match response.get("candidates") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(candidates)) => Ok(candidates.first()),
        Some(_) => Err(TranslateError::upstream("`candidates` is not an array")),
    }
}

fn no_candidates(response: &Value) -> TranslateError {
    match response.pointer("/promptFeedback/blockReason").and_then(Value::as_str) {
        Some(reason) => TranslateError::upstream(format!(
            "the prompt was blocked (blockReason {reason}), which `blocked` reports"
        )),
        None => TranslateError::upstream("the Gemini response has no candidates"),
    }
}

/// A candidate's parts: none when it has no `content` (a filtered answer).
fn parts_of(candidate: &Value) -> Result<&[Value]> {
    match candidate.pointer("/content/parts") {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(parts)) => Ok(parts),
        Some(_) => Err(TranslateError::upstream("a candidate's `content.parts` is not an array")),
    }
}

enum PartKind<'a> {
    Text(&'a str),
    Call {
        name: &'a str,
        args: Value,
        signature: Option<&'a str>,
    },
    /// Thoughts, and parts a chat completion has no place for.
    Skipped,
}

fn part_kind(part: &Value) -> Result<PartKind<'_>> {
    if part.get("thought") == Some(&Value::Bool(true)) {
        return Ok(PartKind::Skipped);
    }
    if let Some(text) = part.get("text").and_then(Value::as_str) {
        return Ok(PartKind::Text(text));
    }
    if let Some(call) = part.get("functionCall") {
        let name = call
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::upstream("a `functionCall` part has no `name`"))?;
        let args = match call.get("args") {
            None | Some(Value::Null) => json!({}),
            Some(args @ Value::Object(_)) => args.clone(),
            Some(_) => {
                return Err(TranslateError::upstream(format!(
                    "the `args` of a `{name}` function call are not an object"
                )))
            }
        };
        let signature = part.get("thoughtSignature").and_then(Value::as_str);
        return Ok(PartKind::Call { name, args, signature });
    }
    Ok(PartKind::Skipped)
}

/// An OpenAI tool call for the `index`-th function call of an answer.
fn tool_call(index: usize, name: &str, args: Value, signature: Option<&str>) -> Value {
    let mut call = json!({
        "id": format!("call_{index}"),
        "type": "function",
        "function": { "name": name, "arguments": args.to_string() },
    });
    if let Some(signature) = signature {
        call["extra_content"] = json!({ "google": { "thought_signature": signature } });
    }
    call
}

fn finish_reason(reason: &str, has_tool_calls: bool) -> Result<&'static str> {
    Ok(match reason {
        "STOP" if has_tool_calls => "tool_calls",
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "MODEL_ARMOR" => "content_filter",
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" => {
            return Err(TranslateError::upstream(format!(
                "the model's output was unusable (finishReason {reason})"
            )))
        }
        // STOP, OTHER, unspecified, and reasons added to the API later.
        _ => "stop",
    })
}

/// Gemini's `usageMetadata` as [`Usage`] and as an OpenAI `usage` object.
fn usage_of(metadata: &Value) -> Result<(Usage, Value)> {
    if !metadata.is_object() {
        return Err(TranslateError::upstream("`usageMetadata` is not an object"));
    }
    let count = |key: &str| -> Result<u64> {
        match metadata.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(value) => value.as_u64().ok_or_else(|| {
                TranslateError::upstream(format!("`usageMetadata.{key}` is not a count"))
            }),
        }
    };
    let prompt = count("promptTokenCount")?.saturating_add(count("toolUsePromptTokenCount")?);
    let thoughts = count("thoughtsTokenCount")?;
    let completion = count("candidatesTokenCount")?.saturating_add(thoughts);
    let cached = count("cachedContentTokenCount")?;
    let usage = Usage { prompt_tokens: prompt, completion_tokens: completion };
    let mut object = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": usage.total(),
    });
    if cached > 0 {
        object["prompt_tokens_details"] = json!({ "cached_tokens": cached });
    }
    if thoughts > 0 {
        object["completion_tokens_details"] = json!({ "reasoning_tokens": thoughts });
    }
    Ok((usage, object))
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// The error an SSE payload of `streamGenerateContent` carries instead of
/// content: a mid-stream `{"error": ...}` (classified like the HTTP errors,
/// by its `status` and `code`) or a blocked prompt (see [`blocked`]). Check
/// each payload with it before [`StreamTranslator::on_event`].
pub(crate) fn stream_error(data: &[u8]) -> Option<UpstreamError> {
    let parsed: Value = serde_json::from_slice(data).ok()?;
    if error_object(&parsed).is_some() {
        let mut error = classify(None, data);
        error.message = format!("mid-stream: {}", error.message);
        return Some(error);
    }
    blocked(data)
}

/// Turns the `data:` payloads of `streamGenerateContent?alt=sse`, in order,
/// into `chat.completion.chunk`s.
///
/// Each payload is a `GenerateContentResponse` holding the next piece of the
/// first candidate. The first chunk carries `delta.role` (and an empty
/// content, as OpenAI's does); text parts → `delta.content`; Gemini sends
/// each function call whole, so a `functionCall` part → one complete
/// `delta.tool_calls` entry (`index` from 0 in order, id `call_<index>`,
/// the full `arguments`); `finishReason` → a chunk with `finish_reason`;
/// the latest `usageMetadata` → the usage-only chunk, which [`finish`]
/// returns when the stream has ended.
///
/// [`finish`]: StreamTranslator::finish
#[derive(Debug)]
pub(crate) struct StreamTranslator {
    model: String,
    id: String,
    created: u64,
    role_sent: bool,
    /// Function calls sent so far.
    tool_calls: usize,
    finished: bool,
    /// The latest usage seen (Vertex may repeat it, growing, on each chunk).
    usage: Option<(Usage, Value)>,
}

impl StreamTranslator {
    pub(crate) fn new(model: impl Into<String>, id: impl Into<String>, created: u64) -> Self {
        StreamTranslator {
            model: model.into(),
            id: id.into(),
            created,
            role_sent: false,
            tool_calls: 0,
            finished: false,
            usage: None,
        }
    }

    /// True once a `finishReason` was seen.
    #[cfg(test)]
    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    /// Translates one SSE `data:` payload.
    pub(crate) fn on_event(&mut self, data: &[u8]) -> Result<Vec<StreamChunk>, TranslateError> {
        let event: Value = serde_json::from_slice(data).map_err(|error| {
            TranslateError::upstream(format!("a stream chunk is not JSON: {error}"))
        })?;
        if !event.is_object() {
            return Err(TranslateError::upstream("a stream chunk is not an object"));
        }
        if let Some(error) = error_object(&event) {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("(no message)");
            return Err(TranslateError::upstream(format!(
                "the stream carries an error, which `stream_error` reports: {}",
                clean(message)
            )));
        }
        let mut chunks = Vec::new();
        let candidate = first_candidate(&event)?;
        if candidate.is_none() && event.pointer("/promptFeedback/blockReason").is_some() {
            return Err(no_candidates(&event));
        }
        if let Some(candidate) = candidate {
            let mut text = String::new();
            for part in parts_of(candidate)? {
                match part_kind(part)? {
                    PartKind::Text(fragment) => text.push_str(fragment),
                    PartKind::Call { name, args, signature } => {
                        self.push_text(&mut chunks, &mut text)?;
                        let mut call = tool_call(self.tool_calls, name, args, signature);
                        call["index"] = self.tool_calls.into();
                        self.tool_calls += 1;
                        self.push(&mut chunks, json!({ "tool_calls": [call] }), None)?;
                    }
                    PartKind::Skipped => {}
                }
            }
            self.push_text(&mut chunks, &mut text)?;
            match candidate.get("finishReason") {
                None | Some(Value::Null) => {}
                Some(Value::String(reason)) => {
                    if !self.finished {
                        let finish_reason = finish_reason(reason, self.tool_calls > 0)?;
                        self.push(&mut chunks, json!({}), Some(finish_reason))?;
                        self.finished = true;
                    }
                }
                Some(_) => return Err(TranslateError::upstream("`finishReason` is not a string")),
            }
        }
        if let Some(metadata) = event.get("usageMetadata") {
            self.usage = Some(usage_of(metadata)?);
        }
        Ok(chunks)
    }

    /// Called when the HTTP stream ended cleanly: the usage-only chunk (if
    /// Vertex sent usage), or an error if Gemini never finished, which
    /// means the stream was cut ([`TranslateError::into_stream_cut`]).
    pub(crate) fn finish(&mut self) -> Result<Vec<StreamChunk>, TranslateError> {
        if !self.finished {
            return Err(TranslateError::upstream(
                "the Gemini stream ended before a candidate's `finishReason`",
            ));
        }
        let Some((usage, usage_json)) = self.usage.take() else { return Ok(Vec::new()) };
        Ok(vec![self.header().usage_chunk(usage, usage_json)])
    }

    fn push_text(&mut self, chunks: &mut Vec<StreamChunk>, text: &mut String) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let content = std::mem::take(text);
        self.push(chunks, json!({ "content": content }), None)
    }

    /// Adds a chunk with one choice, preceded by the role chunk if none was
    /// sent yet. Content after the finish reason is an error.
    fn push(
        &mut self,
        chunks: &mut Vec<StreamChunk>,
        delta: Value,
        finish_reason: Option<&str>,
    ) -> Result<()> {
        if self.finished {
            return Err(TranslateError::upstream(
                "the Gemini stream goes on after its finishReason",
            ));
        }
        if !self.role_sent {
            self.role_sent = true;
            chunks.push(self.chunk(json!({ "role": "assistant", "content": "" }), None));
        }
        chunks.push(self.chunk(delta, finish_reason));
        Ok(())
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> StreamChunk {
        self.header().chunk(delta, finish_reason)
    }

    fn header(&self) -> ChunkHeader<'_> {
        ChunkHeader { model: &self.model, id: &self.id, created: self.created }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Classifies a non-2xx Vertex answer by its body's `error.status`, else by
/// the HTTP status. `retry_after` comes from a `RetryInfo` detail, if any;
/// the caller may prefer a `Retry-After` header.
pub(crate) fn classify_error(status: u16, body: &[u8]) -> UpstreamError {
    classify(Some(status), body)
}

/// Google's canonical error codes and what they mean for the router.
fn kind_of(status: &str) -> Option<FailureKind> {
    Some(match status {
        "RESOURCE_EXHAUSTED" => FailureKind::RateLimited,
        "UNAVAILABLE" => FailureKind::Overloaded,
        // ABORTED is a concurrency conflict Google says to retry.
        "INTERNAL" | "UNKNOWN" | "ABORTED" => FailureKind::ServerError,
        "DEADLINE_EXCEEDED" => FailureKind::UpstreamTimeout,
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => FailureKind::InvalidRequest,
        // NOT_FOUND: the gateway builds the path from the deployment's
        // project, region and model, so a miss is the deployment's.
        "PERMISSION_DENIED" | "UNAUTHENTICATED" | "NOT_FOUND" => FailureKind::DeploymentConfig,
        _ => return None,
    })
}

/// The `error` object of a Google error body, bare or in a one-element array.
fn error_object(body: &Value) -> Option<&Map<String, Value>> {
    let wrapper = match body {
        Value::Array(items) => items.first()?,
        other => other,
    };
    wrapper.get("error")?.as_object()
}

fn classify(status: Option<u16>, body: &[u8]) -> UpstreamError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(error_object);
    let field = |name: &str| error?.get(name)?.as_str();
    let google_status = field("status").map(str::trim).filter(|s| !s.is_empty());
    let upstream_message =
        clean(&translate::message_or_body(field("message").filter(|m| !m.trim().is_empty()), body));
    // Mid-stream errors have no HTTP status of their own: the body's `code`
    // is the one Google would have answered with.
    let http_status =
        status.or_else(|| error?.get("code")?.as_u64().and_then(|code| u16::try_from(code).ok()));

    let kind = google_status
        .and_then(kind_of)
        .or_else(|| http_status.and_then(FailureKind::from_status))
        .unwrap_or(FailureKind::ServerError);
    let named = match google_status {
        Some(google_status) => format!("{google_status}: {upstream_message}"),
        None => upstream_message.clone(),
    };
    let answered =
        status.map_or_else(|| "Vertex AI".to_string(), |s| format!("Vertex AI answered {s}"));
    let message = if kind == FailureKind::DeploymentConfig {
        format!(
            "{answered}: this deployment's Google credentials, project, region or model were \
             refused ({named}); check the deployment's configuration"
        )
    } else {
        format!("{answered}: {named}")
    };
    let client_error = (kind == FailureKind::InvalidRequest).then(|| {
        json!({
            "message": upstream_message,
            "type": "invalid_request_error",
            "param": null,
            "code": google_status.map(str::to_ascii_lowercase),
        })
    });
    let retry_after = error.and_then(retry_delay);
    UpstreamError { kind, status, message, retry_after, client_error }
}

/// The `retryDelay` of a `google.rpc.RetryInfo` detail (`"30s"`, `"1.5s"`).
fn retry_delay(error: &Map<String, Value>) -> Option<Duration> {
    error.get("details")?.as_array()?.iter().find_map(|detail| {
        let kind = detail.get("@type")?.as_str()?;
        if !kind.ends_with("google.rpc.RetryInfo") {
            return None;
        }
        let delay = detail.get("retryDelay")?.as_str()?.trim().strip_suffix('s')?;
        let seconds: f64 = delay.parse().ok()?;
        (seconds.is_finite() && (0.0..86_400.0).contains(&seconds))
            .then(|| Duration::from_secs_f64(seconds))
    })
}

/// An upstream message made fit for logs and callers: its first line only,
/// at most 300 characters, with anything resembling key material masked
/// (API keys by [`redact`](crate::providers::openai_compat::redact); OAuth access tokens and JWTs here).
fn clean(message: &str) -> String {
    translate::clean(message, google_secret)
}

/// The part of a word that looks like an OAuth access token, a JWT or
/// another long opaque token, if any.
fn google_secret(word: &str) -> Option<&str> {
    let token_char = |c: char| c.is_ascii_alphanumeric() || "-_.~+/=".contains(c);
    let core = word.trim_matches(|c: char| !token_char(c)).trim_end_matches('.');
    let oauth = core.starts_with("ya29.") || core.starts_with("1//");
    let jwt = core.starts_with("eyJ") && core.len() >= 20;
    // Long base64url runs (tokens, signatures); paths have slashes.
    let opaque = core.len() >= 40
        && core.chars().all(|c| token_char(c) && c != '/')
        && core.chars().any(|c| c.is_ascii_digit())
        && core.chars().any(|c| c.is_ascii_alphabetic());
    (oauth || jwt || opaque).then_some(core)
}

#[cfg(test)]
mod tests;
