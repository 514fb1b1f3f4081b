//! Reading a MeshConfig that arrives as text (the local state file) or as a Kubernetes object
//! (the custom resource), with the contract's validation, so the server only ever holds a
//! document a sidecar would accept.

use mesh_config::MeshConfig;
use serde_json::Value;

/// Every problem found, as `<field.path>: <message>` lines.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct InvalidDocument(pub Vec<String>);

/// Parses YAML or JSON text (JSON is YAML).
pub fn from_text(text: &str) -> Result<MeshConfig, InvalidDocument> {
    if text.trim().is_empty() {
        return Ok(MeshConfig::default());
    }
    let value: Value =
        serde_yaml::from_str(text).map_err(|e| InvalidDocument(vec![format!("document: {e}")]))?;
    from_value(value)
}

/// Validates a document already in JSON form, e.g. a custom resource from the API server.
/// Server-side fields (status, managedFields, ...) are dropped first: they are not config.
pub fn from_value(mut value: Value) -> Result<MeshConfig, InvalidDocument> {
    if value.is_null() {
        return Ok(MeshConfig::default());
    }
    let Some(obj) = value.as_object_mut() else {
        return Err(InvalidDocument(vec!["document: expected a mapping".into()]));
    };
    obj.remove("status");
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.retain(|k, _| k == "name" || k == "namespace");
    }
    // FSM writes sampledFraction as a string; accept a numeric string.
    if let Some(fraction) = value.pointer_mut("/spec/observability/tracing/sampledFraction") {
        if let Value::String(s) = fraction {
            match s.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => {
                    *fraction = serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                }
                _ => {
                    return Err(InvalidDocument(vec![format!(
                        "spec.observability.tracing.sampledFraction: {s:?} is not a number"
                    )]))
                }
            }
        }
    }
    let config: MeshConfig =
        serde_json::from_value(value).map_err(|e| InvalidDocument(vec![format!("spec: {e}")]))?;
    validate(&config)?;
    Ok(config)
}

fn validate(config: &MeshConfig) -> Result<(), InvalidDocument> {
    let mut problems = Vec::new();
    let tracing = &config.spec.observability.tracing;
    let path = "spec.observability.tracing";
    if tracing.port == 0 {
        problems.push(format!("{path}.port: 0 is out of range 1..=65535"));
    }
    if !(0.0..=1.0).contains(&tracing.sampled_fraction) {
        problems.push(format!(
            "{path}.sampledFraction: {} is out of range 0..=1",
            tracing.sampled_fraction
        ));
    }
    if !tracing.endpoint.starts_with('/') {
        problems.push(format!("{path}.endpoint: must start with \"/\""));
    }
    if tracing.address.contains("://") {
        problems.push(format!(
            "{path}.address: a host name or IP, without a scheme"
        ));
    }
    if tracing.enable && tracing.address.trim().is_empty() {
        problems.push(format!("{path}.address: required when tracing is enabled"));
    }
    let traffic = &config.spec.traffic;
    for (name, list) in [
        (
            "inboundPortExclusionList",
            &traffic.inbound_port_exclusion_list,
        ),
        (
            "outboundPortExclusionList",
            &traffic.outbound_port_exclusion_list,
        ),
        ("opaquePorts", &traffic.opaque_ports),
    ] {
        for (i, port) in list.iter().enumerate() {
            if *port == 0 {
                problems.push(format!(
                    "spec.traffic.{name}[{i}]: 0 is out of range 1..=65535"
                ));
            }
        }
    }
    for (i, cidr) in traffic.outbound_ip_range_exclusion_list.iter().enumerate() {
        if let Err(e) = crate::inject::parse_cidr(cidr) {
            problems.push(format!(
                "spec.traffic.outboundIPRangeExclusionList[{i}]: {e}"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(InvalidDocument(problems))
    }
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
