//! Every `bg-gate` command line of the README and `docs/` is one bg-gate
//! would start with: each is run through `bg-gate --check` (the rules of
//! what counts and of placeholders are in `bg_testkit::doc_commands`).

use std::path::Path;

use bg_testkit::doc_commands;

/// The placeholders the docs may use in a bg-gate command line, with a
/// value of the kind each stands for.
const PLACEHOLDERS: &[(&str, &str)] = &[
    ("IMAGE_TAG", "v1"),
    ("BG_COLOUR", "blue"),
    ("REDIS_HOST", "redis"),
];

#[test]
fn every_bg_gate_command_line_in_the_docs_is_accepted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let binary = Path::new(env!("CARGO_BIN_EXE_bg-gate"));
    doc_commands::assert_accepted(&root, "bg-gate", binary, PLACEHOLDERS, 5);
}
