//! Many writers racing with compare-and-swap: no update is lost.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::Barrier;

use super::initialised;
use crate::{Colour, ColourStore, Error, SwitchRequest};

/// What one writer saw in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Round {
    Won(u64),
    Conflict,
    /// Anything a correct store never answers. Recorded rather than panicked
    /// on, so the other writers are not left waiting at a barrier.
    Wrong(String),
}

/// Many writers, each switching to the colour not live at its read with
/// compare-and-swap: no update is lost.
///
/// The writers run in lock step so the race is certain, not left to the
/// scheduler: in every round they all read, wait for each other, then all
/// switch expecting the generation they read. Exactly one of them wins each
/// round and every other one gets [`Error::Conflict`]; a store that ignored
/// the expected generation would let several win. The successful
/// generations are unique and contiguous, and the final generation is 1 +
/// their count.
///
/// # Panics
/// On a violation, or with fewer than two writers (nothing to race).
pub async fn compare_and_swap_race(stores: &[Arc<dyn ColourStore>], writers: usize, rounds: usize) {
    assert!(!stores.is_empty());
    assert!(writers >= 2, "a race needs at least two writers");
    let app = initialised(stores[0].as_ref(), "race", Colour::Blue).await;
    // Two meeting points per round: after every writer has read, and after
    // every writer has switched, so all reads of a round see one state.
    let read = Arc::new(Barrier::new(writers));
    let switched = Arc::new(Barrier::new(writers));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&stores[w % stores.len()]);
        let app = app.clone();
        let (read, switched) = (Arc::clone(&read), Arc::clone(&switched));
        tasks.push(tokio::spawn(async move {
            let mut rounds_seen = Vec::new();
            for _ in 0..rounds {
                let seen = store.get(&app).await;
                read.wait().await;
                let round = match seen {
                    Ok(Some(seen)) => one_switch(store.as_ref(), &app, &seen, w).await,
                    Ok(None) => Round::Wrong("the app's state vanished".into()),
                    Err(e) => Round::Wrong(format!("read: {e}")),
                };
                rounds_seen.push(round);
                switched.wait().await;
            }
            rounds_seen
        }));
    }
    let mut per_writer = Vec::new();
    for t in tasks {
        per_writer.push(t.await.expect("writer panicked"));
    }
    let mut all = Vec::new();
    let mut conflicts = 0;
    for round in 0..rounds {
        let mut won = Vec::new();
        for (w, seen) in per_writer.iter().enumerate() {
            match &seen[round] {
                Round::Won(g) => won.push(*g),
                Round::Conflict => {}
                Round::Wrong(what) => panic!("writer {w}, round {round}: {what}"),
            }
        }
        assert_eq!(
            won.len(),
            1,
            "round {round}: {} of {writers} writers expecting one generation won; \
             exactly one may",
            won.len()
        );
        conflicts += writers - won.len();
        all.extend(won);
    }
    assert_eq!(
        conflicts,
        rounds * (writers - 1),
        "every loser of a round meets a conflict"
    );
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "two writers committed the same generation"
    );
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

/// One compare-and-swap switch away from what `seen` says is live.
async fn one_switch(
    store: &dyn ColourStore,
    app: &crate::AppName,
    seen: &crate::State,
    w: usize,
) -> Round {
    let req =
        SwitchRequest::new(seen.idle(), format!("writer-{w}")).expect_generation(seen.generation);
    match store.switch(app, req).await {
        Ok(out) if !out.changed => {
            Round::Wrong("a switch to the idle colour changed nothing".into())
        }
        Ok(out) if out.state.generation != seen.generation + 1 => Round::Wrong(format!(
            "a switch expecting generation {} committed generation {}: \
             compare-and-swap was not applied",
            seen.generation, out.state.generation
        )),
        Ok(out) if out.state.active != seen.idle() => Round::Wrong(format!(
            "a switch to {} left {} live",
            seen.idle(),
            out.state.active
        )),
        Ok(out) => Round::Won(out.state.generation),
        Err(Error::Conflict { current, .. }) if current.generation > seen.generation => {
            Round::Conflict
        }
        Err(Error::Conflict { current, .. }) => Round::Wrong(format!(
            "a conflict reported generation {} after generation {} was read",
            current.generation, seen.generation
        )),
        Err(e) => Round::Wrong(format!("switch: {e}")),
    }
}
