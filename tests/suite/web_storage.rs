//! The persisted tier in a web renderer half, at the protocol level: a Rust WebSocket client
//! plays the page against the real host and the real `keeper` library (given a web renderer).
//! The page is seeded with the tier before its half opens, its writes go through main and the
//! host's writer like a renderer process's, and are answered only once durable and applied.

use std::collections::BTreeMap;
use std::path::Path;

use extension_api::wire::{StorageOutcome, StoreUpdate, StoreWrite, WriteRefusal};
use extension_host::{Host, HostConfig, WebConfig, WebServer};
use rmpv::Value;

use super::{Page, Shell, close_frame_meanwhile, closed, encode, msgpack, payload_of, port, settle};
use crate::support::{self, FAILSAFE};

const STORAGE_WRITE: u32 = 8;
const STORAGE_UPDATE: u64 = 9;
const STORAGE_REFUSAL: u64 = 10;

/// A host keeping its data in `dir` (limits: a value of 100 bytes, 400 in all), running
/// `keeper` with a web renderer, and its web server.
async fn keeper_host(dir: &Path) -> (Host, WebServer) {
    let mut config: HostConfig = support::config();
    config.storage.data_dir = dir.to_owned();
    config.storage.value_limit = 100;
    config.storage.total_limit = 400;
    let host = Host::new(config);
    host.load(support::library("keeper")).expect("the library loads");
    let files = BTreeMap::from([("index.js".to_owned(), b"export async function activate(ipc) {}".to_vec())]);
    host.set_web_assets_for_testing("keeper", files).unwrap();
    host.activate("keeper").await.expect("the extension activates");
    let server = host.serve_web(WebConfig::default()).expect("the web server starts");
    (host, server)
}

/// A web frame's page, connected; its seeds answered and returned (the store's, then the
/// persisted tier's), before the open, which is answered too.
async fn open_page(host: &Host, port: u16) -> (Shell, Page, Value) {
    let mut shell = Shell::connect(port).await;
    let (name, origin, token) = shell.add().await;
    assert_eq!(name, "keeper");
    let mut page = Page::connect(port, &origin, &token, "keeper").await;
    let storage = page.start().await.1;
    settle(host).await;
    (shell, page, storage)
}

/// `[1, STORAGE_WRITE, 0, main, 0, "", {write_id, key, value}]` from the page.
async fn storage_write(page: &mut Page, write_id: u64, key: &str, value: Option<&str>) {
    let write = StoreWrite { write_id, key: key.into(), value: value.map(|value| msgpack(&value)) };
    page.message(STORAGE_WRITE, 0, 0, 0, "", msgpack(&write)).await;
}

/// The persisted tier's values as main holds them, decoded as strings.
async fn main_values(host: &Host) -> BTreeMap<String, String> {
    let values = host.storage_values("keeper").await.unwrap();
    values.into_iter().map(|(key, value)| (key, rmp_serde::from_slice(&value).unwrap())).collect()
}

fn seeded(storage: &Value) -> BTreeMap<String, String> {
    let Value::Map(entries) = &storage[2] else { panic!("a seed's values are a map: {storage}") };
    entries
        .iter()
        .map(|(key, value)| {
            (key.as_str().unwrap().to_owned(), rmp_serde::from_slice(value.as_slice().unwrap()).unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_is_seeded_with_the_persisted_tier_and_its_writes_are_answered_once_durable() {
    let dir = crate::loading::tempdir();
    let (host, server) = keeper_host(&dir).await;
    let (_shell, mut page, storage) = open_page(&host, port(&server)).await;
    // [4, seq, values, unavailable, value_limit, total_limit, stored_version]: main's replica
    // (keeper counted its activation before the page opened) and the host's limits.
    assert_eq!(seeded(&storage), BTreeMap::from([("activations".to_owned(), "1".to_owned())]));
    assert_eq!(storage[1], Value::from(1), "one write so far: {storage}");
    assert_eq!((&storage[3], &storage[4], &storage[5]), (&Value::Nil, &Value::from(100), &Value::from(400)));

    // The page's write comes back as the tier's update, sequenced after main applied it, which
    // main does only once the host committed and synced it.
    storage_write(&mut page, 7, "colour", Some("teal")).await;
    let update = page.message_where(|m| m[1] == Value::from(STORAGE_UPDATE)).await;
    let update: StoreUpdate = rmp_serde::from_slice(payload_of(&update)).unwrap();
    assert_eq!((update.seq, update.key.as_str(), update.writer, update.write_id), (2, "colour", page.frame, 7));
    assert_eq!(update.new, Some(msgpack(&"teal")));
    assert_eq!(main_values(&host).await.get("colour").map(String::as_str), Some("teal"));

    // Main's writes reach the page as well.
    let () = host.invoke("keeper", "set", &("shape", "round"), FAILSAFE).await.unwrap();
    let update = page.message_where(|m| m[1] == Value::from(STORAGE_UPDATE)).await;
    let update: StoreUpdate = rmp_serde::from_slice(payload_of(&update)).unwrap();
    assert_eq!((update.seq, update.key.as_str(), update.writer), (3, "shape", 0));

    // A refused write is answered to the page with its kind, and takes no sequence number.
    let big = "x".repeat(200);
    storage_write(&mut page, 8, "big", Some(&big)).await;
    let refusal = page.message_where(|m| m[1] == Value::from(STORAGE_REFUSAL)).await;
    assert_eq!(refusal[4].as_u64(), Some(page.frame), "to the writer: {refusal}");
    let refused: WriteRefusal = rmp_serde::from_slice(payload_of(&refusal)).unwrap();
    assert_eq!((refused.write_id, refused.key.as_str()), (8, "big"));
    assert!(matches!(refused.outcome, StorageOutcome::TooLarge { max: 100, .. }), "{:?}", refused.outcome);
    for n in 0..5 {
        storage_write(&mut page, 20 + n, &format!("fill{n}"), Some(&"y".repeat(90))).await;
    }
    let refusal = page.message_where(|m| m[1] == Value::from(STORAGE_REFUSAL)).await;
    let refused: WriteRefusal = rmp_serde::from_slice(payload_of(&refusal)).unwrap();
    assert!(matches!(refused.outcome, StorageOutcome::Full { max: 400, .. }), "{:?}", refused.outcome);
    // A delete is a write too.
    storage_write(&mut page, 9, "colour", None).await;
    let update = page
        .message_where(|m| {
            m[1] == Value::from(STORAGE_UPDATE)
                && rmp_serde::from_slice::<StoreUpdate>(payload_of(m)).is_ok_and(|u| u.write_id == 9)
        })
        .await;
    let update: StoreUpdate = rmp_serde::from_slice(payload_of(&update)).unwrap();
    assert_eq!((update.key.as_str(), update.new), ("colour", None));
    assert!(!main_values(&host).await.contains_key("colour"));
    server.shutdown().await;
    host.shutdown().await;

    // A new host on the same directory seeds a new page with what was made durable.
    let (host, server) = keeper_host(&dir).await;
    let (_shell, _page, storage) = open_page(&host, port(&server)).await;
    let values = seeded(&storage);
    assert_eq!(values.get("activations").map(String::as_str), Some("2"));
    assert_eq!(values.get("shape").map(String::as_str), Some("round"));
    assert!(!values.contains_key("colour") && !values.contains_key("big"), "{values:?}");
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_storage_message_ends_the_pages_connection_and_reaches_nothing() {
    let dir = crate::loading::tempdir();
    let (host, server) = keeper_host(&dir).await;
    let port = port(&server);
    let before = main_values(&host).await;
    // A write whose payload is not a write.
    let (_shell, mut page, _) = open_page(&host, port).await;
    page.message(STORAGE_WRITE, 0, 0, 0, "", encode(Value::from("not a write"))).await;
    let (code, reason) = closed(&mut page.ws).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("storage write's payload"), "{reason}");
    // Main's own messages of the tier: a page may not send them (it cannot commit, nor forge
    // main's updates).
    for kind in [11u32, 9, 12] {
        let (_shell, mut page, _) = open_page(&host, port).await;
        let write = StoreWrite { write_id: 1, key: "forged".into(), value: Some(msgpack(&"x")) };
        page.message(kind, 0, 0, 0, "", msgpack(&write)).await;
        let (code, reason) = closed(&mut page.ws).await;
        assert_eq!(code, 1008);
        assert!(reason.contains(&format!("may not send messages of kind {kind}")), "{reason}");
    }
    assert_eq!(main_values(&host).await, before, "nothing was written");
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_write_the_host_turns_away_is_refused_to_the_page_as_the_tiers_refusal() {
    // A page saving in `deactivate` while its frame closes: the host does not route the write
    // (the frame is unplaced), and answers it at once with the persisted tier's refusal, not
    // the store's, so the page's `ipc.storage.set` rejects rather than waiting.
    let dir = crate::loading::tempdir();
    let (host, server) = keeper_host(&dir).await;
    let (_shell, mut page, _) = open_page(&host, port(&server)).await;
    let frame = page.frame;
    let closing = close_frame_meanwhile(&host, frame);
    let (completion, command) = page.control().await;
    assert_eq!(command[0], Value::from(2), "the half closes: {command}");
    storage_write(&mut page, 41, "saved", Some("yes")).await;
    let refusal = page.message_where(|m| m[1] == Value::from(STORAGE_REFUSAL) || m[1] == Value::from(7)).await;
    assert_eq!(refusal[1], Value::from(STORAGE_REFUSAL), "the persisted tier's refusal: {refusal}");
    assert_eq!(refusal[2], Value::from(5), "NO_SUCH_PEER: the frame is closing: {refusal}");
    let refused: WriteRefusal = rmp_serde::from_slice(payload_of(&refusal)).unwrap();
    assert_eq!((refused.write_id, refused.key.as_str()), (41, "saved"));
    page.done(completion).await;
    closing.await.unwrap().expect("the frame closes");
    assert!(!main_values(&host).await.contains_key("saved"));
    server.shutdown().await;
    host.shutdown().await;
}

#[path = "web_storage_gone.rs"]
mod gone;
