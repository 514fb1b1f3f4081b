//! OTLP/gRPC: the generated `TraceService` server from `opentelemetry-proto`, backed by the store.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::otlp;
use crate::store::Store;

/// Receives `TraceService/Export` calls.
#[derive(Debug)]
pub struct Receiver {
    store: Arc<Store>,
}

/// The tower service that answers gRPC requests on any collector listener. Accepts gzip, as the
/// OpenTelemetry Collector's receiver does (exporters compress by default).
pub fn service(store: Arc<Store>) -> TraceServiceServer<Receiver> {
    TraceServiceServer::new(Receiver { store })
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let batch = otlp::convert(request.get_ref());
        if batch.spans.is_empty() && !batch.rejected.is_empty() {
            return Err(tonic::Status::invalid_argument(batch.rejected.join("; ")));
        }
        let partial_success = crate::http::partial_success(&self.store, &batch.rejected);
        self.store.push(batch.spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success,
        }))
    }
}
