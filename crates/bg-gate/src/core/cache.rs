//! The local cache of the last adopted state, for a restart during an outage.

use std::io::Write;
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
pub(crate) fn load(path: &Path, app: &AppName) -> Result<Option<State>, String> {
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

/// Writes `state` atomically: temp file, fsync, rename.
pub(crate) fn save(path: &Path, state: &State) -> std::io::Result<()> {
    let cache = Cache {
        format: FORMAT.to_owned(),
        state: state.clone(),
    };
    let json = serde_json::to_vec_pretty(&cache).map_err(std::io::Error::other)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
