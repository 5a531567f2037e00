//! The tables of one instance: per half, its listeners, handlers, spawned tasks and store
//! replicas; and the instance's requests in flight (`runtime::requests`).

use std::collections::BTreeMap;

use foldhash::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::InvokeErrorKind;
use crate::abi::Peer;
use crate::ipc::{Sender, StoreChange, StoreError};
use crate::message;
use crate::runtime::payload::{Decodable, Payload};
use crate::runtime::requests::{Answer, Failed, HalfCounts, Outgoing, Requests, Route, Waiter};
use crate::wire::{ErrorPayload, HalfSnapshot};

/// A broadcast as a listener sees it before decoding.
pub(crate) struct RawEvent<'a> {
    pub(crate) sender: Sender,
    pub(crate) channel: &'a str,
    pub(crate) value: &'a Decodable,
}

pub(crate) type ListenerFn = Arc<dyn Fn(&RawEvent<'_>) + Send + Sync>;

/// What a handler produces: the encoded reply, or an error kind with its payload.
pub(crate) type HandlerResult = Result<Vec<u8>, (InvokeErrorKind, ErrorPayload)>;
/// A request handler: given the request's value, which it drops as soon as it has decoded it
/// (before its future first runs: a large value's memory, or the host's lease on it, is not
/// held while the reply is made, unless `Binary` values decoded from it share it), and its
/// sender.
pub(crate) type HandlerFn = Arc<dyn Fn(Payload, Sender) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

pub(crate) type WatcherFn = Arc<dyn Fn(&StoreChange) + Send + Sync>;

/// A store watcher: `key` `None` watches every key.
pub(crate) struct Watcher {
    pub(crate) id: u64,
    pub(crate) key: Option<String>,
    pub(crate) callback: WatcherFn,
}

/// A half's copy of the extension's store, and the last sequence number applied to it.
#[derive(Clone, Default)]
pub(crate) struct Replica {
    values: BTreeMap<String, Vec<u8>>,
    pub(crate) seq: u64,
    /// What the values count against [`crate::ipc::STORE_TOTAL_LIMIT`]: kept with `values`.
    bytes: usize,
}

impl Replica {
    pub(crate) fn new(values: BTreeMap<String, Vec<u8>>, seq: u64) -> Replica {
        let bytes = values.iter().map(|(key, value)| crate::ipc::store_entry_size(key, value)).sum();
        Replica { values, seq, bytes }
    }

    pub(crate) fn values(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.values
    }

    /// The store's size as [`crate::ipc::STORE_TOTAL_LIMIT`] counts it.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Writes `key` (`None` deletes it); returns the value it had.
    pub(crate) fn write(&mut self, key: &str, value: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let old = match value {
            Some(value) => {
                self.bytes += crate::ipc::store_entry_size(key, &value);
                self.values.insert(key.to_owned(), value)
            }
            None => self.values.remove(key),
        };
        if let Some(old) = &old {
            self.bytes -= crate::ipc::store_entry_size(key, old);
        }
        old
    }
}

/// The author's object for a half, type-erased: all we can do with it is deactivate it.
pub(crate) type Deactivator = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// A listener or handler as a half holds it: its registration id (what its disposer names),
/// the function, and its channel's number in `State::channels` (found once, at registration,
/// not per message).
pub(crate) struct Registered<F> {
    pub(crate) id: u64,
    pub(crate) callback: F,
    pub(crate) counters: usize,
}

/// One half (one generation of it) running in this instance: what it registered and runs.
/// The requests it waits on and serves are in [`State::requests`].
pub(crate) struct Half {
    generation: u64,
    /// By channel, in registration order.
    listeners: HashMap<String, Vec<Registered<ListenerFn>>>,
    /// By channel: one handler each.
    handlers: HashMap<String, Registered<HandlerFn>>,
    /// Set when the half starts closing: no new request within the instance reaches or
    /// leaves it.
    closing: bool,
    /// Its `spawn`ed tasks, by id.
    tasks: HashMap<u64, AbortHandle>,
    /// Its `deactivate`, once `activate` succeeded.
    user: Option<Deactivator>,
    /// The task running the half's `activate`, aborted if the half goes away first.
    activation: Option<AbortHandle>,
    /// Its replica, watchers and writes in flight of the store and of the persisted tier.
    tiers: [HalfTier; 2],
}

/// Which of the two stores: the ephemeral one or the persisted tier. Both replicate alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    /// `Main::store()`: cleared on deactivate.
    Store = 0,
    /// `Main::storage()`: persisted by the host, seeded at activation.
    Storage = 1,
}

/// A half's side of one store.
#[derive(Default)]
pub(crate) struct HalfTier {
    pub(crate) replica: Replica,
    pub(crate) watchers: Vec<Watcher>,
    /// Writes this half sent to main (or, in main, to the host) and waits to see applied.
    pub(crate) pending: HashMap<u64, oneshot::Sender<Result<(), StoreError>>>,
}

/// An instance's side of one store, beyond its halves.
#[derive(Default)]
pub(crate) struct ProcessTier {
    /// In an instance without a main half: the process's replica, which frames opened here
    /// start from (for the persisted tier, main's instance too, until main starts). `None`
    /// until the host seeds it.
    pub(crate) replica: Option<Replica>,
    /// Updates that arrived before the seed or out of order, by sequence number.
    pub(crate) stash: BTreeMap<u64, crate::wire::StoreUpdate>,
}

/// What an instance knows of the persisted tier beyond its replicas (see `runtime::storage`).
#[derive(Default)]
pub(crate) struct StorageState {
    /// Why the tier is unavailable this activation (the host could not open the database).
    pub(crate) unavailable: Option<String>,
    /// The host's limits, from the seed (0: not seeded yet).
    pub(crate) value_limit: u64,
    pub(crate) total_limit: u64,
    /// The extension version that last ran with this data, before this activation.
    pub(crate) stored_version: Option<String>,
    /// In main: writes sent to the host and not yet answered, in order.
    pub(crate) commits: std::collections::VecDeque<crate::runtime::storage::Commit>,
}

impl Half {
    pub(crate) fn new(generation: u64) -> Half {
        Half {
            generation,
            listeners: HashMap::default(),
            handlers: HashMap::default(),
            closing: false,
            tasks: HashMap::default(),
            user: None,
            activation: None,
            tiers: Default::default(),
        }
    }

    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// From now on no request within the instance reaches or leaves the half.
    pub(crate) fn start_closing(&mut self) {
        self.closing = true;
    }

    pub(crate) fn listen(&mut self, channel: String, listener: Registered<ListenerFn>) {
        self.listeners.entry(channel).or_default().push(listener);
    }

    /// The listeners on `channel`, in registration order.
    #[inline]
    pub(crate) fn listeners(&self, channel: &str) -> Option<&[Registered<ListenerFn>]> {
        self.listeners.get(channel).map(Vec::as_slice)
    }

    /// Removes listener `id` from `channel`; returns it, to be dropped outside the lock.
    pub(crate) fn unlisten(&mut self, channel: &str, id: u64) -> Option<ListenerFn> {
        let list = self.listeners.get_mut(channel)?;
        let removed = list.iter().position(|each| each.id == id).map(|at| list.remove(at).callback);
        if list.is_empty() {
            self.listeners.remove(channel);
        }
        removed
    }

    /// Registers the handler of `channel`; `Err` gives the channel back if it has one.
    pub(crate) fn handle(&mut self, channel: String, handler: Registered<HandlerFn>) -> Result<(), String> {
        if self.handlers.contains_key(&channel) {
            return Err(channel);
        }
        self.handlers.insert(channel, handler);
        Ok(())
    }

    #[inline]
    pub(crate) fn handler(&self, channel: &str) -> Option<&Registered<HandlerFn>> {
        self.handlers.get(channel)
    }

    /// Removes the handler of `channel` if it is registration `id`; returns it, to be dropped
    /// outside the lock.
    pub(crate) fn unhandle(&mut self, channel: &str, id: u64) -> Option<HandlerFn> {
        if self.handlers.get(channel).is_none_or(|handler| handler.id != id) {
            return None;
        }
        self.handlers.remove(channel).map(|handler| handler.callback)
    }

    /// Removes store watcher `id` (ids are unique across both tiers).
    pub(crate) fn unwatch(&mut self, id: u64) -> Option<Watcher> {
        self.tiers.iter_mut().find_map(|tier| {
            let at = tier.watchers.iter().position(|watcher| watcher.id == id)?;
            Some(tier.watchers.remove(at))
        })
    }

    /// Records a task the half spawned, stopped with the half.
    pub(crate) fn add_task(&mut self, id: u64, task: AbortHandle) {
        self.tasks.insert(id, task);
    }

    pub(crate) fn finish_task(&mut self, id: u64) {
        self.tasks.remove(&id);
    }

    /// Records the task running the half's `activate`.
    pub(crate) fn activating(&mut self, task: AbortHandle) {
        self.activation = Some(task);
    }

    /// `activate` succeeded: the half keeps the author's object until it deactivates.
    pub(crate) fn activated(&mut self, user: Deactivator) {
        self.user = Some(user);
        self.activation = None;
    }

    /// The author's `deactivate`, taken to run (once).
    pub(crate) fn take_deactivator(&mut self) -> Option<Deactivator> {
        self.user.take()
    }

    pub(crate) fn tier(&mut self, tier: Tier) -> &mut HalfTier {
        &mut self.tiers[tier as usize]
    }

    pub(crate) fn replica(&self, tier: Tier) -> &Replica {
        &self.tiers[tier as usize].replica
    }

    /// The half as inspect shows it; `requests` is what it waits on and serves.
    pub(crate) fn snapshot(&self, peer: Peer, requests: HalfCounts) -> HalfSnapshot {
        let mut handlers: Vec<String> = self.handlers.keys().cloned().collect();
        handlers.sort();
        HalfSnapshot {
            half: crate::message::half_of(peer),
            listeners: self
                .listeners
                .iter()
                .filter(|(_, list)| !list.is_empty())
                .map(|(channel, list)| (channel.clone(), list.len()))
                .collect(),
            handlers,
            pending_requests: requests.waiting,
            running_handlers: requests.running,
            tasks: self.tasks.len(),
            store_keys: self.replica(Tier::Store).values().len(),
            store_seq: self.replica(Tier::Store).seq,
            watchers: self.tiers.iter().map(|tier| tier.watchers.len()).sum(),
            storage_keys: self.replica(Tier::Storage).values().len(),
            storage_seq: self.replica(Tier::Storage).seq,
        }
    }

    /// Stops everything the half runs (its handler runs are stopped by the caller, from the
    /// request table). Call it outside the state lock: what it drops may run author
    /// destructors.
    pub(crate) fn shut_down(self) {
        for abort in self.tasks.values().chain(self.activation.iter()) {
            abort.abort();
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) halves: HashMap<Peer, Half>,
    /// Frames where the extension's renderer half is open, in any process (host-maintained).
    pub(crate) frames: Vec<Peer>,
    /// Per store: the process replica and the updates waiting for their turn.
    pub(crate) process: [ProcessTier; 2],
    pub(crate) storage: StorageState,
    /// Renderer halves this instance ever started (reloads included): while it is one, a plain
    /// task or thread can only belong to that half (see `context::only_renderer`).
    pub(crate) renderers_started: u64,
    /// What each channel received (see `runtime::stats`).
    pub(crate) channels: super::stats::Channels,
    /// Every request in flight here: waited on by a half, or served by one.
    pub(crate) requests: Requests<AbortHandle>,
    /// Requests between two halves here may skip the host (see `InstanceConfig::route_within`).
    within: bool,
    /// The host stopped routing for the extension (it is deactivating): no request within
    /// the instance is started any more.
    stopped: bool,
    /// The timeout sweeper is running (some request waits); it stops when none does.
    sweeping: bool,
}

impl State {
    /// The half `peer`, if it is still generation `generation`.
    #[inline]
    pub(crate) fn half_mut(&mut self, peer: Peer, generation: u64) -> Option<&mut Half> {
        self.halves.get_mut(&peer).filter(|half| half.generation == generation)
    }

    /// Whether the half `peer` is still generation `generation`.
    #[inline]
    pub(crate) fn is_current(&self, peer: Peer, generation: u64) -> bool {
        self.halves.get(&peer).is_some_and(|half| half.generation == generation)
    }

    /// An instance whose requests between its own halves skip the host (in the host's
    /// process, where nothing it sends can overtake them through the host).
    pub(crate) fn routing_within() -> State {
        State { within: true, ..State::default() }
    }

    /// Which way a request from `origin` to `target` goes. It stays within this instance when
    /// the host would route it ([`message::is_request_route`], the host's own rule), this
    /// instance routes within, it is routing at all, and both halves run here and are not
    /// closing. Such a request never passes through the host: it goes straight into this
    /// instance's mailbox, and this instance fails it when a half involved goes away, as the
    /// host does for the requests it routes.
    #[inline]
    pub(crate) fn route(&self, origin: Peer, target: Peer) -> Route {
        let open = |peer| self.halves.get(&peer).is_some_and(|half: &Half| !half.closing);
        let within = self.within && !self.stopped && message::is_request_route(origin, target);
        if within && open(origin) && open(target) { Route::Within } else { Route::Host }
    }

    /// Records a request a half sends; the flag says the sweeper must be woken (it was idle).
    #[inline]
    pub(crate) fn start_request(&mut self, request: Outgoing) -> (oneshot::Receiver<Answer>, bool) {
        let receiver = self.requests.wait_for(request);
        (receiver, !std::mem::replace(&mut self.sweeping, true))
    }

    /// One timeout sweep (see [`Requests::sweep`]); the sweeper goes idle when nothing waits.
    pub(crate) fn sweep_requests(&mut self) -> (Vec<Waiter>, bool) {
        let (expired, waiting) = self.requests.sweep();
        if !waiting {
            self.sweeping = false;
        }
        (expired, waiting)
    }

    /// The host stopped routing for the extension: nothing starts within the instance any
    /// more, and what is in flight there fails.
    pub(crate) fn stop_routing(&mut self) -> Failed<AbortHandle> {
        self.stopped = true;
        self.requests.fail_within()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{PEER_ALL, PEER_HOST, PEER_MAIN};
    use crate::ipc::{STORE_ENTRY_OVERHEAD, store_entry_size};
    use crate::runtime::requests::NO_TIMEOUT;

    /// An instance in the host's process running main and frames 1 and 2.
    fn in_process() -> State {
        let mut state = State::routing_within();
        for (peer, generation) in [(PEER_MAIN, 1), (1, 2), (2, 3)] {
            state.halves.insert(peer, Half::new(generation));
        }
        state
    }

    #[test]
    fn a_request_between_two_open_halves_here_stays_within() {
        let state = in_process();
        assert_eq!(state.route(1, PEER_MAIN), Route::Within);
        assert_eq!(state.route(PEER_MAIN, 2), Route::Within);
        // What is not a request by the host's rule goes to the host, which refuses it.
        for (origin, target) in [(1, 2), (PEER_MAIN, PEER_MAIN), (PEER_MAIN, PEER_ALL), (1, PEER_HOST)] {
            assert_eq!(state.route(origin, target), Route::Host, "{origin} -> {target}");
        }
        // A frame not here (another process) is reached through the host.
        assert_eq!(state.route(PEER_MAIN, 3), Route::Host);
        // An instance in a child process never routes within: a broadcast there goes through
        // the host, and a request skipping it would overtake it.
        let mut child = State::default();
        child.halves.insert(PEER_MAIN, Half::new(1));
        child.halves.insert(1, Half::new(2));
        assert_eq!(child.route(1, PEER_MAIN), Route::Host);
    }

    #[test]
    fn a_closing_half_or_a_stopped_extension_routes_nothing_within() {
        let mut state = in_process();
        state.halves.get_mut(&1).map(Half::start_closing);
        assert_eq!((state.route(1, PEER_MAIN), state.route(PEER_MAIN, 1)), (Route::Host, Route::Host));
        assert_eq!(state.route(PEER_MAIN, 2), Route::Within);

        let request = Outgoing { id: 5, invoker: 2, target: PEER_MAIN, route: Route::Within, ticks: NO_TIMEOUT };
        let (mut answer, wake_sweeper) = state.start_request(request);
        assert!(wake_sweeper);
        // The sweeper runs now: a second request does not wake it again.
        let request = Outgoing { id: 6, invoker: 2, target: PEER_MAIN, route: Route::Host, ticks: NO_TIMEOUT };
        let (_host_answer, wake_sweeper) = state.start_request(request);
        assert!(!wake_sweeper);

        let failed = state.stop_routing();
        assert_eq!(state.route(PEER_MAIN, 2), Route::Host);
        assert_eq!(failed.waiters.len(), 1);
        failed.waiters.into_iter().for_each(|waiter| waiter.fail(crate::InvokeErrorKind::Deactivated));
        assert!(matches!(answer.try_recv(), Ok(Answer::Reply(reply)) if reply.status != crate::abi::status::OK));
        // The host's request is the host's to fail.
        assert!(state.requests.is_waiting(2, 6));
        assert!(!state.requests.is_waiting(2, 5));
    }

    #[test]
    fn a_replica_counts_what_it_holds_through_every_write() {
        let mut replica = Replica::default();
        assert_eq!(replica.write("a", Some(vec![0; 10])), None);
        assert_eq!(replica.bytes(), 1 + 10 + STORE_ENTRY_OVERHEAD);
        // Overwriting replaces the old entry's count; deleting removes it.
        assert_eq!(replica.write("a", Some(vec![0; 3])), Some(vec![0; 10]));
        replica.write("bb", Some(vec![1; 5]));
        assert_eq!(replica.bytes(), store_entry_size("a", &[0; 3]) + store_entry_size("bb", &[1; 5]));
        assert_eq!(replica.write("a", None), Some(vec![0; 3]));
        assert_eq!(replica.write("missing", None), None);
        assert_eq!(replica.bytes(), store_entry_size("bb", &[1; 5]));
        // A seeded replica counts its snapshot.
        let seeded = Replica::new(replica.values().clone(), 7);
        assert_eq!((seeded.bytes(), seeded.seq), (replica.bytes(), 7));
    }
}
