//! The deploy lease's fence is its holder's secret: drawn at random, never
//! told to anyone but the caller that took the lease, and never part of the
//! state or history anyone may read.

use std::time::Duration;

use super::{Config, initialised};
use crate::{
    Colour, ColourStore, DeployPhase, DeployRecord, Error, LeaseRequest, MAX_GENERATION,
    SwitchRequest,
};

/// Whether `fence` appears in `text` as a number of its own (not as part
/// of a longer run of digits, such as a timestamp).
#[must_use]
pub fn shows_fence(text: &str, fence: u64) -> bool {
    let digits = fence.to_string();
    text.match_indices(&digits).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + digits.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

fn assert_hidden(what: &str, text: &str, fence: u64) {
    assert!(
        !shows_fence(text, fence),
        "{what} shows the live fence {fence}: {text}"
    );
}

/// A fence valid to present that is not `fence`.
fn another(fence: u64) -> u64 {
    fence % MAX_GENERATION + 1
}

/// Fences cannot be guessed: not the clock, not a sequence. A fence is in
/// `1..=MAX_GENERATION` and never the one issued just before.
pub async fn fences_are_unguessable(store: &dyn ColourStore) {
    let app = initialised(store, "fences", Colour::Blue).await;
    let ttl = Duration::from_secs(30);
    let mut fences: Vec<u64> = Vec::new();
    for i in 0..12 {
        let l = store
            .acquire_lease(&app, LeaseRequest::new(format!("job-{i}"), ttl))
            .await
            .unwrap();
        assert!(
            (1..=MAX_GENERATION).contains(&l.fence),
            "fence {} out of range",
            l.fence
        );
        assert_ne!(
            l.fence, l.acquired_at_ms,
            "the fence is the acquisition time"
        );
        if let Some(last) = fences.last() {
            assert_ne!(l.fence, *last, "a fence was issued twice in a row");
        }
        fences.push(l.fence);
        assert!(store.release_lease(&app, l.fence).await.unwrap());
    }
    let (lo, hi) = (fences.iter().min().unwrap(), fences.iter().max().unwrap());
    // Twelve draws from 10^14 values spread over more than 10^9 but for a
    // chance of about 10^-55; a counter or a clock spreads over a few.
    assert!(
        hi - lo > 1_000_000_000,
        "the fences lie close together: {fences:?}"
    );
    // Twelve draws come out sorted once in 12! (about 5 * 10^8) runs.
    assert!(
        fences.windows(2).any(|w| w[0] > w[1]),
        "the fences only grow: {fences:?}"
    );
}

/// Nobody but the caller that took the lease learns its fence from the
/// store: not a refusal of another caller (a held lease, a stale fence),
/// not the state after a switch made under the lease, not the history.
pub async fn fences_stay_with_the_holder(store: &dyn ColourStore) {
    let app = initialised(store, "secret", Colour::Blue).await;
    let ttl = Duration::from_secs(30);
    let a = store
        .acquire_lease(&app, LeaseRequest::new("pipeline-a", ttl))
        .await
        .unwrap();
    let f = a.fence;
    let shown = |e: &Error| format!("{e} {e:?}");

    let err = store
        .acquire_lease(&app, LeaseRequest::new("pipeline-b", ttl))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseHeld { .. }), "{err:?}");
    assert_hidden("a lease_held refusal", &shown(&err), f);
    let err = store
        .switch(&app, SwitchRequest::new(Colour::Green, "pipeline-b"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseHeld { .. }), "{err:?}");
    assert_hidden("a switch's lease_held refusal", &shown(&err), f);
    let err = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Green, "pipeline-b").fence(another(f)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StaleFence { .. }), "{err:?}");
    assert_hidden("a stale_fence refusal", &shown(&err), f);
    let err = store
        .record_deploy(
            &app,
            DeployRecord::new(Colour::Green, "v2", DeployPhase::Deploying, "pipeline-b")
                .fence(another(f)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StaleFence { .. }), "{err:?}");
    assert_hidden("a deploy's stale_fence refusal", &shown(&err), f);
    let err = store.renew_lease(&app, another(f), ttl).await.unwrap_err();
    assert!(matches!(err, Error::StaleFence { .. }), "{err:?}");
    assert_hidden("a renewal's stale_fence refusal", &shown(&err), f);

    // A switch under the lease, and its retry, leave no trace of the fence
    // in what every reader sees.
    let req = SwitchRequest::new(Colour::Green, "pipeline-a").fence(f);
    let out = store.switch(&app, req.clone()).await.unwrap();
    assert!(out.changed);
    assert!(out.state.last_change.fenced, "{:?}", out.state);
    let retry = store.switch(&app, req).await.unwrap();
    assert!(!retry.changed, "the retry under the same fence switched");
    let state = store.get(&app).await.unwrap().unwrap();
    assert_hidden("the state", &format!("{state:?}"), f);
    assert_hidden(
        "the state as JSON",
        &serde_json::to_string(&state).unwrap(),
        f,
    );
    let history = store.history(&app, 10).await.unwrap();
    assert_hidden("the history", &format!("{history:?}"), f);
    let err = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Blue, "pipeline-b").expect_generation(1),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_hidden("a conflict", &shown(&err), f);
    assert!(store.release_lease(&app, f).await.unwrap());
}

/// A lease records the credential that took it (its owner) as the request
/// names it, or as the store's credentials do (`cfg.credential_owner`).
/// Acquiring again as the same holder returns the lease, its fence with it,
/// only to the same owner: another one is refused, and learns no fence.
pub async fn leases_are_bound_to_their_owner(store: &dyn ColourStore, cfg: &Config) {
    let app = initialised(store, "owner", Colour::Blue).await;
    let ttl = Duration::from_secs(30);
    let owner = cfg
        .credential_owner
        .as_deref()
        .unwrap_or("token:pipeline-a");
    let a = store
        .acquire_lease(
            &app,
            LeaseRequest::new("pipeline-a", ttl).owner("token:pipeline-a"),
        )
        .await
        .unwrap();
    assert_eq!(a.owner.as_deref(), Some(owner));
    let held = store.lease(&app).await.unwrap().expect("a lease is held");
    assert_eq!(held.owner.as_deref(), Some(owner));
    let again = store
        .acquire_lease(
            &app,
            LeaseRequest::new("pipeline-a", ttl).owner("token:pipeline-a"),
        )
        .await
        .unwrap();
    assert_eq!(
        again.fence, a.fence,
        "the owner's re-acquire lost the fence"
    );

    if cfg.credential_owner.is_none() {
        for other in [
            LeaseRequest::new("pipeline-a", ttl).owner("token:pipeline-b"),
            LeaseRequest::new("pipeline-a", ttl),
        ] {
            let err = store.acquire_lease(&app, other).await.unwrap_err();
            assert!(
                matches!(&err, Error::LeaseHeld { holder, .. } if holder == "pipeline-a"),
                "{err:?}"
            );
            assert_hidden(
                "another owner's refusal",
                &format!("{err} {err:?}"),
                a.fence,
            );
        }
        assert_eq!(
            store.lease(&app).await.unwrap().map(|l| l.expires_at_ms),
            Some(again.expires_at_ms),
            "a refused acquire extended the lease"
        );
    }
    assert!(store.release_lease(&app, a.fence).await.unwrap());
}
