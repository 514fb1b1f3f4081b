//! The validator (`mesh config validate`, the proxy, the injector) and the generated CRD give
//! the same verdict on edge values of every field: what the CLI passes, `kubectl apply` takes,
//! and what the API server refuses, the CLI refuses too.
//!
//! The CRD's side is an independent JSON-Schema validator (Python's `jsonschema`, from
//! tests/requirements.txt) run on the generated `openAPIV3Schema`, plus two things the API
//! server adds and a JSON-Schema validator does not know:
//! - unknown fields are refused, as with kubectl's default strict field validation: every
//!   object with `properties` gets `additionalProperties: false` for the oracle;
//! - the CEL rules (`x-kubernetes-validations`) on durations, `duration(self) >= duration('A')
//!   && duration(self) <= duration('B')`, are evaluated here from the bounds the CRD states.
//!
//! Not covered: `metadata` (the API server checks it itself), `null` (the API server drops
//! it before validation, the validator reads it as unset) and a trailing newline in a string
//! (Python's `$` matches before one, Go's does not).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// An edge case: a path under `spec` and the value put there, or a whole `spec`.
struct Case {
    spec: Value,
    what: String,
}

fn at(path: &str, value: Value) -> Case {
    let mut spec = value.clone();
    for key in path.rsplit('.') {
        spec = json!({ key: spec });
    }
    Case {
        spec,
        what: format!("spec.{path} = {value}"),
    }
}

fn whole(spec: Value) -> Case {
    Case {
        what: format!("spec = {spec}"),
        spec,
    }
}

const PORT_LISTS: [&str; 3] = [
    "traffic.inboundPortExclusionList",
    "traffic.outboundPortExclusionList",
    "traffic.opaquePorts",
];

const DURATIONS: [&str; 8] = [
    "headerReadTimeout",
    "httpIdleTimeout",
    "tcpIdleTimeout",
    "http2KeepaliveInterval",
    "http2KeepaliveTimeout",
    "connectTimeout",
    "responseTimeout",
    "terminationDrainDuration",
];

fn cases() -> Vec<Case> {
    let tracing = |field: &str| format!("observability.tracing.{field}");
    let mut cases = Vec::new();
    let mut each = |path: String, values: Vec<Value>| {
        cases.extend(values.into_iter().map(|v| at(&path, v)));
    };

    each(
        tracing("enable"),
        vec![json!(true), json!(false), json!("true"), json!(1)],
    );
    let long_label = "a".repeat(63);
    let host_253 = [&*"a".repeat(61); 4].join(".") + ".b"; // 4*61 + 3 dots + 2 = 249
    let host_253 = format!("{host_253}.cc"); // 252
    let host_253 = format!("{host_253}d"); // 253
    let host_254 = format!("{host_253}e");
    each(
        tracing("address"),
        vec![
            json!(""),
            json!("jaeger"),
            json!("jaeger.mesh-system.svc.cluster.local"),
            json!("otel_collector"),
            json!("127.0.0.1"),
            json!("1.2.3.999"),
            json!("::1"),
            json!("[::1]"),
            json!("fd00::1:2"),
            json!("1:2:3:4:5:6:7:8"),
            json!("1:2:3:4:5:6:7:8:9"),
            json!("1:2:3:4:5:6:7::"),
            json!("::1:2:3:4:5:6:7"),
            json!("::ffff:1.2.3.4"),
            json!("1::2:1.2.3.4"),
            json!("1:2:3:4:5:6:1.2.3.4"),
            json!("1:2:3:4:5:6:7:1.2.3.4"),
            json!("::1::2"),
            json!("12345::1"),
            json!("g::1"),
            json!("[10.0.0.1]"),
            json!("[jaeger]"),
            json!("[::1"),
            json!("http://jaeger"),
            json!("jaeger:9411"),
            json!("a..b"),
            json!("jaeger."),
            json!(".jaeger"),
            json!("has space"),
            json!(long_label.clone()),
            json!(format!("{long_label}a")),
            json!(host_253),
            json!(host_254),
            json!(5),
        ],
    );
    each(
        tracing("port"),
        vec![
            json!(0),
            json!(1),
            json!(9411),
            json!(65535),
            json!(65536),
            json!(-1),
            json!(9411.5),
            json!("9411"),
        ],
    );
    each(
        tracing("endpoint"),
        vec![
            json!("/"),
            json!("/api/v2/spans"),
            json!("api"),
            json!(""),
            json!(5),
        ],
    );
    each(
        tracing("protocol"),
        vec![
            json!("zipkin"),
            json!("otlp-http"),
            json!("otlp-grpc"),
            json!("grpc"),
            json!("Zipkin"),
            json!(""),
            json!(1),
        ],
    );
    each(
        tracing("sampledFraction"),
        vec![
            json!(0),
            json!(1),
            json!(0.5),
            json!(1.0),
            json!(1e-1),
            json!(1.5),
            json!(-0.1),
            json!(2),
            json!("0"),
            json!("1"),
            json!("1.0"),
            json!("0.25"),
            json!("00.5"),
            json!("1.5"),
            json!("1.00001"),
            json!("2"),
            json!("abc"),
            json!(".5"),
            json!("1."),
            json!("+0.5"),
            json!("-0"),
            json!("1e-1"),
            json!(" 0.5"),
            json!(""),
            json!(true),
            json!(false),
            json!([]),
            json!([0.5]),
            json!({}),
            json!({"a": 1}),
        ],
    );
    each(
        tracing("propagation"),
        vec![
            json!([]),
            json!(["b3multi"]),
            json!(["tracecontext", "b3multi"]),
            json!(["b3multi", "b3multi"]),
            json!(["b3"]),
            json!(["B3multi"]),
            json!("b3multi"),
            json!([7]),
        ],
    );
    each(
        tracing("maxUrlTagLength"),
        vec![
            json!(31),
            json!(32),
            json!(1024),
            json!(8192),
            json!(8193),
            json!(-1),
            json!(256.5),
            json!("1k"),
        ],
    );
    each(
        tracing("stitching"),
        vec![
            json!("off"),
            json!("request-id"),
            json!("in-flight"),
            json!("on"),
            json!("Off"),
            json!("request_id"),
            json!(""),
            json!(false),
        ],
    );
    for list in PORT_LISTS {
        each(
            list.to_string(),
            vec![
                json!([]),
                json!([1]),
                json!([65535, 80]),
                json!([0]),
                json!([80, 65536]),
                json!([-1]),
                json!([80.5]),
                json!(["80"]),
                json!("80"),
            ],
        );
    }
    each(
        "traffic.outboundIPRangeExclusionList".into(),
        [
            "10.0.0.0/8",
            "10.0.0.0/0",
            "10.0.0.0/32",
            "10.1.2.3/8",
            "169.254.169.254/32",
            "10.0.0.1",
            "10.0.0.0/33",
            "10.0.0.0/08",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/ 8",
            "256.0.0.0/8",
            "010.0.0.0/8",
            "10.0.0/8",
            "example.com/8",
            "fd00::/8",
            "fd00::",
            "::/0",
            "fd00::/128",
            "fd00::/129",
            "fd00::/0128",
            "1:2:3:4:5:6:7:8/64",
            "1:2:3:4:5:6:7:8:9/64",
            "::ffff:10.0.0.0/104",
            "fe80::1%eth0/64",
            "[fd00::]/8",
            "",
        ]
        .into_iter()
        .map(|cidr| json!([cidr]))
        .chain([
            json!([5]),
            json!("10.0.0.0/8"),
            json!(["10.0.0.0/8", "10.0.0.1"]),
        ])
        .collect(),
    );
    each(
        "sidecar.logLevel".into(),
        [
            "error", "warn", "info", "debug", "trace", "verbose", "INFO", "",
        ]
        .into_iter()
        .map(Value::from)
        .chain([json!(1)])
        .collect(),
    );
    for name in DURATIONS {
        each(
            format!("sidecar.{name}"),
            [
                "0",
                "0s",
                "0.5ms",
                "1ms",
                "1000us",
                "1µs",
                "10s",
                "1.5h",
                ".5s",
                "1.s",
                "1h",
                "1h0.001s",
                "5m",
                "5m1s",
                "24h",
                "24h1ms",
                "1m30s",
                "10",
                "00",
                "-1s",
                "+1s",
                " 1s",
                "1s ",
                "10 s",
                "1e3s",
                "1x",
                "s",
                ".s",
                "1.2.3s",
                "",
                "100000000h",
                "9000h",
            ]
            .into_iter()
            .map(Value::from)
            .chain([json!(10), json!(["1s"])])
            // The length bound (64 characters), at and past it.
            .chain([
                json!(format!("0.{}1s", "0".repeat(60))),
                json!(format!("0.{}1s", "0".repeat(61))),
                json!(format!("1.{}s", "0".repeat(61))),
                json!(format!("1.{}s", "0".repeat(62))),
            ])
            .collect(),
        );
    }
    for name in ["maxConnections", "maxConnectionsPerDestination"] {
        each(
            format!("sidecar.{name}"),
            vec![
                json!(0),
                json!(1),
                json!(1_000_000),
                json!(1_000_001),
                json!(4_294_967_296u64),
                json!(-5),
                json!(1.5),
                json!("10"),
            ],
        );
    }
    each(
        "sidecar.http2ConnectionsPerDestination".into(),
        vec![
            json!(0),
            json!(1),
            json!(1024),
            json!(1025),
            json!(-5),
            json!(1.5),
            json!("10"),
        ],
    );
    // Unknown fields, at every level.
    each("extra".into(), vec![json!(1)]);
    each("traffic.extra".into(), vec![json!([])]);
    each(tracing("enabled"), vec![json!(true)]);
    each("observability.extra".into(), vec![json!({})]);
    each("sidecar.logLevels".into(), vec![json!("info")]);
    // Objects of the wrong kind.
    each("traffic".into(), vec![json!([]), json!("x"), json!({})]);
    each("observability".into(), vec![json!({}), json!(1)]);
    each("sidecar".into(), vec![json!({}), json!(true)]);

    // Rules across fields.
    cases.extend(
        [
            json!({}),
            json!({"observability": {"tracing": {"enable": true}}}),
            json!({"observability": {"tracing": {"enable": true, "address": ""}}}),
            json!({"observability": {"tracing": {"enable": false, "address": ""}}}),
            json!({"observability": {"tracing": {"enable": true, "address": "jaeger"}}}),
            json!({"observability": {"tracing": {"protocol": "otlp-grpc", "endpoint": ""}}}),
            json!({"observability": {"tracing": {"protocol": "otlp-grpc", "endpoint": "x"}}}),
            json!({"observability": {"tracing": {"protocol": "otlp-http", "endpoint": ""}}}),
            json!({"observability": {"tracing": {"protocol": "zipkin", "endpoint": "api"}}}),
            json!({"observability": {"tracing": {"protocol": "otlp-http", "endpoint": "/v1/traces"}}}),
        ]
        .into_iter()
        .map(whole),
    );
    cases
}

fn document(spec: &Value) -> Value {
    json!({
        "apiVersion": "config.tracemesh.dev/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "mesh-config", "namespace": "mesh-system"},
        "spec": spec,
    })
}

/// Unknown fields refused, as with kubectl's strict field validation.
fn strict(schema: &mut Value) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        properties.values_mut().for_each(strict);
        if map.get("type") == Some(&json!("object")) {
            map.insert("additionalProperties".into(), json!(false));
        }
    }
    if let Some(items) = map.get_mut("items") {
        strict(items);
    }
}

/// The JSON-Schema verdict (and its messages) on every document at once.
fn json_schema_verdicts(schema: &Value, documents: &[Value]) -> Vec<(bool, Vec<String>)> {
    const SCRIPT: &str = "\
import json, sys, jsonschema
data = json.load(sys.stdin)
validator = jsonschema.Draft4Validator(data['schema'])
out = []
for doc in data['documents']:
    # Messages quote the pattern they fail, hundreds of characters for an address.
    errors = [e.message[:160] for e in validator.iter_errors(doc)]
    out.append([not errors, errors])
json.dump(out, sys.stdout)
";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot run python3 ({err}); run scripts/setup to install it and jsonschema")
        });
    let input = json!({"schema": schema, "documents": documents}).to_string();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to python3");
    let output = child.wait_with_output().expect("python3");
    assert!(
        output.status.success(),
        "the jsonschema oracle failed (scripts/setup installs tests/requirements.txt):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let verdicts: Vec<(bool, Vec<String>)> =
        serde_json::from_slice(&output.stdout).expect("oracle output");
    assert_eq!(verdicts.len(), documents.len());
    verdicts
}

/// Evaluates the CRD's duration rules (`duration(self) >= duration('A') && duration(self) <=
/// duration('B')`, or only the upper bound) on a value the pattern already accepted. A value
/// Go cannot hold as a duration (about 290 years) fails the rule at run time: our parser's
/// "too long" (over a year) is beyond every bound anyway.
fn cel_verdict(rule: &str, value: &str) -> Result<(), String> {
    let bounds: Vec<&str> = rule
        .split("duration('")
        .skip(1)
        .map(|rest| rest.split_once("')").expect("closing quote").0)
        .collect();
    let parse = |text: &str| mesh_config::parse_duration(text).map(mesh_config::Duration::get);
    let value = parse(value)?;
    let (min, max) = match (bounds.as_slice(), rule.contains(">=")) {
        ([min, max], true) => (parse(min)?, parse(max)?),
        ([max], false) => (std::time::Duration::ZERO, parse(max)?),
        _ => panic!("a duration rule of an unknown shape: {rule}"),
    };
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{rule} is false"))
    }
}

fn cel_problems(schema: &Value, spec: &Value) -> Vec<String> {
    let sidecar_schema = &schema["properties"]["spec"]["properties"]["sidecar"]["properties"];
    let Some(sidecar) = spec.get("sidecar").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for (name, value) in sidecar {
        let (Some(rules), Some(text)) = (
            sidecar_schema[name]["x-kubernetes-validations"].as_array(),
            value.as_str(),
        ) else {
            continue;
        };
        for rule in rules {
            if let Err(err) = cel_verdict(rule["rule"].as_str().expect("rule"), text) {
                problems.push(format!("{name}: {err}"));
            }
        }
    }
    problems
}

#[test]
fn validator_and_crd_agree_on_edge_values_of_every_field() {
    let mut schema = mesh_config::openapi::schema();
    let cases = cases();
    strict(&mut schema);
    let documents: Vec<Value> = cases.iter().map(|c| document(&c.spec)).collect();
    let verdicts = json_schema_verdicts(&schema, &documents);

    let mut disagreements = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for ((case, document), (schema_ok, schema_errors)) in cases.iter().zip(&documents).zip(verdicts)
    {
        let cel = if schema_ok {
            cel_problems(&schema, &case.spec)
        } else {
            Vec::new()
        };
        let crd_ok = schema_ok && cel.is_empty();
        let rust = mesh_config::parse_strict(&document.to_string());
        if rust.is_ok() {
            accepted += 1;
        } else {
            refused += 1;
        }
        if rust.is_ok() != crd_ok {
            disagreements.push(format!(
                "{}\n    validator: {}\n    CRD:       {}",
                case.what,
                match &rust {
                    Ok(_) => "valid".to_string(),
                    Err(err) => err.to_string(),
                },
                if crd_ok {
                    "valid".to_string()
                } else {
                    [schema_errors, cel].concat().join("; ")
                },
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} cases disagree:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
    // Both sides of every field were exercised.
    assert!(
        accepted > 100 && refused > 200,
        "{accepted} accepted, {refused} refused"
    );
}

/// The oracle is not blind: the schema it reads refuses what it must, and the rule evaluator
/// reads both rule shapes.
#[test]
fn the_oracle_can_refuse() {
    let mut schema = mesh_config::openapi::schema();
    strict(&mut schema);
    let documents = [
        document(&json!({"observability": {"tracing": {"port": 70000}}})),
        document(&json!({"bogus": 1})),
        document(&json!({"traffic": {"outboundIPRangeExclusionList": ["10.0.0.1"]}})),
        document(&json!({})),
    ];
    let verdicts: Vec<bool> = json_schema_verdicts(&schema, &documents)
        .into_iter()
        .map(|(ok, _)| ok)
        .collect();
    assert_eq!(verdicts, [false, false, false, true]);
    let both = "duration(self) >= duration('1ms') && duration(self) <= duration('1h')";
    assert!(cel_verdict(both, "0s").is_err());
    assert!(cel_verdict(both, "1h").is_ok());
    assert!(cel_verdict("duration(self) <= duration('1h')", "0").is_ok());
    assert!(cel_verdict("duration(self) <= duration('1h')", "61m").is_err());
}

/// YAML text as kubectl reads it (YAML 1.1, here PyYAML's `safe_load`, where a bare `off` is
/// `false`) and as `mesh config validate` reads it: the same verdicts.
#[test]
fn yaml_text_gets_the_verdict_kubectl_would_give() {
    const SCRIPT: &str = "\
import json, sys, yaml, jsonschema
data = json.load(sys.stdin)
validator = jsonschema.Draft4Validator(data['schema'])
print(json.dumps([validator.is_valid(yaml.safe_load(t)) for t in data['texts']]))
";
    let head = "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\nmetadata:\n  name: mesh-config\n  namespace: mesh-system\nspec:\n  observability:\n    tracing:\n";
    let texts: Vec<String> = [
        "      stitching: off\n",
        "      stitching: 'off'\n",
        "      stitching: \"off\"\n",
        "      stitching: in-flight\n",
        "      stitching: Off  # none\n",
        "      {stitching: off}\n",
    ]
    .iter()
    .map(|tail| format!("{head}{tail}"))
    .collect();
    let mut schema = mesh_config::openapi::schema();
    strict(&mut schema);
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(
            json!({"schema": schema, "texts": texts})
                .to_string()
                .as_bytes(),
        )
        .expect("write");
    let output = child.wait_with_output().expect("python3");
    assert!(output.status.success(), "the oracle failed");
    let kubectl: Vec<bool> = serde_json::from_slice(&output.stdout).expect("verdicts");
    let ours: Vec<bool> = texts
        .iter()
        .map(|t| mesh_config::parse_strict(t).is_ok())
        .collect();
    assert_eq!(ours, kubectl, "{texts:#?}");
    assert_eq!(ours, [false, true, true, true, false, false]);
}
