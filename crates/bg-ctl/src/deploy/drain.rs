//! Steps 3 and 4 of a release: the idle colour out of rotation as the
//! load balancer sees it, then drained at `--drain-window`'s pace.

use bg_state::Colour;
use tokio::time::Duration;

use super::options::{OnDrainTimeout, millis};
use super::{Deployer, Plan};
use crate::error::{CtlError, CtlResult, Timeout, Undrained, WaitFor};
use crate::gates::ConnectionCounts;
use crate::readiness;

/// A duration as people read it in a progress line: `1.5s`, `20s`.
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 && s.fract() != 0.0 {
        format!("{s:.1}s")
    } else {
        format!("{}s", s.round())
    }
}

impl Deployer<'_> {
    /// Step 3: the idle colour is out of rotation as the load balancer
    /// sees it — otherwise clients drained in step 4 land right back on it.
    pub(super) async fn wait_out_of_rotation(&self, plan: &Plan) -> CtlResult<()> {
        let o = self.opts;
        let (idle, generation) = (plan.idle, plan.generation);
        let urls = o.urls(idle);
        if urls.is_empty() {
            self.report.warn(format!(
                "no gate URL for {idle} (--gate-{idle}): cannot prove it is out of rotation or drain it"
            ));
            return Ok(());
        }
        let window = millis(o.lb_window);
        // The load balancers as the live colour's gates know them: the idle
        // gates may have been restarted a moment ago.
        let mut known: Vec<String> = Vec::new();
        for url in o.urls(plan.live) {
            if let Ok(r) = self.gates.report(url).await {
                for s in readiness::lb_sources(&r, window) {
                    if !known.contains(&s) {
                        known.push(s);
                    }
                }
            }
        }
        let known = &known;
        self.wait(
            WaitFor::OutOfRotation(idle),
            o.ready_timeout,
            false,
            || async {
                self.unmoved(plan).await?;
                self.each_gate(urls, move |r, url| {
                    readiness::out_of_rotation(r, url, idle, generation, o.lb_fall, window, known)
                })
                .await
            },
        )
        .await?;
        self.report.step(format!("{idle} is out of rotation"));
        Ok(())
    }

    /// Step 4: drain it — ask its gates to close lingering websockets,
    /// paced to finish within `--drain-window` (including any that open
    /// while the drain runs), and wait for none to be left. When
    /// `--drain-timeout` runs out, abort (the default: the restart would
    /// cut them) or proceed as told. A pace that cannot finish in time is
    /// refused before anything is asked.
    pub(super) async fn drain(&self, plan: &Plan) -> CtlResult<()> {
        let o = self.opts;
        let (idle, pace) = (plan.idle, o.drain_pace);
        let mut held = Vec::new();
        for url in o.urls(idle) {
            held.push((url, self.gates.report(url).await?.connections));
        }
        let open: u64 = held.iter().filter_map(|(_, c)| c.websockets).sum();
        let busy: u64 = held.iter().map(|(_, c)| c.requests).sum();
        let uncounted: Vec<_> = held
            .iter()
            .filter(|(_, c)| c.websockets.is_none())
            .map(|(url, _)| crate::reason::shown(url))
            .collect();
        if open == 0 && busy == 0 && uncounted.is_empty() {
            return Ok(());
        }
        let counts: Vec<ConnectionCounts> = held.iter().map(|(_, c)| *c).collect();
        let takes = self.drain_takes(idle, &counts, true)?;
        let mut asked = 0;
        for (url, c) in &held {
            // A gate that cannot count is asked too: it forwards the drain
            // to its service, which can.
            if c.websockets != Some(0) {
                asked += self
                    .gates
                    .drain(url, pace, c.websockets.unwrap_or(0), o.drain_timeout)
                    .await?;
            }
        }
        if !uncounted.is_empty() {
            self.report.warn(format!(
                "{} cannot count the websockets of {idle} behind {}: their service's connections route fails or is slow; waiting until it answers, for at most --drain-timeout {}",
                if uncounted.len() == 1 { "a gate" } else { "gates" },
                uncounted.join(", "),
                secs(o.drain_timeout)
            ));
        }
        // A drain already under way (the gate's own, or an earlier run's)
        // goes on, but its sockets are still to be waited for; and requests
        // the load balancer sent before it marked the colour down are let
        // finish before the restart.
        if open > 0 {
            self.report.step(format!(
                "{open} websockets open on {idle}; {asked} newly asked to reconnect, within about {}",
                secs(takes)
            ));
        }
        let drained = self
            .wait(WaitFor::Drained(idle), o.drain_timeout, false, || async {
                // Someone switched meanwhile: the colour may be live now.
                self.unmoved(plan).await?;
                let gates = self.connections(idle).await?;
                Ok(readiness::drained(
                    gates.iter().map(|(url, c)| (url.as_str(), *c)),
                ))
            })
            .await;
        match drained {
            Ok(()) => {
                self.report.step(format!("{idle} drained"));
                Ok(())
            }
            Err(CtlError::Timeout(t @ Timeout::Gates { .. })) => {
                // What the restart would cut, and why, as the gates say now.
                let left = match self.connections(idle).await {
                    Ok(gates) => {
                        let ready =
                            readiness::drained(gates.iter().map(|(url, c)| (url.as_str(), *c)));
                        if ready == readiness::Readiness::Ready {
                            self.report.step(format!("{idle} drained"));
                            return Ok(());
                        }
                        sum(gates.iter().map(|(_, c)| c))
                    }
                    Err(_) if o.on_drain_timeout == OnDrainTimeout::Proceed => {
                        self.report.warn(format!(
                            "{t}; proceeding, as --on-drain-timeout proceed says"
                        ));
                        return Ok(());
                    }
                    Err(_) => return Err(CtlError::Timeout(t)),
                };
                let undrained = Undrained {
                    colour: idle,
                    limit: o.drain_timeout,
                    websockets: left.websockets,
                    requests: left.requests,
                    arrived: left.arrived_while_draining,
                };
                match o.on_drain_timeout {
                    OnDrainTimeout::Abort => Err(CtlError::Timeout(Timeout::Drain(undrained))),
                    OnDrainTimeout::Proceed => {
                        self.report.warn(format!(
                            "{undrained}; proceeding, as --on-drain-timeout proceed says"
                        ));
                        Ok(())
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    /// How long asking the websockets `held` by `idle`'s gates takes at
    /// `--drain-window`'s pace (each gate asks its own: the busiest sets
    /// the time); refused when `--drain-timeout` cannot cover it and leave
    /// the clients time to reconnect, and, when `say`, said when a cap
    /// makes the window impossible.
    pub(super) fn drain_takes(
        &self,
        idle: Colour,
        held: &[ConnectionCounts],
        say: bool,
    ) -> CtlResult<Duration> {
        let o = self.opts;
        let pace = o.drain_pace;
        let most = held.iter().filter_map(|c| c.websockets).max().unwrap_or(0);
        let takes = pace.takes(most);
        let capped = takes > pace.window;
        if most > 0 && takes >= o.drain_timeout {
            let change = if capped {
                "raise --drain-max-rate or --drain-timeout"
            } else {
                "shorten --drain-window or raise --drain-timeout"
            };
            return Err(CtlError::Usage(format!(
                "asking the {most} websockets of one gate of {idle} to move takes about {}, not less than --drain-timeout {}: nothing was asked or restarted; {change}",
                secs(takes),
                secs(o.drain_timeout)
            )));
        }
        if say
            && capped
            && let Some(cap) = pace.max_rate
        {
            self.report.warn(format!(
                "asking {most} websockets at most {cap} a second (--drain-max-rate) takes about {}, longer than --drain-window {}; going on, as --drain-timeout {} covers it",
                secs(takes),
                secs(pace.window),
                secs(o.drain_timeout)
            ));
        }
        Ok(takes)
    }

    /// The connections of each of `colour`'s gates.
    async fn connections(&self, colour: Colour) -> CtlResult<Vec<(String, ConnectionCounts)>> {
        let mut gates = Vec::new();
        for url in self.opts.urls(colour) {
            gates.push((url.to_owned(), self.gates.report(url).await?.connections));
        }
        Ok(gates)
    }
}

/// Connections summed; websockets unknown if any gate's are.
fn sum<'a>(gates: impl IntoIterator<Item = &'a ConnectionCounts>) -> ConnectionCounts {
    let mut total = ConnectionCounts {
        websockets: Some(0),
        ..ConnectionCounts::default()
    };
    for c in gates {
        total.websockets = total.websockets.zip(c.websockets).map(|(a, b)| a + b);
        total.requests += c.requests;
        total.arrived_while_draining += c.arrived_while_draining;
    }
    total
}
