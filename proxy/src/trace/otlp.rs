//! The OTLP shape of a span: [`SpanRecord`] as the OpenTelemetry SDK's `SpanData` (which
//! `opentelemetry-otlp` encodes), with attributes per the HTTP semantic conventions (the stable
//! v1.2x names), and the sidecar's resource per the resource conventions.
//!
//! The conventions differ by side, and service graphs (Tempo, Jaeger) draw their edges from
//! them: a CLIENT span says where it went (`url.full`, `server.*`, and the upstream it reached
//! as `network.peer.*`); a SERVER span says what it was asked (`url.path`, `url.query`,
//! `url.scheme`) and who asked (`client.address`, `network.peer.*` = the caller).

use std::borrow::Cow;

use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

use super::span::SpanRecord;
use super::{Direction, Identity};

/// The sidecar's resource: `service.name` as Zipkin's `localEndpoint.serviceName`
/// (`<service>.<namespace>`), so one service has one name in every backend, plus what the
/// Kubernetes resource conventions give a pod. Only known values are written.
pub fn resource(identity: &Identity) -> Resource {
    let mut attributes = Vec::with_capacity(4);
    if !identity.namespace.is_empty() {
        attributes.push(KeyValue::new(
            "service.namespace",
            identity.namespace.clone(),
        ));
        attributes.push(KeyValue::new(
            "k8s.namespace.name",
            identity.namespace.clone(),
        ));
    }
    if !identity.pod_name.is_empty() {
        attributes.push(KeyValue::new("k8s.pod.name", identity.pod_name.clone()));
    }
    attributes.push(KeyValue::new("service.instance.id", instance_id(identity)));
    Resource::builder_empty()
        .with_service_name(identity.service_name())
        .with_attributes(attributes)
        .build()
}

/// `service.instance.id`: unique per sidecar and stable across its restarts, as the resource
/// conventions ask. `<namespace>.<pod>` is unique in a cluster; without a pod name (a local
/// run) the pod IP, else the service name with the process id.
fn instance_id(identity: &Identity) -> String {
    match (&identity.pod_name, identity.pod_ip) {
        (pod, _) if !pod.is_empty() && !identity.namespace.is_empty() => {
            format!("{}.{pod}", identity.namespace)
        }
        (pod, _) if !pod.is_empty() => pod.clone(),
        (_, Some(ip)) => format!("{}@{ip}", identity.service_name()),
        (_, None) => format!("{}@pid{}", identity.service_name(), std::process::id()),
    }
}

/// The SDK form of one span, for the OTLP exporters.
pub fn span_data(r: &SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let trace_id = opentelemetry::trace::TraceId::from_bytes(
        ((u128::from(r.ids.trace_id.high()) << 64) | u128::from(r.ids.trace_id.low()))
            .to_be_bytes(),
    );
    let span_id = opentelemetry::trace::SpanId::from_bytes(r.ids.span_id.get().to_be_bytes());
    let parent = r
        .ids
        .parent_id
        .map(|p| opentelemetry::trace::SpanId::from_bytes(p.get().to_be_bytes()))
        .unwrap_or(opentelemetry::trace::SpanId::INVALID);

    let mut attributes = attributes(r);
    let status = match r.error_text() {
        Some(e) => {
            attributes.push(KeyValue::new("error.type", e.clone()));
            Status::Error { description: e }
        }
        None => Status::Unset,
    };
    SpanData {
        span_context: SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: parent,
        parent_span_is_remote: r.ids.parent_id.is_some(),
        span_kind: match r.direction {
            Direction::Inbound => SpanKind::Server,
            Direction::Outbound => SpanKind::Client,
        },
        name: Cow::Borrowed(r.name()),
        start_time: r.start,
        end_time: r.start + r.duration,
        attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// The HTTP semantic-convention attributes of a span, by side.
fn attributes(r: &SpanRecord) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(16);
    match r.known_method() {
        Some(method) => out.push(KeyValue::new("http.request.method", method)),
        None => {
            out.push(KeyValue::new("http.request.method", "_OTHER"));
            out.push(KeyValue::new(
                "http.request.method_original",
                r.method.as_str().to_owned(),
            ));
        }
    }
    if let Some(s) = r.outcome.status {
        out.push(KeyValue::new(
            "http.response.status_code",
            i64::from(s.as_u16()),
        ));
    }
    if let Some((service, method)) = r.rpc() {
        out.push(KeyValue::new("rpc.system", "grpc"));
        out.push(KeyValue::new("rpc.service", service.to_owned()));
        out.push(KeyValue::new("rpc.method", method.to_owned()));
    }
    if let Some(code) = r.outcome.grpc_status {
        out.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
    }
    let (address, port) = r.server_address();
    out.push(KeyValue::new("server.address", address.to_owned()));
    if let Some(port) = port {
        out.push(KeyValue::new("server.port", i64::from(port)));
    }
    // The other end of this span's connection: the caller for a SERVER span, the upstream the
    // sidecar connected to for a CLIENT span.
    let peer = match r.direction {
        Direction::Inbound => r.peer,
        Direction::Outbound => r.upstream,
    };
    out.push(KeyValue::new("network.peer.address", peer.ip().to_string()));
    out.push(KeyValue::new("network.peer.port", i64::from(peer.port())));
    out.push(KeyValue::new(
        "network.protocol.version",
        if r.http2 { "2" } else { "1.1" },
    ));
    match r.direction {
        Direction::Outbound => out.push(KeyValue::new("url.full", r.url().to_owned())),
        Direction::Inbound => {
            out.push(KeyValue::new("url.scheme", r.scheme().to_owned()));
            out.push(KeyValue::new("url.path", r.path().to_owned()));
            if let Some(query) = r.query() {
                out.push(KeyValue::new("url.query", query.to_owned()));
            }
            out.push(KeyValue::new("client.address", r.peer.ip().to_string()));
            out.push(KeyValue::new("client.port", i64::from(r.peer.port())));
        }
    }
    out.push(KeyValue::new(
        "http.request.body.size",
        r.outcome.request_size as i64,
    ));
    out.push(KeyValue::new(
        "http.response.body.size",
        r.outcome.response_size as i64,
    ));
    if let Some(how) = r.stitch {
        out.push(KeyValue::new(super::stitch::TAG, how.as_str()));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use mesh_config::{Protocol, Tracing};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue as ProtoKv};
    use opentelemetry_proto::tonic::trace::v1::{span::SpanKind as ProtoKind, status::StatusCode};
    use prost::Message;

    use super::super::export::Exporter;
    use super::super::span::tests::fixture;
    use super::*;

    /// An OTLP/HTTP receiver that keeps the bodies it is sent: what the wire carried, before
    /// any collector interprets it.
    async fn receiver() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Bytes>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let _ = tx.send(body);
                            Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, rx)
    }

    /// Exports `spans` with the production exporter and decodes the request with the official
    /// protobuf schema.
    async fn exported(identity: &Identity, spans: Vec<SpanRecord>) -> ExportTraceServiceRequest {
        let (addr, mut bodies) = receiver().await;
        let config = Tracing {
            enable: true,
            address: addr.ip().to_string(),
            port: addr.port(),
            endpoint: "/v1/traces".into(),
            protocol: Protocol::OtlpHttp,
            ..Tracing::default()
        };
        let collector = super::super::collector::Collector::of(&config);
        let mut exporter = Exporter::build(&collector, identity).unwrap();
        // The exporter takes the newest span first: hand it the oldest last.
        let count = spans.len();
        let mut pending: Vec<SpanRecord> = spans.into_iter().rev().collect();
        let batch = exporter.encode(&mut pending, count);
        assert!(pending.is_empty(), "one batch holds every span");
        exporter.send(&batch).await.unwrap();
        let body = bodies.recv().await.unwrap();
        let body = if exporter.gzip() {
            use std::io::Read as _;
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut plain)
                .expect("a gzip body");
            Bytes::from(plain)
        } else {
            body
        };
        ExportTraceServiceRequest::decode(body).expect("an OTLP ExportTraceServiceRequest")
    }

    fn attrs(kvs: &[ProtoKv]) -> HashMap<String, Value> {
        kvs.iter()
            .map(|kv| {
                let v = kv.value.as_ref().and_then(|v| v.value.clone()).unwrap();
                (kv.key.clone(), v)
            })
            .collect()
    }

    fn s(v: &str) -> Value {
        Value::StringValue(v.into())
    }

    fn identity() -> Identity {
        Identity {
            service: "reviews".into(),
            namespace: "shop".into(),
            pod_name: "reviews-7d4f9-x2x8q".into(),
            pod_ip: Some("10.0.0.2".parse().unwrap()),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resource_names_the_service_and_the_pod() {
        let span = fixture(Direction::Inbound, "http://b/", 200);
        let req = exported(&identity(), vec![span]).await;
        let resource = attrs(&req.resource_spans[0].resource.as_ref().unwrap().attributes);
        assert_eq!(resource["service.name"], s("reviews.shop"));
        assert_eq!(resource["service.namespace"], s("shop"));
        assert_eq!(resource["k8s.namespace.name"], s("shop"));
        assert_eq!(resource["k8s.pod.name"], s("reviews-7d4f9-x2x8q"));
        assert_eq!(
            resource["service.instance.id"],
            s("shop.reviews-7d4f9-x2x8q")
        );
        let scope = req.resource_spans[0].scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(scope.name, "mesh-proxy");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_and_server_spans_follow_the_http_conventions() {
        let client = fixture(
            Direction::Outbound,
            "http://alice:pw@b.default:8080/api/items?x=1",
            404,
        );
        let mut server = fixture(
            Direction::Inbound,
            "http://b.default:8080/api/items?x=1",
            404,
        );
        server.http2 = true;
        let req = exported(&identity(), vec![client, server]).await;
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);

        let c = &spans[0];
        assert_eq!(c.kind, ProtoKind::Client as i32);
        assert_eq!(c.name, "GET");
        assert_eq!(hex(&c.trace_id), "000000000000000048485a3953bb6124");
        assert_eq!(hex(&c.span_id), "a2fb4a1d1a96d312");
        assert_eq!(hex(&c.parent_span_id), "0020000000000001");
        let a = attrs(&c.attributes);
        assert_eq!(a["http.request.method"], s("GET"));
        assert_eq!(a["http.response.status_code"], Value::IntValue(404));
        assert_eq!(a["url.full"], s("http://b.default:8080/api/items?x=1"));
        assert_eq!(a["server.address"], s("b.default"));
        assert_eq!(a["server.port"], Value::IntValue(8080));
        // The upstream this CLIENT span reached, not the app that made the request.
        assert_eq!(a["network.peer.address"], s("10.0.0.2"));
        assert_eq!(a["network.peer.port"], Value::IntValue(8080));
        assert_eq!(a["network.protocol.version"], s("1.1"));
        assert_eq!(a["http.request.body.size"], Value::IntValue(3));
        assert_eq!(a["http.response.body.size"], Value::IntValue(42));
        for absent in [
            "url.path",
            "url.scheme",
            "client.address",
            "upstream_cluster",
        ] {
            assert!(!a.contains_key(absent), "{absent} on a CLIENT span");
        }
        // A 4xx fails the client's request.
        assert_eq!(a["error.type"], s("404"));
        assert_eq!(c.status.as_ref().unwrap().code, StatusCode::Error as i32);

        let v = &spans[1];
        assert_eq!(v.kind, ProtoKind::Server as i32);
        assert_eq!(v.name, "GET");
        let a = attrs(&v.attributes);
        assert_eq!(a["url.path"], s("/api/items"));
        assert_eq!(a["url.query"], s("x=1"));
        assert_eq!(a["url.scheme"], s("http"));
        assert_eq!(a["server.address"], s("b.default"));
        assert_eq!(a["server.port"], Value::IntValue(8080));
        // The caller, on both counts.
        assert_eq!(a["client.address"], s("10.0.0.1"));
        assert_eq!(a["network.peer.address"], s("10.0.0.1"));
        assert_eq!(a["network.peer.port"], Value::IntValue(4000));
        assert_eq!(a["network.protocol.version"], s("2"));
        assert!(!a.contains_key("url.full"));
        // The server answered as asked: not an error.
        assert!(!a.contains_key("error.type"));
        assert_ne!(
            v.status.as_ref().map(|s| s.code),
            Some(StatusCode::Error as i32)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_methods_and_server_errors() {
        let (parts, _) = http::Request::builder()
            .method("PURGE")
            .uri("http://cache:80/img/1.png")
            .body(())
            .unwrap()
            .into_parts();
        let f = fixture(Direction::Inbound, "http://b/", 200);
        let mut r = SpanRecord::begin(Direction::Inbound, &parts, f.ids, false, f.peer, f.upstream);
        r.end(f.start, f.duration, f.outcome.clone());
        r.outcome.status = http::StatusCode::from_u16(503).ok();
        let req = exported(&identity(), vec![r]).await;
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "HTTP");
        let a = attrs(&span.attributes);
        assert_eq!(a["http.request.method"], s("_OTHER"));
        assert_eq!(a["http.request.method_original"], s("PURGE"));
        assert_eq!(a["server.port"], Value::IntValue(80));
        assert_eq!(a["error.type"], s("503"));
        assert_eq!(span.status.as_ref().unwrap().code, StatusCode::Error as i32);
    }

    #[test]
    fn instance_ids_without_a_pod_name() {
        let mut id = identity();
        id.pod_name.clear();
        assert_eq!(instance_id(&id), "reviews.shop@10.0.0.2");
        id.pod_ip = None;
        assert!(instance_id(&id).starts_with("reviews.shop@pid"));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
