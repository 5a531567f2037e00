//! Disposers: what `listen`, `handle`, `watch` and `expose` return.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::half::HalfHandle;

/// Removes a registration (a listener, a handler, a store watcher, or a group of them).
/// Disposing twice is harmless; dropping a `Disposer` without calling [`Disposer::dispose`]
/// keeps the registration (everything is removed on deactivate anyway).
pub struct Disposer {
    target: Target,
    disposed: AtomicBool,
}

enum Target {
    One { half: HalfHandle, registration: Registration },
    Group(Vec<Disposer>),
}

#[derive(Debug)]
pub(crate) enum Registration {
    Listener { channel: String, id: u64 },
    Handler { channel: String, id: u64 },
    Watcher { id: u64 },
}

impl Disposer {
    pub(crate) fn new(half: HalfHandle, registration: Registration) -> Disposer {
        Disposer { target: Target::One { half, registration }, disposed: AtomicBool::new(false) }
    }

    /// One disposer for several registrations (exposed functions use it for their handlers).
    pub fn group(disposers: Vec<Disposer>) -> Disposer {
        Disposer { target: Target::Group(disposers), disposed: AtomicBool::new(false) }
    }

    /// Removes the registration now; later calls do nothing.
    pub fn dispose(&self) {
        if self.disposed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (half, registration) = match &self.target {
            Target::Group(disposers) => {
                disposers.iter().for_each(Disposer::dispose);
                return;
            }
            Target::One { half, registration } => (half, registration),
        };
        let Some(shared) = half.upgrade() else { return };
        let removed: Option<Box<dyn Send>> = {
            let mut state = shared.state();
            let Some(half) = state.half_mut(half.peer(), half.generation()) else {
                return;
            };
            match registration {
                Registration::Listener { channel, id } => {
                    half.unlisten(channel, *id).map(|listener| Box::new(listener) as Box<dyn Send>)
                }
                Registration::Handler { channel, id } => {
                    half.unhandle(channel, *id).map(|handler| Box::new(handler) as Box<dyn Send>)
                }
                Registration::Watcher { id } => half.unwatch(*id).map(|watcher| Box::new(watcher) as Box<dyn Send>),
            }
        };
        // Dropped outside the lock: it may run the author's destructors.
        drop(removed);
    }

    /// Whether `dispose` has been called.
    pub fn is_disposed(&self) -> bool {
        self.disposed.load(Ordering::Acquire)
    }
}

impl fmt::Debug for Disposer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Disposer");
        match &self.target {
            Target::One { registration, .. } => debug.field("registration", registration),
            Target::Group(disposers) => debug.field("group", disposers),
        };
        debug.field("disposed", &self.is_disposed()).finish()
    }
}
