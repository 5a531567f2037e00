//! The in-process transport: a library instance in this process, called through its
//! descriptor. The only code of the host's routing side that crosses the C ABI outward
//! (`to_raw`, the descriptor's function pointers).

use std::sync::{PoisonError, RwLock};

use extension_api::abi::{self, Descriptor, HostVTable, RawSlice};
use extension_api::message::Message;
use extension_api::wire::{Control, InstanceConfig};

use crate::instance_ptr::InstancePtr;

/// Why an instance could not be started in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the library could not start an instance (its runtime thread or config was refused)")]
pub(crate) struct Refused;

/// One library instance in this process.
pub(crate) struct InProcess {
    descriptor: &'static Descriptor,
    /// `None` before `instantiate` and once `destroy` took it: nothing is called then.
    instance: RwLock<Option<InstancePtr>>,
}

impl InProcess {
    /// A transport for an instance of `descriptor`'s library, not started yet.
    pub(crate) fn new(descriptor: &'static Descriptor) -> InProcess {
        InProcess { descriptor, instance: RwLock::new(None) }
    }

    /// Starts the instance under `key`; it calls the host back through `vtable`.
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
        *self.instance.write().unwrap_or_else(PoisonError::into_inner) = Some(InstancePtr(pointer));
        Ok(())
    }

    pub(crate) fn deliver(&self, message: &Message<'_>) -> u32 {
        let raw = message.to_raw();
        let instance = self.instance.read().unwrap_or_else(PoisonError::into_inner);
        match *instance {
            // SAFETY: the pointer stays valid while the read lock is held (`destroy` takes it out
            // under the write lock first); `raw` borrows `message`, which outlives the call.
            Some(InstancePtr(pointer)) => unsafe { (self.descriptor.deliver)(pointer, &raw) },
            None => abi::status::DEACTIVATED,
        }
    }

    pub(crate) fn control(&self, command: &Control) -> u32 {
        let Ok(bytes) = rmp_serde::to_vec_named(command) else { return abi::status::INVALID };
        let instance = self.instance.read().unwrap_or_else(PoisonError::into_inner);
        match *instance {
            // SAFETY: the pointer stays valid while the read lock is held (see `deliver`); `bytes`
            // outlives the call.
            Some(InstancePtr(pointer)) => unsafe { (self.descriptor.control)(pointer, RawSlice::new(&bytes)) },
            None => abi::status::DEACTIVATED,
        }
    }

    /// Destroys the instance (its thread is joined, off the async threads); true if it
    /// stopped cleanly.
    pub(crate) async fn destroy(&self) -> bool {
        let taken = self.instance.write().unwrap_or_else(PoisonError::into_inner).take();
        let Some(pointer) = taken else { return true };
        let destroy = self.descriptor.destroy;
        let status = tokio::task::spawn_blocking(move || {
            // The whole wrapper moves in (it is `Send`), not its raw field.
            let pointer = pointer;
            // SAFETY: the pointer came from `instantiate` and was taken out under the write lock,
            // so no `deliver` or `control` uses it any more, and it is destroyed exactly once.
            unsafe { destroy(pointer.0) }
        })
        .await
        .unwrap_or(abi::status::PANICKED);
        status == abi::status::OK
    }
}
