//! `GET /v1/meshconfig`: the current document with an ETag, and long-poll. A sidecar that sends
//! `If-None-Match: <etag>` and `?wait=N` is held until the document changes (200, new body and
//! ETag) or the wait ends (304). One held request per sidecar replaces FSM's periodic resync,
//! so a change reaches every sidecar as soon as the watch event arrives.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

use crate::served::ServedRx;

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
) -> Response<Full<Bytes>> {
    let wait = match wait_param(query) {
        Ok(w) => w,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e),
    };
    let deadline = tokio::time::Instant::now() + wait;
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
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "config source stopped".into(),
                )
            }
            Err(_) => {
                return Response::builder()
                    .status(StatusCode::NOT_MODIFIED)
                    .header(header::ETAG, &current.etag)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_else(|_| internal())
            }
        }
    }
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

    #[tokio::test]
    async fn etag_long_poll_and_change() {
        let (tx, rx) = watch::channel(Arc::new(Served::default()));
        let first = serve(None, None, rx.clone()).await;
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG]
            .to_str()
            .expect("etag")
            .to_string();

        // Same ETag, no wait: 304 at once. Short wait with no change: 304.
        assert_eq!(
            serve(None, Some(&etag), rx.clone()).await.status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            serve(Some("wait=0.05"), Some(&etag), rx.clone())
                .await
                .status(),
            StatusCode::NOT_MODIFIED
        );

        let held = tokio::spawn({
            let (rx, etag) = (rx.clone(), etag.clone());
            async move { serve(Some("wait=60"), Some(&etag), rx).await }
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
        assert_eq!(
            serve(Some("wait=soon"), None, rx).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
}
