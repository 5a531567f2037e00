//! Idle means idle (issue 14): the watchdog looks only at instances with work, so an idle
//! extension, in this process or in a child, is never inspected while another works, and one
//! that gets stuck after that idle span is still reported unresponsive, then responsive again.
//! Every test waits for events or answers, never for time: the idle span is the watchdog's
//! own, from a handler blocking elsewhere until its warning (at least four of its ticks).

use std::time::Duration;

use extension_host::{ChannelKind, Half, Host, HostConfig, HostEvent, LogRecord};
use probe_protocol::{BLOCK, BLOCK_LATER, BLOCK_LISTENER, BlockLater, PING, Ping};
use tokio::sync::broadcast::Receiver;

use crate::loading::tempdir;
use crate::support::{self, FAILSAFE, Transport, wait_event, wait_log};

/// A host whose watchdog looks every 25 ms while it has something to look at.
pub(crate) fn watchful() -> HostConfig {
    HostConfig {
        unresponsive_after: Duration::from_millis(200),
        slow_handler: Duration::from_millis(100),
        ..support::config()
    }
}

/// Inspects `probe` has answered, over all its instances (the embedder's, this one included).
pub(crate) async fn inspections(host: &Host) -> u64 {
    host.inspect().await.extension("probe").and_then(|probe| probe.instance.as_ref()).unwrap().inspections
}

pub(crate) fn release_socket() -> String {
    tempdir().join("release.sock").to_string_lossy().into_owned()
}

/// Has `probe`'s main block its thread in a listener (the `block-listener` broadcast, run in
/// place) and waits until it says it is blocked; the socket whose connection releases it
/// (see [`release_probe_listener`]).
pub(crate) async fn block_probe_in_a_listener(host: &Host, logs: &mut Receiver<LogRecord>) -> String {
    let release = release_socket();
    host.broadcast("probe", BLOCK_LISTENER.name(), &release).unwrap();
    wait_log(logs, "probe", |m| m.starts_with("blocking the thread in a listener")).await;
    release
}

/// Releases `probe`'s listener blocked on `release` (by [`block_probe_in_a_listener`]) and
/// waits until the listener has returned and the watchdog has reported `probe` responsive
/// again.
pub(crate) async fn release_probe_listener(
    release: &str,
    logs: &mut Receiver<LogRecord>,
    events: &mut Receiver<HostEvent>,
) {
    std::os::unix::net::UnixStream::connect(release).unwrap();
    wait_log(logs, "probe", |m| m == "listener unblocked").await;
    wait_event(
        events,
        |event| matches!(event, HostEvent::ExtensionResponsive { extension, .. } if extension == "probe"),
    )
    .await;
}

/// `probe-twin` blocks its thread in place until the watchdog warns about it (past the
/// slow-handler threshold: it looked at it every tick meanwhile), which is the span this
/// returns after, the twin released.
pub(crate) async fn span_of_watched_work(host: &Host, events: &mut Receiver<HostEvent>) {
    let release = release_socket();
    let blocked = host.invoke::<_, String>("probe-twin", BLOCK.name(), &release, FAILSAFE);
    let warned = async {
        wait_event(
            events,
            |event| matches!(event, HostEvent::SlowHandler { extension, finished: false, .. } if extension == "probe-twin"),
        )
        .await;
        std::os::unix::net::UnixStream::connect(&release).unwrap();
    };
    let (answer, ()) = tokio::join!(blocked, warned);
    assert_eq!(answer.unwrap(), "unblocked");
}

/// The watchdog's two reports of `probe` stuck in main's `block` with messages waiting: the
/// slow handler (the time so far) and unresponsive, in either order (one late look may make
/// both, unresponsive first).
async fn reported_stuck(events: &mut Receiver<HostEvent>) {
    let (mut slow, mut unresponsive) = (None, None);
    while slow.is_none() || unresponsive.is_none() {
        let event = wait_event(events, |event| {
            matches!(event, HostEvent::SlowHandler { extension, .. } | HostEvent::ExtensionUnresponsive { extension, .. } if extension == "probe")
        })
        .await;
        match event {
            HostEvent::SlowHandler { half, kind, channel, finished, .. } => {
                assert_eq!(
                    (half, kind, channel.as_str(), finished),
                    (Half::Main, ChannelKind::Request, "block", false)
                );
                slow.get_or_insert(());
            }
            // Main's report names the handler it is stuck in. Another instance of it (a
            // renderer process) starved of CPU for the threshold on a loaded machine may be
            // reported too, running nothing of its own: not the report this waits for.
            HostEvent::ExtensionUnresponsive { running: None, .. } => {}
            HostEvent::ExtensionUnresponsive { queued, running, .. } => {
                assert_eq!(running.as_deref(), Some("main request `block`"));
                // The ping waits (and, with a frame open, its renderer half's pong to main).
                assert!(queued >= 1, "{queued}");
                unresponsive.get_or_insert(());
            }
            other => panic!("{other:?}"),
        }
    }
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
    let release = release_socket();
    let blocked = host.invoke::<_, String>("probe", BLOCK.name(), &release, FAILSAFE);
    host.broadcast("probe", PING.name(), &Ping { tag: "waits".into() }).unwrap();
    wait_log(&mut logs, "probe", |m| m.starts_with("blocking the thread")).await;
    reported_stuck(&mut events).await;
    assert!(host.inspect().await.extension("probe").unwrap().unresponsive);

    std::os::unix::net::UnixStream::connect(&release).unwrap();
    assert_eq!(blocked.await.unwrap(), "unblocked");
    // Main's recovery: stalled at least as long as it was blocked (a starved renderer process's
    // recovery, as above, is shorter).
    let recovered = wait_event(
        &mut events,
        |event| matches!(event, HostEvent::ExtensionResponsive { stalled_ms, .. } if *stalled_ms >= 200),
    )
    .await;
    assert!(
        matches!(&recovered, HostEvent::ExtensionResponsive { extension, .. } if extension == "probe"),
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
    let release = release_socket();
    // The broadcast is the last the host sees of it: the timer (300 ms, many ticks) runs out
    // after the watchdog found the instance idle again.
    host.broadcast("probe", BLOCK_LATER.name(), &BlockLater { path: release.clone(), millis: 300 }).unwrap();
    wait_log(&mut logs, "probe", |m| m.starts_with("blocking the thread")).await;
    reported_stuck(&mut events).await;

    std::os::unix::net::UnixStream::connect(&release).unwrap();
    wait_log(&mut logs, "probe", |m| m.ends_with("block later ended")).await;
    let recovered = wait_event(&mut events, |event| matches!(event, HostEvent::ExtensionResponsive { .. })).await;
    assert!(
        matches!(&recovered, HostEvent::ExtensionResponsive { extension, .. } if extension == "probe"),
        "{recovered:?}"
    );
    host.shutdown().await;
}
