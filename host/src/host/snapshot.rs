//! What the host reports about itself: states and inspect snapshots.
//!
//! Every report is `#[non_exhaustive]`: a later host may report more (a field, a kind of
//! frame), so an embedder reads them by field and cannot build or fully destructure one.

use std::collections::BTreeMap;

use extension_api::wire::InstanceSnapshot;
use serde::Serialize;

use crate::library::LibraryInfo;
use crate::state::ExtensionState;

/// What deactivation ran into. Everything is cleaned up regardless.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeactivateReport {
    /// Each half whose `deactivate` panicked or overran its time, and how.
    pub problems: Vec<String>,
}

/// Where a frame's renderer halves run.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrameKind {
    /// In the process of each extension's main half.
    InProcess,
    /// In a renderer process of its own.
    ChildProcess,
    /// A web page (a shell connected to [`Host::serve_web`](crate::Host::serve_web)'s server):
    /// each extension's web renderer runs in an iframe there.
    Web,
}

/// Everything the host knows about one extension.
#[non_exhaustive]
#[derive(Debug, Clone, Serialize)]
pub struct ExtensionSnapshot {
    /// What its library says about itself, and where it was loaded from.
    pub info: LibraryInfo,
    /// Where it is in its lifecycle.
    pub state: ExtensionState,
    /// Whether its main half runs in a child process of its own.
    pub isolated: bool,
    /// That process, while it runs.
    pub pid: Option<u32>,
    /// Crashes of its process within the crash budget's window.
    pub crashes: usize,
    /// What went wrong last (a failed deactivation, a crash), even if the state is fine now.
    pub last_problem: Option<String>,
    /// Frames where its renderer half is running.
    pub frames: Vec<u64>,
    /// Frames where its renderer half failed to activate, with the reason.
    pub frame_errors: BTreeMap<u64, String>,
    /// Requests of this extension in flight through the host.
    pub pending_requests: usize,
    /// What its instances report (listeners, handlers, tasks, per-channel counts and
    /// latencies, CPU time of their threads, mailbox and store bytes; every process merged).
    pub instance: Option<InstanceSnapshot>,
    /// Its persisted tier: file, usage, limits, and why it is unavailable if it is.
    pub storage: crate::storage::StorageUsage,
    /// What its isolated process uses (CPU time of all its threads, RSS), while it runs.
    pub process: Option<super::ProcessUsage>,
    /// The watchdog finds one of its instances unresponsive right now (see
    /// [`HostEvent::ExtensionUnresponsive`](crate::HostEvent::ExtensionUnresponsive)).
    pub unresponsive: bool,
    /// How many of its instances did not answer this inspect within its timeout (2 s: a
    /// stopped or stuck process, a page that does not answer), or refused it (deactivated or
    /// disconnected meanwhile): `instance` leaves them out.
    pub unanswered: usize,
}

/// One frame.
#[non_exhaustive]
#[derive(Debug, Clone, Serialize)]
pub struct FrameSnapshot {
    /// The frame's number.
    pub id: u64,
    /// Where its renderer halves run.
    pub kind: FrameKind,
    /// Its renderer process, while it runs.
    pub pid: Option<u32>,
    /// How often its process was restarted after a crash.
    pub restarts: u32,
    /// The last crash, or why it stays stopped.
    pub problem: Option<String>,
    /// A web frame's shell URL.
    pub url: Option<String>,
}

/// The whole host at one moment.
#[non_exhaustive]
#[derive(Debug, Clone, Serialize)]
pub struct HostSnapshot {
    /// Every loaded extension, in name order.
    pub extensions: Vec<ExtensionSnapshot>,
    /// Every open frame, in number order.
    pub frames: Vec<FrameSnapshot>,
}

impl HostSnapshot {
    /// The extension named `name`, if it is loaded.
    pub fn extension(&self, name: &str) -> Option<&ExtensionSnapshot> {
        self.extensions.iter().find(|extension| extension.info.name == name)
    }

    /// Frame `id`, if it is open.
    pub fn frame(&self, id: u64) -> Option<&FrameSnapshot> {
        self.frames.iter().find(|frame| frame.id == id)
    }
}
