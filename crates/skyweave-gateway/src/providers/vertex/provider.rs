//! `provider = "vertex"`: Google Vertex AI.
//!
//! Two modes. `gemini` (default): `generateContent` and
//! `streamGenerateContent?alt=sse` on
//! `{endpoint}/v1/projects/{project}/locations/{region}/publishers/google/models/{model}`,
//! translated by `gemini.rs`. `openai`: Vertex's OpenAI-compatible endpoint
//! `{endpoint}/v1/projects/{project}/locations/{region}/endpoints/openapi/chat/completions`
//! for models served that way (self-deployed open models, partner models).
//! Both authenticate with an OAuth 2.0 bearer token (`skyweave_cloud::google_credentials`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use rand::Rng;
use serde_json::json;
use skyweave_core::estate::{Deployment, GoogleCredentials, VertexMode};
use skyweave_core::failure::FailureKind;

use super::gemini::{self, StreamTranslator, TranslateError};
use crate::providers::openai_compat::{self, Dialect};
use crate::providers::translate;
use crate::providers::{
    ChatRequest, ChatResponse, ChunkStream, EmbeddingsRequest, EmbeddingsResponse, Provider,
    StreamChunk, UpstreamError,
};
use crate::sse::SseParser;
use crate::upstream::{parse_endpoint, BodyStream, Endpoint, HttpClient, UpstreamResponse};
use skyweave_cloud::google_credentials::GoogleTokens;

pub(crate) struct Vertex {
    client: HttpClient,
    mode: VertexMode,
    model: String,
    generate_url: Endpoint,
    stream_url: Endpoint,
    count_tokens_url: Endpoint,
    openai_url: Endpoint,
    tokens: Arc<GoogleTokens>,
}

impl Vertex {
    pub(crate) fn new(
        deployment: &Deployment,
        endpoint: &str,
        project: &str,
        model: &str,
        mode: VertexMode,
        credentials: GoogleCredentials,
    ) -> Vertex {
        let location = &deployment.region;
        let base = format!("{endpoint}/v1/projects/{project}/locations/{location}");
        let model_base = format!("{base}/publishers/google/models/{model}");
        Vertex {
            client: HttpClient::new(&deployment.timeouts),
            mode,
            model: model.to_string(),
            generate_url: parse_endpoint(format!("{model_base}:generateContent")),
            stream_url: parse_endpoint(format!("{model_base}:streamGenerateContent?alt=sse")),
            count_tokens_url: parse_endpoint(format!("{model_base}:countTokens")),
            openai_url: parse_endpoint(format!("{base}/endpoints/openapi/chat/completions")),
            tokens: Arc::new(GoogleTokens::new(credentials)),
        }
    }
}

async fn bearer(tokens: &GoogleTokens) -> Result<String, UpstreamError> {
    let token = tokens
        .token()
        .await
        .map_err(|error| UpstreamError::new(FailureKind::DeploymentConfig, error.to_string()))?;
    Ok(token.value().to_string())
}

async fn post_json(
    client: &HttpClient,
    url: &Endpoint,
    token: &str,
    body: Bytes,
) -> Result<UpstreamResponse, UpstreamError> {
    let request = client.post(url).json(body).bearer_auth(token);
    let response = request.send().await.map_err(openai_compat::transport_error)?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let body = openai_compat::read_body(response).await.unwrap_or_default();
    Err(gemini::classify_error(status, &body))
}

fn completion_id() -> (String, u64) {
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (format!("chatcmpl-vertex{:016x}", rand::thread_rng().gen::<u64>()), created)
}

impl Provider for Vertex {
    fn chat(
        &self,
        request: &ChatRequest,
    ) -> BoxFuture<'static, Result<ChatResponse, UpstreamError>> {
        let client = self.client.clone();
        let tokens = self.tokens.clone();
        let model = self.model.clone();
        let stream = request.stream;
        if self.mode == VertexMode::OpenAiCompatible {
            let body = openai_compat::chat_body(&request.body, Some(&self.model), stream, true);
            let url = self.openai_url.clone();
            return Box::pin(async move {
                let token = bearer(&tokens).await?;
                let request = client.post(&url).json(body).bearer_auth(&token);
                openai_compat::send_chat(request, stream, Dialect::OpenAi).await
            });
        }
        let translated = translate::tree(&request.body).and_then(gemini::to_gemini);
        let url = if stream { self.stream_url.clone() } else { self.generate_url.clone() };
        Box::pin(async move {
            let body = translated.map_err(|error| error.into_invalid_request(gemini::PROTOCOL))?;
            let body = Bytes::from(serde_json::to_vec(&body).expect("JSON serializes"));
            let bearer = bearer(&tokens).await?;
            let response = post_json(&client, &url, &bearer, body).await?;
            let (id, created) = completion_id();
            if stream {
                let translator = StreamTranslator::new(&model, &id, created);
                return Ok(ChatResponse::Stream(sse_stream(response, translator)));
            }
            let bytes = openai_compat::read_body(response).await?;
            if let Some(blocked) = gemini::blocked(&bytes) {
                return Err(blocked);
            }
            let (completion, usage) = gemini::from_gemini(&bytes, &model, &id, created)
                .map_err(|error| error.into_protocol_error(gemini::PROTOCOL))?;
            Ok(ChatResponse::Complete {
                body: Bytes::from(completion.to_string()),
                usage: Some(usage),
            })
        })
    }

    fn embeddings(
        &self,
        _request: &EmbeddingsRequest,
    ) -> BoxFuture<'static, Result<EmbeddingsResponse, UpstreamError>> {
        Box::pin(async {
            Err(TranslateError {
                message: "embeddings are not served by skyweave's vertex provider yet; use an \
                          openai, azure_openai, bedrock or sim deployment for this model"
                    .into(),
                param: Some("model".into()),
            }
            .into_invalid_request(gemini::PROTOCOL))
        })
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let client = self.client.clone();
        let tokens = self.tokens.clone();
        let url = self.count_tokens_url.clone();
        let mode = self.mode;
        Box::pin(async move {
            let bearer = bearer(&tokens).await?;
            if mode == VertexMode::OpenAiCompatible {
                return Ok(());
            }
            // countTokens is free and proves the project, region, model and token.
            let body = json!({ "contents": [{ "role": "user", "parts": [{ "text": "ping" }] }] });
            post_json(&client, &url, &bearer, Bytes::from(body.to_string())).await.map(drop)
        })
    }
}

struct StreamState {
    body: BodyStream,
    parser: SseParser,
    translator: StreamTranslator,
    pending: VecDeque<StreamChunk>,
    finished: bool,
}

/// Gemini streams are SSE without a terminator: the stream is complete when
/// the body ends after a finish reason; the translator tells.
fn sse_stream(response: UpstreamResponse, translator: StreamTranslator) -> ChunkStream {
    let state = StreamState {
        body: response.bytes_stream(),
        parser: SseParser::new(crate::upstream::MAX_BODY_BYTES),
        translator,
        pending: VecDeque::new(),
        finished: false,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(chunk) = state.pending.pop_front() {
                return Some((Ok(chunk), state));
            }
            if state.finished {
                return None;
            }
            let fail = |mut state: StreamState, error: UpstreamError| {
                state.finished = true;
                state.pending.clear();
                Some((Err(error), state))
            };
            match state.body.next().await {
                Some(Ok(bytes)) => {
                    let mut events = Vec::new();
                    if let Err(error) = state.parser.push(&bytes, &mut events) {
                        return fail(
                            state,
                            UpstreamError::new(FailureKind::Protocol, error.to_string()),
                        );
                    }
                    for event in events {
                        if let Some(error) = gemini::stream_error(&event.data) {
                            return fail(state, error);
                        }
                        match state.translator.on_event(&event.data) {
                            Ok(chunks) => state.pending.extend(chunks),
                            Err(error) => {
                                return fail(state, error.into_protocol_error(gemini::PROTOCOL))
                            }
                        }
                    }
                }
                Some(Err(error)) => {
                    let error = UpstreamError::new(
                        FailureKind::StreamCut,
                        format!("the Vertex stream was cut: {error}"),
                    );
                    return fail(state, error);
                }
                None => {
                    if state.parser.has_partial() {
                        let error = UpstreamError::new(
                            FailureKind::StreamCut,
                            "the Vertex stream ended inside an event",
                        );
                        return fail(state, error);
                    }
                    match state.translator.finish() {
                        Ok(chunks) => {
                            state.pending.extend(chunks);
                            state.finished = true;
                        }
                        Err(error) => return fail(state, error.into_stream_cut(gemini::PROTOCOL)),
                    }
                }
            }
        }
    }))
}
