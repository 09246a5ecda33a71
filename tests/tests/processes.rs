//! Several processes racing on one store: the guarantees hold across
//! process boundaries, not just between tasks of one process.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use bg_state::{AppName, Colour, InitRequest};
use bg_testkit::RedisServer;

const WRITERS: usize = 4;
const ROUNDS: usize = 100;

/// One writer process and its two pipes.
struct Writer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Writer {
    fn start(url: &str, w: usize) -> Writer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bg-cas-writer"))
            .args([url, "race", &ROUNDS.to_string(), &format!("writer-{w}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("writer process starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Writer {
            child,
            stdin,
            stdout,
        }
    }

    /// The writer's next line; its stderr if it has none.
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).unwrap_or(0);
        if n == 0 {
            self.stdin = None;
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("a writer stopped early: {err}");
        }
        line.trim_end().to_owned()
    }

    fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing stdin ends a writer waiting for its signal; kill the rest.
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `WRITERS` writer processes in lock step: in each round all of them
/// read, then all of them switch expecting the generation they read. One
/// wins each round and every other one meets a conflict; the generations
/// won are unique and contiguous, and the store agrees.
async fn race(url: &str) {
    let store = bg_state::open(url).unwrap();
    let app = AppName::new("race").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "test"))
        .await
        .unwrap();

    let mut writers: Vec<Writer> = (0..WRITERS).map(|w| Writer::start(url, w)).collect();
    let mut won = Vec::new();
    let mut conflicts = 0;
    for round in 0..ROUNDS {
        let read: Vec<u64> = writers
            .iter_mut()
            .map(|w| {
                let line = w.line();
                let g = line
                    .strip_prefix("read ")
                    .unwrap_or_else(|| panic!("{line}"));
                g.parse().unwrap()
            })
            .collect();
        assert!(
            read.iter().all(|g| *g == read[0]),
            "round {round}: the writers read different generations {read:?}"
        );
        writers.iter_mut().for_each(Writer::go);
        let mut winners = 0;
        for w in &mut writers {
            let line = w.line();
            if line == "conflict" {
                conflicts += 1;
            } else {
                let g: u64 = line
                    .strip_prefix("won ")
                    .unwrap_or_else(|| panic!("{line}"))
                    .parse()
                    .unwrap();
                assert_eq!(
                    g,
                    read[0] + 1,
                    "round {round}: a switch expecting generation {} committed {g}",
                    read[0]
                );
                winners += 1;
                won.push(g);
            }
        }
        assert_eq!(
            winners, 1,
            "round {round}: {winners} of {WRITERS} processes expecting one generation won"
        );
    }
    assert_eq!(conflicts, ROUNDS * (WRITERS - 1));
    drop(writers);
    let unique: BTreeSet<u64> = won.iter().copied().collect();
    assert_eq!(
        unique.len(),
        won.len(),
        "two processes committed one generation"
    );
    assert!(!won.is_empty());
    assert_eq!(
        unique,
        (2..=1 + won.len() as u64).collect(),
        "lost or skipped generations"
    );
    let last = store.get(&app).await.unwrap().unwrap();
    assert_eq!(last.generation, 1 + won.len() as u64);
    let history = store.history(&app, usize::MAX).await.unwrap();
    assert_eq!(
        history.len(),
        1 + won.len(),
        "every switch is in the history once"
    );
}

#[tokio::test]
async fn processes_racing_on_one_file() {
    let dir = tempfile::tempdir().unwrap();
    race(&format!("file://{}/state.json", dir.path().display())).await;
}

#[tokio::test]
async fn processes_racing_on_one_redis() {
    let server = RedisServer::start();
    race(&server.url()).await;
}
