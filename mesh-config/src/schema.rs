//! The document's schema as data, and a walk of an untyped JSON value against it.
//!
//! serde alone stops at the first error and cannot tell an unknown field from a typo'd known
//! one, so the walk comes first: it collects every type/range/enum problem with its full path,
//! lists unknown fields, normalises FSM's string `sampledFraction`, and drops each bad field so
//! that the typed deserialisation that follows always succeeds (and the semantic checks in
//! `validate` still run on the rest).

use serde_json::{Map, Number, Value};

use crate::validate::PORT_RANGE;
use crate::{
    FieldError, LogLevel, PropagationFormat, Protocol, Stitching, API_VERSION, KIND,
    MAX_URL_TAG_LENGTH_RANGE,
};

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
    /// A non-negative integer that fits in 32 bits; ranges are checked in `validate`.
    Count,
    /// One of the names; the noun names the kind of value in the message.
    OneOf(&'static str, &'static [&'static str]),
    /// A list whose every item is one of the names (each bad item named by its index).
    OneOfList(&'static str, &'static [&'static str]),
    /// A whole number in the range.
    UInt(std::ops::RangeInclusive<u32>),
    Object(&'static [(&'static str, Field)]),
    /// Kubernetes bookkeeping we carry but do not interpret.
    Any,
}

const PROTOCOLS: &[&str] = &[
    Protocol::Zipkin.as_str(),
    Protocol::OtlpHttp.as_str(),
    Protocol::OtlpGrpc.as_str(),
];
const PROPAGATION_FORMATS: &[&str] = &[
    PropagationFormat::B3multi.as_str(),
    PropagationFormat::Tracecontext.as_str(),
];
const STITCHING_MODES: &[&str] = &[
    Stitching::Off.as_str(),
    Stitching::RequestId.as_str(),
    Stitching::InFlight.as_str(),
];
const LOG_LEVELS: &[&str] = &[
    LogLevel::Error.as_str(),
    LogLevel::Warn.as_str(),
    LogLevel::Info.as_str(),
    LogLevel::Debug.as_str(),
    LogLevel::Trace.as_str(),
];

const METADATA: &[(&str, Field)] = &[
    ("name", Field::Str),
    ("namespace", Field::Str),
    ("labels", Field::Any),
    ("annotations", Field::Any),
    ("uid", Field::Any),
    ("resourceVersion", Field::Any),
    ("generation", Field::Any),
    ("creationTimestamp", Field::Any),
    ("deletionTimestamp", Field::Any),
    ("deletionGracePeriodSeconds", Field::Any),
    ("generateName", Field::Any),
    ("selfLink", Field::Any),
    ("managedFields", Field::Any),
    ("ownerReferences", Field::Any),
    ("finalizers", Field::Any),
];

const TRACING: &[(&str, Field)] = &[
    ("enable", Field::Bool),
    ("address", Field::Str),
    ("port", Field::Port),
    ("endpoint", Field::Str),
    ("protocol", Field::OneOf("protocol", PROTOCOLS)),
    ("sampledFraction", Field::Fraction),
    (
        "propagation",
        Field::OneOfList("propagation format", PROPAGATION_FORMATS),
    ),
    ("maxUrlTagLength", Field::UInt(MAX_URL_TAG_LENGTH_RANGE)),
    ("stitching", Field::OneOf("stitching mode", STITCHING_MODES)),
];

const TRAFFIC: &[(&str, Field)] = &[
    ("inboundPortExclusionList", Field::PortList),
    ("outboundPortExclusionList", Field::PortList),
    ("outboundIPRangeExclusionList", Field::StrList),
    ("opaquePorts", Field::PortList),
];

const SIDECAR: &[(&str, Field)] = &[
    ("logLevel", Field::OneOf("log level", LOG_LEVELS)),
    ("headerReadTimeout", Field::Duration),
    ("httpIdleTimeout", Field::Duration),
    ("tcpIdleTimeout", Field::Duration),
    ("http2KeepaliveInterval", Field::Duration),
    ("http2KeepaliveTimeout", Field::Duration),
    ("connectTimeout", Field::Duration),
    ("responseTimeout", Field::Duration),
    ("maxConnections", Field::Count),
    ("maxConnectionsPerDestination", Field::Count),
    ("terminationDrainDuration", Field::Duration),
];

const SPEC: &[(&str, Field)] = &[
    (
        "observability",
        Field::Object(&[("tracing", Field::Object(TRACING))]),
    ),
    ("traffic", Field::Object(TRAFFIC)),
    ("sidecar", Field::Object(SIDECAR)),
];

const DOCUMENT: &[(&str, Field)] = &[
    ("apiVersion", Field::Const(API_VERSION)),
    ("kind", Field::Const(KIND)),
    ("metadata", Field::Object(METADATA)),
    ("spec", Field::Object(SPEC)),
];

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
    let cleaned = walk(&Field::Object(DOCUMENT), doc, "", &mut findings)
        .unwrap_or_else(|| Value::Object(Map::new()));
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
        Field::Count => match &value {
            Value::Number(n) if n.as_u64().is_some_and(|c| u32::try_from(c).is_ok()) => Some(value),
            Value::Number(n) if n.is_u64() || n.is_i64() => {
                f.errors.push(FieldError::new(
                    path,
                    format!("{n} is out of range 0..={}", u32::MAX),
                ));
                None
            }
            other => type_error(path, "a whole number", other, f),
        },
        Field::OneOf(noun, names) => match &value {
            Value::String(s) if names.contains(&s.as_str()) => Some(value),
            Value::String(s) => {
                f.errors.push(FieldError::new(
                    path,
                    format!("unknown {noun} {s:?} (expected {})", names.join(", ")),
                ));
                None
            }
            other => type_error(path, &format!("a {noun} string"), other, f),
        },
        Field::OneOfList(noun, names) => match value {
            Value::Array(items) => {
                let before = f.errors.len();
                for (i, v) in items.iter().enumerate() {
                    walk(
                        &Field::OneOf(noun, names),
                        v.clone(),
                        &format!("{path}[{i}]"),
                        f,
                    );
                }
                (f.errors.len() == before).then_some(Value::Array(items))
            }
            other => type_error(path, &format!("a list of {noun}s"), &other, f),
        },
        Field::UInt(range) => {
            let expected = format!("a whole number in {}..={}", range.start(), range.end());
            match value.as_u64() {
                Some(n) if u32::try_from(n).is_ok_and(|n| range.contains(&n)) => Some(value),
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
                            let known: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
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
        // FSM writes `sampledFraction: "1.0"`.
        Value::String(s) => match s.trim().parse::<f64>() {
            Ok(x) => Some(x),
            Err(_) => {
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
