//! The panic hook end to end: a child process (this test binary, run again for one test) installs
//! the operator's panic hook and panics with a seeded secret in its message; its stderr must say
//! where it panicked and that the message was withheld, and never show the secret.
//!
//! The operator binary cannot be made to panic on demand, so the child is this binary: the test
//! `child_installs_the_hook_and_panics_with_a_secret` does nothing unless `OPSYNC_PANIC_CHILD`
//! is set, which only the parent tests do.

use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use onepassword_secrets_operator::telemetry::{
    self, LogFormat, PANIC_MESSAGE_WITHHELD, install_panic_hook,
};

/// How the child should panic: `format`, `expect` or `json` (a formatted panic after JSON
/// logging is initialised).
const CHILD_ENV: &str = "OPSYNC_PANIC_CHILD";
/// The secret the child puts in its panic message.
const SECRET_ENV: &str = "OPSYNC_PANIC_SECRET";
const CHILD_TEST: &str = "child_installs_the_hook_and_panics_with_a_secret";

/// A value that cannot be in the output by chance: different on each run.
fn seeded_secret() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("opsync-FAKE-secret-{}-{nanos:x}", std::process::id())
}

fn run_child(mode: &str, secret: &str) -> Output {
    let exe = std::env::current_exe().expect("the test binary's path");
    Command::new(exe)
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env(SECRET_ENV, secret)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the child runs")
}

/// Runs the child and checks what every mode must give; returns its stderr.
fn panic_output(mode: &str) -> String {
    let secret = seeded_secret();
    let out = run_child(mode, &secret);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the child did not fail:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(CHILD_TEST),
        "the child did not run its test:\n{stdout}"
    );
    assert!(
        !stderr.contains(&secret) && !stdout.contains(&secret),
        "the secret leaked:\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains(PANIC_MESSAGE_WITHHELD),
        "no withheld marker:\n{stderr}"
    );
    assert!(
        stderr.contains("tests/panic_leak.rs:"),
        "no location:\n{stderr}"
    );
    stderr.into_owned()
}

#[test]
fn a_formatted_panic_message_with_a_secret_is_withheld() {
    let stderr = panic_output("format");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(PANIC_MESSAGE_WITHHELD))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("panicked at tests/panic_leak.rs:"),
        "{stderr}"
    );
}

#[test]
fn an_expect_on_an_error_holding_a_secret_is_withheld() {
    panic_output("expect");
}

#[test]
fn with_json_logs_the_report_is_a_json_line_without_the_secret() {
    let stderr = panic_output("json");
    let line = stderr
        .lines()
        .find(|l| l.contains(PANIC_MESSAGE_WITHHELD))
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(line).expect(line);
    assert_eq!(json["level"], "ERROR");
    assert_eq!(json["fields"]["panic"], PANIC_MESSAGE_WITHHELD);
    let location = json["fields"]["location"].as_str().unwrap();
    assert!(location.starts_with("tests/panic_leak.rs:"), "{line}");
}

/// The child: a no-op in a normal run.
#[test]
fn child_installs_the_hook_and_panics_with_a_secret() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let secret = std::env::var(SECRET_ENV).expect("the parent passes the secret");
    if mode == "json" {
        telemetry::init_logging(LogFormat::Json, "info").expect("logging starts");
    }
    install_panic_hook();
    match mode.as_str() {
        "format" | "json" => panic!("the token {secret} was refused"),
        "expect" => {
            // An error whose `Debug` holds the secret, as a failed parse of a token might.
            let token: Result<(), String> = std::hint::black_box(Err(secret));
            token.expect("the token is valid");
        }
        other => panic!("unknown {CHILD_ENV} mode {other:?}"),
    }
}
