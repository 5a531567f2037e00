//! Large values on a child connection, end to end: sizes on both sides of the readers' 64 KiB
//! scratch buffer and far past it (a frame the kernel splits across many reads), messages
//! exactly at `abi::MAX_MESSAGE` and one byte over, both ways (from a renderer process to main
//! and back; to an isolated main and back), and a child's frame exactly at the packet limit
//! and one byte over.

use extension_api::abi::MAX_MESSAGE;
use extension_host::HostEvent;
use extension_host::child_protocol::MAX_PACKET;

use crate::limits::{Do, Report, run};
use crate::support::{self, Transport, library, wait_event, wait_log};

/// Value sizes whose frames end just before, at and just after the readers' 64 KiB scratch
/// buffer (a frame carries its value and about 70 bytes of packet), the encodings' length
/// boundaries, and large ones the kernel hands over in many reads.
fn sizes() -> Vec<u64> {
    let mut sizes = vec![0, 1, 255, 256, 65_535, 65_536, 65_537, 131_072, 1 << 20, (1 << 20) + 1, 5 << 20];
    sizes.extend((65_536 - 160..65_536 - 20).step_by(3));
    sizes
}

/// The value goes from the renderer half to main (`invoke`: main answers its length) and from
/// main to the renderer half (`invoke-reply`: main answers that many bytes), whole, at every
/// size: across a renderer process's connection, and across an isolated main's (where the
/// renderer half is in the host's process), so each direction of each kind of connection.
async fn values_of_every_size_cross_a_child_connection_whole_both_ways(transport: Transport) {
    let host = support::host_for(transport, &["sizes"]).await;
    let frame = support::open_frame(&host, transport).await.0;
    let mut seen = host.broadcasts();
    for size in sizes() {
        for op in ["invoke", "invoke-reply"] {
            assert_eq!(run(&host, &mut seen, frame, op, size).await, format!("ok:{size}"), "{op} of {size} bytes");
        }
    }
    host.shutdown().await;
}

/// A message exactly at the limit (channel name and value: `MAX_MESSAGE` bytes) crosses, both
/// ways; one byte more is refused to its sender with the limit, and the connection goes on.
async fn a_message_at_the_limit_crosses_and_one_byte_over_is_refused_both_ways(transport: Transport) {
    let host = support::host_for(transport, &["sizes"]).await;
    let frame = support::open_frame(&host, transport).await.0;
    let mut seen = host.broadcasts();
    let limit = MAX_MESSAGE as u64;
    // `invoke` sends the bytes on `len` (3 bytes) as a `bin32` (5 bytes of header); a reply has
    // no channel name.
    for (op, at_limit) in [("invoke", limit - 8), ("invoke-reply", limit - 5)] {
        assert_eq!(run(&host, &mut seen, frame, op, at_limit).await, format!("ok:{at_limit}"), "{op} at the limit");
        let over = run(&host, &mut seen, frame, op, at_limit + 1).await;
        assert!(over.starts_with("err:TooLarge:") && over.contains(&MAX_MESSAGE.to_string()), "{op}: {over}");
        assert_eq!(run(&host, &mut seen, frame, op, 16).await, "ok:16", "{op}: the connection goes on");
    }
    host.shutdown().await;
}

/// Large values in flight together, each its own bytes, come back byte for byte: on a child
/// connection each one's frame is lent to the library it is delivered to (the host's main, or
/// the renderer process's instance, for the replies), while the frames after it are read into
/// other buffers, and the buffers of the frames it released are read into again. The replies
/// are decoded as `Binary`, views of the frames they arrived in, and kept while the next round
/// arrives: a frame's buffer read into again while a view of it is kept fails this.
async fn large_values_in_flight_together_each_come_back_as_they_were_sent(transport: Transport) {
    let host = support::host_for(transport, &["sizes"]).await;
    let frame = support::open_frame(&host, transport).await.0;
    let mut seen = host.broadcasts();
    for size in [65_537, 300_000, 1 << 20] {
        for _ in 0..3 {
            let outcome = run(&host, &mut seen, frame, "echo-many", size).await;
            // (Sixteen of them: twice the fixture's `ECHOED`.)
            assert_eq!(outcome, format!("ok:16x{size}"), "values of {size} bytes");
        }
    }
    host.shutdown().await;
}

/// What the sizes extension's `Binary` values keep, as inspect reports it (all its instances).
async fn binary_bytes(host: &extension_host::Host) -> u64 {
    let snapshot = host.inspect().await;
    let sizes = snapshot.extension("sizes").expect("sizes is loaded");
    // An instance that did not answer would be left out of the sum.
    assert_eq!(sizes.unanswered, 0, "every instance answers inspect");
    sizes.instance.as_ref().map_or(0, |instance| instance.binary_bytes)
}

/// A `Binary` is a view of the message it came in, not a copy: a request that main's handler
/// keeps, a reply that the renderer half keeps and an event that main's listener keeps each
/// keep their message whole (inspect's `binary_bytes`: lent by the host's or the renderer
/// process's reader, on a child connection), and dropping them gives it all back.
async fn binary_values_keep_the_messages_they_came_in_until_dropped(transport: Transport) {
    const SIZE: u64 = 1 << 20;
    // Each message is the value and a few bytes of MessagePack around it.
    let kept_about = |messages: u64| messages * SIZE..messages * (SIZE + 16);
    let host = support::host_for(transport, &["sizes"]).await;
    let frame = support::open_frame(&host, transport).await.0;
    let mut seen = host.broadcasts();
    assert_eq!(binary_bytes(&host).await, 0);

    assert!(run(&host, &mut seen, frame, "keep", SIZE).await.starts_with("ok:"));
    let kept = binary_bytes(&host).await;
    assert!(kept_about(1).contains(&kept), "a request main keeps: {kept}");

    assert!(run(&host, &mut seen, frame, "keep-reply", SIZE).await.starts_with("ok:"));
    let kept = binary_bytes(&host).await;
    assert!(kept_about(2).contains(&kept), "and a reply the renderer half keeps: {kept}");

    // The report and main's answer may come in either order.
    host.broadcast("sizes", "do", &Do { frame, op: "keep-broadcast", size: SIZE, key: "" }).unwrap();
    let both = async {
        let (mut reported, mut answered) = (false, false);
        while !(reported && answered) {
            let broadcast = seen.recv().await.expect("the broadcast stream goes on");
            if broadcast.extension != "sizes" {
                continue;
            }
            match broadcast.channel.as_str() {
                "report" => {
                    assert_eq!(broadcast.value::<Report>().expect("a report").outcome, "ok:sent");
                    reported = true;
                }
                "got" => {
                    assert_eq!(broadcast.value::<(String, u64)>().expect("a `got`"), ("main".to_owned(), SIZE));
                    answered = true;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(support::FAILSAFE, both).await.expect("the broadcast is sent and main's listener answers");
    let kept = binary_bytes(&host).await;
    assert!(kept_about(3).contains(&kept), "and an event main's listener keeps: {kept}");

    assert_eq!(run(&host, &mut seen, frame, "forget", 0).await, "ok:3");
    assert_eq!(binary_bytes(&host).await, 0, "all given back");
    host.shutdown().await;
}

conformance!(
    binary_values_keep_the_messages_they_came_in_until_dropped,
    large_values_in_flight_together_each_come_back_as_they_were_sent,
    values_of_every_size_cross_a_child_connection_whole_both_ways,
    a_message_at_the_limit_crosses_and_one_byte_over_is_refused_both_ways,
);

/// A child's frame of exactly `MAX_PACKET` bytes is read and handled; a length prefix one
/// byte over closes the connection, naming why.
#[tokio::test]
async fn a_childs_frame_at_the_packet_limit_is_read_and_one_byte_over_cuts_it_off() {
    let host = support::rogue_host("limit");
    host.load(library("probe")).unwrap();
    host.activate("probe").await.unwrap();
    let mut events = host.events();
    let mut logs = host.logs();
    host.open_child_frame().await.unwrap();
    // The log packet at the limit, forwarded whole (its text is all but the packet's envelope).
    let record = wait_log(&mut logs, "probe", |message| message.len() > MAX_PACKET - 100).await;
    assert!(record.message.bytes().all(|byte| byte == b'x'), "the text arrives intact");
    let crashed = wait_event(&mut events, |event| matches!(event, HostEvent::FrameCrashed { .. })).await;
    let HostEvent::FrameCrashed { reason, .. } = crashed else { unreachable!() };
    assert!(reason.contains("frame size too big"), "{reason}");
    assert!(reason.contains(&(MAX_PACKET + 1).to_string()), "the reason names the size: {reason}");
    host.shutdown().await;
}
