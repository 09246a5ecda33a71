//! Starting a deploy (a webhook or a command) and running checks
//! (`--smoke`, `--verify`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bg_state::Colour;

use crate::error::{CheckFailed, CtlError, CtlResult, Timeout};

/// Starts the deploy of a version to a colour.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Trigger: Send + Sync {
    /// Asks for `version` on `colour`. Success means "asked", not "done":
    /// the deploy sequence waits for the gates to report the version.
    async fn deploy(&self, colour: Colour, version: &str) -> CtlResult<()>;
}

/// Runs a check command; success is exit status 0.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Checks: Send + Sync {
    /// Runs `cmd` (through `sh -c`) with `env` added, bounded by `timeout`.
    async fn run(&self, cmd: &str, env: Vec<(String, String)>, timeout: Duration) -> CtlResult<()>;
}

/// Per-colour webhooks, e.g. Portainer's service webhooks.
#[derive(Clone)]
pub struct Webhooks {
    urls: BTreeMap<Colour, String>,
    tag_param: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("colours", &self.urls.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A webhook URL as it may be printed: its path and query are secrets
/// (Portainer's is `/api/webhooks/<token>`), so only the host shows.
#[must_use]
pub fn redact_webhook(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "<unparseable URL>".into(),
    }
}

impl Webhooks {
    /// Webhooks by colour; with `tag_param`, the version is sent as that
    /// query parameter (`tag` for Portainer).
    ///
    /// # Errors
    /// [`CtlError::Usage`] for a URL that is not http(s).
    pub fn new(
        urls: BTreeMap<Colour, String>,
        tag_param: Option<String>,
        timeout: Duration,
    ) -> CtlResult<Self> {
        for (colour, url) in &urls {
            let ok = url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err(CtlError::Usage(format!(
                    "the {colour} webhook {} is not an http(s) URL",
                    redact_webhook(url)
                )));
            }
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| CtlError::Failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(Webhooks {
            urls,
            tag_param,
            client,
        })
    }
}

#[async_trait]
impl Trigger for Webhooks {
    async fn deploy(&self, colour: Colour, version: &str) -> CtlResult<()> {
        let Some(url) = self.urls.get(&colour) else {
            return Err(CtlError::Usage(format!(
                "no webhook for {colour}: set --webhook-{colour} (BG_WEBHOOK_{})",
                colour.as_str().to_uppercase()
            )));
        };
        let mut target = url::Url::parse(url)
            .map_err(|_| CtlError::Usage(format!("the {colour} webhook is not a URL")))?;
        if let Some(param) = &self.tag_param {
            target.query_pairs_mut().append_pair(param, version);
        }
        let shown = redact_webhook(url);
        let res =
            self.client.post(target).send().await.map_err(|e| {
                CtlError::Unreachable(format!("webhook {shown}: {}", e.without_url()))
            })?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(CtlError::Failed(format!(
                "webhook {shown} answered {}",
                res.status()
            )))
        }
    }
}

/// A command that deploys: `sh -c CMD` with `BG_COLOUR` and `BG_VERSION`.
#[derive(Debug, Clone)]
pub struct ExecTrigger {
    /// The command.
    pub cmd: String,
    /// Bound on its run.
    pub timeout: Duration,
}

#[async_trait]
impl Trigger for ExecTrigger {
    async fn deploy(&self, colour: Colour, version: &str) -> CtlResult<()> {
        let env = vec![
            ("BG_COLOUR".to_owned(), colour.to_string()),
            ("BG_VERSION".to_owned(), version.to_owned()),
        ];
        ShellChecks
            .run(&self.cmd, env, self.timeout)
            .await
            .map_err(|e| match e {
                CtlError::Check(source) => CtlError::ExecDeploy {
                    version: version.to_owned(),
                    colour,
                    source,
                },
                other => other,
            })
    }
}

/// Checks run with `sh -c`, each in a process group of its own: on a
/// timeout, or when bg-ctl stops waiting for it, the whole group is
/// killed, so a child the command started (a `curl` left hanging, a
/// `docker compose` it forked) does not outlive it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShellChecks;

#[async_trait]
impl Checks for ShellChecks {
    async fn run(&self, cmd: &str, env: Vec<(String, String)>, timeout: Duration) -> CtlResult<()> {
        let mut child = tokio::process::Command::new("sh");
        child.arg("-c").arg(cmd).envs(env).kill_on_drop(true);
        #[cfg(unix)]
        child.process_group(0);
        // Its output goes to ours (stderr), where CI logs show it; stdout
        // stays clean for --json.
        child.stdout(std::process::Stdio::from(std::io::stderr()));
        let mut child = match child.spawn() {
            Ok(child) => child,
            Err(source) => return Err(CheckFailed::Spawn { source }.into()),
        };
        let mut group = Group(child.id());
        let waited = tokio::time::timeout(timeout, child.wait()).await;
        match waited {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => return Err(CheckFailed::Exit { status }.into()),
            Ok(Err(source)) => return Err(CheckFailed::Wait { source }.into()),
            Err(_) => {
                drop(group); // the whole group, now
                let _ = child.wait().await;
                return Err(CtlError::Timeout(Timeout::Command { after: timeout }));
            }
        }
        // Ended by itself: what it left running in the background is its own.
        group.0 = None;
        Ok(())
    }
}

/// A command's process group, killed when this is dropped: on a timeout,
/// or when the future waiting for the command is dropped.
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pid) = self
            .0
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            // Already gone is fine: nothing is left to stop.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_never_show_their_token() {
        let shown =
            redact_webhook("https://portainer.internal:9443/api/webhooks/0b6c9f1e-secret?tag=x");
        assert_eq!(shown, "https://portainer.internal:9443/…");
    }

    #[tokio::test]
    async fn commands_see_their_environment_and_fail_clearly() {
        let env = vec![("BG_VERSION".to_owned(), "v7".to_owned())];
        ShellChecks
            .run(
                "test \"$BG_VERSION\" = v7",
                env.clone(),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let err = ShellChecks
            .run("exit 3", env.clone(), Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(err, CtlError::Check(CheckFailed::Exit { ref status, .. }) if status.code() == Some(3)),
            "{err:?}"
        );
        let err = ShellChecks
            .run("sleep 5", env, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            matches!(err, CtlError::Timeout(Timeout::Command { .. })),
            "{err:?}"
        );
    }

    /// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
    #[cfg(target_os = "linux")]
    fn ended(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    #[cfg(target_os = "linux")] // reads /proc
    #[tokio::test]
    async fn a_deploy_command_that_hangs_is_stopped_with_its_children_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let cmd = format!(
            "sleep 30 & echo $! > {}; curl_token=hunter2-secret wait",
            pidfile.display()
        );
        // Long enough for a loaded machine to start both and write the pid.
        let exec = ExecTrigger {
            cmd,
            timeout: Duration::from_secs(3),
        };
        let err = exec.deploy(Colour::Green, "v2").await.unwrap_err();
        assert!(
            matches!(err, CtlError::Timeout(Timeout::Command { .. })),
            "{err:?}"
        );
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let pid = pid.trim();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !ended(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the command's child {pid} still runs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let shown = err.to_string();
        assert!(
            !shown.contains("hunter2") && !shown.contains("sleep"),
            "the command line is shown: {shown}"
        );
    }

    #[tokio::test]
    async fn a_failed_command_is_never_shown() {
        let err = ShellChecks
            .run(
                "curl -fsS https://user:hunter2@example.invalid/ >/dev/null 2>&1; exit 22",
                vec![],
                Duration::from_secs(10),
            )
            .await
            .unwrap_err();
        let shown = err.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("22"), "{shown}");
    }
}
