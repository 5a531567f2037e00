//! # The extension host
//!
//! Loads extension libraries built against `extension-api`, runs their lifecycle (load,
//! activate, deactivate, uninstall), opens frames for their renderer halves, and routes every
//! extension's IPC inside its own namespace. See `ARCHITECTURE.md` at the repository root.

#![warn(missing_docs)]

// The message core, in layers that call one way (see ARCHITECTURE.md):
// inbound (`inbound`: the C callbacks, a child connection's reader) -> routing (`link`,
// `requests`) -> `endpoint` -> `transport` -> `remote` (the child protocol's plumbing);
// `instances` and `child_process` join them when an instance starts or stops.
mod child_process;
mod core;
mod endpoint;
mod error;
mod events;
/// For the fuzz targets in `fuzz/` only: not part of the host's API.
#[doc(hidden)]
pub mod fuzzing;
mod host;
mod inbound;
mod instances;
mod keys;
mod library;
mod library_instance;
mod link;
mod private_dir;
mod remote;
mod requests;
mod state;
mod storage;
pub mod testing;
mod transport;
pub mod watch;
mod web;
mod web_assets;

/// The child protocol's plain data, for tooling that speaks it (the suite's rogue child, the
/// benchmark, the fuzz targets): no part of the host's API.
#[doc(hidden)]
pub mod child_protocol {
    pub use crate::remote::protocol::*;
}

/// Runs this process as a child process of a host: the `child --socket PATH --token TOKEN`
/// subcommand that [`HostConfig::child_program`] is started with (the `host` binary's
/// `host child`; an embedding application dispatches that subcommand here). Serves the host
/// until it goes away, then exits; returns only if it could not start. The protocol it speaks
/// is no part of the host's API.
pub fn run_child(socket: &std::path::Path, token: &str) -> std::process::ExitCode {
    remote::child::run(socket, token)
}

pub use error::{
    ChildStartError, ElfPart, HostError, LoadError, MetadataField, MetadataProblem, NotALibraryReason, Operation,
    Refusal, ReloadError, WebPathProblem,
};
pub use events::{HostEvent, LogRecord, ObservedBroadcast, OneLine};
pub use host::{
    CrashBudget, DeactivateReport, ExtensionSnapshot, ExtensionState, FrameKind, FrameSnapshot, Host, HostConfig,
    HostSnapshot, ProcessUsage, StorageConfig, default_data_dir,
};
#[doc(hidden)]
pub use library::web_assets_of;
pub use library::{LibraryInfo, check};
pub use storage::StorageUsage;
pub use watch::{LibraryWatcher, WatchError};
pub use web::{WebConfig, WebServer, WebStartError};
pub use web_assets::WebAssets;

pub use extension_api::wire::{
    Busy, ChannelKind, ChannelStats, HalfSnapshot, InstanceSnapshot, MailboxLimit, SlowHandler,
};

/// The version of `extension-api` this host was built with.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");
pub use extension_api::{FrameId, Half, InvokeError, InvokeErrorKind, Sender};
pub use tracing::level_filters::LevelFilter;
