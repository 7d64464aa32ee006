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

/// Runs the operator binary with `host` as `OP_CONNECT_HOST` and a kubeconfig whose API server
/// does not answer, until it has logged `until` (every needle) or exited; returns what it wrote.
fn operator_output_with_connect_host(host: &str, until: &[&str]) -> String {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n\
         clusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
         users: [{name: u, user: {token: not-a-real-token}}]\n\
         contexts: [{name: x, context: {cluster: c, user: u}}]\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_onepassword-operator"))
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("OP_CONNECT_HOST", host)
        .env("OP_CONNECT_TOKEN", "tok")
        .env("WATCH_NAMESPACE", "default")
        .env("METRICS_BIND_ADDRESS", "0")
        .env("HEALTH_PROBE_BIND_ADDRESS", "0")
        .env("LOG_LEVEL", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the operator");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut output = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !until.iter().all(|n| output.contains(n)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                output.push_str(&line);
                output.push('\n');
            }
            // Exited (stderr closed) or out of time: what it said so far is the answer.
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    output
}

#[test]
fn credentials_in_op_connect_host_never_reach_the_log() {
    let secret = seeded_secret();
    let output = operator_output_with_connect_host(
        &format!("http://opuser:{secret}@127.0.0.1:1"),
        &["starting", "heartbeat"],
    );
    assert!(
        output.contains("starting") && output.contains("heartbeat"),
        "{output}"
    );
    assert!(output.contains("<redacted>@127.0.0.1:1"), "{output}");
    assert!(
        !output.contains(&secret) && !output.contains("opuser"),
        "{output}"
    );
    // A host that is refused is named in the error, without its credentials.
    let output = operator_output_with_connect_host(
        &format!("http://opuser:{secret}@127.0.0.1:port"),
        &["OP_CONNECT_HOST"],
    );
    assert!(output.contains("<redacted>@127.0.0.1:port"), "{output}");
    assert!(
        !output.contains(&secret) && !output.contains("opuser"),
        "{output}"
    );
}
