//! An instance's mailbox: the one FIFO queue between whoever sends to the instance (the host,
//! from any thread; the instance itself, for requests between its own halves) and its
//! dispatcher, with the bound that keeps a slow instance from growing memory.
//!
//! It is a locked `VecDeque` rather than a channel because of how it is used: the dispatcher
//! takes everything queued at once (one lock per batch, not per message), and a message the
//! instance sends itself while dispatching (a reply to its own frame) does not wake the
//! dispatcher, which is running and will look again before it sleeps.
//!
//! Where this thread reads the host's connection itself (a renderer process serving one
//! instance; main reading its renderer processes' sockets), the dispatcher reads it too, as a
//! [`Source`] polled between batches: a message then goes from the socket to its handler in
//! one poll of one task, with no wake of another task and no trip through the scheduler.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::abi;
use crate::runtime::payload::Queued;
use crate::runtime::requests::Route;
use crate::wire::{MailboxLimit, OwnedMessage};

/// A message queued for the dispatcher, with the way it came: from the host, or from a half of
/// this instance (a request within it, its reply or its cancel).
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) route: Route,
    pub(crate) message: Queued,
}

impl Delivery {
    /// A message the host delivered.
    #[inline]
    pub(crate) fn from_host(message: impl Into<Queued>) -> Delivery {
        Delivery { route: Route::Host, message: message.into() }
    }

    /// A message between two halves of this instance.
    #[inline]
    pub(crate) fn within(message: OwnedMessage) -> Delivery {
        Delivery { route: Route::Within, message: message.into() }
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The mailbox is full and the message may be refused (see [`MailboxLimit`]).
    Full,
    /// The dispatcher is gone: the instance stopped.
    Closed,
}

pub(crate) struct Mailbox {
    queue: Mutex<Queue>,
    limit: MailboxLimit,
    dropped_broadcasts: AtomicU64,
    refused_requests: AtomicU64,
    /// Turned away since the dispatcher last said so in the log.
    unreported: AtomicU64,
    /// Messages of the current batch the dispatcher has worked through, stored after each one:
    /// the progress within a batch, without the queue's lock.
    batch_done: AtomicU64,
}

/// How far the dispatcher has got (see [`Mailbox::progress`]).
pub(crate) struct Progress {
    /// Moves whenever the dispatcher takes a batch, and within a batch with every message it
    /// finishes: unchanged, the dispatcher is stuck in one message (or idle, with nothing
    /// waiting).
    pub(crate) dispatched: u64,
    /// Messages of the current batch not yet worked through, the one running excluded.
    pub(crate) batch_waiting: u64,
    /// The dispatcher is working through a batch: from taking it (under the lock, with the
    /// messages) until it comes back to an empty queue. What the watchdog needs to tell a
    /// message being dispatched (taken, its handler not yet marked, or a listener, or a batch's
    /// last message) from an idle instance: neither `queued` nor `batch_waiting` counts it.
    pub(crate) dispatching: bool,
}

#[derive(Default)]
struct Queue {
    /// Waiting for the dispatcher (what the bound applies to). The batch it is working
    /// through has left the queue.
    messages: VecDeque<Delivery>,
    /// Channel and payload bytes of `messages`.
    bytes: u64,
    /// The dispatcher's, while it waits for messages.
    waker: Option<Waker>,
    /// The dispatcher is working through a batch and will look again before it waits.
    draining: bool,
    /// The dispatcher is reading its [`Source`], which pushes here, and takes what it pushed
    /// before it waits: a push need not wake it. Unlike `draining`, not work for the watchdog.
    reading: bool,
    /// Messages taken into batches since the mailbox was made.
    taken: u64,
    /// Messages in the batch the dispatcher took last.
    batch: u64,
    closed: bool,
}

/// Room for messages the dispatcher's buffer keeps between batches.
const KEPT_CAPACITY: usize = 1024;

/// Messages the dispatcher works through before letting the thread's other tasks run, and
/// before it reads its [`Source`] while the queue does not empty.
const BATCH_BEFORE_YIELD: usize = 128;

/// What the dispatcher reads for itself between batches (see [`Mailbox::serve`]): the host's
/// connection, where this thread reads it. It pushes what it reads into the mailbox.
pub(crate) trait Source: Send {
    /// Whether there is something to read: `Ready(true)` if so, `Pending` (with `cx`'s waker
    /// registered for when there is) if not, `Ready(false)` if it can no longer be watched.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<bool>;
    /// Reads what has arrived, without blocking.
    fn read(&mut self) -> Read;
}

/// The dispatcher's hold on its source.
struct Reading {
    source: Option<Box<dyn Source>>,
    /// The last read stopped with more to read: the next comes after the thread's other tasks
    /// have run (an invoker woken by a reply it delivered sends its next request first).
    owed: bool,
}

/// What [`Mailbox::read_from`] did.
enum Attempt {
    /// It read: the queue may hold messages now.
    Read,
    /// Nothing had arrived (the source's waker is registered), or there is no source.
    Nothing,
    /// A read is owed, after the thread's other tasks have run.
    Owed,
}

/// What a [`Source::read`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// Nothing more to read until it is ready again.
    Idle,
    /// It stopped with more to read, to let the thread's other work run.
    More,
    /// It is not to be read here any more.
    Stop,
}

impl Mailbox {
    pub(crate) fn new(limit: MailboxLimit) -> Mailbox {
        Mailbox {
            queue: Mutex::new(Queue::default()),
            limit,
            dropped_broadcasts: AtomicU64::new(0),
            refused_requests: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            batch_done: AtomicU64::new(0),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics under this lock but a failed allocation; the queue is still sound.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a message, or refuses it. Never blocks and never runs the dispatcher.
    ///
    /// Past the bound only broadcasts, requests and store writes are refused: everything else
    /// answers a message already accepted, so it is bounded by those, and losing it would
    /// leave a request waiting or a replica diverged. An empty mailbox takes any one message,
    /// however large.
    pub(crate) fn push(&self, delivery: Delivery) -> Result<(), Refused> {
        let size = delivery.message.size();
        let kind = delivery.message.kind;
        let waker = {
            let mut queue = self.queue();
            if queue.closed {
                return Err(Refused::Closed);
            }
            let waiting = queue.messages.len() as u64;
            let full =
                waiting > 0 && (waiting >= self.limit.messages || queue.bytes.saturating_add(size) > self.limit.bytes);
            let refusable = matches!(
                kind,
                abi::kind::BROADCAST | abi::kind::INVOKE | abi::kind::STORE_WRITE | abi::kind::STORAGE_WRITE
            );
            if full && refusable {
                drop(queue);
                let counter =
                    if kind == abi::kind::BROADCAST { &self.dropped_broadcasts } else { &self.refused_requests };
                counter.fetch_add(1, Ordering::Relaxed);
                self.unreported.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Full);
            }
            queue.messages.push_back(delivery);
            queue.bytes += size;
            if queue.draining || queue.reading { None } else { queue.waker.take() }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Runs `dispatch` on every message, in order, until the mailbox is closed (its owner,
    /// this future, dropped: the runtime shutting down). Between batches it reads `source`
    /// (whatever that pushes is dispatched in the same poll) whenever the queue is empty; and
    /// every [`BATCH_BEFORE_YIELD`] messages, while the queue does not empty, it lets the
    /// thread's other tasks run and then reads `source`, so neither waits behind a flood.
    pub(crate) async fn serve(&self, mut dispatch: impl FnMut(Delivery), source: Option<Box<dyn Source>>) {
        let _closer = CloseOnDrop(self);
        // Swapped with the queue's buffer each time, so neither is allocated again.
        let mut batch = VecDeque::new();
        let mut reading = Reading { source, owed: false };
        // Messages dispatched since the task last gave up the thread.
        let mut since_yield = 0;
        loop {
            std::future::poll_fn(|cx| {
                loop {
                    if self.take(cx, &mut batch).is_ready() {
                        return Poll::Ready(());
                    }
                    // Nothing waits (this task's waker is in the queue): read what has arrived.
                    match self.read_from(&mut reading, cx) {
                        Attempt::Read => continue,
                        // The source's waker is registered too (or there is no source).
                        Attempt::Nothing => break,
                        Attempt::Owed => {
                            // A yield: the next poll reads, once the other tasks have run.
                            reading.owed = false;
                            cx.waker().wake_by_ref();
                            break;
                        }
                    }
                }
                since_yield = 0;
                Poll::Pending
            })
            .await;
            let mut done = 0;
            while let Some(delivery) = batch.pop_front() {
                dispatch(delivery);
                done += 1;
                // Every message (one relaxed store): the watchdog then sees each call end, so
                // a burst of short calls is not taken for one slow one.
                self.batch_done.store(done as u64, Ordering::Relaxed);
                since_yield += 1;
                if since_yield == BATCH_BEFORE_YIELD {
                    since_yield = 0;
                    tokio::task::yield_now().await;
                    // The other tasks have run: read what arrived meanwhile (behind this batch).
                    reading.owed = false;
                    std::future::poll_fn(|cx| {
                        self.read_from(&mut reading, cx);
                        Poll::Ready(())
                    })
                    .await;
                }
            }
            // A burst's buffer is not kept for good: memory stays flat after it.
            batch.shrink_to(KEPT_CAPACITY);
        }
    }

    /// Reads the source if something has arrived on it (see [`Attempt`]).
    fn read_from(&self, reading: &mut Reading, cx: &mut Context<'_>) -> Attempt {
        let Some(source) = reading.source.as_mut() else { return Attempt::Nothing };
        if reading.owed {
            return Attempt::Owed;
        }
        match source.poll_ready(cx) {
            Poll::Pending => return Attempt::Nothing,
            Poll::Ready(true) => {}
            Poll::Ready(false) => {
                // Dropped: its descriptor leaves the runtime's I/O driver.
                reading.source = None;
                return Attempt::Nothing;
            }
        }
        // What the read pushes wakes nobody: this task takes it next.
        self.queue().reading = true;
        match source.read() {
            Read::Idle => {}
            Read::More => reading.owed = true,
            Read::Stop => reading.source = None,
        }
        Attempt::Read
    }

    /// Swaps what waits into `batch`, or registers the dispatcher's waker if nothing does.
    #[inline(always)]
    fn take(&self, cx: &mut Context<'_>, batch: &mut VecDeque<Delivery>) -> Poll<()> {
        let mut queue = self.queue();
        queue.reading = false;
        if queue.messages.is_empty() {
            queue.draining = false;
            if !queue.waker.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
                queue.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        queue.draining = true;
        queue.bytes = 0;
        std::mem::swap(&mut queue.messages, batch);
        queue.taken += batch.len() as u64;
        queue.batch = batch.len() as u64;
        // Under the lock, with the batch: `progress` reads both in one piece.
        self.batch_done.store(0, Ordering::Relaxed);
        Poll::Ready(())
    }

    /// Messages waiting right now.
    pub(crate) fn queued(&self) -> u64 {
        self.queue().messages.len() as u64
    }

    /// How far the dispatcher has got, for the host's watchdog.
    pub(crate) fn progress(&self) -> Progress {
        let queue = self.queue();
        let done = self.batch_done.load(Ordering::Relaxed).min(queue.batch);
        Progress {
            dispatched: queue.taken - queue.batch + done,
            batch_waiting: (queue.batch - done).saturating_sub(1),
            dispatching: queue.draining,
        }
    }

    /// Bytes (channel names and payloads) waiting right now.
    pub(crate) fn queued_bytes(&self) -> u64 {
        self.queue().bytes
    }

    pub(crate) fn dropped_broadcasts(&self) -> u64 {
        self.dropped_broadcasts.load(Ordering::Relaxed)
    }

    pub(crate) fn refused_requests(&self) -> u64 {
        self.refused_requests.load(Ordering::Relaxed)
    }

    /// Logs what was turned away, from the instance's own thread, once per overflow: when the
    /// queue has emptied (so whoever reads the warning knows there is room again).
    #[inline(always)]
    pub(crate) fn report_overflow(&self, name: &str) {
        if self.unreported.load(Ordering::Relaxed) == 0 || !self.queue().messages.is_empty() {
            return;
        }
        let turned_away = self.unreported.swap(0, Ordering::Relaxed);
        tracing::warn!(
            "`{name}` is slower than what is sent to it: its mailbox was full ({} messages or {} bytes), \
             so {turned_away} message(s) were turned away (broadcasts dropped, requests and store \
             writes refused as overloaded)",
            self.limit.messages,
            self.limit.bytes,
        );
    }
}

/// Closes the mailbox when the dispatcher stops: later messages are refused, queued ones
/// dropped.
struct CloseOnDrop<'a>(&'a Mailbox);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        let left = {
            let mut queue = self.0.queue();
            queue.closed = true;
            queue.waker = None;
            std::mem::take(&mut queue.messages)
        };
        // Dropped outside the lock.
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    fn message(kind: u32, request_id: u64) -> Delivery {
        Delivery::from_host(OwnedMessage {
            kind,
            status: 0,
            origin: 1,
            target: 0,
            request_id,
            channel: "c".into(),
            payload: vec![0; 4],
        })
    }

    #[test]
    fn refuses_what_may_be_refused_past_the_bound_and_keeps_order() {
        let mailbox = Mailbox::new(MailboxLimit { messages: 2, bytes: 1 << 20 });
        assert_eq!(mailbox.push(message(abi::kind::INVOKE, 1)), Ok(()));
        assert_eq!(mailbox.push(message(abi::kind::BROADCAST, 2)), Ok(()));
        assert_eq!(mailbox.push(message(abi::kind::BROADCAST, 3)), Err(Refused::Full));
        assert_eq!(mailbox.push(message(abi::kind::INVOKE, 4)), Err(Refused::Full));
        // Answers are always taken.
        assert_eq!(mailbox.push(message(abi::kind::REPLY, 5)), Ok(()));
        assert_eq!((mailbox.queued(), mailbox.dropped_broadcasts(), mailbox.refused_requests()), (3, 1, 1));

        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let mut seen = Vec::new();
        runtime.block_on(async {
            let serve = mailbox.serve(|delivery| seen.push(delivery.message.request_id), None);
            // Serving never ends on its own; stop once it has gone idle.
            let _ = tokio::time::timeout(std::time::Duration::ZERO, serve).await;
        });
        assert_eq!(seen, [1, 2, 5]);
        assert_eq!(mailbox.queued(), 0);
        let progress = mailbox.progress();
        assert_eq!((progress.dispatched, progress.batch_waiting), (3, 0));
        // The server was dropped: the mailbox is closed.
        assert_eq!(mailbox.push(message(abi::kind::REPLY, 6)), Err(Refused::Closed));
    }

    /// A message the dispatcher has taken and not finished (its handler not yet marked as
    /// running, or a listener, which is never marked) is work: an inspect that finds it must not
    /// read the instance as idle, or the watchdog stops looking at an instance that may be stuck
    /// in it (and whose next message will not call for attention, the call having been made).
    /// The interleaving: the dispatcher takes a batch of one message and is held in it while
    /// `progress` and `queued` are read (as inspect reads them).
    #[test]
    fn a_message_being_dispatched_shows_as_work_until_the_dispatcher_is_back() {
        use std::sync::{Arc, Barrier};

        let mailbox = Arc::new(Mailbox::new(MailboxLimit { messages: 8, bytes: 1 << 20 }));
        let (inside, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let idle = |mailbox: &Mailbox| {
            let progress = mailbox.progress();
            mailbox.queued() == 0 && progress.batch_waiting == 0 && !progress.dispatching
        };
        assert!(idle(&mailbox), "nothing queued yet");
        // Queued before the dispatcher's first look, which takes it.
        assert_eq!(mailbox.push(message(abi::kind::INVOKE, 1)), Ok(()));
        let dispatcher = {
            let (mailbox, inside, release) = (mailbox.clone(), inside.clone(), release.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
                runtime.block_on(async {
                    let serve = mailbox.serve(
                        |_| {
                            inside.wait();
                            release.wait();
                        },
                        None,
                    );
                    // Stop once the dispatcher has gone idle after the one message.
                    let _ = tokio::time::timeout(std::time::Duration::ZERO, serve).await;
                });
            })
        };
        inside.wait();
        // The dispatcher is inside the message: taken, not finished.
        assert!(!idle(&mailbox), "a message being dispatched reads as an idle instance");
        release.wait();
        dispatcher.join().unwrap();
        assert!(idle(&mailbox), "the dispatcher finished its batch");
    }

    #[test]
    fn a_dispatcher_fed_from_another_thread_loses_nothing_and_keeps_the_order() {
        const COUNT: u64 = 20_000;
        let mailbox = std::sync::Arc::new(Mailbox::new(MailboxLimit { messages: u64::MAX, bytes: u64::MAX }));
        let sender = {
            let mailbox = mailbox.clone();
            // Bursts of 1 to 7 with a yield between: the dispatcher finds some while it works
            // through a batch and some after it parked.
            std::thread::spawn(move || {
                for id in 0..COUNT {
                    mailbox.push(message(abi::kind::REPLY, id)).unwrap();
                    if id % 7 == id % 3 {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let mut seen = Vec::with_capacity(COUNT as usize);
        runtime.block_on(async {
            let (all, done) = tokio::sync::oneshot::channel::<()>();
            let mut all = Some(all);
            let serve = mailbox.serve(
                |delivery| {
                    seen.push(delivery.message.request_id);
                    if seen.len() as u64 == COUNT {
                        all.take().map(|all| all.send(()));
                    }
                },
                None,
            );
            // A failsafe, not a timing: a lost wake would leave the dispatcher parked for good.
            let all_seen = tokio::time::timeout(std::time::Duration::from_secs(20), async {
                tokio::select! {
                    _ = serve => unreachable!("serving ends only when dropped"),
                    _ = done => {}
                }
            });
            assert!(all_seen.await.is_ok(), "a message was left in the mailbox unseen");
        });
        sender.join().unwrap();
        assert!(seen.iter().copied().eq(0..COUNT), "every message, in order");
    }

    type Log = std::sync::Arc<Mutex<Vec<String>>>;

    /// A source for the tests: each read pushes the next group of `reads` into the mailbox and
    /// says what it says. Ready while groups are left and `open` is set; otherwise pending,
    /// its waker kept in `waker` for whoever opens it.
    struct Scripted {
        mailbox: std::sync::Arc<Mailbox>,
        reads: VecDeque<(Vec<u64>, Read)>,
        log: Log,
        open: std::sync::Arc<std::sync::atomic::AtomicBool>,
        waker: std::sync::Arc<Mutex<Option<Waker>>>,
        /// Says it can no longer be watched (`Ready(false)`) when it is next asked.
        unwatchable: bool,
    }

    impl Drop for Scripted {
        fn drop(&mut self) {
            self.log.lock().unwrap().push("dropped".into());
        }
    }

    impl Scripted {
        fn new(mailbox: &std::sync::Arc<Mailbox>, reads: Vec<(Vec<u64>, Read)>, log: &Log) -> Scripted {
            Scripted {
                mailbox: mailbox.clone(),
                reads: reads.into(),
                log: log.clone(),
                open: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
                waker: Default::default(),
                unwatchable: false,
            }
        }
    }

    impl Source for Scripted {
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
            if self.unwatchable {
                return Poll::Ready(false);
            }
            if !self.reads.is_empty() && self.open.load(Ordering::SeqCst) {
                return Poll::Ready(true);
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }

        fn read(&mut self) -> Read {
            let (ids, read) = self.reads.pop_front().unwrap();
            self.log.lock().unwrap().push(format!("read {}", ids.len()));
            for id in ids {
                self.mailbox.push(message(abi::kind::REPLY, id)).unwrap();
            }
            read
        }
    }

    /// Serves `mailbox` with `source` as a task of its own (as the dispatcher runs) on a
    /// current-thread runtime until message `until` has been dispatched, logging each message
    /// and handing its id to `on_dispatch`; `also` is spawned after it, on the same thread.
    fn serve_until(
        mailbox: &std::sync::Arc<Mailbox>,
        source: Scripted,
        until: u64,
        mut on_dispatch: impl FnMut(u64) + Send + 'static,
        also: impl Future<Output = ()> + Send + 'static,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let (log, mailbox) = (source.log.clone(), mailbox.clone());
        runtime.block_on(async move {
            let (reached, done) = tokio::sync::oneshot::channel::<()>();
            let mut reached = Some(reached);
            let server = tokio::spawn(async move {
                let dispatch = |delivery: Delivery| {
                    let id = delivery.message.request_id;
                    log.lock().unwrap().push(format!("dispatch {id}"));
                    on_dispatch(id);
                    if id == until {
                        reached.take().map(|reached| reached.send(()));
                    }
                };
                mailbox.serve(dispatch, Some(Box::new(source))).await;
            });
            tokio::spawn(also);
            // A failsafe, not a timing: a lost wake would leave the dispatcher parked for good.
            let reached = tokio::time::timeout(std::time::Duration::from_secs(20), done).await;
            server.abort();
            assert!(reached.is_ok(), "message {until} was never dispatched");
        });
    }

    fn logged(log: &Log) -> Vec<String> {
        log.lock().unwrap().clone()
    }

    #[test]
    fn what_the_source_reads_is_dispatched_in_order_with_what_was_queued() {
        let mailbox = std::sync::Arc::new(Mailbox::new(MailboxLimit { messages: 64, bytes: 1 << 20 }));
        let log = Log::default();
        mailbox.push(message(abi::kind::REPLY, 1)).unwrap();
        let reads = vec![(vec![2, 3], Read::Idle), (vec![], Read::Idle), (vec![4], Read::Stop)];
        serve_until(&mailbox, Scripted::new(&mailbox, reads, &log), 4, |_| {}, async {});
        // The queue first; the source whenever the queue is empty; a read that pushed nothing
        // is followed by the next; the last read stops it, and it is dropped at once.
        assert_eq!(
            logged(&log),
            ["dispatch 1", "read 2", "dispatch 2", "dispatch 3", "read 0", "read 1", "dropped", "dispatch 4"]
        );
    }

    /// The dispatcher parks with the source's waker registered: a source that becomes ready
    /// later wakes it, and what it reads then is dispatched.
    #[test]
    fn a_source_ready_after_the_dispatcher_parked_wakes_it() {
        let mailbox = std::sync::Arc::new(Mailbox::new(MailboxLimit { messages: 64, bytes: 1 << 20 }));
        let log = Log::default();
        mailbox.push(message(abi::kind::REPLY, 1)).unwrap();
        let source = Scripted::new(&mailbox, vec![(vec![2], Read::Idle)], &log);
        source.open.store(false, Ordering::SeqCst);
        let (open, waker, opener_log) = (source.open.clone(), source.waker.clone(), log.clone());
        // Runs once the dispatcher (spawned first, on the same thread) has gone idle.
        let opener = async move {
            opener_log.lock().unwrap().push("opened".into());
            open.store(true, Ordering::SeqCst);
            waker.lock().unwrap().take().expect("the dispatcher registered its waker").wake();
        };
        serve_until(&mailbox, source, 2, |_| {}, opener);
        assert_eq!(logged(&log), ["dispatch 1", "opened", "read 1", "dispatch 2", "dropped"]);
    }

    /// A dispatcher whose queue never empties (each message queues the next, as a listener
    /// broadcasting to itself would) still reads its source, every `BATCH_BEFORE_YIELD`
    /// messages, and lets the thread's other tasks run: neither waits behind the flood.
    #[test]
    fn a_flood_from_elsewhere_does_not_keep_the_source_unread_nor_other_tasks_waiting() {
        const FLOOD: u64 = 1_000;
        const FROM_SOURCE: u64 = 1_000_000;
        let mailbox = std::sync::Arc::new(Mailbox::new(MailboxLimit { messages: 64, bytes: 1 << 20 }));
        let log = Log::default();
        mailbox.push(message(abi::kind::REPLY, 0)).unwrap();
        // The queue never empties, so the source is read only at the 128-message marks: the
        // first read finds nothing, the second (at the next mark) the source's message.
        let reads = vec![(vec![], Read::Idle), (vec![FROM_SOURCE], Read::Idle)];
        let flooding = mailbox.clone();
        let other_log = log.clone();
        serve_until(
            &mailbox,
            Scripted::new(&mailbox, reads, &log),
            FLOOD,
            move |id| {
                if id < FLOOD {
                    flooding.push(message(abi::kind::REPLY, id + 1)).unwrap();
                }
            },
            async move { other_log.lock().unwrap().push("other task".into()) },
        );
        let log = logged(&log);
        let at = |entry: &str| log.iter().position(|logged| logged == entry).unwrap_or(usize::MAX);
        let limit = 3 * BATCH_BEFORE_YIELD;
        assert!(at(&format!("dispatch {FROM_SOURCE}")) < limit, "the source was read late: {:?}", &log[..limit]);
        assert!(at("other task") < limit, "the other task ran late: {:?}", &log[..limit]);
    }

    /// A read that stops with more to read lets the thread's other tasks run before the next
    /// (an invoker woken by a reply it delivered sends its next request first).
    #[test]
    fn a_read_with_more_to_read_lets_other_tasks_run_before_the_next() {
        let mailbox = std::sync::Arc::new(Mailbox::new(MailboxLimit { messages: 64, bytes: 1 << 20 }));
        let log = Log::default();
        let source = Scripted::new(&mailbox, vec![(vec![1], Read::More), (vec![2], Read::Idle)], &log);
        let woken = std::sync::Arc::new(tokio::sync::Notify::new());
        let (waker, other_log) = (woken.clone(), log.clone());
        serve_until(
            &mailbox,
            source,
            2,
            move |id| {
                if id == 1 {
                    waker.notify_one();
                }
            },
            async move {
                woken.notified().await;
                other_log.lock().unwrap().push("other task".into());
            },
        );
        assert_eq!(logged(&log), ["read 1", "dispatch 1", "other task", "read 1", "dispatch 2", "dropped"]);
    }

    /// A read with more to read, then a batch long enough to yield twice: the read still owed
    /// is made (a lost wake would leave the second read's message undispatched).
    #[test]
    fn a_read_owed_across_a_long_batch_is_made() {
        let mailbox = std::sync::Arc::new(Mailbox::new(MailboxLimit { messages: 64, bytes: 1 << 20 }));
        let log = Log::default();
        let long = (0..(2 * BATCH_BEFORE_YIELD as u64 + 44)).collect();
        let source = Scripted::new(&mailbox, vec![(long, Read::More), (vec![999_999], Read::Idle)], &log);
        serve_until(&mailbox, source, 999_999, |_| {}, async {});
    }

    /// A source that stops, or can no longer be watched, is dropped at once (a descriptor then
    /// leaves the runtime's I/O driver), and the dispatcher goes on serving the queue.
    #[test]
    fn a_stopped_or_unwatchable_source_is_dropped_and_serving_goes_on() {
        for unwatchable in [false, true] {
            let mailbox = std::sync::Arc::new(Mailbox::new(MailboxLimit { messages: 64, bytes: 1 << 20 }));
            let log = Log::default();
            mailbox.push(message(abi::kind::REPLY, 1)).unwrap();
            let mut source = Scripted::new(&mailbox, vec![(vec![2], Read::Stop)], &log);
            source.unwatchable = unwatchable;
            let (pusher, pusher_log) = (mailbox.clone(), log.clone());
            // Runs once the dispatcher has gone idle: a push from elsewhere still wakes it.
            let later = async move {
                pusher_log.lock().unwrap().push("pushed".into());
                pusher.push(message(abi::kind::REPLY, 3)).unwrap();
            };
            serve_until(&mailbox, source, 3, |_| {}, later);
            let expected: &[&str] = if unwatchable {
                &["dispatch 1", "dropped", "pushed", "dispatch 3"]
            } else {
                &["dispatch 1", "read 1", "dropped", "dispatch 2", "pushed", "dispatch 3"]
            };
            assert_eq!(logged(&log), expected, "unwatchable: {unwatchable}");
        }
    }
}
