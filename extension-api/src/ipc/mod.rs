//! The IPC handles an extension's halves use: [`Main`] in the host, [`Renderer`] in every frame.
//! Both reach only their own extension's namespace; nothing here can name another extension.

mod disposer;
mod half;
pub(crate) mod store;

pub use disposer::Disposer;
pub(crate) use half::HalfHandle;
pub(crate) use store::store_entry_size;
pub use store::{
    STORE_ENTRY_OVERHEAD, STORE_TOTAL_LIMIT, STORE_VALUE_LIMIT, Store, StoreChange, StoreError, StoreKey, StoreKeyName,
};

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::abi::{PEER_MAIN, Peer};
use crate::channel::{EventChannelName, RequestChannelName};
use crate::error::{InvokeError, IpcError};
use crate::runtime::context;

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

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sender::Main => f.write_str("main"),
            Sender::Frame(frame) => frame.fmt(f),
            Sender::Host => f.write_str("host"),
        }
    }
}

/// One half of an extension: its main half, or its renderer half in one frame (as inspect
/// snapshots name them).
///
/// Serialized as `"main"` or `{"frame": N}`; it also decodes from a bare peer number (main is
/// 0), as libraries built before this type existed report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Half {
    /// The extension's main half.
    #[default]
    Main,
    /// The extension's renderer half in this frame.
    Frame(FrameId),
}

impl Half {
    /// The frame this half runs in; `None` for main.
    pub fn frame(self) -> Option<FrameId> {
        match self {
            Half::Main => None,
            Half::Frame(frame) => Some(frame),
        }
    }
}

impl fmt::Display for Half {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Half::Main => f.write_str("main"),
            Half::Frame(frame) => frame.fmt(f),
        }
    }
}

impl Serialize for Half {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Half::Main => serializer.serialize_unit_variant("Half", 0, "main"),
            Half::Frame(frame) => serializer.serialize_newtype_variant("Half", 1, "frame", &frame.0),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Half {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Named {
            Main,
            Frame(u64),
        }
        #[derive(serde::Deserialize)]
        #[serde(untagged, expecting = "\"main\", {\"frame\": N} or a peer number")]
        enum Form {
            Peer(Peer),
            Named(Named),
        }
        Ok(match Form::deserialize(deserializer)? {
            Form::Peer(peer) => crate::message::half_of(peer),
            Form::Named(Named::Main) => Half::Main,
            Form::Named(Named::Frame(frame)) => Half::Frame(FrameId(frame)),
        })
    }
}

/// A broadcast as a listener receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<T> {
    /// The half that broadcast it.
    pub sender: Sender,
    /// The broadcast value, decoded as the listener's type.
    pub value: T,
}

/// What a handler learns about a request besides its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestMeta {
    /// The half that sent the request.
    pub sender: Sender,
}

/// The main half's IPC: listen and broadcast, and handle requests from renderers.
///
/// Cheap to clone. Reachable from anywhere in the main half's code with [`Main::get`].
#[derive(Clone)]
pub struct Main {
    half: HalfHandle,
}

impl Main {
    pub(crate) fn new(half: HalfHandle) -> Main {
        Main { half }
    }

    /// The main half of this extension, from anywhere in its code (Lens's `getInstance()`).
    /// Fails when the extension is not active in this process.
    pub fn get() -> Result<Main, IpcError> {
        let not_active = IpcError::NoContext("Main::get(): the extension's main half is not active in this process");
        let shared = context::instance().ok_or(not_active.clone())?;
        let generation = shared
            .upgrade()
            .and_then(|shared| shared.state().halves.get(&PEER_MAIN).map(|half| half.generation()))
            .ok_or(not_active)?;
        Ok(Main::new(HalfHandle::new(shared, PEER_MAIN, generation)))
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

    /// [`Main::listen`] for one event: the first broadcast on `channel` whose value decodes as
    /// `T` calls `listener`, and the registration is removed before it runs (so it runs once
    /// even if it broadcasts on `channel` itself). Lens's `once`. The returned disposer
    /// withdraws it before it fires.
    pub fn listen_once<T, C, F>(&self, channel: C, listener: F) -> Result<Disposer, IpcError>
    where
        T: DeserializeOwned + 'static,
        C: EventChannelName<T>,
        F: FnOnce(Event<T>) + Send + 'static,
    {
        self.half.listen_once(channel, listener)
    }

    /// [`Main::listen`] whose listener also gets its own [`Disposer`], to stop itself:
    /// `disposer.dispose()` inside the listener removes this registration (the returned
    /// disposer and the one the listener gets remove the same one).
    ///
    /// ```no_run
    /// # fn example(ipc: extension_api::Main) -> Result<(), extension_api::IpcError> {
    /// // Counts to three, then stops listening.
    /// let seen = std::sync::atomic::AtomicU32::new(0);
    /// ipc.listen_with_disposer("tick", move |_: extension_api::Event<()>, disposer| {
    ///     if seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == 3 {
    ///         disposer.dispose();
    ///     }
    /// })?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn listen_with_disposer<T, C, F>(&self, channel: C, listener: F) -> Result<Disposer, IpcError>
    where
        T: DeserializeOwned + 'static,
        C: EventChannelName<T>,
        F: Fn(Event<T>, &Disposer) + Send + Sync + 'static,
    {
        self.half.listen_disposing(channel, listener)
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
    ///
    /// [`InvokeErrorKind::Handler`]: crate::InvokeErrorKind::Handler
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

    /// The extension's store, from main's replica (main sequences every write).
    pub fn store(&self) -> Store {
        Store::new(self.half.clone())
    }

    /// The extension's persisted tier, from main's replica: like [`Main::store`], but kept by
    /// the host in a database, and a write resolves once it is durable.
    pub fn storage(&self) -> Store {
        Store::persisted(self.half.clone())
    }

    /// The frames where this extension's renderer half is open, in order.
    pub fn frames(&self) -> Vec<FrameId> {
        let Ok(shared) = self.half.shared("frames") else {
            return Vec::new();
        };
        // The host keeps this list: frames may run in other processes.
        let mut frames: Vec<FrameId> = shared.state().frames.iter().map(|peer| FrameId(*peer)).collect();
        frames.sort();
        frames
    }

    /// Asks the renderer half in `frame` (its handler on `channel`) and waits at most
    /// `timeout`. A frame that is closed or closing answers [`InvokeErrorKind::FrameClosed`].
    ///
    /// [`InvokeErrorKind::FrameClosed`]: crate::InvokeErrorKind::FrameClosed
    pub fn invoke_frame<Req, Resp, C>(
        &self,
        frame: FrameId,
        channel: C,
        value: &Req,
        timeout: Duration,
    ) -> impl Future<Output = Result<Resp, InvokeError>> + Send + 'static + use<Req, Resp, C>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned + Send + 'static,
        C: RequestChannelName<Req, Resp>,
    {
        self.half.invoke(frame.0, channel, value, timeout)
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
    pub(crate) fn new(half: HalfHandle) -> Renderer {
        Renderer { half }
    }

    /// The renderer half whose code is running: inside `activate`, listeners, handlers and
    /// tasks started with [`Renderer::spawn`], this is per task (several frames can run in one
    /// process).
    ///
    /// Outside any half's code (a plain `tokio::spawn` task, a `std::thread`), it finds the
    /// renderer half only where no other can be meant, as [`Main::get`] finds main: the
    /// instance runs exactly one renderer half and never ran another. That always holds in a
    /// renderer process (one frame each), and in process while the only frame the extension
    /// ever had since activation is open. With several in-process frames, or after a reload
    /// (whose old half's plain tasks may still run), it fails saying so: capture the handle,
    /// or spawn with [`Renderer::spawn`].
    pub fn current() -> Result<Renderer, IpcError> {
        match context::current() {
            Some(half) if half.peer() != PEER_MAIN => Ok(Renderer::new(half)),
            Some(_) => Err(IpcError::NoContext("Renderer::current(): called from the main half's code")),
            None => context::only_renderer().map(Renderer::new).ok_or(IpcError::NoContext(
                "Renderer::current(): not called from a renderer half's code, and this instance runs (or ran) \
                 more than one renderer half, so which frame is meant is unknown (capture the handle, or spawn \
                 with Renderer::spawn)",
            )),
        }
    }

    /// The frame this renderer half runs in.
    pub fn frame(&self) -> FrameId {
        FrameId(self.half.peer())
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

    /// See [`Main::listen_once`].
    pub fn listen_once<T, C, F>(&self, channel: C, listener: F) -> Result<Disposer, IpcError>
    where
        T: DeserializeOwned + 'static,
        C: EventChannelName<T>,
        F: FnOnce(Event<T>) + Send + 'static,
    {
        self.half.listen_once(channel, listener)
    }

    /// See [`Main::listen_with_disposer`].
    pub fn listen_with_disposer<T, C, F>(&self, channel: C, listener: F) -> Result<Disposer, IpcError>
    where
        T: DeserializeOwned + 'static,
        C: EventChannelName<T>,
        F: Fn(Event<T>, &Disposer) + Send + Sync + 'static,
    {
        self.half.listen_disposing(channel, listener)
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
    ) -> impl Future<Output = Result<Resp, InvokeError>> + Send + 'static + use<Req, Resp, C>
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
    ) -> impl Future<Output = Result<Resp, InvokeError>> + Send + 'static + use<Req, Resp, C>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned + Send + 'static,
        C: RequestChannelName<Req, Resp>,
    {
        self.half.invoke(PEER_MAIN, channel, value, timeout)
    }

    /// Answers main's [`Main::invoke_frame`] on `channel` in this frame. See [`Main::handle`].
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

    /// The extension's store, from this frame's replica.
    pub fn store(&self) -> Store {
        Store::new(self.half.clone())
    }

    /// The extension's persisted tier, from this frame's replica (see [`Main::storage`]).
    pub fn storage(&self) -> Store {
        Store::persisted(self.half.clone())
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
