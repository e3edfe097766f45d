//! Amazon S3 and S3-compatible stores, over the S3 REST API.
//!
//! Every request is signed with SigV4 (the `aws-sigv4` crate) for service
//! `s3`; bodies are sent as `UNSIGNED-PAYLOAD` with a `Content-MD5` that S3
//! checks (a mismatch is refused with `BadDigest`), so integrity costs one
//! MD5 rather than an MD5 and a SHA-256. Credentials come from the standard
//! AWS chain (`skyweave_cloud::aws_credentials`).
//!
//! Addressing: virtual-hosted (`https://BUCKET.s3.REGION.amazonaws.com/KEY`)
//! on AWS; path-style (`ENDPOINT/BUCKET/KEY`) when an endpoint is given, as
//! S3-compatible stores and emulators expect. Multipart uploads use
//! CreateMultipartUpload, UploadPart, ListParts (to resume),
//! CompleteMultipartUpload (whose 200 answer may still carry an error) and
//! AbortMultipartUpload.
//!
//! Multipart uploads declare `x-amz-checksum-algorithm: CRC32`, as the AWS
//! SDKs do by default: each part carries its CRC32 (`x-amz-checksum-crc32`,
//! checked by S3 beside its Content-MD5) and CompleteMultipartUpload lists
//! them, so the object keeps a composite CRC32 of its parts. Without a
//! declared algorithm S3 (and moto, which emulates it at a cost of copying
//! the whole object once more) computes a full-object CRC64NVME instead.
//! The part's CRC32 rides in its tag after its ETag.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use base64::prelude::{Engine as _, BASE64_STANDARD};
use bytes::Bytes;
use futures::TryStreamExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use skyweave_cloud::aws_credentials::AwsCredentials;

use super::{ByteStream, ObjectMeta, ObjectStore, Part, PartDone, StoreError};

/// What SigV4 leaves unescaped in a path segment: `A-Z a-z 0-9 - . _ ~`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

pub struct S3Config {
    pub bucket: String,
    /// Keys are relative to it; empty for the whole bucket.
    pub prefix: String,
    pub region: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:5000`), addressed
    /// path-style; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub credentials: S3Credentials,
}

/// Where an S3 store's credentials come from.
pub enum S3Credentials {
    /// The standard AWS chain (environment, profile files, web identity,
    /// container), with a named profile or `AWS_PROFILE` or `default`.
    Chain { profile: Option<String> },
    /// Given by the program (tests, a caller that resolved them itself).
    Static(aws_credential_types::Credentials),
}

enum Credentials {
    Chain(Arc<AwsCredentials>),
    Static(aws_credential_types::Credentials),
}

pub struct S3 {
    bucket: String,
    prefix: String,
    region: String,
    /// Up to the bucket, without a trailing slash: requests append
    /// `/KEY`.
    base: String,
    credentials: Credentials,
    http: reqwest::Client,
}

impl S3 {
    pub fn new(config: S3Config) -> S3 {
        let base = match &config.endpoint {
            Some(endpoint) => format!(
                "{}/{}",
                endpoint.trim_end_matches('/'),
                utf8_percent_encode(&config.bucket, SEGMENT)
            ),
            None => format!("https://{}.s3.{}.amazonaws.com", config.bucket, config.region),
        };
        let mut prefix = config.prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        S3 {
            credentials: match config.credentials {
                S3Credentials::Chain { profile } => {
                    Credentials::Chain(Arc::new(AwsCredentials::new(profile, &config.region)))
                }
                S3Credentials::Static(credentials) => Credentials::Static(credentials),
            },
            bucket: config.bucket,
            prefix,
            region: config.region,
            base,
            http: http_client(),
        }
    }

    /// Creates the bucket; one that exists and is ours is fine.
    pub async fn create_bucket(&self) -> Result<(), StoreError> {
        let body = if self.region == "us-east-1" {
            Bytes::new()
        } else {
            Bytes::from(format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            ))
        };
        let url = format!("{}/", self.base);
        match self.send("PUT", &url, &[], body).await {
            Ok(_) => Ok(()),
            Err(StoreError::Refused { code, .. })
                if code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    fn object_url(&self, key: &str) -> String {
        let full = format!("{}{key}", self.prefix);
        let path: Vec<String> =
            full.split('/').map(|s| utf8_percent_encode(s, SEGMENT).to_string()).collect();
        format!("{}/{}", self.base, path.join("/"))
    }

    fn at(&self, key: &str) -> String {
        format!("s3://{}/{}{key}", self.bucket, self.prefix)
    }

    /// Signs and sends one request; a non-2xx answer becomes `Refused` (or
    /// `NotFound`) with S3's error code and message.
    async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<reqwest::Response, StoreError> {
        let at = url.to_string();
        let credentials = match &self.credentials {
            Credentials::Static(credentials) => credentials.clone(),
            Credentials::Chain(chain) => chain
                .get()
                .await
                .map_err(|e| StoreError::Credentials { at: at.clone(), message: e.to_string() })?,
        };
        let signing_failed = |e: &dyn std::fmt::Display| StoreError::Credentials {
            at: at.clone(),
            message: format!("the request could not be signed with SigV4: {e}"),
        };
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| signing_failed(&e))?
            .into();
        let length = body.len().to_string();
        let mut all: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if method == "PUT" || method == "POST" {
            all.push(("content-length", &length));
        }
        let signable =
            SignableRequest::new(method, url, all.iter().copied(), SignableBody::UnsignedPayload)
                .map_err(|e| signing_failed(&e))?;
        let (instructions, _) =
            sign(signable, &params).map_err(|e| signing_failed(&e))?.into_parts();
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a valid method");
        let mut request = self.http.request(method, url);
        for (name, value) in all.iter().filter(|(k, _)| *k != "content-length") {
            request = request.header(*name, *value);
        }
        for (name, value) in instructions.headers() {
            let mut value =
                reqwest::header::HeaderValue::from_str(value).map_err(|e| signing_failed(&e))?;
            value.set_sensitive(true);
            request = request.header(name, value);
        }
        let response =
            request.body(body).send().await.map_err(|e| StoreError::transport(&at, e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Err(refusal(&at, status, &text))
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(64)
        .build()
        .expect("the HTTP client configuration is valid")
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ErrorBody {
    code: String,
    message: String,
}

/// An S3 error answer as a `StoreError`.
fn refusal(at: &str, status: u16, text: &str) -> StoreError {
    let body: ErrorBody = quick_xml::de::from_str(text).unwrap_or_default();
    let code = if body.code.is_empty() { format!("HTTP{status}") } else { body.code };
    if status == 404 && (code == "NoSuchKey" || code == "NoSuchUpload" || code == "HTTP404") {
        return StoreError::NotFound { at: at.to_string() };
    }
    StoreError::Refused { at: at.to_string(), status, code, message: body.message }
}

fn md5_header(md5: [u8; 16]) -> (&'static str, String) {
    ("content-md5", BASE64_STANDARD.encode(md5))
}

fn etag(response: &reqwest::Response, at: &str) -> Result<String, StoreError> {
    response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| StoreError::Protocol { at: at.to_string(), message: "no ETag".into() })
}

/// The ETag of a plain object or part is the hex MD5 of what the store
/// received (not so under SSE-KMS or SSE-C, where it is opaque): when it
/// has that shape, it must be the MD5 that was sent.
fn check_etag(at: &str, tag: &str, md5: [u8; 16]) -> Result<(), StoreError> {
    let hex = tag.trim_matches('"');
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let sent: String = md5.iter().map(|b| format!("{b:02x}")).collect();
    if hex.eq_ignore_ascii_case(&sent) {
        Ok(())
    } else {
        Err(StoreError::Integrity {
            at: at.to_string(),
            message: format!("the store received bytes whose MD5 is {hex}, not the {sent} sent"),
        })
    }
}

/// Under SSE-KMS, DSSE-KMS or SSE-C the ETag is 32 hex digits but not the
/// MD5 of the content: the comparison says nothing there (S3 has checked
/// the Content-MD5 sent).
trait FilterEncrypted {
    fn filter_encrypted(self, response: &reqwest::Response) -> Result<(), StoreError>;
}

impl FilterEncrypted for Result<(), StoreError> {
    fn filter_encrypted(self, response: &reqwest::Response) -> Result<(), StoreError> {
        let headers = response.headers();
        let kms = headers
            .get("x-amz-server-side-encryption")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("aws:kms"));
        let customer_key = headers.contains_key("x-amz-server-side-encryption-customer-algorithm");
        if kms || customer_key {
            Ok(())
        } else {
            self
        }
    }
}

fn xml<T: for<'de> Deserialize<'de>>(at: &str, text: &str) -> Result<T, StoreError> {
    quick_xml::de::from_str(text)
        .map_err(|e| StoreError::Protocol { at: at.to_string(), message: format!("{e}") })
}

/// An answer's XML body, read and parsed.
async fn xml_answer<T: for<'de> Deserialize<'de>>(
    at: &str,
    response: reqwest::Response,
) -> Result<T, StoreError> {
    let text = response.text().await.map_err(|e| StoreError::transport(at, e))?;
    xml(at, &text)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    size: u64,
    #[serde(rename = "ETag", default)]
    etag: String,
}

#[derive(Debug, Deserialize, Default)]
struct CompleteMultipartUploadResult {
    #[serde(rename = "ETag", default)]
    etag: String,
}

/// Marks the ids of uploads started with `x-amz-checksum-algorithm: CRC32`.
/// An id without it is from before, or from a store that refused the
/// header: its parts carry no checksum.
const CRC32_UPLOAD: &str = "crc32:";

/// Whether an upload carries part checksums, and S3's own id.
fn upload_id(upload: &str) -> (bool, &str) {
    match upload.strip_prefix(CRC32_UPLOAD) {
        Some(id) => (true, id),
        None => (false, upload),
    }
}

/// A part's CRC32 as S3 writes it: big-endian, base64.
fn crc32_base64(data: &[u8]) -> String {
    BASE64_STANDARD.encode(crc32fast::hash(data).to_be_bytes())
}

/// A part's tag: its ETag, and its CRC32 when it has one (base64 has no
/// space, so the last ` crc32=` splits them).
fn part_tag(etag: &str, crc32: Option<&str>) -> String {
    match crc32 {
        Some(crc32) => format!("{etag} crc32={crc32}"),
        None => etag.to_string(),
    }
}

fn split_tag(tag: &str) -> (&str, Option<&str>) {
    match tag.rsplit_once(" crc32=") {
        Some((etag, crc32)) => (etag, Some(crc32)),
        None => (tag, None),
    }
}

/// The ETag S3 gives an object assembled from `parts` whose tags are MD5s:
/// hex MD5 of the concatenated binary MD5s, `-`, the part count. `None`
/// when a tag is no MD5 (encrypted uploads).
fn multipart_etag(parts: &[PartDone]) -> Option<String> {
    use md5::Digest as _;
    let mut all = Vec::with_capacity(parts.len() * 16);
    for part in parts {
        let hex = split_tag(&part.tag).0.trim_matches('"');
        if hex.len() != 32 {
            return None;
        }
        for i in 0..16 {
            all.push(u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?);
        }
    }
    let digest: [u8; 16] = md5::Md5::digest(&all).into();
    Some(format!(
        "{}-{}",
        digest.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        parts.len()
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InitiateMultipartUploadResult {
    upload_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListPartsResult {
    #[serde(default)]
    part: Vec<ListedPart>,
    #[serde(default)]
    is_truncated: bool,
    next_part_number_marker: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedPart {
    part_number: u32,
    size: u64,
    #[serde(rename = "ETag")]
    etag: String,
    #[serde(rename = "ChecksumCRC32", default)]
    checksum_crc32: Option<String>,
}

fn query(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

impl S3 {
    /// GET, optionally ranged, optionally only at a version (`If-Match`).
    async fn fetch(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        if_match: Option<&str>,
    ) -> Result<ByteStream, StoreError> {
        let url = self.object_url(key);
        let mut headers = Vec::new();
        if let Some(version) = if_match {
            headers.push(("if-match", version.to_string()));
        }
        if let Some(range) = &range {
            if range.is_empty() {
                return Ok(Box::pin(futures::stream::empty()));
            }
            headers.push(("range", format!("bytes={}-{}", range.start, range.end - 1)));
        }
        let response = self.send("GET", &url, &headers, Bytes::new()).await?;
        let at = self.at(key);
        Ok(Box::pin(response.bytes_stream().map_err(move |e| StoreError::transport(&at, e))))
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3 {
    async fn create_container(&self) -> Result<(), StoreError> {
        S3::create_bucket(self).await
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn list(&self) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("{}/?list-type=2&prefix={}", self.base, query(&self.prefix));
            if let Some(token) = &token {
                url.push_str(&format!("&continuation-token={}", query(token)));
            }
            let response = self.send("GET", &url, &[], Bytes::new()).await?;
            let page: ListBucketResult = xml_answer(&self.describe(), response).await?;
            for object in page.contents {
                let Some(key) = object.key.strip_prefix(&self.prefix) else { continue };
                if key.is_empty() || key.ends_with('/') && object.size == 0 {
                    continue; // a "folder" marker, not data
                }
                found.push(ObjectMeta {
                    key: key.to_string(),
                    size: object.size,
                    version: object.etag,
                });
            }
            match (page.is_truncated, page.next_continuation_token) {
                (true, Some(next)) => token = Some(next),
                (true, None) => {
                    return Err(StoreError::Protocol {
                        at: self.describe(),
                        message: "a truncated listing without a continuation token".into(),
                    })
                }
                (false, _) => return Ok(found),
            }
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let url = self.object_url(key);
        match self.send("HEAD", &url, &[], Bytes::new()).await {
            Ok(response) => {
                let size = response
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Ok(Some(ObjectMeta { key: key.to_string(), size, version: etag(&response, &url)? }))
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        self.fetch(key, range, None).await
    }

    async fn get_if(&self, key: &str, version: &str) -> Result<ByteStream, StoreError> {
        self.fetch(key, None, Some(version)).await.map_err(super::changed_on_412)
    }

    async fn put(&self, key: &str, data: Bytes, md5: [u8; 16]) -> Result<String, StoreError> {
        let url = self.object_url(key);
        let response = self.send("PUT", &url, &[md5_header(md5)], data).await?;
        let tag = etag(&response, &url)?;
        if let Err(error) = check_etag(&self.at(key), &tag, md5).filter_encrypted(&response) {
            // S3 checks Content-MD5 itself; a store that does not, and
            // kept other bytes than were sent, must not keep them.
            let _ = self.delete(key).await;
            return Err(error);
        }
        Ok(tag)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.send("DELETE", &self.object_url(key), &[], Bytes::new()).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn start_upload(
        &self,
        key: &str,
        _size: u64,
        _part_size: u64,
    ) -> Result<String, StoreError> {
        let url = format!("{}?uploads", self.object_url(key));
        let algorithm = ("x-amz-checksum-algorithm", "CRC32".to_string());
        let (response, crc32) = match self.send("POST", &url, &[algorithm], Bytes::new()).await {
            Ok(response) => (response, true),
            // Some S3-compatible stores do not implement checksum
            // algorithms (Cloudflare R2 documents the header as
            // unsupported): upload without part checksums there.
            Err(StoreError::Refused { status: 400 | 501, code, .. })
                if code != "AccessDenied" && code != "NoSuchBucket" =>
            {
                tracing::debug!(at = %self.at(key), code = %code, "the store refuses part checksums; uploading without");
                (self.send("POST", &url, &[], Bytes::new()).await?, false)
            }
            Err(error) => return Err(error),
        };
        let started: InitiateMultipartUploadResult = xml_answer(&self.at(key), response).await?;
        Ok(if crc32 { format!("{CRC32_UPLOAD}{}", started.upload_id) } else { started.upload_id })
    }

    fn held_part(&self, upload: &str, part: PartDone, data: &[u8]) -> PartDone {
        // A store that does not list the parts' checksums (moto) still needs
        // them at completion when the upload declared them; the bytes are
        // those sent (their MD5 matched the one recorded at sending).
        match (upload_id(upload).0, split_tag(&part.tag)) {
            (true, (etag, None)) => {
                PartDone { tag: part_tag(etag, Some(&crc32_base64(data))), ..part }
            }
            _ => part,
        }
    }

    async fn put_part(&self, key: &str, upload: &str, part: Part) -> Result<PartDone, StoreError> {
        let (crc32_upload, upload) = upload_id(upload);
        let url = format!(
            "{}?partNumber={}&uploadId={}",
            self.object_url(key),
            part.index + 1,
            query(upload)
        );
        let size = part.data.len() as u64;
        let mut headers = vec![md5_header(part.md5)];
        let crc32 = crc32_upload.then(|| crc32_base64(&part.data));
        if let Some(crc32) = &crc32 {
            headers.push(("x-amz-checksum-crc32", crc32.clone()));
        }
        let response = self.send("PUT", &url, &headers, part.data).await?;
        let etag = etag(&response, &url)?;
        check_etag(&self.at(key), &etag, part.md5).filter_encrypted(&response)?;
        Ok(PartDone { index: part.index, size, tag: part_tag(&etag, crc32.as_deref()) })
    }

    async fn uploaded_parts(
        &self,
        key: &str,
        upload: &str,
    ) -> Result<Option<Vec<PartDone>>, StoreError> {
        let (_, upload) = upload_id(upload);
        let mut parts = Vec::new();
        let mut marker: Option<u32> = None;
        loop {
            let mut url = format!("{}?uploadId={}", self.object_url(key), query(upload));
            if let Some(marker) = marker {
                url.push_str(&format!("&part-number-marker={marker}"));
            }
            let response = match self.send("GET", &url, &[], Bytes::new()).await {
                Ok(response) => response,
                Err(StoreError::NotFound { .. }) => return Ok(None),
                Err(error) => return Err(error),
            };
            let page: ListPartsResult = xml_answer(&self.at(key), response).await?;
            for part in page.part {
                if part.part_number == 0 {
                    continue;
                }
                parts.push(PartDone {
                    index: part.part_number - 1,
                    size: part.size,
                    tag: part_tag(&part.etag, part.checksum_crc32.as_deref()),
                });
            }
            match (page.is_truncated, page.next_part_number_marker) {
                (true, Some(next)) => marker = Some(next),
                _ => break,
            }
        }
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
        let mut body = String::from(
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        let (_, upload) = upload_id(upload);
        for part in parts {
            let (etag, crc32) = split_tag(&part.tag);
            let escape = |text: &str| text.replace('&', "&amp;").replace('"', "&quot;");
            body.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag>",
                part.index + 1,
                escape(etag)
            ));
            if let Some(crc32) = crc32 {
                body.push_str(&format!("<ChecksumCRC32>{}</ChecksumCRC32>", escape(crc32)));
            }
            body.push_str("</Part>");
        }
        body.push_str("</CompleteMultipartUpload>");
        let url = format!("{}?uploadId={}", self.object_url(key), query(upload));
        let response = self.send("POST", &url, &[], Bytes::from(body)).await?;
        let text = response.text().await.map_err(|e| StoreError::transport(&self.at(key), e))?;
        // A 200 answer may still be an error, found once the parts were
        // assembled.
        if text.contains("<Error>") {
            return Err(refusal(&self.at(key), 500, &text));
        }
        let completed: CompleteMultipartUploadResult =
            quick_xml::de::from_str(&text).unwrap_or_default();
        // A multipart ETag is the MD5 of the parts' MD5s and their count:
        // when the parts' tags are MD5s, it proves the object was assembled
        // from exactly the parts sent (resumed ones included).
        if let Some(expected) = multipart_etag(parts) {
            let got = completed.etag.trim_matches('"');
            if !got.is_empty() && got.contains('-') && !got.eq_ignore_ascii_case(&expected) {
                return Err(StoreError::Integrity {
                    at: self.at(key),
                    message: format!("the assembled object's ETag is {got}, not the {expected} of the parts sent"),
                });
            }
        }
        let head = self.head(key).await?.ok_or_else(|| StoreError::Integrity {
            at: self.at(key),
            message: "the completed upload is not there".into(),
        })?;
        if head.size != size {
            return Err(StoreError::Integrity {
                at: self.at(key),
                message: format!("the completed object has {} bytes, not {size}", head.size),
            });
        }
        if !completed.etag.is_empty() && completed.etag != head.version {
            return Err(StoreError::Integrity {
                at: self.at(key),
                message: "another writer replaced the object as the upload completed".into(),
            });
        }
        Ok(head.version)
    }

    async fn abort_upload(&self, key: &str, upload: &str) -> Result<(), StoreError> {
        let (_, upload) = upload_id(upload);
        let url = format!("{}?uploadId={}", self.object_url(key), query(upload));
        match self.send("DELETE", &url, &[], Bytes::new()).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(prefix: &str) -> S3 {
        S3::new(S3Config {
            bucket: "b".into(),
            prefix: prefix.into(),
            region: "eu-west-1".into(),
            endpoint: Some("http://127.0.0.1:9/".into()),
            credentials: S3Credentials::Chain { profile: None },
        })
    }

    #[test]
    fn keys_are_escaped_per_segment_and_prefixed() {
        let s3 = store("/models/");
        assert_eq!(
            s3.object_url("dir/with space/ü+&=%?#.bin"),
            "http://127.0.0.1:9/b/models/dir/with%20space/%C3%BC%2B%26%3D%25%3F%23.bin"
        );
        assert_eq!(store("").object_url("a~b-c_d.e"), "http://127.0.0.1:9/b/a~b-c_d.e");
        assert_eq!(
            S3::new(S3Config {
                bucket: "weights".into(),
                prefix: String::new(),
                region: "us-east-1".into(),
                endpoint: None,
                credentials: S3Credentials::Chain { profile: None },
            })
            .object_url("x"),
            "https://weights.s3.us-east-1.amazonaws.com/x"
        );
    }

    #[test]
    fn errors_keep_s3_code_and_message() {
        let text = "<?xml version=\"1.0\"?><Error><Code>BadDigest</Code><Message>The \
                    Content-MD5 you specified did not match</Message></Error>";
        match refusal("s3://b/k", 400, text) {
            StoreError::Refused { status, code, message, .. } => {
                assert_eq!((status, code.as_str()), (400, "BadDigest"));
                assert!(message.contains("Content-MD5"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            refusal("s3://b/k", 404, "<Error><Code>NoSuchKey</Code></Error>"),
            StoreError::NotFound { .. }
        ));
        assert!(matches!(refusal("s3://b/k", 503, "not xml"), StoreError::Refused { .. }));
        assert!(refusal("s3://b/k", 503, "").is_transient());
    }

    #[test]
    fn multipart_etags_are_the_md5_of_the_part_md5s() {
        use md5::Digest as _;
        let parts: Vec<PartDone> = [b"first".as_slice(), b"second"]
            .iter()
            .enumerate()
            .map(|(i, data)| {
                let md5: [u8; 16] = md5::Md5::digest(data).into();
                let tag =
                    format!("\"{}\"", md5.iter().map(|b| format!("{b:02x}")).collect::<String>());
                PartDone { index: i as u32, size: data.len() as u64, tag }
            })
            .collect();
        // Computed independently: python3 -c "import hashlib; h=lambda b: hashlib.md5(b).digest();
        // print(hashlib.md5(h(b'first')+h(b'second')).hexdigest())"
        assert_eq!(
            multipart_etag(&parts).unwrap(),
            "018d78427d06dd29caa19b06085b7e7e-2".to_string()
        );
        assert!(multipart_etag(&[PartDone { index: 0, size: 1, tag: "opaque".into() }]).is_none());
    }

    #[test]
    fn part_checksums_are_s3s_crc32_and_ride_in_the_tag() {
        // The CRC-32 check value: CRC32("123456789") = 0xCBF43926.
        assert_eq!(crc32_base64(b"123456789"), "y/Q5Jg==");
        let tag = part_tag("\"0123\"", Some("y/Q5Jg=="));
        assert_eq!(split_tag(&tag), ("\"0123\"", Some("y/Q5Jg==")));
        assert_eq!(split_tag("\"0123\""), ("\"0123\"", None));
        assert_eq!(upload_id("crc32:abc"), (true, "abc"));
        assert_eq!(upload_id("abc"), (false, "abc"));
    }

    #[test]
    fn an_md5_shaped_etag_must_match() {
        let md5 = [0xab; 16];
        let hex = "abababababababababababababababab";
        assert!(check_etag("k", &format!("\"{hex}\""), md5).is_ok());
        assert!(check_etag("k", "\"00000000000000000000000000000000\"", md5).is_err());
        // Multipart and SSE-KMS ETags say nothing about the MD5.
        assert!(check_etag("k", "\"0123456789abcdef0123456789abcdef-3\"", md5).is_ok());
        assert!(check_etag("k", "opaque", md5).is_ok());
    }

    #[test]
    fn listings_parse() {
        let text = "<ListBucketResult><IsTruncated>true</IsTruncated><Contents><Key>p/a &amp; \
                    b</Key><Size>3</Size><ETag>\"e\"</ETag></Contents><Contents><Key>p/c</Key>\
                    <Size>0</Size><ETag>\"f\"</ETag></Contents>\
                    <NextContinuationToken>t1</NextContinuationToken></ListBucketResult>";
        let page: ListBucketResult = xml("x", text).unwrap();
        assert_eq!(page.contents.len(), 2);
        assert_eq!(page.contents[0].key, "p/a & b");
        assert_eq!(page.next_continuation_token.as_deref(), Some("t1"));
        assert!(page.is_truncated);
        let empty: ListBucketResult =
            xml("x", "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>")
                .unwrap();
        assert!(empty.contents.is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// Whatever a store answers, the XML readers give a value or an
        /// error, never a panic.
        #[test]
        fn any_answer_parses_or_fails_cleanly(text in "(<[/]?(ListBucketResult|Contents|Key|Size|ETag|IsTruncated|NextContinuationToken|Error|Code|Message|UploadId|Part|PartNumber)>|[a-z0-9 &;\"]{0,8}){0,24}") {
            let _ = xml::<ListBucketResult>("x", &text);
            let _ = xml::<ListPartsResult>("x", &text);
            let _ = xml::<InitiateMultipartUploadResult>("x", &text);
            let _ = refusal("x", 500, &text);
        }
    }
}
