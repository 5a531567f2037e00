//! Loading and validating libraries: every kind of bad input is refused with its reason, and
//! the host keeps working.

use extension_host::{Host, LoadError, NotALibraryReason, check};

use crate::support::{self, library};

#[test]
fn a_missing_file_is_refused_by_name() {
    let error = check(std::path::Path::new("/nonexistent/libnothing.so")).unwrap_err();
    assert!(matches!(error, LoadError::NotFound { .. }), "{error:?}");
    assert!(error.to_string().contains("does not exist"), "{error}");
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let dir = tempdir();
    let path = dir.join("libnotes.so");
    std::fs::write(&path, "just some text, not an ELF file").unwrap();
    let error = check(&path).unwrap_err();
    assert!(matches!(error, LoadError::NotALibrary { reason: NotALibraryReason::NoElfHeader, .. }), "{error:?}");
    assert!(error.to_string().contains("not a shared library"), "{error}");
}

#[test]
fn a_directory_is_refused_as_no_regular_file() {
    let dir = tempdir();
    let error = check(&dir).unwrap_err();
    assert!(matches!(error, LoadError::NotALibrary { reason: NotALibraryReason::NotAFile, .. }), "{error:?}");
    assert!(error.to_string().contains("it is not a regular file"), "{error}");
}

#[test]
fn a_truncated_elf_file_is_refused_with_the_reason() {
    let dir = tempdir();
    let path = dir.join("libtruncated.so");
    let bytes = std::fs::read(library("hello")).unwrap();
    std::fs::write(&path, &bytes[..256]).unwrap();
    let error = check(&path).unwrap_err();
    assert!(matches!(error, LoadError::Truncated { .. }), "{error:?}");
}

#[test]
fn a_library_without_a_descriptor_is_not_an_extension() {
    let error = check(&library("no-descriptor")).unwrap_err();
    assert!(matches!(error, LoadError::MissingDescriptor { symbol: "EXTENSION_DESCRIPTOR", .. }), "{error:?}");
    assert!(error.to_string().contains("export_extension!"), "{error}");
}

#[test]
fn a_wrong_abi_version_names_both_versions() {
    let error = check(&library("wrong-abi")).unwrap_err();
    let LoadError::AbiMismatch { expected, found, .. } = error else { panic!("{error:?}") };
    assert_eq!((expected, found), (extension_api::abi::ABI_VERSION, 999));
    let text = check(&library("wrong-abi")).unwrap_err().to_string();
    assert!(text.contains("version 999") && text.contains(&format!("version {expected}")), "{text}");
}

#[test]
fn metadata_of_a_valid_library() {
    let info = check(&library("hello")).unwrap();
    assert_eq!(info.name, "hello");
    assert_eq!(info.version.to_string(), "0.1.0");
    assert_eq!(info.abi_version, extension_api::abi::ABI_VERSION);
}

#[tokio::test]
async fn a_duplicate_name_is_refused_and_the_first_keeps_working() {
    let host = support::host_with(&["hello"]).await;
    let error = host.load(library("hello")).unwrap_err();
    assert!(matches!(&error, LoadError::DuplicateName { name, .. } if name == "hello"), "{error:?}");
    assert!(error.to_string().contains("already loaded"), "{error}");
    let greeting: String = host.invoke("hello", "greet", "you", support::FAILSAFE).await.unwrap();
    assert_eq!(greeting, "Hello, you! (from hello's main)");
}

#[tokio::test]
async fn bad_libraries_leave_the_host_running() {
    let host = Host::new(support::config());
    for bad in ["no-descriptor", "wrong-abi"] {
        assert!(host.load(library(bad)).is_err());
    }
    assert!(host.load("/nonexistent/lib.so").is_err());
    host.load(library("hello")).unwrap();
    host.activate("hello").await.unwrap();
    assert_eq!(host.extensions(), vec!["hello".to_owned()]);
}

#[test]
fn the_check_command_explains_in_plain_words() {
    let output =
        std::process::Command::new(support::host_binary()).args(["check"]).arg(library("wrong-abi")).output().unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("ABI version 999") && stdout.contains("rebuild"), "{stdout}");

    let output =
        std::process::Command::new(support::host_binary()).arg("check").arg(library("hello")).output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    assert!(stdout.contains("name:          hello") && stdout.contains(&format!("build:         {build}")), "{stdout}");
}

/// A fresh directory in this run's temp dir ([`support::suite_temp_root`]), unique to the call.
pub fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = support::suite_temp_root().join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_check_command_names_a_wrong_platform() {
    let dir = tempdir();
    let mach_o = dir.join("libmac.dylib.so");
    std::fs::write(&mach_o, [0xcf, 0xfa, 0xed, 0xfe, 7, 0, 0, 1, 3, 0, 0, 0]).unwrap();
    let output = std::process::Command::new(support::host_binary()).arg("check").arg(&mach_o).output().unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Mach-O") && stdout.contains("this host runs on Linux"), "{stdout}");

    let other_arch = dir.join("libarm.so");
    let mut header = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    header.resize(18, 0);
    let machine: u16 = if std::env::consts::ARCH == "aarch64" { 62 } else { 183 };
    header.extend_from_slice(&machine.to_le_bytes());
    std::fs::write(&other_arch, &header).unwrap();
    let error = check(&other_arch).unwrap_err().to_string();
    assert!(error.contains(&format!("ELF machine {machine}")), "{error}");
}
