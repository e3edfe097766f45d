//! The `vertex` provider against the Google emulator: OAuth tokens from a
//! service-account key (signed JWT verified by the emulator) and from the
//! metadata server, Gemini translation both ways, the OpenAI-compatible
//! mode, Google's errors, and failover across Azure, AWS and Google.

use serde_json::{json, Value};
use skyweave_emulators::{
    spawn, spawn_bedrock, BedrockBehaviour, BedrockConfig, Behaviour, EmulatorConfig,
    GoogleBehaviour,
};

use crate::support::*;

const GEMINI: &str = "gemini-2.0-flash-001";

fn chat(stream: bool) -> Value {
    json!({
        "model": "gemini",
        "messages": [{ "role": "system", "content": "be brief" }, { "role": "user", "content": "hello" }],
        "max_tokens": 64,
        "stream": stream,
    })
}

#[tokio::test]
async fn gemini_with_a_service_account_key() {
    let upstream = google("vertex-west", "europe-west4").await;
    let dir = TempDir::new();
    let key = service_account_file(&dir, &upstream, GCP_SERVICE_ACCOUNT);
    let estate = vertex_deployment(
        "gemini@gcp",
        "gemini",
        "europe-west4",
        &upstream,
        GEMINI,
        &format!("google = {{ service_account_file = \"{}\" }}", key.display()),
    );
    let gateway = Gateway::start(&estate).await;

    let response = gateway.post_chat(chat(false)).await;
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert!(
        reply["choices"][0]["message"]["content"].as_str().unwrap().contains("vertex-west"),
        "{reply}"
    );
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    let sent = &upstream
        .control
        .recorded()
        .into_iter()
        .find(|r| r.path.ends_with(":generateContent"))
        .unwrap();
    assert_eq!(sent.path, format!("/v1/projects/{GCP_PROJECT}/locations/europe-west4/publishers/google/models/{GEMINI}:generateContent"));
    assert_eq!(sent.body["systemInstruction"]["parts"][0]["text"], "be brief");
    assert_eq!(sent.body["generationConfig"]["maxOutputTokens"], 64);

    let events = sse_events(gateway.post_chat(chat(true)).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    let text: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert!(text.contains("vertex-west"), "{text}");
    assert_eq!(upstream.control.issued_tokens(), 1, "the token is cached across requests");
    assert_eq!(upstream.control.rejected_tokens(), 0);
}

#[tokio::test]
async fn function_calls_round_trip_through_gemini() {
    let upstream = google("vertex", "us-central1").await;
    let dir = TempDir::new();
    let key = service_account_file(&dir, &upstream, GCP_SERVICE_ACCOUNT);
    let estate = vertex_deployment(
        "gemini@gcp",
        "gemini",
        "us-central1",
        &upstream,
        GEMINI,
        &format!("google = {{ service_account_file = \"{}\" }}", key.display()),
    );
    let gateway = Gateway::start(&estate).await;
    let tools = json!([{ "type": "function", "function": { "name": "get_weather",
        "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] } } }]);
    let reply: Value = gateway
        .post_chat(json!({ "model": "gemini", "tools": tools, "messages": [{ "role": "user", "content": "please use a tool" }] }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["choices"][0]["finish_reason"], "tool_calls", "{reply}");
    let call = &reply["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let follow_up = json!({ "model": "gemini", "tools": tools, "messages": [
        { "role": "user", "content": "please use a tool" },
        { "role": "assistant", "content": null, "tool_calls": [call] },
        { "role": "tool", "tool_call_id": call["id"], "content": "{\"sky\": \"clear\"}" },
    ]});
    assert_eq!(gateway.post_chat(follow_up).await.status(), 200);
    let sent = upstream
        .control
        .recorded()
        .into_iter()
        .rfind(|r| r.path.ends_with(":generateContent"))
        .unwrap();
    assert_eq!(
        sent.body["contents"][2]["parts"][0]["functionResponse"]["name"], "get_weather",
        "{}",
        sent.body
    );
}

#[tokio::test]
async fn the_openai_compatible_mode_and_the_metadata_server() {
    let upstream = google("vertex-maas", "us-central1").await;
    let estate = format!(
        "[[deployment]]\nname = \"llama@gcp\"\nmodel = \"llama\"\nprovider = \"vertex\"\ncloud = \"gcp\"\nregion = \"us-central1\"\nendpoint = \"{}\"\nvertex = {{ project = \"{GCP_PROJECT}\", model = \"meta/llama-3.1-405b-instruct-maas\", mode = \"openai\" }}\ngoogle = {{ metadata_server = true }}\n",
        upstream.base_url()
    );
    let host = upstream.base_url();
    let gateway = Gateway::start_with_env(&estate, &[("GCE_METADATA_HOST", host.as_str())]).await;
    let response = gateway
        .post_chat(json!({ "model": "llama", "messages": [{ "role": "user", "content": "hi" }] }))
        .await;
    assert_eq!(response.status(), 200);
    let sent = upstream
        .control
        .recorded()
        .into_iter()
        .find(|r| r.path.ends_with("/chat/completions"))
        .unwrap();
    assert_eq!(
        sent.path,
        format!(
            "/v1/projects/{GCP_PROJECT}/locations/us-central1/endpoints/openapi/chat/completions"
        )
    );
    assert_eq!(sent.body["model"], "meta/llama-3.1-405b-instruct-maas");
    let streamed = sse_events(gateway.post_chat(json!({ "model": "llama", "stream": true, "messages": [{ "role": "user", "content": "hi" }] })).await).await;
    assert_eq!(streamed.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn google_errors_map_and_a_refused_grant_is_the_deployments_problem() {
    let upstream = google("vertex", "us-central1").await;
    let backup = spawn(EmulatorConfig::openai("backup")).await.unwrap();
    let dir = TempDir::new();
    let key = service_account_file(&dir, &upstream, GCP_SERVICE_ACCOUNT);
    let estate = format!(
        "{}{}",
        vertex_deployment(
            "gemini@gcp",
            "gemini",
            "us-central1",
            &upstream,
            GEMINI,
            &format!("google = {{ service_account_file = \"{}\" }}", key.display())
        ),
        openai_deployment("gemini@backup", "gemini", "aws", "us-east-1", &backup, "priority = 1")
    );
    let gateway = Gateway::start(&estate).await;
    for status in ["RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "PERMISSION_DENIED"] {
        upstream.control.push_script(vec![GoogleBehaviour::google_status(status)]);
        let response = gateway.post_chat(chat(false)).await;
        assert_eq!(
            header(&response, "x-skyweave-deployment"),
            "gemini@backup",
            "{status} fails over"
        );
    }
    upstream.control.push_script(vec![GoogleBehaviour::google_status("INVALID_ARGUMENT")]);
    let refused = gateway.post_chat(chat(false)).await;
    assert_eq!(refused.status(), 400, "the caller's own error is not retried");

    // A key whose JWT the token endpoint refuses (wrong issuer).
    let stranger = google("vertex-2", "us-central1").await;
    let wrong =
        service_account_file(&dir, &stranger, "someone-else@elsewhere.iam.gserviceaccount.com");
    let estate = format!(
        "{}{}",
        vertex_deployment(
            "gemini@gcp",
            "gemini",
            "us-central1",
            &stranger,
            GEMINI,
            &format!("google = {{ service_account_file = \"{}\" }}", wrong.display())
        ),
        openai_deployment("gemini@backup", "gemini", "aws", "us-east-1", &backup, "priority = 1")
    );
    let gateway = Gateway::start(&estate).await;
    let response = gateway.post_chat(chat(false)).await;
    assert_eq!(header(&response, "x-skyweave-deployment"), "gemini@backup");
    assert_eq!(stranger.control.rejected_tokens(), 1);
    let (_, logs) = gateway.terminate().await;
    assert!(
        !logs.contains("BEGIN PRIVATE KEY") && !logs.contains("ya29."),
        "no key or token in logs"
    );
}

#[tokio::test]
async fn one_model_on_azure_aws_and_google_survives_each_going_down() {
    let key = "azure-three-clouds";
    let azure = spawn(EmulatorConfig::azure("azure").with_api_key(key)).await.unwrap();
    let aws = spawn_bedrock(BedrockConfig::new("aws", "us-east-1", AWS_KEY_ID, AWS_SECRET))
        .await
        .unwrap();
    let gcp = google("gcp", "us-east4").await;
    let dir = TempDir::new();
    let sa = service_account_file(&dir, &gcp, GCP_SERVICE_ACCOUNT);
    let estate = format!(
        "{FAST_BREAKER}{}{}{}",
        azure_deployment("gemini@azure", "gemini", "eastus", &azure, "AZ_KEY", ""),
        bedrock_deployment(
            "gemini@aws",
            "gemini",
            "us-east-1",
            &aws,
            "anthropic.claude-3-haiku-20240307-v1:0",
            ""
        ),
        vertex_deployment(
            "gemini@gcp",
            "gemini",
            "us-east4",
            &gcp,
            GEMINI,
            &format!("google = {{ service_account_file = \"{}\" }}", sa.display())
        )
    );
    let mut env = aws_env();
    env.push(("AZ_KEY", key));
    let gateway = Gateway::start_with_env(&estate, &env).await;
    type SetDown = Box<dyn Fn(bool) + Send>;
    let downs: [(&str, SetDown); 3] = [
        (
            "gemini@azure",
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
            "gemini@aws",
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
            "gemini@gcp",
            Box::new({
                let c = gcp.control.clone();
                move |down| {
                    c.set_behaviour(if down {
                        GoogleBehaviour::google_status("UNAVAILABLE")
                    } else {
                        GoogleBehaviour::default()
                    })
                }
            }),
        ),
    ];
    let mut served = std::collections::BTreeSet::new();
    for (down_name, set_down) in &downs {
        set_down(true);
        for stream in [false, true] {
            for _ in 0..6 {
                let response = gateway.post_chat(chat(stream)).await;
                assert_eq!(response.status(), 200, "{down_name} down");
                let by = header(&response, "x-skyweave-deployment").to_string();
                assert_ne!(&by, down_name);
                served.insert(by);
                if stream {
                    assert_eq!(sse_events(response).await.last().unwrap(), "[DONE]");
                }
            }
        }
        set_down(false);
        // The restored deployment serves again once its breaker lets
        // traffic through (how soon depends on the cooldown and the load,
        // so wait for it rather than assume it).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let response = gateway.post_chat(chat(false)).await;
            assert_eq!(response.status(), 200, "after {down_name} came back");
            let by = header(&response, "x-skyweave-deployment").to_string();
            served.insert(by.clone());
            if by == *down_name {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{down_name} never served again");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    assert_eq!(served.len(), 3, "every cloud served while another was down: {served:?}");
}
