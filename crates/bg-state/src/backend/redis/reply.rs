//! Reading the store script's replies: a status, a detail, the server's
//! clock, and the app's state hash as field/value pairs.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::model::{
    AppName, Colour, DeployPhase, Deployment, LastChange, Lease, LiveVersion, State,
};
use crate::store::check_version;

pub(super) struct Reply {
    pub(super) status: String,
    pub(super) detail: String,
    pub(super) now: u64,
    pub(super) fields: HashMap<String, String>,
}

impl Reply {
    pub(super) fn parse(app: &AppName, raw: Vec<String>) -> Result<Reply> {
        let bad = || Error::Unavailable {
            backend: "redis",
            message: format!("malformed script reply for app {app}"),
            retryable: false,
        };
        let mut it = raw.into_iter();
        let (Some(status), Some(detail), Some(now)) = (it.next(), it.next(), it.next()) else {
            return Err(bad());
        };
        let now = now.parse().map_err(|_| bad())?;
        let mut fields = HashMap::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            fields.insert(k, v);
        }
        Ok(Reply {
            status,
            detail,
            now,
            fields,
        })
    }
}

fn corrupt_field(app: &AppName, name: &str) -> Error {
    Error::corrupt(
        format!("bg:{{{app}}}:state"),
        format!("field {name:?} is missing or garbage"),
    )
}

fn req_field<'a>(app: &AppName, f: &'a HashMap<String, String>, name: &str) -> Result<&'a str> {
    f.get(name)
        .map(String::as_str)
        .ok_or_else(|| corrupt_field(app, name))
}

fn num_field(app: &AppName, f: &HashMap<String, String>, name: &str) -> Result<u64> {
    req_field(app, f, name)?
        .parse()
        .map_err(|_| corrupt_field(app, name))
}

/// The state from its hash; `None` if the app was never initialised.
pub(super) fn parse_state(app: &AppName, f: &HashMap<String, String>) -> Result<Option<State>> {
    if !f.contains_key("generation") && !f.contains_key("active") {
        return Ok(None);
    }
    let generation = num_field(app, f, "generation")?;
    if generation == 0 {
        return Err(corrupt_field(app, "generation"));
    }
    let active: Colour = req_field(app, f, "active")?
        .parse()
        .map_err(|_| corrupt_field(app, "active"))?;
    let deployment = |c: Colour| -> Result<Option<Deployment>> {
        let key = |s: &str| format!("{c}_{s}");
        let Some(version) = f.get(&key("version")) else {
            // A phase says there is a deployment; without its version the
            // script refuses the hash, and so does this.
            if f.contains_key(&key("phase")) {
                return Err(corrupt_field(app, &key("phase")));
            }
            return Ok(None);
        };
        let phase = match req_field(app, f, &key("phase"))? {
            "deploying" => DeployPhase::Deploying,
            "deployed" => DeployPhase::Deployed,
            _ => return Err(corrupt_field(app, &key("phase"))),
        };
        Ok(Some(Deployment {
            version: version.clone(),
            phase,
            at_ms: num_field(app, f, &key("at"))?,
            actor: req_field(app, f, &key("actor"))?.to_owned(),
            request_id: f.get(&key("request")).cloned(),
        }))
    };
    // The same rules as `corrupt()` in the script: a live version is a valid
    // version, and its rolled-back mark is "1" and only next to one.
    let live = |c: Colour| -> Result<Option<LiveVersion>> {
        let (live_key, rb_key) = (format!("{c}_live"), format!("{c}_live_rb"));
        let rolled_back = match f.get(&rb_key).map(String::as_str) {
            None => false,
            Some("1") if f.contains_key(&live_key) => true,
            Some(_) => return Err(corrupt_field(app, &rb_key)),
        };
        let Some(version) = f.get(&live_key) else {
            return Ok(None);
        };
        check_version(version).map_err(|_| corrupt_field(app, &live_key))?;
        Ok(Some(LiveVersion {
            version: version.clone(),
            rolled_back,
        }))
    };
    Ok(Some(State {
        app: app.clone(),
        active,
        generation,
        last_change: LastChange {
            actor: req_field(app, f, "lc_actor")?.to_owned(),
            at_ms: num_field(app, f, "lc_at")?,
            reason: f.get("lc_reason").cloned(),
            forced: f.get("lc_forced").is_some_and(|v| v == "1"),
            request_id: f.get("lc_request").cloned(),
            fenced: match f.get("lc_fence") {
                Some(v) => {
                    v.parse::<u64>()
                        .map_err(|_| corrupt_field(app, "lc_fence"))?;
                    true
                }
                None => false,
            },
        },
        blue: deployment(Colour::Blue)?,
        green: deployment(Colour::Green)?,
        blue_live: live(Colour::Blue)?,
        green_live: live(Colour::Green)?,
    }))
}

/// The lease under `prefix`, if it is live at `now`.
pub(super) fn parse_lease(
    f: &HashMap<String, String>,
    prefix: &str,
    now: u64,
) -> Result<Option<Lease>> {
    let get = |k: &str| f.get(&format!("{prefix}{k}"));
    let Some(holder) = get("holder") else {
        return Ok(None);
    };
    let num = |k: &str| -> Result<u64> {
        get(k).and_then(|v| v.parse().ok()).ok_or_else(|| {
            Error::corrupt("lease", format!("field {prefix}{k} is missing or garbage"))
        })
    };
    let lease = Lease {
        holder: holder.clone(),
        fence: num("fence")?,
        owner: get("owner").cloned(),
        acquired_at_ms: num("acquired")?,
        expires_at_ms: num("expires")?,
    };
    Ok((lease.expires_at_ms > now).then_some(lease))
}

/// What a reply means for a call: its state, or the error a refusal is.
impl super::RedisStore {
    pub(super) fn state_of(&self, app: &AppName, reply: &Reply) -> Result<State> {
        parse_state(app, &reply.fields)?.ok_or_else(|| Error::NotInitialised { app: app.clone() })
    }

    /// Turns a refusal status into its error.
    pub(super) fn refusal(&self, app: &AppName, reply: &Reply) -> Error {
        let now = reply.now;
        match reply.status.as_str() {
            "not_init" => Error::NotInitialised { app: app.clone() },
            "corrupt" => Error::corrupt(
                format!("redis {}: bg:{{{app}}}:state", self.inner.shown),
                format!(
                    "field {:?} is missing or garbage; left untouched",
                    reply.detail
                ),
            ),
            "already_init" => match self.state_of(app, reply) {
                Ok(s) => Error::AlreadyInitialised {
                    current: Box::new(s),
                },
                Err(e) => e,
            },
            "conflict" => match self.state_of(app, reply) {
                Ok(s) => Error::Conflict {
                    expected: reply.detail.parse().unwrap_or_default(),
                    current: Box::new(s),
                },
                Err(e) => e,
            },
            "deploy_live" => Error::DeployToLive {
                app: app.clone(),
                colour: reply
                    .fields
                    .get("active")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(Colour::Blue),
            },
            "lease_held" => match parse_lease(&reply.fields, "lease_", now) {
                Ok(Some(l)) => Error::LeaseHeld {
                    app: app.clone(),
                    holder: l.holder,
                    expires_at_ms: l.expires_at_ms,
                },
                Ok(None) => Error::corrupt(format!("bg:{{{app}}}:state"), "lease fields vanished"),
                Err(e) => e,
            },
            other => Error::Unavailable {
                backend: "redis",
                message: format!("unexpected script status {other:?}"),
                retryable: false,
            },
        }
    }

    pub(super) fn stale_fence(app: &AppName, presented: u64) -> Error {
        Error::StaleFence {
            app: app.clone(),
            presented,
        }
    }

    pub(super) fn lease_reply(
        &self,
        app: &AppName,
        presented: Option<u64>,
        reply: &Reply,
    ) -> Result<Lease> {
        match reply.status.as_str() {
            "ok" => parse_lease(&reply.fields, "lease_", reply.now)?
                .ok_or_else(|| Error::corrupt(format!("bg:{{{app}}}:state"), "lease not written")),
            "stale_fence" => Err(Self::stale_fence(app, presented.unwrap_or_default())),
            _ => Err(self.refusal(app, reply)),
        }
    }
}
