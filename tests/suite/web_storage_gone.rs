//! A page's persisted write when main cannot take it: it learns at once, never after the 30 s
//! timeout ("nothing is lost silently"). While the extension deactivates, the host refuses the
//! write with the route's status (DEACTIVATED) as the persisted tier's refusal, which the client
//! rejects as `Deactivated`, the kind a Rust renderer's `storage().set` gets then, before the
//! half's close. After an isolated main's process died, the host closes the page at once
//! (1000, no CLOSE command: its client rejects what waits `ConnectionLost`); a write that
//! reaches the host before that close is refused DEACTIVATED. Which comes first is a race (the
//! close, in every run seen), so the second test takes either.

use std::collections::BTreeMap;

use extension_api::wire::{StorageOutcome, WriteRefusal};
use extension_host::{Host, HostEvent, WebConfig};
use rmpv::Value;

use super::super::{closed, payload_of, port};
use super::{STORAGE_REFUSAL, main_values, open_page, storage_write};
use crate::support;

/// DEACTIVATED (`abi::status`), the route's status when the extension does not route.
const DEACTIVATED: u64 = 3;

/// NO_SUCH_PEER (`abi::status`), the route's status when the page's frame is being unplaced.
const NO_SUCH_PEER: u64 = 5;

/// The refusal of write `write_id` of `key`, with the route's status.
fn assert_refused_deactivated(refusal: &Value, write_id: u64, key: &str) {
    assert_refused_with(refusal, write_id, key, &[DEACTIVATED]);
}

/// The refusal of write `write_id` of `key`, with one of the route's `statuses`.
fn assert_refused_with(refusal: &Value, write_id: u64, key: &str, statuses: &[u64]) {
    assert_eq!(refusal[1], Value::from(STORAGE_REFUSAL), "the persisted tier's refusal: {refusal}");
    assert!(statuses.iter().any(|status| refusal[2] == Value::from(*status)), "status one of {statuses:?}: {refusal}");
    let refused: WriteRefusal = rmp_serde::from_slice(payload_of(refusal)).unwrap();
    assert_eq!((refused.write_id, refused.key.as_str()), (write_id, key));
    assert!(
        matches!(&refused.outcome, StorageOutcome::Unavailable { reason } if reason.contains("not sent to main")),
        "{:?}",
        refused.outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pages_storage_write_while_the_extension_deactivates_is_refused_at_once() {
    let dir = crate::loading::tempdir();
    let (host, server) = super::keeper_host(&dir).await;
    let (_shell, mut page, _) = open_page(&host, port(&server)).await;
    let deactivating = tokio::spawn({
        let host = host.clone();
        async move { host.deactivate("keeper").await }
    });
    // The half is told to close once the extension stopped routing: its `deactivate` saves.
    let (completion, command) = page.control().await;
    assert_eq!(command[0], Value::from(2), "the half closes: {command}");
    storage_write(&mut page, 41, "saved", Some("yes")).await;
    let refusal = page.message_where(|m| m[1] == Value::from(STORAGE_REFUSAL)).await;
    assert_refused_deactivated(&refusal, 41, "saved");
    page.done(completion).await;
    deactivating.await.unwrap().expect("the extension deactivates");
    assert_eq!(closed(&mut page.ws).await.0, 1000);
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pages_storage_write_after_an_isolated_main_died_is_refused_or_its_page_closed_at_once() {
    let dir = crate::loading::tempdir();
    let mut config = support::config();
    config.storage.data_dir = dir.clone();
    let host = Host::new(config);
    host.load(support::library("keeper")).unwrap();
    let files = BTreeMap::from([("index.js".to_owned(), b"export async function activate(ipc) {}".to_vec())]);
    host.set_web_assets_for_testing("keeper", files).unwrap();
    host.set_isolated("keeper", true).unwrap();
    host.activate("keeper").await.unwrap();
    let server = host.serve_web(WebConfig::default()).unwrap();
    let (_shell, mut page, _) = open_page(&host, port(&server)).await;
    let mut events = host.events();
    let pid = host.inspect().await.extension("keeper").unwrap().pid.unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    support::wait_event(&mut events, |event| matches!(event, HostEvent::ExtensionCrashed { .. })).await;
    // Main is gone: the write is refused (DEACTIVATED; or NO_SUCH_PEER once the host tearing
    // the extension down has unplaced the page's half), or the page's connection is closed by
    // the host (its client then rejects what it waits on); it is never left waiting.
    storage_write(&mut page, 42, "after", Some("yes")).await;
    loop {
        match super::super::next(&mut page.ws).await {
            Some(tokio_tungstenite::tungstenite::Message::Binary(bytes)) => {
                let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
                // A CONTROL (the host's inspect, say) is not an answer to the write.
                if value[0] != Value::from(2) {
                    assert_refused_with(&value, 42, "after", &[DEACTIVATED, NO_SUCH_PEER]);
                    break;
                }
            }
            Some(tokio_tungstenite::tungstenite::Message::Close(frame)) => {
                assert_eq!(frame.map(|frame| u16::from(frame.code)), Some(1000), "closed by the host");
                break;
            }
            other => panic!("neither a refusal nor the host's close: {other:?}"),
        }
    }
    support::wait_event(&mut events, |event| matches!(event, HostEvent::ExtensionRestarted { .. })).await;
    assert!(!main_values(&host).await.contains_key("after"), "nothing was written");
    server.shutdown().await;
    host.shutdown().await;
}
