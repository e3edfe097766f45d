//! Errors as the OpenAI API shapes them:
//! `{"error": {"message", "type", "param", "code"}}` with a matching status.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: Cow<'static, str>,
    pub param: Option<Box<str>>,
    pub code: Option<Box<str>>,
    /// Extra fields of the error object (e.g. Azure's `innererror`, the
    /// per-deployment reasons of a 503).
    pub extra: Option<Box<Value>>,
    pub retry_after_secs: Option<u32>,
    /// The deployment, cloud and region that answered with this error.
    pub served_by: Option<Box<[String; 3]>>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind: Cow::Borrowed(kind),
            param: None,
            code: None,
            extra: None,
            retry_after_secs: None,
            served_by: None,
        }
    }

    pub fn invalid_request(message: impl Into<String>, param: Option<&str>) -> ApiError {
        let mut error = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        error.param = param.map(Box::from);
        error
    }

    pub fn with_param(mut self, param: &str) -> ApiError {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: &str) -> ApiError {
        self.code = Some(code.into());
        self
    }

    pub fn body(&self) -> Value {
        let mut error = json!({
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        });
        if let (Some(Value::Object(extra)), Value::Object(object)) =
            (self.extra.as_deref(), &mut error)
        {
            for (key, value) in extra {
                object.insert(key.clone(), value.clone());
            }
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers
            .insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(seconds) = self.retry_after_secs {
            headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some([deployment, cloud, region]) = self.served_by.as_deref() {
            for (name, value) in [
                ("x-skyweave-deployment", deployment),
                ("x-skyweave-cloud", cloud),
                ("x-skyweave-region", region),
            ] {
                if let Ok(value) = HeaderValue::from_str(value) {
                    headers.insert(name, value);
                }
            }
        }
        response
    }
}
