//! The size limits: a message (value and channel name) over `abi::MAX_MESSAGE`, and a store
//! past its total. Whatever the placement (in process, renderer process, isolated), nothing
//! over a limit is lost silently: its sender learns at once, with the size and the limit.

use extension_api::abi::MAX_MESSAGE;
use extension_api::{STORE_TOTAL_LIMIT, STORE_VALUE_LIMIT};
use extension_host::{Host, HostError, ObservedBroadcast};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::Receiver;

use crate::support::{self, FAILSAFE, Transport, wait_log};

/// The fixture's `Do` and `Report` (it is a cdylib: its types are declared again here).
#[derive(Serialize)]
pub(crate) struct Do<'a> {
    pub(crate) frame: u64,
    pub(crate) op: &'a str,
    pub(crate) size: u64,
    pub(crate) key: &'a str,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Report {
    pub(crate) side: String,
    pub(crate) op: String,
    pub(crate) outcome: String,
}

const OVER: u64 = MAX_MESSAGE as u64;
/// A value that, with its channel name and encoding, is just within the limit.
const WITHIN: u64 = MAX_MESSAGE as u64 - 64;

/// Has frame `frame`'s renderer half run `op` and returns its report's outcome.
pub(crate) async fn run(
    host: &Host,
    seen: &mut Receiver<ObservedBroadcast>,
    frame: u64,
    op: &str,
    size: u64,
) -> String {
    run_keyed(host, seen, frame, op, size, "").await
}

async fn run_keyed(
    host: &Host,
    seen: &mut Receiver<ObservedBroadcast>,
    frame: u64,
    op: &str,
    size: u64,
    key: &str,
) -> String {
    host.broadcast("sizes", "do", &Do { frame, op, size, key }).unwrap();
    let report = tokio::time::timeout(FAILSAFE, async {
        loop {
            let seen = seen.recv().await.expect("the broadcast stream goes on");
            if seen.extension == "sizes" && seen.channel == "report" {
                return seen.value::<Report>().expect("a report decodes");
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("frame {frame} did not report on `{op}`"));
    assert_eq!((report.side.as_str(), report.op.as_str()), (format!("frame:{frame}").as_str(), op));
    report.outcome
}

/// The next `count` `got` answers (who received a `big` broadcast, and how many bytes).
async fn received(seen: &mut Receiver<ObservedBroadcast>, count: usize) -> Vec<(String, u64)> {
    let mut got = tokio::time::timeout(FAILSAFE, async {
        let mut got = Vec::new();
        while got.len() < count {
            let seen = seen.recv().await.expect("the broadcast stream goes on");
            if seen.extension == "sizes" && seen.channel == "got" {
                got.push(seen.value::<(String, u64)>().expect("a `got` decodes"));
            }
        }
        got
    })
    .await
    .expect("every half answers the broadcast");
    got.sort();
    got
}

fn assert_too_large(outcome: &str, what: &str) {
    assert!(outcome.starts_with("err:TooLarge:"), "{what}: {outcome}");
    assert!(outcome.contains(&MAX_MESSAGE.to_string()), "{what} names the limit: {outcome}");
    assert!(outcome.contains("bytes"), "{what} names the size: {outcome}");
}

async fn host_with_frame(transport: Transport) -> (Host, u64) {
    let host = support::host_for(transport, &["sizes"]).await;
    let frame = support::open_frame(&host, transport).await.0;
    (host, frame)
}

async fn an_invoke_over_the_message_limit_fails_at_once_with_its_size_and_the_limit(transport: Transport) {
    let (host, frame) = host_with_frame(transport).await;
    let mut seen = host.broadcasts();
    assert_eq!(run(&host, &mut seen, frame, "invoke", WITHIN).await, format!("ok:{WITHIN}"));
    assert_too_large(&run(&host, &mut seen, frame, "invoke", OVER).await, "an invoke over the limit");
    // The host, acting as a renderer, is held to the same limit.
    let error = host.invoke::<_, u64>("sizes", "len", &serde_bytes::ByteBuf::from(vec![0; MAX_MESSAGE]), FAILSAFE);
    let error = error.await.unwrap_err();
    assert_eq!(error.kind, extension_api::InvokeErrorKind::TooLarge, "{error}");
    assert!(error.message.contains(&MAX_MESSAGE.to_string()), "{error}");
    host.shutdown().await;
}

async fn a_reply_over_the_limit_fails_at_once_both_ways_and_the_handler_side_logs_it(transport: Transport) {
    let (host, frame) = host_with_frame(transport).await;
    let mut seen = host.broadcasts();
    let mut logs = host.logs();
    // A renderer invokes main, whose reply is too large: the renderer gets the reason (not a
    // timeout), and main's side logs it, naming the channel.
    assert_eq!(run(&host, &mut seen, frame, "invoke-reply", WITHIN).await, format!("ok:{WITHIN}"));
    assert_too_large(&run(&host, &mut seen, frame, "invoke-reply", OVER).await, "a reply from main");
    let warning = wait_log(&mut logs, "sizes", |message| message.contains("reply was not sent")).await;
    assert!(warning.message.contains("`reply`"), "{}", warning.message);
    // Main invokes the frame, whose reply is too large.
    let asked: String = host.invoke("sizes", "ask-frame", &(frame, WITHIN), FAILSAFE).await.unwrap();
    assert_eq!(asked, format!("ok:{WITHIN}"));
    let asked: String = host.invoke("sizes", "ask-frame", &(frame, OVER), FAILSAFE).await.unwrap();
    assert_too_large(&asked, "a reply from a frame");
    wait_log(&mut logs, "sizes", |message| message.contains("reply was not sent")).await;
    // The host, invoking main, gets the same at once.
    let error = host.invoke::<_, serde_bytes::ByteBuf>("sizes", "reply", &OVER, FAILSAFE).await.unwrap_err();
    assert_eq!(error.kind, extension_api::InvokeErrorKind::TooLarge, "{error}");
    host.shutdown().await;
}

async fn a_broadcast_over_the_limit_is_refused_to_its_sender_and_reaches_nobody(transport: Transport) {
    let (host, frame) = host_with_frame(transport).await;
    let mut seen = host.broadcasts();
    let halves = || vec![(format!("frame:{frame}"), 8), ("main".to_owned(), 8)];
    // From a renderer half, from main and from the host: refused, with the size and the limit.
    let outcome = run(&host, &mut seen, frame, "broadcast", OVER).await;
    assert!(outcome.contains("nobody received it") && outcome.contains(&MAX_MESSAGE.to_string()), "{outcome}");
    let outcome: String = host.invoke("sizes", "broadcast", &OVER, FAILSAFE).await.unwrap();
    assert!(outcome.contains("nobody received it"), "{outcome}");
    let huge = serde_bytes::ByteBuf::from(vec![0; MAX_MESSAGE]);
    match host.broadcast("sizes", "big", &huge) {
        Err(HostError::TooLarge { channel, size, limit }) => {
            assert_eq!((channel.as_str(), limit), ("big", MAX_MESSAGE));
            assert!(size > MAX_MESSAGE);
        }
        other => panic!("a broadcast over the limit from the host: {other:?}"),
    }
    // No half received any of them: the first broadcast every half answers is the small one.
    host.broadcast("sizes", "big", &serde_bytes::ByteBuf::from(vec![0; 8])).unwrap();
    assert_eq!(received(&mut seen, 2).await, halves());
    // Within the limit, it reaches every half (its answers may come before the report).
    let mut answers = host.broadcasts();
    assert_eq!(run(&host, &mut seen, frame, "broadcast", WITHIN).await, "ok:sent");
    let expected = vec![(format!("frame:{frame}"), WITHIN), ("main".to_owned(), WITHIN)];
    assert_eq!(received(&mut answers, 2).await, expected);
    host.shutdown().await;
}

conformance!(
    an_invoke_over_the_message_limit_fails_at_once_with_its_size_and_the_limit,
    a_reply_over_the_limit_fails_at_once_both_ways_and_the_handler_side_logs_it,
    a_broadcast_over_the_limit_is_refused_to_its_sender_and_reaches_nobody,
);

/// Fills the store from main with values just under the value limit, until the total refuses
/// one; a renderer's write past the total is refused at once too; a renderer process opened
/// afterwards starts with everything the store holds.
async fn the_store_refuses_writes_past_its_total_and_new_frames_start_with_all_of_it(transport: Transport) {
    let host = support::host_for(transport, &["sizes"]).await;
    let first = support::open_frame(&host, Transport::ChildProcess).await.0;
    let mut seen = host.broadcasts();

    let value = STORE_VALUE_LIMIT as u64 - 16;
    let fits = STORE_TOTAL_LIMIT / (STORE_VALUE_LIMIT + 16);
    let outcomes: Vec<String> = host.invoke("sizes", "fill", &(fits as u32 + 2, value), FAILSAFE).await.unwrap();
    assert!(outcomes[..fits].iter().all(|outcome| outcome == "ok"), "{outcomes:?}");
    for refused in &outcomes[fits..] {
        assert!(refused.contains("over its 8388608-byte limit"), "{refused}");
    }
    // A renderer's write past the total fails at once with the reason (not a timeout).
    let outcome = run_keyed(&host, &mut seen, first, "set", value, "more").await;
    assert!(outcome.starts_with("err:cannot store `more`") && outcome.contains("8388608-byte limit"), "{outcome}");
    // A value over the value limit written by a renderer is refused before it leaves.
    let outcome = run_keyed(&host, &mut seen, first, "set", STORE_VALUE_LIMIT as u64, "big").await;
    assert!(outcome.contains("over the 1048576-byte limit"), "{outcome}");

    // A renderer process opened now starts the renderer half with the whole store.
    let second = host.open_child_frame().await.expect("a renderer process starts with a full store").0;
    let keys: Vec<String> = (0..fits).map(|n| format!("k{n}")).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    for frame in [first, second] {
        assert_eq!(run(&host, &mut seen, frame, "store", 0).await, format!("ok:{}", sorted.join(",")));
    }
    assert_eq!(host.store_values("sizes").await.unwrap().len(), fits);
    host.shutdown().await;
}

/// An error reply names its channel shortly, so it fits whatever the channel's name: a request
/// on an unhandled 9 MiB channel gets `NoHandler` at once (it got neither, and waited out its
/// timeout, when the reply carried the name twice).
async fn an_error_reply_on_a_very_long_channel_arrives_at_once(transport: Transport) {
    let host = support::host_for(transport, &["sizes"]).await;
    let channel = "c".repeat(9 << 20);
    let error = host.invoke::<_, ()>("sizes", &channel, &(), FAILSAFE).await.unwrap_err();
    assert_eq!(error.kind, extension_api::InvokeErrorKind::NoHandler, "{}", &error.message[..200]);
    assert!(error.message.len() < 1000 && error.message.contains("9437184 bytes in all"), "{}", error.message);
    assert_eq!(error.channel.len(), channel.len(), "the error keeps the whole name");
    host.shutdown().await;
}

/// Main deletes a key so long that the update publishing it would be over the message limit
/// (the request asking for it is within it). The delete is refused before it takes a number;
/// before, it said Ok, was never published, and the renderer process's replica waited for the
/// missing number for ever, holding back every later write.
#[tokio::test]
async fn a_store_write_whose_update_would_not_fit_is_refused_and_every_replica_goes_on() {
    use probe_protocol::{ReplicaDump, STORE_DUMP, STORE_OP, StoreOp};
    let host = support::host_with(&["probe"]).await;
    support::open_frame(&host, Transport::ChildProcess).await;
    let mut seen = host.broadcasts();
    let op = |key: String, value| StoreOp { side: "main".into(), key, value };
    let sample = "k".repeat(1 << 20);
    let overhead =
        STORE_OP.name().len() + rmp_serde::to_vec_named(&op(sample.clone(), None)).unwrap().len() - sample.len();
    let key = "k".repeat(MAX_MESSAGE - overhead);

    host.broadcast("probe", STORE_OP.name(), &op("before".into(), Some(1))).unwrap();
    host.broadcast("probe", STORE_OP.name(), &op(key, None)).unwrap();
    host.broadcast("probe", STORE_OP.name(), &op("after".into(), Some(3))).unwrap();
    let tags: Vec<String> = support::pongs(&mut seen, "probe", 3).await.into_iter().map(|pong| pong.tag).collect();
    assert_eq!(tags[0], "store-op-done");
    assert!(tags[1].starts_with("store-op-failed") && tags[1].contains("16777216-byte limit"), "{}", &tags[1][..300]);
    assert_eq!(tags[2], "store-op-done");
    let dumps: Vec<ReplicaDump> = host.invoke("probe", STORE_DUMP.name(), &(), FAILSAFE).await.unwrap();
    let (main, frame) = (&dumps[0], &dumps[1]);
    assert_eq!((main.seq, main.values.get("after")), (2, Some(&3)), "the refused delete took no number");
    assert_eq!((frame.seq, &frame.values), (main.seq, &main.values), "the renderer process's replica went on");
    host.shutdown().await;
}

same_instance!(
    the_store_refuses_writes_past_its_total_and_new_frames_start_with_all_of_it,
    an_error_reply_on_a_very_long_channel_arrives_at_once,
);
