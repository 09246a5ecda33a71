//! Credentials carry scopes: `ci` switches, drains, records deploys and
//! holds leases; `admin` also initialises, forces, breaks leases and writes
//! presence. Numbers that could wedge an app are bounded. Every refusal
//! changes nothing.

use axum::http::{Method, StatusCode};
use bg_gate::{Auth, Gate, NamedToken, Scope};
use bg_state::{Colour, ColourStore};

use super::*;

const CI: &str = "ci-only-token-0123456789";
const ADMIN: &str = "admin-token-0123456789ab";

fn scoped_auth() -> Auth {
    Auth::with_tokens(vec![
        NamedToken::new("pipeline", CI).unwrap(),
        NamedToken::new("ops", ADMIN)
            .unwrap()
            .with_scope(Scope::Admin),
    ])
    .unwrap()
}

async fn setup() -> (Arc<dyn ColourStore>, Gate, Router) {
    let store = memory_with(Colour::Blue).await;
    let gate = Gate::new(Arc::clone(&store), config(Colour::Blue), scoped_auth()).unwrap();
    gate.refresh().await;
    let r = router(&gate);
    (store, gate, r)
}

async fn snapshot(store: &Arc<dyn ColourStore>) -> String {
    format!(
        "{:?} {:?} {:?}",
        store.get(&app()).await.unwrap(),
        store.lease(&app()).await.unwrap(),
        store.presences(&app()).await.unwrap()
    )
}

const ADMIN_ONLY: [(&str, &str); 5] = [
    (
        "/bg/api/v1/apps/chat/init",
        r#"{"active":"green","force":true}"#,
    ),
    (
        "/bg/api/v1/apps/chat/switch",
        r#"{"to":"green","force":true}"#,
    ),
    (
        "/bg/api/v1/apps/chat/deploys",
        r#"{"colour":"blue","version":"v2","phase":"deploying","force":true}"#,
    ),
    ("/bg/api/v1/apps/chat/lease/break", r#"{"reason":"stuck"}"#),
    (
        "/bg/api/v1/apps/chat/presence",
        r#"{"gate_id":"g1","colour":"green","service_version":"v1","applied_generation":1,"ttl_ms":10000}"#,
    ),
];

#[tokio::test]
async fn a_ci_credential_cannot_do_what_needs_admin() {
    let (store, _gate, r) = setup().await;
    // Someone holds the lease, so a break has something to break.
    let a = call(
        &r,
        Method::POST,
        "/bg/api/v1/apps/chat/lease",
        Some(CI),
        r#"{"holder":"job-1","ttl_ms":60000}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let before = snapshot(&store).await;
    for (path, body) in ADMIN_ONLY {
        let a = call(&r, Method::POST, path, Some(CI), body).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: {}", a.body);
        assert_eq!(a.json()["kind"], "forbidden", "{path}");
        assert!(
            a.json()["message"].as_str().unwrap().contains("admin"),
            "{path}"
        );
    }
    assert_eq!(
        snapshot(&store).await,
        before,
        "a refusal changed something"
    );

    // The same acts with the admin scope go through.
    for (path, body) in ADMIN_ONLY {
        let a = call(&r, Method::POST, path, Some(ADMIN), body).await;
        assert!(a.status.is_success(), "{path}: {} {}", a.status, a.body);
    }
}

#[tokio::test]
async fn a_ci_credential_switches_drains_records_and_holds_leases() {
    let (_store, _gate, r) = setup().await;
    for (path, body) in [
        (
            "/bg/api/v1/apps/chat/deploys",
            r#"{"colour":"green","version":"v2","phase":"deploying"}"#,
        ),
        ("/bg/api/v1/apps/chat/switch", r#"{"to":"green"}"#),
        ("/bg/switch", r#"{"to":"blue"}"#),
        (
            "/bg/api/v1/apps/chat/lease",
            r#"{"holder":"job-1","ttl_ms":60000}"#,
        ),
    ] {
        let a = call(&r, Method::POST, path, Some(CI), body).await;
        assert!(a.status.is_success(), "{path}: {} {}", a.status, a.body);
    }
}

#[tokio::test]
async fn a_generation_floor_cannot_wedge_the_app() {
    let (store, gate, r) = setup().await;
    let before = snapshot(&store).await;
    for floor in [
        99_999_999_999_999_u64,
        bg_state::MAX_GENERATION,
        1_000_000_000,
    ] {
        let body = format!(r#"{{"active":"blue","force":true,"min_generation":{floor}}}"#);
        let a = call(
            &r,
            Method::POST,
            "/bg/api/v1/apps/chat/init",
            Some(ADMIN),
            &body,
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{floor}: {}", a.body);
        assert_eq!(a.json()["kind"], "invalid_input");
        assert!(
            a.json()["message"]
                .as_str()
                .unwrap()
                .contains("min_generation")
        );
    }
    let a = call(
        &r,
        Method::POST,
        "/bg/api/v1/apps/chat/presence",
        Some(ADMIN),
        r#"{"gate_id":"g1","colour":"green","service_version":"v1","applied_generation":99999999999999,"ttl_ms":10000}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert_eq!(a.json()["kind"], "invalid_input");
    assert_eq!(
        snapshot(&store).await,
        before,
        "a refusal changed something"
    );

    // A floor within the margin is a restore, as `init --from-gate` makes.
    let a = call(
        &r,
        Method::POST,
        "/bg/api/v1/apps/chat/init",
        Some(ADMIN),
        r#"{"active":"blue","force":true,"min_generation":500}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    gate.refresh().await;
    // And the app still switches.
    let a = call(
        &r,
        Method::POST,
        "/bg/switch",
        Some(CI),
        r#"{"to":"green"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(store.get(&app()).await.unwrap().unwrap().generation >= 501);
}

#[test]
fn the_token_file_names_scopes_in_a_third_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(
        &path,
        format!("pipeline {CI}\nops {ADMIN} admin\nbot 0123456789abcdef-bot ci\n"),
    )
    .unwrap();
    let auth = Auth::from_file(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let scope = |t: &str| {
        rt.block_on(auth.caller(Some(&format!("Bearer {t}"))))
            .unwrap()
            .scope
    };
    assert_eq!(scope(CI), Scope::Ci);
    assert_eq!(scope(ADMIN), Scope::Admin);
    assert_eq!(scope("0123456789abcdef-bot"), Scope::Ci);

    std::fs::write(&path, format!("ops {ADMIN} root\n")).unwrap();
    let e = Auth::from_file(&path).unwrap_err().to_string();
    assert!(e.contains("line 1") && !e.contains(ADMIN), "{e}");
}
