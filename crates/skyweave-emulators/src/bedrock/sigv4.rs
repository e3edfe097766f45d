//! AWS Signature Version 4 verification, written from the AWS IAM user guide
//! ("Create a signed AWS API request" / "Elements of an AWS API request
//! signature"), independently of the `aws-sigv4` crate the gateway signs
//! with.
//!
//! ```text
//! CanonicalRequest = Method \n CanonicalURI \n CanonicalQueryString \n
//!                    CanonicalHeaders \n SignedHeaders \n HashedPayload
//! StringToSign     = "AWS4-HMAC-SHA256" \n X-Amz-Date \n
//!                    YYYYMMDD/region/service/aws4_request \n Hex(SHA256(CanonicalRequest))
//! SigningKey       = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, YYYYMMDD), region), service), "aws4_request")
//! Signature        = Hex(HMAC(SigningKey, StringToSign))
//! ```
//!
//! Canonical URI: every AWS service except S3 double-encodes the path. The
//! path as it arrives on the wire is already URI-encoded once (a model id
//! `anthropic.claude-3-haiku-20240307-v1:0` travels as `...v1%3A0`); the
//! canonical URI is that path, normalized (empty and `.` segments dropped,
//! `..` resolved), then URI-encoded *again* with `/` kept: `%3A` becomes
//! `%253A` and a raw `:` becomes `%3A`. With double encoding off (S3 style)
//! the normalized wire path is used as it is.

use std::fmt::Write as _;

use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, Method, Uri};
use sha2::{Digest, Sha256};

pub(crate) const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const TERMINATOR: &str = "aws4_request";
const CORAL: &str = ":http://internal.amazon.com/coral/com.amazon.coral.service/";

/// What the verifier checks a request against.
#[derive(Clone, Debug)]
pub(crate) struct Verifier {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) session_token: Option<String>,
    pub(crate) region: String,
    pub(crate) service: String,
    pub(crate) double_encode_path: bool,
    /// Largest accepted distance between `x-amz-date` and the clock.
    pub(crate) max_skew_secs: u64,
}

/// Why a request's signature was refused, with the answer the real service
/// gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// No `Authorization` header at all.
    Missing,
    /// The `Authorization` header or `x-amz-date` is malformed or lacks a part.
    Incomplete(String),
    /// Unknown access key id, or a missing / wrong / unexpected session token.
    UnrecognizedClient,
    /// Expired date, bad credential scope, unsigned required header, or a
    /// signature that does not match.
    InvalidSignature(String),
}

impl Rejection {
    pub(crate) fn status(&self) -> u16 {
        match self {
            Rejection::Incomplete(_) => 400,
            _ => 403,
        }
    }

    /// The bare exception name.
    pub(crate) fn error_type(&self) -> &'static str {
        match self {
            Rejection::Missing => "MissingAuthenticationTokenException",
            Rejection::Incomplete(_) => "IncompleteSignatureException",
            Rejection::UnrecognizedClient => "UnrecognizedClientException",
            Rejection::InvalidSignature(_) => "InvalidSignatureException",
        }
    }

    /// The `x-amzn-ErrorType` header value: the name followed by the
    /// front-end's namespace, as AWS sends it for authentication failures
    /// (clients must cut at the first `:`).
    pub(crate) fn error_type_header(&self) -> String {
        format!("{}{CORAL}", self.error_type())
    }

    pub(crate) fn message(&self) -> String {
        match self {
            Rejection::Missing => "Missing Authentication Token".to_owned(),
            Rejection::UnrecognizedClient => {
                "The security token included in the request is invalid.".to_owned()
            }
            Rejection::Incomplete(m) | Rejection::InvalidSignature(m) => m.clone(),
        }
    }
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AuthHeader<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) date: &'a str,
    pub(crate) region: &'a str,
    pub(crate) service: &'a str,
    pub(crate) terminator: &'a str,
    pub(crate) signed_headers: &'a str,
    pub(crate) signature: &'a str,
}

pub(crate) fn parse_authorization(value: &str) -> Result<AuthHeader<'_>, Rejection> {
    let value = value.trim();
    let (algorithm, rest) = value.split_once(' ').unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        return Err(Rejection::Incomplete(format!(
            "Authorization header requires the '{ALGORITHM}' algorithm, got '{algorithm}'."
        )));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(Rejection::Incomplete(format!(
                "Authorization header requires each component to be of the form key=value \
                 (hashed with SHA-256), got '{part}'."
            )));
        };
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed_headers = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let mut missing = String::new();
    for (name, v) in
        [("Credential", credential), ("Signature", signature), ("SignedHeaders", signed_headers)]
    {
        if v.is_none_or(str::is_empty) {
            let _ = write!(missing, "Authorization header requires '{name}' parameter. ");
        }
    }
    if !missing.is_empty() {
        missing.push_str("Authorization=");
        missing.push_str(value);
        return Err(Rejection::Incomplete(missing));
    }
    let (credential, signed_headers, signature) = (
        credential.unwrap_or_default(),
        signed_headers.unwrap_or_default(),
        signature.unwrap_or_default(),
    );
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = parts[..] else {
        return Err(Rejection::Incomplete(format!(
            "Credential should have 5 '/'-separated parts \
             (access key id/date/region/service/aws4_request), got '{credential}'."
        )));
    };
    Ok(AuthHeader { access_key_id, date, region, service, terminator, signed_headers, signature })
}

/// What was computed for a request, for error messages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Computed {
    pub(crate) canonical_request: String,
    pub(crate) string_to_sign: String,
    pub(crate) signature: String,
}

impl Verifier {
    /// Check the request's SigV4 signature as of `now` (Unix seconds).
    pub(crate) fn verify(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        now: u64,
    ) -> Result<(), Rejection> {
        let Some(auth) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Rejection::Missing);
        };
        let auth = auth.to_str().map_err(|_| {
            Rejection::Incomplete("Authorization header is not valid ASCII.".to_owned())
        })?;
        let auth = parse_authorization(auth)?;
        let amz_date = header_str(headers, "x-amz-date").ok_or_else(|| {
            Rejection::Incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' \
                 header."
                    .to_owned(),
            )
        })?;
        let request_time = parse_amz_date(amz_date).ok_or_else(|| {
            Rejection::Incomplete(format!(
                "Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See \
                 http://en.wikipedia.org/wiki/ISO_8601"
            ))
        })?;

        if auth.access_key_id != self.access_key_id {
            return Err(Rejection::UnrecognizedClient);
        }
        let token = header_str(headers, "x-amz-security-token");
        if token != self.session_token.as_deref() {
            return Err(Rejection::UnrecognizedClient);
        }

        if auth.date != &amz_date[..8] {
            return Err(Rejection::InvalidSignature(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
                 from HTTP: '{}' != '{}', from '{amz_date}'.",
                auth.date,
                &amz_date[..8]
            )));
        }
        if auth.region != self.region {
            return Err(Rejection::InvalidSignature(format!(
                "Credential should be scoped to a valid region, not '{}'. ",
                auth.region
            )));
        }
        if auth.service != self.service {
            return Err(Rejection::InvalidSignature(format!(
                "Credential should be scoped to correct service: '{}'. ",
                self.service
            )));
        }
        if auth.terminator != TERMINATOR {
            return Err(Rejection::InvalidSignature(format!(
                "Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{}'. ",
                auth.terminator
            )));
        }

        let signed: Vec<&str> = auth.signed_headers.split(';').collect();
        if !signed.contains(&"host") {
            return Err(Rejection::InvalidSignature(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
                    .to_owned(),
            ));
        }
        if !signed.contains(&"x-amz-date") {
            return Err(Rejection::InvalidSignature(
                "'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.".to_owned(),
            ));
        }
        if self.session_token.is_some() && !signed.contains(&"x-amz-security-token") {
            return Err(Rejection::InvalidSignature(
                "'X-Amz-Security-Token' must be a 'SignedHeader' in the AWS Authorization."
                    .to_owned(),
            ));
        }

        if request_time + self.max_skew_secs < now {
            return Err(Rejection::InvalidSignature(format!(
                "Signature expired: {amz_date} is now earlier than {} ({} - {} min.)",
                format_amz_date(now - self.max_skew_secs),
                format_amz_date(now),
                self.max_skew_secs / 60
            )));
        }
        if request_time > now + self.max_skew_secs {
            return Err(Rejection::InvalidSignature(format!(
                "Signature not yet current: {amz_date} is still later than {} ({} + {} min.)",
                format_amz_date(now + self.max_skew_secs),
                format_amz_date(now),
                self.max_skew_secs / 60
            )));
        }

        let body_hash = hex(&Sha256::digest(body));
        let payload_hash = match header_str(headers, "x-amz-content-sha256") {
            Some(declared) if declared == "UNSIGNED-PAYLOAD" => declared.to_owned(),
            Some(declared) if declared.eq_ignore_ascii_case(&body_hash) => declared.to_owned(),
            Some(_) => {
                return Err(Rejection::InvalidSignature(
                    "The provided 'x-amz-content-sha256' header does not match what was computed."
                        .to_owned(),
                ));
            }
            None => body_hash,
        };

        let computed = self.compute(method, uri, headers, &signed, &payload_hash, amz_date);
        if constant_time_eq(computed.signature.as_bytes(), auth.signature.as_bytes()) {
            Ok(())
        } else {
            Err(Rejection::InvalidSignature(format!(
                "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method. Consult the service \
                 documentation for details.\n\nThe Canonical String for this request should \
                 have been\n'{}'\n\nThe String-to-Sign should have been\n'{}'\n",
                computed.canonical_request, computed.string_to_sign
            )))
        }
    }

    /// Canonical request, string to sign and signature for a request, with
    /// the given signed header names (lowercase, in the order given).
    pub(crate) fn compute(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        signed: &[&str],
        payload_hash: &str,
        amz_date: &str,
    ) -> Computed {
        let canonical_request = canonical_request(
            method.as_str(),
            &canonical_uri(uri.path(), self.double_encode_path),
            &canonical_query(uri.query().unwrap_or("")),
            &canonical_headers(headers, uri, signed),
            &signed.join(";"),
            payload_hash,
        );
        let date = amz_date.get(..8).unwrap_or(amz_date);
        let scope = format!("{date}/{}/{}/{TERMINATOR}", self.region, self.service);
        let string_to_sign = string_to_sign(amz_date, &scope, &canonical_request);
        let key = signing_key(&self.secret_access_key, date, &self.region, &self.service);
        let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
        Computed { canonical_request, string_to_sign, signature }
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn canonical_request(
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    canonical_headers: &str,
    signed_headers: &str,
    payload_hash: &str,
) -> String {
    format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
    )
}

pub(crate) fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical_request)))
}

pub(crate) fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, TERMINATOR.as_bytes())
}

pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Equal length and content, in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// The spec's `UriEncode`: every byte but the unreserved ones as `%XX`
/// (upper-case hex); `/` kept when `keep_slash`.
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `%XX` decoding (invalid escapes kept as they are); `+` becomes a space
/// when `plus_is_space`.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    fn hexval(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hexval(bytes[i + 1]), hexval(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Remove empty and `.` segments and resolve `..`, keeping a trailing `/`.
pub(crate) fn normalize_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    out
}

/// The canonical URI of a wire path (see the module docs).
pub(crate) fn canonical_uri(wire_path: &str, double_encode: bool) -> String {
    let normalized = normalize_path(wire_path);
    if double_encode {
        uri_encode(&normalized, true)
    } else {
        normalized
    }
}

/// Parameters decoded, re-encoded with `UriEncode`, sorted by name then
/// value, joined with `&`; a parameter without `=` gets an empty value.
pub(crate) fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k, true), false),
                uri_encode(&percent_decode(v, true), false),
            )
        })
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// `name:value\n` for each signed header, in the given order. Values are
/// trimmed with inner runs of spaces collapsed; repeated headers are joined
/// with `,`. `host` falls back to the request's authority (HTTP/2).
pub(crate) fn canonical_headers(headers: &HeaderMap, uri: &Uri, signed: &[&str]) -> String {
    let mut out = String::new();
    for &name in signed {
        let mut values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| collapse_spaces(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        if values.is_empty() && name == "host" {
            if let Some(a) = uri.authority() {
                values.push(a.as_str().to_owned());
            }
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out
}

fn collapse_spaces(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for word in v.split(' ').filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.trim().to_owned()
}

/// `YYYYMMDD'T'HHMMSS'Z'` to Unix seconds.
pub(crate) fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, se) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    u64::try_from(days).ok().map(|days| days * 86_400 + h * 3600 + mi * 60 + se)
}

/// Unix seconds to `YYYYMMDD'T'HHMMSS'Z'`.
pub(crate) fn format_amz_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A test-side signer: signs `headers` (plus `host`, `x-amz-date`, the
/// session token) and returns the headers to add, `authorization` last.
#[cfg(test)]
pub(crate) fn sign_for_tests(
    v: &Verifier,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    amz_date: &str,
) -> Vec<(String, String)> {
    let mut all = headers.clone();
    let mut added = Vec::new();
    let host = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
    let mut put = |all: &mut HeaderMap, k: &'static str, val: String| {
        all.insert(k, http::HeaderValue::from_str(&val).expect("header value"));
        added.push((k.to_owned(), val));
    };
    if !all.contains_key("host") {
        // Not "added": the HTTP client writes Host itself.
        all.insert("host", http::HeaderValue::from_str(&host).expect("host"));
    }
    put(&mut all, "x-amz-date", amz_date.to_owned());
    if let Some(t) = &v.session_token {
        put(&mut all, "x-amz-security-token", t.clone());
    }
    let mut names: Vec<&str> = all.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let payload_hash = hex(&Sha256::digest(body));
    let computed = v.compute(method, uri, &all, &names, &payload_hash, amz_date);
    let date = &amz_date[..8];
    let auth = format!(
        "{ALGORITHM} Credential={}/{date}/{}/{}/{TERMINATOR}, SignedHeaders={}, Signature={}",
        v.access_key_id,
        v.region,
        v.service,
        names.join(";"),
        computed.signature
    );
    added.push(("authorization".to_owned(), auth));
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    const IAM_EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const S3_EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn verifier(akid: &str, secret: &str, region: &str, service: &str, double: bool) -> Verifier {
        Verifier {
            access_key_id: akid.to_owned(),
            secret_access_key: secret.to_owned(),
            session_token: None,
            region: region.to_owned(),
            service: service.to_owned(),
            double_encode_path: double,
            max_skew_secs: 300,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// The S3 "GET Object" example of the Amazon S3 API reference
    /// ("Signature Calculations for the Authorization Header: Transferring
    /// Payload in a Single Chunk"): every intermediate value is published.
    #[test]
    fn published_s3_get_object_example() {
        let v = verifier("AKIAIOSFODNN7EXAMPLE", S3_EXAMPLE_SECRET, "us-east-1", "s3", false);
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", empty),
            ("x-amz-date", "20130524T000000Z"),
        ]);
        let uri: Uri = "/test.txt".parse().unwrap();
        let signed = ["host", "range", "x-amz-content-sha256", "x-amz-date"];
        let c = v.compute(&Method::GET, &uri, &h, &signed, empty, "20130524T000000Z");
        assert_eq!(
            c.canonical_request,
            format!(
                "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
                 x-amz-content-sha256:{empty}\nx-amz-date:20130524T000000Z\n\n\
                 host;range;x-amz-content-sha256;x-amz-date\n{empty}"
            )
        );
        assert_eq!(
            c.string_to_sign,
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert_eq!(c.signature, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");

        // And the whole request verifies, at its own time.
        let mut h = h;
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
                .parse()
                .unwrap(),
        );
        let now = parse_amz_date("20130524T000000Z").unwrap();
        assert_eq!(v.verify(&Method::GET, &uri, &h, b"", now), Ok(()));
    }

    /// `get-vanilla-query-order-key-case` of the AWS SigV4 test suite: the
    /// query is sorted by name.
    #[test]
    fn published_test_suite_query_order_example() {
        let v = verifier("AKIDEXAMPLE", IAM_EXAMPLE_SECRET, "us-east-1", "service", true);
        let mut h =
            headers(&[("host", "example.amazonaws.com"), ("x-amz-date", "20150830T123600Z")]);
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
                .parse()
                .unwrap(),
        );
        let uri: Uri = "/?Param2=value2&Param1=value1".parse().unwrap();
        let now = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(v.verify(&Method::GET, &uri, &h, b"", now), Ok(()));
        assert_eq!(canonical_query("Param2=value2&Param1=value1"), "Param1=value1&Param2=value2");
    }

    fn bedrock_verifier() -> Verifier {
        let mut v = verifier("AKIDEXAMPLE", IAM_EXAMPLE_SECRET, "us-east-1", "bedrock", true);
        v.session_token = Some("token/with+special=chars".to_owned());
        v
    }

    /// A converse request signed by `sign_for_tests`, and its time.
    fn signed_converse() -> (Verifier, Uri, HeaderMap, Vec<u8>, u64) {
        let v = bedrock_verifier();
        let uri: Uri =
            "http://127.0.0.1:8080/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
                .parse()
                .unwrap();
        let body = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#.to_vec();
        let base = headers(&[("content-type", "application/json")]);
        let date = "20240601T101010Z";
        let mut h = base.clone();
        h.insert("host", "127.0.0.1:8080".parse().unwrap());
        for (k, val) in sign_for_tests(&v, &Method::POST, &uri, &base, &body, date) {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), val.parse().unwrap());
        }
        (v, uri, h, body, parse_amz_date(date).unwrap())
    }

    #[test]
    fn own_signer_round_trips_and_tampering_is_caught() {
        let (v, uri, h, body, now) = signed_converse();
        assert_eq!(v.verify(&Method::POST, &uri, &h, &body, now), Ok(()));
        // 4 minutes of skew either way is fine.
        assert_eq!(v.verify(&Method::POST, &uri, &h, &body, now + 240), Ok(()));
        assert_eq!(v.verify(&Method::POST, &uri, &h, &body, now - 240), Ok(()));

        let mismatch = |r: Result<(), Rejection>| match r {
            Err(Rejection::InvalidSignature(m)) => {
                assert!(m.starts_with("The request signature we calculated does not match"), "{m}")
            }
            other => panic!("expected a signature mismatch, got {other:?}"),
        };
        // Body, method, path, query, a signed header, the signature itself.
        mismatch(v.verify(&Method::POST, &uri, &h, b"{}", now));
        mismatch(v.verify(&Method::PUT, &uri, &h, &body, now));
        let other: Uri =
            "/model/anthropic.claude-3-haiku-20240307-v1%3A1/converse".parse().unwrap();
        mismatch(v.verify(&Method::POST, &other, &h, &body, now));
        let query: Uri = format!("{}?x=1", uri.path()).parse().unwrap();
        mismatch(v.verify(&Method::POST, &query, &h, &body, now));
        let mut h2 = h.clone();
        h2.insert("content-type", "text/plain".parse().unwrap());
        mismatch(v.verify(&Method::POST, &uri, &h2, &body, now));
        let mut h2 = h.clone();
        h2.insert("host", "127.0.0.1:8081".parse().unwrap());
        mismatch(v.verify(&Method::POST, &uri, &h2, &body, now));
        // An unsigned extra header does not matter.
        let mut h2 = h.clone();
        h2.insert("user-agent", "x".parse().unwrap());
        assert_eq!(v.verify(&Method::POST, &uri, &h2, &body, now), Ok(()));
        // Last hex digit of the signature flipped.
        let mut h2 = h.clone();
        let auth = h2["authorization"].to_str().unwrap().to_owned();
        let last = auth.chars().last().unwrap();
        let flipped = format!("{}{}", &auth[..auth.len() - 1], if last == '0' { '1' } else { '0' });
        h2.insert("authorization", flipped.parse().unwrap());
        mismatch(v.verify(&Method::POST, &uri, &h2, &body, now));
        // Same request under another secret.
        let mut wrong = v.clone();
        wrong.secret_access_key.push('x');
        mismatch(wrong.verify(&Method::POST, &uri, &h, &body, now));
        // Single-encoded canonical URI on the verifier side: the path has a
        // `%3A`, so the two rules disagree.
        let mut single = v.clone();
        single.double_encode_path = false;
        mismatch(single.verify(&Method::POST, &uri, &h, &body, now));
    }

    #[test]
    fn credential_date_token_and_key_checks() {
        let (v, uri, h, body, now) = signed_converse();
        let check = |h: &HeaderMap, now: u64| v.verify(&Method::POST, &uri, h, &body, now);

        let r = check(&h, now + 301).unwrap_err();
        assert!(
            matches!(&r, Rejection::InvalidSignature(m) if m.starts_with("Signature expired: 20240601T101010Z is now earlier than 20240601T101011Z (20240601T101511Z - 5 min.)")),
            "{r:?}"
        );
        let r = check(&h, now - 301).unwrap_err();
        assert!(
            matches!(&r, Rejection::InvalidSignature(m) if m.starts_with("Signature not yet current")),
            "{r:?}"
        );

        let mut h2 = h.clone();
        h2.remove("authorization");
        assert_eq!(check(&h2, now), Err(Rejection::Missing));

        let mut h2 = h.clone();
        h2.remove("x-amz-security-token");
        assert_eq!(check(&h2, now), Err(Rejection::UnrecognizedClient));
        let mut h2 = h.clone();
        h2.insert("x-amz-security-token", "other".parse().unwrap());
        assert_eq!(check(&h2, now), Err(Rejection::UnrecognizedClient));

        let auth = h["authorization"].to_str().unwrap().to_owned();
        let with = |from: &str, to: &str| {
            let mut h2 = h.clone();
            h2.insert("authorization", auth.replacen(from, to, 1).parse().unwrap());
            check(&h2, now)
        };
        assert_eq!(with("AKIDEXAMPLE/", "AKIDOTHER/"), Err(Rejection::UnrecognizedClient));
        assert!(
            matches!(with("/us-east-1/", "/eu-west-1/"), Err(Rejection::InvalidSignature(m)) if m.contains("valid region"))
        );
        assert!(
            matches!(with("/bedrock/", "/s3/"), Err(Rejection::InvalidSignature(m)) if m.contains("correct service: 'bedrock'"))
        );
        assert!(
            matches!(with("/20240601/", "/20240602/"), Err(Rejection::InvalidSignature(m)) if m.contains("Date in Credential scope"))
        );
        assert!(
            matches!(with("/aws4_request", "/aws5_request"), Err(Rejection::InvalidSignature(m)) if m.contains("terminator"))
        );
        assert!(
            matches!(with("SignedHeaders=content-type;host;", "SignedHeaders=content-type;"), Err(Rejection::InvalidSignature(m)) if m.contains("'Host'"))
        );
        assert!(
            matches!(with(";x-amz-security-token", ""), Err(Rejection::InvalidSignature(m)) if m.contains("Security-Token"))
        );
        assert!(matches!(
            with("AWS4-HMAC-SHA256 ", "AWS4-HMAC-SHA512 "),
            Err(Rejection::Incomplete(_))
        ));
        assert!(
            matches!(with("Signature=", "Sig="), Err(Rejection::Incomplete(m)) if m.contains("'Signature'"))
        );

        let mut h2 = h.clone();
        h2.insert("x-amz-date", "2024-06-01T10:10:10Z".parse().unwrap());
        assert!(matches!(check(&h2, now), Err(Rejection::Incomplete(m)) if m.contains("ISO-8601")));

        let mut h2 = h.clone();
        h2.insert("x-amz-content-sha256", hex(&Sha256::digest(b"other")).parse().unwrap());
        assert!(
            matches!(check(&h2, now), Err(Rejection::InvalidSignature(m)) if m.contains("x-amz-content-sha256"))
        );
    }

    #[test]
    fn canonical_uri_double_encodes_except_in_s3_mode() {
        let p = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
        assert_eq!(
            canonical_uri(p, true),
            "/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse"
        );
        assert_eq!(canonical_uri(p, false), p);
        // A raw ':' (legal in a path) is encoded once.
        assert_eq!(canonical_uri("/model/a:0/invoke", true), "/model/a%3A0/invoke");
        assert_eq!(canonical_uri("", true), "/");
        assert_eq!(canonical_uri("/a/./b/../c//d/", true), "/a/c/d/");
        assert_eq!(canonical_uri("/a b/~x", true), "/a%20b/~x");
    }

    #[test]
    fn query_and_header_canonicalisation() {
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("b=2&a=1&a=0&c"), "a=0&a=1&b=2&c=");
        assert_eq!(canonical_query("k=a%20b&s=a+b&t=%2F:"), "k=a%20b&s=a%20b&t=%2F%3A");
        let h = headers(&[("x-a", "  one   two  "), ("x-b", "1"), ("x-b", "2")]);
        let uri: Uri = "http://h:1/".parse().unwrap();
        assert_eq!(
            canonical_headers(&h, &uri, &["host", "x-a", "x-b"]),
            "host:h:1\nx-a:one two\nx-b:1,2\n"
        );
    }

    #[test]
    fn dates_parse_and_format() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("20240229T235959Z"), Some(1_709_251_199));
        for bad in ["20150830T123600", "2015083OT123600Z", "20151330T123600Z", "x"] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
        for t in [0, 1_440_938_160, 1_709_251_199, 4_102_444_800] {
            assert_eq!(parse_amz_date(&format_amz_date(t)), Some(t));
        }
    }

    #[test]
    fn helpers() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(percent_decode("a%3Ab%2", false), "a:b%2");
        assert_eq!(percent_decode("a+b%zz", true), "a b%zz");
        assert_eq!(uri_encode("a:b/c~", false), "a%3Ab%2Fc~");
        // Published derived-key example of the IAM guide (iam, 20120215).
        assert_eq!(
            hex(&signing_key(IAM_EXAMPLE_SECRET, "20120215", "us-east-1", "iam")),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
