//! Deferred writes (`host/src/remote/batch.rs`): what an instance's thread sends to a socket
//! waits until the thread is about to park and goes out in one write, but never waits while the
//! thread sleeps. A send made by one message's handler or listener, followed in the same run of
//! the thread by a handler that blocks it, still arrives while the block lasts: on the child's
//! socket writer (an isolated main's reply) and on the host's (main's broadcast to a renderer
//! process). A child that dies with sends in its buffer fails their requests as lost.

use std::os::unix::net::UnixStream;

use extension_host::InvokeErrorKind;
use extension_host::{Host, ObservedBroadcast};
use probe_protocol::{BLOCK, CRASH, PING, PONG, Ping, Pong, RELAY_PING, Relay, SEQ_INVOKE};
use tokio::sync::broadcast::Receiver;

use crate::loading::tempdir;
use crate::support::{self, FAILSAFE, Transport, wait_log};

/// A host running the probe on `transport` with `frames` frames of its kind, whose watchdog
/// never looks: its inspects are packets on the same sockets, which would write what a thread
/// left waiting (as any other send does), and the tests are about what happens without them.
async fn probe_host(transport: Transport, frames: usize) -> Host {
    let config = extension_host::HostConfig {
        unresponsive_after: std::time::Duration::MAX,
        slow_handler: std::time::Duration::MAX,
        ..support::config()
    };
    let host = support::host_from(transport, config, &["probe"]).await;
    support::open_frames(&host, transport, frames).await;
    host
}

/// A socket path a blocked handler of the probe waits on until it is connected to.
fn release_socket() -> String {
    tempdir().join("release.sock").to_string_lossy().into_owned()
}

/// Invokes the probe main's `BLOCK` handler and waits until it runs (its log record); the
/// returned future is its reply.
async fn block_main(host: &Host, release: &str) -> impl Future<Output = String> + use<> {
    let mut logs = host.logs();
    let blocked = host.invoke::<_, String>("probe", BLOCK.name(), release, FAILSAFE);
    let path = release.to_owned();
    wait_log(&mut logs, "probe", move |m| m.starts_with("blocking the thread") && m.ends_with(&path)).await;
    async move { blocked.await.expect("the blocking request is answered once released") }
}

/// Checks that at least `count` messages wait in the probe's mailboxes (the host's sends to
/// main, behind its blocked handler), so they are dispatched in one run of the thread. What the host sent before
/// the inspect was queued before the inspect was answered (in process, by the call; across
/// processes, in the connection's order); others may be queued too (a frame's broadcasts).
async fn assert_queued(host: &Host, count: u64) {
    let snapshot = host.inspect().await;
    let instance = snapshot.extension("probe").and_then(|probe| probe.instance.clone()).expect("probe runs");
    assert!(instance.queued_messages >= count, "{} queued, not {count}", instance.queued_messages);
}

/// The next pong of `extension` from a frame's renderer half with `tag`.
async fn frame_pong(broadcasts: &mut Receiver<ObservedBroadcast>, tag: &str) -> Pong {
    let found = tokio::time::timeout(FAILSAFE, async {
        loop {
            let seen = broadcasts.recv().await.expect("the broadcast stream runs");
            if seen.extension != "probe" || seen.channel != PONG.name() {
                continue;
            }
            let pong: Pong = seen.value().expect("a pong decodes");
            if pong.side.starts_with("frame:") && pong.tag == tag {
                return pong;
            }
        }
    });
    found.await.unwrap_or_else(|_| panic!("no pong `{tag}` from the frame while main's thread was blocked"))
}

#[tokio::test]
async fn an_isolated_mains_reply_is_not_held_while_the_next_handler_blocks_its_thread() {
    let host = probe_host(Transport::Isolated, 0).await;
    let (hold, release) = (release_socket(), release_socket());
    let held = block_main(&host, &hold).await;
    // Behind the blocked handler: a quick request, then one that blocks the thread in turn.
    let quick = host.invoke::<_, u32>("probe", SEQ_INVOKE.name(), &5, FAILSAFE);
    let mut logs = host.logs();
    let blocked = host.invoke::<_, String>("probe", BLOCK.name(), &release, FAILSAFE);
    assert_queued(&host, 2).await;
    UnixStream::connect(&hold).unwrap();
    assert_eq!(held.await, "unblocked");
    // One run of the thread: the quick handler answers (its reply deferred until the thread
    // parks), then the next handler blocks the thread, which does not park it.
    wait_log(&mut logs, "probe", |m| m.starts_with("blocking the thread") && m.ends_with(&release)).await;
    assert_eq!(quick.await.expect("the quick request's reply arrives while the thread is blocked"), 5);
    UnixStream::connect(&release).unwrap();
    assert_eq!(blocked.await.unwrap(), "unblocked");
    // Still in step afterwards.
    assert_eq!(host.invoke::<_, u32>("probe", SEQ_INVOKE.name(), &6, FAILSAFE).await.unwrap(), 6);
    host.shutdown().await;
}

#[tokio::test]
async fn mains_broadcast_to_a_renderer_process_is_not_held_while_the_next_handler_blocks_its_thread() {
    let host = probe_host(Transport::ChildProcess, 1).await;
    let mut broadcasts = host.broadcasts();
    let (hold, release) = (release_socket(), release_socket());
    let held = block_main(&host, &hold).await;
    // Behind the blocked handler: main's listener broadcasts a ping to the frame (written by
    // main's thread to the renderer process's socket), then a handler blocks the thread.
    // A ping, which main's listener answers with a pong to every half: the run's first send to
    // the frame's socket (written at once; the frame ignores pongs). The frame answers the ping
    // too, now: awaited, so nothing of it arrives later.
    host.broadcast("probe", PING.name(), &Ping { tag: "first".into() }).unwrap();
    frame_pong(&mut broadcasts, "first").await;
    // Then the relay: main's second send to that socket, which waits.
    host.broadcast("probe", RELAY_PING.name(), &Relay { side: "main".into(), tag: "relayed".into() }).unwrap();
    let blocked = host.invoke::<_, String>("probe", BLOCK.name(), &release, FAILSAFE);
    assert_queued(&host, 3).await;
    UnixStream::connect(&hold).unwrap();
    assert_eq!(held.await, "unblocked");
    // The frame got the ping and answered while main's thread is still blocked.
    let pong = frame_pong(&mut broadcasts, "relayed").await;
    assert_eq!(pong.sender, "main", "{pong:?}");
    UnixStream::connect(&release).unwrap();
    assert_eq!(blocked.await.unwrap(), "unblocked");
    // Still in step afterwards.
    host.broadcast("probe", PING.name(), &Ping { tag: "after".into() }).unwrap();
    frame_pong(&mut broadcasts, "after").await;
    host.shutdown().await;
}

#[tokio::test]
async fn a_child_that_dies_with_replies_waiting_in_its_buffer_fails_their_requests_as_lost() {
    let host = probe_host(Transport::Isolated, 0).await;
    let hold = release_socket();
    let mut logs = host.logs();
    let held = host.invoke::<_, String>("probe", BLOCK.name(), &hold, FAILSAFE);
    wait_log(&mut logs, "probe", |m| m.starts_with("blocking the thread")).await;
    // One run of the thread: the blocked handler answers (the run's first send, written at
    // once), a quick request answers (its reply deferred until the thread parks), then the
    // process aborts in the next handler, that reply most likely still in the buffer.
    let quick = host.invoke::<_, u32>("probe", SEQ_INVOKE.name(), &5, FAILSAFE);
    let crash = host.invoke::<_, ()>("probe", CRASH.name(), "abort", FAILSAFE);
    assert_queued(&host, 2).await;
    UnixStream::connect(&hold).unwrap();
    let crashed = crash.await.unwrap_err();
    assert_eq!(crashed.kind, InvokeErrorKind::ConnectionLost, "{crashed}");
    // Answered if written before the abort, else failed as lost: never left waiting, never
    // another kind.
    match held.await {
        Ok(value) => assert_eq!(value, "unblocked"),
        Err(error) => assert_eq!(error.kind, InvokeErrorKind::ConnectionLost, "{error}"),
    }
    match quick.await {
        Ok(value) => assert_eq!(value, 5),
        Err(error) => assert_eq!(error.kind, InvokeErrorKind::ConnectionLost, "{error}"),
    }
    host.shutdown().await;
}

#[tokio::test]
async fn a_run_that_blocks_twice_still_has_its_sends_written_after_the_flusher_rested() {
    let host = probe_host(Transport::Isolated, 0).await;
    let (hold, first, second) = (release_socket(), release_socket(), release_socket());
    let held = block_main(&host, &hold).await;
    // Behind the blocked handler, for one run of the thread: a quick request, a handler that
    // blocks, a quick request again, and a handler that blocks again.
    let quick = host.invoke::<_, u32>("probe", SEQ_INVOKE.name(), &5, FAILSAFE);
    let mut logs = host.logs();
    let blocked = host.invoke::<_, String>("probe", BLOCK.name(), &first, FAILSAFE);
    let quick_again = host.invoke::<_, u32>("probe", SEQ_INVOKE.name(), &6, FAILSAFE);
    let blocked_again = host.invoke::<_, String>("probe", BLOCK.name(), &second, FAILSAFE);
    assert_queued(&host, 4).await;
    UnixStream::connect(&hold).unwrap();
    assert_eq!(held.await, "unblocked");
    // The first block: the flusher writes what the run deferred, and, nothing else deferred,
    // rests after a tick.
    wait_log(&mut logs, "probe", |m| m.starts_with("blocking the thread") && m.ends_with(&first)).await;
    assert_eq!(quick.await.expect("the first quick reply arrives while the thread is blocked"), 5);
    UnixStream::connect(&first).unwrap();
    // The same run goes on: its next deferred sends (the released handler's reply, the quick
    // one's, the log record) must arm the flusher again, or they wait while the thread blocks.
    wait_log(&mut logs, "probe", |m| m.starts_with("blocking the thread") && m.ends_with(&second)).await;
    assert_eq!(blocked.await.expect("the first blocked request's reply arrives"), "unblocked");
    assert_eq!(quick_again.await.expect("the second quick reply arrives while the thread is blocked"), 6);
    UnixStream::connect(&second).unwrap();
    assert_eq!(blocked_again.await.unwrap(), "unblocked");
    host.shutdown().await;
}
