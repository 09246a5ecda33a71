use std::time::Duration;

use bg_state::{DeployPhase, DeployRecord, EventKind, MemoryStore};

use super::*;
use crate::error::exit;
use crate::gates::MockGates;

#[tokio::test]
async fn rollback_needs_a_verified_version_that_still_runs() {
    let store = MemoryStore::new();
    let app = AppName::new("chat").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "ops"))
        .await
        .unwrap();
    let urls = BTreeMap::new();
    let gates = MockGates::new();

    // Nothing recorded for green.
    let err = rollback(&store, &gates, &app, &urls, "ops", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CtlError::RollbackRefused(RollbackRefused::NothingRecorded(Colour::Green))
        ),
        "{err}"
    );

    // Recorded, but never verified (a release that failed its smoke test).
    store
        .record_deploy(
            &app,
            DeployRecord::new(Colour::Green, "v2", DeployPhase::Deploying, "ci"),
        )
        .await
        .unwrap();
    let err = rollback(&store, &gates, &app, &urls, "ops", None)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::FAILED);
    assert!(
        matches!(
            err,
            CtlError::RollbackRefused(RollbackRefused::NeverVerified {
                colour: Colour::Green,
                ..
            })
        ),
        "{err}"
    );

    // Verified, but no gate of green says it still runs it.
    store
        .record_deploy(
            &app,
            DeployRecord::new(Colour::Green, "v2", DeployPhase::Deployed, "ci"),
        )
        .await
        .unwrap();
    let err = rollback(&store, &gates, &app, &urls, "ops", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CtlError::RollbackRefused(RollbackRefused::NoGate(Colour::Green))
        ),
        "{err}"
    );

    // Its gate reports it: the rollback goes through, recorded as one.
    store
        .report_presence(
            &app,
            Presence::new("green-1", Colour::Green, "v2", 1),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let out = rollback(&store, &gates, &app, &urls, "ops", None)
        .await
        .unwrap();
    assert_eq!((out.state.active, out.state.generation), (Colour::Green, 2));
    let last = &store.history(&app, 1).await.unwrap()[0];
    assert!(matches!(last.kind, EventKind::Rollback { .. }), "{last:?}");
}
