//! An application's own shell (`WebConfig::shell_origins`), on the wire: the shell socket
//! accepts exactly the listed origins (and the host's own), the extensions' documents may be
//! framed by them and name them to their bootstrap, `/embed.js` carries CORS for them only,
//! and nothing else is opened up. A list with an entry that is not an exact origin is refused
//! at start, naming it and why. They play the shell and the page with `web_protocol.rs`'s helpers.

use extension_host::WebConfig;

use super::{
    Page, Shell, main_frames, page_socket, port, raw_request, reached, refused_with, settle, upgrade, web_host,
};

const APP: &str = "http://127.0.0.1:3000";
const WEBVIEW: &str = "app://dashboard";

/// A shell socket from a page on `origin` (the `Host` is the shell's).
async fn shell_from(port: u16, origin: &str) -> Shell {
    let mut ws = upgrade(port, "/shell", &format!("127.0.0.1:{port}"), Some(origin))
        .await
        .unwrap_or_else(|error| panic!("a shell on {origin} connects: {error}"));
    let first = Shell::json(&mut ws).await;
    assert_eq!(first["type"], "frame", "{first}");
    Shell { frame: first["frame"].as_u64().unwrap(), ws }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_shell_origin_is_a_web_frame_and_nothing_else_is_opened_up() {
    let config =
        WebConfig { shell_origins: vec![APP.to_owned(), "APP://Dashboard".to_owned()], ..WebConfig::default() };
    let (host, server) = web_host(&["probe"], true, config).await;
    let port = port(&server);
    let shell_host = format!("127.0.0.1:{port}");
    let before = reached(&host).await;

    // Origins not in the list, however close, are refused at the upgrade; so is a listed
    // origin with a forged `Host` (the Host allow-list is unchanged).
    for origin in ["http://127.0.0.1:3001", "https://127.0.0.1:3000", "http://127.0.0.1:3000/", "null", "app://other"] {
        assert_eq!(refused_with(upgrade(port, "/shell", &shell_host, Some(origin)).await), 403, "{origin}");
    }
    assert_eq!(refused_with(upgrade(port, "/shell", "127.0.0.1:3000", Some(APP)).await), 403);
    assert_eq!(refused_with(upgrade(port, "/shell", &format!("evil.example:{port}"), Some(APP)).await), 403);
    assert!(host.frames().is_empty(), "no frame opened");
    assert_eq!(reached(&host).await, before, "nothing reached the probe");

    // Each listed origin (the entry as given, lowercased: what a browser sends) opens a frame,
    // and is told its iframes' origins and tokens.
    let mut app = shell_from(port, APP).await;
    let (name, origin, token) = app.add().await;
    assert_eq!(name, "probe");
    let mut app_page = Page::connect(port, &origin, &token, "probe").await;
    assert_eq!(app_page.frame, app.frame);
    app_page.start().await;
    let mut webview = shell_from(port, WEBVIEW).await;
    let (_, same_origin, other_token) = webview.add().await;
    assert_eq!(same_origin, origin, "one origin per extension");
    assert_ne!(other_token, token, "a token per (frame, extension)");
    let mut webview_page = Page::connect(port, &origin, &other_token, "probe").await;
    webview_page.start().await;
    settle(&host).await;
    let mut frames = main_frames(&host).await;
    frames.sort_unstable();
    assert_eq!(frames, [app.frame, webview.frame], "each is a frame main knows");

    // The extension's document may be framed by the shells (the host's and the listed ones)
    // and names them to its bootstrap; nothing else.
    let ext_host = origin.trim_start_matches("http://");
    let document = raw_request(port, &format!("GET / HTTP/1.1\r\nHost: {ext_host}\r\n\r\n")).await;
    let shells = format!("http://127.0.0.1:{port} http://localhost:{port} {APP} {WEBVIEW}");
    assert!(document.contains(&format!("frame-ancestors {shells}\r\n")), "{document}");
    assert!(document.contains(&format!("<meta name=\"extension-host-shell\" content=\"{shells}\">")), "{document}");
    // The page's own socket still takes only its own origin: a shell origin is not a page's.
    assert_eq!(refused_with(page_socket(port, &origin, APP).await), 403);

    // `/embed.js` and what it imports: CORS for a listed origin only, never `*`.
    for path in ["/embed.js", "/frames.js"] {
        let get = |origin: &str| format!("GET {path} HTTP/1.1\r\nHost: {shell_host}\r\nOrigin: {origin}\r\n\r\n");
        let allowed = raw_request(port, &get(APP)).await.to_ascii_lowercase();
        assert!(allowed.starts_with("http/1.1 200"), "{allowed}");
        assert!(allowed.contains(&format!("access-control-allow-origin: {APP}\r\n")), "{allowed}");
        assert!(allowed.contains("vary: origin") && allowed.contains("content-type: text/javascript"), "{allowed}");
        let other = raw_request(port, &get("http://127.0.0.1:3001")).await.to_ascii_lowercase();
        assert!(other.starts_with("http/1.1 200") && !other.contains("access-control-allow-origin"), "{other}");
        // Not on an extension's origin.
        let on_extension = raw_request(port, &format!("GET {path} HTTP/1.1\r\nHost: {ext_host}\r\n\r\n")).await;
        assert!(on_extension.starts_with("HTTP/1.1 404"), "{on_extension}");
    }
    drop((app, webview, app_page, webview_page));
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shell_origins_another_origin_cannot_open_the_shell_socket() {
    let (host, server) = web_host(&["probe"], true, WebConfig::default()).await;
    let port = port(&server);
    let shell_host = format!("127.0.0.1:{port}");
    assert_eq!(refused_with(upgrade(port, "/shell", &shell_host, Some(APP)).await), 403);
    let embed =
        raw_request(port, &format!("GET /embed.js HTTP/1.1\r\nHost: {shell_host}\r\nOrigin: {APP}\r\n\r\n")).await;
    assert!(!embed.to_ascii_lowercase().contains("access-control-allow-origin"), "{embed}");
    // Both names of the host's own shell open a frame.
    shell_from(port, &format!("http://127.0.0.1:{port}")).await;
    shell_from(port, &format!("http://localhost:{port}")).await;
    server.shutdown().await;
    host.shutdown().await;
}

#[tokio::test]
async fn a_shell_origin_that_is_not_an_exact_origin_is_refused_at_start_naming_it_and_why() {
    let host = extension_host::Host::new(crate::support::config());
    for (bad, why) in [
        ("null", "`null` is the origin of every sandboxed"),
        ("*", "wildcards are not allowed"),
        ("http://*.example.com", "wildcards are not allowed"),
        ("http://127.0.0.1:3000/", "no path"),
        ("http://127.0.0.1:3000/shell.html", "no path"),
        ("127.0.0.1:3000", "expected `scheme://host[:port]`"),
        ("http://app.example:80", "default port"),
        ("http://127.0.0.1:70000", "port is not a number"),
        ("http://user@app.example", "user name"),
        ("http://", "host is empty"),
        // A Content-Security-Policy cannot name an IPv6 address: Chromium drops the source, and
        // `frame-ancestors` would refuse the shell every iframe.
        ("http://[::1]:3000", "IPv6"),
        // A host a browser reads as an IPv4 address is in its `Origin` as dotted decimal: any
        // other spelling would never match.
        ("http://127.1:3000", "a browser writes it as `http://127.0.0.1:3000`"),
        ("http://0x7f.0.0.1:3000", "a browser writes it as `http://127.0.0.1:3000`"),
        ("http://2130706433:3000", "a browser writes it as `http://127.0.0.1:3000`"),
        ("http://127.0.0.1.:3000", "a browser writes it as `http://127.0.0.1:3000`"),
        ("http://127.0.0.256:3000", "not an IPv4 address"),
        // Schemes whose pages never send such an `Origin` (an opaque origin, `null`; a socket).
        ("file://localhost", "never in a page's `Origin`"),
        ("blob://x", "never in a page's `Origin`"),
        ("ws://127.0.0.1:3000", "never in a page's `Origin`"),
    ] {
        let config = WebConfig { shell_origins: vec![APP.to_owned(), bad.to_owned()], ..WebConfig::default() };
        let error = host.serve_web(config).expect_err(bad).to_string();
        assert!(error.contains(&format!("{bad:?} is refused")) && error.contains(why), "{bad}: {error}");
        assert!(error.contains("WebConfig::shell_origins"), "{error}");
    }
    host.shutdown().await;
}

/// `host run --web ADDR --shell-origin ORIGIN` lists an application's shell: a shell socket
/// from that origin opens a frame the console shows, and a bad entry stops the host at start,
/// naming the entry and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_run_shell_origin_lists_an_applications_shell_and_refuses_a_bad_entry() {
    let mut console = crate::console::Console::start_with(
        &["--frames", "0", "--web", "127.0.0.1:0", "--shell-origin", APP],
        &["probe"],
    )
    .await;
    let line = console.ask("open web", |line| line.starts_with("web frames: ")).await;
    let url = line.trim_start_matches("web frames: ").to_owned();
    let port: u16 = url.trim_start_matches("http://127.0.0.1:").trim_end_matches('/').parse().expect("a port");
    let shell = shell_from(port, APP).await;
    let frames = console.ask("frames", |line| line.starts_with("frames:")).await;
    assert_eq!(frames, format!("frames: {}(web {url})", shell.frame));
    assert_eq!(
        refused_with(upgrade(port, "/shell", &format!("127.0.0.1:{port}"), Some("http://127.0.0.1:3001")).await),
        403,
        "only the listed origin is added"
    );
    drop(shell);

    let output = tokio::process::Command::new(crate::support::host_binary())
        .env("XDG_DATA_HOME", crate::support::fresh_data_dir())
        .args(["run", "--frames", "0", "--web", "127.0.0.1:0", "--shell-origin", "http://127.0.0.1:3000/app"])
        .arg(crate::support::library("probe"))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("the host binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a bad shell origin stops the host: {stderr}");
    assert!(
        stderr.contains("\"http://127.0.0.1:3000/app\"") && stderr.contains("shell_origins"),
        "the error names the entry: {stderr}"
    );
    // Without `--web` there is nothing to list it in.
    let output = tokio::process::Command::new(crate::support::host_binary())
        .args(["run", "--frames", "0", "--shell-origin", APP])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("the host binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--web"), "{stderr}");
}
