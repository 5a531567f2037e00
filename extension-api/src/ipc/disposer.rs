//! Disposers: what `listen`, `handle` and `watch` return.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;

use crate::abi::Peer;
use crate::runtime::Shared;

/// Removes a listener or handler. Disposing twice is harmless; dropping a `Disposer` without
/// calling [`Disposer::dispose`] keeps the registration (everything is removed on deactivate).
pub struct Disposer {
    pub(crate) shared: Weak<Shared>,
    pub(crate) peer: Peer,
    pub(crate) generation: u64,
    pub(crate) registration: Registration,
    pub(crate) disposed: AtomicBool,
}

pub(crate) enum Registration {
    Listener { channel: String, id: u64 },
    Handler { channel: String, id: u64 },
}

impl Disposer {
    pub fn dispose(&self) {
        if self.disposed.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(shared) = self.shared.upgrade() else { return };
        let removed = {
            let mut state = shared.state();
            let Some(half) = state.half_mut(self.peer, self.generation) else {
                return;
            };
            match &self.registration {
                Registration::Listener { channel, id } => {
                    let list = half.listeners.get_mut(channel);
                    let removed =
                        list.and_then(|list| list.iter().position(|(each, _)| each == id).map(|at| list.remove(at).1));
                    if half.listeners.get(channel).is_some_and(Vec::is_empty) {
                        half.listeners.remove(channel);
                    }
                    removed.map(|listener| Box::new(listener) as Box<dyn Send>)
                }
                Registration::Handler { channel, id } => {
                    if half.handlers.get(channel).is_some_and(|(each, _)| each == id) {
                        half.handlers
                            .remove(channel)
                            .map(|handler| Box::new(handler) as Box<dyn Send>)
                    } else {
                        None
                    }
                }
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
        let (what, channel) = match &self.registration {
            Registration::Listener { channel, .. } => ("listener", channel),
            Registration::Handler { channel, .. } => ("handler", channel),
        };
        f.debug_struct("Disposer")
            .field("what", &what)
            .field("channel", channel)
            .field("disposed", &self.is_disposed())
            .finish()
    }
}
