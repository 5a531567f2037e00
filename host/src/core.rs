//! State shared by everything of one `Host`: requests in flight, the host's own waiters, and
//! what embedders can watch.

use foldhash::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard, PoisonError};

use extension_api::abi::Peer;
use tokio::sync::{broadcast, oneshot};

use crate::events::{HostEvent, LogRecord, ObservedBroadcast};

/// Locks a mutex, tolerating poisoning: host bookkeeping stays usable after a panic elsewhere.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A reply to a request the host itself made.
#[derive(Debug)]
pub(crate) struct HostReply {
    pub(crate) status: u32,
    pub(crate) payload: Vec<u8>,
}

pub(crate) struct Core {
    /// Requests in flight: (namespace, origin, request id) -> target.
    pub(crate) pending: Mutex<HashMap<(u64, Peer, u64), Peer>>,
    /// Requests the host made (console, harness): (namespace, request id) -> waiter.
    pub(crate) waiters: Mutex<HashMap<(u64, u64), oneshot::Sender<HostReply>>>,
    pub(crate) next_request: AtomicU64,
    pub(crate) logs: broadcast::Sender<LogRecord>,
    pub(crate) broadcasts: broadcast::Sender<ObservedBroadcast>,
    pub(crate) events: broadcast::Sender<HostEvent>,
}

impl Core {
    pub(crate) fn new() -> Core {
        Core {
            pending: Mutex::new(HashMap::default()),
            waiters: Mutex::new(HashMap::default()),
            next_request: AtomicU64::new(1),
            logs: broadcast::channel(4096).0,
            broadcasts: broadcast::channel(4096).0,
            events: broadcast::channel(256).0,
        }
    }

    pub(crate) fn pending_for(&self, namespace: u64) -> usize {
        lock(&self.pending).keys().filter(|(k, _, _)| *k == namespace).count()
    }
}
