//! OAuth 2.0 access tokens for Google Cloud, from (in this order when the
//! estate names none): `GOOGLE_APPLICATION_CREDENTIALS` (a service-account
//! JSON key), else the metadata server. The estate may instead name a key
//! file, the metadata server, or a command that prints a token.
//!
//! - A service-account key signs a JWT (RS256, with `ring`) and exchanges it
//!   at the key's `token_uri` for an access token (the JWT bearer grant,
//!   RFC 7523).
//! - The metadata server answers `GET /computeMetadata/v1/instance/
//!   service-accounts/default/token` with `Metadata-Flavor: Google`
//!   (`GCE_METADATA_HOST` overrides its address).
//! - A token command's output is the token, trusted for five minutes.
//!
//! Tokens are cached and refreshed five minutes before they expire; they and
//! the key never appear in an error or a log line.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::prelude::{Engine as _, BASE64_STANDARD, BASE64_URL_SAFE_NO_PAD};
use serde::Deserialize;
use skyweave_core::estate::GoogleCredentials;

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const EXPIRY_MARGIN: Duration = Duration::from_secs(300);
const COMMAND_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// An OAuth access token; never printed.
#[derive(Clone)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn value(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the Google service-account key {path} cannot be used: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("the Google token endpoint refused the service account's grant: {0}")]
    Grant(String),
    #[error("the metadata server gave no token: {0}")]
    Metadata(String),
    #[error("the token command failed: {0}")]
    Command(String),
}

pub struct GoogleTokens {
    source: GoogleCredentials,
    http: reqwest::Client,
    cached: RwLock<Option<(AccessToken, Instant)>>,
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: String,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

impl GoogleTokens {
    pub fn new(source: GoogleCredentials) -> GoogleTokens {
        GoogleTokens {
            source,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(15))
                .build()
                .expect("the HTTP client configuration is valid"),
            cached: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// A current access token, fetched or refreshed when needed.
    pub async fn token(&self) -> Result<AccessToken, TokenError> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let _refreshing = self.refreshing.lock().await;
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let (token, lifetime) = self.fetch().await?;
        let refresh_at =
            Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN).max(Duration::from_secs(30));
        *self.cached.write().expect("token lock") = Some((token.clone(), refresh_at));
        Ok(token)
    }

    fn fresh(&self) -> Option<AccessToken> {
        let cached = self.cached.read().expect("token lock");
        cached.as_ref().filter(|(_, at)| Instant::now() < *at).map(|(t, _)| t.clone())
    }

    async fn fetch(&self) -> Result<(AccessToken, Duration), TokenError> {
        match &self.source {
            GoogleCredentials::ServiceAccountFile(path) => self.load_key_file(path).await,
            GoogleCredentials::MetadataServer => self.load_metadata().await,
            GoogleCredentials::TokenCommand(command) => from_command(command).await,
            GoogleCredentials::Default => match std::env::var("GOOGLE_APPLICATION_CREDENTIALS") {
                Ok(path) if !path.trim().is_empty() => {
                    self.load_key_file(&PathBuf::from(path.trim())).await
                }
                _ => self.load_metadata().await,
            },
        }
    }

    async fn load_key_file(&self, path: &PathBuf) -> Result<(AccessToken, Duration), TokenError> {
        let key_error =
            |reason: String| TokenError::KeyFile { path: path.display().to_string(), reason };
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| key_error(format!("cannot read it ({})", e.kind())))?;
        let key: ServiceAccountKey = serde_json::from_str(&text).map_err(|e| {
            key_error(format!("not a service-account JSON key ({})", e.classify_kind()))
        })?;
        let token_uri = key.token_uri.clone().unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string());
        let assertion = signed_assertion(&key, &token_uri, SystemTime::now()).map_err(key_error)?;
        let response = self
            .http
            .post(&token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", &assertion),
            ])
            .send()
            .await
            .map_err(|e| TokenError::Grant(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let reason =
                body.get("error_description").or(body.get("error")).and_then(|v| v.as_str());
            return Err(TokenError::Grant(format!(
                "{status}: {}",
                reason.unwrap_or("no reason given")
            )));
        }
        let answer: TokenAnswer =
            response.json().await.map_err(|e| TokenError::Grant(e.without_url().to_string()))?;
        Ok((
            AccessToken(answer.access_token),
            Duration::from_secs(answer.expires_in.unwrap_or(3600)),
        ))
    }

    async fn load_metadata(&self) -> Result<(AccessToken, Duration), TokenError> {
        let host = std::env::var("GCE_METADATA_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .unwrap_or_else(|| "169.254.169.254".to_string());
        let base = if host.starts_with("http://") || host.starts_with("https://") {
            host
        } else {
            format!("http://{host}")
        };
        let url = format!("{base}/computeMetadata/v1/instance/service-accounts/default/token");
        let response = self
            .http
            .get(url)
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .map_err(|e| TokenError::Metadata(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(TokenError::Metadata(format!("it answered {}", response.status())));
        }
        let answer: TokenAnswer =
            response.json().await.map_err(|e| TokenError::Metadata(e.without_url().to_string()))?;
        Ok((
            AccessToken(answer.access_token),
            Duration::from_secs(answer.expires_in.unwrap_or(3600)),
        ))
    }
}

trait ClassifyKind {
    fn classify_kind(&self) -> &'static str;
}

impl ClassifyKind for serde_json::Error {
    fn classify_kind(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "invalid JSON"
            }
            serde_json::error::Category::Data => "missing client_email or private_key",
        }
    }
}

async fn from_command(command: &str) -> Result<(AccessToken, Duration), TokenError> {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| TokenError::Command(format!("cannot run it ({})", e.kind())))?;
    if !output.status.success() {
        return Err(TokenError::Command(format!("it exited with {}", output.status)));
    }
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Command("it printed no token".into()));
    }
    Ok((AccessToken(token), COMMAND_TOKEN_LIFETIME))
}

/// The JWT bearer grant's assertion: `header.claims.signature`, RS256.
fn signed_assertion(
    key: &ServiceAccountKey,
    audience: &str,
    now: SystemTime,
) -> Result<String, String> {
    let issued = now.duration_since(UNIX_EPOCH).map_err(|_| "the clock is before 1970")?.as_secs();
    let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
    if let Some(id) = &key.private_key_id {
        header["kid"] = serde_json::json!(id);
    }
    let claims = serde_json::json!({
        "iss": key.client_email,
        "scope": SCOPE,
        "aud": audience,
        "iat": issued,
        "exp": issued + 3600,
    });
    let signing_input = format!(
        "{}.{}",
        BASE64_URL_SAFE_NO_PAD.encode(header.to_string()),
        BASE64_URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let der = pem_to_der(&key.private_key).ok_or("its private_key is not a PEM PKCS#8 key")?;
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|_| "its private_key is not an RSA PKCS#8 key")?;
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| "signing failed")?;
    Ok(format!("{signing_input}.{}", BASE64_URL_SAFE_NO_PAD.encode(signature)))
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("-----") && !line.is_empty())
        .collect();
    BASE64_STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_KEY: &str = include_str!("../../skyweave-emulators/testdata/google-test-sa.key.pem");

    #[test]
    fn assertions_are_signed_jwts_with_the_right_claims() {
        let key = ServiceAccountKey {
            client_email: "sa@project.iam.gserviceaccount.com".into(),
            private_key: TEST_KEY.into(),
            private_key_id: Some("kid-1".into()),
            token_uri: None,
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let jwt = signed_assertion(&key, DEFAULT_TOKEN_URI, now).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&BASE64_URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": "kid-1" }));
        let claims: serde_json::Value =
            serde_json::from_slice(&BASE64_URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "sa@project.iam.gserviceaccount.com");
        assert_eq!(claims["aud"], DEFAULT_TOKEN_URI);
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 3600);
        assert_eq!(
            BASE64_URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(),
            256,
            "RSA-2048 signature"
        );

        let broken = ServiceAccountKey { private_key: "not a key".into(), ..key };
        let error = signed_assertion(&broken, DEFAULT_TOKEN_URI, now).unwrap_err();
        assert!(!error.contains("not a key"), "the key never appears in errors: {error}");
    }

    #[tokio::test]
    async fn token_commands_are_run_and_checked() {
        let tokens =
            GoogleTokens::new(GoogleCredentials::TokenCommand("echo ya29.from-command".into()));
        assert_eq!(tokens.token().await.unwrap().value(), "ya29.from-command");
        let failing = GoogleTokens::new(GoogleCredentials::TokenCommand("exit 3".into()));
        assert!(failing.token().await.unwrap_err().to_string().contains("exited"));
    }
}
