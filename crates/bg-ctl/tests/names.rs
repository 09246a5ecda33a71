//! Every flag and environment variable that bg-ctl's messages, comments and
//! help name is one that bg-ctl defines, or one on a list below with the
//! reason it is right: a message that sends the user to a flag bg-ctl does
//! not have leaves them stuck at the moment they need help.

use std::path::Path;

use bg_ctl::cli::Cli;
use bg_testkit::names::{self, CTL_FLAGS_NAMED_BY_GATE, GATE_FLAGS_NAMED_BY_CTL, Known, Mention};
use clap::CommandFactory;

/// Variables bg-ctl names that are none of its options.
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "BG_COLOUR",
        "bg-ctl sets it for the --exec, --smoke and --verify commands it runs: the colour \
         being deployed (deploy/options.rs, trigger.rs)",
    ),
    (
        "BG_GATE_URL",
        "bg-ctl sets it for the --smoke and --verify commands: a gate of the colour being \
         checked (deploy/options.rs)",
    ),
];

/// Other programs' flags that bg-ctl's text names.
const FOREIGN_FLAGS: &[(&str, &str)] = &[];

fn mentioned() -> Vec<Mention> {
    let mut found = names::source_mentions(Path::new(env!("CARGO_MANIFEST_DIR")), &["src"]);
    found.extend(names::help_mentions(&mut Cli::command()));
    found
}

fn defined() -> Known {
    Known::of(&mut Cli::command())
}

fn known() -> Known {
    defined()
        .allowing(GATE_FLAGS_NAMED_BY_CTL)
        .allowing(ENVIRONMENT)
        .allowing(FOREIGN_FLAGS)
}

#[test]
fn every_flag_and_variable_named_is_one_bg_ctl_has() {
    let found = mentioned();
    let bad = names::unknown(&found, &known());
    assert!(
        bad.is_empty(),
        "bg-ctl names flags or variables that bg-ctl does not have (fix the text, or, if it \
         rightly names another program's, list it with the reason in tests/names.rs or \
         bg_testkit::names):\n{}",
        names::report(&bad)
    );
}

/// The check above cannot pass by finding nothing: the help shows every
/// option, so the scan must find them all, and a made-up flag in a message
/// is caught by the same function.
#[test]
fn the_scan_finds_every_option_and_catches_a_made_up_one() {
    let found = mentioned();
    let names: std::collections::BTreeSet<&str> = found.iter().map(|m| m.name.as_str()).collect();
    let flags = names.iter().filter(|n| n.starts_with("--")).count();
    assert!(flags > 35, "only {flags} distinct flags found: {names:?}");
    assert!(
        names.len() > 60,
        "only {} names found: {names:?}",
        names.len()
    );
    for name in [
        "--drain-timeout",
        "BG_STORE",
        "--help",
        "--version",
        "BG_WEBHOOK_*",
    ] {
        assert!(names.contains(name), "{name} not found in {names:?}");
    }
    let defined = defined();
    let unseen: Vec<&str> = defined.shown().filter(|n| !names.contains(n)).collect();
    assert!(
        unseen.is_empty(),
        "the help shows these, the scan missed them: {unseen:?}"
    );

    let sample = names::mentions(
        "longer than --drain-timeout 1m: raise --drain-batch or --drain-timeout",
        "sample",
    );
    let bad = names::unknown(&sample, &known());
    assert_eq!(names::report(&bad), "  --drain-batch  at sample:1");
}

#[test]
fn every_allowed_name_is_still_needed() {
    names::assert_still_needed(
        "bg-ctl",
        &[
            (ENVIRONMENT, "ENVIRONMENT"),
            (FOREIGN_FLAGS, "FOREIGN_FLAGS"),
            (
                GATE_FLAGS_NAMED_BY_CTL,
                "bg_testkit::names::GATE_FLAGS_NAMED_BY_CTL",
            ),
        ],
        &mentioned(),
        &defined(),
    );
}

/// bg-gate's messages name these bg-ctl flags: they must stay bg-ctl's.
#[test]
fn the_flags_bg_gate_names_of_bg_ctl_exist() {
    names::assert_named_exist(
        CTL_FLAGS_NAMED_BY_GATE,
        "CTL_FLAGS_NAMED_BY_GATE",
        "bg-gate",
        &defined(),
    );
}
