use std::fs;
use std::time::Duration;

use bg_state::conformance::run_all;
use bg_state::{
    AppName, Colour, ColourStore, DeployPhase, DeployRecord, Error, FileStore, InitRequest,
    LiveVersion, SwitchRequest,
};

use super::{HISTORY_CAP, config, shared};

fn store(path: &std::path::Path) -> FileStore {
    FileStore::with_options(path, HISTORY_CAP, Duration::from_millis(20)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_with_several_instances_on_one_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    // Separate instances open the lock file separately, so each operation
    // excludes the others exactly as separate processes would.
    let stores = [
        shared(store(&path)),
        shared(store(&path)),
        shared(store(&path)),
    ];
    run_all(&stores, &config()).await;
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
}

#[tokio::test]
async fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let app = AppName::new("chat").unwrap();
    let url = format!("file://{}", path.display());
    {
        let s = bg_state::open(&url).unwrap();
        s.init(&app, InitRequest::new(Colour::Blue, "t"))
            .await
            .unwrap();
        s.switch(&app, SwitchRequest::new(Colour::Green, "t"))
            .await
            .unwrap();
    }
    let reopened = bg_state::open(&url)
        .unwrap()
        .get(&app)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((reopened.active, reopened.generation), (Colour::Green, 2));
}

#[tokio::test]
async fn a_corrupt_file_is_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let app = AppName::new("chat").unwrap();
    for garbage in [
        "{ not json",
        "",
        r#"{"format":"something-else/9","apps":{}}"#,
        r#"{"format":"bluegreen-state/1","apps":{"Bad Name":{}}}"#,
        r#"{"format":"bluegreen-state/1","apps":{"chat":{"state":{"app":"chat","active":"purple"}}}}"#,
    ] {
        fs::write(&path, garbage).unwrap();
        let s = store(&path);
        for err in [
            s.get(&app).await.unwrap_err(),
            s.init(&app, InitRequest::new(Colour::Blue, "t").force(true))
                .await
                .unwrap_err(),
            s.switch(&app, SwitchRequest::new(Colour::Blue, "t"))
                .await
                .unwrap_err(),
        ] {
            match &err {
                Error::Corrupt { location, detail } => {
                    assert!(location.ends_with("state.json"), "{location}");
                    assert!(detail.contains("left untouched"), "{detail}");
                }
                other => panic!("{garbage:?}: expected Corrupt, got {other:?}"),
            }
        }
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            garbage,
            "a corrupt file was overwritten"
        );
    }
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let err = FileStore::open("/nonexistent-bluegreen-dir/state.json").unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// A process stopped while holding the lock must not hang everyone else.
#[tokio::test]
async fn a_held_lock_times_out_as_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let s = store(&path);
    let app = AppName::new("chat").unwrap();
    s.init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let holder = fs::File::create(dir.path().join("state.json.lock")).unwrap();
    holder.lock().unwrap();
    let err = s
        .switch(&app, SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("stayed locked"), "{err}");
    holder.unlock().unwrap();
    s.switch(&app, SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
}

/// A state file written before the per-colour live versions existed has
/// none; it still loads, and the colour a switch leaves gets the version its
/// verified deploy record says it served.
#[tokio::test]
async fn a_file_without_live_versions_gets_them_on_a_switch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let app = AppName::new("chat").unwrap();
    let s = store(&path);
    s.init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    for phase in [DeployPhase::Deploying, DeployPhase::Deployed] {
        s.record_deploy(&app, DeployRecord::new(Colour::Green, "v1", phase, "ci"))
            .await
            .unwrap();
    }
    s.switch(&app, SwitchRequest::new(Colour::Green, "ci"))
        .await
        .unwrap();
    drop(s);

    // Green serves v1, as the file's own deploy record says; no live fields.
    let mut doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let state = doc["apps"]["chat"]["state"].as_object_mut().unwrap();
    assert!(state.contains_key("green_live"), "{state:?}");
    state.retain(|k, _| !k.ends_with("_live"));
    fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();

    let s = store(&path);
    let old = s.get(&app).await.unwrap().unwrap();
    assert_eq!(
        (old.active, old.blue_live, old.green_live),
        (Colour::Green, None, None)
    );
    for phase in [DeployPhase::Deploying, DeployPhase::Deployed] {
        s.record_deploy(&app, DeployRecord::new(Colour::Blue, "v2", phase, "ci"))
            .await
            .unwrap();
    }
    let live = |v: &str, rolled_back| {
        Some(LiveVersion {
            version: v.into(),
            rolled_back,
        })
    };
    let now = s
        .switch(&app, SwitchRequest::new(Colour::Blue, "ci"))
        .await
        .unwrap()
        .state;
    assert_eq!(
        (now.blue_live, now.green_live),
        (live("v2", false), live("v1", false))
    );
    let back = s
        .switch(&app, SwitchRequest::new(Colour::Green, "ci").rollback(true))
        .await
        .unwrap()
        .state;
    assert_eq!(
        (back.blue_live.clone(), back.green_live.clone()),
        (live("v2", true), live("v1", false))
    );
    assert_eq!(store(&path).get(&app).await.unwrap().unwrap(), back);
}
