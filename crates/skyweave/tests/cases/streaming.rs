//! Streams: relayed chunk by chunk, failover before the first byte, explicit
//! errors after it, cancellation on client disconnect, draining on shutdown.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use skyweave_emulators::{spawn, Behaviour, EmulatorConfig};

use crate::support::*;

fn stream_body(include_usage: Option<bool>) -> Value {
    let mut body = json!({
        "model": "m",
        "messages": [{ "role": "user", "content": "stream" }],
        "stream": true,
    });
    if let Some(include) = include_usage {
        body["stream_options"] = json!({ "include_usage": include });
    }
    body
}

#[tokio::test]
async fn streams_end_with_done_and_usage_only_when_asked() {
    let upstream = spawn(EmulatorConfig::openai("s")).await.unwrap();
    upstream.control.set_behaviour(Behaviour::ok(0, 0, 5));
    let gateway =
        Gateway::start(&openai_deployment("m@s", "m", "aws", "us-east-1", &upstream, "")).await;

    let response = gateway.post_chat(stream_body(None)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "text/event-stream");
    assert_eq!(header(&response, "x-skyweave-deployment"), "m@s");
    let events = sse_events(response).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert!(
        chunks.iter().all(|c| !c["choices"].as_array().unwrap().is_empty()),
        "no usage chunk unless asked"
    );
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(text.contains("Hello from s"), "{text}");
    // The gateway asked upstream for usage so it can account tokens.
    assert_eq!(upstream.control.recorded()[0].body["stream_options"]["include_usage"], true);

    // `stream_options: null` is no object: usage is still asked for upstream.
    let mut null_options = stream_body(None);
    null_options["stream_options"] = Value::Null;
    let events = sse_events(gateway.post_chat(null_options).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(upstream.control.recorded()[1].body["stream_options"]["include_usage"], true);

    let with_usage = sse_events(gateway.post_chat(stream_body(Some(true))).await).await;
    let usage_chunk: Value = serde_json::from_str(&with_usage[with_usage.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);

    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(&metrics, "skyweave_tokens_total", &["direction=\"output\""]),
        Some(15.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn chunks_are_relayed_as_they_arrive() {
    let upstream = spawn(EmulatorConfig::openai("slow")).await.unwrap();
    upstream.control.set_behaviour(Behaviour::ok(0, 250, 5));
    let gateway =
        Gateway::start(&openai_deployment("m@s", "m", "aws", "us-east-1", &upstream, "")).await;
    let started = Instant::now();
    let response = gateway.post_chat(stream_body(None)).await;
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    while body.next().await.is_some() {}
    let total = started.elapsed();
    assert!(total >= Duration::from_millis(1000), "{total:?}");
    assert!(
        first_at < Duration::from_millis(500),
        "first chunk after {first_at:?}, total {total:?}: buffered?"
    );
}

#[tokio::test]
async fn a_stream_fails_over_before_its_first_byte() {
    for (behaviour, extra) in [
        (Behaviour::status(503), ""),
        (Behaviour::Reset, ""),
        (Behaviour::HangAfterHeaders, "timeouts = { first_token_ms = 300 }"),
    ] {
        let primary = spawn(EmulatorConfig::openai("primary")).await.unwrap();
        let backup = spawn(EmulatorConfig::openai("backup")).await.unwrap();
        primary.control.set_behaviour(behaviour.clone());
        let estate = format!(
            "{}{}",
            openai_deployment("m@primary", "m", "aws", "us-east-1", &primary, extra),
            openai_deployment("m@backup", "m", "azure", "eastus", &backup, "priority = 1")
        );
        let gateway = Gateway::start(&estate).await;
        let response = gateway.post_chat(stream_body(None)).await;
        assert_eq!(response.status(), 200, "{behaviour:?}");
        assert_eq!(header(&response, "x-skyweave-deployment"), "m@backup", "{behaviour:?}");
        assert_eq!(header(&response, "x-skyweave-attempts"), "2", "{behaviour:?}");
        let events = sse_events(response).await;
        assert_eq!(events.last().unwrap(), "[DONE]", "{behaviour:?}");
    }
}

#[tokio::test]
async fn a_stream_cut_after_its_first_byte_ends_with_an_error_event() {
    let primary = spawn(EmulatorConfig::openai("primary")).await.unwrap();
    let backup = spawn(EmulatorConfig::openai("backup")).await.unwrap();
    primary.control.set_behaviour(Behaviour::CutAfterChunks { chunks: 2 });
    let estate = format!(
        "{}{}",
        openai_deployment("m@primary", "m", "aws", "us-east-1", &primary, ""),
        openai_deployment("m@backup", "m", "azure", "eastus", &backup, "priority = 1")
    );
    let gateway = Gateway::start(&estate).await;
    let events = sse_events(gateway.post_chat(stream_body(None)).await).await;
    assert!(!events.iter().any(|e| e == "[DONE]"), "a cut stream never ends cleanly: {events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_cut", "{last}");
    assert!(last["error"]["message"].as_str().unwrap().contains("m@primary"));
    assert!(events.len() >= 3, "the chunks before the cut were relayed: {events:?}");
    assert_eq!(backup.control.requests(), 0, "no retry once bytes reached the client");

    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(&metrics, "skyweave_upstream_attempts_total", &["outcome=\"stream_cut\""]),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_malformed_event_mid_stream_is_an_error_not_data() {
    let upstream = spawn(EmulatorConfig::openai("liar")).await.unwrap();
    upstream.control.set_behaviour(Behaviour::Malformed);
    let gateway =
        Gateway::start(&openai_deployment("m@liar", "m", "aws", "us-east-1", &upstream, "")).await;
    let response = gateway.post_chat(stream_body(None)).await;
    // The very first event is malformed: nothing reached the client, so it is
    // a failed attempt (503), not a broken stream.
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("not JSON"), "{error}");
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let upstream = spawn(EmulatorConfig::openai("u")).await.unwrap();
    upstream.control.set_behaviour(Behaviour::ok(0, 200, 50));
    let gateway =
        Gateway::start(&openai_deployment("m@u", "m", "aws", "us-east-1", &upstream, "")).await;

    // A stream the client walks away from after the first chunk.
    let response = gateway.post_chat(stream_body(None)).await;
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    let control = upstream.control.clone();
    wait_for("the streamed upstream request to be cancelled", || control.cancelled() == 1).await;

    // A non-streaming request whose client gives up.
    upstream.control.set_behaviour(Behaviour::Hang);
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let result = impatient
        .post(gateway.url("/v1/chat/completions"))
        .json(&json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await;
    assert!(result.is_err());
    wait_for("the hanging upstream request to be cancelled", || control.cancelled() == 2).await;
    assert_eq!(control.in_flight(), 0);
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_streams() {
    let upstream = spawn(EmulatorConfig::openai("u")).await.unwrap();
    upstream.control.set_behaviour(Behaviour::ok(0, 100, 10));
    let gateway =
        Gateway::start(&openai_deployment("m@u", "m", "aws", "us-east-1", &upstream, "")).await;
    let response = gateway.post_chat(stream_body(None)).await;
    let mut body = response.bytes_stream();
    let mut text = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
    let reader = tokio::spawn(async move {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        text
    });
    let (status, logs) = gateway.terminate().await;
    assert!(status.success(), "{logs}");
    let text = reader.await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "the in-flight stream finished: {text}");
    assert!(logs.contains("drained"), "{logs}");
}

#[tokio::test]
async fn a_stream_over_its_total_timeout_ends_with_an_error_event() {
    let upstream = spawn(EmulatorConfig::openai("slow")).await.unwrap();
    upstream.control.set_behaviour(Behaviour::ok(0, 300, 20));
    let estate = openai_deployment(
        "m@slow",
        "m",
        "aws",
        "us-east-1",
        &upstream,
        "timeouts = { connect_ms = 500, first_token_ms = 500, total_ms = 1000 }",
    );
    let gateway = Gateway::start(&estate).await;
    let started = Instant::now();
    let events = sse_events(gateway.post_chat(stream_body(None)).await).await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_total_timeout", "{last}");
}

#[tokio::test]
async fn rate_limited_and_timed_out_streams_fail_over() {
    for behaviour in [
        Behaviour::Status { status: 429, retry_after_secs: Some(10), message: None },
        Behaviour::status(408),
    ] {
        let primary = spawn(EmulatorConfig::openai("primary")).await.unwrap();
        let backup = spawn(EmulatorConfig::openai("backup")).await.unwrap();
        primary.control.set_behaviour(behaviour.clone());
        let estate = format!(
            "{}{}",
            openai_deployment("m@primary", "m", "aws", "us-east-1", &primary, ""),
            openai_deployment("m@backup", "m", "azure", "eastus", &backup, "priority = 1")
        );
        let gateway = Gateway::start(&estate).await;
        let response = gateway.post_chat(stream_body(None)).await;
        assert_eq!(header(&response, "x-skyweave-deployment"), "m@backup", "{behaviour:?}");
        assert_eq!(sse_events(response).await.last().unwrap(), "[DONE]", "{behaviour:?}");
    }
}
