//! What the halves of an instance share, and the ways a message leaves a half: to the host
//! (the outbound call), or within the instance (into its own mailbox).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::InvokeErrorKind;
use crate::abi::{self, Peer};
use crate::ipc::HalfHandle;
use crate::message::{Message, Reply};
use crate::runtime::lifecycle::Factory;
use crate::runtime::mailbox::{Delivery, Mailbox, Refused};
use crate::runtime::payload::Kept;
use crate::runtime::requests::{Answer, Incoming, Outgoing, Route};
use crate::runtime::state::State;
use crate::runtime::stats::SlowLog;
use crate::runtime::vtable::HostCalls;
use crate::wire::{Completion, InstanceConfig, OwnedMessage};

/// Everything the halves of an instance share. Handles hold it weakly, so a handle leaked past
/// deactivation finds nothing and fails cleanly.
pub(crate) struct Shared {
    host: HostCalls,
    pub(super) name: String,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(super) mailbox: Mailbox,
    /// Wakes the timeout sweeper when a request starts waiting while it is idle.
    pub(super) sweep: tokio::sync::Notify,
    state: Mutex<State>,
    pub(super) factory: Factory,
    next_id: AtomicU64,
    /// The handler the dispatcher is polling right now, or whose listeners it is running: its
    /// half (peer + 1) in the low 32 bits, its channel (number in `State::channels`, + 1) in
    /// the high ones; 0 if none. One store before and one after.
    pub(super) inline_handler: AtomicU64,
    /// Held while a store write is sequenced and published, so updates leave in order.
    pub(super) store_order: Mutex<()>,
    /// The same for the persisted tier: held while a write is sent to the host, and while the
    /// host's answers are applied and published.
    pub(super) storage_order: Mutex<()>,
    pub(crate) decode_failures: AtomicU64,
    /// The bytes of received values held as shared buffers (what `Binary` values keep).
    pub(crate) kept: Kept,
    pub(super) listener_panics: AtomicU64,
    /// The instance thread's TID, for its CPU time.
    pub(super) thread_id: AtomicU64,
    /// Handlers that waited and took longer than `slow_handler`.
    pub(super) slow: SlowLog,
    /// The host's watchdog is not looking at this instance: set by every inspect (and at the
    /// start), cleared by the first work that follows it, which calls the watchdog's
    /// attention ([`Shared::call_attention`]).
    pub(super) unwatched: AtomicBool,
    /// Inspects answered.
    pub(super) inspections: AtomicU64,
    pub(super) slow_handler: Duration,
}

/// What an instance starts with, besides its runtime.
pub(crate) struct SharedConfig {
    pub(crate) host: HostCalls,
    pub(crate) config: InstanceConfig,
    pub(crate) factory: Factory,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl Shared {
    pub(crate) fn new(start: SharedConfig) -> Shared {
        let SharedConfig { host, config, factory, runtime } = start;
        Shared {
            host,
            name: config.name,
            runtime,
            mailbox: Mailbox::new(config.mailbox),
            sweep: tokio::sync::Notify::new(),
            // See `InstanceConfig::route_within`.
            state: Mutex::new(if config.route_within { State::routing_within() } else { State::default() }),
            factory,
            next_id: AtomicU64::new(1),
            inline_handler: AtomicU64::new(0),
            store_order: Mutex::new(()),
            storage_order: Mutex::new(()),
            decode_failures: AtomicU64::new(0),
            kept: Kept::default(),
            listener_panics: AtomicU64::new(0),
            thread_id: AtomicU64::new(0),
            slow: SlowLog::default(),
            unwatched: AtomicBool::new(true),
            inspections: AtomicU64::new(0),
            slow_handler: if config.slow_handler_ms == u64::MAX {
                Duration::MAX
            } else {
                Duration::from_millis(config.slow_handler_ms)
            },
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // Author code never runs under this lock, so a poisoned lock only means a panic in our
        // own bookkeeping; the tables are still consistent enough to keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A handle on half `peer`, generation `generation`, of this instance.
    #[inline]
    pub(crate) fn half(self: &Arc<Self>, peer: Peer, generation: u64) -> HalfHandle {
        HalfHandle::new(Arc::downgrade(self), peer, generation)
    }

    /// Hands a message to the host for routing; returns its status code.
    #[inline]
    pub(crate) fn send(&self, message: Message<'_>) -> u32 {
        // The limit holds wherever the halves run, so it is checked here, before the host.
        if !message.fits() {
            return abi::status::TOO_LARGE;
        }
        self.host.send(&message)
    }

    /// Queues a message for this instance's dispatcher. Never runs author code on the calling
    /// thread, and never blocks: a full mailbox refuses what may be refused (`BUSY`), see
    /// [`crate::wire::MailboxLimit`].
    #[inline]
    pub(crate) fn enqueue(&self, delivery: Delivery) -> u32 {
        match self.mailbox.push(delivery) {
            Ok(()) => {
                self.call_attention();
                abi::status::OK
            }
            Err(Refused::Full) => abi::status::BUSY,
            Err(Refused::Closed) => abi::status::DEACTIVATED,
        }
    }

    /// Records a request a half sends, waking the timeout sweeper if it was idle; the
    /// receiver gets its answer.
    #[inline]
    pub(crate) fn start_request(&self, state: &mut State, request: Outgoing) -> oneshot::Receiver<Answer> {
        let (receiver, wake_sweeper) = state.start_request(request);
        if wake_sweeper {
            self.sweep.notify_one();
        }
        receiver
    }

    /// Answers `request` (on `channel`, for messages) with `reply`, the way it came: within
    /// the instance through the mailbox (so it still arrives after what its handler's half sent
    /// the invoker before it), else through the host.
    pub(crate) fn answer(&self, request: &Incoming, channel: &str, reply: Reply) {
        // A reply carries no channel name (its invoker knows which request it answers). One
        // over the limit would reach nobody: the invoker gets the reason instead, at once, and
        // the handler's side learns it from its log. The replacement is short whatever the
        // channel's name, so it always fits.
        let reply = if abi::fits(0, reply.payload.len()) {
            reply
        } else {
            let message = crate::error::too_large("reply", channel, reply.payload.len());
            tracing::warn!("the handler's reply was not sent: {message}");
            Reply::error(InvokeErrorKind::TooLarge, message)
        };
        match request.route {
            Route::Within => {
                self.enqueue(Delivery::within(OwnedMessage {
                    kind: abi::kind::REPLY,
                    status: reply.status,
                    origin: request.target,
                    target: request.origin,
                    request_id: request.id,
                    channel: String::new(),
                    payload: reply.payload,
                }));
            }
            Route::Host => {
                self.send(Message::reply(request.target, request.origin, request.id, &reply));
            }
        }
    }

    /// Work arrived (a message queued, a slow handler's report): if the host's watchdog is not
    /// looking at this instance, asks it to, once (see [`crate::wire::ATTENTION`]). Called on
    /// whichever thread brought the work, so a stuck instance thread is still looked at.
    ///
    /// Sound without a lock of its own: an inspect sets `unwatched` before it reads the mailbox
    /// and the slow log under their locks, and the work is recorded under those locks before
    /// this reads `unwatched`. Either the inspect saw the work (the watchdog goes on looking:
    /// queued, or taken and not finished, which `Progress::dispatching` shows until the
    /// dispatcher is back) or this sees the flag it set: the inspect's lock came after the
    /// push's, so its store happens before this load (a later `false` read instead is another
    /// caller's, whose look comes later still and sees this work).
    #[inline]
    pub(crate) fn call_attention(&self) {
        if self.unwatched.load(Ordering::Relaxed) && self.unwatched.swap(false, Ordering::AcqRel) {
            self.complete(crate::wire::ATTENTION, &Completion::Done);
        }
    }

    /// Answers control command `completion`.
    pub(crate) fn complete(&self, completion: u64, result: &Completion) {
        match rmp_serde::to_vec_named(result) {
            Ok(bytes) => self.host.complete(completion, &bytes),
            Err(error) => tracing::error!("cannot encode a completion: {error}"),
        }
    }
}

/// A message that is neither a request nor a reply: a broadcast, a store message.
pub(crate) fn notice<'a>(kind: u32, origin: Peer, target: Peer, payload: &'a [u8]) -> Message<'a> {
    Message { kind, status: 0, origin, target, request_id: 0, channel: "", payload }
}
