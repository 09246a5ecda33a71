//! The status page, `GET /bg/ui`, read as a plain snapshot (no script
//! runs): what it shows of a real app, that store text is escaped, that
//! the lease's fence appears nowhere, its Content-Security-Policy, and
//! that it is served on the admin router only. The browser test that runs
//! its script is `tests/tests/ui.rs`.

use axum::http::{StatusCode, header};
use bg_state::{DeployPhase, DeployRecord, Lease, LeaseRequest, Presence, SwitchRequest};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const ACTOR: &str = "<b>ci</b>";
const REASON: &str = "release v2 & <script>alert(1)</script>";

/// Green deployed and switched to by an actor and for a reason that are
/// HTML, blue deploying `v3`, a lease held, and two gates' presence reports.
async fn release(store: &Arc<dyn ColourStore>) -> Lease {
    let app = app();
    for phase in [DeployPhase::Deploying, DeployPhase::Deployed] {
        store
            .record_deploy(&app, DeployRecord::new(Colour::Green, "v2", phase, "ci"))
            .await
            .unwrap();
    }
    store
        .switch(
            &app,
            SwitchRequest::new(Colour::Green, ACTOR).reason(REASON),
        )
        .await
        .unwrap();
    store
        .record_deploy(
            &app,
            DeployRecord::new(Colour::Blue, "v3", DeployPhase::Deploying, "ci"),
        )
        .await
        .unwrap();
    // Stores draw fences from their clock: the lease is taken at a moment
    // no other time on the page shows, so its fence is told apart.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let lease = store
        .acquire_lease(&app, LeaseRequest::new("job-<42>", Duration::from_secs(60)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut green = Presence::new("gate-g1", Colour::Green, "v2", 2);
    green.view_age_ms = Some(40);
    green.websockets = Some(7);
    green.lb_sources = vec!["10.9.8.7".to_owned()];
    let mut blue = Presence::new("gate-b1", Colour::Blue, "v1", 2);
    blue.websockets = Some(3);
    blue.draining = true;
    for p in [green, blue] {
        store
            .report_presence(&app, p, Duration::from_secs(60))
            .await
            .unwrap();
    }
    lease
}

/// The text of the first element carrying `attribute`.
fn text_of<'a>(body: &'a str, attribute: &str) -> &'a str {
    let at = body
        .find(attribute)
        .unwrap_or_else(|| panic!("no element with {attribute}: {body}"));
    let start = at + body[at..].find('>').unwrap() + 1;
    let end = start + body[start..].find('<').unwrap();
    &body[start..end]
}

/// The text between `open` and `close`, which must each appear once.
fn between<'a>(body: &'a str, open: &str, close: &str) -> &'a str {
    assert_eq!(body.matches(open).count(), 1, "{open} once: {body}");
    let start = body.find(open).unwrap() + open.len();
    let end = start + body[start..].find(close).unwrap();
    &body[start..end]
}

/// Standard base64 with padding, as CSP hashes are written.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn csp_hash(text: &str) -> String {
    format!("'sha256-{}'", base64(&Sha256::digest(text.as_bytes())))
}

#[tokio::test]
async fn the_page_is_a_readable_snapshot_of_the_app() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        let lease = release(&store).await;
        let g = gate(&store, config(Colour::Blue)).await;
        let a = get(&g.admin_router(), "/bg/ui").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(
            a.headers[header::CONTENT_TYPE],
            "text/html; charset=utf-8",
            "{:?}",
            a.headers
        );
        let body = &a.body;

        // Which colour is live, in words and not by colour alone.
        assert_eq!(text_of(body, "data-bg-live"), "green");
        assert!(body.contains(">live<"), "{body}");
        assert_eq!(text_of(body, "data-bg-generation"), "2");
        // Each colour's deployed and last-live version.
        assert_eq!(text_of(body, "data-bg-deployed=\"green\""), "v2 (deployed)");
        assert_eq!(text_of(body, "data-bg-deployed=\"blue\""), "v3 (deploying)");
        assert_eq!(text_of(body, "data-bg-last-live=\"green\""), "v2");
        // The gates' reports: colour, version, view age, websockets, sources.
        for shown in ["gate-g1", "gate-b1", "10.9.8.7", ">7<", ">3<", "40 ms"] {
            assert!(body.contains(shown), "{shown} not shown: {body}");
        }
        // The drain blue reports.
        assert!(text_of(body, "data-bg-drain").contains("gate-b1"), "{body}");
        // The lease: its holder, escaped, and when it lapses; never its fence.
        assert_eq!(text_of(body, "data-bg-lease-holder"), "job-&lt;42&gt;");
        assert!(
            text_of(body, "data-bg-lease-expires")
                .contains(&bg_state::format_millis(lease.expires_at_ms)[..16]),
            "{body}"
        );
        assert!(!body.contains(&lease.fence.to_string()), "{body}");
        assert!(!body.to_lowercase().contains("fence"), "{body}");

        // History: a table, newest first, actor and reason escaped.
        let history = between(body, "<table id=\"history\"", "</table>");
        assert!(
            history.contains("<th scope=\"col\">Actor</th>"),
            "{history}"
        );
        assert_eq!(history.matches("<tr").count(), 1 + 5, "{history}");
        assert!(
            history.contains("&lt;b&gt;ci&lt;/b&gt;")
                && history.contains("release v2 &amp; &lt;script&gt;alert(1)&lt;/script&gt;")
                && history.contains("switch blue -&gt; green"),
            "{history}"
        );
        assert!(
            !body.contains(ACTOR) && !body.contains("<script>alert"),
            "{body}"
        );

        // Headings a reader can navigate by.
        for h in [
            "<h1",
            "<h2>Live colour</h2>",
            "<h2>History</h2>",
            "<h2>Gates</h2>",
        ] {
            assert!(body.contains(h), "{h}: {body}");
        }
    }
}

#[tokio::test]
async fn the_page_names_its_one_script_and_style_in_a_strict_policy() {
    let store = memory_with(Colour::Blue).await;
    let g = gate(&store, config(Colour::Blue)).await;
    let a = get(&g.admin_router(), "/bg/ui").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let csp = a.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    let script = between(&a.body, "<script>", "</script>");
    let style = between(&a.body, "<style>", "</style>");
    for part in [
        "default-src 'none'".to_owned(),
        format!("script-src {}", csp_hash(script)),
        format!("style-src {}", csp_hash(style)),
        "connect-src 'self'".to_owned(),
        "base-uri 'none'".to_owned(),
        "form-action 'none'".to_owned(),
        "frame-ancestors 'none'".to_owned(),
    ] {
        assert!(
            csp.split(';').any(|d| d.trim() == part),
            "{part:?} not in {csp}"
        );
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    // Nothing from elsewhere: no linked file, no script or image source.
    for asset in [
        "<link", " src=", "<img", "url(", "@import", "http://", "https://",
    ] {
        assert!(!a.body.contains(asset), "{asset}: {}", a.body);
    }
    // Only read routes: the script never writes, never asks for a token.
    for write in ["POST", "Authorization", "/switch", "token"] {
        assert!(!script.contains(write), "{write}: {script}");
    }
    assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(a.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
}

#[tokio::test]
async fn the_page_and_its_data_are_on_the_admin_router_only() {
    let store = memory_with(Colour::Blue).await;
    let g = gate(&store, config(Colour::Green)).await;
    for path in ["/bg/ui", "/bg/ui/data"] {
        assert_eq!(get(&g.admin_router(), path).await.status, StatusCode::OK);
        assert_eq!(
            get(&g.public_router(), path).await.status,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn the_page_data_is_what_the_page_shows_without_the_fence() {
    let store = memory_with(Colour::Blue).await;
    let lease = release(&store).await;
    let g = gate(&store, config(Colour::Blue)).await;
    let a = get(&g.admin_router(), "/bg/ui/data").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let v = a.json();
    assert_eq!(v["app"], "chat");
    assert_eq!(v["state"]["active"], "green");
    assert_eq!(v["state"]["generation"], 2);
    assert_eq!(
        v["follow"], 2,
        "the generation the change stream starts from"
    );
    assert_eq!(v["lease"]["holder"], "job-<42>");
    assert_eq!(v["lease"]["expires_at_ms"], lease.expires_at_ms);
    assert_eq!(v["history"].as_array().unwrap().len(), 5);
    // Newest first: blue's deploy record, then the switch.
    assert_eq!(v["history"][0]["what"], "deploying v3 on blue");
    assert_eq!(v["history"][1]["what"], "switch blue -> green");
    assert_eq!(v["history"][1]["actor"], ACTOR);
    assert_eq!(v["history"][1]["reason"], REASON);
    assert_eq!(v["gates"].as_array().unwrap().len(), 2);
    assert!(!a.body.contains(&lease.fence.to_string()), "{}", a.body);
    assert!(!a.body.contains("fence"), "{}", a.body);
    assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");

    // A broken lease is in the history by its holder, not its fence.
    store
        .break_lease(
            &app(),
            bg_state::BreakLease {
                actor: "admin".to_owned(),
                reason: None,
            },
        )
        .await
        .unwrap();
    for path in ["/bg/ui/data", "/bg/ui"] {
        let a = get(&g.admin_router(), path).await;
        assert!(a.body.contains("lease of job-"), "{}", a.body);
        assert!(!a.body.contains(&lease.fence.to_string()), "{}", a.body);
    }
}

#[tokio::test]
async fn the_history_shows_the_last_twenty_events() {
    let store = memory_with(Colour::Blue).await;
    let mut to = Colour::Green;
    for i in 0..25 {
        store
            .switch(
                &app(),
                SwitchRequest::new(to, "ci").reason(format!("switch number {i}")),
            )
            .await
            .unwrap();
        to = to.other();
    }
    let g = gate(&store, config(Colour::Blue)).await;
    let a = get(&g.admin_router(), "/bg/ui").await;
    let history = between(&a.body, "<table id=\"history\"", "</table>");
    assert_eq!(history.matches("<tr").count(), 1 + 20, "{history}");
    assert!(history.contains("switch number 24"), "{history}");
    assert!(!history.contains("switch number 4<"), "{history}");
    assert_eq!(text_of(&a.body, "data-bg-generation"), "26");
}

#[tokio::test]
async fn an_app_without_state_says_so() {
    let store = bg_state::open("memory://").unwrap();
    let g = gate(&store, config(Colour::Blue)).await;
    let a = get(&g.admin_router(), "/bg/ui").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(text_of(&a.body, "data-bg-live"), "none");
    assert!(a.body.contains("not initialised"), "{}", a.body);
    let v = get(&g.admin_router(), "/bg/ui/data").await.json();
    assert!(v["state"].is_null(), "{v}");
    assert_eq!(v["follow"], 0);
}

/// What the page shows of a gate comes from the gate's own presence
/// report: its view's age, its websockets, its drain and the sources that
/// probed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_reports_its_websockets_drain_and_load_balancers() {
    let store = memory_with(Colour::Blue).await;
    let mut cfg = config(Colour::Green);
    cfg.gate_id = "green-1".to_owned();
    cfg.presence_ttl = Duration::from_millis(150);
    let g = gate(&store, cfg).await;
    let _follower = g.start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let public = g.public_router::<()>();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            public.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let lb: std::net::IpAddr = [127, 0, 0, 3].into();
    // A health check from the load balancer's address, which green, idle,
    // answers STOP.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(lb, 0)).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(b"GET /balancer-keepalive-check HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let _ws = [
        g.connections().track_websocket(),
        g.connections().track_websocket(),
    ];
    // A drain of the idle colour with no end of its own: it goes on until
    // green is live again.
    g.drain(bg_gate::Pace::default(), None);

    let reported = || async {
        store
            .presences(&app())
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.gate_id == "green-1")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let p = loop {
        if let Some(p) = reported().await
            && p.draining
            && p.lb_sources == ["127.0.0.3"]
        {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no report of the drain and the probe: {:?}",
            reported().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(p.view_age_ms.is_some(), "{p:?}");
    // Asked to close, the two are still open until their clients go.
    assert_eq!(p.websockets, Some(2), "{p:?}");
    let page = get(&g.admin_router(), "/bg/ui").await.body;
    assert!(
        text_of(&page, "data-bg-drain").contains("green-1 (green) is moving"),
        "{page}"
    );
    server.abort();
}

/// A store that does not answer: the page says so (503) instead of showing
/// an empty app, and the data is the API's error body.
#[tokio::test]
async fn a_store_outage_is_said_not_shown_as_an_empty_app() {
    use bg_state::{Error, MockColourStore};
    let down = || Error::Unavailable {
        backend: "redis",
        message: "connection refused".into(),
        retryable: true,
    };
    let mut mock = MockColourStore::new();
    mock.expect_backend().return_const("redis");
    mock.expect_get().returning(move |_| Err(down()));
    mock.expect_presences().returning(move |_| Err(down()));
    mock.expect_lease().returning(move |_| Err(down()));
    mock.expect_history().returning(move |_, _| Err(down()));
    let mock: Arc<dyn ColourStore> = Arc::new(mock);
    let g = gate(&mock, config(Colour::Blue)).await;
    let a = get(&g.admin_router(), "/bg/ui").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert!(
        a.body.contains("The store did not answer") && a.body.contains("connection refused"),
        "{}",
        a.body
    );
    assert!(!a.body.contains("data-bg-live"), "{}", a.body);
    let a = get(&g.admin_router(), "/bg/ui/data").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.json()["kind"], "unavailable");
}
