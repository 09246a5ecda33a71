//! Talking to gates: what `/bg/state` says, and asking for a drain.

use std::time::Duration;

use async_trait::async_trait;
use bg_state::Colour;
use serde::{Deserialize, Serialize};

use crate::error::{CtlError, CtlResult};

/// What a gate reports at `GET /bg/state` (the fields bg-ctl reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateReport {
    /// The colour the gate serves.
    pub colour: Colour,
    /// The service version it runs.
    pub version: String,
    /// `ok`, `handover` or `stop`.
    pub answer: String,
    /// The live colour in its view, if it knows one.
    pub active: Option<Colour>,
    /// The generation it answers from (0: nothing known).
    pub generation: u64,
    /// Milliseconds since the store last confirmed its view.
    pub stale_ms: u64,
    /// Whether the store answers it.
    pub store: StoreHealth,
    /// Something the store said that the gate refuses to believe.
    #[serde(default)]
    pub alarm: Option<String>,
    /// Its tracked connections.
    pub connections: ConnectionCounts,
    /// The load balancer's recent probes, oldest first.
    #[serde(default)]
    pub probes: Vec<ProbeReport>,
}

/// The store's health as a gate sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// Whether its last read succeeded.
    pub healthy: bool,
}

/// A gate's tracked connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionCounts {
    /// Open websockets.
    pub websockets: u64,
    /// Requests in flight.
    #[serde(default)]
    pub requests: u64,
}

/// One health check a gate answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Who asked, when the gate knows.
    pub source: Option<String>,
    /// When.
    pub at_ms: u64,
    /// The colour asked about.
    pub colour: Colour,
    /// `ok`, `handover` or `stop`.
    pub answer: String,
}

impl GateReport {
    /// Whether this gate answers STOP for its own colour (past any handover).
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.answer == "stop"
    }

    /// Whether this gate answers OK for its own colour.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.answer == "ok"
    }

    /// How many of the most recent probes from each source, in a row, were
    /// answered `answer` for `colour`. Sources are keyed by address; probes
    /// without one count as one source. Only sources still probing count: a
    /// source whose last probe is more than `window_ms` older than the
    /// newest probe in the log (someone's one-off `curl`) is left out, and
    /// the comparison is between the gate's own timestamps, so clocks need
    /// not agree.
    #[must_use]
    pub fn streaks(&self, colour: Colour, answer: &str, window_ms: u64) -> Vec<(String, usize)> {
        let newest = self.probes.iter().map(|p| p.at_ms).max().unwrap_or(0);
        let key = |p: &ProbeReport| p.source.clone().unwrap_or_else(|| "unknown".into());
        let active: Vec<String> = self
            .probes
            .iter()
            .filter(|p| p.at_ms.saturating_add(window_ms) >= newest)
            .map(key)
            .collect();
        let mut by_source: Vec<(String, usize, bool)> = Vec::new();
        for p in self
            .probes
            .iter()
            .rev()
            .filter(|p| p.colour == colour && active.contains(&key(p)))
        {
            let src = p.source.clone().unwrap_or_else(|| "unknown".into());
            let entry = match by_source.iter_mut().find(|(s, _, _)| *s == src) {
                Some(e) => e,
                None => {
                    by_source.push((src, 0, false));
                    by_source.last_mut().expect("just pushed")
                }
            };
            if !entry.2 {
                if p.answer == answer {
                    entry.1 += 1;
                } else {
                    entry.2 = true;
                }
            }
        }
        by_source.into_iter().map(|(s, n, _)| (s, n)).collect()
    }
}

/// The gates, as bg-ctl needs them. A trait so the deploy sequence can be
/// tested against mocks.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Gates: Send + Sync {
    /// `GET {url}/bg/state`.
    async fn report(&self, url: &str) -> CtlResult<GateReport>;
    /// `POST {url}/bg/drain`; returns how many websockets were asked to close.
    async fn drain(&self, url: &str, batch: usize, interval: Duration) -> CtlResult<u64>;
}

/// Gates over HTTP(S), with a bearer token for the drain.
#[derive(Clone)]
pub struct HttpGates {
    client: reqwest::Client,
    token: Option<String>,
}

impl std::fmt::Debug for HttpGates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGates").finish_non_exhaustive()
    }
}

impl HttpGates {
    /// A client bounding every request by `timeout`.
    ///
    /// # Errors
    /// If the HTTP client cannot be built.
    pub fn new(token: Option<String>, timeout: Duration) -> CtlResult<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| CtlError::Failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(HttpGates { client, token })
    }
}

/// A URL as it may be printed: no credentials, no query.
pub use bg_state::redact_url as redact;

fn unreachable(url: &str, e: reqwest::Error) -> CtlError {
    CtlError::Unreachable(format!("gate {}: {}", redact(url), e.without_url()))
}

#[async_trait]
impl Gates for HttpGates {
    async fn report(&self, url: &str) -> CtlResult<GateReport> {
        let target = format!("{}/bg/state", url.trim_end_matches('/'));
        let res = self
            .client
            .get(&target)
            .send()
            .await
            .map_err(|e| unreachable(url, e))?;
        if !res.status().is_success() {
            return Err(CtlError::Unreachable(format!(
                "gate {} answered {} to /bg/state",
                redact(url),
                res.status()
            )));
        }
        res.json().await.map_err(|e| {
            CtlError::Failed(format!(
                "gate {} sent a state bluegreen cannot read: {}",
                redact(url),
                e.without_url()
            ))
        })
    }

    async fn drain(&self, url: &str, batch: usize, interval: Duration) -> CtlResult<u64> {
        let target = format!("{}/bg/drain", url.trim_end_matches('/'));
        let mut req = self.client.post(&target).json(&serde_json::json!({
            "batch": batch,
            "interval_ms": u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        }));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.map_err(|e| unreachable(url, e))?;
        let status = res.status();
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        if status.is_success() {
            return Ok(body["asked"].as_u64().unwrap_or(0));
        }
        let msg = body["message"].as_str().unwrap_or("no reason given");
        Err(CtlError::Failed(format!(
            "gate {} refused the drain ({status}): {msg}",
            redact(url)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(src: &str, colour: Colour, answer: &str) -> ProbeReport {
        ProbeReport {
            source: Some(src.into()),
            at_ms: 0,
            colour,
            answer: answer.into(),
        }
    }

    #[test]
    fn streaks_count_the_latest_run_per_source() {
        let r = GateReport {
            colour: Colour::Green,
            version: "v1".into(),
            answer: "stop".into(),
            active: Some(Colour::Blue),
            generation: 3,
            stale_ms: 10,
            store: StoreHealth { healthy: true },
            alarm: None,
            connections: ConnectionCounts {
                websockets: 0,
                requests: 0,
            },
            probes: vec![
                probe("lb1", Colour::Green, "stop"),
                probe("lb1", Colour::Green, "ok"),
                probe("lb2", Colour::Green, "stop"),
                probe("lb1", Colour::Green, "stop"),
                probe("lb1", Colour::Blue, "ok"),
                probe("lb1", Colour::Green, "stop"),
                probe("lb2", Colour::Green, "stop"),
            ],
        };
        let mut s = r.streaks(Colour::Green, "stop", 10_000);
        s.sort();
        assert_eq!(s, vec![("lb1".to_owned(), 2), ("lb2".to_owned(), 2)]);

        // A source that stopped probing long before the others is not a load balancer.
        let mut r = r;
        for (i, p) in r.probes.iter_mut().enumerate() {
            p.at_ms = 100_000 + i as u64 * 1000;
        }
        r.probes[2].at_ms = 1; // lb2's first probe, long ago
        r.probes[6].source = Some("laptop".into());
        r.probes[6].at_ms = 2;
        let mut s = r.streaks(Colour::Green, "stop", 10_000);
        s.sort();
        assert_eq!(s, vec![("lb1".to_owned(), 2)]);
    }

    #[test]
    fn urls_are_shown_without_secrets() {
        let shown = redact("https://user:secret@hooks.example/api/webhooks/abc?tag=v1&token=xyz");
        assert!(
            !shown.contains("secret") && !shown.contains("xyz"),
            "{shown}"
        );
    }
}
