//! The store: main sequences every write, every replica converges, watchers see each change
//! once, frames get the snapshot before `activate`, and deactivation clears it.

use std::collections::BTreeMap;

use probe_protocol::*;
use proptest::prelude::*;

use crate::support::{self, FAILSAFE, Transport, pongs, wait_log};

const SIDES: [&str; 4] = ["main", "frame:1", "frame:2", "frame:3"];

async fn host_with_frames(transport: Transport, frames: usize) -> extension_host::Host {
    support::host_with_frames(transport, &["probe"], frames).await
}

/// Sends `ops` (side index, key index, value or delete) without waiting in between, then waits
/// for every one to be applied on its writer's replica, and returns all replicas.
async fn run_ops(host: &extension_host::Host, ops: &[(usize, u8, Option<i64>)]) -> Vec<ReplicaDump> {
    let mut seen = host.broadcasts();
    for (side, key, value) in ops {
        let op = StoreOp { side: SIDES[*side].to_owned(), key: format!("k{key}"), value: *value };
        host.broadcast("probe", STORE_OP.name(), &op).unwrap();
    }
    for pong in pongs(&mut seen, "probe", ops.len()).await {
        assert_eq!(pong.tag, "store-op-done", "{pong:?}");
    }
    // Main asks each frame for its replica after publishing every update: the answers come
    // after the updates (one sender, one order).
    host.invoke("probe", STORE_DUMP.name(), &(), FAILSAFE).await.unwrap()
}

fn check_converged(dumps: &[ReplicaDump], writes: usize) {
    assert_eq!(dumps.len(), SIDES.len(), "main and three frames");
    let main = &dumps[0];
    assert_eq!(main.seq, writes as u64, "main sequenced every write");
    // Watchers saw each change once, in sequence order.
    assert!(main.history.windows(2).all(|pair| pair[0].0 < pair[1].0), "{:?}", main.history);
    // Replaying the changes in main's order gives the final values.
    let mut replay = BTreeMap::new();
    for (_, key, value, _) in &main.history {
        match value {
            Some(value) => replay.insert(key.clone(), *value),
            None => replay.remove(key),
        };
    }
    assert_eq!(replay, main.values);
    for replica in &dumps[1..] {
        assert_eq!(replica.values, main.values, "{} converged", replica.side);
        assert_eq!(replica.seq, main.seq, "{} applied every write", replica.side);
        assert_eq!(replica.history, main.history, "{} saw the same changes in the same order", replica.side);
    }
}

/// Random interleavings of writes and deletes from main and three frames.
fn converge(transport: Transport, ops: &[(usize, u8, Option<i64>)]) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let host = host_with_frames(transport, 3).await;
        let dumps = run_ops(&host, ops).await;
        check_converged(&dumps, ops.len());
        host.shutdown().await;
    });
}

fn operations() -> impl Strategy<Value = Vec<(usize, u8, Option<i64>)>> {
    prop::collection::vec((0usize..4, 0u8..3, prop::option::of(-3i64..3)), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_in_mains_order_in_process(ops in operations()) {
        converge(Transport::InProcess, &ops);
    }

    #[test]
    fn replicas_converge_in_mains_order_across_processes(ops in operations()) {
        converge(Transport::ChildProcess, &ops);
    }

    #[test]
    fn replicas_converge_in_mains_order_isolated(ops in operations()) {
        converge(Transport::Isolated, &ops);
    }
}

async fn a_frame_has_the_snapshot_before_its_activate_runs(transport: Transport) {
    let host = support::host_for(transport, &["probe"]).await;
    let mut logs = host.logs();
    host.invoke::<_, ()>("probe", SET_PRESET.name(), "dark mode", FAILSAFE).await.unwrap();
    support::open_frames(&host, transport, 1).await;
    wait_log(&mut logs, "probe", |m| m == r#"frame:1 activated with preset=Ok(Some("dark mode"))"#).await;
}

async fn values_that_cannot_be_stored_are_refused_at_the_call(transport: Transport) {
    let host = support::host_for(transport, &["probe"]).await;
    let refusals: Vec<String> = host.invoke("probe", STORE_REFUSALS.name(), &(), FAILSAFE).await.unwrap();
    assert!(
        refusals[0].contains("cannot store `big`") && refusals[0].contains("over the 1048576-byte limit"),
        "{refusals:?}"
    );
    assert!(
        refusals[1].contains("cannot store `bad`") && refusals[1].contains("refuses to be serialized"),
        "{refusals:?}"
    );
    let dumps: Vec<ReplicaDump> = host.invoke("probe", STORE_DUMP.name(), &(), FAILSAFE).await.unwrap();
    assert!(dumps[0].values.is_empty() && dumps[0].seq == 0, "nothing was written: {dumps:?}");
}

async fn the_store_is_cleared_on_deactivate(transport: Transport) {
    let host = host_with_frames(transport, 3).await;
    let dumps = run_ops(&host, &[(0, 0, Some(1)), (2, 1, Some(2))]).await;
    assert_eq!(dumps[0].values.len(), 2);
    host.deactivate("probe").await.unwrap();
    host.activate("probe").await.unwrap();
    let dumps: Vec<ReplicaDump> = host.invoke("probe", STORE_DUMP.name(), &(), FAILSAFE).await.unwrap();
    assert!(dumps.iter().all(|dump| dump.values.is_empty() && dump.seq == 0 && dump.history.is_empty()), "{dumps:?}");
}

async fn a_write_that_changes_nothing_notifies_no_one(transport: Transport) {
    let host = host_with_frames(transport, 3).await;
    // Setting the same value twice and deleting a missing key: three writes, one change.
    let dumps = run_ops(&host, &[(1, 0, Some(5)), (3, 0, Some(5)), (0, 2, None)]).await;
    check_converged(&dumps, 3);
    let history = &dumps[0].history;
    assert_eq!(history.len(), 1, "{history:?}");
    let (_, key, value, writer) = &history[0];
    assert_eq!((key.as_str(), *value), ("k0", Some(5)));
    assert!(writer == "frame 1" || writer == "frame 3", "whichever was sequenced first: {writer}");
}

conformance!(
    a_frame_has_the_snapshot_before_its_activate_runs,
    the_store_is_cleared_on_deactivate,
    a_write_that_changes_nothing_notifies_no_one,
    values_that_cannot_be_stored_are_refused_at_the_call,
);
