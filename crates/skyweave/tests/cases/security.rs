//! Secrets never leave through logs, errors or metrics; a deployment whose
//! key is refused is a configuration problem of that deployment.

use serde_json::Value;
use skyweave_emulators::{spawn, Behaviour, EmulatorConfig};

use crate::support::*;

#[tokio::test]
async fn keys_reach_the_upstream_and_nothing_else() {
    let good_key = "sk-skyweave-good-5b1c9e";
    let wrong_key = "sk-skyweave-wrong-77aa02";
    let openai = spawn(EmulatorConfig::openai("openai").with_api_key(good_key)).await.unwrap();
    let azure = spawn(EmulatorConfig::azure("azure").with_api_key(good_key)).await.unwrap();
    let backup = spawn(EmulatorConfig::openai("backup")).await.unwrap();
    let estate = format!(
        "{FAST_BREAKER}{}{}{}",
        openai_deployment(
            "m@openai",
            "m",
            "openai",
            "us-east-1",
            &openai,
            "auth = { api_key_env = \"GOOD_KEY\" }"
        ),
        azure_deployment("m@azure", "m", "eastus", &azure, "WRONG_KEY", ""),
        openai_deployment("m@backup", "m", "gcp", "us-east4", &backup, "priority = 1")
    );
    let gateway =
        Gateway::start_with_env(&estate, &[("GOOD_KEY", good_key), ("WRONG_KEY", wrong_key)]).await;

    let mut bodies = String::new();
    for _ in 0..8 {
        let response = gateway.chat("m").await;
        assert_eq!(response.status(), 200);
        bodies.push_str(&format!("{:?}", response.headers()));
        bodies.push_str(&response.text().await.unwrap());
    }
    // The OpenAI deployment got its key as a bearer token.
    let sent = openai.control.recorded();
    assert!(!sent.is_empty());
    assert_eq!(sent[0].header("authorization"), Some(&*format!("Bearer {good_key}")));
    // The Azure deployment's key is refused (401): its circuit opens after two
    // failures and its requests were served elsewhere.
    assert!(azure.control.requests() <= 3, "{}", azure.control.requests());
    let metrics = gateway.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "skyweave_upstream_attempts_total",
            &["deployment=\"m@azure\"", "outcome=\"deployment_config\""]
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );

    // Errors, too: a failing request's body names the deployment, not the key.
    openai.control.set_behaviour(Behaviour::status(500));
    backup.control.set_behaviour(Behaviour::status(500));
    let failed = gateway.chat("m").await;
    let error: Value = failed.json().await.unwrap();
    bodies.push_str(&error.to_string());

    let (_, logs) = gateway.terminate().await;
    for secret in [good_key, wrong_key] {
        assert!(!logs.contains(secret), "a key leaked into the logs");
        assert!(!metrics.contains(secret), "a key leaked into the metrics");
        assert!(!bodies.contains(secret), "a key leaked into a response");
    }
    assert!(logs.contains("\"request_id\""), "logs are structured and carry the request id");
    let failover_lines: Vec<&str> = logs.lines().filter(|l| l.contains("failing over")).collect();
    assert!(!failover_lines.is_empty());
    assert!(
        failover_lines.iter().all(|l| l.contains("\"request_id\":\"req_")),
        "{failover_lines:?}"
    );
}
