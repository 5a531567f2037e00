//! The persisted tier (`storage()`): durable writes, kept across deactivation, uninstall,
//! host restarts and `kill -9`; one database per extension, named by the host; limits,
//! damaged and locked files, values that no longer decode. Driven through the `keeper`
//! fixture (and `keeper-twin`, the same code under another name).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use extension_host::{Host, HostConfig, InvokeError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::{self, FAILSAFE, Transport};

/// A fresh data directory, removed when the test ends (database files add up).
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> DataDir {
        DataDir(crate::loading::tempdir())
    }
}

impl std::ops::Deref for DataDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config_in(dir: &Path) -> HostConfig {
    let mut config = support::config();
    config.storage.data_dir = dir.to_owned();
    config
}

/// A host keeping its data in `dir`, with `crates` loaded and activated on `transport`.
async fn host_in(dir: &Path, crates: &[&str], transport: Transport) -> Host {
    support::host_from(transport, config_in(dir), crates).await
}

async fn call<Req: Serialize, Resp: DeserializeOwned + Send + 'static>(
    host: &Host,
    name: &str,
    channel: &str,
    value: Req,
) -> Result<Resp, InvokeError> {
    host.invoke(name, channel, &value, FAILSAFE).await
}

async fn set(host: &Host, name: &str, key: &str, value: &str) {
    let () = call(host, name, "set", (key, value)).await.unwrap_or_else(|error| panic!("set {key}: {error}"));
}

async fn get(host: &Host, name: &str, key: &str) -> Option<String> {
    call(host, name, "get", key).await.unwrap()
}

async fn dump(host: &Host, name: &str) -> BTreeMap<String, String> {
    call(host, name, "dump", ()).await.unwrap()
}

fn file_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.redb"))
}

async fn values_survive_deactivation_uninstall_and_host_restarts_and_purge_removes_them(transport: Transport) {
    let dir = DataDir::new();
    let host = host_in(&dir, &["keeper"], transport).await;
    assert_eq!(call::<_, Option<String>>(&host, "keeper", "stored-version", ()).await.unwrap(), None, "new data");
    set(&host, "keeper", "colour", "teal").await;
    assert_eq!(get(&host, "keeper", "colour").await.as_deref(), Some("teal"), "a resolved write reads back");
    let values = host.storage_values("keeper").await.unwrap();
    assert_eq!(values.get("colour"), Some(&rmp_serde::to_vec("teal").unwrap()), "the embedder's view");

    // Deactivate and activate: the data is still there, with what `deactivate` saved.
    host.deactivate("keeper").await.unwrap();
    host.activate("keeper").await.unwrap();
    assert_eq!(get(&host, "keeper", "colour").await.as_deref(), Some("teal"));
    assert_eq!(get(&host, "keeper", "deactivated").await.as_deref(), Some("yes"), "written in deactivate");
    assert_eq!(get(&host, "keeper", "activations").await.as_deref(), Some("2"));

    // Uninstall without purge, load again: still there.
    host.uninstall("keeper").await.unwrap();
    support::start(&host, transport, "keeper").await;
    assert_eq!(get(&host, "keeper", "colour").await.as_deref(), Some("teal"));
    host.shutdown().await;
    drop(host);

    // Another host on the same data directory.
    let host = host_in(&dir, &["keeper"], transport).await;
    assert_eq!(get(&host, "keeper", "colour").await.as_deref(), Some("teal"), "kept across a host restart");
    assert_eq!(get(&host, "keeper", "activations").await.as_deref(), Some("4"));
    let version: Option<String> = call(&host, "keeper", "stored-version", ()).await.unwrap();
    assert_eq!(version.as_deref(), Some("0.1.0"), "the version stored with the data");
    let usage = host.inspect().await.extension("keeper").unwrap().storage.clone();
    assert_eq!((usage.keys, usage.error.as_deref()), (3, None), "{usage:?}");
    assert_eq!(usage.file, file_of(&dir, "keeper"));

    // Purge: gone, and so is the file.
    host.uninstall_purge("keeper").await.unwrap();
    assert!(!file_of(&dir, "keeper").exists());
    host.load(support::library("keeper")).unwrap();
    host.activate("keeper").await.unwrap();
    assert_eq!(get(&host, "keeper", "colour").await, None, "purged");
    assert_eq!(get(&host, "keeper", "activations").await.as_deref(), Some("1"));
    host.shutdown().await;
}

/// Frames read the persisted tier from their replica, write it through main, and watch it.
async fn frames_share_the_persisted_tier(transport: Transport) {
    let dir = DataDir::new();
    let host = support::host_from(transport, config_in(&dir), &["keeper"]).await;
    set(&host, "keeper", "before", "opened").await;
    let frame = support::open_frame(&host, transport).await;
    let mut seen = host.broadcasts();
    // The frame starts with the data, and its writes go through main to the database.
    let frame_dump: BTreeMap<String, String> = call(&host, "keeper", "frame-dump", frame.0).await.unwrap();
    assert_eq!(frame_dump.get("before").map(String::as_str), Some("opened"));
    let () = call(&host, "keeper", "frame-set", (frame.0, "from-frame", "hello")).await.unwrap();
    assert_eq!(get(&host, "keeper", "from-frame").await.as_deref(), Some("hello"));
    // A watch fires in main and in the frame.
    set(&host, "keeper", "watched", "ping").await;
    let mut sides = BTreeSet::new();
    while sides.len() < 2 {
        let event = tokio::time::timeout(FAILSAFE, seen.recv()).await.unwrap().unwrap();
        if event.channel == "changed" {
            let (side, value): (String, Option<String>) = event.value().unwrap();
            assert_eq!(value.as_deref(), Some("ping"));
            sides.insert(side);
        }
    }
    assert_eq!(sides, BTreeSet::from(["main".to_owned(), format!("frame:{}", frame.0)]));
    let frame_dump: BTreeMap<String, String> = call(&host, "keeper", "frame-dump", frame.0).await.unwrap();
    assert_eq!(frame_dump, dump(&host, "keeper").await, "the replicas agree");
    host.shutdown().await;
    // It was durable: a new host reads it.
    drop(host);
    let host = support::host_from(transport, config_in(&dir), &["keeper"]).await;
    assert_eq!(get(&host, "keeper", "from-frame").await.as_deref(), Some("hello"));
    host.shutdown().await;
}

conformance!(frames_share_the_persisted_tier);

async fn two_extensions_with_the_same_keys_never_see_each_others_data(transport: Transport) {
    let dir = DataDir::new();
    let host = host_in(&dir, &["keeper", "keeper-twin"], transport).await;
    set(&host, "keeper", "shared", "keeper's").await;
    set(&host, "keeper-twin", "shared", "twin's").await;
    assert_eq!(get(&host, "keeper", "shared").await.as_deref(), Some("keeper's"));
    assert_eq!(get(&host, "keeper-twin", "shared").await.as_deref(), Some("twin's"));
    call::<_, ()>(&host, "keeper-twin", "delete", "shared").await.unwrap();
    assert_eq!(get(&host, "keeper", "shared").await.as_deref(), Some("keeper's"), "the twin's delete is its own");
    host.shutdown().await;
    drop(host);
    // Separate files, named by the host; after a restart each still has only its own.
    assert!(file_of(&dir, "keeper").exists() && file_of(&dir, "keeper-twin").exists());
    let host = host_in(&dir, &["keeper", "keeper-twin"], transport).await;
    assert_eq!(get(&host, "keeper", "shared").await.as_deref(), Some("keeper's"));
    assert_eq!(get(&host, "keeper-twin", "shared").await, None);
    host.shutdown().await;
}

#[tokio::test]
async fn limits_are_refused_with_the_reason_from_every_half_and_inspect_shows_usage() {
    let dir = DataDir::new();
    let mut config = config_in(&dir);
    config.storage.value_limit = 100;
    config.storage.total_limit = 400;
    let host = support::host_from(Transport::InProcess, config, &["keeper"]).await;
    let frame = host.open_child_frame().await.unwrap();
    let big = "x".repeat(120);
    let error = call::<_, ()>(&host, "keeper", "set", ("big", big.as_str())).await.unwrap_err();
    assert!(error.message.contains("over the 100-byte limit"), "{error}");
    let error = call::<_, ()>(&host, "keeper", "frame-set", (frame.0, "big", big.as_str())).await.unwrap_err();
    assert!(error.message.contains("over the 100-byte limit"), "{error}");
    // Fill up to the total: the write past it is refused, from main and from the frame.
    let value = "y".repeat(80);
    let mut refused = None;
    for n in 0..10 {
        if let Err(error) = call::<_, ()>(&host, "keeper", "set", (format!("k{n}"), value.as_str())).await {
            refused = Some(error);
            break;
        }
    }
    let refused = refused.expect("the total limit refuses a write");
    assert!(refused.message.contains("over its 400-byte limit"), "{refused}");
    let error = call::<_, ()>(&host, "keeper", "frame-set", (frame.0, "k99", value.as_str())).await.unwrap_err();
    assert!(error.message.contains("over its 400-byte limit"), "{error}");
    let usage = host.inspect().await.extension("keeper").unwrap().storage.clone();
    assert_eq!((usage.value_limit, usage.total_limit), (100, 400));
    assert!(usage.bytes <= 400 && usage.bytes > 300, "{usage:?}");
    // Nothing refused was written, anywhere.
    let frame_dump: BTreeMap<String, String> = call(&host, "keeper", "frame-dump", frame.0).await.unwrap();
    assert_eq!(frame_dump, dump(&host, "keeper").await);
    assert_eq!(u64::try_from(frame_dump.len()).unwrap(), usage.keys);
    assert!(!frame_dump.contains_key("big") && !frame_dump.contains_key("k99"));
    host.shutdown().await;
}

#[tokio::test]
async fn a_value_that_no_longer_decodes_as_the_type_asked_for_is_a_typed_error() {
    let dir = DataDir::new();
    let host = host_in(&dir, &["keeper"], Transport::InProcess).await;
    set(&host, "keeper", "count", "not a number").await;
    let error = call::<_, Option<u64>>(&host, "keeper", "get-u64", "count").await.unwrap_err();
    assert!(error.message.contains("the value of `count` does not decode as u64"), "{error}");
    host.shutdown().await;
}

/// Damages the file between runs: the tier is unavailable with the file and the reason, the
/// extension still runs, the file is left as it was, and the other extension is unaffected.
async fn damaged_file_is_a_clear_error(damage: impl FnOnce(&Path)) {
    let dir = DataDir::new();
    let host = host_in(&dir, &["keeper", "keeper-twin"], Transport::InProcess).await;
    set(&host, "keeper", "precious", "data").await;
    set(&host, "keeper-twin", "precious", "twin data").await;
    host.shutdown().await;
    drop(host);
    let file = file_of(&dir, "keeper");
    damage(&file);
    let damaged = std::fs::read(&file).unwrap();

    let host = host_in(&dir, &["keeper", "keeper-twin"], Transport::InProcess).await;
    let error = call::<_, Option<String>>(&host, "keeper", "get", "precious").await.unwrap_err();
    let named = format!("`{}`", file.display());
    assert!(error.message.contains("persisted storage is unavailable") && error.message.contains(&named), "{error}");
    let error = call::<_, ()>(&host, "keeper", "set", ("precious", "overwrite")).await.unwrap_err();
    assert!(error.message.contains(&named), "{error}");
    // A frame in a renderer process is told the same.
    let frame = host.open_child_frame().await.unwrap();
    let error = call::<_, ()>(&host, "keeper", "frame-set", (frame.0, "precious", "overwrite")).await.unwrap_err();
    assert!(error.message.contains(&named), "{error}");
    let usage = host.inspect().await.extension("keeper").unwrap().storage.clone();
    assert!(usage.error.as_deref().is_some_and(|error| error.contains(&named)), "{usage:?}");
    // The extension runs on (with no keys to list); the other is untouched.
    assert_eq!(dump(&host, "keeper").await, BTreeMap::new());
    assert_eq!(get(&host, "keeper-twin", "precious").await.as_deref(), Some("twin data"));
    host.shutdown().await;
    assert_eq!(std::fs::read(&file).unwrap(), damaged, "the file is never reset");
}

#[tokio::test]
async fn a_truncated_database_file_is_a_clear_error_and_is_left_as_it_is() {
    damaged_file_is_a_clear_error(|file| {
        let length = std::fs::metadata(file).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(file).unwrap().set_len(length / 3).unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_emptied_database_file_is_a_clear_error_not_a_fresh_database() {
    damaged_file_is_a_clear_error(|file| {
        std::fs::OpenOptions::new().write(true).open(file).unwrap().set_len(0).unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_scribbled_database_file_is_a_clear_error_and_is_left_as_it_is() {
    damaged_file_is_a_clear_error(|file| {
        let mut bytes = std::fs::read(file).unwrap();
        for (at, byte) in bytes.iter_mut().enumerate().take(4096) {
            *byte = (at as u8).wrapping_mul(31) ^ 0x5a;
        }
        std::fs::write(file, bytes).unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_database_locked_by_another_host_is_a_clear_error() {
    let dir = DataDir::new();
    let first = host_in(&dir, &["keeper"], Transport::InProcess).await;
    set(&first, "keeper", "mine", "first").await;
    let second = host_in(&dir, &["keeper"], Transport::InProcess).await;
    let error = call::<_, Option<String>>(&second, "keeper", "get", "mine").await.unwrap_err();
    assert!(error.message.contains("locked: another host process has it open"), "{error}");
    assert!(error.message.contains(&format!("`{}`", file_of(&dir, "keeper").display())), "{error}");
    second.shutdown().await;
    assert_eq!(get(&first, "keeper", "mine").await.as_deref(), Some("first"), "the first host is unaffected");
    first.shutdown().await;
}

/// `host run --data-dir` keeps the data there; the console's `uninstall NAME --purge` deletes it.
#[tokio::test]
async fn the_binary_keeps_data_in_its_data_dir_and_the_console_purges_it() {
    let dir = DataDir::new();
    let mut child = support::spawn_console(&["--frames", "0", "--data-dir", dir.to_str().unwrap()], &["keeper"]);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    while !next_line(&mut stdout).await.is_some_and(|line| line.starts_with("console ready")) {}
    stdin.write_all(b"invoke keeper set [\"colour\", \"teal\"]\n").await.unwrap();
    assert_eq!(next_line(&mut stdout).await.as_deref(), Some("reply: null"));
    assert!(file_of(&dir, "keeper").exists());
    stdin.write_all(b"uninstall keeper --purge\n").await.unwrap();
    assert_eq!(next_line(&mut stdout).await.as_deref(), Some("uninstalled keeper, data purged"));
    assert!(!file_of(&dir, "keeper").exists());
    stdin.write_all(b"quit\n").await.unwrap();
    child.wait().await.unwrap();
}

/// The real `host` binary, SIGKILLed while main, an in-process frame and a renderer process's
/// frame write thousands of values at once: every write whose `set` resolved is there after a
/// restart, whole, and the replicas agree.
#[tokio::test]
async fn kill_9_during_writes_loses_no_resolved_write() {
    const PER_HALF: u32 = 10_000;
    let dir = DataDir::new();
    let data_dir = dir.to_str().unwrap();
    let mut child =
        support::spawn_console(&["--frames", "1", "--child-frames", "1", "--data-dir", data_dir], &["keeper"]);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    while !next_line(&mut stdout).await.is_some_and(|line| line.starts_with("console ready")) {}
    stdin.write_all(b"watch on\n").await.unwrap();
    while next_line(&mut stdout).await.as_deref() != Some("ok") {}
    // `event keeper resolved from main: "m1-17"`.
    let mut resolved = BTreeSet::new();
    let mut halves = BTreeSet::new();
    let mut read_resolved = async |resolved: &mut BTreeSet<String>, halves: &mut BTreeSet<String>| {
        let line = next_line(&mut stdout).await.expect("the host runs");
        assert!(!line.contains("missed"), "the console lagged: {line}");
        if let Some(rest) = line.strip_prefix("event keeper resolved from ") {
            let (sender, key) = rest.split_once(": ").unwrap();
            halves.insert(sender.to_owned());
            resolved.insert(serde_json::from_str::<String>(key).unwrap());
        }
    };
    // Round 1: every half's writes resolve.
    stdin.write_all(b"broadcast keeper flood [1, 1000]\n").await.unwrap();
    while resolved.len() < 3000 {
        read_resolved(&mut resolved, &mut halves).await;
    }
    assert_eq!(halves.len(), 3, "main and both frames wrote: {halves:?}");
    // Round 2: killed with most of its 30,000 writes in flight.
    stdin.write_all(format!("broadcast keeper flood [2, {PER_HALF}]\n").as_bytes()).await.unwrap();
    while resolved.len() < 3500 {
        read_resolved(&mut resolved, &mut halves).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().await.unwrap();
    // How many writes were still in flight varies (the test reads its `resolved` lines behind
    // the host); none of what it saw resolve may be missing.

    // Restart on the same data directory (the database recovers from the torn commit).
    let host = host_in(&dir, &["keeper"], Transport::InProcess).await;
    let values = dump(&host, "keeper").await;
    eprintln!(
        "{} writes seen resolved, {} of {} present after the restart",
        resolved.len(),
        values.len(),
        3 * (1000 + PER_HALF)
    );
    for key in &resolved {
        let value = values.get(key).unwrap_or_else(|| panic!("resolved write `{key}` is lost"));
        assert_eq!(value, &keeper::flood_value(key), "torn value at `{key}`");
    }
    for (key, value) in &values {
        if key.starts_with('m') || key.starts_with('f') {
            assert_eq!(value, &keeper::flood_value(key), "torn value at `{key}`");
        }
    }
    let frame = support::open_frame(&host, Transport::ChildProcess).await;
    let frame_dump: BTreeMap<String, String> = call(&host, "keeper", "frame-dump", frame.0).await.unwrap();
    assert_eq!(frame_dump, values, "the replicas agree");
    host.shutdown().await;
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Option<String> {
    tokio::time::timeout(FAILSAFE, lines.next_line()).await.unwrap().unwrap()
}

/// The fixture's value function, shared with the test (the fixture is a cdylib, not a
/// dependency).
mod keeper {
    pub fn flood_value(key: &str) -> String {
        format!("{key}={}", key.repeat(16))
    }
}

/// `TestHost` keeps each test's persisted data apart, in a fresh directory of its own.
#[tokio::test]
async fn test_hosts_start_with_no_persisted_data_and_read_it() {
    let first = extension_host::testing::TestHost::start(support::library("keeper")).await.unwrap();
    let () = first.invoke("set", &("colour", "teal")).await.unwrap();
    assert_eq!(first.storage::<String>("colour").await.unwrap().as_deref(), Some("teal"));
    let second = extension_host::testing::TestHost::start(support::library("keeper")).await.unwrap();
    assert_eq!(second.storage::<String>("colour").await.unwrap(), None, "a fresh directory");
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

/// An isolated extension's process SIGKILLed while it writes: the host commits what reached it,
/// the restarted activation starts from all of it (every write whose `set` resolved), whole.
#[tokio::test]
async fn an_isolated_extension_killed_mid_writes_restarts_with_every_resolved_write() {
    let dir = DataDir::new();
    let host = host_in(&dir, &["keeper"], Transport::Isolated).await;
    let mut events = host.events();
    let mut seen = host.broadcasts();
    host.broadcast("keeper", "flood", &(1u32, 3000u32)).unwrap();
    let mut resolved = BTreeSet::new();
    while resolved.len() < 1000 {
        let event = tokio::time::timeout(FAILSAFE, seen.recv()).await.unwrap().unwrap();
        if event.channel == "resolved" {
            resolved.insert(event.value::<String>().unwrap());
        }
    }
    let pid = host.inspect().await.extension("keeper").unwrap().pid.unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    support::wait_event(&mut events, |event| matches!(event, extension_host::HostEvent::ExtensionRestarted { .. }))
        .await;
    let values = dump(&host, "keeper").await;
    for key in &resolved {
        assert_eq!(values.get(key), Some(&keeper::flood_value(key)), "resolved write `{key}`");
    }
    host.shutdown().await;
}

same_instance!(
    values_survive_deactivation_uninstall_and_host_restarts_and_purge_removes_them,
    two_extensions_with_the_same_keys_never_see_each_others_data,
);
