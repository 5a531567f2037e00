//! The lifecycle: load -> activate -> deactivate -> activate again -> uninstall, every failure
//! on the way, and what is left behind (nothing).

use std::time::Duration;

use extension_host::{ExtensionState, Host, HostError};
use probe_protocol::*;

use crate::loading::tempdir;
use crate::support::{self, FAILSAFE, library, wait_log};

/// Live threads of the process whose name starts with `prefix` (Linux: /proc/self/task/*).
///
/// A thread that exits stays listed for a moment after `join` returns: the kernel wakes the
/// joiner when it clears the thread's id, a little before it unlists the thread. Such a
/// thread is no longer running anything (the kernel set `PF_EXITING` in its flags when it
/// began to exit), so it is not counted: otherwise a loaded machine could see the last
/// activation's joined thread beside the next one's.
fn threads_named(prefix: &str) -> usize {
    /// `PF_EXITING` in `include/linux/sched.h`: the thread is in `do_exit`.
    const PF_EXITING: u64 = 0x4;
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // `pid (comm) state ppid pgrp session tty_nr tpgid flags ...`; the name may hold
            // spaces and parentheses, so the fields are counted from its last `)`.
            let Some((head, fields)) = stat.rsplit_once(')') else { return false };
            let named = head.split_once('(').is_some_and(|(_, name)| name.starts_with(prefix));
            let flags: u64 = fields.split_whitespace().nth(6).and_then(|flags| flags.parse().ok()).unwrap_or(0);
            named && flags & PF_EXITING == 0
        })
        .count()
}

#[tokio::test]
async fn full_lifecycle_with_reactivation_and_uninstall() {
    let host = Host::new(support::config());
    let info = host.load(library("probe")).unwrap();
    assert_eq!(host.state("probe"), Some(ExtensionState::Loaded));
    assert_eq!(info.name, "probe");

    host.activate("probe").await.unwrap();
    assert_eq!(host.state("probe"), Some(ExtensionState::Active));
    let first = host.inspect().await.extension("probe").unwrap().instance.clone().unwrap();
    assert!(first.halves[0].handlers.contains(&"echo".to_owned()));

    let error = host.activate("probe").await.unwrap_err();
    assert!(matches!(error, HostError::WrongState { .. }), "{error}");

    let report = host.deactivate("probe").await.unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(host.state("probe"), Some(ExtensionState::Inactive));
    let snapshot = host.inspect().await;
    let probe = snapshot.extension("probe").unwrap();
    assert!(probe.instance.is_none() && probe.pending_requests == 0 && probe.frames.is_empty());
    let error = host.invoke::<_, ()>("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap_err();
    assert_eq!(error.kind, extension_api::InvokeErrorKind::Deactivated);
    assert!(matches!(host.deactivate("probe").await, Err(HostError::WrongState { .. })));

    host.activate("probe").await.unwrap();
    let again = host.inspect().await.extension("probe").unwrap().instance.clone().unwrap();
    assert_eq!(again.halves, first.halves, "re-activation starts clean: same registrations, not doubled");
    let log: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    assert!(log.is_empty());

    host.uninstall("probe").await.unwrap();
    assert_eq!(host.state("probe"), None);
    assert!(host.extensions().is_empty());
    assert!(matches!(host.activate("probe").await, Err(HostError::UnknownExtension(_))));
}

#[tokio::test]
async fn an_activation_error_leaves_it_failed_with_the_reason() {
    let host = support::host_with(&["hello"]).await;
    host.load(library("fail-activate")).unwrap();
    let error = host.activate("fail-activate").await.unwrap_err();
    let HostError::ActivationFailed { reason, .. } = &error else { panic!("{error:?}") };
    assert!(reason.contains("cannot reach the settings database: connection refused"), "{reason}");
    assert!(matches!(host.state("fail-activate"), Some(ExtensionState::Failed(r)) if r == *reason));
    assert!(host.inspect().await.extension("fail-activate").unwrap().instance.is_none());
    // The host and the other extension are fine; the failed one can be retried.
    let greeting: String = host.invoke("hello", "greet", "still here", FAILSAFE).await.unwrap();
    assert!(greeting.starts_with("Hello, still here"));
    assert!(host.activate("fail-activate").await.is_err());
    assert_eq!(threads_named("ext:fail-activ"), 0, "the failed instance's thread is gone");
}

#[tokio::test]
async fn an_activation_panic_is_caught_and_reported() {
    let host = support::host_with(&["hello"]).await;
    let mut logs = host.logs();
    host.load(library("panic-activate")).unwrap();
    let error = host.activate("panic-activate").await.unwrap_err();
    assert!(error.to_string().contains("activate panicked: boom in activate"), "{error}");
    assert!(matches!(host.state("panic-activate"), Some(ExtensionState::Failed(_))));
    // The panic message went through the extension's panic hook to the host's log.
    let record = wait_log(&mut logs, "panic-activate", |m| m.contains("boom in activate")).await;
    assert_eq!(record.level, "ERROR");
    let greeting: String = host.invoke("hello", "greet", "x", FAILSAFE).await.unwrap();
    assert!(greeting.contains("x"));
}

#[tokio::test]
async fn a_panicking_deactivate_is_reported_and_everything_is_cleaned_up() {
    let host = support::host_with(&["probe"]).await;
    host.invoke::<_, ()>("probe", DEACTIVATE_BEHAVIOUR.name(), "panic", FAILSAFE).await.unwrap();
    let report = host.deactivate("probe").await.unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(report.problems[0].contains("panicked: probe panics in deactivate"), "{report:?}");
    assert_eq!(host.state("probe"), Some(ExtensionState::Inactive));
    let snapshot = host.inspect().await;
    assert!(snapshot.extension("probe").unwrap().last_problem.as_deref().unwrap().contains("panicked"));
    host.activate("probe").await.unwrap();
    let log: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    assert!(log.is_empty());
}

#[tokio::test]
async fn a_hanging_deactivate_is_bounded_and_its_tasks_still_die() {
    let host = support::host_with(&["probe"]).await;
    let mut logs = host.logs();
    host.invoke::<_, ()>("probe", SPAWN_TICKER.name(), &(), FAILSAFE).await.unwrap();
    host.invoke::<_, ()>("probe", DEACTIVATE_BEHAVIOUR.name(), "hang", FAILSAFE).await.unwrap();
    let report = host.deactivate("probe").await.unwrap();
    assert!(report.problems.iter().any(|p| p.contains("did not finish within")), "{report:?}");
    assert_eq!(host.state("probe"), Some(ExtensionState::Inactive));
    wait_log(&mut logs, "probe", |m| m == "ticker dropped").await;
}

#[tokio::test]
async fn a_task_spawned_with_plain_tokio_is_gone_after_deactivate() {
    let host = support::host_with(&["probe"]).await;
    let mut logs = host.logs();
    host.invoke::<_, ()>("probe", SPAWN_TICKER.name(), &(), FAILSAFE).await.unwrap();
    let tasks = host.inspect().await.extension("probe").unwrap().instance.as_ref().unwrap().tasks;
    assert!(tasks >= 1, "the ticker runs: {tasks} tasks");
    host.deactivate("probe").await.unwrap();
    // Logged while the runtime dropped it, before `deactivate` returned.
    wait_log(&mut logs, "probe", |m| m == "ticker dropped").await;
}

#[tokio::test]
async fn two_hundred_cycles_leave_no_threads_tasks_or_registrations_behind() {
    let host = Host::new(support::config());
    let mut logs = host.logs();
    host.load(library("cycler")).unwrap();
    host.open_frame().await;
    assert_eq!(threads_named("ext:cycler"), 0);
    let mut first = None;
    for cycle in 0..200 {
        host.activate("cycler").await.unwrap();
        // A plain tokio task per cycle, which logs when it is dropped.
        host.invoke::<_, ()>("cycler", SPAWN_TICKER.name(), &(), FAILSAFE).await.unwrap();
        if cycle % 50 == 0 || cycle == 199 {
            let snapshot = host.inspect().await;
            let instance = snapshot.extension("cycler").unwrap().instance.clone().unwrap();
            assert_eq!(threads_named("ext:cycler"), 1, "one runtime thread while active");
            assert!(instance.tasks >= 1, "the ticker is alive");
            match &first {
                None => first = Some(instance.halves),
                Some(first) => {
                    assert_eq!(&instance.halves, first, "cycle {cycle} has exactly the first cycle's registrations")
                }
            }
        }
        host.deactivate("cycler").await.unwrap();
    }
    assert_eq!(threads_named("ext:cycler"), 0, "no runtime thread survives deactivation");
    let snapshot = host.inspect().await;
    let cycler = snapshot.extension("cycler").unwrap();
    assert!(cycler.instance.is_none() && cycler.pending_requests == 0);
    // Every one of the 200 tasks was dropped by its deactivation (logged before it returned).
    let mut dropped = 0;
    while let Ok(record) = logs.try_recv() {
        dropped += usize::from(record.message == "ticker dropped");
    }
    assert_eq!(dropped, 200);
}

#[tokio::test]
async fn a_rebuilt_library_at_the_same_path_runs_the_new_code() {
    let dir = tempdir();
    let path = dir.join("libreloadable.so");
    let host = Host::new(support::config());

    std::fs::copy(library("reload-v1"), &path).unwrap();
    assert_eq!(host.load(&path).unwrap().version.to_string(), "1.0.0");
    host.activate("reloadable").await.unwrap();
    let version: String = host.invoke("reloadable", "version", &(), FAILSAFE).await.unwrap();
    assert_eq!(version, "v1");
    host.uninstall("reloadable").await.unwrap();

    // "Rebuild": new bytes at the very same path.
    std::fs::copy(library("reload-v2"), &path).unwrap();
    assert_eq!(host.load(&path).unwrap().version.to_string(), "2.0.0");
    host.activate("reloadable").await.unwrap();
    let version: String = host.invoke("reloadable", "version", &(), FAILSAFE).await.unwrap();
    assert_eq!(version, "v2");
}

#[tokio::test]
async fn extension_logs_reach_the_host_under_the_extension_name() {
    let host = Host::new(support::config());
    let mut logs = host.logs();
    host.load(library("hello")).unwrap();
    host.activate("hello").await.unwrap();
    let record = wait_log(&mut logs, "hello", |m| m == "hello main activated").await;
    assert_eq!((record.level.as_str(), record.target.as_str()), ("INFO", "hello"));
}

#[tokio::test]
async fn the_host_level_filter_applies_inside_extensions() {
    let mut config = support::config();
    config.max_log_level = extension_host::LevelFilter::WARN;
    let host = Host::new(config);
    let mut logs = host.logs();
    for name in ["hello", "probe"] {
        host.load(library(name)).unwrap();
        host.activate(name).await.unwrap();
    }
    host.open_frame().await;
    // hello's INFO records (activation, greetings) are filtered; WARN (a decode failure) is not.
    host.broadcast("probe", TYPED, "not a number").unwrap();
    let record = tokio::time::timeout(FAILSAFE, logs.recv()).await.unwrap().unwrap();
    assert_eq!(record.level, "WARN", "the first record is the warning: {record:?}");
    assert!(record.message.contains("does not decode as u32"), "{record:?}");
}

#[tokio::test]
async fn a_blocked_extension_does_not_stall_the_host_or_the_others() {
    let host = support::host_with(&["probe", "hello"]).await;
    let mut logs = host.logs();
    let socket = tempdir().join("release.sock");
    let blocked = host.invoke::<_, String>("probe", BLOCK.name(), &socket.to_string_lossy(), FAILSAFE);
    wait_log(&mut logs, "probe", |m| m.starts_with("blocking the thread")).await;
    // The probe's thread is stuck in `accept`; everything else answers.
    let greeting: String = host.invoke("hello", "greet", "neighbour", FAILSAFE).await.unwrap();
    assert!(greeting.contains("neighbour"));
    let snapshot = host.inspect().await;
    assert_eq!(snapshot.extension("probe").unwrap().instance.as_ref().unwrap().halves[0].running_handlers, 1);
    std::os::unix::net::UnixStream::connect(&socket).unwrap();
    assert_eq!(blocked.await.unwrap(), "unblocked");
}

#[tokio::test]
async fn wrong_state_calls_are_refused_with_the_state() {
    let host = Host::new(support::config());
    host.load(library("hello")).unwrap();
    let error = host.deactivate("hello").await.unwrap_err();
    assert!(error.to_string().contains("is loaded"), "{error}");
    assert!(matches!(host.deactivate("nope").await, Err(HostError::UnknownExtension(_))));
    assert!(matches!(host.broadcast("hello", "x", &1), Err(HostError::WrongState { .. })));
    assert!(matches!(host.close_frame(extension_host::FrameId(42)).await, Err(HostError::UnknownFrame(42))));
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn frame_cycles_leave_no_halves_registrations_tasks_or_processes_behind() {
    let host = support::host_with(&["probe-twin"]).await;
    let name = "probe-twin";
    // A request answered on the extension's thread: the tasks that ran its activation (or a
    // frame's closing) have finished by the time it is.
    let settled = || host.invoke::<_, Vec<String>>(name, SEQ_LOG.name(), &(), FAILSAFE);
    settled().await.unwrap();
    // What the instance has, without what it counted meanwhile (CPU time, messages, channels, inspects).
    // (Nor whether its dispatcher is back from that request yet.)
    let registrations = |instance: &extension_host::InstanceSnapshot| extension_host::InstanceSnapshot {
        cpu_ns: None,
        dispatched: 0,
        channels: Vec::new(),
        inspections: 0,
        dispatching: false,
        ..instance.clone()
    };
    let main_only = registrations(host.inspect().await.extension(name).unwrap().instance.as_ref().unwrap());
    assert_eq!(main_only.halves.len(), 1);
    for _ in 0..200 {
        let frame = host.open_frame().await;
        host.close_frame(frame).await.unwrap();
    }
    for _ in 0..5 {
        let frame = host.open_child_frame().await.unwrap();
        let pid = host.inspect().await.frame(frame.0).and_then(|frame| frame.pid).unwrap();
        host.close_frame(frame).await.unwrap();
        // Closed means ended and reaped: no process, not even a zombie.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "renderer process {pid} outlived its frame");
    }
    settled().await.unwrap();
    let snapshot = host.inspect().await;
    let extension = snapshot.extension(name).unwrap();
    assert_eq!(
        registrations(extension.instance.as_ref().unwrap()),
        main_only,
        "exactly main's registrations and tasks remain"
    );
    assert_eq!(extension.pending_requests, 0);
    assert!(extension.frames.is_empty() && snapshot.frames.is_empty());
}
