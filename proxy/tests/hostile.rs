//! Upstream faults and hostile clients against the real `mesh-proxy` binary on loopback: each
//! case gets a clear refusal (a status, a reset, a GOAWAY), the sidecar keeps serving a
//! well-behaved client during and after it, its process stays up with no panic in its log, and
//! its open file descriptors, tasks and held connections return to where they were.
//!
//! The sidecar runs as its own process so that `/proc/<pid>/fd` counts only its descriptors,
//! and `/metrics` (`mesh_proxy_tasks`, `mesh_proxy_connections_open`) only its tasks.

#[path = "hostile/h2_frames.rs"]
mod h2_frames;
#[path = "hostile/sidecar.rs"]
mod sidecar;
#[path = "hostile/upstreams.rs"]
mod upstreams;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use h2_frames::*;
use sidecar::*;
use upstreams::*;

// ---------------------------------------------------------------------------------------------
// Upstream faults

#[tokio::test]
async fn refused_upstream_gives_502_over_both_http_versions_and_leaks_nothing() {
    let (hooks, _) = hooks();
    let good = app(hooks).await;
    // A port nobody listens on: the connect is refused.
    let refused: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut sidecar = Sidecar::start("  sidecar: {}", &[refused, good]).await;
    // Warm up both protocols on the good route: the pooled HTTP/2 connection is baseline.
    assert_eq!(
        h2_request(sidecar.route(1), "/fast").await.0,
        StatusCode::OK
    );
    sidecar.assert_serves(1).await;
    let baseline = sidecar.usage().await;

    for _ in 0..10 {
        let (status, body) = h1_request(sidecar.route(0), "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(body.unwrap(), "upstream connect error\n");
        let (status, _) = h2_request(sidecar.route(0), "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(
        sidecar
            .metric("mesh_proxy_upstream_connect_errors_total")
            .await,
        20
    );
    sidecar.assert_serves(1).await;
    sidecar.settles_to(baseline).await;
}

#[tokio::test]
async fn upstream_reset_mid_response_reaches_the_client_as_a_broken_body() {
    let (hooks, _) = hooks();
    let good = app(hooks).await;
    // Announced 1000 bytes, sent 7; chunked, one chunk and no last-chunk.
    let sized = resetting_upstream(
        "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"partial",
    )
    .await;
    let chunked = resetting_upstream(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"7\r\npartial\r\n",
    )
    .await;
    let mut sidecar = Sidecar::start("  sidecar: {}", &[sized, chunked, good]).await;
    assert_eq!(
        h2_request(sidecar.route(2), "/fast").await.0,
        StatusCode::OK
    );
    sidecar.assert_serves(2).await;
    let baseline = sidecar.usage().await;

    for route in [0, 1] {
        // The head had gone out when the upstream died: the client must not take the short
        // body for a complete one.
        let (status, body) = h1_request(sidecar.route(route), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_err(), "route {route}: clean short body {body:?}");

        // The same seen on the wire: the announced length never arrives, or no last-chunk.
        let raw = exchange(
            sidecar.route(route),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            !text.ends_with("0\r\n\r\n"),
            "clean end of a broken body: {text}"
        );
        let head_end = text.find("\r\n\r\n").unwrap() + 4;
        if text.contains("content-length: 1000") {
            assert!(raw.len() - head_end < 1000, "{text}");
        }
    }
    // HTTP/2: the upstream resets the stream after one DATA frame; so does the sidecar.
    let (status, body) = h2_request(sidecar.route(2), "/reset").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_err(), "clean short HTTP/2 body {body:?}");

    sidecar.assert_serves(2).await;
    sidecar.settles_to(baseline).await;
}

#[tokio::test]
async fn stalled_upstream_gets_504_at_the_response_timeout_and_is_let_go() {
    let (hooks, mut dropped) = hooks();
    let h2_app = app(hooks.clone()).await;
    let (stalled, mut closed) = stalled_upstream().await;
    let mut sidecar =
        Sidecar::start("  sidecar:\n    responseTimeout: 500ms", &[stalled, h2_app]).await;
    assert_eq!(
        h2_request(sidecar.route(1), "/fast").await.0,
        StatusCode::OK
    );
    sidecar.assert_serves(1).await;
    let baseline = sidecar.usage().await;

    for _ in 0..3 {
        let (status, body) = h1_request(sidecar.route(0), "/").await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(body.unwrap(), "upstream response timeout\n");
        // The upstream learns the answer is no longer wanted: its connection is closed.
        within(closed.recv()).await.unwrap();
    }
    // HTTP/2: the stream is reset upstream, the pooled connection stays.
    for _ in 0..3 {
        let (status, _) = h2_request(sidecar.route(1), "/hang").await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        within(dropped.recv()).await.unwrap();
    }
    assert_eq!(hooks.arrived.load(Ordering::SeqCst), 3);
    sidecar.assert_serves(1).await;
    sidecar.settles_to(baseline).await;
}

#[tokio::test]
async fn slow_response_headers_are_awaited_while_others_are_served() {
    let (hooks, _) = hooks();
    let backend = app(hooks.clone()).await;
    // A response timeout far longer than the test: it must not cut a slow answer short.
    let mut sidecar = Sidecar::start("  sidecar:\n    responseTimeout: 1m", &[backend]).await;
    sidecar.assert_serves(0).await;
    assert_eq!(
        h2_request(sidecar.route(0), "/fast").await.0,
        StatusCode::OK
    );
    let baseline = sidecar.usage().await;

    let route = sidecar.route(0);
    let slow_h1: Vec<_> = (0..5)
        .map(|_| tokio::spawn(h1_request(route, "/slow")))
        .collect();
    let slow_h2: Vec<_> = (0..5)
        .map(|_| tokio::spawn(h2_request(route, "/slow")))
        .collect();
    until("all slow requests at the upstream", || async {
        hooks.arrived.load(Ordering::SeqCst) == 10
    })
    .await;
    // While ten answers are pending, others are served at once.
    for _ in 0..5 {
        sidecar.assert_serves(0).await;
        assert_eq!(h2_request(route, "/fast").await.0, StatusCode::OK);
    }
    hooks.release.notify_waiters();
    for slow in slow_h1.into_iter().chain(slow_h2) {
        let (status, body) = within(slow).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.unwrap(), "slow");
    }
    sidecar.settles_to(baseline).await;
}

#[tokio::test]
async fn trickled_response_head_is_awaited_within_the_response_timeout_and_cut_beyond_it() {
    let (hooks, _) = hooks();
    let good = app(hooks).await;
    let (short, _) = trickling_upstream(true).await;
    let (endless, mut closed) = trickling_upstream(false).await;
    let mut sidecar = Sidecar::start(
        "  sidecar:\n    responseTimeout: 5s",
        &[short, endless, good],
    )
    .await;
    sidecar.assert_serves(2).await;
    let baseline = sidecar.usage().await;

    // A head that takes a second to arrive, byte by byte, is still an answer.
    let slow = tokio::spawn(h1_request(sidecar.route(0), "/"));
    // One that never completes is cut at the response timeout, and its upstream let go.
    let endless_route = sidecar.route(1);
    let cut = tokio::spawn(h1_request(endless_route, "/"));
    sidecar.assert_serves(2).await;
    let (status, body) = within(slow).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap(), "slow");
    let (status, _) = within(cut).await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    within(closed.recv()).await.unwrap();

    sidecar.assert_serves(2).await;
    sidecar.settles_to(baseline).await;
}

/// A client that gives up (closes its socket) while the upstream stalls, with no response
/// timeout: the sidecar notices the close, not only a half-close, and cancels the upstream
/// request.
#[tokio::test]
async fn client_closing_while_the_upstream_stalls_releases_the_upstream_request() {
    let (hooks, mut dropped) = hooks();
    let backend = app(hooks.clone()).await;
    let mut sidecar = Sidecar::start("  sidecar: {}", &[backend]).await;
    sidecar.assert_serves(0).await;
    let baseline = sidecar.usage().await;
    let mut s = TcpStream::connect(sidecar.route(0)).await.unwrap();
    s.write_all(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    until("request at the upstream", || async {
        hooks.arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(s);
    within(dropped.recv()).await.unwrap();
    sidecar.settles_to(baseline).await;
}

// ---------------------------------------------------------------------------------------------
// Hostile HTTP/1 clients

#[tokio::test]
async fn slowloris_is_cut_at_the_header_read_timeout_while_others_are_served() {
    let (hooks, _) = hooks();
    let backend = app(hooks).await;
    let mut sidecar = Sidecar::start("  sidecar:\n    headerReadTimeout: 2s", &[backend]).await;
    sidecar.assert_serves(0).await;
    let baseline = sidecar.usage().await;

    // Ten clients each trickling a never-ending head, one byte every 50 ms.
    let route = sidecar.route(0);
    let loris: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(async move {
                let s = TcpStream::connect(route).await.unwrap();
                let (mut read, mut write) = s.into_split();
                let trickle = tokio::spawn(async move {
                    let head = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Slow: {}", "a".repeat(4000));
                    for byte in head.as_bytes() {
                        if write.write_all(&[*byte]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                });
                let mut buf = [0u8; 256];
                let got = within(read.read(&mut buf)).await;
                trickle.abort();
                got.map(|n| buf[..n].to_vec()).map_err(|e| e.kind())
            })
        })
        .collect();
    until("all ten held", || async {
        sidecar.usage().await.open >= 10
    })
    .await;
    // Meanwhile a well-behaved client is served.
    sidecar.assert_serves(0).await;
    for l in loris {
        let got = within(l).await.unwrap();
        // Closed without an answer, never served.
        assert!(
            matches!(&got, Ok(b) if b.is_empty()) || got.is_err(),
            "{got:?}"
        );
    }
    assert_eq!(
        sidecar
            .metric("mesh_proxy_header_read_timeouts_total")
            .await,
        10
    );
    sidecar.assert_serves(0).await;
    sidecar.settles_to(baseline).await;
}

#[tokio::test]
async fn oversized_heads_and_too_many_headers_get_431() {
    let (hooks, _) = hooks();
    let backend = app(hooks).await;
    let (recorder, seen) = recording_upstream().await;
    let mut sidecar = Sidecar::start("  sidecar: {}", &[backend, recorder]).await;
    sidecar.assert_serves(0).await;
    let baseline = sidecar.usage().await;

    // One header beyond the 60 KiB head limit.
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    // 101 headers: one more than hyper parses.
    let mut many = String::from("GET /many HTTP/1.1\r\nHost: a\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    for attack in [big, many] {
        let got = exchange(sidecar.route(1), attack.as_bytes()).await;
        assert_eq!(statuses(&got), [431], "{}", String::from_utf8_lossy(&got));
    }
    // The limit is no tighter than that: 90 headers and a 50 KiB one pass.
    let mut fine = String::from("GET /fine HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
    for i in 0..88 {
        fine.push_str(&format!("X-H{i}: v\r\n"));
    }
    fine.push_str(&format!("X-Big: {}\r\n\r\n", "a".repeat(50 * 1024)));
    let got = exchange(sidecar.route(1), fine.as_bytes()).await;
    assert_eq!(statuses(&got), [200]);
    let paths: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(paths, ["/fine"], "refused heads reached the upstream");

    sidecar.assert_serves(0).await;
    sidecar.settles_to(baseline).await;
}

/// What the sidecar must do with one smuggling attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    /// Answered 400 and closed; nothing reached the upstream.
    Refused,
    /// Forwarded as one request `/attack` with unambiguous framing, then the connection was
    /// closed (RFC 9112 §6.3: a message with both framings closes the connection).
    OnceThenClosed,
    /// Forwarded as one request `/attack`; the connection stays usable (the marker request
    /// pipelined behind it is served).
    OnceKeptAlive,
    /// The head went upstream before the body turned out malformed: the upstream never gets a
    /// complete request, the client 400 and a close, and nothing behind it is read.
    BodyRefused,
}

/// The request pipelined behind every attack: served only if the sidecar kept reading.
const MARKER: &str = "GET /marker HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
/// The request each attack hides: it must never reach the upstream as a request.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

fn smuggling_cases() -> Vec<(&'static str, String, Verdict)> {
    let cl_te_body = format!("0\r\n\r\n{SMUGGLED}");
    let te_cl_body = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    vec![
        (
            // CL.TE: by Content-Length the smuggled request is body; by chunked, a request.
            "content-length then transfer-encoding",
            format!(
                "POST /attack HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{cl_te_body}",
                cl_te_body.len()
            ),
            Verdict::OnceThenClosed,
        ),
        (
            // TE.CL: by chunked the smuggled request is body; by Content-Length, a request.
            "transfer-encoding then content-length",
            format!(
                "POST /attack HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{te_cl_body}"
            ),
            Verdict::OnceThenClosed,
        ),
        (
            "two different content-lengths",
            format!(
                "POST /attack HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
            Verdict::Refused,
        ),
        (
            "content-length list with different values",
            format!(
                "POST /attack HTTP/1.1\r\nHost: a\r\nContent-Length: 0, {}\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
            Verdict::Refused,
        ),
        (
            "transfer-encoding not ending in chunked",
            format!(
                "POST /attack HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n{te_cl_body}"
            ),
            Verdict::Refused,
        ),
        (
            "transfer-encoding on HTTP/1.0",
            format!(
                "POST /attack HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{te_cl_body}"
            ),
            Verdict::Refused,
        ),
        (
            // obs-fold hiding a framing header in the previous header's value.
            "obs-fold",
            format!(
                "POST /attack HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n Transfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n{te_cl_body}",
                te_cl_body.len()
            ),
            Verdict::Refused,
        ),
        (
            "space before the colon",
            format!(
                "POST /attack HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: {}\r\n\r\n{te_cl_body}",
                te_cl_body.len()
            ),
            Verdict::Refused,
        ),
        (
            // hyper (httparse) takes a bare LF as a line end in the head, consistently: the
            // Content-Length it reads there frames the body, which is forwarded as body.
            "bare LF line ends in the head",
            format!(
                "POST /attack HTTP/1.1\nHost: a\nContent-Length: {}\n\n{SMUGGLED}",
                SMUGGLED.len()
            ),
            Verdict::OnceKeptAlive,
        ),
        (
            // A chunk size line ended by a bare LF: hyper's chunked decoder wants CRLF.
            "bare LF after a chunk size",
            format!(
                "POST /attack HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\n{SMUGGLED}\r\n0\r\n\r\n",
                SMUGGLED.len()
            ),
            Verdict::BodyRefused,
        ),
        (
            "chunk size overflowing 64 bits",
            format!(
                "POST /attack HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1{}\r\n{SMUGGLED}",
                "0".repeat(16)
            ),
            Verdict::BodyRefused,
        ),
        (
            "bare CR in a header",
            format!(
                "POST /attack HTTP/1.1\r\nHost: a\r\nX-A: b\rContent-Length: {}\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
            Verdict::Refused,
        ),
    ]
}

#[tokio::test]
async fn smuggling_patterns_are_refused_or_forwarded_as_exactly_one_request() {
    let (hooks, _) = hooks();
    let backend = app(hooks).await;
    let (recorder, seen) = recording_upstream().await;
    let mut sidecar = Sidecar::start("  sidecar: {}", &[backend, recorder]).await;
    sidecar.assert_serves(0).await;
    let baseline = sidecar.usage().await;

    for (name, attack, verdict) in smuggling_cases() {
        seen.lock().unwrap().clear();
        let got = exchange(sidecar.route(1), format!("{attack}{MARKER}").as_bytes()).await;
        // The connection is over: whatever the sidecar read from it has been answered. A
        // request to the other route proves the sidecar is still serving.
        sidecar.assert_serves(0).await;
        let seen = seen.lock().unwrap().clone();
        let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
        let text = String::from_utf8_lossy(&got);
        for s in &seen {
            assert!(
                s.count("content-length") + s.count("transfer-encoding") <= 1,
                "{name}: ambiguous framing forwarded: {s:?}"
            );
        }
        assert!(!paths.contains(&"/smuggled"), "{name}: smuggled: {paths:?}");
        match verdict {
            Verdict::Refused => {
                assert_eq!(statuses(&got), [400], "{name}: {text}");
                assert!(paths.is_empty(), "{name}: forwarded {paths:?}");
            }
            Verdict::OnceThenClosed => {
                assert_eq!(statuses(&got), [200], "{name}: {text}");
                assert_eq!(paths, ["/attack"], "{name}");
            }
            Verdict::OnceKeptAlive => {
                assert_eq!(statuses(&got), [200, 200], "{name}: {text}");
                assert_eq!(paths, ["/attack", "/marker"], "{name}");
            }
            Verdict::BodyRefused => {
                // The client's fault, said as such: not a 502 that blames the upstream.
                assert_eq!(statuses(&got), [400], "{name}: {text}");
                assert!(paths.is_empty(), "{name}: forwarded {paths:?}");
            }
        }
        if name == "transfer-encoding then content-length" || verdict == Verdict::OnceKeptAlive {
            // What the hiding place held arrives as body, byte for byte.
            assert!(
                String::from_utf8_lossy(&seen[0].body).contains(SMUGGLED),
                "{name}: body {:?}",
                String::from_utf8_lossy(&seen[0].body)
            );
        }
    }
    sidecar.assert_alive();
    sidecar.settles_to(baseline).await;
}

// ---------------------------------------------------------------------------------------------
// Hostile HTTP/2 clients, written frame by frame (see `h2_frames`)

#[tokio::test]
async fn invalid_http2_frames_get_goaway_and_a_close() {
    let (hooks, _) = hooks();
    let backend = app(hooks).await;
    let mut sidecar = Sidecar::start("  sidecar: {}", &[backend]).await;
    assert_eq!(
        h2_request(sidecar.route(0), "/fast").await.0,
        StatusCode::OK
    );
    let baseline = sidecar.usage().await;

    // The control: the same hand-written client, well-behaved, is answered and then closed
    // without an error once it says goodbye.
    let mut polite = frame(HEADERS, END_HEADERS | END_STREAM, 1, &GET_BLOCK);
    polite.extend(frame(GOAWAY, 0, 0, &[0; 8]));
    let seen = h2_attack(sidecar.route(0), polite).await;
    assert_eq!(seen.responses, 1, "{seen:?}");
    assert!(matches!(seen.goaway, None | Some(0)), "{seen:?}");

    // The codes are h2's: it reports a malformed SETTINGS, PING or header block as a
    // PROTOCOL_ERROR, and keeps FRAME_SIZE_ERROR for a frame above SETTINGS_MAX_FRAME_SIZE.
    let too_big = vec![0u8; 16_385];
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("DATA on stream 0", frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
        (
            "SETTINGS of 5 bytes",
            frame(SETTINGS, 0, 0, &[0; 5]),
            PROTOCOL_ERROR,
        ),
        (
            "PING of 7 bytes",
            frame(PING, 0, 0, &[0; 7]),
            PROTOCOL_ERROR,
        ),
        (
            "WINDOW_UPDATE of 0",
            frame(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()),
            PROTOCOL_ERROR,
        ),
        (
            "garbage HPACK",
            frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0xff; 16]),
            PROTOCOL_ERROR,
        ),
        (
            "HEADERS on an even stream",
            frame(HEADERS, END_HEADERS | END_STREAM, 2, &GET_BLOCK),
            PROTOCOL_ERROR,
        ),
        (
            "CONTINUATION without HEADERS",
            frame(CONTINUATION, END_HEADERS, 1, &GET_BLOCK),
            PROTOCOL_ERROR,
        ),
        (
            "frame above the maximum size",
            frame(DATA, 0, 1, &too_big),
            FRAME_SIZE_ERROR,
        ),
    ];
    for (name, bytes, code) in cases {
        let seen = h2_attack(sidecar.route(0), bytes).await;
        assert_eq!(seen.goaway, Some(code), "{name}: {seen:?}");
        assert_eq!(seen.responses, 0, "{name}: {seen:?}");
        // Others are served in between.
        assert_eq!(
            h2_request(sidecar.route(0), "/fast").await.0,
            StatusCode::OK
        );
    }
    sidecar.assert_serves(0).await;
    sidecar.settles_to(baseline).await;
}

#[tokio::test]
async fn rapid_reset_flood_gets_goaway_while_others_are_served() {
    let (hooks, _) = hooks();
    let backend = app(hooks).await;
    let mut sidecar = Sidecar::start("  sidecar: {}", &[backend]).await;
    assert_eq!(
        h2_request(sidecar.route(0), "/fast").await.0,
        StatusCode::OK
    );
    let baseline = sidecar.usage().await;

    // CVE-2023-44487: open a stream and cancel it at once, a thousand times.
    let mut flood = Vec::new();
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        flood.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &GET_BLOCK));
        flood.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let route = sidecar.route(0);
    let attack = tokio::spawn(h2_attack(route, flood));
    assert_eq!(h2_request(route, "/fast").await.0, StatusCode::OK);
    let seen = within(attack).await.unwrap();
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");

    assert_eq!(h2_request(route, "/fast").await.0, StatusCode::OK);
    sidecar.assert_serves(0).await;
    sidecar.settles_to(baseline).await;
}

#[tokio::test]
async fn stream_flood_beyond_the_concurrency_limit_is_refused_then_goaway() {
    let (hooks, _) = hooks();
    let backend = app(hooks.clone()).await;
    let mut sidecar = Sidecar::start("  sidecar: {}", &[backend]).await;
    assert_eq!(
        h2_request(sidecar.route(0), "/fast").await.0,
        StatusCode::OK
    );
    let baseline = sidecar.usage().await;

    // 1500 streams held open (no END_STREAM), far beyond what one connection may hold.
    let mut flood = Vec::new();
    for i in 0..1500u32 {
        flood.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &GET_BLOCK));
    }
    let route = sidecar.route(0);
    let attack = tokio::spawn(h2_attack(route, flood));
    assert_eq!(h2_request(route, "/fast").await.0, StatusCode::OK);
    let seen = within(attack).await.unwrap();
    // Streams beyond the limit are refused (REFUSED_STREAM = 7), and an attacker who keeps
    // opening them loses the connection.
    assert!(seen.resets.contains(&7), "{seen:?}");
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");

    assert_eq!(h2_request(route, "/fast").await.0, StatusCode::OK);
    sidecar.assert_serves(0).await;
    sidecar.settles_to(baseline).await;
}

#[tokio::test]
async fn http2_client_that_goes_silent_after_the_preface_is_cut_by_unanswered_pings() {
    let (hooks, _) = hooks();
    let backend = app(hooks).await;
    let mut sidecar = Sidecar::start(
        "  sidecar:\n    http2KeepaliveInterval: 1s\n    http2KeepaliveTimeout: 1s",
        &[backend],
    )
    .await;
    let route = sidecar.route(0);
    assert_eq!(h2_request(route, "/fast").await.0, StatusCode::OK);
    let baseline = sidecar.usage().await;

    // Ten clients send the preface and SETTINGS, then never read or write again: no stream,
    // no PING answered. Pre-connecting gRPC channels look the same until the first PING, so
    // the PING, not a clock on the first stream, is what tells them apart.
    let mut silent = Vec::new();
    for _ in 0..10 {
        let mut s = within(TcpStream::connect(route)).await.unwrap();
        s.write_all(&hello()).await.unwrap();
        silent.push(s);
    }
    until("all ten held", || async {
        sidecar.usage().await.open >= 10
    })
    .await;
    // While they are held, others are served.
    assert_eq!(h2_request(route, "/fast").await.0, StatusCode::OK);
    // Then each is closed: its socket reaches EOF (or a reset) once read.
    for mut s in silent {
        let rest = read_to_close(&mut s).await;
        assert!(!rest.is_empty(), "closed without a word");
    }
    assert_eq!(h2_request(route, "/fast").await.0, StatusCode::OK);
    sidecar.assert_serves(0).await;
    sidecar.settles_to(baseline).await;
}

// ---------------------------------------------------------------------------------------------
// Floods and garbage

#[tokio::test]
async fn connection_flood_beyond_the_cap_is_refused_while_admin_answers() {
    let (hooks, _) = hooks();
    let backend = app(hooks).await;
    let mut sidecar = Sidecar::start("  sidecar:\n    maxConnections: 10", &[backend]).await;
    sidecar.assert_serves(0).await;
    let baseline = sidecar.usage().await;
    let route = sidecar.route(0);

    // Ten keep-alive connections, each proven served, hold every slot.
    let mut held = Vec::new();
    for _ in 0..10 {
        let s = TcpStream::connect(route).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/fast")
            .header("host", "a")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = within(send.send_request(req)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let _ = within(resp.into_body().collect()).await;
        held.push(send);
    }
    assert_eq!(sidecar.usage().await.open, 10);
    // The flood: every further connection is closed unserved, at once.
    for _ in 0..50 {
        let got = exchange(route, b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }
    // The admin port still answers the kubelet and the scraper.
    let live = within(get(sidecar.admin, "/live")).await.unwrap();
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    assert_eq!(
        sidecar.metric("mesh_proxy_connections_refused_total").await,
        50
    );
    // The held clients are still served on their connections.
    for send in &mut held {
        let req = Request::get("/fast")
            .header("host", "a")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = within(send.send_request(req)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    drop(held);
    until("served again after the flood", || async {
        get(route, "/fast")
            .await
            .is_ok_and(|t| t.starts_with("HTTP/1.1 200"))
    })
    .await;
    sidecar.assert_alive();
    sidecar.settles_to(baseline).await;
}

/// Bytes no protocol would send, from a fixed seed so a failure replays.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

#[tokio::test]
async fn garbage_on_opaque_detected_and_admin_ports_is_closed_without_harm() {
    let (hooks, _) = hooks();
    let backend = app(hooks).await;
    let echo = tcp_echo().await;
    let mut sidecar = Sidecar::start(
        &format!("  traffic:\n    opaquePorts: [{}]", echo.port()),
        &[backend, echo],
    )
    .await;
    sidecar.assert_serves(0).await;
    let baseline = sidecar.usage().await;

    // Opaque: relayed byte for byte, and closed once both sides are done.
    let noise = garbage(64 * 1024, 1);
    let s = TcpStream::connect(sidecar.route(1)).await.unwrap();
    let (mut read, mut write) = s.into_split();
    let sent = noise.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
        write
    });
    let mut back = Vec::new();
    within(read.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, noise);
    drop(writer.await.unwrap());

    // Detected: whatever the first bytes look like, the connection ends (HTTP/1 gets 400, the
    // rest goes to the app as opaque bytes, which the app refuses), and never hangs.
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("random", garbage(8 * 1024, 2)),
        ("NUL bytes", vec![0; 4096]),
        ("0xff", vec![0xff; 4096]),
        (
            "TLS record header then noise",
            [&[0x16, 3, 1, 0x40, 0][..], &garbage(4096, 3)].concat(),
        ),
        (
            "request line then binary",
            [&b"GET / HTTP/1.1\r\n"[..], &garbage(4096, 4)].concat(),
        ),
        (
            "method then binary",
            [&b"GET "[..], &garbage(4096, 5)].concat(),
        ),
        (
            "HTTP/2 preface then noise",
            [PREFACE, &garbage(4096, 6)].concat(),
        ),
        (
            "request line with NULs",
            b"GET /\0\0 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        ),
    ];
    cases.push(("half a preface", PREFACE[..10].to_vec()));
    let ports = [
        ("route", sidecar.route(0)),
        ("outbound listener", sidecar.outbound),
        ("inbound listener", sidecar.inbound),
    ];
    for ((name, bytes), (port, addr)) in
        cases.iter().flat_map(|c| ports.iter().map(move |p| (c, p)))
    {
        let name = format!("{name} on the {port}");
        let mut s = TcpStream::connect(*addr).await.unwrap();
        let _ = s.write_all(bytes).await;
        // The client says no more (as a scanner does): the connection must then end, whether
        // the sidecar refused the bytes or relayed them to the app as opaque TCP.
        let _ = s.shutdown().await;
        let out = read_to_close(&mut s).await;
        let st = statuses(&out);
        assert!(
            st.iter().all(|s| *s == 400),
            "{name}: {}",
            String::from_utf8_lossy(&out)
        );
        sidecar.assert_serves(0).await;
    }

    // The admin port: garbage is refused, probes still answer.
    for seed in 10..13 {
        let got = exchange(sidecar.admin, &garbage(4096, seed)).await;
        assert!(statuses(&got).iter().all(|s| *s == 400), "{got:?}");
    }
    let live = within(get(sidecar.admin, "/live")).await.unwrap();
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");

    sidecar.assert_serves(0).await;
    sidecar.settles_to(baseline).await;
}

#[tokio::test]
async fn oversized_http2_header_blocks_are_refused() {
    let (hooks, _) = hooks();
    let backend = app(hooks.clone()).await;
    let mut sidecar = Sidecar::start("  sidecar: {}", &[backend]).await;
    let route = sidecar.route(0);
    assert_eq!(h2_request(route, "/fast").await.0, StatusCode::OK);
    let baseline = sidecar.usage().await;

    // One request over the 60 KiB header list limit: 431 for it, the connection lives on.
    let stream = within(TcpStream::connect(route)).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let big = Request::get("http://app.test/big")
        .header("x-big", "a".repeat(70 * 1024))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within(send.send_request(big)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    drop(resp);
    let next = Request::get("http://app.test/fast")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within(send.send_request(next)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        within(resp.into_body().collect()).await.unwrap().to_bytes(),
        "ok"
    );
    drop(send);

    // CONTINUATION flood (CVE-2024-27316): a header block that never ends must not be
    // buffered for ever.
    // Its one header's value announces ~1 MiB, then comes 16 bytes per CONTINUATION.
    let mut block = GET_BLOCK.to_vec();
    block.extend([0x00, 0x01, b'x', 0x7f, 0xff, 0xff, 0x3f]);
    let mut flood = frame(HEADERS, 0, 1, &block);
    for _ in 0..1000 {
        flood.extend(frame(CONTINUATION, 0, 1, &[b'a'; 16]));
    }
    let seen = h2_attack(route, flood).await;
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");
    assert_eq!(seen.responses, 0, "{seen:?}");

    assert_eq!(h2_request(route, "/fast").await.0, StatusCode::OK);
    sidecar.assert_serves(0).await;
    sidecar.settles_to(baseline).await;
}
