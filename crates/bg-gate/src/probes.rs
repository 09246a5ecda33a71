//! The load balancer's recent health checks, as this gate answered them.

use std::collections::VecDeque;
use std::sync::Mutex;

use bg_state::Colour;
use serde::Serialize;

/// One health check the gate answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// The peer address, when the server provides it (axum's
    /// `into_make_service_with_connect_info`); `None` when embedded without it.
    pub source: Option<std::net::IpAddr>,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The colour asked about.
    pub colour: Colour,
    /// `ok`, `handover` or `stop`.
    pub answer: &'static str,
}

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
