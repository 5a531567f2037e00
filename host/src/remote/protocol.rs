//! The protocol between the host and a child process (a renderer process, or an isolated
//! extension's process): plain data, no I/O. Each packet is one MessagePack value (named
//! fields) in a length-delimited frame; the child's `Hello` and the host's `Welcome` come first.

use std::io::{self, IoSlice, Read, Write};
use std::path::PathBuf;

use bytes::Bytes;
use extension_api::message::Message;

pub use extension_api::wire::OwnedMessage;
use extension_api::wire::{Completion, Control, InstanceConfig};
use serde::{Deserialize, Serialize};

/// Bump on any change to [`Packet`].
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest packet either side accepts; a longer length prefix closes the connection. It is
/// the message limit plus room for the envelope, so any message within
/// [`extension_api::abi::MAX_MESSAGE`] (and a store snapshot within its limit) always fits.
pub const MAX_PACKET: usize = extension_api::abi::MAX_MESSAGE + ENVELOPE;

/// Room in a packet for everything but a message's channel name and value.
const ENVELOPE: usize = 64 << 10;

/// Everything that travels on a child connection. `key` is an instance key the host assigned
/// to this connection: the host refuses any other. A message is an [`OwnedMessage`] by
/// default; the connections read and write a borrowed [`Message`], which travels alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Packet<M = OwnedMessage> {
    /// Child to host, first: the protocol it speaks and the token it was started with.
    Hello {
        /// The child's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The token from the child's command line.
        token: String,
        /// The child's process id.
        pid: u32,
    },
    /// Host to child: the handshake succeeded.
    Welcome {
        /// The host's [`PROTOCOL_VERSION`].
        protocol: u32,
    },
    /// Host to child: load the library at `path` and start an instance of it under `key`.
    Load {
        /// The instance key the host assigned.
        key: u64,
        /// The library to load.
        path: PathBuf,
        /// The instance's configuration.
        config: InstanceConfig,
    },
    /// Child to host: the instance runs.
    Loaded {
        /// The instance's key.
        key: u64,
    },
    /// Child to host: the library could not be loaded or started.
    LoadFailed {
        /// The instance's key.
        key: u64,
        /// Why, in words.
        reason: String,
    },
    /// Host to child: a lifecycle or query command for the instance.
    Control {
        /// The instance's key.
        key: u64,
        /// The command (it carries its completion number).
        command: Control,
    },
    /// Child to host: the answer to a command.
    Complete {
        /// The instance's key.
        key: u64,
        /// The command's completion number.
        completion: u64,
        /// Its outcome.
        result: Completion,
    },
    /// Either way: an IPC message of the instance (to it, or from one of its halves).
    Message {
        /// The instance's key.
        key: u64,
        /// The message.
        message: M,
    },
    /// Child to host: a tracing event of the instance.
    Log {
        /// The instance's key.
        key: u64,
        /// 1 (error) to 5 (trace): `extension_api::message::level_number`.
        level: u32,
        /// The tracing target (module path) inside the extension.
        target: String,
        /// The event's text.
        message: String,
    },
    /// Host to child: stop the instance and forget it.
    Destroy {
        /// The instance's key.
        key: u64,
    },
    /// Child to host: the instance is gone.
    Destroyed {
        /// The instance's key.
        key: u64,
    },
}

impl Packet<Message<'_>> {
    /// The packet with its message (if it is one) copied out of the frame it borrows from.
    pub fn into_owned(self) -> Packet {
        match self {
            Packet::Message { key, message } => Packet::Message { key, message: message.to_owned() },
            Packet::Hello { protocol, token, pid } => Packet::Hello { protocol, token, pid },
            Packet::Welcome { protocol } => Packet::Welcome { protocol },
            Packet::Load { key, path, config } => Packet::Load { key, path, config },
            Packet::Loaded { key } => Packet::Loaded { key },
            Packet::LoadFailed { key, reason } => Packet::LoadFailed { key, reason },
            Packet::Control { key, command } => Packet::Control { key, command },
            Packet::Complete { key, completion, result } => Packet::Complete { key, completion, result },
            Packet::Log { key, level, target, message } => Packet::Log { key, level, target, message },
            Packet::Destroy { key } => Packet::Destroy { key },
            Packet::Destroyed { key } => Packet::Destroyed { key },
        }
    }
}

/// The length prefix of a frame: the packet's length, 4 bytes big-endian (what tokio-util's
/// `LengthDelimitedCodec` reads and writes by default).
const PREFIX: usize = 4;

/// The read buffer of a connection: what a read asks the socket for between frames and inside
/// small ones, so that one read takes many small frames at once.
const SCRATCH: usize = 64 << 10;

/// A large frame's buffer is kept for the next one if it is no larger than this (a frame of a
/// 1 MiB value then reuses it, instead of faulting in fresh pages every time).
const KEEP_LARGE: usize = 2 << 20;

/// Length-delimited frames on a blocking stream, driven synchronously so that whichever thread
/// sends writes to the socket itself, with no hop to a writer task.
///
/// Reading: a frame that fits in the 64 KiB scratch buffer is handed out from it (one read
/// takes as many as have arrived); a larger one is read straight into a buffer sized from its
/// length prefix, without zeroing it first (`Read::take` and `read_to_end` fill spare capacity
/// as it is read), and handed out from there. Either way the frame is borrowed: the next read
/// reuses the buffer.
///
/// A stream that does not block may end a read with `WouldBlock`: nothing is lost, and the
/// next read goes on from there (inside a large frame too).
#[derive(Default)]
pub struct Framing {
    /// Bytes read and not yet handed out are `scratch[start..end]`; zero-filled once, when
    /// first needed, then only ever overwritten by reads.
    scratch: Vec<u8>,
    start: usize,
    end: usize,
    /// The last frame too large for `scratch`.
    large: Vec<u8>,
    /// The length of the large frame being read into `large`, when a read that would have
    /// blocked left it unfinished.
    large_unfinished: Option<usize>,
}

impl Framing {
    /// One frame holding `packet`, ready to write; refused if over [`MAX_PACKET`].
    pub fn frame(&mut self, packet: &Packet) -> io::Result<Bytes> {
        frame(packet)
    }

    /// The next frame from `stream`, borrowed until the next read; `None` at end of stream. A
    /// length prefix over [`MAX_PACKET`] is an error (`frame size too big`), and so is a stream
    /// that ends inside a frame. After any error the stream is out of step: nothing more may be
    /// read from it (every caller closes the connection).
    pub fn read(&mut self, stream: &mut impl Read) -> io::Result<Option<&[u8]>> {
        if let Some(length) = self.large_unfinished {
            return self.read_large(stream, length).map(Some);
        }
        if self.large.capacity() > KEEP_LARGE {
            self.large = Vec::new();
        }
        if self.scratch.is_empty() {
            self.scratch = vec![0; SCRATCH];
        }
        loop {
            let buffered = &self.scratch[self.start..self.end];
            if let Some(prefix) = buffered.first_chunk::<PREFIX>() {
                let length = u32::from_be_bytes(*prefix) as usize;
                if length > MAX_PACKET {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("frame size too big: a frame of {length} bytes, over the limit of {MAX_PACKET}"),
                    ));
                }
                if buffered.len() >= PREFIX + length {
                    let frame = self.start + PREFIX..self.start + PREFIX + length;
                    self.start = frame.end;
                    return Ok(Some(&self.scratch[frame]));
                }
                if PREFIX + length > SCRATCH {
                    return self.read_large(stream, length).map(Some);
                }
            }
            // Room for the rest of a small frame: what is buffered (less than one) goes first.
            if self.start > 0 {
                self.scratch.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let read = match stream.read(&mut self.scratch[self.end..]) {
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if read == 0 {
                return if self.end > self.start { Err(ended_inside_a_frame()) } else { Ok(None) };
            }
            self.end += read;
        }
    }

    /// Reads the rest of a frame of `length` bytes, larger than the scratch buffer, whose
    /// prefix (and maybe more) is buffered.
    /// (or, when `large_unfinished`, the part of it read so far is in `large`).
    fn read_large(&mut self, stream: &mut impl Read, length: usize) -> io::Result<&[u8]> {
        if self.large_unfinished.take().is_none() {
            self.large.clear();
            self.large.reserve_exact(length);
            // All of it is this frame's: a frame larger than the scratch buffer is not all here.
            self.large.extend_from_slice(&self.scratch[self.start + PREFIX..self.end]);
            (self.start, self.end) = (0, 0);
        }
        let rest = (length - self.large.len()) as u64;
        // `read_to_end` keeps what it read before an error: after `WouldBlock`, the next read
        // goes on from there.
        match stream.take(rest).read_to_end(&mut self.large) {
            Ok(read) if read as u64 == rest => Ok(&self.large),
            Ok(_) => Err(ended_inside_a_frame()),
            Err(error) => {
                if error.kind() == io::ErrorKind::WouldBlock {
                    self.large_unfinished = Some(length);
                }
                Err(error)
            }
        }
    }

    /// Whether bytes read from the stream wait here (a frame, or part of one): a reader that
    /// stops now leaves them to the next read, which finds them without the stream.
    pub fn holds_bytes(&self) -> bool {
        self.end > self.start || self.large_unfinished.is_some()
    }
}

fn ended_inside_a_frame() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended inside a frame")
}

fn too_large(length: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("frame size too big: a packet of {length} bytes, over the limit of {MAX_PACKET}"),
    )
}

/// One frame holding `packet`: its length prefix, then the packet, encoded in place; refused
/// if over [`MAX_PACKET`].
pub fn frame<M: Serialize>(packet: &Packet<M>) -> io::Result<Bytes> {
    let mut out = vec![0; PREFIX];
    rmp_serde::encode::write_named(&mut out, packet)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let length = out.len() - PREFIX;
    let prefix = u32::try_from(length).ok().filter(|_| length <= MAX_PACKET).ok_or_else(|| too_large(length))?;
    out[..PREFIX].copy_from_slice(&prefix.to_be_bytes());
    Ok(Bytes::from(out))
}

/// The frame of a [`Packet::Message`], written without copying the message's value: the
/// length prefix and the packet up to the value (the value is the packet's last field), then
/// the value itself, from wherever it is, in one vectored write.
pub struct MessageFrame<'a> {
    head: Vec<u8>,
    payload: &'a [u8],
}

impl<'a> MessageFrame<'a> {
    /// `message` of instance `key`, framed; refused if the packet is over [`MAX_PACKET`].
    pub fn new(key: u64, message: &Message<'a>) -> io::Result<MessageFrame<'a>> {
        let payload = message.payload;
        if payload.len() > MAX_PACKET {
            return Err(too_large(payload.len()));
        }
        let empty = Packet::Message { key, message: Message { payload: &[], ..*message } };
        let mut head = vec![0; PREFIX];
        rmp_serde::encode::write_named(&mut head, &empty)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        // The empty value came last, as `bin8` of length 0: in its place goes the header of
        // the real one (`bin8`, `bin16` or `bin32`, the shortest that holds it, as rmp writes).
        if !head.ends_with(&[0xc4, 0]) {
            return Err(io::Error::other("a message packet did not end with its value"));
        }
        head.truncate(head.len() - 2);
        match (u8::try_from(payload.len()), u16::try_from(payload.len())) {
            (Ok(length), _) => head.extend_from_slice(&[0xc4, length]),
            (_, Ok(length)) => {
                head.push(0xc5);
                head.extend_from_slice(&length.to_be_bytes());
            }
            // Within MAX_PACKET, checked above.
            _ => {
                head.push(0xc6);
                head.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            }
        }
        let length = head.len() - PREFIX + payload.len();
        let prefix = u32::try_from(length).ok().filter(|_| length <= MAX_PACKET).ok_or_else(|| too_large(length))?;
        head[..PREFIX].copy_from_slice(&prefix.to_be_bytes());
        Ok(MessageFrame { head, payload })
    }

    /// Writes the whole frame.
    pub fn write_to(&self, writer: &mut impl Write) -> io::Result<()> {
        let [head, payload] = self.parts();
        write_all_vectored(writer, &mut [IoSlice::new(head), IoSlice::new(payload)])
    }

    /// The frame's two pieces, in order: the head (length prefix and packet up to the value)
    /// and the value.
    pub fn parts(&self) -> [&[u8]; 2] {
        [&self.head, self.payload]
    }

    /// The frame in one buffer (a copy), for a queue.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.head.len() + self.payload.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(self.payload);
        Bytes::from(out)
    }
}

/// Writes every byte of `slices`, in order, with as few (vectored) writes as the writer takes.
pub fn write_all_vectored(writer: &mut impl Write, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut slices = slices;
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match writer.write_vectored(slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the socket took no more bytes")),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Encodes a packet for the wire.
pub fn encode(packet: &Packet) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(packet)
}

/// Decodes a packet from the wire, its message (if it is one) borrowing from `bytes`: what the
/// connections' readers do. Any malformed or unknown packet is an error, and so is one nesting
/// deeper than [`extension_api::wire::MAX_DEPTH`].
pub fn decode_borrowed(bytes: &[u8]) -> Result<Packet<Message<'_>>, rmp_serde::decode::Error> {
    extension_api::wire::decode(bytes)
}

/// Decodes a packet from the wire; any malformed or unknown packet is an error, and so is one
/// nesting deeper than [`extension_api::wire::MAX_DEPTH`].
pub fn decode(bytes: &[u8]) -> Result<Packet, rmp_serde::decode::Error> {
    extension_api::wire::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip() {
        let message = OwnedMessage {
            kind: 2,
            status: 0,
            origin: 3,
            target: 0,
            request_id: u64::MAX,
            channel: "ch".into(),
            payload: vec![0, 1, 255],
        };
        for packet in [
            Packet::Hello { protocol: PROTOCOL_VERSION, token: "t".into(), pid: 7 },
            Packet::Message { key: 9, message: message.clone() },
            Packet::Control { key: 1, command: Control::Inspect { completion: 4 } },
        ] {
            assert_eq!(decode(&encode(&packet).unwrap()).unwrap(), packet);
        }
        assert_eq!(OwnedMessage::clone(&message), message);
    }

    #[test]
    fn frames_round_trip_and_oversized_prefixes_are_refused() {
        let mut framing = Framing::default();
        let packet = Packet::Destroy { key: 3 };
        let mut wire = framing.frame(&packet).unwrap().to_vec();
        wire.extend_from_slice(&framing.frame(&Packet::Destroyed { key: 4 }).unwrap());
        let mut stream = std::io::Cursor::new(wire);
        assert_eq!(decode(framing.read(&mut stream).unwrap().unwrap()).unwrap(), packet);
        assert_eq!(decode(framing.read(&mut stream).unwrap().unwrap()).unwrap(), Packet::Destroyed { key: 4 });
        assert!(framing.read(&mut stream).unwrap().is_none());

        // A stream that ends right after a length prefix ended inside a frame.
        let mut cut = std::io::Cursor::new(8u32.to_be_bytes().to_vec());
        assert!(Framing::default().read(&mut cut).is_err());

        let mut oversized = std::io::Cursor::new(0x7fff_fff0u32.to_be_bytes().to_vec());
        let error = Framing::default().read(&mut oversized).unwrap_err();
        assert!(error.to_string().contains("frame size too big"), "{error}");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode(b"\xc1\xc1\xc1").is_err());
        assert!(decode(&[]).is_err());
        let unknown = rmp_serde::to_vec_named(&("NoSuchPacket", 1)).unwrap();
        assert!(decode(&unknown).is_err());
    }

    fn message(channel: &str, payload: &[u8]) -> OwnedMessage {
        OwnedMessage {
            kind: 2,
            status: 0,
            origin: 3,
            target: 0,
            request_id: 7,
            channel: channel.into(),
            payload: payload.to_vec(),
        }
    }

    /// A stream that hands out at most `chunk` bytes per read.
    struct Chunked(std::io::Cursor<Vec<u8>>, usize);

    impl Read for Chunked {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let count = buf.len().min(self.1);
            self.0.read(&mut buf[..count])
        }
    }

    /// A stream that does not block: after every read of at most `chunk` bytes, the next read
    /// would block.
    struct NonBlocking(std::io::Cursor<Vec<u8>>, usize, bool);

    impl Read for NonBlocking {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.2 = !self.2;
            if self.2 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let count = buf.len().min(self.1);
            self.0.read(&mut buf[..count])
        }
    }

    #[test]
    fn a_stream_that_would_block_loses_nothing_inside_small_and_large_frames() {
        let sizes = [0, 10, SCRATCH - 100, SCRATCH, 300_000, 3];
        let (wire, sent) = framed_messages(&sizes);
        for chunk in [1, 7, 4096, SCRATCH + 1] {
            let mut stream = NonBlocking(std::io::Cursor::new(wire.clone()), chunk, false);
            let mut framing = Framing::default();
            let mut got = Vec::new();
            let mut would_block = 0;
            loop {
                match framing.read(&mut stream) {
                    Ok(Some(bytes)) => got.push(decode_borrowed(bytes).unwrap().into_owned()),
                    Ok(None) => break,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        would_block += 1;
                        assert!(would_block < 10_000_000, "no progress");
                    }
                    Err(error) => panic!("chunks of {chunk}: {error}"),
                }
            }
            assert_eq!(got, sent, "chunks of {chunk}");
            assert!(!framing.holds_bytes());
        }
    }

    #[test]
    fn a_message_frame_is_the_packets_frame_byte_for_byte() {
        let long = "c".repeat(300);
        for size in [0, 1, 255, 256, 65_535, 65_536, SCRATCH - 60, SCRATCH, 1 << 20, (1 << 20) + 1] {
            for channel in ["", "ch", long.as_str()] {
                let owned = message(channel, &vec![0xa5; size]);
                let framed = MessageFrame::new(9, &owned.as_message()).unwrap();
                let mut written = Vec::new();
                framed.write_to(&mut written).unwrap();
                let whole = frame(&Packet::Message { key: 9, message: owned.clone() }).unwrap();
                assert_eq!(written, whole, "{size} bytes on channel {channel:?}");
                assert_eq!(framed.to_bytes(), whole);
            }
        }
    }

    /// A message packet of each of `sizes` (key and bytes its index), and their frames back to
    /// back.
    fn framed_messages(sizes: &[usize]) -> (Vec<u8>, Vec<Packet<OwnedMessage>>) {
        let mut wire = Vec::new();
        let mut sent = Vec::new();
        for (n, &size) in sizes.iter().enumerate() {
            let packet = Packet::Message { key: n as u64, message: message("ch", &vec![n as u8; size]) };
            wire.extend_from_slice(&frame(&packet).unwrap());
            sent.push(packet);
        }
        (wire, sent)
    }

    #[test]
    fn frames_of_every_size_come_out_whole_however_the_stream_is_split() {
        // Sizes around the scratch buffer's edge (a frame's 4-byte prefix included) and well
        // past it, back to back, so large frames follow small ones mid-buffer.
        let sizes = [0, 1, 100, SCRATCH - 200, SCRATCH - 120, SCRATCH - 90, SCRATCH - 80, SCRATCH, 300_000, 1 << 20, 5];
        let (wire, sent) = framed_messages(&sizes);
        for chunk in [1, 3, 4096, SCRATCH - 1, SCRATCH + 1, 1 << 21] {
            let mut stream = Chunked(std::io::Cursor::new(wire.clone()), chunk);
            let mut framing = Framing::default();
            for packet in &sent {
                let bytes = framing.read(&mut stream).unwrap().unwrap();
                assert_eq!(&decode_borrowed(bytes).unwrap().into_owned(), packet, "chunks of {chunk}");
            }
            assert!(framing.read(&mut stream).unwrap().is_none());
            // Cut anywhere inside a large frame: the stream ended inside it.
            let mut cut = Chunked(std::io::Cursor::new(wire[..wire.len() - 20].to_vec()), chunk);
            let mut framing = Framing::default();
            let error = loop {
                match framing.read(&mut cut) {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("a cut stream ended cleanly"),
                    Err(error) => break error,
                }
            };
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_frame_at_the_limit_is_read_and_one_byte_over_is_refused_on_both_sides() {
        let at = |length: usize| {
            let mut wire = (length as u32).to_be_bytes().to_vec();
            wire.resize(PREFIX + length, 0x2a);
            wire
        };
        let wire = at(MAX_PACKET);
        let read = Framing::default().read(&mut std::io::Cursor::new(wire)).unwrap().unwrap().len();
        assert_eq!(read, MAX_PACKET);
        let error = Framing::default().read(&mut std::io::Cursor::new(at(MAX_PACKET + 1))).unwrap_err();
        assert!(error.to_string().contains("frame size too big"), "{error}");

        // The sender refuses a packet one byte over, and sends one at the limit.
        let overhead = MessageFrame::new(1, &message("", &[0; 70_000]).as_message()).unwrap().head.len() - PREFIX;
        let fits = message("", &vec![0; MAX_PACKET - overhead]);
        let framed = MessageFrame::new(1, &fits.as_message()).unwrap();
        assert_eq!(framed.head.len() - PREFIX + framed.payload.len(), MAX_PACKET);
        let over = message("", &vec![0; MAX_PACKET - overhead + 1]);
        let error = MessageFrame::new(1, &over.as_message()).err().unwrap();
        assert!(error.to_string().contains("frame size too big"), "{error}");
        assert!(super::frame(&Packet::Message { key: 1, message: over }).is_err());
        assert!(super::frame(&Packet::Message { key: 1, message: fits }).is_ok());
    }
}
