//! How the host writes to a page, at the protocol level (a Rust WebSocket client plays the
//! page against the real host and the real probe library): a message for a page whose socket
//! has nothing waiting is written by the thread that sends it (main's thread writes its
//! reply itself); once the socket is full, what follows waits in the page's queue. Either way
//! the page gets main's messages in the order main sent them, each once.

use probe_protocol::{ECHO_OPTIONAL, WithOptional};
use rmpv::Value;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::{Page, Shell, Socket, msgpack, payload_of, port, settle, web_host};
use extension_host::WebConfig;

/// The sockets' buffers of this test's page, both ways (`SO_SNDBUF` on the host's side,
/// `SO_RCVBUF` on the page's; the kernel doubles each, 256 KiB in all): fixed, so that the
/// kernel does not grow them to loopback's largest (32 MiB and 4 MiB here), which the test
/// would have to fill (47 MiB of replies: 10 to 47 s in a debug build; 0.35 s now). Not less:
/// a window smaller than one reply (48 KiB) trickles (17 s with 16 KiB).
pub(super) const BUFFER: usize = 64 << 10;

/// A renderer socket on `origin` whose receive buffer is [`BUFFER`].
pub(super) async fn small_page_socket(port: u16, origin: &str) -> Socket {
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(u32::try_from(BUFFER).unwrap()).unwrap();
    let stream = tcp.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut request = format!("ws://127.0.0.1:{port}/.host/connect").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("host", HeaderValue::from_str(origin.trim_start_matches("http://")).unwrap());
    headers.insert("origin", HeaderValue::from_str(origin).unwrap());
    let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await.unwrap();
    ws
}

/// A page on a [`small_page_socket`] on `origin`: its HELLO with `token` sent, and its
/// WELCOME read for its frame (its half not yet started).
pub(super) async fn small_page(port: u16, origin: &str, token: &str) -> Page {
    let mut ws = small_page_socket(port, origin).await;
    futures_util::SinkExt::send(&mut ws, super::hello_message(token)).await.unwrap();
    let welcome = Page::value(&mut ws).await;
    Page { frame: welcome[1]["frame"].as_u64().unwrap(), ws }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_main_writes_itself_and_those_queued_behind_a_full_socket_reach_the_page_in_order_once() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    server.set_send_buffer_for_testing(BUFFER);
    let port = port(&server);
    let mut shell = Shell::connect(port).await;
    let (_, origin, token) = shell.add().await;
    let mut page = small_page(port, &origin, &token).await;
    page.start().await;
    settle(&host).await;
    // 64 requests of main, each answered with 48 KiB (3 MiB: far more than the page's socket
    // buffers hold both ways, 256 KiB; less than the page's queue, 64 MiB), while the page
    // reads nothing: the first replies go straight onto the socket, until its buffers are
    // full; the rest wait in the page's queue, and go out once the page reads.
    const COUNT: u64 = 64;
    let note = "n".repeat(48 << 10);
    for id in 1..=COUNT {
        let value = WithOptional { id: u32::try_from(id).unwrap(), note: Some(note.clone()) };
        page.message(2, 0, 0, id, ECHO_OPTIONAL.name(), msgpack(&value)).await;
    }
    for id in 1..=COUNT {
        let reply = page.message_where(|m| m[1] == Value::from(3)).await;
        assert_eq!(reply[5].as_u64(), Some(id), "the page got the reply to {} where {id}'s was due", reply[5]);
        assert_eq!(reply[2], Value::from(0), "{}", reply[2]);
        let value: WithOptional = rmp_serde::from_slice(payload_of(&reply)).unwrap();
        assert_eq!((u64::from(value.id), value.note.as_deref()), (id, Some(note.as_str())));
    }
    // The queue drained: a reply is written in place again, and is the next message.
    page.message(2, 0, 0, COUNT + 1, ECHO_OPTIONAL.name(), msgpack(&WithOptional { id: 0, note: None })).await;
    let reply = page.message_where(|m| m[1] == Value::from(3)).await;
    assert_eq!(reply[5].as_u64(), Some(COUNT + 1), "{reply}");
    drop(shell);
    server.shutdown().await;
    host.shutdown().await;
}
