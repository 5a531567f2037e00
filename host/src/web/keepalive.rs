//! Noticing a dead connection (half-open: the peer went without a word, through a proxy or a
//! laptop's sleep, and the host's TCP stack has not found out): a socket idle for
//! [`WebConfig::ping_interval`](super::WebConfig::ping_interval) (nothing received from it)
//! is sent a WebSocket Ping, which a browser answers by itself; one from which nothing (a
//! Pong, a message, or any byte of one) arrives for
//! [`WebConfig::ping_timeout`](super::WebConfig::ping_timeout) is taken for dead.
//!
//! Any bytes count, not only whole messages: a page sending one large message slowly is
//! alive, and its Pong cannot overtake the data frame in progress. The connection's TCP stream
//! is read through [`Heard`], which notes the time of each read that brought bytes (one
//! store per read, not per byte or message) in the connection's [`Activity`]; the timer is not
//! reset per read but looked at when it fires (at most once an interval while bytes flow).
//!
//! The activity also says whether a page's socket is read **directly**, while main's thread
//! reads it (`page_reader`): that thread is woken by its own epoll set, and the stream is then
//! in the server's driver for writing alone (`registration`, which reads it so).

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// When bytes last arrived on one connection. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Activity(Arc<Clock>);

struct Clock {
    /// The connection's start, from which `last` counts.
    origin: Instant,
    /// Nanoseconds from `origin` to the last read that brought bytes.
    last: AtomicU64,
    /// The connection's socket, if known, for main's thread to watch (`page_reader`).
    socket: Option<RawFd>,
    /// Reads go to the socket directly, not through tokio's readiness (`registration`).
    direct: AtomicBool,
    /// A direct read found the socket empty since the last [`Activity::clear_found_empty`].
    found_empty: AtomicBool,
}

impl Activity {
    /// The activity of the connection on socket `socket` (`None`: not known; then nothing but
    /// its own task reads it).
    pub(crate) fn new(socket: Option<RawFd>) -> Activity {
        Activity(Arc::new(Clock {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            socket,
            direct: AtomicBool::new(false),
            found_empty: AtomicBool::new(false),
        }))
    }

    /// The connection's socket, if known. Open while the connection's stream is.
    pub(crate) fn socket(&self) -> Option<RawFd> {
        self.0.socket
    }

    /// Whether reads go to the socket itself first, and an empty one is `Pending` with no
    /// waker left with tokio: while a thread outside the server's runtime (main's, woken by its
    /// own epoll set) reads the connection. The stream's registration with the server's driver
    /// follows (`registration`: no read interest while set), and a reader through tokio after
    /// this is unset finds the bytes (a new registration reports what is there).
    pub(crate) fn read_directly(&self, direct: bool) {
        self.0.direct.store(direct, Ordering::SeqCst);
    }

    /// Whether reads go to the socket itself ([`Activity::read_directly`]).
    pub(crate) fn reads_directly(&self) -> bool {
        self.0.direct.load(Ordering::SeqCst)
    }

    /// Whether a direct read found the socket empty since the last clear (so a `Pending` read
    /// meant that, not a lock held elsewhere).
    pub(crate) fn found_empty(&self) -> bool {
        self.0.found_empty.load(Ordering::Relaxed)
    }

    /// A direct read found the socket empty (`registration`).
    pub(crate) fn note_found_empty(&self) {
        self.0.found_empty.store(true, Ordering::Relaxed);
    }

    /// Before a read whose `Pending` [`Activity::found_empty`] is to explain.
    pub(crate) fn clear_found_empty(&self) {
        self.0.found_empty.store(false, Ordering::Relaxed);
    }

    /// Bytes arrived just now.
    fn heard(&self) {
        let nanos = u64::try_from(self.0.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.last.store(nanos, Ordering::Relaxed);
    }

    /// When bytes last arrived (the connection's start if none did yet).
    fn last(&self) -> Instant {
        self.0.origin + Duration::from_nanos(self.0.last.load(Ordering::Relaxed))
    }
}

/// A connection's stream, read through: each read that brings bytes is noted in its
/// [`Activity`].
pub(crate) struct Heard<S> {
    inner: S,
    activity: Activity,
}

impl<S> Heard<S> {
    pub(crate) fn new(inner: S, activity: Activity) -> Heard<S> {
        Heard { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Heard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.heard();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Heard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the timer says when it fires.
pub(crate) enum Due {
    /// The connection is idle: send a Ping.
    Ping,
    /// Nothing arrived for the timeout: the connection is dead (the reason).
    Dead(String),
    /// Something arrived meanwhile: nothing to do yet.
    Nothing,
}

/// One socket's keepalive.
pub(crate) struct Keepalive {
    interval: Duration,
    timeout: Duration,
    activity: Activity,
    timer: Pin<Box<Sleep>>,
}

/// How far off a time a duration too long to run out (`Duration::MAX`: never) is taken to be:
/// an instant that far away overflows (and panicked); tokio's timers do the same.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

impl Keepalive {
    pub(crate) fn new(interval: Duration, timeout: Duration, activity: Activity) -> Keepalive {
        let (interval, timeout) = (interval.min(FAR), timeout.min(FAR));
        let timer = Box::pin(tokio::time::sleep_until(activity.last() + interval));
        Keepalive { interval, timeout, activity, timer }
    }

    /// Resolves when the timer fires; then [`Keepalive::due`] says what to do.
    pub(crate) async fn fired(&mut self) {
        self.timer.as_mut().await;
    }

    /// What to do now that the timer fired; it is set again.
    pub(crate) fn due(&mut self) -> Due {
        let now = Instant::now();
        let heard = self.activity.last();
        let quiet = now.saturating_duration_since(heard);
        if quiet >= self.timeout {
            return Due::Dead(format!(
                "nothing arrived for {quiet:?}, pings unanswered (ping_timeout {:?})",
                self.timeout
            ));
        }
        if quiet < self.interval {
            self.timer.as_mut().reset(heard + self.interval);
            return Due::Nothing;
        }
        // Idle: ping, and again an interval later, until the timeout.
        self.timer.as_mut().reset((now + self.interval).min(heard + self.timeout));
        Due::Ping
    }
}
