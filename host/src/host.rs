//! The host: which extensions are loaded, their lifecycle, and the frames they render in.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use extension_api::abi::Peer;
use extension_api::wire::{Completion, Control, InstanceSnapshot};
use extension_api::{FrameId, InvokeError, InvokeErrorKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tracing::level_filters::LevelFilter;

use crate::error::{HostError, LoadError};
use crate::events::{LogRecord, ObservedBroadcast};
use crate::library::{self, Library, LibraryInfo};
use crate::link::{ControlError, Core, Link, lock};

/// How the host bounds the code it runs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Longest an extension's `activate` (main or renderer) may take.
    pub activate_timeout: Duration,
    /// Longest an extension's `deactivate` (all halves together) may take; then everything it
    /// had is dropped anyway.
    pub deactivate_timeout: Duration,
    /// Most verbose level extensions forward; defaults to the host's own tracing level.
    pub max_log_level: LevelFilter,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            activate_timeout: Duration::from_secs(10),
            deactivate_timeout: Duration::from_secs(5),
            max_log_level: LevelFilter::current(),
        }
    }
}

/// Where an extension is in its lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum ExtensionState {
    /// Loaded and validated, never activated.
    Loaded,
    Activating,
    Active,
    Deactivating,
    /// Deactivated; can be activated again.
    Inactive,
    /// Activation failed (returned an error, panicked or timed out); can be activated again.
    Failed(String),
}

impl std::fmt::Display for ExtensionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExtensionState::Loaded => f.write_str("loaded"),
            ExtensionState::Activating => f.write_str("activating"),
            ExtensionState::Active => f.write_str("active"),
            ExtensionState::Deactivating => f.write_str("deactivating"),
            ExtensionState::Inactive => f.write_str("inactive"),
            ExtensionState::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}

/// What deactivation ran into. Everything is cleaned up regardless.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeactivateReport {
    /// Each half whose `deactivate` panicked or overran its time, and how.
    pub problems: Vec<String>,
}

/// Everything the host knows about one extension.
#[derive(Debug, Clone, Serialize)]
pub struct ExtensionSnapshot {
    pub info: LibraryInfo,
    pub state: ExtensionState,
    /// What went wrong last (a failed deactivation, say), even if the state is fine now.
    pub last_problem: Option<String>,
    /// Frames where its renderer half is running.
    pub frames: Vec<u64>,
    /// Frames where its renderer half failed to activate, with the reason.
    pub frame_errors: BTreeMap<u64, String>,
    /// Requests of this extension in flight through the host.
    pub pending_requests: usize,
    /// What the instance reports (listeners, handlers, tasks), while it runs.
    pub instance: Option<InstanceSnapshot>,
}

/// The whole host at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct HostSnapshot {
    pub extensions: Vec<ExtensionSnapshot>,
    pub frames: Vec<u64>,
}

impl HostSnapshot {
    pub fn extension(&self, name: &str) -> Option<&ExtensionSnapshot> {
        self.extensions.iter().find(|extension| extension.info.name == name)
    }
}

struct Entry {
    library: Library,
    state: ExtensionState,
    last_problem: Option<String>,
    link: Option<Arc<Link>>,
    frame_errors: BTreeMap<u64, String>,
}

struct Inner {
    config: HostConfig,
    core: Arc<Core>,
    extensions: Mutex<BTreeMap<String, Entry>>,
    frames: Mutex<BTreeSet<u64>>,
    next_frame: AtomicU64,
    /// Lifecycle operations run one at a time.
    operations: tokio::sync::Mutex<()>,
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
    pub fn new(config: HostConfig) -> Host {
        Host {
            inner: Arc::new(Inner {
                config,
                core: Arc::new(Core::new()),
                extensions: Mutex::new(BTreeMap::new()),
                frames: Mutex::new(BTreeSet::new()),
                next_frame: AtomicU64::new(1),
                operations: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Loads and validates a library. Nothing of the extension runs until [`Host::activate`].
    pub fn load(&self, path: impl AsRef<Path>) -> Result<LibraryInfo, LoadError> {
        let path = path.as_ref();
        let library = library::load(path)?;
        let info = library.info.clone();
        let mut extensions = lock(&self.inner.extensions);
        if let Some(existing) = extensions.get(&info.name) {
            return Err(LoadError::DuplicateName {
                path: path.to_owned(),
                name: info.name,
                existing: existing.library.info.path.clone(),
            });
        }
        extensions.insert(
            info.name.clone(),
            Entry {
                library,
                state: ExtensionState::Loaded,
                last_problem: None,
                link: None,
                frame_errors: BTreeMap::new(),
            },
        );
        tracing::info!(extension = %info.name, version = %info.version, path = %path.display(), "loaded");
        Ok(info)
    }

    /// Loads every shared library (`.so`, `.dylib`, `.dll`) in `dir`, in name order.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> std::io::Result<Vec<(PathBuf, Result<LibraryInfo, LoadError>)>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.extension()
                    .is_some_and(|ext| ext == std::env::consts::DLL_EXTENSION)
            })
            .collect();
        paths.sort();
        Ok(paths.into_iter().map(|path| (path.clone(), self.load(&path))).collect())
    }

    pub fn state(&self, name: &str) -> Option<ExtensionState> {
        lock(&self.inner.extensions).get(name).map(|entry| entry.state.clone())
    }

    /// Names of the loaded extensions.
    pub fn extensions(&self) -> Vec<String> {
        lock(&self.inner.extensions).keys().cloned().collect()
    }

    /// Open frames, in order.
    pub fn frames(&self) -> Vec<FrameId> {
        lock(&self.inner.frames).iter().map(|id| FrameId(*id)).collect()
    }

    /// Extension log records, as they arrive.
    pub fn logs(&self) -> broadcast::Receiver<LogRecord> {
        self.inner.core.logs.subscribe()
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
        let entry = extensions
            .get(name)
            .ok_or_else(|| HostError::UnknownExtension(name.to_owned()))?;
        match (&entry.state, &entry.link) {
            (ExtensionState::Active, Some(link)) => Ok(link.clone()),
            (state, _) => Err(HostError::WrongState {
                name: name.to_owned(),
                state: state.to_string(),
                operation: "this",
                needed: "active",
            }),
        }
    }

    async fn activate_now(&self, name: &str) -> Result<(), HostError> {
        let _operation = self.inner.operations.lock().await;
        let descriptor = {
            let mut extensions = lock(&self.inner.extensions);
            let entry = extensions
                .get_mut(name)
                .ok_or_else(|| HostError::UnknownExtension(name.to_owned()))?;
            match entry.state {
                ExtensionState::Loaded | ExtensionState::Inactive | ExtensionState::Failed(_) => {}
                ref state => {
                    return Err(HostError::WrongState {
                        name: name.to_owned(),
                        state: state.to_string(),
                        operation: "activate",
                        needed: "loaded, inactive or failed",
                    });
                }
            }
            entry.state = ExtensionState::Activating;
            entry.frame_errors.clear();
            entry.library.descriptor
        };
        let level = level_number(self.inner.config.max_log_level);
        let link = match Link::instantiate(name, descriptor, self.inner.core.clone(), level) {
            Ok(link) => link,
            Err(error) => return Err(self.fail_activation(name, error.to_string())),
        };
        let timeout = self.inner.config.activate_timeout;
        let outcome = link
            .control(|completion| Control::ActivateMain { completion }, timeout)
            .await;
        if let Some(reason) = completion_problem("activate", outcome) {
            destroy(link).await;
            return Err(self.fail_activation(name, reason));
        }
        if let Some(entry) = lock(&self.inner.extensions).get_mut(name) {
            entry.link = Some(link.clone());
        }
        let frames: Vec<u64> = lock(&self.inner.frames).iter().copied().collect();
        for frame in frames {
            self.open_renderer(name, &link, frame).await;
        }
        self.set_state(name, ExtensionState::Active);
        tracing::info!(extension = %name, "activated");
        Ok(())
    }

    /// Activates the main half, then the renderer half in every open frame. A failure leaves
    /// the extension [`ExtensionState::Failed`] with the reason, and the host running.
    ///
    /// Like every lifecycle call, it runs to completion even if the returned future is dropped.
    pub async fn activate(&self, name: &str) -> Result<(), HostError> {
        let name = name.to_owned();
        self.detached(|host| async move { host.activate_now(&name).await })
            .await
    }

    /// Deactivates: stops routing to the extension, runs every half's `deactivate` (bounded by
    /// the configured timeout), then drops everything it registered, spawned or had pending.
    /// When this returns, no code of the extension runs any more.
    pub async fn deactivate(&self, name: &str) -> Result<DeactivateReport, HostError> {
        let name = name.to_owned();
        self.detached(|host| async move { host.deactivate_now(&name).await })
            .await
    }

    /// Deactivates (if active) and forgets the extension. Its library stays mapped, but the
    /// name is free: loading a rebuilt library runs the new code.
    pub async fn uninstall(&self, name: &str) -> Result<(), HostError> {
        let name = name.to_owned();
        self.detached(|host| async move { host.uninstall_now(&name).await })
            .await
    }

    /// Opens an in-process frame; every active extension's renderer half starts in it.
    pub async fn open_frame(&self) -> FrameId {
        self.detached(|host| async move { host.open_frame_now().await }).await
    }

    /// Closes a frame: its renderer halves are deactivated and dropped; requests involving it
    /// fail with [`InvokeErrorKind::FrameClosed`].
    pub async fn close_frame(&self, frame: FrameId) -> Result<(), HostError> {
        self.detached(move |host| async move { host.close_frame_now(frame).await })
            .await
    }

    /// Reloads a frame: its renderer halves are closed and started afresh. Main-side
    /// registrations are untouched.
    pub async fn reload_frame(&self, frame: FrameId) -> Result<(), HostError> {
        self.detached(move |host| async move { host.reload_frame_now(frame).await })
            .await
    }

    /// Runs a lifecycle operation as its own task: dropping the caller's future must not leave
    /// an extension half-activated or half-deactivated.
    async fn detached<T, F>(&self, operation: impl FnOnce(Host) -> F) -> T
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        match tokio::spawn(operation(self.clone())).await {
            Ok(value) => value,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Cancelled only when the runtime itself shuts down, which drops us too.
                Err(_) => std::future::pending().await,
            },
        }
    }

    fn fail_activation(&self, name: &str, reason: String) -> HostError {
        tracing::warn!(extension = %name, "activation failed: {reason}");
        self.set_state(name, ExtensionState::Failed(reason.clone()));
        HostError::ActivationFailed {
            name: name.to_owned(),
            reason,
        }
    }

    async fn deactivate_now(&self, name: &str) -> Result<DeactivateReport, HostError> {
        let _operation = self.inner.operations.lock().await;
        self.deactivate_locked(name).await
    }

    async fn deactivate_locked(&self, name: &str) -> Result<DeactivateReport, HostError> {
        let link = {
            let mut extensions = lock(&self.inner.extensions);
            let entry = extensions
                .get_mut(name)
                .ok_or_else(|| HostError::UnknownExtension(name.to_owned()))?;
            match (&entry.state, entry.link.take()) {
                (ExtensionState::Active, Some(link)) => {
                    entry.state = ExtensionState::Deactivating;
                    link
                }
                (state, link) => {
                    entry.link = link;
                    return Err(HostError::WrongState {
                        name: name.to_owned(),
                        state: state.to_string(),
                        operation: "deactivate",
                        needed: "active",
                    });
                }
            }
        };
        link.stop_routing();
        link.fail_pending(|_, _| true, InvokeErrorKind::Deactivated);
        let deadline = tokio::time::Instant::now() + self.inner.config.deactivate_timeout;
        let mut report = DeactivateReport::default();
        for frame in link.frames() {
            if let Some(problem) = self.close_renderer(&link, frame, deadline).await {
                report.problems.push(problem);
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let outcome = link
            .control(
                |completion| Control::DeactivateMain {
                    completion,
                    timeout_ms: millis(left),
                },
                left + GRACE,
            )
            .await;
        if let Some(problem) = completion_problem("main deactivate", outcome) {
            report.problems.push(problem);
        }
        destroy(link).await;
        if let Some(entry) = lock(&self.inner.extensions).get_mut(name) {
            entry.state = ExtensionState::Inactive;
            entry.frame_errors.clear();
            if !report.problems.is_empty() {
                entry.last_problem = Some(report.problems.join("; "));
            }
        }
        if report.problems.is_empty() {
            tracing::info!(extension = %name, "deactivated");
        } else {
            tracing::warn!(extension = %name, problems = ?report.problems, "deactivated, with problems; everything was cleaned up");
        }
        Ok(report)
    }

    async fn uninstall_now(&self, name: &str) -> Result<(), HostError> {
        let _operation = self.inner.operations.lock().await;
        if self.state(name) == Some(ExtensionState::Active) {
            self.deactivate_locked(name).await?;
        }
        lock(&self.inner.extensions)
            .remove(name)
            .ok_or_else(|| HostError::UnknownExtension(name.to_owned()))?;
        tracing::info!(extension = %name, "uninstalled");
        Ok(())
    }

    async fn open_frame_now(&self) -> FrameId {
        let _operation = self.inner.operations.lock().await;
        let frame = self.inner.next_frame.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.frames).insert(frame);
        self.start_renderers(frame).await;
        FrameId(frame)
    }

    async fn close_frame_now(&self, frame: FrameId) -> Result<(), HostError> {
        let _operation = self.inner.operations.lock().await;
        if !lock(&self.inner.frames).remove(&frame.0) {
            return Err(HostError::UnknownFrame(frame.0));
        }
        self.stop_renderers(frame.0).await;
        Ok(())
    }

    async fn reload_frame_now(&self, frame: FrameId) -> Result<(), HostError> {
        let _operation = self.inner.operations.lock().await;
        if !lock(&self.inner.frames).contains(&frame.0) {
            return Err(HostError::UnknownFrame(frame.0));
        }
        self.stop_renderers(frame.0).await;
        self.start_renderers(frame.0).await;
        Ok(())
    }

    fn active_links(&self) -> Vec<(String, Arc<Link>)> {
        lock(&self.inner.extensions)
            .iter()
            .filter(|(_, entry)| entry.state == ExtensionState::Active)
            .filter_map(|(name, entry)| entry.link.clone().map(|link| (name.clone(), link)))
            .collect()
    }

    async fn start_renderers(&self, frame: Peer) {
        for (name, link) in self.active_links() {
            self.open_renderer(&name, &link, frame).await;
        }
    }

    async fn stop_renderers(&self, frame: Peer) {
        let deadline = tokio::time::Instant::now() + self.inner.config.deactivate_timeout;
        for (name, link) in self.active_links() {
            if let Some(problem) = self.close_renderer(&link, frame, deadline).await {
                tracing::warn!(extension = %name, frame, "{problem}");
            }
            if let Some(entry) = lock(&self.inner.extensions).get_mut(&name) {
                entry.frame_errors.remove(&frame);
            }
        }
    }

    async fn open_renderer(&self, name: &str, link: &Link, frame: Peer) {
        // Routable before `activate` runs: a renderer may broadcast from its activate.
        link.add_frame(frame);
        let timeout = self.inner.config.activate_timeout;
        let outcome = link
            .control(|completion| Control::OpenFrame { completion, frame }, timeout)
            .await;
        let Some(problem) = completion_problem("renderer activate", outcome) else {
            return;
        };
        link.remove_frame(frame);
        // Requests the half made (or got) before it failed can never complete now.
        link.fail_pending(
            |origin, target| origin == frame || target == frame,
            InvokeErrorKind::FrameClosed,
        );
        // Drop whatever the half got to register before it failed.
        let _ = link
            .control(
                |completion| Control::CloseFrame {
                    completion,
                    frame,
                    timeout_ms: 0,
                },
                GRACE,
            )
            .await;
        tracing::warn!(extension = %name, frame, "{problem}");
        if let Some(entry) = lock(&self.inner.extensions).get_mut(name) {
            entry.frame_errors.insert(frame, problem);
        }
    }

    /// Closes one renderer half; returns what went wrong, if anything.
    async fn close_renderer(&self, link: &Link, frame: Peer, deadline: tokio::time::Instant) -> Option<String> {
        if !link.remove_frame(frame) {
            return None;
        }
        link.fail_pending(
            |origin, target| origin == frame || target == frame,
            InvokeErrorKind::FrameClosed,
        );
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let outcome = link
            .control(
                |completion| Control::CloseFrame {
                    completion,
                    frame,
                    timeout_ms: millis(left),
                },
                left + GRACE,
            )
            .await;
        completion_problem(&format!("renderer deactivate in frame {frame}"), outcome)
    }

    /// Broadcasts `value` on `channel` into the extension's namespace, as the host.
    pub fn broadcast<T: Serialize + ?Sized>(&self, name: &str, channel: &str, value: &T) -> Result<(), HostError> {
        let payload = rmp_serde::to_vec_named(value).map_err(|error| HostError::Serialize {
            channel: channel.to_owned(),
            reason: error.to_string(),
        })?;
        self.broadcast_raw(name, channel, &payload)
    }

    /// [`Host::broadcast`] with an already encoded MessagePack value.
    pub fn broadcast_raw(&self, name: &str, channel: &str, payload: &[u8]) -> Result<(), HostError> {
        let link = self.active_link(name)?;
        match link.host_broadcast(channel, payload) {
            extension_api::abi::status::OK => Ok(()),
            status => Err(HostError::Refused {
                name: name.to_owned(),
                status,
            }),
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
        let channel_name = channel.to_owned();
        let sent = rmp_serde::to_vec_named(value)
            .map_err(|error| InvokeError::new(InvokeErrorKind::Serialize, channel, error.to_string()))
            .map(|payload| self.invoke_raw(name, channel, &payload, timeout));
        async move {
            let reply = sent?.await?;
            rmp_serde::from_slice(&reply).map_err(|error| {
                let message = format!(
                    "the reply does not decode as {}: {error}",
                    std::any::type_name::<Resp>()
                );
                InvokeError::new(InvokeErrorKind::Deserialize, channel_name, message)
            })
        }
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
            .map(|link| link.host_invoke(channel, payload, timeout));
        async move { sent?.await }
    }

    /// A snapshot of every extension and frame.
    pub async fn inspect(&self) -> HostSnapshot {
        let entries: Vec<(ExtensionSnapshot, Option<Arc<Link>>)> = lock(&self.inner.extensions)
            .values()
            .map(|entry| {
                let snapshot = ExtensionSnapshot {
                    info: entry.library.info.clone(),
                    state: entry.state.clone(),
                    last_problem: entry.last_problem.clone(),
                    frames: entry.link.as_ref().map(|link| link.frames()).unwrap_or_default(),
                    frame_errors: entry.frame_errors.clone(),
                    pending_requests: entry
                        .link
                        .as_ref()
                        .map_or(0, |link| self.inner.core.pending_for(link.key)),
                    instance: None,
                };
                (snapshot, entry.link.clone())
            })
            .collect();
        let mut extensions = Vec::with_capacity(entries.len());
        for (mut snapshot, link) in entries {
            if let Some(link) = link {
                let outcome = link
                    .control(|completion| Control::Inspect { completion }, INSPECT_TIMEOUT)
                    .await;
                if let Ok(Completion::Inspected(instance)) = outcome {
                    snapshot.instance = Some(instance);
                }
            }
            extensions.push(snapshot);
        }
        HostSnapshot {
            extensions,
            frames: lock(&self.inner.frames).iter().copied().collect(),
        }
    }

    /// Closes every frame and deactivates every extension.
    pub async fn shutdown(&self) {
        let frames: Vec<u64> = lock(&self.inner.frames).iter().copied().collect();
        for frame in frames {
            let _ = self.close_frame(FrameId(frame)).await;
        }
        for (name, _) in self.active_links() {
            let _ = self.deactivate(&name).await;
        }
    }
}

/// Extra time the host waits beyond a timeout it handed to the extension, so the extension's
/// own (more informative) timeout report arrives first.
const GRACE: Duration = Duration::from_millis(500);
const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn level_number(level: LevelFilter) -> u32 {
    match level.into_level() {
        None => 0,
        Some(tracing::Level::ERROR) => 1,
        Some(tracing::Level::WARN) => 2,
        Some(tracing::Level::INFO) => 3,
        Some(tracing::Level::DEBUG) => 4,
        Some(tracing::Level::TRACE) => 5,
    }
}

/// What went wrong with a lifecycle step, in words; `None` if it completed.
fn completion_problem(step: &str, outcome: Result<Completion, ControlError>) -> Option<String> {
    match outcome {
        Ok(Completion::Done) => None,
        Ok(Completion::Failed { reason }) => Some(format!("{step} returned an error: {reason}")),
        Ok(Completion::Panicked { message }) => Some(format!("{step} panicked: {message}")),
        Ok(Completion::TimedOut { timeout_ms }) => Some(format!("{step} did not finish within {timeout_ms} ms")),
        Ok(Completion::Inspected(_)) => Some(format!("{step} got an unexpected answer")),
        Err(error) => Some(format!("{step}: {error}")),
    }
}

/// Destroys an instance off the async threads (it joins the instance's thread).
async fn destroy(link: Arc<Link>) {
    let name = link.name.clone();
    let status = tokio::task::spawn_blocking(move || link.destroy()).await;
    if !matches!(status, Ok(extension_api::abi::status::OK)) {
        tracing::error!(extension = %name, "its runtime thread did not stop in time and was abandoned");
    }
}
