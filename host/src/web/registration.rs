//! An accepted connection's TCP stream as tokio's driver sees it, and as main's thread reads it.
//!
//! **Read interest only while a task of the server reads it.** While main's thread reads a
//! page's socket from its own epoll set (`page_reader`; [`Activity::reads_directly`]), its
//! reads go to the socket directly (`recv` without blocking: a read that finds it empty is
//! `Pending` and leaves no waker, main's set says when there is more), and the stream is
//! registered with the server's driver for writing alone, so that the page's bytes wake main's
//! thread and no worker of the server's runtime as well: an edge-triggered registration with
//! read interest wakes a worker for every segment that arrives, to find no task waiting (what
//! the second attempt at main's reads measured: the read work moved to main's thread, and the
//! workers were still woken as often).
//!
//! The registration follows the activity lazily, at the stream's next read or write (both come
//! through here, one at a time: the stream's owner polls it; main's reads are reads of the
//! stream too): a change costs the registration's removal and a new one (two `epoll_ctl`s),
//! once per claim or release of the socket. A task left waiting on the old registration is
//! woken, to wait again on the new one.
//!
//! **The descriptor stays open while this lives**, whatever fails: a registration refused (the
//! driver shutting down, `epoll_ctl` out of memory) keeps the stream, unregistered, and its
//! reads and writes fail from then on. Others use the descriptor's number while the stream
//! lives (main's epoll set, `page_reader`'s checks for waiting bytes), so it must never close
//! early and be reused.

use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
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
    /// `None` only inside [`Registered::update`].
    socket: Option<Socket>,
    /// Whether the registration has read interest.
    reading: bool,
    activity: Activity,
    /// The server's runtime, whose driver a new registration goes to (the stream may be
    /// polled on main's thread, outside it), and where a lingering close runs.
    runtime: Handle,
    /// The tasks last left waiting on the registration, woken when it changes.
    waiting: Vec<Waker>,
}

enum Socket {
    Registered(AsyncFd<TcpStream>),
    /// A new registration was refused: the stream is kept (open), and fails.
    Refused(TcpStream),
}

impl Registered {
    /// Takes `stream` out of the driver it was accepted on, into one of our own (the server's
    /// runtime: this is called on it), with read interest while `activity` does not read
    /// directly.
    pub(crate) fn new(stream: tokio::net::TcpStream, activity: Activity) -> io::Result<Registered> {
        let runtime = Handle::try_current().map_err(io::Error::other)?;
        let stream = stream.into_std()?;
        let reading = !activity.reads_directly();
        let fd = register(stream, reading).map_err(|(_, error)| error)?;
        Ok(Registered { socket: Some(Socket::Registered(fd)), reading, activity, runtime, waiting: Vec::new() })
    }

    /// The stream, out of the driver, and the server's runtime (for a lingering close).
    pub(crate) fn into_parts(mut self) -> Option<(TcpStream, Handle)> {
        let stream = match self.socket.take()? {
            Socket::Registered(fd) => fd.into_inner(),
            Socket::Refused(stream) => stream,
        };
        Some((stream, self.runtime))
    }

    pub(crate) fn get_ref(&self) -> Option<&TcpStream> {
        match self.socket.as_ref()? {
            Socket::Registered(fd) => Some(fd.get_ref()),
            Socket::Refused(stream) => Some(stream),
        }
    }

    fn fd(&self) -> io::Result<BorrowedFd<'_>> {
        self.get_ref().map(AsFd::as_fd).ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// The registration, with read interest as the activity asks now; whether it changed.
    fn update(&mut self) -> io::Result<bool> {
        let reading = !self.activity.reads_directly();
        if reading == self.reading {
            return Ok(false);
        }
        let stream = match self.socket.take() {
            Some(Socket::Registered(fd)) => fd.into_inner(),
            Some(Socket::Refused(stream)) => stream,
            None => return Err(io::Error::from(io::ErrorKind::NotConnected)),
        };
        let registered = {
            let _runtime = self.runtime.enter();
            register(stream, reading)
        };
        let outcome = match registered {
            Ok(fd) => {
                self.socket = Some(Socket::Registered(fd));
                self.reading = reading;
                Ok(true)
            }
            Err((stream, error)) => {
                self.socket = Some(Socket::Refused(stream));
                Err(error)
            }
        };
        // Woken either way, the stream back in place first: to wait on the new registration,
        // or to find the failure.
        for waiting in std::mem::take(&mut self.waiting) {
            waiting.wake();
        }
        outcome
    }

    fn registration(&self) -> io::Result<&AsyncFd<TcpStream>> {
        match self.socket.as_ref() {
            Some(Socket::Registered(fd)) => Ok(fd),
            Some(Socket::Refused(_)) => {
                Err(io::Error::other("the socket could not be registered with the server's driver"))
            }
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
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

    /// A read for main's thread (the activity reads directly): what the socket has now, or
    /// `Pending` with no waker if it has nothing (main's epoll set says when it has).
    fn read_for_main(&mut self, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let fd = match self.fd() {
            Ok(fd) => fd,
            Err(error) => return Poll::Ready(Err(error)),
        };
        loop {
            match recv_into(fd, buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.activity.note_found_empty();
                    return Poll::Pending;
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
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
/// `reading`; refused, the stream comes back with the error.
fn register(stream: TcpStream, reading: bool) -> Result<AsyncFd<TcpStream>, (TcpStream, io::Error)> {
    let interest = if reading { Interest::READABLE | Interest::WRITABLE } else { Interest::WRITABLE };
    // SAFETY: the `AsyncFd` owns the `TcpStream`, which owns its descriptor: it stays open and
    // names the same socket until the `AsyncFd` is dropped or gives the stream back
    // (`into_inner`), and `as_raw_fd` returns that descriptor every time.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(|refused| refused.into_parts())
}

/// One read of socket `fd` without blocking into `buf`'s unfilled part, which it need not zero
/// first (as `read` into `initialize_unfilled` would, each time for hyper's buffer); how many
/// bytes (0: the end).
fn recv_into(fd: BorrowedFd<'_>, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: `recv` only writes into this part, and only what it says it wrote is marked
    // initialized and filled below.
    let unfilled = unsafe { buf.unfilled_mut() };
    // SAFETY: `unfilled` is writable for its length during the call, and `fd` is borrowed, so
    // open during it.
    let read = unsafe { libc::recv(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len(), libc::MSG_DONTWAIT) };
    // A negative count is an error, in errno; any other fits a usize.
    let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: `recv` wrote `read` bytes at the start of the unfilled part.
    unsafe { buf.assume_init(read) };
    buf.advance(read);
    Ok(read)
}

impl AsyncRead for Registered {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if self.activity.reads_directly() {
            // Out of the driver's reads first (a failure ends the connection).
            self.update()?;
            return self.read_for_main(buf);
        }
        ready!(self.poll_io(cx, false, |stream| recv_into(stream.as_fd(), buf)))?;
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
    /// server's driver for writing alone, and reads go to the socket, without a waker: the
    /// page's bytes wake no worker. A task left waiting on the old registration is woken when
    /// it changes (at the stream's next use, a read as well as a write), and the stream's own
    /// reads come back with the read interest.
    #[tokio::test(flavor = "current_thread")]
    async fn read_directly_the_stream_is_registered_for_writing_alone() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let fd = server.as_raw_fd();
        let activity = Activity::new(Some(fd));
        let mut stream = Registered::new(server, activity.clone()).unwrap();
        let masks = registrations_of(fd);
        assert!(masks.len() == 1 && masks[0] & IN != 0 && masks[0] & OUT != 0, "registered {masks:x?}");

        // The stream's own reader waits for bytes.
        let counted = Arc::new(Counted(AtomicUsize::new(0)));
        let waker = Waker::from(counted.clone());
        let mut waiting = Context::from_waker(&waker);
        let mut noop = Context::from_waker(Waker::noop());
        let mut bytes = [0u8; 16];
        let mut buf = ReadBuf::new(&mut bytes);
        assert!(Pin::new(&mut stream).poll_read(&mut waiting, &mut buf).is_pending());

        // Main's thread reads it now: at its first read, the registration changes.
        activity.read_directly(true);
        activity.clear_found_empty();
        assert!(Pin::new(&mut stream).poll_read(&mut noop, &mut buf).is_pending());
        assert!(activity.found_empty(), "the direct read did not say it found the socket empty");
        let masks = registrations_of(fd);
        assert!(masks.len() == 1 && masks[0] & IN == 0 && masks[0] & OUT != 0, "registered {masks:x?}");
        assert_eq!(counted.0.load(Ordering::SeqCst), 1, "the waiting reader was not woken");
        let written = Pin::new(&mut stream).poll_write(&mut noop, b"reply");
        assert!(matches!(written, Poll::Ready(Ok(5))), "{written:?}");

        // Bytes arrive while main reads: its direct read takes them.
        client.write_all(b"page").await.unwrap();
        assert!(crate::remote::recv::readable(stream.get_ref().unwrap().as_fd(), 10_000));
        let read = Pin::new(&mut stream).poll_read(&mut noop, &mut buf);
        assert!(matches!(read, Poll::Ready(Ok(()))), "{read:?}");
        assert_eq!(buf.filled(), b"page");
        buf.clear();

        // Given back to its own reader: read interest again, and the bytes are read.
        client.write_all(b"more").await.unwrap();
        assert!(crate::remote::recv::readable(stream.get_ref().unwrap().as_fd(), 10_000));
        activity.read_directly(false);
        let read = Pin::new(&mut stream).poll_read(&mut waiting, &mut buf);
        assert!(matches!(read, Poll::Ready(Ok(()))), "{read:?}");
        assert_eq!(buf.filled(), b"more");
        let masks = registrations_of(fd);
        assert!(masks.len() == 1 && masks[0] & IN != 0, "registered {masks:x?}");
    }
}
