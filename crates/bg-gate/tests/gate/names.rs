//! Every flag and environment variable that bg-gate's messages, comments
//! and help name (the library's, the `bg-gate` binary's and the `ws_echo`
//! example's, which all take [`GateArgs`]) is one that `GateArgs` defines,
//! or one on a list below with the reason it is right: a message that sends
//! the operator to a flag the gate does not have leaves them stuck.

use std::path::Path;
use std::process::Command;

use bg_gate::server::GateArgs;
use bg_testkit::names::{self, CTL_FLAGS_NAMED_BY_GATE, GATE_FLAGS_NAMED_BY_CTL, Known, Mention};
use clap::Args;

/// Variables bg-gate names that are none of its options.
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "BG_TOKEN",
        "read from the environment only (`#[arg(skip)]` in GateArgs), since a command line is \
         visible to every user of the host",
    ),
    (
        "BG_ACTIVE",
        "set by the gate for the --on-change command: the live colour (core/on_change.rs)",
    ),
    (
        "BG_GENERATION",
        "set by the gate for the --on-change command: the state's generation \
         (core/on_change.rs)",
    ),
];

/// Other programs' flags that bg-gate's text names, each with whose it is.
const FOREIGN_FLAGS: &[(&str, &str)] = &[(
    "--example",
    "cargo's: ws_echo's doc shows how to run it with `cargo run -p bg-gate --example ws_echo`",
)];

/// The `bg-gate` binary's own flags, beside `GateArgs`.
const BINARY_FLAGS: &[(&str, &str)] = &[(
    "--check",
    "bg-gate's (src/bin/bg-gate.rs): checks the options with GateArgs::check and exits; a \
     service embedding GateArgs decides for itself whether to offer it",
)];

/// The tree `bg-gate` and `ws_echo` parse: `GateArgs`, with the binary's
/// `--version`.
fn command() -> clap::Command {
    GateArgs::augment_args(clap::Command::new("bg-gate").version(env!("CARGO_PKG_VERSION")))
}

fn mentioned() -> Vec<Mention> {
    let mut found =
        names::source_mentions(Path::new(env!("CARGO_MANIFEST_DIR")), &["src", "examples"]);
    // The binary's own help, with what its `after_help` adds to GateArgs'.
    let out = Command::new(env!("CARGO_BIN_EXE_bg-gate"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "bg-gate --help: {out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    found.extend(names::mentions(&help, "bg-gate --help"));
    found
}

fn defined() -> Known {
    Known::of(&mut command())
}

fn known() -> Known {
    defined()
        .allowing(CTL_FLAGS_NAMED_BY_GATE)
        .allowing(ENVIRONMENT)
        .allowing(FOREIGN_FLAGS)
        .allowing(BINARY_FLAGS)
}

#[test]
fn every_flag_and_variable_named_is_one_bg_gate_has() {
    let found = mentioned();
    let bad = names::unknown(&found, &known());
    assert!(
        bad.is_empty(),
        "bg-gate names flags or variables that bg-gate does not have (fix the text, or, if it \
         rightly names another program's, list it with the reason in tests/gate/names.rs or \
         bg_testkit::names):\n{}",
        names::report(&bad)
    );
}

/// The check above cannot pass by finding nothing: the help shows every
/// option, so the scan must find them all, and a bg-ctl flag named in a
/// gate's message without being listed is caught by the same function.
#[test]
fn the_scan_finds_every_option_and_catches_a_made_up_one() {
    let found = mentioned();
    let names: std::collections::BTreeSet<&str> = found.iter().map(|m| m.name.as_str()).collect();
    let flags = names.iter().filter(|n| n.starts_with("--")).count();
    assert!(flags > 40, "only {flags} distinct flags found: {names:?}");
    assert!(
        names.len() > 80,
        "only {} names found: {names:?}",
        names.len()
    );
    for name in ["--colour", "BG_STORE", "--help", "--version", "--oidc-*"] {
        assert!(names.contains(name), "{name} not found in {names:?}");
    }
    let defined = defined();
    let unseen: Vec<&str> = defined.shown().filter(|n| !names.contains(n)).collect();
    assert!(
        unseen.is_empty(),
        "the help shows these, the scan missed them: {unseen:?}"
    );

    let sample = names::mentions(
        "no load balancer seen: start the gate with --lb-source, or bg-ctl with --confirm-lb \
         (BG_CONFIRM_LB)",
        "sample",
    );
    let bad = names::unknown(&sample, &known());
    assert_eq!(
        names::report(&bad),
        "  --confirm-lb  at sample:1\n  BG_CONFIRM_LB  at sample:1"
    );
}

#[test]
fn every_allowed_name_is_still_needed() {
    names::assert_still_needed(
        "bg-gate",
        &[
            (ENVIRONMENT, "ENVIRONMENT"),
            (FOREIGN_FLAGS, "FOREIGN_FLAGS"),
            (BINARY_FLAGS, "BINARY_FLAGS"),
            (
                CTL_FLAGS_NAMED_BY_GATE,
                "bg_testkit::names::CTL_FLAGS_NAMED_BY_GATE",
            ),
        ],
        &mentioned(),
        &defined(),
    );
}

/// bg-ctl's messages name these gate flags: they must stay the gate's.
#[test]
fn the_flags_bg_ctl_names_of_bg_gate_exist() {
    names::assert_named_exist(
        GATE_FLAGS_NAMED_BY_CTL,
        "GATE_FLAGS_NAMED_BY_CTL",
        "bg-ctl",
        &defined(),
    );
}
