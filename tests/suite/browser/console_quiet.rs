//! The bootstrap's `ready` reaches its parent's origin only: with shell origins listed beyond
//! the shell it is in, no page logs a refused `postMessage`. Chromium logs one in the shell's
//! console per target origin that is not the shell's when the iframe shares the shell's
//! process (site isolation off, as on Android and in some webviews; with it on, the browser
//! process drops them silently), so this browser runs without site isolation.

use extension_host::WebConfig;

use super::Browser;
use super::web::{WebHost, web_ready};
use crate::support;

#[tokio::test]
async fn a_renderer_in_a_shell_with_other_shell_origins_listed_logs_no_refused_post_message() {
    let config = WebConfig {
        shell_origins: vec!["http://127.0.0.1:3000".to_owned(), "app://dashboard".to_owned()],
        ..WebConfig::default()
    };
    let host = support::host_from(support::Transport::InProcess, support::config(), &["webprobe"]).await;
    let server = host.serve_web(config).expect("the web server starts");
    let browser =
        Browser::launch_with(&["--disable-site-isolation-trials", "--disable-features=site-per-process"]).await;
    let web = WebHost { host, server: Some(server), browser };
    let mut console = web.browser.console();
    let mut seen = web.host.broadcasts();
    let tab = web.browser.open(&web.url()).await;
    web_ready(&mut seen).await;
    // The iframe reported that it runs: every `ready` it posted was dispatched long before
    // (the shell answered the first with the token, then the page connected and ran), and
    // only then is this line logged.
    tab.wait_for("document.querySelector('article[data-extension=\"webprobe\"]')?.dataset.state === 'running'").await;
    tab.eval("console.log('console-quiet: the renderer runs'); true").await;
    let lines = console.until("console-quiet: the renderer runs").await;
    let refused: Vec<&String> = lines.iter().filter(|line| line.contains("postMessage")).collect();
    assert!(refused.is_empty(), "refused postMessages logged: {refused:#?}\nthe console:\n{}", lines.join("\n"));
    web.stop().await;
}
