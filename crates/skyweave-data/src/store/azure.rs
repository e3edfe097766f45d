//! Azure Blob Storage, over the Blob service REST API.
//!
//! Objects are block blobs named `PREFIX/KEY` in one container. Requests
//! are authorized with Shared Key (an HMAC-SHA256 of the request, keyed by
//! the account key) or with a SAS token appended to every URL; the
//! credentials come from the environment ([`AzureConfig::from_env`]), never
//! from the command line, and never appear in an error or a log line.
//!
//! A multipart upload is a set of uncommitted blocks (Put Block) committed
//! by Put Block List. Azure has no upload object, so an upload id is ours:
//! 24 hex digits, written into every block id together with the part's
//! index (`{upload}-{index:011}`, base64), so that the blocks of two
//! attempts at the same blob never collide and [`ObjectStore::uploaded_parts`]
//! can tell this upload's blocks from any other's.
//!
//! Azure has no way to abort an upload either: uncommitted blocks live until
//! the blob is next written, or are garbage-collected a week after the last
//! Put Block. [`ObjectStore::abort_upload`] therefore writes and deletes an
//! empty blob when no blob exists under the name (Put Blob discards the
//! uncommitted blocks), and leaves an existing blob and the blocks alone:
//! overwriting it would lose the object the upload was to replace. The
//! leftover blocks are never mistaken for parts (their ids name the aborted
//! upload) and go at the next write or after a week.
//!
//! Endpoints are `https://{account}.blob.core.windows.net` by default, or
//! path-style for emulators (`http://127.0.0.1:10000/devstoreaccount1`), in
//! which case the account's path segment is part of the signed resource,
//! as the Shared Key scheme requires.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::Digest as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, Response, StatusCode};

use super::{ByteStream, ObjectMeta, ObjectStore, Part, PartDone, StoreError};

/// The Blob service version spoken (`x-ms-version`).
pub const API_VERSION: &str = "2024-11-04";

/// The emulators' well-known account (Azurite, the storage emulator). The
/// key is published in Azure's documentation; it is no secret.
pub const DEVELOPMENT_ACCOUNT: &str = "devstoreaccount1";
pub const DEVELOPMENT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEVELOPMENT_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// Blobs per listing page. The service allows 5,000; 1,000 matches S3 and
/// GCS, so the conformance suite's 1,100 objects exercise `NextMarker` on
/// every backend.
const LIST_PAGE: u32 = 1000;

/// A block blob holds at most 50,000 blocks of at most 4,000 MiB each.
const MAX_BLOCKS: u64 = 50_000;
const MAX_BLOCK_SIZE: u64 = 4000 * 1024 * 1024;

/// Where and how to reach one container.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    pub account: String,
    pub container: String,
    /// Keys are relative to it; `/`-separated, may be empty.
    pub prefix: String,
    /// The Blob service endpoint; `https://{account}.blob.core.windows.net`
    /// when `None`. Path-style for emulators: `http://127.0.0.1:PORT/ACCOUNT`.
    pub endpoint: Option<String>,
    pub credentials: AzureCredentials,
}

#[derive(Clone)]
pub enum AzureCredentials {
    /// The account key, base64 as the portal shows it.
    SharedKey { key: String },
    /// A SAS token (`sv=...&sig=...`, with or without the leading `?`).
    Sas { token: String },
}

impl fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureCredentials::SharedKey { .. } => f.write_str("SharedKey { key: <redacted> }"),
            AzureCredentials::Sas { .. } => f.write_str("Sas { token: <redacted> }"),
        }
    }
}

impl AzureConfig {
    /// Reads credentials from the standard environment variables, first
    /// found wins:
    ///
    /// 1. `AZURE_STORAGE_CONNECTION_STRING` (`AccountName`, `AccountKey`,
    ///    `SharedAccessSignature`, `BlobEndpoint`, `DefaultEndpointsProtocol`,
    ///    `EndpointSuffix`, or `UseDevelopmentStorage=true` for Azurite on
    ///    127.0.0.1:10000);
    /// 2. `AZURE_STORAGE_ACCOUNT` and `AZURE_STORAGE_KEY`;
    /// 3. `AZURE_STORAGE_ACCOUNT` and `AZURE_STORAGE_SAS_TOKEN`.
    ///
    /// `endpoint_override` replaces whatever endpoint they imply.
    pub fn from_env(
        container: impl Into<String>,
        prefix: impl Into<String>,
        endpoint_override: Option<String>,
    ) -> Result<AzureConfig, StoreError> {
        config_from_lookup(
            &|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()),
            container.into(),
            prefix.into(),
            endpoint_override,
        )
    }

    /// A configuration from an Azure Storage connection string.
    pub fn from_connection_string(
        text: &str,
        container: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Result<AzureConfig, StoreError> {
        let parsed = parse_connection_string(text).map_err(|message| StoreError::Credentials {
            at: "the Azure Storage connection string".into(),
            message,
        })?;
        Ok(AzureConfig {
            account: parsed.account,
            container: container.into(),
            prefix: prefix.into(),
            endpoint: Some(parsed.endpoint),
            credentials: parsed.credentials,
        })
    }
}

pub struct Azure {
    http: reqwest::Client,
    /// Without a trailing `/`.
    endpoint: String,
    account: String,
    container: String,
    /// Without leading or trailing `/`; may be empty.
    prefix: String,
    auth: Auth,
}

impl fmt::Debug for Azure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Azure").field("location", &self.describe()).finish_non_exhaustive()
    }
}

enum Auth {
    SharedKey(ring::hmac::Key),
    /// The token's query parameters, without the leading `?`.
    Sas(String),
}

impl Azure {
    pub fn new(config: AzureConfig) -> Result<Azure, StoreError> {
        let AzureConfig { account, container, prefix, endpoint, credentials } = config;
        let endpoint =
            endpoint.unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
        let endpoint = endpoint.trim_end_matches('/').to_string();
        // Never the query in a message: it may be a SAS token put there.
        let shown = endpoint.split(['?', '#']).next().unwrap_or_default();
        let at = format!("{shown}/{container}");
        let parsed = reqwest::Url::parse(&endpoint).map_err(|e| StoreError::Credentials {
            at: at.clone(),
            message: format!("the Blob endpoint is not a URL ({e})"),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
            return Err(StoreError::Credentials {
                at,
                message: "the Blob endpoint must be an http(s) URL without a query; put a SAS \
                          token in AZURE_STORAGE_SAS_TOKEN"
                    .into(),
            });
        }
        if container.is_empty() || container.contains('/') {
            return Err(StoreError::Credentials {
                at,
                message: "the container name must be non-empty and contain no `/`".into(),
            });
        }
        let auth = match credentials {
            AzureCredentials::SharedKey { key } => {
                if account.is_empty() {
                    return Err(StoreError::Credentials {
                        at,
                        message: "Shared Key authorization needs the account name".into(),
                    });
                }
                let key = BASE64.decode(key.trim()).map_err(|_| StoreError::Credentials {
                    at: at.clone(),
                    message: "the account key is not valid base64; copy it again from the \
                              storage account's access keys"
                        .into(),
                })?;
                Auth::SharedKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key))
            }
            AzureCredentials::Sas { token } => {
                let token = token.trim().trim_start_matches('?').to_string();
                if token.is_empty() {
                    return Err(StoreError::Credentials {
                        at,
                        message: "the SAS token is empty".into(),
                    });
                }
                Auth::Sas(token)
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("skyweave/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client configuration is valid");
        Ok(Azure {
            http,
            endpoint,
            account,
            container,
            prefix: prefix.trim_matches('/').to_string(),
            auth,
        })
    }

    /// [`AzureConfig::from_env`], then [`Azure::new`].
    pub fn from_env(
        container: impl Into<String>,
        prefix: impl Into<String>,
        endpoint_override: Option<String>,
    ) -> Result<Azure, StoreError> {
        Azure::new(AzureConfig::from_env(container, prefix, endpoint_override)?)
    }

    /// Creates the container; one that already exists is success.
    pub async fn create_container(&self) -> Result<(), StoreError> {
        let at = format!("{}/{}", self.endpoint, self.container);
        let request =
            Request::new(Method::PUT, None).query("restype", "container").body(Bytes::new());
        let response = self.send(&at, request).await?;
        if response.status() == StatusCode::CONFLICT
            && error_code(&response).as_deref() == Some("ContainerAlreadyExists")
        {
            return Ok(());
        }
        self.check(&at, response).await.map(drop)
    }

    fn at(&self, key: &str) -> String {
        format!("{}/{key}", self.describe())
    }

    /// The blob's name: the prefix and the key. Refuses keys the service
    /// (and URL normalization on the way) would not keep as they are.
    fn blob_name(&self, key: &str) -> Result<String, StoreError> {
        if key.is_empty() || key.split('/').any(|segment| segment == "." || segment == "..") {
            return Err(StoreError::Io {
                at: self.at(key),
                message: "the key is empty or has a `.` or `..` segment, which a URL cannot \
                          carry unchanged; rename the object"
                    .into(),
            });
        }
        Ok(if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) })
    }

    /// The listing prefix: the store's prefix and a `/`, or nothing.
    fn list_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// Signs and sends one request; any status is returned as it came.
    async fn send(&self, at: &str, request: Request<'_>) -> Result<Response, StoreError> {
        let Request { method, blob, query, mut headers, body } = request;
        let mut url = format!("{}/{}", self.endpoint, self.container);
        if let Some(blob) = blob {
            url.push('/');
            url.push_str(&encode_path(blob));
        }
        let mut query_string = query
            .iter()
            .map(|(name, value)| format!("{name}={}", utf8_percent_encode(value, STRICT)))
            .collect::<Vec<_>>()
            .join("&");
        if let Auth::Sas(token) = &self.auth {
            if !query_string.is_empty() {
                query_string.push('&');
            }
            query_string.push_str(token);
        }
        if !query_string.is_empty() {
            url.push('?');
            url.push_str(&query_string);
        }
        let url = reqwest::Url::parse(&url).map_err(|e| StoreError::Protocol {
            at: at.to_string(),
            message: format!("the request URL does not parse ({e})"),
        })?;
        headers.push(("x-ms-date", httpdate::fmt_http_date(SystemTime::now())));
        headers.push(("x-ms-version", API_VERSION.to_string()));
        if let Auth::SharedKey(key) = &self.auth {
            let content_length = body.as_ref().map_or(0, |b| b.len() as u64);
            let to_sign = string_to_sign(
                method.as_str(),
                content_length,
                &headers,
                &self.account,
                url.path(),
                &query,
            );
            let signature = BASE64.encode(ring::hmac::sign(key, to_sign.as_bytes()).as_ref());
            headers.push(("authorization", format!("SharedKey {}:{signature}", self.account)));
        }
        let mut builder = self.http.request(method.clone(), url);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = body {
            // Explicit: the HTTP client leaves it out for an empty body, and
            // the service then refuses the request (411 on Azure, a bare 400
            // on Azurite).
            builder = builder.header(reqwest::header::CONTENT_LENGTH, body.len()).body(body);
        }
        let response = builder.send().await.map_err(|e| StoreError::transport(at, e))?;
        tracing::debug!(%method, at, status = response.status().as_u16(), "azure blob request");
        Ok(response)
    }

    /// The response if it succeeded, else its error.
    async fn check(&self, at: &str, response: Response) -> Result<Response, StoreError> {
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(self.refusal(at, response).await)
        }
    }

    /// Turns an error answer into a [`StoreError`]: its status, the
    /// `x-ms-error-code` and the message, with any secret removed.
    async fn refusal(&self, at: &str, response: Response) -> StoreError {
        let status = response.status();
        let header_code = error_code(&response);
        let request_id = response
            .headers()
            .get("x-ms-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await.unwrap_or_default();
        let ErrorBody { code: body_code, message: body_message, authentication_detail } =
            parse_error_body(&body);
        let code = header_code.or(body_code).unwrap_or_default();
        // The message's first line; the others repeat the request id and
        // the time.
        let mut message = body_message
            .as_deref()
            .and_then(|m| m.lines().map(str::trim).find(|l| !l.is_empty()))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("no message"))
            .to_string();
        if let Some(id) = request_id {
            message.push_str(&format!(" (request id {id})"));
        }
        let message = self.redact(&message);
        match (status.as_u16(), code.as_str()) {
            (404, "ContainerNotFound") => StoreError::NotFound {
                at: format!("container {}/{}", self.endpoint, self.container),
            },
            (404, _) => StoreError::NotFound { at: at.to_string() },
            (400, "Md5Mismatch") => StoreError::Integrity {
                at: at.to_string(),
                message: format!("the service received bytes whose MD5 differs: {message}"),
            },
            (401 | 403, _) => {
                // Azure says why, with the string it signed: what a signing
                // bug needs.
                let detail = authentication_detail
                    .map(|d| format!(" ({})", self.redact(&d).replace('\n', "\\n")))
                    .unwrap_or_default();
                StoreError::Credentials {
                    at: at.to_string(),
                    message: format!(
                        "{} {code}: {message}{detail}; check the account key or SAS token \
                         (AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY, \
                         AZURE_STORAGE_SAS_TOKEN) and its permissions",
                        status.as_u16()
                    ),
                }
            }
            (status, _) => StoreError::Refused { at: at.to_string(), status, code, message },
        }
    }

    /// Removes what must not be shown from a service message: the SAS
    /// token's signature, and the request signature Azure quotes back when
    /// it refuses one.
    fn redact(&self, message: &str) -> String {
        let mut message = message.to_string();
        if let Auth::Sas(token) = &self.auth {
            for part in token.split('&') {
                if let Some(signature) = part.strip_prefix("sig=") {
                    let decoded = percent_encoding::percent_decode_str(signature)
                        .decode_utf8_lossy()
                        .into_owned();
                    for secret in [signature, decoded.as_str()] {
                        if !secret.is_empty() {
                            message = message.replace(secret, "<redacted>");
                        }
                    }
                }
            }
        }
        const QUOTED_SIGNATURE: &str = "signature found in the HTTP request '";
        if let Some(start) = message.find(QUOTED_SIGNATURE) {
            let start = start + QUOTED_SIGNATURE.len();
            if let Some(length) = message[start..].find('\'') {
                message.replace_range(start..start + length, "<redacted>");
            }
        }
        message
    }

    /// The blob's listing, `None` when it does not exist.
    async fn properties(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let at = self.at(key);
        let name = self.blob_name(key)?;
        let response = self.send(&at, Request::new(Method::HEAD, Some(&name))).await?;
        if response.status() == StatusCode::NOT_FOUND
            && error_code(&response).as_deref() != Some("ContainerNotFound")
        {
            return Ok(None);
        }
        let response = self.check(&at, response).await?;
        let size = header_u64(&response, "content-length").ok_or_else(|| StoreError::Protocol {
            at: at.clone(),
            message: "Get Blob Properties answered without a Content-Length".into(),
        })?;
        Ok(Some(ObjectMeta { key: key.to_string(), size, version: etag(&at, &response)? }))
    }

    async fn block_list(&self, key: &str) -> Result<Option<BlockList>, StoreError> {
        let at = self.at(key);
        let name = self.blob_name(key)?;
        let request = Request::new(Method::GET, Some(&name))
            .query("comp", "blocklist")
            .query("blocklisttype", "all");
        let response = self.send(&at, request).await?;
        if response.status() == StatusCode::NOT_FOUND
            && error_code(&response).as_deref() != Some("ContainerNotFound")
        {
            return Ok(None);
        }
        let response = self.check(&at, response).await?;
        let body = xml_body(&at, response).await?;
        parse_block_list(&body).map(Some).map_err(|message| StoreError::Protocol { at, message })
    }
}

impl Azure {
    /// GET, optionally ranged, optionally only at a version (an If-Match
    /// or a generation precondition).
    async fn fetch(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        if_match: Option<&str>,
    ) -> Result<ByteStream, StoreError> {
        let at = self.at(key);
        let name = self.blob_name(key)?;
        if let Some(range) = &range {
            if range.start > range.end {
                return Err(StoreError::Io {
                    at,
                    message: format!("range {range:?} ends before it starts"),
                });
            }
            // An empty range cannot be written as an HTTP range; the blob's
            // existence and size answer it.
            if range.is_empty() {
                let meta =
                    self.properties(key).await?.ok_or(StoreError::NotFound { at: at.clone() })?;
                if range.end > meta.size {
                    return Err(StoreError::Io {
                        at,
                        message: format!(
                            "range {range:?} is outside the blob's {} bytes",
                            meta.size
                        ),
                    });
                }
                return Ok(Box::pin(futures::stream::empty()));
            }
        }
        let mut request = Request::new(Method::GET, Some(&name));
        if let Some(version) = if_match {
            request = request.header("if-match", format!("\"{version}\""));
        }
        if let Some(range) = &range {
            request =
                request.header("x-ms-range", format!("bytes={}-{}", range.start, range.end - 1));
        }
        let response = self.send(&at, request).await?;
        let response = self.check(&at, response).await?;
        let length = header_u64(&response, "content-length");
        if let (Some(range), Some(length)) = (&range, length) {
            if length != range.end - range.start {
                return Err(StoreError::Io {
                    at,
                    message: format!("range {range:?} is outside the blob (got {length} bytes)"),
                });
            }
        }
        // The stored MD5 (set by Put Blob) covers the whole blob only.
        let md5 = match range {
            Some(_) => None,
            None => response
                .headers()
                .get("content-md5")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| BASE64.decode(v).ok())
                .and_then(|v| <[u8; 16]>::try_from(v).ok()),
        };
        Ok(verified_stream(at, response, length, md5))
    }
}

#[async_trait::async_trait]
impl ObjectStore for Azure {
    async fn create_container(&self) -> Result<(), StoreError> {
        Azure::create_container(self).await
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("{}/{}", self.endpoint, self.container)
        } else {
            format!("{}/{}/{}", self.endpoint, self.container, self.prefix)
        }
    }

    async fn list(&self) -> Result<Vec<ObjectMeta>, StoreError> {
        let at = self.describe();
        let prefix = self.list_prefix();
        let mut found = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut request = Request::new(Method::GET, None)
                .query("restype", "container")
                .query("comp", "list")
                .query("maxresults", &LIST_PAGE.to_string());
            if !prefix.is_empty() {
                request = request.query("prefix", &prefix);
            }
            if let Some(marker) = &marker {
                request = request.query("marker", marker);
            }
            let response = self.send(&at, request).await?;
            let response = self.check(&at, response).await?;
            let body = xml_body(&at, response).await?;
            let page = parse_listing(&body)
                .map_err(|message| StoreError::Protocol { at: at.clone(), message })?;
            for blob in page.blobs {
                let Some(key) = blob.name.strip_prefix(&prefix) else {
                    return Err(StoreError::Protocol {
                        at: at.clone(),
                        message: format!("the listing holds `{}`, outside the prefix", blob.name),
                    });
                };
                // A blob named exactly `PREFIX/` has no key under the prefix.
                if key.is_empty() {
                    tracing::warn!(at, blob = blob.name, "skipping a blob named like the prefix");
                    continue;
                }
                found.push(ObjectMeta {
                    key: key.to_string(),
                    size: blob.size,
                    version: blob.etag,
                });
            }
            match page.next_marker {
                Some(next) if !next.is_empty() => marker = Some(next),
                _ => return Ok(found),
            }
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.properties(key).await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        self.fetch(key, range, None).await
    }

    async fn get_if(&self, key: &str, version: &str) -> Result<ByteStream, StoreError> {
        self.fetch(key, None, Some(version)).await.map_err(super::changed_on_412)
    }

    async fn put(&self, key: &str, data: Bytes, md5: [u8; 16]) -> Result<String, StoreError> {
        let at = self.at(key);
        let name = self.blob_name(key)?;
        let request = Request::new(Method::PUT, Some(&name))
            .header("x-ms-blob-type", "BlockBlob".into())
            .header("content-md5", BASE64.encode(md5))
            .body(data);
        let response = self.send(&at, request).await?;
        let response = self.check(&at, response).await?;
        check_echoed_md5(&at, &response, md5)?;
        etag(&at, &response)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let at = self.at(key);
        let name = self.blob_name(key)?;
        let response = self.send(&at, Request::new(Method::DELETE, Some(&name))).await?;
        if response.status() == StatusCode::NOT_FOUND
            && error_code(&response).as_deref() != Some("ContainerNotFound")
        {
            return Ok(());
        }
        self.check(&at, response).await.map(drop)
    }

    async fn start_upload(
        &self,
        key: &str,
        size: u64,
        part_size: u64,
    ) -> Result<String, StoreError> {
        self.blob_name(key)?;
        let blocks = if part_size == 0 { u64::MAX } else { size.div_ceil(part_size) };
        if part_size > MAX_BLOCK_SIZE || blocks > MAX_BLOCKS {
            return Err(StoreError::Protocol {
                at: self.at(key),
                message: format!(
                    "a block blob holds at most {MAX_BLOCKS} blocks of at most {MAX_BLOCK_SIZE} \
                     bytes; {size} bytes in parts of {part_size} do not fit"
                ),
            });
        }
        let mut id = String::with_capacity(24);
        for byte in random_bytes() {
            id.push_str(&format!("{byte:02x}"));
        }
        Ok(id)
    }

    async fn put_part(&self, key: &str, upload: &str, part: Part) -> Result<PartDone, StoreError> {
        let at = self.at(key);
        let name = self.blob_name(key)?;
        let block = block_id(&at, upload, part.index)?;
        let size = part.data.len() as u64;
        let request = Request::new(Method::PUT, Some(&name))
            .query("comp", "block")
            .query("blockid", &block)
            .header("content-md5", BASE64.encode(part.md5))
            .body(part.data);
        let response = self.send(&at, request).await?;
        let response = self.check(&at, response).await?;
        check_echoed_md5(&at, &response, part.md5)?;
        Ok(PartDone { index: part.index, size, tag: block })
    }

    /// This upload's uncommitted blocks. `None` once they were committed
    /// (the upload finished); an empty list when the blob has none of them
    /// (not started, aborted, expired, or overwritten since).
    async fn uploaded_parts(
        &self,
        key: &str,
        upload: &str,
    ) -> Result<Option<Vec<PartDone>>, StoreError> {
        let at = self.at(key);
        block_id(&at, upload, 0)?;
        let Some(list) = self.block_list(key).await? else {
            return Ok(Some(Vec::new()));
        };
        if list.committed.iter().any(|block| part_of(&block.name, upload).is_some()) {
            return Ok(None);
        }
        let mut parts: Vec<PartDone> = list
            .uncommitted
            .into_iter()
            .filter_map(|block| {
                let index = part_of(&block.name, upload)?;
                Some(PartDone { index, size: block.size, tag: block.name })
            })
            .collect();
        parts.sort_by_key(|p| p.index);
        Ok(Some(parts))
    }

    async fn finish_upload(
        &self,
        key: &str,
        upload: &str,
        parts: &[PartDone],
        size: u64,
    ) -> Result<String, StoreError> {
        let at = self.at(key);
        let name = self.blob_name(key)?;
        let mut body = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
        let mut total = 0u64;
        for (expected, part) in parts.iter().enumerate() {
            if part.index as usize != expected {
                return Err(StoreError::Protocol {
                    at,
                    message: format!("part {expected} is missing"),
                });
            }
            if part.tag != block_id(&at, upload, part.index)? {
                return Err(StoreError::Protocol {
                    at,
                    message: format!("part {expected} belongs to another upload"),
                });
            }
            total += part.size;
            // `Latest`: the uncommitted block, or the committed one when a
            // commit is retried after its answer was lost.
            body.push_str(&format!("<Latest>{}</Latest>", part.tag));
        }
        body.push_str("</BlockList>");
        if total != size {
            return Err(StoreError::Integrity {
                at,
                message: format!("the parts hold {total} bytes, not {size}"),
            });
        }
        let body = Bytes::from(body);
        let md5: [u8; 16] = md5::Md5::digest(&body).into();
        let request = Request::new(Method::PUT, Some(&name))
            .query("comp", "blocklist")
            .header("content-md5", BASE64.encode(md5))
            .header("content-type", "application/xml".into())
            .body(body);
        let response = self.send(&at, request).await?;
        let response = self.check(&at, response).await?;
        etag(&at, &response)
    }

    async fn abort_upload(&self, key: &str, upload: &str) -> Result<(), StoreError> {
        let at = self.at(key);
        let name = self.blob_name(key)?;
        block_id(&at, upload, 0)?;
        if self.properties(key).await?.is_some() {
            // Overwriting would lose the existing object; the blocks stay
            // until its next write or for a week (see the module's doc).
            return Ok(());
        }
        let empty_md5: [u8; 16] = md5::Md5::digest([]).into();
        let request = Request::new(Method::PUT, Some(&name))
            .header("x-ms-blob-type", "BlockBlob".into())
            .header("content-md5", BASE64.encode(empty_md5))
            .body(Bytes::new());
        let response = self.send(&at, request).await?;
        let response = self.check(&at, response).await?;
        let version = etag(&at, &response)?;
        // Only the empty blob just written: a writer that replaced it since
        // keeps its object.
        let request =
            Request::new(Method::DELETE, Some(&name)).header("if-match", format!("\"{version}\""));
        let response = self.send(&at, request).await?;
        match response.status() {
            StatusCode::NOT_FOUND | StatusCode::PRECONDITION_FAILED => Ok(()),
            _ => self.check(&at, response).await.map(drop),
        }
    }
}

/// One request before it is signed.
struct Request<'a> {
    method: Method,
    /// The blob's full name, or `None` for the container.
    blob: Option<&'a str>,
    /// Unencoded.
    query: Vec<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
    body: Option<Bytes>,
}

impl<'a> Request<'a> {
    fn new(method: Method, blob: Option<&'a str>) -> Request<'a> {
        Request { method, blob, query: Vec::new(), headers: Vec::new(), body: None }
    }

    fn query(mut self, name: &'static str, value: &str) -> Request<'a> {
        self.query.push((name, value.to_string()));
        self
    }

    fn header(mut self, name: &'static str, value: String) -> Request<'a> {
        self.headers.push((name, value));
        self
    }

    fn body(mut self, body: Bytes) -> Request<'a> {
        self.body = Some(body);
        self
    }
}

/// Everything but RFC 3986's unreserved characters is percent-encoded.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// A blob name as a URL path: each segment encoded, `/` kept between them.
fn encode_path(name: &str) -> String {
    name.split('/')
        .map(|segment| utf8_percent_encode(segment, STRICT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// The Shared Key string-to-sign of a Blob service request (version
/// 2009-09-19 and later): the verb, eleven standard headers (Content-Length
/// empty when zero), the `x-ms-` headers, and the resource: `/ACCOUNT`, the
/// URL's encoded path exactly as sent (with the account again for a
/// path-style emulator endpoint), then each query parameter, names
/// lowercased and sorted, values decoded.
fn string_to_sign(
    method: &str,
    content_length: u64,
    headers: &[(&str, String)],
    account: &str,
    path: &str,
    query: &[(&str, String)],
) -> String {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or("", |(_, value)| value.as_str())
    };
    let length = if content_length == 0 { String::new() } else { content_length.to_string() };
    let mut text = format!(
        "{method}\n{}\n{}\n{length}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        header("content-encoding"),
        header("content-language"),
        header("content-md5"),
        header("content-type"),
        header("date"),
        header("if-modified-since"),
        header("if-match"),
        header("if-none-match"),
        header("if-unmodified-since"),
        header("range"),
    );
    let mut canonical_headers: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| {
            (name.to_ascii_lowercase(), value.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .filter(|(name, _)| name.starts_with("x-ms-"))
        .collect();
    canonical_headers.sort();
    for (name, value) in canonical_headers {
        text.push_str(&format!("{name}:{value}\n"));
    }
    text.push_str(&format!("/{account}{path}"));
    let mut parameters: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, value) in query {
        parameters.entry(name.to_ascii_lowercase()).or_default().push(value);
    }
    for (name, mut values) in parameters {
        values.sort();
        text.push_str(&format!("\n{name}:{}", values.join(",")));
    }
    text
}

/// The block id of part `index` of `upload`: base64 of a 36-byte string, the
/// same length for every part of every upload of this store.
fn block_id(at: &str, upload: &str, index: u32) -> Result<String, StoreError> {
    if upload.len() != 24 || !upload.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(StoreError::Protocol {
            at: at.to_string(),
            message: format!("`{upload}` is not an upload id of this store"),
        });
    }
    Ok(BASE64.encode(format!("{upload}-{index:011}")))
}

/// The part index of a block of `upload`, `None` for any other block.
fn part_of(block: &str, upload: &str) -> Option<u32> {
    let raw = BASE64.decode(block).ok()?;
    let raw = std::str::from_utf8(&raw).ok()?;
    let (id, index) = raw.split_once('-')?;
    if id != upload || index.len() != 11 {
        return None;
    }
    index.parse().ok()
}

/// The credentials and endpoint a connection string names.
#[derive(Debug)]
struct ConnectionString {
    account: String,
    endpoint: String,
    credentials: AzureCredentials,
}

/// Parses `Key=Value;...`. Values may hold `=` (keys end in `==`); names
/// are matched without regard to case. Messages never echo a value.
fn parse_connection_string(text: &str) -> Result<ConnectionString, String> {
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err("a part has no `=` (expected Name=Value pairs separated by `;`)".into());
        };
        fields.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let field = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
    if field("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(ConnectionString {
            account: DEVELOPMENT_ACCOUNT.into(),
            endpoint: DEVELOPMENT_ENDPOINT.into(),
            credentials: AzureCredentials::SharedKey { key: DEVELOPMENT_KEY.into() },
        });
    }
    let credentials = match (field("accountkey"), field("sharedaccesssignature")) {
        (Some(key), _) => AzureCredentials::SharedKey { key },
        (None, Some(token)) => AzureCredentials::Sas { token },
        (None, None) => {
            return Err("it has neither AccountKey nor SharedAccessSignature".into());
        }
    };
    let endpoint = field("blobendpoint");
    let account = match (field("accountname"), &endpoint) {
        (Some(account), _) => account,
        (None, Some(endpoint)) => account_of_endpoint(endpoint)
            .ok_or("it has no AccountName, and BlobEndpoint does not name the account")?,
        (None, None) => return Err("it has no AccountName".into()),
    };
    let endpoint = match endpoint {
        Some(endpoint) => endpoint,
        None => {
            let protocol = field("defaultendpointsprotocol").unwrap_or_else(|| "https".into());
            if !matches!(protocol.as_str(), "http" | "https") {
                return Err("DefaultEndpointsProtocol must be http or https".into());
            }
            let suffix = field("endpointsuffix").unwrap_or_else(|| "core.windows.net".into());
            format!("{protocol}://{account}.blob.{suffix}")
        }
    };
    Ok(ConnectionString { account, endpoint, credentials })
}

/// The account an endpoint addresses: the first label of its host, or the
/// first path segment of a path-style (IP or `localhost`) endpoint.
fn account_of_endpoint(endpoint: &str) -> Option<String> {
    let url = reqwest::Url::parse(endpoint).ok()?;
    let host = url.host_str()?;
    let path_style =
        host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok() || host.starts_with('[');
    let account = if path_style {
        url.path_segments()?.next()?.to_string()
    } else {
        url.host_str()?.split('.').next()?.to_string()
    };
    Some(account).filter(|a| !a.is_empty())
}

fn config_from_lookup(
    lookup: &dyn Fn(&str) -> Option<String>,
    container: String,
    prefix: String,
    endpoint_override: Option<String>,
) -> Result<AzureConfig, StoreError> {
    let credentials_error = |message: String| StoreError::Credentials {
        at: format!("Azure container `{container}`"),
        message,
    };
    if let Some(text) = lookup("AZURE_STORAGE_CONNECTION_STRING") {
        let parsed = parse_connection_string(&text).map_err(|reason| {
            credentials_error(format!("AZURE_STORAGE_CONNECTION_STRING: {reason}"))
        })?;
        return Ok(AzureConfig {
            account: parsed.account,
            container,
            prefix,
            endpoint: Some(endpoint_override.unwrap_or(parsed.endpoint)),
            credentials: parsed.credentials,
        });
    }
    let account = lookup("AZURE_STORAGE_ACCOUNT");
    let credentials = match (lookup("AZURE_STORAGE_KEY"), lookup("AZURE_STORAGE_SAS_TOKEN")) {
        (Some(key), _) => AzureCredentials::SharedKey { key },
        (None, Some(token)) => AzureCredentials::Sas { token },
        (None, None) => {
            return Err(credentials_error(
                "no Azure Storage credentials found (tried AZURE_STORAGE_CONNECTION_STRING, \
                 AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY, AZURE_STORAGE_ACCOUNT with \
                 AZURE_STORAGE_SAS_TOKEN); set one of them"
                    .into(),
            ))
        }
    };
    let account = match account {
        Some(account) => account,
        None => {
            let from_endpoint = match (&credentials, &endpoint_override) {
                (AzureCredentials::Sas { .. }, Some(endpoint)) => account_of_endpoint(endpoint),
                _ => None,
            };
            from_endpoint.ok_or_else(|| {
                credentials_error(
                    "AZURE_STORAGE_ACCOUNT is not set; it names the storage account the key or \
                     SAS token belongs to"
                        .into(),
                )
            })?
        }
    };
    Ok(AzureConfig { account, container, prefix, endpoint: endpoint_override, credentials })
}

fn error_code(response: &Response) -> Option<String> {
    response.headers().get("x-ms-error-code").and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn header_u64(response: &Response, name: &str) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The ETag, without its quotes (listings give it bare).
fn etag(at: &str, response: &Response) -> Result<String, StoreError> {
    response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| StoreError::Protocol {
            at: at.to_string(),
            message: "the answer has no ETag".into(),
        })
}

/// The service echoes the MD5 it computed; a difference means it stored
/// something else than was sent.
fn check_echoed_md5(at: &str, response: &Response, sent: [u8; 16]) -> Result<(), StoreError> {
    let echoed = response.headers().get("content-md5").and_then(|v| v.to_str().ok());
    match echoed.map(|v| BASE64.decode(v.trim())) {
        Some(Ok(echoed)) if echoed.as_slice() != sent.as_slice() => Err(StoreError::Integrity {
            at: at.to_string(),
            message: "the service reports a different MD5 than the one sent".into(),
        }),
        _ => Ok(()),
    }
}

async fn xml_body(at: &str, response: Response) -> Result<String, StoreError> {
    let bytes = response.bytes().await.map_err(|e| StoreError::transport(at, e))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Protocol {
        at: at.to_string(),
        message: "the XML answer is not UTF-8".into(),
    })
}

/// The bytes of a Get Blob answer, checked at the end against the length
/// announced and, for a whole blob, its stored MD5.
fn verified_stream(
    at: String,
    response: Response,
    length: Option<u64>,
    md5: Option<[u8; 16]>,
) -> ByteStream {
    struct State {
        inner: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
        at: String,
        received: u64,
        length: Option<u64>,
        md5: Option<([u8; 16], md5::Md5)>,
        done: bool,
    }
    let state = State {
        inner: Box::pin(response.bytes_stream()),
        at,
        received: 0,
        length,
        md5: md5.map(|expected| (expected, md5::Md5::new())),
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        match state.inner.next().await {
            Some(Ok(chunk)) => {
                state.received += chunk.len() as u64;
                if let Some((_, hasher)) = &mut state.md5 {
                    hasher.update(&chunk);
                }
                Some((Ok(chunk), state))
            }
            Some(Err(error)) => {
                state.done = true;
                let error = StoreError::transport(&state.at, error);
                Some((Err(error), state))
            }
            None => {
                state.done = true;
                if let Some(length) = state.length.filter(|l| *l != state.received) {
                    let message = format!("{} bytes arrived, not {length}", state.received);
                    return Some((
                        Err(StoreError::Integrity { at: state.at.clone(), message }),
                        state,
                    ));
                }
                if let Some((expected, hasher)) = state.md5.take() {
                    let actual: [u8; 16] = hasher.finalize().into();
                    if actual != expected {
                        let message = "the bytes read do not match the blob's MD5".to_string();
                        return Some((
                            Err(StoreError::Integrity { at: state.at.clone(), message }),
                            state,
                        ));
                    }
                }
                None
            }
        }
    }))
}

fn random_bytes() -> [u8; 12] {
    let mut bytes = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system random source works");
    bytes
}

/// A minimal XML element tree: the Blob service's answers are small, and
/// text is kept exactly (blob names may begin or end with spaces).
#[derive(Debug, Default)]
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn children<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Element> + 's {
        self.children.iter().filter(move |c| c.name == name)
    }

    fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn parse_xml(text: &str) -> Result<Element, String> {
    use quick_xml::events::{BytesStart, Event};

    fn open(start: &BytesStart<'_>) -> Result<Element, String> {
        let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
        let mut attributes = Vec::new();
        for attribute in start.attributes() {
            let attribute = attribute.map_err(|e| e.to_string())?;
            let key = String::from_utf8_lossy(attribute.key.as_ref()).into_owned();
            let value = attribute.unescape_value().map_err(|e| e.to_string())?.into_owned();
            attributes.push((key, value));
        }
        Ok(Element { name, attributes, ..Element::default() })
    }

    // The service may begin its answers with a byte-order mark.
    let mut reader = quick_xml::Reader::from_str(text.trim_start_matches('\u{feff}'));
    let mut stack = vec![Element::default()];
    loop {
        match reader.read_event().map_err(|e| format!("malformed XML: {e}"))? {
            Event::Start(start) => stack.push(open(&start)?),
            Event::Empty(start) => {
                let element = open(&start)?;
                stack.last_mut().expect("the document is on the stack").children.push(element);
            }
            Event::End(_) => {
                let element = stack.pop().expect("an end matches a start");
                let Some(parent) = stack.last_mut() else {
                    return Err("malformed XML: an end without a start".into());
                };
                parent.children.push(element);
            }
            Event::Text(text) => {
                let text = text.unescape().map_err(|e| format!("malformed XML: {e}"))?;
                stack.last_mut().expect("the document is on the stack").text.push_str(&text);
            }
            Event::CData(data) => {
                let data = String::from_utf8_lossy(&data.into_inner()).into_owned();
                stack.last_mut().expect("the document is on the stack").text.push_str(&data);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if stack.len() != 1 {
        return Err("malformed XML: an element is not closed".into());
    }
    let document = stack.pop().expect("the document is on the stack");
    document.children.into_iter().next().ok_or_else(|| "the XML answer is empty".into())
}

#[derive(Debug, PartialEq)]
struct ListedBlob {
    name: String,
    size: u64,
    etag: String,
}

#[derive(Debug, PartialEq)]
struct ListingPage {
    blobs: Vec<ListedBlob>,
    next_marker: Option<String>,
}

/// A List Blobs answer (`EnumerationResults`).
fn parse_listing(text: &str) -> Result<ListingPage, String> {
    let root = parse_xml(text)?;
    if root.name != "EnumerationResults" {
        return Err(format!("a listing starts with <{}>, not <EnumerationResults>", root.name));
    }
    let mut blobs = Vec::new();
    for blob in root.child("Blobs").into_iter().flat_map(|b| b.children("Blob")) {
        let name = blob.child("Name").ok_or("a listed blob has no <Name>")?;
        // Names with characters XML cannot carry come percent-encoded.
        let name = if name.attribute("Encoded") == Some("true") {
            percent_encoding::percent_decode_str(&name.text)
                .decode_utf8()
                .map_err(|_| "an encoded blob name is not UTF-8".to_string())?
                .into_owned()
        } else {
            name.text.clone()
        };
        let properties = blob.child("Properties").ok_or("a listed blob has no <Properties>")?;
        let size = properties
            .child_text("Content-Length")
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("the listed blob `{name}` has no valid <Content-Length>"))?;
        let etag = properties.child_text("Etag").unwrap_or_default().trim().trim_matches('"');
        blobs.push(ListedBlob { etag: etag.to_string(), name, size });
    }
    let next_marker =
        root.child_text("NextMarker").map(str::trim).filter(|m| !m.is_empty()).map(str::to_string);
    Ok(ListingPage { blobs, next_marker })
}

#[derive(Debug, PartialEq)]
struct Block {
    name: String,
    size: u64,
}

#[derive(Debug, PartialEq)]
struct BlockList {
    committed: Vec<Block>,
    uncommitted: Vec<Block>,
}

/// A Get Block List answer.
fn parse_block_list(text: &str) -> Result<BlockList, String> {
    let root = parse_xml(text)?;
    if root.name != "BlockList" {
        return Err(format!("a block list starts with <{}>, not <BlockList>", root.name));
    }
    let blocks = |group: &str| -> Result<Vec<Block>, String> {
        root.child(group)
            .into_iter()
            .flat_map(|g| g.children("Block"))
            .map(|block| {
                let name = block.child_text("Name").ok_or("a block has no <Name>")?.trim();
                let size = block
                    .child_text("Size")
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or("a block has no valid <Size>")?;
                Ok(Block { name: name.to_string(), size })
            })
            .collect()
    };
    Ok(BlockList {
        committed: blocks("CommittedBlocks")?,
        uncommitted: blocks("UncommittedBlocks")?,
    })
}

/// What an error answer's XML says, as far as it says it.
#[derive(Debug, Default, PartialEq)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
    authentication_detail: Option<String>,
}

fn parse_error_body(body: &[u8]) -> ErrorBody {
    let Ok(text) = std::str::from_utf8(body) else { return ErrorBody::default() };
    let Ok(root) = parse_xml(text) else { return ErrorBody::default() };
    let field = |name: &str| root.child_text(name).map(|t| t.trim().to_string());
    ErrorBody {
        code: field("Code"),
        message: field("Message"),
        authentication_detail: field("AuthenticationErrorDetail"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pairs = Vec<(&'static str, String)>;

    /// The request the signature tests sign: a Put Block of 11 bytes to a
    /// blob with a space in its name on an Azurite endpoint (path-style, so
    /// the account appears twice in the resource).
    fn put_block_request() -> (Pairs, Pairs) {
        let headers = vec![
            ("content-md5", "XrY7u+Ae7tCTyyK7j1rNww==".to_string()),
            ("x-ms-version", "2024-11-04".to_string()),
            ("x-ms-date", "Mon, 23 Nov 2026 03:03:32 GMT".to_string()),
            ("X-Ms-Meta-Note", "  two   words ".to_string()),
        ];
        let query = vec![("comp", "block".to_string()), ("blockid", "YWJj+/8=".to_string())];
        (headers, query)
    }

    const PUT_BLOCK_STRING_TO_SIGN: &str = "PUT\n\n\n11\nXrY7u+Ae7tCTyyK7j1rNww==\n\n\n\n\n\n\n\n\
         x-ms-date:Mon, 23 Nov 2026 03:03:32 GMT\n\
         x-ms-meta-note:two words\n\
         x-ms-version:2024-11-04\n\
         /devstoreaccount1/devstoreaccount1/box/dir/with%20space/b%20c.txt\n\
         blockid:YWJj+/8=\n\
         comp:block";

    #[test]
    fn the_string_to_sign_follows_the_shared_key_spec() {
        let (headers, query) = put_block_request();
        let path = format!("/{DEVELOPMENT_ACCOUNT}/box/{}", encode_path("dir/with space/b c.txt"));
        let text = string_to_sign("PUT", 11, &headers, DEVELOPMENT_ACCOUNT, &path, &query);
        assert_eq!(text, PUT_BLOCK_STRING_TO_SIGN);

        // A zero Content-Length is signed as an empty line; no query, no
        // standard headers.
        let headers = vec![("x-ms-date", "Mon, 23 Nov 2026 03:03:32 GMT".to_string())];
        let text = string_to_sign("DELETE", 0, &headers, "acct", "/c/k", &[]);
        assert_eq!(
            text,
            "DELETE\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Mon, 23 Nov 2026 03:03:32 GMT\n/acct/c/k"
        );

        // Repeated parameters: one line, values sorted, comma-separated.
        let query = vec![("Include", "b".to_string()), ("include", "a".to_string())];
        let text = string_to_sign("GET", 0, &[], "acct", "/c", &query);
        assert!(text.ends_with("/acct/c\ninclude:a,b"), "{text:?}");
    }

    #[test]
    fn the_signature_matches_one_computed_independently() {
        // Derived outside this code, with Python's standard library, from
        // the string-to-sign written out by hand from the spec (VERB, eleven
        // standard header lines, the x-ms- headers, the resource):
        //   key = base64.b64decode(DEVELOPMENT_KEY)
        //   base64.b64encode(hmac.new(key, string_to_sign.encode(),
        //                             hashlib.sha256).digest())
        const EXPECTED: &str = "HWx39EuZiKAlCj5D1ew9t78avbQZ0C2MIVMx7RI/EZQ=";
        let key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &BASE64.decode(DEVELOPMENT_KEY).unwrap());
        let signature =
            BASE64.encode(ring::hmac::sign(&key, PUT_BLOCK_STRING_TO_SIGN.as_bytes()).as_ref());
        assert_eq!(signature, EXPECTED);
    }

    #[test]
    fn keys_are_encoded_segment_by_segment() {
        let check = |name: &str, expected: &str| assert_eq!(encode_path(name), expected, "{name}");
        check("a.txt", "a.txt");
        check("dir/with space/b c.txt", "dir/with%20space/b%20c.txt");
        check("odd+chars&=%?#.bin", "odd%2Bchars%26%3D%25%3F%23.bin");
        check("ü/日", "%C3%BC/%E6%97%A5");
        check("a~b_c-d", "a~b_c-d");
    }

    fn check_connection_string(text: &str, expected: Result<(&str, &str, &str), &str>) {
        let actual = parse_connection_string(text).map(|c| {
            let kind = match c.credentials {
                AzureCredentials::SharedKey { key } => format!("key {key}"),
                AzureCredentials::Sas { token } => format!("sas {token}"),
            };
            (c.account, c.endpoint, kind)
        });
        match (actual, expected) {
            (Ok((account, endpoint, kind)), Ok(expected)) => {
                assert_eq!((account.as_str(), endpoint.as_str(), kind.as_str()), expected, "{text}")
            }
            (Err(message), Err(expected)) => {
                assert!(message.contains(expected), "{text}: {message}")
            }
            (actual, expected) => panic!("{text}: {actual:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn connection_strings_are_parsed() {
        let development_key = format!("key {DEVELOPMENT_KEY}");
        check_connection_string(
            "UseDevelopmentStorage=true",
            Ok((DEVELOPMENT_ACCOUNT, DEVELOPMENT_ENDPOINT, &development_key)),
        );
        check_connection_string(
            "usedevelopmentstorage=TRUE;",
            Ok((DEVELOPMENT_ACCOUNT, DEVELOPMENT_ENDPOINT, &development_key)),
        );
        check_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5==;EndpointSuffix=core.windows.net",
            Ok(("acct", "https://acct.blob.core.windows.net", "key a2V5==")),
        );
        check_connection_string(
            "AccountName=acct;AccountKey=a2V5",
            Ok(("acct", "https://acct.blob.core.windows.net", "key a2V5")),
        );
        check_connection_string(
            "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.chinacloudapi.cn",
            Ok(("acct", "http://acct.blob.core.chinacloudapi.cn", "key a2V5")),
        );
        check_connection_string(
            " AccountName = devstoreaccount1 ; AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;",
            Ok(("devstoreaccount1", "http://127.0.0.1:10000/devstoreaccount1", "key a2V5")),
        );
        check_connection_string(
            "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2024-11-04&sig=abc%3D",
            Ok(("acct", "https://acct.blob.core.windows.net/", "sas sv=2024-11-04&sig=abc%3D")),
        );
        check_connection_string(
            "AccountName=acct",
            Err("neither AccountKey nor SharedAccessSignature"),
        );
        check_connection_string("AccountKey=c2VjcmV0", Err("it has no AccountName"));
        check_connection_string(
            "AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1",
            Ok(("devstoreaccount1", "http://127.0.0.1:10000/devstoreaccount1", "key a2V5")),
        );
        check_connection_string("c2VjcmV0", Err("has no `=`"));
        check_connection_string(
            "DefaultEndpointsProtocol=ftp;AccountName=a;AccountKey=a2V5",
            Err("http or https"),
        );
        // No message repeats a value.
        for text in ["c2VjcmV0", "AccountKey=c2VjcmV0", "AccountName=x;SharedAccessSignature="] {
            let message = parse_connection_string(text).unwrap_err();
            assert!(!message.contains("c2VjcmV0"), "{message}");
        }
    }

    #[test]
    fn the_environment_is_read_in_order() {
        let check = |vars: &[(&str, &str)],
                     endpoint: Option<&str>,
                     expected: Result<(&str, Option<&str>, &str), &str>| {
            let lookup =
                |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
            let actual =
                config_from_lookup(&lookup, "box".into(), "p".into(), endpoint.map(String::from));
            match (actual, expected) {
                (Ok(config), Ok((account, endpoint, kind))) => {
                    let actual_kind = match config.credentials {
                        AzureCredentials::SharedKey { .. } => "key",
                        AzureCredentials::Sas { .. } => "sas",
                    };
                    assert_eq!(
                        (config.account.as_str(), config.endpoint.as_deref(), actual_kind),
                        (account, endpoint, kind),
                        "{vars:?}"
                    );
                }
                (Err(error), Err(expected)) => {
                    let message = error.to_string();
                    assert!(message.contains(expected), "{vars:?}: {message}");
                    for (_, value) in vars {
                        assert!(!message.contains(value), "{message} repeats {value}");
                    }
                }
                (actual, expected) => panic!("{vars:?}: {actual:?}, expected {expected:?}"),
            }
        };
        let connection = ("AZURE_STORAGE_CONNECTION_STRING", "UseDevelopmentStorage=true");
        let account = ("AZURE_STORAGE_ACCOUNT", "acct");
        let key = ("AZURE_STORAGE_KEY", "a2V5c2VjcmV0");
        let sas = ("AZURE_STORAGE_SAS_TOKEN", "?sv=1&sig=c2lnc2VjcmV0");
        check(
            &[connection, account, key],
            None,
            Ok((DEVELOPMENT_ACCOUNT, Some(DEVELOPMENT_ENDPOINT), "key")),
        );
        check(
            &[connection],
            Some("http://127.0.0.1:4321/devstoreaccount1"),
            Ok((DEVELOPMENT_ACCOUNT, Some("http://127.0.0.1:4321/devstoreaccount1"), "key")),
        );
        check(&[account, key, sas], None, Ok(("acct", None, "key")));
        check(&[account, sas], None, Ok(("acct", None, "sas")));
        check(
            &[sas],
            Some("http://127.0.0.1:4321/emulated"),
            Ok(("emulated", Some("http://127.0.0.1:4321/emulated"), "sas")),
        );
        check(&[key], None, Err("AZURE_STORAGE_ACCOUNT is not set"));
        check(&[account], None, Err("no Azure Storage credentials found"));
        check(
            &[("AZURE_STORAGE_CONNECTION_STRING", "AccountName=a;AccountKey")],
            None,
            Err("AZURE_STORAGE_CONNECTION_STRING"),
        );
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let config = AzureConfig {
            account: "acct".into(),
            container: "box".into(),
            prefix: String::new(),
            endpoint: None,
            credentials: AzureCredentials::SharedKey { key: "a2V5c2VjcmV0".into() },
        };
        assert!(!format!("{config:?}").contains("a2V5c2VjcmV0"));
        let sas = AzureCredentials::Sas { token: "sv=1&sig=c2lnc2VjcmV0".into() };
        assert!(!format!("{sas:?}").contains("c2lnc2VjcmV0"));
        let store = Azure::new(config.clone()).unwrap();
        assert_eq!(store.describe(), "https://acct.blob.core.windows.net/box");
        // A SAS token pasted into the endpoint is refused without repeating it.
        let pasted = Azure::new(AzureConfig {
            endpoint: Some("https://acct.blob.core.windows.net/?sv=1&sig=c2lnc2VjcmV0".into()),
            ..config
        })
        .unwrap_err()
        .to_string();
        assert!(pasted.contains("AZURE_STORAGE_SAS_TOKEN"), "{pasted}");
        assert!(!pasted.contains("c2lnc2VjcmV0"), "{pasted}");
        assert!(Azure::new(AzureConfig {
            credentials: AzureCredentials::SharedKey { key: "not base64!".into() },
            ..AzureConfig::from_connection_string("UseDevelopmentStorage=true", "box", "").unwrap()
        })
        .is_err());
    }

    #[test]
    fn refused_signatures_and_sas_are_redacted() {
        let store = Azure::new(AzureConfig {
            account: "acct".into(),
            container: "box".into(),
            prefix: "p/".into(),
            endpoint: None,
            credentials: AzureCredentials::Sas { token: "?sv=1&sig=c2ln%2Bc2VjcmV0".into() },
        })
        .unwrap();
        assert_eq!(store.describe(), "https://acct.blob.core.windows.net/box/p");
        let redacted = store.redact(
            "The MAC signature found in the HTTP request 'abc+/=' is not the same as any \
             computed signature; sig c2ln+c2VjcmV0 and c2ln%2Bc2VjcmV0",
        );
        assert_eq!(
            redacted,
            "The MAC signature found in the HTTP request '<redacted>' is not the same as any \
             computed signature; sig <redacted> and <redacted>"
        );
    }

    #[test]
    fn block_ids_name_the_upload_and_the_part() {
        let upload = "0123456789abcdef01234567";
        let id = block_id("at", upload, 7).unwrap();
        assert_eq!(BASE64.decode(&id).unwrap(), b"0123456789abcdef01234567-00000000007");
        assert_eq!(id.len(), block_id("at", upload, u32::MAX).unwrap().len());
        assert_eq!(part_of(&id, upload), Some(7));
        assert_eq!(part_of(&id, "fedcba9876543210fedcba98"), None);
        assert_eq!(part_of("bm90IG91cnM=", upload), None);
        assert!(block_id("at", "../etc", 0).is_err());
    }

    #[test]
    fn listings_and_block_lists_are_parsed() {
        let listing = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\
            <EnumerationResults ServiceEndpoint=\"https://acct.blob.core.windows.net/\" ContainerName=\"box\">\
            <Prefix>p/</Prefix><MaxResults>2</MaxResults><Blobs>\
            <Blob><Name>p/ a &amp; b </Name><Properties><Content-Length>5</Content-Length><Etag>0x8D1</Etag></Properties></Blob>\
            <Blob><Name Encoded=\"true\">p/%EF%BF%BEx</Name><Properties><Content-Length>0</Content-Length><Etag>\"0x8D2\"</Etag></Properties></Blob>\
            </Blobs><NextMarker>2!abc</NextMarker></EnumerationResults>";
        assert_eq!(
            parse_listing(listing).unwrap(),
            ListingPage {
                blobs: vec![
                    ListedBlob { name: "p/ a & b ".into(), size: 5, etag: "0x8D1".into() },
                    ListedBlob { name: "p/\u{fffe}x".into(), size: 0, etag: "0x8D2".into() },
                ],
                next_marker: Some("2!abc".into()),
            }
        );
        let last = "<EnumerationResults><Blobs /><NextMarker /></EnumerationResults>";
        assert_eq!(parse_listing(last).unwrap(), ListingPage { blobs: vec![], next_marker: None });
        assert!(parse_listing("<Error><Code>X</Code></Error>").is_err());

        let blocks = "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>\
            <CommittedBlocks><Block><Name>YQ==</Name><Size>3</Size></Block></CommittedBlocks>\
            <UncommittedBlocks /></BlockList>";
        assert_eq!(
            parse_block_list(blocks).unwrap(),
            BlockList {
                committed: vec![Block { name: "YQ==".into(), size: 3 }],
                uncommitted: vec![]
            }
        );
        let refused = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error>\
            <Code>AuthenticationFailed</Code>\
            <Message>Server failed to authenticate the request.\nRequestId:1\nTime:2026</Message>\
            <AuthenticationErrorDetail>The MAC signature found in the HTTP request 'c2ln' is \
            not the same as any computed signature.</AuthenticationErrorDetail></Error>";
        assert_eq!(
            parse_error_body(refused.as_bytes()),
            ErrorBody {
                code: Some("AuthenticationFailed".into()),
                message: Some(
                    "Server failed to authenticate the request.\nRequestId:1\nTime:2026".into()
                ),
                authentication_detail: Some(
                    "The MAC signature found in the HTTP request 'c2ln' is not the same as any \
                     computed signature."
                        .into()
                ),
            }
        );
        assert_eq!(parse_error_body(b""), ErrorBody::default());
    }
}
