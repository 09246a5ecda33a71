//! A websocket load generator: many clients through one address, each
//! sending a text message at an interval and checking its echo, telling the
//! closes a release asks for apart from the ones it must never cause.
//!
//! * A **move** is a close by the server with code 1012, service restart
//!   ([`MOVE_CODES`]): what a drain sends. The client waits a random jitter
//!   and reconnects, as a well-behaved client does when a drain asks it to
//!   go.
//! * A **cut** is every other way a connection ends: another close code
//!   (1001, going away, is what a service shutting down sends, and 1000 is
//!   no drain's either: the clients were cut, however politely), a
//!   close without a code, a read or write error, the stream ending without
//!   a close frame, or a greeting or an echo that does not arrive in time (or
//!   an echo that is not what was sent). The client counts it and reconnects
//!   too, so the load stays.
//! * A **connect failure** is a TCP connect or websocket handshake that fails
//!   or does not finish in time. The client counts it and tries again after a
//!   jitter, until stopped: a refused connect during a release is a failure
//!   to count, not a reason to stop.
//!
//! With [`Config::greeting`], the first text message on each connection is
//! the server's greeting, `hello <colour> <version>`, counted per colour.
//!
//! Each client is one tokio task with small buffers, so ten thousand fit in
//! one process on two cores.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use bg_e2e::wsload::{Config, Load};
//!
//! let mut config = Config::new("ws://127.0.0.1:8000/ws", 100);
//! config.interval = Duration::from_secs(1);
//! let load = Load::start(config);
//! tokio::time::sleep(Duration::from_secs(10)).await;
//! let summary = load.stop().await;
//! println!("{summary}");
//! assert!(summary.is_clean());
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

/// Close codes that ask a client to move on rather than report a failure:
/// service restart, what a draining gate (or a service it forwards the
/// drain to) sends. A service that shuts down sends 1001, going away: a
/// cut, so a release that restarts a service before its drain ends shows.
pub const MOVE_CODES: [u16; 1] = [1012];

/// How many error texts a [`Summary`] keeps: enough to see what went wrong,
/// bounded so ten thousand failing clients do not fill memory.
pub const MAX_ERRORS: usize = 10;

// Without a floor, a refused connect with no jitter configured would retry
// in a tight loop and starve the other clients.
const CONNECT_RETRY_FLOOR: Duration = Duration::from_millis(50);

// How long a closing handshake may take before the socket is dropped anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Decides whether a greeting is where a reconnect should land.
pub type LandingCheck = Arc<dyn Fn(&Landing<'_>) -> bool + Send + Sync>;

/// A connection after a client's first, as a [`LandingCheck`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Landing<'a> {
    /// This connection's greeting.
    pub greeting: &'a str,
    /// The greeting of the client's connection before this one.
    pub previous: &'a str,
    /// Whether the server moved the client (a close with 1012) rather than
    /// cut it.
    pub after_move: bool,
}

impl Landing<'_> {
    /// The colour a greeting names (`hello <colour> <version>`).
    #[must_use]
    pub fn colour(greeting: &str) -> &str {
        greeting.split_whitespace().nth(1).unwrap_or("?")
    }

    /// Whether a moved client came back to the colour it was moved from:
    /// the colour that asked it to go was still in rotation.
    #[must_use]
    pub fn moved_back(&self) -> bool {
        self.after_move && Landing::colour(self.greeting) == Landing::colour(self.previous)
    }
}

/// What a [`Load`] does.
#[derive(Clone)]
pub struct Config {
    /// `ws://HOST:PORT/PATH` (plain websockets only: no TLS).
    pub url: String,
    /// How many clients run at once.
    pub clients: usize,
    /// How often each client sends a message (at least 1 ms). Each client
    /// starts at a random point of its first interval, so the messages do
    /// not all go at once.
    pub interval: Duration,
    /// How long an echo, the greeting, or a connect with its handshake may
    /// take before it counts as a cut (or a connect failure).
    pub echo_timeout: Duration,
    /// The most a client waits before reconnecting: each wait is random in
    /// `[0, reconnect_jitter]`, so a drained colour's clients do not all
    /// arrive at the live one in the same instant.
    pub reconnect_jitter: Duration,
    /// The first connects are spread evenly over this time.
    pub ramp: Duration,
    /// Whether the server greets each connection first (`hello <colour>
    /// <version>`).
    pub greeting: bool,
    /// Called with every connection after a client's first (its greeting
    /// and the one before); a `false` counts as a
    /// [`wrong_landing`](Summary::wrong_landing).
    pub landing_ok: Option<LandingCheck>,
    /// Without a load balancer in front: the servers to spread the clients
    /// over, picked by their health checks instead of `url`.
    pub balance: Option<Balance>,
}

/// Client-side balancing, for runs that go gate-direct because a proxy
/// would need two descriptors per websocket: what a load balancer with
/// active health checks does (`rise 1 fall 1`). Every `every`, each
/// server's `check` path is asked over HTTP; each connect and reconnect goes
/// to the next server whose last check answered 200. The gates log these
/// checks as a load balancer's probes, so `bg-ctl deploy` sees a load
/// balancer leave the idle colour and (`--confirm-lb`) take the new one.
#[derive(Debug, Clone)]
pub struct Balance {
    /// `ws://HOST:PORT/PATH` of every server.
    pub urls: Vec<String>,
    /// The health route, e.g. `/balancer-keepalive-check`.
    pub check: String,
    /// How often each server is checked.
    pub every: Duration,
}

/// Which servers of a [`Balance`] answered their last check.
#[derive(Default)]
struct Healthy {
    urls: Mutex<Vec<String>>,
    next: AtomicU64,
    /// Whether every server was checked once: before that, no answer is
    /// not a failure.
    checked: std::sync::atomic::AtomicBool,
}

impl Healthy {
    /// The next healthy server, round robin; `None` while none is.
    fn pick(&self) -> Option<String> {
        let urls = self.urls.lock().unwrap_or_else(PoisonError::into_inner);
        if urls.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        Some(urls[n % urls.len()].clone())
    }

    /// Checks every server of `balance` until `stop`.
    async fn check(self: Arc<Self>, balance: Balance, mut stop: watch::Receiver<bool>) {
        // reqwest is built without a bundled crypto provider; ring is ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("an HTTP client");
        loop {
            let mut up = Vec::new();
            for url in &balance.urls {
                let http = url.replacen("ws://", "http://", 1);
                let origin = http
                    .find('/')
                    .and_then(|i| http[i + 2..].find('/').map(|j| &http[..i + 2 + j]))
                    .unwrap_or(&http);
                let ok = client
                    .get(format!("{origin}{}", balance.check))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
                if ok {
                    up.push(url.clone());
                }
            }
            *self.urls.lock().unwrap_or_else(PoisonError::into_inner) = up;
            self.checked.store(true, Ordering::Release);
            tokio::select! {
                () = sleep(balance.every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

impl Config {
    /// `clients` clients through `url`, with the defaults of `bg-wsload`: a
    /// message every 5 s, 5 s for an echo, up to 1 s of reconnect jitter,
    /// first connects spread over 5 s, a greeting expected, no landing check.
    #[must_use]
    pub fn new(url: impl Into<String>, clients: usize) -> Self {
        Config {
            url: url.into(),
            clients,
            interval: Duration::from_secs(5),
            echo_timeout: Duration::from_secs(5),
            reconnect_jitter: Duration::from_secs(1),
            ramp: Duration::from_secs(5),
            greeting: true,
            landing_ok: None,
            balance: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.url)
            .field("clients", &self.clients)
            .field("interval", &self.interval)
            .field("echo_timeout", &self.echo_timeout)
            .field("reconnect_jitter", &self.reconnect_jitter)
            .field("ramp", &self.ramp)
            .field("greeting", &self.greeting)
            .field("landing_ok", &self.landing_ok.as_ref().map(|_| ".."))
            .field("balance", &self.balance)
            .finish()
    }
}

/// What the clients counted, at one moment or at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// How many clients ran.
    pub clients: usize,
    /// Clients connected now (greeted, when a greeting is expected).
    pub connected: u64,
    /// Echoes received and found equal to what was sent.
    pub messages: u64,
    /// Clean closes by the server ([`MOVE_CODES`]), each followed by a
    /// reconnect.
    pub moves: u64,
    /// [`moves`](Self::moves) by close code.
    pub move_codes: BTreeMap<u16, u64>,
    /// Moved clients connected (and greeted) again. Fewer than
    /// [`moves`](Self::moves) while some are still on their way.
    pub reconnects: u64,
    /// Connections that ended any other way.
    pub cuts: u64,
    /// Connects or handshakes that failed or did not finish in time.
    pub connect_failures: u64,
    /// Reconnects whose greeting [`Config::landing_ok`] refused.
    pub wrong_landing: u64,
    /// Landings (first connects and reconnects) by the colour in the
    /// greeting, its second word.
    pub landed: BTreeMap<String, u64>,
    /// Time since the clients were started.
    pub elapsed: Duration,
    /// The first [`MAX_ERRORS`] cuts and connect failures, as text.
    pub errors: Vec<String>,
}

impl Summary {
    /// No cut, no connect failure and no wrong landing.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.cuts == 0 && self.connect_failures == 0 && self.wrong_landing == 0
    }

    /// A short progress line: connected now, echoes, moves, cuts and
    /// connect failures so far.
    #[must_use]
    pub fn progress(&self) -> String {
        format!(
            "{:.1} s: {} connected, {}, {} moved, {} cut, {}",
            self.elapsed.as_secs_f64(),
            thousands(self.connected),
            counted(self.messages, "echo", "echoes"),
            thousands(self.moves),
            thousands(self.cuts),
            counted(self.connect_failures, "connect failure", "connect failures"),
        )
    }
}

/// The one summary line, e.g. `2,000 clients, 60.0 s: 118,000 echoes, 2,000
/// moved (1012) and 2,000 reconnected, 0 cut, 0 connect failures, 0 wrong
/// landing; landed blue=2,000 green=2,000`.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} clients, {:.1} s: {}, {} moved",
            thousands(self.clients as u64),
            self.elapsed.as_secs_f64(),
            counted(self.messages, "echo", "echoes"),
            thousands(self.moves),
        )?;
        if !self.move_codes.is_empty() {
            let codes: Vec<String> = self.move_codes.keys().map(u16::to_string).collect();
            write!(f, " ({})", codes.join("/"))?;
        }
        write!(
            f,
            " and {} reconnected, {} cut, {}, {} wrong landing",
            thousands(self.reconnects),
            thousands(self.cuts),
            counted(self.connect_failures, "connect failure", "connect failures"),
            thousands(self.wrong_landing),
        )?;
        if !self.landed.is_empty() {
            f.write_str("; landed")?;
            for (colour, n) in &self.landed {
                write!(f, " {colour}={}", thousands(*n))?;
            }
        }
        Ok(())
    }
}

fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Running clients. Dropping it stops them too, without waiting.
pub struct Load {
    counts: Arc<Counts>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    clients: usize,
    started: Instant,
}

impl fmt::Debug for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Load")
            .field("counts", &self.counts())
            .finish()
    }
}

impl Load {
    /// Starts `config.clients` clients, one task each, and returns at once.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn start(config: Config) -> Load {
        let (stop, stopped) = watch::channel(false);
        let counts = Arc::new(Counts::default());
        let clients = config.clients;
        let healthy = Arc::new(Healthy::default());
        let mut tasks: Vec<JoinHandle<()>> = Vec::with_capacity(clients + 1);
        if let Some(balance) = config.balance.clone() {
            tasks.push(tokio::spawn(
                Arc::clone(&healthy).check(balance, stopped.clone()),
            ));
        }
        let config = Arc::new(config);
        tasks.extend((0..clients).map(|id| {
            let client = Client {
                id,
                config: Arc::clone(&config),
                counts: Arc::clone(&counts),
                stop: stopped.clone(),
                rng: Rng::new(id),
                previous: None,
                healthy: Arc::clone(&healthy),
            };
            tokio::spawn(client.run())
        }));
        Load {
            counts,
            stop,
            tasks,
            clients,
            started: Instant::now(),
        }
    }

    /// What the clients counted so far.
    #[must_use]
    pub fn counts(&self) -> Summary {
        self.counts.summary(self.clients, self.started.elapsed())
    }

    /// How many clients are connected now (and greeted, when a greeting is
    /// expected).
    #[must_use]
    pub fn connected(&self) -> u64 {
        self.counts.connected.load(Ordering::Relaxed)
    }

    /// Stops every client — a connected one closes with code 1000 and waits
    /// (briefly) for the server's answer — and returns what they counted.
    pub async fn stop(mut self) -> Summary {
        let elapsed = self.started.elapsed();
        self.stop.send_replace(true);
        for task in std::mem::take(&mut self.tasks) {
            // A client that panicked has nothing more to count.
            let _ = task.await;
        }
        self.counts.summary(self.clients, elapsed)
    }
}

#[derive(Default)]
struct Counts {
    connected: AtomicU64,
    messages: AtomicU64,
    moves: AtomicU64,
    reconnects: AtomicU64,
    cuts: AtomicU64,
    connect_failures: AtomicU64,
    wrong_landing: AtomicU64,
    // Landings and ends are rare next to messages, so a lock is cheap here;
    // it is never held across an await.
    rare: Mutex<Rare>,
}

#[derive(Default)]
struct Rare {
    landed: BTreeMap<String, u64>,
    move_codes: BTreeMap<u16, u64>,
    errors: Vec<String>,
}

impl Counts {
    fn rare(&self) -> std::sync::MutexGuard<'_, Rare> {
        self.rare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn error(&self, text: String) {
        let mut rare = self.rare();
        if rare.errors.len() < MAX_ERRORS {
            rare.errors.push(text);
        }
    }

    fn summary(&self, clients: usize, elapsed: Duration) -> Summary {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let rare = self.rare();
        Summary {
            clients,
            connected: n(&self.connected),
            messages: n(&self.messages),
            moves: n(&self.moves),
            move_codes: rare.move_codes.clone(),
            reconnects: n(&self.reconnects),
            cuts: n(&self.cuts),
            connect_failures: n(&self.connect_failures),
            wrong_landing: n(&self.wrong_landing),
            landed: rare.landed.clone(),
            elapsed,
            errors: rare.errors.clone(),
        }
    }
}

/// How a connection ended.
enum End {
    Moved(u16),
    Cut(String),
    Stopped,
}

enum Event {
    Stop,
    Deadline,
    Message(Option<Result<Message, WsError>>),
}

struct Client {
    id: usize,
    config: Arc<Config>,
    counts: Arc<Counts>,
    stop: watch::Receiver<bool>,
    rng: Rng,
    /// The greeting of the connection before, once there was one.
    previous: Option<String>,
    healthy: Arc<Healthy>,
}

impl Client {
    async fn run(mut self) {
        let share = self.id as f64 / self.config.clients.max(1) as f64;
        if !self.pause(self.config.ramp.mul_f64(share)).await {
            return;
        }
        let mut moved = false;
        loop {
            let ws = match self.connect().await {
                None => return,
                Some(Ok(ws)) => ws,
                Some(Err(e)) => {
                    self.counts.connect_failures.fetch_add(1, Ordering::Relaxed);
                    self.counts.error(format!("client {}: {e}", self.id));
                    let wait = CONNECT_RETRY_FLOOR + self.rng.upto(self.config.reconnect_jitter);
                    if !self.pause(wait).await {
                        return;
                    }
                    continue;
                }
            };
            match self.session(ws, moved).await {
                End::Stopped => return,
                End::Moved(code) => {
                    self.counts.moves.fetch_add(1, Ordering::Relaxed);
                    *self.counts.rare().move_codes.entry(code).or_default() += 1;
                    moved = true;
                }
                End::Cut(why) => {
                    self.counts.cuts.fetch_add(1, Ordering::Relaxed);
                    self.counts.error(format!("client {}: {why}", self.id));
                    moved = false;
                }
            }
            let wait = self.rng.upto(self.config.reconnect_jitter);
            if !self.pause(wait).await {
                return;
            }
        }
    }

    /// Sleeps for `d`; `false` when stopped meanwhile.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            () = sleep(d) => true,
            _ = self.stop.wait_for(|s| *s) => false,
        }
    }

    /// `None` when stopped meanwhile.
    async fn connect(&mut self) -> Option<Result<Ws, String>> {
        // The defaults (128 KiB read buffer, 64 MiB messages) would cost
        // gigabytes across ten thousand clients sending a few bytes each.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_write_buffer_size(64 * 1024)
            .max_message_size(Some(64 * 1024))
            .max_frame_size(Some(64 * 1024));
        let url = if self.config.balance.is_some() {
            while !self.healthy.checked.load(Ordering::Acquire) {
                if !self.pause(Duration::from_millis(20)).await {
                    return None;
                }
            }
            // As a load balancer with no server up answers: a failure.
            let Some(url) = self.healthy.pick() else {
                return Some(Err("connect: no server answers its health check".into()));
            };
            url
        } else {
            self.config.url.clone()
        };
        let attempt = timeout(
            self.config.echo_timeout,
            connect_async_with_config(url.as_str(), Some(ws_config), true),
        );
        tokio::select! {
            _ = self.stop.wait_for(|s| *s) => None,
            r = attempt => Some(match r {
                Ok(Ok((ws, _response))) => Ok(ws),
                Ok(Err(e)) => Err(format!("connect: {e}")),
                Err(_) => Err(format!(
                    "connect: no handshake within {:?}",
                    self.config.echo_timeout
                )),
            }),
        }
    }

    /// One connection, from the handshake to its end. `moved`: the client
    /// is back after a move.
    async fn session(&mut self, mut ws: Ws, moved: bool) -> End {
        if self.config.greeting {
            match self.greeting(&mut ws).await {
                Ok(greeting) => self.land(Some(greeting), moved),
                Err(end) => return end,
            }
        } else {
            self.land(None, moved);
        }
        if moved {
            self.counts.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.counts.connected.fetch_add(1, Ordering::Relaxed);
        let end = self.echo(&mut ws).await;
        self.counts.connected.fetch_sub(1, Ordering::Relaxed);
        end
    }

    fn land(&mut self, greeting: Option<String>, after_move: bool) {
        let Some(greeting) = greeting else { return };
        *self
            .counts
            .rare()
            .landed
            .entry(Landing::colour(&greeting).to_owned())
            .or_default() += 1;
        if let Some(previous) = &self.previous
            && let Some(ok) = &self.config.landing_ok
            && !ok(&Landing {
                greeting: &greeting,
                previous,
                after_move,
            })
        {
            self.counts.wrong_landing.fetch_add(1, Ordering::Relaxed);
            self.counts.error(format!(
                "client {}: landed on {greeting:?} after {:?} (a move: {after_move})",
                self.id, self.previous
            ));
        }
        self.previous = Some(greeting);
    }

    async fn greeting(&mut self, ws: &mut Ws) -> Result<String, End> {
        let deadline = Instant::now() + self.config.echo_timeout;
        loop {
            match self.event(ws, deadline).await {
                Event::Message(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_owned()),
                Event::Message(Some(Ok(Message::Close(frame)))) => {
                    return Err(closed_by_server(ws, frame).await);
                }
                Event::Message(Some(Ok(_))) => {}
                Event::Message(other) => return Err(broken(other)),
                Event::Deadline => {
                    return Err(End::Cut(format!(
                        "no greeting within {:?}",
                        self.config.echo_timeout
                    )));
                }
                Event::Stop => {
                    close(ws).await;
                    return Err(End::Stopped);
                }
            }
        }
    }

    async fn echo(&mut self, ws: &mut Ws) -> End {
        let interval = self.config.interval.max(Duration::from_millis(1));
        let mut next_send = Instant::now() + self.rng.upto(interval);
        let mut pending: Option<(String, Instant)> = None;
        let mut seq: u64 = 0;
        loop {
            let deadline = pending.as_ref().map_or(next_send, |(_, d)| *d);
            match self.event(ws, deadline).await {
                Event::Deadline => {
                    if pending.is_some() {
                        return End::Cut(format!("no echo within {:?}", self.config.echo_timeout));
                    }
                    seq += 1;
                    let text = format!("client {} message {seq}", self.id);
                    let sent = timeout(
                        self.config.echo_timeout,
                        ws.send(Message::text(text.as_str())),
                    )
                    .await;
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return End::Cut(format!("write: {e}")),
                        Err(_) => return End::Cut("write: stalled".to_owned()),
                    }
                    let now = Instant::now();
                    pending = Some((text, now + self.config.echo_timeout));
                    next_send += interval;
                    // A slow echo delays the next message rather than
                    // queueing a burst to catch up.
                    if next_send < now {
                        next_send = now + interval;
                    }
                }
                Event::Message(Some(Ok(Message::Text(t)))) => match pending.take() {
                    Some((want, _)) if t.as_str() == want => {
                        self.counts.messages.fetch_add(1, Ordering::Relaxed);
                    }
                    Some((want, _)) => {
                        return End::Cut(format!("echo {:?}, sent {want:?}", t.as_str()));
                    }
                    // Unasked-for text (a push, a greeting not expected) is
                    // the server's business; only echoes are checked.
                    None => {}
                },
                Event::Message(Some(Ok(Message::Close(frame)))) => {
                    return closed_by_server(ws, frame).await;
                }
                Event::Message(Some(Ok(_))) => {}
                Event::Message(other) => return broken(other),
                Event::Stop => {
                    close(ws).await;
                    return End::Stopped;
                }
            }
        }
    }

    async fn event(&mut self, ws: &mut Ws, deadline: Instant) -> Event {
        tokio::select! {
            biased;
            _ = self.stop.wait_for(|s| *s) => Event::Stop,
            m = ws.next() => Event::Message(m),
            () = sleep_until(deadline) => Event::Deadline,
        }
    }
}

/// The end a server's close frame means, once the close is answered.
async fn closed_by_server(ws: &mut Ws, frame: Option<CloseFrame>) -> End {
    // Reading on sends the answer tungstenite queued, which a draining
    // server waits for, and lets the server end the TCP connection first.
    let _ = timeout(CLOSE_WAIT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    match frame {
        Some(f) => {
            let code = u16::from(f.code);
            if MOVE_CODES.contains(&code) {
                End::Moved(code)
            } else if f.reason.is_empty() {
                End::Cut(format!("closed with {code}"))
            } else {
                End::Cut(format!("closed with {code} ({})", f.reason.as_str()))
            }
        }
        None => End::Cut("closed without a code".to_owned()),
    }
}

/// The end a read error or a stream without a close frame means.
fn broken(read: Option<Result<Message, WsError>>) -> End {
    match read {
        Some(Err(e)) => End::Cut(format!("read: {e}")),
        None => End::Cut("connection ended without a close frame".to_owned()),
        Some(Ok(m)) => End::Cut(format!("unexpected {m:?}")),
    }
}

/// Closes from the client side with 1000 and waits, briefly, for the answer.
async fn close(ws: &mut Ws) {
    let _ = timeout(CLOSE_WAIT, async {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "load stopped".into(),
        };
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// xorshift64*: jitter needs spread, not quality, and no dependency.
struct Rng(u64);

impl Rng {
    fn new(id: usize) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // splitmix64 of time and index, so neighbouring clients started in
        // the same nanosecond still get unrelated sequences.
        let mut z = now ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `[0, max]`.
    fn upto(&mut self, max: Duration) -> Duration {
        let n = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if n == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next_u64() % n.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::net::TcpListener;
    use tokio::sync::broadcast;
    use tokio_tungstenite::accept_async;

    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Command {
        Close(Option<u16>),
        DropTcp,
        StopEchoing,
    }

    /// An in-process echo server that greets like `ws_echo`, and can end
    /// every open connection on command.
    struct EchoServer {
        addr: SocketAddr,
        commands: broadcast::Sender<Command>,
        greeting: Arc<Mutex<String>>,
        client_closes: Arc<Mutex<Vec<Option<u16>>>>,
        accept: JoinHandle<()>,
    }

    impl Drop for EchoServer {
        fn drop(&mut self) {
            self.accept.abort();
        }
    }

    impl EchoServer {
        async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
            let addr = listener.local_addr().expect("its address");
            let (commands, _) = broadcast::channel(16);
            let greeting = Arc::new(Mutex::new("hello blue v1".to_owned()));
            let client_closes = Arc::new(Mutex::new(Vec::new()));
            let accept = tokio::spawn({
                let commands = commands.clone();
                let greeting = Arc::clone(&greeting);
                let client_closes = Arc::clone(&client_closes);
                async move {
                    while let Ok((tcp, _)) = listener.accept().await {
                        let hello = lock(&greeting).clone();
                        tokio::spawn(serve(
                            tcp,
                            hello,
                            commands.subscribe(),
                            Arc::clone(&client_closes),
                        ));
                    }
                }
            });
            EchoServer {
                addr,
                commands,
                greeting,
                client_closes,
                accept,
            }
        }

        fn url(&self) -> String {
            format!("ws://{}/ws", self.addr)
        }

        fn tell(&self, c: Command) {
            let _ = self.commands.send(c);
        }

        fn greet(&self, greeting: &str) {
            greeting.clone_into(&mut lock(&self.greeting));
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn serve(
        tcp: TcpStream,
        hello: String,
        mut commands: broadcast::Receiver<Command>,
        client_closes: Arc<Mutex<Vec<Option<u16>>>>,
    ) {
        let Ok(mut ws) = accept_async(tcp).await else {
            return;
        };
        if ws.send(Message::text(hello)).await.is_err() {
            return;
        }
        let mut echoing = true;
        loop {
            tokio::select! {
                c = commands.recv() => match c {
                    Ok(Command::Close(code)) => {
                        let frame = code.map(|c| CloseFrame { code: c.into(), reason: "".into() });
                        let _ = ws.send(Message::Close(frame)).await;
                        let _ = timeout(CLOSE_WAIT, async {
                            while let Some(Ok(m)) = ws.next().await {
                                if m.is_close() {
                                    break;
                                }
                            }
                        })
                        .await;
                        return;
                    }
                    Ok(Command::DropTcp) | Err(broadcast::error::RecvError::Closed) => return,
                    Ok(Command::StopEchoing) => echoing = false,
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                },
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if echoing && ws.send(Message::Text(t)).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        lock(&client_closes).push(frame.map(|f| u16::from(f.code)));
                        // Sends the queued answer; then the client's EOF.
                        while let Some(Ok(_)) = ws.next().await {}
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                },
            }
        }
    }

    fn quick(url: String, clients: usize) -> Config {
        Config {
            interval: Duration::from_millis(20),
            echo_timeout: Duration::from_millis(500),
            reconnect_jitter: Duration::from_millis(20),
            ramp: Duration::from_millis(20),
            ..Config::new(url, clients)
        }
    }

    /// Polls the counts until `done` holds; fails with them after 3 s.
    async fn until(load: &Load, what: &str, done: impl Fn(&Summary) -> bool) -> Summary {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let s = load.counts();
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "waiting for {what}: {s:#?}");
            sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn echoes_are_counted_and_stop_closes_with_1000() {
        let server = EchoServer::start().await;
        let load = Load::start(quick(server.url(), 10));
        until(&load, "echoes", |s| s.connected == 10 && s.messages >= 50).await;
        let s = load.stop().await;
        assert_eq!((s.cuts, s.connect_failures, s.moves), (0, 0, 0), "{s:#?}");
        assert_eq!(s.connected, 0);
        assert_eq!(s.landed, BTreeMap::from([("blue".to_owned(), 10)]));
        assert!(s.is_clean());
        assert_eq!(*lock(&server.client_closes), vec![Some(1000); 10]);
    }

    #[tokio::test]
    async fn a_close_with_1012_is_a_move_and_the_clients_come_back() {
        let server = EchoServer::start().await;
        let load = Load::start(quick(server.url(), 10));
        until(&load, "connects", |s| s.connected == 10).await;
        server.tell(Command::Close(Some(1012)));
        let s = until(&load, "reconnects", |s| {
            s.reconnects == 10 && s.connected == 10
        })
        .await;
        let echoes = s.messages;
        until(&load, "echoes after the move", |s| s.messages > echoes + 10).await;
        let s = load.stop().await;
        assert_eq!(s.moves, 10, "{s:#?}");
        assert_eq!(s.reconnects, s.moves);
        assert_eq!(s.move_codes, BTreeMap::from([(1012, 10)]));
        assert_eq!(s.landed, BTreeMap::from([("blue".to_owned(), 20)]));
        assert!(s.is_clean(), "{s:#?}");
        assert!(
            s.to_string()
                .contains("10 moved (1012) and 10 reconnected, 0 cut"),
            "{s}"
        );
    }

    #[tokio::test]
    async fn a_reconnect_where_the_check_says_no_is_a_wrong_landing() {
        let server = EchoServer::start().await;
        let mut config = quick(server.url(), 10);
        config.landing_ok = Some(Arc::new(|l: &Landing<'_>| !l.moved_back()));
        let load = Load::start(config);
        until(&load, "connects", |s| s.connected == 10).await;
        server.greet("hello green v2");
        server.tell(Command::Close(Some(1012)));
        until(&load, "green", |s| s.reconnects == 10 && s.connected == 10).await;
        assert_eq!(
            load.counts().wrong_landing,
            0,
            "moved from blue to green: where they were asked to go"
        );
        // Moved again, and back where they were moved from.
        server.tell(Command::Close(Some(1012)));
        until(&load, "green again", |s| {
            s.reconnects == 20 && s.connected == 10
        })
        .await;
        let s = load.stop().await;
        assert_eq!(s.wrong_landing, 10, "{s:#?}");
        assert_eq!(
            s.landed,
            BTreeMap::from([("blue".to_owned(), 10), ("green".to_owned(), 20)])
        );
        assert!(!s.is_clean());
    }

    async fn cut_by(command: Command, why: &str) {
        let server = EchoServer::start().await;
        let load = Load::start(quick(server.url(), 10));
        until(&load, "connects", |s| s.connected == 10).await;
        server.tell(command);
        until(&load, "cuts", |s| s.cuts == 10).await;
        until(&load, "reconnects", |s| s.connected == 10).await;
        let s = load.stop().await;
        assert_eq!((s.cuts, s.moves, s.reconnects), (10, 0, 0), "{s:#?}");
        assert!(!s.is_clean());
        assert!(s.errors.iter().all(|e| e.contains(why)), "{:#?}", s.errors);
    }

    /// A service shutting down says "going away": its clients were cut,
    /// not drained, however they reconnect.
    #[tokio::test]
    async fn a_close_with_1001_is_a_cut() {
        cut_by(Command::Close(Some(1001)), "closed with 1001").await;
    }

    #[tokio::test]
    async fn a_close_with_1000_is_a_cut() {
        cut_by(Command::Close(Some(1000)), "closed with 1000").await;
    }

    #[tokio::test]
    async fn a_close_with_1011_is_a_cut() {
        cut_by(Command::Close(Some(1011)), "closed with 1011").await;
    }

    #[tokio::test]
    async fn a_close_without_a_code_is_a_cut() {
        cut_by(Command::Close(None), "closed without a code").await;
    }

    #[tokio::test]
    async fn a_dropped_tcp_connection_is_a_cut() {
        cut_by(Command::DropTcp, "read: ").await;
    }

    #[tokio::test]
    async fn a_missing_echo_is_a_cut() {
        cut_by(Command::StopEchoing, "no echo within").await;
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_failure_retried() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port");
        let load = Load::start(quick(format!("ws://{addr}/ws"), 3));
        until(&load, "failures", |s| s.connect_failures >= 6).await;
        let s = load.stop().await;
        assert_eq!((s.connected, s.cuts, s.messages), (0, 0, 0), "{s:#?}");
        assert!(s.errors[0].contains("connect: "), "{:#?}", s.errors);
        assert!(!s.is_clean());
    }

    #[test]
    fn the_summary_is_one_line_with_thousands() {
        let s = Summary {
            clients: 2000,
            messages: 118_000,
            moves: 2000,
            move_codes: BTreeMap::from([(1012, 2000)]),
            reconnects: 2000,
            connect_failures: 1,
            landed: BTreeMap::from([("blue".to_owned(), 2000), ("green".to_owned(), 2000)]),
            elapsed: Duration::from_secs(60),
            ..Summary::default()
        };
        assert_eq!(
            s.to_string(),
            "2,000 clients, 60.0 s: 118,000 echoes, 2,000 moved (1012) and 2,000 reconnected, \
             0 cut, 1 connect failure, 0 wrong landing; landed blue=2,000 green=2,000"
        );
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let mut rng = Rng::new(7);
        let max = Duration::from_millis(20);
        assert!((0..1000).all(|_| rng.upto(max) <= max));
        assert_eq!(rng.upto(Duration::ZERO), Duration::ZERO);
    }
}
