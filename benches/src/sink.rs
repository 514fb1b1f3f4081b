//! A trace sink for the tracing-cost runs: accepts any POST (Zipkin JSON or OTLP/HTTP) and
//! answers 202, counting requests and bytes so the report shows spans really left the sidecars.
//! Decoding them would measure the collector, not the sidecar. A body it cannot read whole or
//! inflate is counted apart ([`Counts::undecodable`]) and logged, never as the spans it
//! inflated before failing: a shortfall then says which side lost the spans.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::server;

#[derive(Default, Debug)]
pub struct Counts {
    pub posts: AtomicU64,
    pub bytes: AtomicU64,
    /// Spans received: `"traceId"` keys in the JSON bodies (one per span in Zipkin v2 and
    /// OTLP/JSON), counted after inflating gzip bodies (the sidecars compress by default).
    pub spans: AtomicU64,
    /// Export bodies the sink could not read whole or inflate: the spans they carried are not
    /// in [`Counts::spans`], so a shortfall shows whether the sink lost them.
    pub undecodable: AtomicU64,
}

/// How the sink answers, to measure requests through sidecars whose collector misbehaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Behaviour {
    /// 202 at once, like a healthy collector.
    #[default]
    Ok,
    /// Nothing listens: every export is refused.
    Down,
    /// Reads the export, then waits [`SLOW_ANSWER`] before answering 202.
    Slow,
    /// Reads the export and answers 500.
    Error,
}

/// How long a slow sink takes to answer an export.
pub const SLOW_ANSWER: std::time::Duration = std::time::Duration::from_secs(2);

/// Spans in one JSON export body. A SIMD substring search: the sink shares the machine with
/// the sidecars being measured, so it must cost next to nothing per span.
pub fn count_spans(body: &[u8]) -> u64 {
    memchr::memmem::find_iter(body, SPAN_KEY).count() as u64
}

const SPAN_KEY: &[u8] = b"\"traceId\"";

/// A gzip body inflated, or why it could not be (not gzip, cut short, a bad checksum).
fn gunzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() * 6);
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut out)?;
    Ok(out)
}

/// Starts the sink on 127.0.0.1 on a dedicated single-threaded runtime, as the echo server
/// is: on the load generator's runtime, receiving a batch (about 150 KiB) would hold up the
/// clients' tasks and lower the tracing pair's request rate for reasons of the bench's own.
/// The thread lives as long as the process.
pub fn start(behaviour: Behaviour) -> anyhow::Result<(SocketAddr, Arc<Counts>)> {
    let counts = Arc::new(Counts::default());
    if behaviour == Behaviour::Down {
        // A port just given up: connections to it are refused, as by a collector that is down.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        return Ok((addr, counts));
    }
    let c = counts.clone();
    let addr = server::spawn("trace-sink", move |tcp| serve(tcp, c.clone(), behaviour))?;
    Ok((addr, counts))
}

async fn serve(tcp: tokio::net::TcpStream, c: Arc<Counts>, behaviour: Behaviour) {
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let c = c.clone();
        async move {
            if behaviour == Behaviour::Slow {
                tokio::time::sleep(SLOW_ANSWER).await;
            }
            let gzip = req
                .headers()
                .get(http::header::CONTENT_ENCODING)
                .is_some_and(|e| e == "gzip");
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    c.undecodable.fetch_add(1, Ordering::Relaxed);
                    eprintln!("trace sink: export body not read whole: {e}");
                    Bytes::new()
                }
            };
            c.posts.fetch_add(1, Ordering::Relaxed);
            c.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            let spans = if gzip {
                match gunzip(&body) {
                    Ok(json) => count_spans(&json),
                    Err(e) => {
                        // The first such body is kept whole, to find what wrote it wrong.
                        let kept = if c.undecodable.fetch_add(1, Ordering::Relaxed) == 0 {
                            let path = std::env::temp_dir()
                                .join(format!("trace-sink-undecodable-{}.gz", std::process::id()));
                            std::fs::write(&path, &body)
                                .map_or(String::new(), |()| format!(", kept in {}", path.display()))
                        } else {
                            String::new()
                        };
                        eprintln!(
                            "trace sink: gzip body of {} bytes not inflated ({e}){kept}",
                            body.len()
                        );
                        0
                    }
                }
            } else {
                count_spans(&body)
            };
            c.spans.fetch_add(spans, Ordering::Relaxed);
            let mut resp = http::Response::new(Empty::<Bytes>::new());
            *resp.status_mut() = match behaviour {
                Behaviour::Error => http::StatusCode::INTERNAL_SERVER_ERROR,
                _ => http::StatusCode::ACCEPTED,
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), svc)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_one_span_per_trace_id_key() {
        let body = br#"[{"traceId":"a","id":"1"},{"traceId":"a","id":"2","parentId":"1"}]"#;
        assert_eq!(count_spans(body), 2);
        assert_eq!(count_spans(b"[]"), 0);
    }

    #[test]
    fn counts_spans_in_gzip_bodies() {
        use std::io::Write as _;
        let mut packed = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        packed
            .write_all(br#"[{"traceId":"a"},{"traceId":"b"}]"#)
            .unwrap();
        assert_eq!(count_spans(&gunzip(&packed.finish().unwrap()).unwrap()), 2);
        assert!(gunzip(b"not gzip").is_err());
    }

    /// A gzip body cut before its trailer inflates to whole spans, then fails: the sink counts
    /// it as undecodable, not as the spans it saw, and still answers (the sidecar cannot tell).
    #[tokio::test]
    async fn a_body_that_does_not_inflate_whole_is_counted_apart() {
        use std::io::Write as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (addr, counts) = start(Behaviour::Ok).unwrap();
        let mut packed = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        packed
            .write_all(br#"[{"traceId":"a"},{"traceId":"b"}]"#)
            .unwrap();
        let whole = packed.finish().unwrap();
        for body in [&whole[..], &whole[..whole.len() - 8]] {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /api/v2/spans HTTP/1.1\r\nhost: sink\r\ncontent-encoding: gzip\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            tcp.write_all(head.as_bytes()).await.unwrap();
            tcp.write_all(body).await.unwrap();
            let mut answer = String::new();
            tcp.read_to_string(&mut answer).await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        }
        assert_eq!(counts.posts.load(Ordering::Relaxed), 2);
        assert_eq!(
            counts.spans.load(Ordering::Relaxed),
            2,
            "the whole body only"
        );
        assert_eq!(counts.undecodable.load(Ordering::Relaxed), 1);
    }
}
