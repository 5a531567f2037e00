//! A link: one running extension's namespace. It knows where each of the extension's halves
//! runs (which endpoint), routes every message of the namespace, and keeps the requests in
//! flight (its [`Requests`] table) so that none waits forever.
//!
//! Routing works on validated [`Message`]s: it reads no raw buffer and knows no transport's
//! wire. It knows nothing of where a message came in (a C callback, a child's packet): the
//! inbound side found the link and the endpoint from the instance key, and passes them.

use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use extension_api::abi::{self, PEER_ALL, PEER_HOST, PEER_MAIN, Peer};
use extension_api::message::{self, Message, Reply};
use extension_api::{InvokeError, InvokeErrorKind};
use tokio::sync::oneshot;

use crate::core::Core;
use crate::endpoint::Endpoint;
use crate::events::{LogRecord, ObservedBroadcast};
use crate::requests::{Ended, NotRecorded, Requests, Route};
use crate::storage::{CommitAnswers, ExtensionDb};

pub(crate) struct Link {
    pub(crate) name: String,
    core: Arc<Core>,
    /// Requests in flight; closed from the start of deactivation: nothing more is routed
    /// from or to the extension then (but storage commits).
    requests: Requests,
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    /// Where main's writes of the persisted tier are committed (set at activation).
    storage: OnceLock<Arc<ExtensionDb>>,
    /// This link, for the storage writer to answer main through.
    me: Weak<Link>,
}

impl Link {
    pub(crate) fn new(name: &str, core: Arc<Core>) -> Arc<Link> {
        Arc::new_cyclic(|me| Link {
            name: name.to_owned(),
            core,
            requests: Requests::default(),
            endpoints: RwLock::new(Vec::new()),
            storage: OnceLock::new(),
            me: me.clone(),
        })
    }

    pub(crate) fn set_storage(&self, storage: Arc<ExtensionDb>) {
        let _ = self.storage.set(storage);
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

    /// Stops routing to `peer` at `endpoint` (a frame closing). No request to it is recorded
    /// after this returns, so the caller's `fail_pending` that follows fails every one.
    pub(crate) fn unplace(&self, endpoint: &Endpoint, peer: Peer) {
        self.requests.exclusive(|| endpoint.unplace(peer));
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

    /// What the namespace's host shares (for tests of what reaches it).
    #[cfg(test)]
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }

    /// `endpoint`'s instance asks the watchdog to look at it (`wire::ATTENTION`).
    pub(crate) fn attention(&self, endpoint: &Endpoint) {
        self.core.attention.ask(endpoint.key);
    }

    /// A log record of one of the extension's instances, for the host's tracing and log stream.
    pub(crate) fn forward_log(&self, level: u32, target: &str, text: &str) {
        let record = LogRecord::new(&self.name, level, target, text);
        record.emit();
        let _ = self.core.logs.send(record);
    }

    pub(crate) fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// Stops routing from and to the extension (the first step of deactivation). A request is
    /// either recorded before (and failed by the caller's `fail_pending`), or refused.
    pub(crate) fn stop_routing(&self) {
        self.requests.close();
    }

    fn deliver_to(&self, peer: Peer, message: &Message<'_>) -> u32 {
        match self.endpoint_of(peer) {
            Some(endpoint) => endpoint.deliver(message),
            None => abi::status::NO_SUCH_PEER,
        }
    }

    fn deliver_everywhere(&self, message: &Message<'_>) -> u32 {
        let message = message.to(PEER_ALL);
        for endpoint in self.endpoints() {
            endpoint.deliver(&message);
        }
        abi::status::OK
    }

    /// Fails the requests matched by `matches(origin, target)`: the origin gets an error reply
    /// of `kind`; the target is told to cancel.
    pub(crate) fn fail_pending(&self, matches: impl Fn(Peer, Peer) -> bool, kind: InvokeErrorKind, why: &str) {
        let reply = Reply::error(kind, why);
        for ended in self.requests.end_where(matches) {
            let Route { origin, target, request_id } = ended.route;
            self.answer(ended, reply.clone());
            self.deliver_to(target, &Message::cancel(origin, target, request_id));
        }
    }

    /// Gives a request that ended `reply`: to the host's waiter if the host asked, else to
    /// the half that asked.
    fn answer(&self, ended: Ended, reply: Reply) {
        let Route { origin, target, request_id } = ended.route;
        match ended.waiter {
            Some(waiter) => {
                let _ = waiter.send(reply);
            }
            None => {
                self.deliver_to(origin, &Message::reply(target, origin, request_id, &reply));
            }
        }
    }

    /// Routes a message that one of the halves running at `from` sent. The origin must be a
    /// half that runs there: an endpoint cannot speak for another half or another extension.
    pub(crate) fn route(&self, from: &Endpoint, message: &Message<'_>) -> u32 {
        if message.kind == abi::kind::STORAGE_COMMIT {
            // The message limit holds here too (for raw senders: `extension-api` checks first).
            if !message.fits() {
                return abi::status::TOO_LARGE;
            }
            return self.route_commit(from, message);
        }
        if !self.requests.is_open() {
            return abi::status::DEACTIVATED;
        }
        if !from.hosts(message.origin) {
            return abi::status::NO_SUCH_PEER;
        }
        // The message limit holds for every sender, the raw ones too (`extension-api` checks it
        // before sending): nothing over it is routed anywhere.
        let fits = message.fits();
        if !fits && message.kind != abi::kind::REPLY && message.kind != abi::kind::CANCEL {
            return abi::status::TOO_LARGE;
        }
        match message.kind {
            abi::kind::BROADCAST => self.route_broadcast(message),
            abi::kind::INVOKE => {
                if !message::is_request_route(message.origin, message.target) {
                    // Main's requests name a frame: a number that names none is a frame that is
                    // not open. Anything else is no request at all.
                    let from_main = message.origin == PEER_MAIN && message.target != PEER_MAIN;
                    return if from_main { abi::status::NO_SUCH_PEER } else { abi::status::INVALID };
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
            abi::kind::REPLY => self.route_reply(message, fits),
            abi::kind::CANCEL => match self.requests.withdraw(message.origin, message.request_id) {
                Some(route) => self.deliver_to(route.target, &message.to(route.target)),
                None => abi::status::OK,
            },
            _ => abi::status::INVALID,
        }
    }

    fn route_reply(&self, message: &Message<'_>, fits: bool) -> u32 {
        // Only the half the request went to may answer it; a late or forged reply is dropped
        // without disturbing the real request.
        let Some(waiter) = self.requests.answer(message.origin, message.target, message.request_id) else {
            return abi::status::OK;
        };
        let ended = Ended {
            route: Route { origin: message.target, target: message.origin, request_id: message.request_id },
            waiter,
        };
        if !fits {
            // The invoker learns why at once rather than waiting out its timeout.
            let size = message.channel.len().saturating_add(message.payload.len());
            let why = format!("the reply is {size} bytes, over the {}-byte message limit", abi::MAX_MESSAGE);
            self.answer(ended, Reply::error(InvokeErrorKind::TooLarge, why));
            return abi::status::TOO_LARGE;
        }
        match ended.waiter {
            Some(waiter) => {
                let _ = waiter.send(Reply { status: message.status, payload: message.payload.to_vec() });
                abi::status::OK
            }
            None => self.deliver_to(message.target, message),
        }
    }

    /// Main's write of the persisted tier, for the host to make durable. Taken while the
    /// extension deactivates too, so its `deactivate` can save what it needs.
    fn route_commit(&self, from: &Endpoint, message: &Message<'_>) -> u32 {
        if message.origin != PEER_MAIN || message.target != PEER_HOST || !from.hosts(PEER_MAIN) {
            return abi::status::INVALID;
        }
        let Ok(commit) = extension_api::wire::decode::<extension_api::wire::StorageCommit>(message.payload) else {
            return abi::status::INVALID;
        };
        match self.storage.get() {
            Some(storage) => {
                let answers: Weak<dyn CommitAnswers> = self.me.clone();
                storage.commit(answers, commit)
            }
            None => abi::status::DEACTIVATED,
        }
    }

    fn route_broadcast(&self, message: &Message<'_>) -> u32 {
        // Observers first, so they see a broadcast before anything its listeners send back.
        if self.core.broadcasts.receiver_count() > 0 {
            let _ = self.core.broadcasts.send(ObservedBroadcast {
                extension: self.name.clone(),
                sender: message.origin,
                // Where it goes: delivered below to every endpoint, so to every half placed now.
                frames: self.frames().into_iter().map(extension_api::FrameId).collect(),
                channel: message.channel.to_owned(),
                payload: message.payload.to_vec(),
            });
        }
        self.deliver_everywhere(message)
    }

    /// Records a half's request and delivers it to its target.
    fn route_invoke(&self, message: &Message<'_>) -> u32 {
        let Some(endpoint) = self.endpoint_of(message.target) else {
            return abi::status::NO_SUCH_PEER;
        };
        let route = Route { origin: message.origin, target: message.target, request_id: message.request_id };
        let recorded = self.requests.record(route, || endpoint.hosts(message.target));
        self.deliver_recorded(&endpoint, message, recorded)
    }

    /// Delivers a request that `recorded` says was (or was not) recorded; takes it out again
    /// if it could not be delivered.
    fn deliver_recorded(&self, endpoint: &Endpoint, message: &Message<'_>, recorded: Result<(), NotRecorded>) -> u32 {
        match recorded {
            Err(NotRecorded::Closed) => return abi::status::DEACTIVATED,
            Err(NotRecorded::Unplaced) => return abi::status::NO_SUCH_PEER,
            Ok(()) => {}
        }
        let status = endpoint.deliver(message);
        if status != abi::status::OK {
            self.requests.unrecord(message.origin, message.request_id);
        }
        status
    }

    /// Broadcasts from the host (console, harness) into the extension's namespace.
    pub(crate) fn host_broadcast(&self, channel: &str, payload: &[u8]) -> u32 {
        if !self.requests.is_open() {
            return abi::status::DEACTIVATED;
        }
        if !abi::fits(channel.len(), payload.len()) {
            return abi::status::TOO_LARGE;
        }
        self.route_broadcast(&Message {
            kind: abi::kind::BROADCAST,
            status: 0,
            origin: PEER_HOST,
            target: PEER_ALL,
            request_id: 0,
            channel,
            payload,
        })
    }

    /// Sends the host's own request to `target` and records it with its waiter; the status
    /// says whether it went.
    fn send_host_request(&self, request: &Message<'_>, waiter: oneshot::Sender<Reply>) -> u32 {
        if !request.fits() {
            return abi::status::TOO_LARGE;
        }
        if !self.requests.is_open() {
            return abi::status::DEACTIVATED;
        }
        let Some(endpoint) = self.endpoint_of(request.target) else {
            return abi::status::NO_SUCH_PEER;
        };
        let route = Route { origin: PEER_HOST, target: request.target, request_id: request.request_id };
        let recorded = self.requests.record_host(route, waiter, || endpoint.hosts(request.target));
        self.deliver_recorded(&endpoint, request, recorded)
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
        let request_id = self.requests.next_host_request();
        let (sender, receiver) = oneshot::channel();
        let request =
            Message { kind: abi::kind::INVOKE, status: 0, origin: PEER_HOST, target, request_id, channel, payload };
        let status = self.send_host_request(&request, sender);
        let channel = channel.to_owned();
        let payload_len = payload.len();
        let mut guard = HostRequestGuard { link: self, request_id, armed: status == abi::status::OK };
        async move {
            if !guard.armed {
                return Err(host_refusal(&guard.link.name, target, &channel, payload_len, status));
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
            reply.into_result(&channel)
        }
    }
}

impl CommitAnswers for Link {
    /// The storage writer's answer to main's commits.
    fn answer_commits(&self, payload: &[u8]) {
        let answer = Message {
            kind: abi::kind::STORAGE_COMMITTED,
            status: 0,
            origin: PEER_HOST,
            target: PEER_MAIN,
            request_id: 0,
            channel: "",
            payload,
        };
        let status = self.deliver_to(PEER_MAIN, &answer);
        if status != abi::status::OK {
            tracing::debug!(extension = %self.name, "a storage answer found no main half (status {status})");
        }
    }
}

/// The error the host's request to `target` fails with when it was refused on its way.
fn host_refusal(name: &str, target: Peer, channel: &str, payload_len: usize, status: u32) -> InvokeError {
    let kind = message::refusal_kind(status);
    let half = if target == PEER_MAIN { "main half".to_owned() } else { format!("half in frame {target}") };
    let size = channel.len() + payload_len;
    let text = match kind {
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
    InvokeError::new(kind, channel, text)
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
        if let Some(route) = self.link.requests.withdraw(PEER_HOST, self.request_id) {
            self.link.deliver_to(route.target, &Message::cancel(PEER_HOST, route.target, self.request_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Transport;
    use crate::transport::recording::Recording;
    use extension_api::wire::OwnedMessage;

    const FRAME: Peer = 1;

    /// A namespace with main at one endpoint and frame 1 at another, both recording.
    fn namespace() -> (Arc<Link>, Arc<Endpoint>, Arc<Endpoint>) {
        let link = Link::new("t", Arc::new(Core::new()));
        let main = Endpoint::new(10, Transport::Recording(Recording::default()));
        main.place(PEER_MAIN);
        let frame = Endpoint::new(11, Transport::Recording(Recording::default()));
        frame.place(FRAME);
        link.add_endpoint(main.clone());
        link.add_endpoint(frame.clone());
        (link, main, frame)
    }

    fn recording(endpoint: &Endpoint) -> &Recording {
        match endpoint.transport() {
            Transport::Recording(recording) => recording,
            _ => panic!("not a recording transport"),
        }
    }

    fn delivered(endpoint: &Endpoint) -> Vec<OwnedMessage> {
        recording(endpoint).take()
    }

    fn invoke(origin: Peer, target: Peer, request_id: u64) -> Message<'static> {
        Message { kind: abi::kind::INVOKE, status: 0, origin, target, request_id, channel: "ch", payload: &[7] }
    }

    fn reply(origin: Peer, target: Peer, request_id: u64, payload: &[u8]) -> Message<'_> {
        Message { kind: abi::kind::REPLY, status: abi::status::OK, origin, target, request_id, channel: "", payload }
    }

    fn error_kind_of(message: &OwnedMessage) -> Option<InvokeErrorKind> {
        (message.kind == abi::kind::REPLY).then(|| message::error_kind(message.status)).flatten()
    }

    #[test]
    fn a_request_is_recorded_delivered_and_answered_only_by_its_target() {
        let (link, main, frame) = namespace();
        assert_eq!(link.route(&frame, &invoke(FRAME, PEER_MAIN, 5)), abi::status::OK);
        assert_eq!(delivered(&main), vec![invoke(FRAME, PEER_MAIN, 5).to_owned()]);
        assert_eq!(link.pending_requests(), 1);
        // A reply from a half the request did not go to is dropped, the request untouched.
        assert_eq!(link.route(&frame, &reply(FRAME, FRAME, 5, &[1])), abi::status::OK);
        assert!(delivered(&frame).is_empty());
        assert_eq!(link.pending_requests(), 1);
        // The target's reply reaches the invoker, once.
        assert_eq!(link.route(&main, &reply(PEER_MAIN, FRAME, 5, &[1])), abi::status::OK);
        assert_eq!(delivered(&frame), vec![reply(PEER_MAIN, FRAME, 5, &[1]).to_owned()]);
        assert_eq!(link.pending_requests(), 0);
        assert_eq!(link.route(&main, &reply(PEER_MAIN, FRAME, 5, &[1])), abi::status::OK);
        assert!(delivered(&frame).is_empty());
    }

    #[test]
    fn only_request_routes_are_routed_and_only_from_where_the_origin_runs() {
        let (link, main, frame) = namespace();
        // An endpoint cannot speak for a half that runs elsewhere.
        assert_eq!(link.route(&frame, &invoke(PEER_MAIN, FRAME, 1)), abi::status::NO_SUCH_PEER);
        // Frame to frame, main to itself: no requests.
        assert_eq!(link.route(&frame, &invoke(FRAME, FRAME, 1)), abi::status::INVALID);
        assert_eq!(link.route(&main, &invoke(PEER_MAIN, PEER_MAIN, 1)), abi::status::INVALID);
        // Main's request to something that is no frame names no open frame.
        assert_eq!(link.route(&main, &invoke(PEER_MAIN, PEER_ALL, 1)), abi::status::NO_SUCH_PEER);
        assert_eq!(link.route(&main, &invoke(PEER_MAIN, 99, 1)), abi::status::NO_SUCH_PEER);
        assert!(delivered(&main).is_empty() && delivered(&frame).is_empty());
        assert_eq!(link.pending_requests(), 0);
        assert_eq!(link.route(&main, &invoke(PEER_MAIN, FRAME, 1)), abi::status::OK);
        assert_eq!(delivered(&frame).len(), 1);
    }

    #[test]
    fn a_closed_frame_fails_the_requests_to_it_and_takes_no_more() {
        let (link, main, frame) = namespace();
        assert_eq!(link.route(&main, &invoke(PEER_MAIN, FRAME, 3)), abi::status::OK);
        delivered(&frame);
        link.unplace(&frame, FRAME);
        link.fail_pending(|origin, target| origin == FRAME || target == FRAME, InvokeErrorKind::FrameClosed, "closed");
        let answers = delivered(&main);
        assert_eq!(answers.len(), 1);
        assert_eq!((answers[0].target, answers[0].request_id), (PEER_MAIN, 3));
        assert_eq!(error_kind_of(&answers[0]), Some(InvokeErrorKind::FrameClosed));
        assert_eq!(link.route(&main, &invoke(PEER_MAIN, FRAME, 4)), abi::status::NO_SUCH_PEER);
        assert_eq!(link.pending_requests(), 0);
    }

    #[test]
    fn deactivation_fails_every_request_cancels_its_target_and_refuses_more() {
        let (link, main, frame) = namespace();
        assert_eq!(link.route(&frame, &invoke(FRAME, PEER_MAIN, 8)), abi::status::OK);
        delivered(&main);
        link.stop_routing();
        link.fail_pending(|_, _| true, InvokeErrorKind::Deactivated, "gone");
        let answers = delivered(&frame);
        assert_eq!(answers.len(), 1);
        assert_eq!(error_kind_of(&answers[0]), Some(InvokeErrorKind::Deactivated));
        let cancels = delivered(&main);
        assert_eq!(cancels, vec![Message::cancel(FRAME, PEER_MAIN, 8).to_owned()]);
        assert_eq!(link.route(&frame, &invoke(FRAME, PEER_MAIN, 9)), abi::status::DEACTIVATED);
        assert_eq!(link.pending_requests(), 0);
    }

    #[test]
    fn a_refused_delivery_leaves_nothing_recorded() {
        let (link, main, frame) = namespace();
        recording(&main).refuse_with(abi::status::BUSY);
        assert_eq!(link.route(&frame, &invoke(FRAME, PEER_MAIN, 1)), abi::status::BUSY);
        assert_eq!(link.pending_requests(), 0);
    }

    #[test]
    fn an_oversized_reply_fails_its_request_at_once() {
        let (link, main, frame) = namespace();
        assert_eq!(link.route(&frame, &invoke(FRAME, PEER_MAIN, 2)), abi::status::OK);
        let huge = vec![0u8; abi::MAX_MESSAGE + 1];
        assert_eq!(link.route(&main, &reply(PEER_MAIN, FRAME, 2, &huge)), abi::status::TOO_LARGE);
        let answers = delivered(&frame);
        assert_eq!(answers.len(), 1);
        assert_eq!(error_kind_of(&answers[0]), Some(InvokeErrorKind::TooLarge));
        assert_eq!(link.pending_requests(), 0);
    }

    #[test]
    fn a_cancel_reaches_the_target_of_its_origins_request_only() {
        let (link, main, frame) = namespace();
        assert_eq!(link.route(&frame, &invoke(FRAME, PEER_MAIN, 6)), abi::status::OK);
        delivered(&main);
        // Main cannot cancel the frame's request.
        assert_eq!(link.route(&main, &Message::cancel(PEER_MAIN, PEER_MAIN, 6)), abi::status::OK);
        assert!(delivered(&main).is_empty());
        assert_eq!(link.pending_requests(), 1);
        // Whatever target the cancel names, it goes where the request went.
        assert_eq!(link.route(&frame, &Message::cancel(FRAME, 42, 6)), abi::status::OK);
        assert_eq!(delivered(&main), vec![Message::cancel(FRAME, PEER_MAIN, 6).to_owned()]);
        assert_eq!(link.pending_requests(), 0);
    }

    #[test]
    fn the_hosts_request_gets_its_reply_and_a_dropped_one_is_cancelled() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let (link, main, _frame) = namespace();
        let answer = link.clone().host_invoke(PEER_MAIN, "ch", &[1], Duration::from_secs(30));
        let sent = delivered(&main);
        assert_eq!((sent.len(), sent[0].origin, sent[0].kind), (1, PEER_HOST, abi::kind::INVOKE));
        let id = sent[0].request_id;
        assert_eq!(link.route(&main, &reply(PEER_MAIN, PEER_HOST, id, &[9])), abi::status::OK);
        assert_eq!(runtime.block_on(answer), Ok(vec![9]));
        assert_eq!(link.pending_requests(), 0);

        let given_up = link.clone().host_invoke(PEER_MAIN, "ch", &[1], Duration::from_secs(30));
        let id = delivered(&main)[0].request_id;
        drop(given_up);
        assert_eq!(delivered(&main), vec![Message::cancel(PEER_HOST, PEER_MAIN, id).to_owned()]);
        assert_eq!(link.pending_requests(), 0);
    }

    #[test]
    fn a_destroyed_instance_speaks_for_no_half_though_its_key_still_routes() {
        // An isolated main blocked past its destroy wait is abandoned: no `Destroyed` comes
        // back, so the child's reader still routes its key to the endpoint, which teardown holds
        // while it destroys the others. Its late commits must not reach the persisted tier.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let dir = crate::private_dir::PrivateDir::create().unwrap();
        let storage = crate::storage::Storage::new(
            dir.path().to_owned(),
            crate::storage::Limits { value: 1 << 20, total: 1 << 24 },
        );
        let (link, main, _frame) = namespace();
        link.set_storage(storage.database("t"));
        let write = extension_api::wire::StorageCommit { id: 1, key: "k".into(), value: Some(vec![1]) };
        let payload = rmp_serde::to_vec_named(&write).unwrap();
        let commit = Message {
            kind: abi::kind::STORAGE_COMMIT,
            status: 0,
            origin: PEER_MAIN,
            target: PEER_HOST,
            request_id: 0,
            channel: "",
            payload: &payload,
        };
        link.stop_routing();
        // While the extension deactivates, main may still save.
        assert_eq!(link.route(&main, &commit), abi::status::OK);
        runtime.block_on(main.destroy());
        assert_eq!(link.route(&main, &commit), abi::status::INVALID);
        storage.close_all();
    }
}
