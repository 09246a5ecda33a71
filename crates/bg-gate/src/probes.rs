//! The load balancer's recent health checks, as this gate answered them,
//! and the address ranges (`--lb-source`) that say who the load balancers
//! are.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
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
