//! Any program as a child process, killed on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (and reaped) on drop, its output shown when a test fails.
#[derive(Debug)]
pub struct Process {
    child: std::process::Child,
    name: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts `cmd` with stdout and stderr going to a log file.
    ///
    /// # Panics
    /// If it cannot be started.
    #[must_use]
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("out.log");
        let out = std::fs::File::create(&log).expect("a log file");
        let err = out.try_clone().expect("a log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            child,
            name: name.to_owned(),
            log,
            _dir: dir,
        }
    }

    /// What it printed so far.
    #[must_use]
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Asks it to stop (SIGTERM), as a container runtime does, and waits up
    /// to `grace` for it to finish what it is doing; then kills it.
    pub fn stop_gracefully(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Drop kills what is left.
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The end is what explains a failure; a proxy's access log can
            // run to many thousands of lines before it.
            let out = self.output();
            let lines: Vec<&str> = out.lines().collect();
            let shown = lines.len().saturating_sub(PRINTED_LINES);
            eprintln!(
                "--- {} output{} ---\n{}\n--- end of output ---",
                self.name,
                if shown > 0 {
                    format!(", its last {PRINTED_LINES} lines")
                } else {
                    String::new()
                },
                lines[shown..].join("\n")
            );
        }
    }
}

/// How much of a process's output a failing test prints.
const PRINTED_LINES: usize = 300;
