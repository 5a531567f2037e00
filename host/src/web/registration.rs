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
        let fd = AsyncFd::with_interest(stream, interest(reading))?;
        Ok(Registered { fd: Some(fd), reading, activity, runtime, waiting: Vec::new() })
    }

    /// The stream, out of the driver (for a lingering close).
    pub(crate) fn into_std(mut self) -> Option<TcpStream> {
        self.fd.take().map(AsyncFd::into_inner)
    }

    pub(crate) fn get_ref(&self) -> Option<&TcpStream> {
        self.fd.as_ref().map(AsyncFd::get_ref)
    }

    /// The registration, with read interest as the activity asks now.
    fn registration(&mut self) -> io::Result<&AsyncFd<TcpStream>> {
        let reading = !self.activity.reads_directly();
        if reading != self.reading
            && let Some(fd) = self.fd.take()
        {
            let stream = fd.into_inner();
            let _runtime = self.runtime.enter();
            self.fd = Some(AsyncFd::with_interest(stream, interest(reading))?);
            self.reading = reading;
            for waiting in self.waiting.drain(..) {
                waiting.wake();
            }
        }
        self.fd.as_ref().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    fn wait(&mut self, waker: &Waker) {
        if !self.waiting.iter().any(|waiting| waiting.will_wake(waker)) {
            self.waiting.push(waker.clone());
        }
    }

    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: bool,
        mut io: impl FnMut(&TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
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

fn interest(reading: bool) -> Interest {
    if reading { Interest::READABLE | Interest::WRITABLE } else { Interest::WRITABLE }
}

impl AsyncRead for Registered {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.activity.reads_directly() {
            // Read by main's thread's drain (`keepalive::Heard` reads directly); this read is
            // the stream's own, through the registration, which reads only while the activity
            // does not: it waits for the registration's change (its waker is woken then).
            let _ = self.registration()?;
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
