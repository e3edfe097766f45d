//! Socket-level tests: a real reqwest client (or a raw TCP stream) against a
//! real emulator on 127.0.0.1.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{spawn, Behaviour, Control, Emulator, EmulatorConfig};

const API_VERSION: &str = "2024-10-21";

fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

async fn openai(name: &str) -> Emulator {
    spawn(EmulatorConfig::openai(name)).await.unwrap()
}

async fn azure(name: &str) -> Emulator {
    spawn(EmulatorConfig::azure(name)).await.unwrap()
}

fn chat_url(emu: &Emulator) -> String {
    format!("{}/v1/chat/completions", emu.base_url())
}

fn azure_chat_url(emu: &Emulator, deployment: &str) -> String {
    format!(
        "{}/openai/deployments/{deployment}/chat/completions?api-version={API_VERSION}",
        emu.base_url()
    )
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Say hello to me"}]}
        ],
        "stream": stream,
    })
}

/// "You are terse." (14) + "Say hello to me" (15) = 29 chars -> 7 tokens.
const CHAT_BODY_PROMPT_TOKENS: u64 = 7;

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_accounted(c: &Control) {
    let s = c.stats();
    assert_eq!(
        s.requests,
        s.completed + s.cancelled + s.in_flight,
        "accounting invariant broken: {s:?}"
    );
}

/// `data:` payloads of an SSE text.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {e:?}")).to_owned()
        })
        .collect()
}

/// Read a streamed body to its end (or first error), returning what arrived.
async fn read_stream(resp: reqwest::Response) -> (String, Option<reqwest::Error>) {
    let mut text = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => text.extend_from_slice(&b),
            Err(e) => return (String::from_utf8(text).unwrap(), Some(e)),
        }
    }
    (String::from_utf8(text).unwrap(), None)
}

fn content_of_chunks(chunks: &[Value]) -> String {
    chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect()
}

// ---- chat: OpenAI dialect -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_chat_is_a_valid_completion() {
    let emu = openai("east").await;
    let resp = client()
        .post(chat_url(&emu))
        .header("X-Custom", "yes")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-emulator-name"], "east");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-4o-mini");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Hello from east lorem ipsum dolor");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": CHAT_BODY_PROMPT_TOKENS, "completion_tokens": 4, "total_tokens": CHAT_BODY_PROMPT_TOKENS + 4})
    );
    assert!(v.get("prompt_filter_results").is_none());

    let c = &emu.control;
    assert_eq!((c.requests(), c.completed(), c.cancelled(), c.in_flight()), (1, 1, 0, 0));
    let rec = c.recorded();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].method, "POST");
    assert_eq!(rec[0].path, "/v1/chat/completions");
    assert_eq!(rec[0].query, None);
    assert_eq!(rec[0].header("x-custom"), Some("yes"));
    assert!(rec[0].headers.iter().any(|(k, _)| k == "x-custom"));
    assert!(rec[0].headers.iter().all(|(k, _)| *k == k.to_lowercase()));
    assert_eq!(rec[0].body, chat_body(false));
    assert_eq!(rec[0].deployment, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_sets_number_of_content_pieces() {
    let emu = openai("n").await;
    emu.control.set_behaviour(Behaviour::ok(0, 0, 1));
    let v: Value = client()
        .post(chat_url(&emu))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from n");
    assert_eq!(v["usage"]["completion_tokens"], 1);

    emu.control.set_behaviour(Behaviour::ok(0, 0, 7));
    let text = client()
        .post(chat_url(&emu))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let content_chunks = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|s| !s.is_empty()))
        .count();
    assert_eq!(content_chunks, 7);
    assert_eq!(content_of_chunks(&chunks), "Hello from n lorem ipsum dolor sit amet consectetur");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_chat_sends_openai_chunks_then_done() {
    let emu = openai("west").await;
    let resp = client().post(chat_url(&emu)).json(&chat_body(true)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(resp.headers()["x-emulator-name"], "west");
    let (text, err) = read_stream(resp).await;
    assert!(err.is_none());
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    // role chunk + 4 content chunks + finish chunk
    assert_eq!(chunks.len(), 6);
    let id = chunks[0]["id"].as_str().unwrap();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert_eq!(c["model"], "gpt-4o-mini");
        assert!(c.get("usage").is_none(), "no usage key without include_usage");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": "", "refusal": null})
    );
    assert_eq!(chunks[0]["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(content_of_chunks(&chunks), "Hello from west lorem ipsum dolor");
    let last = &chunks[5]["choices"][0];
    assert_eq!(last["delta"], json!({}));
    assert_eq!(last["finish_reason"], "stop");
    assert_eq!(emu.control.completed(), 1);
    assert_accounted(&emu.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_usage_adds_final_usage_chunk_and_null_usage_elsewhere() {
    let emu = openai("u").await;
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let text =
        client().post(chat_url(&emu)).json(&body).send().await.unwrap().text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks.len(), 7);
    for c in &chunks[..6] {
        assert_eq!(c["usage"], Value::Null);
        assert!(c.as_object().unwrap().contains_key("usage"));
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
    let usage_chunk = &chunks[6];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": CHAT_BODY_PROMPT_TOKENS, "completion_tokens": 4, "total_tokens": CHAT_BODY_PROMPT_TOKENS + 4})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_flushed_as_produced_with_ttft_and_inter_chunk_delays() {
    let emu = openai("slow").await;
    emu.control.set_behaviour(Behaviour::ok(300, 150, 4));
    let start = Instant::now();
    let resp = client().post(chat_url(&emu)).json(&chat_body(true)).send().await.unwrap();
    let head_at = start.elapsed();
    assert!(head_at < Duration::from_millis(250), "head after {head_at:?}");
    let mut arrivals = Vec::new();
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while let Some(b) = stream.next().await {
        let b = b.unwrap();
        let s = std::str::from_utf8(&b).unwrap();
        for _ in 0..s.matches("\"content\":\"").count() {
            arrivals.push(start.elapsed());
        }
        text.push_str(s);
    }
    // role chunk (content "") + 4 content pieces
    assert_eq!(arrivals.len(), 5, "{text}");
    assert!(arrivals[0] >= Duration::from_millis(300), "{arrivals:?}");
    // the first piece comes with the role chunk; each later one 150 ms apart
    for w in arrivals[1..].windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= Duration::from_millis(120), "gap {gap:?} in {arrivals:?}");
    }
    let total = *arrivals.last().unwrap();
    assert!(total >= Duration::from_millis(300 + 3 * 150), "{arrivals:?}");
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_delays_non_streaming_reply() {
    let emu = openai("t").await;
    emu.control.set_behaviour(Behaviour::ok(250, 0, 4));
    let start = Instant::now();
    let resp = client().post(chat_url(&emu)).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_pass_and_bad_bodies_get_400() {
    let emu = openai("v").await;
    let c = client();
    let url = chat_url(&emu);

    let mut body = chat_body(false);
    body["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    body["response_format"] = json!({"type": "json_object"});
    body["seed"] = json!(42);
    body["some_future_field"] = json!({"x": [1, 2]});
    let resp = c.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    let resp = c
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("JSON"));

    let resp = c.post(&url).json(&json!({"model": "gpt-4o"})).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], "messages");
    assert!(v["error"]["message"].as_str().unwrap().contains("'messages'"));

    let resp = c.post(&url).json(&json!({"model": "gpt-4o", "messages": []})).send().await.unwrap();
    assert_eq!(resp.status(), 400);

    let resp = c
        .post(&url)
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "OpenAI requires a model");

    let resp = c
        .post(format!("{}/v1/embeddings", emu.base_url()))
        .json(&json!({"model": "text-embedding-3-small"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "input");

    // Rejected requests count and are recorded; a non-JSON body records Null.
    let ctl = &emu.control;
    assert_eq!(ctl.requests(), 6);
    assert_eq!(ctl.completed(), 6);
    assert_eq!(ctl.recorded()[1].body, Value::Null);
}

// ---- auth ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_dialect_requires_bearer_key() {
    let emu = spawn(EmulatorConfig::openai("k").with_api_key("sk-test-123456789")).await.unwrap();
    let c = client();
    let url = chat_url(&emu);

    let resp = c.post(&url).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let resp = c
        .post(&url)
        .bearer_auth("sk-wrong-000000000")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert!(!v["error"]["message"].as_str().unwrap().contains("sk-wrong-000000000"));

    // api-key is Azure's header, not OpenAI's
    let resp = c
        .post(&url)
        .header("api-key", "sk-test-123456789")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let resp =
        c.post(&url).bearer_auth("sk-test-123456789").json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(emu.control.requests(), 4);

    let resp = c.get(format!("{}/v1/models", emu.base_url())).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_dialect_accepts_api_key_or_bearer() {
    let emu = spawn(EmulatorConfig::azure("az").with_api_key("azkey")).await.unwrap();
    let c = client();
    let url = azure_chat_url(&emu, "gpt4o");

    let resp = c.post(&url).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "401");
    assert!(v["error"]["message"].as_str().unwrap().contains("Access denied"));

    let resp = c.post(&url).header("api-key", "nope").json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    for (name, value) in [("api-key", "azkey"), ("authorization", "Bearer azkey")] {
        let resp = c.post(&url).header(name, value).json(&chat_body(false)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{name}");
    }
}

// ---- Azure dialect ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_chat_records_deployment_and_adds_filter_results() {
    let emu = azure("swedencentral").await;
    let mut body = chat_body(false);
    body.as_object_mut().unwrap().remove("model");
    let resp = client().post(azure_chat_url(&emu, "my-gpt4o")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-emulator-name"], "swedencentral");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "my-gpt4o", "model falls back to the deployment");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from swedencentral lorem ipsum dolor");
    assert_eq!(v["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"], false);
    assert_eq!(v["choices"][0]["content_filter_results"]["violence"]["severity"], "safe");
    let rec = emu.control.recorded();
    assert_eq!(rec[0].deployment.as_deref(), Some("my-gpt4o"));
    assert_eq!(rec[0].path, "/openai/deployments/my-gpt4o/chat/completions");
    assert_eq!(rec[0].query_param("api-version"), Some(API_VERSION));

    // streaming works the same way on Azure
    let text = client()
        .post(azure_chat_url(&emu, "my-gpt4o"))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("Hello from swedencentral"));
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_without_api_version_is_resource_not_found() {
    let emu = azure("az").await;
    let c = client();
    for path in [
        "/openai/deployments/d1/chat/completions",
        "/openai/deployments/d1/embeddings",
        "/openai/deployments/d1/chat/completions?api-version=",
    ] {
        let resp = c
            .post(format!("{}{path}", emu.base_url()))
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v, json!({"error": {"code": "404", "message": "Resource not found"}}));
    }
    // counted (rejected chat/embeddings requests) and recorded with deployment
    assert_eq!(emu.control.requests(), 3);
    assert_eq!(emu.control.recorded()[1].deployment.as_deref(), Some("d1"));

    // OpenAI paths do not exist on an Azure emulator
    let resp = c
        .post(format!("{}/v1/chat/completions", emu.base_url()))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(emu.control.requests(), 3);
}

// ---- embeddings ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_float_base64_dimensions_and_token_inputs() {
    let emu = openai("e").await;
    let c = client();
    let url = format!("{}/v1/embeddings", emu.base_url());

    let v: Value = c
        .post(&url)
        .json(&json!({"model": "text-embedding-3-small", "input": "hello world!", "user": "u1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["data"][0]["object"], "embedding");
    assert_eq!(v["data"][0]["index"], 0);
    let floats: Vec<f32> = serde_json::from_value(v["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(floats.len(), 8);
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));

    // deterministic
    let again: Value = c
        .post(&url)
        .json(&json!({"model": "text-embedding-3-small", "input": ["x", "hello world!"], "dimensions": 16}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["data"].as_array().unwrap().len(), 2);
    assert_eq!(again["data"][1]["index"], 1);
    assert_eq!(again["data"][1]["embedding"].as_array().unwrap().len(), 16);
    assert_eq!(again["usage"]["prompt_tokens"], 4);
    let same: Value = c
        .post(&url)
        .json(&json!({"model": "m", "input": ["hello world!"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(same["data"][0]["embedding"], v["data"][0]["embedding"]);

    // base64 = little-endian f32 of the same vector
    let b64: Value = c
        .post(&url)
        .json(&json!({"model": "m", "input": "hello world!", "encoding_format": "base64"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let raw = crate::base64::decode(b64["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f32> =
        raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(decoded, floats);

    // token arrays
    let toks: Value = c
        .post(&url)
        .json(&json!({"model": "m", "input": [[1, 2, 3], [4, 5]]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(toks["data"].as_array().unwrap().len(), 2);
    assert_eq!(toks["usage"]["prompt_tokens"], 5);

    let bad = c
        .post(&url)
        .json(&json!({"model": "m", "input": "x", "encoding_format": "hex"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let v: Value = bad.json().await.unwrap();
    assert_eq!(v["error"]["param"], "encoding_format");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_embeddings_and_behaviours_apply_to_embeddings() {
    let emu = azure("az").await;
    let url =
        format!("{}/openai/deployments/emb/embeddings?api-version={API_VERSION}", emu.base_url());
    let c = client();
    let v: Value =
        c.post(&url).json(&json!({"input": "abc"})).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["model"], "emb");
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);

    emu.control.push_script(vec![Behaviour::Status {
        status: 429,
        retry_after_secs: Some(2),
        message: None,
    }]);
    let resp = c.post(&url).json(&json!({"input": "abc"})).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("Embeddings_Create"));
    assert_eq!(emu.control.recorded()[1].deployment.as_deref(), Some("emb"));
}

// ---- behaviours -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_behaviour_in_openai_shape_with_retry_after() {
    let emu = openai("s").await;
    let c = client();
    emu.control.set_behaviour(Behaviour::Status {
        status: 429,
        retry_after_secs: Some(3),
        message: None,
    });
    let resp = c.post(chat_url(&emu)).json(&chat_body(true)).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    assert_eq!(resp.headers()["retry-after-ms"], "3000");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "requests");
    assert!(v["error"].as_object().unwrap().contains_key("param"));

    for (status, kind) in [(500, "server_error"), (502, "server_error"), (503, "server_error")] {
        emu.control.set_behaviour(Behaviour::Status {
            status,
            retry_after_secs: None,
            message: Some(format!("custom {status}")),
        });
        let resp = c.post(chat_url(&emu)).json(&chat_body(false)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        assert!(resp.headers().get("retry-after").is_none());
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], kind);
        assert_eq!(v["error"]["message"], format!("custom {status}"));
    }
    emu.control.set_behaviour(Behaviour::status(408));
    let resp = c.post(chat_url(&emu)).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 408);
    assert_eq!(emu.control.completed(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_behaviour_in_azure_shape() {
    let emu = azure("az").await;
    emu.control.set_behaviour(Behaviour::Status {
        status: 429,
        retry_after_secs: Some(7),
        message: None,
    });
    let resp =
        client().post(azure_chat_url(&emu, "d")).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(resp.headers()["retry-after-ms"], "7000");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "429");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("ChatCompletions_Create")
            && msg.contains(API_VERSION)
            && msg.contains("7 seconds"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_runs_in_order_then_falls_back_to_default() {
    let emu = openai("s").await;
    emu.control.push_script(vec![Behaviour::status(500), Behaviour::status(502)]);
    emu.control.push_script(vec![Behaviour::ContentFilter]);
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let resp = c.post(chat_url(&emu)).json(&chat_body(false)).send().await.unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [500, 502, 400, 200, 200]);
    assert_eq!(emu.control.requests(), 5);
    assert_eq!(emu.control.completed(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_filter_in_both_dialects() {
    let az = azure("az").await;
    az.control.set_behaviour(Behaviour::ContentFilter);
    let resp = client().post(azure_chat_url(&az, "d")).json(&chat_body(true)).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    let e = &v["error"];
    assert_eq!(e["code"], "content_filter");
    assert_eq!(e["status"], 400);
    assert_eq!(e["innererror"]["code"], "ResponsibleAIPolicyViolation");
    let cfr = &e["innererror"]["content_filter_result"];
    for cat in ["hate", "self_harm", "sexual", "violence"] {
        assert!(cfr[cat]["filtered"].is_boolean(), "{cat}");
        assert!(cfr[cat]["severity"].is_string(), "{cat}");
    }
    assert_eq!(cfr["violence"]["filtered"], true);

    let oa = openai("oa").await;
    oa.control.set_behaviour(Behaviour::ContentFilter);
    let resp = client().post(chat_url(&oa)).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"].get("innererror").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_200_but_not_json() {
    let emu = openai("m").await;
    emu.control.set_behaviour(Behaviour::Malformed);
    let resp = client().post(chat_url(&emu)).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(!text.is_empty());
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

    let resp = client().post(chat_url(&emu)).json(&chat_body(true)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let data = sse_data(&text);
    assert!(serde_json::from_str::<Value>(&data[0]).is_err(), "{text}");
    assert_eq!(emu.control.completed(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_holds_until_client_leaves_and_counts_cancelled() {
    let emu = openai("h").await;
    emu.control.set_behaviour(Behaviour::Hang);
    let c = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let mut tasks = Vec::new();
    for stream in [false, true, false] {
        let c = c.clone();
        let url = chat_url(&emu);
        tasks.push(tokio::spawn(async move { c.post(url).json(&chat_body(stream)).send().await }));
    }
    wait_until("3 in flight", || emu.control.in_flight() == 3).await;
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
    }
    wait_until("3 cancelled", || emu.control.cancelled() == 3).await;
    assert_eq!(emu.control.in_flight(), 0);
    assert_eq!(emu.control.completed(), 0);
    assert_accounted(&emu.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_after_headers_sends_sse_head_then_nothing() {
    let emu = openai("hh").await;
    emu.control.set_behaviour(Behaviour::HangAfterHeaders);
    let resp = tokio::time::timeout(
        Duration::from_secs(2),
        client().post(chat_url(&emu)).json(&chat_body(true)).send(),
    )
    .await
    .expect("head arrives")
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream; charset=utf-8");
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(first.is_err(), "no body byte may arrive: {first:?}");
    assert_eq!(emu.control.in_flight(), 1);
    drop(stream);
    wait_until("cancelled", || emu.control.cancelled() == 1).await;
    assert_eq!(emu.control.in_flight(), 0);

    // non-streaming: JSON head, then nothing
    let resp = client().post(chat_url(&emu)).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_millis(300), resp.bytes()).await;
    assert!(body.is_err());
    wait_until("cancelled", || emu.control.cancelled() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_is_a_connection_error_not_a_status() {
    let emu = openai("r").await;
    emu.control.set_behaviour(Behaviour::Reset);
    let err = client().post(chat_url(&emu)).json(&chat_body(false)).send().await.unwrap_err();
    assert!(err.status().is_none(), "{err:?}");
    assert!(!err.is_timeout(), "{err:?}");

    // On the wire it is an RST: the reader gets ECONNRESET, not a clean EOF.
    let mut tcp = tokio::net::TcpStream::connect(emu.addr).await.unwrap();
    let body = serde_json::to_vec(&chat_body(true)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body).await.unwrap();
    let mut buf = Vec::new();
    let res =
        tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut buf)).await.unwrap();
    assert_eq!(
        res.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "got {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(buf.is_empty());
    wait_until("completed", || emu.control.completed() == 2).await;
    assert_eq!(emu.control.cancelled(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_after_chunks_stream_ends_without_done() {
    let emu = openai("c").await;
    emu.control.set_behaviour(Behaviour::CutAfterChunks { chunks: 2 });
    let resp = client().post(chat_url(&emu)).json(&chat_body(true)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (text, err) = read_stream(resp).await;
    assert!(err.is_some(), "the body must end in an error, got clean end: {text}");
    assert!(!text.contains("[DONE]"));
    let chunks: Vec<Value> =
        sse_data(&text).iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks.len(), 3, "role + 2 content chunks: {text}");
    assert_eq!(content_of_chunks(&chunks), "Hello from c lorem");
    assert!(chunks.iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
    wait_until("completed", || emu.control.completed() == 1).await;

    // On the wire: the chunked body is not terminated (no 0-length chunk).
    let mut tcp = tokio::net::TcpStream::connect(emu.addr).await.unwrap();
    let body = serde_json::to_vec(&chat_body(true)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut buf)).await.unwrap();
    let raw = String::from_utf8_lossy(&buf);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("transfer-encoding: chunked"), "{raw}");
    assert!(raw.contains("Hello from c"), "{raw}");
    assert!(!raw.ends_with("0\r\n\r\n"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_non_streaming_sends_partial_body() {
    let emu = openai("c").await;
    emu.control.set_behaviour(Behaviour::CutAfterChunks { chunks: 4 });
    let resp = client().post(chat_url(&emu)).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let declared = resp.content_length().unwrap();
    let (text, err) = read_stream(resp).await;
    assert!(err.is_some(), "body must fail");
    assert!((text.len() as u64) < declared);
    assert!(text.starts_with("{\"id\":\"chatcmpl-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_mid_stream_counts_as_cancelled() {
    let emu = openai("x").await;
    emu.control.set_behaviour(Behaviour::ok(0, 200, 20));
    let resp = client().post(chat_url(&emu)).json(&chat_body(true)).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("Hello from x"));
    assert_eq!(emu.control.in_flight(), 1);
    drop(stream);
    wait_until("cancelled", || emu.control.cancelled() == 1).await;
    assert_eq!(emu.control.completed(), 0);
    assert_eq!(emu.control.in_flight(), 0);
}

// ---- control plane, models, lifecycle ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_control_endpoints() {
    let emu = openai("ctl").await;
    let c = client();
    let base = emu.base_url();

    let resp = c
        .put(format!("{base}/_emulator/behaviour"))
        .body(r#"{"kind":"status","status":503}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(emu.control.behaviour(), Behaviour::status(503));
    let resp = c.post(chat_url(&emu)).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 503);

    let resp = c
        .put(format!("{base}/_emulator/behaviour"))
        .body(r#"{"kind":"ok","ttft_ms":0,"inter_chunk_ms":0,"chunks":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = c
        .put(format!("{base}/_emulator/script"))
        .body(r#"[{"kind":"status","status":500}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = c.post(chat_url(&emu)).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    let v: Value =
        c.post(chat_url(&emu)).json(&chat_body(false)).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from ctl lorem");

    let resp = c
        .put(format!("{base}/_emulator/behaviour"))
        .body(r#"{"kind":"bogus"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let stats: Value =
        c.get(format!("{base}/_emulator/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats, json!({"requests": 3, "completed": 3, "cancelled": 0, "in_flight": 0}));
    // control requests are neither counted nor recorded
    assert_eq!(emu.control.recorded().len(), 3);
}

#[test]
fn behaviour_json_format() {
    let cases = [
        (
            Behaviour::ok(5, 6, 7),
            json!({"kind": "ok", "ttft_ms": 5, "inter_chunk_ms": 6, "chunks": 7}),
        ),
        (
            Behaviour::Status { status: 429, retry_after_secs: Some(1), message: Some("m".into()) },
            json!({"kind": "status", "status": 429, "retry_after_secs": 1, "message": "m"}),
        ),
        (Behaviour::Hang, json!({"kind": "hang"})),
        (Behaviour::HangAfterHeaders, json!({"kind": "hang_after_headers"})),
        (Behaviour::Reset, json!({"kind": "reset"})),
        (Behaviour::CutAfterChunks { chunks: 2 }, json!({"kind": "cut_after_chunks", "chunks": 2})),
        (Behaviour::ContentFilter, json!({"kind": "content_filter"})),
        (Behaviour::Malformed, json!({"kind": "malformed"})),
    ];
    for (b, v) in cases {
        assert_eq!(serde_json::to_value(&b).unwrap(), v);
        assert_eq!(serde_json::from_value::<Behaviour>(v).unwrap(), b);
    }
    // omitted Ok fields take the defaults
    assert_eq!(
        serde_json::from_value::<Behaviour>(json!({"kind": "ok"})).unwrap(),
        Behaviour::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_unknown_routes() {
    let emu = openai("m").await;
    let c = client();
    let v: Value =
        c.get(format!("{}/v1/models", emu.base_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert!(v["data"].as_array().unwrap().iter().any(|m| m["id"] == "gpt-4o-mini"));
    let resp = c.get(format!("{}/v1/nope", emu.base_url())).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-emulator-name"], "m");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let resp = c.get(format!("{}/v1/chat/completions", emu.base_url())).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(emu.control.requests(), 0, "only chat/embeddings are counted");
    assert_eq!(emu.control.recorded().len(), 3);

    let az = azure("a").await;
    let resp = c
        .get(format!("{}/openai/models?api-version={API_VERSION}", az.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_can_be_switched_off() {
    let emu = spawn(EmulatorConfig::openai("quiet").with_record(false)).await.unwrap();
    let resp = client().post(chat_url(&emu)).json(&chat_body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(emu.control.requests(), 1);
    assert!(emu.control.recorded().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_emulator_closes_listener_and_connections() {
    let emu = openai("d").await;
    emu.control.set_behaviour(Behaviour::Hang);
    let addr = emu.addr;
    let control = emu.control.clone();
    let pending = tokio::spawn(client().post(chat_url(&emu)).json(&chat_body(false)).send());
    wait_until("in flight", || control.in_flight() == 1).await;
    drop(emu);
    let res = tokio::time::timeout(Duration::from_secs(2), pending)
        .await
        .expect("hung request ends when the emulator is dropped")
        .unwrap();
    assert!(res.is_err());
    wait_until("listener closed", || std::net::TcpStream::connect(addr).is_err()).await;
    assert_eq!(control.cancelled(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_serves_many_requests() {
    let emu = openai("ka").await;
    let c = reqwest::Client::new();
    for _ in 0..50 {
        let resp = c.post(chat_url(&emu)).json(&chat_body(true)).send().await.unwrap();
        let text = resp.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
    assert_eq!(emu.control.completed(), 50);
}

/// Send a raw HTTP/1.1 request head (and optionally some body bytes).
async fn raw_request(emu: &Emulator, head: &str, body: &[u8]) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(emu.addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_mid_upload_is_cancelled_and_huge_bodies_get_413() {
    let emu = openai("up").await;
    let tcp = raw_request(
        &emu,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n",
        b"{\"model\":",
    )
    .await;
    wait_until("in flight", || emu.control.in_flight() == 1).await;
    drop(tcp);
    wait_until("cancelled", || emu.control.cancelled() == 1).await;

    let mut tcp = raw_request(
        &emu,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000\r\n\r\n",
        b"{",
    )
    .await;
    let mut buf = [0u8; 64];
    let n =
        tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(emu.control.requests(), 2);
    assert_accounted(&emu.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_http2_prior_knowledge_too() {
    let emu = openai("h2").await;
    let c = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = c.post(chat_url(&emu)).json(&chat_body(true)).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.headers()["x-emulator-name"], "h2");
    let text = resp.text().await.unwrap();
    assert!(text.contains("Hello from h2"));
    assert!(text.ends_with("data: [DONE]\n\n"));
}
