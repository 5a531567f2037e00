//! The persisted tier's faults: a full disk, a purge from a host that does not hold the file,
//! a file holding another extension's data. (Found in review; each test failed before its fix.)

use std::io::Write;
use std::path::{Path, PathBuf};

use extension_host::{Host, HostConfig, InvokeError};

use crate::support::{self, FAILSAFE};

/// A host running `keeper`.
async fn keeper_in(config: HostConfig) -> Host {
    let host = Host::new(config);
    host.load(support::library("keeper")).unwrap();
    host.activate("keeper").await.unwrap();
    host
}

async fn set(host: &Host, key: &str, value: &str) -> Result<(), InvokeError> {
    host.invoke("keeper", "set", &(key, value), FAILSAFE).await
}

/// Fills the file system holding `dir` (until a write fails), returning the filler.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    filler
}

/// A small file system of its own (a 16 MiB tmpfs, mounted by the test, which runs as root
/// here and in CI), unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount() -> SmallDisk {
        let dir = crate::loading::tempdir();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(&dir)
            .status()
            .expect("`mount` runs");
        assert!(mounted.success(), "mounting a 16 MiB tmpfs at {} failed (the test needs root)", dir.display());
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A commit on a full disk fails that group's writes with the reason; once there is room, the
/// next write commits (redb refuses everything after an I/O error until the file is opened
/// again: before, the tier stayed broken until a second activation).
#[tokio::test]
async fn a_full_disk_fails_the_write_and_once_freed_the_next_write_commits() {
    let disk = SmallDisk::mount();
    let mount = disk.0.as_path();
    let data = mount.join("data");
    let mut config = support::config();
    config.storage.data_dir = data.clone();
    let host = keeper_in(config).await;
    set(&host, "before", "fine").await.unwrap();

    let filler = fill(mount);
    let big = "x".repeat(400_000);
    let full = set(&host, "big", &big).await;
    let error = full.expect_err("a write on a full disk fails");
    assert!(error.message.contains("keeper.redb"), "the error names the file: {error}");
    std::fs::remove_file(&filler).unwrap();

    let after = set(&host, "after", "space is back").await;
    host.deactivate("keeper").await.unwrap();
    host.activate("keeper").await.unwrap();
    let reactivated = set(&host, "reactivated", "yes").await;
    host.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
    assert!(after.is_ok(), "the next group tries again: {after:?}");
    assert!(reactivated.is_ok(), "activate again: {reactivated:?}");
}

/// A second host finds the file locked, and its user purges the extension there: refused, since
/// removing the first host's live database would lose every write it then acknowledges.
#[tokio::test]
async fn a_purge_by_a_host_that_finds_the_file_locked_is_refused_and_loses_nothing() {
    let data = crate::loading::tempdir();
    let mut config = support::config();
    config.storage.data_dir = data.clone();
    let first = keeper_in(config.clone()).await;
    set(&first, "kept", "before").await.unwrap();

    let second = keeper_in(config.clone()).await;
    let purged = second.uninstall_purge("keeper").await;
    second.shutdown().await;

    let acknowledged = set(&first, "after", "acknowledged").await;
    first.shutdown().await;
    drop(first);

    let third = keeper_in(config).await;
    let after: Option<String> = third.invoke("keeper", "get", &"after", FAILSAFE).await.unwrap();
    third.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
    acknowledged.expect("the first host's write commits");
    assert_eq!(after.as_deref(), Some("acknowledged"), "a write acknowledged as durable is kept");
    let refused = purged.expect_err("a purge of a file another host holds is refused");
    assert!(refused.to_string().contains("locked"), "{refused}");
}

/// Where two names reach one file (a case-insensitive data directory: `Notes` and `notes`), or
/// a file was copied or renamed by hand, the name stored with the data is checked: another
/// extension's data is refused, never served or relabelled. Simulated by copying `keeper`'s
/// file to `keeper-twin`'s name.
#[tokio::test]
async fn a_database_holding_another_extensions_data_is_refused_and_left_as_it_is() {
    let data = crate::loading::tempdir();
    let mut config = support::config();
    config.storage.data_dir = data.clone();
    let host = keeper_in(config.clone()).await;
    set(&host, "secret", "keeper's").await.unwrap();
    host.shutdown().await;
    drop(host);
    std::fs::copy(data.join("keeper.redb"), data.join("keeper-twin.redb")).unwrap();
    let copied = std::fs::read(data.join("keeper-twin.redb")).unwrap();
    let host = Host::new(config);
    host.load(support::library("keeper-twin")).unwrap();
    host.activate("keeper-twin").await.unwrap();
    let seen: Result<Option<String>, InvokeError> = host.invoke("keeper-twin", "get", &"secret", FAILSAFE).await;
    host.shutdown().await;
    assert_eq!(std::fs::read(data.join("keeper-twin.redb")).unwrap(), copied, "the file is left as it is");
    let _ = std::fs::remove_dir_all(&data);
    let refused = seen.expect_err("another extension's data is not served");
    assert!(refused.message.contains("holds the data of extension `keeper`"), "{refused}");
}
