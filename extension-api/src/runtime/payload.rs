//! A queued message's value: bytes the instance owns, or a buffer the host lent with the
//! message ([`crate::abi::RawLease`]), read in place and released when the value is dropped.
//!
//! The lent kind is what keeps a large message from being copied on its way in: the host reads
//! it from a socket into a buffer of its own and lends that buffer, instead of the instance
//! copying it into its mailbox. Either kind reads as `&[u8]`; nothing past the mailbox knows
//! which it holds. A large value of either kind is decoded from a shared buffer of itself
//! ([`Decodable`]), so that the `Binary` values in it are views of it, counted in [`Kept`].

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;

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

    /// Decodes the value, as [`Decodable::decode`] does.
    #[inline]
    pub(crate) fn decode<T: DeserializeOwned>(
        self,
        kept: impl FnOnce() -> Kept,
    ) -> Result<T, rmp_serde::decode::Error> {
        self.decodable(kept).decode()
    }

    /// The value, ready to be decoded (by several decoders, for an event's listeners). A large
    /// one becomes a shared buffer of the same bytes, without a copy (a vector's own buffer, or
    /// the lease), counted while it lives in the counter `kept` gives (asked for only then:
    /// a small value costs no reference count).
    #[inline]
    pub(crate) fn decodable(self, kept: impl FnOnce() -> Kept) -> Decodable {
        if self.len() < crate::binary::SHARED_FROM {
            return Decodable::Plain(self);
        }
        let kept = kept();
        kept.0.fetch_add(self.len() as u64, Ordering::Relaxed);
        Decodable::Shared(bytes::Bytes::from_owner(Held { payload: self, kept }))
    }
}

/// A received value ready to be decoded: one of [`crate::binary::SHARED_FROM`] bytes or more
/// is held as a shared buffer, so that the [`crate::Binary`] values decoded from it are views
/// of it instead of copies.
pub(crate) enum Decodable {
    Plain(Payload),
    Shared(bytes::Bytes),
}

impl Decodable {
    /// Decodes the value (as [`crate::wire::decode`]). Whatever does not keep a `Binary` view
    /// of a shared buffer frees it (or releases its lease) when the last `Decodable` of it is
    /// dropped.
    #[inline]
    pub(crate) fn decode<T: DeserializeOwned>(&self) -> Result<T, rmp_serde::decode::Error> {
        match self {
            Decodable::Plain(payload) => crate::wire::decode(payload),
            Decodable::Shared(shared) => crate::wire::decode_sharing(shared),
        }
    }
}

/// The bytes of the received values an instance holds as shared buffers: those its `Binary`
/// values keep (and, for a moment, the ones being decoded). Inspect reports it
/// (`InstanceSnapshot::binary_bytes`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Kept(Arc<AtomicU64>);

impl Kept {
    pub(crate) fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The owner of a shared buffer: the value's bytes, counted in [`Kept`] until dropped.
struct Held {
    payload: Payload,
    kept: Kept,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.payload
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.kept.0.fetch_sub(self.payload.len() as u64, Ordering::Relaxed);
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

    static RELEASED_DECODED: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn release_decoded(context: *mut c_void) {
        // SAFETY: the test passes a pointer from `Box::into_raw` and `release` runs once.
        drop(unsafe { Box::from_raw(context.cast::<Vec<u8>>()) });
        RELEASED_DECODED.fetch_add(1, Ordering::SeqCst);
    }

    fn lent(value: &impl serde::Serialize) -> (Payload, std::ops::Range<*const u8>) {
        let buffer = Box::new(crate::runtime::encode(value).expect("encodes"));
        let range = buffer.as_ptr_range();
        // SAFETY: the bytes are the box's, which stays alive until `release_decoded`, and the
        // lease calls it once.
        let lent = unsafe {
            let bytes = std::slice::from_raw_parts(buffer.as_ptr(), buffer.len());
            Lent::new(RawLease { context: Box::into_raw(buffer).cast(), release: release_decoded }).reading(bytes)
        };
        (Payload::Lent(lent), range)
    }

    #[test]
    fn a_binary_decoded_from_a_lent_value_reads_the_lease_and_keeps_it_until_dropped() {
        let data = vec![9u8; 64 * 1024];
        let (payload, range) = lent(&(crate::Binary::from(data.clone()), "tail"));
        let (kept, length) = (Kept::default(), payload.len() as u64);
        let (binary, tail): (crate::Binary, String) = payload.decode(|| kept.clone()).expect("decodes");
        assert_eq!(kept.bytes(), length, "the whole value is kept: the view and the rest");
        assert_eq!((&binary[..], tail.as_str()), (&data[..], "tail"));
        assert!(range.start <= binary.as_ptr() && binary.as_ptr_range().end <= range.end, "not a view of the lease");
        let before = RELEASED_DECODED.load(Ordering::SeqCst);
        // A clone moved to another thread keeps it too; the last one dropped releases it.
        let clone = binary.clone();
        drop(binary);
        std::thread::spawn(move || drop(clone)).join().unwrap();
        assert_eq!(RELEASED_DECODED.load(Ordering::SeqCst), before + 1);
        assert_eq!(kept.bytes(), 0);

        // A value with no `Binary` in it releases the lease as soon as it is decoded.
        let (payload, _) = lent(&serde_bytes::ByteBuf::from(data.clone()));
        let before = RELEASED_DECODED.load(Ordering::SeqCst);
        let copied: serde_bytes::ByteBuf = payload.decode(|| kept.clone()).expect("decodes");
        assert_eq!(kept.bytes(), 0);
        assert_eq!(RELEASED_DECODED.load(Ordering::SeqCst), before + 1);
        assert_eq!(copied.into_vec(), data);
    }
}
