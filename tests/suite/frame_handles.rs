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

#[tokio::test]
async fn a_handle_kept_from_a_closed_frame_says_the_frame_is_closed() {
    let host = host_with(&["probe"]).await;
    let closed = host.open_frame().await;
    let _open = host.open_frame().await;
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
