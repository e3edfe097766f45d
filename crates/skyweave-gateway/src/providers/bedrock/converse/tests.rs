//! Data-driven translation tests: OpenAI request in → Converse request out,
//! Converse response in → OpenAI response out, recorded ConverseStream
//! events in → chunks out, and error classification.

use super::*;
use crate::providers::bedrock::eventstream::test_support::{encode, event};
use crate::providers::bedrock::eventstream::{Decoder, HeaderValue};

const MODEL: &str = "anthropic.claude-3-5-haiku";
const ID: &str = "chatcmpl-test";
const CREATED: u64 = 1_700_000_000;

/// One check for both directions. An input with an `output` member is a
/// Converse response (translated to a chat completion); anything else is an
/// OpenAI request (translated to Converse). An expected
/// `{"error": {"param": ..., "message": ...}}` wants a [`TranslateError`]
/// with that param whose message contains that text.
fn check(input: &str, expected: &str) {
    let input: Value = serde_json::from_str(input).expect("the input is JSON");
    let expected: Value = serde_json::from_str(expected).expect("the expectation is JSON");
    let result = if input.get("output").is_some() {
        from_converse(input.to_string().as_bytes(), MODEL, ID, CREATED).map(|(body, usage)| {
            assert_eq!(body["usage"]["prompt_tokens"], usage.prompt_tokens, "usage agrees");
            assert_eq!(body["usage"]["completion_tokens"], usage.completion_tokens);
            body
        })
    } else {
        let Value::Object(body) = &input else { panic!("a request is an object") };
        to_converse(body)
    };
    match (result, expected.get("error")) {
        (Ok(out), None) => assert_eq!(
            out,
            expected,
            "\n   got: {}\nwanted: {}\n input: {input}",
            serde_json::to_string_pretty(&out).unwrap(),
            serde_json::to_string_pretty(&expected).unwrap()
        ),
        (Err(error), Some(want)) => {
            assert_eq!(error.param.as_deref(), want["param"].as_str(), "{error:?}\n{input}");
            let part = want["message"].as_str().expect("an expected message fragment");
            assert!(error.message.contains(part), "{:?} lacks {part:?}", error.message);
        }
        (Ok(out), Some(_)) => panic!("wanted an error for {input}, got {out}"),
        (Err(error), None) => panic!("unexpected error {error:?} for {input}"),
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

#[test]
fn request_system_and_text() {
    check(
        r#"{"model":"gpt-4o","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"developer","content":[{"type":"text","text":"Answer in French."}]},
            {"role":"user","content":"Hello"}]}"#,
        r#"{"system":[{"text":"Be brief."},{"text":"Answer in French."}],
            "messages":[{"role":"user","content":[{"text":"Hello"}]}]}"#,
    );
    // A system message later in the conversation still goes to `system`.
    check(
        r#"{"messages":[{"role":"user","content":"a"},{"role":"system","content":"late"}]}"#,
        r#"{"system":[{"text":"late"}],"messages":[{"role":"user","content":[{"text":"a"}]}]}"#,
    );
    // Empty text parts are left out (Bedrock refuses blank text).
    check(
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":""},{"type":"text","text":"x"}]}]}"#,
        r#"{"messages":[{"role":"user","content":[{"text":"x"}]}]}"#,
    );
}

#[test]
fn request_inference_config() {
    check(
        r#"{"messages":[{"role":"user","content":"hi"}],
            "max_tokens":256,"temperature":0.2,"top_p":0.9,"stop":"END"}"#,
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],
            "inferenceConfig":{"maxTokens":256,"temperature":0.2,"topP":0.9,"stopSequences":["END"]}}"#,
    );
    check(
        r#"{"messages":[{"role":"user","content":"hi"}],
            "max_tokens":10,"max_completion_tokens":20,"stop":["a","b"],"temperature":1}"#,
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],
            "inferenceConfig":{"maxTokens":20,"stopSequences":["a","b"],"temperature":1}}"#,
    );
    check(
        r#"{"messages":[{"role":"user","content":"hi"}],"stop":[],"max_tokens":null}"#,
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
    );
}

#[test]
fn request_multi_turn_merges_same_role_messages() {
    check(
        r#"{"messages":[
            {"role":"user","content":"one"},
            {"role":"user","content":[{"type":"text","text":"two"}]},
            {"role":"assistant","content":"three"},
            {"role":"assistant","content":[{"type":"text","text":"four"},{"type":"refusal","refusal":"no"}]},
            {"role":"user","content":"five","name":"alice"}]}"#,
        r#"{"messages":[
            {"role":"user","content":[{"text":"one"},{"text":"two"}]},
            {"role":"assistant","content":[{"text":"three"},{"text":"four"},{"text":"no"}]},
            {"role":"user","content":[{"text":"five"}]}]}"#,
    );
}

#[test]
fn request_images() {
    check(
        r#"{"messages":[{"role":"user","content":[
            {"type":"text","text":"What is this?"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo=","detail":"high"}},
            {"type":"image_url","image_url":{"url":"data:image/jpg;base64,/9j/4AAQ"}},
            {"type":"image_url","image_url":{"url":"data:IMAGE/WEBP;base64,UklGRg=="}},
            {"type":"image_url","image_url":{"url":"data:image/gif;base64,R0lGODlh"}}]}]}"#,
        r#"{"messages":[{"role":"user","content":[
            {"text":"What is this?"},
            {"image":{"format":"png","source":{"bytes":"iVBORw0KGgo="}}},
            {"image":{"format":"jpeg","source":{"bytes":"/9j/4AAQ"}}},
            {"image":{"format":"webp","source":{"bytes":"UklGRg=="}}},
            {"image":{"format":"gif","source":{"bytes":"R0lGODlh"}}}]}]}"#,
    );
    let image = |url: &str| {
        format!(
            r#"{{"messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"{url}"}}}}]}}]}}"#
        )
    };
    let param = "messages[0].content[0].image_url.url";
    for (url, message) in [
        ("https://example.com/cat.png", "Bedrock takes images as bytes"),
        ("HTTP://example.com/cat.png", "Bedrock takes images as bytes"),
        ("data:image/bmp;base64,Qk0=", "PNG, JPEG, GIF or WebP only"),
        ("data:image/png;base64,not base64!", "not valid base64"),
        ("data:image/png,rawbytes", "data:image/...;base64,"),
        ("ftp://example.com/cat.png", "data:image/...;base64,"),
    ] {
        check(&image(url), &json!({ "error": { "param": param, "message": message } }).to_string());
    }
    check(
        r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#,
        r#"{"error":{"param":"messages[0].content[0].image_url.url","message":"needs `image_url.url`"}}"#,
    );
}

#[test]
fn request_tools_and_tool_choice() {
    let tools = r#""tools":[
        {"type":"function","function":{"name":"get_weather","description":"Weather for a city",
         "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]},
         "strict":true}},
        {"type":"function","function":{"name":"now","description":""}}]"#;
    let specs = r#"[
        {"toolSpec":{"name":"get_weather","description":"Weather for a city",
         "inputSchema":{"json":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}},
         "strict":true}},
        {"toolSpec":{"name":"now","inputSchema":{"json":{"type":"object","properties":{}}}}}]"#;
    let user = r#"{"role":"user","content":"Weather in Paris?"}"#;
    let turn = r#"{"role":"user","content":[{"text":"Weather in Paris?"}]}"#;
    for (choice, converse_choice) in [
        ("", ""),
        (r#","tool_choice":null"#, ""),
        (r#","tool_choice":"auto""#, r#","toolChoice":{"auto":{}}"#),
        (r#","tool_choice":"required""#, r#","toolChoice":{"any":{}}"#),
        (
            r#","tool_choice":{"type":"function","function":{"name":"now"}}"#,
            r#","toolChoice":{"tool":{"name":"now"}}"#,
        ),
    ] {
        check(
            &format!(r#"{{"messages":[{user}],{tools}{choice}}}"#),
            &format!(
                r#"{{"messages":[{turn}],"toolConfig":{{"tools":{specs}{converse_choice}}}}}"#
            ),
        );
    }
    // "none" sends no tools at all.
    check(
        &format!(r#"{{"messages":[{user}],{tools},"tool_choice":"none"}}"#),
        &format!(r#"{{"messages":[{turn}]}}"#),
    );
    // "auto" without tools has nothing to choose from.
    check(
        &format!(r#"{{"messages":[{user}],"tool_choice":"auto","tools":[]}}"#),
        &format!(r#"{{"messages":[{turn}]}}"#),
    );
}

#[test]
fn request_tool_calls_and_results() {
    check(
        r#"{"messages":[
            {"role":"user","content":"Weather in Paris and Rome?"},
            {"role":"assistant","content":"Checking.","tool_calls":[
                {"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
                {"id":"call_2","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Rome\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"{\"temp\":21}"},
            {"role":"tool","tool_call_id":"call_2","content":[{"type":"text","text":"sunny, 25C"}]},
            {"role":"user","content":"Thanks. Which is warmer?"},
            {"role":"assistant","content":null,"tool_calls":[
                {"id":"call_3","type":"function","function":{"name":"now","arguments":""}}]},
            {"role":"tool","tool_call_id":"call_3","content":"12:00"}],
            "tools":[{"type":"function","function":{"name":"get_weather"}},
                     {"type":"function","function":{"name":"now"}}]}"#,
        r#"{"messages":[
            {"role":"user","content":[{"text":"Weather in Paris and Rome?"}]},
            {"role":"assistant","content":[
                {"text":"Checking."},
                {"toolUse":{"toolUseId":"call_1","name":"get_weather","input":{"city":"Paris"}}},
                {"toolUse":{"toolUseId":"call_2","name":"get_weather","input":{"city":"Rome"}}}]},
            {"role":"user","content":[
                {"toolResult":{"toolUseId":"call_1","content":[{"json":{"temp":21}}]}},
                {"toolResult":{"toolUseId":"call_2","content":[{"text":"sunny, 25C"}]}},
                {"text":"Thanks. Which is warmer?"}]},
            {"role":"assistant","content":[
                {"toolUse":{"toolUseId":"call_3","name":"now","input":{}}}]},
            {"role":"user","content":[
                {"toolResult":{"toolUseId":"call_3","content":[{"text":"12:00"}]}}]}],
            "toolConfig":{"tools":[
                {"toolSpec":{"name":"get_weather","inputSchema":{"json":{"type":"object","properties":{}}}}},
                {"toolSpec":{"name":"now","inputSchema":{"json":{"type":"object","properties":{}}}}}]}}"#,
    );
}

#[test]
fn request_response_format() {
    check(
        r#"{"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema",
            "json_schema":{"name":"answer","description":"The answer","strict":true,
            "schema":{"type":"object","properties":{"a":{"type":"integer"}}}}}}"#,
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],
            "outputConfig":{"textFormat":{"type":"json_schema","structure":{"jsonSchema":{
            "name":"answer","description":"The answer",
            "schema":"{\"properties\":{\"a\":{\"type\":\"integer\"}},\"type\":\"object\"}"}}}}}"#,
    );
    check(
        r#"{"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"text"}}"#,
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
    );
}

#[test]
fn request_harmless_fields_are_ignored() {
    check(
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],
            "stream":true,"stream_options":{"include_usage":true},"user":"u-1","safety_identifier":"s",
            "seed":42,"metadata":{"k":"v"},"store":false,"service_tier":"auto","prompt_cache_key":"p",
            "prompt_cache_retention":"24h","n":1,"logprobs":false,"top_logprobs":0,
            "frequency_penalty":0,"presence_penalty":0.0,"logit_bias":{},"parallel_tool_calls":true,
            "modalities":["text"],"audio":null,"reasoning_effort":null,"top_k":null}"#,
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
    );
}

#[test]
fn request_untranslatable_fields_are_errors() {
    for (field, value, message) in [
        ("n", "2", "single choice"),
        ("logprobs", "true", "log probabilities"),
        ("top_logprobs", "3", "log probabilities"),
        ("frequency_penalty", "0.5", "penalty"),
        ("presence_penalty", "-1", "penalty"),
        ("logit_bias", r#"{"50256":-100}"#, "logit bias"),
        ("parallel_tool_calls", "false", "parallel tool calls"),
        ("modalities", r#"["text","audio"]"#, "text only"),
        ("audio", r#"{"voice":"alloy","format":"mp3"}"#, "text only"),
        ("prediction", r#"{"type":"content","content":"x"}"#, "predicted outputs"),
        ("reasoning_effort", r#""high""#, "per model"),
        ("verbosity", r#""low""#, "verbosity"),
        ("web_search_options", "{}", "web search"),
        ("functions", r#"[{"name":"f"}]"#, "use `tools`"),
        ("function_call", r#""auto""#, "use `tools`"),
        ("top_k", "40", "unknown parameter `top_k`"),
        ("temperature", "1.5", "between 0 and 1"),
        ("temperature", r#""hot""#, "between 0 and 1"),
        ("top_p", "2", "between 0 and 1"),
        ("max_tokens", "0", "positive integer"),
        ("max_completion_tokens", "-5", "positive integer"),
        ("max_tokens", "1e12", "positive integer"),
        ("stop", r#"[""]"#, "non-empty strings"),
        ("stop", "[1]", "non-empty strings"),
        ("stop", "7", "a string or an array"),
        ("response_format", r#"{"type":"json_object"}"#, "no schema-free JSON mode"),
        (
            "response_format",
            r#"{"type":"json_schema","json_schema":{"name":"x"}}"#,
            "needs `json_schema.schema`",
        ),
        ("response_format", r#"{"type":"yaml"}"#, "`text` or `json_schema`"),
        ("tools", r#"{"type":"function"}"#, "must be an array"),
        ("tool_choice", r#""required""#, "requires `tools`"),
        ("tool_choice", r#""sometimes""#, "unknown `tool_choice`"),
        ("tool_choice", r#"{"type":"allowed_tools","allowed_tools":{}}"#, "other forms"),
    ] {
        check(
            &format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"{field}":{value}}}"#),
            &json!({ "error": { "param": field, "message": message } }).to_string(),
        );
    }
}

#[test]
fn request_untranslatable_messages_are_errors() {
    let tool = r#"{"type":"function","function":{"name":"f"}}"#;
    for (request, param, message) in [
        (r#"{"model":"m"}"#.to_string(), "messages", "must be an array"),
        (r#"{"messages":["hi"]}"#.to_string(), "messages[0]", "must be an object"),
        (r#"{"messages":[{"content":"hi"}]}"#.to_string(), "messages[0].role", "needs a `role`"),
        (
            r#"{"messages":[{"role":"function","name":"f","content":"x"}]}"#.to_string(),
            "messages[0].role",
            "deprecated `function` role",
        ),
        (r#"{"messages":[{"role":"robot","content":"x"}]}"#.to_string(), "messages[0].role", "unknown role `robot`"),
        (r#"{"messages":[{"role":"user","content":""}]}"#.to_string(), "messages[0].content", "non-empty content"),
        (r#"{"messages":[{"role":"user","content":42}]}"#.to_string(), "messages[0].content", "a string or an array"),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"","format":"wav"}}]}]}"#
                .to_string(),
            "messages[0].content[0]",
            "audio input",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"f"}}]}]}"#.to_string(),
            "messages[0].content[0]",
            "file parts",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"video"}]}]}"#.to_string(),
            "messages[0].content[0].type",
            "unknown content part type",
        ),
        (
            r#"{"messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"data:,"}}]}]}"#
                .to_string(),
            "messages[0].content[0]",
            "only text",
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":null}]}"#.to_string(),
            "messages[1].content",
            "content or tool calls",
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"x","function_call":{"name":"f","arguments":"{}"}}]}"#
                .to_string(),
            "messages[1].function_call",
            "cannot be translated",
        ),
        (
            format!(
                r#"{{"tools":[{tool}],"messages":[{{"role":"user","content":"hi"}},{{"role":"assistant","tool_calls":[{{"id":"c1","type":"function","function":{{"name":"f","arguments":"{{city: Paris"}}}}]}}]}}"#
            ),
            "messages[1].tool_calls[0].function.arguments",
            "are not JSON",
        ),
        (
            format!(
                r#"{{"tools":[{tool}],"messages":[{{"role":"user","content":"hi"}},{{"role":"assistant","tool_calls":[{{"type":"function","function":{{"name":"f","arguments":"{{}}"}}}}]}}]}}"#
            ),
            "messages[1].tool_calls[0].id",
            "needs an `id`",
        ),
        (
            format!(r#"{{"tools":[{tool}],"messages":[{{"role":"tool","content":"x"}}]}}"#),
            "messages[0].tool_call_id",
            "needs `tool_call_id`",
        ),
        (
            format!(r#"{{"tools":[{tool}],"messages":[{{"role":"tool","tool_call_id":"c1"}}]}}"#),
            "messages[0].content",
            "needs `content`",
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"custom","custom":{"name":"x"}}]}"#
                .to_string(),
            "tools[0].type",
            "only `function` tools",
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{}}]}"#
                .to_string(),
            "tools[0].function.name",
            "needs a `name`",
        ),
        (
            format!(
                r#"{{"messages":[{{"role":"user","content":"hi"}}],"tools":[{tool}],"tool_choice":{{"type":"function","function":{{"name":"g"}}}}}}"#
            ),
            "tool_choice",
            "not in `tools`",
        ),
        (
            format!(
                r#"{{"tools":[{tool}],"tool_choice":"none","messages":[{{"role":"user","content":"hi"}},{{"role":"assistant","tool_calls":[{{"id":"c1","type":"function","function":{{"name":"f","arguments":"{{}}"}}}}]}},{{"role":"tool","tool_call_id":"c1","content":"ok"}}]}}"#
            ),
            "tool_choice",
            "cannot forbid",
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"ok"}]}"#
                .to_string(),
            "tools",
            "requires their tool definitions",
        ),
    ] {
        check(&request, &json!({ "error": { "param": param, "message": message } }).to_string());
    }
}

#[test]
fn translate_errors_become_openai_shaped_400s() {
    let error = TranslateError::param("n", "`n` is not supported").into_invalid_request(PROTOCOL);
    // Another deployment of the model may be able to express it; if none
    // can, the gateway returns this 400.
    assert_eq!(error.kind, FailureKind::Unsupported);
    assert!(error.kind.is_retryable() && !error.kind.counts_against_deployment());
    assert_eq!(error.status, Some(400));
    assert_eq!(
        error.client_error,
        Some(json!({
            "message": "`n` is not supported",
            "type": "invalid_request_error",
            "param": "n",
            "code": null,
        }))
    );
    let protocol = TranslateError::upstream("no usage").into_protocol_error(PROTOCOL);
    assert_eq!(protocol.kind, FailureKind::Protocol);
    assert!(protocol.message.contains("no usage"));
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

#[test]
fn response_text() {
    check(
        r#"{"output":{"message":{"role":"assistant","content":[{"text":"Bonjour"},{"text":" !"}]}},
            "stopReason":"end_turn","usage":{"inputTokens":12,"outputTokens":3,"totalTokens":15},
            "metrics":{"latencyMs":321}}"#,
        r#"{"id":"chatcmpl-test","object":"chat.completion","created":1700000000,
            "model":"anthropic.claude-3-5-haiku","choices":[{"index":0,
            "message":{"role":"assistant","content":"Bonjour !"},"logprobs":null,"finish_reason":"stop"}],
            "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#,
    );
}

#[test]
fn response_tool_calls() {
    check(
        r#"{"output":{"message":{"role":"assistant","content":[
            {"text":"Let me check."},
            {"toolUse":{"toolUseId":"tooluse_1","name":"get_weather","input":{"city":"Paris"}}},
            {"toolUse":{"toolUseId":"tooluse_2","name":"now","input":{}}}]}},
            "stopReason":"tool_use","usage":{"inputTokens":30,"outputTokens":20,"totalTokens":50}}"#,
        r#"{"id":"chatcmpl-test","object":"chat.completion","created":1700000000,
            "model":"anthropic.claude-3-5-haiku","choices":[{"index":0,"message":{
            "role":"assistant","content":"Let me check.","tool_calls":[
            {"id":"tooluse_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
            {"id":"tooluse_2","type":"function","function":{"name":"now","arguments":"{}"}}]},
            "logprobs":null,"finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":30,"completion_tokens":20,"total_tokens":50}}"#,
    );
    // Tool calls alone: `content` is null, as OpenAI sends it.
    check(
        r#"{"output":{"message":{"role":"assistant","content":[
            {"reasoningContent":{"reasoningText":{"text":"thinking"}}},
            {"toolUse":{"toolUseId":"t","name":"f","input":{"a":[1,2]}}}]}},
            "stopReason":"tool_use","usage":{"inputTokens":1,"outputTokens":2,"totalTokens":3}}"#,
        r#"{"id":"chatcmpl-test","object":"chat.completion","created":1700000000,
            "model":"anthropic.claude-3-5-haiku","choices":[{"index":0,"message":{
            "role":"assistant","content":null,"tool_calls":[
            {"id":"t","type":"function","function":{"name":"f","arguments":"{\"a\":[1,2]}"}}]},
            "logprobs":null,"finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
    );
}

#[test]
fn response_stop_reasons_and_usage() {
    for (stop_reason, finish_reason) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("some_future_reason", "stop"),
    ] {
        check(
            &format!(
                r#"{{"output":{{"message":{{"role":"assistant","content":[{{"text":"x"}}]}}}},
                "stopReason":"{stop_reason}","usage":{{"inputTokens":5,"outputTokens":1,"totalTokens":6}}}}"#
            ),
            &format!(
                r#"{{"id":"chatcmpl-test","object":"chat.completion","created":1700000000,
                "model":"anthropic.claude-3-5-haiku","choices":[{{"index":0,
                "message":{{"role":"assistant","content":"x"}},"logprobs":null,"finish_reason":"{finish_reason}"}}],
                "usage":{{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}}}"#
            ),
        );
    }
    // Cache reads and writes are counted apart by Bedrock, within the prompt by OpenAI.
    check(
        r#"{"output":{"message":{"role":"assistant","content":[]}},"stopReason":"end_turn",
            "usage":{"inputTokens":10,"outputTokens":4,"totalTokens":114,
            "cacheReadInputTokens":80,"cacheWriteInputTokens":20}}"#,
        r#"{"id":"chatcmpl-test","object":"chat.completion","created":1700000000,
            "model":"anthropic.claude-3-5-haiku","choices":[{"index":0,
            "message":{"role":"assistant","content":""},"logprobs":null,"finish_reason":"stop"}],
            "usage":{"prompt_tokens":110,"completion_tokens":4,"total_tokens":114,
            "prompt_tokens_details":{"cached_tokens":80}}}"#,
    );
}

#[test]
fn response_errors() {
    let usage = r#""usage":{"inputTokens":1,"outputTokens":1,"totalTokens":2}"#;
    for (response, message) in [
        (r#"{"output":{}}"#.to_string(), "no `output.message.content`"),
        (
            format!(r#"{{"output":{{"message":{{"content":[{{"text":"x"}}]}}}},{usage}}}"#),
            "no `stopReason`",
        ),
        (
            r#"{"output":{"message":{"content":[{"text":"x"}]}},"stopReason":"end_turn"}"#.to_string(),
            "no `usage`",
        ),
        (
            r#"{"output":{"message":{"content":[]}},"stopReason":"end_turn","usage":{"inputTokens":1}}"#
                .to_string(),
            "lacks `inputTokens` or `outputTokens`",
        ),
        (
            format!(
                r#"{{"output":{{"message":{{"content":[{{"toolUse":{{"name":"f"}}}}]}}}},"stopReason":"tool_use",{usage}}}"#
            ),
            "lacks `toolUseId`",
        ),
        (
            format!(r#"{{"output":{{"message":{{"content":[]}}}},"stopReason":"malformed_tool_use",{usage}}}"#),
            "unusable",
        ),
        (
            format!(
                r#"{{"output":{{"message":{{"content":[]}}}},"stopReason":"malformed_model_output",{usage}}}"#
            ),
            "unusable",
        ),
    ] {
        check(&response, &json!({ "error": { "param": null, "message": message } }).to_string());
    }
    let error = from_converse(b"<html>", MODEL, ID, CREATED).unwrap_err();
    assert!(error.message.contains("not JSON"), "{error:?}");
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// A ConverseStream answer as Bedrock sends it for a Claude tool call: text,
/// then a tool use whose input arrives in fragments, then the stop and the
/// metadata. (Bedrock pads event payloads with a `p` member.)
const RECORDED: &[(&str, &str)] = &[
    ("messageStart", r#"{"p":"abcdefgh","role":"assistant"}"#),
    ("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Let me check"},"p":"ab"}"#),
    ("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":" the weather."}}"#),
    ("contentBlockStop", r#"{"contentBlockIndex":0}"#),
    (
        "contentBlockStart",
        r#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"tooluse_abc","name":"get_weather"}}}"#,
    ),
    ("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":""}}}"#),
    ("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"city\":"}}}"#),
    ("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"\"Paris\"}"}}}"#),
    ("contentBlockStop", r#"{"contentBlockIndex":1}"#),
    ("messageStop", r#"{"stopReason":"tool_use"}"#),
    (
        "metadata",
        r#"{"usage":{"inputTokens":25,"outputTokens":40,"totalTokens":65},"metrics":{"latencyMs":812}}"#,
    ),
];

fn chunk(delta: &str, finish_reason: &str) -> Value {
    let text = format!(
        r#"{{"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,
        "model":"anthropic.claude-3-5-haiku","choices":[{{"index":0,"delta":{delta},
        "logprobs":null,"finish_reason":{finish_reason}}}]}}"#
    );
    serde_json::from_str(&text).unwrap()
}

fn expected_chunks() -> Vec<Value> {
    vec![
        chunk(r#"{"role":"assistant","content":""}"#, "null"),
        chunk(r#"{"content":"Let me check"}"#, "null"),
        chunk(r#"{"content":" the weather."}"#, "null"),
        chunk(
            r#"{"tool_calls":[{"index":0,"id":"tooluse_abc","type":"function",
                "function":{"name":"get_weather","arguments":""}}]}"#,
            "null",
        ),
        chunk(r#"{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}"#, "null"),
        chunk(r#"{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}"#, "null"),
        chunk("{}", r#""tool_calls""#),
        json!({
            "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": "anthropic.claude-3-5-haiku", "choices": [],
            "usage": { "prompt_tokens": 25, "completion_tokens": 40, "total_tokens": 65 },
        }),
    ]
}

fn translate(events: &[(&str, &str)]) -> (Vec<StreamChunk>, StreamTranslator) {
    let mut translator = StreamTranslator::new(MODEL, ID, CREATED);
    let mut chunks = Vec::new();
    for (event_type, payload) in events {
        chunks.extend(translator.on_event(event_type, payload.as_bytes()).unwrap());
    }
    (chunks, translator)
}

fn as_json(chunks: &[StreamChunk]) -> Vec<Value> {
    chunks.iter().map(|c| serde_json::from_slice(&c.data).unwrap()).collect()
}

#[test]
fn stream_recorded_tool_call() {
    let (chunks, translator) = translate(RECORDED);
    assert!(translator.is_finished());
    assert_eq!(as_json(&chunks), expected_chunks());
    let (last, rest) = chunks.split_last().unwrap();
    assert!(last.usage_only);
    assert_eq!(last.usage, Some(Usage { prompt_tokens: 25, completion_tokens: 40 }));
    assert!(rest.iter().all(|c| !c.usage_only && c.usage.is_none()));
}

#[test]
fn stream_through_the_event_stream_framing() {
    // The same recording, framed as Bedrock frames it and cut into odd
    // pieces, decodes and translates to the same chunks.
    let wire: Vec<u8> = RECORDED.iter().flat_map(|(kind, payload)| event(kind, payload)).collect();
    let mut decoder = Decoder::new();
    let mut translator = StreamTranslator::new(MODEL, ID, CREATED);
    let mut chunks = Vec::new();
    for piece in wire.chunks(37) {
        for message in decoder.push(piece).unwrap() {
            assert!(stream_error(&message).is_none());
            let kind = message.event_type().unwrap();
            chunks.extend(translator.on_event(kind, &message.payload).unwrap());
        }
    }
    assert!(!decoder.has_partial() && translator.is_finished());
    assert_eq!(as_json(&chunks), expected_chunks());
}

#[test]
fn stream_text_only_and_unknown_events() {
    let (chunks, translator) = translate(&[
        ("messageStart", r#"{"role":"assistant"}"#),
        ("contentBlockStart", r#"{"contentBlockIndex":0,"start":{"image":{}}}"#),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"hmm"}}}"#,
        ),
        ("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"text":"Hi"}}"#),
        ("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"text":""}}"#),
        ("someFutureEvent", "not even json"),
        ("messageStop", r#"{"stopReason":"max_tokens"}"#),
    ]);
    assert!(translator.is_finished());
    assert_eq!(
        as_json(&chunks),
        vec![
            chunk(r#"{"role":"assistant","content":""}"#, "null"),
            chunk(r#"{"content":"Hi"}"#, "null"),
            chunk("{}", r#""length""#),
        ]
    );
    // Without messageStart, the first chunk still carries the role.
    let (chunks, translator) =
        translate(&[("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"x"}}"#)]);
    assert!(!translator.is_finished(), "no messageStop yet");
    assert_eq!(as_json(&chunks), vec![chunk(r#"{"content":"x","role":"assistant"}"#, "null")]);
}

#[test]
fn stream_protocol_errors() {
    for (events, message) in [
        (vec![("contentBlockDelta", "{")], "not JSON"),
        (vec![("messageStop", "[]")], "not an object"),
        (vec![("contentBlockDelta", r#"{"delta":{"text":"x"}}"#)], "no `contentBlockIndex`"),
        (vec![("contentBlockDelta", r#"{"contentBlockIndex":0}"#)], "no `delta`"),
        (
            vec![(
                "contentBlockDelta",
                r#"{"contentBlockIndex":3,"delta":{"toolUse":{"input":"{"}}}"#,
            )],
            "did not start as a tool use",
        ),
        (
            vec![(
                "contentBlockStart",
                r#"{"contentBlockIndex":0,"start":{"toolUse":{"name":"f"}}}"#,
            )],
            "without `toolUseId`",
        ),
        (vec![("messageStop", "{}")], "no `stopReason`"),
        (vec![("messageStop", r#"{"stopReason":"malformed_tool_use"}"#)], "unusable"),
        (vec![("metadata", r#"{"metrics":{}}"#)], "no `usage`"),
    ] {
        let mut translator = StreamTranslator::new(MODEL, ID, CREATED);
        let error = events
            .iter()
            .find_map(|(kind, payload)| translator.on_event(kind, payload.as_bytes()).err())
            .unwrap_or_else(|| panic!("no error for {events:?}"));
        assert!(error.message.contains(message), "{error:?} lacks {message:?}");
    }
}

#[test]
fn stream_exceptions_are_errors() {
    let exception = |kind: &str, payload: &str| {
        let bytes = encode(
            &[
                (":message-type".into(), HeaderValue::String("exception".into())),
                (":exception-type".into(), HeaderValue::String(kind.into())),
                (":content-type".into(), HeaderValue::String("application/json".into())),
            ],
            payload.as_bytes(),
        );
        let messages = Decoder::new().push(&bytes).unwrap();
        stream_error(&messages[0]).expect("an exception is an error")
    };
    let throttled = exception("throttlingException", r#"{"message":"Too many tokens"}"#);
    assert_eq!(throttled.kind, FailureKind::RateLimited);
    assert!(throttled.message.contains("mid-stream") && throttled.message.contains("Too many"));
    assert_eq!(exception("modelStreamErrorException", "{}").kind, FailureKind::ServerError);
    assert_eq!(exception("serviceUnavailableException", "{}").kind, FailureKind::Overloaded);
    let invalid = exception("validationException", r#"{"message":"bad input"}"#);
    assert_eq!(invalid.kind, FailureKind::InvalidRequest);
    assert_eq!(invalid.client_error.unwrap()["code"], "validation_exception");
    assert_eq!(exception("somethingNewException", "{}").kind, FailureKind::ServerError);

    let error_message = encode(
        &[
            (":message-type".into(), HeaderValue::String("error".into())),
            (":error-code".into(), HeaderValue::String("InternalServerException".into())),
            (":error-message".into(), HeaderValue::String("boom".into())),
        ],
        b"",
    );
    let messages = Decoder::new().push(&error_message).unwrap();
    let error = stream_error(&messages[0]).unwrap();
    assert_eq!(error.kind, FailureKind::ServerError);
    assert!(error.message.contains("boom"), "{}", error.message);

    let untyped = encode(&[], b"{}");
    let messages = Decoder::new().push(&untyped).unwrap();
    assert_eq!(stream_error(&messages[0]).unwrap().kind, FailureKind::Protocol);
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[test]
fn error_classification() {
    let header =
        |name: &str| format!("{name}:http://internal.amazon.com/coral/com.amazon.bedrock/");
    for (status, error_type, body, kind) in [
        (
            429,
            Some(header("ThrottlingException")),
            r#"{"message":"Too many requests"}"#,
            FailureKind::RateLimited,
        ),
        (400, Some("ServiceQuotaExceededException".into()), "{}", FailureKind::RateLimited),
        (503, Some(header("ServiceUnavailableException")), "{}", FailureKind::Overloaded),
        (429, Some("ModelNotReadyException".into()), "{}", FailureKind::Overloaded),
        (500, Some("InternalServerException".into()), "{}", FailureKind::ServerError),
        (424, Some("ModelErrorException".into()), "{}", FailureKind::ServerError),
        (424, Some("ModelStreamErrorException".into()), "{}", FailureKind::ServerError),
        (408, Some("ModelTimeoutException".into()), "{}", FailureKind::UpstreamTimeout),
        (
            400,
            Some(header("ValidationException")),
            r#"{"message":"bad"}"#,
            FailureKind::InvalidRequest,
        ),
        (403, Some("AccessDeniedException".into()), "{}", FailureKind::DeploymentConfig),
        (403, Some(header("UnrecognizedClientException")), "{}", FailureKind::DeploymentConfig),
        (403, Some("InvalidSignatureException".into()), "{}", FailureKind::DeploymentConfig),
        (403, Some("ExpiredTokenException".into()), "{}", FailureKind::DeploymentConfig),
        (404, Some("ResourceNotFoundException".into()), "{}", FailureKind::DeploymentConfig),
        // Without the header, the body's `__type`, namespaced or not.
        (
            400,
            None,
            r#"{"__type":"com.amazon.coral.validate#ValidationException","message":"x"}"#,
            FailureKind::InvalidRequest,
        ),
        (400, Some(String::new()), r#"{"__type":"ThrottlingException"}"#, FailureKind::RateLimited),
        // Unknown or absent types fall back to the status.
        (502, None, "<html>Bad Gateway</html>", FailureKind::ServerError),
        (503, Some("SomethingNew".into()), "", FailureKind::Overloaded),
        (413, None, "", FailureKind::InvalidRequest),
        (401, None, "", FailureKind::DeploymentConfig),
    ] {
        let error = classify_error(status, error_type.as_deref(), body.as_bytes());
        assert_eq!(error.kind, kind, "{status} {error_type:?} {body}: {error}");
        assert_eq!(error.status, Some(status));
        assert!(error.retry_after.is_none());
    }
}

#[test]
fn validation_errors_go_back_to_the_caller_openai_shaped() {
    let error = classify_error(
        400,
        Some("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        br#"{"message":"A conversation must alternate between user and assistant roles."}"#,
    );
    assert_eq!(error.kind, FailureKind::InvalidRequest);
    assert_eq!(
        error.client_error,
        Some(json!({
            "message": "A conversation must alternate between user and assistant roles.",
            "type": "invalid_request_error",
            "param": null,
            "code": "validation_exception",
        }))
    );
    assert!(error.message.contains("ValidationException: A conversation"), "{}", error.message);
    assert!(classify_error(429, Some("ThrottlingException"), b"{}").client_error.is_none());
}

#[test]
fn credential_errors_name_the_deployment_and_leak_no_keys() {
    let signature = "The request signature we calculated does not match the signature you \
        provided. Check your AWS Secret Access Key and signing method.\n\nThe Canonical String \
        for this request should have been\n'POST\n/model/x/converse\n\nhost:bedrock-runtime\n\
        x-amz-date:20240101T000000Z\n\nhost;x-amz-date\n\
        9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'";
    let error = classify_error(403, Some("InvalidSignatureException"), signature.as_bytes());
    assert_eq!(error.kind, FailureKind::DeploymentConfig);
    assert!(
        error.message.contains("this deployment's AWS credentials, permissions or model id"),
        "{}",
        error.message
    );
    assert!(!error.message.contains("Canonical") && !error.message.contains("9f86d0"));

    let echoed = r#"{"Message":"Credential AKIAIOSFODNN7EXAMPLE with secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY and token IQoJb3JpZ2luX2VjEBAaCXVzLWVhc3QtMSJHMEUCIQ is invalid"}"#;
    let error = classify_error(403, Some("UnrecognizedClientException"), echoed.as_bytes());
    assert_eq!(error.kind, FailureKind::DeploymentConfig);
    for secret in ["AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "IQoJb3JpZ2lu"] {
        assert!(!error.message.contains(secret), "{secret} leaked: {}", error.message);
    }
    assert!(error.client_error.is_none(), "a configuration problem is not the caller's");

    let denied = classify_error(
        403,
        Some("AccessDeniedException"),
        br#"{"message":"You don't have access to the model with the specified model ID."}"#,
    );
    assert!(denied.message.contains("You don't have access to the model"), "{}", denied.message);
    let missing = classify_error(404, Some("ResourceNotFoundException"), b"{\"message\":\"no\"}");
    assert!(missing.message.contains("model id"), "{}", missing.message);
}

#[test]
fn error_helpers() {
    assert_eq!(snake_case("ServiceQuotaExceededException"), "service_quota_exceeded_exception");
    assert_eq!(normalize_error_type(" aws.foo#BarError:http://x/y "), "BarError");
    assert_eq!(normalize_error_type("ThrottlingException"), "ThrottlingException");
    let long = "x ".repeat(400);
    assert!(clean(&long).chars().count() <= 300);
    assert_eq!(clean("\n\n  first line  \nsecond"), "first line");
}
