//! An application's own shell (`WebConfig::shell_origins`, `host/web/embed.js`), in the
//! browser: a page served by a loopback server of the test's own, on another origin than the
//! host's, is a web frame whose extension's web renderer runs and talks to main; a page on an
//! origin not in the list gets no frame, cannot frame an extension, and reaches nothing; and
//! the host's own shell works at `http://localhost:PORT` as at `http://127.0.0.1:PORT`.

use std::sync::{Arc, OnceLock};

use extension_host::{FrameId, ObservedBroadcast, WebConfig};
use serde_json::{Value, json};

use super::Tab;
use super::web::{WebHost, web_ready, webprobe_page};
use crate::support;

/// The browser showed its error page in `parent`'s iframe instead of webprobe's document
/// (`frame-ancestors` refused it): no bootstrap ran there.
async fn refused_to_be_framed(parent: &Tab, why: &str) {
    let blocked = parent.frame("chrome-error://").await;
    let shown = blocked
        .eval("[location.href, document.getElementById('extension-host-status') === null, typeof globalThis.webprobe]")
        .await;
    assert_eq!(shown, json!(["chrome-error://chromewebdata/", true, "undefined"]), "{why}");
}

/// No renderer half of webprobe started (no `ready`) before a `barrier` broadcast from main.
async fn no_half_started(
    web: &WebHost,
    seen: &mut tokio::sync::broadcast::Receiver<ObservedBroadcast>,
    barrier: &str,
    where_: &str,
) {
    web.host.broadcast("webprobe", barrier, &"barrier").unwrap();
    loop {
        let broadcast = tokio::time::timeout(super::DEADLINE, seen.recv()).await.unwrap().unwrap();
        if broadcast.extension == "webprobe" && broadcast.channel == barrier {
            break;
        }
        assert_ne!(broadcast.channel, "ready", "a renderer half started {where_}: {:?}", broadcast.sender());
    }
}

/// An application's page: a container, and `embed.js` from the host at `host_port` making it
/// a shell; what `embed` reports is kept in `appEvents` (and how its import ended in
/// `appImport`).
fn application_page(host_port: u16) -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>an application</title></head><body>
<h1>My dashboard</h1><div id="extensions"></div>
<script type="module">
window.appEvents = [];
window.appImport = import("http://127.0.0.1:{host_port}/embed.js").then(({{ embed }}) => {{
  const shell = embed({{ host: "http://127.0.0.1:{host_port}", container: document.getElementById("extensions") }});
  for (const type of ["frame", "added", "status", "removed", "closed"]) {{
    shell.addEventListener(type, (event) => appEvents.push({{ type, frame: event.detail.frame, extension: event.detail.extension }}));
  }}
  window.appShell = shell;
  return "loaded";
}}, (error) => `failed: ${{error}}`);
</script></body></html>"#
    )
}

/// A page of the test's own at `http://127.0.0.1:PORT/` serving `page(host_port)`, where
/// `host_port` is set once the host serves (the server's port comes first: the host's config
/// names its origin). The port, and where to put the host's.
async fn own_server(page: fn(u16) -> String) -> (u16, Arc<OnceLock<u16>>) {
    let host_port = Arc::new(OnceLock::new());
    let known = host_port.clone();
    let port =
        headless::serve_pages(move |request| known.get().filter(|_| request.path == "/").map(|port| page(*port)))
            .await
            .expect("the application's server starts");
    (port, host_port)
}

/// The host serving webprobe, with these application shell origins.
async fn web_host(shell_origins: Vec<String>) -> WebHost {
    let config = WebConfig { shell_origins, ..WebConfig::default() };
    WebHost::with_configs(support::config(), config, &["webprobe"]).await
}

/// webprobe's renderer in `tab`, once it runs: its frame and its iframe's session. Then it
/// invokes main, and hears main's broadcast.
async fn renderer_talks_to_main(
    web: &WebHost,
    tab: &Tab,
    seen: &mut tokio::sync::broadcast::Receiver<ObservedBroadcast>,
) -> FrameId {
    let (frame, load) = web_ready(seen).await;
    let page = webprobe_page(tab, &load).await;
    let echoed =
        page.eval(r#"webprobe.outcome(webprobe.ipc.invoke("echo", { from: "the application's shell" }))"#).await;
    assert_eq!(echoed, json!({ "ok": { "from": "the application's shell" } }));
    page.eval("globalThis.heard = []; webprobe.ipc.listen('app-news', (value) => heard.push(value)); true").await;
    web.host.broadcast("webprobe", "app-news", &"from main").unwrap();
    assert_eq!(page.wait_for("heard[0]").await, "from main");
    frame
}

#[tokio::test]
async fn an_applications_shell_on_another_origin_is_a_web_frame_whose_renderer_talks_to_main() {
    let (app_port, host_port) = own_server(application_page).await;
    let app_origin = format!("http://127.0.0.1:{app_port}");
    let web = web_host(vec![app_origin.clone()]).await;
    host_port.set(web.server.as_ref().unwrap().local_addr().port()).unwrap();
    let mut seen = web.host.broadcasts();

    let tab = web.browser.open(&format!("{app_origin}/")).await;
    assert_eq!(tab.wait_for("appImport").await, "loaded");
    let frame = renderer_talks_to_main(&web, &tab, &mut seen).await;
    assert_eq!(web.frames(), [frame], "the application's page is the frame");
    // The page saw its frame, webprobe's iframe added, and what that iframe is doing.
    tab.wait_for("appEvents.some((event) => event.type === 'status')").await;
    let events = tab.eval("appEvents.filter((event) => event.type !== 'status')").await;
    assert_eq!(events, json!([{ "type": "frame", "frame": frame.0 }, { "type": "added", "extension": "webprobe" }]));
    let iframe = tab.eval("document.querySelector('#extensions iframe').getAttribute('sandbox')").await;
    assert_eq!(iframe, "allow-scripts allow-same-origin");

    // Closing the frame from the host removes the iframe and closes the page's shell.
    web.host.close_frame(frame).await.unwrap();
    tab.wait_for("appEvents.some((event) => event.type === 'closed')").await;
    assert_eq!(tab.eval("document.querySelectorAll('#extensions iframe').length").await, 0);
    web.stop().await;
}

/// A page on an origin NOT in the list: the host's `embed.js` (no CORS header for it), its own
/// shell socket, and an iframe of webprobe's origin; what happened to each in `evil`.
fn refused_page(host_port: u16, extension_origin: &str) -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>another page</title></head><body>
<script type="module">
window.evil = {{}};
evil.import = import("http://127.0.0.1:{host_port}/embed.js").then(() => "loaded", () => "refused");
evil.socket = new Promise((resolve) => {{
  const socket = new WebSocket("ws://127.0.0.1:{host_port}/shell");
  const messages = [];
  socket.onopen = () => messages.push("open");
  socket.onmessage = (event) => messages.push(String(event.data));
  socket.onclose = (event) => resolve({{ messages, code: event.code }});
}});
const iframe = document.createElement("iframe");
iframe.src = "{extension_origin}/";
evil.framed = new Promise((resolve) => iframe.addEventListener("load", () => resolve("load"), {{ once: true }}));
document.body.append(iframe);
</script></body></html>"#
    )
}

#[tokio::test]
async fn a_shell_on_an_origin_not_in_the_list_gets_no_frame_frames_no_extension_and_reaches_nothing() {
    // The allowed application origin is the test server's; the refused page is served by a
    // second one (another port: another origin).
    let (allowed_port, host_port) = own_server(application_page).await;
    let extension_origin = Arc::new(OnceLock::<String>::new());
    let known = (host_port.clone(), extension_origin.clone());
    let refused_port = headless::serve_pages(move |request| {
        let (port, origin) = (known.0.get()?, known.1.get()?);
        (request.path == "/").then(|| refused_page(*port, origin))
    })
    .await
    .unwrap();
    let web = web_host(vec![format!("http://127.0.0.1:{allowed_port}")]).await;
    host_port.set(web.server.as_ref().unwrap().local_addr().port()).unwrap();
    let mut seen = web.host.broadcasts();
    // A real frame first (so that webprobe's origin exists), in the allowed application's page.
    let tab = web.browser.open(&format!("http://127.0.0.1:{allowed_port}/")).await;
    let frame = renderer_talks_to_main(&web, &tab, &mut seen).await;
    let origin = tab.eval("document.querySelector('#extensions iframe').src").await;
    extension_origin.set(origin.as_str().unwrap().trim_end_matches('/').to_owned()).unwrap();
    let before = web.host.inspect().await;

    let evil = web.browser.open(&format!("http://127.0.0.1:{refused_port}/")).await;
    // The host's embeddable script is not for it: no CORS header, so its browser refuses it.
    assert_eq!(evil.wait_for("evil.import").await, "refused");
    // Its shell socket is refused at the upgrade (403): it never opens, it hears nothing.
    let socket = evil.wait_for("evil.socket").await;
    assert_eq!(socket, json!({ "messages": [], "code": 1006 }), "the socket of a page not in the list");
    // The extension's document refuses to be framed by it (frame-ancestors): the browser shows
    // its error page instead, so no bootstrap runs there.
    assert_eq!(evil.wait_for("evil.framed").await, "load");
    refused_to_be_framed(&evil, "webprobe's document ran in a page not in the list").await;

    // Nothing reached any extension: the host has the one frame it had, webprobe's halves are
    // the same, and no renderer half started (a `ready`) before the barrier.
    no_half_started(&web, &mut seen, "app-shell-barrier", "for the refused page").await;
    assert_eq!(web.frames(), [frame]);
    let after = web.host.inspect().await;
    let halves = |snapshot: &extension_host::HostSnapshot| snapshot.extension("webprobe").map(|e| e.frames.clone());
    assert_eq!(halves(&after), halves(&before));
    web.stop().await;
}

#[tokio::test]
async fn the_hosts_shell_works_at_localhost_as_at_127_0_0_1() {
    let web = web_host(Vec::new()).await;
    let mut seen = web.host.broadcasts();
    let url = web.url().replace("127.0.0.1", "localhost");
    let tab = web.browser.open(&url).await;
    let frame = renderer_talks_to_main(&web, &tab, &mut seen).await;
    assert_eq!(web.frames(), [frame]);
    let location: Value = tab.eval("location.origin").await;
    assert!(location.as_str().unwrap().starts_with("http://localhost:"), "{location}");
    web.stop().await;
}

/// A page NOT in the list that frames a listed application's page (`app_port`'s).
fn nesting_page(app_port: u16) -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>a page framing the application</title></head><body>
<iframe src="http://127.0.0.1:{app_port}/"></iframe></body></html>"#
    )
}

#[tokio::test]
async fn a_listed_shells_page_framed_by_a_page_not_in_the_list_frames_no_extension() {
    // The listed page's own socket opens (its `Origin` is its own) and is given webprobe's
    // iframe and token; but every ancestor of the extension's document must be a shell's
    // origin (`frame-ancestors`), so it never loads under the unlisted top page.
    let (app_port, host_port) = own_server(application_page).await;
    let known = app_port;
    let nesting_port =
        headless::serve_pages(move |request| (request.path == "/").then(|| nesting_page(known))).await.unwrap();
    let web = web_host(vec![format!("http://127.0.0.1:{app_port}")]).await;
    host_port.set(web.server.as_ref().unwrap().local_addr().port()).unwrap();
    let mut seen = web.host.broadcasts();

    // On `localhost`: another site than the application's page, so that its iframe is a
    // target of its own that the test can reach.
    let top = web.browser.open(&format!("http://localhost:{nesting_port}/")).await;
    let app = top.frame(&format!("http://127.0.0.1:{app_port}/")).await;
    assert_eq!(app.wait_for("appImport").await, "loaded");
    app.wait_for("appEvents.some((event) => event.type === 'added')").await;
    assert_eq!(web.frames().len(), 1, "the listed page's socket is a frame");
    refused_to_be_framed(&top, "webprobe's document ran under a page not in the list").await;

    // Nothing reached webprobe from that iframe: no renderer half started before the barrier.
    no_half_started(&web, &mut seen, "nested-barrier", "under the unlisted page").await;
    web.stop().await;
}
