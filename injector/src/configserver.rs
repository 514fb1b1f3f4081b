//! `GET /v1/meshconfig`: the current document with an ETag, and long-poll. A sidecar that sends
//! `If-None-Match: <etag>` and `?wait=N` is held until the document changes (200, new body and
//! ETag) or the wait ends (304). One held request per sidecar replaces FSM's periodic resync,
//! so a change reaches every sidecar as soon as the watch event arrives.
//!
//! Held requests are capped ([`LongPolls`]): each costs a connection and its buffers, and one
//! buggy pod looping on requests must not get the injector OOM-killed, since a `Fail` webhook
//! then blocks pod creation. Beyond the cap, and while shutting down, the answer is 503 with
//! `Retry-After`, so sidecars come back later or to another replica.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::served::ServedRx;

/// Default cap on held long-polls: about 30 kB each (connection, TLS and HTTP buffers) makes
/// 1000 about 30 MB, inside the injector's 128 Mi limit with room for admissions; one replica
/// of two then carries a thousand sidecars, and more replicas carry more.
pub const DEFAULT_MAX_LONG_POLLS: usize = 1000;
/// Refused at the cap, sidecars are told to come back within this range of seconds, spread so
/// they do not all return at once.
const RETRY_AFTER_CAP: std::ops::RangeInclusive<u64> = 5..=15;
/// Ended by a shutdown, they may come back at once: the Service sends them to another replica.
const RETRY_AFTER_SHUTDOWN: u64 = 1;

/// The count of held long-polls against its cap, and the signal that ends them at shutdown.
pub struct LongPolls {
    held: AtomicUsize,
    max: usize,
    gauge: Gauge,
    closing: watch::Receiver<bool>,
}

/// One held long-poll; released when the request ends, however it ends.
struct Hold<'a>(&'a LongPolls);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

impl LongPolls {
    /// `gauge` shows the held count; `closing` turns true when shutdown begins.
    pub fn new(max: usize, gauge: Gauge, closing: watch::Receiver<bool>) -> Self {
        Self {
            held: AtomicUsize::new(0),
            max,
            gauge,
            closing,
        }
    }

    fn try_hold(&self) -> Option<Hold<'_>> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        self.gauge.inc();
        Some(Hold(self))
    }

    fn closing(&self) -> bool {
        *self.closing.borrow()
    }
}

fn unavailable(message: &str, retry_after: u64) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::RETRY_AFTER, retry_after.to_string())
        .body(Full::new(Bytes::from(format!("{message}\n"))))
        .unwrap_or_else(|_| internal())
}

/// Longest hold; a longer `wait` is cut to this so a dead client's request does not linger.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

fn etag_matches(if_none_match: Option<&str>, etag: &str) -> bool {
    let Some(v) = if_none_match else { return false };
    v.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

fn wait_param(query: Option<&str>) -> Result<Duration, String> {
    let Some(q) = query else {
        return Ok(Duration::ZERO);
    };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("wait=") {
            return v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(MAX_WAIT.as_secs_f64())))
                .ok_or_else(|| format!("wait={v:?}: expected a number of seconds"));
        }
    }
    Ok(Duration::ZERO)
}

pub async fn serve(
    query: Option<&str>,
    if_none_match: Option<&str>,
    mut rx: ServedRx,
    polls: &LongPolls,
) -> Response<Full<Bytes>> {
    let wait = match wait_param(query) {
        Ok(w) => w,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e),
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut closing = polls.closing.clone();
    // Taken only when the request is about to be held; an answer given at once costs nothing.
    let mut hold = None;
    loop {
        let current = rx.borrow_and_update().clone();
        if !etag_matches(if_none_match, &current.etag) {
            let mut b = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ETAG, &current.etag)
                .header(header::CACHE_CONTROL, "no-cache");
            if let Some(e) = &current.last_error {
                // The served document is the last good one; say why the newest was refused.
                b = b.header("x-tracemesh-config-error", e.replace(['\r', '\n'], " "));
            }
            return b
                .body(Full::new(current.body.clone()))
                .unwrap_or_else(|_| internal());
        }
        if wait.is_zero() || tokio::time::Instant::now() >= deadline {
            return not_modified(&current.etag);
        }
        if polls.closing() {
            return unavailable("shutting down", RETRY_AFTER_SHUTDOWN);
        }
        if hold.is_none() {
            hold = polls.try_hold();
            if hold.is_none() {
                tracing::warn!(max = polls.max, "long-poll refused: too many held");
                return unavailable(
                    "too many long-polls held; retry later",
                    fastrand::u64(RETRY_AFTER_CAP),
                );
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "config source stopped".into(),
                );
            },
            _ = async {
                // A dropped sender means no shutdown will come: keep waiting on the rest.
                if closing.wait_for(|c| *c).await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

fn not_modified(etag: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::NOT_MODIFIED)
        .header(header::ETAG, etag)
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| internal())
}

pub fn plain(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(message + "\n")))
        .unwrap_or_else(|_| internal())
}

fn internal() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::served::{publish, Served};
    use std::sync::Arc;
    use tokio::sync::watch;

    fn polls(max: usize) -> (LongPolls, watch::Sender<bool>) {
        let (closing_tx, closing) = watch::channel(false);
        (LongPolls::new(max, Gauge::default(), closing), closing_tx)
    }

    #[tokio::test]
    async fn etag_long_poll_and_change() {
        let (tx, rx) = watch::channel(Arc::new(Served::default()));
        let (polls, _closing) = polls(10);
        let polls = Arc::new(polls);
        let first = serve(None, None, rx.clone(), &polls).await;
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG]
            .to_str()
            .expect("etag")
            .to_string();

        // Same ETag, no wait: 304 at once. Short wait with no change: 304.
        assert_eq!(
            serve(None, Some(&etag), rx.clone(), &polls).await.status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            serve(Some("wait=0.05"), Some(&etag), rx.clone(), &polls)
                .await
                .status(),
            StatusCode::NOT_MODIFIED
        );

        let held = tokio::spawn({
            let (rx, etag, polls) = (rx.clone(), etag.clone(), polls.clone());
            async move { serve(Some("wait=60"), Some(&etag), rx, &polls).await }
        });
        tokio::task::yield_now().await;
        let mut changed = mesh_config::MeshConfig::default();
        changed.spec.sidecar.log_level = mesh_config::LogLevel::Trace;
        publish(&tx, Served::new(changed));
        let resp = tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .expect("answered")
            .expect("task");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_ne!(resp.headers()[header::ETAG].to_str().expect("etag"), etag);
    }

    #[tokio::test]
    async fn bad_wait_is_400() {
        let (_tx, rx) = watch::channel(Arc::new(Served::default()));
        let (polls, _closing) = polls(10);
        assert_eq!(
            serve(Some("wait=soon"), None, rx, &polls).await.status(),
            StatusCode::BAD_REQUEST
        );
    }

    /// The cap: with one long-poll held, the next is refused with 503 and a Retry-After in
    /// the documented range; once the first ends, a new one is held again. Shutdown ends a
    /// held poll with 503 and refuses new ones.
    #[tokio::test]
    async fn cap_and_shutdown() {
        let (_tx, rx) = watch::channel(Arc::new(Served::default()));
        let etag = Served::default().etag;
        let (polls, closing) = polls(1);
        let polls = Arc::new(polls);
        let held = tokio::spawn({
            let (rx, etag, polls) = (rx.clone(), etag.clone(), polls.clone());
            async move { serve(Some("wait=300"), Some(&etag), rx, &polls).await }
        });
        // The synchronisation point: the gauge says the first poll is held.
        while polls.gauge.get() != 1 {
            tokio::task::yield_now().await;
        }
        let refused = serve(Some("wait=300"), Some(&etag), rx.clone(), &polls).await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry: u64 = refused.headers()[header::RETRY_AFTER]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!(RETRY_AFTER_CAP.contains(&retry), "{retry}");
        // An answer that needs no hold is still given at the cap.
        assert_eq!(
            serve(None, None, rx.clone(), &polls).await.status(),
            StatusCode::OK
        );

        closing.send(true).expect("closing");
        let ended = tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .expect("ended by the shutdown")
            .expect("task");
        assert_eq!(ended.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ended.headers()[header::RETRY_AFTER], "1");
        assert_eq!(polls.gauge.get(), 0, "released");
        let late = serve(Some("wait=300"), Some(&etag), rx, &polls).await;
        assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
