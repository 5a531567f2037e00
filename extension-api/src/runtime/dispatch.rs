//! The dispatcher: the instance's mailbox drained on its thread, each message handed to what
//! it is for (listeners, a handler, a waiting invoker, the store).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::FutureExt;

use crate::InvokeErrorKind;
use crate::abi::{self, PEER_ALL, PEER_MAIN, Peer};
use crate::message::Reply;
use crate::runtime::Shared;
use crate::runtime::context;
use crate::runtime::mailbox::{Delivery, Source};
use crate::runtime::panic_message;
use crate::runtime::payload::Queued;
use crate::runtime::requests::{Answer, Incoming, Replied, Route, closing_kind};
use crate::runtime::state::{HandlerResult, RawEvent, Tier};

/// Drains the mailbox until the runtime shuts down, reading `source` (the host's connection,
/// where this thread reads it) between batches.
pub(crate) async fn dispatch_loop(shared: Arc<Shared>, source: Option<Box<dyn Source>>) {
    shared
        .mailbox
        .serve(
            |delivery| {
                shared.dispatch(delivery);
                shared.mailbox.report_overflow(&shared.name);
            },
            source,
        )
        .await;
}

impl Shared {
    fn dispatch(self: &Arc<Self>, delivery: Delivery) {
        let Delivery { route, message } = delivery;
        match message.kind {
            abi::kind::BROADCAST => self.dispatch_broadcast(message),
            abi::kind::INVOKE => self.dispatch_invoke(route, message),
            abi::kind::STORE_WRITE => self.dispatch_store_write(message.origin, &message.payload),
            abi::kind::STORE_UPDATE => self.dispatch_store_update(Tier::Store, &message.payload),
            abi::kind::STORE_REFUSAL => {
                self.dispatch_write_refusal(Tier::Store, message.target, message.status, &message.payload)
            }
            abi::kind::STORAGE_WRITE => self.dispatch_storage_write(message.origin, &message.payload),
            abi::kind::STORAGE_UPDATE => self.dispatch_store_update(Tier::Storage, &message.payload),
            abi::kind::STORAGE_REFUSAL => {
                self.dispatch_write_refusal(Tier::Storage, message.target, message.status, &message.payload)
            }
            abi::kind::STORAGE_COMMITTED => self.dispatch_storage_committed(&message.payload),
            abi::kind::REPLY => {
                let waiter = self.state().requests.take_reply(message.target, message.request_id, route);
                if let Some(waiter) = waiter {
                    waiter.answer(Answer::Reply(Replied { status: message.status, payload: message.payload }));
                }
            }
            abi::kind::CANCEL => {
                let running = self.state().requests.cancel(message.origin, message.target, message.request_id, route);
                if let Some(abort) = running {
                    abort.abort();
                }
            }
            other => tracing::warn!("dropping a message of unknown kind {other}"),
        }
    }

    // Out of line: it keeps the dispatcher's path for requests and replies short.
    #[inline(never)]
    fn dispatch_broadcast(self: &Arc<Self>, envelope: Queued) {
        let mut targets = Vec::new();
        let counted = {
            let mut state = self.state();
            let mut counters = None;
            for (peer, half) in &state.halves {
                if envelope.target != PEER_ALL && envelope.target != *peer {
                    continue;
                }
                if let Some(listeners) = half.listeners(&envelope.channel) {
                    counters = counters.or(listeners.first().map(|listener| listener.counters));
                    let listeners: Vec<_> = listeners.iter().map(|listener| listener.callback.clone()).collect();
                    targets.push((*peer, half.generation(), listeners));
                }
            }
            // Counted when it reaches a listener: channels nobody listens to cost nothing.
            counters.map(|counters| state.channels.count_at(counters))
        };
        let Some(counted) = counted else { return };
        // Main first, then frames in order: deterministic for tests and for authors.
        targets.sort_by_key(|(peer, _, _)| *peer);
        // Prepared once for all its listeners: a large value is one buffer they share.
        let Queued { origin, channel, payload, .. } = envelope;
        let value = payload.decodable(|| self.kept.clone());
        let event = RawEvent { sender: crate::message::sender_of(origin), channel: &channel, value: &value };
        for (peer, generation, listeners) in targets {
            // Inspect shows the listener running meanwhile, as a handler run in place (it may
            // block, and inspect answers from another thread): one store per half reached.
            self.inline_handler.store(inline_tag(peer, counted.index), Ordering::Release);
            for listener in listeners {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    context::sync_scope(self.half(peer, generation), || listener(&event))
                }));
                if let Err(panic) = outcome {
                    self.listener_panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        channel = %channel,
                        "a listener panicked: {}",
                        panic_message(panic.as_ref())
                    );
                }
            }
        }
        self.inline_handler.store(0, Ordering::Release);
        if let Some(started) = counted.started {
            self.record_sample(counted.index, started);
        }
    }

    fn dispatch_invoke(self: &Arc<Self>, route: Route, envelope: Queued) {
        let Queued { origin, target, request_id, channel, payload, .. } = envelope;
        let request = Incoming { origin, target, id: request_id, route };
        let handler = {
            let mut state = self.state();
            // A request within the instance that was failed or cancelled while it waited in
            // the mailbox (its frame closed, the extension began deactivating, its invoker gave
            // up) no longer has its invoker's entry: it is not started at all. (The host's
            // requests get a cancel queued behind them instead.)
            if route == Route::Within && !state.requests.is_waiting(origin, request_id) {
                return;
            }
            let found = state.halves.get(&target).and_then(|half| {
                let handler = half.handler(&channel)?;
                Some((handler.callback.clone(), half.generation(), handler.counters))
            });
            found.map(|(handler, generation, counters)| (handler, generation, state.channels.count_at(counters)))
        };
        let Some((handler, generation, counted)) = handler else {
            let side = if target == PEER_MAIN { "main".to_owned() } else { format!("frame {target}") };
            let message = format!("no handler for channel `{}` in {side}", crate::error::shown(&channel));
            self.answer(&request, &channel, Reply::error(InvokeErrorKind::NoHandler, message));
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
            context::sync_scope(self.half(target, generation), || {
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
                return self.reply(&request, &channel, Ok(result));
            }
            Err(panic) => return self.reply(&request, &channel, Err(panic)),
            Ok(Err(future)) => future,
        };
        // A handler that waits is timed always (it costs a task anyway), for the slowest
        // handler and the slow-handler reports.
        let (since, sampled, index) =
            (counted.started.unwrap_or_else(Instant::now), counted.started.is_some(), counted.index);
        let scoped = context::scope(self.half(target, generation), AssertUnwindSafe(future).catch_unwind());
        let weak = Arc::downgrade(self);
        let mut state = self.state();
        // Checked again under the lock that failing requests takes: a request within the
        // instance failed while its handler's first poll ran (its frame closed, say) must not
        // leave the handler running with nothing to stop it.
        if route == Route::Within && !state.requests.is_waiting(origin, request_id) {
            drop(state);
            // Dropped unlocked: it may run author destructors.
            drop(scoped);
            return;
        }
        if !state.is_current(target, generation) {
            drop(state);
            let kind = closing_kind(target);
            self.answer(&request, &channel, Reply::error(kind, format!("{kind} before the handler started")));
            return;
        }
        // Spawned under the state lock: the task cannot remove its entry before it exists.
        let task = self.runtime.spawn(async move {
            let outcome = scoped.await;
            let Some(shared) = weak.upgrade() else { return };
            shared.state().requests.finish(&request);
            shared.reply(&request, &channel, outcome);
            let elapsed = since.elapsed();
            shared.state().channels.record(index, elapsed, sampled);
            if elapsed > shared.slow_handler {
                shared.slow.push(crate::message::half_of(target), &channel, elapsed);
                shared.call_attention();
            }
        });
        state.requests.run(request, task.abort_handle());
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
    fn reply(&self, request: &Incoming, channel: &str, outcome: std::thread::Result<HandlerResult>) {
        let reply = match outcome {
            Ok(Ok(bytes)) => Reply::ok(bytes),
            Ok(Err((kind, payload))) => Reply::error_with(kind, &payload),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(%channel, "a handler panicked: {message}");
                Reply::error(InvokeErrorKind::Panicked, format!("the handler panicked: {message}"))
            }
        };
        self.answer(request, channel, reply);
    }
}

/// What `Shared::inline_handler` holds while `target`'s handler (or listeners) for channel
/// number `channel` runs in place: the half in the low 32 bits, the channel in the high ones (each + 1). A peer too large
/// for 32 bits (frame numbers are small; the host hands them out from 1) is not shown at all.
#[inline]
fn inline_tag(target: Peer, channel: usize) -> u64 {
    let half = target.wrapping_add(1);
    if half > u64::from(u32::MAX) { 0 } else { half | ((channel as u64 + 1) << 32) }
}
