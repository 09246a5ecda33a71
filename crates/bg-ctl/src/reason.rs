//! Why a wait of a release is not over yet. Shared by the readiness rules
//! (which decide it) and the errors (a wait that ran out says why); it
//! imports nothing of the crate, so neither has to import the other.

use std::fmt;

use bg_state::Colour;
use bg_state::wire::GateAnswer;

/// Whether a wait is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Go on.
    Ready,
    /// Not yet, and why.
    Pending(NotYet),
}

/// Why the gates are not ready yet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotYet {
    /// A gate answers from another generation than the store's.
    Generation {
        /// The gate.
        url: String,
        /// Its generation.
        at: u64,
        /// The store's.
        of: u64,
    },
    /// A gate still answers OK or HANDOVER for its colour.
    Answers {
        /// The gate.
        url: String,
        /// What it answers.
        answer: GateAnswer,
    },
    /// A load balancer has not yet seen the idle colour answer STOP often
    /// enough to have taken it out.
    StopSeen {
        /// The probe source.
        source: String,
        /// The gate.
        url: String,
        /// STOP answers in a row it has seen.
        seen: usize,
        /// How many it must have seen.
        need: usize,
    },
    /// A gate runs another version.
    Runs {
        /// The gate.
        url: String,
        /// What it runs.
        version: String,
    },
    /// A gate cannot hear the store, or its view is too old.
    Deaf {
        /// The gate.
        url: String,
        /// How old its view is.
        stale_ms: u64,
    },
    /// No gate of the colour reports its presence in the store.
    NoPresence(Colour),
    /// A gate's presence report says it runs another version or generation.
    PresenceLags {
        /// The gate's id.
        gate: String,
        /// What it runs.
        version: String,
        /// The generation it applied.
        generation: u64,
    },
    /// Connections still open on the colour being drained.
    Busy {
        /// Open websockets.
        websockets: u64,
        /// Requests in flight.
        requests: u64,
    },
    /// A gate of the colour being drained cannot count its websockets.
    Uncounted {
        /// The gate.
        url: String,
    },
    /// A load balancer has not yet seen a colour answer as it should after
    /// the switch.
    LbUnseen {
        /// The probe source.
        source: String,
        /// The colour probed.
        colour: Colour,
        /// The answer it should see.
        answer: GateAnswer,
        /// How many in a row it has seen.
        seen: usize,
        /// How many it must have seen.
        need: usize,
    },
    /// No gate logged any load balancer probe.
    NoProbes,
    /// A sidecar gate's service fails its health checks.
    ServiceDown {
        /// The gate.
        url: String,
        /// What its last check found.
        error: Option<String>,
    },
}

impl fmt::Display for NotYet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotYet::Generation { url, at, of } => {
                write!(f, "{} is at generation {at} of {of}", shown(url))
            }
            NotYet::Answers { url, answer } => write!(f, "{} still answers {answer}", shown(url)),
            NotYet::StopSeen {
                source,
                url,
                seen,
                need,
            } => write!(
                f,
                "{source} has seen STOP {seen} of {need} times at {}",
                shown(url)
            ),
            NotYet::Runs { url, version } => write!(f, "{} runs {version}", shown(url)),
            NotYet::Deaf { url, stale_ms } => {
                write!(
                    f,
                    "{} cannot hear the store (view {stale_ms} ms old)",
                    shown(url)
                )
            }
            NotYet::NoPresence(colour) => write!(f, "no gate of {colour} reports its presence"),
            NotYet::PresenceLags {
                gate,
                version,
                generation,
            } => write!(f, "gate {gate} runs {version} at generation {generation}"),
            NotYet::Busy {
                websockets,
                requests,
            } => write!(
                f,
                "{websockets} websockets open, {requests} requests in flight"
            ),
            NotYet::Uncounted { url } => write!(
                f,
                "gate {} cannot count its websockets (its service's connections route fails or is slow): unknown is not zero",
                shown(url)
            ),
            NotYet::LbUnseen {
                source,
                colour,
                answer,
                seen,
                need,
            } => write!(
                f,
                "{source} has seen {colour} {answer} {seen} of {need} times"
            ),
            NotYet::NoProbes => f.write_str("no load balancer probes seen at any gate"),
            NotYet::ServiceDown { url, error } => {
                write!(f, "the service beside {} is down", shown(url))?;
                match error {
                    Some(e) => write!(f, " ({e})"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// A gate URL as a message may show it: as given, unless it carries
/// credentials or a query, which are hidden.
pub(crate) fn shown(url: &str) -> std::borrow::Cow<'_, str> {
    if url.contains('@') || url.contains('?') {
        std::borrow::Cow::Owned(bg_state::redact_url(url))
    } else {
        std::borrow::Cow::Borrowed(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_urls_in_reasons_hide_their_credentials() {
        let url = "https://ci:hunter2@green.internal:9090/?token=xyz".to_owned();
        for why in [
            NotYet::Generation {
                url: url.clone(),
                at: 1,
                of: 2,
            },
            NotYet::Runs {
                url: url.clone(),
                version: "v1".into(),
            },
            NotYet::Uncounted { url: url.clone() },
        ] {
            let text = why.to_string();
            assert!(
                !text.contains("hunter2")
                    && !text.contains("xyz")
                    && text.contains("green.internal"),
                "{text}"
            );
        }
        assert_eq!(shown("http://green:9090"), "http://green:9090");
    }
}
