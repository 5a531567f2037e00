//! One running instance of an extension in this process: its own tokio runtime on its own
//! thread (shared by the main half and every in-process renderer half, so an in-process invoke
//! never hops threads), its mailbox, and its routing tables.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::InvokeErrorKind;
use crate::abi::{self, HostVTable, PEER_ALL, PEER_MAIN, Peer, RawMessage, RawSlice};
use crate::error::BoxError;
use crate::ipc::{Main, Renderer};
use crate::runtime::context::{self, HalfRef};
use crate::runtime::mailbox::{Mailbox, Refused};
use crate::runtime::panic_message;
use crate::runtime::state::{Deactivator, Half, HandlerResult, RawEvent, Reply, State, Tier};
use crate::runtime::stats::{self, SlowLog};
use crate::wire::{Busy, Completion, Control, ErrorPayload, InstanceConfig, InstanceSnapshot, OwnedMessage};

/// Marks an invoke between halves of this instance, in the message's otherwise unused status
/// (messages from the host always arrive with 0 there): its answer goes back the same way.
pub(crate) const LOCAL_REQUEST: u32 = 1;

/// How often waiting requests are checked for their timeout: a request times out between its
/// timeout and one tick later. One sweep per tick replaces a timer per request.
pub(crate) const TIMEOUT_TICK: Duration = Duration::from_millis(10);

/// The status of the reply a request gets when its timeout passed (never on the wire).
pub(crate) const TIMED_OUT: u32 = u32::MAX;

/// Sweeps left for a request that never times out: a timeout too long to count in ticks (over
/// about 497 days; `Duration::MAX` among them) means no limit.
pub(crate) const NO_TIMEOUT: u32 = u32::MAX;

/// Sweeps for a request with `timeout`: enough that it never times out early; [`NO_TIMEOUT`]
/// when it is too long to count.
pub(crate) fn timeout_ticks(timeout: Duration) -> u32 {
    let ticks = timeout.as_nanos().div_ceil(TIMEOUT_TICK.as_nanos()) + 1;
    u32::try_from(ticks).unwrap_or(NO_TIMEOUT)
}

/// How long `destroy` waits for the runtime thread to finish dropping tasks.
const DESTROY_WAIT: Duration = Duration::from_secs(5);

/// Creates the author's halves; the export macro fills it with the author's types.
#[derive(Clone, Copy)]
pub struct Factory {
    pub(crate) activate_main: fn(Main) -> BoxFuture<'static, Result<Deactivator, BoxError>>,
    pub(crate) activate_renderer: fn(Renderer) -> BoxFuture<'static, Result<Deactivator, BoxError>>,
}

/// Everything the halves of an instance share. Handles hold it weakly, so a handle leaked past
/// deactivation finds nothing and fails cleanly.
pub(crate) struct Shared {
    host: HostVTable,
    key: u64,
    pub(crate) name: String,
    /// See [`InstanceConfig::route_within`].
    route_within: bool,
    pub(crate) runtime: tokio::runtime::Handle,
    mailbox: Mailbox,
    /// Wakes the timeout sweeper when a request starts waiting while it is idle.
    pub(crate) sweep: tokio::sync::Notify,
    state: Mutex<State>,
    factory: Factory,
    next_id: AtomicU64,
    /// The handler the dispatcher is polling right now: its half (peer + 1) in the low 32 bits,
    /// its channel (number in `State::channels`, + 1) in the high ones; 0 if none. One store
    /// before and one after, as before the channel was added to it.
    inline_handler: AtomicU64,
    /// Held while a store write is sequenced and published, so updates leave in order.
    pub(crate) store_order: Mutex<()>,
    /// The same for the persisted tier: held while a write is sent to the host, and while the
    /// host's answers are applied and published.
    pub(crate) storage_order: Mutex<()>,
    pub(crate) decode_failures: AtomicU64,
    pub(crate) listener_panics: AtomicU64,
    /// The instance thread's TID, for its CPU time.
    thread_id: AtomicU64,
    /// Handlers that waited and took longer than `slow_handler`.
    slow: SlowLog,
    slow_handler: Duration,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // Author code never runs under this lock, so a poisoned lock only means a panic in our
        // own bookkeeping; the tables are still consistent enough to keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands a message to the host for routing; returns its status code.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send(
        &self,
        kind: u32,
        status: u32,
        origin: Peer,
        target: Peer,
        request_id: u64,
        channel: &str,
        payload: &[u8],
    ) -> u32 {
        // The limit holds wherever the halves run, so it is checked here, before the host.
        if !abi::fits(channel.len(), payload.len()) {
            return abi::status::TOO_LARGE;
        }
        let message = RawMessage {
            kind,
            status,
            origin,
            target,
            request_id,
            channel: RawSlice::new(channel.as_bytes()),
            payload: RawSlice::new(payload),
        };
        // SAFETY: `send` is the host's function for this ABI version (checked at instantiate),
        // and `message` with its borrowed buffers outlives the call.
        unsafe { (self.host.send)(self.key, &message) }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_error(
        &self,
        local: bool,
        origin: Peer,
        target: Peer,
        request_id: u64,
        channel: &str,
        kind: InvokeErrorKind,
        payload: &ErrorPayload,
    ) {
        let bytes = rmp_serde::to_vec_named(payload).unwrap_or_default();
        self.send_reply(local, origin, target, request_id, channel, crate::message::error_code(kind), bytes);
    }

    /// Answers request `request_id` of `to`: within the instance if it came that way (`local`:
    /// through the mailbox, so it still arrives after what `from` sent `to` before it), else
    /// through the host.
    #[allow(clippy::too_many_arguments)]
    fn send_reply(
        &self,
        local: bool,
        from: Peer,
        to: Peer,
        request_id: u64,
        channel: &str,
        status: u32,
        payload: Vec<u8>,
    ) {
        // A reply carries no channel name (its invoker knows which request it answers). One
        // over the limit would reach nobody: the invoker gets the reason instead, at once, and
        // the handler's side learns it from its log. The replacement is short whatever the
        // channel's name, so it always fits.
        let (status, payload) = if abi::fits(0, payload.len()) {
            (status, payload)
        } else {
            let message = crate::error::too_large("reply", channel, payload.len());
            tracing::warn!("the handler's reply was not sent: {message}");
            let error = ErrorPayload { message, data: None };
            (crate::message::error_code(InvokeErrorKind::TooLarge), rmp_serde::to_vec_named(&error).unwrap_or_default())
        };
        if local {
            let reply = OwnedMessage {
                kind: abi::kind::REPLY,
                status,
                origin: from,
                target: to,
                request_id,
                channel: String::new(),
                payload,
            };
            self.enqueue(reply);
        } else {
            self.send(abi::kind::REPLY, status, from, to, request_id, "", &payload);
        }
    }

    /// Whether a request from `origin` to `target` stays within this instance: both halves
    /// run here and are not closing, the extension is routing, and it is a request the host
    /// would route (renderer to main, or main to a frame). Such a request never passes
    /// through the host: it goes straight into this instance's mailbox, and this instance
    /// fails it when a half involved goes away, as the host does for the requests it routes.
    pub(crate) fn is_local_route(&self, state: &State, origin: Peer, target: Peer) -> bool {
        let open = |peer| state.halves.get(&peer).is_some_and(|half: &Half| !half.closing);
        let routable = (origin == PEER_MAIN) != (target == PEER_MAIN);
        self.route_within && routable && !state.stopped && open(origin) && open(target)
    }

    /// Fails the requests within this instance for which `involves(origin, target)` holds:
    /// each invoker gets `kind`, each running handler is stopped.
    fn fail_local(&self, involves: impl Fn(Peer, Peer) -> bool, kind: InvokeErrorKind) {
        let (failed, stopped) = {
            let mut state = self.state();
            let here: Vec<Peer> = state.halves.keys().copied().collect();
            let mut failed = Vec::new();
            let mut stopped = Vec::new();
            for (peer, half) in state.halves.iter_mut() {
                let ids: Vec<u64> = half
                    .pending
                    .iter()
                    .filter(|(_, pending)| pending.local && involves(*peer, pending.target))
                    .map(|(id, _)| *id)
                    .collect();
                failed.extend(ids.into_iter().filter_map(|id| half.pending.remove(&id)));
                // A running handler whose invoker runs here was started by a local request.
                let running: Vec<(Peer, u64)> = half
                    .running
                    .keys()
                    .filter(|(origin, _)| here.contains(origin) && involves(*origin, *peer))
                    .copied()
                    .collect();
                stopped.extend(running.into_iter().filter_map(|key| half.running.remove(&key)));
            }
            (failed, stopped)
        };
        for abort in stopped {
            abort.abort();
        }
        let payload = ErrorPayload { message: format!("{kind} before the reply arrived"), data: None };
        let bytes = rmp_serde::to_vec_named(&payload).unwrap_or_default();
        for pending in failed {
            let _ = pending.reply.send(Reply { status: crate::message::error_code(kind), payload: bytes.clone() });
        }
    }

    fn complete(&self, completion: u64, result: &Completion) {
        let bytes = match rmp_serde::to_vec_named(result) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!("cannot encode a completion: {error}");
                return;
            }
        };
        // SAFETY: the host's function for this ABI version; `bytes` outlives the call.
        unsafe { (self.host.complete)(self.key, completion, RawSlice::new(&bytes)) }
    }

    fn half_ref(self: &Arc<Self>, peer: Peer, generation: u64) -> HalfRef {
        HalfRef { shared: Arc::downgrade(self), peer, generation }
    }

    pub(crate) fn snapshot(&self) -> InstanceSnapshot {
        // Read before the lock: the instance's thread may want it meanwhile.
        let thread_id = self.thread_id.load(Ordering::Relaxed);
        let cpu_ns = stats::thread_cpu_ns(thread_id);
        let state = self.state();
        let mut halves: Vec<_> = state.halves.iter().map(|(peer, half)| half.snapshot(*peer)).collect();
        let inline = self.inline_handler.load(Ordering::Acquire);
        let (inline_half, inline_channel) = (inline & u64::from(u32::MAX), inline >> 32);
        let inline = (inline_half != 0).then(|| crate::message::half_of(inline_half - 1));
        if let Some(half) = halves.iter_mut().find(|half| Some(half.half) == inline) {
            half.running_handlers += 1;
        }
        halves.sort_by_key(|half| half.half);
        let busy = inline
            .zip(state.channels.describe(inline_channel.wrapping_sub(1) as usize))
            .map(|(half, (kind, channel))| Busy { half, kind, channel: channel.to_owned() });
        let progress = self.mailbox.progress();
        InstanceSnapshot {
            halves,
            // The dispatcher and the timeout sweeper are ours, not the extension's.
            tasks: self.runtime.metrics().num_alive_tasks().saturating_sub(2),
            decode_failures: self.decode_failures.load(Ordering::Relaxed),
            listener_panics: self.listener_panics.load(Ordering::Relaxed),
            local_requests: state.halves.values().flat_map(|half| half.pending.values()).filter(|p| p.local).count()
                as u64,
            queued_messages: self.mailbox.queued(),
            dropped_broadcasts: self.mailbox.dropped_broadcasts(),
            refused_requests: self.mailbox.refused_requests(),
            queued_bytes: self.mailbox.queued_bytes(),
            store_bytes: state
                .halves
                .values()
                .flat_map(|half| half.tiers.iter())
                .map(|tier| tier.replica.bytes() as u64)
                .sum(),
            cpu_ns,
            thread_id,
            dispatched: progress.dispatched,
            batch_messages: progress.batch_waiting,
            busy,
            channels: state.channels.snapshot(),
            slow_handlers: self.slow.snapshot(),
        }
    }

    /// Queues a message from the host. Never runs author code on the calling thread, and never
    /// blocks: a full mailbox refuses what may be refused (`BUSY`), see [`MailboxLimit`].
    pub(crate) fn enqueue(&self, envelope: OwnedMessage) -> u32 {
        match self.mailbox.push(envelope) {
            Ok(()) => abi::status::OK,
            Err(Refused::Full) => abi::status::BUSY,
            Err(Refused::Closed) => abi::status::DEACTIVATED,
        }
    }

    fn dispatch(self: &Arc<Self>, envelope: OwnedMessage) {
        match envelope.kind {
            abi::kind::BROADCAST => self.dispatch_broadcast(&envelope),
            abi::kind::INVOKE => self.dispatch_invoke(envelope),
            abi::kind::STORE_WRITE => self.dispatch_store_write(envelope.origin, &envelope.payload),
            abi::kind::STORE_UPDATE => self.dispatch_store_update(Tier::Store, &envelope.payload),
            abi::kind::STORE_REFUSAL => self.dispatch_write_refusal(Tier::Store, envelope.target, &envelope.payload),
            abi::kind::STORAGE_WRITE => self.dispatch_storage_write(envelope.origin, &envelope.payload),
            abi::kind::STORAGE_UPDATE => self.dispatch_store_update(Tier::Storage, &envelope.payload),
            abi::kind::STORAGE_REFUSAL => {
                self.dispatch_write_refusal(Tier::Storage, envelope.target, &envelope.payload)
            }
            abi::kind::STORAGE_COMMITTED => self.dispatch_storage_committed(&envelope.payload),
            abi::kind::REPLY => {
                let pending = self
                    .state()
                    .halves
                    .get_mut(&envelope.target)
                    .and_then(|half| half.pending.remove(&envelope.request_id));
                if let Some(pending) = pending {
                    // The invoker may have given up meanwhile; then nobody wants the reply.
                    let _ = pending.reply.send(Reply { status: envelope.status, payload: envelope.payload });
                }
            }
            abi::kind::CANCEL => {
                let running = self
                    .state()
                    .halves
                    .get_mut(&envelope.target)
                    .and_then(|half| half.running.remove(&(envelope.origin, envelope.request_id)));
                if let Some(abort) = running {
                    abort.abort();
                }
            }
            other => tracing::warn!("dropping a message of unknown kind {other}"),
        }
    }

    // Out of line: it keeps the dispatcher's path for requests and replies short.
    #[inline(never)]
    fn dispatch_broadcast(self: &Arc<Self>, envelope: &OwnedMessage) {
        let mut targets = Vec::new();
        let counted = {
            let mut state = self.state();
            let mut counters = None;
            for (peer, half) in &state.halves {
                if envelope.target != PEER_ALL && envelope.target != *peer {
                    continue;
                }
                if let Some(listeners) = half.listeners.get(&envelope.channel) {
                    counters = counters.or(listeners.first().map(|(_, _, counters)| *counters));
                    let listeners: Vec<_> = listeners.iter().map(|(_, f, _)| f.clone()).collect();
                    targets.push((*peer, half.generation, listeners));
                }
            }
            // Counted when it reaches a listener: channels nobody listens to cost nothing.
            counters.map(|counters| state.channels.count_at(counters))
        };
        let Some(counted) = counted else { return };
        // Main first, then frames in order: deterministic for tests and for authors.
        targets.sort_by_key(|(peer, _, _)| *peer);
        let event = RawEvent {
            sender: crate::message::sender_of(envelope.origin),
            channel: &envelope.channel,
            payload: &envelope.payload,
        };
        for (peer, generation, listeners) in targets {
            for listener in listeners {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    context::sync_scope(self.half_ref(peer, generation), || listener(&event))
                }));
                if let Err(panic) = outcome {
                    self.listener_panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        channel = %envelope.channel,
                        "a listener panicked: {}",
                        panic_message(panic.as_ref())
                    );
                }
            }
        }
        if let Some(started) = counted.started {
            self.record_sample(counted.index, started);
        }
    }

    fn dispatch_invoke(self: &Arc<Self>, envelope: OwnedMessage) {
        let OwnedMessage { origin, target, request_id, channel, payload, status, .. } = envelope;
        let local = status == LOCAL_REQUEST;
        let handler = {
            let mut state = self.state();
            // A request within the instance that was failed or cancelled while it waited in
            // the mailbox (its frame closed, the extension began deactivating, its invoker gave
            // up) no longer has its invoker's entry: it is not started at all. (The host's
            // requests get a cancel queued behind them instead.)
            let wanted =
                !local || state.halves.get(&origin).is_some_and(|invoker| invoker.pending.contains_key(&request_id));
            if !wanted {
                return;
            }
            let found = state.halves.get(&target).and_then(|half| {
                let (_, handler, counters) = half.handlers.get(&channel)?;
                Some((handler.clone(), half.generation, *counters))
            });
            found.map(|(handler, generation, counters)| (handler, generation, state.channels.count_at(counters)))
        };
        let Some((handler, generation, counted)) = handler else {
            let side = if target == PEER_MAIN { "main".to_owned() } else { format!("frame {target}") };
            let message = format!("no handler for channel `{}` in {side}", crate::error::shown(&channel));
            let payload = ErrorPayload { message, data: None };
            self.send_error(local, target, origin, request_id, &channel, InvokeErrorKind::NoHandler, &payload);
            return;
        };
        // Author code (the handler's synchronous part) runs outside the state lock: it may
        // register, dispose or broadcast. Most handlers finish without waiting: polled once
        // here, in place (the future is already boxed), they answer without a task of their
        // own: one spawn and one wake-up fewer per request. One that waits is spawned and
        // polled again there, which registers its real waker (futures re-register on every
        // poll).
        let mut probe = std::task::Context::from_waker(std::task::Waker::noop());
        // Inspect counts it as running meanwhile (it may block, and inspect answers from
        // another thread).
        self.inline_handler.store(inline_tag(target, counted.index), Ordering::Release);
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
            context::sync_scope(self.half_ref(target, generation), || {
                let mut future = handler(payload, crate::message::sender_of(origin));
                match future.as_mut().poll(&mut probe) {
                    std::task::Poll::Ready(result) => Ok(result),
                    std::task::Poll::Pending => Err(future),
                }
            })
        }));
        self.inline_handler.store(0, Ordering::Release);
        let future = match started {
            Ok(Ok(result)) => {
                if let Some(started) = counted.started {
                    self.record_sample(counted.index, started);
                }
                return self.reply(local, target, origin, request_id, &channel, Ok(result));
            }
            Err(panic) => return self.reply(local, target, origin, request_id, &channel, Err(panic)),
            Ok(Err(future)) => future,
        };
        // A handler that waits is timed always (it costs a task anyway), for the slowest
        // handler and the slow-handler reports.
        let (since, sampled, index) =
            (counted.started.unwrap_or_else(Instant::now), counted.started.is_some(), counted.index);
        let scoped = context::scope(self.half_ref(target, generation), AssertUnwindSafe(future).catch_unwind());
        let weak = Arc::downgrade(self);
        let mut state = self.state();
        // Checked again under the lock that `fail_local` takes: a request within the instance
        // failed while its handler's first poll ran (its frame closed, say) must not leave the
        // handler running with nothing to stop it.
        if local && !state.halves.get(&origin).is_some_and(|invoker| invoker.pending.contains_key(&request_id)) {
            drop(state);
            // Dropped unlocked: it may run author destructors.
            drop(scoped);
            return;
        }
        let Some(half) = state.half_mut(target, generation) else {
            drop(state);
            let kind = if target == PEER_MAIN { InvokeErrorKind::Deactivated } else { InvokeErrorKind::FrameClosed };
            let payload = ErrorPayload { message: format!("{kind} before the handler started"), data: None };
            self.send_error(local, target, origin, request_id, &channel, kind, &payload);
            return;
        };
        // Spawned under the state lock: the task cannot remove its `running` entry before the
        // entry exists.
        let task = self.runtime.spawn(async move {
            let outcome = scoped.await;
            let Some(shared) = weak.upgrade() else { return };
            {
                let mut state = shared.state();
                if let Some(half) = state.half_mut(target, generation) {
                    half.running.remove(&(origin, request_id));
                }
            }
            shared.reply(local, target, origin, request_id, &channel, outcome);
            let elapsed = since.elapsed();
            shared.state().channels.record(index, elapsed, sampled);
            if elapsed > shared.slow_handler {
                shared.slow.push(crate::message::half_of(target), &channel, elapsed);
            }
        });
        half.running.insert((origin, request_id), task.abort_handle());
    }

    /// Records the time of a timed message (one in [`ChannelStats::SAMPLE_EVERY`]): kept out
    /// of line, off the path of the others.
    ///
    /// [`ChannelStats::SAMPLE_EVERY`]: crate::wire::ChannelStats::SAMPLE_EVERY
    #[cold]
    #[inline(never)]
    fn record_sample(&self, index: usize, started: Instant) {
        let elapsed = started.elapsed();
        self.state().channels.record(index, elapsed, true);
    }

    /// Sends a handler's outcome back to the invoker.
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &self,
        local: bool,
        target: Peer,
        origin: Peer,
        request_id: u64,
        channel: &str,
        outcome: std::thread::Result<HandlerResult>,
    ) {
        match outcome {
            Ok(Ok(bytes)) => self.send_reply(local, target, origin, request_id, channel, abi::status::OK, bytes),
            Ok(Err((kind, payload))) => self.send_error(local, target, origin, request_id, channel, kind, &payload),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(%channel, "a handler panicked: {message}");
                let payload = ErrorPayload { message: format!("the handler panicked: {message}"), data: None };
                self.send_error(local, target, origin, request_id, channel, InvokeErrorKind::Panicked, &payload);
            }
        }
    }

    /// Runs a control command from the host.
    fn control(self: &Arc<Self>, command: Control) {
        let completion = command.completion();
        match command {
            Control::Inspect { .. } => {
                // Answered on the calling thread, so inspect works even while the extension's
                // own thread is blocked.
                self.complete(completion, &Completion::Inspected(self.snapshot()));
            }
            Control::SetFrames { frames, .. } => {
                self.state().frames = frames;
                self.complete(completion, &Completion::Done);
            }
            Control::StoreSnapshot { .. } => {
                let answer = match self.store_snapshot() {
                    Some(snapshot) => Completion::StoreSnapshot(snapshot),
                    None => Completion::Failed { reason: "no main half in this instance".into() },
                };
                self.complete(completion, &answer);
            }
            Control::SeedStore { snapshot, .. } => {
                self.seed_tier(Tier::Store, snapshot);
                self.complete(completion, &Completion::Done);
            }
            Control::StorageSnapshot { .. } => {
                let answer = match self.storage_seed() {
                    Some(seed) => Completion::StorageSeed(seed),
                    None => Completion::Failed { reason: "no main half in this instance".into() },
                };
                self.complete(completion, &answer);
            }
            Control::SeedStorage { seed, .. } => {
                self.seed_storage(seed);
                self.complete(completion, &Completion::Done);
            }
            Control::StopRouting { .. } => {
                self.state().stopped = true;
                self.fail_local(|_, _| true, InvokeErrorKind::Deactivated);
                self.complete(completion, &Completion::Done);
            }
            Control::ActivateMain { .. } => self.spawn_activation(completion, PEER_MAIN),
            Control::OpenFrame { frame, .. } => self.spawn_activation(completion, frame),
            Control::DeactivateMain { timeout_ms, .. } => self.spawn_deactivation(completion, PEER_MAIN, timeout_ms),
            Control::CloseFrame { frame, timeout_ms, .. } => self.spawn_deactivation(completion, frame, timeout_ms),
        }
    }

    /// Starts a half afresh (a new generation) and runs its `activate` in a task the half owns,
    /// so closing the half before activation finishes stops it.
    fn spawn_activation(self: &Arc<Self>, completion: u64, peer: Peer) {
        let generation = self.next_id();
        // A half activated again while running replaces the old one: its requests end.
        if self.state().halves.contains_key(&peer) {
            self.fail_local(|origin, target| origin == peer || target == peer, closing_kind(peer));
        }
        let replaced = {
            let mut state = self.state();
            let mut half = Half::new(generation);
            // A frame starts with the current store: the snapshot is there before `activate`.
            // Main starts its persisted tier from the host's seed.
            if peer != PEER_MAIN {
                state.renderers_started += 1;
                for tier in [Tier::Store, Tier::Storage] {
                    let from = match state.halves.get(&PEER_MAIN) {
                        Some(main) => Some(&main.tiers[tier as usize].replica),
                        None => state.process[tier as usize].replica.as_ref(),
                    };
                    if let Some(replica) = from {
                        half.tier(tier).replica = replica.clone();
                    }
                }
            } else if let Some(seed) = &state.process[Tier::Storage as usize].replica {
                half.tier(Tier::Storage).replica = seed.clone();
            }
            state.halves.insert(peer, half)
        };
        if let Some(old) = replaced {
            tracing::warn!("half {peer} was activated again while running; the old one is shut down");
            old.shut_down();
        }
        let half = self.half_ref(peer, generation);
        let activation = if peer == PEER_MAIN {
            (self.factory.activate_main)(Main::new(half.clone()))
        } else {
            (self.factory.activate_renderer)(Renderer::new(half.clone()))
        };
        let scoped = context::scope(half, AssertUnwindSafe(activation).catch_unwind());
        let shared = self.clone();
        let mut state = self.state();
        // Spawned under the lock, so the task cannot finish before its handle is stored.
        let task = self.runtime.spawn(async move {
            let result = match scoped.await {
                Ok(Ok(user)) => {
                    let mut state = shared.state();
                    match state.half_mut(peer, generation) {
                        Some(half) => {
                            half.user = Some(user);
                            half.activation = None;
                            Completion::Done
                        }
                        None => {
                            drop(state);
                            // The half was closed meanwhile: nothing to keep (dropped unlocked).
                            drop(user);
                            Completion::Failed { reason: "the half was closed while it activated".into() }
                        }
                    }
                }
                Ok(Err(error)) => {
                    shared.remove_half(peer, generation);
                    Completion::Failed { reason: error_chain(error.as_ref()) }
                }
                Err(panic) => {
                    shared.remove_half(peer, generation);
                    Completion::Panicked { message: panic_message(panic.as_ref()) }
                }
            };
            shared.complete(completion, &result);
        });
        if let Some(half) = state.half_mut(peer, generation) {
            half.activation = Some(task.abort_handle());
        }
    }

    /// Runs a half's `deactivate` (bounded), then drops the half: the generation is fixed now,
    /// so a late deactivation never removes a half opened after it.
    fn spawn_deactivation(self: &Arc<Self>, completion: u64, peer: Peer, timeout_ms: u64) {
        let Some(generation) = self.state().halves.get(&peer).map(|half| half.generation) else {
            self.complete(completion, &Completion::Done);
            return;
        };
        let kind = closing_kind(peer);
        // No request within the instance reaches or leaves the half from now on, and those in
        // flight fail now, as the host fails the ones it routed.
        if let Some(half) = self.state().half_mut(peer, generation) {
            half.closing = true;
        }
        self.fail_local(|origin, target| origin == peer || target == peer, kind);
        let shared = self.clone();
        self.runtime.spawn(async move {
            // Invokes this half is waiting on can never be answered now.
            let (pending, user) = match shared.state().half_mut(peer, generation) {
                Some(half) => (std::mem::take(&mut half.pending), half.user.take()),
                None => Default::default(),
            };
            for (_, pending) in pending {
                let payload = ErrorPayload { message: format!("{kind} before the reply arrived"), data: None };
                let bytes = rmp_serde::to_vec_named(&payload).unwrap_or_default();
                let _ = pending.reply.send(Reply { status: crate::message::error_code(kind), payload: bytes });
            }
            let result = match user {
                None => Completion::Done,
                Some(deactivate) => {
                    let half = shared.half_ref(peer, generation);
                    let run = context::scope(half, AssertUnwindSafe(deactivate()).catch_unwind());
                    match tokio::time::timeout(Duration::from_millis(timeout_ms), run).await {
                        Ok(Ok(())) => Completion::Done,
                        Ok(Err(panic)) => Completion::Panicked { message: panic_message(panic.as_ref()) },
                        Err(_) => Completion::TimedOut { timeout_ms },
                    }
                }
            };
            shared.remove_half(peer, generation);
            shared.complete(completion, &result);
        });
    }

    fn remove_half(&self, peer: Peer, generation: u64) {
        // Requests within the instance from and to the half end with it (a frame whose
        // `activate` failed, say, never gets a `CloseFrame` to do it).
        if self.state().halves.get(&peer).is_some_and(|half| half.generation == generation) {
            self.fail_local(|origin, target| origin == peer || target == peer, closing_kind(peer));
        }
        let mut state = self.state();
        let half = match state.halves.get(&peer) {
            Some(half) if half.generation == generation => state.halves.remove(&peer),
            _ => None,
        };
        drop(state);
        // Shut down outside the lock: dropping listeners and tasks may run author destructors.
        if let Some(half) = half {
            half.shut_down();
        }
    }
}

/// What `Shared::inline_handler` holds while `target`'s handler for channel number `channel`
/// runs: the half in the low 32 bits, the channel in the high ones (each + 1). A peer too large
/// for 32 bits (frame numbers are small; the host hands them out from 1) is not shown at all.
#[inline]
fn inline_tag(target: Peer, channel: usize) -> u64 {
    let half = target.wrapping_add(1);
    if half > u64::from(u32::MAX) { 0 } else { half | ((channel as u64 + 1) << 32) }
}

/// How requests involving `peer` fail when it goes away.
fn closing_kind(peer: Peer) -> InvokeErrorKind {
    if peer == PEER_MAIN { InvokeErrorKind::Deactivated } else { InvokeErrorKind::FrameClosed }
}

/// The message of an error and of its sources, joined.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The instance as the host holds it (through an opaque pointer).
pub(crate) struct Instance {
    pub(crate) shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// Behind a mutex only so `Instance` is `Sync`: the host may call `control`/`deliver` from
    /// any thread, and only `destroy` (which owns the instance) reads it.
    finished: Mutex<std::sync::mpsc::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Instance {
    pub(crate) fn start(
        host: HostVTable,
        key: u64,
        config: InstanceConfig,
        factory: Factory,
    ) -> std::io::Result<Instance> {
        let thread_name = format!("ext:{}", config.name);
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().thread_name(thread_name.clone()).build()?;
        let shared = Arc::new(Shared {
            host,
            key,
            name: config.name,
            route_within: config.route_within,
            runtime: runtime.handle().clone(),
            mailbox: Mailbox::new(config.mailbox),
            sweep: tokio::sync::Notify::new(),
            state: Mutex::new(State::default()),
            factory,
            next_id: AtomicU64::new(1),
            store_order: Mutex::new(()),
            storage_order: Mutex::new(()),
            inline_handler: AtomicU64::new(0),
            decode_failures: AtomicU64::new(0),
            listener_panics: AtomicU64::new(0),
            thread_id: AtomicU64::new(0),
            slow: SlowLog::default(),
            slow_handler: if config.slow_handler_ms == u64::MAX {
                Duration::MAX
            } else {
                Duration::from_millis(config.slow_handler_ms)
            },
        });
        let (shutdown, shutdown_signal) = tokio::sync::oneshot::channel::<()>();
        let (finished_tx, finished) = std::sync::mpsc::channel();
        let dispatcher_shared = shared.clone();
        let sweeper_shared = shared.clone();
        let thread = std::thread::Builder::new().name(thread_name).spawn(move || {
            sweeper_shared.thread_id.store(stats::current_thread_id(), Ordering::Relaxed);
            runtime.block_on(async move {
                tokio::spawn(dispatch_loop(dispatcher_shared));
                tokio::spawn(sweep_timeouts(sweeper_shared));
                // Either a signal or the sender dropped: both mean stop.
                let _ = shutdown_signal.await;
            });
            // Drops every task still alive (the extension's and ours) on this thread.
            runtime.shutdown_timeout(Duration::from_millis(500));
            let _ = finished_tx.send(());
        })?;
        context::set_instance(Some(Arc::downgrade(&shared)));
        Ok(Instance { shared, shutdown: Some(shutdown), finished: Mutex::new(finished), thread: Some(thread) })
    }

    pub(crate) fn control(&self, command: Control) {
        self.shared.control(command);
    }

    /// Stops the runtime (every task the extension spawned dies) and waits for its thread.
    /// Returns false if the thread did not finish in time (author code blocking it).
    pub(crate) fn destroy(mut self) -> bool {
        context::set_instance(None);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner).recv_timeout(DESTROY_WAIT).is_ok();
        if let Some(thread) = self.thread.take() {
            if finished {
                let _ = thread.join();
            } else {
                tracing::error!(
                    "the runtime thread of `{}` is still blocked after {:?}; abandoning it",
                    self.shared.name,
                    DESTROY_WAIT
                );
            }
        }
        finished
    }
}

/// Times out waiting requests: every [`TIMEOUT_TICK`] while any request of the instance waits,
/// each one's ticks count down, and those at zero get a [`TIMED_OUT`] reply (their invokers
/// then cancel them). Idle (no timer at all) while nothing waits.
async fn sweep_timeouts(shared: Arc<Shared>) {
    loop {
        shared.sweep.notified().await;
        loop {
            tokio::time::sleep(TIMEOUT_TICK).await;
            let (expired, waiting) = {
                let mut state = shared.state();
                let mut expired = Vec::new();
                let mut waiting = false;
                for half in state.halves.values_mut() {
                    let due: Vec<u64> = half
                        .pending
                        .iter_mut()
                        .filter(|(_, pending)| pending.ticks_left != NO_TIMEOUT)
                        .filter_map(|(id, pending)| {
                            pending.ticks_left = pending.ticks_left.saturating_sub(1);
                            (pending.ticks_left == 0).then_some(*id)
                        })
                        .collect();
                    expired.extend(due.into_iter().filter_map(|id| half.pending.remove(&id)));
                    waiting |= !half.pending.is_empty();
                }
                if !waiting {
                    state.sweeping = false;
                }
                (expired, waiting)
            };
            for pending in expired {
                let _ = pending.reply.send(Reply { status: TIMED_OUT, payload: Vec::new() });
            }
            if !waiting {
                break;
            }
        }
    }
}

async fn dispatch_loop(shared: Arc<Shared>) {
    shared
        .mailbox
        .serve(|envelope| {
            shared.dispatch(envelope);
            shared.mailbox.report_overflow(&shared.name);
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_never_times_out_before_its_timeout() {
        // The first sweep comes anywhere up to one tick after the request starts.
        assert_eq!(timeout_ticks(Duration::ZERO), 1);
        assert_eq!(timeout_ticks(TIMEOUT_TICK), 2);
        assert_eq!(timeout_ticks(TIMEOUT_TICK + Duration::from_nanos(1)), 3);
        assert_eq!(timeout_ticks(Duration::from_secs(30)), 3001);
        assert_eq!(timeout_ticks(Duration::MAX), NO_TIMEOUT);
        assert_eq!(timeout_ticks(Duration::from_secs(u64::from(u32::MAX) / 100 + 1)), NO_TIMEOUT);
    }
}
