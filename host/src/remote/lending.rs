//! A large frame read from a socket, lent to the library a message in it is delivered to,
//! instead of copied into that library's mailbox (`Descriptor::deliver_leased`, ABI 8).
//!
//! The reader that read a frame into a buffer of its own ([`Frame::Owned`]) handles it inside
//! [`lend`]; a delivery to a library in this process made meanwhile, on this thread, of a
//! message whose payload lies inside that buffer ([`lease_for`]) hands the library a lease on
//! the whole buffer, which the library releases when it drops the message. When the last lease
//! on it, and the reader's own hold, are gone, the buffer is kept for the next large frames the
//! readers read ([`buffer_for`]; a few are, as each reader kept its own buffer before it lent
//! them) or freed.
//! (Given back to the allocator every time instead, on these machines each frame's buffer came
//! back as fresh pages: 1 MiB round trips took 2.5x as long, with four times the page faults.)
//!
//! Lent by scope, on the reading thread, so that what lies between the reader and the
//! library (validation, routing, the transports) stays as it is: it passes borrowed messages
//! and knows nothing of buffers. A message that is not the frame's own (an error reply made on
//! the way, a message routed to a child or a page) has no lease and is delivered as before.
//!
//! [`Frame::Owned`]: super::protocol::Frame::Owned

use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, PoisonError};

use extension_api::abi::RawLease;

use super::protocol::KEEP_LARGE;

thread_local! {
    /// The frame being handled on this thread inside [`lend`], if any.
    static LENDABLE: RefCell<Option<Arc<LentFrame>>> = const { RefCell::new(None) };
}

/// Large frames' buffers whose leases are all gone, for the next large frames (any reader's:
/// a lease ends on whichever thread the library drops its message).
static SPARE: Mutex<Spares> = Mutex::new(Spares::new());

/// An empty buffer with room for a frame of `length` bytes: a spare one if one fits it.
pub(crate) fn buffer_for(length: usize) -> Vec<u8> {
    let spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner).take(length);
    spare.unwrap_or_else(|| Vec::with_capacity(length))
}

/// Whether a buffer of `capacity` is the one to read a frame of `length` bytes into: room for
/// it, and at most half as much again, so that a lent frame holds no more than 1.5 times the
/// bytes a mailbox counts for its message.
pub(crate) fn fits(capacity: usize, length: usize) -> bool {
    capacity >= length && capacity <= length.saturating_add(length / 2)
}

/// A frame being lent: its buffer goes back to [`SPARE`] when the last hold on it is gone.
struct LentFrame(Vec<u8>);

impl Drop for LentFrame {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        let dropped = SPARE.lock().unwrap_or_else(PoisonError::into_inner).keep(buffer);
        // Freed outside the lock.
        drop(dropped);
    }
}

/// The spare buffers: the few given back last, each handed only to a frame it fits closely.
/// Kept by recency, not size: the sizes of the frames going now are the ones worth keeping
/// (kept by size, a burst of larger frames filled the list for good with buffers no later frame
/// fitted, and every smaller buffer given back was freed).
struct Spares {
    /// Oldest first.
    buffers: Vec<Vec<u8>>,
}

impl Spares {
    /// How many are kept: a frame being handled and the ones replies bring back while it is
    /// still lent, on a connection or two.
    const MAX: usize = 4;

    const fn new() -> Spares {
        Spares { buffers: Vec::new() }
    }

    /// The smallest spare that fits a frame of `length` bytes ([`fits`]).
    fn take(&mut self, length: usize) -> Option<Vec<u8>> {
        let at = (0..self.buffers.len())
            .filter(|&at| fits(self.buffers[at].capacity(), length))
            .min_by_key(|&at| self.buffers[at].capacity())?;
        Some(self.buffers.remove(at))
    }

    /// Keeps `buffer` (emptied), in place of the oldest if there is no room; gives back what it
    /// does not keep. Nothing over [`KEEP_LARGE`] is kept, as the reader kept nothing larger.
    fn keep(&mut self, mut buffer: Vec<u8>) -> Option<Vec<u8>> {
        if buffer.capacity() > KEEP_LARGE {
            return Some(buffer);
        }
        buffer.clear();
        let oldest = (self.buffers.len() == Spares::MAX).then(|| self.buffers.remove(0));
        self.buffers.push(buffer);
        oldest
    }
}

/// Runs `handle` on `frame`, whose payloads may be lent meanwhile to the libraries this thread
/// delivers them to (see [`lease_for`]).
pub(crate) fn lend<R>(frame: Vec<u8>, handle: impl FnOnce(&[u8]) -> R) -> R {
    let frame = Arc::new(LentFrame(frame));
    let previous = LENDABLE.replace(Some(frame.clone()));
    // Put back however `handle` ends (a panic included): nothing outside the scope is lent.
    struct Restore(Option<Arc<LentFrame>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LENDABLE.set(self.0.take());
        }
    }
    let _restore = Restore(previous);
    handle(&frame.0)
}

/// A lease on the frame being handled on this thread, if `payload` lies inside it: one more
/// hold on the frame's buffer, which [`release`] lets go.
pub(crate) fn lease_for(payload: &[u8]) -> Option<RawLease> {
    if payload.is_empty() {
        return None;
    }
    LENDABLE.with_borrow(|frame| {
        let frame = frame.as_ref()?;
        let (within, part) = (frame.0.as_ptr_range(), payload.as_ptr_range());
        if part.start < within.start || part.end > within.end {
            return None;
        }
        let context = Arc::into_raw(frame.clone()).cast_mut().cast::<c_void>();
        Some(RawLease { context, release })
    })
}

/// Lets go of one lease from [`lease_for`].
unsafe extern "C" fn release(context: *mut c_void) {
    // SAFETY: `context` came from `Arc::into_raw` in `lease_for`, and the library releases each
    // lease once (the ABI's contract), so this gives back exactly the hold that lease took.
    drop(unsafe { Arc::from_raw(context.cast_const().cast::<LentFrame>()) });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Releases `lease` as a library would.
    fn released(lease: RawLease) {
        // SAFETY: a lease from `lease_for`, released once.
        unsafe { (lease.release)(lease.context) }
    }

    #[test]
    fn only_a_payload_inside_the_frame_being_handled_is_lent_and_each_lease_holds_the_frame() {
        let outside = vec![1u8; 16];
        assert!(lease_for(&outside).is_none(), "nothing is lent outside `lending`");
        let (weak, leases) = lend(vec![7u8; 100], |frame| {
            let kept = LENDABLE.with_borrow(|lent| Arc::downgrade(lent.as_ref().unwrap()));
            assert!(lease_for(&outside).is_none(), "not the frame's");
            assert!(lease_for(&frame[10..10]).is_none(), "empty");
            let leases = [lease_for(frame).unwrap(), lease_for(&frame[40..60]).unwrap()];
            (kept, leases)
        });
        assert!(lease_for(&outside).is_none(), "the scope ended");
        // The reader's hold is gone; the two leases keep the frame.
        assert_eq!(weak.strong_count(), 2);
        let [first, second] = leases;
        released(first);
        assert_eq!(weak.strong_count(), 1);
        released(second);
        assert!(weak.upgrade().is_none(), "freed with its last lease");
    }

    /// The capacities `spares` holds, oldest first.
    fn held(spares: &Spares) -> Vec<usize> {
        spares.buffers.iter().map(Vec::capacity).collect()
    }

    /// Gives `spares` a buffer of (about) `capacity`; its real capacity.
    fn give(spares: &mut Spares, capacity: usize) -> usize {
        let buffer = Vec::with_capacity(capacity);
        let capacity = buffer.capacity();
        drop(spares.keep(buffer));
        capacity
    }

    #[test]
    fn a_spare_goes_only_to_a_frame_it_fits_closely_and_the_latest_are_kept() {
        let mut spares = Spares::new();
        let sizes: Vec<usize> =
            [100_000, 1 << 20, 70_000, 300_000].iter().map(|&size| give(&mut spares, size)).collect();
        assert_eq!(held(&spares), sizes);
        // Full: the oldest goes; one over KEEP_LARGE is never kept.
        let newest = give(&mut spares, 2 << 20);
        assert_eq!(held(&spares), [sizes[1], sizes[2], sizes[3], newest]);
        assert!(spares.keep(Vec::with_capacity((2 << 20) + 1)).is_some(), "over KEEP_LARGE");
        // A frame gets the smallest that fits it within 1.5 times, or none.
        assert!(spares.take(150_000).is_none(), "300,000 is twice 150,000; 70,000 too small");
        assert_eq!(spares.take(1_500_000).map(|buffer| buffer.capacity()), Some(newest));
        assert_eq!(spares.take(250_000).map(|buffer| buffer.capacity()), Some(sizes[3]));
        assert_eq!(spares.take(1 << 20).map(|buffer| buffer.capacity()), Some(sizes[1]));
        assert_eq!(spares.take(60_000).map(|buffer| buffer.capacity()), Some(sizes[2]));
        assert!(spares.take(1).is_none(), "none left");
    }

    #[test]
    fn after_a_burst_of_larger_frames_the_buffers_of_the_frames_going_now_are_kept() {
        let mut spares = Spares::new();
        for _ in 0..Spares::MAX {
            give(&mut spares, 2 << 20);
        }
        // Frames of 1 MiB: none of the 2 MiB spares fits them; their own buffers, given back,
        // push the old ones out, and the next 1 MiB frame finds one.
        assert!(spares.take(1 << 20).is_none());
        let dropped = spares.keep(Vec::with_capacity(1 << 20));
        assert!(dropped.is_some_and(|buffer| buffer.capacity() >= 2 << 20), "the oldest 2 MiB one goes");
        assert!(spares.take(1 << 20).is_some_and(|buffer| buffer.capacity() < 2 << 20));
    }

    #[test]
    fn a_panic_inside_the_scope_lends_nothing_after_it() {
        let caught = std::panic::catch_unwind(|| lend(vec![1u8; 8], |_| panic!("handling failed")));
        assert!(caught.is_err());
        assert!(LENDABLE.with_borrow(Option::is_none));
    }
}
