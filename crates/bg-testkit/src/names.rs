//! The flags (`--name`) and environment variables (`BG_NAME`) that a
//! program's messages and help name, checked against what its `clap` tree
//! defines: a message that tells the user to raise a flag the program does
//! not have sends them off to find it.
//!
//! * [`mentions`] — the names in one text, with the line of each;
//! * [`source_mentions`] — the names in a crate's sources, test code left
//!   out (a test may name a flag precisely because it must be refused);
//! * `help_mentions` (feature `names`) — the names in the rendered help of
//!   a command and every subcommand;
//! * [`Known`] — the names a `clap` tree defines (`Known::of`, feature
//!   `names`), plus allowlists;
//! * [`unknown`] and [`report`] — the mentions no known name covers, listed
//!   by name with every place each was found.
//!
//! A name is either exact or, written `--webhook-{colour}`, `--oidc-*` or
//! `BG_WEBHOOK_*` in the text, a prefix (`--webhook-*`): it is known when
//! some known name starts with it.
//!
//! The two programs name each other's flags (bg-ctl tells the user to start
//! gates with `--lb-source`; a gate tells the operator to run
//! `bg-ctl init --from-gate`). Those are listed here, so that each one's
//! test can check that the other's claims about it still hold:
//! [`GATE_FLAGS_NAMED_BY_CTL`] and [`CTL_FLAGS_NAMED_BY_GATE`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// bg-gate's flags that bg-ctl's messages and help name, each with why it
/// is right there. bg-ctl's test allows them; bg-gate's checks they exist.
pub const GATE_FLAGS_NAMED_BY_CTL: &[(&str, &str)] = &[
    (
        "--lb-source",
        "bg-ctl waits for the load balancers' probes; its --lb-window help and its error for \
         a drain no load balancer confirms tell the user to start the gates with bg-gate --lb-source",
    ),
    (
        "--service-connections-path",
        "a drain that ran out because a sidecar gate could not count its service's \
         websockets names the gate's option for the route that failed",
    ),
];

/// bg-ctl's flags that bg-gate's messages and help name, each with why it
/// is right there. bg-gate's test allows them; bg-ctl's checks they exist.
pub const CTL_FLAGS_NAMED_BY_GATE: &[(&str, &str)] = &[
    (
        "--from-gate",
        "a gate whose store lost or lowered the state tells the operator to restore it with \
         `bg-ctl init --from-gate` (`--force --from-gate` when the store still holds a state)",
    ),
    (
        "--force",
        "the gate's --legacy-mirror help says `bg-ctl init --force --legacy-mirror` replaces \
         the ids a gate recorded",
    ),
];

/// One name found in a text, and where: `path:line`, or `bg-ctl deploy
/// --help:line` for rendered help.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mention {
    /// `--name`, `BG_NAME`, or a prefix ending in `*` (`--oidc-*`).
    pub name: String,
    /// Where it was found, `file:line`.
    pub place: String,
}

impl fmt::Display for Mention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.name)
    }
}

/// Every flag and `BG_` variable named in `text`, each placed at
/// `origin:line`.
///
/// A flag is `--[a-z][a-z0-9-]*[a-z0-9]`, a variable `\bBG_[A-Z0-9_]+\b`.
/// A name written as a template (`--webhook-{colour}`, `BG_WEBHOOK_{}`) or
/// a glob (`--oidc-*`, `BG_WEBHOOK_*`) becomes a prefix ending in `*`.
/// Since `text` may be Rust source, a name right after an escape (`\n`,
/// `\t`) in a string literal still counts as starting a word.
#[must_use]
pub fn mentions(text: &str, origin: &str) -> Vec<Mention> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let place = format!("{origin}:{}", n + 1);
        let b = line.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let name = if b[i..].starts_with(b"--") {
                flag_at(b, i)
            } else if b[i..].starts_with(b"BG_") {
                variable_at(b, i)
            } else {
                None
            };
            match name {
                Some((name, end)) => {
                    found.push(Mention {
                        name,
                        place: place.clone(),
                    });
                    i = end;
                }
                None => i += 1,
            }
        }
    }
    found
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Whether a name may start at `i`: after no word character (nor a dash,
/// for a flag), or after an escape such as `\n` inside a string literal.
fn starts_word(b: &[u8], i: usize, dash_joins: bool) -> bool {
    if i == 0 {
        return true;
    }
    let prev = b[i - 1];
    let joins = is_word(prev) || (dash_joins && prev == b'-');
    if !joins {
        return true;
    }
    i >= 2 && b[i - 2] == b'\\' && matches!(prev, b'n' | b't' | b'r')
}

/// The run of `class` from `start`, and whether it is followed by a template
/// or glob that makes it a prefix.
fn run(b: &[u8], start: usize, class: impl Fn(u8) -> bool) -> (usize, bool) {
    let mut end = start;
    while end < b.len() && class(b[end]) {
        end += 1;
    }
    let prefix = matches!(b.get(end), Some(b'*' | b'{'));
    (end, prefix)
}

fn flag_at(b: &[u8], i: usize) -> Option<(String, usize)> {
    // `---` is a rule, not a flag; `a--b` is no flag either.
    if !starts_word(b, i, true) {
        return None;
    }
    let start = i + 2;
    if !b.get(start).is_some_and(u8::is_ascii_lowercase) {
        return None;
    }
    let (end, prefix) = run(b, start, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
    });
    let word = std::str::from_utf8(&b[i..end]).ok()?;
    if prefix && word.ends_with('-') {
        return Some((format!("{word}*"), end));
    }
    let word = word.trim_end_matches('-');
    (word.len() >= 4).then(|| (word.to_owned(), end))
}

fn variable_at(b: &[u8], i: usize) -> Option<(String, usize)> {
    if !starts_word(b, i, false) {
        return None;
    }
    let start = i + 3;
    let (end, prefix) = run(b, start, |c| {
        c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_'
    });
    // `BG_` alone, or `BG_Xy`, is no variable.
    if end == start || b.get(end).copied().is_some_and(is_word) {
        return None;
    }
    let word = std::str::from_utf8(&b[i..end]).ok()?;
    if prefix && word.ends_with('_') {
        return Some((format!("{word}*"), end));
    }
    Some((word.to_owned(), end))
}

/// Every name in the `.rs` files under `dirs` of `crate_dir` (`src`,
/// `examples`), each placed at its path from the workspace root (from
/// `crate_dir` outside a workspace) and line.
///
/// Test code is left out: `#[cfg(test)] mod name { … }` blocks (as rustfmt
/// lays them out: to the `}` at the `mod`'s indent) and the files of
/// `#[cfg(test)] mod name;`, with their submodules. A test may name a flag
/// precisely because it must be refused, and no user reads it.
///
/// # Panics
/// If a directory or file cannot be read.
#[must_use]
pub fn source_mentions(crate_dir: &Path, dirs: &[&str]) -> Vec<Mention> {
    let root = crate_dir
        .ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
        })
        .unwrap_or(crate_dir);
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(&crate_dir.join(dir), &mut files);
    }
    files.sort();
    let texts: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
            (f, text)
        })
        .collect();
    let test_only: Vec<PathBuf> = texts
        .iter()
        .flat_map(|(f, text)| test_modules(f, text))
        .collect();
    let mut found = Vec::new();
    for (file, text) in &texts {
        if test_only.iter().any(|t| file.starts_with(t)) {
            continue;
        }
        let origin = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        found.extend(mentions(&without_test_blocks(text), &origin));
    }
    found
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The item an attribute line stands on: the next line that is neither an
/// attribute nor a comment.
fn item_after<'a>(lines: &[&'a str], attribute: usize) -> Option<(usize, &'a str)> {
    lines
        .iter()
        .enumerate()
        .skip(attribute + 1)
        .find(|(_, l)| {
            let t = l.trim_start();
            !t.starts_with("#[") && !t.starts_with("//")
        })
        .map(|(n, l)| (n, *l))
}

/// `mod name;` or `mod name {` (any visibility): the name, and whether the
/// body follows inline.
fn module(line: &str) -> Option<(&str, bool)> {
    let rest = line.trim_start();
    let rest = match rest.strip_prefix("pub") {
        Some(r) => r.trim_start_matches(|c: char| c != ' ').trim_start(),
        None => rest,
    };
    let rest = rest.strip_prefix("mod ")?.trim();
    if let Some(name) = rest.strip_suffix(';') {
        Some((name.trim(), false))
    } else {
        rest.strip_suffix('{').map(|name| (name.trim(), true))
    }
}

/// The files and directories of the test-only modules `file` declares.
fn test_modules(file: &Path, text: &str) -> Vec<PathBuf> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(parent) = file.parent() else {
        return Vec::new();
    };
    // Submodules of a crate root or a `mod.rs` sit beside it; those of
    // `a/b.rs` in `a/b/`.
    let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let root_like = matches!(name, "lib" | "main" | "mod")
        || parent
            .file_name()
            .is_some_and(|d| d == "bin" || d == "examples");
    let dir = if root_like {
        parent.to_path_buf()
    } else {
        parent.join(name)
    };
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        if line.trim() != "#[cfg(test)]" {
            continue;
        }
        if let Some((m, false)) = item_after(&lines, n).and_then(|(_, l)| module(l)) {
            out.push(dir.join(format!("{m}.rs")));
            out.push(dir.join(m));
        }
    }
    out
}

/// `text` with the bodies of its inline `#[cfg(test)] mod name { … }`
/// blocks blanked, lines kept so that line numbers stay right.
fn without_test_blocks(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut skip = vec![false; lines.len()];
    for (n, line) in lines.iter().enumerate() {
        if line.trim() != "#[cfg(test)]" {
            continue;
        }
        let Some((at, item)) = item_after(&lines, n) else {
            continue;
        };
        if !matches!(module(item), Some((_, true))) {
            continue;
        }
        let indent = &item[..item.len() - item.trim_start().len()];
        let close = format!("{indent}}}");
        let end = lines
            .iter()
            .enumerate()
            .skip(at + 1)
            .find(|(_, l)| l.trim_end() == close)
            .map_or(lines.len() - 1, |(e, _)| e);
        for s in &mut skip[n..=end] {
            *s = true;
        }
    }
    lines
        .iter()
        .zip(skip)
        .map(|(l, s)| if s { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names in the rendered long help of `cmd` and of every subcommand,
/// each placed at `<bin name> --help:line`.
#[cfg(feature = "names")]
#[must_use]
pub fn help_mentions(cmd: &mut clap::Command) -> Vec<Mention> {
    fn walk(cmd: &mut clap::Command, found: &mut Vec<Mention>) {
        let origin = format!(
            "{} --help",
            cmd.get_bin_name().unwrap_or(cmd.get_name()).to_owned()
        );
        let help = cmd.render_long_help().to_string();
        found.extend(mentions(&help, &origin));
        for sub in cmd.get_subcommands_mut() {
            walk(sub, found);
        }
    }
    // Building propagates global options and the built-in `--help` and
    // `--version` into every subcommand, as the user sees them.
    cmd.build();
    let mut found = Vec::new();
    walk(cmd, &mut found);
    found
}

/// The names a program defines, plus the ones allowed beside them.
#[derive(Debug, Clone, Default)]
pub struct Known {
    names: BTreeSet<String>,
    shown: BTreeSet<String>,
}

impl Known {
    /// Every long flag (aliases included), and every `env` of every
    /// argument, of `cmd` and its subcommands, the built-in `--help` and
    /// `--version` with them. Hidden arguments count: they still parse, and
    /// a message may name one to say it is gone.
    #[cfg(feature = "names")]
    #[must_use]
    pub fn of(cmd: &mut clap::Command) -> Self {
        fn walk(cmd: &clap::Command, known: &mut Known) {
            for arg in cmd.get_arguments() {
                for long in arg.get_all_aliases().into_iter().flatten() {
                    known.names.insert(format!("--{long}"));
                }
                for long in arg.get_long_and_visible_aliases().into_iter().flatten() {
                    known.names.insert(format!("--{long}"));
                    if !arg.is_hide_set() {
                        known.shown.insert(format!("--{long}"));
                    }
                }
                if let Some(env) = arg.get_env().and_then(|e| e.to_str()) {
                    known.names.insert(env.to_owned());
                    if !arg.is_hide_set() && !arg.is_hide_env_set() {
                        known.shown.insert(env.to_owned());
                    }
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, known);
            }
        }
        cmd.build();
        let mut known = Known::default();
        walk(cmd, &mut known);
        known
    }

    /// Also allows the names of `list` (`(name, why)`): names the program
    /// rightly mentions without defining them.
    #[must_use]
    pub fn allowing(mut self, list: &[(&str, &str)]) -> Self {
        self.names.extend(list.iter().map(|(n, _)| (*n).to_owned()));
        self
    }

    /// Whether `name` is known; a prefix (`--oidc-*`) is when some known
    /// name is longer and starts with it.
    #[must_use]
    pub fn covers(&self, name: &str) -> bool {
        match name.strip_suffix('*') {
            Some(prefix) => self
                .names
                .iter()
                .any(|n| n.len() > prefix.len() && n.starts_with(prefix)),
            None => self.names.contains(name),
        }
    }

    /// Every known name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// The names the tree's help shows: the long flags and visible aliases
    /// of arguments that are not hidden, and their variables unless those
    /// are hidden. Allowed names are not among them.
    pub fn shown(&self) -> impl Iterator<Item = &str> {
        self.shown.iter().map(String::as_str)
    }
}

/// The mentions whose name `known` does not cover.
#[must_use]
pub fn unknown<'a>(found: &'a [Mention], known: &Known) -> Vec<&'a Mention> {
    found.iter().filter(|m| !known.covers(&m.name)).collect()
}

/// The unknown mentions by name, one line each with every place, so that
/// each can be fixed from the test's output alone; empty for none.
#[must_use]
pub fn report(unknown: &[&Mention]) -> String {
    let mut by_name: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for m in unknown {
        by_name.entry(&m.name).or_default().insert(&m.place);
    }
    by_name
        .iter()
        .map(|(name, places)| {
            let places: Vec<&str> = places.iter().copied().collect();
            format!("  {name}  at {}", places.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The entries of an allowlist (`(name, why)`) that have gone stale: no
/// longer mentioned in `found`, or defined by `known` itself. A stale entry
/// would let a wrong mention of the same name through.
#[must_use]
pub fn stale<'a>(list: &[(&'a str, &str)], found: &[Mention], known: &Known) -> Vec<&'a str> {
    list.iter()
        .map(|(name, _)| *name)
        .filter(|name| known.covers(name) || !found.iter().any(|m| m.name == *name))
        .collect()
}

/// Checks that no entry of the allowlists `lists` (each with its name, for
/// the message) of `tool` has gone [`stale`].
///
/// # Panics
/// Naming the stale entries and their list.
pub fn assert_still_needed(
    tool: &str,
    lists: &[(&[(&str, &str)], &str)],
    found: &[Mention],
    defined: &Known,
) {
    for (list, what) in lists {
        let stale = stale(list, found, defined);
        assert!(
            stale.is_empty(),
            "{what}: {tool} no longer names these, or has them itself: {stale:?}"
        );
    }
}

/// Checks that the flags of `list` (named by `other`'s messages as this
/// tool's, `list_name`) are all `defined` here.
///
/// # Panics
/// Naming the flags that are gone.
pub fn assert_named_exist(list: &[(&str, &str)], list_name: &str, other: &str, defined: &Known) {
    let gone: Vec<&str> = list
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !defined.covers(n))
        .collect();
    assert!(
        gone.is_empty(),
        "{other}'s messages name flags that do not exist: {gone:?} (bg_testkit::names::{list_name})"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        mentions(text, "t").into_iter().map(|m| m.name).collect()
    }

    #[test]
    fn flags_and_variables_are_found_with_their_lines() {
        let found = mentions(
            "use --store URL (BG_STORE)\nor --gate=URL, $BG_GATE_URL.",
            "f.rs",
        );
        let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "f.rs:1: --store",
                "f.rs:1: BG_STORE",
                "f.rs:2: --gate",
                "f.rs:2: BG_GATE_URL"
            ]
        );
    }

    #[test]
    fn templates_and_globs_are_prefixes() {
        assert_eq!(
            names("set --webhook-{colour} (BG_WEBHOOK_{}), BG_WEBHOOK_*, --oidc-*"),
            ["--webhook-*", "BG_WEBHOOK_*", "BG_WEBHOOK_*", "--oidc-*"]
        );
        let known = Known::default().allowing(&[("--webhook-blue", ""), ("BG_WEBHOOK_BLUE", "")]);
        assert!(known.covers("--webhook-*"));
        assert!(known.covers("BG_WEBHOOK_*"));
        assert!(!known.covers("--oidc-*"));
        assert!(!known.covers("--webhook-blue-*"));
    }

    #[test]
    fn a_name_after_an_escape_in_a_literal_counts() {
        assert_eq!(
            names(r#""Exit codes:\n--help\tBG_TOKEN""#),
            ["--help", "BG_TOKEN"]
        );
    }

    #[test]
    fn what_only_looks_like_a_name_is_not_one() {
        assert_eq!(
            names("--- a-- b --X --a -- x BG_ alone, XBG_STORE, BG_STOREs, A_BG_X"),
            Vec::<String>::new()
        );
        assert_eq!(names("--drain-."), ["--drain"]);
    }

    #[test]
    fn test_code_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("a/tests")).unwrap();
        let write = |p: &str, t: &str| std::fs::write(src.join(p), t).unwrap();
        write(
            "lib.rs",
            "//! --kept\nmod a;\n#[cfg(test)]\nmod testing;\n\n#[cfg(test)]\nmod tests {\n    \
             fn f() {\n        \"--inline\";\n    }\n}\n// --after\n",
        );
        write("testing.rs", "// --testing\n");
        write(
            "a.rs",
            "// --in-a\n#[cfg(test)]\n#[allow(unused)]\nmod tests;\n",
        );
        write("a/tests.rs", "// --a-tests\n");
        write("a/tests/deeper.rs", "// --deeper\n");
        let found: Vec<String> = source_mentions(dir.path(), &["src"])
            .iter()
            .map(|m| m.to_string())
            .collect();
        assert_eq!(
            found,
            [
                "src/a.rs:1: --in-a",
                "src/lib.rs:1: --kept",
                "src/lib.rs:12: --after"
            ]
        );
    }

    #[test]
    fn the_report_lists_each_unknown_name_with_every_place() {
        let found = mentions(
            "raise --drain-batch or --drain-timeout\n--drain-batch, BG_DRAIN_BATCH",
            "m.rs",
        );
        let known = Known::default().allowing(&[("--drain-timeout", "")]);
        let bad = unknown(&found, &known);
        assert_eq!(
            report(&bad),
            "  --drain-batch  at m.rs:1, m.rs:2\n  BG_DRAIN_BATCH  at m.rs:2"
        );
        assert_eq!(
            stale(&[("--drain-timeout", "")], &found, &known),
            ["--drain-timeout"]
        );
        assert!(stale(&[("--drain-batch", "")], &found, &known).is_empty());
    }
}
