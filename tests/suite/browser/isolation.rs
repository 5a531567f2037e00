//! The isolation attacks in the browser: webprobe's iframe tries to reach its sibling's
//! (`hello`'s) window, DOM, token, connection and channels, and the shell's; every attempt
//! fails, and nothing of it reaches any other extension.

use serde_json::Value;

use super::web::WebHost;

/// The sibling's document, but for the bootstrap's status line (which counts its messages).
const SIBLING_DOM: &str = "(() => { const copy = document.documentElement.cloneNode(true); \
     copy.querySelector('#extension-host-status')?.remove(); return copy.outerHTML; })()";

fn refused(attempt: &Value, what: &str) {
    let text = attempt.as_str().unwrap_or_default();
    assert!(text.starts_with("SecurityError"), "{what} was not refused: {attempt}");
}

#[tokio::test]
async fn an_extensions_iframe_cannot_reach_a_siblings_window_dom_token_connection_or_channels() {
    let web = WebHost::start(&["webprobe", "hello"]).await;
    let mut seen = web.host.broadcasts();
    let shell = web.open_shell().await;
    let sibling = shell.tab.frame("http://hello-").await;
    sibling.wait_for("document.readyState === 'complete'").await;
    let sibling_origin = sibling.eval("location.origin").await;
    let sibling_origin = sibling_origin.as_str().unwrap().to_owned();
    let sibling_before = sibling.eval(SIBLING_DOM).await;
    assert_ne!(sibling_origin, shell.page.eval("location.origin").await, "an origin per extension");

    let report = shell.page.eval(&format!("webprobe.attack({sibling_origin:?})")).await;
    // Windows: no sibling's (or the shell's) DOM or globals; no navigating the shell away.
    let frames = report["frames"].as_array().unwrap();
    assert!(!frames.is_empty(), "the sibling's window is listed in parent.frames: {report}");
    for frame in frames {
        refused(&frame["document"], "a sibling's document");
        refused(&frame["global"], "a sibling's globals");
    }
    refused(&report["shellDocument"], "the shell's document");
    assert_ne!(report["topLocation"], "no", "navigating the shell was allowed: {report}");
    // Tokens: posing as the sibling (or anything else) to the shell gets no token but our own.
    let tokens: std::collections::BTreeSet<&str> =
        report["tokens"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(tokens.len() <= 1, "more than one token was handed to webprobe's iframe: {report}");
    if !tokens.is_empty() {
        // Welcomed on webprobe's origin, as webprobe (a sibling's token is refused there).
        let welcome = report["receivedToken"]["welcome"].as_str().unwrap_or_default();
        assert!(welcome.contains("webprobe"), "the token handed over is not webprobe's own: {report}");
    }
    // Connections: the sibling's socket never opens from here; a forged token is refused.
    assert_eq!(report["siblingSocket"]["opened"], false, "{report}");
    assert_eq!(report["siblingSocket"]["ended"], "csp", "the CSP stops it before the host has to: {report}");
    let forged = &report["forgedToken"];
    assert!(forged["opened"] == false || forged["code"] == 1008, "a forged token was accepted: {report}");
    let fetched = report["siblingFetch"].as_str().unwrap_or_default();
    assert!(!fetched.starts_with("status 200"), "the sibling's assets were fetched from here: {report}");
    // Channels: webprobe's names are webprobe's namespace; hello's `greet` is not there.
    assert_eq!(report["siblingChannel"]["kind"], "NoHandler", "{report}");

    // Nothing reached hello: no broadcast in its namespace carries webprobe's values (the
    // host's barrier broadcast, sent after the attack, closes the window to look at).
    web.host.broadcast("hello", "isolation-barrier", &"barrier").unwrap();
    loop {
        let broadcast = tokio::time::timeout(super::DEADLINE, seen.recv()).await.unwrap().unwrap();
        if broadcast.extension != "hello" {
            continue;
        }
        if broadcast.channel == "isolation-barrier" {
            break;
        }
        let value: Result<String, _> = broadcast.value();
        assert_ne!(value.ok().as_deref(), Some("from webprobe"), "webprobe reached hello: {}", broadcast.channel);
    }
    // The sibling's document is untouched, and its half still runs in the frame.
    assert_eq!(sibling.eval(SIBLING_DOM).await, sibling_before);
    let snapshot = web.host.inspect().await;
    let hello = snapshot.extension("hello").unwrap();
    assert!(hello.frames.contains(&shell.frame.0) && hello.frame_errors.is_empty(), "{hello:?}");
    web.stop().await;
}
