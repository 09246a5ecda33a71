//! Many writers racing with compare-and-swap: no update is lost.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::initialised;
use crate::{Colour, ColourStore, Error, SwitchRequest};

/// Many writers, each switching to the colour not live at its read with
/// compare-and-swap: no update is lost. The successful generations are
/// unique and contiguous, and the final generation is 1 + their count.
pub async fn compare_and_swap_race(stores: &[Arc<dyn ColourStore>], writers: usize, rounds: usize) {
    assert!(!stores.is_empty());
    let app = initialised(stores[0].as_ref(), "race", Colour::Blue).await;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&stores[w % stores.len()]);
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for _ in 0..rounds {
                let seen = store.get(&app).await.unwrap().unwrap();
                let req = SwitchRequest::new(seen.idle(), format!("writer-{w}"))
                    .expect_generation(seen.generation);
                match store.switch(&app, req).await {
                    Ok(out) => {
                        assert!(out.changed, "a switch to the idle colour changed nothing");
                        assert_eq!(out.state.generation, seen.generation + 1);
                        assert_eq!(out.state.active, seen.idle());
                        won.push(out.state.generation);
                    }
                    Err(Error::Conflict { current, .. }) => {
                        assert!(current.generation > seen.generation);
                    }
                    Err(e) => panic!("writer {w}: {e}"),
                }
            }
            won
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer panicked"));
    }
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "two writers committed the same generation"
    );
    assert!(!all.is_empty(), "no writer ever won");
    let expected: BTreeSet<u64> = (2..=1 + all.len() as u64).collect();
    assert_eq!(
        unique, expected,
        "successful generations are not contiguous"
    );
    let last = stores[0].get(&app).await.unwrap().unwrap();
    assert_eq!(last.generation, 1 + all.len() as u64);
    // Every success alternated the colour, so parity says who is live.
    let expect_active = if all.len() % 2 == 0 {
        Colour::Blue
    } else {
        Colour::Green
    };
    assert_eq!(last.active, expect_active);
}
