//! What a gate counts for `/metrics`: bumped where the thing happens, read
//! as one snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use super::verdict::{VerdictKind, Via};

fn via_index(via: Via) -> usize {
    match via {
        Via::Http => 0,
        Via::Agent => 1,
    }
}

fn kind_index(kind: VerdictKind) -> usize {
    match kind {
        VerdictKind::Ok => 0,
        VerdictKind::Handover => 1,
        VerdictKind::Stop => 2,
        VerdictKind::Down => 3,
    }
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Answers to load balancers' checks, by front end and verdict.
    answers: [[AtomicU64; 4]; 2],
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
    answers: [[u64; 4]; 2],
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
