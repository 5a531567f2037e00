//! One half of one instance, as every IPC handle holds it: the shared implementation of
//! [`Main`](super::Main) and [`Renderer`](super::Renderer).

use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::disposer::{Disposer, Registration};
use super::{Event, FrameId, RequestMeta};
use crate::abi::{self, PEER_ALL, PEER_MAIN, Peer};
use crate::channel::{EventChannelName, RequestChannelName};
use crate::error::{InvokeError, InvokeErrorKind, IpcError};
use crate::message::Message;
use crate::runtime::context;
use crate::runtime::payload::{Kept, Payload};
use crate::runtime::requests::{Answer, Outgoing, Route};
use crate::runtime::sweep::timeout_ticks;
use crate::runtime::{HandlerFn, ListenerFn, RawEvent, Registered, Shared};
use crate::wire::{ErrorPayload, OwnedMessage};

/// One half (one generation of it) of one instance: what [`Main`](super::Main),
/// [`Renderer`](super::Renderer) and [`Store`](super::Store) hold, and what the runtime names
/// as the half whose code is running. A frame reloaded under the same number gets a new
/// generation, so a handle kept from before the reload does not attach to the new half; the
/// instance is held weakly, so a handle kept past deactivation finds nothing.
#[derive(Clone)]
pub(crate) struct HalfHandle {
    shared: Weak<Shared>,
    peer: Peer,
    generation: u64,
}

impl HalfHandle {
    #[inline]
    pub(crate) fn new(shared: Weak<Shared>, peer: Peer, generation: u64) -> HalfHandle {
        HalfHandle { shared, peer, generation }
    }

    pub(crate) fn peer(&self) -> Peer {
        self.peer
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The instance, while it runs.
    pub(crate) fn upgrade(&self) -> Option<Arc<Shared>> {
        self.shared.upgrade()
    }

    /// The instance, held weakly (for what outlives this call).
    pub(crate) fn weak(&self) -> Weak<Shared> {
        self.shared.clone()
    }

    pub(crate) fn disposer(&self, registration: Registration) -> Disposer {
        Disposer::new(self.clone(), registration)
    }

    pub(crate) fn shared(&self, operation: &'static str) -> Result<Arc<Shared>, IpcError> {
        self.shared.upgrade().ok_or(IpcError::Deactivated { operation })
    }

    /// The frame of this renderer handle when its half is gone but its instance still runs:
    /// the frame closed (or reloaded) while the extension stays active. `None` for main's
    /// handle, and once the instance itself is gone (deactivated).
    pub(crate) fn closed_frame(&self) -> Option<FrameId> {
        (self.peer != PEER_MAIN && self.shared.strong_count() > 0).then_some(FrameId(self.peer))
    }

    /// Why this handle's half can no longer do `operation`.
    pub(crate) fn gone(&self, operation: &'static str) -> IpcError {
        match self.closed_frame() {
            Some(frame) => IpcError::FrameClosed { frame, operation },
            None => IpcError::Deactivated { operation },
        }
    }

    pub(crate) fn listen<T, C, F>(&self, channel: C, listener: F) -> Result<Disposer, IpcError>
    where
        T: DeserializeOwned + 'static,
        C: EventChannelName<T>,
        F: Fn(Event<T>) + Send + Sync + 'static,
    {
        self.listen_disposing(channel, move |event, _: &Disposer| listener(event))
    }

    /// [`HalfHandle::listen`] whose listener gets its own disposer with every event.
    pub(crate) fn listen_disposing<T, C, F>(&self, channel: C, listener: F) -> Result<Disposer, IpcError>
    where
        T: DeserializeOwned + 'static,
        C: EventChannelName<T>,
        F: Fn(Event<T>, &Disposer) + Send + Sync + 'static,
    {
        let shared = self.shared("listen")?;
        let channel = channel.channel_name().to_owned();
        let id = shared.next_id();
        // The listener's own copy: disposing either removes the one registration. It holds the
        // instance weakly, so the listener does not keep its own instance alive.
        let own = self.disposer(Registration::Listener { channel: channel.clone(), id });
        let weak = self.shared.clone();
        let wrapped: ListenerFn = Arc::new(move |event: &RawEvent<'_>| match event.value.decode::<T>() {
            Ok(value) => listener(Event { sender: event.sender, value }, &own),
            Err(error) => {
                if let Some(shared) = weak.upgrade() {
                    shared.decode_failures.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(
                    channel = %event.channel,
                    "listener not called: the value does not decode as {}: {error}",
                    std::any::type_name::<T>()
                );
            }
        });
        let mut state = shared.state();
        let counters = state.channels.index(crate::wire::ChannelKind::Broadcast, &channel);
        let half = state.half_mut(self.peer, self.generation).ok_or_else(|| self.gone("listen"))?;
        half.listen(channel.clone(), Registered { id, callback: wrapped, counters });
        Ok(self.disposer(Registration::Listener { channel, id }))
    }

    /// [`HalfHandle::listen`] for the first event only: the registration is removed before the
    /// listener runs.
    pub(crate) fn listen_once<T, C, F>(&self, channel: C, listener: F) -> Result<Disposer, IpcError>
    where
        T: DeserializeOwned + 'static,
        C: EventChannelName<T>,
        F: FnOnce(Event<T>) + Send + 'static,
    {
        let listener = std::sync::Mutex::new(Some(listener));
        self.listen_disposing(channel, move |event, own: &Disposer| {
            own.dispose();
            let listener = listener.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            if let Some(listener) = listener {
                listener(event);
            }
        })
    }

    pub(crate) fn broadcast<T, C>(&self, channel: C, value: &T) -> Result<(), IpcError>
    where
        T: Serialize + ?Sized,
        C: EventChannelName<T>,
    {
        let channel = channel.channel_name();
        let payload = crate::runtime::encode(value)
            .map_err(|error| IpcError::Serialize { channel: channel.to_owned(), reason: error.to_string() })?;
        let shared = self.shared("broadcast")?;
        // A handle kept from a closed (or reloaded) frame must not speak for the new half.
        if shared.state().half_mut(self.peer, self.generation).is_none() {
            return Err(self.gone("broadcast"));
        }
        let message = Message {
            kind: abi::kind::BROADCAST,
            status: 0,
            origin: self.peer,
            target: PEER_ALL,
            request_id: 0,
            channel,
            payload: &payload,
        };
        match shared.send(message) {
            abi::status::OK => Ok(()),
            abi::status::TOO_LARGE => Err(IpcError::TooLarge {
                channel: channel.to_owned(),
                size: channel.len() + payload.len(),
                limit: abi::MAX_MESSAGE,
            }),
            // The host no longer routes for this frame: it is closing.
            abi::status::NO_SUCH_PEER => Err(self.gone("broadcast")),
            abi::status::DEACTIVATED => Err(IpcError::Deactivated { operation: "broadcast" }),
            status => {
                Err(IpcError::Refused { channel: channel.to_owned(), reason: crate::message::status_text(status) })
            }
        }
    }

    pub(crate) fn handle<Req, Resp, E, C, F, Fut>(&self, channel: C, handler: F) -> Result<Disposer, IpcError>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        E: Serialize + fmt::Display + 'static,
        C: RequestChannelName<Req, Resp>,
        F: Fn(Req, RequestMeta) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
    {
        let shared = self.shared("handle")?;
        let channel = channel.channel_name().to_owned();
        // Only error messages name the channel: shared, not copied per request.
        let name: Arc<str> = Arc::from(channel.as_str());
        let kept = shared.kept.clone();
        let wrapped: HandlerFn = Arc::new(move |payload: Payload, sender| {
            // Freed (or its lease released) before the handler runs, unless `Binary` values
            // in the request share it: see `HandlerFn`.
            let request = payload.decode::<Req>(|| kept.clone());
            let future = request.map(|request| handler(request, RequestMeta { sender }));
            let name = name.clone();
            Box::pin(async move {
                let future = future.map_err(|error| {
                    let message = format!(
                        "the request on `{}` does not decode as {}: {error}",
                        crate::error::shown(&name),
                        std::any::type_name::<Req>()
                    );
                    (InvokeErrorKind::Deserialize, ErrorPayload { message, data: None })
                })?;
                match future.await {
                    Ok(response) => crate::runtime::encode(&response).map_err(|error| {
                        let message =
                            format!("the reply on `{}` cannot be serialized: {error}", crate::error::shown(&name));
                        (InvokeErrorKind::Serialize, ErrorPayload { message, data: None })
                    }),
                    Err(error) => Err((
                        InvokeErrorKind::Handler,
                        ErrorPayload { message: error.to_string(), data: rmp_serde::to_vec_named(&error).ok() },
                    )),
                }
            })
        });
        let id = shared.next_id();
        let mut state = shared.state();
        let counters = state.channels.index(crate::wire::ChannelKind::Request, &channel);
        let half = state.half_mut(self.peer, self.generation).ok_or_else(|| self.gone("handle"))?;
        half.handle(channel.clone(), Registered { id, callback: wrapped, counters })
            .map_err(|channel| IpcError::AlreadyHandled { channel })?;
        Ok(self.disposer(Registration::Handler { channel, id }))
    }

    /// Sends the request now (so requests leave in call order) and returns the wait for its
    /// reply. The future owns everything it needs: the value is not borrowed past this call.
    pub(crate) fn invoke<Req, Resp, C>(
        &self,
        target: Peer,
        channel: C,
        value: &Req,
        timeout: Duration,
    ) -> impl Future<Output = Result<Resp, InvokeError>> + Send + 'static + use<Req, Resp, C>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned + Send + 'static,
        C: RequestChannelName<Req, Resp>,
    {
        let channel = channel.channel_name().to_owned();
        let started = crate::runtime::encode(value)
            .map_err(|error| InvokeError::new(InvokeErrorKind::Serialize, &channel, error.to_string()))
            .and_then(|payload| self.start_invoke(target, channel, payload, timeout));
        async move {
            let (reply, channel, shared) = started?.wait(timeout).await?;
            // A large reply is counted in its instance's `Kept` while `Binary` values keep it.
            let kept = || shared.upgrade().map_or_else(Kept::default, |shared| shared.kept.clone());
            reply.decode(kept).map_err(|error| {
                let message = format!("the reply does not decode as {}: {error}", std::any::type_name::<Resp>());
                InvokeError::new(InvokeErrorKind::Deserialize, channel, message)
            })
        }
    }

    fn start_invoke(
        &self,
        target: Peer,
        channel: String,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<PendingInvoke, InvokeError> {
        if !abi::fits(channel.len(), payload.len()) {
            let message = crate::error::too_large("request", &channel, channel.len() + payload.len());
            return Err(InvokeError::new(InvokeErrorKind::TooLarge, channel, message));
        }
        let deactivated =
            || InvokeError::new(InvokeErrorKind::Deactivated, channel.as_str(), "the extension is not active");
        let gone = || match self.closed_frame() {
            Some(frame) => InvokeError::new(
                InvokeErrorKind::FrameClosed,
                channel.as_str(),
                format!("{frame} is closed: this handle belongs to the renderer half that ran there"),
            ),
            None => deactivated(),
        };
        let shared = self.shared.upgrade().ok_or_else(deactivated)?;
        let request_id = shared.next_id();
        let (route, receiver) = {
            let mut state = shared.state();
            if !state.is_current(self.peer, self.generation) {
                return Err(gone());
            }
            let route = state.route(self.peer, target);
            let request = Outgoing { id: request_id, invoker: self.peer, target, route, ticks: timeout_ticks(timeout) };
            (route, shared.start_request(&mut state, request))
        };
        // Within the instance, the request goes straight into its mailbox (the host is not
        // involved); otherwise the host routes it.
        let status = match route {
            Route::Within => shared.enqueue(crate::runtime::mailbox::Delivery::within(OwnedMessage {
                kind: abi::kind::INVOKE,
                status: 0,
                origin: self.peer,
                target,
                request_id,
                channel: channel.clone(),
                payload,
            })),
            Route::Host => shared.send(Message {
                kind: abi::kind::INVOKE,
                status: 0,
                origin: self.peer,
                target,
                request_id,
                channel: &channel,
                payload: &payload,
            }),
        };
        let mut guard = PendingGuard {
            shared: self.shared.clone(),
            peer: self.peer,
            target,
            request_id,
            channel,
            route,
            armed: true,
        };
        if status != abi::status::OK {
            guard.forget();
            let (kind, why) = crate::message::refusal(status);
            return Err(InvokeError::new(kind, guard.channel.as_str(), why));
        }
        Ok(PendingInvoke { guard, receiver })
    }

    pub(crate) fn spawn<F>(&self, future: F) -> Result<tokio::task::JoinHandle<F::Output>, IpcError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let shared = self.shared("spawn")?;
        let id = shared.next_id();
        let weak = self.shared.clone();
        let (peer, generation) = (self.peer, self.generation);
        let scoped = context::scope(self.clone(), future);
        let mut state = shared.state();
        let half = state.half_mut(peer, generation).ok_or_else(|| self.gone("spawn"))?;
        // Spawned under the lock, so the task cannot finish (and unregister) before it is registered.
        let task = shared.runtime.spawn(async move {
            let output = scoped.await;
            if let Some(shared) = weak.upgrade()
                && let Some(half) = shared.state().half_mut(peer, generation)
            {
                half.finish_task(id);
            }
            output
        });
        half.add_task(id, task.abort_handle());
        Ok(task)
    }
}

/// An invoke that was sent and awaits its reply.
struct PendingInvoke {
    guard: PendingGuard,
    receiver: oneshot::Receiver<Answer>,
}

impl PendingInvoke {
    /// The reply's value, the channel (for the caller's decode errors), and the instance (whose
    /// `Kept` counts a large value).
    async fn wait(self, timeout: Duration) -> Result<(Payload, String, Weak<Shared>), InvokeError> {
        let PendingInvoke { mut guard, mut receiver } = self;
        let outcome = (&mut receiver).await;
        let channel = guard.channel.as_str();
        match outcome {
            // Dropping the armed guard cancels the request on the handling side.
            Ok(Answer::TimedOut) => {
                Err(InvokeError::new(InvokeErrorKind::Timeout, channel, format!("no reply within {timeout:?}")))
            }
            Err(_) => {
                // The invoking half was shut down. A request within the instance still needs
                // its cancel (the host sends the others'); a stray one is harmless.
                guard.armed = guard.route == Route::Within;
                let kind = crate::runtime::requests::closing_kind(guard.peer);
                Err(InvokeError::new(kind, channel, "the invoking half was shut down"))
            }
            Ok(Answer::Reply(reply)) => {
                guard.armed = false;
                let value = reply.into_result(channel)?;
                // Disarmed: the guard's drop needs neither any more.
                Ok((value, std::mem::take(&mut guard.channel), std::mem::take(&mut guard.shared)))
            }
        }
    }
}

/// Removes a pending invoke and cancels it on the handling side unless disarmed.
struct PendingGuard {
    shared: Weak<Shared>,
    peer: Peer,
    target: Peer,
    request_id: u64,
    channel: String,
    /// The way the request went: its cancel goes the same way.
    route: Route,
    armed: bool,
}

impl PendingGuard {
    fn forget(&mut self) {
        self.armed = false;
        if let Some(shared) = self.shared.upgrade() {
            shared.state().requests.forget(self.request_id);
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.forget();
        let Some(shared) = self.shared.upgrade() else { return };
        let cancel = Message::cancel(self.peer, self.target, self.request_id);
        match self.route {
            // Behind the request in the mailbox, so it finds the handler started.
            Route::Within => {
                shared.enqueue(crate::runtime::mailbox::Delivery::within(cancel.to_owned()));
            }
            Route::Host => {
                shared.send(cancel);
            }
        }
    }
}
