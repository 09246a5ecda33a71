//! The local cache of the last adopted state, for a restart during an outage.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use bg_state::{AppName, State};
use serde::{Deserialize, Serialize};

const FORMAT: &str = "bluegreen-gate-cache/1";

#[derive(Serialize, Deserialize)]
struct Cache {
    format: String,
    state: State,
}

/// The cached state of `app`, `None` if there is no cache file.
pub(super) fn load(path: &Path, app: &AppName) -> Result<Option<State>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let cache: Cache = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a gate cache: {e}", path.display()))?;
    if cache.format != FORMAT {
        return Err(format!(
            "{} has format {:?}, not {FORMAT:?}",
            path.display(),
            cache.format
        ));
    }
    if cache.state.app != *app {
        return Err(format!(
            "{} holds the state of app {}, not {app}",
            path.display(),
            cache.state.app
        ));
    }
    Ok(Some(cache.state))
}

/// Writes `state` atomically: a temporary file created exclusively, fsync,
/// rename.
pub(super) fn save(path: &Path, state: &State) -> std::io::Result<()> {
    let cache = Cache {
        format: FORMAT.to_owned(),
        state: state.clone(),
    };
    let json = serde_json::to_vec_pretty(&cache).map_err(std::io::Error::other)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    // Created, never opened: a file or symlink planted at the temporary
    // name is removed (the link, not its target) and the name made anew.
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
    };
    let mut f = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&tmp)?;
            create()?
        }
        other => other?,
    };
    f.write_all(&json)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_planted_symlink_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let mut tmp_name = path.file_name().unwrap().to_owned();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, path.with_file_name(tmp_name)).unwrap();

        let app = AppName::new("chat").unwrap();
        let store = bg_state::open("memory://").unwrap();
        let state = store
            .init(
                &app,
                bg_state::InitRequest::new(bg_state::Colour::Blue, "t"),
            )
            .await
            .unwrap();
        save(&path, &state).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(load(&path, &app).unwrap().unwrap().generation, 1);
    }
}
