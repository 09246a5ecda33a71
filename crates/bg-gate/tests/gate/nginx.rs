//! A real open-source nginx told of switches by `on_change`, with the
//! configuration and script of `docs/examples`: requests through it reach
//! the new colour after a switch, and none fails meanwhile.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bg_state::{Colour, SwitchRequest};
use bg_testkit::examples;
use bg_testkit::nginx::{Nginx, Prefix};
use bg_testkit::{free_port, http};

use super::view::wait_for;
use super::*;

/// An upstream that answers every request with its colour.
async fn upstream(colour: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(move || async move { colour });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Stops the load when dropped, also by a failing assertion: the runtime
/// would otherwise wait for the blocking load loop for ever.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One request through nginx: the body of a 200, or what went wrong.
type Outcome = Result<String, String>;

fn through(addr: SocketAddr) -> Outcome {
    match http::get(addr, "/") {
        Ok(a) if a.status == 200 => Ok(a.body),
        Ok(a) => Err(format!("status {}: {}", a.status, a.body)),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_follows_switches_without_a_failed_request() {
    let began = Instant::now();
    let lb = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prefix = Prefix::new(lb);
    let (blue, green) = (upstream("blue").await, upstream("green").await);

    // As the operations guide says: before nginx first starts, run the
    // script once by hand to write bg-live.conf. nginx is not running yet,
    // so its reload fails and the script exits 1 — with the file written.
    let by_hand = Command::new("sh")
        .arg(examples().join("nginx-on-change.sh"))
        .env("BG_ACTIVE", "blue")
        .envs(prefix.script_env(blue, green))
        .output()
        .unwrap();
    assert_eq!(
        by_hand.status.code(),
        Some(1),
        "the first run, before nginx runs: {}",
        String::from_utf8_lossy(&by_hand.stderr)
    );
    let live_file = prefix.live_file();
    assert!(live_file.exists(), "the first run wrote no bg-live.conf");
    let nginx = Nginx::start(prefix);
    let first = Instant::now();
    while through(lb) != Ok("blue".to_owned()) {
        assert!(
            first.elapsed() < Duration::from_secs(10),
            "nginx never served blue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The gate then pushes every change with the documented command.
    let store = memory_with(Colour::Blue).await;
    let mut cfg = config(Colour::Blue);
    cfg.on_change = Some(nginx.prefix.on_change(blue, green));
    let gate = Gate::new(Arc::clone(&store), cfg, auth()).unwrap();
    let _follower = gate.start();

    // Requests in a loop (one connection each) while the colours switch.
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_load = StopOnDrop(Arc::clone(&stop));
    let load = {
        let (outcomes, stop) = (Arc::clone(&outcomes), Arc::clone(&stop));
        tokio::task::spawn_blocking(move || {
            while !stop.load(Ordering::Relaxed) {
                let o = through(lb);
                outcomes.lock().unwrap().push(o);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let count = || outcomes.lock().unwrap().len();
    let mut timings = Vec::new();
    for (to, name) in [(Colour::Green, "green"), (Colour::Blue, "blue")] {
        let before = count();
        wait_for(|| count() >= before + 100).await;
        let from = count();
        store
            .switch(&app(), SwitchRequest::new(to, "t"))
            .await
            .unwrap();
        let switched = Instant::now();
        wait_for(|| {
            outcomes.lock().unwrap()[from..]
                .iter()
                .any(|o| o.as_deref() == Ok(name))
        })
        .await;
        let served_after = switched.elapsed();
        // Old workers finish the requests they hold, then stop accepting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let settled = count();
        wait_for(|| count() >= settled + 100).await;
        let after = outcomes.lock().unwrap()[settled..].to_vec();
        assert!(
            after.iter().all(|o| o.as_deref() == Ok(name)),
            "after the switch to {name} nginx still served: {:?}",
            after
                .iter()
                .filter(|o| o.as_deref() != Ok(name))
                .collect::<Vec<_>>()
        );
        let file = std::fs::read_to_string(&live_file).unwrap();
        let upstream_addr = if to == Colour::Green { green } else { blue };
        assert!(file.contains(&upstream_addr.to_string()), "{file}");
        timings.push((name, served_after));
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    let all = outcomes.lock().unwrap();
    let failed: Vec<_> = all.iter().filter(|o| o.is_err()).collect();
    let odd: Vec<_> = all
        .iter()
        .filter(|o| !matches!(o.as_deref(), Ok("blue" | "green") | Err(_)))
        .collect();
    eprintln!(
        "nginx: {} requests through two switches, {} failed; first answer from the new colour {:?}; test took {:?}",
        all.len(),
        failed.len(),
        timings,
        began.elapsed()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(odd.is_empty(), "unexpected answers: {odd:?}");
    drop(all);
    drop(nginx);
}
