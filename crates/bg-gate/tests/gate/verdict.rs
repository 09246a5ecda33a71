//! One verdict for every front end: an agent query is counted and logged
//! as an HTTP health check is, and the health route, the agent,
//! `/bg/state`, `/metrics` and the push model agree in every state.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::extract::ConnectInfo;
use bg_gate::{ServiceConfig, VerdictKind};
use bg_state::{Colour, SwitchRequest};

use super::on_change::{lines, q};
use super::sidecar::{Service, service, sidecar_config};
use super::view::{agent_line, wait_for};
use super::*;

/// A health check over HTTP from `from`, as the gate's server loop hands
/// it over (with the peer's address).
async fn get_from(router: &Router, uri: &str, from: SocketAddr) -> Answer {
    let mut req = Request::builder().uri(uri).body(Body::empty()).unwrap();
    req.extensions_mut().insert(ConnectInfo(from));
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

/// The sum of the `bg_gate_answers_total` samples for `answer`, whatever
/// their other labels.
fn answers(metrics: &str, answer: &str) -> u64 {
    let label = format!("answer=\"{answer}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("bg_gate_answers_total{") && l.contains(&label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A sidecar gate whose service never answers: it stays down.
fn down_config(colour: Colour) -> GateConfig {
    let mut cfg = config(colour);
    cfg.service = Some(ServiceConfig::new("http://127.0.0.1:9"));
    cfg
}

#[tokio::test]
async fn an_agent_answer_is_counted_and_logged_as_an_http_answer_is() {
    let store = memory_with(Colour::Blue).await;
    let lb: SocketAddr = ([127, 0, 0, 1], 40_000).into();
    for (cfg, word, agent) in [
        (config(Colour::Blue), "ok", "ready\n"),
        (config(Colour::Green), "stop", "drain\n"),
        (down_config(Colour::Blue), "down", "down\n"),
    ] {
        let g = gate(&store, cfg).await;
        let r = router(&g);
        get_from(&r, "/balancer-keepalive-check", lb).await;
        assert_eq!(agent_line(&g).await, agent);

        let m = get(&r, "/metrics").await.body;
        assert_eq!(answers(&m, word), 2, "{word}: both answers counted\n{m}");
        for via in ["http", "agent"] {
            let line = format!("bg_gate_answers_total{{answer=\"{word}\",via=\"{via}\"}} 1");
            assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
        }
        let probes = g.status().probes;
        assert_eq!(probes.len(), 2, "{probes:?}");
        let seen: Vec<_> = probes
            .iter()
            .map(|p| (p.source, p.colour, p.answer))
            .collect();
        assert_eq!(seen[0], seen[1], "logged alike: {probes:?}");
        assert_eq!(seen[0].0, Some(lb.ip()));
    }
}

/// What every front end shows of a blue sidecar gate whose verdict is
/// `kind`: its health route, its agent, `/bg/state`, `/metrics`.
async fn shows(g: &Gate, r: &Router, kind: VerdictKind) {
    let verdict = g.verdict(Colour::Blue);
    assert_eq!(verdict.kind(), kind);
    let (code, body, agent) = match kind {
        VerdictKind::Ok | VerdictKind::Handover => (StatusCode::OK, "OK", "up ready\n"),
        VerdictKind::Stop => (StatusCode::SERVICE_UNAVAILABLE, "STOP", "up drain\n"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "DOWN", "down\n"),
    };
    let health = get(r, "/balancer-keepalive-check").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (code, body),
        "{kind:?}"
    );
    assert_eq!(agent_line(g).await, agent, "{kind:?}");
    assert_eq!(status(r).await.live, verdict.is_ok(), "{kind:?}");
    let live = format!("bg_gate_live {}", u8::from(verdict.is_ok()));
    let m = get(r, "/metrics").await.body;
    assert!(m.lines().any(|l| l == live), "{kind:?}: {live:?} in\n{m}");
}

/// The push model sends traffic to the colour whose verdict is `Ok`, and
/// to no other: not to this gate's own live colour while its service is
/// down, not to a colour in its handover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_front_end_and_the_push_model_follow_one_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pushed");
    let svc = Arc::new(Service::default());
    let addr = service(Arc::clone(&svc)).await;
    let store = memory_with(Colour::Blue).await;
    let mut cfg = sidecar_config(Colour::Blue, addr);
    cfg.handover = Duration::from_secs(3);
    cfg.on_change = Some(format!("echo \"$BG_ACTIVE\" >> {}", q(&out)));
    let g = gate(&store, cfg).await;
    let r = router(&g);
    let _follower = g.start();

    // Blue is live in the store, but its service is down: nobody is sent
    // to it, pushed or asked.
    shows(&g, &r, VerdictKind::Down).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(lines(&out).is_empty(), "{:?}", lines(&out));

    svc.healthy.store(true, Ordering::SeqCst);
    wait_for(|| g.service_up()).await;
    shows(&g, &r, VerdictKind::Ok).await;
    wait_for(|| lines(&out) == ["blue"]).await;

    // Switched: blue hands over, green takes the push at once.
    store
        .switch(&app(), SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    g.refresh().await;
    shows(&g, &r, VerdictKind::Handover).await;
    assert_eq!(g.verdict(Colour::Green).kind(), VerdictKind::Ok);
    wait_for(|| lines(&out) == ["blue", "green"]).await;

    wait_for(|| g.verdict(Colour::Blue).kind() == VerdictKind::Stop).await;
    shows(&g, &r, VerdictKind::Stop).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lines(&out), ["blue", "green"]);
}
