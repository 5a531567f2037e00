//! The child-connection frame decoder: arbitrary bytes as they would arrive on a child's
//! socket, through the connections' length-delimited `Framing` (16 MiB limit) and
//! `protocol::decode_borrowed` (a message packet's binary layout, every other packet's
//! MessagePack), as the child's reader does, and through the host's end of a connection
//! (`Connection::receive`: decoding plus the checks on who may send what for which key).
//!
//! Input: the first byte is how many bytes each read of the socket hands out (0: all at once),
//! so frames and length prefixes get split at every place; the rest is the stream.

#![no_main]

use extension_api::abi;
use extension_api::message::Message;
use extension_api::wire::{self, Control, OwnedMessage};
use extension_host::child_protocol::{MAX_PACKET, Packet, decode, decode_borrowed, encode};
use extension_host::fuzzing::{decode_frames, read_frames, receive_from_child};
use extension_host_fuzz::on_decoding_stack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| on_decoding_stack(data, check));

fn check(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk);
    let (frames, error) = read_frames(stream, chunk);
    // However the stream is split into reads, the same frames come out.
    if chunk != 0 {
        let (whole, whole_error) = read_frames(stream, 0);
        assert_eq!(frames, whole, "frames differ between chunked and whole reads");
        assert_eq!(error.is_some(), whole_error.is_some(), "{error:?} vs {whole_error:?}");
    }
    for frame in &frames {
        assert!(frame.len() <= MAX_PACKET);
        // What the readers decode borrowing from the frame is what decodes into owned buffers.
        let borrowed = decode_borrowed(frame).map(Packet::into_owned);
        let Ok(packet) = decode(frame) else {
            assert!(borrowed.is_err(), "decoded borrowed only: {borrowed:?}");
            continue;
        };
        if let Ok(borrowed) = borrowed {
            assert_eq!(borrowed, packet, "borrowed and owned decoding differ");
        }
        // What decodes re-encodes to the same packet (the host and the child re-send values
        // they decoded: the child hands a `Control` on to the instance, for one).
        let again = encode(&packet).expect("a decoded packet encodes");
        // A message has one encoding: its layout, byte for byte.
        if let Packet::Message { .. } = &packet {
            assert_eq!(&again, frame, "a message re-encodes to other bytes");
        }
        assert_eq!(decode(&again).expect("a re-encoded packet decodes"), packet);
        match &packet {
            Packet::Control { command, .. } => {
                // The child re-encodes the command and the instance decodes it.
                let bytes = rmp_serde::to_vec_named(command).expect("a command encodes");
                assert_eq!(&wire::decode::<Control>(&bytes).expect("the command decodes"), command);
            }
            Packet::Message { message, .. } => {
                // The child delivers it as a borrowed `RawMessage`; the receiver validates and
                // copies it.
                let raw = message.as_message().to_raw();
                // SAFETY: `raw` borrows `message`, which outlives the copy.
                let copy = unsafe { Message::from_raw(&raw) }.expect("a decoded message copies").to_owned();
                let expected = match message.kind {
                    abi::kind::REPLY | abi::kind::CANCEL => OwnedMessage { channel: String::new(), ..message.clone() },
                    _ => message.clone(),
                };
                assert_eq!(copy, expected);
            }
            _ => {}
        }
    }
    // The frames are the same however the stream is split (checked above): the readers take
    // it whole, which spares each of them a 64 KiB buffer fill per read.
    let _ = decode_frames(stream, 0);
    let _ = receive_from_child(stream, 0);
}
