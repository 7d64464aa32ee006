//! Command-line flags and environment variables, named as the official operator names them.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;

use crate::{controller::Namespaces, telemetry::LogFormat};

/// Syncs 1Password items, read through 1Password Connect, into Kubernetes Secrets.
///
/// Connect is configured by `OP_CONNECT_HOST` and `OP_CONNECT_TOKEN` (or `OP_CONNECT_TOKEN_FILE`,
/// a file holding the token), plus `OP_CONNECT_CA_FILE` for a Connect server behind TLS with a
/// private CA.
#[derive(Clone, Debug, Parser)]
#[command(name = "onepassword-operator", version)]
pub struct Args {
    /// Namespaces to watch, comma separated; empty or unset: all namespaces.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Seconds between two polls of 1Password for changed items (`30`, or `30s`, `10m`, `1h`):
    /// the longest a change waits when the change check is off; every tenth poll interval the
    /// vault in use listed longest ago is listed again, whatever its `contentVersion` says.
    #[arg(long, env = "POLLING_INTERVAL", default_value = "600", value_parser = parse_interval)]
    pub polling_interval: Duration,

    /// The shortest gap in seconds between two change checks (one `GET /v1/vaults`; a vault
    /// whose contentVersion moved has its items listed at once): checks cut the polling
    /// interval into equal parts no shorter than this. `0` turns it off: one check per polling
    /// interval. Longer than the polling interval means the polling interval.
    #[arg(long, env = "CHANGE_CHECK_INTERVAL", default_value = "6",
          value_parser = parse_interval_or_off)]
    pub change_check_interval: Duration,

    /// Restart workloads that use a Secret whose data changed, unless an annotation says
    /// otherwise (`true`/`false`).
    #[arg(long, env = "AUTO_RESTART", default_value = "false", value_parser = parse_go_bool)]
    pub auto_restart: bool,

    /// Seconds a changed Secret must stay unchanged before the workloads that use it restart:
    /// changes made close together restart once (`0`: off).
    #[arg(long, env = "RESTART_DEBOUNCE", default_value = "10", value_parser = parse_interval_or_off)]
    pub restart_debounce: Duration,

    /// Workloads restarted by the operator that may be rolling at once in the cluster; the
    /// others wait their turn (`0`: no limit).
    #[arg(long, env = "RESTART_BUDGET", default_value = "10")]
    pub restart_budget: usize,

    /// The same, in one namespace (`0`: no limit).
    #[arg(long, env = "RESTART_BUDGET_PER_NAMESPACE", default_value = "3")]
    pub restart_budget_per_namespace: usize,

    /// A restarted workload whose rollout is not done after this long counts as failed, as a
    /// Deployment past its progress deadline does: other restarts for the same change stop.
    #[arg(long, env = "RESTART_ROLLOUT_TIMEOUT", default_value = "600", value_parser = parse_interval)]
    pub restart_rollout_timeout: Duration,

    /// A Secret that changes more than this many times within `RESTART_BREAKER_PERIOD` stops
    /// restarting workloads until it has been stable for that period (`0`: off).
    #[arg(long, env = "RESTART_BREAKER_CHANGES", default_value = "5")]
    pub restart_breaker_changes: usize,

    /// The circuit breaker's period (seconds, or `10m`...).
    #[arg(long, env = "RESTART_BREAKER_PERIOD", default_value = "600", value_parser = parse_interval)]
    pub restart_breaker_period: Duration,

    /// Keep fields with empty values as empty keys instead of leaving them out.
    #[arg(long, env = "ALLOW_EMPTY_VALUES", default_value = "false", value_parser = parse_go_bool,
          num_args = 0..=1, default_missing_value = "true")]
    pub allow_empty_values: bool,

    /// Copy a OnePasswordItem's annotations to its Secret.
    #[arg(long, env = "ENABLE_ANNOTATIONS", default_value = "false", value_parser = parse_go_bool,
          num_args = 0..=1, default_missing_value = "true")]
    pub enable_annotations: bool,

    /// Where `/metrics` is served (`:8080` means every interface; `0` turns it off).
    #[arg(long, env = "METRICS_BIND_ADDRESS", default_value = ":8080")]
    pub metrics_bind_address: String,

    /// Where `/healthz` and `/readyz` are served.
    #[arg(long, env = "HEALTH_PROBE_BIND_ADDRESS", default_value = ":8081")]
    pub health_probe_bind_address: String,

    /// Elect a leader through a Lease in `POD_NAMESPACE`, so that of several replicas only one
    /// writes; the others take over within about 17 s when it goes away.
    #[arg(long, env = "LEADER_ELECT", default_value = "false", value_parser = parse_go_bool,
          num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level: error, warn, info, debug or trace (`RUST_LOG` overrides it).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Seconds between two reconciles of an unchanged object (a safety net: changes are seen
    /// through watches and polls).
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "3600", value_parser = parse_interval)]
    pub resync_interval: Duration,

    /// Objects reconciled at once by each controller; bounds the load on Connect at start-up.
    #[arg(long, env = "MAX_CONCURRENT_RECONCILES", default_value = "8",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,

    /// The official operator's log level flag (controller-runtime's zap, which its Helm chart
    /// passes): `debug`, `info`, `error`, or a verbosity number. Overrides `--log-level`.
    #[arg(long, value_name = "LEVEL")]
    pub zap_log_level: Option<String>,

    /// The official operator's log encoding flag: `json` (our `--log-format json`) or `console`
    /// (`text`). Overrides `--log-format`.
    #[arg(long, value_name = "ENCODER", value_parser = ["json", "console"])]
    pub zap_encoder: Option<String>,

    /// Flags of the official operator that mean nothing here, accepted so that its manifests
    /// run unchanged; each one given is named once in the start-up log.
    #[command(flatten)]
    pub ignored: IgnoredOfficialFlags,

    /// A vault policy file (YAML): which namespaces may read which vaults. When set, anything
    /// it does not allow is denied (see docs/vault-policy.md). Read at start-up.
    #[arg(long, env = "VAULT_POLICY_FILE")]
    pub vault_policy_file: Option<std::path::PathBuf>,
}

impl Args {
    /// The restart governance these flags ask for.
    pub fn governance(&self) -> crate::restart::governor::Governance {
        let limit = |n: usize| (n > 0).then_some(n);
        crate::restart::governor::Governance {
            debounce: self.restart_debounce,
            budget: limit(self.restart_budget),
            budget_per_namespace: limit(self.restart_budget_per_namespace),
            rollout_timeout: self.restart_rollout_timeout,
            breaker_changes: self.restart_breaker_changes,
            breaker_period: self.restart_breaker_period,
        }
    }
}

/// The official operator's flags (`cmd/main.go` and controller-runtime's zap options, v1.12.0)
/// that have no counterpart here: accepted, so a Deployment written for it starts, and named in
/// the log so nobody believes they took effect.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct IgnoredOfficialFlags {
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    zap_devel: Option<String>,
    #[arg(long, hide = true)]
    zap_stacktrace_level: Option<String>,
    #[arg(long, hide = true)]
    zap_time_encoding: Option<String>,
    /// We serve `/metrics` over plain HTTP; the official operator's HTTPS metrics are not here.
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    metrics_secure: Option<String>,
    #[arg(long, hide = true)]
    metrics_cert_path: Option<String>,
    #[arg(long, hide = true)]
    metrics_cert_name: Option<String>,
    #[arg(long, hide = true)]
    metrics_cert_key: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    enable_http2: Option<String>,
}

impl IgnoredOfficialFlags {
    /// The flags given, as `--name`.
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("--zap-devel", &self.zap_devel),
            ("--zap-stacktrace-level", &self.zap_stacktrace_level),
            ("--zap-time-encoding", &self.zap_time_encoding),
            ("--metrics-secure", &self.metrics_secure),
            ("--metrics-cert-path", &self.metrics_cert_path),
            ("--metrics-cert-name", &self.metrics_cert_name),
            ("--metrics-cert-key", &self.metrics_cert_key),
            ("--enable-http2", &self.enable_http2),
        ]
        .into_iter()
        .filter(|(_, value)| value.is_some())
        .map(|(name, _)| name)
        .collect()
    }
}

impl Args {
    /// The log level: `--zap-log-level` when given, else `--log-level`/`LOG_LEVEL`.
    pub fn effective_log_level(&self) -> &str {
        self.zap_log_level.as_deref().unwrap_or(&self.log_level)
    }

    /// The log format: `--zap-encoder` when given, else `--log-format`/`LOG_FORMAT`.
    pub fn effective_log_format(&self) -> LogFormat {
        match self.zap_encoder.as_deref() {
            Some("json") => LogFormat::Json,
            Some(_) => LogFormat::Text,
            None => self.log_format,
        }
    }

    pub fn namespaces(&self) -> Namespaces {
        Namespaces::parse(self.watch_namespace.as_deref())
    }
}

/// A bind address: `:8080` (all interfaces), `127.0.0.1:8080`, or `0` for none.
pub fn parse_bind_address(value: &str) -> Result<Option<SocketAddr>, String> {
    let value = value.trim();
    if value == "0" || value.is_empty() {
        return Ok(None);
    }
    let full = if value.starts_with(':') {
        format!("0.0.0.0{value}")
    } else {
        value.to_string()
    };
    full.parse()
        .map(Some)
        .map_err(|_| format!("{value:?} is not an address like :8080 or 127.0.0.1:8080"))
}

/// `600` (seconds, as the official operator reads it), or `600s`, `10m`, `1h`.
pub fn parse_interval(value: &str) -> Result<Duration, String> {
    match parse_interval_or_off(value)? {
        Duration::ZERO => Err("the interval must be at least one second".into()),
        interval => Ok(interval),
    }
}

/// As [`parse_interval`], or zero (`0`, `0s`, ...): off.
pub fn parse_interval_or_off(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => value.split_at(i),
        None => (value, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds (or 30s, 10m, 1h)"))?;
    let per_unit: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{value:?}: unknown unit {unit:?} (use s, m or h)")),
    };
    // Checked: in a release build `n * 3600` would wrap to a short interval without a word.
    let secs = n
        .checked_mul(per_unit)
        .ok_or_else(|| format!("{value:?} is too long an interval"))?;
    Ok(Duration::from_secs(secs))
}

fn parse_go_bool(value: &str) -> Result<bool, String> {
    crate::vocabulary::parse_bool(value.trim())
        .ok_or_else(|| format!("{value:?} is not a boolean (true or false)"))
}

/// Why the official operator's environment asks for something this operator does not do, if it
/// does: service-account mode (`OP_SERVICE_ACCOUNT_TOKEN` without `OP_CONNECT_HOST`), or
/// `MANAGE_CONNECT=true` (the official operator then deploys a Connect server itself,
/// `cmd/main.go`). Starting anyway would leave the user without Secrets and without a word.
pub fn unsupported_official_setting(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    if env("OP_CONNECT_HOST").is_none() && env("OP_SERVICE_ACCOUNT_TOKEN").is_some() {
        return Some(
            "OP_SERVICE_ACCOUNT_TOKEN (service account mode) is not supported; \
             set OP_CONNECT_HOST and OP_CONNECT_TOKEN to use a Connect server"
                .into(),
        );
    }
    let manage = env("MANAGE_CONNECT")?;
    match parse_go_bool(&manage.to_ascii_lowercase()) {
        Ok(false) => None,
        Ok(true) => Some(
            "MANAGE_CONNECT=true (the operator deploying a Connect server itself) is not \
             supported; deploy Connect with this chart (connect.create=true) or the connect \
             chart, and set OP_CONNECT_HOST to it"
                .into(),
        ),
        Err(e) => Some(format!("MANAGE_CONNECT: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_official_operator() {
        let args = Args::try_parse_from(["op"]).unwrap();
        assert_eq!(args.polling_interval, Duration::from_secs(600));
        assert_eq!(args.change_check_interval, Duration::from_secs(6));
        assert!(!args.auto_restart && !args.allow_empty_values && !args.enable_annotations);
        assert_eq!(args.namespaces(), Namespaces::All);
        assert_eq!(
            parse_bind_address(&args.metrics_bind_address).unwrap(),
            Some("0.0.0.0:8080".parse().unwrap())
        );
    }

    #[test]
    fn official_flags_are_accepted() {
        let args = Args::try_parse_from([
            "op",
            "--leader-elect",
            "--allow-empty-values",
            "--enable-annotations",
            "--metrics-bind-address=127.0.0.1:8080",
            "--health-probe-bind-address=:8081",
            "--polling-interval=30",
        ])
        .unwrap();
        assert!(args.leader_elect && args.allow_empty_values && args.enable_annotations);
        assert_eq!(args.polling_interval, Duration::from_secs(30));
    }

    #[test]
    fn the_official_charts_and_kustomize_flags_start_the_operator() {
        // The official Helm chart passes --zap-log-level; its kustomize config the metrics and
        // probe flags; controller-runtime defines the other zap flags.
        let args = Args::try_parse_from([
            "op",
            "--zap-log-level=debug",
            "--zap-encoder=json",
            "--zap-devel",
            "--zap-stacktrace-level=error",
            "--zap-time-encoding=iso8601",
            "--metrics-secure=false",
            "--metrics-cert-path=/certs",
            "--enable-http2",
            "--metrics-bind-address=:8443",
            "--health-probe-bind-address=:8081",
            "--leader-elect",
        ])
        .unwrap();
        assert_eq!(args.effective_log_level(), "debug");
        assert_eq!(args.effective_log_format(), LogFormat::Json);
        assert_eq!(
            args.ignored.given(),
            [
                "--zap-devel",
                "--zap-stacktrace-level",
                "--zap-time-encoding",
                "--metrics-secure",
                "--metrics-cert-path",
                "--enable-http2"
            ]
        );
        let plain = Args::try_parse_from(["op", "--log-level=warn"]).unwrap();
        assert_eq!(plain.effective_log_level(), "warn");
        assert_eq!(plain.effective_log_format(), LogFormat::Text);
        assert!(plain.ignored.given().is_empty());
        assert!(Args::try_parse_from(["op", "--zap-encoder=xml"]).is_err());
    }

    #[test]
    fn official_settings_this_operator_does_not_do_stop_it_with_a_reason() {
        fn check(pairs: &[(&str, &str)]) -> Option<String> {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            unsupported_official_setting(|k| {
                pairs
                    .iter()
                    .find(|(name, _)| name == k)
                    .map(|(_, v)| v.clone())
            })
        }
        let host = ("OP_CONNECT_HOST", "http://connect:8080");
        assert_eq!(check(&[host]), None);
        for off in ["false", "False", "0", "f"] {
            assert_eq!(check(&[host, ("MANAGE_CONNECT", off)]), None, "{off}");
        }
        let why = check(&[host, ("MANAGE_CONNECT", "TRUE")]).unwrap();
        assert!(why.contains("MANAGE_CONNECT=true"), "{why}");
        let why = check(&[host, ("MANAGE_CONNECT", "yes")]).unwrap();
        assert!(why.starts_with("MANAGE_CONNECT: "), "{why}");
        let why = check(&[("OP_SERVICE_ACCOUNT_TOKEN", "ops_x")]).unwrap();
        assert!(why.contains("OP_SERVICE_ACCOUNT_TOKEN"), "{why}");
        assert!(!why.contains("ops_x"), "{why}");
    }

    #[test]
    fn an_interval_too_long_to_count_in_seconds_is_refused_not_wrapped() {
        let most_hours = u64::MAX / 3600;
        assert_eq!(
            parse_interval(&format!("{most_hours}h")).unwrap(),
            Duration::from_secs(most_hours * 3600)
        );
        // Multiplied unchecked, this would wrap to 3,584 s (about an hour) in a release build.
        let too_long = format!("{}h", most_hours + 1);
        assert_eq!(
            parse_interval(&too_long).unwrap_err(),
            format!("{too_long:?} is too long an interval")
        );
        assert!(parse_interval(&format!("{}m", u64::MAX / 60 + 1)).is_err());
    }

    #[test]
    fn intervals_accept_seconds_and_units_and_refuse_nonsense() {
        assert_eq!(parse_interval("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_interval("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_interval("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "0", "-5", "ten", "5d", "1.5"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_change_check_takes_intervals_and_zero_for_off() {
        for (given, secs) in [("0", 0), ("0s", 0), ("5", 5), ("30s", 30), ("1m", 60)] {
            let args =
                Args::try_parse_from(["op", &format!("--change-check-interval={given}")]).unwrap();
            assert_eq!(
                args.change_check_interval,
                Duration::from_secs(secs),
                "{given}"
            );
        }
        for bad in ["", "-1", "0x", "1.5", "0d", "0sm"] {
            assert!(parse_interval_or_off(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bind_addresses() {
        assert_eq!(parse_bind_address("0").unwrap(), None);
        assert_eq!(
            parse_bind_address(":9000").unwrap(),
            Some("0.0.0.0:9000".parse().unwrap())
        );
        assert!(parse_bind_address("localhost").is_err());
    }
}
