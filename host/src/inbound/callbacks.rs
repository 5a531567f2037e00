//! The inbound edge of this process: the `extern "C"` callbacks libraries call (`send`,
//! `complete`, `log`, `batch_begin`, `batch_end`, `inbound_fd` and `drain`, by which an
//! instance's thread reads its renderer processes' sockets (`main_drain`), of [`HostVTable`]) and the registry of
//! instance keys they are checked against. This is where raw messages become [`Message`]s:
//! everything past it works on validated data.
//!
//! A callback carries only the instance's key; the key is looked up here, and an unknown key
//! is refused. The extension a message belongs to comes from that lookup (the link registered
//! with the key), never from the message.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, PoisonError, RwLock, Weak};

use extension_api::abi::{self, HostVTable, RawMessage, RawSlice};
use extension_api::message::Message;
use extension_api::wire::Completion;
use foldhash::HashMap;

use crate::endpoint::Endpoint;
use crate::link::Link;

/// The functions every library instance of this process calls the host through.
pub(crate) static HOST_VTABLE: HostVTable = HostVTable {
    abi_version: abi::ABI_VERSION,
    send: host_send,
    complete: host_complete,
    log: host_log,
    batch_begin: host_batch_begin,
    batch_end: host_batch_end,
    inbound_fd: host_inbound_fd,
    drain: host_drain,
};

/// What a key registered in this process routes to.
struct Registered {
    /// Weak: the host owns the namespace; a call after it is gone is refused.
    link: Weak<Link>,
    endpoint: Arc<Endpoint>,
}

/// The instances of this process, by key. Process-wide, not a field of a `Host`: a C callback
/// gets nothing but the key, and several `Host`s may live in one process (keys are unique
/// across them, see `keys.rs`).
static LOCAL: RwLock<Option<HashMap<u64, Registered>>> = RwLock::new(None);

/// Registers an instance of this process under its key, before it starts (it may log while it
/// starts).
pub(crate) fn register(link: &Arc<Link>, endpoint: &Arc<Endpoint>) {
    let registered = Registered { link: Arc::downgrade(link), endpoint: endpoint.clone() };
    LOCAL
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::default)
        .insert(endpoint.key, registered);
}

/// Forgets `key`: every later call with it is refused. Nothing if it was never registered
/// (an instance in a child process).
pub(crate) fn forget(key: u64) {
    if let Some(map) = LOCAL.write().unwrap_or_else(PoisonError::into_inner).as_mut() {
        map.remove(&key);
    }
}

/// The endpoint registered under `key`, with its link if that still exists.
fn find(key: u64) -> Option<(Option<Arc<Link>>, Arc<Endpoint>)> {
    let local = LOCAL.read().unwrap_or_else(PoisonError::into_inner);
    let registered = local.as_ref()?.get(&key)?;
    Some((registered.link.upgrade(), registered.endpoint.clone()))
}

unsafe extern "C" fn host_send(key: u64, message: *const RawMessage) -> u32 {
    catch_unwind(AssertUnwindSafe(|| {
        let Some((link, endpoint)) = find(key) else {
            return abi::status::UNKNOWN_INSTANCE;
        };
        // SAFETY: null is refused by `as_ref`; otherwise the library passes a message valid for
        // this call.
        let Some(raw) = (unsafe { message.as_ref() }) else {
            return abi::status::INVALID;
        };
        // SAFETY: the library keeps the message's buffers valid for this call; `from_raw`
        // refuses null-with-length and oversized slices before reading them.
        let message = match unsafe { Message::from_raw(raw) } {
            Ok(message) => message,
            Err(status) => return status,
        };
        match link {
            Some(link) => link.route(&endpoint, &message),
            None => abi::status::DEACTIVATED,
        }
    }))
    .unwrap_or(abi::status::PANICKED)
}

unsafe extern "C" fn host_batch_begin(_key: u64) {
    // No key lookup (a lock on every run of every instance thread, and a key cannot tell the
    // instance's thread from another anyway): a batch only defers the calling thread's own
    // writes to child sockets, in order, until its end (`remote::batch`). A library calling
    // this on a thread of the host's does so inside the host's call into it, and that call
    // ends the run it began (`batch::scoped`, in `LibraryInstance`): no host thread is left
    // deferring. On a thread of its own it defers only its own sends, which the flusher
    // writes within two ticks.
    // Its runs arm the readers of last resort of the sockets its thread reads (`main_drain`:
    // a thread-local, no lock).
    let _ = catch_unwind(|| {
        crate::remote::batch::begin();
        super::main_drain::run_begins();
    });
}

unsafe extern "C" fn host_batch_end(_key: u64) {
    let _ = catch_unwind(|| {
        super::main_drain::run_ends();
        crate::remote::batch::end();
    });
}

/// An instance of this process watches its epoll set: the sockets of the child connections
/// whose packets all go to it, which its thread reads itself (`main_drain`). Everything else
/// still reaches it through its descriptor's `deliver`.
unsafe extern "C" fn host_inbound_fd(key: u64) -> i32 {
    catch_unwind(|| if find(key).is_some() { super::main_drain::inbound_fd(key) } else { -1 }).unwrap_or(-1)
}

unsafe extern "C" fn host_drain(key: u64) -> u32 {
    catch_unwind(|| super::main_drain::drain(key)).unwrap_or_else(|_| {
        // That thread stops watching its set: its sockets go back to their reader threads. The
        // set stays open (its runtime still holds it until the watching task ends).
        let _ = catch_unwind(|| super::main_drain::release(key, false));
        abi::drain::STOP
    })
}

unsafe extern "C" fn host_complete(key: u64, completion: u64, result: RawSlice) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // Only an instance of this process completes its own commands (remote ones arrive on
        // their connection, checked there).
        let Some((link, endpoint)) = find(key) else { return };
        if completion == extension_api::wire::ATTENTION {
            if let Some(link) = link {
                link.attention(&endpoint);
            }
            return;
        }
        // SAFETY: the library keeps `result` valid for this call; null/oversized is refused.
        let bytes = unsafe { result.as_bytes() }.unwrap_or_default();
        let result = extension_api::wire::decode::<Completion>(bytes)
            .unwrap_or_else(|error| Completion::Failed { reason: format!("undecodable completion: {error}") });
        endpoint.complete(completion, result);
    }));
}

unsafe extern "C" fn host_log(key: u64, level: u32, target: RawSlice, message: RawSlice) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let Some((Some(link), _)) = find(key) else { return };
        // SAFETY: the library keeps both buffers valid for this call; invalid ones are refused.
        let (target, message) = unsafe { (target.as_bytes(), message.as_bytes()) };
        let (Some(target), Some(message)) = (target, message) else {
            return;
        };
        link.forward_log(level, &String::from_utf8_lossy(target), &String::from_utf8_lossy(message));
    }));
}
