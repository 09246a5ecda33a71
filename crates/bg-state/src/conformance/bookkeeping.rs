//! History, input validation, gate presence and change notifications.

use std::time::Duration;

use super::initialised;
use crate::{
    Colour, ColourStore, DeployPhase, DeployRecord, Error, InitRequest, LeaseRequest, Presence,
    SwitchRequest,
};

/// History is newest first, honours the limit and keeps at most `cap` events.
pub async fn history_is_bounded(store: &dyn ColourStore, cap: usize) {
    let app = initialised(store, "history", Colour::Blue).await;
    let switches = cap + 5;
    let mut to = Colour::Green;
    for _ in 0..switches {
        store
            .switch(&app, SwitchRequest::new(to, "h"))
            .await
            .unwrap();
        to = to.other();
    }
    let all = store.history(&app, cap * 10).await.unwrap();
    assert_eq!(all.len(), cap, "history must be capped at {cap}");
    let last_generation = 1 + switches as u64;
    assert_eq!(all[0].generation, last_generation, "newest first");
    assert!(all.windows(2).all(|w| w[0].generation > w[1].generation));
    assert_eq!(store.history(&app, 3).await.unwrap(), all[..3].to_vec());
    assert!(store.history(&app, 0).await.unwrap().is_empty());
    assert_eq!(store.history(&app, usize::MAX).await.unwrap(), all);
}

/// Bad input is refused with `InvalidInput` and changes nothing.
pub async fn bad_input_changes_nothing(store: &dyn ColourStore) {
    let app = initialised(store, "bad-input", Colour::Blue).await;
    let before = store.get(&app).await.unwrap();
    let long = "x".repeat(crate::MAX_NAME_LEN + 1);
    let refusals = [
        store
            .switch(&app, SwitchRequest::new(Colour::Green, ""))
            .await
            .err(),
        store
            .switch(&app, SwitchRequest::new(Colour::Green, long.as_str()))
            .await
            .err(),
        store
            .switch(&app, SwitchRequest::new(Colour::Green, "a\nb"))
            .await
            .err(),
        store
            .switch(
                &app,
                SwitchRequest::new(Colour::Green, "t").expect_generation(0),
            )
            .await
            .err(),
        store
            .switch(
                &app,
                SwitchRequest::new(Colour::Green, "t").expect_generation(crate::MAX_GENERATION + 1),
            )
            .await
            .err(),
        store
            .record_deploy(
                &app,
                DeployRecord::new(Colour::Green, "", DeployPhase::Deploying, "t"),
            )
            .await
            .err(),
        store
            .record_deploy(
                &app,
                DeployRecord::new(Colour::Green, "v 1", DeployPhase::Deploying, "t"),
            )
            .await
            .err(),
        store
            .init(
                &app,
                InitRequest::new(Colour::Green, "t")
                    .force(true)
                    .min_generation(0),
            )
            .await
            .err(),
        store
            .acquire_lease(&app, LeaseRequest::new("h", Duration::ZERO))
            .await
            .err(),
        store
            .acquire_lease(&app, LeaseRequest::new("", Duration::from_secs(1)))
            .await
            .err(),
        store
            .report_presence(
                &app,
                Presence::new("", Colour::Blue, "v1", 1),
                Duration::from_secs(1),
            )
            .await
            .err(),
    ];
    for (i, r) in refusals.into_iter().enumerate() {
        match r {
            Some(Error::InvalidInput(e)) => assert!(!e.reason.is_empty()),
            other => panic!("refusal {i}: expected InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(store.get(&app).await.unwrap(), before);
    assert_eq!(store.history(&app, 10).await.unwrap().len(), 1);
    assert_eq!(store.lease(&app).await.unwrap(), None);
}

/// Gates report themselves; reports lapse after their TTL.
pub async fn presence(store: &dyn ColourStore) {
    let app = initialised(store, "presence", Colour::Blue).await;
    store
        .report_presence(
            &app,
            Presence::new("gate-b1", Colour::Blue, "v1", 1),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    store
        .report_presence(
            &app,
            Presence::new("gate-g1", Colour::Green, "v2", 1),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    let seen = store.presences(&app).await.unwrap();
    let ids: Vec<_> = seen.iter().map(|p| p.gate_id.as_str()).collect();
    assert_eq!(ids, ["gate-b1", "gate-g1"]);
    let g = &seen[1];
    assert_eq!(
        (g.colour, g.service_version.as_str(), g.applied_generation),
        (Colour::Green, "v2", 1)
    );
    assert!(g.seen_at_ms > 0 && g.expires_at_ms > g.seen_at_ms);

    // A newer report replaces the old one.
    store
        .report_presence(
            &app,
            Presence::new("gate-b1", Colour::Blue, "v1", 2),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    let seen = store.presences(&app).await.unwrap();
    assert_eq!(seen.len(), 1, "the lapsed report must be gone: {seen:?}");
    assert_eq!(
        (seen[0].gate_id.as_str(), seen[0].applied_generation),
        ("gate-b1", 2)
    );

    // What a gate says of its connections and load balancers comes back
    // as it was sent; an empty list and a gate that says nothing stay so.
    let mut report = Presence::new("gate-b1", Colour::Blue, "v1", 2);
    report.view_age_ms = Some(120);
    report.websockets = Some(1050);
    report.draining = true;
    report.lb_sources = vec!["10.0.0.5".to_owned(), "::1".to_owned()];
    store
        .report_presence(&app, report.clone(), Duration::from_secs(30))
        .await
        .unwrap();
    let seen = store.presences(&app).await.unwrap();
    let b = &seen[0];
    assert_eq!(
        (
            b.view_age_ms,
            b.websockets,
            b.draining,
            b.lb_sources.clone()
        ),
        (Some(120), Some(1050), true, report.lb_sources),
        "{seen:?}"
    );
    store
        .report_presence(
            &app,
            Presence::new("gate-b1", Colour::Blue, "v1", 2),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let b = &store.presences(&app).await.unwrap()[0];
    assert_eq!(
        (b.view_age_ms, b.websockets, b.draining, b.lb_sources.len()),
        (None, None, false, 0),
        "{b:?}"
    );

    // Too many sources, or a bad one, change nothing.
    for sources in [
        vec!["10.0.0.1".to_owned(); crate::MAX_PRESENCE_SOURCES + 1],
        vec!["bad\nsource".to_owned()],
        vec!["x".repeat(crate::MAX_SOURCE_LEN + 1)],
    ] {
        let mut bad = Presence::new("gate-b1", Colour::Blue, "v9", 2);
        bad.lb_sources = sources;
        let err = store
            .report_presence(&app, bad, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    }
    assert_eq!(
        store.presences(&app).await.unwrap()[0].service_version,
        "v1"
    );
}

/// A subscriber hears of a switch.
pub async fn notifications(store: &dyn ColourStore, within: Duration) {
    let app = initialised(store, "notify", Colour::Blue).await;
    let other = initialised(store, "notify-other", Colour::Blue).await;
    let mut sub = store.subscribe(&app).await.unwrap();
    store
        .switch(&other, SwitchRequest::new(Colour::Green, "n"))
        .await
        .unwrap();
    store
        .switch(&app, SwitchRequest::new(Colour::Green, "n"))
        .await
        .unwrap();
    let change = tokio::time::timeout(within, sub.recv())
        .await
        .expect("no change notification in time")
        .expect("subscription ended");
    assert_eq!(change.app, app, "a change of another app was delivered");
    assert_eq!(change.generation, Some(2));
}
