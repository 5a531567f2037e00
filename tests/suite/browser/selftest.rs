//! The harness itself, on a page the test serves: a top document on `http://127.0.0.1:PORT`
//! with a cross-origin iframe on `http://a.localhost:PORT` (out of process in Chromium).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Browser, chromium_path};

/// The pages (`headless::serve_pages`): `/` by Host. Counts the iframe's loads.
struct Pages {
    port: u16,
    child_loads: Arc<AtomicUsize>,
}

async fn serve() -> Pages {
    let child_loads = Arc::new(AtomicUsize::new(0));
    let counter = child_loads.clone();
    let port = headless::serve_pages(move |request| {
        if request.path != "/" {
            None
        } else if request.host == format!("a.localhost:{}", request.port) {
            counter.fetch_add(1, Ordering::SeqCst);
            Some(
                "<!doctype html><title>child</title><p>child</p>\
                 <script>window.childSecret = 41 + 1; console.log(\"child says\", JSON.stringify({ n: 42 }));</script>"
                    .to_owned(),
            )
        } else {
            Some(format!(
                "<!doctype html><title>top</title><h1>top</h1>\
                 <iframe src=\"http://a.localhost:{}/\"></iframe>\
                 <script>window.topSecret = \"top\"; console.log(\"top says {{}}\");</script>",
                request.port
            ))
        }
    })
    .await
    .unwrap();
    Pages { port, child_loads }
}

#[tokio::test]
async fn the_harness_drives_a_page_and_its_cross_origin_iframe() {
    let pages = serve().await;
    let browser = Browser::launch().await;
    let mut console = browser.console();
    let tab = browser.open(&format!("http://127.0.0.1:{}/", pages.port)).await;
    tab.wait_for("document.readyState === 'complete' && window.topSecret === 'top'").await;

    // The iframe is another origin: the top page cannot read its document.
    let blocked = tab.try_eval("frames[0].document.title").await.unwrap_err();
    assert!(blocked.contains("SecurityError") || blocked.contains("cross-origin"), "{blocked}");

    // Inside it, through its own session.
    let child_prefix = format!("http://a.localhost:{}/", pages.port);
    let frame = tab.frame(&child_prefix).await;
    frame.wait_for("window.childSecret === 42").await;
    assert_eq!(frame.eval("location.origin").await, format!("http://a.localhost:{}", pages.port));
    assert_eq!(frame.eval("document.title").await, "child");
    // The console of both, from their first line (the iframe waits for the harness on start).
    let [top, child] = console.wait_all(["top says", "child says"]).await;
    assert_eq!((top, child), (serde_json::json!({}), serde_json::json!({ "n": 42 })));

    // Promises are awaited; values come back as JSON, BigInts as their text.
    let awaited = tab.eval("new Promise(resolve => setTimeout(() => resolve({ a: [1, 'two'] }), 5))").await; // SLEEP-OK: the page's timer is the promise under test
    assert_eq!(awaited, serde_json::json!({ "a": [1, "two"] }));
    assert_eq!(tab.eval("2n ** 64n - 1n").await, "18446744073709551615n");
    assert_eq!(tab.eval("undefined").await, serde_json::Value::Null);
    let thrown = tab.try_eval("Promise.reject(new TypeError('no such thing'))").await.unwrap_err();
    assert!(thrown.contains("TypeError: no such thing"), "{thrown}");

    // A reload loads the iframe's document again: a new session answers for it.
    assert_eq!(pages.child_loads.load(Ordering::SeqCst), 1);
    tab.eval("window.before = true").await;
    tab.reload().await;
    tab.wait_for("document.readyState === 'complete' && window.before === undefined && window.topSecret === 'top'")
        .await;
    assert_eq!(console.wait_json("child says").await, serde_json::json!({ "n": 42 }));
    let again = tab.frame(&child_prefix).await;
    again.wait_for("window.childSecret === 42").await;
    assert_eq!(pages.child_loads.load(Ordering::SeqCst), 2);

    // A screenshot is a PNG.
    tab.set_viewport(640, 400).await;
    let png = tab.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 1000, "a {}-byte PNG", png.len());

    // Closing the tab: it is gone from the browser's targets.
    let id = tab.id().to_owned();
    assert!(browser.tabs().await.contains(&id));
    tab.close().await;
    let tabs = browser.tabs().await;
    assert!(!tabs.contains(&id), "{tabs:?}");
}

#[test]
fn missing_chromium_fails_saying_how_to_install_it() {
    let error = chromium_path(Some("/nonexistent/chromium".into())).unwrap_err();
    assert!(error.contains("/nonexistent/chromium"), "{error}");
    assert!(error.contains("apt-get install -y --no-install-recommends chromium"), "{error}");
    assert!(error.contains("cargo xtask test"), "{error}");
}

#[tokio::test]
async fn chromium_does_not_outlive_its_harness_even_on_a_panic() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let panicked = tokio::spawn(async move {
        let browser = Browser::launch().await;
        tx.send(browser.pid()).unwrap();
        panic!("a test fails with its browser open (on purpose)");
    })
    .await
    .unwrap_err();
    assert!(panicked.is_panic());
    let pid = rx.await.unwrap();
    // Killed and reaped by the harness's drop: the pid is gone.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "Chromium {pid} outlived its harness");
}
