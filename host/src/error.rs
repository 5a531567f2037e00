//! The host's typed errors. Each message says what was refused and why. Every enum is
//! `#[non_exhaustive]`: a later host may fail in a way this one does not, so a `match` on one
//! needs a `_` arm.

use std::path::PathBuf;

use extension_api::abi;

use crate::state::ExtensionState;

/// Why a library could not be loaded. Nothing else in the host is affected. Every variant
/// names the file it was asked to load (`path`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Nothing is at `path`.
    #[error("cannot load `{path}`: the file does not exist")]
    NotFound {
        /// The file asked for.
        path: PathBuf,
    },
    /// The file is there but could not be read or copied.
    #[error("cannot load `{path}`: {reason}")]
    Unreadable {
        /// The file asked for.
        path: PathBuf,
        /// What the operating system said.
        reason: String,
    },
    /// The file is not a shared library for this platform (or the loader refused it).
    #[error("cannot load `{path}`: it is not a shared library ({reason})")]
    NotALibrary {
        /// The file asked for.
        path: PathBuf,
        /// What is wrong with it, or what the dynamic loader said.
        reason: NotALibraryReason,
    },
    /// A header or segment lies past the end of the file: mapping it would raise SIGBUS.
    #[error(
        "cannot load `{path}`: the file is truncated: {part} ends at byte {end}, past the end of the file ({len} bytes) (was it still being written, or copied only in part?)"
    )]
    Truncated {
        /// The file asked for.
        path: PathBuf,
        /// The first part found past the end.
        part: ElfPart,
        /// Where that part ends, in bytes from the start of the file.
        end: u64,
        /// How long the file is.
        len: u64,
    },
    /// The file changed while the host took its private copy.
    #[error(
        "cannot load `{path}`: the file changed while it was being copied (is it still being written?); load it again once it is complete"
    )]
    Changing {
        /// The file asked for.
        path: PathBuf,
    },
    /// A shared library, but no extension: it exports no descriptor.
    #[error(
        "cannot load `{path}`: it exports no `{symbol}` symbol, so it is not an extension (was it built with `extension_api::export_extension!`?)"
    )]
    MissingDescriptor {
        /// The file asked for.
        path: PathBuf,
        /// The symbol the host looked for.
        symbol: &'static str,
    },
    /// Built against an `extension-api` of another ABI version.
    #[error(
        "cannot load `{path}`: it was built for extension ABI version {found}, but this host speaks version {expected}; rebuild it against a matching `extension-api`"
    )]
    AbiMismatch {
        /// The file asked for.
        path: PathBuf,
        /// The version this host speaks.
        expected: u32,
        /// The version the library was built for.
        found: u32,
    },
    /// The descriptor's name, version or `extension-api` version is unusable.
    #[error("cannot load `{path}`: its metadata is invalid: {problem}")]
    InvalidMetadata {
        /// The file asked for.
        path: PathBuf,
        /// Which field, and what is wrong with it.
        problem: MetadataProblem,
    },
    /// Another loaded library already has this extension's name.
    #[error(
        "cannot load `{path}`: an extension named `{name}` is already loaded (from `{existing}`); uninstall it first"
    )]
    DuplicateName {
        /// The file asked for.
        path: PathBuf,
        /// The extension's name.
        name: String,
        /// Where the loaded extension of that name came from.
        existing: PathBuf,
    },
}

/// A part of an ELF file the host checks lies within the file ([`LoadError::Truncated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ElfPart {
    /// The file header.
    #[error("the ELF header")]
    Header,
    /// The program header table (what the loader maps).
    #[error("the program header table")]
    ProgramHeaders,
    /// One segment's bytes.
    #[error("segment {index} (p_type {kind:#x})")]
    Segment {
        /// Its place in the program header table.
        index: usize,
        /// Its `p_type`.
        kind: u32,
    },
    /// The section header table (the loader does not read it, but a whole file has it).
    #[error("the section header table")]
    SectionHeaders,
}

/// Why a file is not a library this host can load ([`LoadError::NotALibrary`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotALibraryReason {
    /// A directory, a device, a FIFO: nothing the loader maps.
    #[error("it is not a regular file")]
    NotAFile,
    /// A 32-bit ELF file.
    #[error("it is a 32-bit ELF file; this host loads 64-bit libraries")]
    Elf32,
    /// An ELF file for another processor.
    #[error("it is built for {theirs} (ELF machine {machine}); this host runs on {ours}")]
    OtherArchitecture {
        /// The ELF header's machine number.
        machine: u16,
        /// That machine in words (`aarch64`, or "another architecture").
        theirs: &'static str,
        /// The architecture this host runs on.
        ours: &'static str,
    },
    /// A macOS library.
    #[error("it is a Mach-O file (a macOS `.dylib`); this host runs on Linux and loads `.so` files")]
    MachO,
    /// A Windows program or library.
    #[error("it is a Windows executable or DLL; this host runs on Linux and loads `.so` files")]
    Windows,
    /// No kind of executable the host knows.
    #[error("the file has no ELF header; expected a `.so` built from a cdylib crate")]
    NoElfHeader,
    /// Its ELF headers are malformed (which header, and what the parser said).
    #[error("{0}")]
    MalformedHeaders(String),
    /// The dynamic loader refused it (its message).
    #[error("the dynamic loader refused it: {0}")]
    Loader(String),
}

/// What is wrong with the metadata a library's descriptor gives ([`LoadError::InvalidMetadata`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataProblem {
    /// The field's buffer is null with a length, or longer than the ABI allows.
    #[error("the {field} pointer is invalid")]
    InvalidPointer {
        /// The field.
        field: MetadataField,
    },
    /// The field's bytes are not UTF-8.
    #[error("the {field} is not UTF-8")]
    NotUtf8 {
        /// The field.
        field: MetadataField,
    },
    /// The name is empty or has characters other than ASCII letters, digits, `-` and `_` (it
    /// names the namespace, the console's commands and the persisted tier's file).
    #[error("the name `{name}` must be non-empty ASCII letters, digits, `-` or `_`")]
    InvalidName {
        /// The name as the library gives it.
        name: String,
    },
    /// The version is not a semantic version.
    #[error("the version `{version}` is not semver: {reason}")]
    NotSemver {
        /// The version as the library gives it.
        version: String,
        /// What the semver parser said.
        reason: String,
    },
    /// The web asset table says it has entries but its pointer is null or misaligned.
    #[error("the web asset table pointer is invalid (for {count} assets)")]
    InvalidWebAssetTable {
        /// How many assets the descriptor says there are.
        count: usize,
    },
    /// The web asset table is longer than [`extension_api::abi::MAX_WEB_ASSETS`].
    #[error("the library embeds {count} web assets; at most {max} are allowed")]
    TooManyWebAssets {
        /// How many assets the descriptor says there are.
        count: usize,
        /// The most the host accepts.
        max: usize,
    },
    /// A web asset's path or bytes buffer is invalid.
    #[error("web asset {index}'s path or bytes pointer is invalid")]
    InvalidWebAssetPointer {
        /// Its place in the table.
        index: usize,
    },
    /// A web asset's path is not UTF-8.
    #[error("web asset {index}'s path is not UTF-8")]
    WebAssetPathNotUtf8 {
        /// Its place in the table.
        index: usize,
    },
    /// A web asset's path is not a plain relative path.
    #[error("the web asset path `{path}` is refused: {problem}")]
    InvalidWebAssetPath {
        /// The path as the library gives it.
        path: String,
        /// What is wrong with it.
        problem: WebPathProblem,
    },
    /// Two web assets have the same path.
    #[error("the web asset path `{path}` appears twice")]
    DuplicateWebAsset {
        /// The path.
        path: String,
    },
    /// The web renderer has no entry module.
    #[error("the web renderer has no `index.js` (its entry module)")]
    NoWebEntry,
}

/// What is wrong with a web asset's path ([`MetadataProblem::InvalidWebAssetPath`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebPathProblem {
    /// It starts with `/`.
    #[error("it is absolute (paths are relative to the web renderer's directory)")]
    Absolute,
    /// It is empty, or has an empty segment (`a//b`, a trailing `/`).
    #[error("it has an empty segment")]
    EmptySegment,
    /// It has a `.` or `..` segment.
    #[error("it has a `.` or `..` segment")]
    DotSegment,
}

/// A text field of a library's descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataField {
    /// The extension's name.
    #[error("name")]
    Name,
    /// The extension's version.
    #[error("version")]
    Version,
    /// The version of `extension-api` it was built with.
    #[error("api version")]
    ApiVersion,
}

/// Why a lifecycle or IPC call on the host was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// No extension of this name is loaded.
    #[error("no extension named `{0}` is loaded")]
    UnknownExtension(String),
    /// The extension's state does not allow the operation (it is not active, or mid-operation).
    #[error("extension `{name}` is {state}; {operation} needs it {needs}", needs = operation.needs())]
    WrongState {
        /// The extension.
        name: String,
        /// Its state when the call was made.
        state: ExtensionState,
        /// What was asked of it.
        operation: Operation,
    },
    /// Activation did not finish: the extension is left [`ExtensionState::Failed`].
    #[error("extension `{name}` failed to activate: {reason}")]
    ActivationFailed {
        /// The extension.
        name: String,
        /// Its `activate`'s error or panic, a timeout, or why its process did not start.
        reason: String,
    },
    /// The web server could not start (see [`Host::serve_web`](crate::Host::serve_web)).
    #[error("cannot serve web frames: {0}")]
    WebServer(#[from] crate::web::WebStartError),
    /// No frame of this number is open.
    #[error("no frame {0} is open")]
    UnknownFrame(u64),
    /// The value could not be encoded as MessagePack.
    #[error("cannot serialize the value for channel `{channel}`: {reason}")]
    Serialize {
        /// The channel it was for.
        channel: String,
        /// What the serializer said.
        reason: String,
    },
    /// A renderer process or an isolated extension's process could not be started.
    #[error("a child process could not be started: {0}")]
    ChildProcess(ChildStartError),
    /// The message is over [`extension_api::MAX_MESSAGE`]; nobody received it.
    #[error(
        "the message on channel `{channel}` is {size} bytes (value and channel name), over the {limit}-byte limit; nobody received it"
    )]
    TooLarge {
        /// Its channel.
        channel: String,
        /// Its channel name and value, in bytes.
        size: usize,
        /// The most a message may be.
        limit: usize,
    },
    /// The extension's namespace did not take the host's message.
    #[error("extension `{name}` did not take the message: {reason}")]
    Refused {
        /// The extension.
        name: String,
        /// Why.
        reason: Refusal,
    },
    /// Uninstalled, but its persisted data could not be deleted.
    #[error("extension `{name}` was uninstalled, but its persisted data was not purged: {reason}")]
    Purge {
        /// The extension.
        name: String,
        /// Why the database file stays (another host holds it, or it could not be removed).
        reason: String,
    },
    /// A [`crate::HostConfig`] field has a value the host cannot work with.
    #[error("invalid host configuration: `{field}` {reason}")]
    InvalidConfig {
        /// The field, as it is spelled in [`crate::HostConfig`] (`storage.total_limit`).
        field: &'static str,
        /// What is wrong with its value.
        reason: &'static str,
    },
}

/// What a call refused with [`HostError::WrongState`] asked of the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Operation {
    /// [`crate::Host::activate`].
    #[error("activate")]
    Activate,
    /// [`crate::Host::deactivate`].
    #[error("deactivate")]
    Deactivate,
    /// [`crate::Host::set_isolated`].
    #[error("changing isolation")]
    ChangeIsolation,
    /// A call into its namespace: a broadcast, an invoke, a store or storage read.
    #[error("this call")]
    Call,
}

impl Operation {
    /// The states the operation needs, as a phrase ("active").
    pub fn needs(self) -> &'static str {
        match self {
            Operation::Activate => "loaded, inactive or failed",
            Operation::Deactivate | Operation::Call => "active",
            Operation::ChangeIsolation => "not running",
        }
    }
}

/// Why an extension's namespace did not take a message from the host ([`HostError::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// It stopped (deactivating, or its process ended) between the host's check and the send,
    /// or it stopped answering the host's question.
    #[error("it is not running (deactivating, deactivated, or its process ended)")]
    NotRunning,
    /// A receiving half's mailbox is full.
    #[error("a receiving half's mailbox is full")]
    Busy,
    /// The half it was for is not there (a frame closed).
    #[error("the half it was for is not running")]
    NoSuchHalf,
    /// The receiving side refused it as malformed.
    #[error("the receiving side found it malformed")]
    Invalid,
    /// The receiving side panicked (the panic was caught).
    #[error("the receiving side panicked")]
    Panicked,
    /// The receiving side answered in a way this host does not know (a newer library or
    /// child): the refusal is logged with its code.
    #[error("the receiving side refused it for a reason this host does not know")]
    Unknown,
}

impl Refusal {
    /// The refusal a status from the C boundary or a child stands for. The caller handles
    /// [`abi::status::OK`] and [`abi::status::TOO_LARGE`] (which is [`HostError::TooLarge`])
    /// first; any other code reads as [`Refusal::Unknown`].
    pub(crate) fn of_status(status: u32) -> Refusal {
        match status {
            abi::status::DEACTIVATED | abi::status::UNKNOWN_INSTANCE => Refusal::NotRunning,
            abi::status::BUSY => Refusal::Busy,
            abi::status::NO_SUCH_PEER => Refusal::NoSuchHalf,
            abi::status::INVALID => Refusal::Invalid,
            abi::status::PANICKED => Refusal::Panicked,
            unknown => {
                tracing::warn!(
                    status = unknown,
                    "the host's message was refused with a status this host does not know"
                );
                Refusal::Unknown
            }
        }
    }
}

/// Why [`crate::Host::reload`] did not leave the new build running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// Nothing was swapped: the version loaded before is kept (and still runs, if it ran).
    #[error("extension `{name}` was not reloaded; the version loaded before is kept: {source}")]
    Load {
        /// The extension.
        name: String,
        /// Why the library at its path did not load.
        #[source]
        source: LoadError,
    },
    /// Nothing was swapped: the library at the extension's path is now another extension.
    #[error(
        "extension `{name}` was not reloaded; the version loaded before is kept: the library at `{path}` is now extension `{found}`"
    )]
    Renamed {
        /// The extension.
        name: String,
        /// Its library's path.
        path: std::path::PathBuf,
        /// The extension the library there now is.
        found: String,
    },
    /// The new build was swapped in (the old version deactivated) but failed to activate: the
    /// extension is left [`crate::ExtensionState::Failed`] until a build that activates.
    #[error(
        "extension `{name}`: the new build was loaded and the old version deactivated, but the new one failed to activate, so the extension is stopped: {reason}"
    )]
    Activation {
        /// The extension.
        name: String,
        /// Why the new build did not activate.
        reason: String,
    },
    /// The reload itself was refused (no such extension, or it is mid-operation).
    #[error(transparent)]
    Host(#[from] HostError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_state_says_the_state_the_operation_and_what_it_needs() {
        let error = HostError::WrongState {
            name: "probe".into(),
            state: ExtensionState::Inactive,
            operation: Operation::Deactivate,
        };
        assert_eq!(error.to_string(), "extension `probe` is inactive; deactivate needs it active");
        let error = HostError::WrongState {
            name: "probe".into(),
            state: ExtensionState::Active,
            operation: Operation::ChangeIsolation,
        };
        assert_eq!(error.to_string(), "extension `probe` is active; changing isolation needs it not running");
    }

    #[test]
    fn every_refusal_status_has_its_own_reason_and_an_unknown_one_reads_as_unknown() {
        let cases = [
            (abi::status::DEACTIVATED, Refusal::NotRunning),
            (abi::status::UNKNOWN_INSTANCE, Refusal::NotRunning),
            (abi::status::BUSY, Refusal::Busy),
            (abi::status::NO_SUCH_PEER, Refusal::NoSuchHalf),
            (abi::status::INVALID, Refusal::Invalid),
            (abi::status::PANICKED, Refusal::Panicked),
            (u32::MAX, Refusal::Unknown),
        ];
        for (status, reason) in cases {
            assert_eq!(Refusal::of_status(status), reason, "status {status}");
        }
        let error = HostError::Refused { name: "probe".into(), reason: Refusal::Busy };
        assert_eq!(error.to_string(), "extension `probe` did not take the message: a receiving half's mailbox is full");
    }
}

/// Why a child process (a renderer process, an isolated extension's process) could not be
/// started: [`HostError::ChildProcess`]. The host ends such a child; nothing else is affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChildStartError {
    /// The program could not be run, or its socket made.
    #[error("cannot start the child process `{}`: {reason}", program.display())]
    Start {
        /// [`crate::HostConfig::child_program`].
        program: std::path::PathBuf,
        /// What the operating system said.
        reason: String,
    },
    /// The child ended before it connected.
    #[error("the child process {how} before connecting")]
    EndedEarly {
        /// How it ended ("exited with status 1", "killed by signal 9 (SIGKILL)").
        how: String,
    },
    /// It did not connect and say hello in time.
    #[error("the child process did not complete the handshake within {timeout:?}")]
    NoHello {
        /// The handshake's time limit.
        timeout: std::time::Duration,
    },
    /// It speaks another version of the child protocol (another build of the host).
    #[error("the child speaks protocol version {child}, this host speaks {host}")]
    ProtocolMismatch {
        /// The child's version.
        child: u32,
        /// The host's.
        host: u32,
    },
    /// It presented another token than the one it was started with: something else took its
    /// place on the socket.
    #[error("the child presented the wrong token")]
    WrongToken,
    /// Its first packet was not a valid hello.
    #[error("the child's hello was not valid: {reason}")]
    BadHello {
        /// What was wrong with it.
        reason: String,
    },
    /// The connection failed during the handshake (or the host could not start its reader).
    #[error("the child's connection failed during the handshake: {reason}")]
    Connection {
        /// What the operating system said.
        reason: String,
    },
}
