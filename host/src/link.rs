//! A link: one running extension's namespace. It knows where each of the extension's halves
//! runs (which endpoint), routes every message of the namespace, and keeps the requests in
//! flight so that none waits forever.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use extension_api::abi::{self, PEER_ALL, PEER_HOST, PEER_MAIN, Peer, RawMessage, RawSlice};
use extension_api::wire::ErrorPayload;
use extension_api::{InvokeError, InvokeErrorKind};
use tokio::sync::oneshot;

use crate::core::{Core, HostReply, lock};
use crate::endpoint::Endpoint;
use crate::events::{LogRecord, ObservedBroadcast};
use crate::storage::ExtensionDb;

pub(crate) struct Link {
    /// Unique for this run of the extension: keys the pending-request table.
    pub(crate) id: u64,
    pub(crate) name: String,
    core: Arc<Core>,
    /// False from the start of deactivation: nothing more is routed from or to it.
    routing: AtomicBool,
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    /// Where main's writes of the persisted tier are committed (set at activation).
    storage: OnceLock<Arc<ExtensionDb>>,
    /// This link, for the storage writer to answer main through.
    me: Weak<Link>,
}

impl Link {
    pub(crate) fn new(name: &str, core: Arc<Core>) -> Arc<Link> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new_cyclic(|me| Link {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            core,
            routing: AtomicBool::new(true),
            endpoints: RwLock::new(Vec::new()),
            storage: OnceLock::new(),
            me: me.clone(),
        })
    }

    pub(crate) fn set_storage(&self, storage: Arc<ExtensionDb>) {
        let _ = self.storage.set(storage);
    }

    /// The storage writer's answer to main's commits.
    pub(crate) fn storage_answer(&self, payload: &[u8]) {
        let status = self.deliver_to(
            PEER_MAIN,
            &RawMessage {
                kind: abi::kind::STORAGE_COMMITTED,
                status: 0,
                origin: PEER_HOST,
                target: PEER_MAIN,
                request_id: 0,
                channel: RawSlice::EMPTY,
                payload: RawSlice::new(payload),
            },
        );
        if status != abi::status::OK {
            tracing::debug!(extension = %self.name, "a storage answer found no main half (status {status})");
        }
    }

    /// Main's write of the persisted tier, for the host to make durable. Taken while the
    /// extension deactivates too, so its `deactivate` can save what it needs.
    fn route_commit(&self, from: &Endpoint, message: &RawMessage) -> u32 {
        if message.origin != PEER_MAIN || message.target != PEER_HOST || !from.hosts(PEER_MAIN) {
            return abi::status::INVALID;
        }
        // SAFETY: the payload is valid for this call (the sender's contract).
        let Some(payload) = (unsafe { message.payload.as_bytes() }) else { return abi::status::INVALID };
        let Ok(commit) = extension_api::wire::decode::<extension_api::wire::StorageCommit>(payload) else {
            return abi::status::INVALID;
        };
        match self.storage.get() {
            Some(storage) => storage.commit(self.me.clone(), commit),
            None => abi::status::DEACTIVATED,
        }
    }

    pub(crate) fn add_endpoint(&self, endpoint: Arc<Endpoint>) {
        self.endpoints.write().unwrap_or_else(PoisonError::into_inner).push(endpoint);
    }

    pub(crate) fn remove_endpoint(&self, key: u64) -> Option<Arc<Endpoint>> {
        let mut endpoints = self.endpoints.write().unwrap_or_else(PoisonError::into_inner);
        let at = endpoints.iter().position(|endpoint| endpoint.key == key)?;
        Some(endpoints.remove(at))
    }

    pub(crate) fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The endpoint where `peer` runs.
    pub(crate) fn endpoint_of(&self, peer: Peer) -> Option<Arc<Endpoint>> {
        self.endpoints.read().unwrap_or_else(PoisonError::into_inner).iter().find(|e| e.hosts(peer)).cloned()
    }

    /// Stops routing to `peer` at `endpoint` (a frame closing), under the pending lock: see
    /// `route_invoke`.
    pub(crate) fn unplace(&self, endpoint: &Endpoint, peer: Peer) {
        let _pending = lock(&self.core.pending);
        endpoint.unplace(peer);
    }

    /// Frames where the renderer half runs, in any process.
    pub(crate) fn frames(&self) -> Vec<Peer> {
        let mut frames: Vec<Peer> =
            self.endpoints().iter().flat_map(|endpoint| endpoint.peers()).filter(|peer| *peer != PEER_MAIN).collect();
        frames.sort();
        frames
    }

    /// An endpoint's process is gone: its halves stop existing, and every request that
    /// involved them fails with [`InvokeErrorKind::ConnectionLost`].
    pub(crate) fn lose_endpoint(&self, endpoint: &Endpoint, reason: &str) {
        let peers = endpoint.peers();
        self.remove_endpoint(endpoint.key);
        self.fail_pending(
            |origin, target| peers.contains(&origin) || peers.contains(&target),
            InvokeErrorKind::ConnectionLost,
            reason,
        );
    }

    pub(crate) fn publish_log(&self, record: LogRecord) {
        let _ = self.core.logs.send(record);
    }

    pub(crate) fn pending_requests(&self) -> usize {
        self.core.pending_for(self.id)
    }

    /// Stops routing from and to the extension (the first step of deactivation).
    pub(crate) fn stop_routing(&self) {
        // Under the pending lock: a request either was recorded before (and is failed by the
        // caller's `fail_pending`), or sees routing stopped. None slips in between.
        let _pending = lock(&self.core.pending);
        self.routing.store(false, Ordering::Release);
    }

    fn deliver_to(&self, peer: Peer, message: &RawMessage) -> u32 {
        match self.endpoint_of(peer) {
            Some(endpoint) => endpoint.deliver(message),
            None => abi::status::NO_SUCH_PEER,
        }
    }

    fn deliver_everywhere(&self, message: &RawMessage) -> u32 {
        let message = RawMessage { target: PEER_ALL, ..*message };
        for endpoint in self.endpoints() {
            endpoint.deliver(&message);
        }
        abi::status::OK
    }

    /// Fails the requests matched by `matches(origin, target)`: the origin gets an error reply
    /// of `kind`; the target is told to cancel.
    pub(crate) fn fail_pending(&self, matches: impl Fn(Peer, Peer) -> bool, kind: InvokeErrorKind, why: &str) {
        let failed: Vec<((u64, Peer, u64), Peer)> = {
            let mut pending = lock(&self.core.pending);
            let keys: Vec<_> = pending
                .iter()
                .filter(|((id, origin, _), target)| *id == self.id && matches(*origin, **target))
                .map(|(k, t)| (*k, *t))
                .collect();
            for (k, _) in &keys {
                pending.remove(k);
            }
            keys
        };
        for ((_, origin, request_id), target) in failed {
            self.reply_error(target, origin, request_id, kind, why);
            self.deliver_to(
                target,
                &RawMessage {
                    kind: abi::kind::CANCEL,
                    status: 0,
                    origin,
                    target,
                    request_id,
                    channel: RawSlice::EMPTY,
                    payload: RawSlice::EMPTY,
                },
            );
        }
    }

    /// Answers a request from another process that could not be routed (`status`), so its
    /// invoker learns why at once instead of waiting for its timeout. (A caller in this process
    /// gets the status back from its own `send`.)
    pub(crate) fn refuse_invoke(&self, message: &RawMessage, status: u32) {
        let (kind, why) = extension_api::message::refusal(status);
        self.reply_error(message.target, message.origin, message.request_id, kind, &why);
    }

    fn reply_error(&self, from: Peer, to: Peer, request_id: u64, kind: InvokeErrorKind, message: &str) {
        let payload = ErrorPayload { message: message.to_owned(), data: None };
        let bytes = rmp_serde::to_vec_named(&payload).unwrap_or_default();
        if to == PEER_HOST {
            self.wake_waiter(
                request_id,
                HostReply { status: extension_api::message::error_code(kind), payload: bytes },
            );
            return;
        }
        self.deliver_to(
            to,
            &RawMessage {
                kind: abi::kind::REPLY,
                status: extension_api::message::error_code(kind),
                origin: from,
                target: to,
                request_id,
                channel: RawSlice::EMPTY,
                payload: RawSlice::new(&bytes),
            },
        );
    }

    fn wake_waiter(&self, request_id: u64, reply: HostReply) {
        if let Some(waiter) = lock(&self.core.waiters).remove(&(self.id, request_id)) {
            let _ = waiter.send(reply);
        }
    }

    /// Routes a message that one of the halves running at `from` sent. The origin must be a
    /// half that runs there: an endpoint cannot speak for another half or another extension.
    pub(crate) fn route(&self, from: &Endpoint, message: &RawMessage) -> u32 {
        if message.kind == abi::kind::STORAGE_COMMIT {
            // The message limit holds here too (for raw senders: `extension-api` checks first).
            if !abi::fits(message.channel.len, message.payload.len) {
                return abi::status::TOO_LARGE;
            }
            return self.route_commit(from, message);
        }
        if !self.routing.load(Ordering::Acquire) {
            return abi::status::DEACTIVATED;
        }
        if !from.hosts(message.origin) {
            return abi::status::NO_SUCH_PEER;
        }
        // The message limit holds for every sender, the raw ones too (`extension-api` checks it
        // before sending): nothing over it is routed anywhere.
        let fits = abi::fits(message.channel.len, message.payload.len);
        if !fits && message.kind != abi::kind::REPLY && message.kind != abi::kind::CANCEL {
            return abi::status::TOO_LARGE;
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
                self.route_invoke(message)
            }
            abi::kind::STORE_WRITE | abi::kind::STORAGE_WRITE => {
                // A renderer half's write goes to main, which sequences it.
                if message.origin == PEER_MAIN || message.target != PEER_MAIN {
                    return abi::status::INVALID;
                }
                self.deliver_to(PEER_MAIN, message)
            }
            abi::kind::STORE_UPDATE | abi::kind::STORAGE_UPDATE => {
                // Only main sequences writes; an update reaches every replica.
                if message.origin != PEER_MAIN {
                    return abi::status::INVALID;
                }
                self.deliver_everywhere(message)
            }
            abi::kind::STORE_REFUSAL | abi::kind::STORAGE_REFUSAL => {
                // Main answers one renderer half's write.
                if message.origin != PEER_MAIN || message.target == PEER_MAIN || message.target >= PEER_HOST {
                    return abi::status::INVALID;
                }
                self.deliver_to(message.target, message)
            }
            abi::kind::REPLY => {
                // Only the half the request went to may answer it; a late or forged reply is
                // dropped without disturbing the real request.
                {
                    let mut pending = lock(&self.core.pending);
                    let key = (self.id, message.target, message.request_id);
                    match pending.remove(&key) {
                        Some(target) if target == message.origin => {}
                        Some(target) => {
                            pending.insert(key, target);
                            return abi::status::OK;
                        }
                        None => return abi::status::OK,
                    }
                }
                if !fits {
                    // The invoker learns why at once rather than waiting out its timeout.
                    let size = message.channel.len.saturating_add(message.payload.len);
                    let why = format!("the reply is {size} bytes, over the {}-byte message limit", abi::MAX_MESSAGE);
                    self.reply_error(
                        message.origin,
                        message.target,
                        message.request_id,
                        InvokeErrorKind::TooLarge,
                        &why,
                    );
                    return abi::status::TOO_LARGE;
                }
                if message.target == PEER_HOST {
                    // SAFETY: the payload is valid for this call (the sender's contract).
                    let payload = unsafe { message.payload.as_bytes() }.unwrap_or_default().to_vec();
                    self.wake_waiter(message.request_id, HostReply { status: message.status, payload });
                    return abi::status::OK;
                }
                self.deliver_to(message.target, message)
            }
            abi::kind::CANCEL => {
                let known = lock(&self.core.pending).remove(&(self.id, message.origin, message.request_id));
                match known {
                    Some(target) => self.deliver_to(target, &RawMessage { target, ..*message }),
                    None => abi::status::OK,
                }
            }
            _ => abi::status::INVALID,
        }
    }

    fn route_broadcast(&self, message: &RawMessage) -> u32 {
        // Observers first, so they see a broadcast before anything its listeners send back.
        if self.core.broadcasts.receiver_count() > 0 {
            // SAFETY: the buffers are valid for this call (the sender's contract).
            let (channel, payload) = unsafe { (message.channel.as_bytes(), message.payload.as_bytes()) };
            if let (Some(channel), Some(payload)) = (channel, payload) {
                let _ = self.core.broadcasts.send(ObservedBroadcast {
                    extension: self.name.clone(),
                    sender: message.origin,
                    // Where it goes: delivered below to every endpoint, so to every half placed now.
                    frames: self.frames().into_iter().map(extension_api::FrameId).collect(),
                    channel: String::from_utf8_lossy(channel).into_owned(),
                    payload: payload.to_vec(),
                });
            }
        }
        self.deliver_everywhere(message)
    }

    fn route_invoke(&self, message: &RawMessage) -> u32 {
        let Some(endpoint) = self.endpoint_of(message.target) else {
            return abi::status::NO_SUCH_PEER;
        };
        let key = (self.id, message.origin, message.request_id);
        {
            let mut pending = lock(&self.core.pending);
            // Checked under the lock `stop_routing` takes: see there.
            if !self.routing.load(Ordering::Acquire) {
                return abi::status::DEACTIVATED;
            }
            pending.insert(key, message.target);
        }
        let status = endpoint.deliver(message);
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
        if !abi::fits(channel.len(), payload.len()) {
            return abi::status::TOO_LARGE;
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

    /// A request from the host to `target`: main (the host acting as a renderer) or one frame's
    /// renderer half (the host acting as main).
    pub(crate) fn host_invoke(
        self: Arc<Self>,
        target: Peer,
        channel: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, InvokeError>> + Send + 'static + use<> {
        let request_id = self.core.next_request.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        lock(&self.core.waiters).insert((self.id, request_id), sender);
        let status = if !abi::fits(channel.len(), payload.len()) {
            abi::status::TOO_LARGE
        } else if self.routing.load(Ordering::Acquire) {
            self.route_invoke(&RawMessage {
                kind: abi::kind::INVOKE,
                status: 0,
                origin: PEER_HOST,
                target,
                request_id,
                channel: RawSlice::new(channel.as_bytes()),
                payload: RawSlice::new(payload),
            })
        } else {
            abi::status::DEACTIVATED
        };
        let channel = channel.to_owned();
        let payload_len = payload.len();
        if status != abi::status::OK {
            lock(&self.core.waiters).remove(&(self.id, request_id));
        }
        let mut guard = HostRequestGuard { link: self, request_id, armed: status == abi::status::OK };
        async move {
            if !guard.armed {
                let kind = extension_api::message::refusal_kind(status);
                let name = &guard.link.name;
                let half = if target == PEER_MAIN { "main half".to_owned() } else { format!("half in frame {target}") };
                let size = channel.len() + payload_len;
                let message = match kind {
                    InvokeErrorKind::Overloaded => format!("the mailbox of `{name}`'s {half} is full"),
                    InvokeErrorKind::FrameClosed => {
                        format!("frame {target} is not open, or `{name}`'s renderer half does not run there")
                    }
                    InvokeErrorKind::TooLarge => format!(
                        "the request on `{channel}` is {size} bytes (value and channel name), over the {}-byte message limit",
                        abi::MAX_MESSAGE
                    ),
                    _ => format!("`{name}` is not active"),
                };
                return Err(InvokeError::new(kind, channel, message));
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
                    return Err(InvokeError::new(InvokeErrorKind::Deactivated, channel, "the extension went away"));
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
    let kind = extension_api::message::error_kind(reply.status).unwrap_or(InvokeErrorKind::ConnectionLost);
    match extension_api::wire::decode::<ErrorPayload>(&reply.payload) {
        Ok(error) => Err(InvokeError::from_wire(kind, channel, error)),
        Err(error) => Err(InvokeError::new(kind, channel, format!("(undecodable error payload: {error})"))),
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
        lock(&self.link.core.waiters).remove(&(self.link.id, self.request_id));
        let target = lock(&self.link.core.pending).remove(&(self.link.id, PEER_HOST, self.request_id));
        if let Some(target) = target {
            self.link.deliver_to(
                target,
                &RawMessage {
                    kind: abi::kind::CANCEL,
                    status: 0,
                    origin: PEER_HOST,
                    target,
                    request_id: self.request_id,
                    channel: RawSlice::EMPTY,
                    payload: RawSlice::EMPTY,
                },
            );
        }
    }
}
