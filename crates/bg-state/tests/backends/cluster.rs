//! Redis Cluster: three masters, one cluster for every check here (run in
//! order): the suite in plain TCP and over TLS, and the app's slot moved to
//! another master under a running subscription.

use std::time::Duration;

use bg_state::{
    AppName, Colour, ColourStore, InitRequest, RedisOptions, RedisStore, SwitchRequest,
};
use bg_testkit::{RedisCluster, TlsFiles};

use super::{HISTORY_CAP, conform_on_redis};

fn options() -> RedisOptions {
    RedisOptions {
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
        history_cap: HISTORY_CAP,
        ..RedisOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_master_cluster() {
    let tls = TlsFiles::generate();
    let cluster = RedisCluster::start_tls(3, &tls);
    let url = cluster.url();
    let tls_url = format!("{}?ca={}", cluster.tls_url(), tls.ca().display());
    for url in [&url, &tls_url] {
        conform_on_redis(url, options()).await;
    }

    // The app's slot moves to another master: reads, writes and change
    // hints carry on.
    let app = AppName::new("moving").unwrap();
    let store = RedisStore::with_options(&url, options()).unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let mut changes = store.subscribe(&app).await.unwrap();
    let slot = cluster.slot_of("bg:{moving}:state");
    let from = cluster.owner_of(slot);
    cluster.move_slot(slot, (from + 1) % 3);
    assert_eq!(cluster.owner_of(slot), (from + 1) % 3);
    let state = store.get(&app).await.unwrap().unwrap();
    assert_eq!(state.generation, 1);
    let out = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Green, "t").expect_generation(1),
        )
        .await
        .unwrap();
    assert_eq!(out.state.generation, 2);
    let heard = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let change = changes.recv().await.expect("the subscription runs");
            if change.generation == Some(2) {
                return;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "no change hint after the slot moved");

    // State brought over from a single node with the legacy mirror's ids
    // recorded: its keys cannot be written in this slot, and a switch fails
    // before it changed anything.
    let app = AppName::new("mirrored").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let slot = cluster.slot_of("bg:{mirrored}:state");
    let owner = &cluster.nodes[cluster.owner_of(slot)];
    let _ = owner.cli(&[
        "HSET",
        "bg:{mirrored}:state",
        "mirror_blue",
        "alfa",
        "mirror_green",
        "beta",
    ]);
    let err = store
        .switch(&app, SwitchRequest::new(Colour::Green, "t"))
        .await;
    assert!(
        err.is_err(),
        "a switch wrote lb-status-* across slots: {err:?}"
    );
    let state = store.get(&app).await.unwrap().unwrap();
    assert_eq!(
        (state.active, state.generation),
        (Colour::Blue, 1),
        "a failed switch changed the state"
    );
}
