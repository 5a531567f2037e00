//! # The extension host
//!
//! Loads extension libraries built against `extension-api`, runs their lifecycle (load,
//! activate, deactivate, uninstall), opens frames for their renderer halves, and routes every
//! extension's IPC inside its own namespace. See `ARCHITECTURE.md` at the repository root.

#![warn(missing_docs)]

mod core;
mod endpoint;
mod error;
mod events;
/// For the fuzz targets in `fuzz/` only: not part of the host's API.
#[doc(hidden)]
pub mod fuzzing;
mod host;
mod library;
mod link;
mod private_dir;
pub mod remote;
mod storage;
pub mod testing;
pub mod watch;

pub use error::{
    ElfPart, HostError, LoadError, MetadataField, MetadataProblem, NotALibraryReason, Operation, Refusal, ReloadError,
};
pub use events::{HostEvent, LogRecord, ObservedBroadcast, OneLine};
pub use host::{
    CrashBudget, DeactivateReport, ExtensionSnapshot, ExtensionState, FrameKind, FrameSnapshot, Host, HostConfig,
    HostSnapshot, ProcessUsage, StorageConfig, default_data_dir,
};
pub use library::{LibraryInfo, check};
pub use storage::StorageUsage;
pub use watch::{LibraryWatcher, WatchError};

pub use extension_api::wire::{
    Busy, ChannelKind, ChannelStats, HalfSnapshot, InstanceSnapshot, MailboxLimit, SlowHandler,
};

/// The version of `extension-api` this host was built with.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");
pub use extension_api::{FrameId, Half, InvokeError, InvokeErrorKind, Sender};
pub use tracing::level_filters::LevelFilter;
