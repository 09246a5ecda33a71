//! The seed-compatibility mirror of the hand-made design's keys.

use crate::error::{Error, Result};
use crate::model::{AppName, Colour};

/// The seed-compatibility mirror: keeps `lb-status-<id>` = `1` for the live
/// colour and `0` for the idle one, written in the same script as every
/// change, so services still running the hand-made health check keep working
/// during a migration.
///
/// A store opened with a mirror records its ids in the app's state (fields
/// `mirror_blue` and `mirror_green` of the state hash) on its first init,
/// switch or presence report, unless ids are recorded already; an init
/// replaces them. From then on the script moves the keys on every change,
/// whoever makes it: a store opened without the mirror too. Data from before
/// the ids were kept loads as it is and gains them.
///
/// The legacy keys carry no app name, so a mirror belongs to one app: the
/// other apps in the same store do not touch them.
///
/// **Single-node Redis only** (Sentinel included): the legacy keys cannot
/// share the app's hash slot, so a Redis Cluster would refuse the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyMirror {
    /// The one app whose live colour the legacy keys follow.
    pub app: AppName,
    /// The hand-made id of the blue instance (e.g. `alfa`).
    pub blue_id: String,
    /// The hand-made id of the green instance (e.g. `beta`).
    pub green_id: String,
}

impl LegacyMirror {
    /// Mirror `app`'s live colour onto `lb-status-<blue_id>` and
    /// `lb-status-<green_id>`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] unless both ids are 1 to 64 characters of
    /// `A-Z a-z 0-9 . _ -` and differ.
    pub fn new(
        app: AppName,
        blue_id: impl Into<String>,
        green_id: impl Into<String>,
    ) -> Result<Self> {
        let (blue_id, green_id) = (blue_id.into(), green_id.into());
        for id in [&blue_id, &green_id] {
            let ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(Error::invalid(
                    "mirror",
                    format!(
                        "legacy id {:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'",
                        crate::text::shorten(id)
                    ),
                ));
            }
        }
        if blue_id == green_id {
            return Err(Error::invalid("mirror", "the two legacy ids must differ"));
        }
        Ok(LegacyMirror {
            app,
            blue_id,
            green_id,
        })
    }

    /// The legacy key of `colour`.
    #[must_use]
    pub fn key(&self, colour: Colour) -> String {
        match colour {
            Colour::Blue => format!("lb-status-{}", self.blue_id),
            Colour::Green => format!("lb-status-{}", self.green_id),
        }
    }
}
