//! Every failover trigger, the retry rules, and the circuit breaker.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skyweave_emulators::{spawn, Behaviour, EmulatorConfig};

use crate::support::*;

/// The primary (priority 0) misbehaves as `behaviour`; the request must be
/// served by the backup on another cloud after `attempts` attempts.
async fn check_fails_over(behaviour: Behaviour, primary_extra: &str) {
    let primary = spawn(EmulatorConfig::openai("primary")).await.unwrap();
    let backup = spawn(EmulatorConfig::openai("backup")).await.unwrap();
    primary.control.set_behaviour(behaviour.clone());
    let estate = format!(
        "{}{}",
        openai_deployment("m@primary", "m", "aws", "us-east-1", &primary, primary_extra),
        openai_deployment("m@backup", "m", "azure", "eastus", &backup, "priority = 1")
    );
    let gateway = Gateway::start(&estate).await;
    let started = Instant::now();
    let response = gateway.chat("m").await;
    assert_eq!(response.status(), 200, "{behaviour:?}: {}", response.text().await.unwrap());
    assert_eq!(header(&response, "x-skyweave-deployment"), "m@backup", "{behaviour:?}");
    assert_eq!(header(&response, "x-skyweave-attempts"), "2", "{behaviour:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{behaviour:?} took {:?}",
        started.elapsed()
    );
    assert_eq!(primary.control.requests(), 1, "{behaviour:?}");
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_value(&metrics, "skyweave_failovers_total", &["from_cloud=\"aws\""]),
        Some(1.0),
        "{behaviour:?}: {metrics}"
    );
}

#[tokio::test]
async fn server_errors_fail_over() {
    // 404: the deployment's path, Azure deployment name or upstream model is
    // wrong (Azure's DeploymentNotFound): the deployment's problem, not the caller's.
    for status in [500, 502, 503, 504, 408, 404, 401] {
        check_fails_over(Behaviour::status(status), "").await;
    }
}

#[tokio::test]
async fn rate_limits_fail_over() {
    let limited = Behaviour::Status { status: 429, retry_after_secs: Some(30), message: None };
    check_fails_over(limited, "").await;
}

#[tokio::test]
async fn resets_hangs_and_lies_fail_over() {
    check_fails_over(Behaviour::Reset, "").await;
    // Non-streaming requests are bounded by the total timeout, not the first-token one.
    check_fails_over(
        Behaviour::Hang,
        "timeouts = { connect_ms = 200, first_token_ms = 300, total_ms = 500 }",
    )
    .await;
    check_fails_over(Behaviour::Malformed, "").await;
    check_fails_over(Behaviour::CutAfterChunks { chunks: 2 }, "").await;
}

#[tokio::test]
async fn connect_errors_fail_over() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let backup = spawn(EmulatorConfig::openai("backup")).await.unwrap();
    let estate = format!(
        "[[deployment]]\nname = \"m@down\"\nmodel = \"m\"\nprovider = \"openai\"\ncloud = \"aws\"\nregion = \"us-east-1\"\nendpoint = \"http://127.0.0.1:{port}/v1\"\n\n{}",
        openai_deployment("m@backup", "m", "azure", "eastus", &backup, "priority = 1")
    );
    let gateway = Gateway::start(&estate).await;
    let response = gateway.chat("m").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-skyweave-deployment"), "m@backup");
    assert_eq!(header(&response, "x-skyweave-attempts"), "2");
}

#[tokio::test]
async fn failover_prefers_another_cloud() {
    let e: Vec<_> =
        futures::future::join_all((0..3).map(|i| spawn(EmulatorConfig::openai(&format!("e{i}")))))
            .await;
    let e: Vec<_> = e.into_iter().map(Result::unwrap).collect();
    e[0].control.set_behaviour(Behaviour::status(500));
    // Latency strategy: the second aws deployment is nearer to the caller than
    // the gcp one, but after an aws failure the gateway moves to gcp first.
    let estate = format!(
        "[[model]]\nname = \"m\"\nstrategy = \"latency\"\n{}{}{}",
        openai_deployment("m@aws-1", "m", "aws", "us-east-1", &e[0], ""),
        openai_deployment("m@aws-2", "m", "aws", "us-east-1", &e[1], "priority = 1"),
        openai_deployment("m@gcp", "m", "gcp", "europe-west4", &e[2], "priority = 1")
    );
    let gateway = Gateway::start(&estate).await;
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .header("x-skyweave-caller-region", "us-east-1")
        .json(&json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-skyweave-deployment"), "m@gcp");
}

#[tokio::test]
async fn retry_after_pauses_the_deployment() {
    let primary = spawn(EmulatorConfig::openai("primary")).await.unwrap();
    let backup = spawn(EmulatorConfig::openai("backup")).await.unwrap();
    primary.control.push_script(vec![Behaviour::Status {
        status: 429,
        retry_after_secs: Some(30),
        message: None,
    }]);
    let estate = format!(
        "{}{}",
        openai_deployment("m@primary", "m", "aws", "us-east-1", &primary, ""),
        openai_deployment("m@backup", "m", "azure", "eastus", &backup, "priority = 1")
    );
    let gateway = Gateway::start(&estate).await;
    assert_eq!(header(&gateway.chat("m").await, "x-skyweave-attempts"), "2");
    for _ in 0..5 {
        let response = gateway.chat("m").await;
        assert_eq!(header(&response, "x-skyweave-deployment"), "m@backup");
        assert_eq!(
            header(&response, "x-skyweave-attempts"),
            "1",
            "the paused deployment is skipped"
        );
    }
    assert_eq!(primary.control.requests(), 1);
}

#[tokio::test]
async fn short_retry_after_is_waited_out_when_nothing_else_serves() {
    let only = spawn(EmulatorConfig::openai("only")).await.unwrap();
    only.control.push_script(vec![Behaviour::Status {
        status: 429,
        retry_after_secs: Some(1),
        message: None,
    }]);
    let estate = format!(
        "[routing]\nmax_attempts = 3\n{}",
        openai_deployment("m@only", "m", "aws", "us-east-1", &only, "")
    );
    let gateway = Gateway::start(&estate).await;
    let started = Instant::now();
    let response = gateway.chat("m").await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(900), "Retry-After honoured");
    assert_eq!(only.control.requests(), 2);
}

#[tokio::test]
async fn all_rate_limited_is_a_429_with_retry_after() {
    let a = spawn(EmulatorConfig::openai("a")).await.unwrap();
    let b = spawn(EmulatorConfig::openai("b")).await.unwrap();
    for emulator in [&a, &b] {
        emulator.control.set_behaviour(Behaviour::Status {
            status: 429,
            retry_after_secs: Some(20),
            message: None,
        });
    }
    let estate = format!(
        "{}{}",
        openai_deployment("m@a", "m", "aws", "us-east-1", &a, ""),
        openai_deployment("m@b", "m", "gcp", "us-east4", &b, "")
    );
    let gateway = Gateway::start(&estate).await;
    let response = gateway.chat("m").await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "20");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn exhausted_deployments_give_503_with_reasons() {
    let a = spawn(EmulatorConfig::openai("a")).await.unwrap();
    let b = spawn(EmulatorConfig::openai("b")).await.unwrap();
    a.control.set_behaviour(Behaviour::status(500));
    b.control.set_behaviour(Behaviour::Reset);
    let estate = format!(
        "{}{}",
        openai_deployment("m@a", "m", "aws", "us-east-1", &a, ""),
        openai_deployment("m@b", "m", "gcp", "us-east4", &b, "")
    );
    let gateway = Gateway::start(&estate).await;
    let response = gateway.chat("m").await;
    assert_eq!(response.status(), 503);
    assert_eq!(header(&response, "x-skyweave-attempts"), "2");
    let error: Value = response.json().await.unwrap();
    let reasons: Vec<String> = error["error"]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!("{}: {}", r["deployment"].as_str().unwrap(), r["reason"].as_str().unwrap())
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{error}");
    assert!(
        reasons.iter().any(|r| r.starts_with("m@a: server_error: upstream answered 500")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.starts_with("m@b: connect:")), "{reasons:?}");
}

#[tokio::test]
async fn deadline_header_bounds_the_whole_request() {
    let a = spawn(EmulatorConfig::openai("a")).await.unwrap();
    a.control.set_behaviour(Behaviour::Hang);
    let gateway = Gateway::start(&openai_deployment("m@a", "m", "aws", "us-east-1", &a, "")).await;
    let started = Instant::now();
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .header("x-skyweave-deadline-ms", "300")
        .json(&json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    // The caller's short deadline is not the deployment's fault.
    let estate_breaker_threshold = 5;
    for _ in 0..estate_breaker_threshold {
        let cut_short = client()
            .post(gateway.url("/v1/chat/completions"))
            .header("x-skyweave-deadline-ms", "20")
            .json(&json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] }))
            .send()
            .await
            .unwrap();
        assert_eq!(cut_short.status(), 504);
    }
    assert_eq!(circuit_state(&gateway, "m@a").await, 0.0, "still closed");
}

async fn circuit_state(gateway: &Gateway, deployment: &str) -> f64 {
    let metrics = gateway.metrics().await;
    metric_value(&metrics, "skyweave_circuit_state", &[&format!("deployment=\"{deployment}\"")])
        .unwrap()
}

#[tokio::test]
async fn circuit_opens_probes_half_open_and_closes() {
    let flaky = spawn(EmulatorConfig::openai("flaky")).await.unwrap();
    let steady = spawn(EmulatorConfig::openai("steady")).await.unwrap();
    flaky.control.set_behaviour(Behaviour::status(500));
    let estate = format!(
        "{FAST_BREAKER}[[model]]\nname = \"m\"\nstrategy = \"priority\"\n{}{}",
        openai_deployment("m@flaky", "m", "aws", "us-east-1", &flaky, ""),
        openai_deployment("m@steady", "m", "azure", "eastus", &steady, "priority = 1")
    );
    let gateway = Gateway::start(&estate).await;
    // Two failures (each request fails over) open the circuit.
    for _ in 0..2 {
        assert_eq!(gateway.chat("m").await.status(), 200);
    }
    assert_eq!(flaky.control.requests(), 2);
    assert_eq!(circuit_state(&gateway, "m@flaky").await, 2.0, "open");
    for _ in 0..5 {
        let response = gateway.chat("m").await;
        assert_eq!(header(&response, "x-skyweave-attempts"), "1");
    }
    assert_eq!(flaky.control.requests(), 2, "an open circuit gets no traffic");

    // After the cool-down one probe is let through; it fails: open again, longer.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(circuit_state(&gateway, "m@flaky").await, 1.0, "half-open");
    assert_eq!(gateway.chat("m").await.status(), 200);
    assert_eq!(flaky.control.requests(), 3);
    assert_eq!(circuit_state(&gateway, "m@flaky").await, 2.0, "re-opened");

    // The deployment recovers; the next probe (after the doubled cool-down) closes it.
    flaky.control.set_behaviour(Behaviour::default());
    tokio::time::sleep(Duration::from_millis(650)).await;
    let response = gateway.chat("m").await;
    assert_eq!(header(&response, "x-skyweave-deployment"), "m@flaky");
    assert_eq!(circuit_state(&gateway, "m@flaky").await, 0.0, "closed");
    let tally: Vec<String> = futures::future::join_all((0..4).map(|_| gateway.chat("m")))
        .await
        .iter()
        .map(|r| header(r, "x-skyweave-deployment").to_string())
        .collect();
    assert!(tally.iter().all(|d| d == "m@flaky"), "{tally:?}");
}

#[tokio::test]
async fn with_every_circuit_open_the_least_recently_failed_is_still_tried() {
    let only = spawn(EmulatorConfig::openai("only")).await.unwrap();
    only.control.set_behaviour(Behaviour::status(502));
    let estate = format!(
        "{FAST_BREAKER}[routing]\nmax_attempts = 1\n{}",
        openai_deployment("m@only", "m", "aws", "us-east-1", &only, "")
    );
    let gateway = Gateway::start(&estate).await;
    for _ in 0..2 {
        assert_eq!(gateway.chat("m").await.status(), 503);
    }
    assert_eq!(circuit_state(&gateway, "m@only").await, 2.0);
    only.control.set_behaviour(Behaviour::default());
    let response = gateway.chat("m").await;
    assert_eq!(response.status(), 200, "tried despite the open circuit");
    assert_eq!(only.control.requests(), 3);
}

#[tokio::test]
async fn active_probes_open_the_circuit_of_a_dead_deployment_without_traffic() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let estate = format!(
        "{FAST_BREAKER}[[deployment]]\nname = \"m@dead\"\nmodel = \"m\"\nprovider = \"openai\"\ncloud = \"aws\"\nregion = \"us-east-1\"\nendpoint = \"http://127.0.0.1:{port}/v1\"\nhealth_probe = {{ interval_secs = 1 }}\n"
    );
    let gateway = Gateway::start(&estate).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = reqwest::get(gateway.url("/readyz")).await.unwrap();
        if ready.status() == 503 {
            assert_eq!(ready.text().await.unwrap(), "every deployment is open-circuited for: m\n");
            break;
        }
        assert!(Instant::now() < deadline, "the probes never opened the circuit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(circuit_state(&gateway, "m@dead").await, 2.0);
    assert!(gateway.logs().contains("health probe failed"));
}
