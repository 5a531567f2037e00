//! Order and exactly-once delivery across the three kinds of frame at once: a Rust frame in
//! process, a renderer process, and a web frame in Chromium, all of one extension.

use extension_host::{FrameId, Sender};
use serde::Serialize;

use super::web::{WebHost, next_broadcast};
use crate::support::FAILSAFE;

const COUNT: u32 = 200;

#[derive(Serialize)]
struct AskFrame {
    frame: u64,
    channel: String,
    timeout_ms: u64,
}

#[tokio::test]
async fn order_and_exactly_once_hold_across_a_rust_frame_a_renderer_process_and_a_web_frame() {
    let web = WebHost::start(&["webprobe"]).await;
    let mut seen = web.host.broadcasts();
    let rust = web.host.open_frame().await;
    let child = web.host.open_child_frame().await.expect("a renderer process starts");
    let shell = web.open_shell().await;
    let frames = [rust, child, shell.frame];
    let mut listed = web.frames();
    listed.sort();
    assert_eq!(listed, frames.to_vec(), "Main::frames() lists the web frame with the others");

    // Renderer to main: each half sends COUNT values in order, alternating broadcasts and
    // requests (not waiting for the replies), then says how many requests failed.
    web.host.broadcast("webprobe", "go", &COUNT).unwrap();
    let mut done = Vec::new();
    while done.len() < frames.len() {
        let (sender, failed) = next_broadcast(&mut seen, "webprobe", "go-done", |_: &u32| true).await;
        assert_eq!(failed, 0, "{sender}: requests failed");
        done.push(sender);
    }
    for frame in frames {
        assert_eq!(done.iter().filter(|sender| **sender == Sender::Frame(frame)).count(), 1, "{done:?}");
    }
    let log: Vec<String> = web.host.invoke("webprobe", "seq-log", &(), FAILSAFE).await.unwrap();
    for frame in frames {
        let prefix = format!("{frame}:");
        let from: Vec<u32> =
            log.iter().filter_map(|entry| entry.strip_prefix(&prefix)).map(|n| n.parse().unwrap()).collect();
        assert_eq!(from, (0..COUNT).collect::<Vec<_>>(), "main saw {frame}'s values out of order or not once each");
    }
    assert_eq!(log.len(), COUNT as usize * frames.len(), "nothing else reached main");

    // Main to renderers: main broadcasts COUNT ticks; each half got each once, in order. Main
    // asks each frame after its ticks (one sender, one receiver: in order).
    web.host.broadcast("webprobe", "ticks-go", &COUNT).unwrap();
    let expected = format!("ok:[{}]", (0..COUNT).map(|n| format!("int {n}")).collect::<Vec<_>>().join(", "));
    for frame in frames {
        let ask = AskFrame { frame: frame.0, channel: "ticks".into(), timeout_ms: 10_000 };
        let ticks: String = web.host.invoke("webprobe", "ask-frame", &ask, FAILSAFE).await.unwrap();
        assert_eq!(ticks, expected, "{frame}");
    }
    let web_frame: FrameId = shell.frame;
    assert_eq!(shell.page.eval("webprobe.side").await, format!("web:{}", web_frame.0));
    web.stop().await;
}
