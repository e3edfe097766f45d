//! The OpenAI-compatible HTTP API.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use skyweave_core::estate::Model;
use skyweave_core::failure::FailureKind;

use crate::api_error::ApiError;
use crate::body::{measure, BodyError, Measured, RequestBody, Shape};
use crate::gateway::unix_ms;
use crate::gateway::{
    dispatch, AttemptBound, CallerScope, DispatchError, Gateway, Lease, Outcome, Served,
};
use crate::metrics::RequestLabels;
use crate::providers::{
    ChatRequest, ChatResponse, ChunkStream, EmbeddingsRequest, StreamChunk, UpstreamError, Usage,
};

pub const HEADER_DEPLOYMENT: &str = "x-skyweave-deployment";
pub const HEADER_CLOUD: &str = "x-skyweave-cloud";
pub const HEADER_REGION: &str = "x-skyweave-region";
pub const HEADER_ATTEMPTS: &str = "x-skyweave-attempts";
pub const HEADER_SIMULATED: &str = "x-skyweave-simulated";
pub const HEADER_REQUEST_ID: &str = "x-request-id";
pub const HEADER_CALLER_REGION: &str = "x-skyweave-caller-region";
pub const HEADER_ALLOWED_CLOUDS: &str = "x-skyweave-allowed-clouds";
pub const HEADER_ALLOWED_REGIONS: &str = "x-skyweave-allowed-regions";
pub const HEADER_DEADLINE_MS: &str = "x-skyweave-deadline-ms";

/// The header names above, parsed at compile time: a `&str` name is parsed
/// and checked on every use.
mod name {
    use axum::http::HeaderName;
    pub(super) const DEPLOYMENT: HeaderName = HeaderName::from_static(super::HEADER_DEPLOYMENT);
    pub(super) const CLOUD: HeaderName = HeaderName::from_static(super::HEADER_CLOUD);
    pub(super) const REGION: HeaderName = HeaderName::from_static(super::HEADER_REGION);
    pub(super) const ATTEMPTS: HeaderName = HeaderName::from_static(super::HEADER_ATTEMPTS);
    pub(super) const SIMULATED: HeaderName = HeaderName::from_static(super::HEADER_SIMULATED);
    pub(super) const REQUEST_ID: HeaderName = HeaderName::from_static(super::HEADER_REQUEST_ID);
    pub(super) const CALLER_REGION: HeaderName =
        HeaderName::from_static(super::HEADER_CALLER_REGION);
    pub(super) const ALLOWED_CLOUDS: HeaderName =
        HeaderName::from_static(super::HEADER_ALLOWED_CLOUDS);
    pub(super) const ALLOWED_REGIONS: HeaderName =
        HeaderName::from_static(super::HEADER_ALLOWED_REGIONS);
    pub(super) const DEADLINE_MS: HeaderName = HeaderName::from_static(super::HEADER_DEADLINE_MS);
}

/// Output tokens assumed for capacity accounting when the request sets no maximum.
const DEFAULT_OUTPUT_ESTIMATE: u32 = 256;

pub fn router(gateway: Arc<Gateway>) -> Router {
    let admin_here = gateway.estate.admin.as_ref().is_some_and(|admin| admin.listen.is_none());
    let base = if admin_here { crate::admin::routes(gateway.clone()) } else { Router::new() };
    base.route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(ensure_request_id))
        .with_state(gateway)
}

/// Every response carries a request id: the API handlers set the one they
/// logged; the others (models, health, metrics, 404/405) get a fresh one.
async fn ensure_request_id(mut response: Response) -> Response {
    if !response.headers().contains_key(&name::REQUEST_ID) {
        response.headers_mut().insert(name::REQUEST_ID, request_id(&HeaderMap::new()));
    }
    response
}

/// Serves until `shutdown` resolves, then stops accepting and waits for
/// in-flight requests and streams to finish.
///
/// HTTP/1.1 only, straight on hyper: the auto-detecting server (HTTP/1.1
/// or cleartext HTTP/2) first reads 24 bytes to look for HTTP/2's preface,
/// after which hyper's next read doubles every connection's read buffer to
/// 16 KiB; 8 MiB more with 1,000 streams open. No OpenAI SDK speaks
/// cleartext HTTP/2.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let front = Front { router: router(gateway.clone()), gateway: gateway.clone() };
    let mut http = hyper::server::conn::http1::Builder::new();
    // A request's head must arrive within 75 s of the connection becoming
    // ready for it, which also closes keep-alive connections idle that long
    // (nginx's keepalive_timeout; HTTP clients' pools drop theirs sooner).
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(Duration::from_secs(75));
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(TokioIo::new(stream), front.clone());
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            // A client that goes away mid-request is not the server's error.
            let _ = connection.await;
        });
    }
    drop(listener);
    gateway.begin_shutdown();
    connections.shutdown().await;
    Ok(())
}

/// What the listener serves: `POST /v1/chat/completions` and
/// `POST /v1/embeddings`, which carry the traffic, go straight to their
/// handlers; every other request goes through the [`router`], whose own
/// routes for these two paths answer the same. Measured on the benchmark's
/// small completions, axum's routing, header-map extraction (a copy of every
/// header) and middleware layers cost ~4 µs of CPU per request, a fifth of
/// what proxying one costs.
#[derive(Clone)]
struct Front {
    gateway: Arc<Gateway>,
    router: Router,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let request = request.map(Body::new);
        if request.method() == axum::http::Method::POST {
            let chat = match request.uri().path() {
                "/v1/chat/completions" => Some(true),
                "/v1/embeddings" => Some(false),
                _ => None,
            };
            if let Some(chat) = chat {
                let gateway = State(self.gateway.clone());
                let (parts, body) = request.into_parts();
                return Box::pin(async move {
                    let response = if chat {
                        chat_completions(gateway, parts.headers, body).await
                    } else {
                        embeddings(gateway, parts.headers, body).await
                    };
                    Ok(ensure_request_id(response).await)
                });
            }
        }
        let mut router = self.router.clone();
        Box::pin(async move { tower_service::Service::call(&mut router, request).await })
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown path: this gateway serves /v1/chat/completions, /v1/embeddings and /v1/models",
    )
    .with_code("not_found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method not allowed on this path",
    )
    .with_code("method_not_allowed")
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    gateway.refresh_gauges();
    let mut response = gateway.metrics.encode().into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    if gateway.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let mut unavailable = Vec::new();
    for model in &gateway.estate.models {
        let any_closed = model
            .deployments
            .iter()
            .any(|id| gateway.breaker_state(*id) != skyweave_core::health::BreakerState::Open);
        if !any_closed {
            unavailable.push(model.name.clone());
        }
    }
    if unavailable.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = format!("every deployment is open-circuited for: {}\n", unavailable.join(", "));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn models(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let grant = if gateway.estate.tenants.is_empty() {
        None
    } else {
        match authorize(&gateway, &headers, None).await {
            Ok(grant) => Some(grant),
            Err(error) => {
                audit_refusal(&gateway, &headers, "/v1/models", &error);
                return error.into_response();
            }
        }
    };
    let tenant =
        grant.as_ref().and_then(|g| gateway.estate.tenants.iter().find(|t| t.name == g.tenant));
    let data: Vec<Value> = gateway
        .estate
        .models
        .iter()
        .filter(|model| tenant.is_none_or(|t| t.allows_model(&model.name)))
        .map(|model| {
            let clouds: std::collections::BTreeSet<&str> = model
                .deployments
                .iter()
                .map(|id| gateway.estate.deployment(*id).cloud.as_str())
                .collect();
            json!({
                "id": model.name,
                "object": "model",
                "created": 0,
                "owned_by": "skyweave",
                "clouds": clouds,
            })
        })
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

/// What every handler needs before dispatching.
struct Incoming {
    received: Instant,
    request_id: HeaderValue,
    body: Arc<RequestBody>,
    model: Model,
    scope: CallerScope,
    /// The authenticated key, when the estate has tenants.
    grant: Option<Grant>,
    /// The tenant's and key's capacity held for this request.
    admission: Option<Admission>,
}

async fn read_request(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Body,
    required: &str,
) -> Result<Incoming, ApiError> {
    let received = Instant::now();
    let request_id = request_id(headers);
    let limit = gateway.estate.server.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than this gateway's limit of {limit} bytes (server.max_body_bytes)"),
        )
        .with_code("request_too_large")
    };
    if headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(error) => {
            return Err(ApiError::invalid_request(
                format!("the request body could not be read: {error}"),
                None,
            ))
        }
    };
    let body = RequestBody::parse(bytes).map_err(|error| {
        let api = ApiError::invalid_request(error.to_string(), None);
        match error {
            BodyError::NotJson(_) => api.with_code("invalid_json"),
            BodyError::NotObject => api,
        }
    })?;
    // The name borrows the body, which moves into `Incoming` below.
    let model = {
        let name = match body.raw("model") {
            None => return Err(missing("model")),
            Some(_) => body.str("model").filter(|name| !name.is_empty()).ok_or_else(|| {
                ApiError::invalid_request("`model` must be a non-empty string", Some("model"))
            })?,
        };
        if body.raw(required).is_none() {
            return Err(missing(required));
        }
        let Some(model) = gateway.estate.model(&name) else {
            let known: Vec<&str> = gateway.estate.models.iter().map(|m| m.name.as_str()).collect();
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "the model `{name}` does not exist on this gateway; it serves: {}",
                    known.join(", ")
                ),
            )
            .with_code("model_not_found")
            .with_param("model"));
        };
        model
    };
    let mut scope = caller_scope(headers, &request_id)?;
    let mut granted = None;
    if !gateway.estate.tenants.is_empty() {
        let grant = authorize(gateway, headers, Some(model))
            .await
            .inspect_err(|error| audit_refusal(gateway, headers, &model.name, error))?;
        scope.allowed_clouds = intersect(scope.allowed_clouds.take(), grant.clouds.clone());
        scope.allowed_regions = intersect(scope.allowed_regions.take(), grant.regions.clone());
        let within = |d: &skyweave_core::estate::Deployment| {
            scope.allowed_clouds.as_ref().is_none_or(|c| c.contains(&d.cloud))
                && scope.allowed_regions.as_ref().is_none_or(|r| r.contains(&d.region))
        };
        if !model.deployments.iter().any(|&id| within(gateway.estate.deployment(id))) {
            let error = ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                format!(
                    "no deployment of `{}` is within the clouds and regions tenant `{}` (key \
                     `{}`) may use",
                    model.name, grant.tenant, grant.key_id
                ),
            )
            .with_code("region_not_allowed");
            audit_refusal(gateway, headers, &model.name, &error);
            return Err(error);
        }
        granted = Some(grant);
    }
    Ok(Incoming {
        received,
        request_id,
        body: Arc::new(body),
        model: model.clone(),
        scope,
        grant: granted,
        admission: None,
    })
}

use skyweave_core::capacity::{Capacity, CapacityRefusal, Reservation};

/// Capacity held for one request against its tenant's and key's limits;
/// settled with the real usage by `finish`, or with the estimate if the
/// request ends otherwise (never under-counted).
struct Admission {
    gateway: Arc<Gateway>,
    tenant: String,
    key: String,
    tenant_reservation: Option<Reservation>,
    key_reservation: Option<Reservation>,
}

impl Admission {
    fn finish(mut self, tokens: Option<u64>) {
        self.settle(tokens);
    }

    fn settle(&mut self, tokens: Option<u64>) {
        let now = Instant::now();
        if let Some(reservation) = self.tenant_reservation.take() {
            if let Some(capacity) = self.gateway.tenant_capacity.get(&self.tenant) {
                capacity.lock().expect("tenant capacity lock").settle(now, reservation, tokens);
            }
        }
        if let Some(reservation) = self.key_reservation.take() {
            let mut keys = self.gateway.key_capacity.lock().expect("key capacity lock");
            if let Some(capacity) = keys.get_mut(&self.key) {
                capacity.settle(now, reservation, tokens);
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.settle(None);
    }
}

/// Refuses a request (402) once its tenant's hard monthly budget or its
/// key's budget is spent. Spend counts requests already recorded: requests
/// in flight when the budget is reached still complete.
fn check_budgets(gateway: &Gateway, grant: &Grant) -> Result<(), ApiError> {
    let mut spend = gateway.spend.lock().expect("spend lock");
    spend.roll(unix_ms());
    let over = |who: String, spent: f64, budget: f64| {
        let month = spend.month();
        let next = skyweave_core::calendar::date(spend.next_month_ms / 86_400_000);
        ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_quota",
            format!(
                "{who} has spent {spent:.2} USD of its {budget:.2} USD budget for {month}; \
                 requests are refused until {next}"
            ),
        )
        .with_code("budget_exceeded")
    };
    if let Some(budget) = gateway
        .estate
        .tenants
        .iter()
        .find(|t| t.name == grant.tenant)
        .and_then(|t| t.budget)
        .filter(|b| b.hard)
    {
        let spent = spend.tenants.get(&grant.tenant).map_or(0.0, |s| s.total());
        if spent >= budget.monthly_usd {
            return Err(over(format!("tenant `{}`", grant.tenant), spent, budget.monthly_usd));
        }
    }
    if let Some(budget) = grant.budget_usd {
        let spent = spend.keys.get(&grant.key_id).map_or(0.0, |s| s.total());
        if spent >= budget {
            return Err(over(format!("API key `{}`", grant.key_id), spent, budget));
        }
    }
    Ok(())
}

/// Reserves the request against its tenant's and key's limits; 429 with
/// Retry-After when either is full.
fn admit(
    gateway: &Arc<Gateway>,
    grant: &Grant,
    estimated_tokens: u32,
) -> Result<Admission, ApiError> {
    admit_inner(gateway, grant, estimated_tokens).inspect_err(|error| {
        crate::admin::audit(
            gateway,
            &grant.key_id,
            "request.refused",
            &grant.tenant,
            error.status.as_u16(),
            &error.message,
        )
    })
}

fn admit_inner(
    gateway: &Arc<Gateway>,
    grant: &Grant,
    estimated_tokens: u32,
) -> Result<Admission, ApiError> {
    let now = Instant::now();
    let refused = |who: String, refusal: CapacityRefusal, retry_in: Duration| {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("{who} is {refusal}; retry after {} s", retry_in.as_secs_f64().ceil()),
        )
        .with_code("rate_limit_exceeded");
        error.retry_after_secs = Some(retry_in.as_secs_f64().ceil().clamp(1.0, 86_400.0) as u32);
        error
    };
    check_budgets(gateway, grant)?;
    let mut admission = Admission {
        gateway: gateway.clone(),
        tenant: grant.tenant.clone(),
        key: grant.key_id.clone(),
        tenant_reservation: None,
        key_reservation: None,
    };
    if let Some(capacity) = gateway.tenant_capacity.get(&grant.tenant) {
        let mut capacity = capacity.lock().expect("tenant capacity lock");
        match capacity.reserve(now, estimated_tokens) {
            Ok(reservation) => admission.tenant_reservation = Some(reservation),
            Err(refusal) => {
                let retry_in = capacity.retry_in(now, refusal);
                return Err(refused(format!("tenant `{}`", grant.tenant), refusal, retry_in));
            }
        }
    }
    if grant.rpm.is_some() || grant.tpm.is_some() {
        let mut keys = gateway.key_capacity.lock().expect("key capacity lock");
        let capacity = keys.entry(grant.key_id.clone()).or_insert_with(|| {
            let limits = skyweave_core::estate::Limits {
                requests_per_minute: grant.rpm,
                tokens_per_minute: grant.tpm,
                max_concurrency: None,
            };
            Capacity::new(limits, gateway.started)
        });
        match capacity.reserve(now, estimated_tokens) {
            Ok(reservation) => admission.key_reservation = Some(reservation),
            Err(refusal) => {
                let retry_in = capacity.retry_in(now, refusal);
                // `admission` drops here and returns the tenant's slot.
                return Err(refused(format!("API key `{}`", grant.key_id), refusal, retry_in));
            }
        }
    }
    Ok(admission)
}

/// Writes a refused request to the audit log: who (the key id presented,
/// or `-`), what it asked for and why it was refused.
fn audit_refusal(gateway: &Gateway, headers: &HeaderMap, target: &str, error: &ApiError) {
    let actor = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| skyweave_core::keys::parse(token.trim()).ok())
        .map_or("-".to_string(), |(id, _)| id.to_string());
    crate::admin::audit(
        gateway,
        &actor,
        "request.refused",
        target,
        error.status.as_u16(),
        &error.message,
    );
}

/// What an authenticated key may use.
struct Grant {
    tenant: String,
    key_id: String,
    clouds: Option<Vec<String>>,
    regions: Option<Vec<String>>,
    rpm: Option<u32>,
    tpm: Option<u32>,
    budget_usd: Option<f64>,
}

/// `None` is "no restriction".
fn intersect(a: Option<Vec<String>>, b: Option<Vec<String>>) -> Option<Vec<String>> {
    match (a, b) {
        (None, b) => b,
        (a, None) => a,
        (Some(a), Some(b)) => Some(a.into_iter().filter(|x| b.contains(x)).collect()),
    }
}

/// Checks the request's API key against the key store and the tenant's
/// and key's rights (for `model`, if given).
async fn authorize(
    gateway: &Gateway,
    headers: &HeaderMap,
    model: Option<&Model>,
) -> Result<Grant, ApiError> {
    use skyweave_core::keys;
    let unauthorized = |message: String| {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    };
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(unauthorized(
            "no API key: send `Authorization: Bearer sk-sw-...` (create one with `skyweave keys \
             create`)"
                .into(),
        ));
    };
    let text = value.to_str().unwrap_or_default();
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <key>`".into()))?;
    let (id, secret) = keys::parse(token)
        .map_err(|error| unauthorized(format!("the API key is malformed: {error}")))?;
    let Some(store) = &gateway.keys else {
        return Err(unauthorized("this gateway has no key database".into()));
    };
    let record = store.lookup(id).await.map_err(|error| {
        tracing::error!(error = %error, "key database lookup failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the key database cannot be read; try again",
        )
    })?;
    // Unknown id and wrong secret read the same, so that ids cannot be
    // probed.
    let Some(record) = record.filter(|record| keys::verify(secret, &record.hash)) else {
        return Err(unauthorized(format!("unknown API key `sk-sw-{id}-...`")));
    };
    if record.revoked_unix.is_some() {
        return Err(unauthorized(format!("API key `{id}` was revoked")));
    }
    if record.expires_unix.is_some_and(|at| crate::keystore::now_unix() >= at) {
        return Err(unauthorized(format!("API key `{id}` has expired")));
    }
    let forbidden = |message: String, code: &str| {
        ApiError::new(StatusCode::FORBIDDEN, "permission_error", message).with_code(code)
    };
    let Some(tenant) = gateway.estate.tenants.iter().find(|t| t.name == record.tenant) else {
        return Err(forbidden(
            format!(
                "API key `{id}` belongs to tenant `{}`, which this estate no longer has",
                record.tenant
            ),
            "tenant_not_found",
        ));
    };
    if let Some(model) = model {
        let key_allows =
            record.models.as_ref().is_none_or(|models| models.iter().any(|m| m == &model.name));
        if !tenant.allows_model(&model.name) || !key_allows {
            return Err(forbidden(
                format!(
                    "API key `{id}` (tenant `{}`) may not use model `{}`",
                    tenant.name, model.name
                ),
                "model_not_allowed",
            ));
        }
    }
    Ok(Grant {
        tenant: tenant.name.clone(),
        key_id: record.id.clone(),
        clouds: intersect(tenant.clouds.clone(), record.clouds.clone()),
        regions: intersect(tenant.regions.clone(), record.regions.clone()),
        rpm: record.rpm,
        tpm: record.tpm,
        budget_usd: record.budget_usd,
    })
}

fn missing(field: &str) -> ApiError {
    ApiError::invalid_request(format!("missing required parameter: `{field}`"), Some(field))
        .with_code("missing_required_parameter")
}

fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(&name::REQUEST_ID) {
        let valid = given.len() <= 128 && given.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if valid && !given.is_empty() {
            return given.clone();
        }
    }
    // 128 random bits from the thread's generator: no system call per request.
    let (high, low): (u64, u64) = {
        let mut rng = rand::thread_rng();
        (rand::Rng::gen(&mut rng), rand::Rng::gen(&mut rng))
    };
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = *b"req_00000000000000000000000000000000";
    for (i, byte) in high.to_be_bytes().into_iter().chain(low.to_be_bytes()).enumerate() {
        id[4 + 2 * i] = HEX[usize::from(byte >> 4)];
        id[5 + 2 * i] = HEX[usize::from(byte & 15)];
    }
    HeaderValue::from_bytes(&id).expect("a hex id is a valid header value")
}

fn caller_scope(headers: &HeaderMap, request_id: &HeaderValue) -> Result<CallerScope, ApiError> {
    let text = |name: &HeaderName| -> Result<Option<String>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(value) => match value.to_str() {
                Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
                _ => Err(ApiError::invalid_request(
                    format!("header `{name}` must be non-empty ASCII text"),
                    Some(name.as_str()),
                )),
            },
        }
    };
    let list = |name: &HeaderName| -> Result<Option<Vec<String>>, ApiError> {
        Ok(text(name)?.map(|text| {
            text.split(',')
                .map(|item| item.trim().to_string())
                .filter(|item| !item.is_empty())
                .collect()
        }))
    };
    let deadline = match text(&name::DEADLINE_MS)? {
        Some(ms) => match ms.parse::<u64>() {
            Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
            _ => {
                return Err(ApiError::invalid_request(
                    format!(
                        "header `{HEADER_DEADLINE_MS}` must be a positive number of milliseconds"
                    ),
                    Some(HEADER_DEADLINE_MS),
                ))
            }
        },
        None => None,
    };
    Ok(CallerScope {
        request_id: request_id.to_str().unwrap_or_default().to_string(),
        region: text(&name::CALLER_REGION)?,
        allowed_clouds: list(&name::ALLOWED_CLOUDS)?,
        allowed_regions: list(&name::ALLOWED_REGIONS)?,
        deadline,
    })
}

/// A rough token count for capacity accounting before the upstream reports
/// the real one: about four characters per token (see [`Measured::chars`]
/// for what counts).
fn estimate_prompt_tokens(measured: &Measured) -> u32 {
    u32::try_from(measured.chars / 4 + 1).unwrap_or(u32::MAX)
}

fn output_estimate(body: &RequestBody) -> u32 {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|key| body.u64(key))
        .map_or(DEFAULT_OUTPUT_ESTIMATE, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// Walks a member the gateway reads (its JSON was checked on arrival, so
/// only nesting deeper than serde_json follows can fail here).
fn measure_member(body: &RequestBody, key: &str) -> Result<Option<Measured>, ApiError> {
    body.raw(key).map(measure).transpose().map_err(|error| {
        ApiError::invalid_request(format!("`{key}` cannot be read: {error}"), Some(key))
    })
}

/// The response to a failed dispatch.
fn dispatch_error(gateway: &Gateway, model: &Model, error: DispatchError) -> (ApiError, u32) {
    match error {
        DispatchError::Rejected { error, deployment, attempts } => {
            let runtime = gateway.runtime(deployment);
            let status = error
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| s.is_client_error())
                .unwrap_or(StatusCode::BAD_REQUEST);
            let mut api_error =
                ApiError::new(status, "invalid_request_error", error.message.clone());
            // The upstream's error goes back as it was; the deployment that
            // answered is named in the x-skyweave-* headers.
            if let Some(Value::Object(object)) = &error.client_error {
                if let Some(kind) = object.get("type").and_then(Value::as_str) {
                    api_error.kind = kind.to_string().into();
                }
                api_error.message = object
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or(&error.message)
                    .to_string();
                api_error.param = object.get("param").and_then(Value::as_str).map(Box::from);
                api_error.code = object.get("code").and_then(Value::as_str).map(Box::from);
                if let Some(inner) = object.get("innererror") {
                    api_error.extra = Some(Box::new(json!({ "innererror": inner })));
                }
            }
            if error.kind == FailureKind::ContentFiltered {
                api_error.code = Some("content_filter".into());
            }
            api_error.served_by = Some(Box::new([
                runtime.name.to_string(),
                runtime.cloud.to_string(),
                runtime.region.to_string(),
            ]));
            (api_error, attempts)
        }
        DispatchError::NoDeployment { refusals, attempts, rate_limited, timed_out } => {
            let reasons: Vec<Value> = refusals
                .iter()
                .map(|r| json!({ "deployment": r.deployment, "reason": r.reason }))
                .collect();
            let summary: Vec<String> =
                refusals.iter().map(|r| format!("{}: {}", r.deployment, r.reason)).collect();
            let mut api_error = if let Some(retry_after) = rate_limited {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!(
                        "every deployment of `{}` is rate limited upstream; retry after {} s. {}",
                        model.name,
                        retry_after.as_secs_f64().ceil(),
                        summary.join("; ")
                    ),
                )
                .with_code("rate_limit_exceeded");
                e.retry_after_secs =
                    Some(retry_after.as_secs_f64().ceil().clamp(1.0, 86_400.0) as u32);
                e
            } else if timed_out {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout_error",
                    format!(
                        "the request's deadline passed before a deployment of `{}` answered after {attempts} attempt(s). {}",
                        model.name,
                        summary.join("; ")
                    ),
                )
                .with_code("deadline_exceeded")
            } else {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable_error",
                    format!(
                        "no deployment of `{}` could serve the request ({attempts} attempt(s)): {}",
                        model.name,
                        if summary.is_empty() {
                            "no deployment is eligible".to_string()
                        } else {
                            summary.join("; ")
                        }
                    ),
                )
                .with_code("no_deployment_available")
            };
            api_error.extra = Some(Box::new(json!({ "deployments": reasons })));
            (api_error, attempts)
        }
    }
}

fn header(name: HeaderName, value: &str) -> (HeaderName, HeaderValue) {
    (name, HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid")))
}

fn stamp_served<T>(gateway: &Gateway, response: &mut Response, served: &Served<T>) {
    let runtime = gateway.runtime(served.deployment);
    let headers = response.headers_mut();
    for (name, value) in [
        header(name::DEPLOYMENT, &runtime.name),
        header(name::CLOUD, &runtime.cloud),
        header(name::REGION, &runtime.region),
    ] {
        headers.insert(name, value);
    }
    headers.insert(name::ATTEMPTS, HeaderValue::from(served.attempts));
    if runtime.provider.is_simulated() {
        headers.insert(name::SIMULATED, HeaderValue::from_static("true"));
    }
}

fn error_response(
    gateway: &Gateway,
    incoming: Option<&Incoming>,
    request_id: HeaderValue,
    error: ApiError,
    attempts: u32,
) -> Response {
    let status = error.status;
    if let Some(incoming) = incoming {
        gateway
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                model: Arc::new(incoming.model.name.clone()),
                deployment: Arc::new(String::new()),
                cloud: Arc::new(String::new()),
                status: status.as_u16(),
            })
            .inc();
        tracing::info!(
            request_id = request_id.to_str().unwrap_or(""),
            model = incoming.model.name.as_str(),
            status = status.as_u16(),
            attempts,
            error = error.message.as_str(),
            "request failed"
        );
        record_ledger(
            gateway,
            &request_id,
            incoming.grant.as_ref(),
            &incoming.model.name,
            None,
            None,
            status.as_u16(),
            attempts,
            incoming.received.elapsed(),
            None,
        );
    }
    let mut response = error.into_response();
    response.headers_mut().insert(name::REQUEST_ID, request_id);
    response.headers_mut().insert(name::ATTEMPTS, HeaderValue::from(attempts));
    response
}

/// Adds a request's cost to its tenant's and key's spend this month, and
/// reports a soft budget the first time it is reached.
fn add_spend(gateway: &Gateway, grant: &Grant, now_ms: i64, cost_usd: f64) {
    let mut spend = gateway.spend.lock().expect("spend lock");
    spend.roll(now_ms);
    let spent = {
        let tenant = spend.tenants.entry(grant.tenant.clone()).or_default();
        tenant.mine += cost_usd;
        tenant.total()
    };
    spend.keys.entry(grant.key_id.clone()).or_default().mine += cost_usd;
    let budget =
        gateway.estate.tenants.iter().find(|t| t.name == grant.tenant).and_then(|t| t.budget);
    if let Some(budget) = budget.filter(|b| !b.hard && spent >= b.monthly_usd) {
        if spend.alerted.insert(grant.tenant.clone()) {
            tracing::warn!(
                tenant = grant.tenant.as_str(),
                spent_usd = spent,
                budget_usd = budget.monthly_usd,
                month = spend.month().as_str(),
                "soft budget reached"
            );
        }
    }
}

/// Writes one request to the ledger, if the gateway keeps one.
#[allow(clippy::too_many_arguments)]
fn record_ledger(
    gateway: &Gateway,
    request_id: &HeaderValue,
    grant: Option<&Grant>,
    model: &str,
    deployment: Option<skyweave_core::estate::DeploymentId>,
    usage: Option<Usage>,
    status: u16,
    attempts: u32,
    latency: Duration,
    ttft: Option<Duration>,
) {
    let runtime = deployment.map(|id| gateway.runtime(id));
    let (prompt_tokens, completion_tokens) =
        usage.map_or((0, 0), |u| (u.prompt_tokens, u.completion_tokens));
    let cost_usd =
        runtime.map_or(0.0, |r| r.deployment.price.cost_usd(prompt_tokens, completion_tokens));
    let now_ms = unix_ms();
    if let Some(grant) = grant {
        add_spend(gateway, grant, now_ms, cost_usd);
    }
    if let Some(runtime) = runtime.filter(|_| cost_usd > 0.0) {
        let today = now_ms.div_euclid(86_400_000);
        if gateway.commitment_on(&runtime.deployment.cloud, today).is_some() {
            gateway
                .commitment_spend
                .lock()
                .expect("commitment spend lock")
                .entry(runtime.deployment.cloud.clone())
                .or_default()
                .mine += cost_usd;
        }
    }
    let Some(ledger) = &gateway.ledger else { return };
    ledger.record(crate::ledger::Record {
        unix_ms: now_ms,
        request_id: request_id.to_str().unwrap_or_default().to_string(),
        tenant: grant.map(|g| g.tenant.clone()),
        key_id: grant.map(|g| g.key_id.clone()),
        model: model.to_string(),
        deployment: runtime.map(|r| r.name.to_string()),
        cloud: runtime.map(|r| r.cloud.to_string()),
        region: runtime.map(|r| r.region.to_string()),
        prompt_tokens,
        completion_tokens,
        cost_usd,
        latency_ms: latency.as_secs_f64() * 1000.0,
        ttft_ms: ttft.map(|t| t.as_secs_f64() * 1000.0),
        status,
        attempts,
        stream: ttft.is_some(),
    });
}

fn record_served(
    gateway: &Gateway,
    deployment: skyweave_core::estate::DeploymentId,
    status: u16,
    usage: Option<Usage>,
    total: Duration,
    time_to_first_token: Duration,
) {
    let runtime = gateway.runtime(deployment);
    let series = &runtime.metrics;
    if status == 200 {
        series.requests_ok.inc();
    } else {
        gateway
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                model: runtime.model.clone(),
                deployment: runtime.name.clone(),
                cloud: runtime.cloud.clone(),
                status,
            })
            .inc();
    }
    series.duration.observe(total.as_secs_f64());
    series.time_to_first_token.observe(time_to_first_token.as_secs_f64());
    if let Some(usage) = usage {
        series.tokens_in.inc_by(usage.prompt_tokens);
        series.tokens_out.inc_by(usage.completion_tokens);
        series.cost_usd.inc_by(
            runtime.deployment.price.cost_usd(usage.prompt_tokens, usage.completion_tokens),
        );
    }
}

async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut incoming = match read_request(&gateway, &headers, body, "messages").await {
        Ok(incoming) => incoming,
        Err(error) => return error_response(&gateway, None, request_id(&headers), error, 0),
    };
    let fail = |incoming: &Incoming, error: ApiError, attempts: u32| {
        error_response(&gateway, Some(incoming), incoming.request_id.clone(), error, attempts)
    };
    let messages = match measure_member(&incoming.body, "messages") {
        Ok(messages) => messages,
        Err(error) => return fail(&incoming, error, 0),
    };
    match messages.map(|m| m.shape) {
        Some(Shape::Array { len, first_without_role }) if len > 0 => {
            if let Some(index) = first_without_role {
                let error = ApiError::invalid_request(
                    format!("messages[{index}] has no `role` string"),
                    Some(&format!("messages[{index}].role")),
                );
                return fail(&incoming, error, 0);
            }
        }
        _ => {
            let error =
                ApiError::invalid_request("`messages` must be a non-empty array", Some("messages"));
            return fail(&incoming, error, 0);
        }
    }
    let stream = match incoming.body.raw("stream") {
        None | Some("null" | "false") => false,
        Some("true") => true,
        Some(_) => {
            return fail(
                &incoming,
                ApiError::invalid_request("`stream` must be a boolean", Some("stream")),
                0,
            )
        }
    };
    let options = incoming.body.raw("stream_options").map(serde_json::from_str::<Value>);
    let include_usage = match options {
        None | Some(Ok(Value::Null)) => false,
        Some(Ok(Value::Object(options))) => match options.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(include)) => *include,
            Some(_) => {
                let error = ApiError::invalid_request(
                    "`stream_options.include_usage` must be a boolean",
                    Some("stream_options.include_usage"),
                );
                return fail(&incoming, error, 0);
            }
        },
        Some(_) => {
            let error = ApiError::invalid_request(
                "`stream_options` must be an object",
                Some("stream_options"),
            );
            return fail(&incoming, error, 0);
        }
    };
    let prompt_tokens = estimate_prompt_tokens(&messages.unwrap_or_default());
    let estimated_tokens = prompt_tokens.saturating_add(output_estimate(&incoming.body));
    if let Some(grant) = &incoming.grant {
        match admit(&gateway, grant, estimated_tokens) {
            Ok(admission) => incoming.admission = Some(admission),
            Err(error) => return fail(&incoming, error, 0),
        }
    }
    let request = ChatRequest {
        body: incoming.body.clone(),
        stream,
        include_usage,
        estimated_prompt_tokens: prompt_tokens,
    };

    if stream {
        let call_request = request.clone();
        let result = dispatch(
            &gateway,
            &incoming.model,
            &incoming.scope,
            estimated_tokens,
            AttemptBound::FirstToken,
            |provider| {
                let response = provider.chat(&call_request);
                Box::pin(async move {
                    match response.await? {
                        ChatResponse::Stream(mut rest) => match rest.next().await {
                            Some(Ok(first)) => Ok((first, rest)),
                            Some(Err(error)) => Err(error),
                            None => Err(UpstreamError::new(
                                FailureKind::StreamCut,
                                "the stream ended before its first chunk",
                            )),
                        },
                        ChatResponse::Complete { .. } => Err(UpstreamError::new(
                            FailureKind::Protocol,
                            "a streaming request was answered without a stream",
                        )),
                    }
                })
            },
        )
        .await;
        let served = match result {
            Ok(served) => served,
            Err(error) => {
                let (error, attempts) = dispatch_error(&gateway, &incoming.model, error);
                return fail(&incoming, error, attempts);
            }
        };
        return stream_response(gateway.clone(), incoming, served, include_usage);
    }

    let call_request = request.clone();
    let result = dispatch(
        &gateway,
        &incoming.model,
        &incoming.scope,
        estimated_tokens,
        AttemptBound::Total,
        |provider| provider.chat(&call_request),
    )
    .await;
    let served = match result {
        Ok(served) => served,
        Err(error) => {
            let (error, attempts) = dispatch_error(&gateway, &incoming.model, error);
            return fail(&incoming, error, attempts);
        }
    };
    let (body, usage) = match &served.value {
        ChatResponse::Complete { body, usage } => (body.clone(), *usage),
        ChatResponse::Stream(_) => {
            // A provider answered a non-streaming request with a stream: a
            // provider bug, reported rather than relayed.
            let error = ApiError::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "the upstream answered a non-streaming request with a stream",
            );
            return fail(&incoming, error, served.attempts);
        }
    };
    let response = complete_response(&gateway, &incoming, served, body, usage);
    if let Some(admission) = incoming.admission.take() {
        admission.finish(usage.map(|u| u.total()));
    }
    response
}

fn complete_response<T>(
    gateway: &Arc<Gateway>,
    incoming: &Incoming,
    served: Served<T>,
    body: Bytes,
    usage: Option<Usage>,
) -> Response {
    let total = incoming.received.elapsed();
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(name::REQUEST_ID, incoming.request_id.clone());
    stamp_served(gateway, &mut response, &served);
    let deployment = served.deployment;
    let attempts = served.attempts;
    let upstream_time = served.upstream_time;
    served.lease.finish(Outcome::Success { time_to_first_token: None, usage });
    record_served(gateway, deployment, 200, usage, total, total);
    record_ledger(
        gateway,
        &incoming.request_id,
        incoming.grant.as_ref(),
        &incoming.model.name,
        Some(deployment),
        usage,
        200,
        attempts,
        total,
        None,
    );
    gateway.metrics.observe_overhead(total.saturating_sub(upstream_time));
    let runtime = gateway.runtime(deployment);
    tracing::info!(
        request_id = incoming.request_id.to_str().unwrap_or(""),
        model = incoming.model.name.as_str(),
        deployment = runtime.name.as_str(),
        cloud = runtime.cloud.as_str(),
        region = runtime.region.as_str(),
        status = 200,
        attempts,
        latency_ms = total.as_secs_f64() * 1000.0,
        prompt_tokens = usage.map(|u| u.prompt_tokens),
        completion_tokens = usage.map(|u| u.completion_tokens),
        "request served"
    );
    response
}

/// Frames one event's data; data spanning several lines (legal in SSE) gets
/// one `data:` field per line so that clients rejoin it unchanged.
fn sse_frame(data: &[u8]) -> Bytes {
    let lines = 1 + memchr::memchr_iter(b'\n', data).count();
    let mut frame = Vec::with_capacity(data.len() + 7 * lines + 1);
    let mut rest = data;
    loop {
        frame.extend_from_slice(b"data: ");
        match memchr::memchr(b'\n', rest) {
            Some(end) => {
                frame.extend_from_slice(&rest[..=end]);
                rest = &rest[end + 1..];
            }
            None => {
                frame.extend_from_slice(rest);
                frame.extend_from_slice(b"\n\n");
                break;
            }
        }
    }
    Bytes::from(frame)
}

fn stream_response(
    gateway: Arc<Gateway>,
    mut incoming: Incoming,
    served: Served<(StreamChunk, ChunkStream)>,
    include_usage: bool,
) -> Response {
    let time_to_first_token = incoming.received.elapsed();
    let runtime = gateway.runtime(served.deployment);
    let attempt_deadline = served.lease.started() + runtime.deployment.timeouts.total;
    let request_deadline = incoming.received
        + incoming
            .scope
            .deadline
            .map_or(incoming.model.deadline, |d| d.min(incoming.model.deadline));
    let deadline = attempt_deadline.min(request_deadline);
    let deadline_is_callers = request_deadline < attempt_deadline;
    // The deployment's own time to first token (earlier attempts excluded)
    // feeds its latency EWMA.
    let upstream_ttft = served.lease.started().elapsed();
    let mut response = Response::new(Body::empty());
    stamp_served(&gateway, &mut response, &served);
    let Served { value: (first, rest), deployment, attempts, lease, upstream_time } = served;
    let mut usage = first.usage;
    let first_frame =
        if first.usage_only && !include_usage { None } else { Some(sse_frame(&first.data)) };
    if first.usage.is_some() {
        usage = first.usage;
    }
    gateway.metrics.observe_overhead(time_to_first_token.saturating_sub(upstream_time));
    let relay = Relay {
        gateway: gateway.clone(),
        first: first_frame,
        upstream: rest,
        lease: Some(lease),
        admission: incoming.admission.take(),
        grant: incoming.grant.take(),
        model: incoming.model.name.clone(),
        include_usage,
        usage,
        received: incoming.received,
        time_to_first_token,
        upstream_ttft,
        deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
        deadline_is_callers,
        request_id: incoming.request_id.clone(),
        attempts,
        done: false,
    };
    let headers = response.headers_mut();
    headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(axum::http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(name::REQUEST_ID, incoming.request_id);
    // Tells nginx-style buffering proxies in front of the gateway not to buffer.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let _ = deployment;
    *response.body_mut() = Body::from_stream(relay);
    response
}

/// Relays a stream chunk by chunk. Ends with `data: [DONE]` only when the
/// upstream finished cleanly; a cut or a timeout ends it with an error event.
struct Relay {
    gateway: Arc<Gateway>,
    first: Option<Bytes>,
    upstream: ChunkStream,
    lease: Option<Lease>,
    /// The tenant's and key's capacity, settled when the stream ends.
    admission: Option<Admission>,
    grant: Option<Grant>,
    model: String,
    include_usage: bool,
    usage: Option<Usage>,
    received: Instant,
    time_to_first_token: Duration,
    upstream_ttft: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    deadline_is_callers: bool,
    request_id: HeaderValue,
    attempts: u32,
    done: bool,
}

impl Relay {
    fn finish(&mut self, outcome: Outcome, status: u16) {
        self.done = true;
        if let Some(admission) = self.admission.take() {
            admission.finish(self.usage.map(|u| u.total()));
        }
        let Some(lease) = self.lease.take() else {
            return;
        };
        let deployment = lease.deployment();
        lease.finish(outcome);
        let total = self.received.elapsed();
        record_served(
            &self.gateway,
            deployment,
            status,
            self.usage,
            total,
            self.time_to_first_token,
        );
        record_ledger(
            &self.gateway,
            &self.request_id,
            self.grant.as_ref(),
            &self.model,
            Some(deployment),
            self.usage,
            status,
            self.attempts,
            total,
            Some(self.time_to_first_token),
        );
        let runtime = self.gateway.runtime(deployment);
        tracing::info!(
            request_id = self.request_id.to_str().unwrap_or(""),
            model = runtime.model.as_str(),
            deployment = runtime.name.as_str(),
            cloud = runtime.cloud.as_str(),
            region = runtime.region.as_str(),
            status,
            attempts = self.attempts,
            stream = true,
            latency_ms = total.as_secs_f64() * 1000.0,
            ttft_ms = self.time_to_first_token.as_secs_f64() * 1000.0,
            prompt_tokens = self.usage.map(|u| u.prompt_tokens),
            completion_tokens = self.usage.map(|u| u.completion_tokens),
            outcome = match outcome {
                Outcome::Success { .. } => "ok",
                Outcome::Failure(kind) => kind.as_str(),
                Outcome::CallerDeadline => "caller_deadline",
            },
            "stream served"
        );
    }

    fn error_event(&mut self, kind: FailureKind, message: &str, outcome: Outcome) -> Bytes {
        let deployment = self
            .lease
            .as_ref()
            .map(|lease| self.gateway.runtime(lease.deployment()).name.to_string());
        self.finish(outcome, 200);
        let body = json!({
            "error": {
                "message": format!(
                    "the upstream stream failed after it had started ({}); the response is incomplete{}",
                    message,
                    deployment.map(|d| format!(" (deployment `{d}`)")).unwrap_or_default()
                ),
                "type": "server_error",
                "param": null,
                "code": format!("upstream_{}", kind.as_str()),
            }
        });
        sse_frame(body.to_string().as_bytes())
    }
}

/// Chunks already received are written together, up to this many bytes:
/// one write per burst instead of one per event, and never a wait for more.
const RELAY_BATCH_BYTES: usize = 64 * 1024;

impl Stream for Relay {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let mut batch: Vec<u8> = Vec::new();
        if let Some(first) = this.first.take() {
            batch.extend_from_slice(&first);
        }
        loop {
            match this.upstream.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if chunk.usage.is_some() {
                        this.usage = chunk.usage;
                    }
                    if chunk.usage_only && !this.include_usage {
                        continue;
                    }
                    batch.extend_from_slice(&sse_frame(&chunk.data));
                    if batch.len() >= RELAY_BATCH_BYTES {
                        return Poll::Ready(Some(Ok(Bytes::from(batch))));
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    let frame =
                        this.error_event(error.kind, &error.message, Outcome::Failure(error.kind));
                    batch.extend_from_slice(&frame);
                    return Poll::Ready(Some(Ok(Bytes::from(batch))));
                }
                Poll::Ready(None) => {
                    let outcome = Outcome::Success {
                        time_to_first_token: Some(this.upstream_ttft),
                        usage: this.usage,
                    };
                    this.finish(outcome, 200);
                    batch.extend_from_slice(b"data: [DONE]\n\n");
                    return Poll::Ready(Some(Ok(Bytes::from(batch))));
                }
                Poll::Pending => {
                    if !batch.is_empty() {
                        return Poll::Ready(Some(Ok(Bytes::from(batch))));
                    }
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        let (message, outcome) = if this.deadline_is_callers {
                            ("the request's deadline passed", Outcome::CallerDeadline)
                        } else {
                            (
                                "the deployment's total timeout passed",
                                Outcome::Failure(FailureKind::TotalTimeout),
                            )
                        };
                        let frame = this.error_event(FailureKind::TotalTimeout, message, outcome);
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

async fn embeddings(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut incoming = match read_request(&gateway, &headers, body, "input").await {
        Ok(incoming) => incoming,
        Err(error) => return error_response(&gateway, None, request_id(&headers), error, 0),
    };
    let input = match measure_member(&incoming.body, "input") {
        Ok(input) => input.unwrap_or_default(),
        Err(error) => {
            return error_response(&gateway, Some(&incoming), incoming.request_id.clone(), error, 0)
        }
    };
    // OpenAI accepts at most 2048 inputs per request.
    let valid_input = match input.shape {
        Shape::String { empty } => !empty,
        Shape::Array { len, .. } => (1..=2048).contains(&len),
        _ => false,
    };
    if !valid_input {
        let error = ApiError::invalid_request(
            "`input` must be a non-empty string, or an array of 1 to 2048 strings or token arrays",
            Some("input"),
        );
        return error_response(&gateway, Some(&incoming), incoming.request_id.clone(), error, 0);
    }
    let prompt_tokens = estimate_prompt_tokens(&input);
    if let Some(grant) = &incoming.grant {
        match admit(&gateway, grant, prompt_tokens) {
            Ok(admission) => incoming.admission = Some(admission),
            Err(error) => {
                return error_response(
                    &gateway,
                    Some(&incoming),
                    incoming.request_id.clone(),
                    error,
                    0,
                )
            }
        }
    }
    let request =
        EmbeddingsRequest { body: incoming.body.clone(), estimated_prompt_tokens: prompt_tokens };
    let result = dispatch(
        &gateway,
        &incoming.model,
        &incoming.scope,
        prompt_tokens,
        AttemptBound::Total,
        |provider| provider.embeddings(&request),
    )
    .await;
    match result {
        Ok(served) => {
            let body = served.value.body.clone();
            let usage = served.value.usage;
            let response = complete_response(&gateway, &incoming, served, body, usage);
            if let Some(admission) = incoming.admission.take() {
                admission.finish(usage.map(|u| u.total()));
            }
            response
        }
        Err(error) => {
            let (error, attempts) = dispatch_error(&gateway, &incoming.model, error);
            error_response(&gateway, Some(&incoming), incoming.request_id.clone(), error, attempts)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_estimates() {
        let tokens = |value: Value| estimate_prompt_tokens(&measure(&value.to_string()).unwrap());
        assert_eq!(tokens(json!([{"role": "user", "content": "x".repeat(400)}])), 105);
        let parts =
            json!([{"role": "user", "content": [{"type": "text", "text": "y".repeat(40)}]}]);
        assert!(tokens(parts) >= 10);
        let body = |text: &'static str| RequestBody::parse(Bytes::from_static(text.as_bytes()));
        assert_eq!(output_estimate(&body(r#"{"max_tokens": 12}"#).unwrap()), 12);
        assert_eq!(output_estimate(&body("{}").unwrap()), DEFAULT_OUTPUT_ESTIMATE);
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut headers = HeaderMap::new();
        assert!(request_id(&headers).to_str().unwrap().starts_with("req_"));
        headers.insert(HEADER_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(HEADER_REQUEST_ID, HeaderValue::from_static("has space"));
        assert!(request_id(&headers).to_str().unwrap().starts_with("req_"));
    }
}
