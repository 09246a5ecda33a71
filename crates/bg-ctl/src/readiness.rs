//! When a colour's gates are ready for the next step of a release: the
//! rules of SPEC §5 (out of rotation, running the new version with a fresh
//! view, the load balancer's confirmation, no gate ahead of the store) as
//! pure functions over what the gates report and what the store says.
//!
//! No I/O and no clock here: `deploy` and `rollback` ask the gates and the
//! store, these rules decide, and their tests need neither mocks nor time.

use bg_state::{Colour, Presence};

use crate::error::{CtlError, CtlResult, GateAhead};
use crate::gates::{ConnectionCounts, GateAnswer, GateStatus, ProbeRecord, redact};

pub use crate::reason::{NotYet, Readiness};

/// A gate named for one colour that serves the other is a configuration
/// mistake that would make every wait meaningless.
///
/// # Errors
/// [`CtlError::Usage`] naming the gate (redacted) and both colours.
pub fn serves(r: &GateStatus, colour: Colour, url: &str) -> CtlResult<()> {
    if r.colour == colour {
        Ok(())
    } else {
        Err(CtlError::Usage(format!(
            "the gate at {} was given for {colour} but serves {}",
            redact(url),
            r.colour
        )))
    }
}

/// A gate that applied a generation the store does not have: the store
/// lost state, and switching now could send gates backwards.
#[must_use]
pub fn ahead_of(r: &GateStatus, url: &str, generation: u64) -> Option<GateAhead> {
    (r.generation > generation).then(|| GateAhead::Report {
        url: url.to_owned(),
        applied: r.generation,
        store: generation,
    })
}

/// No gate's presence report is ahead of the store's `generation`.
///
/// # Errors
/// [`GateAhead::Presences`] listing every gate that is.
pub fn none_ahead(presences: &[Presence], generation: u64) -> Result<(), GateAhead> {
    let gates: Vec<(String, u64)> = presences
        .iter()
        .filter(|p| p.applied_generation > generation)
        .map(|p| (p.gate_id.clone(), p.applied_generation))
        .collect();
    if gates.is_empty() {
        Ok(())
    } else {
        Err(GateAhead::Presences {
            store: generation,
            gates,
        })
    }
}

/// Step 3, for one gate of the idle colour: at the store's `generation`,
/// answering STOP, and seen answering STOP by every load balancer still
/// probing (`window_ms`) one time more than its `fall` count — the load
/// balancer marks the server down when it reads the fall-th answer, and the
/// next probe shows that moment has passed. The load balancers are those
/// [`lb_sources`] finds in `r`, and `known` ones found at other gates (a
/// gate restarted a moment ago has logged only a few probes).
///
/// # Errors
/// The gate serves the other colour, or is ahead of the store.
pub fn out_of_rotation(
    r: &GateStatus,
    url: &str,
    idle: Colour,
    generation: u64,
    fall: usize,
    window_ms: u64,
    known: &[String],
) -> CtlResult<Readiness> {
    serves(r, idle, url)?;
    if let Some(ahead) = ahead_of(r, url, generation) {
        return Err(ahead.into());
    }
    if r.generation < generation {
        return Ok(pending(NotYet::Generation {
            url: url.to_owned(),
            at: r.generation,
            of: generation,
        }));
    }
    if !r.is_stopped() {
        return Ok(pending(NotYet::Answers {
            url: url.to_owned(),
            answer: r.answer,
        }));
    }
    let need = fall + 1;
    let mut lbs = lb_sources(r, window_ms);
    lbs.extend(
        known
            .iter()
            .filter(|k| !lbs.contains(k))
            .cloned()
            .collect::<Vec<_>>(),
    );
    for (source, seen) in streaks_among(r, idle, GateAnswer::Stop, window_ms, &lbs) {
        if seen < need {
            return Ok(pending(NotYet::StopSeen {
                source,
                url: url.to_owned(),
                seen,
                need,
            }));
        }
    }
    Ok(Readiness::Ready)
}

/// Step 4: drained once every gate of the colour can count its
/// websockets, none is open and no request is in flight. A gate that
/// cannot count them (a sidecar whose service's connections route fails)
/// holds the drain: unknown is not zero.
#[must_use]
pub fn drained<'a>(gates: impl IntoIterator<Item = (&'a str, ConnectionCounts)>) -> Readiness {
    let (mut websockets, mut requests) = (0u64, 0u64);
    for (url, c) in gates {
        let Some(w) = c.websockets else {
            return pending(NotYet::Uncounted {
                url: url.to_owned(),
            });
        };
        websockets += w;
        requests += c.requests;
    }
    if websockets == 0 && requests == 0 {
        Readiness::Ready
    } else {
        pending(NotYet::Busy {
            websockets,
            requests,
        })
    }
}

/// A gate runs `version` and follows the store at `generation`: it hears
/// the store and, given `max_stale_ms`, its view is at most that old. Step
/// 6 (with the bound) and `rollback` (without) share it.
#[must_use]
pub fn runs_version(
    r: &GateStatus,
    url: &str,
    version: &str,
    generation: u64,
    max_stale_ms: Option<u64>,
) -> Readiness {
    // A sidecar gate answers DOWN while its service fails its checks: such
    // a colour must never become the only live one. Said first: the
    // version such a gate reports is only what it last knew.
    if let Some(s) = r.service.as_ref().filter(|s| !s.up) {
        return pending(NotYet::ServiceDown {
            url: url.to_owned(),
            error: s.error.clone(),
        });
    }
    if r.version != version {
        return pending(NotYet::Runs {
            url: url.to_owned(),
            version: r.version.clone(),
        });
    }
    if !r.store.healthy || max_stale_ms.is_some_and(|max| r.stale_ms > max) {
        return pending(NotYet::Deaf {
            url: url.to_owned(),
            stale_ms: r.stale_ms,
        });
    }
    if r.generation != generation {
        return pending(NotYet::Generation {
            url: url.to_owned(),
            at: r.generation,
            of: generation,
        });
    }
    Readiness::Ready
}

/// Step 6, for one gate of the idle colour: it runs the new `version` with
/// a view at most `max_stale_ms` old at the store's `generation` — a gate
/// that cannot hear the store must never become the only live colour.
///
/// # Errors
/// The gate serves the other colour, or is ahead of the store.
pub fn runs_fresh(
    r: &GateStatus,
    url: &str,
    idle: Colour,
    version: &str,
    generation: u64,
    max_stale_ms: u64,
) -> CtlResult<Readiness> {
    serves(r, idle, url)?;
    if let Some(ahead) = ahead_of(r, url, generation) {
        return Err(ahead.into());
    }
    Ok(runs_version(
        r,
        url,
        version,
        generation,
        Some(max_stale_ms),
    ))
}

/// Step 6 (and `rollback`) when no gate URL is given: the gates of
/// `colour` that report their presence in the store all run `version` at
/// `generation`, and there is at least one.
#[must_use]
pub fn presences_run(
    presences: &[Presence],
    colour: Colour,
    version: &str,
    generation: u64,
) -> Readiness {
    let mut of_colour = presences.iter().filter(|p| p.colour == colour).peekable();
    if of_colour.peek().is_none() {
        return pending(NotYet::NoPresence(colour));
    }
    match of_colour.find(|p| p.service_version != version || p.applied_generation != generation) {
        Some(p) => pending(NotYet::PresenceLags {
            gate: p.gate_id.clone(),
            version: p.service_version.clone(),
            generation: p.applied_generation,
        }),
        None => Readiness::Ready,
    }
}

/// Step 8, for one gate of `colour`: every load balancer in `lbs` still
/// probing it (`window_ms`) has seen it answer `answer` at least `need`
/// times in a row. `lbs` are the sources [`lb_sources`] found at any gate
/// of either colour: a gate restarted by the release has only a few probes
/// of its own, and the load balancer must still be seen there.
///
/// # Errors
/// The first probe source that has not, as the reason to wait. `Ok` counts
/// the sources: a wait over gates none of which logged a probe is not over.
pub fn lb_has_seen(
    r: &GateStatus,
    colour: Colour,
    answer: GateAnswer,
    need: usize,
    window_ms: u64,
    lbs: &[String],
) -> Result<usize, NotYet> {
    let streaks = streaks_among(r, colour, answer, window_ms, lbs);
    match streaks.iter().find(|(_, seen)| *seen < need) {
        Some((source, seen)) => Err(NotYet::LbUnseen {
            source: source.clone(),
            colour,
            answer,
            seen: *seen,
            need,
        }),
        None => Ok(streaks.len()),
    }
}

/// Probes a source must have made within the window to count as a load
/// balancer.
pub const LB_MIN_PROBES: usize = 3;

/// The load balancers among the sources that probed `r`'s gate: sources
/// still probing (their last probe at most `window_ms` older than the
/// newest in the log) that probed at least [`LB_MIN_PROBES`] times within
/// the window at a steady interval (see [`steady`]). Someone's one-off
/// `curl`, or a few by hand, is left out. A gate told its load balancers
/// (`--lb-source`) logs only theirs: then every source still probing
/// counts, from its first probe. Sources are keyed by address; probes
/// without one count as one source. The comparison is between the gate's
/// own timestamps, so clocks need not agree.
#[must_use]
pub fn lb_sources(r: &GateStatus, window_ms: u64) -> Vec<String> {
    let newest = r.probes.iter().map(|p| p.at_ms).max().unwrap_or(0);
    let mut times: Vec<(String, Vec<u64>)> = Vec::new();
    for p in r
        .probes
        .iter()
        .filter(|p| p.at_ms.saturating_add(window_ms) >= newest)
    {
        let src = source_key(p);
        match times.iter_mut().find(|(s, _)| *s == src) {
            Some((_, t)) => t.push(p.at_ms),
            None => times.push((src, vec![p.at_ms])),
        }
    }
    times
        .into_iter()
        .filter(|(_, t)| r.named_lb_sources || (t.len() >= LB_MIN_PROBES && steady(t)))
        .map(|(s, _)| s)
        .collect()
}

fn source_key(p: &ProbeRecord) -> String {
    p.source
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
}

/// How many of the most recent probes from each load balancer (as
/// [`lb_sources`] finds them in `r`), in a row, were answered `answer` for
/// `colour`.
#[must_use]
pub fn streaks(
    r: &GateStatus,
    colour: Colour,
    answer: GateAnswer,
    window_ms: u64,
) -> Vec<(String, usize)> {
    streaks_among(r, colour, answer, window_ms, &lb_sources(r, window_ms))
}

/// [`streaks`] of the sources in `lbs` that still probe `r`'s gate (their
/// last probe at most `window_ms` older than the newest in its log), however
/// few probes it logged of them.
#[must_use]
pub fn streaks_among(
    r: &GateStatus,
    colour: Colour,
    answer: GateAnswer,
    window_ms: u64,
    lbs: &[String],
) -> Vec<(String, usize)> {
    let newest = r.probes.iter().map(|p| p.at_ms).max().unwrap_or(0);
    let key = source_key;
    let active: Vec<String> = r
        .probes
        .iter()
        .filter(|p| p.at_ms.saturating_add(window_ms) >= newest)
        .map(key)
        .filter(|s| lbs.contains(s))
        .collect();
    // Per source: its streak so far, and whether an other answer ended it.
    let mut by_source: Vec<(String, usize, bool)> = Vec::new();
    for p in r
        .probes
        .iter()
        .rev()
        .filter(|p| p.colour == colour && active.contains(&key(p)))
    {
        let src = key(p);
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

/// Whether probe times (in ms, any order) come at a steady interval, as a
/// load balancer's health checks do: no gap is more than ten times the
/// median gap plus two seconds. Lenient on purpose: a load balancer that
/// checks faster while a server changes state (HAProxy's `fastinter`) still
/// counts, since leaving a real one out would let a release go ahead before
/// it saw STOP; a person's few checks by hand rarely keep such a pace.
#[must_use]
pub fn steady(times: &[u64]) -> bool {
    let mut t = times.to_vec();
    t.sort_unstable();
    let mut gaps: Vec<u64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let (Some(&median), Some(&max)) = (gaps.get((gaps.len().saturating_sub(1)) / 2), gaps.last())
    else {
        return true;
    };
    max <= median.saturating_mul(10).saturating_add(2000)
}

fn pending(why: NotYet) -> Readiness {
    Readiness::Pending(why)
}

#[cfg(test)]
mod tests;
