//! The Secret that holds the webhook's certificates (`mesh-system/mesh-injector-tls`, type
//! `kubernetes.io/tls`). The injector owns it: it creates the material when the Secret is
//! missing, reuses it when present, and renews it on `certs`' schedule. With `--cert-manager`
//! it only reads a Secret cert-manager keeps.
//!
//! Several replicas start at once, so every write is conditional and the API server is the
//! lock: a create loses with 409 AlreadyExists when another replica created first, and a
//! replace carries the `resourceVersion` it was planned from, so it loses with 409 Conflict
//! when the Secret changed meanwhile. The loser reads the winner's Secret and plans again,
//! which then finds nothing to do: every replica ends up serving the same CA.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;

use crate::certs::{self, CertError, Material, Plan};

/// Every write says who made it, as `kubectl` does (`managedFields`).
pub const FIELD_MANAGER: &str = "mesh-injector";
/// Lost races in a row before giving up until the next check; two replicas need one retry,
/// a handful covers any realistic Deployment.
const MAX_ATTEMPTS: usize = 5;

const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const NEXT_CA_KEY: &str = "ca-next.key";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name} is missing: waiting for cert-manager to issue it")]
    NotIssued { namespace: String, name: String },
    #[error("Secret {namespace}/{name}: {source}")]
    Material {
        namespace: String,
        name: String,
        source: CertError,
    },
    #[error("Secret {namespace}/{name}: still changing after {MAX_ATTEMPTS} attempts")]
    Contended { namespace: String, name: String },
}

/// Who makes the certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issuer {
    /// The injector: created when missing, renewed on schedule.
    Injector,
    /// cert-manager: the injector only reads the Secret.
    CertManager,
}

pub struct CertStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
    /// DNS names the serving certificate must be valid for.
    names: Vec<String>,
    issuer: Issuer,
}

impl CertStore {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        names: Vec<String>,
        issuer: Issuer,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: name.into(),
            names,
            issuer,
        }
    }

    fn api_error(&self, source: kube::Error) -> StoreError {
        StoreError::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    fn material_error(&self, source: CertError) -> StoreError {
        StoreError::Material {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// The material to serve now: read, and when due created or renewed.
    pub async fn sync(&self, now: SystemTime) -> Result<Material, StoreError> {
        if self.issuer == Issuer::CertManager {
            return self.read_issued(now).await;
        }
        for _ in 0..MAX_ATTEMPTS {
            let found = self
                .api
                .get_opt(&self.name)
                .await
                .map_err(|e| self.api_error(e))?;
            let existing = found.as_ref().map(material_of);
            let (material, reason) = match certs::plan(existing.as_ref(), &self.names, now)
                .map_err(|e| self.material_error(e))?
            {
                Plan::Keep => return existing.ok_or_else(|| self.contended()),
                Plan::Write { material, reason } => (material, reason),
            };
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            let written = match &found {
                None => {
                    let secret = self.secret(&material, None);
                    self.api.create(&params, &secret).await
                }
                Some(old) => {
                    let secret = self.secret(&material, old.metadata.resource_version.clone());
                    self.api.replace(&self.name, &params, &secret).await
                }
            };
            match written {
                Ok(_) => {
                    tracing::info!(secret = %self.name, %reason, "webhook certificate written");
                    return Ok(material);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::info!(secret = %self.name, "another replica wrote the certificate first; using theirs");
                }
                Err(e) => return Err(self.api_error(e)),
            }
        }
        Err(self.contended())
    }

    fn contended(&self) -> StoreError {
        StoreError::Contended {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// cert-manager's Secret: used as it is, once its certificate verifies against its
    /// `ca.crt` for the Service name the API server and sidecars dial.
    async fn read_issued(&self, now: SystemTime) -> Result<Material, StoreError> {
        let found = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error(e))?;
        let Some(secret) = found else {
            return Err(StoreError::NotIssued {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
            });
        };
        let material = material_of(&secret);
        certs::verify(&material, &self.names[..1.min(self.names.len())], now)
            .map_err(|e| self.material_error(e))?;
        Ok(material)
    }

    fn secret(&self, m: &Material, resource_version: Option<String>) -> Secret {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
        };
        put(TLS_CRT, &m.cert_pem);
        put(TLS_KEY, &m.key_pem);
        put(CA_CRT, &m.ca_bundle_pem);
        if let Some(k) = &m.ca_key_pem {
            put(CA_KEY, k);
        }
        if let Some(k) = &m.next_ca_key_pem {
            put(NEXT_CA_KEY, k);
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version,
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/name".to_string(),
                        "mesh-injector".to_string(),
                    ),
                    (
                        "app.kubernetes.io/part-of".to_string(),
                        "tracemesh".to_string(),
                    ),
                ])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        }
    }
}

/// The material as the Secret holds it; a missing key reads as empty, which `certs` refuses.
fn material_of(secret: &Secret) -> Material {
    let get = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    Material {
        ca_bundle_pem: get(CA_CRT).unwrap_or_default(),
        cert_pem: get(TLS_CRT).unwrap_or_default(),
        key_pem: get(TLS_KEY).unwrap_or_default(),
        ca_key_pem: get(CA_KEY),
        next_ca_key_pem: get(NEXT_CA_KEY),
    }
}
