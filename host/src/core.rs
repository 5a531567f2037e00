//! State shared by everything of one `Host`: what embedders can watch. (Requests in flight
//! are each namespace's: see `requests.rs`.)

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::broadcast;

use crate::events::{HostEvent, LogRecord, ObservedBroadcast};

/// Locks a mutex, tolerating poisoning: host bookkeeping stays usable after a panic elsewhere.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct Core {
    pub(crate) logs: broadcast::Sender<LogRecord>,
    pub(crate) broadcasts: broadcast::Sender<ObservedBroadcast>,
    pub(crate) events: broadcast::Sender<HostEvent>,
}

impl Core {
    pub(crate) fn new() -> Core {
        Core {
            logs: broadcast::channel(4096).0,
            broadcasts: broadcast::channel(4096).0,
            events: broadcast::channel(256).0,
        }
    }
}
