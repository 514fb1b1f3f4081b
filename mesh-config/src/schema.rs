//! A walk of an untyped JSON value against the document's schema, the one generated from the
//! Rust types (`openapi::schema`, also the CRD's), read here into the checks it implies.
//!
//! serde alone stops at the first error and cannot tell an unknown field from a typo'd known
//! one, so the walk comes first: it collects every type/range/enum problem with its full path,
//! lists unknown fields, normalises FSM's string `sampledFraction`, and drops each bad field so
//! that the typed deserialisation that follows always succeeds (and the semantic checks in
//! `validate` still run on the rest).

use std::ops::RangeInclusive;
use std::sync::LazyLock;

use serde_json::{Map, Number, Value};

use crate::openapi::{DURATION_PATTERN, FRACTION_PATTERN};
use crate::validate::{PORT_MAX, PORT_MIN, PORT_RANGE};
use crate::{FieldError, API_VERSION, KIND};

/// What a field holds, as the walk checks it.
#[derive(Debug, PartialEq)]
enum Field {
    Bool,
    Str,
    /// A string that must equal this value (apiVersion, kind).
    Const(&'static str),
    Port,
    PortList,
    StrList,
    /// 0..=1 as a number or a numeric string; the string becomes a number.
    Fraction,
    /// A string with units (`"10s"`, `"500ms"`); ranges are checked in `validate`.
    Duration,
    /// One of the names; the noun names the kind of value in the message.
    OneOf(String, Vec<String>),
    /// A list whose every item is one of the names (each bad item named by its index).
    OneOfList(String, Vec<String>),
    /// A whole number in the range.
    UInt(RangeInclusive<u64>),
    Object(Vec<(String, Field)>),
    /// Kubernetes bookkeeping we carry but do not interpret.
    Any,
}

/// `metadata` as the API server returns it: the CRD leaves it to the server, so its fields are
/// listed here. Only the name and namespace are read.
const METADATA: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generateName",
    "selfLink",
    "managedFields",
    "ownerReferences",
    "finalizers",
];

/// How messages name the values of enum fields (`unknown log level "loud"`); other fields are
/// named by their key.
const NOUNS: &[(&str, &str)] = &[
    ("logLevel", "log level"),
    ("propagation", "propagation format"),
    ("stitching", "stitching mode"),
];

/// The whole document: the envelope Kubernetes owns, and `spec` from the generated schema.
static DOCUMENT: LazyLock<Field> = LazyLock::new(|| {
    let schema = crate::openapi::schema();
    let metadata = METADATA
        .iter()
        .map(|name| {
            let field = match *name {
                "name" | "namespace" => Field::Str,
                _ => Field::Any,
            };
            (name.to_string(), field)
        })
        .collect();
    Field::Object(vec![
        ("apiVersion".into(), Field::Const(API_VERSION)),
        ("kind".into(), Field::Const(KIND)),
        ("metadata".into(), Field::Object(metadata)),
        (
            "spec".into(),
            from_schema("spec", &schema["properties"]["spec"]),
        ),
        // Written by the injector; carried so that an object as kubectl prints it validates.
        ("status".into(), Field::Any),
    ])
});

/// The check a generated schema node implies. Everything the document's types produce maps to
/// a check; a test holds `spec` to having no `Any` in it.
fn from_schema(name: &str, node: &Value) -> Field {
    if let Some(properties) = node["properties"].as_object() {
        return Field::Object(
            properties
                .iter()
                .map(|(key, child)| (key.clone(), from_schema(key, child)))
                .collect(),
        );
    }
    if node["pattern"] == FRACTION_PATTERN {
        return Field::Fraction;
    }
    let noun = || {
        NOUNS
            .iter()
            .find(|(key, _)| *key == name)
            .map_or(name, |(_, noun)| noun)
            .to_string()
    };
    let names = |values: &Value| -> Option<Vec<String>> {
        values
            .as_array()?
            .iter()
            .map(|v| v.as_str().map(String::from))
            .collect()
    };
    match node["type"].as_str() {
        Some("boolean") => Field::Bool,
        Some("string") => match names(&node["enum"]) {
            Some(names) => Field::OneOf(noun(), names),
            None if node["pattern"] == DURATION_PATTERN => Field::Duration,
            None => Field::Str,
        },
        Some("integer") => {
            let min = node["minimum"].as_u64().unwrap_or(0);
            let max = node["maximum"].as_u64().unwrap_or(u64::MAX);
            if (min, max) == (u64::from(PORT_MIN), u64::from(PORT_MAX)) {
                Field::Port
            } else {
                Field::UInt(min..=max)
            }
        }
        Some("array") => match from_schema(name, &node["items"]) {
            Field::Port => Field::PortList,
            Field::Str => Field::StrList,
            Field::OneOf(noun, names) => Field::OneOfList(noun, names),
            _ => Field::Any,
        },
        _ => Field::Any,
    }
}

/// What the walk found: hard errors, and unknown fields (errors or warnings, caller's choice).
#[derive(Default)]
pub(crate) struct Findings {
    pub errors: Vec<FieldError>,
    pub unknown: Vec<FieldError>,
}

/// Walks the whole document. Returns the value with bad fields removed (their defaults apply)
/// and `null`s removed (null means "unset", as in Kubernetes and RFC 7386).
pub(crate) fn check(doc: Value) -> (Value, Findings) {
    let mut findings = Findings::default();
    let doc = match doc {
        // An empty `spec:` or a document of only comments.
        Value::Null => Value::Object(Map::new()),
        other => other,
    };
    let cleaned =
        walk(&DOCUMENT, doc, "", &mut findings).unwrap_or_else(|| Value::Object(Map::new()));
    (cleaned, findings)
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Short description of a value for "expected X, found Y" messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

fn type_error(path: &str, expected: &str, found: &Value, f: &mut Findings) -> Option<Value> {
    f.errors.push(FieldError::new(
        path,
        format!("expected {expected}, found {}", describe(found)),
    ));
    None
}

/// `None` drops the field (error already recorded, or null).
fn walk(field: &Field, value: Value, path: &str, f: &mut Findings) -> Option<Value> {
    if value.is_null() {
        return None;
    }
    match field {
        Field::Any => Some(value),
        Field::Bool => match value {
            Value::Bool(_) => Some(value),
            other => type_error(path, "a boolean", &other, f),
        },
        Field::Str => match value {
            Value::String(_) => Some(value),
            other => type_error(path, "a string", &other, f),
        },
        Field::Const(expected) => match &value {
            Value::String(s) if s == expected => Some(value),
            Value::String(s) => {
                f.errors.push(FieldError::new(
                    path,
                    format!("expected {expected:?}, found {s:?}"),
                ));
                None
            }
            other => type_error(path, "a string", other, f),
        },
        Field::Port => port(value, path, f),
        Field::PortList => match value {
            Value::Array(items) => {
                let before = f.errors.len();
                let ports: Vec<Value> = items
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, v)| port(v, &format!("{path}[{i}]"), f))
                    .collect();
                (f.errors.len() == before).then_some(Value::Array(ports))
            }
            other => type_error(path, "a list of ports", &other, f),
        },
        Field::StrList => match value {
            Value::Array(items) => {
                let mut ok = true;
                for (i, v) in items.iter().enumerate() {
                    if !v.is_string() {
                        type_error(&format!("{path}[{i}]"), "a string", v, f);
                        ok = false;
                    }
                }
                ok.then_some(Value::Array(items))
            }
            other => type_error(path, "a list of strings", &other, f),
        },
        Field::Fraction => fraction(value, path, f),
        Field::Duration => match &value {
            Value::String(s) => match crate::duration::parse(s) {
                Ok(_) => Some(value),
                Err(msg) => {
                    f.errors.push(FieldError::new(path, msg));
                    None
                }
            },
            other => type_error(path, "a duration string such as \"10s\"", other, f),
        },
        Field::OneOf(noun, names) => one_of(noun, names, value, path, f),
        Field::OneOfList(noun, names) => match value {
            Value::Array(items) => {
                let before = f.errors.len();
                for (i, v) in items.iter().enumerate() {
                    one_of(noun, names, v.clone(), &format!("{path}[{i}]"), f);
                }
                (f.errors.len() == before).then_some(Value::Array(items))
            }
            other => type_error(path, &format!("a list of {noun}s"), &other, f),
        },
        Field::UInt(range) => {
            let expected = format!("a whole number in {}..={}", range.start(), range.end());
            // Negative whole numbers are out of range too, not of the wrong type.
            let whole = value
                .as_u64()
                .map(i128::from)
                .or(value.as_i64().map(i128::from));
            match whole {
                Some(n) if u64::try_from(n).is_ok_and(|n| range.contains(&n)) => Some(value),
                Some(n) => {
                    f.errors.push(FieldError::new(
                        path,
                        format!("{n} is out of range {}..={}", range.start(), range.end()),
                    ));
                    None
                }
                None => type_error(path, &expected, &value, f),
            }
        }
        Field::Object(fields) => match value {
            Value::Object(map) => {
                let mut out = Map::new();
                for (key, v) in map {
                    let child = join(path, &key);
                    match fields.iter().find(|(name, _)| *name == key) {
                        Some((_, field)) => {
                            if let Some(v) = walk(field, v, &child, f) {
                                out.insert(key, v);
                            }
                        }
                        None => {
                            let known: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
                            f.unknown.push(FieldError::new(
                                child,
                                format!("unknown field (expected one of {})", known.join(", ")),
                            ));
                        }
                    }
                }
                Some(Value::Object(out))
            }
            other => type_error(path, "a mapping", &other, f),
        },
    }
}

fn one_of(
    noun: &str,
    names: &[String],
    value: Value,
    path: &str,
    f: &mut Findings,
) -> Option<Value> {
    match &value {
        Value::String(s) if names.contains(s) => Some(value),
        Value::String(s) => {
            f.errors.push(FieldError::new(
                path,
                format!("unknown {noun} {s:?} (expected {})", names.join(", ")),
            ));
            None
        }
        other => type_error(path, &format!("a {noun} string"), other, f),
    }
}

fn port(value: Value, path: &str, f: &mut Findings) -> Option<Value> {
    let n = match &value {
        Value::Number(n) => n,
        other => return type_error(path, "a port number", other, f),
    };
    match n.as_i64() {
        Some(p) if (1..=65535).contains(&p) => Some(value),
        Some(p) => {
            f.errors.push(FieldError::new(
                path,
                format!("{p} is out of range {PORT_RANGE}"),
            ));
            None
        }
        None if n.is_u64() => {
            f.errors.push(FieldError::new(
                path,
                format!("{n} is out of range {PORT_RANGE}"),
            ));
            None
        }
        None => type_error(path, "an integer port number", &value, f),
    }
}

fn fraction(value: Value, path: &str, f: &mut Findings) -> Option<Value> {
    let parsed = match &value {
        Value::Number(n) => n.as_f64(),
        // FSM writes `sampledFraction: "1.0"`. Plain decimals only (no sign, exponent or
        // spaces), as the CRD's pattern reads them.
        Value::String(s) => match s.parse::<f64>() {
            Ok(x) if is_decimal(s) => Some(x),
            _ => {
                f.errors
                    .push(FieldError::new(path, format!("{s:?} is not a number")));
                return None;
            }
        },
        other => return type_error(path, "a number between 0 and 1", other, f),
    };
    match parsed.and_then(Number::from_f64) {
        Some(n) => Some(Value::Number(n)),
        None => {
            f.errors.push(FieldError::new(
                path,
                format!("{} is not a finite number", describe(&value)),
            ));
            None
        }
    }
}

/// `[0-9]+(\.[0-9]+)?`: the numeric strings `sampledFraction` accepts.
fn is_decimal(s: &str) -> bool {
    let (whole, fraction) = match s.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && fraction.is_none_or(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of `spec` maps to a check of its kind (an `Any` would let anything through).
    #[test]
    fn every_spec_field_has_a_check() {
        fn kinds(field: &Field, path: &str, out: &mut Vec<String>) {
            match field {
                Field::Object(fields) => {
                    for (name, inner) in fields {
                        kinds(inner, &join(path, name), out);
                    }
                }
                other => out.push(format!("{path}: {other:?}")),
            }
        }
        let Field::Object(top) = &*DOCUMENT else {
            panic!("the document is an object");
        };
        let spec = &top.iter().find(|(name, _)| name == "spec").expect("spec").1;
        let mut out = Vec::new();
        kinds(spec, "spec", &mut out);
        let any: Vec<&String> = out.iter().filter(|k| k.ends_with(": Any")).collect();
        assert!(any.is_empty(), "{any:?}");
        let find = |path: &str| {
            out.iter()
                .find(|k| k.starts_with(&format!("{path}: ")))
                .unwrap_or_else(|| panic!("{path} in {out:#?}"))
                .clone()
        };
        assert_eq!(
            find("spec.observability.tracing.port"),
            "spec.observability.tracing.port: Port"
        );
        assert_eq!(
            find("spec.observability.tracing.sampledFraction"),
            "spec.observability.tracing.sampledFraction: Fraction"
        );
        assert_eq!(
            find("spec.sidecar.connectTimeout"),
            "spec.sidecar.connectTimeout: Duration"
        );
        assert_eq!(
            find("spec.traffic.outboundIPRangeExclusionList"),
            "spec.traffic.outboundIPRangeExclusionList: StrList"
        );
        assert_eq!(
            find("spec.sidecar.maxConnections"),
            "spec.sidecar.maxConnections: UInt(1..=1000000)"
        );
        assert!(find("spec.observability.tracing.stitching")
            .contains(r#"OneOf("stitching mode", ["off", "request-id", "in-flight"])"#));
        assert_eq!(
            find("spec.sidecar.http2ConnectionsPerDestination"),
            "spec.sidecar.http2ConnectionsPerDestination: UInt(1..=1024)"
        );
        assert_eq!(out.len(), 25, "{out:#?}");
    }

    #[test]
    fn decimals() {
        for ok in ["0", "1", "0.5", "1.0", "00.25"] {
            assert!(is_decimal(ok), "{ok}");
        }
        for bad in [
            "", ".5", "1.", "+1", "-0", "1e-1", " 1", "0x1", "NaN", "inf",
        ] {
            assert!(!is_decimal(bad), "{bad}");
        }
    }
}
