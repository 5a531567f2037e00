//! The in-process transport: a library instance in this process, called through its
//! descriptor (`library_instance.rs` makes the calls). The only transport that hands the
//! library raw messages.

use extension_api::abi::{self, Descriptor, HostVTable};
use extension_api::message::Message;
use extension_api::wire::{Control, InstanceConfig};

use crate::library_instance::{LibraryInstance, Refused};

/// One library instance in this process.
pub(crate) struct InProcess {
    instance: LibraryInstance,
}

impl InProcess {
    /// A transport for an instance of `descriptor`'s library, not started yet.
    pub(crate) fn new(descriptor: &'static Descriptor) -> InProcess {
        InProcess { instance: LibraryInstance::new(descriptor) }
    }

    /// Starts the instance under `key`; it calls the host back through `vtable`.
    pub(crate) fn instantiate(
        &self,
        vtable: &'static HostVTable,
        key: u64,
        config: &InstanceConfig,
    ) -> Result<(), Refused> {
        self.instance.instantiate(vtable, key, config)
    }

    pub(crate) fn deliver(&self, message: &Message<'_>) -> u32 {
        self.instance.deliver(message)
    }

    pub(crate) fn control(&self, command: &Control) -> u32 {
        self.instance.control(command)
    }

    /// Destroys the instance (its thread is joined, off the async threads); true if it
    /// stopped cleanly.
    pub(crate) async fn destroy(&self) -> bool {
        let Some(taken) = self.instance.take() else { return true };
        let status = tokio::task::spawn_blocking(move || taken.destroy()).await.unwrap_or(abi::status::PANICKED);
        status == abi::status::OK
    }
}
