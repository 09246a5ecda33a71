//! Results on stdout: text for people, one JSON document for scripts.
//!
//! Every command returns a result that says how it is shown ([`Render`]),
//! implemented beside the command, so what a command prints is found next
//! to what it does; here it is only written.
//!
//! A reader that stops early (`bg-ctl history | head -1`) ends the output,
//! not the command: a closed pipe is a clean end, never a panic or an
//! error (ripgrep's habit). Progress goes to stderr (see [`crate::report`]).

use std::fmt;
use std::io::{self, Write};

use serde::Serialize;

/// A command's result, as it is shown.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use bg_ctl::commands;
/// use bg_ctl::output::Render;
/// use bg_state::{AppName, Colour, MemoryStore};
///
/// let (store, app) = (MemoryStore::new(), AppName::new("chat").unwrap());
/// let made = commands::init(&store, &app, Colour::Blue, "ops", false, None, Some("v1".into()))
///     .await
///     .unwrap();
/// let mut text = String::new();
/// made.human(&mut text).unwrap();
/// assert_eq!(text, "chat: blue is live at generation 1\n");
/// assert_eq!(made.json()["active"], "blue");
/// # });
/// ```
pub trait Render {
    /// The text for people: whole lines, each ending in a newline.
    ///
    /// # Errors
    /// Only those of `out`.
    fn human(&self, out: &mut dyn fmt::Write) -> fmt::Result;

    /// The value `--json` gives as the document's `result`.
    fn json(&self) -> serde_json::Value;
}

/// `value` as the JSON a [`Render::json`] gives.
#[must_use]
pub fn to_json(value: &impl Serialize) -> serde_json::Value {
    // The results are plain data with string keys, which always serialise;
    // `null` would stand for one that did not.
    serde_json::to_value(value).unwrap_or_default()
}

/// Writes `result` for people.
///
/// # Errors
/// Any failed write but a closed pipe.
pub fn human(out: &mut impl Write, result: &dyn Render) -> io::Result<()> {
    let mut text = String::new();
    result.human(&mut text).map_err(io::Error::other)?;
    closed_pipe_is_the_end(out.write_all(text.as_bytes()).and_then(|()| out.flush()))
}

/// Writes `value` as pretty JSON, then a newline.
///
/// # Errors
/// Any failed write but a closed pipe.
pub fn json(out: &mut impl Write, value: &serde_json::Value) -> io::Result<()> {
    let written = serde_json::to_writer_pretty(&mut *out, value)
        .map_err(io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    closed_pipe_is_the_end(written)
}

fn closed_pipe_is_the_end(written: io::Result<()>) -> io::Result<()> {
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// A line for people on stderr (progress, the error); a closed stderr
/// loses it rather than ending bg-ctl with a panic.
pub fn to_stderr(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result that is only text.
    struct Text(&'static str);

    impl Render for Text {
        fn human(&self, out: &mut dyn fmt::Write) -> fmt::Result {
            out.write_str(self.0)
        }

        fn json(&self) -> serde_json::Value {
            self.0.into()
        }
    }

    /// A reader that went away after `room` bytes.
    struct ClosedAfter {
        room: usize,
        kind: io::ErrorKind,
    }

    impl Write for ClosedAfter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from(self.kind));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_ends_the_output_cleanly() {
        let pipe = || ClosedAfter {
            room: 10,
            kind: io::ErrorKind::BrokenPipe,
        };
        human(&mut pipe(), &Text("first line of history\nsecond line\n")).unwrap();
        json(
            &mut pipe(),
            &serde_json::json!({ "ok": true, "result": [1, 2, 3] }),
        )
        .unwrap();
    }

    #[test]
    fn other_write_failures_are_errors() {
        let full = || ClosedAfter {
            room: 0,
            kind: io::ErrorKind::StorageFull,
        };
        let e = human(&mut full(), &Text("text\n")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        let e = json(&mut full(), &serde_json::json!({ "ok": true })).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn the_output_is_what_was_given() {
        let mut out = Vec::new();
        human(&mut out, &Text("app chat: no history\n")).unwrap();
        json(&mut out, &serde_json::json!({ "ok": true })).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "app chat: no history\n{\n  \"ok\": true\n}\n"
        );
    }
}
