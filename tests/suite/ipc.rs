//! The Lens-style IPC: namespaces, broadcast and listeners, invoke and handle, order,
//! exactly-once delivery, disposers, values, and cleanup with requests in flight.

use std::collections::{BTreeMap, BTreeSet};

use extension_api::InvokeErrorKind;
use probe_protocol::*;

use crate::support::{self, FAILSAFE, Transport, expect_pongs, host_with_frames, pongs, wait_log, wait_logs};

fn sides(pongs: &[Pong]) -> BTreeSet<String> {
    pongs.iter().map(|pong| pong.side.clone()).collect()
}

fn all_sides(frames: u64) -> BTreeSet<String> {
    std::iter::once("main".to_owned()).chain((1..=frames).map(|f| format!("frame:{f}"))).collect()
}

async fn namespaces_are_isolated_for_every_combination_of_sides(transport: Transport) {
    let host = host_with_frames(transport, &["probe", "probe-twin"], 2).await;
    let mut seen = host.broadcasts();
    // From the host, from main, and from each frame of `probe`: every half of `probe` answers,
    // and `probe-twin` (same code, same channel names) hears nothing.
    host.broadcast("probe", PING.name(), &Ping { tag: "from-host".into() }).unwrap();
    for side in ["main", "frame:1", "frame:2"] {
        host.broadcast("probe", RELAY_PING.name(), &Relay { side: side.into(), tag: format!("from-{side}") }).unwrap();
    }
    let probe = expect_pongs(&host, &mut seen, "probe", 12, 3).await;
    let mut by_tag: BTreeMap<String, Vec<Pong>> = BTreeMap::new();
    for pong in probe {
        by_tag.entry(pong.tag.clone()).or_default().push(pong);
    }
    assert_eq!(by_tag.len(), 4, "{by_tag:?}");
    for (tag, pongs) in &by_tag {
        assert_eq!(pongs.len(), 3, "each half once for {tag}: {pongs:?}");
        assert_eq!(sides(pongs), all_sides(2));
        let sender = tag.trim_start_matches("from-").replace("frame:", "frame ");
        assert!(pongs.iter().all(|pong| pong.sender == sender), "stamped sender for {tag}: {pongs:?}");
    }
    // The twin saw none of it: its only pongs are for its own barrier.
    let mut twin_seen = host.broadcasts();
    let twin = expect_pongs(&host, &mut twin_seen, "probe-twin", 0, 3).await;
    assert!(twin.is_empty(), "{twin:?}");
    while let Ok(observed) = seen.try_recv() {
        assert!(
            observed.extension != "probe-twin"
                || observed.channel != PONG.name()
                || observed.value::<Pong>().unwrap().tag == "barrier",
            "cross-talk: {observed:?}"
        );
    }
    // Exact listener counts, the same in both namespaces (nothing leaked across).
    let snapshot = host.inspect().await;
    for name in ["probe", "probe-twin"] {
        let instance = snapshot.extension(name).unwrap().instance.as_ref().unwrap();
        assert_eq!(instance.halves.len(), 3);
        assert_eq!(instance.halves[0].listeners.get("ping"), Some(&1), "{name} main");
        for frame in &instance.halves[1..] {
            assert_eq!(frame.listeners.get("ping"), Some(&1), "{name} frame");
            assert_eq!(frame.listeners.get("typed"), Some(&2), "{name} frame");
        }
    }
}

async fn hello_and_its_twin_answer_only_for_themselves(transport: Transport) {
    let host = host_with_frames(transport, &["hello", "hello-twin"], 1).await;
    let hello: String = host.invoke("hello", "greet", "a", FAILSAFE).await.unwrap();
    let twin: String = host.invoke("hello-twin", "greet", "a", FAILSAFE).await.unwrap();
    assert_eq!(hello, "Hello, a! (from hello's main)");
    assert_eq!(twin, "Hello, a! (from hello-twin's main)");
}

async fn each_broadcast_reaches_each_listener_exactly_once_with_three_frames(transport: Transport) {
    let host = host_with_frames(transport, &["probe"], 3).await;
    let mut seen = host.broadcasts();
    for round in 0..5 {
        host.broadcast("probe", PING.name(), &Ping { tag: format!("host-{round}") }).unwrap();
        for side in ["main", "frame:2"] {
            host.broadcast("probe", RELAY_PING.name(), &Relay { side: side.into(), tag: format!("{side}-{round}") })
                .unwrap();
        }
    }
    let pongs = expect_pongs(&host, &mut seen, "probe", 60, 4).await;
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for pong in &pongs {
        *counts.entry((pong.side.clone(), pong.tag.clone())).or_default() += 1;
    }
    assert_eq!(counts.len(), 15 * 4, "every (listener, broadcast) pair: {counts:?}");
    assert!(counts.values().all(|&count| count == 1), "{counts:?}");
}

async fn messages_from_one_sender_arrive_in_send_order(transport: Transport) {
    let host = host_with_frames(transport, &["probe"], 2).await;
    // From the host: broadcasts and invokes interleaved, invokes not awaited until the end.
    let mut replies = Vec::new();
    for n in 0..90u32 {
        if n % 3 == 0 {
            host.broadcast("probe", SEQ_EVENT.name(), &n).unwrap();
        } else {
            replies.push(host.invoke::<_, u32>("probe", SEQ_INVOKE.name(), &n, FAILSAFE));
        }
    }
    for reply in replies {
        reply.await.unwrap();
    }
    let expected: Vec<String> =
        (0..90).map(|n| if n % 3 == 0 { format!("event:{n}") } else { format!("invoke:{n}") }).collect();
    let log: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    assert_eq!(log, expected);

    // From a renderer (frame 2), the same pattern.
    let mut seen = host.broadcasts();
    host.broadcast("probe", RENDERER_SEQ.name(), &RendererSeq { frame: 2, count: 90 }).unwrap();
    let done = pongs(&mut seen, "probe", 1).await;
    assert_eq!(done[0].tag, "seq-done failed=0");
    let log: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    assert_eq!(log[90..], expected[..]);
}

async fn every_invoke_error_kind_keeps_its_kind_and_message(transport: Transport) {
    let host = host_with_frames(transport, &["probe"], 1).await;
    let invoke =
        |channel: &str, value: &dyn erased::Value| host.invoke_raw("probe", channel, &value.encode(), FAILSAFE);

    let error = invoke("nobody-handles-this", &()).await.unwrap_err();
    assert_eq!(error.kind, InvokeErrorKind::NoHandler);
    assert!(error.message.contains("no handler for channel `nobody-handles-this` in main"), "{error}");
    assert_eq!(error.channel, "nobody-handles-this");

    let error = invoke(FAIL.name(), &7u32).await.unwrap_err();
    assert_eq!(error.kind, InvokeErrorKind::Handler);
    assert_eq!(error.message, "probe error 7: asked to fail");
    let data: ProbeError = error.data().unwrap().unwrap();
    assert_eq!(data, ProbeError { code: 7, detail: "asked to fail".into() });

    let error = invoke(PANIC.name(), &()).await.unwrap_err();
    assert_eq!(error.kind, InvokeErrorKind::Panicked);
    assert!(error.message.contains("probe panics on request"), "{error}");

    // A request value of the wrong type is refused by the handler's decoding.
    let error = invoke(ECHO.name(), &"not an Awkward").await.unwrap_err();
    assert_eq!(error.kind, InvokeErrorKind::Deserialize);
    assert!(error.message.contains("does not decode as probe_protocol::Awkward"), "{error}");

    // A reply of the wrong type is refused by the caller's decoding.
    let error = host.invoke::<_, String>("probe", SEQ_INVOKE.name(), &5u32, FAILSAFE).await.unwrap_err();
    assert_eq!(error.kind, InvokeErrorKind::Deserialize);
    assert!(error.message.contains("does not decode as alloc::string::String"), "{error}");

    let error = host.invoke::<_, ()>("probe", ECHO.name(), &Unserializable, FAILSAFE).await.unwrap_err();
    assert_eq!(error.kind, InvokeErrorKind::Serialize);
    assert!(error.message.contains("refuses to be serialized"), "{error}");
    let error = host.broadcast("probe", PING.name(), &Unserializable).unwrap_err();
    assert!(error.to_string().contains("channel `ping`") && error.to_string().contains("refuses"), "{error}");

    // Renderer to main, nobody handling: each frame reports NoHandler.
    let mut seen = host.broadcasts();
    host.broadcast("probe", INVOKE_MISSING.name(), &()).unwrap();
    assert_eq!(pongs(&mut seen, "probe", 1).await[0].tag, "no-handler:NoHandler");

    // Still healthy after all of that.
    let value = awkward();
    assert_eq!(host.invoke::<_, Awkward>("probe", ECHO.name(), &value, FAILSAFE).await.unwrap(), value);
}

async fn a_timeout_cancels_the_handler(transport: Transport) {
    let host = support::host_for(transport, &["probe"]).await;
    let mut logs = host.logs();
    let hanging = host.invoke::<_, ()>("probe", HANG.name(), &(), std::time::Duration::from_millis(50));
    wait_log(&mut logs, "probe", |m| m == "hang handler started").await;
    let error = hanging.await.unwrap_err();
    assert_eq!(error.kind, InvokeErrorKind::Timeout);
    wait_log(&mut logs, "probe", |m| m == "hang handler dropped").await;
    let snapshot = host.inspect().await;
    let probe = snapshot.extension("probe").unwrap();
    assert_eq!(probe.pending_requests, 0);
    assert_eq!(probe.instance.as_ref().unwrap().halves[0].running_handlers, 0);
}

async fn dropping_an_invoke_cancels_it(transport: Transport) {
    let host = support::host_for(transport, &["probe"]).await;
    let mut logs = host.logs();
    let hanging = host.invoke::<_, ()>("probe", HANG.name(), &(), FAILSAFE);
    wait_log(&mut logs, "probe", |m| m == "hang handler started").await;
    assert_eq!(host.inspect().await.extension("probe").unwrap().pending_requests, 1);
    drop(hanging);
    wait_log(&mut logs, "probe", |m| m == "hang handler dropped").await;
    assert_eq!(host.inspect().await.extension("probe").unwrap().pending_requests, 0);
}

async fn deactivating_with_requests_in_flight_fails_them_all(transport: Transport) {
    let host = host_with_frames(transport, &["probe"], 2).await;
    let mut logs = host.logs();
    let from_host = host.invoke::<_, ()>("probe", HANG.name(), &(), FAILSAFE);
    host.broadcast("probe", START_HANG.name(), &()).unwrap();
    for _ in 0..3 {
        wait_log(&mut logs, "probe", |m| m == "hang handler started").await;
    }
    assert_eq!(host.inspect().await.extension("probe").unwrap().pending_requests, 3);
    host.deactivate("probe").await.unwrap();
    assert_eq!(from_host.await.unwrap_err().kind, InvokeErrorKind::Deactivated);
    let ended = ["frame:1 hang ended: Deactivated".to_owned(), "frame:2 hang ended: Deactivated".to_owned()];
    wait_logs(&mut logs, "probe", &ended).await;
}

async fn a_renderers_timeout_stops_mains_handler(transport: Transport) {
    let host = host_with_frames(transport, &["probe"], 1).await;
    let mut logs = host.logs();
    host.broadcast("probe", HANG_BRIEFLY.name(), &50u64).unwrap();
    wait_log(&mut logs, "probe", |m| m == "hang handler started").await;
    let ended = ["frame:1 brief hang ended: Timeout".to_owned(), "hang handler dropped".to_owned()];
    wait_logs(&mut logs, "probe", &ended).await;
    let probe = host.inspect().await.extension("probe").unwrap().clone();
    assert_eq!(probe.pending_requests, 0);
    assert!(probe.instance.unwrap().halves.iter().all(|half| half.running_handlers == 0 && half.pending_requests == 0));
}

/// Only in the host's process: there a request between two halves of one instance stays in its
/// mailbox, so a drop before dispatch takes it out. Isolated (as from a renderer process) the
/// request leaves the instance when sent and comes back through the host, so it starts and is
/// then cancelled (`a_timeout_cancels_the_handler`, `dropping_an_invoke_cancels_it`).
#[tokio::test]
async fn a_request_within_an_instance_dropped_before_it_is_dispatched_never_starts() {
    let host = host_with_frames(Transport::InProcess, &["probe"], 1).await;
    let mut logs = host.logs();
    let mut seen = host.broadcasts();
    host.broadcast("probe", DROP_INVOKE.name(), &()).unwrap();
    assert_eq!(pongs(&mut seen, "probe", 1).await[0].tag, "dropped-invoke");
    // Queued behind the dropped request and its cancel: by its answer, both were dispatched.
    host.invoke::<_, Vec<String>>("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    while let Ok(record) = logs.try_recv() {
        assert_ne!(record.message, "hang handler started", "the dropped request was started");
    }
    let probe = host.inspect().await.extension("probe").unwrap().clone();
    assert_eq!(probe.pending_requests, 0);
    assert!(probe.instance.unwrap().halves.iter().all(|half| half.running_handlers == 0 && half.pending_requests == 0));
}

#[tokio::test]
async fn an_isolated_extensions_in_process_frames_keep_send_order() {
    // Main and these frames share one instance in the extension's process, where routing is a
    // round trip through the host: requests between them must not overtake broadcasts.
    let host = host_with_frames(Transport::Isolated, &["probe"], 2).await;
    let mut seen = host.broadcasts();
    host.broadcast("probe", RENDERER_SEQ.name(), &RendererSeq { frame: 2, count: 90 }).unwrap();
    assert_eq!(pongs(&mut seen, "probe", 1).await[0].tag, "seq-done failed=0");
    let expected: Vec<String> =
        (0..90).map(|n| if n % 3 == 0 { format!("event:{n}") } else { format!("invoke:{n}") }).collect();
    let log: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    assert_eq!(log, expected);
    host.shutdown().await;
}

async fn a_request_to_a_frame_whose_activation_fails_fails_with_it(transport: Transport) {
    let host = support::host_for(transport, &["probe"]).await;
    let mut logs = host.logs();
    host.invoke::<_, ()>("probe", SET_PRESET.name(), "fail-after-ready", FAILSAFE).await.unwrap();
    // The frame's activation fails once main's request is being handled there.
    support::open_frame(&host, transport).await;
    let ended = wait_log(&mut logs, "probe", |m| m.starts_with("main's request to the failing frame ended")).await;
    assert!(ended.message.ends_with("FrameClosed"), "{}", ended.message);
    let probe = host.inspect().await.extension("probe").unwrap().clone();
    assert!(probe.frames.is_empty());
    assert_eq!(probe.pending_requests, 0);
}

async fn closing_a_frame_fails_its_requests_and_cancels_their_handlers(transport: Transport) {
    let host = host_with_frames(transport, &["probe"], 2).await;
    let mut logs = host.logs();
    host.broadcast("probe", START_HANG.name(), &()).unwrap();
    for _ in 0..2 {
        wait_log(&mut logs, "probe", |m| m == "hang handler started").await;
    }
    host.close_frame(extension_host::FrameId(1)).await.unwrap();
    let ended = ["frame:1 hang ended: FrameClosed".to_owned(), "hang handler dropped".to_owned()];
    wait_logs(&mut logs, "probe", &ended).await;
    let snapshot = host.inspect().await;
    let probe = snapshot.extension("probe").unwrap();
    assert_eq!(probe.pending_requests, 1, "frame 2's request is still waiting");
    assert_eq!(probe.frames, vec![2]);
    assert_eq!(probe.instance.as_ref().unwrap().halves.len(), 2, "main and frame 2");
}

async fn a_listener_of_the_wrong_type_is_skipped_and_reported_while_others_run(transport: Transport) {
    let host = host_with_frames(transport, &["probe"], 2).await;
    let mut logs = host.logs();
    let mut seen = host.broadcasts();
    host.broadcast("probe", TYPED, "a string").unwrap();
    let typed = expect_pongs(&host, &mut seen, "probe", 2, 3).await;
    assert!(typed.iter().all(|pong| pong.tag == "typed-string"), "{typed:?}");
    let warning = wait_log(&mut logs, "probe", |m| m.contains("listener not called")).await;
    assert_eq!(warning.level, "WARN");
    assert!(warning.message.contains("channel=typed") || warning.message.contains("typed"), "{warning:?}");
    assert!(warning.message.contains("does not decode as u32"), "{warning:?}");
    // Nothing else pongs on `typed`: the u32 listeners were not called.
    expect_pongs(&host, &mut seen, "probe", 0, 3).await;
    let snapshot = host.inspect().await;
    assert_eq!(snapshot.extension("probe").unwrap().instance.as_ref().unwrap().decode_failures, 2);
}

async fn disposers_remove_exactly_their_registration_and_are_idempotent(transport: Transport) {
    let host = host_with_frames(transport, &["probe"], 2).await;
    let mut seen = host.broadcasts();
    host.broadcast("probe", DISPOSE_RENDERER_PING.name(), &()).unwrap();
    host.broadcast("probe", PING.name(), &Ping { tag: "after-renderer-dispose".into() }).unwrap();
    let pongs = expect_pongs(&host, &mut seen, "probe", 1, 1).await;
    assert_eq!(sides(&pongs), BTreeSet::from(["main".to_owned()]), "{pongs:?}");
    // Inspect reads the tables directly, not after queued messages: let each frame answer
    // something sent after the disposal first.
    host.broadcast("probe", TYPED, "sync").unwrap();
    let synced = expect_pongs(&host, &mut seen, "probe", 2, 1).await;
    assert!(synced.iter().all(|pong| pong.tag == "typed-string"), "{synced:?}");

    host.invoke::<_, ()>("probe", DISPOSE_MAIN_PING.name(), &(), FAILSAFE).await.unwrap();
    let snapshot = host.inspect().await;
    let instance = snapshot.extension("probe").unwrap().instance.as_ref().unwrap();
    assert!(instance.halves.iter().all(|half| !half.listeners.contains_key("ping")), "{instance:?}");
    assert!(instance.halves.iter().all(|half| half.listeners.get("relay-ping") == Some(&1)), "others stay");

    // Handlers: a second `handle` is refused; dispose frees the channel.
    let refused: String = host.invoke("probe", HANDLE_TWICE.name(), &(), FAILSAFE).await.unwrap();
    assert_eq!(refused, "channel `echo` already has a handler; dispose it before registering another");
    assert!(host.invoke::<_, bool>("probe", REHANDLE.name(), &(), FAILSAFE).await.unwrap());
    let value = awkward();
    let echoed: Awkward = host.invoke("probe", ECHO.name(), &value, FAILSAFE).await.unwrap();
    assert_eq!(echoed, value);
}

fn awkward() -> Awkward {
    Awkward {
        max_u64: u64::MAX,
        min_i64: i64::MIN,
        binary: vec![0, 1, 2, 254, 255],
        int_keys: BTreeMap::from([(-1, "minus one".into()), (0, String::new()), (i32::MAX, "max".into())]),
        nested: vec![
            Shape::Unit,
            Shape::Circle { radius: 1.5 },
            Shape::Pair(-8, Box::new(Shape::Pair(7, Box::new(Shape::Unit)))),
        ],
        text: "héllo, 世界 🦀 \u{0}".into(),
        empty_list: vec![],
        empty_map: BTreeMap::new(),
        none: None,
        some_zero: Some(0),
        falsy: (false, 0, String::new()),
        float: -0.0,
    }
}

async fn awkward_values_round_trip_intact(transport: Transport) {
    let host = support::host_for(transport, &["probe"]).await;
    let value = awkward();
    let echoed: Awkward = host.invoke("probe", ECHO.name(), &value, FAILSAFE).await.unwrap();
    assert_eq!(echoed, value);
    assert!(echoed.float.is_sign_negative());

    // `None` and an absent field both arrive as `None`; a present value survives.
    #[derive(serde::Serialize)]
    struct OlderVersion {
        id: u32,
    }
    let absent: WithOptional =
        host.invoke("probe", ECHO_OPTIONAL.name(), &OlderVersion { id: 1 }, FAILSAFE).await.unwrap();
    assert_eq!(absent, WithOptional { id: 1, note: None });
    let none = WithOptional { id: 2, note: None };
    assert_eq!(host.invoke::<_, WithOptional>("probe", ECHO_OPTIONAL.name(), &none, FAILSAFE).await.unwrap(), none);
    let some = WithOptional { id: 3, note: Some(String::new()) };
    assert_eq!(host.invoke::<_, WithOptional>("probe", ECHO_OPTIONAL.name(), &some, FAILSAFE).await.unwrap(), some);
}

/// A value whose serialization fails.
struct Unserializable;

impl serde::Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value refuses to be serialized"))
    }
}

/// Lets one closure invoke with values of different types.
mod erased {
    pub trait Value {
        fn encode(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize + ?Sized> Value for T {
        fn encode(&self) -> Vec<u8> {
            rmp_serde::to_vec_named(self).unwrap()
        }
    }
}

conformance!(
    namespaces_are_isolated_for_every_combination_of_sides,
    each_broadcast_reaches_each_listener_exactly_once_with_three_frames,
    messages_from_one_sender_arrive_in_send_order,
    every_invoke_error_kind_keeps_its_kind_and_message,
    deactivating_with_requests_in_flight_fails_them_all,
    closing_a_frame_fails_its_requests_and_cancels_their_handlers,
    a_renderers_timeout_stops_mains_handler,
    a_request_to_a_frame_whose_activation_fails_fails_with_it,
    a_listener_of_the_wrong_type_is_skipped_and_reported_while_others_run,
    disposers_remove_exactly_their_registration_and_are_idempotent,
    hello_and_its_twin_answer_only_for_themselves,
    a_timeout_cancels_the_handler,
    dropping_an_invoke_cancels_it,
    awkward_values_round_trip_intact,
);
