//! AWS credentials from the standard sources, tried in this order:
//!
//! 1. environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
//!    `AWS_SESSION_TOKEN`;
//! 2. the shared files: the profile named in the estate (`aws.profile`), else
//!    `AWS_PROFILE`, else `default`, from `AWS_SHARED_CREDENTIALS_FILE`
//!    (default `~/.aws/credentials`) and `AWS_CONFIG_FILE` (default
//!    `~/.aws/config`, sections `[profile NAME]`);
//! 3. web identity (EKS, GitHub OIDC): `AWS_WEB_IDENTITY_TOKEN_FILE` and
//!    `AWS_ROLE_ARN` exchanged at STS (`AssumeRoleWithWebIdentity`;
//!    `AWS_ENDPOINT_URL_STS` overrides the endpoint);
//! 4. container credentials (ECS, EKS Pod Identity):
//!    `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `..._FULL_URI`, with
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)`.
//!
//! Credentials are cached. Temporary ones are refreshed five minutes before
//! they expire; static ones are re-resolved every five minutes so that a
//! rotated file or environment is picked up. The secret parts never appear in
//! an error or a log line.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;

const STATIC_REFRESH: Duration = Duration::from_secs(300);
const EXPIRY_MARGIN: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "no AWS credentials found (tried: environment AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
         profile `{profile}` in {credentials_file} and {config_file}, web identity, container \
         credentials); set one of them, or name another profile with `aws = {{ profile = \"...\" }}`"
    )]
    NotFound { profile: String, credentials_file: String, config_file: String },
    #[error("AWS credentials from {source_name} could not be loaded: {reason}")]
    Source { source_name: &'static str, reason: String },
}

pub struct AwsCredentials {
    profile: Option<String>,
    region: String,
    http: reqwest::Client,
    cached: RwLock<Option<Cached>>,
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Cached {
    credentials: Credentials,
    refresh_at: Instant,
}

impl AwsCredentials {
    pub fn new(profile: Option<String>, region: &str) -> AwsCredentials {
        AwsCredentials {
            profile,
            region: region.to_string(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(10))
                .build()
                .expect("the HTTP client configuration is valid"),
            cached: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Current credentials, resolving or refreshing them when needed.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        if let Some(fresh) = self.fresh() {
            return Ok(fresh);
        }
        // One refresh at a time; the others wait for its result.
        let _refreshing = self.refreshing.lock().await;
        if let Some(fresh) = self.fresh() {
            return Ok(fresh);
        }
        let (credentials, expiry) = self.resolve().await?;
        let lifetime = match expiry {
            Some(expiry) => expiry
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .saturating_sub(EXPIRY_MARGIN)
                .max(Duration::from_secs(30)),
            None => STATIC_REFRESH,
        };
        let cached =
            Cached { credentials: credentials.clone(), refresh_at: Instant::now() + lifetime };
        *self.cached.write().expect("credentials lock") = Some(cached);
        Ok(credentials)
    }

    fn fresh(&self) -> Option<Credentials> {
        let cached = self.cached.read().expect("credentials lock");
        cached.as_ref().filter(|c| Instant::now() < c.refresh_at).map(|c| c.credentials.clone())
    }

    async fn resolve(&self) -> Result<(Credentials, Option<SystemTime>), CredentialsError> {
        if let Some(credentials) = from_environment() {
            return Ok((credentials, None));
        }
        let profile = self
            .profile
            .clone()
            .or_else(|| env("AWS_PROFILE"))
            .unwrap_or_else(|| "default".to_string());
        let credentials_file = shared_file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let config_file = shared_file("AWS_CONFIG_FILE", "config");
        if let Some(credentials) = from_profile(&profile, &credentials_file, &config_file).await {
            return Ok((credentials, None));
        }
        if let (Some(token_file), Some(role_arn)) =
            (env("AWS_WEB_IDENTITY_TOKEN_FILE"), env("AWS_ROLE_ARN"))
        {
            return self.load_web_identity(&token_file, &role_arn).await;
        }
        if let Some(url) = container_url() {
            return self.load_container(&url).await;
        }
        Err(CredentialsError::NotFound {
            profile,
            credentials_file: credentials_file.display().to_string(),
            config_file: config_file.display().to_string(),
        })
    }

    async fn load_container(
        &self,
        url: &str,
    ) -> Result<(Credentials, Option<SystemTime>), CredentialsError> {
        let failed = |reason: String| CredentialsError::Source {
            source_name: "the container credentials endpoint",
            reason,
        };
        let mut request = self.http.get(url);
        let token = match env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
            Some(path) => Some(
                tokio::fs::read_to_string(&path)
                    .await
                    .map_err(|e| {
                        failed(format!("cannot read the token file {path}: {}", e.kind()))
                    })?
                    .trim()
                    .to_string(),
            ),
            None => env("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        };
        if let Some(token) = token {
            request = request.header(reqwest::header::AUTHORIZATION, token);
        }
        let response = request.send().await.map_err(|e| failed(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("it answered {}", response.status())));
        }
        let body: serde_json::Value =
            response.json().await.map_err(|e| failed(e.without_url().to_string()))?;
        let field = |name: &str| body.get(name).and_then(serde_json::Value::as_str);
        let (Some(id), Some(secret)) = (field("AccessKeyId"), field("SecretAccessKey")) else {
            return Err(failed("the answer lacks AccessKeyId/SecretAccessKey".into()));
        };
        let expiry = field("Expiration").and_then(parse_rfc3339);
        let credentials =
            Credentials::new(id, secret, field("Token").map(str::to_string), expiry, "container");
        Ok((credentials, expiry))
    }

    async fn load_web_identity(
        &self,
        token_file: &str,
        role_arn: &str,
    ) -> Result<(Credentials, Option<SystemTime>), CredentialsError> {
        let failed =
            |reason: String| CredentialsError::Source { source_name: "web identity", reason };
        let token = tokio::fs::read_to_string(token_file)
            .await
            .map_err(|e| failed(format!("cannot read {token_file}: {}", e.kind())))?;
        let endpoint = env("AWS_ENDPOINT_URL_STS")
            .unwrap_or_else(|| format!("https://sts.{}.amazonaws.com", self.region));
        let session = env("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "skyweave".to_string());
        let response = self
            .http
            .post(format!("{}/", endpoint.trim_end_matches('/')))
            .form(&[
                ("Action", "AssumeRoleWithWebIdentity"),
                ("Version", "2011-06-15"),
                ("RoleArn", role_arn),
                ("RoleSessionName", session.as_str()),
                ("WebIdentityToken", token.trim()),
            ])
            .send()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| failed(e.without_url().to_string()))?;
        if !status.is_success() {
            let code = xml_tag(&text, "Code").unwrap_or("unknown");
            return Err(failed(format!("STS answered {status} ({code})")));
        }
        let (Some(id), Some(secret), Some(session_token)) = (
            xml_tag(&text, "AccessKeyId"),
            xml_tag(&text, "SecretAccessKey"),
            xml_tag(&text, "SessionToken"),
        ) else {
            return Err(failed("the STS answer lacks credentials".into()));
        };
        let expiry = xml_tag(&text, "Expiration").and_then(parse_rfc3339);
        let credentials =
            Credentials::new(id, secret, Some(session_token.to_string()), expiry, "web-identity");
        Ok((credentials, expiry))
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn from_environment() -> Option<Credentials> {
    let id = env("AWS_ACCESS_KEY_ID")?;
    let secret = env("AWS_SECRET_ACCESS_KEY")?;
    Some(Credentials::new(id, secret, env("AWS_SESSION_TOKEN"), None, "environment"))
}

fn shared_file(variable: &str, name: &str) -> PathBuf {
    env(variable).map(PathBuf::from).unwrap_or_else(|| {
        let home = env("HOME").unwrap_or_else(|| "/".to_string());
        PathBuf::from(home).join(".aws").join(name)
    })
}

async fn from_profile(
    profile: &str,
    credentials_file: &PathBuf,
    config_file: &PathBuf,
) -> Option<Credentials> {
    for (path, section) in
        [(credentials_file, profile.to_string()), (config_file, config_section(profile))]
    {
        let Ok(text) = tokio::fs::read_to_string(path).await else { continue };
        let keys = ini_section(&text, &section);
        let get = |key: &str| keys.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        if let (Some(id), Some(secret)) = (get("aws_access_key_id"), get("aws_secret_access_key")) {
            return Some(Credentials::new(id, secret, get("aws_session_token"), None, "profile"));
        }
    }
    None
}

fn config_section(profile: &str) -> String {
    if profile == "default" {
        "default".to_string()
    } else {
        format!("profile {profile}")
    }
}

/// The `key = value` pairs of one `[section]` of an INI file.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut pairs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside {
            if let Some((key, value)) = line.split_once('=') {
                pairs.push((key.trim().to_string(), value.trim().to_string()));
            }
        }
    }
    pairs
}

fn container_url() -> Option<String> {
    if let Some(relative) = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        return Some(format!("http://169.254.170.2{relative}"));
    }
    env("AWS_CONTAINER_CREDENTIALS_FULL_URI")
}

/// The text of the first `<tag>...</tag>` in an XML document (STS answers
/// have no nesting ambiguity for the tags read here).
fn xml_tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim())
}

fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let parsed = aws_smithy_types::DateTime::from_str(
        text.trim(),
        aws_smithy_types::date_time::Format::DateTime,
    )
    .ok()?;
    SystemTime::try_from(parsed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_and_profiles() {
        let text = "# comment\n[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key=s1\n\n[profile prod]\naws_access_key_id = AKIDPROD\n; note\naws_secret_access_key = s2\naws_session_token = t2\n";
        assert_eq!(
            ini_section(text, "default")[0],
            ("aws_access_key_id".into(), "AKIDDEFAULT".into())
        );
        let prod = ini_section(text, &config_section("prod"));
        assert_eq!(prod.len(), 3);
        assert_eq!(prod[2].1, "t2");
        assert!(ini_section(text, "missing").is_empty());
    }

    #[test]
    fn sts_answers_and_dates() {
        let xml = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
                   <AccessKeyId>ASIAX</AccessKeyId><SecretAccessKey>sec</SecretAccessKey>\
                   <SessionToken>tok</SessionToken><Expiration>2030-01-02T03:04:05Z</Expiration>\
                   </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        assert_eq!(xml_tag(xml, "AccessKeyId"), Some("ASIAX"));
        assert_eq!(xml_tag(xml, "Nope"), None);
        let expiry = parse_rfc3339(xml_tag(xml, "Expiration").unwrap()).unwrap();
        let seconds = expiry.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(seconds, 1_893_553_445);
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[tokio::test]
    async fn profile_files_are_read_for_the_named_profile() {
        let dir = std::env::temp_dir().join(format!("skyweave-aws-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let credentials = dir.join("credentials");
        let config = dir.join("config");
        std::fs::write(
            &credentials,
            "[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[profile ci]\naws_access_key_id = A2\naws_secret_access_key = S2\n",
        )
        .unwrap();
        let default = from_profile("default", &credentials, &config).await.unwrap();
        assert_eq!(default.access_key_id(), "A1");
        let ci = from_profile("ci", &credentials, &config).await.unwrap();
        assert_eq!((ci.access_key_id(), ci.secret_access_key()), ("A2", "S2"));
        assert!(from_profile("other", &credentials, &config).await.is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_sources_not_secrets() {
        let error = CredentialsError::NotFound {
            profile: "prod".into(),
            credentials_file: "/home/u/.aws/credentials".into(),
            config_file: "/home/u/.aws/config".into(),
        };
        let text = error.to_string();
        assert!(text.contains("profile `prod` in /home/u/.aws/credentials"));
    }
}
