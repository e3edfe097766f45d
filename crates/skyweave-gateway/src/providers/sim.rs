//! `provider = "sim"`: a simulated model deployment, for the demo, failure
//! drills and benchmarks. It answers in the OpenAI format after the
//! configured time to first token, streams at the configured tokens per
//! second, fails with 500 at `error_rate` and 429 (Retry-After: 1) at
//! `rate_limit_rate`, and answers 503 during its outage windows. Every
//! response is labelled: `system_fingerprint` is `skyweave-sim` and the
//! gateway adds `x-skyweave-simulated: true`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::prelude::{Engine as _, BASE64_STANDARD};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use rand::Rng;
use serde_json::{json, Value};
use skyweave_core::estate::{Deployment, SimSpec};
use skyweave_core::failure::FailureKind;

use super::{
    ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, Provider, StreamChunk,
    UpstreamError, Usage,
};

pub(crate) struct Sim {
    spec: SimSpec,
    started: Instant,
    model: String,
    words: Vec<String>,
}

impl Sim {
    pub(crate) fn new(deployment: &Deployment, spec: SimSpec, started: Instant) -> Sim {
        let intro = format!(
            "[simulated] Hello from {} on {} {}.",
            deployment.name, deployment.cloud, deployment.region
        );
        let mut words: Vec<String> = intro.split(' ').map(str::to_string).collect();
        let filler = ["This", "reply", "was", "generated", "by", "the", "skyweave", "simulator."];
        let mut index = 0;
        while words.len() < spec.output_tokens as usize {
            words.push(filler[index % filler.len()].to_string());
            index += 1;
        }
        words.truncate(spec.output_tokens as usize);
        Sim { spec, started, model: deployment.upstream_model.clone(), words }
    }

    /// The failure this request meets, if any.
    fn fault(&self) -> Option<UpstreamError> {
        let since_start = self.started.elapsed();
        if self.spec.outages.iter().any(|outage| outage.covers(since_start)) {
            let mut error = UpstreamError::new(FailureKind::Overloaded, "simulated outage (503)");
            error.status = Some(503);
            return Some(error);
        }
        let draw: f64 = rand::thread_rng().gen();
        if draw < self.spec.rate_limit_rate {
            let mut error =
                UpstreamError::new(FailureKind::RateLimited, "simulated rate limit (429)");
            error.status = Some(429);
            error.retry_after = Some(Duration::from_secs(1));
            return Some(error);
        }
        if draw < self.spec.rate_limit_rate + self.spec.error_rate {
            let mut error =
                UpstreamError::new(FailureKind::ServerError, "simulated server error (500)");
            error.status = Some(500);
            return Some(error);
        }
        None
    }

    fn reply_tokens(&self, request: &ChatRequest) -> usize {
        let limit = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|key| request.body.u64(key))
            .unwrap_or(u64::MAX);
        self.words.len().min(usize::try_from(limit.max(1)).unwrap_or(usize::MAX))
    }

    fn per_token(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.spec.tokens_per_second)
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn completion_id() -> String {
    format!("chatcmpl-sim{:016x}", rand::thread_rng().gen::<u64>())
}

impl Provider for Sim {
    fn chat(
        &self,
        request: &ChatRequest,
    ) -> BoxFuture<'static, Result<ChatResponse, UpstreamError>> {
        let fault = self.fault();
        let ttft = self.spec.time_to_first_token;
        let per_token = self.per_token();
        let tokens = self.reply_tokens(request);
        let words: Vec<String> = self.words[..tokens].to_vec();
        let finish_reason = if tokens < self.words.len() { "length" } else { "stop" };
        let model = self.model.clone();
        let usage = Usage {
            prompt_tokens: u64::from(request.estimated_prompt_tokens),
            completion_tokens: tokens as u64,
        };
        let stream = request.stream;
        Box::pin(async move {
            if let Some(error) = fault {
                return Err(error);
            }
            let id = completion_id();
            let created = unix_now();
            let usage_json = json!({
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total(),
            });
            if !stream {
                tokio::time::sleep(ttft + per_token * tokens as u32).await;
                let body = json!({
                    "id": id, "object": "chat.completion", "created": created, "model": model,
                    "system_fingerprint": "skyweave-sim",
                    "choices": [{
                        "index": 0,
                        "message": { "role": "assistant", "content": words.join(" ") },
                        "logprobs": null,
                        "finish_reason": finish_reason,
                    }],
                    "usage": usage_json,
                });
                return Ok(ChatResponse::Complete {
                    body: Bytes::from(body.to_string()),
                    usage: Some(usage),
                });
            }
            tokio::time::sleep(ttft).await;
            let (usage_id, usage_model) = (id.clone(), model.clone());
            let chunk = move |delta: Value, finish: Value| -> StreamChunk {
                let value = json!({
                    "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": "skyweave-sim",
                    "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
                });
                StreamChunk { data: Bytes::from(value.to_string()), usage: None, usage_only: false }
            };
            let first = chunk(json!({ "role": "assistant", "content": "" }), Value::Null);
            let last = chunk(json!({}), Value::String(finish_reason.into()));
            let usage_chunk = StreamChunk {
                data: Bytes::from(
                    json!({
                        "id": usage_id, "object": "chat.completion.chunk", "created": created,
                        "model": usage_model, "system_fingerprint": "skyweave-sim",
                        "choices": [], "usage": usage_json,
                    })
                    .to_string(),
                ),
                usage: Some(usage),
                usage_only: true,
            };
            let content =
                futures::stream::iter(words.into_iter().enumerate()).then(move |(i, word)| {
                    let chunk = chunk.clone();
                    async move {
                        if i > 0 {
                            tokio::time::sleep(per_token).await;
                        }
                        let text = if i == 0 { word } else { format!(" {word}") };
                        chunk(json!({ "content": text }), Value::Null)
                    }
                });
            let all = futures::stream::once(async move { first })
                .chain(content)
                .chain(futures::stream::iter([last, usage_chunk]))
                .map(Ok);
            Ok(ChatResponse::Stream(Box::pin(all)))
        })
    }

    fn embeddings(
        &self,
        request: &EmbeddingsRequest,
    ) -> BoxFuture<'static, Result<EmbeddingsResponse, UpstreamError>> {
        let fault = self.fault();
        // Each input's JSON text seeds its vector.
        let inputs: Vec<String> = match request.body.raw("input").map(serde_json::from_str) {
            Some(Ok(Value::Array(items))) => items.iter().map(Value::to_string).collect(),
            Some(Ok(other)) => vec![other.to_string()],
            _ => Vec::new(),
        };
        let dimensions = request
            .body
            .u64("dimensions")
            .map_or(self.spec.embedding_dimensions as usize, |d| d.clamp(1, 8192) as usize);
        let base64 = request.body.str("encoding_format").as_deref() == Some("base64");
        let ttft = self.spec.time_to_first_token;
        let model = self.model.clone();
        let prompt_tokens = u64::from(request.estimated_prompt_tokens);
        Box::pin(async move {
            if let Some(error) = fault {
                return Err(error);
            }
            tokio::time::sleep(ttft).await;
            let data: Vec<Value> = inputs
                .iter()
                .enumerate()
                .map(|(index, input)| {
                    let vector = embed(input, dimensions);
                    // As OpenAI does: little-endian f32s, base64-encoded.
                    let embedding = if base64 {
                        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                        Value::String(BASE64_STANDARD.encode(bytes))
                    } else {
                        json!(vector)
                    };
                    json!({ "object": "embedding", "index": index, "embedding": embedding })
                })
                .collect();
            let body = json!({
                "object": "list", "data": data, "model": model,
                "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens },
            });
            Ok(EmbeddingsResponse {
                body: Bytes::from(body.to_string()),
                usage: Some(Usage { prompt_tokens, completion_tokens: 0 }),
            })
        })
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), UpstreamError>> {
        let fault = self.fault();
        Box::pin(async move { fault.map_or(Ok(()), Err) })
    }

    fn is_simulated(&self) -> bool {
        true
    }
}

/// A deterministic unit vector derived from the text (FNV-1a seeded per
/// dimension), so equal inputs embed equally.
fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let mut vector: Vec<f32> = (0..dimensions)
        .map(|dimension| {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ dimension as u64;
            for byte in text.bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
            (hash % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
    vector.iter_mut().for_each(|x| *x /= norm);
    vector
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embed("hello", 16);
        assert_eq!(a, embed("hello", 16));
        assert_ne!(a, embed("hello!", 16));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
