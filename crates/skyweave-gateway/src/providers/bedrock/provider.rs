//! `provider = "bedrock"`: AWS Bedrock Runtime.
//!
//! Chat goes to `POST /model/{modelId}/converse` and `/converse-stream`,
//! embeddings to `POST /model/{modelId}/invoke` (Titan and Cohere embedding
//! models). Every request is signed with AWS Signature Version 4 by the
//! maintained `aws-sigv4` crate, with credentials from the standard sources
//! (`skyweave_cloud::aws_credentials`). Requests and responses are translated by
//! `converse.rs`; the binary event stream is decoded by `eventstream.rs`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use base64::prelude::{Engine as _, BASE64_STANDARD};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use rand::Rng;
use serde_json::{json, Map, Value};
use skyweave_core::estate::Deployment;
use skyweave_core::failure::FailureKind;

use super::converse::{self, StreamTranslator, TranslateError};
use super::eventstream::Decoder;
use crate::providers::{openai_compat, translate};
use crate::providers::{
    ChatRequest, ChatResponse, ChunkStream, EmbeddingsRequest, EmbeddingsResponse, Provider,
    StreamChunk, UpstreamError, Usage,
};
use crate::upstream::{
    parse_endpoint, BodyStream, Endpoint, HttpClient, UpstreamRequest, UpstreamResponse,
};
use skyweave_cloud::aws_credentials::AwsCredentials;

pub(crate) struct Bedrock {
    client: HttpClient,
    converse_url: Endpoint,
    stream_url: Endpoint,
    invoke_url: Endpoint,
    model_id: String,
    region: String,
    credentials: Arc<AwsCredentials>,
}

/// Characters kept as they are in a path segment (RFC 3986 unreserved); the
/// AWS SDKs encode everything else, `:` of model ids included.
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len() * 3);
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Bedrock {
    pub(crate) fn new(
        deployment: &Deployment,
        endpoint: &str,
        model_id: &str,
        profile: Option<String>,
    ) -> Bedrock {
        let base = format!("{endpoint}/model/{}", encode_segment(model_id));
        Bedrock {
            client: HttpClient::new(&deployment.timeouts),
            converse_url: parse_endpoint(format!("{base}/converse")),
            stream_url: parse_endpoint(format!("{base}/converse-stream")),
            invoke_url: parse_endpoint(format!("{base}/invoke")),
            model_id: model_id.to_string(),
            region: deployment.region.clone(),
            credentials: Arc::new(AwsCredentials::new(profile, &deployment.region)),
        }
    }

    fn context(&self) -> Context {
        Context {
            client: self.client.clone(),
            credentials: self.credentials.clone(),
            region: self.region.clone(),
            model_id: self.model_id.clone(),
        }
    }
}

/// What an in-flight request needs, owned so the future is `'static`.
#[derive(Clone)]
struct Context {
    client: HttpClient,
    credentials: Arc<AwsCredentials>,
    region: String,
    model_id: String,
}

impl Context {
    async fn send(
        &self,
        url: &Endpoint,
        body: Bytes,
        accept: &str,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let credentials = self.credentials.get().await.map_err(|error| {
            UpstreamError::new(FailureKind::DeploymentConfig, error.to_string())
        })?;
        let request = self.signed(&credentials, url, body, accept)?;
        let response = request.send().await.map_err(openai_compat::transport_error)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let error_type = response.header("x-amzn-errortype").map(str::to_string);
        let body = openai_compat::read_body(response).await.unwrap_or_default();
        Err(converse::classify_error(status, error_type.as_deref(), &body))
    }

    fn signed(
        &self,
        credentials: &Credentials,
        url: &Endpoint,
        body: Bytes,
        accept: &str,
    ) -> Result<UpstreamRequest, UpstreamError> {
        let signing_failed = |error: &dyn std::fmt::Display| {
            UpstreamError::new(
                FailureKind::DeploymentConfig,
                format!("the request could not be signed with SigV4: {error}"),
            )
        };
        let headers = [("content-type", "application/json"), ("accept", accept)];
        let identity = credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("bedrock")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| signing_failed(&e))?
            .into();
        let url_text = url.uri().to_string();
        let signable = SignableRequest::new(
            "POST",
            &url_text,
            headers.iter().copied(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| signing_failed(&e))?;
        let (instructions, _signature) =
            sign(signable, &params).map_err(|e| signing_failed(&e))?.into_parts();
        let mut request = self.client.post(url).json(body).header(
            http::header::ACCEPT,
            http::HeaderValue::from_str(accept).map_err(|e| signing_failed(&e))?,
        );
        for (name, value) in instructions.headers() {
            let name =
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| signing_failed(&e))?;
            let mut value = http::HeaderValue::from_str(value).map_err(|e| signing_failed(&e))?;
            // Never indexed by HTTP/2 header compression, never in debug output.
            value.set_sensitive(true);
            request = request.header(name, value);
        }
        Ok(request)
    }
}

async fn json_answer(response: UpstreamResponse, what: &str) -> Result<Value, UpstreamError> {
    let bytes = openai_compat::read_body(response).await?;
    serde_json::from_slice(&bytes).map_err(|e| protocol_error(what, e))
}

fn protocol_error(what: &str, error: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::new(FailureKind::Protocol, format!("{what}: {error}"))
}

fn completion_id() -> (String, u64) {
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (format!("chatcmpl-bedrock{:016x}", rand::thread_rng().gen::<u64>()), created)
}

impl Provider for Bedrock {
    fn chat(
        &self,
        request: &ChatRequest,
    ) -> BoxFuture<'static, Result<ChatResponse, UpstreamError>> {
        let context = self.context();
        let translated = translate::tree(&request.body).and_then(converse::to_converse);
        let url = if request.stream { self.stream_url.clone() } else { self.converse_url.clone() };
        let stream = request.stream;
        Box::pin(async move {
            let body =
                translated.map_err(|error| error.into_invalid_request(converse::PROTOCOL))?;
            let body = Bytes::from(serde_json::to_vec(&body).expect("JSON serializes"));
            let (id, created) = completion_id();
            if stream {
                let response =
                    context.send(&url, body, "application/vnd.amazon.eventstream").await?;
                let translator = StreamTranslator::new(&context.model_id, &id, created);
                return Ok(ChatResponse::Stream(event_stream(response, translator)));
            }
            let response = context.send(&url, body, "application/json").await?;
            let bytes = openai_compat::read_body(response).await?;
            let (completion, usage) =
                converse::from_converse(&bytes, &context.model_id, &id, created)
                    .map_err(|error| error.into_protocol_error(converse::PROTOCOL))?;
            Ok(ChatResponse::Complete {
                body: Bytes::from(completion.to_string()),
                usage: Some(usage),
            })
        })
    }

    fn embeddings(
        &self,
        request: &EmbeddingsRequest,
    ) -> BoxFuture<'static, Result<EmbeddingsResponse, UpstreamError>> {
        let context = self.context();
        let url = self.invoke_url.clone();
        let body = request.body.clone();
        Box::pin(async move {
            let body = translate::tree(&body)
                .map_err(|error| error.into_invalid_request(converse::PROTOCOL))?;
            embeddings(&context, &url, body).await
        })
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let context = self.context();
        let url = self.converse_url.clone();
        Box::pin(async move {
            let body = json!({
                "messages": [{ "role": "user", "content": [{ "text": "ping" }] }],
                "inferenceConfig": { "maxTokens": 1 },
            });
            context.send(&url, Bytes::from(body.to_string()), "application/json").await.map(drop)
        })
    }
}

struct StreamState {
    body: BodyStream,
    decoder: Decoder,
    translator: StreamTranslator,
    pending: VecDeque<StreamChunk>,
    finished: bool,
}

/// Decodes the event stream and translates each event into OpenAI chunks.
/// Ends cleanly only after the translator saw the message end; a cut, a
/// frame with a bad CRC or an exception message ends it with an error.
fn event_stream(response: UpstreamResponse, translator: StreamTranslator) -> ChunkStream {
    let state = StreamState {
        body: response.bytes_stream(),
        decoder: Decoder::new(),
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
                    let messages = match state.decoder.push(&bytes) {
                        Ok(messages) => messages,
                        Err(error) => {
                            return fail(
                                state,
                                protocol_error("a Bedrock event-stream frame is invalid", error),
                            )
                        }
                    };
                    for message in messages {
                        if let Some(error) = converse::stream_error(&message) {
                            return fail(state, error);
                        }
                        let event_type = message.event_type().unwrap_or("").to_string();
                        match state.translator.on_event(&event_type, &message.payload) {
                            Ok(chunks) => state.pending.extend(chunks),
                            Err(error) => {
                                return fail(state, error.into_protocol_error(converse::PROTOCOL))
                            }
                        }
                    }
                }
                Some(Err(error)) => {
                    let error = UpstreamError::new(
                        FailureKind::StreamCut,
                        format!("the Bedrock stream was cut: {error}"),
                    );
                    return fail(state, error);
                }
                None => {
                    if state.translator.is_finished() && !state.decoder.has_partial() {
                        state.finished = true;
                        continue;
                    }
                    let error = UpstreamError::new(
                        FailureKind::StreamCut,
                        "the Bedrock stream ended before its messageStop and metadata events",
                    );
                    return fail(state, error);
                }
            }
        }
    }))
}

/// Embeddings through InvokeModel: Titan embeds one text per call, Cohere a
/// batch. The answer is shaped like OpenAI's.
async fn embeddings(
    context: &Context,
    url: &Endpoint,
    body: &Map<String, Value>,
) -> Result<EmbeddingsResponse, UpstreamError> {
    let invalid = |message: &str, param: &str| {
        TranslateError { message: message.to_string(), param: Some(param.to_string()) }
            .into_invalid_request(converse::PROTOCOL)
    };
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                invalid("Bedrock embedding models take text, not token arrays", "input")
            })?,
        _ => return Err(invalid("`input` must be a string or an array of strings", "input")),
    };
    let base64 = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return Err(invalid("`encoding_format` must be float or base64", "encoding_format"))
        }
    };
    let dimensions = body.get("dimensions").and_then(Value::as_u64);
    let model = context.model_id.as_str();
    let (vectors, prompt_tokens): (Vec<Vec<f64>>, u64) = if model.contains("titan-embed") {
        let calls = inputs.iter().map(|text| {
            let mut request = json!({ "inputText": text });
            if let Some(dimensions) = dimensions {
                request["dimensions"] = json!(dimensions);
            }
            async move {
                let response =
                    context.send(url, Bytes::from(request.to_string()), "application/json").await?;
                let answer = json_answer(response, "the Titan answer is not JSON").await?;
                let vector = floats(answer.get("embedding"))
                    .ok_or_else(|| protocol_error("the Titan answer", "no `embedding` array"))?;
                let tokens = answer.get("inputTextTokenCount").and_then(Value::as_u64).unwrap_or(0);
                Ok::<_, UpstreamError>((vector, tokens))
            }
        });
        let results = futures::future::try_join_all(calls).await?;
        let tokens = results.iter().map(|(_, t)| *t).sum();
        (results.into_iter().map(|(v, _)| v).collect(), tokens)
    } else if model.contains("cohere.embed") {
        if dimensions.is_some() {
            return Err(invalid(
                "Cohere embedding models on Bedrock have a fixed dimension",
                "dimensions",
            ));
        }
        let request = json!({ "texts": inputs, "input_type": "search_document" });
        let response =
            context.send(url, Bytes::from(request.to_string()), "application/json").await?;
        let answer = json_answer(response, "the Cohere answer is not JSON").await?;
        let vectors = answer
            .get("embeddings")
            .and_then(|e| e.get("float").or(Some(e)))
            .and_then(Value::as_array)
            .and_then(|rows| rows.iter().map(|row| floats(Some(row))).collect::<Option<Vec<_>>>())
            .ok_or_else(|| protocol_error("the Cohere answer", "no `embeddings` array"))?;
        let tokens: u64 = inputs.iter().map(|t| (t.len() / 4 + 1) as u64).sum();
        (vectors, tokens)
    } else {
        return Err(invalid(
            "this Bedrock model is not an embedding model skyweave knows (Titan or Cohere embed)",
            "model",
        ));
    };
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> =
                    vector.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
                Value::String(BASE64_STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let answer = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens },
    });
    Ok(EmbeddingsResponse {
        body: Bytes::from(answer.to_string()),
        usage: Some(Usage { prompt_tokens, completion_tokens: 0 }),
    })
}

fn floats(value: Option<&Value>) -> Option<Vec<f64>> {
    value?.as_array()?.iter().map(Value::as_f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_encoded_like_the_aws_sdks_do() {
        assert_eq!(
            encode_segment("anthropic.claude-3-haiku-20240307-v1:0"),
            "anthropic.claude-3-haiku-20240307-v1%3A0"
        );
        assert_eq!(encode_segment("us.amazon.nova-pro-v1:0"), "us.amazon.nova-pro-v1%3A0");
    }
}
