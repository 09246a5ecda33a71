//! A test helper process: switches an app back and forth with
//! compare-and-swap, in lock step with the other writers.
//!
//! `bg-cas-writer STORE_URL APP ROUNDS NAME`
//!
//! Each round it reads the state and prints `read GENERATION`, waits for a
//! line on stdin (the signal that every writer has read), switches to the
//! idle colour expecting that generation, and prints `won GENERATION` or
//! `conflict`. It stops when stdin closes.

use std::io::{BufRead, Write};
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
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut go = String::new();
    for _ in 0..rounds {
        let seen = match store.get(&app).await {
            Ok(Some(seen)) => seen,
            Ok(None) => {
                eprintln!("{name}: {app} is not initialised");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let _ = writeln!(stdout, "read {}", seen.generation);
        let _ = stdout.flush();
        go.clear();
        if stdin.read_line(&mut go).map_or(true, |n| n == 0) {
            return ExitCode::SUCCESS;
        }
        let req = SwitchRequest::new(seen.idle(), name.as_str()).expect_generation(seen.generation);
        match store.switch(&app, req).await {
            Ok(out) => {
                let _ = writeln!(stdout, "won {}", out.state.generation);
            }
            Err(Error::Conflict { .. }) => {
                let _ = writeln!(stdout, "conflict");
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::FAILURE;
            }
        }
        let _ = stdout.flush();
    }
    ExitCode::SUCCESS
}
