//! The host: which extensions are loaded, their lifecycle, and the frames they render in.

mod config;
mod frames;
mod lifecycle;
mod reload;
mod snapshot;
mod watchdog;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use extension_api::abi::PEER_MAIN;
use extension_api::wire::{Completion, Control, InstanceConfig, InstanceSnapshot};
use extension_api::{FrameId, InvokeError, InvokeErrorKind};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

pub use crate::state::ExtensionState;
pub use config::{CrashBudget, HostConfig, StorageConfig, default_data_dir};
pub use snapshot::{DeactivateReport, ExtensionSnapshot, FrameKind, FrameSnapshot, HostSnapshot};
pub use watchdog::ProcessUsage;

use crate::child_process::ChildProcess;
use crate::core::{Core, lock};
use crate::endpoint::ControlError;
use crate::error::{HostError, LoadError, Operation, Refusal};
use crate::events::{HostEvent, LogRecord, ObservedBroadcast};
use crate::library::{self, Library, LibraryInfo};
use crate::link::Link;
use crate::remote::Role;
use crate::storage::{Limits, Storage};
use crate::web::{WebConfig, WebFrame, WebServer};
use crate::web_assets::WebAssets;
use config::CrashLog;

struct Entry {
    library: Library,
    state: ExtensionState,
    last_problem: Option<String>,
    link: Option<Arc<Link>>,
    frame_errors: BTreeMap<u64, String>,
    isolated: bool,
    /// The isolated extension's process, while it runs.
    process: Option<Arc<ChildProcess>>,
    crashes: CrashLog,
    /// Its web renderer, if it has one (a web frame runs no half of it otherwise).
    web_assets: Option<Arc<WebAssets>>,
}

struct Frame {
    kind: FrameKind,
    /// The renderer process of a child-process frame, while it runs.
    process: Option<Arc<ChildProcess>>,
    crashes: CrashLog,
    restarts: u32,
    problem: Option<String>,
    /// A web frame's shell and server.
    web: Option<Arc<WebFrame>>,
}

struct Inner {
    config: HostConfig,
    core: Arc<Core>,
    extensions: Mutex<BTreeMap<String, Entry>>,
    frames: Mutex<BTreeMap<u64, Frame>>,
    next_frame: AtomicU64,
    /// Lifecycle operations run one at a time.
    operations: tokio::sync::Mutex<()>,
    /// Every extension's persisted tier.
    storage: Storage,
    watchdog: Mutex<watchdog::Watchdog>,
}

impl Drop for Inner {
    /// A host dropped without `shutdown` still ends its child processes.
    fn drop(&mut self) {
        // A watchdog waiting for work wakes, finds the host gone and ends.
        self.core.attention.wake();
        let frames = self.frames.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        for process in frames.values().filter_map(|frame| frame.process.as_ref()) {
            process.kill_now();
        }
        let extensions = self.extensions.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        for process in extensions.values().filter_map(|entry| entry.process.as_ref()) {
            process.kill_now();
        }
    }
}

/// An extension host. Cheap to clone; all clones are the same host.
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

impl Default for Host {
    fn default() -> Self {
        Host::new(HostConfig::default())
    }
}

impl Host {
    /// A host with `config`. An invalid configuration (see [`HostConfig::validate`]) is
    /// logged here, and refused by every [`Host::activate`].
    pub fn new(config: HostConfig) -> Host {
        if let Err(error) = config.validate() {
            tracing::warn!("{error}; every activation will be refused");
        }
        let limits = Limits { value: config.storage.value_limit, total: config.storage.total_limit };
        let storage = Storage::new(config.storage.data_dir.clone(), limits);
        Host {
            inner: Arc::new(Inner {
                storage,
                config,
                core: Arc::new(Core::new()),
                extensions: Mutex::new(BTreeMap::new()),
                frames: Mutex::new(BTreeMap::new()),
                next_frame: AtomicU64::new(1),
                operations: tokio::sync::Mutex::new(()),
                watchdog: Mutex::new(watchdog::Watchdog::default()),
            }),
        }
    }

    fn weak(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    fn from_weak(inner: &Weak<Inner>) -> Option<Host> {
        inner.upgrade().map(|inner| Host { inner })
    }

    /// Loads and validates a library. Nothing of the extension runs until [`Host::activate`].
    pub fn load(&self, path: impl AsRef<Path>) -> Result<LibraryInfo, LoadError> {
        let path = path.as_ref();
        let library = library::load(path)?;
        let info = library.info.clone();
        let mut extensions = lock(&self.inner.extensions);
        if let Some(existing) = extensions.get(&info.name) {
            library.discard_copy();
            return Err(LoadError::DuplicateName {
                path: path.to_owned(),
                name: info.name,
                existing: existing.library.info.path.clone(),
            });
        }
        let web_assets = library.web_assets().cloned();
        extensions.insert(
            info.name.clone(),
            Entry {
                library,
                state: ExtensionState::Loaded,
                last_problem: None,
                link: None,
                frame_errors: BTreeMap::new(),
                isolated: false,
                process: None,
                crashes: CrashLog::default(),
                web_assets,
            },
        );
        tracing::info!(extension = %info.name, version = %info.version, path = %path.display(), "loaded");
        Ok(info)
    }

    /// Loads every shared library (`.so`, `.dylib`, `.dll`) in `dir`, in name order.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> std::io::Result<Vec<(PathBuf, Result<LibraryInfo, LoadError>)>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == std::env::consts::DLL_EXTENSION))
            .collect();
        paths.sort();
        Ok(paths.into_iter().map(|path| (path.clone(), self.load(&path))).collect())
    }

    /// Runs the extension's main half (and its halves for in-process frames) in a child
    /// process of its own from its next activation, so that a crash, abort or exit in it cannot
    /// take the host down.
    pub fn set_isolated(&self, name: &str, isolated: bool) -> Result<(), HostError> {
        let mut extensions = lock(&self.inner.extensions);
        let entry = extensions.get_mut(name).ok_or_else(|| HostError::UnknownExtension(name.to_owned()))?;
        match entry.state {
            ExtensionState::Activating | ExtensionState::Active | ExtensionState::Deactivating => {
                Err(HostError::WrongState {
                    name: name.to_owned(),
                    state: entry.state.clone(),
                    operation: Operation::ChangeIsolation,
                })
            }
            _ => {
                entry.isolated = isolated;
                Ok(())
            }
        }
    }

    /// What the library of extension `name` says about itself, and where it was loaded from.
    pub fn library(&self, name: &str) -> Option<LibraryInfo> {
        lock(&self.inner.extensions).get(name).map(|entry| entry.library.info.clone())
    }

    /// Where extension `name` is in its lifecycle; `None` if no extension of that name is
    /// loaded.
    pub fn state(&self, name: &str) -> Option<ExtensionState> {
        lock(&self.inner.extensions).get(name).map(|entry| entry.state.clone())
    }

    /// Names of the loaded extensions.
    pub fn extensions(&self) -> Vec<String> {
        lock(&self.inner.extensions).keys().cloned().collect()
    }

    /// Open frames, in order.
    pub fn frames(&self) -> Vec<FrameId> {
        lock(&self.inner.frames).keys().map(|id| FrameId(*id)).collect()
    }

    /// Extension log records, as they arrive.
    pub fn logs(&self) -> broadcast::Receiver<LogRecord> {
        self.inner.core.logs.subscribe()
    }

    /// Crashes and restarts of child processes, and reloads, as they happen.
    pub fn events(&self) -> broadcast::Receiver<HostEvent> {
        self.inner.core.events.subscribe()
    }

    fn publish(&self, event: HostEvent) {
        let _ = self.inner.core.events.send(event);
    }

    /// Every broadcast, of every extension, as the host routes it.
    pub fn broadcasts(&self) -> broadcast::Receiver<ObservedBroadcast> {
        self.inner.core.broadcasts.subscribe()
    }

    fn set_state(&self, name: &str, state: ExtensionState) {
        if let Some(entry) = lock(&self.inner.extensions).get_mut(name) {
            entry.state = state;
        }
    }

    fn active_link(&self, name: &str) -> Result<Arc<Link>, HostError> {
        let extensions = lock(&self.inner.extensions);
        let entry = extensions.get(name).ok_or_else(|| HostError::UnknownExtension(name.to_owned()))?;
        match (&entry.state, &entry.link) {
            (ExtensionState::Active, Some(link)) => Ok(link.clone()),
            (state, _) => {
                Err(HostError::WrongState { name: name.to_owned(), state: state.clone(), operation: Operation::Call })
            }
        }
    }

    fn active_links(&self) -> Vec<(String, Arc<Link>)> {
        lock(&self.inner.extensions)
            .iter()
            .filter(|(_, entry)| entry.state == ExtensionState::Active)
            .filter_map(|(name, entry)| entry.link.clone().map(|link| (name.clone(), link)))
            .collect()
    }

    /// Runs a lifecycle operation as its own task, one at a time: dropping the caller's future
    /// must not leave an extension half-activated or half-deactivated.
    async fn operation<T, F>(&self, operation: impl FnOnce(Host) -> F + Send + 'static) -> T
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let host = self.clone();
        let task = tokio::spawn(async move {
            let _operation = host.inner.operations.lock().await;
            operation(host.clone()).await
        });
        match task.await {
            Ok(value) => value,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Cancelled only when the runtime itself shuts down, which drops us too.
                Err(_) => std::future::pending().await,
            },
        }
    }

    /// Activates the main half, then the renderer half in every open frame. A failure leaves
    /// the extension [`ExtensionState::Failed`] with the reason, and the host running.
    ///
    /// Like every lifecycle call, it runs to completion even if the returned future is dropped.
    pub async fn activate(&self, name: &str) -> Result<(), HostError> {
        let name = name.to_owned();
        self.operation(|host| async move { host.activate_locked(&name).await }).await
    }

    /// Deactivates: stops routing to the extension, runs every half's `deactivate` (bounded by
    /// the configured timeout), then drops everything it registered, spawned or had pending.
    /// When this returns, no code of the extension runs any more.
    pub async fn deactivate(&self, name: &str) -> Result<DeactivateReport, HostError> {
        let name = name.to_owned();
        self.operation(|host| async move { host.deactivate_locked(&name).await }).await
    }

    /// Deactivates (if active) and forgets the extension. Its library stays mapped, but the
    /// name is free: loading a rebuilt library runs the new code.
    pub async fn uninstall(&self, name: &str) -> Result<(), HostError> {
        let name = name.to_owned();
        self.operation(|host| async move { host.uninstall_locked(&name).await }).await
    }

    /// Uninstalls `name` (see [`Host::uninstall`]) and deletes its persisted data. Without a
    /// purge, uninstall keeps the data for the extension's next load.
    pub async fn uninstall_purge(&self, name: &str) -> Result<(), HostError> {
        let name = name.to_owned();
        self.operation(|host| async move {
            host.uninstall_locked(&name).await?;
            host.inner.storage.purge(&name).map_err(|reason| HostError::Purge { name: name.clone(), reason })
        })
        .await
    }

    /// Opens an in-process frame; every active extension's renderer half starts in it.
    pub async fn open_frame(&self) -> FrameId {
        self.operation(|host| async move { host.open_frame_locked(FrameKind::InProcess, None).await })
            .await
            .unwrap_or(FrameId(0))
    }

    /// Opens a frame in a renderer process of its own; every active extension's renderer half
    /// starts there. If that process crashes, the frame restarts (within the crash budget).
    pub async fn open_child_frame(&self) -> Result<FrameId, HostError> {
        self.operation(|host| async move { host.open_frame_locked(FrameKind::ChildProcess, None).await }).await
    }

    /// Serves web frames: an HTTP and WebSocket server on `config.addr` (loopback by default).
    /// Every page that opens [`WebServer::url`] (the shell) is a frame of kind
    /// [`FrameKind::Web`] while it stays open: each active extension with a web renderer runs
    /// its renderer half there, in a sandboxed iframe on an origin of its own, connected with
    /// a token bound to (frame, extension). See `docs/embedding.md`, "Serving web frames".
    ///
    /// Must be called within a Tokio runtime. Fails if the address cannot be bound, or is not
    /// loopback without [`WebConfig::allow_remote`].
    pub fn serve_web(&self, config: WebConfig) -> Result<WebServer, HostError> {
        // Checked before the hooks start their task, which needs the runtime.
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|error| crate::web::WebStartError::NoRuntime(error.to_string()))?;
        let hooks = Arc::new(WebHooksOf::new(self.weak(), &runtime));
        Ok(crate::web::serve(config, hooks)?)
    }

    /// Gives a loaded extension a web renderer, as if its library embedded these files (path
    /// → bytes; `index.js`, the entry module, must be among them). The bytes are kept for the
    /// life of the process, as a library's are. For the suite's protocol tests, which play the
    /// page themselves: not part of the host's API.
    #[doc(hidden)]
    pub fn set_web_assets_for_testing(&self, name: &str, files: BTreeMap<String, Vec<u8>>) -> Result<(), HostError> {
        let files = files.into_iter().map(|(path, bytes)| (path, &*Box::leak(bytes.into_boxed_slice()))).collect();
        let mut extensions = lock(&self.inner.extensions);
        let entry = extensions.get_mut(name).ok_or_else(|| HostError::UnknownExtension(name.to_owned()))?;
        entry.web_assets = Some(Arc::new(WebAssets::new(files)));
        Ok(())
    }

    /// Closes a frame: its renderer halves are deactivated and dropped; requests involving it
    /// fail with [`InvokeErrorKind::FrameClosed`]. A web frame's shell is told to remove the
    /// iframes, and its socket closes.
    pub async fn close_frame(&self, frame: FrameId) -> Result<(), HostError> {
        self.operation(move |host| async move { host.close_frame_locked(frame.0).await }).await
    }

    /// Reloads a frame: its renderer halves are closed and started afresh (a web frame's
    /// iframes are removed and added again, with new tokens). Main-side registrations are
    /// untouched.
    pub async fn reload_frame(&self, frame: FrameId) -> Result<(), HostError> {
        self.operation(move |host| async move { host.reload_frame_locked(frame.0).await }).await
    }

    /// Broadcasts `value` on `channel` into the extension's namespace, as the host.
    pub fn broadcast<T: Serialize + ?Sized>(&self, name: &str, channel: &str, value: &T) -> Result<(), HostError> {
        let payload = rmp_serde::to_vec_named(value)
            .map_err(|error| HostError::Serialize { channel: channel.to_owned(), reason: error.to_string() })?;
        self.broadcast_raw(name, channel, &payload)
    }

    /// [`Host::broadcast`] with an already encoded MessagePack value.
    pub fn broadcast_raw(&self, name: &str, channel: &str, payload: &[u8]) -> Result<(), HostError> {
        let link = self.active_link(name)?;
        match link.host_broadcast(channel, payload) {
            extension_api::abi::status::OK => Ok(()),
            extension_api::abi::status::TOO_LARGE => Err(HostError::TooLarge {
                channel: channel.to_owned(),
                size: channel.len() + payload.len(),
                limit: extension_api::abi::MAX_MESSAGE,
            }),
            status => Err(HostError::Refused { name: name.to_owned(), reason: Refusal::of_status(status) }),
        }
    }

    /// Invokes main's handler on `channel`, as the host acting as a renderer. The request is
    /// sent by this call; the future waits for the reply (dropping it cancels the request).
    pub fn invoke<Req, Resp>(
        &self,
        name: &str,
        channel: &str,
        value: &Req,
        timeout: Duration,
    ) -> impl Future<Output = Result<Resp, InvokeError>> + Send + 'static + use<Req, Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned + Send + 'static,
    {
        let sent = encode_request(channel, value).map(|payload| self.invoke_raw(name, channel, &payload, timeout));
        decode_reply(channel, sent)
    }

    /// [`Host::invoke`] with MessagePack bytes in and out.
    pub fn invoke_raw(
        &self,
        name: &str,
        channel: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, InvokeError>> + Send + 'static + use<> {
        let sent = self
            .active_link(name)
            .map_err(|error| InvokeError::new(InvokeErrorKind::Deactivated, channel, error.to_string()))
            .map(|link| link.host_invoke(PEER_MAIN, channel, payload, timeout));
        async move { sent?.await }
    }

    /// Invokes the handler on `channel` of the extension's renderer half in `frame`, as main
    /// would with `Main::invoke_frame` (the handler's `meta.sender` is [`Sender::Host`]).
    /// Fails with [`InvokeErrorKind::FrameClosed`] if the frame is not open, or the renderer
    /// half does not run there, or the frame closes before the reply. The request is sent by
    /// this call; dropping the future cancels it.
    ///
    /// [`Sender::Host`]: crate::Sender::Host
    pub fn invoke_frame<Req, Resp>(
        &self,
        name: &str,
        frame: FrameId,
        channel: &str,
        value: &Req,
        timeout: Duration,
    ) -> impl Future<Output = Result<Resp, InvokeError>> + Send + 'static + use<Req, Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned + Send + 'static,
    {
        let sent = encode_request(channel, value)
            .map(|payload| self.invoke_frame_raw(name, frame, channel, &payload, timeout));
        decode_reply(channel, sent)
    }

    /// [`Host::invoke_frame`] with MessagePack bytes in and out.
    pub fn invoke_frame_raw(
        &self,
        name: &str,
        frame: FrameId,
        channel: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, InvokeError>> + Send + 'static + use<> {
        let sent = if frame.0 == PEER_MAIN || frame.0 >= extension_api::abi::PEER_HOST {
            Err(InvokeError::new(InvokeErrorKind::FrameClosed, channel, format!("{frame} is not a frame number")))
        } else {
            self.active_link(name)
                .map_err(|error| InvokeError::new(InvokeErrorKind::Deactivated, channel, error.to_string()))
                .map(|link| link.host_invoke(frame.0, channel, payload, timeout))
        };
        async move { sent?.await }
    }

    /// The extension's store as main holds it: each key's MessagePack value.
    pub async fn store_values(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>, HostError> {
        let link = self.active_link(name)?;
        let main = link.endpoint_of(PEER_MAIN).ok_or_else(|| HostError::UnknownExtension(name.to_owned()))?;
        match main.control(|completion| Control::StoreSnapshot { completion }, INSPECT_TIMEOUT).await {
            Ok(Completion::StoreSnapshot(snapshot)) => {
                Ok(snapshot.values.into_iter().map(|(key, value)| (key, value.into_vec())).collect())
            }
            _ => Err(HostError::Refused { name: name.to_owned(), reason: Refusal::NotRunning }),
        }
    }

    /// The extension's persisted tier as main holds it (every write the host made durable and
    /// main applied): each key's MessagePack value.
    pub async fn storage_values(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>, HostError> {
        let link = self.active_link(name)?;
        let main = link.endpoint_of(PEER_MAIN).ok_or_else(|| HostError::UnknownExtension(name.to_owned()))?;
        match main.control(|completion| Control::StorageSnapshot { completion }, INSPECT_TIMEOUT).await {
            Ok(Completion::StorageSeed(seed)) => {
                Ok(seed.snapshot.values.into_iter().map(|(key, value)| (key, value.into_vec())).collect())
            }
            _ => Err(HostError::Refused { name: name.to_owned(), reason: Refusal::NotRunning }),
        }
    }

    /// A snapshot of every extension and frame.
    pub async fn inspect(&self) -> HostSnapshot {
        let entries: Vec<(ExtensionSnapshot, Option<Arc<Link>>)> = lock(&self.inner.extensions)
            .values()
            .map(|entry| {
                let snapshot = ExtensionSnapshot {
                    info: entry.library.info.clone(),
                    state: entry.state.clone(),
                    isolated: entry.isolated,
                    pid: entry.process.as_ref().filter(|process| !process.is_closed()).map(|process| process.pid()),
                    crashes: entry.crashes.count(),
                    last_problem: entry.last_problem.clone(),
                    frames: entry.link.as_ref().map(|link| link.frames()).unwrap_or_default(),
                    frame_errors: entry.frame_errors.clone(),
                    pending_requests: entry.link.as_ref().map_or(0, |link| link.pending_requests()),
                    instance: None,
                    storage: self.inner.storage.usage(&entry.library.info.name),
                    process: None,
                    unresponsive: false,
                    unanswered: 0,
                };
                (snapshot, entry.link.clone())
            })
            .collect();
        // Every extension asked at once (as the watchdog's look does): one that does not answer
        // (a stopped or stuck child) delays the others' reports by nothing, and the whole by
        // one inspect's timeout, not one per such extension. In name order still.
        let inspected = futures_util::future::join_all(entries.iter().map(|(_, link)| async move {
            match link {
                Some(link) => Some(inspect_link(link).await),
                None => None,
            }
        }))
        .await;
        let mut extensions = Vec::with_capacity(entries.len());
        for ((mut snapshot, _), instance) in entries.into_iter().zip(inspected) {
            if let Some((instance, unanswered)) = instance {
                // Requests within an instance never pass through the host's table.
                snapshot.pending_requests += usize::try_from(instance.local_requests).unwrap_or(usize::MAX);
                snapshot.instance = Some(instance);
                snapshot.unanswered = unanswered;
            }
            snapshot.process = snapshot.pid.map(ProcessUsage::of);
            snapshot.unresponsive = lock(&self.inner.watchdog).is_unresponsive(&snapshot.info.name);
            extensions.push(snapshot);
        }
        let frames = lock(&self.inner.frames)
            .iter()
            .map(|(id, frame)| FrameSnapshot {
                id: *id,
                kind: frame.kind,
                pid: frame.process.as_ref().filter(|process| !process.is_closed()).map(|process| process.pid()),
                restarts: frame.restarts,
                problem: frame.problem.clone(),
                url: frame.web.as_ref().map(|web| web.url()),
            })
            .collect();
        HostSnapshot { extensions, frames }
    }

    /// Closes every frame and deactivates every extension.
    pub async fn shutdown(&self) {
        for frame in self.frames() {
            let _ = self.close_frame(frame).await;
        }
        for (name, _) in self.active_links() {
            let _ = self.deactivate(&name).await;
        }
        // Every write queued is committed and answered first; then the files are released.
        self.inner.storage.close_all();
    }
}

/// Every instance of the extension's report, merged (its halves may run in several processes),
/// and how many instances did not answer in time (left out of it).
async fn inspect_link(link: &Link) -> (InstanceSnapshot, usize) {
    let mut merged = InstanceSnapshot::default();
    // Asked together: an instance slow to answer (a page, a busy child) delays the others by
    // nothing.
    let endpoints = link.endpoints();
    let outcomes = futures_util::future::join_all(
        endpoints
            .iter()
            .map(|endpoint| endpoint.control(|completion| Control::Inspect { completion }, INSPECT_TIMEOUT)),
    )
    .await;
    let mut unanswered = 0;
    for outcome in outcomes {
        let Ok(Completion::Inspected(instance)) = outcome else {
            unanswered += 1;
            continue;
        };
        merged.halves.extend(instance.halves);
        merged.tasks += instance.tasks;
        merged.decode_failures += instance.decode_failures;
        merged.queued_messages += instance.queued_messages;
        merged.dropped_broadcasts += instance.dropped_broadcasts;
        merged.refused_requests += instance.refused_requests;
        merged.local_requests += instance.local_requests;
        merged.listener_panics += instance.listener_panics;
        merged.queued_bytes += instance.queued_bytes;
        merged.store_bytes += instance.store_bytes;
        merged.binary_bytes += instance.binary_bytes;
        merged.dispatched += instance.dispatched;
        merged.batch_messages += instance.batch_messages;
        merged.dispatching |= instance.dispatching;
        merged.inspections += instance.inspections;
        merged.cpu_ns = match (merged.cpu_ns, instance.cpu_ns) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        if merged.thread_id == 0 {
            merged.thread_id = instance.thread_id;
        }
        merged.busy = merged.busy.or(instance.busy);
        for channel in instance.channels {
            match merged.channels.iter_mut().find(|each| each.kind == channel.kind && each.channel == channel.channel) {
                Some(each) => each.merge(&channel),
                None => merged.channels.push(channel),
            }
        }
        merged.slow_handlers.extend(instance.slow_handlers);
    }
    merged.halves.sort_by_key(|half| half.half);
    merged.channels.sort_by(|a, b| (a.kind, &a.channel).cmp(&(b.kind, &b.channel)));
    (merged, unanswered)
}

/// Extra time the host waits beyond a timeout it handed to the extension, so the extension's
/// own (more informative) timeout report arrives first.
const GRACE: Duration = Duration::from_millis(500);
const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The point `timeout` from now; `None` when it is too far away to represent, which means no
/// limit (`Duration::MAX`, say).
fn deadline_after(timeout: Duration) -> Option<tokio::time::Instant> {
    tokio::time::Instant::now().checked_add(timeout)
}

/// The time left before `deadline`; all the time there is without one.
fn time_left(deadline: Option<tokio::time::Instant>) -> Duration {
    deadline.map_or(Duration::MAX, |deadline| deadline.saturating_duration_since(tokio::time::Instant::now()))
}

impl Host {
    /// What every instance of extension `name` is started with.
    fn instance_config(&self, name: &str) -> InstanceConfig {
        let config = &self.inner.config;
        InstanceConfig {
            name: name.to_owned(),
            max_log_level: extension_api::message::filter_number(config.max_log_level),
            mailbox: config.mailbox,
            // Set by where the instance starts (see `Endpoint`).
            route_within: false,
            slow_handler_ms: millis(config.slow_handler),
        }
    }
}

/// What went wrong with a lifecycle step, in words; `None` if it completed.
fn completion_problem(step: &str, outcome: Result<Completion, ControlError>) -> Option<String> {
    match outcome {
        Ok(Completion::Done) => None,
        Ok(Completion::Failed { reason }) => Some(format!("{step} returned an error: {reason}")),
        Ok(Completion::Panicked { message }) => Some(format!("{step} panicked: {message}")),
        Ok(Completion::TimedOut { timeout_ms }) => Some(format!("{step} did not finish within {timeout_ms} ms")),
        Ok(other) => Some(format!("{step} got an unexpected answer: {other:?}")),
        Err(error) => Some(format!("{step}: {error}")),
    }
}

/// Tells main which frames its renderer half runs in (for `Main::frames`).
async fn tell_frames(link: &Link) {
    if let Some(main) = link.endpoint_of(PEER_MAIN) {
        let frames = link.frames();
        let _ = main.control(|completion| Control::SetFrames { completion, frames }, INSPECT_TIMEOUT).await;
    }
}

impl Host {
    /// Starts a child process for `role`; its unexpected end is handled as a crash.
    async fn spawn_child(&self, role: Role) -> Result<Arc<ChildProcess>, HostError> {
        let weak = self.weak();
        let on_lost = Box::new(move |process: Arc<ChildProcess>, reason: String| {
            if let Some(host) = Host::from_weak(&weak) {
                tokio::spawn(host.on_child_lost(process, reason));
            }
        });
        let config = &self.inner.config;
        ChildProcess::spawn(&config.child_program, &config.child_args, role, on_lost)
            .await
            .map_err(HostError::ChildProcess)
    }

    /// Boxed: restarting after a crash starts a child whose loss comes back here.
    fn on_child_lost(&self, process: Arc<ChildProcess>, reason: String) -> BoxFuture<'static, ()> {
        let host = self.clone();
        Box::pin(async move {
            let role = process.role().clone();
            host.operation(move |host| async move {
                match role {
                    Role::Frame(frame) => host.frame_crashed(frame, &process, &reason).await,
                    Role::Isolated(name) => host.extension_crashed(&name, &process, &reason).await,
                }
            })
            .await;
        })
    }
}

/// A request's value as MessagePack, for the typed forms of the `_raw` calls.
fn encode_request<Req: Serialize + ?Sized>(channel: &str, value: &Req) -> Result<Vec<u8>, InvokeError> {
    rmp_serde::to_vec_named(value)
        .map_err(|error| InvokeError::new(InvokeErrorKind::Serialize, channel, error.to_string()))
}

/// Waits for a request that was `sent` (or not) and decodes its reply as `Resp`.
fn decode_reply<Resp, F>(
    channel: &str,
    sent: Result<F, InvokeError>,
) -> impl Future<Output = Result<Resp, InvokeError>> + Send + 'static + use<Resp, F>
where
    Resp: DeserializeOwned + Send + 'static,
    F: Future<Output = Result<Vec<u8>, InvokeError>> + Send + 'static,
{
    let channel = channel.to_owned();
    async move {
        let reply = sent?.await?;
        extension_api::wire::decode(&reply).map_err(|error| {
            let message = format!("the reply does not decode as {}: {error}", std::any::type_name::<Resp>());
            InvokeError::new(InvokeErrorKind::Deserialize, channel, message)
        })
    }
}

/// What the web server asks of its host.
struct WebHooksOf {
    host: Weak<Inner>,
    /// The pages' comings and goings, run as host operations one after the other in the
    /// order the pages came and went. Each spawned on its own, a page's going could take the
    /// operations' lock after the reconnection that followed it, and its `WebRendererClosed`
    /// was then published after the half had come back.
    in_order: tokio::sync::mpsc::UnboundedSender<PageChange>,
}

/// A page's coming or going, for the host to take in.
type PageChange = Box<dyn FnOnce(Host) -> BoxFuture<'static, ()> + Send>;

impl WebHooksOf {
    /// Starts the task that runs the page changes on `runtime`.
    fn new(host: Weak<Inner>, runtime: &tokio::runtime::Handle) -> Self {
        let (in_order, mut changes) = tokio::sync::mpsc::unbounded_channel::<PageChange>();
        let weak = host.clone();
        runtime.spawn(async move {
            // Ends when the server (which holds the hooks) is gone, or the host is.
            while let Some(change) = changes.recv().await {
                let Some(host) = Host::from_weak(&weak) else { break };
                host.operation(change).await;
            }
        });
        WebHooksOf { host, in_order }
    }

    fn in_order(&self, change: PageChange) {
        // Fails only once the task has ended, which it does when the host is gone: then
        // there is nothing to tell.
        let _ = self.in_order.send(change);
    }
}

impl crate::web::WebHooks for WebHooksOf {
    fn open_frame(&self, web: Arc<WebFrame>) -> BoxFuture<'static, Option<u64>> {
        let host = Host::from_weak(&self.host);
        Box::pin(async move {
            let host = host?;
            host.operation(|host| async move { host.open_frame_locked(FrameKind::Web, Some(web)).await.ok() })
                .await
                .map(|frame| frame.0)
        })
    }

    fn close_frame(&self, frame: u64) -> BoxFuture<'static, ()> {
        let host = Host::from_weak(&self.host);
        Box::pin(async move {
            if let Some(host) = host {
                // Already closed by the host (it closed the shell): nothing to do.
                let _ = host.close_frame(FrameId(frame)).await;
            }
        })
    }

    fn half_reconnected(&self, extension: &str, frame: u64, endpoint: Arc<crate::endpoint::Endpoint>) {
        let name = extension.to_owned();
        self.in_order(Box::new(move |host| {
            Box::pin(async move { host.restart_web_half(&name, frame, endpoint).await })
        }));
    }

    fn half_ended(&self, extension: &str, frame: u64, lost: bool, reason: &str) {
        let event =
            HostEvent::WebRendererClosed { extension: extension.to_owned(), frame, lost, reason: reason.to_owned() };
        let name = extension.to_owned();
        self.in_order(Box::new(move |host| {
            Box::pin(async move {
                if let Ok(link) = host.active_link(&name) {
                    tell_frames(&link).await;
                }
                host.publish(event);
            })
        }));
    }

    fn assets(&self, extension: &str) -> Option<Arc<WebAssets>> {
        let host = Host::from_weak(&self.host)?;
        lock(&host.inner.extensions).get(extension).and_then(|entry| entry.web_assets.clone())
    }
}
