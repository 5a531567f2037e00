//! A slow-listener warning means one call was slow: a burst of short listener calls, however
//! long it takes in all, raises none (the dispatcher's progress moves with every message, not
//! every 128), and one slow call still does. Every wait is for an event or an answer.

use std::time::Duration;

use extension_host::{ChannelKind, Host, HostConfig, HostEvent};
use probe_protocol::{ECHO_OPTIONAL, SLEEP_LISTENER, WithOptional};

use crate::support::{self, FAILSAFE, Transport, wait_event};

/// Warns of a call running 250 ms; unresponsive after 500 ms (looks every 62 ms).
fn watching() -> HostConfig {
    HostConfig {
        unresponsive_after: Duration::from_millis(500),
        slow_handler: Duration::from_millis(250),
        ..support::config()
    }
}

fn about_probe(event: &HostEvent) -> bool {
    match event {
        HostEvent::SlowHandler { extension, .. } | HostEvent::ExtensionUnresponsive { extension, .. } => {
            extension == "probe"
        }
        _ => false,
    }
}

async fn a_burst_of_short_listener_calls_raises_no_slow_warning(transport: Transport) {
    let host = Host::new(watching());
    support::start(&host, transport, "probe").await;
    let mut events = host.events();
    // 120 calls of 5 ms (fewer than 128, one batch but the first): 600 ms and more in all,
    // past the slow threshold (250 ms) and the unresponsive one (500 ms), each call short.
    for _ in 0..120 {
        host.broadcast("probe", SLEEP_LISTENER.name(), &5u64).unwrap();
    }
    // Answered behind the burst, in order: every call of it has run.
    let answer: WithOptional =
        host.invoke("probe", ECHO_OPTIONAL.name(), &WithOptional { id: 1, note: None }, FAILSAFE).await.unwrap();
    assert_eq!(answer.id, 1);
    let warned: Vec<HostEvent> = std::iter::from_fn(|| events.try_recv().ok()).filter(about_probe).collect();
    assert!(warned.is_empty(), "a burst of 5 ms calls was warned about: {warned:?}");

    // One slow call still is.
    host.broadcast("probe", SLEEP_LISTENER.name(), &600u64).unwrap();
    let slow = wait_event(
        &mut events,
        |event| matches!(event, HostEvent::SlowHandler { extension, .. } if extension == "probe"),
    )
    .await;
    let HostEvent::SlowHandler { kind, channel, finished, elapsed_ms, .. } = &slow else { unreachable!() };
    assert_eq!((*kind, channel.as_str(), *finished), (ChannelKind::Broadcast, "sleep-listener", false), "{slow:?}");
    assert!(*elapsed_ms >= 250, "{slow:?}");
    host.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_short_listener_calls_in_process_raises_no_slow_warning() {
    a_burst_of_short_listener_calls_raises_no_slow_warning(Transport::InProcess).await;
}

#[tokio::test]
async fn a_burst_of_short_listener_calls_in_an_isolated_extension_raises_no_slow_warning() {
    a_burst_of_short_listener_calls_raises_no_slow_warning(Transport::Isolated).await;
}
