//! The CLI: `check` on good and bad files, `serve` refusing bad set-ups, `demo`.

use std::process::Command;

use crate::support::{TempDir, BIN};

fn workspace_file(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_summarizes_the_examples_without_secrets() {
    let secret = "sk-live-should-never-print-1234";
    let output = Command::new(BIN)
        .args(["check", "--config", &workspace_file("examples/estate.toml")])
        .env("AZURE_OPENAI_KEY_EASTUS", secret)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("azure    eastus (1), swedencentral (1)"), "{stdout}");
    assert!(stdout.contains("environment variable AZURE_OPENAI_KEY_EASTUS (set)"), "{stdout}");
    assert!(stdout.contains(
        "failover: gpt-4o@azure-eastus (azure) -> gpt-4o@azure-swedencentral (azure) -> gpt-4o@openai (openai)"
    ), "{stdout}");
    assert!(!stdout.contains(secret));

    let demo = Command::new(BIN)
        .args(["check", "--config", &workspace_file("examples/demo.toml")])
        .output()
        .unwrap();
    assert!(demo.status.success());
    assert!(String::from_utf8_lossy(&demo.stdout).contains("(simulated)"));
}

/// A bad estate file and the first line of the report it must produce.
fn check_bad(text: &str, expected: &str) {
    let dir = TempDir::new();
    let path = dir.write("estate.toml", text);
    let output = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let expected = format!("{}:{expected}", path.display());
    assert!(stderr.contains(&expected), "expected {expected:?} in:\n{stderr}");
    assert!(stderr.contains("fix: "), "{stderr}");
}

#[test]
fn bad_estate_files_are_reported_with_file_line_column_and_fix() {
    let good = "[[deployment]]\nname = \"a\"\nmodel = \"m\"\nprovider = \"sim\"\ncloud = \"aws\"\nregion = \"us-east-1\"\n";
    check_bad(&good.replace("region =", "regoin ="), "6:1: unknown field `regoin`");
    check_bad(&good.replace("\"sim\"", "\"bedrock2\""), "4:12: unknown variant `bedrock2`");
    check_bad(
        &format!("{good}limits = {{ rpm = 0 }}\n"),
        "7:10: deployment `a`: limits must be at least 1",
    );
    check_bad(&format!("{good}{good}"), "8:8: deployment name `a` is used twice");
    check_bad("[server\n", "1:8:");

    let missing =
        Command::new(BIN).args(["check", "--config", "/nonexistent/estate.toml"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr)
        .contains("cannot read the estate file /nonexistent/estate.toml"));
}

#[test]
fn serve_refuses_to_start_without_its_secrets() {
    let dir = TempDir::new();
    let estate = "[[deployment]]\nname = \"gpt@azure\"\nmodel = \"gpt\"\nprovider = \"azure_openai\"\ncloud = \"azure\"\nregion = \"eastus\"\nendpoint = \"https://x.openai.azure.com\"\nazure = { deployment = \"d\", api_version = \"2024-10-21\" }\nauth = { api_key_env = \"SKYWEAVE_TEST_UNSET_KEY\" }\n";
    let path = dir.write("estate.toml", estate);
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env_remove("SKYWEAVE_TEST_UNSET_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(
            "deployment `gpt@azure`: environment variable SKYWEAVE_TEST_UNSET_KEY is not set"
        ),
        "{stderr}"
    );
}

#[test]
fn check_summarizes_tenants_and_serve_refuses_an_estate_without_deployments() {
    let dir = TempDir::new();
    let estate = "[[deployment]]\nname = \"m@sim\"\nmodel = \"m\"\nprovider = \"sim\"\ncloud = \"aws\"\nregion = \"us-east-1\"\n\n[[tenant]]\nname = \"eu\"\nregions = [\"westeurope\"]\n";
    let path = dir.write("tenants.toml", estate);
    let output = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("eu: models any; clouds any; regions westeurope"), "{stdout}");

    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(workspace_file("examples/compute.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the estate has no [[deployment]]"), "{stderr}");
}

#[test]
fn demo_tour_shows_routing_and_failover() {
    let output = Command::new(BIN)
        .args(["demo", "--tour-only", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("SIMULATED"), "{stdout}");
    assert!(stdout.contains("every request was served"), "{stdout}");
    assert!(stdout.contains("circuit breaker of chat-large@aws-us-east-1: open"), "{stdout}");
    let during = stdout.split("3. Failover").nth(1).unwrap();
    assert!(
        !during.split("4. Metrics").next().unwrap().contains("chat-large@aws-us-east-1   "),
        "{during}"
    );
}

#[test]
fn serve_refuses_budgets_without_the_ledger() {
    let dir = TempDir::new();
    let estate = "[server]\nledger = false\n\n[[deployment]]\nname = \"m@sim\"\nmodel = \"m\"\nprovider = \"sim\"\ncloud = \"aws\"\nregion = \"us-east-1\"\n\n[[tenant]]\nname = \"capped\"\nbudget = { monthly_usd = 100 }\n";
    let path = dir.write("budget.toml", estate);
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("budgets and commitments are computed from the ledger"), "{stderr}");
}
