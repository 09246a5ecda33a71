//! Request ids: a write retried under the id of a write that happened is
//! recognised as done (one effect, the same answer); under another id it
//! meets the same rules as any new write.

use std::time::Duration;

use super::{fresh_app, initialised};
use crate::{
    Colour, ColourStore, DeployPhase, DeployRecord, Error, EventKind, InitRequest, Presence,
    SwitchRequest,
};

/// An init, forced or not, retried under its request id answers the state
/// it made and records one event; a second init under another id is
/// refused as before.
pub async fn init_retries_are_recognised(store: &dyn ColourStore) {
    let app = fresh_app("init-retry");
    let req = InitRequest::new(Colour::Blue, "ops").request_id("job-1-init");
    let first = store.init(&app, req.clone()).await.unwrap();
    assert_eq!(first.last_change.request_id.as_deref(), Some("job-1-init"));
    let again = store
        .init(&app, req)
        .await
        .expect("a retried init under its request id is its own success");
    assert_eq!(again, first);
    assert_eq!(store.history(&app, 10).await.unwrap().len(), 1);

    let err = store
        .init(
            &app,
            InitRequest::new(Colour::Blue, "ops").request_id("job-2-init"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyInitialised { .. }), "{err:?}");
    let err = store
        .init(&app, InitRequest::new(Colour::Blue, "ops"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyInitialised { .. }), "{err:?}");

    // A forced init retried does not go up a second time.
    let forced = InitRequest::new(Colour::Green, "ops")
        .force(true)
        .request_id("job-3-init");
    let first = store.init(&app, forced.clone()).await.unwrap();
    assert_eq!((first.active, first.generation), (Colour::Green, 2));
    let again = store.init(&app, forced).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(store.history(&app, 10).await.unwrap().len(), 2);
    // Another forced init does.
    let other = store
        .init(
            &app,
            InitRequest::new(Colour::Green, "ops")
                .force(true)
                .request_id("job-4-init"),
        )
        .await
        .unwrap();
    assert_eq!(other.generation, 3);
}

/// A rollback retried under its request id is recognised like a switch.
pub async fn rollback_retries_are_recognised(store: &dyn ColourStore) {
    let app = initialised(store, "rollback-retry", Colour::Blue).await;
    store
        .switch(&app, SwitchRequest::new(Colour::Green, "ci"))
        .await
        .unwrap();
    let req = SwitchRequest::new(Colour::Blue, "ops")
        .rollback(true)
        .expect_generation(2)
        .request_id("job-5-rollback");
    let first = store.switch(&app, req.clone()).await.unwrap();
    assert!(first.changed);
    let again = store.switch(&app, req).await.unwrap();
    assert!(!again.changed);
    assert_eq!(again.state, first.state);
    let events = store.history(&app, 10).await.unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    // Under another id, the expectation is stale: today's conflict.
    let err = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Blue, "ops")
                .rollback(true)
                .expect_generation(2)
                .request_id("job-6-rollback"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
}

/// A deploy record retried under its request id is one record, even once
/// its colour went live; under another id it is recorded again, and the
/// live colour is refused as before.
pub async fn deploy_retries_are_recognised(store: &dyn ColourStore) {
    let app = initialised(store, "deploy-retry", Colour::Blue).await;
    let rec = DeployRecord::new(Colour::Green, "v2", DeployPhase::Deployed, "ci")
        .request_id("job-7-deployed");
    let first = store.record_deploy(&app, rec.clone()).await.unwrap();
    let recorded = first.deployment(Colour::Green).unwrap();
    assert_eq!(recorded.request_id.as_deref(), Some("job-7-deployed"));
    let again = store
        .record_deploy(&app, rec.clone())
        .await
        .expect("a retried deploy record under its request id is its own success");
    assert_eq!(again, first);
    let deploys = |events: Vec<crate::Event>| {
        events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Deploy { .. }))
            .count()
    };
    assert_eq!(deploys(store.history(&app, 10).await.unwrap()), 1);

    // Another id is another record.
    store
        .record_deploy(
            &app,
            DeployRecord::new(Colour::Green, "v2", DeployPhase::Deployed, "ci")
                .request_id("job-8-deployed"),
        )
        .await
        .unwrap();
    assert_eq!(deploys(store.history(&app, 10).await.unwrap()), 2);

    // Once green is live, a retry of its record is still done...
    let rec = DeployRecord::new(Colour::Green, "v3", DeployPhase::Deployed, "ci")
        .request_id("job-9-deployed");
    store.record_deploy(&app, rec.clone()).await.unwrap();
    store
        .switch(&app, SwitchRequest::new(Colour::Green, "ci"))
        .await
        .unwrap();
    let done = store
        .record_deploy(&app, rec)
        .await
        .expect("a retry of a record made before its colour went live");
    assert_eq!(done.active, Colour::Green);
    assert_eq!(deploys(store.history(&app, 10).await.unwrap()), 3);
    // ...and a new record for the live colour is refused.
    let err = store
        .record_deploy(
            &app,
            DeployRecord::new(Colour::Green, "v3", DeployPhase::Deployed, "ci")
                .request_id("job-10-deployed"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DeployToLive { .. }), "{err:?}");
}

/// A presence report retried under its request id changes nothing; a new
/// report replaces it.
pub async fn presence_retries_are_recognised(store: &dyn ColourStore) {
    let app = initialised(store, "presence-retry", Colour::Blue).await;
    let ttl = Duration::from_secs(30);
    let report = Presence::new("gate-1", Colour::Blue, "v1", 1).request_id("gate-1-report-1");
    store
        .report_presence(&app, report.clone(), ttl)
        .await
        .unwrap();
    let first = store.presences(&app).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].request_id.as_deref(), Some("gate-1-report-1"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.report_presence(&app, report, ttl).await.unwrap();
    assert_eq!(
        store.presences(&app).await.unwrap(),
        first,
        "a retried report was written again"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .report_presence(
            &app,
            Presence::new("gate-1", Colour::Blue, "v1", 2).request_id("gate-1-report-2"),
            ttl,
        )
        .await
        .unwrap();
    let now = store.presences(&app).await.unwrap();
    assert_eq!(now[0].applied_generation, 2);
    assert!(now[0].seen_at_ms > first[0].seen_at_ms);
}
