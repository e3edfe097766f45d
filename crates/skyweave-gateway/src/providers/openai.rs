//! `provider = "openai"`: OpenAI itself and every OpenAI-compatible server
//! (vLLM, SGLang, TGI, llama.cpp server). The endpoint is the base URL in the
//! OpenAI SDK convention (ending in `/v1`); the key, if any, is sent as
//! `Authorization: Bearer`.

use futures::future::BoxFuture;
use skyweave_core::estate::Deployment;

use super::openai_compat::{self, Dialect};
use super::{
    ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, Provider, UpstreamError,
};
use crate::secrets::Secret;
use crate::upstream::{parse_endpoint, Endpoint, HttpClient, UpstreamRequest};

pub(crate) struct OpenAi {
    client: HttpClient,
    chat_url: Endpoint,
    embeddings_url: Endpoint,
    models_url: Endpoint,
    upstream_model: String,
    key: Option<Secret>,
}

impl OpenAi {
    pub(crate) fn new(deployment: &Deployment, endpoint: &str, key: Option<Secret>) -> OpenAi {
        OpenAi {
            client: HttpClient::new(&deployment.timeouts),
            chat_url: parse_endpoint(format!("{endpoint}/chat/completions")),
            embeddings_url: parse_endpoint(format!("{endpoint}/embeddings")),
            models_url: parse_endpoint(format!("{endpoint}/models")),
            upstream_model: deployment.upstream_model.clone(),
            key,
        }
    }

    fn post(&self, url: &Endpoint, body: bytes::Bytes) -> UpstreamRequest {
        let request = self.client.post(url).json(body);
        match &self.key {
            Some(key) => request.bearer_auth(&key.value()),
            None => request,
        }
    }
}

impl Provider for OpenAi {
    fn chat(
        &self,
        request: &ChatRequest,
    ) -> BoxFuture<'static, Result<ChatResponse, UpstreamError>> {
        let body = openai_compat::chat_body(
            &request.body,
            Some(&self.upstream_model),
            request.stream,
            true,
        );
        let http = self.post(&self.chat_url, body);
        let stream = request.stream;
        Box::pin(openai_compat::send_chat(http, stream, Dialect::OpenAi))
    }

    fn embeddings(
        &self,
        request: &EmbeddingsRequest,
    ) -> BoxFuture<'static, Result<EmbeddingsResponse, UpstreamError>> {
        let body = openai_compat::embeddings_body(&request.body, Some(&self.upstream_model));
        let http = self.post(&self.embeddings_url, body);
        Box::pin(openai_compat::send_embeddings(http, Dialect::OpenAi))
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let mut request = self.client.get(&self.models_url);
        if let Some(key) = &self.key {
            request = request.bearer_auth(&key.value());
        }
        Box::pin(async move { openai_compat::send(request, Dialect::OpenAi).await.map(drop) })
    }
}
