//! Every `bg-ctl` command line of the README and `docs/` is one bg-ctl
//! would run: each is run through `bg-ctl --check` (the rules of what
//! counts and of placeholders are in `bg_testkit::doc_commands`).

use std::path::Path;

use bg_testkit::doc_commands;

/// The placeholders the docs may use in a bg-ctl command line, and the
/// masked CI/CD variables a GitLab job gets from its settings (the job's
/// own `variables:` come from the doc).
const PLACEHOLDERS: &[(&str, &str)] = &[
    ("CI_COMMIT_TAG", "v2"),
    ("VERSION", "v2"),
    ("BG_TOKEN", "a-ci-token-0123456789abcdef"),
    (
        "BG_WEBHOOK_BLUE",
        "https://portainer.example/api/webhooks/blue",
    ),
    (
        "BG_WEBHOOK_GREEN",
        "https://portainer.example/api/webhooks/green",
    ),
];

#[test]
fn every_bg_ctl_command_line_in_the_docs_is_accepted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let binary = Path::new(env!("CARGO_BIN_EXE_bg-ctl"));
    doc_commands::assert_accepted(&root, "bg-ctl", binary, PLACEHOLDERS, 4);
}
