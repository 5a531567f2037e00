//! The routing tables of one instance: per half, its listeners, handlers, pending invokes,
//! running handler tasks and spawned tasks.

use std::collections::BTreeMap;

use foldhash::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::InvokeErrorKind;
use crate::abi::Peer;
use crate::ipc::{Sender, StoreChange, StoreError};
use crate::wire::{ErrorPayload, HalfSnapshot};

/// A broadcast as a listener sees it before decoding.
pub(crate) struct RawEvent<'a> {
    pub(crate) sender: Sender,
    pub(crate) channel: &'a str,
    pub(crate) payload: &'a [u8],
}

pub(crate) type ListenerFn = Arc<dyn Fn(&RawEvent<'_>) + Send + Sync>;

/// What a handler produces: the encoded reply, or an error kind with its payload.
pub(crate) type HandlerResult = Result<Vec<u8>, (InvokeErrorKind, ErrorPayload)>;
pub(crate) type HandlerFn = Arc<dyn Fn(Vec<u8>, Sender) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// The answer to a pending invoke: a status (0 or an error code) and its payload.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u32,
    pub(crate) payload: Vec<u8>,
}

/// An invoke a half waits on.
pub(crate) struct Pending {
    pub(crate) reply: oneshot::Sender<Reply>,
    /// The half it went to.
    pub(crate) target: Peer,
    /// Sent within this instance without the host (see `Shared::is_local_route`): this
    /// instance, not the host, fails it when a half involved goes away.
    pub(crate) local: bool,
    /// Timeout sweeps left before it times out (see `runtime::instance::sweep_timeouts`).
    pub(crate) ticks_left: u32,
}

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

pub(crate) struct Half {
    pub(crate) generation: u64,
    /// By channel: each listener's registration id and function, and the channel's number in
    /// `channels` (found at registration, not per broadcast).
    pub(crate) listeners: HashMap<String, Vec<(u64, ListenerFn, usize)>>,
    /// By channel: the registration's id, the handler, and the channel's number in `channels`
    /// (found once, at registration, not per request).
    pub(crate) handlers: HashMap<String, (u64, HandlerFn, usize)>,
    pub(crate) pending: HashMap<u64, Pending>,
    /// Set when the half starts closing: no new request within the instance reaches or
    /// leaves it.
    pub(crate) closing: bool,
    /// Handler tasks in flight, by (origin, request id), so a cancel can stop them.
    pub(crate) running: HashMap<(Peer, u64), AbortHandle>,
    pub(crate) tasks: HashMap<u64, AbortHandle>,
    pub(crate) user: Option<Deactivator>,
    /// The task running the half's `activate`, aborted if the half goes away first.
    pub(crate) activation: Option<AbortHandle>,
    /// Its replica, watchers and writes in flight of the store and of the persisted tier.
    pub(crate) tiers: [HalfTier; 2],
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
            pending: HashMap::default(),
            closing: false,
            running: HashMap::default(),
            tasks: HashMap::default(),
            user: None,
            activation: None,
            tiers: Default::default(),
        }
    }

    pub(crate) fn snapshot(&self, peer: Peer) -> HalfSnapshot {
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
            pending_requests: self.pending.len(),
            running_handlers: self.running.len(),
            tasks: self.tasks.len(),
            store_keys: self.tiers[0].replica.values().len(),
            store_seq: self.tiers[0].replica.seq,
            watchers: self.tiers.iter().map(|tier| tier.watchers.len()).sum(),
            storage_keys: self.tiers[1].replica.values().len(),
            storage_seq: self.tiers[1].replica.seq,
        }
    }

    /// Stops everything the half runs. Pending invokes see their sender dropped. Call it
    /// outside the state lock: what it drops may run author destructors.
    pub(crate) fn shut_down(self) {
        for abort in self.running.values().chain(self.tasks.values()).chain(self.activation.iter()) {
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
    /// The host stopped routing for the extension (it is deactivating): no request within
    /// the instance is started any more.
    pub(crate) stopped: bool,
    /// The timeout sweeper is running (some request waits); it stops when none does.
    pub(crate) sweeping: bool,
    /// Renderer halves this instance ever started (reloads included): while it is one, a plain
    /// task or thread can only belong to that half (see `context::only_renderer`).
    pub(crate) renderers_started: u64,
    /// What each channel received (see `runtime::stats`).
    pub(crate) channels: super::stats::Channels,
}

impl Half {
    pub(crate) fn tier(&mut self, tier: Tier) -> &mut HalfTier {
        &mut self.tiers[tier as usize]
    }
}

impl State {
    /// The half `peer`, if it is still generation `generation`.
    pub(crate) fn half_mut(&mut self, peer: Peer, generation: u64) -> Option<&mut Half> {
        self.halves.get_mut(&peer).filter(|half| half.generation == generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::{STORE_ENTRY_OVERHEAD, store_entry_size};

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
