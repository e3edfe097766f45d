//! Each routing strategy, proximity, caller scope and capacity limits.

use std::collections::BTreeMap;

use serde_json::json;
use skyweave_emulators::{spawn, Behaviour, Emulator, EmulatorConfig};

use crate::support::*;

/// Sends `count` requests (`concurrency` at a time) and counts who served them.
async fn served_by(
    gateway: &Gateway,
    model: &str,
    count: usize,
    concurrency: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    let client = client();
    for _ in 0..count / concurrency {
        let requests = (0..concurrency).map(|_| {
            let mut request = client.post(gateway.url("/v1/chat/completions")).json(
                &json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] }),
            );
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.send()
        });
        for response in futures::future::join_all(requests).await {
            let response = response.unwrap();
            assert_eq!(response.status(), 200);
            *tally.entry(header(&response, "x-skyweave-deployment").to_string()).or_insert(0) += 1;
        }
    }
    tally
}

async fn emulators(n: usize) -> Vec<Emulator> {
    let mut all = Vec::new();
    for i in 0..n {
        all.push(spawn(EmulatorConfig::openai(&format!("e{i}")).with_record(false)).await.unwrap());
    }
    all
}

fn model_strategy(model: &str, strategy: &str) -> String {
    format!("[[model]]\nname = \"{model}\"\nstrategy = \"{strategy}\"\n")
}

#[tokio::test]
async fn priority_sends_everything_to_the_first_tier() {
    let e = emulators(3).await;
    let estate = format!(
        "{}{}{}{}",
        model_strategy("m", "priority"),
        openai_deployment("m@a", "m", "aws", "us-east-1", &e[0], "priority = 1"),
        openai_deployment("m@b", "m", "azure", "eastus", &e[1], ""),
        openai_deployment("m@c", "m", "gcp", "us-east4", &e[2], "")
    );
    let gateway = Gateway::start(&estate).await;
    let tally = served_by(&gateway, "m", 20, 4, &[]).await;
    assert_eq!(tally, BTreeMap::from([("m@b".to_string(), 20)]));
}

#[tokio::test]
async fn weighted_follows_the_weights() {
    let e = emulators(2).await;
    let estate = format!(
        "{}{}{}",
        model_strategy("m", "weighted"),
        openai_deployment("m@a", "m", "aws", "us-east-1", &e[0], "weight = 4.0"),
        openai_deployment("m@b", "m", "azure", "eastus", &e[1], "weight = 1.0")
    );
    let gateway = Gateway::start(&estate).await;
    let tally = served_by(&gateway, "m", 200, 8, &[]).await;
    let a = tally.get("m@a").copied().unwrap_or(0);
    // Expected 160 of 200; binomial sd ~5.7, so 130..190 is over 5 sd wide.
    assert!((130..=190).contains(&a), "{tally:?}");
}

#[tokio::test]
async fn latency_prefers_the_faster_deployment() {
    let e = emulators(2).await;
    e[0].control.set_behaviour(Behaviour::ok(60, 0, 4));
    let estate = format!(
        "{}{}{}",
        model_strategy("m", "latency"),
        openai_deployment("m@slow", "m", "aws", "us-east-1", &e[0], ""),
        openai_deployment("m@fast", "m", "azure", "eastus", &e[1], "")
    );
    let gateway = Gateway::start(&estate).await;
    let _warm_up = served_by(&gateway, "m", 8, 2, &[]).await;
    let tally = served_by(&gateway, "m", 40, 2, &[]).await;
    let fast = tally.get("m@fast").copied().unwrap_or(0);
    assert!(fast >= 32, "{tally:?}");
}

#[tokio::test]
async fn latency_counts_the_callers_proximity() {
    let e = emulators(2).await;
    let estate = format!(
        "{}{}{}",
        model_strategy("m", "latency"),
        openai_deployment("m@us", "m", "azure", "eastus", &e[0], ""),
        openai_deployment("m@eu", "m", "azure", "westeurope", &e[1], "")
    );
    let gateway = Gateway::start(&estate).await;
    let from_eu =
        served_by(&gateway, "m", 40, 1, &[("x-skyweave-caller-region", "europe-west4")]).await;
    assert!(from_eu.get("m@eu").copied().unwrap_or(0) >= 36, "{from_eu:?}");
    let from_us =
        served_by(&gateway, "m", 40, 1, &[("x-skyweave-caller-region", "us-east-1")]).await;
    assert!(from_us.get("m@us").copied().unwrap_or(0) >= 36, "{from_us:?}");
}

#[tokio::test]
async fn cost_sends_everything_to_the_cheapest() {
    let e = emulators(3).await;
    let estate = format!(
        "{}{}{}{}",
        model_strategy("m", "cost"),
        openai_deployment(
            "m@a",
            "m",
            "aws",
            "us-east-1",
            &e[0],
            "price = { input_per_mtok = 3.0, output_per_mtok = 12.0 }"
        ),
        openai_deployment(
            "m@b",
            "m",
            "azure",
            "eastus",
            &e[1],
            "price = { input_per_mtok = 2.0, output_per_mtok = 8.0 }"
        ),
        openai_deployment(
            "m@c",
            "m",
            "gcp",
            "us-east4",
            &e[2],
            "price = { input_per_mtok = 2.5, output_per_mtok = 10.0 }"
        )
    );
    let gateway = Gateway::start(&estate).await;
    let tally = served_by(&gateway, "m", 24, 4, &[]).await;
    assert_eq!(tally, BTreeMap::from([("m@b".to_string(), 24)]));
}

#[tokio::test]
async fn balanced_leans_to_cheap_and_fast_without_herding() {
    let e = emulators(2).await;
    let estate = format!(
        "{}{}",
        openai_deployment(
            "m@cheap",
            "m",
            "aws",
            "us-east-1",
            &e[0],
            "price = { input_per_mtok = 1.0, output_per_mtok = 4.0 }"
        ),
        openai_deployment(
            "m@dear",
            "m",
            "azure",
            "eastus",
            &e[1],
            "price = { input_per_mtok = 4.0, output_per_mtok = 16.0 }"
        )
    );
    for emulator in &e {
        emulator.control.set_behaviour(Behaviour::ok(30, 0, 2));
    }
    let gateway = Gateway::start(&estate).await;
    let tally = served_by(&gateway, "m", 60, 6, &[]).await;
    let cheap = tally.get("m@cheap").copied().unwrap_or(0);
    // The cheap one wins most draws, but with six requests in flight at once
    // its load counts against it and some traffic spreads to the other.
    assert!((30..=54).contains(&cheap), "{tally:?}");
}

#[tokio::test]
async fn caller_scope_limits_clouds_and_regions() {
    let e = emulators(2).await;
    let estate = format!(
        "{}{}",
        openai_deployment("m@aws", "m", "aws", "us-east-1", &e[0], ""),
        openai_deployment("m@azure", "m", "azure", "westeurope", &e[1], "")
    );
    let gateway = Gateway::start(&estate).await;
    let only_azure =
        served_by(&gateway, "m", 12, 3, &[("x-skyweave-allowed-clouds", "azure")]).await;
    assert_eq!(only_azure, BTreeMap::from([("m@azure".to_string(), 12)]));
    let only_us =
        served_by(&gateway, "m", 12, 3, &[("x-skyweave-allowed-regions", "us-east-1, us-east-2")])
            .await;
    assert_eq!(only_us, BTreeMap::from([("m@aws".to_string(), 12)]));

    let nowhere = client()
        .post(gateway.url("/v1/chat/completions"))
        .header("x-skyweave-allowed-clouds", "gcp")
        .json(&json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), 503);
    let error: serde_json::Value = nowhere.json().await.unwrap();
    assert_eq!(error["error"]["code"], "no_deployment_available");
    let reasons = error["error"]["deployments"].as_array().unwrap();
    assert_eq!(reasons.len(), 2);
    assert!(
        reasons[0]["reason"].as_str().unwrap().contains("not allowed for this caller"),
        "{error}"
    );
}

#[tokio::test]
async fn rpm_limit_moves_traffic_to_the_next_deployment() {
    let e = emulators(2).await;
    let estate = format!(
        "{}{}{}",
        model_strategy("m", "priority"),
        openai_deployment("m@small", "m", "aws", "us-east-1", &e[0], "limits = { rpm = 5 }"),
        openai_deployment("m@big", "m", "azure", "eastus", &e[1], "priority = 1")
    );
    let gateway = Gateway::start(&estate).await;
    let tally = served_by(&gateway, "m", 20, 10, &[]).await;
    assert_eq!(tally.get("m@small"), Some(&5), "exactly the rpm limit: {tally:?}");
    assert_eq!(tally.get("m@big"), Some(&15), "{tally:?}");
    assert_eq!(e[0].control.requests(), 5);
}

#[tokio::test]
async fn concurrency_limit_is_never_exceeded() {
    let e = emulators(2).await;
    e[0].control.set_behaviour(Behaviour::ok(100, 0, 2));
    let estate = format!(
        "{}{}{}",
        model_strategy("m", "priority"),
        openai_deployment(
            "m@small",
            "m",
            "aws",
            "us-east-1",
            &e[0],
            "limits = { max_concurrency = 3 }"
        ),
        openai_deployment("m@big", "m", "azure", "eastus", &e[1], "priority = 1")
    );
    let gateway = Gateway::start(&estate).await;
    let tally = served_by(&gateway, "m", 10, 10, &[]).await;
    assert_eq!(tally.get("m@small"), Some(&3), "{tally:?}");
    assert_eq!(tally.get("m@big"), Some(&7), "{tally:?}");
}
