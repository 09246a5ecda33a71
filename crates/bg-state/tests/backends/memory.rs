use bg_state::conformance::run_all;
use bg_state::{
    AppName, Colour, ColourStore, Error, InitRequest, MemoryStore, MockColourStore, SwitchRequest,
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
