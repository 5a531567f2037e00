//! Web frames at the protocol level: a Rust WebSocket client plays the shell and the page
//! (speaking the page wire of `host/src/web/protocol.rs` exactly) against the real host and
//! the real probe library. The attacks each show that nothing reached any extension.

use std::collections::BTreeMap;
use std::time::Duration;

use extension_host::{FrameKind, Half, Host, HostEvent, WebConfig, WebServer};
use futures_util::{SinkExt, StreamExt};
use probe_protocol::{AskFrame, ECHO_OPTIONAL, MAIN_FRAMES, PING, Ping, STORE_OP, StoreOp, WithOptional};
use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{self, FAILSAFE};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PEER_ALL: u64 = u64::MAX;
const NO_HANDLER: u64 = 100;

/// A host running `extensions` (each given a web renderer when `web` says so), serving web
/// frames with `config`.
async fn web_host(extensions: &[&str], web: bool, config: WebConfig) -> (Host, WebServer) {
    let host = Host::new(support::config());
    for name in extensions {
        host.load(support::library(name)).expect("the library loads");
        if web {
            let files = BTreeMap::from([
                ("index.js".to_owned(), b"export async function activate(ipc) {}".to_vec()),
                ("sub dir/a.css".to_owned(), b"body {}".to_vec()),
            ]);
            host.set_web_assets_for_testing(name, files).unwrap();
        }
        host.activate(name).await.expect("the extension activates");
    }
    let server = host.serve_web(config).expect("the web server starts");
    (host, server)
}

fn port(server: &WebServer) -> u16 {
    server.local_addr().port()
}

/// Has the host close `frame` in a task of its own (the close waits for the page to answer
/// its half's CLOSE, which the test plays); its outcome at the end.
fn close_frame_meanwhile(host: &Host, frame: u64) -> tokio::task::JoinHandle<Result<(), extension_host::HostError>> {
    let host = host.clone();
    tokio::spawn(async move { host.close_frame(extension_host::FrameId(frame)).await })
}

/// Waits until every host operation queued so far (a web frame opening, say) has finished:
/// operations run one at a time, so one more, which fails at once, ends after them.
async fn settle(host: &Host) {
    let _ = host.close_frame(extension_host::FrameId(u64::MAX - 7)).await;
}

/// A WebSocket upgrade to `path` on the server, with these `Host` and `Origin` headers.
async fn upgrade(port: u16, path: &str, host: &str, origin: Option<&str>) -> Result<Socket, WsError> {
    let mut request = format!("ws://127.0.0.1:{port}{path}").into_client_request().unwrap();
    request.headers_mut().insert("host", HeaderValue::from_str(host).unwrap());
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    tokio::time::timeout(FAILSAFE, tokio_tungstenite::connect_async(request))
        .await
        .expect("no answer")
        .map(|(ws, _)| ws)
}

fn refused_with(outcome: Result<Socket, WsError>) -> u16 {
    match outcome {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("refused otherwise: {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

/// The next message that is not a ping or pong.
async fn next(ws: &mut Socket) -> Option<WsMessage> {
    loop {
        match tokio::time::timeout(FAILSAFE, ws.next()).await.expect("nothing arrived") {
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
            Some(Ok(message)) => return Some(message),
            Some(Err(_)) | None => return None,
        }
    }
}

/// Reads until the server closes; the close code and reason.
async fn closed(ws: &mut Socket) -> (u16, String) {
    loop {
        match next(ws).await {
            Some(WsMessage::Close(Some(frame))) => return (u16::from(frame.code), frame.reason.to_string()),
            Some(WsMessage::Close(None)) | None => return (1005, String::new()),
            Some(_) => {}
        }
    }
}

fn encode(value: Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &value).unwrap();
    out
}

fn msgpack<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap()
}

/// The shell: its frame number, then what it is told.
struct Shell {
    ws: Socket,
    frame: u64,
}

impl Shell {
    async fn connect(port: u16) -> Shell {
        let origin = format!("http://127.0.0.1:{port}");
        let mut ws =
            upgrade(port, "/shell", &format!("127.0.0.1:{port}"), Some(&origin)).await.expect("the shell connects");
        let first = Shell::json(&mut ws).await;
        assert_eq!(first["type"], "frame", "{first}");
        Shell { frame: first["frame"].as_u64().unwrap(), ws }
    }

    async fn json(ws: &mut Socket) -> serde_json::Value {
        match next(ws).await {
            Some(WsMessage::Text(text)) => serde_json::from_str(text.as_str()).unwrap(),
            other => panic!("the shell expected JSON, got {other:?}"),
        }
    }

    /// The next `add`: (extension, origin, token).
    async fn add(&mut self) -> (String, String, String) {
        let add = Shell::json(&mut self.ws).await;
        assert_eq!(add["type"], "add", "{add}");
        let field = |name: &str| add[name].as_str().unwrap().to_owned();
        (field("extension"), field("origin"), field("token"))
    }
}

/// A page's MESSAGE, `[1, kind, status, target, request_id, channel, payload]` (for a test
/// that sends it otherwise than through [`Page::message`]: slowly, from a page it plays
/// itself, or before the HELLO).
fn message_value(kind: u32, status: u32, target: u64, request_id: u64, channel: &str, payload: Vec<u8>) -> Value {
    Value::Array(vec![
        1.into(),
        kind.into(),
        status.into(),
        target.into(),
        request_id.into(),
        channel.into(),
        Value::Binary(payload),
    ])
}

/// A page (an extension's iframe), connected and welcomed.
struct Page {
    ws: Socket,
    frame: u64,
}

/// A page's HELLO, `[0, token]`: the first message on its renderer socket.
fn hello_message(token: &str) -> WsMessage {
    WsMessage::binary(encode(Value::Array(vec![0.into(), token.into()])))
}

/// A renderer socket on `origin` (its own, unless a test forges it), from `from`.
async fn page_socket(port: u16, origin: &str, from: &str) -> Result<Socket, WsError> {
    let host = origin.trim_start_matches("http://");
    upgrade(port, "/.host/connect", host, Some(from)).await
}

impl Page {
    /// Connects on `origin` with `token`, and checks the WELCOME.
    async fn connect(port: u16, origin: &str, token: &str, extension: &str) -> Page {
        let mut ws = page_socket(port, origin, origin).await.expect("the page connects");
        ws.send(hello_message(token)).await.unwrap();
        let welcome = Page::value(&mut ws).await;
        assert_eq!(welcome[0], Value::from(0), "{welcome}");
        assert_eq!(welcome[1]["extension"], Value::from(extension));
        let frame = welcome[1]["frame"].as_u64().unwrap();
        Page { ws, frame }
    }

    async fn value(ws: &mut Socket) -> Value {
        match next(ws).await {
            Some(WsMessage::Binary(bytes)) => {
                let mut rest = &bytes[..];
                let value = rmpv::decode::read_value(&mut rest).unwrap();
                assert!(rest.is_empty());
                value
            }
            other => panic!("the page expected a binary message, got {other:?}"),
        }
    }

    async fn recv(&mut self) -> Value {
        Page::value(&mut self.ws).await
    }

    async fn send(&mut self, value: Value) {
        self.ws.send(WsMessage::binary(encode(value))).await.unwrap();
    }

    /// The next CONTROL command: (completion, command).
    async fn control(&mut self) -> (u64, Value) {
        loop {
            let value = self.recv().await;
            if value[0] == Value::from(2) {
                return (value[1].as_u64().unwrap(), value[2].clone());
            }
        }
    }

    async fn complete(&mut self, completion: u64, outcome: Value) {
        self.send(Value::Array(vec![2.into(), completion.into(), outcome])).await;
    }

    async fn done(&mut self, completion: u64) {
        self.complete(completion, Value::Array(vec![0.into()])).await;
    }

    /// Answers the seeds and the open; the store's seed `[0, seq, {key: value}]` and the
    /// persisted tier's `[4, seq, {key: value}, ..]`.
    async fn start(&mut self) -> (Value, Value) {
        let (completion, seed) = self.control().await;
        assert_eq!(seed[0], Value::from(0), "the store is seeded first: {seed}");
        self.done(completion).await;
        let (completion, storage) = self.control().await;
        assert_eq!(storage[0], Value::from(4), "then the persisted tier: {storage}");
        self.done(completion).await;
        let (completion, open) = self.control().await;
        assert_eq!(open, Value::Array(vec![1.into(), self.frame.into()]), "then the half opens");
        self.done(completion).await;
        (seed, storage)
    }

    /// Sends the MESSAGE of [`message_value`].
    async fn message(&mut self, kind: u32, status: u32, target: u64, request_id: u64, channel: &str, payload: Vec<u8>) {
        self.send(message_value(kind, status, target, request_id, channel, payload)).await;
    }

    /// The next MESSAGE matching `matches`, skipping others.
    async fn message_where(&mut self, matches: impl Fn(&Value) -> bool) -> Value {
        loop {
            let value = self.recv().await;
            if value[0] == Value::from(1) && matches(&value) {
                return value;
            }
        }
    }
}

/// A web frame's shell and its first extension's page, started, with the origin and token
/// the shell was told for that page (for a test that connects it again or forges them).
struct OpenedPage {
    shell: Shell,
    page: Page,
    origin: String,
    token: String,
}

/// Connects a shell and the page of the first extension it is told to add, which must be
/// `probe`'s (the page's WELCOME says so), on the origin and with the token it was told; the
/// page answers its half's start, and every host operation queued meanwhile (the frame
/// opening) has finished when this returns.
async fn open_probe_page(host: &Host, port: u16) -> OpenedPage {
    let mut shell = Shell::connect(port).await;
    let (_, origin, token) = shell.add().await;
    let mut page = Page::connect(port, &origin, &token, "probe").await;
    page.start().await;
    settle(host).await;
    OpenedPage { shell, page, origin, token }
}

/// Opens a web frame whose one extension with a web renderer is `extension`: the shell and
/// its started page.
async fn open_web_frame(host: &Host, port: u16, extension: &str) -> (Shell, Page) {
    let mut shell = Shell::connect(port).await;
    let (name, origin, token) = shell.add().await;
    assert_eq!(name, extension);
    let mut page = Page::connect(port, &origin, &token, extension).await;
    assert_eq!(page.frame, shell.frame);
    page.start().await;
    settle(host).await;
    (shell, page)
}

/// Asks main's `ECHO_OPTIONAL` `count` times, one request at a time, each reply checked.
async fn echo_one_at_a_time(page: &mut Page, count: u64) {
    for id in 1..=count {
        let value = WithOptional { id: u32::try_from(id).unwrap(), note: None };
        page.message(2, 0, 0, id, ECHO_OPTIONAL.name(), msgpack(&value)).await;
        let reply = page.message_where(|m| m[1] == Value::from(3)).await;
        assert_eq!(reply[5].as_u64(), Some(id), "{reply}");
    }
}

fn payload_of(message: &Value) -> &[u8] {
    message[7].as_slice().expect("a binary payload")
}

async fn main_frames(host: &Host) -> Vec<u64> {
    host.invoke::<_, Vec<u64>>("probe", MAIN_FRAMES.name(), &(), FAILSAFE).await.unwrap()
}

/// The host's inspect, while `pages` answer their part (an empty report each).
async fn inspect_with(host: &Host, pages: &mut [&mut Page]) -> extension_host::HostSnapshot {
    if pages.is_empty() {
        return host.inspect().await;
    }
    let inspect = host.inspect();
    tokio::pin!(inspect);
    loop {
        let (value, at) = {
            let receiving = futures_util::future::select_all(pages.iter_mut().map(|page| Box::pin(page.recv())));
            tokio::select! {
                snapshot = &mut inspect => return snapshot,
                (value, at, _) = receiving => (value, at),
            }
        };
        if value[0] == Value::from(2) && value[2] == Value::Array(vec![3.into()]) {
            let completion = value[1].as_u64().unwrap();
            pages[at].complete(completion, Value::Array(vec![4.into(), Value::Map(vec![])])).await;
        }
    }
}

/// What reached the probe: its channels' counts (every request handled, broadcast delivered),
/// and the frames its renderer half runs in (the connected `pages` answering inspect).
async fn reached_with(host: &Host, pages: &mut [&mut Page]) -> (u64, Vec<u64>) {
    reached_of(&inspect_with(host, pages).await)
}

fn reached_of(snapshot: &extension_host::HostSnapshot) -> (u64, Vec<u64>) {
    let probe = snapshot.extension("probe").unwrap();
    let counts = probe.instance.as_ref().map_or(0, |instance| instance.channels.iter().map(|c| c.count).sum());
    (counts, probe.frames.clone())
}

async fn reached(host: &Host) -> (u64, Vec<u64>) {
    reached_with(host, &mut []).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_is_a_frame_with_the_store_broadcasts_and_requests_both_ways() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let port = port(&server);
    // Main's store has a key before the frame opens: the page gets it before its code runs.
    let mut broadcasts = host.broadcasts();
    let op = StoreOp { side: "main".into(), key: "k".into(), value: Some(7) };
    host.broadcast("probe", STORE_OP.name(), &op).unwrap();
    let done = support::pongs(&mut broadcasts, "probe", 1).await;
    assert_eq!((done[0].side.as_str(), done[0].tag.as_str()), ("main", "store-op-done"));

    let mut shell = Shell::connect(port).await;
    let (_, origin, token) = shell.add().await;
    assert!(origin.starts_with("http://probe-") && origin.ends_with(&format!(".localhost:{port}")), "{origin}");
    let mut page = Page::connect(port, &origin, &token, "probe").await;
    let (seed, _) = page.start().await;
    assert_eq!(seed[2]["k"], Value::Binary(msgpack(&7i64)), "{seed}");
    assert!(seed[1].as_u64().unwrap() >= 1);
    settle(&host).await;
    let frame = page.frame;

    // A frame like the others: listed by the host, by main, and in inspect as a web frame.
    assert_eq!(host.frames(), vec![extension_host::FrameId(frame)]);
    assert_eq!(main_frames(&host).await, vec![frame]);
    let snapshot = inspect_with(&host, &mut [&mut page]).await;
    let listed = snapshot.frame(frame).unwrap();
    assert_eq!(listed.kind, FrameKind::Web);
    assert_eq!(listed.url.as_deref(), Some(server.url().as_str()));

    // The page's broadcast reaches main, whose pong reaches the page.
    let ping = msgpack(&Ping { tag: "from-page".into() });
    page.message(1, 0, PEER_ALL, 0, PING.name(), ping).await;
    let pong = page.message_where(|m| m[6] == Value::from("pong") && m[3] == Value::from(0)).await;
    let pong: probe_protocol::Pong = rmp_serde::from_slice(payload_of(&pong)).unwrap();
    assert_eq!((pong.side.as_str(), pong.tag.as_str()), ("main", "from-page"));
    assert_eq!(pong.sender, format!("frame {frame}"), "the origin is the connection's frame");

    // A request to main, answered; one to a channel with no handler, NoHandler.
    let value = WithOptional { id: 5, note: Some("n".into()) };
    page.message(2, 0, 0, 1, ECHO_OPTIONAL.name(), msgpack(&value)).await;
    let reply = page.message_where(|m| m[1] == Value::from(3) && m[5] == Value::from(1)).await;
    assert_eq!(reply[2], Value::from(0), "{reply}");
    assert_eq!((reply[3].as_u64(), reply[4].as_u64()), (Some(0), Some(frame)));
    assert_eq!(rmp_serde::from_slice::<WithOptional>(payload_of(&reply)).unwrap(), value);
    page.message(2, 0, 0, 2, "no-such-channel", msgpack(&())).await;
    let reply = page.message_where(|m| m[1] == Value::from(3) && m[5] == Value::from(2)).await;
    assert_eq!(reply[2].as_u64(), Some(NO_HANDLER), "{reply}");

    // Main's invoke_frame reaches the page's handler.
    let ask = AskFrame { frame, channel: "frame-info".into(), timeout_ms: 20_000 };
    let asked = tokio::spawn({
        let host = host.clone();
        async move { host.invoke::<_, String>("probe", "ask-frame", &ask, FAILSAFE).await }
    });
    let request = page.message_where(|m| m[1] == Value::from(2)).await;
    assert_eq!((request[3].as_u64(), request[4].as_u64()), (Some(0), Some(frame)));
    assert_eq!(request[6], Value::from("frame-info"));
    let request_id = request[5].as_u64().unwrap();
    page.message(3, 0, 0, request_id, "frame-info", msgpack(&format!("frame:{frame}"))).await;
    assert_eq!(asked.await.unwrap().unwrap(), format!("frame:{frame}"));

    // Inspect asks the page, and shows its half.
    let inspecting = tokio::spawn({
        let host = host.clone();
        async move { host.inspect().await }
    });
    let (completion, command) = page.control().await;
    assert_eq!(command, Value::Array(vec![3.into()]));
    let report = Value::Map(vec![
        ("listeners".into(), Value::Map(vec![("ping".into(), 2.into())])),
        ("handlers".into(), Value::Array(vec!["frame-info".into()])),
        ("pending_requests".into(), 0.into()),
        ("running_handlers".into(), 0.into()),
        ("store_keys".into(), 1.into()),
        ("store_seq".into(), 1.into()),
        ("watchers".into(), 0.into()),
    ]);
    page.complete(completion, Value::Array(vec![4.into(), report])).await;
    let snapshot = inspecting.await.unwrap();
    let instance = snapshot.extension("probe").unwrap().instance.clone().unwrap();
    let half = instance.halves.iter().find(|half| half.half == Half::Frame(extension_host::FrameId(frame))).unwrap();
    assert_eq!(half.listeners.get("ping"), Some(&2));
    assert_eq!(half.handlers, vec!["frame-info".to_owned()]);

    // The page's store write is sequenced by main and comes back to it as an update.
    #[derive(serde::Serialize)]
    struct StoreWrite {
        write_id: u64,
        key: String,
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
    }
    let write = StoreWrite { write_id: 1, key: "w".into(), value: Some(msgpack(&3i64)) };
    page.message(5, 0, 0, 0, "", msgpack(&write)).await;
    let update = page.message_where(|m| m[1] == Value::from(6)).await;
    let update = rmpv::decode::read_value(&mut payload_of(&update)).unwrap();
    assert_eq!(update["key"], Value::from("w"), "{update}");
    assert_eq!((update["writer"].as_u64(), update["write_id"].as_u64()), (Some(frame), Some(1)));
    assert_eq!(update["new"], Value::Binary(msgpack(&3i64)));
    assert_eq!(host.store_values("probe").await.unwrap().get("w"), Some(&msgpack(&3i64)));

    // Closing the shell closes the frame: the page's half is closed, then its socket.
    shell.ws.close(None).await.unwrap();
    let (completion, command) = page.control().await;
    assert_eq!(command[0], Value::from(2), "the half is closed: {command}");
    page.done(completion).await;
    assert_eq!(closed(&mut page.ws).await.0, 1000);
    settle(&host).await;
    assert!(host.frames().is_empty());
    assert!(main_frames(&host).await.is_empty());
    server.shutdown().await;
    host.shutdown().await;
}

/// Main asks the page something it never answers; returns the task that gets the outcome.
async fn ask_and_hang(host: &Host, page: &mut Page) -> tokio::task::JoinHandle<String> {
    let ask = AskFrame { frame: page.frame, channel: "frame-hang".into(), timeout_ms: 20_000 };
    let asked = tokio::spawn({
        let host = host.clone();
        async move { host.invoke::<_, String>("probe", "ask-frame", &ask, FAILSAFE).await.unwrap() }
    });
    page.message_where(|m| m[1] == Value::from(2) && m[6] == Value::from("frame-hang")).await;
    asked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_closing_fails_its_requests_frame_closed_and_its_reconnection_starts_the_half_again() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let port = port(&server);
    let OpenedPage { shell: _shell, mut page, origin, token } = open_probe_page(&host, port).await;
    let frame = page.frame;

    let mut events = host.events();
    let asked = ask_and_hang(&host, &mut page).await;
    page.ws.close(None).await.unwrap();
    assert_eq!(asked.await.unwrap(), "FrameClosed");
    let event = support::wait_event(&mut events, |event| matches!(event, HostEvent::WebRendererClosed { .. })).await;
    assert!(matches!(event, HostEvent::WebRendererClosed { frame: f, lost: false, .. } if f == frame), "{event:?}");
    assert!(main_frames(&host).await.is_empty(), "the half is gone");
    assert_eq!(host.frames(), vec![extension_host::FrameId(frame)], "the frame stays open");

    // The page ran again (a reload): the same token connects, and the half starts again.
    let mut page = Page::connect(port, &origin, &token, "probe").await;
    page.start().await;
    settle(&host).await;
    assert_eq!(main_frames(&host).await, vec![frame]);
    // One live connection per token: a second one takes the first one's place.
    let second = Page::connect(port, &origin, &token, "probe").await;
    assert_eq!(closed(&mut page.ws).await.0, 4000, "the first is superseded");
    drop(second);
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_fails_its_requests_connection_lost() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let (_shell, mut page) = open_web_frame(&host, port(&server), "probe").await;
    let mut events = host.events();
    let asked = ask_and_hang(&host, &mut page).await;
    // The TCP connection goes without a close frame.
    drop(page);
    assert_eq!(asked.await.unwrap(), "ConnectionLost");
    let event = support::wait_event(&mut events, |event| matches!(event, HostEvent::WebRendererClosed { .. })).await;
    assert!(matches!(event, HostEvent::WebRendererClosed { lost: true, .. }), "{event:?}");
    assert!(main_frames(&host).await.is_empty());
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_origins_and_forged_hosts_are_refused_before_anything_runs() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let port = port(&server);
    let shell_host = format!("127.0.0.1:{port}");
    let before = reached(&host).await;

    // A page on another origin opening the shell socket, or none at all.
    assert_eq!(refused_with(upgrade(port, "/shell", &shell_host, Some("http://evil.example")).await), 403);
    assert_eq!(refused_with(upgrade(port, "/shell", &shell_host, None).await), 403);
    // A forged Host (DNS rebinding: evil.example resolving to 127.0.0.1).
    let origin = format!("http://127.0.0.1:{port}");
    assert_eq!(refused_with(upgrade(port, "/shell", &format!("evil.example:{port}"), Some(&origin)).await), 403);
    let response = raw_request(port, &format!("GET / HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n")).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.contains("host not allowed"), "{response}");
    assert!(host.frames().is_empty(), "no frame opened");

    // The real shell gets the extension's origin; another origin may not open its socket.
    let mut shell = Shell::connect(port).await;
    let (_, origin, token) = shell.add().await;
    assert_eq!(refused_with(page_socket(port, &origin, &format!("http://127.0.0.1:{port}")).await), 403);
    assert_eq!(refused_with(page_socket(port, &origin, "http://evil.example").await), 403);
    // The page's own origin does, and the headers every response carries are there.
    let document =
        raw_request(port, &format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", origin.trim_start_matches("http://"))).await;
    assert!(document.starts_with("HTTP/1.1 200"), "{document}");
    let lower = document.to_ascii_lowercase();
    for header in ["x-content-type-options: nosniff", "referrer-policy: no-referrer", "cache-control: no-store"] {
        assert!(lower.contains(header), "{header}: {document}");
    }
    assert!(lower.contains("content-security-policy: default-src 'none'"), "{document}");
    assert!(document.contains(&format!("content=\"http://127.0.0.1:{port} http://localhost:{port}\"")), "{document}");
    assert!(!document.contains(&token), "no token in the document");
    // The extension's files, the host's scripts, and nothing else, with their types.
    let ext_host = origin.trim_start_matches("http://");
    let get = |path: &str, host: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        async move { raw_request(port, &request).await }
    };
    let index = get("/index.js", ext_host).await;
    assert!(index.starts_with("HTTP/1.1 200"), "{index}");
    assert!(index.to_ascii_lowercase().contains("content-type: text/javascript"), "{index}");
    assert!(index.ends_with("export async function activate(ipc) {}"), "{index}");
    let css = get("/sub%20dir/a.css", ext_host).await;
    assert!(css.starts_with("HTTP/1.1 200") && css.ends_with("body {}"), "{css}");
    assert!(get("/.host/bootstrap.js", ext_host).await.starts_with("HTTP/1.1 200"));
    assert!(get("/missing.js", ext_host).await.starts_with("HTTP/1.1 404"));
    assert!(
        get("/index.js", &shell_host).await.starts_with("HTTP/1.1 404"),
        "the shell's origin serves no extension file"
    );
    let shell_page = get("/", &shell_host).await;
    assert!(shell_page.starts_with("HTTP/1.1 200"), "{shell_page}");
    assert!(shell_page.to_ascii_lowercase().contains("frame-ancestors 'none'"), "{shell_page}");
    let page = Page::connect(port, &origin, &token, "probe").await;
    drop(page);
    settle(&host).await;
    let after = reached(&host).await;
    assert_eq!(after.0, before.0, "no message reached main");
    // A shell that breaks its protocol is closed, and its frame with it.
    shell.ws.send(WsMessage::text("{not json")).await.unwrap();
    assert_eq!(closed(&mut shell.ws).await, (1008, "not JSON".to_owned()));
    settle(&host).await;
    assert!(host.frames().is_empty());
    server.shutdown().await;
    host.shutdown().await;
}

/// Sends `request` as is and reads the answer until the server closes.
async fn raw_request(port: u16, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(request.replace("HTTP/1.1\r\n", "HTTP/1.1\r\nConnection: close\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(FAILSAFE, stream.read_to_end(&mut answer)).await.expect("the server answers").unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_bad_messages_end_only_their_connection_and_reach_nobody() {
    let config = WebConfig { max_message: 4096, ..WebConfig::default() };
    let (host, server) = web_host(&["probe", "probe-twin"], true, config).await;
    let port = port(&server);
    let mut broadcasts = host.broadcasts();
    let before = reached(&host).await;

    let mut shell = Shell::connect(port).await;
    let (name, origin, token) = shell.add().await;
    assert_eq!(name, "probe");
    let ping = encode(message_value(1, 0, PEER_ALL, 0, "ping", msgpack(&Ping { tag: "attack".into() })));
    let attempt = |first: WsMessage| {
        let origin = origin.clone();
        async move {
            let mut ws = page_socket(port, &origin, &origin).await.unwrap();
            ws.send(first).await.unwrap();
            closed(&mut ws).await
        }
    };
    // No token: a message before any hello.
    let (code, reason) = attempt(WsMessage::binary(ping.clone())).await;
    assert_eq!((code, reason.as_str()), (1008, "the first message must be a hello"));
    // A wrong token.
    let (code, reason) = attempt(hello_message(&"0".repeat(64))).await;
    assert_eq!((code, reason.as_str()), (1008, "token refused: unknown token"));
    // A text frame, garbage bytes, an oversized message.
    assert_eq!(attempt(WsMessage::text("[0, \"x\"]")).await.0, 1008);
    let (code, reason) = attempt(WsMessage::binary(vec![0xd9, 0xff, 0x00])).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("not MessagePack"), "{reason}");
    assert_eq!(attempt(WsMessage::binary(vec![0u8; 8192])).await.0, 1009);

    // The real page of probe; then probe-twin's token presented on probe's origin.
    let mut page = Page::connect(port, &origin, &token, "probe").await;
    page.start().await;
    let (twin, twin_origin, twin_token) = shell.add().await;
    assert_eq!(twin, "probe-twin");
    let (code, reason) = attempt(hello_message(&twin_token)).await;
    assert_eq!((code, reason.as_str()), (1008, "token refused: unknown token"));
    // One extension's iframe cannot open its sibling's socket.
    assert_eq!(refused_with(page_socket(port, &twin_origin, &origin).await), 403);
    let mut twin_page = Page::connect(port, &twin_origin, &twin_token, "probe-twin").await;
    twin_page.start().await;
    settle(&host).await;
    let frame = shell.frame;
    assert_eq!(
        reached_with(&host, &mut [&mut page, &mut twin_page]).await,
        (before.0, vec![frame]),
        "nothing reached main"
    );
    assert!(broadcasts.try_recv().is_err(), "no broadcast was routed");

    // A connected page's garbage ends its connection only: its half is lost, the frame and the
    // other extension's half stay.
    let mut events = host.events();
    page.send(Value::Array(vec![1.into(), 6.into()])).await;
    let (code, reason) = closed(&mut page.ws).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("message takes 6 fields"), "{reason}");
    support::wait_event(&mut events, |event| matches!(event, HostEvent::WebRendererClosed { lost: true, .. })).await;
    let snapshot = inspect_with(&host, &mut [&mut twin_page]).await;
    assert_eq!(reached_of(&snapshot), (before.0, vec![]));
    assert_eq!(host.frames(), vec![extension_host::FrameId(frame)]);
    let twin_frames = snapshot.extension("probe-twin").unwrap().frames.clone();
    assert_eq!(twin_frames, vec![frame]);
    // A store write that is not one is refused at the edge, not left to main to drop.
    twin_page.message(5, 0, 0, 0, "", msgpack(&"not a write")).await;
    let (code, reason) = closed(&mut twin_page.ws).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("store write"), "{reason}");
    drop(twin_page);
    drop(shell);
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_and_too_many_connections_are_dropped() {
    let config = WebConfig { handshake_timeout: Duration::from_secs(1), max_connections: 2, ..WebConfig::default() };
    let (host, server) = web_host(&["probe"], true, config).await;
    let port = port(&server);
    let before = reached(&host).await;

    // A request whose headers never end is dropped after the handshake timeout.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stalled.write_all(format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(FAILSAFE, stalled.read_to_end(&mut answer)).await.expect("the server drops it").ok();

    // A shell (one connection), and its page that never says hello (the second).
    let mut shell = Shell::connect(port).await;
    let (_, origin, shell_token) = shell.add().await;
    let mut silent = page_socket(port, &origin, &origin).await.unwrap();
    // At the limit: a third connection is refused before the upgrade.
    let origin_of_shell = format!("http://127.0.0.1:{port}");
    let third = upgrade(port, "/shell", &format!("127.0.0.1:{port}"), Some(&origin_of_shell)).await;
    assert_eq!(refused_with(third), 503);
    assert_eq!(closed(&mut silent).await, (1008, "no hello in time".to_owned()));
    assert_eq!(reached(&host).await.0, before.0, "nothing reached main");
    // Its slot is free once the server has closed it (the close reply read): the real page
    // connects with the token.
    assert!(next(&mut silent).await.is_none(), "the server closes the socket after the close reply");
    drop(silent);
    let mut page = Page::connect(port, &origin, &shell_token, "probe").await;
    page.start().await;
    settle(&host).await;
    assert_eq!(reached_with(&host, &mut [&mut page]).await, (before.0, vec![shell.frame]));
    drop(shell);
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_and_deactivation_add_and_remove_iframes_and_reload_mints_new_tokens() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let port = port(&server);
    let (mut shell, mut page) = open_web_frame(&host, port, "probe").await;
    let frame = shell.frame;

    // Deactivating closes the half in the page, removes its iframe, and closes its socket.
    let deactivating = tokio::spawn({
        let host = host.clone();
        async move { host.deactivate("probe").await }
    });
    let (completion, command) = page.control().await;
    assert_eq!(command[0], Value::from(2), "{command}");
    page.done(completion).await;
    assert_eq!(closed(&mut page.ws).await.0, 1000);
    let removed = Shell::json(&mut shell.ws).await;
    assert_eq!(removed, serde_json::json!({ "type": "remove", "extension": "probe" }));
    assert!(deactivating.await.unwrap().unwrap().problems.is_empty());

    // Activating adds it again, with a new token; the old one is void.
    let activating = tokio::spawn({
        let host = host.clone();
        async move { host.activate("probe").await }
    });
    let (_, origin, token) = shell.add().await;
    let mut page = Page::connect(port, &origin, &token, "probe").await;
    page.start().await;
    activating.await.unwrap().unwrap();
    assert_eq!(main_frames(&host).await, vec![frame]);

    // Reloading the frame removes the iframe and adds it with a new token.
    let reloading = tokio::spawn({
        let host = host.clone();
        async move { host.reload_frame(extension_host::FrameId(frame)).await }
    });
    let (completion, _) = page.control().await;
    page.done(completion).await;
    assert_eq!(Shell::json(&mut shell.ws).await["type"], "remove");
    let (_, reloaded_origin, reloaded) = shell.add().await;
    assert_eq!(reloaded_origin, origin, "one origin per extension per server");
    assert_ne!(reloaded, token);
    let mut stale = page_socket(port, &origin, &origin).await.unwrap();
    stale.send(hello_message(&token)).await.unwrap();
    assert_eq!(closed(&mut stale).await, (1008, "token refused: unknown token".to_owned()));
    let mut page = Page::connect(port, &origin, &reloaded, "probe").await;
    page.start().await;
    reloading.await.unwrap().unwrap();
    assert_eq!(main_frames(&host).await, vec![frame]);

    // Closing the frame from the host removes the iframe and closes the shell.
    let closing = close_frame_meanwhile(&host, frame);
    let (completion, _) = page.control().await;
    page.done(completion).await;
    assert_eq!(Shell::json(&mut shell.ws).await["type"], "remove");
    assert_eq!(closed(&mut shell.ws).await.0, 1000);
    closing.await.unwrap().unwrap();
    assert!(main_frames(&host).await.is_empty());
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_without_a_web_renderer_has_no_half_in_a_web_frame() {
    let (host, server) = web_host(&["probe"], false, WebConfig::default()).await;
    let shell = Shell::connect(port(&server)).await;
    settle(&host).await;
    assert_eq!(host.frames(), vec![extension_host::FrameId(shell.frame)]);
    let snapshot = host.inspect().await;
    let probe = snapshot.extension("probe").unwrap();
    assert!(probe.frames.is_empty() && probe.frame_errors.is_empty(), "{probe:?}");
    assert!(main_frames(&host).await.is_empty());
    drop(shell);
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_run_web_serves_web_frames_and_the_console_shows_them() {
    let mut console = crate::console::Console::start_with(&["--frames", "1", "--web", "127.0.0.1:0"], &["probe"]).await;
    let line = console.ask("open web", |line| line.starts_with("web frames: ")).await;
    let url = line.trim_start_matches("web frames: ").to_owned();
    let port: u16 = url.trim_start_matches("http://127.0.0.1:").trim_end_matches('/').parse().expect("a port");
    assert_eq!(url, format!("http://127.0.0.1:{port}/"));
    // A page at that URL is a frame (the probe has no web renderer here: no iframe).
    let shell = Shell::connect(port).await;
    let frames = console.ask("frames", |line| line.starts_with("frames:")).await;
    assert_eq!(frames, format!("frames: 1 {}(web {url})", shell.frame));
    drop(shell);
}

#[tokio::test]
async fn the_server_binds_loopback_unless_told_otherwise() {
    let host = Host::new(support::config());
    let remote = WebConfig { addr: "0.0.0.0:0".parse().unwrap(), ..WebConfig::default() };
    let error = host.serve_web(remote).unwrap_err().to_string();
    assert!(error.contains("is not a loopback address") && error.contains("allow_remote"), "{error}");
    let ipv6 = WebConfig { addr: "[::1]:0".parse().unwrap(), ..WebConfig::default() };
    assert!(host.serve_web(ipv6).unwrap_err().to_string().contains("not an IPv4 address"));
    let server = host.serve_web(WebConfig::default()).unwrap();
    assert!(server.local_addr().ip().is_loopback());
    assert_eq!(server.url(), format!("http://127.0.0.1:{}/", server.local_addr().port()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_stops_reading_turns_requests_away_as_overloaded() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let (_shell, page) = open_web_frame(&host, port(&server), "probe").await;
    let frame = extension_host::FrameId(page.frame);
    // The page reads nothing from here on: the socket's buffers fill, then the page's queue.
    let payload = msgpack(&serde_bytes::ByteBuf::from(vec![7u8; 64 << 10]));
    let mut waiting = Vec::new();
    let refused = loop {
        assert!(waiting.len() < 10_000, "no request was ever refused");
        let mut request = Box::pin(host.invoke_frame_raw("probe", frame, "frame-hang", &payload, FAILSAFE));
        if let std::task::Poll::Ready(outcome) = futures_util::poll!(&mut request) {
            break outcome;
        }
        waiting.push(request);
    };
    assert_eq!(refused.unwrap_err().kind, extension_host::InvokeErrorKind::Overloaded);
    // The ones taken fail once the page goes.
    drop(page);
    for request in waiting.drain(..10) {
        assert_eq!(request.await.unwrap_err().kind, extension_host::InvokeErrorKind::ConnectionLost);
    }
    drop(waiting);
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_the_server_down_closes_its_sockets_and_frames() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let port = port(&server);
    let (mut shell, mut page) = open_web_frame(&host, port, "probe").await;
    server.shutdown().await;
    assert_eq!(closed(&mut page.ws).await.0, 1001);
    assert_eq!(closed(&mut shell.ws).await, (1001, "the server is shutting down".to_owned()));
    assert!(host.frames().is_empty(), "its frames closed before shutdown returned");
    assert!(main_frames(&host).await.is_empty());
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err(), "nothing listens any more");
    host.shutdown().await;
}

/// `[1, STORE_WRITE, 0, main, 0, "", {write_id, key, value}]` from the page.
async fn store_write(page: &mut Page, write_id: u64, key: &str, value: i64) {
    let write = extension_api::wire::StoreWrite { write_id, key: key.into(), value: Some(msgpack(&value)) };
    page.message(5, 0, 0, 0, "", msgpack(&write)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_write_the_host_turns_away_is_refused_to_the_page_at_once() {
    // A Rust half's `set` fails at once when the host does not route its write (the frame
    // closing, main's mailbox full); a page's was never told, so an `await ipc.store.set(..)`
    // in `deactivate()` hung until the close timed out.
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let port = port(&server);
    let (_shell, mut page) = open_web_frame(&host, port, "probe").await;
    let frame = page.frame;
    let closing = close_frame_meanwhile(&host, frame);
    let (completion, command) = page.control().await;
    assert_eq!(command[0], Value::from(2), "the half closes: {command}");
    // Its `deactivate` saves something, and waits for it.
    store_write(&mut page, 41, "saved", 1).await;
    let refusal = page.message_where(|m| m[1] == Value::from(7)).await;
    // [1, STORE_REFUSAL, status, main, frame, 0, "", WriteRefusal]: the route's status says why.
    assert_eq!(refusal[2], Value::from(5), "NO_SUCH_PEER: the frame is closing: {refusal}");
    assert_eq!((refusal[3].as_u64(), refusal[4].as_u64()), (Some(0), Some(frame)));
    let refused: extension_api::wire::WriteRefusal = rmp_serde::from_slice(payload_of(&refusal)).unwrap();
    assert_eq!((refused.write_id, refused.key.as_str()), (41, "saved"));
    assert!(
        matches!(&refused.outcome, extension_api::wire::StorageOutcome::Unavailable { reason } if reason.contains("closing")),
        "{:?}",
        refused.outcome
    );
    page.done(completion).await;
    closing.await.unwrap().expect("the frame closes");
    assert_eq!(closed(&mut page.ws).await.0, 1000);
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pages_log_line_is_cut_at_64_kib_as_a_rust_halfs() {
    // A page's line reached the host's log whole (up to the message limit), where a Rust half's
    // is cut at 64 KiB, saying how long it was.
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let port = port(&server);
    let (_shell, mut page) = open_web_frame(&host, port, "probe").await;
    let mut logs = host.logs();
    let line = format!("{}é", "y".repeat(65_535));
    page.send(Value::Array(vec![3.into(), 3.into(), line.as_str().into()])).await;
    let record = support::wait_log(&mut logs, "probe", |message| message.starts_with("yyy")).await;
    assert_eq!(record.message, format!("{}… (65537 bytes in all)", "y".repeat(65_535)));
    page.send(Value::Array(vec![3.into(), 3.into(), "short".into()])).await;
    assert_eq!(support::wait_log(&mut logs, "probe", |message| message.starts_with("sh")).await.message, "short");
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_closing_with_an_error_code_is_a_lost_connection_with_its_reason() {
    // The client closes 1008 with a reason when it cannot read the host's message: that is a
    // broken connection, not a tab closing, and its reason must reach the host's log and event
    // (it read as `FrameClosed`, "the page closed its connection", the reason dropped).
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let (_shell, mut page) = open_web_frame(&host, port(&server), "probe").await;
    let mut events = host.events();
    let asked = ask_and_hang(&host, &mut page).await;
    let reason = "the host broke the protocol: an unreadable message";
    page.ws.close(Some(CloseFrame { code: CloseCode::Policy, reason: reason.into() })).await.unwrap();
    assert_eq!(asked.await.unwrap(), "ConnectionLost");
    let event = support::wait_event(&mut events, |event| matches!(event, HostEvent::WebRendererClosed { .. })).await;
    match event {
        HostEvent::WebRendererClosed { lost, reason: said, .. } => {
            assert!(lost, "{said}");
            assert!(said.contains("1008") && said.contains(reason), "{said}");
        }
        other => panic!("{other:?}"),
    }
    assert!(main_frames(&host).await.is_empty());
    server.shutdown().await;
    host.shutdown().await;
}

// The security and robustness review's tests: they use this file's shell and page.
#[path = "web_security.rs"]
mod web_security;

// An application's own shell origins (`WebConfig::shell_origins`): they use this file's helpers.
#[path = "web_shell_origins.rs"]
mod web_shell_origins;

#[path = "web_storage.rs"]
mod web_storage;

#[path = "web_writes.rs"]
mod web_writes;

// The direct writes' review (and what landed with them).
#[path = "web_direct.rs"]
mod web_direct;

// The renderer socket's 16 KiB reads, and its messages of every size.
#[path = "web_reads.rs"]
mod web_reads;

// Main's thread reading its pages' sockets, and the read loops reading for a blocked one.
#[path = "web_main_reads.rs"]
mod web_main_reads;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_queues_for_a_page_while_its_socket_is_full_reaches_it_in_order_exactly_once() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let (_shell, mut page) = open_web_frame(&host, port(&server), "probe").await;
    let frame = extension_host::FrameId(page.frame);
    // 400 requests of 32 KiB while the page reads nothing: the socket's buffers fill and the
    // rest waits in the page's queue, for the writer to send in batches once the page reads.
    const COUNT: u64 = 400;
    let mut waiting = Vec::new();
    for index in 0..COUNT {
        let payload = msgpack(&(index, serde_bytes::ByteBuf::from(vec![7u8; 32 << 10])));
        let mut request = Box::pin(host.invoke_frame_raw("probe", frame, "frame-order", &payload, FAILSAFE));
        assert!(futures_util::poll!(&mut request).is_pending(), "request {index} was not taken");
        waiting.push(request);
    }
    let mut request_ids = Vec::new();
    for index in 0..COUNT {
        let request = page.message_where(|m| m[1] == Value::from(2)).await;
        let (sent, _): (u64, serde_bytes::ByteBuf) = rmp_serde::from_slice(payload_of(&request)).unwrap();
        assert_eq!(sent, index, "the page got request {sent} where {index} was due");
        request_ids.push((request[3].as_u64().unwrap(), request[5].as_u64().unwrap()));
    }
    // Each once: every id different, each answered by its own reply.
    let distinct: std::collections::BTreeSet<_> = request_ids.iter().collect();
    assert_eq!(distinct.len(), request_ids.len());
    for (index, (origin, request_id)) in request_ids.iter().enumerate() {
        page.message(3, 0, *origin, *request_id, "frame-order", msgpack(&index)).await;
    }
    for (index, request) in waiting.into_iter().enumerate() {
        let reply = request.await.unwrap();
        assert_eq!(rmp_serde::from_slice::<usize>(&reply).unwrap(), index);
    }
    server.shutdown().await;
    host.shutdown().await;
}

#[path = "web_allowed_hosts.rs"]
mod allowed_hosts;

// Half-open connections: pings, and a page back while the host holds its old connection.
#[path = "web_keepalive.rs"]
mod web_keepalive;

// Their edges: a timeout meaning "never", a shutdown during a close-reply read.
#[path = "web_keepalive_edges.rs"]
mod web_keepalive_edges;

// Loose ends: any bytes are a sign of life; a refused connection gets its close frame.
#[path = "web_leftovers.rs"]
mod web_leftovers;
