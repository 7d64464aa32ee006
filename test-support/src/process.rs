//! Processes a test runs: a command to its end ([`run`]), or the operator in the background
//! ([`OperatorProcess`]), stopped as Kubernetes stops a pod: SIGTERM, then SIGKILL.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// SIGTERM, then this long for a graceful stop, then SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs a command; stdout on success, the command line, stderr and stdout on failure.
pub fn run(cmd: Command) -> Result<String, String> {
    run_with_input(cmd, None)
}

/// [`run`] with `input` on the command's stdin (none: it reads nothing).
pub fn run_with_input(mut cmd: Command, input: Option<&str>) -> Result<String, String> {
    let line = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {line}: {e}"))?;
    if let Some(input) = input {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("writing the stdin of {line}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {line}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{line} failed ({}):\n{}{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The operator (or another program in its place) as a process, its output in a log file;
/// stopped when dropped.
pub struct OperatorProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl OperatorProcess {
    /// Starts `program` with nothing of the test's environment (no KUBECONFIG, in-cluster
    /// variables, RUST_LOG...) but `PATH`, `HOME`, `KUBECONFIG=kubeconfig` and `env` (in that
    /// order: `env` wins), stdout and stderr to `log`.
    pub fn start<K, V>(
        program: &str,
        args: &[String],
        kubeconfig: &Path,
        env: impl IntoIterator<Item = (K, V)>,
        log: PathBuf,
    ) -> OperatorProcess
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let file = fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let child = Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log file handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        OperatorProcess {
            child: Some(child),
            log,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, under a header naming the file: what a failing test
    /// prints.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        format!(
            "===== {} (last {} of {} lines)\n{}\n",
            self.log.display(),
            tail.len(),
            all.len(),
            tail.join("\n")
        )
    }

    /// SIGTERM, up to 10 s to exit, then SIGKILL. `None` when it was already stopped.
    pub fn stop(&mut self) -> Option<(ExitStatus, Duration)> {
        let mut child = self.child.take()?;
        let started = Instant::now();
        if let Ok(Some(status)) = child.try_wait() {
            return Some((status, Duration::ZERO));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        while started.elapsed() < STOP_GRACE {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let status = child.wait().expect("wait for the killed operator");
        Some((status, started.elapsed()))
    }

    /// SIGKILL, as a crash or a lost node would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`-STOP`, `-CONT`, ...) to the running process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the operator is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// How it exited, if it has (it is then no longer stopped when dropped); `None` while it
    /// runs or once it was stopped.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self
            .child
            .as_mut()?
            .try_wait()
            .expect("wait for the operator")?;
        self.child = None;
        Some(status)
    }

    /// Whether it was started and not yet stopped, killed or seen to exit.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
