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

/// The app's store, as the commands under test see it.
fn store_at(state: &std::path::Path) -> std::sync::Arc<dyn bg_state::ColourStore> {
    bg_state::open(&format!("file://{}", state.display())).expect("a file store")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A gate's presence report in the store, as a gate of `colour` running
/// `version` at `generation` makes it: what a release without gate URLs
/// waits for.
fn gate_reports(state: &std::path::Path, colour: bg_state::Colour, version: &str, generation: u64) {
    let presence = bg_state::Presence::new(format!("{colour}-1"), colour, version, generation);
    block_on(store_at(state).report_presence(
        &chat(),
        presence,
        std::time::Duration::from_secs(300),
    ))
    .unwrap();
}

fn chat() -> bg_state::AppName {
    bg_state::AppName::new("chat").unwrap()
}

/// `bg-ctl … ARGS` that succeeds: its stdout.
fn stdout_of(state: &std::path::Path, args: &[&str]) -> String {
    let out = bg_ctl(state, args, Stdio::piped());
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", shown(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `bg-ctl --json … ARGS` that succeeds: the document's `result`, after
/// checking the envelope around it.
fn result_of(state: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let text = stdout_of(state, &[&["--json"], args].concat());
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(keys(&doc), ["ok", "result", "steps"], "{args:?}: {text}");
    assert_eq!(doc["ok"], true, "{args:?}: {text}");
    assert!(doc["steps"].is_array(), "{args:?}: {text}");
    if args[0] != "deploy" {
        assert_eq!(doc["steps"], serde_json::json!([]), "{args:?}: {text}");
    }
    doc["result"].take()
}

/// An object's keys, sorted: what a script can rely on is which keys
/// there are, not their order.
fn keys(v: &serde_json::Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// What every command prints for people, to the byte, through a whole
/// story: init, a release without switching, its promotion, a retry, the
/// next release, a rollback and its retry, a stuck lease broken.
#[test]
fn each_command_prints_what_it_did() {
    use bg_state::{Colour, format_millis as at};

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let store = store_at(&state);
    let run = |args: &[&str]| stdout_of(&state, args);
    let deploy = |version: &str, more: &[&str]| {
        run(&[&["deploy", "--version", version, "--exec", "true"], more].concat())
    };

    assert_eq!(
        run(&["status"]),
        "app chat: not initialised (bg-ctl init --active COLOUR)\n"
    );
    assert_eq!(run(&["history"]), "app chat: no history\n");
    assert_eq!(run(&["lease", "show"]), "free\n");

    assert_eq!(
        run(&["init", "--active", "blue", "--reason", "first"]),
        "chat: blue is live at generation 1\n"
    );
    assert_eq!(
        run(&["switch", "--to", "blue"]),
        "blue was already live (generation 1); nothing changed\n"
    );
    assert_eq!(run(&["lease", "break"]), "no lease was held\n");

    gate_reports(&state, Colour::Green, "v2", 1);
    assert_eq!(
        deploy("v2", &["--no-switch"]),
        "deployed v2 on green (not switched)\n"
    );
    assert_eq!(
        deploy("v2", &[]),
        "released v2 on green: live at generation 2\n"
    );
    assert_eq!(
        deploy("v2", &[]),
        "v2 is already live on green at generation 2: nothing released\n"
    );
    gate_reports(&state, Colour::Blue, "v3", 2);
    assert_eq!(
        deploy("v3", &[]),
        "released v3 on blue: live at generation 3\n"
    );
    assert_eq!(
        run(&["switch", "--to", "green", "--expect-generation", "3"]),
        "switched: green is live at generation 4\n"
    );
    assert_eq!(
        run(&["switch", "--to", "blue", "--reason", "back"]),
        "switched: blue is live at generation 5\n"
    );

    gate_reports(&state, Colour::Green, "v2", 5);
    assert_eq!(
        run(&["rollback", "--reason", "v3 misbehaves"]),
        "rolled back: green is live at generation 6\n"
    );
    assert_eq!(
        run(&["rollback"]),
        "already rolled back: v3 was rolled back; green stays live at generation 6\n"
    );

    let lease = block_on(store.acquire_lease(
        &chat(),
        bg_state::LeaseRequest::new("pipeline 7", std::time::Duration::from_secs(300)),
    ))
    .unwrap();
    // The fence is its holder's secret: no command shows a live one.
    assert_eq!(
        run(&["lease", "show"]),
        format!(
            "held by pipeline 7 since {} until {}\n",
            at(lease.acquired_at_ms),
            at(lease.expires_at_ms)
        )
    );

    // Status: the state, the lease, the gates' presence, and what each
    // gate URL answers (here: nothing listens).
    let nowhere = "http://127.0.0.1:1";
    let s = block_on(store.get(&chat())).unwrap().unwrap();
    let (blue, green) = (s.blue.clone().unwrap(), s.green.clone().unwrap());
    let mut want = format!(
        "app chat: green is live at generation 6\n  \
         last change: made by test at {} (v3 misbehaves)\n  \
         blue : deployed v3 by test at {}\n  \
         green: deployed v2 by test at {}\n  \
         lease: held by pipeline 7 until {}\n",
        at(s.last_change.at_ms),
        at(blue.at_ms),
        at(green.at_ms),
        at(lease.expires_at_ms)
    );
    for p in block_on(store.presences(&chat())).unwrap() {
        want += &format!(
            "  gate {} ({}): runs {}, applied generation {}, seen {}\n",
            p.gate_id,
            p.colour,
            p.service_version,
            p.applied_generation,
            at(p.seen_at_ms)
        );
    }
    let probed = result_of(&state, &["status", "--gate-blue", nowhere]);
    let why = probed["probed"][0]["error"].as_str().unwrap();
    assert!(!why.starts_with("unreachable"), "said twice: {why}");
    want += &format!("  {nowhere}/ (blue): unreachable: {why}\n");
    assert_eq!(run(&["status", "--gate-blue", nowhere]), want);

    assert_eq!(
        run(&["lease", "break", "--reason", "pipeline 7 was killed"]),
        "broke the lease of pipeline 7\n"
    );
    assert_eq!(run(&["lease", "break"]), "no lease was held\n");
    assert_eq!(run(&["lease", "show"]), "free\n");

    // History, newest first: when, generation, who, what, and why.
    let events = block_on(store.history(&chat(), 50)).unwrap();
    let what: Vec<String> = events.iter().map(|e| e.kind.to_string()).collect();
    assert_eq!(
        what,
        [
            &format!("lease of pipeline 7 (fence {}) broken", lease.fence),
            "rollback blue -> green",
            "switch green -> blue",
            "switch blue -> green",
            "switch green -> blue",
            "deployed v3 on blue",
            "deploying v3 on blue",
            "switch blue -> green",
            "deployed v2 on green",
            "deploying v2 on green",
            "deployed v2 on green",
            "deploying v2 on green",
            "init: blue live",
        ]
    );
    let want: String = events
        .iter()
        .map(|e| {
            format!(
                "{}  gen {:>4}  {:<28} {}{}{}\n",
                at(e.at_ms),
                e.generation,
                e.actor,
                e.kind,
                if e.forced { " [forced]" } else { "" },
                e.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(run(&["history", "--limit", "50"]), want);
    assert!(
        want.lines().next().unwrap().ends_with(&format!(
            "  gen    6  test                         lease of pipeline 7 (fence {}) broken [forced] (pipeline 7 was killed)",
            lease.fence
        )),
        "{want}"
    );
    assert_eq!(
        run(&["history", "--limit", "1"]),
        want.lines().next().unwrap().to_owned() + "\n"
    );
}

/// What every command answers with `--json`: `{"ok", "result", "steps"}`,
/// the result being the command's own value, shape pinned here.
#[test]
fn each_command_answers_json_with_its_result() {
    use serde_json::{Value, json};

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let store = store_at(&state);
    let result = |args: &[&str]| result_of(&state, args);
    let stored = || serde_json::to_value(block_on(store.get(&chat())).unwrap().unwrap()).unwrap();
    let state_keys = [
        "active",
        "app",
        "blue",
        "generation",
        "green",
        "last_change",
    ];

    assert_eq!(
        result(&["status"]),
        json!({ "app": "chat", "state": null, "lease": null, "gates": [], "probed": [] })
    );
    assert_eq!(result(&["history"]), json!([]));
    assert_eq!(result(&["lease", "show"]), Value::Null);

    let init = result(&["init", "--active", "blue", "--reason", "first"]);
    assert_eq!(init, stored());
    assert_eq!(keys(&init), state_keys);
    assert_eq!(
        keys(&init["last_change"]),
        ["actor", "at_ms", "fenced", "forced", "reason", "request_id"]
    );
    assert_eq!(
        (&init["app"], &init["active"], &init["generation"]),
        (&json!("chat"), &json!("blue"), &json!(1))
    );
    assert_eq!(
        (
            &init["last_change"]["actor"],
            &init["last_change"]["reason"]
        ),
        (&json!("test"), &json!("first"))
    );
    assert_eq!(result(&["lease", "break"]), Value::Null);

    let switch = result(&["switch", "--to", "blue"]);
    assert_eq!(switch, json!({ "state": stored(), "changed": false }));

    gate_reports(&state, bg_state::Colour::Green, "v2", 1);
    let deploy = |version: &str, more: &[&str]| {
        result(&[&["deploy", "--version", version, "--exec", "true"], more].concat())
    };
    assert_eq!(
        deploy("v2", &["--no-switch"]),
        json!({ "version": "v2", "colour": "green", "generation": 1, "switched": false, "already_live": false })
    );
    assert_eq!(
        deploy("v2", &[]),
        json!({ "version": "v2", "colour": "green", "generation": 2, "switched": true, "already_live": false })
    );
    assert_eq!(
        deploy("v2", &[]),
        json!({ "version": "v2", "colour": "green", "generation": 2, "switched": false, "already_live": true })
    );
    // A release's steps, with when each was done.
    let text = stdout_of(
        &state,
        &["--json", "deploy", "--version", "v2", "--exec", "true"],
    );
    let doc: Value = serde_json::from_str(&text).unwrap();
    let steps = doc["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{text}");
    for step in steps {
        assert_eq!(keys(step), ["at_ms", "step"], "{text}");
    }

    gate_reports(&state, bg_state::Colour::Blue, "v3", 2);
    deploy("v3", &[]);
    gate_reports(&state, bg_state::Colour::Green, "v2", 3);
    let rollback = result(&["rollback"]);
    assert_eq!(rollback, json!({ "state": stored(), "changed": true }));
    let mut live_keys = [&state_keys[..], &["blue_live", "green_live"]].concat();
    live_keys.sort_unstable();
    assert_eq!(keys(&rollback["state"]), live_keys);
    assert_eq!(
        rollback["state"]["blue_live"],
        json!({ "version": "v3", "rolled_back": true })
    );
    assert_eq!(
        result(&["rollback"]),
        json!({ "state": stored(), "changed": false })
    );

    let lease = block_on(store.acquire_lease(
        &chat(),
        bg_state::LeaseRequest::new("pipeline 7", std::time::Duration::from_secs(300)),
    ))
    .unwrap();
    // Without the fence, the holder's secret.
    let lease_json = json!({
        "holder": "pipeline 7",
        "acquired_at_ms": lease.acquired_at_ms,
        "expires_at_ms": lease.expires_at_ms,
    });
    assert_eq!(result(&["lease", "show"]), lease_json);

    let nowhere = "http://127.0.0.1:1";
    let status = result(&["status", "--gate-blue", nowhere]);
    assert_eq!(keys(&status), ["app", "gates", "lease", "probed", "state"]);
    assert_eq!(status["state"], stored());
    assert_eq!(status["lease"], lease_json);
    let presences = block_on(store.presences(&chat())).unwrap();
    assert_eq!(status["gates"], serde_json::to_value(&presences).unwrap());
    assert_eq!(
        keys(&status["gates"][0]),
        [
            "applied_generation",
            "colour",
            "expires_at_ms",
            "gate_id",
            "seen_at_ms",
            "service_version"
        ]
    );
    let probed = &status["probed"];
    assert_eq!(probed.as_array().unwrap().len(), 1, "{status}");
    assert_eq!(keys(&probed[0]), ["colour", "error", "report", "url"]);
    assert_eq!(
        (
            &probed[0]["colour"],
            &probed[0]["url"],
            &probed[0]["report"]
        ),
        (&json!("blue"), &json!(format!("{nowhere}/")), &Value::Null)
    );
    assert!(probed[0]["error"].is_string(), "{status}");

    assert_eq!(result(&["lease", "break"]), lease_json);
    assert_eq!(result(&["lease", "break"]), Value::Null);

    let history = result(&["history", "--limit", "3"]);
    let events = block_on(store.history(&chat(), 3)).unwrap();
    assert_eq!(history, serde_json::to_value(&events).unwrap());
    assert_eq!(
        keys(&history[0]),
        [
            "actor",
            "at_ms",
            "event",
            "fence",
            "forced",
            "generation",
            "holder",
            "reason"
        ]
    );
    assert_eq!(
        (&history[0]["event"], &history[1]["event"]),
        (&json!("lease_broken"), &json!("rollback"))
    );

    // A failure is a document too, on stdout, with the message on stderr.
    let out = bg_ctl(
        &state,
        &["--json", "init", "--active", "blue"],
        Stdio::piped(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", shown(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys(&doc), ["error", "ok", "steps"]);
    assert_eq!(keys(&doc["error"]), ["exit_code", "kind", "message"]);
    assert_eq!(
        (
            &doc["ok"],
            &doc["error"]["kind"],
            &doc["error"]["exit_code"]
        ),
        (&json!(false), &json!("already_initialised"), &json!(3))
    );
    let message = doc["error"]["message"].as_str().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("bg-ctl: {message}\n")
    );
}
