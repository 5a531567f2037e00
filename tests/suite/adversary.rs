//! A malicious extension (`sample-extensions/fixtures/adversary`) attacks the host through the
//! raw C boundary (the host's vtable, captured by a hand-written descriptor) and through the
//! API, with the probe loaded alongside as its victim. Every attempt must fail cleanly with its
//! reason, reach no other extension, and leave the host up. The one attack no host can refuse in
//! its own process, a dangling pointer, runs only in an isolated extension's process.

use std::collections::BTreeMap;
use std::time::Duration;

use extension_api::InvokeErrorKind;
use extension_host::{CrashBudget, ExtensionState, Host, HostEvent, LogRecord, ObservedBroadcast};
use probe_protocol::*;
use tokio::io::AsyncBufReadExt;
use tokio::sync::broadcast::Receiver;

use crate::support::{self, FAILSAFE, expect_pongs, library, wait_event, wait_log};

/// What an attack answers: outcome by attempt.
type Report = BTreeMap<String, String>;

async fn attack(host: &Host, name: &str) -> Report {
    host.invoke("adversary", "attack", name, FAILSAFE).await.unwrap_or_else(|error| panic!("attack {name}: {error}"))
}

fn report(expected: &[(&str, &str)]) -> Report {
    expected.iter().map(|(name, outcome)| ((*name).to_owned(), (*outcome).to_owned())).collect()
}

/// The probe and the adversary in one host, with one in-process frame, and the probe busy with
/// a request from the host (its `hang` handler) that the adversary must not be able to touch.
struct Arena {
    host: Host,
    logs: Receiver<LogRecord>,
    seen: Receiver<ObservedBroadcast>,
    probe_before: extension_api::wire::InstanceSnapshot,
    hang: tokio::task::JoinHandle<Result<(), extension_api::InvokeError>>,
}

async fn arena() -> Arena {
    let host = support::host_with(&["probe", "adversary"]).await;
    host.open_frame().await;
    let mut logs = host.logs();
    let hang = tokio::spawn(host.invoke::<_, ()>("probe", HANG.name(), &(), Duration::from_secs(3600)));
    wait_log(&mut logs, "probe", |m| m == "hang handler started").await;
    // Queued behind the `hang` request in the probe's mailbox: once answered, the handler's
    // task is registered.
    let _: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    let probe_before = probe_instance(&host).await;
    Arena { logs: host.logs(), seen: host.broadcasts(), host, probe_before, hang }
}

async fn probe_instance(host: &Host) -> extension_api::wire::InstanceSnapshot {
    host.inspect().await.extension("probe").unwrap().instance.clone().unwrap()
}

/// What another extension's traffic could change in an instance: its halves' registrations,
/// requests and store, and its counters. (Not its task count, which includes tasks of its own
/// that are just finishing.)
fn observable(snapshot: &extension_api::wire::InstanceSnapshot) -> impl PartialEq + std::fmt::Debug + use<> {
    (snapshot.halves.clone(), snapshot.decode_failures, snapshot.listener_panics)
}

impl Arena {
    /// Everything the adversary's traffic could have done to the probe, checked: no broadcast
    /// in the probe's name, no record in its name, its registrations and counters as before, its
    /// request still pending, nothing pending for the adversary, and the probe's halves answering
    /// a ping exactly once each (nothing the adversary sent made them answer before).
    async fn assert_probe_untouched(&mut self) -> (Vec<ObservedBroadcast>, Vec<LogRecord>) {
        // A request of the adversary's own, queued behind whatever its attack left in its
        // mailbox: once it is answered, all of that was handled.
        assert!(attack(&self.host, "noop").await.is_empty());
        let mut seen = Vec::new();
        while let Ok(broadcast) = self.seen.try_recv() {
            seen.push(broadcast);
        }
        let mut logs = Vec::new();
        while let Ok(record) = self.logs.try_recv() {
            logs.push(record);
        }
        for broadcast in &seen {
            assert_eq!(broadcast.extension, "adversary", "{:?} on {:?}", broadcast.extension, broadcast.channel);
        }
        for record in &logs {
            assert_eq!(record.extension, "adversary", "{record:?}");
        }
        let snapshot = self.host.inspect().await;
        let probe = snapshot.extension("probe").unwrap();
        assert_eq!(probe.state, ExtensionState::Active);
        assert_eq!(probe.pending_requests, 1, "only the host's `hang` request is pending");
        let instance = probe.instance.clone().unwrap();
        assert_eq!(instance.halves[0].running_handlers, 1, "the `hang` handler still runs");
        assert_eq!(
            observable(&instance),
            observable(&self.probe_before),
            "the probe's registrations and counters are as they were"
        );
        assert_eq!(snapshot.extension("adversary").unwrap().pending_requests, 0, "nothing left pending");
        assert!(!self.hang.is_finished(), "no forged reply or cancel ended the probe's request");
        let mut pongs = self.host.broadcasts();
        expect_pongs(&self.host, &mut pongs, "probe", 0, 2).await;
        (seen, logs)
    }

    async fn adversary_instance(&self) -> extension_api::wire::InstanceSnapshot {
        self.host.inspect().await.extension("adversary").unwrap().instance.clone().unwrap()
    }
}

#[tokio::test]
async fn raw_sends_with_forged_keys_pointers_lengths_kinds_and_origins_are_refused() {
    let mut arena = arena().await;
    let outcome = attack(&arena.host, "raw-send").await;
    let expected = report(&[
        // Another instance's key: keys are not guessable, so every forged one names nothing.
        ("forged-key", "UNKNOWN_INSTANCE"),
        // Pointers and lengths refused before anything is read.
        ("null-message", "INVALID"),
        ("null-channel", "INVALID"),
        ("null-payload", "INVALID"),
        ("channel-len-over-isize-max", "INVALID"),
        ("payload-len-usize-max", "INVALID"),
        ("channel-len-2^40", "INVALID"),
        ("payload-len-2^40", "INVALID"),
        ("reply-payload-len-2^40", "INVALID"),
        ("non-utf8-channel", "INVALID"),
        // Payloads are opaque to the host: garbage is routed, inside the adversary's namespace.
        ("garbage-broadcast", "OK"),
        ("garbage-invoke", "OK"),
        ("garbage-store-write", "OK"),
        ("unknown-kind", "INVALID"),
        // The message limit holds for raw senders too.
        ("oversized-broadcast", "TOO_LARGE"),
        ("oversized-invoke", "TOO_LARGE"),
        ("oversized-reply-never-requested", "OK"),
        ("oversized-storage-commit", "TOO_LARGE"),
        // Only main refuses a store write, and only to a frame.
        ("store-refusal-from-frame", "INVALID"),
        ("store-refusal-to-main", "INVALID"),
        ("store-refusal-to-all", "INVALID"),
        ("store-refusal-to-host", "INVALID"),
        ("store-refusal-to-unopened-frame", "NO_SUCH_PEER"),
        ("origin-host", "NO_SUCH_PEER"),
        ("origin-all", "NO_SUCH_PEER"),
        ("origin-unopened-frame", "NO_SUCH_PEER"),
        // Main and the in-process frame are one instance behind one key: one may speak for the
        // other. Their namespace is the unit of isolation.
        ("origin-other-half-same-instance", "OK"),
        // Replies and cancels that match no request of the sending half are dropped (late
        // replies are normal), without disturbing the real request.
        ("reply-never-requested", "OK"),
        ("reply-for-anothers-request", "OK"),
        ("cancel-anothers-request", "OK"),
        ("cancel-as-host", "NO_SUCH_PEER"),
        ("store-update-from-frame", "INVALID"),
        ("invoke-main-to-all", "NO_SUCH_PEER"),
        ("invoke-frame-to-all", "INVALID"),
        ("invoke-main-to-host", "NO_SUCH_PEER"),
        ("invoke-main-to-main", "INVALID"),
        ("invoke-frame-to-frame", "INVALID"),
    ]);
    assert_eq!(outcome, expected);
    // The `attack` request itself got its real answer although the frame forged replies to it.
    let (seen, logs) = arena.assert_probe_untouched().await;
    // What was routed stayed in the adversary's namespace: its own listener failed to decode
    // the garbage, its main dropped the garbage store write.
    assert!(arena.adversary_instance().await.decode_failures >= 1);
    assert!(logs.iter().any(|r| r.message.contains("dropping an undecodable store write")), "{logs:?}");
    assert!(seen.iter().all(|b| b.channel != "ping"), "no forged ping was routed anywhere");
}

#[tokio::test]
async fn forged_completions_and_log_records_reach_no_one() {
    let mut arena = arena().await;
    let outcome = attack(&arena.host, "complete-and-log").await;
    assert_eq!(outcome, report(&[("complete", "returned"), ("log", "returned")]));
    let (_, logs) = arena.assert_probe_untouched().await;
    let messages: Vec<(&str, &str, &str)> =
        logs.iter().map(|r| (r.level.as_str(), r.target.as_str(), r.message.as_str())).collect();
    // Records under forged keys, or with invalid buffers, are dropped; the rest are filed under
    // the adversary, whatever target they claim.
    for dropped in ["forged log line", "null target", "huge target"] {
        assert!(!messages.iter().any(|(_, _, m)| *m == dropped), "{dropped}: {messages:?}");
    }
    for kept in [
        ("INFO", "probe", "impersonation attempt"),
        ("INFO", "adversary", "not utf-8: \u{fffd}\u{fffd}"),
        ("TRACE", "adversary", "level 0"),
        ("TRACE", "adversary", "level 999"),
    ] {
        assert!(messages.contains(&kept), "{kept:?}: {messages:?}");
    }
    // Control commands of both extensions still complete with their real answers.
    host_cycles(&arena.host, "probe").await;
    arena.hang.abort();
    host_cycles(&arena.host, "adversary").await;
}

/// Deactivates and re-activates an extension, checking both complete cleanly.
async fn host_cycles(host: &Host, name: &str) {
    let report = host.deactivate(name).await.unwrap();
    assert!(report.problems.is_empty(), "{name}: {report:?}");
    host.activate(name).await.unwrap();
    assert_eq!(host.state(name), Some(ExtensionState::Active));
}

#[tokio::test]
async fn crafted_channel_names_stay_in_their_own_namespace() {
    let mut arena = arena().await;
    let outcome = attack(&arena.host, "channel-names").await;
    let mut expected = report(&[
        ("handle:exposed", "Ok"),
        ("handle:one-mib", "Ok"),
        // The adversary's own frame reaches the adversary's own spoof, nothing else.
        ("invoke:exposed", "666"),
        ("invoke:probe-echo", "NoHandler"),
        ("invoke:one-mib", "one mebibyte"),
        ("store:preset", "Ok"),
        ("raw-store-update", "OK"),
    ]);
    let labels = [
        "probe-ping",
        "colon",
        "slash",
        "dot",
        "nul-inside",
        "nul-after",
        "nul",
        "empty",
        "space",
        "newline",
        "exposed",
    ];
    for label in labels.into_iter().chain(["one-mib"]) {
        expected.insert(format!("listen:{label}"), "Ok".into());
        expected.insert(format!("broadcast:{label}"), "Ok".into());
    }
    assert_eq!(outcome, expected);
    let (seen, _) = arena.assert_probe_untouched().await;
    let crafted: Vec<&ObservedBroadcast> = seen.iter().filter(|b| b.value::<Ping>().is_ok()).collect();
    assert_eq!(crafted.len(), 12, "each crafted broadcast observed once, as the adversary's");
    assert!(crafted.iter().any(|b| b.channel == "probe\0ping"));
    assert!(crafted.iter().any(|b| b.channel.len() == 1 << 20));

    // The probe's exposed function and store are its own.
    let mut pongs = arena.host.broadcasts();
    arena.host.broadcast("probe", CALC_TEST.name(), &()).unwrap();
    let calc = support::pongs(&mut pongs, "probe", 1).await.remove(0);
    assert!(calc.tag.starts_with("calc:add=42;"), "{calc:?}");
    let dumps: Vec<ReplicaDump> = arena.host.invoke("probe", STORE_DUMP.name(), &(), FAILSAFE).await.unwrap();
    assert_eq!(dumps.len(), 2);
    for dump in dumps {
        assert!(dump.values.is_empty() && dump.seq == 0, "the probe's store saw no write: {dump:?}");
    }
}

#[tokio::test]
async fn reentrant_calls_from_inside_callbacks_neither_deadlock_nor_leak() {
    let mut arena = arena().await;
    let outcome = attack(&arena.host, "reentrancy").await;
    let expected = report(&[
        ("listen", "Ok"),
        ("handle", "Ok"),
        ("broadcast", "Ok"),
        ("raw-broadcast", "OK"),
        ("raw-invoke", "OK"),
        ("spawn", "Ok"),
        ("invoke-frame", "x"),
        ("store-set", "Ok"),
        ("frame-store-set", "Ok"),
        ("frame-invoke", "y"),
    ]);
    assert_eq!(outcome, expected);
    let (_, logs) = arena.assert_probe_untouched().await;
    let inside = logs.iter().filter(|r| r.message == "logged from inside a listener").count();
    assert_eq!(inside, 9, "one per level of the re-entrant chain");
    // What the callbacks registered, they disposed (the chain's listener disposed itself).
    let adversary = arena.adversary_instance().await;
    for half in &adversary.halves {
        let registered: Vec<&String> = half.listeners.keys().chain(half.handlers.iter()).collect();
        assert!(!registered.iter().any(|name| name.starts_with("reenter")), "{registered:?}");
        assert_eq!((half.pending_requests, half.running_handlers), (0, 0), "{half:?}");
    }
}

#[tokio::test]
async fn handles_and_a_thread_kept_past_deactivation_act_on_nothing() {
    let host = support::host_with(&["probe", "adversary"]).await;
    host.open_frame().await;
    assert_eq!(attack(&host, "leak-arm").await, report(&[("armed", "Ok"), ("renderer", "kept")]));
    let report_before = host.deactivate("adversary").await.unwrap();
    assert!(report_before.problems.is_empty(), "{report_before:?}");
    host.activate("adversary").await.unwrap();
    let mut seen = host.broadcasts();
    let mut logs = host.logs();

    let outcome = attack(&host, "leak-report").await;
    let refused = |operation: &str| format!("Err: the extension is not active (deactivated): `{operation}` refused");
    let gone = "Err: the store is gone: the extension is not active".to_owned();

    let expected: Report = [
        ("main.broadcast", refused("broadcast")),
        ("main.listen", refused("listen")),
        ("main.handle", refused("handle")),
        ("main.spawn", refused("spawn")),
        ("main.frames", "[]".to_owned()),
        (
            "main.invoke_frame",
            "Err: invoke on channel `adv-frame-echo` failed (extension deactivated): the extension is not active"
                .to_owned(),
        ),
        ("store.set", gone),
        ("store.get", "Err(\"the store is gone: the extension is not active\")".to_owned()),
        ("renderer.broadcast", refused("broadcast")),
        (
            "renderer.invoke",
            "Err: invoke on channel `adv-echo` failed (extension deactivated): the extension is not active".to_owned(),
        ),
        ("disposer.dispose", "returned".to_owned()),
        // The old key names nothing any more.
        ("raw.send", "UNKNOWN_INSTANCE".to_owned()),
        // The honest limit: `Main::get` is process-wide, and in process nothing tells this
        // library's leaked thread from a thread of the current activation (see ARCHITECTURE.md).
        ("Main::get", "Ok".to_owned()),
        // The new activation's listener on the channel the leaked handles used saw nothing.
        ("new-listener-calls-before-barrier", "0".to_owned()),
    ]
    .into_iter()
    .map(|(name, outcome)| (name.to_owned(), outcome))
    .collect();
    assert_eq!(outcome, expected);
    // The host observed only the new main's barrier on that channel; nothing was logged under
    // the old key.
    let mut leaked = Vec::new();
    while let Ok(broadcast) = seen.try_recv() {
        if broadcast.channel == "leaked" {
            leaked.push((broadcast.sender(), broadcast.value::<String>().unwrap()));
        }
    }
    assert_eq!(leaked, vec![(extension_api::Sender::Main, "barrier".to_owned())]);
    while let Ok(record) = logs.try_recv() {
        assert_ne!(record.message, "leaked log line");
    }
    let log: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
    assert!(log.is_empty());
    expect_pongs(&host, &mut host.broadcasts(), "probe", 0, 2).await;
}

/// Waits for the report a renderer half of the adversary broadcasts after an attack, and
/// returns it with every broadcast observed before it.
async fn frame_report(seen: &mut Receiver<ObservedBroadcast>) -> (Report, Vec<ObservedBroadcast>) {
    let mut before = Vec::new();
    let found = tokio::time::timeout(FAILSAFE, async {
        loop {
            let broadcast = seen.recv().await.expect("the broadcast stream is open");
            if broadcast.extension == "adversary" && broadcast.channel == "frame-report" {
                return broadcast.value::<Report>().unwrap();
            }
            before.push(broadcast);
        }
    });
    let report = found.await.expect("the renderer half reports");
    (report, before)
}

#[tokio::test]
async fn in_a_renderer_process_forged_origins_reach_no_one_and_a_forged_key_ends_only_that_process() {
    let host = support::host_with(&["probe", "adversary"]).await;
    host.open_frame().await;
    let frame = support::open_frame(&host, support::Transport::ChildProcess).await;
    let mut seen = host.broadcasts();
    let mut events = host.events();
    let probe_before = probe_instance(&host).await;

    host.broadcast("adversary", "attack-frame", &(frame.0, "forgeries")).unwrap();
    let (outcome, before) = frame_report(&mut seen).await;
    // The child relays what is well-formed (it cannot know the host's verdict) and refuses the
    // rest itself; the host drops every message claiming a half that does not run there.
    let expected = report(&[
        ("broadcast-as-main", "OK"),
        ("broadcast-as-host", "OK"),
        ("broadcast-as-in-process-frame", "OK"),
        ("broadcast-as-all", "OK"),
        ("invoke-as-main", "OK"),
        ("store-write-as-in-process-frame", "OK"),
        ("store-update-as-main", "OK"),
        ("reply-as-main", "OK"),
        ("null-message", "INVALID"),
        ("payload-len-2^40", "INVALID"),
        ("non-utf8-channel", "INVALID"),
    ]);
    assert_eq!(outcome, expected);
    assert!(before.iter().all(|b| b.channel != "adv-forged"), "no forged broadcast was routed");
    assert_eq!(attack(&host, "forged-count").await, report(&[("adv-forged", "0")]));
    assert!(events.try_recv().is_err(), "bad origins are dropped, not a reason to cut the connection");
    assert_eq!(observable(&probe_instance(&host).await), observable(&probe_before));
    expect_pongs(&host, &mut seen, "probe", 0, 3).await;

    // Another instance's key is a protocol violation: the renderer process is cut off and
    // restarted. Whatever else ran in it (the probe's frame-2 half) shares its fate, as with a
    // crash; nothing outside it notices.
    host.broadcast("adversary", "attack-frame", &(frame.0, "forged-key")).unwrap();
    let crashed = wait_event(&mut events, |e| matches!(e, HostEvent::FrameCrashed { .. })).await;
    let HostEvent::FrameCrashed { frame: crashed_frame, reason, restarting } = crashed else { unreachable!() };
    assert_eq!(crashed_frame, frame.0);
    assert!(restarting && reason.contains("does not belong to this connection"), "{reason}");
    wait_event(&mut events, |e| *e == HostEvent::FrameRestarted { frame: frame.0 }).await;
    let mut seen = host.broadcasts();
    host.broadcast("probe", PING.name(), &Ping { tag: "after".into() }).unwrap();
    let pongs = expect_pongs(&host, &mut seen, "probe", 3, 3).await;
    let mut sides: Vec<String> = pongs.into_iter().map(|p| p.side).collect();
    sides.sort();
    assert_eq!(sides, ["frame:1", "frame:2", "main"]);
    assert_eq!(attack(&host, "forged-count").await, report(&[("adv-forged", "0")]));
    host.shutdown().await;
}

#[tokio::test]
async fn a_dangling_pointer_kills_only_the_isolated_extensions_process() {
    // In process it is refused by the fixture itself: nothing could contain it there.
    let host = support::host_with(&["adversary"]).await;
    assert_eq!(attack(&host, "dangling-message").await, report(&[("refused", "only in a child process")]));
    host.shutdown().await;

    let mut config = support::config();
    config.crash_budget = CrashBudget { crashes: 2, window: Duration::from_secs(300) };
    let host = Host::new(config);
    for name in ["probe", "adversary"] {
        host.load(library(name)).unwrap();
    }
    host.set_isolated("adversary", true).unwrap();
    for name in ["probe", "adversary"] {
        host.activate(name).await.unwrap();
    }
    host.open_frame().await;
    let mut events = host.events();
    let mut seen = host.broadcasts();
    let mut pids = vec![host.inspect().await.extension("adversary").unwrap().pid.expect("isolated")];
    assert_ne!(pids[0], std::process::id());

    for (round, (name, how)) in [
        ("dangling-message", "SIGSEGV"),
        ("dangling-channel", "SIGSEGV"),
        // In its own process, a forged key is a protocol violation: the connection is cut.
        ("forged-key", "does not belong to this connection"),
    ]
    .into_iter()
    .enumerate()
    {
        let error = host.invoke::<_, Report>("adversary", "attack", name, FAILSAFE).await.unwrap_err();
        assert_eq!(error.kind, InvokeErrorKind::ConnectionLost, "{name}: {error}");
        let crashed = wait_event(&mut events, |e| matches!(e, HostEvent::ExtensionCrashed { .. })).await;
        let HostEvent::ExtensionCrashed { reason, restarting, .. } = crashed else { unreachable!() };
        assert!(reason.contains(how), "{name}: {reason}");
        // The host and the probe never noticed.
        let log: Vec<String> = host.invoke("probe", SEQ_LOG.name(), &(), FAILSAFE).await.unwrap();
        assert!(log.is_empty());
        if round < 2 {
            assert!(restarting, "crash {} is within the budget", round + 1);
            wait_event(&mut events, |e| matches!(e, HostEvent::ExtensionRestarted { .. })).await;
            let pid = host.inspect().await.extension("adversary").unwrap().pid.unwrap();
            assert!(!pids.contains(&pid), "a new process");
            pids.push(pid);
        } else {
            assert!(!restarting, "the third crash exceeds the budget of two");
        }
    }
    let state = host.state("adversary").unwrap();
    assert!(matches!(&state, ExtensionState::Failed(reason) if reason.contains("crashed 3 times")), "{state:?}");
    // Nothing the adversary sent reached the probe.
    assert!(expect_pongs(&host, &mut seen, "probe", 0, 2).await.is_empty());
    let snapshot = host.inspect().await;
    let probe = snapshot.extension("probe").unwrap();
    assert_eq!((probe.pending_requests, probe.instance.as_ref().unwrap().decode_failures), (0, 0));
    host.shutdown().await;
}

type Lines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Reads console lines into `transcript` up to the first one starting with `marker`.
async fn until(lines: &mut Lines, marker: &str, transcript: &mut Vec<String>) {
    let read = tokio::time::timeout(FAILSAFE, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the host answers");
            let done = line.starts_with(marker);
            transcript.push(line);
            if done {
                return;
            }
        }
    });
    if read.await.is_err() {
        panic!("no line starting with {marker:?}: {transcript:#?}");
    }
}

#[tokio::test]
async fn channel_names_and_error_texts_cannot_forge_console_lines() {
    use tokio::io::AsyncWriteExt;
    let mut child = support::spawn_console(&["--frames", "1"], &["adversary", "probe"]);
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut transcript = Vec::new();
    until(&mut lines, "console ready", &mut transcript).await;
    stdin.write_all(b"watch on\n").await.unwrap();
    until(&mut lines, "ok", &mut transcript).await;
    stdin.write_all(b"invoke adversary attack \"console\"\n").await.unwrap();
    until(&mut lines, "reply:", &mut transcript).await;
    stdin.write_all(b"invoke adversary attack \"console-error\"\n").await.unwrap();
    until(&mut lines, "error:", &mut transcript).await;
    stdin.write_all(b"broadcast adversary barrier null\n").await.unwrap();
    until(&mut lines, "event adversary barrier from host", &mut transcript).await;
    for line in &transcript {
        assert!(!line.starts_with("event probe") && !line.starts_with('{'), "a forged line: {transcript:#?}");
    }
    assert!(
        transcript.iter().any(|l| l.starts_with("event adversary x from main: null\\nevent probe pong")),
        "{transcript:#?}"
    );
    assert!(transcript.iter().any(|l| l.starts_with("error: Handler: refused\\n{\"extensions\"")), "{transcript:#?}");
}

#[tokio::test]
async fn a_renderer_process_cannot_fail_the_hosts_requests_with_forged_refusals() {
    let host = support::host_with(&["adversary"]).await;
    let frame = support::open_frame(&host, support::Transport::ChildProcess).await;
    let mut seen = host.broadcasts();
    // The host's own request, waiting with one of the ids the forgery sweeps.
    let mut waiting = Box::pin(host.invoke::<_, ()>("adversary", "adv-hang", &(), FAILSAFE));
    assert!(tokio::time::timeout(Duration::ZERO, &mut waiting).await.is_err(), "it waits");
    host.broadcast("adversary", "attack-frame", &(frame.0, "forge-refusals")).unwrap();
    let (report, _) = frame_report(&mut seen).await;
    assert_eq!(report.len(), 65);
    // The forged requests came before the report on the same connection, so any refusal they
    // caused has been delivered by now: the host's request must still be waiting.
    assert!(tokio::time::timeout(Duration::ZERO, &mut waiting).await.is_err(), "a forged refusal ended it");
    assert_eq!(host.inspect().await.extension("adversary").unwrap().pending_requests, 1);
}
