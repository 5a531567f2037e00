//! A renderer half that invokes main from its `deactivate`: the host no longer routes for it
//! (its frame is closing, or the extension is deactivating), so the request fails at once,
//! with the same kind in every placement, and never holds the close until a timeout.

use extension_host::{FrameId, LogRecord};
use probe_protocol::*;
use tokio::sync::broadcast::Receiver;

use crate::support::{Transport, host_with_frames, pongs};

/// The outcome `frame`'s `deactivate` logged for its invoke, among the records already
/// received: the half's logs reach the host before its `deactivate` completes, so by the time
/// the close (or the deactivation) returns, the line is there if the invoke ended in time.
fn deactivate_outcome(logs: &mut Receiver<LogRecord>, frame: u64) -> Option<String> {
    let prefix = format!("frame:{frame} deactivate invoke: ");
    let mut found = None;
    while let Ok(record) = logs.try_recv() {
        if record.extension == "probe"
            && let Some(outcome) = record.message.strip_prefix(&prefix)
        {
            found = Some(outcome.to_owned());
        }
    }
    found
}

async fn a_renderers_invoke_in_its_deactivate_fails_at_once(transport: Transport) {
    let host = host_with_frames(transport, &["probe"], 2).await;
    let mut seen = host.broadcasts();
    let mut logs = host.logs();
    host.broadcast("probe", INVOKE_IN_DEACTIVATE.name(), &()).unwrap();
    let armed = pongs(&mut seen, "probe", 2).await;
    assert!(armed.iter().all(|pong| pong.tag == "armed:deactivate-invoke"), "{armed:?}");

    // The frame closes: its half is no longer routed for while its `deactivate` runs.
    host.close_frame(FrameId(1)).await.unwrap();
    assert_eq!(
        deactivate_outcome(&mut logs, 1).as_deref(),
        Some("FrameClosed"),
        "{transport:?}: the invoke in frame 1's deactivate did not fail at once (its deactivate ran out of time)"
    );

    // The extension deactivates: nothing is routed for it any more.
    let report = host.deactivate("probe").await.unwrap();
    assert_eq!(
        deactivate_outcome(&mut logs, 2).as_deref(),
        Some("Deactivated"),
        "{transport:?}: the invoke in frame 2's deactivate did not fail at once ({:?})",
        report.problems
    );
    assert!(report.problems.is_empty(), "{transport:?}: {:?}", report.problems);
    host.shutdown().await;
}

conformance!(a_renderers_invoke_in_its_deactivate_fails_at_once);
