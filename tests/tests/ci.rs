//! The GitLab release templates, run as GitLab would run them: the `release`
//! job of `.gitlab-ci.yml` and of the README's template, each executed by
//! gitlab-ci-local in shell mode, with `bg-ctl` on the PATH and the CI/CD
//! variables the template asks for, against two `ws_echo` services and a
//! stand-in for their Portainer webhooks. Two tags in a row each: one
//! release to each colour, so one of them restarts the gate the other used.

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

fn workspace_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The README's release job, as written there, with its example gate
/// addresses replaced by the test's.
fn readme_template(blue: &str, green: &str) -> String {
    let readme = workspace_file("README.md");
    let section = readme
        .split_once("## A release from GitLab CI")
        .expect("the README's GitLab section")
        .1;
    let block = section
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("the README's release job")
        .0;
    assert!(block.contains("https://gate-blue.internal:9090"), "{block}");
    assert!(
        block.contains("https://gate-green.internal:9090"),
        "{block}"
    );
    block
        .replace("https://gate-blue.internal:9090", blue)
        .replace("https://gate-green.internal:9090", green)
}

/// `ci_yml` as `.gitlab-ci.yml` in a git repository of its own, as a
/// service's repository would hold the template.
fn project(ci_yml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".gitlab-ci.yml"), ci_yml).unwrap();
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
async fn the_release_templates_release_two_tags_in_a_row() {
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
    let home = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        ctl.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (blue_url, green_url) = (format!("http://{blue}"), format!("http://{green}"));
    let store = bg_state::open(&redis.url()).unwrap();
    let app = AppName::new("chat").unwrap();

    let templates = [
        ("README.md", readme_template(&blue_url, &green_url)),
        (".gitlab-ci.yml", workspace_file(".gitlab-ci.yml")),
    ];
    let releases = [
        (0, "v2", Colour::Green, 2),
        (0, "v3", Colour::Blue, 3),
        (1, "v4", Colour::Green, 4),
        (1, "v5", Colour::Blue, 5),
    ];
    let projects = templates.each_ref().map(|(_, yml)| project(yml));
    for (template, tag, colour, generation) in releases {
        let (name, project) = (templates[template].0, &projects[template]);
        let mut cmd = Command::new(&glci);
        cmd.current_dir(project.path())
            .env("PATH", &path)
            .env("NO_COLOR", "1")
            .args(["release", "--force-shell-executor", "--no-color"])
            .arg("--home")
            .arg(home.path());
        // The tag, as a tag pipeline carries it; the masked CI/CD variables
        // both templates leave to the project; the job's token, which GitLab
        // mints from `id_tokens`.
        let mut variables = vec![
            ("CI_COMMIT_TAG", tag.to_owned()),
            ("BG_WEBHOOK_BLUE", hooks.url("blue")),
            ("BG_WEBHOOK_GREEN", hooks.url("green")),
            ("BG_TOKEN", TOKEN.to_owned()),
        ];
        if name == ".gitlab-ci.yml" {
            // The settings its comment lists as CI/CD variables (the
            // README's job sets them itself).
            variables.extend([
                ("BG_GATE", format!("{blue_url},{green_url}")),
                ("BG_APP", "chat".to_owned()),
                ("BG_GATE_BLUE", blue_url.clone()),
                ("BG_GATE_GREEN", green_url.clone()),
            ]);
        }
        for (k, v) in variables {
            cmd.arg("--variable").arg(format!("{k}={v}"));
        }
        let out = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(240)))
            .await
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: release {tag}: {}",
            show(&out)
        );
        let state = store.get(&app).await.unwrap().unwrap();
        assert_eq!(
            (state.active, state.generation),
            (colour, generation),
            "{name}: release {tag}: {}",
            show(&out)
        );
        let live = addr_of(&gates, colour.as_str());
        assert_eq!(
            gate_status(live).map(|s| s.version),
            Some(tag.to_owned()),
            "{name}: release {tag}"
        );
    }
    assert_eq!(hooks.calls(), ["green", "blue", "green", "blue"]);
}
