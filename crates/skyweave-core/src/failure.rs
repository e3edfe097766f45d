//! What went wrong on an upstream attempt, and what the router does about it.
//!
//! As in pingora, an error carries where it came from and whether another
//! deployment may be tried. Providers classify their wire errors into a
//! [`FailureKind`]; the failover loop and the circuit breaker read only the
//! kind, never a wire format.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// TCP/TLS connection could not be established, or was reset before a
    /// response began.
    Connect,
    /// No response headers / first chunk within the first-token timeout.
    FirstTokenTimeout,
    /// The attempt's total time ran out.
    TotalTimeout,
    /// 429 or a provider's quota/throttling error.
    RateLimited,
    /// 408 from the upstream.
    UpstreamTimeout,
    /// A provider's explicit "overloaded" signal (503 and the like).
    Overloaded,
    /// 5xx.
    ServerError,
    /// The upstream refused the deployment's own credentials or access (401,
    /// 403), or does not know its path or model (404): a configuration
    /// problem of that deployment, not the caller's.
    DeploymentConfig,
    /// The upstream answered something that is not its protocol.
    Protocol,
    /// The stream ended without its terminator.
    StreamCut,
    /// The request itself was refused (400, 413, 422 ...): another
    /// deployment would refuse it too.
    InvalidRequest,
    /// The provider's content filter refused the prompt or the completion.
    ContentFiltered,
    /// This deployment's protocol cannot express the request (say `n: 2` on
    /// Bedrock); another deployment of the model may. If none can, the
    /// caller gets the refusal as a 400.
    Unsupported,
}

impl FailureKind {
    /// May the request be tried on another deployment?
    pub fn is_retryable(self) -> bool {
        !matches!(self, FailureKind::InvalidRequest | FailureKind::ContentFiltered)
    }

    /// Does this failure count against the deployment's health?
    pub fn counts_against_deployment(self) -> bool {
        // A 429 is the deployment saying it is full, not broken: capacity
        // accounting handles it through Retry-After, the breaker does not.
        !matches!(
            self,
            FailureKind::InvalidRequest
                | FailureKind::ContentFiltered
                | FailureKind::RateLimited
                | FailureKind::Unsupported
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::FirstTokenTimeout => "first_token_timeout",
            FailureKind::TotalTimeout => "total_timeout",
            FailureKind::RateLimited => "rate_limited",
            FailureKind::UpstreamTimeout => "upstream_timeout",
            FailureKind::Overloaded => "overloaded",
            FailureKind::ServerError => "server_error",
            FailureKind::DeploymentConfig => "deployment_config",
            FailureKind::Protocol => "protocol",
            FailureKind::StreamCut => "stream_cut",
            FailureKind::InvalidRequest => "invalid_request",
            FailureKind::ContentFiltered => "content_filtered",
            FailureKind::Unsupported => "unsupported",
        }
    }

    /// Classifies an HTTP status from an upstream that speaks HTTP semantics.
    pub fn from_status(status: u16) -> Option<FailureKind> {
        Some(match status {
            200..=299 => return None,
            408 => FailureKind::UpstreamTimeout,
            429 => FailureKind::RateLimited,
            // The gateway builds the upstream path itself: a 404 there means
            // the deployment's endpoint, Azure deployment name or upstream
            // model is wrong, not that the caller asked for something absent.
            401 | 403 | 404 => FailureKind::DeploymentConfig,
            // Redirects are not followed and informational answers are not
            // final: either way the upstream did not speak the protocol.
            100..=199 | 300..=399 => FailureKind::Protocol,
            503 | 529 => FailureKind::Overloaded,
            500..=599 => FailureKind::ServerError,
            _ => FailureKind::InvalidRequest,
        })
    }
}

/// Parses a `Retry-After` value given in seconds (the HTTP-date form is
/// accepted by the caller's HTTP stack only if it converts it to seconds).
pub fn parse_retry_after_seconds(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && (0.0..86_400.0).contains(&seconds))
        .then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classification() {
        let check = |status: u16, expected: Option<FailureKind>| {
            assert_eq!(FailureKind::from_status(status), expected, "status {status}");
        };
        check(200, None);
        check(400, Some(FailureKind::InvalidRequest));
        check(404, Some(FailureKind::DeploymentConfig));
        check(422, Some(FailureKind::InvalidRequest));
        check(301, Some(FailureKind::Protocol));
        check(401, Some(FailureKind::DeploymentConfig));
        check(408, Some(FailureKind::UpstreamTimeout));
        check(429, Some(FailureKind::RateLimited));
        check(500, Some(FailureKind::ServerError));
        check(502, Some(FailureKind::ServerError));
        check(503, Some(FailureKind::Overloaded));
    }

    #[test]
    fn retryability() {
        assert!(FailureKind::RateLimited.is_retryable());
        assert!(!FailureKind::RateLimited.counts_against_deployment());
        assert!(FailureKind::DeploymentConfig.counts_against_deployment());
        assert!(!FailureKind::InvalidRequest.is_retryable());
        assert!(!FailureKind::ContentFiltered.is_retryable());
    }

    #[test]
    fn retry_after() {
        assert_eq!(parse_retry_after_seconds("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after_seconds(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after_seconds("-1"), None);
        assert_eq!(parse_retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after_seconds("1e300"), None);
    }
}
