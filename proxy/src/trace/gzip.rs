//! Gzip for span batches: our [`Deflate`] in an RFC 1952 member.
//!
//! One deflate state is kept for the exporter's life, so a batch pays no set-up: see
//! [`super::deflate`] for why the compressor is ours (4 times fewer instructions per span than
//! flate2's zlib-rs backend at its fastest level, for the same size). The CRC is flate2's
//! (crc32fast, SIMD where the CPU has it).

use flate2::Crc;

use super::deflate::Deflate;

/// RFC 1952 member header: deflate, no flags, no mtime, "fastest" extra flags, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

/// A reusable gzip writer. Span batches are repetitive text, so a fast LZ77 with fixed codes
/// already shrinks them several times, at a fraction of the CPU of zlib's default level.
#[derive(Debug, Default)]
pub struct Gzip {
    deflate: Deflate,
}

impl Gzip {
    /// One gzip member holding `body`.
    pub fn pack(&mut self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER.len() + body.len() / 4 + 64);
        out.extend_from_slice(&HEADER);
        self.deflate.compress(body, &mut out);
        let mut crc = Crc::new();
        crc.update(body);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE is the length modulo 2^32 (RFC 1952).
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn unpack(packed: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(packed)
            .read_to_end(&mut out)
            .expect("a valid gzip member");
        out
    }

    #[test]
    fn round_trips_and_shrinks_batches() {
        let body = br#"[{"id":"a2fb4a1d1a96d312"}]"#.repeat(100);
        let packed = Gzip::default().pack(&body);
        assert!(packed.len() < body.len() / 5, "{} bytes", packed.len());
        assert_eq!(unpack(&packed), body);
    }

    #[test]
    fn one_state_serves_many_batches_of_any_size() {
        let mut gzip = Gzip::default();
        // Pseudo-random bytes do not compress, so the output outgrows its first reservation.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let batches: [&[u8]; 4] = [b"", &noise, b"{\"a\":1}", &noise[..1000]];
        for body in batches {
            assert_eq!(unpack(&gzip.pack(body)), body);
        }
    }

    #[test]
    fn decodes_like_zlib_output_after_earlier_batches() {
        use std::io::Write as _;
        let body = b"zipkin and otlp bodies alike".repeat(50);
        let mut gzip = Gzip::default();
        let _ = gzip.pack(b"an earlier batch that must leave nothing behind");
        let mut zlib = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(&body).unwrap();
        assert_eq!(unpack(&gzip.pack(&body)), unpack(&zlib.finish().unwrap()));
    }
}
