//! Failures injected on demand, and the request counters. Plain data; the server applies them.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

/// What a fault does to a request. In JSON (admin endpoint) it is the `kind` member with its
/// parameters: `{"kind": "status", "status": 503}`, `{"kind": "too_many_requests",
/// "retry_after_secs": 2}`, `{"kind": "timeout"}`, `{"kind": "delay", "millis": 500}`,
/// `{"kind": "drop_connection"}`, `{"kind": "malformed_json"}`, `{"kind": "lagging"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// An error status with Connect's error body; 500 by default.
    Status {
        #[serde(default = "internal_error")]
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// 429 with `Retry-After` (Connect never sends it, a proxy in front of it may).
    TooManyRequests { retry_after_secs: u64 },
    /// 408, as Connect answers while its first sync is not done.
    Timeout,
    /// Answer normally, this much later (stacks with the other kinds).
    Delay { millis: u64 },
    /// Close the connection without answering.
    DropConnection,
    /// Answer 200 with the real body cut in half, so it is not valid JSON.
    MalformedJson,
    /// Answer as a Connect replica one change behind would (behind a load balancer, one replica
    /// lags): every item as it was before its last change ([`View::Lagging`](super::View)).
    Lagging,
}

fn internal_error() -> u16 {
    500
}

/// A fault and where it applies: every request but the `/__sim` admin ones, unless limited to an
/// endpoint (named as in [`Simulator::counts`](super::Simulator::counts)) or a path prefix, and
/// for ever unless limited to a number of requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many requests it applies to; `None` until cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

impl Fault {
    pub fn new(kind: FaultKind) -> Self {
        Fault {
            kind,
            times: None,
            endpoint: None,
            path_prefix: None,
        }
    }

    /// 500 `{"status":500,"message":"..."}`.
    pub fn internal_error() -> Self {
        Self::status(500)
    }

    /// Any error status, with Connect's error body.
    pub fn status(status: u16) -> Self {
        Self::new(FaultKind::Status {
            status,
            message: None,
        })
    }

    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::new(FaultKind::TooManyRequests { retry_after_secs })
    }

    /// 408.
    pub fn timeout() -> Self {
        Self::new(FaultKind::Timeout)
    }

    pub fn delay(delay: Duration) -> Self {
        Self::new(FaultKind::Delay {
            millis: delay.as_millis().try_into().unwrap_or(u64::MAX),
        })
    }

    pub fn drop_connection() -> Self {
        Self::new(FaultKind::DropConnection)
    }

    pub fn malformed_json() -> Self {
        Self::new(FaultKind::MalformedJson)
    }

    /// Items served as they were one change ago.
    pub fn lagging() -> Self {
        Self::new(FaultKind::Lagging)
    }

    /// Only for the next `n` matching requests.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    /// Only for one endpoint (`get_item`, `list_items`, …).
    pub fn on(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Only for paths starting with this (e.g. `/v1/vaults/<id>`).
    pub fn under(mut self, path_prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(path_prefix.into());
        self
    }

    fn matches(&self, endpoint: &str, path: &str) -> bool {
        self.endpoint.as_deref().is_none_or(|e| e == endpoint)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }
}

/// What to do with one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub delay: Duration,
    /// The fault that replaces or spoils the answer, if any.
    pub action: Option<FaultKind>,
}

/// The active faults, in the order they were added.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    faults: Vec<Fault>,
}

impl Faults {
    pub fn add(&mut self, fault: Fault) {
        if fault.times != Some(0) {
            self.faults.push(fault);
        }
    }

    pub fn clear(&mut self) {
        self.faults.clear();
    }

    pub fn list(&self) -> &[Fault] {
        &self.faults
    }

    /// Decides the fate of a request and uses up one of each fault that applied: every matching
    /// delay adds up, and the first matching other fault is the action.
    pub fn plan(&mut self, endpoint: &str, path: &str) -> Plan {
        let mut plan = Plan::default();
        for fault in &mut self.faults {
            if !fault.matches(endpoint, path) {
                continue;
            }
            match &fault.kind {
                FaultKind::Delay { millis } => plan.delay += Duration::from_millis(*millis),
                _ if plan.action.is_some() => continue,
                kind => plan.action = Some(kind.clone()),
            }
            if let Some(n) = &mut fault.times {
                *n -= 1;
            }
        }
        self.faults.retain(|f| f.times != Some(0));
        plan
    }
}

/// Requests received, by endpoint name.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    by_endpoint: BTreeMap<String, u64>,
}

impl Counts {
    pub fn record(&mut self, endpoint: &str) {
        *self.by_endpoint.entry(endpoint.to_string()).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_endpoint.clone()
    }

    pub fn total(&self) -> u64 {
        self.by_endpoint.values().sum()
    }

    pub fn reset(&mut self) {
        self.by_endpoint.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_fault_applies_that_many_times_then_goes_away() {
        let mut faults = Faults::default();
        faults.add(Fault::internal_error().times(2));
        for _ in 0..2 {
            assert!(matches!(
                faults.plan("get_item", "/v1/x").action,
                Some(FaultKind::Status { status: 500, .. })
            ));
        }
        assert_eq!(faults.plan("get_item", "/v1/x"), Plan::default());
        assert!(faults.list().is_empty());
    }

    #[test]
    fn faults_apply_only_where_they_are_scoped() {
        let mut faults = Faults::default();
        faults.add(Fault::timeout().on("get_item"));
        faults.add(Fault::drop_connection().under("/v1/vaults/abc"));
        assert_eq!(faults.plan("list_vaults", "/v1/vaults").action, None);
        assert_eq!(
            faults.plan("get_item", "/v1/vaults/abc/items/x").action,
            Some(FaultKind::Timeout)
        );
        assert_eq!(
            faults.plan("list_items", "/v1/vaults/abc/items").action,
            Some(FaultKind::DropConnection)
        );
    }

    #[test]
    fn delays_add_up_and_only_the_first_other_fault_is_used_up() {
        let mut faults = Faults::default();
        faults.add(Fault::delay(Duration::from_millis(100)));
        faults.add(Fault::too_many_requests(3).times(1));
        faults.add(Fault::delay(Duration::from_millis(50)).times(1));
        faults.add(Fault::malformed_json().times(1));
        let plan = faults.plan("get_item", "/");
        assert_eq!(plan.delay, Duration::from_millis(150));
        assert_eq!(
            plan.action,
            Some(FaultKind::TooManyRequests {
                retry_after_secs: 3
            })
        );
        let plan = faults.plan("get_item", "/");
        assert_eq!(plan.delay, Duration::from_millis(100));
        assert_eq!(plan.action, Some(FaultKind::MalformedJson));
        faults.clear();
        assert_eq!(faults.plan("get_item", "/"), Plan::default());
    }

    #[test]
    fn faults_read_from_json() {
        let fault: Fault = serde_json::from_str(
            r#"{"kind":"status","status":503,"times":2,"endpoint":"get_item"}"#,
        )
        .unwrap();
        assert_eq!(fault, Fault::status(503).times(2).on("get_item"));
        let fault: Fault = serde_json::from_str(r#"{"kind":"status"}"#).unwrap();
        assert_eq!(fault, Fault::internal_error());
        let fault: Fault = serde_json::from_str(r#"{"kind":"delay","millis":20}"#).unwrap();
        assert_eq!(fault, Fault::delay(Duration::from_millis(20)));
        let back: Fault =
            serde_json::from_str(&serde_json::to_string(&Fault::drop_connection()).unwrap())
                .unwrap();
        assert_eq!(back, Fault::drop_connection());
        let fault: Fault =
            serde_json::from_str(r#"{"kind":"lagging","endpoint":"get_item"}"#).unwrap();
        assert_eq!(fault, Fault::lagging().on("get_item"));
    }

    #[test]
    fn counts_add_up_by_endpoint() {
        let mut counts = Counts::default();
        counts.record("get_item");
        counts.record("get_item");
        counts.record("list_vaults");
        assert_eq!(counts.snapshot()["get_item"], 2);
        assert_eq!(counts.total(), 3);
        counts.reset();
        assert_eq!(counts.total(), 0);
    }
}
