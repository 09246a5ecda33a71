//! The GitLab release template, run as GitLab would run it: `.gitlab-ci.yml`'s
//! `release` job executed by gitlab-ci-local in shell mode, with `bg-ctl` on
//! the PATH and the CI/CD variables the template asks for, against two
//! `ws_echo` services and a stand-in for their Portainer webhooks. Two tags
//! in a row: the first releases to green, the second to blue — the release
//! that restarts the gate the first one used.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bg_e2e::{Instance, Webhooks, addr_of, gate_status, instances, show};
use bg_state::{AppName, Colour};
use bg_testkit::{RedisServer, workspace_binary, workspace_example};

const TOKEN: &str = "template-test-token-0123";

/// gitlab-ci-local as `scripts/test.sh` installs it, or as `GITLAB_CI_LOCAL`
/// names it.
fn gitlab_ci_local() -> PathBuf {
    if let Some(p) = std::env::var_os("GITLAB_CI_LOCAL") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace");
    let p = root.join("target/tools/gitlab-ci-local-4.60.1/node_modules/.bin/gitlab-ci-local");
    assert!(
        p.exists(),
        "{} is missing: ./scripts/test.sh installs it (or set GITLAB_CI_LOCAL)",
        p.display()
    );
    p
}

/// A copy of the project's `.gitlab-ci.yml` in a git repository of its own,
/// as a service's repository would hold the template.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::copy(
        root.join(".gitlab-ci.yml"),
        dir.path().join(".gitlab-ci.yml"),
    )
    .unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", show(&out));
    };
    git(&["init", "-q", "-b", "main"]);
    git(&[
        "remote",
        "add",
        "origin",
        "https://gitlab.example.com/chat/chat.git",
    ]);
    git(&["add", ".gitlab-ci.yml"]);
    git(&["commit", "-q", "-m", "template"]);
    dir
}

/// Runs `cmd` in a process group of its own, killing the group if it has
/// not finished within `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("gitlab-ci-local starts");
    let group = format!("-{}", child.id());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // What the job left running (nothing, normally) goes with it.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_release_template_releases_two_tags_in_a_row() {
    let _serial = crate::serial().await;
    let glci = gitlab_ci_local();
    let ctl = workspace_binary("bg-ctl", "bg-ctl");
    let service = workspace_example("bg-gate", "ws_echo");
    let redis = RedisServer::start();
    let gate = |colour| {
        Instance::new(service.clone(), colour, &redis.url(), "chat")
            .args(&["--poll-interval", "100ms", "--handover", "0s"])
            .env("BG_TOKEN", TOKEN)
            .started("v1")
    };
    let gates = instances([gate("blue"), gate("green")]);
    let hooks = Webhooks::serve(Arc::clone(&gates), Duration::from_millis(200)).await;
    let (blue, green) = (addr_of(&gates, "blue"), addr_of(&gates, "green"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(gate_status(blue).is_some_and(|s| s.live)
        && gate_status(green).is_some_and(|s| !s.live))
    {
        assert!(Instant::now() < deadline, "blue never went live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let project = project();
    let home = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        ctl.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (blue_url, green_url) = (format!("http://{blue}"), format!("http://{green}"));
    let store = bg_state::open(&redis.url()).unwrap();
    let app = AppName::new("chat").unwrap();

    for (tag, colour, generation) in [("v2", Colour::Green, 2), ("v3", Colour::Blue, 3)] {
        let mut cmd = Command::new(&glci);
        cmd.current_dir(project.path())
            .env("PATH", &path)
            .env("NO_COLOR", "1")
            .args(["release", "--force-shell-executor", "--no-color"])
            .arg("--home")
            .arg(home.path());
        // The CI/CD variables the template's comment lists, as a project
        // would set them; the tag as a tag pipeline carries it.
        for (k, v) in [
            ("CI_COMMIT_TAG", tag),
            ("BG_GATE", &format!("{blue_url},{green_url}")),
            ("BG_APP", "chat"),
            ("BG_GATE_BLUE", &blue_url),
            ("BG_GATE_GREEN", &green_url),
            ("BG_WEBHOOK_BLUE", &hooks.url("blue")),
            ("BG_WEBHOOK_GREEN", &hooks.url("green")),
            ("BG_TOKEN", TOKEN),
        ] {
            cmd.arg("--variable").arg(format!("{k}={v}"));
        }
        let out = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(240)))
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "release {tag}: {}", show(&out));
        let state = store.get(&app).await.unwrap().unwrap();
        assert_eq!(
            (state.active, state.generation),
            (colour, generation),
            "release {tag}: {}",
            show(&out)
        );
        let live = addr_of(&gates, colour.as_str());
        assert_eq!(
            gate_status(live).map(|s| s.version),
            Some(tag.to_owned()),
            "release {tag}"
        );
    }
    assert_eq!(hooks.calls(), ["green", "blue"]);
}
