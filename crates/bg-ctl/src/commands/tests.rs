use std::collections::BTreeMap;
use std::time::Duration;

use bg_state::{
    AppName, Colour, ColourStore, DeployPhase, DeployRecord, EventKind, InitRequest, MemoryStore,
    Presence, SwitchRequest,
};

use bg_state::format_millis as at;
use serde_json::json;

use super::{init_from_gates, rollback, status};
use crate::error::{CtlError, RollbackRefused, exit};
use crate::gates::{MockGates, redact};
use crate::output::{Render, to_json};
use crate::testing::{BLUE, GREEN, app, report};

/// What `result` shows people.
fn text(result: &dyn Render) -> String {
    let mut text = String::new();
    result.human(&mut text).unwrap();
    text
}

/// Records a verified deploy of `version` to `colour` and switches to it,
/// as a release does.
async fn released(store: &MemoryStore, app: &AppName, colour: Colour, version: &str) {
    for phase in [DeployPhase::Deploying, DeployPhase::Deployed] {
        store
            .record_deploy(app, DeployRecord::new(colour, version, phase, "ci"))
            .await
            .unwrap();
    }
    store
        .switch(app, SwitchRequest::new(colour, "ci"))
        .await
        .unwrap();
}

/// What green's gate reports in the store.
async fn green_runs(store: &MemoryStore, app: &AppName, version: &str, generation: u64) {
    store
        .report_presence(
            app,
            Presence::new("green-1", Colour::Green, version, generation),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn rollback_targets_the_last_version_live_there() {
    let store = MemoryStore::new();
    let app = AppName::new("chat").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "ops"))
        .await
        .unwrap();
    let urls = BTreeMap::new();
    let gates = MockGates::new();
    let refusal = |e: CtlError| match e {
        CtlError::RollbackRefused(r) => r,
        other => panic!("not a refusal: {other}"),
    };

    // v2 deployed to green and verified, never switched to (--no-switch):
    // never live there, so no rollback target.
    for phase in [DeployPhase::Deploying, DeployPhase::Deployed] {
        store
            .record_deploy(&app, DeployRecord::new(Colour::Green, "v2", phase, "ci"))
            .await
            .unwrap();
    }
    green_runs(&store, &app, "v2", 1).await;
    let err = rollback(&store, &gates, &app, &urls, "ops", None)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::FAILED);
    assert!(
        matches!(
            refusal(err),
            RollbackRefused::NothingRecorded(Colour::Green)
        ),
        "--no-switch made a rollback target"
    );
    assert_eq!(store.get(&app).await.unwrap().unwrap().active, Colour::Blue);

    // Promoted (green live with v2), then v3 released to blue.
    store
        .switch(&app, SwitchRequest::new(Colour::Green, "ci"))
        .await
        .unwrap();
    released(&store, &app, Colour::Blue, "v3").await;

    // A release of v4 to green fails after its trigger: green's record says
    // v4, but the rollback target is still v2.
    store
        .record_deploy(
            &app,
            DeployRecord::new(Colour::Green, "v4", DeployPhase::Deploying, "ci"),
        )
        .await
        .unwrap();
    green_runs(&store, &app, "v4", 3).await;
    let err = rollback(&store, &gates, &app, &urls, "ops", None)
        .await
        .unwrap_err();
    assert!(
        matches!(refusal(err), RollbackRefused::PresenceLags { ref runs, ref want, .. }
            if runs == "v4" && want == "v2"),
        "the failed release became the target"
    );

    // Green still runs v2 (the restart never happened): back to it.
    green_runs(&store, &app, "v2", 3).await;
    let out = rollback(&store, &gates, &app, &urls, "ops", None)
        .await
        .unwrap();
    assert_eq!((out.state.active, out.state.generation), (Colour::Green, 4));
    assert!(out.changed);
    let last = &store.history(&app, 1).await.unwrap()[0];
    assert!(matches!(last.kind, EventKind::Rollback { .. }), "{last:?}");
}

#[tokio::test]
async fn a_retried_rollback_never_makes_the_rolled_back_release_live_again() {
    let store = MemoryStore::new();
    let app = AppName::new("chat").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "ops"))
        .await
        .unwrap();
    released(&store, &app, Colour::Green, "v2").await;
    released(&store, &app, Colour::Blue, "v3").await;
    let (urls, gates) = (BTreeMap::new(), MockGates::new());
    green_runs(&store, &app, "v2", 3).await;
    let out = rollback(&store, &gates, &app, &urls, "ops", None)
        .await
        .unwrap();
    assert_eq!((out.state.active, out.state.generation), (Colour::Green, 4));

    // The answer was lost; the job runs again. Blue, healthy, still runs
    // v3 — the release just rolled back.
    store
        .report_presence(
            &app,
            Presence::new("blue-1", Colour::Blue, "v3", 4),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let again = rollback(&store, &gates, &app, &urls, "ops", None)
        .await
        .unwrap();
    assert!(!again.changed, "{again:?}");
    let s = store.get(&app).await.unwrap().unwrap();
    assert_eq!((s.active, s.generation), (Colour::Green, 4));
}

/// `status` with gate URLs: a line for each, with what it answers, or why
/// it could not be asked; `--json` has its report or the error.
#[tokio::test]
async fn status_shows_what_each_gate_answers() {
    let store = crate::testing::store().await;
    let mut blue = report(Colour::Blue, Colour::Blue, "v1", 1);
    blue.alarm = Some("the store is unreachable".into());
    let mut gates = MockGates::new();
    let answer = blue.clone();
    gates.expect_report().returning(move |url| {
        if url == BLUE {
            Ok(answer.clone())
        } else {
            Err(CtlError::Failed("it answered 404".into()))
        }
    });
    let urls = BTreeMap::from([
        (Colour::Blue, vec![BLUE.to_owned()]),
        (Colour::Green, vec![GREEN.to_owned()]),
    ]);
    let shown = status(&store, &gates, &app(), &urls).await.unwrap();
    let s = store.get(&app()).await.unwrap().unwrap();
    assert_eq!(
        text(&shown),
        format!(
            "app chat: blue is live at generation 1\n  \
             last change: made by ops at {}\n  \
             blue : no deploy recorded\n  \
             green: no deploy recorded\n  \
             lease: free\n  \
             {} (blue): answers OK, runs v1, generation 1, view 20 ms old, ALARM: the store is unreachable\n  \
             {} (green): unreachable: it answered 404\n",
            at(s.last_change.at_ms),
            redact(BLUE),
            redact(GREEN)
        )
    );
    let json = shown.json();
    assert_eq!(json["state"], to_json(&s));
    assert_eq!(
        json["probed"],
        json!([
            {
                "colour": "blue",
                "url": redact(BLUE),
                "report": to_json(&blue),
                "error": null,
            },
            { "colour": "green", "url": redact(GREEN), "report": null, "error": "it answered 404" },
        ])
    );
}

/// `init --from-gate` shows what it restored as `init` does: the state.
#[tokio::test]
async fn init_from_the_gates_shows_the_state_it_restored() {
    let store = MemoryStore::new();
    let mut gates = MockGates::new();
    gates.expect_report().returning(|url| {
        let colour = if url == BLUE {
            Colour::Blue
        } else {
            Colour::Green
        };
        Ok(report(colour, Colour::Green, "v4", 5))
    });
    let urls = [BLUE.to_owned(), GREEN.to_owned()];
    let restored = init_from_gates(
        &store,
        &gates,
        &app(),
        &urls,
        "ops",
        false,
        Some("redis lost its data".into()),
    )
    .await
    .unwrap();
    assert_eq!(text(&restored), "chat: green is live at generation 6\n");
    let s = store.get(&app()).await.unwrap().unwrap();
    assert_eq!(restored.json(), to_json(&s));
    assert_eq!(
        restored.json()["last_change"]["reason"],
        "restored from 2 gate(s) at generation 5: redis lost its data"
    );
    // Green's gate runs v4: what green serves live, for a later rollback.
    assert_eq!(
        s.live_version(Colour::Green).map(|l| l.version.as_str()),
        Some("v4")
    );
}

/// A switch whose answer was lost is sent again with the same request id:
/// the store recognises it as done, and the command succeeds once, instead
/// of failing (exit 5) and leaving a rerun to meet a conflict.
#[tokio::test(start_paused = true)]
async fn a_switch_whose_answer_was_lost_is_sent_again_and_recognised() {
    let real = crate::testing::store().await;
    let store = crate::testing::overlay(&real, crate::testing::FirstAnswerLost::of_a_switch());
    let switched = super::switch(
        &*store,
        &app(),
        Some(Colour::Green),
        None,
        "ops",
        None,
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        switched.json()["state"]["generation"],
        2,
        "{}",
        switched.json()
    );
    let s = real.get(&app()).await.unwrap().unwrap();
    assert_eq!((s.active, s.generation), (Colour::Green, 2));
    assert_eq!(
        real.history(&app(), 10).await.unwrap().len(),
        2,
        "init and one switch"
    );
}
