//! A test helper process: switches an app back and forth with
//! compare-and-swap and prints every generation it won, one per line.
//!
//! `bg-cas-writer STORE_URL APP ROUNDS NAME`

use std::process::ExitCode;

use bg_state::{AppName, Error, SwitchRequest};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, app, rounds, name] = args.as_slice() else {
        eprintln!("usage: bg-cas-writer STORE_URL APP ROUNDS NAME");
        return ExitCode::from(2);
    };
    let (Ok(app), Ok(rounds)) = (AppName::new(app.as_str()), rounds.parse::<usize>()) else {
        eprintln!("bad APP or ROUNDS");
        return ExitCode::from(2);
    };
    let store = match bg_state::open(url) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    for _ in 0..rounds {
        let result = async {
            let seen = store
                .get(&app)
                .await?
                .ok_or(Error::NotInitialised { app: app.clone() })?;
            let req =
                SwitchRequest::new(seen.idle(), name.as_str()).expect_generation(seen.generation);
            store.switch(&app, req).await
        }
        .await;
        match result {
            Ok(out) => println!("{}", out.state.generation),
            Err(Error::Conflict { .. }) => {}
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
