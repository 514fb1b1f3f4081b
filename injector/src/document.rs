//! Reading a MeshConfig that arrives as text (the local state file) or as a Kubernetes object
//! (the custom resource). Validation is `mesh_config::parse`'s, the same as the proxy's and the
//! CLI's, so the server only ever holds a document a sidecar would accept.

use mesh_config::MeshConfig;
use serde_json::Value;

/// Every problem found, as `<field.path>: <message>` lines.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidDocument(pub String);

/// Parses YAML or JSON text; unknown fields are logged, not fatal (as in a running proxy).
pub fn from_text(text: &str) -> Result<MeshConfig, InvalidDocument> {
    if text.trim().is_empty() {
        return Ok(MeshConfig::default());
    }
    let parsed = mesh_config::parse(text).map_err(|e| InvalidDocument(e.to_string()))?;
    for w in &parsed.warnings {
        tracing::warn!(warning = %w, "MeshConfig");
    }
    Ok(parsed.config)
}

/// Validates a document already in JSON form, e.g. a custom resource from the API server.
/// Server-side fields (status, managedFields, resourceVersion, ...) are dropped first: they are
/// bookkeeping, not config.
pub fn from_value(mut value: Value) -> Result<MeshConfig, InvalidDocument> {
    if let Some(obj) = value.as_object_mut() {
        obj.remove("status");
        if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
            meta.retain(|k, _| k == "name" || k == "namespace");
        }
    }
    from_text(&value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_spec_is_the_default() {
        let c =
            from_text("apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\nspec: {}\n")
                .expect("valid");
        assert_eq!(c, MeshConfig::default());
    }

    #[test]
    fn string_sampled_fraction_is_accepted() {
        let c = from_text("spec: {observability: {tracing: {sampledFraction: \"0.25\"}}}")
            .expect("valid");
        assert_eq!(c.spec.observability.tracing.sampled_fraction, 0.25);
    }

    #[test]
    fn errors_name_the_field() {
        let e = from_text(
            "spec: {observability: {tracing: {enable: true, address: '', sampledFraction: 2}}}",
        )
        .expect_err("invalid");
        let text = e.to_string();
        assert!(
            text.contains("spec.observability.tracing.address"),
            "{text}"
        );
        assert!(
            text.contains("spec.observability.tracing.sampledFraction"),
            "{text}"
        );
        assert!(from_text("spec: {observability: {tracing: {protocol: carrier-pigeon}}}").is_err());
        assert!(from_text("spec: {observability: {tracing: {port: 70000}}}").is_err());
    }

    #[test]
    fn server_fields_are_ignored() {
        let v = serde_json::json!({
            "apiVersion": "config.tracemesh.dev/v1alpha1", "kind": "MeshConfig",
            "metadata": {"name": "mesh-config", "namespace": "mesh-system", "resourceVersion": "7", "uid": "x"},
            "spec": {"sidecar": {"logLevel": "debug"}},
            "status": {"valid": true}
        });
        let c = from_value(v).expect("valid");
        assert_eq!(c.spec.sidecar.log_level, mesh_config::LogLevel::Debug);
    }
}
