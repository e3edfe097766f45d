//! `POST /model/{modelId}/converse` and `POST /model/{modelId}/converse-stream`.
//!
//! Requests are validated the way Bedrock does it for the mistakes a
//! translating gateway can make (roles that do not alternate, a toolResult
//! with no toolConfig or answering no toolUse of the previous turn, an
//! unknown content block, out-of-range inference parameters, image bytes
//! that are not base64, ...), each answered with `400 ValidationException`.
//!
//! The reply is text ("Hello from {name} lorem ipsum ..."), or a tool call
//! when the request has tools and either `toolChoice` is `any` / `tool`, or
//! the last user message contains the text "use a tool" (any case) and no
//! toolResult. The tool is the one named by `toolChoice.tool`, else the
//! first; its input has one member per property of the tool's input schema
//! (only the `required` ones when the schema lists some): a string
//! `"skyweave"`, a number `1`, `true`, `[]`, `{}` or `null` by the
//! property's `type`; `{}` for a schema without properties.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http_body::Frame;
use serde_json::{json, Map, Value};

use super::eventstream;
use super::server::{
    common_behaviour, non_streaming, prepare, validation, ConnHandle, OkBody, Prepared,
};
use super::{BedrockBehaviour, Shared, Tracker};
use crate::chat::reply_text;
use crate::server::Delay;
use crate::tokens::estimate_tokens;

pub(crate) async fn converse(
    State(shared): State<Arc<Shared>>,
    Path(model_id): Path<String>,
    req: Request,
) -> Response {
    handle(shared, model_id, req, false).await
}

pub(crate) async fn converse_stream(
    State(shared): State<Arc<Shared>>,
    Path(model_id): Path<String>,
    req: Request,
) -> Response {
    handle(shared, model_id, req, true).await
}

async fn handle(shared: Arc<Shared>, model_id: String, req: Request, stream: bool) -> Response {
    let operation = if stream { "converse-stream" } else { "converse" };
    let mut p = match prepare(&shared, req, model_id, operation).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let conversation = match validate(&p.body) {
        Ok(c) => c,
        Err(message) => return p.answer(validation(&message)),
    };
    let reply = Reply::new(&shared, conversation);
    let behaviour = shared.next_behaviour();
    if !stream {
        return non_streaming(p, behaviour, |chunks, latency| reply.body(chunks, latency)).await;
    }
    let behaviour = match common_behaviour(&mut p, behaviour).await {
        Ok(resp) => return resp,
        Err(b) => b,
    };
    stream_response(p, behaviour, &reply)
}

// ---- validation -----------------------------------------------------------------

/// What the reply needs from a valid request.
#[derive(Debug, PartialEq)]
pub(crate) struct Conversation {
    pub(crate) input_tokens: u64,
    pub(crate) max_tokens: Option<u64>,
    /// Answer with this tool call instead of text.
    pub(crate) tool: Option<(String, Value)>,
}

fn malformed() -> String {
    "Malformed input request, please reformat your input and try again.".to_owned()
}

fn not_null(path: &str) -> String {
    format!(
        "1 validation error detected: Value null at '{path}' failed to satisfy constraint: \
         Member must not be null"
    )
}

fn constraint(value: &Value, path: &str, what: &str) -> String {
    let shown = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!(
        "1 validation error detected: Value '{shown}' at '{path}' failed to satisfy constraint: \
         Member must {what}"
    )
}

const BLOCK_TYPES: [&str; 11] = [
    "text",
    "image",
    "document",
    "video",
    "toolUse",
    "toolResult",
    "guardContent",
    "cachePoint",
    "reasoningContent",
    "citationsContent",
    "searchResult",
];

pub(crate) fn validate(body: &[u8]) -> Result<Conversation, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| malformed())?;
    let obj = v.as_object().ok_or_else(malformed)?;

    let tools = validate_tool_config(obj.get("toolConfig"))?;
    let system = validate_system(obj.get("system"))?;
    let max_tokens = validate_inference_config(obj.get("inferenceConfig"))?;

    let messages = match obj.get("messages") {
        None | Some(Value::Null) => return Err(not_null("messages")),
        Some(Value::Array(m)) => m,
        Some(other) => return Err(constraint(other, "messages", "be a list")),
    };
    if messages.is_empty() {
        return Err("A conversation must start with a user message. Try again with a \
                    conversation that starts with a user message."
            .to_owned());
    }
    let mut previous_role = "";
    let mut previous_tool_uses: Vec<String> = Vec::new();
    let mut uses_tools = false;
    for (i, m) in messages.iter().enumerate() {
        let n = i + 1;
        let m = m.as_object().ok_or_else(malformed)?;
        let role = match m.get("role") {
            None | Some(Value::Null) => return Err(not_null(&format!("messages.{n}.member.role"))),
            Some(r) => match r.as_str() {
                Some(r @ ("user" | "assistant")) => r,
                _ => {
                    return Err(constraint(
                        r,
                        &format!("messages.{n}.member.role"),
                        "satisfy enum value set: [user, assistant]",
                    ))
                }
            },
        };
        if i == 0 && role != "user" {
            return Err("A conversation must start with a user message. Try again with a \
                        conversation that starts with a user message."
                .to_owned());
        }
        if role == previous_role {
            return Err("A conversation must alternate between user and assistant roles. Make \
                        sure the conversation alternates between user and assistant roles and \
                        try again."
                .to_owned());
        }
        let content = match m.get("content") {
            None | Some(Value::Null) => {
                return Err(not_null(&format!("messages.{n}.member.content")))
            }
            Some(Value::Array(c)) => c,
            Some(other) => {
                return Err(constraint(other, &format!("messages.{n}.member.content"), "be a list"))
            }
        };
        if content.is_empty() {
            return Err(format!(
                "The content field in the Message object at messages.{i} is empty. Add a \
                 ContentBlock object to the content field and try again."
            ));
        }
        let mut tool_uses = Vec::new();
        let mut tool_results = Vec::new();
        for (j, block) in content.iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            match validate_block(block, &at)? {
                Block::ToolUse(id) => {
                    if role != "assistant" {
                        return Err(format!(
                            "The toolUse block at {at} is not allowed in a user message. Only \
                             assistant messages can contain toolUse blocks."
                        ));
                    }
                    tool_uses.push(id);
                }
                Block::ToolResult(id) => {
                    if role != "user" {
                        return Err(format!(
                            "The toolResult block at {at} is not allowed in an assistant \
                             message. Only user messages can contain toolResult blocks."
                        ));
                    }
                    tool_results.push(id);
                }
                Block::Other => {}
            }
        }
        uses_tools |= !tool_uses.is_empty() || !tool_results.is_empty();
        if role == "user" {
            if tool_results.len() > previous_tool_uses.len() {
                return Err(format!(
                    "The number of toolResult blocks at messages.{i}.content exceeds the number \
                     of toolUse blocks of previous turn."
                ));
            }
            let answered: HashSet<&str> = tool_results.iter().map(String::as_str).collect();
            let missing: Vec<&str> = previous_tool_uses
                .iter()
                .map(String::as_str)
                .filter(|id| !answered.contains(id))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "Expected toolResult blocks at messages.{i}.content for the following Ids: {}",
                    missing.join(", ")
                ));
            }
        }
        previous_tool_uses = tool_uses;
        previous_role = role;
    }
    if uses_tools && tools.is_none() {
        return Err("The toolConfig field must be defined when using toolUse and toolResult \
                    content blocks."
            .to_owned());
    }

    let mut chars = text_chars(&system);
    for m in messages {
        chars += text_chars(m.get("content").unwrap_or(&Value::Null));
    }
    let last = messages.last().and_then(Value::as_object);
    let last_is_user = last.and_then(|m| m.get("role")).and_then(Value::as_str) == Some("user");
    let last_content = last.and_then(|m| m.get("content")).and_then(Value::as_array);
    let answers_a_tool =
        last_content.is_some_and(|c| c.iter().any(|b| b.get("toolResult").is_some()));
    let asks_for_tool = last_content.is_some_and(|c| {
        c.iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .any(|t| t.to_ascii_lowercase().contains("use a tool"))
    });
    let tool = match tools {
        Some(tools) if last_is_user && !answers_a_tool => {
            let chosen = match &tools.choice {
                Choice::Tool(name) => Some(name.clone()),
                Choice::Any => Some(tools.specs[0].0.clone()),
                Choice::Auto if asks_for_tool => Some(tools.specs[0].0.clone()),
                Choice::Auto => None,
            };
            chosen.map(|name| {
                let schema = tools
                    .specs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, s)| s.clone())
                    .unwrap_or(Value::Null);
                let input = input_for_schema(&schema);
                (name, input)
            })
        }
        _ => None,
    };
    Ok(Conversation { input_tokens: estimate_tokens(chars), max_tokens, tool })
}

enum Block {
    ToolUse(String),
    ToolResult(String),
    Other,
}

fn validate_block(block: &Value, at: &str) -> Result<Block, String> {
    let Some(obj) = block.as_object() else {
        return Err(format!("The content block at {at} must be an object."));
    };
    let kinds: Vec<&str> = obj.keys().map(String::as_str).collect();
    let [kind] = kinds[..] else {
        return Err(format!(
            "The content block at {at} must have exactly one member, got [{}].",
            kinds.join(", ")
        ));
    };
    if !BLOCK_TYPES.contains(&kind) {
        return Err(format!(
            "The content block at {at} has an unsupported type '{kind}'. Supported types: {}.",
            BLOCK_TYPES.join(", ")
        ));
    }
    let value = &obj[kind];
    match kind {
        "text" => {
            if !value.is_string() {
                return Err(format!("The text at {at} must be a string."));
            }
            Ok(Block::Other)
        }
        "image" => {
            validate_media(value, at, "image", &["png", "jpeg", "gif", "webp"])?;
            Ok(Block::Other)
        }
        "document" => {
            validate_media(
                value,
                at,
                "document",
                &["pdf", "csv", "doc", "docx", "xls", "xlsx", "html", "txt", "md"],
            )?;
            if value.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(not_null(&format!("{at}.document.name")));
            }
            Ok(Block::Other)
        }
        "toolUse" => {
            let id = value.get("toolUseId").and_then(Value::as_str);
            let name = value.get("name").and_then(Value::as_str);
            let (Some(id), Some(_)) = (id, name) else {
                return Err(format!("The toolUse block at {at} needs a toolUseId and a name."));
            };
            if value.get("input").is_none_or(Value::is_null) {
                return Err(not_null(&format!("{at}.toolUse.input")));
            }
            Ok(Block::ToolUse(id.to_owned()))
        }
        "toolResult" => {
            let Some(id) = value.get("toolUseId").and_then(Value::as_str) else {
                return Err(not_null(&format!("{at}.toolResult.toolUseId")));
            };
            let Some(content) = value.get("content").and_then(Value::as_array) else {
                return Err(not_null(&format!("{at}.toolResult.content")));
            };
            for (k, c) in content.iter().enumerate() {
                let ok = c.as_object().is_some_and(|o| {
                    o.len() == 1
                        && (o.get("text").is_some_and(Value::is_string)
                            || o.get("json").is_some()
                            || o.contains_key("image")
                            || o.contains_key("document")
                            || o.contains_key("video"))
                });
                if !ok {
                    return Err(format!(
                        "The toolResult content at {at}.toolResult.content.{k} must be one of \
                         text, json, image, document or video."
                    ));
                }
            }
            if let Some(status) = value.get("status") {
                if !matches!(status.as_str(), Some("success" | "error")) {
                    return Err(constraint(
                        status,
                        &format!("{at}.toolResult.status"),
                        "satisfy enum value set: [success, error]",
                    ));
                }
            }
            Ok(Block::ToolResult(id.to_owned()))
        }
        _ => Ok(Block::Other),
    }
}

fn validate_media(value: &Value, at: &str, kind: &str, formats: &[&str]) -> Result<(), String> {
    let format = value.get("format").unwrap_or(&Value::Null);
    if !format.as_str().is_some_and(|f| formats.contains(&f)) {
        return Err(constraint(
            format,
            &format!("{at}.{kind}.format"),
            &format!("satisfy enum value set: [{}]", formats.join(", ")),
        ));
    }
    let source = value.get("source").and_then(Value::as_object);
    match source {
        Some(s) if s.contains_key("s3Location") => Ok(()),
        Some(s) => match s.get("bytes").and_then(Value::as_str) {
            Some(b) if is_base64(b) => Ok(()),
            Some(_) => {
                Err(format!("The {kind} bytes at {at}.{kind}.source.bytes are not valid base64."))
            }
            None => Err(not_null(&format!("{at}.{kind}.source.bytes"))),
        },
        None => Err(not_null(&format!("{at}.{kind}.source"))),
    }
}

fn is_base64(s: &str) -> bool {
    let trimmed = s.trim_end_matches('=');
    !s.is_empty()
        && s.len() % 4 == 0
        && s.len() - trimmed.len() <= 2
        && trimmed.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

enum Choice {
    Auto,
    Any,
    Tool(String),
}

struct Tools {
    /// (name, input JSON schema)
    specs: Vec<(String, Value)>,
    choice: Choice,
}

fn validate_tool_config(v: Option<&Value>) -> Result<Option<Tools>, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let obj = v.as_object().ok_or_else(malformed)?;
    let tools = match obj.get("tools") {
        None | Some(Value::Null) => return Err(not_null("toolConfig.tools")),
        Some(Value::Array(t)) => t,
        Some(other) => return Err(constraint(other, "toolConfig.tools", "be a list")),
    };
    if tools.is_empty() {
        return Err(constraint(
            &Value::Array(vec![]),
            "toolConfig.tools",
            "have length greater than or equal to 1",
        ));
    }
    let mut specs = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let n = i + 1;
        if t.get("cachePoint").is_some() {
            continue;
        }
        let Some(spec) = t.get("toolSpec").and_then(Value::as_object) else {
            return Err(not_null(&format!("toolConfig.tools.{n}.member.toolSpec")));
        };
        let name = spec.get("name").unwrap_or(&Value::Null);
        let valid_name = name.as_str().is_some_and(|s| {
            (1..=64).contains(&s.len())
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !valid_name {
            return Err(constraint(
                name,
                &format!("toolConfig.tools.{n}.member.toolSpec.name"),
                "satisfy regular expression pattern: [a-zA-Z0-9_-]+ and have length between 1 and 64",
            ));
        }
        let Some(schema) = spec.get("inputSchema").and_then(|s| s.get("json")) else {
            return Err(not_null(&format!("toolConfig.tools.{n}.member.toolSpec.inputSchema")));
        };
        if !schema.is_object() {
            return Err(format!(
                "The input schema of tool {name} (toolConfig.tools.{n}) must be a JSON object."
            ));
        }
        specs.push((name.as_str().unwrap_or_default().to_owned(), schema.clone()));
    }
    if specs.is_empty() {
        return Err(constraint(
            &Value::Array(vec![]),
            "toolConfig.tools",
            "contain at least one toolSpec",
        ));
    }
    let choice = match obj.get("toolChoice") {
        None | Some(Value::Null) => Choice::Auto,
        Some(c) => {
            let o = c.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
                "toolConfig.toolChoice must have exactly one of auto, any or tool.".to_owned()
            })?;
            if o.contains_key("auto") {
                Choice::Auto
            } else if o.contains_key("any") {
                Choice::Any
            } else if let Some(t) = o.get("tool") {
                let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
                if !specs.iter().any(|(n, _)| n == name) {
                    return Err(format!(
                        "The tool {name} in toolConfig.toolChoice is not defined in \
                         toolConfig.tools."
                    ));
                }
                Choice::Tool(name.to_owned())
            } else {
                return Err(
                    "toolConfig.toolChoice must have exactly one of auto, any or tool.".to_owned()
                );
            }
        }
    };
    Ok(Some(Tools { specs, choice }))
}

fn validate_system(v: Option<&Value>) -> Result<Value, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Value::Null);
    };
    let Some(blocks) = v.as_array() else {
        return Err(constraint(v, "system", "be a list"));
    };
    for (i, b) in blocks.iter().enumerate() {
        let ok = b.as_object().is_some_and(|o| {
            o.len() == 1
                && (o.get("text").is_some_and(Value::is_string)
                    || o.contains_key("guardContent")
                    || o.contains_key("cachePoint"))
        });
        if !ok {
            return Err(format!(
                "The system content block at system.{i} must be one of text, guardContent or \
                 cachePoint."
            ));
        }
    }
    Ok(v.clone())
}

/// Returns `maxTokens`.
fn validate_inference_config(v: Option<&Value>) -> Result<Option<u64>, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let obj = v.as_object().ok_or_else(malformed)?;
    let max_tokens = match obj.get("maxTokens") {
        None | Some(Value::Null) => None,
        Some(m) => match m.as_u64() {
            Some(n) if n >= 1 => Some(n),
            _ => {
                return Err(constraint(
                    m,
                    "inferenceConfig.maxTokens",
                    "have value greater than or equal to 1",
                ))
            }
        },
    };
    for key in ["temperature", "topP"] {
        if let Some(x) = obj.get(key).filter(|x| !x.is_null()) {
            match x.as_f64() {
                Some(f) if f < 0.0 => {
                    return Err(constraint(
                        x,
                        &format!("inferenceConfig.{key}"),
                        "have value greater than or equal to 0",
                    ))
                }
                Some(f) if f > 1.0 => {
                    return Err(constraint(
                        x,
                        &format!("inferenceConfig.{key}"),
                        "have value less than or equal to 1",
                    ))
                }
                Some(_) => {}
                None => {
                    return Err(constraint(x, &format!("inferenceConfig.{key}"), "be a number"))
                }
            }
        }
    }
    if let Some(s) = obj.get("stopSequences").filter(|s| !s.is_null()) {
        let ok = s
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.as_str().is_some_and(|x| !x.is_empty())));
        if !ok {
            return Err(constraint(
                s,
                "inferenceConfig.stopSequences",
                "be a list of non-empty strings",
            ));
        }
    }
    Ok(max_tokens)
}

/// Characters of every `text` string anywhere in `v`.
fn text_chars(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.iter().map(text_chars).sum(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| match (k.as_str(), v) {
                ("text", Value::String(s)) => s.chars().count(),
                _ => text_chars(v),
            })
            .sum(),
        _ => 0,
    }
}

/// A tool input shaped after its JSON schema (see the module docs).
fn input_for_schema(schema: &Value) -> Value {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Value::Object(Map::new());
    };
    let required: Option<Vec<&str>> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .filter(|r: &Vec<&str>| !r.is_empty());
    let mut out = Map::new();
    for (name, prop) in props {
        if required.as_ref().is_some_and(|r| !r.contains(&name.as_str())) {
            continue;
        }
        let ty = match prop.get("type") {
            Some(Value::Array(types)) => {
                types.iter().filter_map(Value::as_str).find(|t| *t != "null")
            }
            Some(t) => t.as_str(),
            None => None,
        };
        let value = match ty {
            Some("string") => json!("skyweave"),
            Some("integer" | "number") => json!(1),
            Some("boolean") => json!(true),
            Some("array") => json!([]),
            Some("object") => json!({}),
            _ => Value::Null,
        };
        out.insert(name.clone(), value);
    }
    Value::Object(out)
}

// ---- the reply ----------------------------------------------------------------

struct Reply {
    hello: String,
    input_tokens: u64,
    max_tokens: Option<u64>,
    /// (toolUseId, name, input as JSON text)
    tool: Option<(String, String, String)>,
}

impl Reply {
    fn new(shared: &Shared, c: Conversation) -> Self {
        let tool = c.tool.map(|(name, input)| {
            let id = format!("tooluse_skyweave{:014}", shared.next_id());
            (id, name, serde_json::to_string(&input).unwrap_or_else(|_| "{}".into()))
        });
        Reply {
            hello: shared.hello.clone(),
            input_tokens: c.input_tokens,
            max_tokens: c.max_tokens,
            tool,
        }
    }

    /// Text pieces for `chunks` and the stop reason.
    fn text_pieces(&self, chunks: u32) -> (Vec<String>, &'static str) {
        let (n, stop) = match self.max_tokens {
            Some(max) if u64::from(chunks) > max => (max as u32, "max_tokens"),
            _ => (chunks, "end_turn"),
        };
        let full = reply_text(&self.hello, n);
        let mut pieces = Vec::with_capacity(n as usize);
        if n > 0 {
            pieces.push(self.hello.clone());
            let rest = &full[self.hello.len()..];
            pieces.extend(rest.split(' ').skip(1).map(|w| format!(" {w}")));
        }
        (pieces, stop)
    }

    /// The tool input JSON cut into about `chunks` pieces (at least one).
    fn tool_pieces(input: &str, chunks: u32) -> Vec<String> {
        let chars: Vec<char> = input.chars().collect();
        let n = (chunks as usize).clamp(1, chars.len().max(1));
        let per = chars.len().div_ceil(n).max(1);
        chars.chunks(per).map(|c| c.iter().collect()).collect()
    }

    fn usage(&self, output: u64) -> Value {
        json!({
            "inputTokens": self.input_tokens,
            "outputTokens": output,
            "totalTokens": self.input_tokens + output,
        })
    }

    fn body(&self, chunks: u32, latency_ms: u64) -> OkBody {
        let (content, stop, output) = match &self.tool {
            Some((id, name, input)) => {
                let input: Value = serde_json::from_str(input).unwrap_or_else(|_| json!({}));
                (
                    json!([{"toolUse": {"toolUseId": id, "name": name, "input": input}}]),
                    "tool_use",
                    u64::from(chunks.max(1)),
                )
            }
            None => {
                let (pieces, stop) = self.text_pieces(chunks);
                (json!([{"text": pieces.concat()}]), stop, pieces.len() as u64)
            }
        };
        let body = json!({
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop,
            "usage": self.usage(output),
            "metrics": {"latencyMs": latency_ms},
        });
        OkBody { body: serde_json::to_vec(&body).unwrap_or_default(), headers: Vec::new() }
    }

    /// Every event of a complete stream with `chunks` pieces: the frames,
    /// the index of the first delta, and the number of deltas.
    fn events(&self, chunks: u32, latency_ms: u64) -> (Vec<Vec<u8>>, usize, usize) {
        let mut frames = Vec::new();
        let mut push = |event: &str, mut payload: Value| {
            // Bedrock pads every event with a "p" member of varying length.
            if let Value::Object(o) = &mut payload {
                o.insert("p".into(), Value::String(padding(frames.len())));
            }
            let bytes = serde_json::to_vec(&payload).unwrap_or_default();
            frames.push(eventstream::event_message(event, &bytes));
        };
        push("messageStart", json!({"role": "assistant"}));
        let (first_delta, deltas, stop) = match &self.tool {
            Some((id, name, input)) => {
                push(
                    "contentBlockStart",
                    json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": id, "name": name}}}),
                );
                let pieces = Self::tool_pieces(input, chunks);
                for piece in &pieces {
                    push(
                        "contentBlockDelta",
                        json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}}),
                    );
                }
                (2, pieces.len(), "tool_use")
            }
            None => {
                let (pieces, stop) = self.text_pieces(chunks);
                for piece in &pieces {
                    push(
                        "contentBlockDelta",
                        json!({"contentBlockIndex": 0, "delta": {"text": piece}}),
                    );
                }
                (1, pieces.len(), stop)
            }
        };
        push("contentBlockStop", json!({"contentBlockIndex": 0}));
        push("messageStop", json!({"stopReason": stop}));
        push(
            "metadata",
            json!({"usage": self.usage(deltas as u64), "metrics": {"latencyMs": latency_ms}}),
        );
        (frames, first_delta, deltas)
    }
}

fn padding(i: usize) -> String {
    const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    ALPHABET[..1 + (i * 17) % (ALPHABET.len() - 1)].to_owned()
}

/// `:exception-type` is the name of the event-stream union member:
/// `ThrottlingException` travels as `throttlingException`.
fn member_name(error_type: &str) -> String {
    let mut chars = error_type.chars();
    match chars.next() {
        Some(c) => c.to_ascii_lowercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

// ---- streaming ------------------------------------------------------------------

enum Step {
    Data(Bytes),
    /// Close the connection mid-body.
    Cut,
}

fn stream_response(p: Prepared, behaviour: BedrockBehaviour, reply: &Reply) -> Response {
    let mut steps: VecDeque<(Duration, Step)> = VecDeque::new();
    let zero = Duration::ZERO;
    match behaviour {
        BedrockBehaviour::Ok { ttft_ms, inter_chunk_ms, chunks } => {
            let latency = ttft_ms + inter_chunk_ms * u64::from(chunks.saturating_sub(1));
            let (frames, first_delta, deltas) = reply.events(chunks, latency);
            let inter = Duration::from_millis(inter_chunk_ms);
            for (i, f) in frames.into_iter().enumerate() {
                let delay = if i == 0 {
                    Duration::from_millis(ttft_ms)
                } else if i > first_delta && i < first_delta + deltas {
                    inter
                } else {
                    zero
                };
                steps.push_back((delay, Step::Data(Bytes::from(f))));
            }
        }
        BedrockBehaviour::ExceptionMidStream { after_chunks, error_type, message } => {
            let mut frames = truncated(reply, after_chunks);
            let default = super::exception_defaults(&error_type).1;
            frames.push(eventstream::exception_message(
                &member_name(&error_type),
                message.as_deref().unwrap_or(default),
            ));
            steps.extend(frames.into_iter().map(|f| (zero, Step::Data(Bytes::from(f)))));
        }
        BedrockBehaviour::CorruptFrame { after_chunks }
        | BedrockBehaviour::CorruptPrelude { after_chunks } => {
            let prelude = matches!(behaviour, BedrockBehaviour::CorruptPrelude { .. });
            let (mut frames, first_delta, deltas) = reply.events(after_chunks.saturating_add(1), 0);
            frames.truncate(first_delta + deltas.min(after_chunks as usize) + 1);
            if let Some(last) = frames.last_mut() {
                if prelude {
                    eventstream::corrupt_prelude_crc(last);
                } else {
                    eventstream::corrupt_message_crc(last);
                }
            }
            steps.extend(frames.into_iter().map(|f| (zero, Step::Data(Bytes::from(f)))));
        }
        BedrockBehaviour::CutAfterChunks { chunks } => {
            let frames = truncated(reply, chunks);
            steps.extend(frames.into_iter().map(|f| (zero, Step::Data(Bytes::from(f)))));
            steps.push_back((zero, Step::Cut));
        }
        // Answered by common_behaviour.
        BedrockBehaviour::Exception { .. } | BedrockBehaviour::Hang | BedrockBehaviour::Reset => {
            return p.answer(super::server::modeled("InternalServerException", None));
        }
    }
    let mut resp = Response::new(Body::new(EventStreamBody {
        steps,
        delay: None,
        tracker: Some(p.tracker),
        conn: p.conn,
        state: BodyState::Running,
    }));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(eventstream::CONTENT_TYPE));
    resp
}

/// The events of a stream up to (not including) the delta that would
/// follow `after_chunks` deltas.
fn truncated(reply: &Reply, after_chunks: u32) -> Vec<Vec<u8>> {
    let (mut frames, first_delta, deltas) = reply.events(after_chunks.saturating_add(1), 0);
    frames.truncate(first_delta + deltas.min(after_chunks as usize));
    frames
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Running,
    End,
    /// The connection is being closed; never yields again.
    Dead,
}

/// The event-stream body: each message handed to hyper (and written) when
/// its delay has passed.
struct EventStreamBody {
    steps: VecDeque<(Duration, Step)>,
    delay: Option<Delay>,
    tracker: Option<Tracker>,
    conn: Option<ConnHandle>,
    state: BodyState,
}

impl EventStreamBody {
    fn finish_tracker(&mut self) {
        if let Some(mut t) = self.tracker.take() {
            t.done();
        }
    }
}

impl http_body::Body for EventStreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                BodyState::End => return Poll::Ready(None),
                BodyState::Dead => return Poll::Pending,
                BodyState::Running => {}
            }
            if let Some(delay) = &mut this.delay {
                ready!(delay.poll(cx));
                this.delay = None;
                if let Some((d, _)) = this.steps.front_mut() {
                    *d = Duration::ZERO;
                }
            }
            let Some((delay, _)) = this.steps.front() else {
                this.finish_tracker();
                this.state = BodyState::End;
                return Poll::Ready(None);
            };
            if !delay.is_zero() {
                this.delay = Some(Delay::new(*delay));
                continue;
            }
            match this.steps.pop_front().map(|(_, s)| s) {
                Some(Step::Data(bytes)) => {
                    if this.steps.is_empty() {
                        this.finish_tracker();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Some(Step::Cut) => {
                    this.finish_tracker();
                    this.state = BodyState::Dead;
                    match this.conn.take() {
                        Some(conn) => conn.cut(),
                        None => {
                            this.state = BodyState::End;
                            return Poll::Ready(None);
                        }
                    }
                }
                None => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::End
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: Value) -> Conversation {
        validate(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    fn err(body: Value) -> String {
        validate(&serde_json::to_vec(&body).unwrap()).unwrap_err()
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": [{"text": text}]})
    }

    fn tools() -> Value {
        json!({"tools": [
            {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"type": "string"}},
                "required": ["city", "days"]
            }}}},
            {"toolSpec": {"name": "noop", "inputSchema": {"json": {"type": "object"}}}}
        ]})
    }

    #[test]
    fn counts_tokens_and_reads_max_tokens() {
        let c = ok(json!({
            "system": [{"text": "You are terse."}],
            "messages": [user("Say hello to me")],
            "inferenceConfig": {"maxTokens": 2, "temperature": 0.5, "topP": 1, "stopSequences": ["x"]},
        }));
        assert_eq!(c, Conversation { input_tokens: 7, max_tokens: Some(2), tool: None });
    }

    #[test]
    fn tool_use_is_chosen_by_text_or_tool_choice() {
        let c = ok(json!({"messages": [user("please USE A TOOL")], "toolConfig": tools()}));
        assert_eq!(c.tool, Some(("get_weather".into(), json!({"city": "skyweave", "days": 1}))));
        let c = ok(json!({"messages": [user("hi")], "toolConfig": tools()}));
        assert_eq!(c.tool, None);
        let mut tc = tools();
        tc["toolChoice"] = json!({"any": {}});
        assert!(ok(json!({"messages": [user("hi")], "toolConfig": tc})).tool.is_some());
        tc["toolChoice"] = json!({"tool": {"name": "noop"}});
        let c = ok(json!({"messages": [user("hi")], "toolConfig": tc}));
        assert_eq!(c.tool, Some(("noop".into(), json!({}))));
        tc["toolChoice"] = json!({"tool": {"name": "missing"}});
        assert!(err(json!({"messages": [user("hi")], "toolConfig": tc})).contains("not defined"));
    }

    #[test]
    fn tool_results_must_answer_the_previous_tool_uses() {
        let assistant = json!({"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {}}},
            {"toolUse": {"toolUseId": "t2", "name": "get_weather", "input": {}}}
        ]});
        let result =
            |id: &str| json!({"toolResult": {"toolUseId": id, "content": [{"text": "sunny"}]}});
        let both = json!({"role": "user", "content": [result("t1"), result("t2"), {"text": "use a tool"}]});
        let c =
            ok(json!({"messages": [user("use a tool"), assistant, both], "toolConfig": tools()}));
        assert_eq!(c.tool, None, "a turn answering a tool gets text");

        let one = json!({"role": "user", "content": [result("t1")]});
        let e = err(json!({"messages": [user("x"), assistant, one], "toolConfig": tools()}));
        assert_eq!(e, "Expected toolResult blocks at messages.2.content for the following Ids: t2");

        let three = json!({"role": "user", "content": [result("t1"), result("t2"), result("t3")]});
        let e = err(json!({"messages": [user("x"), assistant, three], "toolConfig": tools()}));
        assert!(e.contains("exceeds the number of toolUse blocks"), "{e}");

        let both = json!({"role": "user", "content": [result("t1"), result("t2")]});
        let e = err(json!({"messages": [user("x"), assistant, both]}));
        assert!(e.starts_with("The toolConfig field must be defined"), "{e}");
    }

    #[test]
    fn validation_errors() {
        let cases = [
            (json!({}), "Value null at 'messages'"),
            (json!({"messages": []}), "must start with a user message"),
            (
                json!({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]}),
                "must start with a user message",
            ),
            (json!({"messages": [user("a"), user("b")]}), "must alternate"),
            (
                json!({"messages": [{"role": "system", "content": [{"text": "x"}]}]}),
                "enum value set: [user, assistant]",
            ),
            (json!({"messages": [{"role": "user", "content": []}]}), "is empty"),
            (json!({"messages": [{"role": "user", "content": "hi"}]}), "be a list"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}),
                "exactly one member",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"image_url": "x"}]}]}),
                "unsupported type 'image_url'",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"image": {"format": "bmp", "source": {"bytes": "AAAA"}}}]}]}),
                "messages.0.content.0.image.format",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": "data:image/png;base64,AAAA"}}}]}]}),
                "not valid base64",
            ),
            (
                json!({"messages": [user("x")], "inferenceConfig": {"temperature": 1.5}}),
                "less than or equal to 1",
            ),
            (
                json!({"messages": [user("x")], "inferenceConfig": {"topP": -0.1}}),
                "greater than or equal to 0",
            ),
            (json!({"messages": [user("x")], "inferenceConfig": {"maxTokens": 0}}), "maxTokens"),
            (
                json!({"messages": [user("x")], "inferenceConfig": {"stopSequences": "x"}}),
                "stopSequences",
            ),
            (json!({"messages": [user("x")], "system": "be terse"}), "'system'"),
            (json!({"messages": [user("x")], "toolConfig": {"tools": []}}), "toolConfig.tools"),
            (
                json!({"messages": [user("x")], "toolConfig": {"tools": [{"toolSpec": {"name": "a b", "inputSchema": {"json": {}}}}]}}),
                "regular expression",
            ),
            (
                json!({"messages": [user("x")], "toolConfig": {"tools": [{"toolSpec": {"name": "f"}}]}}),
                "inputSchema",
            ),
        ];
        for (body, expected) in cases {
            let e = err(body.clone());
            assert!(e.contains(expected), "{body}: {e:?} should contain {expected:?}");
        }
        assert_eq!(validate(b"not json").unwrap_err(), malformed());
        // An image with proper base64 passes.
        ok(
            json!({"messages": [{"role": "user", "content": [{"text": "what is it"}, {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}]}]}),
        );
    }

    #[test]
    fn pieces_and_member_names() {
        let reply =
            Reply { hello: "Hello from x".into(), input_tokens: 1, max_tokens: None, tool: None };
        assert_eq!(
            reply.text_pieces(3),
            (vec!["Hello from x".into(), " lorem".into(), " ipsum".into()], "end_turn")
        );
        assert_eq!(reply.text_pieces(0), (vec![], "end_turn"));
        let capped = Reply { max_tokens: Some(1), ..reply };
        assert_eq!(capped.text_pieces(3), (vec!["Hello from x".into()], "max_tokens"));
        assert_eq!(Reply::tool_pieces(r#"{"a":1}"#, 3).concat(), r#"{"a":1}"#);
        assert_eq!(Reply::tool_pieces(r#"{"a":1}"#, 3).len(), 3);
        assert_eq!(Reply::tool_pieces("{}", 10), vec!["{".to_owned(), "}".to_owned()]);
        assert_eq!(member_name("ThrottlingException"), "throttlingException");
        assert_eq!(member_name("modelStreamErrorException"), "modelStreamErrorException");
    }
}
