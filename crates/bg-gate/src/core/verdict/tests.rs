use std::time::Duration;

use bg_state::State;

use crate::core::view::tests::state;

use super::*;
use Colour::{Blue, Green};
use VerdictKind::{Down, Handover, Ok, Stop};

fn view(state: Option<State>, handover: Option<(Colour, Instant)>) -> View {
    View {
        state,
        handover,
        ..View::default()
    }
}

/// Every state a blue gate can be in: the verdict for blue and green, and
/// the colour the push model sends traffic to, which must be the one
/// whose verdict is `Ok`.
#[test]
fn the_push_model_follows_the_verdict_in_every_state() {
    let now = Instant::now();
    let later = now + Duration::from_secs(6);
    let cases = [
        ("cold", view(None, None), true, [Stop, Stop], None),
        (
            "cold, service down",
            view(None, None),
            false,
            [Down, Stop],
            None,
        ),
        (
            "live",
            view(Some(state(Blue, 1)), None),
            true,
            [Ok, Stop],
            Some(Blue),
        ),
        (
            "handover",
            view(Some(state(Green, 2)), Some((Blue, later))),
            true,
            [Handover, Ok],
            Some(Green),
        ),
        (
            "handover over",
            view(Some(state(Green, 2)), Some((Blue, now))),
            true,
            [Stop, Ok],
            Some(Green),
        ),
        (
            "idle",
            view(Some(state(Green, 2)), None),
            true,
            [Stop, Ok],
            Some(Green),
        ),
        (
            "live, service down",
            view(Some(state(Blue, 1)), None),
            false,
            [Down, Stop],
            None,
        ),
        (
            "idle, service down",
            view(Some(state(Green, 2)), None),
            false,
            [Down, Ok],
            Some(Green),
        ),
    ];
    for (name, v, up, [blue, green], push) in cases {
        assert_eq!(decide(&v, Blue, Blue, up, now), blue, "{name}: blue");
        assert_eq!(decide(&v, Green, Blue, up, now), green, "{name}: green");
        let pushed = pushed(&v, Blue, up, now);
        assert_eq!(pushed.map(|(c, _)| c), push, "{name}: pushed");
        if let Some((c, generation)) = pushed {
            assert_eq!(decide(&v, c, Blue, up, now), Ok, "{name}");
            assert_eq!(generation, v.generation(), "{name}");
        }
    }
}

#[test]
fn a_verdict_renders_down_as_stop_in_the_probe_log() {
    let verdict = |kind| Verdict {
        kind,
        generation: 1,
        stale_ms: 0,
    };
    for (kind, answer, ok) in [
        (Ok, Answer::Ok, true),
        (Handover, Answer::Handover, true),
        (Stop, Answer::Stop, false),
        (Down, Answer::Stop, false),
    ] {
        assert_eq!(verdict(kind).answer(), answer, "{kind:?}");
        assert_eq!(verdict(kind).is_ok(), ok, "{kind:?}");
    }
}
