//! The HTTP API: shapes, headers, pass-through, validation, the Azure wire format.

use serde_json::{json, Value};
use skyweave_emulators::{spawn, Behaviour, EmulatorConfig};

use crate::support::*;

#[tokio::test]
async fn fields_reach_the_upstream_byte_for_byte() {
    let upstream = spawn(EmulatorConfig::openai("vllm-a")).await.unwrap();
    let estate = openai_deployment("m@aws", "m", "aws", "us-east-1", &upstream, "");
    let gateway = Gateway::start(&estate).await;
    // What a JSON tree would change: a seed beyond 64 bits, a trailing zero,
    // an exponent, escapes, spacing inside values and the members' order.
    let body = "{\"seed\": 340282366920938463463374607431768211455, \"temperature\": 0.50,\n \
                \"messages\": [ {\"role\": \"user\", \"content\": \"caf\\u00e9\"} ],\n \
                \"model\": \"m\", \"top_p\": 1e0, \"x_vendor\": {\"b\": 1, \"a\": 2}}";
    let response = post_chat_body(&gateway, body.into()).await;
    assert_eq!(response.status(), 200);
    let sent = &upstream.control.recorded()[0];
    assert_eq!(
        sent.raw_body,
        "{\"seed\":340282366920938463463374607431768211455,\"temperature\":0.50,\
         \"messages\":[ {\"role\": \"user\", \"content\": \"caf\\u00e9\"} ],\
         \"top_p\":1e0,\"x_vendor\":{\"b\": 1, \"a\": 2},\"model\":\"m\"}"
    );
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_across_requests_and_streams() {
    let upstream = spawn(EmulatorConfig::openai("vllm-a")).await.unwrap();
    let estate = openai_deployment("m@aws", "m", "aws", "us-east-1", &upstream, "");
    let gateway = Gateway::start(&estate).await;
    let body = |stream: bool| json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }], "stream": stream });
    for _ in 0..20 {
        let response = gateway.post_chat(body(false)).await;
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    assert_eq!(upstream.connections(), 1, "20 completions, one after the other");
    for _ in 0..10 {
        let events = sse_events(gateway.post_chat(body(true)).await).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    }
    // A stream's connection goes back once the end of its framing is read,
    // which may come just after `[DONE]` reached the client: the next
    // request can find the pool empty for that moment, but never every time.
    let connections = upstream.connections();
    assert!(connections <= 3, "10 streams took {connections} upstream connections");
    assert_eq!(upstream.control.stats().requests, 30);
}

#[tokio::test]
async fn chat_is_relayed_with_routing_headers_and_fields_passed_through() {
    let upstream = spawn(EmulatorConfig::openai("vllm-a")).await.unwrap();
    let estate = openai_deployment(
        "m@aws",
        "m",
        "aws",
        "us-east-1",
        &upstream,
        "upstream_model = \"meta/llama-3\"",
    );
    let gateway = Gateway::start(&estate).await;

    let body = json!({
        "model": "m",
        "messages": [{ "role": "user", "content": "hello" }],
        "tools": [{ "type": "function", "function": { "name": "f", "parameters": { "type": "object" } } }],
        "response_format": { "type": "json_object" },
        "seed": 42,
        "logprobs": true,
        "x_vendor_field": [1, 2, 3],
    });
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .header("x-request-id", "trace-123")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-skyweave-deployment"), "m@aws");
    assert_eq!(header(&response, "x-skyweave-cloud"), "aws");
    assert_eq!(header(&response, "x-skyweave-region"), "us-east-1");
    assert_eq!(header(&response, "x-skyweave-attempts"), "1");
    assert_eq!(header(&response, "x-request-id"), "trace-123");
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["object"], "chat.completion");
    assert!(reply["choices"][0]["message"]["content"].as_str().unwrap().contains("vllm-a"));

    let sent = &upstream.control.recorded()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.body["model"], "meta/llama-3");
    for field in ["tools", "response_format", "seed", "logprobs", "x_vendor_field", "messages"] {
        assert_eq!(sent.body[field], body[field], "field {field} passed through");
    }

    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "skyweave_requests_total",
            &["deployment=\"m@aws\"", "status=\"200\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, "skyweave_tokens_total", &["direction=\"output\""]).unwrap() > 0.0
    );
    assert!(metrics.contains("skyweave_gateway_overhead_seconds_bucket"));
    assert!(metrics.contains("skyweave_time_to_first_token_seconds_bucket"));
}

#[tokio::test]
async fn models_health_and_readiness() {
    let upstream = spawn(EmulatorConfig::openai("a")).await.unwrap();
    let estate = format!(
        "{}{}",
        openai_deployment("m1@aws", "m1", "aws", "us-east-1", &upstream, ""),
        openai_deployment("m2@gcp", "m2", "gcp", "us-east4", &upstream, "")
    );
    let gateway = Gateway::start(&estate).await;
    let models: Value =
        reqwest::get(gateway.url("/v1/models")).await.unwrap().json().await.unwrap();
    let ids: Vec<&str> =
        models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["m1", "m2"]);
    assert_eq!(models["object"], "list");
    assert_eq!(reqwest::get(gateway.url("/healthz")).await.unwrap().status(), 200);
    let ready = reqwest::get(gateway.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(!header(&ready, "x-request-id").is_empty(), "every response has a request id");
}

/// One malformed or unacceptable request and the OpenAI-shaped error it must get.
/// Posts a chat request body as given, byte for byte.
async fn post_chat_body(gateway: &Gateway, body: reqwest::Body) -> reqwest::Response {
    client()
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn check_rejected(
    gateway: &Gateway,
    body: reqwest::Body,
    status: u16,
    code: Option<&str>,
    param: Option<&str>,
) {
    let response = post_chat_body(gateway, body).await;
    assert_eq!(response.status(), status);
    assert!(!header(&response, "x-request-id").is_empty());
    let error: Value = response.json().await.unwrap();
    let error = &error["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    assert!(error["type"].is_string(), "{error}");
    if let Some(code) = code {
        assert_eq!(error["code"], code, "{error}");
    }
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{error}");
    }
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_precise_errors() {
    let upstream = spawn(EmulatorConfig::openai("a")).await.unwrap();
    let estate = format!(
        "[server]\nmax_body_bytes = 2048\n{}",
        openai_deployment("m@aws", "m", "aws", "us-east-1", &upstream, "")
    );
    let gateway = Gateway::start(&estate).await;
    let json = |v: Value| reqwest::Body::from(v.to_string());
    check_rejected(&gateway, "{not json".into(), 400, Some("invalid_json"), None).await;
    check_rejected(&gateway, "[1,2]".into(), 400, None, None).await;
    check_rejected(
        &gateway,
        json(json!({"messages": []})),
        400,
        Some("missing_required_parameter"),
        Some("model"),
    )
    .await;
    check_rejected(
        &gateway,
        json(json!({"model": "m"})),
        400,
        Some("missing_required_parameter"),
        Some("messages"),
    )
    .await;
    check_rejected(
        &gateway,
        json(json!({"model": "m", "messages": []})),
        400,
        None,
        Some("messages"),
    )
    .await;
    check_rejected(
        &gateway,
        json(json!({"model": "m", "messages": [{"content": "x"}]})),
        400,
        None,
        Some("messages[0].role"),
    )
    .await;
    check_rejected(
        &gateway,
        json(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
        ),
        400,
        None,
        Some("stream"),
    )
    .await;
    check_rejected(
        &gateway,
        json(json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]})),
        404,
        Some("model_not_found"),
        Some("model"),
    )
    .await;
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    check_rejected(&gateway, json(big), 413, Some("request_too_large"), None).await;
    assert_eq!(upstream.control.requests(), 0, "nothing malformed reached the upstream");

    let not_found = client().post(gateway.url("/v2/unknown")).send().await.unwrap();
    assert_eq!(not_found.status(), 404);
    let wrong_method = client().get(gateway.url("/v1/chat/completions")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    let error: Value = wrong_method.json().await.unwrap();
    assert!(error["error"]["message"].is_string());
}

#[tokio::test]
async fn embeddings_through_openai_and_sim() {
    let upstream = spawn(EmulatorConfig::openai("emb")).await.unwrap();
    let estate = format!(
        "{}[[deployment]]\nname = \"e@sim\"\nmodel = \"e-sim\"\nprovider = \"sim\"\ncloud = \"gcp\"\nregion = \"us-east4\"\nsim = {{ ttft_ms = 1, embedding_dimensions = 4 }}\n",
        openai_deployment("e@aws", "e", "aws", "us-east-1", &upstream, "")
    );
    let gateway = Gateway::start(&estate).await;
    for (model, simulated) in [("e", ""), ("e-sim", "true")] {
        let response = client()
            .post(gateway.url("/v1/embeddings"))
            .json(&json!({ "model": model, "input": ["a", "b"] }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{model}");
        assert_eq!(header(&response, "x-skyweave-simulated"), simulated);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["data"].as_array().unwrap().len(), 2, "{body}");
        assert!(body["data"][1]["embedding"].as_array().unwrap().len() >= 4);
    }
    let missing = client()
        .post(gateway.url("/v1/embeddings"))
        .json(&json!({ "model": "e" }))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["param"], "input");
}

#[tokio::test]
async fn azure_wire_format_and_content_filter() {
    let key = "azure-test-key-0001";
    let azure = spawn(EmulatorConfig::azure("az").with_api_key(key)).await.unwrap();
    let backup = spawn(EmulatorConfig::openai("backup")).await.unwrap();
    let estate = format!(
        "{}{}",
        azure_deployment("gpt@azure", "gpt", "eastus", &azure, "AZ_KEY", ""),
        openai_deployment("gpt@backup", "gpt", "aws", "us-east-1", &backup, "priority = 1")
    );
    let gateway = Gateway::start_with_env(&estate, &[("AZ_KEY", key)]).await;

    let response = gateway.chat("gpt").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-skyweave-deployment"), "gpt@azure");
    let sent = &azure.control.recorded()[0];
    assert_eq!(sent.path, "/openai/deployments/gpt-azure-dep/chat/completions");
    assert_eq!(sent.query_param("api-version"), Some("2024-10-21"));
    assert_eq!(sent.header("api-key"), Some(key));
    assert!(sent.body.get("model").is_none(), "Azure names the model by the URL");

    azure.control.set_behaviour(Behaviour::ContentFilter);
    let filtered = gateway.chat("gpt").await;
    assert_eq!(filtered.status(), 400);
    assert_eq!(header(&filtered, "x-skyweave-deployment"), "gpt@azure");
    let error: Value = filtered.json().await.unwrap();
    assert_eq!(error["error"]["code"], "content_filter", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the prompt was refused by Azure OpenAI's content filter: "),
        "{message}"
    );
    assert_eq!(error["error"]["innererror"]["code"], "ResponsibleAIPolicyViolation", "{error}");
    assert_eq!(backup.control.requests(), 0, "a filtered prompt is not retried elsewhere");
}

#[tokio::test]
async fn upstream_client_errors_are_returned_not_retried() {
    let first = spawn(EmulatorConfig::openai("first")).await.unwrap();
    let second = spawn(EmulatorConfig::openai("second")).await.unwrap();
    first.control.set_behaviour(Behaviour::Status {
        status: 400,
        retry_after_secs: None,
        message: Some("tools[0] is invalid".into()),
    });
    let estate = format!(
        "{}{}",
        openai_deployment("m@a", "m", "aws", "us-east-1", &first, ""),
        openai_deployment("m@b", "m", "gcp", "us-east4", &second, "priority = 1")
    );
    let gateway = Gateway::start(&estate).await;
    let response = gateway.chat("m").await;
    assert_eq!(response.status(), 400);
    assert_eq!(header(&response, "x-skyweave-attempts"), "1");
    assert_eq!(header(&response, "x-skyweave-deployment"), "m@a");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["message"], "tools[0] is invalid", "passed back as it was: {error}");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(second.control.requests(), 0);
}

#[tokio::test]
async fn oversized_bodies_without_a_length_are_refused_too() {
    let upstream = spawn(EmulatorConfig::openai("a")).await.unwrap();
    let estate = format!(
        "[server]\nmax_body_bytes = 2048\n{}",
        openai_deployment("m@aws", "m", "aws", "us-east-1", &upstream, "")
    );
    let gateway = Gateway::start(&estate).await;
    // A chunked body: no Content-Length to judge by up front.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b' '; 1024])).collect();
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "request_too_large");
}

#[tokio::test]
async fn tokens_per_minute_limit_moves_traffic_and_counts_real_usage() {
    let small = spawn(EmulatorConfig::openai("small")).await.unwrap();
    let big = spawn(EmulatorConfig::openai("big")).await.unwrap();
    // Slow enough that the four requests overlap.
    small.control.set_behaviour(Behaviour::ok(300, 0, 4));
    // Each request reserves its prompt estimate plus max_tokens (100) up
    // front; the emulator then reports the real, smaller usage.
    let estate = format!(
        "[[model]]\nname = \"m\"\nstrategy = \"priority\"\n{}{}",
        openai_deployment("m@small", "m", "aws", "us-east-1", &small, "limits = { tpm = 250 }"),
        openai_deployment("m@big", "m", "azure", "eastus", &big, "priority = 1")
    );
    let gateway = Gateway::start(&estate).await;
    let body = json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 100 });
    // Concurrent requests see the up-front reservations: only two fit in 250.
    let responses =
        futures::future::join_all((0..4).map(|_| gateway.post_chat(body.clone()))).await;
    let served_small =
        responses.iter().filter(|r| header(r, "x-skyweave-deployment") == "m@small").count();
    assert_eq!(served_small, 2);
    // Settled with the real usage (a few tokens each), the window has room again.
    let response = gateway.post_chat(body.clone()).await;
    assert_eq!(header(&response, "x-skyweave-deployment"), "m@small");
}
