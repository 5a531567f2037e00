//! The message packet's binary layout, from a hostile child: a ping whose packet is malformed
//! (a channel that is not UTF-8, a channel length past the packet's end, a first byte no packet
//! has, the message in MessagePack instead of its layout), or another packet with bytes after its
//! MessagePack value, is refused by the host's reader with
//! a reason that names what was wrong; the child is cut off, and nothing it sent is delivered.

use std::time::Duration;

use extension_host::{CrashBudget, Host, HostEvent};

use crate::support::{self, expect_pongs, library, wait_event};

/// A host whose child processes are the rogue fixture, misbehaving as `mode`.
fn rogue_host(mode: &str) -> Host {
    let mut config = support::config();
    config.child_program = support::artifacts().join("rogue-child");
    config.child_args = vec![mode.into()];
    config.crash_budget = CrashBudget { crashes: 0, window: Duration::from_secs(300) };
    Host::new(config)
}

#[tokio::test]
async fn a_malformed_message_packet_is_refused_with_its_reason() {
    for (mode, expected) in [
        ("bad-channel", "malformed packet: a message packet's channel is not UTF-8"),
        ("channel-past-end", "a message packet's channel of 4294967295 bytes runs past its end (15 bytes left)"),
        ("unknown-tag", "an unknown packet tag 0x07"),
        ("message-in-msgpack", "a message packet in MessagePack"),
        ("trailing-bytes", "has 9 bytes after its MessagePack value"),
    ] {
        let host = rogue_host(mode);
        host.load(library("probe")).unwrap();
        host.activate("probe").await.unwrap();
        let mut events = host.events();
        let mut seen = host.broadcasts();
        let frame = host.open_child_frame().await.unwrap();
        let crashed = wait_event(&mut events, |e| matches!(e, HostEvent::FrameCrashed { .. })).await;
        let HostEvent::FrameCrashed { reason, restarting, .. } = crashed else { unreachable!() };
        assert!(reason.contains(expected) && !restarting, "{mode}: {reason}");
        let problem = host.inspect().await.frame(frame.0).unwrap().problem.clone().unwrap();
        assert!(problem.contains("stopped"), "{mode}: {problem}");
        // The host goes on; the rogue ping reached no one (only main answers the barrier).
        assert!(expect_pongs(&host, &mut seen, "probe", 0, 1).await.is_empty());
        host.shutdown().await;
    }
}
