//! Main's thread as the reader of the child connections whose packets all go to it (issue 14's
//! second half: the host validates on main's thread). A renderer process serving one extension
//! sends to that extension's main only; main's runtime then reads the socket itself, so a
//! request reaches main's mailbox from main's own thread, which needs no wake.
//!
//! `HostVTable::inbound_fd` is asked once, when an instance's runtime starts, before any
//! renderer process exists, and a main may come to have several connections and lose them: so
//! the descriptor it gets stands for a changing set, an **epoll set per instance** of this
//! process ([`MainDrain`]), which its runtime watches (tokio's epoll, edge-triggered: nested
//! epoll). The sockets in it are edge-triggered too: a level-triggered inner set signals the
//! outer again after every `epoll_wait` that reports one, a wake-up for a drain that finds
//! nothing. Edge-triggered, an event is consumed when reported, so a drain reads each reported
//! socket until a short read (or comes back for it: `MORE`); what arrives after is a new event.
//!
//! Who claims a connection and gives it back is the connection's reader's business
//! (`ChildReader::settle`); how a claimed socket is read, and how its reader thread stays the
//! reader of last resort, is `read_side`'s. Here: the set, the registry of sets by key, and the
//! runs of main's thread that arm the readers of last resort.
//!
//! **Who owns the epoll descriptor, and when it closes.** A [`MainDrain`] closes its epoll
//! descriptor when the last `Arc` of it drops. Its holders: the registry (until
//! [`release`]), main's thread (a thread-local, dropped when that thread ends) and the
//! connections that claim it (each gives it back on [`release`], or when it ends). The
//! instance's runtime registers the descriptor with its I/O driver (`AsyncFd`) and deregisters
//! it when that runtime shuts down, which `destroy` waits for: `release` is called only after
//! `destroy` said the thread finished (`LibraryInstance`), so the descriptor is never closed
//! while that driver may still hold it (a closed number could be reused, and a stale
//! registration would then name another file). An instance whose thread was abandoned (still
//! blocked after its destroy's wait) keeps its set open for the life of the process.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::task::Waker;

use extension_api::abi;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::core::lock;

use super::child_reader::ChildReader;
use super::read_side::ReadSide;

/// How many events one drain takes from the set (more are taken by a drain that follows at
/// once: `MORE`).
const EVENTS: usize = 16;

/// The runs of one instance's thread (from a wake-up to its next park: `batch_begin`,
/// `batch_end`), which the readers of last resort of its claimed sockets watch.
pub(crate) struct Runs {
    runs: AtomicU64,
    in_run: AtomicBool,
    /// The readers of last resort look every tick (a run began since they last rested).
    armed: AtomicBool,
    wake: Mutex<()>,
    armed_now: Condvar,
    /// The readers of last resort that are tasks, not threads (a web page's read loop): woken
    /// as `armed_now`'s waiters are, each once (they register again to rest again).
    tasks: Mutex<Vec<Waker>>,
}

impl Runs {
    /// Made on the instance's thread as its runtime starts (`inbound_fd`), before its first
    /// park: that stretch is a run too, though no `batch_begin` began it (author code may block
    /// it there, a slow `activate`); its first park ends it.
    fn new() -> Runs {
        Runs {
            runs: AtomicU64::new(0),
            in_run: AtomicBool::new(true),
            armed: AtomicBool::new(false),
            wake: Mutex::new(()),
            armed_now: Condvar::new(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// A run of the thread begins.
    fn begins(&self) {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.in_run.store(true, Ordering::SeqCst);
        if !self.armed.load(Ordering::SeqCst) {
            self.arm();
        }
    }

    fn ends(&self) {
        self.in_run.store(false, Ordering::SeqCst);
    }

    /// The readers of last resort look at the next tick.
    pub(crate) fn arm(&self) {
        {
            let _wake = lock(&self.wake);
            self.armed.store(true, Ordering::SeqCst);
            self.armed_now.notify_all();
        }
        self.wake_tasks();
    }

    /// Wakes the readers resting here (a socket was given back to its reader thread).
    pub(crate) fn wake_watchers(&self) {
        {
            let _wake = lock(&self.wake);
            self.armed_now.notify_all();
        }
        self.wake_tasks();
    }

    fn wake_tasks(&self) {
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            task.wake();
        }
    }

    /// Whether the readers of last resort look at the next tick; if not, `task` is woken when
    /// they should (registered before the look: an `arm` after it wakes the task).
    pub(crate) fn armed_or_wake(&self, task: &Waker) -> bool {
        {
            let mut tasks = lock(&self.tasks);
            if !tasks.iter().any(|waiting| waiting.will_wake(task)) {
                tasks.push(task.clone());
            }
        }
        self.armed.load(Ordering::SeqCst)
    }

    /// Rests until armed, while `claimed`; whether it is still claimed.
    pub(crate) fn wait_armed(&self, claimed: impl Fn() -> bool) -> bool {
        let mut wake = lock(&self.wake);
        while !self.armed.load(Ordering::SeqCst) && claimed() {
            wake = self.armed_now.wait(wake).unwrap_or_else(PoisonError::into_inner);
        }
        drop(wake);
        claimed()
    }

    /// Holds the runs' lock, as a resting reader of last resort does (`wait_armed`).
    #[cfg(test)]
    pub(crate) fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.wake)
    }

    pub(crate) fn current(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    /// After a tick that began in run `run`: whether the thread has been in that one run all
    /// along (stuck), and whether it ran none (the readers may rest).
    pub(crate) fn after_tick(&self, run: u64) -> (bool, bool) {
        let in_run = self.in_run.load(Ordering::SeqCst);
        let same_run = self.current() == run;
        (in_run && same_run, !in_run && same_run)
    }

    /// A tick without a run: rest. (SeqCst with `begins`: either it sees this, or this sees
    /// its run and stays armed.)
    pub(crate) fn rest(&self, run: u64) {
        self.armed.store(false, Ordering::SeqCst);
        if self.current() != run || self.in_run.load(Ordering::SeqCst) {
            self.armed.store(true, Ordering::SeqCst);
        }
    }
}

/// A socket main's thread reads, as its drain sees it: a renderer process's connection
/// (`ChildReader`) or a web page's (`web::page_reader`).
pub(crate) trait Drained: Send + Sync {
    /// Reads what the socket has, without blocking, on main's thread; false if it stopped with
    /// more to read (the drain comes back for it without waiting for an event).
    fn drain(&self) -> bool;
    /// The set is released (its instance is gone): the socket's own reader reads it alone.
    fn give_back(&self);
}

impl Drained for ChildReader {
    fn drain(&self) -> bool {
        ChildReader::drain(self)
    }

    fn give_back(&self) {
        ChildReader::give_back(self);
    }
}

/// How many sockets a set holds, for its drain: one is read without asking the set.
enum Only {
    None,
    One(u64, Arc<dyn Drained>),
    Several,
}

/// One instance's epoll set of the sockets its thread reads, and that thread's runs.
pub(crate) struct MainDrain {
    pub(super) epoll: Epoll,
    /// The claimed connections, with their read side's id (the events' data): a main's
    /// renderer processes and web pages, a few, found by a scan (cheaper than hashing the id
    /// per event).
    claimed: Mutex<Vec<(u64, Weak<dyn Drained>)>>,
    /// Released: nothing more is claimed for it, and its drains stop.
    released: AtomicBool,
    /// Its thread drained it once: its runtime watches the set (it drains at once after
    /// registering it). Until then nothing is claimed for it: a runtime that could not watch
    /// it (its `AsyncFd` refused) never drains, and a socket in the set would sit unread
    /// while that thread is parked.
    watched: AtomicBool,
    /// Claimed sockets a drain left with frames to read (edge-triggered: no event will say so).
    /// Only main's thread touches it; a lock because the drain is shared.
    pending: Mutex<Vec<u64>>,
    runs: Runs,
}

impl MainDrain {
    fn new() -> nix::Result<MainDrain> {
        Ok(MainDrain {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            claimed: Mutex::new(Vec::new()),
            released: AtomicBool::new(false),
            watched: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            runs: Runs::new(),
        })
    }

    pub(crate) fn runs(&self) -> &Runs {
        &self.runs
    }

    /// Puts `side`'s socket in the set; false if the drain is released, its thread never
    /// drained it yet, or the socket cannot be watched (then its reader thread reads it, as
    /// before).
    pub(crate) fn add(&self, side: &ReadSide, reader: Weak<ChildReader>) -> bool {
        self.add_socket(side.fd(), side.id(), reader)
    }

    /// Puts socket `fd` in the set, read by `reader` (named `id` in the set's events: ids come
    /// from [`socket_id`]); false as for [`MainDrain::add`].
    pub(crate) fn add_socket(&self, fd: BorrowedFd<'_>, id: u64, reader: Weak<dyn Drained>) -> bool {
        let mut claimed = lock(&self.claimed);
        if self.released.load(Ordering::SeqCst) || !self.watched.load(Ordering::SeqCst) {
            return false;
        }
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
        if let Err(error) = self.epoll.add(fd, EpollEvent::new(flags, id)) {
            tracing::warn!("cannot watch a socket from main's thread ({error}): its own reader reads it");
            return false;
        }
        // Not there already: the set refuses a descriptor it holds.
        claimed.push((id, reader));
        true
    }

    /// Takes `side`'s socket out of the set.
    pub(crate) fn remove(&self, side: &ReadSide) {
        self.remove_socket(side.fd(), side.id());
    }

    /// Takes socket `fd` (`id`) out of the set, before it closes: a set holds the open file,
    /// not the number, and a file kept open elsewhere would go on waking main's thread.
    pub(crate) fn remove_socket(&self, fd: BorrowedFd<'_>, id: u64) {
        let mut claimed = lock(&self.claimed);
        let Some(at) = claimed.iter().position(|(claimed, _)| *claimed == id) else { return };
        claimed.swap_remove(at);
        if let Err(error) = self.epoll.delete(fd) {
            tracing::warn!("cannot take a socket out of main's epoll set: {error}");
        }
    }

    fn reader(&self, id: u64) -> Option<Arc<dyn Drained>> {
        lock(&self.claimed).iter().find(|(claimed, _)| *claimed == id).and_then(|(_, reader)| reader.upgrade())
    }

    /// Main's thread reads what its claimed sockets have (see [`abi::HostVTable::drain`]).
    fn drain(&self) -> u32 {
        if self.released.load(Ordering::SeqCst) {
            return abi::drain::STOP;
        }
        if !self.watched.load(Ordering::Relaxed) {
            self.watched.store(true, Ordering::SeqCst);
        }
        let left = std::mem::take(&mut *lock(&self.pending));
        let mut unfinished = Vec::new();
        let mut drain_one = |id: u64, reader: Arc<dyn Drained>| {
            if !reader.drain() && !unfinished.contains(&id) {
                unfinished.push(id);
            }
        };
        let mut more = false;
        match self.only_claimed() {
            // One socket (a renderer process serving this main: the common case): it is read
            // directly, without asking the set which socket is ready; its read without blocking
            // says whether it had anything. The set's pending event for it is left: the
            // runtime's `epoll_wait` on the set drops it when the socket is found empty, and a
            // drain after a second socket joins (and the set is asked) reports it only if it
            // has bytes. What a stopped drain left in the read side is in `pending`, below.
            Only::One(id, reader) => drain_one(id, reader),
            Only::None => {}
            Only::Several => {
                let mut events = [EpollEvent::empty(); EVENTS];
                let ready = match self.epoll.wait(&mut events, EpollTimeout::ZERO) {
                    Ok(ready) => ready,
                    Err(Errno::EINTR) => 0,
                    Err(error) => {
                        // The set is this drain's own and valid: this does not happen. If it
                        // did, the sockets' reader threads still read for a stuck run, so
                        // nothing is lost.
                        tracing::warn!("main's epoll set cannot be read: {error}");
                        0
                    }
                };
                more = ready == EVENTS;
                for id in left.iter().copied().chain(events[..ready].iter().map(EpollEvent::data)) {
                    if let Some(reader) = self.reader(id) {
                        drain_one(id, reader);
                    }
                }
            }
        }
        if !unfinished.is_empty() {
            more = true;
            lock(&self.pending).extend(unfinished);
        }
        if more { abi::drain::MORE } else { abi::drain::IDLE }
    }

    /// Whether the set holds one claimed socket (and its reader), none, or several.
    fn only_claimed(&self) -> Only {
        let claimed = lock(&self.claimed);
        match claimed.as_slice() {
            [] => Only::None,
            [(id, reader)] => reader.upgrade().map_or(Only::None, |reader| Only::One(*id, reader)),
            _ => Only::Several,
        }
    }

    /// The instance is gone: every claimed socket goes back to its reader thread.
    fn release(&self) {
        let readers: Vec<Weak<dyn Drained>> = {
            let claimed = lock(&self.claimed);
            self.released.store(true, Ordering::SeqCst);
            claimed.iter().map(|(_, reader)| reader.clone()).collect()
        };
        for reader in readers.iter().filter_map(Weak::upgrade) {
            reader.give_back();
        }
    }
}

/// A new id for a socket in a set (the events' data): unique in the process, whichever kind
/// of socket it names.
pub(crate) fn socket_id() -> u64 {
    static IDS: AtomicU64 = AtomicU64::new(1);
    IDS.fetch_add(1, Ordering::Relaxed)
}

/// The sets of this process's instances, by key, created on the instance's first ask.
static DRAINS: Mutex<Option<HashMap<u64, Arc<MainDrain>>>> = Mutex::new(None);

thread_local! {
    /// The set of the instance whose thread this is (set by its `inbound_fd`).
    static DRAINING: RefCell<Option<(u64, Arc<MainDrain>)>> = const { RefCell::new(None) };
}

/// The descriptor `key`'s thread watches: its epoll set, created now (asked once, on that
/// thread, as its runtime starts); -1 if none can be made (its connections' reader threads read
/// them, as before).
pub(crate) fn inbound_fd(key: u64) -> i32 {
    let drain = match MainDrain::new() {
        Ok(drain) => Arc::new(drain),
        Err(error) => {
            tracing::warn!("cannot create an epoll set for an instance's thread: {error}");
            return -1;
        }
    };
    let fd = drain.epoll.0.as_raw_fd();
    lock(&DRAINS).get_or_insert_with(HashMap::new).insert(key, drain.clone());
    DRAINING.with(|draining| *draining.borrow_mut() = Some((key, drain)));
    fd
}

/// `key`'s set, if its thread watches one.
pub(crate) fn of(key: u64) -> Option<Arc<MainDrain>> {
    lock(&DRAINS).as_ref()?.get(&key).cloned()
}

/// `key`'s thread has time for what arrived (see [`abi::HostVTable::drain`]).
pub(crate) fn drain(key: u64) -> u32 {
    let drain = DRAINING.with(|draining| match &*draining.borrow() {
        Some((own, drain)) if *own == key => Some(drain.clone()),
        _ => None,
    });
    drain.map_or(abi::drain::STOP, |drain| drain.drain())
}

/// A run of this thread begins (`batch_begin`): the readers of last resort watch it.
pub(crate) fn run_begins() {
    DRAINING.with(|draining| {
        if let Some((_, drain)) = &*draining.borrow() {
            drain.runs.begins();
        }
    });
}

/// A run of this thread ends (`batch_end`).
pub(crate) fn run_ends() {
    DRAINING.with(|draining| {
        if let Some((_, drain)) = &*draining.borrow() {
            drain.runs.ends();
        }
    });
}

/// `key`'s instance is destroyed: its sockets go back to their reader threads, and its set is
/// closed once nothing holds it, if `stopped` (its thread finished, so its runtime no longer
/// watches the set); otherwise the set stays open for good (see the module's description).
pub(crate) fn release(key: u64, stopped: bool) {
    let Some(drain) = lock(&DRAINS).as_mut().and_then(|drains| drains.remove(&key)) else { return };
    drain.release();
    if !stopped {
        // Abandoned thread: its runtime may still hold the descriptor.
        std::mem::forget(drain);
    }
}
