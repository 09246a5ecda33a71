//! The load balancer's recent health checks, as this gate answered them: a
//! bounded ring per source, in a table with a bounded number of sources, so
//! a burst from one source never evicts another source's probes; and the
//! address ranges (`--lb-source`) that say who the load balancers are.
//!
//! Recording takes no lock: a probe is packed into one `u64` and stored in
//! its source's ring with atomics. Only a source not seen before takes the
//! table's lock, to claim a slot.
//!
//! A leaf: it knows the wire types of `bg_state` and nothing of the gate
//! that feeds it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use bg_state::Colour;
use bg_state::wire::GateAnswer as Answer;

/// One health check the gate answered, as `GET /bg/state` reports it.
pub use bg_state::wire::ProbeRecord as Probe;

/// How many sources the probe log keeps probes of.
pub const MAX_PROBE_SOURCES: usize = 32;

/// A source whose newest probe is older than this may give its slot to a
/// new source when the table is full: load balancers probe every few
/// seconds, so a slot this quiet is not one.
const STALE_SOURCE_MS: u64 = 5 * 60 * 1000;

/// The probes of one source, newest overwriting oldest.
#[derive(Debug)]
struct Ring {
    source: Option<IpAddr>,
    /// Packed probes (see [`pack`]); 0 is an empty entry.
    entries: Box<[AtomicU64]>,
    next: AtomicUsize,
    newest_ms: AtomicU64,
}

impl Ring {
    fn new(source: Option<IpAddr>, cap: usize) -> Self {
        Ring {
            source,
            entries: (0..cap).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicUsize::new(0),
            newest_ms: AtomicU64::new(0),
        }
    }

    fn record(&self, packed: u64, at_ms: u64) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.entries.len();
        self.entries[i].store(packed, Ordering::Release);
        self.newest_ms.fetch_max(at_ms, Ordering::Relaxed);
    }
}

/// A bounded log of probes: up to `cap` per source, of up to
/// [`MAX_PROBE_SOURCES`] sources.
#[derive(Debug)]
pub struct ProbeLog {
    cap: usize,
    /// Only probes from these ranges are logged; all when empty.
    lb_sources: Vec<LbSource>,
    slots: Box<[ArcSwapOption<Ring>]>,
    /// Taken only to claim a slot for a new source.
    claiming: Mutex<()>,
}

/// A probe in one word: the time in the high bits, colour and answer in
/// the low three. Never 0 (the time is never 0).
fn pack(at_ms: u64, colour: Colour, answer: Answer) -> u64 {
    let colour = match colour {
        Colour::Blue => 0,
        Colour::Green => 1,
    };
    let answer = match answer {
        Answer::Ok => 0,
        Answer::Handover => 1,
        Answer::Stop => 2,
    };
    (at_ms.max(1) << 3) | (colour << 2) | answer
}

fn unpack(source: Option<IpAddr>, packed: u64) -> Probe {
    Probe {
        source,
        at_ms: packed >> 3,
        colour: if packed & 4 == 0 {
            Colour::Blue
        } else {
            Colour::Green
        },
        answer: match packed & 3 {
            0 => Answer::Ok,
            1 => Answer::Handover,
            _ => Answer::Stop,
        },
    }
}

impl ProbeLog {
    /// A log of up to `cap` probes per source, of the sources in
    /// `lb_sources` (of any source when it is empty).
    pub(crate) fn new(cap: usize, lb_sources: Vec<LbSource>) -> Self {
        ProbeLog {
            cap,
            lb_sources,
            slots: (0..MAX_PROBE_SOURCES)
                .map(|_| ArcSwapOption::empty())
                .collect(),
            claiming: Mutex::new(()),
        }
    }

    /// Records `packed` in the ring of `source`, if it has one; whether it
    /// had. On the health path: a guard per slot looked at, no reference
    /// count touched.
    fn record_known(&self, source: Option<IpAddr>, packed: u64, at_ms: u64) -> bool {
        for slot in &*self.slots {
            let ring = slot.load();
            match &*ring {
                Some(r) if r.source == source => {
                    r.record(packed, at_ms);
                    return true;
                }
                Some(_) => {}
                // Slots are claimed in order and never emptied.
                None => return false,
            }
        }
        false
    }

    /// Logs a check of `colour` from `source`, answered `answer`, stamped
    /// now — unless `--lb-source` names the load balancers and `source` is
    /// not one. Takes no lock shared with other checks.
    pub(crate) fn record(&self, source: Option<IpAddr>, colour: Colour, answer: Answer) {
        let from_lb = self.lb_sources.is_empty()
            || source.is_some_and(|ip| self.lb_sources.iter().any(|r| r.contains(ip)));
        if self.cap == 0 || !from_lb {
            return;
        }
        self.record_at(Probe {
            source,
            at_ms: unix_ms(),
            colour,
            answer,
        });
    }

    fn record_at(&self, probe: Probe) {
        let packed = pack(probe.at_ms, probe.colour, probe.answer);
        if self.record_known(probe.source, packed, probe.at_ms) {
            return;
        }
        let _claiming = self.claiming.lock().unwrap_or_else(PoisonError::into_inner);
        // Another request may have claimed it meanwhile.
        if self.record_known(probe.source, packed, probe.at_ms) {
            return;
        }
        let free = self.slots.iter().find(|s| s.load().is_none()).or_else(|| {
            self.slots.iter().find(|s| {
                s.load().as_ref().is_some_and(|r| {
                    probe
                        .at_ms
                        .saturating_sub(r.newest_ms.load(Ordering::Relaxed))
                        > STALE_SOURCE_MS
                })
            })
        });
        // With every slot taken by a recent source, a new one is not
        // recorded: it cannot push out a load balancer.
        if let Some(slot) = free {
            let ring = Ring::new(probe.source, self.cap);
            ring.record(packed, probe.at_ms);
            slot.store(Some(std::sync::Arc::new(ring)));
        }
    }

    /// The probes remembered, oldest first.
    #[must_use]
    pub fn snapshot(&self) -> Vec<Probe> {
        let mut out: Vec<Probe> = self
            .slots
            .iter()
            .filter_map(ArcSwapOption::load_full)
            .flat_map(|r| {
                r.entries
                    .iter()
                    .map(|e| e.load(Ordering::Acquire))
                    .filter(|p| *p != 0)
                    .map(|p| unpack(r.source, p))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by_key(|p| p.at_ms);
        out
    }
}

/// Milliseconds since the Unix epoch, as probes are stamped.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An address range in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or one
/// address): where a load balancer's health checks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbSource {
    addr: IpAddr,
    prefix: u8,
}

impl LbSource {
    /// Whether `ip` is in the range. An IPv4 address seen as IPv6
    /// (`::ffff:10.0.0.1`, on a dual-stack listener) counts as IPv4.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A `--lb-source` that is not an address range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address range: give ADDRESS/PREFIX, e.g. 10.0.0.0/8, or one address")]
pub struct BadLbSource(String);

impl FromStr for LbSource {
    type Err = BadLbSource;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadLbSource(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(LbSource { addr, prefix })
    }
}

impl fmt::Display for LbSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_contain_what_they_should() {
        let r: LbSource = "10.1.0.0/16".parse().unwrap();
        assert!(r.contains([10, 1, 200, 3].into()));
        assert!(!r.contains([10, 2, 0, 1].into()));
        let mapped: IpAddr = "::ffff:10.1.0.9".parse().unwrap();
        assert!(r.contains(mapped));
        let one: LbSource = "127.0.0.1".parse().unwrap();
        assert!(one.contains([127, 0, 0, 1].into()));
        assert!(!one.contains([127, 0, 0, 2].into()));
        let all: LbSource = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains([192, 168, 1, 1].into()));
        let v6: LbSource = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains([10, 1, 0, 1].into()));
        for bad in ["10.0.0.0/33", "lb.internal", "10.0.0.0/", "/8", "::/129"] {
            assert!(bad.parse::<LbSource>().is_err(), "{bad}");
        }
    }
}
