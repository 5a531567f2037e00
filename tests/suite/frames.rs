//! Frames: opened, closed and reloaded at runtime; renderer halves follow them.

use std::collections::BTreeSet;

use extension_host::FrameId;
use probe_protocol::*;

use crate::support::{self, FAILSAFE, Transport, expect_pongs, wait_log};

async fn a_frame_opened_later_gets_the_renderer_halves_of_active_extensions(transport: Transport) {
    let host = support::host_for(transport, &["hello"]).await;
    let mut logs = host.logs();
    let frame = support::open_frame(&host, transport).await;
    assert_eq!(frame, FrameId(1));
    wait_log(&mut logs, "hello", |m| m == "main got `initialize` from frame 1: renderer-1").await;
    wait_log(&mut logs, "hello", |m| m == "frame 1 got: Hello, renderer-1! (from hello's main)").await;
}

async fn an_extension_activated_later_starts_in_every_open_frame(transport: Transport) {
    let host = support::host_for(transport, &[]).await;
    support::open_frames(&host, transport, 1).await;
    support::open_frames(&host, transport, 1).await;
    support::start(&host, transport, "probe").await;
    let mut seen = host.broadcasts();
    host.broadcast("probe", PING.name(), &Ping { tag: "hello".into() }).unwrap();
    let pongs = expect_pongs(&host, &mut seen, "probe", 3, 3).await;
    assert_eq!(
        pongs.iter().map(|p| p.side.as_str()).collect::<BTreeSet<_>>(),
        BTreeSet::from(["main", "frame:1", "frame:2"])
    );
    let snapshot = host.inspect().await;
    assert_eq!(snapshot.extension("probe").unwrap().frames, vec![1, 2]);
}

async fn reloading_a_frame_restarts_its_renderers_and_keeps_main_registrations(transport: Transport) {
    let host = support::host_for(transport, &["probe"]).await;
    let frame = support::open_frame(&host, transport).await;
    host.invoke::<_, bool>("probe", REHANDLE.name(), &(), FAILSAFE).await.unwrap();
    let before = host.inspect().await.extension("probe").unwrap().instance.clone().unwrap();

    // Disposing in the renderer changes its registrations; a reload starts it afresh.
    host.broadcast("probe", DISPOSE_RENDERER_PING.name(), &()).unwrap();
    host.reload_frame(frame).await.unwrap();
    let after = host.inspect().await.extension("probe").unwrap().instance.clone().unwrap();
    assert_eq!(after.halves, before.halves, "main untouched, renderer back to its activate state");

    let mut seen = host.broadcasts();
    host.broadcast("probe", PING.name(), &Ping { tag: "after-reload".into() }).unwrap();
    let pongs = expect_pongs(&host, &mut seen, "probe", 2, 2).await;
    let sides: BTreeSet<_> = pongs.iter().map(|p| p.side.as_str()).collect();
    assert_eq!(sides, BTreeSet::from(["main", "frame:1"]), "exactly once each: {pongs:?}");
}

async fn closing_a_frame_removes_its_renderer_halves(transport: Transport) {
    let host = support::host_for(transport, &["probe"]).await;
    support::open_frames(&host, transport, 1).await;
    let second = support::open_frame(&host, transport).await;
    host.close_frame(second).await.unwrap();
    assert_eq!(host.frames(), vec![FrameId(1)]);
    let mut seen = host.broadcasts();
    host.broadcast("probe", PING.name(), &Ping { tag: "after-close".into() }).unwrap();
    let pongs = expect_pongs(&host, &mut seen, "probe", 2, 2).await;
    let sides: BTreeSet<_> = pongs.iter().map(|p| p.side.as_str()).collect();
    assert_eq!(sides, BTreeSet::from(["main", "frame:1"]));
    assert!(host.close_frame(second).await.is_err(), "closing twice is refused");
}

async fn a_handle_leaked_from_a_closed_half_cannot_speak_for_its_successor(transport: Transport) {
    let host = support::host_for(transport, &["probe"]).await;
    let frame = support::open_frame(&host, transport).await;
    let mut seen = host.broadcasts();
    host.broadcast("probe", LEAK_HANDLE.name(), &()).unwrap();
    // The frame reloads under the same number: the leaked handle belongs to the old half.
    host.reload_frame(frame).await.unwrap();
    host.broadcast("probe", USE_LEAKED.name(), &()).unwrap();
    let pongs = expect_pongs(&host, &mut seen, "probe", 1, 2).await;
    assert_eq!((pongs[0].side.as_str(), pongs[0].tag.as_str()), ("frame:1", "leaked:refused"));

    // Across a deactivation the library's statics survive where the library stays loaded (the
    // host's process, a renderer process), the old instance does not. An isolated extension's
    // process lives for one activation: the leaked handle went with it, and nothing answers.
    host.deactivate("probe").await.unwrap();
    host.activate("probe").await.unwrap();
    host.broadcast("probe", USE_LEAKED.name(), &()).unwrap();
    let leaked = if transport == Transport::Isolated { 0 } else { 1 };
    let pongs = expect_pongs(&host, &mut seen, "probe", leaked, 2).await;
    assert!(pongs.iter().all(|pong| pong.tag == "leaked:refused"), "{pongs:?}");
}

async fn a_lifecycle_call_runs_to_completion_even_if_its_caller_gives_up(transport: Transport) {
    let host = support::host_for(transport, &["probe"]).await;
    support::open_frame(&host, transport).await;
    host.invoke::<_, ()>("probe", DEACTIVATE_BEHAVIOUR.name(), "hang", FAILSAFE).await.unwrap();
    // The caller stops waiting long before the (bounded) hanging deactivate ends.
    let gave_up = tokio::time::timeout(std::time::Duration::from_millis(1), host.deactivate("probe")).await;
    assert!(gave_up.is_err());
    // Lifecycle calls are serialised: this waits for that deactivation, then activates cleanly.
    host.activate("probe").await.unwrap();
    let snapshot = host.inspect().await;
    let probe = snapshot.extension("probe").unwrap();
    assert_eq!(probe.frames, vec![1]);
    assert!(probe.last_problem.as_deref().unwrap().contains("did not finish within"), "{probe:?}");
}

conformance!(
    a_frame_opened_later_gets_the_renderer_halves_of_active_extensions,
    an_extension_activated_later_starts_in_every_open_frame,
    reloading_a_frame_restarts_its_renderers_and_keeps_main_registrations,
    closing_a_frame_removes_its_renderer_halves,
    a_handle_leaked_from_a_closed_half_cannot_speak_for_its_successor,
    a_lifecycle_call_runs_to_completion_even_if_its_caller_gives_up,
);
