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

/// `bg-ctl ARGS` with only `env` of the BG_ variables.
fn bg_ctl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bg-ctl"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BG_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("bg-ctl runs")
}

fn shown(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A release's settings from CI variables alone: `BG_VERSION=v9 bg-ctl
/// deploy` gets as far as the store (here: not initialised).
#[test]
fn deploy_settings_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().join("state.json").display());
    let out = bg_ctl_env(
        &["deploy"],
        &[
            ("BG_STORE", &store),
            ("BG_APP", "chat"),
            ("BG_VERSION", "v9"),
            ("BG_EXEC", "true"),
            ("BG_NO_SWITCH", "1"),
            ("BG_READY_TIMEOUT", "1s"),
            ("BG_WAIT_LEASE", "1s"),
            ("BG_REASON", "from the environment"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not initialised"), "{}", shown(&out));

    // A setting in the environment with a bad value is named.
    let out = bg_ctl_env(
        &["deploy"],
        &[
            ("BG_STORE", &store),
            ("BG_VERSION", "v9"),
            ("BG_LB_FALL", "x"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--lb-fall"),
        "{}",
        shown(&out)
    );
}

/// What the command line names wins over the environment: BG_GATE left in
/// a job's variables does not block `--store`, nor BG_STORE `--gate`.
#[test]
fn the_command_line_store_wins_over_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().join("state.json").display());
    // Nothing listens on port 1: a request there fails to connect (exit 5).
    let nowhere = "http://127.0.0.1:1";

    let out = bg_ctl_env(
        &[
            "--store", &store, "--app", "chat", "init", "--active", "blue",
        ],
        &[("BG_GATE", nowhere)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let out = bg_ctl_env(
        &["--store", &store, "--app", "chat", "status"],
        &[("BG_GATE", nowhere)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("blue"),
        "{}",
        shown(&out)
    );

    let out = bg_ctl_env(
        &["--gate", nowhere, "--app", "chat", "status"],
        &[("BG_STORE", &store)],
    );
    assert_eq!(out.status.code(), Some(5), "{}", shown(&out));

    // Both in the environment: the store.
    let out = bg_ctl_env(
        &["--app", "chat", "status"],
        &[("BG_STORE", &store), ("BG_GATE", nowhere)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));

    // A variable set to nothing (a CI variable left empty) is no setting.
    let out = bg_ctl_env(
        &["--store", &store, "--app", "chat", "status"],
        &[("BG_GATE", "")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let out = bg_ctl_env(
        &["--app", "chat", "status"],
        &[("BG_STORE", ""), ("BG_GATE", nowhere)],
    );
    assert_eq!(out.status.code(), Some(5), "{}", shown(&out));

    // Both on the command line: a usage error that says so.
    let out = bg_ctl_env(&["--store", &store, "--gate", nowhere, "status"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--store") && stderr.contains("--gate"),
        "{}",
        shown(&out)
    );
}

/// The deploy trigger too: `--exec` on the command line sets the
/// template's webhook variables aside, and the other way round; both from
/// the same place is a usage error.
#[test]
fn the_command_line_trigger_wins_over_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().join("state.json").display());
    let hooks = [
        ("BG_WEBHOOK_BLUE", "http://127.0.0.1:1/hook/blue"),
        ("BG_WEBHOOK_GREEN", "http://127.0.0.1:1/hook/green"),
    ];
    let deploy = ["--store", &store, "deploy", "--version", "v9"];
    // Past the options: the store is not initialised (exit 1).
    let out = bg_ctl_env(&[&deploy[..], &["--exec", "true"]].concat(), &hooks);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not initialised"),
        "{}",
        shown(&out)
    );
    let out = bg_ctl_env(
        &[
            &deploy[..],
            &["--webhook-blue", hooks[0].1, "--webhook-green", hooks[1].1],
        ]
        .concat(),
        &[("BG_EXEC", "true")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));

    let mut both = hooks.to_vec();
    both.push(("BG_EXEC", "true"));
    let out = bg_ctl_env(&deploy, &both);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--exec"),
        "{}",
        shown(&out)
    );
}

/// Through a gate the gate names the actor: `--actor` says it is not sent.
#[test]
fn actor_through_a_gate_is_noted() {
    let out = bg_ctl_env(
        &["--gate", "http://127.0.0.1:1", "--actor", "me", "status"],
        &[],
    );
    assert_eq!(out.status.code(), Some(5), "{}", shown(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("--actor").count(),
        1,
        "one notice: {}",
        shown(&out)
    );
    assert!(
        stderr.contains("not sent through a gate"),
        "{}",
        shown(&out)
    );
}

/// `GET key` on the Redis at `port`: the value, `None` for no key.
fn redis_get(port: u16, key: &str) -> Option<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head).unwrap();
    if head.starts_with("$-1") {
        return None;
    }
    let mut value = String::new();
    r.read_line(&mut value).unwrap();
    Some(value.trim_end().to_owned())
}

/// `init --legacy-mirror` records the hand-made ids in the state: every
/// later change moves the legacy keys, whoever makes it.
#[test]
fn init_records_the_legacy_mirror_for_every_writer() {
    let redis = bg_testkit::RedisServer::start();
    let store = redis.url();
    let legacy = || {
        (
            redis_get(redis.port(), "lb-status-alfa"),
            redis_get(redis.port(), "lb-status-beta"),
        )
    };
    let some = |a: &str, b: &str| (Some(a.to_owned()), Some(b.to_owned()));
    let out = bg_ctl_env(
        &["init", "--active", "blue", "--legacy-mirror", "alfa,beta"],
        &[("BG_STORE", &store), ("BG_APP", "chat")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(legacy(), some("1", "0"));
    let out = bg_ctl_env(
        &["switch", "--to", "green"],
        &[("BG_STORE", &store), ("BG_APP", "chat")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(legacy(), some("0", "1"));

    // Ids that cannot be, or a store that cannot keep them: refused.
    for (args, env) in [
        (
            &[
                "init",
                "--active",
                "blue",
                "--force",
                "--legacy-mirror",
                "alfa",
            ][..],
            ("BG_STORE", store.as_str()),
        ),
        (
            &[
                "init",
                "--active",
                "blue",
                "--force",
                "--legacy-mirror",
                "al fa,beta",
            ],
            ("BG_STORE", store.as_str()),
        ),
        (
            &["init", "--active", "blue", "--legacy-mirror", "alfa,beta"],
            ("BG_GATE", "http://127.0.0.1:1"),
        ),
    ] {
        let out = bg_ctl_env(args, &[env, ("BG_APP", "chat")]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", shown(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--legacy-mirror")
                || String::from_utf8_lossy(&out.stderr).contains("legacy id"),
            "{args:?}: {}",
            shown(&out)
        );
    }
    assert_eq!(legacy(), some("0", "1"));
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
