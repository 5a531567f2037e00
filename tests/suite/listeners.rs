//! Listeners that stop themselves: `listen_once`, and `listen_with_disposer` (the listener
//! gets its own disposer), in main and in every frame.

use probe_protocol::*;

use crate::support::{self, Transport, expect_pongs};

/// Each half's pongs, as `side tag`, sorted.
fn by_side(pongs: &[Pong]) -> Vec<String> {
    let mut seen: Vec<String> = pongs.iter().map(|pong| format!("{} {}", pong.side, pong.tag)).collect();
    seen.sort();
    seen
}

/// The probe's halves' listener counts on `channel` (none registered: 0).
async fn listeners_on(host: &extension_host::Host, channel: &str) -> usize {
    let snapshot = host.inspect().await;
    let probe = snapshot.extensions.iter().find(|extension| extension.info.name == "probe").unwrap();
    let instance = probe.instance.as_ref().unwrap();
    instance.halves.iter().map(|half| half.listeners.get(channel).copied().unwrap_or(0)).sum()
}

async fn a_once_listener_runs_for_the_first_decodable_event_only(transport: Transport) {
    let host = support::host_with_frames(transport, &["probe"], 2).await;
    let mut seen = host.broadcasts();
    host.broadcast("probe", ARM_ONCE.name(), &()).unwrap();
    // Not a u32: skipped (and logged), the listener stays armed.
    host.broadcast("probe", ONCE.name(), &"not a number").unwrap();
    host.broadcast("probe", ONCE.name(), &1u32).unwrap();
    host.broadcast("probe", ONCE.name(), &2u32).unwrap();
    host.broadcast("probe", ONCE.name(), &3u32).unwrap();
    // One pong per half (main and two frames), for the first u32 only; nothing after.
    let pongs = expect_pongs(&host, &mut seen, "probe", 3, 3).await;
    assert_eq!(by_side(&pongs), ["frame:1 once:1", "frame:2 once:1", "main once:1"]);
    assert_eq!(listeners_on(&host, ONCE.name()).await, 0, "the registrations are gone");

    // Armed again, it fires again: once per registration.
    host.broadcast("probe", ARM_ONCE.name(), &()).unwrap();
    host.broadcast("probe", ONCE.name(), &4u32).unwrap();
    host.broadcast("probe", ONCE.name(), &5u32).unwrap();
    let pongs = expect_pongs(&host, &mut seen, "probe", 3, 3).await;
    assert_eq!(by_side(&pongs), ["frame:1 once:4", "frame:2 once:4", "main once:4"]);
}

async fn a_listener_disposes_itself_with_the_disposer_it_is_given(transport: Transport) {
    let host = support::host_with_frames(transport, &["probe"], 1).await;
    let mut seen = host.broadcasts();
    host.broadcast("probe", ARM_COUNTDOWN.name(), &2u32).unwrap();
    for _ in 0..4 {
        host.broadcast("probe", TICK.name(), &()).unwrap();
    }
    // Two ticks each for main and the frame, then the listeners are gone.
    let pongs = expect_pongs(&host, &mut seen, "probe", 4, 2).await;
    assert_eq!(by_side(&pongs), ["frame:1 tick:1", "frame:1 tick:2", "main tick:1", "main tick:2"]);
    assert_eq!(listeners_on(&host, TICK.name()).await, 0, "the registrations are gone");
}

conformance!(
    a_once_listener_runs_for_the_first_decodable_event_only,
    a_listener_disposes_itself_with_the_disposer_it_is_given,
);
