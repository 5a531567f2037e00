//! A name of `WebConfig::allowed_hosts` is a shell's origin (`http://NAME` and `https://NAME`)
//! through that name only: a page on such an origin that is not served through it (the name's
//! other scheme, which a network attacker can serve when a proxy adds TLS; another server of
//! that name) does not get the shell socket, and with it every token of its frame, by
//! connecting to `127.0.0.1` directly. Through the name, the shell's socket opens over either
//! scheme, the default port left out as a browser leaves it.

use extension_host::WebConfig;

use super::{Shell, refused_with, settle, upgrade, web_host};

/// A free loopback port (an allowed host names the port, so it is known before serving).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

#[tokio::test]
async fn an_allowed_hosts_origins_open_the_shell_socket_through_that_name_only() {
    let port = free_port();
    let named = format!("app.test:{port}");
    let config = WebConfig {
        addr: ([127, 0, 0, 1], port).into(),
        allowed_hosts: vec![named.clone(), "proxy.test:443".to_owned()],
        ..WebConfig::default()
    };
    let (host, server) = web_host(&["probe"], false, config).await;
    let own = format!("127.0.0.1:{port}");

    // Not through the name: refused, on either scheme.
    for origin in [format!("http://{named}"), format!("https://{named}"), "https://proxy.test".to_owned()] {
        assert_eq!(refused_with(upgrade(port, "/shell", &own, Some(&origin)).await), 403, "{origin} through {own}");
    }
    // Through another allowed name: refused too.
    assert_eq!(refused_with(upgrade(port, "/shell", "proxy.test:443", Some(&format!("http://{named}"))).await), 403);
    settle(&host).await;
    assert!(host.frames().is_empty(), "no frame opened");

    // Through the name, its origins' shells are frames.
    for (through, origin) in [
        (named.as_str(), format!("http://{named}")),
        (named.as_str(), format!("https://{named}")),
        ("proxy.test:443", "https://proxy.test".to_owned()),
    ] {
        let ws = upgrade(port, "/shell", through, Some(&origin)).await;
        assert!(ws.is_ok(), "{origin} through {through}: {ws:?}");
    }
    // The host's own shell is unchanged.
    drop(Shell::connect(port).await);
    server.shutdown().await;
    host.shutdown().await;
}
