//! Web frames, reviewed for security and robustness: each test here failed before its fix.
//! They play the shell and the page with the helpers of `web_protocol.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use extension_host::{Host, HostEvent, WebConfig, WebServer};
use futures_util::SinkExt;
use rmpv::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{OpenedPage, Page, Shell, closed, encode, open_probe_page, page_socket, port, settle};
use crate::support::{self, FAILSAFE};

/// The probe with a web renderer, its host configured by `configure`, serving web frames.
async fn probe_host(configure: impl FnOnce(&mut extension_host::HostConfig)) -> (Host, WebServer) {
    web_renderers_host(&["probe"], configure).await
}

/// A shell whose probe page connected, started its half and closed its socket (the host has
/// taken its going in): the shell, and the page's origin and token.
async fn a_page_that_came_and_went(
    host: &Host,
    port: u16,
    events: &mut tokio::sync::broadcast::Receiver<HostEvent>,
) -> (Shell, String, String) {
    let OpenedPage { shell, mut page, origin, token } = open_probe_page(host, port).await;
    page.ws.close(None).await.unwrap();
    support::wait_event(events, |event| matches!(event, HostEvent::WebRendererClosed { .. })).await;
    (shell, origin, token)
}

/// `extensions`, each with a web renderer, their host configured by `configure`, serving web
/// frames.
async fn web_renderers_host(
    extensions: &[&str],
    configure: impl FnOnce(&mut extension_host::HostConfig),
) -> (Host, WebServer) {
    let mut config = support::config();
    configure(&mut config);
    let host = Host::new(config);
    for name in extensions {
        host.load(support::library(name)).expect("the library loads");
        let files = BTreeMap::from([("index.js".to_owned(), b"export async function activate(ipc) {}".to_vec())]);
        host.set_web_assets_for_testing(name, files).unwrap();
        host.activate(name).await.expect("the extension activates");
    }
    let server = host.serve_web(WebConfig::default()).expect("the web server starts");
    (host, server)
}

/// A HELLO with `token`, on a new renderer socket at `origin`.
async fn hello(port: u16, origin: &str, token: &str) -> super::Socket {
    let mut ws = page_socket(port, origin, origin).await.expect("the socket opens");
    ws.send(super::hello_message(token)).await.unwrap();
    ws
}

/// A shell that goes while its frame is opening (its pages not connected yet) must not hold
/// the host's operations until every page's wait runs out: a tab opened and closed at once
/// stalled activate, deactivate and every frame operation for activate_timeout per extension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_that_goes_while_its_frame_opens_does_not_hold_the_host() {
    // Far longer than the failsafe: waiting it out fails the test.
    let (host, server) = probe_host(|config| config.activate_timeout = Duration::from_secs(3600)).await;
    let port = port(&server);
    let mut shell = Shell::connect(port).await;
    let (_, origin, token) = shell.add().await;
    shell.ws.close(None).await.unwrap();
    drop(shell);

    let deactivated = tokio::time::timeout(FAILSAFE, host.deactivate("probe")).await;
    assert!(deactivated.expect("the host's operations wait for a page that will never come").is_ok());
    // The wait ended (the frame then closes with its shell): the page's token is void.
    let mut late = hello(port, &origin, &token).await;
    assert_eq!(closed(&mut late).await, (1008, "token refused: unknown token".to_owned()));
    server.shutdown().await;
    host.shutdown().await;
}

/// An extension deactivated while its page is away (the page closed its socket and has not
/// come back) leaves the shell, and that page's token dies: it used to stay valid, and the
/// iframe stayed in the shell, for as long as the frame was open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivating_while_the_page_is_away_removes_its_iframe_and_voids_its_token() {
    let (host, server) = probe_host(|_| {}).await;
    let port = port(&server);
    let mut events = host.events();
    let (mut shell, origin, token) = a_page_that_came_and_went(&host, port, &mut events).await;

    host.deactivate("probe").await.unwrap();
    let mut late = hello(port, &origin, &token).await;
    assert_eq!(closed(&mut late).await, (1008, "token refused: unknown token".to_owned()));
    let removed = Shell::json(&mut shell.ws).await;
    assert_eq!(removed, serde_json::json!({"type": "remove", "extension": "probe"}));
    server.shutdown().await;
    host.shutdown().await;
}

/// A message of many small values costs the host some 40 bytes for each byte sent when it is
/// decoded (a 16 MiB message of nils: hundreds of megabytes), before and after the HELLO: it
/// is refused on the count of its values, before it is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_too_many_values_is_refused_before_it_is_decoded() {
    let (host, server) = probe_host(|_| {}).await;
    let port = port(&server);
    let mut events = host.events();
    let mut shell = Shell::connect(port).await;
    let (_, origin, token) = shell.add().await;

    // Before the HELLO: a "token" of 70,000 nils.
    let mut unknown = page_socket(port, &origin, &origin).await.unwrap();
    let flood = Value::Array(vec![0.into(), Value::Array(vec![Value::Nil; 70_000])]);
    unknown.send(WsMessage::binary(encode(flood))).await.unwrap();
    let (code, reason) = closed(&mut unknown).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("at most 65536 MessagePack values"), "{reason}");

    // After it: an inspect report of 70,000 listeners.
    let mut page = Page::connect(port, &origin, &token, "probe").await;
    page.start().await;
    settle(&host).await;
    let listeners = (0..70_000).map(|at| (Value::from(format!("c{at}")), Value::from(1))).collect();
    let report = Value::Map(vec![("listeners".into(), Value::Map(listeners))]);
    page.complete(1 << 40, Value::Array(vec![4.into(), report])).await;
    // (Were it taken, this would end the connection instead.)
    page.ws.send(WsMessage::text("and then")).await.unwrap();
    let (code, reason) = closed(&mut page.ws).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("at most 65536 MessagePack values"), "{reason}");
    let event = support::wait_event(&mut events, |event| matches!(event, HostEvent::WebRendererClosed { .. })).await;
    assert!(matches!(event, HostEvent::WebRendererClosed { lost: true, .. }), "{event:?}");
    server.shutdown().await;
    host.shutdown().await;
}

/// Renderer sockets that never say HELLO, on one extension's origin (its own page's: its
/// origin is all that takes), are bounded per origin: they used to count only against the
/// server's connection limit, so one extension's page could hold every connection of the
/// server for ever (reopening each after the handshake timeout), and no shell could connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_origins_stalled_handshakes_cannot_take_every_connection() {
    let config = WebConfig { max_connections: 19, ..WebConfig::default() };
    let host = Host::new(support::config());
    host.load(support::library("probe")).expect("the library loads");
    let files = BTreeMap::from([("index.js".to_owned(), b"export async function activate(ipc) {}".to_vec())]);
    host.set_web_assets_for_testing("probe", files).unwrap();
    host.activate("probe").await.expect("the extension activates");
    let server = host.serve_web(config).expect("the web server starts");
    let port = port(&server);
    let OpenedPage { shell, page: _page, origin, .. } = open_probe_page(&host, port).await;

    // 17 sockets that never say HELLO: the shell's, the page's and these would be every
    // connection.
    let mut stalled = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..17 {
        match page_socket(port, &origin, &origin).await {
            Ok(socket) => stalled.push(socket),
            Err(error) => refused.push(super::refused_with(Err(error))),
        }
    }
    assert_eq!((stalled.len(), refused), (16, vec![503]), "16 handshakes at a time on one origin");
    // Another shell (another tab) still connects.
    let other = Shell::connect(port).await;
    assert_ne!(other.frame, shell.frame);
    drop(stalled);
    server.shutdown().await;
    host.shutdown().await;
}

/// A web frame's pages load together: every iframe is added when the frame opens, and a page
/// that is slow to connect (or never does) does not hold the others back. They used to be
/// added one at a time, each after the one before had started, so the host's operations were
/// held for activate_timeout per extension whose page did not come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_frames_pages_load_together() {
    // Far longer than the failsafe: waiting it out fails the test.
    let (host, server) =
        web_renderers_host(&["probe", "probe-twin"], |config| config.activate_timeout = Duration::from_secs(3600))
            .await;
    let port = port(&server);
    let mut shell = Shell::connect(port).await;
    let (first, first_origin, first_token) = shell.add().await;
    let (second, second_origin, second_token) = shell.add().await;
    assert_ne!(first, second);

    // The second page connects before the first: both start, in order.
    let mut second_page = Page::connect(port, &second_origin, &second_token, &second).await;
    let mut first_page = Page::connect(port, &first_origin, &first_token, &first).await;
    first_page.start().await;
    second_page.start().await;
    settle(&host).await;
    let snapshot = super::inspect_with(&host, &mut [&mut first_page, &mut second_page]).await;
    for name in [&first, &second] {
        assert_eq!(snapshot.extension(name).unwrap().frames, vec![shell.frame], "{name}");
    }
    server.shutdown().await;
    host.shutdown().await;
}

/// A page that reconnects and goes again before the host restarted its half (a page reloaded
/// twice in a row) must not void the token of the connection that came after it: the stale
/// reconnection's failed start revoked the token and removed the iframe, so the half could
/// never come back in that frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_reconnection_does_not_void_the_token_of_the_next() {
    let (host, server) = probe_host(|_| {}).await;
    let port = port(&server);
    let mut events = host.events();
    let (shell, origin, token) = a_page_that_came_and_went(&host, port, &mut events).await;

    // Another tab's frame holds the host's operations (its page has not connected), so the
    // restarts of the reconnections below wait.
    let mut other = Shell::connect(port).await;
    let (_, _, other_token) = other.add().await;
    // The page comes back, and goes again at once.
    let mut stale = Page::connect(port, &origin, &token, "probe").await;
    stale.ws.close(None).await.unwrap();
    // The host has taken its going in (the token is free again) once it closes its side.
    closed(&mut stale.ws).await;
    // And comes back once more.
    let mut page = Page::connect(port, &origin, &token, "probe").await;
    // The other tab's page connects: the host's operations go on.
    let mut other_page = Page::connect(port, &origin, &other_token, "probe").await;
    other_page.start().await;
    page.start().await;
    settle(&host).await;

    // (The stale reconnection's going was published by now: operations run in order.)
    while events.try_recv().is_ok() {}

    // The last connection's token is still the half's: when its page reloads, it comes back.
    page.ws.close(None).await.unwrap();
    support::wait_event(
        &mut events,
        |event| matches!(event, HostEvent::WebRendererClosed { frame, .. } if *frame == shell.frame),
    )
    .await;
    let mut page = Page::connect(port, &origin, &token, "probe").await;
    page.start().await;
    drop(other_page);
    server.shutdown().await;
    host.shutdown().await;
}

/// `host run --web` with `RUST_LOG=trace` writes no token to its log: the WebSocket library
/// traces every frame's payload (in hex), which put the shell's `add` and the page's HELLO,
/// tokens and all, in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_everything_logs_no_token() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    let mut child = tokio::process::Command::new(support::host_binary())
        .env("XDG_DATA_HOME", support::fresh_data_dir())
        .args(["run", "--frames", "0", "--web", "127.0.0.1:0", "--duration", "inf"])
        .arg(support::library("hello"))
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the host binary starts");
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut log = Vec::new();
        let _ = stderr.read_to_end(&mut log).await;
        String::from_utf8_lossy(&log).into_owned()
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(FAILSAFE, async {
        loop {
            let line = stdout.next_line().await.unwrap().expect("the host printed its web frames' URL");
            if let Some(url) = line.strip_prefix("web frames: ") {
                return url.to_owned();
            }
        }
    })
    .await
    .expect("the host printed its web frames' URL");
    let port: u16 = url.trim_start_matches("http://127.0.0.1:").trim_end_matches('/').parse().expect("a port");

    let mut shell = Shell::connect(port).await;
    let (name, origin, token) = shell.add().await;
    assert_eq!(name, "hello");
    let mut page = Page::connect(port, &origin, &token, "hello").await;
    page.start().await;
    child.kill().await.unwrap();
    let log = log.await.unwrap();
    assert!(log.contains("TRACE"), "the host traced");
    let hex: String = token.bytes().map(|byte| format!("{byte:02x}")).collect();
    assert!(!log.contains(&token) && !log.contains(&hex), "a token in the log");
}

/// Activating an extension with several web frames open adds its iframe to all of them at
/// once: they used to be added one frame after the other, each once the page before had
/// started, so pages that never connected held the host for activate_timeout per frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activating_adds_the_iframe_to_every_web_frame_at_once() {
    // Far longer than the failsafe: waiting it out fails the test.
    let (host, server) = probe_host(|config| config.activate_timeout = Duration::from_secs(3600)).await;
    let port = port(&server);
    let (mut shells, mut pages) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let OpenedPage { shell, page, .. } = open_probe_page(&host, port).await;
        shells.push(shell);
        pages.push(page);
    }
    host.deactivate("probe").await.unwrap();
    for shell in &mut shells {
        assert_eq!(Shell::json(&mut shell.ws).await["type"], "remove");
    }
    drop(pages);

    let activating = tokio::spawn({
        let host = host.clone();
        async move { host.activate("probe").await }
    });
    // The later frame's iframe is there before the first frame's page connects.
    let (_, origin, second_token) = shells[1].add().await;
    let (_, _, first_token) = shells[0].add().await;
    let mut second = Page::connect(port, &origin, &second_token, "probe").await;
    let mut first = Page::connect(port, &origin, &first_token, "probe").await;
    first.start().await;
    second.start().await;
    tokio::time::timeout(FAILSAFE, activating).await.expect("activated").unwrap().unwrap();
    let snapshot = super::inspect_with(&host, &mut [&mut first, &mut second]).await;
    assert_eq!(snapshot.extension("probe").unwrap().frames, vec![shells[0].frame, shells[1].frame]);
    server.shutdown().await;
    host.shutdown().await;
}
