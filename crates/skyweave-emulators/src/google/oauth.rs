//! Access tokens: the OAuth 2.0 token endpoint for the service-account JWT
//! bearer grant (RFC 7523 as Google profiles it) and the Compute Engine
//! metadata server's token endpoint.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::Extension;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http::StatusCode;
use serde_json::{json, Value};

use super::server::{json_response, record, unix_now, BoundAddr, Denied};
use super::{Shared, CLOUD_PLATFORM_SCOPE};

/// `grant_type` of the JWT bearer grant.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Accepted distance between the emulator's clock and `iat` / `exp`.
const SKEW_SECS: u64 = 60;

/// Longest accepted `exp - iat`.
const MAX_LIFETIME_SECS: u64 = 3600;

/// URL-safe base64 as JWTs use it (unpadded; padding tolerated).
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// ---- keys ---------------------------------------------------------------------

/// The PKCS#1 `RSAPublicKey` DER of a PEM public key (`PUBLIC KEY`, i.e.
/// SubjectPublicKeyInfo, or `RSA PUBLIC KEY`), which is what ring verifies
/// with.
pub(crate) fn rsa_public_key_der(pem: &str) -> Result<Vec<u8>, String> {
    let (label, der) = pem_decode(pem)?;
    match label.as_str() {
        "RSA PUBLIC KEY" => Ok(der),
        "PUBLIC KEY" => spki_rsa_key(&der),
        other => Err(format!("expected a PUBLIC KEY or RSA PUBLIC KEY PEM block, got {other:?}")),
    }
}

/// The label and DER bytes of the first PEM block.
pub(crate) fn pem_decode(pem: &str) -> Result<(String, Vec<u8>), String> {
    let begin = pem.find("-----BEGIN ").ok_or("no PEM BEGIN line")?;
    let rest = &pem[begin + "-----BEGIN ".len()..];
    let label_end = rest.find("-----").ok_or("malformed PEM BEGIN line")?;
    let label = rest[..label_end].to_owned();
    let body = &rest[label_end + 5..];
    let end_marker = format!("-----END {label}-----");
    let end = body.find(&end_marker).ok_or("no matching PEM END line")?;
    let b64: String = body[..end].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = STANDARD.decode(b64).map_err(|e| format!("PEM body is not base64: {e}"))?;
    Ok((label, der))
}

/// One DER element: (tag, contents, rest).
fn der_element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let (&tag, rest) = input.split_first().ok_or("truncated DER")?;
    let (&first, mut rest) = rest.split_first().ok_or("truncated DER length")?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("unsupported DER length".into());
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err("truncated DER contents".into());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// `rsaEncryption` (1.2.840.113549.1.1.1) as DER OID contents.
const RSA_ENCRYPTION_OID: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier,
/// subjectPublicKey BIT STRING }; the BIT STRING holds the RSAPublicKey.
fn spki_rsa_key(der: &[u8]) -> Result<Vec<u8>, String> {
    let (tag, spki, _) = der_element(der)?;
    if tag != 0x30 {
        return Err("SubjectPublicKeyInfo is not a SEQUENCE".into());
    }
    let (tag, algorithm, rest) = der_element(spki)?;
    if tag != 0x30 {
        return Err("AlgorithmIdentifier is not a SEQUENCE".into());
    }
    let (tag, oid, _) = der_element(algorithm)?;
    if tag != 0x06 || oid != RSA_ENCRYPTION_OID {
        return Err("not an RSA public key (algorithm is not rsaEncryption)".into());
    }
    let (tag, bits, _) = der_element(rest)?;
    match bits.split_first() {
        Some((0, key)) if tag == 0x03 => Ok(key.to_vec()),
        _ => Err("subjectPublicKey is not a BIT STRING without unused bits".into()),
    }
}

/// 128 random bits, URL-safe base64.
pub(crate) fn random_token_suffix() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // Never expected; fall back to something unique per process.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = nanos.to_le_bytes();
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// ---- forms ----------------------------------------------------------------------

/// `application/x-www-form-urlencoded` fields, percent- and `+`-decoded.
pub(crate) fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &[u8]) -> String {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    let hex = std::str::from_utf8(&s[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |&b| b == b'=');
            let k = it.next().unwrap_or_default();
            let v = it.next().unwrap_or_default();
            (decode(k), decode(v))
        })
        .collect()
}

// ---- the token endpoint -------------------------------------------------------------

/// A refused grant: the OAuth error code and its description.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) error: &'static str,
    pub(crate) description: String,
}

fn refusal(error: &'static str, description: impl Into<String>) -> Refusal {
    Refusal { error, description: description.into() }
}

fn invalid_jwt(description: impl Into<String>) -> Refusal {
    refusal("invalid_grant", description)
}

/// The claims of an accepted assertion that the token response needs.
#[derive(Debug, PartialEq)]
pub(crate) struct Grant {
    pub(crate) scope: String,
}

/// Check a JWT bearer grant's form fields and assertion. `audiences` are
/// the accepted `aud` values.
pub(crate) fn check_grant(
    shared: &Shared,
    form: &[(String, String)],
    audiences: &[String],
    now: u64,
) -> Result<Grant, Refusal> {
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let grant_type = field("grant_type")
        .ok_or_else(|| refusal("invalid_request", "Missing required parameter: grant_type"))?;
    if grant_type != JWT_BEARER {
        return Err(refusal("unsupported_grant_type", format!("Invalid grant_type: {grant_type}")));
    }
    let assertion = field("assertion")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| refusal("invalid_request", "Missing required parameter: assertion"))?;
    let claims = verify_assertion(shared, assertion)?;

    let iss = claims.get("iss").and_then(Value::as_str);
    if iss != Some(shared.client_email.as_str()) {
        return Err(invalid_jwt("Invalid grant: account not found"));
    }
    let aud = claims.get("aud").and_then(Value::as_str).unwrap_or_default();
    if !audiences.iter().any(|a| a == aud) {
        return Err(invalid_jwt(format!(
            "Invalid JWT: Failed audience check. The right audience is {}",
            audiences.first().map(String::as_str).unwrap_or_default()
        )));
    }
    let iat = claims.get("iat").and_then(Value::as_u64);
    let exp = claims.get("exp").and_then(Value::as_u64);
    let timely = match (iat, exp) {
        (Some(iat), Some(exp)) => {
            exp > iat
                && exp - iat <= MAX_LIFETIME_SECS
                && iat <= now + SKEW_SECS
                && exp + SKEW_SECS > now
        }
        _ => false,
    };
    if !timely {
        return Err(invalid_jwt(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable \
             timeframe. Check your iat and exp values in the JWT claim.",
        ));
    }
    let scope = claims.get("scope").and_then(Value::as_str).unwrap_or_default();
    if !scope.split(' ').any(|s| s == CLOUD_PLATFORM_SCOPE) {
        return Err(refusal("invalid_scope", "Invalid OAuth scope or ID token audience provided."));
    }
    Ok(Grant { scope: scope.to_owned() })
}

/// Decode the JWT, check its header and RS256 signature, return its claims.
fn verify_assertion(
    shared: &Shared,
    assertion: &str,
) -> Result<serde_json::Map<String, Value>, Refusal> {
    let segments: Vec<&str> = assertion.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = segments[..] else {
        return Err(invalid_jwt("Invalid JWT: the assertion must have three segments."));
    };
    let decode_json = |segment: &str, what: &str| {
        BASE64URL
            .decode(segment)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .and_then(|v| match v {
                Value::Object(o) => Some(o),
                _ => None,
            })
            .ok_or_else(|| invalid_jwt(format!("Invalid JWT: the {what} is not base64url JSON.")))
    };
    let header = decode_json(header_b64, "header")?;
    let claims = decode_json(claims_b64, "claim set")?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or_default();
    if alg != "RS256" {
        return Err(invalid_jwt(format!(
            "Invalid JWT: unsupported signing algorithm {alg:?}, expected RS256."
        )));
    }
    let signature =
        BASE64URL.decode(signature_b64).map_err(|_| invalid_jwt("Invalid JWT Signature."))?;
    let signed = &assertion[..header_b64.len() + 1 + claims_b64.len()];
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &shared.public_key,
    );
    key.verify(signed.as_bytes(), &signature).map_err(|_| invalid_jwt("Invalid JWT Signature."))?;
    Ok(claims)
}

fn token_json(shared: &Shared, token: String, scope: Option<&str>) -> Vec<u8> {
    let mut v = json!({
        "access_token": token,
        "expires_in": shared.token_lifetime_secs,
        "token_type": "Bearer",
    });
    if let Some(scope) = scope {
        v["scope"] = Value::String(scope.to_owned());
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// `POST /token`.
pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    Extension(BoundAddr(addr)): Extension<BoundAddr>,
    req: Request,
) -> Response {
    shared.count_token_request();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1024 * 1024).await.unwrap_or_default();
    let is_form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let mut audiences = vec![format!("http://{addr}/token")];
    if let Some(host) = parts.headers.get(HOST).and_then(|h| h.to_str().ok()) {
        audiences.push(format!("http://{host}/token"));
    }
    if let Some(authority) = parts.uri.authority() {
        audiences.push(format!("http://{authority}/token"));
    }
    let verdict = if is_form {
        check_grant(&shared, &parse_form(&body), &audiences, unix_now())
    } else {
        Err(refusal(
            "invalid_request",
            "Invalid request: the body must be application/x-www-form-urlencoded.",
        ))
    };
    if shared.record {
        let auth_error = verdict.as_ref().err().map(|r| format!("{}: {}", r.error, r.description));
        record(&shared, &parts, &body, Some("token"), None, auth_error);
    }
    match verdict {
        Ok(grant) => {
            let token = shared.issue_token();
            json_response(StatusCode::OK, token_json(&shared, token, Some(&grant.scope)))
        }
        Err(r) => {
            shared.reject_token();
            let body = json!({ "error": r.error, "error_description": r.description });
            json_response(StatusCode::BAD_REQUEST, serde_json::to_vec(&body).unwrap_or_default())
        }
    }
}

// ---- the metadata server ----------------------------------------------------------

/// A metadata response: every one carries `Metadata-Flavor: Google`.
pub(crate) fn metadata_text(
    status: StatusCode,
    content_type: &'static str,
    body: &str,
) -> Response {
    let mut resp = Response::new(Body::from(body.to_owned()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("metadata-flavor", HeaderValue::from_static("Google"));
    resp
}

/// `Ok` when the request may read metadata, else the 403.
fn check_flavor(req: &Request) -> Result<(), Box<Denied>> {
    let flavor = req.headers().get("metadata-flavor").map(HeaderValue::as_bytes);
    let (reason, text) = if req.headers().contains_key("x-forwarded-for") {
        ("X-Forwarded-For present", "Request contains X-Forwarded-For header.")
    } else if flavor != Some(b"Google".as_slice()) {
        ("Metadata-Flavor missing", "Missing Metadata-Flavor:Google header.")
    } else {
        return Ok(());
    };
    let page = format!(
        "<!DOCTYPE html>\n<html lang=en>\n<title>Error 403 (Forbidden)!!1</title>\n\
         <p><b>403.</b> <ins>That's an error.</ins>\n\
         <p>Your client does not have permission to get URL <code>{}</code> from this server. \
         {text} <ins>That's all we know.</ins>\n",
        req.uri().path()
    );
    Err(Denied::new(
        reason,
        metadata_text(StatusCode::FORBIDDEN, "text/html; charset=UTF-8", &page),
    ))
}

fn known_account(shared: &Shared, account: &str) -> bool {
    account == "default" || account == shared.client_email
}

/// `GET /computeMetadata/v1/instance/service-accounts/{account}/token`.
pub(crate) async fn metadata_token(
    State(shared): State<Arc<Shared>>,
    Path(account): Path<String>,
    req: Request,
) -> Response {
    shared.count_token_request();
    let check = check_flavor(&req);
    let (parts, _) = req.into_parts();
    if shared.record {
        let auth_error = check.as_ref().err().map(|d| d.reason.clone());
        record(&shared, &parts, &[], Some("metadata"), None, auth_error);
    }
    if let Err(denied) = check {
        shared.reject_token();
        return denied.response;
    }
    if !known_account(&shared, &account) {
        return metadata_text(StatusCode::NOT_FOUND, "text/html; charset=UTF-8", "Not Found\n");
    }
    let token = shared.issue_token();
    let mut resp = json_response(StatusCode::OK, token_json(&shared, token, None));
    resp.headers_mut().insert("metadata-flavor", HeaderValue::from_static("Google"));
    resp
}

/// `GET /computeMetadata/v1/instance/service-accounts/{account}/email`.
pub(crate) async fn metadata_email(
    State(shared): State<Arc<Shared>>,
    Path(account): Path<String>,
    req: Request,
) -> Response {
    if let Err(denied) = check_flavor(&req) {
        return denied.response;
    }
    if !known_account(&shared, &account) {
        return metadata_text(StatusCode::NOT_FOUND, "text/html; charset=UTF-8", "Not Found\n");
    }
    metadata_text(StatusCode::OK, "application/text", &shared.client_email)
}

/// `GET /computeMetadata/v1/project/project-id`.
pub(crate) async fn metadata_project_id(
    State(shared): State<Arc<Shared>>,
    req: Request,
) -> Response {
    if let Err(denied) = check_flavor(&req) {
        return denied.response;
    }
    metadata_text(StatusCode::OK, "application/text", &shared.project)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let form = parse_form(b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c&x=1+2%2&y");
        assert_eq!(
            form,
            vec![
                ("grant_type".to_owned(), JWT_BEARER.to_owned()),
                ("assertion".to_owned(), "a.b.c".to_owned()),
                ("x".to_owned(), "1 2%2".to_owned()),
                ("y".to_owned(), String::new()),
            ]
        );
    }

    #[test]
    fn the_fixture_public_key_parses_to_pkcs1() {
        let (private, public) = super::super::test_key_pems();
        let der = rsa_public_key_der(public).unwrap();
        // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
        let (tag, seq, rest) = der_element(&der).unwrap();
        assert_eq!((tag, rest.len()), (0x30, 0));
        let (tag, modulus, rest) = der_element(seq).unwrap();
        assert_eq!(tag, 0x02);
        assert_eq!(modulus.len(), 257, "2048-bit modulus with a leading zero");
        let (tag, exponent, _) = der_element(rest).unwrap();
        assert_eq!((tag, exponent), (0x02, &[1u8, 0, 1][..]));
        assert!(rsa_public_key_der(private).unwrap_err().contains("PRIVATE KEY"));
        assert!(rsa_public_key_der("not a pem").is_err());
    }
}
