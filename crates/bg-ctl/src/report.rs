//! Progress for people and CI: one line per step with its timing on
//! stderr, a spinner only on a terminal, colour only on a terminal and
//! never with `NO_COLOR`. Results go to stdout.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// One finished step, as `--json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// What was done.
    pub step: String,
    /// Milliseconds since the command started.
    pub at_ms: u64,
}

/// Writes progress.
#[derive(Debug)]
pub struct Reporter {
    started: Instant,
    spinner: Option<ProgressBar>,
    colour: bool,
    quiet: bool,
    steps: Mutex<Vec<StepRecord>>,
    last_wait: Mutex<String>,
}

impl Reporter {
    /// Progress on stderr; a spinner when stderr is a terminal.
    #[must_use]
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let colour = tty && std::env::var_os("NO_COLOR").is_none();
        let spinner = tty.then(|| {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.enable_steady_tick(Duration::from_millis(120));
            pb
        });
        Reporter {
            started: Instant::now(),
            spinner,
            colour,
            quiet: false,
            steps: Mutex::new(Vec::new()),
            last_wait: Mutex::new(String::new()),
        }
    }

    /// Records steps but prints nothing (tests).
    #[must_use]
    pub fn silent() -> Self {
        Reporter {
            started: Instant::now(),
            spinner: None,
            colour: false,
            quiet: true,
            steps: Mutex::new(Vec::new()),
            last_wait: Mutex::new(String::new()),
        }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn print(&self, line: &str) {
        if self.quiet {
            return;
        }
        match &self.spinner {
            Some(pb) => pb.println(line),
            None => crate::output::to_stderr(line),
        }
    }

    /// A step done.
    pub fn step(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        let t = self.elapsed();
        self.steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(StepRecord {
                step: msg.to_owned(),
                at_ms: u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
            });
        let stamp = format!("[{:>7.2}s]", t.as_secs_f64());
        if self.colour {
            self.print(&format!("\x1b[2m{stamp}\x1b[0m \x1b[32m✓\x1b[0m {msg}"));
        } else {
            self.print(&format!("{stamp} {msg}"));
        }
    }

    /// What is being waited for: the spinner's text on a terminal, a line
    /// when it changes elsewhere.
    pub fn waiting(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        if let Some(pb) = &self.spinner {
            pb.set_message(msg.to_owned());
            return;
        }
        let mut last = self
            .last_wait
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last != msg {
            msg.clone_into(&mut last);
            drop(last);
            let t = self.elapsed();
            self.print(&format!("[{:>7.2}s]   … {msg}", t.as_secs_f64()));
        }
    }

    /// A warning line.
    pub fn warn(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        if self.colour {
            self.print(&format!("\x1b[33mwarning:\x1b[0m {msg}"));
        } else {
            self.print(&format!("warning: {msg}"));
        }
    }

    /// The steps so far.
    #[must_use]
    pub fn steps(&self) -> Vec<StepRecord> {
        self.steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stops the spinner.
    pub fn finish(&self) {
        if let Some(pb) = &self.spinner {
            pb.finish_and_clear();
        }
    }
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter::new()
    }
}
