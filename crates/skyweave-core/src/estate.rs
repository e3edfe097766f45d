//! The validated estate: what the gateway serves, where, and under which rules.
//!
//! These types are built only by [`crate::config::parse_estate`] after every
//! check has passed, so code that holds an `Estate` may rely on its
//! invariants: deployment names are unique, every model has at least one
//! deployment, numbers are finite and in range, provider blocks match the
//! provider.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::compute::{Commitment, PrivateOffering, Quota};
use crate::region::Proximity;
use crate::routing::Strategy;
use crate::tenant::Tenant;

#[derive(Debug, Clone)]
pub struct Estate {
    pub server: ServerSettings,
    pub models: Vec<Model>,
    pub deployments: Vec<Deployment>,
    pub breaker: BreakerSettings,
    pub proximity: Proximity,
    /// Private compute offerings (reserved, capacity blocks, on-premises).
    pub offerings: Vec<PrivateOffering>,
    pub quotas: Vec<Quota>,
    /// At most one per cloud.
    pub commitments: Vec<Commitment>,
    /// When there is at least one, every API request needs a key of one.
    pub tenants: Vec<Tenant>,
    /// The admin API, when the estate enables it.
    pub admin: Option<AdminSettings>,
    /// Named object-store locations for the data plane.
    pub stores: Vec<StoreSpec>,
}

/// A named object-store location (`[[store]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSpec {
    pub name: String,
    pub url: String,
    /// `aws`, `azure`, `gcp` or `local`, from the URL's scheme.
    pub cloud: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
}

/// The admin API: its token (from an environment variable, never the file)
/// and, optionally, a listener of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminSettings {
    pub token_env: String,
    pub listen: Option<SocketAddr>,
}

impl Estate {
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|model| model.name == name)
    }

    pub fn deployment(&self, id: DeploymentId) -> &Deployment {
        &self.deployments[id.0]
    }

    /// Clouds and regions, each with the names of the deployments there.
    pub fn clouds(&self) -> BTreeMap<&str, BTreeMap<&str, Vec<&str>>> {
        let mut clouds: BTreeMap<&str, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
        for deployment in &self.deployments {
            clouds
                .entry(deployment.cloud.as_str())
                .or_default()
                .entry(deployment.region.as_str())
                .or_default()
                .push(deployment.name.as_str());
        }
        clouds
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Requests with a larger body are refused with 413 before they are parsed.
    pub max_body_bytes: usize,
    /// The region assumed for callers that do not say where they are.
    pub default_caller_region: Option<String>,
    /// How long a graceful shutdown waits for in-flight requests and streams.
    pub shutdown_grace: Duration,
    /// The SQLite database of API keys, as written (relative paths are
    /// relative to the estate file); default `skyweave.db` beside it.
    pub database: Option<PathBuf>,
    /// Instead of SQLite: the environment variable holding a PostgreSQL
    /// URL (`postgres://user:password@host:port/dbname`), for several
    /// replicas sharing keys, budgets and the ledger.
    pub database_url_env: Option<String>,
    /// How often the gateway reads the other replicas' (and earlier runs')
    /// spend from the database. With several replicas a hard budget can be
    /// overrun by what the others spend in this time.
    pub spend_refresh: Duration,
    /// Record every request in the usage ledger. Budgets and commitment
    /// tracking need it; `false` is for measuring the proxy alone.
    pub ledger: bool,
}

/// Index of a deployment in [`Estate::deployments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeploymentId(pub usize);

#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub strategy: Strategy,
    /// Upper bound on upstream attempts for one request (first try included).
    pub max_attempts: u32,
    /// The whole request, all attempts and waits included, ends by then.
    pub deadline: Duration,
    /// Longest Retry-After the gateway will wait out on one deployment rather
    /// than move on; longer ones mark the deployment as out of capacity.
    pub max_retry_after_wait: Duration,
    /// Contract rule: the only clouds the model may be served from (every
    /// deployment of the model is on one of them; the router checks it on
    /// every attempt too). `None`: any cloud.
    pub allowed_clouds: Option<Vec<String>>,
    pub deployments: Vec<DeploymentId>,
}

impl Model {
    pub fn allows_cloud(&self, cloud: &str) -> bool {
        self.allowed_clouds.as_ref().is_none_or(|clouds| clouds.iter().any(|c| c == cloud))
    }
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: DeploymentId,
    pub name: String,
    /// The name clients ask for.
    pub model: String,
    /// The name sent upstream (defaults to `model`).
    pub upstream_model: String,
    pub cloud: String,
    pub region: String,
    pub provider: ProviderSpec,
    pub price: Price,
    pub limits: Limits,
    pub weight: f64,
    /// Lower is preferred; deployments of a worse priority are used only when
    /// no deployment of a better one is eligible.
    pub priority: u32,
    pub timeouts: Timeouts,
    pub probe: Option<ProbeSettings>,
}

#[derive(Debug, Clone)]
pub enum ProviderSpec {
    OpenAi {
        /// Base URL in the OpenAI SDK convention, e.g. `https://api.openai.com/v1`.
        endpoint: String,
        auth: Option<Credential>,
    },
    AzureOpenAi {
        /// Resource URL, e.g. `https://example-eastus.openai.azure.com`.
        endpoint: String,
        deployment: String,
        api_version: String,
        auth: Credential,
    },
    /// AWS Bedrock Runtime: Converse / ConverseStream, InvokeModel for embeddings.
    Bedrock {
        /// `https://bedrock-runtime.{region}.amazonaws.com` unless overridden
        /// (VPC endpoints, tests).
        endpoint: String,
        model_id: String,
        /// Shared-config profile; `None`: `AWS_PROFILE` or `default`.
        profile: Option<String>,
    },
    /// Google Vertex AI: Gemini generateContent, or the OpenAI-compatible
    /// endpoint for models served that way.
    Vertex {
        /// `https://{region}-aiplatform.googleapis.com` unless overridden.
        endpoint: String,
        project: String,
        /// The Gemini model (`gemini-2.0-flash-001`), or in OpenAI-compatible
        /// mode the model name sent in the body (`meta/llama-3.1-405b-instruct-maas`).
        model: String,
        mode: VertexMode,
        credentials: GoogleCredentials,
    },
    Sim(SimSpec),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VertexMode {
    Gemini,
    OpenAiCompatible,
}

/// Where a Vertex deployment gets its OAuth 2.0 access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoogleCredentials {
    /// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`
    /// (a service-account key file), else the metadata server.
    Default,
    /// A service-account JSON key: a JWT bearer grant signed with its key.
    ServiceAccountFile(PathBuf),
    /// The GCE/GKE metadata server (`GCE_METADATA_HOST` overrides its address).
    MetadataServer,
    /// A command that prints an access token (e.g. `gcloud auth print-access-token`).
    TokenCommand(String),
}

impl ProviderSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderSpec::OpenAi { .. } => "openai",
            ProviderSpec::AzureOpenAi { .. } => "azure_openai",
            ProviderSpec::Bedrock { .. } => "bedrock",
            ProviderSpec::Vertex { .. } => "vertex",
            ProviderSpec::Sim(_) => "sim",
        }
    }

    pub fn endpoint(&self) -> Option<&str> {
        match self {
            ProviderSpec::OpenAi { endpoint, .. }
            | ProviderSpec::AzureOpenAi { endpoint, .. }
            | ProviderSpec::Bedrock { endpoint, .. }
            | ProviderSpec::Vertex { endpoint, .. } => Some(endpoint),
            ProviderSpec::Sim(_) => None,
        }
    }

    pub fn credential(&self) -> Option<&Credential> {
        match self {
            ProviderSpec::OpenAi { auth, .. } => auth.as_ref(),
            ProviderSpec::AzureOpenAi { auth, .. } => Some(auth),
            ProviderSpec::Bedrock { .. } | ProviderSpec::Vertex { .. } | ProviderSpec::Sim(_) => {
                None
            }
        }
    }
}

/// How a deployment authenticates. Only a reference to the secret is kept
/// here; the gateway resolves it when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub scheme: AuthScheme,
    pub source: SecretSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthScheme {
    /// OpenAI: `Authorization: Bearer`; Azure: the `api-key` header.
    ApiKey,
    /// `Authorization: Bearer` with a token (Azure: an Entra ID access token).
    BearerToken,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "environment variable {name}"),
            SecretSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    pub fn cost_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_mtok + output_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }

    /// One number to compare deployments by: a typical chat turn reads about
    /// three tokens for every one it writes.
    pub fn blended_per_mtok(&self) -> f64 {
        (3.0 * self.input_per_mtok + self.output_per_mtok) / 4.0
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub max_concurrency: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Streams: until the first chunk arrives. (Non-streaming responses are
    /// bounded by `total`: most servers send their headers only with the body.)
    pub first_token: Duration,
    /// One attempt, from sending the request to the end of the response.
    pub total: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Open after this many failures in a row.
    pub consecutive_failures: u32,
    /// ... or when the failure ratio over the window exceeds this.
    pub failure_rate: f64,
    pub window: Duration,
    /// The failure ratio is judged only once the window holds this many results.
    pub min_requests: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(30),
            min_requests: 20,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(60),
        }
    }
}

/// The documented simulator of a model deployment (`provider = "sim"`).
#[derive(Debug, Clone, PartialEq)]
pub struct SimSpec {
    pub time_to_first_token: Duration,
    pub tokens_per_second: f64,
    /// Tokens in each reply.
    pub output_tokens: u32,
    /// Share of requests answered with a 500.
    pub error_rate: f64,
    /// Share of requests answered with a 429 and a Retry-After.
    pub rate_limit_rate: f64,
    pub outages: Vec<Outage>,
    pub embedding_dimensions: u32,
}

/// A window, relative to when the gateway started, in which a simulated
/// deployment answers every request with 503. With `every`, the window repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub start: Duration,
    pub duration: Duration,
    pub every: Option<Duration>,
}

impl Outage {
    pub fn covers(&self, since_start: Duration) -> bool {
        if since_start < self.start {
            return false;
        }
        let offset = since_start - self.start;
        let offset = match self.every {
            Some(period) if !period.is_zero() => {
                Duration::from_nanos((offset.as_nanos() % period.as_nanos()) as u64)
            }
            _ => offset,
        };
        offset < self.duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_windows() {
        let secs = Duration::from_secs;
        let once = Outage { start: secs(10), duration: secs(5), every: None };
        let repeating = Outage { every: Some(secs(60)), ..once };
        let check = |outage: &Outage, at: u64, expected: bool| {
            assert_eq!(outage.covers(secs(at)), expected, "{outage:?} at {at}s");
        };
        check(&once, 9, false);
        check(&once, 10, true);
        check(&once, 14, true);
        check(&once, 15, false);
        check(&once, 75, false);
        check(&repeating, 70, true);
        check(&repeating, 76, false);
    }

    #[test]
    fn price_cost() {
        let price = Price { input_per_mtok: 2.5, output_per_mtok: 10.0 };
        assert!((price.cost_usd(1_000_000, 100_000) - 3.5).abs() < 1e-9);
        assert!((price.blended_per_mtok() - 4.375).abs() < 1e-9);
    }
}
