//! Opaque TCP bulk transfer: a sink that reads a connection to its end and answers with the
//! number of bytes it got (8 bytes, big-endian), and a client that sends a fixed number of
//! bytes, half-closes, and reads that count back. The count proves every byte crossed the path
//! (a proxy that lost or added bytes fails the transfer), and the half-close is how a client
//! says "done" through a proxy that copies both directions independently.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server;

/// Size of each write and read: large enough that syscalls do not dominate a GiB transfer.
const CHUNK: usize = 256 * 1024;

/// Starts the sink on 127.0.0.1 on a runtime thread of its own; returns its address.
pub fn start_sink() -> anyhow::Result<SocketAddr> {
    server::spawn("tcp-sink", |mut tcp| async move {
        let mut buf = vec![0u8; CHUNK];
        let mut total: u64 = 0;
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(_) => return,
            }
        }
        let _ = tcp.write_all(&total.to_be_bytes()).await;
        let _ = tcp.shutdown().await;
    })
}

/// One transfer's outcome.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Transfer {
    /// Gigabits per second (10^9 bits).
    pub fn gbit_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.bytes as f64 * 8.0 / secs / 1e9
        } else {
            0.0
        }
    }
}

/// Sends `bytes` to the sink at `addr` (directly or through proxies), waits for its count and
/// checks it. Fails past `time_limit` rather than hang on a stuck path.
pub async fn transfer(
    addr: SocketAddr,
    bytes: u64,
    time_limit: Duration,
) -> anyhow::Result<Transfer> {
    let start = Instant::now();
    let got = tokio::time::timeout(time_limit, async {
        let mut tcp = TcpStream::connect(addr).await.context("connect")?;
        let chunk = vec![b'z'; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            tcp.write_all(&chunk[..n]).await.context("write")?;
            left -= n as u64;
        }
        tcp.shutdown().await.context("half-close")?;
        let mut count = [0u8; 8];
        tcp.read_exact(&mut count)
            .await
            .context("reading the sink's count")?;
        anyhow::Ok(u64::from_be_bytes(count))
    })
    .await
    .with_context(|| format!("transfer not done in {time_limit:?}"))??;
    let elapsed = start.elapsed();
    if got != bytes {
        bail!("the sink got {got} bytes of {bytes}");
    }
    Ok(Transfer { bytes, elapsed })
}

/// A size with an optional binary suffix: `512K`, `64M`, `1G`, `1GiB`, or plain bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {text:?} (bytes, or with K, M or G)"))?;
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("size out of range: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("1T").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[tokio::test]
    async fn every_byte_reaches_the_sink_and_is_counted() {
        let sink = start_sink().unwrap();
        let t = transfer(sink, 3 * CHUNK as u64 + 17, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(t.bytes, 3 * CHUNK as u64 + 17);
        assert!(t.gbit_per_s() > 0.0);
    }
}
