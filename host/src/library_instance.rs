//! One instance of a loaded library, called through its descriptor: the one place, in the
//! host and in a child process alike, that calls into an instance (`instantiate`, `deliver`,
//! `control`, `destroy`). Messages leave here as `RawMessage`s borrowed for one call. Each
//! call is a scope for the batches of this thread (`batch::scoped`): a library that begins one
//! on the calling thread cannot leave it deferring.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use extension_api::abi::{self, Descriptor, HostVTable, RawSlice};
use extension_api::message::Message;
use extension_api::wire::{Control, InstanceConfig};

use crate::remote::{batch, lending};

/// Why a library could not start an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the library could not start an instance (its runtime thread or config was refused)")]
pub(crate) struct Refused;

/// An instance of `descriptor`'s library: not started, running, or taken out for destroying.
pub(crate) struct LibraryInstance {
    descriptor: &'static Descriptor,
    /// `None` before `instantiate` and once `take` took it: nothing is called then.
    pointer: RwLock<Option<InstancePtr>>,
    /// The key `instantiate` gave it.
    key: AtomicU64,
}

/// A running instance taken out of its [`LibraryInstance`], to be destroyed exactly once
/// (on whichever thread may block while the instance's thread is joined).
pub(crate) struct Taken {
    descriptor: &'static Descriptor,
    pointer: InstancePtr,
    key: u64,
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
        LibraryInstance { descriptor, pointer: RwLock::new(None), key: AtomicU64::new(0) }
    }

    /// Starts the instance under `key`; it calls back through `vtable`.
    pub(crate) fn instantiate(
        &self,
        vtable: &'static HostVTable,
        key: u64,
        config: &InstanceConfig,
    ) -> Result<(), Refused> {
        let config = rmp_serde::to_vec_named(config).map_err(|_| Refused)?;
        self.key.store(key, Ordering::Relaxed);
        let pointer = batch::scoped(|| {
            // SAFETY: `instantiate` comes from a descriptor whose ABI version matched when it
            // was loaded; the vtable is a static and `config` outlives the call.
            unsafe { (self.descriptor.instantiate)(vtable, key, RawSlice::new(&config)) }
        });
        if pointer.is_null() {
            return Err(Refused);
        }
        *self.pointer.write().unwrap_or_else(PoisonError::into_inner) = Some(InstancePtr(pointer));
        Ok(())
    }

    /// Queues a message for the instance; returns its status. A payload inside a large frame
    /// this thread is handling is lent to the library rather than copied by it
    /// (`remote/lending.rs`).
    pub(crate) fn deliver(&self, message: &Message<'_>) -> u32 {
        let raw = message.to_raw();
        let pointer = self.pointer.read().unwrap_or_else(PoisonError::into_inner);
        match *pointer {
            // A run the library begins on this thread ends with the call (`batch::scoped`).
            Some(InstancePtr(pointer)) => batch::scoped(|| match lending::lease_for(message.payload) {
                Some(lease) => {
                    // SAFETY: the pointer is valid while the read lock is held (`take` needs the
                    // write lock); `raw` borrows `message`, which outlives the call; the lease
                    // keeps the payload's bytes (in its frame) unchanged until it is released.
                    unsafe { (self.descriptor.deliver_leased)(pointer, &raw, lease) }
                }
                None => {
                    // SAFETY: the pointer stays valid while the read lock is held (`take` takes
                    // it out under the write lock); `raw` borrows `message`, which outlives the
                    // call; the library copies what it keeps.
                    unsafe { (self.descriptor.deliver)(pointer, &raw) }
                }
            }),
            None => abi::status::DEACTIVATED,
        }
    }

    /// Queues a control command for the instance; returns its status.
    pub(crate) fn control(&self, command: &Control) -> u32 {
        let Ok(bytes) = rmp_serde::to_vec_named(command) else { return abi::status::INVALID };
        let pointer = self.pointer.read().unwrap_or_else(PoisonError::into_inner);
        match *pointer {
            Some(InstancePtr(pointer)) => batch::scoped(|| {
                // SAFETY: the pointer stays valid while the read lock is held (`take` takes it
                // out under the write lock); `bytes` outlives the call.
                unsafe { (self.descriptor.control)(pointer, RawSlice::new(&bytes)) }
            }),
            None => abi::status::DEACTIVATED,
        }
    }

    /// Takes the running instance out: nothing more is delivered to it. `None` if it never
    /// started or was taken already.
    pub(crate) fn take(&self) -> Option<Taken> {
        let pointer = self.pointer.write().unwrap_or_else(PoisonError::into_inner).take()?;
        Some(Taken { descriptor: self.descriptor, pointer, key: self.key.load(Ordering::Relaxed) })
    }
}

impl Taken {
    /// Destroys the instance: joins its thread, so it blocks. Returns the library's status.
    pub(crate) fn destroy(self) -> u32 {
        let status = batch::scoped(|| {
            // SAFETY: the pointer came from `instantiate` and was taken out under the write
            // lock, so no `deliver` or `control` uses it any more, and `self` is consumed:
            // destroyed once.
            unsafe { (self.descriptor.destroy)(self.pointer.0) }
        });
        // The sockets its thread read go back to their reader threads; its epoll set closes
        // only if the thread finished (`OK`: its runtime, which watched the set, is gone). In a
        // child process there is no such set: nothing to do.
        crate::inbound::release_drain(self.key, status == abi::status::OK);
        status
    }
}

#[cfg(test)]
mod tests {
    use extension_api::abi::{InstancePtr as RawInstance, RawLease, RawMessage};

    use super::*;
    use crate::inbound::HOST_VTABLE;

    const KEY: u64 = 7;

    /// A library that, in every call, begins a batch on the calling thread (with its own key).
    unsafe extern "C" fn instantiate(host: *const HostVTable, key: u64, _: RawSlice) -> RawInstance {
        // SAFETY: the host passes its static vtable.
        unsafe { ((*host).batch_begin)(key) };
        std::ptr::NonNull::<u8>::dangling().as_ptr().cast()
    }
    unsafe extern "C" fn control(_: RawInstance, _: RawSlice) -> u32 {
        // SAFETY: calling the host's own callback, as a library does.
        unsafe { (HOST_VTABLE.batch_begin)(KEY) };
        abi::status::OK
    }
    unsafe extern "C" fn deliver(_: RawInstance, _: *const RawMessage) -> u32 {
        // SAFETY: as above.
        unsafe { (HOST_VTABLE.batch_begin)(KEY) };
        abi::status::OK
    }
    unsafe extern "C" fn deliver_leased(_: RawInstance, _: *const RawMessage, lease: RawLease) -> u32 {
        // SAFETY: calling the host's own callback, as a library does; the lease came from the
        // host for this call and is released once, as the ABI asks.
        unsafe {
            (HOST_VTABLE.batch_begin)(KEY);
            (lease.release)(lease.context);
        }
        abi::status::OK
    }
    unsafe extern "C" fn destroy(_: RawInstance) -> u32 {
        // SAFETY: as above.
        unsafe { (HOST_VTABLE.batch_begin)(KEY) };
        abi::status::OK
    }

    fn config() -> InstanceConfig {
        InstanceConfig {
            name: "stray".into(),
            max_log_level: 0,
            mailbox: Default::default(),
            route_within: false,
            slow_handler_ms: u64::MAX,
        }
    }

    fn stray() -> &'static Descriptor {
        Box::leak(Box::new(Descriptor {
            abi_version: abi::ABI_VERSION,
            debug_build: 0,
            name: abi::static_str("stray"),
            version: abi::static_str("1.0.0"),
            api_version: abi::static_str("0.1.0"),
            instantiate,
            control,
            deliver,
            deliver_leased,
            destroy,
            web_assets: std::ptr::null(),
            web_asset_count: 0,
        }))
    }

    #[test]
    fn a_library_that_begins_a_batch_on_a_host_thread_leaves_it_not_deferring() {
        let instance = LibraryInstance::new(stray());
        instance.instantiate(&HOST_VTABLE, KEY, &config()).unwrap();
        assert!(!batch::in_run(), "instantiate left this thread in a batch");
        assert_eq!(instance.control(&Control::Inspect { completion: 1 }), abi::status::OK);
        assert!(!batch::in_run(), "control left this thread in a batch");
        let message = Message {
            kind: abi::kind::BROADCAST,
            status: 0,
            origin: abi::PEER_MAIN,
            target: abi::PEER_ALL,
            request_id: 0,
            channel: "channel",
            payload: b"",
        };
        assert_eq!(instance.deliver(&message), abi::status::OK);
        assert!(!batch::in_run(), "deliver left this thread in a batch");
        assert_eq!(instance.take().unwrap().destroy(), abi::status::OK);
        assert!(!batch::in_run(), "destroy left this thread in a batch");
    }

    #[test]
    fn a_call_made_inside_a_run_leaves_the_run_alone() {
        let instance = LibraryInstance::new(stray());
        instance.instantiate(&HOST_VTABLE, KEY, &config()).unwrap();
        batch::begin();
        assert_eq!(instance.control(&Control::Inspect { completion: 1 }), abi::status::OK);
        assert!(batch::in_run(), "a call into a library ended the calling instance's run");
        batch::end();
    }
}
