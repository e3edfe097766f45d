//! `POST /{v1|v1beta1}/projects/{project}/locations/{location}/endpoints/openapi/chat/completions`:
//! Vertex's OpenAI-compatible Chat Completions API. The model is named in the
//! body as `{publisher}/{model}` (`google/gemini-2.0-flash`,
//! `meta/llama3-405b-instruct-maas`); answers are OpenAI `chat.completion`
//! objects, or `chat.completion.chunk` server-sent events ending with
//! `data: [DONE]`. Errors keep Google's shape.
//!
//! The reply is text, or a tool call when the request has tools and either
//! `tool_choice` is `required` or names a function, or it is `auto` (the
//! default) and the last message is a user message containing "use a tool".
//! Arguments are built from the function's parameter schema as in the Gemini
//! mode. `n` choices are returned.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use serde_json::{json, Value};

use super::gemini::args_for_schema;
use super::server::{
    common_behaviour, error_value, invalid_argument, non_streaming, prepare, status_parts,
    unix_now, ErrorFraming, Plan, Target,
};
use super::{GoogleBehaviour, Shared};
use crate::chat::reply_text;
use crate::tokens::estimate_tokens;

pub(crate) async fn chat(
    State(shared): State<Arc<Shared>>,
    Path((version, project, location)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    if !matches!(version.as_str(), "v1" | "v1beta1") {
        return super::server::unknown_route(&shared, req);
    }
    let target = Target {
        project: &project,
        location: &location,
        resource: "endpoints/openapi".to_owned(),
        operation: "chat.completions",
        model: None,
        method: "google.cloud.aiplatform.v1.PredictionService.ChatCompletions",
        framing: ErrorFraming::Object,
    };
    let mut p = match prepare(&shared, req, target).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let chat = match validate(&p.body) {
        Ok(c) => c,
        Err(message) => return p.answer(invalid_argument(ErrorFraming::Object, &message)),
    };
    let reply = Reply::new(&shared, chat);
    let behaviour = shared.next_behaviour();
    if !reply.chat.stream {
        return non_streaming(p, behaviour, |chunks| reply.body(chunks)).await;
    }
    let behaviour = match common_behaviour(&mut p, behaviour, ErrorFraming::Object).await {
        Ok(resp) => return resp,
        Err(b) => b,
    };
    stream_plan(&reply, behaviour).into_response(p, "text/event-stream")
}

// ---- validation -----------------------------------------------------------------

#[derive(Debug, PartialEq)]
pub(crate) struct Chat {
    model: String,
    stream: bool,
    include_usage: bool,
    prompt_tokens: u64,
    max_tokens: Option<u64>,
    n: u32,
    /// Answer with this tool call (name, arguments) instead of text.
    tool: Option<(String, Value)>,
}

fn text_chars(content: &Value) -> usize {
    match content {
        Value::String(s) => s.chars().count(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(|t| t.chars().count())
            .sum(),
        _ => 0,
    }
}

fn positive(body: &Value, name: &str) -> Result<Option<u64>, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(format!("Invalid value for '{name}': {v}. It must be a positive integer.")),
        },
    }
}

pub(crate) fn validate(body: &[u8]) -> Result<Chat, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "Invalid JSON payload received. Unexpected token at line {}, column {}.",
            e.line(),
            e.column()
        )
    })?;
    if !v.is_object() {
        return Err("Invalid JSON payload received. Expected an object.".to_owned());
    }
    let model = match v.get("model") {
        Some(Value::String(m)) if m.contains('/') => m.clone(),
        Some(Value::String(m)) => {
            return Err(format!(
                "Model {m} is not a valid model name. The model name must be given as \
                 \"{{publisher}}/{{model}}\", e.g. \"google/gemini-2.0-flash\"."
            ))
        }
        _ => return Err("Missing required field: model.".to_owned()),
    };
    let messages = match v.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return Err("messages must not be empty.".to_owned()),
        _ => return Err("Missing required field: messages.".to_owned()),
    };
    let mut chars = 0;
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool" | "function") {
            return Err(format!(
                "Invalid role at messages[{i}]: {role:?}. Supported roles: system, developer, \
                 user, assistant, tool, function."
            ));
        }
        let content = m.get("content").unwrap_or(&Value::Null);
        match content {
            Value::String(_) | Value::Null => {}
            Value::Array(parts) => {
                for (j, part) in parts.iter().enumerate() {
                    let ty = part.get("type").and_then(Value::as_str).unwrap_or_default();
                    let ok = match ty {
                        "text" => part.get("text").is_some_and(Value::is_string),
                        "image_url" => part
                            .get("image_url")
                            .and_then(|u| u.get("url"))
                            .is_some_and(Value::is_string),
                        _ => false,
                    };
                    if !ok {
                        return Err(format!(
                            "Invalid content part at messages[{i}].content[{j}]: only text and \
                             image_url parts are supported."
                        ));
                    }
                }
            }
            other => {
                return Err(format!("Invalid content at messages[{i}]: {other}."));
            }
        }
        if role == "tool" && m.get("tool_call_id").and_then(Value::as_str).is_none() {
            return Err(format!("messages[{i}]: a tool message needs a tool_call_id."));
        }
        chars += text_chars(content);
    }
    let stream = match v.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("Invalid value for 'stream': {other}.")),
    };
    let include_usage = stream
        && v.get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let max_tokens = match positive(&v, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => positive(&v, "max_tokens")?,
    };
    let n = match positive(&v, "n")? {
        None => 1,
        Some(n) if n <= 8 => n as u32,
        Some(n) => return Err(format!("Invalid value for 'n': {n}. It must be at most 8.")),
    };

    let mut functions: Vec<(String, Value)> = Vec::new();
    if let Some(tools) = v.get("tools").filter(|t| !t.is_null()) {
        let Some(tools) = tools.as_array() else {
            return Err("Invalid value for 'tools': expected an array.".to_owned());
        };
        for (i, t) in tools.iter().enumerate() {
            let name = t.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            match (t.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) if !name.is_empty() => {
                    let params = t["function"].get("parameters").cloned().unwrap_or(Value::Null);
                    functions.push((name.to_owned(), params));
                }
                _ => {
                    return Err(format!(
                        "Invalid tool at tools[{i}]: expected {{\"type\": \"function\", \
                         \"function\": {{\"name\": ...}}}}."
                    ))
                }
            }
        }
    }
    enum Choice {
        Auto,
        None,
        Required,
        Named(String),
    }
    let choice = match v.get("tool_choice") {
        None | Some(Value::Null) => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Choice::Auto,
            "none" => Choice::None,
            "required" => Choice::Required,
            other => return Err(format!("Invalid value for 'tool_choice': {other:?}.")),
        },
        Some(obj) => {
            match obj.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
                Some(name) if functions.iter().any(|(n, _)| n == name) => {
                    Choice::Named(name.to_owned())
                }
                Some(name) => {
                    return Err(format!(
                        "tool_choice names function {name}, which is not in tools."
                    ))
                }
                None => return Err(format!("Invalid value for 'tool_choice': {obj}.")),
            }
        }
    };
    if !matches!(choice, Choice::Auto | Choice::None) && functions.is_empty() {
        return Err("tool_choice is set but no tools are given.".to_owned());
    }
    let last = messages.last();
    let last_is_user = last.and_then(|m| m.get("role")).and_then(Value::as_str) == Some("user");
    let asks_for_tool = last
        .and_then(|m| m.get("content"))
        .map(|c| match c {
            Value::String(s) => s.to_ascii_lowercase().contains("use a tool"),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .any(|t| t.to_ascii_lowercase().contains("use a tool")),
            _ => false,
        })
        .unwrap_or(false);
    let chosen = if functions.is_empty() || !last_is_user {
        None
    } else {
        match choice {
            Choice::None => None,
            Choice::Required => Some(functions[0].0.clone()),
            Choice::Named(name) => Some(name),
            Choice::Auto if asks_for_tool => Some(functions[0].0.clone()),
            Choice::Auto => None,
        }
    };
    let tool = chosen.map(|name| {
        let schema =
            functions.iter().find(|(n, _)| *n == name).map(|(_, s)| s.clone()).unwrap_or_default();
        let args = args_for_schema(&schema);
        (name, args)
    });
    Ok(Chat {
        model,
        stream,
        include_usage,
        prompt_tokens: estimate_tokens(chars),
        max_tokens,
        n,
        tool,
    })
}

// ---- the reply ----------------------------------------------------------------

struct Reply {
    hello: String,
    chat: Chat,
    id: String,
    created: u64,
    /// (call id, name, arguments as JSON text)
    tool: Option<(String, String, String)>,
}

impl Reply {
    fn new(shared: &Shared, mut chat: Chat) -> Self {
        let n = shared.next_id();
        let tool = chat.tool.take().map(|(name, args)| {
            let args = serde_json::to_string(&args).unwrap_or_else(|_| "{}".into());
            (format!("call_skyweave{n:014}"), name, args)
        });
        Reply {
            hello: shared.hello.clone(),
            chat,
            id: format!("chatcmpl-skyweave{n}"),
            created: unix_now(),
            tool,
        }
    }

    /// Text pieces for `chunks` and the finish reason.
    fn text_pieces(&self, chunks: u32) -> (Vec<String>, &'static str) {
        let (n, finish) = match self.chat.max_tokens {
            Some(max) if u64::from(chunks) > max => (max as u32, "length"),
            _ => (chunks, "stop"),
        };
        let full = reply_text(&self.hello, n);
        let mut pieces = Vec::with_capacity(n as usize);
        if n > 0 {
            pieces.push(self.hello.clone());
            let rest = &full[self.hello.len()..];
            pieces.extend(rest.split(' ').skip(1).map(|w| format!(" {w}")));
        }
        (pieces, finish)
    }

    fn usage(&self, per_choice: u64) -> Value {
        let completion = per_choice * u64::from(self.chat.n);
        json!({
            "prompt_tokens": self.chat.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.chat.prompt_tokens + completion,
        })
    }

    fn tool_call(&self, streamed: bool) -> Value {
        let Some((id, name, args)) = &self.tool else {
            return Value::Null;
        };
        let mut call = json!({
            "id": id,
            "type": "function",
            "function": {"name": name, "arguments": args},
        });
        if streamed {
            call["index"] = json!(0);
        }
        call
    }

    fn object(&self, object: &str, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.chat.model,
            "system_fingerprint": "",
            "choices": choices,
        })
    }

    fn choices(&self, f: impl Fn(u32) -> Value) -> Vec<Value> {
        (0..self.chat.n).map(f).collect()
    }

    fn body(&self, chunks: u32) -> Vec<u8> {
        let (message, finish, per_choice) = if self.tool.is_some() {
            let message = json!({"role": "assistant", "content": null, "tool_calls": [self.tool_call(false)]});
            (message, "tool_calls", u64::from(chunks.max(1)))
        } else {
            let (pieces, finish) = self.text_pieces(chunks);
            let message = json!({"role": "assistant", "content": pieces.concat()});
            (message, finish, pieces.len() as u64)
        };
        let choices = self.choices(
            |i| json!({"index": i, "message": message, "finish_reason": finish, "logprobs": null}),
        );
        let mut v = self.object("chat.completion", choices);
        v["usage"] = self.usage(per_choice);
        serde_json::to_vec(&v).unwrap_or_default()
    }

    fn chunk(&self, delta: &Value, finish: Option<&str>) -> Value {
        let choices = self.choices(
            |i| json!({"index": i, "delta": delta, "finish_reason": finish, "logprobs": null}),
        );
        self.object("chat.completion.chunk", choices)
    }

    /// The content chunks of a stream with `chunks` pieces, then the finish
    /// chunk (and the usage chunk when asked for).
    fn events(&self, chunks: u32) -> (Vec<Value>, Vec<Value>) {
        let (content, finish, per_choice) = if self.tool.is_some() {
            let delta = json!({"role": "assistant", "tool_calls": [self.tool_call(true)]});
            (vec![self.chunk(&delta, None)], "tool_calls", u64::from(chunks.max(1)))
        } else {
            let (pieces, finish) = self.text_pieces(chunks);
            let content = pieces
                .iter()
                .enumerate()
                .map(|(i, piece)| {
                    let delta = if i == 0 {
                        json!({"role": "assistant", "content": piece})
                    } else {
                        json!({"content": piece})
                    };
                    self.chunk(&delta, None)
                })
                .collect();
            (content, finish, pieces.len() as u64)
        };
        let mut tail = vec![self.chunk(&json!({}), Some(finish))];
        if self.chat.include_usage {
            let mut usage = self.object("chat.completion.chunk", Vec::new());
            usage["usage"] = self.usage(per_choice);
            tail.push(usage);
        }
        (content, tail)
    }
}

fn sse(v: &Value) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    out
}

const DONE: &[u8] = b"data: [DONE]\n\n";

fn stream_plan(reply: &Reply, behaviour: GoogleBehaviour) -> Plan {
    let mut plan = Plan::default();
    let zero = Duration::ZERO;
    match behaviour {
        GoogleBehaviour::Ok { ttft_ms, inter_chunk_ms, chunks } => {
            let (content, tail) = reply.events(chunks);
            for (i, event) in content.iter().chain(&tail).enumerate() {
                let delay = match i {
                    0 => ttft_ms,
                    i if i < content.len() => inter_chunk_ms,
                    _ => 0,
                };
                plan.data(Duration::from_millis(delay), sse(event));
            }
            plan.data(zero, DONE);
        }
        GoogleBehaviour::ErrorMidStream { after_chunks, status, google_status, message } => {
            if reply.tool.is_none() {
                let (content, _) = reply.events(after_chunks);
                for event in content.iter().take(after_chunks as usize) {
                    plan.data(zero, sse(event));
                }
            }
            let (http, code, message) =
                status_parts(status, google_status.as_deref(), message.as_deref());
            plan.data(zero, sse(&error_value(http, &code, &message, None)));
        }
        GoogleBehaviour::CutAfterChunks { chunks } => {
            if reply.tool.is_none() {
                let (content, _) = reply.events(chunks.saturating_add(1));
                for event in content.iter().take(chunks as usize) {
                    plan.data(zero, sse(event));
                }
            }
            plan.cut();
        }
        GoogleBehaviour::Malformed => {
            plan.data(zero, &b"data: {\"id\":\"chatcmpl-skyweave\",\"choices\":[{\"delta\":{\"content\":\"Hel\n\n"[..]);
            plan.data(zero, DONE);
        }
        // Answered by common_behaviour.
        GoogleBehaviour::Status { .. } | GoogleBehaviour::Hang | GoogleBehaviour::Reset => {}
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: Value) -> Chat {
        validate(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    fn err(body: Value) -> String {
        validate(&serde_json::to_vec(&body).unwrap()).unwrap_err()
    }

    fn tools() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"]
        }}}])
    }

    #[test]
    fn parses_and_chooses_tools() {
        let c = ok(json!({
            "model": "google/gemini-2.0-flash",
            "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": [{"type": "text", "text": "Say hello to me"}]}],
            "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 3, "n": 2,
        }));
        assert_eq!(
            (c.prompt_tokens, c.max_tokens, c.n, c.stream, c.include_usage),
            (7, Some(3), 2, true, true)
        );
        let user = |t: &str| json!([{"role": "user", "content": t}]);
        let c = ok(json!({"model": "google/x", "messages": user("use a tool"), "tools": tools()}));
        assert_eq!(c.tool, Some(("get_weather".into(), json!({"city": "skyweave"}))));
        let c = ok(
            json!({"model": "google/x", "messages": user("hi"), "tools": tools(), "tool_choice": "required"}),
        );
        assert!(c.tool.is_some());
        let c = ok(
            json!({"model": "google/x", "messages": user("use a tool"), "tools": tools(), "tool_choice": "none"}),
        );
        assert_eq!(c.tool, None);
    }

    #[test]
    fn validation_errors() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (json!({"messages": user}), "model"),
            (json!({"model": "gemini-2.0-flash", "messages": user}), "{publisher}/{model}"),
            (json!({"model": "google/x"}), "messages"),
            (json!({"model": "google/x", "messages": []}), "must not be empty"),
            (
                json!({"model": "google/x", "messages": [{"role": "model", "content": "x"}]}),
                "Invalid role",
            ),
            (
                json!({"model": "google/x", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "only text and image_url",
            ),
            (
                json!({"model": "google/x", "messages": [{"role": "tool", "content": "x"}]}),
                "tool_call_id",
            ),
            (json!({"model": "google/x", "messages": user, "max_tokens": 0}), "max_tokens"),
            (json!({"model": "google/x", "messages": user, "tools": [{"name": "f"}]}), "tools[0]"),
            (
                json!({"model": "google/x", "messages": user, "tools": tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                "not in tools",
            ),
        ];
        for (body, expected) in cases {
            let e = err(body.clone());
            assert!(e.contains(expected), "{body}: {e:?} should contain {expected:?}");
        }
    }
}
