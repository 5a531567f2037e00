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
    // (Profilers need the file to name the library's functions: keep it when asked to.)
    if std::env::var_os("EXTENSION_HOST_KEEP_COPIES").is_some() {
        std::mem::forget(dir);
    } else {
        drop(dir);
    }
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
    let mut header = [0u8; 20];
    let read = std::fs::File::open(path).and_then(|mut file| std::io::Read::read(&mut file, &mut header));
    let read = read.map_err(|error| LoadError::Unreadable { path: path.to_owned(), reason: error.to_string() })?;
    if let Some(reason) = wrong_platform(&header[..read]) {
        return Err(LoadError::NotALibrary { path: path.to_owned(), reason });
    }
    Ok(())
}

/// Why a file's header says it cannot be a library for this host, in plain words; `None` if
/// it looks like one (the loader has the last word).
fn wrong_platform(header: &[u8]) -> Option<String> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    match header {
        [0x7f, b'E', b'L', b'F', class, ..] if *class != 2 => {
            Some("it is a 32-bit ELF file; this host loads 64-bit libraries".into())
        }
        [0x7f, b'E', b'L', b'F', _, _, _, _, _, _, _, _, _, _, _, _, _, _, machine_lo, machine_hi, ..] => {
            let machine = u16::from_le_bytes([*machine_lo, *machine_hi]);
            let ours: u16 = match std::env::consts::ARCH {
                "x86_64" => 62,
                "aarch64" => 183,
                "riscv64" => 243,
                _ => return None,
            };
            (machine != ours).then(|| {
                let theirs = match machine {
                    3 => "x86 (32-bit)",
                    40 => "ARM (32-bit)",
                    62 => "x86_64",
                    183 => "aarch64",
                    243 => "riscv64",
                    _ => "another architecture",
                };
                format!(
                    "it is built for {theirs} (ELF machine {machine}); this host runs on {}",
                    std::env::consts::ARCH
                )
            })
        }
        [0x7f, b'E', b'L', b'F', ..] => None,
        [0xcf, 0xfa, 0xed, 0xfe, ..] | [0xce, 0xfa, 0xed, 0xfe, ..] | [0xca, 0xfe, 0xba, 0xbe, ..] => {
            Some("it is a Mach-O file (a macOS `.dylib`); this host runs on Linux and loads `.so` files".into())
        }
        [b'M', b'Z', ..] => {
            Some("it is a Windows executable or DLL; this host runs on Linux and loads `.so` files".into())
        }
        _ => Some("the file has no ELF header; expected a `.so` built from a cdylib crate".into()),
    }
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

#[cfg(test)]
mod tests {
    use super::wrong_platform;

    fn elf(class: u8, machine: u16) -> Vec<u8> {
        let mut header = vec![0x7f, b'E', b'L', b'F', class, 1, 1, 0];
        header.resize(18, 0);
        header.extend_from_slice(&machine.to_le_bytes());
        header
    }

    #[test]
    fn headers_of_other_platforms_are_named() {
        let ours = match std::env::consts::ARCH {
            "aarch64" => 183,
            _ => 62,
        };
        assert_eq!(wrong_platform(&elf(2, ours)), None);
        assert!(wrong_platform(&elf(1, ours)).unwrap().contains("32-bit ELF"));
        let other = if ours == 62 { 183 } else { 62 };
        assert!(wrong_platform(&elf(2, other)).unwrap().contains("ELF machine"));
        assert!(wrong_platform(&[0xcf, 0xfa, 0xed, 0xfe, 7, 0, 0, 1]).unwrap().contains("Mach-O"));
        assert!(wrong_platform(b"MZ\x90\0").unwrap().contains("Windows"));
        assert!(wrong_platform(b"#!/bin/sh\n").unwrap().contains("no ELF header"));
        assert!(wrong_platform(b"").unwrap().contains("no ELF header"));
    }
}
