//! The single-host JSON file store.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::engine::{AppRecord, Effect, now_ms};
use crate::error::{Error, Result};
use crate::model::{AppName, Change, Event, Lease, Presence, State};
use crate::store::{
    BreakLease, ColourStore, DEFAULT_HISTORY_CAP, DeployRecord, InitRequest, LeaseRequest,
    Subscription, SwitchOutcome, SwitchRequest,
};

const FORMAT: &str = "bluegreen-state/1";

/// How long an operation waits for another process's lock before it fails
/// with a retryable [`Error::Unavailable`] (a process stopped while holding
/// the lock must not hang every other).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a subscription looks at the file unless told otherwise.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Durable state in one JSON file, for a single host.
///
/// Several processes on the host may share the file: every operation takes
/// an exclusive `flock` on a sibling `<file>.lock`, re-reads the file,
/// applies the change and writes it back by temp file, fsync, rename and a
/// fsync of the directory, so a crash leaves the old or the new file, never a
/// torn one. Changes made by other processes are noticed by polling.
///
/// A file that cannot be understood is reported as [`Error::Corrupt`] and
/// left alone; it is never silently reset.
///
/// Not for network file systems, whose `flock` guarantees vary.
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    lock_path: PathBuf,
    history_cap: usize,
    poll_interval: Duration,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Doc {
    format: String,
    apps: BTreeMap<AppName, AppRecord>,
}

impl FileStore {
    /// A store in the file at `path`, created on first write. Its directory
    /// must exist.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the path has no file name or its directory
    /// does not exist.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        FileStore::with_options(path, DEFAULT_HISTORY_CAP, DEFAULT_POLL_INTERVAL)
    }

    /// As [`FileStore::open`], keeping at most `history_cap` events per app
    /// and polling every `poll_interval` for subscriptions.
    ///
    /// # Errors
    /// As [`FileStore::open`].
    pub fn with_options(
        path: impl Into<PathBuf>,
        history_cap: usize,
        poll_interval: Duration,
    ) -> Result<Self> {
        let path = path.into();
        let Some(name) = path.file_name() else {
            return Err(Error::invalid(
                "url",
                format!("{} does not name a file", path.display()),
            ));
        };
        let dir = parent_dir(&path);
        if !dir.is_dir() {
            return Err(Error::invalid(
                "url",
                format!("directory {} does not exist", dir.display()),
            ));
        }
        let mut lock_name = name.to_owned();
        lock_name.push(".lock");
        Ok(FileStore {
            inner: Arc::new(Inner {
                lock_path: path.with_file_name(lock_name),
                path,
                history_cap: history_cap.max(1),
                poll_interval: poll_interval.max(Duration::from_millis(1)),
            }),
        })
    }

    /// The state file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the app's record under the file lock, writing the file
    /// back if it changed anything.
    async fn with<T: Send + 'static>(
        &self,
        app: &AppName,
        f: impl FnOnce(&mut AppRecord, u64, usize) -> Result<(T, Effect)> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        let app = app.clone();
        blocking(move || {
            let _lock = inner.lock()?;
            let mut doc = inner.load()?;
            let rec = doc.apps.entry(app).or_default();
            let (value, effect) = f(rec, now_ms(), inner.history_cap)?;
            if effect != Effect::None {
                inner.save(&doc)?;
            }
            Ok(value)
        })
        .await
    }

    async fn read<T: Send + 'static>(
        &self,
        app: &AppName,
        f: impl FnOnce(&AppRecord, u64) -> T + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        let app = app.clone();
        blocking(move || {
            let _lock = inner.lock()?;
            let doc = inner.load()?;
            let now = now_ms();
            Ok(match doc.apps.get(&app) {
                Some(rec) => f(rec, now),
                None => f(&AppRecord::default(), now),
            })
        })
        .await
    }
}

impl Inner {
    fn io_error(&self, what: &str, path: &Path, e: &io::Error) -> Error {
        Error::Unavailable {
            backend: "file",
            message: format!("{what} {}: {e}", path.display()),
            retryable: matches!(
                e.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }

    fn lock(&self) -> Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| self.io_error("cannot open lock file", &self.lock_path, &e))?;
        let deadline = std::time::Instant::now() + LOCK_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::Unavailable {
                        backend: "file",
                        message: format!(
                            "{} stayed locked by another process for {LOCK_TIMEOUT:?}",
                            self.lock_path.display()
                        ),
                        retryable: true,
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(self.io_error("cannot lock", &self.lock_path, &e));
                }
            }
        }
    }

    fn load(&self) -> Result<Doc> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Doc {
                    format: FORMAT.to_owned(),
                    apps: BTreeMap::new(),
                });
            }
            Err(e) => return Err(self.io_error("cannot read", &self.path, &e)),
        };
        let doc: Doc = serde_json::from_slice(&bytes).map_err(|e| {
            Error::corrupt(
                self.path.display().to_string(),
                format!("not a bluegreen state file ({e}); left untouched"),
            )
        })?;
        if doc.format != FORMAT {
            return Err(Error::corrupt(
                self.path.display().to_string(),
                format!("format {:?} is not {FORMAT:?}; left untouched", doc.format),
            ));
        }
        for (app, rec) in &doc.apps {
            if let Some(state) = &rec.state
                && (state.app != *app || state.generation == 0)
            {
                return Err(Error::corrupt(
                    self.path.display().to_string(),
                    format!("the state of app {app} is inconsistent; left untouched"),
                ));
            }
        }
        Ok(doc)
    }

    fn save(&self, doc: &Doc) -> Result<()> {
        let dir = parent_dir(&self.path);
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_owned();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = self.path.with_file_name(tmp_name);
        let json = serde_json::to_vec_pretty(doc).map_err(|e| Error::Unavailable {
            backend: "file",
            message: format!("cannot encode state: {e}"),
            retryable: false,
        })?;
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io_error("cannot write", &self.path, &e)
        })
    }

    /// The app's state as it is on disk, read without the lock: a rename is
    /// atomic, so the file is always whole.
    fn peek(&self, app: &AppName) -> Result<Option<State>> {
        Ok(self.load()?.apps.remove(app).and_then(|r| r.state))
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(Error::Unavailable {
            backend: "file",
            message: format!("file operation did not complete: {e}"),
            retryable: false,
        })
    })
}

#[async_trait]
impl ColourStore for FileStore {
    fn backend(&self) -> &'static str {
        "file"
    }

    async fn get(&self, app: &AppName) -> Result<Option<State>> {
        self.read(app, |r, _| r.get()).await
    }

    async fn init(&self, app: &AppName, req: InitRequest) -> Result<State> {
        let a = app.clone();
        self.with(app, move |r, now, cap| r.init(&a, &req, now, cap))
            .await
    }

    async fn switch(&self, app: &AppName, req: SwitchRequest) -> Result<SwitchOutcome> {
        let a = app.clone();
        self.with(app, move |r, now, cap| r.switch(&a, &req, now, cap))
            .await
    }

    async fn record_deploy(&self, app: &AppName, rec: DeployRecord) -> Result<State> {
        let a = app.clone();
        self.with(app, move |r, now, cap| r.record_deploy(&a, &rec, now, cap))
            .await
    }

    async fn history(&self, app: &AppName, limit: usize) -> Result<Vec<Event>> {
        self.read(app, move |r, _| r.history(limit)).await
    }

    async fn acquire_lease(&self, app: &AppName, req: LeaseRequest) -> Result<Lease> {
        let a = app.clone();
        let drawn = crate::fence::draw("file")?;
        self.with(app, move |r, now, _| r.acquire_lease(&a, &req, now, drawn))
            .await
    }

    async fn renew_lease(&self, app: &AppName, fence: u64, ttl: Duration) -> Result<Lease> {
        let a = app.clone();
        self.with(app, move |r, now, _| r.renew_lease(&a, fence, ttl, now))
            .await
    }

    async fn release_lease(&self, app: &AppName, fence: u64) -> Result<bool> {
        self.with(app, move |r, now, _| Ok(r.release_lease(fence, now)))
            .await
    }

    async fn lease(&self, app: &AppName) -> Result<Option<Lease>> {
        self.read(app, |r, now| r.lease(now)).await
    }

    async fn break_lease(&self, app: &AppName, req: BreakLease) -> Result<Option<Lease>> {
        self.with(app, move |r, now, cap| r.break_lease(&req, now, cap))
            .await
    }

    async fn report_presence(
        &self,
        app: &AppName,
        presence: Presence,
        ttl: Duration,
    ) -> Result<()> {
        self.with(app, move |r, now, _| r.report_presence(presence, ttl, now))
            .await
    }

    async fn presences(&self, app: &AppName) -> Result<Vec<Presence>> {
        self.read(app, |r, now| r.presences(now)).await
    }

    async fn subscribe(&self, app: &AppName) -> Result<Subscription> {
        let (tx, rx) = mpsc::channel(16);
        let inner = Arc::clone(&self.inner);
        let app = app.clone();
        let mut last = {
            let (inner, app) = (Arc::clone(&inner), app.clone());
            blocking(move || inner.peek(&app)).await.ok().flatten()
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(inner.poll_interval) => {}
                }
                let seen = {
                    let (inner, app) = (Arc::clone(&inner), app.clone());
                    match blocking(move || inner.peek(&app)).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(error = %e, "polling the state file failed");
                            continue;
                        }
                    }
                };
                if seen != last {
                    let change = Change {
                        app: app.clone(),
                        generation: seen.as_ref().map(|s| s.generation),
                    };
                    last = seen;
                    if tx.send(change).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Subscription::from_channel(rx))
    }
}
