//! Tenants and API keys: `skyweave keys` against the gateway's key database,
//! 401/403 on every way a key can be wrong, residency (also during
//! failover), revocation on the next request, and no secret at rest or in
//! logs.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::support::{client, header, sim_deployment, Gateway, TempDir, BIN};

fn sim(model: &str, cloud: &str, region: &str, settings: &str) -> String {
    sim_deployment(model, cloud, region, "", settings)
}

fn estate(database: &Path) -> String {
    let deployments = [
        sim("chat", "aws", "us-east-1", ""),
        sim("chat", "azure", "westeurope", ""),
        // The EU tenant's only place for `flaky` always fails.
        sim("flaky", "azure", "westeurope", "ttft_ms = 1, output_tokens = 3, error_rate = 1.0"),
        sim("flaky", "aws", "us-east-1", ""),
        sim("other", "aws", "us-east-1", ""),
    ]
    .concat();
    format!(
        r#"
[server]
database = "{}"

[circuit_breaker]
consecutive_failures = 100

{deployments}
[[tenant]]
name = "eu-bank"
models = ["chat", "flaky"]
regions = ["westeurope"]

[[tenant]]
name = "lab"
"#,
        database.display()
    )
}

fn keys(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output =
        Command::new(BIN).arg("keys").arg("--config").arg(config).args(args).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn create(config: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = keys(config, &[&["create"], args].concat());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("sk-sw-"), "{stdout}");
    stdout
}

async fn chat(gateway: &Gateway, key: Option<&str>, model: &str) -> reqwest::Response {
    let mut request = client()
        .post(gateway.url("/v1/chat/completions"))
        .json(&json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] }));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    (
        status,
        error["code"].as_str().unwrap_or_default().into(),
        error["message"].as_str().unwrap_or_default().into(),
    )
}

#[tokio::test]
async fn keys_authenticate_tenants_and_hold_their_rights() {
    let dir = TempDir::new();
    let database = dir.path().join("keys.db");
    let config = dir.write("estate.toml", &estate(&database));

    let eu = create(&config, &["--tenant", "eu-bank", "--name", "bank-app"]);
    let lab = create(&config, &["--tenant", "lab"]);
    let lab_aws_chat = create(&config, &["--tenant", "lab", "--models", "chat", "--clouds", "aws"]);
    let short = create(&config, &["--tenant", "lab", "--expires-in-secs", "1"]);
    // A key may only narrow its tenant's rights.
    let (code, _, stderr) =
        keys(&config, &["create", "--tenant", "eu-bank", "--regions", "us-east-1"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("tenant `eu-bank` may not use region `us-east-1`"), "{stderr}");
    let (code, _, stderr) = keys(&config, &["create", "--tenant", "nobody"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("the estate has no tenant `nobody`"), "{stderr}");

    let gateway = Gateway::start(&estate(&database)).await;

    // Missing, malformed and unknown keys: 401, OpenAI-shaped.
    let (status, code, message) = error_of(chat(&gateway, None, "chat").await).await;
    assert_eq!((status, code.as_str()), (401, "invalid_api_key"), "{message}");
    assert!(message.contains("Authorization: Bearer"), "{message}");
    let (status, _, message) = error_of(chat(&gateway, Some("not-a-key"), "chat").await).await;
    assert_eq!(status, 401);
    assert!(message.contains("malformed"), "{message}");
    let unknown = format!("sk-sw-abcdefghijkl-{}", "A".repeat(40));
    let (status, _, message) = error_of(chat(&gateway, Some(&unknown), "chat").await).await;
    assert_eq!(status, 401);
    assert!(message.contains("unknown API key"), "{message}");
    // A real id with a wrong secret reads the same as an unknown key.
    let forged = format!("{}{}", &eu[..19], "B".repeat(40));
    let (status, _, message) = error_of(chat(&gateway, Some(&forged), "chat").await).await;
    assert_eq!(status, 401);
    assert!(message.contains("unknown API key"), "{message}");

    // Residency: the EU tenant is always served from westeurope.
    for _ in 0..8 {
        let response = chat(&gateway, Some(&eu), "chat").await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-skyweave-region"), "westeurope");
    }
    // ... also when its only allowed deployment fails: no failover abroad.
    let response = chat(&gateway, Some(&eu), "flaky").await;
    assert!(response.status().is_server_error(), "{}", response.status());
    let response = chat(&gateway, Some(&lab), "flaky").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-skyweave-region"), "us-east-1");
    // A caller header cannot widen the tenant's rights: nothing is left.
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(&eu)
        .header("x-skyweave-allowed-clouds", "aws")
        .json(&json!({ "model": "chat", "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (403, "region_not_allowed"));

    // Models outside the tenant's or the key's rights: 403.
    let (status, code, message) = error_of(chat(&gateway, Some(&eu), "other").await).await;
    assert_eq!((status, code.as_str()), (403, "model_not_allowed"), "{message}");
    let (status, code, _) = error_of(chat(&gateway, Some(&lab_aws_chat), "other").await).await;
    assert_eq!((status, code.as_str()), (403, "model_not_allowed"));
    let response = chat(&gateway, Some(&lab_aws_chat), "chat").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-skyweave-cloud"), "aws");

    // /v1/models needs a key and lists the tenant's models.
    let response = client().get(gateway.url("/v1/models")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let models: Value = client()
        .get(gateway.url("/v1/models"))
        .bearer_auth(&eu)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> =
        models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(names, ["chat", "flaky"]);

    // Expiry.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, _, message) = error_of(chat(&gateway, Some(&short), "chat").await).await;
    assert_eq!(status, 401);
    assert!(message.contains("has expired"), "{message}");

    // Revocation by the CLI, while the gateway runs: the next request fails.
    assert_eq!(chat(&gateway, Some(&lab), "chat").await.status(), 200);
    let lab_id = &lab[6..18];
    let (code, stdout, stderr) = keys(&config, &["revoke", lab_id]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("revoked"), "{stdout}");
    let (status, _, message) = error_of(chat(&gateway, Some(&lab), "chat").await).await;
    assert_eq!(status, 401);
    assert!(message.contains("was revoked"), "{message}");
    let (code, _, _) = keys(&config, &["revoke", "zzzzzzzzzzzz"]);
    assert_eq!(code, Some(2));

    // The list shows ids and states, never secrets.
    let (code, list, _) = keys(&config, &["list", "--json"]);
    assert_eq!(code, Some(0));
    let list: Value = serde_json::from_str(&list).unwrap();
    let state = |id: &str| {
        list.as_array().unwrap().iter().find(|k| k["id"] == id).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(state(lab_id), "revoked");
    assert_eq!(state(&short[6..18]), "expired");
    assert_eq!(state(&eu[6..18]), "active");

    // No secret at rest, in the list or in the logs.
    let (status, logs) = gateway.terminate().await;
    assert!(status.success());
    let mut at_rest = std::fs::read(&database).unwrap();
    if let Ok(wal) = std::fs::read(database.with_extension("db-wal")) {
        at_rest.extend(wal);
    }
    let at_rest = String::from_utf8_lossy(&at_rest).to_string();
    let listing = serde_json::to_string(&list).unwrap();
    for key in [&eu, &lab, &lab_aws_chat, &short] {
        let secret = &key[19..];
        assert_eq!(secret.len(), 40);
        assert!(!at_rest.contains(secret), "a secret is stored in clear");
        assert!(!listing.contains(secret));
        assert!(!logs.contains(secret), "a secret is in the logs");
    }
}

fn limits_estate(database: &Path) -> String {
    let deployments = [
        sim("chat", "aws", "us-east-1", ""),
        sim("slow", "aws", "us-east-1", "ttft_ms = 2000, output_tokens = 1"),
    ]
    .concat();
    format!(
        r#"
[server]
database = "{}"

{deployments}[[tenant]]
name = "metered"
rpm = 15

[[tenant]]
name = "narrow"
max_concurrency = 3

[[tenant]]
name = "tokens"
tpm = 200

[[tenant]]
name = "free"
"#,
        database.display()
    )
}

/// Fires `n` requests at once; returns (admitted, refused with 429 and a
/// Retry-After header).
async fn burst(gateway: &Gateway, key: &str, model: &str, n: usize) -> (usize, usize) {
    let requests = (0..n).map(|_| chat(gateway, Some(key), model));
    let responses = futures::future::join_all(requests).await;
    let mut admitted = 0;
    let mut refused = 0;
    for response in responses {
        match response.status().as_u16() {
            200 => admitted += 1,
            429 => {
                let retry_after: u64 = header(&response, "retry-after").parse().unwrap();
                assert!((1..=60).contains(&retry_after), "{retry_after}");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    (admitted, refused)
}

#[tokio::test]
async fn limits_are_exact_under_concurrency() {
    let dir = TempDir::new();
    let database = dir.path().join("keys.db");
    let config = dir.write("estate.toml", &limits_estate(&database));
    let key_rpm = create(&config, &["--tenant", "free", "--rpm", "20"]);
    let metered_a = create(&config, &["--tenant", "metered"]);
    let metered_b = create(&config, &["--tenant", "metered"]);
    let narrow = create(&config, &["--tenant", "narrow"]);
    let tokens = create(&config, &["--tenant", "tokens"]);
    let gateway = Gateway::start(&limits_estate(&database)).await;

    // A key's own RPM: exactly 20 of 60 concurrent requests are admitted.
    assert_eq!(burst(&gateway, &key_rpm, "chat", 60).await, (20, 40));
    let (status, code, message) = error_of(chat(&gateway, Some(&key_rpm), "chat").await).await;
    assert_eq!((status, code.as_str()), (429, "rate_limit_exceeded"));
    assert!(message.contains(&format!("API key `{}`", &key_rpm[6..18])), "{message}");

    // A tenant's RPM holds across its keys: 15 of 2 x 20.
    let (a, b) = tokio::join!(
        burst(&gateway, &metered_a, "chat", 20),
        burst(&gateway, &metered_b, "chat", 20)
    );
    assert_eq!((a.0 + b.0, a.1 + b.1), (15, 25));
    let (_, _, message) = error_of(chat(&gateway, Some(&metered_a), "chat").await).await;
    assert!(
        message.contains("tenant `metered` is at its limit of 15 requests per minute"),
        "{message}"
    );

    // Concurrency: 3 of 10 simultaneous two-second requests.
    assert_eq!(burst(&gateway, &narrow, "slow", 10).await, (3, 7));
    // Their slots are free again once they end.
    assert_eq!(chat(&gateway, Some(&narrow), "slow").await.status(), 200);

    // Tokens: a streamed request reserves its estimate (max_tokens 150 plus
    // the prompt) and settles with the usage it reports (a few tokens), so a
    // second one fits in 200 tokens per minute; without settling it would not.
    let stream = |key: &str| {
        client()
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(key.to_string())
            .json(&json!({
                "model": "chat",
                "stream": true,
                "stream_options": { "include_usage": true },
                "max_tokens": 150,
                "messages": [{ "role": "user", "content": "hi" }],
            }))
            .send()
    };
    for _ in 0..2 {
        let response = stream(&tokens).await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(text.contains("\"usage\""), "{text}");
    }
    gateway.terminate().await;
}
