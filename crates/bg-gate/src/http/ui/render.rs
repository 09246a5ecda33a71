//! The page as HTML: the snapshot a reader without scripts sees, in the
//! same structure `page.js` renders the data into. Every string from the
//! store goes through [`esc`].

use std::borrow::Cow;
use std::fmt::Write;

use bg_state::format_millis;

use super::{HISTORY_SHOWN, Snapshot};

/// `text` safe in HTML text and in a quoted attribute.
pub(super) fn esc(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A duration for people: `40 ms`, `12 s`, `3 min 5 s`, `2 h 10 min`
/// (the same words as `dur` in `page.js`).
pub(super) fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{s} s"),
        60_000..3_600_000 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

const NONE: &str = "\u{2014}";

fn or_none(v: Option<&str>) -> Cow<'_, str> {
    v.map_or(Cow::Borrowed(NONE), esc)
}

/// The whole page for `s`, with `script` and `style` inlined.
pub(super) fn page(s: &Snapshot, script: &str, style: &str) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let app = esc(&s.app);
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{app}: blue/green status</title>\n<style>{style}</style>\n</head>\n\
         <body data-bg-app=\"{app}\" data-bg-follow=\"{}\">\n<header>\n\
         <h1>{app} <span class=\"sub\">blue/green status</span></h1>\n\
         <p id=\"follow\" role=\"status\">Snapshot taken at {} by gate {} ({}, {}). \
         Read-only: switching stays with bg-ctl and CI.</p>\n</header>\n<main>\n",
        s.follow,
        format_millis(s.now_ms),
        esc(&s.gate.gate_id),
        s.gate.colour,
        esc(&s.gate.version),
    );
    section(&mut o, "Live colour", "live", |o| live(o, s));
    section(&mut o, "Colours", "colours", |o| colours(o, s));
    section(&mut o, "Gates", "gates", |o| gates(o, s));
    section(&mut o, "Drain", "drain", |o| drain(o, s));
    section(&mut o, "Deploy lease", "lease", |o| lease(o, s));
    section(&mut o, "History", "events", |o| history(o, s));
    let _ = write!(o, "</main>\n<script>{script}</script>\n</body>\n</html>\n");
    o
}

/// The page a reader gets when the store does not answer.
pub(super) fn unavailable(app: &str, message: &str, style: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{app}: blue/green status</title>\n<style>{style}</style>\n</head>\n<body>\n\
         <h1>{app} <span class=\"sub\">blue/green status</span></h1>\n\
         <p>The store did not answer: {}. Reload the page to try again.</p>\n</body>\n</html>\n",
        esc(message),
        app = esc(app),
    )
}

fn section(o: &mut String, heading: &str, id: &str, body: impl FnOnce(&mut String)) {
    let _ = write!(o, "<section>\n<h2>{heading}</h2>\n<div id=\"{id}\">");
    body(o);
    o.push_str("</div>\n</section>\n");
}

fn swatch(colour: impl std::fmt::Display) -> String {
    format!("<span class=\"swatch {colour}\" aria-hidden=\"true\"></span>")
}

fn live(o: &mut String, s: &Snapshot) {
    let Some(st) = &s.state else {
        o.push_str(
            "<p class=\"live\"><strong data-bg-live>none</strong>: the app is not initialised, \
             so no colour is live.</p>",
        );
        return;
    };
    let _ = write!(
        o,
        "<p class=\"live\">{}<strong data-bg-live>{}</strong> <span class=\"tag\">live</span> \
         at generation <span data-bg-generation>{}</span></p>\
         <p>Made live at {} by {}",
        swatch(st.active),
        st.active,
        st.generation,
        format_millis(st.changed_at_ms),
        esc(&st.changed_by),
    );
    if let Some(r) = &st.reason {
        let _ = write!(o, ": {}", esc(r));
    }
    o.push_str("</p>");
}

fn colours(o: &mut String, s: &Snapshot) {
    o.push_str(
        "<table><thead><tr><th scope=\"col\">Colour</th><th scope=\"col\">Status</th>\
         <th scope=\"col\">Deployed</th><th scope=\"col\">Last live</th></tr></thead><tbody>",
    );
    match &s.state {
        None => o.push_str("<tr><td colspan=\"4\">No state yet.</td></tr>"),
        Some(st) => {
            for c in &st.colours {
                let _ = write!(
                    o,
                    "<tr><th scope=\"row\">{}{}</th><td>{}</td>\
                     <td data-bg-deployed=\"{}\">{}</td><td data-bg-last-live=\"{}\">{}</td></tr>",
                    swatch(c.colour),
                    c.colour,
                    if c.live { "live" } else { "idle" },
                    c.colour,
                    or_none(c.deployed.as_deref()),
                    c.colour,
                    or_none(c.last_live.as_deref()),
                );
            }
        }
    }
    o.push_str("</tbody></table>");
}

fn gates(o: &mut String, s: &Snapshot) {
    o.push_str(
        "<table><thead><tr><th scope=\"col\">Gate</th><th scope=\"col\">Colour</th>\
         <th scope=\"col\">Version</th><th scope=\"col\">Generation</th>\
         <th scope=\"col\">View age</th><th scope=\"col\">Websockets</th>\
         <th scope=\"col\">Load balancers</th><th scope=\"col\">Reported</th></tr></thead><tbody>",
    );
    if s.gates.is_empty() {
        o.push_str("<tr><td colspan=\"8\">No gate has reported its presence.</td></tr>");
    }
    for g in &s.gates {
        let sources = g.lb_sources.join(", ");
        let _ = write!(
            o,
            "<tr><th scope=\"row\">{}</th><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{} ago</td></tr>",
            esc(&g.gate_id),
            swatch(g.colour),
            g.colour,
            esc(&g.version),
            g.applied_generation,
            g.view_age_ms.map_or_else(|| NONE.to_owned(), duration),
            g.websockets
                .map_or_else(|| NONE.to_owned(), |n| n.to_string()),
            if sources.is_empty() {
                Cow::Borrowed(NONE)
            } else {
                esc(&sources)
            },
            duration(g.seen_ms_ago),
        );
    }
    o.push_str("</tbody></table>");
}

fn drain(o: &mut String, s: &Snapshot) {
    let draining: Vec<String> = s
        .gates
        .iter()
        .filter(|g| g.draining)
        .map(|g| {
            let open = g
                .websockets
                .map_or_else(|| "an unknown number of".to_owned(), |n| n.to_string());
            format!(
                "{} ({}) is moving its websockets to the live colour, {open} still open",
                esc(&g.gate_id),
                g.colour
            )
        })
        .collect();
    if draining.is_empty() {
        o.push_str("<p data-bg-drain>No drain in progress.</p>");
    } else {
        let _ = write!(o, "<p data-bg-drain>{}.</p>", draining.join("; "));
    }
}

fn lease(o: &mut String, s: &Snapshot) {
    match &s.lease {
        None => o.push_str("<p>Nobody holds the deploy lease.</p>"),
        Some(l) => {
            let _ = write!(
                o,
                "<p>Held by <strong data-bg-lease-holder>{}</strong>; it lapses at <time data-bg-lease-expires>{}</time> unless renewed \
                 (in {}).</p>",
                esc(&l.holder),
                format_millis(l.expires_at_ms),
                duration(l.expires_at_ms.saturating_sub(s.now_ms)),
            );
        }
    }
}

fn history(o: &mut String, s: &Snapshot) {
    let _ = write!(
        o,
        "<table id=\"history\"><caption>The last {HISTORY_SHOWN} events, newest first\
         </caption><thead><tr><th scope=\"col\">Time</th><th scope=\"col\">Generation</th>\
         <th scope=\"col\">Event</th><th scope=\"col\">Actor</th><th scope=\"col\">Reason</th>\
         </tr></thead><tbody>"
    );
    for e in &s.history {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            format_millis(e.at_ms),
            e.generation,
            esc(&e.what),
            esc(&e.actor),
            or_none(e.reason.as_deref()),
        );
    }
    o.push_str("</tbody></table>");
}

#[cfg(test)]
mod tests {
    use super::{duration, esc};

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(esc("plain v1.2"), "plain v1.2");
        assert_eq!(
            esc(r#"<a href="x" onclick='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn durations_read_as_words() {
        for (ms, words) in [
            (0, "0 ms"),
            (40, "40 ms"),
            (1500, "1 s"),
            (65_000, "1 min 5 s"),
            (7_800_000, "2 h 10 min"),
        ] {
            assert_eq!(duration(ms), words);
        }
    }
}
