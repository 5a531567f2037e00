//! The IPC handles an extension's halves use: [`Main`] in the host, [`Renderer`] in every frame.
//! Both reach only their own extension's namespace; nothing here can name another extension.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::abi::{self, PEER_ALL, PEER_HOST, PEER_MAIN, Peer};
use crate::channel::{EventChannelName, RequestChannelName};
use crate::error::{InvokeError, InvokeErrorKind, IpcError};
use crate::runtime::context::{self, HalfRef};
use crate::runtime::{HandlerFn, ListenerFn, RawEvent, Reply, Shared};
use crate::wire::ErrorPayload;

/// How long an `invoke` waits for its reply unless told otherwise.
pub const DEFAULT_INVOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A frame (renderer context) number, unique for the host's lifetime of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct FrameId(pub u64);

impl fmt::Display for FrameId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "frame {}", self.0)
    }
}

/// Who sent an event or a request. The host stamps it; a sender cannot choose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sender {
    /// The extension's main half.
    Main,
    /// The extension's renderer half in this frame.
    Frame(FrameId),
    /// The host itself: its dev console or a test harness acting as a renderer.
    Host,
}

impl Sender {
    /// The sender a wire peer number stands for.
    pub fn from_peer(peer: Peer) -> Sender {
        match peer {
            PEER_MAIN => Sender::Main,
            PEER_HOST => Sender::Host,
            frame => Sender::Frame(FrameId(frame)),
        }
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sender::Main => f.write_str("main"),
            Sender::Frame(frame) => frame.fmt(f),
            Sender::Host => f.write_str("host"),
        }
    }
}

/// A broadcast as a listener receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<T> {
    pub sender: Sender,
    pub value: T,
}

/// What a handler learns about a request besides its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestMeta {
    pub sender: Sender,
}

/// Removes a listener or handler. Disposing twice is harmless; dropping a `Disposer` without
/// calling [`Disposer::dispose`] keeps the registration (everything is removed on deactivate).
pub struct Disposer {
    shared: Weak<Shared>,
    peer: Peer,
    generation: u64,
    registration: Registration,
    disposed: AtomicBool,
}

enum Registration {
    Listener { channel: String, id: u64 },
    Handler { channel: String, id: u64 },
}

impl Disposer {
    pub fn dispose(&self) {
        if self.disposed.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(shared) = self.shared.upgrade() else { return };
        let removed = {
            let mut state = shared.state();
            let Some(half) = state.half_mut(self.peer, self.generation) else {
                return;
            };
            match &self.registration {
                Registration::Listener { channel, id } => {
                    let list = half.listeners.get_mut(channel);
                    let removed =
                        list.and_then(|list| list.iter().position(|(each, _)| each == id).map(|at| list.remove(at).1));
                    if half.listeners.get(channel).is_some_and(Vec::is_empty) {
                        half.listeners.remove(channel);
                    }
                    removed.map(|listener| Box::new(listener) as Box<dyn Send>)
                }
                Registration::Handler { channel, id } => {
                    if half.handlers.get(channel).is_some_and(|(each, _)| each == id) {
                        half.handlers
                            .remove(channel)
                            .map(|handler| Box::new(handler) as Box<dyn Send>)
                    } else {
                        None
                    }
                }
            }
        };
        // Dropped outside the lock: it may run the author's destructors.
        drop(removed);
    }

    /// Whether `dispose` has been called.
    pub fn is_disposed(&self) -> bool {
        self.disposed.load(Ordering::Acquire)
    }
}

impl fmt::Debug for Disposer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, channel) = match &self.registration {
            Registration::Listener { channel, .. } => ("listener", channel),
            Registration::Handler { channel, .. } => ("handler", channel),
        };
        f.debug_struct("Disposer")
            .field("what", &what)
            .field("channel", channel)
            .field("disposed", &self.is_disposed())
            .finish()
    }
}

/// The part shared by [`Main`] and [`Renderer`]: one half (one generation of it) of one
/// instance.
#[derive(Clone)]
struct HalfHandle {
    shared: Weak<Shared>,
    peer: Peer,
    generation: u64,
}

impl HalfHandle {
    fn from_ref(half: HalfRef) -> HalfHandle {
        HalfHandle {
            shared: half.shared,
            peer: half.peer,
            generation: half.generation,
        }
    }

    fn disposer(&self, registration: Registration) -> Disposer {
        Disposer {
            shared: self.shared.clone(),
            peer: self.peer,
            generation: self.generation,
            registration,
            disposed: AtomicBool::new(false),
        }
    }

    fn shared(&self, operation: &'static str) -> Result<Arc<Shared>, IpcError> {
        self.shared.upgrade().ok_or(IpcError::Deactivated { operation })
    }

    fn listen<T, C, F>(&self, channel: C, listener: F) -> Result<Disposer, IpcError>
    where
        T: DeserializeOwned + 'static,
        C: EventChannelName<T>,
        F: Fn(Event<T>) + Send + Sync + 'static,
    {
        let shared = self.shared("listen")?;
        let channel = channel.channel_name().to_owned();
        let weak = self.shared.clone();
        let wrapped: ListenerFn =
            Arc::new(
                move |event: &RawEvent<'_>| match rmp_serde::from_slice::<T>(event.payload) {
                    Ok(value) => listener(Event {
                        sender: event.sender,
                        value,
                    }),
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
                },
            );
        let id = shared.next_id();
        let mut state = shared.state();
        let half = state
            .half_mut(self.peer, self.generation)
            .ok_or(IpcError::Deactivated { operation: "listen" })?;
        half.listeners.entry(channel.clone()).or_default().push((id, wrapped));
        Ok(self.disposer(Registration::Listener { channel, id }))
    }

    fn broadcast<T, C>(&self, channel: C, value: &T) -> Result<(), IpcError>
    where
        T: Serialize + ?Sized,
        C: EventChannelName<T>,
    {
        let channel = channel.channel_name();
        let payload = rmp_serde::to_vec_named(value).map_err(|error| IpcError::Serialize {
            channel: channel.to_owned(),
            reason: error.to_string(),
        })?;
        let shared = self.shared("broadcast")?;
        // A handle kept from a closed (or reloaded) frame must not speak for the new half.
        if shared.state().half_mut(self.peer, self.generation).is_none() {
            return Err(IpcError::Deactivated { operation: "broadcast" });
        }
        match shared.send(abi::kind::BROADCAST, 0, self.peer, PEER_ALL, 0, channel, &payload) {
            abi::status::OK => Ok(()),
            abi::status::DEACTIVATED | abi::status::NO_SUCH_PEER => {
                Err(IpcError::Deactivated { operation: "broadcast" })
            }
            status => Err(IpcError::Refused {
                channel: channel.to_owned(),
                status,
            }),
        }
    }

    fn handle<Req, Resp, E, C, F, Fut>(&self, channel: C, handler: F) -> Result<Disposer, IpcError>
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
        let name = channel.clone();
        let wrapped: HandlerFn = Arc::new(move |payload: Vec<u8>, sender| {
            let request = rmp_serde::from_slice::<Req>(&payload);
            let future = request.map(|request| handler(request, RequestMeta { sender }));
            let name = name.clone();
            Box::pin(async move {
                let future = future.map_err(|error| {
                    let message = format!(
                        "the request on `{name}` does not decode as {}: {error}",
                        std::any::type_name::<Req>()
                    );
                    (InvokeErrorKind::Deserialize, ErrorPayload { message, data: None })
                })?;
                match future.await {
                    Ok(response) => rmp_serde::to_vec_named(&response).map_err(|error| {
                        let message = format!("the reply on `{name}` cannot be serialized: {error}");
                        (InvokeErrorKind::Serialize, ErrorPayload { message, data: None })
                    }),
                    Err(error) => Err((
                        InvokeErrorKind::Handler,
                        ErrorPayload {
                            message: error.to_string(),
                            data: rmp_serde::to_vec_named(&error).ok(),
                        },
                    )),
                }
            })
        });
        let id = shared.next_id();
        let mut state = shared.state();
        let half = state
            .half_mut(self.peer, self.generation)
            .ok_or(IpcError::Deactivated { operation: "handle" })?;
        if half.handlers.contains_key(&channel) {
            return Err(IpcError::AlreadyHandled { channel });
        }
        half.handlers.insert(channel.clone(), (id, wrapped));
        Ok(self.disposer(Registration::Handler { channel, id }))
    }

    /// Sends the request now (so requests leave in call order) and returns the wait for its
    /// reply. The future owns everything it needs: the value is not borrowed past this call.
    fn invoke<Req, Resp, C>(
        &self,
        target: Peer,
        channel: C,
        value: &Req,
        timeout: Duration,
    ) -> impl Future<Output = Result<Resp, InvokeError>> + Send + 'static
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned + Send + 'static,
        C: RequestChannelName<Req, Resp>,
    {
        let channel = channel.channel_name().to_owned();
        let started = rmp_serde::to_vec_named(value)
            .map_err(|error| InvokeError::new(InvokeErrorKind::Serialize, &channel, error.to_string()))
            .and_then(|payload| self.start_invoke(target, channel, &payload));
        async move {
            let request = started?;
            let channel = request.guard.channel.clone();
            let reply = request.wait(timeout).await?;
            rmp_serde::from_slice(&reply).map_err(|error| {
                let message = format!(
                    "the reply does not decode as {}: {error}",
                    std::any::type_name::<Resp>()
                );
                InvokeError::new(InvokeErrorKind::Deserialize, channel, message)
            })
        }
    }

    fn start_invoke(&self, target: Peer, channel: String, payload: &[u8]) -> Result<PendingInvoke, InvokeError> {
        let deactivated = || {
            InvokeError::new(
                InvokeErrorKind::Deactivated,
                channel.as_str(),
                "the extension is not active",
            )
        };
        let shared = self.shared.upgrade().ok_or_else(deactivated)?;
        let request_id = shared.next_id();
        let (sender, receiver) = oneshot::channel();
        {
            let mut state = shared.state();
            let half = state.half_mut(self.peer, self.generation).ok_or_else(deactivated)?;
            half.pending.insert(request_id, sender);
        }
        let status = shared.send(abi::kind::INVOKE, 0, self.peer, target, request_id, &channel, payload);
        let mut guard = PendingGuard {
            shared: self.shared.clone(),
            peer: self.peer,
            generation: self.generation,
            target,
            request_id,
            channel,
            armed: true,
        };
        if status != abi::status::OK {
            guard.forget();
            let kind = match status {
                abi::status::NO_SUCH_PEER => InvokeErrorKind::FrameClosed,
                _ => InvokeErrorKind::Deactivated,
            };
            return Err(InvokeError::new(
                kind,
                guard.channel.as_str(),
                format!("the host refused the request (status {status})"),
            ));
        }
        Ok(PendingInvoke { guard, receiver })
    }
    fn spawn<F>(&self, future: F) -> Result<tokio::task::JoinHandle<F::Output>, IpcError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let shared = self.shared("spawn")?;
        let id = shared.next_id();
        let weak = self.shared.clone();
        let (peer, generation) = (self.peer, self.generation);
        let scoped = context::scope(
            HalfRef {
                shared: weak.clone(),
                peer,
                generation,
            },
            future,
        );
        let mut state = shared.state();
        let half = state
            .half_mut(peer, generation)
            .ok_or(IpcError::Deactivated { operation: "spawn" })?;
        // Spawned under the lock, so the task cannot finish (and unregister) before it is registered.
        let task = shared.runtime.spawn(async move {
            let output = scoped.await;
            if let Some(shared) = weak.upgrade()
                && let Some(half) = shared.state().half_mut(peer, generation)
            {
                half.tasks.remove(&id);
            }
            output
        });
        half.tasks.insert(id, task.abort_handle());
        Ok(task)
    }
}

/// An invoke that was sent and awaits its reply.
struct PendingInvoke {
    guard: PendingGuard,
    receiver: oneshot::Receiver<Reply>,
}

impl PendingInvoke {
    async fn wait(mut self, timeout: Duration) -> Result<Vec<u8>, InvokeError> {
        let channel = self.guard.channel.as_str();
        let outcome = tokio::time::timeout(timeout, &mut self.receiver).await;
        match outcome {
            // Dropping the armed guard cancels the request on the handling side.
            Err(_) => Err(InvokeError::new(
                InvokeErrorKind::Timeout,
                channel,
                format!("no reply within {timeout:?}"),
            )),
            Ok(Err(_)) => {
                self.guard.armed = false;
                let kind = if self.guard.peer == PEER_MAIN {
                    InvokeErrorKind::Deactivated
                } else {
                    InvokeErrorKind::FrameClosed
                };
                Err(InvokeError::new(kind, channel, "the invoking half was shut down"))
            }
            Ok(Ok(Reply { status, payload })) => {
                self.guard.armed = false;
                if status == abi::status::OK {
                    return Ok(payload);
                }
                let kind = InvokeErrorKind::from_code(status).unwrap_or(InvokeErrorKind::ConnectionLost);
                match rmp_serde::from_slice::<ErrorPayload>(&payload) {
                    Ok(error) => Err(InvokeError::from_wire(kind, channel, error)),
                    Err(error) => Err(InvokeError::new(
                        kind,
                        channel,
                        format!("(undecodable error payload: {error})"),
                    )),
                }
            }
        }
    }
}

/// Removes a pending invoke and cancels it on the handling side unless disarmed.
struct PendingGuard {
    shared: Weak<Shared>,
    peer: Peer,
    generation: u64,
    target: Peer,
    request_id: u64,
    channel: String,
    armed: bool,
}

impl PendingGuard {
    fn forget(&mut self) {
        self.armed = false;
        if let Some(shared) = self.shared.upgrade()
            && let Some(half) = shared.state().half_mut(self.peer, self.generation)
        {
            half.pending.remove(&self.request_id);
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.forget();
        if let Some(shared) = self.shared.upgrade() {
            shared.send(
                abi::kind::CANCEL,
                0,
                self.peer,
                self.target,
                self.request_id,
                &self.channel,
                &[],
            );
        }
    }
}

/// The main half's IPC: listen and broadcast, and handle requests from renderers.
///
/// Cheap to clone. Reachable from anywhere in the main half's code with [`Main::get`].
#[derive(Clone)]
pub struct Main {
    half: HalfHandle,
}

impl Main {
    pub(crate) fn new(half: HalfRef) -> Main {
        Main {
            half: HalfHandle::from_ref(half),
        }
    }

    /// The main half of this extension, from anywhere in its code (Lens's `getInstance()`).
    /// Fails when the extension is not active in this process.
    pub fn get() -> Result<Main, IpcError> {
        let not_active = IpcError::NoContext("Main::get(): the extension's main half is not active in this process");
        let shared = context::instance().ok_or(not_active.clone())?;
        let generation = shared
            .upgrade()
            .and_then(|shared| shared.state().halves.get(&PEER_MAIN).map(|half| half.generation))
            .ok_or(not_active)?;
        Ok(Main::new(HalfRef {
            shared,
            peer: PEER_MAIN,
            generation,
        }))
    }

    /// Calls `listener` for every broadcast on `channel` from main or any frame (including this
    /// half's own broadcasts). A value that does not decode as `T` skips this listener (and is
    /// logged with the channel and the decode error); other listeners still run.
    pub fn listen<T, C, F>(&self, channel: C, listener: F) -> Result<Disposer, IpcError>
    where
        T: DeserializeOwned + 'static,
        C: EventChannelName<T>,
        F: Fn(Event<T>) + Send + Sync + 'static,
    {
        self.half.listen(channel, listener)
    }

    /// Sends `value` to every listener of `channel` in main and in every open frame, once each.
    pub fn broadcast<T, C>(&self, channel: C, value: &T) -> Result<(), IpcError>
    where
        T: Serialize + ?Sized,
        C: EventChannelName<T>,
    {
        self.half.broadcast(channel, value)
    }

    /// Answers renderers' `invoke`s on `channel`. One handler per channel: a second `handle`
    /// is [`IpcError::AlreadyHandled`] until the first is disposed. An `Err(e)` reaches the
    /// caller as [`InvokeErrorKind::Handler`] with `e`'s text and `e` itself as data.
    pub fn handle<Req, Resp, E, C, F, Fut>(&self, channel: C, handler: F) -> Result<Disposer, IpcError>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        E: Serialize + fmt::Display + 'static,
        C: RequestChannelName<Req, Resp>,
        F: Fn(Req, RequestMeta) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
    {
        self.half.handle(channel, handler)
    }

    /// Spawns a task that belongs to the main half: it is aborted on deactivate, and
    /// [`Main::get`] works inside it.
    pub fn spawn<F>(&self, future: F) -> Result<tokio::task::JoinHandle<F::Output>, IpcError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.half.spawn(future)
    }
}

/// A renderer half's IPC, in one frame: listen and broadcast, and invoke main's handlers.
///
/// Cheap to clone. Reachable from anywhere in the renderer half's code with
/// [`Renderer::current`].
#[derive(Clone)]
pub struct Renderer {
    half: HalfHandle,
}

impl Renderer {
    pub(crate) fn new(half: HalfRef) -> Renderer {
        Renderer {
            half: HalfHandle::from_ref(half),
        }
    }

    /// The renderer half whose code is running: inside `activate`, listeners, and tasks
    /// started with [`Renderer::spawn`]. Several frames can run in one process, so this is
    /// per task, not per process.
    pub fn current() -> Result<Renderer, IpcError> {
        match context::current() {
            Some(half) if half.peer != PEER_MAIN => Ok(Renderer::new(half)),
            _ => Err(IpcError::NoContext(
                "Renderer::current(): not running in a renderer half (use the handle given to activate, or spawn with Renderer::spawn)",
            )),
        }
    }

    /// The frame this renderer half runs in.
    pub fn frame(&self) -> FrameId {
        FrameId(self.half.peer)
    }

    /// See [`Main::listen`].
    pub fn listen<T, C, F>(&self, channel: C, listener: F) -> Result<Disposer, IpcError>
    where
        T: DeserializeOwned + 'static,
        C: EventChannelName<T>,
        F: Fn(Event<T>) + Send + Sync + 'static,
    {
        self.half.listen(channel, listener)
    }

    /// See [`Main::broadcast`].
    pub fn broadcast<T, C>(&self, channel: C, value: &T) -> Result<(), IpcError>
    where
        T: Serialize + ?Sized,
        C: EventChannelName<T>,
    {
        self.half.broadcast(channel, value)
    }

    /// Asks main's handler on `channel`, waiting at most [`DEFAULT_INVOKE_TIMEOUT`].
    ///
    /// The request is sent by this call, not when the future is first polled, so requests and
    /// broadcasts leave in the order they are made. Dropping the future cancels the request
    /// (main's handler task is aborted).
    pub fn invoke<Req, Resp, C>(
        &self,
        channel: C,
        value: &Req,
    ) -> impl Future<Output = Result<Resp, InvokeError>> + Send + 'static
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned + Send + 'static,
        C: RequestChannelName<Req, Resp>,
    {
        self.half.invoke(PEER_MAIN, channel, value, DEFAULT_INVOKE_TIMEOUT)
    }

    /// [`Renderer::invoke`] with its own timeout.
    pub fn invoke_with_timeout<Req, Resp, C>(
        &self,
        channel: C,
        value: &Req,
        timeout: Duration,
    ) -> impl Future<Output = Result<Resp, InvokeError>> + Send + 'static
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned + Send + 'static,
        C: RequestChannelName<Req, Resp>,
    {
        self.half.invoke(PEER_MAIN, channel, value, timeout)
    }

    /// Spawns a task that belongs to this frame's renderer half: aborted when the frame
    /// closes or the extension is deactivated; [`Renderer::current`] works inside it.
    pub fn spawn<F>(&self, future: F) -> Result<tokio::task::JoinHandle<F::Output>, IpcError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.half.spawn(future)
    }
}
