//! Reloading and closing: a page reload re-runs the web renderer while main's registrations
//! survive; closing the tab fails the requests in flight with `FrameClosed`.

use serde_json::json;

use super::web::{FOREVER, WebHost, web_ready, webprobe_page};
use crate::support::{FAILSAFE, wait_log};

#[tokio::test]
async fn reloading_the_tab_reruns_the_web_renderer_and_mains_registrations_survive() {
    let web = WebHost::start(&["webprobe"]).await;
    let shell = web.open_shell().await;
    let count = "webprobe.outcome(webprobe.ipc.invoke('count'))";
    assert_eq!(shell.page.eval(count).await, json!({ "ok": 1 }));
    let first_load = shell.page.eval("webprobe.load").await;

    let mut seen = web.host.broadcasts();
    shell.tab.reload().await;
    // The page ran again: a new shell connection, so a new web frame, and a new page load.
    let (frame, load) = web_ready(&mut seen).await;
    assert_ne!(frame, shell.frame, "the reloaded shell is a new frame");
    assert_ne!(json!(load), first_load);
    let page = webprobe_page(&shell.tab, &load).await;
    assert_eq!(page.eval("webprobe.side").await, format!("web:{}", frame.0));
    // Main's state and handlers are the same ones.
    assert_eq!(page.eval(count).await, json!({ "ok": 2 }));
    assert_eq!(web.host.invoke::<_, u64>("webprobe", "count", &(), FAILSAFE).await.unwrap(), 3);
    assert!(web.frames().contains(&frame));
    web.wait_frame_closed(shell.frame).await;
    web.stop().await;
}

#[tokio::test]
async fn reloading_a_web_frame_from_the_host_reruns_its_halves_in_the_same_frame() {
    let web = WebHost::start(&["webprobe"]).await;
    let shell = web.open_shell().await;
    let first_load = shell.page.eval("webprobe.load").await;
    let mut seen = web.host.broadcasts();
    web.host.reload_frame(shell.frame).await.unwrap();
    let (frame, load) = web_ready(&mut seen).await;
    assert_eq!(frame, shell.frame);
    assert_ne!(json!(load), first_load, "a new document in the iframe");
    let page = webprobe_page(&shell.tab, &load).await;
    assert_eq!(page.eval("webprobe.outcome(webprobe.ipc.invoke('count'))").await, json!({ "ok": 1 }));
    web.stop().await;
}

#[tokio::test]
async fn closing_the_tab_fails_the_requests_in_flight_with_frame_closed() {
    let web = WebHost::start(&["webprobe"]).await;
    let shell = web.open_shell().await;
    let mut console = web.browser.console();
    let mut logs = web.host.logs();

    // In flight: the host's request to the page, main's own request to the page, and the
    // page's request to main.
    let to_page = web.host.invoke_frame::<_, ()>("webprobe", shell.frame, "hang", &(), FOREVER);
    #[derive(serde::Serialize)]
    struct AskFrame {
        frame: u64,
        channel: &'static str,
        timeout_ms: u64,
    }
    let ask = AskFrame { frame: shell.frame.0, channel: "hang", timeout_ms: u64::MAX };
    let via_main = web.host.invoke::<_, String>("webprobe", "ask-frame", &ask, FOREVER);
    console.wait("webprobe hanging").await;
    console.wait("webprobe hanging").await;
    shell.page.eval("webprobe.start('hang', 'hang', null, { timeout: 3600000 })").await;
    wait_log(&mut logs, "webprobe", |m| m.starts_with("main's hang handler started")).await;

    let frame = shell.frame;
    shell.tab.close().await;
    let error = to_page.await.unwrap_err();
    assert_eq!(error.kind, extension_host::InvokeErrorKind::FrameClosed, "{error}");
    assert_eq!(via_main.await.unwrap(), "FrameClosed");
    // The page's request is cancelled with its frame: main's handler is dropped.
    wait_log(&mut logs, "webprobe", |m| m == "main's hang handler dropped").await;
    web.wait_frame_closed(frame).await;
    web.stop().await;
}
