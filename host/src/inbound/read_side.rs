//! A child connection's reading side, shared by its reader thread and, while every packet of
//! the connection goes to one main of this process, that main's thread (`main_drain`).
//!
//! **One reader at a time**, under `framing`'s lock, and each frame is handled (validated and
//! routed by `ChildReader::receive`) before the lock is let go: frames are handled in arrival
//! order, exactly once, whoever reads. Unclaimed, the reader thread reads blocking, as it always
//! did. Claimed, main's thread reads whenever its runtime sees the socket readable (through
//! main's epoll set), without blocking, and stops after a short read; the reader thread is the
//! **reader of last resort**: it rests while main's thread is parked (its runtime wakes for the
//! socket itself) and, armed by that thread's runs, looks every [`WATCH_TICK`]: if the thread
//! has been in one run for a whole tick without draining this socket, with bytes waiting (author
//! code blocking it), it reads for it, so the watchdog's inspect answers, the child's logs and
//! its end still arrive. Idle, nothing ticks.
//!
//! **The connection ends on the reader thread, always**: an end a drain sees (the end of the
//! stream, a read error, a protocol violation) is kept here with its reason, the socket given
//! back, and the reader thread returns that reason, as it returns the ones it sees itself. Its
//! caller's clean-up (failing requests, losing frames, the crash budget) may wait for main, so
//! it must never run on main's thread.
//!
//! The child's end has the same shape for its instance's thread (`remote/child.rs`'s `Inbound`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::core::lock;
use crate::remote::lending;
use crate::remote::protocol::{Frame, Framing};
use crate::remote::recv::{Recv, readable};

use super::child_reader::ChildReader;
use super::main_drain::MainDrain;

/// How long main's thread may sit in one run, with the socket readable, before the reader
/// thread reads for it (the child's is the same).
const WATCH_TICK: Duration = Duration::from_millis(2);

/// The most frames one drain of one socket handles before it lets main's other tasks run (its
/// dispatcher among them: the mailbox is filled and emptied on one thread).
const DRAIN_FRAMES: u32 = 64;

/// Handles one frame: the connection's validation and routing; an error ends the connection.
type Receive<'a> = &'a dyn Fn(&[u8]) -> Result<(), String>;

/// One connection's socket, as read; see the module's description.
pub(crate) struct ReadSide {
    /// Kept open while the side lives; taken out of any epoll set before it closes (`Drop`).
    stream: UnixStream,
    /// Names the socket in main's epoll set.
    id: u64,
    /// One reader at a time; what it read past the last frame it handled stays here.
    framing: Mutex<Framing>,
    /// Main's drain that reads it, `None` while only the reader thread does. Changed under
    /// this lock (before a drain's own locks: see `claim`).
    drainer: Mutex<Option<Arc<MainDrain>>>,
    /// Whether `drainer` is set, read without its lock.
    claimed: AtomicBool,
    /// Drains that took `framing`'s lock.
    drains: AtomicU64,
    /// The last drain stopped at [`DRAIN_FRAMES`] with bytes left in `framing`.
    leftover: AtomicBool,
    /// How the connection ended, recorded under `framing`'s lock by the reader that saw it (the
    /// first): no reader handles a frame after it, and the reader thread returns it.
    ended: Mutex<Option<String>>,
}

/// Handles a frame, a panic included: whatever failed, the connection must still be cleaned up.
fn handle(receive: Receive<'_>, bytes: &[u8]) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| receive(bytes))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(violation)) => Err(format!("protocol violation: {violation}")),
        Err(_) => Err("the host failed while handling a packet from the child".to_owned()),
    }
}

impl ReadSide {
    /// The reading side of `stream`, with what `framing` already holds of it (the handshake's
    /// leftovers); read by the reader thread until a main claims it.
    pub(crate) fn new(stream: UnixStream, framing: Framing) -> ReadSide {
        ReadSide {
            stream,
            id: super::main_drain::socket_id(),
            framing: Mutex::new(framing),
            drainer: Mutex::new(None),
            claimed: AtomicBool::new(false),
            drains: AtomicU64::new(0),
            leftover: AtomicBool::new(false),
            ended: Mutex::new(None),
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    fn is_claimed(&self) -> bool {
        self.claimed.load(Ordering::SeqCst)
    }

    fn drainer(&self) -> Option<Arc<MainDrain>> {
        lock(&self.drainer).clone()
    }

    /// Whether main's thread of `drain` reads this socket (rather than the reader thread alone).
    pub(crate) fn is_claimed_by(&self, drain: &MainDrain) -> bool {
        lock(&self.drainer).as_deref().is_some_and(|drainer| std::ptr::eq(drainer, drain))
    }

    /// Gives the socket to `drain`'s thread (`reader` is this side's reader, for its drains),
    /// taking it from any other; nothing if that drain already has it or is being released.
    pub(crate) fn claim(&self, drain: &Arc<MainDrain>, reader: Weak<ChildReader>) {
        if self.ended.lock().unwrap_or_else(PoisonError::into_inner).is_some() {
            return;
        }
        let mut drainer = lock(&self.drainer);
        if drainer.as_ref().is_some_and(|drainer| Arc::ptr_eq(drainer, drain)) {
            return;
        }
        let old = drainer.take();
        if let Some(old) = &old {
            self.let_go(old);
        }
        let claimed = drain.add(self, reader);
        if claimed {
            *drainer = Some(drain.clone());
            self.claimed.store(true, Ordering::SeqCst);
        }
        // The runs' lock only with `drainer`'s let go: a resting reader thread holds the runs'
        // lock while it asks `is_claimed_by`, which takes `drainer`'s.
        drop(drainer);
        if let Some(old) = old {
            old.runs().wake_watchers();
        }
        if claimed {
            // Main's thread may be inside a run begun before the claim (author code blocking
            // it): the reader looks at least once.
            drain.runs().arm();
        }
    }

    /// Gives the socket back to the reader thread alone.
    pub(crate) fn unclaim(&self) {
        let mut drainer = lock(&self.drainer);
        let old = drainer.take();
        if let Some(old) = &old {
            self.let_go(old);
        }
        // Not under `drainer`'s lock (see `claim`).
        drop(drainer);
        if let Some(old) = old {
            old.runs().wake_watchers();
        }
    }

    /// Takes this socket out of `old`'s set (before `drainer` is cleared, under its lock); the
    /// caller then wakes the reader thread, which may be resting on `old`'s runs, once it let
    /// `drainer` go.
    fn let_go(&self, old: &MainDrain) {
        old.remove(self);
        self.claimed.store(false, Ordering::SeqCst);
    }

    /// How the connection ended, if a reader saw it end. Kept: nothing is read or claimed after.
    fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A drain saw the connection end: the reader thread ends it (see the module's description).
    fn end(&self, reason: String) {
        self.ended.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(reason);
        self.unclaim();
    }

    /// Reads and handles frames until the socket has none for now (`Ok(true)`), or `go_on`
    /// says stop before the next (`Ok(false)`); `wait` says whether the next read may block.
    /// `Err` is why the connection ended.
    fn read_frames(
        &self,
        framing: &mut Framing,
        receive: Receive<'_>,
        wait: impl Fn() -> bool,
        mut go_on: impl FnMut() -> bool,
    ) -> Result<bool, String> {
        // The end is recorded under `framing`'s lock, by whoever saw it: a reader that took the
        // lock after (main's thread, or the reader thread, which had found bytes waiting)
        // handles nothing past it.
        if let Some(reason) = self.ended() {
            return Err(reason);
        }
        let mut recv = Recv::new(self.stream.as_fd());
        let read = loop {
            if !go_on() {
                break Ok(false);
            }
            recv.wait = wait();
            match framing.read_frame(&mut recv) {
                // Decoded borrowing from the frame: a message is routed straight from the read
                // buffer (and copied by whoever keeps it; a large frame is lent to a library
                // instead).
                Ok(Some(frame)) => {
                    let handled = match frame {
                        Frame::Borrowed(bytes) => handle(receive, bytes),
                        Frame::Owned(frame) => lending::lend(frame, |bytes| handle(receive, bytes)),
                    };
                    if let Err(reason) = handled {
                        break Err(reason);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break Ok(true),
                Ok(None) => break Err("the connection closed".to_owned()),
                Err(error) => break Err(format!("unreadable frame: {error}")),
            }
        };
        read.map_err(|reason| self.ended.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(reason).clone())
    }

    /// The reader thread: reads while no main's thread does, watches while one does; returns
    /// why the connection ended, having given the socket back.
    pub(crate) fn read_loop(&self, receive: Receive<'_>) -> String {
        let reason = self.read_until_ended(receive);
        self.unclaim();
        reason
    }

    fn read_until_ended(&self, receive: Receive<'_>) -> String {
        loop {
            if let Some(reason) = self.ended() {
                return reason;
            }
            let result = match self.drainer() {
                None => {
                    let mut framing = lock(&self.framing);
                    // Blocking while nobody else reads; once claimed, what is there is read
                    // without blocking, and the rest left to main's thread.
                    let read = self.read_frames(&mut framing, receive, || !self.is_claimed(), || true);
                    let drains = self.drains.load(Ordering::SeqCst);
                    drop(framing);
                    read.and_then(|_| self.unlocked(drains, receive))
                }
                Some(drain) => self.watch(&drain, receive),
            };
            if let Err(reason) = result {
                return reason;
            }
        }
    }

    /// The reader thread let the socket go while main's thread reads it (`drains`: that
    /// thread's drains when it let go). A drain that found the lock taken meanwhile waits for
    /// the next event; if bytes came after this thread's last read and no drain took them,
    /// nothing would tell main's thread: read them here.
    fn unlocked(&self, mut drains: u64, receive: Receive<'_>) -> Result<(), String> {
        while self.is_claimed() && readable(self.stream.as_fd(), 0) && self.drains.load(Ordering::SeqCst) == drains {
            let mut framing = lock(&self.framing);
            self.read_frames(&mut framing, receive, || false, || true)?;
            drains = self.drains.load(Ordering::SeqCst);
        }
        Ok(())
    }

    /// The reader of last resort: rests until main's thread runs; then, every tick, reads for
    /// it if it has been in one run for the whole tick without draining, with bytes waiting.
    fn watch(&self, drain: &MainDrain, receive: Receive<'_>) -> Result<(), String> {
        let runs = drain.runs();
        if !runs.wait_armed(|| self.is_claimed_by(drain)) {
            return Ok(());
        }
        let (run, drains) = (runs.current(), self.drains.load(Ordering::SeqCst));
        // A timer, not a synchronisation: the bound on how long the reader leaves bytes to a
        // thread that does not come for them.
        std::thread::sleep(WATCH_TICK);
        let (stuck, rested) = runs.after_tick(run);
        if stuck && self.drains.load(Ordering::SeqCst) == drains {
            if self.leftover.load(Ordering::SeqCst) || readable(self.stream.as_fd(), 0) {
                let mut framing = lock(&self.framing);
                let read = self.read_frames(&mut framing, receive, || false, || true);
                self.leftover.store(false, Ordering::SeqCst);
                let drains = self.drains.load(Ordering::SeqCst);
                drop(framing);
                read?;
                self.unlocked(drains, receive)?;
            }
        } else if rested {
            runs.rest(run);
        }
        Ok(())
    }

    /// Main's thread reads what the socket has, without blocking; false if it stopped
    /// at [`DRAIN_FRAMES`] with more to read (it comes back without waiting for an event).
    pub(crate) fn drain(&self, receive: Receive<'_>) -> bool {
        if !self.is_claimed() {
            return true;
        }
        let mut framing = match self.framing.try_lock() {
            Ok(framing) => framing,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // The reader thread reads (for a stuck run, or handing over after the claim): what
            // comes after it let go is a new event, or read by it.
            Err(std::sync::TryLockError::WouldBlock) => return true,
        };
        self.drains.fetch_add(1, Ordering::SeqCst);
        let mut frames = 0;
        let read = self.read_frames(
            &mut framing,
            receive,
            || false,
            || {
                frames += 1;
                frames <= DRAIN_FRAMES && self.is_claimed()
            },
        );
        match read {
            Ok(all) => {
                self.leftover.store(!all && framing.holds_bytes(), Ordering::SeqCst);
                // Given back meanwhile (a second extension's half joined): the reader thread
                // finds what this left in `framing`.
                all || !self.is_claimed()
            }
            Err(reason) => {
                drop(framing);
                self.end(reason);
                true
            }
        }
    }
}

impl Drop for ReadSide {
    fn drop(&mut self) {
        // Out of main's epoll set before the socket closes: an epoll set holds the open file,
        // not the descriptor's number, and the writer's duplicate keeps the file open.
        self.unclaim();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::inbound::main_drain;

    /// Bounds a wait that, with the defect, would never end; never reached when it holds.
    const FAILSAFE: Duration = Duration::from_secs(10);

    /// A socket (and the child's end of it) claimed by a new epoll set of instance `key`.
    fn claimed_side(key: u64) -> (Arc<ReadSide>, Arc<MainDrain>, UnixStream) {
        let (ours, child) = UnixStream::pair().unwrap();
        let side = Arc::new(ReadSide::new(ours, Framing::default()));
        assert!(main_drain::inbound_fd(key) >= 0);
        let drain = main_drain::of(key).unwrap();
        // The runtime drains at once, having watched the set (`HostConnection::watch`).
        assert_eq!(main_drain::drain(key), extension_api::abi::drain::IDLE);
        side.claim(&drain, Weak::new());
        assert!(side.is_claimed_by(&drain));
        (side, drain, child)
    }

    #[test]
    fn a_give_back_never_waits_for_the_runs_lock_holding_the_drainer_lock() {
        let key = u64::MAX - 1;
        let (side, drain, _child) = claimed_side(key);
        // The reader thread resting on main's runs holds their lock and asks `is_claimed_by`.
        let resting = drain.runs().hold();
        let giving_back = std::thread::spawn({
            let side = side.clone();
            move || side.unclaim()
        });
        // The give-back is under way (it took `drainer`'s lock and let the socket go)...
        while side.is_claimed() {
            std::thread::yield_now();
        }
        // ...and the resting reader can still ask whether it is claimed.
        let (asked, answer) = mpsc::channel();
        std::thread::spawn({
            let (side, drain) = (side.clone(), drain.clone());
            move || asked.send(side.is_claimed_by(&drain))
        });
        let answer = answer.recv_timeout(FAILSAFE);
        drop(resting);
        giving_back.join().unwrap();
        assert_eq!(
            answer,
            Ok(false),
            "the give-back waited for the runs' lock holding `drainer`'s: a resting reader deadlocks"
        );
        main_drain::release(key, true);
    }

    /// The child's end of the socket sends `frames`, each behind its length.
    fn send_frames(child: &mut UnixStream, frames: &[&[u8]]) {
        use std::io::Write;
        for frame in frames {
            child.write_all(&u32::try_from(frame.len()).unwrap().to_be_bytes()).unwrap();
            child.write_all(frame).unwrap();
        }
    }

    /// Handles frames as `ChildReader::receive` would: `bad` is a violation, the others are
    /// kept in `got`.
    fn receiver(got: &Mutex<Vec<Vec<u8>>>) -> impl Fn(&[u8]) -> Result<(), String> + '_ {
        move |bytes| {
            if bytes == b"bad" {
                return Err("a bad frame".to_owned());
            }
            lock(got).push(bytes.to_vec());
            Ok(())
        }
    }

    #[test]
    fn a_socket_read_without_asking_the_set_still_makes_the_set_readable_for_what_comes_next() {
        // With one socket, main's drain reads it directly and never takes the set's event
        // (`MainDrain::drain`). Its runtime watches the set: the next frame must still make the
        // set readable, and a socket read empty must not leave the set readable (a wake-up
        // for nothing).
        use std::os::fd::AsFd;
        let key = u64::MAX - 6;
        let (side, drain, mut child) = claimed_side(key);
        let set = || drain.epoll.0.as_fd();
        let got = Mutex::new(Vec::new());
        let receive = receiver(&got);
        for round in 0..3u8 {
            send_frames(&mut child, &[&[round]]);
            assert!(readable(set(), FAILSAFE.as_millis() as i32), "round {round}: the set missed a frame");
            assert!(side.drain(&receive));
            assert!(!readable(set(), 0), "round {round}: the set stays readable for a socket read empty");
        }
        assert_eq!(*lock(&got), [vec![0], vec![1], vec![2]]);
        main_drain::release(key, true);
    }

    #[test]
    fn a_socket_read_without_asking_the_set_wakes_a_waiter_on_the_set_for_each_frame_after() {
        // As main's runtime watches the set: tokio's epoll, edge-triggered, holding the set.
        // Main's drain reads the one socket directly, so the set's event for it is never
        // taken and stays queued in the set; between rounds nothing looks at the set but the
        // outer epoll's wait. A frame arriving with that stale event queued must still wake the
        // waiter (else main sleeps on bytes no one reads), and a drained socket must not.
        use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
        use std::os::fd::AsFd;
        let key = u64::MAX - 7;
        let (side, drain, mut child) = claimed_side(key);
        let outer = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        outer.add(drain.epoll.0.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 1)).unwrap();
        let failsafe = EpollTimeout::try_from(FAILSAFE).unwrap();
        let wait = |timeout: EpollTimeout| outer.wait(&mut [EpollEvent::empty(); 1], timeout).unwrap();
        let got = Mutex::new(Vec::new());
        let receive = receiver(&got);
        for round in 0..3u8 {
            send_frames(&mut child, &[&[round]]);
            assert_eq!(wait(failsafe), 1, "round {round}: the waiter on the set slept through a frame");
            assert!(side.drain(&receive));
            assert_eq!(wait(EpollTimeout::ZERO), 0, "round {round}: woken for a socket read empty");
        }
        assert_eq!(*lock(&got), [vec![0], vec![1], vec![2]]);
        main_drain::release(key, true);
    }

    #[test]
    fn no_reader_handles_a_frame_past_the_end_another_reader_saw() {
        // The reader of last resort reads for a stuck run and meets a violation; main's thread
        // drains before the reader thread gave the socket back.
        let key = u64::MAX - 2;
        let (side, _drain, mut child) = claimed_side(key);
        send_frames(&mut child, &[b"one", b"bad", b"two"]);
        let got = Mutex::new(Vec::new());
        let receive = receiver(&got);
        let read = side.read_frames(&mut lock(&side.framing), &receive, || false, || true);
        assert_eq!(read, Err("protocol violation: a bad frame".to_owned()));
        side.drain(&receive);
        assert_eq!(*lock(&got), [b"one".to_vec()], "a frame after the violation was handled");
        assert_eq!(side.read_loop(&receive), "protocol violation: a bad frame");
        main_drain::release(key, true);

        // Main's thread meets it; the reader thread, which found bytes waiting, reads next.
        let key = u64::MAX - 3;
        let (side, _drain, mut child) = claimed_side(key);
        send_frames(&mut child, &[b"one", b"bad", b"two"]);
        let got = Mutex::new(Vec::new());
        let receive = receiver(&got);
        assert!(side.drain(&receive));
        let read = side.read_frames(&mut lock(&side.framing), &receive, || false, || true);
        assert_eq!(read, Err("protocol violation: a bad frame".to_owned()));
        assert_eq!(*lock(&got), [b"one".to_vec()], "a frame after the violation was handled");
        assert_eq!(side.read_loop(&receive), "protocol violation: a bad frame");
        main_drain::release(key, true);
    }

    #[test]
    fn a_thread_blocked_before_its_first_park_has_its_socket_read_by_the_reader_thread() {
        // The set is made on the instance's thread as its runtime starts (`inbound_fd`), before
        // it ever parked: author code may block it there (a slow `activate`), in no run begun
        // by `batch_begin`. This test's thread is that thread: it never drains.
        let key = u64::MAX - 4;
        let (side, _drain, mut child) = claimed_side(key);
        let (got, frames) = mpsc::channel();
        let reader = std::thread::spawn({
            let side = side.clone();
            move || {
                side.read_loop(&|bytes| {
                    let _ = got.send(bytes.to_vec());
                    Ok(())
                })
            }
        });
        send_frames(&mut child, &[b"inspect answer"]);
        let frame = frames.recv_timeout(FAILSAFE);
        drop(child);
        let frame =
            frame.map_err(|_| "the reader of last resort never read for a thread blocked before its first park");
        assert_eq!(frame, Ok(b"inspect answer".to_vec()));
        assert_eq!(reader.join().unwrap(), "the connection closed");
        main_drain::release(key, true);
    }

    #[test]
    fn a_set_its_thread_never_drained_claims_nothing() {
        // A runtime that could not watch the set (its `AsyncFd` refused: the epoll watches'
        // limit, say) never drains it: a socket claimed for it would sit unread while that
        // thread is parked. Its thread here: a run that ends (it parks), no drain.
        let key = u64::MAX - 5;
        let (ours, mut child) = UnixStream::pair().unwrap();
        let side = Arc::new(ReadSide::new(ours, Framing::default()));
        assert!(main_drain::inbound_fd(key) >= 0);
        main_drain::run_ends();
        let drain = main_drain::of(key).unwrap();
        side.claim(&drain, Weak::new());
        let (got, frames) = mpsc::channel();
        let reader = std::thread::spawn({
            let side = side.clone();
            move || {
                side.read_loop(&|bytes| {
                    let _ = got.send(bytes.to_vec());
                    Ok(())
                })
            }
        });
        send_frames(&mut child, &[b"hello"]);
        let frame = frames.recv_timeout(FAILSAFE);
        drop(child);
        let frame = frame.map_err(|_| "claimed by a set nobody drains: the frame was never read");
        assert_eq!(frame, Ok(b"hello".to_vec()));
        assert_eq!(reader.join().unwrap(), "the connection closed");
        main_drain::release(key, true);
    }
}
