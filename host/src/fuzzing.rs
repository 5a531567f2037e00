//! Entry points for the fuzz targets in `fuzz/` (not part of the host's API): what each end of
//! a child connection does with the bytes it reads, driven from a plain buffer instead of a
//! socket. Everything here calls the code the connections run; nothing is reimplemented.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Weak};

use crate::inbound::ChildReader;
use crate::remote::Connection;
use crate::remote::protocol::{Frame, Framing, Packet, decode_borrowed};

/// Keys the connection of [`receive_from_child`] was given (their instances are gone, so
/// packets for them are checked, then dropped).
pub const GIVEN_KEYS: [u64; 2] = [1, 2];
/// A key that connection had (a late packet for it is dropped).
pub const RETIRED_KEY: u64 = 3;
/// A key that connection waits on a load answer for.
pub const LOADING_KEY: u64 = 4;

/// A stream that hands out `bytes` at most `chunk` bytes per read (0: all at once), as a socket
/// delivers whatever has arrived.
struct Chunked<'a> {
    bytes: &'a [u8],
    chunk: usize,
}

impl crate::remote::protocol::ReadSpare for Chunked<'_> {}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut count = buf.len().min(self.bytes.len());
        if self.chunk > 0 {
            count = count.min(self.chunk);
        }
        let (now, rest) = self.bytes.split_at(count);
        buf[..count].copy_from_slice(now);
        self.bytes = rest;
        Ok(count)
    }
}

/// Reads frames from `bytes` with the connections' [`Framing`], `chunk` bytes per read (0:
/// all at once), as the readers do (`read_frame`: a large frame handed over in its own
/// buffer). Returns the frames read, and the error that ended the stream unless it ended
/// cleanly between frames.
pub fn read_frames(bytes: &[u8], chunk: usize) -> (Vec<Vec<u8>>, Option<io::Error>) {
    let mut stream = Chunked { bytes, chunk };
    let mut framing = Framing::default();
    let mut frames = Vec::new();
    loop {
        match framing.read_frame(&mut stream) {
            Ok(Some(Frame::Borrowed(frame))) => frames.push(frame.to_vec()),
            Ok(Some(Frame::Owned(frame))) => frames.push(frame),
            Ok(None) => return (frames, None),
            Err(error) => return (frames, Some(error)),
        }
    }
}

/// The child's reader: every frame decoded as a packet, until the first malformed one (which
/// ends the child).
pub fn decode_frames(bytes: &[u8], chunk: usize) -> (Vec<Packet>, Option<String>) {
    let (frames, error) = read_frames(bytes, chunk);
    let mut packets = Vec::with_capacity(frames.len());
    for frame in frames {
        match decode_borrowed(&frame) {
            Ok(packet) => packets.push(packet.into_owned()),
            Err(error) => return (packets, Some(format!("a malformed packet: {error}"))),
        }
    }
    (packets, error.map(|error| format!("unreadable frame: {error}")))
}

/// The host's reader: every frame of `bytes` handled by the host's end of a connection with no
/// child process behind it, given [`GIVEN_KEYS`], having had [`RETIRED_KEY`] and waiting to
/// hear about [`LOADING_KEY`], until the first protocol violation or unreadable frame (which
/// would close the connection). Returns how many packets were accepted, and why it stopped
/// before the end of `bytes`.
pub fn receive_from_child(bytes: &[u8], chunk: usize) -> (usize, Option<String>) {
    let writer = match UnixStream::pair() {
        Ok((writer, _other_end)) => writer,
        Err(error) => return (0, Some(format!("no socket pair: {error}"))),
    };
    let reader = ChildReader::new(Arc::new(Connection::detached(writer, &[LOADING_KEY])));
    for key in GIVEN_KEYS.into_iter().chain([RETIRED_KEY]) {
        reader.register(key, Weak::new(), Weak::new());
    }
    reader.retire(RETIRED_KEY);

    let (frames, error) = read_frames(bytes, chunk);
    let mut accepted = 0;
    for frame in frames {
        match reader.receive(&frame) {
            Ok(()) => accepted += 1,
            Err(violation) => return (accepted, Some(format!("protocol violation: {violation}"))),
        }
    }
    (accepted, error.map(|error| format!("unreadable frame: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::protocol::{Framing, PROTOCOL_VERSION};

    fn stream(packets: &[Packet]) -> Vec<u8> {
        let mut framing = Framing::default();
        packets.iter().flat_map(|packet| framing.frame(packet).unwrap().to_vec()).collect()
    }

    #[test]
    fn frames_come_out_the_same_however_the_stream_is_split() {
        let bytes = stream(&[Packet::Destroyed { key: 1 }, Packet::Loaded { key: LOADING_KEY }]);
        let (whole, error) = read_frames(&bytes, 0);
        assert_eq!((whole.len(), error.is_none()), (2, true));
        for chunk in 1..8 {
            let (frames, error) = read_frames(&bytes, chunk);
            assert_eq!(frames, whole);
            assert!(error.is_none());
        }
        let (frames, error) = read_frames(&bytes[..bytes.len() - 1], 3);
        assert_eq!(frames.len(), 1);
        assert_eq!(error.unwrap().kind(), io::ErrorKind::UnexpectedEof);
        let (packets, error) = decode_frames(&bytes, 5);
        assert_eq!(packets, vec![Packet::Destroyed { key: 1 }, Packet::Loaded { key: LOADING_KEY }]);
        assert!(error.is_none());
    }

    #[test]
    fn the_host_end_accepts_what_a_child_may_send_and_stops_at_a_violation() {
        let allowed = [
            Packet::Log { key: GIVEN_KEYS[0], level: 3, target: "t".into(), message: "m".into() },
            Packet::Complete { key: RETIRED_KEY, completion: 1, result: extension_api::wire::Completion::Done },
            Packet::Loaded { key: LOADING_KEY },
            Packet::Destroyed { key: 9 },
        ];
        assert_eq!(receive_from_child(&stream(&allowed), 0), (4, None));
        for (violation, reason) in [
            (Packet::Loaded { key: LOADING_KEY + 10 }, "an unrequested load answer"),
            (Packet::Log { key: 99, level: 1, target: String::new(), message: String::new() }, "does not belong"),
            (Packet::Welcome { protocol: PROTOCOL_VERSION }, "a child may not send Welcome"),
        ] {
            let (accepted, error) = receive_from_child(&stream(&[Packet::Destroyed { key: 1 }, violation]), 2);
            assert_eq!(accepted, 1);
            assert!(error.unwrap().contains(reason));
        }
        let (_, error) = receive_from_child(&[0, 0, 0, 2, 0xc1, 0xc1], 0);
        assert!(error.unwrap().contains("malformed packet"));
    }

    /// A packet holding an unknown field nested 1000 deep overflowed the decoding thread's stack
    /// in a debug build (the host's reader thread: a child could end the host). Now refused.
    #[test]
    fn regression_deeply_nested_packets_are_refused_not_a_stack_overflow() {
        let mut packet = crate::remote::protocol::encode(&Packet::Destroyed { key: 1 }).unwrap();
        // {"Destroyed": {"key": 1}} becomes {"Destroyed": {"key": 1, "x": [[[...]]]}}.
        assert_eq!(packet[11], 0x81);
        packet[11] = 0x82;
        packet.extend_from_slice(&[0xa1, b'x']);
        packet.extend(std::iter::repeat_n(0x91, 1000));
        packet.push(0xc0);
        let error = crate::remote::protocol::decode(&packet).unwrap_err();
        assert!(matches!(error, rmp_serde::decode::Error::DepthLimitExceeded), "{error}");
        let frame = [&(packet.len() as u32).to_be_bytes()[..], &packet].concat();
        let (accepted, violation) = receive_from_child(&frame, 0);
        assert_eq!(accepted, 0);
        assert!(violation.unwrap().contains("depth limit exceeded"));
    }
}
