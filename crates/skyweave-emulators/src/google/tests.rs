//! Socket-level tests of the Google emulator: a real reqwest client against a
//! real emulator on 127.0.0.1, JWT assertions signed here with ring
//! (`RsaKeyPair::from_pkcs8`, RSASSA-PKCS1-v1_5 SHA-256).

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures::StreamExt;
use serde_json::{json, Value};

use super::oauth::pem_decode;
use super::server::unix_now;
use super::{
    spawn_google, test_key_pems, GoogleBehaviour, GoogleConfig, GoogleControl, GoogleEmulator,
    CLOUD_PLATFORM_SCOPE,
};

const PROJECT: &str = "skyweave-test";
const LOCATION: &str = "us-central1";
const EMAIL: &str = "gateway@skyweave-test.iam.gserviceaccount.com";
const MODEL: &str = "gemini-2.0-flash";
const OTHER_KEY: &str = include_str!("../../testdata/google-test-other.key.pem");
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

fn config(name: &str) -> GoogleConfig {
    GoogleConfig::new(name, PROJECT, LOCATION, EMAIL, test_key_pems().1)
}

async fn emulator(name: &str) -> GoogleEmulator {
    spawn_google(config(name)).await.unwrap()
}

/// A compact JWS signed with RS256 by the PKCS#8 private key `pem`.
fn sign_jwt(pem: &str, header: &Value, claims: &Value) -> String {
    let (label, der) = pem_decode(pem).unwrap();
    assert_eq!(label, "PRIVATE KEY");
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let signing_input = format!("{}.{}", b64(header), b64(claims));
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn rs256() -> Value {
    json!({"alg": "RS256", "typ": "JWT", "kid": "0123456789abcdef"})
}

fn claims(emu: &GoogleEmulator) -> Value {
    let now = unix_now();
    json!({
        "iss": EMAIL,
        "scope": format!("https://www.googleapis.com/auth/userinfo.email {CLOUD_PLATFORM_SCOPE}"),
        "aud": emu.token_url(),
        "iat": now,
        "exp": now + 3600,
    })
}

fn good_assertion(emu: &GoogleEmulator) -> String {
    sign_jwt(test_key_pems().0, &rs256(), &claims(emu))
}

async fn post_grant(emu: &GoogleEmulator, assertion: &str) -> reqwest::Response {
    let body = format!("grant_type={}&assertion={assertion}", JWT_BEARER.replace(':', "%3A"));
    client()
        .post(emu.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// An access token obtained through the JWT bearer grant.
async fn token(emu: &GoogleEmulator) -> String {
    let resp = post_grant(emu, &good_assertion(emu)).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

fn model_url(emu: &GoogleEmulator, method: &str) -> String {
    format!(
        "{}/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{MODEL}:{method}",
        emu.base_url()
    )
}

fn openai_url(emu: &GoogleEmulator) -> String {
    format!(
        "{}/v1/projects/{PROJECT}/locations/{LOCATION}/endpoints/openapi/chat/completions",
        emu.base_url()
    )
}

fn gemini_body(text: &str) -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "generationConfig": {"temperature": 0.2, "maxOutputTokens": 100},
    })
}

fn tool_body(text: &str) -> Value {
    json!({
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "tools": [{"functionDeclarations": [{
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {
                "type": "OBJECT",
                "properties": {
                    "city": {"type": "STRING"},
                    "days": {"type": "INTEGER"},
                    "metric": {"type": "BOOLEAN"},
                    "note": {"type": "STRING"}
                },
                "required": ["city", "days", "metric"]
            }
        }]}],
    })
}

async fn post(url: &str, token: &str, body: &Value) -> reqwest::Response {
    client().post(url).bearer_auth(token).json(body).send().await.unwrap()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_accounted(c: &GoogleControl) {
    let s = c.stats();
    assert_eq!(s.requests, s.completed + s.cancelled + s.in_flight, "accounting broken: {s:?}");
}

/// Read a body to its end (or first error), returning what arrived.
async fn read_body(resp: reqwest::Response) -> (Vec<u8>, Option<reqwest::Error>) {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

/// The data of each event of a Vertex SSE body, checking the CRLF framing.
fn sse_events(body: &str) -> Vec<Value> {
    assert!(body.ends_with("\r\n\r\n") || body.is_empty(), "unterminated event in {body:?}");
    body.split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data =
                e.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {e:?}"));
            assert!(!data.contains('\n'), "one line per event: {data:?}");
            serde_json::from_str(data).unwrap_or_else(|err| panic!("{err}: {data:?}"))
        })
        .collect()
}

/// The data of each event of an OpenAI SSE body (`\n\n` framing).
fn openai_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("not data: {e:?}")).to_owned())
        .collect()
}

fn text_of(response: &Value) -> String {
    response["candidates"][0]["content"]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["text"].as_str())
        .collect()
}

// ---- tokens ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_signed_by_the_service_account_key_gets_a_token_that_opens_gemini() {
    let emu = emulator("gcp-a").await;
    let resp = post_grant(&emu, &good_assertion(&emu)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    assert_eq!(resp.headers()["x-emulator-name"], "gcp-a");
    let v: Value = resp.json().await.unwrap();
    let access = v["access_token"].as_str().unwrap();
    assert!(access.starts_with("ya29.emulator-") && access.len() > 30, "{access}");
    assert_eq!(v["expires_in"], 3599);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!((emu.control.issued_tokens(), emu.control.rejected_tokens()), (1, 0));
    // Another grant gets another token.
    assert_ne!(token(&emu).await, access);

    let resp = post(&model_url(&emu, "generateContent"), access, &gemini_body("hi")).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(text_of(&v), "Hello from gcp-a lorem ipsum dolor");
    let c = &v["candidates"][0];
    assert_eq!((c["finishReason"].as_str(), c["index"].as_u64()), (Some("STOP"), Some(0)));
    assert_eq!(c["content"]["role"], "model");
    // "You are terse." (14) + "hi" (2) = 16 chars -> 4 tokens; 4 pieces.
    let u = &v["usageMetadata"];
    assert_eq!(
        (&u["promptTokenCount"], &u["candidatesTokenCount"], &u["totalTokenCount"]),
        (&json!(4), &json!(4), &json!(8))
    );
    assert_eq!(v["modelVersion"], MODEL);
    assert!(v["createTime"].as_str().unwrap().ends_with('Z'));
    assert!(v["responseId"].as_str().is_some());

    let rec = emu.control.recorded();
    let grant = &rec[0];
    assert_eq!((grant.operation.as_deref(), grant.auth_error.as_ref()), (Some("token"), None));
    assert_eq!(grant.body["grant_type"], JWT_BEARER);
    let call = rec.last().unwrap();
    assert_eq!(call.operation.as_deref(), Some("generateContent"));
    assert_eq!(call.model.as_deref(), Some(MODEL));
    assert_eq!(call.header("authorization"), Some(format!("Bearer {access}").as_str()));
    assert_eq!(call.body["contents"][0]["parts"][0]["text"], "hi");
    assert_eq!(emu.control.token_requests(), 2);
    assert_eq!(emu.control.requests(), 1);
    assert_accounted(&emu.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grants_are_refused_with_oauth_errors() {
    let emu = emulator("gcp-b").await;
    let (private, _) = test_key_pems();
    let now = unix_now();
    let with = |key: &str, value: Value| {
        let mut c = claims(&emu);
        c[key] = value;
        sign_jwt(private, &rs256(), &c)
    };
    let good = good_assertion(&emu);
    let (head, _) = good.rsplit_once('.').unwrap();
    let other_sig = sign_jwt(OTHER_KEY, &rs256(), &claims(&emu));
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = claims(&emu);
        c["iss"] = json!("attacker@evil.example");
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (other_sig, "invalid_grant", "Invalid JWT Signature."),
        (tampered, "invalid_grant", "Invalid JWT Signature."),
        (format!("{head}.AAAA"), "invalid_grant", "Invalid JWT Signature."),
        (
            sign_jwt(private, &json!({"alg": "RS512", "typ": "JWT"}), &claims(&emu)),
            "invalid_grant",
            "RS256",
        ),
        (with("exp", json!(now - 120)), "invalid_grant", "short-lived token"),
        (with("iat", json!(now + 600)), "invalid_grant", "short-lived token"),
        (with("exp", json!(now + 7200)), "invalid_grant", "short-lived token"),
        (with("aud", json!("https://oauth2.googleapis.com/token")), "invalid_grant", "audience"),
        (
            with("iss", json!("someone@else.iam.gserviceaccount.com")),
            "invalid_grant",
            "account not found",
        ),
        (
            with("scope", json!("https://www.googleapis.com/auth/devstorage.read_only")),
            "invalid_scope",
            "Invalid OAuth scope",
        ),
        ("not-a-jwt".to_owned(), "invalid_grant", "three segments"),
        (String::new(), "invalid_request", "assertion"),
    ];
    let n = cases.len() as u64;
    for (assertion, error, description) in cases {
        let resp = post_grant(&emu, &assertion).await;
        assert_eq!(resp.status(), 400, "{assertion}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], error, "{v}");
        let d = v["error_description"].as_str().unwrap();
        assert!(d.contains(description), "{d:?} should contain {description:?}");
    }
    // 60 s of clock skew is tolerated.
    let skewed = with("iat", json!(now + 30));
    assert_eq!(post_grant(&emu, &skewed).await.status(), 200);

    let c = client();
    let r = c
        .post(emu.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=client_credentials&assertion={good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unsupported_grant_type");
    let r = c
        .post(emu.token_url())
        .json(&json!({"grant_type": JWT_BEARER, "assertion": good}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");

    assert_eq!(emu.control.rejected_tokens(), n + 2);
    assert_eq!(emu.control.issued_tokens(), 1);
    let refused: Vec<_> =
        emu.control.recorded().into_iter().filter(|r| r.auth_error.is_some()).collect();
    assert_eq!(refused.len() as u64, n + 2);
    assert!(refused[0].auth_error.as_deref().unwrap().starts_with("invalid_grant: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_may_name_the_host_the_client_used() {
    let emu = emulator("gcp-aud").await;
    let mut c = claims(&emu);
    c["aud"] = json!(format!("http://localhost:{}/token", emu.addr.port()));
    let assertion = sign_jwt(test_key_pems().0, &rs256(), &c);
    let body = format!("grant_type={}&assertion={assertion}", JWT_BEARER.replace(':', "%3A"));
    let resp = client()
        .post(format!("http://localhost:{}/token", emu.addr.port()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await;
    // localhost may not resolve to 127.0.0.1 everywhere; only check when it does.
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_server_requires_the_flavor_header() {
    let emu = emulator("gcp-m").await;
    let c = client();
    let url =
        format!("{}/computeMetadata/v1/instance/service-accounts/default/token", emu.base_url());
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["metadata-flavor"], "Google");
    assert!(r.text().await.unwrap().contains("Missing Metadata-Flavor:Google header."));
    let r = c.get(&url).header("Metadata-Flavor", "google").send().await.unwrap();
    assert_eq!(r.status(), 403, "the value is case-sensitive");
    let r = c
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(emu.control.rejected_tokens(), 3);

    let r = c.get(&url).header("Metadata-Flavor", "Google").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["metadata-flavor"], "Google");
    let v: Value = r.json().await.unwrap();
    assert_eq!((&v["expires_in"], &v["token_type"]), (&json!(3599), &json!("Bearer")));
    let access = v["access_token"].as_str().unwrap();
    let r = post(&model_url(&emu, "generateContent"), access, &gemini_body("hi")).await;
    assert_eq!(r.status(), 200);

    let by_email = format!(
        "{}/computeMetadata/v1/instance/service-accounts/{EMAIL}/token?scopes={CLOUD_PLATFORM_SCOPE}",
        emu.base_url()
    );
    let r = c.get(&by_email).header("Metadata-Flavor", "Google").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let other = format!(
        "{}/computeMetadata/v1/instance/service-accounts/nobody@x.iam.gserviceaccount.com/token",
        emu.base_url()
    );
    let r = c.get(&other).header("Metadata-Flavor", "Google").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let get = |path: &str| {
        c.get(format!("{}/computeMetadata/v1/{path}", emu.base_url()))
            .header("Metadata-Flavor", "Google")
            .send()
    };
    assert_eq!(get("project/project-id").await.unwrap().text().await.unwrap(), PROJECT);
    let email = get("instance/service-accounts/default/email").await.unwrap();
    assert_eq!(email.text().await.unwrap(), EMAIL);
    let r = get("instance/zone").await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["metadata-flavor"], "Google");
    assert_eq!(emu.control.issued_tokens(), 2);
    assert_eq!(emu.control.token_requests(), 6);
}

// ---- authentication of model requests --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_requests_need_a_bearer_token_issued_here() {
    let emu = emulator("gcp-auth").await;
    emu.control.push_script(vec![GoogleBehaviour::status(500)]);
    let c = client();
    let url = model_url(&emu, "generateContent");

    let r = c.post(&url).json(&gemini_body("hi")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"https://accounts.google.com/\"");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 401);
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Request is missing required authentication credential."));
    assert_eq!(v["error"]["details"][0]["reason"], "CREDENTIALS_MISSING");

    for bad in ["ya29.made-up", "AIzaSyAPIKEY"] {
        let r = post(&url, bad, &gemini_body("hi")).await;
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Request had invalid authentication credentials."));
    }
    let access = token(&emu).await;
    emu.control.revoke_tokens();
    let r = post(&url, &access, &gemini_body("hi")).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["details"][0]["reason"], "ACCESS_TOKEN_EXPIRED");

    // Wrong project or location: 403.
    let access = emu.control.mint_token();
    let wrong = url.replace(PROJECT, "someone-else");
    let r = post(&wrong, &access, &gemini_body("hi")).await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    assert!(v["error"]["message"].as_str().unwrap().contains(
        "Permission 'aiplatform.endpoints.predict' denied on resource \
         '//aiplatform.googleapis.com/projects/someone-else/locations/us-central1/publishers/google/models/gemini-2.0-flash'"
    ));
    let r = post(&url.replace(LOCATION, "europe-west4"), &access, &gemini_body("hi")).await;
    assert_eq!(r.status(), 403);
    let r = post(&openai_url(&emu), "nope", &json!({"model": "google/x", "messages": []})).await;
    assert_eq!(r.status(), 401);

    assert_eq!(emu.control.unauthenticated(), 5);
    assert_eq!(emu.control.requests(), 7);
    // Refused requests did not consume the scripted 500.
    let r = post(&url, &access, &gemini_body("hi")).await;
    assert_eq!(r.status(), 500);
    assert_accounted(&emu.control);
    let refused = emu.control.recorded().iter().filter(|r| r.auth_error.is_some()).count();
    assert_eq!(refused, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire() {
    let emu = spawn_google(config("gcp-exp").with_token_lifetime_secs(0)).await.unwrap();
    let resp = post_grant(&emu, &good_assertion(&emu)).await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["expires_in"], 0);
    let r = post(
        &model_url(&emu, "generateContent"),
        v["access_token"].as_str().unwrap(),
        &gemini_body("hi"),
    )
    .await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["details"][0]["reason"], "ACCESS_TOKEN_EXPIRED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_are_400_invalid_argument() {
    let emu = emulator("gcp-v").await;
    let access = emu.control.mint_token();
    let url = model_url(&emu, "generateContent");
    let cases = [
        (json!({"contents": []}), "must include at least one parts field"),
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            "Unknown name \"messages\": Cannot find field.",
        ),
        (
            json!({"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]}),
            "Please use a valid role: user, model.",
        ),
    ];
    for (body, expected) in cases {
        let r = post(&url, &access, &body).await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            (&v["error"]["code"], &v["error"]["status"]),
            (&json!(400), &json!("INVALID_ARGUMENT"))
        );
        assert!(v["error"]["message"].as_str().unwrap().contains(expected), "{v}");
    }
    let r = client()
        .post(&url)
        .bearer_auth(&access)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The stream's JSON-array mode wraps errors in an array.
    let r =
        post(&model_url(&emu, "streamGenerateContent"), &access, &json!({"contents": []})).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v[0]["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(emu.control.requests(), 5);
    assert_accounted(&emu.control);
}

// ---- streaming ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_is_crlf_framed_with_usage_on_the_last_event() {
    let emu = emulator("gcp-s").await;
    let access = emu.control.mint_token();
    let url = format!("{}?alt=sse", model_url(&emu, "streamGenerateContent"));
    let resp = post(&url, &access, &gemini_body("hi")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.text().await.unwrap();
    assert!(!body.contains("[DONE]"));
    let events = sse_events(&body);
    assert_eq!(events.len(), 4);
    let text: String = events.iter().map(text_of).collect();
    assert_eq!(text, "Hello from gcp-s lorem ipsum dolor");
    for e in &events[..3] {
        assert!(e["candidates"][0].get("finishReason").is_none(), "{e}");
        assert!(e["usageMetadata"].get("candidatesTokenCount").is_none(), "{e}");
    }
    let last = &events[3];
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 4);
    assert_eq!(last["usageMetadata"]["totalTokenCount"], 8);
    assert_eq!(last["modelVersion"], MODEL);
    let ids: Vec<_> = events.iter().map(|e| e["responseId"].clone()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]));

    // Events leave one at a time, as they are due.
    emu.control.push_script(vec![GoogleBehaviour::ok(0, 300, 3)]);
    let resp = post(&url, &access, &gemini_body("hi")).await;
    let started = Instant::now();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_millis(250));
    assert_eq!(sse_events(std::str::from_utf8(&first).unwrap()).len(), 1);
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(started.elapsed() >= Duration::from_millis(550));
    assert_eq!(sse_events(std::str::from_utf8(&rest).unwrap()).len(), 2);

    // maxOutputTokens below the chunks ends with MAX_TOKENS.
    let mut body = gemini_body("hi");
    body["generationConfig"]["maxOutputTokens"] = json!(2);
    let events = sse_events(&post(&url, &access, &body).await.text().await.unwrap());
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(events[1]["usageMetadata"]["candidatesTokenCount"], 2);
    assert_accounted(&emu.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_without_alt_sse_is_one_json_array() {
    let emu = emulator("gcp-j").await;
    let access = emu.control.mint_token();
    let mut body = gemini_body("hi");
    body["generationConfig"]["candidateCount"] = json!(2);
    let resp = post(&model_url(&emu, "streamGenerateContent"), &access, &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let v: Value = resp.json().await.unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(items[0]["candidates"].as_array().unwrap().len(), 2);
    assert_eq!(items[3]["candidates"][1]["finishReason"], "STOP");
    assert_eq!(items[3]["usageMetadata"]["candidatesTokenCount"], 8);
}

// ---- function calls -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_calls_are_answered_when_asked_for() {
    let emu = emulator("gcp-f").await;
    let access = emu.control.mint_token();
    let expected_args = json!({"city": "skyweave", "days": 1, "metric": true});

    let r =
        post(&model_url(&emu, "generateContent"), &access, &tool_body("Please use a tool")).await;
    let v: Value = r.json().await.unwrap();
    let c = &v["candidates"][0];
    assert_eq!(c["finishReason"], "STOP");
    let call = &c["content"]["parts"][0]["functionCall"];
    assert_eq!((&call["name"], &call["args"]), (&json!("get_weather"), &expected_args));

    let url = format!("{}?alt=sse", model_url(&emu, "streamGenerateContent"));
    let events =
        sse_events(&post(&url, &access, &tool_body("use a tool")).await.text().await.unwrap());
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["candidates"][0]["content"]["parts"][0]["functionCall"]["args"],
        expected_args
    );
    assert_eq!(events[0]["candidates"][0]["finishReason"], "STOP");

    // Without the phrase: text. With the function's response: text.
    let v: Value = post(&model_url(&emu, "generateContent"), &access, &tool_body("hi"))
        .await
        .json()
        .await
        .unwrap();
    assert!(text_of(&v).starts_with("Hello from gcp-f"));
    let mut answered = tool_body("use a tool");
    answered["contents"].as_array_mut().unwrap().extend([
        json!({"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": expected_args}}]}),
        json!({"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}}]}),
    ]);
    let r = post(&model_url(&emu, "generateContent"), &access, &answered).await;
    assert_eq!(r.status(), 200);
    assert!(text_of(&r.json().await.unwrap()).starts_with("Hello from gcp-f"));
    // Mode ANY forces a call.
    let mut forced = tool_body("hi");
    forced["toolConfig"] = json!({"functionCallingConfig": {"mode": "ANY"}});
    let v: Value =
        post(&model_url(&emu, "generateContent"), &access, &forced).await.json().await.unwrap();
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["functionCall"]["name"], "get_weather");
}

// ---- behaviours ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_behaviours_have_googles_error_shape() {
    let emu = emulator("gcp-e").await;
    let access = emu.control.mint_token();
    let url = model_url(&emu, "generateContent");
    let cases = [
        (GoogleBehaviour::google_status("RESOURCE_EXHAUSTED"), 429, "RESOURCE_EXHAUSTED"),
        (GoogleBehaviour::status(429), 429, "RESOURCE_EXHAUSTED"),
        (GoogleBehaviour::status(503), 503, "UNAVAILABLE"),
        (GoogleBehaviour::google_status("INTERNAL"), 500, "INTERNAL"),
        (GoogleBehaviour::google_status("INVALID_ARGUMENT"), 400, "INVALID_ARGUMENT"),
        (GoogleBehaviour::google_status("PERMISSION_DENIED"), 403, "PERMISSION_DENIED"),
        (GoogleBehaviour::google_status("UNAUTHENTICATED"), 401, "UNAUTHENTICATED"),
        (GoogleBehaviour::status(504), 504, "DEADLINE_EXCEEDED"),
    ];
    for (b, status, code) in cases {
        emu.control.push_script(vec![b]);
        let r = post(&url, &access, &gemini_body("hi")).await;
        assert_eq!(r.status(), status);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        let v: Value = r.json().await.unwrap();
        assert_eq!((&v["error"]["code"], &v["error"]["status"]), (&json!(status), &json!(code)));
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    emu.control.push_script(vec![GoogleBehaviour::google_status("RESOURCE_EXHAUSTED")]);
    let v: Value = post(&url, &access, &gemini_body("hi")).await.json().await.unwrap();
    assert_eq!(
        v,
        json!({"error": {
            "code": 429,
            "message": "Resource exhausted. Please try again later. Please refer to \
                        https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
            "status": "RESOURCE_EXHAUSTED"
        }})
    );
    emu.control.push_script(vec![GoogleBehaviour::Status {
        status: 503,
        google_status: None,
        message: Some("The model is overloaded. Please try again later.".into()),
    }]);
    let sse = format!("{}?alt=sse", model_url(&emu, "streamGenerateContent"));
    let r = post(&sse, &access, &gemini_body("hi")).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "The model is overloaded. Please try again later.");
    assert_accounted(&emu.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_mid_stream_is_an_error_event() {
    let emu = emulator("gcp-ms").await;
    let access = emu.control.mint_token();
    let url = format!("{}?alt=sse", model_url(&emu, "streamGenerateContent"));
    emu.control.push_script(vec![GoogleBehaviour::ErrorMidStream {
        after_chunks: 2,
        status: 503,
        google_status: None,
        message: None,
    }]);
    let r = post(&url, &access, &gemini_body("hi")).await;
    assert_eq!(r.status(), 200);
    let events = sse_events(&r.text().await.unwrap());
    assert_eq!(events.len(), 3);
    assert_eq!(text_of(&events[0]) + &text_of(&events[1]), "Hello from gcp-ms lorem");
    assert_eq!(events[2]["error"]["status"], "UNAVAILABLE");
    assert_eq!(events[2]["error"]["code"], 503);

    // Non-streaming: the same error as an HTTP error.
    emu.control.push_script(vec![GoogleBehaviour::ErrorMidStream {
        after_chunks: 2,
        status: 500,
        google_status: None,
        message: None,
    }]);
    let r = post(&model_url(&emu, "generateContent"), &access, &gemini_body("hi")).await;
    assert_eq!(r.status(), 500);
    assert_accounted(&emu.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_reset_cut_and_malformed() {
    let emu = emulator("gcp-h").await;
    let access = emu.control.mint_token();
    let plain = model_url(&emu, "generateContent");
    let sse = format!("{}?alt=sse", model_url(&emu, "streamGenerateContent"));

    emu.control.push_script(vec![GoogleBehaviour::Hang]);
    let r = client()
        .post(&plain)
        .bearer_auth(&access)
        .json(&gemini_body("hi"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    wait_until("hang cancelled", || emu.control.cancelled() == 1).await;

    emu.control.push_script(vec![GoogleBehaviour::Reset]);
    let r = client().post(&plain).bearer_auth(&access).json(&gemini_body("hi")).send().await;
    assert!(r.is_err(), "reset is a connection error, not a status");

    emu.control.push_script(vec![GoogleBehaviour::CutAfterChunks { chunks: 2 }]);
    let resp = post(&sse, &access, &gemini_body("hi")).await;
    assert_eq!(resp.status(), 200);
    let (bytes, err) = read_body(resp).await;
    assert!(err.is_some(), "the body ends in an error");
    let events = sse_events(std::str::from_utf8(&bytes).unwrap());
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e["candidates"][0].get("finishReason").is_none()));

    emu.control.push_script(vec![GoogleBehaviour::CutAfterChunks { chunks: 2 }]);
    let r = post(&plain, &access, &gemini_body("hi")).await;
    assert!(r.bytes().await.is_err());

    emu.control.push_script(vec![GoogleBehaviour::Malformed]);
    let r = post(&plain, &access, &gemini_body("hi")).await;
    assert_eq!(r.status(), 200);
    assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());

    emu.control.push_script(vec![GoogleBehaviour::Malformed]);
    let body = post(&sse, &access, &gemini_body("hi")).await.text().await.unwrap();
    let data = body.strip_prefix("data: ").unwrap().strip_suffix("\r\n\r\n").unwrap();
    assert!(serde_json::from_str::<Value>(data).is_err());

    // A client leaving mid-stream is counted as cancelled.
    emu.control.push_script(vec![GoogleBehaviour::ok(0, 2000, 3)]);
    let resp = post(&sse, &access, &gemini_body("hi")).await;
    let mut stream = resp.bytes_stream();
    let _ = stream.next().await;
    drop(stream);
    wait_until("stream cancelled", || emu.control.cancelled() == 2).await;
    wait_until("nothing in flight", || emu.control.in_flight() == 0).await;
    assert_eq!(emu.control.requests(), 7);
    assert_accounted(&emu.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_delays_non_streaming_answers() {
    let emu = emulator("gcp-t").await;
    let access = emu.control.mint_token();
    emu.control.set_behaviour(GoogleBehaviour::ok(250, 0, 2));
    let started = Instant::now();
    let v: Value = post(&model_url(&emu, "generateContent"), &access, &gemini_body("hi"))
        .await
        .json()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(text_of(&v), "Hello from gcp-t lorem");
}

// ---- the OpenAI-compatible mode -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_compatible_chat_completions() {
    let emu = emulator("gcp-o").await;
    let access = emu.control.mint_token();
    let url = openai_url(&emu);
    let body = json!({
        "model": "meta/llama3-405b-instruct-maas",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Say hello to me"}]}
        ],
    });
    let r = post(&url, &access, &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "meta/llama3-405b-instruct-maas");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from gcp-o lorem ipsum dolor");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"], json!({"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}));
    let rec = emu.control.recorded();
    assert_eq!(rec[0].operation.as_deref(), Some("chat.completions"));
    assert_eq!(rec[0].model.as_deref(), Some("meta/llama3-405b-instruct-maas"));

    let mut streamed = body.clone();
    streamed["model"] = json!("google/gemini-2.0-flash");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = post(&url, &access, &streamed).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = openai_events(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks.len(), 6, "4 content + finish + usage");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["delta"]["content"].as_str()))
        .collect();
    assert_eq!(text, "Hello from gcp-o lorem ipsum dolor");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 4);

    // Tool calls.
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let ask = json!({"model": "google/gemini-2.0-flash", "tools": tools,
        "messages": [{"role": "user", "content": "use a tool please"}]});
    let v: Value = post(&url, &access, &ask).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{\"city\":\"skyweave\"}");
    let mut ask_stream = ask.clone();
    ask_stream["stream"] = json!(true);
    let events = openai_events(&post(&url, &access, &ask_stream).await.text().await.unwrap());
    assert_eq!(events.len(), 3, "{events:?}");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
    assert_eq!(first["choices"][0]["delta"]["tool_calls"][0]["function"]["name"], "get_weather");
    let finish: Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");

    // Errors keep Google's shape.
    emu.control.push_script(vec![GoogleBehaviour::status(429)]);
    let r = post(&url, &access, &body).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["status"], "RESOURCE_EXHAUSTED");
    let r =
        post(&url, &access, &json!({"model": "gemini-2.0-flash", "messages": body["messages"]}))
            .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["status"], "INVALID_ARGUMENT");
    // Cut and malformed streams.
    emu.control.push_script(vec![GoogleBehaviour::CutAfterChunks { chunks: 1 }]);
    let (bytes, err) = read_body(post(&url, &access, &streamed).await).await;
    assert!(err.is_some());
    assert_eq!(openai_events(std::str::from_utf8(&bytes).unwrap()).len(), 1);
    emu.control.push_script(vec![GoogleBehaviour::Malformed]);
    let events = openai_events(&post(&url, &access, &streamed).await.text().await.unwrap());
    assert!(serde_json::from_str::<Value>(&events[0]).is_err());
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_accounted(&emu.control);
}

// ---- control and lifecycle ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_routes_and_unknown_paths() {
    let emu = emulator("gcp-c").await;
    let c = client();
    let base = emu.base_url();
    let r = c
        .put(format!("{base}/_emulator/script"))
        .json(&json!([{"kind": "status", "status": 503}, {"kind": "ok", "chunks": 1}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let minted: Value =
        c.post(format!("{base}/_emulator/tokens")).send().await.unwrap().json().await.unwrap();
    let access = minted["access_token"].as_str().unwrap();
    let url = model_url(&emu, "generateContent");
    assert_eq!(post(&url, access, &gemini_body("hi")).await.status(), 503);
    let v: Value = post(&url, access, &gemini_body("hi")).await.json().await.unwrap();
    assert_eq!(text_of(&v), "Hello from gcp-c");

    let r = c
        .put(format!("{base}/_emulator/behaviour"))
        .json(&json!({"kind": "hang"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(emu.control.behaviour(), GoogleBehaviour::Hang);
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
    assert_eq!(stats["issued_tokens"], 1);
    assert_eq!(stats["rejected_tokens"], 0);
    let rec: Value =
        c.get(format!("{base}/_emulator/recorded")).send().await.unwrap().json().await.unwrap();
    assert_eq!(rec.as_array().unwrap().len(), 2);
    let r = c.delete(format!("{base}/_emulator/tokens")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(post(&url, access, &gemini_body("hi")).await.status(), 401);

    for path in [
        "/v1/projects/p/locations/l/publishers/google/models/gemini:countTokens",
        "/v1/projects/p/locations/l/publishers/anthropic/models/claude:generateContent",
        "/v2/projects/p/locations/l/publishers/google/models/gemini:generateContent",
        "/v1/models",
    ] {
        let r = c.post(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(r.text().await.unwrap().contains("Error 404 (Not Found)"));
    }
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(emu.control.requests(), 3, "unknown routes are not model requests");
}

#[test]
fn behaviour_json_format() {
    let cases = [
        (
            GoogleBehaviour::ok(1, 2, 3),
            json!({"kind": "ok", "ttft_ms": 1, "inter_chunk_ms": 2, "chunks": 3}),
        ),
        (
            GoogleBehaviour::google_status("RESOURCE_EXHAUSTED"),
            json!({"kind": "status", "status": 429, "google_status": "RESOURCE_EXHAUSTED", "message": null}),
        ),
        (
            GoogleBehaviour::ErrorMidStream {
                after_chunks: 1,
                status: 503,
                google_status: None,
                message: None,
            },
            json!({"kind": "error_mid_stream", "after_chunks": 1, "status": 503, "google_status": null, "message": null}),
        ),
        (GoogleBehaviour::Hang, json!({"kind": "hang"})),
        (GoogleBehaviour::Reset, json!({"kind": "reset"})),
        (
            GoogleBehaviour::CutAfterChunks { chunks: 2 },
            json!({"kind": "cut_after_chunks", "chunks": 2}),
        ),
        (GoogleBehaviour::Malformed, json!({"kind": "malformed"})),
    ];
    for (b, v) in cases {
        assert_eq!(serde_json::to_value(&b).unwrap(), v);
        assert_eq!(serde_json::from_value::<GoogleBehaviour>(v).unwrap(), b);
    }
    let b: GoogleBehaviour = serde_json::from_value(json!({"kind": "ok"})).unwrap();
    assert_eq!(b, GoogleBehaviour::default());
    let b: GoogleBehaviour =
        serde_json::from_value(json!({"kind": "status", "status": 503})).unwrap();
    assert_eq!(b, GoogleBehaviour::status(503));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawning_with_a_bad_key_fails() {
    let mut bad = config("gcp-bad");
    bad.public_key_pem = test_key_pems().0.to_owned();
    let err = spawn_google(bad).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let mut bad = config("gcp-bad");
    bad.public_key_pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into();
    assert!(spawn_google(bad).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_emulator_closes_the_listener() {
    let emu = emulator("gcp-d").await;
    let addr = emu.addr;
    drop(emu);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
