//! The C ABI between the host and an extension library.
//!
//! Rust has no stable ABI, so nothing but integers, byte buffers and `extern "C"` function
//! pointers crosses the library boundary. The layouts here are `#[repr(C)]` and versioned by
//! [`ABI_VERSION`]; every byte buffer is borrowed for the duration of the call that passes it
//! (each side frees what it allocated, so ownership never crosses), except a payload the host
//! lends with a [`RawLease`]: the library keeps it until it calls the lease's `release`, which
//! frees it on the host's side.
//!
//! The host reads the `u32` at the start of the exported [`DESCRIPTOR_SYMBOL`] before anything
//! else: that field keeps its place in every ABI version, so a mismatch is reported with both
//! versions instead of misreading the rest of the struct.

use std::ffi::c_void;

/// Version of the layouts in this module. Bump it on any change to them or to the meaning of
/// a call, a status code or a [`crate::wire`] type.
pub const ABI_VERSION: u32 = 8;

/// Name of the static every extension library exports (see [`crate::export_extension!`]).
pub const DESCRIPTOR_SYMBOL: &str = "EXTENSION_DESCRIPTOR";

/// The longest buffer any call across the boundary accepts (1 GiB). A longer length is refused
/// before a slice is built or anything is read or allocated, whatever the pointer. (A length
/// within it must still be true: nothing can check a pointer's extent in its own process.)
pub const MAX_BUFFER: usize = 1 << 30;

/// The largest message a half may send (16 MiB), counted as its channel name and its encoded
/// value together. It is the same wherever the halves run (in process, in a renderer process,
/// isolated), so an extension behaves alike in every placement: a longer broadcast, request or
/// reply is refused to its sender at once ([`status::TOO_LARGE`]), never dropped on its way.
pub const MAX_MESSAGE: usize = 16 << 20;

/// Whether a message with this channel name and payload is within [`MAX_MESSAGE`].
pub const fn fits(channel: usize, payload: usize) -> bool {
    channel.saturating_add(payload) <= MAX_MESSAGE
}

/// A borrowed byte buffer: valid for `len` bytes at `ptr` while the call that passes it runs.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawSlice {
    /// First byte of the buffer; may be null only when `len` is 0.
    pub ptr: *const u8,
    /// Length of the buffer in bytes.
    pub len: usize,
}

impl RawSlice {
    /// An empty buffer (null pointer, length 0).
    pub const EMPTY: RawSlice = RawSlice { ptr: std::ptr::null(), len: 0 };

    /// Borrows `bytes` for a call.
    pub const fn new(bytes: &[u8]) -> Self {
        RawSlice { ptr: bytes.as_ptr(), len: bytes.len() }
    }

    /// Views the buffer, refusing a null pointer with a non-zero length and lengths over
    /// [`MAX_BUFFER`].
    ///
    /// # Safety
    /// Unless `ptr` is null, it must point to `len` readable bytes that stay valid and unchanged
    /// for `'a`.
    pub unsafe fn as_bytes<'a>(self) -> Option<&'a [u8]> {
        if self.ptr.is_null() {
            return (self.len == 0).then_some(&[]);
        }
        if self.len > MAX_BUFFER {
            return None;
        }
        // SAFETY: non-null, length within MAX_BUFFER (so within isize::MAX), and validity for
        // 'a is the caller's contract.
        Some(unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
    }
}

/// Who sends or receives a message inside one extension's namespace. Frames are numbered
/// from 1; the constants below are reserved.
pub type Peer = u64;
/// The extension's main half.
pub const PEER_MAIN: Peer = 0;
/// The host itself (its console and test harness act as a renderer through it).
pub const PEER_HOST: Peer = u64::MAX - 1;
/// Every half of the extension in the receiving process (broadcast fan-out).
pub const PEER_ALL: Peer = u64::MAX;

/// Kinds of [`RawMessage`].
pub mod kind {
    /// An event for every listener of `channel` (payload: the MessagePack value).
    pub const BROADCAST: u32 = 1;
    /// A request for the target half's handler on `channel` (payload: the MessagePack value).
    pub const INVOKE: u32 = 2;
    /// The answer to the invoke with the same `request_id`; `status` says whether it succeeded.
    pub const REPLY: u32 = 3;
    /// The invoker gave up on the request with this `request_id`: abort its handler.
    pub const CANCEL: u32 = 4;
    /// A renderer half asks main to sequence a store write (payload: `wire::StoreWrite`).
    pub const STORE_WRITE: u32 = 5;
    /// Main publishes a sequenced store write to every replica (payload: `wire::StoreUpdate`).
    pub const STORE_UPDATE: u32 = 6;
    /// Main refuses a renderer half's store write (payload: `wire::WriteRefusal`); it goes to
    /// the writer only. A non-zero status: the host refused the write on its way (that
    /// status), answering a writer in another process.
    pub const STORE_REFUSAL: u32 = 7;
    /// The persisted tier's [`STORE_WRITE`]: a renderer half asks main to sequence a write.
    pub const STORAGE_WRITE: u32 = 8;
    /// The persisted tier's [`STORE_UPDATE`]: main publishes a write the host made durable.
    pub const STORAGE_UPDATE: u32 = 9;
    /// Main tells a renderer half its write was not written (payload:
    /// `wire::WriteRefusal`); it goes to the writer only. A non-zero status, as for
    /// [`STORE_REFUSAL`].
    pub const STORAGE_REFUSAL: u32 = 10;
    /// Main asks the host to make a write durable (payload: `wire::StorageCommit`), to
    /// [`super::PEER_HOST`]. Routed even while the extension deactivates, so `deactivate` can
    /// save its state.
    pub const STORAGE_COMMIT: u32 = 11;
    /// The host answers main's commits, in order (payload: `wire::StorageCommitted`).
    pub const STORAGE_COMMITTED: u32 = 12;
}

/// Status codes returned by calls across the boundary, and carried by replies.
pub mod status {
    /// Success.
    pub const OK: u32 = 0;
    /// A pointer, length or encoded value was invalid.
    pub const INVALID: u32 = 1;
    /// The instance key names nothing (never existed, or already destroyed).
    pub const UNKNOWN_INSTANCE: u32 = 2;
    /// The extension is deactivating or inactive: nothing is routed to or from it.
    pub const DEACTIVATED: u32 = 3;
    /// Code on the other side panicked; the panic was caught.
    pub const PANICKED: u32 = 4;
    /// The origin or target half does not exist (a closed frame, for example).
    pub const NO_SUCH_PEER: u32 = 5;
    /// The receiver's queue is full.
    pub const BUSY: u32 = 6;
    /// The message is over [`super::MAX_MESSAGE`] (or larger than a transport carries).
    pub const TOO_LARGE: u32 = 7;
}

/// One IPC message crossing the boundary. For host-to-extension calls `origin` has been
/// stamped by the host; for extension-to-host calls the host checks it against the instance.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawMessage {
    /// One of [`kind`].
    pub kind: u32,
    /// For replies: [`status::OK`] or an [`crate::InvokeErrorKind`] code; otherwise 0.
    pub status: u32,
    /// The half that sent the message.
    pub origin: Peer,
    /// The half the message is for, or [`PEER_ALL`] for every half (broadcasts, store updates).
    pub target: Peer,
    /// Chosen by the invoking half, unique among its pending requests.
    pub request_id: u64,
    /// UTF-8 channel name.
    pub channel: RawSlice,
    /// MessagePack value (for error replies: a [`crate::wire::ErrorPayload`]).
    pub payload: RawSlice,
}

/// A payload the host lends to the library with [`Descriptor::deliver_leased`]: its bytes stay
/// valid and unchanged until the library calls `release(context)`, exactly once, from any
/// thread. The host frees the buffer then; the library never frees or writes it.
#[repr(C)]
#[derive(Debug)]
pub struct RawLease {
    /// The host's handle on the buffer, passed back to `release`.
    pub context: *mut c_void,
    /// Ends the lease: the payload's bytes may not be read after it. Thread-safe.
    pub release: unsafe extern "C" fn(context: *mut c_void),
}

/// What the host gives every instance: plain functions plus the instance's key, which the host
/// uses to know who is calling (an unknown key is refused, never trusted).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HostVTable {
    /// The host's [`ABI_VERSION`]; an instance refuses to start on a mismatch.
    pub abi_version: u32,
    /// Routes a message from the instance's half `message.origin`. Returns a [`status`] code.
    pub send: unsafe extern "C" fn(key: u64, message: *const RawMessage) -> u32,
    /// Finishes the control command numbered `completion` with a MessagePack
    /// [`crate::wire::Completion`].
    pub complete: unsafe extern "C" fn(key: u64, completion: u64, result: RawSlice),
    /// Forwards a tracing event; `level` is 1 (error) to 5 (trace).
    pub log: unsafe extern "C" fn(key: u64, level: u32, target: RawSlice, message: RawSlice),
    /// The instance's thread woke up and runs (its dispatcher, the tasks it woke) until its
    /// next [`HostVTable::batch_end`]: meanwhile the host may hold this thread's `send`s to a
    /// socket and write them together, in order. The host cannot know whether author code
    /// blocks the thread in between, so it bounds that wait itself.
    pub batch_begin: unsafe extern "C" fn(key: u64),
    /// The instance's thread is about to park (or stops): the host writes whatever this
    /// thread's sends left waiting, before the call returns.
    pub batch_end: unsafe extern "C" fn(key: u64),
    /// The descriptor the instance's thread may watch for messages, or -1: a host that
    /// delivers through [`Descriptor::deliver`] alone (a child process with more than one
    /// instance on its connection) answers -1. In the host's process it is an epoll set
    /// standing for the renderer processes' sockets that instance's thread reads, which may
    /// be none for now. Called once, on the instance's thread,
    /// in its runtime. When it is not -1, the instance calls [`HostVTable::drain`] at once and
    /// again whenever the descriptor is readable, on its own thread, until `drain` says
    /// [`drain::STOP`]. The descriptor is the host's, open until the instance is destroyed:
    /// the instance never reads, writes or closes it, only waits for it to be readable.
    pub inbound_fd: unsafe extern "C" fn(key: u64) -> i32,
    /// The instance's thread has time for what arrived: the host reads what is there without
    /// blocking and delivers it (through [`Descriptor::deliver`], so to this instance's mailbox
    /// from its own thread, which needs no wake). Returns one of [`drain`]. Never runs author
    /// code.
    pub drain: unsafe extern "C" fn(key: u64) -> u32,
}

/// What [`HostVTable::drain`] returns.
pub mod drain {
    /// Nothing more to read now: call again when the descriptor is readable.
    pub const IDLE: u32 = 0;
    /// Stopped with more to read, to let the thread's other work run: call again soon, without
    /// waiting for the descriptor.
    pub const MORE: u32 = 1;
    /// Stop watching the descriptor: the host reads it elsewhere from now on.
    pub const STOP: u32 = 2;
}

/// An instance of an extension inside one process, as the extension library sees it.
pub type InstancePtr = *mut c_void;

/// The static an extension library exports under [`DESCRIPTOR_SYMBOL`].
#[repr(C)]
#[derive(Debug)]
pub struct Descriptor {
    /// Always first, in every ABI version.
    pub abi_version: u32,
    /// 1 when the library was built with debug assertions, 0 otherwise.
    pub debug_build: u32,
    /// UTF-8 extension name (static data).
    pub name: RawSlice,
    /// UTF-8 semver version (static data).
    pub version: RawSlice,
    /// UTF-8 version of the `extension-api` crate the library was built with (static data).
    pub api_version: RawSlice,
    /// Starts an instance: its runtime thread, nothing of the author's code. `config` is a
    /// MessagePack [`crate::wire::InstanceConfig`]. Returns null on failure.
    pub instantiate: unsafe extern "C" fn(host: *const HostVTable, key: u64, config: RawSlice) -> InstancePtr,
    /// Runs a MessagePack [`crate::wire::Control`] command; it answers through
    /// [`HostVTable::complete`].
    pub control: unsafe extern "C" fn(instance: InstancePtr, command: RawSlice) -> u32,
    /// Queues a message for the instance's halves. Never runs author code on the calling thread.
    pub deliver: unsafe extern "C" fn(instance: InstancePtr, message: *const RawMessage) -> u32,
    /// [`Descriptor::deliver`] for a message whose payload the host lends: the instance queues
    /// the payload's bytes as they are instead of a copy (a large message read from a socket),
    /// and releases `lease` once it is done with them. The lease passes to the library with
    /// the call, whatever it returns: refused, or not started, it is released before the call
    /// returns. The channel and the message itself are borrowed for the call, as `deliver`'s.
    pub deliver_leased: unsafe extern "C" fn(instance: InstancePtr, message: *const RawMessage, lease: RawLease) -> u32,
    /// Stops everything the instance runs and frees it. The pointer is dead afterwards.
    pub destroy: unsafe extern "C" fn(instance: InstancePtr) -> u32,
    /// The files of the extension's web renderer (static data), `web_asset_count` of them;
    /// null (and 0) when it has none. Built by `export_extension!(..., web = "DIR")`.
    pub web_assets: *const WebAsset,
    /// How many [`WebAsset`]s `web_assets` points to.
    pub web_asset_count: usize,
}

// SAFETY: every pointer in a Descriptor points to immutable static data or code.
unsafe impl Sync for Descriptor {}
// SAFETY: as above; nothing in it is tied to a thread.
unsafe impl Send for Descriptor {}

/// One file of an extension's web renderer, embedded in its library: the host serves `bytes`
/// at `/path` on the extension's origin. The entry module is the asset at `index.js`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WebAsset {
    /// UTF-8 path relative to the web renderer's directory, `/`-separated, with no empty, `.`
    /// or `..` segment (static data).
    pub path: RawSlice,
    /// The file's contents (static data).
    pub bytes: RawSlice,
}

// SAFETY: a WebAsset points to immutable static data only.
unsafe impl Sync for WebAsset {}
// SAFETY: as above; nothing in it is tied to a thread.
unsafe impl Send for WebAsset {}

/// The most web assets a library may embed (the host refuses a longer table).
pub const MAX_WEB_ASSETS: usize = 4096;

/// The name of the web renderer's entry module, at the root of its directory.
pub const WEB_ENTRY: &str = "index.js";

/// Makes a [`RawSlice`] of static string data, for descriptors built in `const` context.
pub const fn static_str(s: &'static str) -> RawSlice {
    RawSlice::new(s.as_bytes())
}
