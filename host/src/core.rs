//! State shared by everything of one `Host`: what embedders can watch. (Requests in flight
//! are each namespace's: see `requests.rs`.)

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

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
    /// Instances asking the watchdog to look at them (see `host/watchdog.rs`).
    pub(crate) attention: Attention,
}

/// The instances that asked the watchdog to look at them since it last looked (work arrived
/// while it was not looking: `wire::ATTENTION`), each with when it first asked, and what
/// wakes the watchdog.
#[derive(Default)]
pub(crate) struct Attention {
    asked: Mutex<HashMap<u64, Instant>>,
    wake: tokio::sync::Notify,
}

impl Attention {
    /// Instance `key` has work: the watchdog looks at it at its next look.
    pub(crate) fn ask(&self, key: u64) {
        lock(&self.asked).entry(key).or_insert_with(Instant::now);
        self.wake.notify_one();
    }

    /// Wakes the watchdog with no instance asking (so it sees the host going).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until something asks (at once if something asked since the last wait).
    pub(crate) async fn asked(&self) {
        self.wake.notified().await;
    }

    /// The instances that asked, and when; forgotten here.
    pub(crate) fn take(&self) -> HashMap<u64, Instant> {
        std::mem::take(&mut *lock(&self.asked))
    }

    /// Forgets every instance that asked (the watchdog stops: nothing is active, so none of
    /// them is looked at; an activation asks afresh for its own).
    pub(crate) fn clear(&self) {
        lock(&self.asked).clear();
    }
}

impl Core {
    pub(crate) fn new() -> Core {
        Core {
            logs: broadcast::channel(4096).0,
            broadcasts: broadcast::channel(4096).0,
            events: broadcast::channel(256).0,
            attention: Attention::default(),
        }
    }
}
