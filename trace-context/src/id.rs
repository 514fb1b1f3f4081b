//! Trace and span identifiers and their lower-hex wire form.

use std::fmt;
use std::num::NonZeroU64;

/// A trace id. B3 allows 64- or 128-bit ids; a 64-bit id must stay 64-bit downstream, or
/// a 64-bit-only tracer further along would see a different trace, so the width is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId {
    hi: u64,
    lo: u64,
    wide: bool,
}

impl TraceId {
    /// A 128-bit id from its halves; `None` when both are zero (zero means "no trace").
    pub fn new_128(hi: u64, lo: u64) -> Option<Self> {
        (hi != 0 || lo != 0).then_some(Self { hi, lo, wide: true })
    }

    /// A 64-bit id; `None` when zero.
    pub fn new_64(lo: u64) -> Option<Self> {
        (lo != 0).then_some(Self {
            hi: 0,
            lo,
            wide: false,
        })
    }

    /// A fresh random 128-bit id (contract: new traces are 32 lower-hex). Both halves are
    /// non-zero so that the low half alone, which sampling and 64-bit systems use, is valid.
    pub fn generate() -> Self {
        Self {
            hi: nonzero_random(),
            lo: nonzero_random(),
            wide: true,
        }
    }

    pub fn high(&self) -> u64 {
        self.hi
    }

    /// The low 64 bits: what 64-bit systems and the sampler see.
    pub fn low(&self) -> u64 {
        self.lo
    }

    pub fn is_128bit(&self) -> bool {
        self.wide
    }

    /// Parses 16 or 32 lower-hex characters (the B3 spec's only two lengths).
    pub fn parse(hex: &[u8]) -> Option<Self> {
        match hex.len() {
            16 => Self::new_64(parse_hex64(hex)?),
            32 => Self::new_128(parse_hex64(&hex[..16])?, parse_hex64(&hex[16..])?),
            _ => None,
        }
    }

    /// Lower-hex, 16 or 32 characters, without allocating.
    pub fn encode(&self) -> HexBuf<32> {
        let mut buf = HexBuf {
            bytes: [0; 32],
            len: 0,
        };
        if self.wide {
            write_hex64(self.hi, &mut buf.bytes[..16]);
            write_hex64(self.lo, &mut buf.bytes[16..]);
            buf.len = 32;
        } else {
            write_hex64(self.lo, &mut buf.bytes[..16]);
            buf.len = 16;
        }
        buf
    }

    /// Always 32 hex: W3C traceparent has no 64-bit form, so a 64-bit id is left-padded with
    /// zeros (what the W3C spec and brave do), which maps back to the same low 64 bits.
    pub fn encode_128(&self) -> HexBuf<32> {
        let mut buf = HexBuf {
            bytes: [0; 32],
            len: 32,
        };
        write_hex64(self.hi, &mut buf.bytes[..16]);
        write_hex64(self.lo, &mut buf.bytes[16..]);
        buf
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode().as_str())
    }
}

/// A span id: 64 bits, never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(NonZeroU64);

impl SpanId {
    pub fn new(id: u64) -> Option<Self> {
        NonZeroU64::new(id).map(Self)
    }

    pub fn generate() -> Self {
        Self(NonZeroU64::new(nonzero_random()).unwrap_or(NonZeroU64::MIN))
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }

    /// Parses exactly 16 lower-hex characters, non-zero.
    pub fn parse(hex: &[u8]) -> Option<Self> {
        if hex.len() != 16 {
            return None;
        }
        Self::new(parse_hex64(hex)?)
    }

    pub fn encode(&self) -> HexBuf<16> {
        let mut buf = HexBuf {
            bytes: [0; 16],
            len: 16,
        };
        write_hex64(self.get(), &mut buf.bytes);
        buf
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode().as_str())
    }
}

/// Lower-hex text on the stack, so encoding an id never allocates.
#[derive(Clone, Copy)]
pub struct HexBuf<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> HexBuf<N> {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn as_str(&self) -> &str {
        // Only ever filled with ASCII hex digits.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

fn nonzero_random() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

/// Parses up to 16 lower-hex characters. Upper case is rejected: the B3 spec says lower-hex,
/// and brave (its reference implementation) refuses anything else.
pub(crate) fn parse_hex64(hex: &[u8]) -> Option<u64> {
    if let Ok(id) = <&[u8; 16]>::try_from(hex) {
        return parse_hex16(id);
    }
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    // Branch-free per character: invalid characters set a high bit, checked once at the end.
    let mut v: u64 = 0;
    let mut invalid = 0u8;
    for &c in hex {
        let d = HEX_VALUE[usize::from(c)];
        invalid |= d;
        v = (v << 4) | u64::from(d & 0xf);
    }
    (invalid & 0xf0 == 0).then_some(v)
}

/// Exactly 16 lower-hex characters (every B3 id is one or two of these), eight at a time.
fn parse_hex16(hex: &[u8; 16]) -> Option<u64> {
    let (high, low) = hex.split_at(8);
    let high = parse_hex8(u64::from_be_bytes(high.try_into().ok()?))?;
    let low = parse_hex8(u64::from_be_bytes(low.try_into().ok()?))?;
    Some((u64::from(high) << 32) | u64::from(low))
}

/// Eight lower-hex characters, the first in the most significant byte, as their value. Each
/// byte is range-checked in parallel: with every byte's top bit set before subtracting, no
/// borrow crosses into the next byte, so a byte's top bit afterwards says "at least".
fn parse_hex8(chars: u64) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    if chars & HIGHS != 0 {
        return None;
    }
    let within = |lo: u8, hi: u8| {
        let at_least_lo = (chars | HIGHS).wrapping_sub(ONES * u64::from(lo));
        let at_most_hi = ((ONES * u64::from(hi)) | HIGHS).wrapping_sub(chars);
        at_least_lo & at_most_hi & HIGHS
    };
    let digits = within(b'0', b'9');
    let letters = within(b'a', b'f');
    if digits | letters != HIGHS {
        return None;
    }
    // '0'..'9' are 0x30..0x39 and 'a'..'f' 0x61..0x66: the low nibble, plus 9 for a letter.
    let mut v = (chars & (ONES * 0x0f)) + (letters >> 7) * 9;
    // Pack the eight nibbles, one per byte, into 32 bits.
    v = (v | (v >> 4)) & 0x00ff_00ff_00ff_00ff;
    v = (v | (v >> 8)) & 0x0000_ffff_0000_ffff;
    v = (v | (v >> 16)) & 0x0000_0000_ffff_ffff;
    u32::try_from(v).ok()
}

/// The value of each lower-hex digit; 0xff for every other byte.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// The two lower-hex digits of every byte value: an id is written a byte at a time.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    table
};

/// `v` as 16 lower-hex digits into `out` (16 bytes long).
fn write_hex64(v: u64, out: &mut [u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(v.to_be_bytes()) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_128_round_trips() {
        let id = TraceId::parse(b"463ac35c9f6413ad48485a3953bb6124").unwrap();
        assert!(id.is_128bit());
        assert_eq!(id.to_string(), "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(id.low(), 0x48485a3953bb6124);
    }

    #[test]
    fn trace_id_64_stays_64() {
        let id = TraceId::parse(b"48485a3953bb6124").unwrap();
        assert!(!id.is_128bit());
        assert_eq!(id.to_string(), "48485a3953bb6124");
        assert_eq!(id.encode_128().as_str(), "000000000000000048485a3953bb6124");
    }

    #[test]
    fn rejects_upper_case_non_hex_and_wrong_lengths() {
        assert!(TraceId::parse(b"48485A3953BB6124").is_none());
        assert!(TraceId::parse(b"48485a3953bb612g").is_none());
        assert!(TraceId::parse(b"48485a3953bb612").is_none());
        assert!(TraceId::parse(b"48485a3953bb61240").is_none());
        assert!(TraceId::parse(b"").is_none());
        assert!(SpanId::parse(b"48485a3953bb612").is_none());
        assert!(SpanId::parse(b"463ac35c9f6413ad48485a3953bb6124").is_none());
        assert!(SpanId::parse(b"+8485a3953bb6124").is_none());
        for bad in [b'/', b':', b'`', b'g', b'G', b'A', b' ', 0x80, 0xff] {
            let mut id = *b"48485a3953bb6124";
            id[7] = bad;
            assert!(SpanId::parse(&id).is_none(), "{bad:#x}");
        }
    }

    #[test]
    fn every_hex_digit_parses_to_its_value() {
        assert_eq!(parse_hex64(b"0123456789abcdef"), Some(0x0123456789abcdef));
        assert_eq!(parse_hex64(b"fedcba9876543210"), Some(0xfedcba9876543210));
        assert_eq!(parse_hex64(b"f"), Some(0xf));
        assert_eq!(parse_hex64(b""), None);
        assert_eq!(parse_hex64(b"00000000000000000"), None);
    }

    /// The one-character-at-a-time parse, for any length up to 16.
    fn parse_each(hex: &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for &c in hex {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            v = (v << 4) | u64::from(d);
        }
        Some(v)
    }

    #[test]
    fn sixteen_characters_parse_like_one_at_a_time() {
        // Every byte value at every position, among valid digits.
        for pos in 0..16 {
            for byte in 0..=255u8 {
                let mut id = *b"0123456789abcdef";
                id[pos] = byte;
                assert_eq!(parse_hex64(&id), parse_each(&id), "{id:?}");
            }
        }
        // Random valid ids, and ids with bytes at the edges of the ranges.
        let edges = *b"/09:`af{gAF@ \x7f";
        for _ in 0..20_000 {
            let mut id = [0u8; 16];
            for c in &mut id {
                *c = b"0123456789abcdef"[fastrand::usize(..16)];
            }
            if fastrand::bool() {
                id[fastrand::usize(..16)] = edges[fastrand::usize(..edges.len())];
            }
            assert_eq!(parse_hex64(&id), parse_each(&id), "{id:?}");
        }
        for _ in 0..20_000 {
            let id: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
            assert_eq!(parse_hex64(&id), parse_each(&id), "{id:?}");
        }
    }

    #[test]
    fn ids_are_written_as_sixteen_lower_hex_digits() {
        for v in [
            1u64,
            0x0123456789abcdef,
            0xfedcba9876543210,
            u64::MAX,
            0x00ff00ff00ff00ff,
        ] {
            let mut out = [0u8; 16];
            write_hex64(v, &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{v:016x}"));
            assert_eq!(parse_hex64(&out), Some(v));
        }
        for _ in 0..1000 {
            let v = fastrand::u64(..);
            let mut out = [0u8; 16];
            write_hex64(v, &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{v:016x}"));
        }
    }

    #[test]
    fn rejects_all_zero_ids() {
        assert!(TraceId::parse(b"0000000000000000").is_none());
        assert!(TraceId::parse(b"00000000000000000000000000000000").is_none());
        assert!(SpanId::parse(b"0000000000000000").is_none());
        // Only the whole id must be non-zero.
        assert!(TraceId::parse(b"00000000000000000000000000000001").is_some());
    }

    #[test]
    fn generated_ids_have_contract_shape() {
        for _ in 0..1000 {
            let t = TraceId::generate().to_string();
            assert_eq!(t.len(), 32);
            assert!(t
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
            let s = SpanId::generate().to_string();
            assert_eq!(s.len(), 16);
            assert_ne!(s, "0000000000000000");
            assert!(TraceId::generate().low() != 0);
        }
    }
}
