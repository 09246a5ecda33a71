//! A real open-source nginx with the project's example configuration
//! (`docs/examples/nginx.conf`) under a temporary prefix, pointed at the
//! live colour by the example script (`docs/examples/nginx-on-change.sh`),
//! as `docs/operations.md` tells users to run them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{examples, wait_for_port};

/// How to run nginx: Debian puts it in /usr/sbin, which not every PATH has.
///
/// # Panics
/// If nginx is not installed (the README's test command installs it).
#[must_use]
pub fn bin() -> String {
    if Command::new("nginx").arg("-v").output().is_ok() {
        "nginx".to_owned()
    } else if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx".to_owned()
    } else {
        panic!(
            "nginx is not installed; the README's test command installs it (apt-get install -y nginx)"
        )
    }
}

/// Quotes a path for `sh`.
///
/// # Panics
/// If the path holds a single quote (temporary paths do not).
#[must_use]
pub fn quoted(path: &Path) -> String {
    let s = path.to_str().expect("a UTF-8 path");
    assert!(!s.contains('\''), "{s}");
    format!("'{s}'")
}

/// A prefix holding the example configuration, listening on `listen`
/// instead of the example's port: what the operations guide's prefix
/// install sets up (`conf/nginx.conf` and a `logs/` directory).
#[derive(Debug)]
pub struct Prefix {
    dir: tempfile::TempDir,
    /// Where nginx will listen.
    pub listen: SocketAddr,
}

impl Prefix {
    /// The example configuration under a new prefix.
    ///
    /// # Panics
    /// If the example does not listen exactly once, or the files cannot be
    /// written.
    #[must_use]
    pub fn new(listen: SocketAddr) -> Prefix {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Workers drop root for nobody; they must reach their temp paths.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod the prefix");
        std::fs::create_dir(dir.path().join("conf")).expect("mkdir conf");
        std::fs::create_dir(dir.path().join("logs")).expect("mkdir logs");
        let example =
            std::fs::read_to_string(examples().join("nginx.conf")).expect("the example nginx.conf");
        let mut listens = 0;
        let conf: String = example
            .lines()
            .map(|line| {
                if line.trim_start().starts_with("listen ") {
                    listens += 1;
                    format!("        listen {listen};\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        assert_eq!(listens, 1, "the example should listen once");
        let prefix = Prefix { dir, listen };
        std::fs::write(prefix.conf(), conf).expect("write nginx.conf");
        prefix
    }

    /// The prefix, with the trailing slash nginx's `-p` wants.
    #[must_use]
    pub fn path(&self) -> String {
        format!("{}/", self.dir.path().display())
    }

    /// `conf/nginx.conf` under the prefix.
    #[must_use]
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("conf/nginx.conf")
    }

    /// The upstream file the example script writes, beside the configuration.
    #[must_use]
    pub fn live_file(&self) -> PathBuf {
        self.dir.path().join("conf/bg-live.conf")
    }

    /// The variables the example script needs for this prefix install, as
    /// `docs/operations.md` lists them, for the colours at `blue` and `green`.
    #[must_use]
    pub fn script_env(&self, blue: SocketAddr, green: SocketAddr) -> Vec<(String, String)> {
        vec![
            ("NGINX_BIN".into(), bin()),
            ("NGINX_PREFIX".into(), self.path()),
            ("NGINX_CONF".into(), self.conf().display().to_string()),
            ("NGINX_BLUE".into(), blue.to_string()),
            ("NGINX_GREEN".into(), green.to_string()),
        ]
    }

    /// The `--on-change` command of the operations guide for this prefix:
    /// the script's variables, then `sh nginx-on-change.sh`.
    #[must_use]
    pub fn on_change(&self, blue: SocketAddr, green: SocketAddr) -> String {
        let vars: Vec<String> = self
            .script_env(blue, green)
            .into_iter()
            .map(|(k, v)| format!("{k}={}", quoted(Path::new(&v))))
            .collect();
        format!(
            "{} sh {}",
            vars.join(" "),
            quoted(&examples().join("nginx-on-change.sh"))
        )
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(name)).unwrap_or_default()
    }
}

/// This test's own nginx, in the foreground under its [`Prefix`]; stopped
/// on drop, its logs printed if the test failed.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    /// Its prefix.
    pub prefix: Prefix,
}

impl Nginx {
    /// Starts nginx on `prefix` and waits until it listens.
    ///
    /// # Panics
    /// If it cannot be started or does not listen within 10 s.
    #[must_use]
    pub fn start(prefix: Prefix) -> Nginx {
        let stderr = std::fs::File::create(prefix.dir.path().join("logs/stderr.log"))
            .expect("create the stderr log");
        let child = Command::new(bin())
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(prefix.conf())
            .arg("-e")
            .arg(prefix.dir.path().join("logs/error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nginx: {e}"));
        let listen = prefix.listen;
        let nginx = Nginx { child, prefix };
        wait_for_port(listen, Duration::from_secs(10));
        nginx
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.prefix.listen
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM lets the master stop its workers; KILL would leave them behind.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- nginx error log ---\n{}{}--- end of log ---",
                self.prefix.log("error.log"),
                self.prefix.log("stderr.log")
            );
        }
    }
}
