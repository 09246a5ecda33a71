//! `bg-ctl deploy`: the whole release, in the nine steps of the spec. It
//! either completes a verified release or stops at the first failure with
//! the live colour unchanged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bg_state::{
    AppName, Colour, ColourStore, DeployPhase, DeployRecord, Error as StoreError, Lease,
    LeaseRequest, State, SwitchRequest,
};
use serde::Serialize;

use crate::error::{CtlError, CtlResult};
use crate::gates::{GateReport, Gates};
use crate::report::Reporter;
use crate::trigger::{Checks, Trigger};

/// What to do when the drain does not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnDrainTimeout {
    /// Deploy anyway: the remaining clients are cut by the restart.
    #[default]
    Proceed,
    /// Stop without deploying (exit 4).
    Abort,
}

/// How a release runs. [`DeployOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeployOptions {
    /// The app.
    pub app: AppName,
    /// The version to release.
    pub version: String,
    /// Who is releasing (recorded in history).
    pub actor: String,
    /// The lease holder (unique per pipeline run).
    pub holder: String,
    /// Gate URLs per colour (admin routes); every wait applies to all of a colour's gates.
    pub gates: BTreeMap<Colour, Vec<String>>,
    /// The lease's time to live; it is renewed every third of it.
    pub lease_ttl: Duration,
    /// Queue behind another pipeline's lease for this long instead of failing.
    pub wait_lease: Option<Duration>,
    /// Bound on each wait for the gates (out of rotation, new version, LB).
    pub ready_timeout: Duration,
    /// Bound on the drain.
    pub drain_timeout: Duration,
    /// What to do when the drain runs out of time.
    pub on_drain_timeout: OnDrainTimeout,
    /// Websockets closed per drain batch.
    pub drain_batch: usize,
    /// Pause between drain batches.
    pub drain_interval: Duration,
    /// Probes in a row a load balancer must have seen answered STOP.
    pub lb_fall: usize,
    /// Probes in a row a load balancer must have seen answered OK.
    pub lb_rise: usize,
    /// A probe source counts as a load balancer while its last probe is
    /// within this of the newest probe a gate logged.
    pub lb_window: Duration,
    /// After the switch, wait until every probe source has seen it.
    pub confirm_lb: bool,
    /// The staleness a gate's view may have to count as fresh.
    pub max_stale: Duration,
    /// A command that must succeed before the switch.
    pub smoke: Option<String>,
    /// A command run through the watch window after the switch; failure switches back.
    pub verify: Option<String>,
    /// How long to keep verifying after the switch.
    pub watch: Duration,
    /// How often to run the verify command in the watch window.
    pub verify_interval: Duration,
    /// Deploy and verify only; `bg-ctl switch` promotes later.
    pub no_switch: bool,
    /// How often to look at the gates while waiting.
    pub poll: Duration,
    /// Why (recorded with the switch).
    pub reason: Option<String>,
}

impl DeployOptions {
    /// Defaults for releasing `version` of `app`.
    #[must_use]
    pub fn new(app: AppName, version: impl Into<String>, actor: impl Into<String>) -> Self {
        let actor = actor.into();
        DeployOptions {
            app,
            version: version.into(),
            holder: actor.clone(),
            actor,
            gates: BTreeMap::new(),
            lease_ttl: Duration::from_secs(30),
            wait_lease: None,
            ready_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(60),
            on_drain_timeout: OnDrainTimeout::Proceed,
            drain_batch: 10,
            drain_interval: Duration::from_secs(1),
            lb_fall: 3,
            lb_rise: 2,
            lb_window: Duration::from_secs(20),
            confirm_lb: false,
            max_stale: Duration::from_secs(3),
            smoke: None,
            verify: None,
            watch: Duration::ZERO,
            verify_interval: Duration::from_secs(5),
            no_switch: false,
            poll: Duration::from_millis(250),
            reason: None,
        }
    }

    fn urls(&self, colour: Colour) -> &[String] {
        self.gates.get(&colour).map_or(&[], Vec::as_slice)
    }
}

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

impl Deployer<'_> {
    /// Runs the release.
    ///
    /// # Errors
    /// The first failure, with the live colour unchanged — except a failure
    /// after the switch (LB confirmation, verify), which says so.
    pub async fn run(&self) -> CtlResult<DeployOutcome> {
        let o = self.opts;
        if o.confirm_lb && (o.urls(Colour::Blue).is_empty() || o.urls(Colour::Green).is_empty()) {
            return Err(CtlError::Usage(
                "--confirm-lb reads the load balancer's probes from the gates: give --gate-blue and --gate-green".into(),
            ));
        }
        let lease = self.take_lease().await?;
        self.report.step(format!(
            "lease taken by {} (fence {})",
            lease.holder, lease.fence
        ));
        let result = tokio::select! {
            r = self.steps(&lease) => r,
            e = self.keep_lease(&lease) => Err(e),
        };
        match self.store.release_lease(&self.opts.app, lease.fence).await {
            Ok(true) => self.report.step("lease released"),
            Ok(false) => self.report.warn("the lease was no longer held at the end"),
            Err(e) => self.report.warn(format!(
                "cannot release the lease (it expires by itself): {e}"
            )),
        }
        result
    }

    /// Step 1: the lease, or a place in the queue for it.
    async fn take_lease(&self) -> CtlResult<Lease> {
        let o = self.opts;
        let req = LeaseRequest::new(o.holder.clone(), o.lease_ttl);
        let deadline = o.wait_lease.map(|w| Instant::now() + w);
        loop {
            match self.store.acquire_lease(&o.app, req.clone()).await {
                Ok(lease) => return Ok(lease),
                Err(StoreError::LeaseHeld { holder, .. })
                    if deadline.is_some_and(|d| Instant::now() < d) =>
                {
                    self.report
                        .waiting(format!("waiting for the lease held by {holder}"));
                    tokio::time::sleep(o.poll.max(Duration::from_millis(200))).await;
                }
                Err(e @ StoreError::LeaseHeld { .. }) if deadline.is_some() => {
                    return Err(CtlError::Timeout(format!("--wait-lease ran out: {e}")));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Renews the lease every third of its TTL; returns only when it is
    /// lost: refused as stale, or left unrenewed for a whole TTL (by our
    /// clock, counted from before each request, so never later than the
    /// store's).
    async fn keep_lease(&self, lease: &Lease) -> CtlError {
        let o = self.opts;
        let every = o.lease_ttl / 3;
        let mut held_until = Instant::now() + o.lease_ttl;
        loop {
            tokio::time::sleep(every).await;
            let asked = Instant::now();
            match self
                .store
                .renew_lease(&o.app, lease.fence, o.lease_ttl)
                .await
            {
                Ok(_) => held_until = asked + o.lease_ttl,
                Err(e @ StoreError::StaleFence { .. }) => {
                    return CtlError::LeaseLost(format!("{e}; stopped before doing anything more"));
                }
                Err(e) => {
                    // Transient: the lease outlives a few failed renewals, not more.
                    if Instant::now() + every >= held_until {
                        return CtlError::LeaseLost(format!(
                            "it could not be renewed before it expired ({e}); stopped before doing anything more"
                        ));
                    }
                    self.report.warn(format!("cannot renew the lease: {e}"));
                }
            }
        }
    }

    async fn steps(&self, lease: &Lease) -> CtlResult<DeployOutcome> {
        let o = self.opts;
        let fence = lease.fence;

        // Step 2: read the state, pick the idle colour, record "deploying".
        let state = self
            .store
            .get(&o.app)
            .await?
            .ok_or_else(|| StoreError::NotInitialised { app: o.app.clone() })?;
        let (idle, live, generation) = (state.idle(), state.active, state.generation);
        self.refuse_gates_ahead(&state).await?;
        let old_versions = self.versions(live).await;
        self.store
            .record_deploy(
                &o.app,
                DeployRecord::new(
                    idle,
                    o.version.clone(),
                    DeployPhase::Deploying,
                    o.actor.clone(),
                )
                .fence(fence),
            )
            .await?;
        self.report.step(format!(
            "{live} is live at generation {generation}; deploying {} to {idle}",
            o.version
        ));

        // Step 3: the idle colour is out of rotation, as the LB sees it.
        self.wait_out_of_rotation(idle, generation).await?;

        // Step 4: drain what still lingers on it.
        self.drain(idle).await?;

        // Step 5: trigger the deploy.
        self.trigger.deploy(idle, &o.version).await?;
        self.report
            .step(format!("deploy of {} to {idle} triggered", o.version));

        // Step 6: wait until every gate of the idle colour runs it, fresh
        // and at the store's generation; then the smoke test.
        self.wait_new_version(idle, generation).await?;
        if let Some(cmd) = &o.smoke {
            let url = o.urls(idle).first().cloned().unwrap_or_default();
            self.checks
                .run(cmd, self.env(idle, &url), o.ready_timeout)
                .await
                .map_err(|e| {
                    CtlError::Failed(format!("smoke check failed, nothing switched: {e}"))
                })?;
            self.report.step("smoke check passed");
        }
        self.store
            .record_deploy(
                &o.app,
                DeployRecord::new(
                    idle,
                    o.version.clone(),
                    DeployPhase::Deployed,
                    o.actor.clone(),
                )
                .fence(fence),
            )
            .await?;
        if o.no_switch {
            self.report.step(format!(
                "{} deployed to {idle} and verified; not switched (--no-switch)",
                o.version
            ));
            return Ok(DeployOutcome {
                version: o.version.clone(),
                colour: idle,
                generation,
                switched: false,
            });
        }

        // Step 7: the switch, compare-and-swap on the generation of step 2,
        // after one more look: the smoke test took time.
        if o.smoke.is_some() {
            self.wait_new_version(idle, generation).await?;
        }
        let mut req = SwitchRequest::new(idle, o.actor.clone())
            .expect_generation(generation)
            .fence(fence)
            .request_id(format!("deploy:{}:{fence}", o.version))
            .reason(
                o.reason
                    .clone()
                    .unwrap_or_else(|| format!("release {}", o.version)),
            );
        req.reason = req
            .reason
            .map(|r| r.chars().take(bg_state::MAX_REASON_LEN).collect());
        let new_generation = self.switch_surely(req).await?;
        self.report.step(format!(
            "switched: {idle} is live at generation {new_generation}"
        ));

        // Step 8: the LB has seen it; verify through the watch window.
        if o.confirm_lb {
            self.confirm_lb(idle, live).await.map_err(|e| match e {
                CtlError::Timeout(m) => CtlError::Timeout(format!(
                    "switched to {idle}, but the load balancer did not confirm it: {m}"
                )),
                other => other,
            })?;
        }
        if let Some(cmd) = &o.verify {
            self.watch(cmd, idle, live, new_generation, fence, &old_versions)
                .await?;
        }
        Ok(DeployOutcome {
            version: o.version.clone(),
            colour: idle,
            generation: new_generation,
            switched: true,
        })
    }

    /// Switches, retrying a store outage with the same request: the request
    /// id makes a retry of a switch that did commit its own success. If the
    /// outcome stays unknown, says so.
    async fn switch_surely(&self, req: SwitchRequest) -> CtlResult<u64> {
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
                    return Err(CtlError::Unreachable(format!(
                        "the switch to {} was sent but never confirmed, so it may or may not have happened: {e}; \
                         check with `bg-ctl status`",
                        req.to
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn env(&self, colour: Colour, url: &str) -> Vec<(String, String)> {
        vec![
            ("BG_COLOUR".into(), colour.to_string()),
            ("BG_VERSION".into(), self.opts.version.clone()),
            ("BG_GATE_URL".into(), url.to_owned()),
        ]
    }

    /// A gate that applied a generation the store does not have would go
    /// backwards: refuse.
    async fn refuse_gates_ahead(&self, state: &State) -> CtlResult<()> {
        refuse_gates_ahead(self.store, &self.opts.app, state).await
    }

    /// The versions a colour's gates report now (what a switch back needs).
    async fn versions(&self, colour: Colour) -> Vec<String> {
        let mut out = Vec::new();
        for url in self.opts.urls(colour) {
            if let Ok(r) = self.gates.report(url).await {
                out.push(r.version);
            }
        }
        out
    }

    /// Polls `check` until it says done, or the deadline. An unreachable
    /// gate counts as "not yet" only while `restarting` (a gate restarting
    /// for the deploy); otherwise it ends the wait at once.
    async fn wait<F, Fut>(
        &self,
        what: &str,
        limit: Duration,
        restarting: bool,
        mut check: F,
    ) -> CtlResult<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = CtlResult<Result<(), String>>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            let pending = match check().await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(why)) => why,
                Err(CtlError::Unreachable(why)) if restarting => why,
                Err(e) => return Err(e),
            };
            if Instant::now() >= deadline {
                return Err(CtlError::Timeout(format!(
                    "{what} within {limit:?}: {pending}"
                )));
            }
            self.report.waiting(format!("{what}: {pending}"));
            tokio::time::sleep(self.opts.poll).await;
        }
    }

    async fn wait_out_of_rotation(&self, idle: Colour, generation: u64) -> CtlResult<()> {
        let o = self.opts;
        let urls = o.urls(idle);
        let window = u64::try_from(o.lb_window.as_millis()).unwrap_or(u64::MAX);
        if urls.is_empty() {
            self.report.warn(format!(
                "no gate URL for {idle} (--gate-{idle}): cannot prove it is out of rotation or drain it"
            ));
            return Ok(());
        }
        self.wait(
            &format!("{idle} out of rotation"),
            o.ready_timeout,
            false,
            || async {
                for url in urls {
                    let r = self.gates.report(url).await?;
                    check_colour(&r, idle, url)?;
                    if let Some(why) = ahead_of(&r, generation, url) {
                        return Err(CtlError::GateAhead(why));
                    }
                    if r.generation < generation {
                        return Ok(Err(format!(
                            "{url} is at generation {} of {generation}",
                            r.generation
                        )));
                    }
                    if !r.is_stopped() {
                        return Ok(Err(format!("{url} still answers {}", r.answer)));
                    }
                    // One probe more than the fall count: the load balancer
                    // marks the server down when it reads the fall-th answer,
                    // and the next probe shows that moment has passed.
                    let need = o.lb_fall + 1;
                    for (source, n) in r.streaks(idle, "stop", window) {
                        if n < need {
                            return Ok(Err(format!(
                                "{source} has seen STOP {n} of {need} times at {url}"
                            )));
                        }
                    }
                }
                Ok(Ok(()))
            },
        )
        .await?;
        self.report.step(format!("{idle} is out of rotation"));
        Ok(())
    }

    async fn drain(&self, idle: Colour) -> CtlResult<()> {
        let o = self.opts;
        let (mut open, mut asked, mut busy) = (0, 0, 0);
        for url in o.urls(idle) {
            let r = self.gates.report(url).await?;
            busy += r.connections.requests;
            if r.connections.websockets > 0 {
                open += r.connections.websockets;
                asked += self
                    .gates
                    .drain(url, o.drain_batch, o.drain_interval)
                    .await?;
            }
        }
        if open == 0 && busy == 0 {
            return Ok(());
        }
        // A drain already under way (the gate's own, or an earlier run's)
        // asks nobody new, but its sockets are still to be waited for; and
        // requests the load balancer sent before it marked the colour down
        // are let finish before the restart.
        if open > 0 {
            self.report.step(format!(
                "{open} websockets open on {idle}; {asked} newly asked to reconnect"
            ));
        }
        let drained = self
            .wait(
                &format!("{idle} drained"),
                o.drain_timeout,
                false,
                || async {
                    let (mut open, mut busy) = (0, 0);
                    for url in o.urls(idle) {
                        let c = self.gates.report(url).await?.connections;
                        open += c.websockets;
                        busy += c.requests;
                    }
                    Ok(if open == 0 && busy == 0 {
                        Ok(())
                    } else {
                        Err(format!("{open} websockets open, {busy} requests in flight"))
                    })
                },
            )
            .await;
        match (drained, o.on_drain_timeout) {
            (Ok(()), _) => {
                self.report.step(format!("{idle} drained"));
                Ok(())
            }
            (Err(CtlError::Timeout(m)), OnDrainTimeout::Proceed) => {
                self.report
                    .warn(format!("{m}; proceeding (--on-drain-timeout proceed)"));
                Ok(())
            }
            (Err(e), _) => Err(e),
        }
    }

    async fn wait_new_version(&self, idle: Colour, generation: u64) -> CtlResult<()> {
        let o = self.opts;
        let urls = o.urls(idle);
        let max_stale = u64::try_from(o.max_stale.as_millis()).unwrap_or(u64::MAX);
        self.wait(
            &format!("{} running on {idle}", o.version),
            o.ready_timeout,
            true,
            || async {
                // Someone switched meanwhile: nothing to wait for any more.
                let now = self.store.get(&o.app).await?;
                if let Some(s) = &now
                    && s.generation != generation
                {
                    return Err(StoreError::Conflict {
                        expected: generation,
                        current: Box::new(s.clone()),
                    }
                    .into());
                }
                if urls.is_empty() {
                    // Without URLs, the gates' presence reports in the store say it.
                    let gates: Vec<_> = self
                        .store
                        .presences(&o.app)
                        .await?
                        .into_iter()
                        .filter(|p| p.colour == idle)
                        .collect();
                    if gates.is_empty() {
                        return Ok(Err(format!("no gate of {idle} reports its presence")));
                    }
                    for p in gates {
                        if p.service_version != o.version || p.applied_generation != generation {
                            return Ok(Err(format!(
                                "gate {} runs {} at generation {}",
                                p.gate_id, p.service_version, p.applied_generation
                            )));
                        }
                    }
                    return Ok(Ok(()));
                }
                for url in urls {
                    let r = self.gates.report(url).await?;
                    check_colour(&r, idle, url)?;
                    if let Some(why) = ahead_of(&r, generation, url) {
                        return Err(CtlError::GateAhead(why));
                    }
                    if r.version != o.version {
                        return Ok(Err(format!("{url} runs {}", r.version)));
                    }
                    if !r.store.healthy || r.stale_ms > max_stale {
                        return Ok(Err(format!(
                            "{url} cannot hear the store (view {} ms old)",
                            r.stale_ms
                        )));
                    }
                    if r.generation != generation {
                        return Ok(Err(format!(
                            "{url} is at generation {} of {generation}",
                            r.generation
                        )));
                    }
                }
                Ok(Ok(()))
            },
        )
        .await?;
        self.report
            .step(format!("{idle} runs {} with a fresh view", o.version));
        Ok(())
    }

    async fn confirm_lb(&self, new: Colour, old: Colour) -> CtlResult<()> {
        let o = self.opts;
        let window = u64::try_from(o.lb_window.as_millis()).unwrap_or(u64::MAX);
        self.wait(
            "load balancer confirmation",
            o.ready_timeout,
            true,
            || async {
                let mut seen = 0;
                for (colour, answer, need) in [(new, "ok", o.lb_rise), (old, "stop", o.lb_fall)] {
                    for url in o.urls(colour) {
                        let r = self.gates.report(url).await?;
                        for (source, n) in r.streaks(colour, answer, window) {
                            seen += 1;
                            if n < need {
                                return Ok(Err(format!(
                                    "{source} has seen {colour} {answer} {n} of {need} times"
                                )));
                            }
                        }
                    }
                }
                Ok(if seen == 0 {
                    Err("no load balancer probes seen at any gate".to_owned())
                } else {
                    Ok(())
                })
            },
        )
        .await?;
        self.report.step("the load balancer has seen the switch");
        Ok(())
    }

    /// Runs the verify command through the watch window; on failure,
    /// switches back if the old colour still runs the old version.
    async fn watch(
        &self,
        cmd: &str,
        new: Colour,
        old: Colour,
        generation: u64,
        fence: u64,
        old_versions: &[String],
    ) -> CtlResult<()> {
        let o = self.opts;
        let until = Instant::now() + o.watch;
        let url = o.urls(new).first().cloned().unwrap_or_default();
        loop {
            if let Err(e) = self
                .checks
                .run(cmd, self.env(new, &url), o.ready_timeout)
                .await
            {
                return Err(self
                    .switch_back(new, old, generation, fence, old_versions, &e)
                    .await);
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

    async fn switch_back(
        &self,
        new: Colour,
        old: Colour,
        generation: u64,
        fence: u64,
        old_versions: &[String],
        failure: &CtlError,
    ) -> CtlError {
        let o = self.opts;
        let now = self.versions(old).await;
        if now.is_empty() || now != old_versions {
            return CtlError::Failed(format!(
                "verify failed ({failure}) after the switch to {new}; {old} no longer runs the previous version, so it was not switched back"
            ));
        }
        let req = SwitchRequest::new(old, o.actor.clone())
            .expect_generation(generation)
            .fence(fence)
            .rollback(true)
            .reason(format!("verify failed for {}", o.version));
        match self.store.switch(&o.app, req).await {
            Ok(out) => {
                self.report.step(format!(
                    "switched back: {old} is live at generation {}",
                    out.state.generation
                ));
                CtlError::Failed(format!("verify failed ({failure}); switched back to {old}"))
            }
            Err(e) => CtlError::Failed(format!(
                "verify failed ({failure}) and switching back to {old} failed too: {e}"
            )),
        }
    }
}

/// A gate named for one colour that serves the other is a configuration
/// mistake that would make every wait meaningless.
pub(crate) fn check_colour(r: &GateReport, colour: Colour, url: &str) -> CtlResult<()> {
    if r.colour == colour {
        Ok(())
    } else {
        Err(CtlError::Usage(format!(
            "the gate at {} was given for {colour} but serves {}",
            crate::gates::redact(url),
            r.colour
        )))
    }
}

/// Why a gate report is ahead of the store's `generation`, if it is.
fn ahead_of(r: &GateReport, generation: u64, url: &str) -> Option<String> {
    (r.generation > generation).then(|| {
        format!(
            "gate {url} applied generation {} but the store is at {generation}: the store lost state; restore it with `bg-ctl init --from-gate`",
            r.generation
        )
    })
}

/// Refuses when any gate's presence report is ahead of the store's state.
pub(crate) async fn refuse_gates_ahead(
    store: &dyn ColourStore,
    app: &AppName,
    state: &State,
) -> CtlResult<()> {
    let ahead: Vec<String> = store
        .presences(app)
        .await?
        .into_iter()
        .filter(|p| p.applied_generation > state.generation)
        .map(|p| format!("{} (generation {})", p.gate_id, p.applied_generation))
        .collect();
    if ahead.is_empty() {
        Ok(())
    } else {
        Err(CtlError::GateAhead(format!(
            "gates are ahead of the store (at generation {}): {}; restore it with `bg-ctl init --from-gate`",
            state.generation,
            ahead.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use bg_state::{EventKind, InitRequest, MemoryStore, MockColourStore, Presence};

    use super::*;
    use crate::error::exit;
    use crate::gates::{ConnectionCounts, MockGates, ProbeReport, StoreHealth};
    use crate::trigger::{MockChecks, MockTrigger};

    const BLUE: &str = "http://blue";
    const GREEN: &str = "http://green";

    fn app() -> AppName {
        AppName::new("chat").unwrap()
    }

    fn opts() -> DeployOptions {
        let mut o = DeployOptions::new(app(), "v2", "ci");
        o.holder = "pipeline-1".into();
        o.gates.insert(Colour::Blue, vec![BLUE.into()]);
        o.gates.insert(Colour::Green, vec![GREEN.into()]);
        o.ready_timeout = Duration::from_millis(400);
        o.drain_timeout = Duration::from_millis(300);
        o.poll = Duration::from_millis(10);
        o.lease_ttl = Duration::from_secs(3);
        o.lb_fall = 2;
        o.lb_rise = 2;
        o
    }

    async fn store() -> MemoryStore {
        let s = MemoryStore::new();
        s.init(&app(), InitRequest::new(Colour::Blue, "ops"))
            .await
            .unwrap();
        s
    }

    /// What a gate of `colour` says, given who is live and what it runs.
    fn report(colour: Colour, live: Colour, version: &str, generation: u64) -> GateReport {
        let answer = if colour == live { "ok" } else { "stop" };
        GateReport {
            colour,
            version: version.into(),
            answer: answer.into(),
            active: Some(live),
            generation,
            stale_ms: 20,
            store: StoreHealth { healthy: true },
            alarm: None,
            connections: ConnectionCounts {
                websockets: 0,
                requests: 0,
            },
            probes: (0..3)
                .map(|_| ProbeReport {
                    source: Some("10.0.0.1".into()),
                    at_ms: 0,
                    colour,
                    answer: answer.into(),
                })
                .collect(),
        }
    }

    /// Gates that follow `store` and run "v2" on green once `deployed` is set.
    fn gates(store: &MemoryStore, deployed: &Arc<AtomicBool>) -> MockGates {
        let mut g = MockGates::new();
        let (s, d) = (store.clone(), Arc::clone(deployed));
        g.expect_report().returning(move |url| {
            let state = futures_now(s.get(&app())).unwrap().unwrap();
            let colour = if url == BLUE {
                Colour::Blue
            } else {
                Colour::Green
            };
            let version = if colour == Colour::Green && d.load(Ordering::SeqCst) {
                "v2"
            } else {
                "v1"
            };
            Ok(report(colour, state.active, version, state.generation))
        });
        g
    }

    /// Memory-store futures complete at once; run one from a sync mock.
    fn futures_now<T>(f: impl std::future::Future<Output = T>) -> T {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a memory store call did not complete at once"),
        }
    }

    fn trigger_that_deploys(deployed: &Arc<AtomicBool>) -> MockTrigger {
        let mut t = MockTrigger::new();
        let d = Arc::clone(deployed);
        t.expect_deploy()
            .withf(|c, v| *c == Colour::Green && v == "v2")
            .times(1)
            .returning(move |_, _| {
                d.store(true, Ordering::SeqCst);
                Ok(())
            });
        t
    }

    fn passing_checks() -> MockChecks {
        let mut c = MockChecks::new();
        c.expect_run().returning(|_, _, _| Ok(()));
        c
    }

    async fn run(
        store: &dyn ColourStore,
        gates: &dyn Gates,
        trigger: &dyn Trigger,
        checks: &dyn Checks,
        opts: &DeployOptions,
    ) -> CtlResult<DeployOutcome> {
        let report = Reporter::silent();
        Deployer {
            store,
            gates,
            trigger,
            checks,
            report: &report,
            opts,
        }
        .run()
        .await
    }

    async fn live(store: &MemoryStore) -> (Colour, u64) {
        let s = store.get(&app()).await.unwrap().unwrap();
        (s.active, s.generation)
    }

    #[tokio::test]
    async fn a_release_switches_after_the_new_version_is_seen() {
        let store = store().await;
        let deployed = Arc::new(AtomicBool::new(false));
        let mut o = opts();
        o.smoke = Some("true".into());
        o.verify = Some("true".into());
        o.confirm_lb = true;
        let out = run(
            &store,
            &gates(&store, &deployed),
            &trigger_that_deploys(&deployed),
            &passing_checks(),
            &o,
        )
        .await
        .unwrap();
        assert_eq!(
            out,
            DeployOutcome {
                version: "v2".into(),
                colour: Colour::Green,
                generation: 2,
                switched: true
            }
        );
        assert_eq!(live(&store).await, (Colour::Green, 2));
        let history = store.history(&app(), 10).await.unwrap();
        let kinds: Vec<_> = history.iter().map(|e| &e.kind).collect();
        assert!(
            matches!(
                kinds[0],
                EventKind::Switch {
                    to: Colour::Green,
                    ..
                }
            ),
            "{kinds:?}"
        );
        assert!(matches!(
            kinds[1],
            EventKind::Deploy {
                phase: DeployPhase::Deployed,
                ..
            }
        ));
        assert!(matches!(
            kinds[2],
            EventKind::Deploy {
                phase: DeployPhase::Deploying,
                ..
            }
        ));
        assert_eq!(history[0].actor, "ci");
        assert_eq!(
            store.lease(&app()).await.unwrap(),
            None,
            "the lease is released"
        );
    }

    #[tokio::test]
    async fn a_webhook_that_deploys_nothing_ends_in_a_timeout_and_no_switch() {
        let store = store().await;
        let never = Arc::new(AtomicBool::new(false));
        let mut t = MockTrigger::new();
        t.expect_deploy().times(1).returning(|_, _| Ok(())); // "204", and nothing happens
        let err = run(
            &store,
            &gates(&store, &never),
            &t,
            &passing_checks(),
            &opts(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), exit::TIMEOUT, "{err}");
        assert!(err.to_string().contains("runs v1"), "{err}");
        assert_eq!(live(&store).await, (Colour::Blue, 1));
        assert_eq!(store.lease(&app()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_switch_meanwhile_is_a_conflict_and_nothing_is_overwritten() {
        let store = store().await;
        let deployed = Arc::new(AtomicBool::new(false));
        let mut t = MockTrigger::new();
        let s = store.clone();
        t.expect_deploy().times(1).returning(move |_, _| {
            // Someone forces a switch while the deploy runs.
            futures_now(s.switch(
                &app(),
                bg_state::SwitchRequest::new(Colour::Green, "someone").force(true),
            ))
            .unwrap();
            Ok(())
        });
        let err = run(
            &store,
            &gates(&store, &deployed),
            &t,
            &passing_checks(),
            &opts(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), exit::CONFLICT, "{err}");
        let s = store.get(&app()).await.unwrap().unwrap();
        assert_eq!(
            (s.active, s.generation, s.last_change.actor.as_str()),
            (Colour::Green, 2, "someone")
        );
    }

    #[tokio::test]
    async fn a_stale_or_lagging_target_is_never_switched_to() {
        for (stale_ms, healthy, generation) in [(60_000, true, 1), (20, false, 1), (20, true, 0)] {
            let store = store().await;
            let deployed = Arc::new(AtomicBool::new(false));
            let mut g = MockGates::new();
            let d = Arc::clone(&deployed);
            g.expect_report().returning(move |url| {
                let mut r = if url == BLUE {
                    report(Colour::Blue, Colour::Blue, "v1", 1)
                } else {
                    report(
                        Colour::Green,
                        Colour::Blue,
                        if d.load(Ordering::SeqCst) { "v2" } else { "v1" },
                        1,
                    )
                };
                if url == GREEN && d.load(Ordering::SeqCst) {
                    r.stale_ms = stale_ms;
                    r.store.healthy = healthy;
                    r.generation = generation;
                }
                Ok(r)
            });
            let err = run(
                &store,
                &g,
                &trigger_that_deploys(&deployed),
                &passing_checks(),
                &opts(),
            )
            .await
            .unwrap_err();
            assert_eq!(
                err.exit_code(),
                exit::TIMEOUT,
                "{stale_ms} {healthy} {generation}: {err}"
            );
            assert_eq!(live(&store).await, (Colour::Blue, 1));
        }
    }

    #[tokio::test]
    async fn a_gate_ahead_of_the_store_stops_everything() {
        let store = store().await;
        store
            .report_presence(
                &app(),
                Presence::new("green-1", Colour::Green, "v1", 9),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        let mut t = MockTrigger::new();
        t.expect_deploy().never();
        let deployed = Arc::new(AtomicBool::new(false));
        let err = run(
            &store,
            &gates(&store, &deployed),
            &t,
            &passing_checks(),
            &opts(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), exit::CONFLICT, "{err}");
        assert!(err.to_string().contains("init --from-gate"), "{err}");
    }

    #[tokio::test]
    async fn failures_before_the_switch_leave_the_live_colour() {
        // The trigger fails.
        let store = store().await;
        let deployed = Arc::new(AtomicBool::new(false));
        let mut t = MockTrigger::new();
        t.expect_deploy().returning(|_, _| {
            Err(CtlError::Unreachable(
                "webhook https://portainer/…: refused".into(),
            ))
        });
        let err = run(
            &store,
            &gates(&store, &deployed),
            &t,
            &passing_checks(),
            &opts(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), exit::UNREACHABLE);
        assert_eq!(live(&store).await, (Colour::Blue, 1));

        // The smoke check fails.
        let store = self::store().await;
        let deployed = Arc::new(AtomicBool::new(false));
        let mut checks = MockChecks::new();
        checks
            .expect_run()
            .returning(|_, _, _| Err(CtlError::Failed("`curl …` failed (exit status: 22)".into())));
        let mut o = opts();
        o.smoke = Some("curl -f $BG_GATE_URL".into());
        let err = run(
            &store,
            &gates(&store, &deployed),
            &trigger_that_deploys(&deployed),
            &checks,
            &o,
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), exit::FAILED);
        assert!(
            err.to_string()
                .contains("smoke check failed, nothing switched"),
            "{err}"
        );
        assert_eq!(live(&store).await, (Colour::Blue, 1));
        let last = &store.history(&app(), 1).await.unwrap()[0];
        assert!(
            matches!(
                last.kind,
                EventKind::Deploy {
                    phase: DeployPhase::Deploying,
                    ..
                }
            ),
            "no 'deployed' after a failed smoke check"
        );

        // Not initialised.
        let empty = MemoryStore::new();
        let err = run(
            &empty,
            &MockGates::new(),
            &MockTrigger::new(),
            &passing_checks(),
            &opts(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), exit::FAILED);
        assert!(matches!(
            err,
            CtlError::Store(StoreError::NotInitialised { .. })
        ));
    }

    #[tokio::test]
    async fn a_failed_verify_switches_back() {
        let store = store().await;
        let deployed = Arc::new(AtomicBool::new(false));
        let mut checks = MockChecks::new();
        checks
            .expect_run()
            .returning(|_, _, _| Err(CtlError::Failed("`./verify` failed".into())));
        let mut o = opts();
        o.verify = Some("./verify".into());
        let err = run(
            &store,
            &gates(&store, &deployed),
            &trigger_that_deploys(&deployed),
            &checks,
            &o,
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), exit::FAILED);
        assert!(err.to_string().contains("switched back to blue"), "{err}");
        assert_eq!(live(&store).await, (Colour::Blue, 3));
        let last = &store.history(&app(), 1).await.unwrap()[0];
        assert!(
            matches!(
                last.kind,
                EventKind::Rollback {
                    to: Colour::Blue,
                    ..
                }
            ),
            "{last:?}"
        );
    }

    #[tokio::test]
    async fn a_held_lease_is_a_conflict_or_a_wait() {
        let store = store().await;
        store
            .acquire_lease(
                &app(),
                LeaseRequest::new("pipeline-0", Duration::from_secs(30)),
            )
            .await
            .unwrap();
        let deployed = Arc::new(AtomicBool::new(false));
        let err = run(
            &store,
            &gates(&store, &deployed),
            &MockTrigger::new(),
            &passing_checks(),
            &opts(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), exit::CONFLICT, "{err}");
        let mut o = opts();
        o.wait_lease = Some(Duration::from_millis(300));
        let err = run(
            &store,
            &gates(&store, &deployed),
            &MockTrigger::new(),
            &passing_checks(),
            &o,
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), exit::TIMEOUT, "{err}");
        assert_eq!(live(&store).await, (Colour::Blue, 1));
    }

    #[tokio::test]
    async fn lingering_websockets_are_drained_first() {
        let store = store().await;
        let deployed = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicU64::new(4));
        let mut g = MockGates::new();
        let (s, d, o2) = (store.clone(), Arc::clone(&deployed), Arc::clone(&open));
        g.expect_report().returning(move |url| {
            let state = futures_now(s.get(&app())).unwrap().unwrap();
            let colour = if url == BLUE {
                Colour::Blue
            } else {
                Colour::Green
            };
            let version = if colour == Colour::Green && d.load(Ordering::SeqCst) {
                "v2"
            } else {
                "v1"
            };
            let mut r = report(colour, state.active, version, state.generation);
            if colour == Colour::Green {
                r.connections.websockets = o2.load(Ordering::SeqCst);
            }
            Ok(r)
        });
        let o3 = Arc::clone(&open);
        g.expect_drain()
            .withf(|url, _, _| url == GREEN)
            .times(1)
            .returning(move |_, _, _| {
                o3.store(0, Ordering::SeqCst);
                Ok(4)
            });
        let out = run(
            &store,
            &g,
            &trigger_that_deploys(&deployed),
            &passing_checks(),
            &opts(),
        )
        .await
        .unwrap();
        assert!(out.switched);

        // A drain that never finishes, with --on-drain-timeout abort: no deploy.
        let store = self::store().await;
        let mut g = MockGates::new();
        let s = store.clone();
        g.expect_report().returning(move |url| {
            let state = futures_now(s.get(&app())).unwrap().unwrap();
            let colour = if url == BLUE {
                Colour::Blue
            } else {
                Colour::Green
            };
            let mut r = report(colour, state.active, "v1", state.generation);
            r.connections.websockets = 2;
            Ok(r)
        });
        g.expect_drain().returning(|_, _, _| Ok(2));
        let mut t = MockTrigger::new();
        t.expect_deploy().never();
        let mut o = opts();
        o.on_drain_timeout = OnDrainTimeout::Abort;
        let err = run(&store, &g, &t, &passing_checks(), &o)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), exit::TIMEOUT, "{err}");
    }

    #[tokio::test]
    async fn the_idle_colour_must_be_out_of_rotation_first() {
        let store = store().await;
        let mut g = MockGates::new();
        g.expect_report().returning(|url| {
            let colour = if url == BLUE {
                Colour::Blue
            } else {
                Colour::Green
            };
            let mut r = report(colour, Colour::Blue, "v1", 1);
            if colour == Colour::Green {
                r.answer = "handover".into(); // still answering OK
            }
            Ok(r)
        });
        let mut t = MockTrigger::new();
        t.expect_deploy().never();
        let err = run(&store, &g, &t, &passing_checks(), &opts())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), exit::TIMEOUT, "{err}");
        assert!(err.to_string().contains("out of rotation"), "{err}");
    }

    #[tokio::test]
    async fn no_switch_deploys_and_verifies_only() {
        let store = store().await;
        let deployed = Arc::new(AtomicBool::new(false));
        let mut o = opts();
        o.no_switch = true;
        let out = run(
            &store,
            &gates(&store, &deployed),
            &trigger_that_deploys(&deployed),
            &passing_checks(),
            &o,
        )
        .await
        .unwrap();
        assert!(!out.switched);
        let s = store.get(&app()).await.unwrap().unwrap();
        assert_eq!((s.active, s.generation), (Colour::Blue, 1));
        assert_eq!(s.green.unwrap().phase, DeployPhase::Deployed);
    }

    #[tokio::test]
    async fn a_store_outage_at_the_switch_is_exit_5() {
        let real = store().await;
        let mut mock = delegating(&real);
        mock.expect_switch().returning(|_, _| {
            Err(StoreError::Unavailable {
                backend: "redis",
                message: "connection reset".into(),
                retryable: true,
            })
        });
        let deployed = Arc::new(AtomicBool::new(false));
        let err = run(
            &mock,
            &gates(&real, &deployed),
            &trigger_that_deploys(&deployed),
            &passing_checks(),
            &opts(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), exit::UNREACHABLE, "{err}");
        assert!(
            err.to_string().contains("may or may not have happened"),
            "{err}"
        );
        assert_eq!(live(&real).await, (Colour::Blue, 1));
    }

    #[tokio::test]
    async fn a_switch_whose_answer_was_lost_is_retried_safely() {
        let real = store().await;
        let mut mock = delegating(&real);
        let (r, first) = (real.clone(), Arc::new(AtomicBool::new(true)));
        mock.expect_switch().returning(move |a, req| {
            // The first switch commits, but its answer is lost on the way back.
            let out = futures_now(r.switch(a, req));
            if first.swap(false, Ordering::SeqCst) {
                return Err(StoreError::Unavailable {
                    backend: "redis",
                    message: "connection reset".into(),
                    retryable: true,
                });
            }
            out
        });
        let deployed = Arc::new(AtomicBool::new(false));
        let out = run(
            &mock,
            &gates(&real, &deployed),
            &trigger_that_deploys(&deployed),
            &passing_checks(),
            &opts(),
        )
        .await
        .unwrap();
        assert_eq!(out.generation, 2, "one switch, recognised on retry");
        assert_eq!(live(&real).await, (Colour::Green, 2));
    }

    #[tokio::test]
    async fn a_lost_lease_stops_the_release() {
        let store = store().await;
        let never = Arc::new(AtomicBool::new(false));
        let mut t = MockTrigger::new();
        let s = store.clone();
        t.expect_deploy().times(1).returning(move |_, _| {
            // Someone breaks the lease while the deploy runs.
            futures_now(s.break_lease(
                &app(),
                bg_state::BreakLease {
                    actor: "ops".into(),
                    reason: None,
                },
            ))
            .unwrap();
            Ok(())
        });
        let mut o = opts();
        o.lease_ttl = Duration::from_millis(150);
        o.ready_timeout = Duration::from_secs(5);
        let err = run(&store, &gates(&store, &never), &t, &passing_checks(), &o)
            .await
            .unwrap_err();
        assert!(matches!(err, CtlError::LeaseLost(_)), "{err:?}");
        assert_eq!(err.exit_code(), exit::CONFLICT);
        assert_eq!(live(&store).await, (Colour::Blue, 1));
    }

    #[tokio::test]
    async fn a_drain_under_way_is_still_waited_for() {
        let store = store().await;
        let deployed = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicU64::new(3));
        let polls = Arc::new(AtomicU64::new(0));
        let mut g = MockGates::new();
        let (s, d, o2, p) = (
            store.clone(),
            Arc::clone(&deployed),
            Arc::clone(&open),
            Arc::clone(&polls),
        );
        g.expect_report().returning(move |url| {
            let state = futures_now(s.get(&app())).unwrap().unwrap();
            let colour = if url == BLUE {
                Colour::Blue
            } else {
                Colour::Green
            };
            let version = if colour == Colour::Green && d.load(Ordering::SeqCst) {
                "v2"
            } else {
                "v1"
            };
            let mut r = report(colour, state.active, version, state.generation);
            if colour == Colour::Green {
                // The gate's own drain closes them over a few looks.
                if p.fetch_add(1, Ordering::SeqCst) > 4 {
                    o2.store(0, Ordering::SeqCst);
                }
                r.connections.websockets = o2.load(Ordering::SeqCst);
            }
            Ok(r)
        });
        g.expect_drain().returning(|_, _, _| Ok(0)); // asked already: nobody new
        let d2 = Arc::clone(&deployed);
        let o3 = Arc::clone(&open);
        let mut t = MockTrigger::new();
        t.expect_deploy().times(1).returning(move |_, _| {
            assert_eq!(
                o3.load(Ordering::SeqCst),
                0,
                "deployed while websockets were still open"
            );
            d2.store(true, Ordering::SeqCst);
            Ok(())
        });
        let out = run(&store, &g, &t, &passing_checks(), &opts())
            .await
            .unwrap();
        assert!(out.switched);
    }

    /// A mock store that passes everything but `switch` to `real`.
    fn delegating(real: &MemoryStore) -> MockColourStore {
        let mut mock = MockColourStore::new();
        let r = real.clone();
        mock.expect_acquire_lease()
            .returning(move |a, req| futures_now(r.acquire_lease(a, req)));
        let r = real.clone();
        mock.expect_renew_lease()
            .returning(move |a, f, t| futures_now(r.renew_lease(a, f, t)));
        let r = real.clone();
        mock.expect_get().returning(move |a| futures_now(r.get(a)));
        let r = real.clone();
        mock.expect_presences()
            .returning(move |a| futures_now(r.presences(a)));
        let r = real.clone();
        mock.expect_record_deploy()
            .returning(move |a, rec| futures_now(r.record_deploy(a, rec)));
        let r = real.clone();
        mock.expect_release_lease()
            .returning(move |a, f| futures_now(r.release_lease(a, f)));
        mock
    }
}
