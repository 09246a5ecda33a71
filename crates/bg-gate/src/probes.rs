//! The load balancer's recent health checks, as this gate answered them.

use std::collections::VecDeque;
use std::sync::Mutex;

/// One health check the gate answered, as `GET /bg/state` reports it.
pub use bg_state::wire::ProbeRecord as Probe;

/// A bounded log of probes, newest last.
#[derive(Debug)]
pub struct ProbeLog {
    cap: usize,
    entries: Mutex<VecDeque<Probe>>,
}

impl ProbeLog {
    pub(crate) fn new(cap: usize) -> Self {
        ProbeLog {
            cap,
            entries: Mutex::new(VecDeque::with_capacity(cap)),
        }
    }

    pub(crate) fn record(&self, probe: Probe) {
        if self.cap == 0 {
            return;
        }
        let mut e = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if e.len() == self.cap {
            e.pop_front();
        }
        e.push_back(probe);
    }

    /// The probes remembered, oldest first.
    #[must_use]
    pub fn snapshot(&self) -> Vec<Probe> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}
