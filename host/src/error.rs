//! The host's typed errors. Each message says what was refused and why.

use std::path::PathBuf;

/// Why a library could not be loaded. Nothing else in the host is affected.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot load `{path}`: the file does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot load `{path}`: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("cannot load `{path}`: it is not a shared library ({reason})")]
    NotALibrary { path: PathBuf, reason: String },
    #[error(
        "cannot load `{path}`: the file is truncated: {reason} (was it still being written, or copied only in part?)"
    )]
    Truncated { path: PathBuf, reason: String },
    #[error(
        "cannot load `{path}`: the file changed while it was being copied (is it still being written?); load it again once it is complete"
    )]
    Changing { path: PathBuf },
    #[error(
        "cannot load `{path}`: it exports no `{symbol}` symbol, so it is not an extension (was it built with `extension_api::export_extension!`?)"
    )]
    MissingDescriptor { path: PathBuf, symbol: &'static str },
    #[error(
        "cannot load `{path}`: it was built for extension ABI version {found}, but this host speaks version {expected}; rebuild it against a matching `extension-api`"
    )]
    AbiMismatch { path: PathBuf, expected: u32, found: u32 },
    #[error("cannot load `{path}`: its metadata is invalid: {reason}")]
    InvalidMetadata { path: PathBuf, reason: String },
    #[error(
        "cannot load `{path}`: an extension named `{name}` is already loaded (from `{existing}`); uninstall it first"
    )]
    DuplicateName { path: PathBuf, name: String, existing: PathBuf },
}

/// Why a lifecycle or IPC call on the host was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostError {
    #[error("no extension named `{0}` is loaded")]
    UnknownExtension(String),
    #[error("extension `{name}` is {state}; {operation} needs it {needed}")]
    WrongState { name: String, state: String, operation: &'static str, needed: &'static str },
    #[error("extension `{name}` failed to activate: {reason}")]
    ActivationFailed { name: String, reason: String },
    #[error("no frame {0} is open")]
    UnknownFrame(u64),
    #[error("cannot serialize the value for channel `{channel}`: {reason}")]
    Serialize { channel: String, reason: String },
    #[error("a child process could not be started: {0}")]
    ChildProcess(String),
    #[error(
        "the message on channel `{channel}` is {size} bytes (value and channel name), over the {limit}-byte limit; nobody received it"
    )]
    TooLarge { channel: String, size: usize, limit: usize },
    #[error("extension `{name}` refused the message (status {status})")]
    Refused { name: String, status: u32 },
    /// Uninstalled, but its persisted data could not be deleted.
    #[error("extension `{name}` was uninstalled, but its persisted data was not purged: {reason}")]
    Purge { name: String, reason: String },
    /// A [`crate::HostConfig`] field has a value the host cannot work with.
    #[error("invalid host configuration: `{field}` {reason}")]
    InvalidConfig { field: &'static str, reason: &'static str },
}

/// Why [`crate::Host::reload`] did not leave the new build running.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Nothing was swapped: the version loaded before is kept (and still runs, if it ran).
    #[error("extension `{name}` was not reloaded; the version loaded before is kept: {source}")]
    Load {
        name: String,
        #[source]
        source: LoadError,
    },
    /// Nothing was swapped: the library at the extension's path is now another extension.
    #[error(
        "extension `{name}` was not reloaded; the version loaded before is kept: the library at `{path}` is now extension `{found}`"
    )]
    Renamed { name: String, path: std::path::PathBuf, found: String },
    /// The new build was swapped in (the old version deactivated) but failed to activate: the
    /// extension is left [`crate::ExtensionState::Failed`] until a build that activates.
    #[error(
        "extension `{name}`: the new build was loaded and the old version deactivated, but the new one failed to activate, so the extension is stopped: {reason}"
    )]
    Activation { name: String, reason: String },
    /// The reload itself was refused (no such extension, or it is mid-operation).
    #[error(transparent)]
    Host(#[from] HostError),
}
