use std::sync::{Arc, Mutex};

use bg_state::conformance::{compare_and_swap_race, run_all};
use bg_state::{
    AppName, Colour, ColourStore, Error, InitRequest, MemoryStore, MockColourStore, SwitchOutcome,
    SwitchRequest,
};

use super::{HISTORY_CAP, config, shared};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let store = MemoryStore::with_history_cap(HISTORY_CAP);
    // Clones are handles on the same state, so the race uses several.
    let stores = [shared(store.clone()), shared(store.clone()), shared(store)];
    run_all(&stores, &config()).await;
}

#[tokio::test]
async fn stores_are_per_instance() {
    let app = AppName::new("chat").unwrap();
    let a = bg_state::open("memory://").unwrap();
    let b = bg_state::open("memory://").unwrap();
    a.init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    assert_eq!(
        b.get(&app).await.unwrap(),
        None,
        "two memory:// stores share nothing"
    );
}

#[tokio::test]
async fn a_lagging_subscriber_is_told_to_re_read() {
    let store = MemoryStore::new();
    let app = AppName::new("lag").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let mut sub = store.subscribe(&app).await.unwrap();
    for _ in 0..300 {
        let s = store.get(&app).await.unwrap().unwrap();
        store
            .switch(&app, SwitchRequest::new(s.idle(), "t"))
            .await
            .unwrap();
    }
    let first = sub.recv().await.unwrap();
    assert_eq!(
        first.generation, None,
        "a reader that fell behind gets a re-read hint"
    );
}

/// What a user's own test of failure handling looks like with the mock.
#[tokio::test]
async fn mock_injects_an_outage() {
    let mut mock = MockColourStore::new();
    mock.expect_get().returning(|_| {
        Err(Error::Unavailable {
            backend: "redis",
            message: "connection refused".into(),
            retryable: true,
        })
    });
    let store: &dyn ColourStore = &mock;
    let err = store.get(&AppName::new("chat").unwrap()).await.unwrap_err();
    assert!(err.is_retryable());
}

/// The race can fail: a store that commits every switch, whatever generation
/// the writer expected, lets several writers of one round win. Run on one
/// thread, where the writers would otherwise take turns and never meet.
#[tokio::test]
#[should_panic(expected = "compare-and-swap was not applied")]
async fn the_race_catches_a_store_that_ignores_compare_and_swap() {
    let template = MemoryStore::new()
        .init(
            &AppName::new("template").unwrap(),
            InitRequest::new(Colour::Blue, "t"),
        )
        .await
        .unwrap();
    let held = Arc::new(Mutex::new(None));
    let mut mock = MockColourStore::new();
    let h = Arc::clone(&held);
    mock.expect_init().returning(move |app, req| {
        let mut s = template.clone();
        s.app = app.clone();
        s.active = req.active;
        *h.lock().unwrap() = Some(s.clone());
        Ok(s)
    });
    let h = Arc::clone(&held);
    mock.expect_get()
        .returning(move |_| Ok(h.lock().unwrap().clone()));
    let h = Arc::clone(&held);
    mock.expect_switch()
        .returning(move |_, req: SwitchRequest| {
            let mut guard = h.lock().unwrap();
            let s = guard.as_mut().expect("initialised");
            s.active = req.to;
            s.generation += 1;
            Ok(SwitchOutcome {
                state: s.clone(),
                changed: true,
            })
        });
    let store: Arc<dyn ColourStore> = Arc::new(mock);
    compare_and_swap_race(&[store], 4, 5).await;
}
