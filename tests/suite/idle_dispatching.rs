//! A message the dispatcher has taken is work until it is finished, whether or not anything
//! marks it running: an instance whose thread is stuck in a listener (run in place and never
//! marked, as is a handler in the moment before its mark) with nothing else queued is still
//! looked at every tick, so its stall counts from when its thread stopped; released, it is left
//! alone again. (Without it, the look its message asked for found it idle and the watchdog
//! stopped looking, its call made.) Every wait is for an event, a log or an answer.

use extension_host::{Host, HostEvent};
use probe_protocol::{PING, Ping};

use crate::idle::{block_probe_in_a_listener, inspections, release_probe_listener, span_of_watched_work, watchful};
use crate::support::{self, Transport, wait_event};

#[tokio::test]
async fn an_instance_stuck_in_a_listener_with_nothing_queued_is_still_watched() {
    let host = Host::new(watchful());
    support::start(&host, Transport::InProcess, "probe").await;
    support::start(&host, Transport::InProcess, "probe-twin").await;
    let mut events = host.events();
    let mut logs = host.logs();
    // The looks the activations asked for are over when it ends.
    span_of_watched_work(&host, &mut events).await;

    let release = block_probe_in_a_listener(&host, &mut logs).await;
    // The look the broadcast asked for comes at the first tick, within this span.
    span_of_watched_work(&host, &mut events).await;
    let before = inspections(&host).await;
    span_of_watched_work(&host, &mut events).await;
    let after = inspections(&host).await;
    // More than the embedder's own one: the watchdog went on looking at the stuck instance.
    assert!(after - before > 1, "the watchdog stopped looking at `probe` stuck in a listener ({})", after - before);

    // A message waiting behind the listener: reported, then responsive once released.
    host.broadcast("probe", PING.name(), &Ping { tag: "waits".into() }).unwrap();
    let stuck = wait_event(
        &mut events,
        |event| matches!(event, HostEvent::ExtensionUnresponsive { extension, .. } if extension == "probe"),
    )
    .await;
    assert!(matches!(stuck, HostEvent::ExtensionUnresponsive { queued, .. } if queued >= 1), "{stuck:?}");
    release_probe_listener(&release, &mut logs, &mut events).await;

    // Idle again, it is left alone: once for the look that finds it idle, then measured.
    span_of_watched_work(&host, &mut events).await;
    let before = inspections(&host).await;
    span_of_watched_work(&host, &mut events).await;
    let after = inspections(&host).await;
    assert_eq!(after - before, 1, "the watchdog inspected the idle `probe` while `probe-twin` worked");
    host.shutdown().await;
}
