//! The deploy lease's fence is its holder's secret (SPEC §8.2), with two
//! `bg-gate` processes on one Redis and two pipelines holding `ci` tokens:
//! pipeline A takes the lease through one gate; nobody else sees its fence;
//! pipeline B, even knowing it, can neither use it nor release A's lease
//! through the other gate; A can, and an admin can break it.

use std::net::SocketAddr;
use std::process::Command;

use bg_state::conformance::shows_fence;
use bg_testkit::{Process, RedisServer, free_port, http, wait_for_port};

const A: &str = "pipeline-a-token-0123456789";
const B: &str = "pipeline-b-token-0123456789";
const OPS: &str = "ops-admin-token-0123456789";

fn start_gate(
    redis: &RedisServer,
    colour: &str,
    tokens: &std::path::Path,
) -> (Process, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bg-gate"));
    cmd.args(["--colour", colour, "--store", &redis.url(), "--app", "chat"])
        .args(["--listen", &addr.to_string(), "--service-version", "v1"])
        .args(["--init", "blue", "--handover", "0s"])
        .arg("--token-file")
        .arg(tokens)
        .env("RUST_LOG", "debug");
    let p = Process::spawn(&format!("bg-gate {colour}"), cmd);
    wait_for_port(addr, std::time::Duration::from_secs(20));
    (p, addr)
}

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> http::Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    http::request(addr, method, path, &headers, body).unwrap()
}

fn json(a: &http::Answer) -> serde_json::Value {
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{e}: {}", a.body))
}

const LEASE: &str = "/bg/api/v1/apps/chat/lease";

#[test]
fn the_lease_fence_is_its_holders_secret() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("pipeline-a {A} ci\npipeline-b {B} ci\nops {OPS} admin\n"),
    )
    .unwrap();
    let (p1, gate1) = start_gate(&redis, "blue", &tokens);
    let (p2, gate2) = start_gate(&redis, "green", &tokens);

    // Pipeline A takes the lease through gate 1, and is told its fence.
    let taken = call(
        gate1,
        "POST",
        LEASE,
        Some(A),
        r#"{"holder":"job-a","ttl_ms":60000}"#,
    );
    assert_eq!(taken.status, 200, "{}", taken.body);
    let fence = json(&taken)["lease"]["fence"]
        .as_u64()
        .unwrap_or_else(|| panic!("the holder was not told its fence: {}", taken.body));
    let secret = |what: &str, a: &http::Answer| {
        assert!(
            !shows_fence(&a.body, fence),
            "{what} shows A's fence {fence}: {} {}",
            a.status,
            a.body
        );
    };

    // Nobody else sees it: an unauthenticated read on either gate, B's read.
    for (gate, token) in [(gate1, None), (gate2, None), (gate2, Some(B))] {
        let read = call(gate, "GET", LEASE, token, "");
        assert_eq!(read.status, 200, "{}", read.body);
        assert_eq!(json(&read)["lease"]["holder"], "job-a", "{}", read.body);
        assert!(
            json(&read)["lease"]["expires_at_ms"].is_u64(),
            "{}",
            read.body
        );
        secret("a read of the lease by another caller", &read);
    }
    // Its holder, and an admin, read it back.
    for token in [A, OPS] {
        let read = call(gate2, "GET", LEASE, Some(token), "");
        assert_eq!(
            json(&read)["lease"]["fence"].as_u64(),
            Some(fence),
            "{}",
            read.body
        );
    }

    // B's refusals name the holder, not the fence, even when B claims A's
    // holder name to re-acquire it.
    for holder in ["job-b", "job-a"] {
        let refused = call(
            gate2,
            "POST",
            LEASE,
            Some(B),
            &format!(r#"{{"holder":"{holder}","ttl_ms":60000}}"#),
        );
        assert_eq!(refused.status, 409, "{holder}: {}", refused.body);
        assert_eq!(json(&refused)["kind"], "lease_held");
        assert_eq!(json(&refused)["holder"], "job-a");
        secret("B's lease_held refusal", &refused);
    }
    let refused = call(
        gate2,
        "POST",
        "/bg/api/v1/apps/chat/switch",
        Some(B),
        r#"{"to":"green"}"#,
    );
    assert_eq!(refused.status, 409, "{}", refused.body);
    secret("B's refused switch", &refused);

    // B learns the fence anyway: every act under it is refused, at the
    // other gate too, and nothing changes.
    let state = |gate| call(gate, "GET", "/bg/api/v1/apps/chat/state", None, "").body;
    let lease_as_admin = |gate| call(gate, "GET", LEASE, Some(OPS), "").body;
    let before = (state(gate2), lease_as_admin(gate2));
    for (path, body) in [
        ("switch", format!(r#"{{"to":"green","fence":{fence}}}"#)),
        (
            "deploys",
            format!(r#"{{"colour":"green","version":"v2","phase":"deploying","fence":{fence}}}"#),
        ),
        (
            "lease/renew",
            format!(r#"{{"fence":{fence},"ttl_ms":60000}}"#),
        ),
        ("lease/release", format!(r#"{{"fence":{fence}}}"#)),
    ] {
        for gate in [gate2, gate1] {
            let path = format!("/bg/api/v1/apps/chat/{path}");
            let refused = call(gate, "POST", &path, Some(B), &body);
            assert_eq!(refused.status, 403, "{path}: {}", refused.body);
            assert_eq!(json(&refused)["kind"], "forbidden", "{path}");
            assert!(
                json(&refused)["message"]
                    .as_str()
                    .unwrap()
                    .contains("another credential"),
                "{path}: {}",
                refused.body
            );
        }
    }
    assert_eq!(
        (state(gate2), lease_as_admin(gate2)),
        before,
        "a refusal changed something"
    );

    // A uses it through the other gate: a deploy record, a switch (not
    // forced), a renewal.
    let deployed = call(
        gate2,
        "POST",
        "/bg/api/v1/apps/chat/deploys",
        Some(A),
        &format!(r#"{{"colour":"green","version":"v2","phase":"deploying","fence":{fence}}}"#),
    );
    assert_eq!(deployed.status, 200, "{}", deployed.body);
    let switched = call(
        gate2,
        "POST",
        "/bg/api/v1/apps/chat/switch",
        Some(A),
        &format!(r#"{{"to":"green","fence":{fence}}}"#),
    );
    assert_eq!(switched.status, 200, "{}", switched.body);
    let out = json(&switched);
    assert_eq!(out["changed"], true, "{}", switched.body);
    assert_eq!(out["state"]["last_change"]["forced"], false);
    assert_eq!(out["state"]["last_change"]["actor"], "pipeline-a");
    secret("the switch's answer", &switched);
    let renewed = call(
        gate1,
        "POST",
        "/bg/api/v1/apps/chat/lease/renew",
        Some(A),
        &format!(r#"{{"fence":{fence},"ttl_ms":60000}}"#),
    );
    assert_eq!(renewed.status, 200, "{}", renewed.body);

    // The lease is still held, and its fence shows in nothing anyone reads.
    for gate in [gate1, gate2] {
        for path in [
            "/bg/api/v1/apps/chat/state",
            "/bg/api/v1/apps/chat/history",
            "/bg/api/v1/apps/chat/lease",
            "/bg/api/v1/apps/chat/presence",
            "/bg/state",
            "/metrics",
        ] {
            let read = call(gate, "GET", path, None, "");
            assert_eq!(read.status, 200, "{path}: {}", read.body);
            secret(path, &read);
        }
    }
    let conflict = call(
        gate1,
        "POST",
        "/bg/api/v1/apps/chat/switch",
        Some(B),
        r#"{"to":"blue","expect_generation":1}"#,
    );
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    secret("B's conflict", &conflict);

    // An admin breaks it; B may then take a lease of its own.
    let broken = call(
        gate2,
        "POST",
        "/bg/api/v1/apps/chat/lease/break",
        Some(OPS),
        r#"{"reason":"stuck"}"#,
    );
    assert_eq!(broken.status, 200, "{}", broken.body);
    assert_eq!(json(&broken)["lease"]["holder"], "job-a");
    let read = call(gate1, "GET", LEASE, None, "");
    assert_eq!(
        json(&read)["lease"],
        serde_json::Value::Null,
        "{}",
        read.body
    );
    let b = call(
        gate1,
        "POST",
        LEASE,
        Some(B),
        r#"{"holder":"job-b","ttl_ms":60000}"#,
    );
    assert_eq!(b.status, 200, "{}", b.body);
    let b_fence = json(&b)["lease"]["fence"].as_u64().unwrap();
    assert_ne!(b_fence, fence);

    // Neither gate logged a fence.
    for p in [&p1, &p2] {
        let log = p.output();
        for f in [fence, b_fence] {
            assert!(!shows_fence(&log, f), "a gate logged the fence {f}: {log}");
        }
    }
}
