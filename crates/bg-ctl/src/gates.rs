//! Talking to gates: what `/bg/state` says, and asking for a drain.

use std::time::Duration;

use async_trait::async_trait;
use bg_state::wire::{DrainBody, DrainPace};

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
    /// `POST {url}/bg/drain`: ask the gate's websockets to move at `pace`
    /// (its `open` ones, as it reported them, paced as batches for a gate
    /// of an earlier release), including those that open later, for
    /// `lasting`; returns how many open websockets were not asked yet.
    async fn drain(
        &self,
        url: &str,
        pace: DrainPace,
        open: u64,
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

/// Whether a gate answered `400` because it does not know one of `fields`:
/// a gate of an earlier release (serde's `deny_unknown_fields` names the
/// first field it does not know).
fn refuses_field(status: reqwest::StatusCode, body: &serde_json::Value, fields: &[&str]) -> bool {
    status == reqwest::StatusCode::BAD_REQUEST
        && body["message"].as_str().is_some_and(|m| {
            m.contains("unknown field") && fields.iter().any(|f| m.contains(&format!("`{f}`")))
        })
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
        pace: DrainPace,
        open: u64,
        lasting: Duration,
    ) -> CtlResult<u64> {
        let target = format!("{}/bg/drain", url.trim_end_matches('/'));
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let by_time = DrainBody {
            window_ms: Some(ms(pace.window)),
            max_rate: pace.max_rate,
            timeout_ms: Some(ms(lasting)),
            ..DrainBody::default()
        };
        // Gates of earlier releases refuse fields they do not know: the
        // first knew `batch` and `interval_ms` only, the next also
        // `timeout_ms`. Each is asked, as it understands, the same pace.
        let (batch, interval) = pace.as_batches(open);
        let by_batches = DrainBody {
            batch: Some(batch),
            interval_ms: Some(ms(interval)),
            timeout_ms: Some(ms(lasting)),
            ..DrainBody::default()
        };
        let oldest = DrainBody {
            timeout_ms: None,
            ..by_batches.clone()
        };
        let send = |body: &DrainBody| {
            let body = serde_json::to_value(body).unwrap_or_default();
            let target = &target;
            async move { self.post(url, target, &body).await }
        };
        // serde_json sends the keys in alphabetical order, and serde names
        // the first it does not know: a first-release gate may name
        // `timeout_ms` at once.
        let (mut status, mut body) = send(&by_time).await?;
        if refuses_field(status, &body, &["window_ms", "max_rate"]) {
            (status, body) = send(&by_batches).await?;
        }
        if refuses_field(status, &body, &["timeout_ms"]) {
            (status, body) = send(&oldest).await?;
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

    /// A gate of an earlier release: its drain takes the fields `known`
    /// and refuses the first other one, as serde's `deny_unknown_fields`
    /// does. Records the bodies it was sent.
    async fn earlier_gate(
        known: &'static [&'static str],
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
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
                let fields: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&body).unwrap();
                let (status, answer) = match fields.keys().find(|k| !known.contains(&k.as_str())) {
                    Some(unknown) => (
                        "400 Bad Request",
                        format!(
                            r#"{{"kind":"invalid_input","message":"malformed JSON body: unknown field `{unknown}`, expected `batch` or `interval_ms` at line 1 column 40"}}"#
                        ),
                    ),
                    None => (
                        "202 Accepted",
                        r#"{"asked":3,"batch":10,"interval_ms":1000}"#.to_owned(),
                    ),
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

    /// What each body of `bodies` says, as JSON.
    fn bodies_sent(bodies: &std::sync::Mutex<Vec<String>>) -> Vec<serde_json::Value> {
        bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn gates_of_earlier_releases_are_drained_as_they_understand() {
        let gates = HttpGates::new(None, Duration::from_secs(5)).unwrap();
        let pace = DrainPace {
            window: Duration::from_secs(20),
            max_rate: Some(300),
        };
        // The first release's gates: batch and interval_ms only.
        let (url, bodies) = earlier_gate(&["batch", "interval_ms"]).await;
        let asked = gates
            .drain(&url, pace, 10_000, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(asked, 3);
        let sent = bodies_sent(&bodies);
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert_eq!(sent[0]["window_ms"], 20_000, "{sent:?}");
        assert_eq!(sent[0]["max_rate"], 300, "{sent:?}");
        assert_eq!(sent[1]["timeout_ms"], 60_000, "{sent:?}");
        // 10,000 in 20 s is 500 a second, capped at 300: 30 per 100 ms.
        assert_eq!(
            (&sent[2]["batch"], &sent[2]["interval_ms"]),
            (&serde_json::json!(30), &serde_json::json!(100)),
            "{sent:?}"
        );
        assert!(sent[2].get("timeout_ms").is_none(), "{sent:?}");
        // Without a cap (the default) it names timeout_ms first.
        let (url, bodies) = earlier_gate(&["batch", "interval_ms"]).await;
        gates
            .drain(&url, DrainPace::default(), 10_000, Duration::from_secs(60))
            .await
            .unwrap();
        let sent = bodies_sent(&bodies);
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(
            (&sent[1]["batch"], &sent[1]["interval_ms"]),
            (&serde_json::json!(50), &serde_json::json!(100)),
            "{sent:?}"
        );

        // The next release's gates also took timeout_ms.
        let (url, bodies) = earlier_gate(&["batch", "interval_ms", "timeout_ms"]).await;
        gates
            .drain(&url, pace, 10_000, Duration::from_secs(60))
            .await
            .unwrap();
        let sent = bodies_sent(&bodies);
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[1]["timeout_ms"], 60_000, "{sent:?}");

        // Today's gates take the pace by time at once.
        let (url, bodies) = earlier_gate(&["window_ms", "max_rate", "timeout_ms"]).await;
        gates
            .drain(&url, pace, 10_000, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(bodies.lock().unwrap().len(), 1);
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
