//! Loading and validating extension libraries.
//!
//! Every library is loaded from its own uniquely named copy, so loading a rebuilt library from
//! the same path runs the new code, and is never unmapped (unloading a Rust cdylib is unsound
//! once its thread-local destructors may be registered).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use extension_api::abi::{ABI_VERSION, DESCRIPTOR_SYMBOL, Descriptor, MAX_WEB_ASSETS, RawSlice, WEB_ENTRY, WebAsset};
use serde::Serialize;

use crate::error::{ElfPart, LoadError, MetadataField, MetadataProblem, NotALibraryReason, WebPathProblem};
use crate::private_dir::PrivateDir;
use crate::web_assets::WebAssets;

/// What a library says about itself.
#[non_exhaustive]
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LibraryInfo {
    /// The extension's name: its namespace, unique among loaded extensions.
    pub name: String,
    /// The extension's own version.
    pub version: semver::Version,
    /// Version of `extension-api` the library was built with.
    pub api_version: String,
    /// The C ABI version it speaks (equal to the host's, or it was refused).
    pub abi_version: u32,
    /// Whether it was built without optimisations (a debug build).
    pub debug_build: bool,
    /// Whether it embeds a web renderer (`export_extension!(..., web = "DIR")`), which runs in
    /// web frames.
    pub web_renderer: bool,
    /// The file it was loaded from (not the private copy the host mapped).
    pub path: PathBuf,
}

/// A validated library, mapped for the rest of the process's life.
#[derive(Debug, Clone)]
pub(crate) struct Library {
    pub(crate) info: LibraryInfo,
    pub(crate) descriptor: &'static Descriptor,
    /// Its web renderer's files, read and validated at load; `None` when it has none.
    web_assets: Option<Arc<WebAssets>>,
    /// The private copy's directory, kept for profilers (`EXTENSION_HOST_KEEP_COPIES`).
    kept_copy: Option<PathBuf>,
}

impl Library {
    /// Its web renderer's files, if it has a web renderer.
    pub(crate) fn web_assets(&self) -> Option<&Arc<WebAssets>> {
        self.web_assets.as_ref()
    }

    /// For a library refused after loading (a duplicate name): removes its kept copy, if any.
    pub(crate) fn discard_copy(&self) {
        if let Some(dir) = &self.kept_copy {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Loads and validates the extension library at `path`.
///
/// The bytes loaded are a private copy, taken once and validated before `dlopen`: a file cut
/// short (an interrupted copy, a library cargo is still writing) is refused with the reason
/// instead of faulting on first access, and the original changing afterwards does not matter.
/// The copy, and its directory, are removed whatever the outcome (kept after a successful load
/// only when `EXTENSION_HOST_KEEP_COPIES` is set).
pub(crate) fn load(path: &Path) -> Result<Library, LoadError> {
    check_file(path)?;
    // A copy under a name the dynamic loader has never seen in this process, in a private
    // directory: loading a rebuilt library at the same path runs the new code. Dropping `dir`
    // removes it: on every error below, and after the load (the mapping outlives the file).
    let dir = PrivateDir::create().map_err(|error| unreadable(path, &error))?;
    let copy = dir.path().join(path.file_name().unwrap_or(std::ffi::OsStr::new("extension")));
    snapshot(path, &copy)?;
    validate(path, &copy)?;
    let mut library = open(path, &copy)?;
    // Profilers need the file to name the library's functions: keep it when asked to.
    if std::env::var_os("EXTENSION_HOST_KEEP_COPIES").is_some() {
        library.kept_copy = Some(dir.keep());
    }
    Ok(library)
}

fn unreadable(path: &Path, error: &std::io::Error) -> LoadError {
    LoadError::Unreadable { path: path.to_owned(), reason: error.to_string() }
}

fn check_file(path: &Path) -> Result<(), LoadError> {
    // `metadata` follows symbolic links, and does not block on a FIFO as opening one would.
    let metadata = std::fs::metadata(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound { path: path.to_owned() },
        _ => unreadable(path, &error),
    })?;
    if !metadata.is_file() {
        return Err(LoadError::NotALibrary { path: path.to_owned(), reason: NotALibraryReason::NotAFile });
    }
    Ok(())
}

/// Copies `path` to `copy` (a new file in our private directory, which nobody else can
/// change), refusing a file that changed while it was read: the copy is one consistent state.
fn snapshot(path: &Path, copy: &Path) -> Result<(), LoadError> {
    let mut original = std::fs::File::open(path).map_err(|error| unreadable(path, &error))?;
    let before = original.metadata().map_err(|error| unreadable(path, &error))?;
    if !before.is_file() {
        return Err(LoadError::NotALibrary { path: path.to_owned(), reason: NotALibraryReason::NotAFile });
    }
    let mut target = std::fs::File::create_new(copy).map_err(|error| unreadable(path, &error))?;
    let copied = std::io::copy(&mut original, &mut target).map_err(|error| unreadable(path, &error))?;
    let after = original.metadata().map_err(|error| unreadable(path, &error))?;
    let modified = |metadata: &std::fs::Metadata| metadata.modified().ok();
    if copied != before.len() || after.len() != before.len() || modified(&after) != modified(&before) {
        return Err(LoadError::Changing { path: path.to_owned() });
    }
    Ok(())
}

/// Checks that the copy is a library for this platform, whole: its ELF header, program headers
/// and section headers, and every segment's bytes, lie within the file. (The dynamic loader
/// maps segments past the end of a file without complaint; touching them raises SIGBUS.)
fn validate(path: &Path, copy: &Path) -> Result<(), LoadError> {
    use std::io::Read;
    let file = std::fs::File::open(copy).map_err(|error| unreadable(path, &error))?;
    let len = file.metadata().map_err(|error| unreadable(path, &error))?.len();
    let mut header = Vec::with_capacity(20);
    (&file).take(20).read_to_end(&mut header).map_err(|error| unreadable(path, &error))?;
    if let Some(reason) = wrong_platform(&header) {
        return Err(LoadError::NotALibrary { path: path.to_owned(), reason });
    }
    if !cfg!(target_os = "linux") {
        return Ok(());
    }
    elf_layout(&file, len).map_err(|problem| match problem {
        Layout::Truncated { part, end } => LoadError::Truncated { path: path.to_owned(), part, end, len },
        Layout::Invalid(reason) => {
            LoadError::NotALibrary { path: path.to_owned(), reason: NotALibraryReason::MalformedHeaders(reason) }
        }
    })
}

/// What is wrong with an ELF file's layout.
#[derive(Debug, PartialEq)]
enum Layout {
    /// `part` ends at byte `end`, past the end of the file.
    Truncated { part: ElfPart, end: u64 },
    /// The headers themselves are malformed.
    Invalid(String),
}

/// Checks the layout of a 64-bit ELF file of `len` bytes (read through `object`, which reads
/// only the headers it is asked for).
fn elf_layout(file: &std::fs::File, len: u64) -> Result<(), Layout> {
    use object::elf::FileHeader64;
    use object::read::elf::{FileHeader, ProgramHeader};

    let past_end = |part: ElfPart, end: u64| Layout::Truncated { part, end };
    let invalid = |what: &str, error: object::Error| Layout::Invalid(format!("{what}: {error}"));
    let table_end = |offset: u64, count: u64, size: u16| {
        count.checked_mul(u64::from(size)).and_then(|bytes| bytes.checked_add(offset))
    };
    let overflow = |what: &str| Layout::Invalid(format!("{what} ends past 2^64 bytes"));

    let header_len = std::mem::size_of::<FileHeader64<object::Endianness>>() as u64;
    if len < header_len {
        return Err(past_end(ElfPart::Header, header_len));
    }
    let data = object::ReadCache::new(file);
    let header = FileHeader64::<object::Endianness>::parse(&data).map_err(|e| invalid("the ELF header", e))?;
    let endian = header.endian().map_err(|e| invalid("the ELF header", e))?;

    let program_offset = header.e_phoff(endian);
    if program_offset != 0 {
        let count = header.phnum(endian, &data).map_err(|e| invalid("the program header table", e))?;
        let end = table_end(program_offset, count.into(), header.e_phentsize(endian))
            .ok_or_else(|| overflow("the program header table"))?;
        if end > len {
            return Err(past_end(ElfPart::ProgramHeaders, end));
        }
    }
    let segments = header.program_headers(endian, &data).map_err(|e| invalid("the program header table", e))?;
    for (index, segment) in segments.iter().enumerate() {
        let kind = segment.p_type(endian);
        let part = ElfPart::Segment { index, kind: kind.0 };
        let end = segment
            .p_offset(endian)
            .checked_add(segment.p_filesz(endian))
            .ok_or_else(|| overflow(&part.to_string()))?;
        if end > len {
            return Err(past_end(part, end));
        }
    }
    // The loader does not read the section headers, but a file whose end is missing is not
    // whole (a debug build's code may all lie in its first quarter, before the debug info).
    let section_offset = header.e_shoff(endian);
    if section_offset != 0 {
        let size = header.e_shentsize(endian);
        let first = table_end(section_offset, 1, size).ok_or_else(|| overflow("the section header table"))?;
        if first > len {
            return Err(past_end(ElfPart::SectionHeaders, first));
        }
        let count = header.shnum(endian, &data).map_err(|e| invalid("the section header table", e))?;
        let end = table_end(section_offset, count.into(), size).ok_or_else(|| overflow("the section header table"))?;
        if end > len {
            return Err(past_end(ElfPart::SectionHeaders, end));
        }
    }
    Ok(())
}

/// `dlopen`s the validated copy and checks its descriptor; errors name the original `path`.
fn open(path: &Path, copy: &Path) -> Result<Library, LoadError> {
    // Loading a library runs its initialisers: we only load files the embedder asked for, and
    // an extension is trusted code in process (isolation is what child processes are for).
    // SAFETY: the file is our private copy, its layout validated against its size before this
    // call (no segment is mapped past its end), and its initialisers are code the embedder chose.
    let opened = unsafe { libloading::Library::new(copy) };
    let library = opened.map_err(|error| LoadError::NotALibrary {
        path: path.to_owned(),
        reason: NotALibraryReason::Loader(error.to_string()),
    })?;
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
    let web_assets = read_web_assets(descriptor)
        .map_err(|problem| LoadError::InvalidMetadata { path: path.to_owned(), problem })?
        .map(Arc::new);
    Ok(Library { info, descriptor, web_assets, kept_copy: None })
}

/// Why a file's header says it cannot be a library for this host, in plain words; `None` if
/// it looks like one (the loader has the last word).
fn wrong_platform(header: &[u8]) -> Option<NotALibraryReason> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    match header {
        [0x7f, b'E', b'L', b'F', class, ..] if *class != 2 => Some(NotALibraryReason::Elf32),
        [0x7f, b'E', b'L', b'F', _, _, _, _, _, _, _, _, _, _, _, _, _, _, machine_lo, machine_hi, ..] => {
            let machine = u16::from_le_bytes([*machine_lo, *machine_hi]);
            let our_machine: u16 = match std::env::consts::ARCH {
                "x86_64" => 62,
                "aarch64" => 183,
                "riscv64" => 243,
                _ => return None,
            };
            (machine != our_machine).then(|| {
                let theirs = match machine {
                    3 => "x86 (32-bit)",
                    40 => "ARM (32-bit)",
                    62 => "x86_64",
                    183 => "aarch64",
                    243 => "riscv64",
                    _ => "another architecture",
                };
                NotALibraryReason::OtherArchitecture { machine, theirs, ours: std::env::consts::ARCH }
            })
        }
        [0x7f, b'E', b'L', b'F', ..] => None,
        [0xcf, 0xfa, 0xed, 0xfe, ..] | [0xce, 0xfa, 0xed, 0xfe, ..] | [0xca, 0xfe, 0xba, 0xbe, ..] => {
            Some(NotALibraryReason::MachO)
        }
        [b'M', b'Z', ..] => Some(NotALibraryReason::Windows),
        _ => Some(NotALibraryReason::NoElfHeader),
    }
}

fn read_info(path: &Path, descriptor: &'static Descriptor) -> Result<LibraryInfo, LoadError> {
    let invalid = |problem: MetadataProblem| LoadError::InvalidMetadata { path: path.to_owned(), problem };
    let text = |slice: RawSlice, field: MetadataField| -> Result<String, LoadError> {
        // SAFETY: descriptor strings point to the library's static data, mapped forever.
        let bytes = unsafe { slice.as_bytes() }.ok_or_else(|| invalid(MetadataProblem::InvalidPointer { field }))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| invalid(MetadataProblem::NotUtf8 { field }))
    };
    let name = text(descriptor.name, MetadataField::Name)?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(invalid(MetadataProblem::InvalidName { name }));
    }
    let version = text(descriptor.version, MetadataField::Version)?;
    let version = semver::Version::parse(&version)
        .map_err(|error| invalid(MetadataProblem::NotSemver { version, reason: error.to_string() }))?;
    Ok(LibraryInfo {
        name,
        version,
        api_version: text(descriptor.api_version, MetadataField::ApiVersion)?,
        abi_version: descriptor.abi_version,
        debug_build: descriptor.debug_build != 0,
        web_renderer: descriptor.web_asset_count != 0,
        path: path.to_owned(),
    })
}

/// Reads the descriptor's web asset table: `None` when it has none; refused unless every path
/// is a plain relative one (`/`-separated, no empty, `.` or `..` segment), UTF-8 and unique,
/// there are at most [`MAX_WEB_ASSETS`], and the entry module is among them.
fn read_web_assets(descriptor: &'static Descriptor) -> Result<Option<WebAssets>, MetadataProblem> {
    let count = descriptor.web_asset_count;
    if count == 0 {
        return Ok(None);
    }
    if count > MAX_WEB_ASSETS {
        return Err(MetadataProblem::TooManyWebAssets { count, max: MAX_WEB_ASSETS });
    }
    let table = descriptor.web_assets;
    if table.is_null() || !table.is_aligned() {
        return Err(MetadataProblem::InvalidWebAssetTable { count });
    }
    // SAFETY: non-null and aligned; the ABI's contract is that it points to `count` (at most
    // MAX_WEB_ASSETS) WebAssets in the library's static data, mapped forever.
    let table: &'static [WebAsset] = unsafe { std::slice::from_raw_parts(table, count) };
    let mut files = BTreeMap::new();
    for (index, asset) in table.iter().enumerate() {
        // SAFETY: an asset's buffers point to the library's static data, mapped forever.
        let (path, bytes) = unsafe { (asset.path.as_bytes(), asset.bytes.as_bytes()) };
        let (Some(path), Some(bytes)) = (path, bytes) else {
            return Err(MetadataProblem::InvalidWebAssetPointer { index });
        };
        let path = std::str::from_utf8(path).map_err(|_| MetadataProblem::WebAssetPathNotUtf8 { index })?;
        if let Some(problem) = web_path_problem(path) {
            return Err(MetadataProblem::InvalidWebAssetPath { path: path.to_owned(), problem });
        }
        if files.insert(path.to_owned(), bytes).is_some() {
            return Err(MetadataProblem::DuplicateWebAsset { path: path.to_owned() });
        }
    }
    if !files.contains_key(WEB_ENTRY) {
        return Err(MetadataProblem::NoWebEntry);
    }
    Ok(Some(WebAssets::new(files)))
}

/// What makes `path` other than a plain relative path, if anything.
fn web_path_problem(path: &str) -> Option<WebPathProblem> {
    if path.starts_with('/') {
        return Some(WebPathProblem::Absolute);
    }
    path.split('/').find_map(|segment| match segment {
        "" => Some(WebPathProblem::EmptySegment),
        "." | ".." => Some(WebPathProblem::DotSegment),
        _ => None,
    })
}

/// The web renderer files of the library at `path` (loading it as [`check`] does), for tests
/// and tools that look inside a library; `None` when it has no web renderer.
#[doc(hidden)]
pub fn web_assets_of(path: &Path) -> Result<Option<Arc<WebAssets>>, LoadError> {
    load(path).map(|library| library.web_assets().cloned())
}

/// Loads `path` and reports what it is, for `host check`.
pub fn check(path: &Path) -> Result<LibraryInfo, LoadError> {
    load(path).map(|library| library.info)
}

#[cfg(test)]
mod tests {
    use extension_api::abi::{self, Descriptor, HostVTable, InstancePtr, RawLease, RawMessage, RawSlice, WebAsset};

    use super::{Layout, elf_layout, read_info, read_web_assets, wrong_platform};
    use crate::error::{ElfPart, LoadError, MetadataField, MetadataProblem, NotALibraryReason};

    unsafe extern "C" fn instantiate(_: *const HostVTable, _: u64, _: RawSlice) -> InstancePtr {
        std::ptr::null_mut()
    }
    unsafe extern "C" fn control(_: InstancePtr, _: RawSlice) -> u32 {
        abi::status::INVALID
    }
    unsafe extern "C" fn deliver(_: InstancePtr, _: *const RawMessage) -> u32 {
        abi::status::INVALID
    }
    unsafe extern "C" fn deliver_leased(_: InstancePtr, _: *const RawMessage, lease: RawLease) -> u32 {
        // SAFETY: the ABI: the library releases the lease once, whatever it answers.
        unsafe { (lease.release)(lease.context) };
        abi::status::INVALID
    }
    unsafe extern "C" fn destroy(_: InstancePtr) -> u32 {
        abi::status::INVALID
    }

    /// What `read_info` says of a descriptor with these texts (never instantiated).
    fn problem_of(name: &'static [u8], version: &'static [u8]) -> Option<MetadataProblem> {
        let descriptor: &'static Descriptor = Box::leak(Box::new(Descriptor {
            abi_version: abi::ABI_VERSION,
            debug_build: 0,
            name: RawSlice::new(name),
            version: RawSlice::new(version),
            api_version: abi::static_str("0.1.0"),
            instantiate,
            control,
            deliver,
            deliver_leased,
            destroy,
            web_assets: std::ptr::null(),
            web_asset_count: 0,
        }));
        match read_info(std::path::Path::new("libcrafted.so"), descriptor) {
            Ok(_) => None,
            Err(LoadError::InvalidMetadata { problem, .. }) => Some(problem),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn each_metadata_problem_names_its_field_and_value() {
        assert_eq!(problem_of(b"probe", b"1.2.3"), None);
        assert_eq!(problem_of(b"", b"1.2.3"), Some(MetadataProblem::InvalidName { name: String::new() }));
        assert_eq!(problem_of(b"a/b", b"1.2.3"), Some(MetadataProblem::InvalidName { name: "a/b".into() }));
        assert_eq!(problem_of(b"\xff", b"1.2.3"), Some(MetadataProblem::NotUtf8 { field: MetadataField::Name }));
        assert_eq!(problem_of(b"probe", b"\xfe"), Some(MetadataProblem::NotUtf8 { field: MetadataField::Version }));
        let Some(MetadataProblem::NotSemver { version, reason }) = problem_of(b"probe", b"one") else { panic!() };
        assert_eq!(version, "one");
        let message = MetadataProblem::NotSemver { version, reason }.to_string();
        assert!(message.starts_with("the version `one` is not semver: "), "{message}");
    }

    /// A descriptor for `probe` whose web asset table is `web_assets` with `web_asset_count`.
    fn descriptor_with(web_assets: *const WebAsset, web_asset_count: usize) -> &'static Descriptor {
        Box::leak(Box::new(Descriptor {
            abi_version: abi::ABI_VERSION,
            debug_build: 0,
            name: abi::static_str("probe"),
            version: abi::static_str("1.0.0"),
            api_version: abi::static_str("0.1.0"),
            instantiate,
            control,
            deliver,
            deliver_leased,
            destroy,
            web_assets,
            web_asset_count,
        }))
    }

    /// What `read_web_assets` says of a descriptor with this table (`count` overrides its length).
    fn web_problem_of(table: &[(&[u8], &'static [u8])], count: Option<usize>) -> Result<Vec<String>, MetadataProblem> {
        let table: &'static [WebAsset] = Box::leak(
            table
                .iter()
                .map(|(path, bytes)| WebAsset {
                    path: RawSlice::new(path.to_vec().leak()),
                    bytes: RawSlice::new(bytes),
                })
                .collect(),
        );
        let pointer = if table.is_empty() { std::ptr::null() } else { table.as_ptr() };
        let assets = read_web_assets(descriptor_with(pointer, count.unwrap_or(table.len())))?;
        Ok(assets.map(|assets| assets.paths().map(str::to_owned).collect()).unwrap_or_default())
    }

    #[test]
    fn each_web_asset_table_problem_is_named() {
        use crate::error::WebPathProblem::{Absolute, DotSegment, EmptySegment};
        let index: (&[u8], &[u8]) = (b"index.js", b"export async function activate() {}");
        assert_eq!(web_problem_of(&[], None), Ok(vec![]));
        assert_eq!(
            web_problem_of(&[(b"css/a.css", b""), index], None),
            Ok(vec!["css/a.css".into(), "index.js".into()])
        );
        assert_eq!(web_problem_of(&[(b"main.js", b"")], None), Err(MetadataProblem::NoWebEntry));
        let path = |path: &str, problem| Err(MetadataProblem::InvalidWebAssetPath { path: path.into(), problem });
        assert_eq!(web_problem_of(&[index, (b"/etc/passwd", b"")], None), path("/etc/passwd", Absolute));
        assert_eq!(web_problem_of(&[index, (b"../secret", b"")], None), path("../secret", DotSegment));
        assert_eq!(web_problem_of(&[index, (b"a/./b", b"")], None), path("a/./b", DotSegment));
        assert_eq!(web_problem_of(&[index, (b"a//b", b"")], None), path("a//b", EmptySegment));
        assert_eq!(web_problem_of(&[index, (b"dir/", b"")], None), path("dir/", EmptySegment));
        assert_eq!(web_problem_of(&[index, (b"", b"")], None), path("", EmptySegment));
        assert_eq!(
            web_problem_of(&[index, (b"\xff.js", b"")], None),
            Err(MetadataProblem::WebAssetPathNotUtf8 { index: 1 })
        );
        assert_eq!(
            web_problem_of(&[index, index], None),
            Err(MetadataProblem::DuplicateWebAsset { path: "index.js".into() })
        );
        assert_eq!(web_problem_of(&[], Some(2)), Err(MetadataProblem::InvalidWebAssetTable { count: 2 }));
        assert_eq!(
            web_problem_of(&[index], Some(abi::MAX_WEB_ASSETS + 1)),
            Err(MetadataProblem::TooManyWebAssets { count: abi::MAX_WEB_ASSETS + 1, max: abi::MAX_WEB_ASSETS })
        );
        let message = MetadataProblem::InvalidWebAssetPath { path: "../x".into(), problem: DotSegment }.to_string();
        assert_eq!(message, "the web asset path `../x` is refused: it has a `.` or `..` segment");
    }

    #[test]
    fn a_web_asset_with_an_invalid_buffer_is_named_by_index() {
        static TABLE: [WebAsset; 2] = [
            WebAsset { path: abi::static_str("index.js"), bytes: RawSlice::EMPTY },
            WebAsset { path: RawSlice { ptr: std::ptr::null(), len: 3 }, bytes: RawSlice::EMPTY },
        ];
        assert_eq!(
            read_web_assets(descriptor_with(TABLE.as_ptr(), 2)),
            Err(MetadataProblem::InvalidWebAssetPointer { index: 1 })
        );
    }

    /// `elf_layout` of `bytes`, written to a file (the test binary itself is a 64-bit ELF).
    fn layout_of(bytes: &[u8]) -> Result<(), Layout> {
        let dir = crate::private_dir::PrivateDir::create().unwrap();
        let path = dir.path().join("elf");
        std::fs::write(&path, bytes).unwrap();
        elf_layout(&std::fs::File::open(&path).unwrap(), bytes.len() as u64)
    }

    #[test]
    fn elf_layouts_past_the_end_or_overflowing_are_refused() {
        let whole = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(layout_of(&whole), Ok(()));
        assert_eq!(layout_of(&whole[..40]), Err(Layout::Truncated { part: ElfPart::Header, end: 64 }));
        let Err(Layout::Truncated { part: ElfPart::Segment { .. }, end }) = layout_of(&whole[..4096]) else { panic!() };
        assert!(end > 4096, "{end}");
        // A program header table offset of 2^64 - 1 (e_phoff, at byte 32) overflows.
        let mut crafted = whole.clone();
        crafted[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(layout_of(&crafted), Err(Layout::Invalid("the program header table ends past 2^64 bytes".into())));
        // A segment whose end overflows (p_filesz of the first program header).
        let mut crafted = whole.clone();
        let phoff = usize::try_from(u64::from_le_bytes(whole[32..40].try_into().unwrap())).unwrap();
        crafted[phoff + 32..phoff + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        let Err(Layout::Invalid(reason)) = layout_of(&crafted) else { panic!() };
        assert!(reason.starts_with("segment 0") && reason.ends_with("ends past 2^64 bytes"), "{reason}");
    }

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
        assert_eq!(wrong_platform(&elf(1, ours)), Some(NotALibraryReason::Elf32));
        let other = if ours == 62 { 183 } else { 62 };
        let Some(NotALibraryReason::OtherArchitecture { machine, .. }) = wrong_platform(&elf(2, other)) else {
            panic!("another machine is named")
        };
        assert_eq!(machine, other);
        assert!(wrong_platform(&elf(2, other)).unwrap().to_string().contains("ELF machine"));
        assert_eq!(wrong_platform(&[0xcf, 0xfa, 0xed, 0xfe, 7, 0, 0, 1]), Some(NotALibraryReason::MachO));
        assert_eq!(wrong_platform(b"MZ\x90\0"), Some(NotALibraryReason::Windows));
        assert_eq!(wrong_platform(b"#!/bin/sh\n"), Some(NotALibraryReason::NoElfHeader));
        assert_eq!(wrong_platform(b""), Some(NotALibraryReason::NoElfHeader));
    }
}
