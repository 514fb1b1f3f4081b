//! manifests/crd.yaml is generated from the document's types (`mesh_config::crd`): this test
//! fails when the two differ, and rewrites the file when asked to.

use std::path::PathBuf;

const REGENERATE: &str = "UPDATE_CRD=1 cargo test -p mesh-config --test crd";

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/crd.yaml")
}

#[test]
fn manifests_crd_yaml_is_the_generated_crd() {
    let generated = mesh_config::crd::yaml();
    let path = checked_in();
    if std::env::var_os("UPDATE_CRD").is_some() {
        std::fs::write(&path, &generated).expect("write manifests/crd.yaml");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).expect("read manifests/crd.yaml");
    if on_disk == generated {
        return;
    }
    let line = on_disk
        .lines()
        .zip(generated.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| on_disk.lines().count().min(generated.lines().count()));
    panic!(
        "manifests/crd.yaml is not what the mesh-config types generate (first difference at line \
         {}:\n  checked in: {:?}\n  generated:  {:?})\nRegenerate it with\n  {REGENERATE}",
        line + 1,
        on_disk.lines().nth(line).unwrap_or("<end of file>"),
        generated.lines().nth(line).unwrap_or("<end of file>"),
    );
}

/// The generated file reads back as the object it was made from, so nothing is lost in YAML
/// (in particular the stitching mode `off`, which a YAML 1.1 reader takes for a boolean unless
/// it is quoted).
#[test]
fn generated_yaml_reads_back_as_the_definition() {
    let text = mesh_config::crd::yaml();
    let back: serde_json::Value = serde_yaml::from_str(&text).expect("YAML");
    assert_eq!(back, mesh_config::crd::definition());
    assert!(
        text.contains("- 'off'") || text.contains("- \"off\""),
        "{text}"
    );
}

/// The rules of a structural schema, which the API server enforces on a CRD
/// (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema):
/// every field and list item has a type (or is explicitly untyped with
/// `x-kubernetes-preserve-unknown-fields`), junctors (`allOf`, `anyOf`, `oneOf`, `not`) hold
/// only value checks of fields that are declared outside them, and there is no `$ref`,
/// `default` (which this project stores none of) or `additionalProperties` beside `properties`.
#[test]
fn the_schema_is_structural() {
    use serde_json::Value;

    fn typed(node: &Value, path: &str, problems: &mut Vec<String>) {
        let untyped = node["x-kubernetes-preserve-unknown-fields"] == true
            || node["x-kubernetes-int-or-string"] == true;
        if node.get("type").is_none() && !untyped {
            problems.push(format!("{path}: no type"));
        }
        check(node, path, problems);
    }

    fn check(node: &Value, path: &str, problems: &mut Vec<String>) {
        let Some(map) = node.as_object() else {
            problems.push(format!("{path}: not a schema"));
            return;
        };
        for forbidden in [
            "$ref",
            "default",
            "const",
            "oneOf",
            "$schema",
            "definitions",
            "$defs",
        ] {
            if map.contains_key(forbidden) {
                problems.push(format!("{path}: {forbidden}"));
            }
        }
        if map.contains_key("properties") && map.contains_key("additionalProperties") {
            problems.push(format!("{path}: properties and additionalProperties"));
        }
        if let Some(properties) = map.get("properties").and_then(Value::as_object) {
            for (name, field) in properties {
                typed(field, &format!("{path}.{name}"), problems);
            }
        }
        if let Some(items) = map.get("items") {
            typed(items, &format!("{path}[]"), problems);
        }
        for junctor in ["allOf", "anyOf", "not"] {
            let Some(inner) = map.get(junctor) else {
                continue;
            };
            let inner: Vec<&Value> = match inner {
                Value::Array(items) => items.iter().collect(),
                one => vec![one],
            };
            for (i, branch) in inner.into_iter().enumerate() {
                junction(branch, node, &format!("{path}.{junctor}[{i}]"), problems);
            }
        }
    }

    /// Inside a junctor: no type, description, default, additionalProperties or nullable, and
    /// only fields the enclosing node declares.
    fn junction(branch: &Value, outside: &Value, path: &str, problems: &mut Vec<String>) {
        let Some(map) = branch.as_object() else {
            problems.push(format!("{path}: not a schema"));
            return;
        };
        for forbidden in [
            "type",
            "description",
            "default",
            "additionalProperties",
            "nullable",
        ] {
            if map.contains_key(forbidden) {
                problems.push(format!("{path}: {forbidden} inside a junctor"));
            }
        }
        for (name, inner) in map
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let declared = &outside["properties"][name];
            if declared.is_null() {
                problems.push(format!(
                    "{path}: {name} is not declared outside the junctor"
                ));
            } else {
                junction(inner, declared, &format!("{path}.{name}"), problems);
            }
        }
        for nested in ["allOf", "anyOf", "oneOf"] {
            for (i, b) in map
                .get(nested)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                junction(b, outside, &format!("{path}.{nested}[{i}]"), problems);
            }
        }
    }

    let schema = mesh_config::openapi::schema();
    let mut problems = Vec::new();
    typed(&schema, "openAPIV3Schema", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");

    // And the check sees what it must: a $ref, an untyped field, a type inside anyOf.
    let mut broken = schema.clone();
    broken["properties"]["spec"]["properties"]["traffic"]["properties"]["opaquePorts"] =
        serde_json::json!({"$ref": "#/x"});
    broken["properties"]["spec"]["anyOf"] = serde_json::json!([{"type": "object"}]);
    let mut problems = Vec::new();
    typed(&broken, "openAPIV3Schema", &mut problems);
    assert_eq!(problems.len(), 3, "{problems:#?}");
}
