//! Deferred writes: what an instance's thread sends to a socket between a wake-up and its next
//! park waits in the socket's buffer and goes out in one write before the thread parks.
//!
//! An instance's runtime tells its host where each run of its thread begins and ends
//! (`HostVTable::batch_begin` after it wakes, `batch_end` before it parks: the dispatcher's
//! batch and the tasks it wakes, such as an invoker sending its next request as a reply
//! comes). Between the two, a send this thread makes to a socket (main's thread in the host
//! writing to a renderer process, an instance's thread in a child writing to the host), past
//! the run's first to that socket, is appended to the socket's [`Writer`] buffer instead of
//! written; `batch_end` writes each buffer the run filled, whole, in one `write`. The first goes
//! at once, so a run that sends one frame (a sequential invoke, its reply) waits for nothing:
//! deferring it too measurably slowed the sequential invoke across processes. A send made on any other thread (the host's
//! own API calls, the child's reader, its writer thread) writes what is buffered first and its
//! own frame with it, in one vectored write, under the same lock: a connection's frames leave
//! in the order they were sent, as before. A buffer is also written when it would pass
//! [`FLUSH_AT`], and a frame larger than [`DEFER_UP_TO`] is never copied into it (it is
//! written, with what is buffered before it, from where it is).
//!
//! **No send waits in a buffer while its thread sleeps.** Between `batch_begin` and
//! `batch_end` the runtime itself never gives up the thread: the only place it sleeps is its
//! park, and `batch_end` runs before it (tokio's `on_thread_park`, called before every park of
//! a current-thread runtime; its instance thread also ends the last run when it stops). What it
//! cannot vouch for is author code: a handler, listener or task may block the thread or run
//! long. For that, the [`flusher`]: one thread per process, parked while nothing is deferred,
//! armed by a deferral that fills an empty buffer (one atomic add and load per run while it
//! is armed; not once a run: the flusher may write a blocked run's buffer and rest, and the
//! run's next deferral must arm it again). Armed, it looks every [`TICK`]; a buffer still holding bytes that no flush has
//! emptied since its previous look (its owner has not parked for a whole tick) is written by
//! the flusher, as any other sender would write it. So a deferred send waits at most two
//! ticks whatever its thread does, and a thread that parks in time pays nothing. A tick with
//! nothing deferred disarms it: idle, nothing ticks.
//!
//! The flusher never waits on one socket: it takes a writer's lock only if it is free (a
//! sender holding it may be blocked writing to a socket whose peer stopped reading) and writes
//! with `MSG_DONTWAIT`; what the socket does not take stays at the front of the buffer, in
//! order, for its next tick or the next sender. So one hung peer delays no other socket's
//! deferred sends. A socket with a write timeout (the host's ends: 5 s) that took nothing
//! for that long is shut as hung, as a blocking write that timed out would have it.

use std::cell::RefCell;
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError, Weak};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, send};

use super::protocol::write_all_vectored;
use crate::core::lock;

/// A buffer is written as soon as it would pass this many bytes.
pub(crate) const FLUSH_AT: usize = 64 << 10;

/// The largest frame copied into a buffer; a larger one is written at once (with what is
/// buffered before it), from the sender's own memory.
pub(crate) const DEFER_UP_TO: usize = 16 << 10;

/// How often the armed flusher looks for a buffer left unwritten.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// What a failed write does to the connection.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OnError {
    /// Shut the socket both ways (the host's end: the connection's reader sees the end, and
    /// the child is treated as lost).
    Shut,
    /// Exit the process (a child's end: the host is gone).
    Exit,
}

/// One socket's writing side: the stream, and what a batch has deferred to it.
pub(crate) struct Writer {
    state: Mutex<State>,
    /// `pending` holds bytes (set under the lock, read by the flusher without it).
    dirty: AtomicBool,
    /// Flushes that emptied `pending`: unchanged between two of the flusher's looks while
    /// `dirty`, the buffer's owner is stuck in one batch.
    flushes: AtomicU64,
    /// `flushes` at the flusher's previous look.
    looked: AtomicU64,
    on_error: OnError,
    /// The unit tests' way to see what a run holds before the flusher could write it.
    #[cfg(test)]
    unflushed: AtomicBool,
}

struct State {
    stream: UnixStream,
    pending: Vec<u8>,
    /// A write failed: the stream is shut and nothing more is written.
    broken: bool,
    /// Since when the flusher has found the socket full, taking none of `pending`.
    full_since: Option<Instant>,
}

/// A writer a run sent to, and whether it deferred to it (its end writes it).
type Sent = (Arc<Writer>, bool);

/// This thread's run: whether it is in one, and the writers it sent to in it, with whether it
/// deferred to each. The list is emptied at the run's end but keeps its memory: a run sends
/// (a sequential invoke, its reply), and allocating the list afresh each run cost an
/// allocation and a free per message.
struct Batch {
    open: bool,
    writers: Vec<Sent>,
}

thread_local! {
    static BATCH: RefCell<Batch> = const { RefCell::new(Batch { open: false, writers: Vec::new() }) };
}

impl Writer {
    /// The writing side of `stream`, known to the flusher.
    pub(crate) fn new(stream: UnixStream, on_error: OnError) -> Arc<Writer> {
        let writer = Arc::new(Writer {
            state: Mutex::new(State { stream, pending: Vec::new(), broken: false, full_since: None }),
            dirty: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            looked: AtomicU64::new(0),
            on_error,
            #[cfg(test)]
            unflushed: AtomicBool::new(false),
        });
        let registry = registry();
        let mut writers = lock(&registry.writers);
        writers.retain(|writer| writer.strong_count() > 0);
        writers.push(Arc::downgrade(&writer));
        writer
    }

    /// Sends one frame (its pieces, in order): deferred if this thread is in a batch and it is
    /// small, else written at once after whatever is buffered.
    pub(crate) fn send(self: &Arc<Self>, parts: &[&[u8]]) -> io::Result<()> {
        let size: usize = parts.iter().map(|part| part.len()).sum();
        let mut state = lock(&self.state);
        if state.broken {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "an earlier write to this socket failed"));
        }
        if size <= DEFER_UP_TO && state.pending.len() + size <= FLUSH_AT && self.defer_here() {
            let first = state.pending.is_empty();
            for part in parts {
                state.pending.extend_from_slice(part);
            }
            if first {
                self.dirty.store(true, Ordering::Release);
                // Armed for every buffer a deferral fills, not once a run: the flusher may
                // have written this one (its owner blocked) and rested since, the run going on.
                arm_flusher();
            }
            return Ok(());
        }
        let State { stream, pending, .. } = &mut *state;
        // The pieces of a frame are few (a message's head, channel and value): their slices
        // go on the stack, not in an allocation of every send.
        let mut inline = [IoSlice::new(&[]); 4];
        let mut spilled = Vec::new();
        let slices = if parts.len() < inline.len() {
            inline[0] = IoSlice::new(pending);
            for (slice, part) in inline[1..].iter_mut().zip(parts) {
                *slice = IoSlice::new(part);
            }
            &mut inline[..=parts.len()]
        } else {
            spilled.push(IoSlice::new(pending));
            spilled.extend(parts.iter().map(|part| IoSlice::new(part)));
            &mut spilled[..]
        };
        let written = write_all_vectored(stream, slices);
        self.written(&mut state, written)
    }

    /// Whether a send on this thread may wait in the buffer: this thread is in a run, this is
    /// not the run's first send to this socket, and the flusher runs. The first is written at
    /// once: a run that sends one frame (a sequential invoke, its reply) waits for nothing, and
    /// a burst costs two writes, its first frame and the rest.
    fn defer_here(self: &Arc<Self>) -> bool {
        BATCH.with(|batch| {
            let mut batch = batch.borrow_mut();
            if !batch.open {
                return false;
            }
            let writers = &mut batch.writers;
            let Some((_, deferred)) = writers.iter_mut().find(|(writer, _)| Arc::ptr_eq(writer, self)) else {
                writers.push((self.clone(), false));
                return false;
            };
            if !flusher_running() {
                return false;
            }
            *deferred = true;
            true
        })
    }

    /// Writes what is buffered, if anything.
    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.pending.is_empty() || state.broken {
            return Ok(());
        }
        let State { stream, pending, .. } = &mut *state;
        let written = stream.write_all(pending);
        self.written(&mut state, written)
    }

    /// The flusher's write of what is buffered, which never waits: not for the lock (another
    /// sender holds it, maybe blocked writing to this very socket), not for the socket (its
    /// peer does not read). What the socket does not take stays buffered, in order, for the
    /// flusher's next tick or the next sender (who writes it before its own frame). Returns
    /// whether bytes are left. A socket with a write timeout that took nothing for that long is
    /// hung, as for a blocking write that timed out.
    fn flush_without_waiting(&self) -> bool {
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return true,
        };
        if state.pending.is_empty() || state.broken {
            return false;
        }
        loop {
            let sent = send(state.stream.as_raw_fd(), &state.pending, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL);
            match sent {
                Ok(sent) if sent >= state.pending.len() => {
                    let _ = self.written(&mut state, Ok(()));
                    return false;
                }
                Ok(0) => {
                    let error = io::Error::new(io::ErrorKind::WriteZero, "the socket took no more bytes");
                    tracing::warn!("cannot write deferred frames to the socket: {error}");
                    let _ = self.written(&mut state, Err(error));
                    return false;
                }
                // Part of it: the rest stays at the front of the buffer, then more is tried.
                Ok(sent) => {
                    state.pending.drain(..sent);
                    state.full_since = None;
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    let since = *state.full_since.get_or_insert_with(Instant::now);
                    let timeout = state.stream.write_timeout().ok().flatten();
                    if timeout.is_some_and(|timeout| since.elapsed() >= timeout) {
                        let error = io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the socket took nothing for its write timeout: its peer stopped reading",
                        );
                        tracing::warn!("cannot write deferred frames to the socket: {error}");
                        let _ = self.written(&mut state, Err(error));
                        return false;
                    }
                    return true;
                }
                Err(errno) => {
                    let error = io::Error::from(errno);
                    tracing::warn!("cannot write deferred frames to the socket: {error}");
                    let _ = self.written(&mut state, Err(error));
                    return false;
                }
            }
        }
    }

    /// After a write of the whole buffer (and maybe a frame with it): the buffer is empty, and
    /// a failure breaks the socket.
    fn written(&self, state: &mut State, written: io::Result<()>) -> io::Result<()> {
        state.pending.clear();
        state.full_since = None;
        // A burst's buffer is not kept for good.
        state.pending.shrink_to(FLUSH_AT);
        self.dirty.store(false, Ordering::Release);
        self.flushes.fetch_add(1, Ordering::AcqRel);
        if let Err(error) = &written {
            state.broken = true;
            match self.on_error {
                // A partial frame may have been written, so nothing more may follow it.
                OnError::Shut => {
                    tracing::debug!("a write failed ({error}): the socket is shut");
                    let _ = state.stream.shutdown(std::net::Shutdown::Both);
                }
                // The host is gone.
                OnError::Exit => std::process::exit(0),
            }
        }
        written
    }

    /// Shuts the socket both ways (the connection is closing: what is buffered is dropped,
    /// and nothing is written after it).
    pub(crate) fn shutdown(&self) {
        let mut state = lock(&self.state);
        state.pending = Vec::new();
        state.broken = true;
        self.dirty.store(false, Ordering::Release);
        let _ = state.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// This thread begins a run (it woke): its sends to sockets may wait for [`end`].
pub(crate) fn begin() {
    BATCH.with(|batch| batch.borrow_mut().open = true);
}

/// Runs `call`, a call into a library (`LibraryInstance`'s), so that a run the library begins
/// on this thread ends with the call: `batch_begin` carries only a key, which cannot tell the
/// instance's own thread from the host's, so a library calling it in its `deliver` or
/// `control` (on a host thread, a child's reader) would leave that thread deferring its sends
/// for good. A call made inside a run (an instance's thread delivering to another instance in
/// its process) leaves that run alone. It costs two thread-local reads per call, no lock.
pub(crate) fn scoped<R>(call: impl FnOnce() -> R) -> R {
    let outside = !in_run();
    let result = call();
    if outside && in_run() {
        tracing::debug!("a library began a batch on a thread of the host's: ended with its call");
        end();
    }
    result
}

/// Whether this thread is in a run.
pub(crate) fn in_run() -> bool {
    BATCH.with(|batch| batch.borrow().open)
}

/// This thread's run ends (it is about to park): every buffer it deferred to is written.
pub(crate) fn end() {
    let mut writers = BATCH.with(|batch| {
        let mut batch = batch.borrow_mut();
        if !batch.open {
            return Vec::new();
        }
        batch.open = false;
        std::mem::take(&mut batch.writers)
    });
    for (writer, deferred) in writers.drain(..) {
        if !deferred {
            continue;
        }
        // A failure is the writer's to handle (`OnError`); the senders were told OK, as for a
        // frame the kernel took before the peer died: the connection's loss fails what waits.
        if let Err(error) = writer.flush() {
            tracing::warn!("cannot write a batch's deferred frames to the child: {error}");
        }
    }
    // The emptied list's memory back for the next run (unless one began meanwhile with its own).
    BATCH.with(|batch| {
        let mut batch = batch.borrow_mut();
        if batch.writers.capacity() == 0 {
            batch.writers = writers;
        }
    });
}

/// The writers of this process and the flusher's state.
struct Registry {
    writers: Mutex<Vec<Weak<Writer>>>,
    /// The flusher looks every tick.
    armed: AtomicBool,
    /// Batches that deferred since the flusher started (it disarms only after a tick with none).
    deferrals: AtomicU64,
    /// Whether the flusher's thread started (without it, nothing is deferred).
    running: OnceLock<bool>,
    wake: Mutex<()>,
    armed_now: Condvar,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        writers: Mutex::new(Vec::new()),
        armed: AtomicBool::new(false),
        deferrals: AtomicU64::new(0),
        running: OnceLock::new(),
        wake: Mutex::new(()),
        armed_now: Condvar::new(),
    })
}

/// Whether the flusher's thread runs (started on the first call); false if it could not be
/// started (then nothing may be deferred).
fn flusher_running() -> bool {
    *registry().running.get_or_init(|| {
        let started = std::thread::Builder::new().name("socket-flusher".into()).spawn(|| flusher(self::registry()));
        match started {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!("cannot start the socket flusher, so every send is written at once: {error}");
                false
            }
        }
    })
}

/// Counts a deferral that filled an empty buffer and makes sure the flusher is armed (it
/// runs: see [`flusher_running`]).
fn arm_flusher() {
    let registry = registry();
    // SeqCst with the flusher's disarming: either it sees this deferral, or this sees it
    // disarmed and arms it again.
    registry.deferrals.fetch_add(1, Ordering::SeqCst);
    if !registry.armed.load(Ordering::SeqCst) {
        let _wake = lock(&registry.wake);
        registry.armed.store(true, Ordering::SeqCst);
        registry.armed_now.notify_one();
    }
}

/// The flusher's thread: parked until armed; armed, it writes every buffer left unwritten for a
/// whole tick, and disarms after a tick in which nothing was deferred and nothing is buffered.
fn flusher(registry: &'static Registry) {
    loop {
        {
            let mut wake = lock(&registry.wake);
            while !registry.armed.load(Ordering::SeqCst) {
                wake = registry.armed_now.wait(wake).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
        let deferrals = registry.deferrals.load(Ordering::SeqCst);
        // A timer, not a synchronisation: the bound on how long a deferred send can wait.
        std::thread::sleep(TICK);
        let writers: Vec<Arc<Writer>> = lock(&registry.writers).iter().filter_map(Weak::upgrade).collect();
        let mut buffered = false;
        for writer in &writers {
            let flushes = writer.flushes.load(Ordering::Acquire);
            let before = writer.looked.swap(flushes, Ordering::AcqRel);
            if !writer.dirty.load(Ordering::Acquire) {
                continue;
            }
            #[cfg(test)]
            if writer.unflushed.load(Ordering::Acquire) {
                buffered = true;
                continue;
            }
            if before == flushes {
                // Its owner has not ended its batch for a whole tick (blocked, or running long
                // in author code): written here, as any other sender would, but without
                // waiting: a socket whose peer stopped reading (or whose lock a blocked sender
                // holds) keeps the rest for the next tick, and holds up no other socket.
                buffered |= writer.flush_without_waiting();
            } else {
                buffered = true;
            }
        }
        drop(writers);
        if !buffered && registry.deferrals.load(Ordering::SeqCst) == deferrals {
            registry.armed.store(false, Ordering::SeqCst);
            if registry.deferrals.load(Ordering::SeqCst) != deferrals {
                registry.armed.store(true, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use super::*;

    /// A writer over one end of a socket pair, and the other end to read what it wrote; the
    /// flusher leaves it alone (what a run holds is checked while it holds it).
    fn pair() -> (Arc<Writer>, UnixStream) {
        let (writer, reader) = flushed_pair();
        writer.unflushed.store(true, Ordering::Release);
        (writer, reader)
    }

    /// [`pair`], with the flusher looking after it.
    fn flushed_pair() -> (Arc<Writer>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        // A failsafe for a lost write, not a timing: every read below waits for bytes that
        // must come.
        theirs.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        (Writer::new(ours, OnError::Shut), theirs)
    }

    fn nothing_waiting(reader: &UnixStream) -> bool {
        reader.set_nonblocking(true).unwrap();
        let empty = matches!((&*reader).read(&mut [0; 1]), Err(error) if error.kind() == io::ErrorKind::WouldBlock);
        reader.set_nonblocking(false).unwrap();
        empty
    }

    fn read(reader: &mut UnixStream, count: usize) -> Vec<u8> {
        let mut bytes = vec![0; count];
        reader.read_exact(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn a_runs_sends_wait_for_its_end_and_leave_in_one_piece_in_order() {
        let (writer, mut reader) = pair();
        writer.send(&[b"a"]).unwrap();
        assert_eq!(read(&mut reader, 1), b"a", "outside a run, written at once");
        begin();
        writer.send(&[b"b", b"c"]).unwrap();
        assert_eq!(read(&mut reader, 2), b"bc", "a run's first send to a socket goes at once");
        writer.send(&[b"d"]).unwrap();
        writer.send(&[b"e"]).unwrap();
        assert!(nothing_waiting(&reader), "the rest held until the run ends");
        end();
        assert_eq!(read(&mut reader, 2), b"de");
        writer.send(&[b"f"]).unwrap();
        assert_eq!(read(&mut reader, 1), b"f", "the run ended: written at once again");
    }

    #[test]
    fn the_next_run_starts_with_no_writer_of_the_last_and_frames_of_any_piece_count_go_whole() {
        // The list of a run's writers is kept across runs (its memory): emptied, holding no
        // writer (an `Arc` kept there would keep a closed connection's writer alive), so the
        // next run's first send is written at once again.
        let (writer, mut reader) = pair();
        begin();
        writer.send(&[b"a"]).unwrap();
        writer.send(&[b"b"]).unwrap();
        end();
        assert_eq!(read(&mut reader, 2), b"ab");
        assert_eq!(Arc::strong_count(&writer), 1, "the list kept for the next run holds no writer");
        begin();
        writer.send(&[b"c", b"d", b"e"]).unwrap();
        assert_eq!(read(&mut reader, 3), b"cde", "the next run's first send goes at once");
        writer.send(&[b"f"]).unwrap();
        assert!(nothing_waiting(&reader), "the next held");
        // What is held and a large frame of three pieces (the slices on the stack, all four),
        // then one of five pieces (more than the stack holds): each whole and in order.
        let large = vec![7; DEFER_UP_TO + 1];
        let expected: Vec<u8> = [&b"f"[..], b"g", &large, b"h", b"1", b"2", &large, b"3", b"4"].concat();
        let count = expected.len();
        let read_all = std::thread::spawn(move || read(&mut reader, count));
        writer.send(&[b"g", &large, b"h"]).unwrap();
        writer.send(&[b"1", b"2", &large, b"3", b"4"]).unwrap();
        assert!(read_all.join().unwrap() == expected, "a frame was cut, doubled or out of order");
        end();
    }

    #[test]
    fn another_thread_writes_what_a_run_holds_before_its_own_frame() {
        let (writer, mut reader) = pair();
        begin();
        writer.send(&[b"0"]).unwrap();
        writer.send(&[b"1"]).unwrap();
        let other = writer.clone();
        std::thread::spawn(move || other.send(&[b"2"]).unwrap()).join().unwrap();
        assert_eq!(read(&mut reader, 3), b"012", "the held frame before the other thread's");
        end();
        assert!(nothing_waiting(&reader), "nothing written twice");
    }

    #[test]
    fn a_large_frame_is_written_at_once_after_what_is_held() {
        let (writer, mut reader) = pair();
        begin();
        writer.send(&[b"w"]).unwrap();
        writer.send(&[b"x"]).unwrap();
        let large = vec![7; DEFER_UP_TO + 1];
        // Read on another thread: the frame is larger than a socket pair's buffer.
        let read_all = std::thread::spawn(move || read(&mut reader, DEFER_UP_TO + 3));
        writer.send(&[&large]).unwrap();
        let bytes = read_all.join().unwrap();
        assert_eq!(&bytes[..2], b"wx");
        assert!(bytes[2..].iter().all(|&byte| byte == 7));
        end();
    }

    #[test]
    fn a_run_that_never_ends_still_has_its_sends_written_by_the_flusher() {
        let (writer, mut reader) = flushed_pair();
        begin();
        writer.send(&[b"first"]).unwrap();
        writer.send(&[b"held"]).unwrap();
        // This thread now "blocks": it reads, and never ends its run before the bytes come.
        assert_eq!(read(&mut reader, 9), b"firstheld");
        end();
    }

    /// Fills the socket under `writer` until it takes nothing more (its peer not reading);
    /// returns how many bytes that took.
    fn fill(writer: &Writer) -> usize {
        let state = lock(&writer.state);
        let mut filled = 0;
        loop {
            match send(state.stream.as_raw_fd(), &[1; 4096], MsgFlags::MSG_DONTWAIT) {
                Ok(sent) => filled += sent,
                Err(Errno::EAGAIN) => return filled,
                Err(errno) => panic!("{errno}"),
            }
        }
    }

    #[test]
    fn a_socket_whose_peer_stopped_reading_holds_up_no_other_sockets_flush() {
        let (stuck, mut stuck_reader) = flushed_pair();
        let (fine, mut fine_reader) = flushed_pair();
        begin();
        stuck.send(&[b"first"]).unwrap();
        let filled = fill(&stuck);
        // Held for the run's end: the flusher's to write, to a socket that takes nothing.
        stuck.send(&[b"held"]).unwrap();
        fine.send(&[b"first"]).unwrap();
        fine.send(&[b"held"]).unwrap();
        // This thread now "blocks" (it never ends its run): the flusher writes the other
        // socket's buffer, not waiting for the stuck one.
        assert_eq!(read(&mut fine_reader, 9), b"firstheld");
        // The stuck socket's peer reads again: what the flusher kept comes after what filled
        // it, nothing lost, nothing twice.
        let bytes = read(&mut stuck_reader, 5 + filled + 4);
        assert_eq!(&bytes[..5], b"first");
        assert!(bytes[5..5 + filled].iter().all(|&byte| byte == 1));
        assert_eq!(&bytes[5 + filled..], b"held");
        end();
        assert!(nothing_waiting(&stuck_reader) && nothing_waiting(&fine_reader), "nothing written twice");
    }

    #[test]
    fn a_sender_blocked_on_a_full_socket_holds_up_no_other_sockets_flush() {
        let (stuck, mut stuck_reader) = flushed_pair();
        let (fine, mut fine_reader) = flushed_pair();
        begin();
        stuck.send(&[b"first"]).unwrap();
        let filled = fill(&stuck);
        stuck.send(&[b"held"]).unwrap();
        // Another thread's send to the full socket blocks, holding its lock.
        let other = stuck.clone();
        let blocked = std::thread::spawn(move || other.send(&[b"other"]).unwrap());
        while stuck.state.try_lock().is_ok() {
            std::thread::yield_now();
        }
        fine.send(&[b"first"]).unwrap();
        fine.send(&[b"held"]).unwrap();
        // The flusher passes the locked socket by and writes the other.
        assert_eq!(read(&mut fine_reader, 9), b"firstheld");
        let bytes = read(&mut stuck_reader, 5 + filled + 9);
        assert_eq!((&bytes[..5], &bytes[5 + filled..]), (&b"first"[..], &b"heldother"[..]));
        blocked.join().unwrap();
        end();
        assert!(nothing_waiting(&stuck_reader) && nothing_waiting(&fine_reader), "nothing written twice");
    }

    #[test]
    fn a_socket_that_takes_nothing_for_its_write_timeout_is_shut_by_the_flusher_as_hung() {
        let (stuck, mut stuck_reader) = flushed_pair();
        lock(&stuck.state).stream.set_write_timeout(Some(Duration::from_millis(20))).unwrap();
        begin();
        stuck.send(&[b"first"]).unwrap();
        let filled = fill(&stuck);
        stuck.send(&[b"held"]).unwrap();
        // This thread "blocks"; the peer reads nothing until the socket is shut, then finds
        // what filled it, and the end.
        let mut bytes = Vec::new();
        while !lock(&stuck.state).broken {
            std::thread::yield_now();
        }
        stuck_reader.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len(), 5 + filled, "a partial or extra frame after the fill");
        assert!(stuck.send(&[b"after"]).is_err(), "a hung socket takes nothing more");
        end();
    }

    #[test]
    fn a_frame_the_flusher_wrote_in_part_is_finished_before_anything_after_it() {
        let (writer, mut reader) = flushed_pair();
        // A small socket buffer: the flusher's write of what is held goes out in part.
        nix::sys::socket::setsockopt(&lock(&writer.state).stream, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
        begin();
        writer.send(&[b"first"]).unwrap();
        let filled = fill(&writer);
        let frames: Vec<Vec<u8>> = (0..32u8).map(|frame| vec![frame + 2; 1000]).collect();
        for frame in &frames {
            writer.send(&[frame]).unwrap();
        }
        assert_eq!(read(&mut reader, 5 + filled).len(), 5 + filled);
        // This thread "blocks"; the flusher writes what the socket takes, and keeps the rest.
        loop {
            let held = lock(&writer.state).pending.len();
            assert!(held > 0, "the socket took all that was held: no partial write to check");
            if held < 32 * 1000 {
                break;
            }
            std::thread::yield_now();
        }
        // The run goes on: its next frame comes after the rest; another thread's large frame
        // after that.
        writer.send(&[b"tail"]).unwrap();
        let other = writer.clone();
        let large = std::thread::spawn(move || other.send(&[&vec![0xEE; DEFER_UP_TO + 1]]).unwrap());
        let bytes = read(&mut reader, 32 * 1000 + 4 + DEFER_UP_TO + 1);
        large.join().unwrap();
        assert_eq!(&bytes[..32 * 1000], &frames.concat()[..], "the held frames, whole and in order");
        assert_eq!(&bytes[32 * 1000..32 * 1000 + 4], b"tail");
        assert!(bytes[32 * 1000 + 4..].iter().all(|&byte| byte == 0xEE));
        end();
        assert!(nothing_waiting(&reader), "nothing written twice");
    }

    #[test]
    fn a_run_that_goes_on_after_the_flusher_wrote_its_sends_still_has_the_next_written() {
        let (writer, mut reader) = flushed_pair();
        begin();
        writer.send(&[b"first"]).unwrap();
        writer.send(&[b"held"]).unwrap();
        assert_eq!(read(&mut reader, 9), b"firstheld");
        // Still in the same run: the flusher, having written the buffer, may rest; a new
        // deferral must arm it again.
        writer.send(&[b"again"]).unwrap();
        assert_eq!(read(&mut reader, 5), b"again");
        end();
    }
}
