//! Activation, deactivation, uninstall, and what happens when an isolated extension's process
//! crashes. Every function here runs under the host's operation lock.

use std::sync::Arc;

use extension_api::InvokeErrorKind;
use extension_api::abi::PEER_MAIN;
use extension_api::wire::Control;

use super::{
    DeactivateReport, ExtensionState, GRACE, Host, completion_problem, deadline_after, millis, tell_frames, time_left,
};
use crate::child_process::ChildProcess;
use crate::core::lock;
use crate::error::{HostError, Operation};
use crate::events::HostEvent;
use crate::instances;
use crate::link::Link;
use crate::remote::Role;
use crate::storage::Limits;

impl Host {
    pub(super) async fn activate_locked(&self, name: &str) -> Result<(), HostError> {
        self.inner.config.validate()?;
        let (descriptor, path, isolated, version) = {
            let mut extensions = lock(&self.inner.extensions);
            let entry = extensions.get_mut(name).ok_or_else(|| HostError::UnknownExtension(name.to_owned()))?;
            match entry.state {
                ExtensionState::Loaded | ExtensionState::Inactive | ExtensionState::Failed(_) => {}
                ref state => {
                    return Err(HostError::WrongState {
                        name: name.to_owned(),
                        state: state.clone(),
                        operation: Operation::Activate,
                    });
                }
            }
            entry.state = ExtensionState::Activating;
            entry.frame_errors.clear();
            (
                entry.library.descriptor,
                entry.library.info.path.clone(),
                entry.isolated,
                entry.library.info.version.clone(),
            )
        };
        let config = &self.inner.config;
        let instance_config = self.instance_config(name);
        let link = Link::new(name, self.inner.core.clone());
        let (main, process) = if isolated {
            let process = match self.spawn_child(Role::Isolated(name.to_owned())).await {
                Ok(process) => process,
                Err(error) => return Err(self.fail_activation(name, error.to_string())),
            };
            match instances::start_in_child(&link, &process, &path, instance_config, config.activate_timeout).await {
                Ok(main) => (main, Some(process)),
                Err(error) => {
                    process.end().await;
                    return Err(self.fail_activation(name, error.to_string()));
                }
            }
        } else {
            match instances::start_in_process(&link, descriptor, &instance_config) {
                Ok(main) => (main, None),
                Err(error) => return Err(self.fail_activation(name, error.to_string())),
            }
        };
        main.place(PEER_MAIN);
        link.add_endpoint(main.clone());
        // The persisted tier is there before main's `activate` runs (read after every write a
        // previous activation queued).
        let storage = self.inner.storage.database(name);
        let limits = Limits { value: config.storage.value_limit, total: config.storage.total_limit };
        let seed = storage.seed(&version.to_string(), limits).await;
        link.set_storage(storage);
        let seeded =
            main.control(|completion| Control::SeedStorage { completion, seed }, config.activate_timeout).await;
        if let Some(reason) = completion_problem("seeding the persisted storage", seeded) {
            teardown(&link, process.as_ref()).await;
            return Err(self.fail_activation(name, reason));
        }
        let outcome = main.control(|completion| Control::ActivateMain { completion }, config.activate_timeout).await;
        if let Some(reason) = completion_problem("activate", outcome) {
            teardown(&link, process.as_ref()).await;
            return Err(self.fail_activation(name, reason));
        }
        if let Some(entry) = lock(&self.inner.extensions).get_mut(name) {
            entry.link = Some(link.clone());
            entry.process = process;
        }
        let frames: Vec<u64> = lock(&self.inner.frames).keys().copied().collect();
        self.open_renderer_in(name, &link, frames).await;
        tell_frames(&link).await;
        self.set_state(name, ExtensionState::Active);
        self.ensure_watchdog();
        self.watch_link(&link);
        tracing::info!(extension = %name, isolated, "activated");
        Ok(())
    }

    fn fail_activation(&self, name: &str, reason: String) -> HostError {
        tracing::warn!(extension = %name, "activation failed: {reason}");
        self.set_state(name, ExtensionState::Failed(reason.clone()));
        HostError::ActivationFailed { name: name.to_owned(), reason }
    }

    pub(super) async fn deactivate_locked(&self, name: &str) -> Result<DeactivateReport, HostError> {
        let (link, process) = {
            let mut extensions = lock(&self.inner.extensions);
            let entry = extensions.get_mut(name).ok_or_else(|| HostError::UnknownExtension(name.to_owned()))?;
            match (&entry.state, entry.link.take()) {
                (ExtensionState::Active, Some(link)) => {
                    entry.state = ExtensionState::Deactivating;
                    (link, entry.process.take())
                }
                (state, link) => {
                    entry.link = link;
                    return Err(HostError::WrongState {
                        name: name.to_owned(),
                        state: state.clone(),
                        operation: Operation::Deactivate,
                    });
                }
            }
        };
        link.stop_routing();
        link.fail_pending(|_, _| true, InvokeErrorKind::Deactivated, "the extension was deactivated before the reply");
        let deadline = deadline_after(self.inner.config.deactivate_timeout);
        let mut report = DeactivateReport::default();
        // Requests between main and the frames in its instance never passed through the host:
        // that instance fails them itself.
        if let Some(main) = link.endpoint_of(PEER_MAIN) {
            let outcome = main.control(|completion| Control::StopRouting { completion }, GRACE).await;
            if let Some(problem) = completion_problem("stopping requests", outcome) {
                report.problems.push(problem);
            }
        }
        for frame in link.frames() {
            if let Some(problem) = self.close_renderer(&link, frame, deadline).await {
                report.problems.push(problem);
            }
        }
        self.retire_web_halves(name);
        if let Some(main) = link.endpoint_of(PEER_MAIN) {
            let left = time_left(deadline);
            let outcome = main
                .control(
                    |completion| Control::DeactivateMain { completion, timeout_ms: millis(left) },
                    left.saturating_add(GRACE),
                )
                .await;
            if let Some(problem) = completion_problem("main deactivate", outcome) {
                report.problems.push(problem);
            }
        }
        teardown(&link, process.as_ref()).await;
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

    pub(super) async fn uninstall_locked(&self, name: &str) -> Result<(), HostError> {
        if self.state(name) == Some(ExtensionState::Active) {
            self.deactivate_locked(name).await?;
        }
        lock(&self.inner.extensions).remove(name).ok_or_else(|| HostError::UnknownExtension(name.to_owned()))?;
        // Its data stays on disk for its next load; the file is released.
        self.inner.storage.close(name);
        tracing::info!(extension = %name, "uninstalled");
        Ok(())
    }

    /// An isolated extension's process ended unexpectedly: its main half is gone. Everything
    /// else it ran is dropped, and it is activated again while the crash budget allows.
    pub(super) async fn extension_crashed(&self, name: &str, process: &Arc<ChildProcess>, reason: &str) {
        let (link, restart) = {
            let mut extensions = lock(&self.inner.extensions);
            let Some(entry) = extensions.get_mut(name) else { return };
            let ours = entry.process.as_ref().is_some_and(|current| Arc::ptr_eq(current, process));
            if !ours || entry.state != ExtensionState::Active {
                return;
            }
            entry.process = None;
            let restart = entry.crashes.record(self.inner.config.crash_budget);
            let crashes = entry.crashes.count();
            entry.last_problem = Some(format!("crashed: {reason}"));
            entry.state = if restart {
                ExtensionState::Inactive
            } else {
                let window = self.inner.config.crash_budget.window;
                ExtensionState::Failed(format!("crashed {crashes} times within {window:?}; stopped. Last: {reason}"))
            };
            (entry.link.take(), restart)
        };
        tracing::error!(extension = %name, restart, "the extension's process crashed: {reason}");
        self.publish(HostEvent::ExtensionCrashed {
            extension: name.to_owned(),
            reason: reason.to_owned(),
            restarting: restart,
        });
        if let Some(link) = link {
            link.stop_routing();
            link.fail_pending(|_, _| true, InvokeErrorKind::ConnectionLost, reason);
            teardown(&link, None).await;
        }
        if restart {
            match self.activate_locked(name).await {
                Ok(()) => self.publish(HostEvent::ExtensionRestarted { extension: name.to_owned() }),
                Err(error) => tracing::error!(extension = %name, "restart after a crash failed: {error}"),
            }
        }
    }
}

/// Destroys every instance of the extension, then its process if it has one.
async fn teardown(link: &Link, process: Option<&Arc<ChildProcess>>) {
    for endpoint in link.endpoints() {
        if !instances::destroy(link, &endpoint).await {
            tracing::error!(extension = %link.name, "an instance did not stop in time and was abandoned");
        }
    }
    if let Some(process) = process {
        process.end().await;
    }
}
