//! `POST /model/{modelId}/invoke` for the embedding models, with each
//! model's own body (InvokeModel passes the body through to the model).
//!
//! - Titan Text Embeddings V2 (`amazon.titan-embed-text-v2:0`):
//!   `{"inputText", "dimensions"?: 256|512|1024 (default 1024), "normalize"?,
//!   "embeddingTypes"?: ["float"|"binary"]}` →
//!   `{"embedding": [...], "inputTextTokenCount": n}` plus
//!   `"embeddingsByType"` when `embeddingTypes` was given.
//! - Titan Embeddings G1 (`amazon.titan-embed-text-v1`,
//!   `amazon.titan-embed-g1-text-02`): `{"inputText"}` → 1536 floats.
//! - Cohere Embed v3 (`cohere.embed-english-v3`,
//!   `cohere.embed-multilingual-v3`): `{"texts": [...], "input_type",
//!   "truncate"?, "embedding_types"?}` → `{"embeddings": [[1024 floats]...],
//!   "id", "response_type": "embeddings_floats", "texts"}`, or with
//!   `embedding_types` `{"embeddings": {"float": [[...]], "int8": ...},
//!   "response_type": "embeddings_by_type", ...}`.
//!
//! A body the model's schema refuses (missing or extraneous key, wrong
//! type, value outside an enum) is `400 ValidationException` with the
//! model's "Malformed input request: #..." message. Any other model id is
//! `400 ValidationException` "The provided model identifier is invalid.".

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::server::{non_streaming, prepare, validation, OkBody};
use super::Shared;
use crate::embeddings::embedding_vector;
use crate::tokens::estimate_tokens;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Model {
    TitanV2,
    TitanV1,
    Cohere,
}

fn model_of(model_id: &str) -> Option<Model> {
    if model_id.contains("amazon.titan-embed-text-v2") {
        Some(Model::TitanV2)
    } else if model_id.contains("amazon.titan-embed-text-v1")
        || model_id.contains("amazon.titan-embed-g1-text-02")
    {
        Some(Model::TitanV1)
    } else if model_id.contains("cohere.embed-english-v3")
        || model_id.contains("cohere.embed-multilingual-v3")
    {
        Some(Model::Cohere)
    } else {
        None
    }
}

pub(crate) async fn invoke(
    State(shared): State<Arc<Shared>>,
    Path(model_id): Path<String>,
    req: Request,
) -> Response {
    let p = match prepare(&shared, req, model_id, "invoke").await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let Some(model) = model_of(&p.model_id) else {
        return p.answer(validation("The provided model identifier is invalid."));
    };
    let parsed = match parse(model, &p.body) {
        Ok(r) => r,
        Err(message) => {
            return p.answer(validation(&format!(
                "Malformed input request: {message}, please reformat your input and try again."
            )))
        }
    };
    let id = format!("{:08x}-0000-4000-8000-{:012x}", shared.next_id(), shared.next_id());
    let behaviour = shared.next_behaviour();
    non_streaming(p, behaviour, move |_chunks, latency| parsed.body(&id, latency)).await
}

/// A valid embeddings request.
#[derive(Debug, PartialEq)]
struct Embed {
    model: Model,
    texts: Vec<String>,
    dimensions: usize,
    /// Titan `embeddingTypes` / Cohere `embedding_types`, when given.
    types: Option<Vec<String>>,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "Null",
        Value::Bool(_) => "Boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "Integer",
        Value::Number(_) => "Number",
        Value::String(_) => "String",
        Value::Array(_) => "JSONArray",
        Value::Object(_) => "JSONObject",
    }
}

fn expected(path: &str, ty: &str, v: &Value) -> String {
    format!("#/{path}: expected type: {ty}, found: {}", json_type(v))
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], required: &[&str]) -> Result<(), String> {
    if let Some(extra) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("#: extraneous key [{extra}] is not permitted"));
    }
    if let Some(missing) = required.iter().find(|k| !obj.contains_key(**k)) {
        return Err(format!("#: required key [{missing}] not found"));
    }
    Ok(())
}

/// A list of strings from `allowed`, at least one.
fn enum_list(
    obj: &Map<String, Value>,
    key: &str,
    allowed: &[&str],
) -> Result<Option<Vec<String>>, String> {
    let Some(v) = obj.get(key) else {
        return Ok(None);
    };
    let Some(items) = v.as_array() else {
        return Err(expected(key, "JSONArray", v));
    };
    if items.is_empty() {
        return Err(format!("#/{key}: expected minimum item count: 1, found: 0"));
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) if allowed.contains(&s) => out.push(s.to_owned()),
            _ => return Err(format!("#/{key}/{i}: {item} is not a valid enum value")),
        }
    }
    Ok(Some(out))
}

fn parse(model: Model, body: &[u8]) -> Result<Embed, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| "#: expected type: JSONObject".to_owned())?;
    let Some(obj) = v.as_object() else {
        return Err(format!("#: expected type: JSONObject, found: {}", json_type(&v)));
    };
    match model {
        Model::TitanV2 | Model::TitanV1 => {
            let (allowed, dims): (&[&str], usize) = if model == Model::TitanV2 {
                (&["inputText", "dimensions", "normalize", "embeddingTypes"], 1024)
            } else {
                (&["inputText"], 1536)
            };
            check_keys(obj, allowed, &["inputText"])?;
            let text = &obj["inputText"];
            let Some(text) = text.as_str() else {
                return Err(expected("inputText", "String", text));
            };
            if text.is_empty() {
                return Err("#/inputText: expected minLength: 1, actual: 0".to_owned());
            }
            let dimensions = match obj.get("dimensions") {
                None => dims,
                Some(d) => match d.as_u64() {
                    Some(n @ (256 | 512 | 1024)) => n as usize,
                    Some(_) => return Err(format!("#/dimensions: {d} is not a valid enum value")),
                    None => return Err(expected("dimensions", "Integer", d)),
                },
            };
            if let Some(n) = obj.get("normalize").filter(|n| !n.is_boolean()) {
                return Err(expected("normalize", "Boolean", n));
            }
            let types = enum_list(obj, "embeddingTypes", &["float", "binary"])?;
            Ok(Embed { model, texts: vec![text.to_owned()], dimensions, types })
        }
        Model::Cohere => {
            check_keys(
                obj,
                &["texts", "images", "input_type", "truncate", "embedding_types"],
                &["texts", "input_type"],
            )?;
            let texts = &obj["texts"];
            let Some(items) = texts.as_array() else {
                return Err(expected("texts", "JSONArray", texts));
            };
            if items.len() > 96 {
                return Err(format!(
                    "#/texts: expected maximum item count: 96, found: {}",
                    items.len()
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, t) in items.iter().enumerate() {
                let Some(s) = t.as_str() else {
                    return Err(expected(&format!("texts/{i}"), "String", t));
                };
                if s.chars().count() > 2048 {
                    return Err(format!(
                        "#/texts/{i}: expected maxLength: 2048, actual: {}",
                        s.chars().count()
                    ));
                }
                out.push(s.to_owned());
            }
            let input_type = &obj["input_type"];
            let kinds =
                ["search_document", "search_query", "classification", "clustering", "image"];
            if !input_type.as_str().is_some_and(|t| kinds.contains(&t)) {
                return Err(format!("#/input_type: {input_type} is not a valid enum value"));
            }
            if let Some(t) = obj.get("truncate") {
                if !t.as_str().is_some_and(|t| ["NONE", "START", "END"].contains(&t)) {
                    return Err(format!("#/truncate: {t} is not a valid enum value"));
                }
            }
            let types = enum_list(
                obj,
                "embedding_types",
                &["float", "int8", "uint8", "binary", "ubinary"],
            )?;
            Ok(Embed { model, texts: out, dimensions: 1024, types })
        }
    }
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The vector of one embedding type: floats, or the quantised forms.
fn typed(v: &[f32], ty: &str) -> Value {
    let int8 = |x: f32| (x * 127.0).round().clamp(-128.0, 127.0) as i64;
    match ty {
        "int8" => json!(v.iter().map(|&x| int8(x)).collect::<Vec<_>>()),
        "uint8" => json!(v.iter().map(|&x| int8(x) + 128).collect::<Vec<_>>()),
        "binary" | "ubinary" => {
            let packed: Vec<i64> = v
                .chunks(8)
                .map(|bits| {
                    let byte = bits.iter().fold(0u8, |acc, &x| (acc << 1) | u8::from(x > 0.0));
                    if ty == "binary" {
                        i64::from(byte as i8)
                    } else {
                        i64::from(byte)
                    }
                })
                .collect();
            json!(packed)
        }
        _ => json!(v),
    }
}

impl Embed {
    fn body(&self, id: &str, latency_ms: u64) -> OkBody {
        let vectors: Vec<Vec<f32>> =
            self.texts.iter().map(|t| embedding_vector(fnv1a(t), self.dimensions)).collect();
        let tokens: u64 = self.texts.iter().map(|t| estimate_tokens(t.chars().count())).sum();
        let body = match self.model {
            Model::TitanV2 | Model::TitanV1 => {
                let v = &vectors[0];
                let mut out = json!({"embedding": v, "inputTextTokenCount": tokens});
                if let Some(types) = &self.types {
                    let by_type: Map<String, Value> = types
                        .iter()
                        .map(|t| {
                            // Titan's binary embeddings are one 0/1 value per dimension.
                            let value = if t == "binary" {
                                json!(v.iter().map(|&x| u8::from(x > 0.0)).collect::<Vec<_>>())
                            } else {
                                json!(v)
                            };
                            (t.clone(), value)
                        })
                        .collect();
                    out["embeddingsByType"] = Value::Object(by_type);
                }
                out
            }
            Model::Cohere => {
                let embeddings = match &self.types {
                    None => json!(vectors),
                    Some(types) => Value::Object(
                        types
                            .iter()
                            .map(|t| {
                                (
                                    t.clone(),
                                    Value::Array(vectors.iter().map(|v| typed(v, t)).collect()),
                                )
                            })
                            .collect(),
                    ),
                };
                json!({
                    "embeddings": embeddings,
                    "id": id,
                    "response_type": if self.types.is_some() { "embeddings_by_type" } else { "embeddings_floats" },
                    "texts": self.texts,
                })
            }
        };
        OkBody {
            body: serde_json::to_vec(&body).unwrap_or_default(),
            headers: vec![
                ("x-amzn-bedrock-input-token-count", tokens.to_string()),
                ("x-amzn-bedrock-invocation-latency", latency_ms.to_string()),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_json(model: Model, v: Value) -> Result<Embed, String> {
        parse(model, &serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn models_by_id() {
        assert_eq!(model_of("amazon.titan-embed-text-v2:0"), Some(Model::TitanV2));
        assert_eq!(model_of("amazon.titan-embed-text-v1"), Some(Model::TitanV1));
        assert_eq!(model_of("cohere.embed-english-v3"), Some(Model::Cohere));
        assert_eq!(model_of("cohere.embed-multilingual-v3"), Some(Model::Cohere));
        assert_eq!(model_of("anthropic.claude-3-haiku-20240307-v1:0"), None);
    }

    #[test]
    fn titan_bodies() {
        let e = parse_json(Model::TitanV2, json!({"inputText": "hi"})).unwrap();
        assert_eq!((e.dimensions, e.types), (1024, None));
        let e = parse_json(Model::TitanV2, json!({"inputText": "hi", "dimensions": 256, "normalize": true, "embeddingTypes": ["float", "binary"]})).unwrap();
        assert_eq!(e.dimensions, 256);
        let body: Value = serde_json::from_slice(&e.body("x", 1).body).unwrap();
        assert_eq!(body["embedding"].as_array().unwrap().len(), 256);
        assert_eq!(body["inputTextTokenCount"], 1);
        assert_eq!(body["embeddingsByType"]["binary"].as_array().unwrap().len(), 256);
        assert_eq!(
            parse_json(Model::TitanV1, json!({"inputText": "hi"})).unwrap().dimensions,
            1536
        );

        for (model, body, message) in [
            (Model::TitanV2, json!({}), "#: required key [inputText] not found"),
            (
                Model::TitanV2,
                json!({"inputText": "x", "model": "m"}),
                "#: extraneous key [model] is not permitted",
            ),
            (
                Model::TitanV1,
                json!({"inputText": "x", "dimensions": 256}),
                "#: extraneous key [dimensions] is not permitted",
            ),
            (
                Model::TitanV2,
                json!({"inputText": 5}),
                "#/inputText: expected type: String, found: Integer",
            ),
            (
                Model::TitanV2,
                json!({"inputText": ""}),
                "#/inputText: expected minLength: 1, actual: 0",
            ),
            (
                Model::TitanV2,
                json!({"inputText": "x", "dimensions": 100}),
                "#/dimensions: 100 is not a valid enum value",
            ),
            (
                Model::TitanV2,
                json!({"inputText": "x", "embeddingTypes": ["int8"]}),
                "#/embeddingTypes/0: \"int8\" is not a valid enum value",
            ),
            (Model::TitanV2, json!(["x"]), "#: expected type: JSONObject, found: JSONArray"),
        ] {
            assert_eq!(parse_json(model, body.clone()).unwrap_err(), message, "{body}");
        }
    }

    #[test]
    fn cohere_bodies() {
        let e = parse_json(
            Model::Cohere,
            json!({"texts": ["a", "b"], "input_type": "search_document"}),
        )
        .unwrap();
        let body: Value = serde_json::from_slice(&e.body("id-1", 1).body).unwrap();
        assert_eq!(body["response_type"], "embeddings_floats");
        assert_eq!(body["id"], "id-1");
        assert_eq!(body["texts"], json!(["a", "b"]));
        let embs = body["embeddings"].as_array().unwrap();
        assert_eq!((embs.len(), embs[0].as_array().unwrap().len()), (2, 1024));
        assert_ne!(embs[0], embs[1]);

        let e = parse_json(Model::Cohere, json!({"texts": ["a"], "input_type": "search_query", "truncate": "END", "embedding_types": ["float", "int8", "ubinary"]})).unwrap();
        let body: Value = serde_json::from_slice(&e.body("id", 1).body).unwrap();
        assert_eq!(body["response_type"], "embeddings_by_type");
        assert_eq!(body["embeddings"]["float"][0].as_array().unwrap().len(), 1024);
        assert_eq!(body["embeddings"]["int8"][0].as_array().unwrap().len(), 1024);
        assert_eq!(body["embeddings"]["ubinary"][0].as_array().unwrap().len(), 128);
        assert!(body["embeddings"]["int8"][0]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| (-128..=127).contains(&x.as_i64().unwrap())));

        for (body, message) in [
            (json!({"texts": ["a"]}), "#: required key [input_type] not found"),
            (json!({"input_type": "search_query"}), "#: required key [texts] not found"),
            (
                json!({"texts": "a", "input_type": "search_query"}),
                "#/texts: expected type: JSONArray, found: String",
            ),
            (
                json!({"texts": ["a"], "input_type": "query"}),
                "#/input_type: \"query\" is not a valid enum value",
            ),
            (
                json!({"texts": ["a"], "input_type": "search_query", "truncate": "MIDDLE"}),
                "#/truncate: \"MIDDLE\" is not a valid enum value",
            ),
            (
                json!({"texts": ["a"], "input_type": "search_query", "dimensions": 5}),
                "#: extraneous key [dimensions] is not permitted",
            ),
        ] {
            assert_eq!(parse_json(Model::Cohere, body.clone()).unwrap_err(), message, "{body}");
        }
    }
}
