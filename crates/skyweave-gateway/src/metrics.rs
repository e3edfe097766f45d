//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format.
//!
//! Labels carry names from the estate (model, deployment, cloud), statuses
//! and failure kinds, never request content or secrets.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

pub type Name = Arc<String>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub model: Name,
    pub deployment: Name,
    pub cloud: Name,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelCloudLabels {
    pub model: Name,
    pub cloud: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: Name,
    pub deployment: Name,
    pub cloud: Name,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    pub model: Name,
    pub deployment: Name,
    pub cloud: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub deployment: Name,
    pub cloud: Name,
    pub region: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub deployment: Name,
    pub cloud: Name,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    pub model: Name,
    pub from_cloud: Name,
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<ModelCloudLabels, Histogram>,
    pub time_to_first_token: Family<ModelCloudLabels, Histogram>,
    pub gateway_overhead: Histogram,
    pub tokens: Family<TokenLabels, Counter>,
    pub cost_usd: Family<CostLabels, Counter<f64, AtomicU64>>,
    pub attempts: Family<AttemptLabels, Counter>,
    pub failovers: Family<FailoverLabels, Counter>,
    /// 0 closed, 1 half-open, 2 open.
    pub circuit_state: Family<DeploymentLabels, Gauge>,
    pub in_flight: Family<DeploymentLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn overhead_histogram() -> Histogram {
    // 10 µs .. ~80 ms
    Histogram::new(exponential_buckets(0.000_01, 2.0, 14))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("skyweave");
        let requests = Family::default();
        registry.register(
            "requests",
            "Client requests by model, serving deployment, cloud and HTTP status",
            requests.clone(),
        );
        let request_duration = Family::<ModelCloudLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let time_to_first_token = Family::<ModelCloudLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let gateway_overhead = overhead_histogram();
        let tokens = Family::default();
        let cost_usd = Family::default();
        let attempts = Family::default();
        let failovers = Family::default();
        let circuit_state = Family::default();
        let in_flight = Family::default();
        let request_duration_family: Family<ModelCloudLabels, Histogram> = request_duration;
        let ttft_family: Family<ModelCloudLabels, Histogram> = time_to_first_token;
        registry.register(
            "request_duration_seconds",
            "Total request latency as the client sees it",
            request_duration_family.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from the request to the first streamed chunk (streams) or the response (non-streaming)",
            ttft_family.clone(),
        );
        registry.register(
            "gateway_overhead_seconds",
            "Time spent in the gateway itself: request handling before the upstream call plus response handling after it",
            gateway_overhead.clone(),
        );
        registry.register("tokens", "Tokens by direction (input, output)", tokens.clone());
        registry.register(
            "cost_usd",
            "Estimated cost in USD from the deployments' prices",
            cost_usd.clone(),
        );
        registry.register(
            "upstream_attempts",
            "Upstream attempts by deployment and outcome (ok or the failure kind)",
            attempts.clone(),
        );
        registry.register(
            "failovers",
            "Requests moved off a deployment after a failure",
            failovers.clone(),
        );
        registry.register(
            "circuit_state",
            "Circuit breaker state per deployment: 0 closed, 1 half-open, 2 open",
            circuit_state.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests in flight per deployment",
            in_flight.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration: request_duration_family,
            time_to_first_token: ttft_family,
            gateway_overhead,
            tokens,
            cost_usd,
            attempts,
            failovers,
            circuit_state,
            in_flight,
        }
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    pub fn observe_overhead(&self, overhead: Duration) {
        self.gateway_overhead.observe(overhead.as_secs_f64());
    }
}

/// One deployment's series with fixed labels, looked up once at start so
/// that a served request costs atomic increments, not hash-map lookups.
#[derive(Clone)]
pub struct DeploymentMetrics {
    pub requests_ok: Counter,
    pub duration: Histogram,
    pub time_to_first_token: Histogram,
    pub tokens_in: Counter,
    pub tokens_out: Counter,
    pub cost_usd: Counter<f64, AtomicU64>,
    pub attempts_ok: Counter,
}

impl Metrics {
    pub fn for_deployment(
        &self,
        model: &Name,
        deployment: &Name,
        cloud: &Name,
    ) -> DeploymentMetrics {
        let model_cloud = ModelCloudLabels { model: model.clone(), cloud: cloud.clone() };
        let tokens = |direction| TokenLabels {
            model: model.clone(),
            deployment: deployment.clone(),
            cloud: cloud.clone(),
            direction,
        };
        // Each lookup is its own statement: a family's read guard lives to the
        // end of the statement, and a second lookup of the same family in the
        // same statement would wait for it forever.
        let requests_ok = self
            .requests
            .get_or_create(&RequestLabels {
                model: model.clone(),
                deployment: deployment.clone(),
                cloud: cloud.clone(),
                status: 200,
            })
            .clone();
        let duration = self.request_duration.get_or_create(&model_cloud).clone();
        let time_to_first_token = self.time_to_first_token.get_or_create(&model_cloud).clone();
        let tokens_in = self.tokens.get_or_create(&tokens("input")).clone();
        let tokens_out = self.tokens.get_or_create(&tokens("output")).clone();
        let cost_usd = self
            .cost_usd
            .get_or_create(&CostLabels {
                model: model.clone(),
                deployment: deployment.clone(),
                cloud: cloud.clone(),
            })
            .clone();
        let attempts_ok = self
            .attempts
            .get_or_create(&AttemptLabels {
                deployment: deployment.clone(),
                cloud: cloud.clone(),
                outcome: "ok",
            })
            .clone();
        DeploymentMetrics {
            requests_ok,
            duration,
            time_to_first_token,
            tokens_in,
            tokens_out,
            cost_usd,
            attempts_ok,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
