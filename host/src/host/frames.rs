//! Frames: opening, closing and reloading them, starting and stopping renderer halves in them,
//! and restarting a renderer process that crashed. Every function here runs under the host's
//! operation lock.

use std::sync::Arc;

use extension_api::abi::{PEER_MAIN, Peer};
use extension_api::wire::{Completion, Control};
use extension_api::{FrameId, InvokeErrorKind};

use super::config::CrashLog;
use super::{Frame, FrameKind, GRACE, Host, completion_problem, deadline_after, millis, tell_frames, time_left};
use crate::child_process::ChildProcess;
use crate::core::lock;
use crate::endpoint::Endpoint;
use crate::error::HostError;
use crate::events::HostEvent;
use crate::instances;
use crate::link::Link;
use crate::remote::Role;
use crate::web::WebFrame;

impl Host {
    pub(super) async fn open_frame_locked(
        &self,
        kind: FrameKind,
        web: Option<Arc<WebFrame>>,
    ) -> Result<FrameId, HostError> {
        let frame = self.inner.next_frame.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let process = match kind {
            FrameKind::InProcess | FrameKind::Web => None,
            FrameKind::ChildProcess => Some(self.spawn_child(Role::Frame(frame)).await?),
        };
        let shell = web.clone();
        let entry = Frame { kind, process, crashes: CrashLog::default(), restarts: 0, problem: None, web };
        lock(&self.inner.frames).insert(frame, entry);
        // The shell learns its number once the frame is listed, before any iframe.
        if let Some(shell) = shell {
            shell.announce(frame);
        }
        self.start_renderers(frame).await;
        Ok(FrameId(frame))
    }

    pub(super) async fn close_frame_locked(&self, frame: Peer) -> Result<(), HostError> {
        let entry = lock(&self.inner.frames).remove(&frame).ok_or(HostError::UnknownFrame(frame))?;
        self.stop_renderers(frame).await;
        if let Some(process) = entry.process {
            process.end().await;
        }
        if let Some(web) = entry.web {
            web.close(frame);
        }
        Ok(())
    }

    pub(super) async fn reload_frame_locked(&self, frame: Peer) -> Result<(), HostError> {
        if !lock(&self.inner.frames).contains_key(&frame) {
            return Err(HostError::UnknownFrame(frame));
        }
        self.stop_renderers(frame).await;
        self.start_renderers(frame).await;
        Ok(())
    }

    async fn start_renderers(&self, frame: Peer) {
        let links = self.active_links();
        // A web frame's iframes are all added first, so that their pages load together: pages
        // that never connect hold the host's operations for one activate_timeout, not one each.
        let web = lock(&self.inner.frames).get(&frame).and_then(|entry| entry.web.clone());
        if let Some(web) = &web {
            for (name, link) in &links {
                if web.has_renderer(name) {
                    // Failing, it is tried again, and reported, when the half starts.
                    let _ = web.invite(name, link, frame, self.inner.config.activate_timeout);
                }
            }
        }
        for (name, link) in links {
            self.open_renderer(&name, &link, frame).await;
            tell_frames(&link).await;
        }
        if let Some(web) = web {
            web.uninvite_all().await;
        }
    }

    async fn stop_renderers(&self, frame: Peer) {
        let deadline = deadline_after(self.inner.config.deactivate_timeout);
        for (name, link) in self.active_links() {
            if let Some(problem) = self.close_renderer(&link, frame, deadline).await {
                tracing::warn!(extension = %name, frame, "{problem}");
            }
            if let Some(entry) = lock(&self.inner.extensions).get_mut(&name) {
                entry.frame_errors.remove(&frame);
            }
            tell_frames(&link).await;
        }
    }

    /// The endpoint that will run `name`'s renderer half in `frame`: the main half's for an
    /// in-process frame, a new instance in the renderer process for a child-process frame,
    /// the page's connection for a web frame (`None`: the extension has no web renderer, so
    /// no half there).
    async fn renderer_endpoint(
        &self,
        name: &str,
        link: &Arc<Link>,
        frame: Peer,
    ) -> Result<Option<Arc<Endpoint>>, String> {
        let (kind, process, web) = {
            let frames = lock(&self.inner.frames);
            let entry = frames.get(&frame).ok_or("the frame is closed")?;
            (entry.kind, entry.process.clone(), entry.web.clone())
        };
        let main = link.endpoint_of(PEER_MAIN).ok_or("the main half is gone")?;
        let config = &self.inner.config;
        let endpoint = match (kind, web) {
            (FrameKind::InProcess, _) => return Ok(Some(main)),
            (FrameKind::Web, Some(web)) => {
                if !web.has_renderer(name) {
                    return Ok(None);
                }
                web.connect_renderer(name, link, frame, config.activate_timeout).await?
            }
            (FrameKind::Web, None) => return Err("the web frame has no shell".to_owned()),
            (FrameKind::ChildProcess, _) => {
                let process = process
                    .filter(|process| !process.is_closed())
                    .ok_or("the frame's renderer process is not running")?;
                let path = lock(&self.inner.extensions)
                    .get(name)
                    .map(|entry| entry.library.info.path.clone())
                    .ok_or("the extension was uninstalled")?;
                instances::start_in_child(
                    link,
                    &process,
                    &path,
                    self.instance_config(&link.name),
                    config.activate_timeout,
                )
                .await
                .map_err(|error| error.to_string())?
            }
        };
        self.seed_endpoint(link, &main, &endpoint).await?;
        Ok(Some(endpoint))
    }

    /// Joins an instance without main (a renderer process's, a page's) to the namespace, its
    /// replicas seeded from main's before any half opens there.
    async fn seed_endpoint(&self, link: &Link, main: &Endpoint, endpoint: &Arc<Endpoint>) -> Result<(), String> {
        let config = &self.inner.config;
        link.add_endpoint(endpoint.clone());
        let snapshot = main.control(|completion| Control::StoreSnapshot { completion }, config.activate_timeout).await;
        let seeded = match snapshot {
            Ok(Completion::StoreSnapshot(snapshot)) => {
                endpoint
                    .control(|completion| Control::SeedStore { completion, snapshot }, config.activate_timeout)
                    .await
            }
            Ok(other) => Ok(other),
            Err(error) => Err(error),
        };
        let seeded = match seeded {
            Ok(Completion::Done) => {
                match main.control(|completion| Control::StorageSnapshot { completion }, config.activate_timeout).await
                {
                    Ok(Completion::StorageSeed(seed)) => {
                        endpoint
                            .control(|completion| Control::SeedStorage { completion, seed }, config.activate_timeout)
                            .await
                    }
                    other => other,
                }
            }
            other => other,
        };
        if let Some(problem) = completion_problem("seeding the store", seeded) {
            instances::destroy(link, endpoint).await;
            return Err(problem);
        }
        Ok(())
    }

    /// `name` is deactivating: in every web frame, the token and iframe of a page that went
    /// away without the host closing it (so no half of it is placed there to close) go too.
    pub(super) fn retire_web_halves(&self, name: &str) {
        let webs: Vec<_> = lock(&self.inner.frames)
            .iter()
            .filter_map(|(frame, entry)| entry.web.clone().map(|web| (*frame, web)))
            .collect();
        for (frame, web) in webs {
            web.retire(name, frame);
        }
    }

    /// Opens `name`'s renderer half in each of `frames`, in order. Its iframes in web frames
    /// are all added first, so that its pages load together (see `start_renderers`).
    pub(super) async fn open_renderer_in(&self, name: &str, link: &Arc<Link>, frames: Vec<Peer>) {
        let webs: Vec<_> = {
            let open = lock(&self.inner.frames);
            frames
                .iter()
                .filter_map(|frame| open.get(frame).and_then(|entry| entry.web.clone()).map(|web| (*frame, web)))
                .collect()
        };
        for (frame, web) in &webs {
            if web.has_renderer(name) {
                // Failing, it is tried again, and reported, when the half starts.
                let _ = web.invite(name, link, *frame, self.inner.config.activate_timeout);
            }
        }
        for frame in frames {
            self.open_renderer(name, link, frame).await;
        }
        for (_, web) in webs {
            web.uninvite_all().await;
        }
    }

    pub(super) async fn open_renderer(&self, name: &str, link: &Arc<Link>, frame: Peer) {
        let endpoint = match self.renderer_endpoint(name, link, frame).await {
            Ok(Some(endpoint)) => endpoint,
            Ok(None) => return,
            Err(problem) => {
                self.record_frame_error(name, frame, format!("renderer could not start: {problem}"));
                return;
            }
        };
        self.run_renderer(name, link, frame, endpoint).await;
    }

    /// A web frame's page reconnected with its token (it reloaded): its half starts again,
    /// if the frame is still open and the extension still active.
    pub(super) async fn restart_web_half(&self, name: &str, frame: Peer, endpoint: Arc<Endpoint>) {
        let open = lock(&self.inner.frames).contains_key(&frame);
        let link = self.active_link(name).ok().filter(|_| open);
        let main = link.as_ref().and_then(|link| link.endpoint_of(PEER_MAIN));
        let (Some(link), Some(main)) = (link, main) else {
            endpoint.destroy().await;
            return;
        };
        if let Err(problem) = self.seed_endpoint(&link, &main, &endpoint).await {
            self.record_frame_error(name, frame, format!("renderer could not start: {problem}"));
            return;
        }
        if let Some(entry) = lock(&self.inner.extensions).get_mut(name) {
            entry.frame_errors.remove(&frame);
        }
        self.run_renderer(name, &link, frame, endpoint).await;
        tell_frames(&link).await;
    }

    /// Places `name`'s half in `frame` at `endpoint` and runs its `activate`.
    async fn run_renderer(&self, name: &str, link: &Arc<Link>, frame: Peer, endpoint: Arc<Endpoint>) {
        // Routable before `activate` runs: a renderer may broadcast from its activate.
        endpoint.place(frame);
        let timeout = self.inner.config.activate_timeout;
        let outcome = endpoint.control(|completion| Control::OpenFrame { completion, frame }, timeout).await;
        let Some(problem) = completion_problem("renderer activate", outcome) else {
            return;
        };
        link.unplace(&endpoint, frame);
        // Requests the half made (or got) before it failed can never complete now.
        link.fail_pending(|origin, target| origin == frame || target == frame, InvokeErrorKind::FrameClosed, &problem);
        // Drop whatever the half got to register before it failed.
        let _ = endpoint.control(|completion| Control::CloseFrame { completion, frame, timeout_ms: 0 }, GRACE).await;
        endpoint.forget(frame);
        if is_frame_instance(&endpoint, frame) {
            instances::destroy(link, &endpoint).await;
        }
        self.record_frame_error(name, frame, problem);
    }

    fn record_frame_error(&self, name: &str, frame: Peer, problem: String) {
        tracing::warn!(extension = %name, frame, "{problem}");
        if let Some(entry) = lock(&self.inner.extensions).get_mut(name) {
            entry.frame_errors.insert(frame, problem);
        }
    }

    /// Closes one renderer half, its `deactivate` bounded by `deadline` (`None`: no limit);
    /// returns what went wrong, if anything.
    pub(super) async fn close_renderer(
        &self,
        link: &Link,
        frame: Peer,
        deadline: Option<tokio::time::Instant>,
    ) -> Option<String> {
        let endpoint = link.endpoint_of(frame)?;
        link.unplace(&endpoint, frame);
        link.fail_pending(
            |origin, target| origin == frame || target == frame,
            InvokeErrorKind::FrameClosed,
            "the frame closed before the reply",
        );
        let left = time_left(deadline);
        let outcome = endpoint
            .control(
                |completion| Control::CloseFrame { completion, frame, timeout_ms: millis(left) },
                left.saturating_add(GRACE),
            )
            .await;
        // Its `deactivate` is over (or no longer waited for): nothing more to answer for it.
        endpoint.forget(frame);
        if is_frame_instance(&endpoint, frame) {
            instances::destroy(link, &endpoint).await;
        }
        completion_problem(&format!("renderer deactivate in frame {frame}"), outcome)
    }

    /// A renderer process ended unexpectedly: its renderer halves are gone (their requests
    /// already failed with `ConnectionLost`). It is restarted while the crash budget allows.
    pub(super) async fn frame_crashed(&self, frame: Peer, process: &Arc<ChildProcess>, reason: &str) {
        let restart = {
            let mut frames = lock(&self.inner.frames);
            let Some(entry) = frames.get_mut(&frame) else { return };
            if !entry.process.as_ref().is_some_and(|current| Arc::ptr_eq(current, process)) {
                return;
            }
            entry.process = None;
            let restart = entry.crashes.record(self.inner.config.crash_budget);
            entry.problem = Some(if restart {
                format!("restarted after a crash: {reason}")
            } else {
                let window = self.inner.config.crash_budget.window;
                format!("crashed {} times within {window:?}; stopped. Last: {reason}", entry.crashes.count())
            });
            restart
        };
        tracing::error!(frame, restart, "the frame's renderer process crashed: {reason}");
        self.publish(HostEvent::FrameCrashed { frame, reason: reason.to_owned(), restarting: restart });
        for (_, link) in self.active_links() {
            tell_frames(&link).await;
        }
        if !restart {
            return;
        }
        match self.spawn_child(Role::Frame(frame)).await {
            Ok(process) => {
                if let Some(entry) = lock(&self.inner.frames).get_mut(&frame) {
                    entry.process = Some(process);
                    entry.restarts += 1;
                }
                self.start_renderers(frame).await;
                self.publish(HostEvent::FrameRestarted { frame });
            }
            Err(error) => {
                tracing::error!(frame, "the renderer process could not be restarted: {error}");
                if let Some(entry) = lock(&self.inner.frames).get_mut(&frame) {
                    entry.problem = Some(format!("could not restart after a crash: {error}"));
                }
            }
        }
    }
}

/// Whether `endpoint` is an instance for this one frame (a renderer process's, or a web
/// page's), as opposed to the main half's instance, which outlives its frames.
fn is_frame_instance(endpoint: &Endpoint, frame: Peer) -> bool {
    endpoint.transport().is_web() || endpoint.child_role() == Some(&Role::Frame(frame))
}
