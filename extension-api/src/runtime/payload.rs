//! A queued message's value: bytes the instance owns, or a buffer the host lent with the
//! message ([`crate::abi::RawLease`]), read in place and released when the value is dropped.
//!
//! The lent kind is what keeps a large message from being copied on its way in: the host reads
//! it from a socket into a buffer of its own and lends that buffer, instead of the instance
//! copying it into its mailbox. Either kind reads as `&[u8]`; nothing past the mailbox knows
//! which it holds.

use std::fmt;
use std::ops::Deref;

use crate::abi::{Peer, RawLease};
use crate::message::Message;
use crate::wire::OwnedMessage;

/// A message's MessagePack value, as the mailbox queues it.
pub(crate) enum Payload {
    Owned(Vec<u8>),
    Lent(Lent),
}

impl Payload {
    /// The bytes as a vector of their own: the vector itself if owned, a copy if lent.
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Payload::Owned(bytes) => bytes,
            Payload::Lent(lent) => lent.to_vec(),
        }
    }
}

impl Deref for Payload {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Owned(bytes) => bytes,
            Payload::Lent(lent) => lent,
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if matches!(self, Payload::Owned(_)) { "owned" } else { "lent" };
        write!(f, "Payload({kind}, {} bytes)", self.len())
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        **self == **other
    }
}

impl Eq for Payload {}

/// Bytes the host lent, with the lease that ends when this is dropped.
pub(crate) struct Lent {
    ptr: *const u8,
    len: usize,
    lease: RawLease,
}

impl Lent {
    /// Takes over `lease`, reading no bytes yet ([`Lent::reading`]): dropping the result
    /// releases it, once.
    ///
    /// # Safety
    ///
    /// `lease.release` must be safe to call once, from any thread (the ABI's contract for
    /// [`crate::abi::Descriptor::deliver_leased`]).
    pub(crate) unsafe fn new(lease: RawLease) -> Lent {
        Lent { ptr: std::ptr::null(), len: 0, lease }
    }

    /// The same lease, now reading `bytes`.
    ///
    /// # Safety
    ///
    /// `bytes` must stay valid and unchanged until the lease is released.
    pub(crate) unsafe fn reading(self, bytes: &[u8]) -> Lent {
        let mut lent = self;
        (lent.ptr, lent.len) = (bytes.as_ptr(), bytes.len());
        lent
    }
}

impl Deref for Lent {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `Lent::reading`'s contract: the bytes stay valid and unchanged until the
        // lease is released, which happens only in `drop`, after every borrow of `self` ended.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        // SAFETY: called once (this is the lease's only owner, and `drop` runs once), and the
        // host made `release` callable from any thread.
        unsafe { (self.lease.release)(self.lease.context) }
    }
}

// SAFETY: the bytes are immutable while lent and the release is thread-safe (the ABI's
// contract), so the lease may move to, and be read from, any thread.
unsafe impl Send for Lent {}
// SAFETY: shared access only ever reads the bytes, which are immutable while lent (the
// ABI's contract); releasing takes `&mut self` (`drop`), so no shared access is left then.
unsafe impl Sync for Lent {}

/// A message as the mailbox queues it: an [`OwnedMessage`] whose value may be lent.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) kind: u32,
    pub(crate) status: u32,
    pub(crate) origin: Peer,
    pub(crate) target: Peer,
    pub(crate) request_id: u64,
    pub(crate) channel: String,
    pub(crate) payload: Payload,
}

impl Queued {
    /// `message` with its channel copied and `payload` as its value.
    pub(crate) fn new(message: &Message<'_>, payload: Payload) -> Queued {
        Queued {
            kind: message.kind,
            status: message.status,
            origin: message.origin,
            target: message.target,
            request_id: message.request_id,
            channel: message.channel.to_owned(),
            payload,
        }
    }

    /// The bytes it holds (channel name and payload): what a mailbox counts.
    #[inline]
    pub(crate) fn size(&self) -> u64 {
        (self.channel.len() + self.payload.len()) as u64
    }
}

impl From<OwnedMessage> for Queued {
    #[inline]
    fn from(message: OwnedMessage) -> Queued {
        let OwnedMessage { kind, status, origin, target, request_id, channel, payload } = message;
        Queued { kind, status, origin, target, request_id, channel, payload: Payload::Owned(payload) }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::c_void;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    static RELEASED: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn release(context: *mut c_void) {
        // SAFETY: the test passes a pointer from `Box::into_raw` and `release` runs once.
        drop(unsafe { Box::from_raw(context.cast::<Vec<u8>>()) });
        RELEASED.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn a_lent_payload_reads_the_hosts_bytes_and_is_released_once_when_dropped() {
        let buffer = Box::new(vec![1u8, 2, 3, 4]);
        // SAFETY: the bytes are the box's, which stays alive until `release`, and the lease
        // calls `release` once.
        let lent = unsafe {
            let bytes = std::slice::from_raw_parts(buffer.as_ptr(), buffer.len());
            Lent::new(RawLease { context: Box::into_raw(buffer).cast(), release }).reading(bytes)
        };
        let payload = Payload::Lent(lent);
        assert_eq!(&*payload, &[1, 2, 3, 4]);
        assert_eq!(RELEASED.load(Ordering::SeqCst), 0);
        let moved = std::thread::spawn(move || payload.into_vec()).join().unwrap();
        assert_eq!(moved, vec![1, 2, 3, 4]);
        assert_eq!(RELEASED.load(Ordering::SeqCst), 1);
    }
}
