//! One trait for every way of talking to a model deployment, one file per
//! provider. The router and the failover loop see only [`Provider`]; wire
//! formats, URLs and credentials stay inside the provider's file.

mod azure_openai;
mod bedrock;
mod openai;
mod openai_compat;
mod sim;
mod translate;
mod vertex;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::Stream;
use serde_json::Value;
use skyweave_core::estate::{Deployment, ProviderSpec};
use skyweave_core::failure::FailureKind;

use crate::body::RequestBody;
use crate::secrets::{resolve, Secret, SecretError};

/// A chat completion request as the client sent it, already checked for the
/// fields the gateway interprets. Every other field passes through unchanged.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub body: Arc<RequestBody>,
    pub stream: bool,
    /// The client asked for the final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    pub estimated_prompt_tokens: u32,
}

#[derive(Debug, Clone)]
pub struct EmbeddingsRequest {
    pub body: Arc<RequestBody>,
    pub estimated_prompt_tokens: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<StreamChunk, UpstreamError>> + Send>>;

pub enum ChatResponse {
    /// An OpenAI `chat.completion` JSON body.
    Complete { body: Bytes, usage: Option<Usage> },
    /// `chat.completion.chunk` payloads. The stream ends (`None`) only when
    /// the upstream finished cleanly; a cut ends it with an error.
    Stream(ChunkStream),
}

/// One `chat.completion.chunk`, serialized as JSON.
#[derive(Debug, Clone)]
pub struct StreamChunk {
    pub data: Bytes,
    /// Usage, when the chunk carries it.
    pub usage: Option<Usage>,
    /// The chunk carries only usage (`choices: []`): it is sent to the client
    /// only if the client asked for usage.
    pub usage_only: bool,
}

pub struct EmbeddingsResponse {
    pub body: Bytes,
    pub usage: Option<Usage>,
}

/// An upstream attempt that did not produce a response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind_str}: {message}", kind_str = .kind.as_str())]
pub struct UpstreamError {
    pub kind: FailureKind,
    /// HTTP status the upstream answered with, if it answered.
    pub status: Option<u16>,
    /// Human-readable, free of secrets.
    pub message: String,
    pub retry_after: Option<Duration>,
    /// The upstream's OpenAI-shaped `error` object, for errors that go back to
    /// the client as they are (invalid request, content filter).
    pub client_error: Option<Value>,
}

impl UpstreamError {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> UpstreamError {
        UpstreamError {
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
            client_error: None,
        }
    }
}

/// The way one deployment is spoken to.
pub trait Provider: Send + Sync {
    fn chat(
        &self,
        request: &ChatRequest,
    ) -> BoxFuture<'static, Result<ChatResponse, UpstreamError>>;

    fn embeddings(
        &self,
        request: &EmbeddingsRequest,
    ) -> BoxFuture<'static, Result<EmbeddingsResponse, UpstreamError>>;

    /// A cheap request that tells whether the deployment answers at all.
    fn probe(&self) -> BoxFuture<'static, Result<(), UpstreamError>>;

    /// Responses are made up by the `sim` provider, not by a model.
    fn is_simulated(&self) -> bool {
        false
    }
}

/// Builds the provider for a deployment, resolving its credential, and
/// returns it with its secret, if it has one (shared with the provider, so
/// refreshing it updates the provider). `started` is when the gateway started
/// (the simulator's outage clock).
pub fn build(
    deployment: &Deployment,
    started: Instant,
) -> Result<(Arc<dyn Provider>, Option<Secret>), SecretError> {
    let secret: Option<Secret> = match deployment.provider.credential() {
        Some(credential) => Some(resolve(credential)?),
        None => None,
    };
    let provider: Arc<dyn Provider> = match &deployment.provider {
        ProviderSpec::OpenAi { endpoint, .. } => {
            Arc::new(openai::OpenAi::new(deployment, endpoint, secret.clone()))
        }
        ProviderSpec::AzureOpenAi { endpoint, deployment: azure_deployment, api_version, auth } => {
            Arc::new(azure_openai::AzureOpenAi::new(
                deployment,
                endpoint,
                azure_deployment,
                api_version,
                auth.scheme,
                secret.clone().expect("azure_openai always has a credential"),
            ))
        }
        ProviderSpec::Sim(spec) => Arc::new(sim::Sim::new(deployment, spec.clone(), started)),
        ProviderSpec::Bedrock { endpoint, model_id, profile } => {
            Arc::new(bedrock::Bedrock::new(deployment, endpoint, model_id, profile.clone()))
        }
        ProviderSpec::Vertex { endpoint, project, model, mode, credentials } => Arc::new(
            vertex::Vertex::new(deployment, endpoint, project, model, *mode, credentials.clone()),
        ),
    };
    Ok((provider, secret))
}
