//! The admin API (`/admin/v1/...`): keys, usage and the audit log, behind
//! the admin token (`[admin] token_env`), on the main listener or on one of
//! its own (`[admin] listen`). Every call, and every refused attempt, is
//! written to the audit log.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::api_error::ApiError;
use crate::gateway::Gateway;
use crate::keystore::{now_unix, Narrowing};
use crate::ledger::{self, AuditEntry, GroupBy};

/// The admin routes, for the main router (state added by the caller) or a
/// listener of their own (`.with_state(gateway)`).
pub fn routes(gateway: Arc<Gateway>) -> Router<Arc<Gateway>> {
    Router::new()
        .route("/admin/v1/keys", get(list_keys).post(create_key))
        .route("/admin/v1/keys/{id}", delete(revoke_key))
        .route("/admin/v1/usage", get(usage))
        .route("/admin/v1/audit", get(audit_log))
        .layer(axum::middleware::from_fn_with_state(gateway, require_admin))
}

pub fn audit(
    gateway: &Gateway,
    actor: &str,
    action: &str,
    target: &str,
    status: u16,
    detail: &str,
) {
    if let Some(ledger) = &gateway.ledger {
        ledger.audit(AuditEntry {
            unix_ms: now_unix() * 1000,
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            status,
            detail: detail.to_string(),
        });
    }
}

async fn require_admin(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| skyweave_core::keys::hash(token.trim()));
    let allowed = match (gateway.admin_token.get(), presented) {
        (Some(expected), Some(presented)) => bool::from(presented.ct_eq(expected)),
        _ => false,
    };
    if !allowed {
        audit(&gateway, "-", "admin.denied", &path, 401, "missing or wrong admin token");
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "the admin API needs `Authorization: Bearer <admin token>` (the value of [admin] \
             token_env)",
        )
        .with_code("invalid_admin_token")
        .into_response();
    }
    next.run(request).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    tenant: String,
    #[serde(default)]
    name: String,
    models: Option<Vec<String>>,
    clouds: Option<Vec<String>>,
    regions: Option<Vec<String>>,
    rpm: Option<u32>,
    tpm: Option<u32>,
    budget_usd: Option<f64>,
    expires_in_secs: Option<u64>,
}

fn bad_request(message: String) -> Response {
    ApiError::invalid_request(message, None).into_response()
}

async fn create_key(State(gateway): State<Arc<Gateway>>, body: axum::body::Bytes) -> Response {
    let request: CreateKey = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            audit(&gateway, "admin", "key.create", "-", 400, &error.to_string());
            return bad_request(format!("the body is not a key request: {error}"));
        }
    };
    let Some(store) = &gateway.keys else {
        return bad_request("this estate has no [[tenant]]: there are no keys to manage".into());
    };
    if let Err(problem) = skyweave_core::tenant::check_narrowing(
        &gateway.estate,
        &request.tenant,
        &request.models,
        &request.clouds,
        &request.regions,
    ) {
        audit(&gateway, "admin", "key.create", &request.tenant, 400, &problem);
        return bad_request(problem);
    }
    if request.rpm == Some(0)
        || request.tpm == Some(0)
        || request.budget_usd.is_some_and(|b| !(b.is_finite() && b > 0.0))
    {
        return bad_request("rpm, tpm and budget_usd must be more than 0".into());
    }
    let narrowing = Narrowing {
        models: request.models,
        clouds: request.clouds,
        regions: request.regions,
        expires_unix: request.expires_in_secs.map(|s| now_unix() + s as i64),
        rpm: request.rpm,
        tpm: request.tpm,
        budget_usd: request.budget_usd,
    };
    match store.create(&request.tenant, &request.name, &narrowing, now_unix()).await {
        Ok(new) => {
            audit(
                &gateway,
                "admin",
                "key.create",
                &new.id,
                201,
                &format!("tenant {}", request.tenant),
            );
            (
                StatusCode::CREATED,
                Json(json!({ "id": new.id, "key": new.key, "tenant": request.tenant })),
            )
                .into_response()
        }
        Err(error) => store_error(error),
    }
}

fn store_error(error: crate::keystore::StoreError) -> Response {
    tracing::error!(error = %error, "admin: database error");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "the database cannot be used; try again",
    )
    .into_response()
}

async fn list_keys(State(gateway): State<Arc<Gateway>>) -> Response {
    let Some(store) = &gateway.keys else { return Json(json!({ "keys": [] })).into_response() };
    match store.list().await {
        Ok(keys) => {
            audit(&gateway, "admin", "key.list", "-", 200, &format!("{} keys", keys.len()));
            Json(json!({ "keys": keys.iter().map(crate::keystore::KeyRecord::to_json).collect::<Vec<_>>() })).into_response()
        }
        Err(error) => store_error(error),
    }
}

async fn revoke_key(State(gateway): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    let Some(store) = &gateway.keys else {
        return bad_request("this estate has no [[tenant]]: there are no keys to manage".into());
    };
    match store.revoke(&id, now_unix()).await {
        Ok(true) => {
            audit(&gateway, "admin", "key.revoke", &id, 200, "");
            Json(json!({ "revoked": id })).into_response()
        }
        Ok(false) => {
            audit(&gateway, "admin", "key.revoke", &id, 404, "no such key");
            ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("no key `{id}`"))
                .into_response()
        }
        Err(error) => store_error(error),
    }
}

#[derive(Debug, Deserialize)]
struct UsageQuery {
    by: Option<String>,
    since: Option<String>,
    until: Option<String>,
    format: Option<String>,
}

async fn usage(State(gateway): State<Arc<Gateway>>, Query(query): Query<UsageQuery>) -> Response {
    let Some(ledger) = &gateway.ledger else {
        return bad_request("this gateway keeps no ledger".into());
    };
    let by = match query.by.as_deref().unwrap_or("cloud") {
        "cloud" => GroupBy::Cloud,
        "tenant" => GroupBy::Tenant,
        "model" => GroupBy::Model,
        "deployment" => GroupBy::Deployment,
        other => return bad_request(format!("by={other}: use cloud, tenant, model or deployment")),
    };
    let day = |text: &Option<String>, default: i64| match text {
        None => Some(default),
        Some(text) => skyweave_core::calendar::days_from_civil(text),
    };
    let today = now_unix().div_euclid(86_400);
    let first_of_month =
        skyweave_core::calendar::month_of_unix_ms(today * 86_400_000).1 / 86_400_000;
    let (Some(from), Some(to)) = (day(&query.since, first_of_month), day(&query.until, today))
    else {
        return bad_request("since and until take dates as YYYY-MM-DD".into());
    };
    flush(&gateway).await;
    let rows = match ledger.store().usage(by, from * 86_400_000, (to + 1) * 86_400_000).await {
        Ok(rows) => rows,
        Err(error) => return store_error(error),
    };
    audit(&gateway, "admin", "usage.read", query.by.as_deref().unwrap_or("cloud"), 200, "");
    if query.format.as_deref() == Some("csv") {
        let csv = ledger::usage_csv("group", &rows);
        return ([(axum::http::header::CONTENT_TYPE, "text/csv")], csv).into_response();
    }
    Json(json!({
        "since": skyweave_core::calendar::date(from),
        "until": skyweave_core::calendar::date(to),
        "rows": rows,
    }))
    .into_response()
}

/// Read our own writes: what was queued before the call is committed.
async fn flush(gateway: &Arc<Gateway>) {
    let gateway = gateway.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(ledger) = &gateway.ledger {
            ledger.flush();
        }
    })
    .await;
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
}

async fn audit_log(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<AuditQuery>,
) -> Response {
    let Some(ledger) = &gateway.ledger else {
        return bad_request("this gateway keeps no ledger".into());
    };
    flush(&gateway).await;
    match ledger.store().recent_audit(query.limit.unwrap_or(100).min(10_000)).await {
        Ok(entries) => Json(json!({ "entries": entries })).into_response(),
        Err(error) => store_error(error),
    }
}
