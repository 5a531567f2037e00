//! Renderer handles outside their half: a handle kept after its frame closed, and
//! `Renderer::current()` in tasks the half did not spawn through its handle.

use extension_host::Host;
use probe_protocol::*;

use crate::support::*;

/// Keeps a clone of every renderer half's handle in the probe (see `LEAK_HANDLE`), and waits
/// until each half did.
async fn leak_handles(host: &Host, halves: usize) {
    let mut broadcasts = host.broadcasts();
    host.broadcast("probe", LEAK_HANDLE.name(), &()).unwrap();
    // Each half's mailbox is FIFO: once it answers the barrier, it has kept its handle.
    expect_pongs(host, &mut broadcasts, "probe", 0, halves).await;
}

async fn a_handle_kept_from_a_closed_frame_says_the_frame_is_closed(transport: Transport) {
    let host = host_for(transport, &["probe"]).await;
    let closed = open_frame(&host, transport).await;
    let _open = open_frame(&host, transport).await;
    leak_handles(&host, 3).await;
    host.close_frame(closed).await.unwrap();

    // The extension is still active; the frame of one of the handles is not.
    let report: Vec<String> = host.invoke("probe", TRY_LEAKED.name(), &(), FAILSAFE).await.unwrap();
    assert_eq!(report.len(), 16, "{report:#?}");
    let (stale, live): (Vec<&String>, Vec<&String>) =
        report.iter().partition(|line| line.starts_with(&format!("frame:{} ", closed.0)));
    assert_eq!(stale.len(), 8, "{report:#?}");
    assert!(stale[0].contains(" invoke: FrameClosed:"), "{report:#?}");
    for line in stale {
        assert!(line.contains(&format!("{closed} is closed")), "{line}");
        assert!(!line.contains("not active"), "{line}");
    }
    // The handle of the frame still open still works.
    for line in live {
        assert!(line.ends_with(": ok"), "{line}");
    }
    host.shutdown().await;
}

/// What each renderer half's plain task and plain thread found with `Renderer::current()`.
async fn plain_current(host: &Host, frames: usize) -> Vec<String> {
    let mut broadcasts = host.broadcasts();
    host.broadcast("probe", PLAIN_CURRENT.name(), &()).unwrap();
    let mut tags: Vec<String> =
        pongs(&mut broadcasts, "probe", frames).await.into_iter().map(|pong| pong.tag).collect();
    tags.sort();
    tags
}

/// Where one renderer half runs in its instance, a plain `tokio::spawn` task or thread finds
/// it, as `Main::get()` finds main: always in a renderer process, and in process while the
/// frame is the only one the instance ever ran.
async fn a_plain_task_finds_the_only_renderer_half(transport: Transport) {
    let host = host_with_frames(transport, &["probe"], 1).await;
    assert_eq!(plain_current(&host, 1).await, ["plain:task=own;thread=own"]);
    host.shutdown().await;
}

conformance!(a_plain_task_finds_the_only_renderer_half);

// A renderer process serves one frame: its instance ends with the frame (no handle of it is
// left to try) and never holds two renderer halves.
same_instance!(
    a_handle_kept_from_a_closed_frame_says_the_frame_is_closed,
    in_one_instance_a_plain_task_is_told_why_its_frame_is_ambiguous,
);

#[tokio::test]
async fn in_renderer_processes_a_plain_task_finds_its_frame_however_many_there_are() {
    let host = host_with_frames(Transport::ChildProcess, &["probe"], 2).await;
    assert_eq!(plain_current(&host, 2).await, ["plain:task=own;thread=own"; 2]);
    let frame = host.frames()[0];
    host.reload_frame(frame).await.unwrap();
    assert_eq!(plain_current(&host, 2).await, ["plain:task=own;thread=own"; 2]);
    host.shutdown().await;
}

/// Several renderer halves in one instance (in-process frames), or one that replaced an
/// earlier one (whose plain tasks may still run): a plain task cannot tell which frame it
/// belongs to, and is told so.
async fn in_one_instance_a_plain_task_is_told_why_its_frame_is_ambiguous(transport: Transport) {
    let host = host_with_frames(transport, &["probe"], 2).await;
    let refused = "Renderer::current(): not called from a renderer half's code";
    for tag in plain_current(&host, 2).await {
        assert!(tag.starts_with("plain:task=") && tag.matches(refused).count() == 2, "{tag}");
        assert!(tag.contains("Renderer::spawn"), "{tag}");
    }
    // One frame left, but not the only one this instance ran.
    host.close_frame(host.frames()[0]).await.unwrap();
    let tags = plain_current(&host, 1).await;
    assert_eq!(tags[0].matches(refused).count(), 2, "{tags:?}");
    host.shutdown().await;
}
