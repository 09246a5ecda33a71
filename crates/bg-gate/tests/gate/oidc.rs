//! GitLab CI `id_tokens` through the real router: every refusal, with real
//! RS256 signatures, and the JWKS served over HTTP with a key rotation.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use bg_gate::{Auth, ClaimRule, Gate, JwksSource, NamedToken, OidcConfig, OidcError, OidcVerifier};
use bg_state::{Colour, ColourStore};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};

use super::*;

const KEY_1: &str = include_str!("../fixtures/oidc-key-1.pem");
const KEY_1_PUB: &str = include_str!("../fixtures/oidc-key-1.pub.pem");
const KEY_2: &str = include_str!("../fixtures/oidc-key-2.pem");
const JWKS_1: &str = include_str!("../fixtures/jwks-1.json");
const JWKS_1_2: &str = include_str!("../fixtures/jwks-1-2.json");
const ISS: &str = "https://gitlab.example.com";
const AUD: &str = "https://chat.example.com/bg";
const ACTOR: &str = "gitlab:ops/chat@main job 1234 (user alice)";

fn claims() -> Value {
    let now = get_current_timestamp();
    // The shape GitLab sends: ids and flags as strings.
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "project_path:ops/chat:ref_type:branch:ref:main",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "0b2c7a55-0d2e-4a8c-9d8e-2b5d1d3c4e5f",
        "namespace_id": "7",
        "namespace_path": "ops",
        "project_id": "42",
        "project_path": "ops/chat",
        "user_id": "3",
        "user_login": "alice",
        "pipeline_id": "999",
        "pipeline_source": "push",
        "job_id": "1234",
        "ref": "main",
        "ref_type": "branch",
        "ref_protected": "true",
        "environment": "production",
        "environment_protected": "true",
    })
}

fn with(name: &str, value: Value) -> Value {
    let mut c = claims();
    c[name] = value;
    c
}

fn without(name: &str) -> Value {
    let mut c = claims();
    c.as_object_mut().unwrap().remove(name);
    c
}

fn sign(pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn good() -> String {
    sign(KEY_1, Some("key-1"), &claims())
}

fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token whose header says `alg` and whose signature part is `signature`,
/// built by hand since no JWT library will write an unsigned one.
fn hand_made(alg: &str, signature: &str) -> String {
    let header = json!({ "alg": alg, "typ": "JWT", "kid": "key-1" }).to_string();
    format!(
        "{}.{}.{signature}",
        b64url(header.as_bytes()),
        b64url(claims().to_string().as_bytes())
    )
}

/// HS256 "signed" with the RSA public key as the HMAC secret: the classic
/// algorithm confusion, which a verifier that trusts `alg` would accept.
fn hs256_with_public_key(secret: &[u8]) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("key-1".into());
    encode(&header, &claims(), &EncodingKey::from_secret(secret)).unwrap()
}

fn rules(rules: &[&str]) -> Vec<ClaimRule> {
    rules.iter().map(|r| r.parse().unwrap()).collect()
}

fn fixture(name: &str) -> JwksSource {
    JwksSource::File(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR")).into())
}

async fn file_verifier() -> OidcVerifier {
    let cfg = OidcConfig::new(
        ISS,
        AUD,
        fixture("jwks-1.json"),
        rules(&[
            "project_id=42",
            "ref_protected=true",
            "environment=production",
        ]),
    );
    OidcVerifier::new(cfg).await.unwrap()
}

fn gate_with(store: &Arc<dyn ColourStore>, auth: Auth) -> Gate {
    Gate::new(Arc::clone(store), config(Colour::Blue), auth).unwrap()
}

async fn generation(store: &Arc<dyn ColourStore>) -> u64 {
    store.get(&app()).await.unwrap().unwrap().generation
}

/// Everything logged while the guard lives, whatever the level.
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || Sink(Arc::clone(&sink)))
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn every_refusal_through_the_router() {
    let store = memory_with(Colour::Blue).await;
    let auth = Auth::with_tokens(vec![NamedToken::new("ci", TOKEN).unwrap()])
        .unwrap()
        .with_oidc(file_verifier().await);
    let r = router(&gate_with(&store, auth));
    let now = get_current_timestamp();
    let stripped = {
        let t = good();
        format!("{}.", t.rsplit_once('.').unwrap().0)
    };
    let forged_payload = {
        // A real signature over other claims, spliced onto these.
        let other = sign(KEY_1, Some("key-1"), &with("project_id", json!("43")));
        let genuine = good();
        let sig = genuine.rsplit('.').next().unwrap();
        format!("{}.{sig}", other.rsplit_once('.').unwrap().0)
    };
    let bit_flipped = {
        let t = good();
        let (signed, sig) = t.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        format!("{signed}.{flipped}{}", &sig[1..])
    };
    let unauthorised = StatusCode::UNAUTHORIZED;
    let forbidden = StatusCode::FORBIDDEN;
    let cases: Vec<(&str, Option<String>, StatusCode)> = vec![
        ("no credentials", None, unauthorised),
        (
            "not a token",
            Some("not-a-jwt-and-not-a-token".into()),
            unauthorised,
        ),
        ("three dots of nothing", Some("..".into()), unauthorised),
        (
            "garbage in JWT shape",
            Some("abc.def.ghi".into()),
            unauthorised,
        ),
        ("alg none", Some(hand_made("none", "")), unauthorised),
        ("alg None", Some(hand_made("None", "")), unauthorised),
        ("RS256 without a signature", Some(stripped), unauthorised),
        (
            "signature over other claims",
            Some(forged_payload),
            unauthorised,
        ),
        ("signature altered", Some(bit_flipped), unauthorised),
        (
            "HS256 with the public key PEM as secret",
            Some(hs256_with_public_key(KEY_1_PUB.as_bytes())),
            unauthorised,
        ),
        (
            "HS256 with the trimmed PEM as secret",
            Some(hs256_with_public_key(KEY_1_PUB.trim().as_bytes())),
            unauthorised,
        ),
        (
            "signed by an unknown key",
            Some(sign(KEY_2, Some("key-2"), &claims())),
            unauthorised,
        ),
        (
            "unknown key claiming a known key id",
            Some(sign(KEY_2, Some("key-1"), &claims())),
            unauthorised,
        ),
        (
            "no key id",
            Some(sign(KEY_1, None, &claims())),
            unauthorised,
        ),
        (
            "expired",
            Some(sign(KEY_1, Some("key-1"), &with("exp", json!(now - 600)))),
            unauthorised,
        ),
        (
            "no expiry",
            Some(sign(KEY_1, Some("key-1"), &without("exp"))),
            unauthorised,
        ),
        (
            "not valid yet",
            Some(sign(KEY_1, Some("key-1"), &with("nbf", json!(now + 600)))),
            unauthorised,
        ),
        (
            "wrong issuer",
            Some(sign(
                KEY_1,
                Some("key-1"),
                &with("iss", json!("https://gitlab.com")),
            )),
            unauthorised,
        ),
        (
            "no issuer",
            Some(sign(KEY_1, Some("key-1"), &without("iss"))),
            unauthorised,
        ),
        (
            "wrong audience",
            Some(sign(
                KEY_1,
                Some("key-1"),
                &with("aud", json!("https://other.example.com")),
            )),
            unauthorised,
        ),
        (
            "no audience",
            Some(sign(KEY_1, Some("key-1"), &without("aud"))),
            unauthorised,
        ),
        (
            "another project",
            Some(sign(KEY_1, Some("key-1"), &with("project_id", json!("43")))),
            forbidden,
        ),
        (
            "project id as a number that differs",
            Some(sign(KEY_1, Some("key-1"), &with("project_id", json!(43)))),
            forbidden,
        ),
        (
            "unprotected ref",
            Some(sign(
                KEY_1,
                Some("key-1"),
                &with("ref_protected", json!("false")),
            )),
            forbidden,
        ),
        (
            "another environment",
            Some(sign(
                KEY_1,
                Some("key-1"),
                &with("environment", json!("staging")),
            )),
            forbidden,
        ),
        (
            "no environment",
            Some(sign(KEY_1, Some("key-1"), &without("environment"))),
            forbidden,
        ),
    ];

    let (logs, guard) = capture_logs();
    for path in ["/bg/switch", "/switch", "/bg/drain"] {
        for (what, token, status) in &cases {
            let a = call(&r, Method::POST, path, token.as_deref(), r#"{}"#).await;
            assert_eq!(a.status, *status, "{path}: {what}: {}", a.body);
            let kind = if *status == unauthorised {
                "unauthorized"
            } else {
                "forbidden"
            };
            assert_eq!(a.json()["kind"], kind, "{path}: {what}");
            assert_eq!(
                a.headers.contains_key(header::WWW_AUTHENTICATE),
                *status == unauthorised,
                "{path}: {what}"
            );
            if let Some(t) = token.as_deref().filter(|t| t.len() > 3) {
                assert!(!a.body.contains(t), "{path}: {what}: {}", a.body);
                let sig = t.rsplit('.').next().unwrap();
                if sig.len() > 8 {
                    assert!(!a.body.contains(sig), "{path}: {what}: {}", a.body);
                }
            }
        }
    }
    drop(guard);
    assert_eq!(generation(&store).await, 1, "a refused switch switched");

    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("JWT refused"), "nothing logged: {logs}");
    for (what, token, _) in &cases {
        let Some(t) = token.as_deref() else { continue };
        let sig = t.rsplit('.').next().unwrap();
        if sig.len() > 8 {
            assert!(!logs.contains(sig), "{what}: a signature reached the log");
        }
        if t.len() > 3 {
            assert!(!logs.contains(t), "{what}: a token reached the log");
        }
    }
}

#[tokio::test]
async fn a_genuine_token_switches_and_is_recorded_by_its_claims() {
    let store = memory_with(Colour::Blue).await;
    let auth = Auth::with_tokens(vec![NamedToken::new("ci", TOKEN).unwrap()])
        .unwrap()
        .with_oidc(file_verifier().await);
    let r = router(&gate_with(&store, auth));

    // GitLab's string claims, and the same values as JSON number and boolean.
    let typed = {
        let mut c = with("project_id", json!(42));
        c["ref_protected"] = json!(true);
        sign(KEY_1, Some("key-1"), &c)
    };
    for (token, to) in [(good(), "green"), (typed, "blue")] {
        let body = format!(r#"{{"to":"{to}"}}"#);
        let a = call(&r, Method::POST, "/bg/switch", Some(&token), &body).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.json()["changed"], true);
        let last = &store.history(&app(), 1).await.unwrap()[0];
        assert_eq!(last.actor, ACTOR);
    }
    assert_eq!(generation(&store).await, 3);

    // The seed's endpoint and the drain take the same token.
    let a = call(&r, Method::POST, "/switch", Some(&good()), "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = call(&r, Method::POST, "/bg/drain", Some(&good()), "").await;
    assert_ne!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    assert_ne!(a.status, StatusCode::FORBIDDEN, "{}", a.body);

    // Bearer tokens still work alongside, and one shaped like a JWT is still
    // a bearer token.
    let a = call(
        &r,
        Method::POST,
        "/bg/switch",
        Some(TOKEN),
        r#"{"to":"blue"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(store.history(&app(), 1).await.unwrap()[0].actor, "ci");
    let dotted = "ops.bearer.0123456789abcdef";
    let auth = Auth::with_tokens(vec![NamedToken::new("dotted", dotted).unwrap()])
        .unwrap()
        .with_oidc(file_verifier().await);
    let r = router(&gate_with(&store, auth));
    let a = call(
        &r,
        Method::POST,
        "/bg/switch",
        Some(dotted),
        r#"{"to":"green"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(store.history(&app(), 1).await.unwrap()[0].actor, "dotted");
}

#[tokio::test]
async fn id_tokens_alone() {
    let store = memory_with(Colour::Blue).await;
    let auth = Auth::none().with_oidc(file_verifier().await);
    assert!(auth.is_configured());
    let r = router(&gate_with(&store, auth));
    for (token, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(TOKEN.to_owned()), StatusCode::UNAUTHORIZED),
        (
            Some(sign(KEY_1, Some("key-1"), &with("project_id", json!("1")))),
            StatusCode::FORBIDDEN,
        ),
        (Some(good()), StatusCode::OK),
    ] {
        let a = call(&r, Method::POST, "/bg/switch", token.as_deref(), "").await;
        assert_eq!(a.status, status, "{token:?}: {}", a.body);
    }
    assert_eq!(store.history(&app(), 1).await.unwrap()[0].actor, ACTOR);
}

/// A JWKS endpoint whose document can be changed, or made to fail, and
/// which counts its downloads.
struct Jwks {
    body: Mutex<Option<&'static str>>,
    hits: AtomicUsize,
}

impl Jwks {
    async fn serve(body: Option<&'static str>) -> (Arc<Jwks>, SocketAddr) {
        async fn keys(State(jwks): State<Arc<Jwks>>) -> Response {
            jwks.hits.fetch_add(1, Ordering::SeqCst);
            let body = *jwks.body.lock().unwrap();
            match body {
                Some(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
                None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        }
        let jwks = Arc::new(Jwks {
            body: Mutex::new(body),
            hits: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/oauth/discovery/keys", routing::get(keys))
            .with_state(Arc::clone(&jwks));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (jwks, addr)
    }

    fn set(&self, body: Option<&'static str>) {
        *self.body.lock().unwrap() = body;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    async fn verifier(addr: SocketAddr) -> OidcVerifier {
        let source: JwksSource = format!("http://{addr}/oauth/discovery/keys")
            .parse()
            .unwrap();
        assert!(matches!(source, JwksSource::Url(_)));
        OidcVerifier::new(OidcConfig::new(ISS, AUD, source, rules(&["project_id=42"])))
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_jwks_url_is_refetched_for_an_unknown_key_at_most_once_per_interval() {
    let (jwks, addr) = Jwks::serve(Some(JWKS_1)).await;
    let verifier = Jwks::verifier(addr).await;
    assert_eq!(jwks.hits(), 1, "fetched at start-up");
    assert_eq!(verifier.key_ids(), ["key-1"]);
    let store = memory_with(Colour::Blue).await;
    let r = router(&gate_with(&store, Auth::none().with_oidc(verifier)));
    let switch = |token: String| {
        let r = r.clone();
        async move {
            call(
                &r,
                Method::POST,
                "/bg/switch",
                Some(&token),
                r#"{"to":"blue"}"#,
            )
            .await
        }
    };

    assert_eq!(switch(good()).await.status, StatusCode::OK);
    assert_eq!(jwks.hits(), 1, "a known key needs no download");

    // The issuer rotates: the new key is published, then used.
    jwks.set(Some(JWKS_1_2));
    let a = switch(sign(KEY_2, Some("key-2"), &claims())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(jwks.hits(), 2, "one refetch for the new key id");
    assert_eq!(
        switch(sign(KEY_2, Some("key-2"), &claims())).await.status,
        StatusCode::OK
    );
    assert_eq!(jwks.hits(), 2);

    // A stream of made-up key ids costs at most one download per interval.
    for i in 0..5 {
        let a = switch(sign(KEY_2, Some(&format!("made-up-{i}")), &claims())).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(jwks.hits(), 2, "refetches are rate-limited");
    assert_eq!(switch(good()).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_unknown_key_is_refused_after_one_refetch() {
    let (jwks, addr) = Jwks::serve(Some(JWKS_1)).await;
    let store = memory_with(Colour::Blue).await;
    let r = router(&gate_with(
        &store,
        Auth::none().with_oidc(Jwks::verifier(addr).await),
    ));
    let a = call(
        &r,
        Method::POST,
        "/bg/switch",
        Some(&sign(KEY_2, Some("key-2"), &claims())),
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    assert_eq!(jwks.hits(), 2, "start-up and exactly one refetch");
    assert_eq!(generation(&store).await, 1);
}

#[tokio::test]
async fn an_unreachable_jwks_at_start_up_does_not_stop_the_gate() {
    let (jwks, addr) = Jwks::serve(None).await;
    let verifier = Jwks::verifier(addr).await;
    assert!(verifier.key_ids().is_empty());
    assert_eq!(jwks.hits(), 1);
    let store = memory_with(Colour::Blue).await;
    let g = gate_with(&store, Auth::none().with_oidc(verifier));
    g.refresh().await;
    let r = router(&g);
    assert_eq!(
        get(&r, "/balancer-keepalive-check").await.status,
        StatusCode::OK
    );

    // The first token retries the download.
    jwks.set(Some(JWKS_1));
    let a = call(&r, Method::POST, "/bg/switch", Some(&good()), "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(jwks.hits(), 2);
}

#[tokio::test]
async fn a_bad_configuration_is_refused_at_start_up() {
    let source = || fixture("jwks-1.json");
    let refused = |cfg| async move { OidcVerifier::new(cfg).await.unwrap_err() };
    let e = refused(OidcConfig::new(ISS, AUD, source(), vec![])).await;
    assert!(matches!(e, OidcError::NoClaimRule), "{e}");
    let e = refused(OidcConfig::new(
        "",
        AUD,
        source(),
        rules(&["project_id=42"]),
    ))
    .await;
    assert!(matches!(e, OidcError::EmptyIssuer), "{e}");
    let e = refused(OidcConfig::new(
        ISS,
        "",
        source(),
        rules(&["project_id=42"]),
    ))
    .await;
    assert!(matches!(e, OidcError::EmptyAudience), "{e}");
    let e = refused(OidcConfig::new(
        ISS,
        AUD,
        fixture("missing.json"),
        rules(&["project_id=42"]),
    ))
    .await;
    assert!(matches!(e, OidcError::ReadJwks { .. }), "{e}");
    let e = refused(OidcConfig::new(
        ISS,
        AUD,
        fixture("oidc-key-1.pub.pem"),
        rules(&["project_id=42"]),
    ))
    .await;
    assert!(matches!(e, OidcError::NotAJwks { .. }), "{e}");
}

#[tokio::test]
async fn the_jwks_is_refreshed_on_a_timer_and_withdrawn_keys_stop_working() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, JWKS_1_2).unwrap();
    let mut cfg = OidcConfig::new(
        ISS,
        AUD,
        JwksSource::File(path.clone()),
        rules(&["project_id=42"]),
    );
    cfg.refresh_interval = std::time::Duration::from_millis(100);
    let verifier = OidcVerifier::new(cfg).await.unwrap();
    let store = memory_with(Colour::Blue).await;
    let gate = gate_with(&store, Auth::none().with_oidc(verifier));
    let _follower = gate.start();
    let r = router(&gate);
    let switch = |token: String| {
        let r = r.clone();
        async move {
            call(
                &r,
                Method::POST,
                "/bg/switch",
                Some(&token),
                r#"{"to":"blue"}"#,
            )
            .await
            .status
        }
    };
    assert_eq!(switch(good()).await, StatusCode::OK);

    // The issuer withdraws key-1; nobody presents an unknown key id.
    let mut set: Value = serde_json::from_str(JWKS_1_2).unwrap();
    set["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["kid"] == "key-2");
    std::fs::write(&path, set.to_string()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while switch(good()).await != StatusCode::UNAUTHORIZED {
        assert!(
            std::time::Instant::now() < deadline,
            "a withdrawn key is still accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let key_2 = sign(KEY_2, Some("key-2"), &claims());
    assert_eq!(switch(key_2).await, StatusCode::OK);
}

#[tokio::test]
async fn id_tokens_get_the_admin_scope_only_by_the_admin_rules() {
    let mut cfg = OidcConfig::new(ISS, AUD, fixture("jwks-1.json"), rules(&["project_id=42"]));
    cfg.admin_rules = rules(&["ref_protected=true", "environment=production"]);
    let verifier = OidcVerifier::new(cfg).await.unwrap();
    let store = memory_with(Colour::Blue).await;
    let r = router(&gate_with(&store, Auth::none().with_oidc(verifier)));
    let init = r#"{"active":"blue","force":true}"#;
    let path = "/bg/api/v1/apps/chat/init";

    // A protected ref in production: admin.
    let a = call(&r, Method::POST, path, Some(&good()), init).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let generation_after = generation(&store).await;

    // An unprotected ref: a CI credential, refused for init, allowed to switch.
    for claims in [
        with("ref_protected", json!("false")),
        with("environment", json!("staging")),
        without("environment"),
    ] {
        let token = sign(KEY_1, Some("key-1"), &claims);
        let a = call(&r, Method::POST, path, Some(&token), init).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
        assert_eq!(a.json()["kind"], "forbidden");
        assert_eq!(generation(&store).await, generation_after);
        let a = call(
            &r,
            Method::POST,
            "/bg/switch",
            Some(&token),
            r#"{"to":"blue"}"#,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }

    // Without admin rules, no id_token is admin.
    let verifier = file_verifier().await;
    assert!(verifier.admin_rules().is_empty());
    let r = router(&gate_with(&store, Auth::none().with_oidc(verifier)));
    let a = call(&r, Method::POST, path, Some(&good()), init).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
}
