//! The protocol between the host and a child process (a renderer process, or an isolated
//! extension's process): plain data, no I/O. Each packet is in a length-delimited frame; the
//! hot one, [`Packet::Message`], in a fixed binary layout ([`MESSAGE_TAG`], read by slicing,
//! no serde), every other one a MessagePack value (named fields). The child's `Hello` and the
//! host's `Welcome` come first.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use bytes::Bytes;
use extension_api::message::Message;

pub use extension_api::wire::OwnedMessage;
use extension_api::wire::{Completion, Control, InstanceConfig};
use serde::{Deserialize, Serialize};

/// Bump on any change to [`Packet`] or to its layout on the wire.
pub const PROTOCOL_VERSION: u32 = 3;

/// The first byte of a [`Packet::Message`] on the wire, in its fixed layout (little-endian):
///
/// | bytes | field |
/// | --- | --- |
/// | 1 | `MESSAGE_TAG` |
/// | 8 | the instance key |
/// | 4 | `kind` |
/// | 4 | `status` |
/// | 8 | `origin` |
/// | 8 | `target` |
/// | 8 | `request_id` |
/// | 4 | the channel's length, `n` |
/// | n | the channel (UTF-8) |
/// | the rest of the frame | the value |
///
/// Every other packet is MessagePack with named fields: a map of one entry (the variant),
/// whose first byte is [`MSGPACK_TAG`]. Any other first byte is refused.
pub const MESSAGE_TAG: u8 = 0x01;

/// The first byte of every packet but a message: MessagePack's map of one entry.
pub const MSGPACK_TAG: u8 = 0x81;

/// A message packet's bytes before its channel: the tag, the key, the message's fixed fields
/// and the channel's length.
pub const MESSAGE_HEAD: usize = 1 + 8 + 4 + 4 + 8 + 8 + 8 + 4;

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
    /// Either way: an IPC message of the instance (to it, or from one of its halves). On the
    /// wire in its own fixed layout ([`MESSAGE_TAG`]), never as MessagePack.
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
pub(crate) const KEEP_LARGE: usize = 2 << 20;

/// The send buffer both ends of a child connection ask for (`SO_SNDBUF`; the kernel doubles
/// it for its bookkeeping and caps it at `net.core.wmem_max`): room for a frame of a 1 MiB
/// value in one write. With the default (208 KiB), such a frame crossed in some five pieces,
/// each a wake of the reader and then of the blocked writer, and a 1 MiB round trip took 1.6x
/// as long. A limit, not an allocation: the kernel holds only what is in flight.
pub const SEND_BUFFER: usize = 2 << 20;

/// Asks for [`SEND_BUFFER`] on `stream`. A refusal is not an error: the stream works as it
/// is, large frames in more pieces.
pub fn widen_send_buffer(stream: &std::os::unix::net::UnixStream) {
    if let Err(error) = socket2::SockRef::from(stream).set_send_buffer_size(SEND_BUFFER) {
        tracing::debug!("a child connection keeps its default send buffer: {error}");
    }
}

/// Length-delimited frames on a blocking stream, driven synchronously so that whichever thread
/// sends writes to the socket itself, with no hop to a writer task.
///
/// Reading: a frame that fits in the 64 KiB scratch buffer is handed out from it (one read
/// takes as many as have arrived); a larger one is read straight into a buffer sized from its
/// length prefix, without zeroing it first ([`ReadSpare`] reads into its spare capacity), and
/// handed out from there. Through [`Framing::read`] either way the frame is borrowed: the next
/// read reuses the buffer; [`Framing::read_frame`] hands a large frame's buffer over instead.
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
    /// The large frame being read, or the last one [`Framing::read`] handed out (borrowed).
    large: Vec<u8>,
    /// The length of the large frame being read into `large`, when a read that would have
    /// blocked left it unfinished.
    large_unfinished: Option<usize>,
}

/// A frame as [`Framing::read_frame`] hands it out.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A frame that fit in the scratch buffer, borrowed until the next read.
    Borrowed(&'a [u8]),
    /// A large frame, in the buffer of its own it was read into: the caller's to keep (and to
    /// lend on: `remote/lending.rs`). The next large frame gets a new buffer.
    Owned(Vec<u8>),
}

/// Where the frame a read found is.
enum Found {
    Scratch(std::ops::Range<usize>),
    Large,
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
    pub fn read(&mut self, stream: &mut impl ReadSpare) -> io::Result<Option<&[u8]>> {
        Ok(self.next(stream)?.map(|found| match found {
            Found::Scratch(frame) => &self.scratch[frame],
            Found::Large => &self.large[..],
        }))
    }

    /// [`Framing::read`], with a large frame handed over in its own buffer rather than
    /// borrowed.
    pub fn read_frame(&mut self, stream: &mut impl ReadSpare) -> io::Result<Option<Frame<'_>>> {
        Ok(self.next(stream)?.map(|found| match found {
            Found::Scratch(frame) => Frame::Borrowed(&self.scratch[frame]),
            Found::Large => Frame::Owned(std::mem::take(&mut self.large)),
        }))
    }

    fn next(&mut self, stream: &mut impl ReadSpare) -> io::Result<Option<Found>> {
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
                    return Ok(Some(Found::Scratch(frame)));
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
    /// prefix (and maybe more) is buffered (or, when `large_unfinished`, the part of it read so
    /// far is in `large`).
    fn read_large(&mut self, stream: &mut impl ReadSpare, length: usize) -> io::Result<Found> {
        if self.large_unfinished.take().is_none() {
            self.large.clear();
            if !super::lending::fits(self.large.capacity(), length) {
                // The last large frame's buffer was handed over, or does not fit this one (too
                // small, or so large that a lent frame would pin far more than it holds).
                self.large = super::lending::buffer_for(length);
            }
            // All of it is this frame's: a frame larger than the scratch buffer is not all here.
            self.large.extend_from_slice(&self.scratch[self.start + PREFIX..self.end]);
            (self.start, self.end) = (0, 0);
        }
        let rest = length - self.large.len();
        // What was read before an error stays in `large`: after `WouldBlock`, the next read
        // goes on from there.
        match stream.read_spare(&mut self.large, rest) {
            Ok(read) if read == rest => Ok(Found::Large),
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

/// A stream a large frame is read from straight into a buffer's spare capacity, which is not
/// zeroed first (std's `Read::read_to_end` zero-fills the spare capacity of a reader that has
/// only `read`: up to 16 MiB before a large frame, every time).
pub trait ReadSpare: Read {
    /// Reads until `rest` more bytes are appended to `buffer` (whose capacity holds them), the
    /// stream ends, or an error. Returns how many were appended; what was appended before an
    /// error stays appended. The default (for test streams) is `Read::take` + `read_to_end`.
    fn read_spare(&mut self, buffer: &mut Vec<u8>, rest: usize) -> io::Result<usize> {
        self.take(rest as u64).read_to_end(buffer)
    }
}

impl ReadSpare for UnixStream {
    fn read_spare(&mut self, buffer: &mut Vec<u8>, rest: usize) -> io::Result<usize> {
        let fd = self.as_raw_fd();
        recv_spare(fd, buffer, rest, 0, |_, _| true)
    }
}

impl ReadSpare for io::Cursor<Vec<u8>> {}

/// Reads with `recv(fd, .., flags)` into `buffer`'s spare capacity until `rest` bytes are
/// appended, the stream ends, or an error (`Interrupted` is retried); returns how many were
/// appended. After each read, `go_on(asked, got)` says whether to read again (a reader that
/// knows the socket is empty stops: the next call then reads). Crate-private: `fd` must be a
/// socket the caller holds open (its two callers read their own: the host's `UnixStream`, the
/// child's `Recv`), which a public safe function could not promise.
pub(crate) fn recv_spare(
    fd: RawFd,
    buffer: &mut Vec<u8>,
    rest: usize,
    flags: libc::c_int,
    mut go_on: impl FnMut(usize, usize) -> bool,
) -> io::Result<usize> {
    buffer.reserve(rest);
    let mut appended = 0;
    while appended < rest {
        // Both callers in this crate pass a socket they hold open.
        let spare = &mut buffer.spare_capacity_mut()[..rest - appended];
        // SAFETY: `recv` writes at most `spare.len()` bytes into `spare` (of `buffer`'s allocation,
        // writable for the call, uninitialised bytes it only writes) and touches no other memory,
        // whatever `fd` is: a descriptor that is not an open socket fails, with errno.
        let read = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), flags) };
        let Ok(read) = usize::try_from(read) else {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        };
        if read == 0 {
            break;
        }
        let asked = spare.len();
        // SAFETY: `recv` initialised the first `read` bytes of the spare capacity (it returns
        // how many it wrote, at most `asked`), which directly follow the `len` initialised ones.
        unsafe { buffer.set_len(buffer.len() + read) };
        appended += read;
        if appended < rest && !go_on(asked, read) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
    }
    Ok(appended)
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
pub fn frame<M: Serialize + AsMessage>(packet: &Packet<M>) -> io::Result<Bytes> {
    if let Packet::Message { key, message } = packet {
        return Ok(MessageFrame::new(*key, &message.as_message())?.to_bytes());
    }
    let mut out = vec![0; PREFIX];
    rmp_serde::encode::write_named(&mut out, packet)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let length = out.len() - PREFIX;
    let prefix = u32::try_from(length).ok().filter(|_| length <= MAX_PACKET).ok_or_else(|| too_large(length))?;
    out[..PREFIX].copy_from_slice(&prefix.to_be_bytes());
    Ok(Bytes::from(out))
}

/// What a [`Packet::Message`] may carry: a message, owned or borrowed, seen as a [`Message`].
pub trait AsMessage {
    /// The message, borrowed.
    fn as_message(&self) -> Message<'_>;
}

impl AsMessage for OwnedMessage {
    fn as_message(&self) -> Message<'_> {
        OwnedMessage::as_message(self)
    }
}

impl AsMessage for Message<'_> {
    fn as_message(&self) -> Message<'_> {
        *self
    }
}

/// A message packet's fixed fields ([`MESSAGE_TAG`]'s layout, up to the channel's bytes).
fn message_head(key: u64, message: &Message<'_>, channel_length: u32) -> [u8; MESSAGE_HEAD] {
    let mut head = [0; MESSAGE_HEAD];
    let fields: [&[u8]; 8] = [
        &[MESSAGE_TAG],
        &key.to_le_bytes(),
        &message.kind.to_le_bytes(),
        &message.status.to_le_bytes(),
        &message.origin.to_le_bytes(),
        &message.target.to_le_bytes(),
        &message.request_id.to_le_bytes(),
        &channel_length.to_le_bytes(),
    ];
    let mut at = 0;
    for field in fields {
        head[at..at + field.len()].copy_from_slice(field);
        at += field.len();
    }
    head
}

/// Appends a message packet's bytes up to its value ([`MESSAGE_TAG`]'s layout) to `out`.
fn put_message_head(out: &mut Vec<u8>, key: u64, message: &Message<'_>, channel_length: u32) {
    out.extend_from_slice(&message_head(key, message, channel_length));
    out.extend_from_slice(message.channel.as_bytes());
}

/// The frame of a [`Packet::Message`], written without copying the message's channel or
/// value: the length prefix and the packet's fixed fields (on the stack: no allocation per
/// send), then the channel and the value from wherever they are, in one vectored write.
pub struct MessageFrame<'a> {
    head: [u8; PREFIX + MESSAGE_HEAD],
    channel: &'a [u8],
    payload: &'a [u8],
}

impl<'a> MessageFrame<'a> {
    /// `message` of instance `key`, framed; refused if the packet is over [`MAX_PACKET`].
    #[inline]
    pub fn new(key: u64, message: &Message<'a>) -> io::Result<MessageFrame<'a>> {
        let payload = message.payload;
        let channel = message.channel.len();
        let length = MESSAGE_HEAD.saturating_add(channel).saturating_add(payload.len());
        if length > MAX_PACKET {
            return Err(too_large(length));
        }
        // Within MAX_PACKET (checked above), so both fit in a u32.
        let (Ok(prefix), Ok(channel_length)) = (u32::try_from(length), u32::try_from(channel)) else {
            return Err(too_large(length));
        };
        let mut head = [0; PREFIX + MESSAGE_HEAD];
        head[..PREFIX].copy_from_slice(&prefix.to_be_bytes());
        head[PREFIX..].copy_from_slice(&message_head(key, message, channel_length));
        Ok(MessageFrame { head, channel: message.channel.as_bytes(), payload })
    }

    /// Writes the whole frame.
    pub fn write_to(&self, writer: &mut impl Write) -> io::Result<()> {
        let [head, channel, payload] = self.parts();
        write_all_vectored(writer, &mut [IoSlice::new(head), IoSlice::new(channel), IoSlice::new(payload)])
    }

    /// The frame's three pieces, in order: the head (length prefix and the packet's fixed
    /// fields), the channel and the value.
    pub fn parts(&self) -> [&[u8]; 3] {
        [&self.head, self.channel, self.payload]
    }

    /// The frame in one buffer (a copy), for a queue.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.head.len() + self.channel.len() + self.payload.len());
        for part in self.parts() {
            out.extend_from_slice(part);
        }
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

/// Encodes a packet for the wire (a message in its fixed layout, anything else as
/// MessagePack).
pub fn encode(packet: &Packet) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    if let Packet::Message { key, message } = packet {
        let channel_length = u32::try_from(message.channel.len())
            .map_err(|_| rmp_serde::encode::Error::Syntax("a channel name over 4 GiB".into()))?;
        let mut out = Vec::with_capacity(MESSAGE_HEAD + message.channel.len() + message.payload.len());
        put_message_head(&mut out, *key, &message.as_message(), channel_length);
        out.extend_from_slice(&message.payload);
        return Ok(out);
    }
    rmp_serde::to_vec_named(packet)
}

/// Why a packet is not one: what [`decode`] and [`decode_borrowed`] refuse, beyond what the
/// MessagePack decoder says of the other packets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    /// No byte at all.
    #[error("an empty packet")]
    Empty,
    /// A first byte that is neither a message's nor MessagePack's.
    #[error(
        "an unknown packet tag 0x{0:02x} (a packet begins with 0x{MESSAGE_TAG:02x}, a message, or 0x{MSGPACK_TAG:02x}, MessagePack)"
    )]
    UnknownTag(u8),
    /// A message packet that ends before one of its fixed fields does.
    #[error("a message packet of {length} bytes ends inside its {field} (bytes {start} to {end})")]
    Truncated {
        /// The packet's length.
        length: usize,
        /// The field it ends inside.
        field: &'static str,
        /// Where the field begins and ends.
        start: usize,
        /// (One past its last byte.)
        end: usize,
    },
    /// A message packet whose channel length runs past the packet.
    #[error("a message packet's channel of {channel} bytes runs past its end ({left} bytes left)")]
    ChannelPastTheEnd {
        /// The channel length the packet gave.
        channel: u64,
        /// What the packet had left after the length.
        left: usize,
    },
    /// A message packet whose channel is not UTF-8.
    #[error("a message packet's channel is not UTF-8: {0}")]
    ChannelNotUtf8(std::str::Utf8Error),
    /// A MessagePack packet followed by more bytes in its frame (a frame is one packet).
    #[error("a packet of {length} bytes has {trailing} bytes after its MessagePack value")]
    TrailingBytes {
        /// The packet's length.
        length: usize,
        /// The bytes after its value.
        trailing: usize,
    },
    /// A message sent as MessagePack: it has a layout of its own.
    #[error("a message packet in MessagePack (a message packet begins with 0x{MESSAGE_TAG:02x})")]
    MessageInMessagePack,
}

impl From<Malformed> for rmp_serde::decode::Error {
    fn from(malformed: Malformed) -> rmp_serde::decode::Error {
        rmp_serde::decode::Error::Syntax(malformed.to_string())
    }
}

/// The fixed fields of a message packet, read in order, each checked against the packet's end.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    #[inline]
    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Malformed> {
        let end = self.at + N;
        match self.bytes.get(self.at..end) {
            Some(taken) => {
                self.at = end;
                let mut out = [0; N];
                out.copy_from_slice(taken);
                Ok(out)
            }
            None => Err(Malformed::Truncated { length: self.bytes.len(), field, start: self.at, end }),
        }
    }

    #[inline]
    fn u64(&mut self, field: &'static str) -> Result<u64, Malformed> {
        self.take(field).map(u64::from_le_bytes)
    }

    #[inline]
    fn u32(&mut self, field: &'static str) -> Result<u32, Malformed> {
        self.take(field).map(u32::from_le_bytes)
    }
}

/// A message packet ([`MESSAGE_TAG`]'s layout), borrowing its channel and value from `bytes`.
#[inline]
fn decode_message(bytes: &[u8]) -> Result<Packet<Message<'_>>, Malformed> {
    let mut fields = Fields { bytes, at: 1 };
    let key = fields.u64("key")?;
    let kind = fields.u32("kind")?;
    let status = fields.u32("status")?;
    let origin = fields.u64("origin")?;
    let target = fields.u64("target")?;
    let request_id = fields.u64("request id")?;
    let channel_length = fields.u32("channel length")?;
    let rest = &bytes[fields.at..];
    let Some((channel, payload)) = usize::try_from(channel_length).ok().and_then(|at| rest.split_at_checked(at)) else {
        return Err(Malformed::ChannelPastTheEnd { channel: channel_length.into(), left: rest.len() });
    };
    let channel = std::str::from_utf8(channel).map_err(Malformed::ChannelNotUtf8)?;
    let message = Message { kind, status, origin, target, request_id, channel, payload };
    Ok(Packet::Message { key, message })
}

/// Decodes a packet from the wire, its message (if it is one) borrowing from `bytes`: what the
/// connections' readers do. Any malformed or unknown packet is an error ([`Malformed`] says
/// why, in the error's text, for the layout's own checks, and for bytes after a MessagePack
/// packet's value), and so is one nesting deeper than
/// [`extension_api::wire::MAX_DEPTH`].
#[inline]
pub fn decode_borrowed(bytes: &[u8]) -> Result<Packet<Message<'_>>, rmp_serde::decode::Error> {
    match bytes.first() {
        Some(&MESSAGE_TAG) => Ok(decode_message(bytes)?),
        Some(&MSGPACK_TAG) => match extension_api::wire::decode(bytes)? {
            Packet::Message { .. } => Err(Malformed::MessageInMessagePack.into()),
            packet => match messagepack_length(bytes)? {
                length if length < bytes.len() => {
                    Err(Malformed::TrailingBytes { length: bytes.len(), trailing: bytes.len() - length }.into())
                }
                _ => Ok(packet),
            },
        },
        Some(&tag) => Err(Malformed::UnknownTag(tag).into()),
        None => Err(Malformed::Empty.into()),
    }
}

/// How many bytes the first MessagePack value in `bytes` takes (skipped, not decoded; after
/// `wire::decode` refused anything nested too deep). `rmp_serde` itself ignores what follows it.
fn messagepack_length(bytes: &[u8]) -> Result<usize, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::new(io::Cursor::new(bytes));
    serde::de::IgnoredAny::deserialize(&mut deserializer)?;
    // At most `bytes.len()`: a position within the slice.
    Ok(usize::try_from(deserializer.position()).unwrap_or(usize::MAX))
}

/// Decodes a packet from the wire, as [`decode_borrowed`] does, copying its message.
pub fn decode(bytes: &[u8]) -> Result<Packet, rmp_serde::decode::Error> {
    decode_borrowed(bytes).map(Packet::into_owned)
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

    /// The reason `bytes` is refused, as the readers report it.
    fn refused(bytes: &[u8]) -> String {
        match decode_borrowed(bytes) {
            Ok(packet) => panic!("{} bytes decoded: {packet:?}", bytes.len()),
            Err(error) => {
                assert!(decode(bytes).is_err());
                error.to_string()
            }
        }
    }

    #[test]
    fn the_message_layout_round_trips_every_fields_extremes() {
        let wide = "é".repeat(32 << 10);
        assert_eq!(wide.len(), 64 << 10);
        for (key, number, id) in [(0, 0, 0), (u64::MAX, u32::MAX, u64::MAX), (1, 7, u64::MAX - 1)] {
            for channel in ["", "c", wide.as_str()] {
                let max = MAX_PACKET - MESSAGE_HEAD - channel.len();
                for size in [0, 1, 300, max] {
                    let message = OwnedMessage {
                        kind: number,
                        status: number.wrapping_add(1),
                        origin: id,
                        target: id ^ 1,
                        request_id: id,
                        channel: channel.into(),
                        payload: vec![0x5a; size],
                    };
                    let packet = Packet::Message { key, message };
                    let bytes = encode(&packet).unwrap();
                    assert_eq!(bytes[0], MESSAGE_TAG);
                    assert_eq!(bytes.len(), MESSAGE_HEAD + channel.len() + size);
                    assert_eq!(decode(&bytes).unwrap(), packet);
                    let Packet::Message { key: got, message } = decode_borrowed(&bytes).unwrap() else { panic!() };
                    assert_eq!(got, key);
                    // Borrowed from the packet, not copied.
                    assert!(std::ptr::eq(message.payload.as_ptr_range().end, bytes.as_ptr_range().end));
                    // The frame is the prefix and the same bytes, whichever way it is built.
                    let framed = frame(&packet).unwrap();
                    assert_eq!(&framed[..PREFIX], &(bytes.len() as u32).to_be_bytes());
                    assert_eq!(&framed[PREFIX..], &bytes[..]);
                    let read =
                        Framing::default().read(&mut std::io::Cursor::new(framed.to_vec())).unwrap().unwrap().to_vec();
                    assert_eq!(read, bytes);
                }
                // One byte more does not fit.
                let over = OwnedMessage { channel: channel.into(), payload: vec![0; max + 1], ..message("", &[]) };
                assert!(MessageFrame::new(key, &over.as_message()).is_err());
            }
        }
    }

    /// The layout byte for byte, as ARCHITECTURE.md gives it (little-endian fields), written
    /// out by hand: a layout both ends changed alike (another byte order, another field order)
    /// would still round-trip, and break every child built before it.
    #[test]
    fn a_message_packet_is_the_documented_layout_byte_for_byte() {
        let message = OwnedMessage {
            kind: 0x0403_0201,
            status: 0x0807_0605,
            origin: 0x1817_1615_1413_1211,
            target: 0x2827_2625_2423_2221,
            request_id: 0x3837_3635_3433_3231,
            channel: "ab".into(),
            payload: vec![0xc3, 0x90],
        };
        let mut expected = vec![MESSAGE_TAG];
        expected.extend_from_slice(&[0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8]);
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        expected.extend_from_slice(&[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);
        expected.extend_from_slice(&[0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28]);
        expected.extend_from_slice(&[0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38]);
        expected.extend_from_slice(&[2, 0, 0, 0, b'a', b'b', 0xc3, 0x90]);
        let packet = Packet::Message { key: 0xf8f7_f6f5_f4f3_f2f1, message };
        assert_eq!(encode(&packet).unwrap(), expected);
        assert_eq!(decode(&expected).unwrap(), packet);
        let framed = frame(&packet).unwrap();
        assert_eq!(framed[..PREFIX], (expected.len() as u32).to_be_bytes());
        assert_eq!(framed[PREFIX..], expected[..]);
    }

    #[test]
    fn a_message_cut_at_any_byte_is_refused_saying_where() {
        let bytes = encode(&Packet::Message { key: 5, message: message("chan", &[1, 2, 3]) }).unwrap();
        let fields = [
            ("key", 1, 9),
            ("kind", 9, 13),
            ("status", 13, 17),
            ("origin", 17, 25),
            ("target", 25, 33),
            ("request id", 33, 41),
            ("channel length", 41, 45),
        ];
        for cut in 1..MESSAGE_HEAD + 4 {
            let reason = refused(&bytes[..cut]);
            let expected = match fields.iter().find(|(_, start, end)| (*start..*end).contains(&cut)) {
                Some(&(field, start, end)) => Malformed::Truncated { length: cut, field, start, end }.to_string(),
                None => Malformed::ChannelPastTheEnd { channel: 4, left: cut - MESSAGE_HEAD }.to_string(),
            };
            assert!(reason.contains(&expected), "cut at {cut}: {reason}, not {expected}");
        }
        // From the channel's end on, the rest is the value: shorter, but a message.
        for cut in MESSAGE_HEAD + 4..=bytes.len() {
            let Packet::Message { message, .. } = decode_borrowed(&bytes[..cut]).unwrap() else { panic!() };
            assert_eq!(message.payload, &[1, 2, 3][..cut - MESSAGE_HEAD - 4]);
        }
        assert!(refused(&[]).contains("an empty packet"));
    }

    #[test]
    fn a_message_whose_channel_runs_past_the_frame_or_is_not_utf8_is_refused() {
        let bytes = encode(&Packet::Message { key: 5, message: message("chan", &[1, 2, 3]) }).unwrap();
        for length in [8, u32::MAX] {
            let mut long = bytes.clone();
            long[41..45].copy_from_slice(&length.to_le_bytes());
            let expected = Malformed::ChannelPastTheEnd { channel: length.into(), left: 7 }.to_string();
            assert!(refused(&long).contains(&expected), "{length}");
        }
        let mut bad = bytes.clone();
        bad[MESSAGE_HEAD + 1] = 0xff;
        let reason = refused(&bad);
        assert!(reason.contains("channel is not UTF-8"), "{reason}");
        // Cut inside a character.
        let mut cut = encode(&Packet::Message { key: 5, message: message("é", &[]) }).unwrap();
        cut[41..45].copy_from_slice(&1u32.to_le_bytes());
        assert!(refused(&cut).contains("channel is not UTF-8"));
    }

    #[test]
    fn unknown_tags_and_messages_in_messagepack_are_refused() {
        for tag in 0..=u8::MAX {
            if tag == MESSAGE_TAG || tag == MSGPACK_TAG {
                continue;
            }
            let reason = refused(&[tag, 0, 0, 0]);
            assert!(reason.contains(&format!("an unknown packet tag 0x{tag:02x}")), "{reason}");
        }
        let old = rmp_serde::to_vec_named(&Packet::Message { key: 1, message: message("c", &[1]) }).unwrap();
        assert_eq!(old[0], MSGPACK_TAG);
        assert!(refused(&old).contains("a message packet in MessagePack"));
        // The other packets are MessagePack, as before.
        assert_eq!(encode(&Packet::Destroyed { key: 1 }).unwrap()[0], MSGPACK_TAG);
    }

    #[test]
    fn a_packet_with_bytes_after_its_messagepack_value_is_refused() {
        for packet in [
            Packet::Destroyed { key: 1 },
            Packet::Log { key: 2, level: 3, target: "t".into(), message: "m".into() },
            Packet::Hello { protocol: PROTOCOL_VERSION, token: "t".into(), pid: 7 },
        ] {
            let exact = encode(&packet).unwrap();
            assert_eq!(decode(&exact).unwrap(), packet);
            for trailing in [&[0xc0][..], &[0x01, 0x02, 0x03], &exact] {
                let bytes = [&exact[..], trailing].concat();
                let reason = refused(&bytes);
                let expected = Malformed::TrailingBytes { length: bytes.len(), trailing: trailing.len() }.to_string();
                assert!(reason.contains(&expected), "{packet:?}: {reason}, not {expected}");
            }
        }
    }

    /// What the fuzz target checks, on mutations of valid message frames: no input panics, and
    /// whatever decodes re-encodes to the very same bytes (the layout has one encoding).
    #[test]
    fn mutated_message_packets_are_refused_or_decode_to_what_they_encode() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds = [
            encode(&Packet::Message { key: 5, message: message("chan", &[1, 2, 3]) }).unwrap(),
            encode(&Packet::Message { key: u64::MAX, message: message("", &[]) }).unwrap(),
            encode(&Packet::Message { key: 1, message: message("é", &[0xc1; 40]) }).unwrap(),
        ];
        let (mut decoded, mut refusals) = (0, 0);
        for seed in &seeds {
            for _ in 0..20_000 {
                let mut bytes = seed.clone();
                for _ in 0..1 + next() % 3 {
                    let at = (next() % bytes.len() as u64) as usize;
                    match next() % 3 {
                        0 => bytes[at] = next() as u8,
                        1 => bytes.truncate(at),
                        _ => bytes.insert(at, next() as u8),
                    }
                    if bytes.is_empty() {
                        break;
                    }
                }
                match decode_borrowed(&bytes) {
                    Ok(packet) => {
                        decoded += 1;
                        let packet = packet.into_owned();
                        if matches!(packet, Packet::Message { .. }) {
                            assert_eq!(encode(&packet).unwrap(), bytes);
                        }
                        assert_eq!(decode(&bytes).unwrap(), packet);
                    }
                    Err(_) => {
                        refusals += 1;
                        assert!(decode(&bytes).is_err());
                    }
                }
            }
        }
        assert!(decoded > 1000 && refusals > 1000, "{decoded} decoded, {refusals} refused");
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

    impl ReadSpare for Chunked {}

    impl Read for Chunked {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let count = buf.len().min(self.1);
            self.0.read(&mut buf[..count])
        }
    }

    /// A stream that does not block: after every read of at most `chunk` bytes, the next read
    /// would block.
    struct NonBlocking(std::io::Cursor<Vec<u8>>, usize, bool);

    impl ReadSpare for NonBlocking {}

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
    fn a_child_connections_send_buffer_is_widened_past_the_default() {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let before = socket2::SockRef::from(&ours).send_buffer_size().unwrap();
        widen_send_buffer(&ours);
        let after = socket2::SockRef::from(&ours).send_buffer_size().unwrap();
        // Whatever `net.core.wmem_max` allows here, the kernel doubles what it grants.
        assert!(after > before, "{before} bytes before, {after} after");
    }

    #[test]
    fn a_frame_handed_over_is_in_a_buffer_at_most_half_as_large_again_whatever_was_read_before() {
        // A 2 MiB frame read borrowed leaves its buffer with the framing; the 70,000-byte frame
        // after it, handed over, gets a buffer of about its own size.
        let (wire, _) = framed_messages(&[(2 << 20) - 100, 70_000]);
        let mut stream = std::io::Cursor::new(wire);
        let mut framing = Framing::default();
        assert!(framing.read(&mut stream).unwrap().is_some());
        let Some(Frame::Owned(frame)) = framing.read_frame(&mut stream).unwrap() else { panic!("not handed over") };
        assert!(frame.capacity() <= frame.len() + frame.len() / 2, "{} bytes in {}", frame.len(), frame.capacity());
    }

    #[test]
    fn large_frames_are_handed_over_in_their_own_buffers_and_nothing_after_them_is_lost() {
        let sizes = [10, 300_000, 20, 1 << 20, 300_000, 0];
        let (wire, sent) = framed_messages(&sizes);
        for chunk in [7, 4096, SCRATCH + 1, 1 << 21] {
            let mut stream = NonBlocking(std::io::Cursor::new(wire.clone()), chunk, false);
            let mut framing = Framing::default();
            let mut got = Vec::new();
            let mut kept = Vec::new();
            loop {
                match framing.read_frame(&mut stream) {
                    Ok(Some(Frame::Borrowed(bytes))) => {
                        assert!(sizes[got.len()] < SCRATCH, "a large frame was lent, not handed over");
                        got.push(decode_borrowed(bytes).unwrap().into_owned());
                    }
                    Ok(Some(Frame::Owned(frame))) => {
                        assert!(sizes[got.len()] > SCRATCH, "a small frame was handed over");
                        got.push(decode_borrowed(&frame).unwrap().into_owned());
                        // Kept past the next reads: a frame handed over is the caller's.
                        kept.push(frame);
                    }
                    Ok(None) => break,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => panic!("{error}"),
                }
            }
            assert_eq!(got, sent, "chunks of {chunk}");
            let kept: Vec<_> = kept.iter().map(|frame| decode_borrowed(frame).unwrap().into_owned()).collect();
            assert_eq!(kept, [sent[1].clone(), sent[3].clone(), sent[4].clone()], "chunks of {chunk}");
        }
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

    /// Frames read from a real socket (`UnixStream`'s `read_spare`: `recv` into the spare
    /// capacity), written in small pieces by another thread so that reads come up short: small
    /// and large ones, one exactly the scratch buffer (its prefix included) and one byte over,
    /// one over `KEEP_LARGE` and a smaller one after it. Then a stream cut inside a large frame
    /// is an error, never a shorter frame.
    #[test]
    fn frames_from_a_socket_come_out_whole_and_one_cut_short_is_an_error() {
        use std::io::Write;
        // A message frame is the prefix, the layout's head, the channel "ch", the value.
        let exactly_scratch = SCRATCH - PREFIX - MESSAGE_HEAD - 2;
        let sizes = [10, 300_000, exactly_scratch, exactly_scratch + 1, KEEP_LARGE + 1, 1 << 20, 0, 70_000];
        let (wire, sent) = framed_messages(&sizes);
        assert_eq!(frame(&sent[2]).unwrap().len(), SCRATCH);
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let cut = wire.len() - 20;
        let writer = std::thread::spawn(move || {
            let mut theirs = theirs;
            for piece in wire[..cut].chunks(4099) {
                theirs.write_all(piece).unwrap();
            }
        });
        let mut framing = Framing::default();
        for packet in &sent[..sent.len() - 1] {
            let bytes = framing.read(&mut ours).unwrap().unwrap();
            assert_eq!(&decode_borrowed(bytes).unwrap().into_owned(), packet);
        }
        let error = framing.read(&mut ours).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
        writer.join().unwrap();
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
        assert_eq!(framed.head.len() - PREFIX + framed.channel.len() + framed.payload.len(), MAX_PACKET);
        let over = message("", &vec![0; MAX_PACKET - overhead + 1]);
        let error = MessageFrame::new(1, &over.as_message()).err().unwrap();
        assert!(error.to_string().contains("frame size too big"), "{error}");
        assert!(super::frame(&Packet::Message { key: 1, message: over }).is_err());
        assert!(super::frame(&Packet::Message { key: 1, message: fits }).is_ok());
    }
}
