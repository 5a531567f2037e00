//! Load: a half slower than what is sent to it never makes memory grow without bound (its
//! mailbox is bounded: broadcasts past the bound are dropped and counted, requests refused as
//! overloaded), and many extensions with many frames run at once.

use std::collections::BTreeSet;

use extension_host::{Host, HostConfig, InvokeErrorKind, MailboxLimit};
use probe_protocol::{BLOCK, INVOKE_MISSING, PING, Ping, SEQ_EVENT, SEQ_INVOKE, SEQ_LOG};

use crate::loading::tempdir;
use crate::support::{self, FAILSAFE, Transport, wait_log};

/// The mailbox bound these tests run with.
const LIMIT: u64 = 8;

fn small_mailboxes() -> HostConfig {
    HostConfig { mailbox: MailboxLimit { messages: LIMIT, bytes: 1 << 20 }, ..support::config() }
}

async fn probe_host(transport: Transport) -> Host {
    support::host_from(transport, small_mailboxes(), &["probe"]).await
}

/// Blocks the thread of the probe's main half until `release` (a socket path) is connected to;
/// the returned future is the blocking request's answer.
async fn block_main<'a>(host: &'a Host, release: &'a String) -> impl Future<Output = String> + 'a {
    let mut logs = host.logs();
    let blocked = host.invoke::<_, String>("probe", BLOCK.name(), release, FAILSAFE);
    wait_log(&mut logs, "probe", |m| m.starts_with("blocking the thread")).await;
    async move { blocked.await.unwrap() }
}

fn release_socket() -> String {
    tempdir().join("release.sock").to_string_lossy().into_owned()
}

async fn a_slow_main_drops_broadcasts_and_refuses_requests_past_its_mailbox_bound(transport: Transport) {
    let host = probe_host(transport).await;
    let mut logs = host.logs();
    let release = release_socket();
    let blocked = block_main(&host, &release).await;

    for n in 0..100u32 {
        host.broadcast("probe", SEQ_EVENT.name(), &n).unwrap();
    }
    let refused = host.invoke::<_, u32>("probe", SEQ_INVOKE.name(), &1000, FAILSAFE).await.unwrap_err();
    assert_eq!(refused.kind, InvokeErrorKind::Overloaded, "{refused}");
    assert!(refused.message.contains("mailbox"), "{refused}");

    let snapshot = host.inspect().await;
    let probe = snapshot.extension("probe").unwrap();
    let instance = probe.instance.as_ref().unwrap();
    assert_eq!(instance.queued_messages, LIMIT);
    assert_eq!(instance.dropped_broadcasts, 100 - LIMIT);
    assert_eq!(instance.refused_requests, 1);
    assert_eq!(probe.pending_requests, 1, "only the blocking request is in flight");

    std::os::unix::net::UnixStream::connect(&release).unwrap();
    assert_eq!(blocked.await, "unblocked");
    // Said once the mailbox has drained.
    let warning = wait_log(&mut logs, "probe", |m| m.contains("mailbox was full")).await;
    assert!(warning.message.contains(&format!("{} message(s) were turned away", 100 - LIMIT + 1)), "{warning:?}");
    // Exactly what fitted, in order; the refused request never ran.
    let seen = host.invoke::<_, Vec<String>>("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    let expected: Vec<String> = (0..LIMIT).map(|n| format!("event:{n}")).collect();
    assert_eq!(seen, expected);

    // Drained, and taking requests again.
    assert_eq!(host.invoke::<_, u32>("probe", SEQ_INVOKE.name(), &7, FAILSAFE).await.unwrap(), 7);
    let instance = host.inspect().await.extension("probe").unwrap().instance.clone().unwrap();
    assert_eq!(instance.queued_messages, 0);
    host.shutdown().await;
}

#[tokio::test]
async fn a_frame_in_another_process_invoking_an_overloaded_main_is_told_at_once() {
    let host = probe_host(Transport::InProcess).await;
    support::open_frame(&host, Transport::ChildProcess).await;
    let release = release_socket();
    let blocked = block_main(&host, &release).await;
    // Requests only main receives fill its mailbox.
    let queued: Vec<_> =
        (0..LIMIT as u32).map(|n| host.invoke::<_, u32>("probe", SEQ_INVOKE.name(), &n, FAILSAFE)).collect();
    // The frame invokes main, whose mailbox is full: the frame hears why without waiting for
    // its timeout.
    let mut seen = host.broadcasts();
    host.broadcast("probe", INVOKE_MISSING.name(), &()).unwrap();
    assert_eq!(support::pongs(&mut seen, "probe", 1).await[0].tag, "no-handler:Overloaded");
    let probe = host.inspect().await.extension("probe").unwrap().clone();
    assert_eq!(probe.pending_requests, 1 + LIMIT as usize, "the refused request is not in flight");
    assert_eq!(probe.instance.unwrap().refused_requests, 1);

    std::os::unix::net::UnixStream::connect(&release).unwrap();
    assert_eq!(blocked.await, "unblocked");
    // Sent before the frame's request, they all ran.
    for (n, answer) in queued.into_iter().enumerate() {
        assert_eq!(answer.await.unwrap(), n as u32);
    }
    // With room again, the same request reaches main (which has no such handler).
    host.broadcast("probe", INVOKE_MISSING.name(), &()).unwrap();
    assert_eq!(support::pongs(&mut seen, "probe", 1).await[0].tag, "no-handler:NoHandler");
    host.shutdown().await;
}

#[tokio::test]
async fn a_hundred_extensions_with_eight_frames_run_at_once() {
    const EXTENSIONS: usize = 100;
    const IN_PROCESS: usize = 6;
    const CHILD: usize = 2;
    let host = Host::new(support::config());
    let mut names = Vec::new();
    for path in support::swarm(EXTENSIONS) {
        let info = host.load(&path).unwrap();
        host.activate(&info.name).await.unwrap();
        names.push(info.name);
    }
    let mut logs = host.logs();
    support::open_frames(&host, Transport::InProcess, IN_PROCESS).await;
    support::open_frames(&host, Transport::ChildProcess, CHILD).await;
    let frames = (IN_PROCESS + CHILD) as u64;

    // Every renderer half of every extension invoked its own main and got its own answer.
    let mut echoed = BTreeSet::new();
    tokio::time::timeout(FAILSAFE, async {
        while echoed.len() < EXTENSIONS * frames as usize {
            let record = logs.recv().await.unwrap();
            if record.message.ends_with(" echoed") {
                assert!(echoed.insert((record.extension.clone(), record.message.clone())), "{record:?} twice");
            }
            assert!(!record.message.contains("echo failed"), "{record:?}");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of the renderer halves echoed", echoed.len()));

    // A ping to each extension reaches its main and its eight renderer halves, and only those.
    let mut seen = host.broadcasts();
    for name in &names {
        host.broadcast(name, PING.name(), &Ping { tag: name.clone() }).unwrap();
    }
    let mut pongs = BTreeSet::new();
    tokio::time::timeout(FAILSAFE, async {
        while pongs.len() < EXTENSIONS * (frames as usize + 1) {
            let broadcast = seen.recv().await.unwrap();
            if broadcast.channel == probe_protocol::PONG.name() {
                let pong: probe_protocol::Pong = broadcast.value().unwrap();
                assert_eq!(pong.tag, broadcast.extension, "a ping crossed namespaces");
                assert!(pongs.insert((broadcast.extension, pong.side)), "a half answered twice");
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} pongs arrived", pongs.len()));

    for name in names.iter().step_by(10) {
        let own = host.invoke::<_, String>(name, "name", &(), FAILSAFE).await.unwrap();
        assert_eq!(&own, name);
    }
    let snapshot = host.inspect().await;
    assert_eq!(snapshot.extensions.len(), EXTENSIONS);
    for extension in &snapshot.extensions {
        assert_eq!(extension.frames, (1..=frames).collect::<Vec<_>>(), "{}", extension.info.name);
        assert_eq!(extension.instance.as_ref().unwrap().halves.len(), frames as usize + 1);
        assert_eq!(extension.pending_requests, 0);
    }
    host.shutdown().await;
}

same_instance!(a_slow_main_drops_broadcasts_and_refuses_requests_past_its_mailbox_bound,);
