//! Main's thread reads its pages' sockets itself (`web::page_reader`, through
//! main's epoll set), so a page's request reaches main's mailbox with no hop to another
//! thread; the page's read loop reads only for a main's thread that does not come (author
//! code blocking it). Either way a page's messages are handled in the order it sent them,
//! each once, and main's replies reach the page in the order main sent them.

use std::future::Future;

use futures_util::SinkExt;

use extension_host::{Host, WebConfig};
use probe_protocol::{BLOCK, ECHO_OPTIONAL, SEQ_EVENT, SEQ_INVOKE, SEQ_LOG, WithOptional};
use rmpv::Value;

use super::{PEER_ALL, WsMessage, echo_one_at_a_time, msgpack, open_web_frame, payload_of, port, web_host};
use crate::support::{self, FAILSAFE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_s_thread_reads_a_pages_requests_itself() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let (_shell, mut page) = open_web_frame(&host, port(&server), "probe").await;
    let before = server.main_reads_for_testing("probe");
    const COUNT: u64 = 100;
    echo_one_at_a_time(&mut page, COUNT).await;
    // Each request arrives while main's thread is parked: its runtime wakes for the socket and
    // reads it. (The read loop reads one only if main's thread left it for 2 ms: not most.)
    let read = server.main_reads_for_testing("probe") - before;
    assert!(read > COUNT / 2, "main's thread read {read} of the page's {COUNT} requests");
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pages_broadcasts_and_requests_sent_at_once_reach_main_in_order_each_once() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let (_shell, mut page) = open_web_frame(&host, port(&server), "probe").await;
    // Sent without waiting for any reply: main's thread reads them in batches (64 a drain)
    // while it dispatches what it read, and the page's read loop may read some too.
    const COUNT: u32 = 400;
    let mut expected = Vec::new();
    for n in 0..COUNT {
        if n % 3 == 0 {
            page.message(1, 0, PEER_ALL, 0, SEQ_EVENT.name(), msgpack(&n)).await;
            expected.push(format!("event:{n}"));
        } else {
            page.message(2, 0, 0, u64::from(n) + 1, SEQ_INVOKE.name(), msgpack(&n)).await;
            expected.push(format!("invoke:{n}"));
        }
    }
    page.message(2, 0, 0, 10_000, SEQ_LOG.name(), msgpack(&())).await;
    // Main answers a drain's requests in one run, in place or through the page's queue; the
    // page gets them in the order main sent them, each once, then the log.
    let mut replied = Vec::new();
    let log = loop {
        let reply = page.message_where(|m| m[1] == Value::from(3)).await;
        assert_eq!(reply[2], Value::from(0), "{reply}");
        let id = reply[5].as_u64().unwrap();
        if id == 10_000 {
            break reply;
        }
        replied.push(id);
    };
    let asked: Vec<u64> = (0..COUNT).filter(|n| n % 3 != 0).map(|n| u64::from(n) + 1).collect();
    assert_eq!(replied, asked);
    let log: Vec<String> = rmp_serde::from_slice(payload_of(&log)).unwrap();
    assert_eq!(log, expected);
    server.shutdown().await;
    host.shutdown().await;
}

/// Invokes the probe main's `BLOCK` handler from the host and waits until it runs (its log
/// record); the returned future is its reply.
async fn block_main(host: &Host, release: &str) -> impl Future<Output = String> + use<> {
    let mut logs = host.logs();
    let blocked = host.invoke::<_, String>("probe", BLOCK.name(), release, FAILSAFE);
    let path = release.to_owned();
    support::wait_log(&mut logs, "probe", move |m| m.starts_with("blocking the thread") && m.ends_with(&path)).await;
    async move { blocked.await.expect("the blocking request is answered once released") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_is_read_while_main_s_thread_is_blocked_and_its_requests_wait_in_main_s_mailbox() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let (_shell, mut page) = open_web_frame(&host, port(&server), "probe").await;
    let release = crate::loading::tempdir().join("release.sock").to_string_lossy().into_owned();
    let blocked = block_main(&host, &release).await;
    // Main's thread is stuck in author code: the page's read loop reads for it. A log line
    // reaches the host, and a request reaches main's mailbox, while main cannot run.
    let mut logs = host.logs();
    page.send(Value::Array(vec![3.into(), 3.into(), "while main is blocked".into()])).await;
    support::wait_log(&mut logs, "probe", |message| message == "while main is blocked").await;
    let value = WithOptional { id: 7, note: None };
    page.message(2, 0, 0, 7, ECHO_OPTIONAL.name(), msgpack(&value)).await;
    let queued = tokio::time::timeout(FAILSAFE, async {
        loop {
            let snapshot = host.inspect().await;
            let instance = snapshot.extension("probe").and_then(|probe| probe.instance.clone()).expect("probe runs");
            if instance.queued_messages >= 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
    });
    queued.await.expect("the page's request reached main's mailbox while main was blocked");
    std::os::unix::net::UnixStream::connect(&release).expect("the blocked handler listens");
    assert_eq!(blocked.await, "unblocked");
    let reply = page.message_where(|m| m[1] == Value::from(3) && m[5].as_u64() == Some(7)).await;
    assert_eq!(reply[2], Value::from(0), "{reply}");
    server.shutdown().await;
    host.shutdown().await;
}

/// A page that breaks the protocol in the middle of a burst: what it sent before the violation
/// reaches main, in order; nothing after it does, whoever read it (main's thread or the read
/// loop), and the connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_page_sends_after_a_violation_reaches_main() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let (_shell, mut page) = open_web_frame(&host, port(&server), "probe").await;
    for n in 0..2u32 {
        page.message(1, 0, PEER_ALL, 0, SEQ_EVENT.name(), msgpack(&n)).await;
    }
    page.ws.send(WsMessage::text("not part of the protocol")).await.unwrap();
    for n in 2..40u32 {
        page.message(1, 0, PEER_ALL, 0, SEQ_EVENT.name(), msgpack(&n)).await;
    }
    // The host closes the connection (1008) for the text message.
    let closed = loop {
        match super::next(&mut page.ws).await {
            Some(WsMessage::Close(frame)) => break frame,
            Some(_) => {}
            None => panic!("the connection ended without a close frame"),
        }
    };
    assert_eq!(closed.map(|frame| u16::from(frame.code)), Some(1008));
    // Main's log of what it got, asked after: its mailbox is in order.
    let log: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    assert_eq!(log, vec!["event:0".to_owned(), "event:1".to_owned()]);
    server.shutdown().await;
    host.shutdown().await;
}
