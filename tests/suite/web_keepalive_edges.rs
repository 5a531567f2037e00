//! The keepalive's and the closing's edges: a timeout meaning "never", and a server shutting down
//! while it reads for a closed page's close reply. Each test here failed before its fix.

use std::time::Duration;

use extension_host::{HostEvent, WebConfig};
use probe_protocol::{ECHO_OPTIONAL, WithOptional};
use rmpv::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::web_keepalive::{answering_shell_and_page, pinged_and_still_running};
use super::{Page, Shell, main_frames, msgpack, port, web_host};
use crate::support::FAILSAFE;

/// A timeout too long to ever run out ("never take a connection for dead"), with pings every
/// 50 ms: the host pings the idle page and keeps it (it panicked on the instant a
/// `Duration::MAX` away, and the page's connection dropped at its first ping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_timeout_of_duration_max_pings_and_never_ends_the_connection() {
    let config =
        WebConfig { ping_interval: Duration::from_millis(50), ping_timeout: Duration::MAX, ..WebConfig::default() };
    let (host, server) = web_host(&["probe"], true, config).await;
    let (mut shell, mut page, _, _) = answering_shell_and_page(port(&server)).await;
    let frame = page.frame;
    // Three pings: the timer went off three times, and was set again each time.
    pinged_and_still_running(&host, &mut page, 3).await;
    // The shell's socket (pinged too) is still there.
    assert!(futures_util::poll!(&mut shell).is_pending(), "the shell's connection ended");
    assert_eq!(host.frames(), vec![extension_host::FrameId(frame)]);
    shell.abort();
    server.shutdown().await;
    host.shutdown().await;
}

/// What one of two racing pages got.
#[derive(Debug)]
enum Raced {
    /// Its half started, and its request to main was answered.
    Echoed(usize),
    /// Its connection closed: code and reason.
    Closed(usize, u16, String),
}

/// Plays page `which` on `ws` (its HELLO sent): answers the host's commands, sends one request
/// to main once its half has opened, and reports.
async fn race_page(which: usize, mut ws: super::Socket, reports: tokio::sync::mpsc::UnboundedSender<Raced>) {
    let mut frame = None;
    loop {
        let message = match super::next(&mut ws).await {
            Some(WsMessage::Binary(bytes)) => rmpv::decode::read_value(&mut &bytes[..]).unwrap(),
            Some(WsMessage::Close(close)) => {
                let (code, reason) = close.map(|c| (u16::from(c.code), c.reason.to_string())).unwrap_or_default();
                let _ = reports.send(Raced::Closed(which, code, reason));
                return;
            }
            Some(other) => panic!("page {which} got {other:?}"),
            None => {
                let _ = reports.send(Raced::Closed(which, 1006, String::new()));
                return;
            }
        };
        match message[0].as_u64() {
            Some(0) => frame = message[1]["frame"].as_u64(),
            Some(2) => {
                let completion = message[1].as_u64().unwrap();
                let opened = message[2] == Value::Array(vec![1.into(), frame.unwrap().into()]);
                let done = Value::Array(vec![2.into(), completion.into(), Value::Array(vec![0.into()])]);
                futures_util::SinkExt::send(&mut ws, WsMessage::binary(super::encode(done))).await.unwrap();
                if opened {
                    let payload = msgpack(&WithOptional { id: 9, note: None });
                    let request = super::message_value(2, 0, 0, 1, ECHO_OPTIONAL.name(), payload);
                    futures_util::SinkExt::send(&mut ws, WsMessage::binary(super::encode(request))).await.unwrap();
                }
            }
            Some(1) if message[1] == Value::from(3) => {
                let _ = reports.send(Raced::Echoed(which));
            }
            _ => {}
        }
    }
}

/// Two connections present the token of a live one at once: the live one is closed 4000, one
/// of the two runs the half (main answers it), and the other is closed saying why (refused
/// before it started, or superseded in turn): never two halves, nor none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_back_at_once_with_one_token_leave_exactly_one_running() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let port = port(&server);
    let mut shell = Shell::connect(port).await;
    let (_, origin, token) = shell.add().await;
    let mut old = Page::connect(port, &origin, &token, "probe").await;
    old.start().await;
    let frame = old.frame;

    let hello = super::hello_message(&token);
    let mut first = super::page_socket(port, &origin, &origin).await.unwrap();
    let mut second = super::page_socket(port, &origin, &origin).await.unwrap();
    let (sent_first, sent_second) = tokio::join!(
        futures_util::SinkExt::send(&mut first, hello.clone()),
        futures_util::SinkExt::send(&mut second, hello)
    );
    sent_first.unwrap();
    sent_second.unwrap();
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    let pages = [tokio::spawn(race_page(0, first, reports.clone())), tokio::spawn(race_page(1, second, reports))];

    // The first to close is the loser; then the other's request is answered.
    let loser = loop {
        match tokio::time::timeout(FAILSAFE, reported.recv()).await.expect("no page closed").unwrap() {
            Raced::Closed(which, code, reason) => {
                assert!(
                    (code == 1008 && reason.contains("another connection took its place"))
                        || (code == 4000 && reason.contains("superseded")),
                    "page {which}: {code} {reason}"
                );
                break which;
            }
            Raced::Echoed(_) => {}
        }
    };
    loop {
        match tokio::time::timeout(FAILSAFE, reported.recv()).await.expect("the other page's half did not run").unwrap()
        {
            Raced::Echoed(which) if which != loser => break,
            Raced::Echoed(_) => {}
            Raced::Closed(which, code, reason) => panic!("both closed: page {which} too, {code} {reason}"),
        }
    }
    assert_eq!(super::closed(&mut old.ws).await.0, 4000);
    super::settle(&host).await;
    assert_eq!(main_frames(&host).await, vec![frame], "one half runs");
    assert_eq!(host.frames(), vec![extension_host::FrameId(frame)]);
    for page in pages {
        page.abort();
    }
    drop(shell);
    server.shutdown().await;
    host.shutdown().await;
}

/// A server shutting down does not wait for the close reply of a page the host had closed
/// just before (superseded here) and which does not answer: it waited out the whole read
/// for it (2 s), begun before the shutdown. The read is made endless for the test, so that
/// the shutdown that waits for it never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shutting_down_does_not_wait_for_a_closed_pages_close_reply_read_begun_before() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    server.set_close_reply_wait_for_testing(Duration::MAX);
    let port = port(&server);
    let mut shell = Shell::connect(port).await;
    let (_, origin, token) = shell.add().await;
    let mut events = host.events();
    let mut old = Page::connect(port, &origin, &token, "probe").await;
    old.start().await;
    // Superseded: the host closes `old` (4000) and reads it for its close reply, which it
    // does not send (the test does not read it).
    let _page = Page::connect(port, &origin, &token, "probe").await;
    crate::support::wait_event(&mut events, |event| matches!(event, HostEvent::WebRendererClosed { .. })).await;
    tokio::time::timeout(FAILSAFE, server.shutdown()).await.expect("the shutdown waited for the page's close reply");
    // The host's close frame came, then the socket went.
    assert_eq!(super::closed(&mut old.ws).await.0, 4000);
    drop(shell);
    host.shutdown().await;
}
