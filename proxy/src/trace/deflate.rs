//! A small deflate (RFC 1951) for span batches: LZ77 with one hash probe per position, written
//! with the fixed Huffman codes of RFC 1951 §3.2.6, as one block.
//!
//! Why our own: a span batch is one HTTP body, so every batch needs a fresh deflate stream.
//! zlib-rs at its fastest level (the same design: one probe, fixed codes) clears its hash
//! tables and window on every reset, a cost that dominates small batches (callgrind, span-like
//! JSON: 34,500 instructions a span in 8-span batches, 9,800 in 256-span batches), and spends
//! about 18 instructions a byte on the rest. Here the hash table is never cleared: an entry
//! holds a position in a running count of every byte this state has seen, so entries from
//! earlier batches are told apart by their position and a reset costs nothing. The output is
//! within about 1 % of zlib's level 1 on span batches (hex ids, numbers and repeated keys: what
//! compresses is the repetition between spans, which one probe finds as well as a chain).
//!
//! The exporter uses it for batches below [`super::gzip::SMALL_BATCH`]: on full batches zlib-rs,
//! although it runs more instructions, takes the same CPU (see `gzip.rs`) for smaller output.
//!
//! Input that does not shrink (random bytes) is written as stored blocks instead, so the output
//! is never more than 5 bytes per 64 KiB larger than the input.

/// Bits of the hash of the next four bytes: 16 Ki entries of 4 bytes, 64 KiB per state.
const HASH_BITS: u32 = 14;
/// How far back a match may point (RFC 1951).
const WINDOW: u32 = 32 * 1024;
const MIN_MATCH: usize = 4;
const MAX_MATCH: usize = 258;
/// Inputs longer than this are stored, not compressed, so positions always fit in a `u32`;
/// span batches are bounded to 1 MiB long before this.
const MAX_COMPRESSED_INPUT: usize = 1 << 30;
/// The largest stored block.
const STORED_MAX: usize = 65_535;

/// One deflate state, kept between inputs (see the module's doc for why nothing is cleared).
#[derive(Debug)]
pub struct Deflate {
    /// Position (in `origin`'s count) of the last place each 4-byte hash was seen; 0: never.
    table: Box<[u32]>,
    /// The count of the first byte of the next input: every position of an earlier input is
    /// below it. Starts at 1, so an empty entry (0) is never taken for a position.
    origin: u32,
}

impl Default for Deflate {
    fn default() -> Self {
        Self {
            table: vec![0; 1 << HASH_BITS].into_boxed_slice(),
            origin: 1,
        }
    }
}

impl Deflate {
    /// Appends to `out` one complete raw deflate stream holding `input`.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        if input.len() <= MAX_COMPRESSED_INPUT {
            self.fixed_block(input, out);
            // Stored blocks cost 5 bytes per 64 KiB: take them if the codes did worse.
            let stored = input.len() + 5 * input.len().div_ceil(STORED_MAX).max(1);
            if out.len() - start <= stored {
                return;
            }
            out.truncate(start);
        }
        stored_blocks(input, out);
    }

    /// One final block with fixed codes.
    fn fixed_block(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if u64::from(self.origin) + input.len() as u64 + 1 >= u64::from(u32::MAX) {
            // The running count would wrap: forget every position (once per 4 GiB of input).
            self.table.fill(0);
            self.origin = 1;
        }
        let origin = self.origin;
        // Next input starts past this one's end, so nothing of it is taken for a match.
        self.origin += input.len() as u32 + 1;

        out.reserve(input.len() / 2 + 16);
        let mut bits = Bits { out, acc: 0, n: 0 };
        // BFINAL = 1, BTYPE = 01 (fixed codes).
        bits.put(0b011, 3);
        let n = input.len();
        let mut i = 0;
        while i + MIN_MATCH <= n {
            let word = read_u32(input, i);
            let slot = &mut self.table[hash(word)];
            let here = origin + i as u32;
            let seen = *slot;
            *slot = here;
            if seen >= origin && here - seen <= WINDOW {
                let from = (seen - origin) as usize;
                if read_u32(input, from) == word {
                    let len = MIN_MATCH + common_len(input, from + MIN_MATCH, i + MIN_MATCH);
                    bits.put_match(len, (here - seen) as usize);
                    i += len;
                    continue;
                }
            }
            bits.put_literal(input[i]);
            i += 1;
        }
        for &b in &input[i..] {
            bits.put_literal(b);
        }
        // End of block.
        bits.put(LITLEN[256].0, LITLEN[256].1);
        bits.finish();
    }
}

/// Stored blocks (BTYPE = 00), the last one final; an empty input is one empty final block.
fn stored_blocks(input: &[u8], out: &mut Vec<u8>) {
    let mut chunks = input.chunks(STORED_MAX).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        return;
    }
    while let Some(chunk) = chunks.next() {
        let len = chunk.len() as u16;
        out.push(u8::from(chunks.peek().is_none()));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

fn read_u32(input: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&input[at..at + 4]);
    u32::from_le_bytes(word)
}

fn hash(word: u32) -> usize {
    (word.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize
}

/// How many bytes from `a` and `b` (with `a < b`) are equal, up to what a match can still take.
fn common_len(input: &[u8], a: usize, b: usize) -> usize {
    let limit = (MAX_MATCH - MIN_MATCH).min(input.len() - b);
    let (x, y) = (&input[a..a + limit], &input[b..b + limit]);
    let mut len = 0;
    // Eight bytes at a time: the first differing bit says how many of them were equal.
    for (p, q) in x.chunks_exact(8).zip(y.chunks_exact(8)) {
        let diff = u64::from_le_bytes(p.try_into().unwrap_or_default())
            ^ u64::from_le_bytes(q.try_into().unwrap_or_default());
        if diff != 0 {
            return len + (diff.trailing_zeros() / 8) as usize;
        }
        len += 8;
    }
    len + x[len..]
        .iter()
        .zip(&y[len..])
        .take_while(|(p, q)| p == q)
        .count()
}

/// The bit writer: deflate packs codes from the least significant bit up.
struct Bits<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits<'_> {
    /// `len` ≤ 32 bits of `code`, already in the order they go out.
    fn put(&mut self, code: u32, len: u32) {
        self.acc |= u64::from(code) << self.n;
        self.n += len;
        if self.n >= 32 {
            self.out.extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.n -= 32;
        }
    }

    fn put_literal(&mut self, byte: u8) {
        let (code, len) = LITLEN[usize::from(byte)];
        self.put(code, len);
    }

    /// A length (4..=258) and a distance (1..=32768): at most 13 + 18 bits, one `put`.
    fn put_match(&mut self, len: usize, dist: usize) {
        let (lcode, llen) = LENGTH[len - 3];
        let (dcode, dlen) = distance(dist);
        self.put(lcode | dcode << llen, llen + dlen);
    }

    /// Writes the last partial byte.
    fn finish(self) {
        let bytes = self.n.div_ceil(8) as usize;
        self.out.extend_from_slice(&self.acc.to_le_bytes()[..bytes]);
    }
}

/// `code`'s `len` low bits in reverse order: Huffman codes go out most significant bit first.
const fn reverse(code: u32, len: u32) -> u32 {
    code.reverse_bits() >> (32 - len)
}

/// The fixed literal/length codes (RFC 1951 §3.2.6), reversed: (code, length in bits).
const LITLEN: [(u32, u32); 288] = {
    let mut t = [(0, 0); 288];
    let mut v = 0;
    while v < 288 {
        t[v] = match v {
            0..=143 => (reverse(0x30 + v as u32, 8), 8),
            144..=255 => (reverse(0x190 + (v as u32 - 144), 9), 9),
            256..=279 => (reverse(v as u32 - 256, 7), 7),
            _ => (reverse(0xC0 + (v as u32 - 280), 8), 8),
        };
        v += 1;
    }
    t
};

/// Each match length 3..=258 (index `length - 3`) as its length code followed by its extra
/// bits, ready to write.
const LENGTH: [(u32, u32); 256] = {
    let mut t = [(0, 0); 256];
    let mut m = 0;
    while m < 256 {
        let (symbol, extra_bits, extra) = if m < 8 {
            (257 + m as u32, 0, 0)
        } else if m == 255 {
            (285, 0, 0)
        } else {
            // Lengths from 11 on come in groups of four codes per power of two.
            let log = 31 - (m as u32).leading_zeros();
            let extra_bits = log - 2;
            let symbol = 257 + 4 * (log - 1) + ((m as u32 >> extra_bits) & 3);
            (symbol, extra_bits, m as u32 & ((1 << extra_bits) - 1))
        };
        let (code, len) = LITLEN[symbol as usize];
        t[m] = (code | extra << len, len + extra_bits);
        m += 1;
    }
    t
};

/// A distance (1..=32768) as its 5-bit code followed by its extra bits.
fn distance(dist: usize) -> (u32, u32) {
    let d = dist as u32 - 1;
    let (symbol, extra_bits, extra) = if d < 4 {
        (d, 0, 0)
    } else {
        // Two codes per power of two, each with one extra bit fewer than the power.
        let log = 31 - d.leading_zeros();
        let extra_bits = log - 1;
        (
            2 * log + ((d >> extra_bits) & 1),
            extra_bits,
            d & ((1 << extra_bits) - 1),
        )
    };
    (reverse(symbol, 5) | extra << 5, 5 + extra_bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn inflate(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(raw)
            .read_to_end(&mut out)
            .expect("a valid deflate stream");
        out
    }

    fn deflate(state: &mut Deflate, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        state.compress(input, &mut out);
        out
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> usize {
            (self.next() % n) as usize
        }
    }

    /// Zipkin-like JSON: fixed keys, random hex ids and numbers.
    fn spans(rng: &mut Rng, n: usize) -> Vec<u8> {
        let mut s = String::from("[");
        for i in 0..n {
            if i > 0 {
                s.push(',');
            }
            s += &format!(
                r#"{{"duration":{},"id":"{:016x}","kind":"SERVER","localEndpoint":{{"serviceName":"bench"}},"name":"get","tags":{{"http.method":"GET","http.status_code":"200","http.url":"http://127.0.0.1:8080/r/{}"}},"timestamp":{},"traceId":"{:016x}{:016x}"}}"#,
                rng.below(5000),
                rng.next(),
                rng.below(100_000),
                1_765_000_000_000_000 + rng.below(1_000_000) as u64,
                rng.next(),
                rng.next()
            );
        }
        s.push(']');
        s.into_bytes()
    }

    #[test]
    fn empty_input() {
        let mut state = Deflate::default();
        let raw = deflate(&mut state, b"");
        assert_eq!(inflate(&raw), b"");
        assert!(raw.len() <= 2, "{raw:?}");
    }

    #[test]
    fn every_length_and_distance_code_round_trips() {
        // Runs of every length at every distance band, so each code and its extra bits occur.
        let mut rng = Rng(7);
        let mut input = Vec::new();
        for len in 3..=300 {
            let dist = 1 + rng.below(32_768.min(input.len() as u64 + 1));
            let from = input.len().saturating_sub(dist);
            for k in 0..len {
                let b = input.get(from + k).copied().unwrap_or(k as u8);
                input.push(b);
            }
            input.extend((0..rng.below(40)).map(|_| rng.next() as u8));
        }
        let mut state = Deflate::default();
        assert_eq!(inflate(&deflate(&mut state, &input)), input);
    }

    #[test]
    fn random_inputs_round_trip_through_one_state() {
        // Inputs from small alphabets (long and short matches), any length, one state
        // throughout, so positions left by earlier inputs are in the table.
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut state = Deflate::default();
        for case in 0..400 {
            let len = match case % 4 {
                0 => rng.below(16),
                1 => rng.below(600),
                2 => rng.below(5_000),
                _ => rng.below(80_000),
            };
            let alphabet = 1 + rng.below(if case % 3 == 0 { 4 } else { 256 }) as u64;
            let input: Vec<u8> = (0..len)
                .map(|_| b'a'.wrapping_add((rng.next() % alphabet) as u8))
                .collect();
            assert_eq!(inflate(&deflate(&mut state, &input)), input, "case {case}");
        }
    }

    #[test]
    fn span_batches_round_trip_and_shrink_like_zlib_level_1() {
        let mut rng = Rng(42);
        let mut state = Deflate::default();
        for n in [1, 8, 64, 256] {
            let body = spans(&mut rng, n);
            let raw = deflate(&mut state, &body);
            assert_eq!(inflate(&raw), body);
            let mut zlib =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut zlib, &body).unwrap();
            let zlib = zlib.finish().unwrap();
            // Within 5 % of zlib's level 1 (1 % on the bench's batches: see benches/README).
            assert!(
                raw.len() * 100 <= zlib.len() * 105,
                "{n} spans: {} bytes, zlib {}",
                raw.len(),
                zlib.len()
            );
        }
    }

    #[test]
    fn inputs_longer_than_the_window_match_only_within_it() {
        // The same 40 KiB twice: the second copy is farther back than the window allows at
        // first, so matches must stop at 32 KiB, and the result still round-trips.
        let mut rng = Rng(3);
        let block: Vec<u8> = (0..40 * 1024).map(|_| rng.next() as u8).collect();
        let input = [block.as_slice(), &block, b"tail"].concat();
        let mut state = Deflate::default();
        assert_eq!(inflate(&deflate(&mut state, &input)), input);
        // A repeat within the window does shrink.
        let near = [&block[..20_000], &block[..20_000]].concat();
        let raw = deflate(&mut state, &near);
        assert_eq!(inflate(&raw), near);
        // (The first copy costs about 8.5 bits a byte in fixed codes, the second almost nothing.)
        assert!(raw.len() < 22_000, "{}", raw.len());
    }

    #[test]
    fn incompressible_input_is_stored_with_little_overhead() {
        let mut rng = Rng(11);
        let mut state = Deflate::default();
        for len in [1usize, 100, 65_535, 65_536, 300_000] {
            let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let raw = deflate(&mut state, &input);
            assert_eq!(inflate(&raw), input);
            assert!(
                raw.len() <= len + 5 * len.div_ceil(STORED_MAX),
                "{len}: {}",
                raw.len()
            );
        }
    }

    #[test]
    fn positions_wrapping_the_running_count_clear_the_table() {
        let mut state = Deflate {
            origin: u32::MAX - 100,
            ..Deflate::default()
        };
        let input = b"abcdabcdabcdabcd".repeat(20);
        for _ in 0..3 {
            assert_eq!(inflate(&deflate(&mut state, &input)), input);
        }
        assert!(state.origin < 10_000);
    }
}
