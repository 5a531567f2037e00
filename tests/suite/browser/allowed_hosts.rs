//! The host's shell served under a name of `WebConfig::allowed_hosts`, in the browser: an
//! allowed name is one the embedder vouched for, so its shell works as `127.0.0.1`'s and
//! `localhost`'s do (its socket, its iframes framed, their tokens taken, the renderer talking
//! to main). Chromium resolves the name to loopback (`--host-resolver-rules`).

use extension_host::WebConfig;
use serde_json::json;

use super::Browser;
use super::web::{WebHost, web_ready, webprobe_page};
use crate::support;

/// The name the test's Chromium resolves to 127.0.0.1.
const NAME: &str = "app.test";

/// A free loopback port (the allowed host names the port, so it is known before serving).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

#[tokio::test]
async fn the_shell_under_an_allowed_host_frames_its_extensions_like_the_hosts_own() {
    let port = free_port();
    let config = WebConfig {
        addr: ([127, 0, 0, 1], port).into(),
        allowed_hosts: vec![format!("{NAME}:{port}")],
        ..WebConfig::default()
    };
    let host = support::host_from(support::Transport::InProcess, support::config(), &["webprobe"]).await;
    let server = host.serve_web(config).expect("the web server starts");
    let browser = Browser::launch_with(&[&format!("--host-resolver-rules=MAP {NAME} 127.0.0.1")]).await;
    let web = WebHost { host, server: Some(server), browser };
    let mut seen = web.host.broadcasts();

    let tab = web.browser.open(&format!("http://{NAME}:{port}/")).await;
    assert_eq!(tab.eval("location.origin").await, format!("http://{NAME}:{port}"));
    let (frame, load) = web_ready(&mut seen).await;
    assert_eq!(web.frames(), [frame], "the allowed host's shell is the frame");
    let page = webprobe_page(&tab, &load).await;
    let echoed = page.eval(r#"webprobe.outcome(webprobe.ipc.invoke("echo", { from: "app.test" }))"#).await;
    assert_eq!(echoed, json!({ "ok": { "from": "app.test" } }));
    page.eval("globalThis.heard = []; webprobe.ipc.listen('named-news', (value) => heard.push(value)); true").await;
    web.host.broadcast("webprobe", "named-news", &"from main").unwrap();
    assert_eq!(page.wait_for("heard[0]").await, "from main");
    web.stop().await;
}

#[tokio::test]
async fn an_allowed_host_that_is_not_a_host_value_is_refused_at_start_naming_it_and_why() {
    let host = support::host_from(support::Transport::InProcess, support::config(), &["webprobe"]).await;
    for (bad, why) in [
        ("http://app.test:3000", "no scheme"),
        ("app.test:3000/shell", "no path"),
        ("*.test", "wildcards"),
        ("[::1]:3000", "IPv6"),
        ("app.test;frame-ancestors 'self'", "characters a host name cannot have"),
        // As a `Host` value, without the scheme an entry may not have.
        ("127.1:3000", "`127.0.0.1:3000`: list it so"),
    ] {
        let config = WebConfig { allowed_hosts: vec![bad.to_owned()], ..WebConfig::default() };
        let error = host.serve_web(config).err().unwrap_or_else(|| panic!("{bad} accepted")).to_string();
        assert!(error.contains("WebConfig::allowed_hosts") && error.contains(why), "{bad}: {error}");
    }
    host.shutdown().await;
}

/// One HTTP/1.1 request to the server on `port`, its whole response as text.
async fn raw_get(port: u16, path: &str, host: &str, origin: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("the server is there");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).to_ascii_lowercase()
}

#[tokio::test]
async fn an_applications_shell_loads_embed_js_through_an_allowed_host_with_cors() {
    let port = free_port();
    let app = "http://127.0.0.1:3000";
    let config = WebConfig {
        addr: ([127, 0, 0, 1], port).into(),
        allowed_hosts: vec![format!("{NAME}:{port}")],
        shell_origins: vec![app.to_owned()],
        ..WebConfig::default()
    };
    let host = support::host_from(support::Transport::InProcess, support::config(), &["webprobe"]).await;
    let server = host.serve_web(config).expect("the web server starts");
    let named = format!("{NAME}:{port}");
    let allowed = raw_get(port, "/embed.js", &named, app).await;
    assert!(allowed.starts_with("http/1.1 200"), "{allowed}");
    assert!(allowed.contains(&format!("access-control-allow-origin: {app}\r\n")), "{allowed}");
    let other = raw_get(port, "/embed.js", &named, "http://127.0.0.1:3001").await;
    assert!(other.starts_with("http/1.1 200") && !other.contains("access-control-allow-origin"), "{other}");
    // The shell's document there may open its own socket (its CSP's `connect-src`).
    let shell = raw_get(port, "/", &named, app).await;
    assert!(
        shell.contains(&format!("connect-src ws://127.0.0.1:{port} ws://localhost:{port} ws://{named}")),
        "{shell}"
    );
    server.shutdown().await;
    host.shutdown().await;
}
