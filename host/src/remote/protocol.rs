//! The protocol between the host and a child process (a renderer process, or an isolated
//! extension's process): plain data, no I/O. Each packet is one MessagePack value (named
//! fields) in a length-delimited frame; the child's `Hello` and the host's `Welcome` come first.

use std::io::{self, Read};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

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
/// to this connection: the host refuses any other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Packet {
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
        message: OwnedMessage,
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

/// Length-delimited frames on a blocking stream (tokio-util's codec, driven synchronously so
/// that whichever thread sends writes to the socket itself, with no hop to a writer task).
pub struct Framing {
    codec: LengthDelimitedCodec,
    buffer: BytesMut,
    /// Bytes of a frame not yet complete have been read (the codec may hold its length prefix).
    in_frame: bool,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            codec: LengthDelimitedCodec::builder().max_frame_length(MAX_PACKET).new_codec(),
            buffer: BytesMut::new(),
            in_frame: false,
        }
    }
}

impl Framing {
    /// One frame holding `packet`, ready to write; refused if over [`MAX_PACKET`].
    pub fn frame(&mut self, packet: &Packet) -> io::Result<Bytes> {
        let bytes = encode(packet).map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        let mut out = BytesMut::with_capacity(bytes.len() + 4);
        self.codec.encode(Bytes::from(bytes), &mut out)?;
        Ok(out.freeze())
    }

    /// The next frame from `stream`; `None` at end of stream. An oversized length prefix is an
    /// error (`frame size too big`).
    pub fn read(&mut self, stream: &mut impl Read) -> io::Result<Option<BytesMut>> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buffer)? {
                self.in_frame = !self.buffer.is_empty();
                return Ok(Some(frame));
            }
            // Read straight into the buffer, as much as the frame still needs (the codec has
            // reserved it), between 64 KiB and 1 MiB at a time: large frames take few reads.
            let start = self.buffer.len();
            let want = (self.buffer.capacity() - start).clamp(64 << 10, 1 << 20);
            self.buffer.resize(start + want, 0);
            let read = stream.read(&mut self.buffer[start..]);
            self.buffer.truncate(start + *read.as_ref().unwrap_or(&0));
            let read = match read {
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if read == 0 {
                return if self.in_frame || !self.buffer.is_empty() {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended inside a frame"))
                } else {
                    Ok(None)
                };
            }
            self.in_frame = true;
        }
    }
}

/// Encodes a packet for the wire.
pub fn encode(packet: &Packet) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(packet)
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
        assert_eq!(decode(&framing.read(&mut stream).unwrap().unwrap()).unwrap(), packet);
        assert_eq!(decode(&framing.read(&mut stream).unwrap().unwrap()).unwrap(), Packet::Destroyed { key: 4 });
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
}
