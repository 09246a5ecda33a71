//! Several processes racing on one store: the guarantees hold across
//! process boundaries, not just between tasks of one process.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use bg_state::{AppName, Colour, InitRequest};
use bg_testkit::RedisServer;

const WRITERS: usize = 4;
const ROUNDS: usize = 100;

/// Runs `WRITERS` writer processes at once and checks that the generations
/// they won are unique and contiguous, and that the store agrees.
async fn race(url: &str) {
    let store = bg_state::open(url).unwrap();
    let app = AppName::new("race").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "test"))
        .await
        .unwrap();

    let children: Vec<_> = (0..WRITERS)
        .map(|w| {
            Command::new(env!("CARGO_BIN_EXE_bg-cas-writer"))
                .args([url, "race", &ROUNDS.to_string(), &format!("writer-{w}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("writer process starts")
        })
        .collect();
    let mut won = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "writer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        won.extend(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| l.parse::<u64>().unwrap()),
        );
    }
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
