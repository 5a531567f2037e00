//! Who reads a page's socket: its read loop (a task of the server's runtime), or **main's
//! thread**, the thread its requests are for. While main runs in this process with an epoll
//! set (`main_drain`), the socket is in that set: main's runtime wakes for the page's bytes
//! itself, and a request reaches main's mailbox from main's own thread, which needs no wake
//! (the page's round trip makes no hop to another thread; the echo server's makes none either).
//!
//! - **One reader at a time**, under `stream`'s lock, and each message is handled (validated
//!   and routed, `renderer_socket::handle`) before the lock is let go: a page's messages are
//!   handled in arrival order, exactly once, whoever reads.
//! - **Claimed, main's thread reads** whenever its runtime sees the socket readable, without
//!   blocking, at most [`DRAIN_MESSAGES`] a drain (then main's dispatcher runs). Reads go to
//!   the socket directly, and one that finds it empty leaves no waker with tokio; the stream
//!   is in the server's driver for writing alone meanwhile (`registration`): nothing but
//!   main's epoll set is woken for the page's bytes.
//! - **The read loop is the reader of last resort**, as a renderer process's reader thread is
//!   (`inbound::read_side`): it rests while main's thread is parked (its runtime wakes for the
//!   socket itself) and, armed by that thread's runs, looks every [`WATCH_TICK`]: if the thread
//!   has been in one run for a whole tick without draining, with bytes waiting (author code
//!   blocking it), it reads for it, so the page's completions, logs, close and messages for
//!   other halves still arrive. Idle, nothing ticks; it is not woken by the page's bytes.
//! - **The connection ends on the read loop, always**: an end main's thread reads (the page's
//!   close, a violation, a lost connection) is kept in `end`, the socket given back, and the
//!   loop woken: its clean-up may wait for main, so it must never run on main's thread.
//! - **The socket leaves main's set before it closes** (`unclaim`, holding the stream): a
//!   socket kept open after (lingering) would otherwise go on waking main's thread.

use std::os::fd::BorrowedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use extension_api::abi::Peer;
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use tokio::time::Sleep;

use super::keepalive::Activity;
use super::renderer_socket::{Ended, PageConnection, handle};
use crate::core::lock;
use crate::endpoint::Endpoint;
use crate::inbound::main_drain::{self, Drained, MainDrain};
use crate::link::Link;
use crate::remote::recv::readable;

/// The most messages one drain of main's thread handles before it lets main's other tasks run
/// (its dispatcher among them), as for a renderer process's socket.
const DRAIN_MESSAGES: u32 = 64;
/// How long main's thread may sit in one run, with the page's bytes waiting, before the read
/// loop reads them for it (a renderer process's reader thread waits as long).
const WATCH_TICK: Duration = Duration::from_millis(2);
/// How many drains in a row may find the stream busy (its lock, or the halves' shared one,
/// held elsewhere) before main's thread gives the socket back to the read loop: a busy stream
/// is a moment's (another thread's poll of it), and a drain that finds it so comes back at once.
const BUSY_DRAINS: u32 = 1000;

/// A page's socket as read; see the module's description.
pub(crate) struct PageReader {
    /// Names the socket in main's epoll set.
    id: u64,
    /// The connection's activity, which knows its socket and has its reads go there directly.
    activity: Activity,
    /// One reader at a time; taken out when the connection ends. While it holds the stream,
    /// the socket is open.
    stream: Mutex<Option<SplitStream<WebSocket>>>,
    link: Arc<Link>,
    endpoint: Arc<Endpoint>,
    frame: Peer,
    connection: Arc<PageConnection>,
    /// Main's drain that reads the socket, `None` while only the read loop does.
    drainer: Mutex<Option<Arc<MainDrain>>>,
    /// Whether `drainer` is set, read without its lock.
    claimed: AtomicBool,
    /// Drains of main's thread that took `stream`'s lock.
    drains: AtomicU64,
    /// The last drain stopped at [`DRAIN_MESSAGES`]: messages may wait in the stream's buffer
    /// with none on the socket.
    leftover: AtomicBool,
    /// Drains in a row that found the stream busy (see [`BUSY_DRAINS`]).
    busy: AtomicU32,
    /// How the connection ended, if main's thread read its end.
    end: Mutex<Option<Ended>>,
    /// A reader read the connection's end (set under `stream`'s lock): nothing past it is read.
    over: AtomicBool,
    /// A read while claimed stopped at the halves' shared lock, held elsewhere, or the socket
    /// was just claimed: messages may wait in the stream's buffer with no event to bring main's
    /// thread for them, so the read loop's next turn reads.
    unsure: AtomicBool,
    /// The read loop's waker: woken when main's thread read the end, or gave the socket back.
    task: Mutex<Option<Waker>>,
}

/// The read loop's part in reading: its tick while main's thread reads.
#[derive(Default)]
pub(crate) struct Turn {
    /// The tick under way: its timer, and main's run and this socket's drains as it began.
    tick: Option<(Pin<Box<Sleep>>, u64, u64)>,
}

/// What [`PageReader::new`] is made of.
pub(crate) struct PageReading {
    pub(crate) activity: Activity,
    pub(crate) stream: SplitStream<WebSocket>,
    pub(crate) link: Arc<Link>,
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) frame: Peer,
    pub(crate) connection: Arc<PageConnection>,
}

impl PageReader {
    pub(crate) fn new(reading: PageReading) -> Arc<PageReader> {
        let PageReading { activity, stream, link, endpoint, frame, connection } = reading;
        Arc::new(PageReader {
            id: main_drain::socket_id(),
            activity,
            stream: Mutex::new(Some(stream)),
            link,
            endpoint,
            frame,
            connection,
            drainer: Mutex::new(None),
            claimed: AtomicBool::new(false),
            drains: AtomicU64::new(0),
            leftover: AtomicBool::new(false),
            busy: AtomicU32::new(0),
            end: Mutex::new(None),
            over: AtomicBool::new(false),
            unsure: AtomicBool::new(false),
            task: Mutex::new(None),
        })
    }

    /// Gives the socket to the thread of the extension's main, if it runs in this process with
    /// an epoll set; called by the read loop, whose first turn reads what the stream already
    /// holds (bytes that came with the HELLO: no event would tell main's thread of them).
    pub(crate) fn claim_for_main(self: &Arc<Self>) {
        self.unsure.store(true, Ordering::SeqCst);
        let Some(main) = self.link.endpoint_of(extension_api::abi::PEER_MAIN) else { return };
        let Some(drain) = main_drain::of(main.key) else { return };
        let stream = lock(&self.stream);
        let Some(fd) = self.activity.socket() else { return };
        if stream.is_none() {
            return;
        }
        // Before the socket is in the set: main's first drain, which may come at once, reads,
        // and reads the socket itself.
        *lock(&self.drainer) = Some(drain.clone());
        self.claimed.store(true, Ordering::SeqCst);
        self.activity.read_directly(true);
        let reader: Weak<dyn Drained> = Arc::downgrade(self) as Weak<PageReader>;
        // SAFETY: the socket is open: `stream`, whose lock this holds, holds it.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        if !drain.add_socket(socket, self.id, reader) {
            lock(&self.drainer).take();
            self.claimed.store(false, Ordering::SeqCst);
            self.activity.read_directly(false);
            return;
        }
        drop(stream);
        // Main's thread may be inside a run begun before the claim: the read loop looks.
        drain.runs().arm();
    }

    /// The read loop reads the socket alone again (the connection ends, or main's instance is
    /// gone), and is woken to.
    fn unclaim(&self) {
        let stream = lock(&self.stream);
        let old = lock(&self.drainer).take();
        self.claimed.store(false, Ordering::SeqCst);
        if let (Some(old), Some(fd), Some(_)) = (&old, self.activity.socket(), stream.as_ref()) {
            // SAFETY: the socket is open: `stream`, whose lock this holds, holds it.
            old.remove_socket(unsafe { BorrowedFd::borrow_raw(fd) }, self.id);
        }
        self.activity.read_directly(false);
        drop(stream);
        if let Some(old) = old {
            old.runs().wake_watchers();
        }
        self.wake_task();
    }

    /// The connection's end: out of main's set, and the stream back to the read loop (for the
    /// page's close reply), with the end main's thread read, if the loop ended for another
    /// reason before it took it.
    pub(crate) fn finish(&self) -> (Option<SplitStream<WebSocket>>, Option<Ended>) {
        self.unclaim();
        let stream = lock(&self.stream).take();
        (stream, lock(&self.end).take())
    }

    fn register(&self, waker: &Waker) {
        let mut task = lock(&self.task);
        if !task.as_ref().is_some_and(|task| task.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }

    fn wake_task(&self) {
        if let Some(task) = lock(&self.task).as_ref() {
            task.wake_by_ref();
        }
    }

    /// Reads and handles up to `limit` messages with `cx`'s waker: how the connection ended;
    /// `Ready(None)` at the limit.
    fn read_for(&self, cx: &mut Context<'_>, limit: u32) -> Poll<Option<Ended>> {
        let mut stream = lock(&self.stream);
        if let Some(ended) = lock(&self.end).take() {
            return Poll::Ready(Some(ended));
        }
        let Some(socket) = stream.as_mut() else {
            return Poll::Ready(Some(Ended::Dropped("the connection's socket is gone".to_owned())));
        };
        if self.over.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        for _ in 0..limit {
            self.activity.clear_found_empty();
            match socket.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(next) => {
                    if let Some(ended) = self.handle(next) {
                        // Nothing past the end is read, by main's thread either.
                        self.over.store(true, Ordering::SeqCst);
                        return Poll::Ready(Some(ended));
                    }
                }
            }
        }
        Poll::Ready(None)
    }

    /// Handles one read, a panic included: whatever failed, the connection must still end.
    fn handle(&self, next: Option<Result<WsMessage, axum::Error>>) -> Option<Ended> {
        catch_unwind(AssertUnwindSafe(|| handle(&self.link, &self.endpoint, self.frame, next))).unwrap_or_else(|_| {
            Some(Ended::Dropped("the host failed while handling a message from the page".to_owned()))
        })
    }

    /// The read loop's turn: `Ready(Some)` once the connection ended (main's thread may have
    /// read its end), `Ready(None)` after some messages. Unclaimed, it reads a message; claimed,
    /// it reads only for a main's thread stuck in one run (see the module's description).
    pub(crate) fn poll_turn(&self, cx: &mut Context<'_>, turn: &mut Turn) -> Poll<Option<Ended>> {
        self.register(cx.waker());
        if let Some(ended) = lock(&self.end).take() {
            return Poll::Ready(Some(ended));
        }
        let drain = match lock(&self.drainer).clone() {
            Some(drain) => drain,
            None => {
                turn.tick = None;
                return self.read_for(cx, 1);
            }
        };
        if self.unsure.swap(false, Ordering::SeqCst) {
            // What the stream may hold with no event to say so (see `unsure`): read with this
            // task's waker, which the halves' shared lock, if held, wakes when let go.
            match self.read_for(cx, DRAIN_MESSAGES) {
                Poll::Ready(Some(ended)) => return Poll::Ready(Some(ended)),
                // More may wait in the stream's buffer, which no event brings main's thread
                // for: the next turn reads on, until the socket is found empty.
                Poll::Ready(None) => {
                    self.unsure.store(true, Ordering::SeqCst);
                    cx.waker().wake_by_ref();
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if !self.activity.found_empty() {
                        self.unsure.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
        let runs = drain.runs();
        loop {
            let Some((tick, run, drains)) = &mut turn.tick else {
                if !runs.armed_or_wake(cx.waker()) {
                    return Poll::Pending;
                }
                // A timer, not a synchronisation: the bound on how long the read loop leaves
                // bytes to a thread that does not come for them.
                turn.tick = Some((Box::pin(tokio::time::sleep(WATCH_TICK)), runs.current(), self.drains()));
                continue;
            };
            if tick.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let (run, drains) = (*run, *drains);
            turn.tick = None;
            let (stuck, rested) = runs.after_tick(run);
            if stuck && self.drains() == drains && self.bytes_waiting() {
                // Read directly (claimed): an empty socket leaves no waker; the next tick looks.
                let mut noop = Context::from_waker(Waker::noop());
                match self.read_for(&mut noop, DRAIN_MESSAGES) {
                    Poll::Ready(Some(ended)) => return Poll::Ready(Some(ended)),
                    Poll::Ready(None) => {
                        // More may wait: the next turn reads on for the same stuck run.
                        self.leftover.store(true, Ordering::SeqCst);
                        turn.tick = Some((Box::pin(tokio::time::sleep(Duration::ZERO)), run, drains));
                        return Poll::Ready(None);
                    }
                    Poll::Pending => {
                        self.leftover.store(false, Ordering::SeqCst);
                        if !self.activity.found_empty() {
                            // The halves' shared lock was held: the next turn reads again.
                            self.unsure.store(true, Ordering::SeqCst);
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                }
            } else if rested {
                runs.rest(run);
            }
        }
    }

    fn drains(&self) -> u64 {
        self.drains.load(Ordering::SeqCst)
    }

    /// Whether messages wait: in the stream's buffer (a drain stopped at its limit) or on the
    /// socket.
    fn bytes_waiting(&self) -> bool {
        if self.leftover.load(Ordering::SeqCst) {
            return true;
        }
        let stream = lock(&self.stream);
        match (stream.as_ref(), self.activity.socket()) {
            // SAFETY: the socket is open: `stream`, whose lock this holds, holds it.
            (Some(_), Some(fd)) => readable(unsafe { BorrowedFd::borrow_raw(fd) }, 0),
            _ => false,
        }
    }
}

impl PageReader {
    /// A drain found the stream busy: it comes back (false), unless it has found it so
    /// [`BUSY_DRAINS`] times in a row; then the read loop reads the socket alone.
    fn busy(&self) -> bool {
        if self.busy.fetch_add(1, Ordering::Relaxed) + 1 < BUSY_DRAINS {
            return false;
        }
        tracing::debug!("a page's socket stayed busy for main's thread: its read loop reads it from now on");
        self.unclaim();
        true
    }
}

impl Drop for PageReader {
    /// Out of main's set however the read loop ended (unwound, or dropped unfinished): the
    /// socket may stay open after (lingering, or its writing half still held).
    fn drop(&mut self) {
        self.unclaim();
    }
}

impl Drained for PageReader {
    /// Main's thread reads what the page sent, without blocking; false if it stopped at
    /// [`DRAIN_MESSAGES`], or the stream was busy (the read loop reading for a stuck run, or
    /// the socket's writing half, which shares its lock, being polled): it comes back.
    fn drain(&self) -> bool {
        if !self.claimed.load(Ordering::SeqCst) {
            return true;
        }
        let mut stream = match self.stream.try_lock() {
            Ok(stream) => stream,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return self.busy(),
        };
        // Checked again holding the stream: `finish` unclaims, then takes the stream.
        if !self.claimed.load(Ordering::SeqCst) {
            return true;
        }
        let Some(socket) = stream.as_mut() else { return true };
        if lock(&self.end).is_some() || self.over.load(Ordering::SeqCst) {
            return true;
        }
        self.drains.fetch_add(1, Ordering::SeqCst);
        let mut context = Context::from_waker(Waker::noop());
        for _ in 0..DRAIN_MESSAGES {
            self.activity.clear_found_empty();
            match socket.poll_next_unpin(&mut context) {
                Poll::Pending => {
                    if self.activity.found_empty() {
                        self.leftover.store(false, Ordering::SeqCst);
                        self.busy.store(0, Ordering::Relaxed);
                        return true;
                    }
                    // The halves' shared lock was held: the bytes still wait, and no event
                    // will say so. Main's thread comes back for them (`MORE`); should author
                    // code keep it from coming, the read loop reads them at its next tick.
                    self.unsure.store(true, Ordering::SeqCst);
                    drop(stream);
                    return self.busy();
                }
                Poll::Ready(next) => {
                    self.connection.count_main_read();
                    if let Some(ended) = self.handle(next) {
                        self.over.store(true, Ordering::SeqCst);
                        *lock(&self.end) = Some(ended);
                        drop(stream);
                        self.unclaim();
                        return true;
                    }
                }
            }
        }
        self.leftover.store(true, Ordering::SeqCst);
        self.busy.store(0, Ordering::Relaxed);
        false
    }

    fn give_back(&self) {
        self.unclaim();
    }
}
