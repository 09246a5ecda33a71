//! Support shared by the end-to-end tests (`tests/`) and the benchmark
//! (`bg-bench`): an instance process that a webhook can restart with another
//! version, the webhook receiver that does it, and `bg-ctl` with the
//! environment a CI job would give it.
//!
//! Servers and processes come from `bg_testkit`, so everything started here
//! is stopped on drop.
//!
//! [`wsload`] is the websocket load generator behind `bg-wsload`: many
//! clients through one address, counting moves, cuts and connect failures.

pub mod wsload;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use bg_state::wire::GateStatus;
use bg_testkit::{Process, free_port, http, wait_for_port, workspace_binary};

/// A loopback address with a port nobody listened on a moment ago.
///
/// # Panics
/// If the kernel hands out no port.
#[must_use]
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// What the gate at `addr` reports at `GET /bg/state`, or `None` while it
/// does not answer (or answers an error, as a gate shutting down may).
/// Reading it is not a health check: the gate does not log it as a load
/// balancer's probe.
///
/// # Panics
/// On a `200` whose body is not a [`GateStatus`]: the gate and its readers
/// disagree on the contract.
#[must_use]
pub fn gate_status(addr: SocketAddr) -> Option<GateStatus> {
    let a = http::get(addr, "/bg/state").ok()?;
    if a.status != 200 {
        return None;
    }
    Some(serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("GET /bg/state: {e}: {}", a.body)))
}

/// How an instance is stopped before it restarts.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// At once (SIGKILL).
    Kill,
    /// As a container runtime would: SIGTERM, this grace period, then SIGKILL.
    Graceful(Duration),
}

/// One colour's instance — a `bg-gate` or a service embedding the gate —
/// restartable with another version on the same address, as a webhook
/// restarts a container.
#[derive(Debug)]
pub struct Instance {
    /// `blue` or `green`.
    pub colour: String,
    /// Its name among the instances: the colour, or `blue-2` and the like
    /// when a colour has several.
    pub name: String,
    /// Where it listens (`--listen`).
    pub addr: SocketAddr,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stop: Stop,
    process: Option<Process>,
}

impl Instance {
    /// An instance of `program` for `colour` on `store`'s `app`, with blue
    /// live on a new store (`--init blue`). Nothing runs until
    /// [`restart`](Self::restart).
    pub fn new(program: PathBuf, colour: &str, store: &str, app: &str) -> Self {
        Instance {
            colour: colour.to_owned(),
            name: colour.to_owned(),
            addr: loopback(),
            program,
            args: ["--colour", colour, "--store", store, "--app", app]
                .into_iter()
                .chain(["--init", "blue"])
                .map(str::to_owned)
                .collect(),
            env: vec![("RUST_LOG".into(), "warn".into())],
            stop: Stop::Kill,
            process: None,
        }
    }

    /// A service that is not a gate — `program` with `args` and `--colour
    /// COLOUR`, given `--listen` and `--service-version` on each start, as
    /// the Node.js example takes them. Nothing runs until
    /// [`restart`](Self::restart).
    pub fn process(program: impl Into<PathBuf>, colour: &str, args: &[&str]) -> Self {
        Instance {
            colour: colour.to_owned(),
            name: colour.to_owned(),
            addr: loopback(),
            program: program.into(),
            args: args
                .iter()
                .map(|a| (*a).to_owned())
                .chain(["--colour".to_owned(), colour.to_owned()])
                .collect(),
            env: Vec::new(),
            stop: Stop::Kill,
            process: None,
        }
    }

    /// Named `name` among the instances (one of several of its colour).
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Listens on `addr` instead of a free port of its own.
    #[must_use]
    pub fn at(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// The running process's id, if one runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::id)
    }

    /// Kills the running process at once, as a crash would.
    pub fn kill(&mut self) {
        drop(self.process.take());
    }

    /// Listens on `ip` (a loopback address such as `127.0.0.11`, so that
    /// several instances can share a port number, as hosts do) instead of
    /// `127.0.0.1`.
    #[must_use]
    pub fn on(mut self, ip: [u8; 4]) -> Self {
        self.addr = SocketAddr::from((ip, free_port()));
        self
    }

    /// More options for every start.
    #[must_use]
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// An environment variable for every start.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// How the running process is stopped before a restart (default: kill).
    #[must_use]
    pub fn stop(mut self, stop: Stop) -> Self {
        self.stop = stop;
        self
    }

    /// Stops the running process, if any, and starts one with `version`
    /// (`--service-version`), returning once it listens.
    ///
    /// # Panics
    /// If it does not listen within 20 s.
    pub fn restart(&mut self, version: &str) {
        if let Some(p) = self.process.take() {
            match self.stop {
                Stop::Kill => drop(p), // killed and reaped on drop
                Stop::Graceful(grace) => p.stop_gracefully(grace),
            }
        }
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .args(["--listen", &self.addr.to_string()])
            .args(["--service-version", version])
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let name = format!(
            "{} {}",
            self.program
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            self.name
        );
        self.process = Some(Process::spawn(&name, cmd));
        wait_for_port(self.addr, Duration::from_secs(20));
    }

    /// [`restart`](Self::restart)ed with `version`: the first start.
    #[must_use]
    pub fn started(mut self, version: &str) -> Self {
        self.restart(version);
        self
    }

    /// `http://ADDR`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The instances by name, shared with the webhook receiver.
pub type Instances = Arc<Mutex<BTreeMap<String, Instance>>>;

/// Puts started instances in the shared map the webhook receiver restarts.
#[must_use]
pub fn instances(all: impl IntoIterator<Item = Instance>) -> Instances {
    Arc::new(Mutex::new(
        all.into_iter().map(|i| (i.name.clone(), i)).collect(),
    ))
}

/// The address of the instance named `name` (its colour, when it is the
/// colour's only one).
///
/// # Panics
/// If there is no such instance.
#[must_use]
pub fn addr_of(instances: &Instances, name: &str) -> SocketAddr {
    lock(instances)[name].addr
}

/// The addresses of every instance of `colour`, in name order.
#[must_use]
pub fn addrs_of(instances: &Instances, colour: &str) -> Vec<SocketAddr> {
    lock(instances)
        .values()
        .filter(|i| i.colour == colour)
        .map(|i| i.addr)
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A stand-in for Portainer's service webhooks: `POST /hook/{colour}?tag=V`
/// answers `204` at once and restarts that colour's instances (one after
/// another, as a rolling service update does) with version `V` in the
/// background — unless the colour was [`break_colour`]ed, when it
/// answers `204` and deploys nothing.
///
/// [`break_colour`]: Webhooks::break_colour
#[derive(Debug, Clone)]
pub struct Webhooks {
    /// Where it listens.
    pub addr: SocketAddr,
    broken: Arc<Mutex<BTreeSet<String>>>,
    restarts: Arc<Mutex<Vec<Duration>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct HookState {
    instances: Instances,
    delay: Duration,
    broken: Arc<Mutex<BTreeSet<String>>>,
    restarts: Arc<Mutex<Vec<Duration>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Webhooks {
    /// Serves the receiver on a free loopback port for as long as the
    /// runtime runs; each restart starts `delay` after the hook answered.
    ///
    /// # Panics
    /// If it cannot listen.
    pub async fn serve(instances: Instances, delay: Duration) -> Webhooks {
        let broken = Arc::new(Mutex::new(BTreeSet::new()));
        let restarts = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let app = Router::new()
            .route("/hook/{colour}", post(hook))
            .with_state(HookState {
                instances,
                delay,
                broken: Arc::clone(&broken),
                restarts: Arc::clone(&restarts),
                calls: Arc::clone(&calls),
            });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Webhooks {
            addr,
            broken,
            restarts,
            calls,
        }
    }

    /// The hook URL for `colour`.
    #[must_use]
    pub fn url(&self, colour: &str) -> String {
        format!("http://{}/hook/{colour}", self.addr)
    }

    /// From now on `colour`'s hook answers 204 and deploys nothing.
    pub fn break_colour(&self, colour: &str) {
        lock(&self.broken).insert(colour.to_owned());
    }

    /// Every hook deploys again.
    pub fn mend(&self) {
        lock(&self.broken).clear();
    }

    /// The colours whose hook was called, in order, broken or not.
    #[must_use]
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// How long each restart took, from the hook to the new process
    /// listening, in the order they finished.
    #[must_use]
    pub fn restart_times(&self) -> Vec<Duration> {
        lock(&self.restarts).clone()
    }
}

async fn hook(
    State(s): State<HookState>,
    Path(colour): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> StatusCode {
    lock(&s.calls).push(colour.clone());
    if lock(&s.broken).contains(&colour) {
        return StatusCode::NO_CONTENT;
    }
    let version = q.get("tag").cloned().unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        std::thread::sleep(s.delay);
        let t = Instant::now();
        let mut restarted = false;
        for i in lock(&s.instances)
            .values_mut()
            .filter(|i| i.colour == colour)
        {
            i.restart(&version);
            restarted = true;
        }
        if restarted {
            lock(&s.restarts).push(t.elapsed());
        }
    });
    StatusCode::NO_CONTENT
}

/// `bg-ctl` with the environment a GitLab job would give it: the store, the
/// app, a token, both colours' gates and webhooks. No flags needed.
#[derive(Debug, Clone)]
pub struct Ctl {
    program: PathBuf,
    env: Vec<(String, String)>,
}

impl Ctl {
    /// `program` (a `bg-ctl` binary) for `app` on `store`, authenticated
    /// with `token`.
    #[must_use]
    pub fn new(program: PathBuf, store: &str, app: &str, token: &str) -> Self {
        Ctl {
            program,
            env: vec![
                ("BG_STORE".into(), store.into()),
                ("BG_APP".into(), app.into()),
                ("BG_TOKEN".into(), token.into()),
                ("NO_COLOR".into(), "1".into()),
            ],
        }
    }

    /// The workspace's own `bg-ctl` (rebuilt when stale), as
    /// [`new`](Self::new) with the actor `BG_ACTOR` set too.
    #[must_use]
    pub fn workspace(store: &str, app: &str, token: &str, actor: &str) -> Self {
        Ctl::new(workspace_binary("bg-ctl", "bg-ctl"), store, app, token).env("BG_ACTOR", actor)
    }

    /// An environment variable for every command.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `BG_GATE_BLUE`, `BG_GATE_GREEN` and the webhooks for both colours.
    #[must_use]
    pub fn release_env(self, blue: SocketAddr, green: SocketAddr, hooks: &Webhooks) -> Self {
        self.release_env_all(&[blue], &[green], hooks)
    }

    /// [`release_env`](Self::release_env) for colours of several
    /// instances: every gate of each, comma-separated, as a CI job lists them.
    #[must_use]
    pub fn release_env_all(
        self,
        blue: &[SocketAddr],
        green: &[SocketAddr],
        hooks: &Webhooks,
    ) -> Self {
        let urls = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(|a| format!("http://{a}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        self.env("BG_GATE_BLUE", &urls(blue))
            .env("BG_GATE_GREEN", &urls(green))
            .env("BG_WEBHOOK_BLUE", &hooks.url("blue"))
            .env("BG_WEBHOOK_GREEN", &hooks.url("green"))
    }

    /// The command `bg-ctl ARGS…`, to adjust further or run.
    #[must_use]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v))).args(args);
        cmd
    }
}

/// Runs `cmd` to its end off the async workers.
///
/// # Panics
/// If it cannot be started.
pub async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("the command starts"))
        .await
        .expect("the command's thread")
}

/// A finished command's exit code and output, for an assertion message.
#[must_use]
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A TCP proxy to `upstream` that passes every request, but once a
/// connection has carried a POST, drops the answer and closes it: a write
/// that commits while its answer is lost on the way back.
///
/// # Panics
/// If it cannot bind a loopback port.
pub async fn losing_write_answers(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    losing_answers(upstream, b"POST ", usize::MAX).await.0
}

/// A TCP proxy to `upstream` that passes everything, except that the first
/// `times` requests containing `needle` reach it but their answers are
/// dropped and their connections closed. The counter says how many
/// answers it really dropped. It serves for as long as the runtime runs.
///
/// # Panics
/// If it cannot bind a loopback port.
pub async fn losing_answers(
    upstream: std::net::SocketAddr,
    needle: &'static [u8],
    times: usize,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let left = Arc::new(AtomicUsize::new(times));
    let dropped = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&dropped);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let left = Arc::clone(&left);
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let posted = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let p = Arc::clone(&posted);
                let up = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                        if buf[..n].windows(needle.len()).any(|w| w == needle)
                            && left
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                                    l.checked_sub(1)
                                })
                                .is_ok()
                        {
                            p.store(true, Ordering::SeqCst);
                        }
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                        if posted.load(Ordering::SeqCst) {
                            counted.fetch_add(1, Ordering::SeqCst);
                            break; // the write's answer: dropped
                        }
                        if to_client.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    () = up => {}
                    () = down => {}
                }
            });
        }
    });
    (addr, dropped)
}
