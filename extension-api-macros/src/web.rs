//! `web_assets!`: embeds an extension's web renderer directory in its library.
//!
//! The directory is walked at compile time; each regular file becomes one
//! `abi::WebAsset { path, bytes }` whose bytes are an `include_bytes!` of the file's absolute
//! path (so cargo rebuilds the crate when a file changes). Paths are relative to the
//! directory, `/`-separated, sorted. Anything the host could not serve faithfully, or that is
//! likely a mistake, is a compile error naming the path: a missing directory, no `index.js`
//! at its root, a symbolic link, a name that is not UTF-8 or starts with `.`, a file over
//! 16 MiB, more than 4096 files.
//!
//! Cargo learns of each embedded file through `include_bytes!`, so changing one rebuilds the
//! crate; a file added to (or removed from) the directory is not seen until something else
//! changes. Stable Rust has no way for a proc macro to track a directory (`include_dir` has
//! the same limit on stable; its `nightly` feature uses the unstable
//! `proc_macro::tracked_path`). What stable cargo does offer is a build script's `cargo::rerun-if-changed=DIR`, which watches a whole directory: the docs and
//! the samples use that. `include_dir` itself is not used: it builds Rust values of its own
//! types, where the library must export a `#[repr(C)]` table for the host to read across the
//! ABI, and it would embed symbolic links' targets, hidden files and any size silently.

use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream as TokenStream2, TokenTree};
use quote::quote;
use syn::LitStr;

/// The largest file embedded (16 MiB, `extension_api::abi::MAX_MESSAGE`).
pub(crate) const MAX_FILE: u64 = 16 << 20;
/// The most files embedded (`extension_api::abi::MAX_WEB_ASSETS`, which the host enforces).
pub(crate) const MAX_FILES: usize = 4096;
/// The entry module (`extension_api::abi::WEB_ENTRY`).
pub(crate) const ENTRY: &str = "index.js";

/// One file to embed.
#[derive(Debug, PartialEq)]
pub(crate) struct Asset {
    /// Relative to the directory, `/`-separated.
    pub(crate) path: String,
    /// Where `include_bytes!` reads it.
    pub(crate) absolute: String,
}

/// Why a web renderer directory cannot be embedded. Paths are as the author wrote them
/// (relative to the crate), so the message points at the file to fix.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum WebDirError {
    /// No such directory.
    #[error(
        "the web renderer directory `{0}` does not exist (it is relative to the crate's directory, where Cargo.toml is)"
    )]
    Missing(String),
    /// The path names a file, not a directory.
    #[error("the web renderer directory `{0}` is not a directory")]
    NotADirectory(String),
    /// Reading the directory failed.
    #[error("cannot read `{path}` of the web renderer: {reason}")]
    Unreadable { path: String, reason: String },
    /// A symbolic link (the directory itself or anything in it).
    #[error("`{0}` in the web renderer is a symbolic link; copy the file in instead (links are not embedded)")]
    Symlink(String),
    /// A name that is not UTF-8 (it could not be served under a URL path).
    #[error("`{0}` in the web renderer has a name that is not UTF-8")]
    NotUtf8(String),
    /// A name starting with `.` (editor backups, `.git`, `.env`: never served by accident).
    #[error("`{0}` in the web renderer starts with `.`; hidden files are not embedded, move or rename it")]
    Hidden(String),
    /// Neither a file nor a directory (a FIFO, a socket, a device).
    #[error("`{0}` in the web renderer is not a regular file")]
    NotAFile(String),
    /// A file over [`MAX_FILE`].
    #[error("`{path}` in the web renderer is {len} bytes; a web asset may be at most 16 MiB")]
    TooLarge { path: String, len: u64 },
    /// More than [`MAX_FILES`] files.
    #[error("the web renderer directory `{dir}` has {count} files; at most 4096 are embedded")]
    TooMany { dir: String, count: usize },
    /// No `index.js` at the root.
    #[error("the web renderer directory `{0}` has no `index.js` at its root (the entry module the host imports)")]
    NoEntry(String),
}

/// Expands `web_assets!(CRATE_PATH, "DIR")` to a `&'static [CRATE_PATH::abi::WebAsset]`.
pub(crate) fn expand(input: TokenStream2) -> syn::Result<TokenStream2> {
    // The crate path (`$crate` from `export_extension!`) is everything before the first comma.
    let mut tokens = input.into_iter();
    let mut krate = TokenStream2::new();
    for token in tokens.by_ref() {
        if matches!(&token, TokenTree::Punct(punct) if punct.as_char() == ',') {
            break;
        }
        krate.extend([token]);
    }
    let dir: LitStr = syn::parse2(tokens.collect()).map_err(|error| {
        syn::Error::new(
            error.span(),
            "`web = ...` takes a string literal: the web renderer's directory, relative to the crate (`web = \"web\"`)",
        )
    })?;
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .ok_or_else(|| syn::Error::new(dir.span(), "CARGO_MANIFEST_DIR is not set: build the crate with cargo"))?;
    let assets = collect(Path::new(&manifest), &dir.value()).map_err(|error| syn::Error::new(dir.span(), error))?;
    let entries = assets.iter().map(|Asset { path, absolute }| {
        quote! {
            #krate::abi::WebAsset {
                path: #krate::abi::static_str(#path),
                bytes: #krate::abi::RawSlice::new(::core::include_bytes!(#absolute)),
            }
        }
    });
    Ok(quote! {{
        const WEB_ASSETS: &[#krate::abi::WebAsset] = &[#(#entries),*];
        WEB_ASSETS
    }})
}

/// The files of the directory `dir` (relative to `manifest`), sorted by path.
pub(crate) fn collect(manifest: &Path, dir: &str) -> Result<Vec<Asset>, WebDirError> {
    let root = manifest.join(dir);
    let shown = |relative: &str| if relative.is_empty() { dir.to_owned() } else { format!("{dir}/{relative}") };
    let metadata = std::fs::symlink_metadata(&root).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => WebDirError::Missing(dir.to_owned()),
        _ => WebDirError::Unreadable { path: dir.to_owned(), reason: error.to_string() },
    })?;
    if metadata.file_type().is_symlink() {
        return Err(WebDirError::Symlink(dir.to_owned()));
    }
    if !metadata.is_dir() {
        return Err(WebDirError::NotADirectory(dir.to_owned()));
    }
    let root = root
        .canonicalize()
        .map_err(|error| WebDirError::Unreadable { path: dir.to_owned(), reason: error.to_string() })?;
    let mut assets = Vec::new();
    let mut pending: Vec<(PathBuf, String)> = vec![(root, String::new())];
    while let Some((directory, relative)) = pending.pop() {
        let unreadable =
            |error: std::io::Error| WebDirError::Unreadable { path: shown(&relative), reason: error.to_string() };
        for entry in std::fs::read_dir(&directory).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(WebDirError::NotUtf8(shown(&join(&relative, &name.to_string_lossy()))));
            };
            let path = join(&relative, name);
            if name.starts_with('.') {
                return Err(WebDirError::Hidden(shown(&path)));
            }
            let kind = entry
                .file_type()
                .map_err(|error| WebDirError::Unreadable { path: shown(&path), reason: error.to_string() })?;
            if kind.is_symlink() {
                return Err(WebDirError::Symlink(shown(&path)));
            }
            if kind.is_dir() {
                pending.push((entry.path(), path));
                continue;
            }
            if !kind.is_file() {
                return Err(WebDirError::NotAFile(shown(&path)));
            }
            let len = entry
                .metadata()
                .map_err(|error| WebDirError::Unreadable { path: shown(&path), reason: error.to_string() })?
                .len();
            if len > MAX_FILE {
                return Err(WebDirError::TooLarge { path: shown(&path), len });
            }
            let absolute = entry.path();
            let Some(absolute) = absolute.to_str() else {
                return Err(WebDirError::NotUtf8(absolute.to_string_lossy().into_owned()));
            };
            assets.push(Asset { path, absolute: absolute.to_owned() });
        }
    }
    if assets.len() > MAX_FILES {
        return Err(WebDirError::TooMany { dir: dir.to_owned(), count: assets.len() });
    }
    if !assets.iter().any(|asset| asset.path == ENTRY) {
        return Err(WebDirError::NoEntry(dir.to_owned()));
    }
    assets.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(assets)
}

fn join(relative: &str, name: &str) -> String {
    if relative.is_empty() { name.to_owned() } else { format!("{relative}/{name}") }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use super::{WebDirError, collect};

    /// A fresh directory holding `web/` with `files` (path, contents) in it.
    fn crate_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("web")).unwrap();
        for (path, contents) in files {
            let path = dir.path().join("web").join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        dir
    }

    fn paths(dir: &Path) -> Vec<String> {
        collect(dir, "web").unwrap().into_iter().map(|asset| asset.path).collect()
    }

    #[test]
    fn files_are_listed_sorted_with_slashes_and_absolute_sources() {
        let dir = crate_with(&[("index.js", b"x"), ("b/z.css", b""), ("a.txt", b""), ("b/a/deep.js", b"")]);
        assert_eq!(paths(dir.path()), ["a.txt", "b/a/deep.js", "b/z.css", "index.js"]);
        let assets = collect(dir.path(), "web").unwrap();
        let canonical = dir.path().canonicalize().unwrap().join("web/b/a/deep.js");
        assert_eq!(assets[1].absolute, canonical.to_str().unwrap());
        // An empty directory adds nothing.
        std::fs::create_dir(dir.path().join("web/empty")).unwrap();
        assert_eq!(paths(dir.path()).len(), 4);
    }

    #[test]
    fn a_missing_directory_or_a_file_is_refused() {
        let dir = crate_with(&[("index.js", b"")]);
        assert_eq!(collect(dir.path(), "nothing").unwrap_err(), WebDirError::Missing("nothing".into()));
        assert_eq!(collect(dir.path(), "web/index.js").unwrap_err(), WebDirError::NotADirectory("web/index.js".into()));
        let message = collect(dir.path(), "nothing").unwrap_err().to_string();
        assert!(message.contains("`nothing` does not exist"), "{message}");
    }

    #[test]
    fn no_index_js_at_the_root_is_refused() {
        let dir = crate_with(&[("sub/index.js", b""), ("main.js", b"")]);
        let error = collect(dir.path(), "web").unwrap_err();
        assert_eq!(error, WebDirError::NoEntry("web".into()));
        assert!(error.to_string().contains("no `index.js` at its root"), "{error}");
    }

    #[test]
    fn symbolic_links_are_refused_by_path() {
        let dir = crate_with(&[("index.js", b""), ("real.js", b"")]);
        std::os::unix::fs::symlink("real.js", dir.path().join("web/link.js")).unwrap();
        assert_eq!(collect(dir.path(), "web").unwrap_err(), WebDirError::Symlink("web/link.js".into()));
        let other = crate_with(&[("index.js", b"")]);
        std::os::unix::fs::symlink(other.path().join("web"), dir.path().join("linked")).unwrap();
        assert_eq!(collect(dir.path(), "linked").unwrap_err(), WebDirError::Symlink("linked".into()));
    }

    #[test]
    fn hidden_names_are_refused_at_any_depth() {
        let dir = crate_with(&[("index.js", b""), ("sub/.env", b"SECRET=1")]);
        let error = collect(dir.path(), "web").unwrap_err();
        assert_eq!(error, WebDirError::Hidden("web/sub/.env".into()));
        assert!(error.to_string().contains("`web/sub/.env`"), "{error}");
        let dir = crate_with(&[("index.js", b""), (".git/config", b"")]);
        assert_eq!(collect(dir.path(), "web").unwrap_err(), WebDirError::Hidden("web/.git".into()));
    }

    #[test]
    fn names_that_are_not_utf8_are_refused() {
        let dir = crate_with(&[("index.js", b"")]);
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.js");
        std::fs::write(dir.path().join("web").join(name), b"").unwrap();
        let Err(WebDirError::NotUtf8(path)) = collect(dir.path(), "web") else { panic!() };
        assert_eq!(path, "web/caf\u{fffd}.js");
    }

    #[test]
    fn files_over_16_mib_are_refused_and_16_mib_is_fine() {
        let dir = crate_with(&[("index.js", b"")]);
        let file = std::fs::File::create(dir.path().join("web/big.bin")).unwrap();
        file.set_len(16 << 20).unwrap();
        assert_eq!(paths(dir.path()), ["big.bin", "index.js"]);
        file.set_len((16 << 20) + 1).unwrap();
        let error = collect(dir.path(), "web").unwrap_err();
        assert_eq!(error, WebDirError::TooLarge { path: "web/big.bin".into(), len: (16 << 20) + 1 });
    }

    #[test]
    fn a_fifo_is_refused() {
        let dir = crate_with(&[("index.js", b"")]);
        let status = std::process::Command::new("mkfifo").arg(dir.path().join("web/pipe")).status().unwrap();
        assert!(status.success());
        assert_eq!(collect(dir.path(), "web").unwrap_err(), WebDirError::NotAFile("web/pipe".into()));
    }

    #[test]
    fn more_than_4096_files_are_refused() {
        let dir = crate_with(&[("index.js", b"")]);
        for i in 0..4096 {
            std::fs::write(dir.path().join(format!("web/{i}.txt")), b"").unwrap();
        }
        assert_eq!(collect(dir.path(), "web").unwrap_err(), WebDirError::TooMany { dir: "web".into(), count: 4097 });
    }
}
