//! `provider = "azure_openai"`: Azure OpenAI deployments.
//!
//! `POST {endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...`
//! (and `/embeddings`), authenticated with the `api-key` header or, for
//! Entra ID, `Authorization: Bearer {token}`. The model is named by the
//! deployment in the URL, so the body's `model` is not sent. Azure's error
//! shapes, including the content filter's, are classified in
//! `openai_compat::classify`.

use futures::future::BoxFuture;
use skyweave_core::config::MIN_AZURE_STREAM_USAGE_VERSION;
use skyweave_core::estate::{AuthScheme, Deployment};

use super::openai_compat::{self, Dialect};
use super::{
    ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, Provider, UpstreamError,
};
use crate::secrets::Secret;
use crate::upstream::{parse_endpoint, Endpoint, HttpClient, UpstreamRequest};

pub(crate) struct AzureOpenAi {
    client: HttpClient,
    chat_url: Endpoint,
    embeddings_url: Endpoint,
    scheme: AuthScheme,
    secret: Secret,
    /// The API version accepts `stream_options` (2024-09-01 and later).
    stream_usage: bool,
}

impl AzureOpenAi {
    pub(crate) fn new(
        deployment: &Deployment,
        endpoint: &str,
        azure_deployment: &str,
        api_version: &str,
        scheme: AuthScheme,
        secret: Secret,
    ) -> AzureOpenAi {
        let base = format!("{endpoint}/openai/deployments/{azure_deployment}");
        AzureOpenAi {
            client: HttpClient::new(&deployment.timeouts),
            chat_url: parse_endpoint(format!("{base}/chat/completions?api-version={api_version}")),
            embeddings_url: parse_endpoint(format!("{base}/embeddings?api-version={api_version}")),
            scheme,
            secret,
            stream_usage: api_version >= MIN_AZURE_STREAM_USAGE_VERSION,
        }
    }

    fn post(&self, url: &Endpoint, body: bytes::Bytes) -> UpstreamRequest {
        let request = self.client.post(url).json(body);
        match self.scheme {
            AuthScheme::ApiKey => request
                .secret_header(http::HeaderName::from_static("api-key"), &self.secret.value()),
            AuthScheme::BearerToken => request.bearer_auth(&self.secret.value()),
        }
    }
}

impl Provider for AzureOpenAi {
    fn chat(
        &self,
        request: &ChatRequest,
    ) -> BoxFuture<'static, Result<ChatResponse, UpstreamError>> {
        let body = openai_compat::chat_body(&request.body, None, request.stream, self.stream_usage);
        let http = self.post(&self.chat_url, body);
        Box::pin(openai_compat::send_chat(http, request.stream, Dialect::Azure))
    }

    fn embeddings(
        &self,
        request: &EmbeddingsRequest,
    ) -> BoxFuture<'static, Result<EmbeddingsResponse, UpstreamError>> {
        let body = openai_compat::embeddings_body(&request.body, None);
        let http = self.post(&self.embeddings_url, body);
        Box::pin(openai_compat::send_embeddings(http, Dialect::Azure))
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), UpstreamError>> {
        // Azure's data plane has no cheap per-deployment GET; a one-token
        // completion is the smallest request that proves the deployment works.
        let body = bytes::Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"ping"}],"max_tokens":1}"#,
        );
        let http = self.post(&self.chat_url, body);
        Box::pin(async move { openai_compat::send(http, Dialect::Azure).await.map(drop) })
    }
}
