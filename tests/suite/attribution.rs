//! Attribution and diagnosis (issue 17): which extension uses the CPU, what each channel
//! received and how long it took, and the watchdog reporting a stuck thread and slow handlers.
//! Every test waits for events or answers, never for time.

use std::time::Duration;

use extension_host::{ChannelKind, Half, Host, HostConfig, HostEvent};
use probe_protocol::{BLOCK, NAP, PING, Ping, SEQ_INVOKE, SPIN};

use crate::console::Console;
use crate::loading::tempdir;
use crate::support::{self, FAILSAFE, Transport, wait_event, wait_log};

/// A host whose watchdog reports quickly.
fn watchful() -> HostConfig {
    HostConfig {
        unresponsive_after: Duration::from_millis(200),
        slow_handler: Duration::from_millis(100),
        ..support::config()
    }
}

async fn host_of(config: HostConfig, crates: &[&str], isolated: &[&str]) -> Host {
    let host = Host::new(config);
    for name in crates {
        let transport = if isolated.contains(name) { Transport::Isolated } else { Transport::InProcess };
        support::start(&host, transport, name).await;
    }
    host
}

async fn the_busy_extension_is_named_by_its_cpu_time(isolated: bool) {
    let host = host_of(support::config(), &["probe", "probe-twin"], if isolated { &["probe"] } else { &[] }).await;
    // Both did the same work so far (activation); then only `probe` works.
    let rounds = host.invoke::<_, u64>("probe", SPIN.name(), &300u64, FAILSAFE).await.unwrap();
    assert!(rounds > 0);
    assert_eq!(host.invoke::<_, u64>("probe-twin", SEQ_INVOKE.name(), &1u32, FAILSAFE).await.unwrap(), 1);

    let snapshot = host.inspect().await;
    let cpu = |name: &str| {
        let extension = snapshot.extension(name).unwrap();
        let instance = extension.instance.as_ref().unwrap();
        assert_ne!(instance.thread_id, 0, "{name} reports its thread");
        instance.cpu_ns.unwrap_or_else(|| panic!("{name}'s thread CPU time is known"))
    };
    let (busy, idle) = (cpu("probe"), cpu("probe-twin"));
    assert!(busy > 10 * idle, "the spinning thread used {busy} ns, the idle one {idle} ns");
    let busiest = snapshot
        .extensions
        .iter()
        .max_by_key(|extension| extension.instance.as_ref().and_then(|instance| instance.cpu_ns))
        .unwrap();
    assert_eq!(busiest.info.name, "probe");

    let probe = snapshot.extension("probe").unwrap();
    if isolated {
        // The whole process: its thread and the rest (its reader thread, its start).
        let process = probe.process.expect("an isolated extension's process is measured");
        assert!(process.cpu_ns.unwrap() >= busy, "{process:?} against the thread's {busy}");
        assert!(process.rss_bytes.unwrap() > 0, "{process:?}");
    } else {
        assert_eq!(probe.process, None, "an in-process extension has no process of its own");
    }
    assert_eq!(snapshot.extension("probe-twin").unwrap().process, None);
    host.shutdown().await;
}

#[tokio::test]
async fn the_busy_extension_in_process_is_named_by_its_cpu_time() {
    the_busy_extension_is_named_by_its_cpu_time(false).await;
}

#[tokio::test]
async fn the_busy_isolated_extension_is_named_by_its_cpu_time() {
    the_busy_extension_is_named_by_its_cpu_time(true).await;
}

#[tokio::test]
async fn requests_and_broadcasts_are_counted_per_channel_with_their_latencies() {
    let host = host_of(support::config(), &["probe"], &[]).await;
    for n in 0..40u32 {
        assert_eq!(host.invoke::<_, u32>("probe", SEQ_INVOKE.name(), &n, FAILSAFE).await.unwrap(), n);
    }
    let mut seen = host.broadcasts();
    for n in 0..20 {
        host.broadcast("probe", PING.name(), &Ping { tag: n.to_string() }).unwrap();
    }
    // Main's listener answers each ping: all 20 were delivered.
    support::pongs(&mut seen, "probe", 20).await;
    // A request to a channel without a handler, and a broadcast nobody listens to, count nowhere.
    host.invoke::<_, ()>("probe", "nothing-here", &(), FAILSAFE).await.unwrap_err();
    host.broadcast("probe", "nobody-listens", &()).unwrap();
    host.invoke::<_, u32>("probe", SEQ_INVOKE.name(), &40u32, FAILSAFE).await.unwrap();

    let instance = host.inspect().await.extension("probe").unwrap().instance.clone().unwrap();
    let channel = |kind, name: &str| instance.channels.iter().find(|c| c.kind == kind && c.channel == name).cloned();
    let seq = channel(ChannelKind::Request, "seq").unwrap();
    assert_eq!(seq.count, 41);
    // One in SAMPLE_EVERY is timed, the first included.
    assert_eq!(seq.timed(), 41u64.div_ceil(extension_host::ChannelStats::SAMPLE_EVERY));
    assert!(seq.p50_ns > 0 && seq.p50_ns <= seq.p99_ns && seq.p99_ns <= seq.max_ns, "{seq:?}");
    let ping = channel(ChannelKind::Broadcast, "ping").unwrap();
    assert_eq!(ping.count, 20);
    assert!(ping.max_ns > 0, "{ping:?}");
    assert_eq!(channel(ChannelKind::Request, "nothing-here"), None);
    assert_eq!(channel(ChannelKind::Broadcast, "nobody-listens"), None);
    // `seq` is also an event channel of the probe: the two kinds are kept apart.
    assert_eq!(channel(ChannelKind::Broadcast, "seq"), None);
    assert_eq!(instance.queued_messages, 0);
    host.shutdown().await;
}

fn release_socket() -> String {
    tempdir().join("release.sock").to_string_lossy().into_owned()
}

async fn a_blocked_extension_is_reported_unresponsive_then_responsive(isolated: bool) {
    let host = host_of(watchful(), &["probe", "probe-twin"], if isolated { &["probe"] } else { &[] }).await;
    let mut events = host.events();
    // The two reports may come in either order (one look can find both thresholds passed):
    // each is awaited on a stream of its own.
    let mut unresponsive_events = host.events();
    let mut logs = host.logs();
    let release = release_socket();
    let blocked = host.invoke::<_, String>("probe", BLOCK.name(), &release, FAILSAFE);
    // A message waits behind the blocked handler: in the mailbox, or, if the dispatcher took
    // both at once, in its batch.
    host.broadcast("probe", PING.name(), &Ping { tag: "waits".into() }).unwrap();
    wait_log(&mut logs, "probe", |m| m.starts_with("blocking the thread")).await;

    let slow = wait_event(&mut events, |event| matches!(event, HostEvent::SlowHandler { .. })).await;
    let HostEvent::SlowHandler { extension, half, kind, channel, elapsed_ms, finished } = slow else { unreachable!() };
    assert_eq!(
        (extension.as_str(), half, kind, channel.as_str(), finished),
        ("probe", Half::Main, ChannelKind::Request, "block", false)
    );
    assert!(elapsed_ms >= 100, "{elapsed_ms}");
    let unresponsive =
        wait_event(&mut unresponsive_events, |event| matches!(event, HostEvent::ExtensionUnresponsive { .. })).await;
    assert_eq!(
        unresponsive,
        match &unresponsive {
            HostEvent::ExtensionUnresponsive { stalled_ms, .. } => HostEvent::ExtensionUnresponsive {
                extension: "probe".into(),
                stalled_ms: *stalled_ms,
                queued: 1,
                running: Some("main request `block`".into()),
                reason: format!(
                    "its thread has not taken a message for at least {stalled_ms} ms, with 1 waiting \
                     (running main request `block`)"
                ),
            },
            other => panic!("{other:?}"),
        }
    );
    let snapshot = host.inspect().await;
    assert!(snapshot.extension("probe").unwrap().unresponsive);
    assert!(!snapshot.extension("probe-twin").unwrap().unresponsive, "the idle twin is fine");
    // The other extension answers meanwhile.
    assert_eq!(host.invoke::<_, u32>("probe-twin", SEQ_INVOKE.name(), &5u32, FAILSAFE).await.unwrap(), 5);

    std::os::unix::net::UnixStream::connect(&release).unwrap();
    assert_eq!(blocked.await.unwrap(), "unblocked");
    let recovered = wait_event(&mut events, |event| matches!(event, HostEvent::ExtensionResponsive { .. })).await;
    assert!(
        matches!(&recovered, HostEvent::ExtensionResponsive { extension, stalled_ms } if extension == "probe" && *stalled_ms >= 200),
        "{recovered:?}"
    );
    assert!(!host.inspect().await.extension("probe").unwrap().unresponsive);
    host.shutdown().await;
}

#[tokio::test]
async fn a_blocked_extension_in_process_is_reported_unresponsive_then_responsive() {
    a_blocked_extension_is_reported_unresponsive_then_responsive(false).await;
}

#[tokio::test]
async fn a_blocked_isolated_extension_is_reported_unresponsive_then_responsive() {
    a_blocked_extension_is_reported_unresponsive_then_responsive(true).await;
}

#[tokio::test]
async fn a_handler_that_waits_past_the_threshold_is_warned_once_with_its_time() {
    let host = host_of(watchful(), &["probe"], &[]).await;
    let mut events = host.events();
    // Fast handlers first: the first slow-handler event must be the nap's.
    for n in 0..20u32 {
        assert_eq!(host.invoke::<_, u32>("probe", SEQ_INVOKE.name(), &n, FAILSAFE).await.unwrap(), n);
    }
    host.invoke::<_, ()>("probe", NAP.name(), &300u64, FAILSAFE).await.unwrap();
    let slow = wait_event(&mut events, |event| matches!(event, HostEvent::SlowHandler { .. })).await;
    let HostEvent::SlowHandler { extension, half, kind, channel, elapsed_ms, finished } = slow else { unreachable!() };
    assert_eq!(
        (extension.as_str(), half, kind, channel.as_str(), finished),
        ("probe", Half::Main, ChannelKind::Request, "nap", true)
    );
    assert!(elapsed_ms >= 300, "it took at least what it waited: {elapsed_ms} ms");
    let first_ms = elapsed_ms;
    // Once: the next slow-handler event is the next slow handler's. A second report of the
    // first would carry the time the instance measured for it, to the millisecond; the
    // second nap's own is its own (no upper bound on it: a loaded machine makes a 150 ms nap
    // take 400).
    host.invoke::<_, ()>("probe", NAP.name(), &150u64, FAILSAFE).await.unwrap();
    let next = wait_event(&mut events, |event| matches!(event, HostEvent::SlowHandler { .. })).await;
    assert!(
        matches!(&next, HostEvent::SlowHandler { elapsed_ms, finished: true, .. } if *elapsed_ms >= 150 && *elapsed_ms != first_ms),
        "{next:?} after the first nap's {first_ms} ms"
    );
    let nap = host.inspect().await.extension("probe").unwrap().instance.clone().unwrap();
    let nap = nap.channels.iter().find(|c| c.channel == "nap").unwrap();
    assert_eq!(nap.count, 2);
    assert!(nap.max_ns >= 300_000_000, "the slowest handler's time: {nap:?}");
    host.shutdown().await;
}

#[tokio::test]
async fn top_in_the_console_names_the_busy_extension_first() {
    let mut console = Console::start(&["hello", "probe"]).await;
    let reply = console.ask("invoke probe spin 300", |l| l.starts_with("reply") || l.starts_with("error")).await;
    assert!(reply.starts_with("reply: "), "{reply}");
    let error = console.ask("top many", |l| l.starts_with("error")).await;
    assert!(error.contains("not a number of refreshes"), "{error}");
    // The second table is drawn over the first.
    let header = console.ask("top 2", |l| l.contains("\u{1b}[") && l.contains("EXTENSION")).await;
    assert!(header.contains("CPU%") && header.contains("P99") && header.contains("MAILBOX"), "{header}");
    let first = console.ask("list", |l| l.starts_with("probe ") || l.starts_with("hello ")).await;
    assert!(first.starts_with("probe ") && first.split_whitespace().nth(1) == Some("active"), "{first}");
    console.ask("quit", |l| l == "console closed").await;
}
