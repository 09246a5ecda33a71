//! `history`: the audit trail, newest first.

use bg_state::{Event, format_millis};

/// One history line.
#[must_use]
pub fn describe(e: &Event) -> String {
    let what = &e.kind;
    format!(
        "{}  gen {:>4}  {:<28} {what}{}{}",
        format_millis(e.at_ms),
        e.generation,
        e.actor,
        if e.forced { " [forced]" } else { "" },
        e.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )
}
