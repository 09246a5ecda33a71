//! The `bg-gate` and `bg-ctl` command lines the README and `docs/` show,
//! extracted so a test can run each one through the program's `--check`:
//! a doc example the program would refuse fails the test.
//!
//! The rules, so a writer knows what is checked:
//!
//! * A command line is a line of a fenced code block (any language) whose
//!   command is `bg-gate` or `bg-ctl`, or `cargo run -p bg-gate --` /
//!   `cargo run -p bg-ctl --` (checked as the program itself). Lines ending
//!   in `\` continue on the next; a leading `$ ` prompt or YAML `- ` list
//!   marker is left out; `VAR=value` prefixes stay with the command. Several
//!   commands on a line (`&&`, `||`, `;`, `|`) are taken one by one and a
//!   trailing `# comment` is dropped.
//! * Inline code in prose (`` `bg-ctl deploy` ``) names a command or a
//!   flag; it is not a command line and is not run.
//! * Placeholders are shell variables (`"$CI_COMMIT_TAG"`, `${IMAGE}`):
//!   the line runs under `sh` with `set -u` and only the variables the test
//!   supplies, so a variable the test does not know fails, by name. Other
//!   placeholders (`<gate>`, `…`) are not allowed in a command line: write
//!   them as variables.
//! * The environment of a command is the test's variables, then the
//!   block's own: the `variables:` of a GitLab CI job, `export NAME=value`
//!   lines before the command.
//!
//! [`check`] runs one command line with the program replaced by
//! `PROGRAM --check`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One command line from the docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocCommand {
    /// `bg-gate` or `bg-ctl`.
    pub program: String,
    /// The command as the shell reads it, `VAR=value` prefixes included,
    /// continuations joined, `cargo run -p P --` replaced by `P`.
    pub shell: String,
    /// The block's variables before the command, in order.
    pub env: Vec<(String, String)>,
    /// `path:line` of its first line.
    pub place: String,
}

const PROGRAMS: [&str; 2] = ["bg-gate", "bg-ctl"];

/// `README.md` and every `.md` under `docs/` of the workspace at `root`.
#[must_use]
pub fn doc_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut files = vec![root.join("README.md")];
    walk(&root.join("docs"), &mut files);
    files.sort();
    files
}

/// Every command line of every doc file under `root`, placed relative to it.
///
/// # Panics
/// If a doc file cannot be read.
#[must_use]
pub fn workspace_commands(root: &Path) -> Vec<DocCommand> {
    doc_files(root)
        .iter()
        .flat_map(|f| {
            let text =
                std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let shown = f.strip_prefix(root).unwrap_or(f).display().to_string();
            commands(&text, &shown)
        })
        .collect()
}

/// The command lines of one markdown text; `origin` names it in places.
#[must_use]
pub fn commands(text: &str, origin: &str) -> Vec<DocCommand> {
    let mut found = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_start();
        if !fence.starts_with("```") {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && !lines[end].trim_start().starts_with("```") {
            end += 1;
        }
        block(&lines[start..end], start + 1, origin, &mut found);
        i = end + 1;
    }
    found
}

/// The commands of one fenced block whose first line is line `first`.
fn block(lines: &[&str], first: usize, origin: &str, found: &mut Vec<DocCommand>) {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut variables_indent: Option<usize> = None;
    let mut i = 0;
    while i < lines.len() {
        let number = first + i;
        let mut logical = String::new();
        loop {
            let line = lines[i];
            i += 1;
            match line.strip_suffix('\\') {
                Some(head) if i < lines.len() => {
                    logical.push_str(head);
                    logical.push(' ');
                }
                _ => {
                    logical.push_str(line);
                    break;
                }
            }
        }
        let indent = logical.len() - logical.trim_start().len();
        let trimmed = logical.trim();
        // A GitLab CI job's variables, `NAME: value` under `variables:`.
        if let Some(at) = variables_indent {
            if indent > at && !trimmed.is_empty() {
                if let Some((k, v)) = yaml_variable(trimmed) {
                    env.push((k, v));
                }
                continue;
            }
            if !trimmed.is_empty() {
                variables_indent = None;
            }
        }
        if trimmed == "variables:" {
            variables_indent = Some(indent);
            continue;
        }
        let line = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
        let line = line.strip_prefix("- ").unwrap_or(line);
        for segment in segments(line) {
            if let Some(rest) = segment.strip_prefix("export ") {
                for word in words(rest) {
                    if let Some((k, v)) = assignment(&word) {
                        env.push((k, unquote(&v)));
                    }
                }
                continue;
            }
            if let Some((program, shell)) = command(&segment) {
                found.push(DocCommand {
                    program,
                    shell,
                    env: env.clone(),
                    place: format!("{origin}:{number}"),
                });
            }
        }
    }
}

/// `NAME: value  # comment` as a variable, if NAME is one.
fn yaml_variable(line: &str) -> Option<(String, String)> {
    if line.starts_with('#') {
        return None;
    }
    let (k, v) = line.split_once(':')?;
    let k = k.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let v = match v.find(" #") {
        Some(at) => &v[..at],
        None => v,
    };
    Some((k.to_owned(), unquote(v.trim())))
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_owned();
        }
    }
    v.to_owned()
}

/// `NAME=value` as its two halves, if the word is an assignment.
fn assignment(word: &str) -> Option<(String, String)> {
    let (k, v) = word.split_once('=')?;
    let ok = !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit());
    ok.then(|| (k.to_owned(), v.to_owned()))
}

/// The program a segment runs and the segment as the shell should run it,
/// if the program is one of ours.
fn command(segment: &str) -> Option<(String, String)> {
    let ws = words(segment);
    let at = ws.iter().position(|w| assignment(w).is_none())?;
    let prefix = ws[..at].join(" ");
    let rest = &ws[at..];
    let (program, args) = if PROGRAMS.contains(&rest[0].as_str()) {
        (rest[0].clone(), &rest[1..])
    } else if rest.len() >= 4
        && rest[0] == "cargo"
        && rest[1] == "run"
        && rest[2] == "-p"
        && PROGRAMS.contains(&rest[3].as_str())
        && rest.get(4).is_some_and(|w| w == "--")
    {
        (rest[3].clone(), &rest[5..])
    } else {
        return None;
    };
    let mut shell = prefix;
    for w in std::iter::once(&program).chain(args) {
        if !shell.is_empty() {
            shell.push(' ');
        }
        shell.push_str(w);
    }
    Some((program, shell))
}

/// Splits a line at `&&`, `||`, `;`, `|` and `&` outside quotes and `$(…)`,
/// dropping a `# comment`.
fn segments(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut scan = Scan::default();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if scan.top() {
            if c == '#' && (cur.is_empty() || cur.ends_with(char::is_whitespace)) {
                break;
            }
            if matches!(c, ';' | '|' | '&') {
                out.push(std::mem::take(&mut cur));
                if chars.get(i + 1) == Some(&c) {
                    i += 1;
                }
                i += 1;
                continue;
            }
        }
        scan.feed(c, chars.get(i + 1).copied());
        cur.push(c);
        i += 1;
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Splits at whitespace outside quotes and `$(…)`, keeping the quotes.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut scan = Scan::default();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if scan.top() && c.is_whitespace() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        scan.feed(c, chars.get(i + 1).copied());
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Where a scan of shell text is: in quotes, in `$(…)`.
#[derive(Default)]
struct Scan {
    single: bool,
    double: bool,
    depth: usize,
    escaped: bool,
}

impl Scan {
    fn top(&self) -> bool {
        !self.single && !self.double && self.depth == 0 && !self.escaped
    }

    fn feed(&mut self, c: char, next: Option<char>) {
        if self.escaped {
            self.escaped = false;
            return;
        }
        match c {
            '\\' if !self.single => self.escaped = true,
            '\'' if !self.double => self.single = !self.single,
            '"' if !self.single => self.double = !self.double,
            '$' if !self.single && next == Some('(') => self.depth += 1,
            ')' if !self.single && self.depth > 0 => self.depth -= 1,
            _ => {}
        }
    }
}

/// Runs `cmd` under `sh` with `set -u`, its program replaced by
/// Runs every command line of `name` (`bg-gate` or `bg-ctl`) in the docs
/// under `root` through `binary --check` with `vars` as the placeholders'
/// values, and fails, naming each, on those refused; and on finding fewer
/// than `at_least`, so the check cannot pass by finding nothing.
///
/// # Panics
/// As described: when a command line is refused or too few are found.
pub fn assert_accepted(
    root: &Path,
    name: &str,
    binary: &Path,
    vars: &[(&str, &str)],
    at_least: usize,
) {
    let found: Vec<_> = workspace_commands(root)
        .into_iter()
        .filter(|c| c.program == name)
        .collect();
    assert!(
        found.len() >= at_least,
        "only {} {name} command lines found: {found:?}",
        found.len()
    );
    let refused: Vec<String> = found
        .iter()
        .filter_map(|c| {
            check(c, binary, vars)
                .err()
                .map(|e| format!("{}: {}\n  -> {e}", c.place, c.shell))
        })
        .collect();
    assert!(
        refused.is_empty(),
        "doc examples {name} refuses:\n{}",
        refused.join("\n")
    );
}

/// `program --check`, in an environment of `vars` and the block's own
/// variables only. `Ok` with the output if it exits 0; `Err` with what it
/// said otherwise.
///
/// # Panics
/// If the shell cannot be run or the wrapper written.
///
/// # Errors
/// What the check (or the shell, for an unknown variable) said, with its
/// exit status.
pub fn check(cmd: &DocCommand, program: &Path, vars: &[(&str, &str)]) -> Result<String, String> {
    if cmd.shell.contains('…') || cmd.shell.contains('<') {
        return Err(
            "a placeholder other than a shell variable (… or <…>): write it as \"$NAME\"".into(),
        );
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let wrapper = dir.path().join(&cmd.program);
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec '{}' --check \"$@\"\n", program.display()),
    )
    .expect("the wrapper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .expect("the wrapper's mode");
    }
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("set -u\n{}", cmd.shell))
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
        .env("HOME", dir.path());
    for (k, v) in vars {
        sh.env(k, v);
    }
    for (k, v) in &cmd.env {
        sh.env(k, v);
    }
    let out = sh.output().expect("sh runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(said)
    } else {
        Err(format!("{}: {}", out.status, said.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_commands_in_fenced_blocks_only() {
        let text = "Run `bg-ctl status` in prose.\n\n```sh\n\
            BG_TOKEN=$(head -c 24 /dev/urandom | base64) bg-gate --colour blue \\\n  \
              --listen 0.0.0.0:9090   # a comment\n\
            curl -s http://x && bg-ctl --app chat status; echo done\n\
            cargo run -p bg-gate -- --colour green\n\
            cargo run -p bg-gate --example ws_echo -- --colour blue\n\
            ```\n";
        let found = commands(text, "t.md");
        let shells: Vec<&str> = found.iter().map(|c| c.shell.as_str()).collect();
        assert_eq!(
            shells,
            [
                "BG_TOKEN=$(head -c 24 /dev/urandom | base64) bg-gate --colour blue --listen 0.0.0.0:9090",
                "bg-ctl --app chat status",
                "bg-gate --colour green",
            ]
        );
        assert_eq!(found[0].place, "t.md:4");
        assert_eq!(found[1].program, "bg-ctl");
    }

    #[test]
    fn takes_the_blocks_variables() {
        let text = "```yaml\njob:\n  variables:\n    BG_APP: chat   # the app\n    \
            BG_GATE: \"http://g:9090\"\n    # BG_WEBHOOK_BLUE: masked\n  script:\n    \
            - bg-ctl deploy --version \"$CI_COMMIT_TAG\"\n```\n\
            ```sh\nexport BG_TOKEN=abc   # from the file\nbg-ctl --gate http://g:9090 status\n```\n";
        let found = commands(text, "ci.md");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].shell, "bg-ctl deploy --version \"$CI_COMMIT_TAG\"");
        assert_eq!(
            found[0].env,
            [
                ("BG_APP".to_owned(), "chat".to_owned()),
                ("BG_GATE".to_owned(), "http://g:9090".to_owned())
            ]
        );
        assert_eq!(found[1].env, [("BG_TOKEN".to_owned(), "abc".to_owned())]);
    }
}
