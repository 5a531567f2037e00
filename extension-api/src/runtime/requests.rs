//! The instance's one table of requests in flight: the invokes its halves wait on, and the
//! handler runs it started for requests it received. Each entry records its [`Route`], so
//! whoever fails, times out, cancels or counts requests asks the table, never a flag in a
//! message. Plain data: it neither sends nor aborts (its callers do that outside the state
//! lock), so it is tested without a runtime.

use std::collections::hash_map::Entry;

use foldhash::HashMap;
use tokio::sync::oneshot;

use crate::abi::{self, PEER_MAIN, Peer};
use crate::message::Reply;
use crate::runtime::payload::Payload;
use crate::{InvokeError, InvokeErrorKind};

/// Which way a request travels, decided once when it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Between two halves of this instance, through its own mailbox: the host never sees it,
    /// so this instance fails it when a half involved goes away.
    Within,
    /// Through the host, which records it and fails it itself.
    Host,
}

/// What an invoker's wait ends with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The handler's reply, or an error reply made on its way.
    Reply(Replied),
    /// Its timeout passed first (the invoker then cancels it).
    TimedOut,
}

/// A reply as its invoker gets it: a [`Reply`] whose value may be the host's, lent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Replied {
    pub(crate) status: u32,
    pub(crate) payload: Payload,
}

impl Replied {
    /// The value of a successful reply, or the error an error reply carries.
    pub(crate) fn into_result(self, channel: &str) -> Result<Payload, InvokeError> {
        if self.status == abi::status::OK {
            return Ok(self.payload);
        }
        Reply { status: self.status, payload: self.payload.into_vec() }.into_result(channel).map(Payload::Owned)
    }
}

impl From<Reply> for Replied {
    fn from(reply: Reply) -> Replied {
        Replied { status: reply.status, payload: Payload::Owned(reply.payload) }
    }
}

/// The invoker's side of a waiting request: answering it ends the wait.
#[derive(Debug)]
pub(crate) struct Waiter {
    reply: oneshot::Sender<Answer>,
}

impl Waiter {
    /// Ends the wait with `answer`. The invoker may have given up meanwhile; then nobody
    /// wants it.
    #[inline]
    pub(crate) fn answer(self, answer: Answer) {
        let _ = self.reply.send(answer);
    }

    /// Ends the wait with a `kind` error: the request cannot be answered any more.
    pub(crate) fn fail(self, kind: InvokeErrorKind) {
        self.answer(Answer::Reply(Reply::error(kind, format!("{kind} before the reply arrived")).into()));
    }
}

/// A request a half of this instance sent, waiting for its reply.
#[derive(Debug)]
struct Waiting {
    invoker: Peer,
    target: Peer,
    route: Route,
    /// Timeout sweeps left (see [`crate::runtime::sweep`]); [`NO_TIMEOUT`] never counts down.
    ticks_left: u32,
    waiter: Waiter,
}

/// A handler run this instance started for a request it received.
#[derive(Debug)]
struct Running<Task> {
    target: Peer,
    route: Route,
    task: Task,
}

/// How requests involving `peer` fail when it goes away.
pub(crate) fn closing_kind(peer: Peer) -> InvokeErrorKind {
    if peer == PEER_MAIN { InvokeErrorKind::Deactivated } else { InvokeErrorKind::FrameClosed }
}

/// Sweeps left for a request that never times out.
pub(crate) const NO_TIMEOUT: u32 = u32::MAX;

/// What failing requests took out of the table: the waits to fail and the handler runs to
/// stop, done by the caller once the state lock is released.
#[derive(Debug)]
pub(crate) struct Failed<Task> {
    pub(crate) waiters: Vec<Waiter>,
    pub(crate) tasks: Vec<Task>,
}

/// A request as the sending half starts it.
pub(crate) struct Outgoing {
    pub(crate) id: u64,
    pub(crate) invoker: Peer,
    pub(crate) target: Peer,
    pub(crate) route: Route,
    /// Sweeps before it times out (see [`crate::runtime::sweep::timeout_ticks`]).
    pub(crate) ticks: u32,
}

/// A request this instance received, naming it for its handler's run and its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Incoming {
    /// The invoking half.
    pub(crate) origin: Peer,
    /// The half whose handler runs.
    pub(crate) target: Peer,
    pub(crate) id: u64,
    pub(crate) route: Route,
}

/// The requests in flight at one instance. `Task` is what stops a handler run (a tokio
/// `AbortHandle`; anything in tests).
#[derive(Debug)]
pub(crate) struct Requests<Task> {
    /// By request id (ids are the instance's own, unique across its halves).
    waiting: HashMap<u64, Waiting>,
    /// By (origin, request id): what a cancel names.
    running: HashMap<(Peer, u64), Running<Task>>,
}

impl<Task> Default for Requests<Task> {
    fn default() -> Self {
        Requests { waiting: HashMap::default(), running: HashMap::default() }
    }
}

impl<Task> Requests<Task> {
    /// Records a request its invoker now waits on; the receiver gets its answer.
    #[inline]
    pub(crate) fn wait_for(&mut self, request: Outgoing) -> oneshot::Receiver<Answer> {
        let (reply, receiver) = oneshot::channel();
        let Outgoing { id, invoker, target, route, ticks } = request;
        self.waiting.insert(id, Waiting { invoker, target, route, ticks_left: ticks, waiter: Waiter { reply } });
        receiver
    }

    /// Whether `invoker` still waits on request `id` (not failed, timed out or given up).
    #[inline]
    pub(crate) fn is_waiting(&self, invoker: Peer, id: u64) -> bool {
        self.waiting.get(&id).is_some_and(|waiting| waiting.invoker == invoker)
    }

    /// The wait a reply to `invoker` for request `id`, arriving by `route`, ends: only the
    /// invoker's own request, and only one that went that way (a reply through the host never
    /// ends a request within the instance, nor the other way round).
    #[inline]
    pub(crate) fn take_reply(&mut self, invoker: Peer, id: u64, route: Route) -> Option<Waiter> {
        match self.waiting.entry(id) {
            Entry::Occupied(entry) if entry.get().invoker == invoker && entry.get().route == route => {
                Some(entry.remove().waiter)
            }
            _ => None,
        }
    }

    /// Forgets request `id`: its invoker stopped waiting (answered, refused or dropped).
    #[inline]
    pub(crate) fn forget(&mut self, id: u64) {
        self.waiting.remove(&id);
    }

    /// Records the run of `request`'s handler, which `task` stops.
    #[inline]
    pub(crate) fn run(&mut self, request: Incoming, task: Task) {
        let running = Running { target: request.target, route: request.route, task };
        self.running.insert((request.origin, request.id), running);
    }

    /// Forgets the run of `request`'s handler, which ended: that run only, not another
    /// recorded under the same origin and id since.
    #[inline]
    pub(crate) fn finish(&mut self, request: &Incoming) {
        self.take_run(request.origin, request.target, request.id, request.route);
    }

    /// The run `origin`'s cancel of request `id` to `target`, arriving by `route`, stops: only
    /// a request that half sent to that one, that way.
    pub(crate) fn cancel(&mut self, origin: Peer, target: Peer, id: u64, route: Route) -> Option<Task> {
        self.take_run(origin, target, id, route)
    }

    #[inline]
    fn take_run(&mut self, origin: Peer, target: Peer, id: u64, route: Route) -> Option<Task> {
        let key = (origin, id);
        if self.running.get(&key).is_none_or(|running| running.target != target || running.route != route) {
            return None;
        }
        self.running.remove(&key).map(|running| running.task)
    }

    /// Takes the requests within this instance from or to `peer`: it is going away, and the
    /// host does not know them to fail them.
    pub(crate) fn fail_involving(&mut self, peer: Peer) -> Failed<Task> {
        self.take_within(|origin, target| origin == peer || target == peer)
    }

    /// Takes every request within this instance: the extension stops routing.
    pub(crate) fn fail_within(&mut self) -> Failed<Task> {
        self.take_within(|_, _| true)
    }

    fn take_within(&mut self, involves: impl Fn(Peer, Peer) -> bool) -> Failed<Task> {
        let waiting: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, waiting)| waiting.route == Route::Within && involves(waiting.invoker, waiting.target))
            .map(|(id, _)| *id)
            .collect();
        let running: Vec<(Peer, u64)> = self
            .running
            .iter()
            .filter(|((origin, _), running)| running.route == Route::Within && involves(*origin, running.target))
            .map(|(key, _)| *key)
            .collect();
        Failed {
            waiters: waiting.iter().filter_map(|id| self.waiting.remove(id)).map(|waiting| waiting.waiter).collect(),
            tasks: running.iter().filter_map(|key| self.running.remove(key)).map(|running| running.task).collect(),
        }
    }

    /// Takes every wait of `invoker`, whichever way it went: the half is deactivating and can
    /// receive no reply.
    pub(crate) fn take_waits_of(&mut self, invoker: Peer) -> Vec<Waiter> {
        let ids: Vec<u64> =
            self.waiting.iter().filter(|(_, waiting)| waiting.invoker == invoker).map(|(id, _)| *id).collect();
        ids.iter().filter_map(|id| self.waiting.remove(id)).map(|waiting| waiting.waiter).collect()
    }

    /// Takes everything of a half that is removed: its waits (dropped, their invokers learn the
    /// half was shut down) and the runs of its handlers (to stop).
    pub(crate) fn take_half(&mut self, peer: Peer) -> Failed<Task> {
        let running: Vec<(Peer, u64)> =
            self.running.iter().filter(|(_, running)| running.target == peer).map(|(key, _)| *key).collect();
        Failed {
            waiters: self.take_waits_of(peer),
            tasks: running.iter().filter_map(|key| self.running.remove(key)).map(|running| running.task).collect(),
        }
    }

    /// One timeout sweep: counts every wait down and takes those whose time is up. The flag
    /// says whether any request still waits.
    pub(crate) fn sweep(&mut self) -> (Vec<Waiter>, bool) {
        let due: Vec<u64> = self
            .waiting
            .iter_mut()
            .filter(|(_, waiting)| waiting.ticks_left != NO_TIMEOUT)
            .filter_map(|(id, waiting)| {
                waiting.ticks_left = waiting.ticks_left.saturating_sub(1);
                (waiting.ticks_left == 0).then_some(*id)
            })
            .collect();
        let expired = due.iter().filter_map(|id| self.waiting.remove(id)).map(|waiting| waiting.waiter).collect();
        (expired, !self.waiting.is_empty())
    }

    /// What inspect shows of the table, in one pass over it (inspect holds the state lock,
    /// which the dispatcher needs for every message): per half, what it waits on and its
    /// handler runs in flight; and how many waits stay within this instance.
    pub(crate) fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for waiting in self.waiting.values() {
            counts.by_half.entry(waiting.invoker).or_default().waiting += 1;
            counts.within += usize::from(waiting.route == Route::Within);
        }
        for running in self.running.values() {
            counts.by_half.entry(running.target).or_default().running += 1;
        }
        counts
    }

    /// Requests `invoker` waits on.
    #[cfg(test)]
    pub(crate) fn waits_of(&self, invoker: Peer) -> usize {
        self.counts().of(invoker).waiting
    }

    /// Handler runs of `target` in flight.
    #[cfg(test)]
    pub(crate) fn runs_in(&self, target: Peer) -> usize {
        self.counts().of(target).running
    }

    /// Waiting requests that stay within this instance (what inspect shows as local).
    #[cfg(test)]
    pub(crate) fn waiting_within(&self) -> usize {
        self.counts().within
    }
}

/// One half's requests in flight, as inspect counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HalfCounts {
    /// Requests it waits on, whichever way they went.
    pub(crate) waiting: usize,
    /// Runs of its handlers in flight.
    pub(crate) running: usize,
}

/// The request table as inspect counts it (see [`Requests::counts`]).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    by_half: HashMap<Peer, HalfCounts>,
    /// Waits that stay within this instance.
    pub(crate) within: usize,
}

impl Counts {
    /// The counts of half `peer` (zero if it has nothing in flight).
    pub(crate) fn of(&self, peer: Peer) -> HalfCounts {
        self.by_half.get(&peer).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::PEER_HOST;

    fn request(id: u64, invoker: Peer, target: Peer, route: Route) -> Outgoing {
        Outgoing { id, invoker, target, route, ticks: NO_TIMEOUT }
    }

    fn incoming(origin: Peer, target: Peer, id: u64, route: Route) -> Incoming {
        Incoming { origin, target, id, route }
    }

    fn kind_of(receiver: &mut oneshot::Receiver<Answer>) -> Option<InvokeErrorKind> {
        match receiver.try_recv() {
            Ok(Answer::Reply(reply)) => reply.into_result("c").err().map(|error| error.kind),
            _ => None,
        }
    }

    #[test]
    fn a_reply_ends_only_its_invokers_own_wait() {
        let mut table = Requests::<&str>::default();
        let mut wait = table.wait_for(request(7, 1, PEER_MAIN, Route::Host));
        // Another half's reply with the same id, and a reply to an unknown id, match nothing.
        assert!(table.take_reply(2, 7, Route::Host).is_none());
        assert!(table.take_reply(1, 8, Route::Host).is_none());
        // Nor does a reply that came the other way.
        assert!(table.take_reply(1, 7, Route::Within).is_none());
        assert!(table.is_waiting(1, 7));
        let waiter = table.take_reply(1, 7, Route::Host).expect("its own reply");
        waiter.answer(Answer::Reply(Reply::ok(vec![5]).into()));
        assert_eq!(wait.try_recv(), Ok(Answer::Reply(Reply::ok(vec![5]).into())));
        assert!(!table.is_waiting(1, 7));
        assert_eq!(table.waits_of(1), 0);
    }

    #[test]
    fn a_closing_half_fails_only_the_requests_within_that_involve_it() {
        let mut table = Requests::<&str>::default();
        let mut from_frame = table.wait_for(request(1, 1, PEER_MAIN, Route::Within));
        let mut to_frame = table.wait_for(request(2, PEER_MAIN, 1, Route::Within));
        let mut other_frame = table.wait_for(request(3, 2, PEER_MAIN, Route::Within));
        let mut through_host = table.wait_for(request(4, 1, PEER_MAIN, Route::Host));
        table.run(incoming(1, PEER_MAIN, 1, Route::Within), "main serves frame 1");
        table.run(incoming(2, PEER_MAIN, 3, Route::Within), "main serves frame 2");
        table.run(incoming(PEER_HOST, 1, 9, Route::Host), "frame 1 serves the host");

        let failed = table.fail_involving(1);
        assert_eq!(failed.tasks, ["main serves frame 1"]);
        assert_eq!(failed.waiters.len(), 2);
        failed.waiters.into_iter().for_each(|waiter| waiter.fail(InvokeErrorKind::FrameClosed));
        assert_eq!(kind_of(&mut from_frame), Some(InvokeErrorKind::FrameClosed));
        assert_eq!(kind_of(&mut to_frame), Some(InvokeErrorKind::FrameClosed));
        // Frame 2's request, and the ones the host routed (it fails them), are left.
        assert!(other_frame.try_recv().is_err() && through_host.try_recv().is_err());
        assert!(table.is_waiting(2, 3) && table.is_waiting(1, 4));
        assert_eq!((table.runs_in(PEER_MAIN), table.runs_in(1)), (1, 1));
        assert_eq!(table.waiting_within(), 1);

        // Stopping routing takes the rest of what stays within, nothing of the host's.
        let failed = table.fail_within();
        assert_eq!((failed.waiters.len(), failed.tasks), (1, vec!["main serves frame 2"]));
        assert!(table.is_waiting(1, 4));
        assert_eq!(table.runs_in(1), 1);
    }

    #[test]
    fn a_removed_half_takes_its_waits_and_its_handler_runs_whatever_the_route() {
        let mut table = Requests::<u32>::default();
        let _a = table.wait_for(request(1, 1, PEER_MAIN, Route::Host));
        let _b = table.wait_for(request(2, 1, PEER_MAIN, Route::Within));
        let _c = table.wait_for(request(3, PEER_MAIN, 2, Route::Host));
        table.run(incoming(PEER_HOST, 1, 5, Route::Host), 10);
        table.run(incoming(PEER_MAIN, 2, 6, Route::Within), 20);
        let taken = table.take_half(1);
        assert_eq!((taken.waiters.len(), taken.tasks), (2, vec![10]));
        assert_eq!((table.waits_of(1), table.waits_of(PEER_MAIN), table.runs_in(2)), (0, 1, 1));
        assert_eq!(table.take_waits_of(PEER_MAIN).len(), 1);
        assert_eq!(table.waits_of(PEER_MAIN), 0);
    }

    #[test]
    fn a_cancel_stops_only_the_run_its_sender_started_at_that_target() {
        let mut table = Requests::<u32>::default();
        table.run(incoming(1, PEER_MAIN, 4, Route::Host), 1);
        assert_eq!(table.cancel(2, PEER_MAIN, 4, Route::Host), None);
        assert_eq!(table.cancel(1, 3, 4, Route::Host), None);
        assert_eq!(table.cancel(1, PEER_MAIN, 4, Route::Within), None);
        assert_eq!(table.cancel(1, PEER_MAIN, 4, Route::Host), Some(1));
        assert_eq!(table.cancel(1, PEER_MAIN, 4, Route::Host), None);
        table.run(incoming(1, PEER_MAIN, 5, Route::Host), 2);
        table.finish(&incoming(1, PEER_MAIN, 5, Route::Host));
        assert_eq!(table.runs_in(PEER_MAIN), 0);
        // A run that ends takes out its own entry, not another's under the same origin and id.
        table.run(incoming(PEER_HOST, 1, 6, Route::Host), 3);
        table.finish(&incoming(PEER_HOST, PEER_MAIN, 6, Route::Host));
        assert_eq!(table.cancel(PEER_HOST, 1, 6, Route::Host), Some(3));
    }

    #[test]
    fn inspect_counts_every_halfs_waits_and_runs_in_one_pass() {
        let mut table = Requests::<u32>::default();
        let _a = table.wait_for(request(1, 1, PEER_MAIN, Route::Within));
        let _b = table.wait_for(request(2, 1, PEER_MAIN, Route::Host));
        let _c = table.wait_for(request(3, PEER_MAIN, 2, Route::Within));
        table.run(incoming(1, PEER_MAIN, 1, Route::Within), 10);
        table.run(incoming(PEER_HOST, 2, 8, Route::Host), 20);
        table.run(incoming(PEER_HOST, 2, 9, Route::Host), 30);
        let counts = table.counts();
        assert_eq!(counts.of(1), HalfCounts { waiting: 2, running: 0 });
        assert_eq!(counts.of(PEER_MAIN), HalfCounts { waiting: 1, running: 1 });
        assert_eq!(counts.of(2), HalfCounts { waiting: 0, running: 2 });
        assert_eq!(counts.of(3), HalfCounts::default());
        assert_eq!(counts.within, 2);
    }

    #[test]
    fn the_sweep_takes_each_wait_when_its_ticks_run_out() {
        let mut table = Requests::<u32>::default();
        let mut soon = table.wait_for(Outgoing { ticks: 1, ..request(1, 1, PEER_MAIN, Route::Host) });
        let _later = table.wait_for(Outgoing { ticks: 2, ..request(2, 1, PEER_MAIN, Route::Host) });
        let _never = table.wait_for(request(3, 1, PEER_MAIN, Route::Host));
        let (expired, waiting) = table.sweep();
        assert_eq!((expired.len(), waiting), (1, true));
        expired.into_iter().for_each(|waiter| waiter.answer(Answer::TimedOut));
        assert_eq!(soon.try_recv(), Ok(Answer::TimedOut));
        let (expired, waiting) = table.sweep();
        assert_eq!((expired.len(), waiting), (1, true));
        // The one without a timeout is never taken; once forgotten, nothing waits.
        assert_eq!(table.sweep().0.len(), 0);
        table.forget(3);
        let (expired, waiting) = table.sweep();
        assert!(expired.is_empty() && !waiting);
    }
}
