use super::*;

const GOOD: &str = "0123456789abcdef-ci";

fn bearer_header(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn refusals() {
    let auth = Auth::with_tokens(vec![NamedToken::new("ci", GOOD).unwrap()]).unwrap();
    let cases: [(Option<&str>, Refusal); 7] = [
        (None, Refusal::Missing),
        (Some("Bearer"), Refusal::Missing),
        (Some("Bearer "), Refusal::Missing),
        (Some("Basic Y2k6eA=="), Refusal::Missing),
        (Some("Bearer 0123456789abcdef"), Refusal::Invalid),
        (
            Some("Bearer 0123456789abcdef-ci-and-more"),
            Refusal::Invalid,
        ),
        (Some(GOOD), Refusal::Missing),
    ];
    for (h, refusal) in cases {
        let r = auth.check(h).await.unwrap_err();
        assert_eq!(r, refusal, "{h:?}");
        assert!(!r.message().contains(GOOD));
    }
    assert_eq!(auth.check(Some(&bearer_header(GOOD))).await.unwrap(), "ci");
    assert_eq!(
        auth.check(Some(&format!("bearer  {GOOD} "))).await.unwrap(),
        "ci"
    );
}

#[tokio::test]
async fn an_added_token_survives_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, format!("ci {GOOD}\n")).unwrap();
    let auth = Auth::from_file(&path).unwrap();
    let env = "from-the-environment-0123";
    auth.add(NamedToken::new("bg-token", env).unwrap()).unwrap();
    assert!(auth.add(NamedToken::new("ci", env).unwrap()).is_err());
    assert!(auth.reload().unwrap());
    assert_eq!(
        auth.check(Some(&bearer_header(env))).await.unwrap(),
        "bg-token"
    );
    assert_eq!(auth.check(Some(&bearer_header(GOOD))).await.unwrap(), "ci");

    // A file that now clashes with the added token is not taken.
    std::fs::write(&path, format!("bg-token {GOOD}\n")).unwrap();
    let e = auth.reload().unwrap_err();
    assert!(
        matches!(&e, AuthError::File { source, .. } if matches!(**source, AuthError::DuplicateName { .. })),
        "{e}"
    );
    let shown = e.to_string();
    assert!(!shown.contains(GOOD) && !shown.contains(env), "{e}");
    assert_eq!(auth.check(Some(&bearer_header(GOOD))).await.unwrap(), "ci");
    assert_eq!(
        auth.check(Some(&bearer_header(env))).await.unwrap(),
        "bg-token"
    );
}

#[test]
fn only_jwt_shaped_values_go_to_the_verifier() {
    for (v, jwt) in [
        ("a.b.c", true),
        ("eyJ.eyJ.", true),
        ("a.b", false),
        ("a.b.c.d", false),
        (".b.c", false),
        (GOOD, false),
    ] {
        assert_eq!(looks_like_jwt(v), jwt, "{v}");
    }
}

#[tokio::test]
async fn nothing_configured_is_forbidden() {
    let r = Auth::none()
        .check(Some(&bearer_header(GOOD)))
        .await
        .unwrap_err();
    assert_eq!(r, Refusal::Off);
}

#[test]
fn short_or_duplicate_tokens_are_refused_without_showing_them() {
    let e = NamedToken::new("ci", "short-secret").unwrap_err();
    assert!(matches!(e, AuthError::TokenTooShort { len: 12, .. }), "{e}");
    assert!(!e.to_string().contains("short-secret"), "{e}");
    let e = Auth::with_tokens(vec![
        NamedToken::new("a", GOOD).unwrap(),
        NamedToken::new("b", GOOD).unwrap(),
    ])
    .unwrap_err();
    assert!(matches!(e, AuthError::DuplicateSecret { .. }), "{e}");
    assert!(!e.to_string().contains(GOOD), "{e}");
    let shown = format!("{:?}", NamedToken::new("ci", GOOD).unwrap());
    assert!(!shown.contains(GOOD), "{shown}");
}

#[tokio::test]
async fn token_file_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, format!("# comment\n\nci {GOOD}\n")).unwrap();
    let auth = Auth::from_file(&path).unwrap();
    assert_eq!(auth.check(Some(&bearer_header(GOOD))).await.unwrap(), "ci");

    let next = "fedcba9876543210-ops";
    std::fs::write(&path, format!("ops {next}\n")).unwrap();
    assert!(auth.reload().unwrap());
    assert!(auth.check(Some(&bearer_header(GOOD))).await.is_err());
    assert_eq!(auth.check(Some(&bearer_header(next))).await.unwrap(), "ops");

    // A broken file keeps the tokens in force and names the line, not the secret.
    std::fs::write(&path, format!("ops {next}\nbroken tooshort\n")).unwrap();
    let e = auth.reload().unwrap_err();
    assert!(
        matches!(&e, AuthError::Line { line: 2, source, .. } if matches!(**source, AuthError::TokenTooShort { .. })),
        "{e}"
    );
    assert!(!e.to_string().contains("tooshort"), "{e}");
    assert_eq!(auth.check(Some(&bearer_header(next))).await.unwrap(), "ops");
    std::fs::write(&path, format!("ops {next} extra\n")).unwrap();
    assert!(matches!(
        auth.reload().unwrap_err(),
        AuthError::Malformed { line: 1, .. }
    ));
}

#[test]
fn a_token_file_with_no_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    for text in ["", "\n\n", "# only a comment\n  \n"] {
        std::fs::write(&path, text).unwrap();
        let e = Auth::from_file(&path).unwrap_err();
        assert!(matches!(e, AuthError::NoTokens { .. }), "{text:?}: {e}");
    }
}

#[tokio::test]
async fn a_reload_that_finds_no_token_keeps_the_tokens_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, format!("ci {GOOD}\n")).unwrap();
    let auth = Auth::from_file(&path).unwrap();
    std::fs::write(&path, "").unwrap();
    let e = auth.reload().unwrap_err();
    assert!(matches!(e, AuthError::NoTokens { .. }), "{e}");
    assert_eq!(auth.check(Some(&bearer_header(GOOD))).await.unwrap(), "ci");
}

#[test]
fn token_names_are_restricted() {
    for good in ["ci", "a", "deploy-bot_2.prod@ops", &"n".repeat(64)] {
        assert!(NamedToken::new(good, GOOD).is_ok(), "{good:?}");
    }
    for bad in [
        "",
        &"n".repeat(65),
        "two words",
        "new\nline",
        "semi;colon",
        "quote\"",
        "slash/name",
        "ünïcode",
        "=",
    ] {
        let e = NamedToken::new(bad, GOOD).unwrap_err();
        assert!(matches!(e, AuthError::TokenName), "{bad:?}: {e}");
    }
}

#[tokio::test]
async fn tokens_of_any_length_compare_by_digest() {
    let auth = Auth::with_tokens(vec![NamedToken::new("ci", GOOD).unwrap()]).unwrap();
    // A prefix, an extension and a same-length change are all refused.
    for wrong in [
        &GOOD[..GOOD.len() - 1],
        &format!("{GOOD}x"),
        "0123456789abcdef-cj",
    ] {
        assert_eq!(
            auth.check(Some(&bearer_header(wrong))).await.unwrap_err(),
            Refusal::Invalid
        );
    }
    assert_eq!(auth.check(Some(&bearer_header(GOOD))).await.unwrap(), "ci");
}

/// A credential's stable name, which a deploy lease records: a named
/// token's name; for an `id_token`, a digest of issuer, subject and
/// pipeline, shared by the jobs of one pipeline only.
#[tokio::test]
async fn credentials_are_named_stably_and_without_secrets() {
    let auth = Auth::with_tokens(vec![NamedToken::new("ci", GOOD).unwrap()]).unwrap();
    let caller = auth.caller(Some(&bearer_header(GOOD))).await.unwrap();
    assert_eq!(caller.credential, "token:ci");

    let claims = |pipeline: u64, job: u64| {
        serde_json::json!({
            "iss": "https://gitlab.example",
            "sub": "project_path:team/chat:ref_type:branch:ref:main",
            "pipeline_id": pipeline,
            "job_id": job,
        })
        .as_object()
        .unwrap()
        .clone()
    };
    let a = claims::credential(&claims(41, 1));
    assert_eq!(
        a,
        claims::credential(&claims(41, 2)),
        "one pipeline, two jobs"
    );
    assert_ne!(a, claims::credential(&claims(42, 1)), "two pipelines");
    let hex = a.strip_prefix("oidc:").unwrap();
    assert!(
        hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{a}"
    );
}
