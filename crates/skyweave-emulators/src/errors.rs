//! Error bodies in each dialect's shape.
//!
//! OpenAI: `{"error":{"message","type","param","code"}}`.
//! Azure: its own front door answers `{"error":{"code","message"}}` (401,
//! 404, 429, ...); errors from the model service behind it (request
//! validation) come through in the OpenAI shape; the content filter has its
//! own shape with `innererror`.

use axum::body::Body;
use axum::response::Response;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;
use serde_json::{json, Value};

use crate::Dialect;

pub(crate) const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A response with a JSON body.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON);
    resp
}

fn value_response(status: StatusCode, body: &Value) -> Response {
    json_response(status, serde_json::to_vec(body).unwrap_or_default())
}

/// `{"error":{"message","type","param","code"}}`.
pub(crate) fn openai_error(
    status: StatusCode,
    message: &str,
    kind: Option<&str>,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    value_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

/// `{"error":{"code","message"}}`.
pub(crate) fn azure_error(status: StatusCode, code: &str, message: &str) -> Response {
    value_response(status, &json!({"error": {"code": code, "message": message}}))
}

/// A 400 from request validation. Azure passes the model service's OpenAI
/// shaped error through, so both dialects answer alike.
pub(crate) fn invalid_request(message: &str, param: Option<&str>, code: Option<&str>) -> Response {
    openai_error(StatusCode::BAD_REQUEST, message, Some("invalid_request_error"), param, code)
}

/// The body was not JSON.
pub(crate) fn unparseable_body() -> Response {
    invalid_request(
        "We could not parse the JSON body of your request. The API expects a JSON \
         payload, but what was sent was not valid JSON.",
        None,
        None,
    )
}

/// A required top-level parameter is missing.
pub(crate) fn missing_param(param: &str) -> Response {
    invalid_request(
        &format!("Missing required parameter: '{param}'."),
        Some(param),
        Some("missing_required_parameter"),
    )
}

/// Unknown route.
pub(crate) fn not_found(dialect: Dialect, method: &str, path: &str) -> Response {
    match dialect {
        Dialect::OpenAi => openai_error(
            StatusCode::NOT_FOUND,
            &format!("Invalid URL ({method} {path})"),
            Some("invalid_request_error"),
            None,
            None,
        ),
        Dialect::Azure => azure_resource_not_found(),
    }
}

/// What Azure answers for an unknown path or a missing `api-version`.
pub(crate) fn azure_resource_not_found() -> Response {
    azure_error(StatusCode::NOT_FOUND, "404", "Resource not found")
}

/// Missing or wrong API key.
pub(crate) fn unauthorized(dialect: Dialect, provided: Option<&str>) -> Response {
    match dialect {
        Dialect::OpenAi => match provided {
            None => openai_error(
                StatusCode::UNAUTHORIZED,
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                Some("invalid_request_error"),
                None,
                None,
            ),
            Some(key) => openai_error(
                StatusCode::UNAUTHORIZED,
                &format!("Incorrect API key provided: {}.", mask_key(key)),
                Some("invalid_request_error"),
                None,
                Some("invalid_api_key"),
            ),
        },
        Dialect::Azure => azure_error(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure \
             to provide a valid key for an active subscription and use a correct regional \
             API endpoint for your resource.",
        ),
    }
}

/// `sk-abc...wxyz` style: never echo a whole key back.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

/// Which API operation a request was for; Azure names it in some messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Chat,
    Embeddings,
}

impl Operation {
    fn azure_name(self) -> &'static str {
        match self {
            Operation::Chat => "ChatCompletions_Create",
            Operation::Embeddings => "Embeddings_Create",
        }
    }
}

/// The answer to [`crate::Behaviour::Status`].
pub(crate) fn status_behaviour(
    dialect: Dialect,
    op: Operation,
    api_version: Option<&str>,
    status: u16,
    retry_after_secs: Option<u64>,
    message: Option<&str>,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry_hint =
        retry_after_secs.map(|s| format!(" Please retry after {s} seconds.")).unwrap_or_default();
    let mut resp = match dialect {
        Dialect::OpenAi => {
            let (kind, code, default_message): (&str, Option<&str>, String) = match status.as_u16()
            {
                400 => ("invalid_request_error", None, "Bad request.".into()),
                401 => (
                    "invalid_request_error",
                    Some("invalid_api_key"),
                    "Incorrect API key provided.".into(),
                ),
                403 => (
                    "invalid_request_error",
                    None,
                    "You are not allowed to sample from this model.".into(),
                ),
                404 => (
                    "invalid_request_error",
                    Some("model_not_found"),
                    "The model does not exist or you do not have access to it.".into(),
                ),
                408 => ("timeout", None, "Request timed out.".into()),
                429 => (
                    "requests",
                    Some("rate_limit_exceeded"),
                    format!("Rate limit reached for requests.{retry_hint}"),
                ),
                500 => (
                    "server_error",
                    None,
                    "The server had an error while processing your request. Sorry about that!"
                        .into(),
                ),
                502 => ("server_error", None, "Bad gateway.".into()),
                503 => ("server_error", None, "The server is overloaded or not ready yet.".into()),
                504 => ("server_error", None, "Gateway timeout.".into()),
                s if s >= 500 => ("server_error", None, format!("Server error {s}.")),
                s => ("invalid_request_error", None, format!("Request failed with {s}.")),
            };
            openai_error(status, message.unwrap_or(&default_message), Some(kind), None, code)
        }
        Dialect::Azure => {
            let (code, default_message): (String, String) = match status.as_u16() {
                429 => (
                    "429".into(),
                    format!(
                        "Requests to the {} Operation under Azure OpenAI API version {} have \
                         exceeded call rate limit of your current pricing tier.{retry_hint}",
                        op.azure_name(),
                        api_version.unwrap_or("unknown"),
                    ),
                ),
                408 => ("408".into(), "The operation was timeout.".into()),
                500 => (
                    "InternalServerError".into(),
                    "The server had an error while processing your request.".into(),
                ),
                502 => ("BadGateway".into(), "Bad gateway.".into()),
                503 => (
                    "ServiceUnavailable".into(),
                    "The service is temporarily unable to process your request.".into(),
                ),
                504 => ("GatewayTimeout".into(), "Gateway timeout.".into()),
                s => (s.to_string(), format!("Request failed with status {s}.")),
            };
            azure_error(status, &code, message.unwrap_or(&default_message))
        }
    };
    if let Some(secs) = retry_after_secs {
        let h = resp.headers_mut();
        h.insert(RETRY_AFTER, HeaderValue::from(secs));
        h.insert("retry-after-ms", HeaderValue::from(secs.saturating_mul(1000)));
    }
    resp
}

/// The answer to [`crate::Behaviour::ContentFilter`].
pub(crate) fn content_filter(dialect: Dialect) -> Response {
    match dialect {
        Dialect::OpenAi => openai_error(
            StatusCode::BAD_REQUEST,
            "Invalid prompt: your prompt was flagged as potentially violating our usage \
             policy. Please try again with a different prompt.",
            Some("invalid_request_error"),
            None,
            Some("invalid_prompt"),
        ),
        Dialect::Azure => value_response(
            StatusCode::BAD_REQUEST,
            &json!({
                "error": {
                    "message": "The response was filtered due to the prompt triggering Azure \
                        OpenAI's content management policy. Please modify your prompt and \
                        retry. To learn more about our content filtering policies please read \
                        our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
                    "type": null,
                    "param": "prompt",
                    "code": "content_filter",
                    "status": 400,
                    "innererror": {
                        "code": "ResponsibleAIPolicyViolation",
                        "content_filter_result": {
                            "hate": {"filtered": false, "severity": "safe"},
                            "jailbreak": {"filtered": false, "detected": false},
                            "self_harm": {"filtered": false, "severity": "safe"},
                            "sexual": {"filtered": false, "severity": "safe"},
                            "violence": {"filtered": true, "severity": "medium"}
                        }
                    }
                }
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_masked() {
        assert_eq!(mask_key("short"), "*****");
        assert_eq!(mask_key("sk-0123456789abcdef"), "sk-***cdef");
    }

    #[test]
    fn out_of_range_status_becomes_500() {
        let r = status_behaviour(Dialect::OpenAi, Operation::Chat, None, 1000, None, None);
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
