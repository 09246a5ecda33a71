//! `bg-ctl deploy`: the whole release, in the nine steps of SPEC §5, one
//! function each, in the order [`Deployer::run`] calls them. It either
//! completes a verified release or stops at the first failure with the
//! live colour unchanged.
//!
//! The rules that say when the gates are ready live in
//! [`crate::readiness`]; here are the steps that ask the gates and the
//! store and act. Beside them: `options` (how a release runs), `drain`
//! (steps 3 and 4: out of rotation, then the paced drain), `lease`
//! (renewing the lease while the steps run), `wait` (polling until ready
//! or a deadline), `switch` (a switch that survives a lost answer, and the
//! switch back after a failed verify).

use std::fmt;
use std::sync::OnceLock;

use bg_state::{
    Colour, ColourStore, DeployPhase, DeployRecord, Error as StoreError, Lease, LeaseRequest,
    State, SwitchRequest, wire::UNKNOWN_VERSION,
};
use serde::Serialize;
use tokio::time::{Duration, Instant};

use crate::error::{CtlError, CtlResult, LeaseLost, Timeout, WaitFor};
use crate::gates::{GateAnswer, Gates};
use crate::output::{Render, to_json};
use crate::readiness::{self, NotYet, Readiness};
use crate::report::Reporter;
use crate::trigger::{Checks, Trigger};

mod drain;
mod lease;
mod options;
mod switch;
mod wait;

use options::millis;
pub use options::{DeployOptions, OnDrainTimeout};

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployOutcome {
    /// The version released.
    pub version: String,
    /// The colour it went to.
    pub colour: Colour,
    /// The generation after the release.
    pub generation: u64,
    /// Whether the live colour changed (false with `--no-switch`).
    pub switched: bool,
    /// The version was live and verified already: nothing was released.
    pub already_live: bool,
}

impl Render for DeployOutcome {
    fn human(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        let (version, colour) = (&self.version, self.colour);
        if self.already_live {
            writeln!(
                out,
                "{version} is already live on {colour} at generation {}: nothing released",
                self.generation
            )
        } else if self.switched {
            writeln!(
                out,
                "released {version} on {colour}: live at generation {}",
                self.generation
            )
        } else {
            writeln!(out, "deployed {version} on {colour} (not switched)")
        }
    }

    fn json(&self) -> serde_json::Value {
        to_json(self)
    }
}

/// The parts a release needs, as traits so the sequence is testable.
pub struct Deployer<'a> {
    /// The state store.
    pub store: &'a dyn ColourStore,
    /// The gates.
    pub gates: &'a dyn Gates,
    /// What starts the deploy.
    pub trigger: &'a dyn Trigger,
    /// Runs `--smoke` and `--verify`.
    pub checks: &'a dyn Checks,
    /// Where progress goes.
    pub report: &'a Reporter,
    /// How.
    pub opts: &'a DeployOptions,
}

/// What a release has sent or learnt, which a lease lost meanwhile must
/// not hide: each is set before what it names is sent.
#[derive(Debug, Default)]
struct Sent {
    /// The switch.
    switch: OnceLock<SwitchRequest>,
    /// The colour `--verify` failed on, and why, once it has.
    verify_failed: OnceLock<(Colour, String)>,
    /// The switch back after it failed.
    back: OnceLock<SwitchRequest>,
}

/// What step 2 read, which every later step works from.
struct Plan {
    /// The colour being released to.
    idle: Colour,
    /// The colour live now.
    live: Colour,
    /// The generation the switch compares against.
    generation: u64,
    /// This run's lease fence: a secret, never printed.
    fence: u64,
    /// When this run's lease was taken: what its request ids carry to be
    /// unique to the lease, since they are recorded for anyone to read
    /// and the fence must not be.
    lease_since: u64,
    /// What the live colour's gates run: a switch back needs it unchanged.
    old_versions: Vec<String>,
}

impl Deployer<'_> {
    /// Runs the release.
    ///
    /// # Errors
    /// The first failure, with the live colour unchanged — except a failure
    /// after the switch (LB confirmation, verify), which says so.
    pub async fn run(&self) -> CtlResult<DeployOutcome> {
        let o = self.opts;
        self.keeps_its_store().await?;
        o.check()?;
        let lease = self.take_lease().await?;
        let sent = Sent::default();
        let result = tokio::select! {
            r = self.release(&lease, &sent) => r,
            e = self.keep_lease(&lease) => Err(e),
        };
        let result = match (result, sent.switch.get(), sent.verify_failed.get()) {
            // The lease went during the switch back after a failed verify:
            // said as what happened, switched back or not, read back.
            (Err(e @ CtlError::LeaseLost(_)), _, Some((to, failure))) => Err(self
                .lost_in_switch_back(*to, failure, sent.back.get(), e)
                .await),
            // The lease went while the switch's answer was awaited: what
            // the store did is read back, never guessed.
            (Err(e @ CtlError::LeaseLost(_)), Some(req), None) => self.read_back(req, e).await,
            (r, _, _) => r,
        };
        self.release_lease(&lease).await;
        result
    }

    /// A release through gates (`--gate`) that are all gates of the colour
    /// it is about to restart would lose its store halfway, at the trigger:
    /// it is refused before it starts.
    async fn keeps_its_store(&self) -> CtlResult<()> {
        let o = self.opts;
        if self.store.backend() != "remote" || o.store_gates.is_empty() {
            return Ok(());
        }
        let key = |u: &str| {
            url::Url::parse(u.trim()).map_or_else(
                |_| u.trim().to_owned(),
                |u| u.as_str().trim_end_matches('/').to_owned(),
            )
        };
        let Some((&colour, _)) = o.gates.iter().find(|(_, urls)| {
            o.store_gates
                .iter()
                .all(|s| urls.iter().any(|u| key(u) == key(s)))
        }) else {
            return Ok(());
        };
        let Some(state) = self.store.get(&o.app).await? else {
            return Ok(());
        };
        if state.idle() != colour {
            return Ok(());
        }
        Err(CtlError::Usage(format!(
            "every store gate (--gate, BG_GATE) is a gate of {colour}, the colour this release restarts: \
             its webhook would take bg-ctl's store away halfway; list a gate of each colour \
             (BG_GATE=BLUE_GATE,GREEN_GATE)"
        )))
    }

    /// Steps 2 to 8, while the lease is held. What it sends goes into
    /// `sent` first.
    async fn release(&self, lease: &Lease, sent: &Sent) -> CtlResult<DeployOutcome> {
        let o = self.opts;
        let state = self.read_state().await?;
        if let Some(done) = self.already_live(&state).await? {
            if o.confirm_lb || o.verify.is_some() {
                // A retry of a release whose confirmation or verify failed
                // must not pass unchecked: check again what it asked for.
                // A switch back then goes where `rollback` would: to the
                // version the other colour last served live, as recorded
                // (not whatever its gates run now).
                let plan = Plan {
                    idle: state.active,
                    live: state.idle(),
                    generation: state.generation,
                    fence: lease.fence,
                    lease_since: lease.acquired_at_ms,
                    old_versions: Vec::new(),
                };
                self.confirm_and_verify(&plan, state.generation, sent)
                    .await?;
            }
            return Ok(done);
        }
        // A pace that cannot drain what the idle colour holds is refused
        // before anything is recorded or waited for.
        let mut held = Vec::new();
        for url in o.urls(state.idle()) {
            if let Ok(r) = self.gates.report(url).await {
                held.push(r.connections);
            }
        }
        self.drain_takes(state.idle(), &held, false)?;
        let plan = self.record_deploying(&state, lease).await?;
        self.wait_out_of_rotation(&plan).await?;
        self.drain(&plan).await?;
        self.trigger_deploy(&plan).await?;
        self.verify_new_version(&plan).await?;
        if o.no_switch {
            self.report.step(format!(
                "{} deployed to {} and verified; not switched (--no-switch)",
                o.version, plan.idle
            ));
            return Ok(DeployOutcome {
                version: o.version.clone(),
                colour: plan.idle,
                generation: plan.generation,
                switched: false,
                already_live: false,
            });
        }
        let generation = self.switch(&plan, &sent.switch).await?;
        self.confirm_and_verify(&plan, generation, sent).await?;
        Ok(DeployOutcome {
            version: o.version.clone(),
            colour: plan.idle,
            generation,
            switched: true,
            already_live: false,
        })
    }

    /// Step 1: take the lease, or queue for it with `--wait-lease`. (It is
    /// renewed while the steps run: see `lease.rs`.)
    async fn take_lease(&self) -> CtlResult<Lease> {
        let o = self.opts;
        let req = LeaseRequest::new(o.holder.clone(), o.lease_ttl);
        let deadline = o.wait_lease.map(|w| Instant::now() + w);
        let lease = loop {
            match self.store.acquire_lease(&o.app, req.clone()).await {
                Ok(lease) => break lease,
                Err(StoreError::LeaseHeld { holder, .. })
                    if deadline.is_some_and(|d| Instant::now() < d) =>
                {
                    self.report
                        .waiting(format!("waiting for the lease held by {holder}"));
                    tokio::time::sleep(o.poll.max(Duration::from_millis(200))).await;
                }
                Err(e @ StoreError::LeaseHeld { .. }) if deadline.is_some() => {
                    return Err(CtlError::Timeout(Timeout::Lease(e)));
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.report.step(format!("lease taken by {}", lease.holder));
        Ok(lease)
    }

    /// The app's state; not initialised is an error.
    async fn read_state(&self) -> CtlResult<State> {
        let o = self.opts;
        Ok(self
            .store
            .get(&o.app)
            .await?
            .ok_or_else(|| StoreError::NotInitialised { app: o.app.clone() })?)
    }

    /// A retried job (its answer lost) finds its version live, verified,
    /// and run by every gate given for the live colour: that is success,
    /// without a second release to the other colour. A gate that does not
    /// answer is unknown, not "runs something else": it is asked again
    /// until `--ready-timeout`, and then the job stops (exit 5) rather than
    /// start a second release because a gate blinked.
    async fn already_live(&self, state: &State) -> CtlResult<Option<DeployOutcome>> {
        let o = self.opts;
        let Some(live) = state.deployment(state.active) else {
            return Ok(None);
        };
        if live.version != o.version || live.phase != DeployPhase::Deployed {
            return Ok(None);
        }
        let deadline = Instant::now() + o.ready_timeout;
        loop {
            let mut silent = None;
            for url in o.urls(state.active) {
                match self.gates.report(url).await {
                    // A sidecar whose service has not said its version
                    // does not know what runs: unknown, like a silence.
                    Ok(r) if r.version == UNKNOWN_VERSION => {
                        silent = Some((url, CtlError::Failed("its version is unknown".into())));
                    }
                    Ok(r) if r.version != o.version => return Ok(None),
                    Ok(_) => {}
                    Err(e) => silent = Some((url, e)),
                }
            }
            let Some((url, e)) = silent else { break };
            if Instant::now() >= deadline {
                return Err(CtlError::Unreachable(format!(
                    "{} is recorded live and verified on {}, but gate {} does not answer ({e}), so \
                     whether it runs there is unknown: not starting a second release; run the job \
                     again once the gate answers",
                    o.version,
                    state.active,
                    crate::gates::redact(url)
                )));
            }
            self.report.waiting(format!(
                "{} is recorded live on {}; gate {} does not answer ({e}): asking again",
                o.version,
                state.active,
                crate::gates::redact(url)
            ));
            tokio::time::sleep(o.poll.max(Duration::from_millis(100))).await;
        }
        self.report.step(format!(
            "{} is already live on {} at generation {} and verified: nothing to release",
            o.version, state.active, state.generation
        ));
        Ok(Some(DeployOutcome {
            version: o.version.clone(),
            colour: state.active,
            generation: state.generation,
            switched: false,
            already_live: true,
        }))
    }

    /// Step 2: from the state read, pick the idle colour, record
    /// "deploying V" (fenced). Refused while a gate is ahead of the store.
    async fn record_deploying(&self, state: &State, lease: &Lease) -> CtlResult<Plan> {
        let o = self.opts;
        readiness::none_ahead(&self.store.presences(&o.app).await?, state.generation)?;
        let plan = Plan {
            idle: state.idle(),
            live: state.active,
            generation: state.generation,
            fence: lease.fence,
            lease_since: lease.acquired_at_ms,
            old_versions: self.versions(state.active).await,
        };
        self.record(&plan, DeployPhase::Deploying).await?;
        self.report.step(format!(
            "{} is live at generation {}; deploying {} to {}",
            plan.live, plan.generation, o.version, plan.idle
        ));
        Ok(plan)
    }

    /// Step 5: trigger its deploy (a webhook or a command) — after one
    /// more look, since the steps before can take minutes: the generation
    /// has not moved (so the colour is still idle) and the lease is still
    /// ours (renewed now, not at the next tick). Nothing is ever triggered
    /// against a colour that is live.
    async fn trigger_deploy(&self, plan: &Plan) -> CtlResult<()> {
        let o = self.opts;
        let (idle, version) = (plan.idle, &o.version);
        self.retrying("a last look before the trigger", || async {
            self.unmoved(plan).await?;
            match self
                .store
                .renew_lease(&o.app, plan.fence, o.lease_ttl)
                .await
            {
                Ok(_) => Ok(()),
                Err(e @ StoreError::StaleFence { .. }) => {
                    Err(CtlError::LeaseLost(LeaseLost::Broken(e)))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await?;
        self.trigger.deploy(idle, version).await?;
        self.report
            .step(format!("deploy of {version} to {idle} triggered"));
        Ok(())
    }

    /// Step 6: every gate of the idle colour runs the new version with a
    /// fresh view at the store's generation (a webhook that answers 204 and
    /// deploys nothing is caught here); then `--smoke`; then the release is
    /// recorded "deployed V" (fenced), which `--no-switch` stops at.
    async fn verify_new_version(&self, plan: &Plan) -> CtlResult<()> {
        let o = self.opts;
        self.wait_running(plan).await?;
        if let Some(cmd) = &o.smoke {
            let url = o.urls(plan.idle).first().cloned().unwrap_or_default();
            self.checks
                .run(cmd, o.check_env(plan.idle, &url), o.ready_timeout)
                .await
                .map_err(|e| CtlError::Smoke(Box::new(e)))?;
            self.report.step("smoke check passed");
        }
        self.record(plan, DeployPhase::Deployed).await?;
        Ok(())
    }

    /// Step 7: the switch, compare-and-swap on the generation of step 2,
    /// fenced by the lease — after one more look if a smoke check took time.
    async fn switch(&self, plan: &Plan, sent: &OnceLock<SwitchRequest>) -> CtlResult<u64> {
        let o = self.opts;
        if o.smoke.is_some() {
            self.wait_running(plan).await?;
        }
        let mut req = o.switch_request(plan.idle, plan.generation, plan.fence, plan.lease_since);
        // What the colour left runs, as its gates said at step 2: its live
        // version if the store has none (a colour an init made live
        // without one), so this release can be rolled back.
        if let Some((first, rest)) = plan.old_versions.split_first()
            && rest.iter().all(|v| v == first)
            && bg_state::wire::is_known_version(first)
        {
            req = req.leaving_version(first.clone());
        }
        let _ = sent.set(req.clone());
        let generation = self.switch_surely(req).await?;
        self.report.step(format!(
            "switched: {} is live at generation {generation}",
            plan.idle
        ));
        Ok(generation)
    }

    /// Step 8: with `--confirm-lb`, every probe source saw the new colour
    /// OK `--lb-rise` times and the old one STOP `--lb-fall` times; then
    /// `--verify` through the `--watch` window, switching back if it fails
    /// while the old colour still runs the old version.
    async fn confirm_and_verify(&self, plan: &Plan, generation: u64, sent: &Sent) -> CtlResult<()> {
        let o = self.opts;
        if o.confirm_lb {
            self.confirm_lb(plan.idle, plan.live)
                .await
                .map_err(|e| match e {
                    CtlError::Timeout(t) => CtlError::Timeout(Timeout::LbUnconfirmed {
                        to: plan.idle,
                        wait: Box::new(t),
                    }),
                    other => other,
                })?;
        }
        if let Some(cmd) = &o.verify {
            self.watch(cmd, plan, generation, sent).await?;
        }
        Ok(())
    }

    /// Step 9: release the lease. A lease that cannot be released expires
    /// by itself, so this only warns.
    async fn release_lease(&self, lease: &Lease) {
        match self.store.release_lease(&self.opts.app, lease.fence).await {
            Ok(true) => self.report.step("lease released"),
            Ok(false) => self.report.warn("the lease was no longer held at the end"),
            Err(e) => self.report.warn(format!(
                "cannot release the lease (it expires by itself): {e}"
            )),
        }
    }

    /// Waits until every gate of the idle colour runs the new version, fresh
    /// and at the store's generation (step 6, and again before step 7).
    /// Without gate URLs, the gates' presence reports in the store say it.
    async fn wait_running(&self, plan: &Plan) -> CtlResult<()> {
        let o = self.opts;
        let (idle, generation) = (plan.idle, plan.generation);
        let urls = o.urls(idle);
        let max_stale = millis(o.max_stale);
        let waited = WaitFor::Running {
            version: o.version.clone(),
            colour: idle,
        };
        self.wait(waited, o.ready_timeout, true, || async {
            // Someone switched meanwhile: nothing to wait for any more.
            self.unmoved(plan).await?;
            if urls.is_empty() {
                let presences = self.store.presences(&o.app).await?;
                return Ok(readiness::presences_run(
                    &presences, idle, &o.version, generation,
                ));
            }
            self.each_gate(urls, |r, url| {
                readiness::runs_fresh(r, url, idle, &o.version, generation, max_stale)
            })
            .await
        })
        .await?;
        self.report
            .step(format!("{idle} runs {} with a fresh view", o.version));
        Ok(())
    }

    /// Waits until every load balancer has seen the switch from `old` to
    /// `new` (step 8).
    async fn confirm_lb(&self, new: Colour, old: Colour) -> CtlResult<()> {
        let o = self.opts;
        let window = millis(o.lb_window);
        self.wait(WaitFor::LbConfirmation, o.ready_timeout, true, || async {
            let mut reports = Vec::new();
            for (colour, answer, need) in [
                (new, GateAnswer::Ok, o.lb_rise),
                (old, GateAnswer::Stop, o.lb_fall),
            ] {
                for url in o.urls(colour) {
                    reports.push((self.gates.report(url).await?, colour, answer, need));
                }
            }
            // A load balancer found at any gate counts at every gate.
            let mut lbs: Vec<String> = Vec::new();
            for (r, ..) in &reports {
                for s in readiness::lb_sources(r, window) {
                    if !lbs.contains(&s) {
                        lbs.push(s);
                    }
                }
            }
            let mut sources = 0;
            for (r, colour, answer, need) in &reports {
                match readiness::lb_has_seen(r, *colour, *answer, *need, window, &lbs) {
                    Ok(n) => sources += n,
                    Err(why) => return Ok(Readiness::Pending(why)),
                }
            }
            Ok(if sources == 0 {
                Readiness::Pending(NotYet::NoProbes)
            } else {
                Readiness::Ready
            })
        })
        .await?;
        self.report.step("the load balancer has seen the switch");
        Ok(())
    }

    /// A conflict if the generation moved since step 2 (someone switched,
    /// or forced a switch, while this release ran).
    async fn unmoved(&self, plan: &Plan) -> CtlResult<()> {
        let o = self.opts;
        let now = self
            .store
            .get(&o.app)
            .await?
            .ok_or_else(|| StoreError::NotInitialised { app: o.app.clone() })?;
        if now.generation != plan.generation || now.active == plan.idle {
            return Err(StoreError::Conflict {
                expected: plan.generation,
                current: Box::new(now),
            }
            .into());
        }
        Ok(())
    }

    /// Records a phase of this release for the idle colour, fenced, and
    /// retried through a store outage under one request id (unique to the
    /// lease, the phase and the version), so a record whose answer was lost
    /// is recognised, not made twice.
    async fn record(&self, plan: &Plan, phase: DeployPhase) -> CtlResult<()> {
        let o = self.opts;
        // From when the lease was taken, never its fence: the id is kept
        // in the state, which anyone may read.
        let id: String = format!("deploy:{}:{phase}:{}", plan.lease_since, o.version)
            .chars()
            .take(bg_state::MAX_REQUEST_ID_LEN)
            .collect();
        let rec = DeployRecord::new(plan.idle, o.version.clone(), phase, o.actor.clone())
            .fence(plan.fence)
            .request_id(id);
        self.retrying(&format!("recording {phase} {}", o.version), || async {
            self.store.record_deploy(&o.app, rec.clone()).await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests;
