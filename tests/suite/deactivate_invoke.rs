//! A renderer half that invokes main, and writes to the store, from its `deactivate`: the host
//! no longer routes for it (its frame is closing, or the extension is deactivating), so both
//! fail at once, with the same kind in every placement, and never hold the close until a
//! timeout.

use extension_host::{FrameId, LogRecord};
use probe_protocol::*;
use tokio::sync::broadcast::Receiver;

use crate::support::{Transport, host_with_frames, pongs};

/// What `frame`'s `deactivate` logged for its invoke and its store write, among the records
/// already received: the half's logs reach the host before its `deactivate` completes, so by
/// the time the close (or the deactivation) returns, each line is there if its call ended in
/// time.
fn deactivate_outcomes(logs: &mut Receiver<LogRecord>, frame: u64) -> (Option<String>, Option<String>) {
    let invoke = format!("frame:{frame} deactivate invoke: ");
    let store = format!("frame:{frame} deactivate store set: ");
    let (mut invoked, mut stored) = (None, None);
    while let Ok(record) = logs.try_recv() {
        if record.extension != "probe" {
            continue;
        }
        if let Some(outcome) = record.message.strip_prefix(&invoke) {
            invoked = Some(outcome.to_owned());
        }
        if let Some(outcome) = record.message.strip_prefix(&store) {
            stored = Some(outcome.to_owned());
        }
    }
    (invoked, stored)
}

fn assert_failed_at_once(outcomes: (Option<String>, Option<String>), kind: &str, what: &str) {
    let (invoked, stored) = outcomes;
    assert_eq!(
        invoked.as_deref(),
        Some(kind),
        "{what}: the invoke did not fail at once (its deactivate ran out of time)"
    );
    assert_eq!(
        stored.as_deref(),
        Some(kind),
        "{what}: the store write did not fail at once (its deactivate ran out of time)"
    );
}

async fn a_renderers_invoke_and_store_write_in_its_deactivate_fail_at_once(transport: Transport) {
    let host = host_with_frames(transport, &["probe"], 2).await;
    let mut seen = host.broadcasts();
    let mut logs = host.logs();
    host.broadcast("probe", INVOKE_IN_DEACTIVATE.name(), &()).unwrap();
    let armed = pongs(&mut seen, "probe", 2).await;
    assert!(armed.iter().all(|pong| pong.tag == "armed:deactivate-invoke"), "{armed:?}");

    // The frame closes: its half is no longer routed for while its `deactivate` runs.
    host.close_frame(FrameId(1)).await.unwrap();
    assert_failed_at_once(deactivate_outcomes(&mut logs, 1), "FrameClosed", &format!("{transport:?}, frame 1 closing"));

    // The extension deactivates: nothing is routed for it any more.
    let report = host.deactivate("probe").await.unwrap();
    let what = format!("{transport:?}, the extension deactivating ({:?})", report.problems);
    assert_failed_at_once(deactivate_outcomes(&mut logs, 2), "Deactivated", &what);
    assert!(report.problems.is_empty(), "{transport:?}: {:?}", report.problems);
    host.shutdown().await;
}

conformance!(a_renderers_invoke_and_store_write_in_its_deactivate_fail_at_once);
