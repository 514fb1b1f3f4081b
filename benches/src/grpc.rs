//! gRPC's length-prefixed message framing (the body of every gRPC request and response over
//! HTTP/2): one byte of flags (0: not compressed), a 4-byte big-endian length, the message.
//! The bench sends and echoes opaque messages, so protobuf itself never enters.

use bytes::{BufMut, Bytes, BytesMut};

/// The header before each message: compressed flag and length.
pub const HEADER_LEN: usize = 5;

/// The content type of a gRPC call, on request and response.
pub const CONTENT_TYPE: &str = "application/grpc";

/// Why a body is not exactly one uncompressed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than five bytes, or fewer message bytes than the header announces.
    Truncated { have: usize, need: usize },
    /// The compressed flag is set; the bench negotiates no compression.
    Compressed,
    /// Bytes after the one message (the bench's calls are unary).
    Trailing(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated { have, need } => {
                write!(f, "gRPC frame truncated: {have} of {need} bytes")
            }
            FrameError::Compressed => f.write_str("gRPC message compressed without an encoding"),
            FrameError::Trailing(n) => write!(f, "{n} bytes after the gRPC message"),
        }
    }
}

impl std::error::Error for FrameError {}

/// `message` as one uncompressed gRPC frame. Messages over 4 GiB cannot be framed (the length
/// field is 32 bits); the bench's largest is 1 MiB, so a longer one is cut to fit.
pub fn encode(message: &[u8]) -> Bytes {
    let len = message.len().min(u32::MAX as usize);
    let mut out = BytesMut::with_capacity(HEADER_LEN + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    out.put_slice(&message[..len]);
    out.freeze()
}

/// The message of a body that is exactly one uncompressed gRPC frame.
pub fn decode(body: &[u8]) -> Result<&[u8], FrameError> {
    let Some(header) = body.get(..HEADER_LEN) else {
        return Err(FrameError::Truncated {
            have: body.len(),
            need: HEADER_LEN,
        });
    };
    if header[0] != 0 {
        return Err(FrameError::Compressed);
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let rest = &body[HEADER_LEN..];
    if rest.len() < len {
        return Err(FrameError::Truncated {
            have: body.len(),
            need: HEADER_LEN + len,
        });
    }
    if rest.len() > len {
        return Err(FrameError::Trailing(rest.len() - len));
    }
    Ok(rest)
}

/// True for `application/grpc` and its subtypes (`application/grpc+proto`), as gRPC servers
/// accept them.
pub fn is_grpc(content_type: Option<&http::HeaderValue>) -> bool {
    content_type.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v == CONTENT_TYPE
            || v.strip_prefix(CONTENT_TYPE)
                .is_some_and(|rest| rest.starts_with('+') || rest.starts_with(';'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_through_its_frame() {
        let framed = encode(b"hello");
        assert_eq!(&framed[..], b"\0\0\0\0\x05hello");
        assert_eq!(decode(&framed), Ok(&b"hello"[..]));
        let empty = encode(b"");
        assert_eq!(&empty[..], b"\0\0\0\0\0");
        assert_eq!(decode(&empty), Ok(&b""[..]));
        let big = vec![7u8; 1 << 20];
        assert_eq!(decode(&encode(&big)).map(<[u8]>::len), Ok(1 << 20));
    }

    #[test]
    fn malformed_frames_are_refused_not_panicked_on() {
        assert_eq!(
            decode(b"\0\0\0"),
            Err(FrameError::Truncated { have: 3, need: 5 })
        );
        assert_eq!(
            decode(b"\0\0\0\0\x09hello"),
            Err(FrameError::Truncated { have: 10, need: 14 })
        );
        assert_eq!(decode(b"\x01\0\0\0\x01x"), Err(FrameError::Compressed));
        assert_eq!(decode(b"\0\0\0\0\x01xy"), Err(FrameError::Trailing(1)));
        assert_eq!(
            decode(b"\0\xff\xff\xff\xff"),
            Err(FrameError::Truncated {
                have: 5,
                need: 5 + u32::MAX as usize
            })
        );
    }

    #[test]
    fn grpc_content_types_are_recognised() {
        let v = |s: &'static str| http::HeaderValue::from_static(s);
        assert!(is_grpc(Some(&v("application/grpc"))));
        assert!(is_grpc(Some(&v("application/grpc+proto"))));
        assert!(!is_grpc(Some(&v("application/grpc-web"))));
        assert!(!is_grpc(Some(&v("application/json"))));
        assert!(!is_grpc(None));
    }
}
