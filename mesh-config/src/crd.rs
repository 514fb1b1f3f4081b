//! The MeshConfig CustomResourceDefinition, built whole from the document's types: the one
//! source of `manifests/crd.yaml` and of `mesh install --crds`. A test fails when the checked-in
//! file drifts from this (`UPDATE_CRD=1 cargo test -p mesh-config --test crd` rewrites it).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::resource::{GROUP, PLURAL, VERSION};
use crate::KIND;

/// The CRD's object name, `<plural>.<group>`.
pub fn name() -> String {
    format!("{PLURAL}.{GROUP}")
}

/// What the injector writes under `status` of the MeshConfig it reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Whether the injector accepted the latest spec (false keeps the last good one).
    #[serde(default)]
    pub valid: bool,
    /// Why the latest spec was refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The `metadata.generation` the injector last read.
    #[serde(default)]
    pub observed_generation: i64,
}

/// The CustomResourceDefinition as a JSON value.
pub fn definition() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": name(),
            "labels": {"app.kubernetes.io/part-of": "tracemesh"}
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": format!("{KIND}List"),
                "plural": PLURAL,
                "singular": KIND.to_ascii_lowercase(),
                "shortNames": [KIND.to_ascii_lowercase()]
            },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Tracing", "type": "boolean", "jsonPath": ".spec.observability.tracing.enable"},
                    {"name": "Protocol", "type": "string", "jsonPath": ".spec.observability.tracing.protocol"},
                    {"name": "Valid", "type": "boolean", "jsonPath": ".status.valid"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ],
                "schema": {"openAPIV3Schema": crate::openapi::schema()}
            }]
        }
    })
}

/// The file `manifests/crd.yaml`: a header saying where it comes from, then the CRD.
pub fn yaml() -> String {
    const HEADER: &str = "\
# The MeshConfig custom resource, generated from the mesh-config crate's types: do not edit.
# Regenerate with `UPDATE_CRD=1 cargo test -p mesh-config --test crd`.
#
# The API server checks every field as `mesh config validate` does (a test holds the two to the
# same verdicts), except `metadata`, which it checks itself. Unset fields take the defaults of
# the release that reads them, so the schema stores none.
";
    // Plain strings, numbers, booleans, maps and lists: serialisation cannot fail.
    let body = serde_yaml::to_string(&definition()).unwrap_or_default();
    format!("{HEADER}{}", crate::yaml11::quote_booleans(&body))
}
