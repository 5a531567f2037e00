//! A lingering close: a connection the server is done with is not closed with bytes of the
//! peer's still unread, which would reset it (RST), and a reset throws away what the kernel
//! has not sent yet, the host's close frame too: the peer would see 1006, a lost network,
//! instead of the host's code and reason. So the stream's end first sends a FIN after what was
//! written, and what the peer still sends (the rest of a message the host refused, one it sent
//! before it read the close) is read and thrown away until its own end, for at most 2 s and
//! 8 MiB, as web servers do (nginx's `lingering_close`). A WebSocket whose reading stopped at
//! an error (an oversized message: the library reads nothing past it) ends this way too.
//!
//! Bounded: at most as many connections linger at once as the server takes live ones; past
//! that, or once the server shuts down, a stream closes at once. A lingering stream is one of
//! the server's tasks: its shutdown returns once they have closed too.

use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::registration::Registered;

/// The longest a closed connection is read for the peer's end.
const LINGER: Duration = Duration::from_secs(2);
/// The most bytes a closed connection is read for (the rest of the largest message a page
/// may send, and more); a peer that sends more is reset.
const LINGER_BYTES: usize = 8 << 20;

/// The server's lingering connections: how many there are, and how many may be.
pub(crate) struct Lingers {
    lingering: AtomicUsize,
    max: usize,
    shutdown: CancellationToken,
    /// The server's tasks, which its shutdown waits for.
    tracker: TaskTracker,
}

impl Lingers {
    pub(crate) fn new(max: usize, shutdown: CancellationToken, tracker: TaskTracker) -> Arc<Lingers> {
        Arc::new(Lingers { lingering: AtomicUsize::new(0), max, shutdown, tracker })
    }
}

/// One lingering stream's place in the count, given back when dropped: when its task ends,
/// and also when the task is dropped unrun or unfinished (the runtime shutting down).
struct Counted(Arc<Lingers>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.lingering.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted connection's TCP stream, which lingers when dropped (see the module).
pub(crate) struct Lingering {
    stream: Option<Registered>,
    lingers: Arc<Lingers>,
}

impl Lingering {
    pub(crate) fn new(stream: Registered, lingers: Arc<Lingers>) -> Lingering {
        Lingering { stream: Some(stream), lingers }
    }

    fn stream(&mut self) -> io::Result<&mut Registered> {
        self.stream.as_mut().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some((stream, runtime)) = self.stream.take().and_then(Registered::into_parts) else { return };
        // A FIN after what was written: the peer reads the host's last frame, then the end.
        let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
        // What is there already is read here (a few reads at most: this runs in a drop).
        let mut budget = LINGER_BYTES;
        if discard(|scrap| (&stream).read(scrap), &mut budget, 16) != Discarded::Pending {
            return;
        }
        let lingers = self.lingers.clone();
        if lingers.shutdown.is_cancelled() {
            return;
        }
        let taken = lingers
            .lingering
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| (now < lingers.max).then_some(now + 1));
        if taken.is_err() {
            tracing::debug!("web server: too many connections lingering; one closes with bytes unread");
            return;
        }
        let counted = Counted(lingers.clone());
        let linger = async move {
            let _counted = counted;
            // Declared after the count's place, so closed before it is given back.
            let Ok(stream) = TcpStream::from_std(stream) else { return };
            tokio::select! {
                _ = tokio::time::timeout(LINGER, read_to_end(&stream, budget)) => {}
                () = lingers.shutdown.cancelled() => {}
            }
        };
        // On the server's runtime, whichever thread drops the stream (main's, say, with the
        // last reference to a page's connection).
        self.lingers.tracker.spawn_on(linger, &runtime);
    }
}

/// What reading a closed connection for its end found.
#[derive(PartialEq, Eq)]
enum Discarded {
    /// It ended (or failed): nothing is left to reset it.
    Ended,
    /// Nothing more now; the peer has not ended it yet.
    Pending,
    /// The peer sent more than the budget.
    Enough,
}

/// Reads (with `read`, which does not block) and throws away what a stream holds now, at most
/// `reads` reads (then `Pending`), each taken from the byte `budget`.
fn discard(mut read: impl FnMut(&mut [u8]) -> io::Result<usize>, budget: &mut usize, reads: usize) -> Discarded {
    let mut scrap = [0u8; 4096];
    for _ in 0..reads {
        match read(&mut scrap) {
            Ok(0) => return Discarded::Ended,
            Ok(read) => match budget.checked_sub(read) {
                Some(left) => *budget = left,
                None => return Discarded::Enough,
            },
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Discarded::Pending,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Discarded::Ended,
        }
    }
    // More may be there: the reads' bound reached, the rest is read when it is readable.
    Discarded::Pending
}

/// Reads and throws away what `stream` receives, until its end or the budget's.
async fn read_to_end(stream: &TcpStream, mut budget: usize) {
    while stream.readable().await.is_ok() {
        if discard(|scrap| stream.try_read(scrap), &mut budget, usize::MAX) != Discarded::Pending {
            return;
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()?).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(Registered::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()?).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::super::keepalive::Activity;
    use super::*;

    /// A connected pair: the client's end, and the server's, accepted.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// A stream left lingering by a peer that does not close is one of the server's tasks:
    /// the shutdown's wait returns once it has closed (it used to return at once, the stream
    /// still open and counted).
    #[tokio::test(flavor = "current_thread")]
    async fn the_shutdown_waits_for_a_lingering_stream() {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let lingers = Lingers::new(4, shutdown.clone(), tracker.clone());
        let (mut client, server) = pair().await;
        drop(Lingering::new(Registered::new(server, Activity::new(None)).unwrap(), lingers.clone()));
        // The FIN came: the client reads the end; it does not close its side.
        assert_eq!(client.read(&mut [0u8; 16]).await.unwrap(), 0);
        assert_eq!(lingers.lingering.load(Ordering::Acquire), 1, "the stream lingers");
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
        assert_eq!(lingers.lingering.load(Ordering::Acquire), 0, "the shutdown returned with a stream lingering");
    }

    /// A lingering stream's task dropped unfinished (its runtime shut down) gives its place
    /// back.
    #[test]
    fn a_lingering_task_dropped_with_its_runtime_gives_its_place_back() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let lingers = Lingers::new(4, CancellationToken::new(), TaskTracker::new());
        let client = runtime.block_on(async {
            let (client, server) = pair().await;
            drop(Lingering::new(Registered::new(server, Activity::new(None)).unwrap(), lingers.clone()));
            client
        });
        assert_eq!(lingers.lingering.load(Ordering::Acquire), 1, "the stream lingers");
        drop(runtime);
        drop(client);
        assert_eq!(lingers.lingering.load(Ordering::Acquire), 0, "the place was not given back");
    }
}
