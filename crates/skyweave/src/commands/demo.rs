//! `skyweave demo`: serves the embedded demo estate (three simulated clouds)
//! and walks through routing and failover against itself, over HTTP, the way
//! an application would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use skyweave_core::config::parse_estate;
use skyweave_gateway::Gateway;

const DEMO_ESTATE: &str = include_str!("../../../../examples/demo.toml");

pub async fn run(listen: Option<SocketAddr>, tour_only: bool) -> anyhow::Result<ExitCode> {
    // The tour prints its own narration; the JSON logs only report problems.
    let _logging = super::init_logging("error");
    let loaded = parse_estate(DEMO_ESTATE, "examples/demo.toml")
        .map_err(|errors| anyhow::anyhow!("the embedded demo estate is invalid: {errors}"))?;
    let mut estate = loaded.estate;
    if let Some(listen) = listen {
        estate.server.listen = listen;
    }
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel::<(SocketAddr, Arc<Gateway>)>();
    let (tour_done_tx, tour_done_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    tokio::spawn(async move {
        let Ok((address, gateway)) = bound_rx.await else {
            return;
        };
        let result = tour(address, gateway).await;
        let _ = tour_done_tx.send(result);
    });
    let tour_result = Arc::new(std::sync::Mutex::new(None));
    let tour_result_slot = tour_result.clone();
    let stop = async move {
        if tour_only {
            let result =
                tour_done_rx.await.unwrap_or_else(|_| Err(anyhow::anyhow!("the tour stopped")));
            *tour_result_slot.lock().expect("tour result") = Some(result);
        } else {
            super::serve::shutdown_signal().await;
        }
    };
    super::serve::serve_estate(
        estate,
        |address, gateway| {
            let _ = bound_tx.send((address, gateway));
        },
        stop,
    )
    .await?;
    let result = tour_result.lock().expect("tour result").take();
    match result {
        Some(Err(error)) => Err(error.context("the demo tour failed")),
        _ => Ok(ExitCode::SUCCESS),
    }
}

async fn tour(address: SocketAddr, gateway: Arc<Gateway>) -> anyhow::Result<()> {
    let base = format!("http://{address}/v1");
    println!("skyweave demo: an OpenAI-compatible gateway over three SIMULATED clouds (aws, azure, gcp).");
    println!("Every reply comes from skyweave's simulator (provider \"sim\"), labelled x-skyweave-simulated: true.\n");
    println!("  base URL: {base}");
    println!("  models:   chat-large (aws, azure, gcp), chat-small (cost-first), embed-small\n");
    println!("  curl {base}/chat/completions -H 'content-type: application/json' \\");
    println!("       -d '{{\"model\":\"chat-large\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}' -i");
    println!(
        "  python: OpenAI(base_url=\"{base}\", api_key=\"unused\").chat.completions.create(...)\n"
    );

    let client = reqwest::Client::new();
    let started = Instant::now();

    println!("1. Routing by proximity, latency and price (balanced strategy)");
    let from_us = burst(&client, &base, "chat-large", "eastus", 12).await?;
    print_tally("   12 requests from a caller in eastus", &from_us);
    let from_eu = burst(&client, &base, "chat-large", "westeurope", 12).await?;
    print_tally("   12 requests from a caller in westeurope", &from_eu);
    let small = burst(&client, &base, "chat-small", "eastus", 12).await?;
    print_tally("   12 chat-small requests (cost strategy: cheapest first)", &small);

    println!("\n2. Streaming: tokens are relayed as they are generated");
    stream_once(&client, &base).await?;

    // The demo estate scripts an outage of chat-large@aws-us-east-1 from 8 s
    // to 28 s after start.
    let outage_start = gateway.started + Duration::from_secs(8);
    if let Some(wait) = outage_start.checked_duration_since(Instant::now()) {
        println!(
            "\n   (waiting {:.1} s for the scripted aws us-east-1 outage to begin)",
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait + Duration::from_millis(200)).await;
    }
    println!("\n3. Failover: chat-large@aws-us-east-1 is now down (simulated 503s)");
    // Routing spreads requests, so a burst may send too few to the failing
    // deployment to open its breaker (three failures in a row); up to three
    // more bursts show it opening.
    let failing = skyweave_core::estate::DeploymentId(0);
    let mut during = BTreeMap::new();
    let mut sent = 0;
    while sent == 0
        || (sent < 48
            && gateway.breaker_state(failing) != skyweave_core::health::BreakerState::Open)
    {
        for (deployment, tally) in burst(&client, &base, "chat-large", "us-east-1", 12).await? {
            let entry: &mut Tally = during.entry(deployment).or_default();
            entry.served += tally.served;
            entry.retried += tally.retried;
            entry.errors += tally.errors;
        }
        sent += 12;
    }
    print_tally(
        &format!("   {sent} requests from a caller in us-east-1 during the outage"),
        &during,
    );
    let failed_over: usize = during.values().map(|t| t.retried).sum();
    let errors: usize = during.values().map(|t| t.errors).sum();
    if errors == 0 {
        println!(
            "   {failed_over} request(s) failed over to another cloud; every request was served."
        );
    } else {
        println!("   {failed_over} request(s) failed over to another cloud; {errors} failed.");
    }
    let circuit = gateway.breaker_state(failing);
    println!("   circuit breaker of chat-large@aws-us-east-1: {}", circuit.as_str());

    println!("\n4. Metrics at http://{address}/metrics, e.g.:");
    let metrics = client.get(format!("http://{address}/metrics")).send().await?.text().await?;
    for line in metrics.lines().filter(|l| l.starts_with("skyweave_failovers_total")).take(3) {
        println!("   {line}");
    }
    println!("\nTour done in {:.1} s.", started.elapsed().as_secs_f64());
    Ok(())
}

#[derive(Default)]
struct Tally {
    served: usize,
    retried: usize,
    errors: usize,
}

async fn burst(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    caller_region: &str,
    count: usize,
) -> anyhow::Result<BTreeMap<String, Tally>> {
    let requests = (0..count).map(|i| {
        let client = client.clone();
        let url = format!("{base}/chat/completions");
        let body = serde_json::json!({
            "model": model,
            "messages": [{ "role": "user", "content": format!("demo request {i}") }],
            "max_tokens": 8,
        });
        let caller_region = caller_region.to_string();
        async move {
            let response = client
                .post(url)
                .header("x-skyweave-caller-region", caller_region)
                .json(&body)
                .send()
                .await?;
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            let served_by = header("x-skyweave-deployment");
            let attempts: u32 = header("x-skyweave-attempts").parse().unwrap_or(0);
            let ok = response.status().is_success();
            anyhow::Ok((served_by, attempts, ok))
        }
    });
    let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
    // Four at a time, like a few concurrent users.
    let results: Vec<_> = futures::stream::iter(requests).buffer_unordered(4).collect().await;
    for result in results {
        let (served_by, attempts, ok) =
            result.context("a demo request failed to reach the gateway")?;
        let entry = tally.entry(served_by).or_default();
        if ok {
            entry.served += 1;
        } else {
            entry.errors += 1;
        }
        if attempts > 1 {
            entry.retried += 1;
        }
    }
    Ok(tally)
}

fn print_tally(title: &str, tally: &BTreeMap<String, Tally>) {
    println!("{title}:");
    for (deployment, counts) in tally {
        let mut line = format!("     {deployment:<34} {:>2} served", counts.served);
        if counts.retried > 0 {
            line.push_str(&format!(", {} after failover", counts.retried));
        }
        if counts.errors > 0 {
            line.push_str(&format!(", {} errors", counts.errors));
        }
        println!("{line}");
    }
}

async fn stream_once(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "model": "chat-large",
        "messages": [{ "role": "user", "content": "stream please" }],
        "stream": true,
        "max_tokens": 12,
    });
    let started = Instant::now();
    let response = client.post(format!("{base}/chat/completions")).json(&body).send().await?;
    let served_by = response
        .headers()
        .get("x-skyweave-deployment")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let mut stream = response.bytes_stream();
    let mut first_token = None;
    let mut text = String::new();
    let mut buffer = String::new();
    while let Some(chunk) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(data)?;
            if let Some(piece) = value["choices"][0]["delta"]["content"].as_str() {
                if !piece.is_empty() && first_token.is_none() {
                    first_token = Some(started.elapsed());
                }
                text.push_str(piece);
            }
        }
    }
    println!(
        "   served by {served_by}: first token after {:.0} ms, done after {:.0} ms",
        first_token.unwrap_or_default().as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64() * 1000.0
    );
    println!("   \"{text}\"");
    Ok(())
}
