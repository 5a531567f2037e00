//! Watching extension libraries for rebuilds and reloading them (`host run --watch`).
//!
//! Each library's directory is watched (not the file: a build replaces the file, often as a
//! new one, and a watch on the old file would see nothing after that), through `notify` with
//! a debouncer, so a burst of writes is one change, acted on once the file has been quiet for
//! the debounce time. A change is acted on only if the file's
//! identity (device, inode, size, modification and change times) differs from the one seen
//! last: merely opening or reading it (the host's own copy, a renderer process loading it) is
//! not a rebuild. Then [`Host::reload`] loads and validates the new copy before swapping it in,
//! so a library still being written is refused and the next write is tried again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{DebounceEventResult, DebouncedEventKind, Debouncer, new_debouncer};
use tokio::sync::Notify;

use crate::Host;
use crate::core::lock;

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// A directory could not be watched.
    #[error("cannot watch `{path}` for rebuilds: {reason}")]
    Watch {
        /// The directory (a library's) the watch was for.
        path: PathBuf,
        /// What the file-system notification service said.
        reason: String,
    },
}

/// Reloads the host's extensions when their libraries are rebuilt, until dropped.
pub struct LibraryWatcher {
    _debouncer: Debouncer<RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
    watched: Vec<(String, PathBuf)>,
}

impl Drop for LibraryWatcher {
    fn drop(&mut self) {
        // A reload already begun runs to completion (it is a lifecycle operation of its own).
        self.task.abort();
    }
}

/// Device, inode, size, modification and change times: what tells a rebuilt file from the same
/// file opened again. `None` when it cannot be read (removed, say).
type Identity = Option<(u64, u64, u64, i64, i64, i64, i64)>;

fn identity(path: &Path) -> Identity {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
}

impl LibraryWatcher {
    /// A debounce that lets a linker or a copy finish most writes before the library is tried.
    pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(300);

    /// Watches the library of every extension loaded in `host` now (extensions loaded later are
    /// not watched), reloading one when its file changes and has been quiet for `debounce`.
    /// Must be called within a tokio runtime; reloads run on it.
    pub fn start(host: &Host, debounce: Duration) -> Result<LibraryWatcher, WatchError> {
        // The file each extension was loaded from, by its real path (the event's path).
        let mut by_path: BTreeMap<PathBuf, String> = BTreeMap::new();
        let mut watched = Vec::new();
        for name in host.extensions() {
            let Some(info) = host.library(&name) else { continue };
            let real = std::fs::canonicalize(&info.path)
                .or_else(|_| std::path::absolute(&info.path))
                .map_err(|error| WatchError::Watch { path: info.path.clone(), reason: error.to_string() })?;
            watched.push((name.clone(), real.clone()));
            by_path.insert(real, name);
        }
        let pending: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let wake = Arc::new(Notify::new());
        let handler = {
            let (by_path, pending, wake) = (by_path.clone(), pending.clone(), wake.clone());
            move |result: DebounceEventResult| match result {
                Ok(events) => {
                    let mut changed = lock(&pending);
                    // `AnyContinuous` says writes are still going on: wait for them to stop.
                    let quiet = events.iter().filter(|event| event.kind == DebouncedEventKind::Any);
                    changed.extend(quiet.filter_map(|event| by_path.get(&event.path).cloned()));
                    if !changed.is_empty() {
                        wake.notify_one();
                    }
                }
                Err(error) => tracing::warn!("watching the extension libraries: {error}"),
            }
        };
        let mut debouncer = new_debouncer(debounce, handler)
            .map_err(|error| WatchError::Watch { path: PathBuf::from("."), reason: error.to_string() })?;
        let directories: BTreeSet<PathBuf> =
            by_path.keys().map(|path| path.parent().map_or_else(|| PathBuf::from("/"), Path::to_owned)).collect();
        for directory in &directories {
            debouncer
                .watcher()
                .watch(directory, RecursiveMode::NonRecursive)
                .map_err(|error| WatchError::Watch { path: directory.clone(), reason: error.to_string() })?;
        }
        let mut seen: BTreeMap<String, (PathBuf, Identity)> =
            by_path.iter().map(|(path, name)| (name.clone(), (path.clone(), identity(path)))).collect();
        let host = host.clone();
        let task = tokio::spawn(async move {
            loop {
                wake.notified().await;
                let changed = std::mem::take(&mut *lock(&pending));
                for name in changed {
                    let Some((path, last)) = seen.get_mut(&name) else { continue };
                    let now = identity(path);
                    if now == *last {
                        continue;
                    }
                    *last = now;
                    if now.is_none() {
                        tracing::info!(extension = %name, path = %path.display(), "the library was removed; waiting for a new build");
                        continue;
                    }
                    tracing::info!(extension = %name, path = %path.display(), "the library changed; reloading");
                    // `reload` reports its outcome itself (logged, and as a host event), except
                    // a reload refused outright: the extension was uninstalled, say.
                    if let Err(crate::ReloadError::Host(error)) = host.reload(&name).await {
                        tracing::warn!(extension = %name, "not reloaded: {error}");
                    }
                }
            }
        });
        for (name, path) in &watched {
            tracing::info!(extension = %name, path = %path.display(), "watching for rebuilds");
        }
        Ok(LibraryWatcher { _debouncer: debouncer, task, watched })
    }

    /// The extensions watched, and the files watched for each.
    pub fn watched(&self) -> &[(String, PathBuf)] {
        &self.watched
    }
}
