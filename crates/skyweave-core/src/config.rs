//! The estate file: TOML text in, a validated [`Estate`] out.
//!
//! Loading happens in two phases. First the text is deserialized into the
//! `Raw*` types below, which mirror the file format exactly and reject unknown
//! keys. Then [`validate`] checks every rule that serde cannot express and
//! builds the domain types. Every problem is reported with the file, line and
//! column, the key, and how to fix it; all problems of a file are reported at
//! once, not one per run.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::estate::{
    AdminSettings, AuthScheme, BreakerSettings, Credential, Deployment, DeploymentId, Estate,
    GoogleCredentials, Limits, Model, Outage, Price, ProbeSettings, ProviderSpec, SecretSource,
    ServerSettings, SimSpec, Timeouts, VertexMode,
};
use crate::region::{Location, Proximity};

mod compute;
mod stores;
mod tenants;
use crate::routing::Strategy;

/// One problem in an estate file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}\n    fix: {fix}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub fix: String,
}

/// Every problem found in an estate file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.0.len();
        let plural = if count == 1 { "" } else { "s" };
        match self.0.first() {
            Some(first) if self.0.iter().all(|e| e.file == first.file) => {
                writeln!(f, "{} has {count} problem{plural}:", first.file)?
            }
            _ => writeln!(f, "{count} problem{plural}:")?,
        }
        for error in &self.0 {
            writeln!(f, "{error}")?;
        }
        Ok(())
    }
}

/// A valid estate and the things in it that are allowed but probably wrong.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub estate: Estate,
    pub warnings: Vec<ConfigError>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_OPENAI_ENDPOINT: &str = "https://api.openai.com/v1";

/// The first Azure OpenAI API version that accepts `stream_options` (usage
/// in streamed responses).
pub const MIN_AZURE_STREAM_USAGE_VERSION: &str = "2024-09-01";

/// Parses and validates an estate file. `file` names it in error messages.
pub fn parse_estate(text: &str, file: &str) -> Result<Loaded, ConfigErrors> {
    let raw: RawEstate = toml::from_str(text).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        let message = error.message().trim().to_string();
        let fix = serde_fix(&message);
        ConfigErrors(vec![Located { text, file }.error(span, message, fix)])
    })?;
    validate(raw, Located { text, file })
}

fn serde_fix(message: &str) -> String {
    if message.starts_with("unknown field") {
        "correct or remove the key; the keys each table accepts are listed in README.md \
         (Configuration reference)"
            .into()
    } else if message.starts_with("missing field") {
        "add the missing key to this table".into()
    } else if message.starts_with("unknown variant") {
        "use one of the values listed".into()
    } else if message.starts_with("invalid type") {
        "give the value the type the message names (strings in quotes, numbers without)".into()
    } else {
        "correct the TOML syntax at this position".into()
    }
}

// ---------------------------------------------------------------------------
// The file format.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEstate {
    #[serde(default)]
    server: Option<RawServer>,
    #[serde(default)]
    routing: Option<RawRouting>,
    #[serde(default)]
    circuit_breaker: Option<Spanned<RawBreaker>>,
    #[serde(default, rename = "model")]
    models: Vec<Spanned<RawModel>>,
    #[serde(default, rename = "deployment")]
    deployments: Vec<Spanned<RawDeployment>>,
    #[serde(default, rename = "region")]
    regions: Vec<Spanned<RawRegion>>,
    #[serde(default, rename = "region_latency")]
    region_latency: Vec<Spanned<RawRegionLatency>>,
    #[serde(default, rename = "offering")]
    offerings: Vec<Spanned<compute::RawOffering>>,
    #[serde(default, rename = "quota")]
    quotas: Vec<Spanned<compute::RawQuota>>,
    #[serde(default, rename = "commitment")]
    commitments: Vec<Spanned<compute::RawCommitment>>,
    #[serde(default, rename = "tenant")]
    tenants: Vec<Spanned<tenants::RawTenant>>,
    admin: Option<Spanned<RawAdmin>>,
    #[serde(default, rename = "store")]
    stores: Vec<Spanned<stores::RawStore>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// Environment variable holding the admin token.
    token_env: Spanned<String>,
    /// A listener of its own for the admin API.
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    max_body_bytes: Option<Spanned<u64>>,
    default_caller_region: Option<Spanned<String>>,
    shutdown_grace_secs: Option<u64>,
    /// SQLite file for API keys and the usage ledger.
    database: Option<Spanned<String>>,
    /// Environment variable holding a PostgreSQL connection URL, instead
    /// of the SQLite file.
    database_url_env: Option<Spanned<String>>,
    /// How often to read the other replicas' spend, in milliseconds.
    spend_refresh_ms: Option<Spanned<u64>>,
    /// Record every request in the usage ledger (default true).
    ledger: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    strategy: Option<Strategy>,
    max_attempts: Option<Spanned<u32>>,
    deadline_ms: Option<Spanned<u64>>,
    max_retry_after_wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    consecutive_failures: Option<u32>,
    failure_rate: Option<f64>,
    window_secs: Option<u64>,
    min_requests: Option<u32>,
    cooldown_ms: Option<u64>,
    max_cooldown_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: Spanned<String>,
    /// Contract rule: the only clouds this model may be served from.
    allowed_clouds: Option<Spanned<Vec<String>>>,
    strategy: Option<Strategy>,
    max_attempts: Option<Spanned<u32>>,
    deadline_ms: Option<Spanned<u64>>,
    max_retry_after_wait_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawProviderKind {
    Openai,
    AzureOpenai,
    Bedrock,
    Vertex,
    Sim,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    name: Spanned<String>,
    model: Spanned<String>,
    provider: Spanned<RawProviderKind>,
    cloud: Spanned<String>,
    region: Spanned<String>,
    endpoint: Option<Spanned<String>>,
    upstream_model: Option<Spanned<String>>,
    azure: Option<Spanned<RawAzure>>,
    bedrock: Option<Spanned<RawBedrock>>,
    aws: Option<Spanned<RawAws>>,
    vertex: Option<Spanned<RawVertex>>,
    google: Option<Spanned<RawGoogle>>,
    sim: Option<Spanned<RawSim>>,
    auth: Option<Spanned<RawAuth>>,
    price: Option<Spanned<RawPrice>>,
    limits: Option<Spanned<RawLimits>>,
    weight: Option<Spanned<f64>>,
    priority: Option<u32>,
    timeouts: Option<Spanned<RawTimeouts>>,
    health_probe: Option<Spanned<RawProbe>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAzure {
    deployment: Spanned<String>,
    api_version: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBedrock {
    model_id: Spanned<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawVertexMode {
    #[default]
    Gemini,
    Openai,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVertex {
    project: Spanned<String>,
    model: Spanned<String>,
    #[serde(default)]
    mode: RawVertexMode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGoogle {
    service_account_file: Option<String>,
    metadata_server: Option<bool>,
    token_command: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAws {
    /// A profile of the shared credentials/config files (else `AWS_PROFILE`, else `default`).
    profile: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    api_key_env: Option<String>,
    api_key_file: Option<String>,
    bearer_token_env: Option<String>,
    bearer_token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input_per_mtok: f64,
    output_per_mtok: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    rpm: Option<u32>,
    tpm: Option<u32>,
    max_concurrency: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect_ms: Option<u64>,
    first_token_ms: Option<u64>,
    total_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    interval_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSim {
    ttft_ms: Option<u64>,
    tokens_per_second: Option<f64>,
    output_tokens: Option<u32>,
    error_rate: Option<f64>,
    rate_limit_rate: Option<f64>,
    #[serde(default)]
    outages: Vec<RawOutage>,
    embedding_dimensions: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutage {
    start_secs: f64,
    duration_secs: f64,
    every_secs: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    latitude: f64,
    longitude: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegionLatency {
    from: String,
    to: String,
    rtt_ms: f64,
}

// ---------------------------------------------------------------------------
// Validation.

#[derive(Clone, Copy)]
struct Located<'a> {
    text: &'a str,
    file: &'a str,
}

impl ConfigError {
    /// An error at byte `span` of `text`, for other files that use the
    /// estate's error format (job files, catalogs).
    pub fn at(
        text: &str,
        file: &str,
        span: Range<usize>,
        message: String,
        fix: impl Into<String>,
    ) -> ConfigError {
        Located { text, file }.error(span, message, fix)
    }
}

impl Located<'_> {
    fn error(&self, span: Range<usize>, message: String, fix: impl Into<String>) -> ConfigError {
        let (line, column) = line_column(self.text, span.start);
        ConfigError { file: self.file.to_string(), line, column, message, fix: fix.into() }
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (line, column)
}

struct Checker<'a> {
    at: Located<'a>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Checker<'_> {
    fn fail(&mut self, span: Range<usize>, message: String, fix: impl Into<String>) {
        self.errors.push(self.at.error(span, message, fix));
    }

    fn warn(&mut self, span: Range<usize>, message: String, fix: impl Into<String>) {
        self.warnings.push(self.at.error(span, message, fix));
    }
}

fn validate(raw: RawEstate, at: Located<'_>) -> Result<Loaded, ConfigErrors> {
    let mut check = Checker { at, errors: Vec::new(), warnings: Vec::new() };

    let mut proximity = Proximity::shipped();
    for region in &raw.regions {
        let (span, region) = (region.span(), region.get_ref());
        let valid = (-90.0..=90.0).contains(&region.latitude)
            && (-180.0..=180.0).contains(&region.longitude);
        if !valid {
            check.fail(
                span,
                format!("[[region]] `{}`: latitude/longitude out of range", region.name),
                "latitude within -90..=90, longitude within -180..=180",
            );
        }
        proximity.set_location(
            &region.name,
            Location { latitude: region.latitude, longitude: region.longitude },
        );
    }
    for pair in &raw.region_latency {
        let (span, pair) = (pair.span(), pair.get_ref());
        if !(pair.rtt_ms.is_finite() && pair.rtt_ms >= 0.0) {
            check.fail(
                span,
                format!("[[region_latency]] {} -> {}: rtt_ms must be >= 0", pair.from, pair.to),
                "give a measured round-trip time in milliseconds",
            );
            continue;
        }
        proximity.set_rtt(&pair.from, &pair.to, pair.rtt_ms);
    }

    let server = validate_server(raw.server, &proximity, &mut check);
    let breaker = raw
        .circuit_breaker
        .map(|breaker| validate_breaker(breaker, &mut check))
        .unwrap_or_default();
    let routing = raw.routing.unwrap_or_default();

    let mut deployments = Vec::new();
    let mut names = HashSet::new();
    for (index, raw_deployment) in raw.deployments.into_iter().enumerate() {
        let span = raw_deployment.span();
        let raw_deployment = raw_deployment.into_inner();
        if !names.insert(raw_deployment.name.get_ref().clone()) {
            check.fail(
                raw_deployment.name.span(),
                format!("deployment name `{}` is used twice", raw_deployment.name.get_ref()),
                "give every [[deployment]] a unique name, e.g. `model@cloud-region`",
            );
        }
        if let Some(deployment) =
            validate_deployment(DeploymentId(index), span, raw_deployment, &proximity, &mut check)
        {
            deployments.push(deployment);
        }
    }
    let offerings = compute::validate_offerings(raw.offerings, &mut check);
    let quotas = compute::validate_quotas(raw.quotas, &mut check);
    let commitments = compute::validate_commitments(raw.commitments, &mut check);
    let stores = stores::validate_stores(raw.stores, &mut check);
    let has_compute = !offerings.is_empty() || !quotas.is_empty() || !commitments.is_empty();
    // An estate for the planner or the data plane alone needs no
    // deployment; `serve` refuses an estate without one.
    if deployments.is_empty() && !has_compute && stores.is_empty() && check.errors.is_empty() {
        check.fail(
            0..0,
            "the estate has no [[deployment]]".into(),
            "add at least one [[deployment]] table (see examples/)",
        );
    }

    let models = validate_models(raw.models, &routing, &deployments, &mut check);
    let tenants =
        tenants::validate_tenants(raw.tenants, &models, &deployments, &proximity, &mut check);
    let admin = raw.admin.and_then(|admin| {
        let (span, admin) = (admin.span(), admin.into_inner());
        let token_env = admin.token_env.get_ref().trim().to_string();
        let valid_name = !token_env.is_empty()
            && token_env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_name {
            check.fail(
                admin.token_env.span(),
                "[admin] token_env must name an environment variable".into(),
                "e.g. token_env = \"SKYWEAVE_ADMIN_TOKEN\"",
            );
            return None;
        }
        let listen = match admin.listen {
            None => None,
            Some(listen) => match listen.get_ref().parse::<SocketAddr>() {
                Ok(address) => Some(address),
                Err(_) => {
                    check.fail(
                        listen.span(),
                        format!("[admin] listen `{}` is not an address", listen.get_ref()),
                        "write host:port, e.g. \"127.0.0.1:9090\"",
                    );
                    return None;
                }
            },
        };
        let _ = span;
        Some(AdminSettings { token_env, listen })
    });

    if !check.errors.is_empty() {
        return Err(ConfigErrors(check.errors));
    }
    Ok(Loaded {
        estate: Estate {
            server,
            models,
            deployments,
            breaker,
            proximity,
            offerings,
            quotas,
            commitments,
            tenants,
            admin,
            stores,
        },
        warnings: check.warnings,
    })
}

fn validate_server(
    raw: Option<RawServer>,
    proximity: &Proximity,
    check: &mut Checker<'_>,
) -> ServerSettings {
    let default_listen: SocketAddr = DEFAULT_LISTEN.parse().expect("default address parses");
    let mut settings = ServerSettings {
        listen: default_listen,
        max_body_bytes: 4 * 1024 * 1024,
        default_caller_region: None,
        shutdown_grace: Duration::from_secs(30),
        database: None,
        database_url_env: None,
        spend_refresh: Duration::from_secs(1),
        ledger: true,
    };
    let Some(raw) = raw else { return settings };
    if let Some(listen) = raw.listen {
        match listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) => settings.listen = addr,
            Err(_) => check.fail(
                listen.span(),
                format!("server.listen `{}` is not an address and port", listen.get_ref()),
                "write it as `127.0.0.1:8080` or `0.0.0.0:8080`",
            ),
        }
    }
    if let Some(max) = raw.max_body_bytes {
        if *max.get_ref() < 1024 {
            check.fail(
                max.span(),
                format!("server.max_body_bytes = {} is too small", max.get_ref()),
                "use at least 1024 (the default is 4194304, 4 MiB)",
            );
        } else {
            settings.max_body_bytes = usize::try_from(*max.get_ref()).unwrap_or(usize::MAX);
        }
    }
    if let Some(region) = raw.default_caller_region {
        if !proximity.knows(region.get_ref()) {
            check.warn(
                region.span(),
                format!(
                    "server.default_caller_region `{}` is not a known region",
                    region.get_ref()
                ),
                "use a region name from the shipped table or add a [[region]] entry",
            );
        }
        settings.default_caller_region = Some(region.into_inner());
    }
    if let Some(database) = raw.database {
        let text = database.get_ref();
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            check.fail(
                database.span(),
                "server.database takes a SQLite file; a PostgreSQL URL (which may hold a \
                 password) does not belong in the estate file"
                    .into(),
                "put the URL in an environment variable and name it: \
                 `database_url_env = \"SKYWEAVE_DATABASE_URL\"`",
            );
        } else if raw.database_url_env.is_some() {
            check.fail(
                database.span(),
                "server.database and server.database_url_env are both set".into(),
                "keep one: `database` for SQLite (one host), `database_url_env` for PostgreSQL",
            );
        } else {
            settings.database = Some(PathBuf::from(database.into_inner()));
        }
    }
    if let Some(name) = raw.database_url_env {
        if name.get_ref().is_empty() || name.get_ref().contains(['=', ' ', ':', '/']) {
            check.fail(
                name.span(),
                // Not repeated: it may be the URL itself, password and all.
                "server.database_url_env is not an environment variable name".into(),
                "name the variable that holds the URL, e.g. `SKYWEAVE_DATABASE_URL`",
            );
        } else {
            settings.database_url_env = Some(name.into_inner());
        }
    }
    if let Some(refresh) = raw.spend_refresh_ms {
        if !(50..=3_600_000).contains(refresh.get_ref()) {
            check.fail(
                refresh.span(),
                format!("server.spend_refresh_ms = {} is out of range", refresh.get_ref()),
                "use 50 to 3600000 milliseconds (default 1000)",
            );
        } else {
            settings.spend_refresh = Duration::from_millis(*refresh.get_ref());
        }
    }
    settings.ledger = raw.ledger.unwrap_or(true);
    if let Some(grace) = raw.shutdown_grace_secs {
        settings.shutdown_grace = Duration::from_secs(grace);
    }
    settings
}

fn validate_breaker(raw: Spanned<RawBreaker>, check: &mut Checker<'_>) -> BreakerSettings {
    let span = raw.span();
    let raw = raw.into_inner();
    let defaults = BreakerSettings::default();
    let settings = BreakerSettings {
        consecutive_failures: raw.consecutive_failures.unwrap_or(defaults.consecutive_failures),
        failure_rate: raw.failure_rate.unwrap_or(defaults.failure_rate),
        window: raw.window_secs.map_or(defaults.window, Duration::from_secs),
        min_requests: raw.min_requests.unwrap_or(defaults.min_requests),
        cooldown: raw.cooldown_ms.map_or(defaults.cooldown, Duration::from_millis),
        max_cooldown: raw.max_cooldown_ms.map_or(defaults.max_cooldown, Duration::from_millis),
    };
    if settings.consecutive_failures == 0 {
        check.fail(
            span.clone(),
            "circuit_breaker.consecutive_failures must be at least 1".into(),
            "set it to 1 or more (default 5)",
        );
    }
    if !(settings.failure_rate > 0.0 && settings.failure_rate <= 1.0) {
        check.fail(
            span.clone(),
            "circuit_breaker.failure_rate must be within (0, 1]".into(),
            "e.g. 0.5 opens the breaker when more than half the requests in the window failed",
        );
    }
    if settings.window.is_zero() || settings.min_requests == 0 {
        check.fail(
            span.clone(),
            "circuit_breaker: window_secs and min_requests must be at least 1".into(),
            "e.g. window_secs = 30, min_requests = 20",
        );
    }
    if settings.cooldown.is_zero() || settings.max_cooldown < settings.cooldown {
        check.fail(
            span,
            "circuit_breaker: cooldown_ms must be > 0 and max_cooldown_ms >= cooldown_ms".into(),
            "e.g. cooldown_ms = 5000, max_cooldown_ms = 60000",
        );
    }
    settings
}

fn validate_deployment(
    id: DeploymentId,
    span: Range<usize>,
    raw: RawDeployment,
    proximity: &Proximity,
    check: &mut Checker<'_>,
) -> Option<Deployment> {
    let errors_before = check.errors.len();
    let name = raw.name.get_ref().clone();
    let here = |what: &str| format!("deployment `{name}`: {what}");

    for (field, value) in [("name", &raw.name), ("model", &raw.model), ("region", &raw.region)] {
        if !is_header_safe(value.get_ref()) {
            check.fail(
                value.span(),
                here(&format!(
                    "`{field}` must be 1 to 128 visible ASCII characters without spaces"
                )),
                "use letters, digits and punctuation such as - _ . @ / : (it is sent in response headers)",
            );
        }
    }
    let cloud = raw.cloud.get_ref();
    if !is_identifier(cloud) {
        check.fail(
            raw.cloud.span(),
            here(&format!("cloud `{cloud}` is not a lowercase identifier")),
            "use a short lowercase name such as `aws`, `azure`, `gcp` or `onprem`",
        );
    }
    let region = raw.region.get_ref();
    if is_header_safe(region) && !proximity.knows(region) {
        check.warn(
            raw.region.span(),
            here(&format!(
                "region `{region}` is not in the shipped region table; its proximity to callers is unknown (50 ms assumed)"
            )),
            "check the spelling, or add a [[region]] with its latitude and longitude",
        );
    }

    let endpoint = match raw.endpoint.as_ref() {
        Some(endpoint) => match normalize_endpoint(endpoint.get_ref()) {
            Ok(url) => Some(url),
            Err(problem) => {
                check.fail(
                    endpoint.span(),
                    here(&format!("endpoint `{}` {problem}", endpoint.get_ref())),
                    "write the base URL, e.g. `https://api.openai.com/v1` or `https://NAME.openai.azure.com`",
                );
                None
            }
        },
        None => None,
    };
    let credential = raw.auth.as_ref().and_then(|auth| validate_auth(auth, &name, check));

    let provider_kind = *raw.provider.get_ref();
    let forbid = |check: &mut Checker<'_>, block: &str, span: Range<usize>| {
        let provider = match provider_kind {
            RawProviderKind::Openai => "openai",
            RawProviderKind::AzureOpenai => "azure_openai",
            RawProviderKind::Bedrock => "bedrock",
            RawProviderKind::Vertex => "vertex",
            RawProviderKind::Sim => "sim",
        };
        check.fail(
            span,
            here(&format!("`{block}` does not apply to provider `{provider}`")),
            format!("remove `{block}`, or change `provider`"),
        );
    };
    if !matches!(provider_kind, RawProviderKind::AzureOpenai) {
        if let Some(azure) = &raw.azure {
            forbid(check, "azure", azure.span());
        }
    }
    if !matches!(provider_kind, RawProviderKind::Sim) {
        if let Some(sim) = &raw.sim {
            forbid(check, "sim", sim.span());
        }
    }
    if !matches!(provider_kind, RawProviderKind::Bedrock) {
        if let Some(bedrock) = &raw.bedrock {
            forbid(check, "bedrock", bedrock.span());
        }
        if let Some(aws) = &raw.aws {
            forbid(check, "aws", aws.span());
        }
    }
    if !matches!(provider_kind, RawProviderKind::Vertex) {
        if let Some(vertex) = &raw.vertex {
            forbid(check, "vertex", vertex.span());
        }
        if let Some(google) = &raw.google {
            forbid(check, "google", google.span());
        }
    }
    let provider = match provider_kind {
        RawProviderKind::Openai => {
            let endpoint = endpoint.unwrap_or_else(|| DEFAULT_OPENAI_ENDPOINT.to_string());
            if endpoint.starts_with("https://api.openai.com") && credential.is_none() {
                check.fail(
                    raw.provider.span(),
                    here("OpenAI's API needs a key and `auth` is missing"),
                    "add `auth = { api_key_env = \"OPENAI_API_KEY\" }`",
                );
            }
            ProviderSpec::OpenAi { endpoint, auth: credential }
        }
        RawProviderKind::AzureOpenai => {
            if raw.endpoint.is_none() {
                check.fail(
                    span.clone(),
                    here("provider `azure_openai` needs `endpoint`"),
                    "add `endpoint = \"https://RESOURCE.openai.azure.com\"`",
                );
            }
            let Some(azure) = &raw.azure else {
                check.fail(
                    span,
                    here("provider `azure_openai` needs an `azure` table"),
                    "add `azure = { deployment = \"NAME\", api_version = \"2024-10-21\" }`",
                );
                return None;
            };
            let azure = azure.get_ref();
            if azure.deployment.get_ref().is_empty()
                || !azure
                    .deployment
                    .get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                check.fail(
                    azure.deployment.span(),
                    here("azure.deployment must be the Azure deployment name (letters, digits, - _ .)"),
                    "copy the deployment name from the Azure AI Foundry portal",
                );
            }
            if is_api_version(azure.api_version.get_ref())
                && azure.api_version.get_ref().as_str() < MIN_AZURE_STREAM_USAGE_VERSION
            {
                check.warn(
                    azure.api_version.span(),
                    here(&format!(
                        "azure.api_version `{}` predates stream usage reporting: streamed requests will not be token-accounted",
                        azure.api_version.get_ref()
                    )),
                    format!("use {MIN_AZURE_STREAM_USAGE_VERSION}-preview, 2024-10-21 or later"),
                );
            }
            if !is_api_version(azure.api_version.get_ref()) {
                check.fail(
                    azure.api_version.span(),
                    here(&format!(
                        "azure.api_version `{}` is not an API version",
                        azure.api_version.get_ref()
                    )),
                    "use a dated version such as `2024-10-21` or `2025-01-01-preview`",
                );
            }
            let Some(auth) = credential else {
                if raw.auth.is_none() {
                    check.fail(
                        span,
                        here("provider `azure_openai` needs `auth`"),
                        "add `auth = { api_key_env = \"AZURE_OPENAI_API_KEY\" }` or `{ bearer_token_env = \"...\" }` for Entra ID",
                    );
                }
                return None;
            };
            ProviderSpec::AzureOpenAi {
                endpoint: endpoint.unwrap_or_default(),
                deployment: azure.deployment.get_ref().clone(),
                api_version: azure.api_version.get_ref().clone(),
                auth,
            }
        }
        RawProviderKind::Bedrock => {
            if let Some(auth) = &raw.auth {
                check.fail(
                    auth.span(),
                    here("`auth` does not apply to provider `bedrock`: AWS credentials come from the standard sources"),
                    "remove `auth`; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or name a profile with `aws = { profile = \"...\" }`",
                );
            }
            let Some(bedrock) = &raw.bedrock else {
                check.fail(
                    span,
                    here("provider `bedrock` needs a `bedrock` table"),
                    "add `bedrock = { model_id = \"anthropic.claude-3-5-haiku-20241022-v1:0\" }`",
                );
                return None;
            };
            let model_id = bedrock.get_ref().model_id.get_ref();
            let valid_id = !model_id.is_empty()
                && model_id.len() <= 256
                && model_id.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'?');
            if !valid_id {
                check.fail(
                    bedrock.get_ref().model_id.span(),
                    here(&format!("bedrock.model_id `{model_id}` is not a Bedrock model id or inference profile id")),
                    "use the id from the Bedrock console, e.g. `anthropic.claude-3-5-haiku-20241022-v1:0` or `us.amazon.nova-pro-v1:0`",
                );
            }
            let region = raw.region.get_ref();
            ProviderSpec::Bedrock {
                endpoint: endpoint
                    .unwrap_or_else(|| format!("https://bedrock-runtime.{region}.amazonaws.com")),
                model_id: model_id.clone(),
                profile: raw.aws.as_ref().and_then(|aws| aws.get_ref().profile.clone()),
            }
        }
        RawProviderKind::Vertex => {
            if let Some(auth) = &raw.auth {
                check.fail(
                    auth.span(),
                    here("`auth` does not apply to provider `vertex`: Google credentials are set in `google`"),
                    "remove `auth`; use `google = { service_account_file = \"...\" }`, `{ metadata_server = true }` or `{ token_command = \"...\" }`",
                );
            }
            let Some(vertex) = &raw.vertex else {
                check.fail(
                    span,
                    here("provider `vertex` needs a `vertex` table"),
                    "add `vertex = { project = \"my-project\", model = \"gemini-2.0-flash-001\" }`",
                );
                return None;
            };
            let vertex = vertex.get_ref();
            for (field, value) in [("project", &vertex.project), ("model", &vertex.model)] {
                let text = value.get_ref();
                let valid = !text.is_empty()
                    && text.len() <= 128
                    && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./@:".contains(&b));
                if !valid {
                    check.fail(
                        value.span(),
                        here(&format!(
                            "vertex.{field} `{text}` is not a Google Cloud {field} name"
                        )),
                        "copy it from the Google Cloud console (letters, digits, - _ . / @ :)",
                    );
                }
            }
            let credentials = match raw.google.as_ref().map(|g| (g.span(), g.get_ref())) {
                None => GoogleCredentials::Default,
                Some((google_span, google)) => {
                    let given = [
                        google.service_account_file.is_some(),
                        google.metadata_server == Some(true),
                        google.token_command.is_some(),
                    ];
                    if given.iter().filter(|g| **g).count() != 1 {
                        check.fail(
                            google_span,
                            here("`google` must name exactly one credential source"),
                            "use one of service_account_file, metadata_server = true, token_command",
                        );
                        GoogleCredentials::Default
                    } else if let Some(path) = &google.service_account_file {
                        GoogleCredentials::ServiceAccountFile(PathBuf::from(path))
                    } else if let Some(command) = &google.token_command {
                        GoogleCredentials::TokenCommand(command.clone())
                    } else {
                        GoogleCredentials::MetadataServer
                    }
                }
            };
            let region = raw.region.get_ref();
            let default_endpoint = if region == "global" {
                "https://aiplatform.googleapis.com".to_string()
            } else {
                format!("https://{region}-aiplatform.googleapis.com")
            };
            ProviderSpec::Vertex {
                endpoint: endpoint.unwrap_or(default_endpoint),
                project: vertex.project.get_ref().clone(),
                model: vertex.model.get_ref().clone(),
                mode: match vertex.mode {
                    RawVertexMode::Gemini => VertexMode::Gemini,
                    RawVertexMode::Openai => VertexMode::OpenAiCompatible,
                },
                credentials,
            }
        }
        RawProviderKind::Sim => {
            if let Some(endpoint) = &raw.endpoint {
                forbid(check, "endpoint", endpoint.span());
            }
            if let Some(auth) = &raw.auth {
                forbid(check, "auth", auth.span());
            }
            ProviderSpec::Sim(validate_sim(raw.sim, &name, check))
        }
    };

    let price = match raw.price {
        Some(price) => {
            let (price_span, price) = (price.span(), price.into_inner());
            let valid = [price.input_per_mtok, price.output_per_mtok]
                .iter()
                .all(|p| p.is_finite() && *p >= 0.0);
            if !valid {
                check.fail(
                    price_span,
                    here("prices must be finite and >= 0"),
                    "give USD per million tokens, e.g. `{ input_per_mtok = 2.5, output_per_mtok = 10.0 }`",
                );
            }
            Price { input_per_mtok: price.input_per_mtok, output_per_mtok: price.output_per_mtok }
        }
        None => Price::default(),
    };
    let limits = match raw.limits {
        Some(limits) => {
            let (limits_span, limits) = (limits.span(), limits.into_inner());
            if [limits.rpm, limits.tpm, limits.max_concurrency].contains(&Some(0)) {
                check.fail(
                    limits_span,
                    here("limits must be at least 1 (leave a limit out for none)"),
                    "remove the zero limit or raise it",
                );
            }
            Limits {
                requests_per_minute: limits.rpm,
                tokens_per_minute: limits.tpm,
                max_concurrency: limits.max_concurrency,
            }
        }
        None => Limits::default(),
    };
    let weight = match raw.weight {
        Some(weight) => {
            if !(weight.get_ref().is_finite() && *weight.get_ref() > 0.0) {
                check.fail(
                    weight.span(),
                    here("weight must be > 0"),
                    "use a positive number (default 1.0); use `priority` to keep a deployment as a fallback",
                );
            }
            *weight.get_ref()
        }
        None => 1.0,
    };
    let mut timeouts = Timeouts {
        connect: Duration::from_secs(3),
        first_token: Duration::from_secs(60),
        total: Duration::from_secs(300),
    };
    if let Some(raw_timeouts) = raw.timeouts {
        let (timeouts_span, raw_timeouts) = (raw_timeouts.span(), raw_timeouts.into_inner());
        if let Some(ms) = raw_timeouts.connect_ms {
            timeouts.connect = Duration::from_millis(ms);
        }
        if let Some(ms) = raw_timeouts.first_token_ms {
            timeouts.first_token = Duration::from_millis(ms);
        }
        if let Some(ms) = raw_timeouts.total_ms {
            timeouts.total = Duration::from_millis(ms);
        }
        if timeouts.connect.is_zero()
            || timeouts.first_token.is_zero()
            || timeouts.total < timeouts.first_token
            || timeouts.total < timeouts.connect
        {
            check.fail(
                timeouts_span,
                here("timeouts must be > 0 and total_ms >= first_token_ms"),
                "e.g. `timeouts = { connect_ms = 3000, first_token_ms = 60000, total_ms = 600000 }`",
            );
        }
    }
    let probe = raw.health_probe.map(|probe| {
        if probe.get_ref().interval_secs == 0 {
            check.fail(probe.span(), here("health_probe.interval_secs must be >= 1"), "e.g. 10");
        }
        ProbeSettings { interval: Duration::from_secs(probe.get_ref().interval_secs) }
    });

    if check.errors.len() > errors_before {
        return None;
    }
    let model = raw.model.into_inner();
    Some(Deployment {
        id,
        upstream_model: raw.upstream_model.map_or_else(|| model.clone(), Spanned::into_inner),
        model,
        name,
        cloud: raw.cloud.into_inner(),
        region: raw.region.into_inner(),
        provider,
        price,
        limits,
        weight,
        priority: raw.priority.unwrap_or(0),
        timeouts,
        probe,
    })
}

fn validate_auth(
    auth: &Spanned<RawAuth>,
    name: &str,
    check: &mut Checker<'_>,
) -> Option<Credential> {
    let raw = auth.get_ref();
    let mut given = Vec::new();
    if let Some(env) = &raw.api_key_env {
        given.push(Credential {
            scheme: AuthScheme::ApiKey,
            source: SecretSource::Env(env.clone()),
        });
    }
    if let Some(path) = &raw.api_key_file {
        given.push(Credential {
            scheme: AuthScheme::ApiKey,
            source: SecretSource::File(PathBuf::from(path)),
        });
    }
    if let Some(env) = &raw.bearer_token_env {
        given.push(Credential {
            scheme: AuthScheme::BearerToken,
            source: SecretSource::Env(env.clone()),
        });
    }
    if let Some(path) = &raw.bearer_token_file {
        given.push(Credential {
            scheme: AuthScheme::BearerToken,
            source: SecretSource::File(PathBuf::from(path)),
        });
    }
    if given.len() != 1 {
        check.fail(
            auth.span(),
            format!("deployment `{name}`: `auth` must name exactly one secret source, found {}", given.len()),
            "use one of api_key_env, api_key_file, bearer_token_env, bearer_token_file (secrets are never written in the file itself)",
        );
        return None;
    }
    let credential = given.pop()?;
    if let SecretSource::Env(var) = &credential.source {
        if !is_env_name(var) {
            check.fail(
                auth.span(),
                format!("deployment `{name}`: `{var}` is not an environment variable name"),
                "name the variable that holds the secret (letters, digits, _), not the secret itself",
            );
            return None;
        }
    }
    Some(credential)
}

fn validate_sim(raw: Option<Spanned<RawSim>>, name: &str, check: &mut Checker<'_>) -> SimSpec {
    let mut spec = SimSpec {
        time_to_first_token: Duration::from_millis(200),
        tokens_per_second: 80.0,
        output_tokens: 24,
        error_rate: 0.0,
        rate_limit_rate: 0.0,
        outages: Vec::new(),
        embedding_dimensions: 16,
    };
    let Some(raw) = raw else { return spec };
    let span = raw.span();
    let raw = raw.into_inner();
    let mut fail = |what: &str, fix: &str| {
        check.fail(span.clone(), format!("deployment `{name}`: sim.{what}"), fix);
    };
    if let Some(ms) = raw.ttft_ms {
        spec.time_to_first_token = Duration::from_millis(ms);
    }
    if let Some(tps) = raw.tokens_per_second {
        if !(0.01..=1_000_000.0).contains(&tps) {
            fail("tokens_per_second must be within 0.01..=1000000", "e.g. 50.0");
        }
        spec.tokens_per_second = tps;
    }
    if let Some(tokens) = raw.output_tokens {
        if tokens == 0 {
            fail("output_tokens must be >= 1", "e.g. 24");
        }
        spec.output_tokens = tokens;
    }
    for (field, value, target) in [
        ("error_rate", raw.error_rate, &mut spec.error_rate),
        ("rate_limit_rate", raw.rate_limit_rate, &mut spec.rate_limit_rate),
    ] {
        if let Some(rate) = value {
            if !(0.0..=1.0).contains(&rate) {
                fail(&format!("{field} must be within 0..=1"), "a share of requests, e.g. 0.05");
            }
            *target = rate;
        }
    }
    for outage in raw.outages {
        const YEAR: f64 = 365.0 * 86_400.0;
        let valid = (0.0..=YEAR).contains(&outage.start_secs)
            && outage.duration_secs > 0.0
            && outage.duration_secs <= YEAR
            && outage.every_secs.is_none_or(|every| every > outage.duration_secs && every <= YEAR);
        if !valid {
            fail(
                "outages: start_secs >= 0, duration_secs > 0 and every_secs > duration_secs",
                "e.g. `outages = [{ start_secs = 20, duration_secs = 30, every_secs = 120 }]`",
            );
            continue;
        }
        spec.outages.push(Outage {
            start: Duration::from_secs_f64(outage.start_secs),
            duration: Duration::from_secs_f64(outage.duration_secs),
            every: outage.every_secs.map(Duration::from_secs_f64),
        });
    }
    if let Some(dimensions) = raw.embedding_dimensions {
        if !(1..=8192).contains(&dimensions) {
            fail("embedding_dimensions must be within 1..=8192", "e.g. 16");
        }
        spec.embedding_dimensions = dimensions;
    }
    spec
}

fn validate_models(
    raw_models: Vec<Spanned<RawModel>>,
    routing: &RawRouting,
    deployments: &[Deployment],
    check: &mut Checker<'_>,
) -> Vec<Model> {
    let mut by_model: BTreeMap<&str, Vec<DeploymentId>> = BTreeMap::new();
    for deployment in deployments {
        by_model.entry(&deployment.model).or_default().push(deployment.id);
    }
    let mut overrides: BTreeMap<String, RawModel> = BTreeMap::new();
    for raw in raw_models {
        let span = raw.span();
        let raw = raw.into_inner();
        let name = raw.name.get_ref().clone();
        if !by_model.contains_key(name.as_str()) {
            check.fail(
                raw.name.span(),
                format!("[[model]] `{name}` has no deployment"),
                "add a [[deployment]] with this `model`, or remove the [[model]] table",
            );
            continue;
        }
        if overrides.contains_key(&name) {
            check.fail(
                span,
                format!("[[model]] `{name}` is declared twice"),
                "merge the two tables",
            );
            continue;
        }
        if let Some(allowed) = &raw.allowed_clouds {
            if allowed.get_ref().is_empty() {
                check.fail(
                    allowed.span(),
                    format!("[[model]] `{name}`: allowed_clouds is empty"),
                    "list the clouds the model may run on, or remove allowed_clouds",
                );
            }
            for deployment in deployments.iter().filter(|d| d.model == name) {
                if !allowed.get_ref().contains(&deployment.cloud) {
                    check.fail(
                        allowed.span(),
                        format!(
                            "[[model]] `{name}` may run only on {}, but deployment `{}` is on {}",
                            allowed.get_ref().join(", "),
                            deployment.name,
                            deployment.cloud
                        ),
                        "remove that deployment, or add its cloud to allowed_clouds if the \
                         model's licence allows it",
                    );
                }
            }
        }
        overrides.insert(name, raw);
    }

    let attempts_check = |value: &Option<Spanned<u32>>, check: &mut Checker<'_>| -> Option<u32> {
        let value = value.as_ref()?;
        if !(1..=10).contains(value.get_ref()) {
            check.fail(value.span(), "max_attempts must be within 1..=10".into(), "e.g. 3");
            return None;
        }
        Some(*value.get_ref())
    };
    let default_attempts = attempts_check(&routing.max_attempts, check).unwrap_or(3);
    let deadline_check =
        |value: Option<&Spanned<u64>>, check: &mut Checker<'_>| -> Option<Duration> {
            let value = value?;
            if *value.get_ref() == 0 {
                check.fail(
                    value.span(),
                    "deadline_ms must be at least 1".into(),
                    "e.g. 600000 (ten minutes)",
                );
                return None;
            }
            Some(Duration::from_millis(*value.get_ref()))
        };
    let default_deadline =
        deadline_check(routing.deadline_ms.as_ref(), check).unwrap_or(Duration::from_secs(600));
    let default_wait = Duration::from_millis(routing.max_retry_after_wait_ms.unwrap_or(5_000));

    by_model
        .into_iter()
        .map(|(name, ids)| {
            let raw = overrides.get(name);
            Model {
                name: name.to_string(),
                strategy: raw.and_then(|r| r.strategy).or(routing.strategy).unwrap_or_default(),
                max_attempts: raw
                    .and_then(|r| attempts_check(&r.max_attempts, check))
                    .unwrap_or(default_attempts),
                deadline: raw
                    .and_then(|r| deadline_check(r.deadline_ms.as_ref(), check))
                    .unwrap_or(default_deadline),
                max_retry_after_wait: raw
                    .and_then(|r| r.max_retry_after_wait_ms)
                    .map_or(default_wait, Duration::from_millis),
                allowed_clouds: raw
                    .and_then(|r| r.allowed_clouds.as_ref())
                    .map(|clouds| clouds.get_ref().clone()),
                deployments: ids,
            }
        })
        .collect()
}

fn normalize_endpoint(endpoint: &str) -> Result<String, &'static str> {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .ok_or("must start with https:// or http://")?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err("has no host");
    }
    if host.contains('@') {
        return Err("must not carry credentials (user:password@); name them in `auth`");
    }
    if endpoint.contains('?') || endpoint.contains('#') {
        return Err("must not carry a query string or fragment");
    }
    if endpoint.chars().any(char::is_whitespace) {
        return Err("contains whitespace");
    }
    if url::Url::parse(endpoint).is_err() {
        return Err("is not a valid URL");
    }
    Ok(endpoint.trim_end_matches('/').to_string())
}

fn is_header_safe(value: &str) -> bool {
    (1..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic())
}

fn is_identifier(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 32
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn is_env_name(value: &str) -> bool {
    let mut chars = value.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_api_version(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() >= 10
        && bytes[..10].iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
        && value[10..].chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests;
