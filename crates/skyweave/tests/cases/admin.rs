//! The admin API: its token, key management with immediate revocation,
//! usage, and the audit log of admin actions and policy refusals; no key or
//! token in logs or metrics.

use serde_json::{json, Value};

use crate::support::{client, sim_deployment, Gateway};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

fn estate(admin_listen: Option<u16>) -> String {
    let listen =
        admin_listen.map_or(String::new(), |port| format!("listen = \"127.0.0.1:{port}\"\n"));
    format!(
        "[admin]\ntoken_env = \"SKYWEAVE_TEST_ADMIN_TOKEN\"\n{listen}\n{}{}\
         [[tenant]]\nname = \"eu-bank\"\nregions = [\"westeurope\"]\n",
        sim_deployment("chat", "azure", "westeurope", "", ""),
        sim_deployment("chat", "aws", "us-east-1", "", ""),
    )
}

async fn start(admin_listen: Option<u16>) -> Gateway {
    Gateway::start_with_env(&estate(admin_listen), &[("SKYWEAVE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)])
        .await
}

fn admin(method: reqwest::Method, url: String, token: Option<&str>) -> reqwest::RequestBuilder {
    let request = client().request(method, url);
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// An admin GET with the right token, as JSON.
async fn get_json(url: String) -> Value {
    admin(reqwest::Method::GET, url, Some(ADMIN_TOKEN)).send().await.unwrap().json().await.unwrap()
}

/// An admin POST of `body` with the right token: (status, JSON body).
async fn post_json(url: String, body: Value) -> (u16, Value) {
    let response =
        admin(reqwest::Method::POST, url, Some(ADMIN_TOKEN)).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn chat(gateway: &Gateway, key: &str) -> u16 {
    client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({ "model": "chat", "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_admin_api_manages_keys_and_audits_everything() {
    use reqwest::Method;
    let gateway = start(None).await;
    let url = |path: &str| gateway.url(path);

    // The token is required, and compared exactly.
    for token in [None, Some("wrong-token-wrong-token-wrong")] {
        let response = admin(Method::GET, url("/admin/v1/keys"), token).send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_admin_token");
    }

    // Create a key; it works at once.
    let (status, created) =
        post_json(url("/admin/v1/keys"), json!({ "tenant": "eu-bank", "name": "app" })).await;
    assert_eq!(status, 201);
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(chat(&gateway, &key).await, 200);

    // A key may only narrow its tenant.
    let narrower = json!({ "tenant": "eu-bank", "regions": ["us-east-1"] });
    assert_eq!(post_json(url("/admin/v1/keys"), narrower).await.0, 400);
    assert_eq!(post_json(url("/admin/v1/keys"), json!({ "tenant": "nobody" })).await.0, 400);

    // The list has ids and states, never secrets.
    let list = get_json(url("/admin/v1/keys")).await;
    assert_eq!(list["keys"][0]["id"], id.as_str());
    assert_eq!(list["keys"][0]["state"], "active");
    assert!(!list.to_string().contains(&key[19..]));

    // Revocation takes effect on the next request.
    let response = admin(Method::DELETE, url(&format!("/admin/v1/keys/{id}")), Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(chat(&gateway, &key).await, 401);
    let response = admin(Method::DELETE, url("/admin/v1/keys/zzzzzzzzzzzz"), Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // Usage, JSON and CSV.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let usage = get_json(url("/admin/v1/usage?by=tenant")).await;
    let bank = usage["rows"].as_array().unwrap().iter().find(|r| r["group"] == "eu-bank").unwrap();
    assert_eq!(bank["requests"].as_u64(), Some(1), "{usage}");
    let csv = admin(Method::GET, url("/admin/v1/usage?by=cloud&format=csv"), Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.starts_with("group,requests,errors,"), "{csv}");
    assert!(csv.contains("\nazure,1,0,"), "{csv}");

    // The audit log has the admin actions and the refusals.
    let audit = get_json(url("/admin/v1/audit")).await;
    let entries = audit["entries"].as_array().unwrap();
    let has = |action: &str, target: &str, status: u64| {
        entries
            .iter()
            .any(|e| e["action"] == action && e["target"] == target && e["status"] == status)
    };
    assert!(has("admin.denied", "/admin/v1/keys", 401), "{audit}");
    assert!(has("key.create", &id, 201), "{audit}");
    assert!(has("key.create", "eu-bank", 400), "{audit}");
    assert!(has("key.revoke", &id, 200), "{audit}");
    let refused = entries.iter().find(|e| e["action"] == "request.refused").expect("a refusal");
    assert_eq!(
        (refused["actor"].as_str(), refused["status"].as_u64()),
        (Some(id.as_str()), Some(401))
    );

    // No secret in the metrics or the logs.
    let metrics = gateway.metrics().await;
    let (status, logs) = gateway.terminate().await;
    assert!(status.success());
    for secret in [&key[19..], ADMIN_TOKEN] {
        assert!(!metrics.contains(secret), "a secret in /metrics");
        assert!(!logs.contains(secret), "a secret in the logs");
    }
}

#[tokio::test]
async fn the_admin_api_can_have_a_listener_of_its_own() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gateway = start(Some(port)).await;
    // Not on the API listener...
    let response =
        client().get(gateway.url("/admin/v1/keys")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 404);
    // ... but on its own.
    let mut status = 0;
    for _ in 0..50 {
        match client()
            .get(format!("http://127.0.0.1:{port}/admin/v1/keys"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
        {
            Ok(response) => {
                status = response.status().as_u16();
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    assert_eq!(status, 200);
    gateway.terminate().await;
}
