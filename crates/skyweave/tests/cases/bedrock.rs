//! The `bedrock` provider against the Bedrock Runtime emulator: SigV4 on
//! every request, Converse translation both ways, the binary event stream,
//! Bedrock's errors, embeddings, and failover across three protocols.

use serde_json::{json, Value};
use skyweave_emulators::{
    spawn, spawn_bedrock, BedrockBehaviour, BedrockConfig, Behaviour, EmulatorConfig,
};

use crate::support::*;

const CLAUDE: &str = "anthropic.claude-3-haiku-20240307-v1:0";

async fn bedrock(name: &str) -> skyweave_emulators::BedrockEmulator {
    spawn_bedrock(BedrockConfig::new(name, "us-east-1", AWS_KEY_ID, AWS_SECRET)).await.unwrap()
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "claude",
        "messages": [
            { "role": "system", "content": "be brief" },
            { "role": "user", "content": "hello" }
        ],
        "max_tokens": 64,
        "stream": stream,
        "stream_options": if stream { json!({ "include_usage": true }) } else { Value::Null },
    })
}

#[tokio::test]
async fn converse_is_signed_translated_and_answered() {
    let upstream = bedrock("bedrock-east").await;
    let estate = bedrock_deployment("claude@aws", "claude", "us-east-1", &upstream, CLAUDE, "");
    let gateway = Gateway::start_with_env(&estate, &aws_env()).await;

    let response = gateway.post_chat(chat_body(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-skyweave-deployment"), "claude@aws");
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["object"], "chat.completion");
    assert!(
        reply["choices"][0]["message"]["content"].as_str().unwrap().contains("bedrock-east"),
        "{reply}"
    );
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    assert!(reply["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    assert_eq!(upstream.control.rejected_signatures(), 0, "every request verified");
    let sent = &upstream.control.recorded()[0];
    assert_eq!(sent.path, "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse");
    assert!(sent
        .header("authorization")
        .unwrap()
        .starts_with(&format!("AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/")));
    assert_eq!(sent.body["system"], json!([{ "text": "be brief" }]));
    assert_eq!(sent.body["messages"][0]["content"][0]["text"], "hello");
    assert_eq!(sent.body["inferenceConfig"]["maxTokens"], 64);
}

#[tokio::test]
async fn converse_stream_frames_become_openai_chunks() {
    let upstream = bedrock("bedrock-stream").await;
    upstream.control.set_behaviour(BedrockBehaviour::ok(0, 5, 6));
    let estate = bedrock_deployment("claude@aws", "claude", "us-east-1", &upstream, CLAUDE, "");
    let gateway = Gateway::start_with_env(&estate, &aws_env()).await;
    let events = sse_events(gateway.post_chat(chat_body(true)).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(text.contains("bedrock-stream"), "{text}");
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    assert_eq!(upstream.control.recorded()[0].operation.as_deref(), Some("converse-stream"));
}

#[tokio::test]
async fn tool_calls_round_trip() {
    let upstream = bedrock("bedrock-tools").await;
    let estate = bedrock_deployment("claude@aws", "claude", "us-east-1", &upstream, CLAUDE, "");
    let gateway = Gateway::start_with_env(&estate, &aws_env()).await;
    let tools = json!([{ "type": "function", "function": {
        "name": "get_weather", "description": "weather",
        "parameters": { "type": "object", "properties": { "city": { "type": "string" } } } } }]);
    let body = json!({ "model": "claude", "tools": tools,
        "messages": [{ "role": "user", "content": "please use a tool" }] });
    let reply: Value = gateway.post_chat(body.clone()).await.json().await.unwrap();
    assert_eq!(reply["choices"][0]["finish_reason"], "tool_calls", "{reply}");
    let call = &reply["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        upstream.control.recorded()[0].body["toolConfig"]["tools"][0]["toolSpec"]["name"],
        "get_weather"
    );

    // The tool's result goes back as a toolResult block.
    let follow_up = json!({ "model": "claude", "tools": tools, "messages": [
        { "role": "user", "content": "please use a tool" },
        { "role": "assistant", "content": null, "tool_calls": [call] },
        { "role": "tool", "tool_call_id": call["id"], "content": "sunny" },
    ]});
    let response = gateway.post_chat(follow_up).await;
    assert_eq!(response.status(), 200);
    let sent = &upstream.control.recorded()[1];
    let result = &sent.body["messages"][2]["content"][0]["toolResult"];
    assert_eq!(result["toolUseId"], call["id"], "{}", sent.body);

    // Streamed tool calls arrive as OpenAI tool-call deltas.
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let events = sse_events(gateway.post_chat(streamed).await).await;
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.iter().any(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "get_weather"), "{events:?}");
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"), "{events:?}");
}

#[tokio::test]
async fn bedrock_errors_map_to_the_right_behaviour() {
    let upstream = bedrock("primary").await;
    let backup = spawn(EmulatorConfig::openai("backup")).await.unwrap();
    let estate = format!(
        "{}{}",
        bedrock_deployment("claude@aws", "claude", "us-east-1", &upstream, CLAUDE, ""),
        openai_deployment("claude@backup", "claude", "gcp", "us-east4", &backup, "priority = 1")
    );
    let gateway = Gateway::start_with_env(&estate, &aws_env()).await;
    for exception in [
        "ThrottlingException",
        "ServiceUnavailableException",
        "ModelNotReadyException",
        "InternalServerException",
        "AccessDeniedException",
    ] {
        upstream.control.push_script(vec![BedrockBehaviour::exception(exception)]);
        let response = gateway.post_chat(chat_body(false)).await;
        assert_eq!(
            header(&response, "x-skyweave-deployment"),
            "claude@backup",
            "{exception} fails over"
        );
    }
    upstream.control.push_script(vec![BedrockBehaviour::exception("ValidationException")]);
    let refused = gateway.post_chat(chat_body(false)).await;
    assert_eq!(refused.status(), 400, "the caller's own error is not retried");
    assert_eq!(header(&refused, "x-skyweave-attempts"), "1");
}

#[tokio::test]
async fn a_wrong_secret_is_the_deployments_problem_and_never_leaks() {
    let upstream = bedrock("bedrock").await;
    let backup = spawn(EmulatorConfig::openai("backup")).await.unwrap();
    let estate = format!(
        "{}{}",
        bedrock_deployment("claude@aws", "claude", "us-east-1", &upstream, CLAUDE, ""),
        openai_deployment("claude@backup", "claude", "gcp", "us-east4", &backup, "priority = 1")
    );
    let wrong = "wrong/secret/key/that/must/not/leak/xyz";
    let env = [("AWS_ACCESS_KEY_ID", AWS_KEY_ID), ("AWS_SECRET_ACCESS_KEY", wrong)];
    let gateway = Gateway::start_with_env(&estate, &env).await;
    let response = gateway.post_chat(chat_body(false)).await;
    assert_eq!(header(&response, "x-skyweave-deployment"), "claude@backup");
    assert_eq!(
        upstream.control.rejected_signatures(),
        1,
        "the emulator checked the signature and refused it"
    );
    let metrics = gateway.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "skyweave_upstream_attempts_total",
            &["deployment=\"claude@aws\"", "outcome=\"deployment_config\""]
        )
        .is_some(),
        "{metrics}"
    );
    let (_, logs) = gateway.terminate().await;
    assert!(!logs.contains(wrong) && !metrics.contains(wrong));
}

#[tokio::test]
async fn corrupt_frames_and_mid_stream_exceptions_are_errors_never_data() {
    let upstream = bedrock("bedrock").await;
    let estate = bedrock_deployment("claude@aws", "claude", "us-east-1", &upstream, CLAUDE, "");
    let gateway = Gateway::start_with_env(&estate, &aws_env()).await;
    for (behaviour, code) in [
        (BedrockBehaviour::CorruptFrame { after_chunks: 2 }, "upstream_protocol"),
        (BedrockBehaviour::CorruptPrelude { after_chunks: 2 }, "upstream_protocol"),
        (BedrockBehaviour::exception_mid_stream(2, "ThrottlingException"), "upstream_rate_limited"),
        (BedrockBehaviour::CutAfterChunks { chunks: 2 }, "upstream_stream_cut"),
    ] {
        upstream.control.set_behaviour(behaviour.clone());
        let events = sse_events(gateway.post_chat(chat_body(true)).await).await;
        assert!(!events.iter().any(|e| e == "[DONE]"), "{behaviour:?}: {events:?}");
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], code, "{behaviour:?}: {last}");
    }
}

#[tokio::test]
async fn titan_embeddings_through_invoke_model() {
    let upstream = bedrock("bedrock").await;
    let estate = bedrock_deployment(
        "embed@aws",
        "embed",
        "us-east-1",
        &upstream,
        "amazon.titan-embed-text-v2:0",
        "",
    );
    let gateway = Gateway::start_with_env(&estate, &aws_env()).await;
    let response = client()
        .post(gateway.url("/v1/embeddings"))
        .json(&json!({ "model": "embed", "input": ["alpha", "beta"], "dimensions": 256 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["index"], 1);
    assert!(!body["data"][0]["embedding"].as_array().unwrap().is_empty());
    let sent = upstream.control.recorded();
    assert_eq!(sent.len(), 2, "Titan embeds one text per call");
    assert_eq!(sent[0].operation.as_deref(), Some("invoke"));
}

#[tokio::test]
async fn one_model_on_three_protocols_survives_each_going_down() {
    let key = "azure-failover-key";
    let azure = spawn(EmulatorConfig::azure("azure").with_api_key(key)).await.unwrap();
    let aws = bedrock("aws").await;
    let vllm = spawn(EmulatorConfig::openai("vllm")).await.unwrap();
    let estate = format!(
        "{FAST_BREAKER}{}{}{}",
        azure_deployment("chat@azure", "claude", "eastus", &azure, "AZ_KEY", ""),
        bedrock_deployment("chat@aws", "claude", "us-east-1", &aws, CLAUDE, ""),
        openai_deployment("chat@gcp", "claude", "gcp", "us-east4", &vllm, "")
    );
    let mut env = aws_env();
    env.push(("AZ_KEY", key));
    let gateway = Gateway::start_with_env(&estate, &env).await;
    type SetDown = Box<dyn Fn(bool) + Send>;
    let downs: [(&str, SetDown); 3] = [
        (
            "chat@azure",
            Box::new({
                let c = azure.control.clone();
                move |down| {
                    c.set_behaviour(if down {
                        Behaviour::status(503)
                    } else {
                        Behaviour::default()
                    })
                }
            }),
        ),
        (
            "chat@aws",
            Box::new({
                let c = aws.control.clone();
                move |down| {
                    c.set_behaviour(if down {
                        BedrockBehaviour::exception("ServiceUnavailableException")
                    } else {
                        BedrockBehaviour::default()
                    })
                }
            }),
        ),
        (
            "chat@gcp",
            Box::new({
                let c = vllm.control.clone();
                move |down| {
                    c.set_behaviour(if down { Behaviour::Reset } else { Behaviour::default() })
                }
            }),
        ),
    ];
    for (down_name, set_down) in &downs {
        set_down(true);
        for stream in [false, true] {
            for _ in 0..6 {
                let response = gateway.post_chat(chat_body(stream)).await;
                assert_eq!(response.status(), 200, "{down_name} down");
                let served = header(&response, "x-skyweave-deployment").to_string();
                assert_ne!(&served, down_name);
                if stream {
                    assert_eq!(sse_events(response).await.last().unwrap(), "[DONE]");
                }
            }
        }
        set_down(false);
    }
}

#[tokio::test]
async fn container_and_web_identity_credentials_sign_with_their_session_token() {
    use skyweave_emulators::{spawn_aws_credentials, AwsCredentialsConfig};
    let session = "FwoGZXIvYXdzEJr-skyweave-session-token";
    let issued = AwsCredentialsConfig {
        access_key_id: "ASIASKYWEAVETEMP".into(),
        secret_access_key: "temporary/secret/key".into(),
        session_token: session.into(),
        expiration: "2099-01-01T00:00:00Z".into(),
        container_authorization: Some("container-auth-token".into()),
        web_identity_token: "eyJ.web-identity.token".into(),
        role_arn: "arn:aws:iam::123456789012:role/skyweave".into(),
    };
    let credentials = spawn_aws_credentials(issued.clone()).await.unwrap();
    let upstream = spawn_bedrock(
        BedrockConfig::new(
            "bedrock",
            "us-east-1",
            &issued.access_key_id,
            &issued.secret_access_key,
        )
        .with_session_token(session),
    )
    .await
    .unwrap();
    let estate = bedrock_deployment("claude@aws", "claude", "us-east-1", &upstream, CLAUDE, "");
    let dir = TempDir::new();
    let nowhere = dir.path().join("absent").display().to_string();
    let token_file = dir.write("web-identity-token", &issued.web_identity_token);
    let token_file = token_file.display().to_string();
    let container_uri = format!("{}/creds", credentials.base_url());
    let sts = credentials.base_url();
    // No static keys and no profile files: the chain must reach these sources.
    let base: Vec<(&str, &str)> = vec![
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
        ("AWS_PROFILE", ""),
        ("AWS_SHARED_CREDENTIALS_FILE", &nowhere),
        ("AWS_CONFIG_FILE", &nowhere),
    ];
    let container: Vec<(&str, &str)> = base
        .iter()
        .copied()
        .chain([
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", container_uri.as_str()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-auth-token"),
        ])
        .collect();
    let web_identity: Vec<(&str, &str)> = base
        .iter()
        .copied()
        .chain([
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.as_str()),
            ("AWS_ROLE_ARN", issued.role_arn.as_str()),
            ("AWS_ENDPOINT_URL_STS", sts.as_str()),
        ])
        .collect();
    for (source, env) in [("container", container), ("web identity", web_identity)] {
        let before = credentials.issued();
        let gateway = Gateway::start_with_env(&estate, &env).await;
        for _ in 0..3 {
            let response = gateway.post_chat(chat_body(false)).await;
            assert_eq!(response.status(), 200, "{source}: {}", response.text().await.unwrap());
        }
        assert_eq!(credentials.issued(), before + 1, "{source}: fetched once, then cached");
        let (_, logs) = gateway.terminate().await;
        assert!(!logs.contains(session) && !logs.contains(&issued.secret_access_key), "{source}");
    }
    assert_eq!(upstream.control.rejected_signatures(), 0);
    let sent = upstream.control.recorded();
    assert!(sent.iter().all(|r| r.header("x-amz-security-token") == Some(session)));
    assert_eq!(credentials.refused(), 0);
}
