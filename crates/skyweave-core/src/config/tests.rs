use super::*;

const AZURE: &str = r#"
[[deployment]]
name = "gpt-4o@azure-eastus"
model = "gpt-4o"
provider = "azure_openai"
cloud = "azure"
region = "eastus"
endpoint = "https://example-eastus.openai.azure.com/"
azure = { deployment = "gpt-4o-prod", api_version = "2024-10-21" }
auth = { api_key_env = "AZURE_OPENAI_KEY_EASTUS" }
price = { input_per_mtok = 2.50, output_per_mtok = 10.00 }
limits = { rpm = 600, tpm = 150_000 }
"#;

/// Parses `text` and checks the first error's `line:column: message` prefix,
/// or that it parses when `expected` is empty.
fn check(text: &str, expected: &str) {
    match parse_estate(text, "estate.toml") {
        Ok(_) if expected.is_empty() => {}
        Ok(_) => panic!("expected an error starting with {expected:?}, but the file parsed"),
        Err(errors) if expected.is_empty() => panic!("expected no error, got:\n{errors}"),
        Err(errors) => {
            let first = errors.0[0].to_string();
            assert!(
                first.starts_with(&format!("estate.toml:{expected}")),
                "expected `estate.toml:{expected}...`, got:\n{errors}"
            );
            assert!(first.contains("fix: "), "no fix in {first}");
        }
    }
}

#[test]
fn a_valid_azure_deployment() {
    check(AZURE, "");
    let loaded = parse_estate(AZURE, "estate.toml").unwrap();
    let deployment = &loaded.estate.deployments[0];
    assert_eq!(deployment.upstream_model, "gpt-4o");
    assert_eq!(deployment.limits.requests_per_minute, Some(600));
    match &deployment.provider {
        ProviderSpec::AzureOpenAi { endpoint, deployment, api_version, auth } => {
            assert_eq!(endpoint, "https://example-eastus.openai.azure.com");
            assert_eq!(deployment, "gpt-4o-prod");
            assert_eq!(api_version, "2024-10-21");
            assert_eq!(auth.source, SecretSource::Env("AZURE_OPENAI_KEY_EASTUS".into()));
        }
        other => panic!("{other:?}"),
    }
    let model = loaded.estate.model("gpt-4o").unwrap();
    assert_eq!(model.strategy, Strategy::Balanced);
    assert_eq!(model.max_attempts, 3);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn unknown_keys_and_types_point_at_their_place() {
    check(&AZURE.replace("region = ", "regoin = "), "7:1: unknown field `regoin`");
    check("[server]\nlisten = 8080\n", "2:10: invalid type");
    check("[[deployment]]\nname = \"a\"\n", "1:1: missing field `model`");
    check(&AZURE.replace("\"azure_openai\"", "\"azure\""), "5:12: unknown variant `azure`");
    check("[[deployment]\n", "1:");
}

#[test]
fn provider_blocks_must_match_the_provider() {
    check(
        &AZURE.replace("azure = {", "sim = {}\nazure = {"),
        "9:7: deployment `gpt-4o@azure-eastus`: `sim` does not apply to provider `azure_openai`",
    );
    let no_azure_table = AZURE
        .replace("azure = { deployment = \"gpt-4o-prod\", api_version = \"2024-10-21\" }\n", "");
    check(
        &no_azure_table,
        "2:1: deployment `gpt-4o@azure-eastus`: provider `azure_openai` needs an `azure` table",
    );
    let sim_with_endpoint = r#"
[[deployment]]
name = "s"
model = "m"
provider = "sim"
cloud = "aws"
region = "us-east-1"
endpoint = "http://localhost:1"
"#;
    check(sim_with_endpoint, "8:12: deployment `s`: `endpoint` does not apply");
    let openai_without_key = r#"
[[deployment]]
name = "o"
model = "m"
provider = "openai"
cloud = "openai"
region = "us-east-1"
"#;
    check(openai_without_key, "5:12: deployment `o`: OpenAI's API needs a key");
}

#[test]
fn secrets_are_references_only() {
    check(
        &AZURE.replace(
            "{ api_key_env = \"AZURE_OPENAI_KEY_EASTUS\" }",
            "{ api_key_env = \"sk-live-123\" }",
        ),
        "10:8: deployment `gpt-4o@azure-eastus`: `sk-live-123` is not an environment variable name",
    );
    check(
        &AZURE.replace(
            "{ api_key_env = \"AZURE_OPENAI_KEY_EASTUS\" }",
            "{ api_key_env = \"A\", api_key_file = \"/k\" }",
        ),
        "10:8: deployment `gpt-4o@azure-eastus`: `auth` must name exactly one",
    );
}

#[test]
fn numbers_in_range() {
    check(
        &AZURE.replace("rpm = 600", "rpm = 0"),
        "12:10: deployment `gpt-4o@azure-eastus`: limits must be at least 1",
    );
    check(
        &AZURE.replace("input_per_mtok = 2.50", "input_per_mtok = -1.0"),
        "11:9: deployment `gpt-4o@azure-eastus`: prices must be finite",
    );
    check(
        &format!("{AZURE}weight = 0.0\n"),
        "13:10: deployment `gpt-4o@azure-eastus`: weight must be > 0",
    );
    check(
        &format!("{AZURE}timeouts = {{ first_token_ms = 5000, total_ms = 1000 }}\n"),
        "13:12: deployment `gpt-4o@azure-eastus`: timeouts",
    );
    check(&format!("[routing]\nmax_attempts = 0\n{AZURE}"), "2:16: max_attempts");
    check(&format!("[server]\nlisten = \"localhost\"\n{AZURE}"), "2:10: server.listen `localhost`");
    check(
        &AZURE.replace("2024-10-21", "latest"),
        "9:53: deployment `gpt-4o@azure-eastus`: azure.api_version `latest`",
    );
    check(
        &AZURE.replace("https://example-eastus", "ftp://example-eastus"),
        "8:12: deployment `gpt-4o@azure-eastus`: endpoint",
    );
}

#[test]
fn review_gaps_are_closed() {
    check(
        &AZURE.replace("https://example-eastus", "https://user:pw@example-eastus"),
        "8:12: deployment `gpt-4o@azure-eastus`: endpoint `https://user:pw@example-eastus.openai.azure.com/` must not carry credentials",
    );
    check(&format!("[routing]\ndeadline_ms = 0\n{AZURE}"), "2:15: deadline_ms must be at least 1");
    check(
        &AZURE.replace("name = \"gpt-4o@azure-eastus\"", "name = \"gpt 4o\""),
        "3:8: deployment `gpt 4o`: `name` must be 1 to 128 visible ASCII",
    );
    let old_api = parse_estate(&AZURE.replace("2024-10-21", "2024-06-01"), "estate.toml").unwrap();
    assert!(old_api.warnings[0].message.contains("predates stream usage reporting"));
}

#[test]
fn names_are_unique_and_models_exist() {
    check(&format!("{AZURE}{AZURE}"), "15:8: deployment name `gpt-4o@azure-eastus` is used twice");
    check(
        &format!("[[model]]\nname = \"gpt-5\"\n{AZURE}"),
        "2:8: [[model]] `gpt-5` has no deployment",
    );
    check("", "1:1: the estate has no [[deployment]]");
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = AZURE
        .replace("rpm = 600", "rpm = 0")
        .replace("input_per_mtok = 2.50", "input_per_mtok = -1.0");
    let errors = parse_estate(&text, "estate.toml").unwrap_err();
    assert_eq!(errors.0.len(), 2, "{errors}");
}

#[test]
fn unknown_region_is_a_warning_and_can_be_declared() {
    let text = AZURE.replace("\"eastus\"", "\"moon-1\"");
    let loaded = parse_estate(&text, "estate.toml").unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0]
        .to_string()
        .starts_with("estate.toml:7:10: deployment `gpt-4o@azure-eastus`: region `moon-1`"));
    let declared =
        format!("[[region]]\nname = \"moon-1\"\nlatitude = 0.0\nlongitude = 0.0\n{text}");
    assert!(parse_estate(&declared, "estate.toml").unwrap().warnings.is_empty());
}

#[test]
fn model_overrides_and_routing_defaults() {
    let text = format!(
        "[routing]\nstrategy = \"cost\"\nmax_attempts = 4\n[[model]]\nname = \"gpt-4o\"\nstrategy = \"latency\"\n{AZURE}"
    );
    let loaded = parse_estate(&text, "estate.toml").unwrap();
    let model = loaded.estate.model("gpt-4o").unwrap();
    assert_eq!((model.strategy, model.max_attempts), (Strategy::Latency, 4));
}

#[test]
fn sim_defaults_and_outages() {
    let text = r#"
[[deployment]]
name = "s"
model = "m"
provider = "sim"
cloud = "aws"
region = "us-east-1"
sim = { ttft_ms = 50, error_rate = 0.1, outages = [{ start_secs = 10, duration_secs = 5, every_secs = 60 }] }
"#;
    let loaded = parse_estate(text, "estate.toml").unwrap();
    let ProviderSpec::Sim(sim) = &loaded.estate.deployments[0].provider else { panic!() };
    assert_eq!(sim.time_to_first_token, Duration::from_millis(50));
    assert_eq!(sim.outages.len(), 1);
    check(
        &text.replace("error_rate = 0.1", "error_rate = 1.5"),
        "8:7: deployment `s`: sim.error_rate",
    );
}

#[test]
fn line_and_column_count_characters() {
    assert_eq!(line_column("ab\ncdé f", 0), (1, 1));
    assert_eq!(line_column("ab\ncdé f", 3), (2, 1));
    assert_eq!(line_column("ab\ncdé f", "ab\ncdé ".len()), (2, 5));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn check_positions(text: &str, errors: &ConfigErrors) -> Result<(), TestCaseError> {
        let lines = text.split('\n').count().max(1);
        for error in &errors.0 {
            prop_assert!(error.line >= 1 && error.line <= lines, "{error} in {lines} lines");
            prop_assert!(error.column >= 1);
            prop_assert!(!error.fix.is_empty());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            if let Err(errors) = parse_estate(&text, "estate.toml") {
                check_positions(&text, &errors)?;
            }
        }

        #[test]
        fn mutated_valid_files_give_located_errors(
            start in 0usize..AZURE.len(),
            length in 0usize..20,
            replacement in "[a-z0-9 =\"\\[\\]{},.\\n-]{0,12}",
        ) {
            let mut text = AZURE.to_string();
            let start = (0..=start).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            let end = (start + length).min(text.len());
            let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
            text.replace_range(start..end, &replacement);
            if let Err(errors) = parse_estate(&text, "estate.toml") {
                check_positions(&text, &errors)?;
            }
        }
    }
}

const BEDROCK: &str = r#"
[[deployment]]
name = "claude@aws-us-east-1"
model = "claude"
provider = "bedrock"
cloud = "aws"
region = "us-east-1"
bedrock = { model_id = "anthropic.claude-3-5-haiku-20241022-v1:0" }
"#;

#[test]
fn bedrock_deployments() {
    let loaded = parse_estate(BEDROCK, "estate.toml").unwrap();
    match &loaded.estate.deployments[0].provider {
        ProviderSpec::Bedrock { endpoint, model_id, profile } => {
            assert_eq!(endpoint, "https://bedrock-runtime.us-east-1.amazonaws.com");
            assert_eq!(model_id, "anthropic.claude-3-5-haiku-20241022-v1:0");
            assert_eq!(profile, &None);
        }
        other => panic!("{other:?}"),
    }
    let with_profile =
        format!("{BEDROCK}aws = {{ profile = \"prod\" }}\nendpoint = \"http://127.0.0.1:9000\"\n");
    let loaded = parse_estate(&with_profile, "estate.toml").unwrap();
    let ProviderSpec::Bedrock { endpoint, profile, .. } = &loaded.estate.deployments[0].provider
    else {
        panic!()
    };
    assert_eq!((endpoint.as_str(), profile.as_deref()), ("http://127.0.0.1:9000", Some("prod")));

    check(&BEDROCK.replace("bedrock = {", "x = 1\nbedrock2 = {"), "8:1: unknown field `x`");
    check(
        &BEDROCK
            .replace("bedrock = { model_id = \"anthropic.claude-3-5-haiku-20241022-v1:0\" }\n", ""),
        "2:1: deployment `claude@aws-us-east-1`: provider `bedrock` needs a `bedrock` table",
    );
    check(
        &format!("{BEDROCK}auth = {{ api_key_env = \"K\" }}\n"),
        "9:8: deployment `claude@aws-us-east-1`: `auth` does not apply to provider `bedrock`",
    );
    check(
        &BEDROCK.replace("anthropic.claude-3-5-haiku-20241022-v1:0", "a/b"),
        "8:24: deployment `claude@aws-us-east-1`: bedrock.model_id `a/b`",
    );
    check(&AZURE.replace("azure = {", "bedrock = { model_id = \"x\" }\nazure = {"), "9:11: deployment `gpt-4o@azure-eastus`: `bedrock` does not apply to provider `azure_openai`");
}

const VERTEX: &str = r#"
[[deployment]]
name = "gemini@gcp"
model = "gemini"
provider = "vertex"
cloud = "gcp"
region = "europe-west4"
vertex = { project = "acme-prod", model = "gemini-2.0-flash-001" }
"#;

#[test]
fn vertex_deployments() {
    let loaded = parse_estate(VERTEX, "estate.toml").unwrap();
    match &loaded.estate.deployments[0].provider {
        ProviderSpec::Vertex { endpoint, project, model, mode, credentials } => {
            assert_eq!(endpoint, "https://europe-west4-aiplatform.googleapis.com");
            assert_eq!((project.as_str(), model.as_str()), ("acme-prod", "gemini-2.0-flash-001"));
            assert_eq!(*mode, crate::estate::VertexMode::Gemini);
            assert_eq!(*credentials, crate::estate::GoogleCredentials::Default);
        }
        other => panic!("{other:?}"),
    }
    let openai_mode = VERTEX.replace(
        "model = \"gemini-2.0-flash-001\" }",
        "model = \"meta/llama-3.1-405b-instruct-maas\", mode = \"openai\" }\ngoogle = { token_command = \"gcloud auth print-access-token\" }",
    );
    let loaded = parse_estate(&openai_mode, "estate.toml").unwrap();
    let ProviderSpec::Vertex { mode, credentials, .. } = &loaded.estate.deployments[0].provider
    else {
        panic!()
    };
    assert_eq!(*mode, crate::estate::VertexMode::OpenAiCompatible);
    assert_eq!(
        *credentials,
        crate::estate::GoogleCredentials::TokenCommand("gcloud auth print-access-token".into())
    );

    check(
        &format!("{VERTEX}google = {{ metadata_server = true, token_command = \"x\" }}\n"),
        "9:10: deployment `gemini@gcp`: `google` must name exactly one credential source",
    );
    check(&VERTEX.replace("vertex = {", "x = 1\nvertex2 = {"), "8:1: unknown field `x`");
    check(
        &VERTEX.replace("acme-prod", "acme prod"),
        "8:22: deployment `gemini@gcp`: vertex.project `acme prod`",
    );
    check(
        &VERTEX.replace(
            "vertex = { project = \"acme-prod\", model = \"gemini-2.0-flash-001\" }\n",
            "",
        ),
        "2:1: deployment `gemini@gcp`: provider `vertex` needs a `vertex` table",
    );
    check(&format!("{VERTEX}mode = 1\n"), "9:1: unknown field `mode`");
}

const COMPUTE: &str = r#"
[[offering]]
name = "reserved-h100"
kind = "reserved"
cloud = "aws"
region = "us-east-1"
zone = "use1-az2"
instance_type = "p5.48xlarge"
accelerator = "H100"
accelerator_count = 8
price_per_hour = 31.5
nodes = 16

[[quota]]
cloud = "gcp"
region = "us-central1"
accelerators = ["H100", "H200"]
purchase = "on_demand"
max_accelerators = 64

[[commitment]]
cloud = "aws"
total_usd = 38_000_000
period = { start = "2025-11-01", end = 2032-10-31 }
discount_tiers = [ { above_usd = 0, discount = 0.0 }, { above_usd = 1e6, discount = 0.08 } ]
spent_usd = 2_000_000
burn_down_weight = 0.5
"#;

#[test]
fn compute_sections_alone_make_a_valid_estate() {
    let estate = parse_estate(COMPUTE, "estate.toml").unwrap().estate;
    assert!(estate.deployments.is_empty());
    let offering = &estate.offerings[0];
    assert_eq!(
        (offering.name.as_str(), offering.nodes, offering.price_per_hour, offering.zone.as_deref()),
        ("reserved-h100", 16, 31.5, Some("use1-az2"))
    );
    let quota = &estate.quotas[0];
    assert_eq!(quota.name, "gcp/us-central1/H100+H200");
    assert_eq!(quota.purchase, crate::compute::QuotaPurchase::OnDemand);
    let commitment = &estate.commitments[0];
    assert_eq!((commitment.start.as_str(), commitment.end.as_str()), ("2025-11-01", "2032-10-31"));
    assert_eq!(commitment.current_discount(), 0.08);
    assert_eq!(commitment.remaining_usd(), 36_000_000.0);
}

#[test]
fn compute_section_errors_point_at_their_place() {
    let with = |from: &str, to: &str| COMPUTE.replacen(from, to, 1);
    check(
        &with("kind = \"reserved\"", "kind = \"rented\""),
        "4:8: [[offering]] `reserved-h100`: unknown kind",
    );
    check(&with("price_per_hour = 31.5", "price_per_hour = -1.0"), "11:18: [[offering]]");
    check(&with("nodes = 16", "nodes = 0"), "12:9: [[offering]]");
    check(&with("purchase = \"on_demand\"", "purchase = \"reserved\""), "18:12: [[quota]]");
    check(&with("max_accelerators = 64", "max_accelerators = -1"), "19:20: [[quota]]");
    check(&with("end = 2032-10-31", "end = \"2020-01-01\""), "24:10: [[commitment]] `aws`: period");
    check(&with("discount = 0.08", "discount = 8"), "25:55: [[commitment]] `aws`: discount tier");
    check(&with("burn_down_weight = 0.5", "burn_down_weight = 2.0"), "27:20: [[commitment]]");
    check(&format!("{COMPUTE}\n[[commitment]]\ncloud = \"aws\"\ntotal_usd = 1\nperiod = {{ start = \"2026-01-01\", end = \"2026-12-31\" }}\n"), "30:9: [[commitment]] for `aws` is declared twice");
    check(
        &with("cloud = \"gcp\"", "cloud = \"gcp\"\nregions = [\"x\"]"),
        "16:1: unknown field `regions`",
    );
}

#[test]
fn a_model_restricted_to_clouds_refuses_deployments_elsewhere() {
    let two_clouds = format!(
        "{AZURE}\n[[deployment]]\nname = \"gpt-4o@openai\"\nmodel = \"gpt-4o\"\nprovider = \"openai\"\n\
         cloud = \"openai\"\nregion = \"us-east-1\"\nauth = {{ api_key_env = \"OPENAI_KEY\" }}\n"
    );
    let allowed = |clouds: &str| {
        format!("{two_clouds}\n[[model]]\nname = \"gpt-4o\"\nallowed_clouds = {clouds}\n")
    };
    let loaded = parse_estate(&allowed("[\"azure\", \"openai\"]"), "estate.toml").unwrap();
    let model = loaded.estate.model("gpt-4o").unwrap();
    assert!(model.allows_cloud("azure") && !model.allows_cloud("aws"));
    let errors = parse_estate(&allowed("[\"azure\"]"), "estate.toml").unwrap_err().to_string();
    assert!(
        errors.contains(
            "[[model]] `gpt-4o` may run only on azure, but deployment `gpt-4o@openai` is on openai"
        ),
        "{errors}"
    );
    assert!(errors.contains("estate.toml:24:18:"), "the error points at allowed_clouds: {errors}");
    let errors = parse_estate(&allowed("[]"), "estate.toml").unwrap_err().to_string();
    assert!(errors.contains("allowed_clouds is empty"), "{errors}");
}

#[test]
fn tenants_parse_and_their_mistakes_are_located() {
    let tenants = r#"
[[tenant]]
name = "eu-bank"
models = ["gpt-4o"]
clouds = ["azure"]
regions = ["westeurope", "eastus"]
rpm = 600
tpm = 150000
max_concurrency = 20
budget = { monthly_usd = 5000, mode = "soft" }

[[tenant]]
name = "lab"
"#;
    let estate = parse_estate(&format!("{AZURE}{tenants}"), "estate.toml").unwrap().estate;
    let bank = &estate.tenants[0];
    assert_eq!(
        bank.regions.as_deref(),
        Some(&["westeurope".to_string(), "eastus".to_string()][..])
    );
    assert_eq!((bank.rpm, bank.tpm, bank.max_concurrency), (Some(600), Some(150_000), Some(20)));
    assert_eq!(bank.budget, Some(crate::tenant::Budget { monthly_usd: 5000.0, hard: false }));
    assert!(bank.allows_model("gpt-4o") && !bank.allows_model("other"));
    let lab = &estate.tenants[1];
    assert!(lab.allows_model("gpt-4o") && lab.allows_place("aws", "us-east-1"));

    let with = |from: &str, to: &str| format!("{AZURE}{}", tenants.replacen(from, to, 1));
    let line = |n: usize| AZURE.lines().count() + n;
    check(
        &with("models = [\"gpt-4o\"]", "models = [\"gpt-5\"]"),
        &format!("{}:11: [[tenant]] `eu-bank`: no deployment serves model `gpt-5`", line(4)),
    );
    check(
        &with("\"westeurope\", \"eastus\"", "\"west-europe\""),
        &format!("{}:12: [[tenant]] `eu-bank`: unknown region `west-europe`", line(6)),
    );
    check(
        &with("rpm = 600", "rpm = 0"),
        &format!("{}:7: [[tenant]] `eu-bank`: rpm = 0 admits nothing", line(7)),
    );
    check(
        &with("mode = \"soft\"", "mode = \"maybe\""),
        &format!("{}:10: [[tenant]] `eu-bank`: unknown budget mode", line(10)),
    );
    check(
        &with("monthly_usd = 5000", "monthly_usd = -1"),
        &format!("{}:10: [[tenant]] `eu-bank`: monthly_usd -1.0", line(10)),
    );
    check(
        &with("name = \"lab\"", "name = \"eu-bank\""),
        &format!("{}:8: [[tenant]] `eu-bank` is declared twice", line(13)),
    );
    // A cloud with no deployment is allowed but warned about.
    let loaded =
        parse_estate(&with("clouds = [\"azure\"]", "clouds = [\"oracle\"]"), "estate.toml")
            .unwrap();
    assert!(
        loaded.warnings[0].message.contains("no deployment is on cloud `oracle`"),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn the_database_is_a_sqlite_file_or_a_postgres_url_from_the_environment() {
    let with = |server: &str| format!("[server]\n{server}\n{AZURE}");
    check(&with("database = \"keys.db\""), "");
    check(&with("database_url_env = \"SKYWEAVE_DATABASE_URL\""), "");
    let loaded = parse_estate(&with("database_url_env = \"PG_URL\""), "estate.toml").unwrap();
    assert_eq!(loaded.estate.server.database_url_env.as_deref(), Some("PG_URL"));
    assert_eq!(loaded.estate.server.database, None);
    // A URL, with its password, does not belong in the file.
    check(&with("database = \"postgres://u:pw@db:5432/skyweave\""), "2:12: server.database takes");
    check(
        &with("database = \"a.db\"\ndatabase_url_env = \"PG_URL\""),
        "2:12: server.database and server.database_url_env are both set",
    );
    check(&with("database_url_env = \"postgres://u:pw@db/x\""), "2:20: server.database_url_env");
}

#[test]
fn a_database_url_in_the_wrong_field_is_not_repeated() {
    for server in [
        "database = \"postgres://u:s3cret@db/x\"",
        "database_url_env = \"postgres://u:s3cret@db/x\"",
    ] {
        let errors =
            parse_estate(&format!("[server]\n{server}\n{AZURE}"), "estate.toml").unwrap_err();
        assert!(!errors.to_string().contains("s3cret"), "{errors}");
    }
}
