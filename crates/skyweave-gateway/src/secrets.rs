//! Secrets are named in the estate file by reference and resolved here when
//! the gateway starts. File-based secrets (for example an Entra ID access
//! token that a sidecar rewrites before it expires) are re-read in the
//! background; a request never waits on disk. A [`Secret`] never prints its
//! value.

use std::fmt;
use std::sync::{Arc, RwLock};

use skyweave_core::estate::{Credential, SecretSource};

/// A resolved secret. Clones share the value, so a refresh reaches every holder.
#[derive(Clone)]
pub struct Secret {
    source: SecretSource,
    value: Arc<RwLock<String>>,
}

impl Secret {
    /// The current value, for building a request header.
    pub fn value(&self) -> String {
        self.value.read().expect("secret lock").clone()
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// Re-reads a file-based secret. Returns whether the value changed; on an
    /// error the previous value stays in use.
    pub async fn refresh(&self) -> Result<bool, SecretError> {
        let SecretSource::File(path) = &self.source else { return Ok(false) };
        let text =
            tokio::fs::read_to_string(path).await.map_err(|error| SecretError::Unreadable {
                source_ref: self.source.clone(),
                reason: error.kind().to_string(),
            })?;
        let value = check(&self.source, &text)?;
        let mut current = self.value.write().expect("secret lock");
        if *current == value {
            return Ok(false);
        }
        *current = value;
        Ok(true)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, <redacted>)", self.source)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{source_desc} is not set or empty; set it to the key (the estate file names it, it never holds it)", source_desc = .0)]
    Missing(SecretSource),
    #[error("{source_desc} cannot be read: {reason}", source_desc = .source_ref)]
    Unreadable { source_ref: SecretSource, reason: String },
    #[error("{source_desc} holds a value that is not a valid HTTP header value (control characters or non-ASCII)", source_desc = .0)]
    Invalid(SecretSource),
}

pub fn resolve(credential: &Credential) -> Result<Secret, SecretError> {
    let text = match &credential.source {
        SecretSource::Env(name) => std::env::var(name).unwrap_or_default(),
        SecretSource::File(path) => {
            std::fs::read_to_string(path).map_err(|error| SecretError::Unreadable {
                source_ref: credential.source.clone(),
                reason: error.kind().to_string(),
            })?
        }
    };
    let value = check(&credential.source, &text)?;
    Ok(Secret { source: credential.source.clone(), value: Arc::new(RwLock::new(value)) })
}

fn check(source: &SecretSource, text: &str) -> Result<String, SecretError> {
    let value = text.trim();
    if value.is_empty() {
        return Err(SecretError::Missing(source.clone()));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(SecretError::Invalid(source.clone()));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skyweave_core::estate::AuthScheme;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret {
            source: SecretSource::Env("KEY".into()),
            value: Arc::new(RwLock::new("sk-very-secret".into())),
        };
        assert_eq!(format!("{secret:?}"), "Secret(environment variable KEY, <redacted>)");
    }

    #[tokio::test]
    async fn file_secrets_are_trimmed_refreshed_and_errors_name_only_the_source() {
        let dir = std::env::temp_dir().join(format!("skyweave-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "sk-from-file\n").unwrap();
        let credential =
            Credential { scheme: AuthScheme::ApiKey, source: SecretSource::File(path.clone()) };
        let secret = resolve(&credential).unwrap();
        assert_eq!(secret.value(), "sk-from-file");

        let shared = secret.clone();
        std::fs::write(&path, "sk-rotated").unwrap();
        assert!(secret.refresh().await.unwrap());
        assert_eq!(shared.value(), "sk-rotated", "clones see the new value");
        assert!(!secret.refresh().await.unwrap());

        std::fs::write(&path, "bad\u{7}key").unwrap();
        let error = secret.refresh().await.unwrap_err().to_string();
        assert!(error.contains("not a valid HTTP header value") && !error.contains("bad"));
        assert_eq!(shared.value(), "sk-rotated", "a bad rewrite keeps the last good value");

        let missing = Credential {
            scheme: AuthScheme::ApiKey,
            source: SecretSource::Env("SKYWEAVE_TEST_UNSET_VARIABLE".into()),
        };
        let error = resolve(&missing).unwrap_err().to_string();
        assert!(error.starts_with("environment variable SKYWEAVE_TEST_UNSET_VARIABLE is not set"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
