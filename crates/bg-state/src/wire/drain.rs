//! The drain's pace, and the body of `POST /bg/drain` that carries it.
//!
//! A drain asks a colour's websockets to reconnect (to the live colour) in
//! small steps rather than all at once. It is paced by time: every open
//! websocket is asked within a window, whatever their number, at the rate
//! that finishes in the window, but never slower than [`DRAIN_FLOOR_RATE`]
//! (so a small colour drains in a moment, not in the whole window) and never
//! faster than an optional cap (for a live colour that cannot take a
//! reconnect storm). The gate runs the pace ([`DrainPace::rate`] on every
//! [`DRAIN_TICK`]); `bg-ctl` reads the same numbers to tell, before it
//! starts, whether a cap makes the window impossible.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long asking takes unless told: well inside `bg-ctl`'s default
/// `--drain-timeout` of 60 s, which also covers the clients' reconnects.
pub const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(20);

/// The slowest a drain asks, in websockets per second: 50 sockets are asked
/// in half a second, 2,000 within the default window.
pub const DRAIN_FLOOR_RATE: u32 = 100;

/// How often a drain asks its next few websockets.
pub const DRAIN_TICK: Duration = Duration::from_millis(50);

/// The longest window a drain takes.
pub const MAX_DRAIN_WINDOW: Duration = Duration::from_secs(3600);

/// How a drain asks: every open websocket within `window`, at most
/// `max_rate` a second (per gate) when set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPace {
    /// How long asking every open websocket takes, at most (longer only if
    /// `max_rate` forbids it).
    pub window: Duration,
    /// A cap in websockets per second.
    pub max_rate: Option<u32>,
}

impl Default for DrainPace {
    fn default() -> Self {
        DrainPace {
            window: DEFAULT_DRAIN_WINDOW,
            max_rate: None,
        }
    }
}

impl DrainPace {
    /// The rate (websockets per second) at which `left` websockets not yet
    /// asked are asked when `remaining` of the window is left: what finishes
    /// in the window, at least the floor, at most the cap. `None`: all of
    /// them at once (the window is over and no cap holds them back).
    #[must_use]
    pub fn rate(&self, left: u64, remaining: Duration) -> Option<f64> {
        let needed = if remaining <= DRAIN_TICK {
            None
        } else {
            Some((left as f64 / remaining.as_secs_f64()).max(f64::from(DRAIN_FLOOR_RATE)))
        };
        match (needed, self.max_rate) {
            (Some(r), Some(cap)) => Some(r.min(f64::from(cap))),
            (None, Some(cap)) => Some(f64::from(cap)),
            (r, None) => r,
        }
    }

    /// How long asking `open` websockets takes at this pace: the window, or
    /// less (at the floor rate), or more when the cap forbids the window.
    #[must_use]
    pub fn takes(&self, open: u64) -> Duration {
        let floor = Duration::from_secs_f64(open as f64 / f64::from(DRAIN_FLOOR_RATE));
        let mut takes = floor.min(self.window);
        if let Some(cap) = self.max_rate {
            takes = takes.max(Duration::from_secs_f64(open as f64 / f64::from(cap.max(1))));
        }
        takes
    }

    /// This pace as batches for a drain that only knows `batch` every
    /// `interval` (a gate of an earlier release, a sidecar's service):
    /// `open` websockets asked within the window, never above the cap: a
    /// batch every 100 ms, or one websocket at a time for a rate below ten a
    /// second.
    #[must_use]
    pub fn as_batches(&self, open: u64) -> (usize, Duration) {
        const INTERVAL: Duration = Duration::from_millis(100);
        let rate = self
            .rate(open, self.window)
            .unwrap_or(f64::from(DRAIN_FLOOR_RATE));
        let per_interval = rate * INTERVAL.as_secs_f64();
        if per_interval < 1.0 {
            return (1, Duration::from_secs_f64(1.0 / rate.max(1.0 / 3600.0)));
        }
        // At most what a gate of an earlier release accepts.
        (
            (per_interval.floor() as usize).min(MAX_DRAIN_BATCH),
            INTERVAL,
        )
    }

    /// Refuses a pace no gate takes: a window over an hour, a cap of 0.
    ///
    /// # Errors
    /// What is wrong, naming the field (`window`, `max_rate`).
    pub fn check(&self) -> Result<(), &'static str> {
        if self.window > MAX_DRAIN_WINDOW {
            return Err("the window must be at most 1h");
        }
        if self.max_rate == Some(0) {
            return Err("max_rate must be at least 1 (websockets a second)");
        }
        Ok(())
    }
}

/// The largest batch `POST /bg/drain` takes (`batch`).
pub const MAX_DRAIN_BATCH: usize = 10_000;

/// The body of `POST /bg/drain`. Either the pace by time (`window_ms`,
/// `max_rate`) or, as gates of earlier releases took it, `batch` websockets
/// every `interval_ms`; not both. All fields optional: an empty body drains
/// at the default pace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    /// How long asking every open websocket takes (default 20 s, at most an hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// A cap in websockets per second, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<u32>,
    /// Websockets asked per batch (the earlier pace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// The pause between batches (the earlier pace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// How long the drain goes on asking websockets that open after it
    /// began (default 60 s, at most an hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_rate_finishes_in_the_window_but_never_below_the_floor() {
        let pace = DrainPace::default();
        // 10,000 in 20 s: 500 a second.
        assert_eq!(pace.rate(10_000, 20 * SEC), Some(500.0));
        // 50 in 20 s would be 2.5 a second: the floor instead.
        assert_eq!(pace.rate(50, 20 * SEC), Some(f64::from(DRAIN_FLOOR_RATE)));
        // The window is over: everyone left at once.
        assert_eq!(pace.rate(7, Duration::ZERO), None);
        let capped = DrainPace {
            max_rate: Some(200),
            ..pace
        };
        assert_eq!(capped.rate(10_000, 20 * SEC), Some(200.0));
        assert_eq!(capped.rate(7, Duration::ZERO), Some(200.0));
        // A cap below the floor wins: it protects the live colour.
        let slow = DrainPace {
            max_rate: Some(5),
            ..pace
        };
        assert_eq!(slow.rate(50, 20 * SEC), Some(5.0));
    }

    #[test]
    fn how_long_asking_takes() {
        let pace = DrainPace::default();
        assert_eq!(pace.takes(50), Duration::from_millis(500));
        assert_eq!(pace.takes(50_000), pace.window);
        let capped = DrainPace {
            max_rate: Some(100),
            ..pace
        };
        assert_eq!(capped.takes(10_000), 100 * SEC);
    }

    #[test]
    fn batches_for_a_drain_that_knows_only_batches() {
        let pace = DrainPace::default();
        assert_eq!(pace.as_batches(10_000), (50, Duration::from_millis(100)));
        assert_eq!(pace.as_batches(10), (10, Duration::from_millis(100)));
        // Below ten a second: one at a time, never above the cap.
        let capped = DrainPace {
            max_rate: Some(5),
            ..pace
        };
        assert_eq!(capped.as_batches(10_000), (1, Duration::from_millis(200)));
        let capped = DrainPace {
            max_rate: Some(105),
            ..pace
        };
        assert_eq!(capped.as_batches(10_000), (10, Duration::from_millis(100)));
    }

    #[test]
    fn the_body_takes_either_pace_and_nothing_else() {
        let b: DrainBody = serde_json::from_str(r#"{"window_ms":5000,"max_rate":300}"#).unwrap();
        assert_eq!((b.window_ms, b.max_rate), (Some(5000), Some(300)));
        let old: DrainBody = serde_json::from_str(r#"{"batch":10,"interval_ms":1000}"#).unwrap();
        assert_eq!((old.batch, old.interval_ms), (Some(10), Some(1000)));
        assert!(serde_json::from_str::<DrainBody>(r#"{"drain_batch":1}"#).is_err());
        assert_eq!(
            serde_json::to_string(&DrainBody::default()).unwrap(),
            "{}",
            "nothing unset is sent"
        );
    }
}
