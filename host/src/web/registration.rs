//! An accepted connection's TCP stream as tokio's driver sees it: **read interest only while a
//! task of the server reads it.** While main's thread reads a page's socket from its own epoll
//! set (`page_reader`: its reads go to the socket directly, [`Activity::reads_directly`]), the
//! stream is registered with the server's driver for writing alone, so that the page's bytes
//! wake main's thread and no worker of the server's runtime as well: an edge-triggered
//! registration with read interest wakes a worker for every segment that arrives, to find no
//! task waiting (what the second attempt at main's reads measured: the read work moved to
//! main's thread, and the workers were still woken as often).
//!
//! The registration follows the connection's activity lazily, at the stream's next read or
//! write (both come through here, one at a time: the stream's owner polls it): a change costs
//! the registration's removal and a new one (two `epoll_ctl`s), once per claim or release of
//! the socket. A waiter of the old registration is woken, to wait again on the new one.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::runtime::Handle;

use super::keepalive::Activity;

/// The most tasks noted as waiting on the registration ([`Registered::wait`]).
const WAITING: usize = 8;

/// One accepted TCP stream, registered with the server's driver as its activity asks.
pub(crate) struct Registered {
    /// `None` only while the registration is being changed (or after that failed).
    fd: Option<AsyncFd<TcpStream>>,
    /// Whether `fd`'s registration has read interest.
    reading: bool,
    activity: Activity,
    /// The server's runtime, whose driver a new registration goes to (the stream may be
    /// polled on main's thread, outside it).
    runtime: Handle,
    /// The tasks last left waiting on the registration, woken when it changes.
    waiting: Vec<Waker>,
}

impl Registered {
    /// Takes `stream` out of the driver it was accepted on, into one of our own (the server's
    /// runtime: this is called on it), with read interest while `activity` does not read
    /// directly.
    pub(crate) fn new(stream: tokio::net::TcpStream, activity: Activity) -> io::Result<Registered> {
        let runtime = Handle::try_current().map_err(io::Error::other)?;
        let stream = stream.into_std()?;
        let reading = !activity.reads_directly();
        let fd = register(stream, reading)?;
        Ok(Registered { fd: Some(fd), reading, activity, runtime, waiting: Vec::new() })
    }

    /// The stream, out of the driver (for a lingering close).
    pub(crate) fn into_std(mut self) -> Option<TcpStream> {
        self.fd.take().map(AsyncFd::into_inner)
    }

    pub(crate) fn get_ref(&self) -> Option<&TcpStream> {
        self.fd.as_ref().map(AsyncFd::get_ref)
    }

    /// The registration, with read interest as the activity asks now; whether it changed.
    fn update(&mut self) -> io::Result<bool> {
        let reading = !self.activity.reads_directly();
        if reading == self.reading {
            return Ok(false);
        }
        let Some(fd) = self.fd.take() else { return Err(io::Error::from(io::ErrorKind::NotConnected)) };
        let stream = fd.into_inner();
        let _runtime = self.runtime.enter();
        self.fd = Some(register(stream, reading)?);
        self.reading = reading;
        for waiting in self.waiting.drain(..) {
            waiting.wake();
        }
        Ok(true)
    }

    fn registration(&self) -> io::Result<&AsyncFd<TcpStream>> {
        self.fd.as_ref().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Notes a task left waiting, to be woken when the registration changes. The stream's
    /// pollers are few (its connection's task, then the WebSocket's two halves, whose wakers
    /// tokio-tungstenite keeps the same from poll to poll): past [`WAITING`], the oldest is
    /// dropped, once woken (a spurious wake is harmless, a lost one is not).
    fn wait(&mut self, waker: &Waker) {
        if self.waiting.iter().any(|waiting| waiting.will_wake(waker)) {
            return;
        }
        if self.waiting.len() == WAITING {
            self.waiting.remove(0).wake();
        }
        self.waiting.push(waker.clone());
    }

    /// Does `io` (a write if `write`) when the socket is ready for it. A write is tried first
    /// whatever the registration knows (main's thread writes in place with no waker to wait
    /// with, and a registration just made knows nothing until the driver has polled), as is
    /// a read just after the registration changed.
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: bool,
        mut io: impl FnMut(&TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        let changed = self.update()?;
        if write || changed {
            match io(self.registration()?.get_ref()) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
        loop {
            let fd = self.registration()?;
            let polled = if write { fd.poll_write_ready(cx) } else { fd.poll_read_ready(cx) };
            let mut guard = match polled {
                Poll::Ready(guard) => guard?,
                Poll::Pending => {
                    self.wait(cx.waker());
                    return Poll::Pending;
                }
            };
            match guard.try_io(|fd| io(fd.get_ref())) {
                Ok(done) => return Poll::Ready(done),
                // Not ready after all: the readiness is cleared, wait for the next.
                Err(_would_block) => continue,
            }
        }
    }
}

/// Registers `stream` with the current runtime's driver: for writing, and for reading too if
/// `reading`. (A failure drops the stream: the connection ends with the error.)
fn register(stream: TcpStream, reading: bool) -> io::Result<AsyncFd<TcpStream>> {
    let interest = if reading { Interest::READABLE | Interest::WRITABLE } else { Interest::WRITABLE };
    // SAFETY: the `AsyncFd` owns the `TcpStream`, which owns its descriptor: it stays open and
    // names the same socket until the `AsyncFd` is dropped or gives the stream back
    // (`into_inner`), and `as_raw_fd` returns that descriptor every time.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(|error| error.into_parts().1)
}

impl AsyncRead for Registered {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.activity.reads_directly() {
            // Read by main's thread's drain (`keepalive::Heard` reads directly); this read is
            // the stream's own, through the registration, which reads only while the activity
            // does not: it waits for the registration's change (its waker is woken then).
            self.update()?;
            self.wait(cx.waker());
            return Poll::Pending;
        }
        let read = ready!(self.poll_io(cx, false, |mut stream| stream.read(buf.initialize_unfilled())))?;
        buf.advance(read);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Registered {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_io(cx, true, |mut stream| stream.write(buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, true, |mut stream| stream.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shut = self.get_ref().map_or(Ok(()), |stream| stream.shutdown(std::net::Shutdown::Write));
        Poll::Ready(shut)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The event masks of `fd`'s registrations in this process's epoll sets, as the kernel
    /// lists them (`/proc/self/fdinfo`: a `tfd:` line per registered descriptor), one per
    /// registration (a set open under two descriptors, as tokio's is, is listed twice).
    fn registrations_of(fd: i32) -> Vec<u32> {
        let mut registrations = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir("/proc/self/fdinfo").unwrap() {
            let Ok(info) = std::fs::read_to_string(entry.unwrap().path()) else { continue };
            for line in info.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if let ["tfd:", tfd, "events:", events, "data:", data, ..] = words[..]
                    && tfd.parse() == Ok(fd)
                {
                    registrations.insert(data.to_owned(), u32::from_str_radix(events, 16).unwrap());
                }
            }
        }
        registrations.into_values().collect()
    }

    const IN: u32 = libc::EPOLLIN as u32;
    const OUT: u32 = libc::EPOLLOUT as u32;

    /// While its activity reads directly (main's thread reads the page), the stream is in the
    /// server's driver for writing alone: the page's bytes wake no worker. A task left waiting
    /// on the old registration is woken when it changes, and the stream's own reads come back
    /// with the read interest.
    #[tokio::test(flavor = "current_thread")]
    async fn read_directly_the_stream_is_registered_for_writing_alone() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let fd = server.as_raw_fd();
        let activity = Activity::new(fd);
        let mut stream = Registered::new(server, activity.clone()).unwrap();
        let masks = registrations_of(fd);
        assert!(masks.len() == 1 && masks[0] & IN != 0 && masks[0] & OUT != 0, "registered {masks:x?}");

        // The stream's own reader waits for bytes.
        let counted = Arc::new(Counted(AtomicUsize::new(0)));
        let waker = Waker::from(counted.clone());
        let mut context = Context::from_waker(&waker);
        let mut bytes = [0u8; 16];
        let mut buf = ReadBuf::new(&mut bytes);
        assert!(Pin::new(&mut stream).poll_read(&mut context, &mut buf).is_pending());

        // Main's thread reads it now: at the stream's next use, its registration changes.
        activity.read_directly(true);
        let written = Pin::new(&mut stream).poll_write(&mut Context::from_waker(Waker::noop()), b"reply");
        assert!(matches!(written, Poll::Ready(Ok(5))), "{written:?}");
        let masks = registrations_of(fd);
        assert!(masks.len() == 1 && masks[0] & IN == 0 && masks[0] & OUT != 0, "registered {masks:x?}");
        assert_eq!(counted.0.load(Ordering::SeqCst), 1, "the waiting reader was not woken");

        // Bytes arrive while main reads: they are left on the socket for it.
        client.write_all(b"page").await.unwrap();
        assert!(crate::remote::recv::readable(stream.get_ref().unwrap().as_fd(), 10_000));
        assert!(Pin::new(&mut stream).poll_read(&mut context, &mut buf).is_pending());

        // Given back to its own reader: read interest again, and the bytes are read.
        activity.read_directly(false);
        let read = Pin::new(&mut stream).poll_read(&mut context, &mut buf);
        assert!(matches!(read, Poll::Ready(Ok(()))), "{read:?}");
        assert_eq!(buf.filled(), b"page");
        let masks = registrations_of(fd);
        assert!(masks.len() == 1 && masks[0] & IN != 0, "registered {masks:x?}");
    }
}
