//! Reading a MeshConfig from text (YAML or JSON), applying RFC 7386 merge patches, and writing
//! it back out. Every path into a `MeshConfig` ends in the same checks.

use serde_json::Value;

use crate::schema;
use crate::{ConfigError, FieldError, MeshConfig};

/// A valid document and the unknown fields it carried (a running proxy logs them and goes on).
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub config: MeshConfig,
    /// `<field.path>: unknown field ...`, one per unknown field.
    pub warnings: Vec<String>,
}

/// Parses YAML or JSON; unknown fields become warnings. All errors are reported at once.
pub fn parse(text: &str) -> Result<Parsed, ConfigError> {
    from_value(read_value(text)?, false)
}

/// Like [`parse`], but unknown fields are errors (`mesh config validate`), and so is a value
/// that `kubectl` would read differently (a bare `off`, see `yaml11`).
pub fn parse_strict(text: &str) -> Result<MeshConfig, ConfigError> {
    let checked = from_value(read_value(text)?, true).map(|p| p.config);
    let misread = if looks_like_json(text) {
        Vec::new()
    } else {
        crate::yaml11::bare_booleans(text)
    };
    match (checked, misread.is_empty()) {
        (checked, true) => checked,
        (Ok(_), false) => Err(ConfigError::Invalid(misread)),
        (Err(ConfigError::Invalid(mut problems)), false) => {
            problems.extend(misread);
            Err(ConfigError::Invalid(problems))
        }
        (Err(err), false) => Err(err),
    }
}

fn looks_like_json(text: &str) -> bool {
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    trimmed.starts_with('{') && serde_json::from_str::<Value>(trimmed).is_ok()
}

/// RFC 7386 merge patch on the JSON form (null deletes a field, which then takes its default;
/// arrays are replaced wholesale), then the full checks. Unknown fields in the result are
/// errors: a typo in a patch should fail, not vanish.
pub fn merge_patch(doc: &MeshConfig, patch: &Value) -> Result<MeshConfig, ConfigError> {
    let mut value = doc.to_json_value();
    json_patch::merge(&mut value, patch);
    if value.is_null() {
        // A null patch replaces the whole document with null (RFC 7386), which is no MeshConfig;
        // read as an empty document it would silently reset every setting to its default.
        return Err(ConfigError::Invalid(vec![FieldError::new(
            "",
            "the patched document must be a mapping, not null",
        )]));
    }
    from_value(value, true).map(|p| p.config)
}

impl MeshConfig {
    /// The document as YAML, every field written out, readable by YAML 1.1 tools (`kubectl`)
    /// as well: `stitching: 'off'` stays a string there.
    pub fn to_yaml(&self) -> String {
        // Only strings, integers, floats and enums: serialisation cannot fail.
        crate::yaml11::quote_booleans(&serde_yaml::to_string(self).unwrap_or_default())
    }

    /// The document as a JSON value, every field written out.
    pub fn to_json_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// JSON first when it looks like JSON, for its better messages; YAML otherwise (or if a
/// `{`-document is YAML flow style rather than JSON).
fn read_value(text: &str) -> Result<Value, ConfigError> {
    // Size, depth and alias expansion first: the parses below build whatever the text asks.
    crate::bounded::check(text)?;
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if trimmed.is_empty() {
        // An empty file is what a reader sees between truncate and write: never a config.
        return Err(ConfigError::Syntax("the document is empty".into()));
    }
    if trimmed.starts_with('{') {
        match serde_json::from_str(trimmed) {
            Ok(v) => return Ok(v),
            Err(json_err) => {
                return serde_yaml::from_str(trimmed)
                    .map_err(|_| ConfigError::Syntax(format!("invalid JSON: {json_err}")))
            }
        }
    }
    serde_yaml::from_str(trimmed).map_err(|e| ConfigError::Syntax(format!("invalid YAML: {e}")))
}

fn from_value(value: Value, strict: bool) -> Result<Parsed, ConfigError> {
    if !(value.is_object() || value.is_null()) {
        return Err(ConfigError::Invalid(vec![FieldError::new(
            "",
            "the document must be a mapping",
        )]));
    }
    let (cleaned, findings) = schema::check(value);
    let mut errors = findings.errors;
    let config: MeshConfig = serde_json::from_value(cleaned).map_err(|e| {
        // The walk removed every field serde could reject; this is a schema/type mismatch.
        ConfigError::Invalid(vec![FieldError::new("", e.to_string())])
    })?;
    errors.extend(config.problems());
    let mut warnings = Vec::new();
    if strict {
        errors.extend(findings.unknown);
    } else {
        warnings = findings.unknown.iter().map(ToString::to_string).collect();
    }
    if errors.is_empty() {
        Ok(Parsed { config, warnings })
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LogLevel, PropagationFormat, Protocol};
    use serde_json::json;
    use std::time::Duration;

    fn messages(err: ConfigError) -> Vec<String> {
        err.problems().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn empty_forms_are_the_defaults() {
        for text in [
            "{}",
            "spec: {}",
            "spec:",
            "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\nspec:\n",
        ] {
            let parsed = parse(text).unwrap();
            assert_eq!(parsed.config, MeshConfig::default(), "{text}");
            assert!(parsed.warnings.is_empty());
        }
    }

    #[test]
    fn empty_text_is_an_error() {
        assert!(matches!(parse("  \n"), Err(ConfigError::Syntax(_))));
        assert!(parse("# only a comment\n").is_ok());
    }

    #[test]
    fn contract_example_yaml() {
        let text = r#"
apiVersion: config.tracemesh.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh-config, namespace: mesh-system}
spec:
  observability:
    tracing:
      enable: true
      address: collector.local
      port: 4318
      endpoint: /v1/traces
      protocol: otlp-http
      sampledFraction: "0.25"
  traffic:
    inboundPortExclusionList: [22]
    outboundPortExclusionList: []
    outboundIPRangeExclusionList: ["10.0.0.0/8", "fd00::/8", "169.254.169.254/32"]
    opaquePorts: [3306]
  sidecar:
    logLevel: debug
"#;
        let c = parse_strict(text).unwrap();
        let t = &c.spec.observability.tracing;
        assert!(t.enable);
        assert_eq!(t.port, 4318);
        assert_eq!(t.protocol, Protocol::OtlpHttp);
        assert_eq!(t.sampled_fraction, 0.25);
        assert_eq!(c.spec.traffic.inbound_port_exclusion_list, [22]);
        assert_eq!(c.spec.traffic.opaque_ports, [3306]);
        assert_eq!(c.spec.sidecar.log_level, LogLevel::Debug);
    }

    /// The spelling the annotation and `MESH_STITCHING` use is the document's.
    #[test]
    fn stitching_mode_from_text() {
        use crate::Stitching;
        for mode in Stitching::ALL {
            assert_eq!(mode.as_str().parse::<Stitching>(), Ok(mode));
            assert_eq!(mode.to_string(), mode.as_str());
        }
        assert_eq!(
            "guess".parse::<Stitching>(),
            Err(r#"unknown stitching mode "guess" (expected off, request-id, in-flight)"#.into())
        );
    }

    #[test]
    fn json_is_accepted() {
        let c =
            parse(r#"{"spec":{"observability":{"tracing":{"port":9412,"sampledFraction":0.5}}}}"#)
                .unwrap()
                .config;
        assert_eq!(c.spec.observability.tracing.port, 9412);
        assert_eq!(c.spec.observability.tracing.sampled_fraction, 0.5);
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let text = r#"
spec:
  observability:
    tracing:
      enable: true
      address: ""
      port: 70000
      endpoint: api/v2/spans
      protocol: foo
      sampledFraction: "2"
  traffic:
    inboundPortExclusionList: [0, 80]
    outboundIPRangeExclusionList: ["10.0.0.0/40", 5]
    opaquePorts: "3306"
  sidecar:
    logLevel: loud
"#;
        let got = messages(parse(text).unwrap_err());
        let want = [
            "spec.observability.tracing.port: 70000 is out of range 1..=65535",
            r#"spec.observability.tracing.protocol: unknown protocol "foo" (expected zipkin, otlp-http, otlp-grpc)"#,
            "spec.traffic.inboundPortExclusionList[0]: 0 is out of range 1..=65535",
            "spec.traffic.outboundIPRangeExclusionList[1]: expected a string, found number 5",
            r#"spec.traffic.opaquePorts: expected a list of ports, found string "3306""#,
            r#"spec.sidecar.logLevel: unknown log level "loud" (expected error, warn, info, debug, trace)"#,
            "spec.observability.tracing.address: must be set when tracing is enabled",
            r#"spec.observability.tracing.endpoint: "api/v2/spans" must start with "/""#,
            "spec.observability.tracing.sampledFraction: 2 is out of range 0..=1",
        ];
        for w in want {
            assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
    }

    #[test]
    fn propagation_and_url_bound() {
        let t = parse("spec: {}\n")
            .unwrap()
            .config
            .spec
            .observability
            .tracing;
        assert_eq!(
            t.propagation,
            [PropagationFormat::B3multi, PropagationFormat::Tracecontext]
        );
        assert_eq!(t.max_url_tag_length, 1024);
        let c = parse_strict(
            "spec:\n  observability:\n    tracing:\n      propagation: [tracecontext]\n      maxUrlTagLength: 256\n",
        )
        .unwrap();
        let t = &c.spec.observability.tracing;
        assert_eq!(t.propagation, [PropagationFormat::Tracecontext]);
        assert_eq!(t.max_url_tag_length, 256);

        let got = messages(
            parse(
                "spec:\n  observability:\n    tracing:\n      propagation: [b3multi, b3, 7]\n      maxUrlTagLength: 10\n",
            )
            .unwrap_err(),
        );
        assert_eq!(
            got,
            [
                "spec.observability.tracing.maxUrlTagLength: 10 is out of range 32..=8192",
                r#"spec.observability.tracing.propagation[1]: unknown propagation format "b3" (expected b3multi, tracecontext)"#,
                "spec.observability.tracing.propagation[2]: expected a propagation format string, found number 7",
            ]
        );
        let got = messages(
            parse("spec:\n  observability:\n    tracing:\n      propagation: []\n      maxUrlTagLength: \"1k\"\n")
                .unwrap_err(),
        );
        assert_eq!(
            got,
            [
                r#"spec.observability.tracing.maxUrlTagLength: expected a whole number in 32..=8192, found string "1k""#,
                "spec.observability.tracing.propagation: must name at least one format (b3multi, tracecontext)",
            ]
        );
    }

    #[test]
    fn sidecar_limits_are_read_and_checked() {
        let c = parse_strict(
            "spec:\n  sidecar:\n    headerReadTimeout: 500ms\n    httpIdleTimeout: 1m30s\n    tcpIdleTimeout: 2h\n    http2KeepaliveInterval: \"0\"\n    http2KeepaliveTimeout: 1s\n    connectTimeout: 250ms\n    responseTimeout: 15s\n    maxConnections: 50\n    maxConnectionsPerDestination: 7\n    http2ConnectionsPerDestination: 2\n    terminationDrainDuration: 0s\n",
        )
        .unwrap();
        let s = &c.spec.sidecar;
        assert_eq!(s.header_read_timeout.get(), Duration::from_millis(500));
        assert_eq!(s.http_idle_timeout.get(), Duration::from_secs(90));
        assert_eq!(s.tcp_idle_timeout.get(), Duration::from_secs(7200));
        assert_eq!(s.http2_keepalive_interval.non_zero(), None);
        assert_eq!(s.connect_timeout.get(), Duration::from_millis(250));
        assert_eq!(s.response_timeout.get(), Duration::from_secs(15));
        assert_eq!(
            (s.max_connections, s.max_connections_per_destination),
            (50, 7)
        );
        assert_eq!(s.http2_connections_per_destination, 2);
        assert_eq!(s.termination_drain_duration.non_zero(), None);
        // Written back as strings with units, and read back the same.
        assert_eq!(parse_strict(&c.to_yaml()).unwrap(), c);

        let got = messages(
            parse("spec:\n  sidecar:\n    headerReadTimeout: 10\n    httpIdleTimeout: soon\n    tcpIdleTimeout: -1s\n    connectTimeout: 0s\n    responseTimeout: [1s]\n    maxConnections: -5\n    maxConnectionsPerDestination: 1.5\n    terminationDrainDuration: 2h\n")
                .unwrap_err(),
        );
        let want = [
            r#"spec.sidecar.headerReadTimeout: expected a duration string such as "10s", found number 10"#,
            r#"spec.sidecar.httpIdleTimeout: "soon" is not a duration (expected e.g. "10s", "500ms", "1m30s")"#,
            r#"spec.sidecar.tcpIdleTimeout: "-1s" is not a duration (expected e.g. "10s", "500ms", "1m30s")"#,
            r#"spec.sidecar.responseTimeout: expected a duration string such as "10s", found a list"#,
            "spec.sidecar.maxConnections: -5 is out of range 1..=1000000",
            "spec.sidecar.maxConnectionsPerDestination: expected a whole number in 1..=1000000, found number 1.5",
            "spec.sidecar.connectTimeout: 0s is out of range 1ms..=5m",
            "spec.sidecar.terminationDrainDuration: 2h is out of range 0s..=1h",
        ];
        for w in want {
            assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
    }

    #[test]
    fn bad_types_are_named() {
        let got = messages(
            parse("spec:\n  observability:\n    tracing:\n      enable: \"yes\"\n      port: 9411.5\n      sampledFraction: abc\n  traffic: []\n")
                .unwrap_err(),
        );
        assert_eq!(
            got,
            [
                r#"spec.observability.tracing.enable: expected a boolean, found string "yes""#,
                "spec.observability.tracing.port: expected an integer port number, found number 9411.5",
                r#"spec.observability.tracing.sampledFraction: "abc" is not a number"#,
                "spec.traffic: expected a mapping, found a list",
            ]
        );
    }

    #[test]
    fn api_version_and_kind_must_match_when_present() {
        let got = messages(parse("apiVersion: v1\nkind: ConfigMap\n").unwrap_err());
        assert_eq!(
            got,
            [
                r#"apiVersion: expected "config.tracemesh.dev/v1alpha1", found "v1""#,
                r#"kind: expected "MeshConfig", found "ConfigMap""#,
            ]
        );
        assert!(parse("[1, 2]").is_err());
        assert!(matches!(parse("a: [b"), Err(ConfigError::Syntax(_))));
        assert!(matches!(parse("{\"a\": "), Err(ConfigError::Syntax(_))));
    }

    #[test]
    fn unknown_fields_warn_or_fail() {
        let text = "spec:\n  observability:\n    tracing:\n      enabled: true\n  extra: 1\nmetadata:\n  labels: {a: b}\n";
        let parsed = parse(text).unwrap();
        let mut warnings = parsed.warnings.clone();
        warnings.sort();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("spec.extra: unknown field"));
        assert!(warnings[1].starts_with("spec.observability.tracing.enabled: unknown field"));
        let mut strict = messages(parse_strict(text).unwrap_err());
        strict.sort();
        assert_eq!(strict.len(), 2);
        assert!(strict[1].starts_with("spec.observability.tracing.enabled: unknown field"));
    }

    #[test]
    fn stitching_modes() {
        use crate::Stitching;
        assert_eq!(
            parse("spec: {}")
                .unwrap()
                .config
                .spec
                .observability
                .tracing
                .stitching,
            Stitching::RequestId
        );
        for mode in Stitching::ALL {
            let text = format!(
                "spec:\n  observability:\n    tracing:\n      stitching: \"{mode}\"\n",
                mode = mode.as_str()
            );
            let c = parse_strict(&text).unwrap();
            assert_eq!(c.spec.observability.tracing.stitching, mode);
            // Written back quoted where YAML 1.1 would misread it, and read back the same.
            let yaml = c.to_yaml();
            assert_eq!(parse_strict(&yaml).unwrap(), c, "{yaml}");
        }
        let off = parse_strict("spec: {observability: {tracing: {stitching: 'off'}}}").unwrap();
        assert!(off.to_yaml().contains("stitching: 'off'"));
        assert_eq!(
            messages(
                parse("spec: {observability: {tracing: {stitching: sometimes}}}").unwrap_err()
            ),
            [
                r#"spec.observability.tracing.stitching: unknown stitching mode "sometimes" (expected off, request-id, in-flight)"#
            ]
        );
        // A bare `off` is a string to serde_yaml (YAML 1.2) but `false` to kubectl (YAML 1.1):
        // the proxy reads it, `mesh config validate` asks for quotes.
        let bare = "spec:\n  observability:\n    tracing:\n      stitching: off\n";
        assert_eq!(
            parse(bare)
                .unwrap()
                .config
                .spec
                .observability
                .tracing
                .stitching,
            Stitching::Off
        );
        let got = messages(parse_strict(bare).unwrap_err());
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("spec.observability.tracing.stitching: write 'off' in quotes"));
        // JSON has no such ambiguity.
        assert!(
            parse_strict(r#"{"spec":{"observability":{"tracing":{"stitching":"off"}}}}"#).is_ok()
        );
    }

    /// `kubectl get meshconfig -o yaml` output: the server's bookkeeping in `metadata` and the
    /// injector's `status` are carried, not refused.
    #[test]
    fn an_object_as_kubectl_prints_it_is_valid() {
        let text = r#"apiVersion: config.tracemesh.dev/v1alpha1
kind: MeshConfig
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"config.tracemesh.dev/v1alpha1","kind":"MeshConfig","metadata":{"annotations":{},"name":"mesh-config","namespace":"mesh-system"},"spec":{"observability":{"tracing":{}}}}
  creationTimestamp: "2026-12-01T10:00:00Z"
  finalizers: []
  generation: 3
  labels:
    app.kubernetes.io/part-of: tracemesh
  managedFields:
  - apiVersion: config.tracemesh.dev/v1alpha1
    fieldsType: FieldsV1
    fieldsV1:
      f:spec:
        f:observability:
          f:tracing:
            f:enable: {}
    manager: mesh
    operation: Update
    time: "2026-12-01T10:05:00Z"
  name: mesh-config
  namespace: mesh-system
  resourceVersion: "81234"
  uid: 0b0c0d0e-1111-2222-3333-444455556666
spec:
  observability:
    tracing:
      enable: true
      address: zipkin.tracing
      sampledFraction: "0.5"
      stitching: "off"
  traffic:
    outboundIPRangeExclusionList:
    - 169.254.169.254/32
status:
  message: ""
  observedGeneration: 3
  valid: true
"#;
        let c = parse_strict(text).unwrap();
        assert!(c.spec.observability.tracing.enable);
        assert_eq!(c.metadata.name, "mesh-config");
        // The settings are still checked.
        let bad = text.replace("169.254.169.254/32", "169.254.169.254");
        let got = messages(parse_strict(&bad).unwrap_err());
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("spec.traffic.outboundIPRangeExclusionList[0]: "),
            "{got:?}"
        );
    }

    #[test]
    fn null_means_default() {
        let c = parse("spec:\n  traffic:\n    opaquePorts: null\n  sidecar: ~\n")
            .unwrap()
            .config;
        assert_eq!(c, MeshConfig::default());
    }

    #[test]
    fn yaml_and_json_round_trip() {
        let mut c = MeshConfig::default();
        c.spec.observability.tracing.enable = true;
        c.spec.observability.tracing.address = "127.0.0.1".into();
        c.spec.traffic.outbound_ip_range_exclusion_list = vec!["10.0.0.0/8".into()];
        assert_eq!(parse_strict(&c.to_yaml()).unwrap(), c);
        assert_eq!(parse_strict(&c.to_json_value().to_string()).unwrap(), c);
        assert_eq!(
            c.to_json_value()["spec"]["observability"]["tracing"]["port"],
            json!(9411)
        );
    }

    #[test]
    fn merge_patch_sets_fields() {
        let patched = merge_patch(
            &MeshConfig::default(),
            &json!({"spec": {"observability": {"tracing": {"enable": true, "address": "jaeger", "sampledFraction": "0.5"}}}}),
        )
        .unwrap();
        let t = &patched.spec.observability.tracing;
        assert!(t.enable);
        assert_eq!(t.address, "jaeger");
        assert_eq!(t.sampled_fraction, 0.5);
        assert_eq!(t.port, 9411, "untouched fields stay");
    }

    #[test]
    fn merge_patch_null_deletes_back_to_default() {
        let mut c = MeshConfig::default();
        c.spec.observability.tracing.port = 4318;
        c.spec.traffic.opaque_ports = vec![1];
        let patched = merge_patch(
            &c,
            &json!({"spec": {"observability": {"tracing": {"port": null}}, "traffic": {"opaquePorts": null}}}),
        )
        .unwrap();
        assert_eq!(patched, MeshConfig::default());
        // A null for a whole subtree resets all of it.
        let patched = merge_patch(&c, &json!({"spec": null})).unwrap();
        assert_eq!(patched, MeshConfig::default());
    }

    #[test]
    fn merge_patch_replaces_arrays_wholesale() {
        let mut c = MeshConfig::default();
        c.spec.traffic.inbound_port_exclusion_list = vec![1, 2, 3];
        let patched = merge_patch(
            &c,
            &json!({"spec": {"traffic": {"inboundPortExclusionList": [4]}}}),
        )
        .unwrap();
        assert_eq!(patched.spec.traffic.inbound_port_exclusion_list, [4]);
    }

    /// RFC 7386 appendix A, row by row, through our `merge_patch`. The appendix's `a`, `b`, `c`
    /// become MeshConfig fields of the same shape, and its result (the oracle) becomes the
    /// document we expect, with a removed member back at its default. Rows whose result is not a
    /// MeshConfig (the whole document replaced by an array, a string or null; a list turned into
    /// a string or an object) must be refused with the field path, never stored. The two rows
    /// about nulls kept in the target and members it lacks have no counterpart: a MeshConfig is
    /// always written out in full, with no nulls.
    #[test]
    fn merge_patch_rfc7386_appendix_semantics() {
        let defaults = MeshConfig::default().to_json_value();
        let default_address = defaults["spec"]["observability"]["tracing"]["address"].clone();
        let default_port = defaults["spec"]["observability"]["tracing"]["port"].clone();
        // `fields` of spec.observability.tracing set in the target, then `patch` under it, then
        // the RFC's result as the tracing object we expect.
        let tracing = |fields: Value| {
            let mut doc = defaults.clone();
            for (k, v) in fields.as_object().unwrap() {
                doc["spec"]["observability"]["tracing"][k] = v.clone();
            }
            doc
        };
        let under_tracing = |patch: Value| json!({"spec": {"observability": {"tracing": patch}}});
        let rows = [
            // {"a":"b"} + {"a":"c"} = {"a":"c"}
            (
                tracing(json!({"address": "b.example"})),
                under_tracing(json!({"address": "c.example"})),
                tracing(json!({"address": "c.example"})),
            ),
            // {"a":"b"} + {"b":"c"} = {"a":"b","b":"c"}
            (
                tracing(json!({"address": "b.example"})),
                under_tracing(json!({"endpoint": "/c"})),
                tracing(json!({"address": "b.example", "endpoint": "/c"})),
            ),
            // {"a":"b"} + {"a":null} = {}
            (
                tracing(json!({"address": "b.example"})),
                under_tracing(json!({"address": null})),
                tracing(json!({"address": default_address})),
            ),
            // {"a":"b","b":"c"} + {"a":null} = {"b":"c"}
            (
                tracing(json!({"address": "b.example", "endpoint": "/c"})),
                under_tracing(json!({"address": null})),
                tracing(json!({"address": default_address, "endpoint": "/c"})),
            ),
            // {"a":{"b":"c"}} + {"a":{"b":"d","c":null}} = {"a":{"b":"d"}}
            (
                tracing(json!({"address": "c.example", "port": 9999})),
                under_tracing(json!({"address": "d.example", "port": null})),
                tracing(json!({"address": "d.example", "port": default_port})),
            ),
            // {"a":[{"b":"c"}]} + {"a":[1]} = {"a":[1]}: arrays are replaced, never merged.
            (
                tracing(json!({"propagation": ["b3multi", "tracecontext"]})),
                under_tracing(json!({"propagation": ["tracecontext"]})),
                tracing(json!({"propagation": ["tracecontext"]})),
            ),
        ];
        for (target, patch, want) in rows {
            let doc = from_value(target.clone(), true).expect("target").config;
            let got = merge_patch(&doc, &patch).expect("a valid result");
            assert_eq!(got.to_json_value(), want, "{target} + {patch}");
        }
        let doc = from_value(tracing(json!({"address": "b.example"})), true)
            .unwrap()
            .config;
        // {"a":["b"]} + {"a":"c"} = {"a":"c"}, and {"a":"c"} + {"a":["b"]} = {"a":["b"]}: the
        // result's types are wrong for the schema.
        for (patch, path) in [
            (
                under_tracing(json!({"propagation": "b3multi"})),
                "spec.observability.tracing.propagation",
            ),
            (
                under_tracing(json!({"address": ["b.example"]})),
                "spec.observability.tracing.address",
            ),
            // [1,2] + {"a":"b","c":null} = {"a":"b"}: a list replaced by an object.
            (
                json!({"spec": {"traffic": {"opaquePorts": {"a": "b", "c": null}}}}),
                "spec.traffic.opaquePorts",
            ),
        ] {
            let got = messages(merge_patch(&doc, &patch).expect_err("a schema error"));
            assert!(got.iter().any(|m| m.starts_with(path)), "{patch}: {got:?}");
        }
        // ["a","b"] + ["c","d"] = ["c","d"], {"a":"b"} + ["c"] = ["c"], {"a":"foo"} + "bar" =
        // "bar", {"a":"foo"} + null = null: the result is not a document at all.
        for patch in [json!(["c", "d"]), json!(["c"]), json!("bar"), json!(null)] {
            assert!(merge_patch(&doc, &patch).is_err(), "{patch}");
        }
    }

    #[test]
    fn merge_patch_result_is_validated() {
        let err = merge_patch(
            &MeshConfig::default(),
            &json!({"spec": {"observability": {"tracing": {"enable": true, "address": "", "port": 0}}, "trafic": {}}}),
        )
        .unwrap_err();
        let got = messages(err);
        assert!(got
            .contains(&"spec.observability.tracing.port: 0 is out of range 1..=65535".to_string()));
        assert!(got.contains(
            &"spec.observability.tracing.address: must be set when tracing is enabled".to_string()
        ));
        assert!(got
            .iter()
            .any(|m| m.starts_with("spec.trafic: unknown field")));
        assert!(merge_patch(&MeshConfig::default(), &json!(["x"])).is_err());
    }
}
