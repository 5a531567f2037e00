//! The files of an extension's web renderer, as its library embeds them
//! (`export_extension!(..., web = "DIR")`): read and validated once at load
//! ([`crate::library`]), served by the web transport.

use std::collections::BTreeMap;

use extension_api::abi::WEB_ENTRY;

/// An extension's web renderer: file paths (relative, `/`-separated, without a leading `/`)
/// to their bytes, which live in the library's static data (the library is never unmapped).
/// It always has the entry module, [`WebAssets::ENTRY`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebAssets {
    files: BTreeMap<String, &'static [u8]>,
}

impl WebAssets {
    /// The entry module's path: an ES module exporting `activate(ipc)`.
    pub const ENTRY: &'static str = WEB_ENTRY;

    /// Assets already validated (by [`crate::library`]): `files` has [`Self::ENTRY`].
    pub(crate) fn new(files: BTreeMap<String, &'static [u8]>) -> Self {
        debug_assert!(files.contains_key(Self::ENTRY));
        WebAssets { files }
    }

    /// The bytes of the file at `path` (`index.js`, `css/style.css`: no leading `/`).
    pub fn get(&self, path: &str) -> Option<&'static [u8]> {
        self.files.get(path).copied()
    }

    /// Every file's path, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// How many files there are (at least 1: the entry module).
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Never true: there is always the entry module (here for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}
