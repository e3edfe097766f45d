//! The HTTP client every provider calls its upstream with: hyper-util's
//! pooled client over hyper-rustls (HTTP/1.1, and HTTP/2 where TLS
//! negotiates it), with a thin request builder on top.
//!
//! Why not reqwest (which the data plane uses): on the gateway's hot path its
//! conveniences cost more than the proxying. Measured on the benchmark's
//! small completions, a hyper-only proxy spends ~20 µs of CPU per request and
//! the same proxy calling its upstream through reqwest ~27 µs: URL parsing,
//! header map copies and a second layer of futures per request. Upstream
//! URLs are parsed once, when a provider is built.
//!
//! The client follows no redirects and sets no timeout but the connect
//! timeout: first-token and total timeouts belong to the gateway, which
//! fails over when they pass.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use skyweave_core::estate::Timeouts;

const USER_AGENT_VALUE: &str = concat!("skyweave/", env!("CARGO_PKG_VERSION"));

/// Largest response body, or single streamed event, taken from an upstream.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Parses an upstream URL built from a validated endpoint.
pub(crate) fn uri(text: String) -> Uri {
    Uri::try_from(text).expect("endpoints are validated as URLs when the estate loads")
}

/// A failure to get an answer (connect, TLS, a connection that broke), or to
/// read its body. The message names no URL and no header, so no key.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct TransportError {
    /// No connection could be made: nothing reached the upstream.
    pub(crate) connect: bool,
    message: String,
}

impl TransportError {
    fn new(what: &str, error: &(dyn std::error::Error + 'static), connect: bool) -> TransportError {
        TransportError { connect, message: format!("{what}: {}", chain(error)) }
    }
}

/// An error and its causes, `: `-separated.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// A pooled client; clones share the pool.
#[derive(Clone)]
pub(crate) struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    pub(crate) fn new(timeouts: &Timeouts) -> HttpClient {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeouts.connect));
        http.set_nodelay(true);
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        HttpClient { inner }
    }

    pub(crate) fn post(&self, uri: &Uri) -> UpstreamRequest {
        self.request(Method::POST, uri)
    }

    pub(crate) fn get(&self, uri: &Uri) -> UpstreamRequest {
        self.request(Method::GET, uri)
    }

    fn request(&self, method: Method, uri: &Uri) -> UpstreamRequest {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = method;
        *request.uri_mut() = uri.clone();
        request.headers_mut().insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        UpstreamRequest { client: self.inner.clone(), request }
    }
}

/// One request being built.
pub(crate) struct UpstreamRequest {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    request: Request<Full<Bytes>>,
}

impl UpstreamRequest {
    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> UpstreamRequest {
        self.request.headers_mut().append(name, value);
        self
    }

    /// A JSON body.
    pub(crate) fn json(mut self, body: Bytes) -> UpstreamRequest {
        self.request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        *self.request.body_mut() = Full::new(body);
        self
    }

    /// A credential header: marked sensitive, so HTTP/2 never indexes it and
    /// debug output never shows it. A value that is not a valid header
    /// (a key with a newline, say) is left out: the upstream then refuses the
    /// request as unauthenticated, which names the problem without the key.
    pub(crate) fn secret_header(self, name: HeaderName, value: &str) -> UpstreamRequest {
        match HeaderValue::from_str(value) {
            Ok(mut value) => {
                value.set_sensitive(true);
                self.header(name, value)
            }
            Err(_) => self,
        }
    }

    pub(crate) fn bearer_auth(self, token: &str) -> UpstreamRequest {
        self.secret_header(AUTHORIZATION, &format!("Bearer {token}"))
    }

    pub(crate) async fn send(self) -> Result<UpstreamResponse, TransportError> {
        match self.client.request(self.request).await {
            Ok(response) => Ok(UpstreamResponse(response)),
            Err(error) => {
                let connect = error.is_connect();
                let what = if connect {
                    "could not connect to the upstream"
                } else {
                    "the upstream request failed"
                };
                Err(TransportError::new(what, &error, connect))
            }
        }
    }
}

/// An answer whose head has arrived.
pub(crate) struct UpstreamResponse(Response<Incoming>);

impl UpstreamResponse {
    pub(crate) fn status(&self) -> StatusCode {
        self.0.status()
    }

    pub(crate) fn headers(&self) -> &HeaderMap {
        self.0.headers()
    }

    /// The whole body, refused past [`MAX_BODY_BYTES`]: an upstream that
    /// sends without end cannot make the gateway buffer without bound.
    pub(crate) async fn bytes(self) -> Result<Bytes, BodyError> {
        match Limited::new(self.0.into_body(), MAX_BODY_BYTES).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                Err(BodyError::TooLarge(MAX_BODY_BYTES))
            }
            Err(error) => Err(BodyError::Cut(TransportError::new(
                "the upstream response was cut",
                &*error,
                false,
            ))),
        }
    }

    /// The body as it arrives.
    pub(crate) fn bytes_stream(self) -> BoxStream<'static, Result<Bytes, TransportError>> {
        self.0
            .into_body()
            .into_data_stream()
            .map(|item| {
                item.map_err(|error| TransportError { connect: false, message: chain(&error) })
            })
            .boxed()
    }
}

/// Why a whole body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the upstream response is larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Cut(TransportError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_keep_path_and_query() {
        let uri =
            uri("http://127.0.0.1:9/openai/deployments/d/chat/completions?api-version=2024-10-21"
                .into());
        assert_eq!(uri.path(), "/openai/deployments/d/chat/completions");
        assert_eq!(uri.query(), Some("api-version=2024-10-21"));
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_without_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let second = Duration::from_secs(1);
        let timeouts = Timeouts { connect: second, first_token: second, total: second };
        let client = HttpClient::new(&timeouts);
        let target = uri(format!("http://127.0.0.1:{port}/v1/chat/completions"));
        let error = client.post(&target).bearer_auth("sk-secret").send().await.err().unwrap();
        assert!(error.connect, "{error}");
        let text = error.to_string();
        assert!(text.starts_with("could not connect to the upstream"), "{text}");
        assert!(!text.contains(&port.to_string()) && !text.contains("sk-secret"), "{text}");
    }
}
