//! Switching: a switch that survives a lost answer (step 7), and the
//! `--verify` watch that switches back when it fails (step 8).

use bg_state::{Colour, Error as StoreError, SwitchRequest};
use tokio::time::{Duration, Instant};

use std::sync::OnceLock;

use super::{DeployOutcome, Deployer, Plan, Sent};
use crate::error::{CtlError, CtlResult, LeaseLost, RollbackRefused, SwitchBack, VerifyFailed};

impl Deployer<'_> {
    /// Switches, retrying a store outage with the same request: the request
    /// id makes a retry of a switch that did commit its own success. If the
    /// outcome stays unknown, says so.
    pub(super) async fn switch_surely(&self, req: SwitchRequest) -> CtlResult<u64> {
        let o = self.opts;
        let deadline = Instant::now() + o.ready_timeout;
        loop {
            match self.store.switch(&o.app, req.clone()).await {
                Ok(out) => return Ok(out.state.generation),
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    self.report.waiting(format!(
                        "the store did not confirm the switch ({e}); retrying"
                    ));
                    tokio::time::sleep(o.poll.max(Duration::from_millis(100))).await;
                }
                Err(e) if e.is_retryable() => {
                    return Err(CtlError::SwitchUnconfirmed {
                        to: req.to,
                        source: e,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// After the lease was lost with the switch `req` sent: reads back
    /// whether it committed (its request id is the last change's). If it
    /// did, the release switched, and only what was left after the switch
    /// (`--confirm-lb`, `--verify`) did not run; if it did not, the fenced
    /// switch can no longer commit and `lost` stands; if the store does
    /// not say, the switch is unconfirmed.
    pub(super) async fn read_back(
        &self,
        req: &SwitchRequest,
        lost: CtlError,
    ) -> CtlResult<DeployOutcome> {
        let o = self.opts;
        let Some(generation) = self.committed(req).await? else {
            return Err(lost);
        };
        if o.confirm_lb || o.verify.is_some() {
            return Err(CtlError::LeaseLost(LeaseLost::AfterSwitch {
                to: req.to,
                generation,
                lost: Box::new(lost),
            }));
        }
        self.report.warn(format!(
            "the lease was lost, but the switch had committed: {} is live at generation {generation}",
            req.to
        ));
        Ok(DeployOutcome {
            version: o.version.clone(),
            colour: req.to,
            generation,
            switched: true,
            already_live: false,
        })
    }

    /// Runs the verify command through the watch window; on failure,
    /// switches back if the old colour still runs the old version.
    pub(super) async fn watch(
        &self,
        cmd: &str,
        plan: &Plan,
        generation: u64,
        sent: &Sent,
    ) -> CtlResult<()> {
        let o = self.opts;
        let new = plan.idle;
        let until = Instant::now() + o.watch;
        let url = o.urls(new).first().cloned().unwrap_or_default();
        loop {
            if let Err(e) = self
                .checks
                .run(cmd, o.check_env(new, &url), o.ready_timeout)
                .await
            {
                let _ = sent.verify_failed.set((plan.idle, e.to_string()));
                return Err(self.switch_back(plan, generation, e, &sent.back).await);
            }
            if Instant::now() >= until {
                break;
            }
            self.report
                .waiting(format!("watching {new}: verify passes"));
            tokio::time::sleep(o.verify_interval.min(until - Instant::now())).await;
        }
        self.report
            .step(format!("verify passed through the {:?} watch", o.watch));
        Ok(())
    }

    /// After a failed verify: the old colour live again, compare-and-swap
    /// on the switch's `generation` and fenced — only where `rollback`
    /// would go: its gates answer, still run what they ran before the
    /// release, and follow the store. The switch is retried by request id
    /// like the release's own.
    async fn switch_back(
        &self,
        plan: &Plan,
        generation: u64,
        failure: CtlError,
        sent: &OnceLock<SwitchRequest>,
    ) -> CtlError {
        let o = self.opts;
        let (new, old) = (plan.idle, plan.live);
        let failed = |back| {
            CtlError::Verify(Box::new(VerifyFailed {
                failure,
                to: new,
                from: old,
                back,
            }))
        };
        // What it ran before the release: its gates said so at step 2.
        let want = match plan.old_versions.split_first() {
            Some((first, rest)) if rest.iter().all(|v| v == first) => first.clone(),
            Some(_) => {
                return failed(SwitchBack::NotTried(Box::new(CtlError::Failed(format!(
                    "{old}'s gates ran different versions before the release"
                )))));
            }
            None => match self.store.get(&o.app).await {
                Ok(Some(s)) => match s.live_version(old) {
                    Some(l) => l.version.clone(),
                    None => {
                        return failed(SwitchBack::NotTried(Box::new(CtlError::RollbackRefused(
                            RollbackRefused::NothingRecorded(old),
                        ))));
                    }
                },
                Ok(None) => {
                    return failed(SwitchBack::NotTried(Box::new(
                        StoreError::NotInitialised { app: o.app.clone() }.into(),
                    )));
                }
                Err(e) => return failed(SwitchBack::NotTried(Box::new(e.into()))),
            },
        };
        // A verify that fails at once can beat the old colour's gates to
        // the news of the switch: give them until --ready-timeout to follow.
        let deadline = Instant::now() + o.ready_timeout;
        let checked = loop {
            let checked = crate::commands::can_return_to(
                self.store,
                self.gates,
                &o.app,
                o.urls(old),
                old,
                &want,
                generation,
            )
            .await;
            match checked {
                Err(CtlError::RollbackRefused(RollbackRefused::NotFollowing { .. }))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(o.poll).await;
                }
                checked => break checked,
            }
        };
        if let Err(why) = checked {
            self.report
                .warn(format!("not switching back to {old}: {why}"));
            return failed(SwitchBack::NotTried(Box::new(why)));
        }
        let req = SwitchRequest::new(old, o.actor.clone())
            .expect_generation(generation)
            .fence(plan.fence)
            .rollback(true)
            .request_id(format!("switch-back:{}", plan.lease_since))
            .reason(format!("verify failed for {}", o.version));
        let _ = sent.set(req.clone());
        match self.switch_surely(req).await {
            Ok(generation) => {
                self.report.step(format!(
                    "switched back: {old} is live at generation {generation}"
                ));
                failed(SwitchBack::Done(generation))
            }
            Err(e) => failed(SwitchBack::Failed(Box::new(e))),
        }
    }

    /// The lease was lost after `--verify` failed (`failure`) on `to`, while
    /// the switch back was being checked or sent (`back`, once sent): what
    /// happened is read back — switched back (the switch back's request id
    /// is the last change's) or not — and said as a failed verify.
    pub(super) async fn lost_in_switch_back(
        &self,
        to: Colour,
        failure: &str,
        back: Option<&SwitchRequest>,
        lost: CtlError,
    ) -> CtlError {
        let from = to.other();
        let back = match back {
            None => SwitchBack::NotTried(Box::new(lost)),
            Some(req) => match self.committed(req).await {
                Ok(Some(generation)) => SwitchBack::Done(generation),
                Ok(None) => SwitchBack::Failed(Box::new(lost)),
                Err(unconfirmed) => SwitchBack::Failed(Box::new(unconfirmed)),
            },
        };
        if let SwitchBack::Done(generation) = back {
            self.report.step(format!(
                "switched back: {from} is live at generation {generation}"
            ));
        }
        CtlError::Verify(Box::new(VerifyFailed {
            failure: CtlError::Failed(failure.to_owned()),
            to,
            from,
            back,
        }))
    }

    /// Whether the switch `req` committed, read back from the store: the
    /// generation it made if its request id is the last change's and its
    /// colour is live, `None` if not. Store outages are waited out until
    /// `--ready-timeout`; after that the switch is unconfirmed.
    async fn committed(&self, req: &SwitchRequest) -> CtlResult<Option<u64>> {
        let app = &self.opts.app;
        let state = self
            .retrying(
                &format!("reading back the switch to {}", req.to),
                || async { Ok(self.store.get(app).await?) },
            )
            .await
            .map_err(|e| match e {
                CtlError::Store(source) => CtlError::SwitchUnconfirmed { to: req.to, source },
                other => other,
            })?;
        Ok(state
            .filter(|s| {
                s.active == req.to
                    && req.request_id.is_some()
                    && s.last_change.request_id == req.request_id
            })
            .map(|s| s.generation))
    }

    /// The versions a colour's gates report now (what a switch back needs).
    pub(super) async fn versions(&self, colour: Colour) -> Vec<String> {
        let mut out = Vec::new();
        for url in self.opts.urls(colour) {
            if let Ok(r) = self.gates.report(url).await {
                out.push(r.version);
            }
        }
        out
    }
}
