//! The `skyweave-emulator` binary: announces its address, serves, obeys the
//! command-line behaviour, and exits cleanly on SIGTERM / SIGINT.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn start(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_skyweave-emulator"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start skyweave-emulator");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (child, url)
}

fn stop(mut child: Child, signal: &str) {
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("emulator did not exit on {signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn azure_binary_serves_and_exits_on_sigterm() {
    let (child, url) = start(&[
        "--listen",
        "127.0.0.1:0",
        "--dialect",
        "azure",
        "--name",
        "bin",
        "--api-key",
        "k",
        "--chunks",
        "2",
    ]);
    let c = reqwest::Client::new();
    let v: Value = c
        .post(format!("{url}/openai/deployments/d/chat/completions?api-version=2024-10-21"))
        .header("api-key", "k")
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from bin lorem");

    let stats: Value =
        c.get(format!("{url}/_emulator/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["requests"], 1);
    assert_eq!(stats["completed"], 1);
    // the binary does not record requests
    let recorded: Value =
        c.get(format!("{url}/_emulator/recorded")).send().await.unwrap().json().await.unwrap();
    assert_eq!(recorded, json!([]));
    stop(child, "-TERM");
}

#[tokio::test]
async fn openai_binary_takes_timings_and_exits_on_sigint() {
    let (child, url) =
        start(&["--listen", "127.0.0.1:0", "--dialect", "openai", "--ttft-ms", "200"]);
    let start = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(200));
    let v: Value = resp.json().await.unwrap();
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("Hello from openai-"));
    stop(child, "-INT");
}
