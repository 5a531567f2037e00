//! One instance of a loaded library, called through its descriptor: the one place, in the
//! host and in a child process alike, that calls into an instance (`instantiate`, `deliver`,
//! `control`, `destroy`). Messages leave here as `RawMessage`s borrowed for one call.

use std::ffi::c_void;
use std::sync::{PoisonError, RwLock};

use extension_api::abi::{self, Descriptor, HostVTable, RawSlice};
use extension_api::message::Message;
use extension_api::wire::{Control, InstanceConfig};

/// Why a library could not start an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the library could not start an instance (its runtime thread or config was refused)")]
pub(crate) struct Refused;

/// An instance of `descriptor`'s library: not started, running, or taken out for destroying.
pub(crate) struct LibraryInstance {
    descriptor: &'static Descriptor,
    /// `None` before `instantiate` and once `take` took it: nothing is called then.
    pointer: RwLock<Option<InstancePtr>>,
}

/// A running instance taken out of its [`LibraryInstance`], to be destroyed exactly once
/// (on whichever thread may block while the instance's thread is joined).
pub(crate) struct Taken {
    descriptor: &'static Descriptor,
    pointer: InstancePtr,
}

/// The pointer `instantiate` gave back.
#[derive(Clone, Copy)]
struct InstancePtr(*mut c_void);

// SAFETY: a library's instance is built for use from any thread: `control` and `deliver` only
// queue work for its own runtime thread, behind its own synchronisation; `destroy` is called
// once, through `Taken`, after the pointer was taken out under the write lock.
unsafe impl Send for InstancePtr {}
// SAFETY: as for `Send`: every entry point of the instance synchronises internally.
unsafe impl Sync for InstancePtr {}

impl LibraryInstance {
    /// An instance of `descriptor`'s library, not started yet.
    pub(crate) fn new(descriptor: &'static Descriptor) -> LibraryInstance {
        LibraryInstance { descriptor, pointer: RwLock::new(None) }
    }

    /// Starts the instance under `key`; it calls back through `vtable`.
    pub(crate) fn instantiate(
        &self,
        vtable: &'static HostVTable,
        key: u64,
        config: &InstanceConfig,
    ) -> Result<(), Refused> {
        let config = rmp_serde::to_vec_named(config).map_err(|_| Refused)?;
        // SAFETY: `instantiate` comes from a descriptor whose ABI version matched when it was
        // loaded; the vtable is a static and `config` outlives the call.
        let pointer = unsafe { (self.descriptor.instantiate)(vtable, key, RawSlice::new(&config)) };
        if pointer.is_null() {
            return Err(Refused);
        }
        *self.pointer.write().unwrap_or_else(PoisonError::into_inner) = Some(InstancePtr(pointer));
        Ok(())
    }

    /// Queues a message for the instance; returns its status.
    pub(crate) fn deliver(&self, message: &Message<'_>) -> u32 {
        let raw = message.to_raw();
        let pointer = self.pointer.read().unwrap_or_else(PoisonError::into_inner);
        match *pointer {
            // SAFETY: the pointer stays valid while the read lock is held (`take` takes it out
            // under the write lock); `raw` borrows `message`, which outlives the call.
            Some(InstancePtr(pointer)) => unsafe { (self.descriptor.deliver)(pointer, &raw) },
            None => abi::status::DEACTIVATED,
        }
    }

    /// Queues a control command for the instance; returns its status.
    pub(crate) fn control(&self, command: &Control) -> u32 {
        let Ok(bytes) = rmp_serde::to_vec_named(command) else { return abi::status::INVALID };
        let pointer = self.pointer.read().unwrap_or_else(PoisonError::into_inner);
        match *pointer {
            // SAFETY: the pointer stays valid while the read lock is held (`take` takes it out
            // under the write lock); `bytes` outlives the call.
            Some(InstancePtr(pointer)) => unsafe { (self.descriptor.control)(pointer, RawSlice::new(&bytes)) },
            None => abi::status::DEACTIVATED,
        }
    }

    /// Takes the running instance out: nothing more is delivered to it. `None` if it never
    /// started or was taken already.
    pub(crate) fn take(&self) -> Option<Taken> {
        let pointer = self.pointer.write().unwrap_or_else(PoisonError::into_inner).take()?;
        Some(Taken { descriptor: self.descriptor, pointer })
    }
}

impl Taken {
    /// Destroys the instance: joins its thread, so it blocks. Returns the library's status.
    pub(crate) fn destroy(self) -> u32 {
        // SAFETY: the pointer came from `instantiate` and was taken out under the write lock, so
        // no `deliver` or `control` uses it any more, and `self` is consumed: destroyed once.
        unsafe { (self.descriptor.destroy)(self.pointer.0) }
    }
}
