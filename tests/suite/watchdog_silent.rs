//! A child that does not answer the watchdog's inspect (stopped: SIGSTOP) is reported
//! unresponsive, saying its process does not answer, and responsive again once it answers and
//! moves; meanwhile it holds up nobody else's looks: the watchdog inspects the instances it
//! looks at together, and a look waits one tick at most for an answer. Every wait is for an
//! event, a log or an answer.

use std::time::Duration;

use extension_host::{Host, HostConfig, HostEvent};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use probe_protocol::{BLOCK, PING, Ping};

use crate::idle::release_socket;
use crate::support::{self, FAILSAFE, Transport, wait_event, wait_log};

fn signal(pid: u32, signal: Signal) {
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), signal).unwrap();
}

/// Inspects `extension`'s instances have answered.
async fn inspections_of(host: &Host, extension: &str) -> u64 {
    host.inspect().await.extension(extension).and_then(|found| found.instance.as_ref()).unwrap().inspections
}

#[tokio::test]
async fn a_stopped_child_is_reported_unresponsive_and_holds_up_no_other_report() {
    // Looks every 25 ms; unresponsive after 600 ms, well within one inspect's timeout (2 s).
    let host = Host::new(HostConfig {
        unresponsive_after: Duration::from_millis(600),
        slow_handler: Duration::from_millis(100),
        ..support::config()
    });
    support::start(&host, Transport::Isolated, "probe").await;
    support::start(&host, Transport::InProcess, "probe-twin").await;
    let mut events = host.events();
    let mut logs = host.logs();

    // The isolated `probe` has work (its thread blocked in a handler: the watchdog looks at it
    // every tick, its reader answering), then its process stops answering anything.
    let release = release_socket();
    let blocked = host.invoke::<_, String>("probe", BLOCK.name(), &release, FAILSAFE);
    wait_log(&mut logs, "probe", |m| m.starts_with("blocking the thread")).await;
    wait_event(
        &mut events,
        |event| matches!(event, HostEvent::SlowHandler { extension, finished: false, .. } if extension == "probe"),
    )
    .await;
    let pid = host.inspect().await.extension("probe").and_then(|probe| probe.pid).expect("isolated: a process");
    signal(pid, Signal::SIGSTOP);

    // Elsewhere, in process, `probe-twin` blocks with a message waiting: warned about, and
    // reported, as if the stopped child were not there.
    let twin_release = release_socket();
    let twin_blocked = host.invoke::<_, String>("probe-twin", BLOCK.name(), &twin_release, FAILSAFE);
    host.broadcast("probe-twin", PING.name(), &Ping { tag: "waits".into() }).unwrap();
    wait_event(
        &mut events,
        |event| matches!(event, HostEvent::SlowHandler { extension, finished: false, .. } if extension == "probe-twin"),
    )
    .await;
    // Each embedder's inspect waits out the stopped child's (2 s): between the twin's answers to
    // two of them, the watchdog went on looking at the stuck twin every tick, not once per
    // timed-out inspect of the child.
    let before = inspections_of(&host, "probe-twin").await;
    let after = inspections_of(&host, "probe-twin").await;
    assert!(
        after - before > 4,
        "the watchdog's looks at `probe-twin` waited for the stopped child's inspect ({} in between)",
        after - before
    );

    // The stopped child: reported, saying it does not answer.
    let silent = wait_event(
        &mut events,
        |event| matches!(event, HostEvent::ExtensionUnresponsive { extension, .. } if extension == "probe"),
    )
    .await;
    let HostEvent::ExtensionUnresponsive { stalled_ms, running, reason, .. } = &silent else { unreachable!() };
    assert!(*stalled_ms >= 600 && running.is_none() && reason.contains("does not answer"), "{silent:?}");
    assert!(host.inspect().await.extension("probe").unwrap().unresponsive);

    // Resumed and released, it answers and is idle again: responsive.
    signal(pid, Signal::SIGCONT);
    std::os::unix::net::UnixStream::connect(&release).unwrap();
    assert_eq!(blocked.await.unwrap(), "unblocked");
    wait_event(
        &mut events,
        |event| matches!(event, HostEvent::ExtensionResponsive { extension, .. } if extension == "probe"),
    )
    .await;
    std::os::unix::net::UnixStream::connect(&twin_release).unwrap();
    assert_eq!(twin_blocked.await.unwrap(), "unblocked");
    host.shutdown().await;
}
