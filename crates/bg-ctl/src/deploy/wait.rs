//! Waiting for the gates: poll a check until it says [`Readiness::Ready`]
//! or a deadline passes. Time is tokio's, so tests run it paused.

use tokio::time::{Duration, Instant};

use super::Deployer;
use crate::error::{CtlError, CtlResult, Pending, Timeout, WaitFor};
use crate::gates::GateStatus;
use crate::readiness::Readiness;

impl Deployer<'_> {
    /// Polls `check` every `--poll` until it says ready, or `limit` has
    /// passed. An unreachable gate counts as "not yet" only while
    /// `restarting` (a gate restarting for the deploy); otherwise it ends
    /// the wait at once. A store error worth a retry (a dropped connection)
    /// is "not yet" too, until the deadline, where it is the answer.
    pub(super) async fn wait<F, Fut>(
        &self,
        what: WaitFor,
        limit: Duration,
        restarting: bool,
        mut check: F,
    ) -> CtlResult<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = CtlResult<Readiness>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            let pending = match check().await {
                Ok(Readiness::Ready) => return Ok(()),
                Ok(Readiness::Pending(why)) => Pending::Gates(why),
                Err(CtlError::Unreachable(why)) if restarting => Pending::Unreachable(why),
                Err(CtlError::Store(e)) if e.is_retryable() && Instant::now() < deadline => {
                    Pending::Store(e)
                }
                Err(e) => return Err(e),
            };
            if Instant::now() >= deadline {
                return Err(CtlError::Timeout(Timeout::Gates {
                    waited: what,
                    limit,
                    pending,
                }));
            }
            self.report.waiting(format!("{what}: {pending}"));
            tokio::time::sleep(self.opts.poll).await;
        }
    }

    /// Runs `op` until it succeeds or fails for good: a store error worth a
    /// retry is retried every `--poll` within `--ready-timeout`.
    pub(super) async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> CtlResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = CtlResult<T>>,
    {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            match op().await {
                Err(CtlError::Store(e)) if e.is_retryable() && Instant::now() < deadline => {
                    self.report.waiting(format!("{what}: {e}; retrying"));
                    tokio::time::sleep(self.opts.poll.max(Duration::from_millis(100))).await;
                }
                r => return r,
            }
        }
    }

    /// Asks the gates at `urls` in turn and applies `rule` to each report;
    /// the first that is not ready says why.
    pub(super) async fn each_gate(
        &self,
        urls: &[String],
        rule: impl Fn(&GateStatus, &str) -> CtlResult<Readiness>,
    ) -> CtlResult<Readiness> {
        for url in urls {
            let r = self.gates.report(url).await?;
            if let Readiness::Pending(why) = rule(&r, url)? {
                return Ok(Readiness::Pending(why));
            }
        }
        Ok(Readiness::Ready)
    }
}
