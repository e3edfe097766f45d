//! Starts `skyweave serve` as a child process on a random port and talks to it.

#![allow(dead_code)]

pub mod postgres;
pub mod proxy;
pub mod services;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use skyweave_emulators::Emulator;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_skyweave");

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "skyweave-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `skyweave serve`.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// Secret values given to the gateway (environment variables named
    /// *KEY*, *TOKEN* or *SECRET*): none may appear in its logs.
    secrets: Vec<String>,
    _dir: TempDir,
}

/// Every gateway of the suite, when it ends, is checked for secrets in its
/// logs: the values of its secret environment variables, and any full API
/// key (`sk-sw-` id and secret).
impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let logs = self.logs();
        for secret in &self.secrets {
            assert!(!logs.contains(secret.as_str()), "a secret environment value is in the logs");
        }
        for (start, _) in logs.match_indices("sk-sw-") {
            let rest = &logs[start + 6..];
            let full_key = rest.len() >= 53
                && rest.as_bytes()[12] == b'-'
                && rest[13..53].bytes().all(|b| b.is_ascii_alphanumeric());
            assert!(!full_key, "a full API key is in the logs: {}", &logs[start..start + 40]);
        }
    }
}

impl Gateway {
    pub async fn start(estate: &str) -> Gateway {
        Gateway::start_with_env(estate, &[]).await
    }

    pub async fn start_with_env(estate: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = TempDir::new();
        let config = dir.write("estate.toml", estate);
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn skyweave serve");
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut addr_tx = Some(addr_tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = listening_address(&line) {
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match tokio::time::timeout(Duration::from_secs(30), addr_rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let status = child.try_wait().ok().flatten();
                panic!(
                    "skyweave serve did not start (exit: {status:?}); its output:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        let mut secrets: Vec<String> = env
            .iter()
            .filter(|(name, value)| {
                ["KEY", "TOKEN", "SECRET", "DATABASE_URL"].iter().any(|word| name.contains(word))
                    && value.len() >= 8
            })
            .map(|(_, value)| value.to_string())
            .collect();
        // And a database URL's password on its own.
        secrets.extend(env.iter().filter(|(name, _)| name.contains("DATABASE_URL")).filter_map(
            |(_, url)| {
                let credentials = url.split_once("://")?.1.split_once('@')?.0;
                Some(credentials.split_once(':')?.1.to_string())
            },
        ));
        Gateway { child, addr, logs, secrets, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.pid();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("skyweave exits after SIGTERM")
            .expect("wait");
        // Let the log reader drain.
        tokio::time::sleep(Duration::from_millis(100)).await;
        (exit, self.logs())
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics")).await.unwrap().text().await.unwrap()
    }

    pub async fn chat(&self, model: &str) -> reqwest::Response {
        self.post_chat(json!({
            "model": model,
            "messages": [{ "role": "user", "content": "hello" }],
        }))
        .await
    }

    pub async fn post_chat(&self, body: Value) -> reqwest::Response {
        client()
            .post(self.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("the gateway answers")
    }
}

fn listening_address(line: &str) -> Option<SocketAddr> {
    let value: Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    fields.get("address")?.as_str()?.parse().ok()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// An `openai`-provider deployment pointed at an emulator.
pub fn openai_deployment(
    name: &str,
    model: &str,
    cloud: &str,
    region: &str,
    emulator: &Emulator,
    extra: &str,
) -> String {
    format!(
        "[[deployment]]\nname = \"{name}\"\nmodel = \"{model}\"\nprovider = \"openai\"\ncloud = \"{cloud}\"\nregion = \"{region}\"\nendpoint = \"{}/v1\"\n{extra}\n",
        emulator.base_url()
    )
}

/// An `azure_openai`-provider deployment pointed at an emulator, keyed from `key_env`.
pub fn azure_deployment(
    name: &str,
    model: &str,
    region: &str,
    emulator: &Emulator,
    key_env: &str,
    extra: &str,
) -> String {
    format!(
        "[[deployment]]\nname = \"{name}\"\nmodel = \"{model}\"\nprovider = \"azure_openai\"\ncloud = \"azure\"\nregion = \"{region}\"\nendpoint = \"{}\"\nazure = {{ deployment = \"{}\", api_version = \"2024-10-21\" }}\nauth = {{ api_key_env = \"{key_env}\" }}\n{extra}\n",
        emulator.base_url(),
        azure_deployment_name(name)
    )
}

/// A circuit breaker that opens after two failures and probes after 300 ms.
pub const FAST_BREAKER: &str =
    "[circuit_breaker]\nconsecutive_failures = 2\ncooldown_ms = 300\nmax_cooldown_ms = 1000\n";

pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Reads an SSE body into its `data:` payloads.
pub async fn sse_events(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap_or_default();
    text.split("\n\n")
        .filter_map(|event| event.trim().strip_prefix("data: ").map(str::to_string))
        .collect()
}

/// The value of a metric series in Prometheus text, matched by name and label substrings.
pub fn metric_value(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// The Azure deployment name the test estates use for a skyweave deployment.
pub fn azure_deployment_name(name: &str) -> String {
    format!("{}-dep", name.replace('@', "-"))
}

/// A `bedrock`-provider deployment pointed at a Bedrock emulator.
pub fn bedrock_deployment(
    name: &str,
    model: &str,
    region: &str,
    emulator: &skyweave_emulators::BedrockEmulator,
    model_id: &str,
    extra: &str,
) -> String {
    format!(
        "[[deployment]]\nname = \"{name}\"\nmodel = \"{model}\"\nprovider = \"bedrock\"\ncloud = \"aws\"\nregion = \"{region}\"\nendpoint = \"{}\"\nbedrock = {{ model_id = \"{model_id}\" }}\n{extra}\n",
        emulator.base_url()
    )
}

/// Test AWS credentials, passed to the gateway as environment variables.
pub const AWS_KEY_ID: &str = "AKIDSKYWEAVETEST";
pub const AWS_SECRET: &str = "skyweave/test/secret/key/0123456789abcdef";

pub fn aws_env() -> Vec<(&'static str, &'static str)> {
    vec![("AWS_ACCESS_KEY_ID", AWS_KEY_ID), ("AWS_SECRET_ACCESS_KEY", AWS_SECRET)]
}

pub const GCP_PROJECT: &str = "skyweave-test";
pub const GCP_SERVICE_ACCOUNT: &str = "gateway@skyweave-test.iam.gserviceaccount.com";

/// A Google emulator serving `location`, trusting the test service account.
pub async fn google(name: &str, location: &str) -> skyweave_emulators::GoogleEmulator {
    let (_, public) = skyweave_emulators::test_key_pems();
    skyweave_emulators::spawn_google(skyweave_emulators::GoogleConfig::new(
        name,
        GCP_PROJECT,
        location,
        GCP_SERVICE_ACCOUNT,
        public,
    ))
    .await
    .unwrap()
}

/// Writes a service-account key file whose token_uri is the emulator's.
pub fn service_account_file(
    dir: &TempDir,
    emulator: &skyweave_emulators::GoogleEmulator,
    client_email: &str,
) -> PathBuf {
    let (private, _) = skyweave_emulators::test_key_pems();
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": GCP_PROJECT,
        "private_key_id": "test-key-1",
        "private_key": private,
        "client_email": client_email,
        "token_uri": format!("{}/token", emulator.base_url()),
    });
    dir.write(&format!("sa-{}.json", emulator.addr.port()), &key.to_string())
}

/// A `vertex`-provider deployment pointed at a Google emulator.
pub fn vertex_deployment(
    name: &str,
    model: &str,
    region: &str,
    emulator: &skyweave_emulators::GoogleEmulator,
    vertex_model: &str,
    extra: &str,
) -> String {
    format!(
        "[[deployment]]\nname = \"{name}\"\nmodel = \"{model}\"\nprovider = \"vertex\"\ncloud = \"gcp\"\nregion = \"{region}\"\nendpoint = \"{}\"\nvertex = {{ project = \"{GCP_PROJECT}\", model = \"{vertex_model}\" }}\n{extra}\n",
        emulator.base_url()
    )
}

/// A `sim` deployment named `model@cloud-region`, with `extra` lines (e.g. a
/// price) and `sim` settings (default: 1 ms to first token, three tokens).
pub fn sim_deployment(
    model: &str,
    cloud: &str,
    region: &str,
    extra: &str,
    settings: &str,
) -> String {
    let settings = if settings.is_empty() { "ttft_ms = 1, output_tokens = 3" } else { settings };
    format!(
        "[[deployment]]\nname = \"{model}@{cloud}-{region}\"\nmodel = \"{model}\"\n\
         provider = \"sim\"\ncloud = \"{cloud}\"\nregion = \"{region}\"\n{extra}\
         sim = {{ {settings} }}\n\n"
    )
}
