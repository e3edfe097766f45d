//! The two AWS credential endpoints a workload reaches over the network:
//!
//! - the container credentials endpoint (ECS, EKS Pod Identity): `GET` on the
//!   path in `AWS_CONTAINER_CREDENTIALS_*_URI`, optionally with an
//!   `Authorization` token, answering `{AccessKeyId, SecretAccessKey, Token,
//!   Expiration}` as JSON;
//! - STS `AssumeRoleWithWebIdentity` (`POST /` with a form body), answering
//!   the documented XML with the temporary credentials.
//!
//! Both hand out the same temporary credentials, so a Bedrock emulator
//! configured with them (and the session token) accepts what was signed
//! with them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;

/// What the endpoints issue and what they require.
#[derive(Clone, Debug)]
pub struct AwsCredentialsConfig {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// RFC 3339, e.g. `2030-01-01T00:00:00Z`.
    pub expiration: String,
    /// The container endpoint requires `Authorization: {token}` when set.
    pub container_authorization: Option<String>,
    /// STS requires this `WebIdentityToken` and this `RoleArn`.
    pub web_identity_token: String,
    pub role_arn: String,
}

pub struct AwsCredentialsServer {
    pub addr: SocketAddr,
    issued: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    _shutdown: watch::Sender<()>,
}

impl AwsCredentialsServer {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Credentials handed out so far.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::SeqCst)
    }

    /// Requests refused (wrong token, role or form).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Shared {
    config: Arc<AwsCredentialsConfig>,
    issued: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

pub async fn spawn_aws_credentials(
    config: AwsCredentialsConfig,
) -> std::io::Result<AwsCredentialsServer> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let shared = Shared {
        config: Arc::new(config),
        issued: Arc::new(AtomicU64::new(0)),
        refused: Arc::new(AtomicU64::new(0)),
    };
    let router = Router::new()
        .route("/creds", get(container))
        .route("/", post(sts))
        .with_state(shared.clone());
    let (shutdown, mut stopped) = watch::channel(());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.changed().await;
            })
            .await;
    });
    Ok(AwsCredentialsServer {
        addr,
        issued: shared.issued,
        refused: shared.refused,
        _shutdown: shutdown,
    })
}

async fn container(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let config = &shared.config;
    if let Some(expected) = &config.container_authorization {
        let given = headers.get("authorization").and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::FORBIDDEN, "invalid authorization token").into_response();
        }
    }
    shared.issued.fetch_add(1, Ordering::SeqCst);
    axum::Json(serde_json::json!({
        "AccessKeyId": config.access_key_id,
        "SecretAccessKey": config.secret_access_key,
        "Token": config.session_token,
        "Expiration": config.expiration,
        "RoleArn": config.role_arn,
    }))
    .into_response()
}

async fn sts(State(shared): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    let config = &shared.config;
    let field = |name: &str| form.get(name).map(String::as_str);
    let refuse = |code: &str, message: &str| {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        let body = format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
             <Code>{code}</Code><Message>{message}</Message></Error><RequestId>emulator</RequestId></ErrorResponse>"
        );
        (StatusCode::BAD_REQUEST, [("content-type", "text/xml")], body).into_response()
    };
    if field("Action") != Some("AssumeRoleWithWebIdentity")
        || field("Version") != Some("2011-06-15")
    {
        return refuse("InvalidAction", "Could not find operation");
    }
    if field("RoleArn") != Some(config.role_arn.as_str()) {
        return refuse("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity");
    }
    if field("WebIdentityToken") != Some(config.web_identity_token.as_str()) {
        return refuse("InvalidIdentityToken", "The web identity token that was passed is invalid");
    }
    if field("RoleSessionName").is_none_or(str::is_empty) {
        return refuse("ValidationError", "RoleSessionName is required");
    }
    shared.issued.fetch_add(1, Ordering::SeqCst);
    let body = format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <AssumeRoleWithWebIdentityResult><Credentials>\
         <AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey>\
         <SessionToken>{}</SessionToken><Expiration>{}</Expiration></Credentials>\
         <AssumedRoleUser><Arn>{}/session</Arn><AssumedRoleId>AROA:session</AssumedRoleId></AssumedRoleUser>\
         </AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>emulator</RequestId></ResponseMetadata>\
         </AssumeRoleWithWebIdentityResponse>",
        config.access_key_id, config.secret_access_key, config.session_token, config.expiration, config.role_arn
    );
    (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
}
