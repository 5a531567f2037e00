//! The host's functions as the instance calls them: the one place it calls out across the C
//! boundary. Everything before this speaks [`Message`]; the raw layouts are made here, for
//! the call, and nowhere else.

use crate::abi::{HostVTable, RawSlice};
use crate::message::Message;

/// The host's vtable and the key it gave this instance.
#[derive(Clone, Copy)]
pub(crate) struct HostCalls {
    vtable: HostVTable,
    key: u64,
}

impl HostCalls {
    /// The calls of the host that gave this instance `key`.
    ///
    /// # Safety
    /// `vtable` must be the host's vtable of this ABI version (its version checked at
    /// `instantiate`): every call here relies on its functions taking these layouts.
    pub(crate) unsafe fn new(vtable: HostVTable, key: u64) -> HostCalls {
        HostCalls { vtable, key }
    }

    /// Hands a message to the host for routing; returns its status code.
    #[inline]
    pub(crate) fn send(&self, message: &Message<'_>) -> u32 {
        let raw = message.to_raw();
        // SAFETY: `send` is the host's function for this ABI version (checked at instantiate),
        // and `raw` borrows buffers of `message`, which outlive the call.
        unsafe { (self.vtable.send)(self.key, &raw) }
    }

    /// Tells the host that a run of this thread begins: it woke up, and runs its dispatcher
    /// and the tasks that woke until it parks (see [`HostVTable::batch_begin`]).
    #[inline]
    pub(crate) fn batch_begin(&self) {
        // SAFETY: the host's function for this ABI version; it takes only the key.
        unsafe { (self.vtable.batch_begin)(self.key) }
    }

    /// Tells the host that the run on this thread ended (it is about to park, or stops): what
    /// the host held of its sends is written.
    #[inline]
    pub(crate) fn batch_end(&self) {
        // SAFETY: the host's function for this ABI version; it takes only the key.
        unsafe { (self.vtable.batch_end)(self.key) }
    }

    /// The descriptor this instance's thread may watch for messages, or -1 (see
    /// [`HostVTable::inbound_fd`]).
    #[inline]
    pub(crate) fn inbound_fd(&self) -> i32 {
        // SAFETY: the host's function for this ABI version; it takes only the key.
        unsafe { (self.vtable.inbound_fd)(self.key) }
    }

    /// Asks the host to read and deliver what arrived; returns one of [`crate::abi::drain`].
    #[inline]
    pub(crate) fn drain(&self) -> u32 {
        // SAFETY: the host's function for this ABI version; it takes only the key.
        unsafe { (self.vtable.drain)(self.key) }
    }

    /// Answers control command `completion` with an encoded `Completion`.
    pub(crate) fn complete(&self, completion: u64, bytes: &[u8]) {
        // SAFETY: the host's function for this ABI version; `bytes` outlives the call.
        unsafe { (self.vtable.complete)(self.key, completion, RawSlice::new(bytes)) }
    }

    /// Forwards a log record at level number `level` (see `message::level_number`).
    pub(crate) fn log(&self, level: u32, target: &str, message: &str) {
        // SAFETY: `log` is the host's function for this ABI version; the buffers outlive the
        // call.
        unsafe {
            (self.vtable.log)(self.key, level, RawSlice::new(target.as_bytes()), RawSlice::new(message.as_bytes()))
        }
    }
}
