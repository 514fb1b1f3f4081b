//! The HTTP side of every listener: routes Zipkin v2 JSON, OTLP/HTTP protobuf and OTLP/gRPC
//! (by its `application/grpc` content type), so one port can take all three.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::store::Store;
use crate::{grpc, otlp, zipkin};

pub const ZIPKIN_PATH: &str = "/api/v2/spans";
pub const OTLP_PATH: &str = "/v1/traces";

/// Larger batches than this are refused (413) rather than buffered.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Accepts connections until the task is aborted; aborting also ends every open connection,
/// because they live in this task's `JoinSet`.
pub async fn serve(listener: TcpListener, store: Arc<Store>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next() => continue,
        };
        let store = store.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, store.clone(), peer));
            let result = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    store: Arc<Store>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/grpc") {
        let response = grpc::service(store)
            .oneshot(req)
            .await
            .unwrap_or_else(|never| match never {});
        return Ok(response.map(|b| b.map_err(BoxError::from).boxed_unsync()));
    }

    let path = req.uri().path().to_string();
    if path != ZIPKIN_PATH && path != OTLP_PATH {
        return Ok(text(
            StatusCode::NOT_FOUND,
            format!("no receiver at {path}; use POST {ZIPKIN_PATH} or POST {OTLP_PATH}"),
        ));
    }
    if req.method() != Method::POST {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} accepts POST only"),
        ));
    }
    let gzip = match req.headers().get(header::CONTENT_ENCODING) {
        None => false,
        Some(e) if e.as_bytes().eq_ignore_ascii_case(b"identity") => false,
        Some(e) if e.as_bytes().eq_ignore_ascii_case(b"gzip") => true,
        Some(encoding) => {
            return Ok(text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-encoding {encoding:?} is not supported; send gzip or identity"),
            ))
        }
    };
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("could not read the body (limit {MAX_BODY_BYTES} bytes): {e}"),
            ))
        }
    };

    let body = if gzip {
        match gunzip(&body) {
            Ok(body) => body,
            Err(message) => return Ok(text(StatusCode::BAD_REQUEST, message)),
        }
    } else {
        body
    };

    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let result = if path == ZIPKIN_PATH {
        // Like Zipkin itself: protobuf is announced, anything else is read as JSON.
        if media == "application/x-protobuf" {
            return Ok(text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("{ZIPKIN_PATH} takes Zipkin v2 JSON here, not proto3"),
            ));
        }
        zipkin::decode(&body).map_err(|e| e.to_string())
    } else {
        match media.as_str() {
            "application/x-protobuf" => otlp::decode(&body).map_err(|e| e.to_string()),
            "application/json" => otlp::decode_json(&body).map_err(|e| e.to_string()),
            _ => {
                return Ok(text(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "{OTLP_PATH} takes application/x-protobuf or application/json (OTLP/HTTP), not {media:?}"
                    ),
                ))
            }
        }
    };
    let batch = match result {
        Ok(batch) => batch,
        Err(message) => {
            tracing::info!(%peer, path, %message, "refused spans");
            return Ok(text(StatusCode::BAD_REQUEST, message));
        }
    };
    if batch.spans.is_empty() && !batch.rejected.is_empty() {
        // Nothing usable: refuse the request, as a real receiver would, with every reason.
        let message = batch.rejected.join("; ");
        store.reject(batch.rejected.len());
        tracing::info!(%peer, path, %message, "refused spans");
        return Ok(text(StatusCode::BAD_REQUEST, message));
    }
    tracing::debug!(%peer, path, count = batch.spans.len(), "spans received");
    let partial = partial_success(&store, &batch.rejected);
    store.push(batch.spans);
    Ok(accepted(&path, partial, media == "application/json"))
}

/// Counts and logs the spans refused out of a batch whose other spans were kept, and says so in
/// OTLP's terms (`partial_success`); `None` when every span was kept.
pub(crate) fn partial_success(
    store: &Store,
    rejected: &[String],
) -> Option<ExportTracePartialSuccess> {
    if rejected.is_empty() {
        return None;
    }
    store.reject(rejected.len());
    let message = rejected.join("; ");
    tracing::info!(rejected = rejected.len(), %message, "refused some spans of a batch");
    Some(ExportTracePartialSuccess {
        rejected_spans: rejected.len() as i64,
        error_message: message,
    })
}

/// Inflates a gzip body, refusing one that grows past the body limit (a "zip bomb").
fn gunzip(body: &[u8]) -> Result<Bytes, String> {
    use std::io::Read as _;
    let mut out = Vec::new();
    let limit = MAX_BODY_BYTES as u64 + 1;
    flate2::read::GzDecoder::new(body)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| format!("body is not valid gzip: {e}"))?;
    if out.len() > MAX_BODY_BYTES {
        return Err(format!(
            "gzip body inflates past the limit of {MAX_BODY_BYTES} bytes"
        ));
    }
    Ok(Bytes::from(out))
}

/// Zipkin answers 202 with no body; OTLP/HTTP answers 200 with an export response (carrying
/// the partial success, if any) in the encoding the request came in.
fn accepted(
    path: &str,
    partial_success: Option<ExportTracePartialSuccess>,
    json: bool,
) -> Response<Body> {
    if path != OTLP_PATH {
        let mut response = Response::new(full(Vec::new()));
        *response.status_mut() = StatusCode::ACCEPTED;
        return response;
    }
    let reply = ExportTraceServiceResponse { partial_success };
    let (body, content_type) = if json {
        let body = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{}".to_vec());
        (body, "application/json")
    } else {
        (
            prost::Message::encode_to_vec(&reply),
            "application/x-protobuf",
        )
    };
    let mut response = Response::new(full(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(full(format!("{message}\n").into_bytes()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
}
