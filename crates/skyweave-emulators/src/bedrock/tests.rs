//! Socket-level tests of the Bedrock emulator: a real reqwest client against
//! a real emulator on 127.0.0.1, requests signed by the test signer or by
//! the official `aws-sigv4` crate, event streams decoded by a decoder
//! written here from the spec.

use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use http::{HeaderMap, Method, Uri};
use serde_json::{json, Value};

use super::eventstream::crc32;
use super::server::unix_now;
use super::sigv4::{format_amz_date, sign_for_tests, Verifier};
use super::{spawn_bedrock, BedrockBehaviour, BedrockConfig, BedrockControl, BedrockEmulator};

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const REGION: &str = "us-east-1";
const CLAUDE: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const CLAUDE_ENCODED: &str = "anthropic.claude-3-haiku-20240307-v1%3A0";

fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

async fn emulator(name: &str) -> BedrockEmulator {
    spawn_bedrock(BedrockConfig::new(name, REGION, AKID, SECRET)).await.unwrap()
}

/// Credentials a test signs with.
#[derive(Clone)]
struct Creds {
    akid: String,
    secret: String,
    token: Option<String>,
    region: String,
}

impl Default for Creds {
    fn default() -> Self {
        Creds { akid: AKID.into(), secret: SECRET.into(), token: None, region: REGION.into() }
    }
}

fn url(emu: &BedrockEmulator, model: &str, op: &str) -> String {
    format!("{}/model/{model}/{op}", emu.base_url())
}

/// A POST signed by the test signer at `date`.
fn signed_at(url: &str, body: &Value, creds: &Creds, date: &str) -> reqwest::RequestBuilder {
    let bytes = serde_json::to_vec(body).unwrap();
    let uri: Uri = url.parse().unwrap();
    let v = Verifier {
        access_key_id: creds.akid.clone(),
        secret_access_key: creds.secret.clone(),
        session_token: creds.token.clone(),
        region: creds.region.clone(),
        service: "bedrock".into(),
        double_encode_path: true,
        max_skew_secs: 300,
    };
    let mut base = HeaderMap::new();
    base.insert("content-type", "application/json".parse().unwrap());
    let mut rb = client().post(url).header("content-type", "application/json").body(bytes.clone());
    for (k, val) in sign_for_tests(&v, &Method::POST, &uri, &base, &bytes, date) {
        rb = rb.header(k, val);
    }
    rb
}

fn signed(url: &str, body: &Value, creds: &Creds) -> reqwest::RequestBuilder {
    signed_at(url, body, creds, &format_amz_date(unix_now()))
}

/// Headers the official `aws-sigv4` signer adds for a POST of `body`.
fn aws_sigv4_headers(
    url: &str,
    body: &[u8],
    creds: &Creds,
    time: SystemTime,
    single_encode: bool,
) -> Vec<(String, String)> {
    use aws_sigv4::http_request::{
        sign, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    };
    use aws_sigv4::sign::v4;
    let identity = aws_credential_types::Credentials::new(
        creds.akid.clone(),
        creds.secret.clone(),
        creds.token.clone(),
        None,
        "skyweave-test",
    )
    .into();
    let mut settings = SigningSettings::default();
    if single_encode {
        settings.percent_encoding_mode = PercentEncodingMode::Single;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&creds.region)
        .name("bedrock")
        .time(time)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let headers = [("content-type", "application/json")];
    let signable =
        SignableRequest::new("POST", url, headers.iter().copied(), SignableBody::Bytes(body))
            .unwrap();
    let (instructions, _signature) = sign(signable, &params).unwrap().into_parts();
    instructions.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn aws_signed(
    url: &str,
    body: &Value,
    creds: &Creds,
    time: SystemTime,
    single_encode: bool,
) -> reqwest::RequestBuilder {
    let bytes = serde_json::to_vec(body).unwrap();
    let mut rb = client().post(url).header("content-type", "application/json").body(bytes.clone());
    for (k, v) in aws_sigv4_headers(url, &bytes, creds, time, single_encode) {
        rb = rb.header(k, v);
    }
    rb
}

fn converse_body(text: &str) -> Value {
    json!({
        "system": [{"text": "You are terse."}],
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "inferenceConfig": {"maxTokens": 100, "temperature": 0.2},
    })
}

fn tool_body(text: &str) -> Value {
    json!({
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "toolConfig": {"tools": [{"toolSpec": {
            "name": "get_weather",
            "description": "Weather of a city",
            "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
        }}]},
    })
}

fn assert_accounted(c: &BedrockControl) {
    let s = c.stats();
    assert_eq!(s.requests, s.completed + s.cancelled + s.in_flight, "accounting broken: {s:?}");
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn read_body(resp: reqwest::Response) -> (Vec<u8>, Option<reqwest::Error>) {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

// ---- an event-stream decoder, written from the spec for these tests ----------------

#[derive(Debug)]
struct Message {
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum DecodeError {
    Truncated,
    PreludeCrc { expected: u32, actual: u32 },
    MessageCrc { expected: u32, actual: u32 },
    BadHeaders,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// One message from the start of `buf`, and its length.
fn decode_one(buf: &[u8]) -> Result<(Message, usize), DecodeError> {
    if buf.len() < 12 {
        return Err(DecodeError::Truncated);
    }
    let total = be32(&buf[0..4]) as usize;
    let headers_len = be32(&buf[4..8]) as usize;
    let prelude_crc = be32(&buf[8..12]);
    let actual = crc32(&buf[0..8]);
    if prelude_crc != actual {
        return Err(DecodeError::PreludeCrc { expected: prelude_crc, actual });
    }
    if total < 16 + headers_len {
        return Err(DecodeError::BadHeaders);
    }
    if buf.len() < total {
        return Err(DecodeError::Truncated);
    }
    let message_crc = be32(&buf[total - 4..total]);
    let actual = crc32(&buf[..total - 4]);
    if message_crc != actual {
        return Err(DecodeError::MessageCrc { expected: message_crc, actual });
    }
    let mut h = &buf[12..12 + headers_len];
    let mut headers = Vec::new();
    while !h.is_empty() {
        let name_len = h[0] as usize;
        let name =
            String::from_utf8(h.get(1..1 + name_len).ok_or(DecodeError::BadHeaders)?.to_vec())
                .map_err(|_| DecodeError::BadHeaders)?;
        h = &h[1 + name_len..];
        let ty = *h.first().ok_or(DecodeError::BadHeaders)?;
        h = &h[1..];
        let fixed = match ty {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            _ => return Err(DecodeError::BadHeaders),
        };
        let value = match fixed {
            Some(n) => {
                let v = h.get(..n).ok_or(DecodeError::BadHeaders)?;
                h = &h[n..];
                format!("{v:?}")
            }
            None => {
                let len = u16::from_be_bytes([h[0], h[1]]) as usize;
                let v = h.get(2..2 + len).ok_or(DecodeError::BadHeaders)?;
                let s = String::from_utf8_lossy(v).into_owned();
                h = &h[2 + len..];
                s
            }
        };
        headers.push((name, value));
    }
    let payload = buf[12 + headers_len..total - 4].to_vec();
    Ok((Message { headers, payload }, total))
}

/// All messages of `buf`, stopping at the first error.
fn decode_all(mut buf: &[u8]) -> (Vec<Message>, Option<DecodeError>) {
    let mut out = Vec::new();
    while !buf.is_empty() {
        match decode_one(buf) {
            Ok((m, n)) => {
                out.push(m);
                buf = &buf[n..];
            }
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

fn event_types(ms: &[Message]) -> Vec<String> {
    ms.iter().map(|m| m.header(":event-type").unwrap_or("-").to_owned()).collect()
}

// ---- SigV4 -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_signed_by_the_test_signer_is_answered() {
    let emu = emulator("aws-east").await;
    let resp = signed(
        &url(&emu, CLAUDE_ENCODED, "converse"),
        &converse_body("Say hello"),
        &Creds::default(),
    )
    .header("x-custom", "yes")
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-emulator-name"], "aws-east");
    assert!(resp.headers().contains_key("x-amzn-requestid"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["output"],
        json!({"message": {"role": "assistant", "content": [{"text": "Hello from aws-east lorem ipsum dolor"}]}})
    );
    assert_eq!(v["stopReason"], "end_turn");
    // "You are terse." (14) + "Say hello" (9) = 23 chars -> 5 tokens.
    assert_eq!(v["usage"], json!({"inputTokens": 5, "outputTokens": 4, "totalTokens": 9}));
    assert!(v["metrics"]["latencyMs"].is_u64());

    let c = &emu.control;
    assert_eq!((c.requests(), c.completed(), c.rejected_signatures()), (1, 1, 0));
    let rec = c.recorded();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].method, "POST");
    assert_eq!(rec[0].path, format!("/model/{CLAUDE_ENCODED}/converse"));
    assert_eq!(rec[0].model_id.as_deref(), Some(CLAUDE));
    assert_eq!(rec[0].operation.as_deref(), Some("converse"));
    assert_eq!(rec[0].auth_error, None);
    assert_eq!(rec[0].header("x-custom"), Some("yes"));
    assert!(rec[0]
        .header("authorization")
        .unwrap()
        .starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
    assert!(rec[0].headers.iter().all(|(k, _)| *k == k.to_lowercase()));
    assert_eq!(rec[0].body, converse_body("Say hello"));
}

/// The official signer's output is accepted: the verifier and `aws-sigv4`
/// agree on the canonical request, including the double-encoded `%3A`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_aws_sigv4_signer_is_accepted() {
    let config =
        BedrockConfig::new("aws", REGION, AKID, SECRET).with_session_token("FwoGZXIvYXdzE+/=token");
    let emu = spawn_bedrock(config).await.unwrap();
    let creds = Creds { token: Some("FwoGZXIvYXdzE+/=token".into()), ..Creds::default() };
    for (model, op) in [
        (CLAUDE_ENCODED, "converse"),
        (CLAUDE_ENCODED, "converse-stream"),
        // A raw ':' is legal in a path; both sides encode it once.
        (CLAUDE, "converse"),
        ("amazon.titan-embed-text-v2%3A0", "invoke"),
    ] {
        let body = if op == "invoke" { json!({"inputText": "hello"}) } else { converse_body("hi") };
        let resp = aws_signed(&url(&emu, model, op), &body, &creds, SystemTime::now(), false)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{model}/{op}: {text}");
    }
    assert_eq!(emu.control.rejected_signatures(), 0);
    let rec = emu.control.recorded();
    assert!(rec[0].header("x-amz-security-token").is_some());
    assert_eq!(rec[3].model_id.as_deref(), Some("amazon.titan-embed-text-v2:0"));

    // The official signer in single-encoding (S3) mode signs `%3A` where
    // Bedrock expects `%253A`: refused, and the error shows the canonical
    // request the service wanted.
    let resp = aws_signed(
        &url(&emu, CLAUDE_ENCODED, "converse"),
        &converse_body("hi"),
        &creds,
        SystemTime::now(),
        true,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse\n"),
        "{message}"
    );
    assert_eq!(emu.control.rejected_signatures(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_encoding_can_be_configured() {
    let emu =
        spawn_bedrock(BedrockConfig::new("s", REGION, AKID, SECRET).with_double_encode_path(false))
            .await
            .unwrap();
    let u = url(&emu, CLAUDE_ENCODED, "converse");
    let single = aws_signed(&u, &converse_body("hi"), &Creds::default(), SystemTime::now(), true);
    assert_eq!(single.send().await.unwrap().status(), 200);
    let double = aws_signed(&u, &converse_body("hi"), &Creds::default(), SystemTime::now(), false);
    assert_eq!(double.send().await.unwrap().status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_an_invalid_signature() {
    let emu = emulator("e").await;
    emu.control.push_script(vec![BedrockBehaviour::exception("ThrottlingException")]);
    let creds = Creds { secret: "not-the-secret".into(), ..Creds::default() };
    for resp in [
        signed(&url(&emu, CLAUDE_ENCODED, "converse"), &converse_body("hi"), &creds)
            .send()
            .await
            .unwrap(),
        aws_signed(
            &url(&emu, CLAUDE_ENCODED, "converse"),
            &converse_body("hi"),
            &creds,
            SystemTime::now(),
            false,
        )
        .send()
        .await
        .unwrap(),
    ] {
        assert_eq!(resp.status(), 403);
        assert_eq!(
            resp.headers()["x-amzn-errortype"],
            "InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/"
        );
        let v: Value = resp.json().await.unwrap();
        let m = v["message"].as_str().unwrap();
        assert!(
            m.starts_with(
                "The request signature we calculated does not match the signature you provided."
            ),
            "{m}"
        );
        assert!(!m.contains(SECRET) && !m.contains("not-the-secret"), "no key material in errors");
    }
    let c = &emu.control;
    assert_eq!((c.requests(), c.completed(), c.rejected_signatures()), (2, 2, 2));
    assert_eq!(c.recorded()[0].auth_error.as_deref(), Some("InvalidSignatureException"));
    // Refused requests did not consume the scripted throttle.
    let resp =
        signed(&url(&emu, CLAUDE_ENCODED, "converse"), &converse_body("hi"), &Creds::default())
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_or_future_dates_are_refused() {
    let emu = emulator("e").await;
    let u = url(&emu, CLAUDE_ENCODED, "converse");
    let stale = format_amz_date(unix_now() - 600);
    let resp = signed_at(&u, &converse_body("hi"), &Creds::default(), &stale).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers()["x-amzn-errortype"]
        .to_str()
        .unwrap()
        .starts_with("InvalidSignatureException"));
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Signature expired: {stale} is now earlier than")),
        "{v}"
    );

    // The official signer with a clock 10 minutes behind.
    let past = SystemTime::now() - Duration::from_secs(600);
    let resp =
        aws_signed(&u, &converse_body("hi"), &Creds::default(), past, false).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let future = format_amz_date(unix_now() + 600);
    let resp =
        signed_at(&u, &converse_body("hi"), &Creds::default(), &future).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().starts_with("Signature not yet current"), "{v}");
    // Within the 5 minutes is fine.
    let recent = format_amz_date(unix_now() - 120);
    let resp =
        signed_at(&u, &converse_body("hi"), &Creds::default(), &recent).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(emu.control.rejected_signatures(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_tokens_and_missing_auth() {
    let emu =
        spawn_bedrock(BedrockConfig::new("e", REGION, AKID, SECRET).with_session_token("tok"))
            .await
            .unwrap();
    let u = url(&emu, CLAUDE_ENCODED, "converse");
    let with_token = Creds { token: Some("tok".into()), ..Creds::default() };
    let cases = [
        (
            Creds { akid: "AKIDUNKNOWN".into(), ..with_token.clone() },
            403,
            "UnrecognizedClientException",
        ),
        (Creds::default(), 403, "UnrecognizedClientException"),
        (
            Creds { token: Some("other".into()), ..Creds::default() },
            403,
            "UnrecognizedClientException",
        ),
        (
            Creds { region: "eu-west-1".into(), ..with_token.clone() },
            403,
            "InvalidSignatureException",
        ),
        (with_token.clone(), 200, ""),
    ];
    for (creds, status, error_type) in cases {
        let resp = signed(&u, &converse_body("hi"), &creds).send().await.unwrap();
        assert_eq!(resp.status(), status, "{error_type}");
        if status != 200 {
            let h = resp.headers()["x-amzn-errortype"].to_str().unwrap();
            assert_eq!(h.split(':').next(), Some(error_type));
        }
    }
    let resp = client().post(&u).json(&converse_body("hi")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers()["x-amzn-errortype"]
        .to_str()
        .unwrap()
        .starts_with("MissingAuthenticationTokenException"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["message"], "Missing Authentication Token");
    let resp = client()
        .post(&u)
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/bedrock/aws4_request",
        )
        .header("x-amz-date", format_amz_date(unix_now()))
        .json(&converse_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.headers()["x-amzn-errortype"]
        .to_str()
        .unwrap()
        .starts_with("IncompleteSignatureException"));
    assert_eq!(emu.control.rejected_signatures(), 6);
    assert_accounted(&emu.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_sign_the_authority_as_host() {
    let emu = emulator("h2").await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let u = url(&emu, CLAUDE_ENCODED, "converse");
    let bytes = serde_json::to_vec(&converse_body("hi")).unwrap();
    let mut rb = h2.post(&u).header("content-type", "application/json").body(bytes.clone());
    for (k, v) in aws_sigv4_headers(&u, &bytes, &Creds::default(), SystemTime::now(), false) {
        rb = rb.header(k, v);
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
}

// ---- Converse ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_validation_errors_are_400_validation_exceptions() {
    let emu = emulator("v").await;
    emu.control.push_script(vec![BedrockBehaviour::exception("ThrottlingException")]);
    let u = url(&emu, CLAUDE_ENCODED, "converse");
    for (body, fragment) in [
        (json!({"system": [{"text": "x"}]}), "Value null at 'messages'"),
        (json!({"messages": []}), "must start with a user message"),
        (
            json!({"messages": [{"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": [{"text": "x"}]}}]}]}),
            "exceeds the number of toolUse blocks",
        ),
    ] {
        let resp = signed(&u, &body, &Creds::default()).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        assert_eq!(resp.headers()["x-amzn-errortype"], "ValidationException");
        let v: Value = resp.json().await.unwrap();
        assert!(v["message"].as_str().unwrap().contains(fragment), "{v}");
    }
    // Invalid requests consume no scripted behaviour.
    let resp = signed(&u, &converse_body("hi"), &Creds::default()).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_accounted(&emu.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_answers_tool_use_when_asked() {
    let emu = emulator("t").await;
    let u = url(&emu, CLAUDE_ENCODED, "converse");
    let v: Value = signed(&u, &tool_body("Please use a tool"), &Creds::default())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["stopReason"], "tool_use");
    let block = &v["output"]["message"]["content"][0]["toolUse"];
    assert!(block["toolUseId"].as_str().unwrap().starts_with("tooluse_"));
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], json!({"city": "skyweave"}));

    // Answering the tool gets text back.
    let id = block["toolUseId"].as_str().unwrap();
    let mut body = tool_body("Please use a tool");
    body["messages"].as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": [{"toolUse": {"toolUseId": id, "name": "get_weather", "input": {"city": "skyweave"}}}]}),
        json!({"role": "user", "content": [{"toolResult": {"toolUseId": id, "content": [{"json": {"temp": 21}}], "status": "success"}}]}),
    ]);
    let v: Value = signed(&u, &body, &Creds::default()).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["stopReason"], "end_turn");
    assert!(v["output"]["message"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Hello from t"));

    // Without the magic words, text.
    let v: Value = signed(&u, &tool_body("hello"), &Creds::default())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["stopReason"], "end_turn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_cuts_the_reply() {
    let emu = emulator("m").await;
    let mut body = converse_body("hi");
    body["inferenceConfig"]["maxTokens"] = json!(2);
    let v: Value = signed(&url(&emu, CLAUDE_ENCODED, "converse"), &body, &Creds::default())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["stopReason"], "max_tokens");
    assert_eq!(v["output"]["message"]["content"][0]["text"], "Hello from m lorem");
    assert_eq!(v["usage"]["outputTokens"], 2);
}

// ---- ConverseStream --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_stream_sends_valid_event_stream_frames() {
    let emu = emulator("s").await;
    emu.control.set_behaviour(BedrockBehaviour::ok(0, 0, 3));
    let resp = signed(
        &url(&emu, CLAUDE_ENCODED, "converse-stream"),
        &converse_body("Say hello"),
        &Creds::default(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/vnd.amazon.eventstream");
    let (bytes, err) = read_body(resp).await;
    assert!(err.is_none());
    let (ms, err) = decode_all(&bytes);
    assert_eq!(err, None, "every frame has valid CRCs");
    assert_eq!(
        event_types(&ms),
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    for m in &ms {
        assert_eq!(m.header(":message-type"), Some("event"));
        assert_eq!(m.header(":content-type"), Some("application/json"));
        assert!(m.json()["p"].is_string(), "padding member, as Bedrock sends");
    }
    assert_eq!(ms[0].json()["role"], "assistant");
    let text: String = ms[1..4]
        .iter()
        .map(|m| {
            let v = m.json();
            assert_eq!(v["contentBlockIndex"], 0);
            v["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, "Hello from s lorem ipsum");
    assert_eq!(ms[4].json()["contentBlockIndex"], 0);
    assert_eq!(ms[5].json()["stopReason"], "end_turn");
    let meta = ms[6].json();
    assert_eq!(meta["usage"], json!({"inputTokens": 5, "outputTokens": 3, "totalTokens": 8}));
    assert!(meta["metrics"]["latencyMs"].is_u64());
    let c = &emu.control;
    assert_eq!((c.requests(), c.completed(), c.cancelled()), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_frames_are_flushed_one_at_a_time() {
    let emu = emulator("f").await;
    emu.control.set_behaviour(BedrockBehaviour::ok(300, 300, 3));
    let start = Instant::now();
    let resp = signed(
        &url(&emu, CLAUDE_ENCODED, "converse-stream"),
        &converse_body("hi"),
        &Creds::default(),
    )
    .send()
    .await
    .unwrap();
    assert!(start.elapsed() < Duration::from_millis(250), "head goes out before ttft");
    let mut arrivals = Vec::new();
    let mut buf = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.unwrap());
        // Count the whole messages received so far.
        let (ms, _) = decode_all(&buf);
        while arrivals.len() < ms.len() {
            arrivals.push((event_types(&ms)[arrivals.len()].clone(), start.elapsed()));
        }
    }
    let at = |i: usize| arrivals[i].1;
    assert_eq!(arrivals[1].0, "contentBlockDelta");
    assert!(at(0) >= Duration::from_millis(300), "ttft: {arrivals:?}");
    assert!(at(2) - at(1) >= Duration::from_millis(280), "inter-chunk: {arrivals:?}");
    assert!(at(3) - at(2) >= Duration::from_millis(280), "inter-chunk: {arrivals:?}");
    assert!(
        at(1) - at(0) < Duration::from_millis(200),
        "first delta right after messageStart: {arrivals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_stream_tool_use() {
    let emu = emulator("t").await;
    emu.control.set_behaviour(BedrockBehaviour::ok(0, 0, 4));
    let resp = signed(
        &url(&emu, CLAUDE_ENCODED, "converse-stream"),
        &tool_body("use a tool please"),
        &Creds::default(),
    )
    .send()
    .await
    .unwrap();
    let (bytes, _) = read_body(resp).await;
    let (ms, err) = decode_all(&bytes);
    assert_eq!(err, None);
    assert_eq!(
        event_types(&ms),
        [
            "messageStart",
            "contentBlockStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    let start = ms[1].json();
    assert_eq!(start["contentBlockIndex"], 0);
    assert!(start["start"]["toolUse"]["toolUseId"].as_str().unwrap().starts_with("tooluse_"));
    assert_eq!(start["start"]["toolUse"]["name"], "get_weather");
    let input: String = ms[2..6]
        .iter()
        .map(|m| m.json()["delta"]["toolUse"]["input"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&input).unwrap(), json!({"city": "skyweave"}));
    assert_eq!(ms[7].json()["stopReason"], "tool_use");
    assert_eq!(ms[8].json()["usage"]["outputTokens"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_mid_stream_is_an_exception_message() {
    let emu = emulator("x").await;
    emu.control.push_script(vec![
        BedrockBehaviour::exception_mid_stream(2, "ModelStreamErrorException"),
        BedrockBehaviour::ExceptionMidStream {
            after_chunks: 0,
            error_type: "ThrottlingException".into(),
            message: Some("slow down".into()),
        },
    ]);
    let u = url(&emu, CLAUDE_ENCODED, "converse-stream");
    let (bytes, err) =
        read_body(signed(&u, &converse_body("hi"), &Creds::default()).send().await.unwrap()).await;
    assert!(err.is_none());
    let (ms, err) = decode_all(&bytes);
    assert_eq!(err, None);
    assert_eq!(event_types(&ms), ["messageStart", "contentBlockDelta", "contentBlockDelta", "-"]);
    let last = ms.last().unwrap();
    assert_eq!(last.header(":message-type"), Some("exception"));
    assert_eq!(last.header(":exception-type"), Some("modelStreamErrorException"));
    assert_eq!(last.header(":content-type"), Some("application/json"));
    assert!(last.json()["message"].as_str().unwrap().contains("streaming"));

    let (bytes, _) =
        read_body(signed(&u, &converse_body("hi"), &Creds::default()).send().await.unwrap()).await;
    let (ms, err) = decode_all(&bytes);
    assert_eq!(err, None);
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[1].header(":exception-type"), Some("throttlingException"));
    assert_eq!(ms[1].json(), json!({"message": "slow down"}));

    // Non-streaming: the same exception as an HTTP error.
    emu.control.push_script(vec![BedrockBehaviour::exception_mid_stream(1, "ThrottlingException")]);
    let resp =
        signed(&url(&emu, CLAUDE_ENCODED, "converse"), &converse_body("hi"), &Creds::default())
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["x-amzn-errortype"], "ThrottlingException");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_frames_fail_their_crc_check() {
    let emu = emulator("c").await;
    emu.control.push_script(vec![
        BedrockBehaviour::CorruptFrame { after_chunks: 2 },
        BedrockBehaviour::CorruptPrelude { after_chunks: 1 },
    ]);
    let u = url(&emu, CLAUDE_ENCODED, "converse-stream");
    let (bytes, _) =
        read_body(signed(&u, &converse_body("hi"), &Creds::default()).send().await.unwrap()).await;
    let (ms, err) = decode_all(&bytes);
    assert_eq!(event_types(&ms), ["messageStart", "contentBlockDelta", "contentBlockDelta"]);
    assert!(matches!(err, Some(DecodeError::MessageCrc { .. })), "{err:?}");
    // The corrupted frame is complete and nothing follows it.
    let used: usize = ms
        .iter()
        .map(|m| {
            16 + m.payload.len()
                + m.headers.iter().map(|(k, v)| 4 + k.len() + v.len()).sum::<usize>()
        })
        .sum();
    assert_eq!(be32(&bytes[used..]) as usize, bytes.len() - used);

    let (bytes, _) =
        read_body(signed(&u, &converse_body("hi"), &Creds::default()).send().await.unwrap()).await;
    let (ms, err) = decode_all(&bytes);
    assert_eq!(ms.len(), 2);
    assert!(matches!(err, Some(DecodeError::PreludeCrc { .. })), "{err:?}");

    // Non-streaming: half a JSON body.
    emu.control.push_script(vec![BedrockBehaviour::CorruptFrame { after_chunks: 0 }]);
    let resp =
        signed(&url(&emu, CLAUDE_ENCODED, "converse"), &converse_body("hi"), &Creds::default())
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(serde_json::from_slice::<Value>(&resp.bytes().await.unwrap()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_behaviours_have_bedrock_status_and_shape() {
    let emu = emulator("x").await;
    let cases = [
        ("ThrottlingException", 429),
        ("ServiceQuotaExceededException", 400),
        ("ServiceUnavailableException", 503),
        ("ModelNotReadyException", 429),
        ("InternalServerException", 500),
        ("ValidationException", 400),
        ("AccessDeniedException", 403),
        ("ModelTimeoutException", 408),
    ];
    for (op, body) in [
        ("converse", converse_body("hi")),
        ("converse-stream", converse_body("hi")),
        ("invoke", json!({"inputText": "hi"})),
    ] {
        let model = if op == "invoke" { "amazon.titan-embed-text-v2%3A0" } else { CLAUDE_ENCODED };
        for (error_type, status) in cases {
            emu.control.push_script(vec![BedrockBehaviour::exception(error_type)]);
            let resp =
                signed(&url(&emu, model, op), &body, &Creds::default()).send().await.unwrap();
            assert_eq!(resp.status(), status, "{op} {error_type}");
            assert_eq!(resp.headers()["x-amzn-errortype"], error_type);
            assert_eq!(resp.headers()["content-type"], "application/json");
            let v: Value = resp.json().await.unwrap();
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        }
    }
    emu.control.push_script(vec![BedrockBehaviour::Exception {
        status: Some(400),
        error_type: "ThrottlingException".into(),
        message: Some("custom".into()),
    }]);
    let resp =
        signed(&url(&emu, CLAUDE_ENCODED, "converse"), &converse_body("hi"), &Creds::default())
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"message": "custom"}));
    assert_accounted(&emu.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_reset_and_cut() {
    let emu = emulator("h").await;
    let u = url(&emu, CLAUDE_ENCODED, "converse-stream");

    emu.control.push_script(vec![BedrockBehaviour::Hang]);
    let r = signed(&u, &converse_body("hi"), &Creds::default())
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    wait_until("hang cancelled", || emu.control.cancelled() == 1).await;

    emu.control.push_script(vec![BedrockBehaviour::Reset]);
    let r = signed(&u, &converse_body("hi"), &Creds::default()).send().await;
    assert!(r.is_err(), "reset is a connection error, not a status");

    emu.control.push_script(vec![BedrockBehaviour::CutAfterChunks { chunks: 2 }]);
    let resp = signed(&u, &converse_body("hi"), &Creds::default()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (bytes, err) = read_body(resp).await;
    assert!(err.is_some(), "the body ends in an error");
    let (ms, derr) = decode_all(&bytes);
    assert_eq!(derr, None);
    assert_eq!(event_types(&ms), ["messageStart", "contentBlockDelta", "contentBlockDelta"]);

    emu.control.push_script(vec![BedrockBehaviour::CutAfterChunks { chunks: 2 }]);
    let r = signed(&url(&emu, CLAUDE_ENCODED, "converse"), &converse_body("hi"), &Creds::default())
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.is_err());

    // A client leaving mid-stream is counted as cancelled.
    emu.control.push_script(vec![BedrockBehaviour::ok(0, 2000, 3)]);
    let resp = signed(&u, &converse_body("hi"), &Creds::default()).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    let _ = stream.next().await;
    drop(stream);
    wait_until("stream cancelled", || emu.control.cancelled() == 2).await;
    wait_until("nothing in flight", || emu.control.in_flight() == 0).await;
    assert_accounted(&emu.control);
}

// ---- InvokeModel (embeddings) ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_embeddings_for_titan_and_cohere() {
    let emu = emulator("emb").await;
    let resp = signed(
        &url(&emu, "amazon.titan-embed-text-v2%3A0", "invoke"),
        &json!({"inputText": "hello world", "dimensions": 512}),
        &Creds::default(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-amzn-bedrock-input-token-count"], "2");
    assert!(resp.headers().contains_key("x-amzn-bedrock-invocation-latency"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["embedding"].as_array().unwrap().len(), 512);
    assert_eq!(v["inputTextTokenCount"], 2);

    let body = json!({"texts": ["a", "b", "c"], "input_type": "search_document"});
    let v: Value =
        signed(&url(&emu, "cohere.embed-english-v3", "invoke"), &body, &Creds::default())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(v["response_type"], "embeddings_floats");
    assert_eq!(v["texts"], json!(["a", "b", "c"]));
    assert_eq!(v["embeddings"].as_array().unwrap().len(), 3);
    assert!(v["id"].is_string());

    for (model, body, fragment) in [
        (
            "amazon.titan-embed-text-v2%3A0",
            json!({"input": "x"}),
            "#: extraneous key [input] is not permitted",
        ),
        ("cohere.embed-english-v3", json!({"texts": ["a"]}), "required key [input_type]"),
        (CLAUDE_ENCODED, json!({"inputText": "x"}), "The provided model identifier is invalid."),
    ] {
        let resp =
            signed(&url(&emu, model, "invoke"), &body, &Creds::default()).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.headers()["x-amzn-errortype"], "ValidationException");
        let v: Value = resp.json().await.unwrap();
        assert!(v["message"].as_str().unwrap().contains(fragment), "{v}");
    }
    assert_eq!(emu.control.recorded()[0].operation.as_deref(), Some("invoke"));
}

// ---- control -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_order_control_endpoints_and_unknown_routes() {
    let emu = emulator("ctl").await;
    let base = emu.base_url();
    let c = client();
    let r = c
        .put(format!("{base}/_emulator/script"))
        .json(&json!([{"kind": "exception", "error_type": "ServiceUnavailableException"}, {"kind": "ok", "chunks": 1}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let u = url(&emu, CLAUDE_ENCODED, "converse");
    let statuses = [
        signed(&u, &converse_body("hi"), &Creds::default()).send().await.unwrap().status(),
        signed(&u, &converse_body("hi"), &Creds::default()).send().await.unwrap().status(),
    ];
    assert_eq!(statuses, [503, 200]);
    let r = c
        .put(format!("{base}/_emulator/behaviour"))
        .json(&json!({"kind": "hang"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(emu.control.behaviour(), BedrockBehaviour::Hang);
    let bad = c
        .put(format!("{base}/_emulator/behaviour"))
        .json(&json!({"kind": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let stats: Value =
        c.get(format!("{base}/_emulator/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["requests"], 2);
    assert_eq!(stats["rejected_signatures"], 0);
    let rec: Value =
        c.get(format!("{base}/_emulator/recorded")).send().await.unwrap().json().await.unwrap();
    assert_eq!(rec.as_array().unwrap().len(), 2);

    let r = c.post(format!("{base}/model/x/invoke-with-response-stream")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-amzn-errortype"], "UnknownOperationException");
    let r = c.get(&u).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn behaviour_json_format() {
    let cases = [
        (
            BedrockBehaviour::ok(1, 2, 3),
            json!({"kind": "ok", "ttft_ms": 1, "inter_chunk_ms": 2, "chunks": 3}),
        ),
        (
            BedrockBehaviour::exception("ThrottlingException"),
            json!({"kind": "exception", "status": null, "error_type": "ThrottlingException", "message": null}),
        ),
        (
            BedrockBehaviour::CorruptPrelude { after_chunks: 1 },
            json!({"kind": "corrupt_prelude", "after_chunks": 1}),
        ),
        (
            BedrockBehaviour::CutAfterChunks { chunks: 2 },
            json!({"kind": "cut_after_chunks", "chunks": 2}),
        ),
        (BedrockBehaviour::Reset, json!({"kind": "reset"})),
    ];
    for (b, v) in cases {
        assert_eq!(serde_json::to_value(&b).unwrap(), v);
        assert_eq!(serde_json::from_value::<BedrockBehaviour>(v).unwrap(), b);
    }
    let b: BedrockBehaviour = serde_json::from_value(json!({"kind": "ok"})).unwrap();
    assert_eq!(b, BedrockBehaviour::default());
    let b: BedrockBehaviour = serde_json::from_value(json!({"kind": "exception_mid_stream", "after_chunks": 1, "error_type": "InternalServerException"})).unwrap();
    assert_eq!(b, BedrockBehaviour::exception_mid_stream(1, "InternalServerException"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_emulator_closes_the_listener() {
    let emu = emulator("d").await;
    let addr = emu.addr;
    drop(emu);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
