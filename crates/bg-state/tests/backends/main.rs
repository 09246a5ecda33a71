//! Every backend against the conformance suite, plus what only one backend
//! can get wrong: a corrupt file, a paused or killed Redis, the legacy mirror.

mod cluster;
mod file;
mod memory;
mod redis;
mod sentinel;
mod tls;
mod unknown;

use std::sync::Arc;
use std::time::Duration;

use bg_state::ColourStore;
use bg_state::conformance::Config;

/// A small cap keeps the history check quick; short waits keep the suite fast.
const HISTORY_CAP: usize = 20;

fn config() -> Config {
    Config {
        history_cap: HISTORY_CAP,
        notify_within: Duration::from_secs(5),
        ..Config::default()
    }
}

fn shared<S: ColourStore + 'static>(s: S) -> Arc<dyn ColourStore> {
    Arc::new(s)
}

/// The conformance suite on three stores of one Redis URL (a node, a
/// Sentinel set or a cluster), as three processes would share it.
async fn conform_on_redis(url: &str, options: bg_state::RedisOptions) {
    let stores =
        [(); 3].map(|()| shared(bg_state::RedisStore::with_options(url, options.clone()).unwrap()));
    bg_state::conformance::run_all(&stores, &config()).await;
}
