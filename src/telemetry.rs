//! Logging setup and the operator's Prometheus metrics.
//!
//! Logs go to stderr (as controller-runtime's zap logger does for the official operator), as text
//! or as one JSON object per line. Metrics are kept in a prometheus-client [`Registry`] and
//! served as OpenMetrics text by [`crate::http`]. Every label value is drawn from a bounded set:
//! controller names and workload kinds are `&'static str`, error reasons are a closed enum
//! ([`Reason`]) and Connect statuses are checked against a known set, so a scrape never grows with the number of user objects or errors.

use std::{
    any::Any,
    fmt,
    io::{IsTerminal, Write},
    panic::Location,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use tracing_subscriber::{EnvFilter, fmt::MakeWriter, util::SubscriberInitExt};

use crate::vocabulary::Reason;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "log level {0:?} is not one of error, warn, info, debug, trace (or a verbosity number, or tracing directives like `info,onepassword_secrets_operator=debug`)"
    )]
    InvalidLevel(String),
    #[error("invalid log filter {0:?}: {1}")]
    InvalidFilter(String, String),
    #[error("logging is already initialised: {0}")]
    AlreadyInitialized(String),
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields, and the current span's fields.
    Json,
}

/// Dependencies that are chatty at `info`/`debug` and rarely what an operator user is after.
/// `RUST_LOG` overrides them.
const QUIET_DEPENDENCIES: &str =
    "hyper=warn,hyper_util=warn,h2=warn,tower=warn,rustls=warn,kube_client=info";

/// Installs the global logger. `RUST_LOG`, when set and not empty, wins over `level`.
///
/// `level` takes the words used by the official operator's `LOG_LEVEL` and zap: `error` (also
/// `dpanic`, `panic`, `fatal`), `warn`/`warning`, `info`, `debug`, `trace`, or a zap-style
/// verbosity number (`0` info, `1` debug, `2` and more trace). A value containing `=` is taken
/// as full tracing directives and replaces the defaults.
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = log_filter(level, rust_log.as_deref())?;
    let ansi = std::io::stderr().is_terminal();
    subscriber(format, filter, std::io::stderr, ansi)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInitialized(e.to_string()))?;
    // For the panic hook, which writes its line in the same format.
    let _ = LOG_FORMAT.set(format);
    Ok(())
}

/// The format [`init_logging`] was given; text until then.
static LOG_FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// What a panic report says in place of a formatted panic message.
pub const PANIC_MESSAGE_WITHHELD: &str =
    "<formatted panic message withheld: it may hold secret values>";

/// Replaces the default panic hook (which prints the whole panic message) with one that writes
/// one line to stderr, in the log format when logging is initialised: where the panic happened,
/// and the message only when it is a string literal. A formatted message (`panic!("{x}")`,
/// `expect` on a `Result` with its error's `Debug`, an index out of bounds, ...) can carry any
/// runtime value, a secret value or the Connect token included, so it is withheld. Backtraces
/// are not printed. Install it right after [`init_logging`].
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let format = LOG_FORMAT.get().copied().unwrap_or_default();
        let line = match format {
            LogFormat::Text => panic_report(info.payload(), info.location()),
            LogFormat::Json => panic_report_json(
                info.payload(),
                info.location(),
                &jiff::Timestamp::now().to_string(),
            ),
        };
        // Nothing more can be done if stderr is gone.
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }));
}

/// The panic message when it is a string literal (`panic!("literal")`, `unreachable!()`,
/// `unwrap` on `None`, ...), which cannot hold a runtime value; otherwise
/// [`PANIC_MESSAGE_WITHHELD`].
pub fn panic_message(payload: &(dyn Any + Send)) -> &'static str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .unwrap_or(PANIC_MESSAGE_WITHHELD)
}

/// The panic hook's line in the text format: `panicked at <file:line:column>: <message>`, with
/// the message as [`panic_message`] gives it, on one line.
pub fn panic_report(payload: &(dyn Any + Send), location: Option<&Location<'_>>) -> String {
    let location = location.map_or_else(|| "<unknown location>".to_owned(), ToString::to_string);
    let mut line = format!("panicked at {location}: ");
    for c in panic_message(payload).chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

/// The panic hook's line in the JSON format, shaped like the JSON log lines.
pub fn panic_report_json(
    payload: &(dyn Any + Send),
    location: Option<&Location<'_>>,
    timestamp: &str,
) -> String {
    serde_json::json!({
        "timestamp": timestamp,
        "level": "ERROR",
        "fields": {
            "message": "panicked",
            "location": location.map(ToString::to_string),
            "panic": panic_message(payload),
        },
        "target": "panic",
    })
    .to_string()
}

/// The filter for `level`, or for `rust_log` when that is set.
fn log_filter(level: &str, rust_log: Option<&str>) -> Result<EnvFilter, TelemetryError> {
    let directives = match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(rust_log) => rust_log.to_string(),
        None => level_directives(level)?,
    };
    EnvFilter::try_new(&directives)
        .map_err(|e| TelemetryError::InvalidFilter(directives, e.to_string()))
}

fn level_directives(level: &str) -> Result<String, TelemetryError> {
    let level = level.trim();
    if level.contains('=') {
        return Ok(level.to_string());
    }
    let max = match level.to_ascii_lowercase().as_str() {
        "" | "info" => "info",
        "error" | "dpanic" | "panic" | "fatal" => "error",
        "warn" | "warning" => "warn",
        "debug" => "debug",
        "trace" => "trace",
        other => match other.parse::<u32>() {
            Ok(0) => "info",
            Ok(1) => "debug",
            Ok(_) => "trace",
            Err(_) => return Err(TelemetryError::InvalidLevel(level.to_string())),
        },
    };
    Ok(format!("{max},{QUIET_DEPENDENCIES}"))
}

type BoxedSubscriber = Box<dyn tracing::Subscriber + Send + Sync>;

fn subscriber<W>(format: LogFormat, filter: EnvFilter, writer: W, ansi: bool) -> BoxedSubscriber
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .with_ansi(false)
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
    }
}

/// The bounded label value for a Connect request's outcome: an HTTP status code (100-599),
/// `timeout`, `error`, or `other`.
fn status_label(status: &str) -> String {
    match status {
        "timeout" | "error" => status.to_string(),
        code if code.len() == 3 && matches!(code.parse::<u16>(), Ok(100..=599)) => code.to_string(),
        _ => "other".to_string(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectLabels {
    endpoint: &'static str,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabels {
    ready: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The operator's metrics. Cheap to clone; all clones share one registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: HistogramFamily<ControllerLabels>,
    connect_requests: Family<ConnectLabels, Counter>,
    sync_lag: Histogram,
    secret_writes: Family<ControllerLabels, Counter>,
    workload_restarts: Family<KindLabels, Counter>,
    restarts: Family<StateLabels, Gauge>,
    poll_cycles: Counter,
    poll_duration: Histogram,
    poll_connect_requests: Gauge,
    managed_items: Gauge,
    ready_items: Family<ReadyLabels, Gauge>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn reconcile_duration_histogram() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("onepassword");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles started, by controller",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by controller and bounded reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration: HistogramFamily<ControllerLabels> =
            Family::new_with_constructor(reconcile_duration_histogram);
        registry.register_with_unit(
            "reconcile_duration",
            "Time spent in one reconcile, by controller",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let connect_requests = Family::<ConnectLabels, Counter>::default();
        registry.register(
            "connect_requests",
            "HTTP requests to 1Password Connect, by endpoint and status code (or timeout/error)",
            connect_requests.clone(),
        );
        // From seconds to a few hours: the poll interval is 10 minutes by default.
        let sync_lag = Histogram::new([
            1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 10800.0,
        ]);
        registry.register_with_unit(
            "sync_lag",
            "Time from an item's update in 1Password to its Secret being written",
            Unit::Seconds,
            sync_lag.clone(),
        );
        let secret_writes = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "secret_writes",
            "Secrets created or whose data changed, by controller",
            secret_writes.clone(),
        );
        let workload_restarts = Family::<KindLabels, Counter>::default();
        registry.register(
            "workload_restarts",
            "Workloads restarted because a Secret they use changed, by kind",
            workload_restarts.clone(),
        );
        let restarts = Family::<StateLabels, Gauge>::default();
        registry.register(
            "restarts",
            "Restarts by state: rolling (restarted by the operator, rollout not done), and those \
             waiting: debounce, queued (budget spent), blocked (a failed rollout for the same \
             change), paused (flapping Secret)",
            restarts.clone(),
        );
        let poll_cycles = Counter::default();
        registry.register(
            "poll_cycles",
            "Polls of 1Password for changed items",
            poll_cycles.clone(),
        );
        let poll_duration = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        registry.register_with_unit(
            "poll_duration",
            "Time spent in one poll of 1Password",
            Unit::Seconds,
            poll_duration.clone(),
        );
        let poll_connect_requests = Gauge::default();
        registry.register(
            "poll_connect_requests",
            "Requests to Connect made by the last poll",
            poll_connect_requests.clone(),
        );
        let managed_items = Gauge::default();
        registry.register(
            "managed_items",
            "1Password items referenced by OnePasswordItems or annotated Deployments",
            managed_items.clone(),
        );
        let ready_items = Family::<ReadyLabels, Gauge>::default();
        registry.register(
            "ready_items",
            "OnePasswordItems by their Ready condition",
            ready_items.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                reconciles,
                reconcile_errors,
                reconcile_duration,
                connect_requests,
                sync_lag,
                secret_writes,
                workload_restarts,
                restarts,
                poll_cycles,
                poll_duration,
                poll_connect_requests,
                managed_items,
                ready_items,
            }),
        }
    }

    /// Counts a reconcile of `controller` (e.g. `"item"`, `"deployment"`) and times it until the
    /// returned timer is finished or dropped.
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileTimer {
        self.inner
            .reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            metrics: self.clone(),
            controller,
            started: Instant::now(),
        }
    }

    /// Counts one HTTP attempt to Connect. `status` is the status code as text, `timeout` or
    /// `error`; anything else is counted as `other`.
    pub fn connect_request(&self, endpoint: &'static str, status: &str) {
        let labels = ConnectLabels {
            endpoint,
            status: status_label(status),
        };
        self.inner.connect_requests.get_or_create(&labels).inc();
    }

    /// Records the time between an item's `updatedAt` in 1Password and its Secret being written.
    pub fn sync_lag(&self, lag: Duration) {
        self.inner.sync_lag.observe(lag.as_secs_f64());
    }

    /// Counts a Secret created or whose data changed.
    pub fn secret_written(&self, controller: &'static str) {
        self.inner
            .secret_writes
            .get_or_create(&ControllerLabels { controller })
            .inc();
    }

    /// Counts a workload restart; `kind` is e.g. `"Deployment"`.
    pub fn workload_restarted(&self, kind: &'static str) {
        self.inner
            .workload_restarts
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Sets how many restarts are in `state` (see the metric's help).
    pub fn set_restarts(&self, state: &'static str, count: usize) {
        self.inner
            .restarts
            .get_or_create(&StateLabels { state })
            .set(saturating_i64(count as u64));
    }

    /// Records one finished poll and the Connect requests it made.
    pub fn poll_cycle(&self, duration: Duration, connect_requests: u64) {
        self.inner.poll_cycles.inc();
        self.inner.poll_duration.observe(duration.as_secs_f64());
        self.inner
            .poll_connect_requests
            .set(saturating_i64(connect_requests));
    }

    pub fn set_managed_items(&self, items: usize) {
        self.inner.managed_items.set(saturating_i64(items as u64));
    }

    /// Sets how many OnePasswordItems are Ready and how many are not.
    pub fn set_ready_items(&self, ready: usize, not_ready: usize) {
        let family = &self.inner.ready_items;
        family
            .get_or_create(&ReadyLabels { ready: "true" })
            .set(saturating_i64(ready as u64));
        family
            .get_or_create(&ReadyLabels { ready: "false" })
            .set(saturating_i64(not_ready as u64));
    }

    /// All metrics as OpenMetrics text, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail, and every metric here encodes without error.
        let _ = encode(&mut text, &self.inner.registry);
        text
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Times one reconcile. The duration is recorded when the timer is dropped, so an early return
/// still counts; [`ReconcileTimer::finish`] also counts the error, if any.
#[must_use = "the reconcile's duration is recorded when the timer is finished or dropped"]
pub struct ReconcileTimer {
    metrics: Metrics,
    controller: &'static str,
    started: Instant,
}

impl ReconcileTimer {
    /// Ends the reconcile; `Err(reason)` counts an error under that reason's label (a closed
    /// set: [`Reason::ALL`]).
    pub fn finish(self, outcome: Result<(), Reason>) {
        if let Err(reason) = outcome {
            let labels = ErrorLabels {
                controller: self.controller,
                reason: reason.as_str(),
            };
            self.metrics
                .inner
                .reconcile_errors
                .get_or_create(&labels)
                .inc();
        }
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        let labels = ControllerLabels {
            controller: self.controller,
        };
        self.metrics
            .inner
            .reconcile_duration
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    const FAKE_SECRET: &str = "op-token-FAKE-s3cr3t-9f8e7d";

    #[test]
    fn a_formatted_panic_message_is_withheld_and_the_location_kept() {
        let payload: Box<dyn Any + Send> = Box::new(format!("password is {FAKE_SECRET}"));
        let location = Location::caller();
        let report = panic_report(payload.as_ref(), Some(location));
        assert!(!report.contains(FAKE_SECRET), "{report}");
        assert!(report.contains(PANIC_MESSAGE_WITHHELD), "{report}");
        let at = format!("{}:{}:{}", file!(), location.line(), location.column());
        assert!(report.contains(&at), "{report} lacks {at}");
        assert!(!report.contains('\n'), "{report}");
    }

    #[test]
    fn a_literal_panic_message_is_kept() {
        let payload: Box<dyn Any + Send> = Box::new("the reflector's store is not ready");
        let location = Location::caller();
        let report = panic_report(payload.as_ref(), Some(location));
        assert!(
            report.contains("the reflector's store is not ready"),
            "{report}"
        );
        assert!(report.contains(file!()), "{report}");
        assert!(!report.contains(PANIC_MESSAGE_WITHHELD), "{report}");
    }

    #[test]
    fn a_payload_of_another_type_is_withheld_and_a_literal_stays_on_one_line() {
        let payload: Box<dyn Any + Send> = Box::new(42_u64);
        assert_eq!(panic_message(payload.as_ref()), PANIC_MESSAGE_WITHHELD);
        let payload: Box<dyn Any + Send> = Box::new("two\nlines");
        let report = panic_report(payload.as_ref(), None);
        assert_eq!(report, "panicked at <unknown location>: two\\nlines");
    }

    #[test]
    fn the_json_report_is_one_json_line_without_the_formatted_message() {
        let payload: Box<dyn Any + Send> = Box::new(format!("token {FAKE_SECRET}"));
        let location = Location::caller();
        let line = panic_report_json(payload.as_ref(), Some(location), "2025-01-01T00:00:00Z");
        assert!(
            !line.contains(FAKE_SECRET) && !line.contains('\n'),
            "{line}"
        );
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["level"], "ERROR");
        assert_eq!(json["fields"]["panic"], PANIC_MESSAGE_WITHHELD);
        assert_eq!(json["fields"]["location"], location.to_string());
        assert_eq!(json["timestamp"], "2025-01-01T00:00:00Z");

        let payload: Box<dyn Any + Send> = Box::new("literal");
        let line = panic_report_json(payload.as_ref(), None, "t");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["fields"]["panic"], "literal");
        assert!(json["fields"]["location"].is_null());
    }

    #[test]
    fn real_panic_payloads_are_told_apart_as_the_hook_sees_them() {
        // What std hands the hook: a literal panic gives a `&'static str`, a formatted one (even
        // `expect` on a `Result`) a `String`.
        let secret = FAKE_SECRET.to_owned();
        let literal = std::panic::catch_unwind(|| panic!("a literal")).unwrap_err();
        assert_eq!(panic_message(literal.as_ref()), "a literal");
        let formatted = std::panic::catch_unwind(|| panic!("{secret}")).unwrap_err();
        assert_eq!(panic_message(formatted.as_ref()), PANIC_MESSAGE_WITHHELD);
        let expected = std::panic::catch_unwind(|| {
            let token: Result<(), String> = std::hint::black_box(Err(secret.clone()));
            token.expect("the token is read");
        })
        .unwrap_err();
        assert_eq!(panic_message(expected.as_ref()), PANIC_MESSAGE_WITHHELD);
    }

    fn lines_with<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(name)).collect()
    }

    #[test]
    fn reconcile_counters_carry_controller_and_reason_labels() {
        let metrics = Metrics::new();
        metrics.reconcile_started("item").finish(Ok(()));
        metrics
            .reconcile_started("item")
            .finish(Err(Reason::ItemNotFound));
        metrics
            .reconcile_started("deployment")
            .finish(Err(Reason::ConnectUnavailable));

        let text = metrics.encode();
        assert!(
            text.contains("onepassword_reconciles_total{controller=\"item\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("onepassword_reconciles_total{controller=\"deployment\"} 1\n"));
        assert!(text.contains(
            "onepassword_reconcile_errors_total{controller=\"item\",reason=\"ItemNotFound\"} 1\n"
        ));
        assert!(text.contains(
            "onepassword_reconcile_errors_total{controller=\"deployment\",reason=\"ConnectUnavailable\"} 1\n"
        ));
        assert!(
            text.contains("onepassword_reconcile_duration_seconds_count{controller=\"item\"} 2\n")
        );
        assert!(text.contains("# UNIT onepassword_reconcile_duration_seconds seconds\n"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn every_reason_is_counted_under_its_own_label() {
        let metrics = Metrics::new();
        for reason in Reason::ALL {
            metrics.reconcile_started("item").finish(Err(*reason));
        }
        let text = metrics.encode();
        let series = lines_with(&text, "onepassword_reconcile_errors_total");
        assert_eq!(series.len(), Reason::ALL.len(), "{text}");
        for reason in Reason::ALL {
            let line = format!(
                "onepassword_reconcile_errors_total{{controller=\"item\",reason=\"{reason}\"}} 1"
            );
            assert!(series.contains(&line.as_str()), "{line} in {text}");
        }
    }

    #[test]
    fn dropping_a_timer_records_the_duration_but_no_error() {
        let metrics = Metrics::new();
        drop(metrics.reconcile_started("item"));
        let text = metrics.encode();
        assert!(
            text.contains("onepassword_reconcile_duration_seconds_count{controller=\"item\"} 1\n")
        );
        assert!(lines_with(&text, "onepassword_reconcile_errors_total").is_empty());
    }

    #[test]
    fn connect_statuses_are_bounded() {
        let metrics = Metrics::new();
        metrics.connect_request("list_items", "200");
        metrics.connect_request("list_items", "200");
        metrics.connect_request("get_item", "429");
        metrics.connect_request("get_item", "timeout");
        metrics.connect_request("get_item", "error");
        metrics.connect_request("get_item", "error sending request for url (http://x/)");
        metrics.connect_request("get_item", "999");
        metrics.connect_request("get_item", "20");

        let text = metrics.encode();
        let series = lines_with(&text, "onepassword_connect_requests_total");
        for expected in [
            "onepassword_connect_requests_total{endpoint=\"list_items\",status=\"200\"} 2",
            "onepassword_connect_requests_total{endpoint=\"get_item\",status=\"429\"} 1",
            "onepassword_connect_requests_total{endpoint=\"get_item\",status=\"timeout\"} 1",
            "onepassword_connect_requests_total{endpoint=\"get_item\",status=\"error\"} 1",
            "onepassword_connect_requests_total{endpoint=\"get_item\",status=\"other\"} 3",
        ] {
            assert!(series.contains(&expected), "{expected} not in {series:#?}");
        }
        assert_eq!(series.len(), 5);
    }

    #[test]
    fn writes_restarts_polls_and_gauges_are_encoded() {
        let metrics = Metrics::new();
        metrics.secret_written("item");
        metrics.workload_restarted("Deployment");
        metrics.sync_lag(Duration::from_secs(42));
        metrics.poll_cycle(Duration::from_millis(300), 7);
        metrics.poll_cycle(Duration::from_millis(200), 3);
        metrics.set_managed_items(12);
        metrics.set_ready_items(10, 2);

        let text = metrics.encode();
        for expected in [
            "onepassword_secret_writes_total{controller=\"item\"} 1\n",
            "onepassword_workload_restarts_total{kind=\"Deployment\"} 1\n",
            "onepassword_sync_lag_seconds_count 1\n",
            "onepassword_sync_lag_seconds_sum 42.0\n",
            "onepassword_poll_cycles_total 2\n",
            "onepassword_poll_duration_seconds_count 2\n",
            "onepassword_poll_connect_requests 3\n",
            "onepassword_managed_items 12\n",
            "onepassword_ready_items{ready=\"true\"} 10\n",
            "onepassword_ready_items{ready=\"false\"} 2\n",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
    }

    #[test]
    fn clones_share_one_registry() {
        let metrics = Metrics::new();
        metrics.clone().secret_written("deployment");
        assert!(
            metrics
                .encode()
                .contains("onepassword_secret_writes_total{controller=\"deployment\"} 1\n")
        );
    }

    #[test]
    fn log_levels_map_to_filters_with_quiet_dependencies() {
        let filter = |level| log_filter(level, None).unwrap().to_string();
        for (level, max) in [
            ("info", "info"),
            ("", "info"),
            ("INFO", "info"),
            ("debug", "debug"),
            ("warn", "warn"),
            ("warning", "warn"),
            ("error", "error"),
            ("panic", "error"),
            ("trace", "trace"),
            ("0", "info"),
            ("1", "debug"),
            ("5", "trace"),
        ] {
            assert_eq!(
                level_directives(level).unwrap(),
                format!("{max},{QUIET_DEPENDENCIES}"),
                "level {level:?}"
            );
        }
        assert!(filter("debug").contains("hyper=warn"));
        assert!(filter("debug").contains("kube_client=info"));
    }

    #[test]
    fn rust_log_wins_over_the_level_and_bad_values_are_errors() {
        let filter = log_filter("debug", Some("warn,onepassword_secrets_operator=trace")).unwrap();
        assert!(!filter.to_string().contains("hyper=warn"), "{filter}");
        assert!(
            filter
                .to_string()
                .contains("onepassword_secrets_operator=trace")
        );
        // An empty RUST_LOG is treated as unset.
        assert!(
            log_filter("debug", Some(" "))
                .unwrap()
                .to_string()
                .contains("hyper=warn")
        );
        assert!(matches!(
            log_filter("verbose", None),
            Err(TelemetryError::InvalidLevel(_))
        ));
        assert!(matches!(
            log_filter("info", Some("foo=notalevel")),
            Err(TelemetryError::InvalidFilter(..))
        ));
        let custom = log_filter("info,kube_runtime=debug", None)
            .unwrap()
            .to_string();
        assert!(custom.contains("kube_runtime=debug") && !custom.contains("hyper=warn"));
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(format: LogFormat, emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let filter = log_filter("info", None).unwrap();
        let sub = subscriber(format, filter, move || writer.clone(), false);
        tracing::subscriber::with_default(sub, emit);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_logs_are_one_object_per_line_with_span_fields() {
        let out = capture(LogFormat::Json, || {
            let span = tracing::info_span!("reconcile", object = "ns/name");
            let _guard = span.enter();
            tracing::info!(reason = "Synced", "secret written");
            tracing::debug!("filtered out at info");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert!(line["timestamp"].is_string());
        assert_eq!(line["level"], "INFO");
        assert_eq!(
            line["target"],
            "onepassword_secrets_operator::telemetry::tests"
        );
        assert_eq!(line["fields"]["message"], "secret written");
        assert_eq!(line["fields"]["reason"], "Synced");
        assert_eq!(line["span"]["object"], "ns/name");
        assert_eq!(line["spans"][0]["name"], "reconcile");
    }

    #[test]
    fn text_logs_are_plain_lines() {
        let out = capture(LogFormat::Text, || {
            tracing::warn!(reason = "Other", "hello")
        });
        assert!(out.contains("WARN"), "{out}");
        assert!(
            out.contains("hello reason=\"Other\"") || out.contains("hello reason=Other"),
            "{out}"
        );
        assert!(
            !out.contains('\u{1b}'),
            "no colours when not a terminal: {out:?}"
        );
    }
}
