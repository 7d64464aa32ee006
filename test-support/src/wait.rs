//! Bounded polling: every wait names what it waits for and fails the test with the last answer.

use std::time::{Duration, Instant};

/// How often a check runs.
const EVERY: Duration = Duration::from_millis(250);

/// Polls `check` every 250 ms until it returns `Ok`, failing the test after `timeout` with what
/// the last check said.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(e) => e,
        };
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last check: {last}");
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// [`wait_for`] for a test without a runtime: the thread sleeps between checks.
pub fn wait_for_blocking<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if started.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last check: {last}")
            }
            Err(_) => std::thread::sleep(EVERY),
        }
    }
}
