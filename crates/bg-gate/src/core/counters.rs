//! What a gate counts for `/metrics`: bumped where the thing happens, read
//! as one snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use super::verdict::{VerdictKind, Via};

/// Counters by front end, then by verdict: a new `Via` gets its own
/// without a change here.
type ByViaAndKind<T> = [[T; VerdictKind::ALL.len()]; Via::ALL.len()];

fn via_index(via: Via) -> usize {
    via as usize
}

fn kind_index(kind: VerdictKind) -> usize {
    kind as usize
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Answers to load balancers' checks, by front end and verdict.
    answers: ByViaAndKind<AtomicU64>,
    store_errors: AtomicU64,
    alarms: AtomicU64,
    switches: AtomicU64,
    auth_refusals: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(super) fn answered(&self, via: Via, kind: VerdictKind) {
        bump(&self.answers[via_index(via)][kind_index(kind)]);
    }

    pub(super) fn store_error(&self) {
        bump(&self.store_errors);
    }

    pub(super) fn alarm(&self) {
        bump(&self.alarms);
    }

    pub(super) fn switched(&self) {
        bump(&self.switches);
    }

    pub(super) fn auth_refused(&self) {
        bump(&self.auth_refusals);
    }

    pub(super) fn snapshot(&self) -> Counts {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            answers: self
                .answers
                .each_ref()
                .map(|by_kind| by_kind.each_ref().map(load)),
            store_errors: load(&self.store_errors),
            alarms: load(&self.alarms),
            switches: load(&self.switches),
            auth_refusals: load(&self.auth_refusals),
        }
    }
}

/// The gate's counters at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counts {
    answers: ByViaAndKind<u64>,
    store_errors: u64,
    alarms: u64,
    switches: u64,
    auth_refusals: u64,
}

impl Counts {
    /// Load balancers' checks answered `kind` through `via`.
    pub(crate) fn answers(&self, kind: VerdictKind, via: Via) -> u64 {
        self.answers[via_index(via)][kind_index(kind)]
    }

    /// Failed store reads.
    pub(crate) fn store_errors(&self) -> u64 {
        self.store_errors
    }

    /// Alarms raised.
    pub(crate) fn alarms(&self) -> u64 {
        self.alarms
    }

    /// Switches made through the admin routes that changed the live colour.
    pub(crate) fn switches(&self) -> u64 {
        self.switches
    }

    /// Writes refused for their credentials.
    pub(crate) fn auth_refusals(&self) -> u64 {
        self.auth_refusals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_front_end_and_verdict_has_a_counter_of_its_own() {
        for (i, via) in Via::ALL.into_iter().enumerate() {
            assert_eq!(via_index(via), i, "{via:?}");
        }
        for (i, kind) in VerdictKind::ALL.into_iter().enumerate() {
            assert_eq!(kind_index(kind), i, "{kind:?}");
        }
        let c = Counters::default();
        c.answered(Via::Agent, VerdictKind::Down);
        let counts = c.snapshot();
        for via in Via::ALL {
            for kind in VerdictKind::ALL {
                let n = u64::from(via == Via::Agent && kind == VerdictKind::Down);
                assert_eq!(counts.answers(kind, via), n, "{via:?} {kind:?}");
            }
        }
    }
}
