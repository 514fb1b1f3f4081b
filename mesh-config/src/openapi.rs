//! The MeshConfig's schema as the Kubernetes API server needs it, generated from the Rust types.
//!
//! The types in `document` are the source: their `JsonSchema` derives carry the field names,
//! doc comments, enums, ranges and patterns. What Kubernetes adds is done here, once:
//!
//! - a *structural* schema: every node typed, everything inlined (no `$ref`), no `default`
//!   (a default stored by the API server would freeze today's value into every object, where
//!   an unset field takes the default of the release that reads it), no `format`s Kubernetes
//!   does not know, no `oneOf` of constants (an `enum` instead);
//! - the rules that span fields (`address` when `enable`, `endpoint` unless `otlp-grpc`) as
//!   value-only `anyOf`s, which structural schemas allow and any JSON-Schema validator runs;
//! - the duration ranges as CEL rules (`x-kubernetes-validations`), since a pattern cannot
//!   compare durations.
//!
//! The patterns are written for the three regex engines that read them: Go's RE2 in the API
//! server, Python's `re` in the tests' JSON-Schema validator, and none in Rust, where the
//! validator parses the same grammar by hand (`validate`); a test holds the two to the same
//! verdicts on edge values of every field.

use schemars::generate::SchemaSettings;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::validate::DURATION_RANGES;
use crate::{Duration, Spec};

/// One 16-bit group of an IPv6 address.
const H16: &str = "[0-9a-fA-F]{1,4}";
/// One decimal octet of an IPv4 address, without leading zeros (Rust's parser refuses them,
/// as do most tools: `010` reads as octal in some).
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";

fn ipv4() -> String {
    format!("({OCTET}\\.){{3}}{OCTET}")
}

/// RFC 3986's `IPv6address`, one alternative per position of the `::`.
fn ipv6() -> String {
    let h = H16;
    let ls32 = format!("({h}:{h}|{})", ipv4());
    let alternatives = [
        format!("({h}:){{6}}{ls32}"),
        format!("::({h}:){{5}}{ls32}"),
        format!("({h})?::({h}:){{4}}{ls32}"),
        format!("(({h}:){{0,1}}{h})?::({h}:){{3}}{ls32}"),
        format!("(({h}:){{0,2}}{h})?::({h}:){{2}}{ls32}"),
        format!("(({h}:){{0,3}}{h})?::{h}:{ls32}"),
        format!("(({h}:){{0,4}}{h})?::{ls32}"),
        format!("(({h}:){{0,5}}{h})?::{h}"),
        format!("(({h}:){{0,6}}{h})?::"),
    ];
    format!("({})", alternatives.join("|"))
}

/// An IPv4 or IPv6 network with its prefix length, which is required.
pub fn cidr_pattern() -> String {
    format!(
        "^({}/(3[0-2]|[12]?[0-9])|{}/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$",
        ipv4(),
        ipv6()
    )
}

/// A host name (IPv4 addresses are among them), an IPv6 address bare or in brackets, or
/// nothing (tracing off needs no address).
pub fn address_pattern() -> String {
    let label = "[A-Za-z0-9_-]{1,63}";
    format!("^({label}(\\.{label})*|{v6}|\\[{v6}\\])?$", v6 = ipv6())
}

/// Go's `time.ParseDuration` form without a sign: `10s`, `1m30s`, `1.5h`, `500ms`, or `0`.
pub const DURATION_PATTERN: &str = "^(0|(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|ms|s|m|h))+)$";

/// A decimal from 0 to 1 as FSM writes `sampledFraction`: `"1.0"`, `"0.25"`, `"0"`.
pub const FRACTION_PATTERN: &str = "^(0+(\\.[0-9]+)?|0*1(\\.0+)?)$";

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": crate::duration::MAX_TEXT_LEN
        })
    }
}

/// `sampledFraction`: a number or a decimal string, each from 0 to 1.
///
/// A structural schema cannot say "number or string": `type` is not allowed inside `anyOf`,
/// and `x-kubernetes-int-or-string` refuses `0.5`. So the node is untyped
/// (`x-kubernetes-preserve-unknown-fields`) and every other kind of value is refused by a
/// keyword that only that kind can fail: `minimum`/`maximum` apply to numbers only, `pattern`
/// to strings only, the contradictory item and property counts to every list and mapping, and
/// the `not enum` to booleans.
pub fn fraction_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
        "minimum": 0,
        "maximum": 1,
        "pattern": FRACTION_PATTERN,
        "minItems": 1,
        "maxItems": 0,
        "minProperties": 1,
        "maxProperties": 0,
        "not": {"enum": [true, false]}
    })
}

/// The rules of `spec.observability.tracing` that span two fields, in the value-only form a
/// structural schema allows inside `anyOf` (the fields themselves are typed outside).
pub fn tracing_rules(schema: &mut Schema) {
    schema.insert(
        "allOf".into(),
        json!([
            // An enabled tracer needs somewhere to send spans (unset means the default address).
            {"anyOf": [
                {"properties": {"enable": {"enum": [false]}}},
                {"properties": {"address": {"minLength": 1}}}
            ]},
            // The gRPC method path is fixed, so only the HTTP protocols read `endpoint`.
            {"anyOf": [
                {"required": ["protocol"], "properties": {"protocol": {"enum": ["otlp-grpc"]}}},
                {"properties": {"endpoint": {"pattern": "^/"}}}
            ]}
        ]),
    );
}

/// The `openAPIV3Schema` of the MeshConfig custom resource: the generated `spec`, the status
/// the injector writes, and the object's envelope, which the API server checks itself.
pub fn schema() -> Value {
    let mut generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let mut spec = generator.subschema_for::<Spec>().to_value();
    let mut status = generator.subschema_for::<crate::crd::Status>().to_value();
    structural(&mut spec);
    structural(&mut status);
    duration_rules(&mut spec);
    json!({
        "type": "object",
        "description": "Configuration of a tracemesh mesh. Every field has a default, so `spec: {}` is complete.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status
        }
    })
}

/// Keywords schemars writes that a structural schema must not have, or that Kubernetes does
/// not read.
const DROPPED: &[&str] = &[
    "$schema", "title", "default", "format", "examples", "example",
];

/// Makes a generated schema structural (see the module's doc), depth first.
fn structural(node: &mut Value) {
    let Some(map) = node.as_object_mut() else {
        return;
    };
    for key in DROPPED {
        map.remove(*key);
    }
    if let Some(enumeration) = constants(map) {
        let variants = map.remove("oneOf").unwrap_or_default();
        let docs: Vec<String> = variants
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let value = v.get("const").or_else(|| v.pointer("/enum/0"))?.as_str()?;
                let doc = v.get("description")?.as_str()?;
                Some(format!("`{value}`: {doc}"))
            })
            .collect();
        if !docs.is_empty() {
            let lead = map.get("description").and_then(Value::as_str).unwrap_or("");
            let text = if lead.is_empty() {
                docs.join("\n")
            } else {
                format!("{lead}\n{}", docs.join("\n"))
            };
            map.insert("description".into(), text.into());
        }
        map.insert("type".into(), "string".into());
        map.insert("enum".into(), enumeration);
    }
    for (key, value) in map.iter_mut() {
        match key.as_str() {
            // Field names, not keywords: a field called `default` would stay.
            "properties" => value
                .as_object_mut()
                .into_iter()
                .flat_map(|fields| fields.values_mut())
                .for_each(structural),
            "items" | "not" | "additionalProperties" => structural(value),
            "allOf" | "anyOf" | "oneOf" => value
                .as_array_mut()
                .into_iter()
                .flatten()
                .for_each(structural),
            _ => {}
        }
    }
}

/// A unit enum whose variants have doc comments comes out of schemars as a `oneOf` of
/// constants; Kubernetes wants one `enum` (the variants' docs are in the Rust source).
fn constants(map: &Map<String, Value>) -> Option<Value> {
    let variants = map.get("oneOf")?.as_array()?;
    let values: Option<Vec<Value>> = variants
        .iter()
        .map(
            |variant| match (variant.get("const"), variant.get("enum")) {
                (Some(one @ Value::String(_)), _) => Some(one.clone()),
                (None, Some(Value::Array(values))) => match values.as_slice() {
                    [one @ Value::String(_)] => Some(one.clone()),
                    _ => None,
                },
                _ => None,
            },
        )
        .collect();
    values.map(Value::Array)
}

/// The duration ranges of `spec.sidecar` as CEL rules (`duration()` reads Go's syntax, which
/// the pattern already holds values to).
fn duration_rules(spec: &mut Value) {
    for (name, min, max) in DURATION_RANGES {
        let Some(field) = spec
            .pointer_mut(&format!("/properties/sidecar/properties/{name}"))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let (min, max) = (Duration(min), Duration(max));
        let rule = if min == Duration::ZERO {
            format!("duration(self) <= duration('{max}')")
        } else {
            format!("duration(self) >= duration('{min}') && duration(self) <= duration('{max}')")
        };
        field.insert(
            "x-kubernetes-validations".into(),
            json!([{"rule": rule, "message": format!("must be within {min}..{max}")}]),
        );
    }
}
