//! A listener that blocks its instance's thread is warned about as a handler is (`SlowHandler`,
//! kind broadcast, its channel), and named in the unresponsive report of what waits behind it;
//! in process and in an isolated extension's process alike. Every wait is for an event, a log
//! or an answer.

use extension_host::{ChannelKind, Half, Host, HostEvent};
use probe_protocol::{PING, Ping};

use crate::idle::{block_probe_in_a_listener, release_probe_listener, watchful};
use crate::support::{self, Transport, wait_event};

async fn a_blocking_listener_is_reported_as_a_slow_handler(transport: Transport) {
    let host = Host::new(watchful());
    support::start(&host, transport, "probe").await;
    let mut events = host.events();
    let mut logs = host.logs();
    let release = block_probe_in_a_listener(&host, &mut logs).await;
    let slow = wait_event(
        &mut events,
        |event| matches!(event, HostEvent::SlowHandler { extension, .. } if extension == "probe"),
    )
    .await;
    let HostEvent::SlowHandler { half, kind, channel, elapsed_ms, finished, .. } = &slow else { unreachable!() };
    assert_eq!(
        (*half, *kind, channel.as_str(), *finished),
        (Half::Main, ChannelKind::Broadcast, "block-listener", false),
        "{slow:?}"
    );
    assert!(*elapsed_ms >= 100, "{slow:?}");

    // A message waiting behind it: the report says what the thread runs.
    host.broadcast("probe", PING.name(), &Ping { tag: "waits".into() }).unwrap();
    let stuck = wait_event(
        &mut events,
        |event| matches!(event, HostEvent::ExtensionUnresponsive { extension, .. } if extension == "probe"),
    )
    .await;
    let HostEvent::ExtensionUnresponsive { running, .. } = &stuck else { unreachable!() };
    assert_eq!(running.as_deref(), Some("main broadcast `block-listener`"), "{stuck:?}");
    assert_eq!(
        host.inspect().await.extension("probe").unwrap().instance.as_ref().unwrap().halves[0].running_handlers,
        0,
        "a listener is not a running handler"
    );

    release_probe_listener(&release, &mut logs, &mut events).await;
    host.shutdown().await;
}

#[tokio::test]
async fn a_blocking_listener_in_process_is_reported_as_a_slow_handler() {
    a_blocking_listener_is_reported_as_a_slow_handler(Transport::InProcess).await;
}

#[tokio::test]
async fn a_blocking_listener_in_an_isolated_extension_is_reported_as_a_slow_handler() {
    a_blocking_listener_is_reported_as_a_slow_handler(Transport::Isolated).await;
}
