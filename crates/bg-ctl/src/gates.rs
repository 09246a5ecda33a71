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
    /// A POST of `body` to `target` with the token: the status and the
    /// answer's JSON (null if it has none).
    async fn post(
        &self,
        url: &str,
        target: &str,
        body: &serde_json::Value,
    ) -> CtlResult<(reqwest::StatusCode, serde_json::Value)> {
        let mut req = self.client.post(target).json(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.map_err(|e| unreachable(url, e))?;
        let status = res.status();
        Ok((status, res.json().await.unwrap_or_default()))
    }

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
        let order = serde_json::json!({
            "batch": batch,
            "interval_ms": ms(interval),
            "timeout_ms": ms(lasting),
        });
        let (mut status, mut body) = self.post(url, &target, &order).await?;
        // A gate of an earlier release (the idle colour's, in the middle of
        // an upgrade) knows no timeout_ms and refuses the body: ask it as
        // it understands, with the drain it knows.
        if status == reqwest::StatusCode::BAD_REQUEST
            && body["message"]
                .as_str()
                .is_some_and(|m| m.contains("timeout_ms"))
        {
            let old = serde_json::json!({ "batch": batch, "interval_ms": ms(interval) });
            (status, body) = self.post(url, &target, &old).await?;
        }
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A gate of an earlier release: its drain takes `batch` and
    /// `interval_ms` only and refuses any other field, as serde's
    /// `deny_unknown_fields` does. Records the bodies it was sent.
    async fn earlier_gate() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&bodies);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head and body: the body is the last part after the blank line.
                while !buf.ends_with(b"}") {
                    let n = s.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
                seen.lock().unwrap().push(body.clone());
                let (status, answer) = if body.contains("timeout_ms") {
                    (
                        "400 Bad Request",
                        r#"{"kind":"invalid_input","message":"malformed JSON body: unknown field `timeout_ms`, expected `batch` or `interval_ms` at line 1 column 40"}"#,
                    )
                } else {
                    (
                        "202 Accepted",
                        r#"{"asked":3,"batch":10,"interval_ms":1000}"#,
                    )
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        (url, bodies)
    }

    #[tokio::test]
    async fn a_gate_of_an_earlier_release_is_drained_as_it_understands() {
        let (url, bodies) = earlier_gate().await;
        let gates = HttpGates::new(None, Duration::from_secs(5)).unwrap();
        let asked = gates
            .drain(&url, 10, Duration::from_secs(1), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(asked, 3);
        let bodies = bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), 2, "{bodies:?}");
        assert!(bodies[0].contains("\"timeout_ms\":60000"), "{bodies:?}");
        assert!(!bodies[1].contains("timeout_ms"), "{bodies:?}");
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
