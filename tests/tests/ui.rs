//! The status page in a real headless Chromium (Debian's `chromium`,
//! driven through `chromedriver`): two gates of one app on a real
//! redis-server, a deploy lease held, the page opened on the blue gate's
//! admin listener; a switch made through the green gate shows without a
//! reload, with its history entry. A screenshot is kept at
//! `target/ui/status.png`.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use bg_gate::{Auth, Gate, GateConfig, NamedToken};
use bg_state::{
    AppName, Colour, ColourStore, DeployPhase, DeployRecord, InitRequest, LeaseRequest, RedisStore,
};
use bg_testkit::{RedisServer, free_port, wait_for_port};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const TOKEN: &str = "ui-test-token-0123456789";
const HOLDER: &str = "release-job-42";
const REASON: &str = "release v2 to everyone";

/// chromedriver and the Chromium it starts, in a process group of their
/// own that is killed on drop, whatever happened; and the browser's
/// profile, removed after.
struct Browser {
    driver: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/test.sh installs it)");
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(20),
        );
        Browser {
            driver,
            port,
            profile: tempfile::tempdir().unwrap(),
        }
    }

    async fn session(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,1400",
                    format!("--user-data-dir={}", self.profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group's id is the driver's pid; Chromium is in it too.
        if let Some(group) = rustix::process::Pid::from_raw(self.driver.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.driver.wait();
    }
}

/// One gate of the app, its public and admin routes on listeners of their own.
struct Served {
    gate: Gate,
    public: SocketAddr,
    admin: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn listen(router: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(
            l,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    (addr, task)
}

async fn serve(redis: &RedisServer, colour: Colour, version: &str) -> Served {
    let store: Arc<dyn ColourStore> = Arc::new(RedisStore::open(&redis.url()).unwrap());
    let mut cfg = GateConfig::new(app(), colour, version);
    cfg.gate_id = format!("{colour}-1");
    cfg.handover = Duration::ZERO;
    cfg.presence_ttl = Duration::from_secs(3);
    let auth = Auth::with_tokens(vec![NamedToken::new("release-ci", TOKEN).unwrap()]).unwrap();
    let gate = Gate::new(store, cfg, auth).unwrap();
    let follower = gate.start();
    let (public, p) = listen(gate.public_router()).await;
    let (admin, a) = listen(gate.admin_router()).await;
    Served {
        gate,
        public,
        admin,
        tasks: vec![follower, p, a],
    }
}

fn app() -> AppName {
    AppName::new("chat").unwrap()
}

/// Waits up to 10 s for `check` to hold, reading the page each time.
async fn wait_for(
    browser: &Client,
    what: &str,
    mut check: impl AsyncFnMut(&Client) -> bool,
) -> Duration {
    let started = Instant::now();
    while !check(browser).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} not shown within 10 s: {}",
            browser.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    started.elapsed()
}

async fn text(browser: &Client, css: &str) -> String {
    match browser.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The cells of the history table's first row.
async fn newest_event(browser: &Client) -> Vec<String> {
    let Ok(cells) = browser
        .find_all(Locator::Css("#history tbody tr:first-child td"))
        .await
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in cells {
        out.push(c.text().await.unwrap_or_default());
    }
    out
}

fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("ui/status.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_follows_a_switch_made_through_another_gate() {
    let _serial = super::serial().await;
    let redis = RedisServer::start();
    let seed = RedisStore::open(&redis.url()).unwrap();
    seed.init(&app(), InitRequest::new(Colour::Blue, "ops").version("v1"))
        .await
        .unwrap();
    for phase in [DeployPhase::Deploying, DeployPhase::Deployed] {
        seed.record_deploy(
            &app(),
            DeployRecord::new(Colour::Green, "v2", phase, "release-ci"),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Taken as a gate records it for the pipeline's credential, which
    // alone may then switch under it.
    let lease = seed
        .acquire_lease(
            &app(),
            LeaseRequest::new(HOLDER, Duration::from_secs(120)).owner("token:release-ci"),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;

    let blue = serve(&redis, Colour::Blue, "v1").await;
    let green = serve(&redis, Colour::Green, "v2").await;
    // A websocket on blue, and each gate checked by a load balancer (this
    // test, from 127.0.0.1): the gates report both in their presence.
    let _ws = blue.gate.connections().track_websocket();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    for g in [&blue, &green] {
        http.get(format!("http://{}/balancer-keepalive-check", g.public))
            .send()
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reports = seed.presences(&app()).await.unwrap();
        if reports.len() == 2
            && reports
                .iter()
                .all(|p| p.lb_sources == ["127.0.0.1"] && p.applied_generation == 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "presence reports: {reports:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let browser = Browser::start();
    let page = browser.session().await;
    let url = format!("http://{}/bg/ui", blue.admin);
    page.goto(&url).await.unwrap();
    assert_eq!(
        page.execute("return document.title", vec![]).await.unwrap(),
        "chat: blue/green status"
    );
    assert_eq!(text(&page, "[data-bg-live]").await, "blue");
    assert_eq!(text(&page, "[data-bg-generation]").await, "1");
    assert_eq!(text(&page, "[data-bg-lease-holder]").await, HOLDER);
    assert_eq!(
        text(&page, "[data-bg-deployed=green]").await,
        "v2 (deployed)"
    );
    let gates = text(&page, "#gates").await;
    for shown in ["blue-1", "green-1", "127.0.0.1"] {
        assert!(gates.contains(shown), "{shown}: {gates}");
    }
    // The script ran and follows the stream: it says so.
    wait_for(&page, "the script following changes", async |p| {
        text(p, "#follow").await.starts_with("Following changes")
    })
    .await;
    // A marker the page would lose on a reload.
    page.execute("window.bgLoadedOnce = 'yes'", vec![])
        .await
        .unwrap();

    // The switch, through the green gate's store API, under the lease.
    let res = http
        .post(format!("http://{}/bg/api/v1/apps/chat/switch", green.admin))
        .bearer_auth(TOKEN)
        .json(&json!({"to": "green", "reason": REASON, "fence": lease.fence}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let took = wait_for(&page, "the switch", async |p| {
        text(p, "[data-bg-live]").await == "green"
    })
    .await;
    eprintln!("the page showed the switch {took:?} after it was made");
    assert_eq!(
        page.execute("return window.bgLoadedOnce", vec![])
            .await
            .unwrap(),
        "yes",
        "the page was reloaded"
    );
    assert_eq!(text(&page, "[data-bg-generation]").await, "2");
    // Told by the change stream, a long poll that answered (the page also
    // renders again every 5 s, which alone would be slower).
    let fetched = page
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            vec![],
        )
        .await
        .unwrap();
    let changes = format!("http://{}/bg/api/v1/apps/chat/changes?", blue.admin);
    assert!(
        fetched
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u.as_str().is_some_and(|u| u.starts_with(&changes))),
        "{fetched}"
    );
    wait_for(&page, "the switch in the history", async |p| {
        let row = newest_event(p).await;
        row.get(2).map(String::as_str) == Some("switch blue -> green")
    })
    .await;
    let row = newest_event(&page).await;
    assert_eq!(row[1], "2", "{row:?}");
    assert_eq!(row[3], "release-ci", "{row:?}");
    assert_eq!(row[4], REASON, "{row:?}");
    // Each colour's last live version: blue's from the init, green's now.
    assert_eq!(text(&page, "[data-bg-last-live=\"blue\"]").await, "v1");
    assert_eq!(text(&page, "[data-bg-last-live=\"green\"]").await, "v2");
    // Colour is not the only carrier of meaning: the word beside it.
    let live = text(&page, ".live").await;
    assert!(live.to_lowercase().contains("green live"), "{live}");

    // Holder and expiry only: the fence is nowhere on the page.
    assert_eq!(text(&page, "[data-bg-lease-holder]").await, HOLDER);
    let source = page.source().await.unwrap();
    assert!(!source.contains(&lease.fence.to_string()), "{source}");
    assert!(!source.to_lowercase().contains("fence"), "{source}");

    // Blue, idle now, moves its websocket to green: a drain, which moves
    // no generation, shows by the page's periodic refresh.
    blue.gate.drain(bg_gate::Pace::default(), None);
    wait_for(&page, "blue's drain", async |p| {
        text(p, "[data-bg-drain]")
            .await
            .starts_with("blue-1 (blue) is moving its websockets")
    })
    .await;

    let shot = screenshot_path();
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    std::fs::write(&shot, page.screenshot().await.unwrap()).unwrap();
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    page.close().await.unwrap();
}
