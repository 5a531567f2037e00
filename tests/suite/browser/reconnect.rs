//! A page whose connection drops without the host closing it (the network went: no close
//! frame) comes back: its bootstrap connects again with its token, backed off, the host starts
//! the half again in the same frame, and the extension's `activate` runs with a fresh `ipc`.
//! A connection the host ended for a reason (a violation) does not come back (the host refuses
//! its token from then on), and the page says why.

use extension_host::{HostEvent, WebConfig};
use serde_json::json;

use super::web::{WebHost, web_ready, webprobe_page};
use crate::support;

/// The text of the status line the bootstrap draws in its iframe.
const STATUS: &str = "(document.getElementById('extension-host-status')?.textContent ?? '')";

#[tokio::test]
async fn a_page_whose_connection_drops_comes_back_and_runs_again_in_the_same_frame() {
    let web = WebHost::start(&["webprobe"]).await;
    let shell = web.open_shell().await;
    shell.page.eval("globalThis.firstIpc = webprobe.ipc; true").await;
    let mut seen = web.host.broadcasts();
    let mut events = web.host.events();

    let severed = web.server.as_ref().expect("the server runs").sever_pages_for_testing("webprobe");
    assert_eq!(severed, 1, "webprobe's one page");
    let lost = support::wait_event(&mut events, |event| matches!(event, HostEvent::WebRendererClosed { .. })).await;
    assert!(matches!(&lost, HostEvent::WebRendererClosed { lost: true, .. }), "a lost connection: {lost:?}");

    // The half runs again in the same frame (its `activate` said `ready` again), with a new
    // `ipc` that talks to main; the old one stays closed.
    let (frame, load) = web_ready(&mut seen).await;
    assert_eq!(frame, shell.frame, "the same web frame");
    let page = webprobe_page(&shell.tab, &load).await;
    assert_eq!(page.eval("webprobe.ipc !== firstIpc").await, true, "a fresh ipc");
    assert_eq!(page.eval("webprobe.outcome(webprobe.ipc.invoke('echo', 'back'))").await, json!({ "ok": "back" }));
    let old = page.eval("webprobe.outcome(firstIpc.invoke('echo', 'old'))").await;
    assert_eq!(old["kind"], "Deactivated", "{old}");
    page.wait_for(&format!("{STATUS}.includes('running')")).await;
    assert_eq!(web.frames(), [shell.frame]);
    web.stop().await;
}

#[tokio::test]
async fn a_page_whose_connection_the_host_ended_for_a_violation_stays_down_saying_why() {
    // Messages over 64 KiB end a page's connection (1009): a reason, not a lost network.
    let web_config = WebConfig { max_message: 64 << 10, ..WebConfig::default() };
    let web = WebHost::with_configs(support::config(), web_config, &["webprobe"]).await;
    let shell = web.open_shell().await;
    shell.page.eval("webprobe.start('big', 'echo', new Uint8Array(100000))").await;
    // The page sees the host's 1009, or (the socket reset under the rest of its message) a
    // dropped connection: then it tries once more, and its token is refused.
    let status = shell
        .page
        .wait_for(&format!("{STATUS}.includes('disconnected') && !{STATUS}.includes('reconnecting') && {STATUS}"))
        .await;
    let status = status.as_str().unwrap_or_default().to_owned();
    assert!(status.contains("1009") || status.contains("broke the protocol"), "{status}");
    assert_eq!(web.frames(), [shell.frame], "the frame stays");
    web.stop().await;
}
