//! Protocol detection on the first bytes a client sends.
//!
//! The proxy reads once (up to [`DETECT_BUFFER`]) under [`DETECT_TIMEOUT`] and classifies:
//! the HTTP/2 connection preface means h2c (prior knowledge), a well-formed HTTP/1 request line
//! means HTTP/1, a TLS ClientHello or anything else is opaque TCP.
//!
//! The design biases towards availability: whenever the bytes are not clearly HTTP the
//! connection is forwarded as opaque TCP, which always works (it only loses L7 visibility),
//! whereas misreading a non-HTTP stream as HTTP would break it.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long to wait for the client's first bytes before deciding the server speaks first.
///
/// HTTP clients write their request as soon as they connect, so on an idle node a few
/// milliseconds would do; but a connection that misses the window is proxied as opaque TCP for
/// its whole life, losing its spans, and on a busy node (two cores shared by apps and sidecars)
/// a starved client can take well over 100 ms to write. One second keeps HTTP traced under load
/// while a server-speaks-first protocol on a port missing from `opaquePorts` (MySQL, SMTP...) only
/// sees its greeting delayed once per connection; linkerd waits 10 s for the same reason, and
/// listing the port in `opaquePorts` removes the wait entirely.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Enough for any request line worth tracing; longer lines are judged on their first KiB.
pub const DETECT_BUFFER: usize = 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Classifies a prefix of the stream; `None` means the bytes so far do not decide yet.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // TLS handshake record: content type 22, major version 3.
    if buf[0] == 0x16 {
        return Some(Protocol::Opaque);
    }
    // Only the request line decides: once httparse has read a valid version, the line is
    // HTTP/1 whatever follows (a bad header is the HTTP server's to answer with 400).
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(buf);
    if req.version.is_some() {
        return Some(Protocol::Http1);
    }
    match parsed {
        Ok(httparse::Status::Complete(_)) => Some(Protocol::Http1),
        // A request line longer than the buffer: a token method and a space so far are good
        // enough to let the HTTP server judge (and answer 414/400).
        Ok(httparse::Status::Partial) if buf.len() >= DETECT_BUFFER => {
            Some(req.method.map_or(Protocol::Opaque, |_| Protocol::Http1))
        }
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Protocol::Opaque),
    }
}

/// Reads the client's first bytes and classifies them. The bytes read are returned so they can
/// be replayed to whoever handles the connection. A timeout with no decision means opaque.
pub async fn detect<I>(io: &mut I) -> std::io::Result<(Protocol, BytesMut)>
where
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(DETECT_BUFFER);
    let deadline = tokio::time::Instant::now() + DETECT_TIMEOUT;
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            // Timed out: the server speaks first, or the client is too slow to matter.
            Err(_) => return Ok((Protocol::Opaque, buf)),
            // The client closed its side: whatever it sent is forwarded as is.
            Ok(Ok(0)) => return Ok((classify(&buf).unwrap_or(Protocol::Opaque), buf)),
            Ok(Ok(_)) => {
                if let Some(p) = classify(&buf) {
                    return Ok((p, buf));
                }
                if buf.len() >= DETECT_BUFFER {
                    return Ok((Protocol::Opaque, buf));
                }
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn h2_preface_is_http2() {
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
    }

    #[test]
    fn http1_request_lines() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(
            classify(b"POST /x?y=1 HTTP/1.0\r\nHost"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET /ind"), None);
    }

    #[test]
    fn bad_header_after_good_request_line_is_still_http1() {
        // The HTTP server answers 400 to this; detection must not make it opaque.
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nbad header\r\n\r\n"),
            Some(Protocol::Http1)
        );
    }

    #[test]
    fn tls_and_binary_are_opaque() {
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some(Protocol::Opaque)
        );
        assert_eq!(classify(&[0x00, 0x01, 0x02]), Some(Protocol::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET / SMTP/1.0\r\n"), Some(Protocol::Opaque));
    }

    #[test]
    fn very_long_request_line_is_http1() {
        let mut line = b"GET /".to_vec();
        line.resize(DETECT_BUFFER + 10, b'a');
        assert_eq!(classify(&line), Some(Protocol::Http1));
    }

    #[tokio::test]
    async fn silence_is_opaque() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let (proto, buf) = detect(&mut server).await.unwrap();
        assert_eq!(proto, Protocol::Opaque);
        assert!(buf.is_empty());
        client.write_all(b"x").await.unwrap();
    }

    #[tokio::test]
    async fn request_split_across_writes_is_http1() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            client.write_all(b"GET /a").await.unwrap();
            tokio::task::yield_now().await;
            client.write_all(b" HTTP/1.1\r\n\r\n").await.unwrap();
            client
        });
        let (proto, buf) = detect(&mut server).await.unwrap();
        assert_eq!(proto, Protocol::Http1);
        assert!(buf.starts_with(b"GET /a"));
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn eof_is_opaque() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let (proto, _) = detect(&mut server).await.unwrap();
        assert_eq!(proto, Protocol::Opaque);
    }
}
