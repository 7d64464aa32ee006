//! Kubernetes events (`events.k8s.io/v1`), written without a cache.
//!
//! kube-runtime's `Recorder` keeps every event it published for six minutes, to merge repeats
//! into a series. We publish only on transitions (a reason that changes, a Secret written, a
//! workload restarted), so there are no repeats to merge, and that cache was the largest single
//! allocation at start-up: about 4 KiB per OnePasswordItem (4.4 MiB for 1,000 items).

use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams, runtime::events::EventType};

use crate::vocabulary::Reason;

/// Event notes are limited to 1 kB by the API server.
pub const MAX_NOTE: usize = 1000;

/// Writes events as one reporting controller (and instance).
pub struct EventSink {
    client: Client,
    controller: String,
    instance: String,
    /// Makes event names unique within this process, even for events of the same nanosecond.
    sequence: AtomicU64,
}

/// One event to write.
pub struct Note<'a> {
    pub type_: EventType,
    /// What the controller was doing: `Sync`, `Restart`.
    pub action: &'a str,
    /// Why.
    pub reason: Reason,
    /// What happened; cut to [`MAX_NOTE`].
    pub note: &'a str,
}

impl EventSink {
    /// `instance` is the pod name (`POD_NAME`) when set, else the controller name.
    pub fn new(client: Client, controller: &str) -> Self {
        let instance = std::env::var("POD_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| controller.to_string());
        EventSink {
            client,
            controller: controller.to_string(),
            instance,
            sequence: AtomicU64::new(0),
        }
    }

    /// Writes `note` as an event regarding `object`, in the object's namespace.
    pub async fn publish(&self, object: &ObjectReference, note: &Note<'_>) -> kube::Result<()> {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let event = self.event(object, note, Timestamp::now(), sequence);
        let namespace = object.namespace.as_deref().unwrap_or("default");
        Api::<Event>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &event)
            .await
            .map(drop)
    }

    /// The event object: pure, for the tests.
    fn event(
        &self,
        object: &ObjectReference,
        note: &Note<'_>,
        now: Timestamp,
        sequence: u64,
    ) -> Event {
        let regarding = object.name.as_deref().unwrap_or(&self.controller);
        Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{regarding}.{:x}.{sequence:x}",
                    now.as_nanosecond()
                )),
                namespace: object.namespace.clone(),
                ..Default::default()
            },
            action: Some(note.action.to_string()),
            reason: Some(note.reason.as_str().to_string()),
            note: Some(super::truncate(note.note, MAX_NOTE)),
            type_: Some(
                match note.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(object.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> EventSink {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        EventSink {
            client: Client::new(service, "default"),
            controller: "ctl".into(),
            instance: "pod-1".into(),
            sequence: AtomicU64::new(0),
        }
    }

    fn object() -> ObjectReference {
        ObjectReference {
            api_version: Some("onepassword.com/v1".into()),
            kind: Some("OnePasswordItem".into()),
            name: Some("db".into()),
            namespace: Some("apps".into()),
            uid: Some("u-1".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn events_name_the_object_reporter_and_reason_and_cut_long_notes() {
        let long = "x".repeat(3 * MAX_NOTE);
        let note = Note {
            type_: EventType::Warning,
            action: "Sync",
            reason: Reason::ItemNotFound,
            note: &long,
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let e = sink().event(&object(), &note, now, 7);
        assert_eq!(e.metadata.namespace.as_deref(), Some("apps"));
        assert!(e.metadata.name.as_deref().unwrap().starts_with("db."));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("ItemNotFound"));
        assert_eq!(e.action.as_deref(), Some("Sync"));
        assert!(e.note.as_deref().unwrap().len() <= MAX_NOTE);
        assert_eq!(e.regarding, Some(object()));
        assert_eq!(e.reporting_controller.as_deref(), Some("ctl"));
        assert_eq!(e.reporting_instance.as_deref(), Some("pod-1"));
        assert_eq!(e.event_time, Some(MicroTime(now)));
    }

    #[tokio::test]
    async fn two_events_of_the_same_instant_get_different_names() {
        let note = Note {
            type_: EventType::Normal,
            action: "Sync",
            reason: Reason::SecretCreated,
            note: "created",
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let s = sink();
        let a = s.event(&object(), &note, now, 1).metadata.name;
        let b = s.event(&object(), &note, now, 2).metadata.name;
        assert_ne!(a, b);
    }
}
