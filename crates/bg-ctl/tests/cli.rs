//! The built `bg-ctl` binary, run as a shell runs it.

use std::process::{Command, Output, Stdio};

/// `bg-ctl --store file://… --app chat ARGS`, stdout as given.
fn bg_ctl(state: &std::path::Path, args: &[&str], stdout: Stdio) -> Output {
    let store = format!("file://{}", state.display());
    Command::new(env!("CARGO_BIN_EXE_bg-ctl"))
        .args(["--store", &store, "--app", "chat", "--actor", "test"])
        .args(args)
        .env_remove("BG_GATE")
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .expect("bg-ctl runs")
}

/// `bg-ctl history | head -1`, `bg-ctl status | head -1`: the reader goes
/// away before bg-ctl writes, and bg-ctl ends as if it had read it all.
#[test]
fn output_to_a_closed_pipe_ends_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    for args in [
        &["init", "--active", "blue"][..],
        &["switch", "--reason", "one"],
        &["switch", "--reason", "two"],
    ] {
        let out = bg_ctl(&state, args, Stdio::null());
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    for args in [
        &["history"][..],
        &["status"],
        &["lease", "show"],
        &["--json", "history"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = bg_ctl(&state, args, Stdio::from(writer));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// The same commands with a reader print what they did.
#[test]
fn history_is_printed_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    assert!(
        bg_ctl(&state, &["init", "--active", "blue"], Stdio::null())
            .status
            .success()
    );
    assert!(
        bg_ctl(&state, &["switch", "--reason", "v2"], Stdio::null())
            .status
            .success()
    );
    let out = bg_ctl(&state, &["history"], Stdio::piped());
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("(v2)"), "{text}");
}

/// Progress and errors go to stderr; with stderr closed they are lost, and
/// bg-ctl still ends with its own exit code, not a panic.
#[test]
fn a_closed_stderr_changes_no_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let run = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let store = format!("file://{}", state.display());
        Command::new(env!("CARGO_BIN_EXE_bg-ctl"))
            .args(["--store", &store, "--app", "chat", "--actor", "test"])
            .args(args)
            .env_remove("BG_GATE")
            .stdout(Stdio::null())
            .stderr(Stdio::from(writer))
            .status()
            .expect("bg-ctl runs")
    };
    // Not initialised: an error message, exit 1.
    assert_eq!(run(&["switch", "--to", "green"]).code(), Some(1));
    // Progress lines, then success.
    assert_eq!(run(&["init", "--active", "blue"]).code(), Some(0));
    assert_eq!(run(&["switch", "--to", "green"]).code(), Some(0));
}

/// A cancelled CI job sends SIGTERM: bg-ctl stops the deploy command it
/// runs, with everything that command started, and exits 143.
#[cfg(target_os = "linux")]
#[test]
fn a_signal_stops_the_deploy_command_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let out = bg_ctl(&state, &["init", "--active", "blue"], Stdio::null());
    assert!(out.status.success(), "{out:?}");
    let pidfile = dir.path().join("child.pid");
    let store = format!("file://{}", state.display());
    let exec = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    let child = Command::new(env!("CARGO_BIN_EXE_bg-ctl"))
        .args(["--store", &store, "--app", "chat", "--actor", "test"])
        .args(["deploy", "--version", "v2", "--exec", &exec])
        .env_remove("BG_GATE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bg-ctl runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let pid = loop {
        if let Ok(p) = std::fs::read_to_string(&pidfile)
            && !p.trim().is_empty()
        {
            break p.trim().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the deploy command never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the deploy command's child {pid} outlived bg-ctl"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A Redis over TLS whose certificate bg-ctl cannot trust is a
/// configuration error (exit 2), not an outage to retry (exit 5); with the
/// CA named by `BG_REDIS_CA` the same command works.
#[test]
fn an_untrusted_redis_certificate_exits_2_and_bg_redis_ca_fixes_it() {
    let tls = bg_testkit::TlsFiles::generate();
    let server = bg_testkit::RedisServer::start_tls(&tls);
    let run = |ca: Option<&std::path::Path>, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bg-ctl"));
        cmd.args([
            "--store",
            &server.tls_url(),
            "--app",
            "chat",
            "--actor",
            "test",
        ])
        .args(["--timeout", "2s"])
        .args(args)
        .env_remove("BG_GATE")
        .env_remove("BG_REDIS_CA")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(ca) = ca {
            cmd.env("BG_REDIS_CA", ca);
        }
        cmd.output().expect("bg-ctl runs")
    };
    let out = run(None, &["init", "--active", "blue"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not trusted"), "{stderr}");
    assert!(!stderr.contains("retrying may help"), "{stderr}");

    let out = run(Some(&tls.ca()), &["init", "--active", "blue"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(Some(&tls.ca()), &["status"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("blue"),
        "{out:?}"
    );
}
