//! Taking over objects the official operator handled.
//!
//! It puts a finalizer, `onepassword.com/finalizer.secret`, on every OnePasswordItem and every
//! annotated Deployment it reconciles, and removes it only after deleting their Secret itself
//! (`internal/controller/onepassworditem_controller.go` and `deployment_controller.go` in
//! 1Password/onepassword-operator). Once it is gone nothing removes that finalizer, and
//! deleting those objects would hang in Terminating for ever. Our Secrets go with their owners
//! through owner references, so we need no finalizer: we remove that one, and only that one,
//! from the objects we look after, live (at take-over) or being deleted.
//!
//! The rest of what it leaves needs nothing: its Secrets carry owner references to the same
//! objects (by uid, without `controller`), which [`super::sync::plan::is_ours`] recognises, and the
//! annotations it writes (`item-path`, `item-version` on Secrets, `last-restarted` on pod
//! templates) are never taken for requests.

use std::fmt::Debug;

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::de::DeserializeOwned;
use serde_json::json;

/// The official operator's finalizer.
pub const OFFICIAL_FINALIZER: &str = "onepassword.com/finalizer.secret";

/// Attempts to remove the finalizer when the list changes under us.
const ATTEMPTS: usize = 3;

/// Whether the object carries the official operator's finalizer.
pub fn has_official_finalizer<K: Resource>(obj: &K) -> bool {
    obj.meta()
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == OFFICIAL_FINALIZER)
}

/// A JSON patch that removes the official finalizer from `finalizers`, and fails (test op)
/// rather than remove another one if the list changed meanwhile. `None` when it is not there.
pub fn finalizer_removal(finalizers: &[String]) -> Option<json_patch::Patch> {
    let index = finalizers.iter().position(|f| f == OFFICIAL_FINALIZER)?;
    let path = format!("/metadata/finalizers/{index}");
    let patch = json!([
        {"op": "test", "path": path, "value": OFFICIAL_FINALIZER},
        {"op": "remove", "path": path},
    ]);
    Some(serde_json::from_value(patch).expect("a valid JSON patch"))
}

/// Removes the official finalizer from `obj` if it has it. A failure matters only to an object
/// being deleted (its deletion waits for it): for a live one it is logged, and tried again at
/// the next reconcile.
pub async fn take_over<K>(api: &Api<K>, obj: &K) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    if !has_official_finalizer(obj) {
        return Ok(());
    }
    match drop_official_finalizer(api, obj).await {
        Err(e) if obj.meta().deletion_timestamp.is_none() => {
            tracing::warn!(error = %e, finalizer = OFFICIAL_FINALIZER, "cannot remove the official operator's finalizer; trying again at the next reconcile");
            Ok(())
        }
        done => done,
    }
}

/// Removes the official finalizer from `obj`, if it has it. When the finalizers changed since
/// `obj` was read (the test op fails), they are read again and the removal tried again.
pub async fn drop_official_finalizer<K>(api: &Api<K>, obj: &K) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let name = obj.name_any();
    let mut finalizers = obj.finalizers().to_vec();
    for _ in 0..ATTEMPTS {
        let Some(patch) = finalizer_removal(&finalizers) else {
            return Ok(());
        };
        match api
            .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    finalizer = OFFICIAL_FINALIZER,
                    "removed the official operator's finalizer (owner references delete the Secret)"
                );
                return Ok(());
            }
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            // The list moved: read it again.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => {
                match api.get_opt(&name).await? {
                    Some(fresh) => finalizers = fresh.finalizers().to_vec(),
                    None => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use k8s_openapi::{api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::ObjectMeta};
    use kube::client::Body;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_the_official_finalizer_is_removed_and_only_where_it_still_is() {
        let patch = finalizer_removal(&strings(&["a/keep", OFFICIAL_FINALIZER, "b/keep"])).unwrap();
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": OFFICIAL_FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ])
        );
        // Applied to the list it was made for, it leaves the others in order.
        let mut doc = json!({"metadata": {"finalizers": ["a/keep", OFFICIAL_FINALIZER, "b/keep"]}});
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["a/keep", "b/keep"]));
        // Applied to a list that moved, it fails rather than remove another finalizer.
        let mut moved = json!({"metadata": {"finalizers": ["a/keep", "b/keep"]}});
        assert!(json_patch::patch(&mut moved, &patch).is_err());
        assert!(finalizer_removal(&strings(&["a/keep"])).is_none());
        assert!(finalizer_removal(&[]).is_none());
    }

    fn deployment(finalizers: &[&str]) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("apps".into()),
                finalizers: Some(strings(finalizers)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn json_response(code: u16, body: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    async fn body_of(request: Request<Body>) -> serde_json::Value {
        let bytes = request.into_body().collect_bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_list_that_moved_is_read_again_and_the_finalizer_removed_at_its_new_place() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Deployment> = Api::namespaced(kube::Client::new(service, "default"), "apps");
        let server = tokio::spawn(async move {
            // The first patch aims at index 0; someone added a finalizer in front meanwhile.
            let (request, send) = handle.next_request().await.expect("a patch");
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(
                request.uri().path(),
                "/apis/apps/v1/namespaces/apps/deployments/web"
            );
            assert_eq!(
                request.headers()["content-type"],
                "application/json-patch+json"
            );
            assert_eq!(body_of(request).await[0]["path"], "/metadata/finalizers/0");
            send.send_response(json_response(
                422,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": "the test operation failed", "reason": "Invalid", "code": 422}),
            ));
            let (request, send) = handle.next_request().await.expect("a get");
            assert_eq!(request.method(), http::Method::GET);
            send.send_response(json_response(
                200,
                serde_json::to_value(deployment(&["x/first", OFFICIAL_FINALIZER])).unwrap(),
            ));
            let (request, send) = handle.next_request().await.expect("a second patch");
            let body = body_of(request).await;
            assert_eq!(body[0]["path"], "/metadata/finalizers/1");
            assert_eq!(
                body[1],
                json!({"op": "remove", "path": "/metadata/finalizers/1"})
            );
            send.send_response(json_response(
                200,
                serde_json::to_value(deployment(&["x/first"])).unwrap(),
            ));
        });
        drop_official_finalizer(&api, &deployment(&[OFFICIAL_FINALIZER]))
            .await
            .unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_object_without_the_finalizer_costs_no_request() {
        let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Deployment> = Api::namespaced(kube::Client::new(service, "default"), "apps");
        drop_official_finalizer(&api, &deployment(&["a/keep"]))
            .await
            .unwrap();
    }
}
