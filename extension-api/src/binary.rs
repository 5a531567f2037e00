//! [`Binary`]: binary data that is not copied on its way in.
//!
//! A `Vec<u8>` (even with `serde_bytes`) decoded from a received message is a copy of the
//! message's bytes. A `Binary` of [`SHARED_FROM`] bytes or more is instead a view of the
//! message's own buffer (the buffer the host lent, when it came from another process): the
//! decoding of a large value ([`crate::runtime::payload::Payload::decode`]) names that buffer
//! for the decoding thread ([`sharing`]), and `Binary`'s `Deserialize` takes a slice of it for
//! bytes that lie inside it. Anything else (a small value, another format, bytes from a store
//! replica) is copied, as a `Vec<u8>` would be.

use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The size from which a received value is decoded in place: a `Binary` this long or longer
/// shares its message's buffer instead of copying it. Below it a copy costs less than sharing
/// (an allocation and reference counts), and a small value never pins a large buffer.
pub const SHARED_FROM: usize = 4096;

/// Binary data: MessagePack `bin` on the wire (`Uint8Array` in a web renderer's JavaScript),
/// cheap to clone, and not copied when it is decoded from a received message.
///
/// Use it instead of `Vec<u8>` for large binary values (file contents, images, buffers):
/// a `Binary` of [`SHARED_FROM`] bytes or more that arrives in a request, a reply or an event
/// is a view of the received message's buffer, not a copy. Keeping it keeps that buffer (the
/// whole message, up to 1.5 times its size when it came from another process); call
/// [`Binary::detached`] for a copy of its own when you keep a small part of a large message
/// for long. Inspect counts what an instance's `Binary` values keep
/// (`InstanceSnapshot::binary_bytes`).
///
/// A view needs the sender to have written MessagePack `bin`: a `Binary`, a `Vec<u8>` with
/// `serde_bytes`, a `Uint8Array` from a web renderer. A plain `Vec<u8>` is written as an array
/// of numbers, which a `Binary` reads too, by copying.
///
/// ```
/// # use extension_api::Binary;
/// let image = Binary::from(vec![0x89, b'P', b'N', b'G']);
/// assert_eq!(&image[1..], b"PNG");
/// assert_eq!(image.clone(), image); // a clone shares the bytes
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Binary(bytes::Bytes);

impl Binary {
    /// An empty value.
    pub const fn new() -> Binary {
        Binary(bytes::Bytes::new())
    }

    /// A value of `bytes`, which are not copied.
    pub const fn from_static(bytes: &'static [u8]) -> Binary {
        Binary(bytes::Bytes::from_static(bytes))
    }

    /// A copy of `bytes`.
    pub fn copy_from_slice(bytes: &[u8]) -> Binary {
        Binary(bytes::Bytes::copy_from_slice(bytes))
    }

    /// The same bytes in a buffer of their own: what to keep instead of a small part of a
    /// large received message, which a `Binary` of it would keep whole.
    pub fn detached(&self) -> Binary {
        Binary::copy_from_slice(self)
    }

    /// The bytes as a vector: without a copy when this `Binary` was made from a vector and
    /// nothing else shares it; otherwise (a view of a received message included) a copy.
    pub fn into_vec(self) -> Vec<u8> {
        self.0.into()
    }

    /// A view of `range` of these bytes, sharing them (no copy).
    ///
    /// # Panics
    ///
    /// If `range` is out of bounds, as slicing a `[u8]` does.
    pub fn slice(&self, range: impl std::ops::RangeBounds<usize>) -> Binary {
        Binary(self.0.slice(range))
    }

    /// The bytes as [`bytes::Bytes`], without a copy.
    pub fn into_bytes(self) -> bytes::Bytes {
        self.0
    }
}

impl Deref for Binary {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Binary {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::borrow::Borrow<[u8]> for Binary {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Binary {
    /// Takes the vector's buffer, without a copy.
    fn from(bytes: Vec<u8>) -> Binary {
        Binary(bytes.into())
    }
}

impl From<Box<[u8]>> for Binary {
    /// Takes the buffer, without a copy.
    fn from(bytes: Box<[u8]>) -> Binary {
        Binary(bytes.into())
    }
}

impl FromIterator<u8> for Binary {
    fn from_iter<I: IntoIterator<Item = u8>>(bytes: I) -> Binary {
        Binary::from(bytes.into_iter().collect::<Vec<u8>>())
    }
}

impl From<bytes::Bytes> for Binary {
    fn from(bytes: bytes::Bytes) -> Binary {
        Binary(bytes)
    }
}

impl From<&'static [u8]> for Binary {
    fn from(bytes: &'static [u8]) -> Binary {
        Binary::from_static(bytes)
    }
}

impl From<Binary> for bytes::Bytes {
    fn from(binary: Binary) -> bytes::Bytes {
        binary.0
    }
}

impl From<Binary> for Vec<u8> {
    fn from(binary: Binary) -> Vec<u8> {
        binary.into_vec()
    }
}

impl PartialEq<[u8]> for Binary {
    fn eq(&self, other: &[u8]) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&[u8]> for Binary {
    fn eq(&self, other: &&[u8]) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Vec<u8>> for Binary {
    fn eq(&self, other: &Vec<u8>) -> bool {
        *self.0 == **other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Binary {
    fn eq(&self, other: &[u8; N]) -> bool {
        *self.0 == *other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Binary {
    fn eq(&self, other: &&[u8; N]) -> bool {
        *self.0 == **other
    }
}

impl fmt::Debug for Binary {
    /// The length and the first bytes: a large value is not printed whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 16;
        let shown = &self.0[..self.len().min(SHOWN)];
        let more = if self.len() > SHOWN { ", ..." } else { "" };
        write!(f, "Binary({} bytes: {shown:02x?}{more})", self.len())
    }
}

impl Serialize for Binary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Binary {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Binary, D::Error> {
        deserializer.deserialize_bytes(BinaryVisitor)
    }
}

struct BinaryVisitor;

impl<'de> Visitor<'de> for BinaryVisitor {
    type Value = Binary;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("binary data")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, bytes: &'de [u8]) -> Result<Binary, E> {
        if bytes.len() >= SHARED_FROM
            && let Some(shared) = shared_slice(bytes)
        {
            return Ok(shared);
        }
        Ok(Binary::copy_from_slice(bytes))
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Binary, E> {
        Ok(Binary::copy_from_slice(bytes))
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Binary, E> {
        Ok(Binary::from(bytes))
    }

    // Formats without a binary type (JSON) write bytes as text or as an array of numbers.
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Binary, E> {
        Ok(Binary::copy_from_slice(text.as_bytes()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Binary, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(SHARED_FROM));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(Binary::from(bytes))
    }
}

thread_local! {
    /// The buffer being decoded on this thread, when it is one that `Binary` may share.
    static SHARED: RefCell<Option<bytes::Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` with `buffer` as the buffer whose bytes a `Binary` decoded meanwhile, on this
/// thread, shares instead of copying. `decode` must read from `buffer` itself: only bytes that
/// lie inside it are shared, others are copied. Nested calls see their own buffer; the one
/// before is back when a call returns or unwinds.
pub(crate) fn sharing<R>(buffer: &bytes::Bytes, decode: impl FnOnce() -> R) -> R {
    struct Restore(Option<bytes::Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            let ours = SHARED.with_borrow_mut(|shared| std::mem::replace(shared, previous));
            // Dropped outside the borrow (the caller still holds the buffer, so this only
            // counts down, but nothing runs with the thread-local borrowed).
            drop(ours);
        }
    }
    let previous = SHARED.with_borrow_mut(|shared| shared.replace(buffer.clone()));
    let _restore = Restore(previous);
    decode()
}

/// `bytes` (long enough to share) as a view of the buffer [`sharing`] names, if it lies inside
/// that buffer. Cold: a large value's copy, which this saves, costs far more than the call.
#[cold]
fn shared_slice(bytes: &[u8]) -> Option<Binary> {
    SHARED.with_borrow(|shared| {
        let buffer = shared.as_ref()?;
        let inside = buffer.as_ptr_range();
        let range = bytes.as_ptr_range();
        (inside.start <= range.start && range.end <= inside.end).then(|| Binary(buffer.slice_ref(bytes)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        name: String,
        data: Binary,
    }

    fn encoded(data: Vec<u8>) -> bytes::Bytes {
        let holder = Holder { name: "x".into(), data: Binary::from(data) };
        bytes::Bytes::from(crate::runtime::encode(&holder).expect("encodes"))
    }

    fn points_into(binary: &Binary, buffer: &bytes::Bytes) -> bool {
        let inside = buffer.as_ptr_range();
        inside.start <= binary.as_ptr() && binary.as_ptr_range().end <= inside.end
    }

    #[test]
    fn a_large_value_decoded_while_sharing_is_a_view_of_the_buffer() {
        let buffer = encoded(vec![7; SHARED_FROM]);
        let holder: Holder = sharing(&buffer, || crate::wire::decode(&buffer)).expect("decodes");
        assert_eq!(holder.data, vec![7; SHARED_FROM]);
        assert!(points_into(&holder.data, &buffer));
        // The view keeps the buffer: the caller's handle is not the only one.
        assert!(!buffer.is_unique());
        drop(holder);
        assert!(buffer.is_unique());
    }

    #[test]
    fn small_values_foreign_bytes_and_decoding_without_sharing_are_copies() {
        let small = encoded(vec![1; SHARED_FROM - 1]);
        let holder: Holder = sharing(&small, || crate::wire::decode(&small)).expect("decodes");
        assert!(!points_into(&holder.data, &small));

        // Bytes outside the named buffer are copied, even when they are long.
        let named = encoded(vec![2; SHARED_FROM]);
        let other = encoded(vec![3; SHARED_FROM]);
        let holder: Holder = sharing(&named, || crate::wire::decode(&other)).expect("decodes");
        assert!(!points_into(&holder.data, &other) && !points_into(&holder.data, &named));
        assert_eq!(holder.data, vec![3; SHARED_FROM]);

        // And nothing is shared outside `sharing`, whose buffer is gone when it returns.
        let holder: Holder = crate::wire::decode(&named).expect("decodes");
        assert!(!points_into(&holder.data, &named));
        assert!(named.is_unique());
    }

    #[test]
    fn the_buffer_before_is_back_after_a_nested_call_and_after_a_panic() {
        let outer = encoded(vec![4; SHARED_FROM]);
        let inner = encoded(vec![5; SHARED_FROM]);
        let holder: Holder = sharing(&outer, || {
            let nested: Holder = sharing(&inner, || crate::wire::decode(&inner)).expect("decodes");
            assert!(points_into(&nested.data, &inner));
            crate::wire::decode(&outer)
        })
        .expect("decodes");
        assert!(points_into(&holder.data, &outer));

        let unwound = std::panic::catch_unwind(|| sharing(&inner, || panic!("while decoding")));
        assert!(unwound.is_err());
        assert!(SHARED.with_borrow(Option::is_none));
    }

    #[test]
    fn it_is_messagepack_bin_and_reads_what_vec_u8_and_json_write() {
        let binary = Binary::from_static(b"\x00\xff");
        let encoded = crate::runtime::encode(&binary).expect("encodes");
        assert_eq!(encoded, [0xc4, 2, 0x00, 0xff]);
        // What `serde_bytes` writes, and a plain `Vec<u8>` (an array of numbers).
        let as_bin: Binary =
            crate::wire::decode(&crate::runtime::encode(&serde_bytes::ByteBuf::from(vec![9, 8])).expect("encodes"))
                .expect("decodes");
        assert_eq!(as_bin, [9, 8]);
        let as_array: Binary =
            crate::wire::decode(&crate::runtime::encode(&vec![9u8, 8]).expect("encodes")).expect("decodes");
        assert_eq!(as_array, [9, 8]);
        let from_json: Binary = serde_json::from_str("[1,2,3]").expect("decodes");
        assert_eq!(from_json, [1, 2, 3]);
        // A value that is not binary is refused, as a `Vec<u8>` refuses it.
        assert!(crate::wire::decode::<Binary>(&crate::runtime::encode(&true).expect("encodes")).is_err());
    }

    #[test]
    fn a_slice_shares_and_a_vector_goes_in_and_out_without_a_copy() {
        let whole = Binary::from(vec![1u8, 2, 3, 4]);
        let part = whole.slice(1..3);
        assert_eq!(part, [2, 3]);
        assert_eq!(part.as_ptr(), whole[1..].as_ptr());
        let vector = vec![5u8; 8];
        let at = vector.as_ptr();
        let back = Binary::from(vector).into_vec();
        assert_eq!(back.as_ptr(), at);
        assert_eq!((0..3u8).collect::<Binary>(), [0, 1, 2]);
    }

    #[test]
    fn debug_shows_the_length_and_the_first_bytes_only() {
        assert_eq!(format!("{:?}", Binary::from_static(b"\x01\x02")), "Binary(2 bytes: [01, 02])");
        let long = format!("{:?}", Binary::from(vec![0xab; 1 << 20]));
        assert!(long.starts_with("Binary(1048576 bytes: [ab, ab,") && long.ends_with(", ...)"), "{long}");
    }
}
