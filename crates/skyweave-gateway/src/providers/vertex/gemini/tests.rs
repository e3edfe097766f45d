//! Data-driven translation tests: OpenAI request in → Gemini request out,
//! Gemini response in → OpenAI response out, recorded `streamGenerateContent`
//! SSE payloads in → chunks out, and error classification.

use super::*;

const MODEL: &str = "gemini-2.5-flash";
const ID: &str = "chatcmpl-test";
const CREATED: u64 = 1_700_000_000;

/// One check for both directions. An input with `candidates`,
/// `promptFeedback` or `usageMetadata` is a Gemini response (translated to a
/// chat completion); anything else is an OpenAI request (translated to
/// Gemini). An expected `{"error": {"param": ..., "message": ...}}` wants a
/// [`TranslateError`] with that param whose message contains that text.
fn check(input: &str, expected: &str) {
    let input: Value = serde_json::from_str(input).expect("the input is JSON");
    let expected: Value = serde_json::from_str(expected).expect("the expectation is JSON");
    let is_response = ["candidates", "promptFeedback", "usageMetadata"]
        .iter()
        .any(|key| input.get(key).is_some());
    let result = if is_response {
        from_gemini(input.to_string().as_bytes(), MODEL, ID, CREATED).map(|(body, usage)| {
            assert_eq!(body["usage"]["prompt_tokens"], usage.prompt_tokens, "usage agrees");
            assert_eq!(body["usage"]["completion_tokens"], usage.completion_tokens);
            body
        })
    } else {
        let Value::Object(body) = &input else { panic!("a request is an object") };
        to_gemini(body)
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

fn refusal(param: &str, message: &str) -> String {
    json!({ "error": { "param": param, "message": message } }).to_string()
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
        r#"{"systemInstruction":{"parts":[{"text":"Be brief."},{"text":"Answer in French."}]},
            "contents":[{"role":"user","parts":[{"text":"Hello"}]}]}"#,
    );
    // A system message later in the conversation still goes to the system
    // instruction.
    check(
        r#"{"messages":[{"role":"user","content":"a"},{"role":"system","content":"late"}]}"#,
        r#"{"systemInstruction":{"parts":[{"text":"late"}]},
            "contents":[{"role":"user","parts":[{"text":"a"}]}]}"#,
    );
    // Empty text parts are left out.
    check(
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":""},{"type":"text","text":"x"}]}]}"#,
        r#"{"contents":[{"role":"user","parts":[{"text":"x"}]}]}"#,
    );
}

#[test]
fn request_multi_turn_merges_same_role_contents() {
    check(
        r#"{"messages":[
            {"role":"user","content":"one"},
            {"role":"user","content":[{"type":"text","text":"two"}]},
            {"role":"assistant","content":"three"},
            {"role":"assistant","content":[{"type":"text","text":"four"},{"type":"refusal","refusal":"no"}]},
            {"role":"user","content":"five","name":"alice"}]}"#,
        r#"{"contents":[
            {"role":"user","parts":[{"text":"one"},{"text":"two"}]},
            {"role":"model","parts":[{"text":"three"},{"text":"four"},{"text":"no"}]},
            {"role":"user","parts":[{"text":"five"}]}]}"#,
    );
}

#[test]
fn request_generation_config() {
    check(
        r#"{"messages":[{"role":"user","content":"hi"}],
            "max_tokens":256,"temperature":1.5,"top_p":0.9,"stop":"END","seed":42,
            "presence_penalty":0.5,"frequency_penalty":-1.25}"#,
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],
            "generationConfig":{"maxOutputTokens":256,"temperature":1.5,"topP":0.9,
            "stopSequences":["END"],"seed":42,"presencePenalty":0.5,"frequencyPenalty":-1.25}}"#,
    );
    // max_completion_tokens wins; zero penalties and `n: 1` send nothing.
    check(
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":10,"max_completion_tokens":20,
            "stop":["a","b"],"temperature":0,"seed":-7,"presence_penalty":0,"frequency_penalty":0.0,"n":1}"#,
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],
            "generationConfig":{"maxOutputTokens":20,"stopSequences":["a","b"],"temperature":0,"seed":-7}}"#,
    );
    check(
        r#"{"messages":[{"role":"user","content":"hi"}],"stop":[],"max_tokens":null,"seed":null}"#,
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
    );
}

#[test]
fn request_images_audio_and_files() {
    check(
        r#"{"messages":[{"role":"user","content":[
            {"type":"text","text":"What is this?"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo=","detail":"high"}},
            {"type":"image_url","image_url":{"url":"data:image/jpg;base64,/9j/4AAQ"}},
            {"type":"image_url","image_url":{"url":"DATA:IMAGE/WEBP;BASE64,UklGRg=="}},
            {"type":"image_url","image_url":{"url":"gs://my-bucket/photos/cat.HEIC"}},
            {"type":"image_url","image_url":{"url":"gs://my-bucket/dog.jpeg"}},
            {"type":"input_audio","input_audio":{"data":"UklGRg==","format":"wav"}},
            {"type":"file","file":{"file_data":"data:application/pdf;base64,JVBERi0=","filename":"a.pdf"}}]}]}"#,
        r#"{"contents":[{"role":"user","parts":[
            {"text":"What is this?"},
            {"inlineData":{"mimeType":"image/png","data":"iVBORw0KGgo="}},
            {"inlineData":{"mimeType":"image/jpeg","data":"/9j/4AAQ"}},
            {"inlineData":{"mimeType":"image/webp","data":"UklGRg=="}},
            {"fileData":{"mimeType":"image/heic","fileUri":"gs://my-bucket/photos/cat.HEIC"}},
            {"fileData":{"mimeType":"image/jpeg","fileUri":"gs://my-bucket/dog.jpeg"}},
            {"inlineData":{"mimeType":"audio/wav","data":"UklGRg=="}},
            {"inlineData":{"mimeType":"application/pdf","data":"JVBERi0="}}]}]}"#,
    );
    let part = |part: &str| format!(r#"{{"messages":[{{"role":"user","content":[{part}]}}]}}"#);
    let image =
        |url: &str| part(&format!(r#"{{"type":"image_url","image_url":{{"url":"{url}"}}}}"#));
    let param = "messages[0].content[0].image_url.url";
    for (url, message) in [
        ("https://example.com/cat.png", "does not fetch images from web URLs"),
        ("HTTP://example.com/cat.png", "does not fetch images from web URLs"),
        ("data:image/gif;base64,R0lGODlh", "PNG, JPEG, WebP, HEIC or HEIF only"),
        ("data:image/png;base64,not base64!", "valid base64"),
        ("data:image/png,rawbytes", "valid base64"),
        ("gs://bucket/cat", "cannot be told from its name"),
        ("gs://bucket/cat.gif", "cannot be told from its name"),
        ("gs:", "cannot be told from its name"),
        ("ftp://example.com/cat.png", "`data:image/...;base64,` URL or a `gs://` URI"),
    ] {
        check(&image(url), &refusal(param, message));
    }
    check(
        &part(r#"{"type":"image_url","image_url":{}}"#),
        &refusal(param, "needs `image_url.url`"),
    );
    check(
        &part(r#"{"type":"input_audio","input_audio":{"data":"AAAA","format":"flac"}}"#),
        &refusal("messages[0].content[0].input_audio.format", "wav or mp3 only"),
    );
    check(
        &part(r#"{"type":"input_audio","input_audio":{"data":"%%%","format":"mp3"}}"#),
        &refusal("messages[0].content[0].input_audio.data", "not valid base64"),
    );
    check(
        &part(r#"{"type":"input_audio","input_audio":{"format":"mp3"}}"#),
        &refusal("messages[0].content[0].input_audio", "needs `input_audio.data`"),
    );
    check(
        &part(r#"{"type":"file","file":{"file_id":"file-abc"}}"#),
        &refusal("messages[0].content[0]", "`file_id`"),
    );
    check(
        &part(r#"{"type":"file","file":{"file_data":"JVBERi0="}}"#),
        &refusal("messages[0].content[0].file.file_data", "it needs the type"),
    );
}

const TOOLS: &str = r#""tools":[
    {"type":"function","function":{"name":"get_weather","description":"Weather for a city",
     "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],
     "additionalProperties":false},"strict":true}},
    {"type":"function","function":{"name":"now","description":"","parameters":{"type":"object","properties":{}}}}]"#;

const DECLARATIONS: &str = r#""tools":[{"functionDeclarations":[
    {"name":"get_weather","description":"Weather for a city",
     "parameters":{"type":"OBJECT","properties":{"city":{"type":"STRING"}},"required":["city"]}},
    {"name":"now"}]}]"#;

#[test]
fn request_tools_and_tool_choice_modes() {
    let user = r#"{"role":"user","content":"Weather in Paris?"}"#;
    let content = r#"{"role":"user","parts":[{"text":"Weather in Paris?"}]}"#;
    for (choice, config) in [
        ("", ""),
        (r#","tool_choice":null"#, ""),
        (r#","tool_choice":"auto""#, r#","toolConfig":{"functionCallingConfig":{"mode":"AUTO"}}"#),
        (r#","tool_choice":"none""#, r#","toolConfig":{"functionCallingConfig":{"mode":"NONE"}}"#),
        (
            r#","tool_choice":"required""#,
            r#","toolConfig":{"functionCallingConfig":{"mode":"ANY"}}"#,
        ),
        (
            r#","tool_choice":{"type":"function","function":{"name":"now"}}"#,
            r#","toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["now"]}}"#,
        ),
    ] {
        check(
            &format!(r#"{{"messages":[{user}],{TOOLS}{choice}}}"#),
            &format!(r#"{{"contents":[{content}],{DECLARATIONS}{config}}}"#),
        );
    }
    // Without tools, "auto" and "none" have nothing to configure.
    for choice in ["auto", "none"] {
        check(
            &format!(r#"{{"messages":[{user}],"tool_choice":"{choice}","tools":[]}}"#),
            &format!(r#"{{"contents":[{content}]}}"#),
        );
    }
}

#[test]
fn request_tool_calls_and_results() {
    check(
        &format!(
            r#"{{"messages":[
            {{"role":"user","content":"Weather in Paris and Rome?"}},
            {{"role":"assistant","content":"Checking.","tool_calls":[
                {{"id":"call_0","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\":\"Paris\"}}"}},
                  "extra_content":{{"google":{{"thought_signature":"c2lnbmF0dXJl"}}}}}},
                {{"id":"call_1","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\":\"Rome\"}}"}}}}]}},
            {{"role":"tool","tool_call_id":"call_0","content":"{{\"temp\":21}}"}},
            {{"role":"tool","tool_call_id":"call_1","content":[{{"type":"text","text":"sunny, "}},{{"type":"text","text":"25C"}}]}},
            {{"role":"user","content":"Thanks. What time is it?"}},
            {{"role":"assistant","content":null,"tool_calls":[
                {{"id":"call_0","type":"function","function":{{"name":"now","arguments":""}}}}]}},
            {{"role":"tool","tool_call_id":"call_0","content":"[1, 2]"}}],
            {TOOLS}}}"#
        ),
        &format!(
            r#"{{"contents":[
            {{"role":"user","parts":[{{"text":"Weather in Paris and Rome?"}}]}},
            {{"role":"model","parts":[
                {{"text":"Checking."}},
                {{"functionCall":{{"name":"get_weather","args":{{"city":"Paris"}}}},"thoughtSignature":"c2lnbmF0dXJl"}},
                {{"functionCall":{{"name":"get_weather","args":{{"city":"Rome"}}}}}}]}},
            {{"role":"user","parts":[
                {{"functionResponse":{{"name":"get_weather","response":{{"content":{{"temp":21}}}}}}}},
                {{"functionResponse":{{"name":"get_weather","response":{{"content":"sunny, 25C"}}}}}},
                {{"text":"Thanks. What time is it?"}}]}},
            {{"role":"model","parts":[{{"functionCall":{{"name":"now","args":{{}}}}}}]}},
            {{"role":"user","parts":[
                {{"functionResponse":{{"name":"now","response":{{"content":[1,2]}}}}}}]}}],
            {DECLARATIONS}}}"#
        ),
    );
    // A result that is JSON but not an object or array stays text.
    check(
        r#"{"messages":[{"role":"user","content":"hi"},
            {"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f","arguments":{"a":1}}}]},
            {"role":"tool","tool_call_id":"c","content":"42"}]}"#,
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]},
            {"role":"model","parts":[{"functionCall":{"name":"f","args":{"a":1}}}]},
            {"role":"user","parts":[{"functionResponse":{"name":"f","response":{"content":"42"}}}]}]}"#,
    );
}

#[test]
fn request_response_format() {
    let user = r#""messages":[{"role":"user","content":"hi"}]"#;
    let contents = r#""contents":[{"role":"user","parts":[{"text":"hi"}]}]"#;
    check(
        &format!(r#"{{{user},"response_format":{{"type":"json_object"}}}}"#),
        &format!(r#"{{{contents},"generationConfig":{{"responseMimeType":"application/json"}}}}"#),
    );
    check(
        &format!(r#"{{{user},"response_format":{{"type":"text"}}}}"#),
        &format!("{{{contents}}}"),
    );
    // An OpenAI strict schema, as the SDKs generate it from a model class.
    check(
        &format!(
            r##"{{{user},"response_format":{{"type":"json_schema","json_schema":{{"name":"answer",
            "strict":true,"schema":{{"$schema":"http://json-schema.org/draft-07/schema#",
            "type":"object","additionalProperties":false,"required":["city","tags","note","kind","owner"],
            "properties":{{
                "city":{{"type":"string","description":"The city"}},
                "tags":{{"type":"array","items":{{"type":"string"}},"minItems":1}},
                "note":{{"type":["string","null"]}},
                "kind":{{"enum":["a","b",null]}},
                "owner":{{"anyOf":[{{"$ref":"#/$defs/Person"}},{{"type":"null"}}]}},
                "fixed":{{"const":"x","title":"Fixed"}}}},
            "$defs":{{"Person":{{"type":"object","additionalProperties":false,
                "properties":{{"name":{{"type":"string"}},"age":{{"type":"integer","minimum":0}}}},
                "required":["name","age"]}}}}}}}}}}}}"##
        ),
        &format!(
            r#"{{{contents},"generationConfig":{{"responseMimeType":"application/json",
            "responseSchema":{{"type":"OBJECT","required":["city","tags","note","kind","owner"],
            "properties":{{
                "city":{{"type":"STRING","description":"The city"}},
                "tags":{{"type":"ARRAY","items":{{"type":"STRING"}},"minItems":1}},
                "note":{{"type":"STRING","nullable":true}},
                "kind":{{"enum":["a","b"],"nullable":true}},
                "owner":{{"anyOf":[{{"type":"OBJECT",
                    "properties":{{"name":{{"type":"STRING"}},"age":{{"type":"INTEGER","minimum":0}}}},
                    "required":["name","age"]}}],"nullable":true}},
                "fixed":{{"enum":["x"],"title":"Fixed"}}}}}}}}}}"#
        ),
    );
}

#[test]
fn request_schemas_outside_gemini_subset_are_errors() {
    let schema = |schema: &str| {
        format!(
            r#"{{"messages":[{{"role":"user","content":"hi"}}],"response_format":{{"type":"json_schema",
            "json_schema":{{"name":"x","schema":{schema}}}}}}}"#
        )
    };
    for (body, message) in [
        (r#"{"oneOf":[{"type":"string"}]}"#, "/oneOf: the JSON Schema keyword `oneOf`"),
        (r#"{"type":"object","additionalProperties":{"type":"string"}}"#, "`additionalProperties`"),
        (
            r#"{"type":"object","properties":{"a":{"type":"array","items":[{"type":"string"}]}}}"#,
            "/properties/a/items: Gemini takes one schema",
        ),
        (r#"{"type":["string","integer"]}"#, "not several"),
        (r#"{"type":"null"}"#, "only `null`"),
        (r#"{"type":"date"}"#, "unknown type `date`"),
        (r#"{"enum":[1,2]}"#, "strings only"),
        (r#"{"const":3}"#, "string `const` only"),
        (r#"{"anyOf":[{"type":"null"}]}"#, "allows only `null`"),
        (r#"{"$ref":"https://example.com/s.json"}"#, "can be inlined"),
        (r##"{"$ref":"#/$defs/Missing"}"##, "no definition named `Missing`"),
        (
            r##"{"$ref":"#/$defs/Node","$defs":{"Node":{"type":"object","properties":{"next":{"$ref":"#/$defs/Node"}}}}}"##,
            "`Node` refers to itself",
        ),
        (r#"{"type":"integer","exclusiveMinimum":0}"#, "`exclusiveMinimum`"),
        ("[]", "needs `json_schema.schema`"),
    ] {
        check(&schema(body), &refusal("response_format", message));
    }
    // Shared definitions are inlined on every path, within a budget.
    let mut defs = Map::new();
    for level in 0..20 {
        let next = format!("#/$defs/L{}", level + 1);
        defs.insert(
            format!("L{level}"),
            json!({ "type": "object", "properties": { "a": { "$ref": next }, "b": { "$ref": next } } }),
        );
    }
    defs.insert("L20".into(), json!({ "type": "string" }));
    let wide = json!({ "$ref": "#/$defs/L0", "$defs": defs }).to_string();
    check(&schema(&wide), &refusal("response_format", "more than 5000 nodes"));
    // Tool parameters are converted the same way.
    check(
        r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function",
            "function":{"name":"f","parameters":{"type":"object","properties":{"a":{"allOf":[]}}}}}]}"#,
        &refusal("tools[0].function.parameters", "/properties/a/allOf"),
    );
}

#[test]
fn request_harmless_fields_are_ignored() {
    check(
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],
            "stream":true,"stream_options":{"include_usage":true},"user":"u-1","safety_identifier":"s",
            "metadata":{"k":"v"},"store":false,"service_tier":"auto","prompt_cache_key":"p",
            "prompt_cache_retention":"24h","n":1,"logprobs":false,"top_logprobs":0,
            "logit_bias":{},"parallel_tool_calls":true,"modalities":["text"],"audio":null,
            "reasoning_effort":null,"top_k":null}"#,
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
    );
}

#[test]
fn request_untranslatable_fields_are_errors() {
    for (field, value, message) in [
        ("n", "2", "single candidate"),
        ("logprobs", "true", "log probabilities"),
        ("top_logprobs", "3", "log probabilities"),
        ("logit_bias", r#"{"50256":-100}"#, "logit bias"),
        ("parallel_tool_calls", "false", "parallel tool calls"),
        ("modalities", r#"["text","audio"]"#, "only text"),
        ("audio", r#"{"voice":"alloy","format":"mp3"}"#, "only text"),
        ("prediction", r#"{"type":"content","content":"x"}"#, "predicted outputs"),
        ("reasoning_effort", r#""high""#, "per Gemini model family"),
        ("verbosity", r#""low""#, "verbosity"),
        ("web_search_options", "{}", "Google Search"),
        ("functions", r#"[{"name":"f"}]"#, "use `tools`"),
        ("function_call", r#""auto""#, "use `tools`"),
        ("top_k", "40", "unknown parameter `top_k`"),
        ("temperature", "2.5", "between 0 and 2"),
        ("temperature", r#""hot""#, "between 0 and 2"),
        ("top_p", "1.5", "between 0 and 1"),
        ("max_tokens", "0", "positive integer"),
        ("max_completion_tokens", "-5", "positive integer"),
        ("max_tokens", "1e12", "positive integer"),
        ("stop", r#"[""]"#, "non-empty strings"),
        ("stop", "[1]", "non-empty strings"),
        ("stop", "7", "a string or an array"),
        ("seed", "4294967296", "32-bit integer"),
        ("seed", "1.5", "32-bit integer"),
        ("presence_penalty", "2", "excluding 2"),
        ("frequency_penalty", "-2.5", "excluding 2"),
        ("frequency_penalty", r#""high""#, "excluding 2"),
        ("response_format", r#"{"type":"yaml"}"#, "`text`, `json_object` or `json_schema`"),
        (
            "response_format",
            r#"{"type":"json_schema","json_schema":{"name":"x"}}"#,
            "needs `json_schema.schema`",
        ),
        ("tools", r#"{"type":"function"}"#, "must be an array"),
        ("tool_choice", r#""required""#, "requires `tools`"),
        ("tool_choice", r#""sometimes""#, "unknown `tool_choice`"),
        ("tool_choice", r#"{"type":"allowed_tools","allowed_tools":{}}"#, "other forms"),
    ] {
        check(
            &format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"{field}":{value}}}"#),
            &refusal(field, message),
        );
    }
}

#[test]
fn request_untranslatable_messages_and_tools_are_errors() {
    let tool = r#"{"type":"function","function":{"name":"f"}}"#;
    let hi = r#"{"role":"user","content":"hi"}"#;
    let call = |arguments: &str| {
        format!(
            r#"{{"role":"assistant","tool_calls":[{{"id":"c1","type":"function","function":{{"name":"f","arguments":{arguments}}}}}]}}"#
        )
    };
    for (request, param, message) in [
        (r#"{"model":"m"}"#.to_string(), "messages", "must be an array"),
        (r#"{"messages":[]}"#.to_string(), "messages", "at least one user or assistant message"),
        (r#"{"messages":[{"role":"system","content":"only"}]}"#.to_string(), "messages", "at least one"),
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
            r#"{"messages":[{"role":"user","content":[{"type":"video"}]}]}"#.to_string(),
            "messages[0].content[0].type",
            "unknown content part type",
        ),
        (
            r#"{"messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"data:,"}}]},{"role":"user","content":"x"}]}"#
                .to_string(),
            "messages[0].content[0]",
            "only text",
        ),
        (format!(r#"{{"messages":[{hi},{{"role":"assistant","content":null}}]}}"#), "messages[1].content", "content or tool calls"),
        (
            format!(r#"{{"messages":[{hi},{{"role":"assistant","content":"x","function_call":{{"name":"f","arguments":"{{}}"}}}}]}}"#),
            "messages[1].function_call",
            "cannot be translated",
        ),
        (
            format!(r#"{{"tools":[{tool}],"messages":[{hi},{}]}}"#, call(r#""{city: Paris""#)),
            "messages[1].tool_calls[0].function.arguments",
            "are not JSON",
        ),
        (
            format!(r#"{{"tools":[{tool}],"messages":[{hi},{}]}}"#, call(r#""[1,2]""#)),
            "messages[1].tool_calls[0].function.arguments",
            "must be a JSON object",
        ),
        (
            format!(r#"{{"tools":[{tool}],"messages":[{hi},{}]}}"#, call("7")),
            "messages[1].tool_calls[0].function.arguments",
            "must be a JSON object",
        ),
        (
            format!(
                r#"{{"tools":[{tool}],"messages":[{hi},{{"role":"assistant","tool_calls":[{{"type":"function","function":{{"name":"f","arguments":"{{}}"}}}}]}}]}}"#
            ),
            "messages[1].tool_calls[0].id",
            "needs an `id`",
        ),
        (
            format!(
                r#"{{"messages":[{hi},{{"role":"assistant","tool_calls":[{{"id":"c","type":"custom","custom":{{}}}}]}}]}}"#
            ),
            "messages[1].tool_calls[0].type",
            "only `function` tool calls",
        ),
        (
            format!(r#"{{"tools":[{tool}],"messages":[{hi},{{"role":"tool","content":"x"}}]}}"#),
            "messages[1].tool_call_id",
            "needs `tool_call_id`",
        ),
        (
            format!(r#"{{"tools":[{tool}],"messages":[{hi},{{"role":"tool","tool_call_id":"c9","content":"x"}}]}}"#),
            "messages[1].tool_call_id",
            "`c9` answers no earlier assistant tool call",
        ),
        (
            format!(r#"{{"tools":[{tool}],"messages":[{hi},{},{{"role":"tool","tool_call_id":"c1"}}]}}"#, call(r#""{}""#)),
            "messages[2].content",
            "needs `content`",
        ),
        (
            format!(r#"{{"messages":[{hi}],"tools":[{{"type":"custom","custom":{{"name":"x"}}}}]}}"#),
            "tools[0].type",
            "only `function` tools",
        ),
        (
            format!(r#"{{"messages":[{hi}],"tools":[{{"type":"function","function":{{}}}}]}}"#),
            "tools[0].function.name",
            "needs a `name`",
        ),
        (
            format!(r#"{{"messages":[{hi}],"tools":[{{"type":"function","function":{{"name":"1st-tool"}}}}]}}"#),
            "tools[0].function.name",
            "`1st-tool` does not",
        ),
        (
            format!(r#"{{"messages":[{hi}],"tools":[{{"type":"function","function":{{"name":"f","parameters":"x"}}}}]}}"#),
            "tools[0].function.parameters",
            "must be a JSON schema object",
        ),
        (
            format!(r#"{{"messages":[{hi}],"tools":[{tool}],"tool_choice":{{"type":"function","function":{{"name":"g"}}}}}}"#),
            "tool_choice",
            "not in `tools`",
        ),
        (
            format!(r#"{{"messages":[{hi}],"tools":[{tool}],"tool_choice":{{"type":"function"}}}}"#),
            "tool_choice",
            "needs `function.name`",
        ),
    ] {
        check(&request, &refusal(param, message));
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
    let cut = TranslateError::upstream("ended early").into_stream_cut(PROTOCOL);
    assert_eq!(cut.kind, FailureKind::StreamCut);
    assert!(cut.message.contains("ended early"));
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// An expected chat completion with this message, finish reason and usage.
fn completion(message: &str, finish_reason: &str, usage: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-test","object":"chat.completion","created":1700000000,
        "model":"gemini-2.5-flash","choices":[{{"index":0,"message":{message},"logprobs":null,
        "finish_reason":"{finish_reason}"}}],"usage":{usage}}}"#
    )
}

#[test]
fn response_text() {
    check(
        r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Bonjour"},{"text":" !"}]},
            "finishReason":"STOP","avgLogprobs":-0.1,
            "safetyRatings":[{"category":"HARM_CATEGORY_HATE_SPEECH","probability":"NEGLIGIBLE"}]}],
            "usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":3,"totalTokenCount":15},
            "modelVersion":"gemini-2.5-flash","responseId":"abc"}"#,
        &completion(
            r#"{"role":"assistant","content":"Bonjour !"}"#,
            "stop",
            r#"{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}"#,
        ),
    );
    // Thought summaries are not content; thinking is billed as output.
    check(
        r#"{"candidates":[{"content":{"role":"model","parts":[
            {"text":"Let me think...","thought":true},{"text":"42"}]},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":1,"thoughtsTokenCount":50,
            "cachedContentTokenCount":64,"toolUsePromptTokenCount":5,"totalTokenCount":156}}"#,
        &completion(
            r#"{"role":"assistant","content":"42"}"#,
            "stop",
            r#"{"prompt_tokens":105,"completion_tokens":51,"total_tokens":156,
            "prompt_tokens_details":{"cached_tokens":64},
            "completion_tokens_details":{"reasoning_tokens":50}}"#,
        ),
    );
}

#[test]
fn response_function_calls() {
    check(
        r#"{"candidates":[{"content":{"role":"model","parts":[
            {"text":"Let me check."},
            {"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":"c2ln"},
            {"functionCall":{"name":"now"}}]},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":30,"candidatesTokenCount":20}}"#,
        &completion(
            r#"{"role":"assistant","content":"Let me check.","tool_calls":[
            {"id":"call_0","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"},
             "extra_content":{"google":{"thought_signature":"c2ln"}}},
            {"id":"call_1","type":"function","function":{"name":"now","arguments":"{}"}}]}"#,
            "tool_calls",
            r#"{"prompt_tokens":30,"completion_tokens":20,"total_tokens":50}"#,
        ),
    );
    // Calls alone: `content` is null, as OpenAI sends it.
    check(
        r#"{"candidates":[{"content":{"role":"model","parts":[
            {"functionCall":{"name":"f","args":{"a":[1,2]}}}]},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":2}}"#,
        &completion(
            r#"{"role":"assistant","content":null,"tool_calls":[
            {"id":"call_0","type":"function","function":{"name":"f","arguments":"{\"a\":[1,2]}"}}]}"#,
            "tool_calls",
            r#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}"#,
        ),
    );
}

#[test]
fn response_finish_reasons() {
    for (reason, finish_reason) in [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("MODEL_ARMOR", "content_filter"),
        ("OTHER", "stop"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
        ("SOME_FUTURE_REASON", "stop"),
    ] {
        check(
            &format!(
                r#"{{"candidates":[{{"content":{{"role":"model","parts":[{{"text":"x"}}]}},
                "finishReason":"{reason}"}}],"usageMetadata":{{"promptTokenCount":5,"candidatesTokenCount":1}}}}"#
            ),
            &completion(
                r#"{"role":"assistant","content":"x"}"#,
                finish_reason,
                r#"{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}"#,
            ),
        );
    }
    // A filtered answer has no content at all; proto3 leaves zero counts out.
    check(
        r#"{"candidates":[{"finishReason":"SAFETY","safetyRatings":[
            {"category":"HARM_CATEGORY_DANGEROUS_CONTENT","probability":"HIGH","blocked":true}]}],
            "usageMetadata":{"promptTokenCount":9}}"#,
        &completion(
            r#"{"role":"assistant","content":""}"#,
            "content_filter",
            r#"{"prompt_tokens":9,"completion_tokens":0,"total_tokens":9}"#,
        ),
    );
    // MAX_TOKENS in the middle of calls stays `length`.
    check(
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{}}}]},
            "finishReason":"MAX_TOKENS"}],"usageMetadata":{}}"#,
        &completion(
            r#"{"role":"assistant","content":null,"tool_calls":[
            {"id":"call_0","type":"function","function":{"name":"f","arguments":"{}"}}]}"#,
            "length",
            r#"{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}"#,
        ),
    );
}

#[test]
fn response_errors() {
    let usage = r#""usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":1}"#;
    for (response, message) in [
        (format!("{{{usage}}}"), "no candidates"),
        (format!(r#"{{"candidates":[],{usage}}}"#), "no candidates"),
        (format!(r#"{{"candidates":{{}},{usage}}}"#), "not an array"),
        (
            format!(r#"{{"promptFeedback":{{"blockReason":"SAFETY"}},{usage}}}"#),
            "blocked (blockReason SAFETY), which `blocked` reports",
        ),
        (format!(r#"{{"candidates":[{{"content":{{"parts":[{{"text":"x"}}]}}}}],{usage}}}"#), "no `finishReason`"),
        (
            r#"{"candidates":[{"content":{"parts":[{"text":"x"}]},"finishReason":"STOP"}]}"#.to_string(),
            "no `usageMetadata`",
        ),
        (
            r#"{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":"many"}}"#.to_string(),
            "`usageMetadata.promptTokenCount` is not a count",
        ),
        (
            format!(r#"{{"candidates":[{{"content":{{"parts":{{}}}},"finishReason":"STOP"}}],{usage}}}"#),
            "`content.parts` is not an array",
        ),
        (
            format!(r#"{{"candidates":[{{"content":{{"parts":[{{"functionCall":{{"args":{{}}}}}}]}},"finishReason":"STOP"}}],{usage}}}"#),
            "has no `name`",
        ),
        (
            format!(r#"{{"candidates":[{{"content":{{"parts":[{{"functionCall":{{"name":"f","args":[1]}}}}]}},"finishReason":"STOP"}}],{usage}}}"#),
            "are not an object",
        ),
        (format!(r#"{{"candidates":[{{"finishReason":"MALFORMED_FUNCTION_CALL"}}],{usage}}}"#), "unusable"),
        (format!(r#"{{"candidates":[{{"finishReason":"UNEXPECTED_TOOL_CALL"}}],{usage}}}"#), "unusable"),
    ] {
        check(&response, &json!({ "error": { "param": null, "message": message } }).to_string());
    }
    let error = from_gemini(b"<html>", MODEL, ID, CREATED).unwrap_err();
    assert!(error.message.contains("not JSON"), "{error:?}");
    let error = from_gemini(b"[]", MODEL, ID, CREATED).unwrap_err();
    assert!(error.message.contains("not an object"), "{error:?}");
}

#[test]
fn blocked_prompts_are_content_filter_refusals() {
    let body = br#"{"promptFeedback":{"blockReason":"SAFETY","safetyRatings":[
        {"category":"HARM_CATEGORY_HARASSMENT","probability":"HIGH","blocked":true},
        {"category":"HARM_CATEGORY_HATE_SPEECH","probability":"NEGLIGIBLE"},
        {"category":"HARM_CATEGORY_DANGEROUS_CONTENT","probability":"MEDIUM","blocked":true}],
        "blockReasonMessage":"The prompt was blocked due to safety reasons."},
        "usageMetadata":{"promptTokenCount":7,"totalTokenCount":7}}"#;
    let error = blocked(body).expect("a blocked prompt");
    assert_eq!(error.kind, FailureKind::ContentFiltered);
    assert!(!error.kind.is_retryable());
    let message = "the prompt was refused by Vertex AI's safety filters (blockReason SAFETY): \
        HARM_CATEGORY_DANGEROUS_CONTENT (MEDIUM), HARM_CATEGORY_HARASSMENT (HIGH). \
        The prompt was blocked due to safety reasons.";
    assert_eq!(error.message, message);
    assert_eq!(
        error.client_error,
        Some(json!({
            "message": message,
            "type": "invalid_request_error",
            "param": "messages",
            "code": "content_filter",
        }))
    );
    let bare = blocked(br#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"}}"#).unwrap();
    assert!(bare.message.ends_with("(blockReason PROHIBITED_CONTENT)"), "{}", bare.message);

    // Not blocked: answers, feedback without a block, and non-JSON.
    for body in [
        r#"{"candidates":[{"finishReason":"STOP"}],"promptFeedback":{"blockReason":"OTHER"}}"#,
        r#"{"candidates":[{"finishReason":"SAFETY"}]}"#,
        r#"{"promptFeedback":{"safetyRatings":[]},"usageMetadata":{}}"#,
        "<html>",
    ] {
        assert!(blocked(body.as_bytes()).is_none(), "{body}");
    }
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// A `streamGenerateContent?alt=sse` answer as Vertex sends it for a
/// function call: text in pieces, a whole call, then the finish reason and
/// the final usage (earlier chunks repeat a growing usage).
const RECORDED: &[&str] = &[
    r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Let me check"}]}}],
        "usageMetadata":{"promptTokenCount":25,"candidatesTokenCount":2,"totalTokenCount":27},
        "modelVersion":"gemini-2.5-flash","createTime":"2025-01-01T00:00:00Z","responseId":"r1"}"#,
    r#"{"candidates":[{"content":{"role":"model","parts":[{"text":" the weather."}]}}],
        "usageMetadata":{"promptTokenCount":25,"candidatesTokenCount":5,"totalTokenCount":30}}"#,
    r#"{"candidates":[{"content":{"role":"model","parts":[
        {"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":"c2ln"}]},
        "finishReason":"STOP"}],
        "usageMetadata":{"promptTokenCount":25,"candidatesTokenCount":30,"thoughtsTokenCount":10,
        "totalTokenCount":65}}"#,
];

fn chunk(delta: &str, finish_reason: &str) -> Value {
    let text = format!(
        r#"{{"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,
        "model":"gemini-2.5-flash","choices":[{{"index":0,"delta":{delta},
        "logprobs":null,"finish_reason":{finish_reason}}}]}}"#
    );
    serde_json::from_str(&text).unwrap()
}

fn usage_chunk(usage: Value) -> Value {
    json!({
        "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "gemini-2.5-flash", "choices": [], "usage": usage,
    })
}

/// Translates the payloads, checking none is an error, then finishes.
fn translate(events: &[&str]) -> (Vec<StreamChunk>, StreamTranslator) {
    let mut translator = StreamTranslator::new(MODEL, ID, CREATED);
    let mut chunks = Vec::new();
    for data in events {
        assert!(stream_error(data.as_bytes()).is_none(), "{data}");
        chunks.extend(translator.on_event(data.as_bytes()).unwrap());
    }
    (chunks, translator)
}

fn as_json(chunks: &[StreamChunk]) -> Vec<Value> {
    chunks.iter().map(|c| serde_json::from_slice(&c.data).unwrap()).collect()
}

#[test]
fn stream_recorded_function_call() {
    let (mut chunks, mut translator) = translate(RECORDED);
    assert!(translator.is_finished());
    chunks.extend(translator.finish().unwrap());
    assert_eq!(
        as_json(&chunks),
        vec![
            chunk(r#"{"role":"assistant","content":""}"#, "null"),
            chunk(r#"{"content":"Let me check"}"#, "null"),
            chunk(r#"{"content":" the weather."}"#, "null"),
            chunk(
                r#"{"tool_calls":[{"index":0,"id":"call_0","type":"function",
                    "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"},
                    "extra_content":{"google":{"thought_signature":"c2ln"}}}]}"#,
                "null",
            ),
            chunk("{}", r#""tool_calls""#),
            usage_chunk(json!({
                "prompt_tokens": 25, "completion_tokens": 40, "total_tokens": 65,
                "completion_tokens_details": { "reasoning_tokens": 10 },
            })),
        ]
    );
    let (last, rest) = chunks.split_last().unwrap();
    assert!(last.usage_only);
    assert_eq!(last.usage, Some(Usage { prompt_tokens: 25, completion_tokens: 40 }));
    assert!(rest.iter().all(|c| !c.usage_only && c.usage.is_none()));
    // The usage chunk is returned once.
    assert!(translator.finish().unwrap().is_empty());
}

#[test]
fn stream_text_parallel_calls_and_trailing_usage() {
    let (mut chunks, mut translator) = translate(&[
        // Text, a thought, and two calls in one chunk: text first, then each
        // call, numbered on.
        r#"{"candidates":[{"content":{"role":"model","parts":[
            {"text":"hmm","thought":true},{"text":"Two "},{"text":"calls:"},
            {"functionCall":{"name":"a","args":{}}},{"functionCall":{"name":"b"}}]}}]}"#,
        r#"{"candidates":[{"content":{"role":"model","parts":[{"text":""}]},"finishReason":"STOP"}]}"#,
        // Usage after the finish reason, and a repeated finish reason.
        r#"{"candidates":[{"content":{"role":"model","parts":[]},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":4}}"#,
    ]);
    chunks.extend(translator.finish().unwrap());
    assert_eq!(
        as_json(&chunks),
        vec![
            chunk(r#"{"role":"assistant","content":""}"#, "null"),
            chunk(r#"{"content":"Two calls:"}"#, "null"),
            chunk(
                r#"{"tool_calls":[{"index":0,"id":"call_0","type":"function","function":{"name":"a","arguments":"{}"}}]}"#,
                "null",
            ),
            chunk(
                r#"{"tool_calls":[{"index":1,"id":"call_1","type":"function","function":{"name":"b","arguments":"{}"}}]}"#,
                "null",
            ),
            chunk("{}", r#""tool_calls""#),
            usage_chunk(json!({ "prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12 })),
        ]
    );
}

#[test]
fn stream_finish_reasons_without_usage() {
    for (reason, finish_reason) in
        [("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("OTHER", "stop")]
    {
        let data = format!(r#"{{"candidates":[{{"finishReason":"{reason}"}}]}}"#);
        let (mut chunks, mut translator) =
            translate(&[r#"{"candidates":[{"content":{"parts":[{"text":"x"}]}}]}"#, data.as_str()]);
        chunks.extend(translator.finish().unwrap());
        assert_eq!(
            as_json(&chunks),
            vec![
                chunk(r#"{"role":"assistant","content":""}"#, "null"),
                chunk(r#"{"content":"x"}"#, "null"),
                chunk("{}", &format!("\"{finish_reason}\"")),
            ]
        );
    }
    // A finish reason first thing still comes after the role chunk.
    let (chunks, _) = translate(&[r#"{"candidates":[{"finishReason":"SAFETY"}]}"#]);
    assert_eq!(
        as_json(&chunks),
        vec![
            chunk(r#"{"role":"assistant","content":""}"#, "null"),
            chunk("{}", r#""content_filter""#),
        ]
    );
}

#[test]
fn stream_cut_before_the_finish_reason() {
    let (chunks, mut translator) = translate(&RECORDED[..2]);
    assert_eq!(chunks.len(), 3, "role, then two texts");
    assert!(!translator.is_finished());
    let error = translator.finish().unwrap_err();
    assert!(error.message.contains("ended before"), "{error:?}");
    assert_eq!(error.into_stream_cut(PROTOCOL).kind, FailureKind::StreamCut);
    // Nothing at all is cut too.
    assert!(StreamTranslator::new(MODEL, ID, CREATED).finish().is_err());
}

#[test]
fn stream_protocol_errors() {
    let text = r#"{"candidates":[{"content":{"parts":[{"text":"x"}]}}]}"#;
    let stop = r#"{"candidates":[{"finishReason":"STOP"}]}"#;
    for (events, message) in [
        (vec!["{"], "not JSON"),
        (vec!["[]"], "not an object"),
        (vec![r#"{"candidates":{}}"#], "not an array"),
        (vec![r#"{"candidates":[{"content":{"parts":7}}]}"#], "not an array"),
        (vec![r#"{"candidates":[{"content":{"parts":[{"functionCall":{}}]}}]}"#], "has no `name`"),
        (vec![r#"{"candidates":[{"finishReason":5}]}"#], "not a string"),
        (vec![r#"{"candidates":[{"finishReason":"MALFORMED_FUNCTION_CALL"}]}"#], "unusable"),
        (vec![r#"{"usageMetadata":{"promptTokenCount":-1}}"#], "not a count"),
        (vec![stop, text], "goes on after its finishReason"),
        (vec![r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#], "`blocked` reports"),
        (
            vec![r#"{"error":{"code":500,"message":"boom","status":"INTERNAL"}}"#],
            "`stream_error` reports: boom",
        ),
    ] {
        let mut translator = StreamTranslator::new(MODEL, ID, CREATED);
        let error = events
            .iter()
            .find_map(|data| translator.on_event(data.as_bytes()).err())
            .unwrap_or_else(|| panic!("no error for {events:?}"));
        assert!(error.message.contains(message), "{error:?} lacks {message:?}");
    }
}

#[test]
fn stream_errors_and_blocks_are_reported_before_translation() {
    let overloaded = stream_error(
        br#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#,
    )
    .expect("an error payload");
    assert_eq!(overloaded.kind, FailureKind::Overloaded);
    assert_eq!(overloaded.status, None);
    assert!(overloaded.message.contains("mid-stream") && overloaded.message.contains("overloaded"));
    // Without a status string, the body's code classifies it.
    let limited = stream_error(br#"[{"error":{"code":429,"message":"Quota"}}]"#).unwrap();
    assert_eq!(limited.kind, FailureKind::RateLimited);
    let filtered = stream_error(br#"{"promptFeedback":{"blockReason":"BLOCKLIST"}}"#).unwrap();
    assert_eq!(filtered.kind, FailureKind::ContentFiltered);
    for data in RECORDED {
        assert!(stream_error(data.as_bytes()).is_none());
    }
    assert!(stream_error(b"not json").is_none(), "left to on_event to report");
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

fn google_error(code: u16, status: &str, message: &str) -> String {
    json!({ "error": { "code": code, "message": message, "status": status } }).to_string()
}

#[test]
fn error_classification() {
    for (status, body, kind) in [
        (429, google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded"), FailureKind::RateLimited),
        (503, google_error(503, "UNAVAILABLE", "overloaded"), FailureKind::Overloaded),
        (500, google_error(500, "INTERNAL", "oops"), FailureKind::ServerError),
        (500, google_error(500, "UNKNOWN", "?"), FailureKind::ServerError),
        (409, google_error(409, "ABORTED", "conflict"), FailureKind::ServerError),
        (504, google_error(504, "DEADLINE_EXCEEDED", "slow"), FailureKind::UpstreamTimeout),
        (400, google_error(400, "INVALID_ARGUMENT", "bad"), FailureKind::InvalidRequest),
        (400, google_error(400, "FAILED_PRECONDITION", "no"), FailureKind::InvalidRequest),
        (400, google_error(400, "OUT_OF_RANGE", "far"), FailureKind::InvalidRequest),
        (403, google_error(403, "PERMISSION_DENIED", "denied"), FailureKind::DeploymentConfig),
        (401, google_error(401, "UNAUTHENTICATED", "who"), FailureKind::DeploymentConfig),
        (404, google_error(404, "NOT_FOUND", "no model"), FailureKind::DeploymentConfig),
        // The one-element array form.
        (
            429,
            format!("[{}]", google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded")),
            FailureKind::RateLimited,
        ),
        (
            400,
            format!("[{}]", google_error(400, "INVALID_ARGUMENT", "bad")),
            FailureKind::InvalidRequest,
        ),
        // Unknown or absent statuses fall back to the HTTP status.
        (499, google_error(499, "CANCELLED", "cancelled"), FailureKind::InvalidRequest),
        (503, google_error(503, "SOMETHING_NEW", ""), FailureKind::Overloaded),
        (502, "<html><body>502 Bad Gateway</body></html>".into(), FailureKind::ServerError),
        (413, String::new(), FailureKind::InvalidRequest),
        (401, "[]".into(), FailureKind::DeploymentConfig),
        (302, "{}".into(), FailureKind::Protocol),
    ] {
        let error = classify_error(status, body.as_bytes());
        assert_eq!(error.kind, kind, "{status} {body}: {error}");
        assert_eq!(error.status, Some(status));
        assert!(error.retry_after.is_none());
    }
    let empty = classify_error(500, b"");
    assert!(empty.message.contains("(empty body)"), "{}", empty.message);
}

#[test]
fn invalid_arguments_go_back_to_the_caller_openai_shaped() {
    let body = format!(
        "[{}]",
        google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")
    );
    let error = classify_error(400, body.as_bytes());
    assert_eq!(error.kind, FailureKind::InvalidRequest);
    assert_eq!(
        error.client_error,
        Some(json!({
            "message": "Request contains an invalid argument.",
            "type": "invalid_request_error",
            "param": null,
            "code": "invalid_argument",
        }))
    );
    assert_eq!(
        error.message,
        "Vertex AI answered 400: INVALID_ARGUMENT: Request contains an invalid argument."
    );
    let limited = classify_error(429, google_error(429, "RESOURCE_EXHAUSTED", "x").as_bytes());
    assert!(limited.client_error.is_none());
}

#[test]
fn retry_info_sets_retry_after() {
    let body = json!({ "error": {
        "code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded",
        "details": [
            { "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED" },
            { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s" },
        ],
    }});
    let error = classify_error(429, body.to_string().as_bytes());
    assert_eq!(error.retry_after, Some(Duration::from_millis(1500)));
    for delay in ["-1s", "never", "100000s", "30"] {
        let body = json!({ "error": { "code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay }] } });
        assert!(classify_error(429, body.to_string().as_bytes()).retry_after.is_none(), "{delay}");
    }
}

#[test]
fn configuration_errors_name_the_deployment_and_leak_no_keys() {
    let denied = google_error(
        403,
        "PERMISSION_DENIED",
        "Permission 'aiplatform.endpoints.predict' denied on resource \
         '//aiplatform.googleapis.com/projects/my-project/locations/us-central1/publishers/google/models/gemini-2.5-flash' \
         (or it may not exist).",
    );
    let error = classify_error(403, denied.as_bytes());
    assert_eq!(error.kind, FailureKind::DeploymentConfig);
    assert!(
        error.message.contains("this deployment's Google credentials, project, region or model"),
        "{}",
        error.message
    );
    assert!(error.message.contains("PERMISSION_DENIED: Permission 'aiplatform.endpoints.predict'"));
    assert!(
        error.message.contains("projects/my-project/locations/us-central1"),
        "{}",
        error.message
    );
    assert!(error.client_error.is_none(), "a configuration problem is not the caller's");

    let echoed = google_error(
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials: Bearer \
         ya29.a0AfB_byC1234567890abcdefghijklmnop, key AIzaSyA1234567890abcdefghijklmnopqrstu \
         and assertion eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl.\n\
         second line with more detail",
    );
    let error = classify_error(401, echoed.as_bytes());
    assert_eq!(error.kind, FailureKind::DeploymentConfig);
    for secret in ["ya29.a0AfB", "AIzaSyA123", "eyJhbGci", "second line"] {
        assert!(!error.message.contains(secret), "{secret} leaked: {}", error.message);
    }
    assert!(error.message.contains("Bearer [redacted]"), "{}", error.message);

    let missing = classify_error(
        404,
        google_error(404, "NOT_FOUND", "Publisher Model `gemini-9` was not found").as_bytes(),
    );
    assert!(missing.message.contains("model") && missing.message.contains("gemini-9"));
}

#[test]
fn error_helpers() {
    let long = "x ".repeat(400);
    assert!(clean(&long).chars().count() <= 300);
    assert_eq!(clean("\n\n  first line  \nsecond"), "first line");
    assert_eq!(clean("a short plain message."), "a short plain message.");
    assert!(is_gemini_function_name("_get.weather:v2-beta"));
    assert!(is_gemini_function_name(&"a".repeat(64)));
    assert!(!is_gemini_function_name(&"a".repeat(65)));
    assert!(!is_gemini_function_name(""));
    assert!(!is_gemini_function_name("get weather"));
}
