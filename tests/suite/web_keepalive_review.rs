//! The half-open connections' review: what `web_keepalive.rs`'s change still got wrong. Each
//! test here failed before its fix.

use std::time::Duration;

use extension_host::{HostEvent, WebConfig};
use futures_util::StreamExt;
use probe_protocol::{ECHO_OPTIONAL, WithOptional};
use rmpv::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

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
    let port = port(&server);
    let mut shell = Shell::connect(port).await;
    let (_, origin, token) = shell.add().await;
    let mut shell = tokio::spawn(async move { while let Some(Ok(_)) = shell.ws.next().await {} });
    let mut page = Page::connect(port, &origin, &token, "probe").await;
    page.start().await;
    let frame = page.frame;
    let mut events = host.events();
    // Three pings: the timer went off three times, and was set again each time.
    let mut pings = 0;
    while pings < 3 {
        match tokio::time::timeout(FAILSAFE, page.ws.next()).await.expect("no ping came") {
            Some(Ok(WsMessage::Ping(_))) => pings += 1,
            Some(Ok(other)) => panic!("the idle page got {other:?}"),
            Some(Err(error)) => panic!("the connection failed: {error}"),
            None => panic!("the connection ended"),
        }
    }
    page.message(2, 0, 0, 1, ECHO_OPTIONAL.name(), msgpack(&WithOptional { id: 7, note: None })).await;
    let reply = page.message_where(|m| m[1] == Value::from(3)).await;
    assert_eq!(reply[5].as_u64(), Some(1), "{reply}");
    assert_eq!(main_frames(&host).await, vec![frame]);
    assert!(
        !std::iter::from_fn(|| events.try_recv().ok())
            .any(|event| matches!(event, HostEvent::WebRendererClosed { .. })),
        "the half ended meanwhile"
    );
    // The shell's socket (pinged too) is still there.
    assert!(futures_util::poll!(&mut shell).is_pending(), "the shell's connection ended");
    assert_eq!(host.frames(), vec![extension_host::FrameId(frame)]);
    shell.abort();
    server.shutdown().await;
    host.shutdown().await;
}
