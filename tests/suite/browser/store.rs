//! The store with writers in main and in all three kinds of frame at once: every replica
//! converges on main's sequence, and a web frame's snapshot is there before its code runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::web::{WebHost, next_broadcast};
use crate::support::FAILSAFE;

const ROUNDS: u32 = 20;

#[derive(Serialize)]
struct StoreGo {
    rounds: u32,
}

/// One replica of a tier, as webprobe's `TIER-dump-all` reports it (main's first).
#[derive(Deserialize, Debug)]
pub(super) struct Dump {
    pub(super) side: String,
    pub(super) values: BTreeMap<String, i64>,
}

/// Writers of `tier` (`store` or `storage`) in every frame and in main at once: webprobe's
/// frames each write `rounds` rounds (`TIER-go`) while main writes its own and the shared
/// key; once each of the `frames` halves said it is done, every replica (`TIER-dump-all`).
pub(super) async fn write_everywhere_at_once(web: &WebHost, tier: &str, rounds: u32, frames: usize) -> Vec<Dump> {
    let mut seen = web.host.broadcasts();
    web.host.broadcast("webprobe", &format!("{tier}-go"), &StoreGo { rounds }).unwrap();
    let write = format!("{tier}-write");
    let mut writes = Vec::new();
    for round in 1..=i64::from(rounds) {
        writes.push(web.host.invoke::<_, ()>("webprobe", &write, &("main", round), FAILSAFE));
        writes.push(web.host.invoke::<_, ()>("webprobe", &write, &("shared", -round), FAILSAFE));
    }
    for write in writes {
        write.await.unwrap();
    }
    let done = format!("{tier}-done");
    for _ in 0..frames {
        let (sender, failed) = next_broadcast(&mut seen, "webprobe", &done, |_: &u32| true).await;
        assert_eq!(failed, 0, "{sender}: writes failed");
    }
    web.host.invoke("webprobe", &format!("{tier}-dump-all"), &(), FAILSAFE).await.unwrap()
}

#[tokio::test]
async fn the_store_converges_with_writers_in_main_a_rust_frame_a_renderer_process_and_a_web_frame() {
    let web = WebHost::start(&["webprobe"]).await;
    // Written before the web frame opens: the page's code finds it already there.
    let () = web.host.invoke("webprobe", "store-write", &("seed", 41i64), FAILSAFE).await.unwrap();
    let rust = web.host.open_frame().await;
    let child = web.host.open_child_frame().await.expect("a renderer process starts");
    let shell = web.open_shell().await;
    assert_eq!(shell.page.eval("webprobe.seedAtActivate").await, 41, "the snapshot is in place before activate");

    // Main writes at the same time as the three frames.
    let dumps = write_everywhere_at_once(&web, "store", ROUNDS, 3).await;

    // Every replica as main sequenced it (main asks each frame after the writes it sequenced).
    let sides: Vec<&str> = dumps.iter().map(|dump| dump.side.as_str()).collect();
    assert_eq!(dumps.len(), 4, "main and three frames: {sides:?}");
    let main = &dumps[0].values;
    let rounds = i64::from(ROUNDS);
    assert_eq!(main.get("main"), Some(&rounds));
    assert_eq!(main.get("seed"), Some(&41));
    for frame in [rust, child] {
        assert_eq!(main.get(&format!("rust-{}", frame.0)), Some(&rounds), "{main:?}");
    }
    assert_eq!(main.get(&format!("web-{}", shell.frame.0)), Some(&rounds), "{main:?}");
    let shared = main["shared"];
    assert!(
        shared == -rounds || shared == rounds * 1000,
        "the last write of `shared` is one of the writers' last: {shared}"
    );
    for dump in &dumps[1..] {
        assert_eq!(&dump.values, main, "{} differs from main", dump.side);
    }
    assert!(sides.contains(&format!("web:{}", shell.frame.0).as_str()), "{sides:?}");
    // The page's synchronous view agrees.
    let in_page = shell.page.eval("webprobe.ipc.store.get('shared')").await;
    assert_eq!(in_page, shared);
    // And the host's.
    let values = web.host.store_values("webprobe").await.unwrap();
    assert_eq!(values.len(), main.len());
    web.stop().await;
}
