//! The host's request table: one per namespace (a field of its link). Every request that
//! passes through the host is recorded here from its send to its reply, with its route (who
//! asked, who answers, and whether the host itself waits on it), so that none waits forever:
//! every way a request ends (a reply, a cancel, a refusal, a failure) takes it out through one
//! of these methods. Plain bookkeeping: it sends nothing, and knows nothing of endpoints or
//! transports.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use extension_api::abi::{PEER_HOST, Peer};
use extension_api::message::Reply;
use foldhash::HashMap;
use tokio::sync::oneshot;

use crate::core::lock;

/// Where a request goes: recorded when it is routed, matched by its reply and its cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    /// The half that asked (or [`PEER_HOST`]).
    pub(crate) origin: Peer,
    /// The half that answers.
    pub(crate) target: Peer,
    /// The origin's number for it.
    pub(crate) request_id: u64,
}

/// Where the host itself waits for the reply to one of its own requests.
pub(crate) type HostWaiter = oneshot::Sender<Reply>;

/// A request taken out of the table that did not end in its reply: the route, for the error
/// reply to its origin and the cancel to its target, and the host's waiter if it was the
/// host's request.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) route: Route,
    pub(crate) waiter: Option<HostWaiter>,
}

/// Why a request was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotRecorded {
    /// The namespace stopped routing (deactivation started).
    #[error("the namespace no longer routes")]
    Closed,
    /// The target stopped running where it was found (its frame closed meanwhile).
    #[error("the target half no longer runs there")]
    Unplaced,
}

/// The requests in flight of one namespace.
pub(crate) struct Requests {
    table: Mutex<Table>,
    /// A copy of `Table::open` for lock-free checks; changed only under the table's lock.
    open: AtomicBool,
    /// The host's own request numbers (its origin is [`PEER_HOST`]).
    next_host_request: AtomicU64,
}

struct Table {
    /// False once routing stopped: nothing more is recorded.
    open: bool,
    /// (origin, request id) -> what is known of the request.
    entries: HashMap<(Peer, u64), Entry>,
}

#[derive(Debug)]
struct Entry {
    target: Peer,
    waiter: Option<HostWaiter>,
}

impl Default for Requests {
    fn default() -> Self {
        Requests {
            table: Mutex::new(Table { open: true, entries: HashMap::default() }),
            open: AtomicBool::new(true),
            next_host_request: AtomicU64::new(1),
        }
    }
}

impl Requests {
    /// Whether requests are still recorded (routing has not stopped).
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Stops recording for good. A request is either recorded before this (and failed by
    /// whoever closes, with [`Requests::end_where`]) or refused after: none slips in between.
    pub(crate) fn close(&self) {
        let mut table = lock(&self.table);
        table.open = false;
        self.open.store(false, Ordering::Release);
    }

    /// A number for a request the host makes itself.
    pub(crate) fn next_host_request(&self) -> u64 {
        self.next_host_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a request of a half. `placed` says, under the table's lock, whether its target
    /// still runs where it is about to be delivered: see [`Requests::exclusive`].
    pub(crate) fn record(&self, route: Route, placed: impl FnOnce() -> bool) -> Result<(), NotRecorded> {
        self.insert(route, None, placed)
    }

    /// Records a request of the host's own ([`PEER_HOST`] is its origin), whose reply or
    /// failure goes to `waiter`.
    pub(crate) fn record_host(
        &self,
        route: Route,
        waiter: HostWaiter,
        placed: impl FnOnce() -> bool,
    ) -> Result<(), NotRecorded> {
        debug_assert_eq!(route.origin, PEER_HOST);
        self.insert(route, Some(waiter), placed)
    }

    fn insert(
        &self,
        route: Route,
        waiter: Option<HostWaiter>,
        placed: impl FnOnce() -> bool,
    ) -> Result<(), NotRecorded> {
        let mut table = lock(&self.table);
        if !table.open {
            return Err(NotRecorded::Closed);
        }
        if !placed() {
            return Err(NotRecorded::Unplaced);
        }
        table.entries.insert((route.origin, route.request_id), Entry { target: route.target, waiter });
        Ok(())
    }

    /// Runs `change` (a half leaving an endpoint) under the table's lock, so that no request
    /// to that half is recorded after it: a request is recorded only where its target is still
    /// placed ([`Requests::record`]'s check), and one recorded before is there for the caller
    /// to fail.
    pub(crate) fn exclusive<R>(&self, change: impl FnOnce() -> R) -> R {
        let _table = lock(&self.table);
        change()
    }

    /// Takes out a request that could not be delivered after all (its sender is told by the
    /// status it gets back).
    pub(crate) fn unrecord(&self, origin: Peer, request_id: u64) -> Option<Ended> {
        self.take(origin, request_id)
    }

    /// Matches a reply from `replier` to `invoker`'s request `request_id`. Only the half the
    /// request went to may answer it: anything else (late, forged) is `None`, and leaves the
    /// real request as it was. `Some` carries the host's waiter if the host asked.
    pub(crate) fn answer(&self, replier: Peer, invoker: Peer, request_id: u64) -> Option<Option<HostWaiter>> {
        let mut table = lock(&self.table);
        match table.entries.entry((invoker, request_id)) {
            std::collections::hash_map::Entry::Occupied(entry) if entry.get().target == replier => {
                Some(entry.remove().waiter)
            }
            _ => None,
        }
    }

    /// Takes out `origin`'s request `request_id` that its origin gave up (a cancel): its target
    /// is to be told.
    pub(crate) fn withdraw(&self, origin: Peer, request_id: u64) -> Option<Route> {
        self.take(origin, request_id).map(|ended| ended.route)
    }

    /// Takes out every request whose (origin, target) `matches`: each is to fail.
    pub(crate) fn end_where(&self, matches: impl Fn(Peer, Peer) -> bool) -> Vec<Ended> {
        let mut table = lock(&self.table);
        let keys: Vec<(Peer, u64)> = table
            .entries
            .iter()
            .filter(|((origin, _), entry)| matches(*origin, entry.target))
            .map(|(key, _)| *key)
            .collect();
        keys.into_iter()
            .filter_map(|(origin, request_id)| {
                let entry = table.entries.remove(&(origin, request_id))?;
                Some(Ended { route: Route { origin, target: entry.target, request_id }, waiter: entry.waiter })
            })
            .collect()
    }

    /// How many requests are in flight (inspect's `pending_requests`).
    pub(crate) fn len(&self) -> usize {
        lock(&self.table).entries.len()
    }

    fn take(&self, origin: Peer, request_id: u64) -> Option<Ended> {
        let entry = lock(&self.table).entries.remove(&(origin, request_id))?;
        Some(Ended { route: Route { origin, target: entry.target, request_id }, waiter: entry.waiter })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use extension_api::abi::PEER_MAIN;

    fn route(origin: Peer, target: Peer, request_id: u64) -> Route {
        Route { origin, target, request_id }
    }

    #[test]
    fn only_the_target_answers_a_request() {
        let requests = Requests::default();
        requests.record(route(3, PEER_MAIN, 7), || true).unwrap();
        // Another half, or a reply to another request, leaves it waiting.
        assert!(requests.answer(4, 3, 7).is_none());
        assert!(requests.answer(PEER_MAIN, 3, 8).is_none());
        assert!(requests.answer(PEER_MAIN, 4, 7).is_none());
        assert_eq!(requests.len(), 1);
        // The target's reply matches once; a second (a duplicate) does not.
        assert!(matches!(requests.answer(PEER_MAIN, 3, 7), Some(None)));
        assert!(requests.answer(PEER_MAIN, 3, 7).is_none());
        assert_eq!(requests.len(), 0);
    }

    #[test]
    fn the_hosts_waiter_comes_back_with_its_reply_or_its_failure() {
        let requests = Requests::default();
        let id = requests.next_host_request();
        let (waiter, mut receiver) = oneshot::channel();
        requests.record_host(route(PEER_HOST, PEER_MAIN, id), waiter, || true).unwrap();
        let waiter = requests.answer(PEER_MAIN, PEER_HOST, id).flatten().expect("the host waits on it");
        waiter.send(Reply::ok(vec![1])).unwrap();
        assert_eq!(receiver.try_recv().unwrap(), Reply::ok(vec![1]));

        let next = requests.next_host_request();
        assert_ne!(next, id);
        let (waiter, _receiver) = oneshot::channel();
        requests.record_host(route(PEER_HOST, 5, next), waiter, || true).unwrap();
        let ended = requests.end_where(|_, target| target == 5);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].route, route(PEER_HOST, 5, next));
        assert!(ended[0].waiter.is_some());
    }

    #[test]
    fn a_cancel_takes_out_its_origins_request_only() {
        let requests = Requests::default();
        requests.record(route(PEER_MAIN, 2, 1), || true).unwrap();
        requests.record(route(3, PEER_MAIN, 1), || true).unwrap();
        assert_eq!(requests.withdraw(PEER_MAIN, 1), Some(route(PEER_MAIN, 2, 1)));
        assert_eq!(requests.withdraw(PEER_MAIN, 1), None);
        assert_eq!(requests.withdraw(2, 1), None);
        assert_eq!(requests.len(), 1);
        assert!(requests.unrecord(3, 1).is_some());
        assert_eq!(requests.len(), 0);
    }

    #[test]
    fn failing_takes_out_exactly_the_matching_requests() {
        let requests = Requests::default();
        requests.record(route(2, PEER_MAIN, 1), || true).unwrap();
        requests.record(route(PEER_MAIN, 2, 1), || true).unwrap();
        requests.record(route(3, PEER_MAIN, 1), || true).unwrap();
        let mut ended: Vec<Route> =
            requests.end_where(|origin, target| origin == 2 || target == 2).into_iter().map(|e| e.route).collect();
        ended.sort_by_key(|route| route.origin);
        assert_eq!(ended, vec![route(PEER_MAIN, 2, 1), route(2, PEER_MAIN, 1)]);
        assert_eq!(requests.len(), 1);
        assert!(requests.answer(PEER_MAIN, 3, 1).is_some());
    }

    #[test]
    fn nothing_is_recorded_once_closed_or_where_the_target_left() {
        let requests = Requests::default();
        assert_eq!(requests.record(route(2, PEER_MAIN, 1), || false), Err(NotRecorded::Unplaced));
        assert!(requests.is_open());
        requests.close();
        assert!(!requests.is_open());
        assert_eq!(requests.record(route(2, PEER_MAIN, 2), || true), Err(NotRecorded::Closed));
        assert_eq!(requests.len(), 0);
    }
}
