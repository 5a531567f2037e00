//! Reading a connection's socket through its descriptor, for both ends' drains: the child's
//! (`child.rs`'s `Inbound`, its instance's thread) and the host's (`inbound/read_side.rs`,
//! main's thread). Each reads with `recv`, blocking or not (`MSG_DONTWAIT`), which leaves the
//! descriptor's file status alone: the writer's handle shares it, and blocks.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd};

use super::protocol::{self, ReadSpare};

/// One reader's view of a socket, borrowed from whoever owns it: the socket stays open while
/// this lives.
pub(crate) struct Recv<'fd> {
    fd: BorrowedFd<'fd>,
    /// Whether the next read may block.
    pub(crate) wait: bool,
    /// A read without blocking got less than it asked for: the socket had no more then (a
    /// stream socket's `recv` takes everything queued, up to the length), so the next read
    /// without blocking would block, and is not made. What arrives after it is a new readiness
    /// for whoever waits for one (the drains clear theirs before they read).
    emptied: bool,
}

impl<'fd> Recv<'fd> {
    /// A reader of `fd` whose reads do not block until `wait` is set.
    pub(crate) fn new(fd: BorrowedFd<'fd>) -> Recv<'fd> {
        Recv { fd, wait: false, emptied: false }
    }
}

impl Read for Recv<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.wait && self.emptied {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let flags = if self.wait { 0 } else { libc::MSG_DONTWAIT };
        // SAFETY: `buf` is writable for `buf.len()` bytes during the call, and `fd` is open:
        // it is borrowed from its owner for as long as this `Recv` lives.
        let read = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        // A negative count is an error, in errno; any other fits a usize.
        let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
        self.emptied = !self.wait && read > 0 && read < buf.len();
        Ok(read)
    }
}

impl ReadSpare for Recv<'_> {
    /// A large frame straight into `buffer`'s spare capacity, not zeroed first; without
    /// blocking, a short read ends it as in `read` (the rest is read by the next call).
    fn read_spare(&mut self, buffer: &mut Vec<u8>, rest: usize) -> io::Result<usize> {
        if !self.wait && self.emptied {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let wait = self.wait;
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        let emptied = &mut self.emptied;
        protocol::recv_spare(self.fd.as_raw_fd(), buffer, rest, flags, |asked, got| {
            *emptied = !wait && got < asked;
            !*emptied
        })
    }
}

/// Whether a read of `fd` would not block (bytes, the end, or an error), waiting up to
/// `timeout_ms` for it.
pub(crate) fn readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> bool {
    let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: one `pollfd`, valid for the call; `fd` is borrowed, so open during it.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
        if ready >= 0 {
            return ready > 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // Nothing to wait on: let a read say what is wrong.
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_frame_read_without_blocking_resumes_where_it_stopped() {
        use crate::remote::protocol::{self, Framing, OwnedMessage, Packet, decode};
        use std::io::Write;
        use std::os::fd::AsFd;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let payload: Vec<u8> = (0..(3 << 20) + 7).map(|n: u32| (n % 251) as u8).collect();
        let message =
            OwnedMessage { kind: 2, status: 0, origin: 3, target: 0, request_id: 1, channel: "c".into(), payload };
        let packet = Packet::Message { key: 4, message };
        let wire = protocol::frame(&packet).unwrap();
        let writer = std::thread::spawn(move || {
            let mut theirs = theirs;
            theirs.write_all(&wire).unwrap();
            // Then half a frame, and the end.
            theirs.write_all(&wire[..wire.len() / 2]).unwrap();
        });
        let fd = ours.as_fd();
        let mut framing = Framing::default();
        let mut stopped_inside = 0;
        let mut read = |framing: &mut Framing| loop {
            match framing.read(&mut Recv::new(fd)) {
                Ok(frame) => return Ok(frame.map(<[u8]>::to_vec)),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    stopped_inside += usize::from(framing.holds_bytes());
                    // A failsafe, not a measure: the writer is writing.
                    assert!(readable(fd, 10_000), "nothing more arrived");
                }
                Err(error) => return Err(error),
            }
        };
        let frame = read(&mut framing).unwrap().unwrap();
        assert_eq!(decode(&frame).unwrap(), packet);
        assert!(!framing.holds_bytes());
        let error = read(&mut framing).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{error}");
        // 3 MiB is more than a socket holds: the frame was read in several drains.
        assert!(stopped_inside > 0);
        writer.join().unwrap();
    }
}
