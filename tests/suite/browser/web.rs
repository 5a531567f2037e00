//! The browser tests' setup: a real host with real libraries, serving web frames, and a
//! headless Chromium with the host's shell open in a tab (the real shell, iframes and client).

use std::time::Duration;

use extension_host::{FrameId, Host, HostConfig, ObservedBroadcast, Sender, WebConfig, WebServer};
use tokio::sync::broadcast::Receiver;

use super::{Browser, Session, Tab};
use crate::support;

/// A host running `crates` in process, its web server, and a browser.
pub struct WebHost {
    pub host: Host,
    pub server: Option<WebServer>,
    pub browser: Browser,
}

/// The shell open in a tab: its web frame, and the session of webprobe's iframe in it.
pub struct Shell {
    pub tab: Tab,
    pub frame: FrameId,
    /// webprobe's iframe (`globalThis.webprobe` defined).
    pub page: Session,
}

impl WebHost {
    pub async fn start(crates: &[&str]) -> WebHost {
        WebHost::with_config(support::config(), crates).await
    }

    pub async fn with_config(config: HostConfig, crates: &[&str]) -> WebHost {
        WebHost::with_configs(config, WebConfig::default(), crates).await
    }

    pub async fn with_configs(config: HostConfig, web_config: WebConfig, crates: &[&str]) -> WebHost {
        let host = support::host_from(support::Transport::InProcess, config, crates).await;
        let server = host.serve_web(web_config).expect("the web server starts");
        let browser = Browser::launch().await;
        WebHost { host, server: Some(server), browser }
    }

    /// The shell's URL.
    pub fn url(&self) -> String {
        self.server.as_ref().expect("the server runs").url()
    }

    /// Opens the shell in a new tab and waits until webprobe's web renderer half runs there.
    pub async fn open_shell(&self) -> Shell {
        let mut seen = self.host.broadcasts();
        let tab = self.browser.open(&self.url()).await;
        let (frame, load) = web_ready(&mut seen).await;
        let page = webprobe_page(&tab, &load).await;
        // What webprobe's iframes post to the shell page, which outlives them.
        tab.eval(
            "window.webprobeReports = []; \
             addEventListener('message', (event) => { if (event.data?.webprobe) webprobeReports.push(event.data); }); true",
        )
        .await;
        Shell { tab, frame, page }
    }

    /// `Main::frames()` as the host knows it.
    pub fn frames(&self) -> Vec<FrameId> {
        self.host.frames()
    }

    /// Waits until the host no longer lists `frame` (a closed tab's shell socket closes its
    /// frame on its own schedule, apart from the page's socket that failed its requests).
    pub async fn wait_frame_closed(&self, frame: FrameId) {
        let deadline = std::time::Instant::now() + super::DEADLINE;
        while self.frames().contains(&frame) {
            assert!(
                std::time::Instant::now() < deadline,
                "{frame} still open {:?} after its tab closed",
                super::DEADLINE
            );
            // Polling, not synchronising: the host has no event for a frame that closed.
            tokio::time::sleep(Duration::from_millis(10)).await; // SLEEP-OK: polling the host's frame list, see above
        }
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        self.host.shutdown().await;
    }
}

impl Shell {
    /// The value of the first report `what` webprobe's iframe posted to the shell (see
    /// `report` in its `web/index.js`), once it is there.
    pub async fn report(&self, what: &str) -> serde_json::Value {
        let found = self.tab.wait_for(&format!("webprobeReports.find((report) => report.webprobe === {what:?})")).await;
        found["value"].clone()
    }
}

/// Waits for webprobe's `ready` from a web renderer half; its frame and page-load id.
pub async fn web_ready(seen: &mut Receiver<ObservedBroadcast>) -> (FrameId, String) {
    let ready = next_broadcast(seen, "webprobe", "ready", |value: &String| value.starts_with("web:")).await;
    let frame = match ready.0 {
        Sender::Frame(frame) => frame,
        other => panic!("`ready` from {other}, not a frame"),
    };
    (frame, ready.1)
}

/// webprobe's iframe in `tab`, once the page load `load` (its `ready` value) runs there.
pub async fn webprobe_page(tab: &Tab, load: &str) -> Session {
    let page = tab.frame("http://webprobe-").await;
    page.wait_for(&format!("globalThis.webprobe?.load === {load:?}")).await;
    page
}

/// The next broadcast of `extension` on `channel` whose value (as `T`) satisfies `matches`:
/// its sender and value.
pub async fn next_broadcast<T: serde::de::DeserializeOwned>(
    seen: &mut Receiver<ObservedBroadcast>,
    extension: &str,
    channel: &str,
    matches: impl Fn(&T) -> bool,
) -> (Sender, T) {
    let found = tokio::time::timeout(super::DEADLINE, async {
        loop {
            match seen.recv().await {
                Ok(broadcast) if broadcast.extension == extension && broadcast.channel == channel => {
                    if let Ok(value) = broadcast.value::<T>()
                        && matches(&value)
                    {
                        return (broadcast.sender(), value);
                    }
                }
                Ok(_) => {}
                Err(error) => panic!("broadcast stream ended: {error}"),
            }
        }
    });
    found.await.unwrap_or_else(|_| panic!("no `{channel}` broadcast of `{extension}` within {:?}", super::DEADLINE))
}

/// How long a request the tests expect to stay in flight may wait: longer than any test.
pub const FOREVER: Duration = Duration::from_secs(3600);
