//! Hot reload: swapping a rebuilt library in for a loaded extension. Runs under the host's
//! operation lock.

use super::{ExtensionState, Host};
use crate::core::lock;
use crate::error::{HostError, LoadError, ReloadError};
use crate::events::HostEvent;
use crate::library;

impl Host {
    /// Reloads extension `name` from its library's path, after a rebuild.
    ///
    /// The new file is loaded and validated first (a private copy, checked whole, as by
    /// [`Host::load`]): a file still being written, or one that is not a library of this name,
    /// is refused, and the version that runs keeps running ([`ReloadError::Load`],
    /// [`ReloadError::Renamed`]). Only then is it swapped in: an active extension is
    /// deactivated (its ephemeral store cleared, as on any deactivation) and activated from
    /// the new library, in main and in every open frame, which stay open: in-process frames
    /// and renderer processes alike get the new renderer halves. An isolated extension gets a
    /// new process. An extension that is `Failed` (a previous build did not activate, say) is
    /// activated too; one that is loaded or inactive only gets the new library for its next
    /// activation.
    ///
    /// If the new build fails to activate after the swap, the old version is not brought
    /// back: the extension is left `Failed` with the reason ([`ReloadError::Activation`]) until
    /// a build that activates. Renderer processes and isolated extensions load the library
    /// from its path, which now holds the new build, so the old code could not run there
    /// again. (Between a rebuild and its reload, a frame opened, or an isolated process
    /// restarted, loads the file at the path as it is then: see ARCHITECTURE's limits.)
    ///
    /// Either way a [`HostEvent::ExtensionReloaded`] or [`HostEvent::ReloadFailed`] is
    /// published, and the outcome logged with the extension's name. Like every lifecycle call,
    /// it runs to completion even if the returned future is dropped.
    pub async fn reload(&self, name: &str) -> Result<(), ReloadError> {
        let name = name.to_owned();
        self.operation(|host| async move { host.reload_locked(&name).await }).await
    }

    async fn reload_locked(&self, name: &str) -> Result<(), ReloadError> {
        let (path, state, old_version) = {
            let extensions = lock(&self.inner.extensions);
            let entry = extensions.get(name).ok_or_else(|| HostError::UnknownExtension(name.to_owned()))?;
            (entry.library.info.path.clone(), entry.state.clone(), entry.library.info.version.clone())
        };
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || library::load(&path)).await
        };
        let library = match loaded {
            Ok(Ok(library)) => library,
            Ok(Err(source)) => {
                return Err(self.reload_refused(name, ReloadError::Load { name: name.to_owned(), source }));
            }
            Err(error) => {
                let source = LoadError::Unreadable { path, reason: format!("loading it failed: {error}") };
                return Err(self.reload_refused(name, ReloadError::Load { name: name.to_owned(), source }));
            }
        };
        if library.info.name != name {
            library.discard_copy();
            let found = library.info.name.clone();
            return Err(self.reload_refused(name, ReloadError::Renamed { name: name.to_owned(), path, found }));
        }
        // The swap. Persisted state (the durable store, once it exists) is kept across it: it is
        // keyed by the extension's name, not held by its instances, and must not be cleared
        // here. The ephemeral store goes with the old instances, as on any deactivation.
        let was_running = matches!(state, ExtensionState::Active | ExtensionState::Failed(_));
        if state == ExtensionState::Active {
            let report = self.deactivate_locked(name).await?;
            if !report.problems.is_empty() {
                tracing::warn!(extension = %name, problems = ?report.problems, "the old version did not stop cleanly");
            }
        }
        let version = library.info.version.clone();
        if let Some(entry) = lock(&self.inner.extensions).get_mut(name) {
            // The old library stays mapped (libraries never are unmapped); the new one is used
            // from here on, by this process and by every child that loads it.
            // Its web renderer too: a web frame's iframe loads the new build's files.
            entry.web_assets = library.web_assets().cloned();
            entry.library = library;
            // A new build starts with a fresh crash budget.
            entry.crashes = super::config::CrashLog::default();
        }
        if was_running {
            if let Err(error) = self.activate_locked(name).await {
                let reason = match error {
                    HostError::ActivationFailed { reason, .. } => reason,
                    other => other.to_string(),
                };
                let error = ReloadError::Activation { name: name.to_owned(), reason };
                tracing::error!(extension = %name, %version, %old_version, "{error}");
                self.publish(HostEvent::ReloadFailed {
                    extension: name.to_owned(),
                    reason: error.to_string(),
                    kept_old_version: false,
                });
                return Err(error);
            }
        }
        tracing::info!(extension = %name, %version, path = %path.display(), active = was_running, "reloaded");
        self.publish(HostEvent::ExtensionReloaded { extension: name.to_owned(), version: version.to_string() });
        Ok(())
    }

    /// Reports a reload refused before the swap: the version loaded before is kept.
    fn reload_refused(&self, name: &str, error: ReloadError) -> ReloadError {
        tracing::error!(extension = %name, "{error}");
        self.publish(HostEvent::ReloadFailed {
            extension: name.to_owned(),
            reason: error.to_string(),
            kept_old_version: true,
        });
        error
    }
}
