//! An endpoint: one instance of an extension in one process, where some of its halves run.
//! In this process it is a library instance called through its descriptor; in a child process
//! it is reached through the child's connection.
//!
//! Libraries in this process call the host through plain `extern "C"` functions that carry
//! only the instance's key; the key is looked up here, and an unknown key is refused. The
//! extension a message belongs to comes from that lookup, never from the message.

use std::collections::BTreeSet;

use foldhash::HashMap;
use std::ffi::c_void;
use std::hash::{BuildHasher, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use extension_api::abi::{self, Descriptor, HostVTable, Peer, RawMessage, RawSlice};
use extension_api::wire::{Completion, Control, InstanceConfig};
use tokio::sync::oneshot;

use crate::core::lock;
use crate::events::LogRecord;
use crate::link::Link;
use crate::remote::Connection;

/// The instance pointer a library gave us.
#[derive(Clone, Copy)]
struct InstancePtr(*mut c_void);

// SAFETY: the library's instance is built for use from any thread: `control` and `deliver` only
// queue work for its own runtime thread, behind its own synchronisation.
unsafe impl Send for InstancePtr {}
// SAFETY: as above.
unsafe impl Sync for InstancePtr {}

enum Transport {
    Local { descriptor: &'static Descriptor, instance: RwLock<Option<InstancePtr>> },
    Remote { connection: Arc<Connection> },
}

/// One instance of an extension, in this process or in a child.
pub(crate) struct Endpoint {
    pub(crate) key: u64,
    pub(crate) link: Weak<Link>,
    /// The halves that run here: main and/or frames.
    peers: RwLock<BTreeSet<Peer>>,
    transport: Transport,
    /// Set once `destroy` starts: nothing more is sent to the instance.
    destroyed: AtomicBool,
}

/// Why an endpoint could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("the library could not start an instance (its runtime thread or config was refused)")]
    Refused,
    #[error("the child process could not load the library: {0}")]
    Remote(String),
}

/// Why a control command did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("the instance refused the command (status {0})")]
    Refused(u32),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

static LOCAL: RwLock<Option<HashMap<u64, Arc<Endpoint>>>> = RwLock::new(None);
/// Control commands awaiting their completion: (instance key, completion number) -> waiter.
type Completions = HashMap<(u64, u64), oneshot::Sender<Completion>>;
static COMPLETIONS: Mutex<Option<Completions>> = Mutex::new(None);
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);
static NEXT_COMPLETION: AtomicU64 = AtomicU64::new(1);

static HOST_VTABLE: HostVTable =
    HostVTable { abi_version: abi::ABI_VERSION, send: host_send, complete: host_complete, log: host_log };

/// A fresh instance key: unique in this process (and so on every connection), and unguessable.
/// The key is all a library presents when it calls the host, so it is a capability: a counter
/// would let a library in this process (or sharing a renderer process) name its neighbour's key
/// and speak, log and complete commands as another extension.
///
/// It is the counter put through a keyed permutation (a four-round Feistel network whose
/// round function is SipHash under a secret drawn from the OS's randomness, std's
/// `RandomState`): distinct counters give distinct keys by construction, so no record of the
/// keys issued is kept (memory stays flat however many instances come and go), and without
/// the secret, which lives only in the host, one key says nothing about another.
pub(crate) fn next_key() -> u64 {
    static SECRET: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let secret = SECRET.get_or_init(Default::default);
    loop {
        let key = permute(secret, NEXT_KEY.fetch_add(1, Ordering::Relaxed));
        // 0 is never a key (the one counter that maps to it is skipped).
        if key != 0 {
            return key;
        }
    }
}

/// A permutation of `u64` keyed by `secret`: a Feistel network is invertible whatever its
/// round function, so distinct inputs never collide.
fn permute(secret: &impl BuildHasher, value: u64) -> u64 {
    let (mut left, mut right) = ((value >> 32) as u32, value as u32);
    for round in 0..4u32 {
        let mut hasher = secret.build_hasher();
        hasher.write_u32(round);
        hasher.write_u32(right);
        (left, right) = (right, left ^ hasher.finish() as u32);
    }
    (u64::from(left) << 32) | u64::from(right)
}

fn find_local(key: u64) -> Option<Arc<Endpoint>> {
    LOCAL.read().unwrap_or_else(PoisonError::into_inner).as_ref()?.get(&key).cloned()
}

/// Finishes a control command; used for local and remote completions alike.
pub(crate) fn complete(key: u64, completion: u64, result: Completion) {
    let waiter = lock(&COMPLETIONS).as_mut().and_then(|map| map.remove(&(key, completion)));
    if let Some(waiter) = waiter {
        let _ = waiter.send(result);
    }
}

/// Fails every command still waiting on `key` (its process went away).
pub(crate) fn fail_completions(key: u64, reason: &str) {
    let waiting: Vec<_> = match lock(&COMPLETIONS).as_mut() {
        Some(map) => {
            let keys: Vec<_> = map.keys().filter(|(k, _)| *k == key).copied().collect();
            keys.into_iter().filter_map(|k| map.remove(&k)).collect()
        }
        None => Vec::new(),
    };
    for waiter in waiting {
        let _ = waiter.send(Completion::Failed { reason: reason.to_owned() });
    }
}

impl Endpoint {
    /// Starts an instance of the library in this process.
    pub(crate) fn start_local(
        link: &Arc<Link>,
        descriptor: &'static Descriptor,
        config: &InstanceConfig,
    ) -> Result<Arc<Endpoint>, StartError> {
        // Routing here is a synchronous call: requests between its halves may skip it.
        let config = InstanceConfig { route_within: true, ..config.clone() };
        let config = rmp_serde::to_vec_named(&config).map_err(|_| StartError::Refused)?;
        let endpoint = Arc::new(Endpoint {
            key: next_key(),
            link: Arc::downgrade(link),
            peers: RwLock::new(BTreeSet::new()),
            transport: Transport::Local { descriptor, instance: RwLock::new(None) },
            destroyed: AtomicBool::new(false),
        });
        // Registered first: the instance may log while it starts.
        LOCAL
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashMap::default)
            .insert(endpoint.key, endpoint.clone());
        // SAFETY: `instantiate` comes from a descriptor whose ABI version matched; the vtable is
        // a static and `config` outlives the call.
        let pointer = unsafe { (descriptor.instantiate)(&HOST_VTABLE, endpoint.key, RawSlice::new(&config)) };
        if pointer.is_null() {
            endpoint.unregister_local();
            return Err(StartError::Refused);
        }
        if let Transport::Local { instance, .. } = &endpoint.transport {
            *instance.write().unwrap_or_else(PoisonError::into_inner) = Some(InstancePtr(pointer));
        }
        Ok(endpoint)
    }

    /// Starts an instance of the library at `path` in the child process behind `connection`.
    pub(crate) async fn start_remote(
        link: &Arc<Link>,
        connection: &Arc<Connection>,
        path: &Path,
        config: InstanceConfig,
        timeout: Duration,
    ) -> Result<Arc<Endpoint>, StartError> {
        let endpoint = Arc::new(Endpoint {
            key: next_key(),
            link: Arc::downgrade(link),
            peers: RwLock::new(BTreeSet::new()),
            transport: Transport::Remote { connection: connection.clone() },
            destroyed: AtomicBool::new(false),
        });
        connection.register(endpoint.key, Arc::downgrade(&endpoint));
        // Routing from another process is a round trip: every message takes it.
        let config = InstanceConfig { route_within: false, ..config };
        match connection.load(endpoint.key, path, config, timeout).await {
            Ok(()) => Ok(endpoint),
            Err(reason) => {
                connection.unregister(endpoint.key);
                Err(StartError::Remote(reason))
            }
        }
    }

    fn unregister_local(&self) {
        if let Some(map) = LOCAL.write().unwrap_or_else(PoisonError::into_inner).as_mut() {
            map.remove(&self.key);
        }
    }

    pub(crate) fn hosts(&self, peer: Peer) -> bool {
        self.peers.read().unwrap_or_else(PoisonError::into_inner).contains(&peer)
    }

    pub(crate) fn place(&self, peer: Peer) {
        self.peers.write().unwrap_or_else(PoisonError::into_inner).insert(peer);
    }

    pub(crate) fn unplace(&self, peer: Peer) -> bool {
        self.peers.write().unwrap_or_else(PoisonError::into_inner).remove(&peer)
    }

    pub(crate) fn peers(&self) -> Vec<Peer> {
        self.peers.read().unwrap_or_else(PoisonError::into_inner).iter().copied().collect()
    }

    /// The child process this endpoint runs in, if any.
    pub(crate) fn connection(&self) -> Option<&Arc<Connection>> {
        match &self.transport {
            Transport::Remote { connection } => Some(connection),
            Transport::Local { .. } => None,
        }
    }

    /// Hands a message to the instance; returns a status code.
    pub(crate) fn deliver(&self, message: &RawMessage) -> u32 {
        if self.destroyed.load(Ordering::Acquire) {
            return abi::status::DEACTIVATED;
        }
        match &self.transport {
            Transport::Local { descriptor, instance } => {
                let instance = instance.read().unwrap_or_else(PoisonError::into_inner);
                match *instance {
                    // SAFETY: the pointer stays valid while we hold the read lock (destroy takes
                    // it out under the write lock first); `message` outlives the call.
                    Some(InstancePtr(pointer)) => unsafe { (descriptor.deliver)(pointer, message) },
                    None => abi::status::DEACTIVATED,
                }
            }
            Transport::Remote { connection } => connection.deliver(self.key, message),
        }
    }

    /// Sends a control command and waits for its completion.
    pub(crate) async fn control(
        &self,
        command: impl FnOnce(u64) -> Control,
        timeout: Duration,
    ) -> Result<Completion, ControlError> {
        let completion = NEXT_COMPLETION.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        lock(&COMPLETIONS).get_or_insert_with(HashMap::default).insert((self.key, completion), sender);
        // Removes the waiter however this ends: answered, refused, timed out or dropped.
        let _waiter = CompletionGuard { key: self.key, completion };
        let command = command(completion);
        if self.destroyed.load(Ordering::Acquire) {
            return Err(ControlError::Refused(abi::status::DEACTIVATED));
        }
        let status = match &self.transport {
            Transport::Local { descriptor, instance } => {
                let bytes =
                    rmp_serde::to_vec_named(&command).map_err(|_| ControlError::Refused(abi::status::INVALID))?;
                let instance = instance.read().unwrap_or_else(PoisonError::into_inner);
                match *instance {
                    // SAFETY: as in `deliver`; `bytes` outlives the call.
                    Some(InstancePtr(pointer)) => unsafe { (descriptor.control)(pointer, RawSlice::new(&bytes)) },
                    None => abi::status::DEACTIVATED,
                }
            }
            Transport::Remote { connection } => connection.control(self.key, command),
        };
        if status != abi::status::OK {
            return Err(ControlError::Refused(status));
        }
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(completion)) => Ok(completion),
            _ => Err(ControlError::TimedOut(timeout)),
        }
    }

    /// Stops the instance for good: every task of the extension is dropped (its thread joined,
    /// or its process told to). Returns false if it did not stop cleanly in time.
    pub(crate) async fn destroy(self: &Arc<Self>) -> bool {
        if self.destroyed.swap(true, Ordering::AcqRel) {
            return true;
        }
        let stopped = match &self.transport {
            Transport::Local { descriptor, instance } => {
                let taken = instance.write().unwrap_or_else(PoisonError::into_inner).take();
                let destroy = descriptor.destroy;
                let status = match taken {
                    // SAFETY: the pointer came from `instantiate`, was taken out under the write
                    // lock so no `deliver` or `control` uses it, and is destroyed exactly once.
                    // `destroy` joins the instance's thread, so it runs off the async threads.
                    Some(InstancePtr(pointer)) => {
                        let pointer = InstancePtr(pointer);
                        tokio::task::spawn_blocking(move || {
                            // The whole wrapper moves in (it is `Send`), not its raw field.
                            let pointer = pointer;
                            let InstancePtr(pointer) = pointer;
                            // SAFETY: see above.
                            unsafe { destroy(pointer) }
                        })
                        .await
                        .unwrap_or(abi::status::PANICKED)
                    }
                    None => abi::status::OK,
                };
                // Unregistered last, so what the extension logs while its tasks are dropped
                // still arrives.
                self.unregister_local();
                status == abi::status::OK
            }
            Transport::Remote { connection } => {
                let stopped = connection.destroy(self.key).await;
                connection.unregister(self.key);
                stopped
            }
        };
        fail_completions(self.key, "the instance was destroyed");
        stopped
    }
}

/// Forgets a control command's waiter when its wait ends, however it ends.
struct CompletionGuard {
    key: u64,
    completion: u64,
}

impl Drop for CompletionGuard {
    fn drop(&mut self) {
        if let Some(map) = lock(&COMPLETIONS).as_mut() {
            map.remove(&(self.key, self.completion));
        }
    }
}

/// Forwards a log record of `endpoint`'s extension to the host's tracing and log stream.
pub(crate) fn forward_log(endpoint: &Endpoint, level: u32, target: &str, message: &str) {
    let Some(link) = endpoint.link.upgrade() else { return };
    let record = LogRecord::new(&link.name, level, target, message);
    record.emit();
    link.publish_log(record);
}

unsafe extern "C" fn host_send(key: u64, message: *const RawMessage) -> u32 {
    catch_unwind(AssertUnwindSafe(|| {
        let Some(endpoint) = find_local(key) else {
            return abi::status::UNKNOWN_INSTANCE;
        };
        // SAFETY: null is refused by `as_ref`; otherwise the library passes a message valid for
        // this call. Its slices are checked where they are read.
        let Some(message) = (unsafe { message.as_ref() }) else {
            return abi::status::INVALID;
        };
        // SAFETY: as above: valid for this call, or refused as a null/oversized slice.
        let channel = unsafe { message.channel.as_bytes() };
        // SAFETY: as above.
        let payload = unsafe { message.payload.as_bytes() };
        // Channel names must be UTF-8; replies and cancels are matched by request id instead.
        let named = !matches!(message.kind, abi::kind::REPLY | abi::kind::CANCEL);
        if channel.is_none_or(|c| named && std::str::from_utf8(c).is_err()) || payload.is_none() {
            return abi::status::INVALID;
        }
        match endpoint.link.upgrade() {
            Some(link) => link.route(&endpoint, message),
            None => abi::status::DEACTIVATED,
        }
    }))
    .unwrap_or(abi::status::PANICKED)
}

unsafe extern "C" fn host_complete(key: u64, completion: u64, result: RawSlice) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // Only an instance of this process completes its own commands (remote ones arrive on
        // their connection, checked there).
        if find_local(key).is_none() {
            return;
        }
        // SAFETY: the library keeps `result` valid for this call; null/oversized is refused.
        let bytes = unsafe { result.as_bytes() }.unwrap_or_default();
        let result = extension_api::wire::decode::<Completion>(bytes)
            .unwrap_or_else(|error| Completion::Failed { reason: format!("undecodable completion: {error}") });
        complete(key, completion, result);
    }));
}

unsafe extern "C" fn host_log(key: u64, level: u32, target: RawSlice, message: RawSlice) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let Some(endpoint) = find_local(key) else { return };
        // SAFETY: the library keeps both buffers valid for this call; invalid ones are refused.
        let (target, message) = unsafe { (target.as_bytes(), message.as_bytes()) };
        let (Some(target), Some(message)) = (target, message) else {
            return;
        };
        forward_log(&endpoint, level, &String::from_utf8_lossy(target), &String::from_utf8_lossy(message));
    }));
}

#[cfg(test)]
mod tests {
    use super::permute;
    use std::collections::HashSet;
    use std::collections::hash_map::RandomState;

    #[test]
    fn keys_are_distinct_and_do_not_follow_the_counter() {
        let secret = RandomState::new();
        let keys: Vec<u64> = (0..100_000).map(|n| permute(&secret, n)).collect();
        assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len(), "a permutation never collides");
        // Neighbouring counters give unrelated keys: about half the bits differ.
        let differing: u32 = keys.windows(2).map(|pair| (pair[0] ^ pair[1]).count_ones()).sum();
        let mean = f64::from(differing) / (keys.len() - 1) as f64;
        assert!((28.0..36.0).contains(&mean), "mean differing bits {mean}");
        // Another secret, other keys.
        let other = RandomState::new();
        assert_ne!(permute(&other, 1), permute(&secret, 1));
    }
}
