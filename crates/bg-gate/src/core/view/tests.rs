use bg_state::LastChange;

use super::*;

fn app() -> AppName {
    AppName::new("chat").unwrap()
}

/// A state of `chat` with `active` live at `generation` and nothing else
/// recorded: what the core's unit tests answer from.
pub(in crate::core) fn state(active: Colour, generation: u64) -> State {
    State {
        app: app(),
        active,
        generation,
        last_change: LastChange {
            actor: "test".into(),
            at_ms: 0,
            reason: None,
            forced: false,
            request_id: None,
            fenced: false,
        },
        blue: None,
        green: None,
        blue_live: None,
        green_live: None,
    }
}

const HANDOVER: Duration = Duration::from_secs(6);

#[test]
fn a_higher_generation_is_adopted_and_the_old_colour_hands_over() {
    let now = Instant::now();
    let cold = View::default();
    let first = cold.fold(Ok(Some(state(Colour::Blue, 1))), &app(), HANDOVER, now);
    assert!(first.adopted && first.raised.is_none());
    assert_eq!(first.view.answer(Colour::Blue, now), Answer::Ok);

    let next = first
        .view
        .fold(Ok(Some(state(Colour::Green, 2))), &app(), HANDOVER, now);
    assert!(next.adopted);
    assert_eq!(next.view.generation(), 2);
    assert_eq!(next.view.answer(Colour::Green, now), Answer::Ok);
    assert_eq!(next.view.answer(Colour::Blue, now), Answer::Handover);
    assert_eq!(next.view.answer(Colour::Blue, now + HANDOVER), Answer::Stop);

    // The same generation again confirms, adopts nothing.
    let again = next
        .view
        .fold(Ok(Some(state(Colour::Green, 2))), &app(), HANDOVER, now);
    assert!(!again.adopted && again.raised.is_none());
}

#[test]
fn a_lower_or_lost_state_raises_an_alarm_once_and_keeps_the_known_one() {
    let now = Instant::now();
    let known = View::default()
        .fold(Ok(Some(state(Colour::Green, 5))), &app(), HANDOVER, now)
        .view;
    for read in [Some(state(Colour::Blue, 3)), None] {
        let once = known.fold(Ok(read.clone()), &app(), HANDOVER, now);
        assert!(!once.adopted);
        assert!(once.raised.is_some());
        assert_eq!(once.view.state, known.state);
        let twice = once.view.fold(Ok(read), &app(), HANDOVER, now);
        assert!(twice.raised.is_none(), "the same alarm is raised once");
        assert!(twice.view.alarm.is_some());
    }
}

#[test]
fn a_failed_read_keeps_the_state_and_records_the_error() {
    let now = Instant::now();
    let known = View::default()
        .fold(Ok(Some(state(Colour::Blue, 1))), &app(), HANDOVER, now)
        .view;
    let failed = known.fold(
        Err(bg_state::Error::Unavailable {
            backend: "test",
            message: "down".into(),
            retryable: true,
        }),
        &app(),
        HANDOVER,
        now,
    );
    assert!(!failed.adopted && failed.raised.is_none());
    assert_eq!(failed.view.state, known.state);
    assert!(failed.view.store_error.is_some());
    assert_eq!(failed.view.answer(Colour::Blue, now), Answer::Ok);
}
