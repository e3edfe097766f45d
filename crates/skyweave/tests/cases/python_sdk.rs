//! The official `openai` Python package against the gateway: chat, streaming,
//! embeddings, models and errors, unchanged but for `base_url`.
//!
//! `scripts/test.sh` installs the package into a virtual environment and
//! points `SKYWEAVE_TEST_PYTHON` at its interpreter.

use std::process::Command;

use skyweave_emulators::{spawn, EmulatorConfig};

use crate::support::*;

#[tokio::test]
async fn the_official_openai_python_sdk_works_unchanged() {
    let python = std::env::var("SKYWEAVE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe =
        Command::new(&python).args(["-c", "import openai; print(openai.__version__)"]).output();
    let version = match probe {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout).trim().to_string(),
        _ => panic!(
            "the `openai` Python package is not importable with `{python}`; run the tests with \
             scripts/test.sh, which installs it, or set SKYWEAVE_TEST_PYTHON to a Python that has it"
        ),
    };

    let key = "azure-sdk-test-key";
    let azure = spawn(EmulatorConfig::azure("azure-east").with_api_key(key)).await.unwrap();
    let openai = spawn(EmulatorConfig::openai("vllm")).await.unwrap();
    let cut = spawn(EmulatorConfig::openai("cut")).await.unwrap();
    let aws = skyweave_emulators::spawn_bedrock(skyweave_emulators::BedrockConfig::new(
        "bedrock",
        "us-east-1",
        AWS_KEY_ID,
        AWS_SECRET,
    ))
    .await
    .unwrap();
    cut.control.set_behaviour(skyweave_emulators::Behaviour::CutAfterChunks { chunks: 1 });
    let gcp = google("vertex", "us-east4").await;
    let dir = TempDir::new();
    let sa = service_account_file(&dir, &gcp, GCP_SERVICE_ACCOUNT);
    let estate = format!(
        "{}{}{}{}{}[[deployment]]\nname = \"embed@sim\"\nmodel = \"embed\"\nprovider = \"sim\"\ncloud = \"gcp\"\nregion = \"us-east4\"\nsim = {{ ttft_ms = 1 }}\n",
        azure_deployment("chat@azure", "chat", "eastus", &azure, "AZ_KEY", ""),
        openai_deployment("chat@vllm", "chat", "aws", "us-east-1", &openai, ""),
        openai_deployment("cut@vllm", "cut", "aws", "us-east-1", &cut, ""),
        bedrock_deployment(
            "claude@aws",
            "claude",
            "us-east-1",
            &aws,
            "anthropic.claude-3-haiku-20240307-v1:0",
            ""
        ),
        vertex_deployment(
            "claude@gcp",
            "claude",
            "us-east4",
            &gcp,
            "gemini-2.0-flash-001",
            &format!("google = {{ service_account_file = \"{}\" }}", sa.display())
        )
    );
    let mut env = aws_env();
    env.push(("AZ_KEY", key));
    let gateway = Gateway::start_with_env(&estate, &env).await;
    let script = format!("{}/tests/python/openai_sdk_test.py", env!("CARGO_MANIFEST_DIR"));
    let base_url = gateway.url("/v1");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python).arg(&script).env("SKYWEAVE_BASE_URL", base_url).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "openai {version}:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all SDK checks passed"), "{stdout}");
    assert!(
        aws.control.requests() > 0 && gcp.control.requests() > 0,
        "both Bedrock and Vertex served"
    );
}
