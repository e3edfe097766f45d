//! Credentials from each cloud's standard sources, shared by the serving
//! plane (Bedrock, Vertex AI) and the data plane (S3, GCS):
//!
//! - [`aws_credentials`]: the AWS chain (environment, profile files, web
//!   identity through STS, container endpoint), refreshed before expiry.
//! - [`google_credentials`]: OAuth 2.0 access tokens from a service-account
//!   key, the metadata server or a command.

pub mod aws_credentials;
pub mod google_credentials;
