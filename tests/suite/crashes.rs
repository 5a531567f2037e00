//! Crash containment: renderer processes and isolated extensions that die, misbehave, or
//! outlive their host.

use std::collections::BTreeSet;
use std::time::Duration;

use extension_api::InvokeErrorKind;
use extension_host::{ChildStartError, CrashBudget, ExtensionState, Host, HostError, HostEvent};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use probe_protocol::*;

use crate::support::{self, FAILSAFE, Transport, expect_pongs, wait_event, wait_log, wait_logs};

fn sigkill(pid: u32) {
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).unwrap();
}

/// Whether a process is gone (or a zombie nobody has reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn frame_pid(host: &Host, frame: u64) -> u32 {
    host.inspect().await.frame(frame).and_then(|frame| frame.pid).expect("the frame has a renderer process")
}

#[tokio::test]
async fn a_renderer_process_killed_mid_invokes_fails_them_fast_and_comes_back() {
    let host = support::host_with(&["probe"]).await;
    support::open_frames(&host, support::Transport::ChildProcess, 2).await;
    let mut logs = host.logs();
    let mut events = host.events();
    // In flight: main waiting on frame 2, and both frames waiting on main.
    let ask = AskFrame { frame: 2, channel: "frame-hang".into(), timeout_ms: 60_000 };
    let main_to_frame = host.invoke::<_, String>("probe", ASK_FRAME.name(), &ask, FAILSAFE);
    host.broadcast("probe", START_HANG.name(), &()).unwrap();
    wait_logs(&mut logs, "probe", &["hang handler started".to_owned()]).await;
    wait_logs(&mut logs, "probe", &["hang handler started".to_owned()]).await;
    let old_pid = frame_pid(&host, 2).await;

    sigkill(old_pid);
    assert_eq!(main_to_frame.await.unwrap(), "ConnectionLost");
    // Frame 2's request to main was cancelled: its handler is dropped.
    wait_log(&mut logs, "probe", |m| m == "hang handler dropped").await;
    let crashed = wait_event(&mut events, |e| matches!(e, HostEvent::FrameCrashed { frame: 2, .. })).await;
    let HostEvent::FrameCrashed { reason, restarting, .. } = crashed else { unreachable!() };
    assert!(restarting && reason.contains("killed by signal 9 (SIGKILL)"), "{reason}");
    wait_event(&mut events, |e| *e == HostEvent::FrameRestarted { frame: 2 }).await;

    // Back, with a new process, and everything answers again exactly once per half.
    let snapshot = host.inspect().await;
    let frame = snapshot.frame(2).unwrap();
    assert_eq!(frame.restarts, 1);
    assert_ne!(frame.pid, Some(old_pid));
    let mut seen = host.broadcasts();
    host.broadcast("probe", PING.name(), &Ping { tag: "after".into() }).unwrap();
    let pongs = expect_pongs(&host, &mut seen, "probe", 3, 3).await;
    let sides: BTreeSet<_> = pongs.iter().map(|p| p.side.as_str()).collect();
    assert_eq!(sides, BTreeSet::from(["main", "frame:1", "frame:2"]));
    host.shutdown().await;
}

#[tokio::test]
async fn a_renderer_that_overflows_its_stack_takes_only_its_process_down() {
    let host = support::host_with(&["probe", "hello"]).await;
    let frame = support::open_frame(&host, support::Transport::ChildProcess).await;
    let mut events = host.events();
    host.broadcast("probe", CRASH_FRAME.name(), &Relay { side: "frame:1".into(), tag: "stack-overflow".into() })
        .unwrap();
    let crashed = wait_event(&mut events, |e| matches!(e, HostEvent::FrameCrashed { .. })).await;
    assert!(matches!(crashed, HostEvent::FrameCrashed { frame: 1, restarting: true, .. }), "{crashed:?}");
    let greeting: String = host.invoke("hello", "greet", "survivor", FAILSAFE).await.unwrap();
    assert!(greeting.contains("survivor"));
    wait_event(&mut events, |e| *e == HostEvent::FrameRestarted { frame: frame.0 }).await;
    host.shutdown().await;
}

#[tokio::test]
async fn a_crashing_isolated_extension_is_restarted_within_its_budget_and_harms_no_one() {
    let mut config = support::config();
    config.crash_budget = CrashBudget { crashes: 2, window: Duration::from_secs(300) };
    let host = Host::new(config);
    let mut events = host.events();
    support::start(&host, Transport::Isolated, "probe").await;
    support::start(&host, Transport::InProcess, "hello").await;
    host.open_frame().await;
    let first_pid = host.inspect().await.extension("probe").unwrap().pid.expect("isolated in its own process");
    assert_ne!(first_pid, std::process::id());

    for (round, (mode, how)) in
        [("segfault", "SIGSEGV"), ("abort", "SIGABRT"), ("exit", "exited with status 3")].into_iter().enumerate()
    {
        let error = host.invoke::<_, ()>("probe", CRASH.name(), mode, FAILSAFE).await.unwrap_err();
        assert_eq!(error.kind, InvokeErrorKind::ConnectionLost, "{mode}: {error}");
        let crashed = wait_event(&mut events, |e| matches!(e, HostEvent::ExtensionCrashed { .. })).await;
        let HostEvent::ExtensionCrashed { reason, restarting, .. } = crashed else { unreachable!() };
        assert!(reason.contains(how), "{mode}: {reason}");
        // The host and the other extension never noticed.
        let greeting: String = host.invoke("hello", "greet", mode, FAILSAFE).await.unwrap();
        assert!(greeting.contains(mode));
        if round < 2 {
            assert!(restarting, "crash {} is within the budget", round + 1);
            wait_event(&mut events, |e| matches!(e, HostEvent::ExtensionRestarted { .. })).await;
            let snapshot = host.inspect().await;
            let probe = snapshot.extension("probe").unwrap();
            assert_eq!(probe.state, ExtensionState::Active);
            assert_eq!(probe.frames, vec![1], "its renderer half is back in the frame");
            let calls: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
            assert!(calls.is_empty(), "restarted fresh");
        } else {
            assert!(!restarting, "the third crash exceeds the budget of two");
        }
    }
    let state = host.state("probe").unwrap();
    assert!(matches!(&state, ExtensionState::Failed(reason) if reason.contains("crashed 3 times")), "{state:?}");
    assert_eq!(host.inspect().await.extension("probe").unwrap().pid, None);
    host.shutdown().await;
}

#[tokio::test]
async fn an_endless_loop_in_an_isolated_handler_times_out_and_deactivation_ends_it() {
    let host = Host::new(support::config());
    support::start(&host, Transport::Isolated, "probe").await;
    support::start(&host, Transport::InProcess, "hello").await;
    let pid = host.inspect().await.extension("probe").unwrap().pid.unwrap();
    let error = host.invoke::<_, ()>("probe", CRASH.name(), "spin", Duration::from_millis(200)).await.unwrap_err();
    assert_eq!(error.kind, InvokeErrorKind::Timeout);
    let greeting: String = host.invoke("hello", "greet", "still", FAILSAFE).await.unwrap();
    assert!(greeting.contains("still"));
    host.deactivate("probe").await.unwrap();
    assert!(gone(pid), "the spinning process was ended with its extension");
}

#[tokio::test]
async fn a_rogue_handshake_is_refused() {
    for (mode, expected) in [("version", "protocol version 999"), ("token", "wrong token")] {
        let host = support::rogue_host(mode);
        let error = host.open_child_frame().await.unwrap_err();
        assert!(error.to_string().contains(expected), "{mode}: {error}");
        // The reason is typed, not only worded.
        let HostError::ChildProcess(reason) = &error else { panic!("{mode}: {error:?}") };
        match mode {
            "version" => {
                assert!(matches!(reason, ChildStartError::ProtocolMismatch { child: 999, .. }), "{mode}: {reason:?}")
            }
            _ => assert_eq!(reason, &ChildStartError::WrongToken),
        }
        assert!(host.frames().is_empty());
    }
}

#[tokio::test]
async fn a_rogue_child_is_cut_off_and_nothing_it_sent_is_delivered() {
    for (mode, expected) in [
        ("garbage", "malformed packet"),
        ("oversized", "frame size too big"),
        ("forged", "does not belong to this connection"),
    ] {
        support::assert_rogue_child_cut_off(mode, expected).await;
    }
}

#[tokio::test]
async fn killing_the_host_leaves_no_child_processes() {
    let mut host =
        support::spawn_console(&["--frames", "0", "--child-frames", "2", "--isolate", "probe"], &["probe", "hello"]);
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stdin = host.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(host.stdout.take().unwrap()).lines();
    stdin.write_all(b"inspect\n").await.unwrap();
    let snapshot = tokio::time::timeout(FAILSAFE, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the host answers");
            if line.starts_with('{') {
                return serde_json::from_str::<serde_json::Value>(&line).unwrap();
            }
        }
    })
    .await
    .unwrap();
    let mut children: Vec<u32> =
        snapshot["frames"].as_array().unwrap().iter().filter_map(|f| f["pid"].as_u64()).map(|p| p as u32).collect();
    children
        .extend(snapshot["extensions"].as_array().unwrap().iter().filter_map(|e| e["pid"].as_u64()).map(|p| p as u32));
    assert_eq!(children.len(), 3, "two renderer processes and one isolated extension: {snapshot}");
    assert!(children.iter().all(|pid| !gone(*pid)));

    sigkill(host.id().unwrap());
    let _ = host.wait().await;
    // Each child sees its connection close and exits on its own.
    tokio::time::timeout(FAILSAFE, async {
        while !children.iter().all(|pid| gone(*pid)) {
            // Polling, not synchronising: they are the killed host's children, not ours, so
            // nothing here can wait for their exit; `/proc` says when they are gone.
            tokio::time::sleep(Duration::from_millis(20)).await; // SLEEP-OK: polling /proc, see above
        }
    })
    .await
    .expect("no child outlives the host");
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_to_its_sender_and_the_connection_survives() {
    let host = support::host_with(&["probe"]).await;
    support::open_frame(&host, support::Transport::ChildProcess).await;
    let mut events = host.events();
    let mut seen = host.broadcasts();
    let huge = Ping { tag: "x".repeat(extension_api::abi::MAX_MESSAGE) };
    // Refused to the sender: no half gets it (before, main did and the renderer process did
    // not, while `broadcast` said Ok).
    let refused = host.broadcast("probe", PING.name(), &huge).unwrap_err();
    assert!(matches!(refused, extension_host::HostError::TooLarge { .. }), "{refused}");
    host.broadcast("probe", PING.name(), &Ping { tag: "small".into() }).unwrap();
    let pongs = support::pongs(&mut seen, "probe", 2).await;
    let mut got: Vec<(String, &str)> = pongs.iter().map(|p| (p.side.clone(), p.tag.as_str())).collect();
    got.sort();
    assert_eq!(got, [("frame:1".to_owned(), "small"), ("main".to_owned(), "small")]);
    expect_pongs(&host, &mut seen, "probe", 0, 2).await;
    assert!(events.try_recv().is_err(), "no crash, no restart");
    assert_eq!(host.inspect().await.frame(1).unwrap().restarts, 0);
}
