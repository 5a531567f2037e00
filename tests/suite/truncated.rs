//! A library cut short (an interrupted copy, or one cargo is still writing) is refused with the
//! reason, by `Host::load` and by `host check`, without crashing the process; and no failed
//! load leaves its private copy behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use extension_host::{Host, LoadError, check};

use crate::loading::tempdir;
use crate::support::{self, library};

/// Where to cut a real extension: inside the ELF header, inside the program headers, after
/// 4 KiB (the case that crashed with SIGBUS), at half, and one byte short.
fn cuts(len: usize) -> Vec<usize> {
    vec![40, 100, 4096, len / 2, len - 1]
}

/// A copy of the `hello` library cut after `len` bytes, in a fresh directory.
fn cut(len: usize) -> PathBuf {
    let bytes = std::fs::read(library("hello")).unwrap();
    let path = tempdir().join("libhello.so");
    std::fs::write(&path, &bytes[..len]).unwrap();
    path
}

fn hello_len() -> usize {
    usize::try_from(std::fs::metadata(library("hello")).unwrap().len()).unwrap()
}

/// `host ARGS`, with its temp dir (where private copies go) pointed at `temp`.
fn host_command(temp: &Path, args: &[&std::ffi::OsStr], keep_copies: bool) -> Output {
    let mut command = Command::new(support::host_binary());
    command.args(args).env("TMPDIR", temp).env("RUST_LOG", "warn");
    if keep_copies {
        command.env("EXTENSION_HOST_KEEP_COPIES", "1");
    } else {
        command.env_remove("EXTENSION_HOST_KEEP_COPIES");
    }
    command.output().unwrap()
}

fn leftovers(temp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(temp).unwrap().map(|entry| entry.unwrap().path()).collect()
}

#[tokio::test]
async fn a_truncated_library_is_refused_by_load_and_the_host_goes_on() {
    let host = Host::new(support::config());
    for len in cuts(hello_len()) {
        let path = cut(len);
        let error = host.load(&path).unwrap_err();
        let text = error.to_string();
        match &error {
            LoadError::Truncated { path: named, end, len: file_len, .. } => {
                assert_eq!(named, &path);
                assert_eq!(*file_len, len as u64, "the file's length");
                assert!(*end > *file_len, "the part named ends past it: {end}");
            }
            other => panic!("a cut at {len} bytes: {other:?}"),
        }
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(&format!("past the end of the file ({len} bytes)")), "cut at {len}: {text}");
        assert!(text.contains("still being written"), "{text}");
    }
    // Nothing was registered, and a whole copy of the same library loads and runs.
    assert!(host.extensions().is_empty());
    host.load(library("hello")).unwrap();
    host.activate("hello").await.unwrap();
    host.open_frame().await;
    let greeting: String = host.invoke("hello", "greet", "you", support::FAILSAFE).await.unwrap();
    assert_eq!(greeting, "Hello, you! (from hello's main)");
}

#[test]
fn the_check_command_refuses_a_truncated_library_and_leaves_no_copy() {
    for len in cuts(hello_len()) {
        let path = cut(len);
        let temp = tempdir();
        let output = host_command(&temp, &["check".as_ref(), path.as_os_str()], false);
        let stdout = String::from_utf8_lossy(&output.stdout);
        // Exit code 1 (not a signal): the process refused it and ended normally.
        assert_eq!(output.status.code(), Some(1), "cut at {len}: {:?} {stdout}", output.status);
        assert!(stdout.contains("past the end of the file") && stdout.contains("truncated"), "{stdout}");
        assert_eq!(leftovers(&temp), Vec::<PathBuf>::new(), "cut at {len}");
    }
}

#[test]
fn the_run_command_logs_a_truncated_library_and_leaves_no_copy() {
    let path = cut(4096);
    let temp = tempdir();
    let args = ["run".as_ref(), "--duration".as_ref(), "0".as_ref(), path.as_os_str()];
    let output = host_command(&temp, &args, false);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?} {stderr}", output.status);
    assert!(stderr.contains("past the end of the file (4096 bytes)"), "{stderr}");
    assert_eq!(leftovers(&temp), Vec::<PathBuf>::new());
}

#[test]
fn every_failed_load_removes_its_private_copy_even_when_copies_are_kept() {
    // With `EXTENSION_HOST_KEEP_COPIES`, the copy of a library that loaded stays (for
    // profilers), which shows the temp dir is where copies go; a refused one never stays.
    let temp = tempdir();
    let output = host_command(&temp, &["check".as_ref(), library("hello").as_os_str()], true);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(leftovers(&temp).len(), 1, "the kept copy of a good library");

    let text = tempdir().join("libnotes.so");
    std::fs::write(&text, "just some text").unwrap();
    let empty = tempdir().join("libempty.so");
    std::fs::write(&empty, "").unwrap();
    let bad = [text, empty, cut(4096), cut(hello_len() / 2), library("no-descriptor"), library("wrong-abi")];
    for path in bad {
        let temp = tempdir();
        let output = host_command(&temp, &["check".as_ref(), path.as_os_str()], true);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{}: {:?} {stdout}", path.display(), output.status);
        assert!(stdout.starts_with("error: cannot load"), "{stdout}");
        assert_eq!(leftovers(&temp), Vec::<PathBuf>::new(), "{}: {stdout}", path.display());
    }

    // A library refused after it was mapped (its name is taken) leaves no copy either.
    let twin = tempdir().join("libhello.so");
    std::fs::copy(library("hello"), &twin).unwrap();
    let temp = tempdir();
    let hello = library("hello");
    let args = ["run".as_ref(), "--duration".as_ref(), "0".as_ref(), hello.as_os_str(), twin.as_os_str()];
    let output = host_command(&temp, &args, true);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.contains("already loaded"), "{stderr}");
    assert_eq!(leftovers(&temp).len(), 1, "only the copy of the library that runs: {stderr}");
}

#[tokio::test]
async fn a_library_being_written_loads_once_complete_and_its_later_changes_do_not_matter() {
    // What a watcher sees while cargo writes a library: a growing file, then the whole.
    let whole = std::fs::read(library("hello")).unwrap();
    let path = tempdir().join("libhello.so");
    let host = Host::new(support::config());
    for quarter in 1..4 {
        std::fs::write(&path, &whole[..whole.len() * quarter / 4]).unwrap();
        let error = host.load(&path).unwrap_err();
        assert!(matches!(error, LoadError::Truncated { .. }), "{error:?}");
    }
    std::fs::write(&path, &whole).unwrap();
    host.load(&path).unwrap();
    // The host runs its private copy: the original growing or shrinking afterwards (a rebuild
    // in progress) does not reach the mapped library.
    std::fs::write(&path, &whole[..4096]).unwrap();
    host.activate("hello").await.unwrap();
    host.open_frame().await;
    let mut extended = whole.clone();
    extended.extend_from_slice(&[0xAB; 1 << 16]);
    std::fs::write(&path, &extended).unwrap();
    let greeting: String = host.invoke("hello", "greet", "still", support::FAILSAFE).await.unwrap();
    assert_eq!(greeting, "Hello, still! (from hello's main)");
}

#[test]
fn a_library_growing_while_it_is_checked_never_crashes_the_process() {
    // A writer appends the library in small pieces while `check` runs over and over: each
    // check sees a prefix (refused as truncated), a file changing under its copy (refused as
    // such), or the whole library; whichever it is, the process lives on.
    let whole = std::fs::read(library("hello")).unwrap();
    let path = tempdir().join("libhello.so");
    std::fs::write(&path, &whole[..64]).unwrap();
    let writer = {
        let (path, whole) = (path.clone(), whole.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            for piece in whole[64..].chunks(16 * 1024) {
                file.write_all(piece).unwrap();
            }
        })
    };
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    loop {
        let done = writer.is_finished();
        let outcome = match check(&path) {
            Ok(info) => {
                assert_eq!(info.name, "hello");
                "loaded"
            }
            Err(LoadError::Truncated { .. }) => "truncated",
            Err(LoadError::Changing { .. }) => "changing",
            Err(other) => panic!("{other:?}"),
        };
        *outcomes.entry(outcome).or_default() += 1;
        if done {
            break;
        }
    }
    writer.join().unwrap();
    println!("outcomes while the library grew: {outcomes:?}");
    assert_eq!(check(&path).unwrap().name, "hello", "the whole library loads: {outcomes:?}");
}
