//! Activation cycles with a renderer process open: the renderer process loads each library
//! once and reuses it, so its threads, descriptors and memory stay flat however often the
//! extension is activated and deactivated (issue 12, C).

use probe_protocol::{PING, Ping};

use crate::support::{self, expect_pongs};

/// What a process holds, read from /proc.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// Threads, without the renderer process's short-lived `child-load` / `child-destroy`
    /// threads (each ends on its own right after posting its answer, so whether one is still
    /// exiting at the moment of reading is a matter of scheduling).
    threads: usize,
    fds: usize,
    rss_kib: u64,
}

fn usage(pid: u32) -> Usage {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| !matches!(name.trim_end(), "child-load" | "child-destroy"))
        .count();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    Usage { threads, fds, rss_kib }
}

/// The descriptors a process holds, with what they point at (for a failure's message).
fn fd_targets(pid: u32) -> Vec<String> {
    let mut targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .collect();
    targets.sort();
    targets
}

/// Memory the renderer process may gain over the measured cycles (allocator noise). A private
/// copy of a library per activation costs megabytes each (a debug build is about 20 MB).
const RSS_SLACK_KIB: u64 = 16 * 1024;

#[tokio::test]
async fn three_hundred_activation_cycles_with_a_renderer_process_open_leave_it_flat() {
    let host = support::host_with(&["probe"]).await;
    let frame = host.open_child_frame().await.unwrap();
    let pid = host.inspect().await.frame(frame.0).and_then(|frame| frame.pid).expect("a renderer process");
    let mut seen = host.broadcasts();
    let cycle = async |n: usize| {
        host.deactivate("probe").await.unwrap();
        host.activate("probe").await.unwrap();
        let snapshot = host.inspect().await;
        let probe = snapshot.extension("probe").unwrap();
        assert!(probe.frame_errors.is_empty(), "cycle {n}: {:?}", probe.frame_errors);
        assert_eq!(probe.frames, vec![frame.0], "cycle {n}: the renderer half runs in the frame");
    };
    // Warm-up: the first activations in the renderer process load the library and grow the
    // allocator's pools.
    for n in 1..=20 {
        cycle(n).await;
    }
    let before = usage(pid);
    let fds_before = fd_targets(pid);
    for n in 1..=300 {
        cycle(n).await;
        if n % 50 == 0 {
            // Both halves answer, once each: the renderer half really runs in that process.
            host.broadcast("probe", PING.name(), &Ping { tag: format!("cycle {n}") }).unwrap();
            let mut sides: Vec<String> =
                expect_pongs(&host, &mut seen, "probe", 2, 2).await.into_iter().map(|pong| pong.side).collect();
            sides.sort();
            assert_eq!(sides, [format!("frame:{}", frame.0), "main".to_owned()], "cycle {n}");
            let now = usage(pid);
            assert_eq!(
                now.fds,
                before.fds,
                "cycle {n}: the renderer process's descriptors grew from {} to {}: {:?} -> {:?}",
                before.fds,
                now.fds,
                fds_before,
                fd_targets(pid)
            );
            assert_eq!(now.threads, before.threads, "cycle {n}: the renderer process's threads grew");
            assert!(
                now.rss_kib <= before.rss_kib + RSS_SLACK_KIB,
                "cycle {n}: the renderer process's RSS grew from {} KiB to {} KiB",
                before.rss_kib,
                now.rss_kib
            );
        }
    }
    let after = usage(pid);
    eprintln!("renderer process over 300 activation cycles: {before:?} -> {after:?}");
    let snapshot = host.inspect().await;
    assert_eq!(snapshot.frame(frame.0).and_then(|frame| frame.pid), Some(pid), "the same renderer process throughout");
    host.shutdown().await;
}

#[tokio::test]
async fn an_isolated_extension_runs_each_activation_in_a_fresh_process_and_its_renderer_process_stays_flat() {
    let host = support::host_for(support::Transport::Isolated, &["probe"]).await;
    let frame = host.open_child_frame().await.unwrap();
    let renderer = host.inspect().await.frame(frame.0).and_then(|frame| frame.pid).expect("a renderer process");
    let isolated_pid = async || host.inspect().await.extension("probe").and_then(|probe| probe.pid).unwrap();
    let mut previous = isolated_pid().await;
    let mut before = None;
    for n in 1..=60 {
        host.deactivate("probe").await.unwrap();
        // The isolated process ends with its activation: it never loads the library twice.
        assert!(!std::path::Path::new(&format!("/proc/{previous}")).exists(), "cycle {n}: {previous} outlived it");
        host.activate("probe").await.unwrap();
        let pid = isolated_pid().await;
        assert_ne!(pid, previous, "cycle {n}: a fresh process per activation");
        previous = pid;
        let snapshot = host.inspect().await;
        assert!(snapshot.extension("probe").unwrap().frame_errors.is_empty(), "cycle {n}");
        // The renderer process starts an instance per activation, from the library it loaded once.
        let now = usage(renderer);
        match before {
            None if n == 10 => before = Some(now),
            Some(before) => {
                assert_eq!(now.fds, before.fds, "cycle {n}: {:?} -> {:?}", before, now);
                assert_eq!(now.threads, before.threads, "cycle {n}: {:?} -> {:?}", before, now);
            }
            None => {}
        }
    }
    let mut seen = host.broadcasts();
    host.broadcast("probe", PING.name(), &Ping { tag: "isolated".into() }).unwrap();
    let mut sides: Vec<String> =
        expect_pongs(&host, &mut seen, "probe", 2, 2).await.into_iter().map(|pong| pong.side).collect();
    sides.sort();
    assert_eq!(sides, [format!("frame:{}", frame.0), "main".to_owned()]);
    host.shutdown().await;
}

/// Waits for the renderer half of `reloadable` to say which version it runs, and checks that
/// no other version spoke first.
async fn renderer_says(logs: &mut tokio::sync::broadcast::Receiver<extension_host::LogRecord>, version: &str) {
    let record = support::wait_log(logs, "reloadable", |message| message.starts_with("renderer v")).await;
    assert_eq!(record.message, format!("renderer {version}"), "the renderer process runs the wrong build");
}

#[tokio::test]
async fn a_renderer_process_runs_a_rebuilt_library_and_reuses_an_unchanged_one() {
    use std::os::unix::fs::MetadataExt;
    let dir = crate::loading::tempdir();
    let path = dir.join("libreloadable.so");
    let host = extension_host::Host::new(support::config());
    let frame = host.open_child_frame().await.unwrap();
    let pid = host.inspect().await.frame(frame.0).and_then(|frame| frame.pid).expect("a renderer process");
    let mut logs = host.logs();

    // v1 padded to v2's size if v2 is larger (below, v2 is written over it at the same size).
    let mut v1 = std::fs::read(support::library("reload-v1")).unwrap();
    v1.resize(v1.len().max(std::fs::metadata(support::library("reload-v2")).unwrap().len() as usize), 0);
    std::fs::write(&path, &v1).unwrap();
    host.load(&path).unwrap();
    host.activate("reloadable").await.unwrap();
    renderer_says(&mut logs, "v1").await;
    // Activations of an unchanged library reuse it.
    let fds = usage(pid).fds;
    for _ in 0..5 {
        host.deactivate("reloadable").await.unwrap();
        host.activate("reloadable").await.unwrap();
        renderer_says(&mut logs, "v1").await;
    }
    assert_eq!(usage(pid).fds, fds, "the unchanged library was loaded again");
    host.uninstall("reloadable").await.unwrap();

    // Rebuilt in place: new bytes in the very same file, of the very same size (v2 padded at
    // the end, which the loader ignores): only the file's times tell them apart.
    let before = std::fs::metadata(&path).unwrap();
    let mut v2 = std::fs::read(support::library("reload-v2")).unwrap();
    let size = usize::try_from(before.len()).unwrap();
    assert!(v2.len() <= size, "v2 is not larger than v1");
    v2.resize(size, 0);
    std::fs::write(&path, &v2).unwrap();
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!((after.ino(), after.len()), (before.ino(), before.len()), "rewritten in place, to the same size");
    host.load(&path).unwrap();
    host.activate("reloadable").await.unwrap();
    renderer_says(&mut logs, "v2").await;
    host.uninstall("reloadable").await.unwrap();

    // Rebuilt as a new file renamed over the old one (as cargo and most tools do).
    let fresh = dir.join("libreloadable.so.new");
    std::fs::copy(support::library("reload-v1"), &fresh).unwrap();
    std::fs::rename(&fresh, &path).unwrap();
    host.load(&path).unwrap();
    host.activate("reloadable").await.unwrap();
    renderer_says(&mut logs, "v1").await;

    assert_eq!(host.inspect().await.frame(frame.0).and_then(|frame| frame.pid), Some(pid), "one renderer process");
    host.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
