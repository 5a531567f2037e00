//! Errors an extension author sees.

use std::fmt;

use serde::de::DeserializeOwned;

/// Why an `invoke` did not produce the handler's value. It keeps its kind, a message, and
/// (for [`InvokeErrorKind::Handler`]) the handler's own error value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invoke on channel `{}` failed ({kind}): {message}", crate::error::shown(channel))]
pub struct InvokeError {
    /// What went wrong.
    pub kind: InvokeErrorKind,
    /// The channel that was invoked.
    pub channel: String,
    /// A description of the failure (for [`InvokeErrorKind::Handler`], the error's text).
    pub message: String,
    data: Option<Vec<u8>>,
}

impl InvokeError {
    /// An error of `kind` on `channel`, without handler data.
    pub fn new(kind: InvokeErrorKind, channel: impl Into<String>, message: impl Into<String>) -> Self {
        InvokeError { kind, channel: channel.into(), message: message.into(), data: None }
    }

    /// Rebuilds an error from an error reply (the host does this for its own requests).
    pub fn from_wire(kind: InvokeErrorKind, channel: impl Into<String>, payload: crate::wire::ErrorPayload) -> Self {
        InvokeError { kind, channel: channel.into(), message: payload.message, data: payload.data }
    }

    /// The handler's error value, when it returned one, decoded as `E`.
    /// `None` when there is none; `Some(Err(_))` when it does not decode as `E`.
    pub fn data<E: DeserializeOwned>(&self) -> Option<Result<E, rmp_serde::decode::Error>> {
        self.data.as_deref().map(crate::wire::decode)
    }

    /// The handler's error value as raw MessagePack.
    pub fn raw_data(&self) -> Option<&[u8]> {
        self.data.as_deref()
    }
}

/// Every way an invoke can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum InvokeErrorKind {
    /// Nothing handles the channel (or, for exposed functions, the function is not exposed).
    NoHandler,
    /// The handler returned an error; see [`InvokeError::data`].
    Handler,
    /// The handler panicked.
    Panicked,
    /// No reply within the timeout.
    Timeout,
    /// The extension was deactivated (or is deactivating) before the reply.
    Deactivated,
    /// The frame involved was closed before the reply.
    FrameClosed,
    /// The connection to the process running the other side was lost.
    ConnectionLost,
    /// The request or reply value could not be serialized.
    Serialize,
    /// The request or reply value did not decode as the expected type.
    Deserialize,
    /// The receiving side's mailbox is full: it is slower than its callers. Nothing was run;
    /// the request can be retried later.
    Overloaded,
    /// The request or the reply is over the message limit ([`crate::MAX_MESSAGE`]: its
    /// value and channel name together). Refused at once, on the side that produced it; for a
    /// reply, the handler ran and its extension logs a warning naming the channel.
    TooLarge,
}

impl fmt::Display for InvokeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvokeErrorKind::NoHandler => "no handler",
            InvokeErrorKind::Handler => "handler error",
            InvokeErrorKind::Panicked => "handler panicked",
            InvokeErrorKind::Timeout => "timed out",
            InvokeErrorKind::Deactivated => "extension deactivated",
            InvokeErrorKind::FrameClosed => "frame closed",
            InvokeErrorKind::ConnectionLost => "connection lost",
            InvokeErrorKind::Serialize => "value failed to serialize",
            InvokeErrorKind::Deserialize => "value failed to deserialize",
            InvokeErrorKind::Overloaded => "receiver overloaded",
            InvokeErrorKind::TooLarge => "message too large",
        })
    }
}

/// Why a local IPC call (`broadcast`, `listen`, `handle`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpcError {
    /// The value could not be encoded as MessagePack.
    #[error("cannot serialize the value for channel `{}`: {reason}", crate::error::shown(channel))]
    Serialize {
        /// The channel the value was for.
        channel: String,
        /// The serializer's error message.
        reason: String,
    },
    /// The channel already has a handler in this half.
    #[error("channel `{}` already has a handler; dispose it before registering another", crate::error::shown(channel))]
    AlreadyHandled {
        /// The channel that is already handled.
        channel: String,
    },
    /// The half is gone: the extension is inactive.
    #[error("the extension is not active (deactivated): `{operation}` refused")]
    Deactivated {
        /// The refused operation (`"listen"`, `"broadcast"`, ...).
        operation: &'static str,
    },
    /// The message is over [`crate::MAX_MESSAGE`]; nobody received it.
    #[error(
        "the message on channel `{}` is {size} bytes (value and channel name), over the {limit}-byte limit; nobody received it",
        crate::error::shown(channel)
    )]
    TooLarge {
        /// The channel of the refused message.
        channel: String,
        /// Its value's encoded size plus its channel name's, in bytes.
        size: usize,
        /// The limit, [`crate::MAX_MESSAGE`].
        limit: usize,
    },
    /// A renderer handle kept after its frame closed (or reloaded), while the extension stays
    /// active: the renderer half it belongs to is gone.
    #[error("{frame} is closed: `{operation}` refused (this handle belongs to the renderer half that ran there)")]
    FrameClosed {
        /// The frame the handle's half ran in.
        frame: crate::FrameId,
        /// The refused operation (`"listen"`, `"broadcast"`, ...).
        operation: &'static str,
    },
    /// The host refused to route the message.
    #[error("the host refused the message on channel `{}`: {reason}", crate::error::shown(channel))]
    Refused {
        /// The channel of the refused message.
        channel: String,
        /// Why, in words.
        reason: &'static str,
    },
    /// `Main::get` or `Renderer::current` was called outside a running half; holds the reason.
    #[error("{0}")]
    NoContext(&'static str),
}

/// The text of a [`InvokeErrorKind::TooLarge`] error for a `what` ("request", "reply") of
/// `size` bytes on `channel`.
pub(crate) fn too_large(what: &str, channel: &str, size: usize) -> String {
    format!(
        "the {what} on `{}` is {size} bytes, over the {}-byte message limit",
        shown(channel),
        crate::abi::MAX_MESSAGE
    )
}

/// Longest part of a text (a channel name, a log message) that error messages and log records
/// carry: names are opaque and may be megabytes long, and an error or a log record must still
/// fit in a message. (An [`InvokeError`] keeps the whole name in its `channel`.)
pub(crate) const SHOWN: usize = 256;

/// `text` as error messages show it: cut after [`SHOWN`] bytes (on a character boundary),
/// saying how long it was.
pub(crate) fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    cut(text, SHOWN)
}

/// `text` cut after `limit` bytes (on a character boundary), saying how long it was.
pub(crate) fn cut(text: &str, limit: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= limit {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes in all)", &text[..end], text.len()))
}

/// The error type of `activate`: anything that can be displayed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
