//! `POST /{v1|v1beta1}/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`
//! and `...:streamGenerateContent` (`?alt=sse` for server-sent events).
//!
//! Requests are validated the way Vertex does it for the mistakes a
//! translating gateway can make, each answered with `400 INVALID_ARGUMENT`:
//! unknown fields (proto-JSON names are accepted in lowerCamelCase and
//! snake_case; a JSON-Schema keyword Vertex's `Schema` lacks, like
//! `$schema`, is an unknown field), values of the wrong type, missing or
//! empty `contents` / `parts`, roles other than `user` / `model`, a part with
//! no or two data fields, bytes that are not base64, a function response
//! that is not an object, function call / response turns out of order or
//! with mismatched counts, invalid function names, schema types or
//! function-calling modes, and out-of-range generation parameters.
//!
//! The reply is text ("Hello from {name} lorem ipsum ..."), or a function
//! call when the request declares functions and either
//! `toolConfig.functionCallingConfig.mode` is `ANY`, or the mode is `AUTO`
//! (the default) and the last content is a user turn (not a function
//! response) whose text contains "use a tool" (any case). The function is the
//! first of `allowedFunctionNames` (mode `ANY`), else the first declared; its
//! `args` has one member per property of its parameter schema (only the
//! `required` ones when the schema lists some): `"skyweave"`, `1`, `true`,
//! `[]`, `{}` or `null` by the property's type. `generationConfig.candidateCount`
//! candidates are returned, identical but for their `index`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use http::header::HeaderValue;
use serde_json::{json, Map, Value};

use super::oauth::random_token_suffix;
use super::server::{
    common_behaviour, error_value, invalid_argument, non_streaming, prepare, status_parts,
    unix_now, ErrorFraming, Plan, Target,
};
use super::{GoogleBehaviour, Shared};
use crate::chat::reply_text;
use crate::tokens::estimate_tokens;

/// How a stream is framed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Framing {
    /// `?alt=sse`: `data: {json}\r\n\r\n` per response.
    Sse,
    /// Without `alt=sse`: one JSON array, `[{json}`, `,\r\n{json}` ..., `]`.
    JsonArray,
}

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((version, project, location, publisher, model_action)): Path<(
        String,
        String,
        String,
        String,
        String,
    )>,
    req: Request,
) -> Response {
    let action = model_action.rsplit_once(':');
    let known_version = matches!(version.as_str(), "v1" | "v1beta1");
    let (model, stream) = match action {
        Some((model, "generateContent")) => (model.to_owned(), false),
        Some((model, "streamGenerateContent")) => (model.to_owned(), true),
        _ => return super::server::unknown_route(&shared, req),
    };
    if !known_version || publisher != "google" || model.is_empty() {
        return super::server::unknown_route(&shared, req);
    }
    let sse = req.uri().query().is_some_and(|q| {
        crate::query_param(q, "alt").is_some_and(|v| v.eq_ignore_ascii_case("sse"))
    });
    let framing = match (stream, sse) {
        (true, true) => Some(Framing::Sse),
        (true, false) => Some(Framing::JsonArray),
        (false, _) => None,
    };
    let errors = if framing == Some(Framing::JsonArray) {
        ErrorFraming::Array
    } else {
        ErrorFraming::Object
    };
    let target = Target {
        project: &project,
        location: &location,
        resource: format!("publishers/google/models/{model}"),
        operation: if stream { "streamGenerateContent" } else { "generateContent" },
        model: Some(model.clone()),
        method: if stream {
            "google.cloud.aiplatform.v1.PredictionService.StreamGenerateContent"
        } else {
            "google.cloud.aiplatform.v1.PredictionService.GenerateContent"
        },
        framing: errors,
    };
    let mut p = match prepare(&shared, req, target).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let conversation = match validate(&p.body) {
        Ok(c) => c,
        Err(message) => return p.answer(invalid_argument(errors, &message)),
    };
    let reply = Reply::new(&shared, &model, conversation);
    let behaviour = shared.next_behaviour();
    let Some(framing) = framing else {
        return non_streaming(p, behaviour, |chunks| reply.body(chunks)).await;
    };
    let behaviour = match common_behaviour(&mut p, behaviour, errors).await {
        Ok(resp) => return resp,
        Err(b) => b,
    };
    let plan = stream_plan(&reply, behaviour, framing);
    let content_type = match framing {
        Framing::Sse => "text/event-stream",
        Framing::JsonArray => "application/json; charset=UTF-8",
    };
    let mut resp = plan.into_response(p, content_type);
    resp.headers_mut().insert("content-disposition", HeaderValue::from_static("attachment"));
    resp
}

// ---- validation -----------------------------------------------------------------

/// What the reply needs from a valid request.
#[derive(Debug, PartialEq)]
pub(crate) struct Conversation {
    pub(crate) input_tokens: u64,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) candidates: u32,
    /// Answer with this function call (name, args) instead of text.
    pub(crate) tool: Option<(String, Value)>,
}

/// `generation_config` -> `generationConfig`.
fn camel(key: &str) -> Cow<'_, str> {
    if !key.contains('_') {
        return Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `generationConfig` -> `generation_config`, as Google's error paths name
/// fields.
fn snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn join(at: &str, field: &str) -> String {
    if at.is_empty() {
        snake(field)
    } else {
        format!("{at}.{}", snake(field))
    }
}

fn unknown_name(key: &str, at: &str) -> String {
    if at.is_empty() {
        format!("Invalid JSON payload received. Unknown name \"{key}\": Cannot find field.")
    } else {
        format!(
            "Invalid JSON payload received. Unknown name \"{key}\" at '{at}': Cannot find field."
        )
    }
}

fn not_repeating(key: &str, at: &str) -> String {
    if at.is_empty() {
        format!(
            "Invalid JSON payload received. Unknown name \"{key}\": Proto field is not \
             repeating, cannot start list."
        )
    } else {
        format!(
            "Invalid JSON payload received. Unknown name \"{key}\" at '{at}': Proto field is \
             not repeating, cannot start list."
        )
    }
}

fn shown(value: &Value) -> String {
    let s = value.to_string();
    if s.chars().count() > 80 {
        let cut: String = s.chars().take(77).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn invalid_value(at: &str, type_name: &str, value: &Value) -> String {
    format!("Invalid value at '{at}' ({type_name}), {}", shown(value))
}

fn message_type(name: &str) -> String {
    format!("type.googleapis.com/google.cloud.aiplatform.v1.{name}")
}

const NO_PARTS: &str = "Unable to submit request because it must include at least one parts \
     field, which describes the prompt input. Learn more: \
     https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/gemini";

/// An object's fields by lowerCamelCase name, unknown names refused.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    /// The object's own path (for error messages).
    at: String,
}

impl<'a> Fields<'a> {
    /// `value` must be an object whose keys are all in `allowed`.
    fn of(value: &'a Value, at: &str, type_name: &str, allowed: &[&str]) -> Result<Self, String> {
        let Some(obj) = value.as_object() else {
            return Err(invalid_value(at, &message_type(type_name), value));
        };
        for key in obj.keys() {
            if !allowed.contains(&camel(key).as_ref()) {
                return Err(unknown_name(key, at));
            }
        }
        Ok(Fields { obj, at: at.to_owned() })
    }

    /// The (non-null) value of a field given in either spelling.
    fn get(&self, name: &str) -> Option<&'a Value> {
        let snake_name = snake(name);
        self.obj.get(name).or_else(|| self.obj.get(&snake_name)).filter(|v| !v.is_null())
    }

    /// The key as the client spelled it (for "Unknown name" messages).
    fn key(&self, name: &str) -> String {
        if self.obj.contains_key(name) {
            name.to_owned()
        } else {
            snake(name)
        }
    }

    fn path(&self, name: &str) -> String {
        join(&self.at, name)
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Array(_)) => Err(not_repeating(&self.key(name), &self.at)),
            Some(v) => Err(invalid_value(&self.path(name), "TYPE_STRING", v)),
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Array(_)) => Err(not_repeating(&self.key(name), &self.at)),
            Some(v) => Err(invalid_value(&self.path(name), "TYPE_BOOL", v)),
        }
    }

    /// A number (proto JSON also takes numbers as strings).
    fn number(&self, name: &str, type_name: &str) -> Result<Option<f64>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => Ok(s.trim().parse().ok()),
            Some(Value::Array(_)) => Err(not_repeating(&self.key(name), &self.at)),
            Some(v) => Err(invalid_value(&self.path(name), type_name, v)),
        }
    }

    /// An integer (as a number or a string).
    fn integer(&self, name: &str) -> Result<Option<i64>, String> {
        match self.number(name, "TYPE_INT32")? {
            None => Ok(None),
            Some(f) if f.fract() == 0.0 => Ok(Some(f as i64)),
            Some(_) => Err(invalid_value(
                &self.path(name),
                "TYPE_INT32",
                self.get(name).unwrap_or(&Value::Null),
            )),
        }
    }

    /// A repeated field: an array (absent: empty).
    fn list(&self, name: &str, type_name: &str) -> Result<&'a [Value], String> {
        match self.get(name) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(v) => Err(invalid_value(&self.path(name), type_name, v)),
        }
    }

    /// A message field: an object, not a list.
    fn message(&self, name: &str) -> Result<Option<&'a Value>, String> {
        match self.get(name) {
            Some(Value::Array(_)) => Err(not_repeating(&self.key(name), &self.at)),
            other => Ok(other),
        }
    }
}

const REQUEST_FIELDS: [&str; 10] = [
    "contents",
    "systemInstruction",
    "cachedContent",
    "tools",
    "toolConfig",
    "labels",
    "safetySettings",
    "generationConfig",
    "modelArmorConfig",
    "model",
];

const PART_FIELDS: [&str; 11] = [
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
    "videoMetadata",
    "thought",
    "thoughtSignature",
    "mediaResolution",
];

/// The members of `Part`'s `data` oneof.
const PART_DATA: [&str; 7] = [
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
];

const GENERATION_CONFIG_FIELDS: [&str; 23] = [
    "temperature",
    "topP",
    "topK",
    "candidateCount",
    "maxOutputTokens",
    "stopSequences",
    "responseLogprobs",
    "logprobs",
    "presencePenalty",
    "frequencyPenalty",
    "seed",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "routingConfig",
    "audioTimestamp",
    "responseModalities",
    "mediaResolution",
    "speechConfig",
    "thinkingConfig",
    "modelConfig",
    "enableAffectiveDialog",
    "imageConfig",
];

const TOOL_FIELDS: [&str; 10] = [
    "functionDeclarations",
    "retrieval",
    "googleSearch",
    "googleSearchRetrieval",
    "codeExecution",
    "googleMaps",
    "enterpriseWebSearch",
    "urlContext",
    "computerUse",
    "parallelAiSearch",
];

const SCHEMA_FIELDS: [&str; 27] = [
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "default",
    "items",
    "minItems",
    "maxItems",
    "enum",
    "properties",
    "propertyOrdering",
    "required",
    "minProperties",
    "maxProperties",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "additionalProperties",
    "$ref",
    "$defs",
    "ref",
    "defs",
];

const SCHEMA_TYPES: [&str; 8] =
    ["TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"];

/// Lenient proto-JSON bytes: standard or URL-safe alphabet, padding optional.
fn is_base64(s: &str) -> bool {
    const CONFIG: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);
    STANDARD.decode(s).is_ok() || URL_SAFE.decode(s).is_ok()
}

/// What one content contributed.
struct Turn<'a> {
    role: &'a str,
    function_calls: usize,
    function_responses: usize,
    texts: Vec<&'a str>,
}

fn validate_content<'a>(value: &'a Value, at: &str, system: bool) -> Result<Turn<'a>, String> {
    let content = Fields::of(value, at, "Content", &["role", "parts"])?;
    let role = match content.string("role")? {
        None => "user",
        Some(r @ ("user" | "model")) => r,
        Some(_) if system => "user",
        Some(_) => return Err("Please use a valid role: user, model.".to_owned()),
    };
    let parts = content.list("parts", &message_type("Part"))?;
    if parts.is_empty() {
        return Err(NO_PARTS.to_owned());
    }
    let mut turn = Turn { role, function_calls: 0, function_responses: 0, texts: Vec::new() };
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{}[{j}]", content.path("parts"));
        let part = Fields::of(part, &at, "Part", &PART_FIELDS)?;
        let data: Vec<&str> = PART_DATA.iter().copied().filter(|f| part.get(f).is_some()).collect();
        match data[..] {
            [] => {
                return Err(format!(
                    "Invalid value at '{at}': a part must set one of text, inline_data, \
                     file_data, function_call, function_response, executable_code or \
                     code_execution_result."
                ))
            }
            [_] => {}
            [first, second, ..] => {
                return Err(format!(
                    "Invalid JSON payload received. Oneof field 'data' is already set at \
                     '{at}' by '{}'. Cannot set '{}'.",
                    snake(first),
                    snake(second)
                ))
            }
        }
        if let Some(text) = part.string("text")? {
            if text.is_empty() {
                return Err("Unable to submit request because it has an empty text parameter. \
                            Add a value to the parameter and try again. Learn more: \
                            https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/gemini"
                    .to_owned());
            }
            turn.texts.push(text);
        }
        part.bool("thought")?;
        if let Some(sig) = part.string("thoughtSignature")? {
            if !is_base64(sig) {
                return Err(invalid_value(
                    &part.path("thoughtSignature"),
                    "TYPE_BYTES",
                    &Value::String(format!("Base64 decoding failed for \"{sig}\"")),
                ));
            }
        }
        if let Some(blob) = part.message("inlineData")? {
            let blob = Fields::of(
                blob,
                &part.path("inlineData"),
                "Blob",
                &["mimeType", "data", "displayName"],
            )?;
            if blob.string("mimeType")?.is_none_or(str::is_empty) {
                return Err(format!("{}: required field is not set", blob.path("mimeType")));
            }
            match blob.string("data")? {
                None => return Err(format!("{}: required field is not set", blob.path("data"))),
                Some(data) if !is_base64(data) => {
                    let data: String = data.chars().take(40).collect();
                    return Err(format!(
                        "Invalid value at '{}' (TYPE_BYTES), Base64 decoding failed for \"{data}\"",
                        blob.path("data")
                    ));
                }
                Some(_) => {}
            }
            blob.string("displayName")?;
        }
        if let Some(file) = part.message("fileData")? {
            let file = Fields::of(
                file,
                &part.path("fileData"),
                "FileData",
                &["mimeType", "fileUri", "displayName"],
            )?;
            file.string("mimeType")?;
            if file.string("fileUri")?.is_none_or(str::is_empty) {
                return Err(format!("{}: required field is not set", file.path("fileUri")));
            }
        }
        if let Some(call) = part.message("functionCall")? {
            if system {
                return Err("System instruction only supports text parts.".to_owned());
            }
            let call = Fields::of(
                call,
                &part.path("functionCall"),
                "FunctionCall",
                &["id", "name", "args", "partialArgs", "willContinue"],
            )?;
            call.string("id")?;
            if call.string("name")?.is_none_or(str::is_empty) {
                return Err(format!("{}: required field is not set", call.path("name")));
            }
            if let Some(args) = call.message("args")? {
                if !args.is_object() {
                    return Err(invalid_value(
                        &call.path("args"),
                        "type.googleapis.com/google.protobuf.Struct",
                        args,
                    ));
                }
            }
            turn.function_calls += 1;
        }
        if let Some(response) = part.message("functionResponse")? {
            if system {
                return Err("System instruction only supports text parts.".to_owned());
            }
            let response = Fields::of(
                response,
                &part.path("functionResponse"),
                "FunctionResponse",
                &["id", "name", "response", "parts", "willContinue", "scheduling"],
            )?;
            response.string("id")?;
            if response.string("name")?.is_none_or(str::is_empty) {
                return Err(format!("{}: required field is not set", response.path("name")));
            }
            match response.message("response")? {
                None => {
                    return Err(format!("{}: required field is not set", response.path("response")))
                }
                Some(Value::Object(_)) => {}
                Some(other) => {
                    return Err(invalid_value(
                        &response.path("response"),
                        "type.googleapis.com/google.protobuf.Struct",
                        other,
                    ))
                }
            }
            turn.function_responses += 1;
        }
    }
    Ok(turn)
}

/// Checks a `Schema` (recursively); `at` is its path.
fn validate_schema(value: &Value, at: &str) -> Result<(), String> {
    let schema = Fields::of(value, at, "Schema", &SCHEMA_FIELDS)?;
    match schema.get("type") {
        None => {}
        Some(Value::String(t)) if SCHEMA_TYPES.iter().any(|k| k.eq_ignore_ascii_case(t)) => {}
        Some(Value::Array(_)) => return Err(not_repeating(&schema.key("type"), at)),
        Some(other) => {
            return Err(invalid_value(&schema.path("type"), &message_type("Type"), other))
        }
    }
    for (i, (_, sub)) in
        schema.message("properties")?.and_then(Value::as_object).into_iter().flatten().enumerate()
    {
        validate_schema(sub, &format!("{}[{i}].value", schema.path("properties")))?;
    }
    if let Some(items) = schema.message("items")? {
        validate_schema(items, &schema.path("items"))?;
    }
    for (i, sub) in schema.list("anyOf", &message_type("Schema"))?.iter().enumerate() {
        validate_schema(sub, &format!("{}[{i}]", schema.path("anyOf")))?;
    }
    for name in ["required", "propertyOrdering", "enum"] {
        for (i, v) in schema.list(name, "TYPE_STRING")?.iter().enumerate() {
            if !v.is_string() {
                return Err(invalid_value(
                    &format!("{}[{i}]", schema.path(name)),
                    "TYPE_STRING",
                    v,
                ));
            }
        }
    }
    Ok(())
}

fn valid_function_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

#[derive(Debug, PartialEq, Eq)]
enum Mode {
    Auto,
    Any,
    None,
}

/// The declared functions (name, parameter schema) and how to choose.
struct Functions {
    declared: Vec<(String, Value)>,
    mode: Mode,
    allowed: Vec<String>,
}

fn validate_tools(body: &Fields<'_>) -> Result<Functions, String> {
    let mut declared: Vec<(String, Value)> = Vec::new();
    for (i, tool) in body.list("tools", &message_type("Tool"))?.iter().enumerate() {
        let at = format!("tools[{i}]");
        let tool = Fields::of(tool, &at, "Tool", &TOOL_FIELDS)?;
        let declarations =
            tool.list("functionDeclarations", &message_type("FunctionDeclaration"))?;
        for (j, decl) in declarations.iter().enumerate() {
            let at = format!("{}[{j}]", tool.path("functionDeclarations"));
            let decl = Fields::of(
                decl,
                &at,
                "FunctionDeclaration",
                &[
                    "name",
                    "description",
                    "parameters",
                    "parametersJsonSchema",
                    "response",
                    "responseJsonSchema",
                ],
            )?;
            let name = decl.string("name")?.unwrap_or_default();
            if !valid_function_name(name) {
                return Err(format!(
                    "* GenerateContentRequest.{}: Invalid function name. Must start with a \
                     letter or an underscore. Must be alphameric (a-z, A-Z, 0-9), underscores \
                     (_), dots (.), colons (:), or dashes (-), with a maximum length of 64.",
                    decl.path("name")
                ));
            }
            if declared.iter().any(|(n, _)| n == name) {
                return Err(format!(
                    "* GenerateContentRequest.{}: Duplicate function declaration found: {name}",
                    decl.path("name")
                ));
            }
            decl.string("description")?;
            let parameters = decl.message("parameters")?;
            let json_schema = decl.get("parametersJsonSchema");
            if parameters.is_some() && json_schema.is_some() {
                return Err(format!(
                    "* GenerateContentRequest.{at}: parameters and parameters_json_schema cannot \
                     both be set."
                ));
            }
            if let Some(p) = parameters {
                validate_schema(p, &decl.path("parameters"))?;
            }
            if let Some(r) = decl.message("response")? {
                validate_schema(r, &decl.path("response"))?;
            }
            let schema = parameters.or(json_schema).cloned().unwrap_or(Value::Null);
            declared.push((name.to_owned(), schema));
        }
    }
    let mut mode = Mode::Auto;
    let mut allowed = Vec::new();
    if let Some(tc) = body.message("toolConfig")? {
        let tc = Fields::of(
            tc,
            "tool_config",
            "ToolConfig",
            &["functionCallingConfig", "retrievalConfig"],
        )?;
        if let Some(fc) = tc.message("functionCallingConfig")? {
            let fc = Fields::of(
                fc,
                &tc.path("functionCallingConfig"),
                "FunctionCallingConfig",
                &["mode", "allowedFunctionNames", "streamFunctionCallArguments"],
            )?;
            if let Some(m) = fc.get("mode") {
                mode = match m.as_str().map(str::to_ascii_uppercase).as_deref() {
                    Some("AUTO" | "MODE_UNSPECIFIED" | "VALIDATED") => Mode::Auto,
                    Some("ANY") => Mode::Any,
                    Some("NONE") => Mode::None,
                    _ => {
                        return Err(invalid_value(
                            &fc.path("mode"),
                            &message_type("FunctionCallingConfig.Mode"),
                            m,
                        ))
                    }
                };
            }
            for (i, n) in fc.list("allowedFunctionNames", "TYPE_STRING")?.iter().enumerate() {
                let Some(n) = n.as_str() else {
                    return Err(invalid_value(
                        &format!("{}[{i}]", fc.path("allowedFunctionNames")),
                        "TYPE_STRING",
                        n,
                    ));
                };
                if !declared.iter().any(|(d, _)| d == n) {
                    return Err(format!(
                        "Function {n} in tool_config.function_calling_config.\
                         allowed_function_names is not declared in tools."
                    ));
                }
                allowed.push(n.to_owned());
            }
            fc.bool("streamFunctionCallArguments")?;
            if !allowed.is_empty() && mode != Mode::Any {
                return Err("allowed_function_names should only be set when the function \
                            calling mode is ANY."
                    .to_owned());
            }
        }
    }
    if mode == Mode::Any && declared.is_empty() {
        return Err("Function calling config is set without function_declarations.".to_owned());
    }
    Ok(Functions { declared, mode, allowed })
}

fn range_error(field: &str, value: f64, low: &str, high: &str) -> String {
    format!(
        "Unable to submit request because it has a {field} value of {value} but the supported \
         range is from {low} to {high}. Update the value and try again."
    )
}

/// Returns (maxOutputTokens, candidateCount).
fn validate_generation_config(body: &Fields<'_>) -> Result<(Option<u64>, u32), String> {
    let Some(gc) = body.message("generationConfig")? else {
        return Ok((None, 1));
    };
    let gc = Fields::of(gc, "generation_config", "GenerationConfig", &GENERATION_CONFIG_FIELDS)?;
    if let Some(t) = gc.number("temperature", "TYPE_FLOAT")? {
        if !(0.0..2.0001).contains(&t) {
            return Err(range_error("temperature", t, "0 (inclusive)", "2.0001 (exclusive)"));
        }
    }
    if let Some(p) = gc.number("topP", "TYPE_FLOAT")? {
        if !(0.0..=1.0).contains(&p) {
            return Err(range_error("topP", p, "0 (inclusive)", "1 (inclusive)"));
        }
    }
    if let Some(k) = gc.number("topK", "TYPE_FLOAT")? {
        if k < 1.0 {
            return Err(range_error("topK", k, "1 (inclusive)", "41 (exclusive)"));
        }
    }
    for name in ["presencePenalty", "frequencyPenalty"] {
        if let Some(x) = gc.number(name, "TYPE_FLOAT")? {
            if !(-2.0..2.0).contains(&x) {
                return Err(range_error(name, x, "-2 (inclusive)", "2 (exclusive)"));
            }
        }
    }
    let max_tokens = match gc.integer("maxOutputTokens")? {
        None => None,
        Some(n) if (1..65537).contains(&n) => Some(n as u64),
        Some(n) => {
            return Err(range_error(
                "maxOutputTokens",
                n as f64,
                "1 (inclusive)",
                "65537 (exclusive)",
            ))
        }
    };
    let candidates = match gc.integer("candidateCount")? {
        None => 1,
        Some(n) if (1..=8).contains(&n) => n as u32,
        Some(n) => {
            return Err(range_error("candidateCount", n as f64, "1 (inclusive)", "9 (exclusive)"))
        }
    };
    gc.integer("seed")?;
    gc.integer("logprobs")?;
    gc.bool("responseLogprobs")?;
    gc.string("responseMimeType")?;
    for (i, s) in gc.list("stopSequences", "TYPE_STRING")?.iter().enumerate() {
        if !s.is_string() {
            return Err(invalid_value(
                &format!("{}[{i}]", gc.path("stopSequences")),
                "TYPE_STRING",
                s,
            ));
        }
    }
    if let Some(schema) = gc.message("responseSchema")? {
        validate_schema(schema, &gc.path("responseSchema"))?;
    }
    Ok((max_tokens, candidates))
}

pub(crate) fn validate(body: &[u8]) -> Result<Conversation, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "Invalid JSON payload received. Unexpected token at line {}, column {}.",
            e.line(),
            e.column()
        )
    })?;
    if !v.is_object() {
        return Err(format!(
            "Invalid JSON payload received. Expected an object, got {}.",
            shown(&v)
        ));
    }
    let body = Fields::of(&v, "", "GenerateContentRequest", &REQUEST_FIELDS)?;
    let functions = validate_tools(&body)?;
    let (max_tokens, candidates) = validate_generation_config(&body)?;
    for (i, s) in body.list("safetySettings", &message_type("SafetySetting"))?.iter().enumerate() {
        Fields::of(
            s,
            &format!("safety_settings[{i}]"),
            "SafetySetting",
            &["category", "threshold", "method"],
        )?;
    }
    body.string("cachedContent")?;
    let mut chars = 0;
    if let Some(system) = body.message("systemInstruction")? {
        let turn = validate_content(system, "system_instruction", true)?;
        chars += turn.texts.iter().map(|t| t.chars().count()).sum::<usize>();
    }
    let contents = body.list("contents", &message_type("Content"))?;
    if contents.is_empty() {
        return Err(NO_PARTS.to_owned());
    }
    let mut turns: Vec<Turn<'_>> = Vec::with_capacity(contents.len());
    for (i, c) in contents.iter().enumerate() {
        let turn = validate_content(c, &format!("contents[{i}]"), false)?;
        let previous = turns.last();
        if turn.function_calls > 0 {
            if turn.role != "model" || turn.function_responses > 0 {
                return Err("Please ensure that function call turn contains at least one \
                            function_call part which can not be mixed with function_response \
                            parts."
                    .to_owned());
            }
            if previous.is_none_or(|p| p.role != "user") {
                return Err("Please ensure that function call turn comes immediately after a \
                            user turn or after a function response turn."
                    .to_owned());
            }
        }
        if turn.function_responses > 0 {
            let calls = previous.filter(|p| p.role == "model").map_or(0, |p| p.function_calls);
            if turn.role != "user" || calls == 0 {
                return Err("Please ensure that function response turn comes immediately after a \
                            function call turn."
                    .to_owned());
            }
            if turn.function_responses != calls {
                return Err("Please ensure that the number of function response parts is equal \
                            to the number of function call parts of the function call turn."
                    .to_owned());
            }
        }
        chars += turn.texts.iter().map(|t| t.chars().count()).sum::<usize>();
        turns.push(turn);
    }

    let last = turns.last();
    let last_is_user = last.is_some_and(|t| t.role == "user");
    let answers_a_function = last.is_some_and(|t| t.function_responses > 0);
    let asks_for_tool = last.is_some_and(|t| {
        t.texts.iter().any(|text| text.to_ascii_lowercase().contains("use a tool"))
    });
    let tool = if functions.declared.is_empty() || !last_is_user || answers_a_function {
        None
    } else {
        let chosen = match functions.mode {
            Mode::None => None,
            Mode::Any => Some(
                functions
                    .allowed
                    .first()
                    .cloned()
                    .unwrap_or_else(|| functions.declared[0].0.clone()),
            ),
            Mode::Auto if asks_for_tool => Some(functions.declared[0].0.clone()),
            Mode::Auto => None,
        };
        chosen.map(|name| {
            let schema = functions
                .declared
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| s.clone())
                .unwrap_or(Value::Null);
            let args = args_for_schema(&schema);
            (name, args)
        })
    };
    Ok(Conversation { input_tokens: estimate_tokens(chars), max_tokens, candidates, tool })
}

/// Function-call arguments shaped after a parameter schema (see the module
/// docs). Types are matched case-insensitively (`STRING` or `string`).
pub(crate) fn args_for_schema(schema: &Value) -> Value {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Value::Object(Map::new());
    };
    let required: Option<HashSet<&str>> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect::<HashSet<_>>())
        .filter(|r| !r.is_empty());
    let mut out = Map::new();
    for (name, prop) in props {
        if required.as_ref().is_some_and(|r| !r.contains(name.as_str())) {
            continue;
        }
        let ty = match prop.get("type") {
            Some(Value::Array(types)) => {
                types.iter().filter_map(Value::as_str).find(|t| !t.eq_ignore_ascii_case("null"))
            }
            Some(t) => t.as_str(),
            None => None,
        };
        let value = match ty.map(str::to_ascii_lowercase).as_deref() {
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

/// `2025-08-18T13:55:15.123456Z` for a unix time in microseconds.
pub(crate) fn rfc3339_micros(unix_micros: u128) -> String {
    let secs = (unix_micros / 1_000_000) as i64;
    let micros = (unix_micros % 1_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(crate) struct Reply {
    hello: String,
    model: String,
    input_tokens: u64,
    max_tokens: Option<u64>,
    candidates: u32,
    tool: Option<(String, Value)>,
    response_id: String,
    create_time: String,
}

impl Reply {
    fn new(shared: &Shared, model: &str, c: Conversation) -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or_else(|_| u128::from(unix_now()) * 1_000_000);
        Reply {
            hello: shared.hello.clone(),
            model: model.to_owned(),
            input_tokens: c.input_tokens,
            max_tokens: c.max_tokens,
            candidates: c.candidates,
            tool: c.tool,
            response_id: random_token_suffix(),
            create_time: rfc3339_micros(micros),
        }
    }

    /// Text pieces for `chunks` and the finish reason.
    fn text_pieces(&self, chunks: u32) -> (Vec<String>, &'static str) {
        let (n, finish) = match self.max_tokens {
            Some(max) if u64::from(chunks) > max => (max as u32, "MAX_TOKENS"),
            _ => (chunks, "STOP"),
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

    fn usage(&self, output_per_candidate: u64) -> Value {
        let output = output_per_candidate * u64::from(self.candidates);
        json!({
            "promptTokenCount": self.input_tokens,
            "candidatesTokenCount": output,
            "totalTokenCount": self.input_tokens + output,
            "trafficType": "ON_DEMAND",
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.input_tokens}],
            "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": output}],
        })
    }

    /// One `GenerateContentResponse`: `part` in every candidate.
    fn response(&self, part: &Value, finish: Option<&str>, usage: Value, index: bool) -> Value {
        let candidates: Vec<Value> = (0..self.candidates)
            .map(|i| {
                let mut c = json!({"content": {"role": "model", "parts": [part]}});
                if let Some(finish) = finish {
                    c["finishReason"] = json!(finish);
                }
                if index {
                    c["index"] = json!(i);
                }
                c
            })
            .collect();
        json!({
            "candidates": candidates,
            "usageMetadata": usage,
            "modelVersion": self.model,
            "createTime": self.create_time,
            "responseId": self.response_id,
        })
    }

    fn function_call_part(name: &str, args: &Value) -> Value {
        json!({"functionCall": {"name": name, "args": args}})
    }

    /// The non-streaming body.
    fn body(&self, chunks: u32) -> Vec<u8> {
        let (part, finish, output) = match &self.tool {
            Some((name, args)) => {
                (Self::function_call_part(name, args), "STOP", u64::from(chunks.max(1)))
            }
            None => {
                let (pieces, finish) = self.text_pieces(chunks);
                (json!({"text": pieces.concat()}), finish, pieces.len() as u64)
            }
        };
        let v = self.response(&part, Some(finish), self.usage(output), true);
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// Every response of a complete stream with `chunks` pieces; only the
    /// last has a finish reason and the full usage.
    fn events(&self, chunks: u32) -> Vec<Value> {
        if let Some((name, args)) = &self.tool {
            let part = Self::function_call_part(name, args);
            return vec![self.response(
                &part,
                Some("STOP"),
                self.usage(u64::from(chunks.max(1))),
                false,
            )];
        }
        let (pieces, finish) = self.text_pieces(chunks);
        if pieces.is_empty() {
            return vec![self.response(&json!({"text": ""}), Some(finish), self.usage(0), false)];
        }
        let last = pieces.len() - 1;
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let part = json!({"text": piece});
                if i == last {
                    self.response(&part, Some(finish), self.usage(pieces.len() as u64), false)
                } else {
                    self.response(&part, None, json!({"trafficType": "ON_DEMAND"}), false)
                }
            })
            .collect()
    }

    /// The first `after` events of a longer stream (none with a finish
    /// reason). A function call is never part of a truncated stream.
    fn truncated(&self, after: u32) -> Vec<Value> {
        if self.tool.is_some() {
            return Vec::new();
        }
        let mut events = self.events(after.saturating_add(1));
        events.truncate(after as usize);
        events
    }
}

// ---- streaming ------------------------------------------------------------------

/// Frames successive stream elements.
struct Framer {
    framing: Framing,
    sent: usize,
}

impl Framer {
    fn element(&mut self, json: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(json.len() + 8);
        match self.framing {
            Framing::Sse => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(json);
                out.extend_from_slice(b"\r\n\r\n");
            }
            Framing::JsonArray => {
                out.extend_from_slice(if self.sent == 0 { b"[" } else { b",\r\n" });
                out.extend_from_slice(json);
            }
        }
        self.sent += 1;
        out
    }

    /// What ends a complete stream: nothing for SSE, `]` for an array.
    fn end(&self) -> Option<&'static [u8]> {
        match self.framing {
            Framing::Sse => None,
            Framing::JsonArray if self.sent == 0 => Some(b"[]"),
            Framing::JsonArray => Some(b"]"),
        }
    }
}

fn stream_plan(reply: &Reply, behaviour: GoogleBehaviour, framing: Framing) -> Plan {
    let mut plan = Plan::default();
    let mut framer = Framer { framing, sent: 0 };
    let zero = Duration::ZERO;
    let to_bytes = |v: &Value| serde_json::to_vec(v).unwrap_or_default();
    match behaviour {
        GoogleBehaviour::Ok { ttft_ms, inter_chunk_ms, chunks } => {
            for (i, event) in reply.events(chunks).iter().enumerate() {
                let delay = Duration::from_millis(if i == 0 { ttft_ms } else { inter_chunk_ms });
                plan.data(delay, framer.element(&to_bytes(event)));
            }
            if let Some(end) = framer.end() {
                plan.data(zero, end);
            }
        }
        GoogleBehaviour::ErrorMidStream { after_chunks, status, google_status, message } => {
            for event in reply.truncated(after_chunks) {
                plan.data(zero, framer.element(&to_bytes(&event)));
            }
            let (http, code, message) =
                status_parts(status, google_status.as_deref(), message.as_deref());
            let error = error_value(http, &code, &message, None);
            plan.data(zero, framer.element(&to_bytes(&error)));
            if let Some(end) = framer.end() {
                plan.data(zero, end);
            }
        }
        GoogleBehaviour::CutAfterChunks { chunks } => {
            for event in reply.truncated(chunks) {
                plan.data(zero, framer.element(&to_bytes(&event)));
            }
            plan.cut();
        }
        GoogleBehaviour::Malformed => {
            let broken = br#"{"candidates": [{"content": {"role": "model", "parts": [{"te"#;
            plan.data(zero, framer.element(broken));
            if let Some(end) = framer.end() {
                plan.data(zero, end);
            }
        }
        // Answered by common_behaviour.
        GoogleBehaviour::Status { .. } | GoogleBehaviour::Hang | GoogleBehaviour::Reset => {}
    }
    plan
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
        json!({"role": "user", "parts": [{"text": text}]})
    }

    fn tools() -> Value {
        json!([{"functionDeclarations": [
            {"name": "get_weather", "description": "Weather", "parameters": {
                "type": "OBJECT",
                "properties": {"city": {"type": "STRING"}, "days": {"type": "INTEGER"}, "metric": {"type": "boolean"}, "unit": {"type": "STRING"}},
                "required": ["city", "days", "metric"]
            }},
            {"name": "noop"}
        ]}])
    }

    #[test]
    fn counts_tokens_reads_config_and_accepts_snake_case() {
        let c = ok(json!({
            "system_instruction": {"parts": [{"text": "You are terse."}]},
            "contents": [user("Say hello to me")],
            "generation_config": {"max_output_tokens": 2, "temperature": 0.5, "topP": 1, "stop_sequences": ["x"], "candidateCount": "2"},
        }));
        assert_eq!(
            c,
            Conversation { input_tokens: 7, max_tokens: Some(2), candidates: 2, tool: None }
        );
    }

    #[test]
    fn function_call_chosen_by_text_or_mode() {
        let c = ok(json!({"contents": [user("please USE A TOOL")], "tools": tools()}));
        assert_eq!(
            c.tool,
            Some(("get_weather".into(), json!({"city": "skyweave", "days": 1, "metric": true})))
        );
        assert_eq!(ok(json!({"contents": [user("hi")], "tools": tools()})).tool, None);
        let any =
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["noop"]}});
        let c = ok(json!({"contents": [user("hi")], "tools": tools(), "toolConfig": any}));
        assert_eq!(c.tool, Some(("noop".into(), json!({}))));
        let none = json!({"functionCallingConfig": {"mode": "NONE"}});
        let c = ok(json!({"contents": [user("use a tool")], "tools": tools(), "toolConfig": none}));
        assert_eq!(c.tool, None);
    }

    #[test]
    fn function_turns_must_pair_up() {
        let call = json!({"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}
        ]});
        let response = |city: &str| json!({"functionResponse": {"name": "get_weather", "response": {"city": city, "sky": "clear"}}});
        let both = json!({"role": "user", "parts": [response("Paris"), response("Rome")]});
        let c = ok(json!({"contents": [user("use a tool"), call, both], "tools": tools()}));
        assert_eq!(c.tool, None, "a turn answering a function gets text");

        let one = json!({"role": "user", "parts": [response("Paris")]});
        let e = err(json!({"contents": [user("x"), call, one], "tools": tools()}));
        assert!(e.contains("number of function response parts is equal"), "{e}");
        let e =
            err(json!({"contents": [user("x"), {"role": "user", "parts": [response("Paris")]}]}));
        assert!(
            e.contains("function response turn comes immediately after a function call"),
            "{e}"
        );
        let e = err(json!({"contents": [call, both]}));
        assert!(e.contains("function call turn comes immediately after a user turn"), "{e}");
        let string_response = json!({"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": "sunny"}}]});
        let e = err(
            json!({"contents": [user("x"), {"role": "model", "parts": [{"functionCall": {"name": "get_weather"}}]}, string_response]}),
        );
        assert_eq!(
            e,
            "Invalid value at 'contents[2].parts[0].function_response.response' \
             (type.googleapis.com/google.protobuf.Struct), \"sunny\""
        );
    }

    #[test]
    fn validation_errors() {
        let cases = [
            (json!({}), "at least one parts field"),
            (json!({"contents": []}), "at least one parts field"),
            (json!({"contents": [{"role": "user", "parts": []}]}), "at least one parts field"),
            (json!({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}), "Please use a valid role: user, model."),
            (json!({"messages": [user("x")]}), "Unknown name \"messages\": Cannot find field."),
            (json!({"contents": [user("x")], "generationConfig": {"max_tokens": 5}}), "Unknown name \"max_tokens\" at 'generation_config': Cannot find field."),
            (json!({"contents": [{"role": "user", "parts": [{"type": "text", "text": "x"}]}]}), "Unknown name \"type\" at 'contents[0].parts[0]'"),
            (json!({"contents": [{"role": "user", "parts": [{"text": ""}]}]}), "empty text parameter"),
            (json!({"contents": [{"role": "user", "parts": [{"text": "a", "inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}]}), "Oneof field 'data' is already set"),
            (json!({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "data:image/png;base64,AAAA"}}]}]}), "Base64 decoding failed"),
            (json!({"contents": [{"role": "user", "parts": [{"inlineData": {"data": "AAAA"}}]}]}), "inline_data.mime_type: required field is not set"),
            (json!({"contents": "hi"}), "Invalid value at 'contents' (type.googleapis.com/google.cloud.aiplatform.v1.Content), \"hi\""),
            (json!({"contents": [user("x")], "generationConfig": {"temperature": 3}}), "temperature value of 3"),
            (json!({"contents": [user("x")], "generationConfig": {"temperature": "hot"}}), "'generation_config.temperature' (TYPE_FLOAT)"),
            (json!({"contents": [user("x")], "generationConfig": {"maxOutputTokens": 0}}), "maxOutputTokens value of 0"),
            (json!({"contents": [user("x")], "generationConfig": {"candidateCount": 9}}), "candidateCount"),
            (json!({"contents": [user("x")], "tools": [{"functionDeclarations": [{"name": "get weather"}]}]}), "Invalid function name"),
            (json!({"contents": [user("x")], "tools": [{"functionDeclarations": [{"name": "f"}, {"name": "f"}]}]}), "Duplicate function declaration"),
            (json!({"contents": [user("x")], "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"$schema": "x", "type": "object"}}]}]}), "Unknown name \"$schema\" at 'tools[0].function_declarations[0].parameters'"),
            (json!({"contents": [user("x")], "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": ["string", "null"]}}}}]}]}), "Unknown name \"type\" at 'tools[0].function_declarations[0].parameters.properties[0].value': Proto field is not repeating"),
            (json!({"contents": [user("x")], "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "dict"}}]}]}), "(type.googleapis.com/google.cloud.aiplatform.v1.Type), \"dict\""),
            (json!({"contents": [user("x")], "tools": [{"type": "function", "function": {"name": "f"}}]}), "Unknown name \"function\" at 'tools[0]'"),
            (json!({"contents": [user("x")], "tools": tools(), "toolConfig": {"functionCallingConfig": {"mode": "required"}}}), "FunctionCallingConfig.Mode), \"required\""),
            (json!({"contents": [user("x")], "tools": tools(), "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["nope"]}}}), "nope"),
            (json!({"contents": [user("x")], "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}), "without function_declarations"),
            (json!({"contents": [user("x")], "systemInstruction": "be terse"}), "Invalid value at 'system_instruction'"),
            (json!({"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": []}}]}]}), "Proto field is not repeating"),
        ];
        for (body, expected) in cases {
            let e = err(body.clone());
            assert!(e.contains(expected), "{body}: {e:?} should contain {expected:?}");
        }
        assert!(validate(b"not json").unwrap_err().starts_with("Invalid JSON payload received."));
        // Images with proper base64 (either alphabet, padding optional) pass.
        ok(
            json!({"contents": [{"role": "user", "parts": [{"text": "what is it"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}, {"inline_data": {"mime_type": "image/png", "data": "iVBORw0KGgo"}}]}]}),
        );
        // A JSON schema goes in parametersJsonSchema.
        let c = ok(
            json!({"contents": [user("use a tool")], "tools": [{"functionDeclarations": [{"name": "f", "parametersJsonSchema": {"$schema": "x", "type": "object", "properties": {"q": {"type": ["string", "null"]}}}}]}]}),
        );
        assert_eq!(c.tool, Some(("f".into(), json!({"q": "skyweave"}))));
    }

    #[test]
    fn names_and_times() {
        assert_eq!(camel("generation_config"), "generationConfig");
        assert_eq!(camel("topP"), "topP");
        assert_eq!(snake("functionDeclarations"), "function_declarations");
        assert!(valid_function_name("get_weather.v2:x-y"));
        assert!(!valid_function_name("1abc"));
        assert!(!valid_function_name(&"a".repeat(65)));
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(1_755_525_315_066_123), "2025-08-18T13:55:15.066123Z");
        assert_eq!(rfc3339_micros(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
    }
}
