//! Half-open connections: a page or shell whose side of the connection went without a word
//! (through a proxy, or a laptop waking up) while the host still holds it. The host pings an
//! idle socket and ends one that answers nothing as a lost connection; a page that comes back
//! with its token while the host still holds its old connection takes that connection's
//! place. Each test here failed before its fix.

use std::time::Duration;

use extension_host::{HostEvent, WebConfig};
use futures_util::StreamExt;
use probe_protocol::{ECHO_OPTIONAL, WithOptional};
use rmpv::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{
    OpenedPage, Page, Shell, Socket, ask_and_hang, closed, main_frames, msgpack, open_probe_page, port, settle,
    web_host,
};
use crate::support::{self, FAILSAFE};

/// Pings every 50 ms of quiet; dead after a second of it (far longer than a test's gaps
/// between two reads of a socket it keeps answering).
fn quick_pings() -> WebConfig {
    WebConfig { ping_interval: Duration::from_millis(50), ping_timeout: Duration::from_secs(1), ..WebConfig::default() }
}

/// Reads `ws` in a task of its own, as a browser does, so that its pings are answered (the
/// client answers a ping as it reads it); what arrives is dropped.
fn keep_answering(mut ws: Socket) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} })
}

/// A shell kept answering and its probe page, connected and started.
pub(super) async fn answering_shell_and_page(port: u16) -> (tokio::task::JoinHandle<()>, Page, String, String) {
    let mut shell = Shell::connect(port).await;
    let (_, origin, token) = shell.add().await;
    let shell = keep_answering(shell.ws);
    let mut page = Page::connect(port, &origin, &token, "probe").await;
    page.start().await;
    (shell, page, origin, token)
}

/// Reads `pings` pings on the idle `page` (anything else fails the test), then checks that its
/// half still runs: its request to main is answered, main lists its frame, and the host told
/// of no half ending meanwhile.
pub(super) async fn pinged_and_still_running(host: &extension_host::Host, page: &mut Page, pings: usize) {
    let mut events = host.events();
    let mut seen = 0;
    while seen < pings {
        match tokio::time::timeout(FAILSAFE, page.ws.next()).await.expect("no ping came") {
            Some(Ok(WsMessage::Ping(_))) => seen += 1,
            Some(Ok(other)) => panic!("the idle page got {other:?}"),
            Some(Err(error)) => panic!("the connection failed: {error}"),
            None => panic!("the connection ended"),
        }
    }
    page.message(2, 0, 0, 1, ECHO_OPTIONAL.name(), msgpack(&WithOptional { id: 7, note: None })).await;
    let reply = page.message_where(|m| m[1] == Value::from(3)).await;
    assert_eq!(reply[5].as_u64(), Some(1), "{reply}");
    assert_eq!(main_frames(host).await, vec![page.frame]);
    assert!(
        !std::iter::from_fn(|| events.try_recv().ok())
            .any(|event| matches!(event, HostEvent::WebRendererClosed { .. })),
        "the half ended meanwhile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_stops_answering_pings_is_closed_and_its_requests_fail_connection_lost() {
    let (host, server) = web_host(&["probe"], true, quick_pings()).await;
    let (shell, mut page, _, _) = answering_shell_and_page(port(&server)).await;
    let frame = page.frame;
    let mut events = host.events();
    let asked = ask_and_hang(&host, &mut page).await;

    // The page stops reading (its side went): its pings go unanswered.
    assert_eq!(asked.await.unwrap(), "ConnectionLost");
    let event = support::wait_event(&mut events, |event| matches!(event, HostEvent::WebRendererClosed { .. })).await;
    match event {
        HostEvent::WebRendererClosed { frame: closed_in, lost, reason, .. } => {
            assert_eq!(closed_in, frame);
            assert!(lost, "{reason}");
            assert!(reason.contains("pings unanswered"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(main_frames(&host).await.is_empty(), "the half is gone");
    assert_eq!(host.frames(), vec![extension_host::FrameId(frame)], "the frame stays open");
    // Ended as a dropped connection: no close frame, so a page that was only slow sees 1006
    // and its bootstrap comes back.
    let rest = tokio::time::timeout(FAILSAFE, async {
        let mut rest = Vec::new();
        while let Some(Ok(message)) = page.ws.next().await {
            rest.push(message);
        }
        rest
    })
    .await
    .expect("the connection did not end");
    assert!(!rest.iter().any(|message| matches!(message, WsMessage::Close(_))), "{rest:?}");
    shell.abort();
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_page_that_answers_its_pings_stays_connected() {
    let (host, server) = web_host(&["probe"], true, quick_pings()).await;
    let (shell, mut page, _, _) = answering_shell_and_page(port(&server)).await;
    // 25 pings go out at least 50 ms apart: longer than the timeout (1 s), which the pongs
    // alone (the page sends nothing else) keep from running out.
    pinged_and_still_running(&host, &mut page, 25).await;
    shell.abort();
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_that_stops_answering_pings_is_closed_with_its_frame() {
    let (host, server) = web_host(&["probe"], true, quick_pings()).await;
    let port = port(&server);
    let OpenedPage { shell, mut page, .. } = open_probe_page(&host, port).await;
    let frame = page.frame;
    let asked = ask_and_hang(&host, &mut page).await;

    // The shell reads nothing from now on; the page (read all along) is told its half closes.
    let (completion, close) = page.control().await;
    assert_eq!(close[0], Value::from(2), "the half's CLOSE: {close}");
    page.done(completion).await;
    assert_eq!(asked.await.unwrap(), "FrameClosed");
    assert_eq!(closed(&mut page.ws).await.0, 1000);
    settle(&host).await;
    assert!(!host.frames().contains(&extension_host::FrameId(frame)), "the frame closed with its shell");
    drop(shell);
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_back_while_the_host_holds_its_old_connection_takes_its_place() {
    // The default keepalive: the host has not found the old connection dead.
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let port = port(&server);
    let OpenedPage { shell: _shell, page: mut old, origin, token } = open_probe_page(&host, port).await;
    let frame = old.frame;
    let mut events = host.events();
    let asked = ask_and_hang(&host, &mut old).await;

    // The page's side went without a word; it comes back with its token.
    let mut page = Page::connect(port, &origin, &token, "probe").await;
    assert_eq!(page.frame, frame);
    // The old connection's half ended as a lost one would (its requests failed
    // ConnectionLost, main told), before the new one starts in the same frame.
    assert_eq!(asked.await.unwrap(), "ConnectionLost");
    let event = support::wait_event(&mut events, |event| matches!(event, HostEvent::WebRendererClosed { .. })).await;
    match event {
        HostEvent::WebRendererClosed { frame: closed_in, lost, reason, .. } => {
            assert_eq!(closed_in, frame);
            assert!(lost && reason.contains("superseded"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    page.start().await;
    settle(&host).await;
    assert_eq!(main_frames(&host).await, vec![frame], "the half runs again");
    page.message(2, 0, 0, 1, ECHO_OPTIONAL.name(), msgpack(&WithOptional { id: 7, note: None })).await;
    let reply = page.message_where(|m| m[1] == Value::from(3)).await;
    assert_eq!(reply[5].as_u64(), Some(1), "{reply}");
    // Were the old page still there, it is told why (a code its bootstrap does not come back
    // from: two pages with one token do not take turns).
    let (code, reason) = closed(&mut old.ws).await;
    assert_eq!(code, 4000, "{reason}");
    assert!(reason.contains("superseded"), "{reason}");
    assert_eq!(host.frames(), vec![extension_host::FrameId(frame)]);
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_settings_that_cannot_work_are_refused() {
    let host = extension_host::Host::new(support::config());
    for (interval, timeout) in [(0, 1000), (1000, 1000), (1000, 500)] {
        let config = WebConfig {
            ping_interval: Duration::from_millis(interval),
            ping_timeout: Duration::from_millis(timeout),
            ..WebConfig::default()
        };
        let error = host.serve_web(config).expect_err("refused");
        let said = error.to_string();
        assert!(said.contains("ping_interval") && said.contains("ping_timeout"), "{said}");
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_page_with_bytes_in_flight_both_ways_still_gets_its_close_frame() {
    use super::web_writes::{BUFFER, small_page};
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    server.set_send_buffer_for_testing(BUFFER);
    let port = port(&server);
    let mut shell = Shell::connect(port).await;
    let (_, origin, token) = shell.add().await;
    let shell = keep_answering(shell.ws);
    let mut old = small_page(port, &origin, &token).await;
    old.start().await;
    settle(&host).await;
    let mut events = host.events();
    // The old page reads nothing for a while: main's replies fill the host's side of its
    // socket (3 MiB against 256 KiB of buffers).
    let note = "n".repeat(48 << 10);
    for id in 1..=64u64 {
        let value = WithOptional { id: u32::try_from(id).unwrap(), note: Some(note.clone()) };
        old.message(2, 0, 0, id, ECHO_OPTIONAL.name(), msgpack(&value)).await;
    }
    // The page comes back on another connection; the old one's half ends.
    let _page = Page::connect(port, &origin, &token, "probe").await;
    support::wait_event(&mut events, |event| matches!(event, HostEvent::WebRendererClosed { .. })).await;
    // The old page, still there, sends more (which the host no longer reads into its half),
    // then reads what came: some replies, then the host's close frame, not a reset.
    old.message(2, 0, 0, 65, ECHO_OPTIONAL.name(), msgpack(&WithOptional { id: 65, note: None })).await;
    let (code, reason) = closed(&mut old.ws).await;
    assert_eq!((code, reason.contains("superseded")), (4000, true), "{code} {reason}");
    drop(old);
    shell.abort();
    server.shutdown().await;
    host.shutdown().await;
}
