//! Main's thread reads the sockets of the renderer processes whose packets all go to it
//! (`host/src/inbound/main_drain.rs`, `read_side.rs`): a frame's request reaches main's mailbox
//! from main's own thread. What the connection's reader thread guaranteed still holds: while
//! author code blocks main's thread the reader thread reads for it (the child's inspect
//! answers, its messages, in order and once), a renderer process killed while main's thread is
//! its reader is cleaned up as a crash (on the reader thread), and a second extension's
//! renderer half joining the process gives the socket back to the reader thread, losing and
//! doubling nothing.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use extension_host::{FrameId, Host, HostEvent};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use probe_protocol::*;

use crate::loading::tempdir;
use crate::support::{self, FAILSAFE, Transport, pongs, wait_event, wait_log};

/// The probe (main in process) with `frames` frames in renderer processes; its watchdog never
/// looks, so the only inspects are the test's.
async fn probe_host(frames: usize) -> Host {
    let config = extension_host::HostConfig {
        unresponsive_after: Duration::MAX,
        slow_handler: Duration::MAX,
        ..support::config()
    };
    let host = support::host_from(Transport::ChildProcess, config, &["probe"]).await;
    support::open_frames(&host, Transport::ChildProcess, frames).await;
    host
}

/// What main records of `send_interleaved`'s `count` messages (every third a broadcast).
fn sequence(count: u32) -> Vec<String> {
    (0..count).map(|n| if n % 3 == 0 { format!("event:{n}") } else { format!("invoke:{n}") }).collect()
}

/// Has frame `frame`'s renderer half send `count` messages to main and waits for its
/// `seq-done`, asserting none failed.
async fn renderer_sequence(host: &Host, extension: &str, frame: FrameId, count: u32) {
    let mut seen = host.broadcasts();
    host.broadcast(extension, RENDERER_SEQ.name(), &RendererSeq { frame: frame.0, count }).unwrap();
    let done = pongs(&mut seen, extension, 1).await;
    assert_eq!(done[0].tag, "seq-done failed=0", "{done:?}");
}

#[tokio::test]
async fn main_blocked_in_a_handler_still_has_its_renderer_process_read_in_order_and_once() {
    let host = probe_host(1).await;
    let frame = FrameId(1);
    // A round first: main's thread reads the frame's socket from here on.
    renderer_sequence(&host, "probe", frame, 3).await;

    let release = tempdir().join("release.sock").to_string_lossy().into_owned();
    let mut logs = host.logs();
    let blocked = host.invoke::<_, String>("probe", BLOCK.name(), &release, FAILSAFE);
    let path = release.clone();
    wait_log(&mut logs, "probe", move |m| m.starts_with("blocking the thread") && m.ends_with(&path)).await;

    // Main's thread is blocked: the frame's messages to it, and the child's answer to the
    // inspect, are read by the connection's reader thread (the reader of last resort).
    let mut seen = host.broadcasts();
    let count = 12;
    host.broadcast("probe", RENDERER_SEQ.name(), &RendererSeq { frame: frame.0, count }).unwrap();
    let queued = tokio::time::timeout(FAILSAFE, async {
        loop {
            let snapshot = host.inspect().await;
            let instance = snapshot.extension("probe").and_then(|probe| probe.instance.clone()).expect("probe runs");
            let frame_answered = instance.halves.iter().any(|half| half.half == extension_api::Half::Frame(frame));
            // The host's broadcast and the frame's messages, behind the blocked handler.
            if frame_answered && instance.queued_messages > u64::from(count) {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    queued.await.expect("the frame's messages reached main's mailbox while main's thread was blocked");

    UnixStream::connect(&release).unwrap();
    assert_eq!(blocked.await.unwrap(), "unblocked");
    let done = pongs(&mut seen, "probe", 1).await;
    assert_eq!(done[0].tag, "seq-done failed=0", "{done:?}");
    let log: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    let expected: Vec<String> = sequence(3).into_iter().chain(sequence(count)).collect();
    assert_eq!(log, expected, "in the order sent, once each");
    host.shutdown().await;
}

#[tokio::test]
async fn a_renderer_process_killed_while_mains_thread_reads_it_is_a_crash_cleaned_up_off_that_thread() {
    let host = probe_host(2).await;
    for frame in [1, 2] {
        renderer_sequence(&host, "probe", FrameId(frame), 2).await;
    }
    let mut logs = host.logs();
    let mut events = host.events();
    // In flight: main waiting on frame 2, and frame 2 waiting on main.
    let ask = AskFrame { frame: 2, channel: "frame-hang".into(), timeout_ms: 60_000 };
    let main_to_frame = host.invoke::<_, String>("probe", ASK_FRAME.name(), &ask, FAILSAFE);
    host.broadcast("probe", START_HANG.name(), &()).unwrap();
    wait_logs_twice(&mut logs, "hang handler started").await;
    let pid = host.inspect().await.frame(2).and_then(|frame| frame.pid).expect("frame 2 has a renderer process");

    // Main's thread is parked: it sees the end first (its epoll set), and hands it over.
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).unwrap();
    assert_eq!(main_to_frame.await.unwrap(), "ConnectionLost");
    wait_log(&mut logs, "probe", |m| m == "hang handler dropped").await;
    let crashed = wait_event(&mut events, |e| matches!(e, HostEvent::FrameCrashed { frame: 2, .. })).await;
    let HostEvent::FrameCrashed { reason, .. } = crashed else { unreachable!() };
    assert!(reason.contains("killed by signal 9 (SIGKILL)"), "{reason}");
    wait_event(&mut events, |e| *e == HostEvent::FrameRestarted { frame: 2 }).await;

    // The other renderer process, in the same epoll set, was never disturbed; the new one is
    // read as well.
    renderer_sequence(&host, "probe", FrameId(1), 4).await;
    renderer_sequence(&host, "probe", FrameId(2), 4).await;
    let log: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    let expected: Vec<String> = [2, 2, 4, 4].into_iter().flat_map(sequence).collect();
    assert_eq!(log, expected);
    host.shutdown().await;
}

/// Waits for two records `text` of the probe (one per half).
async fn wait_logs_twice(logs: &mut tokio::sync::broadcast::Receiver<extension_host::LogRecord>, text: &str) {
    let expected = [text.to_owned()];
    support::wait_logs(logs, "probe", &expected).await;
    support::wait_logs(logs, "probe", &expected).await;
}

#[tokio::test]
async fn a_second_extensions_renderer_half_joining_the_process_loses_and_doubles_nothing() {
    let host = probe_host(1).await;
    let frame = FrameId(1);
    renderer_sequence(&host, "probe", frame, 5).await;
    // A burst in flight while the second extension's renderer half loads into the same renderer
    // process: the socket goes back to its reader thread meanwhile.
    let mut seen = host.broadcasts();
    host.broadcast("probe", RENDERER_SEQ.name(), &RendererSeq { frame: frame.0, count: 60 }).unwrap();
    support::start(&host, Transport::ChildProcess, "probe-twin").await;
    let pid = host.inspect().await.frame(1).and_then(|frame| frame.pid);
    let done = pongs(&mut seen, "probe", 1).await;
    assert_eq!(done[0].tag, "seq-done failed=0", "{done:?}");
    let snapshot = host.inspect().await;
    assert_eq!(snapshot.extension("probe-twin").map(|twin| twin.frames.clone()), Some(vec![1]));
    assert_eq!(snapshot.frame(1).and_then(|frame| frame.pid), pid, "one renderer process for both");
    // Both extensions' halves there, read by the reader thread now.
    renderer_sequence(&host, "probe", frame, 7).await;
    renderer_sequence(&host, "probe-twin", frame, 4).await;
    let log: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    let expected: Vec<String> = [5, 60, 7].into_iter().flat_map(sequence).collect();
    assert_eq!(log, expected, "probe's, in order, once each");
    let twin: Vec<String> = host.invoke("probe-twin", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    assert_eq!(twin, sequence(4));
    // The twin deactivated: its key retired, the process serves the probe alone again.
    host.deactivate("probe-twin").await.unwrap();
    renderer_sequence(&host, "probe", frame, 6).await;
    let log: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    assert_eq!(log.len(), 5 + 60 + 7 + 6);
    assert_eq!(log[5 + 60 + 7..], sequence(6)[..]);
    host.shutdown().await;
}
