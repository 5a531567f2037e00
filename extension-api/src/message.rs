//! The protocol both ends of the boundary share, above the raw layouts of [`crate::abi`]:
//! a message as safe data, the routing rule, replies and their error codes, log levels.
//! Plain data and pure functions: no I/O, no state. The host and an instance use the same
//! definitions, so neither can drift from the other. Authors never use this module.

use crate::abi::{self, PEER_ALL, PEER_HOST, PEER_MAIN, Peer, RawMessage, RawSlice};
use crate::wire::{ErrorPayload, OwnedMessage};
use crate::{InvokeError, InvokeErrorKind};

/// One IPC message with its buffers validated: what routing and dispatch work on. It is
/// made from a [`RawMessage`] once, at the C boundary ([`Message::from_raw`]), or borrowed
/// from an [`OwnedMessage`]; nothing past the edge reads raw pointers. It serialises exactly
/// as an [`OwnedMessage`] does (same fields, same order), so a child connection writes it
/// without copying it into one, and decodes one borrowing from the frame it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message<'a> {
    /// One of [`abi::kind`].
    pub kind: u32,
    /// For replies: [`abi::status::OK`] or an error code ([`error_code`]); for a write's
    /// refusal: 0 from main, or the [`abi::status`] the host's routing refused it with;
    /// otherwise 0.
    pub status: u32,
    /// The half that sent it.
    pub origin: Peer,
    /// The half it is for, or [`abi::PEER_ALL`].
    pub target: Peer,
    /// The request it belongs to (invokes, replies, cancels).
    pub request_id: u64,
    /// The channel name: UTF-8; empty for replies and cancels, which are matched by request id.
    #[serde(borrow)]
    pub channel: &'a str,
    /// The MessagePack value (last: a child connection writes it straight after the rest).
    #[serde(with = "serde_bytes", borrow)]
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// Validates a message that crossed the C boundary: its buffers must be valid (not null
    /// with a length, not over [`abi::MAX_BUFFER`]) and a channel name UTF-8. Replies and
    /// cancels are matched by request id, so their channel is dropped unread.
    /// `Err` is the status to answer ([`abi::status::INVALID`]).
    ///
    /// # Safety
    /// The slices of `raw` must be valid for `'a` (or null with length 0).
    #[inline]
    pub unsafe fn from_raw(raw: &'a RawMessage) -> Result<Message<'a>, u32> {
        // SAFETY: the caller's contract; `as_bytes` refuses null-with-length and huge lengths.
        let channel = unsafe { raw.channel.as_bytes() }.ok_or(abi::status::INVALID)?;
        // SAFETY: as above.
        let payload = unsafe { raw.payload.as_bytes() }.ok_or(abi::status::INVALID)?;
        let channel = match raw.kind {
            abi::kind::REPLY | abi::kind::CANCEL => "",
            _ => std::str::from_utf8(channel).map_err(|_| abi::status::INVALID)?,
        };
        Ok(Message {
            kind: raw.kind,
            status: raw.status,
            origin: raw.origin,
            target: raw.target,
            request_id: raw.request_id,
            channel,
            payload,
        })
    }

    /// Borrows it as a [`RawMessage`] for one call across the boundary.
    #[inline]
    pub fn to_raw(&self) -> RawMessage {
        RawMessage {
            kind: self.kind,
            status: self.status,
            origin: self.origin,
            target: self.target,
            request_id: self.request_id,
            channel: RawSlice::new(self.channel.as_bytes()),
            payload: RawSlice::new(self.payload),
        }
    }

    /// Copies it, for a queue or a socket.
    #[inline]
    pub fn to_owned(&self) -> OwnedMessage {
        OwnedMessage {
            kind: self.kind,
            status: self.status,
            origin: self.origin,
            target: self.target,
            request_id: self.request_id,
            channel: self.channel.to_owned(),
            payload: self.payload.to_vec(),
        }
    }

    /// Whether its channel name and value are within [`abi::MAX_MESSAGE`].
    #[inline]
    pub fn fits(&self) -> bool {
        abi::fits(self.channel.len(), self.payload.len())
    }

    /// This message with another target (a broadcast's fan-out, a cancel's real target).
    #[inline]
    pub fn to(self, target: Peer) -> Message<'a> {
        Message { target, ..self }
    }

    /// A reply from `from` to `to` for request `request_id`.
    #[inline]
    pub fn reply(from: Peer, to: Peer, request_id: u64, reply: &'a Reply) -> Message<'a> {
        Message {
            kind: abi::kind::REPLY,
            status: reply.status,
            origin: from,
            target: to,
            request_id,
            channel: "",
            payload: &reply.payload,
        }
    }

    /// `origin`'s cancel of its request `request_id` to `target`.
    #[inline]
    pub fn cancel(origin: Peer, target: Peer, request_id: u64) -> Message<'static> {
        Message { kind: abi::kind::CANCEL, status: 0, origin, target, request_id, channel: "", payload: &[] }
    }
}

impl OwnedMessage {
    /// Borrows it as a [`Message`].
    #[inline]
    pub fn as_message(&self) -> Message<'_> {
        Message {
            kind: self.kind,
            status: self.status,
            origin: self.origin,
            target: self.target,
            request_id: self.request_id,
            channel: &self.channel,
            payload: &self.payload,
        }
    }
}

/// The routing rule of requests, the one place it is written: a renderer half (or the host,
/// acting as one) invokes main, and main (or the host, acting as main) invokes one frame's
/// renderer half. Nothing else is a request: not main to itself, not frame to frame, not to
/// every half, not to the host.
pub fn is_request_route(origin: Peer, target: Peer) -> bool {
    let is_frame = |peer: Peer| peer != PEER_MAIN && peer < PEER_HOST;
    match (origin, target) {
        (_, PEER_MAIN) => origin != PEER_MAIN && origin != PEER_ALL,
        (PEER_MAIN | PEER_HOST, target) => is_frame(target),
        _ => false,
    }
}

/// The answer to a request, as it travels: a status ([`abi::status::OK`] or an error code)
/// and its payload (the value, or an encoded [`ErrorPayload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// [`abi::status::OK`] or an [`error_code`].
    pub status: u32,
    /// The MessagePack value, or an [`ErrorPayload`].
    pub payload: Vec<u8>,
}

impl Reply {
    /// A successful reply carrying `payload`.
    pub fn ok(payload: Vec<u8>) -> Reply {
        Reply { status: abi::status::OK, payload }
    }

    /// An error reply of `kind` saying `message`.
    pub fn error(kind: InvokeErrorKind, message: impl Into<String>) -> Reply {
        Reply::error_with(kind, &ErrorPayload { message: message.into(), data: None })
    }

    /// An error reply of `kind` with the whole payload (a handler's error value included).
    pub fn error_with(kind: InvokeErrorKind, payload: &ErrorPayload) -> Reply {
        // An `ErrorPayload` (a string and optional bytes) always encodes.
        Reply { status: error_code(kind), payload: rmp_serde::to_vec_named(payload).unwrap_or_default() }
    }

    /// The value's bytes, or the error the reply carries, as the invoker of `channel` sees it.
    /// An unknown code (from a newer peer) reads as [`InvokeErrorKind::ConnectionLost`].
    #[inline]
    pub fn into_result(self, channel: &str) -> Result<Vec<u8>, InvokeError> {
        if self.status == abi::status::OK {
            return Ok(self.payload);
        }
        self.into_error(channel)
    }

    /// The error an error reply carries (out of line: the path of a successful reply stays
    /// short).
    #[cold]
    fn into_error(self, channel: &str) -> Result<Vec<u8>, InvokeError> {
        let kind = error_kind(self.status).unwrap_or(InvokeErrorKind::ConnectionLost);
        match crate::wire::decode::<ErrorPayload>(&self.payload) {
            Ok(error) => Err(InvokeError::from_wire(kind, channel, error)),
            Err(error) => Err(InvokeError::new(kind, channel, format!("(undecodable error payload: {error})"))),
        }
    }
}

/// The code an error reply carries in its status field (never 0, which means success).
pub const fn error_code(kind: InvokeErrorKind) -> u32 {
    match kind {
        InvokeErrorKind::NoHandler => 100,
        InvokeErrorKind::Handler => 101,
        InvokeErrorKind::Panicked => 102,
        InvokeErrorKind::Timeout => 103,
        InvokeErrorKind::Deactivated => 104,
        InvokeErrorKind::FrameClosed => 105,
        InvokeErrorKind::ConnectionLost => 106,
        InvokeErrorKind::Serialize => 107,
        InvokeErrorKind::Deserialize => 108,
        InvokeErrorKind::Overloaded => 109,
        InvokeErrorKind::TooLarge => 110,
    }
}

/// The kind an error code stands for; `None` for a code no version of the ABI defines.
pub const fn error_kind(code: u32) -> Option<InvokeErrorKind> {
    Some(match code {
        100 => InvokeErrorKind::NoHandler,
        101 => InvokeErrorKind::Handler,
        102 => InvokeErrorKind::Panicked,
        103 => InvokeErrorKind::Timeout,
        104 => InvokeErrorKind::Deactivated,
        105 => InvokeErrorKind::FrameClosed,
        106 => InvokeErrorKind::ConnectionLost,
        107 => InvokeErrorKind::Serialize,
        108 => InvokeErrorKind::Deserialize,
        109 => InvokeErrorKind::Overloaded,
        110 => InvokeErrorKind::TooLarge,
        _ => return None,
    })
}

/// How a request fails that was refused on its way (a [`abi::status`] code from the host or a
/// child process) instead of being delivered.
pub const fn refusal_kind(status: u32) -> InvokeErrorKind {
    match status {
        abi::status::BUSY => InvokeErrorKind::Overloaded,
        abi::status::NO_SUCH_PEER => InvokeErrorKind::FrameClosed,
        abi::status::TOO_LARGE => InvokeErrorKind::TooLarge,
        _ => InvokeErrorKind::Deactivated,
    }
}

/// The kind and the explanation an invoker gets for a request refused with `status`.
pub fn refusal(status: u32) -> (InvokeErrorKind, String) {
    let kind = refusal_kind(status);
    let why = match kind {
        InvokeErrorKind::Overloaded => "the receiver's mailbox is full".to_owned(),
        InvokeErrorKind::TooLarge => format!(
            "the request is over the {}-byte message limit (its value and channel name together)",
            abi::MAX_MESSAGE
        ),
        _ => format!("the request could not be delivered (status {status})"),
    };
    (kind, why)
}

/// What a [`abi::status`] code a call returned means, in words (for errors that must not carry
/// the code itself).
pub const fn status_text(status: u32) -> &'static str {
    match status {
        abi::status::OK => "it was taken",
        abi::status::INVALID => "a pointer, length or encoded value was invalid",
        abi::status::UNKNOWN_INSTANCE => "the host does not know this instance (it was destroyed)",
        abi::status::DEACTIVATED => "the extension is deactivating or inactive",
        abi::status::PANICKED => "the host failed while routing it (a caught panic)",
        abi::status::NO_SUCH_PEER => "the half it names does not run (a closed frame)",
        abi::status::BUSY => "the receiver's queue is full",
        abi::status::TOO_LARGE => "it is over the message limit",
        _ => "the host answered with a status this version does not know",
    }
}

/// The number a log level travels as through [`abi::HostVTable::log`]: 1 (error) to 5 (trace).
pub const fn level_number(level: tracing::Level) -> u32 {
    match level {
        tracing::Level::ERROR => 1,
        tracing::Level::WARN => 2,
        tracing::Level::INFO => 3,
        tracing::Level::DEBUG => 4,
        tracing::Level::TRACE => 5,
    }
}

/// The level a log record's number stands for; anything past 5 reads as trace.
pub const fn level_of(number: u32) -> tracing::Level {
    match number {
        1 => tracing::Level::ERROR,
        2 => tracing::Level::WARN,
        3 => tracing::Level::INFO,
        4 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    }
}

/// The number of the most verbose level a filter lets through (0: nothing), as the host tells
/// an instance its log level.
pub fn filter_number(filter: tracing::level_filters::LevelFilter) -> u32 {
    filter.into_level().map_or(0, level_number)
}

/// A half as inspect names it (main is [`PEER_MAIN`]; any other peer is a frame).
pub fn half_of(peer: Peer) -> crate::Half {
    match peer {
        PEER_MAIN => crate::Half::Main,
        frame => crate::Half::Frame(crate::FrameId(frame)),
    }
}

/// A half as a sender: what a listener or handler is told.
pub fn sender_of(peer: Peer) -> crate::Sender {
    match peer {
        PEER_MAIN => crate::Sender::Main,
        PEER_HOST => crate::Sender::Host,
        frame => crate::Sender::Frame(crate::FrameId(frame)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_from_a_renderer_to_main_or_from_main_to_one_frame() {
        // Renderer (or the host acting as one) to main.
        assert!(is_request_route(1, PEER_MAIN));
        assert!(is_request_route(7, PEER_MAIN));
        assert!(is_request_route(PEER_HOST, PEER_MAIN));
        // Main (or the host acting as main) to one frame.
        assert!(is_request_route(PEER_MAIN, 1));
        assert!(is_request_route(PEER_HOST, 3));
        // Nothing else.
        assert!(!is_request_route(PEER_MAIN, PEER_MAIN));
        assert!(!is_request_route(1, 2));
        assert!(!is_request_route(1, 1));
        assert!(!is_request_route(PEER_MAIN, PEER_ALL));
        assert!(!is_request_route(PEER_MAIN, PEER_HOST));
        assert!(!is_request_route(1, PEER_HOST));
        assert!(!is_request_route(PEER_ALL, PEER_MAIN));
        assert!(!is_request_route(PEER_HOST, PEER_HOST));
        assert!(!is_request_route(PEER_HOST, PEER_ALL));
    }

    #[test]
    fn every_kind_has_one_code_and_back() {
        let kinds = [
            InvokeErrorKind::NoHandler,
            InvokeErrorKind::Handler,
            InvokeErrorKind::Panicked,
            InvokeErrorKind::Timeout,
            InvokeErrorKind::Deactivated,
            InvokeErrorKind::FrameClosed,
            InvokeErrorKind::ConnectionLost,
            InvokeErrorKind::Serialize,
            InvokeErrorKind::Deserialize,
            InvokeErrorKind::Overloaded,
            InvokeErrorKind::TooLarge,
        ];
        for kind in kinds {
            assert_ne!(error_code(kind), abi::status::OK);
            assert_eq!(error_kind(error_code(kind)), Some(kind));
        }
        assert_eq!(error_kind(0), None);
        assert_eq!(error_kind(99), None);
    }

    #[test]
    fn an_error_reply_decodes_to_its_kind_and_message() {
        let error = Reply::error(InvokeErrorKind::FrameClosed, "gone").into_result("ch").unwrap_err();
        assert_eq!(
            (error.kind, error.channel.as_str(), error.message.as_str()),
            (InvokeErrorKind::FrameClosed, "ch", "gone")
        );
        assert_eq!(Reply::ok(vec![1, 2]).into_result("ch"), Ok(vec![1, 2]));
        // An unknown code and a garbled payload still fail, saying so.
        let odd = Reply { status: 999, payload: vec![0xc1] }.into_result("ch").unwrap_err();
        assert_eq!(odd.kind, InvokeErrorKind::ConnectionLost);
        assert!(odd.message.contains("undecodable"), "{}", odd.message);
    }

    #[test]
    fn a_raw_message_is_validated_once_at_the_edge() {
        let payload = [1u8, 2, 3];
        let raw = RawMessage {
            kind: abi::kind::INVOKE,
            status: 0,
            origin: 1,
            target: PEER_MAIN,
            request_id: 9,
            channel: RawSlice::new(b"ping"),
            payload: RawSlice::new(&payload),
        };
        // SAFETY: the slices borrow live locals.
        let message = unsafe { Message::from_raw(&raw) }.unwrap();
        assert_eq!((message.channel, message.payload), ("ping", &payload[..]));
        assert_eq!(message.to_owned().as_message(), message);
        let bad = RawMessage { channel: RawSlice::new(&[0xff, 0xfe]), ..raw };
        // SAFETY: as above.
        assert_eq!(unsafe { Message::from_raw(&bad) }, Err(abi::status::INVALID));
        let null = RawMessage { payload: RawSlice { ptr: std::ptr::null(), len: 4 }, ..raw };
        // SAFETY: a null pointer with a length is refused before it is read.
        assert_eq!(unsafe { Message::from_raw(&null) }, Err(abi::status::INVALID));
        // A reply's channel is not read: it need not be UTF-8.
        let reply = RawMessage { kind: abi::kind::REPLY, ..bad };
        // SAFETY: as above.
        assert_eq!(unsafe { Message::from_raw(&reply) }.map(|m| m.channel), Ok(""));
    }

    #[test]
    fn log_levels_travel_as_one_to_five() {
        for level in [
            tracing::Level::ERROR,
            tracing::Level::WARN,
            tracing::Level::INFO,
            tracing::Level::DEBUG,
            tracing::Level::TRACE,
        ] {
            assert_eq!(level_of(level_number(level)), level);
        }
        assert_eq!(filter_number(tracing::level_filters::LevelFilter::OFF), 0);
        assert_eq!(filter_number(tracing::level_filters::LevelFilter::INFO), 3);
    }
}
