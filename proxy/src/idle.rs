//! Per-connection deadlines: idle (nothing in flight, no bytes moving) and header read (a
//! request head started but not finished).
//!
//! One [`Activity`] per connection is fed by [`Watched`] (bytes read and written) and by
//! [`Activity::request`] guards (requests in flight, held until the response body ends).
//! [`Activity::expired`] keeps one timer and is never woken by traffic: the timer is armed at
//! the earliest deadline the state allows, but never further ahead than the shortest timeout.
//! A deadline that starts later (a new head, the last request ending) cannot be earlier than
//! arming time plus that timeout, so rechecking when the timer fires is exact, and a busy
//! connection costs one wake-up per timeout period instead of two per request. A long poll with
//! no bytes moving is never idle: its request is in flight.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// No request head is being read.
const NO_HEAD: u64 = u64::MAX;

/// What one connection did last, shared by its IO wrapper, its requests and its watchdog.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last byte read or written.
    last: AtomicU64,
    /// Milliseconds since `start` when the current request head began, or [`NO_HEAD`].
    head_since: AtomicU64,
    in_flight: AtomicUsize,
    /// `last` was stamped when the last request ended, and no write has completed or waited
    /// since: the response's own bytes, written in the same turn, need no second stamp.
    fresh: AtomicBool,
    /// Whether bytes read with no request in flight start a request head (HTTP/1).
    heads: bool,
}

/// Why [`Activity::expired`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    Idle,
    HeaderRead,
    /// The periodic check of [`Activity::expired_or_quiet`] found the connection quiet (only
    /// that method returns it).
    Quiet,
}

impl Activity {
    /// `heads`: track HTTP/1 request heads for the header read timeout.
    pub fn new(heads: bool) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
            head_since: AtomicU64::new(NO_HEAD),
            in_flight: AtomicUsize::new(0),
            fresh: AtomicBool::new(false),
            heads,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// A request head starts now (detection already read the first bytes of the first one).
    pub fn begin_head(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            self.begin_head_at(self.now_ms());
        }
    }

    fn begin_head_at(&self, now: u64) {
        if self.heads && self.head_since.load(Ordering::Relaxed) == NO_HEAD {
            let _ =
                self.head_since
                    .compare_exchange(NO_HEAD, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Bytes moved. Reading the clock is the cost here (two reads and a write per request
    /// before), so it is read only when the time can matter: with a request in flight the
    /// connection cannot be idle and no head is being timed, and the request's end stamps
    /// `last` itself; a write completing right after that stamp is the response going out.
    fn touched(&self, read: bool) {
        if self.in_flight.load(Ordering::Acquire) != 0 {
            return;
        }
        if !read && self.fresh.swap(false, Ordering::AcqRel) {
            return;
        }
        let now = self.now_ms();
        self.last.store(now, Ordering::Release);
        if read {
            self.begin_head_at(now);
        }
    }

    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) if *n > 0 => self.touched(false),
            Poll::Pending => self.write_waits(),
            Poll::Ready(_) => {}
        }
    }

    /// A write is waiting on the socket: the bytes that go out later must stamp their own time.
    fn write_waits(&self) {
        if self.fresh.load(Ordering::Relaxed) {
            self.fresh.store(false, Ordering::Relaxed);
        }
    }

    /// The last request in flight ended now.
    fn ended(&self) {
        self.last.store(self.now_ms(), Ordering::Release);
        self.fresh.store(true, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Marks a request in flight (its head is complete) until the guard drops.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NO_HEAD, Ordering::Release);
        RequestGuard(self.clone())
    }

    /// Completes when the connection has been idle for `idle`, or a request head has been
    /// read for longer than `header` (when given).
    pub async fn expired(&self, idle: Duration, header: Option<Duration>) -> Expired {
        self.expired_or_quiet(idle, header, None::<(Duration, fn() -> bool)>)
            .await
    }

    /// [`Activity::expired`], or [`Expired::Quiet`] once `quiet`'s check, called every
    /// `period` from now, returns `true`. The check rides on the same timer as the deadlines
    /// (one more candidate for its next firing), so a connection that wakes for its traffic
    /// polls one timer, not two.
    pub async fn expired_or_quiet(
        &self,
        idle: Duration,
        header: Option<Duration>,
        mut quiet: Option<(Duration, impl FnMut() -> bool)>,
    ) -> Expired {
        // No deadline can start closer than this to the moment the timer is armed.
        let horizon = header.map_or(idle, |h| h.min(idle));
        let timer = tokio::time::sleep(horizon);
        tokio::pin!(timer);
        let mut check = quiet.as_ref().map(|(period, _)| Instant::now() + *period);
        loop {
            let now = Instant::now();
            let mut next = now + horizon;
            if let Some(header) = header {
                let since = self.head_since.load(Ordering::Acquire);
                if since != NO_HEAD {
                    let deadline = self.at(since) + header;
                    if now >= deadline {
                        return Expired::HeaderRead;
                    }
                    next = next.min(deadline);
                }
            }
            if self.in_flight.load(Ordering::Acquire) == 0 {
                let deadline = self.at(self.last.load(Ordering::Acquire)) + idle;
                if now >= deadline {
                    return Expired::Idle;
                }
                next = next.min(deadline);
            }
            if let (Some(at), Some((period, is_quiet))) = (check.as_mut(), quiet.as_mut()) {
                if now >= *at {
                    if is_quiet() {
                        return Expired::Quiet;
                    }
                    *at = now + *period;
                }
                next = next.min(*at);
            }
            if timer.deadline() != next {
                timer.as_mut().reset(next);
            }
            timer.as_mut().await;
        }
    }
}

/// A request in flight; dropping it (when the response body ends) may make the connection
/// idle.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // The response just went out: idle time counts from now.
        self.0.ended();
    }
}

pin_project_lite::pin_project! {
    /// An IO stream that records its traffic in an [`Activity`].
    #[derive(Debug)]
    pub struct Watched<I> {
        #[pin]
        inner: I,
        activity: Arc<Activity>,
    }
}

impl<I> Watched<I> {
    pub fn new(inner: I, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<I: AsyncRead> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touched(true);
        }
        polled
    }
}

impl<I: AsyncWrite> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        this.activity.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        this.activity.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's [`RequestGuard`] until it ends or is dropped.
    #[derive(Debug)]
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        guard: Option<RequestGuard>,
    }
}

impl<B> Tracked<B> {
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_byte_and_not_while_in_flight() {
        let a = Activity::new(false);
        let idle = Duration::from_secs(10);
        let guard = a.request();
        // In flight: never idle, however long.
        assert!(
            tokio::time::timeout(Duration::from_secs(100), a.expired(idle, None))
                .await
                .is_err()
        );
        drop(guard);
        let started = Instant::now();
        assert_eq!(a.expired(idle, None).await, Expired::Idle);
        assert_eq!(started.elapsed(), idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_must_finish_in_time() {
        let a = Activity::new(true);
        a.begin_head();
        let started = Instant::now();
        let got = a
            .expired(Duration::from_secs(60), Some(Duration::from_secs(2)))
            .await;
        assert_eq!(got, Expired::HeaderRead);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // Once the head is complete the header deadline no longer applies.
        let _g = a.request();
        assert!(tokio::time::timeout(
            Duration::from_secs(30),
            a.expired(Duration::from_secs(60), Some(Duration::from_secs(2)))
        )
        .await
        .is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_that_start_while_the_timer_is_armed_are_exact() {
        let a = Activity::new(true);
        let started = Instant::now();
        let watchdog = {
            let a = a.clone();
            tokio::spawn(async move {
                a.expired(Duration::from_secs(60), Some(Duration::from_secs(2)))
                    .await
            })
        };
        // A head that begins after the timer was armed, at no round multiple of the timeout.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        a.begin_head();
        assert_eq!(watchdog.await.unwrap(), Expired::HeaderRead);
        assert_eq!(started.elapsed(), Duration::from_millis(3_500));

        // A request that ends after a long time in flight: idle counts from its end.
        let a = Activity::new(false);
        let guard = a.request();
        let watchdog = {
            let a = a.clone();
            tokio::spawn(async move { a.expired(Duration::from_secs(10), None).await })
        };
        tokio::time::sleep(Duration::from_millis(25_300)).await;
        let ended = Instant::now();
        drop(guard);
        assert_eq!(watchdog.await.unwrap(), Expired::Idle);
        assert_eq!(ended.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_written_late_counts_from_its_last_byte() {
        let idle = Duration::from_secs(10);
        // Bytes moving while a request is in flight stamp nothing; the end does.
        let a = Activity::new(true);
        let guard = a.request();
        tokio::time::sleep(Duration::from_secs(5)).await;
        a.touched(true);
        assert_eq!(a.head_since.load(Ordering::Relaxed), NO_HEAD);
        drop(guard);
        let ended = Instant::now();
        // The response going out at once: idle counts from the request's end.
        a.wrote(&Poll::Ready(Ok(100)));
        assert_eq!(a.expired(idle, None).await, Expired::Idle);
        assert_eq!(ended.elapsed(), idle);

        // A response that waited on a full socket: idle counts from when its bytes left.
        let a = Activity::new(false);
        drop(a.request());
        a.wrote(&Poll::Pending);
        tokio::time::sleep(Duration::from_secs(3)).await;
        a.wrote(&Poll::Ready(Ok(100)));
        let written = Instant::now();
        assert_eq!(a.expired(idle, None).await, Expired::Idle);
        assert_eq!(written.elapsed(), idle);

        // A read with nothing in flight starts a head and restarts the idle count.
        let a = Activity::new(true);
        drop(a.request());
        a.wrote(&Poll::Ready(Ok(100)));
        tokio::time::sleep(Duration::from_secs(4)).await;
        a.touched(true);
        let read = Instant::now();
        let got = a
            .expired(Duration::from_secs(60), Some(Duration::from_secs(2)))
            .await;
        assert_eq!(got, Expired::HeaderRead);
        assert_eq!(read.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_quiet_check_runs_every_period_on_the_deadlines_timer() {
        let ms = Duration::from_millis;
        // In flight, so no idle deadline: the check alone ends it, on its third call.
        let a = Activity::new(true);
        let guard = a.request();
        let started = Instant::now();
        let mut calls = Vec::new();
        let check = || {
            calls.push(started.elapsed());
            calls.len() == 3
        };
        let got = a
            .expired_or_quiet(ms(60_000), Some(ms(10_000)), Some((ms(500), check)))
            .await;
        assert_eq!(got, Expired::Quiet);
        assert_eq!(calls, [ms(500), ms(1_000), ms(1_500)]);

        // A check that never finds it quiet leaves the deadlines exact.
        drop(guard);
        let ended = Instant::now();
        let mut checks = 0;
        let check = || {
            checks += 1;
            false
        };
        let got = a
            .expired_or_quiet(ms(1_000), Some(ms(10_000)), Some((ms(400), check)))
            .await;
        assert_eq!(got, Expired::Idle);
        assert_eq!(ended.elapsed(), ms(1_000));
        assert_eq!(checks, 2);

        let a = Activity::new(true);
        a.begin_head();
        let started = Instant::now();
        let got = a
            .expired_or_quiet(ms(60_000), Some(ms(2_000)), Some((ms(300), || false)))
            .await;
        assert_eq!(got, Expired::HeaderRead);
        assert_eq!(started.elapsed(), ms(2_000));
    }
}
