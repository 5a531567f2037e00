//! The persisted tier in a web frame, in real Chromium: the page's `ipc.storage` is seeded
//! before its code runs, its writes converge with main's and a Rust frame's, a `set` resolves
//! once the write is durable and in the page's replica, and what it wrote is there for a new
//! page of a new host on the same data directory, awkward values included.

use std::collections::BTreeMap;

use super::store::write_everywhere_at_once;
use super::web::WebHost;
use crate::support::{self, FAILSAFE};

const ROUNDS: u32 = 10;

#[tokio::test]
async fn a_pages_storage_writes_converge_with_main_and_a_rust_frame_and_survive_a_host_restart() {
    let mut config = support::config();
    config.storage.data_dir = support::fresh_data_dir();
    let web = WebHost::with_config(config.clone(), &["webprobe"]).await;
    // Written before the web frame opens: the page's code finds it already there.
    let () = web.host.invoke("webprobe", "storage-write", &("seed", 41i64), FAILSAFE).await.unwrap();
    let rust = web.host.open_frame().await;
    let shell = web.open_shell().await;
    assert_eq!(shell.page.eval("webprobe.storageAtActivate.seed").await, 41, "seeded before activate");

    // The page's `set` resolves once durable and applied: its replica has it at once.
    let read_back = "webprobe.ipc.storage.set('page', 7).then(() => webprobe.ipc.storage.get('page'))";
    assert_eq!(shell.page.eval(read_back).await, 7);
    let awkward = "Promise.all([webprobe.ipc.storage.set('big', 2n ** 64n - 1n), \
                   webprobe.ipc.storage.set('map', new Map([[1, 'one'], [2, new Uint8Array([0, 255])]]))]).then(() => true)";
    assert_eq!(shell.page.eval(awkward).await, true);
    // A refused write rejects with its kind (the host's value limit is 1 MiB).
    let refused = shell.page.eval("webprobe.outcome(webprobe.ipc.storage.set('huge', 'x'.repeat(2 << 20)))").await;
    assert_eq!(refused["error"], "StoreError", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("over the 1048576-byte limit"), "{refused}");

    // Writers in main, the Rust frame and the page at once.
    let dumps = write_everywhere_at_once(&web, "storage", ROUNDS, 2).await;
    let sides: Vec<&str> = dumps.iter().map(|dump| dump.side.as_str()).collect();
    assert_eq!(dumps.len(), 3, "main and two frames: {sides:?}");
    assert!(sides.contains(&format!("web:{}", shell.frame.0).as_str()), "{sides:?}");
    let main = dumps[0].values.clone();
    let rounds = i64::from(ROUNDS);
    assert_eq!(main.get("main"), Some(&rounds));
    assert_eq!((main.get("seed"), main.get("page")), (Some(&41), Some(&7)));
    assert_eq!(main.get(&format!("rust-{}", rust.0)), Some(&rounds), "{main:?}");
    assert_eq!(main.get(&format!("web-{}", shell.frame.0)), Some(&rounds), "{main:?}");
    assert!(!main.contains_key("huge"));
    for dump in &dumps[1..] {
        assert_eq!(dump.values, main, "{} differs from main", dump.side);
    }
    assert_eq!(shell.page.eval("webprobe.ipc.storage.get('shared')").await, main["shared"]);
    web.stop().await;

    // A new host on the same data directory, a new browser and page: the page's writes are
    // there, synchronously, when its code starts.
    let web = WebHost::with_config(config, &["webprobe"]).await;
    let shell = web.open_shell().await;
    let at_activate: BTreeMap<String, i64> =
        serde_json::from_value(shell.page.eval("webprobe.storageAtActivate").await).unwrap();
    assert_eq!(at_activate, main);
    let big = shell.page.eval("String(webprobe.ipc.storage.get('big'))").await;
    assert_eq!(big, "18446744073709551615");
    let map = shell.page.eval("JSON.stringify([...webprobe.ipc.storage.get('map')].map(([k, v]) => [k, typeof v === 'string' ? v : [...v]]))").await;
    assert_eq!(map, r#"[[1,"one"],[2,[0,255]]]"#);
    web.stop().await;
}
