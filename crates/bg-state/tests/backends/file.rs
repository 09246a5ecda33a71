use std::fs;
use std::time::Duration;

use bg_state::conformance::run_all;
use bg_state::{AppName, Colour, ColourStore, Error, FileStore, InitRequest, SwitchRequest};

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
