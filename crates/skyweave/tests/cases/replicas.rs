//! Several gateway replicas on one PostgreSQL database: a tenant's budget
//! holds across them, a key revoked anywhere stops working everywhere, and
//! the ledger has every replica's requests.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cases::ledger::{budget_estate, create_key, Db};
use crate::support::{client, postgres, sim_deployment, Gateway, TempDir};

/// The budget estate, reading the other replicas' spend every 200 ms.
fn estate(database: &Db) -> String {
    budget_estate(database).replace("[server]\n", "[server]\nspend_refresh_ms = 200\n")
}

/// One request with `key`: its status and, when served, its cost.
async fn call(gateway: &Gateway, key: &str) -> (u16, f64) {
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(
            &json!({ "model": "chat", "messages": [{ "role": "user", "content": "hello there" }] }),
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if status != 200 {
        return (status, 0.0);
    }
    let body: Value = response.json().await.unwrap();
    (status, body["usage"]["total_tokens"].as_u64().unwrap() as f64 * 1000.0 / 1e6)
}

#[tokio::test]
async fn replicas_on_postgres_share_budgets_keys_and_the_ledger() {
    let dir = TempDir::new();
    let database = Db::postgres();
    let config = dir.write("estate.toml", &estate(&database));
    let capped = create_key(&database, &config, &["--tenant", "capped"]);
    let open = create_key(&database, &config, &["--tenant", "open"]);
    let a = database.serve(&estate(&database)).await;
    let b = database.serve(&estate(&database)).await;

    // The budget is the tenant's, not each replica's: requests alternate
    // between the replicas, each well after the other replica's spend was
    // committed (within 20 ms) and read (every 200 ms), and the budget stops
    // them exactly where one replica alone would have.
    let mut costs = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let replica = if i % 2 == 0 { &a } else { &b };
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (status, cost) = call(replica, &capped).await;
        if status == 402 {
            refused += 1;
            break;
        }
        assert_eq!(status, 200);
        costs.push(cost);
    }
    assert_eq!(refused, 1, "the budget was never reached: {costs:?}");
    let spent: f64 = costs.iter().sum();
    let before_last: f64 = costs[..costs.len() - 1].iter().sum();
    assert!(spent >= 0.05 && before_last < 0.05, "{costs:?}");
    assert!(costs.len() >= 4, "both replicas served several requests: {costs:?}");
    // And now both refuse.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(call(&a, &capped).await.0, 402);
    assert_eq!(call(&b, &capped).await.0, 402);
    refused += 2;

    // PostgreSQL drops every connection of the replicas (as in a restart or
    // a failover): they reconnect, serve, and lose no record.
    let url = &database.env[0].1;
    let name = url.rsplit('/').next().unwrap();
    let dropped = postgres::server().psql(
        "postgres",
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = \
             '{name}' AND pid <> pg_backend_pid()"
        ),
    );
    // Each replica has four: key store, ledger reports, ledger writer and
    // the key-change listener.
    assert!(dropped.parse::<u32>().unwrap() >= 8, "{dropped} connections dropped");
    let mut open_served = 0;
    for _ in 0..5 {
        for replica in [&a, &b] {
            assert_eq!(call(replica, &open).await.0, 200);
            open_served += 1;
        }
    }

    // A key revoked through one connection (the CLI) stops working on
    // every replica once PostgreSQL delivers the notification: wait until
    // both listen again (else they re-read the keys on every request, and
    // the notification would not be what is tested).
    let deadline = Instant::now() + Duration::from_secs(20);
    while [&a, &b].iter().any(|r| r.logs().matches("listening for key changes").count() < 2) {
        assert!(Instant::now() < deadline, "the key-change listeners did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = open.split('-').nth(2).unwrap().to_string();
    let output = database
        .command()
        .args(["keys", "--config"])
        .arg(&config)
        .args(["revoke", &id])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let revoked_at = Instant::now();
    let mut delays = Vec::new();
    for replica in [&a, &b] {
        loop {
            let (status, _) = call(replica, &open).await;
            if status == 401 {
                delays.push(revoked_at.elapsed());
                break;
            }
            assert_eq!(status, 200);
            open_served += 1;
            assert!(revoked_at.elapsed() < Duration::from_secs(5), "revocation not seen");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    eprintln!("revocation seen by the replicas after {delays:?}");

    // The ledger has both replicas' requests.
    let (status_a, _) = a.terminate().await;
    let (status_b, _) = b.terminate().await;
    assert!(status_a.success() && status_b.success());
    let output = database
        .command()
        .args(["usage", "--by", "tenant", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let row = rows.iter().find(|r| r["group"] == "capped").expect("capped is reported");
    assert_eq!(row["requests"].as_u64(), Some(costs.len() as u64 + refused), "{row}");
    assert_eq!(row["errors"].as_u64(), Some(refused), "{row}");
    assert!((row["cost_usd"].as_f64().unwrap() - spent).abs() < 1e-9, "{row} vs {spent}");
    let row = rows.iter().find(|r| r["group"] == "open").expect("open is reported");
    assert_eq!(row["requests"].as_u64(), Some(open_served), "{row}");
}

#[tokio::test]
async fn an_unreachable_postgres_is_a_clear_error_without_its_password() {
    let dir = TempDir::new();
    let config = dir.write(
        "estate.toml",
        &format!(
            "[server]\ndatabase_url_env = \"SKYWEAVE_DATABASE_URL\"\n\n{}\n[[tenant]]\nname = \"t\"\n",
            sim_deployment("chat", "aws", "us-east-1", "", "")
        ),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://someone:hunter2-password@127.0.0.1:{port}/nowhere");
    let output = std::process::Command::new(crate::support::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("SKYWEAVE_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "PostgreSQL someone@127.0.0.1:{port}/nowhere (from SKYWEAVE_DATABASE_URL)"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("onnection refused"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // Unset, or not a URL: named, with the fix.
    let output = std::process::Command::new(crate::support::BIN)
        .args(["usage", "--config"])
        .arg(&config)
        .env_remove("SKYWEAVE_DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("names SKYWEAVE_DATABASE_URL, which is not set"), "{stderr}");
    let output = std::process::Command::new(crate::support::BIN)
        .args(["keys", "--config"])
        .arg(&config)
        .arg("list")
        .env("SKYWEAVE_DATABASE_URL", "postgres://u:hunter2@host:notaport/db")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a PostgreSQL connection string"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // An `@` in the password must be encoded, else its tail would be taken
    // for the host (and shown in messages).
    let output = std::process::Command::new(crate::support::BIN)
        .args(["keys", "--config"])
        .arg(&config)
        .arg("list")
        .env("SKYWEAVE_DATABASE_URL", "postgres://u:hun@ter2@127.0.0.1:5432/db")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("as %40"), "{stderr}");
    assert!(!stderr.contains("ter2"), "{stderr}");
}

/// A TCP proxy to PostgreSQL that, once armed, lets the first `COMMIT` it
/// sees reach the server, then drops that connection without relaying the
/// answer: the client cannot know whether its transaction was committed.
async fn commit_cutting_proxy(upstream: u16, armed: Arc<AtomicBool>, cuts: Arc<AtomicU32>) -> u16 {
    use crate::support::proxy::{self, Relay};
    proxy::start(upstream, move |bytes, _| {
        let commit = bytes.windows(6).any(|w| w == b"COMMIT");
        if commit && armed.swap(false, Ordering::SeqCst) {
            cuts.fetch_add(1, Ordering::SeqCst);
            // Let the server commit and answer into the void.
            Relay::Swallow { wait: Duration::from_millis(300) }
        } else {
            Relay::Forward
        }
    })
    .await
}

#[tokio::test]
async fn a_batch_whose_commit_answer_is_lost_is_not_written_twice() {
    let server = postgres::server();
    let url = server.database();
    let (armed, cuts) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
    let proxy = commit_cutting_proxy(server.port(), armed.clone(), cuts.clone()).await;
    let proxied = url.replace(&format!(":{}/", server.port()), &format!(":{proxy}/"));
    assert_ne!(proxied, url);
    let database = Db {
        line: "database_url_env = \"SKYWEAVE_DATABASE_URL\"".into(),
        env: vec![("SKYWEAVE_DATABASE_URL", proxied)],
    };
    let deployments = sim_deployment(
        "chat",
        "aws",
        "us-east-1",
        "price = { input_per_mtok = 1000.0, output_per_mtok = 1000.0 }\n",
        "ttft_ms = 1, output_tokens = 5",
    );
    let estate = format!("[server]\n{}\n\n{deployments}", database.line);
    let gateway = database.serve(&estate).await;
    // The tables exist now; from here only the ledger writer commits.
    armed.store(true, Ordering::SeqCst);
    let mut served = 0;
    let mut cost = 0.0;
    for _ in 0..20 {
        let response = gateway.chat("chat").await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        cost += body["usage"]["total_tokens"].as_u64().unwrap() as f64 * 1000.0 / 1e6;
        served += 1;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (status, logs) = gateway.terminate().await;
    assert!(status.success());
    assert_eq!(cuts.load(Ordering::SeqCst), 1, "the proxy cut one COMMIT answer");
    assert!(logs.contains("ledger write failed; retrying"), "the writer saw the cut");
    // Every request once, its cost once (in the ledger and in the spend
    // summary that budgets read).
    let name = url.rsplit('/').next().unwrap();
    let rows = server.psql(name, "SELECT count(*), sum(cost_usd) FROM requests");
    let (count, sum) = rows.split_once('|').unwrap();
    assert_eq!(count.parse::<u32>().unwrap(), served, "{rows}");
    assert!((sum.parse::<f64>().unwrap() - cost).abs() < 1e-9, "{rows} vs {cost}");
    let summed = server.psql(name, "SELECT sum(usd) FROM spend_daily WHERE scope = 'cloud'");
    assert!((summed.parse::<f64>().unwrap() - cost).abs() < 1e-9, "{summed} vs {cost}");
}
