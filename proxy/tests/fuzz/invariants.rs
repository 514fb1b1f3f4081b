//! What must hold for any bytes a client opens a connection with, shared by the fuzz target
//! (`proxy/fuzz`) and the corpus replay (`tests/fuzz_corpus.rs`), so the two cannot drift.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use mesh_proxy::detect::{classify, detect, Detection, Protocol, Timeouts, DETECT_BUFFER};
use mesh_proxy::error::ConnectError;
use tokio::io::{AsyncRead, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first bytes of a connection, split into reads by the input itself: `classify` on every
/// prefix, and the whole of `detect` on the reads.
pub fn first_bytes(data: &[u8]) {
    let (cuts, bytes) = match data.split_first() {
        Some((&cuts, bytes)) => (cuts, bytes),
        None => (0, data),
    };
    for end in 0..=bytes.len().min(2 * DETECT_BUFFER) {
        classify_prefix(&bytes[..end]);
    }
    detect_reads(chunks(cuts, bytes));
}

/// What `classify` answers for one prefix, each checked against an oracle of its own.
fn classify_prefix(buf: &[u8]) {
    let got = classify(buf);
    assert_eq!(got, classify(buf), "not deterministic");
    if buf.is_empty() {
        assert_eq!(got, None, "nothing said, yet decided");
        return;
    }
    // Bounded: a full detection buffer always decides.
    if buf.len() >= DETECT_BUFFER {
        assert!(got.is_some(), "{} bytes and still undecided", buf.len());
    }
    if buf.starts_with(H2_PREFACE) {
        assert_eq!(got, Some(Protocol::Http2));
    } else if H2_PREFACE.starts_with(buf) {
        assert_eq!(got, None, "part of the HTTP/2 preface decided early");
    }
    match got {
        Some(Protocol::Http2) => assert!(buf.starts_with(H2_PREFACE)),
        // An HTTP/1 request line starts with a token (the method) and a space, after any empty
        // lines (RFC 9112 section 2.2 lets a server skip them).
        Some(Protocol::Http1) => {
            let start = buf
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            let line = &buf[start..];
            let method = line.iter().take_while(|&&b| is_tchar(b)).count();
            assert!(method > 0, "HTTP/1 without a method: {buf:?}");
            assert_eq!(
                line.get(method),
                Some(&b' '),
                "HTTP/1 without a space after the method"
            );
        }
        Some(Protocol::Opaque) | None => {}
    }
    // A TLS handshake is never read as HTTP.
    if buf[0] == 0x16 {
        assert_eq!(got, Some(Protocol::Opaque));
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `bytes` in reads whose sizes come from the bits of `cuts` (1 to 16 bytes each, or all at
/// once), so that the fuzzer also varies how a request line is split across reads.
fn chunks(cuts: u8, bytes: &[u8]) -> VecDeque<Vec<u8>> {
    if cuts == 0 {
        return VecDeque::from([bytes.to_vec()]);
    }
    let mut out = VecDeque::new();
    let mut rest = bytes;
    let mut bits = cuts;
    while !rest.is_empty() {
        let n = usize::from(bits & 0x0f) + 1;
        let (head, tail) = rest.split_at(n.min(rest.len()));
        out.push_back(head.to_vec());
        rest = tail;
        bits = bits.rotate_left(3);
    }
    out.retain(|c| !c.is_empty());
    out
}

/// A client that writes each chunk as one read and then closes: never pending, so detection
/// decides without a timer and never opens the server-first connection.
struct Reads(VecDeque<Vec<u8>>);

impl AsyncRead for Reads {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(chunk) = self.0.front_mut() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                self.0.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
}

/// Runs `detect` on the reads: whatever they hold, it decides without error, replays exactly
/// the bytes it read (a prefix of the stream, none lost or reordered), and its decision is
/// what `classify` says of that prefix.
fn detect_reads(reads: VecDeque<Vec<u8>>) {
    let sent: Vec<u8> = reads.iter().flatten().copied().collect();
    let mut client = Reads(reads);
    let connect = || async {
        Err::<tokio::io::Empty, _>(ConnectError::Timeout(SocketAddr::from(([127, 0, 0, 1], 9))))
    };
    // Long enough never to fire: the client is never pending.
    let timeouts = Timeouts {
        server_first_check: std::time::Duration::from_secs(3600),
        first_message: std::time::Duration::from_secs(3600),
        idle: std::time::Duration::from_secs(7200),
    };
    let detected = RUNTIME
        .with(|rt| {
            rt.block_on(detect(
                &mut client,
                connect,
                std::future::pending(),
                timeouts,
            ))
        })
        .expect("detection of a client that only writes and closes");
    assert!(
        detected.upstream.is_none(),
        "a server-first connection for a client that spoke"
    );
    let prefix = &detected.prefix[..];
    assert!(
        sent.starts_with(prefix),
        "the replayed prefix is not what the client sent"
    );
    let expected = if sent.is_empty() {
        Detection::ClientClosed
    } else {
        match classify(prefix) {
            Some(p) => p.into(),
            None => {
                // Undecided: only a client that closed mid-message, after all it sent was read.
                assert_eq!(prefix.len(), sent.len(), "stopped reading while undecided");
                Detection::Opaque
            }
        }
    };
    assert_eq!(detected.detection, expected, "prefix {prefix:?}");
}
