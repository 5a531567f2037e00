//! The host's side of one running instance, and the routing of its messages.
//!
//! Extension libraries call the host through plain `extern "C"` functions that carry only the
//! instance's key. The key is looked up in a process-wide table; the identity of a message's
//! extension comes from that lookup, never from the message, and an unknown key is refused.

use std::collections::{BTreeSet, HashMap};
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use extension_api::abi::{self, Descriptor, HostVTable, PEER_ALL, PEER_HOST, PEER_MAIN, Peer, RawMessage, RawSlice};
use extension_api::wire::{Completion, Control, ErrorPayload, InstanceConfig};
use extension_api::{InvokeError, InvokeErrorKind};
use tokio::sync::{broadcast, oneshot};

use crate::events::{LogRecord, ObservedBroadcast};

/// Locks a mutex, tolerating poisoning: host bookkeeping stays usable after a panic elsewhere.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A reply to a request the host itself made.
#[derive(Debug)]
pub(crate) struct HostReply {
    pub(crate) status: u32,
    pub(crate) payload: Vec<u8>,
}

/// State shared by everything of one `Host`.
pub(crate) struct Core {
    /// Requests in flight: (instance key, origin, request id) -> target.
    pending: Mutex<HashMap<(u64, Peer, u64), Peer>>,
    /// Requests the host made (console, harness): (instance key, request id) -> waiter.
    waiters: Mutex<HashMap<(u64, u64), oneshot::Sender<HostReply>>>,
    next_request: AtomicU64,
    pub(crate) logs: broadcast::Sender<LogRecord>,
    pub(crate) broadcasts: broadcast::Sender<ObservedBroadcast>,
}

impl Core {
    pub(crate) fn new() -> Core {
        Core {
            pending: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            logs: broadcast::channel(4096).0,
            broadcasts: broadcast::channel(4096).0,
        }
    }

    pub(crate) fn pending_for(&self, key: u64) -> usize {
        lock(&self.pending).keys().filter(|(k, _, _)| *k == key).count()
    }
}

/// The instance pointer a library gave us.
#[derive(Clone, Copy)]
struct InstancePtr(*mut c_void);

// SAFETY: the library's instance is built for use from any thread: `control` and `deliver` only
// queue work for its own runtime thread, behind its own synchronisation.
unsafe impl Send for InstancePtr {}
// SAFETY: as above.
unsafe impl Sync for InstancePtr {}

/// One instantiated extension as the host sees it.
pub(crate) struct Link {
    pub(crate) key: u64,
    pub(crate) name: String,
    descriptor: &'static Descriptor,
    instance: RwLock<Option<InstancePtr>>,
    /// False from the start of deactivation: nothing more is routed from or to it.
    routing: AtomicBool,
    /// Frames where its renderer half is open, in this process.
    frames: RwLock<BTreeSet<Peer>>,
    core: Arc<Core>,
}

static LINKS: RwLock<Option<HashMap<u64, Arc<Link>>>> = RwLock::new(None);
/// Control commands awaiting their completion: (instance key, completion number) -> waiter.
type Completions = HashMap<(u64, u64), oneshot::Sender<Completion>>;
static COMPLETIONS: Mutex<Option<Completions>> = Mutex::new(None);
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);
static NEXT_COMPLETION: AtomicU64 = AtomicU64::new(1);

static HOST_VTABLE: HostVTable = HostVTable {
    abi_version: abi::ABI_VERSION,
    send: host_send,
    complete: host_complete,
    log: host_log,
};

fn find(key: u64) -> Option<Arc<Link>> {
    LINKS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()?
        .get(&key)
        .cloned()
}

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
#[error("the library could not start an instance (its runtime thread or config was refused)")]
pub(crate) struct InstantiateError;

/// Why a control command did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("the instance refused the command (status {0})")]
    Refused(u32),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

impl Link {
    /// Starts an instance of `descriptor`'s extension and registers it for callbacks.
    pub(crate) fn instantiate(
        name: &str,
        descriptor: &'static Descriptor,
        core: Arc<Core>,
        max_log_level: u32,
    ) -> Result<Arc<Link>, InstantiateError> {
        let config = InstanceConfig {
            name: name.to_owned(),
            max_log_level,
        };
        let config = rmp_serde::to_vec_named(&config).map_err(|_| InstantiateError)?;
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(Link {
            key,
            name: name.to_owned(),
            descriptor,
            instance: RwLock::new(None),
            routing: AtomicBool::new(true),
            frames: RwLock::new(BTreeSet::new()),
            core,
        });
        // Registered first: the instance may log while it starts.
        LINKS
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashMap::new)
            .insert(key, link.clone());
        // SAFETY: `instantiate` comes from a descriptor whose ABI version matched; the vtable is
        // a static and `config` outlives the call.
        let pointer = unsafe { (descriptor.instantiate)(&HOST_VTABLE, key, RawSlice::new(&config)) };
        if pointer.is_null() {
            link.unregister();
            return Err(InstantiateError);
        }
        *link.instance.write().unwrap_or_else(PoisonError::into_inner) = Some(InstancePtr(pointer));
        Ok(link)
    }

    fn unregister(&self) {
        if let Some(links) = LINKS.write().unwrap_or_else(PoisonError::into_inner).as_mut() {
            links.remove(&self.key);
        }
    }

    pub(crate) fn has_frame(&self, frame: Peer) -> bool {
        self.frames
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&frame)
    }

    pub(crate) fn add_frame(&self, frame: Peer) {
        self.frames
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(frame);
    }

    pub(crate) fn remove_frame(&self, frame: Peer) -> bool {
        self.frames
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&frame)
    }

    pub(crate) fn frames(&self) -> Vec<Peer> {
        self.frames
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// Stops routing from and to the instance (the first step of deactivation).
    pub(crate) fn stop_routing(&self) {
        // Under the pending lock: a request either was recorded before (and is failed by the
        // caller's `fail_pending`), or sees routing stopped. None slips in between.
        let _pending = lock(&self.core.pending);
        self.routing.store(false, Ordering::Release);
    }

    fn deliver(&self, message: &RawMessage) -> u32 {
        let instance = self.instance.read().unwrap_or_else(PoisonError::into_inner);
        match *instance {
            // SAFETY: the pointer stays valid while we hold the read lock (destroy takes it
            // out under the write lock first); `message` outlives the call.
            Some(InstancePtr(pointer)) => unsafe { (self.descriptor.deliver)(pointer, message) },
            None => abi::status::DEACTIVATED,
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
        lock(&COMPLETIONS)
            .get_or_insert_with(HashMap::new)
            .insert((self.key, completion), sender);
        // Removes the waiter however this ends: answered, refused, timed out or dropped.
        let _waiter = CompletionGuard {
            key: self.key,
            completion,
        };
        let bytes =
            rmp_serde::to_vec_named(&command(completion)).map_err(|_| ControlError::Refused(abi::status::INVALID))?;
        let status = {
            let instance = self.instance.read().unwrap_or_else(PoisonError::into_inner);
            match *instance {
                // SAFETY: as in `deliver`; `bytes` outlives the call.
                Some(InstancePtr(pointer)) => unsafe { (self.descriptor.control)(pointer, RawSlice::new(&bytes)) },
                None => abi::status::DEACTIVATED,
            }
        };
        if status != abi::status::OK {
            return Err(ControlError::Refused(status));
        }
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(completion)) => Ok(completion),
            _ => Err(ControlError::TimedOut(timeout)),
        }
    }

    /// Stops the instance for good: every task of the extension is dropped, its thread joined.
    /// Blocks (bounded by the library's own wait); call it off the async threads.
    pub(crate) fn destroy(&self) -> u32 {
        self.stop_routing();
        let taken = self.instance.write().unwrap_or_else(PoisonError::into_inner).take();
        let status = match taken {
            // SAFETY: the pointer came from `instantiate`, was taken out under the write lock so
            // no `deliver` or `control` is using it, and is destroyed exactly once.
            Some(InstancePtr(pointer)) => unsafe { (self.descriptor.destroy)(pointer) },
            None => abi::status::OK,
        };
        // Unregistered last, so what the extension logs while its tasks are dropped still arrives.
        self.unregister();
        // Whatever was still waiting can never be answered now.
        self.fail_pending(|_, _| true, InvokeErrorKind::Deactivated);
        status
    }

    /// Fails the requests of this instance matched by `matches(origin, target)`: the origin
    /// gets an error reply of `kind`; the target is told to cancel.
    pub(crate) fn fail_pending(&self, matches: impl Fn(Peer, Peer) -> bool, kind: InvokeErrorKind) {
        let failed: Vec<((u64, Peer, u64), Peer)> = {
            let mut pending = lock(&self.core.pending);
            let keys: Vec<_> = pending
                .iter()
                .filter(|((key, origin, _), target)| *key == self.key && matches(*origin, **target))
                .map(|(k, t)| (*k, *t))
                .collect();
            for (k, _) in &keys {
                pending.remove(k);
            }
            keys
        };
        for ((_, origin, request_id), target) in failed {
            let message = format!("{kind} before the reply arrived");
            self.reply_error(target, origin, request_id, "", kind, &message);
            self.deliver(&RawMessage {
                kind: abi::kind::CANCEL,
                status: 0,
                origin,
                target,
                request_id,
                channel: RawSlice::EMPTY,
                payload: RawSlice::EMPTY,
            });
        }
    }

    fn reply_error(&self, from: Peer, to: Peer, request_id: u64, channel: &str, kind: InvokeErrorKind, message: &str) {
        let payload = ErrorPayload {
            message: message.to_owned(),
            data: None,
        };
        let bytes = rmp_serde::to_vec_named(&payload).unwrap_or_default();
        if to == PEER_HOST {
            self.wake_waiter(
                request_id,
                HostReply {
                    status: kind.code(),
                    payload: bytes,
                },
            );
            return;
        }
        self.deliver(&RawMessage {
            kind: abi::kind::REPLY,
            status: kind.code(),
            origin: from,
            target: to,
            request_id,
            channel: RawSlice::new(channel.as_bytes()),
            payload: RawSlice::new(&bytes),
        });
    }

    fn wake_waiter(&self, request_id: u64, reply: HostReply) {
        if let Some(waiter) = lock(&self.core.waiters).remove(&(self.key, request_id)) {
            let _ = waiter.send(reply);
        }
    }

    fn origin_is_valid(&self, origin: Peer) -> bool {
        origin == PEER_MAIN || (origin != PEER_HOST && origin != PEER_ALL && self.has_frame(origin))
    }

    /// Routes a message one of the instance's halves sent.
    fn route(&self, message: &RawMessage) -> u32 {
        if !self.routing.load(Ordering::Acquire) {
            return abi::status::DEACTIVATED;
        }
        if !self.origin_is_valid(message.origin) {
            return abi::status::NO_SUCH_PEER;
        }
        match message.kind {
            abi::kind::BROADCAST => self.route_broadcast(message),
            abi::kind::INVOKE => {
                // A renderer half invokes main; main invokes one open frame.
                let to_main = message.origin != PEER_MAIN && message.target == PEER_MAIN;
                let to_frame = message.origin == PEER_MAIN && message.target != PEER_MAIN;
                if !to_main && !to_frame {
                    return abi::status::INVALID;
                }
                if to_frame && !self.origin_is_valid(message.target) {
                    return abi::status::NO_SUCH_PEER;
                }
                self.route_invoke(message)
            }
            abi::kind::STORE_WRITE => {
                // A renderer half's write goes to main, which sequences it.
                if message.origin == PEER_MAIN || message.target != PEER_MAIN {
                    return abi::status::INVALID;
                }
                self.deliver(message)
            }
            abi::kind::STORE_UPDATE => {
                // Only main sequences writes; an update reaches every replica.
                if message.origin != PEER_MAIN {
                    return abi::status::INVALID;
                }
                self.deliver(&RawMessage {
                    target: PEER_ALL,
                    ..*message
                })
            }
            abi::kind::REPLY => {
                // Only the half the request went to may answer it; a late or forged reply is dropped
                // without disturbing the real request.
                {
                    let mut pending = lock(&self.core.pending);
                    let key = (self.key, message.target, message.request_id);
                    if pending.get(&key) != Some(&message.origin) {
                        return abi::status::OK;
                    }
                    pending.remove(&key);
                }
                if message.target == PEER_HOST {
                    // SAFETY: the payload is valid for this call (the library's contract).
                    let payload = unsafe { message.payload.as_bytes() }.unwrap_or_default().to_vec();
                    self.wake_waiter(
                        message.request_id,
                        HostReply {
                            status: message.status,
                            payload,
                        },
                    );
                    return abi::status::OK;
                }
                self.deliver(message)
            }
            abi::kind::CANCEL => {
                let known = lock(&self.core.pending).remove(&(self.key, message.origin, message.request_id));
                match known {
                    Some(target) => self.deliver(&RawMessage { target, ..*message }),
                    None => abi::status::OK,
                }
            }
            _ => abi::status::INVALID,
        }
    }

    fn route_broadcast(&self, message: &RawMessage) -> u32 {
        // Observers first, so they see a broadcast before anything its listeners send back.
        if self.core.broadcasts.receiver_count() > 0 {
            // SAFETY: the buffers are valid for this call (the library's contract).
            let (channel, payload) = unsafe { (message.channel.as_bytes(), message.payload.as_bytes()) };
            if let (Some(channel), Some(payload)) = (channel, payload) {
                let _ = self.core.broadcasts.send(ObservedBroadcast {
                    extension: self.name.clone(),
                    sender: message.origin,
                    channel: String::from_utf8_lossy(channel).into_owned(),
                    payload: payload.to_vec(),
                });
            }
        }
        self.deliver(&RawMessage {
            target: PEER_ALL,
            ..*message
        })
    }

    fn route_invoke(&self, message: &RawMessage) -> u32 {
        let key = (self.key, message.origin, message.request_id);
        {
            let mut pending = lock(&self.core.pending);
            // Checked under the lock `stop_routing` takes: see there.
            if !self.routing.load(Ordering::Acquire) {
                return abi::status::DEACTIVATED;
            }
            pending.insert(key, message.target);
        }
        let status = self.deliver(message);
        if status != abi::status::OK {
            lock(&self.core.pending).remove(&key);
        }
        status
    }

    /// Broadcasts from the host (console, harness) into the extension's namespace.
    pub(crate) fn host_broadcast(&self, channel: &str, payload: &[u8]) -> u32 {
        if !self.routing.load(Ordering::Acquire) {
            return abi::status::DEACTIVATED;
        }
        self.route_broadcast(&RawMessage {
            kind: abi::kind::BROADCAST,
            status: 0,
            origin: PEER_HOST,
            target: PEER_ALL,
            request_id: 0,
            channel: RawSlice::new(channel.as_bytes()),
            payload: RawSlice::new(payload),
        })
    }

    /// Invokes main's handler on `channel` from the host. The request is sent by this call
    /// (so host requests and broadcasts leave in call order); the future waits for the reply
    /// and cancels the request if dropped first.
    pub(crate) fn host_invoke(
        self: Arc<Self>,
        channel: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, InvokeError>> + Send + 'static + use<> {
        let request_id = self.core.next_request.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        lock(&self.core.waiters).insert((self.key, request_id), sender);
        let status = if self.routing.load(Ordering::Acquire) {
            self.route_invoke(&RawMessage {
                kind: abi::kind::INVOKE,
                status: 0,
                origin: PEER_HOST,
                target: PEER_MAIN,
                request_id,
                channel: RawSlice::new(channel.as_bytes()),
                payload: RawSlice::new(payload),
            })
        } else {
            abi::status::DEACTIVATED
        };
        let channel = channel.to_owned();
        if status != abi::status::OK {
            lock(&self.core.waiters).remove(&(self.key, request_id));
        }
        let mut guard = HostRequestGuard {
            link: self,
            request_id,
            armed: status == abi::status::OK,
        };
        async move {
            if !guard.armed {
                let message = format!("`{}` is not active", guard.link.name);
                return Err(InvokeError::new(InvokeErrorKind::Deactivated, channel, message));
            }
            let reply = match tokio::time::timeout(timeout, receiver).await {
                Err(_) => {
                    return Err(InvokeError::new(
                        InvokeErrorKind::Timeout,
                        channel,
                        format!("no reply within {timeout:?}"),
                    ));
                }
                Ok(Err(_)) => {
                    guard.disarm();
                    return Err(InvokeError::new(
                        InvokeErrorKind::Deactivated,
                        channel,
                        "the extension went away",
                    ));
                }
                Ok(Ok(reply)) => reply,
            };
            guard.disarm();
            decode_reply(&channel, reply)
        }
    }
}

/// Turns a reply into the value's bytes or the error it carries.
pub(crate) fn decode_reply(channel: &str, reply: HostReply) -> Result<Vec<u8>, InvokeError> {
    if reply.status == abi::status::OK {
        return Ok(reply.payload);
    }
    let kind = InvokeErrorKind::from_code(reply.status).unwrap_or(InvokeErrorKind::ConnectionLost);
    match rmp_serde::from_slice::<ErrorPayload>(&reply.payload) {
        Ok(error) => Err(InvokeError::from_wire(kind, channel, error)),
        Err(error) => Err(InvokeError::new(
            kind,
            channel,
            format!("(undecodable error payload: {error})"),
        )),
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

/// Cancels a host request that was given up (timeout, or the future dropped).
struct HostRequestGuard {
    link: Arc<Link>,
    request_id: u64,
    armed: bool,
}

impl HostRequestGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for HostRequestGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        lock(&self.link.core.waiters).remove(&(self.link.key, self.request_id));
        let target = lock(&self.link.core.pending).remove(&(self.link.key, PEER_HOST, self.request_id));
        if let Some(target) = target {
            self.link.deliver(&RawMessage {
                kind: abi::kind::CANCEL,
                status: 0,
                origin: PEER_HOST,
                target,
                request_id: self.request_id,
                channel: RawSlice::EMPTY,
                payload: RawSlice::EMPTY,
            });
        }
    }
}

unsafe extern "C" fn host_send(key: u64, message: *const RawMessage) -> u32 {
    catch_unwind(AssertUnwindSafe(|| {
        let Some(link) = find(key) else {
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
        if channel.is_none_or(|c| std::str::from_utf8(c).is_err()) || payload.is_none() {
            return abi::status::INVALID;
        }
        link.route(message)
    }))
    .unwrap_or(abi::status::PANICKED)
}

unsafe extern "C" fn host_complete(key: u64, completion: u64, result: RawSlice) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let waiter = lock(&COMPLETIONS)
            .as_mut()
            .and_then(|map| map.remove(&(key, completion)));
        let Some(waiter) = waiter else { return };
        // SAFETY: the library keeps `result` valid for this call; null/oversized is refused.
        let bytes = unsafe { result.as_bytes() }.unwrap_or_default();
        let completion = rmp_serde::from_slice::<Completion>(bytes).unwrap_or_else(|error| Completion::Failed {
            reason: format!("undecodable completion: {error}"),
        });
        let _ = waiter.send(completion);
    }));
}

unsafe extern "C" fn host_log(key: u64, level: u32, target: RawSlice, message: RawSlice) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let Some(link) = find(key) else { return };
        // SAFETY: the library keeps both buffers valid for this call; invalid ones are refused.
        let (target, message) = unsafe { (target.as_bytes(), message.as_bytes()) };
        let (Some(target), Some(message)) = (target, message) else {
            return;
        };
        let record = LogRecord::new(
            &link.name,
            level,
            &String::from_utf8_lossy(target),
            &String::from_utf8_lossy(message),
        );
        record.emit();
        let _ = link.core.logs.send(record);
    }));
}
