//! The gateway's shared state and the failover loop.
//!
//! Per deployment, the breaker, capacity windows and latency EWMAs live
//! behind one `std::sync::Mutex` that is held only for a few arithmetic
//! operations and never across an `.await`.

use skyweave_core::compute::Commitment;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use skyweave_core::capacity::{Capacity, CapacityRefusal, Reservation};
use skyweave_core::estate::{Deployment, DeploymentId, Estate, Model, SecretSource};
use skyweave_core::failure::FailureKind;
use skyweave_core::health::{Admission, Breaker, BreakerState, Ewma};
use skyweave_core::routing::{self, Candidate};

use crate::metrics::{
    AttemptLabels, DeploymentLabels, DeploymentMetrics, FailoverLabels, Metrics, Name,
};
use crate::providers::{self, Provider, UpstreamError, Usage};
use crate::secrets::{Secret, SecretError};

pub struct Gateway {
    pub estate: Estate,
    /// File-based secrets, re-read in the background.
    file_secrets: Vec<Secret>,
    pub deployments: Vec<DeploymentRuntime>,
    pub metrics: Metrics,
    pub started: Instant,
    shutting_down: AtomicBool,
    /// API keys, when the estate has tenants.
    pub keys: Option<crate::keystore::KeyStore>,
    /// Per-tenant RPM/TPM/concurrency, exact on this replica.
    pub tenant_capacity: std::collections::HashMap<String, Mutex<Capacity>>,
    /// Per-key RPM/TPM, created at a key's first request.
    pub key_capacity: Mutex<std::collections::HashMap<String, Capacity>>,
    /// The usage ledger, when the gateway has a database.
    pub ledger: Option<crate::ledger::Ledger>,
    /// This month's spend per tenant and key, for budgets.
    pub spend: Mutex<Spend>,
    /// Spend per committed cloud within its commitment's period.
    pub commitment_spend: Mutex<std::collections::HashMap<String, Shared>>,
    /// Each commitment's period as day numbers, parsed once.
    commitment_periods: Vec<Option<(i64, i64)>>,
    /// SHA-256 of the admin token, once set by the binary.
    pub admin_token: std::sync::OnceLock<[u8; 32]>,
}

/// An amount of USD spent: by this process (counted as its requests end),
/// and by everyone else (other replicas, earlier runs), read from the
/// database every `server.spend_refresh` (default 1 s).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Shared {
    pub mine: f64,
    pub others: f64,
}

impl Shared {
    pub fn total(self) -> f64 {
        self.mine + self.others
    }
}

/// Spend in one UTC month.
#[derive(Debug, Default)]
pub struct Spend {
    /// The month, as Unix milliseconds: its first instant and the next
    /// month's.
    pub month_start_ms: i64,
    pub next_month_ms: i64,
    pub tenants: std::collections::HashMap<String, Shared>,
    pub keys: std::collections::HashMap<String, Shared>,
    /// Tenants whose soft budget was already reported this month.
    pub alerted: std::collections::HashSet<String>,
}

impl Spend {
    /// Moves to the month of `now_ms`, forgetting the previous month's
    /// spend; within the month it only compares two numbers.
    pub fn roll(&mut self, now_ms: i64) {
        if now_ms < self.month_start_ms || now_ms >= self.next_month_ms {
            let (_, start) = skyweave_core::calendar::month_of_unix_ms(now_ms);
            let (_, next) = skyweave_core::calendar::month_of_unix_ms(start + 32 * 86_400_000);
            *self = Spend { month_start_ms: start, next_month_ms: next, ..Spend::default() };
        }
    }

    /// `YYYY-MM` of the current month, for messages.
    pub fn month(&self) -> String {
        skyweave_core::calendar::date(self.month_start_ms / 86_400_000)[..7].to_string()
    }
}

pub struct DeploymentRuntime {
    pub deployment: Deployment,
    pub provider: Arc<dyn Provider>,
    pub name: Name,
    pub cloud: Name,
    pub region: Name,
    pub model: Name,
    pub metrics: DeploymentMetrics,
    health: Mutex<Health>,
}

struct Health {
    breaker: Breaker,
    capacity: Capacity,
    ttft: Ewma,
    total: Ewma,
}

#[derive(Debug, thiserror::Error)]
#[error("deployment `{deployment}`: {source}")]
pub struct BuildError {
    pub deployment: String,
    #[source]
    pub source: SecretError,
}

impl Gateway {
    /// Builds every provider and resolves every secret; fails on the first
    /// deployment whose secret is missing.
    pub fn new(estate: Estate) -> Result<Arc<Gateway>, BuildError> {
        Gateway::with_keys(estate, None)
    }

    /// As `new`, with the key store that authenticates tenants' requests
    /// (required when the estate has tenants: without it every request is
    /// refused).
    pub fn with_keys(
        estate: Estate,
        keys: Option<crate::keystore::KeyStore>,
    ) -> Result<Arc<Gateway>, BuildError> {
        Gateway::with_state(estate, keys, None)
    }

    /// As `with_keys`, recording every request in `ledger`.
    pub fn with_state(
        estate: Estate,
        keys: Option<crate::keystore::KeyStore>,
        ledger: Option<crate::ledger::Ledger>,
    ) -> Result<Arc<Gateway>, BuildError> {
        let started = Instant::now();
        let estate_tenants = estate.tenants.clone();
        let estate_commitments = estate.commitments.clone();
        let metrics = Metrics::new();
        let mut deployments = Vec::with_capacity(estate.deployments.len());
        let mut file_secrets = Vec::new();
        for deployment in &estate.deployments {
            let (provider, secret) = providers::build(deployment, started)
                .map_err(|source| BuildError { deployment: deployment.name.clone(), source })?;
            if let Some(secret) = secret.filter(|s| matches!(s.source(), SecretSource::File(_))) {
                file_secrets.push(secret);
            }
            let name = Arc::new(deployment.name.clone());
            let cloud = Arc::new(deployment.cloud.clone());
            let model = Arc::new(deployment.model.clone());
            deployments.push(DeploymentRuntime {
                provider,
                metrics: metrics.for_deployment(&model, &name, &cloud),
                name,
                cloud,
                region: Arc::new(deployment.region.clone()),
                model,
                health: Mutex::new(Health {
                    breaker: Breaker::new(estate.breaker),
                    capacity: Capacity::new(deployment.limits, started),
                    ttft: Ewma::new(Duration::from_secs(10)),
                    total: Ewma::new(Duration::from_secs(10)),
                }),
                deployment: deployment.clone(),
            });
        }
        Ok(Arc::new(Gateway {
            estate,
            file_secrets,
            deployments,
            metrics,
            started,
            shutting_down: AtomicBool::new(false),
            keys,
            tenant_capacity: estate_tenant_capacity(&estate_tenants, started),
            key_capacity: Mutex::new(std::collections::HashMap::new()),
            ledger,
            spend: Mutex::new(Spend::default()),
            commitment_spend: Mutex::new(std::collections::HashMap::new()),
            commitment_periods: estate_commitments.iter().map(Commitment::period_days).collect(),
            admin_token: std::sync::OnceLock::new(),
        }))
    }

    /// How the router should weigh a cloud's list prices: its commitment's
    /// current discount applies, and while the cloud is behind its
    /// commitment's straight-line plan, committed spend counts at
    /// `1 - burn_down_weight` of its price (so `cost` and `balanced` routing
    /// prefer it). 1 for clouds without a commitment.
    pub fn commitment_price_factor(&self, cloud: &str, today: i64) -> f64 {
        let Some((commitment, start, end)) = self.commitment_on(cloud, today) else {
            return 1.0;
        };
        let recorded = self
            .commitment_spend
            .lock()
            .expect("commitment spend lock")
            .get(cloud)
            .map_or(0.0, |s| s.total());
        let status = commitment.status_in(start, end, today, recorded);
        let behind = status.ahead_usd < 0.0;
        status.effective_price_factor * if behind { 1.0 - commitment.burn_down_weight } else { 1.0 }
    }

    /// Reads the spend of every other replica (and earlier run) from the
    /// database: this month's per tenant and key, and each commitment's
    /// per cloud over its period. `serve` calls it before listening, then
    /// [`run_background`] every `server.spend_refresh`.
    pub async fn refresh_spend(&self) -> Result<(), crate::store::StoreError> {
        let Some(ledger) = &self.ledger else { return Ok(()) };
        let (month_start_ms, next_month_ms) = {
            let mut spend = self.spend.lock().expect("spend lock");
            spend.roll(unix_ms());
            (spend.month_start_ms, spend.next_month_ms)
        };
        let store = ledger.store();
        let (first_day, last_day) = (month_start_ms / 86_400_000, next_month_ms / 86_400_000 - 1);
        let totals = store.spend_totals(ledger.replica(), first_day, last_day).await?;
        {
            let mut guard = self.spend.lock().expect("spend lock");
            let spend = &mut *guard;
            if spend.month_start_ms == month_start_ms {
                for shared in spend.tenants.values_mut().chain(spend.keys.values_mut()) {
                    shared.others = 0.0;
                }
                for ((scope, name), usd) in totals {
                    let map = match scope.as_str() {
                        "tenant" => &mut spend.tenants,
                        "key" => &mut spend.keys,
                        _ => continue,
                    };
                    map.entry(name).or_default().others = usd;
                }
            }
        }
        for (commitment, period) in self.estate.commitments.iter().zip(&self.commitment_periods) {
            let Some((start, end)) = *period else { continue };
            let totals = store.spend_totals(ledger.replica(), start, end).await?;
            let others = totals
                .get(&("cloud".to_string(), commitment.cloud.clone()))
                .copied()
                .unwrap_or(0.0);
            self.commitment_spend
                .lock()
                .expect("commitment spend lock")
                .entry(commitment.cloud.clone())
                .or_default()
                .others = others;
        }
        Ok(())
    }

    /// The commitment on `cloud` whose period contains day `today`, with
    /// its period in day numbers.
    pub fn commitment_on(&self, cloud: &str, today: i64) -> Option<(&Commitment, i64, i64)> {
        self.estate.commitments.iter().zip(&self.commitment_periods).find_map(|(c, period)| {
            let (start, end) = (*period)?;
            (c.cloud == cloud && start <= today && today <= end).then_some((c, start, end))
        })
    }

    pub fn runtime(&self, id: DeploymentId) -> &DeploymentRuntime {
        &self.deployments[id.0]
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn breaker_state(&self, id: DeploymentId) -> BreakerState {
        self.runtime(id).health.lock().expect("health lock").breaker.state(Instant::now())
    }

    /// Refreshes the gauges that are read rather than counted.
    pub fn refresh_gauges(&self) {
        let now = Instant::now();
        for runtime in &self.deployments {
            let health = runtime.health.lock().expect("health lock");
            let state = match health.breaker.state(now) {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            let in_flight = health.capacity.in_flight();
            drop(health);
            let labels = runtime.labels();
            self.metrics.circuit_state.get_or_create(&labels).set(state);
            self.metrics.in_flight.get_or_create(&labels).set(i64::from(in_flight));
        }
    }

    /// Records the result of an active health probe.
    pub fn record_probe(&self, id: DeploymentId, result: &Result<(), UpstreamError>) {
        let runtime = self.runtime(id);
        let now = Instant::now();
        let mut health = runtime.health.lock().expect("health lock");
        // A probe only detects a dead deployment: a cheap request that
        // succeeds does not prove the real ones do, so success changes nothing.
        if let Err(error) = result {
            if error.kind.counts_against_deployment() {
                health.breaker.on_failure(now, false);
            }
        }
    }
}

impl DeploymentRuntime {
    fn labels(&self) -> DeploymentLabels {
        DeploymentLabels {
            deployment: self.name.clone(),
            cloud: self.cloud.clone(),
            region: self.region.clone(),
        }
    }
}

/// Who is asking, and what they may use.
#[derive(Debug, Clone, Default)]
pub struct CallerScope {
    /// For log lines.
    pub request_id: String,
    pub region: Option<String>,
    pub allowed_clouds: Option<Vec<String>>,
    pub allowed_regions: Option<Vec<String>>,
    /// A deadline shorter than the model's, if the caller gave one.
    pub deadline: Option<Duration>,
}

/// Why a deployment was not used or did not serve.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub deployment: String,
    pub reason: String,
}

#[derive(Debug)]
pub enum DispatchError {
    /// Every eligible deployment was tried or none was eligible.
    NoDeployment {
        refusals: Vec<Refusal>,
        attempts: u32,
        /// Set when every attempt was rate limited: the earliest Retry-After.
        rate_limited: Option<Duration>,
        timed_out: bool,
    },
    /// The request itself was refused upstream; not retried.
    Rejected { error: UpstreamError, deployment: DeploymentId, attempts: u32 },
}

/// A successful attempt: the value, who served it, and the lease that
/// records the final outcome when the response (or stream) ends.
pub struct Served<T> {
    pub value: T,
    pub deployment: DeploymentId,
    pub attempts: u32,
    pub lease: Lease,
    /// Time spent waiting on upstreams (all attempts, and Retry-After waits).
    pub upstream_time: Duration,
}

/// Holds a deployment's capacity reservation for one attempt. Finishing it
/// records the outcome in the breaker, the EWMAs and the metrics; dropping
/// it unfinished (the client went away) releases the capacity and leaves
/// the deployment's health alone.
pub struct Lease {
    gateway: Arc<Gateway>,
    deployment: DeploymentId,
    reservation: Option<Reservation>,
    started: Instant,
    /// This attempt is its breaker's half-open probe.
    probe: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Success {
        /// Streams only: the deployment's own time to its first chunk.
        time_to_first_token: Option<Duration>,
        usage: Option<Usage>,
    },
    Failure(FailureKind),
    /// The caller's own deadline ended the attempt: not the deployment's fault.
    CallerDeadline,
}

impl Lease {
    pub fn deployment(&self) -> DeploymentId {
        self.deployment
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn finish(mut self, outcome: Outcome) {
        let now = Instant::now();
        let runtime = self.gateway.runtime(self.deployment);
        // A failed attempt produced no tokens worth counting.
        let tokens = match outcome {
            Outcome::Success { usage, .. } => usage.map(|u| u.total()),
            Outcome::Failure(_) => Some(0),
            Outcome::CallerDeadline => None,
        };
        {
            let mut health = runtime.health.lock().expect("health lock");
            if let Some(reservation) = self.reservation.take() {
                health.capacity.settle(now, reservation, tokens);
            }
            match outcome {
                Outcome::Success { time_to_first_token, .. } => {
                    health.breaker.on_success(now, self.probe);
                    let elapsed_ms = (now - self.started).as_secs_f64() * 1000.0;
                    match time_to_first_token {
                        Some(ttft) => health.ttft.observe(now, ttft.as_secs_f64() * 1000.0),
                        None => health.total.observe(now, elapsed_ms),
                    }
                }
                Outcome::Failure(kind) if kind.counts_against_deployment() => {
                    health.breaker.on_failure(now, self.probe);
                }
                Outcome::Failure(_) | Outcome::CallerDeadline => {}
            }
        }
        let outcome_label = match outcome {
            Outcome::Success { .. } => {
                runtime.metrics.attempts_ok.inc();
                return;
            }
            Outcome::Failure(kind) => kind.as_str(),
            Outcome::CallerDeadline => "caller_deadline",
        };
        self.gateway
            .metrics
            .attempts
            .get_or_create(&AttemptLabels {
                deployment: runtime.name.clone(),
                cloud: runtime.cloud.clone(),
                outcome: outcome_label,
            })
            .inc();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            let runtime = self.gateway.runtime(self.deployment);
            let mut health = runtime.health.lock().expect("health lock");
            health.capacity.settle(Instant::now(), reservation, None);
        }
    }
}

/// Which timeout bounds one attempt's future.
#[derive(Debug, Clone, Copy)]
pub enum AttemptBound {
    /// The future resolves at the first streamed chunk.
    FirstToken,
    /// The future resolves with the whole response.
    Total,
}

/// Sends a request to the model's deployments until one serves it: the
/// failover loop. `call` starts one attempt on a provider.
pub async fn dispatch<T, F>(
    gateway: &Arc<Gateway>,
    model: &Model,
    scope: &CallerScope,
    estimated_tokens: u32,
    bound: AttemptBound,
    mut call: F,
) -> Result<Served<T>, DispatchError>
where
    F: FnMut(&dyn Provider) -> BoxFuture<'static, Result<T, UpstreamError>>,
{
    let request_start = Instant::now();
    let deadline = request_start + scope.deadline.map_or(model.deadline, |d| d.min(model.deadline));
    // Seeded from the thread's generator: no system call per request.
    let mut rng = SmallRng::seed_from_u64(rand::Rng::gen(&mut rand::thread_rng()));
    let mut tried: Vec<DeploymentId> = Vec::new();
    let mut failed_clouds: Vec<Name> = Vec::new();
    let mut refusals: Vec<Refusal> = Vec::new();
    let mut attempts = 0u32;
    let mut upstream_time = Duration::ZERO;
    let mut rate_limited: Option<Duration> = None;
    let mut only_rate_limited = true;
    let mut timed_out = false;
    let mut paused_for: Option<Duration> = None;
    // The last refusal of a deployment that cannot express the request, and
    // whether every attempt ended that way.
    let mut unsupported: Option<(UpstreamError, DeploymentId)> = None;
    let mut only_unsupported = true;

    loop {
        let now = Instant::now();
        if attempts >= model.max_attempts || now >= deadline {
            if now >= deadline {
                timed_out = true;
            }
            break;
        }
        let pick = pick_deployment(
            gateway,
            model,
            scope,
            estimated_tokens,
            bound,
            &tried,
            &failed_clouds,
            now,
            &mut rng,
        );
        let (id, lease) = match pick {
            Pick::Chosen(id, lease) => (id, lease),
            Pick::Wait(wait) if now + wait < deadline && wait <= model.max_retry_after_wait => {
                let waited = Instant::now();
                tokio::time::sleep(wait).await;
                upstream_time += waited.elapsed();
                continue;
            }
            Pick::Wait(wait) => {
                paused_for = Some(wait);
                break;
            }
            Pick::Nothing => break,
        };
        attempts += 1;
        let runtime = gateway.runtime(id);
        let timeouts = runtime.deployment.timeouts;
        let limit = match bound {
            AttemptBound::FirstToken => timeouts.first_token,
            AttemptBound::Total => timeouts.total,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt_start = Instant::now();
        let result =
            tokio::time::timeout(limit.min(remaining), call(runtime.provider.as_ref())).await;
        upstream_time += attempt_start.elapsed();
        let mut blame_deployment = true;
        let error = match result {
            Ok(Ok(value)) => {
                return Ok(Served { value, deployment: id, attempts, lease, upstream_time });
            }
            Ok(Err(error)) => error,
            Err(_) => {
                // The caller's deadline, not the deployment, cut this short.
                blame_deployment = remaining >= limit;
                let (kind, what) = match bound {
                    _ if remaining < limit => (FailureKind::TotalTimeout, "the request's deadline"),
                    AttemptBound::FirstToken => {
                        (FailureKind::FirstTokenTimeout, "the first-token timeout")
                    }
                    AttemptBound::Total => (FailureKind::TotalTimeout, "the total timeout"),
                };
                UpstreamError::new(
                    kind,
                    format!("no answer within {what} ({} ms)", limit.min(remaining).as_millis()),
                )
            }
        };
        // A deployment that asked to be retried soon stays in play: its
        // pause keeps it out until then, and if nothing else can serve, the
        // loop waits for it.
        let mut retry_later = false;
        if error.kind == FailureKind::RateLimited {
            if let Some(retry_after) = error.retry_after {
                let mut health = runtime.health.lock().expect("health lock");
                health.capacity.pause_until(Instant::now() + retry_after);
                rate_limited = Some(rate_limited.map_or(retry_after, |r| r.min(retry_after)));
                retry_later = retry_after <= model.max_retry_after_wait;
            } else if rate_limited.is_none() {
                rate_limited = Some(Duration::from_secs(1));
            }
        } else {
            only_rate_limited = false;
        }
        if !retry_later {
            tried.push(id);
        }
        lease.finish(if blame_deployment {
            Outcome::Failure(error.kind)
        } else {
            Outcome::CallerDeadline
        });
        if !error.kind.is_retryable() {
            return Err(DispatchError::Rejected { error, deployment: id, attempts });
        }
        if error.kind == FailureKind::Unsupported {
            unsupported = Some((error.clone(), id));
        } else {
            only_unsupported = false;
        }
        tracing::warn!(
            request_id = scope.request_id.as_str(),
            deployment = runtime.name.as_str(),
            cloud = runtime.cloud.as_str(),
            failure = error.kind.as_str(),
            error = %error.message,
            "upstream attempt failed; failing over"
        );
        gateway
            .metrics
            .failovers
            .get_or_create(&FailoverLabels {
                model: runtime.model.clone(),
                from_cloud: runtime.cloud.clone(),
                reason: error.kind.as_str(),
            })
            .inc();
        if !failed_clouds.contains(&runtime.cloud) {
            failed_clouds.push(runtime.cloud.clone());
        }
        refusals.push(Refusal {
            deployment: runtime.deployment.name.clone(),
            reason: error.to_string(),
        });
    }
    // No deployment could express the request: that is the caller's answer.
    if let (true, Some((error, deployment))) = (only_unsupported, unsupported) {
        return Err(DispatchError::Rejected { error, deployment, attempts });
    }
    // Every deployment not tried gets its reason too.
    for refusal in explain(gateway, model, scope, estimated_tokens, &tried, Instant::now()) {
        if !refusals.iter().any(|r| r.deployment == refusal.deployment) {
            refusals.push(refusal);
        }
    }
    let rate_limited = match (attempts, paused_for) {
        // Nothing was tried because every candidate is paused by Retry-After.
        (0, Some(wait)) => Some(wait),
        (0, None) => None,
        _ if only_rate_limited => rate_limited,
        _ => None,
    };
    Err(DispatchError::NoDeployment { refusals, attempts, rate_limited, timed_out })
}

enum Pick {
    Chosen(DeploymentId, Lease),
    /// Nothing is eligible now, but a deployment paused by Retry-After will be then.
    Wait(Duration),
    Nothing,
}

#[allow(clippy::too_many_arguments)]
fn pick_deployment(
    gateway: &Arc<Gateway>,
    model: &Model,
    scope: &CallerScope,
    estimated_tokens: u32,
    bound: AttemptBound,
    tried: &[DeploymentId],
    failed_clouds: &[Name],
    now: Instant,
    rng: &mut SmallRng,
) -> Pick {
    let mut candidates: Vec<Candidate<'_>> = Vec::with_capacity(model.deployments.len());
    // Commitments weigh prices by the day; no clock read without them.
    let today = (!gateway.estate.commitments.is_empty()).then(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400) as i64
    });
    // Deployments whose breaker is open, with their last failure.
    let mut open: Vec<(DeploymentId, Option<Instant>)> = Vec::new();
    let mut other_refusals = 0usize;
    let mut shortest_pause: Option<Duration> = None;
    for &id in &model.deployments {
        if tried.contains(&id) {
            continue;
        }
        let runtime = gateway.runtime(id);
        // The model's contract rule holds on every attempt, whatever the
        // estate's deployments (validation already refuses contradictions).
        if !model.allows_cloud(&runtime.deployment.cloud)
            || !scope_allows(scope, &runtime.deployment)
        {
            continue;
        }
        let health = runtime.health.lock().expect("health lock");
        if let Admission::Denied { .. } = health.breaker.check(now) {
            open.push((id, health.breaker.last_failure()));
            continue;
        }
        if let Err(refusal) = health.capacity.check(now, estimated_tokens) {
            other_refusals += 1;
            if let CapacityRefusal::Paused { retry_in } = refusal {
                shortest_pause = Some(shortest_pause.map_or(retry_in, |p| p.min(retry_in)));
            }
            continue;
        }
        let price_factor = today
            .map_or(1.0, |today| gateway.commitment_price_factor(&runtime.deployment.cloud, today));
        candidates.push(Candidate {
            id,
            cloud: runtime.cloud.as_str(),
            priority: runtime.deployment.priority,
            weight: runtime.deployment.weight,
            price_per_mtok: runtime.deployment.price.blended_per_mtok() * price_factor,
            latency_ewma_ms: match bound {
                AttemptBound::FirstToken => health.ttft.get(now).or(health.total.get(now)),
                AttemptBound::Total => health.total.get(now).or(health.ttft.get(now)),
            },
            rtt_ms: scope
                .region
                .as_deref()
                .or(gateway.estate.server.default_caller_region.as_deref())
                .and_then(|caller| {
                    gateway.estate.proximity.rtt_ms(caller, &runtime.deployment.region)
                }),
            in_flight: health.capacity.in_flight(),
        });
    }
    let failed: Vec<&str> = failed_clouds.iter().map(|c| c.as_str()).collect();
    while let Some(index) = routing::choose(model.strategy, &candidates, &failed, rng) {
        let id = candidates[index].id;
        if let Some(lease) = try_lease(gateway, id, estimated_tokens, now, false) {
            return Pick::Chosen(id, lease);
        }
        // Lost a race for the last slot: try the others.
        candidates.swap_remove(index);
    }
    // Every deployment still in play has its breaker open: rather than fail
    // without trying, probe the one that failed longest ago.
    if other_refusals == 0 && !open.is_empty() {
        open.sort_by_key(|(_, last_failure)| *last_failure);
        for (id, _) in open {
            if let Some(lease) = try_lease(gateway, id, estimated_tokens, now, true) {
                return Pick::Chosen(id, lease);
            }
        }
    }
    match shortest_pause {
        Some(pause) => Pick::Wait(pause),
        None => Pick::Nothing,
    }
}

fn try_lease(
    gateway: &Arc<Gateway>,
    id: DeploymentId,
    estimated_tokens: u32,
    now: Instant,
    force: bool,
) -> Option<Lease> {
    let runtime = gateway.runtime(id);
    let mut health = runtime.health.lock().expect("health lock");
    if health.capacity.check(now, estimated_tokens).is_err() {
        return None;
    }
    let probe = if force {
        if !health.breaker.force_probe(now) {
            return None;
        }
        true
    } else {
        match health.breaker.on_attempt(now) {
            Admission::Allowed => false,
            Admission::Probe => true,
            Admission::Denied { .. } => return None,
        }
    };
    let reservation = health.capacity.reserve(now, estimated_tokens).ok()?;
    Some(Lease {
        gateway: gateway.clone(),
        deployment: id,
        reservation: Some(reservation),
        started: now,
        probe,
    })
}

fn scope_allows(scope: &CallerScope, deployment: &Deployment) -> bool {
    let cloud_ok = scope
        .allowed_clouds
        .as_ref()
        .is_none_or(|clouds| clouds.iter().any(|c| c == &deployment.cloud));
    let region_ok = scope
        .allowed_regions
        .as_ref()
        .is_none_or(|regions| regions.iter().any(|r| r == &deployment.region));
    cloud_ok && region_ok
}

/// The reason each untried deployment of the model cannot serve now.
fn explain(
    gateway: &Arc<Gateway>,
    model: &Model,
    scope: &CallerScope,
    estimated_tokens: u32,
    tried: &[DeploymentId],
    now: Instant,
) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    for &id in &model.deployments {
        if tried.contains(&id) {
            continue;
        }
        let runtime = gateway.runtime(id);
        let deployment = &runtime.deployment;
        let reason = if !model.allows_cloud(&deployment.cloud) {
            format!(
                "model `{}` may not run on cloud `{}` (allowed_clouds)",
                model.name, deployment.cloud
            )
        } else if !scope_allows(scope, deployment) {
            format!(
                "not allowed for this caller (cloud `{}`, region `{}` outside x-skyweave-allowed-clouds/regions)",
                deployment.cloud, deployment.region
            )
        } else {
            let health = runtime.health.lock().expect("health lock");
            match (health.breaker.check(now), health.capacity.check(now, estimated_tokens)) {
                (Admission::Denied { retry_in }, _) => {
                    format!(
                        "circuit open after repeated failures, next probe in {} ms",
                        retry_in.as_millis()
                    )
                }
                (_, Err(refusal)) => refusal.to_string(),
                _ => "not tried: the request's attempt budget or deadline ran out".to_string(),
            }
        };
        refusals.push(Refusal { deployment: deployment.name.clone(), reason });
    }
    refusals
}

/// How often file-based secrets are re-read.
pub const SECRET_REFRESH: Duration = Duration::from_secs(30);

/// Runs the background work until `stop` resolves: active health probes for
/// the deployments that configure them, and re-reading file-based secrets.
/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn run_background(gateway: Arc<Gateway>, stop: impl Future<Output = ()>) {
    let mut tasks = Vec::new();
    if gateway.ledger.is_some() {
        let gateway = gateway.clone();
        tasks.push(tokio::spawn(async move {
            let mut interval = tokio::time::interval(gateway.estate.server.spend_refresh);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                if let Err(error) = gateway.refresh_spend().await {
                    tracing::warn!(
                        error = %error,
                        "cannot read the other replicas' spend; budgets count this replica's \
                         and the last spend read"
                    );
                }
            }
        }));
    }
    if !gateway.file_secrets.is_empty() {
        let secrets = gateway.file_secrets.clone();
        tasks.push(tokio::spawn(async move {
            let mut interval = tokio::time::interval(SECRET_REFRESH);
            interval.tick().await;
            loop {
                interval.tick().await;
                for secret in &secrets {
                    match secret.refresh().await {
                        Ok(true) => tracing::info!(source = %secret.source(), "secret reloaded"),
                        Ok(false) => {}
                        Err(error) => tracing::warn!(
                            error = %error,
                            "secret reload failed; keeping the previous value"
                        ),
                    }
                }
            }
        }));
    }
    for runtime in &gateway.deployments {
        let Some(probe) = runtime.deployment.probe else {
            continue;
        };
        let gateway = gateway.clone();
        let id = runtime.deployment.id;
        tasks.push(tokio::spawn(async move {
            let mut interval = tokio::time::interval(probe.interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let runtime = gateway.runtime(id);
                let timeout = runtime.deployment.timeouts.first_token;
                let result = match tokio::time::timeout(timeout, runtime.provider.probe()).await {
                    Ok(result) => result,
                    Err(_) => Err(UpstreamError::new(FailureKind::FirstTokenTimeout, "probe timed out")),
                };
                if let Err(error) = &result {
                    tracing::warn!(deployment = runtime.name.as_str(), error = %error, "health probe failed");
                }
                gateway.record_probe(id, &result);
            }
        }));
    }
    stop.await;
    for task in tasks {
        task.abort();
    }
}

fn estate_tenant_capacity(
    tenants: &[skyweave_core::tenant::Tenant],
    epoch: Instant,
) -> std::collections::HashMap<String, Mutex<Capacity>> {
    tenants
        .iter()
        .map(|t| {
            let limits = skyweave_core::estate::Limits {
                requests_per_minute: t.rpm,
                tokens_per_minute: t.tpm,
                max_concurrency: t.max_concurrency,
            };
            (t.name.clone(), Mutex::new(Capacity::new(limits, epoch)))
        })
        .collect()
}
