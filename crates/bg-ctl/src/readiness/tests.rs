use bg_state::Presence;

use super::*;
use crate::gates::ProbeRecord;
use crate::testing::{BLUE, GREEN, report};

const WINDOW: u64 = 20_000;

/// Green, idle while blue is live at generation 4: answering STOP, seen so
/// three times by one load balancer.
fn idle_green() -> GateStatus {
    report(Colour::Green, Colour::Blue, "v1", 4)
}

fn presence(id: &str, colour: Colour, version: &str, generation: u64) -> Presence {
    Presence::new(id, colour, version, generation)
}

#[test]
fn out_of_rotation_needs_stop_seen_one_more_time_than_the_fall_count() {
    let r = idle_green();
    assert_eq!(
        out_of_rotation(&r, GREEN, Colour::Green, 4, 2, WINDOW, &[]).unwrap(),
        Readiness::Ready
    );
    assert_eq!(
        out_of_rotation(&r, GREEN, Colour::Green, 4, 3, WINDOW, &[]).unwrap(),
        Readiness::Pending(NotYet::StopSeen {
            source: "10.0.0.1".into(),
            url: GREEN.into(),
            seen: 3,
            need: 4,
        })
    );
}

#[test]
fn out_of_rotation_waits_for_the_generation_and_for_stop() {
    let mut r = idle_green();
    r.generation = 3;
    assert!(matches!(
        out_of_rotation(&r, GREEN, Colour::Green, 4, 2, WINDOW, &[]).unwrap(),
        Readiness::Pending(NotYet::Generation { at: 3, of: 4, .. })
    ));
    let mut r = idle_green();
    r.answer = GateAnswer::Handover;
    assert_eq!(
        out_of_rotation(&r, GREEN, Colour::Green, 4, 2, WINDOW, &[]).unwrap(),
        Readiness::Pending(NotYet::Answers {
            url: GREEN.into(),
            answer: GateAnswer::Handover
        })
    );
}

#[test]
fn a_gate_of_the_other_colour_or_ahead_of_the_store_is_refused() {
    let r = idle_green();
    let err = out_of_rotation(&r, GREEN, Colour::Blue, 4, 2, WINDOW, &[]).unwrap_err();
    assert!(matches!(err, CtlError::Usage(_)), "{err}");
    let err = runs_fresh(&r, GREEN, Colour::Blue, "v1", 4, 3000).unwrap_err();
    assert!(matches!(err, CtlError::Usage(_)), "{err}");

    let err = out_of_rotation(&r, GREEN, Colour::Green, 3, 2, WINDOW, &[]).unwrap_err();
    assert!(
        matches!(
            err,
            CtlError::GateAhead(GateAhead::Report {
                applied: 4,
                store: 3,
                ..
            })
        ),
        "{err}"
    );
    let err = runs_fresh(&r, GREEN, Colour::Green, "v1", 3, 3000).unwrap_err();
    assert!(matches!(err, CtlError::GateAhead(_)), "{err}");
    assert_eq!(ahead_of(&r, GREEN, 4), None);
}

#[test]
fn gates_ahead_by_presence_are_all_named() {
    let presences = [
        presence("blue-1", Colour::Blue, "v1", 4),
        presence("green-1", Colour::Green, "v2", 6),
        presence("green-2", Colour::Green, "v2", 5),
    ];
    assert_eq!(none_ahead(&presences, 6), Ok(()));
    assert_eq!(
        none_ahead(&presences, 4),
        Err(GateAhead::Presences {
            store: 4,
            gates: vec![("green-1".into(), 6), ("green-2".into(), 5)],
        })
    );
}

#[test]
fn drained_means_no_websocket_and_no_request() {
    let counts = |websockets, requests| {
        [(
            GREEN,
            ConnectionCounts {
                websockets: Some(websockets),
                requests,
                ..ConnectionCounts::default()
            },
        )]
    };
    assert_eq!(drained(counts(0, 0)), Readiness::Ready);
    assert_eq!(
        drained(counts(0, 2)),
        Readiness::Pending(NotYet::Busy {
            websockets: 0,
            requests: 2
        })
    );
    assert!(matches!(
        drained(counts(5, 0)),
        Readiness::Pending(NotYet::Busy { websockets: 5, .. })
    ));
    // A gate that cannot count holds the drain, whatever the others say.
    let [counted] = counts(0, 0);
    let uncounted = (BLUE, ConnectionCounts::default());
    assert_eq!(
        drained([counted, uncounted]),
        Readiness::Pending(NotYet::Uncounted { url: BLUE.into() })
    );
}

#[test]
fn the_new_version_must_run_with_a_fresh_view_at_the_stores_generation() {
    let mut r = report(Colour::Green, Colour::Blue, "v2", 4);
    assert_eq!(
        runs_fresh(&r, GREEN, Colour::Green, "v2", 4, 3000).unwrap(),
        Readiness::Ready
    );
    assert_eq!(
        runs_fresh(&r, GREEN, Colour::Green, "v3", 4, 3000).unwrap(),
        Readiness::Pending(NotYet::Runs {
            url: GREEN.into(),
            version: "v2".into()
        })
    );
    r.stale_ms = 3001;
    assert_eq!(
        runs_fresh(&r, GREEN, Colour::Green, "v2", 4, 3000).unwrap(),
        Readiness::Pending(NotYet::Deaf {
            url: GREEN.into(),
            stale_ms: 3001
        })
    );
    r.stale_ms = 20;
    r.store.healthy = false;
    assert!(matches!(
        runs_fresh(&r, GREEN, Colour::Green, "v2", 4, 3000).unwrap(),
        Readiness::Pending(NotYet::Deaf { .. })
    ));
    r.store.healthy = true;
    r.generation = 3;
    assert!(matches!(
        runs_fresh(&r, GREEN, Colour::Green, "v2", 4, 3000).unwrap(),
        Readiness::Pending(NotYet::Generation { at: 3, of: 4, .. })
    ));
}

#[test]
fn without_a_bound_only_a_store_the_gate_cannot_hear_counts_as_deaf() {
    let mut r = report(Colour::Green, Colour::Blue, "v1", 4);
    r.stale_ms = 60_000;
    assert_eq!(runs_version(&r, GREEN, "v1", 4, None), Readiness::Ready);
    r.store.healthy = false;
    assert!(matches!(
        runs_version(&r, GREEN, "v1", 4, None),
        Readiness::Pending(NotYet::Deaf { .. })
    ));
}

#[test]
fn presences_of_the_colour_must_exist_and_all_run_the_version() {
    let blue_only = [presence("blue-1", Colour::Blue, "v1", 4)];
    assert_eq!(
        presences_run(&blue_only, Colour::Green, "v2", 4),
        Readiness::Pending(NotYet::NoPresence(Colour::Green))
    );
    let greens = [
        presence("green-1", Colour::Green, "v2", 4),
        presence("green-2", Colour::Green, "v1", 4),
    ];
    assert_eq!(
        presences_run(&greens, Colour::Green, "v2", 4),
        Readiness::Pending(NotYet::PresenceLags {
            gate: "green-2".into(),
            version: "v1".into(),
            generation: 4
        })
    );
    assert!(matches!(
        presences_run(&greens[..1], Colour::Green, "v2", 3),
        Readiness::Pending(NotYet::PresenceLags { generation: 4, .. })
    ));
    assert_eq!(
        presences_run(&greens[..1], Colour::Green, "v2", 4),
        Readiness::Ready
    );
}

#[test]
fn the_load_balancer_must_have_seen_each_colour_answer_often_enough() {
    let r = report(Colour::Green, Colour::Green, "v2", 5);
    assert_eq!(
        lb_has_seen(
            &r,
            Colour::Green,
            GateAnswer::Ok,
            3,
            WINDOW,
            &lb_sources(&r, WINDOW)
        ),
        Ok(1)
    );
    assert_eq!(
        lb_has_seen(
            &r,
            Colour::Green,
            GateAnswer::Ok,
            4,
            WINDOW,
            &lb_sources(&r, WINDOW)
        ),
        Err(NotYet::LbUnseen {
            source: "10.0.0.1".into(),
            colour: Colour::Green,
            answer: GateAnswer::Ok,
            seen: 3,
            need: 4,
        })
    );
    // Still answering OK where STOP is due: none in a row.
    assert!(matches!(
        lb_has_seen(
            &r,
            Colour::Green,
            GateAnswer::Stop,
            1,
            WINDOW,
            &lb_sources(&r, WINDOW)
        ),
        Err(NotYet::LbUnseen { seen: 0, .. })
    ));
    let mut quiet = r.clone();
    quiet.probes.clear();
    assert_eq!(
        lb_has_seen(
            &quiet,
            Colour::Green,
            GateAnswer::Ok,
            2,
            WINDOW,
            &lb_sources(&quiet, WINDOW)
        ),
        Ok(0)
    );
    // Every source counts, not only the first.
    let mut two = r;
    for answer in [GateAnswer::Stop, GateAnswer::Stop, GateAnswer::Ok] {
        two.probes.push(ProbeRecord {
            source: Some([10, 0, 0, 2].into()),
            at_ms: 0,
            colour: Colour::Green,
            answer,
        });
    }
    assert!(matches!(
        lb_has_seen(&two, Colour::Green, GateAnswer::Ok, 2, WINDOW, &lb_sources(&two, WINDOW)),
        Err(NotYet::LbUnseen { ref source, seen: 1, .. }) if source == "10.0.0.2"
    ));
}

#[test]
fn reasons_read_as_before() {
    let cases = [
        (
            NotYet::Generation {
                url: GREEN.into(),
                at: 3,
                of: 4,
            },
            "http://green is at generation 3 of 4",
        ),
        (
            NotYet::Runs {
                url: GREEN.into(),
                version: "v1".into(),
            },
            "http://green runs v1",
        ),
        (
            NotYet::StopSeen {
                source: "lb1".into(),
                url: GREEN.into(),
                seen: 1,
                need: 4,
            },
            "lb1 has seen STOP 1 of 4 times at http://green",
        ),
        (
            NotYet::Busy {
                websockets: 2,
                requests: 1,
            },
            "2 websockets open, 1 requests in flight",
        ),
        (NotYet::NoProbes, "no load balancer probes seen at any gate"),
    ];
    for (why, text) in cases {
        assert_eq!(why.to_string(), text);
    }
}

fn probe(src: [u8; 4], colour: Colour, answer: GateAnswer) -> ProbeRecord {
    ProbeRecord {
        source: Some(src.into()),
        at_ms: 0,
        colour,
        answer,
    }
}

#[test]
fn streaks_count_the_latest_run_per_source() {
    let (lb1, lb2) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let mut r = idle_green();
    r.probes = vec![
        probe(lb1, Colour::Green, GateAnswer::Stop),
        probe(lb1, Colour::Green, GateAnswer::Ok),
        probe(lb2, Colour::Green, GateAnswer::Stop),
        probe(lb1, Colour::Green, GateAnswer::Stop),
        probe(lb1, Colour::Blue, GateAnswer::Ok),
        probe(lb1, Colour::Green, GateAnswer::Stop),
        probe(lb2, Colour::Green, GateAnswer::Stop),
        probe(lb2, Colour::Green, GateAnswer::Stop),
    ];
    let mut s = streaks(&r, Colour::Green, GateAnswer::Stop, 10_000);
    s.sort();
    assert_eq!(
        s,
        vec![("10.0.0.1".to_owned(), 2), ("10.0.0.2".to_owned(), 3)]
    );

    // A source that stopped probing long before the others is not a load balancer.
    for (i, p) in r.probes.iter_mut().enumerate() {
        p.at_ms = 100_000 + i as u64 * 1000;
    }
    r.probes[2].at_ms = 1; // lb2's first probe, long ago
    r.probes[6].source = Some([192, 168, 1, 20].into()); // someone's laptop
    r.probes[6].at_ms = 2;
    let mut s = streaks(&r, Colour::Green, GateAnswer::Stop, 10_000);
    s.sort();
    assert_eq!(s, vec![("10.0.0.1".to_owned(), 2)]);
}

#[test]
fn only_regular_probing_makes_a_load_balancer() {
    let (lb, person) = ([10, 0, 0, 1], [192, 168, 1, 20]);
    let at = |src, at_ms| ProbeRecord {
        at_ms,
        ..probe(src, Colour::Green, GateAnswer::Stop)
    };
    let mut r = idle_green();
    // A load balancer every 2 s; someone's curl, once, the newest probe.
    r.probes = (0..5).map(|i| at(lb, 10_000 + i * 2000)).collect();
    r.probes.push(at(person, 19_500));
    let s = streaks(&r, Colour::Green, GateAnswer::Stop, 20_000);
    assert_eq!(s, vec![("10.0.0.1".to_owned(), 5)]);
    // Alone, the curl is no load balancer either: nobody to wait for.
    r.probes = vec![at(person, 19_500)];
    assert_eq!(streaks(&r, Colour::Green, GateAnswer::Stop, 20_000), vec![]);
    // A few by hand, at whatever pace: still not.
    r.probes = vec![at(person, 1_000), at(person, 1_400), at(person, 9_000)];
    assert_eq!(streaks(&r, Colour::Green, GateAnswer::Stop, 20_000), vec![]);
    // Steady, with a little jitter: yes.
    assert!(steady(&[0, 2_000, 4_100, 5_900, 8_000]));
    assert!(!steady(&[0, 400, 8_000]));
    // HAProxy at `inter 5s`, then `fastinter 100ms` while the server goes down.
    assert!(steady(&[0, 5_000, 10_000, 15_000, 15_100, 15_200]));
}

#[test]
fn named_load_balancers_count_from_their_first_probe() {
    let slow_lb = [10, 0, 0, 9];
    let at = |at_ms| ProbeRecord {
        at_ms,
        ..probe(slow_lb, Colour::Green, GateAnswer::Stop)
    };
    let mut r = idle_green();
    // A load balancer checking every 30 s: one probe in a 20 s window.
    r.probes = vec![at(0), at(30_000)];
    assert_eq!(
        streaks(&r, Colour::Green, GateAnswer::Stop, 20_000),
        vec![],
        "unnamed, it is not recognised by its pace"
    );
    // Named with --lb-source, the gate logs only load balancers: it counts,
    // and the release waits for it.
    r.named_lb_sources = true;
    assert_eq!(
        streaks(&r, Colour::Green, GateAnswer::Stop, 20_000),
        vec![("10.0.0.9".to_owned(), 2)]
    );
    assert_eq!(
        out_of_rotation(&r, GREEN, Colour::Green, 4, 2, 20_000, &[]).unwrap(),
        Readiness::Pending(NotYet::StopSeen {
            source: "10.0.0.9".into(),
            url: GREEN.into(),
            seen: 2,
            need: 3,
        })
    );
}

#[test]
fn a_load_balancer_found_at_one_gate_counts_at_a_gate_just_restarted() {
    let lb = [10, 0, 0, 1];
    let mut old = idle_green();
    old.probes = (0..5)
        .map(|i| ProbeRecord {
            at_ms: i * 2000,
            ..probe(lb, Colour::Green, GateAnswer::Stop)
        })
        .collect();
    let lbs = lb_sources(&old, WINDOW);
    assert_eq!(lbs, vec!["10.0.0.1".to_owned()]);
    // The restarted gate has seen it once: alone, not yet a load balancer;
    // known from the other gate, it has to have seen OK `need` times.
    let mut new = report(Colour::Blue, Colour::Blue, "v2", 5);
    new.probes = vec![probe(lb, Colour::Blue, GateAnswer::Ok)];
    assert_eq!(
        lb_has_seen(
            &new,
            Colour::Blue,
            GateAnswer::Ok,
            2,
            WINDOW,
            &lb_sources(&new, WINDOW)
        ),
        Ok(0)
    );
    assert!(matches!(
        lb_has_seen(&new, Colour::Blue, GateAnswer::Ok, 2, WINDOW, &lbs),
        Err(NotYet::LbUnseen {
            seen: 1,
            need: 2,
            ..
        })
    ));
    // Step 3 the same way: an idle gate restarted a moment ago.
    let mut idle = idle_green();
    idle.probes = vec![probe(lb, Colour::Green, GateAnswer::Stop)];
    assert_eq!(
        out_of_rotation(&idle, GREEN, Colour::Green, 4, 2, WINDOW, &[]).unwrap(),
        Readiness::Ready
    );
    assert!(matches!(
        out_of_rotation(&idle, GREEN, Colour::Green, 4, 2, WINDOW, &lbs).unwrap(),
        Readiness::Pending(NotYet::StopSeen {
            seen: 1,
            need: 3,
            ..
        })
    ));
}

#[test]
fn a_sidecar_whose_service_is_down_does_not_run_the_version() {
    let mut r = report(Colour::Green, Colour::Blue, "v2", 4);
    r.service = Some(bg_state::wire::ServiceHealth {
        url: "http://127.0.0.1:3000".into(),
        up: false,
        version: Some("v2".into()),
        websockets: Some(0),
        error: Some("GET /health: cannot connect".into()),
    });
    let pending = runs_fresh(&r, GREEN, Colour::Green, "v2", 4, 3000).unwrap();
    assert_eq!(
        pending,
        Readiness::Pending(NotYet::ServiceDown {
            url: GREEN.into(),
            error: Some("GET /health: cannot connect".into()),
        })
    );
    r.service.as_mut().unwrap().up = true;
    assert_eq!(
        runs_fresh(&r, GREEN, Colour::Green, "v2", 4, 3000).unwrap(),
        Readiness::Ready
    );
}
