//! The message packet's binary layout, from a hostile child: a ping whose packet is malformed
//! (a channel that is not UTF-8, a channel length past the packet's end, a first byte no packet
//! has, the message in MessagePack instead of its layout), or another packet with bytes after its
//! MessagePack value, is refused by the host's reader with
//! a reason that names what was wrong; the child is cut off, and nothing it sent is delivered.

use crate::support;

#[tokio::test]
async fn a_malformed_message_packet_is_refused_with_its_reason() {
    for (mode, expected) in [
        ("bad-channel", "malformed packet: a message packet's channel is not UTF-8"),
        ("channel-past-end", "a message packet's channel of 4294967295 bytes runs past its end (15 bytes left)"),
        ("unknown-tag", "an unknown packet tag 0x07"),
        ("message-in-msgpack", "a message packet in MessagePack"),
        ("trailing-bytes", "has 9 bytes after its MessagePack value"),
    ] {
        support::assert_rogue_child_cut_off(mode, expected).await;
    }
}
