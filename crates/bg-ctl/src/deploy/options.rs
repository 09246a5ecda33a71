//! How a release runs: every option of `bg-ctl deploy`, and their defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use bg_state::wire::DrainPace;
use bg_state::{AppName, Colour, DeployPhase, DeployRecord, SwitchRequest};

use crate::error::{CtlError, CtlResult};

/// What to do when the drain does not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnDrainTimeout {
    /// Stop without deploying (exit 4): the live colour stays, nothing is cut.
    #[default]
    Abort,
    /// Deploy anyway: the restart cuts the websockets still open.
    Proceed,
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
    /// The gates that are the store (`--gate`), when it is reached through
    /// gates: a release never restarts all of them at once.
    pub store_gates: Vec<String>,
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
    /// How the gates ask the idle colour's websockets to move: every one
    /// within a window, with an optional cap per second per gate.
    pub drain_pace: DrainPace,
    /// Probes in a row a load balancer must have seen answered STOP.
    pub lb_fall: usize,
    /// Probes in a row a load balancer must have seen answered OK.
    pub lb_rise: usize,
    /// A probe source counts as a load balancer once it probed at least
    /// three times within this, at a steady interval, and while its last
    /// probe is within this of the newest probe a gate logged.
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
            store_gates: Vec::new(),
            lease_ttl: Duration::from_secs(30),
            wait_lease: None,
            ready_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(60),
            on_drain_timeout: OnDrainTimeout::Abort,
            drain_pace: DrainPace::default(),
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

    /// Refuses, before anything happens, what the store would refuse later:
    /// a version it cannot record or a reason it cannot keep (a multi-line
    /// commit message, say) would otherwise stop the release at the switch,
    /// after the idle colour was restarted.
    ///
    /// # Errors
    /// [`CtlError::Usage`] naming the option.
    pub fn validate(&self) -> CtlResult<()> {
        let usage = |option: &str, e: bg_state::Error| {
            let why = match e {
                bg_state::Error::InvalidInput(i) => i.reason,
                other => other.to_string(),
            };
            CtlError::Usage(format!("{option}: {why}"))
        };
        DeployRecord::new(
            Colour::Blue,
            self.version.clone(),
            DeployPhase::Deploying,
            self.actor.clone(),
        )
        .fence(1)
        .validate()
        .map_err(|e| usage("--version or --actor", e))?;
        self.switch_request(Colour::Blue, 1, 1, bg_state::MAX_GENERATION)
            .validate()
            .map_err(|e| {
                usage(
                    "--reason (one line: $CI_COMMIT_TITLE, not $CI_COMMIT_MESSAGE)",
                    e,
                )
            })?;
        self.validate_drain()
    }

    /// Everything [`validate`](Self::validate) refuses, and the options that
    /// only make sense together: what a release refuses before it takes
    /// the lease, and `bg-ctl --check` refuses without a store.
    ///
    /// # Errors
    /// [`CtlError::Usage`] naming the option.
    pub fn check(&self) -> CtlResult<()> {
        self.validate()?;
        if self.confirm_lb
            && (self.urls(Colour::Blue).is_empty() || self.urls(Colour::Green).is_empty())
        {
            return Err(CtlError::Usage(
                "--confirm-lb reads the load balancer's probes from the gates: give --gate-blue and --gate-green".into(),
            ));
        }
        Ok(())
    }

    /// A pace no gate would take.
    fn validate_drain(&self) -> CtlResult<()> {
        self.drain_pace
            .check()
            .map_err(|why| CtlError::Usage(format!("--drain-window and --drain-max-rate: {why}")))
    }

    /// The switch of step 7 to `to`: compare-and-swap on `generation`,
    /// fenced, with an idempotency key unique to this lease (when it was
    /// taken, `lease_since`: the key is recorded in the state for anyone to
    /// read, so it never carries the fence) so a retry after a lost answer
    /// is recognised.
    pub(super) fn switch_request(
        &self,
        to: Colour,
        generation: u64,
        fence: u64,
        lease_since: u64,
    ) -> SwitchRequest {
        let id: String = format!("deploy:{lease_since}:{}", self.version)
            .chars()
            .take(bg_state::MAX_REQUEST_ID_LEN)
            .collect();
        let reason = self
            .reason
            .clone()
            .unwrap_or_else(|| format!("release {}", self.version))
            .chars()
            .take(bg_state::MAX_REASON_LEN)
            .collect::<String>();
        SwitchRequest::new(to, self.actor.clone())
            .expect_generation(generation)
            .fence(fence)
            .request_id(id)
            .reason(reason)
    }

    /// The gates given for `colour`.
    pub(super) fn urls(&self, colour: Colour) -> &[String] {
        self.gates.get(&colour).map_or(&[], Vec::as_slice)
    }

    /// What `--smoke` and `--verify` commands get: the colour, the version
    /// and a gate's URL.
    pub(super) fn check_env(&self, colour: Colour, url: &str) -> Vec<(String, String)> {
        vec![
            ("BG_COLOUR".into(), colour.to_string()),
            ("BG_VERSION".into(), self.version.clone()),
            ("BG_GATE_URL".into(), url.to_owned()),
        ]
    }
}

/// A duration in whole milliseconds, as gates report ages.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request id is recorded in the state for anyone to read: it is
    /// unique to the lease by when the lease was taken, never by its fence.
    #[test]
    fn the_switch_request_id_does_not_carry_the_fence() {
        let o = DeployOptions::new(AppName::new("chat").unwrap(), "v2", "ci");
        let fence = 48_151_623_420_042;
        let req = o.switch_request(Colour::Green, 7, fence, 1_700_000_000_123);
        assert_eq!(req.fence, Some(fence));
        let id = req.request_id.unwrap();
        assert_eq!(id, "deploy:1700000000123:v2");
        assert!(!id.contains(&fence.to_string()), "{id}");
    }
}
