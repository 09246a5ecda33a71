//! Talking to gates: what `/bg/state` says, and asking for a drain.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::{CtlError, CtlResult};

/// What a gate reports at `GET /bg/state`: the gate's own type, so the two
/// cannot drift apart.
pub use bg_state::wire::{ConnectionCounts, GateAnswer, GateStatus, ProbeRecord, StoreHealth};

/// The gates, as bg-ctl needs them. A trait so the deploy sequence can be
/// tested against mocks.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Gates: Send + Sync {
    /// `GET {url}/bg/state`.
    async fn report(&self, url: &str) -> CtlResult<GateStatus>;
    /// `POST {url}/bg/drain`: ask `batch` websockets every `interval` to
    /// close, including those that open later, for `lasting`; returns how
    /// many open websockets were not asked yet.
    async fn drain(
        &self,
        url: &str,
        batch: usize,
        interval: Duration,
        lasting: Duration,
    ) -> CtlResult<u64>;
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
    async fn report(&self, url: &str) -> CtlResult<GateStatus> {
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

    async fn drain(
        &self,
        url: &str,
        batch: usize,
        interval: Duration,
        lasting: Duration,
    ) -> CtlResult<u64> {
        let target = format!("{}/bg/drain", url.trim_end_matches('/'));
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut req = self.client.post(&target).json(&serde_json::json!({
            "batch": batch,
            "interval_ms": ms(interval),
            "timeout_ms": ms(lasting),
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

    #[test]
    fn urls_are_shown_without_secrets() {
        let shown = redact("https://user:secret@hooks.example/api/webhooks/abc?tag=v1&token=xyz");
        assert!(
            !shown.contains("secret") && !shown.contains("xyz"),
            "{shown}"
        );
    }
}
