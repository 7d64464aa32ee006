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
        match check().await {
            Ok(value) => return value,
            Err(last) => give_up_when_late(what, timeout, started, &last),
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
            Err(last) => give_up_when_late(what, timeout, started, &last),
        }
        std::thread::sleep(EVERY);
    }
}

/// Fails the test once `timeout` has passed since `started`, with what the last check said.
fn give_up_when_late(what: &str, timeout: Duration, started: Instant, last: &str) {
    if started.elapsed() > timeout {
        panic!("timed out after {timeout:?} waiting for {what}; last check: {last}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_returns_what_the_check_found_and_fails_with_its_last_answer() {
        let mut tries = 0;
        let found = wait_for_blocking("the third try", Duration::from_secs(5), || {
            tries += 1;
            (tries == 3).then_some(tries).ok_or(format!("try {tries}"))
        });
        assert_eq!(found, 3);

        let late = std::panic::catch_unwind(|| {
            wait_for_blocking("nothing", Duration::from_millis(1), || {
                Err::<(), _>("no".to_string())
            })
        })
        .unwrap_err();
        let message = late.downcast_ref::<String>().unwrap();
        assert_eq!(
            message,
            "timed out after 1ms waiting for nothing; last check: no"
        );
    }
}
