//! Reading a sidecar's admin `/metrics`: one GET over a fresh connection, and the sum of a
//! metric's series. The bench reads a handful of values a few times a minute, so a tiny
//! HTTP/1.0-style client is enough and keeps the measured process the only busy one.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The admin answers in milliseconds; a scrape slower than this is itself a finding.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// `/metrics` is a few KiB; anything beyond this is not an admin answer.
const MAX_BODY: usize = 1 << 20;

/// The body of `GET path` on the loopback admin port, or an error naming what failed.
pub async fn get(port: u16, path: &str) -> anyhow::Result<String> {
    tokio::time::timeout(SCRAPE_TIMEOUT, async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        (&mut tcp)
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut raw)
            .await?;
        if raw.len() > MAX_BODY {
            bail!("answer larger than {MAX_BODY} bytes");
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
        let status = head.split_whitespace().nth(1).unwrap_or("?");
        if status != "200" {
            bail!("status {status}");
        }
        Ok(body.to_owned())
    })
    .await
    .with_context(|| format!("GET {path} on admin port {port}: timed out"))?
    .with_context(|| format!("GET {path} on admin port {port}"))
}

/// The sum of every series of metric `name` (all label sets), or `None` when the text has no
/// such series: a missing metric must not read as zero.
pub fn sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.as_bytes().first() {
            Some(b' ') => rest.trim(),
            Some(b'{') => match rest.rfind('}') {
                Some(end) => rest[end + 1..].trim(),
                None => continue,
            },
            // Another metric whose name starts with this one.
            _ => continue,
        };
        // An OpenMetrics sample may carry a timestamp after the value.
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP mesh_proxy_trace_spans_dropped Spans dropped\n\
        # TYPE mesh_proxy_trace_spans_dropped counter\n\
        mesh_proxy_trace_spans_dropped_total{reason=\"queue_full\"} 3\n\
        mesh_proxy_trace_spans_dropped_total{reason=\"unreachable\"} 4\n\
        mesh_proxy_connections_open 7\n\
        mesh_proxy_connections_open_max 9\n\
        # EOF\n";

    #[test]
    fn sums_every_label_set_and_tells_missing_from_zero() {
        assert_eq!(sum(TEXT, "mesh_proxy_trace_spans_dropped_total"), Some(7.0));
        assert_eq!(sum(TEXT, "mesh_proxy_connections_open"), Some(7.0));
        assert_eq!(sum(TEXT, "mesh_proxy_tasks"), None);
        assert_eq!(sum("x{a=\"}\"} 2\n", "x"), Some(2.0));
    }
}
