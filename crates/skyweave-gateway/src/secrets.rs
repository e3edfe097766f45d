//! Secrets are named in the estate file by reference and resolved here, once,
//! when the gateway starts. A [`Secret`] never prints its value.

use std::fmt;

use skyweave_core::estate::{Credential, SecretSource};

#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{source_desc} is not set or empty; set it to the key (the estate file names it, it never holds it)", source_desc = .0)]
    Missing(SecretSource),
    #[error("{source_desc} cannot be read: {reason}", source_desc = .source_ref)]
    Unreadable {
        source_ref: SecretSource,
        reason: String,
    },
    #[error("{source_desc} holds a value that is not a valid HTTP header value (control characters or non-ASCII)", source_desc = .0)]
    Invalid(SecretSource),
}

pub fn resolve(credential: &Credential) -> Result<Secret, SecretError> {
    let value = match &credential.source {
        SecretSource::Env(name) => std::env::var(name).unwrap_or_default(),
        SecretSource::File(path) => {
            std::fs::read_to_string(path).map_err(|error| SecretError::Unreadable {
                source_ref: credential.source.clone(),
                reason: error.kind().to_string(),
            })?
        }
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(SecretError::Missing(credential.source.clone()));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(SecretError::Invalid(credential.source.clone()));
    }
    Ok(Secret(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skyweave_core::estate::AuthScheme;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret("sk-very-secret".into());
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn file_secrets_are_trimmed_and_errors_name_only_the_source() {
        let dir = std::env::temp_dir().join(format!("skyweave-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "sk-from-file\n").unwrap();
        let credential = Credential {
            scheme: AuthScheme::ApiKey,
            source: SecretSource::File(path.clone()),
        };
        assert_eq!(resolve(&credential).unwrap().expose(), "sk-from-file");

        std::fs::write(&path, "bad\u{7}key").unwrap();
        let error = resolve(&credential).unwrap_err().to_string();
        assert!(error.contains("not a valid HTTP header value") && !error.contains("bad"));

        let missing = Credential {
            scheme: AuthScheme::ApiKey,
            source: SecretSource::Env("SKYWEAVE_TEST_UNSET_VARIABLE".into()),
        };
        let error = resolve(&missing).unwrap_err().to_string();
        assert!(error.starts_with("environment variable SKYWEAVE_TEST_UNSET_VARIABLE is not set"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
