//! Gzip for span batches, with one deflate state kept for the exporter's life.
//!
//! A fresh `GzEncoder` per batch allocates and clears the compressor's tables (hundreds of KiB;
//! the allocator serves a block that size from `mmap`, so every batch also paid page faults and
//! an `munmap`): the largest single cost of export in a profile of a traced sidecar. Resetting
//! the same state between batches keeps the output identical and skips that work. The backend
//! is flate2's `zlib-rs` (the workspace picks it), faster than its default at the fast level.

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// RFC 1952 member header: deflate, no flags, no mtime, "fastest" extra flags, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

/// A reusable gzip writer at the fastest level: span batches are repetitive text, so level 1
/// already shrinks them several times, at a fraction of the CPU of the default level.
#[derive(Debug)]
pub struct Gzip {
    deflate: Compress,
}

impl Default for Gzip {
    fn default() -> Self {
        Self {
            // Raw deflate: the gzip header and trailer are written here.
            deflate: Compress::new(Compression::fast(), false),
        }
    }
}

impl Gzip {
    /// One gzip member holding `body`.
    pub fn pack(&mut self, body: &[u8]) -> Vec<u8> {
        self.deflate.reset();
        let mut out = Vec::with_capacity(HEADER.len() + body.len() / 4 + 64);
        out.extend_from_slice(&HEADER);
        loop {
            // `compress_vec` writes into spare capacity only: make room before each round.
            if out.capacity() - out.len() < 1024 {
                out.reserve(out.len().max(4096));
            }
            let consumed = usize::try_from(self.deflate.total_in()).unwrap_or(body.len());
            let input = body.get(consumed..).unwrap_or_default();
            match self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Finish)
            {
                Ok(Status::StreamEnd) => break,
                Ok(Status::Ok | Status::BufError) => continue,
                // Compressing from memory into memory has no failure mode but a bug; an
                // uncompressible answer would be wrong, so fall back to a fresh encoder.
                Err(_) => return fresh(body),
            }
        }
        let mut crc = Crc::new();
        crc.update(body);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE is the length modulo 2^32 (RFC 1952).
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out
    }
}

/// The one-off path, for the never-expected error above.
fn fresh(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
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
    fn matches_what_a_fresh_encoder_decodes_to() {
        let body = b"zipkin and otlp bodies alike".repeat(50);
        let mut gzip = Gzip::default();
        let _ = gzip.pack(b"an earlier batch that must leave nothing behind");
        assert_eq!(unpack(&gzip.pack(&body)), unpack(&fresh(&body)));
    }
}
