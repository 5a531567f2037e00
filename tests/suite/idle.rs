//! Idle means idle (issue 14): the watchdog looks only at instances with work, so an idle
//! extension, in this process or in a child, is never inspected while another works, and one
//! that gets stuck after that idle span is still reported unresponsive, then responsive again.
//! Every test waits for events or answers, never for time: the idle span is the watchdog's
//! own, from a slow handler elsewhere until its warning (at least four of its ticks).

use std::time::Duration;

use extension_host::{ChannelKind, Half, Host, HostConfig, HostEvent};
use probe_protocol::{BLOCK, BLOCK_LATER, BlockLater, PING, Ping, SPIN};
use tokio::sync::broadcast::Receiver;

use crate::loading::tempdir;
use crate::support::{self, FAILSAFE, Transport, wait_event, wait_log};

/// A host whose watchdog looks every 25 ms while it has something to look at.
fn watchful() -> HostConfig {
    HostConfig {
        unresponsive_after: Duration::from_millis(200),
        slow_handler: Duration::from_millis(100),
        ..support::config()
    }
}

/// Inspects `probe` has answered, over all its instances (the embedder's, this one included).
async fn inspections(host: &Host) -> u64 {
    host.inspect().await.extension("probe").and_then(|probe| probe.instance.as_ref()).unwrap().inspections
}

/// `probe-twin` keeps its thread busy in place past the slow-handler threshold: the watchdog
/// looks at it every tick until it warns, which is the span this returns after.
async fn span_of_watched_work(host: &Host, events: &mut Receiver<HostEvent>) {
    let spin = host.invoke::<_, u64>("probe-twin", SPIN.name(), &400u64, FAILSAFE);
    let warned = wait_event(
        events,
        |event| matches!(event, HostEvent::SlowHandler { extension, finished: false, .. } if extension == "probe-twin"),
    );
    let (rounds, _) = tokio::join!(spin, warned);
    assert!(rounds.unwrap() > 0);
}

/// `probe` runs idle (`transport`; `child_frames` renderer processes of it open) beside a busy
/// `probe-twin`: the watchdog does not inspect it; then it blocks, and is reported.
async fn an_idle_extension_is_not_inspected_and_still_reported_once_stuck(transport: Transport, child_frames: u64) {
    let host = Host::new(watchful());
    support::start(&host, transport, "probe").await;
    support::start(&host, Transport::InProcess, "probe-twin").await;
    for _ in 0..child_frames {
        host.open_child_frame().await.unwrap();
    }
    let mut events = host.events();
    let mut logs = host.logs();
    // Once first: the looks the activations asked for are over when it ends.
    span_of_watched_work(&host, &mut events).await;

    let before = inspections(&host).await;
    span_of_watched_work(&host, &mut events).await;
    let after = inspections(&host).await;
    // One inspect per instance: ours (the main half's, and one per renderer process).
    assert_eq!(after - before, 1 + child_frames, "the watchdog inspected the idle `probe` while `probe-twin` worked");

    // Stuck after that idle span, it is still reported, then responsive again.
    let release = tempdir().join("release.sock").to_string_lossy().into_owned();
    let blocked = host.invoke::<_, String>("probe", BLOCK.name(), &release, FAILSAFE);
    host.broadcast("probe", PING.name(), &Ping { tag: "waits".into() }).unwrap();
    wait_log(&mut logs, "probe", |m| m.starts_with("blocking the thread")).await;
    let slow = wait_event(
        &mut events,
        |event| matches!(event, HostEvent::SlowHandler { extension, .. } if extension == "probe"),
    )
    .await;
    let HostEvent::SlowHandler { half, kind, channel, finished, .. } = slow else { unreachable!() };
    assert_eq!((half, kind, channel.as_str(), finished), (Half::Main, ChannelKind::Request, "block", false));
    let unresponsive = wait_event(&mut events, |event| matches!(event, HostEvent::ExtensionUnresponsive { .. })).await;
    let HostEvent::ExtensionUnresponsive { extension, queued, running, .. } = unresponsive else { unreachable!() };
    assert_eq!((extension.as_str(), running.as_deref()), ("probe", Some("main request `block`")));
    // The ping waits (and, with a frame open, its renderer half's pong to main).
    assert!(queued >= 1, "{queued}");
    assert!(host.inspect().await.extension("probe").unwrap().unresponsive);

    std::os::unix::net::UnixStream::connect(&release).unwrap();
    assert_eq!(blocked.await.unwrap(), "unblocked");
    let recovered = wait_event(&mut events, |event| matches!(event, HostEvent::ExtensionResponsive { .. })).await;
    assert!(
        matches!(&recovered, HostEvent::ExtensionResponsive { extension, stalled_ms } if extension == "probe" && *stalled_ms >= 200),
        "{recovered:?}"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn an_idle_isolated_extension_is_not_inspected_and_still_reported_once_stuck() {
    an_idle_extension_is_not_inspected_and_still_reported_once_stuck(Transport::Isolated, 0).await;
}

#[tokio::test]
async fn an_idle_extension_and_its_renderer_process_are_not_inspected_and_still_reported_once_stuck() {
    an_idle_extension_is_not_inspected_and_still_reported_once_stuck(Transport::InProcess, 1).await;
}

/// A handler the extension starts on its own timer, between its own halves (in process nothing
/// of it passes through the host), blocks its thread after the watchdog stopped looking: it is
/// still warned about and reported.
#[tokio::test]
async fn a_handler_started_within_the_instance_by_its_own_timer_is_reported_once_stuck() {
    let host = Host::new(watchful());
    support::start(&host, Transport::InProcess, "probe").await;
    host.open_frame().await;
    let mut events = host.events();
    let mut logs = host.logs();
    let release = tempdir().join("release.sock").to_string_lossy().into_owned();
    // The broadcast is the last the host sees of it: the timer (300 ms, many ticks) runs out
    // after the watchdog found the instance idle again.
    host.broadcast("probe", BLOCK_LATER.name(), &BlockLater { path: release.clone(), millis: 300 }).unwrap();
    wait_log(&mut logs, "probe", |m| m.starts_with("blocking the thread")).await;
    let slow = wait_event(&mut events, |event| matches!(event, HostEvent::SlowHandler { .. })).await;
    let HostEvent::SlowHandler { extension, half, channel, finished, .. } = slow else { unreachable!() };
    assert_eq!((extension.as_str(), half, channel.as_str(), finished), ("probe", Half::Main, "block", false));
    let unresponsive = wait_event(&mut events, |event| matches!(event, HostEvent::ExtensionUnresponsive { .. })).await;
    let HostEvent::ExtensionUnresponsive { extension, queued, running, .. } = unresponsive else { unreachable!() };
    assert_eq!((extension.as_str(), queued, running.as_deref()), ("probe", 1, Some("main request `block`")));

    std::os::unix::net::UnixStream::connect(&release).unwrap();
    wait_log(&mut logs, "probe", |m| m.ends_with("block later ended")).await;
    let recovered = wait_event(&mut events, |event| matches!(event, HostEvent::ExtensionResponsive { .. })).await;
    assert!(
        matches!(&recovered, HostEvent::ExtensionResponsive { extension, .. } if extension == "probe"),
        "{recovered:?}"
    );
    host.shutdown().await;
}
