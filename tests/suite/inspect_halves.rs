//! Inspect names each half with the author-facing types, in process and from renderer processes.

use extension_host::{FrameId, Half};

use crate::support::*;

#[tokio::test]
async fn inspect_names_halves_as_main_and_frames() {
    let host = host_with(&["probe"]).await;
    let near = host.open_frame().await;
    let far = host.open_child_frame().await.unwrap();
    let snapshot = host.inspect().await;
    let instance = snapshot.extension("probe").unwrap().instance.as_ref().unwrap();
    let halves: Vec<Half> = instance.halves.iter().map(|half| half.half).collect();
    // The child frame's half reported from its renderer process, across the child protocol.
    assert_eq!(halves, vec![Half::Main, Half::Frame(near), Half::Frame(far)]);
    assert_eq!(halves[2].frame(), Some(far));
    assert_eq!(halves.iter().map(ToString::to_string).collect::<Vec<_>>(), ["main", "frame 1", "frame 2"]);

    // As `host run --inspect` and the console print it.
    let json = serde_json::to_value(&snapshot).unwrap();
    let names: Vec<&serde_json::Value> =
        json["extensions"][0]["instance"]["halves"].as_array().unwrap().iter().map(|half| &half["half"]).collect();
    assert_eq!(
        names,
        [&serde_json::json!("main"), &serde_json::json!({"frame": near.0}), &serde_json::json!({"frame": far.0})]
    );
    host.shutdown().await;
}

/// A library built before halves were named reports a bare peer number; it still decodes.
#[test]
fn a_peer_number_from_an_older_library_still_decodes() {
    #[derive(serde::Serialize, Default)]
    struct Old {
        peer: u64,
        listeners: std::collections::BTreeMap<String, usize>,
        handlers: Vec<String>,
        pending_requests: usize,
        running_handlers: usize,
        tasks: usize,
        store_keys: usize,
        store_seq: u64,
        watchers: usize,
    }
    for (peer, half) in [(0, Half::Main), (3, Half::Frame(FrameId(3)))] {
        let bytes = rmp_serde::to_vec_named(&Old { peer, ..Old::default() }).unwrap();
        let decoded: extension_host::HalfSnapshot = extension_api::wire::decode(&bytes).unwrap();
        assert_eq!(decoded.half, half);
    }
}
