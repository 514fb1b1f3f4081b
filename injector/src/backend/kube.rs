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

use super::{BackendError, ConfigSync};
use crate::document;
use crate::inject::NamespaceInfo;
use crate::metrics::ConfigMetrics;
use crate::served::{publish, Served, ServedRx, ServedTx};

pub struct KubeBackend {
    client: Client,
    rx: ServedRx,
    sync: watch::Receiver<ConfigSync>,
    metrics: ConfigMetrics,
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
        let (sync_tx, sync) = watch::channel(ConfigSync::Waiting(
            "waiting for the first list of the MeshConfig".into(),
        ));
        let metrics = ConfigMetrics::default();
        let watcher = tokio::spawn(follow(api, name.to_string(), tx, sync_tx, metrics.clone()));
        Self {
            client,
            rx,
            sync,
            metrics,
            watcher,
        }
    }

    pub fn config_metrics(&self) -> ConfigMetrics {
        self.metrics.clone()
    }

    pub fn sync(&self) -> ConfigSync {
        self.sync.borrow().clone()
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

/// Says why a watch failure keeps the injector from syncing, in the words an operator needs.
fn explain(e: &watcher::Error, namespace: &str) -> String {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => Some(s),
        _ => None,
    };
    match status.map(|s| (s.code, s.message.as_str())) {
        Some((403, m)) => format!(
            "forbidden to list MeshConfigs in {namespace}: check the injector's Role and RoleBinding (RBAC): {m}"
        ),
        Some((404, m)) => format!(
            "the MeshConfig CRD (meshconfigs.config.tracemesh.dev) is not installed: {m}"
        ),
        _ => format!("reading the MeshConfig: {e}"),
    }
}

async fn follow(
    api: Api<DynamicObject>,
    name: String,
    tx: ServedTx,
    sync: watch::Sender<ConfigSync>,
    metrics: ConfigMetrics,
) {
    let namespace = api.namespace().unwrap_or_default().to_string();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api.clone(), config)
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => accept(&api, &tx, &metrics, obj).await,
            Ok(Event::Delete(_)) => {
                tracing::warn!(%name, "MeshConfig deleted; keeping the last good one")
            }
            Ok(Event::InitDone) => {
                if *sync.borrow() != ConfigSync::Synced {
                    tracing::info!(%name, "MeshConfig synced: ready");
                    let _ = sync.send(ConfigSync::Synced);
                }
            }
            Ok(Event::Init) => {}
            Err(e) => {
                let reason = explain(&e, &namespace);
                tracing::warn!(error = %reason, "MeshConfig watch failed; retrying with backoff");
                // Once synced, the last good document stays served: a watch hiccup is not a
                // reason to leave the Service.
                sync.send_if_modified(|s| match s {
                    ConfigSync::Waiting(old) if *old != reason => {
                        *old = reason;
                        true
                    }
                    _ => false,
                });
            }
        }
    }
}

async fn accept(
    api: &Api<DynamicObject>,
    tx: &ServedTx,
    metrics: &ConfigMetrics,
    obj: DynamicObject,
) {
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
            metrics.generation.set(generation.unwrap_or_default());
            publish(tx, Served::new(config));
            json!({"valid": true, "message": "", "observedGeneration": generation})
        }
        Err(e) => {
            tracing::warn!(%name, error = %e, "invalid MeshConfig refused; sidecars keep the last good one");
            metrics.rejected.inc();
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
