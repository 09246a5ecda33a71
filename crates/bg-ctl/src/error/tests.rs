use std::time::Duration;

use super::*;

fn unavailable() -> StoreError {
    StoreError::Unavailable {
        backend: "redis",
        message: "connection reset".into(),
        retryable: true,
    }
}

#[test]
fn every_failure_keeps_its_documented_exit_code_and_kind() {
    let cases: Vec<(CtlError, u8, &str)> = vec![
        (CtlError::Usage("bad".into()), exit::USAGE, "usage"),
        (
            GateAhead::Report {
                url: "http://green".into(),
                applied: 9,
                store: 1,
            }
            .into(),
            exit::CONFLICT,
            "gate_ahead",
        ),
        (
            CtlError::LeaseLost(LeaseLost::Expired(unavailable())),
            exit::CONFLICT,
            "lease_lost",
        ),
        (
            CtlError::Timeout(Timeout::Lease(unavailable())),
            exit::TIMEOUT,
            "timeout",
        ),
        (
            CtlError::Unreachable("gate".into()),
            exit::UNREACHABLE,
            "unreachable",
        ),
        (
            CtlError::SwitchUnconfirmed {
                to: Colour::Green,
                source: unavailable(),
            },
            exit::UNREACHABLE,
            "unreachable",
        ),
        (
            CtlError::Smoke(Box::new(CtlError::Timeout(Timeout::Command {
                after: Duration::from_secs(1),
            }))),
            exit::FAILED,
            "failed",
        ),
        (
            CtlError::RollbackRefused(RollbackRefused::NoGate(Colour::Blue)),
            exit::FAILED,
            "failed",
        ),
        (
            CtlError::Restore(RestoreRefused::NothingKnown),
            exit::FAILED,
            "failed",
        ),
        (CtlError::Failed("else".into()), exit::FAILED, "failed"),
        (CtlError::Stopped(15), 143, "stopped"),
        (CtlError::Stopped(2), 130, "stopped"),
        (
            CtlError::Store(unavailable()),
            exit::UNREACHABLE,
            "unavailable",
        ),
    ];
    for (e, code, kind) in cases {
        assert_eq!((e.exit_code(), e.kind()), (code, kind), "{e:?}");
    }
}

#[test]
fn a_gate_ahead_says_how_to_restore_the_store() {
    let one = CtlError::from(GateAhead::Report {
        url: "http://green".into(),
        applied: 9,
        store: 1,
    });
    let many = CtlError::from(GateAhead::Presences {
        store: 1,
        gates: vec![("green-1".into(), 9), ("green-2".into(), 8)],
    });
    assert_eq!(
        one.to_string(),
        "gate http://green applied generation 9 but the store is at 1: the store lost state; \
         restore it with `bg-ctl init --force --from-gate GATE…` (the store holds a state, so it needs --force)"
    );
    assert_eq!(
        many.to_string(),
        "gates are ahead of the store (at generation 1): green-1 (generation 9), green-2 (generation 8); \
         restore it with `bg-ctl init --force --from-gate GATE…` (the store holds a state, so it needs --force)"
    );
}

#[test]
fn an_unconfirmed_switch_says_it_may_have_happened() {
    let e = CtlError::SwitchUnconfirmed {
        to: Colour::Green,
        source: unavailable(),
    };
    assert_eq!(
        e.to_string(),
        "unreachable: the switch to green was sent but never confirmed, so it may or may not have happened: \
         store unavailable (redis): connection reset; retrying may help; check with `bg-ctl status`"
    );
}
