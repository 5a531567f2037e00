//! Loading and validating extension libraries.
//!
//! Every library is loaded from its own uniquely named copy, so loading a rebuilt library from
//! the same path runs the new code, and is never unmapped (unloading a Rust cdylib is unsound
//! once its thread-local destructors may be registered).

use std::path::{Path, PathBuf};

use extension_api::abi::{ABI_VERSION, DESCRIPTOR_SYMBOL, Descriptor, RawSlice};
use serde::Serialize;

use crate::error::LoadError;
use crate::private_dir::PrivateDir;

/// What a library says about itself.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LibraryInfo {
    pub name: String,
    pub version: semver::Version,
    /// Version of `extension-api` the library was built with.
    pub api_version: String,
    pub abi_version: u32,
    pub debug_build: bool,
    pub path: PathBuf,
}

/// A validated library, mapped for the rest of the process's life.
#[derive(Debug, Clone)]
pub(crate) struct Library {
    pub(crate) info: LibraryInfo,
    pub(crate) descriptor: &'static Descriptor,
}

/// Loads and validates the extension library at `path`.
pub(crate) fn load(path: &Path) -> Result<Library, LoadError> {
    check_file(path)?;
    // A copy under a name the dynamic loader has never seen in this process, in a private
    // directory: loading a rebuilt library at the same path runs the new code.
    let unreadable = |error: std::io::Error| LoadError::Unreadable { path: path.to_owned(), reason: error.to_string() };
    let dir = PrivateDir::create().map_err(unreadable)?;
    let copy = dir.path().join(path.file_name().unwrap_or(std::ffi::OsStr::new("extension")));
    std::fs::copy(path, &copy).map_err(unreadable)?;
    // SAFETY: loading a library runs its initialisers. We only load files the embedder asked
    // for; an extension is trusted code in process (isolation is what child processes are for).
    let opened = unsafe { libloading::Library::new(&copy) };
    // The mapping outlives the file: the copy served only to give the loader a fresh name.
    drop(dir);
    let library =
        opened.map_err(|error| LoadError::NotALibrary { path: path.to_owned(), reason: error.to_string() })?;
    // Never unmapped: leaked for the life of the process.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    // SAFETY: we only take the symbol's address here; it is not dereferenced until checked.
    let symbol = unsafe { library.get::<*const u32>(DESCRIPTOR_SYMBOL.as_bytes()) }
        .map_err(|_| LoadError::MissingDescriptor { path: path.to_owned(), symbol: DESCRIPTOR_SYMBOL })?;
    let address: *const u32 = *symbol;
    if address.is_null() {
        return Err(LoadError::MissingDescriptor { path: path.to_owned(), symbol: DESCRIPTOR_SYMBOL });
    }
    // SAFETY: the symbol is an exported static of at least 4 bytes in every ABI version: its
    // first field is the ABI version, which is all we read before the version is known.
    let found = unsafe { address.read_unaligned() };
    if found != ABI_VERSION {
        return Err(LoadError::AbiMismatch { path: path.to_owned(), expected: ABI_VERSION, found });
    }
    // SAFETY: the version matches, so the static has this version's `Descriptor` layout, and
    // it lives as long as the (never unmapped) library.
    let descriptor: &'static Descriptor = unsafe { &*address.cast::<Descriptor>() };
    let info = read_info(path, descriptor)?;
    Ok(Library { info, descriptor })
}

fn check_file(path: &Path) -> Result<(), LoadError> {
    let metadata = std::fs::metadata(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound { path: path.to_owned() },
        _ => LoadError::Unreadable { path: path.to_owned(), reason: error.to_string() },
    })?;
    if !metadata.is_file() {
        return Err(LoadError::NotALibrary { path: path.to_owned(), reason: "it is not a regular file".into() });
    }
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut file| std::io::Read::read(&mut file, &mut magic));
    let read = read.map_err(|error| LoadError::Unreadable { path: path.to_owned(), reason: error.to_string() })?;
    if cfg!(target_os = "linux") && (read < 4 || magic != *b"\x7fELF") {
        return Err(LoadError::NotALibrary {
            path: path.to_owned(),
            reason: "the file has no ELF header; expected a `.so` built from a cdylib crate".into(),
        });
    }
    Ok(())
}

fn read_info(path: &Path, descriptor: &'static Descriptor) -> Result<LibraryInfo, LoadError> {
    let invalid = |reason: String| LoadError::InvalidMetadata { path: path.to_owned(), reason };
    let text = |slice: RawSlice, what: &str| -> Result<String, LoadError> {
        // SAFETY: descriptor strings point to the library's static data, mapped forever.
        let bytes = unsafe { slice.as_bytes() }.ok_or_else(|| invalid(format!("the {what} pointer is invalid")))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| invalid(format!("the {what} is not UTF-8")))
    };
    let name = text(descriptor.name, "name")?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(invalid(format!("the name `{name}` must be non-empty ASCII letters, digits, `-` or `_`")));
    }
    let version = text(descriptor.version, "version")?;
    let version = semver::Version::parse(&version)
        .map_err(|error| invalid(format!("the version `{version}` is not semver: {error}")))?;
    Ok(LibraryInfo {
        name,
        version,
        api_version: text(descriptor.api_version, "api version")?,
        abi_version: descriptor.abi_version,
        debug_build: descriptor.debug_build != 0,
        path: path.to_owned(),
    })
}

/// Loads `path` and reports what it is, for `host check`.
pub fn check(path: &Path) -> Result<LibraryInfo, LoadError> {
    load(path).map(|library| library.info)
}
