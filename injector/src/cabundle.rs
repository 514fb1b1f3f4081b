//! The `caBundle` of the injector's own MutatingWebhookConfiguration, kept equal to the CA
//! bundle in the Secret so the API server trusts whichever certificate a replica serves.
//!
//! A JSON patch touches only the `caBundle` of the webhooks whose service is this injector,
//! each guarded by a `test` of the webhook's name, so an edit that reorders the list makes the
//! patch fail (and the next check retry) instead of writing into someone else's webhook.

use json_patch::{AddOperation, PatchOperation, TestOperation};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::Value;

use crate::secret::FIELD_MANAGER;

#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("MutatingWebhookConfiguration {name}: {source}")]
    Api { name: String, source: kube::Error },
    #[error("MutatingWebhookConfiguration {name} does not exist (is tracemesh installed?)")]
    Missing { name: String },
}

pub struct CaBundle {
    api: Api<MutatingWebhookConfiguration>,
    name: String,
    service: String,
    namespace: String,
}

impl CaBundle {
    /// `name` is the webhook configuration; `service`/`namespace` pick its webhooks that call
    /// this injector.
    pub fn new(client: Client, name: &str, service: &str, namespace: &str) -> Self {
        Self {
            api: Api::all(client),
            name: name.into(),
            service: service.into(),
            namespace: namespace.into(),
        }
    }

    /// Sets `ca_pem` on every webhook of ours that does not have it; `true` when it patched.
    pub async fn ensure(&self, ca_pem: &str) -> Result<bool, CaBundleError> {
        let api_error = |source| CaBundleError::Api {
            name: self.name.clone(),
            source,
        };
        let Some(config) = self.api.get_opt(&self.name).await.map_err(api_error)? else {
            return Err(CaBundleError::Missing {
                name: self.name.clone(),
            });
        };
        let want = ByteString(ca_pem.as_bytes().to_vec());
        let encoded = serde_json::to_value(&want).unwrap_or(Value::Null);
        let mut ops = Vec::new();
        for (i, hook) in config.webhooks.iter().flatten().enumerate() {
            let ours = hook
                .client_config
                .service
                .as_ref()
                .is_some_and(|s| s.name == self.service && s.namespace == self.namespace);
            if !ours || hook.client_config.ca_bundle.as_ref() == Some(&want) {
                continue;
            }
            ops.push(PatchOperation::Test(TestOperation {
                path: pointer(&format!("/webhooks/{i}/name")),
                value: Value::String(hook.name.clone()),
            }));
            // `add` replaces a present member and creates a missing one.
            ops.push(PatchOperation::Add(AddOperation {
                path: pointer(&format!("/webhooks/{i}/clientConfig/caBundle")),
                value: encoded.clone(),
            }));
        }
        if ops.is_empty() {
            return Ok(false);
        }
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        self.api
            .patch(
                &self.name,
                &params,
                &Patch::<()>::Json(json_patch::Patch(ops)),
            )
            .await
            .map_err(api_error)?;
        tracing::info!(webhook = %self.name, "caBundle updated");
        Ok(true)
    }
}

fn pointer(path: &str) -> json_patch::jsonptr::PointerBuf {
    // Built from numbers and fixed names, so always a valid pointer.
    json_patch::jsonptr::PointerBuf::parse(path).unwrap_or_default()
}
