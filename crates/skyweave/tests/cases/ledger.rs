//! The usage ledger: every request recorded, a report that matches what the
//! responses said, records surviving a graceful restart and `kill -9`;
//! budgets and commitments computed from it. Each runs on SQLite and on a
//! real PostgreSQL server.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{client, header, postgres, sim_deployment, Gateway, TempDir, BIN};

/// Where an estate keeps its keys and ledger: its `[server]` line, and the
/// environment the gateway and the CLI need for it.
pub struct Db {
    pub line: String,
    pub env: Vec<(&'static str, String)>,
}

impl Db {
    pub fn sqlite(path: &Path) -> Db {
        Db { line: format!("database = \"{}\"", path.display()), env: Vec::new() }
    }

    /// A fresh database on the suite's PostgreSQL server.
    pub fn postgres() -> Db {
        Db {
            line: "database_url_env = \"SKYWEAVE_DATABASE_URL\"".into(),
            env: vec![("SKYWEAVE_DATABASE_URL", postgres::server().database())],
        }
    }

    pub fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(BIN);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    pub async fn serve(&self, estate: &str) -> Gateway {
        Gateway::start_with_env(estate, &self.env()).await
    }
}

fn estate(database: &Db) -> String {
    let deployments = [
        sim_deployment(
            "chat",
            "aws",
            "us-east-1",
            "price = { input_per_mtok = 2.0, output_per_mtok = 8.0 }\n",
            "ttft_ms = 1, output_tokens = 7",
        ),
        sim_deployment(
            "chat",
            "gcp",
            "us-central1",
            "price = { input_per_mtok = 1.0, output_per_mtok = 4.0 }\n",
            "ttft_ms = 1, output_tokens = 5",
        ),
        sim_deployment("broken", "azure", "eastus", "", "ttft_ms = 1, error_rate = 1.0"),
    ]
    .concat();
    format!(
        r#"
[server]
{}

[routing]
strategy = "weighted"

[circuit_breaker]
consecutive_failures = 1000

{deployments}"#,
        database.line
    )
}

/// Per cloud: (requests, prompt tokens, completion tokens, cost) as the
/// responses reported them, priced by hand.
type Expected = BTreeMap<String, (u64, u64, u64, f64)>;

fn price(cloud: &str) -> (f64, f64) {
    match cloud {
        "aws" => (2.0, 8.0),
        "gcp" => (1.0, 4.0),
        _ => unreachable!(),
    }
}

/// One served request, priced by hand.
fn add(expected: &mut Expected, cloud: String, prompt: u64, completion: u64) {
    let (input, output) = price(&cloud);
    let entry = expected.entry(cloud).or_default();
    entry.0 += 1;
    entry.1 += prompt;
    entry.2 += completion;
    entry.3 += (prompt as f64 * input + completion as f64 * output) / 1e6;
}

async fn workload(gateway: &Gateway, expected: &mut Expected, requests: usize) {
    for i in 0..requests {
        let text = "word ".repeat(i % 7 + 1);
        let response = gateway
            .post_chat(
                json!({ "model": "chat", "messages": [{ "role": "user", "content": text }] }),
            )
            .await;
        assert_eq!(response.status(), 200);
        let cloud = header(&response, "x-skyweave-cloud").to_string();
        let body: Value = response.json().await.unwrap();
        let prompt = body["usage"]["prompt_tokens"].as_u64().unwrap();
        let completion = body["usage"]["completion_tokens"].as_u64().unwrap();
        add(expected, cloud, prompt, completion);
    }
    // Streams report their usage in the last chunk.
    for _ in 0..3 {
        let response = client()
            .post(gateway.url("/v1/chat/completions"))
            .json(&json!({
                "model": "chat", "stream": true, "stream_options": { "include_usage": true },
                "messages": [{ "role": "user", "content": "stream please" }],
            }))
            .send()
            .await
            .unwrap();
        let cloud = header(&response, "x-skyweave-cloud").to_string();
        let text = response.text().await.unwrap();
        let usage: Value = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find_map(|v| v.get("usage").filter(|u| !u.is_null()).cloned())
            .expect("a usage chunk");
        let (prompt, completion) = (
            usage["prompt_tokens"].as_u64().unwrap(),
            usage["completion_tokens"].as_u64().unwrap(),
        );
        add(expected, cloud, prompt, completion);
    }
    // A request no deployment can serve is recorded too.
    let response = gateway.chat("broken").await;
    assert!(response.status().is_server_error());
}

fn usage(db: &Db, config: &Path, by: &str, format: &str) -> String {
    let output =
        db.command().args(["usage", "--by", by, format, "--config"]).arg(config).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn check_report(db: &Db, config: &Path, expected: &Expected, failures: u64) {
    let report: Value = serde_json::from_str(&usage(db, config, "cloud", "--json")).unwrap();
    let rows = report["rows"].as_array().unwrap();
    for (cloud, (requests, prompt, completion, cost)) in expected {
        let row = rows.iter().find(|r| r["group"] == cloud.as_str()).expect(cloud);
        assert_eq!(row["requests"].as_u64(), Some(*requests), "{cloud}: {row}");
        assert_eq!(row["prompt_tokens"].as_u64(), Some(*prompt), "{cloud}: {row}");
        assert_eq!(row["completion_tokens"].as_u64(), Some(*completion), "{cloud}: {row}");
        assert!(
            (row["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9,
            "{cloud}: {row} vs {cost}"
        );
    }
    // Failed requests have no deployment: they are grouped under `-`.
    let failed = rows.iter().find(|r| r["group"] == "-").expect("failures are recorded");
    assert_eq!(
        (failed["requests"].as_u64(), failed["errors"].as_u64()),
        (Some(failures), Some(failures))
    );
}

#[tokio::test]
async fn the_ledger_matches_the_responses_and_survives_restarts_and_kill_9() {
    let dir = TempDir::new();
    ledger_round_trip(&dir, &Db::sqlite(&dir.path().join("ledger.db"))).await;
}

#[tokio::test]
async fn the_ledger_on_postgres_matches_the_responses_and_survives_restarts_and_kill_9() {
    ledger_round_trip(&TempDir::new(), &Db::postgres()).await;
}

async fn ledger_round_trip(dir: &TempDir, database: &Db) {
    let config = dir.write("estate.toml", &estate(database));
    let mut expected = Expected::new();

    // A graceful stop writes everything.
    let gateway = database.serve(&estate(database)).await;
    workload(&gateway, &mut expected, 40).await;
    let (status, _) = gateway.terminate().await;
    assert!(status.success());
    assert!(expected.len() == 2, "both clouds served: {expected:?}");
    check_report(database, &config, &expected, 1);

    // After a restart the records are still there, and new ones add up.
    let gateway = database.serve(&estate(database)).await;
    workload(&gateway, &mut expected, 25).await;
    // kill -9: what completed more than the flush bound (20 ms plus one
    // commit) ago is on disk; this waits 200 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = Command::new("kill").args(["-KILL", &gateway.pid().to_string()]).status().unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    check_report(database, &config, &expected, 2);

    // The other groupings and CSV.
    let csv = usage(database, &config, "deployment", "--csv");
    assert!(
        csv.starts_with("deployment,requests,errors,prompt_tokens,completion_tokens,cost_usd\n"),
        "{csv}"
    );
    assert!(csv.contains("chat@aws-us-east-1,") && csv.contains("chat@gcp-us-central1,"), "{csv}");
    let by_model: Value =
        serde_json::from_str(&usage(database, &config, "model", "--json")).unwrap();
    let models: Vec<&str> =
        by_model["rows"].as_array().unwrap().iter().map(|r| r["group"].as_str().unwrap()).collect();
    assert!(models.contains(&"chat") && models.contains(&"broken"), "{models:?}");
    let table = usage(database, &config, "cloud", "--since=2000-01-01");
    assert!(table.contains("usage 2000-01-01 to"), "{table}");

    // Commitments: the ledger's spend on the cloud in the period plus what
    // the estate says was spent before, against a straight-line plan.
    let with_commitment = format!(
        "{}\n[[commitment]]\ncloud = \"aws\"\ntotal_usd = 1000\nspent_usd = 100\n\
         period = {{ start = \"2000-01-01\", end = \"2099-12-31\" }}\n\
         discount_tiers = [{{ above_usd = 0, discount = 0.05 }}, {{ above_usd = 500, discount = 0.1 }}]\n",
        estate(database)
    );
    let config = dir.write("estate.toml", &with_commitment);
    let output = database
        .command()
        .args(["commitments", "--json", "--config"])
        .arg(&config)
        .env("SKYWEAVE_TODAY", "2050-01-01")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let aws = &report["commitments"][0];
    let spent = 100.0 + expected["aws"].3;
    assert!((aws["spent_usd"].as_f64().unwrap() - spent).abs() < 1e-9, "{aws}");
    // 2000-01-01 ..= 2050-01-01 is 18,264 of the period's 36,525 days.
    let plan = 1000.0 * 18_264.0 / 36_525.0;
    assert!((aws["plan_usd"].as_f64().unwrap() - plan).abs() < 1e-6, "{aws}");
    assert!((aws["ahead_usd"].as_f64().unwrap() - (spent - plan)).abs() < 1e-6, "{aws}");
    assert_eq!(aws["discount"].as_f64(), Some(0.05));
    assert_eq!(aws["next_tier_at_usd"].as_f64(), Some(500.0));
}

/// Tenants `capped` (hard 0.05 USD a month), `watched` (soft 0.02) and
/// `open`, on a deployment priced at 1,000 USD per million tokens.
pub fn budget_estate(database: &Db) -> String {
    let deployments = sim_deployment(
        "chat",
        "aws",
        "us-east-1",
        "price = { input_per_mtok = 1000.0, output_per_mtok = 1000.0 }\n",
        "ttft_ms = 1, output_tokens = 5",
    );
    format!(
        r#"
[server]
{}

{deployments}
[[tenant]]
name = "capped"
budget = {{ monthly_usd = 0.05 }}

[[tenant]]
name = "watched"
budget = {{ monthly_usd = 0.02, mode = "soft" }}

[[tenant]]
name = "open"
"#,
        database.line
    )
}

pub fn create_key(database: &Db, config: &Path, args: &[&str]) -> String {
    let output = database
        .command()
        .arg("keys")
        .arg("--config")
        .arg(config)
        .arg("create")
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Sends requests with `key` until one is refused; returns the costs of
/// those served (from their usage at 1,000 USD per million tokens) and the
/// refusal.
pub async fn spend_until_refused(
    gateway: &Gateway,
    key: &str,
    limit: usize,
) -> (Vec<f64>, Option<Value>) {
    let mut costs = Vec::new();
    for _ in 0..limit {
        let response = client()
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({ "model": "chat", "messages": [{ "role": "user", "content": "hello there" }] }))
            .send()
            .await
            .unwrap();
        if response.status() != 200 {
            assert_eq!(response.status(), 402);
            return (costs, Some(response.json().await.unwrap()));
        }
        let body: Value = response.json().await.unwrap();
        let tokens = body["usage"]["total_tokens"].as_u64().unwrap();
        costs.push(tokens as f64 * 1000.0 / 1e6);
    }
    (costs, None)
}

#[tokio::test]
async fn hard_budgets_refuse_at_the_limit_and_survive_restarts() {
    let dir = TempDir::new();
    budgets(&dir, &Db::sqlite(&dir.path().join("ledger.db"))).await;
}

#[tokio::test]
async fn hard_budgets_on_postgres_refuse_at_the_limit_and_survive_restarts() {
    budgets(&TempDir::new(), &Db::postgres()).await;
}

async fn budgets(dir: &TempDir, database: &Db) {
    let config = dir.write("estate.toml", &budget_estate(database));
    let capped = create_key(database, &config, &["--tenant", "capped"]);
    let watched = create_key(database, &config, &["--tenant", "watched"]);
    let key_budget = create_key(database, &config, &["--tenant", "open", "--budget-usd", "0.03"]);

    let gateway = database.serve(&budget_estate(database)).await;
    // The tenant's hard budget: served until the recorded spend reaches it.
    let (costs, refusal) = spend_until_refused(&gateway, &capped, 50).await;
    let refusal = refusal.expect("the budget is reached");
    let spent: f64 = costs.iter().sum();
    let before_last: f64 = costs[..costs.len() - 1].iter().sum();
    assert!(spent >= 0.05 && before_last < 0.05, "{costs:?}");
    assert_eq!(refusal["error"]["code"], "budget_exceeded");
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(message.contains("tenant `capped` has spent"), "{message}");
    assert!(message.contains("of its 0.05 USD budget"), "{message}");
    // A key's own budget.
    let (costs, refusal) = spend_until_refused(&gateway, &key_budget, 50).await;
    assert!(refusal.is_some());
    assert!(costs.iter().sum::<f64>() >= 0.03, "{costs:?}");
    // A soft budget only alerts.
    let (costs, refusal) = spend_until_refused(&gateway, &watched, 8).await;
    assert!(refusal.is_none() && costs.iter().sum::<f64>() > 0.02, "{costs:?}");
    let (_, logs) = gateway.terminate().await;
    assert_eq!(logs.matches("soft budget reached").count(), 1, "{logs}");

    // After a restart the spend comes back from the ledger.
    let gateway = database.serve(&budget_estate(database)).await;
    let (costs, refusal) = spend_until_refused(&gateway, &capped, 5).await;
    assert!(costs.is_empty() && refusal.is_some(), "{costs:?}");
    gateway.terminate().await;
}

#[tokio::test]
async fn cost_routing_prefers_a_cloud_behind_its_commitment_plan() {
    let deployments = [
        sim_deployment(
            "chat",
            "aws",
            "us-east-1",
            "price = { input_per_mtok = 1.0, output_per_mtok = 1.0 }\n",
            "",
        ),
        sim_deployment(
            "chat",
            "gcp",
            "us-central1",
            "price = { input_per_mtok = 1.2, output_per_mtok = 1.2 }\n",
            "",
        ),
    ]
    .concat();
    let estate = |spent_usd: u64| {
        format!(
            "[routing]\nstrategy = \"cost\"\n\n{deployments}[[commitment]]\ncloud = \"gcp\"\n\
             total_usd = 1000000\nspent_usd = {spent_usd}\nburn_down_weight = 0.5\n\
             period = {{ start = \"2000-01-01\", end = \"2099-12-31\" }}\n"
        )
    };
    let clouds = |gateway: &Gateway| {
        let gateway_url = gateway.url("/v1/chat/completions");
        async move {
            let mut seen = BTreeMap::<String, usize>::new();
            for _ in 0..10 {
                let response = client()
                    .post(&gateway_url)
                    .json(&json!({ "model": "chat", "messages": [{ "role": "user", "content": "hi" }] }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                *seen.entry(header(&response, "x-skyweave-cloud").to_string()).or_default() += 1;
            }
            seen
        }
    };
    // Far behind plan (nothing spent halfway through): gcp at half of 1.2
    // beats aws at 1.0.
    let gateway = Gateway::start(&estate(0)).await;
    assert_eq!(clouds(&gateway).await, BTreeMap::from([("gcp".to_string(), 10)]));
    gateway.terminate().await;
    // Ahead of plan: list prices decide.
    let gateway = Gateway::start(&estate(900_000)).await;
    assert_eq!(clouds(&gateway).await, BTreeMap::from([("aws".to_string(), 10)]));
    gateway.terminate().await;
}
