//! A real open-source nginx told of switches by `on_change`, with the
//! configuration and script of `docs/examples`: requests through it reach
//! the new colour after a switch, and none fails meanwhile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bg_state::{Colour, SwitchRequest};
use bg_testkit::{free_port, http, wait_for_port};

use super::view::wait_for;
use super::*;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples")
}

/// How to run nginx: Debian puts it in /usr/sbin, which not every PATH has.
fn nginx_bin() -> String {
    if Command::new("nginx").arg("-v").output().is_ok() {
        "nginx".to_owned()
    } else if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx".to_owned()
    } else {
        panic!(
            "nginx is not installed; the README's test command installs it (apt-get install -y nginx)"
        )
    }
}

/// Quotes a path for `sh`: temporary paths hold no single quote.
fn q(path: &Path) -> String {
    let s = path.to_str().unwrap();
    assert!(!s.contains('\''), "{s}");
    format!("'{s}'")
}

/// This test's own nginx, in the foreground under a temporary prefix;
/// stopped on drop, its logs printed if the test failed.
struct Nginx {
    child: Child,
    prefix: tempfile::TempDir,
}

impl Nginx {
    /// The example configuration under a new prefix, listening on `port`.
    fn prepare(port: u16) -> tempfile::TempDir {
        let prefix = tempfile::tempdir().unwrap();
        // Workers drop root for nobody; they must reach their temp paths.
        std::fs::set_permissions(
            prefix.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::create_dir(prefix.path().join("conf")).unwrap();
        std::fs::create_dir(prefix.path().join("logs")).unwrap();
        let example = std::fs::read_to_string(examples().join("nginx.conf")).unwrap();
        let mut listens = 0;
        let conf: String = example
            .lines()
            .map(|line| {
                if line.trim_start().starts_with("listen ") {
                    listens += 1;
                    format!("        listen 127.0.0.1:{port};\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        assert_eq!(listens, 1, "the example should listen once");
        std::fs::write(prefix.path().join("conf/nginx.conf"), conf).unwrap();
        prefix
    }

    fn conf(prefix: &Path) -> PathBuf {
        prefix.join("conf/nginx.conf")
    }

    fn start(bin: &str, prefix: tempfile::TempDir, port: u16) -> Nginx {
        let p = prefix.path();
        let stderr = std::fs::File::create(p.join("logs/stderr.log")).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(format!("{}/", p.display()))
            .arg("-c")
            .arg(Self::conf(p))
            .arg("-e")
            .arg(p.join("logs/error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nginx: {e}"));
        let nginx = Nginx { child, prefix };
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10),
        );
        nginx
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.prefix.path().join("logs").join(name)).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM lets the master stop its workers; KILL would leave them behind.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- nginx error log ---\n{}{}--- end of log ---",
                self.log("error.log"),
                self.log("stderr.log")
            );
        }
    }
}

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
    let bin = nginx_bin();
    let port = free_port();
    let lb = SocketAddr::from(([127, 0, 0, 1], port));
    let prefix = Nginx::prepare(port);
    let p = prefix.path().to_owned();
    let (blue, green) = (upstream("blue").await, upstream("green").await);

    // The gate pushes the live colour with the documented script.
    let store = memory_with(Colour::Blue).await;
    let mut cfg = config(Colour::Blue);
    cfg.on_change = Some(format!(
        "NGINX_BIN={bin} NGINX_PREFIX={prefix} NGINX_CONF={conf} \
         NGINX_BLUE={blue} NGINX_GREEN={green} sh {script}",
        bin = q(Path::new(&bin)),
        prefix = q(&PathBuf::from(format!("{}/", p.display()))),
        conf = q(&Nginx::conf(&p)),
        script = q(&examples().join("nginx-on-change.sh")),
    ));
    let gate = Gate::new(Arc::clone(&store), cfg, auth()).unwrap();
    let _follower = gate.start();

    // nginx is not running yet: the first push writes the upstream file and
    // fails to reload; nginx then starts from that file, and the gate retries.
    let live_file = p.join("conf/bg-live.conf");
    wait_for(|| live_file.exists()).await;
    let nginx = Nginx::start(&bin, prefix, port);
    let first = Instant::now();
    while through(lb) != Ok("blue".to_owned()) {
        assert!(
            first.elapsed() < Duration::from_secs(10),
            "nginx never served blue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

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
