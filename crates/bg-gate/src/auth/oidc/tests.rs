use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
use serde_json::json;

use super::*;
use crate::auth::claims::actor;
use crate::auth::jwks::parse_jwks;

const KEY_1: &str = include_str!("../../../tests/fixtures/oidc-key-1.pem");
const KEY_1_PUB: &str = include_str!("../../../tests/fixtures/oidc-key-1.pub.pem");
const KEY_2: &str = include_str!("../../../tests/fixtures/oidc-key-2.pem");
const JWKS_1: &str = include_str!("../../../tests/fixtures/jwks-1.json");
const ISS: &str = "https://gitlab.example.com";
const AUD: &str = "https://gate.example.com";

fn claims() -> Value {
    let now = get_current_timestamp();
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "project_path:ops/chat:ref_type:branch:ref:main",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "project_id": "42",
        "project_path": "ops/chat",
        "namespace_path": "ops",
        "ref": "main",
        "ref_protected": "true",
        "job_id": "1234",
        "user_login": "alice",
        "environment": "production",
    })
}

fn sign(pem: &str, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn verifier(rules: &[&str]) -> (tempfile::TempDir, OidcVerifier) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, JWKS_1).unwrap();
    let rules = rules.iter().map(|r| r.parse().unwrap()).collect();
    let v = OidcVerifier::new(OidcConfig::new(ISS, AUD, JwksSource::File(path), rules))
        .await
        .unwrap();
    (dir, v)
}

#[test]
fn claim_rules_parse_and_compare_as_strings() {
    let r: ClaimRule = "project_id=42".parse().unwrap();
    assert_eq!((r.name(), r.value()), ("project_id", "42"));
    assert_eq!(r.to_string(), "project_id=42");
    assert!(r.matches(Some(&json!("42"))));
    assert!(r.matches(Some(&json!(42))));
    assert!(!r.matches(Some(&json!("042"))));
    assert!(!r.matches(Some(&json!([42]))));
    assert!(!r.matches(None));
    let t: ClaimRule = "ref_protected=true".parse().unwrap();
    assert!(t.matches(Some(&json!("true"))));
    assert!(t.matches(Some(&json!(true))));
    assert!(!t.matches(Some(&json!(false))));
    assert!(!t.matches(Some(&Value::Null)));
    let url: ClaimRule = "environment_url=https://x/?a=b".parse().unwrap();
    assert_eq!(url.value(), "https://x/?a=b");
    for bad in ["project_id", "=42", "project_id=", "pro ject=1", "a=b\nc"] {
        assert!(bad.parse::<ClaimRule>().is_err(), "{bad:?}");
    }
}

#[test]
fn jwks_sources() {
    assert_eq!(
        "https://gitlab.com/oauth/discovery/keys"
            .parse::<JwksSource>()
            .unwrap(),
        JwksSource::Url("https://gitlab.com/oauth/discovery/keys".into())
    );
    assert!(matches!(
        "http://127.0.0.1:9/keys".parse().unwrap(),
        JwksSource::Url(_)
    ));
    assert_eq!(
        "/etc/bg/jwks.json".parse::<JwksSource>().unwrap(),
        JwksSource::File("/etc/bg/jwks.json".into())
    );
    assert_eq!(
        "file:///etc/bg/jwks.json".parse::<JwksSource>().unwrap(),
        JwksSource::File("/etc/bg/jwks.json".into())
    );
    for bad in [
        "",
        "ftp://host/keys",
        "https://",
        "https://user:secret@host/keys",
    ] {
        let e = bad.parse::<JwksSource>().unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}

#[test]
fn jwks_keeps_only_rs256_signing_keys_with_ids() {
    let one: Value = serde_json::from_str(JWKS_1).unwrap();
    let rsa = one["keys"][0].clone();
    let mut no_kid = rsa.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let mut enc = rsa.clone();
    enc["use"] = json!("enc");
    enc["kid"] = json!("enc");
    let mut rs512 = rsa.clone();
    rs512["alg"] = json!("RS512");
    rs512["kid"] = json!("rs512");
    let hmac = json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
    let strange = json!({"kty": "XYZ", "kid": "strange"});
    let doc = json!({"keys": [rsa, no_kid, enc, rs512, hmac, strange]}).to_string();
    let keys = parse_jwks("test", &doc).unwrap();
    assert_eq!(keys.keys().collect::<Vec<_>>(), ["key-1"]);
    assert!(matches!(
        parse_jwks("test", r#"{"keys": []}"#),
        Err(OidcError::NoUsableKey { .. })
    ));
    assert!(matches!(
        parse_jwks("test", "not json"),
        Err(OidcError::NotAJwks { .. })
    ));
}

#[tokio::test]
async fn configuration_is_checked() {
    let src = || JwksSource::File("/nonexistent/jwks.json".into());
    let rule = || vec!["project_id=42".parse().unwrap()];
    let empty_issuer = OidcVerifier::new(OidcConfig::new("", AUD, src(), rule())).await;
    assert!(matches!(empty_issuer, Err(OidcError::EmptyIssuer)));
    let empty_audience = OidcVerifier::new(OidcConfig::new(ISS, " ", src(), rule())).await;
    assert!(matches!(empty_audience, Err(OidcError::EmptyAudience)));
    let no_rule = OidcVerifier::new(OidcConfig::new(ISS, AUD, src(), vec![])).await;
    assert!(matches!(no_rule, Err(OidcError::NoClaimRule)));
    let unreadable = OidcVerifier::new(OidcConfig::new(ISS, AUD, src(), rule())).await;
    assert!(matches!(unreadable, Err(OidcError::ReadJwks { .. })));
}

#[tokio::test]
async fn accepts_a_good_token_and_names_its_caller() {
    let (_dir, v) = verifier(&["project_id=42", "ref_protected=true"]).await;
    assert_eq!(v.key_ids(), ["key-1"]);
    let token = sign(KEY_1, "key-1", &claims());
    assert_eq!(
        v.verify(&token).await.unwrap(),
        "gitlab:ops/chat@main job 1234 (user alice)"
    );
    let shown = format!("{v:?}");
    assert!(shown.contains("key-1") && shown.contains(ISS), "{shown}");
}

#[tokio::test]
async fn refusals() {
    let (_dir, v) = verifier(&["project_id=42", "environment=production"]).await;
    let now = get_current_timestamp();
    let with = |k: &str, val: Value| {
        let mut c = claims();
        c[k] = val;
        c
    };
    let without = |k: &str| {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let hs256_with_public_key = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("key-1".into());
        encode(
            &h,
            &claims(),
            &EncodingKey::from_secret(KEY_1_PUB.as_bytes()),
        )
        .unwrap()
    };
    let unsigned = {
        let good = sign(KEY_1, "key-1", &claims());
        let mut parts = good.split('.');
        let (_, payload) = (parts.next(), parts.next().unwrap());
        // {"alg":"none","kid":"key-1"}
        format!("eyJhbGciOiJub25lIiwia2lkIjoia2V5LTEifQ.{payload}.")
    };
    let tampered = {
        let good = sign(KEY_1, "key-1", &claims());
        let other = sign(KEY_1, "key-1", &with("project_id", json!("43")));
        let sig = good.rsplit('.').next().unwrap();
        let (unsigned, _) = other.rsplit_once('.').unwrap();
        format!("{unsigned}.{sig}")
    };
    let no_kid = {
        encode(
            &Header::new(Algorithm::RS256),
            &claims(),
            &EncodingKey::from_rsa_pem(KEY_1.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let cases: Vec<(&str, String, Refusal)> = vec![
        ("garbage", "a.b.c".into(), Refusal::Invalid),
        ("alg none", unsigned, Refusal::Invalid),
        ("HS/RS confusion", hs256_with_public_key, Refusal::Invalid),
        ("tampered", tampered, Refusal::Invalid),
        ("no kid", no_kid, Refusal::Invalid),
        (
            "unknown key",
            sign(KEY_2, "key-2", &claims()),
            Refusal::Invalid,
        ),
        (
            "wrong key for kid",
            sign(KEY_2, "key-1", &claims()),
            Refusal::Invalid,
        ),
        (
            "expired",
            sign(KEY_1, "key-1", &with("exp", json!(now - 600))),
            Refusal::Invalid,
        ),
        (
            "no exp",
            sign(KEY_1, "key-1", &without("exp")),
            Refusal::Invalid,
        ),
        (
            "not yet valid",
            sign(KEY_1, "key-1", &with("nbf", json!(now + 600))),
            Refusal::Invalid,
        ),
        (
            "wrong issuer",
            sign(KEY_1, "key-1", &with("iss", json!("https://gitlab.com"))),
            Refusal::Invalid,
        ),
        (
            "no issuer",
            sign(KEY_1, "key-1", &without("iss")),
            Refusal::Invalid,
        ),
        (
            "wrong audience",
            sign(KEY_1, "key-1", &with("aud", json!("https://other"))),
            Refusal::Invalid,
        ),
        (
            "no audience",
            sign(KEY_1, "key-1", &without("aud")),
            Refusal::Invalid,
        ),
        (
            "other project",
            sign(KEY_1, "key-1", &with("project_id", json!("43"))),
            Refusal::ClaimsNotAllowed,
        ),
        (
            "no environment",
            sign(KEY_1, "key-1", &without("environment")),
            Refusal::ClaimsNotAllowed,
        ),
        (
            "other environment",
            sign(KEY_1, "key-1", &with("environment", json!("staging"))),
            Refusal::ClaimsNotAllowed,
        ),
    ];
    for (what, token, refusal) in cases {
        let r = v.verify(&token).await.unwrap_err();
        assert_eq!(r, refusal, "{what}");
        assert!(!r.to_string().contains(&token), "{what}");
    }
    // An audience list naming this gate is fine.
    let token = sign(KEY_1, "key-1", &with("aud", json!(["x", AUD])));
    assert!(v.verify(&token).await.is_ok());
}

#[tokio::test]
async fn rules_for_one_claim_are_alternatives() {
    let (_dir, v) = verifier(&["environment=production", "environment=staging"]).await;
    let mut c = claims();
    for (env, ok) in [("production", true), ("staging", true), ("review", false)] {
        c["environment"] = json!(env);
        assert_eq!(
            v.verify(&sign(KEY_1, "key-1", &c)).await.is_ok(),
            ok,
            "{env}"
        );
    }
}

#[tokio::test]
async fn an_unknown_key_rereads_the_file_once_per_interval() {
    let (dir, v) = verifier(&["project_id=42"]).await;
    let path = dir.path().join("jwks.json");
    std::fs::write(
        &path,
        include_str!("../../../tests/fixtures/jwks-1-2.json").as_bytes(),
    )
    .unwrap();
    let token = sign(KEY_2, "key-2", &claims());
    assert!(v.verify(&token).await.is_ok());
    assert_eq!(v.key_ids(), ["key-1", "key-2"]);

    // Within the interval, a key id still unknown does not reread.
    std::fs::write(&path, JWKS_1).unwrap();
    assert!(v.verify(&sign(KEY_2, "key-3", &claims())).await.is_err());
    assert_eq!(v.key_ids(), ["key-1", "key-2"]);
}

#[test]
fn actor_falls_back_and_stays_printable_and_short() {
    let m = |v: Value| v.as_object().unwrap().clone();
    assert_eq!(
        actor(&m(
            json!({"sub": "project_path:ops/chat:ref_type:branch:ref:main"})
        )),
        "jwt:project_path:ops/chat:ref_type:branch:ref:main"
    );
    assert_eq!(actor(&m(json!({}))), "jwt:unknown");
    assert_eq!(
        actor(&m(json!({"namespace_path": "ops", "job_id": 7}))),
        "gitlab:ops job 7"
    );
    let long = "x".repeat(500);
    let a = actor(&m(json!({
        "project_path": long, "ref": long, "job_id": long, "user_login": "a\nb"
    })));
    assert!(a.chars().count() <= bg_state::MAX_NAME_LEN, "{a}");
    assert!(!a.chars().any(char::is_control), "{a}");
}
