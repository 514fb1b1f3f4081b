//! The Kubernetes backend: namespaces straight from the API server, the MeshConfig custom
//! resource through a `kube::runtime::watcher`, so a `kubectl patch meshconfig` reaches the
//! config server (and every long-polling sidecar) as one watch event, with no resync period.
//!
//! An invalid resource is refused: logged, written to the resource's `status` (`valid: false`
//! and the message naming the field), and the last good document stays served.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::BackendError;
use crate::document;
use crate::inject::NamespaceInfo;
use crate::served::{publish, Served, ServedRx, ServedTx};

pub struct KubeBackend {
    client: Client,
    rx: ServedRx,
    watcher: JoinHandle<()>,
}

impl Drop for KubeBackend {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl KubeBackend {
    /// Starts watching `<namespace>/<name>` MeshConfig. Until the first list answers, and when
    /// no resource exists, the defaults are served (every field has one).
    pub fn start(client: Client, namespace: &str, name: &str) -> Self {
        let (tx, rx) = watch::channel(Arc::new(Served::default()));
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            namespace,
            &mesh_config::resource::api_resource(),
        );
        let watcher = tokio::spawn(follow(api, name.to_string(), tx));
        Self {
            client,
            rx,
            watcher,
        }
    }

    pub fn config(&self) -> ServedRx {
        self.rx.clone()
    }

    pub async fn namespace(&self, name: &str) -> Result<Option<NamespaceInfo>, BackendError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        Ok(api.get_opt(name).await?.map(|ns| NamespaceInfo {
            labels: ns.metadata.labels.unwrap_or_default(),
            annotations: ns.metadata.annotations.unwrap_or_default(),
        }))
    }
}

async fn follow(api: Api<DynamicObject>, name: String, tx: ServedTx) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api.clone(), config)
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => accept(&api, &tx, obj).await,
            Ok(Event::Delete(_)) => {
                tracing::warn!(%name, "MeshConfig deleted; keeping the last good one")
            }
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => tracing::warn!(error = %e, "MeshConfig watch failed; retrying with backoff"),
        }
    }
}

async fn accept(api: &Api<DynamicObject>, tx: &ServedTx, obj: DynamicObject) {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let old_status = obj.data.get("status").cloned().unwrap_or(Value::Null);
    let value = match serde_json::to_value(&obj) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode the MeshConfig object");
            return;
        }
    };
    let status = match document::from_value(value) {
        Ok(config) => {
            tracing::info!(%name, ?generation, "MeshConfig accepted");
            publish(tx, Served::new(config));
            json!({"valid": true, "message": "", "observedGeneration": generation})
        }
        Err(e) => {
            tracing::warn!(%name, error = %e, "invalid MeshConfig refused; sidecars keep the last good one");
            let current = tx.borrow().with_error(e.to_string());
            publish(tx, current);
            json!({"valid": false, "message": e.to_string(), "observedGeneration": generation})
        }
    };
    if old_status != status {
        let patch = Patch::Merge(json!({ "status": status }));
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &patch)
            .await
        {
            tracing::warn!(%name, error = %e, "cannot write the MeshConfig status");
        }
    }
}
