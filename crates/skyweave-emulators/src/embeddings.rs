//! `POST /v1/embeddings` and `POST /openai/deployments/{deployment}/embeddings`.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chat::body_error;
use crate::errors::{self, Operation};
use crate::server::{non_streaming, prepare};
use crate::tokens::{estimate_tokens, CowStr};
use crate::Shared;

/// Vector length when the request has no `dimensions`.
pub const DEFAULT_DIMENSIONS: usize = 8;
/// Largest `dimensions` accepted.
const MAX_DIMENSIONS: u64 = 8192;

#[derive(Deserialize)]
struct EmbeddingsRequest<'a> {
    #[serde(borrow)]
    model: Option<CowStr<'a>>,
    input: Option<Value>,
    dimensions: Option<u64>,
    #[serde(borrow)]
    encoding_format: Option<CowStr<'a>>,
}

/// One input to embed.
#[derive(Clone, Copy, Debug)]
enum Input<'v> {
    Text(&'v str),
    Tokens(&'v [Value]),
}

impl Input<'_> {
    fn seed(&self) -> u64 {
        const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h = FNV_OFFSET;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(FNV_PRIME);
            }
        };
        match self {
            Input::Text(s) => eat(s.as_bytes()),
            Input::Tokens(ts) => {
                eat(b"\x00tokens");
                for t in *ts {
                    eat(&t.as_u64().unwrap_or(0).to_le_bytes());
                }
            }
        }
        h
    }

    fn tokens(&self) -> u64 {
        match self {
            Input::Text(s) => estimate_tokens(s.chars().count()),
            Input::Tokens(ts) => ts.len() as u64,
        }
    }
}

/// Why `input` was refused.
#[derive(Debug)]
enum BadInput {
    Empty,
    Shape,
}

impl BadInput {
    fn into_response(self) -> Response {
        match self {
            BadInput::Empty => errors::invalid_request(
                "Invalid 'input': empty array. Expected an array with minimum length 1, but \
                 got an empty array instead.",
                Some("input"),
                Some("empty_array"),
            ),
            BadInput::Shape => errors::invalid_request(
                "Invalid 'input': expected a string, an array of strings, an array of \
                 integers (tokens) or an array of arrays of integers.",
                Some("input"),
                Some("invalid_type"),
            ),
        }
    }
}

fn parse_inputs(v: &Value) -> Result<Vec<Input<'_>>, BadInput> {
    fn is_token(v: &Value) -> bool {
        v.as_u64().is_some()
    }
    match v {
        Value::String(s) => Ok(vec![Input::Text(s)]),
        Value::Array(items) if items.is_empty() => Err(BadInput::Empty),
        Value::Array(items) => {
            if items.iter().all(Value::is_string) {
                Ok(items.iter().filter_map(Value::as_str).map(Input::Text).collect())
            } else if items.iter().all(is_token) {
                Ok(vec![Input::Tokens(items)])
            } else if items.iter().all(|i| i.as_array().is_some_and(|a| a.iter().all(is_token))) {
                Ok(items
                    .iter()
                    .filter_map(Value::as_array)
                    .map(|a| Input::Tokens(a.as_slice()))
                    .collect())
            } else {
                Err(BadInput::Shape)
            }
        }
        _ => Err(BadInput::Shape),
    }
}

/// splitmix64: a tiny, well-mixed deterministic generator.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A unit-length vector determined by `seed` alone.
pub(crate) fn embedding_vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = seed;
    let mut v: Vec<f32> = (0..dimensions)
        .map(|_| {
            let bits = splitmix64(&mut state) >> 40; // 24 bits
            (bits as f32 / (1u32 << 23) as f32) - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: EmbeddingData,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingData {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

pub(crate) async fn embeddings_openai(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    embeddings(shared, None, req).await
}

pub(crate) async fn embeddings_azure(
    State(shared): State<Arc<Shared>>,
    Path(deployment): Path<String>,
    req: Request,
) -> Response {
    embeddings(shared, Some(deployment), req).await
}

async fn embeddings(shared: Arc<Shared>, deployment: Option<String>, req: Request) -> Response {
    let mut p = match prepare(&shared, req, deployment).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let body = p.body.clone();
    let parsed: EmbeddingsRequest<'_> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            p.tracker.done();
            return body_error(&e);
        }
    };
    let Some(input) = parsed.input.as_ref() else {
        p.tracker.done();
        return errors::missing_param("input");
    };
    let inputs = match parse_inputs(input) {
        Ok(i) => i,
        Err(bad) => {
            p.tracker.done();
            return bad.into_response();
        }
    };
    let model: &str = match (&parsed.model, &p.deployment) {
        (Some(m), _) => m.0.as_ref(),
        (None, Some(d)) => d.as_str(),
        (None, None) => {
            p.tracker.done();
            return errors::invalid_request("you must provide a model parameter", None, None);
        }
    };
    let model = model.to_owned();
    let dimensions = match parsed.dimensions {
        None => DEFAULT_DIMENSIONS,
        Some(d) if (1..=MAX_DIMENSIONS).contains(&d) => d as usize,
        Some(_) => {
            p.tracker.done();
            return errors::invalid_request(
                &format!("Invalid 'dimensions': must be between 1 and {MAX_DIMENSIONS}."),
                Some("dimensions"),
                Some("invalid_value"),
            );
        }
    };
    let base64 = match parsed.encoding_format.as_ref().map(|f| f.0.as_ref()) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            p.tracker.done();
            return errors::invalid_request(
                &format!(
                    "Invalid 'encoding_format': {other:?}. Expected one of \"float\" or \"base64\"."
                ),
                Some("encoding_format"),
                Some("invalid_value"),
            );
        }
    };
    let prompt_tokens: u64 = inputs.iter().map(Input::tokens).sum();
    let seeds: Vec<u64> = inputs.iter().map(Input::seed).collect();
    let behaviour = shared.next_behaviour();
    non_streaming(&shared, p, behaviour, Operation::Embeddings, move |_| {
        embeddings_body(&seeds, dimensions, base64, &model, prompt_tokens)
    })
    .await
}

fn embeddings_body(
    seeds: &[u64],
    dimensions: usize,
    base64: bool,
    model: &str,
    prompt_tokens: u64,
) -> Vec<u8> {
    let data = seeds
        .iter()
        .enumerate()
        .map(|(index, &seed)| {
            let v = embedding_vector(seed, dimensions);
            let embedding = if base64 {
                let mut raw = Vec::with_capacity(v.len() * 4);
                for x in &v {
                    raw.extend_from_slice(&x.to_le_bytes());
                }
                let mut out = Vec::new();
                crate::base64::encode_into(&raw, &mut out);
                EmbeddingData::Base64(String::from_utf8(out).unwrap_or_default())
            } else {
                EmbeddingData::Float(v)
            };
            EmbeddingItem { object: "embedding", index, embedding }
        })
        .collect();
    serde_json::to_vec(&EmbeddingList {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage { prompt_tokens, total_tokens: prompt_tokens },
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_and_unit_length() {
        let a = embedding_vector(Input::Text("hello").seed(), 8);
        let b = embedding_vector(Input::Text("hello").seed(), 8);
        let c = embedding_vector(Input::Text("world").seed(), 8);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        assert!(a.iter().all(|x| (-1.0..=1.0).contains(x)));
    }

    #[test]
    fn inputs_of_every_accepted_shape() {
        let cases = [
            (serde_json::json!("a"), 1),
            (serde_json::json!(["a", "b", "c"]), 3),
            (serde_json::json!([1, 2, 3]), 1),
            (serde_json::json!([[1, 2], [3]]), 2),
        ];
        for (v, n) in cases {
            assert_eq!(parse_inputs(&v).unwrap().len(), n, "{v}");
        }
        for bad in [
            serde_json::json!([]),
            serde_json::json!(5),
            serde_json::json!(["a", 1]),
            serde_json::json!([[1, "x"]]),
        ] {
            assert!(parse_inputs(&bad).is_err(), "{bad}");
        }
    }
}
