//! The web transport's loose ends: any bytes are a sign of life (a page or shell sending one
//! large message slowly is not dropped as unresponsive), a connection the host refuses or
//! closes (a page's, a shell's) still gets its close frame when the client sent more than the
//! host read, and the embedder's `inspect` asks every extension at once (a page is where the
//! test sees its asking). Each failed before its fix.

use std::time::Duration;

use extension_host::{HostEvent, WebConfig};
use futures_util::SinkExt;
use probe_protocol::{ECHO_OPTIONAL, WithOptional};
use rmpv::Value;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::web_keepalive::answering_shell_and_page;
use super::{Page, Shell, Socket, closed, encode, msgpack, page_socket, port, web_host};

/// Pings every 100 ms of quiet; dead after 1 s of it.
fn short_timeout() -> WebConfig {
    WebConfig {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_secs(1),
        ..WebConfig::default()
    }
}

/// Writes one WebSocket frame (FIN; `opcode` 1 text, 2 binary; masked with a zero key, as a
/// client must mask) of `payload` onto `ws`'s TCP stream in 100 pieces, 20 ms apart: 2 s and
/// more for the message, twice the ping timeout, no piece of it a whole message; only a pause
/// of 1 s, fifty times the one played, would get the page dropped with the fix. (The waits
/// are the slow sender being played, not synchronisation.)
async fn dribble(ws: &mut Socket, opcode: u8, payload: &[u8]) {
    let MaybeTlsStream::Plain(tcp) = ws.get_mut() else { panic!("a plain TCP stream") };
    let mut frame = vec![0x80 | opcode];
    let len = u16::try_from(payload.len()).expect("under 64 KiB");
    frame.push(0x80 | 126);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    for piece in frame.chunks(frame.len().div_ceil(100)) {
        tcp.write_all(piece).await.expect("the host took the piece");
        tcp.flush().await.unwrap();
        // The slow sender's pace (the behaviour under test), not synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await; // SLEEP-OK
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sending_one_large_message_slowly_is_not_dropped() {
    let (host, server) = web_host(&["probe"], true, short_timeout()).await;
    let (shell, mut page, _, _) = answering_shell_and_page(port(&server)).await;
    let mut events = host.events();
    // One request whose message takes 2 s to arrive: its pong cannot overtake it.
    let request = WithOptional { id: 9, note: Some("n".repeat(8 << 10)) };
    let message = encode(super::message_value(2, 0, 0, 1, ECHO_OPTIONAL.name(), msgpack(&request)));
    dribble(&mut page.ws, 2, &message).await;
    let reply = page.message_where(|m| m[1] == Value::from(3)).await;
    assert_eq!(reply[5].as_u64(), Some(1), "{reply}");
    let answer: WithOptional = rmp_serde::from_slice(super::payload_of(&reply)).unwrap();
    assert_eq!(answer, request);
    assert!(
        !std::iter::from_fn(|| events.try_recv().ok())
            .any(|event| matches!(event, HostEvent::WebRendererClosed { .. })),
        "the page was dropped while its message arrived"
    );
    shell.abort();
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_sending_one_large_message_slowly_keeps_its_frame() {
    let (host, server) = web_host(&["probe"], true, short_timeout()).await;
    let port = port(&server);
    let mut shell = Shell::connect(port).await;
    let (_, origin, token) = shell.add().await;
    let mut page = Page::connect(port, &origin, &token, "probe").await;
    page.start().await;
    let page = tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(Ok(_)) = page.ws.next().await {}
    });
    // A JSON text message of 8 KiB, taking 2 s.
    let text = serde_json::json!({ "note": "n".repeat(8 << 10) }).to_string();
    dribble(&mut shell.ws, 1, text.as_bytes()).await;
    // The frame is still open (its shell taken for dead, it would have closed with it).
    assert_eq!(host.frames(), vec![extension_host::FrameId(shell.frame)]);
    page.abort();
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_page_that_sent_more_than_its_hello_still_gets_the_close_frame() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let port = port(&server);
    let mut shell = Shell::connect(port).await;
    let (_, origin, _) = shell.add().await;
    let mut ws = page_socket(port, &origin, &origin).await.expect("the page connects");
    // A wrong token, and 512 KiB more behind it, sent before the host answers.
    ws.feed(WsMessage::binary(encode(Value::Array(vec![0.into(), "not-the-token".into()])))).await.unwrap();
    for _ in 0..32 {
        ws.feed(WsMessage::binary(vec![0xc0u8; 16 << 10])).await.unwrap();
    }
    ws.flush().await.unwrap();
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.starts_with("token refused"), "{reason}");
    // The close handshake completes (the client's reply sent back as it read the close), and
    // the host's side ends cleanly.
    ends_cleanly(&mut ws, "the refused connection").await;
    server.shutdown().await;
    host.shutdown().await;
}

/// A page whose first message (its HELLO) is over the size limit, sent whole, gets the close
/// frame and why (1009), and its connection ends cleanly: the rest of that message was left
/// unread, which reset the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_hello_is_oversized_gets_the_close_frame_and_a_clean_end() {
    let config = WebConfig { max_message: 64 << 10, ..WebConfig::default() };
    let (host, server) = web_host(&["probe"], true, config).await;
    let port = port(&server);
    let mut shell = Shell::connect(port).await;
    let (_, origin, token) = shell.add().await;
    let mut ws = page_socket(port, &origin, &origin).await.expect("the page connects");
    // A HELLO padded to 256 KiB: four times the limit.
    let hello = encode(Value::Array(vec![0.into(), token.into(), Value::Binary(vec![0; 256 << 10])]));
    ws.send(WsMessage::binary(hello)).await.unwrap();
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, 1009, "{reason}");
    ends_cleanly(&mut ws, "the page's connection").await;
    server.shutdown().await;
    host.shutdown().await;
}

/// A shell that broke the protocol with more sent behind it (what it sent before it read the
/// close) still gets the close frame and why, and its connection ends cleanly: the host used
/// to drop the socket with those bytes unread, which resets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_that_broke_the_protocol_with_more_sent_still_gets_the_close_frame() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let port = port(&server);
    let mut shell = Shell::connect(port).await;
    shell.add().await;
    // A binary message (not part of the shell protocol), and 512 KiB of JSON behind it.
    shell.ws.feed(WsMessage::binary(vec![1u8])).await.unwrap();
    let text = serde_json::json!({ "note": "n".repeat(16 << 10) }).to_string();
    for _ in 0..32 {
        shell.ws.feed(WsMessage::text(text.clone())).await.unwrap();
    }
    shell.ws.flush().await.unwrap();
    let (code, reason) = closed(&mut shell.ws).await;
    assert_eq!((code, reason.as_str()), (1008, "binary messages are not part of the shell protocol"));
    ends_cleanly(&mut shell.ws, "the shell's connection").await;
    server.shutdown().await;
    host.shutdown().await;
}

/// After its close handshake, `ws`'s connection ends cleanly: the host's side read what was
/// sent, so its kernel sent a FIN, not the reset a socket closed with bytes unread gets
/// (which, in flight, throws away the close frame; on loopback the close frame has always
/// arrived first, so the reset is what a test can see).
async fn ends_cleanly(ws: &mut Socket, what: &str) {
    let end = tokio::time::timeout(super::FAILSAFE, futures_util::StreamExt::next(ws)).await;
    assert!(
        matches!(end, Ok(None | Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)))),
        "{what} did not end cleanly after its close handshake: {end:?}"
    );
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), signal).unwrap();
}

/// The embedder's `inspect` asks every extension at once: an isolated `probe` whose process is
/// stopped holds up nobody's report. First it stays stopped: reported unanswered, the others
/// complete. Then it is let go only once the next extension's page has been asked (asked one
/// after another, that came after the stopped one's timeout, too late): it answers in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_asks_every_extension_at_once() {
    let host = extension_host::Host::new(crate::support::config());
    crate::support::start(&host, crate::support::Transport::Isolated, "probe").await;
    // `probe-twin` (after `probe` in name order) in process, with a page in a web frame.
    host.load(crate::support::library("probe-twin")).unwrap();
    let files =
        std::collections::BTreeMap::from([("index.js".to_owned(), b"export async function activate() {}".to_vec())]);
    host.set_web_assets_for_testing("probe-twin", files).unwrap();
    host.activate("probe-twin").await.unwrap();
    let server = host.serve_web(WebConfig::default()).unwrap();
    let (_shell, mut page) = super::open_web_frame(&host, port(&server), "probe-twin").await;
    let pid = host.inspect().await.extension("probe").and_then(|probe| probe.pid).expect("isolated: a process");

    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    let snapshot = super::inspect_with(&host, &mut [&mut page]).await;
    let (probe, twin) = (snapshot.extension("probe").unwrap(), snapshot.extension("probe-twin").unwrap());
    assert_eq!(probe.unanswered, 1, "the stopped child");
    assert!(probe.instance.as_ref().unwrap().halves.is_empty(), "{probe:?}");
    assert_eq!(twin.unanswered, 0);
    let halves = &twin.instance.as_ref().unwrap().halves;
    assert!(halves.iter().any(|half| half.half == extension_host::Half::Main), "its main answered: {twin:?}");

    let inspect = host.inspect();
    tokio::pin!(inspect);
    let mut let_go = false;
    let snapshot = loop {
        tokio::select! {
            snapshot = &mut inspect => break snapshot,
            value = page.recv() => {
                if value[0] == Value::from(2) && value[2] == Value::Array(vec![3.into()]) {
                    // The page is asked: only now does the stopped child go on.
                    signal(pid, nix::sys::signal::Signal::SIGCONT);
                    let_go = true;
                    let completion = value[1].as_u64().unwrap();
                    page.complete(completion, Value::Array(vec![4.into(), Value::Map(vec![])])).await;
                }
            }
        }
    };
    assert!(let_go, "the page was not asked");
    let probe = snapshot.extension("probe").unwrap();
    assert_eq!(probe.unanswered, 0, "asked together, the child let go answered in time: {probe:?}");
    assert!(!probe.instance.as_ref().unwrap().halves.is_empty(), "{probe:?}");
    server.shutdown().await;
    host.shutdown().await;
}
