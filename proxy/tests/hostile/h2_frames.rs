//! HTTP/2 written and read frame by frame, for clients no library would let one be.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sidecar::within;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET http://a/` in HPACK from the static table only (no dynamic table state to share):
/// `:method GET`, `:scheme http`, `:path /`, `:authority a` (literal, not indexed).
pub const GET_BLOCK: [u8; 6] = [0x82, 0x86, 0x84, 0x01, 0x01, b'a'];

/// The connection preface and an empty SETTINGS frame.
pub fn hello() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// What the sidecar sent on an HTTP/2 connection until it closed it.
#[derive(Debug, Default)]
pub struct H2Seen {
    /// Error code of the GOAWAY frame, if one came.
    pub goaway: Option<u32>,
    /// RST_STREAM frames by error code.
    pub resets: Vec<u32>,
    /// Response HEADERS frames.
    pub responses: usize,
}

/// Reads frames until the sidecar closes the connection (EOF or reset), failing after
/// [`WAIT`] if it never does.
pub async fn frames_to_close(s: &mut tokio::net::tcp::OwnedReadHalf) -> H2Seen {
    let mut seen = H2Seen::default();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return;
            }
            let code = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
            };
            match head[3] {
                GOAWAY => seen.goaway = seen.goaway.or(code(4)),
                RST_STREAM => seen.resets.extend(code(0)),
                HEADERS => seen.responses += 1,
                _ => {}
            }
        }
    };
    within(read).await;
    seen
}

/// Sends `bytes` after the preface on a fresh connection; returns what the sidecar answered
/// before closing.
pub async fn h2_attack(addr: SocketAddr, bytes: Vec<u8>) -> H2Seen {
    let s = within(TcpStream::connect(addr)).await.unwrap();
    let (mut read, mut write) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut all = hello();
        all.extend(bytes);
        let _ = write.write_all(&all).await;
        // Keep the write half open: the close must come from the sidecar.
        write
    });
    let seen = frames_to_close(&mut read).await;
    let _ = writer.await;
    seen
}
