//! What the host's inspection reports of a web frame's persisted tier, in real Chromium: the
//! page's replica (its keys, the last write it applied), as a Rust half's is reported.

use extension_api::{FrameId, Half};

use super::web::WebHost;
use crate::support::{self, FAILSAFE};

#[tokio::test]
async fn inspecting_a_page_reports_its_persisted_tiers_replica() {
    let mut config = support::config();
    config.storage.data_dir = support::fresh_data_dir();
    let web = WebHost::with_config(config, &["webprobe"]).await;
    let () = web.host.invoke("webprobe", "storage-write", &("seed", 41i64), FAILSAFE).await.unwrap();
    let shell = web.open_shell().await;
    // Two more writes, the last resolved once applied in the page's replica: three keys...
    let written = "webprobe.ipc.storage.set('a', 1).then(() => webprobe.ipc.storage.set('b', 2)).then(() => true)";
    assert_eq!(shell.page.eval(written).await, true);
    let snapshot = web.host.inspect().await;
    let instance = snapshot.extension("webprobe").unwrap().instance.clone().unwrap();
    let main = instance.halves.iter().find(|half| half.half == Half::Main).unwrap();
    let page = instance.halves.iter().find(|half| half.half == Half::Frame(FrameId(shell.frame.0)));
    let page = page.unwrap_or_else(|| panic!("no half of frame {}: {snapshot:?}", shell.frame.0));
    assert!(main.storage_keys >= 3 && main.storage_seq >= 3, "{main:?}");
    // ...in the page as in main: the page's replica is reported, not an empty one.
    assert_eq!((page.storage_keys, page.storage_seq), (main.storage_keys, main.storage_seq), "{page:?}");
    web.stop().await;
}
