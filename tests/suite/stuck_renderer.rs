//! A renderer process's instance thread reads its own socket (`host/src/remote/child.rs`,
//! `Inbound`): a message reaches its mailbox without a wake of another thread. When author code
//! blocks that thread, the process's reader thread reads for it: the host's inspect is still
//! answered (after the messages sent before it, which wait in the mailbox), the messages are
//! dispatched in order, once each, when the thread is free again, and the process still exits
//! when its host is killed.

use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use probe_protocol::{BLOCK_FRAME, PING, Ping, Relay};

use crate::loading::tempdir;
use crate::support::{self, FAILSAFE, Transport};

/// A listener the probe's blocked frame connects to, and its path.
fn block_listener() -> (UnixListener, String) {
    let path = tempdir().join("block-frame.sock");
    let listener = UnixListener::bind(&path).expect("the listener binds (in the test's runtime)");
    (listener, path.to_string_lossy().into_owned())
}

/// The blocked frame's connection: once it is here, the frame's thread is inside the listener,
/// blocked reading from it (until it closes).
async fn blocked_frame(listener: UnixListener) -> UnixStream {
    let accepted = tokio::time::timeout(FAILSAFE, listener.accept()).await;
    accepted.expect("the frame connects to block its thread").expect("the accept succeeds").0
}

#[tokio::test]
async fn a_renderer_process_whose_thread_is_blocked_answers_inspect_and_delivers_in_order_after() {
    // The watchdog never looks: the test is about what the child does without its inspects.
    let config = extension_host::HostConfig {
        unresponsive_after: std::time::Duration::MAX,
        slow_handler: std::time::Duration::MAX,
        ..support::config()
    };
    let host = support::host_from(Transport::ChildProcess, config, &["probe"]).await;
    let frame = support::open_frame(&host, Transport::ChildProcess).await;
    let (listener, path) = block_listener();
    let mut broadcasts = host.broadcasts();
    host.broadcast("probe", BLOCK_FRAME.name(), &Relay { side: format!("frame:{}", frame.0), tag: path }).unwrap();
    let blocked = blocked_frame(listener).await;

    let tags = ["queued-1", "queued-2", "queued-3"];
    for tag in tags {
        host.broadcast("probe", PING.name(), &Ping { tag: tag.into() }).unwrap();
    }
    // Main answers its pings (the frame cannot): then main's mailbox holds none of them.
    let main_pongs = support::pongs(&mut broadcasts, "probe", tags.len()).await;
    assert!(main_pongs.iter().all(|pong| pong.side == "main"), "{main_pongs:?}");
    // On the frame's connection the inspect follows the pings: the child's reader thread read
    // them into the blocked instance's mailbox, then answered the inspect (with its half).
    let snapshot = host.inspect().await;
    let instance = snapshot.extension("probe").and_then(|probe| probe.instance.clone()).expect("probe runs");
    assert!(
        instance.halves.iter().any(|half| half.half == extension_api::Half::Frame(extension_api::FrameId(frame.0))),
        "the blocked renderer process did not answer the inspect: {instance:?}"
    );
    assert!(instance.queued_messages >= tags.len() as u64, "the pings wait in the frame's mailbox: {instance:?}");

    drop(blocked);
    // The frame's pongs once each (then nothing but the barrier's), in the order sent.
    let pongs = support::expect_pongs(&host, &mut broadcasts, "probe", tags.len(), 2).await;
    let frame_tags: Vec<&str> = pongs.iter().map(|pong| pong.tag.as_str()).collect();
    assert!(pongs.iter().all(|pong| pong.side.starts_with("frame:")), "{pongs:?}");
    assert_eq!(frame_tags, tags, "the frame's pongs, in order, once each");
    host.shutdown().await;
}

#[tokio::test]
async fn a_renderer_process_whose_thread_is_blocked_exits_when_its_host_is_killed() {
    let mut host = support::spawn_console(&["--frames", "0", "--child-frames", "1"], &["probe"]);
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stdin = host.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(host.stdout.take().unwrap()).lines();
    // Answered once the frame is open.
    stdin.write_all(b"inspect\n").await.unwrap();
    tokio::time::timeout(FAILSAFE, async {
        while !lines.next_line().await.unwrap().expect("the host answers").starts_with('{') {}
    })
    .await
    .expect("the host answers the inspect");
    let (listener, path) = block_listener();
    let relay = serde_json::json!({ "side": "frame:1", "tag": path });
    stdin.write_all(format!("broadcast probe {} {relay}\n", BLOCK_FRAME.name()).as_bytes()).await.unwrap();
    let mut blocked = blocked_frame(listener).await;

    kill(Pid::from_raw(i32::try_from(host.id().unwrap()).unwrap()), Signal::SIGKILL).unwrap();
    let _ = host.wait().await;
    // The frame's end of the connection closes when its process exits: it must, though its
    // instance's thread is still blocked reading from it.
    let closed = tokio::time::timeout(FAILSAFE, blocked.read(&mut [0; 1])).await;
    let read = closed.expect("the renderer process outlived its host").expect("the read ends cleanly");
    assert_eq!(read, 0, "the renderer process wrote to its blocking listener");
}
